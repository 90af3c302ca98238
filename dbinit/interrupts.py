"""Stopping cleanly on SIGTERM / SIGINT: every long-running command.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from dbinit.errors import Interrupted

T = TypeVar("T")

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

    def interrupted(
        self,
        what: str,
        hint: str = "The interrupted migration was rolled back and the lock released; "
        "run the migration job again.",
    ) -> Interrupted:
        signum = self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        return Interrupted(signum, f"{name} received: {what}", hint=hint)

    def raise_if_stopping(self, what: str) -> None:
        if self.stopping:
            raise self.interrupted(what)

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
