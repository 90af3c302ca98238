"""``dbinit lint --measure``: pending revisions applied to a scratch copy of the target, their locks measured.

The classification (:mod:`dbinit.lint.classify`) says which lock each
statement takes; this module asks the server. The target database (the URL
given, often production) is only read: its state (current revisions) through
dbinit's read-only verify session, its schema through ``pg_dump
--schema-only``. A scratch database on the same server (``dbinit_measure_<hex>``,
made with ``CREATE DATABASE``, so the role needs ``CREATEDB``) gets that
schema and the target's version rows; each pending revision's offline SQL
(:func:`dbinit.lint.sql.render_revision`) then runs there statement by
statement, as ``dbinit migrate`` would run it: the statements the rendered SQL
puts between ``BEGIN`` and ``COMMIT`` in one transaction, the others (an
``autocommit_block``: ``CREATE INDEX CONCURRENTLY``) on their own.

After each statement of a transaction (the transaction still open), a monitor
session reads ``pg_locks`` for the migration's session, and a real reader
(``SELECT 1 FROM t LIMIT 0``: ACCESS SHARE) and a real writer (``DELETE FROM t
WHERE false``, rolled back: ROW EXCLUSIVE) try each table the statement
touches, with a short ``lock_timeout``; a probe that times out is *blocked*
(and ``pg_blocking_pids`` is asked, while it waits, whether the migration's
session is what it waits for). A statement outside a transaction is sampled
while it runs: a snapshot held open by dbinit makes a statement that waits for
older snapshots (``CREATE INDEX CONCURRENTLY``, ``REINDEX CONCURRENTLY``) wait
for it, so its locks are read and the probes run while it holds them; a
statement that does not wait is sampled as it runs, and is "not observed" when
it was too quick. The scratch database is dropped afterwards, whatever
happened.

The scratch copy has no rows: every duration is a lower bound of what the
target will take.

Heavy imports (asyncpg, Alembic through :mod:`dbinit.lint.sql`) stay inside
functions; ``dbinit verify`` never imports this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dbinit.database import sql_identifier, sql_literal
from dbinit.errors import ConfigurationError, DatabaseUnreachable, DbinitError, NotReady
from dbinit.lint.classify import LOCK_ORDER, LockLevel, StatementFacts, classify_sql
from dbinit.sessions import session_name

if TYPE_CHECKING:
    import asyncpg
    from structlog.typing import FilteringBoundLogger

    from dbinit.hookspecs import PluginContext
    from dbinit.lint.sql import RevisionSQL
    from dbinit.logs import Redactor
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings
    from dbinit.urls import DatabaseURL

#: pg_locks' mode names, as the classification names the levels.
PG_LOCK_MODES: dict[str, LockLevel] = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}
#: How long a probe waits for its lock before it counts as blocked (its session's lock_timeout).
PROBE_LOCK_TIMEOUT_MS = 250
#: pg_dump's ``--lock-wait-timeout`` on the target: it takes ACCESS SHARE on each table it
#: dumps, and must not queue behind a long lock there.
DUMP_LOCK_WAIT = "10s"
#: The most pg_dump may take, in seconds.
DUMP_TIMEOUT = 600.0
#: How often a statement outside a transaction is sampled while it runs, in seconds.
SAMPLE_EVERY = 0.005
SCRATCH_PREFIX = "dbinit_measure_"
LOWER_BOUND = (
    "Durations are measured on a copy of the schema without rows: a lower bound of what the target "
    "will take."
)
CREATEDB_HINT = (
    "ALTER ROLE {role} CREATEDB (as a superuser or a role with CREATEROLE), or give --measure "
    "the URL of a role that may create databases on that server"
)

Verdict = Literal["confirmed", "stronger than claimed", "weaker than claimed", "not observed"]
#: When a statement's locks were read: after it with its transaction still open, while it ran
#: (outside a transaction), or not at all (it ended before a sample saw it).
ObservedWhen = Literal["after it, in its transaction", "while it ran", "not observed"]
#: What ended a lock: the transaction's COMMIT, or (outside a transaction) the statement's end.
HeldUntil = Literal["commit", "end of statement"]
ProbeOutcome = Literal["blocked", "not blocked", "failed"]

_KINDS = {"r": "table", "p": "partitioned table", "m": "materialized view", "v": "view", "i": "index",
          "I": "partitioned index", "S": "sequence", "t": "TOAST table", "f": "foreign table",
          "c": "composite type"}
_READABLE = ("r", "p", "m")
_WRITABLE = ("r", "p")
_RESTRICT = re.compile(r"^\\(un)?restrict [A-Za-z0-9]+$")


def strongest(modes: Iterable[LockLevel]) -> LockLevel | None:
    """The strongest of ``modes`` (None for none)."""
    found = [LOCK_ORDER.index(mode) for mode in modes]
    return LOCK_ORDER[max(found)] if found else None


def verdict(claimed: LockLevel | None, observed: LockLevel | None, *, seen: bool) -> Verdict:
    """The classification's claim checked against what the server showed.

    ``seen``: the statement's locks were read at all. A claimed lock with no new lock
    on its tables is "not observed" (an earlier statement of the transaction may hold it).
    """
    if not seen or (observed is None and claimed is not None):
        return "not observed"
    if observed == claimed:
        return "confirmed"
    if claimed is None or (observed is not None and LOCK_ORDER.index(observed) > LOCK_ORDER.index(claimed)):
        return "stronger than claimed"
    return "weaker than claimed"


# -- the report -----------------------------------------------------------------------------


def _rounded(document: dict[str, Any]) -> dict[str, object]:
    """Milliseconds to the microsecond, for JSON."""
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in document.items()}


@dataclasses.dataclass(frozen=True)
class Probe:
    """A concurrent session's try at one table, after (or while) a statement ran."""

    table: str
    access: Literal["read", "write"]
    sql: str
    outcome: ProbeOutcome
    #: Blocked: whether ``pg_blocking_pids`` named the migration's session while the probe waited.
    blocked_by_migration: bool | None
    waited_ms: float
    #: A probe that failed otherwise: PostgreSQL's message.
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return _rounded({**dataclasses.asdict(self), "blocked": self.outcome == "blocked"})

    def line(self) -> str:
        who = "reader" if self.access == "read" else "writer"
        if self.outcome == "failed":
            return f"{who} on {self.table}: could not probe ({self.error})"
        if self.outcome == "not blocked":
            return f"{who} on {self.table}: not blocked"
        by = "; pg_blocking_pids: the migration's session" if self.blocked_by_migration else ""
        return f"{who} on {self.table}: blocked (lock_timeout {PROBE_LOCK_TIMEOUT_MS} ms{by})"


