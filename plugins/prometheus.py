"""Prometheus metrics for dbinit: a service's verifications, a migration Job's run.

Not registered by default: ``DBINIT_PLUGINS=dbinit.plugins.prometheus``, with
``pip install 'dbinit-alembic[metrics]'`` (prometheus_client). It uses only
the public hooks (``dbinit_operation``, ``dbinit_verify_finished``,
``dbinit_migrate_finished``, ``dbinit_asgi_endpoints``), as a third party's
plugin would, and imports prometheus_client only once it has something to
record: with nothing configured it costs a service nothing.

Settings (environment ``DBINIT_METRICS_*``, or ``[tool.dbinit.metrics]`` in
``pyproject.toml`` with the lower-case names):

==============================  ==============================================
``DBINIT_METRICS_PATH``         the service's metrics endpoint on the ASGI gate
                                (e.g. ``/metrics``); unset, nothing is served
``DBINIT_METRICS_REGISTRY``     ``own`` (default): a registry of the plugin's,
                                holding dbinit's families only; ``default``:
                                prometheus_client's global ``REGISTRY``, so
                                the endpoint also serves the application's own
                                metrics (and the process collector), and an
                                application that already serves ``REGISTRY``
                                gets dbinit's families without a path of ours
``DBINIT_METRICS_PUSHGATEWAY``  the migration Job's Pushgateway (URL; a
                                ``user:password@`` in it is sent as basic auth)
``DBINIT_METRICS_TEXTFILE``     or a file for node-exporter's textfile collector
                                (``*.prom``), replaced atomically
``DBINIT_METRICS_PUSH_TIMEOUT`` seconds for the push (default 5)
==============================  ==============================================

In a service (the gate), families of the plugin's registry; a scrape reads
memory only, never the database:

- ``dbinit_verification_duration_seconds`` (histogram, ``operation`` =
  ``verify`` for the startup verification, ``readiness`` for the probe's re-checks),
- ``dbinit_verifications_total`` (counter, ``outcome`` = passed, failed,
  unreachable, error),
- ``dbinit_check_failures_total`` (counter, ``check`` = a check id),
- ``dbinit_ready`` (gauge: 1 after a passing verification, 0 otherwise),
- ``dbinit_revision_info`` (one series, replaced at each verification:
  ``current_revision``, ``head_revisions``).

In the migration Job (which ends before any scrape could see it), when the
``migrate`` operation ends, successful or not, pushed to the Pushgateway
(job ``dbinit_migrate``, grouping key ``service``; a PUT, so the group holds
the last run only) and/or written to the textfile:

- ``dbinit_migration_duration_seconds``, ``dbinit_migration_lock_wait_seconds``,
- ``dbinit_migration_revision_duration_seconds`` (gauge, ``revision``): one
  series per revision this run applied. A gauge, not a histogram: each
  revision runs once per run, a histogram of one observation says nothing its
  value does not, and the run's series replace the last run's;
- ``dbinit_migrations_applied`` (gauge),
- ``dbinit_migration_last_outcome`` (gauge 1, ``outcome`` = ``success`` or the
  exit code's name, e.g. ``migration_failed``) and ``dbinit_migration_exit_code``,
- ``dbinit_migration_end_timestamp_seconds``.

A push or a write that fails is logged as a warning naming the target (its
password redacted) and leaves the Job's exit code as it was: the migration's
outcome is the Job's, and a monitoring outage must neither fail a migration
that succeeded (a retried Job, a failed rollout) nor hide a failure's exit
code. Anything else the plugin raises is a bug in it (exit 1, named).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from dbinit import hookimpl
from dbinit.errors import DatabaseUnreachable, DbinitError, ExitCode
from dbinit.settings import PluginSettings, plugin_config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    from dbinit.report import MigrateResult, VerifyReport
    from dbinit.settings import Settings

#: The Pushgateway's job label for the migration Job's metrics.
PUSH_JOB = "dbinit_migrate"
#: Outcomes of ``dbinit_verifications_total``, all exported from the start (at 0).
OUTCOMES = ("passed", "failed", "unreachable", "error")
#: Seconds: a verification is one round trip (ms) unless the database is slow or far.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A revision recorded in the database is the database's content: capped in a label.
MAX_LABEL = 64


# -- settings ------------------------------------------------------------------------------------


class MetricsSettings(PluginSettings):
    """The plugin's options: ``DBINIT_METRICS_*`` and ``[tool.dbinit.metrics]`` (dbinit's helper)."""

    model_config = plugin_config("metrics")

    path: str | None = None
    registry: Literal["own", "default"] = "own"
    pushgateway: str | None = None
    textfile: Path | None = None
    push_timeout: float = Field(5.0, gt=0, le=300)

    @field_validator("path", "pushgateway", "textfile", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("path")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/' (e.g. /metrics)")
        return value


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """What the plugin was told (see the module docstring)."""

    path: str | None
    registry: Literal["own", "default"]
    pushgateway: str | None
    textfile: Path | None
    push_timeout: float

    @property
    def pushes(self) -> bool:
        return self.pushgateway is not None or self.textfile is not None


_config_lock = threading.Lock()
_configs: dict[Path, MetricsConfig] = {}


def load_config() -> MetricsConfig:
    """The plugin's settings, read once per working directory (``pyproject.toml`` is the cwd's).

    An invalid value is a configuration error (exit 2) naming ``DBINIT_METRICS_<OPTION>``.
    """
    where = Path.cwd()
    with _config_lock:
        if where not in _configs:
            _configs[where] = MetricsConfig(**MetricsSettings.load().model_dump())
        return _configs[where]


# -- the service's metrics ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServiceMetrics:
    """The gate's families, on one registry."""

    registry: CollectorRegistry
    duration: Histogram
    verifications: Counter
    check_failures: Counter
    ready: Gauge
    revision: Info

    @classmethod
    def on(cls, registry: CollectorRegistry) -> ServiceMetrics:
        from prometheus_client import Counter, Gauge, Histogram, Info

        made = cls(
            registry=registry,
            duration=Histogram("dbinit_verification_duration_seconds",
                               "Time a database verification took (verify: at startup; readiness: "
                               "the readiness probe's re-check)", ["operation"], buckets=BUCKETS,
                               registry=registry),
            verifications=Counter("dbinit_verifications_total", "Database verifications, by outcome",
                                  ["outcome"], registry=registry),
            check_failures=Counter("dbinit_check_failures_total",
                                   "Failed verification checks, by check id", ["check"], registry=registry),
            ready=Gauge("dbinit_ready", "1 if the last verification passed, else 0", registry=registry),
            revision=Info("dbinit_revision", "The database's current revision and the image's heads, "
                          "at the last verification that read them", registry=registry),
        )
        for outcome in OUTCOMES:
            made.verifications.labels(outcome)
        for operation in ("verify", "readiness"):
            made.duration.labels(operation)
        return made

    def finished(self, report: VerifyReport) -> None:
        self.ready.set(1 if report.ok else 0)
        for outcome in report.failed:
            self.check_failures.labels(outcome.check.id).inc()
        if report.database_read:
            current = (report.current_revision or "")[:MAX_LABEL]
            heads = ",".join(report.head_revisions)
            self.revision.info({"current_revision": current, "head_revisions": heads})

    def ended(
        self, operation: str, seconds: float, report: VerifyReport | None, exc: BaseException | None
    ) -> None:
        self.duration.labels(operation).observe(seconds)
        if exc is not None:
            outcome = "unreachable" if isinstance(exc, DatabaseUnreachable) else "error"
            self.verifications.labels(outcome).inc()
            self.ready.set(0)
        elif report is not None:
            self.verifications.labels("passed" if report.ok else "failed").inc()


