"""DATABASE_URL parsing without SQLAlchemy: dbinit.urls.DatabaseURL.

SQLAlchemy's ``make_url`` and asyncpg's DSN parser are the oracles: what dbinit
hands to a driver must mean to that driver what the user wrote.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy.engine import make_url

from dbinit.errors import ConfigurationError, ExitCode
from dbinit.urls import DatabaseURL
from tests.plugins.databases import SECRET

#: Needs percent-encoding in a URL: '@', '%', ':' and '/'.
PASSWORD = f"p@ss%w:rd/1{SECRET}"
ENCODED = quote(PASSWORD, safe="")


def asyncpg_parse(dsn: str) -> tuple[list[object], object]:
    """asyncpg's own reading of a DSN: ([addresses], params with user/password/database)."""
    from asyncpg import connect_utils

    parse = connect_utils._parse_connect_dsn_and_args
    kwargs = {name: None for name in inspect.signature(parse).parameters if name != "dsn"}
    addrs, params = parse(dsn=dsn, **kwargs)[:2]
    return list(addrs), params


def leaked(text: str, password: str = PASSWORD) -> bool:
    return SECRET in text or password in text or quote(password, safe="") in text


# -- PostgreSQL ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgresql://orders:pw@db.internal:5433/orders", None),
        ("postgresql+asyncpg://orders:pw@db.internal:5433/orders", "asyncpg"),
        ("postgres://orders:pw@db.internal:5433/orders", None),
        ("POSTGRESQL+ASYNCPG://orders:pw@db.internal:5433/orders", "asyncpg"),
    ],
)
def test_postgres_schemes(raw: str, driver: str | None) -> None:
    url = DatabaseURL.parse(raw)
    assert url.backend == "postgresql"
    assert url.driver == driver
    assert (url.username, url.password) == ("orders", "pw")
    assert (url.host, url.port, url.database) == ("db.internal", 5433, "orders")
    assert not url.is_sqlite and url.sqlite_path is None
    assert url.display_name == "db.internal:5433/orders"
    # postgres:// is an alias: what goes to the driver is postgresql://
    assert url.asyncpg_dsn() == "postgresql://orders:pw@db.internal:5433/orders"
    assert url.redacted().startswith("postgresql")
    assert url.redacted().endswith("://orders:***@db.internal:5433/orders")


def test_defaults_when_port_and_user_are_missing() -> None:
    url = DatabaseURL.parse("postgresql://db/orders")
    assert (url.username, url.password, url.host, url.port) == (None, None, "db", None)
    assert url.display_name == "db:5432/orders"
    assert url.asyncpg_dsn() == "postgresql://db/orders"
    addrs, params = asyncpg_parse(url.asyncpg_dsn())
    assert addrs == [("db", 5432)]
    assert params.database == "orders"


def test_percent_encoded_password_round_trips_to_the_drivers() -> None:
    url = DatabaseURL.parse(f"postgresql+asyncpg://app%40corp:{ENCODED}@db:5432/my%20db")
    assert url.username == "app@corp"
    assert url.password == PASSWORD
    assert url.database == "my db"

    addrs, params = asyncpg_parse(url.asyncpg_dsn())
    assert addrs == [("db", 5432)]
    assert (params.user, params.password, params.database) == ("app@corp", PASSWORD, "my db")

    for async_driver in (True, False):
        sa_url = make_url(url.for_sqlalchemy(async_driver=async_driver))
        assert (sa_url.username, sa_url.password) == ("app@corp", PASSWORD)
        assert (sa_url.host, sa_url.port, sa_url.database) == ("db", 5432, "my db")

    # and dbinit reads its own output back to the same thing
    again = DatabaseURL.parse(url.asyncpg_dsn())
    assert (again.username, again.password, again.database) == ("app@corp", PASSWORD, "my db")


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://u:{ENCODED}@db:5432/orders",
        f"postgresql+asyncpg://u:{ENCODED}@[2001:db8::1]:5432/orders?sslmode=require",
        f"postgres://u:{ENCODED}@/orders?host=/var/run/postgresql",
        f"postgresql://u:{SECRET}@db/orders",
    ],
)
def test_redacted_never_shows_the_password(raw: str) -> None:
    url = DatabaseURL.parse(raw)
    assert url.password in (PASSWORD, SECRET)
    for shown in (url.redacted(), str(url), repr(url), url.display_name):
        assert not leaked(shown), shown
    assert ":***@" in url.redacted()
    # the redacted URL is still a URL of the same database
    assert DatabaseURL.parse(url.redacted()).host == url.host
    assert DatabaseURL.parse(url.redacted()).database == url.database


