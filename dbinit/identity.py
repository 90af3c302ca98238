"""Which database a session is on, so that the migration lock and the migration are on the same one.

``migrate`` locks and verifies the database of ``DATABASE_URL``; Alembic
migrates whatever ``env.py`` connects to. A project's ``env.py`` that builds
its URL from the application's own settings (and ignores the
``sqlalchemy.url`` dbinit hands it) would migrate another database than the
one locked: the lock would protect nothing. So both sides are asked who they
are, on the server, and compared before the first revision runs
(:func:`dbinit.alembic_runner.environment_context`).

PostgreSQL: by server identity, not by host name (``localhost`` and
``127.0.0.1``, a multi-host URL, a proxy in front: the same server is the
same): the database's name and OID, the server's start time and port, and
the role the session acts as. Every value is readable by an unprivileged
role. SQLite: the main database file, resolved.

No SQLAlchemy here: dbinit's side is read with asyncpg on the lock's session.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

#: The identity columns, readable by any role. The start time is in
#: microseconds since the epoch (not text: that would depend on the session's
#: TimeZone and DateStyle); the port is the server's setting (a Unix-socket
#: session has no ``inet_server_port()``).
IDENTITY_COLUMNS = (
    "current_database() AS database, current_user AS role, "
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())::bigint "
    "AS database_oid, "
    "(extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::bigint AS started_us, "
    "current_setting('port')::int AS port"
)
IDENTITY_QUERY = f"SELECT {IDENTITY_COLUMNS}"


@dataclasses.dataclass(frozen=True)
class PostgresIdentity:
    """A PostgreSQL session's database, role and server, as the server says."""

    database: str
    user: str
    database_oid: int
    server_started_us: int
    port: int
    #: where the session was asked to connect (host(s):port/database), for messages
    display: str = dataclasses.field(default="", compare=False)

    def same_server(self, other: PostgresIdentity) -> bool:
        return (self.server_started_us, self.port) == (other.server_started_us, other.port)

    def same_database(self, other: PostgresIdentity) -> bool:
        return self.same_server(other) and self.database_oid == other.database_oid


@dataclasses.dataclass(frozen=True)
class SqliteIdentity:
    """A SQLite database: its main file, resolved ('' for an in-memory database)."""

    path: str

    @classmethod
    def of(cls, path: Path | str | None) -> SqliteIdentity:
        if path is None or str(path) in ("", ":memory:"):
            return cls("")
        return cls(str(Path(path).resolve()))

    def same_file(self, other: SqliteIdentity) -> bool:
        if not self.path or not other.path:
            return False  # an in-memory database is nobody else's
        if self.path == other.path:
            return True
        try:
            return os.path.samefile(self.path, other.path)
        except OSError:  # one of them does not exist: not the same file
            return False

    @property
    def display(self) -> str:
        return self.path or ":memory:"


@dataclasses.dataclass(frozen=True)
class OtherDatabase:
    """A database of another kind than dbinit's backends (e.g. MySQL): never the one dbinit locks."""

    dialect: str
    display: str


DatabaseIdentity = PostgresIdentity | SqliteIdentity | OtherDatabase


def _kind(identity: DatabaseIdentity, source: str = "") -> str:
    """``the PostgreSQL database 'orders' (host:port/orders)``; ``source`` names where it was set."""
    label = f"{source}: " if source else ""
    if isinstance(identity, PostgresIdentity):
        return f"the PostgreSQL database {identity.database!r} ({label}{identity.display})"
    if isinstance(identity, SqliteIdentity):
        return f"the SQLite file {identity.display}" + (f" ({source})" if source else "")
    return f"a {identity.dialect} database ({label}{identity.display})"


def difference(ours: DatabaseIdentity, theirs: DatabaseIdentity) -> tuple[str, str] | None:
    """None when env.py's session (``theirs``) is on dbinit's database (``ours``), else (message, hint)."""
    fix = (
        "Make env.py use config.get_main_option('sqlalchemy.url'), which dbinit sets from "
        "DATABASE_URL, or set DATABASE_URL to the database env.py migrates; nothing was migrated"
    )
    if isinstance(ours, PostgresIdentity) and isinstance(theirs, PostgresIdentity):
        if ours.same_database(theirs):
            if ours.user == theirs.user:
                return None
            return (
                f"env.py connects to the database dbinit locks ({ours.display}) as the role "
                f"{theirs.user[:63]!r}, but DATABASE_URL logs in as {ours.user[:63]!r}: the tables "
                f"env.py creates would be owned by {theirs.user[:63]!r}, not the role dbinit locks "
                "and verifies with",
                "Make env.py use config.get_main_option('sqlalchemy.url'), which dbinit sets from "
                f"DATABASE_URL, or set DATABASE_URL's user to {theirs.user[:63]!r}; nothing was migrated",
            )
        where = "" if ours.same_server(theirs) else " on another PostgreSQL server"
        return (
            f"env.py migrates {_kind(theirs)}{where}, but dbinit holds the migration lock on and "
            f"verifies {_kind(ours, 'DATABASE_URL')}: the lock would not protect the migration",
            fix,
        )
    if isinstance(ours, SqliteIdentity) and isinstance(theirs, SqliteIdentity) and ours.same_file(theirs):
        return None
    return (
        f"env.py migrates {_kind(theirs)}, but dbinit holds the migration lock on and verifies "
        f"{_kind(ours, 'DATABASE_URL')}: the lock would not protect the migration",
        fix,
    )