@dataclasses.dataclass(frozen=True)
class LockSeen:
    """One relation lock in ``pg_locks`` for the migration's session."""

    relation: str
    kind: str
    mode: LockLevel
    granted: bool
    #: Made by the revision's open transaction: no other session could see it (nor wait for it).
    created: bool = False

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HeldLock:
    """A lock the revision held: where, which mode, which statement took it, for how long."""

    relation: str
    kind: str
    mode: LockLevel
    #: The statement that first took it (its position; None: the version table's bookkeeping).
    taken_by: int | None
    statement: str
    #: From the start of the statement that took it to the end of what released it, counting the
    #: migration's own time only (not the pauses in which dbinit looked and probed).
    held_ms: float
    until: HeldUntil
    created: bool = False

    def as_json(self) -> dict[str, object]:
        return _rounded(dataclasses.asdict(self))

    def line(self) -> str:
        new = " (created by this transaction)" if self.created else ""
        by = f"statement {self.taken_by}" if self.taken_by is not None else "the version-table bookkeeping"
        held = f"{self.held_ms:.1f} ms until {self.until}"
        return f"{self.mode} on {self.kind} {self.relation}{new}: from {by}, {held}"


@dataclasses.dataclass(frozen=True)
class MeasuredStatement:
    """One statement as it ran on the scratch copy, its claim and what the server showed."""

    #: As ``dbinit lint`` numbers it; None for the version table's bookkeeping (which runs too).
    position: int | None
    sql: str
    kind: str
    tables: tuple[str, ...]
    in_transaction: bool
    claimed_lock: LockLevel | None
    #: The strongest mode newly held on its tables (None: none seen).
    observed_lock: LockLevel | None
    verdict: Verdict
    observed: ObservedWhen
    duration_ms: float
    probes: tuple[Probe, ...] = ()
    #: The relation locks that appeared with it.
    locks: tuple[LockSeen, ...] = ()
    note: str = ""

    @classmethod
    def of(
        cls,
        facts: StatementFacts,
        position: int | None,
        *,
        observed_lock: LockLevel | None,
        verdict: Verdict,
        observed: ObservedWhen,
        duration_ms: float,
        probes: tuple[Probe, ...] = (),
        locks: tuple[LockSeen, ...] = (),
        note: str = "",
    ) -> MeasuredStatement:
        """``facts`` (the statement and its claim, as lint classified it) with what the server showed."""
        return cls(
            position=position,
            sql=facts.sql,
            kind=facts.kind,
            tables=facts.tables,
            in_transaction=facts.in_transaction,
            claimed_lock=facts.lock,
            observed_lock=observed_lock,
            verdict=verdict,
            observed=observed,
            duration_ms=duration_ms,
            probes=probes,
            locks=locks,
            note=note,
        )

    @property
    def bookkeeping(self) -> bool:
        return self.position is None

    def as_json(self) -> dict[str, object]:
        return _rounded({
            **dataclasses.asdict(self),
            "bookkeeping": self.bookkeeping,
            "tables": list(self.tables),
            "probes": [probe.as_json() for probe in self.probes],
            "locks": [lock.as_json() for lock in self.locks],
        })

    def lines(self) -> list[str]:
        first = " ".join(self.sql.split())
        if len(first) > 100:
            first = first[:97] + "..."
        label = f"{self.position:>3}." if self.position is not None else "  -"
        claim = self.claimed_lock or "no table lock"
        seen = self.observed_lock or "no new lock on its tables"
        where = "in a transaction" if self.in_transaction else "outside a transaction"
        lines = [
            f"  {label} {first}",
            f"       claimed {claim}, observed {seen}: {self.verdict}; {self.duration_ms:.1f} ms; {where}"
            + ("" if self.observed != "while it ran" else "; read while it ran"),
        ]
        lines.extend(f"       {probe.line()}" for probe in self.probes)
        if self.note:
            lines.append(f"       ({self.note})")
        return lines


