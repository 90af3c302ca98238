"""``dbinit showmigrations``: every revision, applied ``[X]`` or pending ``[ ]``."""

from __future__ import annotations

from typing import Any

from dbinit.facts import read_scripts, read_state
from dbinit.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "List every revision in upgrade order: [X] applied, [ ] pending; current and head marked."
    )
    has_format = True

    def handle(self, **options: Any) -> int:
        scripts = read_scripts(self.settings)
        state = self.run(lambda _: read_state(self.settings, "showmigrations"))
        graph = scripts.graph
        current = set(state.versions)
        applied = graph.ancestors(current)
        order = graph.pending(())
        rows = [
            {
                "revision": rev,
                "applied": rev in applied,
                "current": rev in current,
                "head": rev in graph.heads,
                "down_revisions": list(graph.revisions[rev].down_revisions),
                "file": graph.revisions[rev].path.name if graph.revisions[rev].path else None,
            }
            for rev in order
        ]
        unknown = sorted(current - set(graph.revisions))
        if options["format"] == "json":
            self.write_json(
                {"service": self.settings.service, "revisions": rows, "unknown_current": unknown}
            )
            return 0
        self.stdout.write(f"{self.settings.service} ({self.settings.url.display_name})")
        for row in rows:
            marks = [m for m, on in (("current", row["current"]), ("head", row["head"])) if on]
            suffix = f"  ({', '.join(marks)})" if marks else ""
            self.stdout.write(
                f" [{'X' if row['applied'] else ' '}] {row['revision']}  {row['file']}{suffix}"
            )
        if not rows:
            self.stdout.write(" (no migrations)")
        for rev in unknown:
            self.stdout.write(f" [?] {rev}  (current, not in these migrations)")
        return 0
