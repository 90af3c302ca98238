"""One log stream in the migration job: Alembic's stdlib logging in dbinit's JSON lines.

Projects made by ``alembic init`` (generic template): its alembic.ini has the
usual ``[loggers]`` (root WARN, sqlalchemy.engine WARN, alembic INFO) and its
env.py calls ``fileConfig``. Here env.py also logs the URL it migrates, as
some projects' env.py do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import logging.config
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from dbinit import logs
from tests.plugins.databases import SECRET, Result, TestDatabase, clean_env, run_dbinit

BREAD = "b7ead0000001"
PASSWORD = f"p@ss%w:rd/1{SECRET}"
RUNNING = f"Running upgrade  -> {BREAD}, create bread"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("logs") / "generic"
    project.mkdir()
    alembic = [sys.executable, "-m", "alembic"]
    for args in (
        ["init", "-t", "generic", "migrations"],
        ["revision", "-m", "create bread", "--rev-id", BREAD],
    ):
        subprocess.run([*alembic, *args], cwd=project, env=clean_env(), check=True, capture_output=True)
    revision = next((project / "migrations" / "versions").glob(f"{BREAD}_*.py"))
    revision.write_text(
        revision.read_text().replace(
            '    """Upgrade schema."""\n    pass',
            '    """Upgrade schema."""\n'
            '    op.create_table("bread", sa.Column("id", sa.Integer, primary_key=True))',
            1,
        )
    )
    env = project / "migrations" / "env.py"
    configured = "    fileConfig(config.config_file_name)\n"
    assert configured in env.read_text()
    env.write_text(
        env.read_text().replace(
            configured,
            configured + "    import logging\n"
            '    logging.getLogger("alembic.env").info(\n'
            '        "Migrating %s", config.get_main_option("sqlalchemy.url"))\n',
            1,
        )
    )
    return project


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "generic"
    shutil.copytree(template, target)
    return target


def with_password(database: TestDatabase) -> str:
    """The database's URL with a password (the test server trusts; the password only has to leak)."""
    return dataclasses.replace(database.parsed, password=PASSWORD).for_sqlalchemy(async_driver=True)


def json_lines(result: Result) -> list[dict[str, object]]:
    """Every line of stderr, each of which must be a JSON object."""
    events = []
    for line in result.stderr.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line!r}\n{result.stderr}")
    return events


def logger_states() -> dict[str, tuple[int, list[logging.Handler], bool, bool]]:
    """Every stdlib logger's level, handlers, propagate and disabled (the root as "")."""
    loggers = {"": logging.getLogger()} | {
        name: item for name, item in logging.Logger.manager.loggerDict.items()
        if isinstance(item, logging.Logger)
    }
    return {name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for name, lg in loggers.items()}


def assert_no_password(result: Result) -> None:
    for form in (SECRET, PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD)):
        assert form not in result.output, f"password form {form!r} leaked:\n{result.output}"


@pytest.mark.parametrize("how", ["--format json", "DBINIT_LOG_FORMAT=json"])
def test_alembic_lines_are_json_events_with_their_logger(
    project: Path, pg_database: TestDatabase, how: str
) -> None:
    if how == "--format json":
        # not a terminal: auto is JSON; --format json is the report's format on stdout
        result = run_dbinit("migrate", "--format", "json", cwd=project,
                            DATABASE_URL=with_password(pg_database), DBINIT_LOG_FORMAT="auto")
        assert json.loads(result.stdout)["applied"] == [BREAD]
    else:
        result = run_dbinit("migrate", cwd=project, DATABASE_URL=with_password(pg_database))
        assert result.stdout.startswith("migrations_applied: ")
    assert result.returncode == 0, result.output
    events = json_lines(result)
    alembic = [e for e in events if e.get("logger") == "alembic.runtime.migration"]
    assert {"event": RUNNING, "level": "info", "service": "generic"}.items() <= alembic[-1].items()
    assert any(e["event"] == "Will assume transactional DDL." for e in alembic)
    # in order among dbinit's own events
    names = [e["event"] for e in events]
    assert names.index("Running pending migrations") < names.index(RUNNING) < names.index("Migration applied")
    # env.py's line, with the URL's password redacted
    (migrating,) = [e for e in events if e.get("logger") == "alembic.env"]
    assert str(migrating["event"]).startswith("Migrating postgresql+psycopg://postgres:***@")
    assert_no_password(result)
    # the ini sets sqlalchemy.engine to WARN: no SQL echoed
    assert not [e for e in events if str(e.get("logger", "")).startswith("sqlalchemy")]


def test_the_ini_levels_decide_what_is_logged(project: Path, pg_database: TestDatabase) -> None:
    ini = project / "alembic.ini"
    text = ini.read_text()
    ini.write_text(
        text.replace("[logger_sqlalchemy]\nlevel = WARNING", "[logger_sqlalchemy]\nlevel = INFO", 1)
        .replace("[logger_alembic]\nlevel = INFO", "[logger_alembic]\nlevel = WARNING", 1)
    )
    assert ini.read_text() != text
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == 0, result.output
    events = json_lines(result)
    assert not [e for e in events if str(e.get("logger", "")).startswith("alembic")]
    sql = [e for e in events if e.get("logger") == "sqlalchemy.engine.Engine"]
    assert any("CREATE TABLE bread" in str(e["event"]) for e in sql)
    assert {e["level"] for e in sql} == {"info"}


