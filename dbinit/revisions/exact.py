"""The exact static path: a revision file parsed with :mod:`ast`, never run.

For a file the fast path of :mod:`.reader` does not fully understand.
The module is parsed from its bytes, as the import Alembic runs would compile
it (BOM, ``# -*- coding: … -*-``, line endings and identifier normalisation
all as Python applies them). Its four names -- ``revision``,
``down_revision``, ``branch_labels``, ``depends_on`` -- are then read only if
the answer cannot depend on running the code:

- each is bound at most once in the module's scope, by a module-level plain
  (``a = b = literal`` included) or annotated assignment of a literal, which
  :func:`ast.literal_eval` then reads;
- nothing else in the module could bind them: no other binding of the name
  in module scope (``try``/``if``/``for``/``with`` bodies, imports, ``:=``,
  augmented assignment, unpacking, ``del``, ``def``/``class``, ``except …
  as``, match patterns), no ``global``/``nonlocal`` of them anywhere, no
  ``from … import *``, and none of the names through which code reaches a
  namespace (``globals``, ``exec``, ``sys.modules``, a module
  ``__getattr__``, … see :data:`DYNAMIC`).

Anything else raises :class:`NotExact`: only Alembic, importing the file,
can say what the names are.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

NAMES = frozenset({"revision", "down_revision", "branch_labels", "depends_on"})

#: Identifiers through which module code can reach a namespace -- its own, a
#: module's, a frame's -- without spelling one of the four names: the namespace
#: itself (``globals``, ``locals``, ``vars``, a frame's ``f_globals`` and
#: ``f_locals``, an object's ``__dict__``), code run from a string (``exec``,
#: ``eval``), the module object (``sys.modules``, ``import_module``,
#: ``__import__``, which ``setattr`` would need), the builtins those hide in
#: (``__builtins__``), or a module ``__getattr__`` (it answers for a name the
#: module does not bind). A file that names one is left to Alembic: as an
#: identifier, or as a string in a module that can turn a string into an
#: attribute (``getattr(builtins, "exec")``; a table named "modules" alone is
#: fine). The fast reader declines a file that holds any of these words.
DYNAMIC = (
    "globals",
    "locals",
    "vars",
    "f_globals",
    "f_locals",
    "__dict__",
    "exec",
    "eval",
    "modules",
    "import_module",
    "__import__",
    "__builtins__",
    "__getattr__",
)
_DYNAMIC = frozenset(DYNAMIC)
# What turns a string into an attribute.
_REFLECTION = frozenset({"getattr", "getattr_static", "attrgetter", "methodcaller", "__getattribute__"})

# Nodes whose body runs in a scope of its own: only some of their parts are
# evaluated in the module's scope.
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)

# The statements whose bodies run conditionally or repeatedly, for the reason given.
_BLOCKS: dict[type[ast.AST], str] = {
    ast.If: "if",
    ast.Try: "try",
    ast.TryStar: "try",
    ast.For: "for",
    ast.AsyncFor: "async for",
    ast.While: "while",
    ast.With: "with",
    ast.AsyncWith: "async with",
    ast.Match: "match",
}

_KINDS: dict[type[ast.AST], str] = {
    ast.Assign: "an assignment",
    ast.AnnAssign: "an annotated assignment",
    ast.AugAssign: "an augmented assignment",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.For: "a for loop",
    ast.AsyncFor: "a for loop",
    ast.withitem: "a with statement",
    ast.Delete: "a del statement (which unbinds it)",
    ast.Tuple: "unpacking",
    ast.List: "unpacking",
    ast.Starred: "unpacking",
    ast.Import: "an import",
    ast.ImportFrom: "an import",
    ast.alias: "an import",
    ast.FunctionDef: "a def",
    ast.AsyncFunctionDef: "a def",
    ast.ClassDef: "a class",
    ast.ExceptHandler: "an except clause",
    ast.MatchAs: "a match pattern",
    ast.MatchStar: "a match pattern",
    ast.MatchMapping: "a match pattern",
}

# Bindings that say "inside `if`" (not a for loop's own target, say).
_IN_BLOCKS = frozenset(
    {ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr, ast.Delete, ast.Tuple, ast.List, ast.Starred}
    | {ast.Import, ast.ImportFrom, ast.alias, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef}
)


class NotExact(Exception):
    """The file's four names cannot be known without running it (the reason is the message)."""


def literal_values(data: bytes) -> dict[str, object]:
    """The literal value of each of the four names the module binds, read without running it.

    A name the module never binds is absent from the result (Alembic reads
    it as None, or, for ``revision``/``down_revision``, decides what that
    means). Raises :class:`NotExact` when the file cannot be read this way.
    """
    tree = _parse(data)
    _refuse_reflection(tree)
    plain: dict[str, list[ast.expr]] = {}
    other: dict[str, str] = {}
    for name, value, kind in _module_bindings(tree):
        if value is None:
            other.setdefault(name, kind)
        else:
            plain.setdefault(name, []).append(value)
    if other:
        name, kind = next(iter(other.items()))
        raise NotExact(f"`{name}` is bound by {kind}")
    repeated = [name for name, values in plain.items() if len(values) > 1]
    if repeated:
        raise NotExact(f"`{repeated[0]}` is bound more than once")
    return {name: _literal(name, values[0]) for name, values in plain.items()}


