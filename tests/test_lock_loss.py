"""The migration lock's session ends mid-migration: the job must notice, roll back and stop.

The lock is a session-level advisory lock on a dedicated connection. When that
session ends while a revision runs (an ``idle_session_timeout`` on the database
or role, a DBA's ``pg_terminate_backend``, a proxy or load balancer cutting the
connection), another job can take the lock and run the same revision. These
tests end the lock's session for real while a revision is provably mid-way
(gated on an advisory lock or a file the test holds), then assert the exit
code and message, ``alembic_version``, side-effect rows (each revision ran
exactly once) and that no password appears in any output.

- ``idle_session_timeout = '1s'`` on the database -> test_idle_session_timeout_does_not_end_the_lock
- ``pg_terminate_backend`` of the lock session -> test_terminated_lock_session_rolls_back_and_exits_6
- a second job right after the termination -> test_the_first_job_never_commits_after_losing_the_lock
- a proxy cutting (reset) or silencing (black hole) the lock connection ->
  test_proxy_cutting_the_lock_connection_rolls_back_and_exits_6
- the lock connection falls silent just before a commit (the heartbeat has not noticed yet) ->
  test_a_silent_lock_connection_is_caught_before_the_commit
- a proxy that cuts connections idle for 3 s, and a migration longer than that ->
  test_the_heartbeat_keeps_a_proxy_from_cutting_the_lock_connection
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit.urls import DatabaseURL  # noqa: E402
from tests.plugins.databases import SECRET, TestDatabase, run_dbinit  # noqa: E402
from tests.plugins.databases import add_revision as write_revision  # noqa: E402
from tests.plugins.faults import (  # noqa: E402
    PgWatch,
    Spawned,
    Spawner,
    assert_no_password,
    eventually,
    pg_watch,
    restartable_proxy,
)
from tests.test_safety import (  # noqa: E402
    GATE,
    HEAD,
    R1,
    R2,
    events,
    migrated_to_head,
    no_lock_left,
    record,
    side_effects,
    side_table,
    url_of,
)

pytest_plugins = ["tests.plugins.faults"]

R3 = "5afe0000a003"
LOCK_SESSION = "dbinit-migrate:"
LOST = "Error: the migration lock's session ended"


# -- helpers ----------------------------------------------------------------------------


class Watch(PgWatch):
    """A PgWatch that a database's ``idle_session_timeout`` does not end (the test idles)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.rows("SET idle_session_timeout = 0")

    def hold_gate(self) -> None:
        self.rows("SELECT pg_advisory_lock(%s)", GATE)

    def open_gate(self) -> None:
        self.rows("SELECT pg_advisory_unlock(%s)", GATE)

    def gate_reached(self) -> bool:
        return self.advisory_waiters(GATE) > 0

    def lock_session(self) -> int:
        """The pid of the session holding the migration lock (fails if none does)."""
        [(pid, granted, name)] = self.migration_lock_rows()
        assert granted and name.startswith(LOCK_SESSION), (pid, granted, name)
        return pid

    def alive(self, pid: int) -> bool:
        return bool(self.rows("SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid))


@pytest.fixture
def watch(pg_database: TestDatabase) -> Iterator[Watch]:
    held = Watch(pg_database.url)
    try:
        yield held
    finally:
        held.close()


GATED = f'op.execute("SELECT pg_advisory_xact_lock({GATE})")'


def file_gate(project: Path) -> str:
    """Revision code that waits (in Python, not in a statement) for ``release-<pid>``.

    The migration's session sits idle in its transaction meanwhile: nothing on
    the server to cancel, so only the job's own checks can keep it from committing.
    """
    return "\n".join(
        [
            "import os, pathlib, time",
            f"here = pathlib.Path({str(project)!r})",
            "(here / f'started-{os.getpid()}').touch()",
            "deadline = time.monotonic() + 60",
            "while not (here / f'release-{os.getpid()}').exists() and time.monotonic() < deadline:",
            "    time.sleep(0.05)",
        ]
    )


def non_transactional(rev: str) -> str:
    """A step that commits at once, whatever happens to the revision (as CREATE INDEX CONCURRENTLY)."""
    return "with op.get_context().autocommit_block():\n    " + record(rev)


def error_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    return line


def assert_lock_lost(stderr: str, rolled_back: str, earlier: list[str]) -> None:
    """The retryable lock-lost error: what happened, the revision rolled back, what stays."""
    error = error_line(stderr)
    assert error.startswith(LOST), stderr
    assert f"migration {rolled_back} rolled back" in error, error
    assert f"earlier revisions of this run stay applied: {', '.join(earlier)}" in error, error
    assert "Hint: Run the migration job again" in stderr, stderr
    assert "Traceback" not in stderr, stderr


# -- an idle timeout on the database ------------------------------------------------------


def test_idle_session_timeout_does_not_end_the_lock(
    project: Path, pg_database: TestDatabase, watch: Watch, spawn: Spawner
) -> None:
    """``ALTER DATABASE ... SET idle_session_timeout = '1s'`` and a revision that stays mid-way
    (gated) for longer than that: the lock session must not idle out. Another job meanwhile
    finds the lock held (exit 6 on its 1 s lock timeout) instead of taking it and running the
    revision's non-transactional step a second time."""
    url = url_of(pg_database)
    migrated_to_head(project, url)
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body=non_transactional(R2) + "\n" + GATED)
    watch.rows(f'ALTER DATABASE "{pg_database.parsed.database}" SET idle_session_timeout = \'1s\'')
    watch.hold_gate()

    job = spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url)
    eventually(watch.gate_reached, within=60, what="the job is inside R2")
    holder = watch.lock_session()
    # An idle session opened now ends within about 1 s: the lock session, idle (but for
    # dbinit's heartbeat) since before R1 began, has been exposed to the timeout longer.
    with pg_watch(pg_database.url) as probe:
        [(probe_pid,)] = probe.rows("SELECT pg_backend_pid()")
        eventually(lambda: not watch.alive(probe_pid), within=30, what="an idle session times out")
    assert watch.alive(holder), "the lock session idled out"
    assert watch.lock_session() == holder

    second = spawn("migrate", cwd=project, DATABASE_URL=url, DBINIT_LOCK_TIMEOUT="1")
    refused = second.finish(within=30)
    assert refused.returncode == 6, refused.output
    assert "migration lock not acquired within 1s: held by dbinit-migrate:" in refused.stderr

    watch.open_gate()
    result = job.finish(within=60)
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["applied"] == [R1, R2]
    for output in (result.output, refused.output):
        assert_no_password(output)
    assert pg_database.versions() == {R2}
    assert side_effects(pg_database) == [R1, R2]  # each revision's side effect exactly once
    no_lock_left(pg_database)


