"""dbinit's own lint rules (``dbinit.lint.builtin``), and the lint findings as a check.

The rules are contributed through ``dbinit_lint_rules``; :data:`lint_findings`
is the ``lint``-tagged check that ``dbinit check`` runs (never ``verify``), so
that ``dbinit check --tag lint --fail-level WARNING`` gates CI. Registered with
every run like the other built-ins; the rules' module and PostgreSQL's parser
are imported only when lint runs (``dbinit verify`` never loads them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dbinit import hookimpl
from dbinit.checks import CheckMessage, Facts, Info, check
from dbinit.lint import INSTALL_HINT, pglast_installed

if TYPE_CHECKING:
    from dbinit.lint.rules import LintRule

@hookimpl(tryfirst=True)  # dbinit's rules first
def dbinit_lint_rules() -> tuple[LintRule, ...]:
    from dbinit.lint.builtin import RULES, SUPPRESSION_RULES

    return (*RULES, *SUPPRESSION_RULES)


@check("dbinit.L000", "lint", tags=("lint",), requires_database=False, requires=("dbinit.E001",))
def lint_findings(facts: Facts) -> Iterator[CheckMessage]:
    """The lint rules' findings (as `dbinit lint` reports them), each under its rule's id."""
    if not pglast_installed():
        yield Info(
            "lint not run: PostgreSQL's parser (pglast) is not installed", hint=INSTALL_HINT, id="dbinit.L000"
        )
        return
    from dbinit.lint.run import lint
    from dbinit.pluginmanager import Registry

    registry = Registry.for_settings(facts.settings)
    report = lint(
        facts.settings,
        facts.scripts,
        None,
        registry.migration_contexts(facts.settings),
        rules=registry.lint_rules(facts.settings),
    )
    for finding in report.findings:
        message = finding.message
        yield CheckMessage(message.level, f"{finding.where}: {message.msg}", message.hint, message.id)
    since = f" after {report.since}" if report.since else ""
    yield Info(
        f"{len(report.revisions)} revision(s){since} linted: {len(report.findings)} finding(s), "
        f"{len(report.suppressed)} suppressed",
        id="dbinit.L000",
    )
