"""Projects that migrate their own way (issue 10, item 7).

``migrate --strategy command`` runs the project's own migrator
(``DBINIT_MIGRATE_COMMAND``) under dbinit's lock, timeouts, signals, exit codes
and final verification; the ``dbinit_migration_context`` hook runs an
``env.py`` that needs the application (Flask-Migrate's uses ``current_app``)
through the ``upgrade`` strategy.

Everything is real: a Flask app with Flask-SQLAlchemy and Flask-Migrate whose
``migrations/`` is made by ``flask db init`` and ``flask db migrate`` (once per
session), real ``python -m dbinit`` processes, real signals, real PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit.lock import lock_key  # noqa: E402
from tests.plugins.databases import (  # noqa: E402
    SECRET,
    PostgresServer,
    TestDatabase,
    add_revision,
    clean_env,
    run_dbinit,
)
from tests.plugins.faults import (  # noqa: E402
    Spawner,
    assert_no_password,
    eventually,
    pg_watch,
)

pytest_plugins = ["tests.plugins.faults"]

BIN = Path(sys.executable).parent  # flask, alembic: on the job's PATH, as in an image
FLASK_UPGRADE = "flask --app app db upgrade"
SLOW = "5104000000a1"  # a hand-written revision after the generated one
GATE = 7_710_001  # advisory lock key a revision waits on until the test lets it go

APP = '''
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()


class User(db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(200), nullable=False, unique=True)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    db.init_app(app)
    migrate.init_app(app, db)
    return app


app = create_app()
'''

CONTEXT_PLUGIN = '''
from dbinit import hookimpl


@hookimpl
def dbinit_migration_context(settings):
    from app import app

    return app.app_context()
'''

BROKEN_CONTEXT_PLUGIN = '''
import contextlib

from dbinit import hookimpl


@contextlib.contextmanager
def needs_a_secret():
    raise KeyError("SECRET_KEY")
    yield


@hookimpl
def dbinit_migration_context(settings):
    return needs_a_secret()
'''

#: A migrator of the project's own: Alembic's API, and a careless print of the URL.
MIGRATOR = '''
import os
import sys

from alembic import command
from alembic.config import Config

url = os.environ["DATABASE_URL"]
print(f"migrating {url}", flush=True)  # leaks the password: dbinit must redact it
print(f"connecting with password={url.split(':')[2].split('@')[0]}", file=sys.stderr, flush=True)
with open("runs.log", "a") as runs:
    runs.write(f"{os.getpid()}\\n")
config = Config("alembic.ini")
config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
command.upgrade(config, "heads")
'''

#: A migrator that ignores SIGTERM and keeps going after its statement is cancelled.
STUBBORN = '''
import os
import signal
import time

import psycopg

signal.signal(signal.SIGTERM, signal.SIG_IGN)
url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(url) as connection:  # PGAPPNAME / PGOPTIONS: libpq reads them
    print("app", connection.execute("SHOW application_name").fetchone()[0], flush=True)
    try:
        connection.execute("SELECT pg_sleep(60)")
    except psycopg.errors.QueryCanceled as exc:
        print(f"cancelled: {exc}".strip(), flush=True)
time.sleep(60)
'''


# -- the Flask project ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlaskProject:
    path: Path
    revision: str  # the one `flask db migrate` generated

    def env(self, database: TestDatabase, **settings: str) -> dict[str, str]:
        """The job's environment: the app's DATABASE_URL (psycopg, with a password), PATH with flask."""
        return {
            "DATABASE_URL": flask_url(database),
            "DBINIT_MIGRATIONS_DIR": "migrations/versions",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            **settings,
        }


def flask_url(database: TestDatabase) -> str:
    return dataclasses.replace(database.parsed, password=SECRET, driver="psycopg").for_sqlalchemy(
        async_driver=False
    )


def _flask(project: Path, *args: str, url: str) -> str:
    proc = subprocess.run(
        [str(BIN / "flask"), "--app", "app", "db", *args],
        cwd=project,
        env=clean_env(DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def flask_template(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> FlaskProject:
    """A Flask-Migrate project made as its users make it: `flask db init`, `flask db migrate`."""
    project = tmp_path_factory.mktemp("flask") / "app"
    project.mkdir()
    (project / "app.py").write_text(APP)
    name = postgres_server.create()
    try:
        url = flask_url(TestDatabase("postgresql", postgres_server.url_for(name)))
        _flask(project, "init", url=url)
        said = _flask(project, "migrate", "-m", "create users", url=url)
    finally:
        postgres_server.drop(name)
    assert "Detected added table 'users'" in said, said
    [generated] = (project / "migrations" / "versions").glob("*_create_users.py")
    shutil.rmtree(project / "migrations" / "versions" / "__pycache__", ignore_errors=True)
    return FlaskProject(project, generated.name.split("_")[0])


@pytest.fixture
def flask_project(flask_template: FlaskProject, tmp_path: Path) -> FlaskProject:
    target = tmp_path / "app"
    shutil.copytree(flask_template.path, target, ignore=shutil.ignore_patterns("__pycache__"))
    return FlaskProject(target, flask_template.revision)


@pytest.fixture
def spawn_in(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path / "logs")
    try:
        yield spawner
    finally:
        spawner.cleanup()


def events(stderr: str, name: str | None = None) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a running process's half-written last line
            if name is None or event.get("event") == name:
                found.append(event)
    return found


def output_lines(stderr: str) -> list[str]:
    return [str(e["line"]) for e in events(stderr, "Migration command output")]


def error_of(stderr: str) -> str:
    """The `Error: ...` message, with its continuation lines (up to the hint)."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Error: "))
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("Hint: ")), len(lines))
    return "\n".join(lines[start:end])


