"""``dbinit migrate``: strategies, plan, offline SQL, the production guard, failures,
and projects made by ``alembic init`` unmodified (generic and async templates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit

HEAD = "8d3f6b2a9c11"
ALL = ["374752db316e", "5c9a1e7b2f40", HEAD]
UNREACHABLE = "postgresql+asyncpg://nobody@127.0.0.1:1/nowhere"


def test_plan_lists_pending_revisions(project: Path, database: TestDatabase) -> None:
    plan = run_dbinit(
        "migrate", "--plan", "--format", "json", cwd=project, DATABASE_URL=database.url
    )
    assert plan.returncode == 0, plan.output
    assert json.loads(plan.stdout) == {"current": [], "heads": [HEAD], "pending": ALL, "after_migrate": None}
    assert not database.tables() - {"sqlite_sequence"}  # --plan wrote nothing

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    add_revision(project, "f00dcafe0001", HEAD)
    plan = run_dbinit("migrate", "--plan", cwd=project, DATABASE_URL=database.url)
    assert plan.returncode == 0, plan.output
    assert "1 migration(s) would run" in plan.stdout
    assert "f00dcafe0001" in plan.stdout


def test_offline_sql_never_touches_the_database(project: Path, tmp_path: Path) -> None:
    result = run_dbinit("migrate", "--sql", cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output
    assert "CREATE TABLE products" in result.stdout
    assert "CREATE TABLE orders" in result.stdout
    assert "INSERT INTO alembic_version (version_num) VALUES ('374752db316e')" in result.stdout

    sqlite_file = tmp_path / "never.sqlite3"
    result = run_dbinit(
        "migrate",
        "--sql",
        "--from",
        "5c9a1e7b2f40",
        cwd=project,
        DATABASE_URL=f"sqlite:///{sqlite_file}",
    )
    assert result.returncode == 0, result.output
    assert "CREATE TABLE products" not in result.stdout
    assert "ix_orders_status" in result.stdout
    assert not sqlite_file.exists()


def test_force_recreate_drops_everything_then_upgrades(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("INSERT INTO products (id, name, price_cents) VALUES (1, 'croissant', 250)")
    database.sql("CREATE TABLE stray (id INTEGER)")
    result = run_dbinit(
        "migrate", "--force-recreate", "--format", "json", cwd=project, DATABASE_URL=database.url
    )
    assert result.returncode == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["strategy"] == "recreate"
    assert outcome["applied"] == ALL
    assert database.sql("SELECT count(*) FROM products") == [(0,)]
    assert "stray" not in database.tables()

    database.sql("INSERT INTO products (id, name, price_cents) VALUES (2, 'brioche', 300)")
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url, DB_FORCE_RECREATE="true")
    assert result.returncode == 0, result.output
    assert database.sql("SELECT count(*) FROM products") == [(0,)]


def test_recreate_refused_in_production(project: Path, database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("INSERT INTO products (id, name, price_cents) VALUES (1, 'croissant', 250)")
    refused = run_dbinit(
        "migrate",
        cwd=project,
        DATABASE_URL=database.url,
        ENVIRONMENT="production",
        DB_FORCE_RECREATE="true",
    )
    assert refused.returncode == 7, refused.output
    assert "refused with ENVIRONMENT=production" in refused.stderr
    assert "DBINIT_ALLOW_DESTRUCTIVE" in refused.stderr
    assert database.sql("SELECT name FROM products") == [("croissant",)]

    allowed = run_dbinit(
        "migrate",
        cwd=project,
        DATABASE_URL=database.url,
        ENVIRONMENT="production",
        DB_FORCE_RECREATE="true",
        DBINIT_ALLOW_DESTRUCTIVE="true",
    )
    assert allowed.returncode == 0, allowed.output
    assert database.sql("SELECT count(*) FROM products") == [(0,)]


def test_unknown_strategy_is_a_usage_error(project: Path, sqlite_database: TestDatabase) -> None:
    result = run_dbinit(
        "migrate", "--strategy", "yolo", cwd=project, DATABASE_URL=sqlite_database.url
    )
    assert result.returncode == 2
    assert "unknown migration strategy 'yolo'" in result.stderr
    assert "upgrade" in result.stderr and "recreate" in result.stderr
    result = run_dbinit(
        "migrate", cwd=project, DATABASE_URL=sqlite_database.url, DBINIT_STRATEGY="yolo"
    )
    assert result.returncode == 2
    assert "DBINIT_STRATEGY" in result.stderr


def test_failing_migration_exits_5_and_keeps_the_previous_revision(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    add_revision(
        project, "aaaa00000001", HEAD, body='op.create_table("audit", sa.Column("id", sa.Integer))'
    )
    add_revision(
        project,
        "bbbb00000002",
        "aaaa00000001",
        body='op.create_table("halfway", sa.Column("id", sa.Integer))\n'
        'op.execute("SELECT * FROM no_such_table")',
    )
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 5, result.output
    assert "migration bbbb00000002" in result.stderr
    assert "no_such_table" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 5
    # one transaction per migration: the first new one stays, the failing one is gone
    assert database.versions() == {"aaaa00000001"}
    assert "audit" in database.tables()
    if database.backend == "postgresql":  # transactional DDL
        assert "halfway" not in database.tables()


def _alembic_init(tmp_path: Path, template: str) -> Path:
    """A project made by `alembic init` (unmodified) with one real migration."""
    project = tmp_path / template
    project.mkdir()
    env = clean_env()
    alembic = [sys.executable, "-m", "alembic"]
    subprocess.run(
        [*alembic, "init", "-t", template, "migrations"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*alembic, "revision", "-m", "create bread", "--rev-id", "b7ead0000001"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    revision = next((project / "migrations" / "versions").glob("b7ead0000001_*.py"))
    text = revision.read_text()
    body = (
        '    op.create_table("bread", sa.Column("id", sa.Integer, primary_key=True),\n'
        '                    sa.Column("name", sa.String(50)))'
    )
    revision.write_text(
        text.replace('    """Upgrade schema."""\n    pass', '    """Upgrade schema."""\n' + body, 1)
    )
    return project


@pytest.mark.parametrize("template", ["generic", "async"])
def test_unmodified_alembic_init_projects(
    tmp_path: Path, database: TestDatabase, template: str
) -> None:
    project = _alembic_init(tmp_path, template)
    before = run_dbinit("verify", cwd=project, DATABASE_URL=database.url)
    assert before.returncode == 4, before.output
    migrated = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert migrated.returncode == 0, migrated.output
    assert json.loads(migrated.stdout)["applied"] == ["b7ead0000001"]
    assert "bread" in database.tables()
    assert database.versions() == {"b7ead0000001"}
    after = run_dbinit("verify", cwd=project, DATABASE_URL=database.url)
    assert after.returncode == 0, after.output


def test_plain_postgresql_scheme_is_accepted(project: Path, pg_database: TestDatabase) -> None:
    plain = pg_database.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=plain).returncode == 0
    assert run_dbinit("verify", cwd=project, DATABASE_URL=plain).returncode == 0


def test_database_ahead_of_this_release(project: Path, database: TestDatabase) -> None:
    """An older release's job after a newer one: final error, or up to date with allow-ahead."""
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("UPDATE alembic_version SET version_num = 'feedbeef0099'")  # a newer release's head
    refused = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url)
    assert refused.returncode == 2, refused.output
    assert "feedbeef0099, which this release's migrations do not contain" in refused.stderr
    assert "DBINIT_ALLOW_AHEAD" in refused.stderr
    allowed = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url,
                         DBINIT_ALLOW_AHEAD="true")
    assert allowed.returncode == 0, allowed.output
    assert json.loads(allowed.stdout)["action"] == "up_to_date"
    assert database.versions() == {"feedbeef0099"}  # untouched


def test_offline_sql_has_the_transactions_migrate_runs(project: Path) -> None:
    """One BEGIN ... COMMIT per revision, as `migrate` runs them (transaction_per_migration)."""
    add_revision(project, "t1", HEAD, 'op.add_column("orders", sa.Column("a", sa.Integer()))')
    add_revision(project, "t2", "t1", 'op.add_column("orders", sa.Column("b", sa.Integer()))')
    result = run_dbinit("migrate", "--sql", "--from", HEAD, cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output
    lines = [
        line for line in result.stdout.splitlines() if line in ("BEGIN;", "COMMIT;") or "ADD COLUMN" in line
    ]
    assert lines == [
        "BEGIN;",
        "ALTER TABLE orders ADD COLUMN a INTEGER;",
        "COMMIT;",
        "BEGIN;",
        "ALTER TABLE orders ADD COLUMN b INTEGER;",
        "COMMIT;",
    ]
