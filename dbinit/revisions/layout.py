"""Where the migrations live: ``alembic.ini`` read with :mod:`configparser`.

The versions folder(s), ``script_location``, ``recursive_version_locations``
and ``sourceless``, and the candidate revision files in them.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from pathlib import Path

from dbinit.errors import ConfigurationError

_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")


@dataclasses.dataclass(frozen=True)
class AlembicLayout:
    """What Alembic's configuration says about where the migrations live.

    ``pyproject`` is the ``pyproject.toml`` whose ``[tool.alembic]`` table was
    read (Alembic 1.16+), if any; ``missing`` the configured versions
    folders that do not exist, which Alembic skips.
    """

    alembic_ini: Path | None
    script_location: Path | None
    version_locations: tuple[Path, ...]
    recursive: bool = False
    sourceless: bool = False
    pyproject: Path | None = None
    missing: tuple[Path, ...] = ()


class _Options:
    """Alembic's configuration as ``Config.get_alembic_option`` reads it.

    ``[alembic]`` in ``alembic.ini`` first, then ``[tool.alembic]`` in
    ``pyproject.toml``; ``%(here)s`` is each file's own folder.
    """

    def __init__(
        self, ini: configparser.SectionProxy | None, toml: dict[str, object], toml_here: str
    ) -> None:
        self.ini = ini
        self.toml = toml
        self.toml_here = toml_here

    def text(self, name: str) -> str | None:
        if self.ini is not None and name in self.ini:
            return self.ini.get(name)
        value = self.toml.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigurationError(
                f"[tool.alembic] {name} in pyproject.toml is not a string",
                hint="Alembic expects a string there",
            )
        return value.replace("%(here)s", self.toml_here)

    def locations(self) -> list[str] | None:
        """``version_locations``: the ini's string split by its separator, or the TOML list."""
        if self.ini is not None and self.ini.get("version_locations"):
            separator = self.ini.get("path_separator")
            if separator is None:
                separator = self.ini.get("version_path_separator")
            return _split_locations(self.ini["version_locations"], separator)
        value = self.toml.get("version_locations")
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigurationError(
                "[tool.alembic] version_locations in pyproject.toml is not a list of strings",
                hint='Write it as version_locations = ["%(here)s/migrations/versions"]',
            )
        return [v.replace("%(here)s", self.toml_here) for v in value]

    def boolean(self, name: str) -> bool:
        # Alembic's get_alembic_boolean_option: exactly "true" in the ini, a TOML boolean
        if self.ini is not None and name in self.ini:
            return self.ini.get(name) == "true"
        value = self.toml.get(name, False)
        if not isinstance(value, bool):
            raise ConfigurationError(f"[tool.alembic] {name} in pyproject.toml is not a boolean")
        return value


def find_layout(alembic_ini: Path, migrations_dir: Path | None) -> AlembicLayout:
    """Locate the versions folder(s): ``migrations_dir`` wins over Alembic's configuration.

    Alembic's configuration is ``[alembic]`` in ``alembic.ini`` and, from
    Alembic 1.16, ``[tool.alembic]`` in ``pyproject.toml`` (beside
    ``alembic.ini``, else in the working directory), read with Alembic's
    precedence: the ini first.
    """
    if migrations_dir is not None:
        versions = migrations_dir
        if not versions.is_dir():
            raise ConfigurationError(
                f"DBINIT_MIGRATIONS_DIR {str(versions)!r} is not a folder",
                hint="Point DBINIT_MIGRATIONS_DIR at the Alembic versions folder",
            )
        script_location = versions.parent if (versions.parent / "env.py").is_file() else None
        ini = alembic_ini if alembic_ini.is_file() else None
        return AlembicLayout(ini, script_location, (versions,))
    section = _read_ini(alembic_ini) if alembic_ini.is_file() else None
    pyproject, toml = _read_pyproject(alembic_ini)
    if section is None and not toml:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} not found (working directory "
            f"{os.getcwd()!r}), and no [tool.alembic] in pyproject.toml",
            hint="Run dbinit where alembic.ini is, set DBINIT_ALEMBIC_INI to its path, "
            "or set DBINIT_MIGRATIONS_DIR to the versions folder",
        )
    options = _Options(section, toml, str(pyproject.parent.absolute()) if pyproject else "")
    where = str(alembic_ini) if section is not None and "script_location" in section else "pyproject.toml"
    script_text = options.text("script_location")
    if not script_text:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} has no script_location"
            + (" (nor has [tool.alembic] in pyproject.toml)" if pyproject else ""),
            hint="Add script_location = %(here)s/migrations under [alembic]",
        )
    script_location = _resolve_location(script_text.strip(), where)
    if not script_location.is_dir():
        raise ConfigurationError(
            f"script_location {str(script_location)!r} (from {where}) is not a folder",
            hint="Fix script_location (use %(here)s to make it independent of the working directory)",
        )
    parts = options.locations()
    configured = (
        tuple(_resolve_location(part, where) for part in parts) if parts else (script_location / "versions",)
    )
    # Alembic skips a configured folder that does not exist; with none at all there is nothing to read
    versions = tuple(folder for folder in configured if folder.is_dir())
    if not versions:
        raise ConfigurationError(
            f"versions folder {', '.join(repr(str(f)) for f in configured)} does not exist",
            hint="Create it (alembic init does) and add migrations with "
            "`alembic revision`, or fix version_locations",
        )
    return AlembicLayout(
        alembic_ini if section is not None else None,
        script_location,
        versions,
        recursive=options.boolean("recursive_version_locations"),
        sourceless=options.boolean("sourceless"),
        pyproject=pyproject if toml else None,
        missing=tuple(folder for folder in configured if folder not in versions),
    )


