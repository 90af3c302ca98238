"""The revision graph as Alembic itself computes it (imports every file).

Used when a revision file cannot be read statically, and by the tests as the
oracle the static reader must agree with. Imports Alembic: never on the
verify path unless a file forces the fallback.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from dbinit.errors import ConfigurationError
from dbinit.revisions.graph import Revision, RevisionGraph
from dbinit.revisions.layout import AlembicLayout, list_revision_files

# Alembic only warns about these, then keeps one of the files or fails with a KeyError.
_DUPLICATE = re.compile(r"Revision (\S+) is present more than once")


def graph_from_alembic(layout: AlembicLayout) -> RevisionGraph:
    """Build a :class:`RevisionGraph` with Alembic's ``ScriptDirectory``.

    The revisions keep Alembic's file order (so heads and bases come in the
    order ``alembic heads`` shows them); every failure, including those
    Alembic only warns about, is a :class:`ConfigurationError`.
    """
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    directory = layout.script_location or layout.version_locations[0].parent
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            script = ScriptDirectory(
                str(directory),
                version_locations=[str(p) for p in layout.version_locations],
                recursive_version_locations=layout.recursive,
                sourceless=layout.sourceless,
            )
            scripts = list(script.walk_revisions())
    except CommandError as exc:
        raise ConfigurationError(
            f"Alembic cannot read the migrations: {exc}",
            hint="Fix the migration files Alembic names",
        ) from None
    except KeyError as exc:  # Alembic warned "Revision X referenced from Y is not present"
        missing = [str(w.message) for w in caught if "is not present" in str(w.message)]
        detail = "; ".join(missing) or f"revision {exc.args[0]!r} is not present"
        raise ConfigurationError(
            f"Alembic cannot read the migrations: {detail}",
            hint="A migration file is missing, or down_revision / depends_on names an unknown revision",
        ) from None
    except Exception as exc:  # a migration file that fails on import, or a value Alembic trips on
        failing = _failing_file(exc, layout)
        if failing is None:
            raise ConfigurationError(
                f"Alembic cannot read the migrations: {type(exc).__name__}: {exc}",
                hint="Fix the migration file named in the message",
            ) from None
        raise ConfigurationError(
            f"Alembic cannot import {failing}: {type(exc).__name__}: {exc}",
            hint=f"Alembic imports every revision file to read it (dbinit too, for a file it cannot "
            f"read statically): install what {Path(failing).name} imports, or move imports that need "
            "the application (its settings, an app context) into upgrade()/downgrade()",
        ) from None
    for warning in caught:
        duplicate = _DUPLICATE.search(str(warning.message))
        if duplicate:
            raise ConfigurationError(
                f"revision {duplicate.group(1)!r} is declared twice",
                hint="Give one of the files a new revision id",
            )
    order = {path: i for i, path in enumerate(_real(p) for p in list_revision_files(layout))}
    scripts.sort(key=lambda sc: order.get(_real(Path(sc.path)), len(order)))
    revisions = [
        Revision(
            revision=sc.revision,
            down_revisions=_tuple(sc.down_revision),
            branch_labels=tuple(sc._orig_branch_labels),
            depends_on=_tuple(sc.dependencies),
            file=str(sc.path),
        )
        for sc in scripts
    ]
    return RevisionGraph.build(revisions)


def _failing_file(exc: BaseException, layout: AlembicLayout) -> str | None:
    """The revision file in which ``exc`` was raised (the innermost such frame), if any."""
    folders = tuple(str(folder.resolve()) + "/" for folder in layout.version_locations)
    found = None
    if isinstance(exc, SyntaxError) and exc.filename:
        found = exc.filename
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if str(Path(name).resolve()).startswith(folders):
            found = name
        tb = tb.tb_next
    return found


def _real(path: Path) -> str:
    return str(path.resolve())


def _tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(dict.fromkeys(value))
