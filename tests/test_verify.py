"""End to end: the seed's flow on both backends, through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.plugins.databases import TestDatabase, add_revision, run_dbinit

SEED_KEYS = {"action", "message", "current_revision", "migration_count", "table_count"}
HEAD = "8d3f6b2a9c11"


def test_empty_database_fails_verification_naming_the_check(
    project: Path, database: TestDatabase
) -> None:
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 4, result.output
    report = json.loads(result.stdout)
    assert report["action"] == "failed"
    assert report["ok"] is False
    assert "dbinit.E002" in report["message"]
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    assert [c["id"] for c in failed] == ["dbinit.E002"]
    assert "migration job" in failed[0]["hint"]


def test_migrate_then_verify(project: Path, database: TestDatabase) -> None:
    migrated = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert migrated.returncode == 0, migrated.output
    outcome = json.loads(migrated.stdout)
    assert outcome["action"] == "migrations_applied"
    assert outcome["applied"] == ["374752db316e", "5c9a1e7b2f40", HEAD]
    assert database.versions() == {HEAD}
    assert {"products", "customers", "orders", "order_items"} <= database.tables()

    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert verified.returncode == 0, verified.output
    report = json.loads(verified.stdout)
    assert report.keys() >= SEED_KEYS
    assert report["action"] == "verified"
    assert report["message"] == "Database verified successfully - ready for service"
    assert report["current_revision"] == HEAD
    assert report["migration_count"] == 3
    assert report["table_count"] == 6  # the example's tables, alembic_version, dbinit_history
    assert report["service"] == "orders"
    assert report["head_revisions"] == [HEAD]
    assert all(c["ok"] for c in report["checks"])
    assert {"ok", "service", "head_revisions", "duration_ms", "checks"} <= report.keys()
    for check in report["checks"]:
        assert {"id", "name", "level", "ok", "message", "hint"} <= check.keys()

    again = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert again.returncode == 0, again.output
    assert json.loads(again.stdout)["action"] == "up_to_date"
    assert json.loads(again.stdout)["applied"] == []


def test_seed_log_lines(project: Path, database: TestDatabase) -> None:
    run_dbinit("migrate", cwd=project, DATABASE_URL=database.url)
    result = run_dbinit("verify", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names == [
        "Database verification mode - checking database is ready",
        "Database state checked",
        "Database verification successful",
        "Database verification completed",
    ]
    success = events[2]
    assert success["migration_count"] == 3
    assert success["current_revision"] == HEAD
    assert success["table_count"] == 6  # dbinit_history included
    assert all(e["service"] == "orders" for e in events)
    assert "duration_ms" in events[3]


def test_new_migration_not_applied_means_behind(project: Path, database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    add_revision(project, "f00dcafe0001", HEAD)
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 4, result.output
    report = json.loads(result.stdout)
    assert "dbinit.E005" in report["message"]
    assert "f00dcafe0001" in report["message"]
    assert "dbinit migrate" in report["hint"]


def test_garbage_revision_is_unknown(project: Path, database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("UPDATE alembic_version SET version_num = 'garbage42'")
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 4, result.output
    report = json.loads(result.stdout)
    assert "dbinit.E004" in report["message"]
    assert "garbage42" in report["message"]
    assert report["hint"]


def test_verify_never_writes_even_when_force_recreate_is_set(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("INSERT INTO products (id, name, price_cents) VALUES (1, 'croissant', 250)")
    result = run_dbinit("verify", cwd=project, DATABASE_URL=database.url, DB_FORCE_RECREATE="true")
    assert result.returncode == 0, result.output
    assert database.sql("SELECT name FROM products") == [("croissant",)]


def test_verify_on_missing_sqlite_file_does_not_create_it(project: Path, tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite3"
    result = run_dbinit("verify", cwd=project, DATABASE_URL=f"sqlite:///{path}")
    assert result.returncode == 4
    assert not path.exists()
