"""A lean HTTP/1.1 transport for httpx on trio, built directly on h11.

httpx's default pool (httpcore over anyio) costs several times more CPU per request on
trio than the wire work itself. :class:`TrioTransport` implements
``httpx.AsyncBaseTransport`` with one trio stream and one ``h11.Connection`` per
connection, a per-origin LIFO keep-alive pool, and a streaming response body that
returns the payload exactly as received (de-chunked, but still content-encoded).

The crawler engine calls :meth:`TrioTransport.get` (origin, target and a header tuple
in, status, raw headers and a body stream out): with no httpx ``Request`` or ``Response``
built per page, and the per-origin request head validated by h11 once and reused. It
is also a complete ``httpx.AsyncBaseTransport`` (``handle_async_request``), for
``httpx.AsyncClient(transport=TrioTransport())`` and for the engine when a ``prepare``
hook needs the ``httpx.Request``. Plain TCP is read and written through the socket
itself (taken out of trio's stream) with ``trio.lowlevel.wait_readable``/
``wait_writable``, skipping the trio stream and socket wrappers; TLS goes through
``trio.SSLStream``.

Invariants:

* Pool bookkeeping is synchronous (between checkpoints); no lock is ever held across
  network I/O. A connection is pooled only when its response was fully read and h11
  says both sides are ``DONE``; anything else closes it.
* Every error and cancellation path closes the stream (shielded ``trio.aclose_forcefully``),
  and ``trio.Cancelled`` is always re-raised.
* Errors surface as httpx exceptions, with the request attached when there is one.
* A request is sent at most once. An idle pooled connection is checked to be still
  open (one ``poll(2)``) before reuse; a failure after sending is raised, never
  retried here: the server may have received the request, and a retry is the
  caller's, under its rate limit.
"""

from __future__ import annotations

import math
import os
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import h11
import httpx
import trio

__all__ = ["ConnectHook", "Reply", "StaleConnection", "TrioTransport"]

ConnectHook = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""``async def connect(host, port) -> trio.abc.Stream``: opens the TCP (not TLS) stream."""

_RECEIVE_SIZE: Final = 65_536
_SEND_CHUNK: Final = 65_536
_MAX_INFORMATIONAL: Final = 32
# Timeouts are re-armed after each I/O step unless less than this much time passed.
_DEADLINE_SLACK: Final = 0.001
_HTTP_VERSIONS: Final = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0"}
_EOM: Final = h11.EndOfMessage()
_NEED_DATA: Final = h11.NEED_DATA
_DONE: Final = h11.DONE
_Data: Final = h11.Data
_EndOfMessage: Final = h11.EndOfMessage
# No poll(2) on Windows: idle connections are then reused unchecked.
_POLL: Final = getattr(select, "poll", None)
# What a broken/closed socket or TLS layer raises in trio.
_IO_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

_PoolKey = tuple[str, str, int]
_RawHeaders = tuple[tuple[bytes, bytes], ...]
# The header block of a validated h11 event (h11 does not export the type).
_H11Headers = Any
# `get` caches a validated header block per (origin, headers); a crawl of more
# origins than this starts the cache over.
_MAX_TEMPLATES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Reply:
    """A response head from `TrioTransport.get`, with its body still to read."""

    status: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    request_headers: list[tuple[bytes, bytes]]
    """The request's headers as sent, ``Host`` included."""
    stream: _ResponseBody
    """Yields the body as received (de-chunked, still content-encoded); reading it to
    the end returns the connection to the pool, ``aclose()`` before that closes it."""


