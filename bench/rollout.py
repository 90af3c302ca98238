"""A rollout of N replicas at once, measured: init containers waiting, a Job migrating.

    python bench/rollout.py [--replicas 100] [--max-connections 50] [--revisions 30] [--out bench/rollout]

Needs matplotlib for the picture, which is not in any of dbinit's extras
(install it into the bench's environment by hand: ``.venv/bin/pip install matplotlib``).

What it does, all on this machine (loopback):

1. starts its own throwaway PostgreSQL (the machine's binaries, as the test suite's
   ``throwaway_postgres``) with ``max_connections`` low and 3 slots reserved for
   superusers; the replicas and the Job log in as an ordinary role (``app``), the
   monitor as the superuser, in a reserved slot;
2. generates an Alembic project with ``bench/run.py``'s generator, each revision
   also sleeping on the server (``pg_sleep``) so that the migration takes a while;
3. t=0: starts N ``dbinit wait --until-verified`` processes (the init containers),
   staggered over ~1 s as a kubelet would, and the Job (``dbinit migrate``) a moment
   later (a Job that exits 3 or 6 is started again, as ``backoffLimit`` would); each
   waiter that exits 0 "becomes" its service: ``dbinit verify`` (the lifespan's
   verification) runs in its place;
4. samples the server every ~25 ms from the monitor connection: the client
   sessions in ``pg_stat_activity`` by ``application_name`` (waiters, services, the
   Job), the database's transactions (``xact_commit + xact_rollback``: each of the
   waiters' statements is a transaction of its own) and sessions opened;
5. reports the peak of connections, statements and connections per second during
   the wait, the time from the migration's last commit (the Job's "Migration
   applied" log line of the head, just before its COMMIT) to the last waiter ready,
   against the bound of the backoff cap, the "too many clients" refusals (SQLSTATE
   53300: the server's log, and the processes' logs) and the exit codes.

It writes ``OUT.png`` (connections and waiters ready over time), ``OUT.md`` (a
section for ``bench/RESULTS.md``) and ``OUT.json`` (the numbers). ``--dbinit-root``
runs another checkout's dbinit in the processes (a before/after comparison);
``--label`` names the run in the outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The role the replicas and the Job log in as (not a superuser: the reserved slots are not theirs).
APP_ROLE = "app"
DATABASE = "rollout"
RESERVED = 3
SAMPLE_EVERY = 0.025
SERVICE = "web"
#: The bench (orchestration, monitor) and the server it starts run at nice -10 when it can
#: (root), the replicas at this: in a cluster the database's CPU is not the pods'.
BENCH_NICE = -10
REPLICA_NICE = 0

ACTIVITY = """
SELECT clock_timestamp() AS at,
       coalesce(array_agg(application_name) FILTER (WHERE pid <> pg_backend_pid()), '{}') AS names,
       (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1) AS xacts,
       (SELECT sessions FROM pg_stat_database WHERE datname = $1) AS sessions
  FROM pg_stat_activity WHERE backend_type = 'client backend'
"""

REFUSED = re.compile(r"too many clients|remaining connection slots are reserved")

#: The replicas' parent: imports dbinit's wait/verify path once, then forks one process per
#: request (a JSON line on stdin: id, argv, env, cwd, log) that runs dbinit's command line as
#: ``dbinit ARGV`` would, and reports each start and exit (with the child's CPU time, from
#: ``wait4``) as JSON lines on stdout. 100 pods' interpreter start-up is spent on 100 nodes in a
#: cluster; here it would starve the 2 cores that also run the database.
ZYGOTE = r"""
import importlib, json, os, random, selectors, sys, time, traceback
WARM = ("asyncpg", "dbinit.management", "dbinit.management.base", "dbinit.commands.wait",
        "dbinit.commands.verify", "dbinit.wait", "dbinit.verify", "dbinit.facts", "dbinit.lock",
        "dbinit.pluginmanager", "dbinit.plugins.checks", "dbinit.plugins.commands",
        "dbinit.plugins.strategies", "dbinit.revisions.scripts", "dbinit.revisions.manifest")
for name in WARM:
    importlib.import_module(name)
from dbinit.management import ManagementUtility
out = os.fdopen(os.dup(1), "w", buffering=1)
null = os.open(os.devnull, os.O_RDONLY)
def emit(**event):
    out.write(json.dumps(event) + "\n")
