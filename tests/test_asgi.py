"""The ASGI integration without a server: the lifespan protocol message by message,
composition with an app's own lifespan, the readiness cache, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbinit.asgi import DatabaseGate, StartupFailed
from dbinit.errors import ConfigurationError
from dbinit.settings import load_settings
from tests.plugins.databases import SECRET, TestDatabase, run_dbinit


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
        assert await http_get(app, "/readyz") == (200, {"ok": True, "status": "ready", "failed": [],
                "verdict": "at_head"})
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
            assert (status, body) == (503, {"ok": False, "status": "not_ready", "failed": ["dbinit.E004"],
                    "verdict": "ahead_unknown"})
            await gate.shutdown()
            return counts

        counts = asyncio.run(scenario())
    assert counts == [1, 1, 2]
    assert proxy.messages["X"] == 1  # the one kept connection was terminated at shutdown


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not reached")


def test_readiness_shows_the_database_only_with_details(project: Path, pg_database: TestDatabase) -> None:
    """The probe is on the public port: by default, a verdict; the address only when turned on."""
    from dbinit.urls import DatabaseURL
    from tests.plugins.pgproxy import pg_proxy

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    clock = FakeClock()
    with pg_proxy(pg_database.url) as proxy:
        # a recognisable address: host "localhost", the proxy's port, the test database's name
        url = dataclasses.replace(DatabaseURL.parse(proxy.url_for(pg_database.url)), host="localhost")
        database, user = pg_database.parsed.database, url.username or ""
        address = f"localhost:{proxy.port}/{database}"
        gates = {
            details: DatabaseGate(
                _settings(project, url.for_sqlalchemy(async_driver=True), readiness_details=details),
                readiness_path="/readyz",
                readiness_cache=5.0,
                clock=clock,
            )
            for details in (False, True)
        }

        async def answers() -> dict[bool, tuple[int, dict[str, Any]]]:
            return {details: await http_get(gate.wrap(_no_app), "/readyz") for details, gate in gates.items()}

        async def scenario() -> list[dict[bool, tuple[int, dict[str, Any]]]]:
            for gate in gates.values():
                await gate.startup()
            seen = [await answers()]
            await asyncio.to_thread(
                pg_database.sql, "UPDATE alembic_version SET version_num = 'ffffffffffff'"
            )
            clock.now += 5.1
            seen.append(await answers())
            proxy.stop()
            clock.now += 5.1
            await answers()  # the kept connection is found dropped...
            clock.now += 5.1
            seen.append(await answers())  # ...and a new one refused
            for gate in gates.values():
                await gate.shutdown()
            return seen

        ready, not_ready, unreachable = asyncio.run(scenario())

    assert ready[False] == (200, {"ok": True, "status": "ready", "failed": [], "verdict": "at_head"})
    assert not_ready[False] == (503, {"ok": False, "status": "not_ready", "failed": ["dbinit.E004"],
            "verdict": "ahead_unknown"})
    assert unreachable[False] == (503, {"ok": False, "status": "unreachable", "failed": [], "verdict": None})
    for _, body in (ready[False], not_ready[False], unreachable[False]):
        text = json.dumps(body)
        for secret in ("localhost", "127.0.0.1", str(proxy.port), database, user, "revision"):
            assert secret not in text, (secret, text)

    status, body = ready[True]
    assert status == 200 and (body["ok"], body["status"], body["failed"]) == (True, "ready", [])
    assert body["database"] == address and body["current_revision"] == "8d3f6b2a9c11"
    status, body = not_ready[True]
    assert status == 503 and (body["ok"], body["status"]) == (False, "not_ready")
    assert body["failed"] == ["dbinit.E004"]
    assert body["current_revision"] == "ffffffffffff" and "dbinit.E004" in body["message"]
    assert body["database"] == address and body["hint"]
    status, body = unreachable[True]
    assert status == 503 and (body["ok"], body["status"], body["failed"]) == (False, "unreachable", [])
    assert body["error"] == "DatabaseUnreachable" and f"cannot connect to {address}" in body["message"]


# -- every startup failure ends in startup.failed (the lifespan protocol, no server) --------

SECRET_PG_URL = f"postgresql+asyncpg://svc:{SECRET}@127.0.0.1:1/orders"
BOOM_PLUGIN = '''
from dbinit import hookimpl
from dbinit.checks import Check

def explode(facts):
    raise RuntimeError("plugin exploded")

@hookimpl
def dbinit_checks():
    return [Check(id="gateunit.E001", name="explodes", func=explode, requires_database=False)]
'''
#: case -> (environment, what the message names, exit code the failure carries)
STARTUP_FAILURES: dict[str, tuple[dict[str, str], str, int]] = {
    "bad-setting": ({"DBINIT_LOG_LEVEL": "loud", "DATABASE_URL": SECRET_PG_URL}, "DBINIT_LOG_LEVEL", 2),
    "malformed-url": ({"DATABASE_URL": f"postgresql://u:{SECRET}@host:notaport/db"}, "invalid port", 2),
    "missing-url-file": ({"DATABASE_URL_FILE": "{tmp}/missing"}, "DATABASE_URL_FILE", 2),
    "bad-timeout": ({"DBINIT_STARTUP_TIMEOUT": "abc"}, "DBINIT_STARTUP_TIMEOUT", 2),
    "bad-log-level": ({"DBINIT_LOG_LEVEL": "verbose"}, "invalid setting DBINIT_LOG_LEVEL", 2),
    "unreachable": ({"DATABASE_URL": SECRET_PG_URL, "DBINIT_STARTUP_TIMEOUT": "0.2"}, "gave up after", 3),
    "unmigrated": ({"DATABASE_URL": "sqlite+aiosqlite:///{tmp}/db.sqlite3"}, "dbinit.E002", 4),
    "plugin-raises": (
        {"DATABASE_URL": "sqlite+aiosqlite:///{tmp}/db.sqlite3", "DBINIT_PLUGINS": "gate_unit_boom"},
        "a bug in a plugin",
        1,
    ),
    # a non-dbinit exception inside the gate, its text holding the password
    "dbinit-bug": ({"DATABASE_URL": SECRET_PG_URL}, "internal error (a bug in dbinit", 1),
}
WAYS_IN = ["wrap", "starlette", "starlette+middleware"]


@pytest.fixture
def gate_env(monkeypatch: pytest.MonkeyPatch, project: Path) -> pytest.MonkeyPatch:
    """The project as working directory, no dbinit settings from outside."""
    seed_names = ("SERVICE_NAME", "ENVIRONMENT", "DB_FORCE_RECREATE")
    for name in list(os.environ):
        ours = name.startswith(("DBINIT_", "DATABASE_URL")) and name != "DBINIT_TEST_POSTGRES_URL"
        if ours or name in seed_names:
            monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    return monkeypatch


@pytest.fixture
def gate_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the gate logs, rendered as on a console (no colours): dbinit's output set by the caller."""
    from dbinit import logs

    stream = io.StringIO()
    monkeypatch.setattr(logs, "_output", None)  # put back as it was at teardown
    logs.configure_logging("console", stream=stream)
    yield stream


