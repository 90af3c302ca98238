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
from dbinit.urls import LIBPQ_PARAMETERS, UNSUPPORTED_PARAMETERS, DatabaseURL, options_server_settings
from tests.plugins.databases import SECRET

#: Needs percent-encoding in a URL: '@', '%', ':' and '/'.
PASSWORD = f"p@ss%w:rd/1{SECRET}"
ENCODED = quote(PASSWORD, safe="")


def asyncpg_parse(dsn: str, **given: object) -> tuple[list[object], object]:
    """asyncpg's own reading of a DSN: ([addresses], params with user/password/database)."""
    from asyncpg import connect_utils

    parse = connect_utils._parse_connect_dsn_and_args
    kwargs = {name: None for name in inspect.signature(parse).parameters if name != "dsn"}
    kwargs.update({k: v for k, v in given.items() if k in kwargs})
    addrs, params = parse(dsn=dsn, **kwargs)[:2]
    return list(addrs), params


def asyncpg_connect_parse(url: DatabaseURL, **kwargs: object) -> tuple[list[object], object]:
    """What ``asyncpg.connect(**url.asyncpg_connect_kwargs(...))`` would connect with."""
    arguments = url.asyncpg_connect_kwargs(**kwargs)  # type: ignore[arg-type]
    return asyncpg_parse(
        arguments.pop("dsn"), ssl=arguments.get("ssl"), server_settings=arguments["server_settings"]
    )


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


# -- libpq parameters: one table, one translation ------------------------------------


def libpq_keywords() -> set[str]:
    """Every connection keyword the installed libpq (psycopg's) knows."""
    import psycopg

    return {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}


def test_every_libpq_keyword_is_decided() -> None:
    """Supported, refused, or part of the URL itself: a new libpq keyword fails here until decided."""
    identity = {"host", "port", "dbname", "user", "password"}
    known = libpq_keywords()
    assert set(LIBPQ_PARAMETERS) <= known
    assert set(UNSUPPORTED_PARAMETERS) - {"requiressl"} <= known  # requiressl: removed from libpq
    assert not set(LIBPQ_PARAMETERS) & set(UNSUPPORTED_PARAMETERS)
    assert known - identity - set(LIBPQ_PARAMETERS) - set(UNSUPPORTED_PARAMETERS) == set()
    for spec in LIBPQ_PARAMETERS.values():
        assert spec.asyncpg in ("dsn", "timeout", "server_settings", "none"), spec
        assert spec.psycopg == "conninfo", spec
        assert spec.meaning


def test_dsn_parameters_are_ones_asyncpg_implements() -> None:
    """A parameter sent in asyncpg's DSN must not come out as a server setting."""
    for name, spec in LIBPQ_PARAMETERS.items():
        if spec.asyncpg != "dsn":
            continue
        value = spec.values[0] if spec.values else "x"
        _, params = asyncpg_parse(f"postgresql://u@db/orders?sslmode=disable&{name}={value}")
        assert name not in (params.server_settings or {}), name


