"""Revision phases: whether the previous release's code still works after a revision.

Each revision is an **expand** (the schema grows: the code of the revisions
before it keeps working) or a **contract** (something the older code may use
goes away: a column, a table, a name, a looser type). A revision says so
itself with two module-level literals, read statically like ``revision``::

    dbinit_phase = "expand"            # or "contract"
    dbinit_compatible_since = "ab12"   # optional: this revision or one of its ancestors

Otherwise its ``upgrade()`` is read with :mod:`ast` (never run) and classified
from its operations; the strictest operation wins, and anything that cannot
be classified counts as a contract.

``compatible_since`` is the oldest revision whose code still works on the
schema this revision leaves: the declared value; else, for a contract, the
revision itself; for an expand, its parents' (for several parents -- a merge,
or ``depends_on`` -- the one latest in upgrade order); for a root, itself.

Computed lazily, once per :class:`~dbinit.revisions.scripts.MigrationScripts`:
only ``migrate``, ``showmigrations`` and ``check`` need phases; ``verify``
reads ``compatible_since`` from the database's history and never gets here.
``dbinit manifest`` records them, computed at image build time; a fresh
manifest's are then used instead of reading the files again.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dbinit.errors import ConfigurationError

if TYPE_CHECKING:
    from dbinit.revisions.graph import RevisionGraph
    from dbinit.revisions.scripts import MigrationScripts

Phase = Literal["expand", "contract"]
PhaseSource = Literal["declared", "inferred"]

PHASE_NAME = "dbinit_phase"
COMPATIBLE_SINCE_NAME = "dbinit_compatible_since"
PHASES: tuple[Phase, ...] = ("expand", "contract")

#: How to override an inference, for messages.
DECLARE_HINT = (
    'If a revision is backward compatible after all, declare it at module level in its file: '
    'dbinit_phase = "expand" (and dbinit_compatible_since = "<revision>" for a contract whose '
    "older code stopped using what it drops)."
)


@dataclasses.dataclass(frozen=True)
class RevisionPhase:
    """The phase of one revision, and what decided it."""

    revision: str
    phase: Phase
    source: PhaseSource
    #: Resolved: the oldest revision whose code still works after this one.
    compatible_since: str
    #: "declared", or what decided it: "op.drop_column('user', 'age')",
    #: "cannot be classified: op.execute(<non-literal>)".
    reason: str
    #: Where (1-based) in the file, for inferred.
    line: int | None = None

    @property
    def described(self) -> str:
        """``expand (inferred: op.add_column(...))``, ``contract (declared)``."""
        if self.source == "declared":
            return f"{self.phase} (declared)"
        return f"{self.phase} (inferred: {self.reason})"


@dataclasses.dataclass(frozen=True)
class _Classified:
    """The phase of one ``upgrade()`` (or of one operation in it), before compatible_since."""

    phase: Phase
    reason: str
    line: int | None


@dataclasses.dataclass(frozen=True)
class _Declared:
    """The two literals a revision file declares (None: not declared)."""

    phase: Phase | None
    phase_line: int | None
    compatible_since: str | None
    compatible_since_line: int | None


def revision_phases(scripts: MigrationScripts) -> Mapping[str, RevisionPhase]:
    """Every revision's phase, computed once per ``scripts`` (cached on it).

    From the manifest when ``scripts`` came from a fresh one that records them
    (:mod:`.manifest`, written by this dbinit version with pglast installed or
    not alike), else from the files.

    Raises :class:`ConfigurationError` (exit 2), naming the file and line, for
    a ``dbinit_phase`` that is not "expand" or "contract", or a
    ``dbinit_compatible_since`` that is not this revision or an ancestor.
    """
    cached = scripts._phases
    if cached is None:
        recorded = scripts.manifest_phases
        if recorded is not None and recorded.applies():
            cached = recorded.build()  # from a fresh manifest: no file is read
        else:
            cached = compute_phases(scripts.graph)
        object.__setattr__(scripts, "_phases", cached)
    return cached


def compute_phases(graph: RevisionGraph) -> dict[str, RevisionPhase]:
    """The phases of every revision of ``graph``, reading each file (see :func:`revision_phases`)."""
    order = graph.pending(())
    position = {rev: i for i, rev in enumerate(order)}
    phases: dict[str, RevisionPhase] = {}
    for rev in order:
        revision = graph.revisions[rev]
        path = revision.path
        tree, problem = _parse(path)
        declared = _declared(tree, path) if tree is not None else _Declared(None, None, None, None)
        if declared.phase is not None:
            classified = _Classified(declared.phase, "declared", None)
            source: PhaseSource = "declared"
        else:
            classified = _classify_module(tree) if tree is not None else _Classified(
                "contract", f"cannot be classified: {problem}", None
            )
            source = "inferred"
        if declared.compatible_since is not None:
            since = declared.compatible_since
            if since not in graph.ancestors([rev]):
                assert path is not None  # declared: it was read from a file
                raise ConfigurationError(
                    f"{path}:{declared.compatible_since_line}: {COMPATIBLE_SINCE_NAME} = {since!r} is not "
                    f"revision {rev!r} nor one of its ancestors",
                    hint=f"Set {COMPATIBLE_SINCE_NAME} to {rev!r} or to the revision (before it) from "
                    "which the code works on this schema, or remove it",
                )
        elif classified.phase == "contract":
            since = rev
        else:
            parents = graph.parents(rev)
            since = (
                max((phases[p].compatible_since for p in parents), key=position.__getitem__)
                if parents
                else rev
            )
        phases[rev] = RevisionPhase(
            revision=rev,
            phase=classified.phase,
            source=source,
            compatible_since=since,
            reason=classified.reason,
            line=classified.line if source == "inferred" else None,
        )
    return phases


# -- reading the file ---------------------------------------------------------------------------


def _parse(path: Path | None) -> tuple[ast.Module | None, str]:
    """The module parsed (never run), or None and why not."""
    if path is None:
        return None, "no source file"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"the file cannot be read ({type(exc).__name__})"
    try:
        return ast.parse(data), ""
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        return None, f"Python cannot parse the file ({type(exc).__name__})"


def _declared(tree: ast.Module, path: Path | None) -> _Declared:
    """``dbinit_phase`` and ``dbinit_compatible_since``, validated, from module-level literals."""
    found: dict[str, tuple[object, int]] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
            value = statement.value
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            targets = [statement.target.id]
            value = statement.value
        else:
            continue
        for name in targets:
            if name not in (PHASE_NAME, COMPATIBLE_SINCE_NAME):
                continue
            where = f"{path}:{statement.lineno}"
            if name in found:
                raise ConfigurationError(
                    f"{where}: {name} is assigned more than once (first on line {found[name][1]})",
                    hint=f"Assign {name} once, at module level, to a string literal",
                )
            if value is None:
                continue  # `dbinit_phase: str` alone binds nothing
            try:
                literal = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise ConfigurationError(
                    f"{where}: {name} is not a string literal",
                    hint=f'dbinit reads {name} without running the file: write it as {name} = "..."',
                ) from None
            found[name] = (literal, statement.lineno)
    phase: Phase | None = None
    phase_line = since_line = None
    since: str | None = None
    if PHASE_NAME in found:
        value, phase_line = found[PHASE_NAME]
        if value == "expand" or value == "contract":
            phase = value
        else:
            raise ConfigurationError(
                f"{path}:{phase_line}: {PHASE_NAME} = {_shown(value)} must be \"expand\" or \"contract\"",
                hint='Write dbinit_phase = "expand" (older code still works after this revision) or '
                '"contract" (it may not), or remove it to let dbinit infer the phase',
            )
    if COMPATIBLE_SINCE_NAME in found:
        value, since_line = found[COMPATIBLE_SINCE_NAME]
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"{path}:{since_line}: {COMPATIBLE_SINCE_NAME} = {_shown(value)} is not a revision id",
                hint=f"Set {COMPATIBLE_SINCE_NAME} to a revision id (this one or an ancestor), or remove it",
            )
        since = value
    return _Declared(phase, phase_line, since, since_line)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


# -- classifying upgrade() ----------------------------------------------------------------------

#: Operations whose presence makes a revision a contract (the older code may use what they change).
_CONTRACT_OPS = frozenset(
{"drop_column", "drop_table", "rename_table", "drop_constraint"})
#: Operations that only add (older code ignores what they add).
_EXPAND_OPS = frozenset(
    {
        "create_table",
        "create_index",
        "drop_index",
        "bulk_insert",
        "create_foreign_key",
        "create_unique_constraint",
        "create_check_constraint",
        "create_primary_key",
        "create_exclude_constraint",
        "create_table_comment",
        "drop_table_comment",
    }
)
#: Calls on ``op`` that are not schema operations themselves.
_NEUTRAL_OPS = frozenset({"get_bind", "get_context", "batch_alter_table", "f", "inline_literal"})
_EXECUTE = frozenset({"execute", "exec_driver_sql"})
#: Statement-level calls that change nothing.
_HARMLESS_RECEIVERS = frozenset({"log", "logger", "logging", "LOG", "LOGGER"})
_HARMLESS_NAMES = frozenset({"print"})


def _classify_module(tree: ast.Module) -> _Classified:
    functions = {
        node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    upgrade = functions.get("upgrade")
    if upgrade is None:
        return _Classified("contract", "cannot be classified: no module-level upgrade()", None)
    found = list(_operations(upgrade, functions, {"op"}, set()))
    contract = [c for c in found if c.phase == "contract"]
    if contract:
        return min(contract, key=lambda c: c.line or 0)
    if found:
        return min(found, key=lambda c: c.line or 0)
    return _Classified("expand", "no operations", upgrade.lineno)


def _operations(
    function: ast.FunctionDef | ast.AsyncFunctionDef,
    functions: Mapping[str, ast.FunctionDef | ast.AsyncFunctionDef],
    receivers: set[str],
    visited: set[str],
) -> Iterator[_Classified]:
    """Every classified operation of ``function``, all branches of every ``if`` included.

    ``receivers``: names that stand for ``op`` (``op``, ``batch_op`` of a
    ``with op.batch_alter_table(...) as batch_op``). A call to another
    module-level function of the file is followed (once).
    """
    visited = visited | {function.name}
    receivers = set(receivers)
    nodes = list(ast.walk(function))  # walked once: the three passes below read the same nodes in order
    for node in nodes:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if _is_op_call(item.context_expr, receivers, "batch_alter_table") and isinstance(
                    item.optional_vars, ast.Name
                ):
                    receivers.add(item.optional_vars.id)
    statement_calls = {
        id(node.value) for node in nodes if isinstance(node, ast.Expr)
        and isinstance(node.value, (ast.Call, ast.Await))
    }
    for node in nodes:
        if isinstance(node, ast.Await) and id(node) in statement_calls:
            statement_calls.add(id(node.value))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
            func.value.id in receivers
        ):
            if func.attr not in _NEUTRAL_OPS:
                yield _classify_op(func.value.id, func.attr, node)
        elif isinstance(func, ast.Attribute) and func.attr in _EXECUTE:
            yield _classify_execute(f"{_render(func.value)}.{func.attr}", node)
        elif isinstance(func, ast.Name) and func.id in functions:
            if func.id not in visited:
                yield from _operations(functions[func.id], functions, receivers, visited)
        elif id(node) in statement_calls and not _harmless(func):
            yield _Classified("contract", f"cannot be classified: {_render(func)}(...)", node.lineno)


def _harmless(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _HARMLESS_NAMES
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in _HARMLESS_RECEIVERS


def _is_op_call(node: ast.expr, receivers: set[str], name: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in receivers
    )


def _classify_op(receiver: str, name: str, call: ast.Call) -> _Classified:
    line = call.lineno
    shown = _call_text(f"{receiver}.{name}", call)
    if name in _EXECUTE:
        return _classify_execute(f"{receiver}.{name}", call)
    if name in _CONTRACT_OPS:
        return _Classified("contract", shown, line)
    if name in _EXPAND_OPS:
        return _Classified("expand", shown, line)
    if name == "add_column":
        return _classify_add_column(shown, call)
    if name == "alter_column":
        return _classify_alter_column(shown, call)
    return _Classified("contract", f"cannot be classified: {receiver}.{name}(...)", line)


def _classify_add_column(shown: str, call: ast.Call) -> _Classified:
    """A nullable or server-defaulted column is an expand; a NOT NULL one without a default is not."""
    column = next((a for a in call.args if isinstance(a, ast.Call) and _called(a.func) == "Column"), None)
    if column is None:
        return _Classified("contract", f"cannot be classified: {shown} (not an sa.Column(...))", call.lineno)
    keywords = {k.arg: k.value for k in column.keywords if k.arg is not None}
    if any(k.arg is None for k in column.keywords):
        return _Classified("contract", f"cannot be classified: {shown} (**keywords)", call.lineno)
    if "server_default" in keywords and not _is_none(keywords["server_default"]):
        return _Classified("expand", shown, call.lineno)
    nullable = keywords.get("nullable")
    primary = keywords.get("primary_key")
    not_null = (
        _is_false(nullable) if nullable is not None else primary is not None and _is_true(primary)
    )
    if not_null:
        return _Classified("contract", f"{shown}: NOT NULL without a server_default", call.lineno)
    if nullable is not None and not _is_true(nullable):
        why = f"cannot be classified: {shown} (nullable is not a literal)"
        return _Classified("contract", why, call.lineno)
    return _Classified("expand", shown, call.lineno)


def _classify_alter_column(shown: str, call: ast.Call) -> _Classified:
    """Renaming, retyping, NOT NULL or a removed server default contract; the rest expands."""
    keywords = {k.arg: k.value for k in call.keywords if k.arg is not None}
    if any(k.arg is None for k in call.keywords):
        return _Classified("contract", f"cannot be classified: {shown} (**keywords)", call.lineno)
    if "new_column_name" in keywords:
        return _Classified("contract", f"{shown}: renames the column", call.lineno)
    if "type_" in keywords:
        return _Classified("contract", f"{shown}: changes the type", call.lineno)
    if "nullable" in keywords and not _is_true(keywords["nullable"]):
        return _Classified("contract", f"{shown}: sets NOT NULL", call.lineno)
    if "server_default" in keywords and _is_none(keywords["server_default"]):
        return _Classified("contract", f"{shown}: removes the server default", call.lineno)
    return _Classified("expand", shown, call.lineno)


def _classify_execute(callee: str, call: ast.Call) -> _Classified:
    """``op.execute("SQL")`` or ``op.execute(sa.text("SQL"))``: classified by its statements.

    With PostgreSQL's parser installed (the ``lint`` extra), by the same
    classification as ``dbinit lint`` (:mod:`dbinit.lint.classify`); without
    it, by a small tokenizer that errs towards contract.
    """
    sql = _sql_literal(call.args[0]) if call.args else None
    if sql is None:
        return _Classified("contract", f"cannot be classified: {callee}(<non-literal>)", call.lineno)
    parsed = _parsed_phase(callee, sql, call.lineno)
    if parsed is not None:
        return parsed
    statements = split_sql(sql)
    for statement in statements:
        phase, why = classify_sql(statement)
        if phase == "contract":
            return _Classified("contract", f"{callee}({_short(statement)!r}): {why}", call.lineno)
    # shown without comments and string contents, as classified
    return _Classified("expand", f"{callee}({_short('; '.join(statements))!r})", call.lineno)


def _parsed_phase(callee: str, sql: str, line: int) -> _Classified | None:
    """The phase of ``sql`` by PostgreSQL's parser; None when pglast is not installed."""
    from dbinit.lint import pglast_installed

    if not pglast_installed():
        return None
    from dbinit.lint.classify import classify_sql as parse_and_classify

    statements = parse_and_classify(sql)
    for statement in statements:
        if statement.parse_error is not None:
            return _Classified("contract", f"cannot be classified: {callee}({_short(statement.sql)!r})", line)
        if statement.phase == "contract":
            why = statement.reasons[0] if statement.reasons else statement.kind
            return _Classified("contract", f"{callee}({_short(statement.sql)!r}): {why}", line)
    return _Classified("expand", f"{callee}({_short('; '.join(s.sql for s in statements))!r})", line)


