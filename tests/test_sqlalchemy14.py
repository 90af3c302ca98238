"""dbinit beside an application still on SQLAlchemy 1.4 (superset 6, lemur).

``verify`` never imports SQLAlchemy; ``migrate`` runs Alembic, which supports
1.4. A virtualenv with dbinit, ``sqlalchemy<2`` and psycopg2 (1.4 has no
psycopg 3 dialect) is built once for this module; both ``alembic init``
templates are migrated and verified in it, on PostgreSQL and SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.databases import EXAMPLE, ROOT, TestDatabase, clean_env


@pytest.fixture(scope="module")
def venv14(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("sa14") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT), "sqlalchemy[asyncio]>=1.4.46,<2",
         "psycopg2-binary"],
        capture_output=True, text=True, timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    version = subprocess.run([str(python), "-c", "import sqlalchemy; print(sqlalchemy.__version__)"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("1.4."), version
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run14(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = clean_env(**env)
    environment.pop("PYTHONPATH", None)  # the installed dbinit, not the checkout
    return subprocess.run([str(venv / "bin" / "python"), "-m", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("template", ["async", "generic"])
def test_migrate_and_verify_on_sqlalchemy_1_4(
    venv14: Path, tmp_path: Path, database: TestDatabase, template: str
) -> None:
    if template == "async":
        project = tmp_path / "project"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__"))
    else:
        project = tmp_path
        made = run14(venv14, "alembic", "init", "migrations", cwd=project)
        assert made.returncode == 0, made.stderr
        for name, body in (("a1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
                           ("b2", "op.add_column('t1', sa.Column('note', sa.String(20)))")):
            down = "None" if name == "a1" else "'a1'"
            (project / "migrations" / "versions" / f"{name}_step.py").write_text(
                "from alembic import op\nimport sqlalchemy as sa\n"
                f"revision = '{name}'\ndown_revision = {down}\nbranch_labels = None\ndepends_on = None\n"
                f"def upgrade():\n    {body}\n"
            )
    url = database.url.replace("postgresql+asyncpg://", "postgresql://")
    before = run14(venv14, "dbinit", "verify", cwd=project, DATABASE_URL=url)
    assert before.returncode == 4, before.stdout + before.stderr
    migrated = run14(venv14, "dbinit", "migrate", cwd=project, DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    verified = run14(venv14, "dbinit", "verify", cwd=project, DATABASE_URL=url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert database.versions() == ({"8d3f6b2a9c11"} if template == "async" else {"b2"})