# -- pg_terminate_backend of the lock session --------------------------------------------------


def test_terminated_lock_session_rolls_back_and_exits_6(
    project: Path, pg_database: TestDatabase, watch: Watch, spawn: Spawner
) -> None:
    """A DBA terminates the lock session while R2 waits inside a statement: the job ends R2's
    session on the server (so R2 cannot commit), exits 6 at once (the gate still closed)
    naming R2, and a rerun applies R2 exactly once."""
    url = url_of(pg_database)
    migrated_to_head(project, url)
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body=record(R2) + "\n" + GATED)
    watch.hold_gate()

    job = spawn("migrate", cwd=project, DATABASE_URL=url)
    eventually(watch.gate_reached, within=60, what="the job is inside R2")
    [(terminated,)] = watch.rows("SELECT pg_terminate_backend(%s)", watch.lock_session())
    assert terminated
    sent = time.monotonic()
    result = job.finish(within=30)  # without the gate opening: the job stops by itself
    took = time.monotonic() - sent

    assert result.returncode == 6, result.output
    assert_lock_lost(result.stderr, R2, [R1])
    assert events(result.stderr, "Migration lock lost")
    assert_no_password(result.output)
    assert pg_database.versions() == {R1}
    assert side_effects(pg_database) == [R1]  # R2 not committed
    eventually(lambda: watch.sessions("dbinit-run:") == [], within=10, what="R2's session ended")
    print(f"pg_terminate_backend -> exit: {took:.2f}s")

    watch.open_gate()
    rerun = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=url, timeout=60)
    assert rerun.returncode == 0, rerun.output
    assert json.loads(rerun.stdout)["applied"] == [R2]
    assert_no_password(rerun.output)
    assert pg_database.versions() == {R2}
    assert side_effects(pg_database) == [R1, R2]  # R2 exactly once
    no_lock_left(pg_database)


