"""The migration history (``dbinit_history``): what ``migrate`` records, what ``dbinit history`` shows.

Real ``python -m dbinit migrate`` processes on SQLite and PostgreSQL; the rows
are read from the database itself. Signals are sent to running jobs, waited on
through ``pg_stat_activity`` (PostgreSQL) or a file the revision touches
(SQLite), never on a sleep.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit import __version__  # noqa: E402
from tests.plugins.databases import SECRET, TestDatabase, add_revision, run_dbinit  # noqa: E402
from tests.plugins.faults import Spawner, assert_no_password, eventually, pg_watch  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

BASE = ["374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"]
HEAD = BASE[-1]
R1 = "417c0000a001"
R2 = "417c0000a002"
SERVICE = "orders-history"
COLUMNS = (
    "revision, down_revisions, phase, phase_source, compatible_since, outcome, error, started_at, "
    "duration_ms, service, pod, image_heads, dbinit_version"
)
NO_HISTORY = "no history recorded yet (the database was migrated before dbinit recorded history)"


@dataclasses.dataclass(frozen=True)
class Row:
    revision: str
    down_revisions: str
    phase: str
    phase_source: str
    compatible_since: str
    outcome: str
    error: str | None
    started_at: object
    duration_ms: float
    service: str
    pod: str
    image_heads: str
    dbinit_version: str


def history(database: TestDatabase) -> list[Row]:
    """The history's rows, oldest first (none when the table is missing)."""
    if "dbinit_history" not in database.tables():
        return []
    return [Row(*r) for r in database.sql(f"SELECT {COLUMNS} FROM dbinit_history ORDER BY id")]  # type: ignore[arg-type]


def url_of(database: TestDatabase) -> str:
    """The database's URL, with SECRET as its password where the URL can carry one (trust ignores it)."""
    if database.backend == "sqlite":
        return database.url
    return dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)


def migrate(project: Path, url: str, *args: str, **settings: str) -> tuple[int, str]:
    result = run_dbinit("migrate", *args, cwd=project, DATABASE_URL=url, SERVICE_NAME=SERVICE, **settings)
    return result.returncode, result.output


def test_each_applied_revision_has_one_row(project: Path, database: TestDatabase) -> None:
    url = url_of(database)
    code, output = migrate(project, url)
    assert code == 0, output
    rows = history(database)
    assert [r.revision for r in rows] == BASE
    assert [r.down_revisions for r in rows] == ["", BASE[0], BASE[1]]
    for row in rows:
        assert row.outcome == "applied"
        assert row.error is None
        assert row.phase in ("expand", "contract")
        assert row.phase_source in ("declared", "inferred")
        assert row.duration_ms >= 0
        assert row.service == SERVICE
        assert row.pod == socket.gethostname()
        assert row.image_heads == HEAD
        assert row.dbinit_version == __version__
        assert row.started_at is not None
    assert rows[0].compatible_since == BASE[0]  # a root is compatible since itself

    # a second run applies nothing and records nothing
    code, output = migrate(project, url)
    assert code == 0, output
    assert len(history(database)) == 3

    # a new revision, declared: one more row, with the declared phase and compatible_since
    path = add_revision(project, R1, HEAD, body='op.add_column("products", sa.Column("note", sa.Text))')
    path.write_text(path.read_text() + f'\ndbinit_phase = "expand"\ndbinit_compatible_since = "{BASE[1]}"\n')
    code, output = migrate(project, url)
    assert code == 0, output
    rows = history(database)
    assert [r.revision for r in rows] == [*BASE, R1]
    new = rows[-1]
    assert (new.phase, new.phase_source, new.compatible_since) == ("expand", "declared", BASE[1])
    assert new.image_heads == R1 and new.down_revisions == HEAD


def test_a_contract_revision_is_compatible_since_itself(project: Path, sqlite_database: TestDatabase) -> None:
    assert migrate(project, sqlite_database.url)[0] == 0
    add_revision(project, R1, HEAD, body='op.drop_table("orders")')
    code, output = migrate(project, sqlite_database.url)
    assert code == 0, output
    last = history(sqlite_database)[-1]
    assert (last.revision, last.phase, last.phase_source, last.compatible_since) == (
        R1, "contract", "inferred", R1
    )


