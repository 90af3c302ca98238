"""The static revision reader (dbinit.revisions), example by example, against Alembic.

Every project here is also handed to Alembic's own ``ScriptDirectory``: the
static reader must see the same revisions, parents, labels, dependencies,
heads and bases; where Alembic refuses the history, dbinit raises
ConfigurationError naming the revision. The property test
(test_scripts_property.py) covers random histories written by Alembic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError, to_tuple

from dbinit.errors import ConfigurationError
from dbinit.revisions.exact import DYNAMIC
from dbinit.revisions.fallback import graph_from_alembic
from dbinit.revisions.graph import RevisionGraph
from dbinit.revisions.layout import find_layout, list_revision_files
from dbinit.revisions.reader import read_revision
from dbinit.revisions.scripts import read_migration_scripts
from tests.plugins.databases import ROOT, TestDatabase, add_revision, clean_env, run_dbinit

Shape = dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]


# -- helpers ------------------------------------------------------------------


def make_project(root: Path, *ini_lines: str, script_location: str = "%(here)s/migrations") -> Path:
    """An Alembic project with an empty versions folder; returns alembic.ini."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text("")
    ini = root / "alembic.ini"
    ini.write_text("\n".join(["[alembic]", f"script_location = {script_location}", *ini_lines]) + "\n")
    return ini


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def plain(rev: str, down: object, labels: object = None, deps: object = None) -> str:
    """A revision file with plain assignments, as Alembic wrote them before 1.13."""
    return (
        f'"""{rev}\n\nRevision ID: {rev}\n"""\nfrom alembic import op\n\n'
        f"revision = {rev!r}\ndown_revision = {down!r}\n"
        f"branch_labels = {labels!r}\ndepends_on = {deps!r}\n\n\n"
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )


def our_shape(graph: RevisionGraph) -> Shape:
    return {r.revision: (r.down_revisions, r.branch_labels, r.depends_on) for r in graph.revisions.values()}


def alembic_view(ini: Path) -> tuple[Shape, tuple[str, ...], tuple[str, ...]]:
    """What Alembic itself makes of the project (it imports every file)."""
    script = ScriptDirectory.from_config(Config(str(ini)))
    shape = {
        sc.revision: (
            tuple(dict.fromkeys(to_tuple(sc.down_revision, default=()))),
            tuple(sc._orig_branch_labels),
            tuple(dict.fromkeys(to_tuple(sc.dependencies, default=()))),
        )
        for sc in script.walk_revisions()
    }
    return shape, tuple(script.get_heads()), tuple(script.get_bases())


def assert_agrees(ini: Path, *, source: str = "static") -> RevisionGraph:
    scripts = read_migration_scripts(ini)
    assert scripts.source == source, scripts.unreadable
    graph = scripts.graph
    assert (our_shape(graph), graph.heads, graph.bases) == alembic_view(ini)
    fallback = graph_from_alembic(find_layout(ini, None))
    assert (our_shape(fallback), fallback.heads, fallback.bases) == (
        our_shape(graph),
        graph.heads,
        graph.bases,
    )
    return graph


# -- the example project --------------------------------------------------------


def test_example_project_agrees_with_alembic(project: Path) -> None:
    graph = assert_agrees(project / "alembic.ini")
    assert graph.heads == ("8d3f6b2a9c11",)
    assert graph.pending(()) == ["374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"]
    assert graph.pending(("5c9a1e7b2f40",)) == ["8d3f6b2a9c11"]


