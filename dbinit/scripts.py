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
import heapq
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from dbinit.errors import ConfigurationError

# A line that starts with one of the four names (the text is read with a "\n"
# in front, so the first line counts too). The common case is matched whole:
# `name = value` or `name: annotation = value` with value None (group 2) or a
# string without escapes (3, 4), then an optional comment. Otherwise group 5
# is the rest of the line, for the slower path.
_LINE = re.compile(
    r"\n(revision|down_revision|branch_labels|depends_on)\b"
    r"(?:[ \t]*(?::[^=\n]*)?=(?!=)[ \t]*(?:(None)|'([^'\\\n]*)'|\"([^\"\\\n]*)\")"
    r"[ \t]*(?:#[^\n]*)?(?=\r?\n|\r?\Z)"
    r"|([^\n]*))"
)
# `= value` or `: annotation = value` (not `==`).
_ASSIGNED = re.compile(r"[ \t]*(?::[^=\n]*)?=(?!=)[ \t]*")
_ANNOTATION_ONLY = re.compile(r"[ \t]*:[^=]*")
_IMPORTED_NAME = re.compile(
    r"(?:from[ \t][^\n]*[ \t])?import[ \t][^\n]*\b(?:revision|down_revision|branch_labels|depends_on)\b"
)
_TRIPLE_QUOTE = re.compile(r"\"\"\"|\'\'\'")
_ILLEGAL_REVISION_CHARS = frozenset("@-+:")  # alembic.script.revision._revision_illegal_chars
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_MAX_VALUE_LINES = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Revision:
    """One revision file, as Alembic sees it."""

    revision: str
    down_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    #: The file, as a string (a Path per revision costs milliseconds per thousand).
    file: str | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.file) if self.file is not None else None

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1


@dataclasses.dataclass(frozen=True)
class RevisionGraph:
    """The revisions of a project, with heads and bases as Alembic defines them.

    ``heads`` are revisions no other revision names as ``down_revision``
    (``depends_on`` does not make a head); ``bases`` have no ``down_revision``.
    Both are in file order, as Alembic lists them.
    """

    revisions: Mapping[str, Revision]
    heads: tuple[str, ...]
    bases: tuple[str, ...]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, revisions: Iterable[Revision]) -> RevisionGraph:
        """Check the revisions as Alembic's ``RevisionMap`` does, and link them.

        Where Alembic refuses the history (or silently builds a wrong one),
        this raises :class:`ConfigurationError` naming the revision.
        """
        by_id: dict[str, Revision] = {}
        for rev in revisions:
            previous = by_id.get(rev.revision)
            if previous is not None:
                if _same_file(previous.path, rev.path):
                    continue  # one file reached twice (overlapping locations): Alembic skips it
                raise ConfigurationError(
                    f"revision {rev.revision!r} is declared twice "
                    f"({_name(previous.path)} and {_name(rev.path)})",
                    hint="Give one of the files a new revision id",
                )
            illegal = sorted(set(rev.revision) & _ILLEGAL_REVISION_CHARS)
            if illegal:
                raise ConfigurationError(
                    f"revision {rev.revision!r} ({_name(rev.path)}) contains "
                    f"{', '.join(illegal)}, which Alembic does not allow in a revision id",
                    hint="Rename the revision id (and every down_revision naming it)",
                )
            by_id[rev.revision] = rev
        labels: dict[str, str] = {}
        for rev in by_id.values():
            for label in rev.branch_labels:
                owner = label if label in by_id else labels.get(label)
                if owner is not None:
                    raise ConfigurationError(
                        f"branch label {label!r} of revision {rev.revision!r} "
                        f"({_name(rev.path)}) is already used by revision {owner!r}",
                        hint="Branch labels must be unique and differ from every revision id",
                    )
                labels[label] = rev.revision
        referenced: set[str] = set()
        for rev in by_id.values():
            if rev.revision in rev.down_revisions:
                raise ConfigurationError(
                    f"revision {rev.revision!r} ({_name(rev.path)}) names itself as down_revision",
                    hint="Fix down_revision in " + _name(rev.path),
                )
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
                        f"depends_on {dep!r} of revision {rev.revision!r} "
                        f"({_name(rev.path)}) is not a known revision or branch label",
                        hint="Fix depends_on in " + _name(rev.path),
                    )
        heads = tuple(r for r in by_id if r not in referenced)
        bases = tuple(r for r, rev in by_id.items() if not rev.down_revisions)
        graph = cls(revisions=by_id, heads=heads, bases=bases, labels=labels)
        stuck = set(by_id) - set(graph._topological(by_id))
        if stuck:
            cycle = sorted(r for r in stuck if r in graph.ancestors(graph.parents(r)))
            shown = ", ".join(repr(r) for r in (cycle or sorted(stuck))[:8])
            raise ConfigurationError(
                f"the revision graph has a cycle (down_revision / depends_on) through "
                f"revision(s) {shown}",
                hint="Fix down_revision or depends_on in the migration files of those revisions",
            )
        return graph

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
        if not rev.depends_on:
            return rev.down_revisions
        deps = tuple(self.resolve(dep) for dep in rev.depends_on)
        return rev.down_revisions + tuple(d for d in dict.fromkeys(deps) if d not in rev.down_revisions)

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
        """Revisions an ``upgrade heads`` from ``current`` applies, in a valid order.

        Every revision comes after its down revisions and dependencies; among
        the revisions ready at a step, file order decides.
        """
        todo = self.ancestors(self.heads) - self.ancestors(current)
        return self._topological(todo)

    def _topological(self, todo: Iterable[str]) -> list[str]:
        """``todo`` in a valid order (Kahn, file order breaking ties); cycles are left out."""
        todo = set(todo)
        ids = [r for r in self.revisions if r in todo]
        position = {r: i for i, r in enumerate(ids)}
        waiting: dict[str, int] = {}
        children: dict[str, list[str]] = {}
        ready: list[int] = []
        for rev in ids:
            parents = [p for p in self.parents(rev) if p in todo]
            waiting[rev] = len(parents)
            for parent in parents:
                children.setdefault(parent, []).append(rev)
            if not parents:
                ready.append(position[rev])
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            rev = ids[heapq.heappop(ready)]
            order.append(rev)
            for child in children.get(rev, ()):
                waiting[child] -= 1
                if not waiting[child]:
                    heapq.heappush(ready, position[child])
        return order