@dataclasses.dataclass
class _Verification:
    """One verification in progress: its report once ``dbinit_verify_finished`` saw it."""

    report: VerifyReport | None = None


_service: ServiceMetrics | None = None
_service_lock = threading.Lock()
_verification: contextvars.ContextVar[_Verification | None] = contextvars.ContextVar(
    "dbinit_prometheus_verification", default=None
)


def service_metrics(config: MetricsConfig) -> ServiceMetrics:
    """The process's service metrics, made once (on the registry ``config`` names)."""
    global _service
    with _service_lock:
        if _service is None:
            from prometheus_client import REGISTRY, CollectorRegistry

            _service = ServiceMetrics.on(REGISTRY if config.registry == "default" else CollectorRegistry())
        return _service


@contextlib.contextmanager
def _verifying(metrics: ServiceMetrics, operation: str) -> Iterator[None]:
    current = _Verification()
    token = _verification.set(current)
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:  # recorded, then re-raised: the verification's failure stays its own
        metrics.ended(operation, time.perf_counter() - started, None, exc)
        raise
    finally:
        _verification.reset(token)
    metrics.ended(operation, time.perf_counter() - started, current.report, None)


# -- the migration Job's metrics ---------------------------------------------------------------


@dataclasses.dataclass
class JobRun:
    """One ``migrate`` run, as its operations report it."""

    config: MetricsConfig
    service: str
    started: float = dataclasses.field(default_factory=time.perf_counter)
    lock_wait: float | None = None
    revisions: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    applied: int | None = None

    def registry(self, seconds: float, exc: BaseException | None) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry, Gauge

        registry = CollectorRegistry()
        code, outcome = _exit_of(exc)

        def gauge(name: str, doc: str, value: float, **labels: str) -> None:
            made = Gauge(name, doc, list(labels), registry=registry)
            (made.labels(**labels) if labels else made).set(value)

        gauge("dbinit_migration_duration_seconds", "Time the last migrate run took, lock wait included",
              seconds)
        if self.lock_wait is not None:
            gauge("dbinit_migration_lock_wait_seconds", "Time the last migrate run waited for the "
                  "migration lock", self.lock_wait)
        revisions = Gauge("dbinit_migration_revision_duration_seconds", "Time each revision the last "
                          "migrate run applied took", ["revision"], registry=registry)
        for revision, taken in self.revisions:
            revisions.labels(revision[:MAX_LABEL]).set(taken)
        gauge("dbinit_migrations_applied", "Revisions the last migrate run applied (on a failure: those "
              "that ran before it, which the failing one's transaction may have rolled back)",
              self.applied if self.applied is not None else len(self.revisions))
        gauge("dbinit_migration_last_outcome", "1, with the last migrate run's outcome: success or the "
              "name of its exit code", 1, outcome=outcome)
        gauge("dbinit_migration_exit_code", "The exit code of the last migrate run", code)
        gauge("dbinit_migration_end_timestamp_seconds", "When the last migrate run ended (Unix time)",
              time.time())
        return registry


