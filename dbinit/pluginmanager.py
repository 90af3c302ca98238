"""Building the plugin manager and collecting what plugins contribute.

Nothing happens at import time. :func:`build_plugin_manager` registers the
built-ins, then entry points of group ``dbinit``, then ``DBINIT_PLUGINS``
modules, and validates every hook implementation. :class:`Registry` collects
checks, strategies and commands with the name of the plugin behind each, and
turns any plugin failure into a :class:`PluginError` naming that plugin.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from dbinit import hookspecs
from dbinit.checks import Check
from dbinit.errors import FOREIGN_FAILURES, ExitCode, PluginError, is_connection_failure
from dbinit.strategies import Strategy

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dbinit.settings import Settings

PROJECT = "dbinit"
T = TypeVar("T")

#: The built-in plugins, registered first, through the public hooks.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "dbinit.plugins.checks",
    "dbinit.plugins.strategies",
    "dbinit.plugins.commands",
)


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name and where it came from."""

    name: str
    source: str  # "builtin", "entrypoint", "DBINIT_PLUGINS"
    module: str
    distribution: str = ""


def build_plugin_manager(
    extra_modules: Sequence[str] = (),
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Make a plugin manager with every plugin loaded and validated."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for module_name in BUILTIN_PLUGINS:
        _register(pm, importlib.import_module(module_name), module_name)
        infos.append(PluginInfo(module_name, "builtin", module_name))
    for entry_point in find_entry_points(PROJECT):
        if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                entry_point.name,
                f"cannot be loaded from entry point {entry_point.value!r}: "
                f"{type(exc).__name__}: {exc}",
                hint="Fix or uninstall the package providing it",
            ) from exc
        _register(pm, plugin, entry_point.name)
        infos.append(PluginInfo(entry_point.name, "entrypoint", entry_point.value, entry_point.distribution))
    for module_name in extra_modules:
        if pm.get_plugin(module_name) is not None:
            continue
        try:
            module = importlib.import_module(module_name)
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                module_name,
                f"cannot be imported (from DBINIT_PLUGINS): {type(exc).__name__}: {exc}",
                hint="Check the module name in DBINIT_PLUGINS and that it is installed",
            ) from exc
        _register(pm, module, module_name)
        infos.append(PluginInfo(module_name, "DBINIT_PLUGINS", module_name))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            pm.get_name(exc.plugin) or str(exc.plugin),
            str(exc),
            hint="Hook names must match dbinit.hookspecs (see `dbinit plugins`)",
        ) from None
    return pm, infos


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    """One ``[dbinit]`` entry point of an installed distribution."""

    name: str
    value: str
    distribution: str

    def load(self) -> object:
        module_name, _, attribute = self.value.partition(":")
        module: object = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            module = getattr(module, part)
        return module


def find_entry_points(group: str) -> list[EntryPoint]:
    """Entry points of ``group``, found by reading ``entry_points.txt`` files.

    The same files ``importlib.metadata`` reads, on the same ``sys.path``,
    first distribution wins; without importing ``importlib.metadata`` (and the
    email parser it brings), which costs more than the rest of a verification
    start-up. ``importlib.metadata.entry_points`` is the oracle in the tests.
    """
    found: dict[str, EntryPoint] = {}
    seen_distributions: set[str] = set()
    header = f"[{group}]"
    for folder in sys.path:
        try:
            entries = [e for e in os.scandir(folder or ".") if e.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            distribution = entry.name.rsplit(".", 1)[0].split("-")[0]
            key = distribution.lower().replace("_", "-")
            if key in seen_distributions:
                continue
            seen_distributions.add(key)
            try:
                with open(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8") as handle:
                    text = handle.read()
            except OSError:
                continue
            if header not in text:
                continue
            section = False
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("["):
                    section = line == header
                elif section and "=" in line and not line.startswith(("#", ";")):
                    name, _, value = line.partition("=")
                    name = name.strip()
                    if name not in found:
                        found[name] = EntryPoint(name, value.strip(), distribution.replace("_", "-"))
    return list(found.values())


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            name, str(exc), hint="See dbinit.hookspecs for the hook signatures"
        ) from None
    except ValueError as exc:
        raise PluginError(name, str(exc)) from None


def _call_each(
    pm: pluggy.PluginManager, hook_name: str, **kwargs: Any
) -> Iterator[tuple[str, Any]]:
    """Call every implementation of a collecting hook, naming its plugin."""
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():  # storage order: trylast built-ins first
        try:
            result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                impl.plugin_name,
                f"hook {hook_name} raised {type(exc).__name__}: {exc}",
                internal=True,
            ) from exc
        if result is not None:
            yield impl.plugin_name, result


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call a notification hook; an exception is reported with the plugin's name."""
    caller = getattr(pm.hook, hook_name)
    try:
        caller(**kwargs)
    except FOREIGN_FAILURES as exc:
        raise PluginError(
            _blame(exc, caller.get_hookimpls()),
            f"hook {hook_name} raised {type(exc).__name__}: {exc}",
            internal=True,
        ) from exc


