"""Alembic in the test process: the project's own env.py, unmodified, run with dbinit's URL.

As ``dbinit migrate`` runs it (:mod:`dbinit.alembic_runner`): ``env.py``
gets the test database as ``sqlalchemy.url`` (with the driver its template
needs) and as ``DATABASE_URL`` while it runs; its connection must be on that
database (an env.py that builds its own URL and reaches another database is
refused before any revision runs, so a test never migrates a developer's
database); every revision runs in its own transaction. The revision modules
are loaded once per session, and one ``env.py`` run executes a whole plan of
steps (up, down, up again…), with the plan's own reads of the catalog between
the steps on env.py's connection.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dbinit.errors import ConfigurationError, MigrationFailed

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings
    from dbinit.testing.databases import Database

T = TypeVar("T")

#: One step of a plan: (revision, True for its upgrade / False for its downgrade).
Step = tuple[str, bool]
#: A plan: given Alembic's MigrationContext, the steps to run (a generator may read between them).
Plan = Callable[[Any], Iterator[Step]]


def in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` in a thread of its own: env.py's ``asyncio.run`` works even under a running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbinit-alembic") as pool:
        return pool.submit(function).result()


@dataclasses.dataclass(frozen=True)
class Project:
    """The project's migrations, as dbinit reads them, and what the tests are keyed by."""

    alembic_ini: Path
    overrides: Mapping[str, Any]
    scripts: MigrationScripts
    #: Every revision in upgrade order (base to the heads).
    order: tuple[str, ...]
    #: Which project (its migrations' folder): names its template family.
    key: str
    #: The migrations' contents (revision files, env.py, alembic.ini): names its template.
    fingerprint: str

    @classmethod
    def load(cls, alembic_ini: Path, overrides: Mapping[str, Any] | None = None) -> Project:
        """Read the migrations; :class:`ConfigurationError` names what is wrong with them."""
        from dbinit.facts import read_scripts
        from dbinit.settings import load_settings
        from dbinit.testing.databases import fingerprint

        given = {"alembic_ini": alembic_ini, **(overrides or {})}
        settings = load_settings(**given)
        scripts = read_scripts(settings)
        if not scripts.configured:
            raise ConfigurationError(
                f"no Alembic configuration at {alembic_ini} "
                "(alembic.ini or [tool.alembic] in pyproject.toml)",
                hint="Set the ini option dbinit_alembic_ini to the project's alembic.ini",
            )
        files = [Path(r.file) for r in scripts.graph.revisions.values() if r.file]
        location = scripts.script_location or alembic_ini.parent
        extras = [location / "env.py", location / "script.py.mako"]
        extras += [p for p in (scripts.alembic_ini, scripts.pyproject) if p is not None]
        key = hashlib.sha256(str(location.resolve()).encode()).hexdigest()
        import dbinit

        version = getattr(dbinit, "__version__", "")
        settings_key = f"{version}|{settings.version_table}|{settings.version_schema}|{settings.db_schema}"
        return cls(
            alembic_ini=alembic_ini,
            overrides=given,
            scripts=scripts,
            order=tuple(scripts.graph.pending(())),
            key=key,
            fingerprint=fingerprint(files + extras, settings_key),
        )

    def settings_for(self, database: Database) -> Settings:
        from dbinit.settings import load_settings

        return load_settings(**{**self.overrides, "database_url": database.url})

    def file_of(self, revision: str) -> str:
        found = self.scripts.graph.revisions.get(revision)
        return Path(found.file).name if found is not None and found.file else ""

    def named(self, revision: str) -> str:
        """``abc123 (abc123_add_crust.py)``."""
        file = self.file_of(revision)
        return f"{revision} ({file})" if file else revision

    @property
    def excluded_tables(self) -> tuple[str, ...]:
        settings = self._settings()
        return (settings.version_table, settings.history_table)

    def _settings(self) -> Settings:
        from dbinit.settings import load_settings

        return load_settings(**self.overrides)


@dataclasses.dataclass
class Progress:
    """Where a plan's run got: the steps applied, and the one running when it failed."""

    applied: list[Step] = dataclasses.field(default_factory=list)
    current: Step | None = None


class StepFailed(Exception):
    """A plan stopped: ``step`` failed (None: before the first step, or between steps)."""

    def __init__(self, step: Step | None, reason: str, progress: Progress) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.progress = progress


