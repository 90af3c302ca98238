"""The rollout simulation (issue 5, part 3): the rendered manifests, run as Kubernetes runs them.

Each scenario renders an overlay with the pinned ``kubectl kustomize`` (the
``tools`` fixture of tests/test_k8s_manifests.py), its ``database.env`` holding
the test database's URL, and hands the objects to tests/plugins/kubelet.py,
which resolves every container's environment as the kubelet does and runs the
containers' real ``command``/``args`` as local processes against the real
PostgreSQL: the Job and every replica at once, init containers in sequence,
the Job controller's ``backoffLimit``/``podFailurePolicy``/
``activeDeadlineSeconds``, readiness over HTTP on loopback. What it simplifies
(the image, listen ports, Kubernetes' delays scaled by 0.1) is in kubelet.py's
docstring; what only a real cluster proves is in k8s/README.md.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbinit.errors import ExitCode
from tests import test_k8s_manifests as manifests
from tests import test_verdicts as verdicts
from tests.plugins.databases import TestDatabase, run_dbinit
from tests.plugins.kubelet import (
    Cluster,
    ContainerConfigError,
    Image,
    PodInfo,
    Simulation,
    command_line,
    expand,
    free_port,
    remap_listen,
    resolve_env,
)

tools = manifests.tools  # the pinned kubectl (a session fixture)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "examples" / "bakery" / "Dockerfile"
HEAD = "8d3f6b2a9c11"
PREVIOUS = "5c9a1e7b2f40"
MIGRATIONS = 3
APPLIED = re.compile(r"\bMigration applied\b")
REPORT = re.compile(r"^(migrations_applied|up_to_date): ", re.MULTILINE)
#: Every wait is bounded; generous for 2 loaded cores.
DEADLINE = 90.0


# -- helpers ---------------------------------------------------------------------------


def render(tools: manifests.Tools, tmp_path: Path, url: str, *, overlay: str = "production",
           release: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Render an overlay from a copy of k8s/ whose database.env holds ``url``."""
    where = tmp_path / f"k8s-{overlay}-{release or 'as-committed'}"
    tree = manifests._copy_k8s(where)
    directory = tree / "overlays" / overlay
    (directory / "database.env").write_text(f"DATABASE_URL={url}\n")
    if release:
        manifests._bump_release(directory, release)
    return manifests._render(tools, directory, where / "rendered.yaml").docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def applied(text: str) -> int:
    return len(APPLIED.findall(text))


