"""The built-in management commands: every module of ``dbinit.commands``.

Listed without importing them; a command's module is imported only when it
runs (as in Django).
"""

from __future__ import annotations

import pkgutil

from dbinit import hookimpl


@hookimpl(trylast=True)
def dbinit_commands() -> dict[str, str]:
    from dbinit import commands

    return {
        info.name: f"dbinit.commands.{info.name}"
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_") and not info.ispkg
    }
