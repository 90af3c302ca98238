"""The verify hot path: one statement, no SQLAlchemy, no Alembic, no migration files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.databases import TestDatabase, clean_env, run_dbinit
from tests.plugins.pgproxy import pg_proxy


@pytest.mark.parametrize("state", ["migrated", "empty", "legacy"])
def test_verify_sends_one_statement(project: Path, pg_database: TestDatabase, state: str) -> None:
    if state in ("migrated", "legacy"):
        assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    if state == "legacy":  # migrated before dbinit kept a history
        pg_database.sql("DROP TABLE dbinit_history")
    with pg_proxy(pg_database.url) as proxy:
        result = run_dbinit("verify", cwd=project, DATABASE_URL=proxy.url_for(pg_database.url))
    if state == "legacy":
        # the statement names the history table, which is missing: one more statement without it
        assert result.returncode == 0, result.output
        assert proxy.statements == 2, proxy.messages
    elif state == "migrated":
        assert result.returncode == 0, result.output
        # one statement, one round trip, simple protocol (no Parse/Bind/Describe)
        assert proxy.statements == 1, proxy.messages
        assert proxy.round_trips == 1, proxy.messages
        assert proxy.messages["P"] == 0
    else:
        # no version table: a database that is not ready costs a second statement
        assert result.returncode == 4, result.output
        assert proxy.statements == 2, proxy.messages


def test_verify_imports_neither_sqlalchemy_nor_alembic_nor_migrations(
    project: Path, database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    modules = verify_in_a_process(project, clean_env(DATABASE_URL=database.url))
    heavy = ("sqlalchemy", "alembic", "mako", "aiosqlite", "opentelemetry", "pglast")
    forbidden = [m for m in modules if m.split(".")[0] in heavy]
    assert forbidden == []  # opentelemetry: only with the tracing plugin enabled
    # nor the bridge that routes Alembic's stdlib logging into dbinit's lines
    assert [m for m in modules if m in ("logging.config", "dbinit.logbridge")] == []
    # nor what only migrate needs: the strategies (their plugin is loaded, its strategies are not built)
    assert [m for m in modules if m in ("dbinit.strategies", "dbinit.lock", "dbinit.migrate")] == []
    # json lines (a pod's: stderr is not a terminal) are written without structlog, whose package
    # imports rich (and pygments) on every start where rich is installed
    assert [m for m in modules if m.split(".")[0] in ("structlog", "rich", "pygments")] == []
    # Alembic loads env.py and revision files as modules named like "env_py"
    migration_modules = [m for m in modules if m.endswith("_py") or "374752db316e" in m]
    assert migration_modules == []


def test_only_dbinit_plugins_imports_importlib_metadata() -> None:
    """Versions are read for `dbinit plugins` only; entry points are found without it.

    (pydantic imports ``importlib.metadata`` for its own plugins on every start: that cost is
    not dbinit's to remove; dbinit adds none.)
    """
    import ast

    root = Path(__file__).resolve().parents[1]
    importers = []
    for folder in ("dbinit", "plugins", "commands"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "importlib.metadata" or n.startswith("importlib.metadata.") for n in names):
                    importers.append(str(path.relative_to(root)))
    assert importers == ["commands/plugins.py"]


def test_importing_dbinit_imports_no_tracing() -> None:
    """The tracing plugin is not registered by default: dbinit's modules never import OpenTelemetry."""
    code = (
        "import json, sys\n"
        "import dbinit, dbinit.api, dbinit.asgi, dbinit.logs, dbinit.management, dbinit.pluginmanager\n"
        "from dbinit.pluginmanager import Registry\n"
        "Registry.load(())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("plugins", ["", "dbinit.plugins.prometheus"])
def test_verify_imports_no_prometheus_client(
    project: Path, sqlite_database: TestDatabase, plugins: str
) -> None:
    """Without the metrics plugin, or with it and nothing to export (no DBINIT_METRICS_*)."""
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    env = clean_env(DATABASE_URL=sqlite_database.url, DBINIT_PLUGINS=plugins)
    modules = verify_in_a_process(project, env)
    assert ("dbinit.plugins.prometheus" in modules) == bool(plugins)  # loaded when enabled
    assert [m for m in modules if m.split(".")[0] == "prometheus_client"] == []


def verify_in_a_process(project: Path, env: dict[str, str]) -> list[str]:
    """`dbinit verify` in a fresh interpreter (it must pass: exit 0); the modules it imported."""
    code = (
        "import json, sys\n"
        "from dbinit.management import ManagementUtility\n"
        "status = ManagementUtility(['dbinit', 'verify']).execute()\n"
        "print(json.dumps({'status': status, 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 0
    return list(result["modules"])
