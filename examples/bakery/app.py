"""The bakery orders service: a FastAPI app that never starts on an unready database.

    uvicorn app:app --workers 1     (after `dbinit migrate` has run, as the job does)

One worker per process: with ``--workers N`` (or ``WEB_CONCURRENCY=N``) a
refused startup stops uvicorn's supervisor, which exits 0 instead of 3; run
several replicas instead.

The three dbinit lines are marked. The readiness/liveness endpoints are on
because DBINIT_READINESS_PATH / DBINIT_LIVENESS_PATH are set (see k8s/).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from dbinit.asgi import DatabaseGate  # dbinit 1/3


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # the service's own startup: runs only after the database verified
    app.state.started = True
    yield


gate = DatabaseGate()  # dbinit 2/3: settings from the environment
app = FastAPI(title="bakery orders", lifespan=gate.lifespan(app_lifespan))  # dbinit 3/3
app.add_middleware(gate.middleware)  # optional: probes and a one-line failure message


@app.get("/")
async def index(request: Request) -> dict[str, object]:
    report = request.app.state.dbinit
    return {"service": report.service, "revision": report.current_revision}
