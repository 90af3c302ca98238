"""One migrator, whatever happens: locks, waits, signals, faults (issue 4, item 5).

Every test starts real ``python -m dbinit`` processes, sends real signals and
pulls real connections, then asserts the database's state (``alembic_version``,
side-effect rows, ``pg_locks``), the exit code, the message, and that no
password appears in the output.

Issue 4's table, situation -> test (``::`` = another module):

- 8 ``migrate`` at once on an empty database -> test_eight_migrates_at_once_apply_each_migration_once
- second ``migrate`` while a slow one runs (lock timeout 1 s), a waiting second ``migrate``
  whose holder finishes, ``wait --until-verified`` while the job holds the lock, SIGTERM
  while waiting for the lock -> test_one_migrator_the_others_time_out_wait_or_stop
- SIGTERM / SIGINT during a slow migration ->
  test_signal_during_a_slow_migration_rolls_back_and_frees_the_lock,
  test_sigterm_on_sqlite_stops_at_the_migration_boundary, test_sigterm_on_sqlite_rolls_back_the_revisions_ddl
- SIGKILL during a slow migration, then rerun -> test_sigkill_then_rerun_converges,
  test_sigkill_leaves_no_orphaned_migration_session
- failing migration: statement timeout -> test_statement_timeout_fails_the_revision;
  DDL lock timeout, which does not cut the lock wait ->
  test_ddl_lock_timeout_bounds_ddl_not_the_migration_lock_wait; SQL error ->
  tests/test_migrate.py::test_failing_migration_exits_5_and_keeps_the_previous_revision
- ``wait --until-verified`` started before the job ->
  tests/test_commands.py::test_wait_until_verified_returns_once_the_job_has_migrated
- ``wait --until-verified`` with nothing migrating (exit 4 at the timeout) ->
  tests/test_commands.py::test_wait_until_verified_times_out_with_exit_4
- server down / refused / unknown database / DNS -> test_unreachable_database_is_exit_3_with_the_reason,
  test_wait_timeout_bounds_a_hanging_connection_attempt
- wrong password -> test_wrong_password_is_exit_3_authentication_failed
- server restarted in the middle of ``wait`` ->
  test_wait_until_verified_recovers_when_the_server_comes_back, test_connection_dropped_under_a_query

Every row of the table has a test here; the bugs these tests found are fixed (see CHANGELOG).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# the helpers' asserts are rewritten too (pytest_plugins below would import the module too late)
pytest.register_assert_rewrite("tests.plugins.faults")

from tests.plugins.databases import SECRET, TestDatabase, add_revision, run_dbinit  # noqa: E402
from tests.plugins.faults import (  # noqa: E402
    PgWatch,
    ScramServer,
    Spawned,
    Spawner,
    assert_no_password,
    eventually,
    free_port,
    pg_watch,
    restartable_proxy,
)

pytest_plugins = ["tests.plugins.faults"]

HEAD = "8d3f6b2a9c11"
BASE = ["374752db316e", "5c9a1e7b2f40", HEAD]
R1 = "5afe0000a001"  # creates side_effects and records itself there
R2 = "5afe0000a002"  # records itself, then is slow
GATE = 7_700_001  # advisory lock key a revision waits on until the test lets it go


# -- helpers ----------------------------------------------------------------------------


def url_of(database: TestDatabase) -> str:
    """The database's URL, with SECRET as its password where the URL can carry one."""
    if database.backend == "sqlite":
        return database.url
    return dataclasses.replace(database.parsed, password=SECRET).for_sqlalchemy(async_driver=True)


def record(rev: str) -> str:
    return f"op.execute(\"INSERT INTO side_effects (revision) VALUES ('{rev}')\")"


def side_table(rev: str) -> str:
    return (
        'op.create_table("side_effects", sa.Column("revision", sa.String(20), nullable=False))\n'
        + record(rev)
    )


def side_effects(database: TestDatabase) -> list[str]:
    """The revisions recorded in side_effects, duplicates kept."""
    if "side_effects" not in database.tables():
        return []
    return sorted(str(r[0]) for r in database.sql("SELECT revision FROM side_effects"))


