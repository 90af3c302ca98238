"""The verdict, DBINIT_ALLOW_AHEAD=compatible and the contract guard, over two releases of the example.

Release N-1 is examples/bakery as it is (head 8d3f6b2a9c11). Release N adds
an expand revision (a nullable column) and then a contract one (it drops the
column ``orders.status`` that N-1's code reads). Every run is the real
``dbinit`` against real PostgreSQL (and SQLite where said).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbinit.errors import ExitCode
from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit
from tests.plugins.pgproxy import pg_proxy

HEAD = "8d3f6b2a9c11"  # N-1's head (an expand: a column with a server default)
ROOT = "374752db316e"
EXPAND = "e1a2b3c4d5e6"  # N: add a nullable column
CONTRACT = "c6d5e4b3a2f1"  # N: drop orders.status, which N-1 reads
SERVICE = "orders"


def release(base: Path, tmp_path: Path, name: str, *, contract: bool = True) -> Path:
    """A copy of ``base`` (N-1) with release N's revisions: the expand, then (``contract``) the contract."""
    image = tmp_path / name
    shutil.copytree(base, image)
    add_revision(image, EXPAND, HEAD, body='op.add_column("orders", sa.Column("note", sa.Text()))')
    if contract:
        add_revision(image, CONTRACT, EXPAND,
                     body='op.drop_index("ix_orders_status", table_name="orders")\n'
                     'op.drop_column("orders", "status")')  # fmt: skip
    return image


def verify_json(image: Path, url: str, **env: str) -> tuple[int, dict[str, object]]:
    result = run_dbinit("verify", "--format", "json", cwd=image, DATABASE_URL=url, **env)
    return result.returncode, json.loads(result.stdout)


def e004(report: dict[str, object]) -> dict[str, object]:
    checks = report["checks"]
    assert isinstance(checks, list)
    (entry,) = [c for c in checks if c["id"] == "dbinit.E004"]
    return entry


@pytest.fixture
def n_minus_1(project: Path, pg_database: TestDatabase) -> Path:
    """The database migrated by release N-1 (at its head)."""
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    return project


def test_expand_keeps_the_old_image_ready(n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path) -> None:
    url = pg_database.url
    expand_only = release(n_minus_1, tmp_path, "n-expand", contract=False)
    assert run_dbinit("migrate", cwd=expand_only, DATABASE_URL=url).returncode == 0
    assert pg_database.versions() == {EXPAND}

    code, report = verify_json(n_minus_1, url, DBINIT_ALLOW_AHEAD="compatible")
    assert code == ExitCode.OK, report
    assert report["verdict"] == "ahead_compatible"
    assert report["compatible_since"] == ROOT  # an expand inherits its parent's, back to the root
    entry = e004(report)
    assert entry["level"] == "WARNING"
    assert "accepted as compatible" in str(entry["message"]) and EXPAND in str(entry["message"])

    # the text summary says it too
    text = run_dbinit("verify", cwd=n_minus_1, DATABASE_URL=url, DBINIT_ALLOW_AHEAD="compatible")
    assert text.returncode == 0
    assert f"verdict: ahead_compatible, compatible_since={ROOT}" in text.stdout

    # still one statement on the verify path
    with pg_proxy(url) as proxy:
        counted = run_dbinit("verify", cwd=n_minus_1, DATABASE_URL=proxy.url_for(url),
                             DBINIT_ALLOW_AHEAD="compatible")  # fmt: skip
    assert counted.returncode == 0, counted.output
    assert proxy.statements == 1, proxy.messages

    # the N-1 Job run after N's finishes as up to date
    job = run_dbinit("migrate", "--format", "json", cwd=n_minus_1, DATABASE_URL=url,
                     DBINIT_ALLOW_AHEAD="compatible")  # fmt: skip
    assert job.returncode == 0, job.output
    assert json.loads(job.stdout)["action"] == "up_to_date"

    # the new image is at head
    code, report = verify_json(expand_only, url)
    assert (code, report["verdict"], report["compatible_since"]) == (0, "at_head", None)


