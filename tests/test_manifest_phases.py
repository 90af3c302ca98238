"""Revision phases in the revision manifest (format 2): recorded by `dbinit manifest`, used by migrate.

Real projects in tmp_path, real `dbinit` processes. That a fresh manifest's phases are used
without reading the files is shown by a revision file rewritten after the manifest with the same
size and modification time (so the manifest is still fresh) but another declared phase: what
``migrate`` records in the history is the manifest's phase, not the file's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dbinit.revisions.manifest import MANIFEST_NAME
from dbinit.revisions.phases import RevisionPhase, compute_phases, revision_phases
from dbinit.revisions.scripts import read_migration_scripts
from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit
from tests.plugins.no_pglast import dbinit_without_pglast, python_without_pglast
from tests.test_hot_path import verify_in_a_process

HEAD = "8d3f6b2a9c11"  # the example's head
LEGACY_TABLE = (
    'op.create_table("legacy", sa.Column("id", sa.Integer, primary_key=True), sa.Column("old", sa.Text))'
)
RAW_SQL = "ALTER TABLE orders DROP COLUMN x"
#: What decides the raw SQL revision's reason: PostgreSQL's parser, or the tokenizer without it.
PARSER_REASON = f"op.execute({RAW_SQL!r}): DROP COLUMN x: the previous release still reads it"
TOKENIZER_REASON = f"op.execute({RAW_SQL!r}): ALTER ... DROP"



def mixed_project(project: Path) -> dict[str, Path]:
    """Declared, inferred and raw-SQL revisions after the example's three (they run, on both databases)."""
    since = 'dbinit_phase = "contract"\ndbinit_compatible_since = "a0000000000b"'
    return {
        # 2 spaces after "expand": room for "contract" in the same size
        "declared_expand": add_revision(project, "a0000000000a", HEAD, LEGACY_TABLE,
                                    module='dbinit_phase = "expand"  '),
        "inferred_contract": add_revision(project, "a0000000000b", "a0000000000a",
                                      'op.drop_column("legacy", "old")'),
        "declared_since": add_revision(project, "a0000000000c", "a0000000000b", 'op.drop_table("legacy")',
                                   module=since),
        "inferred_expand": add_revision(project, "a0000000000d", "a0000000000c",
                                    'op.add_column("orders", sa.Column("x", sa.Text(), nullable=True))'),
        "raw_sql_update": add_revision(project, "a0000000000e", "a0000000000d",
                                   'op.execute("UPDATE orders SET x = \'new\' WHERE x IS NULL")'),
        "raw_sql_drop": add_revision(project, "a0000000000f", "a0000000000e", f"op.execute({RAW_SQL!r})"),
    }


def write_manifest(project: Path) -> dict[str, object]:
    result = run_dbinit("manifest", cwd=project)
    assert result.returncode == 0, result.output
    document: dict[str, object] = json.loads(manifest_file(project).read_text())
    return document


def manifest_file(project: Path) -> Path:
    return project / "migrations" / "versions" / MANIFEST_NAME


def rewrite_keeping_the_fingerprint(path: Path, old: str, new: str) -> None:
    """Edit ``path`` in place with the same size and modification time: the manifest stays fresh."""
    text = path.read_text()
    assert old in text and len(old) == len(new)
    info = path.stat()
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def from_files(project: Path) -> dict[str, RevisionPhase]:
    return compute_phases(read_migration_scripts(project / "alembic.ini", use_manifest=False).graph)


def test_phases_from_the_manifest_equal_phases_from_the_files(project: Path) -> None:
    paths = mixed_project(project)
    document = write_manifest(project)
    assert document["format"] == 2
    scripts = read_migration_scripts(project / "alembic.ini")
    assert (scripts.source, scripts.manifest_note) == ("manifest", "")
    assert scripts.manifest_phases is not None and scripts._phases is None  # not built on load
    recorded = revision_phases(scripts)
    expected = from_files(project)
    assert recorded == expected
    assert list(recorded) == list(expected)  # the same (upgrade) order
    assert recorded["a0000000000a"] == RevisionPhase("a0000000000a", "expand", "declared", "374752db316e",
                                                     "declared", None)
    assert recorded["a0000000000c"].compatible_since == "a0000000000b"
    assert recorded["a0000000000f"].reason == PARSER_REASON  # pglast is installed in the test venv
    lines = paths["raw_sql_drop"].read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if RAW_SQL in text)
    assert (recorded["a0000000000f"].phase, recorded["a0000000000f"].line) == ("contract", line)
    assert revision_phases(scripts) is recorded  # built once


