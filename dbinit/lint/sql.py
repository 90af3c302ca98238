"""Each revision's offline SQL, one revision at a time, from Alembic's ``--sql`` mode (no database).

A revision is rendered from the heads of everything it comes after (its
parents, for a merge all of them, its ``depends_on``; nothing for a root) to
itself, through dbinit's own Alembic configuration: ``DATABASE_URL``'s dialect
decides the SQL (a SQLite project gets SQLite SQL), env.py runs as it does for
``dbinit migrate --sql``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbinit.errors import ConfigurationError, DbinitError

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.hookspecs import PluginContext
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings


@dataclasses.dataclass(frozen=True)
class RevisionSQL:
    """One revision's offline SQL, as Alembic prints it (version-table bookkeeping included)."""

    revision: str
    #: The revision file, as the graph names it (None for a sourceless project).
    file: str | None
    #: What it was rendered from: the heads it comes after (empty for a root).
    starting_from: tuple[str, ...]
    sql: str
    #: Where each piece of ``sql`` came from, in order (see :class:`SourceWrite`).
    writes: tuple[SourceWrite, ...] = ()

    def source_of(self, offset: int) -> SourceWrite | None:
        """The write that holds ``offset`` of :attr:`sql`."""
        found = None
        for write in self.writes:
            if write.offset > offset:
                break
            found = write
        return found


@dataclasses.dataclass(frozen=True)
class SourceWrite:
    """One piece of the rendered SQL as Alembic wrote it, and the revision's code that caused it."""

    offset: int
    #: The line of the revision file running when it was written (None: not the revision's code,
    #: e.g. Alembic's own BEGIN or the version-table update).
    line: int | None
    #: Written by ``op.get_context().autocommit_block()`` itself (its COMMIT / BEGIN).
    autocommit_block: bool


class _RecordingBuffer(io.StringIO):
    """Alembic's output buffer: remembers, per write, the line of the revision file that caused it."""

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self._file = os.path.realpath(path) if path is not None else None
        self._known: dict[str, bool] = {}
        self.writes: list[SourceWrite] = []

    def _is_revision(self, filename: str) -> bool:
        if filename not in self._known:
            self._known[filename] = os.path.realpath(filename) == self._file
        return self._known[filename]

    def write(self, text: str) -> int:
        line = None
        autocommit_block = False
        if self._file is not None:
            frame = sys._getframe(1)
            while frame is not None:
                code = frame.f_code
                if code.co_name == "autocommit_block":
                    autocommit_block = True
                if self._is_revision(code.co_filename):
                    line = frame.f_lineno
                    break
                frame = frame.f_back  # type: ignore[assignment]
        self.writes.append(SourceWrite(self.tell(), line, autocommit_block))
        return super().write(text)


def starting_heads(scripts: MigrationScripts, revision: str) -> tuple[str, ...]:
    """The heads of everything ``revision`` comes after (in file order); () for a root."""
    graph = scripts.graph
    before = graph.ancestors(graph.parents(revision))
    below = {parent for rev in before for parent in graph.parents(rev)}
    return tuple(rev for rev in graph.revisions if rev in before and rev not in below)


def _starting_rev(heads: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """Alembic's ``starting_rev``: None from the base, a revision, or (a merge) several."""
    if not heads:
        return None
    return heads[0] if len(heads) == 1 else heads


def revisions_to_lint(scripts: MigrationScripts, from_revision: str | None) -> list[str]:
    """Every revision in upgrade order, or those after ``from_revision`` (exclusive)."""
    graph = scripts.graph
    if from_revision is None:
        return graph.pending(())
    try:
        start = graph.resolve(from_revision)
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"--from {from_revision}: no such revision ({exc})",
            hint="Name a revision `dbinit showmigrations` lists",
        ) from None
    return graph.pending((start,))


def render_revisions(
    settings: Settings,
    scripts: MigrationScripts,
    revisions: Sequence[str],
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
) -> list[RevisionSQL]:
    """The offline SQL of each of ``revisions``, rendered one at a time."""
    return [render_revision(settings, scripts, revision, contexts, log) for revision in revisions]


def render_revision(
    settings: Settings,
    scripts: MigrationScripts,
    revision: str,
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
) -> RevisionSQL:
    """``revision``'s offline SQL: from the heads it comes after, to it."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from dbinit.alembic_runner import alembic_config, describe_failure, entered, environment_context
    from dbinit.logbridge import alembic_logging
    from dbinit.logs import get_logger

    buffer = _RecordingBuffer(scripts.graph.revisions[revision].path)
    config = alembic_config(settings, scripts, stdout=buffer)
    script = ScriptDirectory.from_config(config)
    start = starting_heads(scripts, revision)

    def steps(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(revision, rev)

    try:
        with alembic_logging(log or get_logger(settings.service)), entered(contexts), environment_context(
            settings, config, script, steps, as_sql=True, starting_rev=_starting_rev(start)
        ):
            script.run_env()
    except CommandError as exc:
        raise ConfigurationError(f"cannot render the offline SQL of {revision}: {exc}") from None
    except DbinitError:
        raise
    except Exception as exc:  # env.py or the revision failed: said as `migrate --sql` says it
        raise ConfigurationError(
            f"env.py failed while rendering the offline SQL of {revision}: {describe_failure(exc)}",
            hint="Check env.py, the revision, and what they import",
        ) from exc
    return RevisionSQL(
        revision=revision,
        file=scripts.graph.revisions[revision].file,
        starting_from=start,
        sql=buffer.getvalue(),
        writes=tuple(buffer.writes),
    )
