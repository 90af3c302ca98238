"""``dbinit verify``: is the database ready for this service? Never writes."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.errors import ExitCode
from dbinit.management.base import BaseCommand
from dbinit.report import VerifyReport
from dbinit.verify import verify

MARKS = {"passed": "ok", "failed": "FAIL", "skipped": "skip", "silenced": "silenced"}


class Command(BaseCommand):
    help = (
        "Verify that the database is ready for this service: migrations present, database "
        "not empty, version table present, current revision known and at head. Never "
        "migrates, never writes. Exit 0 when ready, 4 when not, 3 when unreachable."
    )
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--timeout", type=float, help="DBINIT_VERIFY_TIMEOUT (seconds)")

    def settings_overrides(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().settings_overrides(options), "verify_timeout": options.get("timeout")}

    def handle(self, **options: Any) -> int:
        report = self.run(lambda _: verify(self.settings, self.registry, self.log))
        if options["format"] == "json":
            self.write_json(report.to_json())
        else:
            write_report(self, report)
        return ExitCode.OK if report.ok else ExitCode.NOT_READY


def write_report(command: BaseCommand, report: VerifyReport) -> None:
    for outcome in report.outcomes:
        mark = MARKS[outcome.status.value]
        command.stdout.write(
            f"[{mark:>4}] {outcome.check.id} {outcome.check.name}: {outcome.message}"
        )
        if outcome.hint and not outcome.ok:
            command.stdout.write(f"       hint: {outcome.hint}")
    command.stdout.write(
        f"{report.action}: {report.message} (service={report.service}, database={report.database}, "
        f"current_revision={report.current_revision}, migration_count={report.migration_count}, "
        f"table_count={report.table_count}, {report.duration_ms:.1f} ms)"
    )
    if report.verdict is not None:
        since = f", compatible_since={report.compatible_since}" if report.compatible_since else ""
        command.stdout.write(f"verdict: {report.verdict}{since}")
