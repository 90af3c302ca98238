"""A PostgreSQL wire-protocol proxy that counts what the client sends.

It forwards bytes both ways unchanged and parses the frontend stream: the
untyped startup/SSL request, then typed messages. ``queries`` counts simple
``Query`` messages, ``executes`` extended-protocol ``Execute`` messages and
``syncs`` the ``Sync`` messages (each ends a round trip of the extended
protocol). Used to prove that ``verify`` sends one statement.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


class CountingProxy:
    def __init__(
        self, upstream_host: str | None, upstream_port: int | None, socket_dir: str | None
    ) -> None:
        self.upstream = (upstream_host, upstream_port, socket_dir)
        self.messages: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, family=socket.AF_INET)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port, socket_dir = self.upstream
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port or 5432}")
        return await asyncio.open_connection(host, port or 5432)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()

        async def backend_to_client() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
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
                    break
            while True:
                header = await reader.readexactly(5)
                kind = header[:1].decode()
                (length,) = struct.unpack("!i", header[1:])
                body = await reader.readexactly(length - 4)
                self.messages[kind] += 1
                up_writer.write(header + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            await asyncio.gather(pump, return_exceptions=True)

    @property
    def statements(self) -> int:
        return self.messages["Q"] + self.messages["E"]

    @property
    def round_trips(self) -> int:
        return self.messages["Q"] + self.messages["S"]


@contextlib.contextmanager
def counting_proxy(
    host: str | None, port: int | None, socket_dir: str | None
) -> Iterator[CountingProxy]:
    proxy = CountingProxy(host, port, socket_dir)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
