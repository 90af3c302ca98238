"""``DBINIT_AFTER_MIGRATE``: a step ``dbinit migrate`` runs after the migration verified,
while it still holds the migration lock (seed data, as the FastAPI full-stack template's
``python app/initial_data.py``).

Everything is real: ``python -m dbinit migrate`` processes, a seed script of the project's
that talks to PostgreSQL with psycopg through the ``DATABASE_URL`` dbinit hands it, real
signals, and ``pg_locks`` to see who holds the migration lock.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from tests.plugins.databases import SECRET, TestDatabase, add_revision, run_dbinit  # noqa: E402
from tests.plugins.faults import Spawner, assert_no_password, eventually, pg_watch  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

HEAD = "8d3f6b2a9c11"
ALL = ["374752db316e", "5c9a1e7b2f40", HEAD]
GATE = 7_720_001  # advisory lock key the seed waits on until the test lets it go
SEED_COMMAND = f"{sys.executable} seed.py"

#: The project's seed: idempotent (ON CONFLICT DO NOTHING), as the contract asks. It records
#: each run with the revision it saw and whether ANOTHER session held dbinit's migration lock
#: while it ran; it prints the URL it was given (carelessly: dbinit must redact it).
SEED = '''
import os
import sys

import psycopg

from dbinit.lock import lock_key

url = os.environ["DATABASE_URL"]
print(f"seeding {url}", flush=True)
key = lock_key("public", "alembic_version")
with psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), autocommit=True) as db:
    if os.environ.get("SEED_GATE"):
        db.execute("SELECT pg_advisory_lock(%s)", (int(os.environ["SEED_GATE"]),))
        db.execute("SELECT pg_advisory_unlock(%s)", (int(os.environ["SEED_GATE"]),))
    if os.environ.get("SEED_SLEEP"):
        db.execute("SELECT pg_sleep(%s)", (float(os.environ["SEED_SLEEP"]),))
    [(held,)] = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = %s AND objid = %s AND pid <> pg_backend_pid() "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchall()
    db.execute(
        "CREATE TABLE IF NOT EXISTS seed_runs (n serial PRIMARY KEY, revision text, "
        "lock_held_elsewhere boolean, app text)"
    )
    db.execute(
        "INSERT INTO seed_runs (revision, lock_held_elsewhere, app) SELECT "
        "(SELECT version_num FROM alembic_version), %s, current_setting('application_name')",
        (held == 1,),
    )
    db.execute(
        "INSERT INTO products (name, price_cents) VALUES ('croissant', 180) ON CONFLICT (name) DO NOTHING"
    )
    print("seeded 1 product", file=sys.stderr, flush=True)
if os.environ.get("SEED_EXIT"):
    print("no flour left", file=sys.stderr, flush=True)
    sys.exit(int(os.environ["SEED_EXIT"]))
'''


def job_env(database: TestDatabase, **settings: str) -> dict[str, str]:
    url = dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)
    return {"DATABASE_URL": url, "DBINIT_AFTER_MIGRATE": SEED_COMMAND, **settings}


@pytest.fixture
def seeded(project: Path) -> Path:
    (project / "seed.py").write_text(SEED)
    return project


@pytest.fixture
def spawn_in(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path / "logs")
    try:
        yield spawner
    finally:
        spawner.cleanup()


def events(stderr: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def error_of(stderr: str) -> str:
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Error: "))
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("Hint: ")), len(lines))
    return "\n".join(lines[start:end])


def seed_runs(database: TestDatabase) -> list[tuple[object, ...]]:
    return database.sql("SELECT revision, lock_held_elsewhere FROM seed_runs ORDER BY n")


# -- it runs, once per migrate, after the migration, under the lock ---------------------------


def test_the_step_runs_once_after_the_migration_verified(seeded: Path, pg_database: TestDatabase) -> None:
    """First run: the 3 migrations, verified, then the seed (which sees the head revision and
    dbinit's migration lock held by another session, dbinit's); its output is logged line by
    line with the password redacted; the JSON report and the text report name it."""
    result = run_dbinit("migrate", "--format", "json", cwd=seeded, **job_env(pg_database))
    assert result.returncode == 0, result.output
    assert_no_password(result.output)
    outcome = json.loads(result.stdout)
    assert outcome["applied"] == ALL
    assert outcome["after_migrate"]["command"] == SEED_COMMAND
    assert outcome["after_migrate"]["ok"] is True and outcome["after_migrate"]["duration_ms"] > 0
    assert seed_runs(pg_database) == [(HEAD, True)]  # after the upgrade, while the lock was held
    assert pg_database.sql("SELECT name, price_cents FROM products") == [("croissant", 180)]
    # in order: verified, step started, its output, finished, then the lock released
    names = [json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")]
    order = [
        names.index("Database verification successful"),
        names.index("Running after-migrate step"),
        names.index("After-migrate step output"),
        names.index("After-migrate step finished"),
        names.index("Migration lock released"),
    ]
    assert order == sorted(order), names
    [started] = events(result.stderr, "Running after-migrate step")
    assert started["command"] == SEED_COMMAND
    [finished] = events(result.stderr, "After-migrate step finished")
    assert isinstance(finished["duration_s"], float)
    lines = {(e["stream"], e["line"]) for e in events(result.stderr, "After-migrate step output")}
    assert ("stderr", "seeded 1 product") in lines
    assert any(stream == "stdout" and "postgres:***@" in str(line) for stream, line in lines), lines

    text = run_dbinit("migrate", cwd=seeded, **job_env(pg_database))
    assert text.returncode == 0, text.output
    assert text.stdout.startswith("up_to_date: ")
    assert f"after-migrate step: {SEED_COMMAND} finished (" in text.stdout


def test_the_step_runs_also_when_the_database_is_already_up_to_date(
    seeded: Path, pg_database: TestDatabase
) -> None:
    """Migrated without a step, then `migrate` with one: nothing to apply, the step runs anyway
    (seeding is idempotent by the project's contract: running it twice adds nothing)."""
    first = run_dbinit("migrate", cwd=seeded, DATABASE_URL=job_env(pg_database)["DATABASE_URL"])
    assert first.returncode == 0, first.output
    assert "after-migrate" not in first.output
    for _ in range(2):
        again = run_dbinit("migrate", "--format", "json", cwd=seeded, **job_env(pg_database))
        assert again.returncode == 0, again.output
        outcome = json.loads(again.stdout)
        assert outcome["action"] == "up_to_date" and outcome["after_migrate"]["ok"] is True
    assert seed_runs(pg_database) == [(HEAD, True), (HEAD, True)]
    assert pg_database.sql("SELECT count(*) FROM products") == [(1,)]


def test_a_second_migrate_waits_for_the_lock_while_the_step_runs(
    seeded: Path, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """Job A's seed is held inside its step (on an advisory lock the test holds): A holds the
    migration lock (pg_locks) and job B waits for it, naming A as the holder, and runs nothing;
    once A's step ends, B takes the lock, finds the database up to date and runs its own step, after A's."""
    env = job_env(pg_database, SEED_GATE=str(GATE), DBINIT_LOCK_TIMEOUT="60")
    with pg_watch(pg_database.url) as watch:
        watch.rows("SELECT pg_advisory_lock(%s)", GATE)
        a = spawn_in("migrate", "--format", "json", cwd=seeded, **env)
        eventually(lambda: watch.advisory_waiters(GATE) == 1, within=60, what="A's step waits on the gate")
        [(holder_pid, granted, holder)] = watch.migration_lock_rows()  # A holds it while its step runs
        assert granted and holder.startswith("dbinit-migrate:")
        b = spawn_in("migrate", "--format", "json", cwd=seeded, **env)
        [waiting, *_] = eventually(
            lambda: events(b.stderr(), "Waiting for the migration lock"), within=30, what="B waits"
        )
        assert str(waiting["holder"]).startswith(f"{holder} (pid {holder_pid}, ")
        time.sleep(1)  # B keeps waiting: it neither migrates nor runs its step
        assert b.running() and "Running after-migrate step" not in b.stderr()
        assert len(watch.migration_lock_rows()) == 1
        watch.rows("SELECT pg_advisory_unlock(%s)", GATE)
        results = [a.finish(within=60), b.finish(within=60)]
        assert watch.migration_lock_rows() == []
    for result in results:
        assert result.returncode == 0, result.output
        assert_no_password(result.output)
    outcomes = [json.loads(r.stdout) for r in results]
    assert [o["action"] for o in outcomes] == ["migrations_applied", "up_to_date"]
    assert all(o["after_migrate"]["ok"] for o in outcomes)
    assert seed_runs(pg_database) == [(HEAD, True), (HEAD, True)]  # one after the other, each locked


# -- failures and stops ------------------------------------------------------------------------


def test_a_failing_step_is_exit_5_naming_it_and_the_migrations_stay(
    seeded: Path, pg_database: TestDatabase
) -> None:
    """The seed exits 3: exit 5 (retryable, as a failed migration), the message names the
    command, its exit status, what stays applied and its last output lines; no password; the
    lock is released; the next run (the Job's retry) is up to date and runs the step again."""
    env = job_env(pg_database, SEED_EXIT="3")
    result = run_dbinit("migrate", "--format", "json", cwd=seeded, **env)
    assert result.returncode == 5, result.output
    assert_no_password(result.output)
    error = error_of(result.stderr)
    assert error.startswith(
        f"Error: after-migrate step {SEED_COMMAND} exited with code 3; the migrations of this run stay "
        f"applied ({', '.join(ALL)}; the database is at {HEAD}, verified)"
    ), error
    assert "  | no flour left" in error
    assert "Hint: The whole output is in the log (event 'After-migrate step output')" in result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == 5 and report["error"] == "AfterMigrateFailed"
    assert "Migration lock released" in result.stderr
    assert pg_database.versions() == {HEAD}

    retry = run_dbinit("migrate", "--format", "json", cwd=seeded, **job_env(pg_database))
    assert retry.returncode == 0, retry.output
    assert json.loads(retry.stdout)["action"] == "up_to_date"
    assert seed_runs(pg_database) == [(HEAD, True), (HEAD, True)]


def test_sigterm_during_the_step_is_forwarded_and_frees_the_lock(
    seeded: Path, pg_database: TestDatabase, spawn_in: Spawner
) -> None:
    """SIGTERM while the seed sleeps in a statement: forwarded to it, its statement cancelled,
    exit 143 within seconds (not the 60 s sleep), the lock released, no session left; the
    migrations stay applied and the seed recorded nothing."""
    env = job_env(pg_database, SEED_SLEEP="60")
    with pg_watch(pg_database.url) as watch:
        job = spawn_in("migrate", cwd=seeded, **env)
        [(_, session)] = eventually(lambda: watch.running("pg_sleep"), within=60, what="the seed sleeps")
        assert session.startswith("dbinit-run:")  # PGAPPNAME: the step's session carries the run's tag
        sent = job.send(signal.SIGTERM)
        result = job.finish(within=30)
        took = time.monotonic() - sent
        assert watch.migration_lock_rows() == []
        eventually(lambda: watch.sessions("dbinit-run:") == [], within=5, what="no session left")
    print(f"SIGTERM during the step -> exit: {took:.2f}s")
    assert took < 10
    assert result.returncode == 143, result.output
    assert_no_password(result.output)
    error = error_of(result.stderr)
    assert error.startswith(f"Error: SIGTERM received: after-migrate step {SEED_COMMAND} stopped: "), error
    assert f"the migrations of this run stay applied ({', '.join(ALL)}" in error
    [forwarded] = events(result.stderr, "Stop requested: signal forwarded to the after-migrate step")
    assert forwarded["signal"] == "SIGTERM"
    assert pg_database.versions() == {HEAD}
    assert "seed_runs" not in pg_database.tables()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("no-such-seeder-4f2", "DBINIT_AFTER_MIGRATE: the command 'no-such-seeder-4f2' is not found on PATH"),
        ("python 'seed.py", "DBINIT_AFTER_MIGRATE cannot be split into words: No closing quotation"),
        ("./seed.py", "DBINIT_AFTER_MIGRATE: the command './seed.py' is not an executable file"),
    ],
    ids=["not-found", "bad-quoting", "not-executable"],
)
def test_an_unusable_step_is_exit_2_before_anything_migrates(
    seeded: Path, pg_database: TestDatabase, command: str, said: str
) -> None:
    """Checked before the lock: exit 2 (the Job fails at once), nothing migrated; --plan too."""
    env = job_env(pg_database, DBINIT_AFTER_MIGRATE=command)
    result = run_dbinit("migrate", cwd=seeded, **env)
    assert result.returncode == 2, result.output
    assert said in result.stderr
    assert "Migration lock acquired" not in result.stderr
    assert "alembic_version" not in pg_database.tables()
    plan = run_dbinit("migrate", "--plan", cwd=seeded, **env)
    assert plan.returncode == 2 and said in plan.stderr, plan.output


