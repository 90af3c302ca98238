"""``dbinit manifest``: write the revision manifest (at image build time)."""

from __future__ import annotations

import argparse
from typing import Any

from dbinit.errors import ConfigurationError
from dbinit.management.base import BaseCommand
from dbinit.revisions.layout import find_layout
from dbinit.revisions.manifest import StaleManifest, load_manifest, manifest_path, write_manifest
from dbinit.revisions.scripts import read_migration_scripts


class Command(BaseCommand):
    help = (
        "Write .dbinit-revisions.json into the versions folder: the revision graph and every "
        "revision's phase read once, so that `verify` and `migrate` do not read every migration file "
        "at each start (run it in the Dockerfile after copying the migrations). A wrong dbinit_phase "
        "or dbinit_compatible_since exits 2. --check exits 2 if it is missing or stale."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--check", action="store_true", help="only check that it is fresh")

    def handle(self, **options: Any) -> int:
        settings = self.settings
        layout = find_layout(settings.alembic_ini, settings.migrations_dir)
        if options["check"]:
            try:
                graph = load_manifest(layout)
            except StaleManifest as exc:
                raise ConfigurationError(str(exc), hint="Run `dbinit manifest` again") from None
            if graph is None:
                raise ConfigurationError(
                    f"no manifest at {manifest_path(layout)}", hint="Run `dbinit manifest`"
                )
            self.stdout.write(f"{manifest_path(layout)} is fresh ({len(graph)} revisions)")
            return 0
        scripts = read_migration_scripts(settings.alembic_ini, settings.migrations_dir, use_manifest=False)
        path = write_manifest(layout, scripts.graph)
        self.stdout.write(f"Wrote {path} ({scripts.count} revisions, source: {scripts.source})")
        return 0
