"""Revision phases (dbinit.revisions.phases): expand or contract, declared or inferred.

A corpus of revision shapes, each a real file in the example project (written
in Alembic's own shape by ``add_revision``, one made by ``alembic revision``),
each with the phase, source, reason and compatible_since a user sees; then
what ``showmigrations``, ``check`` and ``migrate`` do with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbinit.revisions.phases import RevisionPhase, revision_phases
from dbinit.revisions.scripts import read_migration_scripts
from tests.plugins.databases import TestDatabase, add_revision, alembic_project, run_dbinit
from tests.plugins.no_pglast import python_without_pglast

HEAD = "8d3f6b2a9c11"  # the example's head: an expand (it adds a nullable column)
ROOT = "374752db316e"  # the example's root
UNREACHABLE = "postgresql://u@127.0.0.1:1/x"



def phases_of(project: Path) -> dict[str, RevisionPhase]:
    return dict(revision_phases(read_migration_scripts(project / "alembic.ini")))


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# (body of upgrade(), phase, reason)
CORPUS: dict[str, tuple[str, str, str]] = {
    "add_nullable_column": (
        'op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))',
        "expand", "op.add_column('orders', …)"),
    "add_column_nullable_by_default": (
        'op.add_column("orders", sa.Column("note", sa.Text()))', "expand", "op.add_column('orders', …)"),
    "add_not_null_column": (
        'op.add_column("orders", sa.Column("note", sa.Text(), nullable=False))',
        "contract", "op.add_column('orders', …): NOT NULL without a server_default"),
    "add_not_null_column_with_server_default": (
        'op.add_column("orders", sa.Column("n", sa.Integer(), nullable=False, server_default="0"))',
        "expand", "op.add_column('orders', …)"),
    "drop_column": ('op.drop_column("orders", "status")', "contract", "op.drop_column('orders', 'status')"),
    "drop_table": ('op.drop_table("orders")', "contract", "op.drop_table('orders')"),
    "rename_table": ('op.rename_table("orders", "purchases")', "contract",
                     "op.rename_table('orders', 'purchases')"),
    "rename_column": ('op.alter_column("orders", "status", new_column_name="state")', "contract",
                      "op.alter_column('orders', 'status', …): renames the column"),
    "retype_column": ('op.alter_column("orders", "status", type_=sa.Integer())', "contract",
                      "op.alter_column('orders', 'status', …): changes the type"),
    "set_not_null": ('op.alter_column("orders", "status", nullable=False)', "contract",
                     "op.alter_column('orders', 'status', …): sets NOT NULL"),
    "drop_not_null": ('op.alter_column("orders", "status", nullable=True)', "expand",
                      "op.alter_column('orders', 'status', …)"),
    "remove_server_default": ('op.alter_column("orders", "status", server_default=None)', "contract",
                              "op.alter_column('orders', 'status', …): removes the server default"),
    "indexes": ('op.create_index("ix_status", "orders", ["status"])\nop.drop_index("ix_old", "orders")',
                "expand", "op.create_index('ix_status', 'orders', …)"),
    "drop_constraint": ('op.drop_constraint("fk_customer", "orders", type_="foreignkey")', "contract",
                        "op.drop_constraint('fk_customer', 'orders', …)"),
    "create_table_and_bulk_insert": (
        't = op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))\n'
        'op.bulk_insert(t, [{"id": 1}])', "expand", "op.create_table('tags', …)"),
    "execute_update": ('op.execute("UPDATE orders SET status = \'new\' WHERE status IS NULL")', "expand",
                       "op.execute(\"UPDATE orders SET status = 'new' WHERE status IS NULL\")"),
    "execute_drop_column": ('op.execute("ALTER TABLE orders DROP COLUMN status")', "contract",
                            "op.execute('ALTER TABLE orders DROP COLUMN status'): DROP COLUMN status: "
                            "the previous release still reads it"),
    "execute_text_set_not_null": (
        'op.execute(sa.text("ALTER TABLE orders ALTER COLUMN status SET NOT NULL"))', "contract",
        "op.execute('ALTER TABLE orders ALTER COLUMN status SET NOT NULL'): ALTER COLUMN status SET NOT "
        "NULL: scans the table; old inserts of NULL fail"),
    "execute_keywords_in_strings_and_comments": (
        'op.execute("""\n-- DROP TABLE orders;\nINSERT INTO notes VALUES (\'drop table; x\');\n'
        '/* ALTER TABLE orders DROP COLUMN a; */ UPDATE notes SET a = 1\n""")',
        "expand", "op.execute(\"INSERT INTO notes VALUES ('drop table; x'); UPDATE notes SE…\")"),
    "execute_dollar_quoted_function": (
        'op.execute("CREATE FUNCTION f() RETURNS void AS $body$ DROP TABLE x; $body$ LANGUAGE sql")',
        "expand", "op.execute('CREATE FUNCTION f() RETURNS void AS $body$ DROP TABLE x; $b…')"),
    "execute_two_statements_one_drop": (
        'op.execute("CREATE TABLE a (id int); DROP TABLE b")', "contract",
        "op.execute('DROP TABLE b'): DROP TABLE: the previous release may still use it"),
    "execute_do_block": ('op.execute("DO $$ BEGIN DROP TABLE x; END $$")', "contract",
                         "op.execute('DO $$ BEGIN DROP TABLE x; END $$'): DO block: its code cannot be "
                         "classified"),
    "execute_truncate": ('op.execute("TRUNCATE orders")', "contract",
                         "op.execute('TRUNCATE orders'): TRUNCATE: removes every row"),
    "execute_non_literal": ('sql = "DROP TABLE " + "orders"\nop.execute(sql)', "contract",
                            "cannot be classified: op.execute(<non-literal>)"),
    "batch_drop_column": (
        'with op.batch_alter_table("orders") as batch_op:\n    batch_op.drop_column("status")',
        "contract", "batch_op.drop_column('status')"),
    "batch_add_nullable_column": (
        'with op.batch_alter_table("orders") as batch:\n    batch.add_column(sa.Column("n", sa.Text()))',
        "expand", "batch.add_column(…)"),
    "dialect_branches_strictest_wins": (
        'if op.get_context().dialect.name == "postgresql":\n'
        '    op.execute("CREATE INDEX CONCURRENTLY ix ON orders (status)")\n'
        'else:\n    op.drop_column("orders", "status")',
        "contract", "op.drop_column('orders', 'status')"),
    "bind_execute_insert": (
        'conn = op.get_bind()\nconn.execute(sa.text("INSERT INTO tags (id) VALUES (2)"))', "expand",
        "conn.execute('INSERT INTO tags (id) VALUES (2)')"),
    "unknown_operation": ('op.create_sequence("s")', "contract",
                          "cannot be classified: op.create_sequence(...)"),
    "opaque_helper_call": ("helpers.migrate_orders()", "contract",
                           "cannot be classified: helpers.migrate_orders(...)"),
    "empty": ("pass", "expand", "no operations"),
}