children = {}
def start(request):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            random.seed()
            os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            sys.argv = request["argv"]
            try:
                code = ManagementUtility(request["argv"]).execute()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    children[pid] = request["id"]
    emit(id=request["id"], event="started", t=time.time())
selector = selectors.DefaultSelector()
selector.register(0, selectors.EVENT_READ)
buffer, open_input = b"", True
emit(event="ready", t=time.time())
while open_input or children:
    for _key, _ in selector.select(0.005) if open_input else ():
        data = os.read(0, 65536)
        if not data:
            open_input = False
            selector.unregister(0)
            break
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            start(json.loads(line))
    if not open_input:
        time.sleep(0.005)
    while children:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            break
        emit(id=children.pop(pid), event="exited", t=time.time(),
             code=os.waitstatus_to_exitcode(status), cpu=usage.ru_utime + usage.ru_stime)
"""


@dataclasses.dataclass
class Proc:
    """One process of the rollout: what it was, when it ran, how it ended."""

    kind: str  # "wait", "service", "migrate"
    index: int
    started: float
    ended: float | None = None
    code: int | None = None
    log: Path | None = None
    cpu: float | None = None  # user + system seconds (forked replicas only)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since t0
    total: int
    wait: int
    service: int
    migrate: int
    other: int
    xacts: int
    sessions: int


def classify(name: str) -> str:
    """Which part of the rollout a session belongs to, by its ``application_name``."""
    if name.startswith("dbinit-wait:") or (name.startswith("dbinit-verify:") and "-init#" in name):
        return "wait"
    if name.startswith("dbinit-verify:") and "-app#" in name:
        return "service"
    if name.startswith(("dbinit-migrate:", "dbinit-run:", "dbinit-history:", "dbinit-inspect:")) or (
        "-job#" in name
    ):
        return "migrate"
    return "other"


class Rollout:
    """The orchestration: processes started and watched, the server sampled."""

    def __init__(
        self, options: argparse.Namespace, project: Path, url: str, monitor_dsn: str, logs: Path
    ) -> None:
        self.options = options
        self.project = project
        self.url = url
        self.monitor_dsn = monitor_dsn
        self.logs = logs
        self.procs: list[Proc] = []
        self.samples: list[Sample] = []
        self.t0 = 0.0
        self.done = asyncio.Event()
        self.job_attempts = 0
        self.service_restarts = 0
        self.zygote: asyncio.subprocess.Process | None = None
        self.pending: dict[int, tuple[Proc, asyncio.Future[None]]] = {}

    def env(self, hostname: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBINIT_", "DATABASE_URL"))}
        env.update(
            DATABASE_URL=self.url,
            SERVICE_NAME=SERVICE,
            HOSTNAME=hostname,
            DBINIT_LOG_FORMAT="json",
            PYTHONPATH=str(self.options.dbinit_root),
        )
        return env

    def now(self) -> float:
        return time.time() - self.t0

    async def run_one(self, kind: str, index: int, hostname: str, *args: str) -> Proc:
        log = self.logs / f"{kind}-{index:03d}-{len(self.procs)}.log"
        proc = Proc(kind, index, self.now(), log=log)
        self.procs.append(proc)
        if self.zygote is not None:
            ident = len(self.procs)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pending[ident] = (proc, done)
            request = {
                "id": ident,
                "argv": ["dbinit", *args],
                "env": self.env(hostname),
                "cwd": str(self.project),
                "log": str(log),
                "nice": REPLICA_NICE,
            }
            assert self.zygote.stdin is not None
            self.zygote.stdin.write((json.dumps(request) + "\n").encode())
            await done
            return proc
        with log.open("w") as out:
            renice = ["nice", "-n", str(REPLICA_NICE - os.getpriority(os.PRIO_PROCESS, 0))]
            child = await asyncio.create_subprocess_exec(
                *renice,
                sys.executable,
                "-m",
                "dbinit",
                *args,
                cwd=self.project,
                env=self.env(hostname),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            proc.code = await child.wait()
        proc.ended = self.now()
        return proc

    async def replica(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        waiter = await self.run_one(
            "wait",
            index,
            f"{SERVICE}-{index:03d}-init",
            "wait",
            "--until-verified",
            "--timeout",
            str(self.options.wait_timeout),
        )
        if waiter.code != 0:
            return  # a permanent failure: the pod would not start (counted in the report)
        for _ in range(5):  # a failed start: the kubelet restarts the container
            service = await self.run_one("service", index, f"{SERVICE}-{index:03d}-app", "verify")
            if service.code == 0:
                return
            self.service_restarts += 1

    async def job(self, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(6):  # the Job's backoffLimit: 3 (unreachable) and 6 (lock) are retried
            self.job_attempts += 1
            proc = await self.run_one("migrate", self.job_attempts, f"{SERVICE}-migrate-job", "migrate")
            if proc.code not in (3, 6):
                return
            await asyncio.sleep(1.0)

    async def monitor(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.monitor_dsn)
        try:
            while not self.done.is_set():
                row = await connection.fetchrow(ACTIVITY, DATABASE)
                groups = {"wait": 0, "service": 0, "migrate": 0, "other": 0}
                for name in row["names"]:
                    groups[classify(name)] += 1
                at = row["at"].timestamp() - self.t0
                self.samples.append(
                    Sample(
                        at,
                        sum(groups.values()),
                        groups["wait"],
                        groups["service"],
                        groups["migrate"],
                        groups["other"],
                        int(row["xacts"] or 0),
                        int(row["sessions"] or 0),
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.done.wait(), SAMPLE_EVERY)
            await asyncio.sleep(1.5)  # the last sessions' statistics reach the server's counters
            row = await connection.fetchrow(ACTIVITY, DATABASE)
            last = self.samples[-1]
            self.samples.append(
                dataclasses.replace(
                    last,
                    at=row["at"].timestamp() - self.t0,
                    xacts=int(row["xacts"]),
                    sessions=int(row["sessions"]),
                )
            )
        finally:
            await connection.close()

    async def start_zygote(self) -> None:
        env = {**self.env("zygote"), "DATABASE_URL": ""}
        self.zygote = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ZYGOTE,
            cwd=self.project,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.zygote.stdout is not None
        ready = json.loads(await self.zygote.stdout.readline())
        assert ready["event"] == "ready", ready

    async def read_zygote(self) -> None:
        assert self.zygote is not None and self.zygote.stdout is not None
        while line := await self.zygote.stdout.readline():
            event = json.loads(line)
            proc, done = self.pending[event["id"]]
            if event["event"] == "started":
                proc.started = event["t"] - self.t0
            else:
                proc.ended, proc.code, proc.cpu = event["t"] - self.t0, event["code"], event["cpu"]
                del self.pending[event["id"]]
                done.set_result(None)

    async def run(self) -> None:
        reader = None
        if self.options.spawn == "fork":
            await self.start_zygote()
            reader = asyncio.create_task(self.read_zygote())
        self.t0 = time.time()
        monitor = asyncio.create_task(self.monitor())
        await asyncio.sleep(0.3)  # a baseline before the first process
        self.t0 += 0.3
        count = self.options.replicas
        tasks = [asyncio.create_task(self.replica(i, i * self.options.stagger / count)) for i in range(count)]
        tasks.append(asyncio.create_task(self.job(self.options.job_delay)))
        await asyncio.gather(*tasks)
        self.done.set()
        await monitor
        if self.zygote is not None:
            assert self.zygote.stdin is not None
            self.zygote.stdin.close()
            await self.zygote.wait()
        if reader is not None:
            await reader


# -- the setup: a server, a role, a project --------------------------------------------------------


def postgres_server(max_connections: int) -> Iterator[tuple[int, Path]]:
    from tests.plugins.faults import postgres_bindirs, throwaway_postgres

    bindirs = [b for b in postgres_bindirs() if "pgserver" not in str(b)] or postgres_bindirs()
    return throwaway_postgres(  # type: ignore[return-value]
        "dbinit-rollout-",
        ["--auth=trust"],
        server_options=f"-c max_connections={max_connections} "
        f"-c superuser_reserved_connections={RESERVED} -c log_connections=off",
        bindir=bindirs[0],
    )


async def admin(port: int, *statements: str, database: str = "postgres") -> list[Any]:
    import asyncpg

    connection = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database=database)
    try:
        return [await connection.fetchval(s) for s in statements]
    finally:
        await connection.close()


SLEEP_LINE = '    op.execute("SELECT pg_sleep({seconds})")\n'


def make_project(work: Path, revisions: int, url: str, seconds: float) -> Path:
    """``bench/run.py``'s project (the async template, one table per revision), each
    revision also sleeping ``seconds`` on the server; the manifest written as at image build."""
    import bench.run as generator

    generator.BIN = Path(sys.executable).parent
    project = generator.make_project(work, revisions, url)
    for path in sorted((project / "migrations" / "versions").glob("*.py")):
        text = path.read_text()
        marker = '    """Upgrade schema."""\n'
        assert marker in text, path
        path.write_text(text.replace(marker, marker + SLEEP_LINE.format(seconds=seconds), 1))
    return project


def dbinit_constants(root: Path) -> tuple[float, float]:
    """INITIAL_DELAY of ``wait --until-verified`` and MAX_DELAY of the dbinit under test."""
    code = (
        "import inspect, dbinit.wait as w; src = inspect.getsource(w.wait_until_verified); "
        "import re; m = re.search(r'initial=([0-9.]+)', src); "
        "print(float(m.group(1)) if m else w.INITIAL_DELAY, w.MAX_DELAY)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def git_describe(root: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out[:80] or str(root)


def machine() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    system = f"{platform.system()} {platform.release()}"
    return f"{system}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


# -- the numbers -------------------------------------------------------------------------------------


def events(proc: Proc, t0: float) -> list[tuple[float, dict[str, Any]]]:
    """The JSON log lines of a process, with their time since t0."""
    found = []
    for line in proc.text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if "timestamp" in event:
                stamp = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                found.append((stamp.timestamp() - t0, event))
    return found


def commit_time(rollout: Rollout, head: str) -> float:
    """When the Job applied the head revision: its "Migration applied" line (the COMMIT follows)."""
    for proc in rollout.procs:
        if proc.kind == "migrate":
            for at, event in events(proc, rollout.t0):
                if event.get("event") == "Migration applied" and event.get("revision") == head:
                    return at
    raise SystemExit("the Job never applied the head revision: see its log")


@dataclasses.dataclass(frozen=True)
class LastPoll:
    """A waiter's last poll (the one that saw the migration), from its log."""

    started: float  # its "Database verification mode" line
    ready: float  # "Database verified: ready"
    scheduled: float | None  # when the backoff said it would run (previous line + retry_in_s)
    attempts: int


