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


COUNTING_PLUGIN = """
import json
from dbinit import hookimpl
from dbinit.management.base import BaseCommand
from dbinit.pluginmanager import Registry
from dbinit.settings import plugin_modules

CALLS = []


class Count(BaseCommand):
    help = "How many times dbinit_commands ran, and whether the dispatcher's registry is this one"
    has_format = True

    def handle(self, **options):
        self.registry.commands(self.settings)  # the dispatcher's settings: collected once
        same = self.registry is Registry.load(plugin_modules())
        self.stdout.write(json.dumps({"calls": len(CALLS), "same_registry": same}))


@hookimpl
def dbinit_commands(settings):
    CALLS.append(settings)
    return {"count": Count}
"""


@pytest.mark.parametrize("where", ["pyproject", "dotenv", "env-file"])
def test_plugin_from_pyproject_or_dotenv_runs_its_command_with_one_registry(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase, where: str
) -> None:
    env = _plugin(tmp_path, "counting_plugin", COUNTING_PLUGIN)
    if where == "pyproject":
        with (project / "pyproject.toml").open("a") as handle:
            handle.write('plugins = ["counting_plugin"]\n')
    elif where == "dotenv":
        (project / ".env").write_text("DBINIT_PLUGINS=counting_plugin\n")
    else:
        (tmp_path / "other.env").write_text("DBINIT_PLUGINS=counting_plugin\n")
        env["DBINIT_ENV_FILE"] = str(tmp_path / "other.env")
    counted = run_dbinit("count", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert counted.returncode == 0, counted.output
    assert json.loads(counted.stdout) == {"calls": 1, "same_registry": True}
    helped = run_dbinit("help", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert "    count  [counting_plugin]" in helped.stdout.splitlines()
    listed = run_dbinit("plugins", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    [row] = [p for p in json.loads(listed.stdout) if p["name"] == "counting_plugin"]
    assert row["source"] == "DBINIT_PLUGINS" and row["commands"] == ["count"]

    # an unrelated invalid setting is the command's to report (exit 2, JSON error), not the dispatcher's
    bad = run_dbinit("count", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url,
                     DBINIT_LOCK_TIMEOUT="-1", **env)
    assert bad.returncode == 2, bad.output
    error = json.loads(bad.stdout)
    assert error["ok"] is False and error["error"] == "ConfigurationError"
    assert "DBINIT_LOCK_TIMEOUT" in error["message"]


def test_unreadable_plugins_setting_still_runs_builtin_commands_that_report_it(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    missing = str(tmp_path / "missing.env")
    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url,
                          DBINIT_ENV_FILE=missing)
    assert verified.returncode == 2, verified.output
    assert "DBINIT_ENV_FILE" in json.loads(verified.stdout)["message"]
    other = run_dbinit("count", cwd=project, DATABASE_URL=sqlite_database.url, DBINIT_ENV_FILE=missing)
    assert other.returncode == 2 and "DBINIT_ENV_FILE" in other.stderr, other.output
    assert "Unknown command" not in other.stderr


OPTIONS_PLUGIN = """
import json
from pathlib import Path
from dbinit import hookimpl
from dbinit.management.base import BaseCommand
from dbinit.settings import PluginSettings, plugin_config


class MetricsSettings(PluginSettings):
    model_config = plugin_config("metrics")

    path: Path = Path("default.prom")
    timeout: float = 1.0
    labels: str = "none"


class Show(BaseCommand):
    help = "Show the metrics plugin's options"

    def handle(self, **options):
        self.stdout.write(MetricsSettings.load().model_dump_json())


@hookimpl
def dbinit_commands():
    return {"metrics-show": Show}


@hookimpl
def dbinit_verify_finished(report, settings):
    options = MetricsSettings.load()
    options.path.write_text(f"dbinit_verified{{service={settings.service!r}}} {int(report.ok)}\\n")
"""


def test_plugin_options_env_beats_dotenv_beats_pyproject(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    env = _plugin(tmp_path, "metrics_plugin", OPTIONS_PLUGIN)
    env["DBINIT_PLUGINS"] = "metrics_plugin"

    def shown(**extra: str) -> dict[str, object]:
        result = run_dbinit("metrics-show", cwd=project, DATABASE_URL=sqlite_database.url, **env, **extra)
        assert result.returncode == 0, result.output
        return json.loads(result.stdout)

    assert shown() == {"path": "default.prom", "timeout": 1.0, "labels": "none"}
    with (project / "pyproject.toml").open("a") as handle:
        handle.write('\n[tool.dbinit.metrics]\npath = "from-pyproject.prom"\ntimeout = 2\nlabels = "p"\n')
    assert shown() == {"path": "from-pyproject.prom", "timeout": 2.0, "labels": "p"}
    (project / ".env").write_text("DBINIT_METRICS_TIMEOUT=3\nDBINIT_METRICS_LABELS=dotenv\n")
    assert shown() == {"path": "from-pyproject.prom", "timeout": 3.0, "labels": "dotenv"}
    assert shown(DBINIT_METRICS_LABELS="env")["labels"] == "env"
    (tmp_path / "named.env").write_text("DBINIT_METRICS_LABELS=named\n")
    assert shown(DBINIT_ENV_FILE=str(tmp_path / "named.env"))["labels"] == "named"

    # read by a hook: the plugin configures itself from its options and dbinit's settings
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    verified = run_dbinit("verify", cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert verified.returncode == 0, verified.output
    assert (project / "from-pyproject.prom").read_text() == "dbinit_verified{service='orders'} 1\n"


@pytest.mark.parametrize("command", ["metrics-show", "verify"])
def test_plugin_option_invalid_is_exit_2_naming_the_variable(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase, command: str
) -> None:
    env = _plugin(tmp_path, "metrics_plugin", OPTIONS_PLUGIN)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    env |= {"DBINIT_PLUGINS": "metrics_plugin", "DBINIT_METRICS_TIMEOUT": "soon"}
    result = run_dbinit(command, cwd=project, DATABASE_URL=sqlite_database.url, **env)
    assert result.returncode == 2, result.output
    assert "invalid setting DBINIT_METRICS_TIMEOUT: Input should be a valid number" in result.stderr
    assert "[tool.dbinit.metrics] in pyproject.toml" in result.stderr
    if command == "verify":
        assert "plugin 'metrics_plugin'" in result.stderr


REPLACE_RECREATE = """
from dbinit import hookimpl
from dbinit.strategies import Strategy


def rebuild(context):
    context.log.warning("acme rebuild ran")
    return context.upgrade()


@hookimpl(wrapper=True)
def dbinit_strategies():
    results = yield
    kept = [[s for s in r if not s.force_recreate] for r in results]
    return [*kept, [Strategy("rebuild", rebuild, "acme's own", destructive=True, force_recreate=True)]]
"""


def test_force_recreate_selects_the_marked_strategy_a_plugin_may_replace(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    env = _plugin(tmp_path, "acme_rebuild", REPLACE_RECREATE)
    settings = {"DATABASE_URL": sqlite_database.url, "DB_FORCE_RECREATE": "true", **env}
    replaced = run_dbinit(
        "migrate", "--format", "json", cwd=project, DBINIT_PLUGINS="acme_rebuild", **settings
    )
    assert replaced.returncode == 0, replaced.output
    assert json.loads(replaced.stdout)["strategy"] == "rebuild" and "acme rebuild ran" in replaced.stderr
    builtin = run_dbinit("migrate", "--format", "json", cwd=project, **settings)
    assert builtin.returncode == 0 and json.loads(builtin.stdout)["strategy"] == "recreate", builtin.output

    (tmp_path / "plugins_path" / "acme_second.py").write_text(
        "from dbinit import hookimpl\nfrom dbinit.strategies import Strategy\n@hookimpl\n"
        "def dbinit_strategies():\n    return [Strategy('wipe', lambda c: [], force_recreate=True)]\n"
    )
    both = run_dbinit("migrate", cwd=project, DBINIT_PLUGINS="acme_second", **settings)
    assert both.returncode == 2, both.output
    assert ("plugin 'acme_second': strategy 'wipe' is marked force_recreate, and so is strategy "
            "'recreate' of plugin 'dbinit.plugins.strategies'") in both.stderr


def test_plugins_shows_versions_and_hooks(
    tmp_path: Path, project: Path, sqlite_database: TestDatabase
) -> None:
    env = _plugin(tmp_path, "acme_ep", GOOD_PLUGIN + "\n__version__ = '9.9'\n")
    dist = tmp_path / "plugins_path" / "acme_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dbinit]\nacme = acme_ep\n")
    (tmp_path / "plugins_path" / "acme_mod.py").write_text("__version__ = '2.3'\n")
    settings = {"DATABASE_URL": sqlite_database.url, "DBINIT_PLUGINS": "acme_mod", **env}
    listed = run_dbinit("plugins", "--format", "json", cwd=project, **settings)
    assert listed.returncode == 0, listed.output
    rows = {p["name"]: p for p in json.loads(listed.stdout)}
    assert rows["acme"]["version"] == "1.0"  # the distribution's, not the module's
    assert rows["acme_mod"]["version"] == "2.3" and rows["acme_mod"]["hooks"] == []
    assert rows["dbinit.plugins.checks"]["version"] == "0.1.0"
    assert rows["acme"]["hooks"] == ["dbinit_checks", "dbinit_commands", "dbinit_strategies",
                                     "dbinit_verify_finished"]
    text = run_dbinit("plugins", cwd=project, **settings).stdout.splitlines()
    assert "acme 1.0  (entrypoint, acme-ep)" in text
    assert "    hooks: dbinit_checks (tryfirst)" in text
    assert "    strategies: noop" in text
