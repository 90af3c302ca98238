"""dbinit lint and squawk side by side, on the lint corpus.

Each shape of tests/plugins/lint_corpus.py is rendered as its migration job
sends it -- Alembic's offline SQL of each revision after FROM, one transaction
per revision as ``dbinit migrate`` runs them, autocommit blocks and all -- and
given to squawk (tests/plugins/squawk.py
installs the pinned version). squawk's rules are mapped to dbinit's
(:data:`SQUAWK_RULES`); for each shape, what squawk reports must be
:data:`SQUAWK_EXPECTED`, and where the two linters disagree the reason must be
in :data:`DIFFERENCES`. docs/lint_vs_squawk.md is the comparison, generated;
regenerate it with ``DBINIT_UPDATE_DOCS=1``.

The dbinit side is the corpus's expectation (``EXPECTED``), which
tests/test_lint_corpus.py checks against ``dbinit lint`` itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.databases import ROOT, clean_env
from tests.plugins.lint_corpus import BASE, BY_NAME, EXPECTED, SHAPES, Shape, build
from tests.plugins.squawk import PG_VERSION, VERSION, SquawkUnavailable, run_squawk, squawk_binary

DOC = ROOT / "docs" / "lint_vs_squawk.md"
TEMPLATE_URL = "driver://user:pass@localhost/dbname"  # alembic init's placeholder
OFFLINE_URL = "postgresql+psycopg://u@127.0.0.1:1/x"  # offline SQL: nothing listens here


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A squawk rule: the dbinit rules that report the same hazard, or why dbinit has none."""

    dbinit: tuple[str, ...]
    why: str


def same(*ids: str, note: str = "") -> Mapping:
    return Mapping(tuple(f"dbinit.{i}" for i in ids), note)


def none(why: str) -> Mapping:
    return Mapping((), why)


def rules(names: str) -> tuple[str, ...]:
    """squawk rule names, space-separated."""
    return tuple(names.split())


_BREAKS = (
    "the previous release breaks: dbinit reports it outside a declared contract, or (L021, with --from) "
    "a declared contract the running release is not compatible with"
)
_DESIGN = "schema design (what a column holds), not what the migration does to a live database"

#: Every squawk rule (squawk's rule list, and the names squawk 2.66 reports), mapped.
SQUAWK_RULES: dict[str, Mapping] = {
    "adding-field-with-default": same("L013", note="a volatile default or a generated column rewrites"),
    "adding-foreign-key-constraint": same("L009"),
    "adding-not-nullable-field": same("L008"),
    "adding-required-field": same("L007"),
    "adding-serial-primary-key-field": same("L014"),
    "ban-alter-domain-with-add-constraint": none("not covered: dbinit does not classify domains yet"),
    "ban-char-field": none(_DESIGN),
    "ban-concurrent-index-creation-in-transaction": same("L011"),
    "ban-create-domain-with-constraint": none("not covered: dbinit does not classify domains yet"),
    "ban-drop-column": same("L002", "L021", note=_BREAKS),
    "ban-drop-database": none("not a revision's statement: PostgreSQL refuses DROP DATABASE inside the "
                              "migration's transaction, and of the database it is connected to"),
    "ban-drop-not-null": none("DROP NOT NULL relaxes a rule: the previous release keeps working "
                              "(dbinit classifies it expand)"),
    "ban-drop-table": same("L003", "L021", note=_BREAKS),
    "ban-truncate-cascade": none("not covered: TRUNCATE is a contract, CASCADE's reach is not followed"),
    "ban-uncommitted-transaction": same("L012", note="Alembic opens and commits the transaction itself"),
    "changing-column-type": same("L006"),
    "constraint-missing-not-valid": same("L009"),
    "disallowed-unique-constraint": same("L014"),
    "identifier-too-long": none("not covered: PostgreSQL truncates names to 63 bytes with a NOTICE"),
    "prefer-bigint-over-int": none(_DESIGN),
    "prefer-bigint-over-smallint": none(_DESIGN),
    "prefer-identity": none(_DESIGN + "; adding a serial column to an existing table is L013 (a rewrite)"),
    "prefer-repack": none("not covered"),
    "prefer-robust-stmts": none(
        "style, not safety: Alembic runs a revision once and records it in alembic_version; "
        "squawk asks for IF [NOT] EXISTS only outside a transaction (autocommit blocks), "
        "and IF [NOT] EXISTS would hide a schema that drifted"
    ),
    "prefer-text-field": none(_DESIGN + "; changing a varchar's length later is L006"),
    "prefer-timestamptz": none(_DESIGN),
    "renaming-column": same("L004", "L021", note=_BREAKS),
    "renaming-table": same("L005", "L021", note=_BREAKS),
    "require-concurrent-index-creation": same("L001"),
    "require-concurrent-index-deletion": same("L015"),
    "require-concurrent-partition-detach": none("not covered: dbinit does not classify partitions yet"),
    "require-concurrent-reindex": none("not covered: REINDEX is not classified yet"),
    "require-enum-value-ordering": none("not covered: ALTER TYPE ... ADD VALUE is not classified yet"),
    "require-lock-timeout": same("L010"),
    "require-statement-timeout": none(
        "a migration job's long statements are expected (backfills, VALIDATE, CREATE INDEX "
        "CONCURRENTLY); what hurts the service is waiting for a lock, which L010 (lock_timeout) "
        "reports; a job that wants statement_timeout sets it itself"
    ),
    "require-table-schema": none("opt-in in squawk, not enabled here"),
    "require-timeout-settings": same("L010", note="squawk's name for lock_timeout + statement_timeout"),
    "syntax-error": same("L016"),
    "transaction-nesting": same("L012"),
}