def test_alembic_file_shape_from_the_test_fixture(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    add_revision(tmp_path, "aaa", None, branch_labels="('core',)")
    add_revision(tmp_path, "bbb", "aaa")
    add_revision(tmp_path, "ccc", None, depends_on="'core'")
    graph = assert_agrees(ini)
    assert graph.heads == ("bbb", "ccc")
    assert graph.bases == ("aaa", "ccc")
    assert graph.parents("ccc") == ("aaa",)


# -- syntax Alembic accepts ----------------------------------------------------------

HEADER = '"""msg\n\nRevision ID: x\n"""\nfrom typing import Sequence, Union\n\nfrom alembic import op\n\n'

# case: (body of b1_child.py after HEADER, how the reader reads it, then what b1 is:
# down revisions, branch labels, dependencies). "fast": the line reader; "ast": the fast
# path declines and the module is parsed.
SYNTAX = {
    "plain double quotes": (
        'revision = "b1"\ndown_revision = "a1"\nbranch_labels = None\ndepends_on = None\n',
        "fast", ("a1",), (), (),
    ),
    "annotated single quotes": (
        "revision: str = 'b1'\ndown_revision: Union[str, Sequence[str], None] = 'a1'\n"
        "branch_labels: Union[str, Sequence[str], None] = None\n"
        "depends_on: Union[str, Sequence[str], None] = None\n",
        "fast", ("a1",), (), (),
    ),
    "no spaces": ("revision:str='b1'\ndown_revision='a1'\n", "fast"),
    "comments after values": (
        'revision = "b1"  # the id\ndown_revision = ("a1", "a2")  # a merge\n'
        "branch_labels = None # none\ndepends_on = None\t# none\n",
        "fast", ("a1", "a2"), (), (),
    ),
    "multi-line tuple": (
        'revision = "b1"\ndown_revision = (\n    "a1",  # first\n    # between\n    "a2",\n)\n'
        "branch_labels = (\n    'feature',\n)\ndepends_on = None\n",
        "fast", ("a1", "a2"), ("feature",), (),
    ),
    "list, string label, string dependency": (
        "revision = 'b1'\ndown_revision = ['a1', 'a2']\nbranch_labels = 'feature'\ndepends_on = 'a1'\n",
        "fast", ("a1", "a2"), ("feature",), ("a1",),
    ),
    "repeated names, empty tuple": (
        "revision = 'b1'\ndown_revision = ('a1', 'a1')\nbranch_labels = ()\ndepends_on = ['a2', 'a2']\n",
        "fast", ("a1",), (), ("a2",),
    ),
    "backslash continuation and implicit concatenation": (
        "revision = 'b' \\\n    '1'\ndown_revision = \\\n    'a1'\n",
        "fast", ("a1",), (), (),
    ),
    "escapes and prefixes": ("revision = r'b1'\ndown_revision = u'a\\x31'\n", "fast", ("a1",), (), ()),
    "annotation alone binds nothing": (
        "revision: str\nrevision = 'b1'\ndown_revision: str\ndown_revision = 'a1'\n",
        "fast", ("a1",), (), (),
    ),
    "assignments in strings after the real ones": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n"
        "def upgrade():\n    op.execute(\"\"\"\nrevision = 'x'\ndepends_on = 'x'\n\"\"\")\n"
        "    op.execute('''\nbranch_labels = 'x'\n''')\n"
        "NOTE = '''\nit says \"\"\" here\ndepends_on = 'x'\n'''\n",
        "fast", ("a1",), (), (),
    ),
    "triple quotes inside ordinary strings": (
        "QUOTE = '\"\"\"'\nrevision = 'b1'\nOTHER = \"'''\"\ndown_revision = 'a1'\n"
        "NOTE = '\"\"\" depends_on = \"x\"'\nALSO = \"''' branch_labels = 'x'\"\n",
        "fast", ("a1",), (), (),
    ),
    "escaped quotes, and a comment holding quotes and a name": (
        "NOTE = 'it\\'s \"\"\"'  # and ''' here: depends_on = 'x'\nrevision = \"b1\"\n"
        "SAY = \"\\\"\"  # \"\"\"\ndown_revision = 'a1'\nMORE = '\\\\'\n",
        "fast", ("a1",), (), (),
    ),
    "the names as attributes and inside longer names": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n\ndef upgrade():\n"
        "    my_revision = op.get_context().revision\n    down_revisions = [my_revision]\n",
        "fast", ("a1",), (), (),
    ),
    "an f-string without fields": ("TITLE = f'plain'\nrevision = 'b1'\ndown_revision = 'a1'\n", "fast"),
    "CRLF line endings": (
        "revision = 'b1'\r\ndown_revision = ('a1',\r\n    'a2')\r\nbranch_labels = None\r\n",
        "fast", ("a1", "a2"), (), (),
    ),
    "byte order mark": ("\ufeffrevision = 'b1'\ndown_revision = 'a1'\n", "fast", ("a1",), (), ()),
    "two statements on a line": ("revision = 'b1'; down_revision = 'a1'\n", "ast", ("a1",), (), ()),
    "multi-line annotation": ("revision: (\n    str\n) = 'b1'\ndown_revision = 'a1'\n", "ast"),
    "quoted annotations": ("revision: 'str' = 'b1'\ndown_revision: \"str | None\" = 'a1'\n", "ast"),
    "a name read in code": (
        "revision = 'b1'\ndown_revision = 'a1'\nMESSAGE = 'revision ' + revision\n", "ast", ("a1",), (), (),
    ),
    "a chained assignment": (
        "revision = 'b1'\ndown_revision = depends_on = 'a1'\n", "ast", ("a1",), (), ("a1",),
    ),
    "a name in an f-string's field": (
        "revision = 'b1'\ndown_revision = 'a1'\nLABEL = f'rev {revision}'\n", "ast", ("a1",), (), (),
    ),
    "an f-string with fields before the names": (
        "PREFIX = f'{1}'\nrevision = 'b1'\ndown_revision = 'a1'\n", "ast", ("a1",), (), (),
    ),
    "carriage returns alone as line ends": (
        "revision = 'b1'\rdown_revision = 'a1'\r", "ast", ("a1",), (), (),
    ),
    "names bound in a function body (its own scope)": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n\ndef upgrade():\n    depends_on = 'a2'\n"
        "    for branch_labels in ['x']:\n        revision = depends_on\n",
        "ast", ("a1",), (), (),
    ),
    "names bound in a class body and a comprehension (their own scopes)": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n\nclass Meta:\n    depends_on = 'a2'\n\n\n"
        "IDS = [depends_on for depends_on in ('x',)]\n",
        "ast", ("a1",), (), (),
    ),
    "an annotation alone under if TYPE_CHECKING": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    depends_on: str\n"
        "revision = 'b1'\ndown_revision = 'a1'\n",
        "ast", ("a1",), (), (),
    ),
}


