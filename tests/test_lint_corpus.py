"""The lint corpus: every shape of tests/plugins/lint_corpus.py, linted as a user lints it.

For each shape, a real Alembic project (``alembic init`` + ``alembic revision``)
and ``dbinit lint --from <FROM> --format json`` in a subprocess, with a
PostgreSQL URL nothing listens on (lint needs no database); the finding ids on
the shape's revisions must be the ones ``EXPECTED`` lists, and every finding
must say where it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.databases import run_dbinit
from tests.plugins.lint_corpus import BY_NAME, EXPECTED, SHAPES, Shape, build

UNREACHABLE = "postgresql://u@127.0.0.1:1/x"  # lint renders offline: nothing listens here
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class Linted:
    """``dbinit lint --format json`` of each shape, run once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.documents: dict[str, dict[str, Any]] = {}

    def __call__(self, shape: Shape) -> dict[str, Any]:
        if shape.name not in self.documents:
            project = build(shape, self.root)
            since = ("--from", shape.lint_from) if shape.lint_from else ()
            result = run_dbinit("lint", *since, "--format", "json", cwd=project, DATABASE_URL=UNREACHABLE)
            assert result.returncode == 0, result.output
            self.documents[shape.name] = json.loads(result.stdout)
        return self.documents[shape.name]


@pytest.fixture(scope="session")
def linted(tmp_path_factory: pytest.TempPathFactory) -> Linted:
    return Linted(tmp_path_factory.mktemp("lint-corpus"))


def shape_findings(document: dict[str, Any], shape: Shape) -> list[dict[str, Any]]:
    revisions = {r["revision"]: r for r in document["revisions"]}
    assert set(shape.linted_ids()) <= set(revisions), sorted(revisions)
    return [f for rev in shape.linted_ids() for f in revisions[rev]["findings"]]


def test_every_shape_has_an_expectation() -> None:
    assert [s.name for s in SHAPES] == list(EXPECTED)
    assert len(SHAPES) >= 34
    every_rule = {f"dbinit.L{n:03d}" for n in (*range(1, 17), 20, 21, 100, 101, 102)}
    assert every_rule <= {rule for ids in EXPECTED.values() for rule in ids}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shape_gets_its_findings(linted: Linted, name: str) -> None:
    shape = BY_NAME[name]
    found = shape_findings(linted(shape), shape)
    described = [f"{f['revision']} #{f['position']} {f['id']}: {f['sql']}" for f in found]
    assert sorted(f["id"] for f in found) == sorted(EXPECTED[name]), described


@pytest.mark.parametrize("name", [name for name, ids in EXPECTED.items() if ids])
def test_each_finding_says_where_and_what_to_do(linted: Linted, name: str) -> None:
    shape = BY_NAME[name]
    document = linted(shape)
    files = {r["revision"]: r["file"] for r in document["revisions"]}
    found = shape_findings(document, shape)
    assert found, f"no findings on {name}; expected {EXPECTED[name]}"
    for finding in found:
        where = f"{finding['id']} on {finding.get('revision')}"
        assert finding["revision"] in shape.linted_ids(), where
        assert finding["file"] == files[finding["revision"]], where
        assert Path(finding["file"]).name.startswith(f"{finding['revision']}_"), where
        assert finding["level"] in LEVELS, where
        assert isinstance(finding["hint"], str) and finding["hint"].strip(), where
        line = finding.get("line")
        assert isinstance(line, int) and not isinstance(line, bool), (where, line)
        lines = Path(finding["file"]).read_text().splitlines()
        assert 1 <= line <= len(lines), (where, line)

