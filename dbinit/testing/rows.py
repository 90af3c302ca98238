"""Dummy rows for every table, made from the catalog, to run revisions on a database that is not empty.

A table gets rows when it is empty (new); rows stay for the revisions after,
which then meet rows written before their columns existed, as in production.

Each column gets a value its type accepts (numbers, text within the length,
booleans, dates and times, intervals, UUIDs, JSON, bytes, enum labels,
arrays, network addresses, bit strings, ranges); columns with a default,
identity or generated columns are left to the database; a single-column
foreign key takes a value from the table it references (tables are filled
in foreign-key order). Values never repeat within a run, so unique
constraints hold. A row that the database refuses (a CHECK constraint, a
type without a known literal, a required composite foreign key) is retried
with the NOT NULL columns only; a table that takes no row is reported with
the reason, never guessed around.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ROWS_PER_TABLE = 2

_PG_TABLES = r"""
WITH ns AS MATERIALIZED (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname !~ '^pg_(toast|temp_)'
), rel AS MATERIALIZED (  -- the user's tables, so that their attributes are found by their index
    SELECT c.oid, c.relname, ns.nspname FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
)
SELECT json_build_object(
  'tables', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname) ORDER BY 1), '[]')
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition),
  'columns', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname, a.attname,
          pg_catalog.format_type(a.atttypid, a.atttypmod), bt.typcategory::text, bt.typname, a.attnotnull,
          a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
          (SELECT e.enumlabel FROM pg_catalog.pg_enum e WHERE e.enumtypid = bt.oid
           ORDER BY e.enumsortorder LIMIT 1),
          CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END)
          ORDER BY ns.nspname, c.relname, a.attnum),
          '[]')
      FROM rel c CROSS JOIN LATERAL (SELECT * FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) a
      JOIN ns ON ns.nspname = c.nspname
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END),
  'keys', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname,
          (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n),
          rns.nspname, rc.relname,
          (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n))), '[]')
      FROM pg_catalog.pg_constraint con
      JOIN pg_catalog.pg_class c ON c.oid = con.conrelid JOIN ns ON ns.oid = c.relnamespace
      JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
      JOIN pg_catalog.pg_namespace rns ON rns.oid = rc.relnamespace
      WHERE con.contype = 'f')
)::text
"""


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    #: As the database spells it (PostgreSQL's format_type, SQLite's declared type).
    type: str
    not_null: bool
    #: A default, identity or generated column: the database fills it.
    filled_by_database: bool
    #: PostgreSQL: the type category (pg_type.typcategory) and name of the (base) type.
    category: str = ""
    type_name: str = ""
    first_label: str | None = None
    modifier: int = -1


@dataclasses.dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    referenced: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    #: Qualified for SQL (quoted), and as shown.
    sql: str
    shown: str
    columns: tuple[Column, ...]
    keys: tuple[ForeignKey, ...]


@dataclasses.dataclass(frozen=True)
class Filled:
    """After a fill: the rows in each table that has some, and each table that took none, with why."""

    counts: Mapping[str, int]
    unfillable: Mapping[str, str]


class RowMaker:
    """Fills every table with rows whose values never repeat in one run."""

    def __init__(self, excluded: Iterable[str] = ()) -> None:
        self.excluded = frozenset(excluded)
        self.counter = 0
        #: tables (as they were) that took no row, and why: not tried again while unchanged
        self._refused: dict[Table, str] = {}

    def fill(self, connection: Any, tables: Sequence[Table], counts: Mapping[str, int]) -> Filled:
        """Insert :data:`ROWS_PER_TABLE` rows (each in a savepoint) into each of ``tables`` that
        ``counts`` says is empty; rows already there stay (older revisions' columns only)."""
        from sqlalchemy.exc import SQLAlchemyError

        now = dict(counts)
        unfillable: dict[str, str] = {}
        for table in _in_key_order(tables):
            if now.get(table.shown, 0) > 0:
                continue
            known = self._refused.get(table)
            if known is not None:
                unfillable[table.shown] = known
                continue
            reason = ""
            for _ in range(ROWS_PER_TABLE):
                attempts = [self._insert(table, everything=True), self._insert(table, everything=False)]
                for statement in dict.fromkeys(s for s in attempts if s is not None):
                    try:
                        with connection.begin_nested():
                            connection.exec_driver_sql(statement)
                        reason = ""
                        now[table.shown] = now.get(table.shown, 0) + 1
                        break
                    except SQLAlchemyError as exc:
                        reason = _first_line(exc)
                else:
                    if not reason:
                        reason = self._why_not(table)
            if reason and not now.get(table.shown):
                unfillable[table.shown] = reason
                self._refused[table] = reason
        return Filled({name: count for name, count in now.items() if count > 0}, unfillable)

    def counts(self, connection: Any, tables: Sequence[Table]) -> dict[str, int]:
        """The rows each table holds, in one statement."""
        if not tables:
            return {}
        counted = ", ".join(f"(SELECT count(*) FROM {table.sql})" for table in tables)
        row = connection.exec_driver_sql(f"SELECT {counted}").one()
        return {table.shown: int(value) for table, value in zip(tables, row, strict=True)}

    def tables(self, connection: Any) -> list[Table]:
        if connection.dialect.name == "sqlite":
            return [t for t in _sqlite_tables(connection) if t.shown not in self.excluded]
        return [t for t in _postgres_tables(connection) if t.shown.split(".")[-1] not in self.excluded]

    def _insert(self, table: Table, *, everything: bool) -> str | None:
        """The INSERT of one row; None when a required column has no value this can make."""
        keyed = {column: key for key in table.keys for column in key.columns}
        names: list[str] = []
        values: list[str] = []
        for column in table.columns:
            if column.filled_by_database or (not everything and not column.not_null):
                continue
            key = keyed.get(column.name)
            if key is not None:
                if len(key.columns) > 1:
                    if column.not_null:
                        return None
                    continue
                value: str | None = f"(SELECT {_quote(key.referenced[0])} FROM {key.table} LIMIT 1)"
            else:
                self.counter += 1
                value = _literal(column, self.counter)
            if value is None:
                if column.not_null:
                    return None
                continue
            names.append(_quote(column.name))
            values.append(value)
        if not names:
            return f"INSERT INTO {table.sql} DEFAULT VALUES"
        return f"INSERT INTO {table.sql} ({', '.join(names)}) VALUES ({', '.join(values)})"

    def _why_not(self, table: Table) -> str:
        for column in table.columns:
            if column.not_null and not column.filled_by_database:
                keyed = [key for key in table.keys if column.name in key.columns]
                if keyed and len(keyed[0].columns) > 1:
                    return f"column {column.name} is part of a composite foreign key"
                if not keyed and _literal(column, 1) is None:
                    return f"column {column.name}: no value is made for type {column.type}"
        return "no row could be made"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_key_order(tables: Sequence[Table]) -> list[Table]:
    """Referenced tables first (foreign keys between the tables; cycles in listed order)."""
    by_sql = {table.sql: table for table in tables}
    done: dict[str, Table] = {}
    visiting: set[str] = set()

    def visit(table: Table) -> None:
        if table.sql in done or table.sql in visiting:
            return
        visiting.add(table.sql)
        for key in table.keys:
            if key.table in by_sql and key.table != table.sql:
                visit(by_sql[key.table])
        visiting.discard(table.sql)
        done[table.sql] = table

    for table in tables:
        visit(table)
    return list(done.values())


def _postgres_tables(connection: Any) -> list[Table]:
    found = json.loads(connection.exec_driver_sql(_PG_TABLES).scalar_one())

    def qualified(schema: str, name: str) -> str:
        return f"{_quote(schema)}.{_quote(name)}"

    columns: dict[str, list[Column]] = {}
    for schema, table, name, type_, category, type_name, not_null, database, label, modifier in found[
        "columns"
    ]:
        columns.setdefault(qualified(schema, table), []).append(
            Column(name, type_, bool(not_null), bool(database), category, type_name, label, int(modifier))
        )
    keys: dict[str, list[ForeignKey]] = {}
    for schema, table, here, rschema, rtable, there in found["keys"]:
        keys.setdefault(qualified(schema, table), []).append(
            ForeignKey(tuple(here), qualified(rschema, rtable), tuple(there))
        )
    return [
        Table(
            qualified(schema, name),
            name if schema == "public" else f"{schema}.{name}",
            tuple(columns.get(qualified(schema, name), ())),
            tuple(keys.get(qualified(schema, name), ())),
        )
        for schema, name in found["tables"]
    ]


def _sqlite_tables(connection: Any) -> list[Table]:
    names = [
        str(row[0])
        for row in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    ]
    tables = []
    for name in names:
        info = connection.exec_driver_sql(f"PRAGMA table_info({_quote(name)})").fetchall()
        primary = [row for row in info if row[5]]
        columns = []
        for _, column, type_, not_null, default, pk in info:
            rowid = bool(pk) and len(primary) == 1 and str(type_).upper() == "INTEGER"
            columns.append(Column(str(column), str(type_), bool(not_null) or (bool(pk) and not rowid),
                                  default is not None or rowid))
        grouped: dict[int, list[Any]] = {}
        for key in connection.exec_driver_sql(f"PRAGMA foreign_key_list({_quote(name)})").fetchall():
            grouped.setdefault(int(key[0]), []).append(key)
        keys = []
        for parts in grouped.values():
            parts.sort(key=lambda part: int(part[1]))
            referenced = tuple(str(part[4]) if part[4] is not None else "rowid" for part in parts)
            keys.append(ForeignKey(tuple(str(p[3]) for p in parts), _quote(str(parts[0][2])), referenced))
        tables.append(Table(_quote(name), name, tuple(columns), tuple(keys)))
    return tables


def _literal(column: Column, n: int) -> str | None:
    """A SQL literal of ``column``'s type, the ``n``-th of the run (None: no value known)."""
    if not column.category:
        return _sqlite_literal(column.type, n)
    value = _postgres_value(column, n)
    return None if value is None else f"CAST({value} AS {column.type})"


def _postgres_value(column: Column, n: int) -> str | None:
    category, name = column.category, column.type_name
    if category == "N":
        return _text(str(n % 30000))
    if category == "S":
        length = column.modifier - 4 if column.modifier > 4 and name in ("varchar", "bpchar") else 0
        text = f"d{n}"
        return _text(text[-length:] if length else text)
    if category == "B":
        return "'true'"
    if category == "D":
        return f"TIMESTAMP '2000-01-01' + INTERVAL '{n} seconds'"
    if category == "T":
        return _text(f"{n} seconds")
    if category == "E":
        return _text(column.first_label) if column.first_label is not None else None
    if category == "A":
        return "'{}'"
    if category == "I":
        return _text(f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}")
    if category == "V":
        length = column.modifier if column.modifier > 0 and name == "bit" else 1
        return _text(format(n % (2**length), f"0{length}b")[-length:])
    if category == "R":
        return "'empty'"
    if name == "uuid":
        return _text(str(uuid.UUID(int=n)))
    if name in ("json", "jsonb"):
        return _text(json.dumps({"dbinit": n}))
    if name == "bytea":
        return _text(f"\\x{n % 256:02x}")
    if name in ("macaddr", "macaddr8"):
        return _text(f"08:00:2b:{n // 65536 % 256:02x}:{n // 256 % 256:02x}:{n % 256:02x}")
    if name == "xml":
        return _text(f"<dbinit n=\"{n}\"/>")
    if name in ("tsvector", "tsquery"):
        return _text(f"d{n}")
    return None


def _sqlite_literal(declared: str, n: int) -> str | None:
    """By SQLite's affinity rules, with the usual SQLAlchemy spellings for dates and booleans."""
    upper = declared.upper()
    if "INT" in upper:
        return str(n)
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        length = _declared_length(upper)
        text = f"d{n}"
        return _text(text[-length:] if length else text)
    if upper == "" or "BLOB" in upper:
        return f"x'{n % 256:02x}'"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return f"{n}.5"
    if "BOOL" in upper:
        return "1"
    if "DATETIME" in upper or "TIMESTAMP" in upper:
        return _text(f"2000-01-01 00:00:{n % 60:02d}.{n:06d}"[:26])
    if "DATE" in upper:
        return _text("2000-01-01")
    if "TIME" in upper:
        return _text(f"00:00:{n % 60:02d}")
    if "JSON" in upper:
        return _text(json.dumps({"dbinit": n}))
    return str(n)


def _declared_length(declared: str) -> int:
    if "(" in declared and declared.endswith(")"):
        inner = declared[declared.index("(") + 1 : -1].split(",")[0].strip()
        if inner.isdigit():
            return int(inner)
    return 0
