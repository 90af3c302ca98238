"""Lint's machinery: rules from plugins, suppressions with a reason, project settings, SARIF, gates.

Each test writes real revision files into a copy of the example project and
runs `dbinit lint` (or `dbinit check --tag lint`) as a user would, with no
database reachable: lint renders the SQL offline. The per-rule corpus is in
test_lint_corpus.py.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.databases import add_revision, run_dbinit
from tests.plugins.no_pglast import dbinit_without_pglast

HEAD = "8d3f6b2a9c11"  # the example's head
UNREACHABLE = "postgresql://u@127.0.0.1:1/x"
INDEX = 'op.create_index("ix_orders_status2", "orders", ["status"])'
DROP = 'op.drop_column("orders", "status")'


def lint(project: Path, *args: str, **settings: str) -> Any:
    settings.setdefault("DATABASE_URL", UNREACHABLE)
    result = run_dbinit("lint", "--from", HEAD, "--format", "json", *args, cwd=project, **settings)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


def ids(document: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(f["id"], f["line"]) for r in document["revisions"] for f in r["findings"]]


def suppressed(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["id"], f["suppressed"]["reason"]) for r in document["revisions"] for f in r["suppressed"]]


def plugin(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    folder = tmp_path / "plugins_path"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return {
        "PYTHONPATH": f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}",
        "DBINIT_PLUGINS": name,
    }


TRUNCATE_RULE = """
from dbinit import hookimpl
from dbinit.checks import Level
from dbinit.lint.rules import Hit, LintRule


def no_truncate(revision):
    for statement in revision.statements:
        if statement.kind == "TRUNCATE":
            yield Hit(f"TRUNCATE {', '.join(statement.tables)}", statement)


@hookimpl
def dbinit_lint_rules(settings):
    return [LintRule("acme.L900", "TRUNCATE", no_truncate, level=Level.ERROR,
                     hint="Delete in batches from a job instead", postgresql_only=False)]
