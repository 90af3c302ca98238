"""Exit codes and the typed errors that carry them.

The core raises these; only the command layer turns them into a message and
an exit code. The codes are part of the public contract: a Kubernetes Job's
``podFailurePolicy`` tells a retryable failure from a final one by them.
"""

from __future__ import annotations

import enum


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
    #: The migration lock was not acquired within the lock timeout.
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


class LockTimeout(DbinitError):
    """Another process held the migration lock for longer than the lock timeout."""

    exit_code = ExitCode.LOCK_TIMEOUT


class Refused(DbinitError):
    """A destructive operation was asked for where it is not allowed."""

    exit_code = ExitCode.REFUSED


class Interrupted(DbinitError):
    """Stopped by SIGTERM or SIGINT; exits 128 + the signal number (143, 130)."""

    def __init__(self, signum: int, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.signum = signum
        self.exit_code = 128 + signum  # type: ignore[assignment]
