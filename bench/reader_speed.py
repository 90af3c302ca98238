"""How long the static reader takes for a project of N revision files.

    python bench/reader_speed.py [--count 1000] [--runs 15]

Writes N revision files in the shape `alembic revision` writes (the template
of bench/run.py, plus a variant whose upgrade() names a ``revision`` column in
SQL, so that the reader must look past the header), then times, in-process and
with the files in the page cache:

- ``read_migration_scripts`` without a manifest (the whole static path: list
  the files, read each, build the graph): the fastest and the median CPU time
  of ``--runs`` (CPU time, not wall time: the numbers hold on a shared machine);
- ``ast.parse`` of every file, for comparison (the cost of the exact path);
- whole processes (``--processes``, default 11 each): a fresh interpreter that
  imports dbinit's reader and reads the project, without and with a manifest,
  bytecode cached as in an image; median wall time (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import REVISION  # noqa: E402

from dbinit.revisions.layout import find_layout  # noqa: E402
from dbinit.revisions.manifest import write_manifest  # noqa: E402
from dbinit.revisions.scripts import read_migration_scripts  # noqa: E402

PROCESS = """
import sys
from pathlib import Path
from dbinit.revisions.scripts import read_migration_scripts
scripts = read_migration_scripts(Path(sys.argv[1]), use_manifest=sys.argv[2] == "manifest")
assert scripts.source == sys.argv[2], scripts.source
"""

BODY_NAMING_A_COLUMN = '''

def data_upgrade() -> None:
    op.execute("UPDATE documents SET revision = revision + 1")
'''


def write_project(root: Path, count: int, *, body: str = "") -> Path:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "migrations" / "env.py").write_text("")
    ini = root / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    down = None
    for index in range(count):
        rev = f"{index:04x}ab12cd34"
        text = REVISION.format(
            message=f"create table {index}", rev=rev, down=down, down_text=down or "", index=index
        )
        (versions / f"{rev}_create_table_{index}.py").write_text(text + body)
        down = rev
    return ini


def cpu_ms(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """The fastest and the median CPU time of ``runs`` calls (CPU time: the machine may be shared)."""
    action()  # warm: imports, page cache
    times = []
    for _ in range(runs):
        started = time.process_time()
        action()
        times.append(time.process_time() - started)
    return min(times) * 1000, statistics.median(times) * 1000


def process_ms(ini: Path, source: str, runs: int, pycache: Path) -> tuple[float, float]:
    """Fastest and median wall time of a whole process reading the project (static or manifest)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(pycache)}
    argv = [sys.executable, "-c", PROCESS, str(ini), source]
    subprocess.run(argv, env=env, check=True)  # warm: bytecode, page cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True)
        times.append(time.perf_counter() - started)
    return min(times) * 1000, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--processes", type=int, default=11)
    parser.add_argument("--processes-only", action="store_true", help="skip the in-process timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name, body in (("template", ""), ("column named revision in upgrade()", BODY_NAMING_A_COLUMN)):
            if args.processes_only and body:
                continue
            ini = write_project(Path(folder) / name.replace(" ", "_"), args.count, body=body)
            if args.processes_only:
                continue
            scripts = read_migration_scripts(ini, use_manifest=False)
            assert scripts.count == args.count, scripts
            files = sorted((ini.parent / "migrations" / "versions").glob("*.py"))
            whole = cpu_ms(lambda ini=ini: read_migration_scripts(ini, use_manifest=False), args.runs)
            parse = cpu_ms(lambda files=files: [ast.parse(f.read_bytes()) for f in files], 3)
            readers = getattr(scripts, "readers", {})
            used = sorted({*readers.values()}) if readers else [scripts.source]
            print(
                f"{args.count} files, {name}: read_migration_scripts {whole[0]:.1f} ms "
                f"(median {whole[1]:.1f}; paths used: {', '.join(used)}); "
                f"ast.parse of every file {parse[0]:.1f} ms"
            )
        if args.processes:
            ini = Path(folder) / "template" / "alembic.ini"
            static = process_ms(ini, "static", args.processes, Path(folder) / "pycache")
            write_manifest(find_layout(ini, None), read_migration_scripts(ini, use_manifest=False).graph)
            manifest = process_ms(ini, "manifest", args.processes, Path(folder) / "pycache")
            print(
                f"{args.count} files, whole process: {static[0]:.0f} ms reading the files "
                f"(median {static[1]:.0f}), {manifest[0]:.0f} ms with a manifest (median {manifest[1]:.0f})"
            )


if __name__ == "__main__":
    main()