def test_dbinit_log_level_filters_alembic_too(project: Path, pg_database: TestDatabase) -> None:
    result = run_dbinit("migrate", "--log-level", "warning", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == 0, result.output
    assert result.stderr == ""


def test_console_mode_keeps_alembic_text_lines(project: Path, pg_database: TestDatabase) -> None:
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=with_password(pg_database),
                        DBINIT_LOG_FORMAT="console")
    assert result.returncode == 0, result.output
    lines = result.stderr.splitlines()
    assert f"INFO  [alembic.runtime.migration] {RUNNING}" in lines
    assert "INFO  [alembic.env] Migrating postgresql+psycopg://postgres:***@" in result.stderr
    assert not [line for line in lines if line.startswith("{")]
    assert_no_password(result)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_offline_sql_stays_pure_sql_on_stdout(project: Path, fmt: str) -> None:
    result = run_dbinit("migrate", "--sql", cwd=project, DBINIT_LOG_FORMAT=fmt,
                        DATABASE_URL=f"postgresql://app:{quote(PASSWORD, safe='')}@127.0.0.1:1/nowhere")
    assert result.returncode == 0, result.output
    assert result.stdout.startswith("BEGIN;")
    assert "CREATE TABLE bread" in result.stdout
    assert result.stdout.rstrip().endswith("COMMIT;")
    assert "alembic" not in result.stdout.replace("alembic_version", "")
    assert "Generating static SQL" in result.stderr
    if fmt == "json":
        events = json_lines(result)
        assert {"event": "Generating static SQL", "logger": "alembic.runtime.migration"}.items() <= next(
            e for e in events if e["event"] == "Generating static SQL"
        ).items()
    assert_no_password(result)


@pytest.mark.parametrize("how", ["json-configured", "settings", "stdlib"])
def test_api_run_leaves_stdlib_logging_as_it_was(
    project: Path, pg_database: TestDatabase, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], how: str,
) -> None:
    """The API's lines: configure_logging()'s output, else the settings' (JSON off a terminal), or stdlib."""
    from dbinit.api import DatabaseInitManager

    monkeypatch.chdir(project)
    monkeypatch.setattr(logs, "_output", None)  # put back as it was at teardown
    stream = io.StringIO()
    if how == "json-configured":
        logs.configure_logging("json", stream=stream, redactor=logs.Redactor())
    if how == "stdlib":
        monkeypatch.setenv("DBINIT_LOG_FORMAT", "stdlib")  # the caller's logging writes Alembic's lines
    root = logging.getLogger()
    mine = logging.getLogger("myapp.before")
    before = logger_states()
    file_config = logging.config.fileConfig
    result = asyncio.run(DatabaseInitManager(pg_database.url, verify_only=False).initialize())
    assert result.applied == (BREAD,)
    after = logger_states()
    assert after[""] == before[""]
    assert {name: after[name] for name in before} == before
    assert logging.config.fileConfig is file_config
    assert not mine.disabled  # fileConfig disabled it during the run
    # what the ini configured is gone: no alembic logger at INFO, no stream handler left anywhere
    assert logging.getLogger("alembic").getEffectiveLevel() == root.level
    assert not [h for state in after.values() for h in state[1] if type(h) is logging.StreamHandler]
    captured = capsys.readouterr()
    if how == "stdlib":
        assert f"INFO  [alembic.runtime.migration] {RUNNING}" in captured.err.splitlines()
        assert not [line for line in captured.err.splitlines() if line.startswith("{")]
        return
    lines = (stream.getvalue() if how == "json-configured" else captured.err).splitlines()
    events = [json.loads(line) for line in lines]
    assert any(e.get("logger") == "alembic.runtime.migration" and e["event"] == RUNNING for e in events)
    assert "INFO  [alembic" not in captured.err


def test_forwarded_records_keep_level_exception_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbinit.logbridge import StructlogHandler

    monkeypatch.setattr(logs, "_output", None)
    stream = io.StringIO()
    logs.configure_logging("json", "debug", stream=stream, redactor=logs.Redactor([PASSWORD]))
    logger = logging.getLogger("tests.forwarded")
    handler = StructlogHandler(logs.get_logger("orders"))
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", 1)
    try:
        logger.log(25, "between info and warning")
        logger.log(5, "below debug")
        try:
            raise RuntimeError(f"cannot reach postgresql://app:{PASSWORD}@db/orders")
        except RuntimeError:
            logger.exception("env.py failed for %s", f"postgresql://app:{quote(PASSWORD, safe='')}@db")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    first, second, third = (json.loads(line) for line in text.splitlines())
    assert (first["level"], first["event"], first["logger"]) == ("info", "between info and warning",
                                                                 "tests.forwarded")
    assert (second["level"], second["service"]) == ("debug", "orders")
    assert third["level"] == "error"
    assert third["event"] == "env.py failed for postgresql://app:***@db"
    assert "RuntimeError: cannot reach postgresql://app:***@db/orders" in third["exception"]
    for form in (SECRET, quote(PASSWORD, safe="")):
        assert form not in text