def test_a_failing_revision_leaves_a_failed_row_and_no_applied_row(
    project: Path, database: TestDatabase
) -> None:
    """The revision's transaction rolls back (no ``applied`` row); the ``failed`` row is written
    after it, with the error on one line, redacted: neither the URL's password nor one in the SQL."""
    url = url_of(database)
    assert migrate(project, url)[0] == 0
    add_revision(project, R1, HEAD, body='op.create_table("audit", sa.Column("id", sa.Integer))')
    leak = f"postgresql://app:{SECRET}@db.internal/app"
    # the bare password is known to be one where it is DATABASE_URL's (SQLite's URL has none)
    bare = SECRET if database.backend == "postgresql" else "plain"
    add_revision(
        project, R2, R1,
        body='op.create_table("halfway", sa.Column("id", sa.Integer))\n'
        f'op.execute("INSERT INTO no_such_table (dsn, secret) VALUES (\'{leak}\', \'{bare}\')")',
    )
    code, output = migrate(project, url, "--format", "json")
    assert code == 5, output
    rows = history(database)
    assert [(r.revision, r.outcome) for r in rows] == [(rev, "applied") for rev in BASE] + [
        (R1, "applied"), (R2, "failed")
    ]
    failed = rows[-1]
    assert failed.error is not None
    assert "no_such_table" in failed.error
    assert "\n" not in failed.error and len(failed.error) <= 500
    assert_no_password(failed.error)
    assert "postgresql://app:***@db.internal/app" in failed.error  # redacted, not dropped
    assert failed.duration_ms >= 0 and failed.service == SERVICE
    assert database.versions() == {R1}

    # fixed, run again: R2 applied once, the failed row stays as it was
    add_revision(project, R2, R1, body='op.create_table("halfway", sa.Column("id", sa.Integer))')
    assert migrate(project, url)[0] == 0
    assert [(r.revision, r.outcome) for r in history(database)][-2:] == [(R2, "failed"), (R2, "applied")]


def test_a_password_in_the_sql_of_a_failing_revision_is_not_recorded(
    project: Path, pg_database: TestDatabase
) -> None:
    url = url_of(pg_database)
    assert migrate(project, url)[0] == 0
    add_revision(project, R1, HEAD, body="op.execute(\"ALTER ROLE no_such_role_417c PASSWORD 'hunter2-Xy'\")")
    code, output = migrate(project, url)
    assert code == 5, output
    failed = history(pg_database)[-1]
    assert (failed.revision, failed.outcome) == (R1, "failed")
    assert failed.error is not None and "no_such_role_417c" in failed.error
    assert "hunter2-Xy" not in failed.error
    assert "PASSWORD '***'" in failed.error


