"""Property: the static reader and Alembic's own ScriptDirectory see one graph.

Hypothesis draws revision histories (chains, branches from any revision,
merges with a tuple ``down_revision``, new bases, ``branch_labels``,
``depends_on`` naming revisions and labels), Alembic writes them with its
own ``script.py.mako`` (``ScriptDirectory.generate_revision``, the code
behind ``alembic revision``), sometimes spread over subfolders or a second
version location. Each file is then reshaped the ways people and tools
reshape them, without changing what Alembic sees: how it is encoded (CRLF or
lone-CR line ends, a BOM, a UTF-8 or latin-1 encoding declaration with a
latin-1 byte in a comment) and what it holds (strings with quotes and triple
quotes, docstrings and comments naming the four names, line continuations,
lists spread over lines, semicolons, a name read in code or bound in a
function, and decoys Alembic ignores: a name set in a ``try`` or ``if``,
bound twice, bound by ``:=``).

The static reader must then agree with ``ScriptDirectory.from_config`` on
every revision, its parents, labels and dependencies, the heads and the
bases; ``pending()`` must apply exactly what ``alembic upgrade heads`` would,
in a valid order; and each file must take the path its shape calls for
(fast, ast, or Alembic), a file read statically agreeing with Alembic's
``Script`` for it even when another file sent the project to Alembic.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import to_tuple
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dbinit.revisions.fallback import graph_from_alembic
from dbinit.revisions.graph import RevisionGraph
from dbinit.revisions.layout import find_layout
from dbinit.revisions.reader import read_revision
from dbinit.revisions.scripts import read_migration_scripts

SETTINGS = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Messages end up in the docstring: some hold lines that look like assignments,
# quotes, or non-ASCII text (latin-1 encodable, so that any file can be latin-1).
MESSAGES = [
    "create products",
    "add order status",
    None,
    "merge heads",
    "tricky\nrevision = 'not-this-one'\ndown_revision = None\ndepends_on = 'nope'",
    "it's ''' and \"quoted\"\nbranch_labels = ('x',)",
    "ajoute la table \u00abproduits\u00bb",
]
LABEL_WORDS = ["core", "billing", "tenant"]  # never hex-only, so never a revision id
SUBFOLDERS = ["", "", "2024", "2024/q1", "zz"]
# Bodies for upgrade(): SQL in a triple-quoted string may hold column-0 lines
# that look like the assignments, after the real ones; quotes of every kind.
UPGRADES = [
    None,
    'op.execute("""\nUPDATE documents SET\nrevision = \'draft\'\n""")',
    "op.execute('''\ndepends_on = 'x'\nbranch_labels = ('y',)\n''')  # \"\"\" in a comment",
    "op.execute('\"\"\"'); op.execute(\"'''\")  # triple quotes inside ordinary strings",
    "op.execute(\"SELECT 'it''s', \\\"revision\\\" FROM t\")",
]

# -- reshaping a file Alembic wrote, without changing what Alembic sees -------------
# Each shape says which path the reader must take for it: "fast", "ast" (the fast
# path declines, the module is parsed) or "alembic" (only importing it can tell).
# A file takes the slowest path its encoding and its content call for.

PATHS = ("fast", "ast", "alembic")

_ASSIGNMENT = re.compile(r"^(revision|down_revision|branch_labels|depends_on): [^=\n]* = (.*)$", re.M)

Lines = dict[str, tuple[str, str]]  # name -> (the line Alembic wrote, the value's source)


def _lines(text: str) -> Lines:
    return {m.group(1): (m.group(0), m.group(2)) for m in _ASSIGNMENT.finditer(text)}


def _before_names(text: str, lines: Lines, inserted: str) -> str:
    return text.replace(lines["revision"][0], inserted + lines["revision"][0])


def _replace(text: str, lines: Lines, name: str, new: str) -> str:
    return text.replace(lines[name][0], new)


def _spread(value: str) -> str:
    """A tuple or list written one item a line, with comments; anything else as it is."""
    items = ast.literal_eval(value)
    if not isinstance(items, (tuple, list)):
        return value
    opener, closer = value[0], value[-1]
    return opener + "\n" + "".join(f"    {item!r},  # {item}\n" for item in items) + closer


