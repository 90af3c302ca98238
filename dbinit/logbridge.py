"""Alembic's (and SQLAlchemy's) stdlib logging, in dbinit's one log stream.

``env.py`` configures stdlib logging itself while Alembic runs it
(``fileConfig(config.config_file_name)``: alembic.ini's ``[loggers]``, a
``StreamHandler`` on stderr with the ini's text format). In JSON mode those
text lines would land between dbinit's JSON lines. For the duration of a run,
:func:`alembic_logging` therefore wraps ``logging.config.fileConfig`` and
``dictConfig`` (``env.py`` looks them up when Alembic executes it): the real
function runs, so the levels the ini sets stay (sqlalchemy WARN, alembic
INFO, ...), then every handler it installed that writes to the terminal's
streams is replaced by a :class:`StructlogHandler`, which hands each record to
dbinit's own structlog chain (:func:`dbinit.logs.make_logger`: same JSON,
same :class:`~dbinit.logs.Redactor`, the level mapped, the logger's name as
the ``logger`` field). Handlers writing
elsewhere (a file the ini names) are left as the ini made them. In console
mode the ini's handlers keep writing their text lines, each passed through
the Redactor (a URL that env.py logs loses its password there too).

Afterwards the stdlib logging state is put back as it was: the root logger's
and every existing logger's level, handlers, ``propagate`` and ``disabled``
(``fileConfig`` disables the loggers it does not name); loggers created during
the run are reset, and the handlers the run created are closed. That part is
:func:`preserved_logging` on its own, for any code that configures stdlib
logging behind its caller's back.

Only ``migrate`` imports this module (with Alembic): ``verify`` loads no
``logging.config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import logging.config
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from structlog.typing import FilteringBoundLogger

from dbinit.logs import STDLIB_LOGGER, LogOutput, Redactor, output_of


class StructlogHandler(logging.Handler):
    """A stdlib handler that logs each record through a structlog bound logger.

    The event is the record's message; ``logger`` names the stdlib logger;
    the level maps onto the nearest standard level at or below it (a custom
    level 25 is ``info``). A record's ``exc_info`` is passed on for the
    renderer to format.
    """

    def __init__(self, log: FilteringBoundLogger, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._methods: tuple[tuple[int, Callable[..., Any]], ...] = (
            (logging.CRITICAL, log.critical),
            (logging.ERROR, log.error),
            (logging.WARNING, log.warning),
            (logging.INFO, log.info),
        )
        self._debug = log.debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = next((m for level, m in self._methods if record.levelno >= level), self._debug)
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            method(record.getMessage(), **extra)
        except RecursionError:
            raise
        except Exception:  # logging's own contract: report on stderr, never break the caller
            self.handleError(record)


@dataclasses.dataclass(frozen=True)
class _LoggerState:
    level: int
    handlers: tuple[logging.Handler, ...]
    propagate: bool
    disabled: bool


def _loggers() -> dict[str, logging.Logger]:
    """Every stdlib logger that exists now, the root as ``""``."""
    found: dict[str, logging.Logger] = {"": logging.getLogger()}
    for name, item in logging.Logger.manager.loggerDict.items():
        if isinstance(item, logging.Logger):
            found[name] = item
    return found


def _snapshot() -> dict[str, _LoggerState]:
    return {
        name: _LoggerState(logger.level, tuple(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in _loggers().items()
    }


def _restore(before: dict[str, _LoggerState]) -> None:
    """Put every logger back as ``before`` had it; close the handlers added since."""
    kept = {id(h) for state in before.values() for h in state.handlers}
    added: dict[int, logging.Handler] = {}
    pristine = _LoggerState(logging.NOTSET, (), True, False)
    for name, logger in _loggers().items():
        state = before.get(name, pristine)
        for handler in logger.handlers:
            if id(handler) not in kept:
                added[id(handler)] = handler
        logger.setLevel(state.level)
        logger.handlers[:] = state.handlers
        logger.propagate = state.propagate
        logger.disabled = state.disabled
    for handler in added.values():
        handler.close()


class PreservedLogging:
    """The stdlib logging state when :func:`preserved_logging` began: what it puts back."""

    def __init__(self) -> None:
        self._before = _snapshot()
        self._since: dict[str, _LoggerState] = {}

    def remember(self, states: Mapping[str, _LoggerState]) -> None:
        """Restore the loggers made since the start to these states (the first remembered wins).

        Without it such a logger is reset to a pristine one (no level, no handlers).
        """
        for name, state in states.items():
            self._since.setdefault(name, state)

    def restore(self) -> None:
        _restore({**self._since, **self._before})


@contextlib.contextmanager
def preserved_logging() -> Iterator[PreservedLogging]:
    """Put stdlib logging back as it was on entry: every logger's level, handlers, ``propagate``
    and ``disabled``; loggers made inside are reset, and the handlers added inside are closed.

    For code that configures logging behind the caller's back (an ``env.py``'s ``fileConfig``).
    """
    preserved = PreservedLogging()
    try:
        yield preserved
    finally:
        preserved.restore()


class RedactingFormatter(logging.Formatter):
    """A handler's own formatter, its output (traceback included) passed through a :class:`Redactor`."""

    def __init__(self, inner: logging.Formatter | None, redactor: Redactor) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.text(self.inner.format(record))


