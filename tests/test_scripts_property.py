"""Property: the static reader and Alembic's own ScriptDirectory see one graph.

Hypothesis draws revision histories (chains, branches from any revision,
merges with a tuple ``down_revision``, new bases, ``branch_labels``,
``depends_on`` naming revisions and labels), Alembic writes them with its
own ``script.py.mako`` (``ScriptDirectory.generate_revision``, the code
behind ``alembic revision``), sometimes spread over subfolders or a second
version location. The static reader must then agree with
``ScriptDirectory.from_config`` on every revision, its parents, labels and
dependencies, the heads and the bases, and ``pending()`` must apply exactly
what ``alembic upgrade heads`` would, in a valid order.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import to_tuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbinit.revisions.fallback import graph_from_alembic
from dbinit.revisions.graph import RevisionGraph
from dbinit.revisions.layout import find_layout
from dbinit.revisions.scripts import read_migration_scripts

SETTINGS = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Messages end up in the docstring: some hold lines that look like assignments.
MESSAGES = [
    "create products",
    "add order status",
    None,
    "merge heads",
    "tricky\nrevision = 'not-this-one'\ndown_revision = None\ndepends_on = 'nope'",
]
LABEL_WORDS = ["core", "billing", "tenant"]  # never hex-only, so never a revision id
SUBFOLDERS = ["", "", "2024", "2024/q1", "zz"]
# Bodies for upgrade(): SQL in a triple-quoted string may hold column-0 lines
# that look like the assignments, after the real ones.
UPGRADES = [
    None,
    'op.execute("""\nUPDATE documents SET\nrevision = \'draft\'\n""")',
    "op.execute('''\ndepends_on = 'x'\nbranch_labels = ('y',)\n''')  # \"\"\" in a comment",
]


@dataclasses.dataclass(frozen=True)
class Spec:
    revision: str
    parents: tuple[str, ...]
    labels: tuple[str, ...]
    depends_on: tuple[str, ...]
    message: str | None
    folder: str
    upgrades: str | None = None


@dataclasses.dataclass(frozen=True)
class History:
    specs: tuple[Spec, ...]
    layout: str  # "single", "recursive" or "two"
    separator: str  # for "two": os or space