def _parse(data: bytes) -> ast.Module:
    try:
        return ast.parse(data)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise NotExact(f"Python cannot parse it ({type(exc).__name__}: {exc})") from None


def _literal(name: str, value: ast.expr) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise NotExact(f"`{name}` is not a literal value") from None


def _module_bindings(tree: ast.Module) -> Iterator[tuple[str, ast.expr | None, str]]:
    """``(name, value, kind)`` for each binding of one of the four names in module scope.

    ``value`` is the assigned expression for a module-level plain or annotated
    assignment, else None (and ``kind`` says what binds it). Raises
    :class:`NotExact` for what could bind a name without naming it.
    """
    for statement in tree.body:
        targets = [t for t in getattr(statement, "targets", ()) if isinstance(t, ast.Name)]
        if isinstance(statement, ast.Assign) and len(targets) == len(statement.targets):
            for target in targets:
                if target.id in NAMES:
                    yield target.id, statement.value, "an assignment"
            yield from _bindings_in(statement.value, statement)
        elif (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.value is not None
        ):
            if statement.target.id in NAMES:
                yield statement.target.id, statement.value, "an annotated assignment"
            yield from _bindings_in(statement.annotation, statement)
            yield from _bindings_in(statement.value, statement)
        else:
            yield from _bindings_in(statement, tree)


def _bindings_in(root: ast.AST, root_parent: ast.AST) -> Iterator[tuple[str, None, str]]:
    """Bindings of the four names under ``root`` (evaluated in module scope), each as its kind.

    Walks the whole subtree (a ``global`` or ``globals()`` in a function body
    counts too) but reports a binding only where it lands in module scope.
    """
    stack: list[tuple[ast.AST, ast.AST, bool, str]] = [(root, root_parent, True, "")]
    while stack:
        node, parent, in_module, block = stack.pop()
        _refuse_dynamic(node)
        if in_module:
            name = _bound_name(node, parent)
            if name in NAMES:
                binder = type(parent if isinstance(node, ast.Name) else node)
                kind = _KINDS.get(binder, "a binding")
                yield name, None, f"{kind} inside `{block}`" if block and binder in _IN_BLOCKS else kind
        inner = _BLOCKS.get(type(node), block)
        children = [(child, node, scope, inner) for child, scope in _children(node, in_module)]
        stack.extend(reversed(children))  # in source order, so that the first binding is reported


def _refuse_dynamic(node: ast.AST) -> None:
    """Raise :class:`NotExact` if ``node`` could reach the names without spelling them."""
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        named = NAMES.intersection(node.names)
        if named:
            raise NotExact(f"`{min(named)}` is declared {type(node).__name__.lower()} in a function")
    elif isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
        raise NotExact("`from … import *` may bind any name")
    identifier = _identifier(node)
    if identifier in _DYNAMIC:
        raise NotExact(f"uses `{identifier}`, through which code can set a module's names")


def _refuse_reflection(tree: ast.Module) -> None:
    """Raise :class:`NotExact` for a word of DYNAMIC as a string where getattr & co. can use it."""
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in _DYNAMIC
    }
    if strings and any(_identifier(node) in _REFLECTION for node in ast.walk(tree)):
        raise NotExact(f"uses `{min(strings)}`, through which code can set a module's names")


def _identifier(node: ast.AST) -> str | None:
    """The identifier ``node`` names, if any."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, (*_FUNCTIONS, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.alias):
        return node.asname or node.name
    return None


def _bound_name(node: ast.AST, parent: ast.AST) -> str | None:
    """The name ``node`` binds in the scope it is evaluated in, if any."""
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load):
            return None
        if isinstance(parent, ast.AnnAssign) and parent.value is None:
            return None  # `revision: str` binds nothing
        return node.id
    if isinstance(node, (*_FUNCTIONS, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.alias):
        return node.asname or node.name.split(".")[0]
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return node.name
    if isinstance(node, ast.MatchMapping):
        return node.rest
    return None


def _children(node: ast.AST, in_module: bool) -> Iterator[tuple[ast.AST, bool]]:
    """The child nodes of ``node``, each with whether it is evaluated in module scope.

    A function's decorators, defaults and annotations are evaluated where it
    is defined, its body in a scope of its own; a class body has its own
    scope; a comprehension's targets are its own (an ``:=`` in it binds in
    the enclosing scope).
    """
    if isinstance(node, (*_FUNCTIONS, ast.Lambda)):
        evaluated_here = {id(n) for n in _definition_time_parts(node)}
        for child in ast.iter_child_nodes(node):
            yield child, in_module and id(child) in evaluated_here
    elif isinstance(node, ast.ClassDef):
        evaluated_here = {id(n) for n in (*node.decorator_list, *node.bases, *node.keywords)}
        for child in ast.iter_child_nodes(node):
            yield child, in_module and id(child) in evaluated_here
    elif isinstance(node, ast.comprehension):
        yield node.target, False
        for child in (node.iter, *node.ifs):
            yield child, in_module
    else:
        for child in ast.iter_child_nodes(node):
            yield child, in_module


def _definition_time_parts(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.AST]:
    """What runs when the ``def`` or ``lambda`` runs: decorators, defaults, annotations."""
    arguments = node.args
    parts: list[ast.AST] = [arguments]  # walked for defaults and annotations; `arg` nodes bind nothing
    if not isinstance(node, ast.Lambda):
        parts.extend(node.decorator_list)
        if node.returns is not None:
            parts.append(node.returns)
    return parts