def record_session(name: str) -> str:
    """A revision body that records the session's settings as the server sees them."""
    return (
        f'op.execute("CREATE TABLE {name} AS SELECT current_setting(\'application_name\') AS app, '
        "current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt\")"
    )


# -- the command strategy: a real Flask-Migrate project ------------------------------------------


def test_flask_db_upgrade_runs_under_the_lock_and_verifies(
    flask_project: FlaskProject, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """`flask db upgrade` as the migrator: while its (gated) revision runs, dbinit holds the
    migration lock and the command's session carries the run's tag and timeouts; its output
    streams out before it ends; exit 0 with the applied revisions in order; `verify` passes."""
    project = flask_project.path
    add_revision(
        project, SLOW, flask_project.revision,
        body=record_session("seen") + f'\nop.execute("SELECT pg_advisory_xact_lock({GATE})")',
    )
    env = flask_project.env(
        pg_database, DBINIT_MIGRATE_COMMAND=FLASK_UPGRADE, DBINIT_STATEMENT_TIMEOUT="30",
        DBINIT_DDL_LOCK_TIMEOUT="7",
    )
    with pg_watch(pg_database.url) as watch:
        watch.rows("SELECT pg_advisory_lock(%s)", GATE)
        job = spawn_in("migrate", "--strategy", "command", "--format", "json", cwd=project, **env)
        [(_, session)] = eventually(
            lambda: watch.running("pg_advisory_xact_lock"), within=60, what="the command is inside SLOW"
        )
        [(_, granted, holder)] = watch.migration_lock_rows()
        assert granted and holder.startswith("dbinit-migrate:") and holder.endswith(f"->{SLOW}")
        assert session.startswith("dbinit-run:")  # PGAPPNAME: libpq (psycopg) named the session
        [started] = events(job.stderr(), "Migration command started")
        assert started["session"] == session and started["command"] == FLASK_UPGRADE
        # streamed while the command runs, not buffered until it ends
        streamed = eventually(
            lambda: [line for line in output_lines(job.stderr()) if f"-> {SLOW}" in line],
            within=10, what="the command's output streams while it runs",
        )
        assert "Running upgrade" in streamed[0]
        assert job.running()
        watch.rows("SELECT pg_advisory_unlock(%s)", GATE)
        result = job.finish(within=60)
        assert watch.migration_lock_rows() == []

    assert result.returncode == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["strategy"] == "command"
    assert outcome["applied"] == [flask_project.revision, SLOW]
    assert outcome["current_revision"] == SLOW
    assert_no_password(result.output)
    assert pg_database.sql("SELECT app, st, lt FROM seen") == [(session, "30s", "7s")]  # PGOPTIONS
    assert pg_database.versions() == {SLOW}
    verified = run_dbinit("verify", cwd=project, **flask_project.env(pg_database))
    assert verified.returncode == 0, verified.output


def test_flask_app_through_upgrade_with_the_app_context_hook(
    flask_project: FlaskProject, pg_database: TestDatabase
) -> None:
    """Flask-Migrate's env.py needs `current_app`: without an application context `upgrade`
    is exit 2 (the hint names the hook); a plugin returning `app.app_context()` makes it work,
    its sessions tagged as the upgrade strategy's are; a context that fails is named, exit 2."""
    project = flask_project.path
    add_revision(project, SLOW, flask_project.revision, body=record_session("seen"))
    (project / "flask_context.py").write_text(CONTEXT_PLUGIN)
    (project / "broken_context.py").write_text(BROKEN_CONTEXT_PLUGIN)
    env = flask_project.env(pg_database, DBINIT_ALEMBIC_INI="migrations/alembic.ini")

    bare = run_dbinit("migrate", cwd=project, **env)
    assert bare.returncode == 2, bare.output
    assert "Working outside of application context" in bare.stderr
    assert "dbinit_migration_context" in bare.stderr  # the hint says what to do
    assert "users" not in pg_database.tables()

    broken = run_dbinit("migrate", cwd=project, **env, DBINIT_PLUGINS="broken_context")
    assert broken.returncode == 2, broken.output
    assert (
        "Error: plugin 'broken_context': entering its dbinit_migration_context raised KeyError: "
        "'SECRET_KEY'" in broken.stderr
    )
    assert "users" not in pg_database.tables()

    sql = run_dbinit("migrate", "--sql", cwd=project, **env, DBINIT_PLUGINS="flask_context")
    assert sql.returncode == 0, sql.output
    assert "CREATE TABLE users" in sql.stdout

    result = run_dbinit("migrate", "--format", "json", cwd=project, **env, DBINIT_PLUGINS="flask_context")
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["applied"] == [flask_project.revision, SLOW]
    assert_no_password(result.output)
    [(app,)] = pg_database.sql("SELECT app FROM seen")
    assert str(app).startswith("dbinit-run:")  # the app's own engine got dbinit's session set-up
    verified = run_dbinit("verify", cwd=project, **flask_project.env(pg_database))
    assert verified.returncode == 0, verified.output


# -- failures -------------------------------------------------------------------------------------


HEAD = "8d3f6b2a9c11"
BAKERY = ["374752db316e", "5c9a1e7b2f40", HEAD]
R1 = "c0de0000a001"


def bakery_env(database: TestDatabase, **settings: str) -> dict[str, str]:
    url = dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)
    return {"DATABASE_URL": url, **settings}


