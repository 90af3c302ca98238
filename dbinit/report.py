"""Typed results: what ``verify`` and ``migrate`` return.

Dictionaries only at the edges: :meth:`VerifyReport.as_dict` is the
DatabaseInitManager API's original dictionary; :meth:`VerifyReport.to_json` the full JSON document.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dbinit.checks import CheckOutcome, Status

VERIFIED_MESSAGE = "Database verified successfully - ready for service"
CHECKED_MESSAGE = "Checks passed (none of them reads the database: it was not verified)"


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification."""

    service: str
    database: str
    outcomes: tuple[CheckOutcome, ...]
    migration_count: int
    head_revisions: tuple[str, ...]
    current_revision: str | None
    table_count: int | None
    duration_ms: float
    migrations_source: str = "static"
    #: False when no selected check needs the database (``check --tag migrations``):
    #: nothing was read from it, so the report does not say it was verified.
    database_read: bool = True
    #: Which code the database still serves (dbinit.verdict); None when it was not read.
    verdict: str | None = None
    #: For a database ahead of the image: the oldest revision whose code works on it (from its history).
    compatible_since: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status is Status.FAILED)

    @property
    def action(self) -> str:
        if not self.ok:
            return "failed"
        return "verified" if self.database_read else "checked"

    @property
    def message(self) -> str:
        if self.ok:
            return VERIFIED_MESSAGE if self.database_read else CHECKED_MESSAGE
        first = self.failed[0]
        return f"{first.message} [{first.check.id}]"

    @property
    def hint(self) -> str:
        return "" if self.ok else self.failed[0].hint

    def as_dict(self) -> dict[str, object]:
        """The DatabaseInitManager API's original dictionary."""
        return {
            "action": self.action,
            "message": self.message,
            "current_revision": self.current_revision,
            "migration_count": self.migration_count,
            "table_count": self.table_count,
        }

    def to_json(self) -> dict[str, object]:
        """The full ``verify --format json`` document."""
        return {
            **self.as_dict(),
            "ok": self.ok,
            "service": self.service,
            "database": self.database,
            "hint": self.hint,
            "head_revisions": list(self.head_revisions),
            "migrations_source": self.migrations_source,
            "database_read": self.database_read,
            "verdict": self.verdict,
            "compatible_since": self.compatible_since,
            "duration_ms": round(self.duration_ms, 2),
            "checks": [o.as_dict() for o in self.outcomes],
        }


@dataclasses.dataclass(frozen=True)
class AfterMigrateStep:
    """The after-migrate step (``DBINIT_AFTER_MIGRATE``) that ran to success."""

    #: the command line, quoted as a shell would and redacted
    command: str
    duration_ms: float

    def to_json(self) -> dict[str, object]:
        return {"command": self.command, "ok": True, "duration_ms": round(self.duration_ms, 2)}


@dataclasses.dataclass(frozen=True)
class MigrateResult:
    """The outcome of ``migrate``."""

    service: str
    database: str
    strategy: str
    applied: tuple[str, ...]
    verification: VerifyReport
    duration_ms: float
    #: the after-migrate step, when one ran (None: none is set, or the database was ahead)
    after_migrate: AfterMigrateStep | None = None

    @property
    def action(self) -> str:
        return "migrations_applied" if self.applied else "up_to_date"

    @property
    def message(self) -> str:
        if self.applied:
            return "Pending migrations applied successfully"
        return "Database already at head - nothing to apply"

    def as_dict(self) -> dict[str, object]:
        """The DatabaseInitManager API's original dictionary."""
        return {"action": self.action, "message": self.message}

    def to_json(self) -> dict[str, object]:
        verification = self.verification.to_json()
        return {
            **self.as_dict(),
            "ok": self.verification.ok,
            "service": self.service,
            "database": self.database,
            "strategy": self.strategy,
            "applied": list(self.applied),
            "current_revision": self.verification.current_revision,
            "head_revisions": verification["head_revisions"],
            "migration_count": self.verification.migration_count,
            "table_count": self.verification.table_count,
            "duration_ms": round(self.duration_ms, 2),
            "checks": verification["checks"],
            "after_migrate": self.after_migrate.to_json() if self.after_migrate is not None else None,
        }


@dataclasses.dataclass(frozen=True)
class MigratePlan:
    """What ``migrate --plan`` shows: the revisions an upgrade would apply."""

    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: Sequence[str]
    #: the after-migrate step's command line (redacted), run after the upgrade and also
    #: when nothing is pending; None when DBINIT_AFTER_MIGRATE is not set
    after_migrate: str | None = None
