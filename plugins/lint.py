"""dbinit's own lint rules (``dbinit.lint.builtin``), contributed through ``dbinit_lint_rules``.

Registered with every run, like the other built-ins; the rules' module is
imported only when lint runs (``dbinit verify`` never loads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbinit import hookimpl

if TYPE_CHECKING:
    from dbinit.lint.rules import LintRule


@hookimpl(tryfirst=True)  # dbinit's rules first
def dbinit_lint_rules() -> tuple[LintRule, ...]:
    from dbinit.lint.builtin import RULES, SUPPRESSION_RULES

    return (*RULES, *SUPPRESSION_RULES)
