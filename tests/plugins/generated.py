"""Generated Alembic projects for the pytest plugin's tests and bench, and running pytest on them.

A project starts as ``alembic init`` makes it (the generic or the async
template, made once and copied), unmodified unless a case says otherwise;
revisions are written in Alembic's own file shape. pytest runs on it in a
subprocess, as a user would; JUnit XML says which items passed, failed or
were skipped and with what message.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Rev:
    """One revision: id, parent(s), upgrade() and downgrade() bodies, extra module-level lines."""

    id: str
    down: str | tuple[str, ...] | None
    upgrade: str = "pass"
    downgrade: str = "pass"
    header: str = ""
    #: the file's text as is (an unreadable file), instead of Alembic's shape
    raw: str | None = None


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DBINIT_", "DATABASE_URL", "PYTEST_", "COV_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTEST_ADDOPTS", None)
    env.update(extra)
    return env


def alembic_template(folder: Path, template: str = "generic") -> Path:
    """``alembic init -t TEMPLATE migrations`` in ``folder`` (made once per folder)."""
    target = folder / f"template-{template}"
    if not target.exists():
        target.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "alembic", "init", "-t", template, "migrations"], cwd=target,
                       env=clean_env(), check=True, capture_output=True, timeout=120)
    return target


def write_revision(project: Path, rev: Rev) -> Path:
    path = project / "migrations" / "versions" / f"{rev.id}_revision.py"
    if rev.raw is not None:
        path.write_text(rev.raw)
        return path
    down = rev.down
    text = textwrap.dedent(f'''\
        """revision {rev.id}

        Revision ID: {rev.id}
        Revises: {down if isinstance(down, str) else ", ".join(down or ())}
        Create Date: 2026-11-25 00:00:00

        """
        from typing import Sequence, Union

        from alembic import op
        import sqlalchemy as sa

        # revision identifiers, used by Alembic.
        revision: str = {rev.id!r}
        down_revision: Union[str, Sequence[str], None] = {down!r}
        branch_labels: Union[str, Sequence[str], None] = None
        depends_on: Union[str, Sequence[str], None] = None
        ''')
    text += rev.header + "\n\n"
    body = textwrap.dedent(rev.upgrade).strip() or "pass"
    text += "def upgrade() -> None:\n" + textwrap.indent(body, "    ")
    text += "\n\n\ndef downgrade() -> None:\n"
    text += textwrap.indent(textwrap.dedent(rev.downgrade).strip() or "pass", "    ") + "\n"
    path.write_text(text)
    return path


def make_project(
    target: Path,
    templates: Path,
    revisions: list[Rev],
    *,
    template: str = "generic",
    models: str | None = None,
    ini: str = "",
    metadata_in_env: bool = False,
) -> Path:
    """A project at ``target``: alembic init's files, the revisions, ``models.py`` if given, and a
    ``pytest.ini`` (``[pytest]`` + ``ini``). ``metadata_in_env``: env.py's ``target_metadata`` is
    the models' (the edit pytest-alembic's model test needs)."""
    shutil.copytree(alembic_template(templates, template), target, dirs_exist_ok=True)
    for rev in revisions:
        write_revision(target, rev)
    if models is not None:
        (target / "models.py").write_text(textwrap.dedent(models))
    if metadata_in_env:
        env = target / "migrations" / "env.py"
        env.write_text(env.read_text().replace("target_metadata = None",
                                               "from models import metadata as target_metadata", 1))
    (target / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    return target


@dataclasses.dataclass(frozen=True)
class Case:
    """One item's result in a pytest run."""

    name: str
    outcome: str  # passed, failed, error, skipped
    message: str


@dataclasses.dataclass(frozen=True)
class Run:
    returncode: int
    output: str
    cases: dict[str, Case]

    def outcome(self, name: str) -> str:
        return self.cases[name].outcome

    def failed(self) -> dict[str, str]:
        return {n: c.message for n, c in self.cases.items() if c.outcome in ("failed", "error")}


