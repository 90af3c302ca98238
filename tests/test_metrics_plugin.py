"""The Prometheus plugin (``dbinit.plugins.prometheus``) as a user runs it.

A service: the example app under a real uvicorn, ``/metrics`` scraped and
parsed with prometheus_client's own parser while the database goes from
ready to not ready to gone. A migration Job: ``dbinit migrate`` writing the
textfile, pushing to a Pushgateway stand-in (an HTTP server in the test), and
keeping its exit code when the target fails.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dbinit.errors import ExitCode
from tests.plugins.databases import SECRET, PostgresServer, Result, TestDatabase, add_revision, run_dbinit
from tests.test_asgi_servers import get, serving, start, wait_until

PLUGIN = {"DBINIT_PLUGINS": "dbinit.plugins.prometheus"}
REVISIONS = ["374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"]
#: Every label the plugin may put on a series (``le``: histogram buckets).
LABELS = {"operation", "outcome", "check", "current_revision", "head_revisions", "le", "revision"}


@dataclasses.dataclass(frozen=True)
class Scrape:
    """One exposition, parsed: ``value(name, **labels)`` of a sample, the series of a family."""

    text: str

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(s.labels), s.value) for family in text_string_to_metric_families(self.text)
                for s in family.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        found = [v for given, v in self.samples(name) if all(given.get(k) == w for k, w in labels.items())]
        assert len(found) == 1, (name, labels, self.samples(name))
        return found[0]

    def families(self) -> dict[str, str]:
        return {f.name: f.type for f in text_string_to_metric_families(self.text)}

    def label_names(self) -> set[str]:
        return {key for family in text_string_to_metric_families(self.text) for s in family.samples
                for key in s.labels}


#: What Prometheus asks for: OpenMetrics, else the text format.
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def scrape(port: int, accept: str = "") -> tuple[str, Scrape]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], Scrape(response.read().decode())


def test_a_service_exposes_its_verifications_on_metrics(
    project: Path, pg_database: TestDatabase, postgres_server: PostgresServer
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url).returncode == 0
    process, port = start("uvicorn-on", project, pg_database, DBINIT_METRICS_PATH="/metrics", **PLUGIN)
    try:
        assert wait_until(lambda: serving(port) or process.poll() is not None), "server did not start"
        assert process.poll() is None

        content_type, started = scrape(port)
        assert content_type == choose_encoder("")[1]  # prometheus_client's text exposition
        openmetrics_type, openmetrics = scrape(port, PROMETHEUS_ACCEPT)
        assert openmetrics_type == choose_encoder(PROMETHEUS_ACCEPT)[1]
        assert openmetrics_type.startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
        families = {f.name: f.type for f in openmetrics_families(openmetrics.text)}
        assert families == {
            "dbinit_verification_duration_seconds": "histogram",
            "dbinit_verifications": "counter",
            "dbinit_check_failures": "counter",
            "dbinit_ready": "gauge",
            "dbinit_revision": "info",
        }
        # the text format has no info type: a gauge, and each counter's and histogram's _created
        assert {name for name in started.families() if not name.endswith("_created")} == {
            "dbinit_verification_duration_seconds", "dbinit_verifications", "dbinit_check_failures",
            "dbinit_ready", "dbinit_revision_info",
        }
        assert started.value("dbinit_ready") == 1
        assert started.value("dbinit_verifications_total", outcome="passed") == 1  # the startup verification
        for outcome in ("failed", "unreachable", "error"):
            assert started.value("dbinit_verifications_total", outcome=outcome) == 0
        assert started.value("dbinit_verification_duration_seconds_count", operation="verify") == 1
        assert started.value("dbinit_verification_duration_seconds_sum", operation="verify") > 0
        assert started.samples("dbinit_check_failures_total") == []
        assert started.samples("dbinit_revision_info") == [
            ({"current_revision": "8d3f6b2a9c11", "head_revisions": "8d3f6b2a9c11"}, 1.0)
        ]
        # a scrape reads memory: it verifies nothing
        assert scrape(port)[1].value("dbinit_verification_duration_seconds_count", operation="readiness") == 0

        # another release's job moves the database to a revision this image does not know
        pg_database.sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        assert wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10)
        failed = scrape(port)[1]
        assert failed.value("dbinit_ready") == 0
        assert failed.value("dbinit_verifications_total", outcome="failed") >= 1
        assert failed.value("dbinit_check_failures_total", check="dbinit.E004") >= 1
        checks = {labels["check"] for labels, _ in failed.samples("dbinit_check_failures_total")}
        assert checks == {"dbinit.E004"}
        assert failed.value("dbinit_verification_duration_seconds_count", operation="readiness") >= 1
        # one series, replaced: the old revision is gone
        assert failed.samples("dbinit_revision_info") == [
            ({"current_revision": "ffffffffffff", "head_revisions": "8d3f6b2a9c11"}, 1.0)
        ]

        # the database disappears: the probe cannot reconnect, the scrape still answers
        postgres_server.drop(pg_database.parsed.database or "")
        assert wait_until(lambda: get(port, "/readyz")[1].get("status") == "unreachable", timeout=20), \
            get(port, "/readyz")
        gone = scrape(port)[1]
        assert gone.value("dbinit_ready") == 0
        assert gone.value("dbinit_verifications_total", outcome="unreachable") >= 1
        assert gone.value("dbinit_verifications_total", outcome="passed") >= 1
        assert gone.label_names() <= LABELS  # no database URL, no message, no host
        assert pg_database.parsed.database not in gone.text and "127.0.0.1" not in gone.text
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output


def test_without_a_metrics_path_nothing_is_served(project: Path, sqlite_database: TestDatabase) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    process, port = start("uvicorn-on", project, sqlite_database, **PLUGIN)
    try:
        assert wait_until(lambda: serving(port) or process.poll() is not None), "server did not start"
        assert get(port, "/metrics")[0] == 404  # the app's: FastAPI has no such route
    finally:
        process.kill()
        process.communicate(timeout=30)


def test_the_default_registry_serves_the_apps_metrics_too(
    project: Path, sqlite_database: TestDatabase
) -> None:
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url).returncode == 0
    process, port = start("uvicorn-on", project, sqlite_database, DBINIT_METRICS_PATH="/metrics",
                          DBINIT_METRICS_REGISTRY="default", **PLUGIN)
    try:
        assert wait_until(lambda: serving(port) or process.poll() is not None), "server did not start"
        metrics = scrape(port)[1]
        assert metrics.value("dbinit_ready") == 1
        assert metrics.samples("python_info")  # prometheus_client's default collectors: the app's registry
    finally:
        process.kill()
        process.communicate(timeout=30)


# -- the migration Job -----------------------------------------------------------------------------


def log_lines(result: Result) -> list[dict[str, object]]:
    """The job's JSON log lines."""
    found = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def logged(result: Result, event: str) -> dict[str, object]:
    matches = [line for line in log_lines(result) if line.get("event") == event]
    assert len(matches) == 1, result.stderr
    return matches[0]


