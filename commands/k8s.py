"""``dbinit k8s``: write a kustomize overlay of dbinit's k8s/base for one service.

The base (k8s/base) is generic, and its defaults are the example service's
layout: the image placeholder ``app-image``, ``workingDir: /app``,
``DBINIT_ALEMBIC_INI=/app/alembic.ini``, ``uvicorn app:app``. This command
writes an overlay that sets each of them for a given service, as k8s/README.md
documents them ("The base's parameters"): the name (prefix, labels,
``SERVICE_NAME``), the image and its release, the working directory of every
container, the Alembic configuration, the ASGI app (one uvicorn worker per
pod: scale with replicas), the app's own Secret (``envFrom`` in the Job's
``migrate`` and the service's ``app`` containers) and the after-migrate step.

It writes files only: no cluster, no database, no settings are read. Bad
input is exit 2 with a hint; files that exist already are not overwritten
without ``--force`` (exit 7); ``database.env`` (the real URL) is never
written nor overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from dbinit.errors import ConfigurationError, Refused
from dbinit.management.base import BaseCommand

#: The image name k8s/base uses; the overlay's ``images:`` replaces it.
BASE_IMAGE = "app-image"
#: Files the base must have for ``--base`` (or the one found) to be dbinit's.
BASE_FILES = ("kustomization.yaml", "job-migration.yaml", "deployment.yaml")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IMAGE_NAME = re.compile(
    r"^(?:[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
ASGI_APP = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: The longest object name the overlay makes: ``<name>-migration-<release>`` (a DNS label).
MAX_NAME = 63
ENVIRONMENTS = ("development", "test", "staging", "production")
PORT = 8000  # the base's containerPort and probes


@dataclasses.dataclass(frozen=True)
class Image:
    """An image reference split as kustomize's ``images:`` wants it."""

    name: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Image:
        rest, _, digest = text.partition("@")
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        name, tag = (rest[:colon], rest[colon + 1 :]) if colon > slash else (rest, None)
        hint = (
            "Give the release's image as REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST), "
            "e.g. ghcr.io/acme/orders:1.4.2"
        )
        if not IMAGE_NAME.match(name):
            raise ConfigurationError(f"--image: {text!r} is not an image reference", hint=hint)
        if digest and not IMAGE_DIGEST.match(digest):
            raise ConfigurationError(f"--image: {digest!r} is not a sha256 digest", hint=hint)
        if tag is not None and not IMAGE_TAG.match(tag):
            raise ConfigurationError(f"--image: {tag!r} is not a valid tag", hint=hint)
        if tag is None and not digest:
            raise ConfigurationError(
                f"--image: {text!r} has no tag: one image (tag or digest) per release", hint=hint
            )
        if tag == "latest":
            raise ConfigurationError(
                "--image: the tag 'latest' moves: pods pull IfNotPresent and the Job of a release must "
                "migrate with exactly the image its pods verify",
                hint=hint,
            )
        return cls(name, tag, digest or None)


@dataclasses.dataclass(frozen=True)
class Overlay:
    """What the overlay sets, validated."""

    name: str
    image: Image
    release: str
    app: str
    workdir: PurePosixPath
    alembic_ini: PurePosixPath
    secret: str | None
    after_migrate: str | None
    namespace: str | None
    environment: str
    replicas: int
    base: str


def _plain(value: str, flag: str) -> str:
    if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigurationError(f"{flag}: empty, or holds a control character (a newline?)",
                                 hint=f"Give {flag} a single-line value")
    return value


def _release_of(image: Image) -> str:
    """The image's tag, DNS-safe (``1.4.2`` -> ``1-4-2``), for the Job's name."""
    text = re.sub(r"[^a-z0-9]+", "-", (image.tag or "").lower()).strip("-")
    return text


def _absolute(path: str, flag: str) -> PurePosixPath:
    value = PurePosixPath(_plain(path, flag))
    if not value.is_absolute() or ".." in value.parts:
        raise ConfigurationError(f"--{flag.lstrip('-')}: {path!r} is not an absolute path in the image",
                                 hint="e.g. --workdir /app (the image's WORKDIR)")
    return value