def columns(database: TestDatabase, table: str) -> set[str]:
    if database.backend == "sqlite":
        return {str(r[1]) for r in database.sql(f"PRAGMA table_info({table})")}
    rows = database.sql(
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    )
    return {str(r[0]) for r in rows}


def events(stderr: str, name: str | None = None) -> list[dict[str, object]]:
    """The JSON log events (DBINIT_LOG_FORMAT=json) in a process's stderr.

    A running process's last line may be half written: it is skipped until complete.
    """
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
    return found


def migrated_to_head(project: Path, url: str) -> None:
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=url)
    assert result.returncode == 0, result.output


def no_lock_left(database: TestDatabase) -> None:
    """PostgreSQL: no dbinit advisory lock row; SQLite: the lock file can be locked at once."""
    if database.backend == "postgresql":
        with pg_watch(database.url) as watch:
            assert watch.migration_lock_rows() == []
        return
    path = database.parsed.sqlite_path
    assert path is not None
    fd = os.open(str(path) + ".dbinit-lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held
    finally:
        os.close(fd)


class Gate:
    """Holds a revision in the middle of its transaction until the test opens it.

    PostgreSQL: the revision waits on an advisory lock the test holds.
    SQLite: the revision touches a "started" file, then polls for a "release" file.
    """

    def __init__(self, database: TestDatabase, project: Path) -> None:
        self.database = database
        self.project = project
        self._watch = PgWatch(database.url) if database.backend == "postgresql" else None
        if self._watch is not None:
            self._watch.rows("SELECT pg_advisory_lock(%s)", GATE)

    def body(self, rev: str) -> str:
        if self._watch is not None:
            return f'op.execute("SELECT pg_advisory_xact_lock({GATE})")'
        started, release = self.project / f"started-{rev}", self.project / "release"
        return "\n".join(
            [
                "import pathlib, time",
                f"pathlib.Path({str(started)!r}).touch()",
                "deadline = time.monotonic() + 60",
                f"while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:",
                "    time.sleep(0.05)",
            ]
        )

    def reached(self, rev: str) -> bool:
        if self._watch is not None:
            return self._watch.advisory_waiters(GATE) > 0
        return (self.project / f"started-{rev}").exists()

    def open(self) -> None:
        if self._watch is not None:
            self._watch.rows("SELECT pg_advisory_unlock(%s)", GATE)
        else:
            (self.project / "release").touch()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()


@pytest.fixture
def gate(database: TestDatabase, project: Path) -> Iterator[Gate]:
    held = Gate(database, project)
    try:
        yield held
    finally:
        held.open()
        held.close()


def finish_all(processes: list[Spawned], within: float) -> list[tuple[int, float]]:
    """Wait (bounded) for all; returns (exit code, seconds from start to exit) of each."""
    deadline = time.monotonic() + within
    ended: dict[int, tuple[int, float]] = {}
    while len(ended) < len(processes):
        for i, process in enumerate(processes):
            if i not in ended and (code := process.proc.poll()) is not None:
                ended[i] = (code, time.monotonic() - process.started)
        if time.monotonic() >= deadline:
            running = [" ".join(p.args) for i, p in enumerate(processes) if i not in ended]
            raise AssertionError(f"still running after {within:g}s: {running}")
        time.sleep(0.05)
    return [ended[i] for i in range(len(processes))]


# -- one migrator ---------------------------------------------------------------------------


def test_eight_migrates_at_once_apply_each_migration_once(
    project: Path, database: TestDatabase, spawn: Spawner
) -> None:
    add_revision(project, R1, HEAD, body=side_table(R1))
    add_revision(project, R2, R1, body=record(R2))
    url = url_of(database)

    jobs = [spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url) for _ in range(8)]
    results = [job.finish(within=150) for job in jobs]

    for result in results:
        assert result.returncode == 0, result.output
        assert_no_password(result.output)
    outcomes = [json.loads(r.stdout) for r in results]
    assert sorted(o["action"] for o in outcomes) == ["migrations_applied"] + ["up_to_date"] * 7
    assert [o["applied"] for o in outcomes if o["applied"]] == [[*BASE, R1, R2]]
    assert all(o["current_revision"] == R2 for o in outcomes)
    assert database.versions() == {R2}
    assert side_effects(database) == [R1, R2]  # each migration ran exactly once
    no_lock_left(database)


