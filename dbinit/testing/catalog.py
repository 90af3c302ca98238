"""The schema as the database's catalogs describe it, to compare before and after a downgrade.

One snapshot is one statement on PostgreSQL (the catalogs, aggregated as
JSON) and a few pragmas per table on SQLite. What is compared: schemas,
tables, views (and their definitions), columns (type, NOT NULL, default,
identity, generated), constraints (their definitions), indexes (their
definitions), sequences (type, start, increment, bounds, cycle; not their
current value), enum types and their values in order, domains, composite and
range types, triggers, functions and extensions (an extension's own objects
too: they only differ when the extension itself does). The version table is
left out: its row is what a downgrade is supposed to change.

SQLite keeps no CHECK constraints in its catalogs apart from the table's
SQL text, which a batch-mode rebuild rewrites; they are not compared there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: ``(kind, name)`` -> definition, e.g. ``("index", "bread.ix_bread_name") -> "CREATE INDEX ..."``.
Objects = Mapping[tuple[str, str], str]

_PG_CATALOG = r"""
WITH ns AS MATERIALIZED (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname !~ '^pg_(toast|temp_)'
), rel AS MATERIALIZED (  -- the user's relations, so that attributes and indexes are found by their index
    SELECT c.oid, c.relname, c.relkind, ns.nspname
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT json_build_object(
  'schemas', (SELECT coalesce(json_agg(nspname), '[]') FROM ns),
  'relations', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname, c.relkind::text)), '[]')
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')),
  'columns', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname, a.attname,
          pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
          pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text)), '[]')
      FROM rel c CROSS JOIN LATERAL (SELECT * FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) a
      JOIN ns ON ns.nspname = c.nspname
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')),
  'constraints', (SELECT coalesce(json_agg(json_build_array(ns.nspname, coalesce(c.relname, t.typname),
          con.conname, pg_catalog.pg_get_constraintdef(con.oid))), '[]')
      FROM pg_catalog.pg_constraint con JOIN ns ON ns.oid = con.connamespace
      LEFT JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
      LEFT JOIN pg_catalog.pg_type t ON t.oid = con.contypid),
  'indexes', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname, ic.relname,
          pg_catalog.pg_get_indexdef(i.indexrelid))), '[]')
      FROM rel c CROSS JOIN LATERAL (SELECT * FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid) i
      JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid JOIN ns ON ns.nspname = c.nspname),
  'sequences', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname,
          pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
          s.seqcycle)), '[]')
      FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
      JOIN ns ON ns.oid = c.relnamespace),
  'types', (SELECT coalesce(json_agg(json_build_array(ns.nspname, t.typname, t.typtype::text,
          CASE t.typtype
            WHEN 'e' THEN (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder)::text
                           FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid)
            WHEN 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod)
                          || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                          || coalesce(' DEFAULT ' || t.typdefault, '')
            WHEN 'c' THEN (SELECT string_agg(a.attname || ' '
                                  || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                           FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0)
            ELSE '' END)), '[]')
      FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
      LEFT JOIN pg_catalog.pg_class tc ON tc.oid = t.typrelid
      WHERE t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND tc.relkind = 'c')),
  'views', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname,
          pg_catalog.pg_get_viewdef(c.oid))), '[]')
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
      WHERE c.relkind IN ('v', 'm')),
  'triggers', (SELECT coalesce(json_agg(json_build_array(ns.nspname, c.relname, tg.tgname,
          pg_catalog.pg_get_triggerdef(tg.oid))), '[]')
      FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
      JOIN ns ON ns.oid = c.relnamespace WHERE NOT tg.tgisinternal),
  'functions', (SELECT coalesce(json_agg(json_build_array(ns.nspname, p.proname,
          pg_catalog.pg_get_function_identity_arguments(p.oid),
          pg_catalog.pg_get_function_result(p.oid) || ' ' || md5(coalesce(p.prosrc, '')))), '[]')
      FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace),
  'extensions', (SELECT coalesce(json_agg(json_build_array(extname, extversion)), '[]')
      FROM pg_catalog.pg_extension)
)::text
"""

_RELKINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "S": "sequence",
             "f": "foreign table"}
_TYPE_KINDS = {"e": "enum type", "d": "domain", "r": "range type", "m": "multirange type",
               "c": "composite type"}


@dataclasses.dataclass(frozen=True)
class Catalog:
    """What the database's catalogs say the schema is (the version table left out)."""

    objects: Objects

    def __len__(self) -> int:
        return len(self.objects)


def differences(before: Catalog, after: Catalog) -> list[str]:
    """What ``after`` has that ``before`` had not, lacks, or has otherwise; one line each.

    Empty when the two are the same schema.
    """
    lines: list[str] = []
    for key in sorted(after.objects.keys() - before.objects.keys()):
        lines.append(f"{key[0]} {key[1]} left behind")
    for key in sorted(before.objects.keys() - after.objects.keys()):
        lines.append(f"{key[0]} {key[1]} missing (it was there before)")
    for key in sorted(before.objects.keys() & after.objects.keys()):
        if before.objects[key] != after.objects[key]:
            lines.append(f"{key[0]} {key[1]} changed: {after.objects[key]} (was: {before.objects[key]})")
    return lines


