"""What dbinit's sessions are called: ``application_name`` carries the service, the pod and the image's head.

A service's verification sessions (``verify``, ``wait``, the gate's kept
``ready`` connection) are named ``dbinit-<purpose>:<service>@<pod>#<heads>``,
so that ``migrate``, before a contract revision, can see in
``pg_stat_activity`` which code still reads the database
(:mod:`dbinit.guard`). PostgreSQL keeps 63 bytes of a name: the service is
cut to :data:`SERVICE_BYTES` and the heads to :data:`HEADS_BYTES` (the same
cut in every release, so names still match), the pod keeps its last bytes
(the replica's random suffix).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence

#: PostgreSQL's NAMEDATALEN - 1.
NAME_BYTES = 63
SERVICE_BYTES = 20
HEADS_BYTES = 25


def _cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    part = data[len(data) - limit:] if keep_end else data[:limit]
    return part.decode("utf-8", "ignore")


def pod_name() -> str:
    """This process's pod (Kubernetes sets HOSTNAME to it), else the host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def session_name(purpose: str, service: str, heads: Sequence[str] = ()) -> str:
    """``dbinit-ready:orders@orders-7d9c-x2x7z#8d3f6b2a9c11``, within 63 bytes.

    Without ``heads`` (a session that has not read the migrations: ``wait``
    until reachable): ``dbinit-<purpose>:<service>``, as before.
    """
    front = f"dbinit-{purpose}:{_cut(service, SERVICE_BYTES)}"
    if not heads:
        return _cut(front, NAME_BYTES)
    back = "#" + _cut(",".join(heads), HEADS_BYTES)
    room = NAME_BYTES - len(front.encode("utf-8", "surrogatepass")) - len(back.encode()) - 1
    return f"{front}@{_cut(pod_name(), max(room, 0), keep_end=True)}{back}"


@dataclasses.dataclass(frozen=True)
class SessionTag:
    """A verification session's name, read back: who, where, and which code."""

    purpose: str
    service: str
    pod: str
    heads: tuple[str, ...]


def parse_session_name(name: str) -> SessionTag | None:
    """The parts of a name :func:`session_name` made with heads; None for any other name."""
    if not name.startswith("dbinit-") or "#" not in name or ":" not in name:
        return None
    purpose, _, rest = name.removeprefix("dbinit-").partition(":")
    who, _, heads = rest.rpartition("#")
    service, at, pod = who.rpartition("@")
    if not at or not heads:
        return None
    return SessionTag(purpose, service, pod, tuple(h for h in heads.split(",") if h))


def service_tag(service: str) -> str:
    """The service as it appears in a session name (cut as :func:`session_name` cuts it)."""
    return _cut(service, SERVICE_BYTES)
