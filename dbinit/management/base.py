"""The base of every management command, in Django's shape.

A command is ``class Command(BaseCommand)`` with ``help``,
``add_arguments(parser)`` and ``handle(**options)``. ``handle`` returns an
exit code (or None for 0) and raises :class:`CommandError` or another
:class:`dbinit.errors.DbinitError` on purpose; :meth:`run_from_argv` turns
those into a message and the contract's exit code, and anything else into a
traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from dbinit.errors import FOREIGN_FAILURES, ConfigurationError, DbinitError, ExitCode
from dbinit.logs import STDLIB_LOGGER, Redactor, log_output, make_logger

if TYPE_CHECKING:
    from dbinit.interrupts import RunControl

T = TypeVar("T")


class CommandError(DbinitError):
    """The one error a command raises on purpose (Django's name)."""

    def __init__(
        self, message: str, *, returncode: int = ExitCode.USAGE_ERROR, hint: str = ""
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = ExitCode(returncode)


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of exiting (exit code 2 either way)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandError(f"{self.prog}: {message}", hint=f"See `{self.prog} --help`")


class OutputWrapper:
    """A stream that redacts secrets and ends each write with a newline."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def write(self, text: str = "", ending: str = "\n") -> None:
        if ending and not text.endswith(ending):
            text += ending
        self._stream.write(self._redactor.text(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (AttributeError, ValueError):
            return False


class BaseCommand:
    """Subclass this; see the module docstring."""

    help = ""
    #: The name the command was run as (set by :meth:`run_from_argv`).
    command_name = "command"
    #: Commands that print a report offer ``--format text|json``.
    has_format = False
    #: The ``--format`` choices of a command that has one.
    formats: tuple[str, ...] = ("text", "json")
    #: Commands that never read dbinit's settings (nor touch a database, nor load
    #: plugins) set this False: no settings flags, no settings loaded, so that a
    #: stray or production environment cannot make them fail.
    uses_settings = True

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.redactor = Redactor()
        self._stdout_stream = stdout or sys.stdout
        self._stderr_stream = stderr or sys.stderr
        self.stdout = OutputWrapper(self._stdout_stream, self.redactor)
        self.stderr = OutputWrapper(self._stderr_stream, self.redactor)

    # -- to override -----------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's own arguments."""

    def handle(self, **options: Any) -> int | None:
        raise NotImplementedError("subclasses of BaseCommand must provide a handle() method")

    # -- machinery -------------------------------------------------------------

    def create_parser(self, prog_name: str, subcommand: str) -> argparse.ArgumentParser:
        parser = CommandParser(
            prog=f"{prog_name} {subcommand}",
            description=self.help or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if self.uses_settings:
            self._add_settings_arguments(parser)
        if self.has_format:
            parser.add_argument(
                "--format",
                choices=self.formats,
                default="text",
                help="output format (default: text)",
            )
        self.add_arguments(parser)
        return parser

    def _add_settings_arguments(self, parser: argparse.ArgumentParser) -> None:
        common = parser.add_argument_group("settings (override the environment)")
        common.add_argument(
            "--database-url",
            dest="database_url",
            help="database URL (prefer the DATABASE_URL environment variable: "
            "arguments are visible to other processes)",
        )
        common.add_argument("--service-name", dest="service_name", help="SERVICE_NAME")
        common.add_argument("--alembic-ini", dest="alembic_ini", help="DBINIT_ALEMBIC_INI")
        common.add_argument("--migrations-dir", dest="migrations_dir", help="DBINIT_MIGRATIONS_DIR")
        common.add_argument("--log-format", dest="log_format", choices=("auto", "json", "console", "stdlib"))
        common.add_argument(
            "--log-level", dest="log_level", choices=("debug", "info", "warning", "error")
        )

    def print_help(self, prog_name: str, subcommand: str) -> None:
        self.stdout.write(self.create_parser(prog_name, subcommand).format_help(), ending="")

    SETTING_OPTIONS = (
        "database_url",
        "service_name",
        "alembic_ini",
        "migrations_dir",
        "log_format",
        "log_level",
    )

    def settings_overrides(self, options: dict[str, Any]) -> dict[str, Any]:
        """Flags that map onto settings (None: not given). Commands may extend it."""
        return {key: options.get(key) for key in self.SETTING_OPTIONS}

    def run_from_argv(self, argv: list[str]) -> int:
        """Parse ``argv`` (``[prog, command, *args]``), run, return the exit code.

        Nothing raised while the command runs becomes a success: a
        ``SystemExit`` from a plugin or a strategy (``sys.exit(0)``) is an
        internal error like any other unexpected exception. (``--help`` is
        argparse's own ``SystemExit``, raised while parsing.)
        """
        options: dict[str, Any] = {}
        self.command_name = argv[1]
        try:
            parser = self.create_parser(argv[0], argv[1])
            options = vars(parser.parse_args(argv[2:]))
        except DbinitError as exc:
            return self.report_error(exc, options)
        try:
            return self.execute(**options)
        except DbinitError as exc:
            return self.report_error(exc, options)
        except KeyboardInterrupt:
            self.stderr.write("Interrupted")
            return 130
        except FOREIGN_FAILURES as exc:
            self.stderr.write(traceback.format_exc(), ending="")
            what = f"{type(exc).__name__}({exc})" if isinstance(exc, SystemExit) else "this"
            self.stderr.write(f"Internal error (a bug): {what} was raised while the command ran; "
                              "please report it with the traceback above.")
            return ExitCode.INTERNAL_ERROR

    def run(self, main: Callable[[RunControl], Coroutine[Any, Any, T]], *, graceful: bool = False) -> T:
        """Run the command's coroutine; SIGTERM/SIGINT end it with exit 143/130.

        See :func:`dbinit.interrupts.run_until_stopped` (``graceful``: the
        coroutine stops at its next safe point instead of being cancelled).
        """
        from dbinit.interrupts import run_until_stopped

        return run_until_stopped(main, graceful=graceful, what=f"{self.command_name} stopped")

    def execute(self, **options: Any) -> int:
        """Build the settings, configure logging and plugins, call :meth:`handle`."""
        from dbinit.pluginmanager import Registry
        from dbinit.settings import load_settings

        if not self.uses_settings:
            self.log = make_logger("dbinit", log_output(stream=self._stderr_stream, redactor=self.redactor))
            return int(self.handle(**options) or 0)
        self.settings = load_settings(**self.settings_overrides(options))
        self.redactor.add(self.settings.url.password)
        fmt, stdlib_unset = self.settings.log_format, False
        if fmt == "stdlib" and not logging.getLogger(STDLIB_LOGGER).hasHandlers():
            # nothing in this process would write them (a manage.py may have configured logging)
            fmt, stdlib_unset = "auto", True
        output = log_output(fmt, self.settings.log_level, stream=self._stderr_stream, redactor=self.redactor)
        self.log = make_logger(self.settings.service, output)
        if stdlib_unset:
            self.log.warning("DBINIT_LOG_FORMAT=stdlib, but no stdlib logging handler would write dbinit's "
                             "lines in this process: writing them as DBINIT_LOG_FORMAT=auto does")
        self.settings.log_notes(self.log)
        self.registry = Registry.for_settings(self.settings)
        code = self.handle(**options)
        return int(code or 0)

    def report_error(self, exc: DbinitError, options: dict[str, Any]) -> int:
        code = int(exc.exit_code)
        if options.get("format") == "json":
            self.stdout.write(
                json.dumps(
                    {
                        "ok": False,
                        "action": "failed",
                        "error": type(exc).__name__,
                        "message": exc.message,
                        "hint": exc.hint,
                        "exit_code": code,
                    }
                )
            )
        self.stderr.write(f"Error: {exc.message}")
        if exc.hint:
            self.stderr.write(f"Hint: {exc.hint}")
        if code == ExitCode.INTERNAL_ERROR and exc.__cause__ is not None:
            self.stderr.write("".join(traceback.format_exception(exc.__cause__)), ending="")
        return code

    def write_json(self, document: object) -> None:
        self.stdout.write(json.dumps(document, indent=2, default=str))


def require(condition: bool, message: str, hint: str = "") -> None:
    """Raise a usage error unless ``condition``."""
    if not condition:
        raise ConfigurationError(message, hint=hint)
