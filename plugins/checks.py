"""The built-in verification checks (the original four, and two more).

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
default: the old code may not work on the new schema. With
``DBINIT_ALLOW_AHEAD=compatible`` E004 reads the verdict (:mod:`dbinit.verdict`,
from the history row ``migrate`` wrote for that revision): ``ahead_compatible``
(an expand: the revision's ``compatible_since`` is in this image's graph) is a
warning (``dbinit.W004``); ``ahead_incompatible`` (a contract this code cannot
serve) and ``ahead_unknown`` (no history row) fail E004, naming the revision
and what it needs. ``DBINIT_ALLOW_AHEAD=true`` accepts any newer revision as
W004. When E004 accepts, E005 passes with a note that the head comparison does
not apply.

The version table is read as Alembic reads it, and E004 fails on every row
Alembic cannot start an upgrade from, whatever ``DBINIT_ALLOW_AHEAD`` says:

* NULL, an empty string or a value that is not a string: Alembic ignores a
  NULL (and would upgrade from the base), fails on the others. NULL or empty
  rows are never "no revision recorded".
* a value that cannot be a revision id: whitespace (``'abc '``, two ids in
  one row), control characters, Alembic's forbidden ``@ - + :``, longer
  than any revision id, or an abbreviation of one of this image's revisions
  (Alembic resolves it for ``current`` but cannot update such a row).
* an unknown value not shaped like this project's revision ids (characters
  of kinds its ids never use; Alembic's own ids are 12 hex digits): no
  release of the project wrote it, so it is not taken for a newer release.
* two rows of which one is an ancestor of the other: Alembic keeps only
  heads and refuses to upgrade ("overlaps with other requested revisions").

A duplicated row is harmless at head (Alembic upgrades nothing); when the
database is behind, E005 says to delete it first (Alembic updates one row
per head and stops when it finds two).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dbinit import hookimpl
from dbinit.checks import Check, CheckMessage, Error, Facts, Info, Warning, check, quoted
from dbinit.verdict import judge_ahead
from dbinit.verdict import revision_fault as _revision_fault
from dbinit.verdict import shaped_like_the_project as _shaped_like_the_project

if TYPE_CHECKING:
    from dbinit.revisions.graph import RevisionGraph

def migrate_hint(facts: Facts) -> str:
    """What to do when the migrations have not run, naming this service's migration Job.

    The Job's name is the one k8s/ gives it: the service's name, then
    ``-migration-`` and the release (one Job per release).
    """
    return (
        "The migration job has not run or has failed for this release: check its logs "
        f"(kubectl logs job/{facts.settings.service}-migration-<release>) or run `dbinit migrate`."
    )


FIX_ROWS_HINT = (
    "Alembic cannot upgrade from such a row either. Find what wrote it, then record the real "
    "revision: `alembic stamp --purge <revision>` replaces every row of the version table."
)
VERSION_OBJECT_HINT = (
    "Alembic cannot use it as its version table (`alembic upgrade` fails on it). Rename or drop "
    "that object, or set DBINIT_VERSION_TABLE (and version_table in env.py) to the real one."
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
    if state.is_empty and state.version_table_problem:
        where = facts.settings.version_table_schema or state.schema
        yield Error(
            f"Database is empty (no tables in schema {state.schema!r}), and "
            f"{facts.settings.version_table!r} "
            f"{'there' if where == state.schema else f'in schema {where!r}'} {state.version_table_problem}",
            hint=VERSION_OBJECT_HINT,
            id="dbinit.E002",
        )
    elif state.is_empty:
        elsewhere = facts.settings.version_table_schema
        yield Error(
            f"Database is empty (no tables in schema {state.schema!r})"
            + (f"; the version table is read from schema {elsewhere!r}"
               if elsewhere and elsewhere != state.schema else ""),
            hint=migrate_hint(facts),
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
    where = facts.settings.version_table_schema or state.schema
    if state.version_table_problem:
        yield Error(
            f"{table!r} in schema {where!r} {state.version_table_problem}",
            hint=VERSION_OBJECT_HINT,
            id="dbinit.E003",
        )
    elif not state.version_table_exists:
        yield Error(
            f"Table {table!r} is missing from schema {where!r}, "
            + (f"while schema {state.schema!r} " if where != state.schema else "which ")
            + f"has {'some' if state.table_count is None else state.table_count} other tables",
            hint="The tables were not created by Alembic (create_all?) or DBINIT_SCHEMA, "
            "DBINIT_VERSION_TABLE or DBINIT_VERSION_TABLE_SCHEMA is wrong. Run the migration job; "
            "if the schema already matches the migrations, record it with `alembic stamp head`.",
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
    table = facts.settings.version_table
    if not state.versions and not state.invalid_versions:
        yield Error(
            f"Table {table!r} is empty: the database has no current revision",
            hint=migrate_hint(facts),
            id="dbinit.E004",
        )
        return
    faults = [(quoted(v), _not_text(v)) for v in state.invalid_versions]
    foreign: list[str] = []
    ahead: list[str] = []
    for value in dict.fromkeys(state.versions):
        if value in graph:
            continue
        fault = _revision_fault(value, graph)
        if fault is not None:
            faults.append((quoted(value), fault))
        elif _shaped_like_the_project(value, graph):
            ahead.append(value)
        else:
            foreign.append(value)
    failed = False
    if faults:
        failed = True
        yield Error(
            f"Table {table!r} has {_rows(len(faults))} that {'is' if len(faults) == 1 else 'are'} "
            "not a revision id: " + _listed(f"{value} ({why})" for value, why in faults),
            hint=FIX_ROWS_HINT,
            id="dbinit.E004",
        )
    if foreign:
        failed = True
        yield Error(
            f"Current revision {_listed(quoted(v) for v in foreign)} is not in this image's "
            f"migrations (heads: {', '.join(graph.heads) or 'none'}) and is not shaped like this "
            "project's revision ids, so it is not taken for a newer release's",
            hint="No release of this project wrote that value: find what did, then record the real "
            "revision (`alembic stamp --purge <revision>`). DBINIT_ALLOW_AHEAD does not apply.",
            id="dbinit.E004",
        )
    overlapping = _overlapping(state.versions, graph)
    if overlapping:
        failed = True
        shown = "; ".join(f"{old} comes before {new}" for old, new in overlapping[:5])
        yield Error(
            f"Table {table!r} lists revisions that overlap ({shown}): Alembic records only the "
            "heads and refuses to upgrade from this",
            hint="A hand edit or a failed stamp left the older row(s): delete the row(s) for "
            + ", ".join(dict.fromkeys(old for old, _ in overlapping))
            + " from the version table.",
            id="dbinit.E004",
        )
    policy = facts.settings.allow_ahead
    if ahead and policy == "true":
        yield Warning(
            f"Current revision {', '.join(ahead)} is not in this image's migrations; "
            "accepted as a database ahead of the image (DBINIT_ALLOW_AHEAD=true)",
            hint="Expected while a newer release rolls out; otherwise deploy the newer image.",
            id="dbinit.W004",
        )
    elif ahead and policy == "compatible":
        message = _compatibility(facts, ahead)
        failed = failed or message.is_serious()
        yield message
    elif ahead:
        failed = True
        yield Error(
            f"Current revision {', '.join(ahead)} is not in this image's migrations "
            f"(heads: {', '.join(graph.heads) or 'none'})",
            hint="The database was migrated by a newer or different image. Deploy the image "
            "whose migrations contain that revision; during a rolling deploy with backward-"
            "compatible migrations set DBINIT_ALLOW_AHEAD=compatible (or true). If the value is garbage, "
            "fix the version table (alembic stamp).",
            id="dbinit.E004",
        )
    if not failed and not ahead:
        yield Info(f"Current revision {state.current_revision} is known", id="dbinit.E004")


def _compatibility(facts: Facts, ahead: list[str]) -> CheckMessage:
    """DBINIT_ALLOW_AHEAD=compatible: accept newer revisions only if their history says this code works."""
    graph = facts.scripts.graph
    heads = ", ".join(graph.heads) or "none"
    state = _state(facts)
    judged = {v: judge_ahead(state, graph, v) for v in ahead}
    broken = [judged[v] for v in ahead if judged[v].verdict == "ahead_incompatible"]
    unknown = [v for v in ahead if judged[v].verdict != "ahead_compatible"]
    if broken:
        shown = "; ".join(
            f"{a.revision} ({a.phase or 'contract'}) needs the code of {a.compatible_since} or later"
            for a in broken
        )
        return Error(
            f"Database is ahead of this image and incompatible with it: {shown}, which this image "
            f"(heads: {heads}) does not have (ahead_incompatible, DBINIT_ALLOW_AHEAD=compatible)",
            hint="A newer release applied a contract revision that this code cannot serve: deploy that "
            "release (its pods are Ready); these replicas stay NotReady until they are replaced.",
            id="dbinit.E004",
        )
    if unknown:
        why = (
            f"the history table {state.history_problem}" if state.history_problem
            else "the history table has no applied row for it" if state.history_table_exists
            else "the database has no history table (migrated before dbinit kept one)"
        )
        return Error(
            f"Current revision {', '.join(unknown)} is not in this image's migrations (heads: {heads}) and "
            f"{why}: whether this code works on it is unknown (ahead_unknown, DBINIT_ALLOW_AHEAD=compatible)",
            hint="Deploy the image whose migrations contain it. If you know its migrations are backward "
            "compatible, set DBINIT_ALLOW_AHEAD=true for this rollout; the next `dbinit migrate` of a "
            "release that has it records its history.",
            id="dbinit.E004",
        )
    since = ", ".join(sorted({str(judged[v].compatible_since) for v in ahead}))
    return Warning(
        f"Current revision {', '.join(ahead)} is not in this image's migrations; accepted as compatible: "
        f"its history says code from {since} on works with it, and this image has {since} "
        "(ahead_compatible, DBINIT_ALLOW_AHEAD=compatible)",
        hint="Expected while a newer release rolls out (an expand revision); otherwise deploy the newer "
        "image.",
        id="dbinit.W004",
    )


def _rows(count: int) -> str:
    return "a row" if count == 1 else f"{count} rows"


def _listed(items: Iterable[str], limit: int = 5) -> str:
    """At most ``limit`` items, comma-joined, then "…"."""
    items = list(items)
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "")


def _not_text(value: object) -> str:
    """Why a row that is not a string cannot be a revision."""
    if value is None:
        return "Alembic reads it as no revision at all"
    kind = {bool: "boolean", int: "number", float: "number", dict: "object", list: "array"}.get(
        type(value), "BLOB" if isinstance(value, bytes) else type(value).__name__
    )
    return f"a {kind}, not a string: the version_num column has the wrong type"


def _overlapping(versions: tuple[str, ...], graph: RevisionGraph) -> list[tuple[str, str]]:
    """Pairs (older, newer) of recorded revisions where one comes before the other."""
    known = [v for v in dict.fromkeys(versions) if v in graph]
    if len(known) < 2:
        return []
    heads = set(graph.heads)
    if all(v in heads for v in known) and not any(r.depends_on for r in graph.revisions.values()):
        return []  # heads never come before each other, except through depends_on
    below = graph.ancestors(p for v in known for p in graph.parents(v))
    if not below.intersection(known):
        return []
    pairs = []
    for newer in known:
        before = graph.ancestors(graph.parents(newer))
        pairs.extend((older, newer) for older in known if older != newer and older in before)
    return pairs


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
        duplicated = sorted({v for v in state.versions if state.versions.count(v) > 1})
        first = (
            f" First delete the duplicate row(s) for {', '.join(duplicated)} from the version "
            "table: Alembic updates one row per head and stops when it finds two."
            if duplicated
            else ""
        )
        yield Error(
            f"Database is behind: {len(pending)} migration(s) pending ({shown}); "
            f"at {state.current_revision}, head is {', '.join(graph.heads)}",
            hint="Run the migration job for this release (`dbinit migrate`) before starting "
            "the service; services never migrate." + first,
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
                resolved.add(graph.resolve_head(name))
            except KeyError:
                resolved.add(name)
            except ValueError as exc:
                yield Error(
                    f"DBINIT_HEADS: {exc}",
                    hint="Name each head by its id, or by a branch label whose branch has one head "
                    "(label@head)",
                    id="dbinit.E006",
                )
                return
        if heads != resolved:
            yield Error(
                f"Migration heads are {', '.join(sorted(heads))}, "
                f"expected {', '.join(sorted(expected))} (DBINIT_HEADS)",
                hint="Merge the branches (`alembic merge heads`) or update DBINIT_HEADS.",
                id="dbinit.E006",
            )
            return
    elif len(heads) > 1:
        branches = graph.labelled_branches()
        if len(branches) == len(heads) and len(set(branches.values())) == len(heads):
            names = ",".join(f"{branches[h]}@head" for h in graph.heads)
            hint = (
                f"These heads end labelled branches ({', '.join(branches[h] for h in graph.heads)}): "
                f"if the branches are meant to stay apart, set DBINIT_HEADS={names}"
            )
        else:
            hint = (
                "Two branches were created in parallel: merge them with `alembic merge heads`, "
                "or list the intended heads in DBINIT_HEADS (ids or label@head)."
            )
        yield Error(
            f"Migrations have {len(heads)} heads: {', '.join(graph.heads)}", hint=hint, id="dbinit.E006"
        )
        return
    yield Info(f"Head {', '.join(graph.heads)}", id="dbinit.E006")


@check(
    "dbinit.W010",
    "contract_revisions",
    tags=("migrations",),
    requires_database=False,
    requires=("dbinit.E001",),
)
def contract_revisions(facts: Facts) -> Iterator[CheckMessage]:
    """Lists the revisions that count as contract (the previous release's code may break on them)."""
    from dbinit.revisions.phases import DECLARE_HINT, revision_phases

    phases = revision_phases(facts.scripts)
    order = facts.scripts.graph.pending(())
    inferred = [phases[r] for r in order if phases[r].phase == "contract" and phases[r].source == "inferred"]
    declared = [r for r in order if phases[r].phase == "contract" and phases[r].source == "declared"]
    since = sorted({phases[h].compatible_since for h in facts.scripts.heads})
    at_head = f"; at head, code from revision {', '.join(since)} on works" if since else ""
    if inferred:
        shown = "; ".join(
            f"{p.revision} ({_file_line(facts, p.revision, p.line)}: {p.reason})" for p in inferred[-5:]
        )
        yield Warning(
            f"{len(inferred)} revision(s) count as contract (inferred): {shown}"
            + (f" and {len(inferred) - 5} older" if len(inferred) > 5 else "")
            + at_head,
            hint="A contract revision may break the code of the previous release while it still runs "
            "(rolling deploy): deploy it only once no pod runs older code. " + DECLARE_HINT
            + ' To acknowledge a contract, declare dbinit_phase = "contract".',
            id="dbinit.W010",
        )
    elif declared:
        yield Info(
            f"{len(declared)} revision(s) declared contract: {_listed(declared)}{at_head}", id="dbinit.W010"
        )
    else:
        yield Info(f"No contract revision: every revision is an expand{at_head}", id="dbinit.W010")


def _file_line(facts: Facts, revision: str, line: int | None) -> str:
    path = facts.scripts.graph.revisions[revision].path
    name = path.name if path is not None else "?"
    return f"{name}:{line}" if line is not None else name


#: Checks only ``dbinit check`` runs: never verify at a service's start-up, nor readiness
#: (they read every migration file).
CHECK_COMMAND_CHECKS: tuple[Check, ...] = (contract_revisions,)


BUILTIN_CHECKS: tuple[Check, ...] = (
    migrations_present,
    database_not_empty,
    alembic_table_present,
    current_revision_known,
    current_revision_is_head,
    single_head,
)


@hookimpl(tryfirst=True)  # run first: other checks may `requires` the built-ins
def dbinit_checks() -> tuple[Check, ...]:
    return BUILTIN_CHECKS
