"""The migration tests' work: each pass runs once per session, and each test item reads its outcome.

- heads: one head, or exactly ``DBINIT_HEADS``;
- revision files: every file read by dbinit's reader, every module imported by Alembic;
- upgrade and downgrade, one pass: per revision up (from the base, on an empty database, each revision
  in its own transaction), down (the catalog must be as before it), up again (it must still run);
- data: rows in every table (new tables get theirs) before each revision; an expand keeps them;
- models: Alembic's autogenerate comparison of the project's metadata with the head's schema;
- previous release: the new head's phases keep the previous release's code working;
- lint: ``dbinit lint`` findings at ERROR level, from the previous release on.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dbinit.testing.catalog import Catalog, differences, snapshot
from dbinit.testing.rows import RowMaker
from dbinit.testing.runner import Alembic, Project, Step, StepFailed

if TYPE_CHECKING:
    from dbinit.testing.databases import Database, Server

Status = Literal["passed", "failed", "skipped"]

#: How many lines of a catalog difference a failure shows.
MAX_LINES = 20


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: Status
    message: str = ""


PASSED = Outcome("passed")


@dataclasses.dataclass
class Cycled:
    """The cycle pass's outcomes: each revision's upgrade test and downgrade test."""

    upgrades: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    downgrades: dict[str, Outcome] = dataclasses.field(default_factory=dict)


def _lines(found: list[str]) -> str:
    shown = found[:MAX_LINES]
    more = len(found) - len(shown)
    return "\n".join(f"  - {line}" for line in shown) + (f"\n  … and {more} more" if more > 0 else "")


class Databases:
    """The session's test databases: made on the server, dropped after use; the head from a template."""

    def __init__(self, server: Server, project: Project, alembic: Alembic) -> None:
        self.server = server
        self.project = project
        self.alembic = alembic
        self._template: str | None = None

    def create(self, *, more: bool = True) -> Database:
        return self.server.create(more=more)

    def drop(self, database: Database) -> None:
        self.server.drop(database)

    def keep_as_template(self, database: Database) -> bool:
        """``database`` (at the heads, upgraded from the base) becomes the template if there is none."""
        taken = self.server.adopt(self.project.key, self.project.fingerprint, database)
        if taken:
            self._template = None  # found under its name on next use
        return taken

    def at_head(self, *, more: bool = True) -> Database:
        """A new database at the heads, cloned from the template (built once)."""
        if self._template is None:
            self._template = self.server.template(
                self.project.key, self.project.fingerprint, lambda database: self.alembic.upgrade(database)
            )
        return self.server.create(template=self._template, more=more)


