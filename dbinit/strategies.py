"""Migration strategies: what ``migrate`` does while it holds the lock.

A :class:`Strategy` is contributed by a plugin through ``dbinit_strategies``.
Its ``run`` is called in a worker thread (never inside dbinit's event loop,
so an async ``env.py`` can call ``asyncio.run``) with a
:class:`StrategyContext`, and returns the revisions it applied, in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import DatabaseState
    from dbinit.interrupts import RunControl
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings


@dataclasses.dataclass(frozen=True)
class StrategyContext:
    """What a strategy gets: settings, the migrations, the state before it ran."""

    settings: Settings
    scripts: MigrationScripts
    state: DatabaseState
    log: FilteringBoundLogger
    control: RunControl | None = None

    def upgrade(self) -> list[str]:
        """Run Alembic ``upgrade heads``, one transaction per migration."""
        from dbinit.alembic_runner import upgrade

        return upgrade(self.settings, self.scripts, self.log, self.control)

    def preflight(self) -> None:
        """Check everything :meth:`upgrade` needs (for a strategy that changes things first)."""
        from dbinit.alembic_runner import preflight

        preflight(self.settings, self.scripts)

    def check_stop(self, what: str = "stopped before the next step") -> None:
        """For long strategies, between steps: raise if a SIGTERM/SIGINT asked to stop
        (:class:`~dbinit.errors.Interrupted`) or the migration lock is no longer held
        (:class:`~dbinit.errors.LockLost`, checked afresh on the lock's session)."""
        if self.control is not None:
            self.control.confirm_lock(what)

    def drop_everything(self) -> int:
        """Drop every object in the target schema; returns how many were dropped."""
        from dbinit.schema_reset import drop_everything

        self.check_stop("stopped before dropping everything")
        return drop_everything(self.settings)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A named way to bring the database to the image's head."""

    name: str
    run: Callable[[StrategyContext], Sequence[str]]
    description: str = ""
    destructive: bool = False
    plugin: str = ""
