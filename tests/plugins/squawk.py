"""squawk (https://squawkhq.com), the PostgreSQL migration linter, installed once per machine for tests.

squawk's npm package ``squawk-cli`` is a small JavaScript launcher; the binary
comes from an npm platform package (``@squawk-cli/linux-x64`` and so on, an
optional dependency), so ``npm install`` needs the npm registry only, not
GitHub. The same binary is on PyPI (``squawk-cli`` wheels): used when npm is
not on PATH. The version is pinned (:data:`VERSION`); the install goes to
``~/.cache/dbinit-tests/squawk/<version>`` (``$XDG_CACHE_HOME`` honoured;
``DBINIT_TEST_SQUAWK`` names a binary to use instead), once, under a file lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.plugins.installs import install_lock

#: squawk's version, the same on npm (squawk-cli) and PyPI (squawk-cli).
VERSION = "2.66.0"
#: What squawk is told, beyond the file: the PostgreSQL version the advice is for.
PG_VERSION = "16.0"


class SquawkUnavailable(Exception):
    """squawk cannot be installed here, for a reason a skip message can give."""


@dataclasses.dataclass(frozen=True)
class SquawkFinding:
    rule: str
    line: int
    message: str


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dbinit-tests" / "squawk" / VERSION


def _version_of(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip()


def _npm_install(target: Path, npm: str) -> Path:
    proc = subprocess.run(
        [npm, "install", "--prefix", str(target), "--no-save", "--no-package-lock", "--no-audit",
         "--no-fund", "--loglevel", "error", f"squawk-cli@{VERSION}"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"npm install squawk-cli@{VERSION} failed ({proc.returncode}):\n{proc.stderr}")
    return target / "node_modules" / ".bin" / "squawk"


def _pip_install(target: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         f"squawk-cli=={VERSION}"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        raise SquawkUnavailable(
            f"npm/node is not on PATH, and pip could not install squawk-cli=={VERSION}: "
            + (said[-1] if said else f"exit {proc.returncode}")
        )
    return target / "bin" / "squawk"


def _installed(root: Path) -> Path | None:
    for candidate in (root / "node_modules" / ".bin" / "squawk", root / "bin" / "squawk"):
        if candidate.exists():
            return candidate
    return None


def squawk_binary() -> Path:
    """The pinned squawk, installed on first use.

    Raises :class:`SquawkUnavailable` when neither npm (with node) nor pip can
    install it; a failing npm install is an error (CI has npm and the registry).
    """
    override = os.environ.get("DBINIT_TEST_SQUAWK")
    if override:
        binary = Path(override)
    else:
        root = cache_dir()
        with install_lock(root.with_name(f"{VERSION}.lock")):
            found = _installed(root)
            if found is None:
                shutil.rmtree(root, ignore_errors=True)  # what an interrupted install left
                npm, node = shutil.which("npm"), shutil.which("node")
                staging = Path(tempfile.mkdtemp(prefix=f"{VERSION}.", dir=root.parent))
                try:
                    if npm and node:
                        _npm_install(staging, npm)
                    else:
                        _pip_install(staging)
                    staging.rename(root)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                found = _installed(root)
                assert found is not None, f"squawk installed into {root}, but no binary there"
        binary = found
    version = _version_of(binary)
    if version != f"squawk {VERSION}":
        raise AssertionError(f"{binary} is {version!r}, the tests pin squawk {VERSION}")
    return binary


def run_squawk(binary: Path, sql: str, workdir: Path, name: str) -> list[SquawkFinding]:
    """squawk's findings on ``sql`` (its JSON reporter), with an empty config (no .squawk.toml found)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "squawk.toml"
    config.write_text("")
    path = workdir / f"{name}.sql"
    path.write_text(sql)
    proc = subprocess.run(
        [str(binary), "--reporter", "json", "--pg-version", PG_VERSION, "--config", str(config), path.name],
        cwd=workdir, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    # 0: no findings, 1: findings; anything else is squawk failing
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout, proc.stderr)
    return [
        SquawkFinding(rule=str(item["rule_name"]), line=int(item["line"]), message=str(item["message"]))
        for item in json.loads(proc.stdout or "[]")
    ]
