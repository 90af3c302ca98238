"""A corpus of broken migrations, each caught by dbinit's pytest plugin with the revision named,
and the same corpus through pytest-alembic's built-in tests, side by side.

Each case is an ``alembic init`` project (env.py unmodified, except where
pytest-alembic's model test needs ``target_metadata``) run with pytest in a
subprocess, as a user would: the failing item's name and its message are
asserted. The side-by-side test records which tool catches which case, and
fails if dbinit misses one or if either tool fails a correct project.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbinit.logbridge import preserved_logging
from tests.plugins.databases import PostgresServer
from tests.plugins.generated import (
    Rev,
    add_pytest_alembic,
    drop_templates,
    make_project,
    preload_extensions,
    run_inline,
)

pytest_plugins = ("pytester",)

#: pytest-alembic's tests, as the harness names them
SINGLE_HEAD = "test_single_head_revision"
UPGRADE = "test_upgrade"
UP_DOWN = "test_up_down_consistency"
NO_TRACE = "test_downgrade_leaves_no_trace"
MODELS_MATCH = "test_model_definitions_match_ddl"

BREAD = """
op.create_table(
    "bread",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("baked_at", sa.DateTime, nullable=True),
)
"""
BASE = Rev("aa01bread", None, BREAD, 'op.drop_table("bread")')
SECOND = Rev("aa02crust", "aa01bread", 'op.add_column("bread", sa.Column("crust", sa.Text, nullable=True))',
             'op.drop_column("bread", "crust")')
MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
bread = sa.Table(
    "bread", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("baked_at", sa.DateTime, nullable=True),
    sa.Column("crust", sa.Text, nullable=True),
    %s
)
"""


@dataclasses.dataclass(frozen=True)
class Broken:
    """A broken project: what dbinit must fail, and what its message must say."""

    name: str
    revisions: list[Rev]
    item: str
    says: tuple[str, ...]
    #: the pytest-alembic tests that fail on it (built-ins + experimental downgrade_leaves_no_trace):
    #: the side-by-side record, checked on every run
    pytest_alembic: tuple[str, ...] = ()
    models: str | None = None
    previous: str | None = None