def container_port(docs: list[dict[str, Any]]) -> int:
    (app,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return int(app["ports"][0]["containerPort"])


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.fixture
def simulate(tmp_path: Path, project: Path) -> Iterator[Callable[..., Simulation]]:
    """Simulations, by default with a copy of examples/bakery as the image's /app; all shut down after."""
    made: list[Simulation] = []

    def make(docs: list[dict[str, Any]], app: Path = project) -> Simulation:
        image = Image.from_dockerfile(DOCKERFILE, {"/app": app, "/opt/venv": Path(sys.prefix)})
        sim = Simulation(docs, image=image, workdir=tmp_path / f"sim-{len(made)}")
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.shutdown()
    for sim in made:
        assert all(run.poll() is not None for run in sim.runs()), "a process outlived its simulation"
        assert not sim.errors, sim.errors


def previous_release(project: Path, tmp_path: Path) -> Path:
    """The image of the release before: the same service without its last migration."""
    previous = tmp_path / "previous-release"
    shutil.copytree(project, previous)
    (previous / "migrations" / "versions" / f"{HEAD}_add_order_status.py").unlink()
    return previous


# -- the scenarios -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", manifests.COMMITTED)
def test_clean_rollout_the_job_migrates_once_and_replicas_wait_then_become_ready(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, simulate: Any, overlay: str
) -> None:
    docs = render(tools, tmp_path, pg_database.url, overlay=overlay)
    sim = simulate(docs)
    sim.apply()
    (job,) = sim.jobs.values()
    (deployment,) = sim.deployments.values()
    assert deployment.replicas == one(docs, "Deployment")["spec"]["replicas"] >= 1
    sim.wait_until(
        lambda: job.condition and deployment.ready_replicas == deployment.replicas,
        DEADLINE, "the Job to finish and every replica to be Ready",
    )  # fmt: skip

    assert (job.condition, job.failed, len(job.pods)) == ("Complete", 0, 1), sim.describe()
    assert pg_database.versions() == {HEAD}
    (job_pod,) = job.pods
    migrate = job_pod.run_of("migrate")
    assert applied(migrate.log) == MIGRATIONS
    assert REPORT.search(migrate.log)[1] == "migrations_applied"  # type: ignore[index]
    # Exactly once across every process of the rollout: only the Job migrated.
    assert sum(applied(run.log) for run in sim.runs()) == MIGRATIONS

    port = container_port(docs)
    for pod in deployment.pods:
        assert [r.container for r in pod.runs] == ["wait-for-migrations", "app"], sim.describe()
        init = pod.run_of("wait-for-migrations")
        assert init.exit_code == 0
        # Nothing ordered the replicas after the Job: they started before it even
        # began to migrate, and their init container held them until it had.
        assert init.started < migrate.started < init.finished, sim.describe()
        for run in pod.runs:
            for line in ("Migration applied", "Running pending migrations", "Migration lock acquired"):
                assert line not in run.log, f"{pod.name}/{run.container} migrated:\n{run.log}"
        assert pod.last_probe[("app", "readiness")] == "200"
        assert http_get(pod.url("/readyz", port))[0] == 200
        assert http_get(pod.url("/livez", port))[0] == 200
        status, body = http_get(pod.url("/", port))
        assert status == 200 and HEAD in body


def test_two_releases_jobs_at_once_both_succeed_and_migrate_once(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, simulate: Any
) -> None:
    current = render(tools, tmp_path, pg_database.url)
    following = render(tools, tmp_path, pg_database.url, release="1-4-3")
    names = {one(current, "Job")["metadata"]["name"], one(following, "Job")["metadata"]["name"]}
    assert len(names) == 2, "one Job per release"
    sim = simulate(current + following)
    sim.apply(kinds={"Job"})
    assert set(sim.jobs) == names
    sim.wait_until(lambda: all(j.condition for j in sim.jobs.values()), DEADLINE, "both Jobs to finish")

    for job in sim.jobs.values():
        assert (job.condition, job.failed, len(job.pods)) == ("Complete", 0, 1), sim.describe()
    logs = [job.pods[0].run_of("migrate").log for job in sim.jobs.values()]
    reports = sorted(REPORT.search(log)[1] for log in logs)  # type: ignore[index]
    assert reports == ["migrations_applied", "up_to_date"], sim.describe()
    assert sum(applied(log) for log in logs) == MIGRATIONS
    assert pg_database.versions() == {HEAD}


def test_a_job_whose_first_attempt_fails_is_retried_within_backoff_limit(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, project: Path, simulate: Any
) -> None:
    # The previous release migrated to the second revision; this release's only
    # migration alters `orders`, which a long transaction of the test keeps
    # locked, so the first attempt fails on DBINIT_DDL_LOCK_TIMEOUT (exit 5).
    previous = previous_release(project, tmp_path)
    done = run_dbinit("migrate", cwd=previous, DATABASE_URL=pg_database.url, ENVIRONMENT="production")
    assert done.returncode == 0, done.output
    assert pg_database.versions() == {PREVIOUS}

    docs = render(tools, tmp_path, pg_database.url)
    one(docs, "ConfigMap")["data"]["DBINIT_DDL_LOCK_TIMEOUT"] = "1"  # as an overlay literal would
    backoff_limit = one(docs, "Job")["spec"]["backoffLimit"]
    assert backoff_limit >= 1
    sim = simulate(docs)
    with psycopg.connect(pg_database.parsed.asyncpg_dsn()) as blocker:
        blocker.execute("LOCK TABLE orders IN ACCESS SHARE MODE")  # held until rollback
        sim.apply(kinds={"Job"})
        (job,) = sim.jobs.values()
        sim.wait_until(lambda: job.failed or job.condition, DEADLINE, "the first attempt to fail")
        blocker.rollback()
    sim.wait_until(lambda: job.condition, DEADLINE, "the Job to finish")

    assert (job.condition, job.failed, len(job.pods)) == ("Complete", 1, 2), sim.describe()
    first, second = job.pods
    failed = first.run_of("migrate")
    assert failed.exit_code == ExitCode.MIGRATION_FAILED, failed.log
    assert "lock timeout" in failed.log and applied(failed.log) == 0
    assert first.run_of("wait-for-database").exit_code == 0
    assert second.run_of("migrate").exit_code == 0
    assert applied(second.run_of("migrate").log) == 1
    # The replacement came after the controller's back-off (10 s, scaled), not at once.
    assert second.created - failed.finished >= 10 * sim.scale * 0.9  # type: ignore[operator]
    assert pg_database.versions() == {HEAD}


def test_a_missing_secret_keeps_every_pod_from_starting_and_the_database_untouched(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, simulate: Any
) -> None:
    docs = render(tools, tmp_path, pg_database.url)
    secret = one(docs, "Secret")
    # The Secret is not there (yet): a Helm pre-install hook before its Secret,
    # or a Secret managed elsewhere under another name.
    sim = simulate([d for d in docs if d is not secret])
    sim.apply()
    (job,) = sim.jobs.values()
    (deployment,) = sim.deployments.values()
    expected_pods = 1 + deployment.replicas
    sim.wait_until(
        lambda: len(sim.pods) == expected_pods and all(p.config_errors >= 3 for p in sim.pods),
        DEADLINE, "the kubelet to retry every pod's first container three times",
    )  # fmt: skip

    assert sim.runs() == [], "a container started without its Secret"
    for pod in sim.pods:
        ((container, (reason, message)),) = dict(pod.waiting).items()
        assert container in {"wait-for-database", "wait-for-migrations"}
        assert reason == "CreateContainerConfigError"
        assert message == f'secret "{secret["metadata"]["name"]}" not found'
        assert pod.phase == "Pending" and not pod.ready
    # Pending is not failed: the Job burns no retries while it waits.
    assert (job.condition, job.failed, len(job.pods)) == (None, 0, 1)
    assert pg_database.tables() == set()

    # Once the Secret exists, the kubelet's next retry starts them: the rollout completes.
    sim.cluster.put(secret)
    sim.wait_until(
        lambda: job.condition and deployment.ready_replicas == deployment.replicas,
        DEADLINE, "the rollout once the Secret exists",
    )  # fmt: skip
    assert (job.condition, job.failed, len(job.pods)) == ("Complete", 0, 1), sim.describe()
    assert pg_database.versions() == {HEAD}


def test_a_malformed_database_url_fails_the_job_at_once_through_pod_failure_policy(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, simulate: Any
) -> None:
    bad = "postgresql://x@:notaport/"
    docs = render(tools, tmp_path, bad)
    sim = simulate(docs)
    sim.apply()
    (job,) = sim.jobs.values()
    (deployment,) = sim.deployments.values()
    sim.wait_until(lambda: job.condition, DEADLINE, "the Job to fail")
    failed_at = time.time()

    assert (job.condition, job.reason) == ("Failed", "PodFailurePolicy"), sim.describe()
    (pod,) = job.pods
    (run,) = pod.runs  # the init container; `migrate` never ran
    assert (run.container, run.exit_code) == ("wait-for-database", ExitCode.USAGE_ERROR)
    assert "DATABASE_URL has a port but no name in the host" in run.log and "notaport" not in run.log
    # No retry burned: no second pod, even after twice the controller's first back-off.
    time.sleep(2 * 10 * sim.scale)
    assert len(job.pods) == 1 and job.failed == 1
    assert job.finished is not None and job.finished - job.started < 30, "not at once"

    # The replicas' init container exits 2 too, and the kubelet restarts it with
    # back-off (Init:CrashLoopBackOff): never Ready.
    sim.wait_until(
        lambda: all(any(r.exit_code == ExitCode.USAGE_ERROR for r in p.runs) for p in deployment.pods)
        and len(deployment.pods) == deployment.replicas,
        DEADLINE, "every replica's init container to exit 2",
    )  # fmt: skip
    for replica in deployment.pods:
        assert {r.container for r in replica.runs} == {"wait-for-migrations"}
        assert not replica.ready
    assert deployment.ready_replicas == 0
    assert failed_at - job.started < DEADLINE
    assert pg_database.tables() == set()


def test_active_deadline_seconds_bounds_the_job(
    tools: manifests.Tools, tmp_path: Path, simulate: Any
) -> None:
    # Nothing listens there: the init container would wait its whole --timeout (120 s).
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    docs = render(tools, tmp_path, url)
    one(docs, "Job")["spec"]["activeDeadlineSeconds"] = 3
    sim = simulate(docs)
    sim.apply(kinds={"Job"})
    (job,) = sim.jobs.values()
    sim.wait_until(lambda: job.condition, DEADLINE, "the Job's deadline")

    assert (job.condition, job.reason) == ("Failed", "DeadlineExceeded"), sim.describe()
    assert job.finished is not None and 3 <= job.finished - job.started < 3 + 10
    (pod,) = job.pods
    (run,) = pod.runs
    assert run.container == "wait-for-database"
    assert run.exit_code == 128 + 15, run.log  # dbinit's answer to SIGTERM (Interrupted)
    assert "Database not reachable yet" in run.log


# -- two releases with different migrations: what the simulation found ----------------------


def test_an_older_releases_job_after_a_newer_one_fails_once_and_says_why(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, project: Path, simulate: Any
) -> None:
    newer = simulate(render(tools, tmp_path, pg_database.url))
    newer.apply(kinds={"Job"})
    (new_job,) = newer.jobs.values()
    newer.wait_until(lambda: new_job.condition, DEADLINE, "the newer release's Job")
    assert new_job.condition == "Complete" and pg_database.versions() == {HEAD}

    older_docs = render(tools, tmp_path, pg_database.url, release="1-4-1")
    older = simulate(older_docs, app=previous_release(project, tmp_path))
    older.apply(kinds={"Job"})
    (old_job,) = older.jobs.values()
    older.wait_until(lambda: old_job.condition, DEADLINE, "the older release's Job")

    migrate = old_job.pods[0].run_of("migrate")
    assert pg_database.versions() == {HEAD}, "the older Job must not touch a newer database"
    assert migrate.exit_code != ExitCode.MIGRATION_FAILED, migrate.log
    assert len(old_job.pods) == 1, "no retry can make a database older: none must be burned"


def test_old_replicas_keep_serving_after_the_next_release_migrates(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, project: Path, simulate: Any
) -> None:
    old_docs = render(tools, tmp_path, pg_database.url, release="1-4-1")
    old = simulate(old_docs, app=previous_release(project, tmp_path))
    old.apply()
    (old_job,) = old.jobs.values()
    (service,) = old.deployments.values()
    old.wait_until(
        lambda: old_job.condition and service.ready_replicas == service.replicas,
        DEADLINE, "the previous release to be serving",
    )  # fmt: skip
    assert pg_database.versions() == {PREVIOUS}

    new = simulate(render(tools, tmp_path, pg_database.url))
    new.apply(kinds={"Job"})  # the new replicas are the rollout's business; watch the old ones
    (new_job,) = new.jobs.values()
    new.wait_until(lambda: new_job.condition, DEADLINE, "the new release's Job")
    assert new_job.condition == "Complete" and pg_database.versions() == {HEAD}
    migrated = time.monotonic()
    readiness = one(old_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    window = readiness["periodSeconds"] * readiness["failureThreshold"] + 5
    while time.monotonic() - migrated < window:
        not_ready = [pod.name for pod in service.pods if not pod.ready]
        assert not not_ready, (
            f"{not_ready} NotReady {time.monotonic() - migrated:.1f}s after the new release migrated; "
            f"last probes: {[pod.last_probe for pod in service.pods]}"
        )
        time.sleep(0.2)
    # the old replicas say why (DBINIT_ALLOW_AHEAD=compatible): the new revision is an expand
    port = container_port(old_docs)
    for pod in service.pods:
        status, body = http_get(pod.url("/readyz", port))
        assert (status, json.loads(body)["verdict"]) == (200, "ahead_compatible"), body


def test_a_contract_release_over_serving_old_replicas_is_refused_and_nothing_applied(
    tools: manifests.Tools, pg_database: TestDatabase, tmp_path: Path, project: Path, simulate: Any
) -> None:
    """Release N drops a column release N-1's replicas read: its Job refuses (exit 7, FailJob at once)."""
    old_docs = render(tools, tmp_path, pg_database.url, release="1-4-1")
    old = simulate(old_docs)
    old.apply()
    (old_job,) = old.jobs.values()
    (service,) = old.deployments.values()
    old.wait_until(
        lambda: old_job.condition and service.ready_replicas == service.replicas,
        DEADLINE, "release N-1 to be serving",
    )  # fmt: skip
    assert pg_database.versions() == {HEAD}

    new = simulate(render(tools, tmp_path, pg_database.url, release="1-5-0"),
                   app=verdicts.release(project, tmp_path, "release-n"))  # fmt: skip
    new.apply(kinds={"Job"})
    (new_job,) = new.jobs.values()
    new.wait_until(lambda: new_job.condition, DEADLINE, "release N's Job")
    assert (new_job.condition, new_job.reason) == ("Failed", "PodFailurePolicy"), new.describe()
    assert len(new_job.pods) == 1, "a refusal burns no retry"
    migrate = new_job.pods[0].run_of("migrate")
    assert migrate.exit_code == ExitCode.REFUSED, migrate.log
    assert f"contract revision {verdicts.CONTRACT}" in migrate.log
    for pod in service.pods:
        # names every old replica (a long pod name keeps its end: the session name has 63 bytes)
        assert f"{pod.name[-12:]} (heads {HEAD}" in migrate.log
    assert applied(migrate.log) == 0
    assert pg_database.versions() == {HEAD}, "nothing applied, not even the expand before it"
    port = container_port(old_docs)
    for pod in service.pods:
        status, body = http_get(pod.url("/readyz", port))
        assert (status, json.loads(body)["verdict"]) == (200, "at_head"), body


# -- the kubelet's rules, checked on their own ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "a"),
        ("x-$(A)-$(B)", "x-a-b b"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$a"),
        ("$$", "$"),
        ("$", "$"),
        ("a$b", "a$b"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("100$", "100$"),
    ],
)
def test_dollar_expansion_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b b"}) == expected


POD = PodInfo("p-1", "ns", {"app": "x"}, {}, "sa")


def _secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"kind": "Secret", "metadata": {"name": name, "namespace": "ns"}, "data": encoded}


def _configmap(name: str, **data: str) -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": data}


def test_env_resolution_precedence_expansion_and_optional_references() -> None:
    cluster = Cluster([_configmap("cm", A="from-cm", B="b"), _secret("s", URL="pg://u:p@h/d")])
    container = {
        "envFrom": [
            {"configMapRef": {"name": "cm"}},
            {"secretRef": {"name": "s"}, "prefix": "S_"},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "A", "value": "override-$(B)"},
            {"name": "EARLY", "value": "$(LATE)"},
            {"name": "LATE", "value": "late"},
            {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "URL"}}},
            {"name": "NOPE", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": True}}},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "no", "key": "x", "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "RAW", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "B"}}},
            {"name": "ESC", "value": "$$(A)"},
        ],
    }
    env = resolve_env(container, POD, cluster)
    assert env == {
        "A": "override-b", "B": "b", "S_URL": "pg://u:p@h/d", "EARLY": "$(LATE)", "LATE": "late",
        "URL": "pg://u:p@h/d", "POD": "p-1", "RAW": "b", "ESC": "$(A)",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"envFrom": [{"configMapRef": {"name": "absent"}}]}, 'configmap "absent" not found'),
        ({"envFrom": [{"secretRef": {"name": "absent"}}]}, 'secret "absent" not found'),
        ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]},
         'secret "absent" not found'),
        ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
         "couldn't find key k in Secret ns/s"),
        ({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]},
         "couldn't find key k in ConfigMap ns/cm"),
    ],
)  # fmt: skip
def test_a_missing_required_reference_is_a_config_error(entry: dict[str, Any], message: str) -> None:
    cluster = Cluster([_configmap("cm", A="a"), _secret("s", URL="u")])
    with pytest.raises(ContainerConfigError) as caught:
        resolve_env(entry, POD, cluster)
    assert str(caught.value) == message


