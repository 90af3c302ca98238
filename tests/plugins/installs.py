"""What the tests that install a pinned tool once per machine share: the install's file lock.

tests/plugins/squawk.py (npm or pip into a staging folder, renamed into place) and
tests/test_k8s_manifests.py (a virtualenv, which cannot be moved, finished by a marker
file) install differently and say different things when they cannot (a skip, a
failure); both install under this lock, so that concurrent sessions install once.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def install_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made, with its folder, if missing) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
