"""Faults for the safety tests: processes to signal, a proxy to pull, a server that checks passwords.

- :class:`Spawned` runs ``python -m dbinit ...`` with its output in files, so a test
  can read the log while the process runs, signal it, and collect it at the end.
- ``restartable_proxy`` (:class:`tests.plugins.pgproxy.PgProxy`) is a TCP proxy in front of
  the test server on a fixed port: ``stop()`` makes the port refuse connections (and
  drops the open ones), ``start()`` brings it back on the same port;
  with ``cut_on_query`` it accepts the connection and the login, then drops it when
  the first statement arrives (a server that dies under a running query).
- :class:`PgWatch` is a plain psycopg session on the test database that looks at
  ``pg_stat_activity`` / ``pg_locks`` and can hold locks for as long as a test needs.
- ``scram_server``: a throwaway PostgreSQL with ``scram-sha-256`` authentication
  (the other servers trust everyone, so a wrong password would connect).
- ``tls_server``: a throwaway PostgreSQL that accepts TLS connections only, with a
  certificate signed by a throwaway CA (``openssl``); on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dbinit.lock import lock_key
from dbinit.urls import DatabaseURL
from tests.plugins.databases import SECRET, Result, clean_env
from tests.plugins.pgproxy import free_port, pg_proxy

# -- waiting, bounded ---------------------------------------------------------------


def eventually(predicate: Callable[[], Any], *, within: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        time.sleep(every)


def password_forms(password: str = SECRET) -> list[str]:
    """Every way a password could leak: clear, percent-encoded (both ways), and SECRET."""
    return sorted({SECRET, password, quote(password, safe=""), quote(password), quote(password).lower()})


def assert_no_password(output: str, password: str = SECRET) -> None:
    for form in password_forms(password):
        assert form not in output, f"password form {form!r} leaked:\n{output}"


# -- processes ------------------------------------------------------------------------


class Spawned:
    """``python -m dbinit ARGS`` running in the background, its output in files."""

    def __init__(self, args: tuple[str, ...], cwd: Path, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.args = args
        self._out = logs / "stdout"
        self._err = logs / "stderr"
        with self._out.open("w") as out, self._err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dbinit", *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, signum: int) -> float:
        """Send a signal; returns the monotonic time it was sent."""
        self.proc.send_signal(signum)
        return time.monotonic()

    def finish(self, within: float) -> Result:
        """Wait (bounded) for the exit; a process still running after ``within`` s fails the test."""
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"dbinit {' '.join(self.args)} still running after {within:g}s\n"
                f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"
            ) from None
        return Result(self.proc.returncode, self.stdout(), self.stderr())


class Spawner:
    """Starts :class:`Spawned` processes for one test and kills any left at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.spawned: list[Spawned] = []

    def __call__(self, *args: str, cwd: Path, **settings: str) -> Spawned:
        process = Spawned(args, cwd, clean_env(**settings), self.logs / f"p{len(self.spawned)}")
        self.spawned.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.spawned:
            if process.running():
                process.proc.send_signal(signal.SIGKILL)
                process.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path / "logs")
    try:
        yield spawner
    finally:
        spawner.cleanup()


# -- looking at (and holding locks in) a PostgreSQL database -------------------------


def dbinit_lock_ids(schema: str = "public", version_table: str = "alembic_version") -> tuple[int, int]:
    """(classid, objid) of dbinit's migration lock as ``pg_locks`` shows it."""
    key = lock_key(schema, version_table)
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


