"""``DATABASE_URL`` parsing without SQLAlchemy, and the one translation of libpq parameters.

The verify path must not import SQLAlchemy, so the URL is parsed here with the
standard library. PostgreSQL URLs are libpq connection URIs
(``postgresql://user:password@host:port,host2:port2/dbname?param=value``),
with the SQLAlchemy spellings accepted too (``postgresql+asyncpg://``, the
``?host=h1:p1&host=h2:p2`` multi-host form, ``?ssl=`` for ``sslmode``).

Every query parameter is checked here, when the URL is parsed: an unknown or
malformed one is a :class:`ConfigurationError` (exit 2) naming it, as libpq
refuses an unknown one ("invalid URI query parameter"). :data:`LIBPQ_PARAMETERS`
is the table of what dbinit understands and what each parameter becomes for
asyncpg (``verify``, the migration lock, and Alembic's sessions with the async
template) and for psycopg (Alembic's sessions with the generic sync template);
:data:`UNSUPPORTED_PARAMETERS` is what is refused, and why. The drivers get the
translation through :meth:`DatabaseURL.asyncpg_connect_kwargs` and
:meth:`DatabaseURL.sqlalchemy_connect_params`; SQLAlchemy itself gets a clean
URL (:meth:`DatabaseURL.for_sqlalchemy`: driver, user, password, hosts,
database, nothing else).

Query values are percent-decoded as libpq does: ``+`` is a plus sign, a space
is ``%20``.

A password (the URL's, and ``sslpassword``) never leaves this module in clear
text except through the driver views above, which feed drivers, never output.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote, urlencode

from dbinit.errors import ConfigurationError

if TYPE_CHECKING:
    import ssl

_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_SQLITE_SCHEMES = {"sqlite"}
_URL_HINT = (
    "Set DATABASE_URL to e.g. postgresql+asyncpg://user:password@host:5432/dbname "
    "or sqlite+aiosqlite:///db.sqlite3"
)
_ENCODING_HINT = (
    "Check the host:port part; a password containing '/', '@', ':', '#', '?' or '%' "
    "must be percent-encoded"
)
DEFAULT_PORT = 5432

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: target_session_attrs under which a session may land on a read-only server:
#: ``migrate`` refuses them (it must write).
READ_ONLY_TARGETS = ("read-only", "standby", "prefer-standby")


# -- the table ---------------------------------------------------------------------------


class LibpqParameter(NamedTuple):  # a NamedTuple: ~6x cheaper to define than a dataclass (hot path)
    """A libpq connection parameter dbinit understands, and where it goes.

    ``asyncpg``: ``"dsn"`` (asyncpg's DSN parser implements it as libpq does),
    ``"timeout"`` (the ``timeout=`` argument of ``asyncpg.connect``),
    ``"server_settings"`` (startup parameters), ``"ssl"`` (an ``ssl.SSLContext``
    built here) or ``"none"`` (nothing to do: asyncpg already behaves so).
    ``psycopg``: ``"conninfo"`` (passed to libpq as written) or ``"none"``.
    """

    name: str
    asyncpg: str
    psycopg: str
    meaning: str
    values: tuple[str, ...] = ()  # the accepted values; empty: any (see ``check``)
    check: Callable[[str], str | None] | None = None  # an error message, or None
    secret: bool = False  # redacted like the password
    file: bool = False  # names a file (must exist when TLS is in use)


def _integer_seconds(value: str) -> str | None:
    return None if value.isdigit() else "is not a whole number of seconds (0: no limit)"


def _options_error(value: str) -> str | None:
    try:
        options_server_settings(value)
    except ValueError as exc:
        return str(exc)
    return None


def _any_text(value: str) -> str | None:
    return None


_TABLE = (
    LibpqParameter(
        "sslmode", "dsn", "conninfo", "TLS: disable, allow, prefer (the default), require, "
        "verify-ca, verify-full; also spelled ?ssl= (SQLAlchemy's asyncpg form)", SSLMODES,
    ),
    LibpqParameter("sslrootcert", "dsn", "conninfo", "CA certificate file; `system`: the system's "
                   "trusted CAs (with sslmode=verify-full)", file=True),
    LibpqParameter("sslcert", "dsn", "conninfo", "client certificate file", file=True),
    LibpqParameter("sslkey", "dsn", "conninfo", "client key file", file=True),
    LibpqParameter("sslpassword", "dsn", "conninfo", "password of the client key", secret=True),
    LibpqParameter("sslcrl", "dsn", "conninfo", "certificate revocation list file", file=True),
    LibpqParameter("ssl_min_protocol_version", "dsn", "conninfo", "lowest TLS version", TLS_VERSIONS),
    LibpqParameter("ssl_max_protocol_version", "dsn", "conninfo", "highest TLS version", TLS_VERSIONS),
    LibpqParameter("sslnegotiation", "dsn", "conninfo", "postgres (default) or direct TLS "
                   "(PostgreSQL 17+, needs sslmode=require or stronger)", ("postgres", "direct")),
    LibpqParameter(
        "target_session_attrs", "dsn", "conninfo", "which of several hosts to use; verify's "
        "read-only session counts as read-write when the server is a primary; migrate refuses "
        "read-only, standby and prefer-standby", TARGET_SESSION_ATTRS,
    ),
    LibpqParameter("connect_timeout", "timeout", "conninfo", "seconds; with DBINIT_CONNECT_TIMEOUT "
                   "the smaller wins (asyncpg: for all hosts together; libpq: per host)",
                   check=_integer_seconds),
    LibpqParameter("application_name", "server_settings", "conninfo", "used where dbinit does not "
                   "name the session itself (it names verify, lock and migration sessions: a "
                   "migration job finds and cancels its own statements by those names)",
                   check=_any_text),
    LibpqParameter("fallback_application_name", "none", "conninfo", "as libpq: only without any "
                   "other application_name (dbinit always names its sessions)", check=_any_text),
    LibpqParameter("options", "server_settings", "conninfo", "server settings, `-c name=value` "
                   "(or `--name=value`) separated by spaces (%20); dbinit's own session settings win",
                   check=_options_error),
    LibpqParameter("client_encoding", "none", "conninfo", "only UTF8 (asyncpg always uses it)",
                   ("UTF8", "utf8", "UTF-8", "utf-8")),
    LibpqParameter("passfile", "dsn", "conninfo", "a .pgpass file for the password", check=_any_text),
    LibpqParameter("krbsrvname", "dsn", "conninfo", "Kerberos service name", check=_any_text),
    LibpqParameter("gsslib", "dsn", "conninfo", "GSS library", ("gssapi", "sspi")),
    LibpqParameter("channel_binding", "none", "conninfo", "disable or prefer (asyncpg never binds; "
                   "`require` is refused)", ("disable", "prefer")),
    LibpqParameter("gssencmode", "none", "conninfo", "disable or prefer (asyncpg never uses GSS "
                   "encryption; `require` is refused)", ("disable", "prefer")),
)

#: The libpq parameters dbinit understands (besides host, port, dbname, user and
#: password, which are parsed into the URL itself).
LIBPQ_PARAMETERS: dict[str, LibpqParameter] = {p.name: p for p in _TABLE}

#: libpq parameters dbinit refuses (exit 2), and why.
UNSUPPORTED_PARAMETERS: dict[str, str] = {
    "hostaddr": "put the IP address in the host part instead",
    "service": "dbinit needs the host and the database in the URL itself",
    "load_balance_hosts": "asyncpg cannot; list the hosts in the order to try them",
    "keepalives": "dbinit sets TCP keepalives on its own sessions (tcp_keepalives_*); remove it",
    "keepalives_idle": "dbinit sets TCP keepalives on its own sessions (tcp_keepalives_*); remove it",
    "keepalives_interval": "dbinit sets TCP keepalives on its own sessions (tcp_keepalives_*); "
    "remove it",
    "keepalives_count": "dbinit sets TCP keepalives on its own sessions (tcp_keepalives_*); remove it",
    "tcp_user_timeout": "asyncpg cannot set it; remove it",
    "require_auth": "asyncpg cannot enforce it; remove it",
    "sslcertmode": "asyncpg cannot; remove it",
    "sslcrldir": "asyncpg cannot; use sslcrl (a file)",
    "sslsni": "asyncpg always sends SNI; remove it",
    "sslkeylogfile": "use the SSLKEYLOGFILE environment variable",
    "sslcompression": "TLS compression is obsolete; remove it",
    "requiressl": "obsolete: use sslmode=require",
    "requirepeer": "asyncpg cannot; remove it",
    "gssdelegation": "asyncpg cannot; remove it",
    "replication": "dbinit does not open replication connections",
    "min_protocol_version": "asyncpg speaks protocol 3.0; remove it",
    "max_protocol_version": "asyncpg speaks protocol 3.0; remove it",
    "oauth_issuer": "asyncpg cannot log in with OAuth; use a password",
    "oauth_client_id": "asyncpg cannot log in with OAuth; use a password",
    "oauth_client_secret": "asyncpg cannot log in with OAuth; use a password",
    "oauth_scope": "asyncpg cannot log in with OAuth; use a password",
    "scram_client_key": "asyncpg cannot; use a password",
    "scram_server_key": "asyncpg cannot; use a password",
}

#: Aliases accepted for SQLAlchemy-style URLs.
_ALIASES = {"ssl": "sslmode"}
# patterns, compiled (and cached by re) only when a URL needs them
_NAME_SHAPE = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_VALUE_SHAPE = r"[A-Za-z0-9_.+-]{1,30}"
_SETTING_NAME = r"[A-Za-z_][A-Za-z0-9_.$]*"


def options_server_settings(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value`` switches) as server settings.

    Split as PostgreSQL does (whitespace, a backslash escapes the next
    character); only ``-c name=value``, ``-cname=value`` and ``--name=value``
    are accepted. Raises ``ValueError`` with a password-free message.
    """
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    settings: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c":
            index += 1
            if index == len(words):
                raise ValueError("has -c without name=value")
            assignment = words[index]
        elif word.startswith(("-c", "--")):
            assignment = word[2:]
        else:
            raise ValueError("accepts only -c name=value switches (separated by %20)")
        name, sep, value = assignment.partition("=")
        name = name.replace("-", "_")
        if not sep or not re.fullmatch(_SETTING_NAME, name):
            raise ValueError("needs -c name=value (a space in it is %20, not +)")
        settings[name] = value
        index += 1
    return settings


# -- the URL -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. ``str()`` and ``repr()`` never show a password.

    PostgreSQL: ``host``/``port`` are the first (usually the only) host; a
    libpq multi-host URL has the others in ``more_hosts``. A host starting
    with ``/`` is a unix-socket directory. ``query`` holds the validated libpq
    parameters (see :data:`LIBPQ_PARAMETERS`), identity ones folded out.
    """

    backend: str  # "postgresql" or "sqlite"
    driver: str | None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str = ""
    query: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    more_hosts: tuple[tuple[str, int | None], ...] = ()

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
        return _PostgresParser(setting).parse(driver or None, rest)

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
            query=tuple(_split_query(query)) if query else (),
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

    @property
    def hosts(self) -> tuple[tuple[str, int | None], ...]:
        """Every (host, port) to try, in order (port None: the default)."""
        if self.host is None:
            return ()
        return ((self.host, self.port), *self.more_hosts)

    @property
    def params(self) -> dict[str, str]:
        """The libpq parameters (validated, identity ones folded out)."""
        return dict(self.query)

    @property
    def target_session_attrs(self) -> str:
        return self.params.get("target_session_attrs", "any")

    @property
    def display_name(self) -> str:
        """Short name for logs: host(s):port/database, or the SQLite file's absolute path."""
        if self.is_sqlite:
            if self.database in ("", ":memory:") or self.database.startswith("file:"):
                return self.database or ":memory:"
            return os.path.abspath(self.database)
        hosts = ",".join(
            f"{_bracket(host)}:{port or DEFAULT_PORT}" for host, port in self.hosts
        ) or "localhost:5432"
        return f"{hosts}/{self.database}"

    def redacted(self) -> str:
        """The URL with the passwords replaced by ``***``: safe for output."""
        scheme = self.backend + (f"+{self.driver}" if self.driver else "")
        if self.is_sqlite:
            location = "" if self.database == ":memory:" else "/" + self.database
            return f"{scheme}://{location}" + _encode_query(self.query)
        query = [(k, "***" if _is_secret(k) else v) for k, v in self.query]
        return self._libpq_uri(scheme, "***" if self.password is not None else None, query)

    def __str__(self) -> str:
        return self.redacted()

    def require_writable(self, what: str) -> None:
        """Refuse a ``target_session_attrs`` that may pick a read-only server (for ``migrate``)."""
        if self.target_session_attrs in READ_ONLY_TARGETS:
            raise ConfigurationError(
                f"{what} needs a writable server, but DATABASE_URL has "
                f"target_session_attrs={self.target_session_attrs}",
                hint="Give the migration job a URL with target_session_attrs=read-write "
                "(or primary, or none)",
            )

    # -- driver views (they contain passwords: never print them) ------------------

    def asyncpg_dsn(self) -> str:
        """A libpq-style DSN asyncpg reads as dbinit does (contains the password).

        Holds the hosts, user, password, database and the parameters asyncpg's
        DSN parser implements; the rest of the translation (timeout, server
        settings) is :meth:`asyncpg_connect_kwargs`'.
        """
        assert not self.is_sqlite
        secret = quote(self.password, safe="") if self.password is not None else None
        return self._libpq_uri("postgresql", secret, self._asyncpg_dsn_params(read_only_session=False))

    def asyncpg_connect_kwargs(
        self,
        *,
        timeout: float,
        server_settings: Mapping[str, str] | None = None,
        read_only_session: bool = False,
    ) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect()``: the whole translation for asyncpg.

        ``timeout`` is dbinit's connect timeout (the URL's ``connect_timeout``
        lowers it); ``server_settings`` are dbinit's own session settings, which
        win over the URL's (``application_name``, ``options``).
        ``read_only_session``: the caller makes its session read-only
        (``default_transaction_read_only``), so ``target_session_attrs=read-write``
        asks for a primary instead (asyncpg would refuse every host: the
        session's own default makes it read-only).
        """
        assert not self.is_sqlite
        self._check_files()
        kwargs: dict[str, Any] = {
            "dsn": self._libpq_uri(
                "postgresql",
                quote(self.password, safe="") if self.password is not None else None,
                self._asyncpg_dsn_params(read_only_session=read_only_session),
            ),
            "timeout": self._connect_timeout(timeout),
            "server_settings": {**self._asyncpg_server_settings(), **(server_settings or {})},
        }
        context = self._system_ssl_context()
        if context is not None:
            kwargs["ssl"] = context
        return kwargs

    def for_sqlalchemy(self, *, async_driver: bool, sync_driver: str = "psycopg") -> str:
        """The clean URL for SQLAlchemy/Alembic, with a driver matching ``env.py``.

        Driver, user, password, host(s), port(s) and database only: the libpq
        parameters reach the driver through :meth:`sqlalchemy_connect_params`
        (dbinit installs it as a connect event), since SQLAlchemy's asyncpg
        dialect would pass them to ``asyncpg.connect()`` as unknown keywords.
        Several hosts, or a unix socket, use SQLAlchemy's documented
        ``?host=h1,h2&port=p1,p2`` form (it needs no brackets around IPv6).

        An async ``env.py`` (``async_engine_from_config``) gets asyncpg or
        aiosqlite; a sync one gets ``sync_driver`` (psycopg; psycopg2 under
        SQLAlchemy 1.4, which has no psycopg 3 dialect) or pysqlite. A driver
        named explicitly in ``DATABASE_URL`` other than these is kept.
        """
        if self.is_sqlite:
            driver = "aiosqlite" if async_driver else "pysqlite"
            location = "" if self.database == ":memory:" else "/" + self.database
            return f"sqlite+{driver}://{location}" + _encode_query(self.query)
        driver = self.sqlalchemy_driver(async_driver=async_driver, sync_driver=sync_driver)
        auth = self._auth(quote(self.password, safe="") if self.password is not None else None)
        database = quote(self.database, safe="")
        hosts = self.hosts
        if len(hosts) == 1 and not hosts[0][0].startswith("/"):
            host, port = hosts[0]
            netloc = _bracket(host) + (f":{port}" if port is not None else "")
            return f"postgresql+{driver}://{auth}{netloc}/{database}"
        query = [("host", ",".join(host for host, _ in hosts))]
        if any(port is not None for _, port in hosts) or len(hosts) > 1:
            # asyncpg's dialect needs every port of a multi-host URL
            query.append(("port", ",".join(str(port or DEFAULT_PORT) for _, port in hosts)))
        return f"postgresql+{driver}://{auth}/{database}" + _encode_query(query)

    def sqlalchemy_driver(self, *, async_driver: bool, sync_driver: str = "psycopg") -> str:
        """The driver :meth:`for_sqlalchemy` names (PostgreSQL)."""
        if async_driver:
            return "asyncpg"
        if self.driver not in (None, "asyncpg"):
            return self.driver
        return sync_driver

    def sqlalchemy_connect_params(
        self, driver: str, *, timeout: float, application_name: str | None = None
    ) -> dict[str, Any]:
        """What a connect event adds to the driver's arguments for :meth:`for_sqlalchemy`'s URL.

        asyncpg: ``dsn`` (only the parameters its DSN parser implements: the
        hosts, user and database come from SQLAlchemy), ``timeout``,
        ``server_settings``; psycopg/psycopg2 (libpq): the conninfo keywords.
        ``application_name`` (dbinit's tag for migration sessions) wins over the URL's.
        """
        assert not self.is_sqlite
        if driver == "asyncpg":
            kwargs = self.asyncpg_connect_kwargs(
                timeout=timeout,
                server_settings={"application_name": application_name} if application_name else None,
            )
            kwargs["dsn"] = "postgresql://" + _encode_query(
                self._asyncpg_dsn_params(read_only_session=False)
            )
            return kwargs
        if driver in ("psycopg", "psycopg2"):
            self._check_files()
            conninfo = {k: v for k, v in self.query if LIBPQ_PARAMETERS[k].psycopg == "conninfo"}
            # libpq takes whole seconds (at least 2): round up
            conninfo["connect_timeout"] = str(max(2, int(-(-self._connect_timeout(timeout) // 1))))
            if application_name:
                conninfo["application_name"] = application_name
            return conninfo
        if self.query or self.more_hosts:
            names = [k for k, _ in self.query] or ["several hosts"]
            raise ConfigurationError(
                f"DATABASE_URL names driver {driver}, which cannot take {', '.join(names)}",
                hint="Use postgresql:// or postgresql+asyncpg:// (dbinit picks asyncpg or psycopg)",
            )
        return {}

    # -- rendering helpers ---------------------------------------------------------

    def _auth(self, password: str | None) -> str:
        if self.username is None:
            return f":{password}@" if password is not None else ""
        auth = quote(self.username, safe="")
        if password is not None:
            auth += ":" + password
        return auth + "@"

    def _libpq_uri(self, scheme: str, password: str | None, query: list[tuple[str, str]]) -> str:
        """``scheme://user:password@hosts/database?query`` as libpq and asyncpg read it."""
        hosts = self.hosts
        host_query: list[tuple[str, str]] = []
        if any(host.startswith("/") for host, _ in hosts):
            # a unix-socket directory cannot be written in the netloc: the query form
            netloc = ""
            host_query.append(("host", ",".join(_bracket(host) for host, _ in hosts)))
            if any(port is not None for _, port in hosts):
                host_query.append(("port", ",".join(str(port or DEFAULT_PORT) for _, port in hosts)))
        else:
            netloc = ",".join(
                _bracket(host) + (f":{port}" if port is not None else "") for host, port in hosts
            )
        base = f"{scheme}://{self._auth(password)}{netloc}/{quote(self.database, safe='')}"
        return base + _encode_query([*host_query, *query])

    def _asyncpg_dsn_params(self, *, read_only_session: bool) -> list[tuple[str, str]]:
        system = self.params.get("sslrootcert") == "system"
        params = []
        for key, value in self.query:
            if LIBPQ_PARAMETERS[key].asyncpg != "dsn":
                continue
            if system and key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword",
                                  "sslcrl", "ssl_min_protocol_version", "ssl_max_protocol_version"):
                continue  # all in the SSLContext
            if key == "target_session_attrs" and value == "read-write" and read_only_session:
                value = "primary"
            params.append((key, value))
        return params

    def _asyncpg_server_settings(self) -> dict[str, str]:
        params = self.params
        settings = options_server_settings(params.get("options", ""))
        if "application_name" in params:
            settings["application_name"] = params["application_name"]
        return settings

    def _connect_timeout(self, timeout: float) -> float:
        """dbinit's connect timeout, lowered by the URL's ``connect_timeout`` (libpq: at least 2 s)."""
        given = int(self.params.get("connect_timeout", "0"))
        return min(timeout, max(2, given)) if given > 0 else timeout

    def _check_files(self) -> None:
        params = self.params
        if params.get("sslmode") == "disable":
            return
        for key, value in self.query:
            if LIBPQ_PARAMETERS[key].file and value != "system" and not Path(value).is_file():
                raise ConfigurationError(
                    f"DATABASE_URL has {key}={value}, which is not a readable file",
                    hint="Mount the certificate (e.g. from a Secret) at that path, or fix the path",
                )

    def _system_ssl_context(self) -> ssl.SSLContext | None:
        """``sslrootcert=system`` (libpq 16+): an SSLContext with the system's CAs, for asyncpg.

        (asyncpg's DSN parser would open a file named ``system``.)
        """
        params = self.params
        if params.get("sslrootcert") != "system":
            return None
        import ssl

        context = ssl.create_default_context()  # CERT_REQUIRED, check_hostname: verify-full
        try:
            if "sslcert" in params:
                context.load_cert_chain(
                    params["sslcert"], params.get("sslkey"), password=params.get("sslpassword") or None
                )
            if "sslcrl" in params:
                context.load_verify_locations(cafile=params["sslcrl"])
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        except OSError as exc:  # ssl.SSLError included: a wrong key password, not PEM...
            raise ConfigurationError(
                f"DATABASE_URL's client certificate or CRL cannot be loaded: {exc.strerror or exc}",
                hint="Check sslcert, sslkey, sslpassword and sslcrl",
            ) from None
        context.minimum_version = ssl.TLSVersion[
            params.get("ssl_min_protocol_version", "TLSv1.2").replace(".", "_")
        ]
        if "ssl_max_protocol_version" in params:
            context.maximum_version = ssl.TLSVersion[params["ssl_max_protocol_version"].replace(".", "_")]
        context.set_alpn_protocols(["postgresql"])
        return context


# -- parsing PostgreSQL URLs ---------------------------------------------------------------


class _PostgresParser:
    """One parse of a PostgreSQL URL; its errors name ``setting`` and never echo a password."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self.userinfo = ""

    def error(self, message: str, hint: str = _URL_HINT) -> ConfigurationError:
        return ConfigurationError(f"{self.setting} {message}", hint=hint)

    def parse(self, driver: str | None, rest: str) -> DatabaseURL:
        if driver not in (None, "asyncpg", "psycopg", "psycopg2", "pg8000"):
            raise self.error(
                f"names an unsupported PostgreSQL driver {driver!r}",
                hint="Use postgresql:// or postgresql+asyncpg://",
            )
        rest, hash_sign, _ = rest.partition("#")
        # the netloc ends at the first '/' or '?' (as urlsplit: an unencoded '/' in a
        # password cuts it, and is reported without echoing either part)
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        netloc, remainder = rest[:cut], rest[cut:]
        path, _, query_text = remainder.partition("?")
        self.userinfo, _, hostport = netloc.rpartition("@")
        if hash_sign:
            raise self.error(
                "contains '#' (a URL fragment)", hint="A '#' in a password must be written %23"
            )
        username = password = None
        if self.userinfo:
            user, sep, pw = self.userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if sep else None
        hosts = self.hostlist(hostport) if hostport else []
        database = unquote(path[1:]) if path.startswith("/") else ""
        if "/" in database:
            raise self.error("has a malformed database name (contains '/')")
        query = self.query(query_text, password) if query_text else []

        params: dict[str, str] = {}
        query_hosts: list[str] = []
        for key, value in query:
            if key == "host":
                query_hosts.append(value)
            elif key in params:
                raise self.error(f"gives the parameter {key} twice", hint="Keep one of them")
            else:
                params[key] = value
        # identity parameters in the query (libpq style)
        for key, current in (("user", username), ("password", password)):
            if key in params:
                value = params.pop(key)
                if current is not None and value != current:
                    raise self.error(
                        f"gives the {key} both before the host and as ?{key}=", hint="Keep one of them"
                    )
                if key == "user":
                    username = value or None
                else:
                    password = value
        for key in ("dbname", "database"):
            if key in params:
                value = params.pop(key)
                if database and value != database:
                    raise self.error(
                        f"names the database both in the path and as ?{key}=", hint="Keep one of them"
                    )
                database = value
        if query_hosts or "port" in params:
            hosts = self.query_hosts(hosts, query_hosts, params.pop("port", None))
        if not hosts:
            raise self.error("has no host")
        if not database:
            raise self.error(
                "names no database",
                hint="Add the database name after the host, e.g. postgresql://host:5432/orders",
            )
        checked = self.parameters(params, password)
        (host, port), *more = hosts
        return DatabaseURL(
            backend="postgresql",
            driver=driver,
            username=username,
            password=password,
            host=host,
            port=port,
            database=database,
            query=tuple(checked),
            more_hosts=tuple(more),
        )

    # -- hosts -----------------------------------------------------------------

    def hostlist(self, text: str) -> list[tuple[str, int | None]]:
        """``h1:p1,[v6]:p2,...`` (libpq multi-host) as (host, port) pairs."""
        pieces = text.split(",")
        hosts = []
        for number, piece in enumerate(pieces, 1):
            where = f"host {number} of {len(pieces)}" if len(pieces) > 1 else "host"
            if not piece:
                raise self.error(
                    f"has an empty {where} (two commas, or a comma at an end)",
                    hint="List the hosts as host1:port1,host2:port2",
                )
            if piece.startswith("["):
                address, bracket, after = piece[1:].partition("]")
                if not bracket:
                    raise self.error(
                        f"has an unclosed '[' in the {where} (an IPv6 address is written [::1]:5432)",
                        hint=_ENCODING_HINT,
                    )
                if after and not after.startswith(":"):
                    raise self.error(f"has text after the IPv6 address in the {where}", hint=_ENCODING_HINT)
                host, port_text = address, after[1:]
            elif "]" in piece:
                raise self.error(f"has a ']' without '[' in the {where}", hint=_ENCODING_HINT)
            else:
                host, _, port_text = piece.partition(":")
            host = unquote(host)
            if not host:
                raise self.error(f"has a port but no name in the {where}", hint=_ENCODING_HINT)
            hosts.append((host, self.port(port_text, where) if port_text else None))
        return hosts

    def query_host(self, piece: str) -> tuple[str, int | None]:
        """One host of ``?host=h1,h2``: a unix-socket directory, a bare IPv6 address, or host[:port]."""
        if not piece:
            raise self.error("has an empty host in ?host=", hint="List the hosts as host=h1,h2")
        if piece.startswith("/") or (piece.count(":") > 1 and not piece.startswith("[")):
            return piece, None
        return self.hostlist(piece)[0]

    def port(self, text: str, where: str) -> int:
        if not text.isdigit() or not 0 < int(text) < 65536:
            suffix = "" if where == "host" else f" of {where}"
            raise self.error(
                f"has an invalid port{suffix} (not a number from 1 to 65535)", hint=_ENCODING_HINT
            )
        return int(text)

    def query_hosts(
        self, netloc_hosts: list[tuple[str, int | None]], values: list[str], port_text: str | None
    ) -> list[tuple[str, int | None]]:
        """Hosts and ports given as ``?host=`` / ``?port=`` (libpq's and SQLAlchemy's forms)."""
        hosts = netloc_hosts
        if values:
            if netloc_hosts:
                raise self.error(
                    "gives hosts both before the path and as ?host=", hint="Keep one of them"
                )
            if len(values) > 1:  # SQLAlchemy: ?host=h1:p1&host=h2:p2
                if port_text is not None:
                    raise self.error(
                        "mixes ?host=h1:p1&host=h2:p2 with ?port=",
                        hint="Use host=h1:p1&host=h2:p2, or host=h1,h2&port=p1,p2",
                    )
                hosts = [pair for value in values for pair in self.hostlist(value)]
            else:
                hosts = [self.query_host(piece) for piece in values[0].split(",")]
        if port_text is not None:
            if any(port is not None for _, port in hosts):
                raise self.error("gives ports both with the hosts and as ?port=", hint="Keep one of them")
            ports = port_text.split(",")
            if len(ports) == 1:
                ports = ports * max(len(hosts), 1)
            if len(ports) != len(hosts):
                raise self.error(
                    f"has {len(hosts)} host(s) but {len(ports)} ports in ?port=",
                    hint="Give one port for every host, or one for all",
                )
            hosts = [
                (host, self.port(text, f"host {i} of {len(hosts)}" if len(hosts) > 1 else "host"))
                for i, ((host, _), text) in enumerate(zip(hosts, ports, strict=True), 1)
            ]
        return hosts

    # -- query parameters ---------------------------------------------------------

    def query(self, text: str, password: str | None) -> list[tuple[str, str]]:
        pairs = []
        for item in text.split("&"):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = unquote(key)
            if not sep:
                raise self.error(
                    f"has a query parameter without a value: {self.name(key, password)}",
                    hint="Write parameters as ?name=value&name2=value2; a '&' in a password "
                    "must be written %26",
                )
            pairs.append((key, unquote(value)))
        return pairs

    def parameters(self, params: dict[str, str], password: str | None) -> list[tuple[str, str]]:
        """Validate every libpq parameter against the table; aliases resolved."""
        checked: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, value in params.items():
            name = _ALIASES.get(key, key)
            if name in seen:
                aliases = " and ".join(f"?{k}=" for k, n in _ALIASES.items() if n == name)
                raise self.error(f"gives {name} twice (as {aliases} and ?{name}=)", hint="Keep one of them")
            seen.add(name)
            spec = LIBPQ_PARAMETERS.get(name)
            if spec is None:
                if name in UNSUPPORTED_PARAMETERS:
                    raise self.error(
                        f"has the parameter {name}, which dbinit does not support",
                        hint=_sentence(UNSUPPORTED_PARAMETERS[name]),
                    )
                raise self.error(
                    f"has an unknown parameter {self.name(key, password)} "
                    "(libpq refuses it too: invalid URI query parameter)",
                    hint="Supported: " + ", ".join(sorted(LIBPQ_PARAMETERS)) + ". A server "
                    "setting goes in options=-c%20name%3Dvalue",
                )
            problem = None
            if spec.values and value not in spec.values:
                problem = "is not one of " + ", ".join(spec.values)
                if name in ("channel_binding", "gssencmode") and value == "require":
                    problem = "require cannot be honoured by asyncpg (use prefer, or remove it)"
            elif spec.check is not None:
                problem = spec.check(value)
            elif not spec.values and not value:
                problem = "is empty"
            if problem is not None:
                raise self.error(
                    f"has an invalid {key} {self.value(value, password)}: {problem}",
                    hint=f"{name}: {spec.meaning}",
                )
            checked.append((name, value))
        self.combinations(dict(checked))
        return checked

    def combinations(self, params: dict[str, str]) -> None:
        mode = params.get("sslmode")
        if params.get("sslrootcert") == "system" and mode not in (None, "verify-full"):
            raise self.error(
                f"has sslrootcert=system with sslmode={mode}; the system's CAs need verify-full",
                hint="Use sslmode=verify-full (libpq refuses a weaker mode with sslrootcert=system)",
            )
        if params.get("sslnegotiation") == "direct" and SSLMODES.index(mode or "prefer") < 3:
            raise self.error(
                "has sslnegotiation=direct without sslmode=require (or stronger)",
                hint="Direct TLS needs sslmode=require, verify-ca or verify-full",
            )

    def name(self, key: str, password: str | None) -> str:
        """A parameter name for a message: shown if it looks like one (never a password piece)."""
        if re.fullmatch(_NAME_SHAPE, key) and not self.in_secret(key, password):
            return repr(key)
        return f"<a name of {len(key)} characters>"

    def value(self, value: str, password: str | None) -> str:
        """A value for a message: shown if short and plain (never a password piece)."""
        if not value or (re.fullmatch(_VALUE_SHAPE, value) and not self.in_secret(value, password)):
            return repr(value)
        return f"<{len(value)} characters>"

    def in_secret(self, text: str, password: str | None) -> bool:
        """Could ``text`` be (a piece of) the password, as written or decoded?"""
        written = self.userinfo.partition(":")[2]
        return bool(text) and (text in written or (password is not None and text in password))


def _split_query(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _encode_query(query: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """``?k=v&...`` percent-encoded (``+`` and spaces too), or ``""``."""
    if not query:
        return ""
    return "?" + urlencode(list(query), quote_via=quote, safe="/*,:")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("/") else host


def _is_secret(key: str) -> bool:
    spec = LIBPQ_PARAMETERS.get(key)
    return spec is not None and spec.secret


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _shape(text: str) -> str:
    """Describe a non-URL value without echoing it (it may be a password)."""
    return f"<{len(text)} characters>"
