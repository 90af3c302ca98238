"""dbinit's pytest plugin as a project meets it: opt-in, the fixtures, the databases, the project shapes.

Projects are made by ``alembic init`` (env.py unmodified) and run with
pytest in this process (pytester) or, where a run needs its own process
(pytest-xdist, a throwaway server), in a subprocess.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.databases import PostgresServer
from tests.plugins.generated import (
    Rev,
    drop_templates,
    make_project,
    preload_extensions,
    run_inline,
    run_pytest,
)

pytest_plugins = ("pytester",)

BREAD = Rev(
    "bb01bread", None,
    'op.create_table("bread", sa.Column("id", sa.Integer, primary_key=True),\n'
    '    sa.Column("name", sa.String(50), nullable=False))',
    'op.drop_table("bread")',
)
CRUST = Rev("bb02crust", "bb01bread", 'op.add_column("bread", sa.Column("crust", sa.Text, nullable=True))',
            'op.drop_column("bread", "crust")')
#: a data migration: fills the new column from the old one
SIZE = Rev(
    "bb03size", "bb02crust",
    'op.add_column("bread", sa.Column("size", sa.Integer, nullable=True))\n'
    'op.execute("UPDATE bread SET size = length(name)")',
    'op.drop_column("bread", "size")',
)
ITEMS = {
    "dbinit_revision_files", "dbinit_heads", "dbinit_upgrade[bb01bread]", "dbinit_upgrade[bb02crust]",
    "dbinit_downgrade[bb01bread]", "dbinit_downgrade[bb02crust]", "dbinit_data[bb01bread]",
    "dbinit_data[bb02crust]",
}


def server_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url_for("postgres").replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preload_extensions()  # before pytester snapshots sys.modules (see tests.plugins.generated)
    return tmp_path_factory.mktemp("alembic-templates")


@pytest.fixture
def on_postgres(
    pytester: pytest.Pytester, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    url = server_url(postgres_server)
    monkeypatch.setenv("DBINIT_TEST_DATABASE_URL", url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    try:
        yield url
    finally:
        drop_templates(url, pytester.path / "migrations")


@pytest.fixture
def on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBINIT_TEST_DATABASE_URL", "sqlite")
    monkeypatch.delenv("DATABASE_URL", raising=False)


def outcomes(run: object) -> dict[str, str]:
    return {name: case.outcome for name, case in run.cases.items()}  # type: ignore[attr-defined]


# -- installed, not asked for -------------------------------------------------------------------

PROJECT_TESTS = '''
import pytest

@pytest.fixture
def pg_database():
    return "the project's own"

@pytest.fixture
def database():
    return "the project's own too"

@pytest.fixture
def migrator():
    return "and this one"

def test_own_fixtures(pg_database, database, migrator):
    assert (pg_database, database, migrator) == ("the project's own", "the project's own too", "and this one")

def test_plain():
    assert True
'''


def test_without_opt_in_nothing_changes(pytester: pytest.Pytester, templates: Path, on_postgres: str) -> None:
    """Installed but not asked for: the project's run is the same with the plugin on or off."""
    make_project(pytester.path, templates, [BREAD, CRUST])
    pytester.makepyfile(test_project=PROJECT_TESTS)
    with_plugin = run_inline(pytester)
    without = run_inline(pytester, "-p", "no:dbinit")
    expected = {"test_own_fixtures": "passed", "test_plain": "passed"}
    assert outcomes(with_plugin) == outcomes(without) == expected
    collected = pytester.runpytest_inprocess("--co", "-q", "-p", "no:cacheprovider")
    collected.stdout.fnmatch_lines(["2 tests collected*"])
    assert "dbinit" not in collected.stdout.str()
    listed = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider").stdout.str()
    assert "dbinit_database" in listed  # offered, under its own prefix only
    assert "pg_database" in listed


def test_ini_opt_in_runs_with_the_suite_but_not_with_one_file(
    pytester: pytest.Pytester, templates: Path, on_sqlite: None
) -> None:
    make_project(pytester.path, templates, [BREAD, CRUST], ini="dbinit_migrations = true\n")
    pytester.makepyfile(test_project="def test_plain():\n    assert True\n")
    whole = run_inline(pytester)
    assert set(outcomes(whole)) == ITEMS | {"test_plain"}
    assert whole.returncode == 0, whole.output
    assert set(outcomes(run_inline(pytester, "test_project.py"))) == {"test_plain"}
    # -k selects them like any test
    assert set(outcomes(run_inline(pytester, "-k", "dbinit_upgrade"))) == {
        "dbinit_upgrade[bb01bread]", "dbinit_upgrade[bb02crust]"
    }