def test_the_first_job_never_commits_after_losing_the_lock(
    project: Path, pg_database: TestDatabase, watch: Watch, spawn: Spawner
) -> None:
    """The first job is in R2's Python code (its session idle in the transaction: nothing to
    cancel) when its lock session is terminated; a second job started right then takes the
    lock and enters R2 too. Let the first one go on first: it must not commit R2 (nor start
    R3) but exit 6; the second then applies R2 and R3, each exactly once."""
    url = url_of(pg_database)
    migrated_to_head(project, url)
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body=record(R2) + "\n" + file_gate(project))
    write_revision(project, R3, R2, body=record(R3))

    def inside_r2(process: Spawned) -> bool:
        return (project / f"started-{process.pid}").exists()

    def release(process: Spawned) -> None:
        (project / f"release-{process.pid}").touch()

    first = spawn("migrate", cwd=project, DATABASE_URL=url)
    eventually(lambda: inside_r2(first), within=60, what="the first job is inside R2")
    watch.rows("SELECT pg_terminate_backend(%s)", watch.lock_session())
    second = spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url)
    eventually(lambda: inside_r2(second), within=60, what="the second job is inside R2")
    assert first.running()  # both are in R2's code now; only the first has lost the lock

    release(first)
    lost = first.finish(within=30)
    assert lost.returncode == 6, lost.output
    assert_lock_lost(lost.stderr, R2, [R1])
    assert pg_database.versions() == {R1}  # the first job committed nothing after the loss
    assert side_effects(pg_database) == [R1]

    release(second)
    done = second.finish(within=60)
    assert done.returncode == 0, done.output
    assert json.loads(done.stdout)["applied"] == [R2, R3]
    for output in (lost.output, done.output):
        assert_no_password(output)
    assert pg_database.versions() == {R3}
    assert side_effects(pg_database) == [R1, R2, R3]  # each exactly once
    no_lock_left(pg_database)


# -- a proxy cuts the lock connection ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_proxy_cutting_the_lock_connection_rolls_back_and_exits_6(
    project: Path,
    pg_database: TestDatabase,
    watch: Watch,
    spawn: Spawner,
    mode: Literal["reset", "blackhole"],
) -> None:
    """Through a proxy that cuts the lock's connection while R2 waits inside a statement:
    ``reset`` closes it at both ends (the job sees its connection closed), ``blackhole`` ends
    the server's side and leaves the job's socket open but silent (only the heartbeat's
    timeout tells). Either way the job exits 6 without committing R2, and a rerun through the
    same proxy applies R2 once."""
    migrated_to_head(project, url_of(pg_database))
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body=record(R2) + "\n" + GATED)
    watch.hold_gate()
    with restartable_proxy(pg_database.url) as proxy:
        url = proxy.url_for(pg_database.url, password=SECRET)
        job = spawn("migrate", cwd=project, DATABASE_URL=url)
        eventually(watch.gate_reached, within=60, what="the job is inside R2")
        holder = watch.lock_session()
        assert proxy.cut_session(LOCK_SESSION, mode=mode) == 1
        eventually(lambda: not watch.alive(holder), within=10, what="the lock session ended")
        sent = time.monotonic()
        result = job.finish(within=30)
        took = time.monotonic() - sent

        assert result.returncode == 6, result.output
        assert_lock_lost(result.stderr, R2, [R1])
        assert_no_password(result.output)
        assert pg_database.versions() == {R1}
        assert side_effects(pg_database) == [R1]
        print(f"proxy {mode} -> exit: {took:.2f}s")

        watch.open_gate()
        rerun = run_dbinit("migrate", cwd=project, DATABASE_URL=url, timeout=60)
    assert rerun.returncode == 0, rerun.output
    assert_no_password(rerun.output)
    assert pg_database.versions() == {R2}
    assert side_effects(pg_database) == [R1, R2]
    no_lock_left(pg_database)


