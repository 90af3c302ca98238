"""The built-in verification checks (the seed's four, and two more).

===========  ==========================  ==========================================
id           name                        fails when
===========  ==========================  ==========================================
dbinit.E001  migrations_present          no revision file in the versions folder(s)
dbinit.E002  database_not_empty          the target schema has no table
dbinit.E003  alembic_table_present       tables exist but the version table does not
dbinit.E004  current_revision_known      no revision recorded, or one this image lacks
dbinit.E005  current_revision_is_head    the database is behind the image's head(s)
dbinit.E006  single_head                 the migrations have several heads (or not
                                         the ones listed in ``DBINIT_HEADS``)
===========  ==========================  ==========================================

A database *ahead* of the image (a revision this image does not know, as
during a rolling deploy after the new release's job ran) fails E004 by
default: the old code may not work on the new schema. Teams whose migrations
are backward compatible (expand/contract) set ``DBINIT_ALLOW_AHEAD=true``;
E004 then reports it as a warning (``dbinit.W004``) and E005 passes with a
note that the head comparison does not apply.
"""

from __future__ import annotations

from collections.abc import Iterator

from dbinit import hookimpl
from dbinit.checks import Check, CheckMessage, Error, Facts, Info, Warning, check

MIGRATE_HINT = (
    "The migration job has not run or has failed for this release: check its logs "
    "(kubectl logs job/<service>-migration) or run `dbinit migrate`."
)


def _state(facts: Facts):  # type: ignore[no-untyped-def]
    assert facts.state is not None, "check requires the database state"
    return facts.state


@check("dbinit.E001", "migrations_present", tags=("migrations",), requires_database=False)
def migrations_present(facts: Facts) -> Iterator[CheckMessage]:
    """Migration files are present in the image."""
    scripts = facts.scripts
    if scripts.count == 0:
        where = ", ".join(str(p) for p in scripts.version_locations)
        yield Error(
            f"No migration files found in {where}",
            hint="The image must contain the Alembic versions folder: generate migrations "
            "(`alembic revision --autogenerate`) and copy them into the image.",
            id="dbinit.E001",
        )
    else:
        yield Info(f"{scripts.count} migration files found", id="dbinit.E001")


@check("dbinit.E002", "database_not_empty", tags=("database",))
def database_not_empty(facts: Facts) -> Iterator[CheckMessage]:
    """The database has tables."""
    state = _state(facts)
    if state.is_empty:
        yield Error(
            f"Database is empty (no tables in schema {state.schema!r})",
            hint=MIGRATE_HINT,
            id="dbinit.E002",
        )
    else:
        count = "Tables" if state.table_count is None else f"{state.table_count} tables"
        yield Info(f"{count} in schema {state.schema!r}", id="dbinit.E002")


@check("dbinit.E003", "alembic_table_present", tags=("database",), requires=("dbinit.E002",))
def alembic_table_present(facts: Facts) -> Iterator[CheckMessage]:
    """The Alembic version table exists."""
    state = _state(facts)
    table = facts.settings.version_table
    if not state.version_table_exists:
        yield Error(
            f"Table {table!r} is missing from schema {state.schema!r}, "
            f"which has {'some' if state.table_count is None else state.table_count} other tables",
            hint="The tables were not created by Alembic (create_all?) or DBINIT_SCHEMA / "
            "DBINIT_VERSION_TABLE are wrong. Run the migration job; if the schema already "
            "matches the migrations, record it with `alembic stamp head`.",
            id="dbinit.E003",
        )
    else:
        yield Info(f"Table {table!r} present", id="dbinit.E003")


