"""The command line as a user meets it: help, dispatch, wait, showmigrations."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dbinit import __version__
from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit

CLOSED_PORT = "postgresql+asyncpg://nobody@127.0.0.1:1/nowhere"


def test_help_lists_commands_and_every_command_has_help(project: Path) -> None:
    result = run_dbinit("help", cwd=project)
    assert result.returncode == 0
    for name in ("verify", "migrate", "wait", "showmigrations", "check", "plugins"):
        assert f"    {name}" in result.stdout
        sub = run_dbinit("help", name, cwd=project)
        assert sub.returncode == 0, sub.output
        assert f"dbinit {name}" in sub.stdout or f"-m dbinit {name}" in sub.stdout
        assert "--database-url" in sub.stdout
    assert run_dbinit("--version", cwd=project).stdout.strip() == __version__
    assert run_dbinit(cwd=project).returncode == 0  # no command: the help


def test_unknown_command_and_bad_flag_are_usage_errors(project: Path) -> None:
    unknown = run_dbinit("verfy", cwd=project)
    assert unknown.returncode == 2
    assert "Unknown command: 'verfy'" in unknown.stderr
    bad = run_dbinit("verify", "--no-such-flag", cwd=project)
    assert bad.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in bad.stderr
    bad_choice = run_dbinit("verify", "--format", "yaml", cwd=project)
    assert bad_choice.returncode == 2


def test_manage_py_and_console_script_are_the_same_dispatcher(
    project: Path, sqlite_database: TestDatabase
) -> None:
    env = clean_env(DATABASE_URL=sqlite_database.url)
    manage = subprocess.run([sys.executable, "manage.py", "migrate", "--format", "json"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=120)
    assert manage.returncode == 0, manage.stderr
    assert json.loads(manage.stdout)["action"] == "migrations_applied"
    script = Path(sys.executable).with_name("dbinit")
    verify = subprocess.run([str(script), "verify"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert "verified: Database verified successfully" in verify.stdout


def test_wait_gives_up_with_exit_3_within_the_timeout(project: Path) -> None:
    started = time.monotonic()
    result = run_dbinit("wait", "--timeout", "1.5", cwd=project, DATABASE_URL=CLOSED_PORT)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.output
    assert "connection refused" in result.stderr
    assert "gave up after" in result.stderr
    attempts = [line for line in result.stderr.splitlines() if "Database not reachable yet" in line]
    assert len(attempts) >= 2  # it retried, with backoff
    assert elapsed < 15  # bounded by the timeout plus interpreter start, not hanging


def test_wait_succeeds_on_a_live_database(project: Path, database: TestDatabase) -> None:
    result = run_dbinit("wait", "--timeout", "10", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 0, result.output
    assert "Database is accepting connections" in result.stdout


def test_wait_until_verified_returns_once_the_job_has_migrated(
    project: Path, pg_database: TestDatabase
) -> None:
    env = clean_env(DATABASE_URL=pg_database.url)
    waiter = subprocess.Popen([sys.executable, "-m", "dbinit", "wait", "--until-verified", "--timeout", "60"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the waiter is polling an empty database; now the "job" runs
        job = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url)
        assert job.returncode == 0, job.output
        stdout, stderr = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, stderr
    assert "Database is ready." in stdout


def test_wait_until_verified_times_out_with_exit_4(project: Path, database: TestDatabase) -> None:
    result = run_dbinit("wait", "--until-verified", "--timeout", "1", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 4, result.output
    assert "database not ready after 1s" in result.stderr
    assert "dbinit.E002" in result.stderr


def test_showmigrations_marks_applied_current_and_head(project: Path, database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    add_revision(project, "f00dcafe0001", "8d3f6b2a9c11")
    result = run_dbinit("showmigrations", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("orders (")
    # each revision with its message (the -m of `alembic revision`), then its file
    # and its phase: what decided it
    assert lines[1] == (" [X] 374752db316e  create products  374752db316e_create_products.py  "
                        "expand (inferred: op.create_table('products', …))")
    assert lines[2] == (" [X] 5c9a1e7b2f40  create orders  5c9a1e7b2f40_create_orders.py  "
                        "expand (inferred: op.create_table('customers', …))")
    assert lines[3] == (" [X] 8d3f6b2a9c11  add order status  8d3f6b2a9c11_add_order_status.py  "
                        "expand (inferred: op.add_column('orders', …))  (current)")
    assert lines[4] == (" [ ] f00dcafe0001  revision f00dcafe0001  f00dcafe0001_revision.py  "
                        "expand (inferred: no operations)  (head)")
    shown = run_dbinit("showmigrations", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert shown.returncode == 0, shown.output
    data = json.loads(shown.stdout)
    assert [r["applied"] for r in data["revisions"]] == [True, True, True, False]
    assert [r["doc"] for r in data["revisions"]] == [
        "create products", "create orders", "add order status", "revision f00dcafe0001"
    ]
    assert data["revisions"][0]["file"] == "374752db316e_create_products.py"


def test_showmigrations_doc_is_alembics(project: Path, sqlite_database: TestDatabase) -> None:
    """The docstring's first paragraph, as Alembic's history shows it; none, or not a docstring."""
    versions = project / "migrations" / "versions"
    headers = {
        "d0c000000001": '"""two lines\nof message\n\nRevision ID: d0c000000001\n"""',
        "d0c000000002": "# no docstring",
        "d0c000000003": 'f"""not a docstring"""',
        "d0c000000004": "# -*- coding: latin-1 -*-\n'''caf\xe9 cr\xe8me'''",
    }
    down = "8d3f6b2a9c11"
    for rev, header in headers.items():
        body = add_revision(project, rev, down).read_text().split('"""\n', 1)[1]
        encoding = "latin-1" if "latin-1" in header else "utf-8"
        (versions / f"{rev}_revision.py").write_text(f"{header}\n{body}", encoding=encoding)
        down = rev
    shown = run_dbinit("showmigrations", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    assert shown.returncode == 0, shown.output
    docs = {r["revision"]: r["doc"] for r in json.loads(shown.stdout)["revisions"]}
    assert docs["d0c000000001"] == "two lines\nof message"
    assert docs["d0c000000002"] == ""
    assert docs["d0c000000003"] == ""
    assert docs["d0c000000004"] == "caf\xe9 cr\xe8me"
    text = run_dbinit("showmigrations", cwd=project, DATABASE_URL=sqlite_database.url)
    assert text.returncode == 0, text.output
    lines = text.stdout.splitlines()
    phase = "  expand (inferred: no operations)"
    assert " [ ] d0c000000001  two lines of message  d0c000000001_revision.py" + phase in lines
    assert " [ ] d0c000000002  d0c000000002_revision.py" + phase in lines
