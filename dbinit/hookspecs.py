"""Every extension point of dbinit, in one place.

A plugin is a module (or object) with functions named like these hooks and
marked ``@dbinit.hookimpl``. Built-in plugins (``dbinit.plugins.*``) use these
same hooks. Plugins are loaded in this order: built-ins, then entry points of
group ``dbinit`` (``[project.entry-points.dbinit]``), then the modules named
in ``DBINIT_PLUGINS``. As in pluggy, the last registered runs first.

dbinit always calls hooks with keyword arguments; an implementation may
accept any subset of the documented arguments.

A plugin that raises is reported with its name: while loading or registering,
exit code 2; while running a hook, exit code 1 (a bug in the plugin). Nothing
a plugin does is ever silently skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from dbinit.checks import Check
    from dbinit.management.base import BaseCommand
    from dbinit.report import MigrateResult, VerifyReport
    from dbinit.strategies import Strategy

hookspec = pluggy.HookspecMarker("dbinit")


@hookspec
def dbinit_checks() -> Sequence[Check]:
    """Contribute verification checks.

    Called once per process, when the checks are first needed (``verify``,
    ``check``, ``migrate``'s final verification, the ASGI integration).

    :return: a sequence of :class:`dbinit.checks.Check`, usually made with the
        :func:`dbinit.checks.check` decorator. Ids must be unique across all
        plugins (a duplicate is a configuration error naming both plugins).
        All results are collected; checks run in registration order
        (built-ins first).
    """


@hookspec
def dbinit_strategies() -> Sequence[Strategy]:
    """Contribute migration strategies (selected by ``--strategy NAME``).

    Called once per ``migrate`` run, before the migration lock is taken.

    :return: a sequence of :class:`dbinit.strategies.Strategy`. Names must be
        unique across plugins. All results are collected. A strategy marked
        ``destructive=True`` is refused with exit code 7 in production unless
        ``DBINIT_ALLOW_DESTRUCTIVE=true``.
    """


@hookspec
def dbinit_commands() -> Mapping[str, str | type[BaseCommand]]:
    """Contribute management commands.

    Called when the command line is dispatched and by ``dbinit help``.

    :return: a mapping of command name to either a
        :class:`dbinit.management.base.BaseCommand` subclass or a string
        ``"package.module"`` naming a module with a ``Command`` class
        (imported only when that command runs). All results are collected;
        a name contributed twice is a configuration error.
    """


@hookspec
def dbinit_verify_finished(report: VerifyReport) -> None:
    """Called after every verification, passed or failed.

    Use it for metrics, notifications or audit logs. It runs in the process
    that verified (a service pod, ``dbinit verify``, ``migrate``'s final
    verification, the ASGI readiness endpoint) and must be quick.

    :param report: the :class:`dbinit.report.VerifyReport`.
    :return: nothing; return values are ignored.
    """


@hookspec
def dbinit_migrate_finished(result: MigrateResult) -> None:
    """Called after ``migrate`` succeeded (the lock is still held).

    :param result: the :class:`dbinit.report.MigrateResult`, with the applied
        revisions in order and the final verification report.
    :return: nothing; return values are ignored.
    """