@dataclasses.dataclass(frozen=True)
class MeasureFailure:
    """The statement that failed on the scratch copy, and PostgreSQL's message."""

    revision: str
    position: int | None
    sql: str
    message: str
    sqlstate: str

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MeasuredRevision:
    revision: str
    file: str | None
    statements: tuple[MeasuredStatement, ...]
    locks: tuple[HeldLock, ...]
    duration_ms: float
    failure: MeasureFailure | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "file": self.file,
            "duration_ms": round(self.duration_ms, 3),
            "statements": [statement.as_json() for statement in self.statements],
            "locks": [lock.as_json() for lock in self.locks],
            "failure": self.failure.as_json() if self.failure else None,
        }

    def lines(self) -> list[str]:
        lines = [f"{self.revision}  {self.file or ''}  ({self.duration_ms:.1f} ms)"]
        for statement in self.statements:
            lines.extend(statement.lines())
        if self.locks:
            lines.append("  locks held:")
            lines.extend(f"    {lock.line()}" for lock in self.locks)
        if self.failure is not None:
            where = f"statement {self.failure.position}" if self.failure.position else "a statement"
            lines.append(f"  FAILED at {where}: {self.failure.message} (SQLSTATE {self.failure.sqlstate})")
        return lines


@dataclasses.dataclass(frozen=True)
class MeasureReport:
    """What ``dbinit lint --measure`` found; ``exit_code`` 5 when a revision failed on the copy."""

    #: The target, as dbinit names a database (no password).
    target: str
    server_version: str
    #: The target's version rows when it was read (empty: no revision applied).
    current_revisions: tuple[str, ...]
    #: The scratch database (None: nothing was pending, none was made). Always dropped.
    scratch_database: str | None
    revisions: tuple[MeasuredRevision, ...]
    #: The pending revisions not measured because an earlier one failed.
    not_measured: tuple[str, ...] = ()

    @property
    def failure(self) -> MeasureFailure | None:
        return next((r.failure for r in self.revisions if r.failure is not None), None)

    @property
    def exit_code(self) -> int:
        from dbinit.errors import ExitCode

        return int(ExitCode.MIGRATION_FAILED if self.failure else ExitCode.OK)

    def as_json(self) -> dict[str, object]:
        failure = self.failure
        return {
            "ok": failure is None,
            "action": "measured" if failure is None else "failed",
            "target": self.target,
            "server_version": self.server_version,
            "current_revisions": list(self.current_revisions),
            "scratch_database": self.scratch_database,
            "scratch_dropped": True,
            "lower_bound": True,
            "note": LOWER_BOUND,
            "probe_lock_timeout_ms": PROBE_LOCK_TIMEOUT_MS,
            "revisions": [revision.as_json() for revision in self.revisions],
            "failure": failure.as_json() if failure else None,
            "not_measured": list(self.not_measured),
            "exit_code": self.exit_code,
        }

    def lines(self, service: str) -> list[str]:
        current = ", ".join(self.current_revisions) or "no revision (an empty version table)"
        if self.scratch_database is None:
            return [f"{service}: nothing pending on {self.target} (at {current}): nothing to measure"]
        lines = [
            f"{service}: {len(self.revisions)} revision(s) measured on {self.scratch_database}, a scratch "
            f"copy of {self.target}'s schema (PostgreSQL {self.server_version.split(' ')[0]}; "
            "dropped afterwards)",
            f"from {current}",
            LOWER_BOUND,
        ]
        for revision in self.revisions:
            lines.extend(revision.lines())
        if self.failure is not None:
            lines.append(
                f"measuring stopped: {self.failure.revision} failed on the scratch copy"
                + (f"; not measured: {', '.join(self.not_measured)}" if self.not_measured else "")
            )
        return lines


# -- settings ---------------------------------------------------------------------------------


