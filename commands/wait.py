"""``dbinit wait``: wait for the database (init containers)."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.management.base import BaseCommand
from dbinit.wait import wait_for_database, wait_until_verified


class Command(BaseCommand):
    help = (
        "Wait until the database accepts connections (exit 3 at the timeout), or with "
        "--until-verified until `verify` passes, i.e. until the migration job has migrated "
        "(exit 4 at the timeout). Needs no Kubernetes API access."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--timeout", type=float, help="DBINIT_WAIT_TIMEOUT (seconds, default 60)"
        )
        parser.add_argument(
            "--until-verified", action="store_true", help="wait until verification passes"
        )

    def settings_overrides(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().settings_overrides(options), "wait_timeout": options.get("timeout")}

    def handle(self, **options: Any) -> int:
        timeout = self.settings.wait_timeout
        if options["until_verified"]:
            self.run(lambda _: wait_until_verified(self.settings, self.registry, self.log, timeout))
            self.stdout.write("Database is ready.")
        else:
            attempts = self.run(lambda _: wait_for_database(self.settings, self.log, timeout))
            self.stdout.write(f"Database is accepting connections (after {attempts} attempts).")
        return 0