def _exit_of(exc: BaseException | None) -> tuple[int, str]:
    """The exit code a run ending with ``exc`` has, and its name for the outcome label."""
    if exc is None:
        return ExitCode.OK, "success"
    if isinstance(exc, DbinitError):
        code = int(exc.exit_code)
    elif isinstance(exc, KeyboardInterrupt):
        code = 130
    else:
        code = ExitCode.INTERNAL_ERROR
    try:
        return code, ExitCode(code).name.lower()
    except ValueError:
        return code, "interrupted" if code > 128 else f"exit_{code}"


_job: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar("dbinit_prometheus_job", default=None)


@contextlib.contextmanager
def _migrating(run: JobRun) -> Iterator[None]:
    token = _job.set(run)
    try:
        yield
    except BaseException as exc:  # exported, then re-raised: the run's failure and exit code stay its own
        _export(run, run.registry(time.perf_counter() - run.started, exc))
        raise
    finally:
        _job.reset(token)
    _export(run, run.registry(time.perf_counter() - run.started, None))


@contextlib.contextmanager
def _timed(record: Callable[[float], None]) -> Iterator[None]:
    """Record the body's duration when it ends without an exception."""
    started = time.perf_counter()
    yield
    record(time.perf_counter() - started)


def target_failures() -> tuple[type[BaseException], ...]:
    """What a push or a write may fail with that is the target's fault, not the plugin's."""
    import http.client

    return (OSError, ValueError, http.client.HTTPException)