def last_poll(proc: Proc, t0: float) -> LastPoll | None:
    lines = events(proc, t0)
    ready = [at for at, e in lines if e.get("event") == "Database verified: ready"]
    starts = [at for at, e in lines if e.get("event", "").startswith("Database verification mode")]
    waits = [(at, e) for at, e in lines if e.get("event") == "Waiting for the database to be ready"]
    if not ready or not starts:
        return None
    scheduled = waits[-1][0] + float(waits[-1][1]["retry_in_s"]) if waits else None
    return LastPoll(starts[-1], ready[-1], scheduled, len(waits) + 1)


def rate_bins(
    samples: list[Sample], field: str, start: float, end: float, width: float = 1.0
) -> list[tuple[float, float]]:
    """(bin start, per second) of a counter's increase in bins of ``width`` seconds."""
    bins = []
    edge = start
    while edge < end:
        inside = [s for s in samples if edge <= s.at < min(edge + width, end)]
        if len(inside) >= 2:
            span = inside[-1].at - inside[0].at
            if span > 0:
                bins.append((edge, (getattr(inside[-1], field) - getattr(inside[0], field)) / span))
        edge += width
    return bins


def counter_between(samples: list[Sample], field: str, start: float, end: float) -> tuple[int, float]:
    inside = [s for s in samples if start <= s.at <= end]
    return getattr(inside[-1], field) - getattr(inside[0], field), inside[-1].at - inside[0].at


