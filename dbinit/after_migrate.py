"""The after-migrate step: a project's own command, run by ``migrate`` under the migration lock.

A migration job often has more to do once the schema is at head: seed data
(the FastAPI full-stack template's ``python app/initial_data.py``), a cache
to warm, a superuser to create. ``DBINIT_AFTER_MIGRATE`` names one command
line for it; ``dbinit migrate`` runs it

- **after** the migration verified (nothing runs against a half-migrated
  schema), on every run, also when the database was already up to date:
  the step must be idempotent (a seed inserts what is missing, e.g.
  ``INSERT ... ON CONFLICT DO NOTHING``), and that is the project's contract;
- **while the migration lock is still held**, so that two jobs never run it
  at once and a service that waits for ``verify`` may start while it runs
  (``verify`` does not take the lock), but no other migration can;
- **not** when the database is ahead of this image (a newer release
  migrated it: its own job runs its own step), nor for ``--plan``/``--sql``.

It is one command, split like a shell does (:func:`shlex.split`) and run
without one. Several steps, pipes or ``&&`` are the project's choice to
make explicit: ``DBINIT_AFTER_MIGRATE="sh -c 'python seed.py && python warm.py'"``
(or a script of the project's).

It runs with the ``command`` strategy's machinery (:mod:`dbinit.command_runner`):
dbinit's environment with ``DATABASE_URL`` (the URL dbinit locked and
verified), ``PGAPPNAME`` and ``PGOPTIONS``; its stdout and stderr logged line
by line, redacted (event ``After-migrate step output``; never on dbinit's
stdout, which carries ``--format json``); SIGTERM/SIGINT forwarded to its
process group, its running statement cancelled on the server, SIGKILL after
``DBINIT_MIGRATE_COMMAND_GRACE`` seconds, then exit 143/130; a lost lock kills
it at once (exit 6).

A command that is not found or not executable is exit 2 before the lock is
taken. A step that fails is exit 5 (:class:`~dbinit.errors.AfterMigrateFailed`),
as a failed migration: the Job retries it, and the retry finds the database
up to date and runs the step again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbinit.command_runner import (
    OUTPUT_DRAIN_SECONDS,
    Child,
    Output,
    child_environment,
    end_leftover_sessions,
    redactor_for,
    resolve,
    shown,
    spawn,
    split_words,
    supervise,
)
from dbinit.errors import AfterMigrateFailed
from dbinit.interrupts import RunControl
from dbinit.report import AfterMigrateStep

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.settings import Settings

SETTING = "DBINIT_AFTER_MIGRATE"
STEP = Child(SETTING, "after-migrate step")


def step_words(settings: Settings) -> list[str] | None:
    """``DBINIT_AFTER_MIGRATE`` split into words; None when it is unset or blank (no step)."""
    text = settings.after_migrate
    if text is None or not text.strip():
        return None
    return split_words(text, SETTING)


def step_shown(settings: Settings) -> str | None:
    """The step's command line for a message or a plan (redacted), or None."""
    words = step_words(settings)
    return shown(words, redactor_for(settings)) if words is not None else None


def check_step(settings: Settings) -> None:
    """Before the lock: the step's command line splits and names an executable (else exit 2)."""
    words = step_words(settings)
    if words is not None:
        resolve(words, os.environ.get("PATH", os.defpath), redactor_for(settings), STEP)


def run_step(
    settings: Settings,
    log: FilteringBoundLogger,
    control: RunControl,
    server_version: str,
    *,
    applied: Sequence[str],
    current_revision: str | None,
) -> AfterMigrateStep:
    """Run the step to its end, in the migration thread, under the lock ``migrate`` holds.

    ``applied`` and ``current_revision`` are this run's, for the messages of
    a failure or a stop (the migrations stay applied either way).
    """
    words = step_words(settings)
    if words is None:
        raise AssertionError("run_step without DBINIT_AFTER_MIGRATE")
    redactor = redactor_for(settings)
    env = child_environment(settings, control, server_version)
    executable = resolve(words, env.get("PATH", os.defpath), redactor, STEP)
    command = shown(words, redactor)
    control.confirm_lock("stopped before the after-migrate step started", applied=applied)
    started = time.monotonic()
    process = spawn(executable, words, env, redactor, STEP)
    log.info("Running after-migrate step", command=command, pid=process.pid,
             session=control.session_tag if not settings.url.is_sqlite else None)
    output = Output(log, redactor, STEP.output_event)
    output.follow(process.stdout, "stdout")
    output.follow(process.stderr, "stderr")
    ending = supervise(process, control, settings.migrate_command_grace, log, STEP)
    if not output.drain(OUTPUT_DRAIN_SECONDS):
        log.warning("The after-migrate step's output is still open: a process it started outlives it")
    seconds = time.monotonic() - started
    # A stop that came after the step exited did not cut it short; one forwarded to it did.
    if ending.returncode == 0 and control.lost is None and ending.signalled is None:
        log.info("After-migrate step finished", command=command, duration_s=round(seconds, 2))
        return AfterMigrateStep(command=command, duration_ms=seconds * 1000)
    end_leftover_sessions(settings, control, log, STEP)
    kept = _kept(applied, current_revision)
    if control.stopping:
        raise control.stop_error(f"after-migrate step {command} stopped: it {ending.describe()}; {kept}")
    tail = output.last_lines()
    message = f"after-migrate step {command} {ending.describe()}; {kept}"
    if tail:
        message += f"\nIts last {len(tail)} line(s) of output:\n" + "\n".join(f"  | {line}" for line in tail)
    raise AfterMigrateFailed(
        message,
        hint="The whole output is in the log (event 'After-migrate step output'). The job retries it "
        "(exit 5): the step runs again on every `dbinit migrate`, so it must be idempotent",
    )


def _kept(applied: Sequence[str], current_revision: str | None) -> str:
    at = f"the database is at {current_revision}" if current_revision else "the database holds no revision"
    if applied:
        return f"the migrations of this run stay applied ({', '.join(applied)}; {at}, verified)"
    return f"{at} (up to date, verified)"
