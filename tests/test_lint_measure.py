"""`dbinit lint --measure URL`: pending revisions applied to a scratch copy, their locks read from the server.

One target database (the example migrated to its head, with rows) serves the
whole module: every run only reads it, and the module checks it is unchanged.
The projects differ: pending revisions that lock differently, one that fails,
none at all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit.lint.measure import schema_script, verdict  # noqa: E402
from tests.plugins.databases import (  # noqa: E402
    EXAMPLE,
    SECRET,
    PostgresServer,
    Result,
    TestDatabase,
    add_revision,
    clean_env,
    run_dbinit,
)
from tests.plugins.faults import Spawner, assert_no_password, eventually  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]  # spawn

HEAD = "8d3f6b2a9c11"  # the example's head: the target's current revision
PENDING = [
    ("b1", 'op.create_index("ix_orders_created_at", "orders", ["created_at"])'),
    (
        "c1",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_orders_customer", "orders", ["customer_id"], postgresql_concurrently=True)',
    ),
    ("d1", 'op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))'),
]


@dataclasses.dataclass(frozen=True)
class Target:
    db: TestDatabase
    url: str  # with SECRET as its password (the test server trusts every login)
    project: Path  # the example with PENDING added
    snapshot: tuple[object, ...]
    json_run: Result  # `lint --measure URL --format json`
    text_run: Result  # `lint --measure` with DATABASE_URL

    @property
    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.json_run.stdout)
        return loaded


def snapshot(db: TestDatabase) -> tuple[object, ...]:
    """What a run must not change: version rows, tables, indexes, columns, rows."""
    return (
        sorted(db.versions()),
        sorted(db.tables()),
        db.sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"),
        db.sql(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ),
        db.sql("SELECT count(*) FROM orders"),
    )


def scratch_databases(db: TestDatabase) -> set[str]:
    rows = db.sql("SELECT datname FROM pg_database WHERE datname LIKE 'dbinit_measure_%'")
    return {str(r[0]) for r in rows}


def copy_example(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__", ".env"))
    return target


def measure(project: Path, url: str, *args: str, **settings: str) -> Result:
    return run_dbinit("lint", "--measure", url, *args, cwd=project, **settings)


@pytest.fixture(scope="module")
def target(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("measure")
    project = copy_example(root, "project")
    name = postgres_server.create()
    url = postgres_server.url_for(name, password=SECRET)
    db = TestDatabase("postgresql", url)
    try:
        migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.output
        db.sql("INSERT INTO customers (email) SELECT 'c' || g || '@x.org' FROM generate_series(1, 50) g")
        db.sql("INSERT INTO orders (customer_id) SELECT id FROM customers")
        before = snapshot(db)
        down = HEAD
        for rev, body in PENDING:
            add_revision(project, rev, down, body)
            down = rev
        json_run = measure(project, url, "--format", "json")
        text_run = run_dbinit("lint", "--measure", cwd=project, DATABASE_URL=url)
        yield Target(db, url, project, before, json_run, text_run)
    finally:
        postgres_server.drop(name)


def statements_of(document: dict[str, Any], revision: str) -> list[dict[str, Any]]:
    [found] = [r for r in document["revisions"] if r["revision"] == revision]
    return [s for s in found["statements"] if not s["bookkeeping"]]


def locks_of(document: dict[str, Any], revision: str) -> list[dict[str, Any]]:
    [found] = [r for r in document["revisions"] if r["revision"] == revision]
    locks: list[dict[str, Any]] = found["locks"]
    return locks


def probes(statement: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(p["table"], p["access"]): p["outcome"] for p in statement["probes"]}


def test_the_run_succeeds_and_measures_every_pending_revision(target: Target) -> None:
    assert target.json_run.returncode == 0, target.json_run.output
    document = target.document
    assert (document["ok"], document["action"], document["exit_code"]) == (True, "measured", 0)
    assert document["current_revisions"] == [HEAD]
    assert [r["revision"] for r in document["revisions"]] == ["b1", "c1", "d1"]
    assert document["failure"] is None and document["not_measured"] == []
    assert document["scratch_database"].startswith("dbinit_measure_")
    assert document["lower_bound"] is True and "lower bound" in document["note"]


def test_a_non_concurrent_index_holds_share_and_blocks_a_writer(target: Target) -> None:
    [statement] = statements_of(target.document, "b1")
    assert statement["sql"] == "CREATE INDEX ix_orders_created_at ON orders (created_at)"
    assert (statement["claimed_lock"], statement["observed_lock"], statement["verdict"]) == (
        "SHARE", "SHARE", "confirmed"
    )
    assert statement["observed"] == "after it, in its transaction"
    assert probes(statement) == {
        ("public.orders", "read"): "not blocked",
        ("public.orders", "write"): "blocked",
    }
    [writer] = [p for p in statement["probes"] if p["access"] == "write"]
    assert writer["blocked_by_migration"] is True  # pg_blocking_pids named the migration's session
    [held] = [lock for lock in locks_of(target.document, "b1") if lock["relation"] == "public.orders"]
    assert (held["mode"], held["taken_by"], held["until"]) == ("SHARE", 1, "commit")
    assert held["held_ms"] >= statement["duration_ms"] > 0


def test_a_concurrent_index_in_an_autocommit_block_lets_the_writer_through(target: Target) -> None:
    [statement] = statements_of(target.document, "c1")
    assert statement["sql"].startswith("CREATE INDEX CONCURRENTLY ix_orders_customer")
    assert statement["in_transaction"] is False
    assert statement["observed"] == "while it ran"  # read while it held its lock, not after
    assert (statement["claimed_lock"], statement["observed_lock"], statement["verdict"]) == (
        "SHARE UPDATE EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "confirmed"
    )
    assert probes(statement) == {
        ("public.orders", "read"): "not blocked",
        ("public.orders", "write"): "not blocked",
    }
    [held] = [lock for lock in locks_of(target.document, "c1") if lock["relation"] == "public.orders"]
    assert (held["mode"], held["until"]) == ("SHARE UPDATE EXCLUSIVE", "end of statement")


def test_adding_a_column_takes_access_exclusive_and_blocks_the_reader(target: Target) -> None:
    [statement] = statements_of(target.document, "d1")
    assert (statement["claimed_lock"], statement["observed_lock"], statement["verdict"]) == (
        "ACCESS EXCLUSIVE", "ACCESS EXCLUSIVE", "confirmed"
    )
    assert probes(statement) == {("public.orders", "read"): "blocked", ("public.orders", "write"): "blocked"}


def test_the_version_bookkeeping_runs_too_but_is_not_numbered(target: Target) -> None:
    revision = target.document["revisions"][2]
    bookkeeping = [s for s in revision["statements"] if s["bookkeeping"]]
    assert [s["sql"] for s in bookkeeping] == [
        "UPDATE alembic_version SET version_num='d1' WHERE alembic_version.version_num = 'c1'"
    ]
    assert bookkeeping[0]["position"] is None and bookkeeping[0]["probes"] == []
    assert [s["position"] for s in revision["statements"] if not s["bookkeeping"]] == [1]


def test_the_target_is_unchanged_and_the_scratch_database_is_gone(target: Target) -> None:
    assert snapshot(target.db) == target.snapshot
    assert target.document["scratch_dropped"] is True
    assert target.document["scratch_database"] not in scratch_databases(target.db)
    assert scratch_databases(target.db) == set()


def test_text_output_says_what_each_statement_held_and_blocked(target: Target) -> None:
    result = target.text_run
    assert result.returncode == 0, result.output
    out = result.stdout
    assert "orders: 3 revision(s) measured on dbinit_measure_" in out
    assert "dropped afterwards" in out
    assert "a lower bound of what the target will take" in out
    assert "    1. CREATE INDEX ix_orders_created_at ON orders (created_at)" in out
    assert "claimed SHARE, observed SHARE: confirmed" in out
    blocked = (
        "writer on public.orders: blocked (lock_timeout 250 ms; pg_blocking_pids: the migration's session)"
    )
    assert blocked in out
    assert "claimed SHARE UPDATE EXCLUSIVE, observed SHARE UPDATE EXCLUSIVE: confirmed" in out
    assert "reader on public.orders: blocked" in out
    assert "SHARE on table public.orders: from statement 1" in out


def test_the_password_is_never_in_the_output(target: Target) -> None:
    for result in (target.json_run, target.text_run):
        assert_no_password(result.output)


def test_a_failing_revision_is_named_with_postgresql_s_message_and_exit_5(
    target: Target, tmp_path: Path
) -> None:
    project = copy_example(tmp_path, "failing")
    add_revision(project, "e1", HEAD, 'op.create_index("ix_orders_status_2", "orders", ["status"])\n'
                 'op.add_column("orders", sa.Column("status", sa.Text()))')
    add_revision(project, "f1", "e1", 'op.drop_column("orders", "created_at")')
    result = measure(project, target.url, "--format", "json")
    assert result.returncode == 5, result.output
    assert "Traceback" not in result.output
    document = json.loads(result.stdout)
    assert (document["ok"], document["action"], document["exit_code"]) == (False, "failed", 5)
    failure = document["failure"]
    assert (failure["revision"], failure["position"], failure["sqlstate"]) == ("e1", 2, "42701")
    assert failure["message"] == 'column "status" of relation "orders" already exists'
    assert failure["sql"] == "ALTER TABLE orders ADD COLUMN status TEXT"
    assert document["not_measured"] == ["f1"]
    [measured] = document["revisions"]
    assert measured["statements"][0]["verdict"] == "confirmed"  # measured up to the failure
    assert scratch_databases(target.db) == set()
    assert snapshot(target.db) == target.snapshot
    text = measure(project, target.url)
    assert text.returncode == 5, text.output
    failed = 'FAILED at statement 2: column "status" of relation "orders" already exists (SQLSTATE 42701)'
    assert failed in text.stdout
    assert "measuring stopped: e1 failed on the scratch copy; not measured: f1" in text.stdout
    assert_no_password(result.output + text.output)


def test_sigterm_while_measuring_drops_the_scratch_database(
    target: Target, tmp_path: Path, spawn: Spawner
) -> None:
    project = copy_example(tmp_path, "slow")
    add_revision(project, "s1", HEAD, 'op.execute("SELECT pg_sleep(60)")')
    process = spawn("lint", "--measure", target.url, cwd=project)
    running = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE query = 'SELECT pg_sleep(60)' AND datname LIKE 'dbinit_measure_%'"
    )
    eventually(lambda: target.db.sql(running), within=30, what="the revision runs on the scratch copy")
    assert len(scratch_databases(target.db)) == 1
    process.send(signal.SIGTERM)
    result = process.finish(within=20)
    assert result.returncode == 143, result.output
    assert "scratch database dropped" in result.stderr
    assert scratch_databases(target.db) == set()
    assert snapshot(target.db) == target.snapshot

def test_nothing_pending_makes_no_scratch_database(target: Target, tmp_path: Path) -> None:
    result = measure(copy_example(tmp_path, "at-head"), target.url, "--format", "json")
    assert result.returncode == 0, result.output
    document = json.loads(result.stdout)
    assert (document["revisions"], document["scratch_database"]) == ([], None)
    assert document["current_revisions"] == [HEAD]
    assert "scratch database created" not in result.stderr


def test_a_role_without_createdb_exits_3_naming_the_alter_role(target: Target) -> None:
    role = "dbinit_measure_nocreatedb"
    target.db.sql(f"DROP ROLE IF EXISTS {role}")
    target.db.sql(f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        target.db.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        url = dataclasses.replace(target.db.parsed, username=role, password=SECRET).for_sqlalchemy(
            async_driver=True
        )
        result = measure(target.project, url)
        assert result.returncode == 3, result.output
        assert "cannot create the scratch database dbinit_measure_" in result.stderr
        assert f"ALTER ROLE {role} CREATEDB" in result.stderr
        assert_no_password(result.output)
    finally:
        target.db.sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        target.db.sql(f"DROP ROLE {role}")
    assert scratch_databases(target.db) == set()


def test_without_pg_dump_exit_2_and_the_scratch_database_is_dropped(target: Target, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = clean_env()
    env["PATH"] = str(empty)
    result = run_dbinit("lint", "--measure", target.url, "--format", "json", cwd=target.project, env=env)
    assert result.returncode == 2, result.output
    document = json.loads(result.stdout)
    assert "pg_dump, which is not on PATH" in document["message"]
    assert "postgresql-client" in document["hint"]
    assert scratch_databases(target.db) == set()


def test_an_unreachable_target_exits_3_without_the_password(project: Path) -> None:
    url = f"postgresql://someone:{SECRET}@127.0.0.1:1/nowhere"
    add_revision(project, "g1", HEAD, PENDING[0][1])
    result = measure(project, url, "--format", "json")
    assert result.returncode == 3, result.output
    assert json.loads(result.stdout)["error"] == "DatabaseUnreachable"
    assert "connection refused" in result.stderr
    assert_no_password(result.output)


def test_a_sqlite_url_is_a_usage_error(project: Path, tmp_path: Path) -> None:
    result = measure(project, f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2, result.output
    assert "needs a PostgreSQL database" in result.stderr


@pytest.mark.parametrize(
    ("claimed", "observed", "seen", "expected"),
    [
        ("SHARE", "SHARE", True, "confirmed"),
        ("SHARE", "ACCESS EXCLUSIVE", True, "stronger than claimed"),
        ("ACCESS EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", True, "weaker than claimed"),
        (None, "ROW EXCLUSIVE", True, "stronger than claimed"),
        ("SHARE", None, True, "not observed"),  # e.g. held since an earlier statement
        (None, None, True, "confirmed"),
        ("SHARE", "SHARE", False, "not observed"),
    ],
)
def test_the_claim_against_the_observation(claimed: Any, observed: Any, seen: bool, expected: str) -> None:
    assert verdict(claimed, observed, seen=seen) == expected


def test_pg_dump_s_restrict_lines_are_left_out() -> None:
    dump = "\\restrict AbC123\nSET lock_timeout = 0;\nCREATE TABLE t (a text);\n\\unrestrict AbC123\n"
    assert schema_script(dump) == "SET lock_timeout = 0;\nCREATE TABLE t (a text);"

