"""The built-in checks, each in the exact situation it names, on real databases.

Every test goes through the command line (`dbinit verify --format json`,
`dbinit check`) and asserts what a user sees: the exit code, the check's id in
the report's ``message``, its hint in ``hint`` and in its entry in ``checks``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.databases import Result, TestDatabase, add_revision, run_dbinit

BASE, MIDDLE, HEAD = "374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"
IDS = [f"dbinit.E00{n}" for n in range(1, 7)]
UNREACHABLE = "postgresql://u@127.0.0.1:1/x"


def verify(project: Path, database: TestDatabase, **env: str) -> tuple[Result, dict[str, Any]]:
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url, **env)
    assert result.stdout.strip(), result.output
    return result, json.loads(result.stdout)


def migrate(project: Path, database: TestDatabase, **env: str) -> dict[str, Any]:
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url, **env)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


def entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


def assert_fails_with(result: Result, report: dict[str, Any], check_id: str, hint: str) -> dict[str, Any]:
    """Exit 4, the check named in ``message``, its hint in ``hint`` and in its entry."""
    assert result.returncode == 4, result.output
    assert report["ok"] is False
    assert report["action"] == "failed"
    assert report["message"].endswith(f"[{check_id}]"), report["message"]
    entry = entries(report)[check_id]
    assert entry["status"] == "failed"
    assert entry["ok"] is False
    assert entry["level"] == "ERROR"
    assert entry["message"] in report["message"]
    assert hint in entry["hint"]
    assert report["hint"] == entry["hint"]
    # the failure is logged too, with the check's id and hint
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "Database verification failed"]
    assert any(e["check"] == check_id and e["hint"] == entry["hint"] for e in failed), failed
    return entry


# -- all pass -----------------------------------------------------------------------


def test_every_check_passes_on_a_migrated_database(project: Path, database: TestDatabase) -> None:
    migrate(project, database)
    result, report = verify(project, database)
    assert result.returncode == 0, result.output
    assert report["ok"] is True
    assert report["hint"] == ""
    assert [c["id"] for c in report["checks"]] == IDS
    for entry in report["checks"]:
        assert (entry["status"], entry["ok"], entry["level"], entry["hint"]) == (
            "passed", True, "INFO", ""), entry
    assert entries(report)["dbinit.E005"]["message"] == f"Database at head {HEAD}"

    checked = run_dbinit("check", cwd=project, DATABASE_URL=database.url)
    assert checked.returncode == 0, checked.output
    assert checked.stdout.strip() == "System check identified no issues (0 silenced)."


# -- E001 migrations_present ------------------------------------------------------------


def test_e001_empty_versions_folder(project: Path, database: TestDatabase) -> None:
    migrate(project, database)
    for path in (project / "migrations" / "versions").glob("*.py"):
        path.unlink()
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E001", "versions folder")
    assert "No migration files found" in entry["message"]
    assert str(project / "migrations" / "versions") in entry["message"]
    assert report["migration_count"] == 0
    assert report["head_revisions"] == []
    # the checks that need migrations are skipped, not piled on
    assert statuses(report) == {
        "dbinit.E001": "failed", "dbinit.E002": "passed", "dbinit.E003": "passed",
        "dbinit.E004": "skipped", "dbinit.E005": "skipped", "dbinit.E006": "skipped",
    }


# -- E002 database_not_empty --------------------------------------------------------------


def test_e002_empty_database(project: Path, database: TestDatabase) -> None:
    database.sql("SELECT 1")  # the database exists (for SQLite: the file), with no table
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E002", "migration job")
    assert "Database is empty" in entry["message"]
    assert report["table_count"] == 0
    assert report["current_revision"] is None
    assert statuses(report) == {
        "dbinit.E001": "passed", "dbinit.E002": "failed", "dbinit.E003": "skipped",
        "dbinit.E004": "skipped", "dbinit.E005": "skipped", "dbinit.E006": "passed",
    }
    assert database.tables() == set()  # verify never writes

    checked = run_dbinit("check", cwd=project, DATABASE_URL=database.url)
    assert checked.returncode == 4, checked.output
    assert "dbinit.E002: (ERROR) Database is empty" in checked.stdout
    assert "\tHINT: The migration job has not run" in checked.stdout
    assert "System check identified 1 issue (0 silenced)." in checked.stdout
    # the hint names this service's Job (the example's service_name), not a placeholder
    assert "(kubectl logs job/orders-migration-<release>)" in checked.stdout
    assert "<service>" not in checked.output
    named = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=database.url,
                       SERVICE_NAME="bakery-orders")
    assert named.returncode == 4, named.output
    assert "kubectl logs job/bakery-orders-migration-<release>" in json.loads(named.stdout)["hint"]


# -- E003 alembic_table_present --------------------------------------------------------------


def test_e003_tables_but_no_alembic_version(project: Path, database: TestDatabase) -> None:
    database.sql("CREATE TABLE legacy_orders (id integer PRIMARY KEY, total integer)")
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E003", "alembic stamp head")
    assert "'alembic_version' is missing" in entry["message"]
    assert "1 other tables" in entry["message"]
    assert report["table_count"] == 1
    assert statuses(report)["dbinit.E002"] == "passed"
    assert statuses(report)["dbinit.E004"] == "skipped"
    assert database.tables() == {"legacy_orders"}


# -- E004 current_revision_known -------------------------------------------------------------


def test_e004_no_revision_recorded_and_garbage_revision(project: Path, database: TestDatabase) -> None:
    migrate(project, database)
    database.sql("DELETE FROM alembic_version")
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E004", "migration job")
    assert "'alembic_version' is empty" in entry["message"]
    assert "kubectl logs job/orders-migration-<release>" in entry["hint"]
    assert report["current_revision"] is None
    assert statuses(report)["dbinit.E005"] == "skipped"

    database.sql("INSERT INTO alembic_version (version_num) VALUES ('garbage')")
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E004", "alembic stamp")
    assert "Current revision 'garbage' is not in this image's migrations" in entry["message"]
    assert f"heads: {HEAD}" in entry["message"]
    # not shaped like this project's ids (12 hex digits): no release wrote it
    assert "not taken for a newer release" in entry["message"]
    assert "DBINIT_ALLOW_AHEAD does not apply" in entry["hint"]
    assert report["current_revision"] == "garbage"
    assert statuses(report)["dbinit.E005"] == "skipped"
    # ... so DBINIT_ALLOW_AHEAD does not accept it
    result, report = verify(project, database, DBINIT_ALLOW_AHEAD="true")
    assert_fails_with(result, report, "dbinit.E004", "alembic stamp")


def test_e004_database_ahead_of_the_image_and_allow_ahead(project: Path, database: TestDatabase) -> None:
    # the newer release's job migrated; this (older) image lacks the newest revision
    newer = add_revision(project, "a4eadf000001", HEAD)
    migrate(project, database)
    newer.unlink()

    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E004", "newer or different image")
    assert "a4eadf000001" in entry["message"]

    result, report = verify(project, database, DBINIT_ALLOW_AHEAD="true")
    assert result.returncode == 0, result.output
    assert report["ok"] is True
    assert report["current_revision"] == "a4eadf000001"
    entry = entries(report)["dbinit.E004"]
    assert (entry["status"], entry["ok"], entry["level"]) == ("passed", True, "WARNING")
    assert "a4eadf000001" in entry["message"]
    assert "accepted as a database ahead of the image (DBINIT_ALLOW_AHEAD=true)" in entry["message"]
    assert "newer release rolls out" in entry["hint"]
    assert entries(report)["dbinit.E005"]["message"] == "Database ahead of the image: head check skipped"

    # `check` shows the warning with its own id; --fail-level WARNING makes it fail
    checked = run_dbinit("check", cwd=project, DATABASE_URL=database.url, DBINIT_ALLOW_AHEAD="true")
    assert checked.returncode == 0, checked.output
    assert "dbinit.W004: (WARNING) Current revision a4eadf000001" in checked.stdout
    assert "System check identified 1 issue (0 silenced)." in checked.stdout

    strict = run_dbinit("check", "--fail-level", "WARNING", "--format", "json", cwd=project,
                        DATABASE_URL=database.url, DBINIT_ALLOW_AHEAD="true")
    assert strict.returncode == 4, strict.output
    document = json.loads(strict.stdout)
    assert document["fail_level"] == "WARNING"
    assert document["ok"] is False
    assert entries(document)["dbinit.E004"]["status"] == "failed"
    assert entries(document)["dbinit.E004"]["level"] == "WARNING"
    assert "[dbinit.E004]" in document["message"]


# -- E005 current_revision_is_head --------------------------------------------------------------


def test_e005_new_revision_after_migrating_and_silenced(project: Path, database: TestDatabase) -> None:
    migrate(project, database)
    add_revision(project, "b3e1d0000001", HEAD)
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E005", "dbinit migrate")
    assert "Database is behind: 1 migration(s) pending (b3e1d0000001)" in entry["message"]
    assert f"at {HEAD}, head is b3e1d0000001" in entry["message"]
    assert report["head_revisions"] == ["b3e1d0000001"]
    assert report["current_revision"] == HEAD

    result, report = verify(project, database, DBINIT_SILENCED_CHECKS="dbinit.E005")
    assert result.returncode == 0, result.output
    assert report["ok"] is True
    assert report["action"] == "verified"
    entry = entries(report)["dbinit.E005"]
    assert (entry["status"], entry["ok"]) == ("silenced", True)
    assert "Database is behind" in entry["message"]
    assert database.versions() == {HEAD}  # verify did not migrate


# -- E006 single_head ------------------------------------------------------------------------


def test_e006_two_heads_and_dbinit_heads(project: Path, database: TestDatabase) -> None:
    migrate(project, database)
    left, right = "c0ffee000001", "c0ffee000002"
    add_revision(project, left, HEAD)
    add_revision(project, right, HEAD)
    both = f"{left},{right}"

    # the heads are declared intended, so E006 passes; the database is still at the
    # old head, so E005 (behind) is what fails
    result, report = verify(project, database, DBINIT_HEADS=both)
    assert result.returncode == 4, result.output
    assert statuses(report)["dbinit.E006"] == "passed"
    assert "[dbinit.E005]" in report["message"]
    assert "2 migration(s) pending" in report["message"]

    applied = migrate(project, database, DBINIT_HEADS=both)
    assert sorted(applied["applied"]) == [left, right]
    assert database.versions() == {left, right}

    # at both heads, declared: every check passes
    result, report = verify(project, database, DBINIT_HEADS=both)
    assert result.returncode == 0, result.output
    assert set(report["current_revision"].split(",")) == {left, right}
    assert statuses(report) == dict.fromkeys(IDS, "passed")

    # not declared: two heads is an error, even with the database at both
    result, report = verify(project, database)
    entry = assert_fails_with(result, report, "dbinit.E006", "alembic merge heads")
    assert "Migrations have 2 heads" in entry["message"]
    assert left in entry["message"] and right in entry["message"]
    assert statuses(report)["dbinit.E005"] == "passed"

    # declared wrongly: E006 names DBINIT_HEADS
    result, report = verify(project, database, DBINIT_HEADS=left)
    entry = assert_fails_with(result, report, "dbinit.E006", "update DBINIT_HEADS")
    assert f"expected {left} (DBINIT_HEADS)" in entry["message"]


# -- dbinit check -------------------------------------------------------------------------


def test_check_list_needs_no_database(project: Path) -> None:
    listed = run_dbinit("check", "--list", cwd=project, DATABASE_URL=UNREACHABLE)
    assert listed.returncode == 0, listed.output
    lines = listed.stdout.splitlines()
    # dbinit.W010 and the lint check only in `dbinit check`: verify never reads every file
    assert [line.split()[0] for line in lines] == [*IDS, "dbinit.W010", "dbinit.L000"]
    for line, name in zip(lines, ["migrations_present", "database_not_empty", "alembic_table_present",
                                  "current_revision_known", "current_revision_is_head",
                                  "single_head", "contract_revisions", "lint"], strict=True):
        assert f"  {name}  " in line

    as_json = run_dbinit("check", "--list", "--tag", "database", "--format", "json", cwd=project,
                         DATABASE_URL=UNREACHABLE)
    assert as_json.returncode == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["id"] for r in rows] == ["dbinit.E002", "dbinit.E003", "dbinit.E004", "dbinit.E005"]
    assert all(r["requires_database"] and r["plugin"] == "dbinit.plugins.checks" for r in rows)


def test_check_tag_migrations_runs_without_the_database(project: Path) -> None:
    result = run_dbinit("check", "--tag", "migrations", "--format", "json", cwd=project,
                        DATABASE_URL=UNREACHABLE)
    assert result.returncode == 0, result.output
    document = json.loads(result.stdout)
    assert [c["id"] for c in document["checks"]] == ["dbinit.E001", "dbinit.E006", "dbinit.W010"]
    assert document["table_count"] is None
    # no database was read: nothing claims it was verified
    assert (document["action"], document["database_read"]) == ("checked", False)
    assert "not verified" in document["message"]
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["event"] for e in events] == [
        "Running checks that do not read the database", "Checks passed", "Checks completed"
    ]
    assert all(e["tags"] == ["migrations"] for e in events)
    assert events[1]["checks"] == ["dbinit.E001", "dbinit.E006", "dbinit.W010"]
    assert "Database verification" not in result.stderr

    text = run_dbinit("check", "--tag", "migrations", cwd=project, DATABASE_URL=UNREACHABLE,
                      DBINIT_LOG_FORMAT="console")
    assert text.returncode == 0, text.output
    assert "System check identified no issues (0 silenced)." in text.stdout
    assert "Checks passed" in text.stderr
    assert "Database verification" not in text.output


def test_check_without_the_database_reports_a_failure_as_a_check(project: Path) -> None:
    add_revision(project, "d1ff00000001", HEAD)
    add_revision(project, "d1ff00000002", HEAD)
    result = run_dbinit("check", "--tag", "migrations", cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 4, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    (failed,) = [e for e in events if e["level"] == "error"]
    assert (failed["event"], failed["check"]) == ("Check failed", "dbinit.E006")
    assert "Database verification" not in result.stderr


def test_check_reading_the_database_still_says_it_verified(
    project: Path, sqlite_database: TestDatabase
) -> None:
    migrate(project, sqlite_database)
    result = run_dbinit("check", "--tag", "database", "--format", "json", cwd=project,
                        DATABASE_URL=sqlite_database.url)
    assert result.returncode == 0, result.output
    document = json.loads(result.stdout)
    assert (document["action"], document["database_read"]) == ("verified", True)
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert "Database verification successful" in events
    assert "Checks passed" not in events


def test_check_tag_selects_checks_on_a_real_database(project: Path, sqlite_database: TestDatabase) -> None:
    migrate(project, sqlite_database)
    add_revision(project, "d1ff00000001", HEAD)
    add_revision(project, "d1ff00000002", HEAD)
    result = run_dbinit("check", "--tag", "migrations", "--format", "json", cwd=project,
                        DATABASE_URL=sqlite_database.url)
    assert result.returncode == 4, result.output
    document = json.loads(result.stdout)
    ran = statuses(document)
    assert ran["dbinit.E001"] == "passed"
    assert ran["dbinit.E006"] == "failed"
    assert "dbinit.E002" not in ran and "dbinit.E003" not in ran
    assert "alembic merge heads" in entries(document)["dbinit.E006"]["hint"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tag", "nosuchtag"], "--tag: unknown tag(s) nosuchtag"),
        (["--fail-level", "LOUD"], "--fail-level: unknown level 'LOUD'"),
    ],
)
def test_check_unknown_tag_or_fail_level_is_a_usage_error(
    project: Path, args: list[str], expected: str
) -> None:
    result = run_dbinit("check", *args, cwd=project, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 2, result.output
    assert expected in result.stderr
    assert "Hint:" in result.stderr or "DEBUG, INFO, WARNING, ERROR, CRITICAL" in result.stderr
    assert result.stdout == ""
