"""A kubelet, a Job controller and a Deployment controller in miniature, for tests.

``Simulation(objects, image=...)`` takes rendered manifests (the output of
``kubectl kustomize``) and runs the pods of their Jobs and Deployments as local
processes, with Kubernetes semantics:

- ``apply()`` starts every Job and every replica of every Deployment at the
  same moment: ``kubectl apply`` orders nothing.
- Each container's environment is resolved as the kubelet does
  (``envFrom`` first, then ``env`` in order; ``configMapRef``/``secretRef``,
  ``configMapKeyRef``/``secretKeyRef``, ``optional``; ``$(VAR)`` expansion of
  ``env`` values against the variables defined before, ``$$`` escaping;
  ``command``/``args`` combined with the image's ENTRYPOINT/CMD by the
  Kubernetes rules and expanded too). A missing non-optional reference leaves
  the container waiting in ``CreateContainerConfigError``: it never starts, and
  the kubelet retries, so a Secret created later is picked up.
- Init containers run one after the other, each to completion, before the
  main containers. With ``restartPolicy: Never`` a failed one fails the pod;
  otherwise it is restarted with the crash-loop back-off.
- A Job runs one pod at a time (parallelism 1, completions 1; a replacement is
  created only once the failed pod has terminated, as with
  ``podReplacementPolicy: Failed``). A failed pod is matched against
  ``podFailurePolicy`` (``FailJob``/``Ignore``/``Count``; ``onExitCodes`` looks
  at init and main containers, exit code 0 excluded), counted against
  ``backoffLimit`` and replaced after the controller's back-off (10 s, 20 s,
  ...). ``activeDeadlineSeconds`` bounds the whole Job.
- HTTP ``startupProbe``/``readinessProbe``/``livenessProbe`` on loopback; a pod
  is Ready when the readiness probes of all its containers pass.

The image is replaced, nothing else: ``Image.from_dockerfile`` reads the
Dockerfile's final stage (ENV, WORKDIR, ENTRYPOINT, CMD) over the base image's
PATH and LANG, and maps two of the image's directories to host directories:
``/app`` to a copy of the example service and ``/opt/venv`` to this
virtualenv. Container paths under them are rewritten in ``workingDir``, env
values and arguments. The process environment is the image's plus the
container's, never the host's.

Two more liberties, both needed to run many pods on one host quickly:

- Listen arguments are rewritten (only those): ``--host X`` becomes
  ``--host 127.0.0.1`` and ``--port <containerPort>`` (or ``--bind h:port``)
  becomes a free loopback port; probes go there.
- Kubernetes' own delays (probe periods and initial delays, the Job and
  crash-loop back-offs, grace periods, the kubelet's retry of a container it
  could not create) are multiplied by ``scale`` (``TIME_SCALE`` = 0.1). Budgets
  that race the workload's real time are not shrunk: a probe's
  ``failureThreshold`` is divided by ``scale`` so that period x threshold stays
  the manifest's, and ``activeDeadlineSeconds`` is in real seconds.

Not simulated: scheduling, image pulls, volumes (``/tmp`` is the host's),
security contexts, resources, Service environment variables, pod disruptions,
the TTL controller, rolling updates (every run is a first install). See
k8s/README.md, "What the simulation proves, and what only a real cluster can".
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

TIME_SCALE = 0.1
TICK = 0.05
LOOPBACK = "127.0.0.1"
KUBELET_RETRY = 10.0  # s: the kubelet's retry of a container it could not create
CRASH_BACKOFF = (10.0, 300.0)  # s: the kubelet's restart back-off, initial and cap
JOB_BACKOFF = (10.0, 360.0)  # s: the Job controller's back-off per failed pod, initial and cap
DEFAULT_GRACE = 30.0  # s: terminationGracePeriodSeconds
#: What python:3.11-slim's own config contributes (its PATH and LANG; its CMD).
PYTHON_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
PYTHON_BASE_CMD = ("python3",)
_LISTEN_FLAGS = ("--host", "--port", "--bind", "-b")
DEADLINE_EXCEEDED = ("DeadlineExceeded", "Job was active longer than specified deadline")
BACKOFF_LIMIT_EXCEEDED = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")


class ContainerConfigError(Exception):
    """The kubelet cannot build the container's config: ``CreateContainerConfigError``."""


class SimulationError(Exception):
    """The manifests use something this simulation does not implement."""


