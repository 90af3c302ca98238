"""``dbinit acme-report``: what dbinit runs with here, from its settings and plugin registry."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print the service, its database and the plugins loaded, with the checks of each."
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--plugin", help="only this plugin's checks")

    def handle(self, **options: Any) -> int:
        checks: dict[str, list[str]] = {}
        for item in self.registry.checks(self.settings):
            checks.setdefault(item.plugin, []).append(item.id)
        plugins = [p for p in self.registry.plugins if options["plugin"] in (None, p.name)]
        if options["format"] == "json":
            self.write_json({
                "service": self.settings.service,
                "database": self.settings.url.display_name,
                "plugins": [{"name": p.name, "source": p.source, "distribution": p.distribution,
                             "checks": checks.get(p.name, [])} for p in plugins],
            })
            return 0
        self.stdout.write(f"service: {self.settings.service}")
        self.stdout.write(f"database: {self.settings.url.display_name}")
        for plugin in plugins:
            origin = f"{plugin.source}, {plugin.distribution}" if plugin.distribution else plugin.source
            contributed = ", ".join(checks.get(plugin.name, [])) or "-"
            self.stdout.write(f"plugin {plugin.name} ({origin}): {contributed}")
        return 0
