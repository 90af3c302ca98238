"""dbinit's ``json`` lines are written without structlog, and are the lines structlog's chain writes.

:class:`dbinit.logs.JsonLogger` replaced the structlog chain of ``json`` (a pod's format) so a
service start does not import structlog (and rich with it). The reference here is that chain,
built as :func:`dbinit.logs.make_logger` built it before: every call must give the same line,
key for key and in the same order, the timestamp aside (the clock moves between the two).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import structlog

from dbinit.logs import JsonLogger, Redactor, log_output, make_logger
from tests.plugins.faults import SECRET

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def reference_logger(stream: io.StringIO, redactor: Redactor, level: str) -> Any:
    """The structlog chain ``json`` used to be (dbinit.logs.make_logger before JsonLogger)."""
    output = log_output("json", level, stream=stream, redactor=redactor)
    return structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            redactor.rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(output.level),
        context_class=dict,
    ).bind(service="orders")


def both(calls: Any, level: str = "info") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of ``calls(log)`` from dbinit's logger and from the reference chain, timestamps checked."""
    results = []
    for make in ("dbinit", "reference"):
        stream = io.StringIO()
        redactor = Redactor([SECRET])
        if make == "dbinit":
            log = make_logger("orders", log_output("json", level, stream=stream, redactor=redactor))
            assert isinstance(log, JsonLogger)
        else:
            log = reference_logger(stream, redactor, level)
        calls(log)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        for line in lines:
            assert TIMESTAMP.match(line.pop("timestamp")), line
        results.append(lines)
    return results[0], results[1]


def test_fields_levels_and_order_are_structlogs() -> None:
    def calls(log: Any) -> None:
        log.info("verified", current_revision="abc", migration_count=3, duration_ms=1.5)
        log.bind(database="db:5432/x").warning("stale manifest", path=Path("/app/m.json"))
        log.debug("dropped at info")
        log.error("migration failed %s of %s", 2, 5, revision=None, heads=("a", "b"))
        log.log(40, "by number", n=1)
        log.warn("an alias")
        log.msg("another")

    mine, reference = both(calls)
    assert mine == reference
    assert [list(line) for line in mine] == [list(line) for line in reference]  # the key order too
    assert [line["level"] for line in mine] == ["info", "warning", "error", "error", "warning", "info"]
    assert mine[1]["path"] == "PosixPath('/app/m.json')"  # a value json cannot encode: its repr


def test_debug_level_lets_debug_through() -> None:
    mine, reference = both(lambda log: log.debug("looked", n=1), level="debug")
    assert mine == reference and mine[0]["event"] == "looked"


def test_exceptions_render_as_structlogs_and_stay_redacted() -> None:
    def calls(log: Any) -> None:
        try:
            raise RuntimeError(f"could not connect to postgresql://app:{SECRET}@db/x")
        except RuntimeError as error:
            log.exception("connect failed")
            log.error("as a field", error=error, exc_info=error)

    mine, reference = both(calls)
    assert mine == reference
    text = json.dumps(mine)
    assert SECRET not in text and "***" in text
    assert mine[0]["exception"].startswith("Traceback (most recent call last):")
    assert mine[0]["exception"].endswith("RuntimeError: could not connect to postgresql://app:***@db/x")


def test_the_applications_structlog_context_is_merged_as_before() -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1", service="the app's")
    try:
        mine, reference = both(lambda log: log.info("checked", ok=True))
    finally:
        structlog.contextvars.clear_contextvars()
    assert mine == reference
    assert mine[0]["request_id"] == "r-1" and mine[0]["service"] == "orders"  # dbinit's own wins


@pytest.mark.parametrize("fmt", ["console", "stdlib"])
def test_other_formats_stay_structlog_chains(fmt: str) -> None:
    log = make_logger("orders", log_output(fmt, "info", stream=io.StringIO()))
    assert not isinstance(log, JsonLogger)