CONTENTS: dict[str, tuple[Callable[[str, Lines], str], str]] = {
    "as written": (lambda text, lines: text, "fast"),
    "quotes and escapes before the names": (
        lambda text, lines: _before_names(
            text, lines, "QUOTE = '\"\"\"'\nOTHER = \"'''\"  # \"\"\" here\nESCAPED = 'it\\'s \\\"so\\\"'\n"
        ),
        "fast",
    ),
    "strings naming the names after them": (
        lambda text, lines: text
        + "\nNOTE = \"\"\"\ndepends_on = 'nope'\nrevision = \"nope\"\n\"\"\"\nQUOTE = '\"\"\"'  # and '''\n",
        "fast",
    ),
    "a line continuation": (
        lambda text, lines: _replace(
            text, lines, "down_revision", "down_revision = \\\n    " + lines["down_revision"][1]
        ),
        "fast",
    ),
    "values spread over lines": (
        lambda text, lines: functools.reduce(
            lambda t, name: _replace(t, lines, name, f"{name} = {_spread(lines[name][1])}"), lines, text
        ),
        "fast",
    ),
    "two assignments on a line": (
        lambda text, lines: _replace(
            _replace(text, lines, "depends_on", ""),
            lines,
            "branch_labels",
            f"branch_labels = {lines['branch_labels'][1]}; depends_on = {lines['depends_on'][1]}",
        ),
        "ast",
    ),
    "a name read in code": (lambda text, lines: text + '\nLABEL = "rev " + revision\n', "ast"),
    "names bound in a function": (
        lambda text, lines: text + "\n\ndef _local():\n    depends_on = 'nope'\n    return depends_on\n",
        "ast",
    ),
    "depends_on set in a try": (
        lambda text, lines: _replace(
            text,
            lines,
            "depends_on",
            "try:\n    import json  # always there: Alembic takes this branch\n"
            f"    depends_on = {lines['depends_on'][1]}\nexcept ImportError:\n    depends_on = 'nope'",
        ),
        "alembic",
    ),
    "revision bound twice": (
        lambda text, lines: _before_names(text, lines, "revision = 'nope'\n"),
        "alembic",
    ),
    "branch_labels under if False": (
        lambda text, lines: text + "\nif False:\n    branch_labels = 'nope'\n",
        "alembic",
    ),
    "branch_labels bound by :=": (
        lambda text, lines: _replace(
            text, lines, "branch_labels", f"(branch_labels := {lines['branch_labels'][1]})"
        ),
        "alembic",
    ),
}
ENCODINGS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "UTF-8": (lambda text: text.encode(), "fast"),
    "CRLF": (lambda text: text.replace("\n", "\r\n").encode(), "fast"),
    "BOM": (lambda text: b"\xef\xbb\xbf" + text.encode(), "fast"),
    "BOM and CRLF": (lambda text: b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(), "fast"),
    "UTF-8 declared": (lambda text: ("# -*- coding: utf-8 -*-\n" + text).encode(), "fast"),
    # Alembic imports the file: Python decodes it as declared (PEP 263).
    "latin-1 declared, a latin-1 byte in a comment": (
        lambda text: ("# -*- coding: latin-1 -*-\n# caf\u00e9 cr\u00e8me\n" + text).encode("latin-1"),
        "ast",
    ),
    "lone CR line ends": (lambda text: text.replace("\n", "\r").encode(), "ast"),
}
FAST_CONTENTS = [name for name, (_, path) in CONTENTS.items() if path != "alembic"]
ALEMBIC_CONTENTS = [name for name, (_, path) in CONTENTS.items() if path == "alembic"]


def reshape(text: str, content: str, encoding: str) -> tuple[bytes, str]:
    """The file reshaped, and the path the reader must take for it."""
    change, content_path = CONTENTS[content]
    encode, encoding_path = ENCODINGS[encoding]
    return encode(change(text, _lines(text))), max(content_path, encoding_path, key=PATHS.index)


