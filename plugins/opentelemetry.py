"""Traces of dbinit's operations with OpenTelemetry: a span per verification, migration, revision.

Not registered by default. Enable it with
``DBINIT_PLUGINS=dbinit.plugins.opentelemetry`` (``pip install
'dbinit-alembic[tracing]'``: it needs ``opentelemetry-api`` only). The
tracer provider, the SDK and the exporter are the application's (or
``opentelemetry-instrument``'s): without one, the spans are OpenTelemetry's
no-op spans and cost next to nothing.

Spans, made through the public hooks only (``dbinit_operation``,
``dbinit_verify_finished``, ``dbinit_migrate_finished``), named
``dbinit.<operation>`` and nested as the operations are::

    dbinit.migrate
    ├── dbinit.lock_wait
    ├── dbinit.revision            (one per revision applied, in the migration thread)
    ├── dbinit.verify              (the final verification)
    └── dbinit.after_migrate       (DBINIT_AFTER_MIGRATE)
    dbinit.verify                  (dbinit verify, the gate's startup, wait --until-verified)
    dbinit.readiness               (the gate's readiness re-check)

Attributes follow OpenTelemetry's semantic conventions where they exist:
``db.system`` and ``db.system.name`` (``postgresql`` or ``sqlite``),
``db.namespace`` (the database's name, or the SQLite file), ``server.address``
and ``server.port`` (the URL's first host), ``db.query.text`` on
``dbinit.verify`` and ``dbinit.readiness`` on PostgreSQL (the verification
statement: settings reach it only as SQL literals and identifiers, it holds
no secret), ``error.type`` on a failure. dbinit's own: ``dbinit.service``,
``dbinit.database`` (its display name), ``dbinit.strategy``,
``dbinit.revision`` (the revision being applied; after a verification, the
database's current one), ``dbinit.revision.index``/``dbinit.revision.count``,
``dbinit.heads``, ``dbinit.outcome`` (``ready``, ``not_ready``,
``migrations_applied``, ``up_to_date``, ``failed``), ``dbinit.check.failed``
(the failed check ids), ``dbinit.migration_count``, ``dbinit.table_count``,
``dbinit.revisions.applied``, ``dbinit.exit_code``,
``dbinit.after_migrate.command``.

A failed operation's span has status ERROR and one ``exception`` event. The
event is recorded here, not by OpenTelemetry (``record_exception=False``):
its message and stack trace pass through dbinit's
:class:`~dbinit.logs.Redactor` (the URL's password, and any URL-shaped
password) first, so no password reaches a span, an attribute or an event. A
verification that finds the database not ready ends with status ERROR too.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from dbinit import __version__, hookimpl
from dbinit.errors import DbinitError
from dbinit.logs import Redactor

if TYPE_CHECKING:
    from contextvars import Token
    from types import TracebackType

    from opentelemetry.context import Context

    from dbinit.report import MigrateResult, VerifyReport
    from dbinit.settings import Settings

#: The instrumentation scope of dbinit's spans.
TRACER_NAME = "dbinit"
#: An OpenTelemetry attribute value as dbinit sets them.
AttributeValue = str | bool | int | float | tuple[str, ...]

#: The open operations' spans by span id (what dbinit_verify_finished finds the redactor of).
_open: dict[int, OperationSpan] = {}
_RENAMED = {"index": "dbinit.revision.index", "count": "dbinit.revision.count",
            "command": "dbinit.after_migrate.command"}


def _database_attributes(settings: Settings) -> dict[str, AttributeValue]:
    url = settings.url
    found: dict[str, AttributeValue] = {"db.system": url.backend, "db.system.name": url.backend}
    if url.is_sqlite:
        found["db.namespace"] = url.display_name
        return found
    if url.database:
        found["db.namespace"] = url.database
    if url.host:
        found["server.address"] = url.host
        found["server.port"] = url.port or 5432
    return found


def verification_statement(settings: Settings, operation: str) -> str | None:
    """The statement a verification sends (PostgreSQL), built as the probe builds it; None on SQLite.

    ``readiness`` (the gate's re-check) does not count the tables. When the
    version table is missing a second statement follows (not shown).
    """
    if settings.url.is_sqlite:
        return None
    from dbinit.database import postgres_state_query
    from dbinit.facts import probe_options

    options = probe_options(settings, operation)
    return postgres_state_query(
        options.schema, options.version_table, count_tables=operation != "readiness",
        version_schema=options.version_schema, history_table=options.history_table,
    )


def span_attributes(
    operation: str, attributes: Mapping[str, str | int | float | bool], settings: Settings, redactor: Redactor
) -> dict[str, AttributeValue]:
    """A ``dbinit.<operation>`` span's attributes at its start."""
    found = _database_attributes(settings)
    for key, value in attributes.items():
        if key == "strategy" and not value:
            continue  # chosen from the settings inside the run: set by dbinit_migrate_finished
        found[_RENAMED.get(key, f"dbinit.{key}")] = redactor.text(value) if isinstance(value, str) else value
    found.setdefault("dbinit.service", settings.service)
    if operation in ("verify", "readiness"):
        statement = verification_statement(settings, operation)
        if statement is not None:
            found["db.query.text"] = statement
    return found


def _qualified(kind: type[BaseException]) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def record_failure(span: Span, exc: BaseException, redactor: Redactor) -> None:
    """Status ERROR and one ``exception`` event, its message and stack trace redacted."""
    message = redactor.text(exc.message if isinstance(exc, DbinitError) else str(exc))
    kind = _qualified(type(exc))
    span.add_event("exception", {
        "exception.type": kind,
        "exception.message": message,
        "exception.stacktrace": redactor.text("".join(traceback.format_exception(exc))),
        "exception.escaped": True,
    })
    span.set_attribute("error.type", kind)
    span.set_attribute("dbinit.outcome", "failed")
    if isinstance(exc, DbinitError):
        span.set_attribute("dbinit.exit_code", int(exc.exit_code))
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


class OperationSpan:
    """``dbinit.<operation>`` as the current span while the operation runs (a context manager).

    The span is current in the context it was entered in, and is ended
    wherever it is exited. A revision that fails in an async ``env.py`` is
    exited outside the event loop's task it ran in (its context is gone by
    then): the span is ended there, and there is nothing to restore.
    """

    def __init__(self, name: str, attributes: dict[str, AttributeValue], redactor: Redactor) -> None:
        self.name = name
        self.attributes = attributes
        self.redactor = redactor
        self.span: Span | None = None
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        tracer = trace.get_tracer(TRACER_NAME, __version__)
        # record_exception=False: the exception is recorded redacted, in __exit__
        self.span = tracer.start_span(
            self.name, kind=SpanKind.INTERNAL, attributes=self.attributes,
            record_exception=False, set_status_on_exception=False,
        )
        self._token = context.attach(trace.set_span_in_context(self.span))
        if self.span.is_recording():
            _open[self.span.get_span_context().span_id] = self
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self.span
        assert span is not None and self._token is not None
        _open.pop(span.get_span_context().span_id, None)
        if trace.get_current_span() is span:  # entered in this context: put back what was current
            context.detach(self._token)
        if exc is not None and span.is_recording():
            record_failure(span, exc, self.redactor)
        span.end()


def _running_span() -> tuple[Span, Redactor] | None:
    """The current span if it is an operation's (and its redactor), recording."""
    span = trace.get_current_span()
    running = _open.get(span.get_span_context().span_id) if span.is_recording() else None
    if running is None or running.span is not span:
        return None
    return span, running.redactor


@hookimpl
def dbinit_operation(
    operation: str, attributes: Mapping[str, str | int | float | bool], settings: Settings
) -> OperationSpan:
    redactor = Redactor([settings.url.password])
    return OperationSpan(f"dbinit.{operation}", span_attributes(operation, attributes, settings, redactor),
                         redactor)


@hookimpl
def dbinit_verify_finished(report: VerifyReport) -> None:
    """The report on the verification's span (``dbinit.verify`` or ``dbinit.readiness``), still open."""
    running = _running_span()
    if running is None:
        return
    span, redactor = running
    found: dict[str, AttributeValue] = {
        "dbinit.outcome": "ready" if report.ok else "not_ready",
        "dbinit.migration_count": report.migration_count,
        "dbinit.heads": tuple(report.head_revisions),
    }
    if report.current_revision is not None:
        found["dbinit.revision"] = report.current_revision
    if report.table_count is not None:
        found["dbinit.table_count"] = report.table_count
    if report.failed:
        found["dbinit.check.failed"] = tuple(outcome.check.id for outcome in report.failed)
    span.set_attributes(found)
    if not report.ok:
        span.set_status(Status(StatusCode.ERROR, redactor.text(report.message)))


@hookimpl
def dbinit_migrate_finished(result: MigrateResult) -> None:
    """The outcome on the ``dbinit.migrate`` span (still open: the lock is still held)."""
    running = _running_span()
    if running is None:
        return
    span, _redactor = running
    span.set_attributes({
        "dbinit.outcome": result.action,
        "dbinit.strategy": result.strategy,
        "dbinit.revisions.applied": tuple(result.applied),
    })