def test_migrate_records_the_manifests_phases_without_reading_the_files(
    project: Path, database: TestDatabase
) -> None:
    paths = mixed_project(project)
    write_manifest(project)
    # The file now declares a contract; the manifest (still fresh: same size and mtime) an expand.
    rewrite_keeping_the_fingerprint(paths["declared_expand"], 'dbinit_phase = "expand"  ',
                                    'dbinit_phase = "contract"')
    assert run_dbinit("manifest", "--check", cwd=project).returncode == 0
    assert from_files(project)["a0000000000a"].phase == "contract"

    result = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url)
    assert result.returncode == 0, result.output
    rows = dict(
        (r[0], r[1:])
        for r in database.sql("SELECT revision, phase, phase_source, compatible_since FROM dbinit_history")
    )
    assert rows["a0000000000a"] == ("expand", "declared", "374752db316e")
    assert rows["a0000000000c"] == ("contract", "declared", "a0000000000b")
    assert rows["a0000000000f"][:2] == ("contract", "inferred")


def test_an_invalid_declaration_after_the_manifest_is_not_read_by_migrate(
    project: Path, sqlite_database: TestDatabase
) -> None:
    """Without the manifest's phases, migrate would read this file and exit 2 (tests/test_phases.py)."""
    paths = mixed_project(project)
    write_manifest(project)
    rewrite_keeping_the_fingerprint(paths["declared_expand"], '"expand"  ', '"sideways"')
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 0, result.output
    manifest_file(project).unlink()
    refused = run_dbinit("showmigrations", cwd=project, DATABASE_URL=sqlite_database.url)
    assert refused.returncode == 2 and "dbinit_phase = 'sideways'" in refused.output


def test_a_format_1_manifest_still_gives_the_graph(project: Path, database: TestDatabase) -> None:
    mixed_project(project)
    document = write_manifest(project)
    del document["phases"]
    document["format"] = 1  # as the previous release wrote it
    manifest_file(project).write_text(json.dumps(document, indent=0, sort_keys=True))
    scripts = read_migration_scripts(project / "alembic.ini")
    assert (scripts.source, scripts.manifest_note, scripts.manifest_phases) == ("manifest", "", None)
    assert revision_phases(scripts) == from_files(project)  # computed from the files, as before
    assert run_dbinit("manifest", "--check", cwd=project).returncode == 0
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 0
    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert verified.returncode == 0, verified.output
    assert json.loads(verified.stdout)["migrations_source"] == "manifest"
    assert "Revision manifest not used" not in verified.stderr


def _part(document: dict[str, object]) -> dict[str, object]:
    phases = document["phases"]
    assert isinstance(phases, dict)
    return phases


def _column(document: dict[str, object], name: str) -> list[object]:
    column = _part(document)[name]
    assert isinstance(column, list)
    return column


def _letters(document: dict[str, object], name: str, first: str) -> None:
    _part(document)[name] = first + str(_part(document)[name])[1:]


