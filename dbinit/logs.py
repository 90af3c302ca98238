"""Logging with structlog: JSON when not a terminal, readable colour on one.

Configured by the command line (or explicitly by the API caller), never at
import time. Every event passes through :class:`Redactor`, so a password
that reached a message is replaced by ``***`` before it is written.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

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


@dataclasses.dataclass(frozen=True)
class LogOutput:
    """Where and how :func:`configure_logging` last set structlog to write."""

    json: bool
    stream: TextIO
    redactor: Redactor


_output: LogOutput | None = None


def configured_output() -> LogOutput | None:
    """What :func:`configure_logging` chose last; None if it never ran (the caller's own logging)."""
    return _output


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Configure structlog for dbinit's command line."""
    global _output
    stream = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if redactor is not None:
        processors.append(redactor)
    if use_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_isatty(stream)))
    if redactor is not None:
        processors.append(redactor.rendered)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _output = LogOutput(json=use_json, stream=stream, redactor=redactor or Redactor())


def get_logger(service: str) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger("dbinit").bind(service=service)
    return logger


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