class Suite:
    """Every pass's outcomes, computed on first use."""

    def __init__(
        self,
        project: Project,
        databases: Databases,
        *,
        metadata: str | None = None,
        previous_release: str | None = None,
        root: Path | None = None,
    ) -> None:
        self.project = project
        self.databases = databases
        self.alembic = databases.alembic
        self.metadata = metadata
        self.previous_release = previous_release
        self.root = root

    # -- per revision --------------------------------------------------------------------

    @property
    def upgrades(self) -> dict[str, Outcome]:
        """Each revision's first upgrade in the cycle pass: from the base, on an empty database."""
        return self._cycled.upgrades

    @property
    def downgrades(self) -> dict[str, Outcome]:
        return self._cycled.downgrades

    @functools.cached_property
    def _cycled(self) -> Cycled:
        """One pass for the upgrade and the downgrade tests: per revision up, down, up again.

        Every revision's first upgrade runs on a database that only its predecessors' upgrades (and
        their down/up cycles, which left the catalog as they found it) have touched: the upgrade test
        from the base. A failure, or a downgrade that leaves a trace, restarts on a fresh database,
        upgraded plainly to just after that revision. The database that reaches the heads becomes the
        template.
        """
        order = self.project.order
        cycled = Cycled()
        start = 0
        while start < len(order):
            start = self._cycles(start, cycled)
        for revision in order:
            cycled.upgrades.setdefault(revision, PASSED)
            cycled.downgrades.setdefault(revision, PASSED)
        return cycled

    def _cycles(self, start: int, cycled: Cycled) -> int:
        """Cycle the revisions from ``start``; returns where to restart (len(order): done)."""
        project = self.project
        order = project.order
        excluded = project.excluded_tables
        traces: dict[str, list[str]] = {}
        outcomes = cycled.downgrades

        def plan(context: Any) -> Iterator[Step]:
            for revision in order[:start]:
                yield (revision, True)
            before: Catalog = snapshot(context.connection, excluded)
            for revision in order[start:]:
                yield (revision, True)
                yield (revision, False)
                back = snapshot(context.connection, excluded)
                left = differences(before, back)
                if left:
                    traces[revision] = [f"downgrade of {project.named(revision)} does not leave the schema "
                                        f"as it found it:\n{_lines(left)}"]
                    return  # what follows restarts on a fresh database: the trace may be in its way
                yield (revision, True)  # and up again: it must still run (and what follows on it)
                before = snapshot(context.connection, excluded)

        database = self.databases.create()
        kept = False
        try:
            progress = self.alembic.run(database, plan)
            failed = None
        except StepFailed as exc:
            failed = exc
            progress = exc.progress
        else:
            if not traces:  # at the heads, upgraded from the base: the template, unless there is one
                kept = self.databases.keep_as_template(database)
        finally:
            if not kept:
                self.databases.drop(database)
        for revision, upgrade in progress.applied:
            if upgrade:
                cycled.upgrades.setdefault(revision, PASSED)
        for revision, found in traces.items():
            outcomes[revision] = Outcome("failed", "\n".join(found))
            return order.index(revision) + 1
        if failed is None:
            return len(order)
        if failed.step is None:
            for revision in order[start:]:
                cycled.upgrades.setdefault(revision, Outcome(
                    "failed", f"upgrade: env.py failed before the first revision ran: {failed.reason}"))
                outcomes.setdefault(revision, Outcome("failed", f"env.py failed: {failed.reason}"))
            return len(order)
        revision, upgrade = failed.step
        index = order.index(revision)
        if index < start:  # the plain upgrade before the cycles failed: nothing further can be reached
            for later in order[start:]:
                skipped = Outcome("skipped", f"not reached: upgrade of {revision} failed")
                cycled.upgrades.setdefault(later, skipped)
                outcomes.setdefault(later, skipped)
            return len(order)
        if upgrade and (revision, True) not in progress.applied:  # its first upgrade
            cycled.upgrades[revision] = Outcome(
                "failed", f"upgrade of {project.named(revision)} failed (on an empty database, upgraded "
                f"from the base): {failed.reason}")
            outcomes[revision] = Outcome(
                "skipped", f"upgrade of {project.named(revision)} failed: {failed.reason} "
                "(the upgrade test reports it)")
            for later in order[index + 1 :]:
                cycled.upgrades.setdefault(later, Outcome("skipped", f"not reached: {revision} failed first"))
                outcomes.setdefault(later, Outcome("skipped", f"not reached: upgrade of {revision} failed"))
            return len(order)
        what = "upgrade (again, after its downgrade)" if upgrade else "downgrade"
        outcomes[revision] = Outcome("failed", f"{what} of {project.named(revision)} failed: {failed.reason}")
        return index + 1

    @functools.cached_property
    def data(self) -> dict[str, Outcome]:
        """Each revision run on a database with rows in every table; an expand keeps them."""
        from sqlalchemy.exc import SQLAlchemyError

        project = self.project
        order = project.order
        phases = self.phases
        maker = RowMaker(project.excluded_tables)
        found: dict[str, Outcome] = {}
        before_rows: dict[str, dict[str, int]] = {}

        def plan(context: Any) -> Iterator[Step]:
            connection = context.connection
            tables = maker.tables(connection)
            counts = maker.counts(connection, tables)
            for revision in order:
                filled = maker.fill(connection, tables, counts)
                before_rows[revision] = dict(filled.counts)
                yield (revision, True)
                tables = maker.tables(connection)
                present = {table.shown: table for table in tables}
                lost: list[str] = []
                try:
                    with connection.begin_nested():
                        counts = maker.counts(connection, tables)
                except SQLAlchemyError as exc:
                    lost.append(f"the tables can no longer be read: {exc}")
                    counts = {}
                for name, count in filled.counts.items():
                    if name in present and name in counts and counts[name] < count:
                        lost.append(f"{name}: {count} rows before, {counts[name]} after")
                phase = phases.get(revision)
                unfillable = "".join(f"\n  - {t}: {why}" for t, why in filled.unfillable.items())
                if lost and phase is not None and phase.phase == "expand":
                    found[revision] = Outcome(
                        "failed",
                        f"expand revision {project.named(revision)} loses rows that were there before it:\n"
                        + _lines(lost),
                    )
                elif not filled.counts:
                    why = " (tables that took no row:" + unfillable + ")" if unfillable else ""
                    found[revision] = Outcome("skipped", f"no table had rows before {revision}{why}")
                else:
                    found[revision] = PASSED

        database = self.databases.create(more=False)
        try:
            self.alembic.run(database, plan)
        except StepFailed as failed:
            if failed.step is None:
                for revision in order:
                    found.setdefault(revision, Outcome("failed", f"env.py failed: {failed.reason}"))
            else:
                culprit = failed.step[0]
                rows = ", ".join(f"{t}: {n}" for t, n in before_rows.get(culprit, {}).items()) or "none"
                found[culprit] = Outcome(
                    "failed",
                    f"upgrade of {project.named(culprit)} fails on a database with rows ({rows}): "
                    f"{failed.reason}",
                )
                for revision in order:
                    found.setdefault(revision, Outcome("skipped", f"not reached: {culprit} failed first"))
        finally:
            self.databases.drop(database)
        return found

    @functools.cached_property
    def phases(self) -> dict[str, Any]:
        from dbinit.revisions.phases import revision_phases

        return dict(revision_phases(self.project.scripts))

    # -- whole project -------------------------------------------------------------------

    def heads(self) -> Outcome:
        project = self.project
        graph = project.scripts.graph
        expected = project._settings().heads
        heads = set(graph.heads)
        if expected:
            resolved = set()
            for name in expected:
                try:
                    resolved.add(graph.resolve_head(name))
                except (KeyError, ValueError):
                    resolved.add(name)
            if heads != resolved:
                return Outcome("failed", f"the migrations' heads are {', '.join(sorted(heads))}, "
                                         f"DBINIT_HEADS says {', '.join(expected)}")
            return PASSED
        if len(heads) > 1:
            named = "; ".join(project.named(head) for head in graph.heads)
            return Outcome("failed", f"the migrations have {len(heads)} heads: {named}. Merge them "
                                     "(alembic merge heads) or name the intended ones in DBINIT_HEADS")
        if not heads:
            return Outcome("failed", "the migrations have no head (no revision, or a cycle)")
        return PASSED

    def files(self) -> Outcome:
        project = self.project
        scripts = project.scripts
        problems = [f"{item} (dbinit's reader could not read it statically)" for item in scripts.unreadable]
        from alembic.script import ScriptDirectory

        from dbinit.alembic_runner import alembic_config

        config = alembic_config(project._settings(), scripts)
        try:
            self.alembic.script(config)
        except Exception as exc:  # a module Alembic cannot import: find which
            problems += _modules_failing(ScriptDirectory.from_config(config)) or [
                f"Alembic cannot load the migrations: {type(exc).__name__}: {exc}"
            ]
        if problems:
            return Outcome("failed", "revision files that cannot be read:\n" + _lines(problems))
        return PASSED

    def models(self) -> Outcome:
        assert self.metadata is not None
        metadata = load_object(self.metadata, self.root)
        database = self.databases.at_head(more=False)
        try:
            diffs = compare_models(database, metadata, self.project.excluded_tables)
        finally:
            self.databases.drop(database)
        if diffs:
            heads = ", ".join(self.project.named(head) for head in self.project.scripts.heads)
            return Outcome("failed", f"the models ({self.metadata}) and the schema the migrations make "
                                     f"(head {heads}) differ:\n{_lines(diffs)}")
        return PASSED

    def previous(self) -> Outcome:
        assert self.previous_release is not None
        graph = self.project.scripts.graph
        try:
            previous = graph.resolve(self.previous_release)
        except (KeyError, ValueError):
            return Outcome("failed", f"dbinit_previous_release: {self.previous_release!r} is no revision "
                                     "of these migrations")
        phases = self.phases
        compatible = graph.ancestors([previous])
        broken = []
        for head in graph.heads:
            since = phases[head].compatible_since
            if since not in compatible:
                culprits = [
                    f"{self.project.named(r)}: {phases[r].described}"
                    for r in graph.pending([previous])
                    if r in graph.ancestors([head]) and phases[r].phase == "contract"
                    and phases[r].compatible_since not in compatible
                ]
                broken.append(
                    f"head {head} is compatible only since {since}, after the previous release "
                    f"({previous}): its code would break on the new schema during a rolling deploy. "
                    "Contract revisions since then:\n" + _lines(culprits or [f"(declared on {head})"])
                )
        if broken:
            return Outcome("failed", "\n".join(broken) + "\nShip the contract in a later release, or declare "
                           'dbinit_phase = "expand" / dbinit_compatible_since where the old code does not '
                           "use what it drops")
        return PASSED

    def lint(self) -> Outcome:
        from dbinit.lint import INSTALL_HINT, pglast_installed

        if not pglast_installed():
            return Outcome("skipped", f"dbinit lint needs pglast: {INSTALL_HINT}")
        from dbinit.checks import Level
        from dbinit.lint.run import lint
        from dbinit.logs import log_output, make_logger
        from dbinit.pluginmanager import Registry
        from dbinit.settings import load_settings

        project = self.project
        # offline SQL (no connection): PostgreSQL's, whatever the test database is
        settings = load_settings(**{**project.overrides, "database_url": "postgresql://lint@localhost/lint"})
        previous = None
        if self.previous_release is not None:
            previous = project.scripts.graph.resolve(self.previous_release)
        log = make_logger(settings.service, log_output("console", "warning", stream=sys.stderr))
        registry = Registry.for_settings(settings)  # the project's own rules (plugins) too
        report = lint(
            settings,
            project.scripts,
            previous,
            registry.migration_contexts(settings),
            log=log,
            rules=registry.lint_rules(settings),
        )
        errors = [f for f in report.findings if f.message.level >= Level.ERROR]
        if errors:
            return Outcome("failed", "dbinit lint found errors:\n" + "\n".join(f.line_text() for f in errors))
        return PASSED