@dataclasses.dataclass(frozen=True)
class Spec:
    revision: str
    parents: tuple[str, ...]
    labels: tuple[str, ...]
    depends_on: tuple[str, ...]
    message: str | None
    folder: str
    upgrades: str | None = None
    content: str = "as written"
    encoding: str = "UTF-8"


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
    # Half the histories have one file only Alembic can read; the others none, so that
    # the static graph itself is checked too.
    for_alembic = draw(st.integers(0, count - 1)) if draw(st.booleans()) else -1
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
        plain = draw(st.integers(0, 2)) == 0 and i != for_alembic  # a third as Alembic wrote them
        if i == for_alembic:
            content = draw(st.sampled_from(ALEMBIC_CONTENTS))
        else:
            content = "as written" if plain else draw(st.sampled_from(FAST_CONTENTS))
        specs.append(
            Spec(
                rev,
                parents,
                labels,
                depends_on,
                message,
                folder,
                draw(st.sampled_from(UPGRADES)),
                content,
                "UTF-8" if plain else draw(st.sampled_from(list(ENCODINGS))),
            )
        )
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
    paths: dict[str, str]  # each file (resolved) -> the path the reader must take for it


def write_history(history: History, template: Path, workdir: Path) -> Written:
    """Write ``history`` with Alembic's template, reshape each file; return the project."""
    root = Path(tempfile.mkdtemp(dir=workdir))
    migrations = root / "migrations"
    versions = migrations / "versions"
    versions.mkdir(parents=True)
    shutil.copy(template, migrations / "script.py.mako")
    (migrations / "env.py").write_text("")
    writer = ScriptDirectory(str(migrations))
    paths: dict[str, str] = {}
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
        path = Path(script.path)
        data, expected = reshape(path.read_text(), spec.content, spec.encoding)
        path.write_bytes(data)
        if spec.folder:  # Alembic writes into versions/; spread the files afterwards
            target = (root / "other") if history.layout == "two" else versions / spec.folder
            target.mkdir(parents=True, exist_ok=True)
            path = path.rename(target / path.name)
        paths[str(path.resolve())] = expected
    for cache in list(root.rglob("__pycache__")):  # bytecode of the files as Alembic first wrote them
        shutil.rmtree(cache)
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
    return Written(ini, ScriptDirectory.from_config(Config(str(ini))), paths)


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


def alembic_fields(sc: Script) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    # Alembic keeps down_revision as written (a tuple in file order), so do we.
    return (
        to_tuple(sc.down_revision, default=()),
        tuple(sc._orig_branch_labels),
        to_tuple(sc.dependencies, default=()),
    )


@SETTINGS
@given(history=histories(), data=st.data())
def test_static_reader_agrees_with_alembic(
    history: History, data: st.DataObject, template: Path, workdir: Path
) -> None:
    written = write_history(history, template, workdir)
    scripts = read_migration_scripts(written.ini)
    alembic_scripts = list(written.script.walk_revisions())
    for spec in history.specs:  # (pytest --hypothesis-show-statistics: what was drawn)
        event(f"content: {spec.content}")
        event(f"encoding: {spec.encoding}")
    event(f"source: {scripts.source}")

    # Each file takes the path its shape calls for; one read statically agrees with
    # Alembic's Script for it, whether or not another file sent the project to Alembic.
    readers = {str(Path(path).resolve()): reader for path, reader in scripts.readers.items()}
    assert readers == written.paths, (scripts.unreadable, scripts.read_exactly)
    needs_alembic = "alembic" in written.paths.values()
    assert scripts.source == ("alembic" if needs_alembic else "static"), scripts.unreadable
    assert len(scripts.unreadable) == sum(path == "alembic" for path in written.paths.values())
    assert len(scripts.read_exactly) == sum(path == "ast" for path in written.paths.values())
    for sc in alembic_scripts:
        if written.paths[str(Path(sc.path).resolve())] != "alembic":
            read = read_revision(Path(sc.path)).revision
            assert (read.revision, (read.down_revisions, read.branch_labels, read.depends_on)) == (
                sc.revision,
                alembic_fields(sc),
            )
    graph = scripts.graph

    # Alembic itself, through its own alembic.ini parsing.
    assert set(graph.revisions) == {sc.revision for sc in alembic_scripts}
    for sc in alembic_scripts:
        ours = graph.revisions[sc.revision]
        assert (ours.down_revisions, ours.branch_labels, ours.depends_on) == alembic_fields(sc)
        assert Path(ours.path).resolve() == Path(sc.path).resolve()
    assert graph.heads == tuple(written.script.get_heads())
    assert graph.bases == tuple(written.script.get_bases())
    for spec in history.specs:  # and what we asked Alembic to write
        assert graph.revisions[spec.revision].down_revisions == spec.parents
        assert graph.revisions[spec.revision].branch_labels == spec.labels
        assert graph.revisions[spec.revision].depends_on == spec.depends_on
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

