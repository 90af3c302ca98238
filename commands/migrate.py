"""``dbinit migrate``: the migration job. Lock, strategy, verify, unlock."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.after_migrate import check_step
from dbinit.alembic_runner import offline_sql
from dbinit.errors import ConfigurationError
from dbinit.facts import read_scripts
from dbinit.management.base import BaseCommand
from dbinit.migrate import migrate, plan, select_strategy


class Command(BaseCommand):
    help = (
        "Bring the database to the head(s) of this image's migrations, under the migration "
        "lock, then verify, then run DBINIT_AFTER_MIGRATE (if set) while still holding the lock. "
        "Only the migration job runs this. --plan shows what would run; "
        "--sql prints the SQL without touching the database."
    )
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--plan", action="store_true", help="list the revisions that would run")
        mode.add_argument(
            "--sql", action="store_true", help="print offline SQL (no database access)"
        )
        parser.add_argument(
            "--from",
            dest="from_revision",
            metavar="REV",
            help="with --sql: start from this revision instead of the base",
        )
        parser.add_argument("--strategy", help="migration strategy (default: upgrade)")
        parser.add_argument(
            "--force-recreate",
            action="store_true",
            default=None,
            help="DB_FORCE_RECREATE: drop everything, then upgrade",
        )
        parser.add_argument("--lock-timeout", type=float, help="DBINIT_LOCK_TIMEOUT (seconds)")

    def settings_overrides(self, options: dict[str, Any]) -> dict[str, Any]:
        return {
            **super().settings_overrides(options),
            "force_recreate": options.get("force_recreate"),
            "lock_timeout": options.get("lock_timeout"),
        }

    def handle(self, **options: Any) -> int:
        if options["from_revision"] is not None and not options["sql"]:
            raise ConfigurationError(
                "--from only applies to --sql (offline SQL from that revision)",
                hint="Use `dbinit migrate --sql --from REV`; an online migrate starts from the "
                "revision recorded in the database",
            )
        if options["sql"]:
            offline_sql(
                self.settings,
                read_scripts(self.settings),
                self._stdout_stream,
                options["from_revision"],
                self.registry.migration_contexts(self.settings),
                log=self.log,
            )
            return 0
        if options["plan"]:
            select_strategy(self.settings, self.registry, options["strategy"])
            check_step(self.settings)
            result = self.run(lambda _: plan(self.settings))
            if options["format"] == "json":
                self.write_json(
                    {
                        "current": list(result.current),
                        "heads": list(result.heads),
                        "pending": list(result.pending),
                        "after_migrate": result.after_migrate,
                    }
                )
                return 0
            if result.pending:
                self.stdout.write(f"{len(result.pending)} migration(s) would run:")
                for revision in result.pending:
                    self.stdout.write(f"  {revision}")
            elif result.after_migrate is None:
                self.stdout.write("Nothing to do: the database is at head.")
            else:
                self.stdout.write("No migration to run: the database is at head.")
            if result.after_migrate is not None:
                self.stdout.write(
                    f"Then the after-migrate step (DBINIT_AFTER_MIGRATE), under the migration lock: "
                    f"{result.after_migrate}"
                )
            return 0
        outcome = self.run(
            lambda control: migrate(
                self.settings, self.registry, self.log, strategy_name=options["strategy"], control=control
            ),
            graceful=True,
        )
        if options["format"] == "json":
            self.write_json(outcome.to_json())
        else:
            self.stdout.write(
                f"{outcome.action}: {outcome.message} (applied: {', '.join(outcome.applied) or 'none'}; "
                f"current_revision={outcome.verification.current_revision}, "
                f"{outcome.duration_ms:.0f} ms)"
            )
            if outcome.after_migrate is not None:
                self.stdout.write(
                    f"after-migrate step: {outcome.after_migrate.command} finished "
                    f"({outcome.after_migrate.duration_ms / 1000:.2f} s)"
                )
        return 0