CORPUS = [
    Broken(
        "two_heads",
        [BASE, SECOND, Rev("aa03other", "aa01bread")],
        "dbinit_heads", ("2 heads", "aa02crust", "aa03other"),
        pytest_alembic=(SINGLE_HEAD,),
    ),
    Broken(
        "unreadable_file",
        [BASE, Rev("aa02broken", "aa01bread", raw='revision = "aa02broken"\ndown_revision = "aa01bread"\n'
                   "def upgrade(:\n    pass\n")],
        "dbinit_revision_files", ("aa02broken_revision.py",),
        pytest_alembic=(NO_TRACE, SINGLE_HEAD, UP_DOWN, UPGRADE),
    ),
    Broken(
        "module_import_fails",
        [BASE, Rev("aa02import", "aa01bread", header="import bakery_helpers_that_do_not_exist")],
        "dbinit_revision_files", ("aa02import_revision.py", "bakery_helpers_that_do_not_exist"),
        pytest_alembic=(NO_TRACE, SINGLE_HEAD, UP_DOWN, UPGRADE),
    ),
    Broken(
        "upgrade_fails",
        [BASE, Rev("aa02typo", "aa01bread", 'op.add_column("breadd", sa.Column("crust", sa.Text))')],
        "dbinit_upgrade[aa02typo]", ("upgrade of aa02typo", "breadd"),
        pytest_alembic=(NO_TRACE, UP_DOWN, UPGRADE),
    ),
    Broken(
        "downgrade_forgets_index",
        [BASE, Rev("aa02index", "aa01bread", 'op.create_index("ix_bread_name", "bread", ["name"])')],
        "dbinit_downgrade[aa02index]", ("downgrade of aa02index", "index ix_bread_name on bread left behind"),
        pytest_alembic=(NO_TRACE,),
    ),
    Broken(
        "downgrade_forgets_enum",
        [BASE, Rev("aa02enum", "aa01bread",
                   'op.create_table("loaf", sa.Column("id", sa.Integer, primary_key=True),\n'
                   '    sa.Column("mood", sa.Enum("fresh", "stale", name="mood"), nullable=False))',
                   'op.drop_table("loaf")')],
        "dbinit_downgrade[aa02enum]", ("downgrade of aa02enum", "enum type mood left behind"),
        pytest_alembic=(UP_DOWN,),
    ),
    Broken(
        "downgrade_forgets_column",
        [BASE, Rev("aa02crust", "aa01bread", 'op.add_column("bread", sa.Column("crust", sa.Text))')],
        "dbinit_downgrade[aa02crust]", ("downgrade of aa02crust", "column bread.crust left behind"),
        pytest_alembic=(NO_TRACE,),
    ),
    Broken(
        "downgrade_forgets_sequence",
        [BASE, Rev("aa02seq", "aa01bread", 'op.execute("CREATE SEQUENCE loaf_numbers")')],
        "dbinit_downgrade[aa02seq]", ("sequence loaf_numbers left behind",),
        pytest_alembic=(UP_DOWN,),
    ),
    Broken(
        "downgrade_forgets_view",
        [BASE, Rev("aa02view", "aa01bread",
                   'op.execute("CREATE VIEW fresh_bread AS SELECT id, name FROM bread")')],
        "dbinit_downgrade[aa02view]", ("view fresh_bread left behind",),
        pytest_alembic=(UP_DOWN,),
    ),
    Broken(
        "downgrade_not_implemented",
        [BASE, Rev("aa02oneway", "aa01bread", 'op.add_column("bread", sa.Column("crust", sa.Text))',
                   'raise NotImplementedError("one way only")')],
        "dbinit_downgrade[aa02oneway]", ("downgrade of aa02oneway", "NotImplementedError", "one way only"),
    ),
    Broken(
        "fails_on_a_table_with_rows",
        [BASE, Rev("aa02retype", "aa01bread",
                   'op.execute("ALTER TABLE bread ALTER COLUMN name TYPE integer USING name::integer")',
                   'op.execute("ALTER TABLE bread ALTER COLUMN name TYPE varchar(50)")')],
        "dbinit_data[aa02retype]", ("upgrade of aa02retype", "fails on a database with rows", "bread: 2"),
    ),
    Broken(
        "not_null_column_without_default",
        [BASE, Rev("aa02weight", "aa01bread",
                   'op.add_column("bread", sa.Column("weight", sa.Integer, nullable=False))',
                   'op.drop_column("bread", "weight")')],
        "dbinit_data[aa02weight]", ("upgrade of aa02weight", "fails on a database with rows", "weight"),
    ),
    Broken(
        "expand_loses_rows",
        [BASE, Rev("aa02purge", "aa01bread", 'op.execute("DELETE FROM bread WHERE baked_at IS NOT NULL")')],
        "dbinit_data[aa02purge]",
        ("expand revision aa02purge", "loses rows", "bread: 2 rows before, 0 after"),
    ),
    Broken(
        "models_drifted",
        [BASE, SECOND],
        "dbinit_models", ("column bread.weight: in the models, not made by the migrations",),
        pytest_alembic=(MODELS_MATCH,),
        models=MODELS % 'sa.Column("weight", sa.Integer, nullable=True),',
    ),
    Broken(
        "contract_breaks_previous_release",
        [BASE, SECOND, Rev("aa03drop", "aa02crust", 'op.drop_column("bread", "baked_at")',
                           'op.add_column("bread", sa.Column("baked_at", sa.DateTime))')],
        "dbinit_previous_release", ("aa03drop", "op.drop_column('bread', 'baked_at')", "aa02crust"),
        previous="aa02crust",
    ),
    Broken(
        "declared_expand_changes_a_type",
        [BASE, SECOND, Rev("aa03name", "aa02crust",
                           'op.alter_column("bread", "name", type_=sa.Text(), existing_type=sa.String(50))',
                           'op.alter_column("bread", "name", type_=sa.String(50), existing_type=sa.Text())',
                           header='dbinit_phase = "expand"')],
        "dbinit_lint", ("aa03name", "dbinit.L006", "dbinit.L020", "ALTER COLUMN name TYPE"),
        previous="aa02crust",
    ),
]


