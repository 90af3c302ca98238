"""A revision manifest: the revision graph read once, at image build time.

``dbinit manifest`` writes ``.dbinit-revisions.json`` into the first versions
folder: every revision (id, down revisions, branch labels, dependencies,
file) and, for freshness, every candidate file's size and modification time.
At start-up ``verify`` stats the files (a few ms for a thousand) and, if
nothing changed, builds the graph from the manifest instead of reading every
file. Any difference -- a file added, removed, edited -- and the manifest is
ignored (the files are read, correctly, only slower) with a warning to
regenerate it. Alembic ignores the file (it is not a ``.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dbinit.revisions.graph import Revision, RevisionGraph
from dbinit.revisions.layout import AlembicLayout, revision_file_paths

MANIFEST_NAME = ".dbinit-revisions.json"
FORMAT = 1


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
    """Write the manifest (atomically) for a graph already validated; returns its path."""
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
    }
    target = manifest_path(layout)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=0, sort_keys=True), encoding="utf-8")
    os.replace(temporary, target)
    return target


class StaleManifest(Exception):
    """The manifest does not describe the files on disk any more."""


def load_manifest(layout: AlembicLayout) -> RevisionGraph | None:
    """The graph from a fresh manifest; None if there is none.

    Raises :class:`StaleManifest` when one exists but the files changed. The
    graph was validated when the manifest was written from these very files,
    so it is not validated again.
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
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StaleManifest(f"{path.name} has an unknown format")
    if document.get("files") != fingerprint(layout):
        raise StaleManifest(f"the revision files changed since {path.name} was written")
    try:
        return _graph_of(document, str(layout.version_locations[0]) + os.sep)
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
