"""dbinit's own lint rules (contributed by ``dbinit.plugins.lint``).

L001-L016 cover squawk's core set, each on the facts PostgreSQL's parser
gives (:mod:`dbinit.lint.classify`); L020-L021 are what only dbinit knows: a
revision's declared phase and the release it ships in. L100-L102 (bad
suppressions) are reported by :mod:`dbinit.lint.suppressions` and listed here
so that they can be named, disabled and leveled like the others.

"Existing table": one the revision does not create itself (an empty table
takes no time to lock, scan or rewrite). "Large": existing and not declared
small in ``[tool.dbinit.lint] table_rows``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dbinit.checks import Level
from dbinit.lint.rules import Hit, LintRule, RevisionContext, bare

if TYPE_CHECKING:
    from dbinit.lint.classify import StatementFacts

CONCURRENT_HINT = (
    "Build it with op.create_index(..., postgresql_concurrently=True) inside "
    "`with op.get_context().autocommit_block():` (a revision of its own, declared expand)"
)
CONTRACT_HINT = (
    "Ship code that no longer uses it first; then remove it in a later revision declared "
    "dbinit_phase = 'contract', deployed once no pod runs the older code"
)


def _outside_contract(revision: RevisionContext) -> tuple[StatementFacts, ...]:
    """The revision's statements, none when it is declared contract: what L002-L005 judge."""
    if revision.declared and revision.phase.phase == "contract":
        return ()
    return revision.statements


def _rebuilt(revision: RevisionContext) -> set[str]:
    """Tables a batch operation rebuilds (SQLite: copy to ``_alembic_tmp_t``, drop ``t``, rename back)."""
    return {
        bare(table).removeprefix("_alembic_tmp_")
        for s in revision.statements
        if s.kind == "RENAME TABLE"
        for table in s.tables
        if bare(table).startswith("_alembic_tmp_")
    }


