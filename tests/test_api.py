"""The seed's Python API against real databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dbinit
from dbinit.errors import NotReady
from tests.plugins.databases import TestDatabase


def test_service_verifies_job_migrates_seed_dicts(
    project: Path, database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    with pytest.raises(NotReady) as failure:
        asyncio.run(dbinit.initialize_service_database(database.url, "orders"))
    assert "dbinit.E002" in failure.value.message
    assert failure.value.report.as_dict()["action"] == "failed"  # type: ignore[attr-defined]

    migrated = asyncio.run(
        dbinit.initialize_service_database(database.url, "orders", verify_only=False)
    )
    assert migrated.as_dict() == {
        "action": "migrations_applied",
        "message": "Pending migrations applied successfully",
    }
    assert database.versions() == {"8d3f6b2a9c11"}

    report = asyncio.run(dbinit.initialize_service_database(database.url, "orders"))
    assert report.as_dict() == {
        "action": "verified",
        "message": "Database verified successfully - ready for service",
        "current_revision": "8d3f6b2a9c11",
        "migration_count": 3,
        "table_count": 6,  # the bakery's 4, alembic_version, dbinit_history
    }


def test_manager_verify_only_ignores_force_recreate(
    project: Path, database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    asyncio.run(dbinit.DatabaseInitManager(database.url, "orders", verify_only=False).initialize())
    database.sql("INSERT INTO products (id, name, price_cents) VALUES (7, 'baguette', 120)")
    manager = dbinit.DatabaseInitManager(database.url, "orders", force_recreate=True)
    assert manager.verify_only is True
    report = asyncio.run(manager.initialize())
    assert report.as_dict()["action"] == "verified"
    assert database.sql("SELECT name FROM products") == [("baguette",)]


def test_settings_given_with_overrides_use_the_overrides(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Settings object whose URL was already parsed, handed over with another URL: the other is used."""
    from dbinit.api import resolve_settings
    from dbinit.errors import ConfigurationError
    from dbinit.settings import load_settings

    monkeypatch.chdir(project)
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    settings = load_settings(database_url=f"sqlite:///{first}", service_name="orders")
    assert settings.url.database == str(first)  # parsed (and cached) once
    resolved = resolve_settings(settings, service_name="billing", database_url=f"sqlite:///{second}")
    manager = dbinit.DatabaseInitManager(resolved, verify_only=False)
    assert manager.settings.service == "billing"
    asyncio.run(manager.initialize())
    assert second.exists() and not first.exists()
    # an override is validated as the setting would be, never taken as is
    with pytest.raises(ConfigurationError, match="DBINIT_LOCK_TIMEOUT"):
        resolve_settings(settings, lock_timeout=-5)