def test_ipv6_host() -> None:
    url = DatabaseURL.parse(f"postgresql://u:{ENCODED}@[::1]:5433/orders")
    assert (url.host, url.port, url.database) == ("::1", 5433, "orders")
    assert url.redacted() == "postgresql://u:***@[::1]:5433/orders"
    addrs, params = asyncpg_parse(url.asyncpg_dsn())
    assert addrs == [("::1", 5433)]
    assert params.password == PASSWORD
    sa_url = make_url(url.for_sqlalchemy(async_driver=False))
    assert (sa_url.host, sa_url.port, sa_url.password) == ("::1", 5433, PASSWORD)

    no_port = DatabaseURL.parse("postgresql://[fe80::2]/orders")
    assert (no_port.host, no_port.port) == ("fe80::2", None)


def test_unix_socket_host_in_query() -> None:
    url = DatabaseURL.parse("postgresql://orders@/orders?host=/var/run/postgresql")
    assert url.host == "/var/run/postgresql"  # a unix-socket directory is a host like any
    assert url.hosts == (("/var/run/postgresql", None),)
    assert url.database == "orders"
    assert url.query == ()
    assert url.redacted() == "postgresql://orders@/orders?host=/var/run/postgresql"
    addrs, params = asyncpg_parse(url.asyncpg_dsn())
    assert addrs == ["/var/run/postgresql/.s.PGSQL.5432"]
    assert (params.user, params.database) == ("orders", "orders")
    sa_url = make_url(url.for_sqlalchemy(async_driver=True))
    assert sa_url.query["host"] == "/var/run/postgresql"
    assert sa_url.database == "orders"


def test_database_name_may_come_from_the_query() -> None:
    url = DatabaseURL.parse("postgresql://u@db:5432?dbname=orders")
    _, params = asyncpg_parse(url.asyncpg_dsn())
    assert params.database == "orders"


def test_multi_host_list_is_handed_to_the_driver_as_written() -> None:
    url = DatabaseURL.parse("postgresql://u:pw@h1:5432,h2:5433/orders")
    assert urlsplit(url.asyncpg_dsn()).netloc == "u:pw@h1:5432,h2:5433"
    addrs, _ = asyncpg_parse(url.asyncpg_dsn())
    assert addrs == [("h1", 5432), ("h2", 5433)]


# -- drivers for SQLAlchemy / Alembic ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "async_driver", "expected"),
    [
        ("postgresql://u:pw@db/orders", True, "postgresql+asyncpg"),
        ("postgresql://u:pw@db/orders", False, "postgresql+psycopg"),
        ("postgres://u:pw@db/orders", False, "postgresql+psycopg"),
        ("postgresql+asyncpg://u:pw@db/orders", True, "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:pw@db/orders", False, "postgresql+psycopg"),
        ("postgresql+psycopg2://u:pw@db/orders", False, "postgresql+psycopg2"),
        ("postgresql+psycopg://u:pw@db/orders", True, "postgresql+asyncpg"),
        ("sqlite:///db.sqlite3", True, "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///db.sqlite3", False, "sqlite+pysqlite"),
    ],
)
def test_for_sqlalchemy_picks_the_driver_env_py_needs(
    raw: str, async_driver: bool, expected: str
) -> None:
    rendered = make_url(DatabaseURL.parse(raw).for_sqlalchemy(async_driver=async_driver))
    assert rendered.drivername == expected
    if expected.startswith("postgresql"):
        assert (rendered.username, rendered.password, rendered.host) == ("u", "pw", "db")
        assert rendered.database == "orders"


# -- SQLite ---------------------------------------------------------------------


