"""The database side of verification: one round trip, no SQLAlchemy.

PostgreSQL is reached through asyncpg directly; SQLite through the standard
library, opened read-only. :class:`DatabaseState` is everything the built-in
checks need, gathered by a single statement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from dbinit.errors import ConfigurationError, DatabaseUnreachable, DbinitError

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

    import asyncpg

    from dbinit.urls import DatabaseURL

T = TypeVar("T")

#: A version row longer than this is cut (with "…") in ``current_revision``:
#: no revision id is that long, and the value reaches logs and probe bodies.
MAX_REVISION_SHOWN = 255
#: The history table's default name (DBINIT_HISTORY_TABLE; dbinit.history owns its DDL).
DEFAULT_HISTORY_TABLE = "dbinit_history"
#: Where the statement's history columns start: an error positioned after it is the history
#: table's (missing on a database migrated before dbinit kept one), not the version table's.
HISTORY_MARK = "/* dbinit: history */"
#: What asyncpg's ``copy_from_query`` puts before the query ("COPY (...) TO STDOUT").
_COPY_PREFIX = len("COPY (")


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """The latest ``applied`` history row of one of the database's current revisions."""

    revision: str
    compatible_since: str
    phase: str


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    """What the database looks like, from one round trip.

    ``table_count`` counts the tables in the target schema, the version table
    included (None when a readiness re-check only asked whether there are
    any: counting scans the catalog).

    ``versions`` are the string values of the version table's rows exactly
    as Alembic reads them (``SELECT version_num``: nothing trimmed, split or
    unescaped; one per head when the table is sound), sorted, duplicates
    kept. ``invalid_versions`` are the other rows: NULL (``None``) or a value
    that is not a string (a ``version_num`` column of another type).
    ``version_table_problem`` says why an object named like the version table
    cannot be read as one ("is a sequence, not a table"); the table then
    counts as absent, as it does for Alembic.
    """

    backend: str
    server_version: str
    schema: str
    table_count: int | None
    version_table_exists: bool
    versions: tuple[str, ...]
    database_exists: bool = True
    invalid_versions: tuple[object, ...] = ()
    version_table_problem: str = ""
    #: Whether the history table exists (False: a database migrated before dbinit kept one).
    history_table_exists: bool = False
    #: The latest applied history row of each current revision that has one, by revision.
    history: tuple[HistoryEntry, ...] = ()
    #: Why the history table exists but could not be read (its rows then count as absent).
    history_problem: str = ""

    def history_of(self, revision: str) -> HistoryEntry | None:
        return next((entry for entry in self.history if entry.revision == revision), None)

    @property
    def is_empty(self) -> bool:
        return self.table_count == 0  # None: there are tables, not counted

    @property
    def current_revision(self) -> str | None:
        """The current revision as the original log lines report it (several heads: comma-joined).

        A row longer than :data:`MAX_REVISION_SHOWN` characters is cut there.
        """
        if not self.versions:
            return None
        return ",".join(
            v if len(v) <= MAX_REVISION_SHOWN else v[:MAX_REVISION_SHOWN] + "…" for v in self.versions
        )


class Probe(Protocol):
    """An open connection that can read the state again (readiness re-checks).

    ``count_tables=False`` asks only whether the schema has tables (an
    ``EXISTS``), not how many: on PostgreSQL a count scans ``pg_class``,
    which with thousands of tables costs more than the round trip.
    """

    async def read_state(self, *, count_tables: bool = True) -> DatabaseState: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    schema: str | None
    version_table: str
    connect_timeout: float
    query_timeout: float
    application_name: str
    #: Where the version table is, when not in ``schema`` (DBINIT_VERSION_TABLE_SCHEMA).
    version_schema: str | None = None
    #: The history table, in the version table's schema (None: not read at all).
    history_table: str | None = DEFAULT_HISTORY_TABLE
    #: A connection kept open for repeated checks (readiness): the statement is
    #: prepared once and then costs one Bind/Execute round trip, with no
    #: planning. A one-shot check sends it over the simple protocol instead.
    long_lived: bool = False


