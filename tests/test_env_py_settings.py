"""An env.py that needs the application's settings, in a Job that lacks some (issue 11, item 2).

The env.py imports the application's settings (pydantic-settings ``Settings()``
with required fields, as full-stack FastAPI projects do) or reads
``os.environ[...]``; when the Job's environment lacks a secret, ``migrate``
exits 2 before any revision and says which settings the application rejected,
or which variable is not set, without ever showing an input value (it may be
a secret). Projects made by ``alembic init`` and ``alembic revision``, real
``python -m dbinit`` processes, a real SQLite file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.databases import Result, TestDatabase, alembic_project, run_dbinit

APP_SETTINGS = '''
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    POSTGRES_SERVER: str
    FIRST_SUPERUSER_PASSWORD: str = Field(min_length=40)
    SMTP_PORT: int = 25
    API_KEY: str = "none"

    @field_validator("API_KEY")
    @classmethod
    def not_revoked(cls, value: str) -> str:
        if value.startswith("sk-"):
            raise ValueError(f"API key {value} was revoked")  # a validator that repeats its input
        return value


settings = Settings()
'''

#: invalid values that look like secrets: none may appear in the output
SECRETS = {
    "FIRST_SUPERUSER_PASSWORD": "hunter2-Sup3rUser-pw",
    "SMTP_PORT": "smtp-t0ken-9f8e7d",
    "API_KEY": "sk-live-7a6b5c4d3e",
}


def importing(project: Path, line: str) -> None:
    """env.py runs ``line`` right after its imports, as projects import their settings."""
    env = project / "migrations" / "env.py"
    text = env.read_text()
    env.write_text(text.replace("from alembic import context\n", f"from alembic import context\n{line}\n", 1))


def failed_json(result: Result) -> dict[str, object]:
    assert "Traceback" not in result.output, result.output
    document: dict[str, object] = json.loads(result.stdout)
    assert result.returncode == 2, result.output
    assert document["ok"] is False and document["error"] == "ConfigurationError", document
    return document


def assert_no_secret(result: Result) -> None:
    for name, value in SECRETS.items():
        assert value not in result.output, f"{name}'s value leaked:\n{result.output}"


def test_settings_the_application_rejects_are_named_without_their_values(
    tmp_path: Path, sqlite_database: TestDatabase
) -> None:
    project = alembic_project(tmp_path)
    (project / "app_settings.py").write_text(APP_SETTINGS)
    importing(project, "from app_settings import settings")
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url,
                        **SECRETS)
    document = failed_json(result)
    message = str(document["message"])
    assert message.startswith(
        "env.py failed before the first migration ran: the application's settings (Settings) rejected: "
        "POSTGRES_SERVER: Field required; "
        "FIRST_SUPERUSER_PASSWORD: String should have at least 40 characters; "
        "SMTP_PORT: Input should be a valid integer, unable to parse string as an integer; "
        "API_KEY: Value error, API key *** was revoked"
    ), message
    assert "envFrom the application's Secret" in message
    assert "Nothing was migrated" in str(document["hint"])
    assert_no_secret(result)
    assert "Migration lock released" in result.stderr
    assert sqlite_database.tables() == set()

    # rendering the SQL offline imports the same env.py: the same message, no traceback, no value
    offline = run_dbinit("migrate", "--sql", cwd=project, DATABASE_URL=sqlite_database.url, **SECRETS)
    assert offline.returncode == 2, offline.output
    assert "Traceback" not in offline.output
    assert "the application's settings (Settings) rejected: POSTGRES_SERVER: Field required" \
        in offline.stderr
    assert_no_secret(offline)

    # an application that wraps the error, quoting pydantic's text (input values included)
    (project / "app_settings.py").write_text(APP_SETTINGS.replace(
        "settings = Settings()",
        "try:\n    settings = Settings()\nexcept Exception as exc:\n"
        "    raise RuntimeError(f'bad configuration: {exc}') from exc",
    ))
    wrapped = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url,
                         **SECRETS)
    assert str(failed_json(wrapped)["message"]).startswith(
        "env.py failed before the first migration ran: RuntimeError, from the application's settings "
        "(Settings) rejected: POSTGRES_SERVER: Field required"
    )
    assert_no_secret(wrapped)
    (project / "app_settings.py").write_text(APP_SETTINGS)

    # given the settings it needs, the same project migrates
    fixed = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url, POSTGRES_SERVER="db",
                       FIRST_SUPERUSER_PASSWORD="x" * 40)
    assert fixed.returncode == 0, fixed.output
    assert sqlite_database.versions() == {"b7ead0000001"}


@pytest.mark.parametrize("where", ["env.py", "a module env.py imports"])
def test_an_unset_environment_variable_is_named(
    tmp_path: Path, sqlite_database: TestDatabase, where: str
) -> None:
    project = alembic_project(tmp_path)
    if where == "env.py":
        importing(project, 'import os\nAPP_URL = os.environ["APP_DATABASE_URL"]')
        reader = "migrations/env.py"
    else:
        (project / "app_config.py").write_text('import os\n\nAPP_URL = os.environ["APP_DATABASE_URL"]\n')
        importing(project, "import app_config")
        reader = "app_config.py, line 3"
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    message = str(failed_json(result)["message"])
    assert "env.py needs the environment variable APP_DATABASE_URL, which is not set " \
        "(os.environ['APP_DATABASE_URL'] in " in message, message
    assert reader in message
    assert "migration Job's environment" in message
    assert sqlite_database.tables() == set()


def test_another_key_error_is_not_called_an_environment_variable(
    tmp_path: Path, sqlite_database: TestDatabase
) -> None:
    project = alembic_project(tmp_path)
    importing(project, 'NAMES = {"a": 1}["PLAIN_KEY"]')
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    message = str(failed_json(result)["message"])
    assert message == "env.py failed before the first migration ran: KeyError: 'PLAIN_KEY'"