@pytest.mark.parametrize("shape", sorted(CORPUS))
def test_inferred_phase_of_each_shape(project: Path, shape: str) -> None:
    body, phase, reason = CORPUS[shape]
    path = add_revision(project, "ca5e00000001", HEAD, body)
    found = phases_of(project)["ca5e00000001"]
    assert (found.phase, found.source, found.reason) == (phase, "inferred", reason)
    # an expand keeps its parent's compatible_since (the example's chain: all expands from the root);
    # a contract starts it again
    assert found.compatible_since == (ROOT if phase == "expand" else "ca5e00000001")
    body_lines = path.read_text().splitlines()
    assert found.line is not None and found.line > body_lines.index("def upgrade() -> None:")


def test_line_points_at_the_deciding_operation(project: Path) -> None:
    path = add_revision(project, "ca5e00000001", HEAD,
                    'op.add_column("orders", sa.Column("n", sa.Text()))\nop.drop_column("orders", "status")')
    assert phases_of(project)["ca5e00000001"].line == line_of(path, "op.drop_column")


def test_a_helper_function_of_the_file_is_followed(project: Path) -> None:
    path = add_revision(project, "ca5e00000001", HEAD, "_cleanup()",
                    module='def _cleanup() -> None:\n    op.drop_table("legacy")')
    found = phases_of(project)["ca5e00000001"]
    assert (found.phase, found.reason, found.line) == (
        "contract", "op.drop_table('legacy')", line_of(path, "op.drop_table"))


def test_a_file_made_by_alembic_revision(tmp_path: Path) -> None:
    project = alembic_project(tmp_path)
    found = phases_of(project)["b7ead0000001"]
    assert (found.phase, found.source, found.reason) == ("expand", "inferred", "op.create_table('bread', …)")
    assert found.compatible_since == "b7ead0000001"  # a root is compatible since itself


def test_the_examples_chain(project: Path) -> None:
    phases = phases_of(project)
    assert [(p.revision, p.phase, p.compatible_since) for p in phases.values()] == [
        (ROOT, "expand", ROOT), ("5c9a1e7b2f40", "expand", ROOT), (HEAD, "expand", ROOT)
    ]