def test_one_migrator_the_others_time_out_wait_or_stop(
    project: Path, database: TestDatabase, gate: Gate, spawn: Spawner
) -> None:
    """While a job is inside a (gated) migration: a second job with lock timeout 1 s exits 6
    naming the holder; `wait --until-verified` reports the migration in progress; a patient
    second job waits, and once the holder is done finds nothing to do; a waiting job stopped
    by SIGTERM exits 143. Nobody but the holder touches the database."""
    url = url_of(database)
    migrated_to_head(project, url)
    add_revision(project, R1, HEAD, body=side_table(R1))
    add_revision(project, R2, R1, body=record(R2) + "\n" + gate.body(R2))

    holder = spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url)
    eventually(lambda: gate.reached(R2), within=60, what="the first job is inside R2")
    if database.backend == "postgresql":
        with pg_watch(database.url) as watch:
            [(_, granted, name)] = watch.migration_lock_rows()
        assert granted and name.startswith("dbinit-migrate:") and name.endswith(f"->{R2}")

    impatient = run_dbinit("migrate", cwd=project, DATABASE_URL=url, DBINIT_LOCK_TIMEOUT="1")
    assert impatient.returncode == 6, impatient.output
    assert "Error: migration lock not acquired within 1s: held by dbinit-migrate:" in impatient.stderr
    assert f"->{R2}" in impatient.stderr  # the holder names its target
    assert "DBINIT_LOCK_TIMEOUT" in impatient.stderr  # the hint
    assert_no_password(impatient.output)
    assert database.versions() == {R1}  # R1 committed by the holder; R2 still running
    assert side_effects(database) == [R1]

    waiter = spawn("wait", "--until-verified", "--timeout", "90", cwd=project, DATABASE_URL=url)
    patient = spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url)
    stopped = spawn("migrate", cwd=project, DATABASE_URL=url)
    eventually(
        lambda: "migration in progress (held by dbinit-migrate:" in waiter.stderr(),
        within=30,
        what="wait --until-verified reports the migration in progress",
    )
    for job in (patient, stopped):
        eventually(
            lambda job=job: events(job.stderr(), "Waiting for the migration lock"),
            within=30,
            what="the second job waits for the lock",
        )
    waiting = events(patient.stderr(), "Waiting for the migration lock")[0]
    assert str(waiting["holder"]).startswith("dbinit-migrate:")

    sent = stopped.send(signal.SIGTERM)
    interrupted = stopped.finish(within=15)
    assert interrupted.returncode == 143, interrupted.output
    assert time.monotonic() - sent < 20
    assert "SIGTERM received: stopped while waiting for the migration lock" in interrupted.stderr
    assert_no_password(interrupted.output)
    assert database.versions() == {R1}

    gate.open()
    first = holder.finish(within=60)
    assert first.returncode == 0, first.output
    assert json.loads(first.stdout)["applied"] == [R1, R2]
    second = patient.finish(within=60)
    assert second.returncode == 0, second.output
    outcome = json.loads(second.stdout)
    assert (outcome["action"], outcome["applied"], outcome["current_revision"]) == ("up_to_date", [], R2)
    ready = waiter.finish(within=60)
    assert ready.returncode == 0, ready.output
    assert "Database is ready." in ready.stdout
    for result in (first, second, ready):
        assert_no_password(result.output)

    assert database.versions() == {R2}
    assert side_effects(database) == [R1, R2]
    no_lock_left(database)


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_slow_migration_rolls_back_and_frees_the_lock(
    project: Path, pg_database: TestDatabase, spawn: Spawner, signum: signal.Signals
) -> None:
    url = url_of(pg_database)
    migrated_to_head(project, url)
    add_revision(project, R1, HEAD, body=side_table(R1))
    add_revision(
        project,
        R2,
        R1,
        body='op.add_column("products", sa.Column("note", sa.String(50)))\n'
        'op.create_table("slow_table", sa.Column("id", sa.Integer))\n'
        + record(R2)
        + '\nop.execute("SELECT pg_sleep(60)")',
    )
    with pg_watch(pg_database.url) as watch:
        job = spawn("migrate", cwd=project, DATABASE_URL=url)
        [(_, session)] = eventually(
            lambda: watch.running("pg_sleep"), within=60, what="the slow statement runs"
        )
        assert session.startswith("dbinit-run:")  # the tagged migration session
        sent = job.send(signum)
        result = job.finish(within=30)
        assert time.monotonic() - sent < 20  # the statement was cancelled, not waited for (60 s)
        assert result.returncode == 128 + signum, result.output
        # the lock was released before the process exited
        assert watch.migration_lock_rows() == []
        assert watch.running("pg_sleep") == []  # cancelled on the server, not left running

    assert f"{signum.name} received: migration {R2} cancelled and rolled back" in result.stderr
    assert "Migration lock released" in result.stderr
    assert_no_password(result.output)
    assert pg_database.versions() == {R1}  # the previous revision
    assert side_effects(pg_database) == [R1]
    assert "slow_table" not in pg_database.tables()  # R2's DDL rolled back
    assert "note" not in columns(pg_database, "products")


