"""The pytest plugin (entry point ``pytest11: dbinit``): migration tests on request, database fixtures.

Installing dbinit adds only command-line options and ini keys to a pytest
run. The migration tests are collected when the project asks:
``--dbinit-migrations``, or ``dbinit_migrations = true`` in its pytest
configuration (then for a run over the whole suite: ``pytest`` alone or
with ``testpaths``, not ``pytest tests/test_one.py``; or when the
``alembic.ini`` is named on the command line). The fixtures, all named
``dbinit_*``, act only when a test asks for them.

Disable the plugin altogether with ``-p no:dbinit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dbinit.testing.databases import Database, Server
    from dbinit.testing.runner import Alembic, Migrator, Project
    from dbinit.testing.suite import Databases, Outcome, Suite

URL_VARIABLE = "DBINIT_TEST_DATABASE_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbinit", "dbinit: migration tests and test databases")
    group.addoption(
        "--dbinit-migrations", action="store_true", default=False,
        help="collect dbinit's migration tests (or set the ini option dbinit_migrations = true)",
    )
    group.addoption(
        "--dbinit-url", default=None, metavar="URL",
        help=f"a PostgreSQL server URL to make test databases on (else ${URL_VARIABLE}, else the ini "
        "option dbinit_url), 'postgresql' for a throwaway server, or 'sqlite'",
    )
    group.addoption(
        "--dbinit-previous-release", default=None, metavar="REV",
        help="the previous release's head revision: its code must work on the new schema",
    )
    parser.addini("dbinit_migrations", "collect dbinit's migration tests", type="bool", default=False)
    parser.addini("dbinit_alembic_ini", "the project's alembic.ini, relative to the rootdir",
                  default="alembic.ini")
    parser.addini("dbinit_url", "where test databases are made (see --dbinit-url)", default="")
    parser.addini("dbinit_metadata", "the models' MetaData as module:attribute (e.g. "
                  "myapp.models:Base.metadata): the migrations must make that schema", default="")
    parser.addini("dbinit_previous_release", "see --dbinit-previous-release", default="")


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("dbinit_migrations") or config.getini("dbinit_migrations"))


_STATE = pytest.StashKey["State"]()


class State:
    """The session's project, database server and suite, each made on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._server: Server | None = None
        self._project: Project | None = None
        self._alembic: Alembic | None = None
        self._suite: Suite | None = None
        self._databases: Databases | None = None

    @property
    def root(self) -> Path:
        return Path(self.config.rootpath)

    @property
    def alembic_ini(self) -> Path:
        return self.root / str(self.config.getini("dbinit_alembic_ini") or "alembic.ini")

    @property
    def node_path(self) -> Path:
        """The file the migration tests are collected under: alembic.ini, else pyproject.toml."""
        ini = self.alembic_ini
        if not ini.exists() and (ini.parent / "pyproject.toml").exists():
            return ini.parent / "pyproject.toml"
        return ini

    def choice_text(self) -> str | None:
        given = self.config.getoption("dbinit_url") or os.environ.get(URL_VARIABLE) or str(
            self.config.getini("dbinit_url") or ""
        )
        return given or None

    def server(self) -> Server:
        if self._server is None:
            import shutil
            import tempfile

            from dbinit.testing.databases import choose, open_server

            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            choice = choose(self.choice_text(), os.environ.get("DATABASE_URL"))
            folder = Path(tempfile.mkdtemp(prefix=f"dbinit-sqlite-{worker}-"))
            try:
                self._server = open_server(choice, worker, folder)
            finally:
                if getattr(self._server, "folder", None) != folder:  # not SQLite (or not started)
                    shutil.rmtree(folder, ignore_errors=True)
        return self._server

    def project(self) -> Project:
        if self._project is None:
            from dbinit.testing.runner import Project

            self._project = Project.load(self.alembic_ini)
        return self._project

    def alembic(self) -> Alembic:
        if self._alembic is None:
            from dbinit.testing.runner import Alembic

            self._alembic = Alembic(self.project())
        return self._alembic

    def databases(self) -> Databases:
        if self._databases is None:
            from dbinit.testing.suite import Databases

            self._databases = Databases(self.server(), self.project(), self.alembic())
        return self._databases

    def suite(self) -> Suite:
        if self._suite is None:
            from dbinit.testing.suite import Suite

            self._suite = Suite(
                self.project(), self.databases(),
                metadata=str(self.config.getini("dbinit_metadata") or "") or None,
                previous_release=self.previous_release(),
                root=self.root,
            )
        return self._suite

    def previous_release(self) -> str | None:
        given = self.config.getoption("dbinit_previous_release") or self.config.getini(
            "dbinit_previous_release"
        )
        return str(given).strip() or None

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            folder = getattr(server, "folder", None)
            if folder is not None:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)


def _state(config: pytest.Config) -> State:
    state = config.stash.get(_STATE, None)
    if state is None:
        state = State(config)
        config.stash[_STATE] = state
    return state