def test_contract_fails_the_old_image(n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path) -> None:
    url = pg_database.url
    image = release(n_minus_1, tmp_path, "n")
    assert run_dbinit("migrate", cwd=image, DATABASE_URL=url).returncode == 0
    assert pg_database.versions() == {CONTRACT}

    code, report = verify_json(n_minus_1, url, DBINIT_ALLOW_AHEAD="compatible")
    assert code == ExitCode.NOT_READY
    assert report["verdict"] == "ahead_incompatible"
    assert report["compatible_since"] == CONTRACT
    message = str(e004(report)["message"])
    assert f"{CONTRACT} (contract) needs the code of {CONTRACT} or later" in message
    assert "[dbinit.E004]" in str(report["message"])

    # "true" keeps today's behaviour: any newer revision is a warning; "false" fails it
    code, report = verify_json(n_minus_1, url, DBINIT_ALLOW_AHEAD="1")
    assert (code, report["verdict"]) == (0, "ahead_incompatible")
    code, report = verify_json(n_minus_1, url, DBINIT_ALLOW_AHEAD="false")
    assert (code, report["verdict"]) == (ExitCode.NOT_READY, "ahead_incompatible")

    # the N-1 Job on the contracted database: a final error (exit 2), not up to date
    job = run_dbinit("migrate", cwd=n_minus_1, DATABASE_URL=url, DBINIT_ALLOW_AHEAD="compatible")
    assert job.returncode == ExitCode.USAGE_ERROR, job.output
    assert "ahead_incompatible" in job.stderr
    assert pg_database.versions() == {CONTRACT}


@pytest.mark.parametrize("lost", ["row", "table"])
def test_no_history_row_is_ahead_unknown(
    n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path, lost: str
) -> None:
    url = pg_database.url
    expand_only = release(n_minus_1, tmp_path, "n-expand", contract=False)
    assert run_dbinit("migrate", cwd=expand_only, DATABASE_URL=url).returncode == 0
    if lost == "row":
        pg_database.sql(f"DELETE FROM dbinit_history WHERE revision = '{EXPAND}'")
    else:  # migrated before dbinit kept a history
        pg_database.sql("DROP TABLE dbinit_history")
    code, report = verify_json(n_minus_1, url, DBINIT_ALLOW_AHEAD="compatible")
    assert code == ExitCode.NOT_READY
    assert (report["verdict"], report["compatible_since"]) == ("ahead_unknown", None)
    message = str(e004(report)["message"])
    assert EXPAND in message
    assert ("no applied row" if lost == "row" else "no history table") in message
    if lost == "table":
        with pg_proxy(url) as proxy:
            run_dbinit("verify", cwd=n_minus_1, DATABASE_URL=proxy.url_for(url))
        assert proxy.statements == 2, proxy.messages  # a legacy database: one more statement
        # the next Job, with nothing to apply, creates the table: back to one statement
        up_to_date = run_dbinit("migrate", cwd=expand_only, DATABASE_URL=url)
        assert up_to_date.returncode == 0, up_to_date.output
        assert "History table created" in up_to_date.stderr
        assert pg_database.sql("SELECT count(*) FROM dbinit_history") == [(0,)]
        with pg_proxy(url) as proxy:
            run_dbinit("verify", cwd=n_minus_1, DATABASE_URL=proxy.url_for(url))
        assert proxy.statements == 1, proxy.messages


def test_a_revision_nobody_wrote_is_unknown_revision(n_minus_1: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("UPDATE alembic_version SET version_num = 'zz_not_ours'")
    code, report = verify_json(n_minus_1, pg_database.url, DBINIT_ALLOW_AHEAD="compatible")
    assert (code, report["verdict"]) == (ExitCode.NOT_READY, "unknown_revision")


def test_verdicts_of_an_empty_and_a_behind_database(project: Path, database: TestDatabase) -> None:
    code, report = verify_json(project, database.url)
    assert (code, report["verdict"]) == (ExitCode.NOT_READY, "empty")
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    code, report = verify_json(project, database.url)
    assert (code, report["verdict"]) == (0, "at_head")
    database.sql(f"UPDATE alembic_version SET version_num = '{ROOT}'")
    code, report = verify_json(project, database.url)
    assert (code, report["verdict"]) == (ExitCode.NOT_READY, "behind")


def test_sqlite_expand_then_contract(project: Path, sqlite_database: TestDatabase, tmp_path: Path) -> None:
    """SQLite reads the history too; the guard has no sessions to see and says so."""
    url = sqlite_database.url
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=url).returncode == 0
    expand_only = release(project, tmp_path, "e", contract=False)
    assert run_dbinit("migrate", cwd=expand_only, DATABASE_URL=url).returncode == 0
    code, report = verify_json(project, url, DBINIT_ALLOW_AHEAD="compatible")
    assert (code, report["verdict"]) == (0, "ahead_compatible")
    job = run_dbinit("migrate", cwd=release(project, tmp_path, "n"), DATABASE_URL=url)
    assert job.returncode == 0, job.output
    assert "on SQLite dbinit cannot see other processes' sessions" in job.stderr
    code, report = verify_json(project, url, DBINIT_ALLOW_AHEAD="compatible")
    assert (code, report["verdict"]) == (ExitCode.NOT_READY, "ahead_incompatible")


