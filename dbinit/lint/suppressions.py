"""Suppressions in a revision file: a comment naming the rule(s) and, mandatorily, why.

::

    # dbinit: ignore[dbinit.L001] countries has 250 rows: the SHARE lock lasts milliseconds
    op.create_index("ix_countries_code", "countries", ["code"])

    op.drop_column("orders", "legacy")  # dbinit: ignore[dbinit.L002,dbinit.L010] unused since 2.3

A comment on its own line covers the statement that follows it (the comment
block directly above the operation; a ``with`` block as a whole); a comment
at the end of a line covers the statement that line belongs to. A finding is
suppressed when the line of the revision's code that produced it lies in a
covered statement. A suppression without a reason suppresses nothing and is
itself a finding (``dbinit.L100``); one that matches no finding is
``dbinit.L101``; one naming a rule nobody contributes is ``dbinit.L102``.

The file is read with :mod:`tokenize` and :mod:`ast`, never imported.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path

MARK = re.compile(r"#\s*dbinit:\s*ignore\[(?P<ids>[^\]]*)\](?P<reason>.*)$")
#: A comment that looks like a suppression but is not well formed (no brackets).
LOOSE = re.compile(r"#\s*dbinit:\s*ignore\b")


@dataclasses.dataclass(frozen=True)
class Suppression:
    """One ``# dbinit: ignore[...]`` comment."""

    line: int
    ids: tuple[str, ...]
    reason: str
    #: The lines (inclusive) of the statement it covers.
    first: int
    last: int

    def covers(self, rule: str, line: int | None) -> bool:
        return bool(self.reason) and rule in self.ids and line is not None and self.first <= line <= self.last


@dataclasses.dataclass(frozen=True)
class RevisionSource:
    """What lint reads from a revision file itself: its suppressions and its phase declaration."""

    suppressions: tuple[Suppression, ...] = ()
    #: ``# dbinit: ignore`` comments without the ``[rule]`` brackets: (line, text).
    malformed: tuple[tuple[int, str], ...] = ()
    declaration_line: int | None = None


def read_source(path: Path | None) -> RevisionSource:
    """The suppressions of the revision file at ``path`` (nothing for a sourceless revision)."""
    if path is None or path.suffix != ".py":
        return RevisionSource()
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError):
        return RevisionSource()  # the revision reader reports an unreadable file; lint adds nothing
    spans = [
        (node.lineno, node.end_lineno or node.lineno) for node in ast.walk(tree) if isinstance(node, ast.stmt)
    ]
    declaration = next(
        (
            node.lineno
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            and any(
                isinstance(target, ast.Name) and target.id == "dbinit_phase"
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        ),
        None,
    )
    code_lines = _code_lines(text)
    suppressions: list[Suppression] = []
    malformed: list[tuple[int, str]] = []
    for line, column, comment in _comments(text):
        match = MARK.search(comment)
        if match is None:
            if LOOSE.search(comment):
                malformed.append((line, comment.strip()))
            continue
        own_line = line not in code_lines or _starts_with_comment(text, line, column)
        target = _next_code_line(code_lines, line) if own_line else line
        first, last = _statement_span(spans, target) if target is not None else (line, line)
        ids = tuple(part.strip() for part in match["ids"].split(",") if part.strip())
        reason = match["reason"].strip().lstrip(":-").strip()
        suppressions.append(Suppression(line, ids, reason, first, last))
    return RevisionSource(tuple(suppressions), tuple(malformed), declaration)


def _comments(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.start[1], token.string))
    return found


def _code_lines(text: str) -> set[int]:
    """Lines holding a token other than a comment, a newline or indentation."""
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def _starts_with_comment(text: str, line: int, column: int) -> bool:
    return not text.splitlines()[line - 1][:column].strip()


def _next_code_line(code_lines: set[int], line: int) -> int | None:
    later = [n for n in code_lines if n > line]
    return min(later) if later else None


def _statement_span(spans: list[tuple[int, int]], line: int) -> tuple[int, int]:
    """The innermost statement that starts at or spans ``line`` (the line alone if none)."""
    holding = [(first, last) for first, last in spans if first <= line <= last]
    if not holding:
        return line, line
    starting = [span for span in holding if span[0] == line]
    if starting:
        return max(starting, key=lambda span: span[1] - span[0])
    return max(holding, key=lambda span: (span[0], -(span[1] - span[0])))