def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):
        config.addinivalue_line("markers", "dbinit: dbinit's migration tests (the dbinit plugin)")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not _enabled(config):
        return None
    from dbinit.testing.databases import choose

    state = _state(config)
    choice = choose(state.choice_text(), os.environ.get("DATABASE_URL"))
    where = {"url": "the server given", "sqlite": f"SQLite ({choice.why})",
             "throwaway": "a throwaway PostgreSQL started for this run"}[choice.kind]
    return [f"dbinit: migrations of {state.node_path}; databases: {where}"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    config = parent.config
    if not _enabled(config):
        return None
    if file_path != _state(config).node_path:
        return None
    return MigrationsFile.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Add the migration tests when asked, before -k / -m select (so they select them too)."""
    if not _enabled(config):
        return
    state = _state(config)
    if any(isinstance(item, MigrationItem) for item in items):
        return  # collected where pytest found the alembic.ini itself
    whole_suite = config.args_source != pytest.Config.ArgsSource.ARGS
    if not (config.getoption("dbinit_migrations") or whole_suite):
        return
    if not state.node_path.exists():
        raise pytest.UsageError(
            f"dbinit: no {state.node_path.name} at {state.node_path.parent} for the migration tests: set the "
            "ini option dbinit_alembic_ini to the project's alembic.ini (relative to the rootdir)"
        )
    node = MigrationsFile.from_parent(session, path=state.node_path)
    report = session.ihook.pytest_make_collect_report(collector=node)
    if report.failed:
        raise pytest.UsageError(f"dbinit: collecting the migration tests failed: {report.longreprtext}")
    collected = [item for item in report.result if isinstance(item, pytest.Item)]
    for item in collected:
        session.ihook.pytest_itemcollected(item=item)
    items[:0] = collected


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skipped migration test is reported at its own name, not at the line of the plugin that skipped it."""
    report = yield
    if isinstance(item, MigrationItem) and report.skipped and isinstance(report.longrepr, tuple):
        _, _, reason = report.longrepr
        report.longrepr = (str(item.path), None, reason)  # type: ignore[assignment]
    return report


class CheckFailed(Exception):
    """A migration test's failure: the message names the revision."""


class MigrationsFile(pytest.File):
    """The migrations, as a collector of dbinit's tests."""

    def collect(self) -> Iterator[pytest.Item]:
        from dbinit.errors import DbinitError

        state = _state(self.config)
        try:
            project = state.project()
        except DbinitError as exc:
            yield MigrationItem.from_parent(self, name="dbinit_revision_files", check="load", error=str(exc))
            return
        yield MigrationItem.from_parent(self, name="dbinit_revision_files", check="files")
        yield MigrationItem.from_parent(self, name="dbinit_heads", check="heads")
        for check in ("upgrade", "downgrade", "data"):
            for revision in project.order:
                yield MigrationItem.from_parent(self, name=f"dbinit_{check}[{revision}]", check=check,
                                                revision=revision)
        if state.config.getini("dbinit_metadata"):
            yield MigrationItem.from_parent(self, name="dbinit_models", check="models")
        if state.previous_release() is not None:
            yield MigrationItem.from_parent(self, name="dbinit_previous_release", check="previous")
            yield MigrationItem.from_parent(self, name="dbinit_lint", check="lint")


class MigrationItem(pytest.Item):
    """One of dbinit's migration tests; its outcome comes from the pass it belongs to (run once)."""

    def __init__(self, *, check: str, revision: str | None = None, error: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.revision = revision
        self.error = error
        self.add_marker(pytest.mark.dbinit)
        if self.config.pluginmanager.hasplugin("xdist"):
            # pytest-xdist --dist loadgroup: every pass runs on one worker, once
            self.add_marker(pytest.mark.xdist_group(name="dbinit"))

    def runtest(self) -> None:
        outcome = self._outcome()
        if outcome.status == "skipped":
            pytest.skip(outcome.message)
        if outcome.status == "failed":
            raise CheckFailed(outcome.message)

    def _outcome(self) -> Outcome:
        from dbinit.testing.suite import Outcome

        if self.check == "load":
            return Outcome("failed", f"the migrations cannot be read: {self.error}")
        suite = _state(self.config).suite()
        per_revision: dict[str, Callable[[], dict[str, Outcome]]] = {
            "upgrade": lambda: suite.upgrades,
            "downgrade": lambda: suite.downgrades,
            "data": lambda: suite.data,
        }
        if self.revision is not None:
            return per_revision[self.check]()[self.revision]
        whole: dict[str, Callable[[], Outcome]] = {
            "files": suite.files, "heads": suite.heads, "models": suite.models,
            "previous": suite.previous, "lint": suite.lint,
        }
        return whole[self.check]()

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        from dbinit.errors import DbinitError

        if isinstance(excinfo.value, (CheckFailed, DbinitError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"[dbinit] {self.name}"


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def dbinit_database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A database at the migrations' heads, made for this test from the template, dropped after it.

    ``.url`` (as DATABASE_URL says it), ``.async_url`` / ``.sync_url`` (SQLAlchemy, with the
    driver), ``.sql(statement)`` (the rows).
    """
    databases = _state(request.config).databases()
    database = databases.at_head()
    try:
        yield database
    finally:
        databases.drop(database)


@pytest.fixture
def dbinit_database_at(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Database]]:
    """A factory: ``dbinit_database_at("ab12")`` is a new database at that revision ("base": empty;
    "heads": from the template). Each is dropped after the test."""
    databases = _state(request.config).databases()
    made: list[Database] = []

    def at(revision: str) -> Database:
        if revision in ("head", "heads"):
            database = databases.at_head()
            made.append(database)
            return database
        database = databases.create()
        made.append(database)
        if revision != "base":
            databases.alembic.upgrade(database, revision)
        return database

    try:
        yield at
    finally:
        for database in made:
            databases.drop(database)


@pytest.fixture
def dbinit_migrator(request: pytest.FixtureRequest) -> Iterator[Migrator]:
    """A new, empty database and a migrator for it: ``.upgrade(rev)``, ``.downgrade(rev)``,
    ``.current()``, ``.sql(statement)``, ``.database``, ``.revisions``. Dropped after the test."""
    from dbinit.testing.runner import Migrator

    databases = _state(request.config).databases()
    database = databases.create()
    try:
        yield Migrator(databases.alembic, database)
    finally:
        databases.drop(database)
