"""``DATABASE_URL`` parsing without SQLAlchemy.

The verify path must not import SQLAlchemy, so the URL is parsed here with the
standard library. The same URL is later handed to Alembic (with the driver its
``env.py`` needs) by :meth:`DatabaseURL.for_sqlalchemy`.

A password never leaves this module in clear text except through
:meth:`DatabaseURL.asyncpg_dsn` and :meth:`DatabaseURL.for_sqlalchemy`, which
feed drivers, never output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from dbinit.errors import ConfigurationError

_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_SQLITE_SCHEMES = {"sqlite"}
_URL_HINT = (
    "Set DATABASE_URL to e.g. postgresql+asyncpg://user:password@host:5432/dbname "
    "or sqlite+aiosqlite:///db.sqlite3"
)


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. ``str()`` and ``repr()`` never show the password."""

    backend: str  # "postgresql" or "sqlite"
    driver: str | None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str = ""
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, raw: str, *, setting: str = "DATABASE_URL") -> DatabaseURL:
        """Parse ``raw``; raise :class:`ConfigurationError` naming ``setting``."""
        text = raw.strip()
        if "://" not in text:
            raise ConfigurationError(
                f"{setting} is not a URL (no scheme://): {_shape(text)}", hint=_URL_HINT
            )
        scheme, _, rest = text.partition("://")
        backend, _, driver = scheme.lower().partition("+")
        if backend in _SQLITE_SCHEMES:
            return cls._parse_sqlite(driver or None, rest, setting)
        if backend not in _POSTGRES_SCHEMES:
            raise ConfigurationError(
                f"{setting} has an unsupported scheme {scheme!r}; dbinit supports "
                "postgresql (postgresql://, postgresql+asyncpg://) and sqlite",
                hint=_URL_HINT,
            )
        return cls._parse_postgres(driver or None, text, setting)

    @classmethod
    def _parse_sqlite(cls, driver: str | None, rest: str, setting: str) -> DatabaseURL:
        location, _, query = rest.partition("?")
        if location and not location.startswith("/"):
            raise ConfigurationError(
                f"{setting} has a host in a sqlite URL; use three slashes for a relative "
                "path (sqlite:///db.sqlite3) or four for an absolute one (sqlite:////data/db.sqlite3)",
                hint=_URL_HINT,
            )
        path = unquote(location[1:]) if location else ":memory:"
        return cls(
            backend="sqlite",
            driver=driver,
            database=path or ":memory:",
            query=tuple(parse_qsl(query)),
        )

    @classmethod
    def _parse_postgres(cls, driver: str | None, text: str, setting: str) -> DatabaseURL:
        if driver not in (None, "asyncpg", "psycopg", "psycopg2", "pg8000"):
            raise ConfigurationError(
                f"{setting} names an unsupported PostgreSQL driver {driver!r}",
                hint="Use postgresql:// or postgresql+asyncpg://",
            )
        parts = urlsplit(text)
        netloc = parts.netloc
        userinfo, _, hostport = netloc.rpartition("@")
        username = password = None
        if userinfo:
            user, sep, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if sep else None
        host, port = _split_host_port(hostport, setting)
        database = unquote(parts.path.lstrip("/"))
        if "/" in database:
            raise ConfigurationError(
                f"{setting} has a malformed database name (contains '/')", hint=_URL_HINT
            )
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        if not host and not any(k == "host" for k, _ in query):
            raise ConfigurationError(f"{setting} has no host", hint=_URL_HINT)
        # libpq-style parameters in the query: take the database name and the
        # password out of it, so they are used (and redacted) like the others
        for key, value in query:
            if key in ("dbname", "database") and not database:
                database = value
            if key == "password" and password is None:
                password = value
        query = tuple((k, v) for k, v in query if k not in ("dbname", "database", "password"))
        if not database:
            raise ConfigurationError(
                f"{setting} names no database",
                hint="Add the database name after the host, e.g. postgresql://host:5432/orders",
            )
        return cls(
            backend="postgresql",
            driver=driver,
            username=username,
            password=password,
            host=host or None,
            port=port,
            database=database,
            query=query,
        )

    # -- views -----------------------------------------------------------------

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for an in-memory database."""
        if not self.is_sqlite or self.database == ":memory:":
            return None
        return Path(self.database)

    def _netloc(self, password: str | None) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if password is not None:
                auth += ":" + password
            auth += "@"
        host = self.host or ""
        if ":" in host and "," not in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        return f"{auth}{host}{port}"

    def _render(self, scheme: str, password: str | None) -> str:
        if self.is_sqlite:
            location = "" if self.database == ":memory:" else "/" + self.database
            base = f"{scheme}://{location}"
        else:
            base = f"{scheme}://{self._netloc(password)}/{quote(self.database, safe='')}"
        if self.query:
            base += "?" + urlencode(self.query)
        return base

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``: safe for output."""
        scheme = self.backend + (f"+{self.driver}" if self.driver else "")
        return self._render(scheme, "***" if self.password is not None else None)

    def asyncpg_dsn(self) -> str:
        """A libpq-style DSN for asyncpg (contains the password: never print it)."""
        assert not self.is_sqlite
        secret = quote(self.password, safe="") if self.password is not None else None
        return self._render("postgresql", secret)

    def for_sqlalchemy(self, *, async_driver: bool) -> str:
        """The URL for SQLAlchemy/Alembic, with a driver matching ``env.py``.

        An async ``env.py`` (``async_engine_from_config``) gets asyncpg or
        aiosqlite; a sync one gets psycopg (PostgreSQL) or pysqlite. A driver
        named explicitly in ``DATABASE_URL`` other than these is kept.
        """
        if self.is_sqlite:
            driver = "aiosqlite" if async_driver else "pysqlite"
        elif async_driver:
            driver = "asyncpg"
        elif self.driver not in (None, "asyncpg"):
            driver = self.driver
        else:
            driver = "psycopg"
        secret = quote(self.password, safe="") if self.password is not None else None
        return self._render(f"{self.backend}+{driver}", secret)

    @property
    def display_name(self) -> str:
        """Short name for logs: host/database or the SQLite path."""
        if self.is_sqlite:
            return self.database
        host = self.host or dict(self.query).get("host") or "localhost"
        return f"{host}:{self.port or 5432}/{self.database}"

    def __str__(self) -> str:
        return self.redacted()


def _split_host_port(hostport: str, setting: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif "," in hostport:
        # several hosts (libpq multi-host): hand them to the driver as they are
        return hostport, None
    else:
        host, _, port_text = hostport.partition(":")
    if not port_text:
        return unquote(host), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"{setting} has an invalid port (not a number from 1 to 65535)",
            hint="Check the host:port part; a password containing '/', '@', ':' or '%' "
            "must be percent-encoded",
        )
    return unquote(host), int(port_text)


def _shape(text: str) -> str:
    """Describe a non-URL value without echoing it (it may be a password)."""
    return f"<{len(text)} characters>"
