"""Settings, read with pydantic-settings.

Precedence: command-line flag (keyword arguments) > environment > ``.env`` >
``[tool.dbinit]`` in ``pyproject.toml`` > default. The original names are kept
(``DATABASE_URL``, ``SERVICE_NAME``, ``ENVIRONMENT``, ``DB_FORCE_RECREATE``);
everything else is ``DBINIT_<FIELD>``. In ``pyproject.toml`` use the field
names (``service_name = "orders"``, ``lock_timeout = 120``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
)

from dbinit.errors import ConfigurationError
from dbinit.urls import DatabaseURL

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///db.sqlite3"

Environment = Literal["development", "test", "staging", "production"]
CommaList = Annotated[tuple[str, ...], NoDecode]

#: The longest timeout PostgreSQL accepts (``statement_timeout`` is an int of
#: milliseconds): every timeout is held to it, so none is accepted here and
#: refused later by the server, after work has started.
MAX_SECONDS = 2_147_483
#: A timeout in seconds: finite, positive, at most :data:`MAX_SECONDS`.
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
def _fits_an_identifier(value: str) -> str:
    """A name PostgreSQL can hold as it is: no NUL, at most 63 bytes (names reach SQL escaped)."""
    if "\x00" in value:
        raise ValueError("contains a NUL character, which no database name can hold")
    if len(value.encode("utf-8", "surrogatepass")) > IDENTIFIER_BYTES:
        raise ValueError(
            f"is longer than {IDENTIFIER_BYTES} bytes, the longest name PostgreSQL keeps "
            "(it would cut it short, and nothing would match)"
        )
    return value


#: PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated.
IDENTIFIER_BYTES = 63
#: A non-empty name (schema, table, strategy), spaces around it ignored.
Name = Annotated[str, Field(min_length=1), AfterValidator(_fits_an_identifier)]
#: An HTTP path for a probe.
ProbePath = Annotated[str, Field(pattern=r"^/[^\s?#]*$")]


class Settings(BaseSettings):
    """Everything dbinit can be told. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="DBINIT_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        pyproject_toml_table_header=("tool", "dbinit"),
        frozen=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    database_url_file: Path | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL_FILE", "database_url_file")
    )
    service_name: str = Field("", validation_alias=AliasChoices("SERVICE_NAME", "service_name"))
    environment: Environment = Field(
        "development", validation_alias=AliasChoices("ENVIRONMENT", "environment")
    )
    force_recreate: bool = Field(
        False, validation_alias=AliasChoices("DB_FORCE_RECREATE", "force_recreate")
    )
    allow_destructive: bool = False

    alembic_ini: Path = Path("alembic.ini")
    migrations_dir: Path | None = None
    strategy: Name = "upgrade"
    #: The ``command`` strategy's command line (split like a shell does, never run by one).
    migrate_command: str | None = None
    #: The ``command`` strategy: seconds between forwarding SIGTERM/SIGINT and SIGKILL.
    migrate_command_grace: Seconds = 10.0
    db_schema: Name | None = Field(
        None, validation_alias=AliasChoices("DBINIT_SCHEMA", "schema", "db_schema")
    )
    version_table: Name = "alembic_version"
    #: The version table's schema when it is not the tables' (airflow's SQL_ALCHEMY_SCHEMA).
    version_table_schema: Name | None = None
    heads: CommaList = ()
    allow_ahead: bool = False
    silenced_checks: CommaList = ()
    plugins: CommaList = ()

    connect_timeout: Seconds = 5.0
    verify_timeout: Seconds = 10.0
    wait_timeout: Seconds = 60.0
    startup_timeout: Seconds = 30.0
    lock_timeout: Seconds = 300.0
    statement_timeout: Seconds | None = None
    ddl_lock_timeout: Seconds | None = None

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    readiness_path: ProbePath | None = None
    liveness_path: ProbePath | None = None
    readiness_cache: Seconds = 1.0
    #: The readiness probe's body names the database (host, port, name), its revisions and
    #: the checks' messages and hints; off, it holds only the verdict and the failed check ids.
    readiness_details: bool = False

    @field_validator("heads", "silenced_checks", "plugins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("environment", "log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("strategy", "db_schema", "version_table", "version_table_schema", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            PyprojectTomlConfigSettingsSource(settings_cls),
        )

    # -- derived views -----------------------------------------------------------

    #: Which setting the URL came from, for error messages.
    _url_setting: str = PrivateAttr("DATABASE_URL")

    @functools.cached_property
    def url(self) -> DatabaseURL:
        """The parsed ``DATABASE_URL`` (validated by :func:`load_settings`)."""
        return DatabaseURL.parse(self.database_url, setting=self._url_setting)

    @property
    def service(self) -> str:
        return self.service_name or Path.cwd().name

    @property
    def version_schema(self) -> str | None:
        """The schema of the version table: DBINIT_VERSION_TABLE_SCHEMA, else DBINIT_SCHEMA."""
        return self.version_table_schema or self.db_schema

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


#: How each field is spelled in the environment, for error messages.
def setting_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    return f"DBINIT_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; flags come in as ``overrides`` (None means "not given").

    Raises :class:`ConfigurationError` (exit 2) naming the setting and what to
    do; never echoes a value (it may hold a password).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc), hint=_hint(exc)) from None
    url_file = settings.database_url_file
    if url_file is not None and "database_url" not in given:  # a flag beats the file
        settings = _with_url_from_file(settings, url_file)
    if settings.is_production and settings.database_url == DEFAULT_DATABASE_URL:
        raise ConfigurationError(
            "DATABASE_URL is not set, and ENVIRONMENT=production does not fall back to the "
            "embedded SQLite default",
            hint="Set DATABASE_URL (or DATABASE_URL_FILE) from the database Secret",
        )
    # Parse now so a malformed URL is a configuration error before anything runs.
    _ = settings.url
    return settings