def snapshot(connection: Any, excluded: Iterable[str] = ()) -> Catalog:
    """The catalog seen on ``connection`` (a SQLAlchemy connection, any driver).

    ``excluded``: table names left out with everything on them (the version table).
    """
    skip = frozenset(excluded)
    if connection.dialect.name == "sqlite":
        return Catalog(_sqlite(connection, skip))
    if connection.dialect.name == "postgresql":
        return Catalog(_postgres(connection, skip))
    raise NotImplementedError(f"no catalog comparison for {connection.dialect.name}")


def _qualified(schema: str, name: str) -> str:
    return name if schema in ("public", "main") else f"{schema}.{name}"


def _postgres(connection: Any, skip: frozenset[str]) -> dict[tuple[str, str], str]:
    # not a prepared statement: psycopg deallocates every prepared statement of the session after a
    # DROP, ALTER or ROLLBACK, and a downgrade is made of them
    raw = connection.exec_driver_sql(_PG_CATALOG).scalar_one()
    found: dict[str, list[list[Any]]] = json.loads(raw)
    objects: dict[tuple[str, str], str] = {}
    for schema in found["schemas"]:
        if schema != "public":
            objects[("schema", schema)] = ""
    for schema, name, kind in found["relations"]:
        if name not in skip:
            objects[(_RELKINDS[kind], _qualified(schema, name))] = ""
    for schema, table, column, type_, notnull, default, identity, generated in found["columns"]:
        if table in skip:
            continue
        text = type_ + (" NOT NULL" if notnull else "")
        if default is not None:
            text += f" {'GENERATED ALWAYS AS' if generated else 'DEFAULT'} {default}"
        if identity:
            text += " GENERATED " + ("ALWAYS" if identity == "a" else "BY DEFAULT") + " AS IDENTITY"
        objects[("column", f"{_qualified(schema, table)}.{column}")] = text
    for schema, table, name, definition in found["constraints"]:
        if table not in skip:
            objects[("constraint", f"{name} on {_qualified(schema, table)}")] = definition
    for schema, table, name, definition in found["indexes"]:
        if table not in skip:
            objects[("index", f"{name} on {_qualified(schema, table)}")] = definition
    for schema, name, type_, start, increment, low, high, cycle in found["sequences"]:
        if name not in skip:
            objects[("sequence", _qualified(schema, name))] = (
                f"{type_} START {start} INCREMENT {increment} MIN {low} MAX {high}"
                + (" CYCLE" if cycle else "")
            )
    for schema, name, kind, definition in found["types"]:
        objects[(_TYPE_KINDS[kind], _qualified(schema, name))] = definition or ""
    for schema, name, definition in found["views"]:
        if name not in skip:
            objects[("view definition", _qualified(schema, name))] = " ".join(definition.split())
    for schema, table, name, definition in found["triggers"]:
        if table not in skip:
            objects[("trigger", f"{name} on {_qualified(schema, table)}")] = definition
    for schema, name, arguments, result in found["functions"]:
        objects[("function", f"{_qualified(schema, name)}({arguments})")] = result
    for name, version in found["extensions"]:
        if name != "plpgsql":
            objects[("extension", name)] = version
    return objects


def _sqlite(connection: Any, skip: frozenset[str]) -> dict[tuple[str, str], str]:
    def rows(sql: str) -> list[Any]:
        return list(connection.exec_driver_sql(sql).fetchall())

    objects: dict[tuple[str, str], str] = {}
    master = rows("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    for kind, name, table, sql in master:
        if table in skip:
            continue
        if kind == "table":
            objects[("table", name)] = ""
            for _, column, type_, notnull, default, pk in rows(f"PRAGMA table_info({_quote(name)})"):
                text = str(type_).upper() + (" NOT NULL" if notnull else "")
                text += f" DEFAULT {default}" if default is not None else ""
                text += f" PRIMARY KEY {pk}" if pk else ""
                objects[("column", f"{name}.{column}")] = text
            keys: dict[int, list[Any]] = {}
            for key in rows(f"PRAGMA foreign_key_list({_quote(name)})"):
                keys.setdefault(int(key[0]), []).append(key)
            for parts in keys.values():
                parts.sort(key=lambda part: int(part[1]))
                here = ", ".join(str(part[3]) for part in parts)
                there = ", ".join(str(part[4]) for part in parts)
                objects[("foreign key", f"{name}({here}) -> {parts[0][2]}({there})")] = (
                    f"ON UPDATE {parts[0][5]} ON DELETE {parts[0][6]}"
                )
            for _, index, unique, origin, partial in rows(f"PRAGMA index_list({_quote(name)})"):
                columns = ", ".join(
                    str(info[2]) for info in rows(f"PRAGMA index_info({_quote(str(index))})")
                )
                automatic = str(index).startswith("sqlite_autoindex")
                shown = f"{'unique' if origin == 'u' else 'primary key'} ({columns})" if automatic else index
                objects[("index", f"{shown} on {name}")] = (
                    ("UNIQUE " if unique else "") + f"({columns})" + (" partial" if partial else "")
                )
        elif kind in ("view", "trigger"):
            objects[(kind, name)] = " ".join(str(sql or "").split())
    return objects


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
