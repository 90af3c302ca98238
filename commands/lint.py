"""``dbinit lint``: what each revision's offline SQL will do to a live database (no database needed)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dbinit.errors import ConfigurationError
from dbinit.facts import read_scripts
from dbinit.management.base import BaseCommand

if TYPE_CHECKING:
    from dbinit.lint.classify import StatementFacts
    from dbinit.lint.run import LintedRevision

INSTALL_HINT = "pip install 'dbinit-alembic[lint]'"


def _statement_line(statement: StatementFacts) -> str:
    first = " ".join(statement.sql.split())
    if len(first) > 100:
        first = first[:97] + "..."
    if statement.parse_error is not None:
        return f"  {statement.position:>3}. {first}\n       not PostgreSQL SQL: {statement.parse_error}"
    facts = [
        f"lock {statement.lock}" if statement.lock else "no table lock",
        "rewrites" if statement.rewrites else "",
        "scans" if statement.scans else "",
        statement.phase,
        f"on {', '.join(statement.tables)}" if statement.tables else "",
        "outside a transaction" if not statement.in_transaction else "",
    ]
    return f"  {statement.position:>3}. {first}\n       " + "; ".join(f for f in facts if f)


def _revision_lines(linted: LintedRevision) -> list[str]:
    header = f"{linted.revision}  {linted.file or ''}  ({linted.phase.phase}, {linted.phase.source})"
    if not linted.statements:
        return [header, "  (no statements)"]
    return [
        header,
        *(_statement_line(statement) for statement in linted.statements),
        *(finding.line() for finding in linted.findings),
    ]


class Command(BaseCommand):
    help = (
        "Show what each revision's SQL will do, statement by statement, from Alembic's offline (--sql) "
        "rendering and PostgreSQL's own parser: the tables touched, the lock taken, whether the table "
        "is rewritten or scanned, expand or contract. No database needed. Needs the `lint` extra "
        f"({INSTALL_HINT})."
    )
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from",
            dest="from_revision",
            metavar="REV",
            help="only the revisions after REV (as `migrate --sql --from REV` renders them)",
        )
        parser.add_argument(
            "--measure",
            nargs="?",
            const="",
            metavar="DATABASE_URL",
            help="apply the pending revisions to a scratch copy of this database's schema (made on its "
            "server, then dropped; the database itself is only read) and report the locks each statement "
            "held and whether a concurrent reader and writer were blocked; without a URL: DATABASE_URL",
        )

    def handle(self, **options: Any) -> int:
        try:
            from dbinit.lint.run import lint
        except ImportError as exc:
            if (exc.name or "").split(".")[0] != "pglast":
                raise
            raise ConfigurationError(
                "dbinit lint needs PostgreSQL's parser (pglast), which is not installed",
                hint=INSTALL_HINT,
            ) from None
        if options["measure"] is not None:
            from dbinit.lint.measure import measure, measure_settings

            target = measure_settings(self.settings, options["measure"], self.redactor)
            measured = self.run(lambda _: measure(target, read_scripts(target), options["from_revision"],
                                                  self.registry.migration_contexts(target), self.log))
            if options["format"] == "json":
                self.write_json({"service": self.settings.service, **measured.as_json()})
            else:
                for line in measured.lines(self.settings.service):
                    self.stdout.write(line)
            return measured.exit_code
        report = lint(
            self.settings,
            read_scripts(self.settings),
            options["from_revision"],
            self.registry.migration_contexts(self.settings),
            log=self.log,
        )
        if options["format"] == "json":
            self.write_json({"service": self.settings.service, **report.as_json()})
            return 0
        count = len(report.revisions)
        self.stdout.write(f"{self.settings.service}: {count} revision(s), {report.dialect} SQL")
        for linted in report.revisions:
            for line in _revision_lines(linted):
                self.stdout.write(line)
        self.stdout.write(f"{len(report.findings)} finding(s)")
        return 0
