"""A revision manifest: the revision graph read once, at image build time.

``dbinit manifest`` writes ``.dbinit-revisions.json`` into the first versions
folder: every revision (id, down revisions, branch labels, dependencies,
file), every revision's phase (:mod:`.phases`, format 2) and, for freshness,
every candidate file's size and modification time. At start-up ``verify``
stats the files (a few ms for a thousand) and, if nothing changed, builds the
graph from the manifest instead of reading every file. Any difference -- a
file added, removed, edited -- and the manifest is ignored (the files are
read, correctly, only slower) with a warning to regenerate it. Alembic
ignores the file (it is not a ``.py``).

The phases are checked for shape when the manifest is loaded but become
:class:`~dbinit.revisions.phases.RevisionPhase` objects only when asked for
(``migrate``, ``check``, ``showmigrations``; ``verify`` never is), and only if
the running process would compute the same ones: the same dbinit version, and
PostgreSQL's parser (pglast) installed or not as when the manifest was
written (raw SQL is classified with it when it is). Otherwise they are
computed from the files, as without a manifest. A format-1 manifest (no
phases) still gives the graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dbinit import __version__
from dbinit.revisions.graph import Revision, RevisionGraph
from dbinit.revisions.layout import AlembicLayout, revision_file_paths

if TYPE_CHECKING:
    from dbinit.revisions.phases import RevisionPhase

MANIFEST_NAME = ".dbinit-revisions.json"
#: 2: with the revisions' phases. 1 (the previous release's) is still read, for the graph.
FORMAT = 2
READABLE_FORMATS = (1, 2)

#: The phases part is stored by column, each in upgrade order, so that loading it (on verify's path,
#: which never uses it) creates few objects: ``phase`` and ``source`` are strings of one letter per
#: revision (e/c: expand/contract, d/i: declared/inferred); ``revision``, ``compatible_since``,
#: ``reason`` and ``line`` lists.
_PHASE_CODES = {"e": "expand", "c": "contract"}
_SOURCE_CODES = {"d": "declared", "i": "inferred"}


class RecordedPhases:
    """The phases a manifest records, checked for shape, not yet built into RevisionPhase objects.

    A plain class, as :class:`LoadedManifest`: this module is imported on verify's path, and
    creating a dataclass costs about a millisecond at import.
    """

    __slots__ = (
        "compatible_since", "dbinit_version", "line", "pglast", "phase", "reason", "revision", "source"
    )

    def __init__(
        self,
        revision: list[str],
        phase: str,
        source: str,
        compatible_since: list[str],
        reason: list[str],
        line: list[int | None],
        pglast: bool,
        dbinit_version: str,
    ) -> None:
        #: RevisionPhase's fields by column, in upgrade order (``phase``/``source``: one letter each).
        self.revision = revision
        self.phase = phase
        self.source = source
        self.compatible_since = compatible_since
        self.reason = reason
        self.line = line
        #: Whether pglast was installed (raw SQL classified by PostgreSQL's parser) when they were computed.
        self.pglast = pglast
        #: The dbinit version that computed them (its classification rules).
        self.dbinit_version = dbinit_version

    def applies(self) -> bool:
        """Whether this process would compute the same phases: same dbinit, pglast installed or not alike."""
        from dbinit.lint import pglast_installed

        return self.dbinit_version == __version__ and self.pglast == pglast_installed()

    def build(self) -> dict[str, RevisionPhase]:
        """The phases, in the order they were computed (upgrade order)."""
        from dbinit.revisions.phases import RevisionPhase

        phases, sources = _PHASE_CODES, _SOURCE_CODES
        return {
            revision: RevisionPhase(
                revision=revision,
                phase=phases[phase],  # type: ignore[arg-type]  # a Phase: the codes were checked on load
                source=sources[source],  # type: ignore[arg-type]
                compatible_since=since,
                reason=reason,
                line=line,
            )
            for revision, phase, source, since, reason, line in zip(
                self.revision, self.phase, self.source, self.compatible_since, self.reason, self.line,
                strict=True,
            )
        }


class LoadedManifest:
    """What a fresh manifest gives: the graph and, from format 2, the phases."""

    __slots__ = ("graph", "phases")

    def __init__(self, graph: RevisionGraph, phases: RecordedPhases | None) -> None:
        self.graph = graph
        self.phases = phases


def manifest_path(layout: AlembicLayout) -> Path:
    return layout.version_locations[0] / MANIFEST_NAME


def fingerprint(layout: AlembicLayout) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` for every candidate revision file.

    Paths are relative to the first versions folder, so the project can move.
    """
    base = str(layout.version_locations[0]) + os.sep
    prints: dict[str, list[int]] = {}
    stat = os.stat
    for path in revision_file_paths(layout):
        info = stat(path)
        key = path[len(base) :] if path.startswith(base) else os.path.relpath(path, base)
        prints[key] = [info.st_size, info.st_mtime_ns]
    return prints


