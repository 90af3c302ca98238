"""The ASGI integration without a server: the lifespan protocol message by message,
composition with an app's own lifespan, the readiness cache, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dbinit.asgi import DatabaseGate, StartupFailed
from dbinit.settings import load_settings
from tests.plugins.databases import TestDatabase, run_dbinit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def drive_lifespan(
    app: Any, *, shutdown: bool = True
) -> tuple[list[dict[str, Any]], BaseException | None]:
    """Act as the server: send startup (and shutdown), record every message the app sends."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup"):
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, send))
    await asyncio.wait({task, asyncio.ensure_future(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if shutdown and sent and sent[-1]["type"] == "lifespan.startup.complete":
        await inbox.put({"type": "lifespan.shutdown"})
    error: BaseException | None = None
    try:
        await asyncio.wait_for(task, timeout=30)
    except Exception as exc:
        error = exc
    return sent, error


async def http_get(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def _settings(project: Path, url: str, **extra: Any) -> Any:
    with contextlib.chdir(project):
        return load_settings(database_url=url, alembic_ini=project / "alembic.ini", **extra)


def test_wrapper_fails_startup_with_the_check_and_hint(project: Path, database: TestDatabase) -> None:
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    gate = DatabaseGate(_settings(project, database.url))
    sent, error = asyncio.run(drive_lifespan(gate.wrap(inner)))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "dbinit.E002" in sent[0]["message"]
    assert "migration job" in sent[0]["message"]  # the hint
    assert "Traceback" not in sent[0]["message"]
    assert isinstance(error, StartupFailed)  # re-raised after startup.failed, as Starlette does
    assert calls == []  # the app's own lifespan never ran


def test_wrapper_success_composes_with_inner_lifespan_and_probes(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    events: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            events.append(f"inner startup sees report={scope['state']['dbinit'].action}")
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            events.append("inner shutdown")
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"app": true}'})

    gate = DatabaseGate(_settings(project, database.url), readiness_path="/readyz", liveness_path="/livez")
    app = gate.wrap(inner)

    async def scenario() -> list[dict[str, Any]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[dict[str, Any]] = []
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await inbox.put({"type": "lifespan.startup"})
        task = asyncio.ensure_future(app(scope, inbox.get, lambda m: _append(sent, m)))
        while not sent:
            await asyncio.sleep(0.01)
        assert await http_get(app, "/") == (200, {"app": True})
        status, body = await http_get(app, "/readyz")
        assert status == 200 and body["action"] == "verified" and body["current_revision"] == "8d3f6b2a9c11"
        assert await http_get(app, "/livez") == (200, {"status": "alive", "service": "orders"})
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)
        return sent

    sent = asyncio.run(scenario())
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["inner startup sees report=verified", "inner shutdown"]
    assert gate.report is not None and gate.report.ok


async def _append(sent: list[dict[str, Any]], message: dict[str, Any]) -> None:
    sent.append(message)


def test_wrapper_passes_through_an_app_without_lifespan_support(
    project: Path, sqlite_database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"

    sent, error = asyncio.run(
        drive_lifespan(DatabaseGate(_settings(project, sqlite_database.url)).wrap(http_only))
    )
    assert error is None
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_starlette_lifespan_order_and_state(project: Path, database: TestDatabase) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    order: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Any) -> AsyncIterator[dict[str, str]]:
        order.append(f"app startup (dbinit report on app.state: {app.state.dbinit.action})")
        yield {"own": "state"}
        order.append("app shutdown")

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"own": request.state.own, "revision": request.state.dbinit.current_revision})

    gate = DatabaseGate(_settings(project, database.url))
    app = Starlette(routes=[Route("/", home)], lifespan=gate.lifespan(app_lifespan))
    with TestClient(app) as client:
        order.append("serving")
        assert client.get("/").json() == {"own": "state", "revision": "8d3f6b2a9c11"}
    order.append("after shutdown")
    assert order == [
        "app startup (dbinit report on app.state: verified)",
        "serving",
        "app shutdown",
        "after shutdown",
    ]
    assert gate._probe is None  # the kept connection was closed


def test_starlette_lifespan_failure_never_runs_app_startup(project: Path, database: TestDatabase) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    started: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Any) -> AsyncIterator[None]:
        started.append("app")
        yield

    gate = DatabaseGate(_settings(project, database.url))
    app = Starlette(lifespan=gate.lifespan(app_lifespan))
    app.add_middleware(gate.middleware)
    with pytest.raises(StartupFailed) as failure, TestClient(app):
        pass
    assert "dbinit.E002" in str(failure.value)
    assert started == []


def test_readiness_is_cached_one_round_trip_per_period(project: Path, pg_database: TestDatabase) -> None:
    from tests.plugins.pgproxy import pg_proxy

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    clock = FakeClock()
    with pg_proxy(pg_database.url) as proxy:
        gate = DatabaseGate(
            _settings(project, proxy.url_for(pg_database.url)),
            readiness_path="/readyz",
            readiness_cache=5.0,
            clock=clock,
        )
        app = gate.wrap(_no_app)

        async def scenario() -> list[int]:
            counts = []
            await gate.startup()
            counts.append(proxy.statements)  # startup verification
            results = await asyncio.gather(*(http_get(app, "/readyz") for _ in range(50)))
            assert {status for status, _ in results} == {200}
            counts.append(proxy.statements)  # still cached from startup
            clock.now += 5.1
            results = await asyncio.gather(*(http_get(app, "/readyz") for _ in range(50)))
            assert {status for status, _ in results} == {200}
            counts.append(proxy.statements)  # one refresh for 50 concurrent requests
            await asyncio.to_thread(
                pg_database.sql, "UPDATE alembic_version SET version_num = 'ffffffffffff'"
            )
            clock.now += 5.1
            status, body = await http_get(app, "/readyz")
            assert status == 503 and "dbinit.E004" in body["message"]
            await gate.shutdown()
            return counts

        counts = asyncio.run(scenario())
    assert counts == [1, 1, 2]
    assert proxy.messages["X"] == 1  # the one kept connection was terminated at shutdown


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not reached")