def test_failing_migrator_exits_5_with_its_output_tail_and_no_password(
    project: Path, pg_database: TestDatabase
) -> None:
    """A migrator script of the project's own (Alembic's API) fails in R1: exit 5 naming the
    command, what it applied first, the revision that was next, and its last output lines;
    the password it printed is redacted everywhere."""
    (project / "migrator.py").write_text(MIGRATOR)
    command = f"{sys.executable} migrator.py"
    env = bakery_env(pg_database, DBINIT_MIGRATE_COMMAND=command)
    first = run_dbinit("migrate", "--strategy", "command", "--format", "json", cwd=project, **env)
    assert first.returncode == 0, first.output
    assert json.loads(first.stdout)["applied"] == BAKERY
    add_revision(project, R1, HEAD, body='op.execute("SELECT no_such_function()")')
    result = run_dbinit("migrate", "--strategy", "command", "--format", "json", cwd=project, **env)
    assert result.returncode == 5, result.output
    assert_no_password(result.output)
    error = error_of(result.stderr)
    assert error.startswith(f"Error: migration command {command} exited with code 1"), error
    assert f"the version table is at {HEAD}, next pending: {R1}" in error
    assert f"the migration that was next: {R1} ({R1}_revision.py)" in error
    assert "Its last " in error and "no_such_function" in error  # the tail
    assert "migrating postgresql+asyncpg://postgres:***@" in result.stderr  # redacted, not dropped
    assert "password=***" in result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == 5 and "no_such_function" in report["message"]
    assert pg_database.versions() == {HEAD}


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("no-such-migrator-4f2 upgrade", "the command 'no-such-migrator-4f2' is not found on PATH"),
        ("./migrator.py upgrade", "the command './migrator.py' is not an executable file"),
        ("./missing/migrate", "the command './missing/migrate' does not exist"),
        ("flask 'db upgrade", "DBINIT_MIGRATE_COMMAND cannot be split into words: No closing quotation"),
        ("   ", "the 'command' strategy needs DBINIT_MIGRATE_COMMAND"),
    ],
    ids=["not-found", "not-executable", "no-such-path", "bad-quoting", "empty"],
)
def test_unusable_command_is_exit_2_before_the_lock(
    project: Path, pg_database: TestDatabase, command: str, said: str
) -> None:
    """Final (exit 2), at once: the check runs before the lock (held here by the test, with a
    60 s lock timeout), and nothing touches the database."""
    (project / "migrator.py").write_text(MIGRATOR)  # not executable
    with pg_watch(pg_database.url) as watch:
        watch.rows("SELECT pg_advisory_lock(%s)", lock_key("public", "alembic_version"))
        assert len(watch.migration_lock_rows()) == 1
        started = time.monotonic()
        result = run_dbinit(
            "migrate", "--strategy", "command", cwd=project,
            **bakery_env(pg_database, DBINIT_MIGRATE_COMMAND=command, DBINIT_LOCK_TIMEOUT="60"),
        )
        took = time.monotonic() - started
    assert result.returncode == 2, result.output
    assert said in result.stderr
    assert took < 20  # did not wait for the lock
    assert "Waiting for the migration lock" not in result.stderr
    assert "alembic_version" not in pg_database.tables()