def _modules_failing(script: Any) -> list[str]:
    """Each revision file Alembic cannot import, with why."""
    from alembic.util.pyfiles import load_python_file

    failing = []
    for location in script._version_locations:
        folder = Path(location)
        for path in sorted(folder.glob("*.py")):
            try:
                load_python_file(str(folder), path.name)
            except Exception as exc:  # the module's own error, whatever it is, is what we report
                failing.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return failing


def load_object(spec: str, root: Path | None) -> Any:
    """``package.module:attribute.path`` (the project's root importable)."""
    from dbinit.errors import ConfigurationError

    module_name, _, attributes = spec.partition(":")
    if not module_name or not attributes:
        raise ConfigurationError(f"dbinit_metadata = {spec!r}: not module:attribute",
                                 hint='e.g. dbinit_metadata = "myapp.models:Base.metadata"')
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    value: Any = importlib.import_module(module_name)
    for name in attributes.split("."):
        value = getattr(value, name)
    return value


def compare_models(database: Database, metadata: Any, excluded: tuple[str, ...]) -> list[str]:
    """Alembic's autogenerate comparison, one line per difference (a sync connection, any driver)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and name in excluded)

    def compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": False,
                              "include_name": include_name},
        )
        return list(compare_metadata(context, metadata))

    if database.dialect == "sqlite":
        from sqlalchemy import create_engine

        engine = create_engine(database.sync_url)
        try:
            with engine.connect() as connection:
                diffs = compare(connection)
        finally:
            engine.dispose()
    else:
        from sqlalchemy.ext.asyncio import create_async_engine

        from dbinit.testing.databases import run_coroutine

        async def run() -> list[Any]:
            engine = create_async_engine(database.async_url)
            try:
                async with engine.connect() as connection:
                    return await connection.run_sync(compare)
            finally:
                await engine.dispose()

        diffs = run_coroutine(run)
    return [_described(diff) for diff in diffs]


def _described(diff: Any) -> str:
    """One autogenerate difference, said plainly (the models' side first)."""
    if isinstance(diff, list):
        return "; ".join(_described(item) for item in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        where = "in the models, not made by the migrations" if kind == "add_table" else (
            "made by the migrations, not in the models")
        return f"table {diff[1].name}: {where}"
    if kind in ("add_column", "remove_column"):
        where = "in the models, not made by the migrations" if kind == "add_column" else (
            "made by the migrations, not in the models")
        return f"column {diff[2]}.{diff[3].name}: {where}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        obj = diff[1]
        table = getattr(getattr(obj, "table", None), "name", "?")
        where = "in the models only" if kind.startswith("add") else "in the migrations only"
        return f"{kind.split('_')[1]} {obj.name} on {table}: {where}"
    if kind.startswith("modify_"):
        _, _schema, table, column, _info, existing, wanted = diff
        return f"column {table}.{column}: {kind[7:]} is {existing} in the migrations, {wanted} in the models"
    if kind in ("add_fk", "remove_fk"):
        obj = diff[1]
        where = "in the models only" if kind == "add_fk" else "in the migrations only"
        return f"foreign key {obj.name or ''} on {obj.parent.name}: {where}"
    return repr(diff)