def test_sigterm_on_sqlite_stops_at_the_migration_boundary(
    project: Path, sqlite_database: TestDatabase, spawn: Spawner
) -> None:
    """SQLite has no statement to cancel (the slow part is Python): the revision runs to its
    end, then its transaction is rolled back instead of committed, and the job exits 143."""
    database = sqlite_database
    gate = Gate(database, project)
    migrated_to_head(project, database.url)
    add_revision(project, R1, HEAD, body=side_table(R1))
    add_revision(project, R2, R1, body=record(R2) + "\n" + gate.body(R2))
    job = spawn("migrate", cwd=project, DATABASE_URL=database.url)
    eventually(lambda: gate.reached(R2), within=60, what="the job is inside R2")
    job.send(signal.SIGTERM)
    gate.open()
    result = job.finish(within=30)
    assert result.returncode == 143, result.output
    assert f"SIGTERM received: migration {R2} rolled back" in result.stderr
    assert database.versions() == {R1}
    assert side_effects(database) == [R1]
    no_lock_left(database)


def test_sigterm_on_sqlite_rolls_back_the_revisions_ddl(
    project: Path, sqlite_database: TestDatabase, spawn: Spawner
) -> None:
    database = sqlite_database
    gate = Gate(database, project)
    migrated_to_head(project, database.url)
    ddl = 'op.create_table("slow_table", sa.Column("id", sa.Integer))'
    add_revision(project, R1, HEAD, body=ddl + "\n" + gate.body(R1))
    job = spawn("migrate", cwd=project, DATABASE_URL=database.url)
    eventually(lambda: gate.reached(R1), within=60, what="the job is inside R1")
    job.send(signal.SIGTERM)
    gate.open()
    result = job.finish(within=30)
    assert result.returncode == 143, result.output
    assert "rolled back" in result.stderr
    assert database.versions() == {HEAD}
    assert "slow_table" not in database.tables()  # what "rolled back" promises
    add_revision(project, R1, HEAD, body=ddl)
    rerun = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url)  # "run the job again"
    assert rerun.returncode == 0, rerun.output


def test_sigkill_then_rerun_converges(project: Path, database: TestDatabase, spawn: Spawner) -> None:
    backend = database.backend
    url = url_of(database)
    migrated_to_head(project, url)
    add_revision(project, R1, HEAD, body=side_table(R1))
    if backend == "postgresql":
        slow = record(R2) + '\nop.execute("SELECT pg_sleep(30)")'
        watch = PgWatch(database.url)
        inside = lambda: watch.running("pg_sleep")  # noqa: E731
    else:
        started = project / "started"
        slow = record(R2) + f"\nimport pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(30)"
        inside = started.exists
    add_revision(project, R2, R1, body=slow)
    try:
        job = spawn("migrate", cwd=project, DATABASE_URL=url)
        eventually(inside, within=60, what="the job is inside the slow revision")
        job.send(signal.SIGKILL)
        assert job.finish(within=10).returncode == -signal.SIGKILL
        if backend == "postgresql":  # the lock died with its session
            eventually(lambda: watch.migration_lock_rows() == [], within=10, what="lock gone")
    finally:
        if backend == "postgresql":
            watch.close()
    assert database.versions() == {R1}

    add_revision(project, R2, R1, body=record(R2))  # the same revision, now fast
    rerun = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=url, timeout=60)
    assert rerun.returncode == 0, rerun.output
    assert json.loads(rerun.stdout)["applied"] == [R2]
    assert_no_password(rerun.output)
    assert database.versions() == {R2}
    assert side_effects(database) == [R1, R2]  # R2's side effect exactly once
    no_lock_left(database)