def _default_ssl_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying client context.

    Trusted CAs: ``ca_bundle`` (a PEM file or a c_rehash'd directory) when given; else,
    as httpx does, ``SSL_CERT_FILE`` or else ``SSL_CERT_DIR`` *instead of* certifi when
    set (so the trust store is exactly the one the user named); else certifi's bundle,
    else the system store.
    """
    if ca_bundle is None:
        env_file = os.environ.get("SSL_CERT_FILE")
        env_dir = os.environ.get("SSL_CERT_DIR")
        if env_file:
            ca_bundle = env_file
        elif env_dir and os.path.isdir(env_dir):
            ca_bundle = env_dir
    if ca_bundle is not None:
        if os.path.isdir(ca_bundle):
            ctx = ssl.create_default_context(capath=ca_bundle)
        else:
            ctx = ssl.create_default_context(cafile=ca_bundle)
    else:
        try:
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
        except (ImportError, OSError):  # pragma: no cover - certifi is a dependency
            ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _unverified_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _describe(exc: BaseException) -> str:
    """A useful one-line message: trio wraps the real cause (e.g. an SSLError)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        text = str(seen) or type(seen).__name__
        if text not in parts:
            parts.append(text)
        seen = seen.__cause__
    return ": ".join(parts)


def _root_causes(exc: BaseException) -> list[BaseException]:
    """The innermost errors behind ``exc``, in order.

    trio nests them: ``open_tcp_stream`` raises an OSError ("all attempts ... failed")
    caused by an ExceptionGroup of one error per address tried; ``SSLStream`` raises a
    BrokenResourceError caused by the SSLError, or inside an ``except`` (context only).
    """
    found: list[BaseException] = []
    stack = [exc]
    seen: set[int] = set()
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, BaseExceptionGroup):
            stack.extend(reversed(err.exceptions))
            continue
        inner = err.__cause__
        if inner is None and isinstance(err, trio.BrokenResourceError):
            # Only trio's wrapper: another error's context may be unrelated to it.
            inner = err.__context__
        if inner is not None:
            stack.append(inner)
        else:
            found.append(err)
    return found


def _connect_phrase(err: BaseException, host: str, port: int) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        reason = err.verify_message or err.reason or str(err)
        return f"TLS certificate verification failed for {host}: {reason}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake with {host} failed: {err.reason or err}"
    if isinstance(err, socket.gaierror):
        return f"DNS lookup failed for {host} ({err.strerror or err})"
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused ({host}:{port})"
    if isinstance(err, ConnectionResetError | BrokenPipeError):
        return f"connection reset ({host}:{port})"
    if isinstance(err, TimeoutError):
        return f"timed out connecting to {host}:{port}"
    if isinstance(err, trio.BrokenResourceError):
        return f"connection closed during the TLS handshake with {host}:{port}"
    if type(err) is OSError and err.strerror:
        return f"{err.strerror} ({host}:{port})"
    return str(err) or f"{type(err).__name__} ({host}:{port})"


def _connect_failure(exc: BaseException, host: str, port: int) -> str:
    """Why connecting failed, naming the cause(s), each once: trio's wrappers repeat them."""
    phrases: list[str] = []
    for err in _root_causes(exc):
        phrase = _connect_phrase(err, host, port)
        if phrase not in phrases:
            phrases.append(phrase)
    return "; ".join(phrases)


