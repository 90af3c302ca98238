"""The static revision reader: a revision file read as text, never imported.

The module-level assignments of ``revision``, ``down_revision``,
``branch_labels`` and ``depends_on`` (plain or annotated, tuples for merge
points). A file that cannot be read this way raises
:class:`UnreadableRevision`, and the project falls back to Alembic
(:mod:`.fallback`): correct, only slower.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from pathlib import Path

from dbinit.errors import ConfigurationError
from dbinit.revisions.graph import Revision

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


_MAX_VALUE_LINES = 64


class UnreadableRevision(Exception):
    """A revision file that cannot be read without importing it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


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
