"""ASGI integration: a service accepts no request before its database verifies.

Verification only, never migration, whatever ``DB_FORCE_RECREATE`` says.
Three ways in, same behaviour, all built on :class:`DatabaseGate`:

FastAPI / Starlette (``lifespan``; ``middleware`` adds the probes and makes the
failure message one line instead of Starlette's traceback text)::

    gate = DatabaseGate()                                  # settings from the environment
    app = FastAPI(lifespan=gate.lifespan(app_lifespan))    # verify, then the app's own lifespan
    app.add_middleware(gate.middleware)                    # clean failure message, probes

Any ASGI 3 application::

    app = DatabaseGate().wrap(app)

A failed verification sends ``lifespan.startup.failed`` naming the failed
check and its hint, so the server exits non-zero before it serves: uvicorn
(and ``fastapi run``) with one worker exits 3, gunicorn with uvicorn-worker
exits 3 whatever ``-w``; but with ``--workers N`` uvicorn's supervisor stops
and exits 0, which no ASGI message can change (run one worker per pod). An
unreachable database is retried with backoff until ``DBINIT_STARTUP_TIMEOUT``.
After success the report is on ``app.state.dbinit`` (Starlette), in the
lifespan state (``request.state.dbinit``) and on ``gate.report``.

Every failure during startup, of any kind, ends in ``lifespan.startup.failed``
(never in an exception alone, which uvicorn's ``--lifespan auto`` takes for
"lifespan unsupported" and then serves): a dbinit error (configuration,
unreachable, not ready) as one line with its hint; anything else as a bug,
its traceback logged once. The message is built before anything that could
raise, and the logger used on that path does not need the settings (they may
be what failed). The settings are resolved once, at startup; their failure is
never hidden. Messages and log lines go through a :class:`~dbinit.logs.Redactor`
that knows the URL's password.

Probes, off by default (``DBINIT_READINESS_PATH``, ``DBINIT_LIVENESS_PATH``):
readiness re-verifies on one kept connection, at most once per
``DBINIT_READINESS_CACHE`` seconds whatever the request rate, and answers 200
or 503 with a :class:`Readiness` as JSON: the verdict (``ok``, ``status``, the
failed check ids) and, only with ``DBINIT_READINESS_DETAILS``, the report or
the error (the database's host, port and name, revisions, messages, hints),
since the probe is on the service's public port. Liveness never touches the
database. Shutdown closes every connection dbinit opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dbinit.errors import DatabaseUnreachable, DbinitError, ExitCode, NotReady, PluginError
from dbinit.logs import Redactor

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import Probe
    from dbinit.pluginmanager import Registry
    from dbinit.report import VerifyReport
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]
#: How a startup failure is reported: one line, a bug (with its traceback), or an interruption.
FailureKind = Literal["expected", "bug", "interrupted"]
#: The readiness verdict in one word, in every readiness body.
ReadinessStatus = Literal["ready", "not_ready", "unreachable", "configuration_error", "error", "not_started"]

_WHAT = {
    ExitCode.USAGE_ERROR: "configuration error",
    ExitCode.DATABASE_UNREACHABLE: "database unreachable",
    ExitCode.NOT_READY: "database not ready",
}
_READINESS_STATUS: dict[ExitCode, ReadinessStatus] = {
    ExitCode.USAGE_ERROR: "configuration_error",
    ExitCode.DATABASE_UNREACHABLE: "unreachable",
    ExitCode.NOT_READY: "not_ready",
}


@dataclasses.dataclass(frozen=True)
class ReadinessError:
    """A readiness re-check that raised instead of reporting: the reason, already redacted."""

    message: str
    hint: str
    error: str  # the exception's class name


@dataclasses.dataclass(frozen=True)
class Readiness:
    """One readiness answer: a verdict for anyone, details for whoever turned them on.

    The probe answers on the service's public port, so by default its body is
    only ``ok``, ``status``, the ids of the failed checks and the ``verdict``
    (``at_head``, ``ahead_compatible``, ``ahead_incompatible``…: see
    :mod:`dbinit.verdict`). The report (or
    the error) holds what an outsider has no use for: the database's host,
    port and name, the current and expected revisions (which release is
    deployed), messages and hints naming schemas, tables and roles. It is in
    the body only with ``DBINIT_READINESS_DETAILS=true``; the logs always have it.
    """

    status: ReadinessStatus
    failed: tuple[str, ...] = ()
    report: VerifyReport | None = None
    error: ReadinessError | None = None

    @classmethod
    def of(cls, report: VerifyReport) -> Readiness:
        status: ReadinessStatus = "ready" if report.ok else "not_ready"
        return cls(status, tuple(outcome.check.id for outcome in report.failed), report=report)

    @property
    def ok(self) -> bool:
        return self.status == "ready"

    @property
    def http_status(self) -> int:
        return 200 if self.ok else 503

    def body(self, *, details: bool, service: str) -> dict[str, object]:
        """The JSON body: the verdict, and with ``details`` the report or the error around it."""
        verdict: dict[str, object] = {
            "ok": self.ok,
            "status": self.status,
            "failed": list(self.failed),
            # which code the database serves (dbinit.verdict): one word, no revision, not sensitive
            "verdict": self.report.verdict if self.report is not None else None,
        }
        if not details:
            return verdict
        if self.report is not None:
            return {**self.report.to_json(), **verdict}
        if self.error is not None:
            return {"action": "failed", "message": self.error.message, "hint": self.error.hint,
                    "error": self.error.error, "service": service, **verdict}
        return {"action": "failed", "message": "not started", "service": service, **verdict}


class StartupFailed(DbinitError):
    """The service must not start; ``str()`` is the ``lifespan.startup.failed`` message.

    ``cause`` is what failed. ``expected`` is True for a dbinit error
    (configuration, unreachable, not ready: no traceback) and False for a
    bug in dbinit or a plugin, whose traceback was logged.
    """

    def __init__(self, cause: BaseException, message: str, *, expected: bool) -> None:
        super().__init__(message, hint=cause.hint if isinstance(cause, DbinitError) else "")
        self.cause = cause
        self.expected = expected
        self.exit_code = cause.exit_code if isinstance(cause, DbinitError) else ExitCode.INTERNAL_ERROR

    def __str__(self) -> str:
        return self.message


def describe_failure(exc: BaseException) -> tuple[str, FailureKind]:
    """The one-line ``lifespan.startup.failed`` message for ``exc``, and its kind."""
    if isinstance(exc, DbinitError) and exc.exit_code != ExitCode.INTERNAL_ERROR:
        text = f"dbinit: {_WHAT.get(exc.exit_code, 'startup failed')}, refusing to start: {exc.message}"
        kind: FailureKind = "expected"
    elif isinstance(exc, PluginError):
        text = f"dbinit: a bug in a plugin (traceback logged), refusing to start: {exc.message}"
        kind = "bug"
    elif isinstance(exc, Exception):
        reason = exc.message if isinstance(exc, DbinitError) else f"{type(exc).__name__}: {exc}"
        text = (
            "dbinit: internal error (a bug in dbinit: please report it with the traceback "
            f"logged), refusing to start: {reason}"
        )
        kind = "bug"
    else:
        text = f"dbinit: startup interrupted ({type(exc).__name__}), refusing to start"
        kind = "interrupted"
    hint = exc.hint if isinstance(exc, DbinitError) else ""
    if hint:
        text += f" (hint: {hint})"
    return " ".join(text.split()), kind  # one line, whatever the reason held


def _service_without_settings(given: Settings | None) -> str:
    """The service name for log lines when the settings did not load (they may be what failed)."""
    if given is not None and given.service_name:
        return given.service_name
    for name, value in os.environ.items():
        if name.upper() == "SERVICE_NAME" and value:
            return value
    try:
        return Path.cwd().name
    except OSError:  # the working directory was removed: still log, under a generic name
        return "unknown"


def _redacting_logger(
    service: str, redactor: Redactor, settings: Settings | None = None
) -> FilteringBoundLogger:
    """dbinit's own logger (:func:`dbinit.logs.make_logger`), never the application's structlog.

    Its format and level are the settings' (``DBINIT_LOG_FORMAT``,
    ``DBINIT_LOG_LEVEL``); until they are known (they may be what failed),
    the environment's values when valid, else ``auto`` and ``info``.
    """
    from dbinit.logs import make_logger, settings_output

    if settings is not None:
        fmt, level = settings.log_format, settings.log_level
    else:
        fmt = os.environ.get("DBINIT_LOG_FORMAT", "").strip().lower()
        level = os.environ.get("DBINIT_LOG_LEVEL", "").strip().lower()
        fmt = fmt if fmt in ("auto", "json", "console", "stdlib") else "auto"
        level = level if level in ("debug", "info", "warning", "error") else "info"
    return make_logger(service, settings_output(fmt, level, redactor))


class DatabaseGate:
    """Verifies at startup, answers probes, closes its connection at shutdown."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        readiness_path: str | None = None,
        liveness_path: str | None = None,
        readiness_cache: float | None = None,
        readiness_details: bool | None = None,
        startup_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._given_settings = settings
        self._overrides = {
            "readiness_path": readiness_path,
            "liveness_path": liveness_path,
            "readiness_cache": readiness_cache,
            "readiness_details": readiness_details,
            "startup_timeout": startup_timeout,
        }
        self._clock = clock
        self._settings: Settings | None = None
        self._settings_error: Exception | None = None
        self._settings_traceback: types.TracebackType | None = None
        self._redactor = Redactor()
        self._registry: Registry | None = None
        #: Plugins' HTTP endpoints (``dbinit_asgi_endpoints``): path -> ASGI app, known at startup.
        self.endpoints: dict[str, ASGIApp] = {}
        self._scripts: MigrationScripts | None = None
        self._probe: Probe | None = None
        self._log: FilteringBoundLogger | None = None
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._readiness: Readiness | None = None
        self._logged_state: tuple[int, str] | None = None
        self.report: VerifyReport | None = None
        #: Why the last startup failed (its ``str()`` is the startup.failed message).
        self.failure: StartupFailed | None = None

    # -- configuration (resolved once, at startup, never at import) ----------------

    @property
    def settings(self) -> Settings:
        """The settings, resolved on first use; a failure is kept and raised again, never re-read."""
        if self._settings is None:
            if self._settings_error is not None:
                error = self._settings_error
                raise error.with_traceback(self._settings_traceback)
            try:
                self._settings = self._resolve_settings()
            except Exception as exc:
                self._settings_error, self._settings_traceback = exc, exc.__traceback__
                raise
        return self._settings

    def _resolve_settings(self) -> Settings:
        from dbinit.settings import load_settings

        overrides = {k: v for k, v in self._overrides.items() if v is not None}
        if self._given_settings is not None:
            settings = self._given_settings.replace(**overrides)
        else:
            settings = load_settings(**overrides)
        # parses the URL (a malformed one fails here, as a configuration error)
        self._redactor.add(settings.url.password)
        return settings

    @property
    def log(self) -> FilteringBoundLogger:
        """The gate's redacting logger; it never loads the settings, so it cannot fail with them.

        Until they are known it is bound to a service name found without them.
        """
        if self._log is not None:
            return self._log
        if self._settings is None:
            given = self._given_settings
            return _redacting_logger(_service_without_settings(given), self._redactor, given)
        self._log = _redacting_logger(self._settings.service, self._redactor, self._settings)
        return self._log

    # -- lifecycle ---------------------------------------------------------------

    async def startup(self) -> VerifyReport:
        """Verify, retrying an unreachable database until the startup timeout.

        Every failure raises :class:`StartupFailed` (a cancellation or an
        interrupt propagates as itself), once :attr:`failure` holds the
        startup.failed message and the failure was logged.
        """
        self.failure = None
        try:
            return await self._startup()
        except BaseException as exc:
            failure = self._record_failure(exc)
            await self._drop_probe()
            if isinstance(exc, Exception):
                raise failure from None
            raise

    def _record_failure(self, exc: BaseException) -> StartupFailed:
        """Build the startup.failed message, then log the failure once. Never raises."""
        if isinstance(exc, StartupFailed):
            self.failure = exc
            return exc
        try:
            message, kind = describe_failure(exc)
            message = self._redactor.text(message)
        except Exception:  # a broken __str__ or worse: there must be a message; this one holds no value
            message, kind = f"dbinit: internal error (a bug), refusing to start: {type(exc).__name__}", "bug"
        self.failure = StartupFailed(exc, message, expected=kind == "expected")
        # the message is built and carries the same reason: a broken logging setup must not stop it
        with contextlib.suppress(Exception):
            self._log_failure(exc, kind)
        return self.failure

    def _log_failure(self, exc: BaseException, kind: FailureKind) -> None:
        if kind == "interrupted":
            self.log.warning("Startup interrupted - not starting", reason=type(exc).__name__)
        elif kind == "expected" and isinstance(exc, DbinitError):
            what = _WHAT.get(exc.exit_code, "startup failed")
            self.log.error(f"{what.capitalize()} at startup - not starting",
                           reason=exc.message, hint=exc.hint, exit_code=int(exc.exit_code))
        elif isinstance(exc, PluginError):
            # the plugin's own exception (the PluginError names the plugin) holds the useful traceback
            self.log.error("A plugin failed at startup (a bug in the plugin) - not starting",
                           plugin=exc.plugin, reason=exc.message, exc_info=exc.__cause__ or exc)
        else:
            reason = self.failure.message if self.failure is not None else type(exc).__name__
            self.log.error("Internal error at startup (a bug in dbinit) - not starting",
                           reason=reason, exc_info=exc)

    async def _startup(self) -> VerifyReport:
        from dbinit.facts import read_scripts
        from dbinit.pluginmanager import Registry
        from dbinit.verify import verify
        from dbinit.wait import backoff_delays

        settings = self.settings
        settings.log_notes(self.log)
        if settings.force_recreate:
            self.log.warning("DB_FORCE_RECREATE ignored: services only verify")
        self._registry = Registry.for_settings(settings)
        probes = [path for path in (settings.readiness_path, settings.liveness_path) if path]
        self.endpoints = self._registry.asgi_endpoints(settings, taken=probes)
        self._scripts = read_scripts(settings)
        deadline = self._clock() + settings.startup_timeout
        delays = backoff_delays(initial=0.2)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._operation("verify"):  # connecting is part of the attempt
                    probe = await self._connect()
                    report = await verify(settings, self._registry, self.log, scripts=self._scripts,
                                          probe=probe, operation=None)
                break
            except DatabaseUnreachable as exc:
                await self._drop_probe()
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise DatabaseUnreachable(
                        f"{exc.message} (gave up after {attempt} attempts, "
                        f"DBINIT_STARTUP_TIMEOUT={settings.startup_timeout:g}s)",
                        hint=exc.hint,
                    ) from None
                delay = min(next(delays), remaining)
                self.log.info("Database not reachable yet", attempt=attempt, reason=exc.message,
                              retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
        if not report.ok:
            raise NotReady(report.message, hint=report.hint)
        self.report = report
        self._remember(report)
        return report

    async def shutdown(self) -> None:
        """Close the connection dbinit kept for readiness checks."""
        await self._drop_probe()

    def _operation(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The ``dbinit_operation`` ``name`` (``verify`` at startup, ``readiness``): connect, then verify."""
        from dbinit.operations import Operations

        settings = self.settings
        return Operations(self._registry, settings).run(
            name, service=settings.service, database=settings.url.display_name
        )

    async def _connect(self) -> Probe:
        if self._probe is None:
            from dbinit.database import open_probe
            from dbinit.facts import probe_options

            heads = self._scripts.heads if self._scripts is not None else ()
            options = probe_options(self.settings, "ready", long_lived=True, heads=heads)
            self._probe = await open_probe(self.settings.url, options)
        return self._probe

    async def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
                await probe.close()

    # -- readiness ---------------------------------------------------------------

    def _remember(self, report: VerifyReport) -> None:
        """The startup report (a passing one) is the first readiness answer."""
        self._set(Readiness.of(report))
        self._logged_state = (200, "")

    def _set(self, answer: Readiness) -> None:
        self._readiness = answer
        self._checked_at = self._clock()

    async def readiness(self) -> Readiness:
        """The readiness answer, re-verified at most once per cache period."""
        if self._fresh():
            assert self._readiness is not None
            return self._readiness
        async with self._lock:
            if self._fresh():  # another request refreshed it while we waited
                assert self._readiness is not None
                return self._readiness
            await self._refresh()
            assert self._readiness is not None
            return self._readiness

    def _fresh(self) -> bool:
        return (
            self._checked_at is not None
            and self._clock() - self._checked_at < self.settings.readiness_cache
        )

    async def _refresh(self) -> None:
        from dbinit.verify import verify

        if self._registry is None or self._scripts is None:
            self._set(Readiness("not_started"))
            return
        try:
            with self._operation("readiness"):  # reconnecting too: an unreachable database is observed
                probe = await self._connect()
                report = await verify(
                    self.settings, self._registry, self.log, scripts=self._scripts, probe=probe, quiet=True,
                    operation=None,
                )
        except Exception as exc:
            await self._drop_probe()  # a broken connection is reopened next time
            self._refresh_failed(exc)
            return
        answer = Readiness.of(report)
        self._log_change(answer.http_status, report.message, report.hint)
        self._set(answer)

    def _refresh_failed(self, exc: Exception) -> None:
        """A re-check that raised: 503 with the reason as JSON, cached like any answer."""
        status: ReadinessStatus
        if isinstance(exc, DbinitError):
            message, hint = exc.message, exc.hint
            status = _READINESS_STATUS.get(exc.exit_code, "error")
            self._log_change(503, message, hint)
        else:
            message, hint = f"internal error (a bug in dbinit): {type(exc).__name__}: {exc}", ""
            status = "error"
            self._log_change(503, message, hint, exc_info=exc)
        error = ReadinessError(self._redactor.text(message), self._redactor.text(hint), type(exc).__name__)
        self._set(Readiness(status, error=error))

    def _log_change(
        self, status: int, message: str, hint: str, exc_info: BaseException | None = None
    ) -> None:
        """Readiness re-checks are quiet; a change of state (status or reason) is logged once."""
        state = (status, "" if status == 200 else message)
        if state == self._logged_state:
            return
        self._logged_state = state
        if status == 200:
            self.log.info("Database readiness restored", message=message)
        else:
            extra = {"exc_info": exc_info} if exc_info is not None else {}
            self.log.error("Database readiness lost", reason=message, hint=hint, **extra)

    # -- the ways in -----------------------------------------------------------------

    def lifespan(self, app_lifespan: AppLifespan | None = None) -> AppLifespan:
        """A Starlette/FastAPI ``lifespan``: verify, then ``app_lifespan``.

        A failure raises :class:`StartupFailed`; Starlette sends it in
        ``lifespan.startup.failed`` (as a traceback: :meth:`middleware`
        makes it the one line).
        """

        @contextlib.asynccontextmanager
        async def dbinit_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            report = await self.startup()
            try:
                state = getattr(app, "state", None)
                if state is not None:
                    state.dbinit = report
                if app_lifespan is None:
                    yield {"dbinit": report}
                else:
                    async with app_lifespan(app) as app_state:
                        yield {**(app_state or {}), "dbinit": report}
            finally:
                await self.shutdown()

        return dbinit_lifespan

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """For ``app.add_middleware(gate.middleware)``: probes and clean failure messages.

        The lifespan itself comes from :meth:`lifespan`.
        """
        return GateMiddleware(self, app, handle_lifespan=False)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Any ASGI 3 app: verification at startup, probes, everything else untouched."""
        return GateMiddleware(self, app, handle_lifespan=True)


class GateMiddleware:
    """The ASGI side of :class:`DatabaseGate`."""

    def __init__(self, gate: DatabaseGate, app: ASGIApp, *, handle_lifespan: bool) -> None:
        self.gate = gate
        self.app = app
        self.handle_lifespan = handle_lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            if self.handle_lifespan:
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, self._clean_failures(send))
            return
        if kind == "http" and scope.get("path") in self._probe_paths():
            await self._probe(scope, send)
            return
        endpoint = self.gate.endpoints.get(scope.get("path", "")) if kind == "http" else None
        if endpoint is not None:
            await endpoint(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _probe_paths(self) -> tuple[str | None, str | None]:
        # Resolved at startup. Settings that failed to load failed the lifespan, so the
        # server never serves; without a lifespan (--lifespan off) the error surfaces here.
        settings = self.gate.settings
        return (settings.readiness_path, settings.liveness_path)

    def _clean_failures(self, send: Send) -> Send:
        """Replace Starlette's traceback text by one line when the failure was ours."""

        async def clean_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.gate.failure is not None:
                message = {**message, "message": str(self.gate.failure)}
            await send(message)

        return clean_send

    async def _probe(self, scope: Scope, send: Send) -> None:
        settings = self.gate.settings
        body: dict[str, object]
        if scope["path"] == settings.liveness_path:
            # never the database: nothing of it to show, whatever DBINIT_READINESS_DETAILS says
            status, body = 200, {"status": "alive", "service": settings.service}
        else:
            answer = await self.gate.readiness()
            status = answer.http_status
            body = answer.body(details=settings.readiness_details, service=settings.service)
        payload = json.dumps(body, default=str).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"cache-control", b"no-store")],
        })
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup", message
        try:
            inner, started = await self._start(scope)
        except BaseException as exc:
            # whatever failed, the server hears startup.failed: raising alone would read
            # as "lifespan unsupported" under uvicorn's --lifespan auto, which then serves
            failure = self.gate.failure if self.gate.failure is not None else self.gate._record_failure(exc)
            await send({"type": "lifespan.startup.failed", "message": str(failure)})
            await self.gate.shutdown()
            raise
        if started is not None:  # the app's own startup failed
            await self.gate.shutdown()
            await send({"type": "lifespan.startup.failed", "message": started})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown", message
        stopped = await inner.shutdown()
        await self.gate.shutdown()
        if stopped is not None:
            await send({"type": "lifespan.shutdown.failed", "message": stopped})
        else:
            await send({"type": "lifespan.shutdown.complete"})

    async def _start(self, scope: Scope) -> tuple[_InnerLifespan, str | None]:
        """Verify, then start the wrapped app's own lifespan (its failure message, if any)."""
        report = await self.gate.startup()
        if isinstance(scope.get("state"), dict):
            scope["state"]["dbinit"] = report
        state = getattr(self.app, "state", None)
        if state is not None:
            state.dbinit = report
        inner = _InnerLifespan(self.app, scope)
        return inner, await inner.startup()


