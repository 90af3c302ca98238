"""The migrations of a project: the layout and the graph, read the fastest correct way.

A fresh manifest (:mod:`.manifest`), else every file read statically
(:mod:`.reader`: the fast path, else :mod:`ast`), else Alembic
(:mod:`.fallback`) when a file cannot be read without importing it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dbinit.revisions.graph import Revision, RevisionGraph
from dbinit.revisions.layout import AlembicLayout, find_layout, list_revision_files
from dbinit.revisions.reader import UnreadableRevision, read_revision

if TYPE_CHECKING:
    from dbinit.revisions.manifest import RecordedPhases
    from dbinit.revisions.phases import RevisionPhase

#: How one file was read: the fast path, :mod:`ast`, or only Alembic could (it imports the file).
FileReader = Literal["fast", "ast", "alembic"]


@dataclasses.dataclass(frozen=True)
class MigrationScripts:
    """Where the migrations are and the graph they form."""

    alembic_ini: Path | None
    script_location: Path | None
    version_locations: tuple[Path, ...]
    graph: RevisionGraph
    source: Literal["static", "alembic", "manifest"] = "static"
    #: The files only Alembic can read (``"name.py: reason"``): then ``source`` is "alembic".
    unreadable: tuple[str, ...] = ()
    #: The files read with :mod:`ast` because the fast path declined them (``"name.py: reason"``).
    read_exactly: tuple[str, ...] = ()
    #: How each revision file (by path) was read; empty when the graph came from a manifest
    #: or, for a sourceless project, from Alembic alone.
    readers: Mapping[str, FileReader] = dataclasses.field(default_factory=dict)
    #: Why a revision manifest present on disk was not used (it is stale).
    manifest_note: str = ""
    #: The pyproject.toml whose [tool.alembic] configures Alembic, if any.
    pyproject: Path | None = None
    #: The phases a fresh manifest records (format 2), still unbuilt: the first
    #: :func:`dbinit.revisions.phases.revision_phases` builds ``_phases`` from them, without
    #: reading a file, if this process would compute the same ones.
    manifest_phases: RecordedPhases | None = dataclasses.field(default=None, repr=False, compare=False)
    #: The revisions' phases, computed on first use by :func:`dbinit.revisions.phases.revision_phases`
    #: (verify never needs them).
    _phases: Mapping[str, RevisionPhase] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def configured(self) -> bool:
        """Whether Alembic has a configuration file to run with (alembic.ini or [tool.alembic])."""
        return self.alembic_ini is not None or self.pyproject is not None

    @property
    def count(self) -> int:
        return len(self.graph)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads


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
        from dbinit.revisions.manifest import StaleManifest, read_manifest

        try:
            listed = read_manifest(layout)
        except StaleManifest as exc:
            listed, note = None, str(exc)
        if listed is not None:
            return MigrationScripts(
                layout.alembic_ini,
                layout.script_location,
                layout.version_locations,
                listed.graph,
                source="manifest",
                pyproject=layout.pyproject,
                manifest_phases=listed.phases,
            )
    reads = _read_files(layout) if not layout.sourceless else _Reads()
    source: Literal["static", "alembic"] = "static"
    if reads.unreadable or layout.sourceless:
        from dbinit.revisions.fallback import graph_from_alembic

        graph, source = graph_from_alembic(layout), "alembic"
    else:
        graph = RevisionGraph.build(reads.revisions)
    return MigrationScripts(
        layout.alembic_ini,
        layout.script_location,
        layout.version_locations,
        graph,
        source=source,
        unreadable=tuple(reads.unreadable),
        read_exactly=tuple(reads.exactly),
        readers=reads.readers,
        manifest_note=note,
        pyproject=layout.pyproject,
    )


@dataclasses.dataclass
class _Reads:
    """What reading every file statically gave: the revisions, and how each file was read."""

    revisions: list[Revision] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    exactly: list[str] = dataclasses.field(default_factory=list)
    readers: dict[str, FileReader] = dataclasses.field(default_factory=dict)


def _read_files(layout: AlembicLayout) -> _Reads:
    """Read every revision file statically, noting how each was read (or why it could not be)."""
    reads = _Reads()
    for path in list_revision_files(layout):
        try:
            read = read_revision(path)
        except UnreadableRevision as exc:
            reads.unreadable.append(str(exc))
            reads.readers[str(path)] = "alembic"
            continue
        reads.revisions.append(read.revision)
        reads.readers[read.revision.file or str(path)] = read.reader
        if read.reason:
            reads.exactly.append(f"{path.name}: {read.reason}")
    return reads
