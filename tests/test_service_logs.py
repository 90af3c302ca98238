"""dbinit's log lines inside a service: its own chain, the application's logging untouched.

A service that configured structlog (or stdlib logging) its own way keeps it:
the ASGI gate and the Python API log through a logger of dbinit's own
(:func:`dbinit.logs.make_logger`), whose format, level and redaction come
from ``DBINIT_LOG_FORMAT``/``DBINIT_LOG_LEVEL``; with
``DBINIT_LOG_FORMAT=stdlib`` the lines are records of the stdlib logger
``dbinit``, for the application's handlers and formatters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from dbinit import logs
from dbinit.asgi import DatabaseGate, StartupFailed
from tests.plugins.databases import SECRET, TestDatabase, run_dbinit
from tests.test_asgi import drive_lifespan


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch, project: Path) -> pytest.MonkeyPatch:
    """The project as working directory, no dbinit settings from outside, dbinit's output not set."""
    for name in list(os.environ):
        ours = name.startswith(("DBINIT_", "DATABASE_URL")) and name != "DBINIT_TEST_POSTGRES_URL"
        if ours or name in ("SERVICE_NAME", "ENVIRONMENT", "DB_FORCE_RECREATE"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    monkeypatch.setattr(logs, "_output", None)
    return monkeypatch


@dataclasses.dataclass
class AppLogging:
    """An application's own structlog setup: a processor that tags its events, key=value lines."""

    stream: io.StringIO
    config: dict[str, Any]


def _tag(logger: Any, method: str, event: Any) -> Any:
    event["app"] = "bakery"
    return event


@pytest.fixture
def app_logging() -> Iterator[AppLogging]:
    stream = io.StringIO()
    structlog.configure(
        processors=[_tag, structlog.processors.KeyValueRenderer(key_order=["event"])],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    try:
        yield AppLogging(stream, dict(structlog.get_config()))
    finally:
        structlog.reset_defaults()


def with_password(database: TestDatabase) -> str:
    """The database's URL with a password (the test server trusts: it is ignored, but dbinit has it)."""
    return dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)


async def _service(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})


def _broken_clock() -> float:
    raise RuntimeError(f"clock broke near {SECRET}")


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines and all(line.startswith("{") for line in lines), text
    return [json.loads(line) for line in lines]


def test_the_app_keeps_its_structlog_and_dbinit_follows_dbinit_log_format(
    project: Path, pg_database: TestDatabase, service_env: pytest.MonkeyPatch, app_logging: AppLogging,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = with_password(pg_database)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=url).returncode == 0
    service_env.setenv("DATABASE_URL", url)
    service_env.setenv("DBINIT_LOG_FORMAT", "json")
    capsys.readouterr()

    sent, error = asyncio.run(drive_lifespan(DatabaseGate().wrap(_service)))
    assert error is None and [m["type"] for m in sent] == ["lifespan.startup.complete",
                                                           "lifespan.shutdown.complete"]
    # the application's configuration is exactly what it set, and its lines are still its own
    assert dict(structlog.get_config()) == app_logging.config
    structlog.get_logger().info("order placed", order=7)
    assert app_logging.stream.getvalue() == "event='order placed' order=7 app='bakery'\n"
    # dbinit's lines: JSON on stderr as DBINIT_LOG_FORMAT says, none in the app's stream or format
    events = json_lines(capsys.readouterr().err)
    verified = next(e for e in events if e["event"] == "Database verification successful")
    assert (verified["service"], verified["level"], verified["current_revision"]) == (
        "orders", "info", "8d3f6b2a9c11")
    assert "app" not in verified and "timestamp" in verified
    assert SECRET not in json.dumps(events)


def test_a_gate_failure_logs_json_with_the_password_redacted(
    service_env: pytest.MonkeyPatch, app_logging: AppLogging, capsys: pytest.CaptureFixture[str]
) -> None:
    service_env.setenv("DATABASE_URL", f"postgresql+asyncpg://svc:{SECRET}@127.0.0.1:1/orders")
    service_env.setenv("DBINIT_LOG_FORMAT", "json")
    sent, error = asyncio.run(drive_lifespan(DatabaseGate(clock=_broken_clock).wrap(_service)))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"] and isinstance(error, StartupFailed)
    err = capsys.readouterr().err
    assert SECRET not in err
    (failure,) = json_lines(err)
    assert failure["level"] == "error" and "not starting" in failure["event"]
    assert "RuntimeError: clock broke near ***" in failure["exception"]  # the traceback, redacted
    assert dict(structlog.get_config()) == app_logging.config
    assert app_logging.stream.getvalue() == ""