class PgWatch:
    """An autocommit psycopg session on one database: look at activity and locks, hold locks."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.connection = psycopg.connect(DatabaseURL.parse(url).asyncpg_dsn(), autocommit=True)
        self.classid, self.objid = dbinit_lock_ids()

    def rows(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def running(self, fragment: str) -> list[tuple[int, str]]:
        """(pid, application_name) of the other sessions running a query containing ``fragment``."""
        return [
            (int(pid), str(name))
            for pid, name in self.rows(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state = 'active' AND position(%s in query) > 0",
                fragment,
            )
        ]

    def sessions(self, prefix: str) -> list[tuple[int, str]]:
        """(pid, application_name) of the sessions on this database whose name starts with ``prefix``."""
        return [
            (int(pid), str(name))
            for pid, name in self.rows(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND starts_with(application_name, %s)",
                prefix,
            )
        ]

    def migration_lock_rows(self) -> list[tuple[int, bool, str]]:
        """(pid, granted, holder's application_name) of dbinit's advisory lock rows (held or awaited)."""
        return [
            (int(pid), bool(granted), str(name))
            for pid, granted, name in self.rows(
                "SELECT l.pid, l.granted, coalesce(a.application_name, '') FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                self.classid,
                self.objid,
            )
        ]

    def advisory_waiters(self, key: int) -> int:
        """Sessions waiting (not granted) for the single-bigint advisory lock ``key``."""
        return int(
            self.rows(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
                "AND objid = %s AND objsubid = 1 AND NOT granted",
                key,
            )[0][0]
        )

    def close(self) -> None:
        self.connection.close()


@contextlib.contextmanager
def pg_watch(url: str) -> Iterator[PgWatch]:
    watch = PgWatch(url)
    try:
        yield watch
    finally:
        watch.close()


# -- a proxy that can be pulled out and put back -------------------------------------


# The restartable proxy is tests.plugins.pgproxy.PgProxy (one proxy for all tests).
restartable_proxy = pg_proxy


# -- a server that checks passwords ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScramServer:
    """A PostgreSQL on 127.0.0.1:``port`` where the superuser logs in with ``password``."""

    port: int
    password: str

    def url(self, *, password: str, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+asyncpg://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"


def _run_pg(binary: Path, args: list[str], user: str | None, logs: Path) -> None:
    """Run a PostgreSQL binary (as ``user``), output in files (pg_ctl's children keep pipes open)."""
    with (logs / f"{binary.name}.out").open("w") as out:
        completed = subprocess.run(
            [str(binary), *args], stdout=out, stderr=subprocess.STDOUT, user=user, timeout=60, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{binary.name} failed:\n{(logs / f'{binary.name}.out').read_text()}")


@contextlib.contextmanager
def throwaway_postgres(
    prefix: str,
    initdb_args: list[str],
    *,
    files: dict[str, str] | None = None,
    hba: str | None = None,
    server_options: str = "",
    bindir: Path | None = None,
) -> Iterator[tuple[int, Path]]:
    """A PostgreSQL on 127.0.0.1 only, from ``bindir`` (default: the pgserver wheel's
    binaries); yields (port, folder).

    ``files`` are written into the folder first (mode 0600, owned by the server's
    user: a TLS key must be); ``{base}`` in ``initdb_args`` and ``server_options``
    is that folder. ``hba`` replaces ``pg_hba.conf``. The server is stopped and
    the folder removed at the end. As root, PostgreSQL refuses to run: initdb and
    pg_ctl then run as the unprivileged ``pgserver`` user, as pgserver itself does.
    """
    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set (pgserver's import)
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    wheel = bindir is None
    bindir = POSTGRES_BIN_PATH if bindir is None else bindir
    base = Path(tempfile.mkdtemp(prefix=prefix))
    data = base / "data"
    written = []
    for name, text in (files or {}).items():
        path = base / name
        path.write_text(text)
        path.chmod(0o600)
        written.append(path)
    user = None
    if os.geteuid() == 0:
        import pwd
        import stat

        user = "pgserver"
        entry = ensure_user_exists(user)
        assert entry is not None
        ensure_prefix_permissions(base)
        if wheel:  # the wheel's files are root's only; a system installation's are not touched
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            readable = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        for path in (base, *written):
            os.chown(path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    pg_ctl = bindir / "pg_ctl"
    try:
        _run_pg(
            bindir / "initdb",
            [*(arg.format(base=base) for arg in initdb_args), "-D", str(data), "-U", "postgres",
             "--encoding=utf8", "--no-sync"],
            user,
            base,
        )
        if hba is not None:
            (data / "pg_hba.conf").write_text(hba)
        port = free_port()
        try:
            _run_pg(
                pg_ctl,
                ["-D", str(data), "-w", "-t", "30", "-l", str(base / "server.log"),
                 "-o", f"-h 127.0.0.1 -p {port} -k {base} {server_options.format(base=base)}", "start"],
                user,
                base,
            )
        except RuntimeError as exc:
            log = base / "server.log"
            raise RuntimeError(f"{exc}\nserver.log:\n{log.read_text() if log.exists() else ''}") from None
        try:
            yield port, base
        finally:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # already stopped
                _run_pg(pg_ctl, ["-D", str(data), "-m", "immediate", "stop"], user, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def scram_server() -> Iterator[ScramServer]:
    """A throwaway server with ``--auth=scram-sha-256``."""
    password = f"sup3r-{SECRET}"
    with throwaway_postgres(
        "dbinit-scram-",
        ["--auth=scram-sha-256", "--pwfile={base}/pwfile"],
        files={"pwfile": password + "\n"},
    ) as (port, _):
        yield ScramServer(port, password)


# -- a server that speaks TLS only --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TlsServer:
    """A PostgreSQL on 127.0.0.1:``port`` that accepts TLS connections only (trust auth).

    Its certificate (for IP 127.0.0.1 and localhost) is signed by ``ca_file``;
    ``other_ca_file`` signed nothing of it.
    """

    port: int
    ca_file: Path
    other_ca_file: Path

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=require"

    def url(self, database: str, query: str = "", *, hosts: str | None = None) -> str:
        netloc = hosts or f"127.0.0.1:{self.port}"
        return f"postgresql://postgres@{netloc}/{database}" + (f"?{query}" if query else "")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> None:
    """``ca.crt`` + ``server.crt``/``server.key`` (signed by it, for 127.0.0.1), ``other-ca.crt``."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                 "-subj", f"/CN=dbinit test {name}", *ca, cwd=folder)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=folder)


def postgres_bindirs() -> list[Path]:
    """PostgreSQL installations to start a throwaway server from: the PATH's, the system's
    (Debian's /usr/lib/postgresql/N/bin), then the pgserver wheel's (built without TLS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    found = []
    on_path = shutil.which("postgres")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    found += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found.append(POSTGRES_BIN_PATH)
    unique = []
    for bindir in found:
        if bindir not in unique and (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            unique.append(bindir)
    return unique


@pytest.fixture(scope="session")
def tls_server() -> Iterator[TlsServer]:
    """A throwaway server with ``ssl=on`` and a pg_hba that rejects connections without TLS.

    The pgserver wheel's PostgreSQL is built without TLS ("SSL is not supported
    by this build"), so the first installation that starts with ``ssl=on`` is used;
    none: the tests that need it are skipped, saying why.
    """
    certificates = Path(tempfile.mkdtemp(prefix="dbinit-certs-"))
    try:
        make_certificates(certificates)
        failures = []
        for bindir in postgres_bindirs():
            try:
                server = throwaway_postgres(
                    "dbinit-tls-",
                    ["--auth=trust"],
                    files={name: (certificates / name).read_text() for name in ("server.crt", "server.key")},
                    hba="local all all trust\n"
                    "hostssl all all 127.0.0.1/32 trust\n"
                    "hostnossl all all 127.0.0.1/32 reject\n",
                    server_options="-c ssl=on -c ssl_cert_file={base}/server.crt "
                    "-c ssl_key_file={base}/server.key",
                    bindir=bindir,
                )
                port, _ = server.__enter__()
            except RuntimeError as exc:
                failures.append(f"{bindir}: {str(exc).strip().splitlines()[-1]}")
                continue
            try:
                yield TlsServer(port, certificates / "ca.crt", certificates / "other-ca.crt")
            finally:
                server.__exit__(None, None, None)
            return
        pytest.skip("no PostgreSQL here starts with ssl=on: " + "; ".join(failures))
    finally:
        shutil.rmtree(certificates, ignore_errors=True)