@pytest.mark.parametrize("case", SYNTAX, ids=list(SYNTAX))
def test_syntax_alembic_accepts_is_read_statically(tmp_path: Path, case: str) -> None:
    body, reader, *expected = SYNTAX[case]
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "a2_base.py", plain("a2", None))
    child = versions / "b1_child.py"
    if body.startswith("\ufeff"):  # the assignment on the very first line, after the mark
        child.write_bytes(body[1:].encode("utf-8-sig"))
    else:
        child.write_bytes((HEADER + body).encode())
    graph = assert_agrees(ini)
    if expected:
        assert our_shape(graph)["b1"] == tuple(expected)
    read = read_revision(child)
    assert (read.revision.revision, read.reader) == ("b1", reader), read.reason
    assert bool(read.reason) == (reader == "ast")
    assert read_migration_scripts(ini).readers[str(child)] == reader


REST = b"revision = 'b1'\ndown_revision = 'a1'\n"

# case: (the whole file, as bytes; how it is read; b1's branch labels). Alembic imports the
# file, so Python decodes it: a BOM or a PEP 263 declaration on line 1 or 2 decides, and
# (on the interpreters tested, 3.11 to 3.13) bytes in a comment are not decoded at all.
ENCODED = {
    "byte order mark and CRLF": (b"\xef\xbb\xbf# a comment\r\n" + REST.replace(b"\n", b"\r\n"), "fast", ()),
    "UTF-8 declared, UTF-8 text": (
        b"# -*- coding: utf-8 -*-\n" + "# caf\u00e9\n".encode() + REST, "fast", (),
    ),
    "non-ASCII text that spells no name": (
        '"""Ajoute la table \u00abproduits\u00bb\u2026 \u5b8c\u6210\uff0c"""\n'.encode() + REST, "fast", (),
    ),
    "latin-1 declared, a latin-1 byte in a comment": (
        b"# -*- coding: latin-1 -*-\n# caf\xe9\n" + REST, "ast", (),
    ),
    "latin-1 declared on line 2, a latin-1 branch label": (
        b"#!/usr/bin/env python\n# vim: set fileencoding=latin-1 :\n" + REST + b"branch_labels = 'caf\xe9'\n",
        "ast",
        ("caf\u00e9",),
    ),
    "a latin-1 byte in a comment, nothing declared": (b"# caf\xe9\n" + REST, "ast", ()),
    "a vulgar fraction (NFKC: 1/2) in a docstring": ('"""\u00bd"""\n'.encode() + REST, "ast", ()),
}


@pytest.mark.parametrize("case", ENCODED, ids=list(ENCODED))
def test_encodings_are_read_as_python_reads_them(tmp_path: Path, case: str) -> None:
    data, reader, labels = ENCODED[case]
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    (versions / "b1_child.py").write_bytes(data)
    graph = assert_agrees(ini)
    assert our_shape(graph)["b1"] == (("a1",), labels, ())
    assert read_migration_scripts(ini).readers[str(versions / "b1_child.py")] == reader


