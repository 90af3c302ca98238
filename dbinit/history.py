"""The migration history: one row per revision ``migrate`` ran, in ``dbinit_history``.

``migrate`` writes a row for every revision it applied, in the revision's
own transaction (a revision that rolls back leaves no ``applied`` row), and
one for a revision that failed or was interrupted, after its rollback, on a
short connection of its own. The verdict of ``verify`` reads the latest
``applied`` row of the database's revision (:func:`latest_applied_json`,
inside its one statement); ``dbinit history`` lists the rows.

The table is ``DBINIT_HISTORY_TABLE`` (default ``dbinit_history``) in the
version table's schema (``DBINIT_VERSION_TABLE_SCHEMA``, else
``DBINIT_SCHEMA``, else the search path). Every statement on it is made
here: identifiers quoted with :func:`~dbinit.database.sql_identifier`,
values bound as parameters (the driver's own quoting), the few literals
through :func:`~dbinit.database.sql_literal`.

This module imports neither SQLAlchemy nor Alembic: the SQLAlchemy side
(:func:`record_in_transaction`) is handed Alembic's connection.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from dbinit.database import sql_identifier, sql_literal

if TYPE_CHECKING:
    from dbinit.logs import Redactor
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings

Backend = Literal["postgresql", "sqlite"]
Outcome = Literal["applied", "failed", "interrupted"]
#: How placeholders are written: ``:name`` (SQLAlchemy ``text()`` and sqlite3) or ``$n`` (asyncpg).
ParamStyle = Literal["named", "numeric"]

#: The longest ``error`` kept (one line, redacted), "…" marking a cut.
MAX_ERROR = 500
#: ``duration_ms`` of a row whose duration was not measured: the ``command`` strategy's
#: migrator applies its revisions in one process, dbinit sees only the version table change.
DURATION_UNKNOWN = -1.0

#: The columns written by ``migrate``, in the order of the insert (``id`` is the table's own).
COLUMNS = (
    "revision",
    "down_revisions",
    "phase",
    "phase_source",
    "compatible_since",
    "outcome",
    "error",
    "started_at",
    "duration_ms",
    "service",
    "pod",
    "image_heads",
    "dbinit_version",
)

_POSTGRES_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    revision text NOT NULL,
    down_revisions text NOT NULL,
    phase text NOT NULL,
    phase_source text NOT NULL,
    compatible_since text NOT NULL,
    outcome text NOT NULL,
    error text,
    started_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    service text NOT NULL,
    pod text NOT NULL,
    image_heads text NOT NULL,
    dbinit_version text NOT NULL
)"""

