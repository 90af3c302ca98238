"""Settings: flag > environment > .env > [tool.dbinit] in pyproject.toml > default.

Through the command line (what a user sees), and through
:func:`dbinit.settings.load_settings` where a subprocess would only add time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from dbinit.errors import ConfigurationError, ExitCode
from dbinit.settings import DEFAULT_DATABASE_URL, load_settings
from tests.plugins.databases import TestDatabase, run_dbinit

HEAD = "8d3f6b2a9c11"
SEED_NAMES = ("DATABASE_URL", "DATABASE_URL_FILE", "SERVICE_NAME", "ENVIRONMENT", "DB_FORCE_RECREATE")


def service_of(project: Path, *args: str, **env: str) -> str:
    """The ``service`` that `verify --format json` reports (the database is absent: exit 4)."""
    url = f"sqlite:///{project.parent / 'absent.sqlite3'}"
    result = run_dbinit("verify", "--format", "json", *args, cwd=project, DATABASE_URL=url, **env)
    assert result.returncode == 4, result.output
    report = json.loads(result.stdout)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert events and all(e["service"] == report["service"] for e in events)
    return str(report["service"])


def usage_error(result: Any) -> str:
    """Assert exit 2 with an ``Error:`` line; return stderr."""
    assert result.returncode == 2, result.output
    assert "Error: " in result.stderr
    assert "Traceback" not in result.output
    return str(result.stderr)


# -- precedence, through the command line -------------------------------------------


def test_precedence_flag_env_dotenv_pyproject_default(project: Path) -> None:
    assert service_of(project) == "orders"  # [tool.dbinit] in the example's pyproject.toml

    (project / ".env").write_text("# a comment\nSERVICE_NAME=from-dotenv\n")
    assert service_of(project) == "from-dotenv"
    assert service_of(project, SERVICE_NAME="from-env") == "from-env"
    assert service_of(project, "--service-name", "from-flag", SERVICE_NAME="from-env") == "from-flag"

    (project / ".env").unlink()
    (project / "pyproject.toml").write_text("[project]\nname = 'orders'\n")
    assert service_of(project) == project.name  # the default: the folder's name


def test_database_url_file(project: Path, database: TestDatabase, tmp_path: Path) -> None:
    secret = tmp_path / "secret" / "database-url"
    secret.parent.mkdir()
    secret.write_text(database.url + "\n")  # as mounted from a Secret, with a newline

    migrated = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL_FILE=str(secret))
    assert migrated.returncode == 0, migrated.output
    assert json.loads(migrated.stdout)["applied"][-1] == HEAD
    assert database.versions() == {HEAD}  # the file's database, not the default one
    assert not (project / "db.sqlite3").exists()

    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL_FILE=str(secret))
    assert verified.returncode == 0, verified.output
    assert json.loads(verified.stdout)["database"] == database.parsed.display_name


def test_database_url_file_errors(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(f"sqlite:///{tmp_path / 'db.sqlite3'}")

    both = run_dbinit("verify", cwd=project, DATABASE_URL_FILE=str(secret),
                      DATABASE_URL=f"sqlite:///{tmp_path / 'other.sqlite3'}")
    stderr = usage_error(both)
    assert "DATABASE_URL and DATABASE_URL_FILE are both set" in stderr
    assert "Set only one of them" in stderr

    missing = run_dbinit("verify", "--format", "json", cwd=project,
                         DATABASE_URL_FILE=str(tmp_path / "not-mounted"))
    stderr = usage_error(missing)
    assert f"DATABASE_URL_FILE '{tmp_path / 'not-mounted'}' cannot be read" in stderr
    document = json.loads(missing.stdout)
    assert document["exit_code"] == 2
    assert document["ok"] is False
    assert "DATABASE_URL_FILE" in document["message"]
    assert "Mount the Secret" in document["hint"]

    secret.write_text("  \n")
    empty = run_dbinit("verify", cwd=project, DATABASE_URL_FILE=str(secret))
    assert "is empty" in usage_error(empty)


# -- invalid values: exit 2 naming the setting --------------------------------------


def test_the_applications_environment_name_never_fails_a_start(project: Path, tmp_path: Path) -> None:
    """ENVIRONMENT is the app's variable too: a value dbinit does not know counts as production."""
    url = f"sqlite:///{tmp_path / 'absent.sqlite3'}"
    result = run_dbinit("verify", "--format", "json", cwd=project, ENVIRONMENT="local", DATABASE_URL=url)
    assert result.returncode == 4, result.output  # the verdict on the database, not a settings error
    warnings = [e for e in events_of(result) if e["level"] == "warning"]
    assert any("ENVIRONMENT='local' is not one of development, test, staging, production: treated as "
               "production" in e["event"] for e in warnings), result.stderr

    # the production guard is on: a destructive strategy is refused (exit 7)
    refused = run_dbinit("migrate", "--strategy", "recreate", cwd=project, ENVIRONMENT="local",
                         DATABASE_URL=url)
    assert refused.returncode == ExitCode.REFUSED, refused.output
    assert "refused with ENVIRONMENT=production" in refused.stderr
    assert not (tmp_path / "absent.sqlite3").exists()

    # without a DATABASE_URL, production has no embedded default: a configuration error naming why
    no_url = run_dbinit("verify", cwd=project, ENVIRONMENT="local")
    assert "ENVIRONMENT='local' (counted as production) does not fall back" in usage_error(no_url)