def test_a_file_python_cannot_decode_is_refused_as_alembic_refuses_it(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    (versions / "b1_child.py").write_bytes(b"revision = 'caf\xe9'\ndown_revision = 'a1'\n")
    with pytest.raises(SyntaxError):  # Alembic: the import fails
        alembic_view(ini)
    with pytest.raises(ConfigurationError, match=r"cannot import .*b1_child\.py: SyntaxError"):
        read_migration_scripts(ini)


# case: (body, what the reason says). Only Alembic, importing the file, can say.
FALLBACK = {
    "computed revision": (
        "revision = 'b' + '1'\ndown_revision = 'a1'\n", "`revision` is not a literal value",
    ),
    "augmented assignment": (
        "revision = 'b'\nrevision += '1'\ndown_revision = 'a1'\n",
        "`revision` is bound by an augmented assignment",
    ),
    "tuple unpacking": ("revision, down_revision = 'b1', 'a1'\n", "`revision` is bound by unpacking"),
    "a name from an import": (
        "from os import sep as depends_on\nrevision = 'b1'\ndown_revision = 'a1'\ndepends_on = None\n",
        "`depends_on` is bound by an import",
    ),
    "a value from a call": (
        "revision = str('b1')\ndown_revision = 'a1'\n", "`revision` is not a literal value",
    ),
    "an f-string": (
        "A = 'b'\nrevision = f'{A}1'\ndown_revision = 'a1'\n", "`revision` is not a literal value",
    ),
    "a name assigned twice (the last wins, for Alembic)": (
        "revision = 'zz'\nrevision = 'b1'\ndown_revision = None\ndown_revision = 'a1'\n",
        "`revision` is bound more than once",
    ),
    "no revision at all": ("down_revision = 'a1'\n", "no module-level `revision = ...` assignment"),
    "a star import": (
        "from os.path import *\nrevision = 'b1'\ndown_revision = 'a1'\n",
        "`from … import *` may bind any name",
    ),
}


@pytest.mark.parametrize("case", FALLBACK, ids=list(FALLBACK))
def test_unreadable_file_is_named_and_alembic_decides(tmp_path: Path, case: str) -> None:
    body, reason = FALLBACK[case]
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    name = "b1_child.py" if case != "no revision at all" else "b1.py"  # Alembic: the id from the name
    (versions / name).write_text(HEADER + body)
    scripts = read_migration_scripts(ini)
    assert scripts.source == "alembic"
    assert scripts.unreadable == (f"{name}: {reason}",)
    assert scripts.readers == {str(versions / "a1_base.py"): "fast", str(versions / name): "alembic"}
    assert set(scripts.graph.revisions) == {"a1", "b1"}
    assert_agrees(ini, source="alembic")


@pytest.mark.parametrize("word", DYNAMIC)
@pytest.mark.parametrize("how", ["a name", "a string getattr can use"])
def test_a_way_to_set_names_unseen_sends_the_file_to_alembic(tmp_path: Path, word: str, how: str) -> None:
    # globals()["depends_on"] = ..., getattr(builtins, "exec")(...), sys.modules[__name__]...:
    # a file that uses one of these words is left to Alembic.
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    if how == "a name":
        way = f"def _unused():\n    return {word}"
    else:
        way = f"WAY = getattr(object, {word!r}, None)"
    write(versions / "b1_child.py", HEADER + f"revision = 'b1'\ndown_revision = 'a1'\n{way}\n")
    scripts = read_migration_scripts(ini)
    assert scripts.unreadable == (f"b1_child.py: uses `{word}`, through which code can set a module's names",)
    assert_agrees(ini, source="alembic")


def test_such_a_word_as_a_plain_string_is_read_exactly(tmp_path: Path) -> None:
    # A table named "modules": the fast path declines the word, the ast path sees a mere string.
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    text = plain("b1", "a1").replace("    pass\n", "    op.create_table('modules')\n", 1)
    child = write(versions / "b1_child.py", text)
    scripts = read_migration_scripts(ini)
    assert scripts.readers[str(child)] == "ast"
    assert scripts.read_exactly == ("b1_child.py: mentions `modules`",)
    assert_agrees(ini)


def test_computed_revision_falls_back_to_the_graph_alembic_builds(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "ab_base.py", plain("ab", None, labels=("core",)))
    write(versions / "abcd_computed.py", HEADER + 'revision = "ab" + "cd"\ndown_revision = "ab"\n')
    write(versions / "ef_head.py", plain("ef", "abcd", deps="core"))
    scripts = read_migration_scripts(ini)
    assert scripts.source == "alembic"
    assert scripts.unreadable == ("abcd_computed.py: `revision` is not a literal value",)
    assert scripts.heads == ("ef",)
    assert our_shape(scripts.graph) == alembic_view(ini)[0]
    assert scripts.graph.pending(()) == ["ab", "abcd", "ef"]


# -- shapes in which the names are bound otherwise: never a silently different graph --------
# Each file binds one of the four names so that Python (hence Alembic) sees a value a
# line-by-line reader does not: set in a branch or a loop, bound twice, deleted, set from a
# function, or an assignment that only looks like one (inside a string, in brackets).
# case: (body, how it is read, what the reason says).

SILENT = {
    "depends_on set only when an optional package imports": (
        "revision = 'b1'\ndown_revision = 'a1'\n"
        "try:\n    import json  # always there: Alembic takes this branch\n    depends_on = 'a2'\n"
        "except ImportError:\n    depends_on = None\n",
        "alembic", "`depends_on` is bound by an assignment inside `try`",
    ),
    "branch_labels set again in an if": (
        "revision = 'b1'\ndown_revision = 'a1'\nbranch_labels = None\n"
        "if True:\n    branch_labels = 'feature'\n",
        "alembic", "`branch_labels` is bound by an assignment inside `if`",
    ),
    "depends_on bound by a for loop": (
        "revision = 'b1'\ndown_revision = 'a1'\nfor depends_on in ['a2']:\n    pass\n",
        "alembic", "`depends_on` is bound by a for loop",
    ),
    "depends_on bound by a with statement": (
        "import contextlib\nrevision = 'b1'\ndown_revision = 'a1'\n"
        "with contextlib.nullcontext('a2') as depends_on:\n    pass\n",
        "alembic", "`depends_on` is bound by a with statement",
    ),
    "depends_on bound by an assignment expression": (
        "revision = 'b1'\ndown_revision = 'a1'\n(depends_on := 'a2')\n",
        "alembic", "`depends_on` is bound by an assignment expression (:=)",
    ),
    "depends_on set by a function through global": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n\ndef _depend():\n    global depends_on\n"
        "    depends_on = 'a2'\n\n\n_depend()\n",
        "alembic", "`depends_on` is declared global in a function",
    ),
    "depends_on set through globals()": (
        "revision = 'b1'\ndown_revision = 'a1'\nglobals()['depends_' + 'on'] = 'a2'\n",
        "alembic", "uses `globals`",
    ),
    "depends_on set by exec": (
        "revision = 'b1'\ndown_revision = 'a1'\nexec('depends_' 'on = \"a2\"')\n",
        "alembic", "uses `exec`",
    ),
    "branch_labels deleted": (
        "revision = 'b1'\ndown_revision = 'a1'\nbranch_labels = 'feature'\ndel branch_labels\n",
        "alembic", "`branch_labels` is bound by a del statement",
    ),
    "depends_on from a module __getattr__": (
        "revision = 'b1'\ndown_revision = 'a1'\n\n\ndef __getattr__(name):\n"
        "    if name == 'depends_on':\n        return 'a2'\n    raise AttributeError(name)\n",
        "alembic", "uses `__getattr__`",
    ),
    "depends_on in a chained assignment": (
        "revision = 'b1'\ndown_revision = depends_on = 'a1'\n",
        "ast", "`down_revision` is not a literal the fast reader reads",
    ),
    "'\"\"\"' in an ordinary string, then an assignment inside a docstring": (
        "revision = 'b1'\ndown_revision = 'a1'\nQUOTE = '\"\"\"'\n"
        "NOTE = \"\"\"\ndepends_on = 'a2'\n\"\"\"\n",
        "fast", "",
    ),
    "a keyword argument at column 0 inside brackets": (
        "revision = 'b1'\ndown_revision = 'a1'\nOPTIONS = dict(\ndepends_on='a2',\n)\n",
        "ast", "`depends_on` at column 0 inside brackets",
    ),
    "a carriage return alone ends a comment": (
        "revision = 'b1'\ndown_revision = 'a1'\n# a comment\rdepends_on = 'a2'\n",
        "ast", "a carriage return without a line feed",
    ),
    "a name spelled with a fullwidth letter (NFKC)": (
        "revision = 'b1'\ndown_revision = 'a1'\n\uff44epends_on = 'a2'\n",
        "ast", "may spell part of a name",
    ),
}