def test_sqlite_relative_path() -> None:
    url = DatabaseURL.parse("sqlite+aiosqlite:///db.sqlite3")
    assert (url.backend, url.driver) == ("sqlite", "aiosqlite")
    assert url.is_sqlite
    assert url.sqlite_path == Path("db.sqlite3")
    assert not url.sqlite_path.is_absolute()
    assert url.display_name == "db.sqlite3"
    assert url.for_sqlalchemy(async_driver=True) == "sqlite+aiosqlite:///db.sqlite3"
    assert url.for_sqlalchemy(async_driver=False) == "sqlite+pysqlite:///db.sqlite3"
    assert make_url(url.for_sqlalchemy(async_driver=False)).database == "db.sqlite3"
    assert url.redacted() == "sqlite+aiosqlite:///db.sqlite3"


def test_sqlite_absolute_path() -> None:
    url = DatabaseURL.parse("sqlite:////data/orders/db.sqlite3")
    assert url.driver is None
    assert url.sqlite_path == Path("/data/orders/db.sqlite3")
    assert make_url(url.for_sqlalchemy(async_driver=True)).database == "/data/orders/db.sqlite3"
    assert make_url(url.for_sqlalchemy(async_driver=False)).database == "/data/orders/db.sqlite3"


@pytest.mark.parametrize("raw", ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite://"])
def test_sqlite_memory(raw: str) -> None:
    url = DatabaseURL.parse(raw)
    assert url.database == ":memory:"
    assert url.sqlite_path is None
    assert make_url(url.for_sqlalchemy(async_driver=False)).database in (None, ":memory:")


def test_sqlite_with_a_host_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse("sqlite://data/db.sqlite3")
    assert "three slashes" in info.value.message
    assert info.value.exit_code == ExitCode.USAGE_ERROR


# -- malformed --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"u:{SECRET}@db:5432/orders", "no scheme"),
        (f"db.internal/{SECRET}", "no scheme"),
        (SECRET, "no scheme"),
        (f"mysql://u:{SECRET}@db:3306/orders", "unsupported scheme 'mysql'"),
        (f"oracle+cx://u:{ENCODED}@db/orders", "unsupported scheme"),
        (f"postgresql+mysqldb://u:{SECRET}@db/orders", "unsupported PostgreSQL driver"),
        (f"postgresql://u:{SECRET}@db:notaport/orders", "invalid port"),
        (f"postgresql://u:{ENCODED}@db:99999/orders", "invalid port"),
        (f"postgresql://u:{ENCODED}@db:0/orders", "invalid port"),
        (f"postgresql://u:{SECRET}@db:5432", "names no database"),
        (f"postgresql://u:{ENCODED}@db:5432/", "names no database"),
        (f"postgresql://u:{ENCODED}@/orders", "no host"),
        (f"postgresql://u:{ENCODED}@db/a/b", "malformed database name"),
    ],
)
def test_malformed_urls_raise_configuration_error_without_the_password(
    raw: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(raw)
    error = info.value
    assert expected in error.message
    assert error.message.startswith("DATABASE_URL")
    assert error.hint
    assert error.exit_code == ExitCode.USAGE_ERROR
    assert not leaked(str(error)), str(error)


def test_the_setting_named_in_the_error_is_the_callers() -> None:
    with pytest.raises(ConfigurationError, match=r"^DBINIT_TEST_URL is not a URL"):
        DatabaseURL.parse("nonsense", setting="DBINIT_TEST_URL")


@pytest.mark.parametrize(
    "encoded", [ENCODED.lower(), SECRET.replace("-", "%2D")], ids=["lowercase-hex", "extra-escapes"]
)
def test_no_database_error_hides_a_password_encoded_differently(encoded: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(f"postgresql://u:{encoded}@db:5432")
    assert "names no database" in info.value.message
    assert encoded not in str(info.value)
    assert not leaked(str(info.value))


def test_unencoded_slash_in_password_is_not_echoed_as_a_port() -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(f"postgresql://u:admin:{SECRET}/2024@db:5432/orders")
    assert not leaked(str(info.value), f"admin:{SECRET}/2024"), str(info.value)


def test_password_given_as_query_parameter_is_redacted() -> None:
    url = DatabaseURL.parse(f"postgresql://u@db:5432/orders?password={SECRET}")
    assert SECRET not in url.redacted()
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(f"postgresql://u@db:5432?password={SECRET}")
    assert SECRET not in str(info.value)
