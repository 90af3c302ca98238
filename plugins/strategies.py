"""The built-in migration strategies.

``upgrade``
    Alembic ``upgrade heads``, one transaction per migration. The default.
``recreate``
    Drop everything in the target schema, then upgrade. Destructive: selected
    by ``DB_FORCE_RECREATE=true`` (or ``--force-recreate``), refused with exit
    code 7 in production unless ``DBINIT_ALLOW_DESTRUCTIVE=true``.
``command``
    The project's own migrator, ``DBINIT_MIGRATE_COMMAND`` (e.g.
    ``flask --app app db upgrade``), run as a child process under the lock,
    timeouts, signal handling and exit codes of ``migrate``, then verified
    (see :mod:`dbinit.command_runner`). Needs only the versions folder, not
    Alembic's configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbinit import hookimpl

if TYPE_CHECKING:
    from dbinit.settings import Settings
    from dbinit.strategies import Strategy, StrategyContext


def run_upgrade(context: StrategyContext) -> list[str]:
    return context.upgrade()


def run_recreate(context: StrategyContext) -> list[str]:
    context.preflight()  # everything the upgrade needs, checked before anything is dropped
    context.log.warning("Dropping everything in the target schema (recreate)")
    dropped = context.drop_everything()
    context.log.warning("Schema emptied", dropped_objects=dropped)
    return context.upgrade()


def run_command(context: StrategyContext) -> list[str]:
    return context.run_command()


def check_command(settings: Settings) -> None:
    from dbinit.command_runner import check_command  # not on the verify path

    check_command(settings)


@hookimpl(trylast=True)
def dbinit_strategies() -> tuple[Strategy, ...]:
    # dbinit.strategies is imported here, not at the top: verify's path loads this plugin, never a strategy
    from dbinit.strategies import Strategy

    upgrade = Strategy("upgrade", run_upgrade, "Alembic upgrade heads, one transaction per migration")
    recreate = Strategy(
        "recreate",
        run_recreate,
        "Drop everything in the target schema, then upgrade",
        destructive=True,
        force_recreate=True,
    )
    command = Strategy(
        "command",
        run_command,
        "The project's own migrator (DBINIT_MIGRATE_COMMAND) under dbinit's lock, then verify",
        check=check_command,
        runs_alembic=False,
    )
    return (upgrade, recreate, command)
