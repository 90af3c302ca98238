"""The revision graph: revisions, parents, heads, bases, labels, what is pending.

Built from revisions read statically (:mod:`.reader`), from a manifest
(:mod:`.manifest`) or from Alembic (:mod:`.fallback`); validated as Alembic
would validate it.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dbinit.errors import ConfigurationError

_ILLEGAL_REVISION_CHARS = frozenset("@-+:")  # alembic.script.revision._revision_illegal_chars


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

    def resolve_head(self, name: str) -> str:
        """The head ``name`` means, as ``alembic upgrade NAME`` reads it.

        A revision id or branch label names that revision; ``X@head`` the one
        head that descends from ``X`` through ``down_revision`` (Alembic's
        branch membership, which leaves ``depends_on`` out). Raises
        :class:`KeyError` for an unknown name and :class:`ValueError` when
        ``X@head`` is ambiguous (several heads descend from ``X``).
        """
        base, at, tail = name.partition("@")
        if not at:
            return self.resolve(name)
        if tail != "head":
            raise KeyError(name)
        start = self.resolve(base)
        found = [head for head in self.heads if start in self._lineage(head)]
        if len(found) != 1:
            raise ValueError(
                f"{name} names {len(found)} heads ({', '.join(found) or 'none'}), not one"
            )
        return found[0]

    def labelled_branches(self) -> dict[str, str]:
        """Head -> the branch label it descends from, for heads on a labelled branch."""
        owned: dict[str, str] = {}
        for label, revision in self.labels.items():
            for head in self.heads:
                if head not in owned and revision in self._lineage(head):
                    owned[head] = label
        return owned

    def _lineage(self, revision: str) -> set[str]:
        """``revision`` and its ancestors through ``down_revision`` only (not ``depends_on``)."""
        seen: set[str] = set()
        stack = [revision]
        while stack:
            current = stack.pop()
            if current not in seen and current in self.revisions:
                seen.add(current)
                stack.extend(self.revisions[current].down_revisions)
        return seen

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


def _name(path: Path | None) -> str:
    return path.name if path is not None else "?"


def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