def sql_literal(text: str) -> str:
    """``text`` as a PostgreSQL string constant, whatever ``standard_conforming_strings`` says.

    An escape string constant (``E'...'``) reads backslashes as escapes under
    every setting, so with backslashes and quotes both doubled nothing in
    ``text`` can end it. (A plain ``'...'`` constant reads backslashes as
    escapes when the setting is off -- on a database, a role or through
    ``options`` in the URL -- and doubling quotes alone then lets a backslash
    followed by a quote end the constant early.)
    """
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted identifier (PostgreSQL and SQLite): only ``"`` is special inside."""
    return '"' + name.replace('"', '""') + '"'


#: What ``pg_class.relkind`` names, for messages.
_RELATION_KINDS = {
    "r": "a table",
    "p": "a partitioned table",
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "a partitioned index",
    "c": "a composite type",
    "t": "a TOAST table",
}


def relation_problem(kind: str, columns: list[str], error: str = "") -> str:
    """Why the relation named like the version table is not one Alembic can use.

    ``kind`` is a ``pg_class.relkind`` (SQLite: ``r`` or ``v``), ``columns``
    its column names, ``error`` what reading it raised, if that is the reason.
    """
    what = _RELATION_KINDS.get(kind, f"a relation of kind {kind!r}")
    if kind not in ("r", "p", "v", "m", "f"):
        return f"is {what}, not a table"
    if "version_num" in columns:
        return f"is {what} that cannot be read" + (f" ({error})" if error else "")
    shown = ", ".join(columns[:8]) + (", …" if len(columns) > 8 else "")
    return f"is {what} without a version_num column (its columns: {shown or 'none'})"


def postgres_state_query(
    schema: str | None,
    version_table: str,
    *,
    with_versions: bool = True,
    count_tables: bool = True,
    version_schema: str | None = None,
    history_table: str | None = DEFAULT_HISTORY_TABLE,
    with_history: bool = True,
) -> str:
    """The single statement: server version, schema, table count, version rows, their history.

    It is sent wrapped in ``COPY (...) TO STDOUT`` over the simple query
    protocol: one message out, one answer back, no type introspection by the
    driver. It reads the version table optimistically; only when that fails
    (a database that is not ready anyway: no such table, or an object of that
    name that is not a version table) does a second statement,
    ``with_versions=False``, read the rest and what the name is instead.

    The fallback runs when the first statement raises ``UndefinedTable`` (no
    such relation or schema), ``UndefinedColumn`` (a sequence, a view or a
    table without ``version_num``) or ``WrongObjectType`` (an index or a
    composite type of that name).

    The version rows come back as one JSON array of ``version_num`` exactly as
    Alembic's ``SELECT version_num`` reads it: NULLs, padding, backslashes,
    control characters and values of another type survive, and no text is
    split. Settings reach the text only through :func:`sql_literal` and
    :func:`sql_identifier`.

    The tables are counted in ``schema`` and the version table is read in
    ``version_schema`` (default: ``schema``); without either, through the
    ``search_path``, as Alembic does.

    The last two columns are the history table's (``history_table``, next to
    the version table): whether it exists, and the latest ``applied`` row
    (revision, compatible_since, phase) of each current revision, as a JSON
    array. A database migrated before dbinit kept a history has no such table:
    the statement then fails, and the error's position (after
    :data:`HISTORY_MARK`: the parser reports the first missing relation, and
    the version table comes first) says it was the history table; a second
    statement, ``with_history=False``, reads the versions and only asks
    whether the history table exists (``to_regclass``). Without a position
    (a pooler that drops it), the fallback says whether the version table is
    sound, and the second statement follows it. Every statement without
    versions also asks only that.
    """
    schema_sql = sql_literal(schema) if schema else "current_schema()"
    where = version_schema or schema
    table = f"{sql_identifier(where)}.{sql_identifier(version_table)}" if where else sql_identifier(
        version_table
    )
    if with_versions:
        versions = f"true, (SELECT pg_catalog.json_agg(version_num) FROM {table})"
    else:
        name = (
            f"pg_catalog.format('%I.%I', {sql_literal(where)}, {sql_literal(version_table)})"
            if where
            else f"pg_catalog.quote_ident({sql_literal(version_table)})"
        )
        versions = f"""false, (SELECT pg_catalog.json_build_object('kind', c.relkind, 'columns',
                 (SELECT pg_catalog.json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
            FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass({name}))"""
    tables = f"""FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = {schema_sql} AND c.relkind IN ('r', 'p')"""
    # -1: "there are tables", not counted
    count = f"(SELECT count(*) {tables})" if count_tables else f"(SELECT -EXISTS(SELECT 1 {tables})::int)"
    if history_table is None:
        history = "false, NULL"
    elif with_versions and with_history:
        from dbinit.history import HistoryTable, latest_applied_json

        latest = latest_applied_json(HistoryTable(history_table, where, "postgresql"), "v.revision")
        history = f"""{HISTORY_MARK} true, (SELECT pg_catalog.json_agg(
                 pg_catalog.json_build_array(v.revision, {latest}) ORDER BY v.revision)
            FROM (SELECT DISTINCT version_num::text AS revision FROM {table}) v)"""
    else:
        name = (
            f"pg_catalog.format('%I.%I', {sql_literal(where)}, {sql_literal(history_table)})"
            if where
            else f"pg_catalog.quote_ident({sql_literal(history_table)})"
        )
        history = f"pg_catalog.to_regclass({name}) IS NOT NULL, NULL"
    return f"""SELECT current_setting('server_version'), {schema_sql}, {count}, {versions}, {history}"""