def gated_app(way: str, gate: DatabaseGate, ran: list[str]) -> Any:
    if way == "wrap":

        async def service(scope: Any, receive: Any, send: Any) -> None:
            ran.append(scope["type"])

        return gate.wrap(service)
    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def own(app: Any) -> AsyncIterator[None]:
        ran.append("own lifespan")
        yield

    app = Starlette(lifespan=gate.lifespan(own))
    if way == "starlette+middleware":
        app.add_middleware(gate.middleware)
    return app


def _broken_clock() -> float:
    raise RuntimeError(f"clock broke near {SECRET}")


@pytest.mark.parametrize("case", list(STARTUP_FAILURES))
@pytest.mark.parametrize("way", WAYS_IN)
def test_every_startup_failure_sends_startup_failed(
    way: str, case: str, gate_env: pytest.MonkeyPatch, gate_log: io.StringIO, tmp_path: Path
) -> None:
    env, names, exit_code = STARTUP_FAILURES[case]
    for name, value in env.items():
        gate_env.setenv(name, value.replace("{tmp}", str(tmp_path)))
    if case == "plugin-raises":
        (tmp_path / "gate_unit_boom.py").write_text(BOOM_PLUGIN)
        gate_env.syspath_prepend(str(tmp_path))
    ran: list[str] = []
    gate = DatabaseGate(clock=_broken_clock) if case == "dbinit-bug" else DatabaseGate()
    sent, error = asyncio.run(drive_lifespan(gated_app(way, gate, ran)))

    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert isinstance(error, StartupFailed) and error is gate.failure  # raised after startup.failed
    assert ran == []  # neither the app's own lifespan nor anything else of it ran
    assert int(gate.failure.exit_code) == exit_code
    assert gate.failure.expected is (exit_code != 1)
    message, logged = sent[0]["message"], gate_log.getvalue()
    if way == "starlette":  # Starlette's Router sends its traceback text, ending in our line
        assert message.rstrip().endswith(str(gate.failure))
    else:
        assert message == str(gate.failure) and "\n" not in message and "Traceback" not in message
    assert names in message and "refusing to start" in message
    # what kind of failure, as the exit code says: a settings error is never "database not ready"
    kinds = {2: "configuration error", 3: "database unreachable", 4: "database not ready"}
    for code, kind in kinds.items():
        assert (f"dbinit: {kind}, refusing to start" in message) is (code == exit_code), message
    assert SECRET not in message and SECRET not in logged
    if case == "dbinit-bug":
        assert "clock broke near ***" in message  # redacted, not dropped
    # a bug's traceback is logged once; an expected failure logs one line, no traceback
    assert logged.count("Traceback (most recent call last)") == (1 if exit_code == 1 else 0), logged
    assert logged.count("not starting") == 1, logged