def test_a_command_that_migrates_another_database_is_caught(
    project: Path, pg_database: TestDatabase, postgres_server: PostgresServer
) -> None:
    """Exit 0 from a command that migrated elsewhere: the version table dbinit locks did not
    change, so it is exit 5 saying so, not a success."""
    other_name = postgres_server.create()
    try:
        other = TestDatabase("postgresql", postgres_server.url_for(other_name))
        (project / "migrator.py").write_text(MIGRATOR)
        command = f"env DATABASE_URL={other.url} {sys.executable} migrator.py"
        result = run_dbinit(
            "migrate", "--strategy", "command", cwd=project,
            **bakery_env(pg_database, DBINIT_MIGRATE_COMMAND=command),
        )
        assert other.versions() == {HEAD}  # it did migrate, elsewhere
    finally:
        postgres_server.drop(other_name)
    assert result.returncode == 5, result.output
    assert "exited with code 0, but the version table of" in result.stderr
    assert "it migrated another database, or nothing" in result.stderr
    assert "alembic_version" not in pg_database.tables()


# -- signals, lock loss, a killed job -------------------------------------------------------------


def _migrated(flask_project: FlaskProject, database: TestDatabase) -> None:
    env = flask_project.env(database, DBINIT_MIGRATE_COMMAND=FLASK_UPGRADE)
    first = run_dbinit("migrate", "--strategy", "command", cwd=flask_project.path, **env)
    assert first.returncode == 0, first.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_slow_command_cancels_it_and_frees_the_lock(
    flask_project: FlaskProject, pg_database: TestDatabase, spawn_in: Spawner, signum: signal.Signals
) -> None:
    """SIGTERM/SIGINT while `flask db upgrade` sleeps in a revision: the signal is forwarded, the
    statement cancelled on the server, exit 143/130 within seconds (not the 60 s sleep), the
    lock released, no session of the command left, the previous revision kept."""
    _migrated(flask_project, pg_database)
    add_revision(
        flask_project.path, SLOW, flask_project.revision,
        body='op.create_table("slow_table", sa.Column("id", sa.Integer))\nop.execute("SELECT pg_sleep(60)")',
    )
    env = flask_project.env(pg_database, DBINIT_MIGRATE_COMMAND=FLASK_UPGRADE)
    with pg_watch(pg_database.url) as watch:
        job = spawn_in("migrate", "--strategy", "command", cwd=flask_project.path, **env)
        [(_, session)] = eventually(lambda: watch.running("pg_sleep"), within=60, what="pg_sleep runs")
        assert session.startswith("dbinit-run:")
        sent = job.send(signum)
        result = job.finish(within=30)
        took = time.monotonic() - sent
        assert watch.migration_lock_rows() == []  # released before the exit
        eventually(lambda: watch.running("pg_sleep") == [], within=3, what="the statement cancelled")
        eventually(lambda: watch.sessions("dbinit-run:") == [], within=3, what="no session left")
    print(f"{signum.name} -> exit: {took:.2f}s")
    assert took < 10
    assert result.returncode == 128 + signum, result.output
    error = error_of(result.stderr)
    stopped = f"Error: {signum.name} received: migration command {FLASK_UPGRADE} stopped: "
    assert error.startswith(stopped), error
    assert f"the version table is at {flask_project.revision}, next pending: {SLOW}" in error
    [forwarded] = events(result.stderr, "Stop requested: signal forwarded to the migration command")
    assert forwarded["signal"] == signum.name
    assert "Migration lock released" in result.stderr
    assert_no_password(result.output)
    assert pg_database.versions() == {flask_project.revision}
    assert "slow_table" not in pg_database.tables()


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    project: Path, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """A migrator that ignores SIGTERM and survives its cancelled statement: SIGKILLed after
    DBINIT_MIGRATE_COMMAND_GRACE (2 s); exit 143. Its psycopg session had the run's tag
    (PGAPPNAME), which is how the server-side cancel found it."""
    (project / "stubborn.py").write_text(STUBBORN)
    env = {
        "DATABASE_URL": flask_url(pg_database),
        "DBINIT_MIGRATE_COMMAND": f"{sys.executable} stubborn.py",
        "DBINIT_MIGRATE_COMMAND_GRACE": "2",
    }
    with pg_watch(pg_database.url) as watch:
        job = spawn_in("migrate", "--strategy", "command", cwd=project, **env)
        eventually(lambda: watch.running("pg_sleep"), within=60, what="pg_sleep runs")
        sent = job.send(signal.SIGTERM)
        result = job.finish(within=30)
        took = time.monotonic() - sent
        assert watch.migration_lock_rows() == []
        eventually(lambda: watch.sessions("dbinit-run:") == [], within=3, what="no session left")
    print(f"SIGTERM -> SIGKILL after grace -> exit: {took:.2f}s")
    assert 2 <= took < 10
    assert result.returncode == 143, result.output
    lines = output_lines(result.stderr)
    assert any(line.startswith("app dbinit-run:") for line in lines), lines
    assert any("canceling statement due to user request" in line for line in lines), lines
    assert "still running 2s after the SIGTERM forwarded to it (DBINIT_MIGRATE_COMMAND_GRACE)" in (
        result.stderr
    )
    assert_no_password(result.output)


