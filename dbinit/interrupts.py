"""Stopping a migration cleanly: on SIGTERM / SIGINT, and when the migration lock is lost.

The signal handler only records the request. The migration then stops at the
first safe point: the statement Alembic is running is cancelled on the server
(``pg_cancel_backend`` of the migration sessions, found by their
``application_name``), its transaction rolls back, no further migration
starts, the lock is released, and the command exits 143 (SIGTERM) or 130
(SIGINT).

The lock's keeper (:mod:`dbinit.lock`) reports a lost lock the same way
(:meth:`RunControl.lock_lost`): the migration's sessions are then ended on the
server, the running revision rolls back, and the command exits 6
(:class:`~dbinit.errors.LockLost`). Because the keeper's heartbeat may be
seconds old, the migration thread also asks for a fresh check
(:meth:`RunControl.confirm_lock`) before each commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

from dbinit.errors import Interrupted, LockLost

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: A fresh check that the migration lock is held, callable from the migration
#: thread: None while it is, else how it was lost.
LockProbe = Callable[[], "str | None"]


@dataclasses.dataclass
class RunControl:
    """Shared between the event loop (signals, lock) and the migration thread.

    Two things stop a run, both through ``stop``: a signal (:meth:`request_stop`)
    and the loss of the migration lock (:meth:`lock_lost`, then ``lost`` says
    how). The thread checks at its safe points (:meth:`raise_if_stopping`,
    :meth:`confirm_lock`); the event loop waits for it (:meth:`wait`).
    """

    session_tag: str = dataclasses.field(
        default_factory=lambda: f"dbinit-run:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    signum: int | None = None
    #: how the migration lock was lost, once it was
    lost: str | None = None
    #: set by the lock's keeper while the lock is held (PostgreSQL)
    lock_probe: LockProbe | None = None
    _stopped: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def request_stop(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._set_stop()

    def lock_lost(self, detail: str) -> None:
        """The migration lock is no longer held (``detail``: how that showed). Any thread."""
        if self.lost is None:
            self.lost = detail
        self._set_stop()

    def _set_stop(self) -> None:
        self.stop.set()
        stopped, loop = self._stopped, self._loop
        if stopped is None or loop is None:
            return  # wait() has not run yet: it sees ``stop`` set when it does
        if _running_loop() is loop:
            stopped.set()
        else:  # the migration thread (or its own loop): asyncio.Event is not thread-safe
            loop.call_soon_threadsafe(stopped.set)

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    async def wait(self) -> None:
        if self._stopped is None:
            self._loop = asyncio.get_running_loop()
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

    def stop_error(
        self, what: str, *, revision: str | None = None, applied: Sequence[str] = ()
    ) -> Interrupted | LockLost:
        """The error that ends a stopped run: a signal's if one came, else the lost lock's.

        ``revision`` is the migration rolled back, ``applied`` those this run committed before.
        """
        if self.lost is not None and self.signum is None:
            return LockLost(self.lost, stopped=what, revision=revision, applied=applied)
        return self.interrupted(what + (f" (applied before: {', '.join(applied)})" if applied else ""))

    def raise_if_stopping(
        self, what: str, *, revision: str | None = None, applied: Sequence[str] = ()
    ) -> None:
        if self.stopping:
            raise self.stop_error(what, revision=revision, applied=applied)

    def confirm_lock(
        self, what: str, *, revision: str | None = None, applied: Sequence[str] = ()
    ) -> None:
        """Migration thread, before a commit: raise if stopping or the lock is not held *now*.

        The keeper's heartbeat may be seconds old, so this asks afresh
        (``lock_probe``, one round trip on the lock's own session).
        """
        self.raise_if_stopping(what, revision=revision, applied=applied)
        probe = self.lock_probe
        if probe is None:
            return
        detail = probe()
        if detail is not None:
            self.lock_lost(detail)
            self.raise_if_stopping(what, revision=revision, applied=applied)

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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread
        return None
