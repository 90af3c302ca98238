"""The command-line dispatcher: ``dbinit``, ``python -m dbinit`` and ``manage.py``.

``execute_from_command_line(argv)`` is what a project's ``manage.py`` calls;
``call_command(name, *args, **options)`` is the programmatic API. Commands
come from ``dbinit.commands`` and from plugins (``dbinit_commands``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn, TextIO

from dbinit import __version__
from dbinit.errors import FOREIGN_FAILURES, ConfigurationError, DbinitError, PluginError
from dbinit.management.base import BaseCommand, CommandError

__all__ = ["BaseCommand", "CommandError", "call_command", "execute_from_command_line", "main"]


@dataclasses.dataclass(frozen=True)
class Commands:
    """The commands the dispatcher can run, and why plugins' commands are missing, if they are."""

    commands: Mapping[str, tuple[str, Any]]
    #: the ``plugins`` setting could not be read: only the built-ins' and entry points' commands are here
    unreadable: ConfigurationError | None = None

    def get(self, name: str) -> tuple[str, Any]:
        if name in self.commands:
            return self.commands[name]
        if self.unreadable is not None:
            raise self.unreadable
        raise CommandError(
            f"Unknown command: {name!r}",
            hint="Type 'dbinit help' for the list of commands",
        )


def _registry_commands() -> Commands:
    """The commands of the process's registry (the one every command then uses).

    Built from the ``plugins`` setting alone (:func:`dbinit.settings.plugin_modules`:
    the environment, ``.env``, ``[tool.dbinit]``), so that a command's other
    invalid settings are reported by that command (exit 2, and the JSON error
    object with ``--format json``), not here. ``dbinit_commands`` gets the
    settings read from the same sources, or None when they are invalid.
    When ``plugins`` itself cannot be read, the other commands still run
    (and report that error themselves); any other is that error.
    """
    from dbinit.pluginmanager import Registry
    from dbinit.settings import load_settings, plugin_modules

    unreadable: ConfigurationError | None = None
    try:
        modules = plugin_modules()
    except ConfigurationError as exc:
        modules, unreadable = (), exc
    registry = Registry.load(modules)
    try:
        settings = load_settings()
    except ConfigurationError:
        settings = None  # reported by the command, which reads them again (with its flags)
    return Commands(registry.commands(settings), unreadable)


def load_command_class(
    name: str, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> BaseCommand:
    plugin, spec = _registry_commands().get(name)
    if isinstance(spec, str):
        try:
            module = importlib.import_module(spec)
        except FOREIGN_FAILURES as exc:
            raise PluginError(
                plugin,
                f"command {name!r} cannot be imported from {spec!r}: {type(exc).__name__}: {exc}",
                hint="Fix or uninstall the plugin providing it",
            ) from exc
        command_class = getattr(module, "Command", None)
    else:
        command_class = spec
    if not (isinstance(command_class, type) and issubclass(command_class, BaseCommand)):
        raise CommandError(f"plugin {plugin!r}: command {name!r} is not a BaseCommand subclass")
    return command_class(stdout=stdout, stderr=stderr)


def call_command(
    name: str,
    *args: str,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    **options: Any,
) -> int:
    """Run a command as the command line would; returns its exit code.

    ``options`` are given as flags (``format="json"`` -> ``--format json``,
    ``plan=True`` -> ``--plan``).
    """
    argv = ["dbinit", name, *args]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    command = load_command_class(name, stdout=stdout, stderr=stderr)
    return command.run_from_argv(argv)


class ManagementUtility:
    """Django's dispatcher, reduced to what dbinit needs."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = list(argv if argv is not None else sys.argv)
        self.prog_name = os.path.basename(self.argv[0]) if self.argv else "dbinit"
        if self.prog_name == "__main__.py":
            self.prog_name = "python -m dbinit"

    def main_help_text(self) -> str:
        found = _registry_commands()
        if found.unreadable is not None:
            raise found.unreadable
        lines = [
            f"Usage: {self.prog_name} <command> [options]",
            "",
            "Services verify, one job migrates.",
            "",
            f"Type '{self.prog_name} help <command>' for help on a command.",
            "",
            "Available commands:",
        ]
        for name, (plugin, _spec) in found.commands.items():
            origin = "" if plugin.startswith("dbinit.") else f"  [{plugin}]"
            lines.append(f"    {name}{origin}")
        lines.append("    help")
        return "\n".join(lines) + "\n"

    def execute(self) -> int:
        args = self.argv[1:]
        subcommand = args[0] if args else "help"
        try:
            if subcommand in ("--version", "version"):
                sys.stdout.write(__version__ + "\n")
                return 0
            if subcommand in ("help", "--help", "-h"):
                if len(args) > 1 and args[1] not in ("--help", "-h"):
                    load_command_class(args[1]).print_help(self.prog_name, args[1])
                else:
                    sys.stdout.write(self.main_help_text())
                return 0
            command = load_command_class(subcommand)
        except DbinitError as exc:
            sys.stderr.write(f"Error: {exc.message}\n")
            if exc.hint:
                sys.stderr.write(f"Hint: {exc.hint}\n")
            return int(exc.exit_code)
        return command.run_from_argv([self.prog_name, subcommand, *args[1:]])


def execute_from_command_line(argv: list[str] | None = None) -> NoReturn:
    """Run the command named in ``argv`` and exit with its exit code."""
    sys.exit(ManagementUtility(argv).execute())


def main() -> NoReturn:
    """Console-script entry point (``dbinit``)."""
    try:
        execute_from_command_line(sys.argv)
    except KeyboardInterrupt:
        sys.exit(130)
