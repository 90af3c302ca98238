"""Lint revisions: render each one's offline SQL, classify its statements (needs pglast)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.lint.classify import StatementFacts, classify_sql
from dbinit.lint.rules import Finding, findings
from dbinit.lint.sql import render_revisions, revisions_to_lint
from dbinit.revisions.phases import RevisionPhase, revision_phases

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.hookspecs import PluginContext
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings


@dataclasses.dataclass(frozen=True)
class LintedRevision:
    """One revision and what each statement of its offline SQL does."""

    revision: str
    file: str | None
    #: The revision's phase as dbinit reads it (declared, or inferred from its operations).
    phase: RevisionPhase
    statements: tuple[StatementFacts, ...]
    findings: tuple[Finding, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "file": self.file,
            "phase": self.phase.phase,
            "phase_source": self.phase.source,
            "statements": [statement.as_json() for statement in self.statements],
            "findings": [finding.as_json() for finding in self.findings],
        }


@dataclasses.dataclass(frozen=True)
class LintReport:
    dialect: str
    revisions: tuple[LintedRevision, ...]

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(finding for revision in self.revisions for finding in revision.findings)

    def as_json(self) -> dict[str, object]:
        return {
            "dialect": self.dialect,
            "revisions": [revision.as_json() for revision in self.revisions],
            "findings": len(self.findings),
        }


def lint(
    settings: Settings,
    scripts: MigrationScripts,
    from_revision: str | None,
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
) -> LintReport:
    """Every revision (or those after ``from_revision``), in upgrade order."""
    phases = revision_phases(scripts)
    ignore = (settings.version_table,)
    rendered_revisions = render_revisions(
        settings, scripts, revisions_to_lint(scripts, from_revision), contexts, log
    )
    revisions: list[LintedRevision] = []
    for rendered in rendered_revisions:
        phase = phases[rendered.revision]
        statements = tuple(classify_sql(rendered.sql, ignore))
        revisions.append(
            LintedRevision(
                revision=rendered.revision,
                file=rendered.file,
                phase=phase,
                statements=statements,
                findings=tuple(findings(rendered.revision, rendered.file, phase, statements)),
            )
        )
    return LintReport(dialect=settings.url.backend, revisions=tuple(revisions))
