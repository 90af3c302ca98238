"""The observation hooks: ``dbinit_operation`` around each operation, ``dbinit_asgi_endpoints``.

A plugin records every operation it is told about (entered, then exited with
or without an exception) to a JSON-lines file; real ``python -m dbinit``
processes migrate and verify the example project on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dbinit.asgi import DatabaseGate
from dbinit.errors import ExitCode
from tests.plugins.databases import ROOT, TestDatabase, add_revision, run_dbinit
from tests.test_asgi import _settings, drive_lifespan, http_get

RECORDER = '''
import contextlib, json, os

from dbinit import hookimpl


def _write(record):
    with open(os.environ["RECORD_TO"], "a") as out:
        out.write(json.dumps(record) + "\\n")


@contextlib.contextmanager
def _observed(operation, attributes):
    _write({"at": "enter", "operation": operation, "attributes": dict(attributes)})
    try:
        yield
    except BaseException as exc:
        _write({"at": "exit", "operation": operation, "error": type(exc).__name__})
        raise
    _write({"at": "exit", "operation": operation, "error": None})


@hookimpl
def dbinit_operation(operation, attributes, settings):
    assert settings.service  # the run's settings reach the hook
    return _observed(operation, attributes)


@hookimpl
def dbinit_verify_finished(report):
    _write({"at": "verify_finished", "ok": report.ok})
'''


@pytest.fixture
def recorder(tmp_path: Path) -> dict[str, str]:
    """The environment that loads the recording plugin; its records go to ``tmp_path``/ops.jsonl."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "recorder_plugin.py").write_text(RECORDER)
    return {
        "DBINIT_PLUGINS": "recorder_plugin",
        "PYTHONPATH": os.pathsep.join((str(ROOT), str(plugins))),
        "RECORD_TO": str(tmp_path / "ops.jsonl"),
    }


def records(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["RECORD_TO"])
    found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return found


def shape(found: list[dict[str, Any]]) -> list[str]:
    """``+name`` when entered, ``-name`` (or ``-name!Error``) when exited."""
    marks = []
    for record in found:
        if record["at"] == "enter":
            marks.append(f"+{record['operation']}")
        elif record["at"] == "exit":
            marks.append(f"-{record['operation']}" + (f"!{record['error']}" if record["error"] else ""))
        else:
            marks.append(record["at"])
    return marks


def test_migrate_is_observed_operation_by_operation(
    project: Path, database: TestDatabase, recorder: dict[str, str]
) -> None:
    step = f"{sys.executable} -c pass"
    migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url, DBINIT_AFTER_MIGRATE=step,
                          **recorder)
    assert migrated.returncode == 0, migrated.output
    found = records(recorder)
    assert shape(found) == [
        "+migrate",
        "+lock_wait", "-lock_wait",
        "+revision", "-revision", "+revision", "-revision", "+revision", "-revision",
        "+verify", "verify_finished", "-verify",
        "+after_migrate", "-after_migrate",
        "-migrate",
    ]  # fmt: skip
    revisions = [r["attributes"] for r in found if r["at"] == "enter" and r["operation"] == "revision"]
    assert [(r["index"], r["count"]) for r in revisions] == [(1, 3), (2, 3), (3, 3)]
    assert revisions[-1]["revision"] == "8d3f6b2a9c11"
    migrate = found[0]["attributes"]
    assert migrate["database"] == database.parsed.display_name and migrate["service"] == "orders"
    assert all("s3cr3t" not in json.dumps(r) for r in found)

    verified = run_dbinit("verify", cwd=project, DATABASE_URL=database.url, **recorder)
    assert verified.returncode == 0, verified.output
    assert shape(records(recorder)) == ["+verify", "verify_finished", "-verify"]


