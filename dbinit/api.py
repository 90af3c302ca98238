"""The original Python API: ``initialize_service_database`` and ``DatabaseInitManager``.

Services call it with ``verify_only=True`` (the default): it verifies and
fails fast with :class:`dbinit.errors.NotReady`; it never migrates. The
migration job calls it with ``verify_only=False``. The returned report's
``as_dict()`` is the original dictionary of the DatabaseInitManager API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbinit.errors import NotReady
from dbinit.logs import Redactor, make_logger, settings_output
from dbinit.settings import Settings, load_settings

if TYPE_CHECKING:
    from dbinit.report import MigrateResult, VerifyReport


def resolve_settings(
    settings_or_url: Settings | str | None = None,
    *,
    service_name: str | None = None,
    alembic_ini_path: str | Path | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from an object, a URL, or the environment (with overrides)."""
    if isinstance(settings_or_url, Settings):
        updates = {
            k: v
            for k, v in {
                "service_name": service_name,
                "alembic_ini": Path(alembic_ini_path) if alembic_ini_path else None,
                **overrides,
            }.items()
            if v is not None
        }
        return settings_or_url.replace(**updates) if updates else settings_or_url
    return load_settings(
        database_url=settings_or_url,
        service_name=service_name,
        alembic_ini=alembic_ini_path,
        **overrides,
    )


class DatabaseInitManager:
    """Verify (services) or migrate (the job) one service's database."""

    def __init__(
        self,
        settings_or_url: Settings | str | None = None,
        service_name: str | None = None,
        alembic_ini_path: str | Path | None = None,
        verify_only: bool = True,
        force_recreate: bool = False,
    ) -> None:
        self.settings = resolve_settings(
            settings_or_url, service_name=service_name, alembic_ini_path=alembic_ini_path
        )
        self.verify_only = verify_only
        self.force_recreate = force_recreate
        # dbinit's own chain, as DBINIT_LOG_FORMAT/DBINIT_LOG_LEVEL say: the caller's logging is untouched
        self.redactor = Redactor([self.settings.url.password])
        output = settings_output(self.settings.log_format, self.settings.log_level, self.redactor)
        self.log = make_logger(self.settings.service, output)
        self.settings.log_notes(self.log)

    async def initialize(self) -> VerifyReport | MigrateResult:
        """Verify (``verify_only``) or migrate; raise a :class:`DbinitError` on failure."""
        from dbinit.pluginmanager import Registry

        registry = Registry.for_settings(self.settings)
        if self.verify_only:
            if self.force_recreate or self.settings.force_recreate:
                self.log.warning("force_recreate ignored: verification never writes")
            return await self._verify_database_ready(registry)
        return await self._run_migrations_mode(registry)

    async def _verify_database_ready(self, registry: Any) -> VerifyReport:
        from dbinit.verify import verify

        report = await verify(self.settings, registry, self.log)
        if not report.ok:
            error = NotReady(report.message, hint=report.hint)
            error.report = report  # type: ignore[attr-defined]
            raise error
        return report

    async def _run_migrations_mode(self, registry: Any) -> MigrateResult:
        from dbinit.migrate import migrate

        settings = self.settings
        if self.force_recreate and not settings.force_recreate:
            settings = settings.replace(force_recreate=True)
        return await migrate(settings, registry, self.log)


async def initialize_service_database(
    settings_or_url: Settings | str | None = None,
    service_name: str | None = None,
    verify_only: bool = True,
    force_recreate: bool = False,
    *,
    alembic_ini_path: str | Path | None = None,
) -> VerifyReport | MigrateResult:
    """The original entry point: verify (default) or migrate one service's database."""
    manager = DatabaseInitManager(
        settings_or_url,
        service_name=service_name,
        alembic_ini_path=alembic_ini_path,
        verify_only=verify_only,
        force_recreate=force_recreate,
    )
    return await manager.initialize()
