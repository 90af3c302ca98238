"""``dbinit lint --format sarif``: SARIF 2.1.0, the format code-scanning UIs read.

One run, tool ``dbinit``; every rule with its id, title, recipe and default
level; every finding as a result located at its revision file and line
(relative to the project directory, base ``%SRCROOT%``). Suppressed findings
are results with an ``inSource`` suppression and their reason, as SARIF
has it, so a UI shows them as dismissed rather than hiding them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dbinit.checks import Level

if TYPE_CHECKING:
    from dbinit.lint.rules import Finding
    from dbinit.lint.run import LintReport

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
#: SARIF's levels: error, warning, note.
_LEVELS = {Level.CRITICAL: "error", Level.ERROR: "error", Level.WARNING: "warning"}


def _level(level: Level) -> str:
    return _LEVELS.get(level, "note")


def _uri(finding: Finding, root: Path) -> str | None:
    if finding.path is None:
        return finding.file
    try:
        return Path(os.path.relpath(finding.path.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive
        return finding.path.as_posix()


def sarif(report: LintReport, root: Path, version: str) -> dict[str, object]:
    """The report as a SARIF log (a dict, for JSON)."""
    rules = list(report.rules)
    index = {rule.id: number for number, rule in enumerate(rules)}
    results: list[dict[str, object]] = []
    findings = [f for revision in report.revisions for f in revision.findings]
    for finding in findings:
        result: dict[str, object] = {
            "ruleId": finding.rule.id,
            "ruleIndex": index.get(finding.rule.id, -1),
            "level": _level(finding.message.level),
            "message": {"text": f"{finding.revision}: {finding.message.msg}"},
            "properties": {
                "revision": finding.revision,
                "statement": finding.statement.sql if finding.statement else None,
            },
        }
        uri = _uri(finding, root)
        if uri is not None:
            location: dict[str, object] = {"artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"}}
            if finding.line is not None:
                location["region"] = {"startLine": finding.line}
            result["locations"] = [{"physicalLocation": location}]
        if finding.suppressed is not None:
            result["suppressions"] = [{"kind": "inSource", "justification": finding.suppressed.reason}]
        results.append(result)
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "dbinit",
                        "version": version,
                        "informationUri": "https://pypi.org/project/dbinit-alembic/",
                        "rules": [
                            {
                                "id": rule.id,
                                "name": rule.title,
                                "shortDescription": {"text": rule.title},
                                "help": {"text": rule.hint or rule.title},
                                "defaultConfiguration": {"level": _level(rule.level)},
                                "properties": {
                                    "plugin": rule.plugin,
                                    "postgresql_only": rule.postgresql_only,
                                },
                            }
                            for rule in rules
                        ],
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": root.resolve().as_uri() + "/"}},
                "results": results,
            }
        ],
    }