def _sql_literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and _called(node.func) == "text" and len(node.args) == 1:
        return _sql_literal(node.args[0])
    return None


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _render(node: ast.expr) -> str:
    return _short(ast.unparse(node), 40)


def _call_text(callee: str, call: ast.Call) -> str:
    """``op.drop_column('user', 'age')``: the callee and its first two literal arguments."""
    shown = [repr(a.value) for a in call.args[:2] if isinstance(a, ast.Constant)]
    more = len(call.args) > len(shown) or call.keywords
    return f"{callee}({', '.join(shown)}{', …' if more and shown else '…' if more else ''})"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- SQL ----------------------------------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def split_sql(sql: str) -> list[str]:
    """The statements of ``sql``: split on ``;`` outside quotes, dollar quotes and comments.

    Comments are dropped; quoted text is kept (as ``''`` for a string literal, so that
    a keyword inside one is never taken for one).
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char == ";":
            statements.append("".join(current))
            current = []
            i += 1
        elif char == "'":
            end = i + 1
            while end < n:
                if sql[end] == "'" and sql[end + 1 : end + 2] == "'":
                    end += 2
                elif sql[end] == "'":
                    break
                else:
                    end += 1
            current.append("''")
            i = end + 1
        elif char == '"':
            end = sql.find('"', i + 1)
            end = n if end < 0 else end
            current.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            current.append(" ")
            i = n if end < 0 else end + 2
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, i)) is not None and not _in_word(sql, i):
            end = sql.find(tag.group(), tag.end())
            current.append("$$")
            i = n if end < 0 else end + len(tag.group())
        else:
            current.append(char)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def _in_word(sql: str, i: int) -> bool:
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")


_ADDITIVE = frozenset(
    {"INSERT", "UPDATE", "DELETE", "SELECT", "WITH", "COMMENT", "GRANT", "ANALYZE", "VACUUM", "SET",
     "REFRESH", "CREATE", "VALUES", "COPY", "REINDEX", "CLUSTER", "LOCK", "NOTIFY", "PRAGMA"}
)
_DESTRUCTIVE = frozenset({"TRUNCATE", "REVOKE", "RENAME"})


def classify_sql(statement: str) -> tuple[Phase, str]:
    """The phase of one SQL statement (comments and quoted text already removed), and why."""
    words = [w.upper() for w in _WORD.findall(statement)]
    if not words:
        return "expand", "empty"
    first = words[0]
    if first == "DROP":
        if words[1:2] == ["INDEX"]:
            return "expand", "DROP INDEX"
        return "contract", " ".join(words[:2])
    if first == "ALTER":
        for number, action in enumerate(_top_level_parts(statement)):
            action_words = [w.upper() for w in _WORD.findall(action)]
            # the first action starts with `ALTER TABLE` (or `ALTER TYPE`, ...): not its own words
            phase, why = _alter_action(action_words[2:] if number == 0 else action_words)
            if phase == "contract":
                return phase, why
        return "expand", "ALTER"
    if first in _DESTRUCTIVE:
        return "contract", first
    if first in _ADDITIVE:
        return "expand", first
    return "contract", f"cannot be classified: {first}"


def _alter_action(words: list[str]) -> tuple[Phase, str]:
    """One action of an ALTER statement (``t ADD COLUMN c int``, ``ALTER COLUMN c TYPE text``)."""
    text = " ".join(words)
    if "DROP NOT NULL" in text:
        return "expand", "DROP NOT NULL"
    if "DROP" in words:
        return "contract", "ALTER ... DROP"
    if "RENAME" in words:
        return "contract", "ALTER ... RENAME"
    if "SET NOT NULL" in text:
        return "contract", "SET NOT NULL"
    if "ALTER" in words and "TYPE" in words:
        return "contract", "ALTER ... TYPE"
    if "ADD" in words and "NOT NULL" in text and "DEFAULT" not in words and "CONSTRAINT" not in words:
        return "contract", "ADD ... NOT NULL without a DEFAULT"
    return "expand", "ALTER"


def _top_level_parts(statement: str) -> list[str]:
    """``statement`` split on commas outside parentheses (the actions of an ALTER TABLE)."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(statement):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(statement[start:i])
            start = i + 1
    parts.append(statement[start:])
    return parts
