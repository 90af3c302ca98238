"""The migrations of a project: the layout and the graph, read the fastest correct way.

A fresh manifest (:mod:`.manifest`), else every file read statically
(:mod:`.reader`), else Alembic (:mod:`.fallback`) for what cannot be read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from dbinit.revisions.graph import Revision, RevisionGraph
from dbinit.revisions.layout import find_layout, list_revision_files
from dbinit.revisions.reader import UnreadableRevision, read_revision_file


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
    #: The pyproject.toml whose [tool.alembic] configures Alembic, if any.
    pyproject: Path | None = None

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
        from dbinit.revisions.manifest import StaleManifest, load_manifest

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
                pyproject=layout.pyproject,
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
        from dbinit.revisions.fallback import graph_from_alembic

        graph = graph_from_alembic(layout)
        return MigrationScripts(
            layout.alembic_ini,
            layout.script_location,
            layout.version_locations,
            graph,
            source="alembic",
            unreadable=tuple(str(exc) for exc in unreadable),
            manifest_note=note,
            pyproject=layout.pyproject,
        )
    return MigrationScripts(
        layout.alembic_ini,
        layout.script_location,
        layout.version_locations,
        RevisionGraph.build(revisions),
        manifest_note=note,
        pyproject=layout.pyproject,
    )