@pytest.mark.parametrize("case", SILENT, ids=list(SILENT))
def test_names_bound_otherwise_give_alembic_graph(tmp_path: Path, case: str) -> None:
    body, reader, reason = SILENT[case]
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "a2_base.py", plain("a2", None))
    child = versions / "b1_child.py"
    child.write_bytes((HEADER + body).encode())
    expected = alembic_view(ini)
    scripts = read_migration_scripts(ini)
    assert (our_shape(scripts.graph), scripts.heads, scripts.graph.bases) == expected
    assert scripts.readers[str(child)] == reader
    assert scripts.source == ("alembic" if reader == "alembic" else "static")
    reasons = scripts.unreadable if reader == "alembic" else scripts.read_exactly
    assert len(reasons) == (1 if reason else 0)
    if reason:
        assert reasons[0].startswith("b1_child.py: ") and reason in reasons[0], reasons


def test_each_file_is_read_the_fastest_exact_way(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "b1_semicolons.py", HEADER + "revision = 'b1'; down_revision = 'a1'\n")
    write(versions / "c1_conditional.py", HEADER + SILENT["branch_labels set again in an if"][0].replace(
        "'b1'", "'c1'").replace("'a1'", "'b1'"))
    scripts = read_migration_scripts(ini)
    assert scripts.readers == {
        str(versions / "a1_base.py"): "fast",
        str(versions / "b1_semicolons.py"): "ast",
        str(versions / "c1_conditional.py"): "alembic",
    }
    assert scripts.read_exactly == ("b1_semicolons.py: `revision` is not a literal the fast reader reads",)
    assert scripts.unreadable == (
        "c1_conditional.py: `branch_labels` is bound by an assignment inside `if`",
    )
    assert (scripts.source, scripts.heads, scripts.graph.revisions["c1"].branch_labels) == (
        "alembic", ("c1",), ("feature",),
    )


