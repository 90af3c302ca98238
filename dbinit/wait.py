"""Waiting for the database (init containers).

``wait_for_database`` connects with exponential backoff and jitter until the
deadline, logging each attempt's reason. ``wait_until_verified`` keeps going
until verification passes: the init container that waits for the migration
job through the database itself, with no Kubernetes API access.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.database import open_probe
from dbinit.errors import DatabaseUnreachable, NotReady
from dbinit.facts import probe_options, read_scripts, read_state
from dbinit.lock import current_holder
from dbinit.verify import verify

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import DatabaseState, Probe
    from dbinit.pluginmanager import Registry
    from dbinit.report import VerifyReport
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings

INITIAL_DELAY = 0.1
MAX_DELAY = 5.0


def backoff_delays(initial: float = INITIAL_DELAY, maximum: float = MAX_DELAY):  # type: ignore[no-untyped-def]
    """Exponential backoff with full jitter: 0.1, 0.2, 0.4 … capped at ``maximum``."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, maximum)


async def wait_for_database(settings: Settings, log: FilteringBoundLogger, timeout: float) -> int:
    """Return the number of attempts once a connection succeeds; raise at the timeout."""
    deadline = time.monotonic() + timeout
    delays = backoff_delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            await read_state(settings, "wait", budget=deadline - time.monotonic())
            log.info("Database is accepting connections", attempt=attempt)
            return attempt
        except DatabaseUnreachable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnreachable(
                    f"{exc.message} (gave up after {attempt} attempts, {timeout:g}s)",
                    hint=exc.hint,
                ) from None
            delay = min(next(delays), remaining)
            log.info(
                "Database not reachable yet",
                attempt=attempt,
                reason=exc.message,
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)


async def wait_until_verified(
    settings: Settings, registry: Registry, log: FilteringBoundLogger, timeout: float
) -> VerifyReport:
    """Poll until verification passes; raise :class:`NotReady` (exit 4) at the timeout."""
    deadline = time.monotonic() + timeout
    delays = backoff_delays(initial=0.25, maximum=MAX_DELAY)
    scripts = read_scripts(settings)
    attempt = 0
    last: str = "not checked"
    while True:
        attempt += 1
        try:
            report, holder = await _poll(settings, registry, log, scripts, deadline - time.monotonic())
            if report.ok:
                log.info("Database verified: ready", attempt=attempt)
                return report
            last, hint = report.message, report.hint
            if holder is not None:
                last = f"migration in progress (held by {holder}); {last}"
        except DatabaseUnreachable as exc:
            last, hint = exc.message, exc.hint
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(
                f"database not ready after {timeout:g}s ({attempt} attempts): {last}", hint=hint
            )
        delay = min(next(delays), remaining)
        log.info(
            "Waiting for the database to be ready",
            attempt=attempt,
            reason=last,
            retry_in_s=round(delay, 2),
        )
        await asyncio.sleep(delay)


async def _poll(
    settings: Settings,
    registry: Registry,
    log: FilteringBoundLogger,
    scripts: MigrationScripts,
    budget: float,
) -> tuple[VerifyReport, str | None]:
    """One verification and, when not ready, who holds the migration lock: one session.

    A hundred init containers polling at once cost the server a hundred
    sessions, not two hundred (bench/rollout.py), and each is closed as soon
    as both answers are in, before the checks run and log.
    """
    options = probe_options(settings, "verify", budget=budget, heads=scripts.heads)
    poll = _PollProbe(await open_probe(settings.url, options), settings, scripts.heads)
    try:
        report = await verify(settings, registry, log, scripts=scripts, probe=poll, budget=budget)
    finally:
        await poll.close()
    return report, None if report.ok else poll.holder


class _PollProbe:
    """A probe for one poll: reads the state, then (not at the head yet) asks who holds the
    migration lock on the same session, and closes it."""

    def __init__(self, probe: Probe, settings: Settings, heads: Sequence[str]) -> None:
        self._probe: Probe | None = probe
        self._settings = settings
        self._heads = sorted(heads)
        self.holder: str | None = None

    async def read_state(self, *, count_tables: bool = True) -> DatabaseState:
        assert self._probe is not None, "a poll reads the state once"
        try:
            state = await self._probe.read_state(count_tables=count_tables)
            if sorted(state.versions) != self._heads:
                self.holder = await current_holder(self._settings, self._probe)
            return state
        finally:
            await self.close()

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.close()
