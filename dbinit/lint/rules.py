"""Lint rules: what a rule is, what it sees, and what it finds.

A rule is a :class:`LintRule` contributed by a plugin (hook
``dbinit_lint_rules``; dbinit's own come from ``dbinit.plugins.lint``). Its
``check`` gets one revision at a time, as a :class:`RevisionContext` (the
revision, its phase, each statement of its offline SQL as
:class:`~dbinit.lint.classify.StatementFacts`, the release it is part of,
the project's :class:`~dbinit.lint.options.LintSettings`) and yields
:class:`Hit` objects: a message, and the statement it is about. Rules do not
parse SQL and never touch a database::

    from dbinit import hookimpl
    from dbinit.checks import Level
    from dbinit.lint.rules import Hit, LintRule

    def no_truncate(revision):
        for statement in revision.statements:
            if statement.kind == "TRUNCATE":
                yield Hit(f"TRUNCATE {', '.join(statement.tables)}", statement)

    @hookimpl
    def dbinit_lint_rules():
        return [LintRule("acme.L900", "TRUNCATE", no_truncate, level=Level.ERROR,
                         hint="Delete in batches from a job instead")]

dbinit turns hits into :class:`Finding` objects: the rule's id, the level
(the project's ``levels`` setting, else the rule's), the revision, its file
and line, the statement, the hint; then applies the revision file's
suppressions (:mod:`dbinit.lint.suppressions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dbinit.checks import CheckMessage, Level

if TYPE_CHECKING:
    from dbinit.lint.classify import StatementFacts, TransactionControl
    from dbinit.lint.options import LintSettings
    from dbinit.revisions.graph import RevisionGraph
    from dbinit.revisions.phases import RevisionPhase


@dataclasses.dataclass(frozen=True)
class Hit:
    """What a rule found: a message, and the statement it is about (None: the revision as a whole)."""

    msg: str
    statement: StatementFacts | None = None
    #: The line of the revision file it is about, when not the statement's.
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Release:
    """The revisions linted together as one release: those after ``since`` (``--from``)."""

    since: str
    revisions: frozenset[str]
    #: ``since`` and everything before it: what the previous release's code knows.
    previous: frozenset[str]


@dataclasses.dataclass(frozen=True)
class RevisionContext:
    """One revision as a rule sees it."""

    revision: str
    #: The revision file, as the graph names it (None for a sourceless project).
    file: str | None
    path: Path | None
    phase: RevisionPhase
    statements: tuple[StatementFacts, ...]
    #: BEGIN / COMMIT / ROLLBACK of the rendered SQL, each with the line of the revision that sent
    #: it (None: Alembic's own) and whether ``autocommit_block()`` did.
    transaction_control: tuple[TransactionControl, ...]
    #: The SQL's dialect: "postgresql", "sqlite", ...
    dialect: str
    options: LintSettings
    graph: RevisionGraph
    phases: Mapping[str, RevisionPhase]
    #: Set when linting from a revision (``--from`` or ``since``): the release this revision is in.
    release: Release | None
    #: ``DBINIT_DDL_LOCK_TIMEOUT``: ``dbinit migrate`` sets it as ``lock_timeout`` on its sessions.
    ddl_lock_timeout: float | None
    #: The ``CHECK (column IS NOT NULL)`` constraints of the revisions linted before this one.
    not_null: NotNullChecks
    #: The line of ``dbinit_phase = ...`` in the file, if declared.
    declaration_line: int | None = None

    @property
    def declared(self) -> bool:
        return self.phase.source == "declared"

    @property
    def created_tables(self) -> frozenset[str]:
        """Tables this revision creates (empty while it runs: no lock or scan matters)."""
        return frozenset(
            bare(table) for s in self.statements if s.kind == "CREATE TABLE" for table in s.tables
        )

    def existing(self, statement: StatementFacts) -> list[str]:
        """``statement``'s tables that exist before this revision (not created by it)."""
        created = self.created_tables
        return [t for t in statement.tables if bare(t) not in created]

    def large(self, statement: StatementFacts) -> list[str]:
        """``statement``'s existing tables not declared small (``table_rows``)."""
        return [t for t in self.existing(statement) if not self.options.is_small(t)]

    def before(self, statement: StatementFacts) -> tuple[StatementFacts, ...]:
        return self.statements[: statement.position - 1]


Place = tuple[str, "int | None"]  # (revision, its BEGIN ... COMMIT block)


