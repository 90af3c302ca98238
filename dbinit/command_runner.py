"""The ``command`` strategy's machinery: a project's own migrator, run under dbinit's rules.

Many services migrate their own way (``flask db upgrade``, ``airflow db
migrate``, ``superset db upgrade``, a script of the project's). With
``DBINIT_STRATEGY=command`` (or ``--strategy command``) ``dbinit migrate``
runs ``DBINIT_MIGRATE_COMMAND`` as a child process, while it holds the
migration lock, and keeps its contract:

- The command line is split like a shell does (:func:`shlex.split`) and
  run without one. A command that is not found or not executable is exit 2,
  before the lock is taken (and again, if it vanished, before anything ran).
- The child inherits dbinit's environment, with ``DATABASE_URL`` set to the
  URL dbinit locks and verifies, and, for PostgreSQL, libpq's own variables:
  ``PGAPPNAME`` (the run's session tag, so that a stop can cancel the
  child's running statement on the server, as for the ``upgrade``
  strategy) and ``PGOPTIONS`` (``DBINIT_STATEMENT_TIMEOUT`` and
  ``DBINIT_DDL_LOCK_TIMEOUT`` as ``statement_timeout`` / ``lock_timeout``,
  and keepalives so that the server ends a killed child's session).
  Drivers built on libpq honour both (psycopg 3, psycopg2, ``psql``);
  asyncpg honours neither, and a URL's own ``application_name`` or
  ``options`` wins over them (libpq's rule). The command must migrate that
  same database: the version table is read before and after, and the final
  verification fails a command that migrated another one.
- Its stdout and stderr are logged line by line as they come (event
  ``Migration command output``), redacted: the URL's password never appears.
- Nothing pending (the version table at the image's head, e.g. another job
  migrated while this one waited for the lock): the command is not run.
- Exit 0: success; the applied revisions are the version rows' difference,
  in graph order. A non-zero exit (or death by a signal dbinit did not
  send) is exit 5, naming the command, the revision that was next, and the
  tail of its output.
- SIGTERM/SIGINT to dbinit: the same signal goes to the child's process
  group (it runs in a session of its own), its running statement is
  cancelled on the server (``PGAPPNAME``), and after
  ``DBINIT_MIGRATE_COMMAND_GRACE`` seconds the group is killed; then the
  child's leftover sessions are terminated, the lock is released, and dbinit
  exits 143/130. A lost migration lock kills the child at once (no grace: it
  must not commit after the loss) and exits 6. On Linux the child is also
  killed if dbinit itself dies (``PR_SET_PDEATHSIG``).

What only the ``upgrade`` strategy can do: confirm the lock before each
revision commits. A child's commits are its own; a lost lock is noticed
within the lock's heartbeat (:data:`dbinit.lock.HEARTBEAT_SECONDS`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from dbinit.errors import ConfigurationError, DbinitError, MigrationFailed
from dbinit.interrupts import RunControl
from dbinit.logs import Redactor

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.history import Outcome
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings
    from dbinit.strategies import StrategyContext

SETTING = "DBINIT_MIGRATE_COMMAND"
#: Lines of the command's output kept for the error message of a failure.
TAIL_LINES = 15
#: A line of output longer than this is cut (in the log and in the tail).
MAX_LINE = 2000
#: How often the supervisor looks at the child and the stop request.
POLL_SECONDS = 0.05
#: How long, after the child exited, its output may take to reach its end.
OUTPUT_DRAIN_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Child:
    """Which child process this is: the setting naming it and the noun its messages use.

    The ``command`` strategy's migrator and the after-migrate step
    (:mod:`dbinit.after_migrate`) share this module's machinery; only their
    names differ.
    """

    setting: str
    noun: str

    @property
    def title(self) -> str:
        return self.noun[:1].upper() + self.noun[1:]

    @property
    def output_event(self) -> str:
        """The log event of each line of its output."""
        return f"{self.title} output"


MIGRATOR = Child(SETTING, "migration command")


# -- the command line -----------------------------------------------------------------


def command_line(settings: Settings) -> list[str]:
    """``DBINIT_MIGRATE_COMMAND`` split into words; :class:`ConfigurationError` if unusable."""
    text = settings.migrate_command
    if text is None or not text.strip():
        raise ConfigurationError(
            f"the 'command' strategy needs {SETTING}: the command line that migrates this database",
            hint=f'Set e.g. {SETTING}="flask --app app db upgrade" (split like a shell does, run '
            "without one)",
        )
    return split_words(text, SETTING)


def split_words(text: str, setting: str) -> list[str]:
    """A command line split like a POSIX shell does (never run by one); exit 2 if it cannot be."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigurationError(
            f"{setting} cannot be split into words: {exc}",
            hint="Quote as in a POSIX shell; it is split with shlex, never run by a shell",
        ) from None
    if not argv:
        raise ConfigurationError(f"{setting} holds no command", hint=f"Set {setting} to a command line, "
                                 "or unset it")
    return argv


