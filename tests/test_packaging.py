"""The wheel maps plugins/ and commands/ into the dbinit namespace; imports are side-effect free."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.plugins.databases import ROOT


def test_wheel_holds_dbinit_plugins_and_commands_and_no_top_level_ones(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("dbinit_alembic-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dbinit/plugins/checks.py" in names
    assert "dbinit/plugins/strategies.py" in names
    assert "dbinit/commands/verify.py" in names
    assert "dbinit/commands/migrate.py" in names
    assert "dbinit/py.typed" in names
    assert "dbinit/revisions/scripts.py" in names and "dbinit/facts.py" in names
    top_level = {name.split("/")[0] for name in names}
    assert "plugins" not in top_level
    assert "commands" not in top_level
    assert not any(name.startswith(("tests/", "examples/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dbinit = dbinit.management:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_module_imports_cleanly_under_warnings_as_errors() -> None:
    import dbinit.commands
    import dbinit.plugins

    import dbinit.revisions

    modules = ["dbinit"]
    for package in (dbinit, dbinit.plugins, dbinit.commands, dbinit.revisions):
        prefix = package.__name__ + "."
        modules += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=prefix)]
    assert "dbinit.plugins.checks" in modules and "dbinit.commands.verify" in modules
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code, *modules],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # importing prints nothing, configures nothing


def test_ruff_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


#: The distribution's name on PyPI ("dbinit" there is an unrelated project).
DISTRIBUTION = "dbinit-alembic"
_INSTALL = re.compile(r"pip install\s+(?:-\S+\s+)*['\"]?(dbinit[\w.-]*)")


def test_the_distribution_name_is_ours_and_every_install_line_uses_it() -> None:
    """`pip install dbinit` would install another project: no doc, hint or script may say it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == DISTRIBUTION
    texts = [p for p in ROOT.rglob("*") if p.suffix in {".md", ".py", ".sh", ".txt", ".yaml", ".toml", ""}
             and p.is_file() and not any(part.startswith(".") or part.endswith(".egg-info")
                                       for part in p.relative_to(ROOT).parts)]
    named = []
    for path in texts:
        for found in _INSTALL.finditer(path.read_text(errors="replace")):
            named.append((path.relative_to(ROOT).as_posix(), found[1]))
    assert ("README.md", DISTRIBUTION) in named
    wrong = [(path, name) for path, name in named if path != "tests/test_packaging.py"
             and name.split("[")[0] != DISTRIBUTION]
    assert wrong == []