def test_the_log_level_of_dbinit_filters_dbinit_only(
    project: Path, sqlite_database: TestDatabase, service_env: pytest.MonkeyPatch, app_logging: AppLogging,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    service_env.setenv("DATABASE_URL", sqlite_database.url)
    service_env.setenv("DBINIT_LOG_LEVEL", "warning")
    capsys.readouterr()
    sent, _error = asyncio.run(drive_lifespan(DatabaseGate().wrap(_service)))
    assert sent[0]["type"] == "lifespan.startup.complete"
    assert capsys.readouterr().err == ""  # info lines of dbinit's: filtered
    structlog.get_logger().info("still mine")
    assert "still mine" in app_logging.stream.getvalue()


# -- DBINIT_LOG_FORMAT=stdlib: the application's stdlib logging decides ---------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """A handler of the application's, on the root logger (dbinit's ``dbinit`` logger propagates)."""
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_stdlib_format_hands_the_gates_lines_to_the_apps_logging(
    project: Path, pg_database: TestDatabase, service_env: pytest.MonkeyPatch, records: Records,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = with_password(pg_database)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=url).returncode == 0
    service_env.setenv("DATABASE_URL", url)
    service_env.setenv("DBINIT_LOG_FORMAT", "stdlib")
    capsys.readouterr()
    sent, error = asyncio.run(drive_lifespan(DatabaseGate().wrap(_service)))
    assert error is None and sent[0]["type"] == "lifespan.startup.complete"
    assert capsys.readouterr().err == ""  # nothing of dbinit's written by dbinit itself
    assert {r.name for r in records.records} == {"dbinit"}
    verified = next(r for r in records.records if r.dbinit["event"] == "Database verification successful")  # type: ignore[attr-defined]
    assert verified.levelno == logging.INFO
    assert records.format(verified).startswith("INFO dbinit: Database verification successful ")
    assert "current_revision='8d3f6b2a9c11'" in verified.getMessage()
    assert "service='orders'" in verified.getMessage()
    fields = verified.dbinit  # type: ignore[attr-defined]
    assert (fields["event"], fields["service"], fields["table_count"]) == (
        "Database verification successful", "orders", 6)  # with dbinit_history
    assert all(SECRET not in records.format(r) for r in records.records)


def test_stdlib_format_redacts_a_traceback_and_leaves_no_exc_info(
    service_env: pytest.MonkeyPatch, records: Records, capsys: pytest.CaptureFixture[str]
) -> None:
    service_env.setenv("DATABASE_URL", f"postgresql+asyncpg://svc:{SECRET}@127.0.0.1:1/orders")
    service_env.setenv("DBINIT_LOG_FORMAT", "stdlib")
    sent, _error = asyncio.run(drive_lifespan(DatabaseGate(clock=_broken_clock).wrap(_service)))
    assert sent[0]["type"] == "lifespan.startup.failed"
    (failure,) = records.records
    assert failure.levelno == logging.ERROR and failure.exc_info is None
    text = records.format(failure)
    assert text.startswith("ERROR dbinit: Internal error at startup (a bug in dbinit) - not starting reason=")
    assert "Traceback (most recent call last)" in text and "RuntimeError: clock broke near ***" in text
    assert SECRET not in text and SECRET not in json.dumps(failure.dbinit, default=str)  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""


def test_the_python_api_logs_as_its_settings_say(
    project: Path, sqlite_database: TestDatabase, service_env: pytest.MonkeyPatch, app_logging: AppLogging,
    records: Records, capsys: pytest.CaptureFixture[str],
) -> None:
    from dbinit.api import initialize_service_database

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    capsys.readouterr()
    service_env.setenv("DBINIT_LOG_FORMAT", "json")
    report = asyncio.run(initialize_service_database(sqlite_database.url))
    assert report.ok
    events = json_lines(capsys.readouterr().err)
    assert "Database verification successful" in [e["event"] for e in events]
    service_env.setenv("DBINIT_LOG_FORMAT", "stdlib")
    asyncio.run(initialize_service_database(sqlite_database.url))
    assert capsys.readouterr().err == ""
    assert "Database verification successful" in [r.dbinit["event"] for r in records.records]  # type: ignore[attr-defined]
    assert dict(structlog.get_config()) == app_logging.config and app_logging.stream.getvalue() == ""


def test_the_command_line_without_stdlib_handlers_falls_back_to_auto(
    project: Path, sqlite_database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    result = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url, DBINIT_LOG_FORMAT="stdlib")
    assert result.returncode == 0, result.output
    events = json_lines(result.stderr)  # auto: JSON, not a terminal
    assert events[0]["level"] == "warning" and "DBINIT_LOG_FORMAT=stdlib" in events[0]["event"]
    assert "Database verification successful" in [e["event"] for e in events]


def test_the_command_line_in_a_process_with_logging_uses_it(
    project: Path, sqlite_database: TestDatabase, service_env: pytest.MonkeyPatch, records: Records,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A manage.py that configured stdlib logging before calling dbinit's dispatcher."""
    from dbinit.management import call_command

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    stderr = io.StringIO()
    code = call_command("verify", database_url=sqlite_database.url, log_format="stdlib", stderr=stderr)
    assert code == 0, stderr.getvalue()
    assert stderr.getvalue() == ""
    assert "Database verification successful" in [r.dbinit["event"] for r in records.records]  # type: ignore[attr-defined]
