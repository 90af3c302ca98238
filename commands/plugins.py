"""``dbinit plugins``: what is loaded, and what each plugin contributes.

For each plugin: its version (the distribution's for an entry point, the
module's ``__version__`` for a ``DBINIT_PLUGINS`` module, dbinit's for the
built-ins), the hooks it implements (with their pluggy options), and the
checks, strategies and commands it contributes. ``importlib.metadata`` is
read here only, never on the verify path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dbinit import __version__
from dbinit.management.base import BaseCommand
from dbinit.pluginmanager import PluginInfo

#: pluggy's hookimpl options shown for each hook, in this order
HOOK_OPTIONS = ("tryfirst", "trylast", "wrapper", "hookwrapper")


@dataclasses.dataclass(frozen=True)
class HookRow:
    hook: str
    options: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, **{option: option in self.options for option in HOOK_OPTIONS}}

    def shown(self) -> str:
        return self.hook + (f" ({', '.join(self.options)})" if self.options else "")


@dataclasses.dataclass(frozen=True)
class PluginRow:
    info: PluginInfo
    version: str | None
    hooks: tuple[HookRow, ...]
    checks: tuple[str, ...]
    strategies: tuple[str, ...]
    commands: tuple[str, ...]
    lint_rules: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.info.name,
            "source": self.info.source,
            "module": self.info.module,
            "distribution": self.info.distribution,
            "version": self.version,
            "hooks": [h.hook for h in self.hooks],
            "hookimpls": [h.as_dict() for h in self.hooks],
            "checks": list(self.checks),
            "strategies": list(self.strategies),
            "commands": list(self.commands),
            "lint_rules": list(self.lint_rules),
        }


def plugin_version(info: PluginInfo) -> str | None:
    """The version a user would name: the distribution's, else ``__version__``, else None."""
    if info.source == "builtin":
        return __version__
    if info.distribution:
        import importlib.metadata  # here only: `dbinit plugins`, never verify

        try:
            return importlib.metadata.version(info.distribution)
        except importlib.metadata.PackageNotFoundError:
            pass  # an entry_points.txt without the distribution's metadata: the module may say
    declared = getattr(info.target, "__version__", None)
    return declared if isinstance(declared, str) else None


class Command(BaseCommand):
    help = (
        "List the loaded plugins: version, hooks, and the checks, strategies, commands and lint rules "
        "each contributes."
    )
    has_format = True

    def rows(self) -> list[PluginRow]:
        registry = self.registry
        checks = registry.checks(self.settings)
        strategies = registry.strategies(self.settings)
        commands = registry.commands(self.settings)
        lint_rules = registry.lint_rules(self.settings)
        rows: list[PluginRow] = []
        for info in registry.plugins:
            plugin = registry.pm.get_plugin(info.name)
            hooks = []
            for caller in registry.pm.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        options = tuple(o for o in HOOK_OPTIONS if getattr(impl, o))
                        hooks.append(HookRow(caller.name, options))
            rows.append(
                PluginRow(
                    info=info,
                    version=plugin_version(info),
                    hooks=tuple(sorted(hooks, key=lambda h: h.hook)),
                    checks=tuple(c.id for c in checks if c.plugin == info.name),
                    strategies=tuple(s for s, v in strategies.items() if v.plugin == info.name),
                    commands=tuple(n for n, (p, _) in commands.items() if p == info.name),
                    lint_rules=tuple(r.id for r in lint_rules if r.plugin == info.name),
                )
            )
        return rows

    def handle(self, **options: Any) -> int:
        rows = self.rows()
        if options["format"] == "json":
            self.write_json([row.as_dict() for row in rows])
            return 0
        for row in rows:
            origin = row.info.source + (f", {row.info.distribution}" if row.info.distribution else "")
            version = f" {row.version}" if row.version else ""
            self.stdout.write(f"{row.info.name}{version}  ({origin})")
            self.stdout.write(f"    hooks: {', '.join(h.shown() for h in row.hooks) or '-'}")
            for key in ("checks", "strategies", "commands", "lint_rules"):
                values: tuple[str, ...] = getattr(row, key)
                if values:
                    self.stdout.write(f"    {key}: {', '.join(values)}")
        return 0
