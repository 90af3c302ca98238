"""dbinit's own log lines: JSON when not a terminal, readable colour on one, or stdlib records.

Every logger dbinit uses (the command line's, the Python API's, the ASGI
gate's) is made by :func:`make_logger` with a processor chain of its own,
built from ``DBINIT_LOG_FORMAT`` and ``DBINIT_LOG_LEVEL``: structlog's global
configuration and stdlib logging's are never read nor changed, so inside a
service the application's logging stays exactly as it configured it, and
dbinit's lines follow dbinit's settings. ``DBINIT_LOG_FORMAT=stdlib`` hands
them to the application's stdlib logging instead (the logger ``dbinit``).
Every event passes through :class:`Redactor`, so a password that reached a
message is replaced by ``***`` before it is written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

#: The password part of anything URL-shaped (``scheme://user:password@``;
#: one or two slashes, since path normalisation folds ``//``), and libpq's
#: ``password=`` in a query string or a key/value DSN. Redacted whether or
#: not the secret is known: a value can be echoed before the settings load.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*:/{1,3}[^:/?#@\s'\"]*:)(?P<secret>[^\s'\"]*)(?=@)"
)
_PARAM_PASSWORD = re.compile(r"(?P<head>(?:^|[?&\s;'\"])(?:password|passwd)\s*=\s*)(?P<secret>[^&\s'\"]+)",
                             re.IGNORECASE)


def redact_urls(value: str) -> str:
    """``value`` with the password of every URL-shaped part replaced by ``***``."""
    if "=" not in value and "@" not in value:
        return value
    value = _URL_PASSWORD.sub(lambda m: m["head"] + "***", value)
    return _PARAM_PASSWORD.sub(lambda m: m["head"] + "***", value)


class Redactor:
    """Replaces every known secret, and any URL's password, in log events and output text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 1:
            from urllib.parse import quote

            self.secrets.add(secret)
            self.secrets.add(quote(secret, safe=""))

    def text(self, value: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, "***")
        return redact_urls(value)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor, before rendering: every value but ``exc_info``.

        ``exc_info`` stays as it is for the renderer to format (turned into
        text here, the renderer would format whatever exception is being
        handled instead); the rendered line passes :meth:`rendered`.
        """
        for key, value in event.items():
            if key == "exc_info":
                continue
            if isinstance(value, str):
                event[key] = self.text(value)
            elif isinstance(value, BaseException):
                event[key] = self.text(str(value))
        return event

    def rendered(self, logger: Any, method: str, line: Any) -> Any:
        """A structlog processor, after the renderer: the whole line (a traceback included)."""
        return self.text(line) if isinstance(line, str) else line


#: ``DBINIT_LOG_FORMAT``: ``auto`` is ``json`` when the stream is not a terminal, ``console`` on one.
LogFormat = Literal["auto", "json", "console", "stdlib"]
#: The name of the stdlib logger dbinit's lines go to with ``DBINIT_LOG_FORMAT=stdlib``.
STDLIB_LOGGER = "dbinit"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


@dataclasses.dataclass(frozen=True)
class LogOutput:
    """Where and how dbinit's own lines are written: one logger's chain, never structlog's global one.

    ``format`` is resolved (``auto`` is ``json`` or ``console``); ``stream``
    is where ``json`` and ``console`` lines go (``stdlib`` hands them to the
    stdlib logger :data:`STDLIB_LOGGER` instead).
    """

    format: Literal["json", "console", "stdlib"]
    level: int
    stream: TextIO
    redactor: Redactor

    @property
    def json(self) -> bool:
        return self.format == "json"


def log_output(
    fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None, redactor: Redactor | None = None
) -> LogOutput:
    """``fmt``, ``level`` as ``DBINIT_LOG_FORMAT``, ``DBINIT_LOG_LEVEL`` spell them; stderr by default."""
    stream = stream if stream is not None else sys.stderr
    if fmt not in ("auto", "json", "console", "stdlib"):
        raise ValueError(f"unknown log format {fmt!r}")
    resolved: Literal["json", "console", "stdlib"] = (
        ("console" if _isatty(stream) else "json") if fmt == "auto" else fmt  # type: ignore[assignment]
    )
    redactor = redactor if redactor is not None else Redactor()
    return LogOutput(resolved, _LEVELS[level.lower()], stream, redactor)


_WRITE_LOCK = threading.Lock()


class _Lines:
    """The end of dbinit's chain in ``json`` and ``console``: each rendered line on the output's stream.

    (What ``structlog.PrintLogger`` does: one ``print`` per line, flushed, under a lock.)
    """

    def __init__(self, output: LogOutput) -> None:
        self.output = output

    def msg(self, message: str) -> None:
        with _WRITE_LOCK:
            print(message, file=self.output.stream, flush=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


#: structlog's level numbers (the stdlib's) and the method each is logged by.
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "critical"}


def _json_default(value: Any) -> Any:
    """What structlog's JSONRenderer does with a value json cannot encode: ``__structlog__()``, else repr."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _exc_info(value: Any) -> tuple[Any, Any, Any] | None:
    """An ``exc_info`` field as an exception triple, or None (structlog's rules)."""
    if isinstance(value, BaseException):
        return (value.__class__, value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    if value:
        current = sys.exc_info()
        return None if current == (None, None, None) else current
    return None


def _format_exception(exc_info: tuple[Any, Any, Any]) -> str:
    import traceback

    text = "".join(traceback.format_exception(exc_info[0], exc_info[1], exc_info[2]))
    return text[:-1] if text.endswith("\n") else text


class JsonLogger:
    """dbinit's logger in ``json``: the lines the structlog chain of :func:`make_logger` would write,
    without importing structlog (whose package imports rich, when installed, on every start).

    The same event dict in the same order (the bound context, the call's fields, ``event``,
    the application's structlog context variables if it uses structlog, ``level``,
    ``timestamp``), redacted, one JSON object per line. It has the methods of structlog's
    ``FilteringBoundLogger`` dbinit and plugins call (``debug`` ... ``critical``, ``exception``,
    ``log``, ``bind``, ``new``, ``unbind``, ``try_unbind``); levels below ``output.level`` are
    dropped before any work.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, sink: _Lines, context: dict[str, Any]) -> None:
        self._logger = sink
        self._context = context

    def bind(self, **values: Any) -> JsonLogger:
        return JsonLogger(self._logger, {**self._context, **values})

    def new(self, **values: Any) -> JsonLogger:
        return JsonLogger(self._logger, dict(values))

    def unbind(self, *keys: str) -> JsonLogger:
        context = dict(self._context)
        for key in keys:
            del context[key]
        return JsonLogger(self._logger, context)

    def try_unbind(self, *keys: str) -> JsonLogger:
        return JsonLogger(self._logger, {k: v for k, v in self._context.items() if k not in keys})

    def is_enabled_for(self, level: int) -> bool:
        return level >= self._logger.output.level

    def get_effective_level(self) -> int:
        return self._logger.output.level

    def _emit(
        self, level: int, method: str, event: Any, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        if level < self._logger.output.level:
            return
        if args:
            event = event % (args[0] if len(args) == 1 and isinstance(args[0], dict) and args[0] else args)
        record = {**self._context, **fields}
        if event is not None:
            record["event"] = event
        contextvars = sys.modules.get("structlog.contextvars")
        if contextvars is not None:  # the application's bound context, as merge_contextvars adds it
            record = contextvars.merge_contextvars(None, method, record)
        record["level"] = method
        record["timestamp"] = _utc_now()
        redactor = self._logger.output.redactor
        redactor(None, method, record)
        if "exc_info" in record:
            exc_info = _exc_info(record.pop("exc_info"))
            if exc_info:
                record["exception"] = _format_exception(exc_info)
        self._logger.msg(redactor.text(json.dumps(record, default=_json_default)))

    def debug(self, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, args, fields)

    def info(self, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, args, fields)

    def warning(self, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, args, fields)

    def error(self, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, args, fields)

    def critical(self, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(logging.CRITICAL, "critical", event, args, fields)

    def exception(self, event: Any = None, *args: Any, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._emit(logging.ERROR, "error", event, args, fields)

    def log(self, level: int, event: Any = None, *args: Any, **fields: Any) -> None:
        self._emit(level, _LEVEL_NAMES.get(level, "notset"), event, args, fields)

    msg = info
    warn = warning
    fatal = critical


def _utc_now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")


class _Stdlib:
    """The end of dbinit's chain in ``stdlib``: each event a record of the stdlib logger ``dbinit``.

    The record's message is the rendered event (``event key='value' ...``,
    redacted, a traceback on the lines after it); ``record.dbinit`` holds the
    event's fields as a dict (redacted), for a formatter that wants them.
    The record has no ``exc_info``: a traceback the application's formatter
    rendered itself would not be redacted.
    """

    def __init__(self, output: LogOutput) -> None:
        self.output = output
        self.logger = logging.getLogger(STDLIB_LOGGER)

    def _emit(self, level: int, message: str, fields: dict[str, Any]) -> None:
        self.logger.log(level, "%s", message, extra={"dbinit": fields})

    def debug(self, message: str, fields: dict[str, Any]) -> None:
        self._emit(logging.DEBUG, message, fields)

    def info(self, message: str, fields: dict[str, Any]) -> None:
        self._emit(logging.INFO, message, fields)

    def warning(self, message: str, fields: dict[str, Any]) -> None:
        self._emit(logging.WARNING, message, fields)

    def error(self, message: str, fields: dict[str, Any]) -> None:
        self._emit(logging.ERROR, message, fields)

    def critical(self, message: str, fields: dict[str, Any]) -> None:
        self._emit(logging.CRITICAL, message, fields)

    msg = log = info
    warn = warning
    exception = error
    fatal = critical


def _render_for_stdlib(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> tuple[tuple[str, dict[str, Any]], dict[str, Any]]:
    """The final processor of ``stdlib``: ``(message, fields)`` for :class:`_Stdlib`."""
    fields = dict(event)
    traceback = fields.pop("exception", None)
    text = str(fields.get("event", ""))
    rest = {key: value for key, value in fields.items() if key != "event"}
    if rest:
        text += " " + " ".join(f"{key}={value!r}" for key, value in sorted(rest.items()))
    if traceback:
        text += "\n" + str(traceback).rstrip("\n")
        fields["exception"] = traceback
    return (text, fields), {}


def _redact_fields(redactor: Redactor) -> Any:
    def processor(logger: Any, method: str, line: Any) -> Any:
        (text, fields), kwargs = line
        return (redactor.text(text), {key: redactor.text(value) if isinstance(value, str) else value
                                      for key, value in fields.items()}), kwargs

    return processor


def make_logger(service: str, output: LogOutput) -> FilteringBoundLogger:
    """dbinit's logger for ``service``, with its own chain from ``output``: the CLI's, the API's, the gate's.

    Nothing global is configured: an application's structlog (or stdlib
    logging) configuration is neither read nor changed. ``json`` (a pod's
    format) is a :class:`JsonLogger`, which writes the same lines without
    importing structlog; ``console`` and ``stdlib`` are structlog chains. Every event passes
    the output's :class:`Redactor`, before rendering (its values) and after
    (the whole line, a traceback included).
    """
    if output.json:
        return JsonLogger(_Lines(output), {"service": service})  # type: ignore[return-value]
    import structlog

    redactor = output.redactor
    processors: list[Any] = [structlog.contextvars.merge_contextvars]
    sink: _Lines | _Stdlib
    if output.format == "stdlib":
        processors += [redactor, structlog.processors.format_exc_info, _render_for_stdlib,
                       _redact_fields(redactor)]
        sink = _Stdlib(output)
    else:
        processors += [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor,
        ]
        processors.append(structlog.dev.ConsoleRenderer(colors=_isatty(output.stream)))
        processors.append(redactor.rendered)
        sink = _Lines(output)
    logger: FilteringBoundLogger = structlog.wrap_logger(
        sink,
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(output.level),
        context_class=dict,
    ).bind(service=service)
    return logger


def output_of(log: Any) -> LogOutput | None:
    """The output of a logger :func:`make_logger` made (or one bound from it); None for any other logger."""
    sink = getattr(log, "_logger", None)
    return sink.output if isinstance(sink, _Lines | _Stdlib) else None  # JsonLogger has _logger too


_output: LogOutput | None = None


def configured_output() -> LogOutput | None:
    """What :func:`configure_logging` set; None if it never ran."""
    return _output


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Set the output of dbinit's lines for this process, over ``DBINIT_LOG_FORMAT``/``DBINIT_LOG_LEVEL``.

    For a caller of the Python API and the ASGI gate that wants dbinit's
    lines somewhere else than its settings say (a stream of its own, say).
    Only dbinit's loggers use it: structlog's global configuration is not
    touched.
    """
    global _output
    _output = log_output(fmt, level, stream=stream, redactor=redactor)


def settings_output(fmt: str, level: str, redactor: Redactor) -> LogOutput:
    """The output of a service's lines: :func:`configure_logging`'s if it ran, else ``fmt`` and ``level``.

    Either way every secret ``redactor`` knows (the database URL's password)
    is redacted.
    """
    if _output is None:
        return log_output(fmt, level, redactor=redactor)
    merged = Redactor()
    merged.secrets = _output.redactor.secrets | redactor.secrets
    return dataclasses.replace(_output, redactor=merged)


def get_logger(service: str) -> FilteringBoundLogger:
    """dbinit's logger for ``service``, as :func:`configure_logging` set it (default: auto, info, stderr)."""
    return make_logger(service, _output if _output is not None else log_output())


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
