"""Settings, read with pydantic-settings.

Precedence: command-line flag (keyword arguments) > environment > ``.env`` >
``[tool.dbinit]`` in ``pyproject.toml`` > default. The original names are kept
(``DATABASE_URL``, ``SERVICE_NAME``, ``ENVIRONMENT``, ``DB_FORCE_RECREATE``);
everything else is ``DBINIT_<FIELD>``. ``SERVICE_NAME``, ``ENVIRONMENT`` and
``DB_FORCE_RECREATE`` are often the application's own variables too, so each
has a ``DBINIT_`` name that wins over it (``DBINIT_SERVICE_NAME``,
``DBINIT_ENVIRONMENT``, ``DBINIT_FORCE_RECREATE``); an environment name dbinit
does not know (``ENVIRONMENT=local``) counts as production, with a warning
(:meth:`Settings.notes`), and never fails a start. In ``pyproject.toml`` use
the field names (``service_name = "orders"``, ``lock_timeout = 120``).

The ``.env`` file is ``./.env`` (the working directory's), or the file named by
``DBINIT_ENV_FILE`` (read from the process environment only); ``DBINIT_ENV_FILE=``
(empty) reads none.

:func:`plugin_modules` reads the ``plugins`` setting alone, from the same
sources (the dispatcher needs it before a command's settings are valid).
A plugin's own options are a :class:`PluginSettings` subclass, read from the
same sources with the same precedence: ``DBINIT_<PLUGIN>_<OPTION>`` in the
environment and ``.env``, ``[tool.dbinit.<plugin>]`` in ``pyproject.toml``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

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

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///db.sqlite3"

Environment = Literal["development", "test", "staging", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("development", "test", "staging", "production")
#: The process environment variable naming the ``.env`` file (empty: none).
ENV_FILE_VARIABLE = "DBINIT_ENV_FILE"
CommaList = Annotated[tuple[str, ...], NoDecode]
#: DBINIT_ALLOW_AHEAD's values (see dbinit.verdict).
AllowAhead = Literal["false", "compatible", "true"]
#: The words pydantic reads as booleans, for DBINIT_ALLOW_AHEAD (which also takes "compatible").
_BOOLEAN_WORDS = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), "true"),
    **dict.fromkeys(("0", "false", "f", "no", "n", "off"), "false"),
}

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


def dbinit_sources(
    cls: type[BaseSettings],
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
    file_secret_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """dbinit's sources, in its precedence: keyword arguments > environment > ``.env`` > pyproject.

    The ``settings_customise_sources`` of every settings class of dbinit's (and of plugins').
    """
    return (init_settings, env_settings, dotenv_settings, PyprojectTomlConfigSettingsSource(settings_cls))


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
    service_name: str = Field(
        "", validation_alias=AliasChoices("DBINIT_SERVICE_NAME", "SERVICE_NAME", "service_name")
    )
    #: As given (lower-cased); :attr:`environment` is what dbinit makes of it.
    environment_name: str = Field(
        "development",
        min_length=1,
        validation_alias=AliasChoices("DBINIT_ENVIRONMENT", "ENVIRONMENT", "environment"),
    )
    force_recreate: bool = Field(
        False,
        validation_alias=AliasChoices("DBINIT_FORCE_RECREATE", "DB_FORCE_RECREATE", "force_recreate"),
    )
    allow_destructive: bool = False

    alembic_ini: Path = Path("alembic.ini")
    migrations_dir: Path | None = None
    strategy: Name = "upgrade"
    #: The ``command`` strategy's command line (split like a shell does, never run by one).
    migrate_command: str | None = None
    #: The ``command`` strategy and the after-migrate step: seconds between forwarding
    #: SIGTERM/SIGINT and SIGKILL.
    migrate_command_grace: Seconds = 10.0
    #: A command line ``migrate`` runs after the migration verified, under the lock
    #: (seed data; split like a shell does, never run by one). See dbinit.after_migrate.
    after_migrate: str | None = None
    db_schema: Name | None = Field(
        None, validation_alias=AliasChoices("DBINIT_SCHEMA", "schema", "db_schema")
    )
    version_table: Name = "alembic_version"
    #: The version table's schema when it is not the tables' (airflow's SQL_ALCHEMY_SCHEMA).
    version_table_schema: Name | None = None
    #: The table ``migrate`` records each revision's run in (in the version table's schema).
    history_table: Name = "dbinit_history"
    heads: CommaList = ()
    #: A database ahead of the image (a newer release migrated it): "false" fails it (E004),
    #: "compatible" accepts it only when its history says this image's code still works on it,
    #: "true" accepts any newer revision (dbinit.W004). Booleans are read as "true"/"false".
    allow_ahead: AllowAhead = "false"
    #: Seconds ``migrate`` waits, before a contract revision, for the sessions of older
    #: images that revision breaks to go away (0: look once); then it refuses (exit 7).
    contract_wait: float = Field(0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    silenced_checks: CommaList = ()
    plugins: CommaList = ()

    connect_timeout: Seconds = 5.0
    verify_timeout: Seconds = 10.0
    wait_timeout: Seconds = 60.0
    startup_timeout: Seconds = 30.0
    lock_timeout: Seconds = 300.0
    statement_timeout: Seconds | None = None
    ddl_lock_timeout: Seconds | None = None

    log_format: Literal["auto", "json", "console", "stdlib"] = "auto"
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

    @field_validator("allow_ahead", mode="before")
    @classmethod
    def _ahead_policy(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int) and value in (0, 1):
            return "true" if value else "false"
        if isinstance(value, str):
            text = value.strip().lower()
            return _BOOLEAN_WORDS.get(text, text)
        return value

    @field_validator("environment_name", "log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "strategy", "db_schema", "version_table", "version_table_schema", "history_table", mode="before"
    )
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    settings_customise_sources = classmethod(dbinit_sources)  # type: ignore[assignment]

    # -- derived views -----------------------------------------------------------

    #: Which setting the URL came from, for error messages.
    _url_setting: str = PrivateAttr("DATABASE_URL")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (field names), validated as settings are and with its URL re-parsed.

        Not ``model_copy(update=...)``: that validates nothing and keeps the
        original's parsed :attr:`url`, so a copy given another database URL
        would still name the first database.
        """
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        try:
            updated = type(self).model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc), hint=_hint(exc)) from None
        if "database_url" not in changes:
            updated._url_setting = self._url_setting
        _ = updated.url  # a malformed URL is a configuration error here, not later
        return updated

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
    def environment(self) -> Environment:
        """The environment: one of :data:`ENVIRONMENTS`; a name dbinit does not know is production."""
        for known in ENVIRONMENTS:
            if self.environment_name == known:
                return known
        return "production"

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def uses_default_url(self) -> bool:
        """No ``DATABASE_URL`` anywhere: the embedded SQLite default is used."""
        return "database_url" not in self.model_fields_set and self.database_url == DEFAULT_DATABASE_URL

    def notes(self) -> tuple[str, ...]:
        """What a run should warn about before it starts (logged by each entry point)."""
        found: list[str] = []
        if self.environment_name not in ENVIRONMENTS:
            found.append(
                f"ENVIRONMENT={self.environment_name[:40]!r} is not one of {', '.join(ENVIRONMENTS)}: "
                "treated as production (destructive strategies refused); set DBINIT_ENVIRONMENT "
                "to one of them to say otherwise"
            )
        if self.uses_default_url:
            found.append(
                f"DATABASE_URL is not set (not in the environment, {_env_file_shown()} or "
                f"[tool.dbinit]): using the embedded default {DEFAULT_DATABASE_URL} in "
                f"{Path.cwd()}"
            )
        return tuple(found)

    def log_notes(self, log: FilteringBoundLogger) -> None:
        """Each of :meth:`notes` as a warning on ``log``: what every entry point does before it starts."""
        for note in self.notes():
            log.warning(note)


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
        settings = Settings(**given, _env_file=env_file())  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc), hint=_hint(exc)) from None
    url_file = settings.database_url_file
    if url_file is not None and "database_url" not in given:  # a flag beats the file
        settings = _with_url_from_file(settings, url_file)
    if settings.is_production and settings.database_url == DEFAULT_DATABASE_URL:
        named = (
            "ENVIRONMENT=production"
            if settings.environment_name == "production"
            else f"ENVIRONMENT={settings.environment_name[:40]!r} (counted as production)"
        )
        raise ConfigurationError(
            f"DATABASE_URL is not set, and {named} does not fall back to the embedded SQLite default",
            hint="Set DATABASE_URL (or DATABASE_URL_FILE) from the database Secret; outside "
            "production set DBINIT_ENVIRONMENT=development",
        )
    # Parse now so a malformed URL is a configuration error before anything runs.
    _ = settings.url
    return settings


