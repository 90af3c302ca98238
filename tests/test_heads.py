"""Several heads on purpose (OpenStack's expand/contract branches): DBINIT_HEADS by id, label or label@head.

Alembic's own resolution (``ScriptDirectory.get_revisions``) is the oracle for
what each name means; verify and check run as users run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dbinit.revisions.scripts import read_migration_scripts
from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit

HEAD = "8d3f6b2a9c11"
EXPAND = ("e1a000000001", "e1a000000002")
CONTRACT = ("c0a000000001", "c0a000000002")


def openstack_shape(project: Path) -> None:
    """Two labelled branches from the same base; a contract step depends on an expand step."""
    add_revision(project, EXPAND[0], HEAD, branch_labels="('expand',)")
    add_revision(project, EXPAND[1], EXPAND[0])
    add_revision(project, CONTRACT[0], HEAD, branch_labels="('contract',)")
    add_revision(project, CONTRACT[1], CONTRACT[0], depends_on=repr(EXPAND[1]))


def alembic_resolves(project: Path, name: str) -> list[str]:
    code = (
        "import sys\nfrom alembic.config import Config\nfrom alembic.script import ScriptDirectory\n"
        "script = ScriptDirectory.from_config(Config('alembic.ini'))\n"
        "print(' '.join(r.revision for r in script.get_revisions(sys.argv[1])))"
    )
    proc = subprocess.run([sys.executable, "-c", code, name], cwd=project, capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def e006(project: Path, **env: str) -> dict[str, object]:
    result = run_dbinit("check", "--tag", "migrations", "--format", "json", cwd=project, **env)
    document = json.loads(result.stdout)
    return next(c for c in document["checks"] if c["id"] == "dbinit.E006")


def test_label_at_head_resolves_as_alembic_resolves_it(project: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    openstack_shape(project)
    monkeypatch.chdir(project)
    graph = read_migration_scripts(Path("alembic.ini")).graph
    for name in ("expand@head", "contract@head", "expand", "contract", EXPAND[0], f"{EXPAND[0]}@head"):
        assert [graph.resolve_head(name)] == alembic_resolves(project, name), name


def test_heads_on_labelled_branches_get_a_hint_that_says_so(project: Path) -> None:
    openstack_shape(project)
    check = e006(project)
    assert check["ok"] is False
    assert "These heads end labelled branches (expand, contract)" in str(check["hint"]) or \
        "These heads end labelled branches (contract, expand)" in str(check["hint"])
    assert "DBINIT_HEADS=" in str(check["hint"]) and "merge" not in str(check["hint"])
    assert e006(project, DBINIT_HEADS="expand@head,contract@head")["ok"] is True
    assert e006(project, DBINIT_HEADS=f"{EXPAND[1]},{CONTRACT[1]}")["ok"] is True


def test_unlabelled_parallel_heads_are_told_to_merge(project: Path) -> None:
    add_revision(project, "a11000000001", HEAD)
    add_revision(project, "b22000000001", HEAD)
    check = e006(project)
    assert check["ok"] is False and "alembic merge heads" in str(check["hint"])


def test_an_ambiguous_label_at_head_is_named(project: Path) -> None:
    add_revision(project, "f00000000001", HEAD, branch_labels="('feature',)")
    add_revision(project, "f00000000002", "f00000000001")
    add_revision(project, "f00000000003", "f00000000001")
    check = e006(project, DBINIT_HEADS="feature@head")
    assert check["ok"] is False
    assert "DBINIT_HEADS: feature@head names 2 heads" in str(check["message"])


def test_verify_with_intended_heads_after_migrate(project: Path, database: TestDatabase) -> None:
    openstack_shape(project)
    env = {"DATABASE_URL": database.url, "DBINIT_HEADS": "expand@head,contract@head"}
    assert run_dbinit("migrate", cwd=project, **env).returncode == 0
    result = run_dbinit("verify", "--format", "json", cwd=project, **env)
    assert result.returncode == 0, result.output
    assert sorted(json.loads(result.stdout)["head_revisions"]) == sorted([EXPAND[1], CONTRACT[1]])
    # Alembic records a head another head depends on only through that one
    assert database.versions() == {CONTRACT[1]}
