"""The verdict: which code the database still serves, in one word.

Computed from the facts ``verify`` already has (the image's revision graph and
the one-statement state, which includes the history rows of the database's
current revisions), so it costs no round trip and imports nothing heavy.

==================  ==========================================================
verdict             when
==================  ==========================================================
empty               the schema has no tables
unversioned         tables, but no (readable) version table or no revision in it
multiple_heads      this image's migrations have several heads and DBINIT_HEADS
                    does not name them: there is no single code version to judge
at_head             the database is at this image's head(s)
behind              migrations of this image are pending
ahead_compatible    a newer release migrated it, and its history says the code
                    of a revision this image has still works on it
ahead_incompatible  a newer release migrated it past what this image's code
                    works with (a contract revision)
ahead_unknown       a revision this image lacks, shaped like the project's ids,
                    with no applied history row (migrated before dbinit kept a
                    history, or stamped)
unknown_revision    a revision this image lacks, in no history row and not
                    shaped like the project's ids, or a row that is no revision
==================  ==========================================================

An image (head ``H``) on a database at ``D`` it does not know: ``D``'s latest
applied history row gives ``compatible_since``; the code works iff that is
``H`` or an ancestor of ``H`` (with several heads: of one of them), i.e. a
revision of this image's graph.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dbinit.database import DatabaseState
    from dbinit.revisions.graph import RevisionGraph

VerdictName = Literal[
    "at_head",
    "behind",
    "ahead_compatible",
    "ahead_incompatible",
    "ahead_unknown",
    "unknown_revision",
    "empty",
    "unversioned",
    "multiple_heads",
]
#: The ahead verdicts, worst first: several unknown revisions get the worst one's.
_AHEAD_ORDER: tuple[VerdictName, ...] = (
    "unknown_revision", "ahead_incompatible", "ahead_unknown", "ahead_compatible",
)
#: Characters Alembic refuses in a revision id (alembic.script.revision).
_ILLEGAL_REVISION_CHARS = frozenset("@-+:")
#: Alembic's version_num column is VARCHAR(32) unless a project widens it.
_DEFAULT_REVISION_LENGTH = 32


@dataclasses.dataclass(frozen=True)
class AheadRevision:
    """One current revision this image does not have, and what its history says."""

    revision: str
    verdict: VerdictName
    #: From its latest applied history row (None: no row).
    compatible_since: str | None = None
    phase: str | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict, and for a database ahead of the image, each revision it lacks."""

    name: VerdictName
    #: The ahead revisions' compatible_since (comma-joined when several differ); None when unknown.
    compatible_since: str | None = None
    ahead: tuple[AheadRevision, ...] = ()

    @property
    def is_ahead(self) -> bool:
        return self.name in _AHEAD_ORDER

    def described(self) -> str:
        """``ahead_incompatible (e5f6: compatible since e5f6)``, for the text summary and logs."""
        if not self.ahead:
            return self.name
        parts = [
            f"{a.revision}: " + (f"compatible since {a.compatible_since}" if a.compatible_since
                                 else "no history row")
            for a in self.ahead
        ]
        return f"{self.name} ({'; '.join(parts)})"


def decide(state: DatabaseState, graph: RevisionGraph, expected_heads: Iterable[str] = ()) -> Verdict:
    """The verdict for an image with ``graph`` on a database in ``state``.

    ``expected_heads`` is DBINIT_HEADS: with it, several heads are intended.
    """
    if state.is_empty and not state.versions and not state.invalid_versions:
        return Verdict("empty")
    if not state.version_table_exists:
        return Verdict("unversioned")
    if not state.versions and not state.invalid_versions:
        return Verdict("unversioned")
    if len(graph.heads) > 1 and not tuple(expected_heads):
        return Verdict("multiple_heads")
    if state.invalid_versions:
        return Verdict("unknown_revision")
    unknown = [v for v in dict.fromkeys(state.versions) if v not in graph]
    if not unknown:
        if set(state.versions) == set(graph.heads) or not graph.pending(state.versions):
            return Verdict("at_head")
        return Verdict("behind")
    ahead = tuple(judge_ahead(state, graph, value) for value in unknown)
    name = next(n for n in _AHEAD_ORDER if any(a.verdict == n for a in ahead))
    since = sorted({a.compatible_since for a in ahead if a.compatible_since is not None})
    return Verdict(name, ",".join(since) if since else None, ahead)


def judge_ahead(state: DatabaseState, graph: RevisionGraph, value: str) -> AheadRevision:
    """What the history says of ``value``, a current revision ``graph`` does not have."""
    entry = state.history_of(value)
    if entry is not None:
        # every revision of the image's graph is its head or an ancestor of one
        works = entry.compatible_since in graph
        return AheadRevision(
            value, "ahead_compatible" if works else "ahead_incompatible", entry.compatible_since, entry.phase
        )
    if revision_fault(value, graph) is not None or not shaped_like_the_project(value, graph):
        return AheadRevision(value, "unknown_revision")
    return AheadRevision(value, "ahead_unknown")


def revision_fault(value: str, graph: RevisionGraph) -> str | None:
    """Why a value unknown to ``graph`` cannot be a revision id at all (None: it could be)."""
    if not value:
        return "empty"
    if value != value.strip():
        return "leading or trailing whitespace"
    if any(c.isspace() for c in value):
        return "whitespace inside: Alembic stores one revision per row"
    if not value.isprintable():
        return "control characters"
    illegal = sorted(set(value) & _ILLEGAL_REVISION_CHARS)
    if illegal:
        return f"{' '.join(illegal)}, which Alembic does not allow in a revision id"
    longest = max(map(len, graph.revisions), default=0)
    if len(value) > max(_DEFAULT_REVISION_LENGTH, longest):
        return f"{len(value)} characters, longer than any revision id"
    full = next((r for r in graph.revisions if r.startswith(value)), None)
    if full is not None:
        return f"an abbreviation of {full}; Alembic writes full ids"
    return None


def _character_kind(char: str) -> str:
    if char in "0123456789abcdef":
        return "hex"
    if "a" <= char <= "z":
        return "lower"
    if "A" <= char <= "Z":
        return "upper"
    return char


def shaped_like_the_project(value: str, graph: RevisionGraph) -> bool:
    """Whether ``value`` uses only kinds of characters this project's revision ids use.

    Alembic generates 12 hex digits, so hex is always allowed; a project
    with its own ids (``0001_init``) allows what those use.
    """
    kinds = {"hex"}
    for revision in graph.revisions:
        kinds.update(map(_character_kind, revision))
    return all(_character_kind(c) in kinds for c in value)