def env_file() -> Path | None:
    """The ``.env`` file to read: ``DBINIT_ENV_FILE`` (empty: none), else ``./.env``.

    A ``DBINIT_ENV_FILE`` naming a file that does not exist is a configuration
    error (exit 2): it was asked for by name. ``./.env`` is read only if present.
    """
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named is None:
        return Path(".env")
    if not named.strip():
        return None
    path = Path(named.strip())
    if not path.is_file():
        raise ConfigurationError(
            f"{ENV_FILE_VARIABLE}={named.strip()[:200]!r} does not name a readable file",
            hint=f"Point {ENV_FILE_VARIABLE} at the project's .env file (e.g. ../.env), or set it "
            "empty to read none",
        )
    return path


def _env_file_shown() -> str:
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named is None:
        return "./.env"
    if not named.strip():
        return f"no .env ({ENV_FILE_VARIABLE} is empty)"
    return f"{ENV_FILE_VARIABLE}={named.strip()}"


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
    updated = settings.model_copy(update={"database_url": text})  # not yet parsed: url not cached
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


def _named(loc: tuple[int | str, ...]) -> str:
    """The setting as the user spelled it: the first of its names set in the environment."""
    field = _field_of(loc)
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        present = {name.upper() for name in os.environ}
        for choice in info.validation_alias.choices:
            if isinstance(choice, str) and choice.isupper() and choice in present:
                return choice
    return setting_name(field)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        problems.append(f"{_named(error['loc'])}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def _hint(exc: ValidationError) -> str:
    fields = {_field_of(e["loc"]) for e in exc.errors()}
    if fields & {"log_format"}:
        return "DBINIT_LOG_FORMAT must be one of auto, json, console, stdlib"
    if fields & {"log_level"}:
        return "DBINIT_LOG_LEVEL must be one of debug, info, warning, error"
    if any(field.endswith("_timeout") or field == "readiness_cache" for field in fields):
        return (
            f"Timeouts are seconds: a finite number greater than 0 and at most {MAX_SECONDS} "
            "(PostgreSQL's longest timeout, about 24.8 days)"
        )
    if fields & {"readiness_path", "liveness_path"}:
        return "Probe paths are URL paths starting with '/', e.g. /readyz"
    return "Fix the value in the environment, .env or [tool.dbinit] in pyproject.toml"


# -- the plugins setting alone, and plugins' own options ----------------------------------------


class _PluginsSetting(BaseSettings):
    """Only ``plugins``, read from the same sources as :class:`Settings`."""

    model_config = SettingsConfigDict(
        env_prefix="DBINIT_",
        env_file=".env",
        extra="ignore",
        pyproject_toml_table_header=("tool", "dbinit"),
        frozen=True,
    )

    plugins: CommaList = ()

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return Settings._split_commas(value)

    settings_customise_sources = classmethod(dbinit_sources)  # type: ignore[assignment]


def plugin_modules() -> tuple[str, ...]:
    """The ``plugins`` setting (``DBINIT_PLUGINS``, ``.env``, ``[tool.dbinit]``), read alone.

    What the dispatcher builds the process's registry from, before any
    command runs: the other settings may be invalid (the command reports
    them). Raises :class:`ConfigurationError` when ``plugins`` itself cannot
    be read (or ``DBINIT_ENV_FILE`` names no file).
    """
    try:
        return _PluginsSetting(_env_file=env_file()).plugins  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors(include_input=False, include_url=False))
        raise ConfigurationError(
            f"invalid setting DBINIT_PLUGINS: {problems}",
            hint="plugins is a comma-separated list of modules (a list of strings in [tool.dbinit])",
        ) from None


