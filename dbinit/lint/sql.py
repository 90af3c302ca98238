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
from collections.abc import Sequence
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

    buffer = io.StringIO()
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
    )
