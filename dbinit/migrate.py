"""Migration: lock, strategy, verify, unlock. Only the migration job runs this."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

from dbinit.after_migrate import check_step, run_step, step_shown, step_words
from dbinit.checks import quoted
from dbinit.database import describe_connect_error
from dbinit.errors import (
    FOREIGN_FAILURES,
    ConfigurationError,
    DbinitError,
    MigrationFailed,
    PluginError,
    Refused,
)
from dbinit.facts import read_scripts, read_state
from dbinit.guard import guard_contracts
from dbinit.identity import IDENTITY_COLUMNS, DatabaseIdentity, PostgresIdentity, SqliteIdentity
from dbinit.interrupts import RunControl
from dbinit.lock import HeldLock, end_sessions, migration_lock
from dbinit.operations import Operations
from dbinit.report import AfterMigrateStep, MigratePlan, MigrateResult, VerifyReport
from dbinit.revisions.phases import revision_phases
from dbinit.strategies import Strategy, StrategyContext
from dbinit.verify import verify

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.pluginmanager import Registry
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings


def select_strategy(settings: Settings, registry: Registry, name: str | None = None) -> Strategy:
    """``--strategy`` > ``DB_FORCE_RECREATE`` > ``DBINIT_STRATEGY``.

    ``DB_FORCE_RECREATE=true`` selects the strategy marked ``force_recreate``
    (the built-in ``recreate``, unless a plugin replaced it). Raises
    :class:`ConfigurationError` for an unknown name, for ``DB_FORCE_RECREATE``
    with no such strategy, or what the strategy's ``check`` refuses, and
    :class:`Refused` for a destructive strategy in production without
    ``DBINIT_ALLOW_DESTRUCTIVE=true``.
    """
    strategies = registry.strategies(settings)
    if name:
        chosen = name
    elif settings.force_recreate:
        forced = [s.name for s in strategies.values() if s.force_recreate]
        if not forced:
            raise ConfigurationError(
                "DB_FORCE_RECREATE=true, but no migration strategy is marked force_recreate",
                hint="A plugin removed the built-in 'recreate' strategy: contribute one with "
                "Strategy(..., force_recreate=True), or unset DB_FORCE_RECREATE",
            )
        chosen = forced[0]
    else:
        chosen = settings.strategy
    if chosen not in strategies:
        source = (
            "--strategy"
            if name
            else ("DB_FORCE_RECREATE" if settings.force_recreate else "DBINIT_STRATEGY")
        )
        raise ConfigurationError(
            f"{source}: unknown migration strategy {chosen!r}",
            hint=f"Available: {', '.join(sorted(strategies))} (see `dbinit plugins`)",
        )
    strategy = strategies[chosen]
    if strategy.destructive and settings.is_production and not settings.allow_destructive:
        raise Refused(
            f"strategy {chosen!r} drops every table and is refused with ENVIRONMENT=production",
            hint="Unset DB_FORCE_RECREATE for production. If you really mean to wipe this "
            "database, set DBINIT_ALLOW_DESTRUCTIVE=true for this one run.",
        )
    if strategy.check is not None:
        try:
            strategy.check(settings)
        except DbinitError:
            raise
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                strategy.plugin or "unknown plugin",
                f"the check of strategy {chosen!r} raised {type(exc).__name__}: {exc}",
                internal=True,
            ) from exc
    return strategy


def _shown(revision: str) -> str:
    """A recorded revision for a message: as is when it reads as one, else quoted and capped."""
    plain = revision.isprintable() and " " not in revision and 0 < len(revision) <= 80
    return revision if plain else quoted(revision)


async def plan(settings: Settings) -> MigratePlan:
    """The revisions ``migrate`` would apply now (reads the database, writes nothing)."""
    scripts = read_scripts(settings)
    state = await read_state(settings, "plan")
    unknown = [v for v in state.versions if v not in scripts.graph]
    if unknown:
        raise ConfigurationError(
            f"the database is at revision {', '.join(map(_shown, unknown))}, unknown to these migrations",
            hint="Run the image whose migrations contain it",
        )
    return MigratePlan(
        state.versions, scripts.heads, tuple(scripts.graph.pending(state.versions)), step_shown(settings)
    )


async def migrate(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    *,
    strategy_name: str | None = None,
    control: RunControl | None = None,
) -> MigrateResult:
    """Bring the database to the image's head(s) under the migration lock.

    ``control`` (the command line's, from
    :func:`dbinit.interrupts.run_until_stopped` with ``graceful=True``) carries
    SIGTERM/SIGINT: the run stops cleanly, see :mod:`dbinit.interrupts`.
    """
    observed = Operations(registry, settings).run(
        "migrate", service=settings.service, database=settings.url.display_name,
        strategy=strategy_name or "",
    )
    with observed:
        return await _migrate(settings, registry, log, strategy_name, control or RunControl())


async def _migrate(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    strategy_name: str | None,
    control: RunControl,
) -> MigrateResult:
    started = time.perf_counter()
    strategy = select_strategy(settings, registry, strategy_name)
    check_step(settings)  # an unusable DBINIT_AFTER_MIGRATE is exit 2 before the lock, not after migrating
    if not settings.url.is_sqlite:
        settings.url.require_writable("migrate")
    scripts = read_scripts(settings)
    if strategy.runs_alembic and not scripts.configured:
        raise ConfigurationError(
            "migrate needs Alembic's configuration: alembic.ini (DBINIT_ALEMBIC_INI) or "
            "[tool.alembic] in pyproject.toml",
            hint="Run where alembic.ini is or set DBINIT_ALEMBIC_INI",
        )
    # A wrong dbinit_phase / dbinit_compatible_since is exit 2 before the lock, not after migrating.
    revision_phases(scripts)
    log.info(
        "Migration mode - running database migrations",
        strategy=strategy.name,
        migration_count=scripts.count,
        heads=list(scripts.heads),
    )
    target = ",".join(scripts.heads) or "head"
    operations = Operations(registry, settings)
    async with migration_lock(settings, log, target=target, control=control, operations=operations) as held:
        identity = await _read_lock_session(settings, held)
        # Read the state only now: another job may have migrated while we waited.
        state = await read_state(settings, "migrate")
        control.raise_if_stopping("stopped before migrating")
        ahead = [v for v in state.versions if v not in scripts.graph]
        if ahead and not strategy.destructive:
            return await _ahead_of_image(settings, registry, log, scripts, strategy, ahead, started)
        if not strategy.destructive:
            pending = scripts.graph.pending(state.versions)
            await guard_contracts(settings, scripts, pending, log, held, control)
        context = StrategyContext(
            settings=settings, scripts=scripts, state=state, log=log, control=control, registry=registry,
            identity=identity,
        )
        worker = asyncio.ensure_future(asyncio.to_thread(strategy.run, context))
        canceller = asyncio.ensure_future(_stop_when_asked(control, held, worker, settings, log))
        try:
            applied = tuple(await asyncio.shield(worker))
        finally:
            canceller.cancel()
        if not applied and not state.history_table_exists:
            await _create_history_table(settings, log)
        report = await verify(settings, registry, log, scripts=scripts)
        if not report.ok:
            raise MigrationFailed(
                f"migrations ran but the database does not verify: {report.message}",
                hint=report.hint,
            )
        step = None
        if step_words(settings) is not None:
            with operations.run("after_migrate", command=step_shown(settings) or ""):
                step = await _after_migrate(settings, log, control, held, state.server_version, applied,
                                            report)
        result = _finished(settings, registry, strategy, applied, report, started, step)
    if applied:
        log.info(
            "Migrations applied successfully",
            applied=list(applied),
            current_revision=report.current_revision,
            duration_ms=round(result.duration_ms, 2),
        )
    else:
        log.info(
            "Database already up to date",
            current_revision=report.current_revision,
            duration_ms=round(result.duration_ms, 2),
        )
    return result


async def _create_history_table(settings: Settings, log: FilteringBoundLogger) -> None:
    """A database migrated before dbinit kept a history, already up to date: create the table now.

    (A revision applied creates it in its own transaction.) Its verifications then read the
    history in their one statement. A table that cannot be created is a warning: the run's
    outcome is the migration's.
    """
    from dbinit.history import HistoryTable, HistoryUnavailable, ensure_table

    try:
        await asyncio.to_thread(ensure_table, settings)
    except HistoryUnavailable as exc:
        log.warning("Cannot create the history table", table=HistoryTable.of(settings).shown,
                    reason=exc.args[0] if exc.args else "")
        return
    log.info("History table created", table=HistoryTable.of(settings).shown)


#: How many sessions ``migrate`` has open at once: the lock's, and one for
#: the state read, the migration (Alembic's engine) or the verification.
CONNECTIONS_NEEDED = 2

_LOCK_SESSION_QUERY = f"""
SELECT r.rolsuper, r.rolconnlimit, d.datconnlimit, {IDENTITY_COLUMNS}
  FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
 WHERE r.rolname = current_user AND d.datname = current_database()