class Alembic:
    """Runs plans of steps on test databases through the project's env.py."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._script: ScriptDirectory | None = None
        self._lock = threading.Lock()

    def script(self, config: Any) -> ScriptDirectory:
        """Alembic's view of the migrations, with every revision module loaded (once)."""
        from alembic.script import ScriptDirectory

        with self._lock:
            if self._script is None:
                script = ScriptDirectory.from_config(config)
                for _ in script.walk_revisions():
                    pass
                self._script = script
            return self._script

    def run(self, database: Database, plan: Plan) -> Progress:
        """Run ``plan`` in one env.py run; raises :class:`StepFailed` naming the step that failed."""
        return in_thread(lambda: self._run(database, plan))

    def upgrade(self, database: Database, target: str = "heads") -> list[str]:
        """``alembic upgrade TARGET``; the revisions applied."""
        return self._move(database, target, upgrade=True)

    def downgrade(self, database: Database, target: str) -> list[str]:
        """``alembic downgrade TARGET``; the revisions downgraded."""
        return self._move(database, target, upgrade=False)

    def current(self, database: Database) -> tuple[str, ...]:
        """The revisions in the version table (empty at base)."""
        from dbinit.facts import read_state
        from dbinit.testing.databases import run_coroutine

        settings = self.project.settings_for(database)
        state = run_coroutine(lambda: read_state(settings, "test"))
        return tuple(state.versions)

    def _move(self, database: Database, target: str, *, upgrade: bool) -> list[str]:
        def plan(context: Any) -> Iterator[Step]:
            script = self._script
            assert script is not None
            heads = context.get_current_heads()
            steps = script._upgrade_revs(target, heads) if upgrade else script._downgrade_revs(target, heads)
            for step in steps:
                yield (step.revision.revision, upgrade)

        try:
            progress = self.run(database, plan)
        except StepFailed as exc:
            if exc.step is None:
                raise MigrationFailed(exc.reason) from None
            revision, up = exc.step
            raise MigrationFailed(
                f"{'upgrade' if up else 'downgrade'} of {self.project.named(revision)} failed: {exc.reason}",
                revision=revision,
            ) from None
        return [revision for revision, _ in progress.applied]

    def _run(self, database: Database, plan: Plan) -> Progress:
        from alembic.runtime.migration import RevisionStep
        from alembic.util import CommandError

        from dbinit.alembic_runner import (
            alembic_config,
            describe_failure,
            env_is_async,
            environment_context,
            listening,
            session_listeners,
        )
        from dbinit.logbridge import alembic_logging
        from dbinit.logs import log_output, make_logger

        project = self.project
        settings = project.settings_for(database)
        config = alembic_config(settings, project.scripts, stdout=io.StringIO())
        try:
            script = self.script(config)
        except Exception as exc:
            raise StepFailed(None, f"Alembic cannot load the migrations: {describe_failure(exc)}",
                             Progress()) from exc
        progress = Progress()

        def steps(heads: Any, context: Any) -> Iterator[Any]:
            for revision, upgrade in plan(context):
                progress.current = (revision, upgrade)
                yield RevisionStep(script.revision_map, script.get_revision(revision), upgrade)

        def applied(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
            if progress.current is not None:
                progress.applied.append(progress.current)
            progress.current = None

        def adjust(kwargs: dict[str, Any]) -> None:
            from alembic import util as alembic_util

            kwargs["transaction_per_migration"] = True
            callbacks = alembic_util.to_tuple(kwargs.get("on_version_apply"), default=())
            kwargs["on_version_apply"] = (*callbacks, applied)

        environment = environment_context(
            settings, config, script, steps, as_sql=False, starting_rev=None, adjust=adjust,
            expected=identity_of(database),
        )
        listeners = session_listeners(settings, None, async_driver=env_is_async(project.scripts))
        log = make_logger(settings.service, log_output("console", "warning", stream=sys.stderr))
        try:
            with (
                _environment_variable("DATABASE_URL", database.url),
                alembic_logging(log),
                listening(listeners),
                environment,
            ):
                script.run_env()
        except ConfigurationError as exc:
            raise StepFailed(progress.current, str(exc), progress) from exc
        except (Exception, CommandError) as exc:
            raise StepFailed(progress.current, describe_failure(exc), progress) from exc
        return progress


def identity_of(database: Database) -> Any:
    """Who the test database is (:mod:`dbinit.identity`), for env.py's connection to be checked against."""
    from dbinit.identity import IDENTITY_QUERY, PostgresIdentity, SqliteIdentity

    if database.dialect == "sqlite":
        return SqliteIdentity.of(database.path)
    row = database.sql(IDENTITY_QUERY)[0]
    from dbinit.urls import DatabaseURL

    return PostgresIdentity(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]),
                            display=DatabaseURL.parse(database.url).display_name)


@contextlib.contextmanager
def _environment_variable(name: str, value: str) -> Iterator[None]:
    """``name=value`` for the body: an env.py that reads ``os.environ`` gets the test database too."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class Migrator:
    """Steps one test database up and down (the ``dbinit_migrator`` fixture).

    ``upgrade("heads")``, ``upgrade("ab12")``, ``upgrade("+1")``;
    ``downgrade("-1")``, ``downgrade("base")``; ``current()``. Each returns the
    revisions it ran, in order; a failing revision raises
    :class:`~dbinit.errors.MigrationFailed` naming it and why (its
    transaction rolled back, the earlier ones stay applied).
    """

    def __init__(self, alembic: Alembic, database: Database) -> None:
        self.alembic = alembic
        self.database = database

    @property
    def revisions(self) -> tuple[str, ...]:
        """Every revision, in upgrade order."""
        return self.alembic.project.order

    def upgrade(self, target: str = "heads") -> list[str]:
        return self.alembic.upgrade(self.database, target)

    def downgrade(self, target: str) -> list[str]:
        return self.alembic.downgrade(self.database, target)

    def current(self) -> tuple[str, ...]:
        return self.alembic.current(self.database)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """The database's :meth:`~dbinit.testing.databases.Database.sql`."""
        return self.database.sql(statement)
