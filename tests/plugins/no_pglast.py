"""A fresh interpreter in which pglast cannot be imported: as if the ``lint`` extra were not installed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.plugins.databases import clean_env

#: Python that hides pglast from every import after it (``import pglast`` raises ImportError).
HIDE_PGLAST = "import sys\nsys.modules['pglast'] = None  # as if the lint extra were not installed\n"


def python_without_pglast(
    code: str,
    *argv: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGV...`` with pglast hidden first (``sys`` is imported for ``code``)."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_PGLAST + code, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
    )


def dbinit_without_pglast(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``dbinit ARGS...`` in ``cwd`` with pglast hidden; ``settings`` are environment variables."""
    code = (
        "from dbinit.management import ManagementUtility\n"
        f"sys.exit(ManagementUtility({['dbinit', *args]!r}).execute())\n"
    )
    return python_without_pglast(code, cwd=cwd, env=clean_env(**settings))