def _yaml(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(value, ensure_ascii=False)


def _literal(key: str, value: str) -> str:
    """A configMapGenerator literal; kustomize strips one pair of matching outer quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = f'"{value}"'
    return _yaml(f"{key}={value}")


class Command(BaseCommand):
    help = (
        "Write a kustomize overlay of dbinit's k8s/base for one service: name, image and release, "
        "working directory, Alembic configuration, ASGI app, the app's Secret and the after-migrate "
        "step. Writes files only (no cluster, no database). See k8s/README.md."
    )
    uses_settings = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", required=True,
                            help="the service's name: prefix of every object, label, SERVICE_NAME")
        parser.add_argument("--image", required=True,
                            help="the release's image: REPOSITORY:TAG or REPOSITORY@sha256:...")
        parser.add_argument("--app", required=True, help="the ASGI app for uvicorn, MODULE:ATTRIBUTE")
        parser.add_argument("--workdir", default="/app",
                            help="working directory of every container (default: /app)")
        parser.add_argument("--alembic-ini", default="alembic.ini",
                            help="alembic.ini in the image, relative to --workdir (default: alembic.ini)")
        parser.add_argument("--secret", help="the app's own Secret, given whole (envFrom) to the Job's "
                            "migrate container and the service's app container")
        parser.add_argument("--after-migrate", dest="after_migrate", metavar="COMMAND",
                            help="DBINIT_AFTER_MIGRATE: run by the Job after migrating, under the lock")
        parser.add_argument("--release", help="the Job's release suffix (default: the image tag, DNS-safe)")
        parser.add_argument("--namespace", help="the namespace of every object (default: none set)")
        parser.add_argument("--environment", choices=ENVIRONMENTS, default="production",
                            help="ENVIRONMENT (default: production)")
        parser.add_argument("--replicas", type=int, default=2, help="service replicas (default: 2)")
        parser.add_argument("--base", help="dbinit's k8s/base: a path, or a kustomize remote URL "
                            "(default: the base/ of a parent folder of --output)")
        parser.add_argument("--output", help="the overlay's folder (default: k8s/overlays/NAME)")
        parser.add_argument("--force", action="store_true", help="overwrite the overlay's files")

    def handle(self, **options: Any) -> int:
        output = Path(options["output"] or Path("k8s") / "overlays" / options["name"])
        overlay = self.overlay(options, output)
        files = {
            "kustomization.yaml": kustomization(overlay),
            "database.env.example": database_env_example(overlay),
            ".gitignore": "# The real DATABASE_URL: only database.env.example is committed.\ndatabase.env\n",
        }
        existing = [output / name for name in files if (output / name).exists()]
        if existing and not options["force"]:
            raise Refused(
                f"{', '.join(map(str, existing))} already exist: not overwritten",
                hint="Pass --force to overwrite them (database.env is never touched), or --output "
                "another folder",
            )
        output.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (output / name).write_text(text)
        self.stdout.write(f"Wrote {output}/: {', '.join(files)}")
        self.stdout.write("Next:")
        self.stdout.write(f"  cp {output}/database.env.example {output}/database.env  # the real URL")
        self.stdout.write(f"  kubectl kustomize {output} | less")
        self.stdout.write(f"  kubectl apply -k {output}")
        self.stdout.write("On every release change both RELEASE fields of kustomization.yaml "
                          "(k8s/README.md, 'One Job per release').")
        return 0

    def overlay(self, options: dict[str, Any], output: Path) -> Overlay:
        name = _plain(options["name"], "--name")
        if not DNS_LABEL.match(name):
            raise ConfigurationError(
                f"--name: {name!r} is not a DNS label (lowercase letters, digits and '-')",
                hint="e.g. --name orders: it prefixes every object name",
            )
        image = Image.parse(_plain(options["image"], "--image"))
        release = options["release"] if options["release"] is not None else _release_of(image)
        if not release:
            raise ConfigurationError("--release is needed: the image has no tag to derive it from",
                                     hint="e.g. --release 1-4-2 or the deploy commit")
        if not DNS_LABEL.match(release):
            raise ConfigurationError(f"--release: {release!r} is not DNS-safe",
                                     hint="lowercase letters, digits and '-', e.g. 1-4-2")
        job = f"{name}-migration-{release}"
        if len(job) > MAX_NAME:
            raise ConfigurationError(
                f"the Job's name {job!r} is longer than {MAX_NAME} characters",
                hint="Shorten --name or --release",
            )
        app = _plain(options["app"], "--app")
        if not ASGI_APP.match(app):
            raise ConfigurationError(f"--app: {app!r} is not MODULE:ATTRIBUTE",
                                     hint="e.g. --app app.main:app (what you would give uvicorn)")
        workdir = _absolute(options["workdir"], "--workdir")
        ini = PurePosixPath(_plain(options["alembic_ini"], "--alembic-ini"))
        if ".." in ini.parts or "://" in str(ini):
            raise ConfigurationError(f"--alembic-ini: {str(ini)!r} is not a path inside the image",
                                     hint="e.g. --alembic-ini alembic.ini (relative to --workdir)")
        secret = options["secret"]
        if secret is not None and (not DNS_SUBDOMAIN.match(secret) or len(secret) > 253):
            raise ConfigurationError(f"--secret: {secret!r} is not a Secret name",
                                     hint="lowercase letters, digits, '-' and '.', e.g. orders-app")
        step = options["after_migrate"]
        if step is not None:
            self.check_step(_plain(step, "--after-migrate"))
        namespace = options["namespace"]
        if namespace is not None and not DNS_LABEL.match(namespace):
            raise ConfigurationError(f"--namespace: {namespace!r} is not a DNS label",
                                     hint="e.g. --namespace shop")
        if options["replicas"] < 1:
            raise ConfigurationError("--replicas must be at least 1",
                                     hint="Scale with replicas, one uvicorn worker each")
        return Overlay(
            name=name, image=image, release=release, app=app, workdir=workdir,
            alembic_ini=workdir / ini, secret=secret, after_migrate=step, namespace=namespace,
            environment=options["environment"], replicas=options["replicas"],
            base=self.base(options["base"], output),
        )  # fmt: skip

    @staticmethod
    def check_step(step: str) -> None:
        try:
            words = shlex.split(step)
        except ValueError as exc:
            raise ConfigurationError(
                f"--after-migrate cannot be split into words: {exc}",
                hint="Quote as in a POSIX shell; dbinit splits it with shlex and never runs a shell",
            ) from None
        if not words:
            raise ConfigurationError("--after-migrate holds no command", hint="e.g. --after-migrate "
                                     "'python app/initial_data.py'")
        if "://" in step:
            raise ConfigurationError(
                "--after-migrate holds something URL-shaped: it goes into a ConfigMap, where no URL "
                "(nor password) belongs",
                hint="The step gets DATABASE_URL in its environment: read it there",
            )

    @staticmethod
    def base(given: str | None, output: Path) -> str:
        """The base as the overlay names it: a remote as given, a folder relative to ``output``."""
        if given is not None and ("://" in given or given.startswith(("git@", "github.com/"))):
            return given
        hint = (
            "Pass --base: dbinit's k8s/base as a path, or as a kustomize remote such as "
            "https://github.com/OWNER/dbinit//k8s/base?ref=TAG"
        )
        if given is not None:
            folder = Path(given)
            if not all((folder / name).is_file() for name in BASE_FILES):
                raise ConfigurationError(
                    f"--base: {given!r} is not dbinit's k8s/base (it needs {', '.join(BASE_FILES)})",
                    hint=hint,
                )
        else:
            found = next(
                (parent / "base" for parent in output.absolute().parents
                 if all((parent / "base" / name).is_file() for name in BASE_FILES)),
                None,
            )  # fmt: skip
            if found is None:
                raise ConfigurationError(f"no dbinit k8s/base found above {output}", hint=hint)
            folder = found
        return Path(os.path.relpath(folder.absolute(), output.absolute())).as_posix()


def _patch(body: list[str]) -> list[str]:
    return ["    patch: |-", *(f"      {line}" for line in body)]


def _env_from(overlay: Overlay) -> list[str]:
    if overlay.secret is None:
        return []
    return [
        "envFrom:",
        "  - configMapRef:",
        "      name: config",
        "  # The app's own Secret, whole (POSTGRES_PASSWORD etc. for an env.py or a",
        "  # seed that imports the app's settings). DATABASE_URL still comes from",
        "  # the Secret `database`: `env` wins over `envFrom`.",
        "  - secretRef:",
        f"      name: {_yaml(overlay.secret)}",
    ]


def kustomization(overlay: Overlay) -> str:
    """The overlay's kustomization.yaml."""
    workdir = _yaml(str(overlay.workdir))
    server = ["uvicorn", overlay.app, "--host", "0.0.0.0", "--port", str(PORT), "--workers", "1"]
    image = [f"  - name: {BASE_IMAGE}", f"    newName: {_yaml(overlay.image.name)}"]
    if overlay.image.tag is not None:
        image.append(f"    newTag: {_yaml(overlay.image.tag)}")
    if overlay.image.digest is not None:
        image.append(f"    digest: {_yaml(overlay.image.digest)}")
    literals = [
        _literal("ENVIRONMENT", overlay.environment),
        _literal("SERVICE_NAME", overlay.name),
        _literal("DBINIT_ALEMBIC_INI", str(overlay.alembic_ini)),
        '"DB_FORCE_RECREATE=false"',
        '"DBINIT_ALLOW_DESTRUCTIVE=false"',
    ]
    if overlay.after_migrate is not None:
        literals.append(_literal("DBINIT_AFTER_MIGRATE", overlay.after_migrate))
    env_from = _env_from(overlay)
    job = [
        "apiVersion: batch/v1",
        "kind: Job",
        "metadata:",
        "  name: migration",
        "spec:",
        "  template:",
        "    spec:",
        "      initContainers:",
        "        - name: wait-for-database",
        f"          workingDir: {workdir}",
        "      containers:",
        "        - name: migrate",
        f"          workingDir: {workdir}",
        *(f"          {line}" for line in env_from),
    ]
    deployment = [
        "apiVersion: apps/v1",
        "kind: Deployment",
        "metadata:",
        "  name: service",
        "spec:",
        f"  replicas: {overlay.replicas}",
        "  template:",
        "    spec:",
        "      initContainers:",
        "        - name: wait-for-migrations",
        f"          workingDir: {workdir}",
        "      containers:",
        "        - name: app",
        f"          workingDir: {workdir}",
        "          # One worker per pod: scale with replicas (each worker would",
        "          # verify, and hold connections, on its own).",
        "          command:",
        *(f"            - {_yaml(word)}" for word in server),
        *(f"          {line}" for line in env_from),
    ]
    lines = [
        f"# {overlay.name}: an overlay of dbinit's k8s/base, written by `dbinit k8s`",
        "# (edit it freely; k8s/README.md documents every field).",
        "#",
        "# Before the first `kubectl apply -k`: cp database.env.example database.env",
        "# and put the real URL in it (git-ignored).",
        "#",
        "# On EVERY release, change both RELEASE fields below: the image tag and the",
        "# migration Job's name (k8s/README.md, \"One Job per release\").",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "",
        *([f"namespace: {overlay.namespace}"] if overlay.namespace else []),
        f"namePrefix: {overlay.name}-",
        "",
        "resources:",
        f"  - {_yaml(overlay.base)}",
        "",
        "labels:",
        "  - pairs:",
        f"      app.kubernetes.io/name: {overlay.name}",
        "    includeSelectors: true",
        "    includeTemplates: true",
        "",
        "# RELEASE (1 of 2): the image, one immutable tag (or digest) per release.",
        "images:",
        *image,
        "",
        "configMapGenerator:",
        "  - name: config",
        "    behavior: merge",
        "    literals:",
        *(f"      - {literal}" for literal in literals),
        "",
        "# DATABASE_URL comes only from this Secret: never from the ConfigMap, never",
        "# on a command line. database.env is git-ignored; commit only the example.",
        "secretGenerator:",
        "  - name: database",
        "    envs:",
        "      - database.env",
        "",
        "patches:",
        "  # Where the app lives in the image, and how it starts.",
        "  - target:",
        "      kind: Job",
        "      name: migration",
        *_patch(job),
        "  - target:",
        "      kind: Deployment",
        "      name: service",
        *_patch(deployment),
        "  # RELEASE (2 of 2): a Job's pod template is immutable, so every release",
        f"  # applies a NEW Job `{overlay.name}-migration-<release>`.",
        "  - target:",
        "      kind: Job",
        "      name: migration",
        "    patch: |-",
        "      - op: replace",
        "        path: /metadata/name",
        f"        value: migration-{overlay.release}",
    ]
    return "\n".join(lines) + "\n"


def database_env_example(overlay: Overlay) -> str:
    user = overlay.name.replace("-", "_")
    return (
        "# Copy to `database.env` (git-ignored) and put the real URL in it. kustomize's\n"
        f"# secretGenerator turns it into the Secret `{overlay.name}-database-<hash>`.\n"
        f"DATABASE_URL=postgresql+asyncpg://{user}:CHANGE-ME@postgres.database.svc.cluster.local:5432/{user}\n"
    )