#: What squawk reports on each shape's offline SQL: its rule names, once each, sorted.
SQUAWK_EXPECTED: dict[str, tuple[str, ...]] = {
    "index_plain": rules("require-concurrent-index-creation require-statement-timeout"),
    "index_unique_plain": rules("require-concurrent-index-creation require-statement-timeout"),
    "index_raw_sql": rules("require-concurrent-index-creation require-statement-timeout"),
    "index_concurrently_autocommit": rules("prefer-robust-stmts require-statement-timeout"),
    "index_on_new_table": rules("prefer-bigint-over-int prefer-identity require-statement-timeout"),
    "drop_column": rules("ban-drop-column require-statement-timeout"),
    "drop_column_contract": rules("ban-drop-column require-statement-timeout"),
    "drop_column_raw_sa_text": rules("ban-drop-column require-statement-timeout"),
    "drop_column_raw_quoted_lowercase": rules("ban-drop-column require-statement-timeout"),
    "drop_table": rules("ban-drop-table require-statement-timeout"),
    "drop_table_contract": rules("ban-drop-table require-statement-timeout"),
    "rename_column": rules("renaming-column require-statement-timeout"),
    "rename_column_contract": rules("renaming-column require-statement-timeout"),
    "rename_table": rules("renaming-table require-statement-timeout"),
    "rename_table_contract": rules("renaming-table require-statement-timeout"),
    "alter_type": rules("changing-column-type prefer-text-field require-statement-timeout"),
    "alter_type_raw_using": rules("changing-column-type require-statement-timeout"),
    "alter_type_new_table": rules(
        "changing-column-type prefer-bigint-over-int prefer-identity require-statement-timeout"
    ),
    "add_not_null_no_default": rules("adding-required-field require-statement-timeout"),
    "add_not_null_server_default": rules("require-statement-timeout"),
    "add_nullable": rules("require-statement-timeout"),
    "set_not_null": rules("adding-not-nullable-field require-statement-timeout"),
    "set_not_null_raw_triple_quoted": rules("adding-not-nullable-field require-statement-timeout"),
    "set_not_null_check_recipe": rules("constraint-missing-not-valid require-statement-timeout"),
    "set_not_null_recipe_earlier_revision": rules("require-statement-timeout"),
    "check_constraint": rules("constraint-missing-not-valid require-statement-timeout"),
    "foreign_key": rules(
        "adding-foreign-key-constraint constraint-missing-not-valid require-statement-timeout"
    ),
    "foreign_key_not_valid_then_validate": rules("require-statement-timeout"),
    "foreign_key_not_valid_validate_same_revision": rules(
        "constraint-missing-not-valid require-statement-timeout"
    ),
    "check_constraint_new_table": rules("prefer-bigint-over-int prefer-identity require-statement-timeout"),
    "no_lock_timeout": rules("require-lock-timeout require-statement-timeout"),
    "no_lock_timeout_one_per_revision": rules("require-lock-timeout require-statement-timeout"),
    "no_lock_timeout_each_revision": rules("require-lock-timeout require-statement-timeout"),
    "lock_timeout_too_late": rules("require-lock-timeout require-statement-timeout"),
    "set_local_lock_timeout": rules("require-statement-timeout"),
    "no_lock_timeout_new_table_only": rules("prefer-bigint-over-int prefer-identity"),
    "index_concurrently_in_transaction": rules(
        "ban-concurrent-index-creation-in-transaction prefer-robust-stmts require-statement-timeout"
    ),
    "drop_index_concurrently_in_transaction": rules("require-statement-timeout"),
    "commit_inside_migration": rules("require-statement-timeout transaction-nesting"),
    "rollback_inside_migration": rules("transaction-nesting"),
    "add_column_volatile_default": rules("adding-field-with-default require-statement-timeout"),
    "add_column_bigserial_raw": rules("prefer-identity require-statement-timeout"),
    "add_column_identity": rules("adding-field-with-default require-statement-timeout"),
    "add_column_stored_generated": rules("adding-field-with-default require-statement-timeout"),
    "add_column_now_default": rules("require-statement-timeout"),
    "unique_constraint": rules(
        "constraint-missing-not-valid disallowed-unique-constraint require-statement-timeout"
    ),
    "primary_key": rules(
        "adding-serial-primary-key-field constraint-missing-not-valid require-statement-timeout"
    ),
    "unique_using_concurrent_index": rules("prefer-robust-stmts require-statement-timeout"),
    "drop_index": rules("require-concurrent-index-deletion require-statement-timeout"),
    "drop_index_raw_sql": rules("require-concurrent-index-deletion require-statement-timeout"),
    "drop_index_concurrently_autocommit": rules("prefer-robust-stmts require-statement-timeout"),
    "drop_index_of_new_table": rules(
        "prefer-bigint-over-int prefer-identity require-concurrent-index-deletion "
        "require-statement-timeout"
    ),
    "mysql_syntax": rules("syntax-error"),
    "sqlite_pragma_among_statements": rules("syntax-error"),
    "expand_declared_drops_column": rules("ban-drop-column require-statement-timeout"),
    "expand_declared_renames_table": rules("renaming-table require-statement-timeout"),
    "expand_declared_adds_column": rules("require-statement-timeout"),
    "expand_and_contract_in_one_release": rules("ban-drop-column require-statement-timeout"),
    "contract_in_a_later_release": rules("ban-drop-column require-statement-timeout"),
    "contract_breaking_the_base_release": rules("ban-drop-column require-statement-timeout"),
    "contract_without_from": rules("ban-drop-column require-statement-timeout"),
    "suppressed_with_reason": rules("require-concurrent-index-creation require-statement-timeout"),
    "suppressed_on_the_same_line": rules("require-concurrent-index-creation require-statement-timeout"),
    "suppressed_two_ids": rules(
        "require-concurrent-index-creation require-lock-timeout require-statement-timeout"
    ),
    "suppression_without_reason": rules("require-concurrent-index-creation require-statement-timeout"),
    "suppression_matching_nothing": rules("require-statement-timeout"),
    "suppression_unknown_rule": rules("require-concurrent-index-creation require-statement-timeout"),
    "raw_multi_statement": rules("require-concurrent-index-creation require-statement-timeout"),
    "raw_data_update": rules(""),
    "raw_dollar_quoted_function": rules("require-statement-timeout"),
    "raw_leading_comment": rules("require-concurrent-index-creation require-statement-timeout"),
}