def test_a_failing_revision_ends_its_operation_with_the_error(
    project: Path, database: TestDatabase, recorder: dict[str, str]
) -> None:
    add_revision(project, "f00000000bad", "8d3f6b2a9c11", "op.execute('SELECT * FROM no_such_table')")
    failed = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url, **recorder)
    assert failed.returncode == ExitCode.MIGRATION_FAILED, failed.output
    marks = shape(records(recorder))
    assert marks[-3:] == ["+revision", "-revision!OperationalError" if database.backend == "sqlite"
                          else "-revision!ProgrammingError", "-migrate!MigrationFailed"]


def test_a_lock_timeout_ends_lock_wait_with_the_error(
    project: Path, sqlite_database: TestDatabase, recorder: dict[str, str]
) -> None:
    import fcntl

    path = sqlite_database.parsed.sqlite_path
    assert path is not None
    with open(str(path) + ".dbinit-lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        timed_out = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url,
                               DBINIT_LOCK_TIMEOUT="0.3", **recorder)
    assert timed_out.returncode == ExitCode.LOCK_TIMEOUT, timed_out.output
    assert shape(records(recorder)) == ["+migrate", "+lock_wait", "-lock_wait!LockTimeout",
                                        "-migrate!LockTimeout"]


def test_an_observer_that_raises_is_named_a_bug_in_its_plugin(
    project: Path, sqlite_database: TestDatabase, recorder: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "plugins" / "broken_observer.py").write_text(
        "from dbinit import hookimpl\n\n"
        "class Broken:\n"
        "    def __enter__(self):\n        raise RuntimeError('tracer is down')\n"
        "    def __exit__(self, *exc):\n        return True\n\n"
        "@hookimpl\ndef dbinit_operation(operation):\n    return Broken()\n"
    )
    result = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url,
                        **{**recorder, "DBINIT_PLUGINS": "broken_observer"})
    assert result.returncode == ExitCode.INTERNAL_ERROR, result.output
    assert "broken_observer" in result.stderr and "tracer is down" in result.stderr


# -- dbinit_asgi_endpoints ----------------------------------------------------------------

ENDPOINTS = '''
from dbinit import hookimpl


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"hello": "world"}'})


@hookimpl
def dbinit_asgi_endpoints(settings):
    return {settings.readiness_path + "-hello" if settings.readiness_path else "/hello": hello}
'''


@pytest.fixture
def endpoint_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The plugin's module name: one per test (a process imports a module and loads a registry once)."""
    plugins = tmp_path / "endpoint-plugins"
    plugins.mkdir()
    name = f"endpoint_plugin_{request.node.name.removeprefix('test_')[:40]}"
    text = ENDPOINTS
    if "probe_path" in request.node.name:
        text = text.replace('settings.readiness_path + "-hello" if settings.readiness_path else "/hello"',
                            "settings.readiness_path")
    (plugins / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(plugins))
    return name


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"app": true}'})


def test_a_plugin_endpoint_is_served_beside_the_app(
    project: Path, sqlite_database: TestDatabase, endpoint_plugin: str
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    gate = DatabaseGate(_settings(project, sqlite_database.url, plugins=(endpoint_plugin,)))
    app = gate.wrap(_app)

    async def scenario() -> tuple[Any, ...]:
        sent, error = await drive_lifespan(app)  # startup, then shutdown: the paths stay known
        return sent, error, await http_get(app, "/hello"), await http_get(app, "/other")

    sent, error, hello, other = asyncio.run(scenario())
    assert error is None and sent[0]["type"] == "lifespan.startup.complete", sent
    assert hello == (200, {"hello": "world"})
    assert other == (200, {"app": True})  # everything else is the app's


def test_an_endpoint_on_a_probe_path_is_a_configuration_error(
    project: Path, sqlite_database: TestDatabase, endpoint_plugin: str
) -> None:
    gate = DatabaseGate(_settings(project, sqlite_database.url, plugins=(endpoint_plugin,),
                                  readiness_path="/readyz"))
    with contextlib.chdir(project):
        sent, _error = asyncio.run(drive_lifespan(gate.wrap(_app)))
    assert sent[-1]["type"] == "lifespan.startup.failed"
    assert "configuration error" in sent[-1]["message"]
    assert "path '/readyz' is already served by dbinit" in sent[-1]["message"]