_SQLITE_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision TEXT NOT NULL,
    down_revisions TEXT NOT NULL,
    phase TEXT NOT NULL,
    phase_source TEXT NOT NULL,
    compatible_since TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    service TEXT NOT NULL,
    pod TEXT NOT NULL,
    image_heads TEXT NOT NULL,
    dbinit_version TEXT NOT NULL
)"""


@dataclasses.dataclass(frozen=True)
class HistoryTable:
    """Where the history is, and every statement on it."""

    name: str
    schema: str | None
    backend: Backend

    @classmethod
    def of(cls, settings: Settings) -> HistoryTable:
        """``DBINIT_HISTORY_TABLE`` in the version table's schema (SQLite: no schema)."""
        if settings.url.is_sqlite:
            return cls(settings.history_table, None, "sqlite")
        return cls(settings.history_table, settings.version_schema, "postgresql")

    @property
    def qualified(self) -> str:
        """The table's name in SQL, quoted (with its schema, when one is set)."""
        if self.schema:
            return f"{sql_identifier(self.schema)}.{sql_identifier(self.name)}"
        return sql_identifier(self.name)

    @property
    def shown(self) -> str:
        """The table's name for messages."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def create_sql(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` for this backend."""
        return (_SQLITE_DDL if self.backend == "sqlite" else _POSTGRES_DDL).format(table=self.qualified)

    def index_sql(self) -> str:
        """``CREATE INDEX IF NOT EXISTS`` on ``(revision, id)``: run after :meth:`create_sql`.

        A verification reads each current revision's latest applied row
        (:func:`latest_applied_json`): without it, a scan of the whole history
        (a thousand rows: most of a readiness re-check's server time). Created
        with the table only: on a table that exists already (perhaps another
        role's) ``CREATE INDEX`` would need its ownership even when the index is there.
        """
        return (f"CREATE INDEX IF NOT EXISTS {sql_identifier(self.name[:54] + '_revision')} "
                f"ON {self.qualified} (revision, id)")  # fmt: skip

    def insert_sql(self, style: ParamStyle = "named") -> str:
        """The insert of one row, its values as placeholders named like :data:`COLUMNS`."""
        if style == "named":
            values = ", ".join(f":{column}" for column in COLUMNS)
        else:
            values = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
        return f"INSERT INTO {self.qualified} ({', '.join(COLUMNS)}) VALUES ({values})"

    def select_sql(self, limit: int | None = None) -> str:
        """Every row (``dbinit history``), newest first; at most ``limit``."""
        started = "started_at::text" if self.backend == "postgresql" else "started_at"
        listed = ", ".join(started if c == "started_at" else c for c in COLUMNS)
        cap = f" LIMIT {int(limit)}" if limit is not None else ""
        return f"SELECT id, {listed} FROM {self.qualified} ORDER BY id DESC{cap}"

    def exists_sql(self) -> str:
        """One row, one boolean column: whether the table exists."""
        if self.backend == "sqlite":
            return (
                "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' "
                f"AND name = {sqlite_literal(self.name)} COLLATE NOCASE)"
            )
        name = (
            f"pg_catalog.format('%I.%I', {sql_literal(self.schema)}, {sql_literal(self.name)})"
            if self.schema
            else f"pg_catalog.quote_ident({sql_literal(self.name)})"
        )
        return f"SELECT pg_catalog.to_regclass({name}) IS NOT NULL"


#: What the verdict reads of a revision's latest ``applied`` row.
VERDICT_COLUMNS = ("compatible_since", "phase", "phase_source", "id")


def latest_applied_json(table: HistoryTable, revision_sql: str) -> str:
    """A scalar subquery: the latest ``applied`` row of the revision ``revision_sql`` (an SQL
    expression, e.g. a column of the version table) as a JSON object of :data:`VERDICT_COLUMNS`,
    or NULL when there is none.

    For the verdict's one statement (PostgreSQL ``json_build_object``; SQLite
    ``json_object``). The table must exist: a statement naming a missing table
    fails as a whole (``UndefinedTable`` / ``no such table``); check
    :meth:`HistoryTable.exists_sql` or fall back to a statement without it.
    """
    build = "json_object" if table.backend == "sqlite" else "pg_catalog.json_build_object"
    pairs = ", ".join(f"'{column}', h.{column}" for column in VERDICT_COLUMNS)
    return (
        f"(SELECT {build}({pairs}) FROM {table.qualified} h WHERE h.revision = {revision_sql} "
        "AND h.outcome = 'applied' ORDER BY h.id DESC LIMIT 1)"
    )


def latest_applied_sql(table: HistoryTable, revisions: Sequence[str]) -> str:
    """The latest ``applied`` row of each of ``revisions`` (given ids, as literals): a statement
    returning ``revision`` then :data:`VERDICT_COLUMNS`, one row per revision that has one."""
    literal = sqlite_literal if table.backend == "sqlite" else sql_literal
    listed = ", ".join(literal(revision) for revision in revisions) or "NULL"
    columns = ", ".join(f"h.{column}" for column in VERDICT_COLUMNS)
    return (
        f"SELECT h.revision, {columns} FROM {table.qualified} h WHERE h.id IN "
        f"(SELECT max(id) FROM {table.qualified} WHERE outcome = 'applied' AND revision IN ({listed}) "
        "GROUP BY revision) ORDER BY h.id"
    )


def sqlite_literal(text: str) -> str:
    """``text`` as a SQLite string constant (only ``'`` is special inside)."""
    return "'" + text.replace("'", "''") + "'"


