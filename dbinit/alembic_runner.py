"""Running Alembic for ``migrate`` (the only place SQLAlchemy/Alembic load).

Works with projects made by ``alembic init`` unmodified, sync or async
template: ``DATABASE_URL`` reaches ``env.py`` as ``sqlalchemy.url`` with the
driver the template needs, and Alembic runs in a worker thread, where the
async template's ``asyncio.run`` works. Each migration runs in its own
transaction (``transaction_per_migration``) unless ``env.py`` says otherwise.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbinit.errors import ConfigurationError, Interrupted, MigrationFailed

if TYPE_CHECKING:
    from alembic.config import Config
    from structlog.typing import FilteringBoundLogger

    from dbinit.interrupts import RunControl
    from dbinit.scripts import MigrationScripts
    from dbinit.settings import Settings

_ASYNC_MARKERS = (
    "async_engine_from_config",
    "create_async_engine",
    "AsyncEngine",
    "AsyncConnection",
)


def env_is_async(scripts: MigrationScripts) -> bool:
    """Whether ``env.py`` uses an async engine (the ``async`` template)."""
    if scripts.script_location is None:
        return False
    env = scripts.script_location / "env.py"
    try:
        text = env.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(marker in text for marker in _ASYNC_MARKERS)


def alembic_config(
    settings: Settings, scripts: MigrationScripts, stdout: TextIO | None = None
) -> Config:
    from alembic.config import Config

    if scripts.alembic_ini is None:
        raise ConfigurationError(
            "migrate needs alembic.ini (DBINIT_ALEMBIC_INI), not only a versions folder",
            hint="Run where alembic.ini is or set DBINIT_ALEMBIC_INI",
        )
    config = Config(str(scripts.alembic_ini), stdout=stdout or sys.stdout)
    config.output_buffer = stdout or sys.stdout
    url = settings.url.for_sqlalchemy(async_driver=env_is_async(scripts))
    # configparser interpolation: a percent-encoded password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if scripts.script_location is not None:
        config.set_main_option("script_location", str(scripts.script_location))
    config.attributes["dbinit.settings"] = settings
    return config


def upgrade(
    settings: Settings,
    scripts: MigrationScripts,
    log: FilteringBoundLogger,
    control: RunControl | None = None,
) -> list[str]:
    """``alembic upgrade heads``; returns the applied revisions in order.

    With a :class:`RunControl`, a stop request aborts at the next migration
    boundary (rolling back the migration just run) and the migration sessions
    carry ``control.session_tag`` as ``application_name`` so that the running
    statement can be cancelled on the server.
    """
    from alembic import util as alembic_util
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    config = alembic_config(settings, scripts)
    script = ScriptDirectory.from_config(config)
    applied: list[str] = []
    planned: list[str] = []

    def on_apply(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        if control is not None:
            # still inside this migration's transaction: raising rolls it back
            control.raise_if_stopping(f"migration {step.up_revision_id} rolled back")
        if step.is_upgrade:
            applied.append(step.up_revision_id)
            log.info("Migration applied", revision=step.up_revision_id, doc=step.up_revision.doc)

    def steps(rev: Any, context: Any) -> Any:
        result = script._upgrade_revs("heads", rev)
        planned.extend(step.revision.revision for step in result)
        if result:
            log.info("Running pending migrations", count=len(result))
        return result

    environment = EnvironmentContext(
        config, script, fn=steps, as_sql=False, starting_rev=None, destination_rev="heads", tag=None
    )
    configure = environment.configure

    def configure_per_migration(*args: Any, **kwargs: Any) -> None:
        # env.py is not ours to edit: default to one transaction per migration and
        # add our callback to whatever env.py passes. (Alembic's module proxy calls
        # the instance's attribute, so a subclass would not be seen.)
        kwargs.setdefault("transaction_per_migration", True)
        callbacks = alembic_util.to_tuple(kwargs.get("on_version_apply"), default=())
        kwargs["on_version_apply"] = (*callbacks, on_apply)
        configure(*args, **kwargs)

    environment.configure = configure_per_migration  # type: ignore[method-assign]
    # built before Alembic runs: a bad parameter is a configuration error, not a failed migration
    listeners = session_listeners(settings, control, async_driver=env_is_async(scripts))
    try:
        with listening(listeners), environment:
            script.run_env()
    except Exception as exc:
        failing = next((r for r in planned if r not in applied), None)
        if control is not None and control.stopping:
            if isinstance(exc, Interrupted):
                raise
            raise control.interrupted(
                f"migration {failing} cancelled and rolled back"
                + (f" (applied before: {', '.join(applied)})" if applied else "")
            ) from None
        raise migration_error(exc, failing, scripts) from exc
    return applied


Listener = tuple[Any, str, Callable[..., Any]]


def session_listeners(
    settings: Settings, control: RunControl | None, *, async_driver: bool
) -> list[Listener]:
    """How dbinit sets up every session Alembic opens (SQLAlchemy class-level events).

    PostgreSQL: the connect arguments (``do_connect``): ``sqlalchemy.url`` is a
    clean URL (:meth:`DatabaseURL.for_sqlalchemy`) and the libpq parameters of
    ``DATABASE_URL`` (TLS, ``target_session_attrs``, ``options``, timeouts…) are
    added to the driver's arguments here, translated once by
    :meth:`DatabaseURL.sqlalchemy_connect_params`, for connections to dbinit's
    URL only: an ``env.py`` that connects elsewhere is left alone.
    Then, on every new session (``Pool`` ``connect``): ``application_name``
    lets a signal cancel the running statement (dbinit's tag wins over the
    URL's); ``DBINIT_STATEMENT_TIMEOUT`` / ``DBINIT_DDL_LOCK_TIMEOUT``
    become ``statement_timeout`` / ``lock_timeout``, so a migration cannot
    block production traffic indefinitely behind a lock (set only here, after
    the migration lock is held: a ``lock_timeout`` would also cut the advisory
    lock wait); ``client_connection_check_interval`` and TCP keepalives make
    the server end a killed job's session (and its locks) within seconds.

    SQLite: the driver's own transaction handling commits DDL at once; dbinit
    takes over (SQLAlchemy's documented recipe: no implicit transactions,
    ``BEGIN`` when SQLAlchemy begins), so a revision's DDL rolls back with it.
    """
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if settings.url.is_sqlite:

        def sqlite_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        def sqlite_begin(connection: Any) -> None:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN")

        return [(Pool, "connect", sqlite_connect), (Engine, "begin", sqlite_begin)]

    statements = [
        "SET tcp_keepalives_idle = 30",
        "SET tcp_keepalives_interval = 10",
        "SET tcp_keepalives_count = 3",
        # PostgreSQL 14+: notice a vanished client even while a statement runs
        "SELECT set_config('client_connection_check_interval', '5s', false) "
        "WHERE current_setting('server_version_num')::int >= 140000",
    ]
    tag = control.session_tag if control is not None else None
    if tag is not None:
        statements.append(f"SET application_name = '{tag}'")
    if settings.statement_timeout:
        statements.append(f"SET statement_timeout = '{_milliseconds(settings.statement_timeout)}ms'")
    if settings.ddl_lock_timeout:
        statements.append(f"SET lock_timeout = '{_milliseconds(settings.ddl_lock_timeout)}ms'")

    def postgres_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
        dbapi_connection.commit()

    return [
        (Engine, "do_connect", connect_arguments(settings, tag, async_driver=async_driver)),
        (Pool, "connect", postgres_connect),
    ]


def connect_arguments(
    settings: Settings, application_name: str | None, *, async_driver: bool
) -> Callable[[Any, Any, list[Any], dict[str, Any]], None]:
    """A ``do_connect`` listener adding the translated URL parameters to dbinit's connections.

    A connection is dbinit's when the driver is the one dbinit named and its
    arguments are what the dialect makes of dbinit's ``sqlalchemy.url`` (host(s),
    port(s), user, password, database): a URL that ``env.py`` builds itself, or
    changes, gets nothing. Arguments ``env.py`` passes (``connect_args``) win over
    the URL's; dbinit's ``application_name`` tag wins over both.
    """
    from sqlalchemy.engine import make_url

    url = settings.url
    driver = url.sqlalchemy_driver(async_driver=async_driver)
    ours = make_url(url.for_sqlalchemy(async_driver=async_driver))
    extras = url.sqlalchemy_connect_params(
        driver, timeout=settings.connect_timeout, application_name=application_name
    )

    def do_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if dialect.name != "postgresql" or dialect.driver != driver:
            return
        expected_args, expected = dialect.create_connect_args(ours)
        if list(cargs) != list(expected_args) or any(cparams.get(k) != v for k, v in expected.items()):
            return
        for key, value in extras.items():
            if key == "server_settings":
                value = {**value, **cparams.get(key, {})}
                if application_name is not None:
                    value["application_name"] = application_name
                cparams[key] = value
            elif key == "application_name" and application_name is not None:
                cparams[key] = value
            else:
                cparams.setdefault(key, value)

    return do_connect


@contextlib.contextmanager
def listening(listeners: list[Listener]) -> Iterator[None]:
    """Install class-level SQLAlchemy listeners for the body (Alembic's run)."""
    from sqlalchemy import event

    for target, name, function in listeners:
        event.listen(target, name, function)
    try:
        yield
    finally:
        for target, name, function in listeners:
            event.remove(target, name, function)


def _milliseconds(seconds: float) -> int:
    """At least 1 ms: 0 would switch the timeout off."""
    return max(1, round(seconds * 1000))


def offline_sql(
    settings: Settings, scripts: MigrationScripts, stdout: TextIO, from_revision: str | None
) -> None:
    """Print the SQL of ``upgrade heads`` (from ``from_revision`` or the base)."""
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config(settings, scripts, stdout=stdout)
    target = f"{from_revision}:heads" if from_revision else "heads"
    try:
        command.upgrade(config, target, sql=True)
    except CommandError as exc:
        raise ConfigurationError(f"cannot render offline SQL: {exc}") from None


def migration_error(
    exc: BaseException, revision: str | None, scripts: MigrationScripts
) -> MigrationFailed:
    """A :class:`MigrationFailed` naming the revision and the database's error."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        # SQLAlchemy's asyncpg adapter wraps the driver's error: name the real one
        named = orig.__cause__ if type(orig).__name__ == "Error" and orig.__cause__ else orig
        reason = f"{type(named).__name__}: {str(orig).strip().splitlines()[0]}"
        statement = getattr(exc, "statement", None)
        if statement:
            short = " ".join(str(statement).split())
            reason += f" [SQL: {short[:200]}{'…' if len(short) > 200 else ''}]"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if revision is not None:
        path = scripts.graph.revisions.get(revision)
        where = f" ({Path(path.path).name})" if path is not None and path.path else ""
        return MigrationFailed(
            f"migration {revision}{where} failed: {reason}",
            revision=revision,
            hint="The failed migration was rolled back where the database allows it; fix it "
            "and run the job again. Earlier migrations of this run stay applied.",
        )
    return MigrationFailed(
        f"Alembic failed before running a migration: {reason}",
        hint="Check env.py and the database URL it builds",
    )
