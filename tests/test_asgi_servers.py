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
        status, body = get(port, "/readyz")
        assert status == 200 and body["action"] == "verified"
        assert get(port, "/")[1] == {"service": "orders", "revision": "8d3f6b2a9c11"}
        # another release's job moves the database to a revision this image does not know
        database.sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        assert wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10)
        status, body = get(port, "/readyz")
        assert "dbinit.E004" in str(body["message"])
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