def test_dbinit_names_win_over_the_applications(project: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.sqlite3'}"
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url, ENVIRONMENT="local",
                        DBINIT_ENVIRONMENT="development", SERVICE_NAME="backend",
                        DBINIT_SERVICE_NAME="orders-db")
    assert result.returncode == 4, result.output
    assert json.loads(result.stdout)["service"] == "orders-db"
    assert not [e for e in events_of(result) if e["level"] == "warning"]
    # development: recreate is allowed (it runs and fails on the missing migrations' database? no:
    # it is refused only by the production guard, which is off here)
    assert run_dbinit("migrate", "--plan", cwd=project, DATABASE_URL=url, ENVIRONMENT="production",
                      DBINIT_ENVIRONMENT="development", DB_FORCE_RECREATE="true").returncode == 0


def test_the_embedded_default_is_named_in_a_warning(project: Path) -> None:
    result = run_dbinit("verify", "--format", "json", cwd=project)
    warnings = [e["event"] for e in events_of(result) if e["level"] == "warning"]
    assert any(w.startswith("DATABASE_URL is not set") and "embedded default" in w for w in warnings)
    # and the verdict names the file it looked at
    assert json.loads(result.stdout)["database"] == str(project / "db.sqlite3")
    verdicts = [e for e in events_of(result) if e["event"].startswith("Database verification")]
    assert verdicts and all(e["database"] == str(project / "db.sqlite3") for e in verdicts)


def test_env_file_is_configurable(project: Path, tmp_path: Path) -> None:
    """The project's .env one folder up (a monorepo's layout) is read only when named."""
    database = tmp_path / "named.sqlite3"
    (project.parent / ".env").write_text(f"DATABASE_URL=sqlite:///{database}\nSERVICE_NAME=from-parent\n")
    assert service_of_default(project) == "orders"  # ./.env only: the parent's is not read
    named = run_dbinit("verify", "--format", "json", cwd=project, DBINIT_ENV_FILE="../.env")
    assert json.loads(named.stdout)["database"] == str(database)
    assert json.loads(named.stdout)["service"] == "from-parent"

    (project / ".env").write_text("SERVICE_NAME=from-here\n")
    none = run_dbinit("verify", "--format", "json", cwd=project, DBINIT_ENV_FILE="")
    assert json.loads(none.stdout)["service"] == "orders"  # no .env at all: pyproject's

    missing = run_dbinit("verify", cwd=project, DBINIT_ENV_FILE="../nothing/.env")
    stderr = usage_error(missing)
    assert "DBINIT_ENV_FILE='../nothing/.env' does not name a readable file" in stderr