def test_verify_warns_when_alembic_was_needed(project: Path, sqlite_database: TestDatabase) -> None:
    versions = project / "migrations" / "versions"
    exactly = "revision = 'c0ffee000001'; down_revision = '8d3f6b2a9c11'\n"
    conditional = (
        "revision = 'c0ffee000002'\ndown_revision = 'c0ffee000001'\n"
        "try:\n    import json\n    depends_on = '5c9a1e7b2f40'\nexcept ImportError:\n    depends_on = None\n"
    )
    steps = "\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    write(versions / "c0ffee000001_exactly.py", HEADER + exactly + steps)
    write(versions / "c0ffee000002_conditional.py", HEADER + conditional + steps)
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url)
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["migrations_source"] == "alembic"
    warnings = [json.loads(line) for line in result.stderr.splitlines() if "Alembic was used" in line]
    assert [w["files"] for w in warnings] == [
        ["c0ffee000002_conditional.py: `depends_on` is bound by an assignment inside `try`"]
    ]


# -- files that are not revisions ---------------------------------------------------


def test_files_alembic_ignores_are_ignored(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "__init__.py", "raise SystemExit('__init__ is not a revision')\n")
    write(versions / "README", "revision = 'readme'\ndown_revision = None\n")
    write(versions / "notes.txt", "revision = 'notes'\n")
    write(versions / "a1_base.py~", plain("backup", None))
    (versions / "__pycache__").mkdir()
    (versions / "__pycache__" / "old_rev.cpython-311.pyc").write_bytes(b"\x00not python")
    (versions / "__pycache__" / "stray.py").write_text(plain("cached", None))
    (versions / "compiled.pyc").write_bytes(b"\x00not python")
    os.symlink("root@host.4242:1700000000", versions / ".#a1_base.py")  # an Emacs lock: dangling
    write(versions / ".#b1_draft.py", plain("draft", None))
    (versions / "subfolder").mkdir()
    write(versions / "subfolder" / "c1_nested.py", plain("nested", None))  # not recursive

    names = [p.name for p in list_revision_files(find_layout(ini, None))]
    assert names == ["a1_base.py"]
    graph = assert_agrees(ini)
    assert set(graph.revisions) == {"a1"}