def write_manifest(layout: AlembicLayout, graph: RevisionGraph) -> Path:
    """Write the manifest (atomically) for a graph already validated; returns its path.

    Computes every revision's phase from the files: raises
    :class:`~dbinit.errors.ConfigurationError` (exit 2, file and line named) for a
    wrong ``dbinit_phase`` / ``dbinit_compatible_since``, as ``migrate`` does, and
    then writes nothing.
    """
    from dbinit.lint import pglast_installed
    from dbinit.revisions.phases import compute_phases

    pglast = pglast_installed()
    phases = compute_phases(graph)
    revisions = list(graph.revisions.values())
    document = {
        "format": FORMAT,
        "files": fingerprint(layout),
        "heads": list(graph.heads),
        "bases": list(graph.bases),
        "labels": dict(graph.labels),
        "revisions": [
            {
                "revision": r.revision,
                "down_revisions": list(r.down_revisions),
                "branch_labels": list(r.branch_labels),
                "depends_on": list(r.depends_on),
                "path": os.path.relpath(r.file, layout.version_locations[0]) if r.file else None,
            }
            for r in revisions
        ],
        "phases": {
            "pglast": pglast,
            "dbinit": __version__,
            "revision": list(phases),
            "phase": "".join(p.phase[0] for p in phases.values()),
            "source": "".join(p.source[0] for p in phases.values()),
            "compatible_since": [p.compatible_since for p in phases.values()],
            "reason": [p.reason for p in phases.values()],
            "line": [p.line for p in phases.values()],
        },
    }
    target = manifest_path(layout)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=0, sort_keys=True), encoding="utf-8")
    os.replace(temporary, target)
    return target


class StaleManifest(Exception):
    """The manifest does not describe the files on disk any more."""


def load_manifest(layout: AlembicLayout) -> RevisionGraph | None:
    """The graph from a fresh manifest; None if there is none (see :func:`read_manifest`)."""
    loaded = read_manifest(layout)
    return loaded.graph if loaded is not None else None


def read_manifest(layout: AlembicLayout) -> LoadedManifest | None:
    """The graph and phases from a fresh manifest; None if there is none.

    Raises :class:`StaleManifest` when one exists but the files changed, or it
    is malformed. The graph was validated when the manifest was written from
    these very files, so it is not validated again; the phases' shape is.
    """
    path = manifest_path(layout)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StaleManifest(f"{path.name} cannot be read ({type(exc).__name__})") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise StaleManifest(f"{path.name} is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") not in READABLE_FORMATS:
        raise StaleManifest(f"{path.name} has an unknown format")
    if document.get("files") != fingerprint(layout):
        raise StaleManifest(f"the revision files changed since {path.name} was written")
    try:
        graph = _graph_of(document, str(layout.version_locations[0]) + os.sep)
        phases = _phases_of(document["phases"], graph) if document["format"] >= 2 else None
        return LoadedManifest(graph, phases)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Fresh fingerprint, broken body (edited by hand, truncated, another tool's).
        raise StaleManifest(
            f"{path.name} is malformed ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None


def _graph_of(document: dict[str, object], base: str) -> RevisionGraph:
    """The graph a manifest document describes; raises on any wrongly shaped part."""
    items = document["revisions"]
    if not isinstance(items, list):
        raise TypeError("revisions is not a list")
    for item in items:
        for key in ("down_revisions", "branch_labels", "depends_on"):
            if not isinstance(item[key], list) or not all(isinstance(v, str) for v in item[key]):
                raise TypeError(f"{key} of {str(item.get('revision'))[:40]!r} is not a list of strings")
        if not isinstance(item["revision"], str) or not isinstance(item["path"], (str, type(None))):
            raise TypeError("revision or path is not a string")
    heads, bases, labels = document["heads"], document["bases"], document["labels"]
    if not (isinstance(heads, list) and isinstance(bases, list) and isinstance(labels, dict)):
        raise TypeError("heads, bases or labels has the wrong type")
    revisions = {
        item["revision"]: Revision(
            revision=item["revision"],
            down_revisions=tuple(item["down_revisions"]),
            branch_labels=tuple(item["branch_labels"]),
            depends_on=tuple(item["depends_on"]),
            file=base + item["path"] if item["path"] else None,
        )
        for item in items
    }
    if not all(isinstance(h, str) and h in revisions for h in (*heads, *bases)):
        raise ValueError("a head or base is not one of its revisions")
    return RevisionGraph(revisions=revisions, heads=tuple(heads), bases=tuple(bases), labels=dict(labels))


def _phases_of(part: object, graph: RevisionGraph) -> RecordedPhases:
    """The phases part of a format-2 manifest, checked: one phase per revision of ``graph``, well shaped.

    Whole-column checks (a set, ``str.strip``) rather than a loop per revision: this runs on
    verify's path.
    """
    if not isinstance(part, dict):
        raise TypeError("phases is not an object")
    pglast, version = part["pglast"], part["dbinit"]
    revision, phase, source = part["revision"], part["phase"], part["source"]
    since, reason, line = part["compatible_since"], part["reason"], part["line"]
    if not (type(pglast) is bool and type(version) is str):
        raise TypeError("phases.pglast or phases.dbinit has the wrong type")
    count = len(graph.revisions)
    if not (
        type(revision) is list and type(since) is list and type(reason) is list and type(line) is list
        and type(phase) is str and type(source) is str
        and len(revision) == len(phase) == len(source) == len(since) == len(reason) == len(line) == count
    ):
        raise TypeError("a column of phases has the wrong type or length")
    known = graph.revisions.keys()
    if phase.strip("ec") or source.strip("di"):
        raise ValueError("phases.phase or phases.source has an unknown letter")
    # set(): a list or dict among them is a TypeError (malformed), as it should be
    if not (len(listed := set(revision)) == count and known >= listed and known >= set(since)):
        raise ValueError("phases.revision or phases.compatible_since are not the revisions, once each")
    if not all(type(r) is str for r in reason):
        raise TypeError("a phases.reason is not a string")
    if not all(n is None or type(n) is int for n in line):
        raise TypeError("a phases.line is not a line number")
    return RecordedPhases(revision, phase, source, since, reason, line, pglast, version)