def test_migrate_writes_the_textfile(project: Path, database: TestDatabase, tmp_path: Path) -> None:
    textfile = tmp_path / "collector" / "dbinit.prom"
    textfile.parent.mkdir()
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url,
                        DBINIT_METRICS_TEXTFILE=str(textfile), **PLUGIN)
    assert result.returncode == 0, result.output
    metrics = Scrape(textfile.read_text())
    durations = metrics.samples("dbinit_migration_revision_duration_seconds")
    assert sorted(labels["revision"] for labels, _ in durations) == REVISIONS
    assert all(seconds > 0 for _, seconds in durations)
    assert metrics.value("dbinit_migration_lock_wait_seconds") >= 0
    assert metrics.value("dbinit_migration_duration_seconds") >= sum(seconds for _, seconds in durations)
    assert metrics.value("dbinit_migrations_applied") == 3
    assert metrics.value("dbinit_migration_last_outcome", outcome="success") == 1
    assert metrics.value("dbinit_migration_exit_code") == 0
    assert metrics.value("dbinit_migration_end_timestamp_seconds") > 1.7e9
    assert [p.name for p in textfile.parent.iterdir()] == ["dbinit.prom"]  # no temporary file left
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert logged(result, "Migration metrics written")["target"] == str(textfile)

    # nothing to apply: the file is replaced, with no revision of the last run
    again = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url,
                       DBINIT_METRICS_TEXTFILE=str(textfile), **PLUGIN)
    assert again.returncode == 0, again.output
    metrics = Scrape(textfile.read_text())
    assert metrics.samples("dbinit_migration_revision_duration_seconds") == []
    assert metrics.value("dbinit_migrations_applied") == 0