"""


def test_dbinit_lint_rules_a_plugin_rule_finds_suppresses_and_lists(project: Path, tmp_path: Path) -> None:
    env = plugin(tmp_path, "acme_lint", TRUNCATE_RULE)
    add_revision(project, "t1", HEAD, 'op.execute("TRUNCATE orders")')
    add_revision(
        project,
        "t2",
        "t1",
        "# dbinit: ignore[acme.L900] a staging-only table, emptied each night\n"
        'op.execute("TRUNCATE products")',
    )
    document = lint(project, DBINIT_DDL_LOCK_TIMEOUT="5", **env)
    assert ids(document) == [("acme.L900", 22)]
    [finding] = document["revisions"][0]["findings"]
    assert (finding["level"], finding["msg"], finding["hint"]) == (
        "ERROR",
        "TRUNCATE orders",
        "Delete in batches from a job instead",
    )
    assert suppressed(document) == [("acme.L900", "a staging-only table, emptied each night")]

    listed = run_dbinit(
        "lint", "--list-rules", "--format", "json", cwd=project, DATABASE_URL=UNREACHABLE, **env
    )
    assert listed.returncode == 0, listed.output
    rules = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rules["acme.L900"]["plugin"] == "acme_lint"
    assert rules["dbinit.L001"]["plugin"] == "dbinit.plugins.lint"
    assert list(rules).index("dbinit.L001") < list(rules).index("acme.L900")  # dbinit's own first
    plugins = run_dbinit("plugins", "--format", "json", cwd=project, DATABASE_URL=UNREACHABLE, **env)
    contributed = {p["name"]: p["lint_rules"] for p in json.loads(plugins.stdout)}
    assert contributed["acme_lint"] == ["acme.L900"]
    assert "dbinit.L021" in contributed["dbinit.plugins.lint"]


def test_dbinit_lint_rules_a_duplicate_id_is_exit_2_naming_the_plugin(project: Path, tmp_path: Path) -> None:
    env = plugin(tmp_path, "copycat", TRUNCATE_RULE.replace("acme.L900", "dbinit.L001"))
    result = run_dbinit("lint", cwd=project, DATABASE_URL=UNREACHABLE, **env)
    assert result.returncode == 2, result.output
    assert "copycat" in result.output and "dbinit.L001" in result.output
    assert "dbinit.plugins.lint" in result.output


def test_dbinit_lint_rules_a_rule_that_raises_is_exit_1_naming_the_plugin(
    project: Path, tmp_path: Path
) -> None:
    env = plugin(
        tmp_path, "buggy_lint", TRUNCATE_RULE.replace("    for statement", "    1 / 0\n    for statement")
    )
    add_revision(project, "b1", HEAD, 'op.execute("TRUNCATE orders")')
    result = run_dbinit("lint", "--from", HEAD, cwd=project, DATABASE_URL=UNREACHABLE, **env)
    assert result.returncode == 1, result.output
    assert "buggy_lint" in result.output and "ZeroDivisionError" in result.output


@pytest.mark.parametrize(
    "body",
    [
        f"# dbinit: ignore[dbinit.L001] orders has 300 rows: the SHARE lock lasts milliseconds\n{INDEX}",
        f"{INDEX}  # dbinit: ignore[dbinit.L001]: orders has 300 rows: the SHARE lock lasts milliseconds",
        "# dbinit: ignore[dbinit.L001] orders has 300 rows: the SHARE lock lasts milliseconds\n"
        "# (built before the morning peak)\n"
        'op.create_index(\n    "ix_orders_status2",\n    "orders",\n    ["status"],\n)',
        "# dbinit: ignore[dbinit.L001, dbinit.L010] orders has 300 rows: the SHARE lock lasts milliseconds\n"
        "if True:\n    " + INDEX,
    ],
    ids=["line-above", "trailing", "multi-line-call", "block"],
)
def test_a_suppression_with_a_reason_covers_the_operation_next_to_it(project: Path, body: str) -> None:
    add_revision(project, "s1", HEAD, body)
    document = lint(project, DBINIT_DDL_LOCK_TIMEOUT="5")
    assert ids(document) == []
    assert suppressed(document) == [("dbinit.L001", "orders has 300 rows: the SHARE lock lasts milliseconds")]
    text = run_dbinit(
        "lint", "--from", HEAD, cwd=project, DATABASE_URL=UNREACHABLE, DBINIT_DDL_LOCK_TIMEOUT="5"
    )
    assert "0 finding(s), 1 suppressed" in text.stdout
    assert "suppressed (line 22): orders has 300 rows" in text.stdout


def test_a_suppression_covers_only_its_operation(project: Path) -> None:
    body = f"# dbinit: ignore[dbinit.L001] orders has 300 rows\n{INDEX}\n\n" + INDEX.replace(
        "status2", "status3"
    )
    add_revision(project, "s2", HEAD, body)
    document = lint(project, DBINIT_DDL_LOCK_TIMEOUT="5")
    assert ids(document) == [("dbinit.L001", 25)]
    assert len(suppressed(document)) == 1


def test_a_suppression_without_a_reason_suppresses_nothing_and_is_a_finding(project: Path) -> None:
    add_revision(project, "s3", HEAD, f"# dbinit: ignore[dbinit.L001]\n{INDEX}")
    document = lint(project, DBINIT_DDL_LOCK_TIMEOUT="5")
    assert sorted(ids(document)) == [("dbinit.L001", 23), ("dbinit.L100", 22)]
    l100 = next(f for f in document["revisions"][0]["findings"] if f["id"] == "dbinit.L100")
    assert l100["level"] == "ERROR" and "without a reason" in l100["msg"]


def test_an_unused_an_unknown_and_a_malformed_suppression_are_findings(project: Path) -> None:
    body = (
        "# dbinit: ignore[dbinit.L001] nothing here builds an index\n"
        'op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))\n'
        "# dbinit: ignore[acme.L404] a rule nobody contributes\n"
        'op.execute("SELECT 1")\n'
        "# dbinit: ignore dbinit.L002 forgot the brackets\n"
        'op.execute("SELECT 2")'
    )
    add_revision(project, "s4", HEAD, body)
    document = lint(project, DBINIT_DDL_LOCK_TIMEOUT="5")
    assert sorted(ids(document)) == [("dbinit.L100", 26), ("dbinit.L101", 22), ("dbinit.L102", 24)]


def test_project_settings_turn_rules_off_change_levels_and_declare_small_tables(project: Path) -> None:
    add_revision(project, "p1", HEAD, f"{INDEX}\n{DROP}")
    assert sorted(i for i, _ in ids(lint(project))) == ["dbinit.L001", "dbinit.L002", "dbinit.L010"]
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + textwrap.dedent(
            """
            [tool.dbinit.lint]
            disable = ["dbinit.L010"]
            levels = { "dbinit.L002" = "WARNING" }
            table_rows = { orders = 300 }
            """
        )
    )
    document = lint(project)
    assert [(f["id"], f["level"]) for r in document["revisions"] for f in r["findings"]] == [
        ("dbinit.L002", "WARNING")
    ]  # orders is small (300 < 100000 rows): no L001
    # the environment wins over pyproject, as for every dbinit setting
    document = lint(project, DBINIT_LINT_LARGE_TABLE_ROWS="10")
    assert sorted(i for i, _ in ids(document)) == ["dbinit.L001", "dbinit.L002"]


def test_an_invalid_lint_setting_is_exit_2_naming_it(project: Path) -> None:
    result = run_dbinit(
        "lint", cwd=project, DATABASE_URL=UNREACHABLE, DBINIT_LINT_LEVELS='{"dbinit.L001": "LOUD"}'
    )
    assert result.returncode == 2, result.output
    assert "DBINIT_LINT_LEVELS" in result.output and "LOUD" in result.output


def test_since_in_the_settings_lints_only_the_release(project: Path) -> None:
    add_revision(project, "r1", HEAD, INDEX)
    result = run_dbinit(
        "lint", "--format", "json", cwd=project, DATABASE_URL=UNREACHABLE, DBINIT_LINT_SINCE=HEAD
    )
    document = json.loads(result.stdout)
    assert document["since"] == HEAD
    assert [r["revision"] for r in document["revisions"]] == ["r1"]


def test_sarif_has_the_rules_the_results_their_locations_and_suppressions(project: Path) -> None:
    add_revision(project, "v1", HEAD, f"{DROP}\n# dbinit: ignore[dbinit.L001] orders has 300 rows\n{INDEX}")
    result = run_dbinit(
        "lint",
        "--from",
        HEAD,
        "--format",
        "sarif",
        cwd=project,
        DATABASE_URL=UNREACHABLE,
        DBINIT_DDL_LOCK_TIMEOUT="5",
    )
    assert result.returncode == 0, result.output
    log = json.loads(result.stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    [run] = log["runs"]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"dbinit.L001", "dbinit.L021", "dbinit.L100"} <= set(rules)
    results = {r["ruleId"]: r for r in run["results"]}
    drop = results["dbinit.L002"]
    assert drop["level"] == "error" and rules[drop["ruleIndex"]] == "dbinit.L002"
    [location] = drop["locations"]
    assert location["physicalLocation"]["artifactLocation"] == {
        "uri": "migrations/versions/v1_revision.py",
        "uriBaseId": "%SRCROOT%",
    }
    assert location["physicalLocation"]["region"] == {"startLine": 22}
    assert results["dbinit.L001"]["suppressions"] == [
        {"kind": "inSource", "justification": "orders has 300 rows"}
    ]
    assert "suppressions" not in drop


def test_fail_level_gates_lint_itself(project: Path) -> None:
    add_revision(project, "g1", HEAD, INDEX)
    args = ("lint", "--from", HEAD, "--fail-level")
    settings = {"DATABASE_URL": UNREACHABLE, "DBINIT_DDL_LOCK_TIMEOUT": "5"}
    assert run_dbinit(*args, "WARNING", cwd=project, **settings).returncode == 4
    assert run_dbinit(*args, "ERROR", cwd=project, **settings).returncode == 0
    assert run_dbinit("lint", "--from", HEAD, cwd=project, **settings).returncode == 0
    bad = run_dbinit(*args, "LOUD", cwd=project, **settings)
    assert bad.returncode == 2 and "--fail-level" in bad.output


def test_findings_are_checks_tagged_lint(project: Path) -> None:
    add_revision(project, "c1", HEAD, INDEX)
    settings = {"DATABASE_URL": UNREACHABLE, "DBINIT_DDL_LOCK_TIMEOUT": "5", "DBINIT_LINT_SINCE": HEAD}
    gate = run_dbinit("check", "--tag", "lint", "--fail-level", "WARNING", cwd=project, **settings)
    assert gate.returncode == 4, gate.output
    assert (
        "dbinit.L001: (WARNING) c1 (migrations/versions/c1_revision.py:22, statement 1): "
        "CREATE INDEX without CONCURRENTLY" in gate.stdout
    )
    assert "System check identified 1 issue" in gate.stdout
    assert run_dbinit("check", "--tag", "lint", cwd=project, **settings).returncode == 0  # ERROR: passes
    silenced = run_dbinit(
        "check",
        "--tag",
        "lint",
        "--fail-level",
        "WARNING",
        cwd=project,
        DBINIT_SILENCED_CHECKS="dbinit.L001",
        **settings,
    )
    assert silenced.returncode == 0, silenced.output
    listed = run_dbinit("check", "--list", "--tag", "lint", cwd=project, **settings)
    assert "dbinit.L000  lint  [lint]  (dbinit.plugins.lint)" in listed.stdout
    # without --tag lint, `dbinit check` does not lint (it would read every revision)
    plain = run_dbinit("check", "--tag", "migrations", "--fail-level", "WARNING", cwd=project, **settings)
    assert "dbinit.L001" not in plain.stdout


def test_check_tag_lint_without_pglast_is_exit_2_with_the_extra(project: Path) -> None:
    proc = dbinit_without_pglast("check", "--tag", "lint", cwd=project, DATABASE_URL=UNREACHABLE)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'dbinit-alembic[lint]'" in proc.stderr


def test_a_sqlite_project_says_which_rules_it_does_not_apply(project: Path, tmp_path: Path) -> None:
    add_revision(project, "q1", HEAD, f"{INDEX}\n{DROP}")
    url = f"sqlite:///{tmp_path / 'never.db'}"
    document = lint(project, DATABASE_URL=url)
    assert document["dialect"] == "sqlite"
    assert "dbinit.L001" in document["not_applied"] and "dbinit.L002" not in document["not_applied"]
    assert [i for i, _ in ids(document)] == ["dbinit.L002"]  # dialect-free rules still apply
    text = run_dbinit("lint", "--from", HEAD, cwd=project, DATABASE_URL=url)
    assert "PostgreSQL-only rule(s) not applied to sqlite SQL" in text.stdout