def test_flag_opt_in_and_the_header(pytester: pytest.Pytester, templates: Path, on_sqlite: None) -> None:
    make_project(pytester.path, templates, [BREAD, CRUST])
    pytester.makepyfile(test_project="def test_plain():\n    assert True\n")
    flagged = run_inline(pytester, "test_project.py", "--dbinit-migrations")
    assert set(outcomes(flagged)) == ITEMS | {"test_plain"}
    shown = pytester.runpytest_inprocess("--dbinit-migrations", "-p", "no:cacheprovider", "-rs")
    shown.stdout.fnmatch_lines([
        "dbinit: migrations of *alembic.ini; databases: SQLite (asked for)",
        "SKIPPED [[]1[]] alembic.ini: no table had rows before bb01bread",
        "*8 passed, 1 skipped*",
    ])


# -- project shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["generic", "async", "pyproject"])
def test_alembic_init_templates_unmodified_on_postgresql(
    template: str, pytester: pytest.Pytester, templates: Path, on_postgres: str
) -> None:
    make_project(pytester.path, templates, [BREAD, CRUST, SIZE], template=template,
                 ini="dbinit_migrations = true\n")
    run = run_inline(pytester)
    assert run.returncode == 0, run.output
    assert outcomes(run)["dbinit_downgrade[bb03size]"] == "passed"
    assert outcomes(run)["dbinit_data[bb03size]"] == "passed"


def test_sqlite_catches_a_forgotten_index_and_a_not_null_column(
    pytester: pytest.Pytester, templates: Path, on_sqlite: None
) -> None:
    index = Rev("bb03index", "bb02crust", 'op.create_index("ix_bread_name", "bread", ["name"])')
    weight = Rev("bb04weight", "bb03index",
                 'with op.batch_alter_table("bread") as batch:\n'
                 '    batch.add_column(sa.Column("weight", sa.Integer, nullable=False))',
                 'with op.batch_alter_table("bread") as batch:\n    batch.drop_column("weight")')
    make_project(pytester.path, templates, [BREAD, CRUST, index, weight], ini="dbinit_migrations = true\n")
    run = run_inline(pytester)
    failed = run.failed()
    assert set(failed) == {"dbinit_downgrade[bb03index]", "dbinit_data[bb04weight]"}, run.output
    assert "index ix_bread_name on bread left behind" in failed["dbinit_downgrade[bb03index]"]
    assert "upgrade of bb04weight" in failed["dbinit_data[bb04weight]"]
    assert "NOT NULL" in failed["dbinit_data[bb04weight]"]


def test_rows_of_many_types_and_a_table_that_takes_none(
    pytester: pytest.Pytester, templates: Path, on_postgres: str
) -> None:
    """Every usual PostgreSQL type gets a value; a type without one is named in the skip."""
    kinds = Rev("bb01kinds", None, textwrap.dedent('''\
        op.execute("CREATE TYPE mood AS ENUM ('fresh', 'stale')")
        op.create_table(
            "oven",
            sa.Column("code", sa.String(3), primary_key=True),
        )
        op.create_table(
            "loaf",
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("oven", sa.String(3), sa.ForeignKey("oven.code"), nullable=False),
            sa.Column("mood", sa.dialects.postgresql.ENUM(name="mood", create_type=False), nullable=False),
            sa.Column("price", sa.Numeric(6, 2), nullable=False),
            sa.Column("fresh", sa.Boolean, nullable=False),
            sa.Column("baked", sa.Date, nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("rest", sa.Interval, nullable=False),
            sa.Column("facts", sa.dialects.postgresql.JSONB, nullable=False),
            sa.Column("tags", sa.ARRAY(sa.Text), nullable=False),
            sa.Column("photo", sa.LargeBinary, nullable=False),
            sa.Column("from_ip", sa.dialects.postgresql.INET, nullable=False),
            sa.Column("note", sa.Text, nullable=True),
            sa.UniqueConstraint("fresh", "baked", "at"),
        )
        op.execute("CREATE TABLE shelf (spot point NOT NULL)")
    '''), 'op.drop_table("loaf")\nop.drop_table("oven")\nop.drop_table("shelf")\n'
       'op.execute("DROP TYPE mood")')
    grow = Rev("bb02grow", "bb01kinds",
               'op.add_column("loaf", sa.Column("weight", sa.Integer, nullable=True))',
               'op.drop_column("loaf", "weight")')
    make_project(pytester.path, templates, [kinds, grow], ini="dbinit_migrations = true\n")
    run = run_inline(pytester, "-k", "dbinit_data or dbinit_downgrade")
    assert outcomes(run) == {
        "dbinit_downgrade[bb01kinds]": "passed", "dbinit_downgrade[bb02grow]": "passed",
        "dbinit_data[bb01kinds]": "skipped", "dbinit_data[bb02grow]": "passed",
    }, run.output