def test_a_failed_migration_still_writes_the_textfile_and_keeps_its_exit_code(
    project: Path, pg_database: TestDatabase, tmp_path: Path
) -> None:
    add_revision(project, "f00000000bad", "8d3f6b2a9c11", "op.execute('SELECT * FROM no_such_table')")
    textfile = tmp_path / "dbinit.prom"
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=pg_database.url,
                        DBINIT_METRICS_TEXTFILE=str(textfile), **PLUGIN)
    assert result.returncode == ExitCode.MIGRATION_FAILED, result.output
    metrics = Scrape(textfile.read_text())
    assert metrics.value("dbinit_migration_last_outcome", outcome="migration_failed") == 1
    assert len(metrics.samples("dbinit_migration_last_outcome")) == 1
    assert metrics.value("dbinit_migration_exit_code") == 5
    # the revisions that ran before the failing one; the failing one has no duration
    ran = metrics.samples("dbinit_migration_revision_duration_seconds")
    assert sorted(labels["revision"] for labels, _ in ran) == REVISIONS


@dataclasses.dataclass
class Pushed:
    method: str
    path: str
    authorization: str
    body: str


class Pushgateway:
    """A Pushgateway stand-in on 127.0.0.1: records each request, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[Pushed] = []
        received, answer = self.received, status

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(Pushed(self.command, self.path, self.headers.get("Authorization") or "",
                                       self.rfile.read(length).decode()))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _record

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads what was received."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Pushgateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    with Pushgateway() as gateway:
        yield gateway


def test_migrate_pushes_to_the_pushgateway(
    project: Path, sqlite_database: TestDatabase, pushgateway: Pushgateway
) -> None:
    url = f"http://pusher:{SECRET}@127.0.0.1:{pushgateway.port}"
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url,
                        DBINIT_METRICS_PUSHGATEWAY=url, **PLUGIN)
    assert result.returncode == 0, result.output
    [pushed] = pushgateway.received
    assert (pushed.method, pushed.path) == ("PUT", "/metrics/job/dbinit_migrate/service/orders")
    assert pushed.authorization == "Basic " + base64.b64encode(f"pusher:{SECRET}".encode()).decode()
    metrics = Scrape(pushed.body)
    assert metrics.value("dbinit_migration_last_outcome", outcome="success") == 1
    assert sorted(labels["revision"] for labels, _ in
                  metrics.samples("dbinit_migration_revision_duration_seconds")) == REVISIONS
    assert metrics.value("dbinit_migration_lock_wait_seconds") >= 0
    assert logged(result, "Migration metrics pushed")["target"] == f"http://pusher:***@127.0.0.1:{pushgateway.port}"
    assert SECRET not in result.output


@pytest.mark.parametrize("target", ["refused", "http-500", "textfile-folder-missing"])
def test_a_failed_push_is_a_warning_and_keeps_the_exit_code(
    project: Path, sqlite_database: TestDatabase, tmp_path: Path, target: str
) -> None:
    from tests.test_asgi_servers import free_port

    with Pushgateway(status=500) as failing:
        if target == "textfile-folder-missing":
            setting, value = "DBINIT_METRICS_TEXTFILE", str(tmp_path / "missing" / "dbinit.prom")
            event, shown = "Migration metrics not written to the textfile", value
        else:
            port = free_port() if target == "refused" else failing.port
            setting, value = "DBINIT_METRICS_PUSHGATEWAY", f"http://pusher:{SECRET}@127.0.0.1:{port}"
            event, shown = "Migration metrics not pushed to the Pushgateway", f"http://pusher:***@127.0.0.1:{port}"
        ok = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url, **{setting: value},
                        **PLUGIN)
        add_revision(project, "f00000000bad", "8d3f6b2a9c11", "op.execute('SELECT * FROM no_such_table')")
        failed = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url, **{setting: value},
                            **PLUGIN)
    assert ok.returncode == 0, ok.output
    assert failed.returncode == ExitCode.MIGRATION_FAILED, failed.output
    for result in (ok, failed):
        warning = logged(result, event)
        assert warning["level"] == "warning"
        assert warning["target"] == shown and warning["setting"] == setting
        assert warning["reason"]
        assert SECRET not in result.output
    if target == "http-500":
        assert len(failing.received) == 2 and "500" in str(logged(ok, event)["reason"])
    else:
        assert failing.received == []


def test_a_bad_metrics_setting_is_named(project: Path, sqlite_database: TestDatabase) -> None:
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=sqlite_database.url,
                        DBINIT_METRICS_PUSH_TIMEOUT="-1", DBINIT_METRICS_PUSHGATEWAY="http://127.0.0.1:1",
                        **PLUGIN)
    assert result.returncode == 2, result.output  # a configuration error, not a bug in the plugin
    assert "DBINIT_METRICS_PUSH_TIMEOUT" in result.stderr and "dbinit.plugins.prometheus" in result.stderr
    assert sqlite_database.tables() == set()  # refused before anything ran
