"""A project shaped like the FastAPI full-stack template's backend, built for one test.

The shape that matters, not the template's code: the repository root holds
``.env`` (the app's settings: ``POSTGRES_SERVER``, ``POSTGRES_DB``…,
``ENVIRONMENT=local``), the service lives one folder down in ``backend/`` with
``alembic.ini`` (``script_location = app/alembic``, ``prepend_sys_path = .``),
its own pydantic-settings class reading ``../.env``, an ``env.py`` that builds
its URL from those settings and ignores ``sqlalchemy.url``, the sync psycopg 3
driver, an ``app/initial_data.py`` seed step, and an app with no lifespan of
its own. :func:`build` writes it; :meth:`FullStack.adopt` makes the edits the
README's "Adopting dbinit in an existing service" asks for.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from dbinit.urls import DatabaseURL

HEAD = "1a31ce608336"
APP_SECRET = "Tpl-Superuser-Pa55"

_ALEMBIC_INI = """\
[alembic]
script_location = app/alembic
prepend_sys_path = .

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console
qualname =

[logger_sqlalchemy]
level = WARN
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

_CONFIG = '''\
from typing import Literal

from pydantic import computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # the .env one folder up, as the template has it
    model_config = SettingsConfigDict(env_file="../.env", env_ignore_empty=True, extra="ignore")

    PROJECT_NAME: str
    ENVIRONMENT: Literal["local", "staging", "production"] = "local"
    POSTGRES_SERVER: str
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str = ""
    FIRST_SUPERUSER: str
    FIRST_SUPERUSER_PASSWORD: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=self.POSTGRES_USER,
            password=self.POSTGRES_PASSWORD or None,
            host=self.POSTGRES_SERVER,
            port=self.POSTGRES_PORT,
            database=self.POSTGRES_DB,
        ).render_as_string(hide_password=False)


settings = Settings()  # type: ignore[call-arg]
'''

_MODELS = '''\
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id = sa.Column(sa.Integer, primary_key=True)
    email = sa.Column(sa.String(255), nullable=False, unique=True)
    is_superuser = sa.Column(sa.Boolean, nullable=False, default=False)
'''

_ENV_PY = '''\
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
fileConfig(config.config_file_name)

from app.models import Base  # noqa: E402
from app.core.config import settings  # noqa: E402

target_metadata = Base.metadata


def get_url():
    return str(settings.SQLALCHEMY_DATABASE_URI)


def run_migrations_offline():
    context.configure(url=get_url(), target_metadata=target_metadata, literal_binds=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    configuration = config.get_section(config.config_ini_section)
    configuration["sqlalchemy.url"] = get_url()
    connectable = engine_from_config(configuration, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

_REVISION = f'''\
"""Add user table

Revision ID: {HEAD}
Revises:
Create Date: 2023-11-24 22:55:43.195942

"""
import sqlalchemy as sa
from alembic import op

revision = "{HEAD}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("is_superuser", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_user_email"), "user", ["email"], unique=True)


def downgrade():
    op.drop_index(op.f("ix_user_email"), table_name="user")
    op.drop_table("user")
'''

_INITIAL_DATA = '''\
"""Create the first superuser (the template's seed step): idempotent."""
import sqlalchemy as sa

from app.core.config import settings


def main() -> None:
    engine = sa.create_engine(str(settings.SQLALCHEMY_DATABASE_URI))
    with engine.begin() as connection:
        connection.execute(
            sa.text('INSERT INTO "user" (email, is_superuser) VALUES (:email, true) '
                    "ON CONFLICT (email) DO NOTHING"),
            {"email": settings.FIRST_SUPERUSER},
        )
    engine.dispose()
    print("Initial data created")


if __name__ == "__main__":
    main()
'''

_MAIN = '''\
from fastapi import FastAPI

from app.core.config import settings

app = FastAPI(title=settings.PROJECT_NAME)


@app.get("/api/v1/utils/health-check/")
async def health_check() -> bool:
    return True
'''

#: The README's two lines, for an app with no lifespan of its own.
_MAIN_ADOPTED = '''\
from fastapi import FastAPI

from app.core.config import settings
from dbinit.asgi import DatabaseGate

gate = DatabaseGate()
app = FastAPI(title=settings.PROJECT_NAME, lifespan=gate.lifespan())
app.add_middleware(gate.middleware)


@app.get("/api/v1/utils/health-check/")
async def health_check() -> bool:
    return True
'''


@dataclasses.dataclass(frozen=True)
class FullStack:
    """The built project: the repository root and its ``backend/``."""

    root: Path
    database: DatabaseURL

    @property
    def backend(self) -> Path:
        return self.root / "backend"

    def app_env(self) -> dict[str, str]:
        """What the app's settings need, as the Job would get them from the app's Secret."""
        lines = (self.root / ".env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def point_app_at(self, database: str) -> None:
        """Change ``POSTGRES_DB`` in the app's ``.env`` (the database env.py migrates)."""
        env = self.app_env()
        env["POSTGRES_DB"] = database
        (self.root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    def adopt(self) -> None:
        """The service verifies at startup: the README's lifespan lines."""
        (self.backend / "app" / "main.py").write_text(_MAIN_ADOPTED)


def build(root: Path, database: DatabaseURL) -> FullStack:
    """Write the project under ``root``; its ``.env`` names ``database`` (PostgreSQL)."""
    host, port = database.host or "127.0.0.1", database.port or 5432
    files = {
        ".env": textwrap.dedent(f"""\
            PROJECT_NAME=Full Stack FastAPI Project
            ENVIRONMENT=local
            POSTGRES_SERVER={host}
            POSTGRES_PORT={port}
            POSTGRES_USER={database.username}
            POSTGRES_PASSWORD={database.password or ''}
            POSTGRES_DB={database.database}
            FIRST_SUPERUSER=admin@example.com
            FIRST_SUPERUSER_PASSWORD={APP_SECRET}
            """),
        "backend/alembic.ini": _ALEMBIC_INI,
        "backend/app/__init__.py": "",
        "backend/app/core/__init__.py": "",
        "backend/app/core/config.py": _CONFIG,
        "backend/app/models.py": _MODELS,
        "backend/app/main.py": _MAIN,
        "backend/app/initial_data.py": _INITIAL_DATA,
        "backend/app/alembic/env.py": _ENV_PY,
        "backend/app/alembic/script.py.mako": "",
        f"backend/app/alembic/versions/{HEAD}_add_user_table.py": _REVISION,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return FullStack(root, database)