"""


async def _read_lock_session(settings: Settings, held: HeldLock) -> DatabaseIdentity | None:
    """The database the lock is on (:mod:`dbinit.identity`), and its connection limits: one round trip.

    The identity is what env.py's connection is compared with before the first
    revision runs. A role or database connection limit below what ``migrate``
    needs is exit 2, not a retry loop (superusers are exempt from both limits,
    as PostgreSQL does).
    """
    if settings.url.is_sqlite:
        return SqliteIdentity.of(settings.url.sqlite_path)
    if held.connection is None:
        return None
    row = await held.fetchrow(_LOCK_SESSION_QUERY)
    if row is None:
        return None
    identity = PostgresIdentity(
        database=row["database"],
        user=row["role"],
        database_oid=row["database_oid"],
        server_started_us=row["started_us"],
        port=row["port"],
        display=settings.url.display_name,
    )
    if row["rolsuper"]:
        return identity
    for kind, name, limit, fix in (
        ("role", identity.user, row["rolconnlimit"], "ALTER ROLE"),
        ("database", identity.database, row["datconnlimit"], "ALTER DATABASE"),
    ):
        if 0 <= limit < CONNECTIONS_NEEDED:
            raise ConfigurationError(
                f"migrate needs {CONNECTIONS_NEEDED} connections at once (the migration lock's and "
                f"the migration's), but the {kind} {name!r} allows {limit}",
                hint=f'{fix} "{name}" CONNECTION LIMIT {CONNECTIONS_NEEDED} (or more: the '
                "services' own connections count too), or run the job as another role",
            )
    return identity


async def _ahead_of_image(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    scripts: MigrationScripts,
    strategy: Strategy,
    ahead: list[str],
    started: float,
) -> MigrateResult:
    """The database is at a revision this image does not have: a newer release migrated it.

    No migration can make it older. With ``DBINIT_ALLOW_AHEAD=true`` the job
    has nothing to do (exit 0, ``up_to_date``); with ``compatible``, only when
    the verdict is ``ahead_compatible`` (the newer release's history says this
    release's code still works on it); otherwise it is a final error (exit 2),
    so that a Job's ``podFailurePolicy`` does not retry it.
    """
    if settings.allow_ahead == "false":
        raise ConfigurationError(
            f"the database is at revision {', '.join(map(_shown, ahead))}, which this release's "
            f"migrations do not contain (heads: {', '.join(scripts.heads) or 'none'}): a newer "
            "release migrated it, or the version table is wrong",
            hint="Nothing for this job to do: deploy the newer release. With backward-compatible "
            "migrations set DBINIT_ALLOW_AHEAD=compatible (or true) to let an older job finish as up to "
            "date.",
        )
    report = await verify(settings, registry, log, scripts=scripts)
    if not report.ok:
        # not a newer release's revision after all (garbage, NULL, overlapping rows): final
        raise ConfigurationError(
            f"the database is at revision {', '.join(map(_shown, ahead))}, unknown to this "
            f"release, and does not verify as ahead of it: {report.message}",
            hint=report.hint,
        )
    log.warning("Database ahead of this release: nothing to migrate", current=[_shown(v) for v in ahead],
                heads=list(scripts.heads))
    if step_words(settings) is not None:
        log.warning("Database ahead of this release: the after-migrate step is not run (the newer "
                    "release's job runs its own)", command=step_shown(settings))
    return _finished(settings, registry, strategy, (), report, started)


def _finished(
    settings: Settings,
    registry: Registry,
    strategy: Strategy,
    applied: tuple[str, ...],
    report: VerifyReport,
    started: float,
    step: AfterMigrateStep | None = None,
) -> MigrateResult:
    """The result of a run, announced to plugins (the lock is still held)."""
    result = MigrateResult(
        service=settings.service,
        database=settings.url.display_name,
        strategy=strategy.name,
        applied=applied,
        verification=report,
        duration_ms=(time.perf_counter() - started) * 1000,
        after_migrate=step,
    )
    registry.notify("dbinit_migrate_finished", result=result, settings=settings)
    return result


async def _after_migrate(
    settings: Settings,
    log: FilteringBoundLogger,
    control: RunControl,
    held: HeldLock,
    server_version: str,
    applied: tuple[str, ...],
    report: VerifyReport,
) -> AfterMigrateStep:
    """Run ``DBINIT_AFTER_MIGRATE`` in a thread, stopped as a migration is.

    See :mod:`dbinit.after_migrate`.
    """
    worker = asyncio.ensure_future(
        asyncio.to_thread(
            run_step, settings, log, control, server_version,
            applied=applied, current_revision=report.current_revision,
        )
    )  # fmt: skip
    canceller = asyncio.ensure_future(
        _stop_when_asked(control, held, worker, settings, log, what="after-migrate step")
    )
    try:
        return await asyncio.shield(worker)
    finally:
        canceller.cancel()


async def _stop_when_asked(
    control: RunControl,
    held: HeldLock,
    worker: asyncio.Future[object],
    settings: Settings,
    log: FilteringBoundLogger,
    what: str = "migration",
) -> None:
    """Once the run must stop, stop the migration's (or the after-migrate step's) work on the server.

    A signal: cancel the running statement (through the lock's connection).
    A lost lock: end the migration's sessions (from a new connection: the
    lock's is gone), so the running revision cannot commit after the loss.
    """
    await control.wait()
    if control.lost is None:
        await _cancel_running_statement(control, held, worker, log, what)
    if control.lost is not None and not worker.done():  # maybe lost while cancelling
        await _end_migration_sessions(control, worker, settings, log)


async def _cancel_running_statement(
    control: RunControl,
    held: HeldLock,
    worker: asyncio.Future[object],
    log: FilteringBoundLogger,
    what: str = "migration",
) -> None:
    """Until the migration stopped (or the lock, whose connection this uses, is lost)."""
    log.warning(f"Stop requested: cancelling the running {what} statement",
                signal=signal.Signals(control.signum or signal.SIGTERM).name)
    while not worker.done() and control.lost is None:
        await held.cancel_sessions(control.session_tag)
        await asyncio.wait({worker}, timeout=0.2)


RETRY_END_SECONDS = 1.0


async def _end_migration_sessions(
    control: RunControl, worker: asyncio.Future[object], settings: Settings, log: FilteringBoundLogger
) -> None:
    """Terminate the migration's sessions until one was ended or the migration stopped by itself.

    None may be found while the migration is between sessions; it opens no
    new one once stopping (see :func:`dbinit.alembic_runner.session_listeners`).
    """
    import asyncpg

    log.warning("Migration lock lost: ending the migration's database sessions", reason=control.lost)
    while not worker.done():
        try:
            ended = await end_sessions(settings, control.session_tag)
        except DbinitError as exc:  # could not connect (yet): retried below
            log.warning("Cannot end the migration's sessions yet", reason=exc.message)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("Cannot end the migration's sessions yet", reason=describe_connect_error(exc))
        else:
            if ended:
                log.info("Migration sessions ended", sessions=ended)
                return
        await asyncio.wait({worker}, timeout=RETRY_END_SECONDS)
