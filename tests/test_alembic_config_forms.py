"""Alembic's configuration forms real projects use, read as Alembic reads them.

Each project is made by ``alembic init`` (its own templates) and ``alembic
revision``; Alembic's ``ScriptDirectory`` (built from the same files, through
``alembic.config.Config``) is the oracle for heads and revisions, and
``dbinit migrate`` / ``verify`` run as the job and a service would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.plugins.databases import TestDatabase, clean_env, run_dbinit

ALEMBIC = [sys.executable, "-m", "alembic"]


def alembic(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*ALEMBIC, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def oracle_heads(cwd: Path, toml: bool) -> list[str]:
    """Alembic's own heads for the project in ``cwd`` (its Config reads what the CLI reads)."""
    code = textwrap.dedent(f"""
        from alembic.config import Config
        from alembic.script import ScriptDirectory
        config = Config("alembic.ini", toml_file={"'pyproject.toml'" if toml else None})
        print(" ".join(sorted(ScriptDirectory.from_config(config).get_heads())))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def new_revisions(cwd: Path, count: int, version_path: Path | None = None) -> list[str]:
    revisions = []
    where = ("--version-path", str(version_path)) if version_path else ()
    for number in range(count):
        out = alembic(cwd, "revision", "-m", f"step {number}", *where)
        revisions.append(Path(out.split("Generating ")[1].split(" ...")[0]).name.split("_")[0])
    return revisions


def verify_json(cwd: Path, url: str, **env: str) -> tuple[int, dict[str, object]]:
    result = run_dbinit("verify", "--format", "json", cwd=cwd, DATABASE_URL=url, **env)
    assert "Traceback" not in result.output, result.output
    return result.returncode, json.loads(result.stdout)


def test_pyproject_template_with_tool_alembic(tmp_path: Path, sqlite_database: TestDatabase) -> None:
    """`alembic init -t pyproject`: script_location lives in [tool.alembic], not alembic.ini."""
    alembic(tmp_path, "init", "-t", "pyproject", "migrations")
    assert "script_location" not in (tmp_path / "alembic.ini").read_text().split("[loggers]")[0]
    revisions = new_revisions(tmp_path, 2)
    assert oracle_heads(tmp_path, toml=True) == [revisions[-1]]
    code, report = verify_json(tmp_path, sqlite_database.url)
    assert code == 4 and report["head_revisions"] == [revisions[-1]]
    migrated = run_dbinit("migrate", cwd=tmp_path, DATABASE_URL=sqlite_database.url)
    assert migrated.returncode == 0, migrated.output
    code, report = verify_json(tmp_path, sqlite_database.url)
    assert code == 0 and report["current_revision"] == revisions[-1]


def test_tool_alembic_version_locations_list_and_a_missing_folder(
    tmp_path: Path, sqlite_database: TestDatabase
) -> None:
    """A TOML list of folders with %(here)s; one configured folder does not exist (Alembic skips it)."""
    alembic(tmp_path, "init", "-t", "pyproject", "migrations")
    (tmp_path / "more_versions").mkdir()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'script_location = "%(here)s/migrations"',
        'script_location = "%(here)s/migrations"\n'
        'version_locations = ["%(here)s/migrations/versions", "%(here)s/more_versions", '
        '"%(here)s/not_there"]',
    ))
    first = new_revisions(tmp_path, 1, tmp_path / "migrations" / "versions")[0]
    out = alembic(tmp_path, "revision", "-m", "other", "--version-path", str(tmp_path / "more_versions"))
    assert "more_versions" in out
    heads = oracle_heads(tmp_path, toml=True)
    assert len(heads) == 1 and heads != [first]
    code, report = verify_json(tmp_path, sqlite_database.url)
    assert code == 4 and report["head_revisions"] == heads and report["migration_count"] == 2
    migrated = run_dbinit("migrate", cwd=tmp_path, DATABASE_URL=sqlite_database.url)
    assert migrated.returncode == 0, migrated.output
    assert verify_json(tmp_path, sqlite_database.url)[0] == 0


@pytest.mark.parametrize("separator", ["os", "space", ";", None])
def test_ini_version_locations_with_a_missing_folder(
    tmp_path: Path, sqlite_database: TestDatabase, separator: str | None
) -> None:
    alembic(tmp_path, "init", "migrations")
    ini = tmp_path / "alembic.ini"
    sep = {"os": os.pathsep, "space": " ", ";": ";", None: " "}[separator]
    text = ini.read_text().replace(
        "# version_locations = %(here)s/bar:%(here)s/bat:%(here)s/alembic/versions",
        f"version_locations = %(here)s/migrations/versions{sep}%(here)s/gone",
    )
    text = text.replace("path_separator = os", f"path_separator = {separator}" if separator else "")
    ini.write_text(text)
    revision = new_revisions(tmp_path, 1, tmp_path / "migrations" / "versions")[0]
    assert oracle_heads(tmp_path, toml=False) == [revision]
    code, report = verify_json(tmp_path, sqlite_database.url)
    assert code == 4 and report["head_revisions"] == [revision]
    assert run_dbinit("migrate", cwd=tmp_path, DATABASE_URL=sqlite_database.url).returncode == 0


def test_no_configured_versions_folder_exists(tmp_path: Path) -> None:
    alembic(tmp_path, "init", "migrations")
    (tmp_path / "migrations" / "versions").rmdir()
    result = run_dbinit("verify", cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert "versions folder" in result.stderr and "does not exist" in result.stderr


def test_package_resource_script_location_is_found_without_importing_the_package(
    tmp_path: Path, sqlite_database: TestDatabase
) -> None:
    """`script_location = myapp.db:migrations` (prefect's shape): verify reads the files, imports nothing."""
    package = tmp_path / "src" / "myapp" / "db"
    package.mkdir(parents=True)
    marker = tmp_path / "imported"
    (tmp_path / "src" / "myapp" / "__init__.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('myapp was imported')\n"
    )
    (package / "__init__.py").write_text("")
    alembic(package, "init", "migrations")
    ini = package / "alembic.ini"
    (tmp_path / "alembic.ini").write_text(
        ini.read_text().replace("script_location = %(here)s/migrations",
                                "script_location = myapp.db:migrations")
    )
    ini.unlink()
    env = {"PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{Path(__file__).resolve().parents[1]}"}
    proc = subprocess.run([*ALEMBIC, "revision", "-m", "one"], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(**env), timeout=60)
    assert proc.returncode == 0, proc.stderr
    marker.unlink()  # Alembic imports the package to find the folder
    code, report = verify_json(tmp_path, sqlite_database.url, **env)
    assert code == 4 and report["migration_count"] == 1, report
    assert not marker.exists(), "verify imported the application package"
    migrated = run_dbinit("migrate", cwd=tmp_path, DATABASE_URL=sqlite_database.url, **env)
    assert migrated.returncode == 0, migrated.output
    assert verify_json(tmp_path, sqlite_database.url, **env)[0] == 0


def test_package_resource_of_a_package_not_installed(tmp_path: Path) -> None:
    alembic(tmp_path, "init", "migrations")
    ini = tmp_path / "alembic.ini"
    ini.write_text(ini.read_text().replace("script_location = %(here)s/migrations",
                                           "script_location = not_installed_app:migrations"))
    result = run_dbinit("verify", cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert "names package 'not_installed_app', which is not installed as a folder" in result.stderr
    assert "DBINIT_MIGRATIONS_DIR" in result.stderr


def test_a_file_alembic_cannot_import_is_named(tmp_path: Path) -> None:
    """Not readable statically (a computed id) and not importable: the fallback names the file."""
    alembic(tmp_path, "init", "migrations")
    (tmp_path / "migrations" / "versions" / "c0ffee_computed.py").write_text(textwrap.dedent("""
        import app_settings_that_need_the_application
        revision = "c0ffee" + ""
        down_revision = None
        branch_labels = None
        depends_on = None
        def upgrade():
            pass
    """))
    result = run_dbinit("verify", cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert "Alembic cannot import " in result.stderr and "c0ffee_computed.py" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert "into upgrade()/downgrade()" in result.stderr


def test_an_empty_down_revision_is_refused_as_alembic_refuses_it(tmp_path: Path) -> None:
    """Alembic 1.x (the oracle) does not read '' as "no parent": dbinit says why, clearly."""
    alembic(tmp_path, "init", "migrations")
    (tmp_path / "migrations" / "versions" / "a1_first.py").write_text(
        'revision = "a1"\ndown_revision = ""\nbranch_labels = None\ndepends_on = None\n'
    )
    code = "from alembic.config import Config\nfrom alembic.script import ScriptDirectory\n" \
        "print(ScriptDirectory.from_config(Config('alembic.ini')).get_heads())"
    oracle = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=clean_env())
    assert oracle.returncode != 0 and "KeyError" in oracle.stderr  # Alembic cannot build the graph
    result = run_dbinit("verify", cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert "revision '' referenced from 'a1' (a1_first.py) is not present" in result.stderr