def _read_ini(alembic_ini: Path) -> configparser.SectionProxy | None:
    """The ``[alembic]`` section (None if the file has none)."""
    parser = configparser.ConfigParser(defaults={"here": str(alembic_ini.parent.absolute())})
    try:
        parser.read_string(alembic_ini.read_bytes().decode("utf-8"), source=str(alembic_ini))
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} is not UTF-8 text (invalid byte at offset "
            f"{exc.start})",
            hint="Alembic reads alembic.ini as UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} cannot be read: {exc.strerror}",
            hint="Check the file's permissions",
        ) from None
    except configparser.Error as exc:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} is not a valid ini file ({exc})",
            hint="It must hold an [alembic] section, as written by `alembic init`",
        ) from None
    if not parser.has_section("alembic"):
        return None
    section = parser["alembic"]
    try:
        for key in section:  # interpolation errors show here, not later
            section.get(key)
    except configparser.Error as exc:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} has no usable [alembic] section ({exc})",
            hint="It must hold script_location, as written by `alembic init`",
        ) from None
    return section


def _read_pyproject(alembic_ini: Path) -> tuple[Path | None, dict[str, object]]:
    """``[tool.alembic]`` of the ``pyproject.toml`` beside ``alembic.ini`` (else in the working directory)."""
    for candidate in (alembic_ini.parent / "pyproject.toml", Path("pyproject.toml")):
        if candidate.is_file():
            break
    else:
        return None, {}
    import tomllib

    try:
        data = tomllib.loads(candidate.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            f"{str(candidate)!r} cannot be read as TOML ({type(exc).__name__}: {str(exc)[:120]})",
            hint="Fix pyproject.toml",
        ) from None
    tool = data.get("tool")
    table = tool.get("alembic") if isinstance(tool, dict) else None
    return candidate, dict(table) if isinstance(table, dict) else {}


def _resolve_location(text: str, where: str) -> Path:
    """A location as Alembic resolves it: a path, or a package resource ``package:path``."""
    if ":" in text and not os.path.isabs(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        return _package_resource(text, where)
    path = Path(text)
    if path.is_absolute():
        return path
    # Alembic resolves relative locations against the working directory.
    return Path.cwd() / path


def _package_resource(text: str, where: str) -> Path:
    """``package.sub:folder/name`` found on ``sys.path`` without importing the package.

    Alembic imports the package (``importlib.resources``); on the verify path
    that would import the application, so the folders are looked up instead.
    A package this cannot find (a zip, a namespace package spread over
    several folders) is a configuration error naming ``DBINIT_MIGRATIONS_DIR``.
    """
    import sys

    package, *resource = text.split(":")
    parts = package.split(".")
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*parts)
        if (base / "__init__.py").is_file() or (base / "__init__.pyc").is_file():
            return base.joinpath(*resource)
    raise ConfigurationError(
        f"script_location {text!r} (from {where}) names package {package!r}, which is not "
        "installed as a folder on sys.path",
        hint="Install the package, or set DBINIT_MIGRATIONS_DIR to its versions folder",
    )


def _split_locations(text: str, separator: str | None) -> list[str]:
    if separator is None:
        return [p for p in re.split(r", *|(?: +)", text.strip()) if p]
    char = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}.get(separator.strip())
    if char is None:
        raise ConfigurationError(
            f"path_separator {separator!r} in alembic.ini is not one of space, newline, os, :, ;"
        )
    return [p.strip() for p in text.split(char) if p.strip()]


def _boolean(value: str | None) -> bool:
    # Alembic's Config.get_alembic_boolean_option: exactly "true", nothing else.
    return value == "true"


def revision_file_paths(layout: AlembicLayout) -> list[str]:
    """The candidate revision files as strings, in Alembic's order (sorted per folder)."""
    files: list[str] = []
    for folder in layout.version_locations:
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            if root.endswith("__pycache__"):
                continue
            prefix = root + os.sep
            match = _REVISION_FILE.match
            files.extend(prefix + name for name in sorted(names) if match(name))
            if not layout.recursive:
                break
    return files


def list_revision_files(layout: AlembicLayout) -> list[Path]:
    """The candidate revision files, in Alembic's order (sorted per folder)."""
    return [Path(name) for name in revision_file_paths(layout)]