def index_without_concurrently(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        if s.kind == "CREATE INDEX" and not s.concurrently and revision.large(s):
            tables = ", ".join(revision.large(s))
            yield Hit(
                f"CREATE INDEX without CONCURRENTLY takes a SHARE lock on {tables}: "
                "writes wait until the index is built",
                s,
            )


def drop_column(revision: RevisionContext) -> Iterator[Hit]:
    for s in _outside_contract(revision):
        if s.dropped_columns:
            yield Hit(
                f"DROP COLUMN {', '.join(s.dropped_columns)} on {', '.join(s.tables)} in a revision "
                f"not declared contract ({revision.phase.described}): a release still running that "
                "reads or writes it fails",
                s,
            )


def drop_table(revision: RevisionContext) -> Iterator[Hit]:
    rebuilt = _rebuilt(revision)
    for s in _outside_contract(revision):
        if s.kind == "DROP TABLE":
            dropped = [
                t for t in s.tables if bare(t) not in rebuilt and not bare(t).startswith("_alembic_tmp_")
            ]
            if dropped:
                yield Hit(
                    f"DROP TABLE {', '.join(dropped)} in a revision not declared contract: "
                    "a release still running that uses it fails",
                    s,
                )


def rename_column(revision: RevisionContext) -> Iterator[Hit]:
    for s in _outside_contract(revision):
        if s.kind == "RENAME COLUMN":
            yield Hit(f"{s.reasons[0] if s.reasons else 'RENAME COLUMN'}", s)


def rename_table(revision: RevisionContext) -> Iterator[Hit]:
    for s in _outside_contract(revision):
        if s.kind == "RENAME TABLE" and not any(bare(t).startswith("_alembic_tmp_") for t in s.tables):
            yield Hit(f"{s.reasons[0] if s.reasons else 'RENAME TABLE'}", s)


def change_column_type(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        if s.retyped_columns and revision.existing(s):
            yield Hit(
                f"ALTER COLUMN {', '.join(s.retyped_columns)} TYPE on {', '.join(revision.existing(s))}: "
                "ACCESS EXCLUSIVE while the table is rewritten (unless the types are binary-coercible), "
                "and the previous release may not read the new type",
                s,
            )


def add_required_column(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        if s.required_columns and revision.existing(s):
            yield Hit(
                f"ADD COLUMN {', '.join(s.required_columns)} NOT NULL without a default on "
                f"{', '.join(revision.existing(s))}: fails on a table with rows, and the previous "
                "release's inserts fail after it",
                s,
            )


def set_not_null(revision: RevisionContext) -> Iterator[Hit]:
    state = revision.not_null
    for s in revision.statements:
        state = state.after(s, revision.revision)
        tables = revision.large(s)
        missing = [c for c in s.not_null_columns for t in tables if not state.validated((bare(t), c.lower()))]
        if missing:
            yield Hit(
                f"SET NOT NULL on {', '.join(missing)} of {', '.join(tables)}: ACCESS EXCLUSIVE while the "
                "whole table is scanned (no validated CHECK (... IS NOT NULL) before it)",
                s,
            )


def constraint_without_not_valid(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        # the altered table comes first (a foreign key's referenced table after it)
        if (
            s.kind != "ALTER TABLE"
            or not s.tables
            or not revision.large(s)
            or bare(s.tables[0]) in (revision.created_tables)
            or revision.options.is_small(s.tables[0])
        ):
            continue
        for constraint in s.constraints:
            if constraint.kind in ("CHECK", "FOREIGN") and not constraint.not_valid:
                label = "FOREIGN KEY" if constraint.kind == "FOREIGN" else "CHECK"
                named = f" {constraint.name}" if constraint.name else ""
                yield Hit(
                    f"ADD CONSTRAINT{named} {label} on {s.tables[0]} without NOT VALID: the table is "
                    "scanned under a lock that blocks writes",
                    s,
                )
    added: dict[str, int | None] = {}  # NOT VALID constraints of this revision -> their transaction
    for s in revision.statements:
        for constraint in s.constraints:
            if constraint.not_valid and constraint.name:
                added[constraint.name] = s.transaction
        for name in s.validated:
            if name in added and added[name] is not None and added[name] == s.transaction:
                yield Hit(
                    f"VALIDATE CONSTRAINT {name} in the transaction that added it NOT VALID: the scan runs "
                    "under the ADD CONSTRAINT's lock, which is held until COMMIT",
                    s,
                )


_STRONG = ("SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")


def missing_lock_timeout(revision: RevisionContext) -> Iterator[Hit]:
    if revision.ddl_lock_timeout:
        return
    for s in revision.statements:
        if s.kind == "SET" and s.setting == "lock_timeout":
            return
        if s.lock in _STRONG and revision.existing(s):
            yield Hit(
                f"{s.kind} takes {s.lock} on {', '.join(revision.existing(s))} with no lock_timeout: "
                "while it waits for a long transaction, every query on the table queues behind it",
                s,
            )
            return


def concurrently_in_transaction(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        if s.concurrently and s.in_transaction:
            yield Hit(
                f"{s.kind} CONCURRENTLY inside the migration's transaction: PostgreSQL refuses it "
                "(cannot run inside a transaction block)",
                s,
            )


def transaction_nesting(revision: RevisionContext) -> Iterator[Hit]:
    for control in revision.transaction_control:
        if control.line is not None and not control.autocommit_block:
            yield Hit(
                f"the revision sends {control.sql}: it ends (or nests) the transaction Alembic runs it in, "
                "so a failure after it no longer rolls back what came before",
                line=control.line,
            )


def rewriting_column(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        tables = revision.large(s)
        if s.rewriting_columns and tables:
            yield Hit(
                f"ADD COLUMN {', '.join(s.rewriting_columns)} with a per-row value (volatile default, "
                f"serial, identity or generated) rewrites {', '.join(tables)} under ACCESS EXCLUSIVE",
                s,
            )


def unique_without_index(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        tables = revision.large(s)
        if s.kind != "ALTER TABLE" or not tables:
            continue
        for constraint in s.constraints:
            if constraint.kind in ("PRIMARY", "UNIQUE") and not constraint.using_index:
                label = "PRIMARY KEY" if constraint.kind == "PRIMARY" else "UNIQUE"
                yield Hit(
                    f"ADD {label} on {', '.join(tables)} builds its index under ACCESS EXCLUSIVE: "
                    "reads and writes wait until it is built",
                    s,
                )


def drop_index_without_concurrently(revision: RevisionContext) -> Iterator[Hit]:
    new = {bare(s.index) for s in revision.statements if s.kind == "CREATE INDEX" and s.index}
    for s in revision.statements:
        if s.kind == "DROP INDEX" and all(bare(name) in new for name in s.tables):
            continue  # indexes this revision builds: nothing uses them yet
        if s.kind == "DROP INDEX" and not s.concurrently:
            yield Hit(
                f"DROP INDEX {', '.join(s.tables)} without CONCURRENTLY: ACCESS EXCLUSIVE on its table", s
            )


def unparsed(revision: RevisionContext) -> Iterator[Hit]:
    for s in revision.statements:
        if s.parse_error is not None:
            yield Hit(f"PostgreSQL's parser refuses this statement: {s.parse_error}; it cannot be checked", s)


def phase_contradiction(revision: RevisionContext) -> Iterator[Hit]:
    if not (revision.declared and revision.phase.phase == "expand"):
        return
    for s in revision.statements:
        if s.phase == "contract":
            why = next((r for r in s.reasons), s.kind)
            yield Hit(f"declared dbinit_phase = 'expand', but this statement is a contract: {why}", s)


def contract_in_release(revision: RevisionContext) -> Iterator[Hit]:
    release = revision.release
    if release is None or revision.phase.phase != "contract":
        return
    since = revision.phase.compatible_since
    if since in release.previous:
        return
    if since == revision.revision and not revision.declared:
        return  # an inferred contract: L002-L005 name the statement that breaks older code
    expand = revision.phases.get(since)
    depends = (
        f" (it depends on {since}, an expand of this same release)"
        if expand is not None and expand.phase == "expand" and since in release.revisions
        else ""
    )
    yield Hit(
        f"{revision.revision} is a contract{depends}: after it, only code from {since} on works, and the "
        f"previous release (at {release.since}) is still running during the rollout",
    )


RULES: tuple[LintRule, ...] = (
    LintRule(
        "dbinit.L001",
        "CREATE INDEX without CONCURRENTLY",
        index_without_concurrently,
        hint=CONCURRENT_HINT,
        squawk=("require-concurrent-index-creation",),
    ),
    LintRule(
        "dbinit.L002",
        "DROP COLUMN outside a contract revision",
        drop_column,
        level=Level.ERROR,
        hint=CONTRACT_HINT,
        postgresql_only=False,
        squawk=("ban-drop-column",),
    ),
    LintRule(
        "dbinit.L003",
        "DROP TABLE outside a contract revision",
        drop_table,
        level=Level.ERROR,
        hint=CONTRACT_HINT,
        postgresql_only=False,
        squawk=("ban-drop-table",),
    ),
    LintRule(
        "dbinit.L004",
        "RENAME COLUMN",
        rename_column,
        level=Level.ERROR,
        hint="Add the new column (expand), write both from the code, backfill, switch reads, then drop "
        "the old one in a contract revision; or declare the revision dbinit_phase = 'contract'",
        postgresql_only=False,
        squawk=("renaming-column",),
    ),
    LintRule(
        "dbinit.L005",
        "RENAME TABLE",
        rename_table,
        level=Level.ERROR,
        hint="Create the new table (or a view under the old name) in an expand revision and move the "
        "code over first; or declare the revision dbinit_phase = 'contract'",
        postgresql_only=False,
        squawk=("renaming-table",),
    ),
    LintRule(
        "dbinit.L006",
        "ALTER COLUMN TYPE",
        change_column_type,
        level=Level.ERROR,
        hint="Add a column of the new type, backfill it in batches, switch the code, then drop the "
        "old column in a contract revision",
        squawk=("changing-column-type",),
    ),
    LintRule(
        "dbinit.L007",
        "ADD COLUMN NOT NULL without a default",
        add_required_column,
        level=Level.ERROR,
        hint="Give it a server_default (a constant default is instant on PostgreSQL 11+), or add it "
        "nullable, backfill, then SET NOT NULL with the CHECK ... NOT VALID recipe",
        postgresql_only=False,
        squawk=("adding-required-field",),
    ),
    LintRule(
        "dbinit.L008",
        "SET NOT NULL on a large table",
        set_not_null,
        hint="First op.create_check_constraint(name, table, 'col IS NOT NULL', postgresql_not_valid=True), "
        "then ALTER TABLE ... VALIDATE CONSTRAINT name (no write lock), then SET NOT NULL (PostgreSQL "
        "12+ skips the scan), then drop the check",
        squawk=("adding-not-nullable-field",),
    ),
    LintRule(
        "dbinit.L009",
        "constraint without NOT VALID",
        constraint_without_not_valid,
        hint="Add it with postgresql_not_valid=True (op.create_check_constraint / "
        "op.create_foreign_key), then VALIDATE CONSTRAINT in a later revision (its own transaction)",
        squawk=("constraint-missing-not-valid", "adding-foreign-key-constraint"),
    ),
    LintRule(
        "dbinit.L010",
        "lock without lock_timeout",
        missing_lock_timeout,
        hint="Set DBINIT_DDL_LOCK_TIMEOUT (or ddl_lock_timeout in [tool.dbinit], so CI and the Job "
        "agree): dbinit migrate sets it as lock_timeout on its sessions; or "
        "op.execute(\"SET lock_timeout = '5s'\") first in the revision",
        squawk=("require-timeout-settings",),
    ),
    LintRule(
        "dbinit.L011",
        "CONCURRENTLY inside a transaction",
        concurrently_in_transaction,
        level=Level.ERROR,
        hint="Run it inside `with op.get_context().autocommit_block():`",
        squawk=("ban-concurrent-index-creation-in-transaction",),
    ),
    LintRule(
        "dbinit.L012",
        "transaction control in a revision",
        transaction_nesting,
        level=Level.ERROR,
        hint="Leave transactions to Alembic; for statements that cannot run in one, use "
        "`with op.get_context().autocommit_block():`",
        squawk=("transaction-nesting",),
    ),
    LintRule(
        "dbinit.L013",
        "ADD COLUMN that rewrites the table",
        rewriting_column,
        hint="Add the column without the per-row default (nullable, or a constant default), then "
        "backfill in batches and set the default for new rows",
        squawk=("adding-field-with-default", "adding-serial-primary-key-field"),
    ),
    LintRule(
        "dbinit.L014",
        "PRIMARY KEY / UNIQUE without USING INDEX",
        unique_without_index,
        hint="CREATE UNIQUE INDEX CONCURRENTLY first (autocommit_block), then "
        "ALTER TABLE ... ADD CONSTRAINT name UNIQUE USING INDEX index_name",
        squawk=("disallowed-unique-constraint", "adding-primary-key-constraint"),
    ),
    LintRule(
        "dbinit.L015",
        "DROP INDEX without CONCURRENTLY",
        drop_index_without_concurrently,
        hint="op.drop_index(..., postgresql_concurrently=True) inside "
        "`with op.get_context().autocommit_block():`",
        squawk=("require-concurrent-index-deletion",),
    ),
    LintRule(
        "dbinit.L016",
        "SQL PostgreSQL cannot parse",
        unparsed,
        hint="Check the statement: PostgreSQL will refuse what its own parser refuses",
    ),
    LintRule(
        "dbinit.L020",
        "declared expand, but a contract statement",
        phase_contradiction,
        level=Level.ERROR,
        hint="Declare dbinit_phase = 'contract' (and deploy it after the code that stops using what it "
        "removes), or move the contract statement to a later revision",
        postgresql_only=False,
    ),
    LintRule(
        "dbinit.L021",
        "contract in the release of the expand it depends on",
        contract_in_release,
        level=Level.ERROR,
        hint="Ship the expand (and code that stops using what the contract removes) in one release, the "
        "contract in the next; or declare dbinit_compatible_since if the previous release's code "
        "already does not use it",
        postgresql_only=False,
    ),
)

#: Reported by the suppressions reader; rules here so they can be named, leveled and disabled.
SUPPRESSION_RULES: tuple[LintRule, ...] = (
    LintRule(
        "dbinit.L100",
        "suppression without a reason",
        lambda revision: (),
        level=Level.ERROR,
        hint="Say why after the bracket: # dbinit: ignore[dbinit.L001] orders has 200 rows",
        postgresql_only=False,
    ),
    LintRule(
        "dbinit.L101",
        "suppression that matches no finding",
        lambda revision: (),
        hint="Remove it (the finding it was for is gone), or move it next to the operation",
        postgresql_only=False,
    ),
    LintRule(
        "dbinit.L102",
        "suppression of an unknown rule",
        lambda revision: (),
        level=Level.ERROR,
        hint="Name a rule `dbinit lint --list-rules` shows",
        postgresql_only=False,
    ),
)