def test_compatible_since_through_a_chain(project: Path) -> None:
    add_revision(project, "c0000000000a", HEAD, 'op.add_column("orders", sa.Column("a", sa.Text()))')
    add_revision(project, "c0000000000b", "c0000000000a", 'op.drop_column("orders", "status")')
    add_revision(project, "c0000000000c", "c0000000000b", 'op.create_index("ix_a", "orders", ["a"])')
    add_revision(project, "c0000000000d", "c0000000000c", "pass")
    phases = phases_of(project)
    assert [phases[r].compatible_since for r in ("c0000000000a", "c0000000000b", "c0000000000c",
                                                  "c0000000000d")] == [
        ROOT, "c0000000000b", "c0000000000b", "c0000000000b"]


def test_a_merge_takes_the_parent_latest_in_upgrade_order(project: Path) -> None:
    add_revision(project, "a0000000000a", HEAD, 'op.drop_column("orders", "status")')  # contract
    add_revision(project, "b0000000000b", HEAD, 'op.create_index("ix", "orders", ["id"])')  # expand
    add_revision(project, "e0000000000e", ("a0000000000a", "b0000000000b"), "pass")  # type: ignore[arg-type]
    phases = phases_of(project)
    assert phases["b0000000000b"].compatible_since == ROOT
    assert phases["e0000000000e"].compatible_since == "a0000000000a"
    assert (phases["e0000000000e"].phase, phases["e0000000000e"].reason) == ("expand", "no operations")


def test_declared_phase_wins_over_the_inference(project: Path) -> None:
    add_revision(project, "d0000000000a", HEAD, 'op.drop_column("orders", "status")',
             module='dbinit_phase = "expand"')
    found = phases_of(project)["d0000000000a"]
    assert (found.phase, found.source, found.reason, found.line) == ("expand", "declared", "declared", None)
    assert found.compatible_since == ROOT


def test_declared_contract_with_compatible_since(project: Path) -> None:
    add_revision(project, "d0000000000a", HEAD, 'op.add_column("orders", sa.Column("a", sa.Text()))')
    add_revision(project, "d0000000000b", "d0000000000a", 'op.drop_column("orders", "status")',
             module='dbinit_phase: str = "contract"\ndbinit_compatible_since = "d0000000000a"')
    add_revision(project, "d0000000000c", "d0000000000b", "pass")
    phases = phases_of(project)
    assert (phases["d0000000000b"].phase, phases["d0000000000b"].source) == ("contract", "declared")
    assert phases["d0000000000b"].compatible_since == "d0000000000a"
    assert phases["d0000000000c"].compatible_since == "d0000000000a"


def test_declared_compatible_since_alone_keeps_the_inferred_phase(project: Path) -> None:
    add_revision(project, "d0000000000a", HEAD, 'op.drop_column("orders", "status")',
             module='dbinit_compatible_since = "5c9a1e7b2f40"')
    found = phases_of(project)["d0000000000a"]
    assert (found.phase, found.source, found.compatible_since) == ("contract", "inferred", "5c9a1e7b2f40")