def _with_url_from_file(settings: Settings, url_file: Path) -> Settings:
    """The URL from the file beats one from ``.env``/pyproject, not one from the environment."""
    if any(name.upper() == "DATABASE_URL" for name in os.environ):
        raise ConfigurationError(
            "DATABASE_URL and DATABASE_URL_FILE are both set in the environment",
            hint="Set only one of them (DATABASE_URL_FILE for a mounted Secret)",
        )
    shown = str(url_file)
    try:
        raw = url_file.read_bytes()
    except OSError as exc:
        if not _looks_like_a_path(shown):
            # A secretKeyRef put the URL (or a password) here: never echo it.
            raise ConfigurationError(
                f"DATABASE_URL_FILE does not name a readable file, and its value "
                f"({len(shown)} characters) looks like a URL or a secret, not a path",
                hint="Put the URL in DATABASE_URL (e.g. from a secretKeyRef), or mount the "
                "Secret as a file and set DATABASE_URL_FILE to that file's path",
            ) from None
        raise ConfigurationError(
            f"DATABASE_URL_FILE {shown!r} cannot be read: {exc.strerror}",
            hint="Mount the Secret holding the URL at that path, or unset DATABASE_URL_FILE",
        ) from None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        # The offending byte is part of the secret: say where, never what.
        raise ConfigurationError(
            f"DATABASE_URL_FILE {shown!r} is not UTF-8 text (invalid byte at offset {exc.start})",
            hint="Write the URL as UTF-8, percent-encoding any non-ASCII character of the password",
        ) from None
    if not text:
        raise ConfigurationError(
            f"DATABASE_URL_FILE {shown!r} is empty",
            hint="The file must hold the database URL",
        )
    updated = settings.model_copy(update={"database_url": text})
    updated._url_setting = "DATABASE_URL_FILE"
    return updated


def _looks_like_a_path(value: str) -> bool:
    """A file path, as opposed to a URL or a bare secret put where a path belongs."""
    return "/" in value and "://" not in value and ":/" not in value and "@" not in value


def _field_of(loc: tuple[int | str, ...]) -> str:
    """The field name behind an error location (pydantic reports the alias)."""
    name = str(loc[0]) if loc else "settings"
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if name == field or (isinstance(alias, AliasChoices) and name in alias.choices):
            return field
    return name


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        problems.append(f"{setting_name(_field_of(error['loc']))}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def _hint(exc: ValidationError) -> str:
    fields = {_field_of(e["loc"]) for e in exc.errors()}
    if "environment" in fields:
        return "ENVIRONMENT must be one of development, test, staging, production"
    if fields & {"log_format"}:
        return "DBINIT_LOG_FORMAT must be one of auto, json, console"
    if any(field.endswith("_timeout") or field == "readiness_cache" for field in fields):
        return (
            f"Timeouts are seconds: a finite number greater than 0 and at most {MAX_SECONDS} "
            "(PostgreSQL's longest timeout, about 24.8 days)"
        )
    if fields & {"readiness_path", "liveness_path"}:
        return "Probe paths are URL paths starting with '/', e.g. /readyz"
    return "Fix the value in the environment, .env or [tool.dbinit] in pyproject.toml"