def test_an_env_py_that_connects_elsewhere_is_refused(
    pytester: pytest.Pytester, templates: Path, on_sqlite: None, tmp_path: Path
) -> None:
    """A test never migrates a database other than its own (here: the developer's file)."""
    project = make_project(pytester.path, templates, [BREAD], ini="dbinit_migrations = true\n")
    env = project / "migrations" / "env.py"
    mine = tmp_path / "developer.sqlite3"
    env.write_text(env.read_text().replace(
        'config.get_section(config.config_ini_section, {}),',
        f'{{"sqlalchemy.url": "sqlite:///{mine}"}},', 1))
    run = run_inline(pytester, "-k", "dbinit_upgrade")
    assert run.failed(), run.output
    assert "env.py migrates the SQLite file" in run.failed()["dbinit_upgrade[bb01bread]"]
    assert not mine.exists() or mine.stat().st_size == 0


# -- the fixtures -------------------------------------------------------------------------------

FIXTURE_TESTS = '''
def test_at_head(dbinit_database):
    dbinit_database.sql("INSERT INTO bread (name, crust) VALUES ('rye', 'dark')")
    assert dbinit_database.sql("SELECT name, crust, size FROM bread") == [("rye", "dark", None)]

def test_at_head_is_fresh_each_time(dbinit_database):
    assert dbinit_database.sql("SELECT count(*) FROM bread") == [(0,)]
    assert dbinit_database.sql("SELECT version_num FROM alembic_version") == [("bb03size",)]

def test_at_a_revision(dbinit_database_at):
    database = dbinit_database_at("bb01bread")
    assert database.sql("SELECT version_num FROM alembic_version") == [("bb01bread",)]
    assert "bread" in database.tables()

def test_the_size_migration_fills_the_new_column(dbinit_migrator):
    dbinit_migrator.upgrade("bb02crust")
    dbinit_migrator.sql("INSERT INTO bread (name) VALUES ('baguette')")
    assert dbinit_migrator.upgrade("+1") == ["bb03size"]
    assert dbinit_migrator.sql("SELECT size FROM bread") == [(8,)]
    assert dbinit_migrator.current() == ("bb03size",)
    assert dbinit_migrator.downgrade("base") == ["bb03size", "bb02crust", "bb01bread"]
    assert dbinit_migrator.current() == ()
'''


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
def test_fixtures_for_a_projects_own_data_migration_tests(
    where: str, pytester: pytest.Pytester, templates: Path, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("on_postgres" if where == "postgresql" else "on_sqlite")
    make_project(pytester.path, templates, [BREAD, CRUST, SIZE])
    pytester.makepyfile(test_data_migration=FIXTURE_TESTS)
    run = run_inline(pytester)
    assert run.returncode == 0, run.output
    assert set(outcomes(run).values()) == {"passed"} and len(outcomes(run)) == 4


def test_a_failing_revision_in_the_migrator_is_named(
    pytester: pytest.Pytester, templates: Path, on_sqlite: None
) -> None:
    broken = Rev("bb02typo", "bb01bread", 'op.add_column("breadd", sa.Column("crust", sa.Text))')
    make_project(pytester.path, templates, [BREAD, broken])
    pytester.makepyfile(test_it="def test_up(dbinit_migrator):\n    dbinit_migrator.upgrade()\n")
    run = run_inline(pytester)
    assert "upgrade of bb02typo (bb02typo_revision.py) failed" in run.failed()["test_up"]


# -- whole runs in a process of their own -----------------------------------------------------------


def test_under_xdist_each_pass_runs_once_and_nothing_is_left(
    tmp_path: Path, templates: Path, postgres_server: PostgresServer
) -> None:
    url = server_url(postgres_server)
    project = make_project(tmp_path / "project", templates, [BREAD, CRUST, SIZE],
                           ini="dbinit_migrations = true\n")
    (project / "test_data_migration.py").write_text(FIXTURE_TESTS)
    try:
        run = run_pytest(project, "-n", "2", "--dist", "loadgroup", DBINIT_TEST_DATABASE_URL=url)
        assert run.returncode == 0, run.output
        assert len(run.cases) == 4 + 11, run.output
        left = postgres_server_databases(postgres_server, "dbinit_t_")
        assert not [name for name in left if name.startswith(("dbinit_t_gw0", "dbinit_t_gw1"))], left
        templates_kept = postgres_server_databases(postgres_server, "dbinit_tpl_")
        assert templates_kept, "the template is kept for the next run"
    finally:
        drop_templates(url, project / "migrations")


def postgres_server_databases(server: PostgresServer, prefix: str) -> list[str]:
    import asyncio

    from tests.plugins.databases import _pg_sql

    rows = asyncio.run(_pg_sql(server.admin.asyncpg_dsn(),
                               f"SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')"))
    return [str(row[0]) for row in rows]


def test_a_throwaway_postgresql_without_a_url(tmp_path: Path, templates: Path) -> None:
    project = make_project(tmp_path / "project", templates, [BREAD, CRUST], ini="dbinit_migrations = true\n")
    run = run_pytest(project)
    assert run.returncode == 0, run.output
    assert "databases: a throwaway PostgreSQL started for this run" in run.output
    assert len(run.cases) == 8
