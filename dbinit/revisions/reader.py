"""The static revision reader: a revision file read as text, never imported.

Each file is read the fastest way that is exact for it:

- **fast** (:func:`_fast_values`): a lexer that skips strings and comments
  as Python's tokenizer does, as far as the last place one of the four names
  (``revision``, ``down_revision``, ``branch_labels``, ``depends_on``)
  appears and no further; every appearance in code must start a column-0
  statement that binds the name once, to a literal (``name = value``,
  ``name: annotation = value``; ``name: annotation`` alone binds nothing).
  The shape Alembic writes is matched whole by two regexes (tier 1);
  anything else is walked from one appearance of a name to the next
  (tier 2). The fast path declines the name indented, repeated, inside
  brackets, after a backslash, or used in code at all; a string it does not
  delimit exactly (an f-string with fields, an unmatched quote); a file that
  is not UTF-8 or declares another encoding, has a lone carriage return or a
  NUL, holds a character that NFKC-normalises into name characters, or
  mentions ``import *`` or one of :data:`~dbinit.revisions.exact.DYNAMIC`
  (``globals``, ``exec``, ...).
- **ast** (:mod:`.exact`): the module parsed (not run) from its bytes; the
  names are read if each is bound at most once, by a module-level plain or
  annotated assignment of a literal, and nothing else could bind them.
- **Alembic**: otherwise :class:`UnreadableRevision` is raised, and the
  project's graph comes from Alembic (:mod:`.fallback`), which imports the
  files: correct, only slower.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from pathlib import Path
from typing import Literal, NamedTuple

from dbinit.errors import ConfigurationError
from dbinit.revisions.exact import DYNAMIC, NAMES, NotExact, literal_values
from dbinit.revisions.graph import Revision

Reader = Literal["fast", "ast"]


class _Lazy:
    """A regex compiled when first used.

    Compiling them all at import would cost every process milliseconds, the
    manifest path too.
    """

    __slots__ = ("_compiled", "_flags", "_pattern")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._pattern = pattern
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def __call__(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self._pattern, self._flags)
        return self._compiled


# An annotation that only reads names: identifiers, subscripts, `|`, dots.
_ANNOTATION = r"(?::[ \t]*[\w\[\], .|]*)?"

# -- tier 1: the shape Alembic writes, matched whole by two regexes --
#
# A string delimited as Python's tokenizer does (triple quotes tried first;
# escapes skipped, an escaped newline included; an r/b/u prefix changes
# nothing about where a string ends), but no f- or t-string: from Python 3.12
# on their fields may nest quotes.
_STRING = r"""
    (?<![fFtT])(?<![fFtT][rRbBuU])
    (?: '''[^'\\]*+(?:(?:\\.|'(?!''))[^'\\]*+)*+'''
      | \"\"\"[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+\"\"\"
      | '[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'
      | "[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"
    )
