"""Each statement of a revision's SQL, parsed by PostgreSQL's own parser (pglast) and classified.

What a statement does to a live database: the tables it touches, the lock it
takes on them (PostgreSQL's table-level lock modes, as its documentation gives
them per statement and per ``ALTER TABLE`` subcommand; the strongest
subcommand decides), whether it rewrites the table or scans it, and its
phase: ``expand`` (code of the previous release keeps working: new tables,
nullable columns, indexes, data changes), ``contract`` (the previous release
may break: drops, renames, type changes, new constraints) or ``neutral``
(reads, settings).

pglast is imported here and only here (and in what imports this module):
``dbinit verify`` never loads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal, get_args

from pglast import ast, parse_sql, split
from pglast.enums import ObjectType
from pglast.parser import ParseError
from pglast.visitors import Visitor

LockLevel = Literal[
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
]
#: Weakest first (as :data:`LockLevel` lists them): a statement with several subcommands takes
#: the strongest.
LOCK_ORDER: tuple[LockLevel, ...] = get_args(LockLevel)
StatementPhase = Literal["expand", "contract", "neutral"]

#: Functions whose value differs per row: as an added column's default, the table is rewritten.
VOLATILE_FUNCTIONS = frozenset(
    {"random", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v4", "nextval", "uuidv7"}
)
SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


@dataclasses.dataclass(frozen=True)
class AddedConstraint:
    """A constraint an ``ALTER TABLE ... ADD CONSTRAINT`` (or ``ADD COLUMN ... REFERENCES``) adds."""

    #: "CHECK", "FOREIGN", "PRIMARY", "UNIQUE", "EXCLUSION".
    kind: str
    name: str | None
    not_valid: bool
    #: ``... PRIMARY KEY / UNIQUE USING INDEX name``: an index built beforehand, no scan.
    using_index: bool = False
    #: ``CHECK (column IS NOT NULL)``: the column (the SET NOT NULL recipe).
    not_null_column: str | None = None


@dataclasses.dataclass(frozen=True)
class StatementFacts:
    """One statement of a revision's SQL and what it does."""

    #: 1-based, among the revision's statements (transaction control and version-table
    #: bookkeeping are not counted).
    position: int
    sql: str
    #: What it is, as a reader names it: "CREATE INDEX", "ALTER TABLE", "INSERT", ...
    kind: str
    tables: tuple[str, ...]
    #: The table lock it takes on ``tables``; None: none on an existing table (a new table,
    #: a setting) or a statement dbinit does not know.
    lock: LockLevel | None
    rewrites: bool
    scans: bool
    phase: StatementPhase
    #: Why: one short phrase per fact that decided the lock, rewrite, scan or phase.
    reasons: tuple[str, ...]
    concurrently: bool = False
    #: The columns it drops (``ALTER TABLE ... DROP COLUMN``).
    dropped_columns: tuple[str, ...] = ()
    #: Inside an explicit transaction block of the rendered SQL (BEGIN ... COMMIT).
    in_transaction: bool = False
    #: Which one: 1 for the SQL's first BEGIN ... COMMIT block, 2 for the next; None outside.
    transaction: int | None = None
    #: PostgreSQL's parser refused it (SQLite SQL, say): the message; nothing else is known.
    parse_error: str | None = None
    #: Where it starts in the rendered SQL (characters).
    offset: int = 0
    #: The line of the revision file whose code sent it (None: not known, or not the revision's).
    line: int | None = None
    #: ``ADD COLUMN ... NOT NULL`` without a default: fails on a table with rows.
    required_columns: tuple[str, ...] = ()
    #: ``ADD COLUMN`` with a per-row value (volatile default, serial, identity, generated).
    rewriting_columns: tuple[str, ...] = ()
    #: ``ALTER COLUMN ... TYPE``.
    retyped_columns: tuple[str, ...] = ()
    #: ``ALTER COLUMN ... SET NOT NULL``.
    not_null_columns: tuple[str, ...] = ()
    constraints: tuple[AddedConstraint, ...] = ()
    #: ``VALIDATE CONSTRAINT name``.
    validated: tuple[str, ...] = ()
    #: ``SET name = ...``: the setting's name, lower case.
    setting: str | None = None
    #: ``CREATE INDEX name``: the index's name.
    index: str | None = None

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Facts:
    """What one statement's classification accumulates before it is frozen."""

    kind: str
    tables: list[str] = dataclasses.field(default_factory=list)
    lock: LockLevel | None = None
    rewrites: bool = False
    scans: bool = False
    phase: StatementPhase = "neutral"
    reasons: list[str] = dataclasses.field(default_factory=list)
    concurrently: bool = False
    dropped_columns: list[str] = dataclasses.field(default_factory=list)
    required_columns: list[str] = dataclasses.field(default_factory=list)
    rewriting_columns: list[str] = dataclasses.field(default_factory=list)
    retyped_columns: list[str] = dataclasses.field(default_factory=list)
    not_null_columns: list[str] = dataclasses.field(default_factory=list)
    constraints: list[AddedConstraint] = dataclasses.field(default_factory=list)
    validated: list[str] = dataclasses.field(default_factory=list)
    setting: str | None = None
    index: str | None = None

    def take(self, lock: LockLevel) -> None:
        if self.lock is None or LOCK_ORDER.index(lock) > LOCK_ORDER.index(self.lock):
            self.lock = lock

    def contract(self, reason: str) -> None:
        self.phase = "contract"
        self.reasons.append(reason)

    def expand(self, reason: str) -> None:
        if self.phase != "contract":
            self.phase = "expand"
        self.reasons.append(reason)