def shown(argv: Sequence[str], redactor: Redactor) -> str:
    """The command line for a message: quoted as a shell would, redacted, capped."""
    text = redactor.text(shlex.join(argv))
    return text if len(text) <= 300 else text[:300] + "…"


def resolve(argv: Sequence[str], path: str | None, redactor: Redactor, child: Child = MIGRATOR) -> str:
    """The executable ``argv[0]`` names (looked up on ``path`` without a slash in it).

    Raises :class:`ConfigurationError` (exit 2: nothing ran) if it is not
    found, not a file, or not executable.
    """
    name = argv[0]
    what = f"{child.setting}: the command {redactor.text(name)!r}"
    if os.sep in name or (os.altsep and os.altsep in name):
        candidate = Path(name)
        if not candidate.exists():
            raise ConfigurationError(
                f"{what} does not exist",
                hint=f"Fix the path, or install it in the job's image (working directory {os.getcwd()!r})",
            )
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            raise ConfigurationError(
                f"{what} is not an executable file",
                hint=f"chmod +x it, or name its interpreter first (e.g. python {redactor.text(name)})",
            )
        return name
    found = shutil.which(name, path=path)
    if found is not None:
        return found
    present = [
        folder for folder in (path or "").split(os.pathsep) if folder and (Path(folder) / name).is_file()
    ]
    if present:
        raise ConfigurationError(
            f"{what} is on PATH ({present[0]}) but not executable",
            hint="chmod +x it, or name its interpreter first",
        )
    raise ConfigurationError(
        f"{what} is not found on PATH",
        hint="Install it in the migration job's image, or name it by its path",
    )


def check_command(settings: Settings) -> None:
    """The strategy's ``check``: the command line splits and names an executable (before the lock)."""
    redactor = redactor_for(settings)
    resolve(command_line(settings), os.environ.get("PATH", os.defpath), redactor)


# -- the child's environment ---------------------------------------------------------------


def child_environment(settings: Settings, control: RunControl, server_version: str) -> dict[str, str]:
    """dbinit's environment, with ``DATABASE_URL`` and (PostgreSQL) ``PGAPPNAME``, ``PGOPTIONS``.

    ``PGOPTIONS`` keeps what the environment had, dbinit's settings after it
    (PostgreSQL applies the last of repeated ``-c`` settings).
    """
    env = dict(os.environ)
    env["DATABASE_URL"] = settings.database_url  # what dbinit locks and verifies, however it got it
    if settings.url.is_sqlite:
        return env
    env["PGAPPNAME"] = control.session_tag
    options = [
        "-c tcp_keepalives_idle=30",
        "-c tcp_keepalives_interval=10",
        "-c tcp_keepalives_count=3",
    ]
    if _major(server_version) >= 14:
        options.append("-c client_connection_check_interval=5s")
    if settings.statement_timeout:
        options.append(f"-c statement_timeout={_milliseconds(settings.statement_timeout)}ms")
    if settings.ddl_lock_timeout:
        options.append(f"-c lock_timeout={_milliseconds(settings.ddl_lock_timeout)}ms")
    env["PGOPTIONS"] = " ".join(filter(None, [env.get("PGOPTIONS", "").strip(), *options]))
    return env


def _major(server_version: str) -> int:
    digits = server_version.split(".")[0].split()[0] if server_version.strip() else "0"
    return int(digits) if digits.isdigit() else 0


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def redactor_for(settings: Settings) -> Redactor:
    url = settings.url
    return Redactor([url.password, url.params.get("sslpassword")] if not url.is_sqlite else [])


# -- the child process ------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` making the kernel SIGKILL the child when dbinit dies.

    (``PR_SET_PDEATHSIG``; fires when the thread that started the child ends:
    that thread waits for the child, so only dbinit's death fires it.)
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # dbinit died before the line above
            os._exit(1)

    return preexec


def spawn(
    executable: str, argv: Sequence[str], env: dict[str, str], redactor: Redactor, child: Child = MIGRATOR
) -> subprocess.Popen[bytes]:
    """Start the child in a session (and process group) of its own, its output on pipes."""
    try:
        return subprocess.Popen(
            list(argv),
            executable=executable,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # prctl only: takes no lock a forked thread may hold
        )
    except (OSError, ValueError) as exc:  # not found, not executable, a bad #! line, a NUL...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"{child.setting}: the command {redactor.text(argv[0])!r} cannot be started: {reason}",
            hint="Nothing ran. Check the command and, for a script, its #! line",
        ) from None


