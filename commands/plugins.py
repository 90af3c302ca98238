"""``dbinit plugins``: what is loaded, and what each plugin contributes."""

from __future__ import annotations

from typing import Any

from dbinit.management.base import BaseCommand


class Command(BaseCommand):
    help = "List the loaded plugins with the checks, strategies and commands each contributes."
    has_format = True

    def handle(self, **options: Any) -> int:
        registry = self.registry
        rows = []
        for info in registry.plugins:
            plugin = registry.pm.get_plugin(info.name)
            hooks = sorted(h.name for h in registry.pm.get_hookcallers(plugin) or [])
            rows.append(
                {
                    "name": info.name,
                    "source": info.source,
                    "module": info.module,
                    "distribution": info.distribution,
                    "hooks": hooks,
                    "checks": [c.id for c in registry.checks if c.plugin == info.name],
                    "strategies": [
                        s for s, v in registry.strategies.items() if v.plugin == info.name
                    ],
                    "commands": [n for n, (p, _) in registry.commands.items() if p == info.name],
                }
            )
        if options["format"] == "json":
            self.write_json(rows)
            return 0
        for row in rows:
            origin = row["source"] + (f", {row['distribution']}" if row["distribution"] else "")
            self.stdout.write(f"{row['name']}  ({origin})")
            for key in ("checks", "strategies", "commands"):
                if row[key]:
                    self.stdout.write(f"    {key}: {', '.join(row[key])}")
        return 0