@dataclasses.dataclass(frozen=True)
class NotNullChecks:
    """``CHECK (column IS NOT NULL)`` constraints seen so far: the SET NOT NULL recipe's first steps.

    PostgreSQL 12+ skips SET NOT NULL's scan when such a check is validated (a
    VALIDATE in the transaction that added the check NOT VALID scans under the
    ADD CONSTRAINT's lock: ``dbinit.L009`` reports that).
    """

    #: ``(table, column)`` -> where its check was validated.
    checked: tuple[tuple[tuple[str, str], Place], ...] = ()
    #: Constraint name -> ``(table, column)``, added NOT VALID and not validated yet.
    pending: tuple[tuple[str, tuple[str, str]], ...] = ()

    def after(self, statement: StatementFacts, revision: str) -> NotNullChecks:
        """The state once ``statement`` (of ``revision``) ran."""
        checked = dict(self.checked)
        pending = dict(self.pending)
        here: Place = (revision, statement.transaction)
        for constraint in statement.constraints:
            if constraint.not_null_column is None or not statement.tables:
                continue
            pair = (bare(statement.tables[0]), constraint.not_null_column.lower())
            if not constraint.not_valid:
                checked[pair] = here
            elif constraint.name:
                pending[constraint.name] = pair
        for name in statement.validated:
            if name in pending:
                checked[pending.pop(name)] = here
        return NotNullChecks(tuple(checked.items()), tuple(pending.items()))

    def validated(self, pair: tuple[str, str]) -> bool:
        """A validated ``CHECK (column IS NOT NULL)`` on ``pair`` (table, column)."""
        return pair in dict(self.checked)


def bare(table: str) -> str:
    """A table's name without its schema, lower case."""
    return table.lower().rsplit(".", 1)[-1]


RuleCheck = Callable[[RevisionContext], Iterable[Hit]]


@dataclasses.dataclass(frozen=True)
class LintRule:
    """A lint rule: a stable id, what it is about, the safe recipe, and its check."""

    #: Stable, ``package.L123``; what suppressions and settings name.
    id: str
    title: str
    check: RuleCheck
    level: Level = Level.WARNING
    #: The safe recipe, shown with every finding.
    hint: str = ""
    #: Only meaningful for PostgreSQL's SQL (locks, rewrites, CONCURRENTLY): not run on other dialects.
    postgresql_only: bool = True
    #: The squawk rules it covers (documentation).
    squawk: tuple[str, ...] = ()
    plugin: str = ""

    def __post_init__(self) -> None:
        if "." not in self.id:
            raise ValueError(f"lint rule id {self.id!r} must look like 'package.L001'")


@dataclasses.dataclass(frozen=True)
class Suppressed:
    """A finding's suppression: the comment's line and its reason."""

    line: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Finding:
    """What a rule found, where: the revision, its file and line, the statement."""

    message: CheckMessage
    revision: str
    file: str | None
    line: int | None
    statement: StatementFacts | None
    rule: LintRule
    suppressed: Suppressed | None = None
    #: The revision file on disk (for SARIF's locations).
    path: Path | None = None

    @classmethod
    def of(
        cls,
        rule: LintRule,
        context: RevisionContext,
        msg: str,
        line: int | None,
        statement: StatementFacts | None = None,
    ) -> Finding:
        """``rule``'s finding on ``context``'s revision, at the level the project gives the rule."""
        return cls(
            message=CheckMessage(context.options.level(rule.id, rule.level), msg, rule.hint, rule.id),
            revision=context.revision,
            file=context.file,
            line=line,
            statement=statement,
            rule=rule,
            path=context.path,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.message.id,
            "level": self.message.level.name,
            "msg": self.message.msg,
            "hint": self.message.hint,
            "revision": self.revision,
            "file": self.file,
            "line": self.line,
            "position": self.statement.position if self.statement is not None else None,
            "sql": self.statement.sql if self.statement is not None else None,
            "suppressed": dataclasses.asdict(self.suppressed) if self.suppressed is not None else None,
        }

    @property
    def shown_file(self) -> str:
        """The revision file, relative to the working directory when it is below it."""
        if self.path is not None:
            try:
                return str(self.path.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                pass
        return self.file or "?"

    @property
    def where(self) -> str:
        """``a3 (migrations/versions/a3_drop.py:12, statement 1)``."""
        place = self.shown_file
        if self.line is not None:
            place += f":{self.line}"
        if self.statement is not None:
            place += f", statement {self.statement.position}"
        return f"{self.revision} ({place})"

    def line_text(self) -> str:
        text = f"  {self.message.level.name}: {self.where}: ({self.message.id}) {self.message.msg}"
        if self.suppressed is not None:
            return text + f"\n       suppressed (line {self.suppressed.line}): {self.suppressed.reason}"
        return text + (f"\n       HINT: {self.message.hint}" if self.message.hint else "")


def apply_rules(context: RevisionContext, rules: Iterable[LintRule]) -> list[Finding]:
    """Every enabled rule's findings on one revision, in rule order, unsuppressed."""
    found: list[Finding] = []
    for rule in rules:
        if rule.id in context.options.disable:
            continue
        if rule.postgresql_only and context.dialect != "postgresql":
            continue
        for hit in rule.check(context):
            line = hit.line
            if line is None:
                line = hit.statement.line if hit.statement is not None else context.declaration_line
            found.append(Finding.of(rule, context, hit.msg, line, hit.statement))
    return found
