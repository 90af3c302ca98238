"""The revision graph as Alembic itself computes it (imports every file).

Used when a revision file cannot be read statically, and by the tests as the
oracle the static reader must agree with. Imports Alembic: never on the
verify path unless a file forces the fallback.
"""

from __future__ import annotations

from pathlib import Path

from dbinit.errors import ConfigurationError
from dbinit.scripts import AlembicLayout, Revision, RevisionGraph


def graph_from_alembic(layout: AlembicLayout) -> RevisionGraph:
    """Build a :class:`RevisionGraph` with Alembic's ``ScriptDirectory``."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    directory = layout.script_location or layout.version_locations[0].parent
    try:
        script = ScriptDirectory(
            str(directory),
            version_locations=[str(p) for p in layout.version_locations],
            recursive_version_locations=layout.recursive,
            sourceless=layout.sourceless,
        )
        revisions = [
            Revision(
                revision=sc.revision,
                down_revisions=_tuple(sc.down_revision),
                branch_labels=tuple(sc._orig_branch_labels),
                depends_on=_tuple(sc.dependencies),
                path=Path(sc.path),
            )
            for sc in reversed(list(script.walk_revisions()))
        ]
    except CommandError as exc:
        raise ConfigurationError(
            f"Alembic cannot read the migrations: {exc}",
            hint="Fix the migration files Alembic names",
        ) from None
    return RevisionGraph.build(revisions)


def _tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)
