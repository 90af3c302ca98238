"""Lint revisions: render each one's offline SQL, classify its statements (needs pglast), apply the rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.checks import Level
from dbinit.lint.classify import StatementFacts, TransactionControl, classify
from dbinit.lint.options import LintSettings
from dbinit.lint.rules import (
    Finding,
    LintRule,
    NotNullChecks,
    Release,
    RevisionContext,
    Suppressed,
    apply_rules,
)
from dbinit.lint.sql import RevisionSQL, render_revisions, revisions_to_lint
from dbinit.lint.suppressions import RevisionSource, read_source
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
    #: Every finding, suppressed ones included (:attr:`Finding.suppressed`).
    findings: tuple[Finding, ...] = ()

    @property
    def active(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.suppressed is None)

    def as_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "file": self.file,
            "phase": self.phase.phase,
            "phase_source": self.phase.source,
            "statements": [statement.as_json() for statement in self.statements],
            "findings": [finding.as_json() for finding in self.active],
            "suppressed": [finding.as_json() for finding in self.findings if finding.suppressed is not None],
        }


@dataclasses.dataclass(frozen=True)
class LintReport:
    dialect: str
    revisions: tuple[LintedRevision, ...]
    rules: tuple[LintRule, ...]
    #: The release linted (``--from`` / ``since``), if any.
    since: str | None = None

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The findings not suppressed."""
        return tuple(finding for revision in self.revisions for finding in revision.active)

    @property
    def suppressed(self) -> tuple[Finding, ...]:
        return tuple(f for revision in self.revisions for f in revision.findings if f.suppressed is not None)

    @property
    def not_applied(self) -> tuple[LintRule, ...]:
        """PostgreSQL-only rules, when the SQL is another dialect's."""
        if self.dialect == "postgresql":
            return ()
        return tuple(rule for rule in self.rules if rule.postgresql_only)

    def worst(self) -> Level | None:
        return max((f.message.level for f in self.findings), default=None)

    def as_json(self) -> dict[str, object]:
        return {
            "dialect": self.dialect,
            "since": self.since,
            "revisions": [revision.as_json() for revision in self.revisions],
            "findings": len(self.findings),
            "suppressed": len(self.suppressed),
            "not_applied": [rule.id for rule in self.not_applied],
        }


def lint(
    settings: Settings,
    scripts: MigrationScripts,
    from_revision: str | None,
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
    rules: Sequence[LintRule] | None = None,
    options: LintSettings | None = None,
) -> LintReport:
    """Every revision (or those after ``from_revision``, else ``since``), in upgrade order.

    ``rules``: the registry's (``dbinit_lint_rules``); None: dbinit's own.
    """
    options = options if options is not None else LintSettings.load()
    since = from_revision or options.since
    if rules is None:
        from dbinit.lint.builtin import RULES, SUPPRESSION_RULES

        rules = (*RULES, *SUPPRESSION_RULES)
    all_rules = tuple(rules)
    graph = scripts.graph
    phases = revision_phases(scripts)
    order = revisions_to_lint(scripts, since)
    release = None
    if since is not None:
        start = graph.resolve(since)
        release = Release(start, frozenset(order), frozenset(graph.ancestors((start,))))
    rendered_revisions = render_revisions(settings, scripts, order, contexts, log)
    not_null = NotNullChecks()
    revisions: list[LintedRevision] = []
    for rendered in rendered_revisions:
        phase = phases[rendered.revision]
        classified = classify(rendered.sql, (settings.version_table,))
        statements = tuple(_with_line(s, rendered) for s in classified.statements)
        control = tuple(_control_with_line(c, rendered) for c in classified.transaction_control)
        source = read_source(graph.revisions[rendered.revision].path)
        context = RevisionContext(
            revision=rendered.revision,
            file=rendered.file,
            path=graph.revisions[rendered.revision].path,
            phase=phase,
            statements=statements,
            transaction_control=control,
            dialect=settings.url.backend,
            options=options,
            graph=graph,
            phases=phases,
            release=release,
            ddl_lock_timeout=settings.ddl_lock_timeout,
            not_null=not_null,
            declaration_line=source.declaration_line,
        )
        found = apply_rules(context, all_rules)
        found = _suppress(found, source, context, all_rules)
        for statement in statements:
            not_null = not_null.after(statement, rendered.revision)
        revisions.append(
            LintedRevision(
                revision=rendered.revision,
                file=rendered.file,
                phase=phase,
                statements=statements,
                findings=tuple(found),
            )
        )
    return LintReport(
        dialect=settings.url.backend,
        revisions=tuple(revisions),
        rules=all_rules,
        since=since,
    )


def _with_line(statement: StatementFacts, rendered: RevisionSQL) -> StatementFacts:
    write = rendered.source_of(statement.offset)
    return dataclasses.replace(statement, line=write.line if write is not None else None)


def _control_with_line(control: TransactionControl, rendered: RevisionSQL) -> TransactionControl:
    write = rendered.source_of(control.offset)
    if write is None:
        return control
    return dataclasses.replace(control, line=write.line, autocommit_block=write.autocommit_block)


def _suppress(
    found: list[Finding], source: RevisionSource, context: RevisionContext, rules: Sequence[LintRule]
) -> list[Finding]:
    """Mark the findings the file's suppressions cover; add L100-L102 for bad suppressions."""
    by_id = {rule.id: rule for rule in rules}
    used: set[int] = set()
    result: list[Finding] = []
    for finding in found:
        match = next((s for s in source.suppressions if s.covers(finding.rule.id, finding.line)), None)
        if match is not None:
            used.add(match.line)
            finding = dataclasses.replace(finding, suppressed=Suppressed(match.line, match.reason))
        result.append(finding)

    def add(rule_id: str, msg: str, line: int) -> None:
        rule = by_id[rule_id]
        if rule_id not in context.options.disable:
            result.append(Finding.of(rule, context, msg, line))

    for suppression in source.suppressions:
        unknown = [rule_id for rule_id in suppression.ids if rule_id not in by_id]
        if not suppression.ids:
            add("dbinit.L102", "# dbinit: ignore[] names no rule", suppression.line)
        if unknown:
            add("dbinit.L102", f"the suppression names no known rule: {', '.join(unknown)}", suppression.line)
        if not suppression.reason:
            add(
                "dbinit.L100",
                f"ignore[{', '.join(suppression.ids)}] without a reason: it suppresses "
                "nothing until it says why",
                suppression.line,
            )
        elif suppression.line not in used and not unknown:
            add("dbinit.L101", f"ignore[{', '.join(suppression.ids)}] matches no finding", suppression.line)
    for line, text in source.malformed:
        add("dbinit.L100", f"{text!r} is not a suppression: write # dbinit: ignore[RULE] reason", line)
    return result