def events_of(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def service_of_default(project: Path) -> str:
    result = run_dbinit("verify", "--format", "json", cwd=project)
    return str(json.loads(result.stdout)["service"])


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_invalid_lock_timeout_names_the_setting(project: Path, value: str) -> None:
    result = run_dbinit("migrate", cwd=project, DBINIT_LOCK_TIMEOUT=value)
    stderr = usage_error(result)
    assert "invalid setting DBINIT_LOCK_TIMEOUT" in stderr
    expected = "greater than 0" if value == "-1" else "valid number"
    assert expected in stderr
    assert not (project / "db.sqlite3").exists()  # nothing ran


def test_missing_alembic_ini_names_dbinit_alembic_ini(project: Path, tmp_path: Path) -> None:
    (project / "alembic.ini").unlink()
    result = run_dbinit("verify", cwd=project)
    stderr = usage_error(result)
    assert "DBINIT_ALEMBIC_INI: 'alembic.ini' not found" in stderr
    assert "DBINIT_MIGRATIONS_DIR" in stderr  # the hint says what to do

    elsewhere = run_dbinit("verify", cwd=project, DBINIT_ALEMBIC_INI=str(tmp_path / "nope.ini"))
    assert f"DBINIT_ALEMBIC_INI: '{tmp_path / 'nope.ini'}' not found" in usage_error(elsewhere)


def test_missing_versions_folder(project: Path) -> None:
    shutil.rmtree(project / "migrations" / "versions")
    result = run_dbinit("verify", cwd=project)
    stderr = usage_error(result)
    assert f"versions folder '{project / 'migrations' / 'versions'}' does not exist" in stderr
    assert "Hint:" in stderr

    dangling = run_dbinit("verify", cwd=project, DBINIT_MIGRATIONS_DIR=str(project / "nowhere"))
    assert "DBINIT_MIGRATIONS_DIR" in usage_error(dangling)


def test_migrations_dir_works_without_alembic_ini_for_verify(
    project: Path, database: TestDatabase
) -> None:
    migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url)
    assert migrated.returncode == 0, migrated.output
    (project / "alembic.ini").unlink()

    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url,
                        DBINIT_MIGRATIONS_DIR="migrations/versions")
    assert result.returncode == 0, result.output
    report = json.loads(result.stdout)
    assert (report["migration_count"], report["current_revision"]) == (3, HEAD)

    # migrating needs Alembic's configuration: a clear usage error, not a traceback
    refused = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url,
                         DBINIT_MIGRATIONS_DIR="migrations/versions")
    assert "migrate needs Alembic's configuration: alembic.ini (DBINIT_ALEMBIC_INI)" in usage_error(refused)


