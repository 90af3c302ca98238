"""The facts, built from the settings: the migrations on disk and the database's state.

Every flow (``verify``, ``wait``, ``migrate``, the ASGI gate, the commands)
gets its facts here: :func:`read_scripts` (the revision graph, without
importing a migration) and :func:`read_state` (one connection, one round
trip), with connection options from :func:`probe_options`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.database import ProbeOptions, open_probe
from dbinit.revisions.scripts import MigrationScripts, read_migration_scripts
from dbinit.sessions import session_name

if TYPE_CHECKING:
    from dbinit.database import DatabaseState
    from dbinit.settings import Settings


def probe_options(
    settings: Settings,
    purpose: str,
    *,
    long_lived: bool = False,
    budget: float | None = None,
    heads: Sequence[str] = (),
) -> ProbeOptions:
    """Connection options; ``budget`` (seconds left to a deadline) caps both timeouts.

    ``heads`` (the image's) go into the session's name, for the contract guard
    (:mod:`dbinit.sessions`).
    """
    cap = max(budget, 0.05) if budget is not None else None
    return ProbeOptions(
        schema=settings.db_schema,
        version_schema=settings.version_table_schema,
        version_table=settings.version_table,
        connect_timeout=min(settings.connect_timeout, cap) if cap else settings.connect_timeout,
        query_timeout=min(settings.verify_timeout, cap) if cap else settings.verify_timeout,
        application_name=session_name(purpose, settings.service, heads),
        long_lived=long_lived,
        history_table=settings.history_table,
    )


def read_scripts(settings: Settings) -> MigrationScripts:
    return read_migration_scripts(settings.alembic_ini, settings.migrations_dir)


async def read_state(
    settings: Settings, purpose: str = "verify", budget: float | None = None, heads: Sequence[str] = ()
) -> DatabaseState:
    """Connect, read the state in one round trip, disconnect."""
    probe = await open_probe(settings.url, probe_options(settings, purpose, budget=budget, heads=heads))
    try:
        return await probe.read_state()
    finally:
        await probe.close()
