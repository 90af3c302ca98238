"""The first lint rules: a finding per statement, as a Django-style message with a stable id.

A rule looks at one statement of one revision (and the statements before it
in that revision) and returns a :class:`~dbinit.checks.CheckMessage` or None.
Rules do not parse: they read :class:`~dbinit.lint.classify.StatementFacts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dbinit.checks import CheckMessage, Warning

if TYPE_CHECKING:
    from dbinit.lint.classify import StatementFacts
    from dbinit.revisions.phases import RevisionPhase

#: A rule: (the statement, the revision's statements before it, the revision's phase) -> a finding.
RuleFunction = Callable[["StatementFacts", "Sequence[StatementFacts]", "RevisionPhase"], CheckMessage | None]


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    title: str
    check: RuleFunction


@dataclasses.dataclass(frozen=True)
class Finding:
    """What a rule found, where: the revision, its file, the statement."""

    message: CheckMessage
    revision: str
    file: str | None
    statement: StatementFacts

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.message.id,
            "level": self.message.level.name,
            "msg": self.message.msg,
            "hint": self.message.hint,
            "revision": self.revision,
            "file": self.file,
            "position": self.statement.position,
            "sql": self.statement.sql,
        }

    def line(self) -> str:
        where = f"{self.revision} statement {self.statement.position}"
        text = f"  {self.message.level.name}: {where}: ({self.message.id}) {self.message.msg}"
        return text + (f"\n       HINT: {self.message.hint}" if self.message.hint else "")


def _created_before(before: Sequence[StatementFacts]) -> set[str]:
    return {table for statement in before if statement.kind == "CREATE TABLE" for table in statement.tables}


def index_without_concurrently(
    statement: StatementFacts, before: Sequence[StatementFacts], phase: RevisionPhase
) -> CheckMessage | None:
    if statement.kind != "CREATE INDEX" or statement.concurrently:
        return None
    if set(statement.tables) <= _created_before(before):  # a table this revision creates: empty
        return None
    tables = ", ".join(statement.tables)
    return Warning(
        f"CREATE INDEX without CONCURRENTLY takes a SHARE lock on {tables}: writes wait until it is built",
        hint="Build it with op.create_index(..., postgresql_concurrently=True) inside "
        "`with op.get_context().autocommit_block():`",
        id="dbinit.L001",
    )


def drop_column(
    statement: StatementFacts, before: Sequence[StatementFacts], phase: RevisionPhase
) -> CheckMessage | None:
    if not statement.dropped_columns:
        return None
    columns = ", ".join(statement.dropped_columns)
    return Warning(
        f"DROP COLUMN {columns} on {', '.join(statement.tables)} (a {phase.phase} revision): "
        "a release still running that reads or writes it fails",
        hint="Ship code that no longer uses the column first; drop it in a later revision declared "
        "phase = 'contract', after that release has rolled out",
        id="dbinit.L002",
    )


RULES: tuple[Rule, ...] = (
    Rule("dbinit.L001", "CREATE INDEX without CONCURRENTLY", index_without_concurrently),
    Rule("dbinit.L002", "DROP COLUMN", drop_column),
)


def findings(
    revision: str, file: str | None, phase: RevisionPhase, statements: Sequence[StatementFacts]
) -> list[Finding]:
    """Every rule's finding on every statement of one revision, in statement order."""
    found: list[Finding] = []
    for index, statement in enumerate(statements):
        for rule in RULES:
            message = rule.check(statement, statements[:index], phase)
            if message is not None:
                found.append(Finding(message, revision, file, statement))
    return found