@dataclasses.dataclass(frozen=True)
class MigrationScripts:
    """Where the migrations are and the graph they form."""

    alembic_ini: Path | None
    script_location: Path | None
    version_locations: tuple[Path, ...]
    graph: RevisionGraph
    source: Literal["static", "alembic", "manifest"] = "static"
    unreadable: tuple[str, ...] = ()
    #: Why a revision manifest present on disk was not used (it is stale).
    manifest_note: str = ""

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
    try:
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
        separator = section.get("path_separator")
        if separator is None:
            separator = section.get("version_path_separator")
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
    char = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}.get(separator.strip())
    if char is None:
        raise ConfigurationError(
            f"path_separator {separator!r} in alembic.ini is not one of space, newline, os, :, ;"
        )
    return [p.strip() for p in text.split(char) if p.strip()]


def _boolean(value: str | None) -> bool:
    # Alembic's Config.get_alembic_boolean_option: exactly "true", nothing else.
    return value == "true"


# -- revision files -----------------------------------------------------------


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


def read_revision_file(path: Path) -> Revision:
    """Read one revision file without importing it.

    The module-level assignments of the four names are found by a regex (a
    name at the start of a line, outside triple-quoted strings; the last
    assignment wins, as when Python runs the module). Simple values are read
    directly, anything else with :func:`ast.literal_eval`. Whatever else
    could bind one of the names (``revision += …``, tuple unpacking, an
    import) makes the file unreadable, so that Alembic decides.
    """
    try:
        data = _read_regular_file(path)
        text = "\n" + data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableRevision(path, f"cannot be read ({exc})") from None
    values: dict[str, object] = {}
    double = single = scanned = 0  # triple quotes before the line (they never span a newline)
    for match in _LINE.finditer(text):
        position = match.start()
        double += text.count('"""', scanned, position)
        single += text.count("'''", scanned, position)
        scanned = position
        if (double or single) and _in_triple_quoted_string(text, position, double, single):
            continue
        kind = match.lastindex
        if kind == 2:
            values[match.group(1)] = None
        elif kind != 5:
            values[match.group(1)] = match.group(kind)
        else:
            name, rest = match.group(1), match.group(5)
            assigned = _ASSIGNED.match(rest)
            if assigned is None:
                if _ANNOTATION_ONLY.fullmatch(rest):
                    continue  # `revision: str` binds nothing
                raise UnreadableRevision(
                    path, f"`{name}` is set by a statement other than a plain assignment"
                )
            values[name] = _value(path, name, text, match.start(5) + assigned.end())
    if _imports_a_name(text):
        raise UnreadableRevision(path, "imports one of revision/down_revision/branch_labels/depends_on")
    if "revision" not in values:
        raise UnreadableRevision(path, "no module-level `revision = ...` assignment")
    if "down_revision" not in values:
        raise UnreadableRevision(path, "no module-level `down_revision = ...` assignment")
    revision = values["revision"]
    if not isinstance(revision, str) or not revision:
        raise UnreadableRevision(path, "`revision` is not a non-empty string")
    return Revision(
        revision=revision,
        down_revisions=_names(path, "down_revision", values["down_revision"], unique=True),
        branch_labels=_names(path, "branch_labels", values.get("branch_labels")),
        depends_on=_names(path, "depends_on", values.get("depends_on"), unique=True),
        file=str(path),
    )


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file (after symlinks).

    Opened without blocking (``O_NONBLOCK``: a FIFO with no writer would
    block ``open`` forever) and checked on the open descriptor, so nothing
    can swap the file in between. Anything else raises
    :class:`ConfigurationError`: Alembic would import it and hang (a FIFO)
    or fail, so falling back to Alembic is no answer.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise ConfigurationError(
                f"migration file {str(path)!r} is {kind}, not a regular file: Alembic would try "
                "to import it (and a FIFO blocks forever)",
                hint="Remove it from the versions folder, or rename it so that it does not end in .py",
            )
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _in_triple_quoted_string(text: str, position: int, double: int, single: int) -> bool:
    """Whether ``position`` is inside a ``\"\"\"…\"\"\"`` or ``'''…'''`` string (a docstring, SQL).

    ``double`` and ``single`` count each kind before ``position``.
    """
    if not single:
        return double % 2 == 1
    if not double:
        return single % 2 == 1
    inside = None  # both kinds: follow them in order, the open one hides the other
    for quote in _TRIPLE_QUOTE.finditer(text, 0, position):
        if inside is None:
            inside = quote.group()
        elif quote.group() == inside:
            inside = None
    return inside is not None