def test_command_and_args_over_the_images_entrypoint_and_cmd(tmp_path: Path) -> None:
    image = Image({}, "/", ("tini", "--"), ("serve",), {})
    env = {"N": "3"}
    assert command_line({"command": ["a", "$(N)"], "args": ["$$(N)"]}, image, env) == ["a", "3", "$(N)"]
    assert command_line({"command": ["a"]}, image, env) == ["a"]  # the image's CMD is dropped
    assert command_line({"args": ["b"]}, image, env) == ["tini", "--", "b"]
    assert command_line({"command": [], "args": []}, image, env) == ["tini", "--", "serve"]
    bakery = Image.from_dockerfile(DOCKERFILE, {"/app": tmp_path, "/opt/venv": Path(sys.prefix)})
    assert bakery.cmd == ("uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1")
    assert bakery.workdir == "/app" and bakery.host_path("/app/alembic.ini") == f"{tmp_path}/alembic.ini"
    assert bakery.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert bakery.host_value(bakery.env["PATH"]).startswith(f"{sys.prefix}/bin:")


def test_only_the_listen_arguments_are_rewritten() -> None:
    argv = ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000", "--root-path", "/8000"]
    assert remap_listen(argv, {8000: 40001}) == [
        "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "40001", "--root-path", "/8000"
    ]  # fmt: skip
    bind = remap_listen(["hypercorn", "--bind=0.0.0.0:8000"], {8000: 5})
    assert bind == ["hypercorn", "--bind=127.0.0.1:5"]
    with pytest.raises(Exception, match="cannot remap"):
        remap_listen(["uvicorn", "app:app"], {8000: 40001})
