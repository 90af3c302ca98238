"""Migration scripts, read statically into a revision graph.

Alembic's ``ScriptDirectory`` imports every migration file to learn its
revision; on the verify path that costs more than the whole database round
trip. This module reads ``alembic.ini`` with :mod:`configparser` and each
revision file as text: the module-level assignments of ``revision``,
``down_revision``, ``branch_labels`` and ``depends_on`` (plain or annotated,
tuples for merge points). A file that cannot be read this way is named, and
the project falls back to Alembic (correct, only slower).
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from dbinit.errors import ConfigurationError

_ASSIGNMENT = re.compile(
    r"^(revision|down_revision|branch_labels|depends_on)[ \t]*(?::[^=\n]+)?=(?!=)[ \t]*(.*)$",
    re.MULTILINE,
)
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_MAX_VALUE_LINES = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Revision:
    """One revision file, as Alembic sees it."""

    revision: str
    down_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    path: Path | None = None

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1


@dataclasses.dataclass(frozen=True)
class RevisionGraph:
    """The revisions of a project, with heads and bases as Alembic defines them.

    ``heads`` are revisions no other revision names as ``down_revision``
    (``depends_on`` does not make a head); ``bases`` have no ``down_revision``.
    """

    revisions: Mapping[str, Revision]
    heads: tuple[str, ...]
    bases: tuple[str, ...]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, revisions: Iterable[Revision]) -> RevisionGraph:
        by_id: dict[str, Revision] = {}
        for rev in revisions:
            if rev.revision in by_id:
                raise ConfigurationError(
                    f"revision {rev.revision!r} is declared twice "
                    f"({_name(by_id[rev.revision].path)} and {_name(rev.path)})",
                    hint="Give one of the files a new revision id",
                )
            by_id[rev.revision] = rev
        labels = {label: rev.revision for rev in by_id.values() for label in rev.branch_labels}
        referenced: set[str] = set()
        for rev in by_id.values():
            for parent in rev.down_revisions:
                if parent not in by_id:
                    raise ConfigurationError(
                        f"revision {parent!r} referenced from {rev.revision!r} "
                        f"({_name(rev.path)}) is not present",
                        hint="A migration file is missing from the image; add it or fix down_revision",
                    )
                referenced.add(parent)
            for dep in rev.depends_on:
                if dep not in by_id and dep not in labels:
                    raise ConfigurationError(
                        f"depends_on {dep!r} of revision {rev.revision!r} is not a known "
                        "revision or branch label",
                        hint="Fix depends_on in " + _name(rev.path),
                    )
        heads = tuple(r for r in by_id if r not in referenced)
        bases = tuple(r for r, rev in by_id.items() if not rev.down_revisions)
        if by_id and (not heads or not bases):
            raise ConfigurationError(
                "the revision graph has a cycle", hint="Fix down_revision in the migration files"
            )
        return cls(revisions=by_id, heads=heads, bases=bases, labels=labels)

    def __len__(self) -> int:
        return len(self.revisions)

    def __contains__(self, revision: object) -> bool:
        return revision in self.revisions

    def resolve(self, name: str) -> str:
        """A revision id for ``name`` (an id or a branch label)."""
        if name in self.revisions:
            return name
        if name in self.labels:
            return self.labels[name]
        raise KeyError(name)

    def parents(self, revision: str) -> tuple[str, ...]:
        """Everything ``revision`` must come after: down revisions and dependencies."""
        rev = self.revisions[revision]
        deps = tuple(self.resolve(dep) for dep in rev.depends_on)
        return rev.down_revisions + tuple(d for d in deps if d not in rev.down_revisions)

    def ancestors(self, revisions: Iterable[str]) -> set[str]:
        """``revisions`` and everything they come after (inclusive)."""
        seen: set[str] = set()
        stack = [r for r in revisions if r in self.revisions]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self.parents(current))
        return seen

    def pending(self, current: Iterable[str]) -> list[str]:
        """Revisions an ``upgrade heads`` from ``current`` applies, in a valid order."""
        todo = self.ancestors(self.heads) - self.ancestors(current)
        order: list[str] = []
        done: set[str] = set()
        remaining = [r for r in self.revisions if r in todo]  # file order breaks ties
        while remaining:
            progressed = []
            for rev in remaining:
                if all(p in done or p not in todo for p in self.parents(rev)):
                    order.append(rev)
                    done.add(rev)
                else:
                    progressed.append(rev)
            if len(progressed) == len(remaining):  # pragma: no cover - cycles rejected in build
                raise ConfigurationError("the revision graph has a cycle")
            remaining = progressed
        return order


@dataclasses.dataclass(frozen=True)
class MigrationScripts:
    """Where the migrations are and the graph they form."""

    alembic_ini: Path | None
    script_location: Path | None
    version_locations: tuple[Path, ...]
    graph: RevisionGraph
    source: Literal["static", "alembic"] = "static"
    unreadable: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.graph)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads


@dataclasses.dataclass(frozen=True)
class AlembicLayout:
    """What ``alembic.ini`` says about where the migrations live."""

    alembic_ini: Path | None
    script_location: Path | None
    version_locations: tuple[Path, ...]
    recursive: bool = False
    sourceless: bool = False


class UnreadableRevision(Exception):
    """A revision file that cannot be read without importing it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


