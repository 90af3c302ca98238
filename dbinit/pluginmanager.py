"""Building the plugin manager, calling hooks, and naming the plugin behind each result.

Nothing happens at import time. :func:`build_plugin_manager` registers the
built-ins, then entry points of group ``dbinit``, then the ``plugins`` setting's
modules (``DBINIT_PLUGINS``), and validates every hook implementation.

pluggy calls every hook (:func:`call_hook`): its order (last registered first,
``tryfirst``/``trylast``), its wrappers (``wrapper=True`` and old-style
``hookwrapper=True``) and ``firstresult``, exactly as pluggy documents them.
What dbinit adds is the name of the plugin behind each result. Each plugin is
registered through a :class:`PluginFacade`: the same hook implementations,
with the same options and signatures, each recording what it returned (and
each wrapper what it returned after its ``yield``) for the hook call in
progress (:class:`HookCall`). The results pluggy returns, however wrappers
reordered, filtered or extended them, are then traced back by identity
(:class:`Attribution`): a result an implementation returned is that
plugin's, an item a wrapper introduced is that wrapper's. A plugin that
raises is named from the innermost traceback frame that runs one of its
implementations (:func:`innermost_owner`), wrappers included.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import functools
import importlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from dbinit import hookspecs
from dbinit.checks import Check
from dbinit.errors import FOREIGN_FAILURES, DbinitError, ExitCode, PluginError, is_connection_failure

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dbinit.lint.rules import LintRule
    from dbinit.settings import Settings
    from dbinit.strategies import Strategy

PROJECT = "dbinit"
T = TypeVar("T")

#: The built-in plugins, registered first, through the public hooks.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "dbinit.plugins.checks",
    "dbinit.plugins.strategies",
    "dbinit.plugins.commands",
    "dbinit.plugins.lint",
)
#: Hooks whose implementations return a sequence: a generator returned is read into a tuple
#: as it returns (so that wrappers, and dbinit, can read it more than once).
SEQUENCE_HOOKS = frozenset({"dbinit_checks", "dbinit_strategies", "dbinit_lint_rules"})


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, where it came from, and the object registered."""

    name: str
    source: str  # "builtin", "entrypoint", "DBINIT_PLUGINS"
    module: str
    distribution: str = ""
    #: the plugin itself (a module, class or instance), as loaded
    target: object = dataclasses.field(default=None, compare=False, repr=False)


# -- recording what each implementation returns --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Produced:
    """One implementation's contribution to a hook call."""

    plugin: str
    value: object


@dataclasses.dataclass
class HookCall:
    """What the implementations of one hook call returned, in the order pluggy ran them."""

    hook: str
    #: non-wrapper implementations that returned something (not None), in call order
    results: list[Produced] = dataclasses.field(default_factory=list)
    #: wrappers' outcomes (what each returned after its ``yield``), innermost first
    wrapped: list[Produced] = dataclasses.field(default_factory=list)


_CURRENT: contextvars.ContextVar[HookCall | None] = contextvars.ContextVar("dbinit_hook_call", default=None)


def _record(plugin: str, value: object, *, wrapper: bool) -> None:
    call = _CURRENT.get()
    if call is not None:
        (call.wrapped if wrapper else call.results).append(Produced(plugin, value))