def _export(run: JobRun, registry: CollectorRegistry) -> None:
    """Write the textfile, push to the Pushgateway; a failure of either is a warning, not an exit code."""
    from dbinit.logs import get_logger, redact_urls

    log = get_logger(run.service)
    config = run.config
    failures = target_failures()
    if config.textfile is not None:
        try:
            write_textfile(config.textfile, registry)
        except failures as exc:
            log.warning("Migration metrics not written to the textfile", target=str(config.textfile),
                        reason=f"{type(exc).__name__}: {exc}", setting="DBINIT_METRICS_TEXTFILE")
        else:
            log.info("Migration metrics written", target=str(config.textfile))
    if config.pushgateway is not None:
        target = redact_urls(config.pushgateway)
        try:
            push(config.pushgateway, registry, run.service, config.push_timeout)
        except failures as exc:
            log.warning("Migration metrics not pushed to the Pushgateway", target=target,
                        reason=redact_urls(f"{type(exc).__name__}: {exc}"),
                        setting="DBINIT_METRICS_PUSHGATEWAY")
        else:
            log.info("Migration metrics pushed", target=target, job=PUSH_JOB)


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """The exposition written to a temporary file beside ``path``, then renamed over it.

    node-exporter's textfile collector reads ``*.prom`` only, so it never sees the
    temporary file (``.name.*.tmp``) nor a half-written one.
    """
    import tempfile

    from prometheus_client import generate_latest

    body = generate_latest(registry)
    folder = path.parent
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # the collector usually runs as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # already renamed, or never written
            os.unlink(temporary)
        raise


def push(gateway: str, registry: CollectorRegistry, service: str, timeout: float) -> None:
    """PUT the registry to the Pushgateway's group ``job=dbinit_migrate, service=<service>``."""
    from urllib.parse import unquote, urlsplit

    from prometheus_client import push_to_gateway
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(gateway if "://" in gateway else f"http://{gateway}")
    handler: Callable[..., Callable[[], None]] = default_handler
    if parts.username is not None:
        username, password = unquote(parts.username), unquote(parts.password or "")
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port is not None else ""
        gateway = parts._replace(netloc=netloc).geturl()

        def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                    data: bytes) -> Callable[[], None]:
            return basic_auth_handler(url, method, timeout, headers, data, username, password)

    push_to_gateway(gateway, job=PUSH_JOB, registry=registry, grouping_key={"service": service},
                    timeout=timeout, handler=handler)


# -- the hooks ---------------------------------------------------------------------------------


@hookimpl
def dbinit_asgi_endpoints(settings: Settings) -> Mapping[str, Callable[..., Any]] | None:
    """The metrics endpoint (``DBINIT_METRICS_PATH``); also what turns the service's metrics on."""
    config = load_config()
    if config.path is None and config.registry != "default":
        return None
    metrics = service_metrics(config)
    if config.path is None:  # the application serves the default registry itself
        return None
    from prometheus_client import make_asgi_app

    return {config.path: make_asgi_app(registry=metrics.registry)}


@hookimpl
def dbinit_operation(
    operation: str, attributes: Mapping[str, str | int | float | bool], settings: Settings
) -> contextlib.AbstractContextManager[object] | None:
    if operation in ("verify", "readiness"):
        return _verifying(_service, operation) if _service is not None else None
    if operation == "migrate":
        config = load_config()
        return _migrating(JobRun(config, settings.service)) if config.pushes else None
    run = _job.get()
    if run is None:
        return None
    if operation == "lock_wait":
        return _timed(lambda seconds: setattr(run, "lock_wait", seconds))
    if operation == "revision":
        revision = str(attributes.get("revision", ""))
        return _timed(lambda seconds: run.revisions.append((revision, seconds)))
    return None


@hookimpl
def dbinit_verify_finished(report: VerifyReport) -> None:
    current = _verification.get()
    if current is not None:
        current.report = report
    if _service is not None:
        _service.finished(report)


@hookimpl
def dbinit_migrate_finished(result: MigrateResult) -> None:
    run = _job.get()
    if run is not None:
        run.applied = len(result.applied)