def summarize(
    rollout: Rollout, head: str, server_log: str, options: argparse.Namespace, initial: float, cap: float
) -> dict[str, Any]:
    samples = rollout.samples
    commit = commit_time(rollout, head)
    waiters = [p for p in rollout.procs if p.kind == "wait"]
    services = [p for p in rollout.procs if p.kind == "service"]
    jobs = [p for p in rollout.procs if p.kind == "migrate"]
    ready = sorted(p.ended for p in waiters if p.code == 0 and p.ended is not None)
    after = [t - commit for t in ready]
    served = sorted(p.ended for p in services if p.code == 0 and p.ended is not None)
    wait_start = min(p.started for p in waiters)
    # the wait: from the first waiter to the commit; statements counted by the server
    xacts, span = counter_between(samples, "xacts", wait_start, commit)
    sessions, _ = counter_between(samples, "sessions", wait_start, commit)
    # steady state: all waiters started and polling at the cap (the last 1/3 of the wait)
    last_start = max(p.started for p in waiters)
    steady_from = max(last_start + initial * 2**5, commit - (commit - last_start) / 3)
    steady = counter_between(samples, "xacts", steady_from, commit) if commit - steady_from > 1 else (0, 0.0)
    xact_bins = rate_bins(samples, "xacts", 0.0, samples[-1].at)
    refusals_logged = sum(len(REFUSED.findall(p.text())) for p in rollout.procs)
    retries_refused = sum(
        1
        for p in waiters
        for line in p.text().splitlines()
        if "Waiting for the database to be ready" in line and REFUSED.search(line)
    )
    during = [s for s in samples if wait_start <= s.at <= commit]
    polls = [poll for poll in (last_poll(p, rollout.t0) for p in waiters if p.code == 0) if poll]
    seen = sorted(poll.ready - commit for poll in polls)
    asleep = [poll.started - commit for poll in polls if poll.started > commit]
    lag = [poll.started - poll.scheduled for poll in polls if poll.scheduled is not None]
    poll_s = [poll.ready - poll.started for poll in polls]
    cpu = {
        kind: [p.cpu for p in rollout.procs if p.kind == kind and p.cpu is not None]
        for kind in ("wait", "service", "migrate")
    }
    max_app = options.max_connections - RESERVED
    return {
        "label": options.label,
        "dbinit": git_describe(options.dbinit_root),
        "machine": machine(),
        "replicas": options.replicas,
        "max_connections": options.max_connections,
        "app_slots": max_app,
        "revisions": options.revisions,
        "revision_sleep_s": options.revision_sleep,
        "backoff_initial_s": initial,
        "backoff_cap_s": cap,
        "samples": len(samples),
        "sample_interval_ms": round(
            statistics.median(b.at - a.at for a, b in itertools.pairwise(samples)) * 1000, 1
        ),
        "job_started_s": round(min(p.started for p in jobs), 2),
        "job_attempts": len(jobs),
        "job_exit_codes": [p.code for p in jobs],
        "commit_s": round(commit, 2),
        "peak_connections": max(s.total for s in samples),
        "peak_connections_during_wait": max((s.total for s in during), default=0),
        "peak_wait_connections": max(s.wait for s in samples),
        "peak_service_connections": max(s.service for s in samples),
        "peak_migrate_connections": max(s.migrate for s in samples),
        "mean_connections_during_wait": round(statistics.mean(s.total for s in during), 2) if during else 0,
        "statements_per_s_wait": round(xacts / span, 1) if span else 0.0,
        "statements_per_s_steady": round(steady[0] / steady[1], 1) if steady[1] else None,
        "statements_per_s_peak_1s": round(max((r for _, r in xact_bins), default=0.0), 1),
        "connections_per_s_wait": round(sessions / span, 1) if span else 0.0,
        "waiters": len(waiters),
        "waiters_exit_0": sum(1 for p in waiters if p.code == 0),
        "waiters_failed": sorted({p.code for p in waiters if p.code != 0}),
        "waiters_ready_before_commit": sum(1 for t in after if t < 0),
        "first_ready_after_commit_s": round(min(after), 2) if after else None,
        "median_ready_after_commit_s": round(statistics.median(after), 2) if after else None,
        "p90_ready_after_commit_s": round(sorted(after)[int(len(after) * 0.9) - 1], 2) if after else None,
        "last_ready_after_commit_s": round(max(after), 2) if after else None,
        "ready_bound_s": cap,
        "seen_after_commit_median_s": round(statistics.median(seen), 2) if seen else None,
        "seen_after_commit_last_s": round(max(seen), 2) if seen else None,
        "last_poll_started_after_commit_max_s": round(max(asleep), 2) if asleep else None,
        "wakeup_lag_median_s": round(statistics.median(lag), 3) if lag else None,
        "wakeup_lag_max_s": round(max(lag), 3) if lag else None,
        "poll_duration_median_s": round(statistics.median(poll_s), 3) if poll_s else None,
        "poll_duration_max_s": round(max(poll_s), 3) if poll_s else None,
        "polls_per_waiter_median": statistics.median(p.attempts for p in polls) if polls else None,
        "cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items() if v},
        "spawn": options.spawn,
        "server_reniced": options.reniced,
        "services_verified": sum(1 for p in services if p.code == 0),
        "service_restarts": rollout.service_restarts,
        "last_service_verified_s": round(served[-1], 2) if served else None,
        "refusals_server_log": len(REFUSED.findall(server_log)),
        "refusals_in_process_logs": refusals_logged,
        "waiter_retries_after_refusal": retries_refused,
        "total_s": round(samples[-1].at, 1),
    }