def _imports_a_name(text: str) -> bool:
    """Whether a module-level import binds one of the four names (Alembic would see it)."""
    start = text.find("import")
    while start >= 0:
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line = text[line_start:] if line_end < 0 else text[line_start:line_end]
        if ("revision" in line or "branch_labels" in line or "depends_on" in line) and (
            _IMPORTED_NAME.match(line)
        ):
            return True
        if line_end < 0:
            return False
        start = text.find("import", line_end)
    return False


def _value(path: Path, name: str, text: str, start: int) -> object:
    """The literal assigned from ``start`` on: one line, or as many as the statement takes."""
    end = text.find("\n", start)
    candidate = text[start:] if end < 0 else text[start:end]
    lines = None
    for count in range(1, _MAX_VALUE_LINES + 1):
        if count > 1:  # a value spread over several lines (brackets, backslashes)
            if lines is None:
                lines = text[start:].split("\n", _MAX_VALUE_LINES)
            if count > len(lines):
                break
            candidate = "\n".join(lines[:count])
        try:
            return _literal(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise UnreadableRevision(path, f"`{name}` is not a literal value")


def _literal(source: str) -> object:
    # Parsed as the statement it is, so that continuation lines and comments
    # mean what they mean to Python; only a single plain assignment counts.
    statement = ast.parse("_ = " + source).body
    if len(statement) != 1 or not isinstance(statement[0], ast.Assign):
        raise ValueError("not a single assignment")
    return ast.literal_eval(statement[0].value)


def _names(path: Path, variable: str, value: object, *, unique: bool = False) -> tuple[str, ...]:
    # Alembic's util.to_tuple: None is empty, a string is one name, a tuple or list is itself.
    # Repeated down revisions or dependencies mean nothing more to Alembic: drop them.
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value)) if unique else tuple(value)
    raise UnreadableRevision(path, f"`{variable}` is not a string, tuple of strings or None")


def read_migration_scripts(
    alembic_ini: Path, migrations_dir: Path | None = None, *, use_manifest: bool = True
) -> MigrationScripts:
    """Locate and read the migrations; fall back to Alembic for unreadable files.

    A fresh revision manifest (``dbinit manifest``) is used instead of reading
    every file; a stale one is ignored and said so in ``manifest_note``.
    """
    layout = find_layout(alembic_ini, migrations_dir)
    note = ""
    if use_manifest and not layout.sourceless:
        from dbinit.manifest import StaleManifest, load_manifest

        try:
            listed = load_manifest(layout)
        except StaleManifest as exc:
            listed, note = None, str(exc)
        if listed is not None:
            return MigrationScripts(
                layout.alembic_ini,
                layout.script_location,
                layout.version_locations,
                listed,
                source="manifest",
            )
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
            manifest_note=note,
        )
    return MigrationScripts(
        layout.alembic_ini,
        layout.script_location,
        layout.version_locations,
        RevisionGraph.build(revisions),
        manifest_note=note,
    )


def _name(path: Path | None) -> str:
    return path.name if path is not None else "?"


def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