def measure_settings(settings: Settings, given: str, redactor: Redactor) -> Settings:
    """The settings with ``DATABASE_URL`` = the target (``given``; empty: the DATABASE_URL setting).

    Checks it is a PostgreSQL URL a writable session can use, and adds its secrets to
    ``redactor`` before anything is printed.
    """
    from dbinit.urls import DatabaseURL

    if not given:
        target = settings
    else:
        url = DatabaseURL.parse(given, setting="--measure")
        redactor.add(url.password)
        target = settings.replace(database_url=given)
    url = target.url
    redactor.add(url.password)
    redactor.add(url.params.get("sslpassword"))
    if url.is_sqlite:
        raise ConfigurationError(
            "dbinit lint --measure needs a PostgreSQL database (it measures PostgreSQL's locks)",
            hint="Give --measure a postgresql:// URL (the target is only read)",
        )
    url.require_writable("dbinit lint --measure (it creates a scratch database)")
    return target


# -- the scratch database ------------------------------------------------------------------------


def _role(connection: asyncpg.Connection) -> str:
    return str(connection.get_settings().session_authorization or "the role")


async def _create_scratch(admin: asyncpg.Connection, name: str) -> None:
    import asyncpg

    encoding, collate, ctype = await admin.fetchrow(
        "SELECT pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"
    )
    try:
        await admin.execute(
            f"CREATE DATABASE {sql_identifier(name)} TEMPLATE template0 ENCODING {sql_literal(encoding)} "
            f"LC_COLLATE {sql_literal(collate)} LC_CTYPE {sql_literal(ctype)}"
        )
    except asyncpg.InsufficientPrivilegeError as exc:
        raise DatabaseUnreachable(
            f"cannot create the scratch database {name}: {exc}",
            hint=CREATEDB_HINT.format(role=_role(admin)),
        ) from None
    except asyncpg.PostgresError as exc:
        raise ConfigurationError(
            f"cannot create the scratch database {name}: {exc}",
            hint="dbinit lint --measure creates a database on the target's server (CREATE DATABASE "
            "... TEMPLATE template0 with the target's encoding and locale)",
        ) from None


async def _drop_scratch(target: DatabaseURL, name: str, application_name: str, timeout: float) -> None:
    """Drop the scratch database (its sessions ended first, PostgreSQL 13+: ``WITH (FORCE)``)."""
    import asyncpg

    from dbinit.database import connect_session

    drop = f"DROP DATABASE IF EXISTS {sql_identifier(name)}"
    try:
        admin = await connect_session(target, application_name, timeout)
        try:
            force = int(await admin.fetchval("SHOW server_version_num")) >= 130000
            await admin.execute(drop + (" WITH (FORCE)" if force else ""))
        finally:
            await admin.close(timeout=2)
    except (DbinitError, asyncpg.PostgresError) as exc:
        raise DatabaseUnreachable(
            f"could not drop the scratch database {name}: {getattr(exc, 'message', None) or exc}",
            hint=f"Drop it yourself on the target's server: {drop}",
        ) from None


def _service_file(url: DatabaseURL) -> str:
    """A libpq service file for pg_dump: the password stays out of its command line."""
    values: dict[str, str] = {"dbname": url.database}
    if url.hosts:
        values["host"] = ",".join(host for host, _ in url.hosts)
        values["port"] = ",".join(str(port or 5432) for _, port in url.hosts)
    if url.username is not None:
        values["user"] = url.username
    if url.password is not None:
        values["password"] = url.password
    values.update(url.params)
    if any("\n" in value or "\r" in value for value in values.values()):
        raise ConfigurationError(
            "--measure: a value of the URL holds a line break, which pg_dump cannot be given",
            hint="Percent-encode or remove the line break",
        )
    return "[dbinit_measure]\n" + "".join(f"{key}={value}\n" for key, value in values.items())