_CONTRACT = "declared contract, compatible with the release running before it: the expand/contract way"
_SUPPRESSED = "suppressed in the revision file, with a reason (squawk does not read Python comments)"
_NEW_TABLE = "on a table the same revision creates: empty, nobody else uses it yet"
_PHASE = "a revision's declared phase (dbinit_phase) is dbinit's own: squawk has no notion of it"
_SQUAWK_UNIQUE = "PostgreSQL has no NOT VALID for UNIQUE or PRIMARY KEY; dbinit asks for USING INDEX (L014)"

#: Where the two disagree on a shape, and why: (shape, squawk rule or dbinit id) -> reason. A squawk
#: rule here is one whose dbinit rules did not fire; a dbinit id, one no squawk rule reported.
DIFFERENCES: dict[tuple[str, str], str] = {
    ("alter_type_new_table", "changing-column-type"): _NEW_TABLE,
    ("drop_index_of_new_table", "require-concurrent-index-deletion"): _NEW_TABLE,
    ("drop_column_contract", "ban-drop-column"): _CONTRACT,
    ("drop_table_contract", "ban-drop-table"): _CONTRACT,
    ("rename_column_contract", "renaming-column"): _CONTRACT,
    ("rename_table_contract", "renaming-table"): _CONTRACT,
    ("contract_in_a_later_release", "ban-drop-column"): "linted --from r1: the running release has the "
    "expand, and the contract declares it compatible since r1",
    ("contract_without_from", "ban-drop-column"): "declared contract; without --from dbinit does not know "
    "the running release (L021 needs --from)",
    ("unique_constraint", "constraint-missing-not-valid"): _SQUAWK_UNIQUE,
    ("primary_key", "constraint-missing-not-valid"): _SQUAWK_UNIQUE,
    ("suppressed_with_reason", "require-concurrent-index-creation"): _SUPPRESSED,
    ("suppressed_on_the_same_line", "require-concurrent-index-creation"): _SUPPRESSED,
    ("suppressed_two_ids", "require-concurrent-index-creation"): _SUPPRESSED,
    ("suppressed_two_ids", "require-lock-timeout"): _SUPPRESSED,
    ("drop_index_concurrently_in_transaction", "dbinit.L011"): "squawk's "
    "ban-concurrent-index-creation-in-transaction covers CREATE only; PostgreSQL refuses DROP INDEX "
    "CONCURRENTLY in a transaction block just the same",
    ("add_column_bigserial_raw", "dbinit.L013"): "squawk reports only prefer-identity (design): a bigserial "
    "column's nextval() default rewrites the table under ACCESS EXCLUSIVE",
    ("expand_declared_drops_column", "dbinit.L020"): _PHASE,
    ("expand_declared_renames_table", "dbinit.L020"): _PHASE,
    ("suppression_without_reason", "dbinit.L100"): "dbinit's suppression comments",
    ("suppression_matching_nothing", "dbinit.L101"): "dbinit's suppression comments",
    ("suppression_unknown_rule", "dbinit.L102"): "dbinit's suppression comments",
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One shape: what each linter reports, and how it lines up."""

    shape: str
    dbinit: tuple[str, ...]
    squawk: tuple[str, ...]
    #: squawk rules dbinit also reports (one of the rule's dbinit ids among dbinit's).
    both: tuple[str, ...]
    #: squawk rules with a dbinit counterpart that did not fire here.
    squawk_only: tuple[str, ...]
    #: squawk rules dbinit does not cover on purpose (see the rule table).
    not_covered: tuple[str, ...]
    #: dbinit ids no squawk rule reported on this shape (a dbinit id counts as reported when a
    #: squawk rule mapped to it fired).
    dbinit_only: tuple[str, ...]

    def differences(self) -> set[tuple[str, str]]:
        return {(self.shape, rule) for rule in (*self.squawk_only, *self.dbinit_only)}


def compare(name: str, squawk: tuple[str, ...]) -> Comparison:
    dbinit = tuple(sorted(set(EXPECTED[name])))
    covered = {rule: SQUAWK_RULES[rule].dbinit for rule in squawk}
    both = tuple(rule for rule in squawk if set(covered[rule]) & set(dbinit))
    mapped = {i for rule in both for i in covered[rule]}
    return Comparison(
        shape=name,
        dbinit=dbinit,
        squawk=squawk,
        both=both,
        squawk_only=tuple(rule for rule in squawk if covered[rule] and rule not in both),
        not_covered=tuple(rule for rule in squawk if not covered[rule]),
        dbinit_only=tuple(i for i in dbinit if i not in mapped),
    )


# -- running squawk ----------------------------------------------------------------------------


class Squawked:
    """squawk's rules on each shape's offline SQL, run once per session."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.sql: dict[str, str] = {}
        self.rules: dict[str, tuple[str, ...]] = {}

    def offline_sql(self, shape: Shape) -> str:
        """The SQL the migration job sends for the shape's revisions after ``sql_from``.

        One transaction per revision, as ``dbinit migrate`` runs them: each revision rendered
        alone by Alembic (``alembic upgrade PREV:REV --sql``), in upgrade order.
        """
        if shape.name not in self.sql:
            project = build(shape, self.root / "projects")
            ini = project / "squawk-alembic.ini"
            ini.write_text((project / "alembic.ini").read_text().replace(TEMPLATE_URL, OFFLINE_URL))
            chain = (BASE, *shape.revision_ids)
            revisions = chain[chain.index(shape.sql_from) :]
            parts = []
            for before, revision in itertools.pairwise(revisions):
                alembic = [sys.executable, "-m", "alembic", "-c", str(ini)]
                proc = subprocess.run(
                    [*alembic, "upgrade", f"{before}:{revision}", "--sql"],
                    cwd=project, env=clean_env(), capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                parts.append(proc.stdout)
            self.sql[shape.name] = "".join(parts)
        return self.sql[shape.name]

    def __call__(self, shape: Shape) -> tuple[str, ...]:
        if shape.name not in self.rules:
            findings = run_squawk(self.binary, self.offline_sql(shape), self.root / "sql", shape.name)
            self.rules[shape.name] = tuple(sorted({f.rule for f in findings}))
        return self.rules[shape.name]


@pytest.fixture(scope="session")
def squawked(tmp_path_factory: pytest.TempPathFactory) -> Squawked:
    try:
        binary = squawk_binary()
    except SquawkUnavailable as exc:
        pytest.skip(f"squawk {VERSION}: {exc}")
    return Squawked(binary, tmp_path_factory.mktemp("squawk"))


def test_every_shape_has_a_squawk_expectation() -> None:
    assert list(SQUAWK_EXPECTED) == [s.name for s in SHAPES]
    unmapped = {rule for rules in SQUAWK_EXPECTED.values() for rule in rules} - set(SQUAWK_RULES)
    assert not unmapped, f"map these squawk rules in SQUAWK_RULES: {sorted(unmapped)}"
    ids = {i for m in SQUAWK_RULES.values() for i in m.dbinit}
    shown = {i for e in EXPECTED.values() for i in e}
    assert ids <= shown, f"mapped to dbinit ids the corpus never shows: {sorted(ids - shown)}"


@pytest.mark.parametrize("name", list(SQUAWK_EXPECTED))
def test_squawk_reports_what_the_corpus_expects(squawked: Squawked, name: str) -> None:
    rules = squawked(BY_NAME[name])
    unmapped = set(rules) - set(SQUAWK_RULES)
    assert not unmapped, f"squawk {VERSION} reports rules SQUAWK_RULES does not map: {sorted(unmapped)}"
    assert rules == SQUAWK_EXPECTED[name]


def test_every_disagreement_is_explained() -> None:
    found = set().union(*(compare(name, rules).differences() for name, rules in SQUAWK_EXPECTED.items()))
    assert sorted(found - set(DIFFERENCES)) == [], "explain these in DIFFERENCES"
    assert sorted(set(DIFFERENCES) - found) == [], "these DIFFERENCES no longer differ: remove them"


def test_squawk_reads_one_transaction_per_revision(squawked: Squawked) -> None:
    """As the job runs them: each revision in its own transaction, CONCURRENTLY outside any."""
    sql = squawked.offline_sql(BY_NAME["foreign_key_not_valid_then_validate"])
    lines = [line for line in sql.splitlines() if line.strip() and not line.startswith("--")]
    assert [line for line in lines if line in ("BEGIN;", "COMMIT;")] == ["BEGIN;", "COMMIT;"] * 2, sql
    assert lines.index("ALTER TABLE orders VALIDATE CONSTRAINT fk_orders_customer;") > lines.index("COMMIT;")
    sql = squawked.offline_sql(BY_NAME["index_concurrently_autocommit"])
    lines = [line for line in sql.splitlines() if line.strip() and not line.startswith("--")]
    index = lines.index("CREATE INDEX CONCURRENTLY ix_orders_created_at ON orders (created_at);")
    assert lines[index - 1] == "COMMIT;" and lines[index + 1] == "BEGIN;", lines


# -- the document ------------------------------------------------------------------------------


def _cell(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"`{i.removeprefix('dbinit.')}`" for i in items) or "-"


def render(results: dict[str, tuple[str, ...]]) -> str:
    comparisons = [compare(name, rules) for name, rules in results.items()]
    seen: dict[str, int] = {}
    for c in comparisons:
        for rule in c.squawk:
            seen[rule] = seen.get(rule, 0) + 1
    lines = [
        "# dbinit lint and squawk, side by side",
        "",
        "<!-- generated by tests/test_lint_vs_squawk.py; DBINIT_UPDATE_DOCS=1 regenerates it -->",
        "",
        f"Each shape of the lint corpus (`tests/plugins/lint_corpus.py`, {len(comparisons)} shapes) is "
        "rendered as the migration job sends it (Alembic's offline SQL of each revision after FROM, "
        "one transaction per revision as `dbinit migrate` runs them) and given to "
        f"[squawk](https://squawkhq.com) {VERSION} (`--pg-version {PG_VERSION}`, default rules, empty "
        "config). The dbinit column is what `dbinit lint --from FROM` reports on the shape "
        "(`tests/test_lint_corpus.py` checks it).",
        "",
        "## squawk's rules",
        "",
        "| squawk rule | dbinit | why, or note | shapes squawk reported it on |",
        "|---|---|---|---|",
    ]
    for rule, mapping in sorted(SQUAWK_RULES.items()):
        dbinit = _cell(mapping.dbinit) if mapping.dbinit else "none"
        lines.append(f"| `{rule}` | {dbinit} | {mapping.why or ''} | {seen.get(rule, 0)} |")
    lines += [
        "",
        "## Per shape",
        "",
        "*both*: squawk rules dbinit also reports; *squawk only*: squawk rules whose dbinit rules did "
        "not fire (see the differences below); *not covered*: squawk rules dbinit has none for (see the "
        "table above); *dbinit only*: dbinit ids no squawk rule reported.",
        "",
        "| shape | dbinit | both | squawk only | not covered | dbinit only |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        about = BY_NAME[c.shape].about
        name = f"`{c.shape}`" + (f" ({about})" if about else "")
        lines.append(
            f"| {name} | {_cell(c.dbinit)} | {_cell(c.both)} | {_cell(c.squawk_only)} | "
            f"{_cell(c.not_covered)} | {_cell(c.dbinit_only)} |"
        )
    lines += ["", "## Differences", "", "| shape | finding | why |", "|---|---|---|"]
    for shape, finding in sorted({d for c in comparisons for d in c.differences()}):
        why = DIFFERENCES.get((shape, finding), "**not explained**")
        lines.append(f"| `{shape}` | `{finding.removeprefix('dbinit.')}` | {why} |")
    return "\n".join(lines) + "\n"


def test_the_comparison_document_is_current(squawked: Squawked) -> None:
    produced = render({name: squawked(BY_NAME[name]) for name in SQUAWK_EXPECTED})
    if os.environ.get("DBINIT_UPDATE_DOCS") == "1":
        DOC.write_text(produced)
    committed = DOC.read_text() if DOC.exists() else ""
    assert committed == produced, f"{DOC} is stale: run with DBINIT_UPDATE_DOCS=1 and commit it"