@st.composite
def histories(draw: st.DrawFn) -> History:
    count = draw(st.integers(1, 12))
    ids = draw(
        st.lists(
            st.text("0123456789abcdef_", min_size=1, max_size=12).filter(lambda s: s.strip("_")),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    layout = draw(st.sampled_from(["single", "single", "recursive", "two"]))
    specs: list[Spec] = []
    labels_so_far: list[str] = []
    for i, rev in enumerate(ids):
        earlier = ids[:i]
        kind = draw(st.sampled_from(["chain", "chain", "branch", "merge", "base"])) if earlier else "base"
        if kind == "chain":
            parents: tuple[str, ...] = (earlier[-1],)
        elif kind == "branch":
            parents = (draw(st.sampled_from(earlier)),)
        elif kind == "merge" and len(earlier) >= 2:
            parents = tuple(draw(st.lists(st.sampled_from(earlier), min_size=2, max_size=3, unique=True)))
        else:
            parents = ()
        words = draw(st.lists(st.sampled_from(LABEL_WORDS), max_size=2, unique=True)) if draw(
            st.integers(0, 3)
        ) == 0 else []
        labels = tuple(f"{word}{i}" for word in words)
        depends_on: tuple[str, ...] = ()
        if earlier and draw(st.integers(0, 2)) == 0:
            depends_on = tuple(
                draw(st.lists(st.sampled_from(earlier + labels_so_far), min_size=1, max_size=2, unique=True))
            )
        labels_so_far.extend(labels)
        folder = draw(st.sampled_from(SUBFOLDERS)) if layout == "recursive" else ""
        if layout == "two":
            folder = draw(st.sampled_from(["", "other"]))
        message = draw(st.sampled_from(MESSAGES))
        specs.append(Spec(rev, parents, labels, depends_on, message, folder, draw(st.sampled_from(UPGRADES))))
    return History(tuple(specs), layout, draw(st.sampled_from(["os", "space"])))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``script.py.mako`` exactly as ``alembic init`` writes it."""
    root = tmp_path_factory.mktemp("alembic-init")
    command.init(Config(str(root / "alembic.ini")), str(root / "migrations"))
    return root / "migrations" / "script.py.mako"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("histories")


@dataclasses.dataclass(frozen=True)
class Written:
    ini: Path
    script: ScriptDirectory  # a fresh one, from alembic.ini, as `alembic` builds it


def write_history(history: History, template: Path, workdir: Path) -> Written:
    """Write ``history`` with Alembic's template; return the project's alembic.ini."""
    root = Path(tempfile.mkdtemp(dir=workdir))
    migrations = root / "migrations"
    versions = migrations / "versions"
    versions.mkdir(parents=True)
    shutil.copy(template, migrations / "script.py.mako")
    (migrations / "env.py").write_text("")
    writer = ScriptDirectory(str(migrations))
    for spec in history.specs:
        script = writer.generate_revision(
            spec.revision,
            spec.message,
            head=list(spec.parents) if spec.parents else "base",
            splice=True,
            branch_labels=list(spec.labels) or None,
            depends_on=list(spec.depends_on) or None,
            upgrades=spec.upgrades,
        )
        assert script is not None
        if spec.folder:  # Alembic writes into versions/; spread the files afterwards
            target = (root / "other") if history.layout == "two" else versions / spec.folder
            target.mkdir(parents=True, exist_ok=True)
            Path(script.path).rename(target / Path(script.path).name)
    lines = ["[alembic]", "script_location = %(here)s/migrations"]
    if history.layout == "recursive":
        lines.append("recursive_version_locations = true")
    elif history.layout == "two":
        (root / "other").mkdir(exist_ok=True)
        separator = {"os": os.pathsep, "space": " "}[history.separator]
        lines += [
            f"path_separator = {history.separator}",
            f"version_locations = %(here)s/migrations/versions{separator}%(here)s/other",
        ]
    ini = root / "alembic.ini"
    ini.write_text("\n".join(lines) + "\n")
    return Written(ini, ScriptDirectory.from_config(Config(str(ini))))


def shape(graph: RevisionGraph) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return {
        rev.revision: (rev.down_revisions, rev.branch_labels, rev.depends_on)
        for rev in graph.revisions.values()
    }


def assert_valid_order(graph: RevisionGraph, order: list[str], applied: set[str]) -> None:
    """Every parent and dependency of a pending revision is applied or comes before it."""
    position = {rev: i for i, rev in enumerate(order)}
    assert len(position) == len(order), "a revision is pending twice"
    for rev in order:
        for parent in graph.parents(rev):
            assert parent in applied or position[parent] < position[rev], (rev, parent, order)


@SETTINGS
@given(history=histories(), data=st.data())
def test_static_reader_agrees_with_alembic(
    history: History, data: st.DataObject, template: Path, workdir: Path
) -> None:
    written = write_history(history, template, workdir)
    scripts = read_migration_scripts(written.ini)
    assert scripts.source == "static", scripts.unreadable
    assert scripts.unreadable == ()
    graph = scripts.graph

    # Alembic itself, through its own alembic.ini parsing.
    alembic_scripts = list(written.script.walk_revisions())
    assert set(graph.revisions) == {sc.revision for sc in alembic_scripts}
    for sc in alembic_scripts:
        ours = graph.revisions[sc.revision]
        # Alembic keeps down_revision as written (a tuple in file order), so do we.
        assert ours.down_revisions == to_tuple(sc.down_revision, default=())
        assert ours.branch_labels == tuple(sc._orig_branch_labels)
        assert ours.depends_on == to_tuple(sc.dependencies, default=())
        assert Path(ours.path).resolve() == Path(sc.path).resolve()
    assert graph.heads == tuple(written.script.get_heads())
    assert graph.bases == tuple(written.script.get_bases())
    for spec in history.specs:  # and what we asked Alembic to write
        assert graph.revisions[spec.revision].down_revisions == spec.parents
        assert graph.revisions[spec.revision].branch_labels == spec.labels
        for label in spec.labels:
            assert graph.resolve(label) == spec.revision

    # The fallback path builds the very same graph.
    fallback = graph_from_alembic(find_layout(written.ini, None))
    assert shape(fallback) == shape(graph)
    assert (fallback.heads, fallback.bases, dict(fallback.labels)) == (
        graph.heads,
        graph.bases,
        dict(graph.labels),
    )

    # pending() applies what `alembic upgrade heads` applies, in a valid order.
    ids = [spec.revision for spec in history.specs]
    for current in [(), *data.draw(st.lists(_databases(graph, ids), max_size=3), label="currents")]:
        expected = {step.revision.revision for step in written.script._upgrade_revs("heads", current)}
        order = graph.pending(current)
        assert set(order) == expected, current
        assert_valid_order(graph, order, graph.ancestors(current))


def _databases(graph: RevisionGraph, ids: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    """What an alembic_version table can hold: revisions none of which precedes another."""

    def heads_of(chosen: list[str]) -> tuple[str, ...]:
        below = set().union(*(graph.ancestors(graph.parents(r)) for r in chosen)) if chosen else set()
        return tuple(r for r in dict.fromkeys(chosen) if r not in below)

    return st.lists(st.sampled_from(ids), min_size=1, max_size=3).map(heads_of)