def _plain_proxy(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    def proxy(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if hook in SEQUENCE_HOOKS and isinstance(result, types.GeneratorType):
            result = tuple(result)
        if result is not None:
            _record(plugin, result, wrapper=False)
        return result

    return proxy


def _wrapper_proxy(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    """A new-style wrapper (``wrapper=True``), delegated step by step, its outcome recorded."""

    def proxy(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        teardown = function(*args, **kwargs)
        try:
            next(teardown)
        except StopIteration:
            raise PluginError(plugin, f"the {hook} wrapper did not yield", internal=True) from None
        try:
            inner = yield
        except GeneratorExit:
            teardown.close()
            raise
        except BaseException as exc:  # the inner implementations failed: the wrapper sees it
            try:
                teardown.throw(exc)
            except StopIteration as stop:
                _record(plugin, stop.value, wrapper=True)
                return stop.value
        else:
            try:
                teardown.send(inner)
            except StopIteration as stop:
                _record(plugin, stop.value, wrapper=True)
                return stop.value
        teardown.close()
        raise PluginError(plugin, f"the {hook} wrapper yielded more than once", internal=True)

    return proxy


def _hookwrapper_proxy(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    """An old-style wrapper (``hookwrapper=True``): it gets a ``pluggy.Result``; its outcome recorded."""

    def proxy(*args: Any, **kwargs: Any) -> Generator[None, Any, None]:
        teardown = function(*args, **kwargs)
        try:
            next(teardown)
        except StopIteration:
            raise PluginError(plugin, f"the {hook} hookwrapper did not yield", internal=True) from None
        outcome: pluggy.Result[Any] = yield
        try:
            teardown.send(outcome)
        except StopIteration:
            if outcome.exception is None:
                _record(plugin, outcome.get_result(), wrapper=True)
            return
        teardown.close()
        raise PluginError(plugin, f"the {hook} hookwrapper yielded more than once", internal=True)

    return proxy


class PluginFacade:
    """What dbinit registers with pluggy for one plugin.

    Its attributes are the plugin's hook implementations, found as pluggy
    finds them (:meth:`pluggy.PluginManager.parse_hookimpl_opts`), with the
    same options and, through ``__wrapped__``, the same signatures: pluggy
    validates and orders them as it would the plugin itself. Each records
    what it returns for the hook call in progress. An implementation declared
    a wrapper that is not a generator function is registered as it is, for
    pluggy to refuse.
    """

    def __init__(self, pm: pluggy.PluginManager, target: object, name: str) -> None:
        self.dbinit_plugin_name = name
        self.dbinit_target = target
        #: code object of each implementation -> this plugin's name (to blame a failure)
        self.dbinit_codes: dict[types.CodeType, str] = {}
        for attribute in dir(target):
            opts = pm.parse_hookimpl_opts(target, attribute)
            if opts is None:
                continue
            function = getattr(target, attribute)
            code = getattr(getattr(function, "__func__", function), "__code__", None)
            if isinstance(code, types.CodeType):
                self.dbinit_codes[code] = name
            hook = opts.get("specname") or attribute
            generator = inspect.isgeneratorfunction(function)
            proxy: Callable[..., Any]
            if opts.get("wrapper") and generator:
                proxy = _wrapper_proxy(function, name, hook)
            elif opts.get("hookwrapper") and generator:
                proxy = _hookwrapper_proxy(function, name, hook)
            elif opts.get("wrapper") or opts.get("hookwrapper"):
                setattr(self, attribute, function)
                continue
            else:
                proxy = _plain_proxy(function, name, hook)
            functools.update_wrapper(proxy, function)
            setattr(proxy, f"{PROJECT}_impl", dict(opts))
            setattr(self, attribute, proxy)

    def __repr__(self) -> str:
        return f"<plugin {self.dbinit_plugin_name!r}: {self.dbinit_target!r}>"


# -- building the plugin manager ---------------------------------------------------------------


def build_plugin_manager(
    extra_modules: Sequence[str] = (),
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Make a plugin manager with every plugin loaded and validated."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []

    def add(target: object, info: PluginInfo) -> None:
        if any(known.target is target for known in infos):
            return  # the same object under a second name (an entry point also in DBINIT_PLUGINS)
        _register(pm, target, info.name)
        infos.append(dataclasses.replace(info, target=target))

    for module_name in BUILTIN_PLUGINS:
        add(importlib.import_module(module_name), PluginInfo(module_name, "builtin", module_name))
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
        add(plugin, PluginInfo(entry_point.name, "entrypoint", entry_point.value, entry_point.distribution))
    for module_name in extra_modules:
        if pm.get_plugin(module_name) is not None:
            continue
        try:
            module = importlib.import_module(module_name)
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                module_name,
                f"cannot be imported (from DBINIT_PLUGINS): {type(exc).__name__}: {exc}",
                hint="Check the module name in DBINIT_PLUGINS (or plugins in [tool.dbinit]) "
                "and that it is installed",
            ) from exc
        add(module, PluginInfo(module_name, "DBINIT_PLUGINS", module_name))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            pm.get_name(exc.plugin) or str(exc.plugin),
            str(exc),
            hint="Hook names must match dbinit.hookspecs (see docs/plugin_hooks.md)",
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
        pm.register(PluginFacade(pm, plugin, name), name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            name, str(exc), hint="See docs/plugin_hooks.md for the hook signatures"
        ) from None
    except ValueError as exc:
        raise PluginError(name, str(exc)) from None


# -- calling hooks -----------------------------------------------------------------------------


class Attribution:
    """Which plugin is behind each result (and each item of a result) of one hook call.

    By identity: a result an implementation returned is that plugin's; an
    item of a result a wrapper rebuilt (filtered, reordered) is the plugin's
    whose own result held that object; anything else was introduced by a
    wrapper: the innermost one whose outcome holds it. Each recorded object
    is claimed once, so two plugins returning the same object are told apart.
    """

    def __init__(self, call: HookCall) -> None:
        self.call = call
        self._results: dict[int, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._items: dict[int, collections.deque[str]] = collections.defaultdict(collections.deque)
        for produced in call.results:
            self._results[id(produced.value)].append(produced.plugin)
            for item in _members(produced.value):
                self._items[id(item)].append(produced.plugin)

    def result_owner(self, result: object) -> str:
        """The plugin behind one result of the call (claimed: a second identical result is another's)."""
        owners = self._results.get(id(result))
        if owners:
            plugin = owners.popleft()
            for item in _members(result):
                claimed = self._items.get(id(item))
                if claimed and plugin in claimed:
                    claimed.remove(plugin)
            return plugin
        return self.introduced_by(result, container=True)

    def item_owner(self, item: object, container_owner: str | None) -> str:
        """The plugin behind one item of a result (``container_owner``: the result's, if an impl's)."""
        if container_owner is not None:
            return container_owner
        owners = self._items.get(id(item))
        if owners:
            return owners.popleft()
        return self.introduced_by(item, container=False)

    def is_impl_result(self, result: object) -> bool:
        return any(produced.value is result for produced in self.call.results)

    def introduced_by(self, value: object, *, container: bool) -> str:
        for produced in self.call.wrapped:  # innermost first
            outcome = produced.value
            if outcome is value:
                return produced.plugin
            for result in _members(outcome):
                if result is value or (not container and any(m is value for m in _members(result))):
                    return produced.plugin
        wrappers = sorted({p.plugin for p in self.call.wrapped})
        return " or ".join(repr(w) for w in wrappers) or "unknown plugin"


def _members(value: object) -> list[object]:
    if isinstance(value, (str, bytes)):
        return []
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (Sequence, set, frozenset)):
        return list(value)
    return []


def call_hook(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> tuple[Any, Attribution]:
    """Call a hook as pluggy does; return its result(s) and who is behind each.

    A plugin that raises is a :class:`PluginError` naming it (exit 1: a bug in
    the plugin), unless what it raised is a :class:`DbinitError` (such as a
    :class:`~dbinit.errors.ConfigurationError` about its own options), which
    keeps its own exit code, with the plugin named.
    """
    caller: pluggy.HookCaller = getattr(pm.hook, hook_name)
    call = HookCall(hook_name)
    token = _CURRENT.set(call)
    try:
        result = caller(**kwargs)
    except PluginError:
        raise
    except DbinitError as exc:
        plugin = blame(pm, exc)
        if plugin != "unknown plugin" and not exc.message.startswith("plugin "):
            exc.message = f"plugin {plugin!r}: {exc.message}"
        raise
    except FOREIGN_FAILURES as exc:
        raise PluginError(
            blame(pm, exc), f"hook {hook_name} raised {type(exc).__name__}: {exc}", internal=True
        ) from exc
    finally:
        _CURRENT.reset(token)
    return result, Attribution(call)


def blame(pm: pluggy.PluginManager, exc: BaseException) -> str:
    """The plugin whose implementation ran the innermost frame of ``exc``'s traceback."""
    codes: dict[Any, str] = {}
    for facade in pm.get_plugins():
        if isinstance(facade, PluginFacade):
            codes.update(facade.dbinit_codes)
    return innermost_owner(exc, codes) or "unknown plugin"


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


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call a notification hook; an exception is reported with the plugin's name."""
    call_hook(pm, hook_name, **kwargs)


_LOADED: dict[tuple[str, ...], Registry] = {}


@dataclasses.dataclass
class Registry:
    """The plugin manager plus everything plugins contribute, validated.

    One per process for a given ``plugins`` setting (:meth:`load`): the
    dispatcher, the command, the Python API and the ASGI gate get the same
    object. What hooks contribute is collected once per settings value.
    """

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    _collected: dict[tuple[str, object], Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, extra_modules: Sequence[str] = ()) -> Registry:
        """The registry for these plugin modules (the ``plugins`` setting), built once per process."""
        key = tuple(extra_modules)
        if key not in _LOADED:
            pm, infos = build_plugin_manager(key)
            _LOADED[key] = cls(pm, infos)
        return _LOADED[key]

    @classmethod
    def for_settings(cls, settings: Settings) -> Registry:
        """The registry of ``settings.plugins``: the same object the dispatcher used."""
        return cls.load(settings.plugins)

    def _once(self, hook: str, settings: object, collect: Callable[[], T]) -> T:
        key = (hook, settings)
        if key not in self._collected:
            self._collected[key] = collect()
        return self._collected[key]  # type: ignore[no-any-return]

    def checks(self, settings: Settings) -> tuple[Check, ...]:
        """``dbinit_checks``: every check, in pluggy's result order, each with its plugin's name."""
        return self._once(
            "dbinit_checks",
            settings,
            lambda: tuple(self._collect("dbinit_checks", settings, Check, lambda c: c.id, "check id")),
        )

    def lint_rules(self, settings: Settings) -> tuple[LintRule, ...]:
        """``dbinit_lint_rules``: every lint rule, in pluggy's result order, each with its plugin's name."""
        from dbinit.lint.rules import LintRule

        def collect() -> tuple[LintRule, ...]:
            rules = self._collect("dbinit_lint_rules", settings, LintRule, lambda r: r.id, "lint rule id")
            return tuple(rules)

        return self._once("dbinit_lint_rules", settings, collect)

    def strategies(self, settings: Settings) -> Mapping[str, Strategy]:
        """``dbinit_strategies``: name -> strategy, each with its plugin's name."""

        from dbinit.strategies import Strategy  # not on verify's path: only migrate needs strategies

        def collect() -> dict[str, Strategy]:
            items = self._collect("dbinit_strategies", settings, Strategy, lambda s: s.name, "strategy name")
            forced = [s for s in items if s.force_recreate]
            if len(forced) > 1:
                first, second = sorted(forced[:2], key=lambda s: self._rank(s.plugin))
                raise PluginError(
                    second.plugin,
                    f"strategy {second.name!r} is marked force_recreate, and so is strategy "
                    f"{first.name!r} of plugin {first.plugin!r}",
                    hint="DB_FORCE_RECREATE selects one strategy. To replace the built-in one, "
                    "remove it with a wrapper=True dbinit_strategies (see docs/plugin_hooks.md)",
                )
            return {s.name: s for s in items}

        return self._once("dbinit_strategies", settings, collect)

    def commands(self, settings: Settings | None) -> Mapping[str, tuple[str, Any]]:
        """``dbinit_commands``: command name -> (plugin name, class or module path), sorted by name."""

        def collect() -> dict[str, tuple[str, Any]]:
            hook = "dbinit_commands"
            results, who = call_hook(self.pm, hook, settings=settings)
            found: dict[str, tuple[str, Any]] = {}
            for mapping in _results_list(results, who, hook):
                owner = who.result_owner(mapping)
                if not isinstance(mapping, Mapping):
                    raise PluginError(owner, f"{hook} must return a mapping of name to command")
                own = owner if who.is_impl_result(mapping) else None
                for name, spec in mapping.items():
                    plugin = who.item_owner(spec, own)
                    if name in found:
                        raise self._duplicate("command", name, plugin, found[name][0])
                    found[name] = (plugin, spec)
            return dict(sorted(found.items()))

        return self._once("dbinit_commands", settings, collect)

    def _collect(
        self, hook: str, settings: Settings, kind: type, key: Callable[[Any], str], what: str
    ) -> list[Any]:
        results, who = call_hook(self.pm, hook, settings=settings)
        items: list[Any] = []
        owners: dict[str, str] = {}
        for result in _results_list(results, who, hook):
            owner = who.result_owner(result)
            if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
                raise PluginError(
                    owner, f"{hook} returned {type(result).__name__}, not a sequence of {kind.__name__}"
                )
            own = owner if who.is_impl_result(result) else None
            for item in result:
                plugin = who.item_owner(item, own)
                if not isinstance(item, kind):
                    raise PluginError(
                        plugin, f"{hook} returned {type(item).__name__}, not {kind.__name__}"
                    )
                name = key(item)
                if name in owners:
                    raise self._duplicate(what, name, plugin, owners[name])
                owners[name] = plugin
                items.append(dataclasses.replace(item, plugin=plugin))
        return items

    def _rank(self, plugin: str) -> int:
        for index, info in enumerate(self.plugins):
            if info.name == plugin:
                return index
        return len(self.plugins)

    def _duplicate(self, what: str, name: str, plugin: str, other: str) -> PluginError:
        """A name contributed twice: the plugin registered later is named, the other mentioned."""
        later, earlier = (plugin, other) if self._rank(plugin) >= self._rank(other) else (other, plugin)
        if later == earlier:
            return PluginError(
                later, f"{what} {name!r} is contributed twice", hint=f"Each {what} must be unique"
            )
        return PluginError(
            later,
            f"{what} {name!r} is already provided by plugin {earlier!r}",
            hint=f"Each {what} must be unique",
        )

    def notify(self, hook_name: str, *, settings: Settings, **kwargs: Any) -> None:
        """Call a notification hook (every implementation, in pluggy's order)."""
        call_hook(self.pm, hook_name, settings=settings, **kwargs)

    def migration_contexts(self, settings: Settings) -> list[tuple[str, AbstractContextManager[object]]]:
        """``dbinit_migration_context``: each plugin's context manager, with the plugin's name.

        In pluggy's result order (entered in that order, the first outermost).
        Called anew for each run of Alembic (a context such as Flask's is
        made for one use). A plugin that raises, or returns something that
        is not a context manager, is named (:func:`context_failure`).
        """
        hook = "dbinit_migration_context"
        try:
            results, who = call_hook(self.pm, hook, settings=settings)
        except PluginError as exc:
            if exc.exit_code != ExitCode.INTERNAL_ERROR or exc.__cause__ is None:
                raise
            raise context_failure(exc.plugin, f"hook {hook}", exc.__cause__) from exc.__cause__
        found: list[tuple[str, AbstractContextManager[object]]] = []
        for result in _results_list(results, who, hook):
            plugin = who.result_owner(result)
            if not (hasattr(result, "__enter__") and hasattr(result, "__exit__")):
                raise PluginError(
                    plugin,
                    f"{hook} returned {type(result).__name__}, not a context manager",
                    hint="Return a context manager (e.g. app.app_context()) or None",
                )
            found.append((plugin, result))
        return found


    def operation_contexts(
        self, operation: str, attributes: Mapping[str, Any], settings: Settings
    ) -> list[tuple[str, AbstractContextManager[object]]]:
        """``dbinit_operation``: each observer's context manager for ``operation``, with its plugin.

        In pluggy's result order (the first outermost). Without any
        implementation (the usual case, on the verify path) nothing is called.
        """
        hook = "dbinit_operation"
        if not getattr(self.pm.hook, hook).get_hookimpls():
            return []
        results, who = call_hook(
            self.pm,
            hook,
            operation=operation,
            attributes=types.MappingProxyType(dict(attributes)),
            settings=settings,
        )
        found: list[tuple[str, AbstractContextManager[object]]] = []
        for result in _results_list(results, who, hook):
            plugin = who.result_owner(result)
            if not (hasattr(result, "__enter__") and hasattr(result, "__exit__")):
                raise PluginError(
                    plugin,
                    f"{hook} returned {type(result).__name__}, not a context manager",
                    hint="Return a context manager (e.g. a tracer's span) or None",
                    internal=True,
                )
            found.append((plugin, result))
        return found

    def asgi_endpoints(self, settings: Settings, taken: Sequence[str] = ()) -> dict[str, Any]:
        """``dbinit_asgi_endpoints``: path -> ASGI app, each path once (``taken``: the probes')."""
        hook = "dbinit_asgi_endpoints"
        found: dict[str, Any] = {}
        owners = dict.fromkeys(taken, "dbinit (DBINIT_READINESS_PATH / DBINIT_LIVENESS_PATH)")
        results, who = call_hook(self.pm, hook, settings=settings)
        for mapping in _results_list(results, who, hook):
            owner = who.result_owner(mapping)
            if not isinstance(mapping, Mapping):
                raise PluginError(owner, f"{hook} must return a mapping of path to ASGI application")
            own = owner if who.is_impl_result(mapping) else None
            for path, app in mapping.items():
                plugin = who.item_owner(app, own)
                if not (isinstance(path, str) and path.startswith("/")) or not callable(app):
                    raise PluginError(plugin, f"{hook}: {path!r} must be a path starting with '/' "
                                      "mapped to an ASGI application")
                if path in owners:
                    raise PluginError(plugin, f"{hook}: path {path!r} is already served by {owners[path]}",
                                      hint="Give the endpoint another path")
                owners[path] = f"plugin {plugin!r}"
                found[path] = app
        return found


def _results_list(results: object, who: Attribution, hook: str) -> Iterable[object]:
    """The list pluggy returns; a wrapper that returned something else is named."""
    if not isinstance(results, list):
        raise PluginError(
            who.introduced_by(results, container=True),
            f"the {hook} wrapper returned {type(results).__name__}, not the list of results",
            hint="A wrapper returns the (possibly changed) list it got from its yield",
        )
    return [r for r in results if r is not None]


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