def test_sigkill_leaves_no_orphaned_migration_session(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    url = url_of(pg_database)
    migrated_to_head(project, url)
    add_revision(
        project,
        R1,
        HEAD,
        body='op.add_column("products", sa.Column("note", sa.String(50)))\n'
        'op.execute("SELECT pg_sleep(60)")',
    )
    with pg_watch(pg_database.url) as watch:
        job = spawn("migrate", cwd=project, DATABASE_URL=url)
        eventually(lambda: watch.running("pg_sleep"), within=60, what="the slow statement runs")
        job.send(signal.SIGKILL)
        job.finish(within=10)
        eventually(lambda: watch.migration_lock_rows() == [], within=10, what="lock gone")
        # The server must notice the vanished client (client_connection_check_interval, as
        # the lock connection sets) and end the orphaned migration session promptly.
        eventually(
            lambda: watch.sessions("dbinit-run:") == [],
            within=10,
            what="the orphaned migration session (still in pg_sleep, holding products) ended",
        )
    add_revision(project, R1, HEAD, body='op.add_column("products", sa.Column("note", sa.String(50)))')
    rerun = run_dbinit("migrate", cwd=project, DATABASE_URL=url, timeout=30)
    assert rerun.returncode == 0, rerun.output
    assert pg_database.versions() == {R1}
    assert "note" in columns(pg_database, "products")


# -- statement and DDL lock timeouts -----------------------------------------------------------


def test_statement_timeout_fails_the_revision(project: Path, pg_database: TestDatabase) -> None:
    url = url_of(pg_database)
    migrated_to_head(project, url)
    add_revision(project, R1, HEAD, body=side_table(R1))
    add_revision(
        project,
        R2,
        R1,
        body='op.create_table("slow_table", sa.Column("id", sa.Integer))\n'
        + record(R2)
        + '\nop.execute("SELECT pg_sleep(60)")',
    )
    started = time.monotonic()
    result = run_dbinit(
        "migrate", cwd=project, DATABASE_URL=url, DBINIT_STATEMENT_TIMEOUT="1", timeout=60
    )
    assert time.monotonic() - started < 40  # cut at 1 s, not after the 60 s sleep
    assert result.returncode == 5, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: migration {R2} ({R2}_revision.py) failed: ")
    assert "canceling statement due to statement timeout" in error
    assert "[SQL: SELECT pg_sleep(60)]" in error
    assert_no_password(result.output)
    assert pg_database.versions() == {R1}
    assert side_effects(pg_database) == [R1]
    assert "slow_table" not in pg_database.tables()
    no_lock_left(pg_database)


def test_ddl_lock_timeout_bounds_ddl_not_the_migration_lock_wait(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    """DBINIT_DDL_LOCK_TIMEOUT=1: the wait for the migration lock (held here by the test for
    longer than that) is not cut by it; the ALTER of a table another session holds is."""
    import psycopg

    url = url_of(pg_database)
    migrated_to_head(project, url)
    add_revision(project, R1, HEAD, body='op.add_column("products", sa.Column("note", sa.String(50)))')
    with pg_watch(pg_database.url) as lock_holder, psycopg.connect(
        pg_database.parsed.asyncpg_dsn()
    ) as table_holder:
        lock_holder.rows("SELECT pg_advisory_lock(%s)", lock_holder_key())
        table_holder.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")  # open transaction
        job = spawn(
            "migrate", cwd=project, DATABASE_URL=url, DBINIT_DDL_LOCK_TIMEOUT="1", DBINIT_LOCK_TIMEOUT="60"
        )
        eventually(
            lambda: events(job.stderr(), "Waiting for the migration lock"),
            within=30,
            what="the job waits for the migration lock",
        )
        with pytest.raises(subprocess.TimeoutExpired):  # still waiting, well past 1 s
            job.proc.wait(timeout=2.5)
        lock_holder.rows("SELECT pg_advisory_unlock(%s)", lock_holder_key())
        # the test never lets go of products: only the DDL lock timeout can end the ALTER
        result = job.finish(within=60)
        table_holder.rollback()

    [acquired] = events(result.stderr, "Migration lock acquired")
    assert float(acquired["waited_s"]) > 2.5  # > DBINIT_DDL_LOCK_TIMEOUT
    assert result.returncode == 5, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: migration {R1} ({R1}_revision.py) failed: ")
    assert "canceling statement due to lock timeout" in error
    assert "[SQL: ALTER TABLE products ADD COLUMN note" in error
    assert_no_password(result.output)
    assert pg_database.versions() == {HEAD}
    assert "note" not in columns(pg_database, "products")
    no_lock_left(pg_database)


def lock_holder_key() -> int:
    from dbinit.lock import lock_key

    return lock_key("public", "alembic_version")


# -- unreachable, refused, wrong password ---------------------------------------------------------


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


UNREACHABLE = {
    "refused": ("postgresql+asyncpg://postgres:{pw}@127.0.0.1:{closed}/app", "connection refused"),
    "unresponsive": ("postgresql+asyncpg://postgres:{pw}@127.0.0.1:{blackhole}/app", "timed out"),
    "socket-gone": ("postgresql://postgres:{pw}@/app?host={tmp}", "no such file or directory"),
    "dns": ("postgresql+asyncpg://postgres:{pw}@no-such-host.invalid:5432/app", "resolved (DNS)"),
    "unknown-database": ("{server}", "database does not exist"),
}


@pytest.mark.parametrize("situation", list(UNREACHABLE))
def test_unreachable_database_is_exit_3_with_the_reason(
    project: Path, request: pytest.FixtureRequest, spawn: Spawner, tmp_path: Path, situation: str
) -> None:
    template, reason = UNREACHABLE[situation]
    if situation == "unknown-database":
        server = request.getfixturevalue("postgres_server")
        url = server.url_for("dbinit_no_such_database", password=SECRET)
    else:
        url = template.format(
            pw=SECRET,
            closed=free_port(),
            blackhole=request.getfixturevalue("blackhole") if situation == "unresponsive" else 0,
            tmp=tmp_path,
        )
    # attempts short enough for `wait --timeout 2` to retry at least once
    settings = {"DATABASE_URL": url, "DBINIT_CONNECT_TIMEOUT": "0.5" if situation == "unresponsive" else "1"}
    commands = [("wait", "--timeout", "2"), ("verify",), ("migrate",)]
    processes = [spawn(*command, cwd=project, **settings) for command in commands]
    ended = finish_all(processes, within=60)
    for process, command, (code, seconds) in zip(processes, commands, ended, strict=True):
        output = process.stdout() + process.stderr()
        assert code == 3, f"{command}: {output}"
        assert reason in process.stderr(), f"{command}: {output}"
        assert_no_password(output)
        assert seconds < 20, f"{command} took {seconds:.1f}s"
    wait_output = processes[0].stderr()
    assert "gave up after" in wait_output
    retries = events(wait_output, "Database not reachable yet")
    assert len(retries) >= 2 and all(reason in str(e["reason"]) for e in retries)


def test_wrong_password_is_exit_3_authentication_failed(
    project: Path, scram_server: ScramServer, spawn: Spawner
) -> None:
    wrong = f"wr0ng-{SECRET}"
    url = scram_server.url(password=wrong)
    commands = [
        ("wait", "--timeout", "2"),
        ("verify",),
        ("migrate",),
        ("wait", "--until-verified", "--timeout", "2"),
    ]
    processes = [spawn(*command, cwd=project, DATABASE_URL=url) for command in commands]
    ended = finish_all(processes, within=60)
    for process, command, (code, seconds) in zip(processes, commands, ended, strict=True):
        output = process.stdout() + process.stderr()
        expected = 4 if "--until-verified" in command else 3
        assert code == expected, f"{command}: {output}"
        assert "authentication failed" in output, f"{command}: {output}"
        assert "password authentication failed for user" in output
        for password in (wrong, scram_server.password):
            assert_no_password(output, password)
        assert seconds < 20
    assert "Check the user and password in DATABASE_URL" in processes[1].stderr()
    # the right password gets in (the server is up): the empty database is just not ready
    right = run_dbinit("verify", cwd=project, DATABASE_URL=scram_server.url(password=scram_server.password))
    assert right.returncode == 4, right.output
    assert_no_password(right.output, scram_server.password)


def test_wait_timeout_bounds_a_hanging_connection_attempt(
    project: Path, blackhole: int, spawn: Spawner
) -> None:
    """A server that accepts TCP and never answers: `wait --timeout 2` must end near 2 s."""
    url = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:{blackhole}/app"
    commands = [("wait", "--timeout", "2"), ("wait", "--until-verified", "--timeout", "2")]
    waiters = [
        spawn(*command, cwd=project, DATABASE_URL=url, DBINIT_CONNECT_TIMEOUT="10") for command in commands
    ]
    ended = finish_all(waiters, within=8)  # 2 s + interpreter start, not 10 s
    assert [code for code, _ in ended] == [3, 4]
    for waiter in waiters:
        assert "timed out" in waiter.stderr()
        assert_no_password(waiter.stdout() + waiter.stderr())


# -- the server goes away and comes back -----------------------------------------------------------


def test_wait_until_verified_recovers_when_the_server_comes_back(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    with restartable_proxy(pg_database.url) as proxy:
        through_proxy = proxy.url_for(pg_database.url, password=SECRET)
        waiter = spawn("wait", "--until-verified", "--timeout", "90", cwd=project, DATABASE_URL=through_proxy)
        eventually(
            lambda: any("dbinit.E002" in str(e.get("reason")) for e in events(waiter.stderr())),
            within=30,
            what="the waiter reaches the (empty) database",
        )
        proxy.stop()  # the server goes away: the port refuses connections
        eventually(
            lambda: any("connection refused" in str(e.get("reason")) for e in events(waiter.stderr())),
            within=30,
            what="the waiter sees the server gone",
        )
        migrated_to_head(project, url_of(pg_database))  # the job, on the real server
        assert waiter.running()
        proxy.start()  # back, on the same port
        result = waiter.finish(within=30)
    assert result.returncode == 0, result.output
    assert "Database is ready." in result.stdout
    assert_no_password(result.output)
    assert pg_database.versions() == {HEAD}


@pytest.mark.parametrize(
    "command",
    [("wait", "--until-verified", "--timeout", "60"), ("wait", "--timeout", "60"), ("verify",)],
    ids=["wait-until-verified", "wait", "verify"],
)
def test_connection_dropped_under_a_query(
    project: Path, pg_database: TestDatabase, spawn: Spawner, command: tuple[str, ...]
) -> None:
    """The server accepts the login, then goes away under the first statement (a restart or
    failover at the wrong moment): `verify` exits 3 (unreachable), `wait` keeps retrying."""
    with restartable_proxy(pg_database.url) as proxy:
        proxy.cut_on_query = True
        through_proxy = proxy.url_for(pg_database.url, password=SECRET)
        if command[0] == "verify":
            result = spawn(*command, cwd=project, DATABASE_URL=through_proxy).finish(within=30)
            assert proxy.cut >= 1
            assert result.returncode == 3, result.output
            assert "Traceback" not in result.output
            assert_no_password(result.output)
            return
        migrated_to_head(project, url_of(pg_database))
        waiter = spawn(*command, cwd=project, DATABASE_URL=through_proxy)
        eventually(lambda: proxy.cut >= 2 or not waiter.running(), within=30, what="two attempts cut")
        proxy.cut_on_query = False
        result = waiter.finish(within=30)
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    assert_no_password(result.output)