async def dump_schema(url: DatabaseURL) -> str:
    """The target's schema, as ``pg_dump --schema-only`` writes it (no owners, no grants)."""
    executable = shutil.which("pg_dump")
    if executable is None:
        raise ConfigurationError(
            "dbinit lint --measure copies the target's schema with pg_dump, which is not on PATH",
            hint="Install PostgreSQL's client programs, of the server's major version or newer "
            "(e.g. apt-get install postgresql-client), and put pg_dump on PATH",
        )
    with tempfile.TemporaryDirectory(prefix="dbinit-measure-") as folder:
        service = Path(folder) / "pg_service.conf"
        service.touch(mode=0o600)
        service.write_text(_service_file(url))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(PGSERVICEFILE=str(service), PGSERVICE="dbinit_measure", PGAPPNAME="dbinit-measure-dump")
        process = await asyncio.create_subprocess_exec(
            executable, "--schema-only", "--no-owner", "--no-privileges", "--no-publications",
            "--no-subscriptions", "--no-security-labels", f"--lock-wait-timeout={DUMP_LOCK_WAIT}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, env=env,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), DUMP_TIMEOUT)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
    if process.returncode != 0:
        message = " ".join(err.decode(errors="replace").split())
        if "version mismatch" in message:
            raise ConfigurationError(
                f"pg_dump cannot dump the target: {message}",
                hint="Put a pg_dump of the server's major version or newer on PATH",
            )
        if "connection to server" in message or "could not connect" in message:
            raise DatabaseUnreachable(f"pg_dump cannot connect to {url.display_name}: {message}",
                                      hint="Check the URL given to --measure")
        raise ConfigurationError(
            f"pg_dump --schema-only failed on {url.display_name}: {message}",
            hint="The role given to --measure must be able to read every table's definition (pg_dump "
            "takes ACCESS SHARE on each table)",
        )
    return out.decode()


def schema_script(dump: str) -> str:
    """``pg_dump``'s plain output without its psql-only ``\\restrict`` / ``\\unrestrict`` lines."""
    return "\n".join(line for line in dump.splitlines() if not _RESTRICT.match(line))


async def _load_schema(
    scratch: DatabaseURL, script: str, name: str, timeout: float, application: str
) -> None:
    import asyncpg

    from dbinit.database import connect_session

    loader = await connect_session(scratch, application, timeout)
    try:
        await loader.execute(script)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise DatabaseUnreachable(
            f"cannot load the target's schema into the scratch database {name}: {exc}",
            hint="The role needs the privileges the schema's objects need (e.g. an extension only a "
            "superuser may create)",
        ) from None
    except asyncpg.PostgresError as exc:
        raise ConfigurationError(
            f"cannot load the target's schema into the scratch database {name}: {exc}",
            hint="pg_dump's schema did not load on the same server; run `pg_dump --schema-only` "
            "and load it with psql to see the statement",
        ) from None
    finally:
        await loader.close(timeout=2)


# -- measuring ----------------------------------------------------------------------------------

_LOCKS = """SELECT l.relation::int8, n.nspname, c.relname, c.relkind::text, l.mode, l.granted
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = $1 AND l.locktype = 'relation'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND coalesce(n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%', true)"""
_BLOCKERS = "SELECT pg_catalog.pg_blocking_pids($1)"
_RESOLVE = """SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1)"""
_NAMES = """SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY($1::oid[])"""


@dataclasses.dataclass(frozen=True)
class _Relation:
    oid: int
    schema: str | None
    name: str | None
    relkind: str | None

    @property
    def label(self) -> str:
        if self.name is None:
            return f"(a new relation, oid {self.oid})"
        return f"{self.schema}.{self.name}"

    @property
    def quoted(self) -> str:
        return f"{sql_identifier(self.schema or '')}.{sql_identifier(self.name or '')}"

    @property
    def kind(self) -> str:
        return _KINDS.get(self.relkind or "", "relation")


LockKey = tuple[int, LockLevel]


@dataclasses.dataclass
class _Transaction:
    """A revision's open transaction on the scratch copy, as dbinit follows it."""

    handle: Any
    #: Which BEGIN ... COMMIT block of the rendered SQL (:attr:`StatementFacts.transaction`).
    block: int | None
    #: (oid, mode) -> the relation, and which statement (index in ``durations``) took it.
    taken: dict[LockKey, tuple[_Relation, int | None, str, int]] = dataclasses.field(default_factory=dict)
    durations: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    statement: MeasuredStatement
    locks: tuple[HeldLock, ...] = ()
    failure: MeasureFailure | None = None


def _is_bookkeeping(statement: StatementFacts, version_table: str) -> bool:
    """Alembic's version-table statements (left out of ``dbinit lint``'s numbering, run here too)."""
    tables = {table.lower().rsplit(".", 1)[-1] for table in statement.tables}
    return bool(tables) and tables <= {version_table.lower()}


def _quoted_name(table: str) -> str:
    return ".".join(sql_identifier(part) for part in table.split("."))


class _Measurer:
    """The sessions on the scratch database: the migration's, a monitor, a reader, a writer, a snapshot."""

    def __init__(
        self, sessions: dict[str, asyncpg.Connection], pids: dict[str, int], version_table: str
    ) -> None:
        self.migration = sessions["migration"]
        self.monitor = sessions["monitor"]
        self.reader = sessions["reader"]
        self.writer = sessions["writer"]
        self.snapshot = sessions["snapshot"]
        self.pids = pids
        self.version_table = version_table

    async def locks(self) -> dict[LockKey, tuple[_Relation, bool]]:
        rows = await self.monitor.fetch(_LOCKS, self.pids["migration"])
        return {
            (int(oid), PG_LOCK_MODES[mode]): (_Relation(int(oid), schema, name, kind), bool(granted))
            for oid, schema, name, kind, mode, granted in rows
            if mode in PG_LOCK_MODES
        }

    async def resolve(self, tables: Sequence[str]) -> list[_Relation]:
        """The statement's tables as other sessions see them (one made by the open transaction: absent)."""
        found: list[_Relation] = []
        for table in tables:
            row = await self.monitor.fetchrow(_RESOLVE, _quoted_name(table))
            if row is not None and all(r.oid != row[0] for r in found):
                found.append(_Relation(int(row[0]), row[1], row[2], row[3]))
        return found

    async def names(self, oids: Iterable[int]) -> dict[int, _Relation]:
        rows = await self.monitor.fetch(_NAMES, sorted(set(oids)))
        return {int(oid): _Relation(int(oid), schema, name, kind) for oid, schema, name, kind in rows}

    async def probe(self, relation: _Relation, access: Literal["read", "write"]) -> Probe:
        import asyncpg

        role = "reader" if access == "read" else "writer"
        connection = self.reader if access == "read" else self.writer
        sql = (
            f"SELECT 1 FROM {relation.quoted} LIMIT 0"
            if access == "read"
            else f"DELETE FROM {relation.quoted} WHERE false"
        )

        async def run() -> None:
            if access == "read":
                await connection.execute(sql)
                return
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(sql)
            finally:
                await transaction.rollback()

        started = time.perf_counter()
        task = asyncio.ensure_future(run())
        blocker_seen = False
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.01)
            if done:
                break
            blockers = await self.monitor.fetchval(_BLOCKERS, self.pids[role])
            blocker_seen = blocker_seen or self.pids["migration"] in (blockers or ())
        waited = (time.perf_counter() - started) * 1000
        try:
            task.result()
        except asyncpg.LockNotAvailableError:
            return Probe(relation.label, access, sql, "blocked", blocker_seen, waited)
        except asyncpg.PostgresError as exc:
            return Probe(relation.label, access, sql, "failed", None, waited, error=str(exc))
        return Probe(relation.label, access, sql, "not blocked", None, waited)

    async def probe_all(self, relations: Sequence[_Relation]) -> tuple[Probe, ...]:
        probes: list[Probe] = []
        for relation in relations:
            if relation.relkind in _READABLE:
                probes.append(await self.probe(relation, "read"))
            if relation.relkind in _WRITABLE:
                probes.append(await self.probe(relation, "write"))
        return tuple(probes)

    async def revision(self, rendered: RevisionSQL) -> MeasuredRevision:
        statements: list[MeasuredStatement] = []
        held: list[HeldLock] = []
        transaction: _Transaction | None = None
        position = 0
        started = time.perf_counter()
        paused = 0.0
        failure: MeasureFailure | None = None
        for facts in classify_sql(rendered.sql):
            bookkeeping = _is_bookkeeping(facts, self.version_table)
            if not bookkeeping:
                position += 1
            where = None if bookkeeping else position
            if facts.in_transaction:
                if transaction is not None and transaction.block != facts.transaction:
                    held.extend(await self.commit(transaction))  # COMMIT; BEGIN between: a new one
                    transaction = None
                if transaction is None:
                    handle = self.migration.transaction()
                    await handle.start()
                    transaction = _Transaction(handle, facts.transaction)
                outcome, pause = await self.in_transaction(transaction, facts, where, bookkeeping)
            else:
                if transaction is not None:
                    held.extend(await self.commit(transaction))
                    transaction = None
                outcome, pause = await self.autocommit(facts, where, bookkeeping)
            paused += pause
            statements.append(outcome.statement)
            held.extend(outcome.locks)
            if outcome.failure is not None:
                failure = dataclasses.replace(outcome.failure, revision=rendered.revision)
                if transaction is not None:
                    await transaction.handle.rollback()
                    transaction = None
                break
        if transaction is not None:
            held.extend(await self.commit(transaction))
        return MeasuredRevision(
            revision=rendered.revision,
            file=rendered.file,
            statements=tuple(statements),
            locks=tuple(held),
            duration_ms=(time.perf_counter() - started - paused) * 1000,
            failure=failure,
        )

    async def in_transaction(
        self, transaction: _Transaction, facts: StatementFacts, position: int | None, bookkeeping: bool
    ) -> tuple[_Outcome, float]:
        import asyncpg

        targets = await self.resolve(facts.tables)
        before = {key for key in transaction.taken}
        started = time.perf_counter()
        try:
            await self.migration.execute(facts.sql)
        except asyncpg.PostgresError as exc:
            duration = (time.perf_counter() - started) * 1000
            return self._failed(facts, position, exc, duration), 0.0
        duration = (time.perf_counter() - started) * 1000
        pause_started = time.perf_counter()
        index = len(transaction.durations)
        transaction.durations.append(duration)
        now = await self.locks()
        new = {key: value for key, value in now.items() if key not in before}
        for key, (relation, _) in new.items():
            transaction.taken[key] = (relation, position, facts.sql, index)
        probes = () if bookkeeping else await self.probe_all(targets)
        statement = self._statement(
            facts, position, targets, new, duration, probes, seen=True,
            observed="after it, in its transaction",
        )
        return _Outcome(statement), time.perf_counter() - pause_started

    async def commit(self, transaction: _Transaction) -> list[HeldLock]:
        started = time.perf_counter()
        await transaction.handle.commit()
        commit_ms = (time.perf_counter() - started) * 1000
        names = await self.names(oid for oid, _ in transaction.taken)
        held: list[HeldLock] = []
        for (oid, mode), (relation, position, sql, index) in transaction.taken.items():
            created = relation.name is None
            known = names.get(oid, relation)
            if known.schema == "pg_toast" or known.schema == "pg_catalog":
                continue  # a new column's TOAST table (made and locked with it), not a relation of its own
            held.append(
                HeldLock(
                    relation=known.label if known.name is not None else f"(oid {oid}, gone)",
                    kind=known.kind,
                    mode=mode,
                    taken_by=position,
                    statement=sql,
                    held_ms=sum(transaction.durations[index:]) + commit_ms,
                    until="commit",
                    created=created,
                )
            )
        return held

    async def autocommit(
        self, facts: StatementFacts, position: int | None, bookkeeping: bool
    ) -> tuple[_Outcome, float]:
        import asyncpg

        targets = await self.resolve(facts.tables)
        seen: dict[LockKey, tuple[_Relation, bool]] = {}
        probes: tuple[Probe, ...] = ()
        gated_at: float | None = None
        # a snapshot of dbinit's own: a statement that waits for older snapshots waits for it
        await self.snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await self.snapshot.fetchval("SELECT 1")
        started = time.perf_counter()
        task = asyncio.ensure_future(self.migration.execute(facts.sql))
        try:
            while not task.done():
                for key, value in (await self.locks()).items():
                    seen.setdefault(key, value)
                blockers = await self.monitor.fetchval(_BLOCKERS, self.pids["migration"])
                if self.pids["snapshot"] in (blockers or ()):
                    gated_at = time.perf_counter()
                    probes = () if bookkeeping else await self.probe_all(targets)
                    for key, value in (await self.locks()).items():
                        seen.setdefault(key, value)
                    break
                await asyncio.wait({task}, timeout=SAMPLE_EVERY)
        finally:
            await self.snapshot.execute("ROLLBACK")
            released_at = time.perf_counter()
        try:
            await task
        except asyncpg.PostgresError as exc:
            duration = (time.perf_counter() - started) * 1000
            return self._failed(facts, position, exc, duration), 0.0
        pause = released_at - gated_at if gated_at is not None else 0.0
        duration = (time.perf_counter() - started - pause) * 1000
        observed: ObservedWhen = "while it ran" if seen or gated_at is not None else "not observed"
        note = "" if gated_at is not None else (
            "it ended before dbinit could probe it (outside a transaction, no wait to hold it in)"
        )
        statement = self._statement(
            facts, position, targets, seen, duration, probes, seen=observed != "not observed",
            observed=observed, note=note,
        )
        names = await self.names(oid for oid, _ in seen)
        locks = tuple(
            HeldLock(
                relation=names.get(oid, relation).label,
                kind=names.get(oid, relation).kind,
                mode=mode,
                taken_by=position,
                statement=facts.sql,
                held_ms=duration,
                until="end of statement",
            )
            for (oid, mode), (relation, granted) in seen.items()
            if granted
        )
        return _Outcome(statement, locks), pause

    def _statement(
        self,
        facts: StatementFacts,
        position: int | None,
        targets: Sequence[_Relation],
        new: dict[LockKey, tuple[_Relation, bool]],
        duration: float,
        probes: tuple[Probe, ...],
        *,
        seen: bool,
        observed: ObservedWhen,
        note: str = "",
    ) -> MeasuredStatement:
        oids = {relation.oid for relation in targets}
        on_tables = strongest(mode for (oid, mode), (_, granted) in new.items() if oid in oids and granted)
        if not note and facts.tables and not targets:
            note = "its tables are new (made in this transaction) or absent: no other session could see them"
        return MeasuredStatement.of(
            facts,
            position,
            observed_lock=on_tables,
            verdict=verdict(facts.lock, on_tables, seen=seen),
            observed=observed,
            duration_ms=duration,
            probes=probes,
            locks=tuple(
                LockSeen(relation.label, relation.kind, mode, granted, created=relation.name is None)
                for (_, mode), (relation, granted) in new.items()
            ),
            note=note,
        )

    def _failed(
        self, facts: StatementFacts, position: int | None, exc: BaseException, duration: float
    ) -> _Outcome:
        statement = MeasuredStatement.of(
            facts,
            position,
            observed_lock=None,
            verdict="not observed",
            observed="not observed",
            duration_ms=duration,
            note="failed",
        )
        failure = MeasureFailure(
            revision="",
            position=position,
            sql=facts.sql,
            message=str(getattr(exc, "message", None) or exc),
            sqlstate=str(getattr(exc, "sqlstate", "") or ""),
        )
        return _Outcome(statement, failure=failure)


