"""A PostgreSQL wire-protocol proxy for tests: counts, cuts, goes away and comes back.

It forwards bytes both ways unchanged and parses the frontend stream: the
untyped SSL/GSS requests and startup packet, then typed messages.
``messages`` counts them by type: ``statements`` are simple ``Query`` plus
extended ``Execute`` messages, ``round_trips`` are ``Query`` plus ``Sync``
(used to prove that ``verify`` sends one statement). ``stop()`` refuses new
connections and drops the open ones (a server that went away), ``start()``
listens again on the same port; ``cut_on_query`` drops a connection as its
first query arrives (a connection lost after login).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any, Literal

from dbinit.urls import DatabaseURL

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


@dataclasses.dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side, the server's side, what the client said it is."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    application_name: str = ""
    blackholed: bool = False
    last_seen: float = 0.0  # loop time of the last bytes either way

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()


def _startup_parameters(body: bytes) -> dict[str, str]:
    """The key/value pairs of a startup packet's body (after the protocol version)."""
    fields = body.split(b"\0")
    return {
        fields[i].decode(errors="replace"): fields[i + 1].decode(errors="replace")
        for i in range(0, len(fields) - 1, 2)
        if fields[i]
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgProxy:
    """A TCP proxy on 127.0.0.1:``port`` in front of a PostgreSQL server (TCP or unix socket)."""

    def __init__(self, upstream: DatabaseURL) -> None:
        socket_dir = dict(upstream.query).get("host") or (
            upstream.host if upstream.host and upstream.host.startswith("/") else None
        )
        self._upstream = (upstream.host or "127.0.0.1", upstream.port or 5432, socket_dir)
        self.port = free_port()
        self.messages: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.cut_on_query = False
        self.cut = 0
        self.cut_names: list[str] = []
        self.idle_cut: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._watchdog: asyncio.Future[None] | None = None

    @property
    def statements(self) -> int:
        return self.messages["Q"] + self.messages["E"]

    @property
    def round_trips(self) -> int:
        return self.messages["Q"] + self.messages["S"]

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def start(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, family=socket.AF_INET, reuse_address=True
            )
            if self._watchdog is None:
                self._watchdog = asyncio.ensure_future(self._cut_idle())

        self._call(listen())

    def _cut_link(self, link: _Link) -> None:
        self.cut += 1
        self.cut_names.append(link.application_name)
        link.abort()

    async def _cut_idle(self) -> None:
        """Every 0.1 s: cut the connections idle for longer than ``idle_cut``."""
        while True:
            await asyncio.sleep(0.1)
            if self.idle_cut is None:
                continue
            now = self._loop.time()
            for link in [link for link in self._links if now - link.last_seen > self.idle_cut]:
                self._cut_link(link)

    def stop(self) -> None:
        """Refuse new connections and drop the open ones (a server that went away)."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for link in list(self._links):
                link.abort()
            self._links.clear()

        self._call(close())

    def cut_session(self, prefix: str, mode: Literal["reset", "blackhole"] = "reset") -> int:
        """Cut the open connections whose ``application_name`` starts with ``prefix``; how many."""

        async def cut() -> int:
            links = [link for link in self._links if link.application_name.startswith(prefix)]
            for link in links:
                if mode == "blackhole":
                    link.blackholed = True
                    link.upstream.transport.abort()
                    self.cut += 1
                    self.cut_names.append(link.application_name)
                else:
                    self._cut_link(link)
            return len(links)

        return int(self._call(cut()))

    def close(self) -> None:
        self.stop()

        async def end_watchdog() -> None:
            if self._watchdog is not None:
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):  # the cancel asked for just now
                    await self._watchdog

        self._call(end_watchdog())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port, socket_dir = self._upstream
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer, last_seen=self._loop.time())
        self._links.add(link)

        async def backend_to_client() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    link.last_seen = self._loop.time()
                    writer.write(data)
                    await writer.drain()
            if not link.blackholed:  # a black hole never tells the client
                writer.close()

        pump = asyncio.ensure_future(backend_to_client())
        try:
            while True:  # untyped messages: SSL/GSS requests, then the startup packet
                header = await reader.readexactly(8)
                length, code = struct.unpack("!ii", header)
                body = await reader.readexactly(length - 8)
                up_writer.write(header + body)
                await up_writer.drain()
                if code not in (SSL_REQUEST, GSS_REQUEST):
                    link.application_name = _startup_parameters(body).get("application_name", "")
                    break
            while True:  # typed messages
                header = await reader.readexactly(5)
                (length,) = struct.unpack("!i", header[1:])
                body = await reader.readexactly(length - 4)
                link.last_seen = self._loop.time()
                if link.blackholed:
                    continue  # swallowed: nothing reaches the server, nothing comes back
                kind = header[:1]
                if self.cut_on_query and kind in (b"Q", b"P"):
                    self._cut_link(link)
                    break
                self.messages[kind.decode()] += 1
                up_writer.write(header + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # either side went away: the link ends (the finally below)
        finally:
            up_writer.close()
            await asyncio.gather(pump, return_exceptions=True)
            self._links.discard(link)

    def url_for(self, database_url: str | DatabaseURL, *, password: str | None = None) -> str:
        """``database_url`` re-pointed at this proxy (TCP, 127.0.0.1:port)."""
        parsed = DatabaseURL.parse(database_url) if isinstance(database_url, str) else database_url
        parsed = dataclasses.replace(
            parsed,
            host="127.0.0.1",
            port=self.port,
            query=tuple((k, v) for k, v in parsed.query if k != "host"),
            password=password if password is not None else parsed.password,
        )
        return parsed.for_sqlalchemy(async_driver=True)


@contextlib.contextmanager
def pg_proxy(upstream: str | DatabaseURL) -> Iterator[PgProxy]:
    """A started proxy in front of ``upstream``, closed at the end."""
    proxy = PgProxy(DatabaseURL.parse(upstream) if isinstance(upstream, str) else upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