# -- the outputs ---------------------------------------------------------------------------------------


def plot(rollout: Rollout, numbers: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = rollout.samples
    at = [s.at for s in samples]
    figure, (top, middle, bottom) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 8.5), gridspec_kw={"height_ratios": [3, 2, 2]}
    )
    top.stackplot(
        at,
        [s.wait for s in samples],
        [s.migrate for s in samples],
        [s.service for s in samples],
        [s.other for s in samples],
        labels=["waiters (init containers)", "the Job (migrate)", "services (verify)", "other / starting"],
        alpha=0.8,
        step="post",
    )
    top.axhline(
        numbers["app_slots"],
        color="red",
        linestyle=":",
        label=f"slots for the app role ({numbers['app_slots']})",
    )
    top.set_ylabel("connections open")
    top.set_ylim(0, max(numbers["app_slots"] + 3, numbers["peak_connections"] + 3))
    top.legend(loc="upper right", fontsize=8)
    ready = sorted(p.ended for p in rollout.procs if p.kind == "wait" and p.code == 0 and p.ended)
    served = sorted(p.ended for p in rollout.procs if p.kind == "service" and p.code == 0 and p.ended)
    started = sorted(p.started for p in rollout.procs if p.kind == "wait")
    middle.step(started, range(1, len(started) + 1), where="post", label="waiters started")
    middle.step(ready, range(1, len(ready) + 1), where="post", label="waiters ready (exit 0)")
    middle.step(served, range(1, len(served) + 1), where="post", label="services verified")
    middle.set_ylabel("replicas")
    middle.legend(loc="center right", fontsize=8)
    bins = rate_bins(samples, "xacts", 0.0, samples[-1].at, width=0.5)
    conns = rate_bins(samples, "sessions", 0.0, samples[-1].at, width=0.5)
    bottom.step([b for b, _ in bins], [r for _, r in bins], where="post", label="statements/s (transactions)")
    bottom.step([b for b, _ in conns], [r for _, r in conns], where="post", label="connections opened/s")
    bottom.set_ylabel("per second (0.5 s bins)")
    bottom.set_xlabel("seconds since the first init container started")
    bottom.legend(loc="upper right", fontsize=8)
    for axis in (top, middle, bottom):
        axis.axvline(numbers["commit_s"], color="black", linestyle="--", linewidth=1)
        axis.axvline(numbers["job_started_s"], color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    top.text(numbers["commit_s"], top.get_ylim()[1] * 0.97, " migration committed", fontsize=8, va="top")
    top.text(
        numbers["job_started_s"], top.get_ylim()[1] * 0.97, " Job started", fontsize=8, va="top", color="grey"
    )
    figure.suptitle(
        f"{numbers['replicas']} replicas, max_connections={numbers['max_connections']}, "
        f"{numbers['revisions']} revisions ({numbers['label']})",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def render(numbers: dict[str, Any], picture: str, server: str, runs: list[dict[str, Any]]) -> str:
    n = numbers
    failures = "none" if not n["waiters_failed"] else f"exit codes {n['waiters_failed']}"
    spawn = (
        "each replica a process of its own, forked from a parent that imported dbinit once (100 "
        "interpreter start-ups are 100 nodes' work in a cluster, not the database's)"
        if n["spawn"] == "fork"
        else "each replica a fresh `python -m dbinit` process"
    )
    priority = (
        "The server (and the bench's monitor) run at nice -10, the replicas at 0: in a cluster the "
        "database's CPU is not the pods'. "
        if n["server_reniced"]
        else ""
    )
    cpu = n["cpu_s"]
    lines = [
        f"## A rollout of {n['replicas']} replicas",
        "",
        f"Machine: {n['machine']}; PostgreSQL {server} started by the bench with "
        f"`max_connections={n['max_connections']}`, `superuser_reserved_connections={RESERVED}` "
        f"(so {n['app_slots']} slots for the replicas' role, not a superuser). Generated by "
        f"`python bench/rollout.py --replicas {n['replicas']} --max-connections {n['max_connections']} "
        f"--revisions {n['revisions']}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"(dbinit: {n['dbinit']}).",
        "",
        f"t=0: {n['replicas']} `dbinit wait --until-verified --timeout 300` (the init containers) start "
        f"over ~1 s, {spawn}; the Job (`dbinit migrate`, {n['revisions']} revisions, each with a "
        f"{n['revision_sleep_s']:g} s `pg_sleep`) a moment later; every waiter that exits 0 runs "
        "`dbinit verify` in its place (the service's lifespan). The server is sampled every "
        f"{n['sample_interval_ms']:g} ms (median) from a reserved superuser slot. {priority}"
        f"All of it shares 2 cores (CPU per process, median: waiter {cpu.get('wait', '-')} s, service "
        f"{cpu.get('service', '-')} s, Job {cpu.get('migrate', '-')} s), so the clients run slower "
        "than on their own nodes: they start late, and hold a connection longer while they wait for "
        "the CPU.",
        "",
        f"![connections and replicas over time]({picture})",
        "",
        "| what | measured |",
        "|---|---:|",
        f"| connections open at once, peak | **{n['peak_connections']}** of {n['app_slots']} |",
        f"| … during the wait: peak / mean | {n['peak_connections_during_wait']} / "
        f"{n['mean_connections_during_wait']} |",
        f"| … peak of waiters / services / the Job | {n['peak_wait_connections']} / "
        f"{n['peak_service_connections']} / {n['peak_migrate_connections']} |",
        f"| connections opened/s during the wait (mean) | {n['connections_per_s_wait']} |",
        f"| statements/s during the wait (server transactions; mean) | {n['statements_per_s_wait']} |",
        f"| … once every waiter polls at the cap / busiest second | {n['statements_per_s_steady'] or '-'} / "
        f"{n['statements_per_s_peak_1s']} |",
        f"| Job started / migration committed | {n['job_started_s']:.1f} s / {n['commit_s']:.1f} s |",
        f"| waiters seeing the commit after it: median / last | {n['seen_after_commit_median_s']} s / "
        f"**{n['seen_after_commit_last_s']} s** |",
        f"| … bound: `MAX_DELAY` + one poll (measured: median {n['poll_duration_median_s']} s, max "
        f"{n['poll_duration_max_s']} s) + the CPU's wake-up lag (max {n['wakeup_lag_max_s']} s) | "
        f"{n['ready_bound_s']:g} s + … |",
        f"| waiters exiting 0 | **{n['waiters_exit_0']} / {n['waiters']}** (failures: {failures}) |",
        f"| services verified (exit 0) / restarted | {n['services_verified']} / {n['service_restarts']} |",
        f'| "too many clients" refusals (SQLSTATE 53300, server log) | {n["refusals_server_log"]} |',
        f"| … of them met by a waiter's poll, which retried | {n['waiter_retries_after_refusal']} |",
        f"| Job attempts (exit codes) | {n['job_attempts']} ({', '.join(map(str, n['job_exit_codes']))}) |",
        f"| the whole rollout (last service verified) | {n['last_service_verified_s']} s |",
        "",
        "The bound: `wait --until-verified` sleeps with exponential backoff and full jitter "
        f"(`backoff_delays`: a delay drawn from [d/2, d], d doubling from {n['backoff_initial_s']:g} s "
        f"up to `MAX_DELAY` = {n['ready_bound_s']:g} s), so a waiter's next poll starts at most "
        f"{n['ready_bound_s']:g} s after the commit, or a poll that began just before it ends "
        f"unready and the next starts at most {n['ready_bound_s']:g} s later: the last waiter sees the "
        f"commit within `MAX_DELAY` + one poll ({n['ready_bound_s']:g} s + a few ms on an idle "
        "client), plus, here, the wait for a CPU.",
    ]
    if len(runs) > 1:
        lines += [
            "",
            "### Before / after",
            "",
            "| run | peak conns | conns opened/s (wait) | statements/s (wait) | refusals (53300) | "
            "poll median s | last sees commit s | waiters exit 0 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            lines.append(
                f"| {r['label']} | {r['peak_connections']} | {r['connections_per_s_wait']} | "
                f"{r['statements_per_s_wait']} | {r['refusals_server_log']} | "
                f"{r['poll_duration_median_s']} | {r['seen_after_commit_last_s']} | "
                f"{r['waiters_exit_0']}/{r['waiters']} |"
            )
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--max-connections", type=int, default=50)
    parser.add_argument("--revisions", type=int, default=30)
    parser.add_argument("--revision-sleep", type=float, default=0.3, help="pg_sleep seconds per revision")
    parser.add_argument("--stagger", type=float, default=1.0, help="the waiters start within this many s")
    parser.add_argument("--job-delay", type=float, default=1.2, help="the Job starts this many s after t=0")
    parser.add_argument("--wait-timeout", type=float, default=300)
    parser.add_argument("--out", default=str(ROOT / "bench" / "rollout"))
    parser.add_argument(
        "--dbinit-root", type=Path, default=ROOT, help="the dbinit checkout the processes run"
    )
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--compare", nargs="*", default=[], help="OUT.json files of earlier runs to tabulate")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--spawn",
        choices=("fork", "exec"),
        default="fork",
        help="fork: each replica is a process forked from a parent that imported dbinit once (the "
        "default: a cluster starts 100 interpreters on 100 nodes, not on this machine's 2 cores); "
        "exec: each is a fresh `python -m dbinit` process",
    )
    options = parser.parse_args()
    options.dbinit_root = options.dbinit_root.resolve()
    out = Path(options.out)
    initial, cap = dbinit_constants(options.dbinit_root)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, BENCH_NICE)
    except PermissionError:
        print("not root: the server and the replicas share the CPU at the same priority", file=sys.stderr)
    options.reniced = os.getpriority(os.PRIO_PROCESS, 0) < REPLICA_NICE
    work = Path(tempfile.mkdtemp(prefix="dbinit-rollout-work-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        with postgres_server(options.max_connections) as (port, base):
            asyncio.run(
                admin(port, f"CREATE ROLE {APP_ROLE} LOGIN", f"CREATE DATABASE {DATABASE} OWNER {APP_ROLE}")
            )
            server = asyncio.run(admin(port, "SHOW server_version"))[0]
            url = f"postgresql+asyncpg://{APP_ROLE}@127.0.0.1:{port}/{DATABASE}"
            project = make_project(work, options.revisions, url, options.revision_sleep)
            head = sorted(p.name for p in (project / "migrations" / "versions").glob("*.py"))[-1].split("_")[
                0
            ]
            manifest = subprocess.run(
                [sys.executable, "-m", "dbinit", "manifest"],
                cwd=project,
                env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(options.dbinit_root)},
                capture_output=True,
                text=True,
            )
            if manifest.returncode != 0:
                raise SystemExit(f"dbinit manifest failed:\n{manifest.stdout}{manifest.stderr}")
            print(
                f"server on port {port}; {options.replicas} replicas, the Job at {options.job_delay} s…",
                flush=True,
            )
            rollout = Rollout(options, project, url, f"postgresql://postgres@127.0.0.1:{port}/postgres", logs)
            asyncio.run(rollout.run())
            server_log = (base / "server.log").read_text(errors="replace")
            numbers = summarize(rollout, head, server_log, options, initial, cap)
        out.parent.mkdir(parents=True, exist_ok=True)
        picture = out.with_suffix(".png")
        plot(rollout, numbers, picture)
        out.with_suffix(".json").write_text(json.dumps(numbers, indent=2) + "\n")
        earlier = [json.loads(Path(p).read_text()) for p in options.compare]
        text = render(numbers, picture.name, server, [*earlier, numbers])
        out.with_suffix(".md").write_text(text)
        print(text)
        if numbers["waiters_exit_0"] != numbers["waiters"]:
            failed = [p for p in rollout.procs if p.kind == "wait" and p.code != 0]
            print(f"FAILED waiters: {len(failed)}; first log:\n{failed[0].text()[-3000:]}", file=sys.stderr)
            raise SystemExit(1)
    finally:
        if options.keep:
            print(f"logs kept in {logs}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