# -- the flow -------------------------------------------------------------------------------------


def _pending(scripts: MigrationScripts, versions: Sequence[str], from_revision: str | None) -> list[str]:
    from dbinit.lint.sql import revisions_to_lint

    if from_revision is not None:
        return revisions_to_lint(scripts, from_revision)
    unknown = [version for version in versions if version not in scripts.graph]
    if unknown:
        raise NotReady(
            f"the target is at {', '.join(unknown)}, which this project's migrations do not have",
            hint="Measure with the migrations of the release that wrote it, or name the starting "
            "revision with --from REV",
        )
    return scripts.graph.pending(versions)


async def _read_target(settings: Settings) -> tuple[tuple[str, ...], str, bool]:
    """The target's version rows, its server version, and whether it has the version table."""
    from dbinit.database import open_probe
    from dbinit.facts import probe_options

    probe = await open_probe(settings.url, probe_options(settings, "measure"))  # read-only session
    try:
        state = await probe.read_state(count_tables=False)
    finally:
        await probe.close()
    if state.invalid_versions:
        raise NotReady(
            f"the target's version table has rows dbinit cannot read: {state.invalid_versions!r}",
            hint="Fix the table with `alembic stamp --purge <rev>`",
        )
    return state.versions, state.server_version, state.version_table_exists


