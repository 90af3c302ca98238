"""Plugins' context managers around dbinit's work: entering them, and observing operations.

Two hooks give context managers that dbinit enters around its own work:
``dbinit_migration_context`` (the application's context around Alembic's run)
and ``dbinit_operation`` (an observer around each operation: a span, a timer).
:func:`entered` enters a list of them, the first outermost, and exits them in
reverse order whatever the body raised, never letting one swallow a failure,
and blaming a plugin whose context raises. :class:`Operations` is what the
call sites use: ``with operations.run("verify", service=..., database=...):``.

Operation names and their attributes (values are str, int, float or bool;
never a password: a database is its display name):

=================  ==========================================================
``verify``         one verification: ``service``, ``database``, ``checks``
``readiness``      the ASGI gate's readiness re-check: ``service``, ``database``
``migrate``        a ``migrate`` run: ``service``, ``database``, ``strategy``
``lock_wait``      waiting for the migration lock: ``service``, ``database``
``revision``       one revision applied by Alembic (in the migration thread):
                   ``revision``, ``index``, ``count``
``after_migrate``  the after-migrate step: ``command``
=================  ==========================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from dbinit.errors import FOREIGN_FAILURES, DbinitError, PluginError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dbinit.pluginmanager import Registry
    from dbinit.settings import Settings

#: A plugin's context manager, with the plugin's name.
PluginContext = tuple[str, "AbstractContextManager[object]"]
#: An attribute value of an operation.
Attribute = str | int | float | bool
#: What ``dbinit_operation`` is told: the operation names dbinit uses.
OPERATIONS = ("verify", "readiness", "migrate", "lock_wait", "revision", "after_migrate")


def _bug_on_enter(plugin: str, hook: str, exc: BaseException) -> DbinitError:
    return PluginError(plugin, f"entering its {hook} raised {type(exc).__name__}: {exc}", internal=True)


@contextlib.contextmanager
def entered(
    contexts: Sequence[PluginContext],
    hook: str,
    on_enter_failure: Callable[[str, str, BaseException], DbinitError] = _bug_on_enter,
) -> Iterator[None]:
    """Enter ``contexts`` (from ``hook``), the first outermost; exit them in reverse order.

    Each is exited whatever the body raised; what its ``__exit__`` returns is
    ignored (a context cannot swallow a failure). A context that raises on
    entry is blamed on its plugin through ``on_enter_failure`` (default: a bug
    in the plugin, exit 1); one that raises on exit is a bug in the plugin.
    """
    if not contexts:
        yield
        return
    (plugin, manager), rest = contexts[0], contexts[1:]
    try:
        manager.__enter__()
    except FOREIGN_FAILURES as exc:
        raise on_enter_failure(plugin, hook, exc) from exc
    try:
        with entered(rest, hook, on_enter_failure):
            yield
    except BaseException as exc:
        try:
            manager.__exit__(type(exc), exc, exc.__traceback__)
        except FOREIGN_FAILURES as exit_exc:
            if exit_exc is exc:
                raise
            raise PluginError(
                plugin, f"leaving its {hook} raised {type(exit_exc).__name__}: "
                f"{exit_exc} (after: {type(exc).__name__}: {exc})", internal=True,
            ) from exit_exc
        raise
    try:
        manager.__exit__(None, None, None)
    except FOREIGN_FAILURES as exc:
        raise PluginError(
            plugin, f"leaving its {hook} raised {type(exc).__name__}: {exc}", internal=True
        ) from exc


@dataclasses.dataclass(frozen=True)
class Operations:
    """The ``dbinit_operation`` observers of one registry, for one run's settings."""

    registry: Registry | None
    settings: Settings

    @contextlib.contextmanager
    def run(self, operation: str, **attributes: Attribute) -> Iterator[None]:
        """Run the body as ``operation``, inside every plugin's observer for it."""
        contexts = (
            self.registry.operation_contexts(operation, attributes, self.settings)
            if self.registry is not None else []
        )
        with entered(contexts, "dbinit_operation"):
            yield


def no_operations(settings: Settings) -> Operations:
    """Observers of nothing (a caller without a registry)."""
    return Operations(None, settings)
