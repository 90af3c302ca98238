"""Third-party plugins: DBINIT_PLUGINS modules and entry points, and their failures."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from dbinit import hookspecs
from tests.plugins.databases import TestDatabase, run_dbinit

GOOD_PLUGIN = """
from pathlib import Path
from dbinit import hookimpl
from dbinit.checks import Error, Info, check
from dbinit.management.base import BaseCommand
from dbinit.strategies import Strategy


@check("acme.E001", "has_products_table", tags=("acme",))
def has_products(facts):
    if facts.state.table_count < 3:
        yield Error("fewer than 3 tables", hint="migrate first", id="acme.E001")
    else:
        yield Info("enough tables", id="acme.E001")


class Hello(BaseCommand):
    help = "Say hello"

    def handle(self, **options):
        self.stdout.write(f"hello from {self.settings.service}")


def noop(context):
    context.log.info("noop strategy ran")
    return []


@hookimpl
def dbinit_checks():
    return [has_products]


@hookimpl
def dbinit_strategies():
    return [Strategy("noop", noop, "does nothing")]


@hookimpl
def dbinit_commands():
    return {"hello": Hello}


@hookimpl
def dbinit_verify_finished(report):
    Path("verified.log").open("a").write(f"{report.action} {report.current_revision}\\n")
"""


def _plugin(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    folder = tmp_path / "plugins_path"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return {"PYTHONPATH": f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}"}


def test_plugin_contributes_check_strategy_command_and_hook(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    env = _plugin(tmp_path, "acme_dbinit", GOOD_PLUGIN)
    settings = {"DATABASE_URL": sqlite_database.url, "DBINIT_PLUGINS": "acme_dbinit", **env}
    listed = run_dbinit("plugins", "--format", "json", cwd=project, **settings)
    assert listed.returncode == 0, listed.output
    acme = next(p for p in json.loads(listed.stdout) if p["name"] == "acme_dbinit")
    assert acme["source"] == "DBINIT_PLUGINS"
    assert acme["checks"] == ["acme.E001"]
    assert acme["strategies"] == ["noop"]
    assert acme["commands"] == ["hello"]

    hello = run_dbinit("hello", cwd=project, **settings)
    assert hello.returncode == 0, hello.output
    assert hello.stdout.strip() == "hello from orders"
    assert "hello" in run_dbinit("help", cwd=project, **settings).stdout

    assert run_dbinit("migrate", cwd=project, **settings).returncode == 0
    verified = run_dbinit("verify", "--format", "json", cwd=project, **settings)
    assert verified.returncode == 0, verified.output
    ids = [c["id"] for c in json.loads(verified.stdout)["checks"]]
    assert ids[-1] == "acme.E001" and ids[0] == "dbinit.E001"
    assert (project / "verified.log").read_text().splitlines()[-1] == "verified 8d3f6b2a9c11"

    noop = run_dbinit("migrate", "--strategy", "noop", "--format", "json", cwd=project, **settings)
    assert noop.returncode == 0, noop.output
    assert json.loads(noop.stdout)["strategy"] == "noop"
    assert "noop strategy ran" in noop.stderr

    only = run_dbinit("check", "--tag", "acme", cwd=project, **settings)
    assert only.returncode == 0, only.output


@pytest.mark.parametrize(
    ("source", "code", "expected"),
    [
        ("raise ImportError('missing dependency foo')\n", 2, "cannot be imported"),
        (
            "from dbinit import hookimpl\n@hookimpl\ndef dbinit_no_such_hook():\n    pass\n",
            2,
            "dbinit_no_such_hook",
        ),
        (
            "from dbinit import hookimpl\n@hookimpl\ndef dbinit_checks():\n    raise RuntimeError('boom')\n",
            1,
            "hook dbinit_checks raised RuntimeError: boom",
        ),
        (
            "from dbinit import hookimpl\n@hookimpl\ndef dbinit_checks():\n    return ['not a check']\n",
            2,
            "returned str, not Check",
        ),
        (
            "from dbinit import hookimpl\nfrom dbinit.plugins.checks import migrations_present\n"
            "@hookimpl\ndef dbinit_checks():\n    return [migrations_present]\n",
            2,
            "check id 'dbinit.E001' is already provided by plugin 'dbinit.plugins.checks'",
        ),
        (
            "from dbinit import hookimpl\n@hookimpl\ndef dbinit_verify_finished(report):\n"
            "    raise ValueError('metrics down')\n",
            1,
            "hook dbinit_verify_finished raised ValueError",
        ),
    ],
    ids=[
        "import-error",
        "unknown-hook",
        "raises",
        "wrong-type",
        "duplicate-id",
        "raises-in-notify",
    ],
)
def test_broken_plugin_is_named_never_ignored(
    tmp_path: Path,
    project: Path,
    sqlite_database: TestDatabase,
    source: str,
    code: int,
    expected: str,
) -> None:
    env = _plugin(tmp_path, "broken_plugin", source)
    result = run_dbinit(
        "verify",
        cwd=project,
        DATABASE_URL=sqlite_database.url,
        DBINIT_PLUGINS="broken_plugin",
        **env,
    )
    assert result.returncode == code, result.output
    assert "broken_plugin" in result.stderr
    assert expected in result.stderr


def test_entry_point_plugin_is_loaded(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    env = _plugin(tmp_path, "acme_ep", GOOD_PLUGIN)
    dist = tmp_path / "plugins_path" / "acme_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dbinit]\nacme = acme_ep\n")
    result = run_dbinit(
        "plugins", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, **env
    )
    assert result.returncode == 0, result.output
    acme = next(p for p in json.loads(result.stdout) if p["name"] == "acme")
    assert acme["source"] == "entrypoint"
    assert acme["distribution"] == "acme-ep"
    assert acme["checks"] == ["acme.E001"]


def test_every_hook_is_documented() -> None:
    names = [n for n in dir(hookspecs) if n.startswith("dbinit_")]
    assert set(names) >= {
        "dbinit_checks",
        "dbinit_strategies",
        "dbinit_commands",
        "dbinit_verify_finished",
        "dbinit_migrate_finished",
    }
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc, f"{name} does not say when it is called"
        assert ":return:" in doc, f"{name} does not document its return value"


def test_entry_point_scan_agrees_with_importlib_metadata(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = tmp_path / "site"
    for dist, body in [("alpha_pkg-2.0", "[dbinit]\nalpha = alpha_mod:plugin\n[console_scripts]\nx = y:z\n"),
                       ("beta-1.0", "[other]\nnope = n\n[dbinit]\n beta = beta_mod \n")]:
        info = folder / f"{dist}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.split('-')[0]}\nVersion: 1\n")
        (info / "entry_points.txt").write_text(body)
    code = (
        "import json, importlib.metadata\n"
        "from dbinit.pluginmanager import find_entry_points\n"
        "ours = sorted((e.name, e.value) for e in find_entry_points('dbinit'))\n"
        "theirs = sorted((e.name, e.value) for e in importlib.metadata.entry_points(group='dbinit'))\n"
        "print(json.dumps([ours, theirs]))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ours, theirs = json.loads(proc.stdout)
    assert ours == theirs
    assert ["alpha", "alpha_mod:plugin"] in ours and ["beta", "beta_mod"] in ours
