"""``dbinit history``: the revisions ``migrate`` ran on this database, newest first (read-only)."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.history import HistoryListing, HistoryRow, read_history
from dbinit.management.base import BaseCommand

#: What a database without the history table says (migrated before dbinit recorded history).
NO_HISTORY = "no history recorded yet (the database was migrated before dbinit recorded history)"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _line(row: HistoryRow) -> str:
    duration = f"{row.duration_ms:.0f} ms" if row.duration_known else "? ms"
    since = "" if row.compatible_since == row.revision else f"  compatible since {row.compatible_since}"
    started = row.started_at.strftime("%Y-%m-%d %H:%M:%S")
    line = (
        f" {row.id:>5}  {started}  {row.outcome:<11}  {row.revision}  {row.phase} ({row.phase_source})"
        f"{since}  {duration}  {row.service}@{row.pod}"
    )
    return line + (f"\n        error: {row.error}" if row.error else "")


class Command(BaseCommand):
    help = (
        "List the revisions `dbinit migrate` ran on this database, newest first: outcome (applied, "
        "failed, interrupted), phase (expand/contract) and compatible_since, when, how long, and which "
        "job (service and pod). Read-only."
    )
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=_positive, metavar="N", help="show the N newest rows only")

    def handle(self, **options: Any) -> int:
        limit: int | None = options.get("limit")
        listing: HistoryListing = self.run(lambda _: read_history(self.settings, limit))
        if options["format"] == "json":
            document: dict[str, object] = {
                "service": self.settings.service,
                "table": listing.table,
                "rows": [row.as_json() for row in listing.rows],
            }
            if not listing.exists:
                document["note"] = NO_HISTORY
            self.write_json(document)
            return 0
        self.stdout.write(f"{self.settings.service} ({self.settings.url.display_name}), {listing.table}")
        if not listing.exists:
            self.stdout.write(f" {NO_HISTORY}")
            return 0
        if not listing.rows:
            self.stdout.write(" (no rows)")
        for row in listing.rows:
            self.stdout.write(_line(row))
        return 0
