"""Exit codes and the typed errors that carry them.

The core raises these; only the command layer turns them into a message and
an exit code. The codes are part of the public contract: a Kubernetes Job's
``podFailurePolicy`` tells a retryable failure from a final one by them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """Exit codes, identical for every command."""

    #: Success.
    OK = 0
    #: Internal error: a bug in dbinit or in a plugin. A traceback is printed.
    INTERNAL_ERROR = 1
    #: Usage or configuration error: bad flag, malformed URL, missing migrations.
    USAGE_ERROR = 2
    #: The database is unreachable: refused, timed out, authentication failed.
    DATABASE_UNREACHABLE = 3
    #: The database is not ready: a verification check failed.
    NOT_READY = 4
    #: A migration failed; the failing revision is named.
    MIGRATION_FAILED = 5
    #: The migration lock is not held: not acquired within the lock timeout, or
    #: lost while migrating (its session ended). Retryable.
    LOCK_TIMEOUT = 6
    #: Refused: a destructive operation is not allowed here.
    REFUSED = 7


#: What code that is not dbinit's (plugins, checks, strategies) may raise that is
#: caught at its boundary and reported with the plugin's name. ``SystemExit`` is
#: among them: a plugin calling ``sys.exit(0)`` must never end a command as a
#: success. (``KeyboardInterrupt`` is left to propagate: it is exit 130.)
FOREIGN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


class DbinitError(Exception):
    """Base of every error dbinit raises on purpose.

    ``hint`` says what to do about it; ``exit_code`` is what the command
    line exits with.
    """

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class ConfigurationError(DbinitError):
    """A setting, flag or file is wrong; retrying will not help."""

    exit_code = ExitCode.USAGE_ERROR


class PluginError(DbinitError):
    """A plugin could not be loaded or broke its contract.

    Loading and contract errors exit 2 (configuration); a plugin that raises
    while it runs exits 1 (a bug), with the plugin named either way.
    """

    exit_code = ExitCode.USAGE_ERROR

    def __init__(
        self, plugin: str, message: str, *, hint: str = "", internal: bool = False
    ) -> None:
        super().__init__(f"plugin {plugin!r}: {message}", hint=hint)
        self.plugin = plugin
        if internal:
            self.exit_code = ExitCode.INTERNAL_ERROR


class DatabaseUnreachable(DbinitError):
    """The database could not be reached (refused, DNS, timeout, authentication)."""

    exit_code = ExitCode.DATABASE_UNREACHABLE


class NotReady(DbinitError):
    """Verification failed: the database is not ready for this service."""

    exit_code = ExitCode.NOT_READY


class MigrationFailed(DbinitError):
    """A migration failed; ``revision`` names the one that failed, if known."""

    exit_code = ExitCode.MIGRATION_FAILED

    def __init__(self, message: str, *, revision: str | None = None, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.revision = revision


class AfterMigrateFailed(MigrationFailed):
    """The after-migrate step (``DBINIT_AFTER_MIGRATE``) failed; the migrations stay applied.

    Exit code 5, as a failed migration: the Job retries it (``backoffLimit``),
    and the retry finds the database up to date and runs the step again,
    which is why the step must be idempotent.
    """


class LockTimeout(DbinitError):
    """Another process held the migration lock for longer than the lock timeout."""

    exit_code = ExitCode.LOCK_TIMEOUT


class LockLost(DbinitError):
    """The migration lock's session ended while this job migrated; it stopped without committing.

    Exit code 6, as :class:`LockTimeout`, not 5 (:class:`MigrationFailed`):
    the revision did not fail, this job stopped holding the lock, and what
    runs next must be decided by whoever holds it. Like a lock timeout it is
    retryable as it stands (nothing to fix in the migrations, nothing
    half-committed), so a Job's ``podFailurePolicy`` and the people reading
    its status treat both "lock not held" outcomes alike, while 5 keeps
    meaning "a revision is broken: fix it".

    ``detail`` says how the loss showed (connection closed, no answer, lock
    no longer listed); ``stopped`` what was stopped (``revision``, when
    known, is the one rolled back); ``applied`` the revisions this run
    committed before, which stay applied.
    """

    exit_code = ExitCode.LOCK_TIMEOUT
    HINT = (
        "Run the migration job again: the rolled-back revision left nothing committed. If a "
        "proxy or load balancer cuts the job's connections, connect the job to PostgreSQL "
        "directly or exempt it; behind a pooler use session pooling (a transaction-pooled "
        "connection cannot hold the lock)."
    )

    def __init__(
        self,
        detail: str,
        *,
        stopped: str,
        revision: str | None = None,
        applied: Sequence[str] = (),
        hint: str = "",
        remains: str = "",
    ) -> None:
        what = f"migration {revision} rolled back" if revision is not None else stopped
        if remains:
            what += f"; part of it remains: {remains}"
        earlier = (
            f"earlier revisions of this run stay applied: {', '.join(applied)}"
            if applied
            else "no revision of this run was applied"
        )
        super().__init__(
            "the migration lock's session ended (terminated by the server, an idle timeout "
            f"or a cut connection; {detail}): {what}; {earlier}",
            hint=hint or self.HINT,
        )
        self.revision = revision
        self.applied = tuple(applied)


class Refused(DbinitError):
    """A destructive operation was asked for where it is not allowed."""

    exit_code = ExitCode.REFUSED


class Interrupted(DbinitError):
    """Stopped by SIGTERM or SIGINT; exits 128 + the signal number (143, 130)."""

    def __init__(self, signum: int, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.signum = signum
        self.exit_code = 128 + signum  # type: ignore[assignment]


_CONNECT_FAILURES = (
    "InvalidPasswordError", "InvalidAuthorizationSpecificationError", "InvalidCatalogNameError",
    "CannotConnectNowError", "TooManyConnectionsError", "ConnectionDoesNotExistError",
)


def is_connection_failure(exc: BaseException) -> bool:
    """Whether the chain of ``exc`` holds a failure to reach the database (any driver)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError)) or type(current).__name__ in _CONNECT_FAILURES:
            return True
        if type(current).__module__.startswith("psycopg") and type(current).__name__ == "OperationalError":
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False