class _RangeVars(Visitor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        self.names.append(_name(node))


def _name(relation: ast.RangeVar) -> str:
    return f"{relation.schemaname}.{relation.relname}" if relation.schemaname else str(relation.relname)


def _dotted(names: Iterable[Any]) -> str:
    return ".".join(str(n.sval) for n in names)


def _is(enum_value: Any, *names: str) -> bool:
    return getattr(enum_value, "name", None) in names


def _calls(node: Any) -> set[str]:
    """The function names called anywhere in an expression."""
    found: set[str] = set()

    class Calls(Visitor):  # type: ignore[misc]
        def visit_FuncCall(self, ancestors: Any, call: ast.FuncCall) -> None:
            found.add(str(call.funcname[-1].sval).lower())

    Calls()(node)
    return found


def _add_column(facts: _Facts, column: ast.ColumnDef) -> None:
    constraints = column.constraints or ()
    type_name = str(column.typeName.names[-1].sval).lower() if column.typeName is not None else ""
    default = next((c for c in constraints if _is(c.contype, "CONSTR_DEFAULT")), None)
    not_null = any(_is(c.contype, "CONSTR_NOTNULL", "CONSTR_PRIMARY") for c in constraints)
    generated = any(_is(c.contype, "CONSTR_IDENTITY", "CONSTR_GENERATED") for c in constraints)
    volatile = default is not None and bool(_calls(default.raw_expr) & VOLATILE_FUNCTIONS)
    name = str(column.colname)
    if volatile or generated or type_name in SERIAL_TYPES:
        facts.rewrites = True
        facts.rewriting_columns.append(name)
        facts.reasons.append(f"ADD COLUMN {name} with a per-row value: rewrites the table")
    if not_null and default is None and not generated and type_name not in SERIAL_TYPES:
        facts.scans = True
        facts.required_columns.append(name)
        facts.contract(f"ADD COLUMN {name} NOT NULL without a default: old inserts fail")
    else:
        facts.expand(f"ADD COLUMN {name}")
    for constraint in constraints:
        if _is(constraint.contype, "CONSTR_FOREIGN", "CONSTR_CHECK", "CONSTR_UNIQUE", "CONSTR_PRIMARY"):
            facts.scans = True
            facts.constraints.append(_constraint(constraint))
            if _is(constraint.contype, "CONSTR_FOREIGN") and constraint.pktable is not None:
                facts.tables.append(_name(constraint.pktable))


def _constraint(constraint: ast.Constraint) -> AddedConstraint:
    kind = str(getattr(constraint.contype, "name", "")).removeprefix("CONSTR_")
    not_null_column = None
    expr = constraint.raw_expr
    if (
        kind == "CHECK"
        and isinstance(expr, ast.NullTest)
        and _is(expr.nulltesttype, "IS_NOT_NULL")
        and isinstance(expr.arg, ast.ColumnRef)
    ):
        not_null_column = str(expr.arg.fields[-1].sval)
    return AddedConstraint(
        kind=kind,
        name=constraint.conname,
        not_valid=bool(constraint.skip_validation),
        using_index=bool(getattr(constraint, "indexname", None)),
        not_null_column=not_null_column,
    )


def _add_constraint(facts: _Facts, constraint: ast.Constraint) -> None:
    label = str(getattr(constraint.contype, "name", "")).removeprefix("CONSTR_")
    facts.constraints.append(_constraint(constraint))
    if _is(constraint.contype, "CONSTR_FOREIGN"):
        facts.take("SHARE ROW EXCLUSIVE")
        if constraint.pktable is not None:
            facts.tables.append(_name(constraint.pktable))
    else:
        facts.take("ACCESS EXCLUSIVE")
    if constraint.skip_validation:
        facts.expand(f"ADD CONSTRAINT {label} NOT VALID: new rows only, no scan")
    elif getattr(constraint, "indexname", None):
        facts.expand(f"ADD CONSTRAINT {label} USING INDEX {constraint.indexname}: no scan")
    else:
        facts.scans = True
        facts.contract(f"ADD CONSTRAINT {label}: scans the table; old writes may be refused")


#: ALTER TABLE subcommands weaker than ACCESS EXCLUSIVE (PostgreSQL's AlterTableGetLockLevel).
_SUBCOMMAND_LOCKS: dict[str, LockLevel] = {
    "AT_SetStatistics": "SHARE UPDATE EXCLUSIVE",
    "AT_SetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_SetStorage": "SHARE UPDATE EXCLUSIVE",
    "AT_SetCompression": "SHARE UPDATE EXCLUSIVE",
    "AT_ValidateConstraint": "SHARE UPDATE EXCLUSIVE",
    "AT_ClusterOn": "SHARE UPDATE EXCLUSIVE",
    "AT_DropCluster": "SHARE UPDATE EXCLUSIVE",
    "AT_SetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_AttachPartition": "SHARE UPDATE EXCLUSIVE",
    "AT_AlterConstraint": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableAlwaysTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableReplicaTrig": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigUser": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigUser": "SHARE ROW EXCLUSIVE",
}
_REWRITING = {
    "AT_SetTableSpace": "SET TABLESPACE",
    "AT_SetLogged": "SET LOGGED",
    "AT_SetUnLogged": "SET UNLOGGED",
    "AT_SetAccessMethod": "SET ACCESS METHOD",
}


def _alter_table(facts: _Facts, stmt: ast.AlterTableStmt) -> None:
    facts.tables.append(_name(stmt.relation))
    for cmd in stmt.cmds or ():
        subtype = str(getattr(cmd.subtype, "name", ""))
        column = cmd.name or ""
        if subtype == "AT_AddConstraint":
            _add_constraint(facts, cmd.def_)
            continue
        facts.take(_SUBCOMMAND_LOCKS.get(subtype, "ACCESS EXCLUSIVE"))
        if subtype == "AT_AddColumn":
            _add_column(facts, cmd.def_)
        elif subtype == "AT_DropColumn":
            facts.dropped_columns.append(column)
            facts.contract(f"DROP COLUMN {column}: the previous release still reads it")
        elif subtype == "AT_AlterColumnType":
            facts.rewrites = facts.scans = True
            facts.retyped_columns.append(column)
            facts.contract(
                f"ALTER COLUMN {column} TYPE: rewrites the table (unless binary-coercible) "
                "and the previous release may not read the new type"
            )
        elif subtype == "AT_SetNotNull":
            facts.scans = True
            facts.not_null_columns.append(column)
            facts.contract(f"ALTER COLUMN {column} SET NOT NULL: scans the table; old inserts of NULL fail")
        elif subtype == "AT_ValidateConstraint":
            facts.scans = True
            facts.validated.append(column)
            facts.expand(f"VALIDATE CONSTRAINT {column}: scans without blocking writes")
        elif subtype in ("AT_DropConstraint", "AT_DropNotNull"):
            facts.expand(f"{subtype.removeprefix('AT_')} {column}: relaxes a rule, old code keeps working")
        elif subtype == "AT_ColumnDefault":
            facts.expand(f"ALTER COLUMN {column} SET/DROP DEFAULT")
        elif subtype in _REWRITING:
            facts.rewrites = facts.scans = True
            facts.reasons.append(f"{_REWRITING[subtype]}: rewrites the table")
        else:
            facts.reasons.append(f"{subtype.removeprefix('AT_')}")


def _classify(stmt: Any) -> _Facts:
    if isinstance(stmt, ast.AlterTableStmt):
        facts = _Facts("ALTER TABLE")
        _alter_table(facts, stmt)
    elif isinstance(stmt, ast.IndexStmt):
        facts = _Facts("CREATE INDEX", [_name(stmt.relation)], scans=True, concurrently=stmt.concurrent)
        facts.index = stmt.idxname
        if stmt.concurrent:
            facts.take("SHARE UPDATE EXCLUSIVE")
            facts.expand("CREATE INDEX CONCURRENTLY: writes go on while it builds")
        else:
            facts.take("SHARE")
            facts.expand("CREATE INDEX: blocks writes to the table while it builds")
    elif isinstance(stmt, ast.CreateStmt):
        facts = _Facts("CREATE TABLE", tables=[_name(stmt.relation)])
        facts.expand("creates a table")
    elif isinstance(stmt, ast.DropStmt):
        kind = str(getattr(stmt.removeType, "name", "")).removeprefix("OBJECT_").replace("_", " ")
        names = [_dotted(o) if isinstance(o, tuple) else str(getattr(o, "sval", o)) for o in stmt.objects]
        facts = _Facts(f"DROP {kind}", tables=names, concurrently=bool(stmt.concurrent))
        facts.take("SHARE UPDATE EXCLUSIVE" if stmt.concurrent else "ACCESS EXCLUSIVE")
        if kind == "INDEX":
            facts.expand("DROP INDEX: queries do not name indexes (the index's table is locked)")
        else:
            facts.contract(f"DROP {kind}: the previous release may still use it")
    elif isinstance(stmt, ast.RenameStmt):
        renamed = ObjectType(stmt.renameType).name.removeprefix("OBJECT_").replace("_", " ")
        facts = _Facts(
            f"RENAME {renamed}", tables=[_name(stmt.relation)] if stmt.relation is not None else []
        )
        if renamed == "INDEX":  # PostgreSQL 12+: ALTER INDEX ... RENAME takes SHARE UPDATE EXCLUSIVE
            facts.take("SHARE UPDATE EXCLUSIVE")
            facts.expand(f"RENAME INDEX to {stmt.newname}: queries do not name indexes")
        else:
            facts.take("ACCESS EXCLUSIVE")
            old = f"{stmt.subname} " if stmt.subname else ""
            facts.contract(f"RENAME {renamed} {old}to {stmt.newname}: the previous release uses the old name")
    elif isinstance(stmt, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
        kind = {ast.InsertStmt: "INSERT", ast.UpdateStmt: "UPDATE", ast.DeleteStmt: "DELETE"}[type(stmt)]
        facts = _Facts(kind, tables=[_name(stmt.relation)])
        facts.take("ROW EXCLUSIVE")
        facts.expand(f"{kind}: changes rows, not the schema")
    elif isinstance(stmt, ast.TruncateStmt):
        facts = _Facts("TRUNCATE", tables=[_name(r) for r in stmt.relations])
        facts.take("ACCESS EXCLUSIVE")
        facts.contract("TRUNCATE: removes every row")
    elif isinstance(stmt, ast.SelectStmt):
        facts = _Facts("SELECT")
        facts.take("ACCESS SHARE")
    elif isinstance(stmt, ast.CreateTrigStmt):
        facts = _Facts("CREATE TRIGGER", tables=[_name(stmt.relation)])
        facts.take("SHARE ROW EXCLUSIVE")
        facts.expand("creates a trigger")
    elif isinstance(stmt, ast.VariableSetStmt):
        facts = _Facts("SET", setting=str(stmt.name or "").lower() or None)
    elif isinstance(stmt, ast.DoStmt):
        facts = _Facts("DO")
        facts.contract("DO block: its code cannot be classified")
    elif isinstance(stmt, ast.GrantStmt) and not stmt.is_grant:
        facts = _Facts("REVOKE")
        facts.contract("REVOKE: the previous release may need the privilege")
    else:
        name = type(stmt).__name__.removesuffix("Stmt")
        facts = _Facts(name)
        if name.startswith("Create"):
            facts.expand(f"{name}: a new object")
    if not facts.tables:
        visitor = _RangeVars()
        visitor(stmt)
        facts.tables = visitor.names
    return facts


@dataclasses.dataclass(frozen=True)
class TransactionControl:
    """A BEGIN, COMMIT or ROLLBACK of the rendered SQL (not a statement of :func:`classify`)."""

    kind: str
    sql: str
    offset: int
    #: Set by the caller that knows the source: the revision file's line that sent it, and whether
    #: ``autocommit_block()`` (not the revision's own code) sent it.
    line: int | None = None
    autocommit_block: bool = False


@dataclasses.dataclass(frozen=True)
class ClassifiedSQL:
    statements: tuple[StatementFacts, ...]
    transaction_control: tuple[TransactionControl, ...]


def classify_sql(sql: str, ignore_tables: Iterable[str] = ()) -> list[StatementFacts]:
    """Every statement of ``sql``, classified, in order (see :func:`classify`)."""
    return list(classify(sql, ignore_tables).statements)


def classify(sql: str, ignore_tables: Iterable[str] = ()) -> ClassifiedSQL:
    """Every statement of ``sql``, classified, in order, and the transaction control between them.

    Transaction control (BEGIN, COMMIT) is not a statement here but sets
    ``in_transaction`` on those between; statements that touch only
    ``ignore_tables`` (the version table Alembic updates) are left out.
    """
    ignored = {t.lower() for t in ignore_tables}
    result: list[StatementFacts] = []
    control: list[TransactionControl] = []
    in_transaction = False
    blocks = 0
    for text, offset, stmt, error in _parsed(sql):
        if isinstance(stmt, ast.TransactionStmt):
            kind = str(getattr(stmt.kind, "name", "")).removeprefix("TRANS_STMT_")
            in_transaction = kind in ("BEGIN", "START")
            blocks += 1 if in_transaction else 0
            control.append(TransactionControl(kind, text, offset))
            continue
        if error is not None:
            facts = _Facts("UNPARSED")
        else:
            facts = _classify(stmt)
            tables = {t.lower().rsplit(".", 1)[-1] for t in facts.tables}
            if tables and tables <= ignored:
                continue
        result.append(
            StatementFacts(
                position=len(result) + 1,
                sql=text,
                kind=facts.kind,
                tables=tuple(dict.fromkeys(facts.tables)),
                lock=facts.lock,
                rewrites=facts.rewrites,
                scans=facts.scans,
                phase=facts.phase,
                reasons=tuple(facts.reasons),
                concurrently=facts.concurrently,
                dropped_columns=tuple(facts.dropped_columns),
                in_transaction=in_transaction,
                transaction=blocks if in_transaction else None,
                parse_error=error,
                offset=offset,
                required_columns=tuple(facts.required_columns),
                rewriting_columns=tuple(facts.rewriting_columns),
                retyped_columns=tuple(facts.retyped_columns),
                not_null_columns=tuple(facts.not_null_columns),
                constraints=tuple(facts.constraints),
                validated=tuple(facts.validated),
                setting=facts.setting,
                index=facts.index,
            )
        )
    return ClassifiedSQL(tuple(result), tuple(control))


def _parsed(sql: str) -> list[tuple[str, int, Any, str | None]]:
    """(text, offset in ``sql``, parse tree or None, parse error or None) per statement."""
    encoded = sql.encode()
    try:
        return [
            (
                _text(encoded, raw.stmt_location, raw.stmt_len),
                len(encoded[: raw.stmt_location].decode()),
                raw.stmt,
                None,
            )
            for raw in parse_sql(sql)
        ]
    except ParseError:
        pass
    # one statement PostgreSQL cannot parse: split with its scanner, parse each alone
    parsed: list[tuple[str, int, Any, str | None]] = []
    cursor = 0
    for text in split(sql, with_parser=False):
        found = sql.find(text, cursor)
        offset = found if found >= 0 else cursor
        cursor = offset + len(text) if found >= 0 else cursor
        try:
            stripped = text.strip().rstrip(";").strip()
            parsed.extend((stripped, offset, raw.stmt, None) for raw in parse_sql(text))
        except ParseError as exc:
            parsed.append((text.strip().rstrip(";").strip(), offset, None, str(exc)))
    return parsed


def _text(encoded: bytes, location: int, length: int) -> str:
    """A statement's text (pglast's offsets count bytes; a length of 0 runs to the end)."""
    end = location + length if length else len(encoded)
    return encoded[location:end].decode().strip().rstrip(";").strip()
