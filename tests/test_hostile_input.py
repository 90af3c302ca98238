"""Hostile input and unlucky operators: each case reproduced for real, through the command line.

- a secret put where a path belongs (``DATABASE_URL_FILE`` holding the URL), a
  non-UTF-8 URL file: exit 2, and the secret nowhere in the output;
- URL-shaped values are redacted wherever they appear;
- settings that cannot work (``inf``, ``1e12``, ``nan`` timeouts, an empty
  schema, a probe path without ``/``) are refused at load time, before
  anything runs; a destructive strategy checks everything the upgrade needs
  before it drops anything;
- a plugin that calls ``sys.exit(0)`` can never turn a command into a success;
- a latin-1 ``alembic.ini`` and a malformed manifest are ordinary failures,
  not exit 1;
- ``wait`` and ``verify`` stop on SIGTERM/SIGINT as PID 1 of a PID namespace
  (a container's init), where a signal without a handler is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbinit.logs import Redactor, redact_urls
from dbinit.revisions.manifest import MANIFEST_NAME
from tests.plugins.databases import SECRET, Result, TestDatabase, add_revision, clean_env, run_dbinit

pytest.register_assert_rewrite("tests.plugins.faults")
from tests.plugins.faults import eventually  # noqa: E402

HEAD = "8d3f6b2a9c11"
URL_WITH_SECRET = f"postgresql://orders:{SECRET}@db.internal:5432/orders"


def usage_error(result: Result) -> str:
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    assert "Error: " in result.stderr
    return result.stderr


def assert_no_secret(result: Result) -> None:
    assert SECRET not in result.output, result.output


# -- secrets where paths belong ----------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "migrate", "wait"])
@pytest.mark.parametrize("value", [URL_WITH_SECRET, SECRET, f"{URL_WITH_SECRET}\n"])
def test_database_url_file_holding_the_secret_itself(project: Path, command: str, value: str) -> None:
    args = (command,) if command == "wait" else (command, "--format", "json")
    result = run_dbinit(*args, cwd=project, DATABASE_URL_FILE=value)
    stderr = usage_error(result)
    assert_no_secret(result)
    assert "DATABASE_URL_FILE does not name a readable file" in stderr
    assert "Put the URL in DATABASE_URL" in stderr
    if command != "wait":
        document = json.loads(result.stdout)
        assert document["exit_code"] == 2 and SECRET not in document["message"]


def test_database_url_file_that_is_not_utf8(project: Path, tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_bytes(b"postgresql://orders:" + SECRET.encode() + b"\xe9x@db/orders\n")
    result = run_dbinit("verify", cwd=project, DATABASE_URL_FILE=str(url_file))
    stderr = usage_error(result)
    assert_no_secret(result)
    assert f"is not UTF-8 text (invalid byte at offset {20 + len(SECRET)})" in stderr
    assert "\\xe9" not in result.output and "0xe9" not in result.output


def test_url_shaped_values_are_redacted_wherever_they_appear() -> None:
    redactor = Redactor()  # knows no secret yet: the shape alone is enough
    for text in (
        f"DATABASE_URL_FILE {URL_WITH_SECRET!r} cannot be read",
        f"path normalised: postgresql:/orders:{SECRET}@db:5432/orders",
        f"raw at-sign kept: postgresql://orders:p@{SECRET}@db/orders",
        f"libpq form: host=db user=orders password={SECRET} dbname=orders",
        f"query form: postgresql://db/orders?sslmode=require&password={SECRET}",
    ):
        assert SECRET not in redactor.text(text), text
    assert redact_urls("postgresql://orders@db/orders?sslmode=require") == (
        "postgresql://orders@db/orders?sslmode=require"
    )
    event = {"event": "x", "url": URL_WITH_SECRET, "error": ValueError(URL_WITH_SECRET)}
    events = redactor(None, "info", event)
    assert SECRET not in json.dumps(events, default=str)


# -- settings that cannot work -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DBINIT_STATEMENT_TIMEOUT", "inf", "finite number"),
        ("DBINIT_STATEMENT_TIMEOUT", "1e12", "less than or equal to 2147483"),
        ("DBINIT_DDL_LOCK_TIMEOUT", "nan", "finite number"),
        ("DBINIT_LOCK_TIMEOUT", "-inf", "finite number"),
        ("DBINIT_CONNECT_TIMEOUT", "0", "greater than 0"),
        ("DBINIT_SCHEMA", "  ", "at least 1 character"),
        ("DBINIT_VERSION_TABLE", "", "at least 1 character"),
        ("DBINIT_READINESS_PATH", "readyz", "should match pattern"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_runs(
    project: Path, sqlite_database: TestDatabase, variable: str, value: str, expected: str
) -> None:
    result = run_dbinit("migrate", "--force-recreate", cwd=project, DATABASE_URL=sqlite_database.url,
                        **{variable: value})
    stderr = usage_error(result)
    assert f"invalid setting {variable}: " in stderr and expected in stderr
    assert not Path(sqlite_database.parsed.database).exists()  # nothing ran


def test_recreate_checks_the_migrations_before_it_drops_anything(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    database.sql("INSERT INTO products (name, price_cents) VALUES ('rye', 450)")
    # readable statically (verify and the plan see it), but it cannot be imported
    add_revision(project, "b0rken000001", HEAD).write_text(
        (project / "migrations" / "versions" / "b0rken000001_revision.py").read_text()
        .replace("import sqlalchemy as sa", "import sqlalchemy as sa\nimport a_package_that_is_not_installed")
    )
    result = run_dbinit("migrate", "--force-recreate", cwd=project, DATABASE_URL=database.url)
    stderr = usage_error(result)
    assert "a migration file cannot be imported: ModuleNotFoundError" in stderr
    assert "nothing was dropped" in stderr
    assert database.sql("SELECT name FROM products") == [("rye",)]
    assert database.versions() == {HEAD}


# -- plugins cannot fake success -------------------------------------------------------------


def _plugin(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    folder = tmp_path / "plugins_path"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    path = f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}"
    return {"PYTHONPATH": path, "DBINIT_PLUGINS": name}


EXIT_AT_IMPORT = "import sys\nsys.exit(0)\n"
EXIT_IN_CHECK = """
import sys
from dbinit import hookimpl
from dbinit.checks import check