def _env_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def plugin_config(name: str, **extra: Any) -> SettingsConfigDict:
    """The ``model_config`` of a plugin's :class:`PluginSettings`: options of plugin ``name``.

    ``DBINIT_<NAME>_<OPTION>`` in the environment and ``.env`` (``name``
    upper-cased, other characters than letters and digits as ``_``), and
    ``[tool.dbinit.<name>]`` in ``pyproject.toml``. ``extra`` adds to (or
    overrides) the configuration, e.g. ``case_sensitive=True``.
    """
    return SettingsConfigDict(
        env_prefix=f"DBINIT_{_env_name(name)}_",
        env_file=".env",
        extra="ignore",
        pyproject_toml_table_header=("tool", "dbinit", name),
        frozen=True,
        **extra,  # type: ignore[typeddict-item]
    )


P = TypeVar("P", bound="PluginSettings")


class PluginSettings(BaseSettings):
    """The base of a plugin's options, read like dbinit's own settings.

    ::

        from dbinit.settings import PluginSettings, plugin_config

        class MetricsSettings(PluginSettings):
            model_config = plugin_config("metrics")
            path: Path = Path("metrics.prom")
            timeout: float = 1.0

        @hookimpl
        def dbinit_verify_finished(report, settings):
            options = MetricsSettings.load()   # DBINIT_METRICS_PATH, [tool.dbinit.metrics] path

    Precedence as for :class:`Settings`: keyword arguments of :meth:`load` >
    environment > ``.env`` (``./.env`` or ``DBINIT_ENV_FILE``) >
    ``[tool.dbinit.<name>]`` > default. An invalid value is a
    :class:`ConfigurationError` (exit 2) naming the variable, never echoing
    the value.
    """

    model_config: ClassVar[SettingsConfigDict] = plugin_config("plugin")

    settings_customise_sources = classmethod(dbinit_sources)  # type: ignore[assignment]

    @classmethod
    def load(cls: type[P], **overrides: Any) -> P:
        """Read the options; ``overrides`` (None: not given) win over every source."""
        given = {key: value for key, value in overrides.items() if value is not None}
        try:
            return cls(**given, _env_file=env_file())  # type: ignore[call-arg]
        except ValidationError as exc:
            problems = [
                f"{cls.option_name(e['loc'])}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            ]
            header = cls.model_config.get("pyproject_toml_table_header", ())
            raise ConfigurationError(
                "invalid setting " + "; ".join(problems),
                hint=f"Fix the value in the environment, .env or [{'.'.join(header)}] in pyproject.toml",
            ) from None

    @classmethod
    def option_name(cls, loc: tuple[int | str, ...]) -> str:
        """How an option is spelled in the environment: ``DBINIT_METRICS_PATH``."""
        field = str(loc[0]) if loc else "settings"
        info = cls.model_fields.get(field)
        if info is not None and isinstance(info.validation_alias, AliasChoices):
            first = info.validation_alias.choices[0]
            if isinstance(first, str):
                return first
        if info is not None and isinstance(info.validation_alias, str):
            return info.validation_alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