# -- alembic.ini --------------------------------------------------------------


def find_layout(alembic_ini: Path, migrations_dir: Path | None) -> AlembicLayout:
    """Locate the versions folder(s): ``migrations_dir`` wins over ``alembic.ini``."""
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
    if not alembic_ini.is_file():
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} not found (working directory "
            f"{os.getcwd()!r})",
            hint="Run dbinit where alembic.ini is, set DBINIT_ALEMBIC_INI to its path, "
            "or set DBINIT_MIGRATIONS_DIR to the versions folder",
        )
    parser = configparser.ConfigParser(defaults={"here": str(alembic_ini.parent.absolute())})
    try:
        parser.read(alembic_ini, encoding="utf-8")
        section = parser["alembic"]
        script_text = section.get("script_location")
    except (configparser.Error, KeyError) as exc:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} has no usable [alembic] section ({exc})",
            hint="It must hold script_location, as written by `alembic init`",
        ) from None
    if not script_text:
        raise ConfigurationError(
            f"DBINIT_ALEMBIC_INI: {str(alembic_ini)!r} has no script_location",
            hint="Add script_location = %(here)s/migrations under [alembic]",
        )
    script_location = _resolve_location(script_text.strip(), alembic_ini)
    if not script_location.is_dir():
        raise ConfigurationError(
            f"script_location {str(script_location)!r} (from {alembic_ini}) is not a folder",
            hint="Fix script_location in alembic.ini (use %(here)s to make it independent "
            "of the working directory)",
        )
    locations_text = section.get("version_locations")
    if locations_text:
        separator = section.get("path_separator") or section.get("version_path_separator")
        parts = _split_locations(locations_text, separator)
        versions = tuple(_resolve_location(part, alembic_ini) for part in parts)
    else:
        versions = (script_location / "versions",)
    for folder in versions:
        if not folder.is_dir():
            raise ConfigurationError(
                f"versions folder {str(folder)!r} does not exist",
                hint="Create it (alembic init does) and add migrations with "
                "`alembic revision`, or fix version_locations in alembic.ini",
            )
    return AlembicLayout(
        alembic_ini,
        script_location,
        versions,
        recursive=_boolean(section.get("recursive_version_locations")),
        sourceless=_boolean(section.get("sourceless")),
    )


