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
    #: PostgreSQL's parser refused it (SQLite SQL, say): the message; nothing else is known.
    parse_error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self),
            "tables": list(self.tables),
            "reasons": list(self.reasons),
            "dropped_columns": list(self.dropped_columns),
        }


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
    if volatile or generated or type_name in SERIAL_TYPES:
        facts.rewrites = True
        facts.reasons.append(f"ADD COLUMN {column.colname} with a per-row value: rewrites the table")
    if not_null and default is None and not generated and type_name not in SERIAL_TYPES:
        facts.scans = True
        facts.contract(f"ADD COLUMN {column.colname} NOT NULL without a default: old inserts fail")
    else:
        facts.expand(f"ADD COLUMN {column.colname}")
    if any(_is(c.contype, "CONSTR_FOREIGN", "CONSTR_CHECK", "CONSTR_UNIQUE") for c in constraints):
        facts.scans = True


def _add_constraint(facts: _Facts, constraint: ast.Constraint) -> None:
    label = str(getattr(constraint.contype, "name", "")).removeprefix("CONSTR_")
    if _is(constraint.contype, "CONSTR_FOREIGN"):
        facts.take("SHARE ROW EXCLUSIVE")
        if constraint.pktable is not None:
            facts.tables.append(_name(constraint.pktable))
    else:
        facts.take("ACCESS EXCLUSIVE")
    if constraint.skip_validation:
        facts.expand(f"ADD CONSTRAINT {label} NOT VALID: new rows only, no scan")
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
            facts.contract(
                f"ALTER COLUMN {column} TYPE: rewrites the table (unless binary-coercible) "
                "and the previous release may not read the new type"
            )
        elif subtype == "AT_SetNotNull":
            facts.scans = True
            facts.contract(f"ALTER COLUMN {column} SET NOT NULL: scans the table; old inserts of NULL fail")
        elif subtype == "AT_ValidateConstraint":
            facts.scans = True
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
        facts.contract(f"DROP {kind}: the previous release may still use it")
    elif isinstance(stmt, ast.RenameStmt):
        facts = _Facts("RENAME", tables=[_name(stmt.relation)] if stmt.relation is not None else [])
        facts.take("ACCESS EXCLUSIVE")
        facts.contract(f"RENAME to {stmt.newname}: the previous release uses the old name")
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
        facts = _Facts("SET")
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


def classify_sql(sql: str, ignore_tables: Iterable[str] = ()) -> list[StatementFacts]:
    """Every statement of ``sql``, classified, in order.

    Transaction control (BEGIN, COMMIT) is not a statement here but sets
    ``in_transaction`` on those between; statements that touch only
    ``ignore_tables`` (the version table Alembic updates) are left out.
    """
    ignored = {t.lower() for t in ignore_tables}
    encoded = sql.encode()
    result: list[StatementFacts] = []
    in_transaction = False
    try:
        parsed: list[tuple[str, Any, str | None]] = [
            (_text(encoded, raw.stmt_location, raw.stmt_len), raw.stmt, None) for raw in parse_sql(sql)
        ]
    except ParseError:
        # one statement PostgreSQL cannot parse: split with its scanner, parse each alone
        parsed = []
        for text in split(sql, with_parser=False):
            try:
                parsed.extend((text, raw.stmt, None) for raw in parse_sql(text))
            except ParseError as exc:
                parsed.append((text, None, str(exc)))
    for text, stmt, error in parsed:
        if isinstance(stmt, ast.TransactionStmt):
            kind = str(getattr(stmt.kind, "name", ""))
            in_transaction = kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START")
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
                parse_error=error,
            )
        )
    return result


def _text(encoded: bytes, location: int, length: int) -> str:
    """A statement's text (pglast's offsets count bytes; a length of 0 runs to the end)."""
    end = location + length if length else len(encoded)
    return encoded[location:end].decode().strip().rstrip(";").strip()