# -- rows ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HistoryRow:
    """One row of the history (``id`` is None until the database gave it one)."""

    revision: str
    down_revisions: tuple[str, ...]
    phase: str
    phase_source: str
    compatible_since: str
    outcome: Outcome
    error: str | None
    started_at: datetime.datetime
    #: :data:`DURATION_UNKNOWN` when not measured (the ``command`` strategy)
    duration_ms: float
    service: str
    pod: str
    image_heads: tuple[str, ...]
    dbinit_version: str
    id: int | None = None

    @property
    def duration_known(self) -> bool:
        return self.duration_ms >= 0

    def values(self, backend: Backend) -> dict[str, object]:
        """The insert's parameters, by column (lists comma-joined; SQLite: times as ISO 8601 text)."""
        started: object = self.started_at
        if backend == "sqlite":
            started = self.started_at.astimezone(datetime.UTC).isoformat(timespec="microseconds")
        return {
            "revision": self.revision,
            "down_revisions": ",".join(self.down_revisions),
            "phase": self.phase,
            "phase_source": self.phase_source,
            "compatible_since": self.compatible_since,
            "outcome": self.outcome,
            "error": self.error,
            "started_at": started,
            "duration_ms": float(self.duration_ms),
            "service": self.service,
            "pod": self.pod,
            "image_heads": ",".join(self.image_heads),
            "dbinit_version": self.dbinit_version,
        }

    def as_json(self) -> dict[str, object]:
        """The row as ``dbinit history --format json`` shows it (an unknown duration: null)."""
        return {
            "id": self.id,
            "revision": self.revision,
            "down_revisions": list(self.down_revisions),
            "phase": self.phase,
            "phase_source": self.phase_source,
            "compatible_since": self.compatible_since,
            "outcome": self.outcome,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "duration_ms": round(self.duration_ms, 3) if self.duration_known else None,
            "service": self.service,
            "pod": self.pod,
            "image_heads": list(self.image_heads),
            "dbinit_version": self.dbinit_version,
        }

    @classmethod
    def from_record(cls, record: Sequence[Any]) -> HistoryRow:
        """A row read by :meth:`HistoryTable.select_sql` (``id`` first, then :data:`COLUMNS`)."""
        fields = dict(zip(("id", *COLUMNS), record, strict=True))
        outcome = str(fields["outcome"])
        return cls(
            id=int(fields["id"]),
            revision=str(fields["revision"]),
            down_revisions=_split(fields["down_revisions"]),
            phase=str(fields["phase"]),
            phase_source=str(fields["phase_source"]),
            compatible_since=str(fields["compatible_since"]),
            outcome=outcome if outcome in ("applied", "failed", "interrupted") else "failed",  # type: ignore[arg-type]
            error=None if fields["error"] is None else str(fields["error"]),
            started_at=_parse_time(str(fields["started_at"])),
            duration_ms=float(fields["duration_ms"]),
            service=str(fields["service"]),
            pod=str(fields["pod"]),
            image_heads=_split(fields["image_heads"]),
            dbinit_version=str(fields["dbinit_version"]),
        )


def _split(value: object) -> tuple[str, ...]:
    return tuple(part for part in str(value or "").split(",") if part)


def _parse_time(text: str) -> datetime.datetime:
    """``started_at`` as PostgreSQL's ``::text`` or SQLite's ISO 8601 writes it (UTC if no zone)."""
    normalised = text.strip().replace(" ", "T", 1)
    if len(normalised) >= 3 and normalised[-3] in "+-" and normalised[-2:].isdigit():
        normalised += ":00"  # PostgreSQL's "+00"
    parsed = datetime.datetime.fromisoformat(normalised)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Phase:
    """What the history records of a revision's phase (from :mod:`dbinit.revisions.phases`)."""

    phase: str
    source: str
    compatible_since: str


def phases_of(scripts: MigrationScripts) -> Mapping[str, Phase]:
    """Every revision's phase, as :func:`dbinit.revisions.phases.revision_phases` classifies it."""
    from dbinit.revisions.phases import revision_phases

    return {
        revision: Phase(found.phase, found.source, found.compatible_since)
        for revision, found in revision_phases(scripts).items()
    }