def test_a_lost_lock_kills_the_command_and_exits_6(
    flask_project: FlaskProject, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """The lock's session is terminated while the command waits inside a revision: the command
    is killed at once (it must not commit after the loss), its session ended, exit 6."""
    _migrated(flask_project, pg_database)
    add_revision(
        flask_project.path, SLOW, flask_project.revision,
        body='op.create_table("slow_table", sa.Column("id", sa.Integer))\n'
        f'op.execute("SELECT pg_advisory_xact_lock({GATE})")',
    )
    env = flask_project.env(pg_database, DBINIT_MIGRATE_COMMAND=FLASK_UPGRADE)
    with pg_watch(pg_database.url) as watch:
        watch.rows("SELECT pg_advisory_lock(%s)", GATE)
        job = spawn_in("migrate", "--strategy", "command", cwd=flask_project.path, **env)
        eventually(lambda: watch.running("pg_advisory_xact_lock"), within=60, what="inside SLOW")
        [(lock_pid, _, _)] = watch.migration_lock_rows()
        watch.rows("SELECT pg_terminate_backend(%s)", lock_pid)
        sent = time.monotonic()
        result = job.finish(within=30)
        took = time.monotonic() - sent
        eventually(lambda: watch.sessions("dbinit-run:") == [], within=5, what="the command's session ended")
        watch.rows("SELECT pg_advisory_unlock(%s)", GATE)
    print(f"lock terminated -> exit: {took:.2f}s")
    assert result.returncode == 6, result.output
    assert "migration command killed" in result.stderr
    assert "was killed at once: the migration lock was lost" in result.stderr
    assert_no_password(result.output)
    assert pg_database.versions() == {flask_project.revision}
    assert "slow_table" not in pg_database.tables()


def test_a_killed_job_takes_its_command_with_it(
    flask_project: FlaskProject, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """SIGKILL to dbinit (no chance to clean up): the kernel kills the command too
    (PR_SET_PDEATHSIG), and the server ends its session (client_connection_check_interval
    from PGOPTIONS), so nothing migrates on without the lock."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    _migrated(flask_project, pg_database)
    add_revision(flask_project.path, SLOW, flask_project.revision, body='op.execute("SELECT pg_sleep(60)")')
    env = flask_project.env(pg_database, DBINIT_MIGRATE_COMMAND=FLASK_UPGRADE)
    with pg_watch(pg_database.url) as watch:
        job = spawn_in("migrate", "--strategy", "command", cwd=flask_project.path, **env)
        eventually(lambda: watch.running("pg_sleep"), within=60, what="pg_sleep runs")
        [started] = events(job.stderr(), "Migration command started")
        child = int(str(started["pid"]))
        job.send(signal.SIGKILL)
        job.finish(within=10)
        eventually(lambda: not _alive(child), within=5, what="the command died with dbinit")
        eventually(lambda: watch.migration_lock_rows() == [], within=10, what="the lock died")
        eventually(lambda: watch.sessions("dbinit-run:") == [], within=15, what="its session ended")
    assert pg_database.versions() == {flask_project.revision}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# -- one migrator --------------------------------------------------------------------------------


def test_two_jobs_at_once_run_the_command_once(
    project: Path, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """Two `migrate --strategy command` at once: one runs the command, the other waits for the
    lock, then finds nothing pending and does not run it; R1's side effect happens once."""
    (project / "migrator.py").write_text(MIGRATOR)
    add_revision(
        project, R1, HEAD,
        body='op.create_table("side_effects", sa.Column("revision", sa.String(20)))\n'
        f"op.execute(\"INSERT INTO side_effects VALUES ('{R1}')\")\n"
        'op.execute("SELECT pg_sleep(2)")',
    )
    env = bakery_env(pg_database, DBINIT_MIGRATE_COMMAND=f"{sys.executable} migrator.py")
    jobs = [spawn_in("migrate", "--strategy", "command", "--format", "json", cwd=project, **env)
            for _ in range(2)]
    results = [job.finish(within=120) for job in jobs]
    for result in results:
        assert result.returncode == 0, result.output
        assert_no_password(result.output)
    outcomes = sorted((json.loads(r.stdout) for r in results), key=lambda o: o["action"])
    assert [o["action"] for o in outcomes] == ["migrations_applied", "up_to_date"]
    assert outcomes[0]["applied"] == [*BAKERY, R1]
    assert len((project / "runs.log").read_text().split()) == 1  # the command ran once
    assert sum("Nothing pending: the migration command is not run" in r.stderr for r in results) == 1
    assert pg_database.sql("SELECT revision FROM side_effects") == [(R1,)]
    assert pg_database.versions() == {R1}


def test_command_strategy_is_listed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbinit", "plugins", "--format", "json"],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    [builtin] = [p for p in json.loads(result.stdout) if p["name"] == "dbinit.plugins.strategies"]
    assert builtin["strategies"] == ["upgrade", "recreate", "command"]



# -- the child's environment, in process -------------------------------------------------------


def test_child_environment_carries_the_url_tag_and_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL is the URL dbinit locks (even when it came from a flag); PGAPPNAME is the run's
    tag; PGOPTIONS keeps the environment's own options first (PostgreSQL applies the last
    repeated setting, so dbinit's win) and names client_connection_check_interval only on 14+."""
    from dbinit.command_runner import child_environment
    from dbinit.interrupts import RunControl
    from dbinit.settings import load_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@elsewhere/other")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=app")
    url = f"postgresql+psycopg://app:{SECRET}@db:5432/orders"
    settings = load_settings(database_url=url, statement_timeout=2.5, ddl_lock_timeout=1)
    control = RunControl()
    env = child_environment(settings, control, "16.4 (Debian 16.4-1)")
    assert env["DATABASE_URL"] == url
    assert env["PGAPPNAME"] == control.session_tag
    assert env["PGOPTIONS"] == (
        "-c search_path=app -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 "
        "-c tcp_keepalives_count=3 -c client_connection_check_interval=5s "
        "-c statement_timeout=2500ms -c lock_timeout=1000ms"
    )
    old = child_environment(load_settings(database_url=url), control, "13.15")
    assert "client_connection_check_interval" not in old["PGOPTIONS"]
    assert "statement_timeout" not in old["PGOPTIONS"]
    lite = child_environment(load_settings(database_url="sqlite:///db.sqlite3"), control, "3.45")
    assert "PGAPPNAME" not in lite and lite["PGOPTIONS"] == "-c search_path=app"


def test_applied_revisions_follow_the_graph(project: Path) -> None:
    from dbinit.command_runner import applied_between
    from dbinit.revisions.scripts import read_migration_scripts

    scripts = read_migration_scripts(project / "alembic.ini", None)
    assert applied_between(scripts, (), (HEAD,)) == BAKERY
    assert applied_between(scripts, (BAKERY[0],), (HEAD,)) == BAKERY[1:]
    assert applied_between(scripts, (HEAD,), (HEAD,)) == []
    assert applied_between(scripts, (), ()) == []