def _resolve_location(text: str, alembic_ini: Path) -> Path:
    if ":" in text and not os.path.isabs(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        package, _, resource = text.partition(":")
        raise ConfigurationError(
            f"script_location {text!r} is a package resource ({package}:{resource})",
            hint="Set DBINIT_MIGRATIONS_DIR to the versions folder; dbinit reads files, "
            "not package resources",
        )
    path = Path(text)
    if path.is_absolute():
        return path
    # Alembic resolves relative locations against the working directory.
    return Path.cwd() / path


def _split_locations(text: str, separator: str | None) -> list[str]:
    if separator is None:
        return [p for p in re.split(r", *|(?: +)", text.strip()) if p]
    char = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}.get(
        separator.strip(), None
    )
    if char is None:
        raise ConfigurationError(
            f"path_separator {separator!r} in alembic.ini is not one of space, newline, os, :, ;"
        )
    return [p.strip() for p in text.split(char) if p.strip()]


def _boolean(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


# -- revision files -----------------------------------------------------------


def list_revision_files(layout: AlembicLayout) -> list[Path]:
    """The candidate revision files, in Alembic's order (sorted per folder)."""
    files: list[Path] = []
    for folder in layout.version_locations:
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            if root.endswith("__pycache__"):
                continue
            for name in sorted(names):
                if _REVISION_FILE.match(name):
                    files.append(Path(root) / name)
            if not layout.recursive:
                break
    return files


def read_revision_file(path: Path) -> Revision:
    """Read one revision file without importing it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableRevision(path, f"cannot be read ({exc})") from None
    values: dict[str, object] = {}
    for match in _ASSIGNMENT.finditer(text):
        values[match.group(1)] = _literal(path, text, match)
    if "revision" not in values:
        raise UnreadableRevision(path, "no module-level `revision = ...` assignment")
    if "down_revision" not in values:
        raise UnreadableRevision(path, "no module-level `down_revision = ...` assignment")
    revision = values["revision"]
    if not isinstance(revision, str) or not revision:
        raise UnreadableRevision(path, "`revision` is not a non-empty string")
    return Revision(
        revision=revision,
        down_revisions=_names(path, "down_revision", values["down_revision"]),
        branch_labels=_names(path, "branch_labels", values.get("branch_labels")),
        depends_on=_names(path, "depends_on", values.get("depends_on")),
        path=path,
    )


def _literal(path: Path, text: str, match: re.Match[str]) -> object:
    first = match.group(2)
    try:
        return ast.literal_eval(first.strip() or "None_")
    except (ValueError, SyntaxError):
        pass
    # A value spread over several lines: extend until it parses.
    lines = text[match.start(2) :].splitlines()
    for count in range(2, min(len(lines), _MAX_VALUE_LINES) + 1):
        try:
            return ast.literal_eval("\n".join(lines[:count]).strip())
        except (ValueError, SyntaxError):
            continue
    raise UnreadableRevision(path, f"`{match.group(1)}` is not a literal value")


def _names(path: Path, variable: str, value: object) -> tuple[str, ...]:
    if value is None or value == ():
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    raise UnreadableRevision(path, f"`{variable}` is not a string, tuple of strings or None")


def read_migration_scripts(alembic_ini: Path, migrations_dir: Path | None = None) -> MigrationScripts:
    """Locate and read the migrations; fall back to Alembic for unreadable files."""
    layout = find_layout(alembic_ini, migrations_dir)
    revisions: list[Revision] = []
    unreadable: list[UnreadableRevision] = []
    if not layout.sourceless:
        for path in list_revision_files(layout):
            try:
                revisions.append(read_revision_file(path))
            except UnreadableRevision as exc:
                unreadable.append(exc)
    if unreadable or layout.sourceless:
        from dbinit.alembic_graph import graph_from_alembic

        graph = graph_from_alembic(layout)
        return MigrationScripts(
            layout.alembic_ini,
            layout.script_location,
            layout.version_locations,
            graph,
            source="alembic",
            unreadable=tuple(str(exc) for exc in unreadable),
        )
    return MigrationScripts(
        layout.alembic_ini,
        layout.script_location,
        layout.version_locations,
        RevisionGraph.build(revisions),
    )


def _name(path: Path | None) -> str:
    return path.name if path is not None else "?"