def row_for(
    settings: Settings,
    scripts: MigrationScripts,
    phases: Mapping[str, Phase],
    revision: str,
    outcome: Outcome,
    started_at: datetime.datetime,
    duration_ms: float,
    error: str | None = None,
) -> HistoryRow:
    """The row for one run of ``revision`` by this image's ``migrate``."""
    from dbinit import __version__

    found = scripts.graph.revisions.get(revision)
    # a revision the phases do not know (none should be): recorded as the safe answer
    phase = phases.get(revision) or Phase("contract", "inferred", revision)
    return HistoryRow(
        revision=revision,
        down_revisions=tuple(found.down_revisions) if found is not None else (),
        phase=phase.phase,
        phase_source=phase.source,
        compatible_since=phase.compatible_since,
        outcome=outcome,
        error=error,
        started_at=started_at,
        duration_ms=duration_ms,
        service=settings.service,
        pod=socket.gethostname(),
        image_heads=tuple(scripts.heads),
        dbinit_version=__version__,
    )


#: ``PASSWORD '...'`` in SQL (CREATE/ALTER ROLE, USER MAPPING ... OPTIONS (password '...')).
_SQL_PASSWORD = re.compile(r"(?P<head>\bpassword\s*)(?P<secret>E?'(?:[^']|'')*'?)", re.IGNORECASE)


def one_line_error(text: str, redactor: Redactor) -> str:
    """``text`` redacted (known secrets, any URL's password, an SQL ``PASSWORD '...'``), on one
    line, at most :data:`MAX_ERROR` characters."""
    redacted = _SQL_PASSWORD.sub(lambda m: m["head"] + "'***'", redactor.text(text))
    line = " ".join(redacted.split())
    return line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 1] + "…"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- writing and reading -------------------------------------------------------------------


def ensure_in_transaction(connection: Any, table: HistoryTable) -> None:
    """Create the table if missing, through Alembic's connection (a SQLAlchemy ``Connection``),
    before the first revision runs: it commits with that revision's transaction.

    Alembic's connection, not one of dbinit's: on SQLite a second writer would
    wait for the write lock Alembic's open transaction holds (it created the
    version table), for ever, in the same thread.
    """
    from sqlalchemy import text

    created = not connection.execute(text(table.exists_sql())).scalar()
    connection.execute(text(table.create_sql()))
    if created:
        connection.execute(text(table.index_sql()))


def record_in_transaction(connection: Any, table: HistoryTable, row: HistoryRow) -> None:
    """Insert ``row`` through Alembic's connection, inside the revision's transaction (it commits
    with the revision, or rolls back with it)."""
    connection.execute(_insert_clause(table), row.values(table.backend))


@functools.lru_cache(maxsize=8)
def _insert_clause(table: HistoryTable) -> Any:
    """The INSERT as a SQLAlchemy ``text()`` clause, made once per table (not once per revision)."""
    from sqlalchemy import text

    return text(table.insert_sql("named"))


class HistoryUnavailable(Exception):
    """The history could not be written or read on dbinit's own connection (the reason, no password)."""


def record_now(settings: Settings, rows: Sequence[HistoryRow]) -> None:
    """Insert ``rows`` on a short connection of dbinit's own, in one transaction (the table is
    created if missing). After a rollback, or for the ``command`` strategy's revisions.

    Raises :class:`HistoryUnavailable` (the caller logs it: a history that cannot
    be written never changes a run's outcome).
    """
    if not rows:
        return
    _write(settings, rows)


def ensure_table(settings: Settings) -> None:
    """Create the history table if missing, on a short connection of dbinit's own.

    For a database migrated before dbinit kept a history and already at head:
    its verifications then read the history in their one statement. Raises
    :class:`HistoryUnavailable` (the caller logs it).
    """
    _write(settings, ())


def _write(settings: Settings, rows: Sequence[HistoryRow]) -> None:
    table = HistoryTable.of(settings)
    if table.backend == "sqlite":
        _record_sqlite(settings, table, rows)
    else:
        _record_postgres(settings, table, rows)


