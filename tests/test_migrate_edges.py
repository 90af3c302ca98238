"""``migrate`` on the edges real projects reach: what remains after a failure, whose version
table, how many connections. Real processes against real databases; the database's
state is asserted, not only the message.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.databases import PostgresServer, TestDatabase, add_revision, run_dbinit

pytest.register_assert_rewrite("tests.plugins.faults")
from tests.plugins.faults import Spawner, eventually, pg_watch  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

HEAD = "8d3f6b2a9c11"
R1 = "ed9e00000001"


def migrated(project: Path, url: str) -> None:
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=url)
    assert result.returncode == 0, result.output


# -- what a failed or cancelled revision leaves behind -------------------------------------


def test_a_revision_that_commits_part_of_its_work_is_not_called_rolled_back(
    project: Path, pg_database: TestDatabase
) -> None:
    migrated(project, pg_database.url)
    add_revision(
        project, R1, HEAD,
        body='op.execute("CREATE TABLE part_one (id int)")\n'
        "with op.get_context().autocommit_block():\n"
        '    op.execute("CREATE INDEX CONCURRENTLY ix_products_name ON products (name)")\n'
        'op.execute("SELECT no_such_function()")',
    )
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == 5, result.output
    assert f"migration {R1} ({R1}_revision.py) failed: " in result.stderr
    assert "no_such_function" in result.stderr
    assert f"Migration {R1} commits part of its work itself (autocommit_block or COMMIT)" in result.stderr
    assert "rolled back as a whole" not in result.stderr
    # what the message says remains, remains
    assert pg_database.versions() == {HEAD}
    assert "part_one" in pg_database.tables()


def test_a_plain_failing_revision_is_rolled_back_as_a_whole(project: Path, pg_database: TestDatabase) -> None:
    migrated(project, pg_database.url)
    add_revision(project, R1, HEAD,
                 body='op.execute("CREATE TABLE part_one (id int)")\nop.execute("SELECT no_such_function()")')
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == 5, result.output
    assert f"Migration {R1} was rolled back as a whole." in result.stderr
    assert "part_one" not in pg_database.tables()


def test_a_cancelled_create_index_concurrently_names_the_invalid_index(
    project: Path, pg_database: TestDatabase, spawn: Spawner
) -> None:
    migrated(project, pg_database.url)
    add_revision(
        project, R1, HEAD,
        body="with op.get_context().autocommit_block():\n"
        '    op.execute("CREATE INDEX CONCURRENTLY ix_products_name ON products (name)")',
    )
    with pg_watch(pg_database.url) as writer, pg_watch(pg_database.url) as watch:
        # a writer's open transaction: CREATE INDEX CONCURRENTLY waits for it, its index
        # already in the catalog (invalid)
        writer.rows("BEGIN")
        writer.rows("LOCK TABLE products IN ROW EXCLUSIVE MODE")
        job = spawn("migrate", cwd=project, DATABASE_URL=pg_database.url)
        eventually(lambda: watch.running("CONCURRENTLY"), within=60, what="the index build waits")
        job.send(signal.SIGTERM)
        result = job.finish(within=30)
        writer.rows("ROLLBACK")
    assert result.returncode == 143, result.output
    assert f"SIGTERM received: migration {R1} cancelled; part of it remains" in result.stderr
    assert "INVALID indexes left by an interrupted CREATE INDEX CONCURRENTLY: public.ix_products_name" \
        in result.stderr
    invalid = pg_database.sql(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
    )
    assert invalid == [("ix_products_name",)]
    assert pg_database.versions() == {HEAD}


# -- the version table dbinit verifies is the one Alembic writes ---------------------------


def test_dbinit_version_table_and_schema_reach_alembic(project: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("CREATE SCHEMA app")
    settings = {"DATABASE_URL": pg_database.url, "DBINIT_VERSION_TABLE": "orders_version",
                "DBINIT_SCHEMA": "app"}
    result = run_dbinit("migrate", cwd=project, **settings)
    assert result.returncode == 0, result.output
    assert pg_database.sql("SELECT version_num FROM app.orders_version") == [(HEAD,)]
    assert "alembic_version" not in pg_database.tables()
    sql = run_dbinit("migrate", "--sql", cwd=project, **settings)
    assert sql.returncode == 0, sql.output
    assert "INSERT INTO app.orders_version (version_num)" in sql.stdout


def test_env_py_naming_another_version_table_is_refused_before_any_migration(
    project: Path, pg_database: TestDatabase
) -> None:
    env = project / "migrations" / "env.py"
    env.write_text(env.read_text().replace(
        "context.configure(connection=connection, target_metadata=target_metadata)",
        "context.configure(connection=connection, target_metadata=target_metadata, "
        "version_table='app_versions')",
    ))
    assert "version_table='app_versions'" in env.read_text()
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == 2, result.output
    assert "env.py configures Alembic with version_table='app_versions', but dbinit verifies " \
        "DBINIT_VERSION_TABLE='alembic_version'" in result.stderr
    assert "Set DBINIT_VERSION_TABLE=app_versions" in result.stderr
    assert pg_database.tables() == set()  # nothing ran
    fixed = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url,
                       DBINIT_VERSION_TABLE="app_versions")
    assert fixed.returncode == 0, fixed.output


def test_from_without_sql_is_a_usage_error(project: Path, sqlite_database: TestDatabase) -> None:
    result = run_dbinit("migrate", "--from", HEAD, cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 2, result.output
    assert "--from only applies to --sql" in result.stderr
    assert not Path(sqlite_database.parsed.database).exists()


# -- two connections ------------------------------------------------------------------------


@pytest.fixture
def limited_role(postgres_server: PostgresServer, pg_database: TestDatabase) -> Iterator[str]:
    """A role allowed one connection, owning the test database; yields its URL."""
    role = f"dbinit_one_{uuid.uuid4().hex[:8]}"
    name = pg_database.parsed.database
    pg_database.sql(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    pg_database.sql(f'ALTER DATABASE "{name}" OWNER TO "{role}"')
    pg_database.sql(f'ALTER SCHEMA public OWNER TO "{role}"')
    try:
        yield postgres_server.url_for(name).replace("://postgres@", f"://{role}@")
    finally:
        pg_database.sql(f'ALTER DATABASE "{name}" OWNER TO postgres')
        pg_database.sql('ALTER SCHEMA public OWNER TO postgres')
        pg_database.sql(f'DROP OWNED BY "{role}"')
        pg_database.sql(f'DROP ROLE "{role}"')


def test_a_connection_limit_of_one_is_a_configuration_error(
    project: Path, pg_database: TestDatabase, limited_role: str
) -> None:
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=limited_role)
    assert result.returncode == 2, result.output
    assert "migrate needs 2 connections at once (the migration lock's and the migration's), " \
        "but the role 'dbinit_one_" in result.stderr
    assert "CONNECTION LIMIT 2" in result.stderr
    assert pg_database.tables() == set()
    # verify needs only one
    assert run_dbinit("verify", cwd=project, DATABASE_URL=limited_role).returncode == 4


# -- a failure before the first revision: final (2) or unreachable (3), never 5 -------------


@pytest.mark.parametrize(
    ("edit", "code", "expected"),
    [
        (("target_metadata = None", "raise RuntimeError('SECRET_KEY is not set')"), 2,
         "env.py failed before the first migration ran: RuntimeError: SECRET_KEY is not set"),
        (("from alembic import context", "from alembic import context\nimport myapp_settings_module"), 2,
         "env.py failed before the first migration ran: ModuleNotFoundError"),
        (('config.get_section(config.config_ini_section, {}),',
          '{"sqlalchemy.url": "postgresql+asyncpg://postgres@127.0.0.1:1/elsewhere"},'), 3,
         "env.py could not connect to the database: "),
    ],
    ids=["raises", "missing-module", "own-url-unreachable"],
)
def test_env_py_failing_before_any_revision(
    project: Path, pg_database: TestDatabase, edit: tuple[str, str], code: int, expected: str
) -> None:
    env = project / "migrations" / "env.py"
    text = env.read_text()
    assert edit[0] in text
    env.write_text(text.replace(edit[0], edit[1]))
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
    assert result.returncode == code, result.output
    assert expected in result.stderr
    assert "Nothing was migrated" in result.stderr
    assert pg_database.tables() == set()


# -- the version table in a schema of its own (airflow's SQL_ALCHEMY_SCHEMA shape) ------------


def test_version_table_in_its_own_schema(project: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("CREATE SCHEMA meta")
    settings = {"DATABASE_URL": pg_database.url, "DBINIT_VERSION_TABLE_SCHEMA": "meta"}
    before = run_dbinit("verify", "--format", "json", cwd=project, **settings)
    assert before.returncode == 4
    assert "Database is empty (no tables in schema 'public'); the version table is read from schema " \
        "'meta'" in before.stdout
    result = run_dbinit("migrate", cwd=project, **settings)
    assert result.returncode == 0, result.output
    assert pg_database.sql("SELECT version_num FROM meta.alembic_version") == [(HEAD,)]
    assert "alembic_version" not in pg_database.tables()  # the tables' schema has the tables only
    assert "products" in pg_database.tables()
    verified = run_dbinit("verify", cwd=project, **settings)
    assert verified.returncode == 0, verified.output
    # the same database read with the version table expected beside the tables: E003 names both
    wrong = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=pg_database.url)
    assert wrong.returncode == 4
    assert "Table 'alembic_version' is missing from schema 'public'" in wrong.stdout
    elsewhere = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=pg_database.url,
                           DBINIT_VERSION_TABLE_SCHEMA="other")
    assert "is missing from schema 'other', while schema 'public' has 4 other tables" in elsewhere.stdout


def test_a_missing_driver_is_a_configuration_error(tmp_path: Path, pg_database: TestDatabase) -> None:
    """A sync env.py and a URL naming psycopg2, which is not installed: final (exit 2), nothing migrated."""
    import subprocess
    import sys

    made = subprocess.run([sys.executable, "-m", "alembic", "init", "migrations"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    add_revision(tmp_path, R1, None, body='op.execute("CREATE TABLE t1 (id int)")')
    url = pg_database.url.replace("postgresql+asyncpg://", "postgresql+psycopg2://")
    result = run_dbinit("migrate", cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 2, result.output
    assert "env.py failed before the first migration ran: ModuleNotFoundError" in result.stderr
    assert "psycopg2" in result.stderr
    assert pg_database.tables() == set()