INVALID = {
    "unknown_phase": ('dbinit_phase = "expnd"', 'dbinit_phase = \'expnd\' must be "expand" or "contract"'),
    "not_a_literal": ('dbinit_phase = "ex" + "pand"', "dbinit_phase is not a string literal"),
    "twice": ('dbinit_phase = "expand"\ndbinit_phase = "contract"',
              "dbinit_phase is assigned more than once"),
    "unknown_revision": ('dbinit_compatible_since = "nope"',
                         "dbinit_compatible_since = 'nope' is not revision 'bad000000001' nor one of its "
                         "ancestors"),
    "a_descendant": ('dbinit_compatible_since = "bad000000002"', "dbinit_compatible_since = 'bad000000002'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("command", [("showmigrations",), ("check", "--tag", "migrations")])
def test_an_invalid_declaration_is_exit_2_naming_file_and_line(
    project: Path, sqlite_database: TestDatabase, case: str, command: tuple[str, ...]
) -> None:
    module, message = INVALID[case]
    path = add_revision(project, "bad000000001", HEAD, module=module)
    add_revision(project, "bad000000002", "bad000000001")
    line = len(path.read_text().splitlines())  # the last line: the offending (second) assignment
    result = run_dbinit(*command, cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 2, result.output
    assert f"{path}:{line}: {message}" in result.output
    assert "Traceback" not in result.output


def test_migrate_refuses_an_invalid_declaration_before_the_lock(
    project: Path, sqlite_database: TestDatabase
) -> None:
    path = add_revision(project, "bad000000001", HEAD, 'op.drop_column("orders", "status")',
                    module='dbinit_phase = "later"')
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 2, result.output
    assert f"{path}:{line_of(path, 'dbinit_phase')}: dbinit_phase = 'later'" in result.output
    assert sqlite_database.tables() == set()  # nothing migrated, no lock table either


def test_verify_never_reads_the_phases(project: Path, sqlite_database: TestDatabase) -> None:
    path = add_revision(project, "bad000000001", HEAD)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    path.write_text(path.read_text() + '\ndbinit_phase = "later"\n')
    assert run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    assert run_dbinit("showmigrations", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 2


def test_showmigrations_shows_phases(project: Path, sqlite_database: TestDatabase) -> None:
    add_revision(project, "d0000000000a", HEAD, 'op.drop_column("orders", "status")')
    add_revision(project, "d0000000000b", "d0000000000a", module='dbinit_phase = "contract"')
    text = run_dbinit("showmigrations", cwd=project, DATABASE_URL=sqlite_database.url)
    assert text.returncode == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[4].endswith(
        "d0000000000a_revision.py  contract (inferred: op.drop_column('orders', 'status'))")
    assert lines[5].endswith("d0000000000b_revision.py  contract (declared)  (head)")
    shown = run_dbinit("showmigrations", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    assert shown.returncode == 0, shown.output
    rows = {r["revision"]: r for r in json.loads(shown.stdout)["revisions"]}
    keys = ("phase", "phase_source", "phase_reason", "compatible_since")
    assert {k: rows["d0000000000a"][k] for k in keys} == {"phase": "contract", "phase_source": "inferred",
            "phase_reason": "op.drop_column('orders', 'status')", "compatible_since": "d0000000000a"}
    assert {k: rows[HEAD][k] for k in ("phase", "phase_source", "compatible_since")} == {
        "phase": "expand", "phase_source": "inferred", "compatible_since": ROOT}
    assert (rows["d0000000000b"]["phase_source"], rows["d0000000000b"]["phase_reason"]) == (
        "declared", "declared")


def test_check_warns_about_inferred_contracts_without_a_database(project: Path) -> None:
    path = add_revision(project, "d0000000000a", HEAD, 'op.drop_column("orders", "status")')
    result = run_dbinit("check", "--tag", "migrations", cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output  # a warning: it does not fail by default
    line = line_of(path, "op.drop_column")
    assert (
        "dbinit.W010: (WARNING) 1 revision(s) count as contract (inferred): d0000000000a "
        f"(d0000000000a_revision.py:{line}: op.drop_column('orders', 'status')); at head, code from "
        "revision d0000000000a on works"
    ) in result.stdout
    assert 'dbinit_phase = "expand"' in result.stdout  # the hint: how to declare it
    assert "System check identified 1 issue (0 silenced)." in result.stdout
    strict = run_dbinit("check", "--tag", "migrations", "--fail-level", "WARNING", "--format", "json",
                        cwd=project, DATABASE_URL=UNREACHABLE)
    assert strict.returncode == 4, strict.output
    (entry,) = [c for c in json.loads(strict.stdout)["checks"] if c["id"] == "dbinit.W010"]
    assert (entry["status"], entry["level"]) == ("failed", "WARNING")

    # declared: acknowledged, no longer a warning
    path.write_text(path.read_text() + '\ndbinit_phase = "contract"\n')
    declared = run_dbinit("check", "--tag", "migrations", "--format", "json", cwd=project,
                          DATABASE_URL=UNREACHABLE)
    assert declared.returncode == 0, declared.output
    (entry,) = [c for c in json.loads(declared.stdout)["checks"] if c["id"] == "dbinit.W010"]
    assert (entry["level"], entry["message"]) == (
        "INFO",
        "1 revision(s) declared contract: d0000000000a; at head, code from revision d0000000000a on works")


def test_check_silences_w010(project: Path) -> None:
    add_revision(project, "d0000000000a", HEAD, 'op.drop_column("orders", "status")')
    result = run_dbinit("check", "--tag", "migrations", cwd=project, DATABASE_URL=UNREACHABLE,
                        DBINIT_SILENCED_CHECKS="dbinit.W010")
    assert result.returncode == 0, result.output
    assert "System check identified no issues (1 silenced)." in result.stdout


def test_without_pglast_raw_sql_gets_the_same_phases_from_the_tokenizer() -> None:
    """The parser decides raw SQL's phase when the lint extra is installed; without it, the same phases."""
    shapes = {name: (body, phase) for name, (body, phase, _) in CORPUS.items() if name.startswith("execute_")}
    code = (
        "import ast, json\n"
        "from dbinit.revisions.phases import _classify_execute\n"
        "shapes = json.loads(sys.argv[1])\n"
        "def call(body):\n"
        "    return next(n for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Call)\n"
        "                and getattr(n.func, 'attr', '') == 'execute')\n"
        "found = {n: _classify_execute('op.execute', call(b)).phase for n, (b, _) in shapes.items()}\n"
        "print(json.dumps(found))\n"
    )
    proc = python_without_pglast(code, json.dumps(shapes))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {name: phase for name, (_, phase) in shapes.items()}
