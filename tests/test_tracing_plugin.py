"""The OpenTelemetry plugin (``dbinit.plugins.opentelemetry``): the spans a user's exporter receives.

The SDK's in-memory exporter, behind a ``SimpleSpanProcessor``, stands for
the application's: spans of the ASGI gate (startup, readiness) and of
``migrate`` run in this process on PostgreSQL, with a password in the URL
that must appear nowhere in them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dbinit.asgi import DatabaseGate
from dbinit.errors import ExitCode
from dbinit.management import call_command
from tests.plugins.databases import SECRET, TestDatabase, add_revision, run_dbinit
from tests.test_asgi import FakeClock, _settings, drive_lifespan, http_get

PLUGIN = "dbinit.plugins.opentelemetry"
REVISIONS = ["374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"]


@functools.cache
def _exporter() -> InMemorySpanExporter:
    """The process's tracer provider (OpenTelemetry allows one), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    exporter = _exporter()
    exporter.clear()
    return exporter


def with_password(database: TestDatabase) -> str:
    """The URL with a password (the test server trusts, so it is ignored; dbinit has it)."""
    return dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def everything(spans: tuple[ReadableSpan, ...]) -> str:
    """Every span's name, attributes, events and status, as text: where a password would show."""
    return json.dumps([
        {"name": s.name, "attributes": dict(s.attributes or {}),
         "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in s.events],
         "status": s.status.description}
        for s in spans
    ], default=str)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_the_gate_traces_its_startup_and_readiness_rechecks(
    project: Path, pg_database: TestDatabase, exporter: InMemorySpanExporter
) -> None:
    url = with_password(pg_database)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=url).returncode == 0
    clock = FakeClock()
    gate = DatabaseGate(_settings(project, url, plugins=(PLUGIN,)), readiness_path="/readyz", clock=clock)
    app = gate.wrap(_app)

    async def scenario() -> tuple[list[str], tuple[int, dict[str, Any]]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        task = asyncio.ensure_future(app(scope, inbox.get, sent.put))
        started = (await sent.get())["type"]
        clock.now += 60  # past the readiness cache: the probe re-verifies
        ready = await http_get(app, "/readyz")
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)
        return [started, (await sent.get())["type"]], ready

    messages, ready = asyncio.run(scenario())
    assert messages == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert ready[0] == 200
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["dbinit.verify", "dbinit.readiness"]
    verify, readiness = spans
    assert verify.parent is None and readiness.parent is None  # each its own trace
    database = pg_database.parsed
    for span in spans:
        attributes = dict(span.attributes or {})
        assert {
            "db.system": "postgresql", "db.namespace": database.database, "server.address": "127.0.0.1",
            "server.port": 5432, "dbinit.service": "orders", "dbinit.outcome": "ready",
            "dbinit.revision": "8d3f6b2a9c11", "dbinit.heads": ("8d3f6b2a9c11",), "dbinit.migration_count": 3,
        }.items() <= attributes.items(), attributes
        assert str(attributes["db.query.text"]).startswith("SELECT current_setting('server_version')")
        assert span.status.status_code is StatusCode.UNSET and not span.events
        assert "dbinit.check.failed" not in attributes
    assert "count(*)" in str(verify.attributes["db.query.text"])  # type: ignore[index]
    assert "count(*)" not in str(readiness.attributes["db.query.text"])  # type: ignore[index]
    assert verify.attributes["dbinit.table_count"] == 6  # type: ignore[index]  # with dbinit_history
    assert SECRET not in everything(spans)