# -- where the versions are -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning")
@pytest.mark.parametrize(
    ("separator", "joined"),
    [("os", os.pathsep), ("space", " "), (";", ";"), ("newline", "\n    "), (None, ", ")],
)
def test_version_locations_with_each_separator(tmp_path: Path, separator: str | None, joined: str) -> None:
    lines = [f"version_locations = %(here)s/migrations/versions{joined}%(here)s/shared/versions"]
    if separator is not None:
        lines.insert(0, f"path_separator = {separator}")
    ini = make_project(tmp_path, *lines)
    write(tmp_path / "migrations" / "versions" / "a1_base.py", plain("a1", None))
    write(tmp_path / "shared" / "versions" / "s1_shared.py", plain("s1", None, labels="shared"))
    write(tmp_path / "migrations" / "versions" / "b1_child.py", plain("b1", "a1", deps="shared"))
    layout = find_layout(ini, None)
    assert layout.version_locations == (
        tmp_path / "migrations" / "versions",
        tmp_path / "shared" / "versions",
    )
    graph = assert_agrees(ini)
    assert graph.heads == ("b1", "s1")
    assert graph.pending(()) == ["a1", "s1", "b1"]


def test_recursive_version_locations_reads_subfolders(tmp_path: Path) -> None:
    ini = make_project(tmp_path, "recursive_version_locations = true")
    versions = tmp_path / "migrations" / "versions"
    write(versions / "2024" / "q1" / "a1_base.py", plain("a1", None))
    write(versions / "2024" / "b1_next.py", plain("b1", "a1"))
    write(versions / "c1_top.py", plain("c1", "b1"))
    write(versions / "2025" / "__init__.py", "")
    write(versions / "2025" / "__pycache__" / "x.py", plain("cached", None))
    graph = assert_agrees(ini)
    assert set(graph.revisions) == {"a1", "b1", "c1"}
    assert graph.heads == ("c1",)


def test_recursive_is_exactly_true_as_for_alembic(tmp_path: Path) -> None:
    ini = make_project(tmp_path, "recursive_version_locations = True")
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "sub" / "b1_next.py", plain("b1", "a1"))
    assert not find_layout(ini, None).recursive
    assert set(assert_agrees(ini).revisions) == {"a1"}


def test_overlapping_locations_read_each_file_once(tmp_path: Path) -> None:
    ini = make_project(
        tmp_path,
        "recursive_version_locations = true",
        "path_separator = space",
        "version_locations = %(here)s/migrations/versions %(here)s/migrations/versions/sub",
    )
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_base.py", plain("a1", None))
    write(versions / "sub" / "b1_next.py", plain("b1", "a1"))
    with pytest.warns(UserWarning, match="loaded twice"):
        expected = alembic_view(ini)
    scripts = read_migration_scripts(ini)
    assert scripts.source == "static"
    assert (our_shape(scripts.graph), scripts.heads, scripts.graph.bases) == expected