CORRECT = Broken("correct", [BASE, SECOND], "", (), models=MODELS % "", previous="aa01bread")


def server_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url_for("postgres").replace("postgresql+asyncpg://", "postgresql://", 1)


def dbinit_ini(case: Broken) -> str:
    lines = ["dbinit_migrations = true\n"]
    if case.models is not None:
        lines.append("dbinit_metadata = models:metadata\n")
    if case.previous is not None:
        lines.append(f"dbinit_previous_release = {case.previous}\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``alembic init``'s projects are kept; first, the drivers are imported here: pytester
    puts ``sys.modules`` back after each test, and a C extension imported again crashes."""
    preload_extensions()
    return tmp_path_factory.mktemp("alembic-templates")


@pytest.fixture
def side_by_side(
    pytester: pytest.Pytester, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Both tools' database settings for the run; the project's template dropped afterwards."""
    server = server_url(postgres_server)
    monkeypatch.setenv("DBINIT_TEST_DATABASE_URL", server)
    monkeypatch.setenv("CORPUS_SERVER_URL", server.replace("postgresql://", "postgresql+psycopg://", 1))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    try:
        yield server
    finally:
        drop_templates(server, pytester.path / "migrations")


def caught_by_pytest_alembic(pytester: pytest.Pytester, project: Path, *, models: bool) -> tuple[str, ...]:
    if models:  # its model test reads env.py's target_metadata
        env = project / "migrations" / "env.py"
        env.write_text(env.read_text().replace("target_metadata = None",
                                               "from models import metadata as target_metadata", 1))
    # pytest-alembic runs env.py here, in this process: its fileConfig() disables every logger
    # alembic.ini does not name (dbinit's own included) and replaces the root's handlers; put
    # stdlib logging back as it was, or later tests in this process lose their records
    with preserved_logging():
        theirs = run_inline(pytester, "-p", "no:dbinit", "test_pytest_alembic.py")
    assert theirs.cases, theirs.output
    return tuple(sorted(theirs.failed()))


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_each_broken_migration_is_caught_with_its_revision_named(
    case: Broken, pytester: pytest.Pytester, templates: Path, side_by_side: str
) -> None:
    project = make_project(pytester.path, templates, case.revisions, models=case.models, ini=dbinit_ini(case))
    ours = run_inline(pytester, "-p", "no:pytest_alembic", "alembic.ini")  # env.py as alembic init made it
    assert ours.returncode == 1, ours.output
    assert case.item in ours.cases, ours.output
    found = ours.cases[case.item]
    assert found.outcome == "failed", ours.output
    for text in case.says:
        assert text in found.message, found.message
    assert "Traceback" not in found.message
    # the record: what pytest-alembic's own tests make of the same project (with the env.py edits it needs)
    add_pytest_alembic(project, models=case.models is not None)
    assert caught_by_pytest_alembic(pytester, project, models=case.models is not None) == tuple(
        sorted(case.pytest_alembic)
    )


def test_a_correct_project_passes_both(pytester: pytest.Pytester, templates: Path, side_by_side: str) -> None:
    project = make_project(pytester.path, templates, CORRECT.revisions, models=CORRECT.models,
                           ini=dbinit_ini(CORRECT))
    ours = run_inline(pytester, "-p", "no:pytest_alembic", "alembic.ini")
    assert ours.returncode == 0, ours.output
    assert {name: case.outcome for name, case in ours.cases.items()} == {
        "dbinit_revision_files": "passed", "dbinit_heads": "passed",
        "dbinit_upgrade[aa01bread]": "passed", "dbinit_upgrade[aa02crust]": "passed",
        "dbinit_downgrade[aa01bread]": "passed", "dbinit_downgrade[aa02crust]": "passed",
        "dbinit_data[aa01bread]": "skipped", "dbinit_data[aa02crust]": "passed",
        "dbinit_models": "passed", "dbinit_previous_release": "passed", "dbinit_lint": "passed",
    }, ours.output
    assert "no table had rows before aa01bread" in ours.cases["dbinit_data[aa01bread]"].message
    add_pytest_alembic(project, models=True)
    assert caught_by_pytest_alembic(pytester, project, models=True) == ()