@check("quitter.E001", "quits")
def quits(facts):
    sys.exit(0)

@hookimpl
def dbinit_checks():
    return [quits]
"""
EXIT_IN_STRATEGY = """
import sys
from dbinit import hookimpl
from dbinit.strategies import Strategy

def quit_early(context):
    sys.exit(0)

@hookimpl
def dbinit_strategies():
    return [Strategy("quit", quit_early)]
"""
EXIT_IN_COMMAND_MODULE = """
from dbinit import hookimpl

@hookimpl
def dbinit_commands():
    return {"quitter": "quitter_command"}
"""


@pytest.mark.parametrize(
    ("source", "args", "code", "expected"),
    [
        (EXIT_AT_IMPORT, ("verify",), 2,
         "plugin 'quitter': cannot be imported (from DBINIT_PLUGINS): SystemExit: 0"),
        (EXIT_IN_CHECK, ("verify",), 1, "plugin 'quitter': check quitter.E001 raised SystemExit: 0"),
        (EXIT_IN_STRATEGY, ("migrate", "--strategy", "quit"), 1,
         "SystemExit(0) was raised while the command ran"),
        (EXIT_IN_COMMAND_MODULE, ("quitter",), 2,
         "command 'quitter' cannot be imported from 'quitter_command'"),
    ],
)
def test_a_plugin_calling_sys_exit_never_turns_into_success(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase,
    source: str, args: tuple[str, ...], code: int, expected: str,
) -> None:
    env = _plugin(tmp_path, "quitter", source)
    (tmp_path / "plugins_path" / "quitter_command.py").write_text(EXIT_AT_IMPORT)
    result = run_dbinit(*args, cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert result.returncode == code, result.output
    assert expected in result.stderr
    assert not Path(sqlite_database.parsed.database).exists() or "quit" in args  # verify wrote nothing


# -- ordinary failures, not bugs ---------------------------------------------------------------


def test_a_latin1_alembic_ini_is_a_configuration_error(project: Path) -> None:
    ini = project / "alembic.ini"
    ini.write_bytes(ini.read_bytes() + "# café\n".encode("latin-1"))
    result = run_dbinit("verify", cwd=project)
    stderr = usage_error(result)
    assert "alembic.ini' is not UTF-8 text (invalid byte at offset" in stderr
    assert "save it as UTF-8" in stderr


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d.pop("revisions"),
        lambda d: d.update(revisions=[{"revision": 1}]),
        lambda d: d.update(heads="8d3f6b2a9c11"),
        lambda d: d["revisions"][0].update(down_revisions="x"),
        lambda d: d.update(heads=["nope"]),
    ],
    ids=["no-revisions", "revision-not-a-dict", "heads-a-string", "down-not-a-list", "unknown-head"],
)
def test_a_malformed_manifest_with_a_fresh_fingerprint_is_ignored(
    project: Path, sqlite_database: TestDatabase, corrupt
) -> None:  # type: ignore[no-untyped-def]
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    assert run_dbinit("manifest", cwd=project).returncode == 0
    path = project / "migrations" / "versions" / MANIFEST_NAME
    document = json.loads(path.read_text())
    corrupt(document)
    path.write_text(json.dumps(document))
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["migrations_source"] == "static"
    assert "Revision manifest not used" in result.stderr and "is malformed" in result.stderr
    check = run_dbinit("manifest", "--check", cwd=project)
    assert "is malformed" in usage_error(check)


# -- signals to PID 1 ------------------------------------------------------------------------


def _child_of(pid: int) -> int:
    def child() -> int | None:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    found: int = eventually(child, within=10, what="unshare's child process")
    return found


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize(
    ("args", "logged"),
    [(["wait", "--until-verified"], "Waiting for the database to be ready"),
     (["wait"], "Database not reachable yet")],
    ids=["until-verified", "connect"],
)
def test_wait_as_pid_1_stops_on_a_signal(
    project: Path, pg_database: TestDatabase, tmp_path: Path,
    signum: int, code: int, args: list[str], logged: str,
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run a command as PID 1")
    # until-verified: an empty database never verifies; connect: nothing listens on port 1
    url = pg_database.url if "--until-verified" in args else "postgresql://postgres@127.0.0.1:1/x"
    stderr_file = tmp_path / "stderr"
    with stderr_file.open("w") as stderr_handle:
        process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "dbinit", *args],
            cwd=project, env=clean_env(DATABASE_URL=url, DBINIT_WAIT_TIMEOUT="120"),
            stdout=subprocess.DEVNULL, stderr=stderr_handle, stdin=subprocess.DEVNULL,
        )
    try:
        child = _child_of(process.pid)
        nspid = next(line for line in Path(f"/proc/{child}/status").read_text().splitlines()
                     if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1", nspid  # PID 1 in its namespace
        # a first attempt was logged: the retry loop runs (and would run for 120 s)
        eventually(lambda: logged in stderr_file.read_text(), within=30, what=logged)
        os.kill(child, signum)
        process.wait(timeout=15)
    finally:
        process.kill()
        process.wait()
    stderr = stderr_file.read_text()
    assert process.returncode == code, stderr
    assert f"Error: {signal.Signals(signum).name} received: wait stopped" in stderr
    assert "Traceback" not in stderr