def _terminal_streams(extra: TextIO) -> tuple[object, ...]:
    return (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__, extra)


def _take_over(before: dict[str, _LoggerState], log: FilteringBoundLogger, output: LogOutput) -> None:
    """Adopt the handlers installed since ``before`` that write to the terminal's streams.

    JSON mode: each is replaced by a :class:`StructlogHandler` (its level and
    filters kept). Console mode: it stays, its output redacted.
    """
    existing = {id(h) for state in before.values() for h in state.handlers}
    streams = _terminal_streams(output.stream)
    bridges: dict[int, StructlogHandler] = {}
    for logger in _loggers().values():
        for index, handler in enumerate(logger.handlers):
            if id(handler) in existing or isinstance(handler, StructlogHandler):
                continue
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            if not any(handler.stream is s for s in streams):
                continue
            if not output.json:
                if not isinstance(handler.formatter, RedactingFormatter):
                    handler.setFormatter(RedactingFormatter(handler.formatter, output.redactor))
                continue
            bridge = bridges.get(id(handler))
            if bridge is None:
                bridge = StructlogHandler(log, handler.level)
                for item in handler.filters:
                    bridge.addFilter(item)
                bridges[id(handler)] = bridge
            logger.handlers[index] = bridge


@contextlib.contextmanager
def alembic_logging(log: FilteringBoundLogger) -> Iterator[None]:
    """Around Alembic's ``run_env()``: stdlib logging into dbinit's stream (JSON mode), then restored.

    The mode is ``log``'s output (see :func:`dbinit.logs.make_logger`): JSON,
    the records go through dbinit's chain; console, the ini's text lines stay,
    redacted. With ``stdlib`` (dbinit's lines are the application's stdlib
    records) or a logger dbinit did not make, ``env.py``'s logging is left to
    write as it does, except that the stdlib logger ``dbinit`` is kept enabled
    (``fileConfig`` disables the loggers its ini does not name). The state is
    restored afterwards in every case. Not for concurrent runs in one
    process: the wrapped functions are module attributes.
    """
    with preserved_logging() as preserved:
        output = output_of(log)
        if output is not None and output.format == "stdlib":
            output = None
        patched: list[tuple[str, Callable[..., Any]]] = []
        for name in ("fileConfig", "dictConfig"):
            original: Callable[..., Any] = getattr(logging.config, name)

            def configure(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> None:
                pre = _snapshot()
                # loggers made by imports during the run (a NullHandler a library adds) as they were
                # before the first configuration call: what they are restored to
                preserved.remember(pre)
                _original(*args, **kwargs)
                if output is not None:
                    _take_over(pre, log, output)
                else:
                    logging.getLogger(STDLIB_LOGGER).disabled = False

            setattr(logging.config, name, configure)
            patched.append((name, original))
        try:
            yield
        finally:
            for name, original in patched:
                setattr(logging.config, name, original)