def test_settings_are_resolved_once_and_their_failure_never_hidden(
    gate_env: pytest.MonkeyPatch, gate_log: io.StringIO
) -> None:
    gate_env.setenv("DBINIT_STARTUP_TIMEOUT", "abc")
    ran: list[str] = []
    gate = DatabaseGate(readiness_path="/readyz")
    app = gated_app("wrap", gate, ran)
    sent, error = asyncio.run(drive_lifespan(app))
    assert sent[0]["type"] == "lifespan.startup.failed" and isinstance(error, StartupFailed)
    first = error.cause
    gate_env.setenv("DBINIT_STARTUP_TIMEOUT", "5")  # fixed in the environment: not read again
    with pytest.raises(ConfigurationError) as again:
        _ = gate.settings
    assert again.value is first
    # a server that ignored startup.failed would still not get a silent pass-through:
    # the probe paths cannot be known, so every request fails loudly
    for path in ("/readyz", "/"):
        with pytest.raises(ConfigurationError):
            asyncio.run(http_get(app, path))
    assert ran == []


def test_the_failure_path_survives_a_broken_logger(gate_env: pytest.MonkeyPatch) -> None:
    import structlog

    def broken(logger: Any, method: str, event: Any) -> Any:
        raise RuntimeError("logging is broken")

    structlog.configure(processors=[broken])
    try:
        gate_env.setenv("DBINIT_LOG_LEVEL", "loud")
        sent, error = asyncio.run(drive_lifespan(DatabaseGate().wrap(_no_app)))
    finally:
        structlog.reset_defaults()
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "invalid setting DBINIT_LOG_LEVEL" in sent[0]["message"]
    assert isinstance(error, StartupFailed)


def test_a_cancelled_startup_still_sends_startup_failed(
    gate_env: pytest.MonkeyPatch, gate_log: io.StringIO, sqlite_database: TestDatabase
) -> None:
    gate_env.setenv("DATABASE_URL", sqlite_database.url)

    def cancelled() -> float:
        raise asyncio.CancelledError

    app = DatabaseGate(clock=cancelled).wrap(_no_app)

    async def scenario() -> tuple[list[dict[str, Any]], BaseException | None]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        sent: list[dict[str, Any]] = []
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await app(scope, inbox.get, lambda m: _append(sent, m))
        except BaseException as exc:  # the cancellation itself: what the test looks at
            return sent, exc
        return sent, None

    sent, error = asyncio.run(scenario())
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "startup interrupted (CancelledError)" in sent[0]["message"]
    assert isinstance(error, asyncio.CancelledError)  # propagates as itself
    assert "Startup interrupted" in gate_log.getvalue()


def test_a_readiness_recheck_that_raises_is_a_cached_503_logged_once(
    project: Path, sqlite_database: TestDatabase, gate_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dbinit.verify

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    clock = FakeClock()
    gate = DatabaseGate(
        _settings(project, sqlite_database.url),
        readiness_path="/readyz",
        readiness_cache=5.0,
        readiness_details=True,
        clock=clock,
    )
    app = gate.wrap(_no_app)
    calls: list[int] = []
    real_verify = dbinit.verify.verify

    async def broken_verify(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise RuntimeError("unexpected")

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        await gate.startup()
        monkeypatch.setattr(dbinit.verify, "verify", broken_verify)
        answers = []
        clock.now += 5.1
        answers += await asyncio.gather(*(http_get(app, "/readyz") for _ in range(20)))
        clock.now += 5.1
        answers.append(await http_get(app, "/readyz"))  # re-checked, same failure
        monkeypatch.setattr(dbinit.verify, "verify", real_verify)
        clock.now += 5.1
        answers.append(await http_get(app, "/readyz"))
        await gate.shutdown()
        return answers

    answers = asyncio.run(scenario())
    assert calls == [1, 1]  # 21 requests, two periods: two re-checks
    assert [status for status, _ in answers] == [503] * 21 + [200]
    body = answers[0][1]
    assert body["ok"] is False and body["status"] == "error" and body["error"] == "RuntimeError"
    assert body["message"] == "internal error (a bug in dbinit): RuntimeError: unexpected"
    logged = gate_log.getvalue()
    assert logged.count("Database readiness lost") == 1, logged
    assert logged.count("Traceback (most recent call last)") == 1, logged
    assert logged.count("Database readiness restored") == 1, logged
