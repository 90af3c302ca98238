"""The built-in management commands: every module of ``dbinit.commands``.

Listed without importing them (a directory listing, not even ``pkgutil``); a
command's module is imported only when it runs (as in Django).
"""

from __future__ import annotations

import os

from dbinit import hookimpl


@hookimpl(trylast=True)
def dbinit_commands() -> dict[str, str]:
    from dbinit import commands

    names = {
        entry[:-3]
        for folder in commands.__path__
        for entry in os.listdir(folder)
        if entry.endswith(".py") and not entry.startswith("_")
    }
    return {name: f"dbinit.commands.{name}" for name in sorted(names)}
