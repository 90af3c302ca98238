"""``dbinit showmigrations``: every revision, applied ``[X]`` or pending ``[ ]``, with its message."""

from __future__ import annotations

import dataclasses
from typing import Any

from dbinit.facts import read_scripts, read_state
from dbinit.management.base import BaseCommand
from dbinit.revisions.docs import revision_doc
from dbinit.revisions.phases import RevisionPhase, revision_phases


@dataclasses.dataclass(frozen=True)
class ShownRevision:
    """One line of the listing (one object of the JSON ``revisions``)."""

    revision: str
    applied: bool
    current: bool
    head: bool
    down_revisions: tuple[str, ...]
    #: Alembic's ``doc``: the docstring's first paragraph, the ``-m`` message ("" if none).
    doc: str | None
    file: str | None
    phase: RevisionPhase

    def as_json(self) -> dict[str, object]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "phase"}
        return {
            **fields,
            "down_revisions": list(self.down_revisions),
            "phase": self.phase.phase,
            "phase_source": self.phase.source,
            "phase_reason": self.phase.reason,
            "compatible_since": self.phase.compatible_since,
        }

    def line(self) -> str:
        marks = [m for m, on in (("current", self.current), ("head", self.head)) if on]
        suffix = f"  ({', '.join(marks)})" if marks else ""
        doc = " ".join((self.doc or "").split())
        described = "  ".join(
            part for part in (self.revision, doc, self.file, self.phase.described) if part
        )
        return f" [{'X' if self.applied else ' '}] {described}{suffix}"


class Command(BaseCommand):
    help = (
        "List every revision in upgrade order with its message (Alembic's doc) and file: "
        "[X] applied, [ ] pending; current and head marked; each revision's phase (expand or "
        "contract, declared or inferred)."
    )
    has_format = True

    def handle(self, **options: Any) -> int:
        scripts = read_scripts(self.settings)
        phases = revision_phases(scripts)  # before the database: a wrong declaration is exit 2
        state = self.run(lambda _: read_state(self.settings, "showmigrations"))
        graph = scripts.graph
        current = set(state.versions)
        applied = graph.ancestors(current)
        rows = []
        for rev in graph.pending(()):
            path = graph.revisions[rev].path
            rows.append(
                ShownRevision(
                    revision=rev,
                    applied=rev in applied,
                    current=rev in current,
                    head=rev in graph.heads,
                    down_revisions=graph.revisions[rev].down_revisions,
                    doc=revision_doc(path) if path is not None else None,
                    file=path.name if path is not None else None,
                    phase=phases[rev],
                )
            )
        unknown = sorted(current - set(graph.revisions))
        if options["format"] == "json":
            self.write_json(
                {
                    "service": self.settings.service,
                    "revisions": [row.as_json() for row in rows],
                    "unknown_current": unknown,
                }
            )
            return 0
        self.stdout.write(f"{self.settings.service} ({self.settings.url.display_name})")
        for row in rows:
            self.stdout.write(row.line())
        if not rows:
            self.stdout.write(" (no migrations)")
        for rev in unknown:
            self.stdout.write(f" [?] {rev}  (current, not in these migrations)")
        return 0
