"""Stopping a migration cleanly on SIGTERM / SIGINT.

The signal handler only records the request. The migration then stops at the
first safe point: the statement Alembic is running is cancelled on the server
(``pg_cancel_backend`` of the migration sessions, found by their
``application_name``), its transaction rolls back, no further migration
starts, the lock is released, and the command exits 143 (SIGTERM) or 130
(SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import threading
import uuid
from collections.abc import Iterator

from dbinit.errors import Interrupted

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclasses.dataclass
class RunControl:
    """Shared between the event loop (signals, lock) and the migration thread."""

    session_tag: str = dataclasses.field(
        default_factory=lambda: f"dbinit-run:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    signum: int | None = None
    _stopped: asyncio.Event | None = None

    def request_stop(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self.stop.set()
        if self._stopped is not None:
            self._stopped.set()

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    async def wait(self) -> None:
        if self._stopped is None:
            self._stopped = asyncio.Event()
            if self.stop.is_set():
                self._stopped.set()
        await self._stopped.wait()

    def interrupted(self, what: str) -> Interrupted:
        signum = self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        return Interrupted(
            signum,
            f"{name} received: {what}",
            hint="The interrupted migration was rolled back and the lock released; "
            "run the migration job again.",
        )

    def raise_if_stopping(self, what: str) -> None:
        if self.stopping:
            raise self.interrupted(what)

    @contextlib.contextmanager
    def signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Route SIGTERM/SIGINT to :meth:`request_stop` (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, signum)
        try:
            yield
        finally:
            for signum in HANDLED_SIGNALS:
                loop.remove_signal_handler(signum)