async def measure(
    settings: Settings,
    scripts: MigrationScripts,
    from_revision: str | None,
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
) -> MeasureReport:
    """Measure the pending revisions of ``settings.url`` (see :func:`measure_settings`) on a scratch copy.

    Raises :class:`DatabaseUnreachable` (the target, or no CREATEDB: exit 3),
    :class:`ConfigurationError` (pg_dump missing or failing, a revision that
    cannot be rendered: exit 2), :class:`NotReady` (the target is at a revision
    the project does not have: exit 4). A revision failing on the copy is in
    the report (its ``exit_code`` is 5).
    """
    from dbinit.database import connect_session
    from dbinit.lint.sql import render_revision
    from dbinit.logs import get_logger

    log = log or get_logger(settings.service)
    target = settings.url
    versions, server_version, has_version_table = await _read_target(settings)
    pending = _pending(scripts, versions, from_revision)
    rendered = [
        await asyncio.to_thread(render_revision, settings, scripts, revision, contexts, log)
        for revision in pending
    ]
    if not rendered:
        return MeasureReport(target.display_name, server_version, versions, None, ())
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    application = session_name("measure", settings.service)
    timeout = settings.connect_timeout
    admin = await connect_session(target, application, timeout)
    try:
        await _create_scratch(admin, name)
    finally:
        await admin.close(timeout=2)
    log.info("scratch database created", database=name, target=target.display_name)
    try:
        scratch = dataclasses.replace(target, database=name)
        await _load_schema(scratch, schema_script(await dump_schema(target)), name, timeout, application)
        rows = versions if has_version_table else ()
        measured = await _measure_on(scratch, settings, rendered, rows, timeout)
    finally:
        await _drop_scratch(target, name, application, timeout)
        log.info("scratch database dropped", database=name)
    done = {revision.revision for revision in measured}
    return MeasureReport(
        target=target.display_name,
        server_version=server_version,
        current_revisions=versions,
        scratch_database=name,
        revisions=tuple(measured),
        not_measured=tuple(r.revision for r in rendered if r.revision not in done),
    )


