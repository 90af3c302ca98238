"""The contract guard: ``migrate`` does not apply a contract revision under code it breaks.

Before a run that would apply a **contract** revision (its phase, from
:func:`dbinit.revisions.phases.revision_phases`), ``migrate`` lists in
``pg_stat_activity`` the live verification sessions of the same service
(named by :mod:`dbinit.sessions`: ``dbinit-ready:<service>@<pod>#<heads>``,
the gate's kept connection above all). A session whose image's heads do not
reach the revision's ``compatible_since`` (it is neither one of them nor an
ancestor of one) serves code that revision breaks. While there is one,
``migrate`` waits, polling, up to ``DBINIT_CONTRACT_WAIT`` seconds (default
0: it looks once), then refuses (exit 7, :class:`~dbinit.errors.Refused`)
naming the pods and their heads, before anything is applied.
``DBINIT_ALLOW_DESTRUCTIVE=true`` applies it anyway, with a warning.

A session whose heads this image does not know (cut to fit 63 bytes, or a
newer image) counts as older: the guard errs on refusing. SQLite has no
sessions to see: the guard says so and lets the run go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.errors import Refused
from dbinit.sessions import parse_session_name, service_tag

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.interrupts import RunControl
    from dbinit.lock import HeldLock
    from dbinit.revisions.phases import RevisionPhase
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings

#: The purposes of the sessions that serve code (not another job's or a stop's).
SERVING_PURPOSES = frozenset({"ready", "verify", "wait"})
#: Seconds between two looks while waiting for older sessions to end.
POLL_SECONDS = 0.5

_SESSIONS_QUERY = """
SELECT pid, application_name, coalesce(host(client_addr), 'local') AS client
  FROM pg_catalog.pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'dbinit-%'
 ORDER BY backend_start
"""


@dataclasses.dataclass(frozen=True)
class OlderSession:
    """A live session of this service whose code a pending contract revision breaks."""

    pid: int
    pod: str
    heads: tuple[str, ...]
    purpose: str
    #: the contract revision it cannot serve, and what that revision needs
    revision: str
    compatible_since: str

    def described(self) -> str:
        return (
            f"{self.pod or '?'} (heads {','.join(self.heads) or '?'}, dbinit-{self.purpose}, pid {self.pid})"
        )


def pending_contracts(scripts: MigrationScripts, pending: Sequence[str]) -> list[RevisionPhase]:
    """The contract revisions among ``pending``, in upgrade order."""
    from dbinit.revisions.phases import revision_phases

    phases = revision_phases(scripts)
    return [phases[r] for r in pending if r in phases and phases[r].phase == "contract"]


def older_sessions(
    rows: Sequence[tuple[int, str]],
    service: str,
    scripts: MigrationScripts,
    contracts: Sequence[RevisionPhase],
) -> list[OlderSession]:
    """Of ``rows`` (pid, application_name), the sessions of ``service`` each contract breaks (first one)."""
    graph = scripts.graph
    found: list[OlderSession] = []
    for pid, name in rows:
        tag = parse_session_name(name)
        if tag is None or tag.purpose not in SERVING_PURPOSES or tag.service != service_tag(service):
            continue
        reached = graph.ancestors(tag.heads) if all(h in graph for h in tag.heads) else set()
        for contract in contracts:
            if contract.compatible_since not in reached:
                found.append(OlderSession(pid, tag.pod, tag.heads, tag.purpose, contract.revision,
                                          contract.compatible_since))
                break
    return found


async def guard_contracts(
    settings: Settings,
    scripts: MigrationScripts,
    pending: Sequence[str],
    log: FilteringBoundLogger,
    held: HeldLock,
    control: RunControl,
) -> None:
    """Refuse (exit 7) to start applying ``pending`` while older code a contract breaks is connected."""
    contracts = pending_contracts(scripts, pending)
    if not contracts:
        return
    shown = [f"{c.revision} (compatible since {c.compatible_since})" for c in contracts]
    if settings.url.is_sqlite:
        log.warning(
            "Contract revision pending: on SQLite dbinit cannot see other processes' sessions, so it "
            "cannot tell whether older code still uses the database", revisions=shown,
        )
        return
    deadline = time.monotonic() + settings.contract_wait
    stopping = asyncio.ensure_future(control.wait())
    waited = False
    try:
        while True:
            rows = [(int(r["pid"]), str(r["application_name"])) for r in await held.fetch(_SESSIONS_QUERY)]
            older = older_sessions(rows, settings.service, scripts, contracts)
            if not older:
                if waited:
                    log.info("Older sessions gone: applying the contract revision(s)", revisions=shown)
                return
            sessions = [s.described() for s in older]
            if settings.allow_destructive:
                log.warning(
                    "Applying contract revision(s) while older code is connected "
                    "(DBINIT_ALLOW_DESTRUCTIVE=true)",
                    revisions=shown, sessions=sessions,
                )
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                first = older[0]
                raise Refused(
                    f"contract revision {first.revision} needs the code of {first.compatible_since} or "
                    f"later, but {len(older)} session(s) of service {settings.service!r} still run older "
                    "code: "
                    + "; ".join(sessions[:5]) + ("; …" if len(sessions) > 5 else "")
                    + "; nothing was applied",
                    hint="Deploy the release before it (its expand revisions) and let the old pods drain, "
                    "then run this job again; DBINIT_CONTRACT_WAIT=<seconds> waits for them, "
                    "DBINIT_ALLOW_DESTRUCTIVE=true applies it anyway.",
                )
            if not waited:
                log.warning(
                    "Older code is connected: waiting before the contract revision(s)",
                    revisions=shown, sessions=sessions, wait_s=round(remaining, 1),
                )
                waited = True
            await asyncio.wait({stopping}, timeout=min(POLL_SECONDS, remaining))
            control.raise_if_stopping("stopped while waiting for older sessions")
    finally:
        stopping.cancel()