def test_a_database_that_is_not_ready_is_an_error_span_naming_the_check(
    project: Path, pg_database: TestDatabase, exporter: InMemorySpanExporter
) -> None:
    gate = DatabaseGate(_settings(project, with_password(pg_database), plugins=(PLUGIN,)))
    sent, _error = asyncio.run(drive_lifespan(gate.wrap(_app)))
    assert sent[0]["type"] == "lifespan.startup.failed"
    (verify,) = exporter.get_finished_spans()
    assert verify.name == "dbinit.verify"
    assert verify.attributes["dbinit.outcome"] == "not_ready"  # type: ignore[index]
    assert verify.attributes["dbinit.check.failed"] == ("dbinit.E002",)  # type: ignore[index]
    assert verify.status.status_code is StatusCode.ERROR and "dbinit.E002" in str(verify.status.description)


@pytest.fixture
def job(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In the project, with the plugin enabled as a user enables it (DBINIT_PLUGINS)."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("DBINIT_PLUGINS", PLUGIN)
    monkeypatch.setenv("DBINIT_LOG_FORMAT", "json")
    return project


def test_migrate_is_one_trace_revisions_inside_it(
    job: Path, pg_database: TestDatabase, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBINIT_AFTER_MIGRATE", f"{sys.executable} -c pass")
    stderr = io.StringIO()
    migrated = call_command("migrate", database_url=with_password(pg_database), stderr=stderr)
    assert migrated == 0, stderr.getvalue()
    spans = exporter.get_finished_spans()
    # children end before their parent: the migrate span is exported last
    assert [s.name for s in spans] == ["dbinit.lock_wait", "dbinit.revision", "dbinit.revision",
                                       "dbinit.revision", "dbinit.verify", "dbinit.after_migrate",
                                       "dbinit.migrate"]
    migrate = spans[-1]
    assert migrate.parent is None
    assert {s.context.trace_id for s in spans} == {migrate.context.trace_id}
    assert {parent_of(s) for s in spans[:-1]} == {migrate.context.span_id}  # the thread's too
    revisions = named(spans, "dbinit.revision")
    assert [(r.attributes["dbinit.revision"], r.attributes["dbinit.revision.index"],  # type: ignore[index]
             r.attributes["dbinit.revision.count"]) for r in revisions] == [  # type: ignore[index]
        (revision, index, 3) for index, revision in enumerate(REVISIONS, 1)]
    assert {
        "dbinit.strategy": "upgrade", "dbinit.outcome": "migrations_applied",
        "dbinit.revisions.applied": tuple(REVISIONS), "db.system": "postgresql",
        "db.namespace": pg_database.parsed.database, "dbinit.service": "orders",
    }.items() <= dict(migrate.attributes or {}).items()
    (verify,) = named(spans, "dbinit.verify")
    assert verify.attributes["dbinit.outcome"] == "ready"  # type: ignore[index]
    (step,) = named(spans, "dbinit.after_migrate")
    assert "-c pass" in str(step.attributes["dbinit.after_migrate.command"])  # type: ignore[index]
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)
    assert SECRET not in everything(spans)

    exporter.clear()
    assert call_command("migrate", database_url=with_password(pg_database), stderr=stderr) == 0
    migrate = named(exporter.get_finished_spans(), "dbinit.migrate")[0]
    assert migrate.attributes["dbinit.outcome"] == "up_to_date"  # type: ignore[index]
    assert not named(exporter.get_finished_spans(), "dbinit.revision")


def test_a_failing_revision_is_an_error_span_with_its_exception_redacted(
    job: Path, pg_database: TestDatabase, exporter: InMemorySpanExporter
) -> None:
    add_revision(job, "f00000000bad", "8d3f6b2a9c11", f"raise RuntimeError('login refused for {SECRET}')")
    stderr = io.StringIO()
    code = call_command("migrate", database_url=with_password(pg_database), stderr=stderr)
    assert code == ExitCode.MIGRATION_FAILED, stderr.getvalue()
    spans = exporter.get_finished_spans()
    assert SECRET not in everything(spans)
    migrate = named(spans, "dbinit.migrate")[0]
    revisions = named(spans, "dbinit.revision")
    assert [r.attributes["dbinit.revision"] for r in revisions] == [*REVISIONS, "f00000000bad"]  # type: ignore[index]
    assert all(r.status.status_code is StatusCode.UNSET for r in revisions[:-1])
    failed = revisions[-1]
    assert parent_of(failed) == migrate.context.span_id
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: login refused for ***"
    (event,) = failed.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "login refused for ***"
    assert "Traceback (most recent call last)" in str(event.attributes["exception.stacktrace"])
    assert "RuntimeError: login refused for ***" in str(event.attributes["exception.stacktrace"])
    assert failed.attributes["dbinit.outcome"] == "failed"  # type: ignore[index]
    # the run's span: the migration failure, exit 5, the revision named, the password not
    assert migrate.status.status_code is StatusCode.ERROR
    assert migrate.attributes["error.type"] == "dbinit.errors.MigrationFailed"  # type: ignore[index]
    assert migrate.attributes["dbinit.exit_code"] == 5  # type: ignore[index]
    (run_event,) = migrate.events
    assert "f00000000bad" in str(run_event.attributes["exception.message"])  # type: ignore[index]
    assert not named(spans, "dbinit.verify")  # nothing verified after the failure


def test_without_an_sdk_the_plugin_costs_no_span_and_changes_nothing(
    project: Path, sqlite_database: TestDatabase
) -> None:
    """``dbinit verify`` with the plugin, in a process where nobody set a tracer provider."""
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url,
                      DBINIT_PLUGINS=PLUGIN).returncode == 0
    result = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url, DBINIT_PLUGINS=PLUGIN)
    assert result.returncode == 0, result.output
    listed = run_dbinit("plugins", cwd=project, DATABASE_URL=sqlite_database.url, DBINIT_PLUGINS=PLUGIN)
    assert PLUGIN in listed.stdout, listed.output