def _record_sqlite(settings: Settings, table: HistoryTable, rows: Sequence[HistoryRow]) -> None:
    import sqlite3

    path = settings.url.sqlite_path
    if path is None:
        raise HistoryUnavailable("an in-memory SQLite database keeps no history")
    try:
        connection = sqlite3.connect(path, timeout=settings.verify_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise HistoryUnavailable(f"cannot open {path.name}: {exc}") from None
    try:
        connection.execute("BEGIN IMMEDIATE")
        created = not connection.execute(table.exists_sql()).fetchone()[0]
        connection.execute(table.create_sql())
        if created:
            connection.execute(table.index_sql())
        if rows:
            connection.executemany(table.insert_sql("named"), [row.values("sqlite") for row in rows])
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise HistoryUnavailable(f"{type(exc).__name__}: {exc}") from None
    finally:
        connection.close()


def _record_postgres(settings: Settings, table: HistoryTable, rows: Sequence[HistoryRow]) -> None:
    import asyncio

    import asyncpg

    from dbinit.database import connect_session
    from dbinit.errors import DbinitError

    async def write() -> None:
        connection = await connect_session(
            settings.url, f"dbinit-history:{settings.service}", settings.connect_timeout
        )
        try:
            async with connection.transaction():
                timeout = settings.verify_timeout
                created = not await connection.fetchval(table.exists_sql(), timeout=timeout)
                await connection.execute(table.create_sql(), timeout=timeout)
                if created:
                    await connection.execute(table.index_sql(), timeout=timeout)
                if not rows:
                    return
                await connection.executemany(
                    table.insert_sql("numeric"),
                    [tuple(row.values("postgresql").values()) for row in rows],
                    timeout=settings.verify_timeout,
                )
        finally:
            await connection.close(timeout=2)

    try:
        asyncio.run(write())
    except DbinitError as exc:
        raise HistoryUnavailable(exc.message) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise HistoryUnavailable(f"{type(exc).__name__}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class HistoryListing:
    """What ``dbinit history`` read: the rows, newest first (``exists``: the table is there)."""

    table: str
    exists: bool
    rows: tuple[HistoryRow, ...]


async def read_history(settings: Settings, limit: int | None = None) -> HistoryListing:
    """The history's rows, newest first (read-only; a missing table is an empty listing).

    Raises :class:`~dbinit.errors.DatabaseUnreachable` (exit 3) when the
    database cannot be reached or read.
    """
    table = HistoryTable.of(settings)
    if table.backend == "sqlite":
        return _read_sqlite(settings, table, limit)
    return await _read_postgres(settings, table, limit)


def _read_sqlite(settings: Settings, table: HistoryTable, limit: int | None) -> HistoryListing:
    import sqlite3

    from dbinit.errors import DatabaseUnreachable

    path = settings.url.sqlite_path
    if path is None or not path.exists():
        return HistoryListing(table.shown, False, ())
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                     timeout=settings.verify_timeout)
    except sqlite3.Error as exc:
        raise DatabaseUnreachable(
            f"cannot open SQLite database {settings.url.database!r}: {exc}",
            hint="Check the path in DATABASE_URL and its permissions",
        ) from None
    try:
        (exists,) = connection.execute(table.exists_sql()).fetchone()
        if not exists:
            return HistoryListing(table.shown, False, ())
        records = connection.execute(table.select_sql(limit)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnreachable(
            f"cannot read the history in SQLite database {settings.url.database!r}: {exc}",
            hint="Is DATABASE_URL pointing at a SQLite database file?",
        ) from None
    finally:
        connection.close()
    return HistoryListing(table.shown, True, tuple(HistoryRow.from_record(r) for r in records))


async def _read_postgres(settings: Settings, table: HistoryTable, limit: int | None) -> HistoryListing:
    import asyncpg

    from dbinit.database import connect_session
    from dbinit.errors import DatabaseUnreachable

    connection = await connect_session(
        settings.url, f"dbinit-history:{settings.service}", settings.connect_timeout
    )
    try:
        exists = await connection.fetchval(table.exists_sql(), timeout=settings.verify_timeout)
        if not exists:
            return HistoryListing(table.shown, False, ())
        records = await connection.fetch(table.select_sql(limit), timeout=settings.verify_timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnreachable(
            f"cannot read the history ({table.shown}) of {settings.url.display_name}: "
            f"{type(exc).__name__}: {exc}",
            hint="Is the database reachable, and may this role read the history table?",
        ) from None
    finally:
        await connection.close(timeout=2)
    return HistoryListing(table.shown, True, tuple(HistoryRow.from_record(tuple(r)) for r in records))
