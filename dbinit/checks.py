"""Checks: pure functions of the facts, returning Django-style messages.

A check is a :class:`Check` (id, name, tags, function) contributed by a plugin
through ``dbinit_checks``. Its function receives :class:`Facts` and returns
:class:`CheckMessage` objects; an empty result (or only messages below the
fail level) means it passed. Ids (``dbinit.E001``) never change once released
and can be silenced with ``DBINIT_SILENCED_CHECKS``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbinit.database import DatabaseState
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings
    from dbinit.verdict import Verdict


class Level(enum.IntEnum):
    """Django's check levels (logging's integer values)."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50

    @classmethod
    def parse(cls, name: str) -> Level:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown level {name!r}; use one of {', '.join(m.name for m in cls)}"
            ) from None


@dataclasses.dataclass(frozen=True)
class CheckMessage:
    """One finding: ``id`` like ``dbinit.E004``, a level, what and what to do."""

    level: Level
    msg: str
    hint: str = ""
    id: str = ""

    def is_serious(self, fail_level: Level = Level.ERROR) -> bool:
        return self.level >= fail_level


def Debug(msg: str, hint: str = "", id: str = "") -> CheckMessage:
    return CheckMessage(Level.DEBUG, msg, hint, id)


def Info(msg: str, hint: str = "", id: str = "") -> CheckMessage:
    return CheckMessage(Level.INFO, msg, hint, id)


def Warning(msg: str, hint: str = "", id: str = "") -> CheckMessage:
    return CheckMessage(Level.WARNING, msg, hint, id)


def Error(msg: str, hint: str = "", id: str = "") -> CheckMessage:
    return CheckMessage(Level.ERROR, msg, hint, id)


def Critical(msg: str, hint: str = "", id: str = "") -> CheckMessage:
    return CheckMessage(Level.CRITICAL, msg, hint, id)


def quoted(value: object, limit: int = 80) -> str:
    """A value read from the database, for a message.

    Strings are quoted (``repr`` when they hold control characters, so a tab
    or newline shows as such), NULL is ``NULL``, and anything longer than
    ``limit`` characters is cut there, with "…".
    """
    if value is None:
        return "NULL"
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "…"
        return f"'{text}'" if text.isprintable() else repr(text)
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything gathered before the checks run; checks only read it.

    ``state`` is None when no selected check needs the database (for example
    ``dbinit check --tag migrations``).
    """

    settings: Settings
    scripts: MigrationScripts
    state: DatabaseState | None

    @functools.cached_property
    def verdict(self) -> Verdict | None:
        """Which code the database still serves (:mod:`dbinit.verdict`); None without a state."""
        from dbinit.verdict import decide

        if self.state is None:
            return None
        return decide(self.state, self.scripts.graph, self.settings.heads)


CheckFunction = Callable[[Facts], Iterable[CheckMessage]]


@dataclasses.dataclass(frozen=True)
class Check:
    """A registered check.

    ``requires`` names checks that must pass first; if one failed, this check
    is reported as skipped instead of piling a second message on the first.
    """

    id: str
    name: str
    func: CheckFunction
    tags: tuple[str, ...] = ()
    requires_database: bool = True
    requires: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        if "." not in self.id:
            raise ValueError(f"check id {self.id!r} must look like 'package.E001'")


def check(
    id: str,
    name: str,
    *,
    tags: Sequence[str] = (),
    requires_database: bool = True,
    requires: Sequence[str] = (),
) -> Callable[[CheckFunction], Check]:
    """Decorator turning a function of :class:`Facts` into a :class:`Check`."""

    def wrap(func: CheckFunction) -> Check:
        return Check(
            id=id,
            name=name,
            func=func,
            tags=tuple(tags),
            requires_database=requires_database,
            requires=tuple(requires),
            description=(func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else "",
        )

    return wrap


class Status(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    SILENCED = "silenced"


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """The result of running one check."""

    check: Check
    status: Status
    messages: tuple[CheckMessage, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in (Status.PASSED, Status.SILENCED)

    @property
    def worst(self) -> CheckMessage | None:
        return max(self.messages, key=lambda m: m.level, default=None)

    @property
    def level(self) -> Level:
        worst = self.worst
        return worst.level if worst is not None else Level.INFO

    @property
    def message(self) -> str:
        worst = self.worst
        if worst is not None:
            return worst.msg
        if self.status is Status.SKIPPED:
            return "skipped: " + ", ".join(self.check.requires) + " did not pass"
        return self.check.description or "ok"

    @property
    def hint(self) -> str:
        worst = self.worst
        return worst.hint if worst is not None else ""

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.check.id,
            "name": self.check.name,
            "level": self.level.name,
            "ok": self.ok,
            "status": self.status.value,
            "message": self.message,
            "hint": self.hint,
        }


def select_checks(
    checks: Sequence[Check], tags: Sequence[str] = (), ids: Sequence[str] = ()
) -> list[Check]:
    """Checks having any of ``tags`` (all if none given) or one of ``ids``."""
    if not tags and not ids:
        return list(checks)
    return [c for c in checks if set(c.tags) & set(tags) or c.id in ids]


def run_checks(
    checks: Sequence[Check],
    facts: Facts,
    *,
    fail_level: Level = Level.ERROR,
    silenced: Iterable[str] = (),
) -> list[CheckOutcome]:
    """Run ``checks`` in order against ``facts``.

    Exceptions propagate (a check that raises is a bug, reported by the
    caller with the plugin's name).
    """
    silenced = set(silenced)
    outcomes: list[CheckOutcome] = []
    by_id: dict[str, CheckOutcome] = {}
    for item in checks:
        blocked = [r for r in item.requires if r in by_id and not by_id[r].ok]
        if blocked:
            outcome = CheckOutcome(item, Status.SKIPPED)
        else:
            messages = tuple(item.func(facts))
            for message in messages:
                if not isinstance(message, CheckMessage):
                    raise TypeError(
                        f"check {item.id} returned {type(message).__name__}, not CheckMessage"
                    )
            serious = [m for m in messages if m.is_serious(fail_level) and m.id not in silenced]
            if item.id in silenced:
                status = Status.SILENCED
            elif serious:
                status = Status.FAILED
            else:
                status = Status.PASSED
            outcome = CheckOutcome(item, status, messages)
        outcomes.append(outcome)
        by_id[item.id] = outcome
    return outcomes
