"""dbinit's pytest plugin against pytest-alembic's built-in tests, on 10 and 100 revisions.

    python bench/pytest_plugin.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

For each size it generates one Alembic project (``alembic init``'s generic
template; revisions that create tables, add columns and indexes, each with
its downgrade; a ``models.py`` matching the head), with the two edits
pytest-alembic needs in env.py (the connection from ``config.attributes``,
``target_metadata``) so that both tools run the very same project. Then it
times whole ``python -m pytest`` processes on the same server, several runs
each, alternating:

- dbinit: ``--dbinit-migrations`` with ``dbinit_metadata``: revision files,
  heads, upgrade, downgrade (catalog compared) and data per revision, models
  (the template is dropped before each run: every run builds it);
- pytest-alembic: its four default built-ins (single head, upgrade,
  model definitions match DDL, up/down consistency), each test on a fresh
  database (its ``alembic_engine``).

Both run as a project's CI would run them: with bytecode caches (one
untimed warm-up run of each first, ``PYTHONDONTWRITEBYTECODE`` unset) and
with only the plugin under test loaded (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``
and ``-p``: the other pytest plugins of this virtualenv, hypothesis for one,
are not a project's); pytest-alembic's conftest and tests sit in a folder of
their own, so that dbinit's run does not import them.

It prints a markdown table: median wall time and the process's CPU time
(user + system, from ``wait4``; the server's own work is not in it), tests
run, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins.generated import (  # noqa: E402
    ENV_CONNECTION_EDIT,
    PYTEST_ALEMBIC_CONFTEST,
    Rev,
    clean_env,
    drop_templates,
    make_project,
)

DEFAULT_TESTS = '''\
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
'''


def revisions(count: int) -> tuple[list[Rev], str]:
    """``count`` revisions (a table every fifth, else a column or an index on the latest table) and
    the models' module for the head."""
    revs: list[Rev] = []
    tables: dict[str, list[str]] = {}
    indexes: list[tuple[str, str, str]] = []
    previous: str | None = None
    for number in range(count):
        rev = f"r{number:04d}"
        if number % 5 == 0:
            table = f"t{number:04d}"
            tables[table] = []
            up = (f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True),\n'
                  f'    sa.Column("name", sa.String(40), nullable=False))')
            down = f'op.drop_table("{table}")'
        else:
            table = next(reversed(tables))
            column = f"c{number:04d}"
            if number % 5 == 3:
                index = f"ix_{table}_{tables[table][-1]}" if tables[table] else f"ix_{table}_name"
                target = tables[table][-1] if tables[table] else "name"
                indexes.append((index, table, target))
                up = f'op.create_index("{index}", "{table}", ["{target}"])'
                down = f'op.drop_index("{index}", table_name="{table}")'
            else:
                tables[table].append(column)
                up = f'op.add_column("{table}", sa.Column("{column}", sa.Integer, nullable=True))'
                down = f'op.drop_column("{table}", "{column}")'
        revs.append(Rev(rev, previous, up, down))
        previous = rev
    lines = ["import sqlalchemy as sa", "", "metadata = sa.MetaData()", ""]
    for table, columns in tables.items():
        parts = ['sa.Column("id", sa.Integer, primary_key=True)',
                 'sa.Column("name", sa.String(40), nullable=False)']
        parts += [f'sa.Column("{column}", sa.Integer, nullable=True)' for column in columns]
        lines.append(f'sa.Table("{table}", metadata, {", ".join(parts)})')
    for index, table, column in indexes:
        lines.append(f'sa.Index("{index}", metadata.tables["{table}"].c["{column}"])')
    return revs, "\n".join(lines) + "\n"


