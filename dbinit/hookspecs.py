"""Every extension point of dbinit, in one place (documented in ``docs/plugin_hooks.md``).

A plugin is a module (or a class, or an object) with functions named like
these hooks and marked ``@dbinit.hookimpl``. Built-in plugins
(``dbinit.plugins.*``) use these same hooks. pluggy calls every hook; dbinit
adds nothing to its semantics.

**Registration order.** dbinit registers the built-ins
(``dbinit.plugins.checks``, ``dbinit.plugins.strategies``,
``dbinit.plugins.commands``), then the entry points of group ``dbinit``
(``[project.entry-points.dbinit]``, in ``sys.path`` order), then the modules
of the ``plugins`` setting (``DBINIT_PLUGINS``, ``.env`` or ``plugins`` in
``[tool.dbinit]``), in the order listed.

**Call order** (pluggy's, the same for every hook):

1. Wrappers (``wrapper=True``, and old-style ``hookwrapper=True``) run around
   all the others: ``tryfirst`` wrappers outermost, then plain wrappers, then
   ``trylast`` wrappers innermost; in each group, the last registered is
   outermost.
2. Then the other implementations: the ``tryfirst`` ones, then the plain
   ones, then the ``trylast`` ones; in each group, the last registered first.

So without ``tryfirst``/``trylast`` a user gets: the last module of
``DBINIT_PLUGINS`` first, back to its first, then the entry points from the
last found to the first, then the built-ins. The built-in ``dbinit_checks`` is
``tryfirst`` (the built-in checks run first: other checks may ``requires``
them); the built-in ``dbinit_strategies`` and ``dbinit_commands`` are
``trylast``. A hook's results come in that call order (a ``None`` is not a
result); each wrapper gets that list from its ``yield`` (a
``pluggy.Result`` for an old-style one) and returns the list the next
wrapper out, then dbinit, gets. A hook marked ``firstresult`` stops at the
first implementation that returns something other than ``None``; that is its
result.

**Arguments.** dbinit calls hooks with keyword arguments; an implementation
names any subset of them (pluggy passes only those). Every hook gets
``settings``, dbinit's :class:`dbinit.settings.Settings` for the run. A
plugin's own options are read with :class:`dbinit.settings.PluginSettings`
(``[tool.dbinit.<plugin>]``, ``DBINIT_<PLUGIN>_<OPTION>``).

**Failures.** A plugin that raises is reported with its name (the plugin whose
implementation, wrappers included, ran the innermost frame of the
traceback): while loading or registering, exit code 2; while running a hook,
exit code 1 (a bug in the plugin), unless the hook says otherwise
(``dbinit_migration_context``: the application's context failing to start is
a configuration error, exit 2), or what it raised is a
:class:`dbinit.errors.DbinitError` such as the
:class:`~dbinit.errors.ConfigurationError` of its own invalid options (its
own exit code, 2). A result that breaks a hook's contract (not a sequence, an
item of the wrong type, a duplicate name) names the plugin that returned it,
or the wrapper that put it there: exit 2. Nothing a plugin does is ever
silently skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dbinit.checks import Check
    from dbinit.lint.rules import LintRule
    from dbinit.management.base import BaseCommand
    from dbinit.report import MigrateResult, VerifyReport
    from dbinit.settings import Settings
    from dbinit.strategies import Strategy

hookspec = pluggy.HookspecMarker("dbinit")


@hookspec
def dbinit_checks(settings: Settings) -> Sequence[Check]:
    """Contribute verification checks.

    Called once per process (per settings), when the checks are first needed
    (``verify``, ``check``, ``wait``, ``migrate``'s final verification,
    ``dbinit plugins``, the ASGI integration).

    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a sequence of :class:`dbinit.checks.Check`, usually made with the
        :func:`dbinit.checks.check` decorator. Ids must be unique across all
        plugins (a duplicate is a configuration error naming both plugins).
        All results are collected; checks run in the results' order
        (the built-ins first: their implementation is ``tryfirst``).
    """


@hookspec
def dbinit_strategies(settings: Settings) -> Sequence[Strategy]:
    """Contribute migration strategies (selected by ``--strategy NAME``).

    Called once per ``migrate`` run, before the migration lock is taken (and
    by ``dbinit plugins``).

    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a sequence of :class:`dbinit.strategies.Strategy`. Names must be
        unique across plugins. All results are collected. A strategy marked
        ``destructive=True`` is refused with exit code 7 in production unless
        ``DBINIT_ALLOW_DESTRUCTIVE=true``. The one strategy marked
        ``force_recreate=True`` (the built-in ``recreate``) is what
        ``DB_FORCE_RECREATE=true`` selects; two are a configuration error.
    """


@hookspec
def dbinit_commands(settings: Settings | None) -> Mapping[str, str | type[BaseCommand]]:
    """Contribute management commands.

    Called when the command line is dispatched (and so by ``dbinit help``),
    and by ``dbinit plugins``.

    :param settings: the settings as read from the environment, ``.env`` and
        ``[tool.dbinit]`` (the command's own flags are not parsed yet), or
        None when they are invalid: the command reports that itself (exit 2).

    :return: a mapping of command name to either a
        :class:`dbinit.management.base.BaseCommand` subclass or a string
        ``"package.module"`` naming a module with a ``Command`` class
        (imported only when that command runs). All results are collected;
        a name contributed twice is a configuration error.
    """


@hookspec
def dbinit_verify_finished(report: VerifyReport, settings: Settings) -> None:
    """Called after every verification, passed or failed.

    Use it for metrics, notifications or audit logs. It runs in the process
    that verified (a service pod, ``dbinit verify``, ``migrate``'s final
    verification, the ASGI readiness endpoint) and must be quick.

    :param report: the :class:`dbinit.report.VerifyReport`.
    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: nothing; return values are ignored.
    """


@hookspec
def dbinit_migrate_finished(result: MigrateResult, settings: Settings) -> None:
    """Called after ``migrate`` succeeded (the lock is still held).

    :param result: the :class:`dbinit.report.MigrateResult`, with the applied
        revisions in order and the final verification report.
    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: nothing; return values are ignored.
    """


@hookspec
def dbinit_migration_context(settings: Settings) -> AbstractContextManager[object] | None:
    """Give Alembic's run in dbinit a context of the application's, e.g. Flask's app context.

    For an ``env.py`` that needs the application around it (Flask-Migrate's
    uses ``current_app``)::

        @hookimpl
        def dbinit_migration_context(settings):
            from myapp import create_app
            return create_app().app_context()

    Called once each time dbinit runs Alembic's ``env.py`` itself: the
    ``upgrade`` and ``recreate`` strategies of ``migrate`` (after the
    migration lock is held, in the migration thread, just before ``env.py``
    runs; the context is entered and exited in that same thread) and
    ``migrate --sql``. Never by ``verify``, ``wait`` or the readiness probe
    (they run no ``env.py``), nor by the ``command`` strategy (the project's
    own command makes its own context).

    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a context manager, or None for nothing to enter. *All* results
        are entered, in the results' order (pluggy's call order: the last
        registered first, see above), the first outermost, and exited in reverse order
        once Alembic's run ends, whether it succeeded or failed. The value
        ``__enter__`` returns is ignored, and so is ``__exit__``'s: a context
        cannot swallow a migration's failure. A plugin whose hook or whose
        ``__enter__`` raises is named, and nothing is migrated: exit 2 (as an
        ``env.py`` that fails before the first migration), or 3 when what it
        raised is a failure to reach the database; a plugin whose ``__exit__``
        raises is named with exit 1. A result that is not a context manager
        is exit 2, naming the plugin.
    """


@hookspec
def dbinit_operation(
    operation: str, attributes: Mapping[str, str | int | float | bool], settings: Settings
) -> AbstractContextManager[object] | None:
    """Observe one of dbinit's operations while it runs: a span, a timer, a gauge.

    For traces and metrics: dbinit enters the context manager when the
    operation starts and exits it when the operation ends, with the exception
    if it failed (``__exit__(type, exc, tb)``)::

        @hookimpl
        def dbinit_operation(operation, attributes):
            return tracer.start_as_current_span(f"dbinit.{operation}", attributes=dict(attributes))

    Called at the start of each operation (see :mod:`dbinit.operations` for
    the attributes of each):

    - ``verify``: every verification (``dbinit verify``, the gate's startup,
      ``migrate``'s final verification, ``wait --until-verified``'s attempts);
      ``dbinit_verify_finished`` fires inside it, so an observer can read the
      report there while its span or timer is still open;
    - ``readiness``: the ASGI gate's readiness re-check (a verification on
      its kept connection, reconnecting first if it was lost, so an unreachable
      database ends it with ``DatabaseUnreachable``; ``dbinit_verify_finished``
      fires inside it too); each startup attempt of the gate is a ``verify``
      operation including its connect;
    - ``migrate``: a ``migrate`` run, from before the lock to the end;
    - ``lock_wait``: waiting for (and taking) the migration lock;
    - ``revision``: one revision applied by Alembic, in the migration thread
      (it ends just before the revision's transaction commits);
    - ``after_migrate``: the after-migrate step (``DBINIT_AFTER_MIGRATE``).

    Nested operations nest their contexts (``revision`` inside ``migrate``);
    the thread's context variables are those of the enclosing operation, so a
    tracer's current span is the parent.

    :param operation: the operation's name (above).
    :param attributes: what it is about; values are str, int, float or bool
        and never hold a password (a database is its display name).
    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a context manager, or None. *All* results are entered, the first
        outermost, and exited in reverse order; ``__exit__``'s return value is
        ignored (an observer cannot swallow a failure). A hook or context that
        raises is a bug in its plugin (exit 1, the plugin named).
    """


@hookspec
def dbinit_asgi_endpoints(settings: Settings) -> Mapping[str, Callable[..., Awaitable[None]]] | None:
    """Serve HTTP endpoints of a plugin's on the service's port, beside the probes.

    For a metrics endpoint (``/metrics``) or a plugin's own status page::

        @hookimpl
        def dbinit_asgi_endpoints(settings):
            return {"/metrics": metrics_app}

    Called once, at the ASGI gate's startup (after the settings loaded, before
    verification). The gate answers an ``http`` request whose path is one of
    the keys by calling that ASGI 3 application (``await app(scope, receive,
    send)``) instead of the service's; every other request is the service's.

    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a mapping of path (``/...``) to ASGI application, or None. All
        results are collected; a path taken twice (by two plugins, or by a
        plugin and ``DBINIT_READINESS_PATH``/``DBINIT_LIVENESS_PATH``) is a
        configuration error naming the plugin (exit 2).
    """


@hookspec
def dbinit_lint_rules(settings: Settings) -> Sequence[LintRule]:
    """Contribute lint rules (``dbinit lint``, ``dbinit check --tag lint``).

    ::

        @hookimpl
        def dbinit_lint_rules(settings):
            return [LintRule("acme.L900", "TRUNCATE", no_truncate, level=Level.ERROR,
                             hint="Delete in batches from a job instead")]

    Called once per lint run, before any revision is rendered. A rule's
    ``check`` gets each revision as a :class:`dbinit.lint.rules.RevisionContext`
    (its statements as PostgreSQL's parser classified them, its phase, the
    release) and yields :class:`dbinit.lint.rules.Hit` objects; it never parses
    SQL nor connects to a database.

    :param settings: the run's :class:`dbinit.settings.Settings`.
    :return: a sequence of :class:`dbinit.lint.rules.LintRule`. Ids must be
        unique across plugins (a duplicate is a configuration error naming both
        plugins). All results are collected; rules run in the results' order
        (dbinit's own first: its implementation is ``tryfirst``). A suppression
        in a revision file, ``disable`` and ``levels`` in ``[tool.dbinit.lint]``
        name a rule by its id. A rule whose ``check`` raises is a bug in its
        plugin (exit 1, the plugin named).
    """
