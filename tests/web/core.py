"""The test web's core: one HTTP/1.1 server (trio + h11) with pluggable routes.

A :class:`Web` holds routes (``web.route("/path", handler)``, or route sets such as
:class:`tests.web.routes.LinkGraph` passed to the constructor) and serves them two ways:

* over loopback: ``async with web.serving(ports=2):`` listens on fresh ``127.0.0.1`` ports,
  each its own origin (TLS with ``ssl_context=``), and records every request in
  :attr:`Web.log`, so politeness is asserted from the server's side of the wire;
* in process: ``web.transport()`` is an ``httpx.MockTransport`` running the same handlers
  (under pytest-trio's ``autojump_clock`` too).

A handler gets an :class:`Exchange`: the request, and ways to answer it down to the
socket (a reset, a partial body, a drip).  A web built with ``handler=`` instead hands each
raw connection (a :class:`Conn`) to that function, which reads requests and writes whatever
bytes it likes: transport tests script the wire this way (:func:`raw_server`).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import functools
import itertools
import json
import logging
import math
import socket
import ssl
import struct
import termios
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Final, Self
from urllib.parse import parse_qs, urlsplit

import h11
import httpx
import trio

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
_RECV_BYTES: Final = 65536
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
_TCP_ESTABLISHED: Final = 1

Handler = Callable[["Exchange"], Awaitable[None]]
"""A route handler: answers one request."""
ConnHandler = Callable[["Conn"], Awaitable[None]]
"""A raw connection handler (``Web(handler=...)``): owns the whole connection."""


# --------------------------------------------------------------------------------------
# The request log


@dataclass(slots=True)
class RequestRecord:
    """One request as the server saw it.

    ``start`` is ``trio.current_time()`` when the request head arrived; ``end`` is when the
    response was fully sent or the connection died (``math.inf`` while still in flight).
    ``status`` is the status the server sent (``None`` if it never sent a head: a stall, a
    reset, a raw handler, a client that left first).  ``port`` is the real port number,
    not its index; ``headers`` has lower-case names (repeated ones joined with ``", "``),
    ``raw_headers`` the names and values as they came, in order.
    """

    port: int
    method: str
    path: str
    headers: dict[str, str]
    start: float
    end: float
    status: int | None
    conn_id: int
    origin: str = ""
    body: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.origin + self.path

    def to_json(self) -> str:
        """The record as one JSON line (``load_log`` reads it back), body and raw headers
        left out."""
        data = {f.name: getattr(self, f.name) for f in fields(self)[:-2]}
        return json.dumps(data, separators=(",", ":"))


def load_log(path: str | Path) -> list[RequestRecord]:
    """Read a ``--log`` JSON-lines file written by ``python -m tests.web``."""
    with open(path, encoding="utf-8") as f:
        return [RequestRecord(**json.loads(line)) for line in f if line.strip()]


def max_concurrency(records: Iterable[RequestRecord]) -> int:
    """The largest number of overlapping ``[start, end)`` intervals.

    A zero-length record (possible under a mock clock) counts as a point that overlaps
    whatever is in flight at that instant.
    """
    events: list[tuple[float, int]] = []
    for r in records:
        end = r.end if r.end > r.start else math.nextafter(r.start, math.inf)
        events.append((r.start, 1))
        events.append((end, -1))
    events.sort()  # at equal times -1 (an end) sorts before +1 (a start): half-open
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def start_gaps(records: Iterable[RequestRecord]) -> list[float]:
    """Gaps between consecutive request starts (sorted by start)."""
    starts = sorted(r.start for r in records)
    return [b - a for a, b in itertools.pairwise(starts)]


def max_in_window(records: Iterable[RequestRecord], window: float) -> int:
    """The largest number of request starts inside any half-open window of this length."""
    starts = sorted(r.start for r in records)
    best = 0
    lo = 0
    for hi, t in enumerate(starts):
        while t - starts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# --------------------------------------------------------------------------------------
# One connection


class Conn:
    """The server side of one connection: reads requests (h11), writes what it is told."""

    def __init__(self, web: Web, stream: trio.abc.Stream, index: int, conn_id: int) -> None:
        self.web = web
        self.stream = stream
        self.index = index
        self.id = conn_id
        self.port = web.ports[index]
        self.origin = web.origins[index]
        self.h11 = h11.Connection(h11.SERVER)
        self.eof = False
        #: Requests read on this connection so far.
        self.requests = 0
        #: The request being served, until the next one is read or the connection ends.
        self.exchange: Exchange | None = None

    async def receive(self) -> bytes:
        """Some bytes from the client; ``b""`` once it closed (or the stream broke)."""
        try:
            data = bytes(await self.stream.receive_some(_RECV_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.eof = self.eof or not data
        return data

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_eof(self) -> None:
        """Discard input until the client closes its side (or the stream breaks)."""
        while await self.receive():
            pass

    async def read_request(self) -> RequestRecord | None:
        """The next request, body included (raw handlers), or None when the client left."""
        exchange = await self.read_exchange()
        return None if exchange is None else exchange.record

    async def read_exchange(self) -> Exchange | None:
        """The next request, read whole; None when the client closed (even mid-request).

        Raises ``h11.RemoteProtocolError`` for a malformed request."""
        self.end_exchange()
        if self.requests:  # h11 parses requests only: each one with a fresh state
            data, closed = self.h11.trailing_data
            self.h11 = h11.Connection(h11.SERVER)
            if data:
                self.h11.receive_data(bytes(data))
            if closed:
                self.h11.receive_data(b"")
        try:
            event = await self._next_event()
            if not isinstance(event, h11.Request):
                return None  # ConnectionClosed
            self.requests += 1
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            if len(headers) < len(event.headers):  # a repeated name: join the values
                headers = {}
                for k, v in event.headers:
                    key, text = k.decode("latin-1"), v.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
            method, target = event.method.decode("latin-1"), event.target.decode("latin-1")
            record = RequestRecord(
                self.port, method, target, headers, trio.current_time(), math.inf, None,
                self.id, self.origin, raw_headers=event.headers.raw_items(),
            )  # fmt: skip
            self.exchange = Exchange(self.web, record, self.index, conn=self)
            body = bytearray()
            while not isinstance(event := await self._next_event(), h11.EndOfMessage):
                if isinstance(event, h11.Data):
                    body += event.data
            record.body = bytes(body)
            return self.exchange
        except h11.RemoteProtocolError:
            if self.eof:
                return None  # the client closed mid-request: not its fault, nor ours
            raise

    async def _next_event(self) -> object:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            self.h11.receive_data(await self.receive())
        return event

    def end_exchange(self) -> None:
        if self.exchange is not None:
            self.web._end(self.exchange)
            self.exchange = None

    @property
    def socket(self) -> trio.socket.SocketType | None:
        stream = self.stream
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return stream.socket if isinstance(stream, trio.SocketStream) else None

    def established(self) -> bool:
        """Whether the peer has neither closed nor reset the connection (Linux TCP_INFO)."""
        try:
            info = self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return False
        return info[0] == _TCP_ESTABLISHED

    def unread(self) -> int:
        """Bytes received on the connection and not read yet (FIONREAD)."""
        buffer = array.array("i", [0])
        try:
            fcntl.ioctl(self.socket.fileno(), termios.FIONREAD, buffer)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return 0
        return buffer[0]

    async def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER on, zero timeout)."""
        if (sock := self.socket) is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)