def history_entries(document: str | None) -> tuple[HistoryEntry, ...]:
    """The history column: a JSON array of [revision, its latest applied row or null] (NULL: no rows)."""
    rows = json.loads(document) if document is not None else None
    return tuple(
        HistoryEntry(str(revision), str(row["compatible_since"]), str(row["phase"]))
        for revision, row in rows or []
        if row is not None
    )


def postgres_state(
    version: str,
    schema: str,
    count: int,
    exists: bool,
    versions: str | None,
    history_exists: bool = False,
    history: str | None = None,
) -> DatabaseState:
    """The state from the statement's seven columns (a count of -1: tables, not counted).

    ``versions`` is JSON text: with ``exists``, the array of version rows
    (NULL for none); without, what the name is instead (NULL for nothing).
    """
    document = json.loads(versions) if versions is not None else None
    texts: tuple[str, ...] = ()
    others: tuple[object, ...] = ()
    problem = ""
    if exists:
        rows = document or []
        texts = tuple(sorted(v for v in rows if isinstance(v, str)))
        others = tuple(v for v in rows if not isinstance(v, str))
    elif document is not None:
        problem = relation_problem(document["kind"], document["columns"] or [])
    return DatabaseState(
        backend="postgresql",
        server_version=version,
        schema=schema,
        table_count=None if count < 0 else count,
        version_table_exists=exists,
        versions=texts,
        invalid_versions=others,
        version_table_problem=problem,
        history_table_exists=history_exists,
        history=history_entries(history),
    )


_COPY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def copy_text_field(field: str) -> str | None:
    r"""One field of ``COPY ... TO STDOUT`` text output with its escapes undone.

    The server writes ``\N`` for NULL, a backslash as ``\\`` and the control
    characters as ``\b \f \n \r \t \v``; any other backslashed character is
    itself (it never writes octal or hex escapes).
    """
    if field == r"\N":
        return None
    if "\\" not in field:
        return field
    return _COPY_ESCAPE.sub(lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), field)