def test_sigterm_during_a_slow_revision_leaves_an_interrupted_row(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    url = url_of(pg_database)
    assert migrate(project, url)[0] == 0
    add_revision(project, R1, HEAD, body='op.create_table("slow_table", sa.Column("id", sa.Integer))\n'
                 'op.execute("SELECT pg_sleep(60)")')
    with pg_watch(pg_database.url) as watch:
        job = spawn("migrate", cwd=project, DATABASE_URL=url, SERVICE_NAME=SERVICE)
        eventually(lambda: watch.running("pg_sleep"), within=60, what="the slow statement runs")
        job.send(signal.SIGTERM)
        result = job.finish(within=30)
    assert result.returncode == 143, result.output
    rows = history(pg_database)
    assert [(r.revision, r.outcome) for r in rows][-1] == (R1, "interrupted")
    assert [r.revision for r in rows if r.outcome == "applied"] == BASE
    error = rows[-1].error
    assert error is not None and f"SIGTERM received: migration {R1} cancelled and rolled back" in error
    assert_no_password(error)
    assert "slow_table" not in pg_database.tables()


def test_sigterm_on_sqlite_leaves_an_interrupted_row(
    project: Path, sqlite_database: TestDatabase, spawn: Spawner
) -> None:
    """SQLite: the revision runs to its end, then rolls back instead of committing: its ``applied``
    row (written in its transaction) goes with it, an ``interrupted`` row is written after."""
    database = sqlite_database
    assert migrate(project, database.url)[0] == 0
    started, release = project / "started", project / "release"
    add_revision(project, R1, HEAD, body="\n".join([
        'op.create_table("slow_table", sa.Column("id", sa.Integer))',
        "import pathlib, time",
        f"pathlib.Path({str(started)!r}).touch()",
        "deadline = time.monotonic() + 60",
        f"while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:",
        "    time.sleep(0.05)",
    ]))
    job = spawn("migrate", cwd=project, DATABASE_URL=database.url, SERVICE_NAME=SERVICE)
    eventually(started.exists, within=60, what="the job is inside the revision")
    job.send(signal.SIGTERM)
    release.touch()
    result = job.finish(within=30)
    assert result.returncode == 143, result.output
    rows = history(database)
    assert [(r.revision, r.outcome) for r in rows] == [(r, "applied") for r in BASE] + [(R1, "interrupted")]
    assert rows[-1].error is not None and "SIGTERM received" in rows[-1].error
    assert "slow_table" not in database.tables()


def test_dbinit_history_lists_rows_newest_first(project: Path, database: TestDatabase) -> None:
    url = url_of(database)
    empty = run_dbinit("history", cwd=project, DATABASE_URL=url)
    assert empty.returncode == 0, empty.output
    assert NO_HISTORY in empty.stdout
    document = json.loads(run_dbinit("history", "--format", "json", cwd=project, DATABASE_URL=url).stdout)
    assert document["rows"] == [] and document["note"] == NO_HISTORY

    assert migrate(project, url)[0] == 0
    text = run_dbinit("history", cwd=project, DATABASE_URL=url)
    assert text.returncode == 0, text.output
    lines = [line for line in text.stdout.splitlines() if " applied " in line]
    assert [line.split()[4] for line in lines] == BASE[::-1]  # id, date, time, outcome, revision
    assert f"{SERVICE}@{socket.gethostname()}" in lines[0]
    assert_no_password(text.output)

    shown = run_dbinit("history", "--format", "json", "--limit", "2", cwd=project, DATABASE_URL=url)
    assert shown.returncode == 0, shown.output
    document = json.loads(shown.stdout)
    assert "note" not in document
    assert [r["revision"] for r in document["rows"]] == [BASE[2], BASE[1]]
    newest = document["rows"][0]
    assert newest["outcome"] == "applied" and newest["down_revisions"] == [BASE[1]]
    assert newest["image_heads"] == [HEAD] and newest["service"] == SERVICE
    assert isinstance(newest["duration_ms"], float) and newest["id"] == 3

    bad = run_dbinit("history", "--limit", "0", cwd=project, DATABASE_URL=url)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr


def test_dbinit_history_unreachable_is_exit_3(project: Path) -> None:
    result = run_dbinit("history", cwd=project, DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere")
    assert result.returncode == 3, result.output
    assert "cannot connect to 127.0.0.1:1/nowhere" in result.stderr


def test_a_database_migrated_before_the_history_gains_it(project: Path, database: TestDatabase) -> None:
    """A legacy database (no history table) keeps working: verify as before, then the next
    migrate creates the table and records what it applies from then on."""
    url = url_of(database)
    assert migrate(project, url)[0] == 0
    database.sql("DROP TABLE dbinit_history")  # as it was before dbinit recorded history
    assert run_dbinit("verify", cwd=project, DATABASE_URL=url).returncode == 0
    code, output = migrate(project, url)  # nothing to apply: nothing recorded, no table made
    assert code == 0, output
    assert history(database) == []
    add_revision(project, R1, HEAD, body='op.create_table("audit", sa.Column("id", sa.Integer))')
    code, output = migrate(project, url)
    assert code == 0, output
    assert [(r.revision, r.outcome) for r in history(database)] == [(R1, "applied")]
    assert run_dbinit("verify", cwd=project, DATABASE_URL=url).returncode == 0


def test_a_history_table_in_the_version_tables_schema(project: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("CREATE SCHEMA audit")
    code, output = migrate(project, pg_database.url, DBINIT_VERSION_TABLE_SCHEMA="audit",
                           DBINIT_HISTORY_TABLE="Migration History")
    assert code == 0, output
    rows = pg_database.sql('SELECT revision FROM audit."Migration History" ORDER BY id')
    assert [r[0] for r in rows] == BASE
    shown = run_dbinit("history", "--format", "json", cwd=project, DATABASE_URL=pg_database.url,
                       DBINIT_VERSION_TABLE_SCHEMA="audit", DBINIT_HISTORY_TABLE="Migration History")
    assert shown.returncode == 0, shown.output
    assert json.loads(shown.stdout)["table"] == "audit.Migration History"


def test_the_history_is_indexed_by_revision(project: Path, pg_database: TestDatabase) -> None:
    """Each verification reads the current revision's latest applied row: an index lookup, not a
    scan of every row the history holds (a thousand revisions: most of a re-check's server time)."""
    pg_database.sql("CREATE SCHEMA audit")
    code, output = migrate(project, pg_database.url, DBINIT_VERSION_TABLE_SCHEMA="audit",
                           DBINIT_HISTORY_TABLE="Migration History")
    assert code == 0, output
    rows = pg_database.sql("SELECT indexdef FROM pg_indexes WHERE schemaname = 'audit' "
                           "AND tablename = 'Migration History' AND indexname LIKE '%revision'")
    assert [r[0] for r in rows] == [
        'CREATE INDEX "Migration History_revision" ON audit."Migration History" USING btree (revision, id)'
    ]
    add_revision(project, R1, HEAD, body='op.create_table("audit_log", sa.Column("id", sa.Integer))')
    code, output = migrate(project, pg_database.url, DBINIT_VERSION_TABLE_SCHEMA="audit",
                           DBINIT_HISTORY_TABLE="Migration History")
    assert code == 0, output  # the table (and its index) exist: created once
    verified = run_dbinit("verify", cwd=project, DATABASE_URL=pg_database.url,
                          DBINIT_VERSION_TABLE_SCHEMA="audit", DBINIT_HISTORY_TABLE="Migration History")
    assert verified.returncode == 0, verified.output


MIGRATOR = """
import os
from alembic import command
from alembic.config import Config
config = Config("alembic.ini")
config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
command.upgrade(config, "heads")
"""


def test_the_command_strategy_records_after_the_command(project: Path, pg_database: TestDatabase) -> None:
    """The project's migrator commits on its own: the rows are written after it, for the revisions
    the version table gained (duration not measured: -1, shown as unknown); a failure, for the next."""
    (project / "migrator.py").write_text(MIGRATOR)
    settings = {"DBINIT_STRATEGY": "command", "DBINIT_MIGRATE_COMMAND": f"{sys.executable} migrator.py"}
    url = url_of(pg_database)
    code, output = migrate(project, url, **settings)
    assert code == 0, output
    rows = history(pg_database)
    assert [(r.revision, r.outcome) for r in rows] == [(rev, "applied") for rev in BASE]
    assert {r.duration_ms for r in rows} == {-1.0}
    assert len({r.started_at for r in rows}) == 1  # the command's start
    add_revision(project, R1, HEAD, body='op.execute("SELECT no_such_function()")')
    code, output = migrate(project, url, **settings)
    assert code == 5, output
    failed = history(pg_database)[-1]
    assert (failed.revision, failed.outcome) == (R1, "failed")
    assert failed.error is not None and "exited with code 1" in failed.error
    assert_no_password(failed.error)
    shown = run_dbinit("history", "--format", "json", "--limit", "1", cwd=project, DATABASE_URL=url)
    assert json.loads(shown.stdout)["rows"][0]["duration_ms"] is None


def test_a_history_table_that_is_not_dbinits_is_exit_2(project: Path, database: TestDatabase) -> None:
    """A table of that name that is not dbinit's: the revision that cannot be recorded rolls back,
    and the job fails for good (exit 2) naming the setting, instead of migrating unrecorded."""
    url = url_of(database)
    database.sql("CREATE TABLE dbinit_history (id INTEGER, note TEXT)")
    code, output = migrate(project, url)
    assert code == 2, output
    assert f"the history table dbinit_history cannot record migration {BASE[0]}" in output
    assert "DBINIT_HISTORY_TABLE" in output
    assert "alembic_version" not in database.tables() or database.versions() == set()
    assert database.sql("SELECT count(*) FROM dbinit_history") == [(0,)]
    assert_no_password(output)
    code, output = migrate(project, url, DBINIT_HISTORY_TABLE="dbinit_migrations")
    assert code == 0, output
    assert [r[0] for r in database.sql("SELECT revision FROM dbinit_migrations ORDER BY id")] == BASE


def test_a_failed_row_that_cannot_be_written_is_a_warning(
    project: Path, sqlite_database: TestDatabase
) -> None:
    """The revision's own failure stays the job's (exit 5); the history's is a warning line."""
    database = sqlite_database
    assert migrate(project, database.url)[0] == 0
    database.sql("DROP TABLE dbinit_history")
    database.sql("CREATE TABLE dbinit_history (id INTEGER)")
    add_revision(project, R1, HEAD, body='op.execute("SELECT * FROM no_such_table")')
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url, SERVICE_NAME=SERVICE)
    assert result.returncode == 5, result.output
    assert f"migration {R1}" in result.stderr and "no_such_table" in result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()
                if line.startswith("{") and "Cannot record the revision in the history" in line]
    assert [(w["level"], w["revision"], w["outcome"]) for w in warnings] == [("warning", R1, "failed")]
    assert "has no column named revision" in str(warnings[0]["reason"])
