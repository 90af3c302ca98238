"""``dbinit k8s``: the overlay scaffold as a user runs it (what it renders to is proven in
tests/test_k8s_manifests.py, with the pinned kustomize and validators).

Here: it refuses to overwrite (exit 7) unless ``--force``, never touches ``database.env``,
refuses bad input with exit 2 and a hint, and needs no dbinit setting (it reads none).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_k8s_manifests import K8S, SCAFFOLD_ARGS, scaffold

MINIMAL = ("--name", "orders", "--image", "ghcr.io/acme/orders:1.4.2", "--app", "app.main:app")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project with dbinit's k8s/base in it (where the scaffold finds it by default)."""
    shutil.copytree(K8S / "base", tmp_path / "k8s" / "base")
    return tmp_path


def test_it_writes_the_overlay_and_says_what_next(repo: Path) -> None:
    made = scaffold(repo, *SCAFFOLD_ARGS)
    assert made.returncode == 0, made.stdout + made.stderr
    overlay = repo / "k8s" / "overlays" / "orders"
    written = sorted(p.name for p in overlay.iterdir())
    assert written == [".gitignore", "database.env.example", "kustomization.yaml"]
    assert made.stdout.splitlines()[0] == (
        "Wrote k8s/overlays/orders/: kustomization.yaml, database.env.example, .gitignore"
    )
    assert "cp k8s/overlays/orders/database.env.example k8s/overlays/orders/database.env" in made.stdout
    text = (overlay / "kustomization.yaml").read_text()
    assert 'resources:\n  - "../../base"\n' in text
    assert "namespace: shop\nnamePrefix: orders-\n" in text
    assert '      - "DBINIT_AFTER_MIGRATE=python app/initial_data.py"\n' in text
    assert "value: migration-1-4-2\n" in text  # RELEASE (2 of 2), from the tag
    example = (overlay / "database.env.example").read_text()
    assert "DATABASE_URL=postgresql+asyncpg://orders:CHANGE-ME@" in example


def test_it_refuses_to_overwrite_unless_forced_and_never_touches_database_env(repo: Path) -> None:
    assert scaffold(repo, *MINIMAL).returncode == 0
    overlay = repo / "k8s" / "overlays" / "orders"
    (overlay / "kustomization.yaml").write_text("# edited by hand\n")
    (overlay / "database.env").write_text("DATABASE_URL=postgresql://real:secret@db/orders\n")

    again = scaffold(repo, *MINIMAL, "--app", "app.other:app")
    assert again.returncode == 7, again.stdout + again.stderr
    assert again.stderr.splitlines() == [
        "Error: k8s/overlays/orders/kustomization.yaml, k8s/overlays/orders/database.env.example, "
        "k8s/overlays/orders/.gitignore already exist: not overwritten",
        "Hint: Pass --force to overwrite them (database.env is never touched), or --output another folder",
    ]
    assert (overlay / "kustomization.yaml").read_text() == "# edited by hand\n"

    forced = scaffold(repo, *MINIMAL, "--app", "app.other:app", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert '- "app.other:app"' in (overlay / "kustomization.yaml").read_text()
    assert (overlay / "database.env").read_text() == "DATABASE_URL=postgresql://real:secret@db/orders\n"


def test_it_needs_no_setting_even_in_a_production_environment(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads no setting: ENVIRONMENT=production without DATABASE_URL (which stops every other
    command with exit 2), or a malformed DB_FORCE_RECREATE, does not concern it."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DB_FORCE_RECREATE", "perhaps")
    made = scaffold(repo, *MINIMAL)
    assert made.returncode == 0, made.stdout + made.stderr
    help_text = scaffold(repo, "--help")
    assert help_text.returncode == 0
    assert "--database-url" not in help_text.stdout and "--after-migrate COMMAND" in help_text.stdout


@pytest.mark.parametrize(
    ("change", "error", "hint"),
    [
        (("--name", "Orders_API"), "--name: 'Orders_API' is not a DNS label", "e.g. --name orders"),
        (("--image", "ghcr.io/acme/orders"), "--image: 'ghcr.io/acme/orders' has no tag: one image",
         "REGISTRY/REPOSITORY:TAG"),
        (("--image", "ghcr.io/acme/orders:latest"), "--image: the tag 'latest' moves",
         "ghcr.io/acme/orders:1.4.2"),
        (("--image", "ghcr.io/acme/orders@sha256:abc"), "--image: 'sha256:abc' is not a sha256 digest",
         "@sha256:DIGEST"),
        (("--image", "ghcr.io/acme/orders@sha256:" + "0" * 64), "--release is needed", "--release 1-4-2"),
        (("--app", "app/main.py"), "--app: 'app/main.py' is not MODULE:ATTRIBUTE", "--app app.main:app"),
        (("--workdir", "app"), "--workdir: 'app' is not an absolute path in the image", "--workdir /app"),
        (("--alembic-ini", "../alembic.ini"), "--alembic-ini: '../alembic.ini' is not a path inside",
         "relative to --workdir"),
        (("--secret", "Orders App"), "--secret: 'Orders App' is not a Secret name", "orders-app"),
        (("--after-migrate", "python 'seed.py"), "--after-migrate cannot be split into words", "shlex"),
        (("--after-migrate", "psql postgresql://u:p@db/x -f seed.sql"),
         "--after-migrate holds something URL-shaped", "DATABASE_URL in its environment"),
        (("--release", "1.4.2"), "--release: '1.4.2' is not DNS-safe", "1-4-2"),
        (("--name", "o" * 50), "is longer than 63 characters", "Shorten --name or --release"),
        (("--replicas", "0"), "--replicas must be at least 1", "Scale with replicas"),
        (("--base", "somewhere"), "--base: 'somewhere' is not dbinit's k8s/base", "kustomize remote"),
        (("--environment", "prod"), "argument --environment: invalid choice: 'prod'", "See `"),
    ],
    ids=lambda value: value[1] if isinstance(value, tuple) else None,
)
def test_bad_input_is_exit_2_with_a_hint_and_writes_nothing(
    repo: Path, change: tuple[str, str], error: str, hint: str
) -> None:
    made = scaffold(repo, *MINIMAL, *change)
    assert made.returncode == 2, made.stdout + made.stderr
    lines = made.stderr.splitlines()
    assert lines[0].startswith("Error: ") and error in lines[0], lines
    assert lines[1].startswith("Hint: ") and hint in lines[1], lines
    assert not (repo / "k8s" / "overlays").exists()


def test_without_a_base_nearby_it_asks_for_one(tmp_path: Path) -> None:
    made = scaffold(tmp_path, *MINIMAL)
    assert made.returncode == 2, made.stdout + made.stderr
    assert "Error: no dbinit k8s/base found above k8s/overlays/orders" in made.stderr
    assert "https://github.com/OWNER/dbinit//k8s/base?ref=TAG" in made.stderr
    assert not (tmp_path / "k8s").exists()


def test_missing_required_flags_is_exit_2() -> None:
    made = scaffold(K8S, "--name", "orders")
    assert made.returncode == 2
    assert "the following arguments are required: --image, --app" in made.stderr