# -- what --plan says, and a database ahead of the image -----------------------------------------


def test_plan_names_the_step(seeded: Path, pg_database: TestDatabase) -> None:
    env = job_env(pg_database)
    plan = run_dbinit("migrate", "--plan", "--format", "json", cwd=seeded, **env)
    assert plan.returncode == 0, plan.output
    assert json.loads(plan.stdout) == {
        "current": [], "heads": [HEAD], "pending": ALL, "after_migrate": SEED_COMMAND,
    }  # fmt: skip
    assert run_dbinit("migrate", cwd=seeded, **env).returncode == 0
    text = run_dbinit("migrate", "--plan", cwd=seeded, **env)
    assert text.returncode == 0, text.output
    assert text.stdout.splitlines() == [
        "No migration to run: the database is at head.",
        f"Then the after-migrate step (DBINIT_AFTER_MIGRATE), under the migration lock: {SEED_COMMAND}",
    ]
    assert seed_runs(pg_database) == [(HEAD, True)]  # --plan ran nothing


def test_the_step_is_not_run_when_the_database_is_ahead_of_the_image(
    seeded: Path, pg_database: TestDatabase, tmp_path: Path
) -> None:
    """A newer release migrated the database (and ran its own step): an older job with
    DBINIT_ALLOW_AHEAD=true finishes up to date and does not run its (older) step."""
    newer = tmp_path / "newer"
    shutil.copytree(seeded, newer)
    add_revision(newer, "f00dcafe0001", HEAD)
    assert run_dbinit("migrate", cwd=newer, DATABASE_URL=job_env(pg_database)["DATABASE_URL"]).returncode == 0
    older = run_dbinit("migrate", "--format", "json", cwd=seeded,
                       **job_env(pg_database, DBINIT_ALLOW_AHEAD="true"))  # fmt: skip
    assert older.returncode == 0, older.output
    outcome = json.loads(older.stdout)
    assert outcome["action"] == "up_to_date" and outcome["after_migrate"] is None
    assert "the after-migrate step is not run" in older.stderr
    assert "seed_runs" not in pg_database.tables()
