"""The revision manifest: same graph as reading the files, ignored when stale."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dbinit.revisions.manifest import MANIFEST_NAME
from dbinit.revisions.scripts import read_migration_scripts
from tests.plugins.databases import TestDatabase, add_revision, run_dbinit


def _graph(scripts):  # type: ignore[no-untyped-def]
    return {
        rev.revision: (rev.down_revisions, rev.branch_labels, rev.depends_on, rev.path)
        for rev in scripts.graph.revisions.values()
    }, scripts.graph.heads, scripts.graph.bases


def test_manifest_graph_equals_the_files(project: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    add_revision(project, "b1a1", "8d3f6b2a9c11", branch_labels="('side',)")
    add_revision(project, "b2a2", "8d3f6b2a9c11", depends_on="'side'")
    add_revision(project, "m3a3", ("b1a1", "b2a2"))  # type: ignore[arg-type]
    result = run_dbinit("manifest", cwd=project)
    assert result.returncode == 0, result.output
    assert (project / "migrations" / "versions" / MANIFEST_NAME).is_file()
    monkeypatch.chdir(project)
    from_manifest = read_migration_scripts(Path("alembic.ini"))
    from_files = read_migration_scripts(Path("alembic.ini"), use_manifest=False)
    assert from_manifest.source == "manifest" and from_files.source == "static"
    assert _graph(from_manifest) == _graph(from_files)
    assert run_dbinit("manifest", "--check", cwd=project).returncode == 0


def test_verify_uses_a_fresh_manifest_and_ignores_a_stale_one(project: Path, database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    assert run_dbinit("manifest", cwd=project).returncode == 0
    fresh = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert fresh.returncode == 0, fresh.output
    assert json.loads(fresh.stdout)["migrations_source"] == "manifest"

    # a new migration file after the manifest was written: the manifest is stale,
    # the files are read, and the database is (correctly) behind
    add_revision(project, "f00dcafe0001", "8d3f6b2a9c11")
    stale = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert stale.returncode == 4, stale.output
    report = json.loads(stale.stdout)
    assert report["migrations_source"] == "static"
    assert "dbinit.E005" in report["message"]
    assert "Revision manifest not used" in stale.stderr
    check = run_dbinit("manifest", "--check", cwd=project)
    assert check.returncode == 2
    assert "changed since" in check.stderr


def test_an_edit_in_place_makes_the_manifest_stale(project: Path) -> None:
    assert run_dbinit("manifest", cwd=project).returncode == 0
    revision = next((project / "migrations" / "versions").glob("8d3f6b2a9c11_*.py"))
    text = revision.read_text()
    stat = revision.stat()
    revision.write_text(text.replace("8d3f6b2a9c11", "8d3f6b2a9c12"))  # same size
    os.utime(revision, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    result = run_dbinit("manifest", "--check", cwd=project)
    assert result.returncode == 2, result.output
