"""The project's lint settings: ``[tool.dbinit.lint]`` in pyproject.toml (or ``DBINIT_LINT_*``).

::

    [tool.dbinit.lint]
    since = "4b1c0e2d9a77"            # lint only what comes after the last release (--from wins)
    disable = ["dbinit.L010"]         # rules off, project-wide
    levels = { "dbinit.L001" = "ERROR" }
    large_table_rows = 100000         # a table with fewer rows is small: no lock/rewrite/scan findings
    table_rows = { countries = 250, orders = 40000000 }

A table that ``table_rows`` does not list counts as large: lint cannot know
its size without a database, and a wrong guess the other way is an outage.
In the environment, list and table values are JSON
(``DBINIT_LINT_DISABLE='["dbinit.L010"]'``).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dbinit.checks import Level
from dbinit.settings import PluginSettings, plugin_config


class LintSettings(PluginSettings):
    model_config = plugin_config("lint")

    since: str | None = None
    disable: tuple[str, ...] = ()
    levels: dict[str, str] = Field(default_factory=dict)
    large_table_rows: int = Field(100_000, ge=0)
    table_rows: dict[str, int] = Field(default_factory=dict)

    @field_validator("since", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, value: dict[str, str]) -> dict[str, str]:
        for rule, level in value.items():
            Level.parse(level)  # ValueError names the level names
            if "." not in rule:
                raise ValueError(f"{rule!r} is not a rule id (like 'dbinit.L001')")
        return value

    def level(self, rule: str, default: Level) -> Level:
        """The level of ``rule``'s findings: the project's, else the rule's own."""
        return Level.parse(self.levels[rule]) if rule in self.levels else default

    def is_small(self, table: str) -> bool:
        """A table the project says has fewer than ``large_table_rows`` rows."""
        bare = table.lower().rsplit(".", 1)[-1]
        rows = self.table_rows.get(table, self.table_rows.get(bare))
        return rows is not None and rows < self.large_table_rows