async def _discard(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` at once, even inside a cancelled scope.

    ``trio.aclose_forcefully`` under a shield: the close itself is cancelled
    immediately (no TLS close_notify, no waiting), and an outer cancellation cannot
    interrupt it before the socket is closed; it is delivered at the next checkpoint.
    """
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


def _silence(timeout: float) -> str:
    return f"no response data for {timeout:g}s"


class StaleConnection(httpx.ReadError):
    """A reused keep-alive connection failed before any byte of the response: the
    server closed it as the request went out, and may or may not have read it. Not
    sent again here; the caller may resend it under its rate limit."""


class _Conn:
    """One pooled HTTP/1.1 connection: a trio stream plus its h11 state machine."""

    __slots__ = ("h11", "idle_since", "key", "poll", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, key: _PoolKey, max_header_bytes: int) -> None:
        self.stream = stream
        self.key = key
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.idle_since = 0.0
        # Plain TCP is read and written through the socket itself, taken out of the
        # trio stream (one descriptor per connection), with trio's I/O waits but not
        # its stream and socket wrappers: those cost about a tenth of a crawled page's
        # CPU. TLS goes through the stream.
        self.sock: socket.socket | None = None
        fd = -1
        if type(stream) is trio.SocketStream:
            self.sock = socket.socket(fileno=stream.socket.detach())
            self.sock.setblocking(False)
            fd = self.sock.fileno()
        elif type(stream) is trio.SSLStream and type(stream.transport_stream) is trio.SocketStream:
            fd = stream.transport_stream.socket.fileno()
        # `poll(0)` is empty while the idle connection is still open (see _round_trip).
        self.poll: Callable[[int], list[tuple[int, int]]] | None = None
        if fd >= 0 and _POLL is not None:
            poller = _POLL()
            poller.register(fd, select.POLLIN)
            self.poll = poller.poll

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]

    async def receive(self, *, after_send: bool = False) -> bytes:
        """The next bytes from the server (b"" at EOF).

        `after_send`: the request was just sent, so nothing is there yet. Let the other
        runnable tasks go first, then try: in a busy crawl the response has nearly
        always arrived by then (98% of pages in the benchmark), which spares the epoll
        registration and wake-up of a `wait_readable` (~6% of a page's CPU)."""
        sock = self.sock
        if sock is None:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            return data if type(data) is bytes else bytes(data)
        if after_send:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return sock.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def discard(self) -> None:
        """Close the connection at once (as `_discard`: yields, never raises Cancelled)."""
        sock = self.sock
        if sock is None:
            await _discard(self.stream)
            return
        trio.lowlevel.notify_closing(sock)
        sock.close()
        await trio.lowlevel.cancel_shielded_checkpoint()


class _ResponseBody(httpx.AsyncByteStream):
    """The response body, read from the connection on demand.

    Yields the payload as received (after de-chunking, before content decoding).
    Reaching the end hands the connection back to the transport (pool or close);
    ``aclose()`` before the end, an error or a cancellation closes it.
    """

    __slots__ = ("_chunks", "_conn", "_deadline", "_request", "_transport")

    def __init__(
        self,
        transport: TrioTransport,
        conn: _Conn | None,
        chunks: list[bytes],
        request: httpx.Request | None,
        deadline: float = math.inf,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._chunks = chunks
        self._request = request
        self._deadline = deadline

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        if chunks:
            return chunks.pop(0)
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        h = conn.h11
        read_timeout = self._transport._read_timeout
        eof = False
        try:
            while True:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as exc:
                    if eof:
                        raise httpx.ReadError(
                            f"connection closed before the response body was complete: {exc}",
                            request=self._request,
                        ) from exc
                    raise httpx.RemoteProtocolError(str(exc), request=self._request) from exc
                if type(event) is _Data:
                    return bytes(event.data)
                if type(event) is _EndOfMessage:
                    break
                if event is not _NEED_DATA:
                    raise httpx.RemoteProtocolError(
                        f"unexpected HTTP event in response body: {event!r}", request=self._request
                    )
                try:
                    wait_until = min(trio.current_time() + read_timeout, self._deadline)
                    with trio.CancelScope(deadline=wait_until) as scope:
                        data = await conn.receive()
                except _IO_ERRORS as exc:
                    raise httpx.ReadError(_describe(exc), request=self._request) from exc
                if scope.cancelled_caught:
                    raise httpx.ReadTimeout(_silence(read_timeout), request=self._request)
                if not data:
                    eof = True
                h.receive_data(data)
        except BaseException:
            self._conn = None
            await conn.discard()
            raise
        self._conn = None
        if not self._transport._release(conn):
            await conn.discard()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._chunks.clear()
        conn = self._conn
        if conn is not None:
            self._conn = None
            await conn.discard()


class TrioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over trio + h11, with a per-origin LIFO keep-alive pool.

    Args:
        verify: ``True`` (default) verifies TLS with certifi's CA bundle, or with
            ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` instead when set (as httpx does);
            a path (CA bundle file or directory) verifies with those CAs only;
            ``False`` disables verification; or pass an ``ssl.SSLContext`` to use as is.
        max_connections_per_origin: how many idle keep-alive connections are kept per
            (scheme, host, port). It does not limit concurrency: extra concurrent
            requests open extra connections, closed when the pool is full.
        connect_timeout: seconds for TCP connect plus TLS handshake.
        read_timeout: longest silence between two reads; also bounds each write.
        max_header_bytes: largest response head (status line plus headers).
        max_headers: most header fields in a response head.
        keepalive_expiry: idle connections older than this are closed, not reused.
        connect: optional ``async (host, port) -> trio.abc.Stream`` replacing
            ``trio.open_tcp_stream`` (e.g. to refuse private addresses after DNS
            resolution). TLS is layered on top of the stream it returns.
    """

    def __init__(
        self,
        *,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        max_connections_per_origin: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 15.0,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 200,
        keepalive_expiry: float = 30.0,
        connect: ConnectHook | None = None,
    ) -> None:
        if max_connections_per_origin < 0:
            raise ValueError("max_connections_per_origin must be >= 0")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("keepalive_expiry", keepalive_expiry),
        ):
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if max_header_bytes < 1 or max_headers < 1:
            raise ValueError("max_header_bytes and max_headers must be >= 1")
        self._verify = verify is not False
        self._ca_bundle = None if isinstance(verify, bool | ssl.SSLContext) else verify
        self._ssl_context: ssl.SSLContext | None = (
            verify if isinstance(verify, ssl.SSLContext) else None
        )
        self._max_per_origin = max_connections_per_origin
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._keepalive_expiry = keepalive_expiry
        self._connect_hook = connect
        self._pool: dict[_PoolKey, list[_Conn]] = {}
        self._templates: dict[tuple[str, _RawHeaders], tuple[_PoolKey, _H11Headers]] = {}
        self._doomed: list[_Conn] = []
        self._sweep_interval = min(max(keepalive_expiry / 2, 0.1), 5.0)
        self._next_sweep = 0.0
        self._closed = False

    # ------------------------------------------------------------------ public API

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("TrioTransport is closed")
        url = request.url
        scheme = url.scheme
        if scheme != "http" and scheme != "https":
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {scheme!r} (only http and https)", request=request
            )
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if scheme == "https" else 80)
        event, body = self._prepare(request)
        head, stream = await self._round_trip((scheme, host, port), request, event, body)
        version = head.http_version
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=stream,
            extensions={
                "http_version": _HTTP_VERSIONS.get(version) or b"HTTP/" + version,
                "reason_phrase": head.reason,
            },
            request=request,
        )

    async def get(
        self, origin: str, target: str, headers: _RawHeaders = (), *, deadline: float = math.inf
    ) -> Reply:
        """GET ``origin + target`` without building httpx objects: the crawler's hot path.

        ``origin`` is ``scheme://host[:port]``, ``target`` the path and query (starting
        with ``/``), ``headers`` the request headers (``Host`` is added). Errors are the
        httpx exceptions `handle_async_request` raises, with no request attached.
        ``deadline`` (trio time) bounds the whole exchange, body reads included: the
        caller needs no cancel scope of its own (each costs ~8 µs).
        """
        if self._closed:
            raise RuntimeError("TrioTransport is closed")
        template = self._templates.get((origin, headers))
        if template is None:
            template = self._template(origin, headers)
        key, fields = template
        try:
            event = h11.Request(method=b"GET", target=target.encode("ascii"), headers=fields)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise httpx.LocalProtocolError(f"bad request target {target!r}: {exc}") from exc
        head, stream = await self._round_trip(key, None, event, b"", deadline)
        version = head.http_version
        return Reply(
            status=head.status_code,
            reason=head.reason,
            http_version=_HTTP_VERSIONS.get(version) or b"HTTP/" + version,
            headers=head.headers.raw_items(),
            request_headers=fields.raw_items(),
            stream=stream,
        )

    def _template(self, origin: str, headers: _RawHeaders) -> tuple[_PoolKey, _H11Headers]:
        """Pool key and validated h11 header block for `get` on one origin (cached):
        h11 skips re-validating a header block taken from an event it built."""
        url = httpx.URL(origin)
        if url.scheme not in ("http", "https") or url.raw_path != b"/" or not url.host:
            raise httpx.UnsupportedProtocol(f"not an http(s) origin: {origin!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.raw_host.decode("ascii"), port)
        try:
            probe = h11.Request(
                method=b"GET", target=b"/", headers=[(b"Host", url.netloc), *headers]
            )
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        template = self._templates[(origin, headers)] = (key, probe.headers)
        return template

    async def _round_trip(
        self,
        key: _PoolKey,
        request: httpx.Request | None,
        event: h11.Request,
        body: bytes | None,
        deadline: float = math.inf,
    ) -> tuple[h11.Response, _ResponseBody]:
        """Send on a pooled connection that is still open, else on a new one.

        A request is sent once: a failure after it was written surfaces (the server may
        have received it), and a retry is the caller's, under its rate limit.
        """
        now = trio.current_time()
        if now >= self._next_sweep:
            self._sweep(now)
        conn = self._checkout(key, now)
        if self._doomed:
            await self._close_doomed()
        if conn is not None:
            # Nothing may be readable on an idle HTTP/1.1 connection: data or EOF means
            # the server closed it (or broke the protocol). One poll(2), no waiting.
            poll = conn.poll
            if poll is None or not poll(0):
                return await self._exchange(conn, request, event, body, deadline, reused=True)
            # Not sent on; those idle even longer are likely closed too.
            self._doomed.append(conn)
            self._doom_idle_since(key, conn.idle_since)
            await self._close_doomed()
        conn = await self._connect(request, key, deadline)
        return await self._exchange(conn, request, event, body, deadline, reused=False)

    async def aclose(self) -> None:
        """Close every idle pooled connection; later responses close theirs on finish."""
        self._closed = True
        conns = [c for lst in self._pool.values() for c in lst]
        conns.extend(self._doomed)
        self._pool.clear()
        self._doomed = []
        for conn in conns:
            await conn.discard()

    def idle_connections(self) -> int:
        """How many idle keep-alive connections the pool holds (for tests and stats)."""
        return sum(len(lst) for lst in self._pool.values())

    # ------------------------------------------------------------- pool bookkeeping

    def _checkout(self, key: _PoolKey, now: float) -> _Conn | None:
        lst = self._pool.get(key)
        if lst:
            conn = lst.pop()
            if now - conn.idle_since <= self._keepalive_expiry:
                return conn
            # LIFO: if the newest idle connection expired, all older ones did too.
            self._doomed.append(conn)
            self._doomed.extend(lst)
            lst.clear()
        return None

    def _doom_idle_since(self, key: _PoolKey, idle_since: float) -> None:
        lst = self._pool.get(key)
        if lst:
            self._doomed.extend(c for c in lst if c.idle_since <= idle_since)
            lst[:] = [c for c in lst if c.idle_since > idle_since]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_interval
        expiry = self._keepalive_expiry
        for key in list(self._pool):
            lst = self._pool[key]
            keep = [c for c in lst if now - c.idle_since <= expiry]
            if len(keep) != len(lst):
                self._doomed.extend(c for c in lst if now - c.idle_since > expiry)
            if keep:
                self._pool[key] = keep
            else:
                del self._pool[key]

    async def _close_doomed(self) -> None:
        doomed, self._doomed = self._doomed, []
        for conn in doomed:
            await conn.discard()

    def _release(self, conn: _Conn) -> bool:
        """The response was read to its end: pool the connection if it is reusable.

        Returns False when the caller must close it instead.
        """
        h = conn.h11
        if (
            h.our_state is _DONE
            and h.their_state is _DONE
            and not self._closed
            and not h.trailing_data[0]
        ):
            lst = self._pool.get(conn.key)
            if lst is None:
                lst = self._pool[conn.key] = []
            if len(lst) < self._max_per_origin:
                h.start_next_cycle()
                conn.idle_since = trio.current_time()
                lst.append(conn)
                return True
        return False

    # ----------------------------------------------------------------- connecting

    def _get_ssl_context(self) -> ssl.SSLContext:
        ctx = self._ssl_context
        if ctx is None:
            if self._verify:
                ctx = _default_ssl_context(self._ca_bundle)
            else:
                ctx = _unverified_ssl_context()
            self._ssl_context = ctx
        return ctx

    async def _connect(
        self, request: httpx.Request | None, key: _PoolKey, deadline: float = math.inf
    ) -> _Conn:
        scheme, host, port = key
        stream: trio.abc.Stream | None = None
        try:
            with trio.CancelScope(
                deadline=min(trio.current_time() + self._connect_timeout, deadline)
            ):
                if self._connect_hook is None:
                    stream = await trio.open_tcp_stream(host, port)
                else:
                    stream = await self._connect_hook(host, port)
                if scheme == "https":
                    tls = trio.SSLStream(
                        stream, self._get_ssl_context(), server_hostname=host, https_compatible=True
                    )
                    stream = tls
                    await tls.do_handshake()
                return _Conn(stream, key, self._max_header_bytes)
            raise httpx.ConnectTimeout(
                f"timed out after {self._connect_timeout:g} s connecting to {host}:{port}",
                request=request,
            )
        except BaseException as exc:
            if stream is not None:
                await _discard(stream)
            if isinstance(exc, _IO_ERRORS):
                raise httpx.ConnectError(
                    _connect_failure(exc, host, port), request=request
                ) from exc
            raise

    # -------------------------------------------------------------- one exchange

    def _prepare(self, request: httpx.Request) -> tuple[h11.Request, bytes | None]:
        """Build the h11 request event, and the body when it is known up front.

        Returns ``(event, body)``: body is ``bytes`` (possibly empty) for replayable
        content, or ``None`` for a body streamed from ``request.stream`` (which then
        carries a Content-Length or Transfer-Encoding header, as httpx sets them).
        """
        headers = request.headers.raw
        has_host = framed = False
        for name, _ in headers:
            lname = name.lower()
            if lname == b"host":
                has_host = True
            elif lname == b"content-length" or lname == b"transfer-encoding":
                framed = True
        if not has_host:
            headers.insert(0, (b"Host", request.url.netloc))
        stream = request.stream
        body: bytes | None = None
        if isinstance(stream, httpx.ByteStream):
            try:
                body = request.content  # httpx.Request reads ByteStream content eagerly
            except httpx.RequestNotRead:
                body = b"".join(stream)
        elif not framed:
            if isinstance(stream, AsyncIterable):
                # Unframed async body: frame it as chunked (we cannot know its length).
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                body = b"".join(stream)
        if body and not framed:
            headers.append((b"Content-Length", str(len(body)).encode("ascii")))
        try:
            event = h11.Request(method=request.method, target=request.url.raw_path, headers=headers)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        return event, body

    async def _send_streamed_body(
        self, conn: _Conn, request: httpx.Request, scope: trio.CancelScope
    ) -> None:
        """Send ``request.stream`` chunk by chunk, each write within the write timeout."""
        h = conn.h11
        timeout = self._read_timeout
        body = request.stream
        if isinstance(body, AsyncIterable):
            chunks = aiter(body)
            try:
                async for chunk in chunks:
                    if chunk:
                        scope.deadline = trio.current_time() + timeout
                        await conn.send_all(h.send(h11.Data(data=chunk)))
            finally:
                # Finalize an abandoned async generator now, not at garbage collection.
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:
            for chunk in body:
                if chunk:
                    scope.deadline = trio.current_time() + timeout
                    await conn.send_all(h.send(h11.Data(data=chunk)))
        scope.deadline = trio.current_time() + timeout
        await conn.send_all(h.send(_EOM))

    async def _exchange(
        self,
        conn: _Conn,
        request: httpx.Request | None,
        event: h11.Request,
        body: bytes | None,
        deadline: float,
        *,
        reused: bool,
    ) -> tuple[h11.Response, _ResponseBody]:
        """Send the request on ``conn`` and read the response head.

        One cancel scope covers the whole exchange; its deadline is pushed forward
        after every write and read, so it bounds each silence by ``read_timeout``.
        A reused connection closed before any response byte raises ``StaleConnection``
        (the server may have read the request: the caller decides whether to resend).
        """
        h = conn.h11
        timeout = self._read_timeout
        received = 0
        writing = True
        try:
            start = trio.current_time()
            with trio.CancelScope(deadline=min(start + timeout, deadline)) as scope:
                # ---- request
                try:
                    data = h.send(event)
                    if body is None:
                        assert request is not None  # only a request has a streamed body
                        await conn.send_all(data)
                        await self._send_streamed_body(conn, request, scope)
                    elif len(body) <= _SEND_CHUNK:  # the usual case: one write
                        if body:
                            data += h.send(h11.Data(data=body))
                        await conn.send_all(data + h.send(_EOM))
                    else:
                        await conn.send_all(data)
                        for offset in range(0, len(body), _SEND_CHUNK):
                            scope.deadline = min(trio.current_time() + timeout, deadline)
                            piece = body[offset : offset + _SEND_CHUNK]
                            await conn.send_all(h.send(h11.Data(data=piece)))
                        tail = h.send(_EOM)
                        if tail:
                            await conn.send_all(tail)
                except h11.LocalProtocolError as exc:
                    raise httpx.LocalProtocolError(str(exc), request=request) from exc
                except _IO_ERRORS as exc:
                    if reused:
                        raise StaleConnection(_describe(exc), request=request) from exc
                    raise httpx.WriteError(_describe(exc), request=request) from exc
                writing = False
                now = trio.current_time()
                if now - start > _DEADLINE_SLACK:  # moving a deadline costs; skip it if ~0
                    scope.deadline = min(now + timeout, deadline)

                # ---- response head (skipping 1xx informational responses)
                informational = 0
                # Nothing is buffered yet (a connection is pooled only with an empty
                # buffer): wait for bytes before asking h11, saving it a call per page.
                response: h11.Response | h11.InformationalResponse | object = _NEED_DATA
                while True:
                    if received:
                        try:
                            response = h.next_event()
                        except h11.RemoteProtocolError as exc:
                            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
                    if response is _NEED_DATA:
                        if received:
                            scope.deadline = min(trio.current_time() + timeout, deadline)
                        try:
                            chunk = await conn.receive(after_send=not received)
                        except _IO_ERRORS as exc:
                            if reused and not received:
                                raise StaleConnection(_describe(exc), request=request) from exc
                            raise httpx.ReadError(_describe(exc), request=request) from exc
                        if not chunk:
                            if reused and not received:
                                # A keep-alive connection the server closed as the
                                # request went out: a lost connection, not a bad reply.
                                raise StaleConnection(
                                    "server closed the keep-alive connection without a response",
                                    request=request,
                                )
                            raise httpx.RemoteProtocolError(
                                "server disconnected without sending a complete response head",
                                request=request,
                            )
                        received += len(chunk)
                        h.receive_data(chunk)
                        continue
                    if isinstance(response, h11.Response):
                        head = response
                        break
                    if isinstance(response, h11.InformationalResponse):
                        informational += 1
                        if informational > _MAX_INFORMATIONAL:
                            raise httpx.RemoteProtocolError(
                                "too many 1xx informational responses", request=request
                            )
                        continue
                    raise httpx.RemoteProtocolError(
                        f"unexpected HTTP event before the response: {response!r}",
                        request=request,
                    )
            if scope.cancelled_caught:
                if writing:
                    raise httpx.WriteTimeout(
                        f"could not send the request within {timeout:g}s", request=request
                    )
                raise httpx.ReadTimeout(_silence(timeout), request=request)

            raw_headers = head.headers
            if len(raw_headers) > self._max_headers:
                raise httpx.RemoteProtocolError(
                    f"response has {len(raw_headers)} header fields (limit {self._max_headers})",
                    request=request,
                )
            if received > self._max_header_bytes:
                # h11's limit only bounds an *incomplete* head; check the complete one.
                head_size = received - len(h.trailing_data[0])
                if head_size > self._max_header_bytes:
                    raise httpx.RemoteProtocolError(
                        f"response head is {head_size} bytes (limit {self._max_header_bytes})",
                        request=request,
                    )

            # ---- whatever of the body is already buffered (often all of it)
            chunks: list[bytes] = []
            done = False
            while True:
                try:
                    part = h.next_event()
                except h11.RemoteProtocolError as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=request) from exc
                if type(part) is _Data:
                    chunks.append(bytes(part.data))
                elif type(part) is _EndOfMessage:
                    done = True
                    break
                elif part is _NEED_DATA:
                    break
                else:
                    raise httpx.RemoteProtocolError(
                        f"unexpected HTTP event in response body: {part!r}", request=request
                    )
        except BaseException:
            await conn.discard()
            raise

        if done and not self._release(conn):
            await conn.discard()
        return head, _ResponseBody(self, None if done else conn, chunks, request, deadline)