def test_sqlite_spans_name_the_file_and_no_statement(
    project: Path, sqlite_database: TestDatabase, exporter: InMemorySpanExporter
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    gate = DatabaseGate(_settings(project, sqlite_database.url, plugins=(PLUGIN,)))
    sent, _error = asyncio.run(drive_lifespan(gate.wrap(_app)))
    assert sent[0]["type"] == "lifespan.startup.complete"
    (verify,) = exporter.get_finished_spans()
    attributes = dict(verify.attributes or {})
    assert attributes["db.system"] == "sqlite"
    assert attributes["db.namespace"] == sqlite_database.parsed.display_name
    assert "db.query.text" not in attributes and "server.address" not in attributes


NAIVE = '''
from opentelemetry import trace

from dbinit import hookimpl


@hookimpl
def dbinit_operation(operation, attributes):
    # the hook's documented example: the span current while the operation runs
    return trace.get_tracer("naive").start_as_current_span(f"naive.{operation}", attributes=dict(attributes))
'''


def test_a_plain_start_as_current_span_ends_a_failing_revision_in_its_own_context(
    job: Path, sqlite_database: TestDatabase, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """The async env.py runs revisions in its event loop's task: the failing one ends there too."""
    (tmp_path / "naive_tracing.py").write_text(NAIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DBINIT_PLUGINS", "naive_tracing")
    add_revision(job, "f00000000bad", "8d3f6b2a9c11", "raise RuntimeError('boom')")
    stderr = io.StringIO()
    code = call_command("migrate", database_url=sqlite_database.url, stderr=stderr)
    assert code == ExitCode.MIGRATION_FAILED, stderr.getvalue()
    assert not [r for r in caplog.records if "detach" in r.getMessage()], caplog.text
    spans = exporter.get_finished_spans()
    migrate = named(spans, "naive.migrate")[0]
    revisions = named(spans, "naive.revision")
    assert len(revisions) == 4 and {parent_of(r) for r in revisions} == {migrate.context.span_id}
    assert revisions[-1].status.status_code is StatusCode.ERROR  # OpenTelemetry's own recording
