"""dbinit: services verify, one job migrates.

The package root exports the plugin marker and, lazily, the Python API, so
that ``import dbinit`` costs nothing on a service's startup path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@dbinit.hookimpl``.
hookimpl = pluggy.HookimplMarker("dbinit")

__all__ = ["DatabaseInitManager", "__version__", "hookimpl", "initialize_service_database"]

if TYPE_CHECKING:
    from dbinit.api import DatabaseInitManager, initialize_service_database


def __getattr__(name: str) -> Any:
    if name in ("initialize_service_database", "DatabaseInitManager"):
        from dbinit import api

        return getattr(api, name)
    raise AttributeError(f"module 'dbinit' has no attribute {name!r}")