def innermost_owner(exc: BaseException, owners: Mapping[Any, T]) -> T | None:
    """The owner of the innermost traceback frame whose code object is in ``owners``.

    How a failure is blamed on a plugin (or a check) without wrapping every call.
    """
    found: T | None = None
    tb = exc.__traceback__
    while tb is not None:
        found = owners.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def _blame(exc: BaseException, impls: Sequence[pluggy.HookImpl]) -> str:
    codes = {
        impl.function.__code__: impl.plugin_name
        for impl in impls
        if hasattr(impl.function, "__code__")
    }
    return innermost_owner(exc, codes) or "unknown plugin"


_LOADED: dict[tuple[str, ...], Registry] = {}


@dataclasses.dataclass
class Registry:
    """The plugin manager plus everything plugins contribute, validated."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]

    @classmethod
    def load(cls, extra_modules: Sequence[str] = ()) -> Registry:
        """The registry for these extra modules, built once per process.

        The dispatcher (to find the command) and the command (to run it) ask
        for the same plugins: they get the same registry, loaded once.
        """
        key = tuple(extra_modules)
        if key not in _LOADED:
            pm, infos = build_plugin_manager(key)
            _LOADED[key] = cls(pm, infos)
        return _LOADED[key]

    @functools.cached_property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self._collect("dbinit_checks", Check, lambda c: c.id, "check id"))

    @functools.cached_property
    def strategies(self) -> Mapping[str, Strategy]:
        items = self._collect("dbinit_strategies", Strategy, lambda s: s.name, "strategy name")
        return {s.name: s for s in items}

    @functools.cached_property
    def commands(self) -> Mapping[str, tuple[str, Any]]:
        """Command name -> (plugin name, class or module path)."""
        found: dict[str, tuple[str, Any]] = {}
        for plugin, mapping in _call_each(self.pm, "dbinit_commands"):
            if not isinstance(mapping, Mapping):
                raise PluginError(
                    plugin, "dbinit_commands must return a mapping of name to command"
                )
            for name, spec in mapping.items():
                if name in found:
                    raise PluginError(
                        plugin,
                        f"command {name!r} is already provided by plugin {found[name][0]!r}",
                        hint="Rename one of the commands",
                    )
                found[name] = (plugin, spec)
        return dict(sorted(found.items()))

    def _collect(self, hook: str, kind: type, key: Callable[[Any], str], what: str) -> list[Any]:
        items: list[Any] = []
        owners: dict[str, str] = {}
        for plugin, result in _call_each(self.pm, hook):
            if isinstance(result, (str, bytes)) or not isinstance(
                result, (Sequence, types.GeneratorType)
            ):
                raise PluginError(plugin, f"{hook} must return a sequence of {kind.__name__}")
            for item in result:
                if not isinstance(item, kind):
                    raise PluginError(
                        plugin, f"{hook} returned {type(item).__name__}, not {kind.__name__}"
                    )
                name = key(item)
                if name in owners:
                    raise PluginError(
                        plugin,
                        f"{what} {name!r} is already provided by plugin {owners[name]!r}",
                        hint=f"Each {what} must be unique",
                    )
                owners[name] = plugin
                items.append(dataclasses.replace(item, plugin=plugin))
        return items

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        notify(self.pm, hook_name, **kwargs)

    def migration_contexts(self, settings: Settings) -> list[tuple[str, AbstractContextManager[object]]]:
        """``dbinit_migration_context``: each plugin's context manager, with the plugin's name.

        Called anew for each run of Alembic (a context such as Flask's is
        made for one use). A plugin that raises, or returns something that
        is not a context manager, is named (:func:`context_failure`).
        """
        found: list[tuple[str, AbstractContextManager[object]]] = []
        hook = "dbinit_migration_context"
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                result = impl.function(**({"settings": settings} if "settings" in impl.argnames else {}))
            except FOREIGN_FAILURES as exc:
                raise context_failure(impl.plugin_name, f"hook {hook}", exc) from exc
            if result is None:
                continue
            if not (hasattr(result, "__enter__") and hasattr(result, "__exit__")):
                raise PluginError(
                    impl.plugin_name,
                    f"{hook} returned {type(result).__name__}, not a context manager",
                    hint="Return a context manager (e.g. app.app_context()) or None",
                )
            found.append((impl.plugin_name, result))
        return found


    def operation_contexts(
        self, operation: str, attributes: Mapping[str, Any], settings: Settings
    ) -> list[tuple[str, AbstractContextManager[object]]]:
        """``dbinit_operation``: each observer's context manager for ``operation``, with its plugin."""
        hook = "dbinit_operation"
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        if not impls:
            return []
        given = {"operation": operation, "attributes": types.MappingProxyType(dict(attributes)),
                 "settings": settings}
        found: list[tuple[str, AbstractContextManager[object]]] = []
        for impl in impls:
            try:
                result = impl.function(**{k: v for k, v in given.items() if k in impl.argnames})
            except FOREIGN_FAILURES as exc:
                raise PluginError(impl.plugin_name, f"hook {hook} raised {type(exc).__name__}: {exc}",
                                  internal=True) from exc
            if result is None:
                continue
            if not (hasattr(result, "__enter__") and hasattr(result, "__exit__")):
                raise PluginError(
                    impl.plugin_name, f"{hook} returned {type(result).__name__}, not a context manager",
                    hint="Return a context manager (e.g. a tracer's span) or None", internal=True,
                )
            found.append((impl.plugin_name, result))
        return found

    def asgi_endpoints(self, settings: Settings, taken: Sequence[str] = ()) -> dict[str, Any]:
        """``dbinit_asgi_endpoints``: path -> ASGI app, each path once (``taken``: the probes')."""
        hook = "dbinit_asgi_endpoints"
        found: dict[str, Any] = {}
        owners = dict.fromkeys(taken, "dbinit (DBINIT_READINESS_PATH / DBINIT_LIVENESS_PATH)")
        for plugin, mapping in _call_each(self.pm, hook, settings=settings):
            if not isinstance(mapping, Mapping):
                raise PluginError(plugin, f"{hook} must return a mapping of path to ASGI application")
            for path, app in mapping.items():
                if not (isinstance(path, str) and path.startswith("/")) or not callable(app):
                    raise PluginError(plugin, f"{hook}: {path!r} must be a path starting with '/' "
                                      "mapped to an ASGI application")
                if path in owners:
                    raise PluginError(plugin, f"{hook}: path {path!r} is already served by {owners[path]}",
                                      hint="Give the endpoint another path")
                owners[path] = f"plugin {plugin!r}"
                found[path] = app
        return found


def context_failure(plugin: str, what: str, exc: BaseException) -> PluginError:
    """A migration context (``dbinit_migration_context``) failed before Alembic ran.

    Like an ``env.py`` that fails before the first migration: nothing was
    migrated and a retry will not help (exit 2), unless what failed is
    reaching the database (exit 3, retryable).
    """
    error = PluginError(
        plugin,
        f"{what} raised {type(exc).__name__}: {exc}",
        hint="Nothing was migrated. The migration context is the application's: check what it "
        "needs in the job's environment (its settings and secrets)",
    )
    if is_connection_failure(exc):
        error.exit_code = ExitCode.DATABASE_UNREACHABLE
    return error
