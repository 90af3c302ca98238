"""``dbinit check``: Django-style system checks, with ids, levels and hints."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dbinit.plugins.checks import CHECK_COMMAND_CHECKS
from dbinit.plugins.lint import lint_findings

from dbinit.checks import Level, select_checks
from dbinit.errors import ConfigurationError, ExitCode
from dbinit.facts import read_scripts
from dbinit.management.base import BaseCommand
from dbinit.revisions.phases import revision_phases
from dbinit.revisions.scripts import MigrationScripts
from dbinit.verify import verify


class Command(BaseCommand):
    help = (
        "Run the checks and print every finding with its id, level and hint. --tag selects "
        "checks (e.g. --tag migrations needs no database); --fail-level sets what fails "
        "(exit 4); --list shows the checks without running them."
    )
    has_format = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--tag", "-t", action="append", default=[], help="run checks with this tag"
        )
        parser.add_argument(
            "--fail-level",
            default="ERROR",
            help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default ERROR)",
        )
        parser.add_argument("--list", action="store_true", help="list the checks, run nothing")

    def handle(self, **options: Any) -> int:
        try:
            fail_level = Level.parse(options["fail_level"])
        except ValueError as exc:
            raise ConfigurationError(f"--fail-level: {exc}") from None
        checks = (
            *self.registry.checks(self.settings),
            *(dataclasses.replace(c, plugin="dbinit.plugins.checks") for c in CHECK_COMMAND_CHECKS),
            dataclasses.replace(lint_findings, plugin="dbinit.plugins.lint"),
        )
        known_tags = sorted({t for c in checks for t in c.tags})
        unknown = [t for t in options["tag"] if t not in known_tags]
        if unknown:
            raise ConfigurationError(
                f"--tag: unknown tag(s) {', '.join(unknown)}",
                hint=f"Known tags: {', '.join(known_tags)}",
            )
        selected = select_checks(checks, options["tag"])
        if "lint" in options["tag"]:
            from dbinit.commands.lint import require_pglast

            require_pglast()  # asked for by name: exit 2 with the extra to install
        elif not options["list"]:
            # lint reads (and renders) every revision: only when asked for, `--tag lint`
            selected = [c for c in selected if c.id != lint_findings.id]
        if options["list"]:
            if options["format"] == "json":
                self.write_json(
                    [
                        {
                            "id": c.id,
                            "name": c.name,
                            "tags": list(c.tags),
                            "plugin": c.plugin,
                            "requires_database": c.requires_database,
                            "description": c.description,
                        }
                        for c in selected
                    ]
                )
            else:
                for c in selected:
                    self.stdout.write(
                        f"{c.id}  {c.name}  [{', '.join(c.tags)}]  ({c.plugin})  {c.description}"
                    )
            return 0
        log = self.log.bind(tags=options["tag"]) if options["tag"] else self.log
        scripts: MigrationScripts | None = None
        if any(c.id in {p.id for p in (*CHECK_COMMAND_CHECKS, lint_findings)} for c in selected):
            scripts = read_scripts(self.settings)
            revision_phases(scripts)  # a wrong dbinit_phase is exit 2, not a failed check
        report = self.run(
            lambda _: verify(
                self.settings, self.registry, log, checks=selected, scripts=scripts, fail_level=fail_level
            )
        )
        messages = [
            (o, m)
            for o in report.outcomes
            for m in o.messages
            if m.level >= Level.WARNING and m.id not in self.settings.silenced_checks
        ]
        if options["format"] == "json":
            self.write_json({"ok": report.ok, "fail_level": fail_level.name, **report.to_json()})
        else:
            for outcome, message in messages:
                self.stdout.write(
                    f"{message.id or outcome.check.id}: ({message.level.name}) {message.msg}"
                )
                if message.hint:
                    self.stdout.write(f"\tHINT: {message.hint}")
            count = len(messages)
            silenced = sum(1 for o in report.outcomes if o.status.value == "silenced")
            self.stdout.write(
                f"System check identified {count or 'no'} issue{'s' if count != 1 else ''} "
                f"({silenced} silenced)."
            )
        return ExitCode.OK if report.ok else ExitCode.NOT_READY
