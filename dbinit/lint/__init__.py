"""``dbinit lint``: what each revision's SQL will do to a live database (needs the ``lint`` extra).

Import-light on purpose: the other modules of the command import PostgreSQL's
parser (pglast); this one only asks whether it is installed.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'dbinit-alembic[lint]'"


def pglast_installed() -> bool:
    """Whether PostgreSQL's parser (pglast, the ``lint`` extra) can be imported; it is not imported."""
    return importlib.util.find_spec("pglast") is not None