@dataclasses.dataclass
class Output:
    """The child's stdout and stderr, logged line by line as they come; the last lines kept."""

    log: FilteringBoundLogger
    redactor: Redactor
    event: str = MIGRATOR.output_event
    tail: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    _threads: list[threading.Thread] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def follow(self, stream: IO[bytes] | None, name: str) -> None:
        if stream is None:
            return
        thread = threading.Thread(target=self._read, args=(stream, name), name=f"dbinit-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read(self, stream: IO[bytes], name: str) -> None:
        with stream:
            for raw in iter(lambda: stream.readline(MAX_LINE), b""):
                line = self.redactor.text(raw.decode("utf-8", "replace").rstrip("\r\n"))
                with self._lock:
                    self.tail.append(line)
                self.log.info(self.event, stream=name, line=line)

    def drain(self, within: float) -> bool:
        """Wait for both streams to end; False if one is still open (a process outlives the child)."""
        deadline = time.monotonic() + within
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def last_lines(self) -> list[str]:
        with self._lock:
            return list(self.tail)


@dataclasses.dataclass
class Ending:
    """How the child ended: its exit status, and what dbinit did to it."""

    returncode: int
    signalled: int | None = None  # the signal forwarded to it, if any
    killed: str = ""  # why dbinit SIGKILLed it, if it did

    def describe(self) -> str:
        if self.killed:
            return self.killed
        if self.signalled is not None and self.returncode == -self.signalled:
            return f"ended on the {_signal_name(self.signalled)} forwarded to it"
        how = (
            f"was killed by {_signal_name(-self.returncode)}"
            if self.returncode < 0
            else f"exited with code {self.returncode}"
        )
        if self.signalled is not None:
            return f"{how} after the {_signal_name(self.signalled)} forwarded to it"
        return how


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child exited; where ``waitid`` exists, without reaping it (so that its
    process group id cannot be reused before what is left of the group is killed)."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return process.poll() is not None  # macOS: no waitid


def _signal_group(pgid: int, signum: int, log: FilteringBoundLogger, child: Child = MIGRATOR) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # nothing of the group is left: nothing to signal
    except PermissionError as exc:  # a member changed its user: say so, do not hide it
        log.warning(f"Cannot signal the {child.noun}'s process group", signal=_signal_name(signum),
                    reason=str(exc))


def supervise(
    process: subprocess.Popen[bytes],
    control: RunControl,
    grace: float,
    log: FilteringBoundLogger,
    child: Child = MIGRATOR,
) -> Ending:
    """Wait for the child; on a stop request forward the signal, then SIGKILL after ``grace``.

    A lost lock is SIGKILL at once. When the child has exited, what is left
    of its process group is killed (nothing of the migrator may outlive the
    lock), then the child is reaped.
    """
    pgid = process.pid  # start_new_session: the child leads its own group
    ending = Ending(returncode=0)
    signalled_at: float | None = None
    while not _exited(process):
        if control.lost is not None and not ending.killed:
            _signal_group(pgid, signal.SIGKILL, log, child)
            ending.killed = "was killed at once: the migration lock was lost"
            log.warning(f"Migration lock lost: {child.noun} killed", reason=control.lost)
        elif control.stopping and ending.signalled is None and not ending.killed:
            ending.signalled = control.signum or signal.SIGTERM
            signalled_at = time.monotonic()
            _signal_group(pgid, ending.signalled, log, child)
            log.warning(f"Stop requested: signal forwarded to the {child.noun}",
                        signal=_signal_name(ending.signalled), grace_s=grace)
        elif signalled_at is not None and not ending.killed and time.monotonic() - signalled_at >= grace:
            _signal_group(pgid, signal.SIGKILL, log, child)
            ending.killed = (
                f"was killed: still running {grace:g}s after the {_signal_name(ending.signalled or 15)} "
                "forwarded to it (DBINIT_MIGRATE_COMMAND_GRACE)"
            )
            log.warning(f"{child.title} did not stop within the grace period: killed", grace_s=grace)
        if control.stopping:
            time.sleep(POLL_SECONDS)
        else:
            control.stop.wait(POLL_SECONDS)
    _signal_group(pgid, signal.SIGKILL, log, child)  # leftovers of the group; the zombie child is not hurt
    ending.returncode = process.wait()
    return ending


# -- the run -------------------------------------------------------------------------------


def applied_between(scripts: MigrationScripts, before: Sequence[str], after: Sequence[str]) -> list[str]:
    """The revisions between two states of the version table, in an order ``upgrade`` applies them."""
    graph = scripts.graph
    reached = graph.ancestors(after)
    return [rev for rev in graph.pending(before) if rev in reached]


def _versions_now(settings: Settings) -> tuple[str, ...]:
    from dbinit.facts import read_state

    return asyncio.run(read_state(settings, "migrate")).versions


def run_command(context: StrategyContext, argv: Sequence[str] | None = None) -> list[str]:
    """Run the project's migrator under the lock held by ``migrate``; the applied revisions.

    In the migration thread (a strategy's ``run``). See the module docstring.
    """
    settings, scripts, log = context.settings, context.scripts, context.log
    control = context.control or RunControl()
    redactor = redactor_for(settings)
    words = list(argv) if argv is not None else command_line(settings)
    env = child_environment(settings, control, context.state.server_version)
    executable = resolve(words, env.get("PATH", os.defpath), redactor)
    command = shown(words, redactor)
    before = context.state.versions
    pending = scripts.graph.pending(before)
    if not pending:
        # another job migrated while this one waited for the lock: the command runs once
        log.info("Nothing pending: the migration command is not run", command=command)
        return []
    history = CommandHistory(settings, scripts, log)  # a revision's bad phase declaration: exit 2 now
    control.confirm_lock("stopped before the migration command started")
    started = time.monotonic()
    process = spawn(executable, words, env, redactor)
    log.info("Migration command started", command=command, pid=process.pid, pending=len(pending),
             session=control.session_tag if not settings.url.is_sqlite else None)
    output = Output(log, redactor)
    output.follow(process.stdout, "stdout")
    output.follow(process.stderr, "stderr")
    ending = supervise(process, control, settings.migrate_command_grace, log)
    if not output.drain(OUTPUT_DRAIN_SECONDS):
        log.warning("The migration command's output is still open: a process it started outlives it")
    seconds = round(time.monotonic() - started, 2)
    after: tuple[str, ...] | None = None
    if ending.returncode == 0 and control.lost is None:
        after = _versions_now(settings)
        # a stop that came too late to cut the command short: it finished, the run succeeded
        if not control.stopping or not scripts.graph.pending(after):
            applied = _succeeded(settings, scripts, log, command, before, after, pending, seconds)
            history.record(applied)
            return applied
    end_leftover_sessions(settings, control, log)
    unread = ""
    if after is None:
        after, unread = _versions_after_failure(settings)
    applied = applied_between(scripts, before, after) if after is not None else []
    left = scripts.graph.pending(after) if after is not None else []
    if control.stopping:
        what = f"migration command {command} stopped: it {ending.describe()}" + _state(scripts, after, unread)
        stopped = control.stop_error(what, applied=applied)
        history.record(applied, left[0] if left else None, "interrupted", stopped.message)
        raise stopped
    failed = _failed(command, ending, output.last_lines(), scripts, after, unread, applied, settings)
    history.record(applied, failed.revision, "failed", failed.message)
    raise failed


class CommandHistory:
    """The history rows of a ``command`` strategy run (:mod:`dbinit.history`), written after it.

    The project's migrator commits in its own transactions, where dbinit
    cannot write: once it ended, one ``applied`` row per revision the version
    table gained (``started_at`` the command's start, ``duration_ms``
    :data:`~dbinit.history.DURATION_UNKNOWN`: one process applied them all), and
    for a failure or a stop, a ``failed`` / ``interrupted`` row for the
    revision that was next. A history that cannot be written is a warning.
    """

    def __init__(self, settings: Settings, scripts: MigrationScripts, log: FilteringBoundLogger) -> None:
        from dbinit.history import now, phases_of

        self.settings = settings
        self.scripts = scripts
        self.log = log
        self.phases = phases_of(scripts)
        self.started_at = now()

    def record(
        self, applied: Sequence[str], cut: str | None = None, outcome: Outcome = "failed", error: str = ""
    ) -> None:
        from dbinit.history import (
            DURATION_UNKNOWN,
            HistoryUnavailable,
            one_line_error,
            record_now,
            row_for,
        )

        settings, scripts, phases = self.settings, self.scripts, self.phases
        rows = [
            row_for(settings, scripts, phases, rev, "applied", self.started_at, DURATION_UNKNOWN)
            for rev in applied
        ]
        if cut is not None:
            said = one_line_error(error, redactor_for(settings))
            unknown = DURATION_UNKNOWN
            rows.append(row_for(settings, scripts, phases, cut, outcome, self.started_at, unknown, said))
        try:
            record_now(settings, rows)
        except HistoryUnavailable as exc:
            self.log.warning("Cannot record the migration command's revisions in the history",
                             revisions=[row.revision for row in rows], reason=str(exc))


def _succeeded(
    settings: Settings,
    scripts: MigrationScripts,
    log: FilteringBoundLogger,
    command: str,
    before: Sequence[str],
    after: Sequence[str],
    pending: Sequence[str],
    seconds: float,
) -> list[str]:
    """Exit 0: the applied revisions, unless the version table says the command migrated nothing."""
    applied = applied_between(scripts, before, after)
    if pending and set(after) == set(before):
        raise MigrationFailed(
            f"migration command {command} exited with code 0, but the version table of "
            f"{settings.url.display_name} did not change ({len(pending)} migration(s) pending, "
            f"next {pending[0]}): it migrated another database, or nothing",
            revision=pending[0],
            hint="The command must migrate the database dbinit locks and verifies: dbinit passes it "
            "as DATABASE_URL; make the command read it (or give both the same URL)",
        )
    log.info("Migration command finished", command=command, applied=applied, duration_s=seconds)
    return applied


def _versions_after_failure(settings: Settings) -> tuple[tuple[str, ...] | None, str]:
    """The version rows after a failed or stopped command, or why they could not be read.

    Read only to make the failure's message exact: a failure to read them is
    said in the message, and does not replace the command's failure.
    """
    try:
        return _versions_now(settings), ""
    except DbinitError as exc:
        return None, exc.message


def _state(scripts: MigrationScripts, after: Sequence[str] | None, unread: str) -> str:
    if after is None:
        return f"; the version table could not be read afterwards ({unread})"
    left = scripts.graph.pending(after)
    at = f"is at {', '.join(after)}" if after else "holds no revision"
    if not left:
        return f"; the version table {at} (head)"
    return f"; the version table {at}, next pending: {left[0]}"


def _failed(
    command: str,
    ending: Ending,
    tail: list[str],
    scripts: MigrationScripts,
    after: Sequence[str] | None,
    unread: str,
    applied: list[str],
    settings: Settings,
) -> MigrationFailed:
    """Exit 5: the command failed. Names it, what it committed, what was next, and its last lines."""
    left = scripts.graph.pending(after) if after is not None else []
    next_revision = left[0] if left else None
    found = scripts.graph.revisions.get(next_revision) if next_revision else None
    where = f" ({found.path.name})" if found is not None and found.path is not None else ""
    message = f"migration command {command} {ending.describe()}" + _state(scripts, after, unread)
    if applied:
        message += f"; it applied {', '.join(applied)} first (they stay applied)"
    if next_revision is not None:
        message += f"; the migration that was next: {next_revision}{where}"
    if tail:
        message += f"\nIts last {len(tail)} line(s) of output:\n" + "\n".join(f"  | {line}" for line in tail)
    from dbinit.alembic_runner import invalid_indexes

    hint = "The whole output is in the log (event 'Migration command output'). Fix it and run the job again"
    invalid = invalid_indexes(settings)
    if invalid:
        hint += f"; INVALID indexes left behind: {', '.join(invalid)} (DROP INDEX CONCURRENTLY them)"
    return MigrationFailed(message, revision=next_revision, hint=hint)


def end_leftover_sessions(
    settings: Settings, control: RunControl, log: FilteringBoundLogger, child: Child = MIGRATOR
) -> None:
    """Terminate what is left of the child's sessions on the server (found by ``PGAPPNAME``).

    The child is gone: a session still carrying its tag is an orphan (its
    client was killed, the server has not noticed yet), maybe inside a
    statement and holding the migration's locks. Best effort, and said so:
    a session that cannot be ended now rolls back when the server notices.
    """
    if settings.url.is_sqlite:
        return
    import asyncpg

    from dbinit.lock import end_sessions

    try:
        ended = asyncio.run(end_sessions(settings, control.session_tag))
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning(f"Cannot end the {child.noun}'s leftover sessions",
                    reason=f"{type(exc).__name__}: {exc}")
        return
    if ended:
        log.warning(f"Ended the {child.noun}'s leftover database sessions", sessions=ended)