# -- the kubelet's rules, as pure functions ----------------------------------------


def expand(text: str, mapping: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (k8s.io/kubernetes third_party/forked/golang/expansion).

    ``$(VAR)`` becomes VAR's value if VAR is defined, else stays as written;
    ``$$`` is an escaped ``$``; any other ``$`` and an unclosed ``$(`` stay.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            advance = 1
            if following == "$":
                out.append("$")
            elif following == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    out.append(mapping.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + following)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def _valid_env_name(name: str) -> bool:
    # Kubernetes >= 1.32 (RelaxedEnvironmentVariableValidation): printable ASCII, no '='.
    return bool(name) and "=" not in name and all(" " <= ch <= "~" for ch in name)


@dataclasses.dataclass(frozen=True)
class PodInfo:
    """What a ``fieldRef`` can read."""

    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    service_account: str


class Cluster:
    """The API objects the kubelet reads (ConfigMaps, Secrets), by kind, namespace and name."""

    def __init__(self, objects: Iterable[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        for obj in objects:
            self.put(obj)

    @staticmethod
    def _key(kind: str, namespace: str | None, name: str) -> tuple[str, str, str]:
        return kind, namespace or "default", name

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._objects[self._key(obj["kind"], meta.get("namespace"), meta["name"])] = obj

    def delete(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.pop(self._key(kind, namespace, name), None)

    def get(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(self._key(kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [obj for (k, _, _), obj in self._objects.items() if k == kind]

    def data(self, kind: str, name: str, namespace: str) -> dict[str, str] | None:
        """A ConfigMap's ``data`` or a Secret's decoded ``data`` (+ ``stringData``), or None."""
        obj = self.get(kind, name, namespace)
        if obj is None:
            return None
        if kind == "ConfigMap":
            return {k: str(v) for k, v in (obj.get("data") or {}).items()}
        decoded = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {**decoded, **(obj.get("stringData") or {})}


def _field_ref(path: str, pod: PodInfo) -> str:
    fields = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "spec.serviceAccountName": pod.service_account,
        "spec.nodeName": "localhost",
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
    }
    if path in fields:
        return fields[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (pod.labels if match[1] == "labels" else pod.annotations).get(match[2], "")
    raise SimulationError(f"fieldRef {path!r} is not simulated")


def resolve_env(container: dict[str, Any], pod: PodInfo, cluster: Cluster) -> dict[str, str]:
    """The container's environment as the kubelet makes it; raises :class:`ContainerConfigError`."""
    env: dict[str, str] = {}
    ns = pod.namespace
    for source in container.get("envFrom") or []:
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else (
            "Secret", source["secretRef"])  # fmt: skip
        data = cluster.data(kind, ref["name"], ns)
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        for key, value in data.items():
            name = source.get("prefix", "") + key
            if _valid_env_name(name):  # the kubelet skips (and reports) the others
                env[name] = value
    for entry in container.get("env") or []:
        name = entry["name"]
        source = entry.get("valueFrom")
        if source is None:
            env[name] = expand(entry.get("value", ""), env)
            continue
        if "fieldRef" in source:
            env[name] = _field_ref(source["fieldRef"]["fieldPath"], pod)
            continue
        if "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
            ref = source["configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"]
            data = cluster.data(kind, ref["name"], ns)
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
            env[name] = data[ref["key"]]
            continue
        raise SimulationError(f"env {name}: valueFrom {sorted(source)} is not simulated")
    return env


def command_line(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
    """``command``/``args`` over the image's ENTRYPOINT/CMD, then ``$(VAR)``-expanded.

    command set: command + args (the image's ENTRYPOINT and CMD are ignored);
    only args: ENTRYPOINT + args; neither: ENTRYPOINT + CMD. Empty lists count
    as unset, as in the kubelet.
    """
    command, args = container.get("command") or [], container.get("args") or []
    argv = [*command, *args] if command else [*image.entrypoint, *(args or image.cmd)]
    if not argv:
        raise ContainerConfigError("no command specified")
    return [expand(arg, env) for arg in argv]


def remap_listen(argv: list[str], host_ports: dict[int, int]) -> list[str]:
    """Rewrite the listen address arguments (only those) to 127.0.0.1 and the host ports."""
    remapped: set[int] = set()

    def rewrite(flag: str, value: str) -> str:
        if flag == "--host":
            return LOOPBACK
        port = value.rpartition(":")[2] if flag in ("--bind", "-b") else value
        if port.isdigit() and int(port) in host_ports:
            remapped.add(int(port))
            new = str(host_ports[int(port)])
            return f"{LOOPBACK}:{new}" if flag in ("--bind", "-b") else new
        return value

    out: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag in _LISTEN_FLAGS:
            out.append(f"{flag}={rewrite(flag, value)}")
        elif i > 0 and argv[i - 1] in _LISTEN_FLAGS:
            out.append(rewrite(argv[i - 1], arg))
        else:
            out.append(arg)
    missing = set(host_ports) - remapped
    if missing:
        raise SimulationError(f"cannot remap containerPort {sorted(missing)}: no --port/--bind in {argv}")
    return out


# -- the image stand-in --------------------------------------------------------------


def _docker_expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), text)


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    parsed = [(parts[0].upper(), parts[1]) for parts in ([*line.split(None, 1), ""] for line in lines)]
    last_from = max(i for i, (instr, _) in enumerate(parsed) if instr == "FROM")
    return parsed[last_from + 1 :]


def _exec_form(rest: str) -> tuple[str, ...]:
    rest = rest.strip()
    return tuple(json.loads(rest)) if rest.startswith("[") else ("/bin/sh", "-c", rest)


@dataclasses.dataclass(frozen=True)
class Image:
    """An image's config, with some of its directories standing in for host ones."""

    env: dict[str, str]
    workdir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    mounts: dict[str, Path]

    @classmethod
    def from_dockerfile(
        cls,
        dockerfile: Path,
        mounts: dict[str, Path],
        base_env: dict[str, str] = PYTHON_BASE_ENV,
        base_cmd: tuple[str, ...] = PYTHON_BASE_CMD,
    ) -> Image:
        env, workdir, entrypoint, cmd = dict(base_env), "/", (), base_cmd
        for instr, rest in _instructions(dockerfile.read_text()):
            if instr == "ENV":
                tokens = shlex.split(rest)
                pairs = (
                    [tuple(t.split("=", 1)) for t in tokens]
                    if all("=" in t for t in tokens)
                    else [(tokens[0], " ".join(tokens[1:]))]
                )
                before = dict(env)
                env.update({k: _docker_expand(v, before) for k, v in pairs})
            elif instr == "WORKDIR":
                workdir = os.path.normpath(os.path.join(workdir, _docker_expand(rest.strip(), env)))
            elif instr == "ENTRYPOINT":
                entrypoint, cmd = _exec_form(rest), ()
            elif instr == "CMD":
                cmd = _exec_form(rest)
        return cls(env, workdir, entrypoint, cmd, mounts)

    def host_path(self, path: str) -> str:
        for prefix, host in self.mounts.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return str(host) + path[len(prefix) :]
        return path

    def host_value(self, value: str) -> str:
        """Map an absolute path, or a ':'-separated list of them (PATH); leave the rest."""
        if not value.startswith("/"):
            return value
        return ":".join(self.host_path(part) for part in value.split(":"))


# -- containers and pods -----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _suffix(n: int) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


@dataclasses.dataclass
class ContainerRun:
    """One start of one container: a local process."""

    pod: str
    container: str
    init: bool
    restart: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None
    started: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None
    exit_code: int | None = None
    reason: str = ""

    def poll(self) -> int | None:
        if self.exit_code is None and self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                self.finished = time.time()
                self.exit_code = code if code >= 0 else 128 - code  # killed by a signal: 128 + n
                self.reason = "Completed" if code == 0 else "Error"
        return self.exit_code

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` (the whole group, always)."""
        if self.proc is None:
            return
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.poll()


class _Probe:
    def __init__(self, kind: str, spec: dict[str, Any], container: dict[str, Any],
                 host_ports: dict[int, int], scale: float) -> None:  # fmt: skip
        if "httpGet" not in spec:
            raise SimulationError(f"{kind} probe {sorted(spec)}: only httpGet is simulated")
        self.kind = kind
        get = spec["httpGet"]
        port = get["port"]
        if isinstance(port, str) and not port.isdigit():
            named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            port = named[port]
        self.port = host_ports[int(port)]
        self.path = get.get("path", "/")
        self.period = spec.get("periodSeconds", 10) * scale
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.failure_threshold = math.ceil(spec.get("failureThreshold", 3) / scale)
        self.success_threshold = spec.get("successThreshold", 1)
        self.next_at = time.monotonic() + spec.get("initialDelaySeconds", 0) * scale
        self.failures = self.successes = 0

    def check(self) -> tuple[bool, str]:
        self.next_at = time.monotonic() + self.period
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"User-Agent": "kube-probe/1.34", "Accept": "*/*"})
            response = conn.getresponse()
            response.read()
            ok, detail = 200 <= response.status < 400, str(response.status)
        except OSError as exc:
            ok, detail = False, type(exc).__name__
        finally:
            conn.close()
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        return ok, detail


@dataclasses.dataclass
class _Main:
    spec: dict[str, Any]
    run: ContainerRun | None = None
    restarts: int = 0
    next_start: float = 0.0
    done: bool = False
    ready: bool = False
    started: bool = False  # the startup probe passed (or there is none)
    probes: list[_Probe] = dataclasses.field(default_factory=list)


class Pod:
    """One pod: a thread that plays the kubelet for it."""

    def __init__(self, sim: Simulation, name: str, namespace: str, template: dict[str, Any]) -> None:
        self.sim = sim
        self.name = name
        meta = template.get("metadata") or {}
        self.spec: dict[str, Any] = template["spec"]
        self.info = PodInfo(name, namespace, meta.get("labels") or {}, meta.get("annotations") or {},
                            self.spec.get("serviceAccountName", "default"))  # fmt: skip
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self.grace = self.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE) * sim.scale
        self.phase = "Pending"
        self.ready = False
        self.runs: list[ContainerRun] = []
        #: container name -> (reason, message) while it waits: CreateContainerConfigError, CrashLoopBackOff
        self.waiting: dict[str, tuple[str, str]] = {}
        self.config_errors = 0
        self.last_probe: dict[tuple[str, str], str] = {}
        self.host_ports = {
            int(p["containerPort"]): free_port() for c in self.spec["containers"] for p in c.get("ports", [])
        }
        self.created = time.time()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pod/{name}", daemon=True)

    # -- control
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def url(self, path: str, container_port: int) -> str:
        return f"http://{LOOPBACK}:{self.host_ports[container_port]}{path}"

    def last_runs(self) -> dict[str, ContainerRun]:
        """The latest run of each container, as a pod's container statuses show."""
        return {run.container: run for run in self.runs}

    def run_of(self, container: str) -> ContainerRun:
        (run,) = [r for r in self.runs if r.container == container]
        return run

    # -- the kubelet
    def _sleep(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def _create(self, container: dict[str, Any], init: bool, restart: int) -> ContainerRun | None:
        name = container["name"]
        image = self.sim.image
        try:
            env = resolve_env(container, self.info, self.sim.cluster)
            argv = command_line(container, image, env)
        except ContainerConfigError as exc:
            self.config_errors += 1
            self.waiting[name] = ("CreateContainerConfigError", str(exc))
            self.sim.event(self.name, "Failed", f"Error: {exc}")
            return None
        self.waiting.pop(name, None)
        own_ports = {int(p["containerPort"]) for p in container.get("ports", [])}
        argv = remap_listen([image.host_value(a) for a in argv],
                            {p: h for p, h in self.host_ports.items() if p in own_ports})  # fmt: skip
        proc_env = {"HOSTNAME": self.name, **image.env, **env}
        proc_env = {k: image.host_value(v) for k, v in proc_env.items()}
        cwd = image.host_value(container.get("workingDir") or image.workdir)
        log_path = self.sim.workdir / "logs" / self.name / f"{name}-{restart}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=proc_env.get("PATH", ""))
        with log_path.open("wb") as log:
            if exe is None:
                log.write(f"exec: {argv[0]!r}: executable file not found in $PATH\n".encode())
                run = ContainerRun(self.name, name, init, restart, argv, env, log_path, None)
                run.finished, run.exit_code, run.reason = time.time(), 128, "StartError"
            else:
                with self.sim.spawning():
                    proc = subprocess.Popen(
                        argv, executable=exe, cwd=cwd, env=proc_env, stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                run = ContainerRun(self.name, name, init, restart, argv, env, log_path, proc)
        self.runs.append(run)
        self.phase = "Running" if not init else self.phase
        self.sim.event(self.name, "Started", f"container {name}")
        return run

    def _create_retrying(self, container: dict[str, Any], init: bool, restart: int) -> ContainerRun | None:
        while not self._stop.is_set():
            run = self._create(container, init, restart)
            if run is not None:
                return run
            if not self._sleep(KUBELET_RETRY * self.sim.scale):
                break
        return None

    def _wait(self, run: ContainerRun) -> int | None:
        while run.poll() is None:
            if not self._sleep(TICK):
                return None
        return run.exit_code

    def _main(self) -> None:
        try:
            for container in self.spec.get("initContainers") or []:
                if not self._run_init(container):
                    return
            self._run_main()
        except _Stopped:
            return
        except Exception as exc:  # a bug of the simulation: fail loudly
            self.phase = "Failed"
            self.sim.errors.append(f"pod {self.name}: {exc!r}")
        finally:
            for run in self.runs:
                run.kill(self.grace)
            self.ready = False
            self.done.set()

    def _run_init(self, container: dict[str, Any]) -> bool:
        restart = 0
        while True:
            run = self._create_retrying(container, init=True, restart=restart)
            if run is None:
                return False
            code = self._wait(run)
            if code is None:
                return False
            if code == 0:
                return True
            if self.restart_policy == "Never":
                self.phase = "Failed"
                return False
            restart += 1
            self.waiting[container["name"]] = ("CrashLoopBackOff", f"exit {code}")
            if not self._sleep(_backoff(CRASH_BACKOFF, restart) * self.sim.scale):
                return False

    def _run_main(self) -> None:
        mains = [_Main(spec) for spec in self.spec["containers"]]
        while not self._stop.is_set():
            now = time.monotonic()
            for m in mains:
                if m.done:
                    continue
                if m.run is None:
                    if now >= m.next_start:
                        self._start_main(m)
                    continue
                code = m.run.poll()
                if code is not None:
                    m.ready = False
                    if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                        m.done = True
                    else:
                        m.restarts += 1
                        m.run = None
                        m.next_start = now + _backoff(CRASH_BACKOFF, m.restarts) * self.sim.scale
                        self.waiting[m.spec["name"]] = ("CrashLoopBackOff", f"exit {code}")
                    continue
                self._probe(m, now)
            self.ready = all(m.ready for m in mains)
            if all(m.done for m in mains):
                codes = [m.run.exit_code for m in mains if m.run is not None]
                self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
                return
            self._sleep(TICK)

    def _start_main(self, m: _Main) -> None:
        run = self._create(m.spec, init=False, restart=m.restarts)
        if run is None:
            m.next_start = time.monotonic() + KUBELET_RETRY * self.sim.scale
            return
        m.run = run
        own = {int(p["containerPort"]) for p in m.spec.get("ports", [])}
        ports = {p: h for p, h in self.host_ports.items() if p in own}
        m.probes = [
            _Probe(kind, m.spec[f"{kind}Probe"], m.spec, ports, self.sim.scale)
            for kind in ("startup", "readiness", "liveness")
            if f"{kind}Probe" in m.spec
        ]
        m.started = not any(p.kind == "startup" for p in m.probes)
        m.ready = False

    def _probe(self, m: _Main, now: float) -> None:
        assert m.run is not None
        for probe in m.probes:
            if (probe.kind == "startup") == m.started or now < probe.next_at:
                continue
            ok, detail = probe.check()
            self.last_probe[(m.spec["name"], probe.kind)] = detail
            if probe.kind == "startup" and ok:
                m.started = True
            elif probe.kind == "readiness":
                if ok and probe.successes >= probe.success_threshold:
                    m.ready = True
                elif not ok and probe.failures >= probe.failure_threshold:
                    m.ready = False
            elif not ok and probe.failures >= probe.failure_threshold:  # startup or liveness
                self.sim.event(self.name, "Unhealthy", f"{probe.kind} probe failed: {detail}; killing")
                m.run.kill(self.grace)
                return


def _backoff(limits: tuple[float, float], failures: int) -> float:
    initial, cap = limits
    return float(min(initial * 2 ** max(failures - 1, 0), cap))


# -- controllers ---------------------------------------------------------------------


def match_pod_failure_policy(rules: list[dict[str, Any]], pod: Pod) -> tuple[str, int | None]:
    """The action for a failed pod: the first matching rule's, else ``Count``."""
    statuses = pod.last_runs().values()
    for index, rule in enumerate(rules):
        if rule.get("action") not in ("FailJob", "Ignore", "Count"):
            continue  # unknown (or FailIndex, for indexed Jobs only): skipped
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            codes = [
                run.exit_code
                for run in statuses
                if run.exit_code not in (None, 0) and req.get("containerName") in (None, run.container)
            ]
            values = set(req["values"])
            if req["operator"] == "In":
                hit = any(code in values for code in codes)
            elif req["operator"] == "NotIn":
                hit = any(code not in values for code in codes)
            else:
                hit = False
        else:
            hit = False  # onPodConditions: no pod here is ever disrupted (DisruptionTarget)
        if hit:
            return rule["action"], index
    return "Count", None


class JobRun:
    """The Job controller for one Job (parallelism 1, completions 1)."""

    def __init__(self, sim: Simulation, obj: dict[str, Any]) -> None:
        spec = obj["spec"]
        if spec.get("parallelism", 1) != 1 or spec.get("completions", 1) != 1:
            raise SimulationError("only Jobs with parallelism 1 and completions 1 are simulated")
        self.sim = sim
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.namespace: str = obj["metadata"].get("namespace", "default")
        self.backoff_limit: int = spec.get("backoffLimit", 6)
        self.deadline: float | None = spec.get("activeDeadlineSeconds")
        self.rules: list[dict[str, Any]] = (spec.get("podFailurePolicy") or {}).get("rules", [])
        self.pods: list[Pod] = []
        self.failed = 0  # counted against backoffLimit
        self.ignored = 0
        self.condition: str | None = None  # Complete | Failed
        self.reason = ""
        self.message = ""
        self.started = 0.0
        self.finished: float | None = None
        self.thread = threading.Thread(target=self._main, name=f"job/{self.name}", daemon=True)

    def _finish(self, condition: str, reason: str = "", message: str = "") -> None:
        self.condition, self.reason, self.message = condition, reason, message
        self.finished = time.time()
        self.sim.event(f"job/{self.name}", condition, f"{reason} {message}".strip())

    def _main(self) -> None:
        self.sim.go.wait()
        start = time.monotonic()
        self.started = time.time()

        def expired() -> bool:
            return self.deadline is not None and time.monotonic() - start >= self.deadline

        try:
            while not self.sim.stopping.is_set():
                template = self.obj["spec"]["template"]
                pod = self.sim.new_pod(f"{self.name}-{_suffix(5)}", self.namespace, template)
                self.pods.append(pod)
                while not pod.done.wait(TICK):
                    if self.sim.stopping.is_set():
                        return
                    if expired():
                        pod.stop()
                        pod.join(pod.grace + 10)
                        self._finish("Failed", *DEADLINE_EXCEEDED)
                        return
                if pod.phase == "Succeeded":
                    self._finish("Complete")
                    return
                action, index = match_pod_failure_policy(self.rules, pod)
                if action == "FailJob":
                    self.failed += 1
                    codes = {r.container: r.exit_code for r in pod.last_runs().values() if r.exit_code}
                    message = f"pod {pod.name} failed with {codes} matching FailJob rule at index {index}"
                    self._finish("Failed", "PodFailurePolicy", message)
                    return
                if action == "Ignore":
                    self.ignored += 1
                else:
                    self.failed += 1
                if self.failed > self.backoff_limit:
                    self._finish("Failed", *BACKOFF_LIMIT_EXCEEDED)
                    return
                until = time.monotonic() + (
                    _backoff(JOB_BACKOFF, self.failed) * self.sim.scale if self.failed else 0.0
                )
                while time.monotonic() < until:
                    if expired():
                        self._finish("Failed", *DEADLINE_EXCEEDED)
                        return
                    if self.sim.stopping.wait(TICK):
                        return
        except _Stopped:
            return
        except Exception as exc:
            self.sim.errors.append(f"job {self.name}: {exc!r}")


class DeploymentRun:
    """The Deployment (and ReplicaSet) controller, first install only: spec.replicas pods at once."""

    def __init__(self, sim: Simulation, obj: dict[str, Any]) -> None:
        self.sim = sim
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.namespace: str = obj["metadata"].get("namespace", "default")
        self.replicas: int = obj["spec"].get("replicas", 1)
        self.pods: list[Pod] = []
        self.thread = threading.Thread(target=self._main, name=f"deployment/{self.name}", daemon=True)

    @property
    def ready_replicas(self) -> int:
        return sum(pod.ready for pod in self.pods)

    def _main(self) -> None:
        self.sim.go.wait()
        template_hash = _suffix(10)
        try:
            for _ in range(self.replicas):
                name = f"{self.name}-{template_hash}-{_suffix(5)}"
                self.pods.append(self.sim.new_pod(name, self.namespace, self.obj["spec"]["template"]))
        except _Stopped:
            return


class _Stopped(Exception):
    pass


class Simulation:
    """Apply rendered manifests to a cluster of one host; always ``shutdown()`` (or use ``with``)."""

    def __init__(self, objects: Iterable[dict[str, Any]], *, image: Image, workdir: Path,
                 scale: float = TIME_SCALE) -> None:  # fmt: skip
        self.cluster = Cluster(objects)
        self.image = image
        self.workdir = workdir
        self.scale = scale
        self.jobs: dict[str, JobRun] = {}
        self.deployments: dict[str, DeploymentRun] = {}
        self.events: list[tuple[float, str, str, str]] = []
        self.errors: list[str] = []
        self.go = threading.Event()
        self.stopping = threading.Event()
        self._pods: list[Pod] = []
        self._lock = threading.Lock()
        self._spawn_lock = threading.Lock()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def event(self, obj: str, reason: str, message: str) -> None:
        self.events.append((time.time(), obj, reason, message))

    @contextlib.contextmanager
    def spawning(self) -> Any:
        # Popen is not atomic with respect to shutdown(): no new process once stopping.
        with self._spawn_lock:
            if self.stopping.is_set():
                raise _Stopped
            yield

    def new_pod(self, name: str, namespace: str, template: dict[str, Any]) -> Pod:
        with self._lock:
            if self.stopping.is_set():
                raise _Stopped
            pod = Pod(self, name, namespace, template)
            self._pods.append(pod)
            pod.start()
        self.event(name, "Scheduled", "created")
        return pod

    @property
    def pods(self) -> list[Pod]:
        with self._lock:
            return list(self._pods)

    def runs(self) -> list[ContainerRun]:
        return [run for pod in self.pods for run in pod.runs]

    def apply(self, kinds: Collection[str] = ("Job", "Deployment")) -> None:
        """Start every Job and Deployment of those kinds, all at the same moment."""
        controllers: list[JobRun | DeploymentRun] = []
        if "Job" in kinds:
            for obj in self.cluster.of_kind("Job"):
                job = JobRun(self, obj)
                self.jobs[job.name] = job
                controllers.append(job)
        if "Deployment" in kinds:
            for obj in self.cluster.of_kind("Deployment"):
                deployment = DeploymentRun(self, obj)
                self.deployments[deployment.name] = deployment
                controllers.append(deployment)
        for controller in controllers:
            controller.thread.start()
        self.go.set()

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.errors:
                raise AssertionError(f"simulation error while waiting for {what}: {self.errors}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.describe()}")
            time.sleep(TICK)

    def describe(self, log_lines: int = 12) -> str:
        out: list[str] = []
        for job in self.jobs.values():
            out.append(f"job/{job.name}: {job.condition or 'Active'} {job.reason} failed={job.failed} "
                       f"pods={len(job.pods)} {job.message}")  # fmt: skip
        for dep in self.deployments.values():
            out.append(f"deployment/{dep.name}: ready {dep.ready_replicas}/{dep.replicas}")
        for pod in self.pods:
            out.append(f"pod/{pod.name}: {pod.phase} ready={pod.ready} waiting={pod.waiting} "
                       f"probes={pod.last_probe}")  # fmt: skip
            for run in pod.runs:
                out.append(f"  {run.container}#{run.restart}: exit={run.exit_code} argv={run.argv}")
                out.extend(f"    | {line}" for line in run.log.splitlines()[-log_lines:])
        out.extend(f"event {obj} {reason}: {message}" for _, obj, reason, message in self.events[-30:])
        return "\n".join(out)

    def shutdown(self) -> None:
        """Stop every controller and pod; SIGTERM, then SIGKILL, every process group. Idempotent."""
        with self._spawn_lock:
            self.stopping.set()
        for pod in self.pods:
            pod.stop()
        for pod in self.pods:
            pod.join(pod.grace + 10)
        for controller in [*self.jobs.values(), *self.deployments.values()]:
            if controller.thread.is_alive():
                controller.thread.join(10)
        for run in self.runs():
            run.kill(0)
