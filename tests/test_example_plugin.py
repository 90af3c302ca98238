"""examples/dbinit-acme, a third-party plugin installed as users install one.

Its wheel and dbinit's are built, then pip-installed into a fresh virtualenv
(no site-packages of ours, no PYTHONPATH to the checkout): the plugin is
found through its entry point alone. It is then used as a team would: from
the command line, and from the example service under that virtualenv's
uvicorn. One virtualenv per test session.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.databases import ROOT, Result, TestDatabase, clean_env
from tests.test_asgi_servers import free_port, get, wait_until

ACME = ROOT / "examples" / "dbinit-acme"


@dataclasses.dataclass(frozen=True)
class Venv:
    """A virtualenv with dbinit-alembic[example] and dbinit-acme installed from their wheels."""

    path: Path
    seconds: float

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """The user's environment: no PYTHONPATH (the checkout must not be what is imported)."""
        env = clean_env(**extra)
        del env["PYTHONPATH"]
        return env

    def dbinit(self, *args: str, cwd: Path, **settings: str) -> Result:
        proc = subprocess.run([str(self.path / "bin" / "dbinit"), *args], cwd=cwd, env=self.env(**settings),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)


def _wheel(source: Path, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(into), str(source)], check=True, capture_output=True, timeout=300)
    name = source.name.replace("-", "_") if source != ROOT else "dbinit_alembic"
    return next(into.glob(f"{name}-*.whl"))


@pytest.fixture(scope="session")
def acme_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    started = time.perf_counter()
    work = tmp_path_factory.mktemp("acme-venv")
    # a copy: building in place would leave build/ and *.egg-info in the example's folder
    source = shutil.copytree(ACME, work / "dbinit-acme", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    wheels = work / "wheels"
    dbinit_wheel, acme_wheel = _wheel(ROOT, wheels), _wheel(source, wheels)
    venv = work / "venv"
    # no pip of its own (ensurepip costs more than the install): this session's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    f"{dbinit_wheel}[example]", str(acme_wheel)],
                   check=True, capture_output=True, timeout=600)
    made = Venv(venv, time.perf_counter() - started)
    print(f"\nacme_venv: built and installed in {made.seconds:.1f} s")
    yield made


def test_the_venv_is_the_users_not_the_checkout(acme_venv: Venv, tmp_path: Path) -> None:
    code = "import dbinit, dbinit_acme; print(dbinit.__file__); print(dbinit_acme.__file__)"
    proc = subprocess.run([acme_venv.python, "-c", code], cwd=tmp_path, env=acme_venv.env(),
                          capture_output=True, text=True, check=True, timeout=60)
    for line in proc.stdout.splitlines():
        assert line.startswith(str(acme_venv.path)), proc.stdout
    assert acme_venv.seconds < 300


def audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_plugin_is_used_from_the_command_line(
    acme_venv: Venv, project: Path, sqlite_database: TestDatabase, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    settings = {"DATABASE_URL": sqlite_database.url, "DBINIT_ACME_AUDIT_LOG": str(log)}

    listed = acme_venv.dbinit("plugins", "--format", "json", cwd=project, **settings)
    assert listed.returncode == 0, listed.output
    acme = next(p for p in json.loads(listed.stdout) if p["name"] == "acme")
    assert acme["source"] == "entrypoint" and acme["checks"] == ["acme.W001"]
    assert acme["module"] == "dbinit_acme"

    migrated = acme_venv.dbinit("migrate", cwd=project, **settings)
    assert migrated.returncode == 0, migrated.output
    [line] = audit(log)  # migrate's final verification
    assert line["ok"] is True and line["service"] == "orders" and line["current_revision"] == "8d3f6b2a9c11"

    checked = acme_venv.dbinit("check", "--format", "json", cwd=project, **settings)
    assert checked.returncode == 0, checked.output
    finding = next(c for c in json.loads(checked.stdout)["checks"] if c["id"] == "acme.W001")
    assert finding["status"] == "passed", finding

    # a version table without Alembic's primary key, and a row written twice
    for statement in ("CREATE TABLE v AS SELECT version_num FROM alembic_version",
                      "DROP TABLE alembic_version", "ALTER TABLE v RENAME TO alembic_version",
                      "INSERT INTO alembic_version VALUES ('8d3f6b2a9c11')"):
        sqlite_database.sql(statement)
    warned = acme_venv.dbinit("check", cwd=project, **settings)
    assert warned.returncode == 0, warned.output  # a warning: the database still verifies
    assert "acme.W001" in warned.stdout and "2 rows, 1 of them duplicated" in warned.stdout
    strict = acme_venv.dbinit("check", "--fail-level", "WARNING", cwd=project, **settings)
    assert strict.returncode == 4, strict.output

    report = acme_venv.dbinit("acme-report", cwd=project, **settings)
    assert report.returncode == 0, report.output
    assert "service: orders" in report.stdout
    assert "plugin acme (entrypoint, dbinit-acme): acme.W001" in report.stdout
    assert "plugin dbinit.plugins.checks (builtin): dbinit.E001" in report.stdout

    verified = acme_venv.dbinit("verify", cwd=project, **settings)
    assert verified.returncode == 0, verified.output
    assert [entry["ok"] for entry in audit(log)][-1] is True
    assert len(audit(log)) >= 3  # migrate, then check and verify each verified and appended


def test_the_plugin_runs_in_the_service(
    acme_venv: Venv, project: Path, sqlite_database: TestDatabase, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    settings = {"DATABASE_URL": sqlite_database.url, "DBINIT_ACME_AUDIT_LOG": str(log)}
    assert acme_venv.dbinit("migrate", cwd=project, **settings).returncode == 0
    log.unlink()
    port = free_port()
    process = subprocess.Popen(
        [acme_venv.python, "-m", "uvicorn", "app:app", "--lifespan", "on", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=acme_venv.env(DBINIT_LIVENESS_PATH="/livez", **settings),
    )
    try:
        assert wait_until(lambda: _serving(port) or process.poll() is not None), "server did not start"
        assert process.poll() is None
        [line] = audit(log)  # the gate's startup verification
        assert line == {**line, "ok": True, "service": "orders", "current_revision": "8d3f6b2a9c11",
                        "failed": []}
        assert get(port, "/")[1] == {"service": "orders", "revision": "8d3f6b2a9c11"}
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output


def _serving(port: int) -> bool:
    try:
        return get(port, "/livez")[0] == 200
    except (OSError, ValueError):
        return False