def project_for(count: int, folder: Path) -> Path:
    revs, models = revisions(count)
    project = make_project(folder / f"project-{count}", folder / "templates", revs, models=models,
                           ini="dbinit_metadata = models:metadata\n", metadata_in_env=True)
    env = project / "migrations" / "env.py"
    env.write_text(env.read_text().replace(*ENV_CONNECTION_EDIT, 1))
    theirs = project / THEIRS
    theirs.mkdir()
    (theirs / "conftest.py").write_text(PYTEST_ALEMBIC_CONFTEST)
    (theirs / "test_pytest_alembic.py").write_text(DEFAULT_TESTS)
    return project


#: pytest-alembic's conftest and tests (run from the project's folder, its migrations at ``migrations``).
THEIRS = "pytest_alembic_suite"
OURS_ARGS = ["-p", "dbinit.testing.plugin", "--dbinit-migrations", "alembic.ini"]
THEIRS_ARGS = ["-p", "pytest_alembic.plugin", THEIRS]


def timed(project: Path, args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """One whole pytest process: (wall s, CPU s, its last line)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if process.returncode != 0:
        raise SystemExit(f"pytest failed in {project} ({' '.join(args)}):\n{output[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DBINIT_TEST_DATABASE_URL",
                                                                  "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    url = options.database_url
    common = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env_ours = clean_env(DBINIT_TEST_DATABASE_URL=url, **common)
    theirs_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    env_theirs = clean_env(CORPUS_SERVER_URL=theirs_url, **common)
    for env in (env_ours, env_theirs):
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dbinit-bench-pytest-") as tmp:
        for count in (int(size) for size in options.sizes.split(",")):
            project = project_for(count, Path(tmp))
            ours: list[tuple[float, float]] = []
            theirs: list[tuple[float, float]] = []
            lines = {}
            drop_templates(url, project / "migrations")
            timed(project, OURS_ARGS, env_ours)  # the warm-up: bytecode caches written
            timed(project, THEIRS_ARGS, env_theirs)
            collect = [*OURS_ARGS, "--collect-only"]
            starts = [timed(project, collect, env_ours)[0] for _ in range(options.runs)]
            for _ in range(options.runs):
                drop_templates(url, project / "migrations")
                wall, cpu, lines["dbinit"] = timed(project, OURS_ARGS, env_ours)
                ours.append((wall, cpu))
                wall, cpu, lines["pytest-alembic"] = timed(project, THEIRS_ARGS, env_theirs)
                theirs.append((wall, cpu))
            drop_templates(url, project / "migrations")
            rows.append((count, "dbinit plugin", ours, lines["dbinit"], statistics.median(starts)))
            rows.append((count, "pytest-alembic built-ins", theirs, lines["pytest-alembic"], 0.0))
    print(f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{options.runs} runs each, alternating; medians.\n")
    print("| revisions | suite | wall s | CPU s | result | wall ratio | CPU ratio |")
    print("|---:|---|---:|---:|---|---:|---:|")
    beyond = []
    for index in range(0, len(rows), 2):
        count, _, ours, ours_line, start = rows[index]
        _, _, theirs, theirs_line, _ = rows[index + 1]
        ow, oc = statistics.median(w for w, _ in ours), statistics.median(c for _, c in ours)
        tw, tc = statistics.median(w for w, _ in theirs), statistics.median(c for _, c in theirs)
        print(f"| {count} | dbinit plugin | {ow:.2f} | {oc:.2f} | {ours_line.strip('= ')} | | |")
        print(f"| {count} | pytest-alembic built-ins | {tw:.2f} | {tc:.2f} | {theirs_line.strip('= ')} | "
              f"{tw / ow:.1f}x | {tc / oc:.1f}x |")
        beyond.append(f"{count} revisions: {start:.2f} s, {(tw - start) / (ow - start):.1f}x on the rest")
    print("\nThe start both pay (pytest, the plugin, the project loaded: dbinit's `--collect-only`, wall), "
          "and pytest-alembic's wall time over dbinit's once it is taken off both: "
          + "; ".join(beyond) + ".")


if __name__ == "__main__":
    main()
