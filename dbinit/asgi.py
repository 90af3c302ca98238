"""ASGI integration: a service accepts no request before its database verifies.

Verification only, never migration, whatever ``DB_FORCE_RECREATE`` says.
Two ways in, same behaviour, both built on :class:`DatabaseGate`:

FastAPI / Starlette::

    gate = DatabaseGate()                                  # settings from the environment
    app = FastAPI(lifespan=gate.lifespan(app_lifespan))    # verify, then the app's own lifespan
    app.add_middleware(gate.middleware)                    # clean failure message, probes

Any ASGI 3 application::

    app = DatabaseGate().wrap(app)

A failed verification sends ``lifespan.startup.failed`` naming the failed
check and its hint, so the server exits non-zero before it serves. An
unreachable database is retried with backoff until ``DBINIT_STARTUP_TIMEOUT``.
After success the report is on ``app.state.dbinit`` (Starlette), in the
lifespan state (``request.state.dbinit``) and on ``gate.report``.

Probes, off by default (``DBINIT_READINESS_PATH``, ``DBINIT_LIVENESS_PATH``):
readiness re-verifies on one kept connection, at most once per
``DBINIT_READINESS_CACHE`` seconds whatever the request rate, and answers 200
or 503 with the report as JSON; liveness never touches the database.
Shutdown closes every connection dbinit opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from dbinit.errors import ConfigurationError, DatabaseUnreachable, DbinitError, NotReady

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import Probe
    from dbinit.pluginmanager import Registry
    from dbinit.report import VerifyReport
    from dbinit.scripts import MigrationScripts
    from dbinit.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


class StartupFailed(DbinitError):
    """The database did not verify at startup (an expected failure: no traceback)."""

    def __init__(self, cause: DbinitError) -> None:
        super().__init__(cause.message, hint=cause.hint)
        self.exit_code = cause.exit_code
        self.cause = cause

    def __str__(self) -> str:
        return startup_message(self.cause)


def startup_message(error: DbinitError) -> str:
    text = f"dbinit: database not ready, refusing to start: {error.message}"
    if error.hint:
        text += f" (hint: {error.hint})"
    return text


class DatabaseGate:
    """Verifies at startup, answers probes, closes its connection at shutdown."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        readiness_path: str | None = None,
        liveness_path: str | None = None,
        readiness_cache: float | None = None,
        startup_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._given_settings = settings
        self._overrides = {
            "readiness_path": readiness_path,
            "liveness_path": liveness_path,
            "readiness_cache": readiness_cache,
            "startup_timeout": startup_timeout,
        }
        self._clock = clock
        self._settings: Settings | None = None
        self._registry: Registry | None = None
        self._scripts: MigrationScripts | None = None
        self._probe: Probe | None = None
        self._log: FilteringBoundLogger | None = None
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._readiness: tuple[int, dict[str, object]] | None = None
        self.report: VerifyReport | None = None
        self.failure: DbinitError | None = None

    # -- configuration (resolved at startup, never at import) ------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from dbinit.settings import load_settings

            overrides = {k: v for k, v in self._overrides.items() if v is not None}
            if self._given_settings is not None:
                self._settings = self._given_settings.model_copy(update=overrides)
            else:
                self._settings = load_settings(**overrides)
        return self._settings

    @property
    def log(self) -> FilteringBoundLogger:
        if self._log is None:
            from dbinit.logs import get_logger

            self._log = get_logger(self.settings.service)
        return self._log

    # -- lifecycle ---------------------------------------------------------------

    async def startup(self) -> VerifyReport:
        """Verify, retrying an unreachable database until the startup timeout.

        Raises :class:`StartupFailed` (expected: not ready, unreachable,
        misconfigured); any other exception is a bug and propagates as is.
        """
        try:
            return await self._startup()
        except DbinitError as exc:
            self.failure = exc
            await self.shutdown()
            self.log.error("Database verification failed at startup - not starting",
                           reason=exc.message, hint=exc.hint)
            raise StartupFailed(exc) from None

    async def _startup(self) -> VerifyReport:
        from dbinit.pluginmanager import Registry
        from dbinit.verify import read_scripts, verify
        from dbinit.wait import backoff_delays

        settings = self.settings
        if settings.force_recreate:
            self.log.warning("DB_FORCE_RECREATE ignored: services only verify")
        self._registry = Registry.load(settings.plugins)
        self._scripts = read_scripts(settings)
        deadline = self._clock() + settings.startup_timeout
        delays = backoff_delays(initial=0.2)
        attempt = 0
        while True:
            attempt += 1
            try:
                probe = await self._connect()
                report = await verify(settings, self._registry, self.log, scripts=self._scripts, probe=probe)
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

    async def _connect(self) -> Probe:
        if self._probe is None:
            from dbinit.database import open_probe
            from dbinit.verify import probe_options

            options = probe_options(self.settings, "ready", long_lived=True)
            self._probe = await open_probe(self.settings.url, options)
        return self._probe

    async def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
                await probe.close()

    # -- readiness ---------------------------------------------------------------

    def _remember(self, report: VerifyReport) -> None:
        self._readiness = (200 if report.ok else 503, report.to_json())
        self._checked_at = self._clock()

    async def readiness(self) -> tuple[int, dict[str, object]]:
        """(status, body): re-verified at most once per cache period."""
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
            self._readiness = (503, {"ok": False, "action": "failed", "message": "not started"})
            self._checked_at = self._clock()
            return
        try:
            probe = await self._connect()
            report = await verify(
                self.settings, self._registry, self.log, scripts=self._scripts, probe=probe, quiet=True
            )
        except DatabaseUnreachable as exc:
            await self._drop_probe()
            self._log_change(503, exc.message, exc.hint)
            self._readiness = (503, {"ok": False, "action": "failed", "message": exc.message,
                                     "hint": exc.hint, "service": self.settings.service})
            self._checked_at = self._clock()
            return
        except Exception:
            await self._drop_probe()  # a broken connection is reopened next time
            raise
        self._log_change(200 if report.ok else 503, report.message, report.hint)
        self._remember(report)

    def _log_change(self, status: int, message: str, hint: str) -> None:
        """Readiness re-checks are quiet; a change of state is logged once."""
        previous = self._readiness[0] if self._readiness is not None else None
        if status == previous:
            return
        if status == 200:
            self.log.info("Database readiness restored", message=message)
        else:
            self.log.error("Database readiness lost", reason=message, hint=hint)

    # -- the two ways in -----------------------------------------------------------

    def lifespan(self, app_lifespan: AppLifespan | None = None) -> AppLifespan:
        """A Starlette/FastAPI ``lifespan``: verify, then ``app_lifespan``."""

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
        await self.app(scope, receive, send)

    def _probe_paths(self) -> tuple[str | None, str | None]:
        try:
            settings = self.gate.settings
        except ConfigurationError:
            return (None, None)
        return (settings.readiness_path, settings.liveness_path)

    def _clean_failures(self, send: Send) -> Send:
        """Replace Starlette's traceback text by one line when the failure was ours."""

        async def clean_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.gate.failure is not None:
                message = {**message, "message": startup_message(self.gate.failure)}
            await send(message)

        return clean_send

    async def _probe(self, scope: Scope, send: Send) -> None:
        settings = self.gate.settings
        if scope["path"] == settings.liveness_path:
            status, body = 200, {"status": "alive", "service": settings.service}
        else:
            status, body = await self.gate.readiness()
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
            report = await self.gate.startup()
        except StartupFailed as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        if isinstance(scope.get("state"), dict):
            scope["state"]["dbinit"] = report
        state = getattr(self.app, "state", None)
        if state is not None:
            state.dbinit = report
        inner = _InnerLifespan(self.app, scope)
        started = await inner.startup()
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
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, timeout=5)
        return None


def lifespan(app_lifespan: AppLifespan | None = None, **options: Any) -> AppLifespan:
    """Shortcut: ``FastAPI(lifespan=dbinit.asgi.lifespan(my_lifespan))``."""
    return DatabaseGate(**options).lifespan(app_lifespan)
