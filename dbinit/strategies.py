"""Migration strategies: what ``migrate`` does while it holds the lock.

A :class:`Strategy` is contributed by a plugin through ``dbinit_strategies``.
Its ``run`` is called in a worker thread (never inside dbinit's event loop,
so an async ``env.py`` can call ``asyncio.run``) with a
:class:`StrategyContext`, and returns the revisions it applied, in order.
Its ``check``, if any, is called with the settings before the migration lock
is taken (and by ``migrate --plan``): it raises
:class:`~dbinit.errors.ConfigurationError` for what the strategy cannot run
with, so a job fails at once (exit 2) instead of after waiting for the lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import DatabaseState
    from dbinit.identity import DatabaseIdentity
    from dbinit.interrupts import RunControl
    from dbinit.pluginmanager import Registry
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
    #: the run's plugins: :meth:`upgrade` enters their ``dbinit_migration_context``
    registry: Registry | None = None
    #: the database the migration lock is on (read on the lock's session): :meth:`upgrade`
    #: refuses to run when env.py connects to another one (None: not checked)
    identity: DatabaseIdentity | None = None

    def upgrade(self) -> list[str]:
        """Run Alembic ``upgrade heads``, one transaction per migration.

        Inside the context managers plugins give through
        ``dbinit_migration_context`` (e.g. a Flask application context). Before
        the first revision runs, env.py's connection must be on the database the
        lock is on (``identity``), else :class:`~dbinit.errors.ConfigurationError`.
        """
        from dbinit.alembic_runner import upgrade
        from dbinit.operations import Operations

        contexts = self.registry.migration_contexts(self.settings) if self.registry is not None else []
        return upgrade(
            self.settings, self.scripts, self.log, self.control, contexts=contexts, identity=self.identity,
            operations=Operations(self.registry, self.settings),
        )

    def run_command(self, argv: Sequence[str] | None = None) -> list[str]:
        """Run a project's own migrator (default: ``DBINIT_MIGRATE_COMMAND``) as a child process.

        Under this run's lock and stop handling; returns the revisions it
        applied (read from the version table before and after, in graph
        order). See :mod:`dbinit.command_runner`.
        """
        from dbinit.command_runner import run_command

        return run_command(self, argv)

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
    #: called with the settings before the lock is taken; raises ConfigurationError
    check: Callable[[Settings], None] | None = None
    #: whether ``run`` runs Alembic in this process (and so needs Alembic's
    #: configuration, not only the versions folder dbinit verifies against)
    runs_alembic: bool = True
    #: whether ``DB_FORCE_RECREATE=true`` selects this strategy (the built-in ``recreate``
    #: does; at most one registered strategy may say so)
    force_recreate: bool = False