async def _measure_on(
    scratch: DatabaseURL,
    settings: Settings,
    rendered: Sequence[RevisionSQL],
    versions: Sequence[str],
    timeout: float,
) -> list[MeasuredRevision]:
    from dbinit.database import connect_session

    sessions: dict[str, asyncpg.Connection] = {}
    try:
        for role in ("migration", "monitor", "reader", "writer", "snapshot"):
            settings_for_role = {} if role == "migration" else {"lock_timeout": f"{PROBE_LOCK_TIMEOUT_MS}ms"}
            sessions[role] = await connect_session(
                scratch, session_name(f"measure-{role}", settings.service), timeout, **settings_for_role
            )
        pids = {
            role: int(await connection.fetchval("SELECT pg_catalog.pg_backend_pid()"))
            for role, connection in sessions.items()
        }
        if versions:
            table = sql_identifier(settings.version_table)
            if settings.version_schema:
                table = f"{sql_identifier(settings.version_schema)}.{table}"
            await sessions["migration"].executemany(
                f"INSERT INTO {table} (version_num) VALUES ($1)", [(v,) for v in versions]
            )
        measurer = _Measurer(sessions, pids, settings.version_table)
        measured: list[MeasuredRevision] = []
        for revision in rendered:
            measured.append(await measurer.revision(revision))
            if measured[-1].failure is not None:
                break
        return measured
    finally:
        for connection in sessions.values():
            if connection.is_in_transaction():
                connection.terminate()  # the scratch database is dropped next: nothing to finish
            else:
                await connection.close(timeout=2)
