"""The built-in migration strategies.

``upgrade``
    Alembic ``upgrade heads``, one transaction per migration. The default.
``recreate``
    Drop everything in the target schema, then upgrade. Destructive: selected
    by ``DB_FORCE_RECREATE=true`` (or ``--force-recreate``), refused with exit
    code 7 in production unless ``DBINIT_ALLOW_DESTRUCTIVE=true``.
"""

from __future__ import annotations

from dbinit import hookimpl
from dbinit.strategies import Strategy, StrategyContext


def run_upgrade(context: StrategyContext) -> list[str]:
    return context.upgrade()


def run_recreate(context: StrategyContext) -> list[str]:
    context.preflight()  # everything the upgrade needs, checked before anything is dropped
    context.log.warning("Dropping everything in the target schema (recreate)")
    dropped = context.drop_everything()
    context.log.warning("Schema emptied", dropped_objects=dropped)
    return context.upgrade()


UPGRADE = Strategy("upgrade", run_upgrade, "Alembic upgrade heads, one transaction per migration")
RECREATE = Strategy(
    "recreate", run_recreate, "Drop everything in the target schema, then upgrade", destructive=True
)


@hookimpl(trylast=True)
def dbinit_strategies() -> tuple[Strategy, ...]:
    return (UPGRADE, RECREATE)
