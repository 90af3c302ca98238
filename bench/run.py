"""The benchmark: dbinit verify against Alembic and the physical floor.

    python bench/run.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

For 10, 100 and 1000 revisions it generates an Alembic project (the `async`
template, revision files in the shape `alembic revision` writes), migrates a
fresh database with it, then times whole processes, several runs each:

- ``dbinit verify`` (what a service pod runs at startup),
- ``alembic current`` and ``alembic upgrade head`` on the up-to-date database
  (what services ran before the seed's change),
- the bare floor: a Python process that opens one asyncpg connection and runs
  ``SELECT 1``,
- the stack floor: the same process importing what dbinit stands on
  (pydantic-settings with a 4-field settings class, structlog logging one
  line, pluggy),

and, in-process (the ASGI case: interpreter warm, migrations read once), the
verification call on an open connection against one ``SELECT 1`` round trip.
It counts the statements each process sends (through a counting proxy) and
its peak memory (``wait4``), and writes ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbinit.urls import DatabaseURL  # noqa: E402
from tests.plugins.pgproxy import counting_proxy  # noqa: E402

BIN = Path(sys.executable).parent

REVISION = '''"""{message}

Revision ID: {rev}
Revises: {down_text}
Create Date: 2026-11-25 00:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = {rev!r}
down_revision: Union[str, Sequence[str], None] = {down!r}
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "t_{index:04d}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("t_{index:04d}")
'''

BARE_FLOOR = """
import asyncio, os, asyncpg
async def main():
    connection = await asyncpg.connect(os.environ["FLOOR_DSN"])
    await connection.fetchval("SELECT 1")
    await connection.close()
asyncio.run(main())
"""

STACK_FLOOR = """
import asyncio, os, asyncpg, pluggy, structlog
from pydantic_settings import BaseSettings
class Settings(BaseSettings):
    database_url: str = ""
    service_name: str = "bench"
    environment: str = "development"
    connect_timeout: float = 5.0
settings = Settings()
pm = pluggy.PluginManager("bench")
async def main():
    connection = await asyncpg.connect(os.environ["FLOOR_DSN"])
    await connection.fetchval("SELECT 1")
    await connection.close()
asyncio.run(main())
structlog.get_logger().info("floor done", service=settings.service_name)
"""


@dataclasses.dataclass
class Measure:
    name: str
    seconds: list[float]
    peak_kib: int
    statements: int | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def spread_ms(self) -> str:
        ordered = sorted(self.seconds)
        q1 = ordered[len(ordered) // 4] * 1000
        q3 = ordered[(3 * len(ordered)) // 4] * 1000
        return f"{q1:.0f}-{q3:.0f}"


def run_timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, int]:
    """Wall time, peak RSS (KiB) and exit code of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, process.returncode


def measure(name: str, argv: list[str], cwd: Path, env: dict[str, str], runs: int) -> Measure:
    run_timed(argv, cwd, env)  # warm the page cache
    seconds, peaks = [], []
    for _ in range(runs):
        elapsed, peak, code = run_timed(argv, cwd, env)
        if code != 0:
            raise SystemExit(f"{name} exited {code}: {' '.join(argv)}")
        seconds.append(elapsed)
        peaks.append(peak)
    return Measure(name, seconds, max(peaks))


def count_statements(
    argv: list[str], cwd: Path, env: dict[str, str], url: DatabaseURL, env_key: str, dsn: bool = False
) -> int:
    socket_dir = dict(url.query).get("host")
    with counting_proxy(url.host, url.port, socket_dir) as proxy:
        query = tuple((k, v) for k, v in url.query if k != "host")
        proxied = dataclasses.replace(url, host="127.0.0.1", port=proxy.port, query=query)
        value = proxied.asyncpg_dsn() if dsn else proxied.for_sqlalchemy(async_driver=True)
        code = subprocess.run(argv, cwd=cwd, env={**env, env_key: value}, capture_output=True).returncode
        if code != 0:
            raise SystemExit(f"{argv} failed through the proxy")
        time.sleep(0.2)  # let the proxy see the Terminate message
        return proxy.statements


def make_project(folder: Path, count: int, url: str) -> Path:
    project = folder / f"project_{count}"
    subprocess.run(
        [str(BIN / "alembic"), "init", "-t", "async", "migrations"],
        cwd=project.parent if project.exists() else _mkdir(project),
        check=True,
        capture_output=True,
    )
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", url.replace("%", "%%")))
    versions = project / "migrations" / "versions"
    down = None
    for index in range(count):
        rev = f"{index:04x}{'ab12cd34'}"
        message = f"create table {index}"
        text = REVISION.format(message=message, rev=rev, down=down, down_text=down or "", index=index)
        (versions / f"{rev}_create_table_{index}.py").write_text(text)
        down = rev
    return project


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


async def in_process(project: Path, url: str, runs: int) -> tuple[float, float]:
    """Median µs of verify on an open connection vs one SELECT 1 round trip."""
    import structlog

    from dbinit.database import open_probe
    from dbinit.pluginmanager import Registry
    from dbinit.settings import load_settings
    from dbinit.verify import probe_options, read_scripts, verify

    os.chdir(project)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the logger
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(devnull))
    settings = load_settings(database_url=url)
    registry = Registry.load()
    scripts = read_scripts(settings)
    probe = await open_probe(settings.url, probe_options(settings, "bench", long_lived=True))
    log = structlog.get_logger()
    connection = probe._connection  # type: ignore[attr-defined]
    verify_times, select_times = [], []
    for _ in range(runs):
        started = time.perf_counter()
        report = await verify(settings, registry, log, scripts=scripts, probe=probe)
        verify_times.append(time.perf_counter() - started)
        assert report.ok
        started = time.perf_counter()
        await connection.execute("SELECT 1")
        select_times.append(time.perf_counter() - started)
    await probe.close()
    return statistics.median(verify_times) * 1e6, statistics.median(select_times) * 1e6


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DBINIT_TEST_POSTGRES_URL"),
        help="an admin URL of the PostgreSQL server to use (creates and drops databases)",
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    options = parser.parse_args()
    if not options.database_url:
        raise SystemExit("--database-url (or DBINIT_TEST_POSTGRES_URL) is required")
    admin = DatabaseURL.parse(options.database_url)
    sizes = [int(s) for s in options.sizes.split(",")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBINIT_", "DATABASE_URL"))}
    env["DBINIT_LOG_FORMAT"] = "json"
    work = Path(tempfile.mkdtemp(prefix="dbinit-bench-"))
    rows: list[tuple[int, list[Measure], tuple[float, float]]] = []
    server_version = ""
    try:
        for size in sizes:
            name = f"dbinit_bench_{size}"
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
            target = dataclasses.replace(admin, database=name)
            url = target.for_sqlalchemy(async_driver=True)
            project = make_project(work, size, url)
            run_env = {**env, "DATABASE_URL": url, "FLOOR_DSN": target.asyncpg_dsn()}
            print(f"[{size}] migrating…", flush=True)
            subprocess.run(
                [str(BIN / "dbinit"), "migrate"], cwd=project, env=run_env, check=True, capture_output=True
            )
            server_version = asyncio.run(_admin(target, "SHOW server_version"))
            commands = {
                "dbinit verify": [str(BIN / "dbinit"), "verify"],
                "alembic current": [str(BIN / "alembic"), "current"],
                "alembic upgrade head": [str(BIN / "alembic"), "upgrade", "head"],
                "bare floor": [sys.executable, "-c", BARE_FLOOR],
                "stack floor": [sys.executable, "-c", STACK_FLOOR],
            }
            measures = []
            for label, argv in commands.items():
                print(f"[{size}] {label}…", flush=True)
                result = measure(label, argv, project, run_env, options.runs)
                if label.startswith("alembic"):
                    # alembic reads the URL from alembic.ini: point it at the proxy there
                    result.statements = _alembic_statements(argv, project, run_env, target)
                elif label.endswith("floor"):
                    result.statements = count_statements(
                        argv, project, run_env, target, "FLOOR_DSN", dsn=True
                    )
                else:
                    result.statements = count_statements(argv, project, run_env, target, "DATABASE_URL")
                measures.append(result)
            print(f"[{size}] in-process…", flush=True)
            inproc = asyncio.run(in_process(project, url, 200))
            os.chdir(ROOT)
            rows.append((size, measures, inproc))
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(rows, options.runs, server_version)
    Path(options.out).write_text(report)
    print(report)


def _alembic_statements(argv: list[str], project: Path, env: dict[str, str], target: DatabaseURL) -> int:
    ini = project / "alembic.ini"
    original = ini.read_text()
    socket_dir = dict(target.query).get("host")
    try:
        with counting_proxy(target.host, target.port, socket_dir) as proxy:
            query = tuple((k, v) for k, v in target.query if k != "host")
            proxied = dataclasses.replace(target, host="127.0.0.1", port=proxy.port, query=query)
            url = proxied.for_sqlalchemy(async_driver=True)
            old = target.for_sqlalchemy(async_driver=True)
            ini.write_text(original.replace(old.replace("%", "%%"), url.replace("%", "%%")))
            subprocess.run(argv, cwd=project, env=env, check=True, capture_output=True)
            time.sleep(0.2)
            return proxy.statements
    finally:
        ini.write_text(original)


async def _admin(url: DatabaseURL, statement: str) -> str:
    import asyncpg

    connection = await asyncpg.connect(url.asyncpg_dsn())
    try:
        if statement.startswith("SHOW"):
            return str(await connection.fetchval(statement))
        await connection.execute(statement)
        return ""
    finally:
        await connection.close()


def render(rows: list[tuple[int, list[Measure], tuple[float, float]]], runs: int, server: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}; PostgreSQL {server}. "
        f"Generated by `python bench/run.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{runs} runs per command, whole processes, median and interquartile range.",
        "",
    ]
    verify_by_size: dict[int, float] = {}
    for size, measures, (verify_us, select_us) in rows:
        by = {m.name: m for m in measures}
        bare, stack = by["bare floor"].median_ms, by["stack floor"].median_ms
        verify_by_size[size] = by["dbinit verify"].median_ms
        lines += [
            f"## {size} revisions",
            "",
            "| command | median ms | IQR ms | x bare floor | x stack floor | statements | peak MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in measures:
            lines.append(
                f"| {m.name} | {m.median_ms:.0f} | {m.spread_ms} | {m.median_ms / bare:.2f} | "
                f"{m.median_ms / stack:.2f} | {m.statements} | {m.peak_kib / 1024:.1f} |"
            )
        upgrade = by["alembic upgrade head"].median_ms
        lines += [
            "",
            f"- `alembic upgrade head` / `dbinit verify`: **{upgrade / by['dbinit verify'].median_ms:.2f}x**",
            f"- in-process verification on an open connection: {verify_us:.0f} µs median, "
            f"one `SELECT 1` round trip {select_us:.0f} µs: **{verify_us / select_us:.2f}x**",
            "",
        ]
    if 10 in verify_by_size and 1000 in verify_by_size:
        lines.append(
            f"Flatness: verify(1000) / verify(10) = **{verify_by_size[1000] / verify_by_size[10]:.2f}**"
        )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
