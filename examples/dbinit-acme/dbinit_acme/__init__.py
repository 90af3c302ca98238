"""dbinit-acme: an example third-party dbinit plugin (see README.md).

Registered through the entry point ``acme`` of group ``dbinit``: dbinit
imports this module and registers its ``@hookimpl`` functions.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from dbinit import hookimpl
from dbinit.checks import Check, CheckMessage, Facts, Info, Warning, check
from dbinit.settings import PluginSettings, plugin_config

if TYPE_CHECKING:
    from dbinit.management.base import BaseCommand
    from dbinit.report import VerifyReport

#: The environment variable naming the audit log (unset: no audit line).
AUDIT_LOG = "DBINIT_ACME_AUDIT_LOG"


class AcmeSettings(PluginSettings):
    """This plugin's options: ``DBINIT_ACME_*`` (environment, ``.env``) or ``[tool.dbinit.acme]``."""

    model_config = plugin_config("acme")

    #: The file each verification appends a JSON line to (None: no audit line).
    audit_log: str | None = None


@check("acme.W001", "one_version_row_per_head", tags=("acme", "database"), requires=("dbinit.E003",))
def one_version_row_per_head(facts: Facts) -> Iterator[CheckMessage]:
    """The version table holds one row per head: no duplicate, no extra row."""
    assert facts.state is not None, "acme.W001 reads the database"
    rows = len(facts.state.versions) + len(facts.state.invalid_versions)
    distinct = len(set(facts.state.versions)) + len(facts.state.invalid_versions)
    heads = max(1, len(facts.scripts.heads))
    table = facts.settings.version_table
    if distinct < rows:
        yield Warning(
            f"Table {table!r} has {rows} rows, {rows - distinct} of them duplicated",
            hint="Alembic writes one row per head: something else wrote to the table. Keep one row "
            "per revision (`alembic stamp --purge <revision>` rewrites it).",
            id="acme.W001",
        )
    elif rows > heads:
        yield Warning(
            f"Table {table!r} has {rows} rows for {heads} head(s) in this image",
            hint="Each row is a head Alembic upgrades from: check which ones are real.",
            id="acme.W001",
        )
    else:
        yield Info(f"Table {table!r} has one row per head ({rows})", id="acme.W001")


@hookimpl
def dbinit_checks() -> Sequence[Check]:
    return [one_version_row_per_head]


@hookimpl
def dbinit_commands() -> Mapping[str, str | type[BaseCommand]]:
    # a module path: imported only when `dbinit acme-report` runs
    return {"acme-report": "dbinit_acme.report"}


@hookimpl
def dbinit_verify_finished(report: VerifyReport) -> None:
    path = AcmeSettings.load().audit_log
    if not path:
        return
    line = {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "service": report.service,
        "database": report.database,
        "ok": report.ok,
        "current_revision": report.current_revision,
        "failed": [outcome.check.id for outcome in report.failed],
    }
    with open(path, "a", encoding="utf-8") as audit:
        audit.write(json.dumps(line) + "\n")