def test_a_silent_lock_connection_is_caught_before_the_commit(
    project: Path, pg_database: TestDatabase, watch: Watch, spawn: Spawner
) -> None:
    """The lock's connection goes silent (black hole: the server's side ended, the job's socket
    open, no close to notice) while R2's Python code runs, and R2 is let finish at once: the
    heartbeat needs seconds to call it lost, the commit would take milliseconds. The fresh check
    in R2's ``on_version_apply`` must find the lock not confirmed and roll R2 back."""
    migrated_to_head(project, url_of(pg_database))
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body=record(R2) + "\n" + file_gate(project))
    with restartable_proxy(pg_database.url) as proxy:
        url = proxy.url_for(pg_database.url, password=SECRET)
        job = spawn("migrate", cwd=project, DATABASE_URL=url)
        eventually(lambda: (project / f"started-{job.pid}").exists(), within=60, what="inside R2")
        holder = watch.lock_session()
        assert proxy.cut_session(LOCK_SESSION, mode="blackhole") == 1
        eventually(lambda: not watch.alive(holder), within=10, what="the lock session ended")
        (project / f"release-{job.pid}").touch()
        result = job.finish(within=30)

        assert result.returncode == 6, result.output
        assert_lock_lost(result.stderr, R2, [R1])
        assert "could not be confirmed" in error_line(result.stderr) or "no answer" in error_line(
            result.stderr
        )
        assert_no_password(result.output)
        assert pg_database.versions() == {R1}
        assert side_effects(pg_database) == [R1]

        write_revision(project, R2, R1, body=record(R2))  # the same revision, without the gate
        rerun = run_dbinit("migrate", cwd=project, DATABASE_URL=url, timeout=60)
    assert rerun.returncode == 0, rerun.output
    assert pg_database.versions() == {R2}
    assert side_effects(pg_database) == [R1, R2]
    no_lock_left(pg_database)


def test_the_heartbeat_keeps_a_proxy_from_cutting_the_lock_connection(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    """A proxy cuts connections idle for 3 s (as a load balancer's idle timeout); R2 takes about
    6 s, its session busy all along. The lock's session, otherwise idle for the whole run, is
    kept busy by the heartbeat: it is not cut, and the job exits 0 with each revision once. An
    idle connection through the same proxy is cut, so the proxy does cut."""
    import psycopg

    migrated_to_head(project, url_of(pg_database))
    write_revision(project, R1, HEAD, body=side_table(R1))
    write_revision(project, R2, R1, body="\n".join([record(R2), *['op.execute("SELECT pg_sleep(1)")'] * 6]))
    with restartable_proxy(pg_database.url) as proxy:
        proxy.idle_cut = 3.0
        url = proxy.url_for(pg_database.url, password=SECRET)
        dsn = DatabaseURL.parse(proxy.url_for(pg_database.url)).asyncpg_dsn()
        with psycopg.connect(dsn, application_name="idle-probe", autocommit=True):
            result = spawn("migrate", "--format", "json", cwd=project, DATABASE_URL=url).finish(within=60)
            eventually(lambda: "idle-probe" in proxy.cut_names, within=30, what="the proxy cuts idle ones")
        cut = list(proxy.cut_names)
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["applied"] == [R1, R2]
    assert not [name for name in cut if name.startswith(LOCK_SESSION)], cut
    assert_no_password(result.output)
    assert pg_database.versions() == {R2}
    assert side_effects(pg_database) == [R1, R2]
    no_lock_left(pg_database)
