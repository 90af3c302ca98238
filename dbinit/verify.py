"""Verification: facts, then checks, then a report. Never writes.

This is the hot path of every service pod: it imports neither SQLAlchemy nor
Alembic nor the migration files, and reads the database in one round trip.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.checks import Check, Facts, Level, run_checks
from dbinit.database import Probe
from dbinit.errors import FOREIGN_FAILURES, PluginError
from dbinit.facts import read_scripts, read_state
from dbinit.operations import Operations
from dbinit.report import VerifyReport
from dbinit.revisions.scripts import MigrationScripts

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.pluginmanager import Registry
    from dbinit.settings import Settings


async def verify(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    *,
    checks: Sequence[Check] | None = None,
    scripts: MigrationScripts | None = None,
    probe: Probe | None = None,
    fail_level: Level = Level.ERROR,
    notify: bool = True,
    quiet: bool = False,
    budget: float | None = None,
    operation: str | None = "verify",
) -> VerifyReport:
    """Run ``checks`` (default: all registered) and return the report.

    ``scripts`` and ``probe`` let a long-lived caller (the ASGI integration)
    read the migrations once and keep one connection; ``quiet`` (its
    readiness re-checks) logs nothing: the caller logs changes. ``budget``
    caps the connect and query timeouts (``wait``'s deadline). Raises
    :class:`DatabaseUnreachable` if the database cannot be reached. The whole
    run is the ``dbinit_operation`` ``operation`` (``verify``, or the gate's
    ``readiness``); ``dbinit_verify_finished`` fires inside it. None: the caller
    runs the operation itself, around more than this call (the gate: connecting too).
    """
    observed = (
        Operations(registry, settings).run(operation, service=settings.service,
                                           database=settings.url.display_name)
        if operation is not None else contextlib.nullcontext()
    )
    with observed:
        return await _verify(
            settings, registry, log, checks=checks, scripts=scripts, probe=probe,
            fail_level=fail_level, notify=notify, quiet=quiet, budget=budget,
        )


async def _verify(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    *,
    checks: Sequence[Check] | None,
    scripts: MigrationScripts | None,
    probe: Probe | None,
    fail_level: Level,
    notify: bool,
    quiet: bool,
    budget: float | None,
) -> VerifyReport:
    started = time.perf_counter()
    selected = list(registry.checks(settings) if checks is None else checks)
    reads_database = any(c.requires_database for c in selected)
    ran = [c.id for c in selected]
    if not quiet:
        if reads_database:
            log.info(
                "Database verification mode - checking database is ready",
                database=settings.url.display_name,
            )
        else:
            log.info("Running checks that do not read the database", checks=ran)
    if scripts is None:
        scripts = read_scripts(settings)
    if scripts.manifest_note and not quiet:
        log.warning(
            "Revision manifest not used: run `dbinit manifest` again", reason=scripts.manifest_note
        )
    if scripts.unreadable:
        log.warning(
            "Migration files not readable statically; Alembic was used instead",
            files=list(scripts.unreadable),
        )
    state = None
    if reads_database:
        if probe is not None:
            state = await probe.read_state(count_tables=not quiet)
        else:
            state = await read_state(settings, budget=budget, heads=scripts.heads)
    facts = Facts(settings=settings, scripts=scripts, state=state)
    if state is not None and not quiet:
        assert facts.verdict is not None
        log.info(
            "Database state checked",
            table_count=state.table_count,
            version_table=state.version_table_exists,
            current_revision=state.current_revision,
            verdict=facts.verdict.name,
            compatible_since=facts.verdict.compatible_since,
        )
    try:
        outcomes = run_checks(selected, facts, fail_level=fail_level, silenced=settings.silenced_checks)
    except PluginError:
        raise
    except FOREIGN_FAILURES as exc:
        failing = _failing_check(exc, selected)
        raise PluginError(
            failing.plugin if failing else "unknown",
            f"check {failing.id if failing else '?'} raised {type(exc).__name__}: {exc}",
            internal=True,
        ) from exc
    report = VerifyReport(
        service=settings.service,
        database=settings.url.display_name,
        outcomes=tuple(outcomes),
        migration_count=scripts.count,
        head_revisions=scripts.heads,
        current_revision=state.current_revision if state else None,
        table_count=state.table_count if state else None,
        duration_ms=(time.perf_counter() - started) * 1000,
        migrations_source=scripts.source,
        database_read=reads_database,
        verdict=facts.verdict.name if facts.verdict is not None else None,
        compatible_since=facts.verdict.compatible_since if facts.verdict is not None else None,
    )
    if not quiet:
        _log_outcome(log, report, ran)
    if notify:
        registry.notify("dbinit_verify_finished", report=report, settings=settings)
    return report


def _log_outcome(log: FilteringBoundLogger, report: VerifyReport, ran: list[str]) -> None:
    """The report's log lines: the database's verification, or only checks when none read it."""
    if report.ok and report.database_read:
        log.info(
            "Database verification successful",
            database=report.database,
            migration_count=report.migration_count,
            current_revision=report.current_revision,
            table_count=report.table_count,
        )
    elif report.ok:
        log.info("Checks passed", checks=ran, migration_count=report.migration_count)
    for outcome in report.failed:
        log.error(
            "Database verification failed" if report.database_read else "Check failed",
            **({"database": report.database} if report.database_read else {}),
            check=outcome.check.id,
            name=outcome.check.name,
            reason=outcome.message,
            hint=outcome.hint,
        )
    log.info(
        "Database verification completed" if report.database_read else "Checks completed",
        ok=report.ok,
        **({"database": report.database} if report.database_read else {}),
        duration_ms=round(report.duration_ms, 2),
    )


def _failing_check(exc: BaseException, checks: Sequence[Check]) -> Check | None:
    from dbinit.pluginmanager import innermost_owner

    return innermost_owner(exc, {getattr(c.func, "__code__", None): c for c in checks})