MALFORMED: dict[str, Callable[[dict[str, object]], object]] = {
    "no_phases": lambda d: d.pop("phases"),
    "phases_not_an_object": lambda d: d.update(phases=[]),
    "no_pglast_flag": lambda d: _part(d).pop("pglast"),
    "pglast_not_a_bool": lambda d: _part(d).update(pglast="yes"),
    "no_reason_column": lambda d: _part(d).pop("reason"),
    "unknown_phase": lambda d: _letters(d, "phase", "x"),
    "unknown_source": lambda d: _letters(d, "source", "g"),
    "phase_a_list": lambda d: _part(d).update(phase=list(str(_part(d)["phase"]))),
    "since_not_a_revision": lambda d: _column(d, "compatible_since").__setitem__(0, "ffffffffffff"),
    "line_a_string": lambda d: _column(d, "line").__setitem__(-1, "22"),
    "line_a_bool": lambda d: _column(d, "line").__setitem__(-1, True),
    "reason_not_a_string": lambda d: _column(d, "reason").__setitem__(0, 1),
    "a_column_short": lambda d: _column(d, "reason").pop(),
    "unhashable_revision": lambda d: _column(d, "revision").__setitem__(0, ["a0000000000a"]),
    "unknown_revision": lambda d: _column(d, "revision").__setitem__(0, "ffffffffffff"),
    "a_revision_twice": lambda d: _column(d, "revision").__setitem__(0, _column(d, "revision")[1]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_phases_part_makes_the_manifest_stale(
    project: Path, sqlite_database: TestDatabase, case: str
) -> None:
    mixed_project(project)
    document = write_manifest(project)
    MALFORMED[case](document)
    manifest_file(project).write_text(json.dumps(document))
    scripts = read_migration_scripts(project / "alembic.ini")
    assert scripts.source == "static" and scripts.manifest_phases is None
    assert scripts.manifest_note.startswith(f"{MANIFEST_NAME} is malformed ("), scripts.manifest_note
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    assert verified.returncode == 0, verified.output
    assert json.loads(verified.stdout)["migrations_source"] == "static"
    assert "Revision manifest not used" in verified.stderr and "is malformed" in verified.stderr
    check = run_dbinit("manifest", "--check", cwd=project)
    assert check.returncode == 2 and "is malformed" in check.stderr


INVALID = {
    "phase": ('dbinit_phase = "later"', "dbinit_phase = 'later' must be \"expand\" or \"contract\""),
    "compatible_since": ('dbinit_compatible_since = "b0000000000b"',
                         "dbinit_compatible_since = 'b0000000000b' is not revision 'b0000000000a' "
                         "nor one of its ancestors"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_declaration_fails_dbinit_manifest(project: Path, case: str) -> None:
    module, message = INVALID[case]
    path = add_revision(project, "b0000000000a", HEAD, module=module)
    add_revision(project, "b0000000000b", "b0000000000a")
    line = len(path.read_text().splitlines())
    result = run_dbinit("manifest", cwd=project)
    assert result.returncode == 2, result.output
    assert f"{path}:{line}: {message}" in result.output
    assert "Traceback" not in result.output
    assert not manifest_file(project).exists()  # nothing written


PHASES_IN_A_PROCESS = (
    "import json\n"
    "from pathlib import Path\n"
    "from dbinit.revisions.phases import revision_phases\n"
    "from dbinit.revisions.scripts import read_migration_scripts\n"
    "scripts = read_migration_scripts(Path('alembic.ini'))\n"
    "print(json.dumps([scripts.source, revision_phases(scripts)['a0000000000a'].phase,\n"
    "                  revision_phases(scripts)['a0000000000f'].reason]))\n"
)


def test_a_manifest_written_with_pglast_is_not_used_for_phases_without_it(project: Path) -> None:
    paths = mixed_project(project)
    write_manifest(project)
    assert json.loads(manifest_file(project).read_text())["phases"]["pglast"] is True
    rewrite_keeping_the_fingerprint(paths["declared_expand"], 'dbinit_phase = "expand"  ',
                                    'dbinit_phase = "contract"')
    proc = python_without_pglast(PHASES_IN_A_PROCESS, cwd=project, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    # the graph from the manifest, the phases from the files (classified by the tokenizer)
    assert json.loads(proc.stdout) == ["manifest", "contract", TOKENIZER_REASON]


def test_a_manifest_written_without_pglast_is_not_used_for_phases_with_it(project: Path) -> None:
    paths = mixed_project(project)
    written = dbinit_without_pglast("manifest", cwd=project)
    assert written.returncode == 0, written.stderr
    document = json.loads(manifest_file(project).read_text())
    assert document["phases"]["pglast"] is False
    assert _column(document, "reason")[-1] == TOKENIZER_REASON
    rewrite_keeping_the_fingerprint(paths["declared_expand"], 'dbinit_phase = "expand"  ',
                                    'dbinit_phase = "contract"')
    scripts = read_migration_scripts(project / "alembic.ini")
    assert scripts.source == "manifest"
    phases = revision_phases(scripts)
    assert (phases["a0000000000a"].phase, phases["a0000000000f"].reason) == ("contract", PARSER_REASON)


def test_a_manifest_from_another_dbinit_version_is_not_used_for_phases(project: Path) -> None:
    paths = mixed_project(project)
    document = write_manifest(project)
    _part(document)["dbinit"] = "0.0.0"  # its classification rules may differ from this version's
    manifest_file(project).write_text(json.dumps(document))
    rewrite_keeping_the_fingerprint(paths["declared_expand"], 'dbinit_phase = "expand"  ',
                                    'dbinit_phase = "contract"')
    scripts = read_migration_scripts(project / "alembic.ini")
    assert (scripts.source, scripts.manifest_note) == ("manifest", "")
    assert revision_phases(scripts)["a0000000000a"].phase == "contract"


def test_verify_with_a_phased_manifest_builds_no_phases(project: Path, sqlite_database: TestDatabase) -> None:
    mixed_project(project)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    write_manifest(project)
    modules = verify_in_a_process(project, clean_env(DATABASE_URL=sqlite_database.url))
    assert "dbinit.revisions.manifest" in modules  # the manifest was read...
    # ...but its phases were not built: neither the phases module nor PostgreSQL's parser was imported
    assert [m for m in modules if m == "dbinit.revisions.phases" or m.split(".")[0] == "pglast"] == []