def test_here_in_script_location_is_independent_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = make_project(tmp_path / "service")
    add_revision(tmp_path / "service", "a1", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scripts = read_migration_scripts(ini)
    assert scripts.script_location == tmp_path / "service" / "migrations"
    assert scripts.heads == ("a1",)


def test_relative_script_location_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = make_project(tmp_path / "service", script_location="migrations")
    add_revision(tmp_path / "service", "a1", None)
    monkeypatch.chdir(tmp_path / "service")
    assert read_migration_scripts(ini).heads == ("a1",)
    assert_agrees(ini)
    monkeypatch.chdir(tmp_path)  # as for Alembic: the folder is not found from here
    with pytest.raises(ConfigurationError, match="script_location"):
        read_migration_scripts(ini)


def test_migrations_dir_without_alembic_ini(tmp_path: Path) -> None:
    make_project(tmp_path)
    add_revision(tmp_path, "a1", None)
    add_revision(tmp_path, "b1", "a1")
    scripts = read_migration_scripts(tmp_path / "missing.ini", tmp_path / "migrations" / "versions")
    assert scripts.alembic_ini is None
    assert scripts.script_location == tmp_path / "migrations"
    assert (scripts.source, scripts.count, scripts.heads) == ("static", 2, ("b1",))


# -- histories Alembic refuses -------------------------------------------------------

REFUSED = {
    "duplicate revision id": ({"a1": plain("a1", None), "a2": plain("a1", None)}, "'a1'"),
    "unknown down_revision": ({"a1": plain("a1", None), "b1": plain("b1", "zz")}, "'zz'"),
    "unknown depends_on": ({"a1": plain("a1", None), "b1": plain("b1", "a1", deps="nope")}, "'nope'"),
    "empty down_revision": ({"a1": plain("a1", "")}, "'a1'"),
    "two-revision cycle": (
        {"a1": plain("a1", None), "c1": plain("c1", "d1"), "d1": plain("d1", "c1")},
        "'c1'",
    ),
    "self loop": ({"a1": plain("a1", None), "b1": plain("b1", ("a1", "b1"))}, "'b1'"),
    "dependency cycle": ({"a1": plain("a1", None, deps="b1"), "b1": plain("b1", "a1")}, "'a1'"),
    "depends on itself": ({"a1": plain("a1", None, deps="a1")}, "'a1'"),
    "label used twice": ({"a1": plain("a1", None, "x"), "b1": plain("b1", "a1", "x")}, "'x'"),
    "label repeated in one revision": ({"a1": plain("a1", None, ("x", "x"))}, "'x'"),
    "label equal to a revision id": ({"a1": plain("a1", None, "b1"), "b1": plain("b1", "a1")}, "'b1'"),
    "illegal character": ({"a1": plain("a-1", None)}, "'a-1'"),
}


@pytest.mark.filterwarnings("ignore:Revision .* is not present:UserWarning")
@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_histories_alembic_refuses_raise_configuration_error(tmp_path: Path, case: str) -> None:
    files, named = REFUSED[case]
    ini = make_project(tmp_path)
    for name, text in files.items():
        write(tmp_path / "migrations" / "versions" / f"{name}_rev.py", text)
    with pytest.raises(ConfigurationError) as static:
        read_migration_scripts(ini)
    assert named in static.value.message
    with pytest.raises(ConfigurationError) as fallback:  # the Alembic path says so too
        graph_from_alembic(find_layout(ini, None))
    assert named.strip("'") in fallback.value.message
    if case != "duplicate revision id":  # Alembic only warns, then keeps one of the two
        with pytest.raises((CommandError, KeyError)):
            alembic_view(ini)


def test_cycle_through_a_merge_is_refused_although_alembic_misses_it(tmp_path: Path) -> None:
    # d1 merges a1 and c1, c1 comes after d1: Alembic builds the map and then
    # upgrades d1 before c1. dbinit refuses the history.
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    write(versions / "a1_rev.py", plain("a1", None))
    write(versions / "c1_rev.py", plain("c1", "d1"))
    write(versions / "d1_rev.py", plain("d1", ("a1", "c1")))
    write(versions / "e1_rev.py", plain("e1", "c1"))
    with pytest.raises(ConfigurationError, match=r"cycle.*'c1', 'd1'"):
        read_migration_scripts(ini)


def test_missing_alembic_ini_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as error:
        read_migration_scripts(tmp_path / "alembic.ini")
    assert "DBINIT_ALEMBIC_INI" in error.value.message
    assert str(tmp_path / "alembic.ini") in error.value.message


def test_missing_versions_folder_is_named(tmp_path: Path) -> None:
    ini = make_project(tmp_path, "path_separator = os", "version_locations = %(here)s/gone")
    with pytest.raises(ConfigurationError) as error:
        read_migration_scripts(ini)
    assert str(tmp_path / "gone") in error.value.message


def test_bad_path_separator_is_a_configuration_error(tmp_path: Path) -> None:
    ini = make_project(tmp_path, "path_separator = comma", "version_locations = a,b")
    with pytest.raises(ConfigurationError, match="path_separator"):
        read_migration_scripts(ini)


# -- no import -------------------------------------------------------------------------

PROBE = """
import json, sys
from pathlib import Path
from dbinit.revisions.scripts import read_migration_scripts
scripts = read_migration_scripts(Path(sys.argv[1]))
print(json.dumps({
    "source": scripts.source,
    "heads": list(scripts.heads),
    "readers": sorted(scripts.readers.values()),
    "loaded": sorted(
        m for m in ("alembic", "sqlalchemy", "mako", "dbinit.revisions.fallback") if m in sys.modules
    ),
}))
"""


def test_reading_imports_neither_the_migrations_nor_alembic(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    for rev, down in [("a1", None), ("b1", "a1")]:
        write(versions / f"{rev}_rev.py", plain(rev, down).replace(
            "from alembic import op\n", "from alembic import op\nraise SystemExit('imported!')\n"
        ))
    # and one the fast path declines: the ast path parses it, never runs it
    write(versions / "c1_rev.py", "raise SystemExit('imported!')\nrevision = 'c1'; down_revision = 'b1'\n")
    env = clean_env()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(ini)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "source": "static",
        "heads": ["c1"],
        "readers": ["ast", "fast", "fast"],
        "loaded": [],
    }
    assert "imported!" not in result.stdout + result.stderr

    # Alembic, by contrast, runs the files: the probe above is not vacuous.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from alembic.script import ScriptDirectory; "
         "ScriptDirectory(sys.argv[1]).get_heads()", str(tmp_path / "migrations")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert "imported!" in result.stderr