@check(
    "dbinit.E004",
    "current_revision_known",
    tags=("database",),
    requires=("dbinit.E001", "dbinit.E003"),
)
def current_revision_known(facts: Facts) -> Iterator[CheckMessage]:
    """The database's current revision is one of this image's migrations."""
    state = _state(facts)
    graph = facts.scripts.graph
    if not state.versions:
        yield Error(
            f"Table {facts.settings.version_table!r} is empty: the database has no current revision",
            hint=MIGRATE_HINT,
            id="dbinit.E004",
        )
        return
    unknown = [v for v in state.versions if v not in graph]
    if not unknown:
        yield Info(f"Current revision {state.current_revision} is known", id="dbinit.E004")
    elif facts.settings.allow_ahead:
        yield Warning(
            f"Current revision {', '.join(unknown)} is not in this image's migrations; "
            "accepted as a database ahead of the image (DBINIT_ALLOW_AHEAD=true)",
            hint="Expected while a newer release rolls out; otherwise deploy the newer image.",
            id="dbinit.W004",
        )
    else:
        yield Error(
            f"Current revision {', '.join(unknown)} is not in this image's migrations "
            f"(heads: {', '.join(graph.heads) or 'none'})",
            hint="The database was migrated by a newer or different image. Deploy the image "
            "whose migrations contain that revision; during a rolling deploy with backward-"
            "compatible migrations set DBINIT_ALLOW_AHEAD=true. If the value is garbage, "
            "fix the version table (alembic stamp).",
            id="dbinit.E004",
        )


@check(
    "dbinit.E005",
    "current_revision_is_head",
    tags=("database",),
    requires=("dbinit.E004",),
)
def current_revision_is_head(facts: Facts) -> Iterator[CheckMessage]:
    """The database is at the head(s) this image expects."""
    state = _state(facts)
    graph = facts.scripts.graph
    if any(v not in graph for v in state.versions):
        yield Info("Database ahead of the image: head check skipped", id="dbinit.E005")
        return
    # the usual case, answered without walking the graph
    pending = [] if set(state.versions) == set(graph.heads) else graph.pending(state.versions)
    if pending:
        shown = ", ".join(pending[:5]) + (", …" if len(pending) > 5 else "")
        yield Error(
            f"Database is behind: {len(pending)} migration(s) pending ({shown}); "
            f"at {state.current_revision}, head is {', '.join(graph.heads)}",
            hint="Run the migration job for this release (`dbinit migrate`) before starting "
            "the service; services never migrate.",
            id="dbinit.E005",
        )
    else:
        yield Info(f"Database at head {', '.join(graph.heads)}", id="dbinit.E005")


@check(
    "dbinit.E006",
    "single_head",
    tags=("migrations",),
    requires_database=False,
    requires=("dbinit.E001",),
)
def single_head(facts: Facts) -> Iterator[CheckMessage]:
    """The migrations have one head (or exactly the heads in ``DBINIT_HEADS``)."""
    graph = facts.scripts.graph
    heads = set(graph.heads)
    expected = facts.settings.heads
    if expected:
        resolved = set()
        for name in expected:
            try:
                resolved.add(graph.resolve(name))
            except KeyError:
                resolved.add(name)
        if heads != resolved:
            yield Error(
                f"Migration heads are {', '.join(sorted(heads))}, "
                f"expected {', '.join(sorted(expected))} (DBINIT_HEADS)",
                hint="Merge the branches (`alembic merge heads`) or update DBINIT_HEADS.",
                id="dbinit.E006",
            )
            return
    elif len(heads) > 1:
        yield Error(
            f"Migrations have {len(heads)} heads: {', '.join(graph.heads)}",
            hint="Two branches were created in parallel: merge them with "
            "`alembic merge heads`, or list the intended heads in DBINIT_HEADS.",
            id="dbinit.E006",
        )
        return
    yield Info(f"Head {', '.join(graph.heads)}", id="dbinit.E006")


BUILTIN_CHECKS: tuple[Check, ...] = (
    migrations_present,
    database_not_empty,
    alembic_table_present,
    current_revision_known,
    current_revision_is_head,
    single_head,
)


@hookimpl(trylast=True)
def dbinit_checks() -> tuple[Check, ...]:
    return BUILTIN_CHECKS
