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
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
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


class _Lines(structlog.PrintLogger):
    """The end of dbinit's chain in ``json`` and ``console``: each rendered line on the output's stream."""

    def __init__(self, output: LogOutput) -> None:
        super().__init__(output.stream)
        self.output = output


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
    logging) configuration is neither read nor changed. Every event passes
    the output's :class:`Redactor`, before rendering (its values) and after
    (the whole line, a traceback included).
    """
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
        if output.json:
            processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        else:
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
    return sink.output if isinstance(sink, _Lines | _Stdlib) else None


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