# -- the contract guard ------------------------------------------------------------------


class Session:
    """A live connection named as a replica's readiness connection is."""

    def __init__(self, url: str, name: str) -> None:
        import asyncpg

        self._loop = asyncio.new_event_loop()
        dsn = TestDatabase("postgresql", url).parsed.asyncpg_dsn()
        self.connection = self._loop.run_until_complete(
            asyncpg.connect(dsn, server_settings={"application_name": name})
        )

    def close(self) -> None:
        self._loop.run_until_complete(self.connection.close())
        self._loop.close()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    opened: list[Session] = []
    yield opened
    for session in opened:
        if not session.connection.is_closed():
            session.close()


def test_guard_refuses_a_contract_while_old_code_is_connected(
    n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path, sessions: list[Session]
) -> None:
    url = pg_database.url
    image = release(n_minus_1, tmp_path, "n")
    old = Session(url, f"dbinit-ready:{SERVICE}@orders-5d8f-old01#{HEAD}")
    sessions.append(old)
    # a new replica and another service's old one do not count
    sessions.append(Session(url, f"dbinit-ready:{SERVICE}@orders-9a7c-new01#{CONTRACT}"))
    sessions.append(Session(url, f"dbinit-ready:billing@billing-1#{HEAD}"))

    refused = run_dbinit("migrate", cwd=image, DATABASE_URL=url)
    assert refused.returncode == ExitCode.REFUSED, refused.output
    assert f"contract revision {CONTRACT} needs the code of {CONTRACT} or later" in refused.stderr
    assert f"orders-5d8f-old01 (heads {HEAD}, dbinit-ready" in refused.stderr
    assert "orders-9a7c-new01" not in refused.stderr and "billing-1" not in refused.stderr
    assert "nothing was applied" in refused.stderr
    assert pg_database.versions() == {HEAD}  # not even the expand before it
    assert "note" not in {r[0] for r in pg_database.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'")}  # fmt: skip

    # the expand alone is not guarded
    assert run_dbinit("migrate", cwd=release(n_minus_1, tmp_path, "e", contract=False),
                      DATABASE_URL=url).returncode == 0  # fmt: skip
    assert pg_database.versions() == {EXPAND}

    old.close()
    applied = run_dbinit("migrate", cwd=image, DATABASE_URL=url)
    assert applied.returncode == 0, applied.output
    assert pg_database.versions() == {CONTRACT}


def test_guard_waits_for_old_sessions_to_go(
    n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path, sessions: list[Session]
) -> None:
    url = pg_database.url
    image = release(n_minus_1, tmp_path, "n")
    old = Session(url, f"dbinit-ready:{SERVICE}@orders-5d8f-old01#{HEAD}")
    sessions.append(old)
    job = subprocess.Popen(
        [sys.executable, "-m", "dbinit", "migrate"], cwd=image, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(DATABASE_URL=url, DBINIT_CONTRACT_WAIT="120"),
    )  # fmt: skip
    try:
        assert job.stderr is not None
        seen = []
        for line in job.stderr:
            seen.append(line)
            if "Older code is connected: waiting" in line:
                break
        else:
            raise AssertionError("".join(seen))
        assert pg_database.versions() == {HEAD}
        old.close()
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, "".join(seen) + err
    assert "Older sessions gone: applying the contract revision(s)" in err
    assert pg_database.versions() == {CONTRACT}


def test_allow_destructive_overrides_the_guard(
    n_minus_1: Path, pg_database: TestDatabase, tmp_path: Path, sessions: list[Session]
) -> None:
    sessions.append(Session(pg_database.url, f"dbinit-ready:{SERVICE}@orders-5d8f-old01#{HEAD}"))
    result = run_dbinit("migrate", cwd=release(n_minus_1, tmp_path, "n"), DATABASE_URL=pg_database.url,
                        DBINIT_ALLOW_DESTRUCTIVE="true")  # fmt: skip
    assert result.returncode == 0, result.output
    assert "while older code is connected (DBINIT_ALLOW_DESTRUCTIVE=true)" in result.stderr
    assert pg_database.versions() == {CONTRACT}


def test_a_real_gate_names_its_session_with_the_head(n_minus_1: Path, pg_database: TestDatabase) -> None:
    """The gate's kept connection is what the guard sees: its name carries service, pod and head."""
    import contextlib

    import asyncpg

    from dbinit.asgi import DatabaseGate
    from dbinit.settings import load_settings

    with contextlib.chdir(n_minus_1):
        settings = load_settings(database_url=pg_database.url, alembic_ini=n_minus_1 / "alembic.ini")

    async def scenario() -> list[str]:
        gate = DatabaseGate(settings)
        await gate.startup()
        watcher = await asyncpg.connect(pg_database.parsed.asyncpg_dsn())
        try:
            rows = await watcher.fetch("SELECT application_name FROM pg_stat_activity "
                                       "WHERE application_name LIKE 'dbinit-ready:%'")  # fmt: skip
        finally:
            await watcher.close()
            await gate.shutdown()
        return [str(r[0]) for r in rows]

    (name,) = asyncio.run(scenario())
    assert name.startswith(f"dbinit-ready:{SERVICE}@") and name.endswith(f"#{HEAD}")
    assert len(name.encode()) <= 63


def test_session_names_fit_63_bytes_and_keep_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbinit.sessions import parse_session_name, session_name

    monkeypatch.setenv("HOSTNAME", "a-very-long-deployment-name-7d9c8b6f5-x2x7z")
    name = session_name("ready", "payments-reconciliation-service", (HEAD,))
    assert len(name.encode()) <= 63
    tag = parse_session_name(name)
    assert tag is not None
    assert (tag.purpose, tag.heads) == ("ready", (HEAD,))
    assert tag.pod.endswith("-x2x7z")  # the replica's own suffix is kept
    assert session_name("wait", "orders") == "dbinit-wait:orders"  # no heads: as before


def test_a_role_that_cannot_read_the_history_still_verifies(n_minus_1: Path, pg_database: TestDatabase,
                                                           tmp_path: Path) -> None:
    """A service role granted SELECT on the version table only (as before the history existed)."""
    import dataclasses
    import uuid

    role = f"dbinit_svc_{uuid.uuid4().hex[:10]}"
    pg_database.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'Svc-Pa55'")
    try:
        pg_database.sql(f"GRANT SELECT ON alembic_version TO {role}")
        url = dataclasses.replace(pg_database.parsed, username=role, password="Svc-Pa55")
        as_service = url.for_sqlalchemy(async_driver=True)
        code, report = verify_json(n_minus_1, as_service)
        assert (code, report["verdict"]) == (ExitCode.OK, "at_head"), report

        # ahead of an old image: the history it cannot read makes the verdict unknown, and says why
        expand_only = release(n_minus_1, tmp_path, "n-expand", contract=False)
        assert run_dbinit("migrate", cwd=expand_only, DATABASE_URL=pg_database.url).returncode == 0
        code, report = verify_json(n_minus_1, as_service, DBINIT_ALLOW_AHEAD="compatible")
        assert (code, report["verdict"]) == (ExitCode.NOT_READY, "ahead_unknown"), report
        assert "GRANT SELECT ON dbinit_history TO" in json.dumps(report)
    finally:
        pg_database.sql(f"DROP OWNED BY {role}")
        pg_database.sql(f"DROP ROLE {role}")