def run_pytest(project: Path, *args: str, timeout: float = 600, **env: str) -> Run:
    """``python -m pytest ARGS`` in ``project`` (no cache, JUnit XML), as a user would."""
    report = project / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", f"--junitxml={report}", *args],
        cwd=project, env=clean_env(**env), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    cases: dict[str, Case] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    message = (child.get("message") or "") + "\n" + (child.text or "")
                    break
            cases[case.get("name", "")] = Case(case.get("name", ""), outcome, message)
        report.unlink()
    return Run(proc.returncode, proc.stdout + proc.stderr, cases)


#: conftest.py giving pytest-alembic its alembic_engine (and alembic_config with the same URL):
#: a fresh database per test on the server in $CORPUS_SERVER_URL (SQLAlchemy URL, psycopg).
PYTEST_ALEMBIC_CONFTEST = '''\
import os
import uuid

import pytest
import sqlalchemy as sa
from pytest_alembic.config import Config


@pytest.fixture
def alembic_engine():
    server = os.environ["CORPUS_SERVER_URL"]
    name = "pa_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = sa.create_engine(sa.make_url(server).set(database=name), poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def alembic_config(alembic_engine):
    url = alembic_engine.url.render_as_string(hide_password=False)
    return Config(config_options={"sqlalchemy.url": url, "script_location": "migrations"})
'''

PYTEST_ALEMBIC_TESTS = '''\
from pytest_alembic.tests import test_single_head_revision, test_up_down_consistency, test_upgrade
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace
'''

PYTEST_ALEMBIC_MODEL_TEST = '''\
from pytest_alembic.tests import test_model_definitions_match_ddl
'''


#: pytest-alembic's documented env.py edit: use the connection it puts in config.attributes.
ENV_CONNECTION_EDIT = (
    """    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
""",
    """    connectable = context.config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
""",
)


def add_pytest_alembic(project: Path, *, models: bool) -> None:
    """The side-by-side harness: pytest-alembic's built-ins in files of their own, its alembic_engine
    fixture, and the env.py edit it needs (the connection from ``config.attributes``)."""
    env = project / "migrations" / "env.py"
    text = env.read_text()
    assert ENV_CONNECTION_EDIT[0] in text, "env.py is not alembic init's"
    env.write_text(text.replace(*ENV_CONNECTION_EDIT, 1))
    (project / "conftest.py").write_text(PYTEST_ALEMBIC_CONFTEST)
    tests = PYTEST_ALEMBIC_TESTS + (PYTEST_ALEMBIC_MODEL_TEST if models else "")
    (project / "test_pytest_alembic.py").write_text(tests)


def run_inline(pytester: Any, *args: str) -> Run:
    """pytest in this process (pytester.inline_run: sys.modules and sys.path put back after)."""
    recorder = pytester.inline_run("-p", "no:cacheprovider", *args)
    cases: dict[str, Case] = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.outcome != "passed":
            if name in cases and cases[name].outcome != "passed":
                continue
            outcome = report.outcome
            if outcome == "failed" and report.when != "call":
                outcome = "error"
            message = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else (
                report.longreprtext)
            cases[name] = Case(name, outcome, message)
    for report in recorder.getreports("pytest_collectreport"):
        if report.failed:
            cases[report.nodeid or "<collection>"] = Case(report.nodeid, "error", report.longreprtext)
    return Run(int(recorder.ret), "\n".join(f"{c.name}: {c.outcome}: {c.message}" for c in cases.values()),
               cases)


def drop_templates(server_url: str, script_location: Path) -> None:
    """Drop the templates the plugin keeps on a server for the project at ``script_location``."""
    import asyncio
    import hashlib

    import asyncpg

    family = "dbinit_tpl_" + hashlib.sha256(str(script_location.resolve()).encode()).hexdigest()[:8] + "_"

    async def run() -> None:
        connection = await asyncpg.connect(server_url)
        try:
            for row in await connection.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", family
            ):
                await connection.execute(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(run())


def preload_extensions() -> None:
    """Import the C-extension drivers in this process before pytester snapshots ``sys.modules``
    (it removes what an inline run imported; a C extension loaded twice segfaults)."""
    import importlib

    for name in ("asyncpg", "psycopg", "sqlalchemy", "sqlalchemy.ext.asyncio", "alembic", "aiosqlite",
                 "greenlet", "pglast", "pytest_alembic", "sqlite3", "hypothesis", "xdist"):
        importlib.import_module(name)