def parse_postgres_state(line: str) -> DatabaseState:
    """The state from the statement's ``COPY`` text output (one line)."""
    version, schema, count, exists, versions, history_exists, history = split_copy_line(line)
    assert version is not None and schema is not None and count is not None
    return postgres_state(
        version, schema, int(count), exists == "t", versions, history_exists == "t", history
    )


def split_copy_line(line: str) -> list[str | None]:
    """The fields of one ``COPY ... TO STDOUT`` text line, escapes undone."""
    return [copy_text_field(field) for field in line.removesuffix("\n").split("\t")]


def shows_version_table(versions: str | None) -> bool:
    """Whether a fallback's version column (what the name is) shows a table Alembic can read.

    Then what failed the first statement was the history table (absent, or not
    dbinit's), not the version table: the versions are read again without it.
    """
    document = json.loads(versions) if versions is not None else None
    if document is None:
        return False
    return document["kind"] in ("r", "p", "v", "m", "f") and "version_num" in (document["columns"] or [])


def _lost_errors() -> tuple[type[BaseException], ...]:
    """What a dropped connection or a query timeout raises from asyncpg."""
    import asyncpg

    return (
        OSError,
        TimeoutError,
        asyncio.TimeoutError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.QueryCanceledError,
    )


def _text_field(value: object) -> str | None:
    """A prepared statement's column as COPY would write it: booleans as t/f, None as NULL."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


class PostgresProbe:
    """One asyncpg connection, read-only by session default."""

    def __init__(self, connection: asyncpg.Connection, options: ProbeOptions) -> None:
        self._connection = connection
        self._long_lived = options.long_lived
        self._options = options
        # (count_tables, with_versions, with_history) -> statement, built when first needed (a start
        # needs one of the eight)
        self._queries: dict[tuple[bool, bool, bool], str] = {}
        self._timeout = options.query_timeout
        self._history_table = options.history_table
        #: Set once the history table was found missing: a kept connection then reads the
        #: versions without it (one statement), until that statement sees the table appear.
        self._without_history = False

    def _query(self, count_tables: bool, with_versions: bool, with_history: bool) -> str:
        key = (count_tables, with_versions, with_history)
        query = self._queries.get(key)
        if query is None:
            options = self._options
            query = self._queries[key] = postgres_state_query(
                options.schema,
                options.version_table,
                with_versions=with_versions,
                count_tables=count_tables,
                version_schema=options.version_schema,
                history_table=options.history_table,
                with_history=with_history,
            )
        return query

    @classmethod
    async def connect(cls, url: DatabaseURL, options: ProbeOptions) -> PostgresProbe:
        import asyncpg

        arguments = url.asyncpg_connect_kwargs(
            timeout=options.connect_timeout,
            server_settings={
                "application_name": options.application_name[:63],
                "default_transaction_read_only": "on",
            },
            read_only_session=True,
        )
        try:
            connection = await asyncpg.connect(
                **arguments, statement_cache_size=16 if options.long_lived else 0
            )
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise
            raise connect_failure(exc, url) from None
        return cls(connection, options)

    async def read_state(self, *, count_tables: bool = True) -> DatabaseState:
        """One statement when the version and history tables are there (the usual case).

        Without a version table: two (the fallback says what the name is). Without
        a history table (a database migrated before dbinit kept one): three, once;
        a kept connection then reads without it in one, until it appears.
        """
        import asyncpg

        missing = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError, asyncpg.WrongObjectTypeError)
        first = self._query(count_tables, True, not self._without_history)
        try:
            try:
                fields = await self._fetch(first)
            except missing as exc:
                if not self._without_history and self._history_failed(first, exc):
                    fields = await self._fetch(self._query(count_tables, True, False))
                    self._without_history = self._long_lived
                    return self._state(fields, history_readable=False)
                fields = await self._fetch(self._query(count_tables, False, False))
                if not self._without_history and shows_version_table(fields[4]):
                    try:
                        fields = await self._fetch(self._query(count_tables, True, False))
                    except missing:
                        pass  # the version table changed meanwhile: the fallback's answer stands
                    else:
                        self._without_history = self._long_lived
                        return self._state(fields, history_readable=False)
        except asyncpg.InsufficientPrivilegeError as exc:
            if self._without_history or not self._history_denied(exc):
                raise self._denied(exc) from None
            # a role granted SELECT on the version table only: verify without the history (its
            # verdicts on a newer database say ahead_unknown, and why)
            try:
                fields = await self._fetch(self._query(count_tables, True, False))
            except asyncpg.InsufficientPrivilegeError as again:
                raise self._denied(again) from None
            except _lost_errors() as again:
                raise self._lost(again) from None
            self._without_history = self._long_lived
            table = self._history_table or DEFAULT_HISTORY_TABLE
            return self._state(
                fields, history_readable=False,
                problem=f"no SELECT privilege on {table!r} (GRANT SELECT ON {table} TO the service's role)",
            )
        except _lost_errors() as exc:
            raise self._lost(exc) from None
        if self._without_history and fields[5] == "t":
            self._without_history = False  # it appeared: the next read is one statement with it
        return self._state(fields, history_readable=True)

    def _history_denied(self, exc: BaseException) -> bool:
        """Whether a permission error is about the history table (not the version table's)."""
        table = self._history_table or DEFAULT_HISTORY_TABLE
        return f"table {table}" in str(exc)

    def _history_failed(self, query: str, exc: BaseException) -> bool:
        """Whether the server placed the error in the history columns (see :data:`HISTORY_MARK`)."""
        position = getattr(exc, "position", None)
        mark = query.find(HISTORY_MARK)
        if not position or not str(position).isdigit() or mark < 0:
            return False
        return int(position) - 1 - (0 if self._long_lived else _COPY_PREFIX) > mark

    def _state(
        self, fields: list[str | None], *, history_readable: bool, problem: str | None = None
    ) -> DatabaseState:
        version, schema, count, exists, versions, history_exists, history = fields
        assert version is not None and schema is not None and count is not None
        state = postgres_state(
            version, schema, int(count), exists == "t", versions, history_exists == "t", history
        )
        if state.history_table_exists and not history_readable:
            table = self._history_table or DEFAULT_HISTORY_TABLE
            return dataclasses.replace(
                state,
                history_problem=problem
                or f"{table!r} exists but is not dbinit's history table (its columns differ)",
            )
        return state

    async def _fetch(self, query: str) -> list[str | None]:
        """The statement's one row as text fields: COPY over the simple protocol, or prepared once."""
        if self._long_lived:
            row = await self._connection.fetchrow(query, timeout=self._timeout)
            assert row is not None
            return [_text_field(value) for value in row]
        chunks: list[bytes] = []

        async def sink(data: bytes) -> None:
            chunks.append(data)

        await self._connection.copy_from_query(query, output=sink, timeout=self._timeout)
        return split_copy_line(b"".join(chunks).decode())

    def _lost(self, exc: BaseException) -> DatabaseUnreachable:
        return DatabaseUnreachable(
            f"connection to the database lost during verification: {describe_connect_error(exc)}",
            hint="The server restarted or failed over, or DBINIT_VERIFY_TIMEOUT was hit; "
            "a retry reconnects",
        )

    def _denied(self, exc: BaseException) -> DatabaseUnreachable:
        """The role may not read the state: exit 3 like a refused login, naming the object and the GRANT."""
        role = getattr(self._connection.get_settings(), "session_authorization", None) or "the service's role"
        text = str(exc)
        name = text.removeprefix("permission denied for ").partition(" ")[2]
        if text.startswith("permission denied for schema "):
            grant = f"GRANT USAGE ON SCHEMA {name}"
        elif text.startswith("permission denied for ") and name:
            grant = f"GRANT SELECT ON {name}"
        else:  # a localized server message: the version table is what the state reads
            grant = "GRANT SELECT ON the version table (DBINIT_VERSION_TABLE)"
        return DatabaseUnreachable(
            f"permission denied reading the database state: {text}",
            hint=f"{grant} TO {role} (run by the table's owner, e.g. in the migration job)",
        )

    async def ask(self, question: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Ask one more thing on this session, within the probe's query timeout.

        ``wait`` asks who holds the migration lock on its verification's
        connection, so that a poll costs one connection, not two. A dropped
        connection or a timeout raises :class:`DatabaseUnreachable`, as
        :meth:`read_state` does.
        """
        try:
            return await asyncio.wait_for(question(self._connection), self._timeout)
        except _lost_errors() as exc:
            raise self._lost(exc) from None

    async def close(self) -> None:
        await self._connection.close(timeout=2)


class SqliteProbe:
    """A read-only SQLite connection that never creates or changes a file.

    A missing file is an empty database. A rollback-journal database is
    opened ``mode=ro`` (a shared lock, no file created). A WAL database
    (header byte 19 is 2) needs its ``-shm`` wal-index to be read safely
    next to a writer, and SQLite creates ``-wal`` and ``-shm`` when they are
    missing, even ``mode=ro`` (which also fails in a read-only folder). So:

    * ``-wal`` and ``-shm`` present (a writer has it open, or crashed):
      ``mode=ro`` uses them as every reader does; nothing is created.
    * no ``-wal``: every transaction is in the database file itself, which
      is read ``immutable=1`` (no locks, no files) and then checked: if the
      file changed or a ``-wal`` appeared meanwhile (a writer checkpointed),
      the read is discarded and done again. ``immutable=1`` alone would be
      wrong: it ignores a ``-wal`` and reads torn pages next to a writer.
    * ``-wal`` without ``-shm``: unreadable without creating a file; reported
      as unreachable (retryable: a writer opening the database is between
      the two).
    """

    def __init__(self, url: DatabaseURL, options: ProbeOptions) -> None:
        self._url = url
        self._options = options

    @classmethod
    async def connect(cls, url: DatabaseURL, options: ProbeOptions) -> SqliteProbe:
        return cls(url, options)

    async def read_state(self, *, count_tables: bool = True) -> DatabaseState:
        import sqlite3

        path = self._url.sqlite_path
        if path is None:
            return self._read(":memory:", uri=False)
        if not path.exists():
            return DatabaseState("sqlite", sqlite3.sqlite_version, "main", 0, False, (), False)
        for _ in range(3):
            target, before = self._target(path)
            try:
                state = self._read(target, uri=True)
            except DatabaseUnreachable:
                if before is None or before == _sqlite_snapshot(path):
                    raise
                continue  # a torn page (not a database, corrupt) read while a writer checkpointed
            if before is None or before == _sqlite_snapshot(path):
                return state
        raise DatabaseUnreachable(
            f"SQLite database {self._url.database!r} changed during every read",
            hint="A writer checkpointed it while it was read; a retry reads it again",
        )

    def _target(self, path: Path) -> tuple[str, tuple[object, ...] | None]:
        """The URI to read ``path`` through, and the snapshot to compare after an unlocked read."""
        uri = path.absolute().as_uri()
        if not self._is_wal(path):
            return uri + "?mode=ro", None
        wal, shm = f"{path}-wal", f"{path}-shm"
        if os.path.exists(wal):
            if not os.path.exists(shm):
                raise DatabaseUnreachable(
                    f"SQLite database {self._url.database!r} has a -wal file but no -shm: "
                    "reading it would create one",
                    hint="A writer is opening it (retry), or the -shm was deleted: open it once "
                    "read-write (the migration job does) to rebuild it",
                )
            return uri + "?mode=ro", None
        return uri + "?mode=ro&immutable=1", _sqlite_snapshot(path)

    def _is_wal(self, path: Path) -> bool:
        """Whether the file's header says WAL mode (read without blocking on a FIFO)."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise DatabaseUnreachable(
                f"cannot open SQLite database {self._url.database!r}: {exc.strerror}",
                hint="Check the path in DATABASE_URL and its permissions",
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigurationError(
                    f"SQLite database {self._url.database!r} is not a regular file",
                    hint="Point DATABASE_URL at a SQLite database file",
                )
            header = os.read(fd, 20)
        finally:
            os.close(fd)
        return len(header) == 20 and header.startswith(b"SQLite format 3\x00") and header[19] == 2

    def _read(self, target: str, *, uri: bool) -> DatabaseState:
        import sqlite3

        try:
            connection = sqlite3.connect(target, uri=uri, timeout=self._options.query_timeout)
        except sqlite3.Error as exc:
            raise DatabaseUnreachable(
                f"cannot open SQLite database {self._url.database!r}: {exc}",
                hint="Check the path in DATABASE_URL and its permissions",
            ) from None
        table = self._options.version_table
        try:
            history_table = self._options.history_table or ""
            count, kind, has_history = connection.execute(
                "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'), (SELECT type FROM sqlite_master "
                "WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE), "
                "EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE)",
                (table, history_table),
            ).fetchone()
            rows: list[object] = []
            problem = ""
            if kind is not None:  # Alembic reads a view of that name too
                try:
                    query = f"SELECT version_num FROM {sql_identifier(table)}"
                    rows = [r[0] for r in connection.execute(query)]
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorname != "SQLITE_ERROR":  # busy, locked, I/O: not the table's fault
                        raise
                    info = connection.execute("SELECT name FROM pragma_table_info(?)", (table,))
                    columns = [r[0] for r in info]
                    problem = relation_problem("v" if kind == "view" else "r", columns, str(exc))
            history, history_problem = (
                _sqlite_history(connection, history_table, rows) if has_history and rows else ((), "")
            )
        except sqlite3.DatabaseError as exc:
            raise DatabaseUnreachable(
                f"cannot read SQLite database {self._url.database!r}: {exc}",
                hint="Is DATABASE_URL pointing at a SQLite database file?",
            ) from None
        finally:
            connection.close()
        return DatabaseState(
            "sqlite",
            sqlite3.sqlite_version,
            "main",
            count,
            kind is not None and not problem,
            tuple(sorted(v for v in rows if isinstance(v, str))),
            invalid_versions=tuple(v for v in rows if not isinstance(v, str)),
            version_table_problem=problem,
            history_table_exists=bool(has_history),
            history=history,
            history_problem=history_problem,
        )

    async def close(self) -> None:
        return None


def _sqlite_history(
    connection: sqlite3.Connection, table: str, versions: list[object]
) -> tuple[tuple[HistoryEntry, ...], str]:
    """The latest applied history row of each current revision, or why the table cannot be read."""
    import sqlite3

    from dbinit.history import HistoryTable, latest_applied_sql

    wanted = sorted({v for v in versions if isinstance(v, str)})
    query = latest_applied_sql(HistoryTable(table, None, "sqlite"), wanted)
    try:
        rows = connection.execute(query).fetchall()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorname != "SQLITE_ERROR":  # busy, locked, I/O: not the table's fault
            raise
        return (), f"{table!r} exists but is not dbinit's history table ({exc})"
    latest = {str(r[0]): HistoryEntry(str(r[0]), str(r[1]), str(r[2])) for r in rows}  # the last id wins
    return tuple(latest[k] for k in sorted(latest)), ""


def _sqlite_snapshot(path: Path) -> tuple[object, ...]:
    """What a writer's checkpoint changes: the file's identity, size and times, and the -wal."""
    info = os.stat(path)
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, os.path.exists(f"{path}-wal"))


async def open_probe(url: DatabaseURL, options: ProbeOptions) -> Probe:
    """Connect (PostgreSQL) or prepare (SQLite); raises :class:`DatabaseUnreachable`."""
    if url.is_sqlite:
        return await SqliteProbe.connect(url, options)
    return await PostgresProbe.connect(url, options)


async def connect_session(
    url: DatabaseURL, application_name: str, timeout: float, **server_settings: str
) -> asyncpg.Connection:
    """A short dbinit session of its own (the lock's, a stop, an inspection, recreate,
    a holder look-up): the URL translated once, the session named.

    Raises :func:`connect_failure`'s error (exit 2 or 3).
    """
    import asyncpg

    arguments = url.asyncpg_connect_kwargs(
        timeout=timeout,
        server_settings={"application_name": application_name[:63], **server_settings},
    )
    try:
        return await asyncpg.connect(**arguments)
    except connect_errors() as exc:
        raise connect_failure(exc, url) from None


def connect_errors() -> tuple[type[BaseException], ...]:
    """What a failed ``asyncpg.connect()`` raises (and :func:`connect_failure` explains)."""
    import asyncpg

    return (
        TimeoutError,
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,  # ClientConfigurationError among them
        asyncpg.exceptions.TargetServerAttributeNotMatched,
    )


def connect_failure(exc: BaseException, url: DatabaseURL) -> DbinitError:
    """A failed connect as dbinit reports it: a configuration error asyncpg found
    before connecting (exit 2, e.g. no root certificate for sslmode=verify-ca), or
    :class:`DatabaseUnreachable` (exit 3)."""
    if type(exc).__name__ == "ClientConfigurationError":
        return ConfigurationError(
            f"cannot connect to {url.display_name}: {exc}",
            hint="Fix the TLS or connection parameters in DATABASE_URL",
        )
    return DatabaseUnreachable(
        f"cannot connect to {url.display_name}: {describe_connect_error(exc)}",
        hint=connect_hint(exc),
    )


def describe_connect_error(exc: BaseException) -> str:
    """A short, password-free reason: refused, DNS, timeout, authentication, TLS…"""
    name = type(exc).__name__
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if "rejected SSL upgrade" in str(exc):
        return "the server does not support SSL, and sslmode requires it"
    if name == "SSLCertVerificationError":
        reason = getattr(exc, "verify_message", None) or str(exc)
        return f"TLS certificate verification failed ({reason})"
    if name == "TargetServerAttributeNotMatched":
        return f"no host matches target_session_attrs ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name could not be resolved (DNS)"
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return f"authentication failed ({exc})"
    if name == "InvalidCatalogNameError":
        return f"database does not exist ({exc})"
    if name in ("CannotConnectNowError", "TooManyConnectionsError"):
        return f"server not accepting connections yet ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{name}: {exc}"


def connect_hint(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    if "rejected SSL upgrade" in text:
        return "Use sslmode=prefer (or disable) for a server without TLS, or turn ssl on in the server"
    if name == "SSLCertVerificationError":
        return (
            "Check sslrootcert (the CA that signed the server's certificate); verify-full also "
            "needs the host name in the certificate"
        )
    if "no encryption" in text:
        return "The server accepts only TLS connections: use sslmode=require (or stronger)"
    if name == "TargetServerAttributeNotMatched":
        return "No host is in the wanted state (e.g. a failover in progress); a retry may find one"
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return "Check the user and password in DATABASE_URL (the Secret)"
    if name == "InvalidCatalogNameError":
        return "Create the database, or fix its name in DATABASE_URL"
    if isinstance(exc, socket.gaierror):
        return "Check the host in DATABASE_URL; is the database Service name right?"
    return "Is the database running and reachable? `dbinit wait` retries with backoff"
