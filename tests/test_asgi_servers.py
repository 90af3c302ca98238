"""The example FastAPI service under real ASGI servers (uvicorn, hypercorn), as subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.plugins.databases import TestDatabase, clean_env, run_dbinit

SERVERS = {
    "uvicorn-on": ["-m", "uvicorn", "app:app", "--lifespan", "on", "--host", "127.0.0.1", "--port"],
    "uvicorn-auto": ["-m", "uvicorn", "app:app", "--lifespan", "auto", "--host", "127.0.0.1", "--port"],
    # hypercorn with worker processes (the default -w 1) exits 0 after a failed
    # lifespan startup; in-process (-w 0) it exits 1. See README.
    "hypercorn": ["-m", "hypercorn", "-w", "0", "app:app", "--bind"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    server: str, project: Path, database: TestDatabase, **env: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    argv = [sys.executable, *SERVERS[server]]
    argv.append(f"127.0.0.1:{port}" if server == "hypercorn" else str(port))
    process = subprocess.Popen(
        argv,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(
            DATABASE_URL=database.url,
            DBINIT_READINESS_PATH="/readyz",
            DBINIT_LIVENESS_PATH="/livez",
            DBINIT_READINESS_CACHE="0.2",
            **env,
        ),
    )
    return process, port


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def serving(port: int) -> bool:
    try:
        return get(port, "/livez")[0] == 200
    except (OSError, ValueError):
        return False


@pytest.mark.parametrize("server", list(SERVERS))
def test_server_refuses_to_start_on_an_unmigrated_database(
    server: str, project: Path, database: TestDatabase
) -> None:
    process, port = start(server, project, database)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0, output
    assert "dbinit.E002" in output
    assert "migration job" in output  # the hint
    if server.startswith("uvicorn"):
        # an expected failure, said in one line (hypercorn prints its own
        # LifespanFailureError traceback for any startup.failed, whatever the app does)
        assert "Traceback" not in output
        assert "dbinit: database not ready, refusing to start" in output
    assert not serving(port)


@pytest.mark.parametrize("server", ["uvicorn-on", "hypercorn"])
def test_server_serves_then_readiness_follows_the_database(
    server: str, project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    process, port = start(server, project, database)
    try:
        assert wait_until(lambda: serving(port) or process.poll() is not None), "server did not start"
        assert process.poll() is None
        assert get(port, "/readyz") == (200, {"ok": True, "status": "ready", "failed": [],
                "verdict": "at_head"})
        assert get(port, "/")[1] == {"service": "orders", "revision": "8d3f6b2a9c11"}
        # another release's job moves the database to a revision this image does not know
        database.sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        assert wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10)
        assert get(port, "/readyz") == (503, {"ok": False, "status": "not_ready", "failed": ["dbinit.E004"],
                "verdict": "ahead_unknown"})
        assert get(port, "/livez")[0] == 200  # liveness never depends on the database
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "Database verification successful" in output
    if database.backend == "postgresql":
        leftover = database.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbinit-ready:%'"
        )
        assert leftover == [(0,)]


@pytest.mark.parametrize("details", [False, True], ids=["default", "details"])
def test_readiness_body_names_the_database_only_with_details(
    details: bool, project: Path, pg_database: TestDatabase
) -> None:
    """What anyone reaching the public port reads on /readyz, and what DBINIT_READINESS_DETAILS adds."""
    import dataclasses

    assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    parsed = dataclasses.replace(pg_database.parsed, host="localhost")  # a host to recognise
    url = parsed.for_sqlalchemy(async_driver=True)
    address = (parsed.host, str(parsed.port), parsed.database, parsed.username)
    env = {"DBINIT_READINESS_DETAILS": "true"} if details else {}
    process, port = start("uvicorn-on", project, TestDatabase("postgresql", url), **env)
    try:
        assert wait_until(lambda: serving(port) or process.poll() is not None), "server did not start"
        ready = get(port, "/readyz")
        pg_database.sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        assert wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10)
        not_ready = get(port, "/readyz")
        alive = get(port, "/livez")
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert alive == (200, {"status": "alive", "service": "orders"})
    if not details:
        assert ready == (200, {"ok": True, "status": "ready", "failed": [], "verdict": "at_head"})
        assert not_ready == (503, {"ok": False, "status": "not_ready", "failed": ["dbinit.E004"],
                "verdict": "ahead_unknown"})
        for part in address:
            assert part and part not in json.dumps([ready, not_ready, alive]), part
        return
    (status, body), (status_after, body_after) = ready, not_ready
    assert status == 200 and (body["ok"], body["status"], body["failed"]) == (True, "ready", [])
    assert body["database"] == f"localhost:{parsed.port}/{parsed.database}"
    assert body["current_revision"] == "8d3f6b2a9c11" and body["head_revisions"] == ["8d3f6b2a9c11"]
    assert status_after == 503 and body_after["failed"] == ["dbinit.E004"]
    assert "dbinit.E004" in str(body_after["message"]) and body_after["current_revision"] == "ffffffffffff"
