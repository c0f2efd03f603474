"""A scriptable loopback HTTP server for transport tests.

Handlers get a :class:`Peer` per accepted connection and write raw response bytes, so
tests can script exactly what goes on the wire (framing errors, 1xx, truncation, ...).
Requests are parsed just enough to read their body (Content-Length or chunked).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio


@dataclass
class ReceivedRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Peer:
    """The server side of one connection."""

    def __init__(self, stream: trio.abc.Stream, server: RawServer) -> None:
        self.stream = stream
        self.server = server
        self._buf = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not data:
            return False
        self._buf += data
        return True

    async def _read_until(self, sep: bytes) -> bytes | None:
        while (idx := self._buf.find(sep)) < 0:
            if not await self._fill():
                return None
        out = bytes(self._buf[:idx])
        del self._buf[: idx + len(sep)]
        return out

    async def _read_exactly(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            if not await self._fill():
                return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_request(self) -> ReceivedRequest | None:
        """The next request on this connection, or None at EOF."""
        head = await self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = [tuple(line.split(b":", 1)) for line in lines[1:]]
        pairs = [(k.strip(), v.strip()) for k, v in headers]
        req = ReceivedRequest(method, target, pairs, b"")
        length = req.header(b"content-length")
        if length is not None:
            body = await self._read_exactly(int(length))
            if body is None:
                return None
            req.body = body
        elif (req.header(b"transfer-encoding") or b"").lower() == b"chunked":
            parts = []
            while True:
                size_line = await self._read_until(b"\r\n")
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0], 16)
                chunk = await self._read_exactly(size + 2)
                if chunk is None:
                    return None
                if size == 0:
                    break
                parts.append(chunk[:-2])
            req.body = b"".join(parts)
        self.server.requests.append(req)
        return req

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_eof(self) -> None:
        """Discard input until the client closes its side (or the stream breaks)."""
        self._buf.clear()
        while await self._fill():
            self._buf.clear()


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    port: int = 0
    connections: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    client_closed: trio.Event = field(default_factory=trio.Event)
    open_connections: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    def _opened(self, delta: int) -> None:
        self.open_connections += delta
        self._changed.set()
        self._changed = trio.Event()

    async def wait_open_connections(self, count: int, *, limit: float = 1.0) -> None:
        """Wait until exactly ``count`` connections are open server-side."""
        with trio.fail_after(limit):
            while self.open_connections != count:
                await self._changed.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def raw_server(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    """Serve ``handler`` on 127.0.0.1 (TLS if ``ssl_context``) for the block's duration."""
    server = RawServer()

    async def on_connection(stream: trio.abc.Stream) -> None:
        server.connections += 1
        server._opened(+1)
        try:
            await handler(Peer(stream, server))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            server._opened(-1)
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        if ssl_context is None:
            listeners = await nursery.start(
                partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1")
            )
        else:
            listeners = await nursery.start(
                partial(
                    trio.serve_ssl_over_tcp,
                    on_connection,
                    0,
                    ssl_context,
                    host="127.0.0.1",
                    https_compatible=True,
                )
            )
        listener = listeners[0]
        sock = listener.socket if ssl_context is None else listener.transport_listener.socket
        server.port = sock.getsockname()[1]
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def responder(
    response: bytes | Callable[[ReceivedRequest], bytes], *, close_after: int | None = None
) -> Handler:
    """A keep-alive handler answering every request with ``response``.

    ``close_after``: close the connection after that many responses on it.
    """

    async def handle(peer: Peer) -> None:
        served = 0
        while True:
            req = await peer.read_request()
            if req is None:
                return
            await peer.send(response(req) if callable(response) else response)
            served += 1
            if close_after is not None and served >= close_after:
                return

    return handle


def http_response(
    body: bytes = b"",
    *,
    status: bytes = b"200 OK",
    headers: list[tuple[bytes, bytes]] | None = None,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A Content-Length framed response."""
    lines = [version + b" " + status]
    for key, value in headers or []:
        lines.append(key + b": " + value)
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