# -- load_settings ------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no dbinit settings in the environment."""
    for name in list(os.environ):
        if name.startswith("DBINIT_") or name in SEED_NAMES:
            monkeypatch.delenv(name)
    folder = tmp_path / "svc-dir"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def write_pyproject(folder: Path, body: str) -> None:
    (folder / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n[tool.dbinit]\n{body}\n")


def test_load_settings_defaults(workdir: Path) -> None:
    settings = load_settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.url.is_sqlite and settings.url.database == "db.sqlite3"
    assert settings.service == "svc-dir"
    assert settings.environment == "development" and not settings.is_production
    assert settings.force_recreate is False
    assert settings.alembic_ini == Path("alembic.ini")
    assert settings.lock_timeout == 300.0
    assert settings.heads == () and settings.silenced_checks == ()


def test_load_settings_precedence(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyproject(workdir, 'service_name = "pyproject"\nlock_timeout = 11\nheads = "a,b"\n'
                    'environment = "staging"\nstrategy = "recreate"')
    settings = load_settings()
    assert (settings.service, settings.lock_timeout, settings.heads) == ("pyproject", 11, ("a", "b"))
    assert (settings.environment, settings.strategy) == ("staging", "recreate")

    (workdir / ".env").write_text("SERVICE_NAME=dotenv\nDBINIT_LOCK_TIMEOUT=12\n")
    settings = load_settings()
    assert (settings.service, settings.lock_timeout) == ("dotenv", 12)
    assert settings.environment == "staging"  # untouched by .env: still from pyproject

    monkeypatch.setenv("SERVICE_NAME", "env")
    monkeypatch.setenv("DBINIT_LOCK_TIMEOUT", "13")
    monkeypatch.setenv("ENVIRONMENT", "PRODUCTION")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/orders")  # production has no default
    settings = load_settings()
    assert (settings.service, settings.lock_timeout) == ("env", 13)
    assert settings.is_production

    settings = load_settings(service_name="flag", lock_timeout=14.0, strategy=None)
    assert (settings.service, settings.lock_timeout) == ("flag", 14)
    assert settings.strategy == "recreate"  # None means "flag not given"


def test_load_settings_seed_names_and_lists(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/orders")
    monkeypatch.setenv("DB_FORCE_RECREATE", "true")
    monkeypatch.setenv("DBINIT_SCHEMA", "orders")
    monkeypatch.setenv("DBINIT_SILENCED_CHECKS", " dbinit.E005 , ,dbinit.E006,")
    settings = load_settings()
    assert settings.url.backend == "postgresql" and settings.url.database == "orders"
    assert settings.force_recreate is True
    assert settings.db_schema == "orders"
    assert settings.silenced_checks == ("dbinit.E005", "dbinit.E006")


def test_load_settings_database_url_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "url").write_text("\n  postgresql://u@db:5432/orders \n")
    monkeypatch.setenv("DATABASE_URL_FILE", "url")
    assert load_settings().url.database == "orders"

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/other")
    with pytest.raises(ConfigurationError, match="both set"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DBINIT_ENVIRONMENT", "", "DBINIT_ENVIRONMENT"),
        ("DBINIT_LOCK_TIMEOUT", "-1", "DBINIT_LOCK_TIMEOUT"),
        ("DBINIT_LOCK_TIMEOUT", "abc", "DBINIT_LOCK_TIMEOUT"),
        ("DBINIT_LOCK_TIMEOUT", "0", "DBINIT_LOCK_TIMEOUT"),
        ("DBINIT_CONNECT_TIMEOUT", "soon", "DBINIT_CONNECT_TIMEOUT"),
        ("DB_FORCE_RECREATE", "maybe", "DB_FORCE_RECREATE"),
        ("DBINIT_LOG_FORMAT", "xml", "DBINIT_LOG_FORMAT"),
        ("DATABASE_URL", "mysql://u:pw@db/orders", "DATABASE_URL"),
    ],
)
def test_load_settings_invalid_values(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert named in info.value.message
    assert info.value.hint
    assert info.value.exit_code == ExitCode.USAGE_ERROR


def test_load_settings_invalid_value_in_pyproject_is_named(workdir: Path) -> None:
    write_pyproject(workdir, "lock_timeout = -5")
    with pytest.raises(ConfigurationError, match="DBINIT_LOCK_TIMEOUT"):
        load_settings()


def test_database_url_file_in_env_beats_database_url_in_pyproject(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pyproject(workdir, 'database_url = "sqlite:///dev.sqlite3"')
    (workdir / "url").write_text("postgresql://u@db:5432/orders")
    monkeypatch.setenv("DATABASE_URL_FILE", "url")
    assert load_settings().url.database == "orders"


def test_malformed_url_in_file_names_database_url_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "url").write_text("postgresql://u@db:port/orders")
    monkeypatch.setenv("DATABASE_URL_FILE", "url")
    with pytest.raises(ConfigurationError, match="DATABASE_URL_FILE"):
        load_settings()


def test_production_never_falls_back_to_the_embedded_default(project: Path) -> None:
    result = run_dbinit("verify", cwd=project, ENVIRONMENT="production")
    assert result.returncode == 2, result.output
    assert "DATABASE_URL is not set" in result.stderr
    assert not (project / "db.sqlite3").exists()
