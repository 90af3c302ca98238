"""`dbinit lint`'s foundation: each revision's offline SQL, parsed by PostgreSQL's parser, classified.

Revisions in the example project, each doing one thing a reviewer worries
about; what `dbinit lint --format json` says of each statement (lock, rewrite,
scan, phase), with no database reachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dbinit.lint.classify import classify_sql
from tests.plugins.databases import add_revision, run_dbinit
from tests.plugins.no_pglast import dbinit_without_pglast

HEAD = "8d3f6b2a9c11"  # the example's head
UNREACHABLE = "postgresql://u@127.0.0.1:1/x"  # lint renders offline: nothing listens here

REVISIONS = [
    ("a1", 'op.create_index("ix_orders_created_at", "orders", ["created_at"])'),
    ("a2", 'op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))'),
    ("a3", 'op.drop_column("orders", "note")'),
    ("a4", 'op.alter_column("orders", "status", type_=sa.Text(), existing_type=sa.String(20))'),
    (
        "a5",
        "op.execute(\"UPDATE orders SET status = 'placed' WHERE status IS NULL; "
        'ALTER TABLE orders ALTER COLUMN status SET NOT NULL")',
    ),
    (
        "a6",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_orders_customer", "orders", ["customer_id"], postgresql_concurrently=True)',
    ),
]


def lint_json(project: Path, *args: str, url: str = UNREACHABLE, **settings: str) -> dict[str, Any]:
    result = run_dbinit("lint", "--format", "json", *args, cwd=project, DATABASE_URL=url, **settings)
    assert result.returncode == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def facts(statement: dict[str, Any]) -> tuple[object, ...]:
    return (
        statement["position"],
        statement["kind"],
        statement["tables"],
        statement["lock"],
        statement["rewrites"],
        statement["scans"],
        statement["phase"],
    )


@pytest.fixture
def linted(project: Path) -> dict[str, Any]:
    down = HEAD
    for rev, body in REVISIONS:
        add_revision(project, rev, down, body)
        down = rev
    # dbinit migrate sets lock_timeout: no dbinit.L010 finding
    return lint_json(project, "--from", HEAD, DBINIT_DDL_LOCK_TIMEOUT="5")


def test_each_statement_has_its_lock_rewrite_scan_and_phase(linted: dict[str, Any]) -> None:
    assert linted["dialect"] == "postgresql"
    by_revision = {r["revision"]: [facts(s) for s in r["statements"]] for r in linted["revisions"]}
    assert list(by_revision) == [rev for rev, _ in REVISIONS]
    assert by_revision == {
        "a1": [(1, "CREATE INDEX", ["orders"], "SHARE", False, True, "expand")],
        "a2": [(1, "ALTER TABLE", ["orders"], "ACCESS EXCLUSIVE", False, False, "expand")],
        "a3": [(1, "ALTER TABLE", ["orders"], "ACCESS EXCLUSIVE", False, False, "contract")],
        "a4": [(1, "ALTER TABLE", ["orders"], "ACCESS EXCLUSIVE", True, True, "contract")],
        "a5": [
            (1, "UPDATE", ["orders"], "ROW EXCLUSIVE", False, False, "expand"),
            (2, "ALTER TABLE", ["orders"], "ACCESS EXCLUSIVE", False, True, "contract"),
        ],
        "a6": [(1, "CREATE INDEX", ["orders"], "SHARE UPDATE EXCLUSIVE", False, True, "expand")],
    }


def test_statements_carry_their_sql_and_transaction(linted: dict[str, Any]) -> None:
    statements = {r["revision"]: r["statements"] for r in linted["revisions"]}
    assert statements["a1"][0]["sql"] == "CREATE INDEX ix_orders_created_at ON orders (created_at)"
    assert statements["a1"][0]["in_transaction"] is True
    assert statements["a5"][1]["sql"] == "ALTER TABLE orders ALTER COLUMN status SET NOT NULL"
    concurrent = statements["a6"][0]
    assert concurrent["sql"] == "CREATE INDEX CONCURRENTLY ix_orders_customer ON orders (customer_id)"
    assert (concurrent["concurrently"], concurrent["in_transaction"]) == (True, False)
    assert statements["a3"][0]["reasons"] == ["DROP COLUMN note: the previous release still reads it"]
    # the version table's bookkeeping (UPDATE alembic_version ...) is not the revision's
    assert all("alembic_version" not in s["sql"] for r in linted["revisions"] for s in r["statements"])
    files = {r["revision"]: Path(r["file"]).name for r in linted["revisions"]}
    assert files["a1"] == "a1_revision.py"


def test_text_output_lists_each_statement_with_its_facts(project: Path) -> None:
    add_revision(project, "b1", HEAD, REVISIONS[0][1])
    result = run_dbinit("lint", "--from", HEAD, cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output
    assert f"orders: 1 revision(s) after {HEAD}, postgresql SQL" in result.stdout
    assert "    1. CREATE INDEX ix_orders_created_at ON orders (created_at) (line 22)" in result.stdout
    assert "lock SHARE; scans; expand; on orders" in result.stdout


def test_root_and_merge_render_only_their_own_statements(project: Path) -> None:
    add_revision(project, "c1", HEAD, 'op.add_column("orders", sa.Column("x", sa.Integer()))')
    add_revision(project, "c2", HEAD, 'op.add_column("products", sa.Column("y", sa.Integer()))')
    merge = add_revision(project, "c3", "c1", 'op.drop_column("orders", "x")')
    text = merge.read_text().replace("None] = 'c1'", "None] = ('c1', 'c2')")
    merge.write_text(text)
    document = lint_json(project)
    sql = {r["revision"]: [s["sql"] for s in r["statements"]] for r in document["revisions"]}
    assert sql["374752db316e"][0].startswith("CREATE TABLE products")  # the root
    assert len(sql["374752db316e"]) == 1
    assert sql["c1"] == ["ALTER TABLE orders ADD COLUMN x INTEGER"]
    assert sql["c2"] == ["ALTER TABLE products ADD COLUMN y INTEGER"]
    assert sql["c3"] == ["ALTER TABLE orders DROP COLUMN x"]


def test_a_sqlite_project_gets_sqlite_sql(project: Path, tmp_path: Path) -> None:
    add_revision(project, "d1", HEAD, REVISIONS[1][1])
    document = lint_json(project, "--from", HEAD, url=f"sqlite:///{tmp_path / 'never.db'}")
    assert document["dialect"] == "sqlite"
    [statement] = document["revisions"][0]["statements"]
    assert statement["sql"] == "ALTER TABLE orders ADD COLUMN note TEXT"
    assert statement["in_transaction"] is False  # SQLite: Alembic assumes non-transactional DDL
    assert not (tmp_path / "never.db").exists()


def test_an_unknown_from_revision_is_a_configuration_error(project: Path) -> None:
    result = run_dbinit("lint", "--from", "nope", cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 2, result.output
    assert "--from nope: no such revision" in result.output


def test_without_pglast_lint_says_how_to_install_it(project: Path) -> None:
    proc = dbinit_without_pglast("lint", cwd=project, DATABASE_URL=UNREACHABLE)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'dbinit-alembic[lint]'" in proc.stderr


def test_findings_name_the_rule_revision_file_statement_and_hint(linted: dict[str, Any]) -> None:
    found = [
        (f["id"], f["level"], f["revision"], Path(f["file"]).name, f["line"], f["position"], f["sql"])
        for r in linted["revisions"]
        for f in r["findings"]
    ]
    assert found == [
        (
            "dbinit.L001",
            "WARNING",
            "a1",
            "a1_revision.py",
            22,
            1,
            "CREATE INDEX ix_orders_created_at ON orders (created_at)",
        ),
        ("dbinit.L002", "ERROR", "a3", "a3_revision.py", 22, 1, "ALTER TABLE orders DROP COLUMN note"),
        (
            "dbinit.L006",
            "ERROR",
            "a4",
            "a4_revision.py",
            22,
            1,
            "ALTER TABLE orders ALTER COLUMN status TYPE TEXT",
        ),
        (
            "dbinit.L008",
            "WARNING",
            "a5",
            "a5_revision.py",
            22,
            2,
            "ALTER TABLE orders ALTER COLUMN status SET NOT NULL",
        ),
    ]  # a2 adds a nullable column; a6 builds its index CONCURRENTLY: no finding
    assert linted["findings"] == 4
    hints = {f["id"]: f["hint"] for r in linted["revisions"] for f in r["findings"]}
    assert "postgresql_concurrently=True" in hints["dbinit.L001"]
    assert "phase = 'contract'" in hints["dbinit.L002"]


def test_an_index_on_a_table_the_revision_creates_is_no_finding(project: Path) -> None:
    body = (
        'op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True), '
        'sa.Column("body", sa.Text()))\n'
        'op.create_index("ix_notes_body", "notes", ["body"])'
    )
    add_revision(project, "e1", HEAD, body)
    document = lint_json(project, "--from", HEAD)
    [revision] = document["revisions"]
    assert [s["kind"] for s in revision["statements"]] == ["CREATE TABLE", "CREATE INDEX"]
    assert revision["findings"] == []


def test_text_output_shows_findings_with_their_hint(project: Path) -> None:
    add_revision(project, "f1", HEAD, REVISIONS[2][1].replace('"note"', '"status"'))
    result = run_dbinit("lint", "--from", HEAD, cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output
    assert (
        "  ERROR: f1 (migrations/versions/f1_revision.py:22, statement 1): (dbinit.L002) "
        "DROP COLUMN status on orders" in result.stdout
    )
    assert "HINT: Ship code that no longer uses it first" in result.stdout
    assert "(dbinit.L010)" in result.stdout  # no DBINIT_DDL_LOCK_TIMEOUT: no lock_timeout
    assert result.stdout.rstrip().endswith("2 finding(s)")


AX = "ACCESS EXCLUSIVE"


@pytest.mark.parametrize(
    ("sql", "lock", "rewrites", "scans", "phase"),
    [
        ("ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid()", AX, True, False, "expand"),
        ("ALTER TABLE t ADD COLUMN c int DEFAULT 0 NOT NULL", "ACCESS EXCLUSIVE", False, False, "expand"),
        ("ALTER TABLE t ADD COLUMN c int NOT NULL", "ACCESS EXCLUSIVE", False, True, "contract"),
        ("ALTER TABLE t SET TABLESPACE fast", "ACCESS EXCLUSIVE", True, True, "neutral"),
        ("ALTER TABLE t ADD CONSTRAINT k CHECK (a > 0) NOT VALID", AX, False, False, "expand"),
        ("ALTER TABLE t VALIDATE CONSTRAINT k", "SHARE UPDATE EXCLUSIVE", False, True, "expand"),
        (
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id)",
            "SHARE ROW EXCLUSIVE",
            False,
            True,
            "contract",
        ),
        ("ALTER TABLE t RENAME COLUMN a TO b", "ACCESS EXCLUSIVE", False, False, "contract"),
        ("DROP TABLE t", "ACCESS EXCLUSIVE", False, False, "contract"),
        ("DROP INDEX CONCURRENTLY ix", "SHARE UPDATE EXCLUSIVE", False, False, "expand"),
        ("SELECT count(*) FROM t", "ACCESS SHARE", False, False, "neutral"),
        ("DELETE FROM t WHERE a IS NULL", "ROW EXCLUSIVE", False, False, "expand"),
    ],
)
def test_lock_rewrite_scan_and_phase_per_statement_form(
    sql: str, lock: str, rewrites: bool, scans: bool, phase: str
) -> None:
    [statement] = classify_sql(sql)
    seen = (statement.lock, statement.rewrites, statement.scans, statement.phase)
    assert seen == (lock, rewrites, scans, phase)


def test_sql_postgresql_cannot_parse_is_kept_and_said() -> None:
    statements = classify_sql("CREATE TABLE a (id int); PRAGMA foreign_keys = ON; DROP TABLE a")
    kinds = [(s.position, s.kind) for s in statements]
    assert kinds == [(1, "CREATE TABLE"), (2, "UNPARSED"), (3, "DROP TABLE")]
    assert statements[1].parse_error is not None
    assert statements[1].sql == "PRAGMA foreign_keys = ON"


def test_each_statement_knows_which_transaction_block_it_is_in() -> None:
    sql = (
        "BEGIN; CREATE INDEX a ON t (x); COMMIT; BEGIN; CREATE INDEX b ON t (y); COMMIT; "
        "CREATE INDEX CONCURRENTLY c ON t (z)"
    )
    found = [(s.in_transaction, s.transaction) for s in classify_sql(sql)]
    assert found == [(True, 1), (True, 2), (False, None)]