MANAGED = (
    "postgresql://orders:pw@db1.cloud:5432,db2.cloud:5433/orders?sslmode=verify-full"
    "&sslrootcert={ca}&application_name=orders-api&connect_timeout=10"
    "&target_session_attrs=read-write&options=-c%20search_path%3Dapp%20-cstatement_timeout%3D5s"
)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A managed-PostgreSQL URL whose sslrootcert is a real CA file (asyncpg loads it)."""
    from tests.plugins.faults import make_certificates

    folder = tmp_path_factory.mktemp("certificates")
    make_certificates(folder)
    return MANAGED.format(ca=folder / "ca.crt")


def test_managed_url_for_asyncpg(managed: str) -> None:
    url = DatabaseURL.parse(managed)
    assert url.hosts == (("db1.cloud", 5432), ("db2.cloud", 5433))
    assert url.display_name == "db1.cloud:5432,db2.cloud:5433/orders"
    arguments = url.asyncpg_connect_kwargs(timeout=30, server_settings={"application_name": "dbinit-x"})
    assert arguments["timeout"] == 10  # the URL's connect_timeout lowers dbinit's
    assert url.asyncpg_connect_kwargs(timeout=3)["timeout"] == 3  # and never raises it
    assert arguments["server_settings"] == {
        "search_path": "app",
        "statement_timeout": "5s",
        "application_name": "dbinit-x",  # dbinit's name wins over the URL's
    }
    addrs, params = asyncpg_parse(arguments["dsn"], server_settings=arguments["server_settings"])
    assert addrs == [("db1.cloud", 5432), ("db2.cloud", 5433)]
    assert (params.user, params.password, params.database) == ("orders", "pw", "orders")
    assert params.sslmode.name == "verify_full"
    assert params.target_session_attrs.value == "read-write"
    # asyncpg would have sent these as server settings, which the server refuses
    assert params.server_settings == arguments["server_settings"]
    assert "connect_timeout" not in arguments["dsn"] and "options" not in arguments["dsn"]


def test_verify_read_only_session_asks_for_a_primary(managed: str) -> None:
    url = DatabaseURL.parse(managed)
    _, params = asyncpg_connect_parse(url, timeout=5, read_only_session=True)
    assert params.target_session_attrs.value == "primary"
    _, params = asyncpg_connect_parse(url, timeout=5)
    assert params.target_session_attrs.value == "read-write"


def test_managed_url_for_psycopg(managed: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = DatabaseURL.parse(managed)
    conninfo = url.sqlalchemy_connect_params("psycopg", timeout=30, application_name="dbinit-run:1")
    assert conninfo == {
        "sslmode": "verify-full",
        "sslrootcert": url.params["sslrootcert"],
        "application_name": "dbinit-run:1",
        "connect_timeout": "10",
        "target_session_attrs": "read-write",
        "options": "-c search_path=app -cstatement_timeout=5s",
    }
    # libpq itself accepts every keyword and value
    assert conninfo_to_dict(make_conninfo("", **conninfo))["sslmode"] == "verify-full"


@pytest.mark.parametrize("async_driver", [True, False])
def test_sqlalchemy_gets_a_clean_url_with_every_host(async_driver: bool) -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    raw = MANAGED.format(ca="/not/read/here.pem")
    url = DatabaseURL.parse(raw.replace("db2.cloud:5433", "[2001:db8::2]"))
    sa_url = make_url(url.for_sqlalchemy(async_driver=async_driver))
    assert set(sa_url.query) == {"host", "port"}  # no libpq parameter for the dialect to pass on
    assert (sa_url.username, sa_url.password, sa_url.database) == ("orders", "pw", "orders")
    if async_driver:
        _, cparams = PGDialect_asyncpg().create_connect_args(sa_url)
        assert (cparams["host"], cparams["port"]) == (["db1.cloud", "2001:db8::2"], [5432, 5432])
    else:
        _, cparams = PGDialect_psycopg().create_connect_args(sa_url)
        assert (cparams["host"], cparams["port"]) == ("db1.cloud,2001:db8::2", "5432,5432")


def test_sqlalchemy_multi_host_form_is_read_too() -> None:
    url = DatabaseURL.parse("postgresql+asyncpg://u@/orders?host=h1:5432&host=[::1]:5433&sslmode=require")
    assert url.hosts == (("h1", 5432), ("::1", 5433))
    assert url.redacted() == "postgresql+asyncpg://u@h1:5432,[::1]:5433/orders?sslmode=require"
    libpq = DatabaseURL.parse("postgresql://u@/orders?host=h1,::1&port=5432,5433")
    assert libpq.hosts == url.hosts
    one_port = DatabaseURL.parse("postgresql://u@h1,h2/orders?port=6432")
    assert one_port.hosts == (("h1", 6432), ("h2", 6432))


def test_ssl_alias_and_sslrootcert_system() -> None:
    url = DatabaseURL.parse("postgresql+asyncpg://u@db/orders?ssl=verify-full&sslrootcert=system")
    assert url.params == {"sslmode": "verify-full", "sslrootcert": "system"}
    arguments = url.asyncpg_connect_kwargs(timeout=5)
    assert arguments["ssl"].check_hostname  # the system's CAs, verify-full
    assert "sslrootcert" not in arguments["dsn"]  # asyncpg would open a file named "system"


def test_options_become_server_settings() -> None:
    assert options_server_settings("-c search_path=a,b --work-mem=4MB -cstatement_timeout=5s") == {
        "search_path": "a,b",
        "work_mem": "4MB",
        "statement_timeout": "5s",
    }
    assert options_server_settings(r"-c application_name=two\ words") == {"application_name": "two words"}
    assert options_server_settings("") == {}
    for bad in ("-B 100", "-c", "-c search_path", "search_path=x", "-c+search_path=x"):
        with pytest.raises(ValueError):
            options_server_settings(bad)


def test_plus_is_a_plus_as_in_libpq() -> None:
    url = DatabaseURL.parse("postgresql://u@db/orders?application_name=a+b%20c")
    assert url.params["application_name"] == "a+b c"
    _, params = asyncpg_connect_parse(url, timeout=5)
    assert params.server_settings["application_name"] == "a+b c"


def test_sslpassword_is_redacted() -> None:
    url = DatabaseURL.parse(f"postgresql://u:{ENCODED}@db/orders?sslcert=/c.pem&sslpassword={ENCODED}")
    assert url.params["sslpassword"] == PASSWORD
    for shown in (url.redacted(), str(url), repr(url)):
        assert not leaked(shown), shown
    assert "sslpassword=***" in url.redacted()


def test_driver_without_libpq_parameters_is_refused() -> None:
    url = DatabaseURL.parse("postgresql+pg8000://u@db/orders?sslmode=require")
    with pytest.raises(ConfigurationError, match="pg8000, which cannot take sslmode"):
        url.sqlalchemy_connect_params("pg8000", timeout=5)
    assert DatabaseURL.parse("postgresql+pg8000://u@db/orders").sqlalchemy_connect_params(
        "pg8000", timeout=5
    ) == {}


def test_migrate_refuses_read_only_targets() -> None:
    for target in ("read-only", "standby", "prefer-standby"):
        url = DatabaseURL.parse(f"postgresql://u@db/orders?target_session_attrs={target}")
        with pytest.raises(ConfigurationError, match=f"target_session_attrs={target}"):
            url.require_writable("migrate")
    DatabaseURL.parse("postgresql://u@db/orders?target_session_attrs=primary").require_writable("migrate")


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
    assert url.display_name == str(Path.cwd() / "db.sqlite3")  # which file, wherever it runs
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
        (f"postgresql://u:{ENCODED}@[::1/orders", "unclosed '['"),
        (f"postgresql://u:{ENCODED}@[::1:5432", "unclosed '['"),
        (f"postgresql://u:{ENCODED}@::1]:5432/orders", "']' without '['"),
        (f"postgresql://u:{ENCODED}@[::1]x/orders", "text after the IPv6 address"),
        (f"postgresql://u:{ENCODED}@h1,,h2/orders", "empty host 2 of 3"),
        (f"postgresql://u:{ENCODED}@h1:5432,h2:x/orders", "invalid port of host 2 of 2"),
        (f"postgresql://u:{ENCODED}@:5432/orders", "port but no name"),
        (f"postgresql://u:{SECRET}#x@db/orders", "contains '#'"),
        (f"postgresql://u:{ENCODED}@db/orders?sslmode=bogus", "invalid sslmode 'bogus'"),
        (f"postgresql://u:{ENCODED}@db/orders?connect_timeout=abc", "invalid connect_timeout 'abc'"),
        (f"postgresql://u:{ENCODED}@db/orders?connect_timeout=-1", "invalid connect_timeout '-1'"),
        (f"postgresql://u:{ENCODED}@db/orders?target_session_attrs=nonsense",
         "invalid target_session_attrs 'nonsense'"),
        (f"postgresql://u:{ENCODED}@db/orders?sslmode=", "invalid sslmode ''"),
        (f"postgresql://u:{ENCODED}@db/orders?sslrootcert=", "invalid sslrootcert '': is empty"),
        (f"postgresql://u:{ENCODED}@db/orders?ssl_min_protocol_version=SSLv3",
         "invalid ssl_min_protocol_version 'SSLv3'"),
        (f"postgresql://u:{ENCODED}@db/orders?sslnegotiation=direct", "sslnegotiation=direct without"),
        (f"postgresql://u:{ENCODED}@db/orders?gssencmode=require", "require cannot be honoured"),
        (f"postgresql://u:{ENCODED}@db/orders?client_encoding=LATIN1", "invalid client_encoding"),
        (f"postgresql://u:{ENCODED}@db/orders?foo=1", "unknown parameter 'foo'"),
        (f"postgresql://u:{ENCODED}@db/orders?prepared_statement_cache_size=0", "unknown parameter"),
        (f"postgresql://u:{ENCODED}@db/orders?hostaddr=10.0.0.1", "hostaddr, which dbinit does not support"),
        (f"postgresql://u:{ENCODED}@db/orders?service=prod", "service, which dbinit does not support"),
        (f"postgresql://u:{ENCODED}@db/orders?sslmode=require&sslmode=disable", "sslmode twice"),
        (f"postgresql://u:{ENCODED}@db/orders?host=h2", "hosts both before the path and as ?host="),
        (f"postgresql://u:{ENCODED}@db:5432/orders?port=5433", "ports both with the hosts"),
        (f"postgresql://u:{ENCODED}@h1,h2/orders?port=1,2,3", "2 host(s) but 3 ports"),
        (f"postgresql://u:{ENCODED}@db/orders?dbname=other", "database both in the path and as ?dbname="),
        (f"postgresql://u:{ENCODED}@db/orders?user=other", "user both before the host and as ?user="),
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


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://u:{SECRET}&x@db/orders?{SECRET}",  # an unencoded '&' shifts the password
        f"postgresql://u:{SECRET}@db/orders?{SECRET}=1",
        f"postgresql://u:{SECRET}@db/orders?target_session_attrs={SECRET}",
    ],
)
def test_parameter_errors_never_echo_a_password_piece(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(raw)
    assert SECRET not in str(info.value), str(info.value)
