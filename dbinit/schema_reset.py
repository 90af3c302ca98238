"""Dropping everything in the target schema (the ``recreate`` strategy)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbinit.settings import Settings

_PG_OBJECTS = """
SELECT kind, name FROM (
  SELECT 1 AS ord, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
         WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
         format('%I.%I', n.nspname, c.relname) AS name, c.oid AS oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  UNION ALL
  SELECT 2, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
         format('%I.%I', n.nspname, t.typname), t.oid
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname = $1 AND (t.typtype IN ('e', 'd', 'r')
         OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  UNION ALL
  SELECT 3, CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
         format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
         p.oid
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = $1
) o
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = o.oid AND d.deptype = 'e')
ORDER BY ord, name
"""


def drop_everything(settings: Settings) -> int:
    """Drop every table, view, sequence, type and function in the target schema."""
    if settings.url.is_sqlite:
        return _drop_sqlite(settings)
    return asyncio.run(_drop_postgres(settings))


async def _drop_postgres(settings: Settings) -> int:
    from dbinit.database import connect_session

    connection = await connect_session(
        settings.url, f"dbinit-recreate:{settings.service}", settings.connect_timeout
    )
    try:
        schema = settings.db_schema or await connection.fetchval("SELECT current_schema()")
        async with connection.transaction():
            objects = await connection.fetch(_PG_OBJECTS, schema)
            for row in objects:
                await connection.execute(f"DROP {row['kind']} IF EXISTS {row['name']} CASCADE")
        return len(objects)
    finally:
        await connection.close()


def _drop_sqlite(settings: Settings) -> int:
    path = settings.url.sqlite_path
    if path is not None and not path.exists():
        return 0
    connection = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
    try:
        rows = connection.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'table') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table'"
        ).fetchall()
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute("BEGIN IMMEDIATE")
        for kind, name in rows:
            quoted = '"' + name.replace('"', '""') + '"'
            connection.execute(f"DROP {kind.upper()} IF EXISTS {quoted}")
        connection.execute("COMMIT")
        return len(rows)
    finally:
        connection.close()