# --------------------------------------------------------------------------------------
# One request and its answer


class Exchange:
    """One request and the means to answer it, handed to a route handler.

    The same calls work over loopback (bytes on the socket, the head held back until the
    first body bytes so that a small response is one write) and in process (an
    ``httpx.Response`` is assembled; :meth:`reset` raises ``httpx.ReadError``).
    """

    def __init__(
        self,
        web: Web,
        record: RequestRecord,
        index: int,
        *,
        conn: Conn | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        self.web = web
        self.record = record
        #: The origin's index in ``web.origins`` (the port index over loopback).
        self.index = index
        self.conn = conn
        #: The ``httpx.Request`` (in process only).
        self.request = request
        self.method = record.method
        path = record.path.partition("?")[0]
        self.path = path if path.startswith("/") else urlsplit(record.path).path or "/"
        #: How often this path (without query) was requested on this origin, this time
        #: included (0 when the web keeps no log).
        self.hits = 0
        #: Set by handlers that must not keep the connection alive.
        self.close = False
        #: Still counted in flight by the web (see :meth:`finish`).
        self.live = True
        #: In process: the response, once complete.
        self.response: httpx.Response | None = None
        #: Whether the response was completed (:meth:`end_response`).
        self.done = False
        self.keep_alive = False
        self._chunked = False
        self._head = b""
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        web._begin(self)

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def headers(self) -> dict[str, str]:
        return self.record.headers

    @functools.cached_property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.record.path).query).items()}

    def query_float(self, name: str, default: float) -> float:
        try:
            value = float(self.query[name])
        except (KeyError, ValueError):
            return default
        return value if math.isfinite(value) and value >= 0 else default

    # ---- answering -------------------------------------------------------------------

    def start_response(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """The status and headers (sent with the first body bytes, or by :meth:`flush`).

        Without a Content-Length the body is chunked (close-delimited for HTTP/1.0)."""
        self.record.status = status
        if self.conn is None:
            self._status, self._headers = status, list(headers)
            return
        conn = self.conn.h11
        self.keep_alive = conn.their_state is h11.DONE  # not when the client asked to close
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if (
            self.method != "HEAD"
            and status not in (204, 304)
            and not any(name.lower() == "content-length" for name, _ in headers)
        ):
            if conn.their_http_version == b"1.0":
                self.keep_alive = False
            else:
                self._chunked = True
                lines.append("Transfer-Encoding: chunked")
        if self.close or not self.keep_alive:
            lines.append("Connection: close")
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_body(self, data: bytes) -> None:
        if self.method == "HEAD":
            data = b""
        if self.conn is None:
            self._body.append(data)
            return
        if data and self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        out, self._head = self._head + data, b""
        if out:
            await self.conn.send(out)

    async def flush(self) -> None:
        """Send the head now (before a slow body)."""
        await self.send_body(b"")

    async def end_response(self) -> None:
        """The response is complete (the connection may be kept alive)."""
        out, self._head = self._head + (b"0\r\n\r\n" if self._chunked else b""), b""
        self.done = True
        self.finish()
        if out and self.conn is not None:
            await self.conn.send(out)

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/html; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        length = str(len(body))
        self.start_response(
            status, [("Content-Type", content_type), ("Content-Length", length), *headers]
        )
        if self.conn is None:
            await self.send_body(body)
        elif self.method != "HEAD":
            self._head += body  # one write: head and body
        await self.end_response()

    async def html(self, status: int, title: str, body: str) -> None:
        await self.respond(status, html_page(title, body).encode())

    async def redirect(self, status: int, location: str) -> None:
        body = html_page("Redirect", f'<a href="{location}">{location}</a>').encode()
        await self.respond(status, body, headers=[("Location", location)])

    async def respond_with(self, response: httpx.Response) -> None:
        """Answer with an ``httpx.Response`` (in process: that very object)."""
        if self.conn is None:
            self.record.status = response.status_code
            self.response = response
            return
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw]
        self.start_response(response.status_code, raw)
        await self.send_body(response.content)
        await self.end_response()

    def finish(self) -> None:
        """Stop counting this request in flight: call it just before the last write (once
        the client has the whole answer, it may send its next request at once)."""
        if self.live:
            self.live = False
            self.web._active[self.index].discard(self)

    def alive(self) -> bool:
        """Whether the client still holds its connection open."""
        return self.conn is None or self.conn.established()

    async def until_client_gone(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` until it returns or the client closes the connection (which is
        closed afterwards: what the client sends meanwhile is discarded)."""
        self.close = True
        conn = self.conn
        if conn is None:
            await body()
            return
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await conn.wait_eof()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            with contextlib.suppress(trio.BrokenResourceError):
                await body()  # BrokenResourceError: the client left while we were writing
            nursery.cancel_scope.cancel()

    async def reset(self) -> None:
        """Drop the connection with a TCP RST (in process: raise ``httpx.ReadError``)."""
        self.close = True
        self.finish()
        if self.conn is None:
            raise httpx.ReadError("connection reset by the test web", request=self.request)
        await self.conn.reset()

    def _mock_response(self) -> httpx.Response:
        if self.response is None:
            if not self._status:
                raise httpx.RemoteProtocolError("no response", request=self.request)
            content = b"".join(self._body)
            self.response = httpx.Response(self._status, headers=self._headers, content=content)
        return self.response


def html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------
# Route sets and the web


class Routes:
    """A pluggable set of routes: :meth:`routes` lists ``(path, handler)`` pairs (a path
    ending in ``*`` is a prefix).  Once added to a :class:`Web`, :attr:`web` is that web."""

    web: Web

    def routes(self) -> Iterable[tuple[str, Handler]]:
        raise NotImplementedError


class Web:
    """Routes (or a raw connection handler), served over loopback or in process.

    ``latency``: every routed request is answered that much later.  ``log=False`` keeps
    neither :attr:`log` nor hit counts (long soak runs).  ``on_record`` is called with
    every finished record, ``on_request`` (async) with every routed exchange before the
    latency and the handler.  ``origins`` name the origins served in process (their
    index is what handlers see as ``exchange.index``; unknown ones are appended).
    Helpers that take a ``port`` accept the port number or its index in :attr:`ports`.
    """

    def __init__(
        self,
        *routes: Routes,
        handler: ConnHandler | None = None,
        latency: float = 0.0,
        log: bool = True,
        on_record: Callable[[RequestRecord], None] | None = None,
        on_request: Callable[[Exchange], Awaitable[None]] | None = None,
        origins: Sequence[str] = (),
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.handler = handler
        self.latency = latency
        self.keep_log = log
        self.on_record = on_record
        self.on_request = on_request
        self.scheme = "http"
        self.origins: list[str] = list(origins)
        self._ports: list[int] = []
        #: Every request, in arrival order; a record is appended when the head arrives and
        #: completed (``end``, ``status``) in place.
        self.log: list[RequestRecord] = []
        #: Protocol errors and unexpected exceptions (client disconnects are not errors).
        self.errors: list[str] = []
        #: Paths no route serves (answered 404).
        self.unknown_paths: list[str] = []
        #: Requests being served right now.
        self.in_flight = 0
        #: Peak requests in flight per origin, counted live: when a request arrives, another
        #: one counts only if its client still holds its connection (one that gave up has
        #: closed its socket, even if the server has not noticed yet).
        self.peak: Counter[str] = Counter()
        #: The same without that refinement.
        self.peak_naive: Counter[str] = Counter()
        self.connections = 0
        self.open_connections = 0
        #: For raw handlers to signal a test.
        self.client_closed = trio.Event()
        self._changed = trio.Event()
        self._quiet: trio.Event | None = None
        self._hits: Counter[tuple[int, str]] = Counter()
        self._active: defaultdict[int, set[Exchange]] = defaultdict(set)
        self._conn_ids = itertools.count(1)
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        for route_set in routes:
            self.add(route_set)

    # ---- routes ----------------------------------------------------------------------

    def add(self, routes: Routes) -> None:
        routes.web = self
        for path, handler in routes.routes():
            self.route(path, handler)

    def route(self, path: str, handler: Handler) -> None:
        """Serve ``path`` with ``handler`` (``"/a/*"``: every path under ``/a/``)."""
        if path.endswith("*"):
            self._prefixes.append((path[:-1], handler))
        else:
            self._exact[path] = handler

    def find(self, path: str) -> Handler:
        handler = self._exact.get(path)
        if handler is None:
            for prefix, candidate in self._prefixes:
                if path.startswith(prefix):
                    return candidate
            return self.not_found
        return handler

    async def not_found(self, ex: Exchange) -> None:
        self.unknown_paths.append(ex.path)
        await ex.html(404, "Not found", f"<p>No such page: {ex.path}</p>")

    # ---- origins and URLs ------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return self._ports

    @ports.setter
    def ports(self, ports: Sequence[int]) -> None:
        """Set by :meth:`serve`; a test may set it to describe a server in a subprocess."""
        self._ports = list(ports)
        self.origins = [f"{self.scheme}://{HOST}:{port}" for port in self._ports]

    @property
    def port(self) -> int:
        return self._ports[0]

    def port_index(self, port: int) -> int:
        """The index of a port number, or ``port`` itself if it is an index."""
        if port in self._ports:
            return self._ports.index(port)
        if 0 <= port < len(self.origins):
            return port
        raise ValueError(f"{port} is neither a port of this server nor a port index")

    def port_number(self, port: int) -> int:
        return self._ports[self.port_index(port)]

    def origin(self, index: int = 0) -> str:
        return self.origins[index]

    def url(self, index: int = 0, path: str = "/") -> str:
        return self.origins[index] + path

    # ---- serving over loopback -------------------------------------------------------

    async def serve(
        self,
        nursery: trio.Nursery,
        ports: int = 1,
        *,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int | None = None,
    ) -> list[int]:
        """Listen on ``ports`` loopback ports (fresh ones, unless ``port`` is given),
        serving from tasks in ``nursery``."""
        if self._ports:
            raise RuntimeError("this Web is already serving")
        if ports < 1:
            raise ValueError("ports must be >= 1")
        groups: list[list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]] = []
        try:
            for _ in range(ports):
                if ssl_context is None:
                    groups.append(await trio.open_tcp_listeners(port, host=HOST, backlog=backlog))
                else:
                    groups.append(
                        await trio.open_ssl_over_tcp_listeners(
                            port, ssl_context, host=HOST, https_compatible=True, backlog=backlog
                        )
                    )
        except BaseException:
            for listeners in groups:
                for listener in listeners:
                    await listener.aclose()
            raise
        self.scheme = "http" if ssl_context is None else "https"
        self.ports = [_listening_port(listeners[0]) for listeners in groups]
        for index, listeners in enumerate(groups):
            handler = functools.partial(self._connection, index)
            await nursery.start(trio.serve_listeners, handler, listeners)
        return list(self._ports)

    @asynccontextmanager
    async def serving(
        self, ports: int = 1, *, ssl_context: ssl.SSLContext | None = None
    ) -> AsyncIterator[Self]:
        """Serve on ``ports`` loopback ports for the ``async with`` body."""
        async with trio.open_nursery() as nursery:
            await self.serve(nursery, ports, ssl_context=ssl_context)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def _connection(self, index: int, stream: trio.abc.Stream) -> None:
        conn = Conn(self, stream, index, next(self._conn_ids))
        self.connections += 1
        self._count_open(+1)
        try:
            if self.handler is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.handler(conn)
            else:
                await self._serve_connection(conn)
        finally:
            conn.end_exchange()
            self._count_open(-1)
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, conn: Conn) -> None:
        try:
            while await self._serve_one(conn):
                pass
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            logger.debug("test web: connection %d: client went away", conn.id)
        except* Exception as group:
            self._note_error(f"port {conn.port} connection {conn.id}: unexpected: {group!r}")
            logger.debug("test web: traceback", exc_info=group)

    async def _serve_one(self, conn: Conn) -> bool:
        """Serve one request; return whether the connection can be kept alive."""
        try:
            ex = await conn.read_exchange()
        except h11.RemoteProtocolError as exc:
            await self._reject(conn, exc)
            return False
        if ex is None:
            return False
        try:
            await self._serve(ex)
        finally:
            conn.end_exchange()
        return ex.done and ex.keep_alive and not ex.close

    async def _reject(self, conn: Conn, exc: h11.RemoteProtocolError) -> None:
        self._note_error(f"port {conn.port} connection {conn.id}: bad request: {exc}")
        status, body = exc.error_status_hint, f"bad request: {exc}\n".encode()
        if conn.exchange is not None:
            conn.exchange.record.status = status
        head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: text/plain"
        head += f"; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        await conn.send(head.encode() + body)

    # ---- serving in process ----------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` serving these routes in process."""
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request in process."""
        url = request.url
        userinfo = url.userinfo.decode("ascii") + "@" if url.userinfo else ""
        origin = f"{url.scheme}://{userinfo}{url.netloc.decode('ascii')}"
        if origin not in self.origins:
            self.origins.append(origin)
        record = RequestRecord(
            url.port or (443 if url.scheme == "https" else 80), request.method,
            url.raw_path.decode("ascii"), dict(request.headers.items()), trio.current_time(),
            math.inf, None, 0, origin, await request.aread(), list(request.headers.raw),
        )  # fmt: skip
        ex = Exchange(self, record, self.origins.index(origin), request=request)
        try:
            await self._serve(ex)
            return ex._mock_response()
        finally:
            self._end(ex)

    # ---- bookkeeping -----------------------------------------------------------------

    async def _serve(self, ex: Exchange) -> None:
        if self.keep_log:
            key = (ex.index, ex.path)
            self._hits[key] += 1
            ex.hits = self._hits[key]
        if self.on_request is not None:
            await self.on_request(ex)
        if self.latency:
            await trio.sleep(self.latency)
        if ex.method in ("GET", "HEAD"):
            await self.find(ex.path)(ex)
        else:
            allow = [("Allow", "GET, HEAD")]
            await ex.respond(405, b"method not allowed\n", "text/plain", headers=allow)

    def _begin(self, ex: Exchange) -> None:
        if self.keep_log:
            self.log.append(ex.record)
        self.in_flight += 1
        active = self._active[ex.index]
        active.add(ex)
        origin = ex.record.origin
        naive = len(active)
        if naive > self.peak_naive[origin]:
            self.peak_naive[origin] = naive
        if naive > self.peak[origin]:
            alive = 1 + sum(1 for other in active if other is not ex and other.alive())
            self.peak[origin] = max(self.peak[origin], alive)

    def _end(self, ex: Exchange) -> None:
        ex.finish()
        ex.record.end = trio.current_time()
        self.in_flight -= 1
        if not self.in_flight and self._quiet is not None:
            self._quiet.set()
        if self.on_record is not None:
            self.on_record(ex.record)

    def _note_error(self, message: str) -> None:
        self.errors.append(message)
        logger.warning("test web: %s", message)

    def _count_open(self, delta: int) -> None:
        self.open_connections += delta
        self._changed.set()
        self._changed = trio.Event()

    # ---- what happened ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget the log, the errors and the hit counts (``/flaky`` etc. start over)."""
        self.log.clear()
        self.errors.clear()
        self._hits.clear()

    def hits(self, path: str, port: int | None = None) -> int:
        """How often ``path`` (without query) was requested, on one port or all of them."""
        if port is not None:
            return self._hits[(self.port_index(port), path)]
        return sum(n for (_, p), n in self._hits.items() if p == path)

    def requests_for(
        self, port: int | None = None, *, path_prefix: str | None = None
    ) -> list[RequestRecord]:
        """Records for one port (number or index; all ports if None), optionally filtered."""
        number = None if port is None else self.port_number(port)
        return [
            r
            for r in self.log
            if (number is None or r.port == number)
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def max_concurrency(self, port: int) -> int:
        return max_concurrency(self.requests_for(port))

    def start_gaps(self, port: int) -> list[float]:
        return start_gaps(self.requests_for(port))

    def max_in_window(self, port: int, window: float) -> int:
        return max_in_window(self.requests_for(port), window)

    def urls(self) -> list[str]:
        return [r.url for r in self.log]

    def starts(self, prefix: str = "") -> list[float]:
        return [r.start for r in self.log if r.url.startswith(prefix)]

    async def wait_quiet(self) -> None:
        """Wait until no request is in flight (bound it with ``trio.fail_after``): after a
        client gave up on a stall, the server notices a moment later."""
        while self.in_flight:
            self._quiet = trio.Event()
            await self._quiet.wait()

    async def wait_open_connections(self, count: int, *, limit: float = 1.0) -> None:
        """Wait until exactly ``count`` connections are open server-side."""
        with trio.fail_after(limit):
            while self.open_connections != count:
                await self._changed.wait()


def _listening_port(listener: trio.SocketListener | trio.SSLListener[trio.SocketStream]) -> int:
    if isinstance(listener, trio.SSLListener):
        inner = listener.transport_listener
        assert isinstance(inner, trio.SocketListener)
        listener = inner
    port: int = listener.socket.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------
# Raw connections


def raw_server(
    handler: ConnHandler, *, ssl_context: ssl.SSLContext | None = None
) -> contextlib.AbstractAsyncContextManager[Web]:
    """Serve a raw connection handler on one loopback port (TLS if ``ssl_context``)."""
    return Web(handler=handler).serving(ssl_context=ssl_context)


def responder(
    response: bytes | Callable[[RequestRecord], bytes], *, close_after: int | None = None
) -> ConnHandler:
    """A keep-alive raw handler answering every request with ``response`` (bytes, or a
    function of the request); ``close_after``: close after that many responses."""

    async def handle(conn: Conn) -> None:
        served = 0
        while (request := await conn.read_request()) is not None:
            await conn.send(response(request) if callable(response) else response)
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
    """A Content-Length framed response, as bytes."""
    lines = [version + b" " + status]
    for key, value in headers or []:
        lines.append(key + b": " + value)
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
