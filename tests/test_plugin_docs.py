"""docs/plugin_hooks.md cannot drift from dbinit.hookspecs, and no hook goes untested."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from dbinit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugin_hooks.md"
SECTION = re.compile(r"^### (dbinit_\w+)\((.*)\)\s*$", re.MULTILINE)


def _hookspecs() -> dict[str, list[str]]:
    """Every hook specification, with its argument names in order."""
    return {
        name: list(inspect.signature(function).parameters)
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, "dbinit_spec")
    }


def _documented() -> dict[str, list[str]]:
    text = DOCS.read_text()
    hooks_part = text[text.index("\n## Hooks\n"):]
    found: dict[str, list[str]] = {}
    for match in SECTION.finditer(hooks_part):
        assert match.group(1) not in found, f"{match.group(1)} is documented twice"
        found[match.group(1)] = [a.strip() for a in match.group(2).split(",") if a.strip()]
    return found


def test_every_hookspec_has_a_section_with_its_signature() -> None:
    specs = _hookspecs()
    documented = _documented()
    assert specs, "no hookspec found"
    assert sorted(set(specs) - set(documented)) == [], "hooks without a section in docs/plugin_hooks.md"
    assert sorted(set(documented) - set(specs)) == [], "sections naming a hook that does not exist"
    for name, arguments in specs.items():
        assert documented[name] == arguments, f"{name}: documented {documented[name]}, spec {arguments}"
        assert "settings" in arguments, f"{name} does not receive settings"


def test_every_hook_section_says_when_it_fires_and_what_it_returns() -> None:
    text = DOCS.read_text()
    sections = SECTION.split(text[text.index("\n## Hooks\n"):])[1:]
    for name, _arguments, body in zip(sections[::3], sections[1::3], sections[2::3], strict=True):
        assert "Called" in body, f"{name}: when it fires"
        assert re.search(r"Return", body), f"{name}: what its results mean"
        assert "```python" in body and "@hookimpl" in body, f"{name}: an example"
        spec = getattr(hookspecs, name)
        if spec.dbinit_spec.get("firstresult"):
            assert "first result" in body.lower(), f"{name} is firstresult: say what the first result means"


def test_every_hook_has_a_test_of_its_own() -> None:
    """Each hook's name is in the name of a test function somewhere in tests/."""
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    untested = [hook for hook in _hookspecs() if not any(hook in name for name in names)]
    assert untested == []


def test_hookspecs_state_the_call_order_once() -> None:
    doc = hookspecs.__doc__ or ""
    assert "Call order" in doc and "tryfirst" in doc and "last registered" in doc
    assert "docs/plugin_hooks.md" in doc
