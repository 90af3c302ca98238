"""Stopping cleanly: on SIGTERM / SIGINT (every long-running command), and when
the migration lock is lost (``migrate``).

:func:`run_until_stopped` runs a command's coroutine with its own handlers
for both signals, so a command stops on SIGTERM even as PID 1 of a
container (where the kernel drops a signal that has no handler) and exits
143 (SIGTERM) or 130 (SIGINT). By default a signal cancels the coroutine
(``wait``, ``verify``: nothing to save). A *graceful* run (``migrate``) only
records the request; the migration then stops at the first safe point: the
statement Alembic is running is cancelled on the server
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
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from dbinit.errors import Interrupted, LockLost

T = TypeVar("T")

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

    def interrupted(
        self,
        what: str,
        hint: str = "The lock was released (the message says what was rolled back); "
        "run the migration job again.",
    ) -> Interrupted:
        signum = self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        return Interrupted(signum, f"{name} received: {what}", hint=hint)

    def stop_error(
        self, what: str, *, revision: str | None = None, applied: Sequence[str] = (), remains: str = ""
    ) -> Interrupted | LockLost:
        """The error that ends a stopped run: a signal's if one came, else the lost lock's.

        ``revision`` is the migration rolled back, ``applied`` those this run
        committed before, ``remains`` what the stopped revision left behind
        when it was not rolled back as a whole.
        """
        if self.lost is not None and self.signum is None:
            return LockLost(self.lost, stopped=what, revision=revision, applied=applied, remains=remains)
        return self.interrupted(
            what
            + (f"; part of it remains: {remains}" if remains else "")
            + (f" (applied before: {', '.join(applied)})" if applied else "")
        )

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
    def signal_handlers(
        self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None] | None = None
    ) -> Iterator[None]:
        """Route SIGTERM/SIGINT to ``on_signal`` (default :meth:`request_stop`; main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, on_signal or self.request_stop, signum)
        try:
            yield
        finally:
            for signum in HANDLED_SIGNALS:
                loop.remove_signal_handler(signum)


def run_until_stopped(
    main: Callable[[RunControl], Coroutine[Any, Any, T]], *, graceful: bool = False, what: str = "stopped"
) -> T:
    """``asyncio.run(main(control))`` with SIGTERM/SIGINT handled (exit 143/130).

    Not ``graceful``: a signal cancels ``main`` and :class:`Interrupted` is
    raised. ``graceful``: a signal only sets ``control``; ``main`` is expected
    to stop at its next safe point and raise ``control.interrupted(...)``.
    """

    async def runner() -> T:
        control = RunControl()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            first = not control.stopping
            control.request_stop(signum)
            if first and not graceful:
                task.cancel()

        with control.signal_handlers(asyncio.get_running_loop(), on_signal):
            try:
                return await main(control)
            except asyncio.CancelledError:
                if control.stopping and not graceful:
                    raise control.interrupted(what, hint="Nothing was changed; run it again.") from None
                raise

    return asyncio.run(runner())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread
        return None
