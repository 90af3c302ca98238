"""``dbinit lint``: what each revision's offline SQL will do to a live database, and the rules' findings.

No database needed: Alembic renders each revision's SQL offline, PostgreSQL's
own parser (pglast) reads it, the rules (``dbinit_lint_rules``) judge it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbinit import __version__
from dbinit.checks import Level
from dbinit.errors import ConfigurationError, ExitCode
from dbinit.facts import read_scripts
from dbinit.lint import INSTALL_HINT, pglast_installed
from dbinit.management.base import BaseCommand

if TYPE_CHECKING:
    from dbinit.lint.classify import StatementFacts
    from dbinit.lint.rules import LintRule
    from dbinit.lint.run import LintedRevision, LintReport


def require_pglast() -> None:
    """A configuration error (exit 2) naming the extra when PostgreSQL's parser is not installed."""
    if not pglast_installed():
        raise ConfigurationError(
            "dbinit lint needs PostgreSQL's parser (pglast), which is not installed", hint=INSTALL_HINT
        )


def _statement_line(statement: StatementFacts) -> str:
    first = " ".join(statement.sql.split())
    if len(first) > 100:
        first = first[:97] + "..."
    where = f" (line {statement.line})" if statement.line is not None else ""
    if statement.parse_error is not None:
        error = statement.parse_error
        return f"  {statement.position:>3}. {first}{where}\n       not PostgreSQL SQL: {error}"
    facts = [
        f"lock {statement.lock}" if statement.lock else "no table lock",
        "rewrites" if statement.rewrites else "",
        "scans" if statement.scans else "",
        statement.phase,
        f"on {', '.join(statement.tables)}" if statement.tables else "",
        "outside a transaction" if not statement.in_transaction else "",
    ]
    return f"  {statement.position:>3}. {first}{where}\n       " + "; ".join(f for f in facts if f)


def _revision_lines(linted: LintedRevision) -> list[str]:
    header = f"{linted.revision}  {linted.file or ''}  ({linted.phase.phase}, {linted.phase.source})"
    if not linted.statements and not linted.findings:
        return [header, "  (no statements)"]
    return [
        header,
        *(_statement_line(statement) for statement in linted.statements),
        *(finding.line_text() for finding in linted.findings),
    ]


def _rule_line(rule: LintRule) -> str:
    dialects = "PostgreSQL" if rule.postgresql_only else "any dialect"
    squawk = f"; squawk: {', '.join(rule.squawk)}" if rule.squawk else ""
    return f"{rule.id}  {rule.level.name:<8} {rule.title}  ({rule.plugin}; {dialects}{squawk})"


class Command(BaseCommand):
    help = (
        "Show what each revision's SQL will do, statement by statement, from Alembic's offline (--sql) "
        "rendering and PostgreSQL's own parser: the tables touched, the lock taken, whether the table "
        "is rewritten or scanned, expand or contract; and the lint rules' findings, each with its id, "
        "revision, file and line, and the safe recipe. No database needed. Needs the `lint` extra "
        f"({INSTALL_HINT})."
    )
    has_format = True
    formats = ("text", "json", "sarif")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from",
            dest="from_revision",
            metavar="REV",
            help="only the revisions after REV, the previous release's head (default: `since` in "
            "[tool.dbinit.lint], else every revision)",
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
        parser.add_argument(
            "--fail-level",
            dest="fail_level",
            metavar="LEVEL",
            help="exit 4 when a finding (not suppressed) is at LEVEL or above: WARNING, ERROR, CRITICAL "
            "(default: findings never fail `dbinit lint`)",
        )
        parser.add_argument("--list-rules", action="store_true", help="list the rules and exit")

    def handle(self, **options: Any) -> int:
        fail_level = None
        if options["fail_level"]:
            try:
                fail_level = Level.parse(options["fail_level"])
            except ValueError as exc:
                raise ConfigurationError(f"--fail-level: {exc}") from None
        rules = self.registry.lint_rules(self.settings)
        if options["list_rules"]:
            return self._list_rules(rules, options["format"])
        require_pglast()
        from dbinit.lint.options import LintSettings
        from dbinit.lint.run import lint

        if options["measure"] is not None:
            if options["format"] == "sarif":
                raise ConfigurationError("--measure reports in text or json, not sarif")
            return self._measure(options)

        report = lint(
            self.settings,
            read_scripts(self.settings),
            options["from_revision"],
            self.registry.migration_contexts(self.settings),
            log=self.log,
            rules=rules,
            options=LintSettings.load(),
        )
        self._write(report, options["format"])
        worst = report.worst()
        if fail_level is not None and worst is not None and worst >= fail_level:
            return ExitCode.NOT_READY
        return ExitCode.OK

    def _measure(self, options: dict[str, Any]) -> int:
        from dbinit.lint.measure import measure, measure_settings

        target = measure_settings(self.settings, options["measure"], self.redactor)
        measured = self.run(
            lambda _: measure(
                target,
                read_scripts(target),
                options["from_revision"],
                self.registry.migration_contexts(target),
                self.log,
            )
        )
        if options["format"] == "json":
            self.write_json({"service": self.settings.service, **measured.as_json()})
        else:
            for line in measured.lines(self.settings.service):
                self.stdout.write(line)
        return measured.exit_code

    def _list_rules(self, rules: tuple[LintRule, ...], output: str) -> int:
        if output == "text":
            for rule in rules:
                self.stdout.write(_rule_line(rule))
            return ExitCode.OK
        self.write_json(
            [
                {
                    "id": rule.id,
                    "title": rule.title,
                    "level": rule.level.name,
                    "hint": rule.hint,
                    "postgresql_only": rule.postgresql_only,
                    "squawk": list(rule.squawk),
                    "plugin": rule.plugin,
                }
                for rule in rules
            ]
        )
        return ExitCode.OK

    def _write(self, report: LintReport, output: str) -> None:
        if output == "json":
            self.write_json({"service": self.settings.service, **report.as_json()})
            return
        if output == "sarif":
            from dbinit.lint.sarif import sarif

            self.write_json(sarif(report, Path.cwd(), __version__))
            return
        count = len(report.revisions)
        since = f" after {report.since}" if report.since else ""
        self.stdout.write(f"{self.settings.service}: {count} revision(s){since}, {report.dialect} SQL")
        for linted in report.revisions:
            for line in _revision_lines(linted):
                self.stdout.write(line)
        if report.not_applied:
            self.stdout.write(
                f"{len(report.not_applied)} PostgreSQL-only rule(s) not applied to {report.dialect} SQL: "
                + ", ".join(rule.id for rule in report.not_applied)
            )
        suppressed = f", {len(report.suppressed)} suppressed" if report.suppressed else ""
        self.stdout.write(f"{len(report.findings)} finding(s){suppressed}")