"""
# Code, comments and strings as far as the first of the four names in code (a
# name of its own: not part of another, not an attribute such as `x.revision`),
# or the first token it cannot delimit. A bracket or a backslash in the code
# sets the group `mark`. (Runs stop only at r, d and b, where a name may start.)
_CODE = _Lazy(
    r"""(?:
        [^'"\#\\.()\[\]{}rdb]++
      | (?<=\w)[rdb]
      | (?!(?:revision|down_revision|branch_labels|depends_on)(?!\w))[rdb]
      | \.\w*+
      | """
    + _STRING
    + r"""
      | \#[^\n]*+
      | (?P<mark>[()\[\]{}]|\\.)
    )*+""",
    re.VERBOSE | re.DOTALL,
)
_QUOTED = r"""(?:'[^'\\\n]*'|"[^"\\\n]*")"""
_ITEMS = r"[ \t]*(?:" + _QUOTED + r"[ \t]*,[ \t]*)*+(?:" + _QUOTED + r"[ \t]*)?"
# Blank or comment lines, then one of the names at column 0 assigned (with or
# without an annotation; a comment after) None, a string without escapes, or
# a one-line tuple or list of such strings.
_LINE = _Lazy(
    r"(?:[ \t]*(?:\#[^\n]*)?\n)*+"
    r"(?<=\n)(?P<name>revision|down_revision|branch_labels|depends_on)[ \t]*" + _ANNOTATION + r"=[ \t]*"
    r"""(?:None|'(?P<s>[^'\\\n]*)'|"(?P<d>[^"\\\n]*)"|(?P<t>\(""" + _ITEMS + r"\)|\[" + _ITEMS + r"\]))"
    r"[ \t]*(?:\#[^\n]*)?(?:\n|\Z)"
)
_ITEM = _Lazy(r"""'([^'\\\n]*)'|"([^"\\\n]*)\"""")

# -- tier 2: a lexer, stopping where the names appear (found with str.find) --
#
# What it stops at: a comment; a string, `sq` or `dq` (as _STRING, but any
# prefix: an f-string is checked for fields); a bracket, `open` or `close`;
# `quote`: a quote that opens no complete string. The first character is
# matched alone, so that the regex engine skips fast to where a token can
# start; each branch then looks back at it.
_TOKENS = r"""
      (?<=\#)[^\n]*
    | (?<=')(?P<sq>''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''|[^'\\\n]*(?:\\.[^'\\\n]*)*')
    | (?<=")(?P<dq>""[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*\"\"\"|[^"\\\n]*(?:\\.[^"\\\n]*)*")
"""
_TOKEN = _Lazy(
    r"""[#'"()\[\]{}](?:""" + _TOKENS + r"""
    | (?<=[(\[{])(?P<open>)
    | (?<=[)\]}])(?P<close>)
    | (?P<quote>)
    )""",
    re.VERBOSE | re.DOTALL,
)
# After the last line that starts with one of the names, brackets no longer matter.
_TOKEN_NO_BRACKETS = _Lazy(r"""[#'"](?:""" + _TOKENS + r"| (?P<quote>))", re.VERBOSE | re.DOTALL)

# After a name at column 0, the common case whole: `= None` or `= 'text'`
# (no escapes), an optional comment, the end of the line.
_SIMPLE = _Lazy(
    r"[ \t]*" + _ANNOTATION + r"=[ \t]*"
    r"""(?:None|'(?P<single>[^'\\\n]*)'|"(?P<double>[^"\\\n]*)")"""
    r"[ \t]*(?:\#[^\n]*)?(?=\n|\Z)"
)

# `= value` or `: annotation = value` (not `==`); the value is read by _value.
_ASSIGNED = _Lazy(r"[ \t]*" + _ANNOTATION + r"=(?!=)[ \t]*")

# `name: annotation` alone binds nothing.
_ANNOTATION_ONLY = _Lazy(r"[ \t]*:[ \t]*[\w\[\], .|]*(?:\#[^\n]*)?(?=\n|\Z)")

# -- what both tiers check first --
#
# Every word of DYNAMIC contains one of these hints (a test checks): `in` on
# each is cheap; after a hit, the words with that hint are looked for as words.
_DYNAMIC_HINTS = {
    hint: tuple(word for word in DYNAMIC if hint in word)
    for hint in ("globals", "locals", "vars", "exec", "eval", "module", "__")
}
_IMPORT_STAR = _Lazy(r"import[\s\\]*\*")

# PEP 263: an encoding declared in a comment on line 1, or on line 2 after a
# blank or comment line 1.
_CODING = _Lazy(r"[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.ASCII)
_BLANK_OR_COMMENT = _Lazy(r"[ \t\f]*(?:#|\r?$)")

_NON_ASCII = _Lazy(r"[^\x00-\x7f]")
_IDENTIFIER_CHAR = _Lazy(r"[A-Za-z0-9_]")

_BOM = b"\xef\xbb\xbf"

_MAX_VALUE_LINES = 64

_UNBOUND = object()  # `name: annotation` without a value


class UnreadableRevision(Exception):
    """A revision file that cannot be read without importing it (Alembic decides)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


class ReadRevision(NamedTuple):
    """One revision file read statically, and how."""

    revision: Revision
    reader: Reader
    #: For ``"ast"``: why the fast path declined the file.
    reason: str = ""


class _Declined(Exception):
    """The fast path does not fully understand the file (the reason is the message)."""


def read_revision_file(path: Path) -> Revision:
    """Read one revision file without importing it; see :func:`read_revision`."""
    return read_revision(path).revision


def read_revision(path: Path) -> ReadRevision:
    """Read one revision file without importing it: fast where that is exact, else with :mod:`ast`.

    Raises :class:`UnreadableRevision` when neither can say what Alembic
    would see (then only Alembic can), :class:`ConfigurationError` for a
    path that is not a regular file.
    """
    try:
        data = _read_regular_file(path)
    except OSError as exc:
        raise UnreadableRevision(path, f"cannot be read ({exc})") from None
    try:
        values = _fast_values(data)
    except _Declined as declined:
        try:
            values = literal_values(data)
        except NotExact as exc:
            raise UnreadableRevision(path, str(exc)) from None
        return ReadRevision(_revision_of(path, values), "ast", str(declined))
    return ReadRevision(_revision_of(path, values), "fast")


def _revision_of(path: Path, values: dict[str, object]) -> Revision:
    """The :class:`Revision` the four names' literal values make, as Alembic reads them."""
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


# -- the fast path ------------------------------------------------------------------------


def _fast_values(data: bytes) -> dict[str, object]:
    """The four names' values, by the fast path; raises :class:`_Declined` unless that is exact."""
    text = _fast_text(data)
    _check_dynamic(text)
    values = _header_values(text)
    return values if values is not None else _lexed_values(text)


def _header_values(text: str) -> dict[str, object] | None:
    """Tier 1: the values if the file has the shape Alembic writes, else None (tier 2 decides).

    That shape: code without brackets or backslashes, comments and strings,
    then the column-0 lines that assign the names (blank or comment lines
    between), then anything in which the names appear in strings and comments
    only.
    """
    code = _CODE()
    prefix = code.match(text)
    if prefix is None or prefix.group("mark") is not None:
        return None
    position = prefix.end()
    values: dict[str, object] = {}
    line_regex = _LINE()
    while (line := line_regex.match(text, position)) is not None:
        name, single, double, items = line.group("name", "s", "d", "t")
        if name in values:
            return None
        if single is not None or double is not None:
            values[name] = single if single is not None else double
        elif items is not None:
            values[name] = tuple(s if s or not d else d for s, d in _ITEM().findall(items))
        else:
            values[name] = None
        position = line.end()
    if "revision" not in values or "down_revision" not in values:
        return None
    last = max(text.rfind("revision"), text.rfind("branch_labels"), text.rfind("depends_on"))
    if last >= position:
        rest = code.match(text, position)
        if rest is None or rest.end() <= last:
            return None
    return values


def _lexed_values(text: str) -> dict[str, object]:
    """Tier 2: walk the appearances of the names in order, lexing the text up to each.

    Only so far: the rest of the file is never lexed. A name inside a string
    or a comment is skipped; one in code must start a column-0 statement
    that assigns it a literal, once.
    """
    last_start = max(text.rfind("\n" + name) for name in NAMES)
    values: dict[str, object] = {}
    depth = 0
    resume = 0  # where the last assignment read ended
    tokens = _TOKEN().finditer(text)
    token = next(tokens, None)
    for position, name in _appearances(text):
        if position < resume:
            continue  # in the value or comment of an assignment just read
        while token is not None and token.end() <= position:  # lex up to the name
            depth = _account(text, token, depth)
            token = next(tokens, None)
        if token is not None and token.start() < position:  # in a string or a comment
            if token.lastgroup is not None:  # a string (a comment has no group)
                _check_string(text, token)
            continue
        _check_statement_start(text, position, depth, name)
        if name in values:
            raise _Declined(f"`{name}` is assigned more than once")
        value, resume = _assignment(text, position + len(name), name)
        if value is not _UNBOUND:
            values[name] = value
        tokens = (_TOKEN if resume < last_start else _TOKEN_NO_BRACKETS)().finditer(text, resume)
        token = next(tokens, None)
    if "revision" not in values or "down_revision" not in values:
        raise _Declined("no column-0 assignment of both `revision` and `down_revision`")
    return values


def _appearances(text: str) -> list[tuple[int, str]]:
    """Where each of the four names appears as a name of its own (not ``x.revision``), in order."""
    found = []
    for word in ("revision", "branch_labels", "depends_on"):
        at = text.find(word)
        while at >= 0:
            end = at + len(word)
            start, name = (at - 5, "down_revision") if text[at - 5 : at] == "down_" else (at, word)
            before, after = text[start - 1], text[end : end + 1]
            if not (_is_name_char(before) or before == "." or _is_name_char(after)):
                found.append((start, name))
            at = text.find(word, end)
    found.sort()
    return found


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _account(text: str, token: re.Match[str], depth: int) -> int:
    """The bracket depth after ``token``; declines what the lexer cannot follow."""
    kind = token.lastgroup
    if kind == "open":
        return depth + 1
    if kind == "close":
        return depth - 1
    if kind == "quote":
        raise _Declined("a quote the fast reader cannot match")
    if kind is not None:
        _check_string(text, token)
    return depth


def _check_dynamic(text: str) -> None:
    """Decline a file that mentions a word through which code can bind a name without spelling it."""
    for hint, words in _DYNAMIC_HINTS.items():
        if hint in text:
            for word in words:
                if _has_word(text, word):
                    raise _Declined(f"mentions `{word}`")
    if "*" in text and _IMPORT_STAR().search(text):
        raise _Declined("`import *` may bind any name")


def _has_word(text: str, word: str) -> bool:
    """Whether ``word`` appears in ``text`` as a word of its own (``exec``, not ``execute``)."""
    at = text.find(word)
    while at >= 0:
        end = at + len(word)
        if not (_is_name_char(text[at - 1 : at]) or _is_name_char(text[end : end + 1])):
            return True
        at = text.find(word, end)
    return False


def _fast_text(data: bytes) -> str:
    """The source text as Python reads it, with "\\n" in front; declines what the fast path does not."""
    data = data.removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Declined("not UTF-8") from None
    _check_encoding_declaration(text)
    if not text.isascii():
        _check_identifier_characters(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise _Declined("a carriage return without a line feed (Python ends a line there)")
    if "\0" in text:
        raise _Declined("a NUL character")
    return "\n" + text


def _check_encoding_declaration(text: str) -> None:
    """Decline a PEP 263 declaration of an encoding other than UTF-8."""
    first_end = text.find("\n")
    second_end = text.find("\n", first_end + 1) if first_end >= 0 else -1
    head = text if second_end < 0 else text[:second_end]
    if "coding" not in head:
        return
    for number, line in enumerate(head.split("\n")[:2]):
        declared = _CODING().match(line)
        if declared is not None:
            encoding = declared.group(1)[:12].lower().replace("_", "-")
            if encoding not in ("utf-8", "utf8") and not encoding.startswith("utf-8-"):
                raise _Declined(f"declares the encoding {declared.group(1)!r}")
            return
        if number == 0 and not _BLANK_OR_COMMENT().match(line):
            return  # Python reads line 2 for a declaration only after a blank or comment line 1


def _check_identifier_characters(text: str) -> None:
    """Decline a character that Python's NFKC normalisation of names turns into name characters.

    Fullwidth letters (U+FF52 for ``r``), ligatures (U+FB01 for ``fi``), circled
    digits: such a character can spell one of the four names.
    """
    import unicodedata  # only for files with non-ASCII text: ~0.5 ms to import

    for char in set(_NON_ASCII().findall(text)):
        if _IDENTIFIER_CHAR().search(unicodedata.normalize("NFKC", char)):
            raise _Declined(f"{char!r} may spell part of a name (Python reads names in NFKC form)")


def _check_statement_start(text: str, position: int, depth: int, name: str) -> None:
    """Decline a name in code unless it starts a statement at column 0 (not in brackets, nor continued)."""
    if text[position - 1] != "\n":
        raise _Declined(f"`{name}` appears in code other than a column-0 assignment")
    if depth:
        raise _Declined(f"`{name}` at column 0 inside brackets")
    if position >= 2 and text[position - 2] == "\\":
        raise _Declined(f"`{name}` after a backslash continuation")


def _check_string(text: str, token: re.Match[str]) -> None:
    """Decline an f- or t-string with fields: from Python 3.12 on, their fields may nest quotes."""
    start = token.start()
    prefix = text[max(start - 2, 0) : start]
    if ("f" in prefix or "F" in prefix or "t" in prefix or "T" in prefix) and "{" in token.group():
        raise _Declined("an f-string with fields before the last of the names")


def _assignment(text: str, start: int, name: str) -> tuple[object, int]:
    """The value assigned to ``name`` (from ``start``, right after it) and where the statement ends."""
    simple = _SIMPLE().match(text, start)
    if simple is not None:
        single, double = simple.group("single", "double")
        return (single if single is not None else double), simple.end()  # neither: `None`
    alone = _ANNOTATION_ONLY().match(text, start)
    if alone is not None:
        return _UNBOUND, alone.end()
    assigned = _ASSIGNED().match(text, start)
    if assigned is None:
        raise _Declined(f"`{name}` is bound by a statement other than a plain assignment")
    return _value(text, assigned.end(), name)


def _value(text: str, start: int, name: str) -> tuple[object, int]:
    """The literal from ``start`` on (one line, or as many as the statement takes), and its end."""
    stop = start
    for _ in range(_MAX_VALUE_LINES):
        stop = text.find("\n", stop + 1)
        if stop < 0:
            stop = len(text)
        try:
            return _literal(text[start:stop]), stop
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if stop == len(text):
                break
    raise _Declined(f"`{name}` is not a literal the fast reader reads")


def _literal(source: str) -> object:
    # Parsed as the statement it is, so that continuation lines and comments
    # mean what they mean to Python; only a single plain assignment to one name counts.
    body = ast.parse("_ = " + source).body
    if len(body) != 1 or not isinstance(body[0], ast.Assign) or len(body[0].targets) != 1:
        raise ValueError("not a single assignment")
    return ast.literal_eval(body[0].value)


# -- reading the file -------------------------------------------------------------------------


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