class _InnerLifespan:
    """Drives the wrapped app's own lifespan, if it has one."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        await self.app(self.scope, self.to_app.get, self.from_app.put)

    async def _next(self) -> Message | None:
        """The app's next message, or None if it returned or raised instead."""
        assert self.task is not None
        getter = asyncio.ensure_future(self.from_app.get())
        await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def startup(self) -> str | None:
        """None when started (or lifespan unsupported); the failure message otherwise."""
        self.task = asyncio.ensure_future(self._run())
        await self.to_app.put({"type": "lifespan.startup"})
        message = await self._next()
        if message is None:
            # The app returned or raised without answering: lifespan unsupported
            # (as uvicorn's "auto" mode judges it). A startup.failed it sent is
            # answered below, so a real app failure is never lost.
            self.supported = False
            with contextlib.suppress(Exception):
                self.task.result()
            return None
        if message["type"] == "lifespan.startup.failed":
            return str(message.get("message") or "application startup failed")
        return None

    async def shutdown(self) -> str | None:
        if not self.supported or self.task is None:
            return None
        await self.to_app.put({"type": "lifespan.shutdown"})
        message = await self._next()
        if message is None:
            error = self.task.exception() if not self.task.cancelled() else None
            return f"application shutdown raised {error!r}" if error else None
        if message["type"] == "lifespan.shutdown.failed":
            return str(message.get("message") or "application shutdown failed")
        # it answered shutdown.complete: how its task ends after that changes nothing here
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, timeout=5)
        return None


def lifespan(app_lifespan: AppLifespan | None = None, **options: Any) -> AppLifespan:
    """Shortcut: ``FastAPI(lifespan=dbinit.asgi.lifespan(my_lifespan))``."""
    return DatabaseGate(**options).lifespan(app_lifespan)
