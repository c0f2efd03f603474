"""A lean HTTP/1.1 transport for httpx on trio: llhttp parses, h11 validates requests.

httpx's default pool (httpcore over anyio) costs several times more CPU per request on
trio than the wire work itself. :class:`TrioTransport` implements
``httpx.AsyncBaseTransport`` with one trio stream per connection, a per-origin LIFO
keep-alive pool, and a streaming response body that returns the payload exactly as
received (de-chunked, but still content-encoded).

Responses are parsed by llhttp, Node's C parser, through ``httptools``: ~14 µs for a
6 KB response with our callbacks (~6 µs of it llhttp) where h11 took ~135 µs. Request
heads are written here; h11 is used only to validate them (``_template``, once per
origin for `get`; ``_prepare`` for ``handle_async_request``), so what we send is
exactly what h11 accepted before.

The crawler engine calls :meth:`TrioTransport.get` (origin, target and a header tuple
in, status, raw headers and a body stream out): with no httpx ``Request`` or ``Response``
built per page, and the per-origin request head validated once and reused. It
is also a complete ``httpx.AsyncBaseTransport`` (``handle_async_request``), for
``httpx.AsyncClient(transport=TrioTransport())`` and for the engine when a ``prepare``
hook needs the ``httpx.Request``. Plain TCP is read and written through the socket
itself (taken out of trio's stream) with ``trio.lowlevel.wait_readable``/
``wait_writable``, skipping the trio stream and socket wrappers; TLS likewise, through
a non-blocking ``ssl.SSLSocket`` on that socket (OpenSSL reads and writes the
descriptor in C; ``trio.SSLStream`` ran Python over ``ssl.MemoryBIO`` per record and
cost about a third more CPU per request). A ``connect`` hook's stream that is not a
``trio.SocketStream`` is used through trio (``trio.SSLStream`` for TLS).

Parsing is llhttp's strict mode, with three leniencies h11 also had: bare LF line
ends, obs-fold continuation lines (RFC 9112 section 5.2: a user agent must accept them)
and any ``HTTP/d.d`` version. h11's other rules are checked on top: no NUL in a header
value, no whitespace before a header's colon, one ``Transfer-Encoding`` and only
``chunked``, a status code from 100. Where llhttp is stricter than h11 it stays so:
a duplicate ``Content-Length`` (even an equal one), or ``Content-Length`` with
``Transfer-Encoding``, is a protocol error.

Invariants:

* Pool bookkeeping is synchronous (between checkpoints); no lock is ever held across
  network I/O. A connection is pooled only when its response was fully read, both
  sides allow keep-alive, and no byte followed the response; anything else closes it.
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
import re
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

import h11
import httptools
import httpx
import trio

__all__ = ["ConnectHook", "Reply", "StaleConnection", "TrioTransport"]

ConnectHook = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""``async def connect(host, port) -> trio.abc.Stream``: opens the TCP (not TLS) stream."""

_RECEIVE_SIZE: Final = 65_536
_SEND_CHUNK: Final = 65_536
_MAX_INFORMATIONAL: Final = 32
_HTTP_VERSIONS: Final = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
# A request target as h11 accepts it: visible ASCII, no space.
_TARGET: Final = re.compile(rb"[\x21-\x7e]+").fullmatch
# No poll(2) on Windows: idle connections are then reused unchecked.
_POLL: Final = getattr(select, "poll", None)
# What a broken/closed socket or TLS layer raises in trio.
_IO_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

_PoolKey = tuple[str, str, int]
_RawHeaders = tuple[tuple[bytes, bytes], ...]
# `get` caches a validated request head per (origin, headers); a crawl of more
# origins than this starts the cache over.
_MAX_TEMPLATES: Final = 10_000


class _Malformed(Exception):
    """The response breaks HTTP/1.1 (becomes httpx.RemoteProtocolError)."""


class _Timeout(Exception):
    """A connection's read or write waited until its deadline (becomes an httpx timeout)."""


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp where the response ends."""


class _Response:
    """One response being parsed: llhttp's callbacks and what they found.

    A new one (and a new llhttp parser, ~1 µs) per exchange: no state carries over.
    """

    __slots__ = (
        "chunks",
        "done",
        "head_done",
        "head_only",
        "headers",
        "informational",
        "interim",
        "keep_alive",
        "length",
        "on_body",
        "parser",
        "reason",
        "reusable",
        "te",
        "trailing",
        "until_eof",
    )

    def __init__(self, *, head_only: bool, reusable: bool) -> None:
        self.chunks: list[bytes] = []
        # llhttp calls list.append itself: no Python frame per body piece.
        self.on_body: Callable[[bytes], None] = self.chunks.append
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.te: list[bytes] = []
        self.length = False
        self.head_only = head_only  # a response to HEAD: the head is all of it
        self.reusable = reusable  # our request allows keep-alive
        self.head_done = False
        self.done = False
        self.interim = False
        self.informational = 0
        self.keep_alive = False
        self.until_eof = False
        self.trailing = False
        parser = httptools.HttpResponseParser(self)
        # As h11: bare LF line ends, obs-fold lines, any HTTP/d.d (see the module doc).
        parser.set_dangerous_leniencies(
            lenient_headers=True, lenient_optional_cr_before_lf=True, lenient_version=True
        )
        self.parser = parser

    # ---- llhttp callbacks

    def on_message_begin(self) -> None:
        if self.done:  # a byte of another response: the connection is not reusable
            self.trailing = True
            raise _Stop

    def on_status(self, reason: bytes) -> None:
        self.reason += reason  # in pieces when the status line spans two reads

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a chunked body's trailer field: not kept, as with h11
        # lenient_headers lets these through; h11 refused them.
        last = name[-1] if name else 0
        if last == 32 or last == 9:
            raise _Malformed(f"whitespace before the colon of header {name!r}")
        if 0 in value:  # (an int: ~8 times faster than b"\0" here)
            raise _Malformed(f"NUL byte in header {name!r}")
        n = len(name)
        if n == 14 or n == 17:
            lower = name.lower()
            if lower == b"content-length":
                self.length = True
            elif lower == b"transfer-encoding":
                self.te.append(value)
        # llhttp strips whitespace before a value but not after it.
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status < 100:
                raise _Malformed(f"status code {status} is not in [100, 999]")
            if status == 101:
                raise _Malformed("server switched protocols (101) unasked")
            self.informational += 1
            if self.informational > _MAX_INFORMATIONAL:
                raise _Malformed("too many 1xx informational responses")
            self.interim = True  # skipped: its message ends here
            return
        te = self.te
        if te:
            if len(te) > 1:
                raise _Malformed("multiple Transfer-Encoding headers")
            # Exactly what llhttp takes for chunked (it reads "chunked\t" to EOF).
            if te[0].rstrip(b" ").lower() != b"chunked":
                raise _Malformed("only Transfer-Encoding: chunked is supported")
        self.until_eof = not te and not self.length
        self.head_done = True
        if self.head_only:
            # No body whatever the headers say; llhttp cannot be told, so stop it here.
            self.done = True
            # (False without a length: llhttp expects a body to EOF. h11 reused those.)
            self.keep_alive = self.reusable and parser.should_keep_alive()
            raise _Stop

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers = []
            self.reason = b""
            self.te = []
            self.length = False
            return
        self.done = True
        self.keep_alive = self.reusable and self.parser.should_keep_alive()

    # ---- feeding

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a malformed response raises `_Malformed`."""
        if self.done:  # llhttp may be stopped: fed again, it would repeat its last error
            if data.strip(b"\r\n"):  # (empty lines it skips, as below)
                self.trailing = True
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what our callback raised (first time only)
            if type(cause) is _Stop:
                return
            if cause is None:  # pragma: no cover - a stopped parser is not fed again
                raise _Malformed(str(exc)) from None
            raise cause from None  # ours (_Malformed), or a bug: not llhttp's wrapping
        except httptools.HttpParserError as exc:
            if self.done:  # garbage after the response: only the connection is spoilt
                self.trailing = True
                return
            raise _Malformed(f"malformed response: {exc}") from None
        except httptools.HttpParserUpgrade:  # pragma: no cover - 101 refused above
            raise _Malformed("unexpected protocol upgrade") from None

    def feed_head(self, data: bytes) -> None:
        """`feed` for a response to HEAD: a line at a time, so that the stop at the end
        of the head shows whether any byte followed it (llhttp gives no offset)."""
        start = 0
        end = len(data)
        while start < end and not self.done:
            stop = data.find(b"\n", start) + 1 or end
            self.feed(data[start:stop])
            start = stop
        if start < end:
            self.feed(data[start:])  # after the end: only spoils the connection

    def head_size(self) -> int:
        """The head's size in bytes, as sent without optional whitespace."""
        size = 17 + len(self.reason)  # "HTTP/1.1 200 " ... CRLF, and the final CRLF
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def version(self) -> bytes:
        version = self.parser.get_http_version()
        return _HTTP_VERSIONS.get(version) or b"HTTP/" + version.encode("ascii")


@dataclass(slots=True)  # not frozen: its __init__ would cost 3x (one per `get`), and
class _Outgoing:  # it never leaves this module
    """A request ready to send: its head's bytes, and how its body is framed."""

    head: bytes
    body: bytes | None
    """The whole body (maybe empty), or None for ``request.stream``, sent as it comes."""
    chunked: bool
    length: int | None
    """The declared Content-Length (None: chunked, or no body)."""
    keep_alive: bool
    head_only: bool


def _serialize(method: bytes, target: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A request head, Host first (RFC 9110 7.2), as h11 writes it."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    later: list[bytes] = []
    for name, value in fields:
        line = b"%s: %s\r\n" % (name, value)
        if name.lower() == b"host":
            lines.append(line)
        else:
            later.append(line)
    lines.extend(later)
    lines.append(b"\r\n")
    return b"".join(lines)


def _keep_alive(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """False when the request says ``Connection: close``."""
    for name, value in fields:
        if name.lower() == b"connection" and b"close" in (
            token.strip(b" \t").lower() for token in value.split(b",")
        ):
            return False
    return True


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
    """One pooled HTTP/1.1 connection: a socket (plain or TLS), or a trio stream."""

    __slots__ = ("idle_since", "key", "poll", "sock", "stream", "tls")

    def __init__(
        self, stream: trio.abc.Stream | None, key: _PoolKey, tls: ssl.SSLSocket | None = None
    ) -> None:
        self.stream = stream
        self.key = key
        self.idle_since = 0.0
        # Plain TCP is read and written through the socket itself, taken out of the
        # trio stream (one descriptor per connection), with trio's I/O waits but not
        # its stream and socket wrappers: those cost about a tenth of a crawled page's
        # CPU. TLS over such a socket is a non-blocking `ssl.SSLSocket` (see
        # `_open_tls`), read and written the same way. Only a stream from a `connect`
        # hook that is not a trio.SocketStream goes through trio's stream (and
        # `trio.SSLStream` for TLS).
        self.sock: socket.socket | None = tls
        self.tls = tls
        if stream is not None and type(stream) is trio.SocketStream:
            self.sock = socket.socket(fileno=stream.socket.detach())
            self.sock.setblocking(False)
            self.stream = None
        fd = -1
        if self.sock is not None:
            fd = self.sock.fileno()
        elif type(stream) is trio.SSLStream and type(stream.transport_stream) is trio.SocketStream:
            fd = stream.transport_stream.socket.fileno()
        # `poll(0)` is empty while the idle connection is still open (see `readable`).
        self.poll: Callable[[int], list[tuple[int, int]]] | None = None
        if fd >= 0 and _POLL is not None:
            poller = _POLL()
            poller.register(fd, select.POLLIN)
            self.poll = poller.poll

    def readable(self) -> bool:
        """Whether anything is waiting to be read (data or EOF), without waiting.

        On an idle HTTP/1.1 connection nothing may be: the server closed it, or broke
        the protocol. One poll(2); with TLS, decrypted bytes OpenSSL still holds count
        too (`pending()`), as they never show on the descriptor."""
        tls = self.tls
        if tls is not None and tls.pending():
            return True
        poll = self.poll
        return poll is not None and bool(poll(0))

    # Deadlines: `send_all` and `receive` take `until`, the trio time after which a
    # wait raises `_Timeout`. A cancel scope (~5% of a page's CPU, entered and left
    # per exchange) is opened only around a wait that actually happens: in a busy
    # crawl the request goes out and its response is read without one.

    async def send_all(self, data: bytes, until: float = math.inf) -> None:
        sock = self.sock
        if sock is None:
            assert self.stream is not None
            with trio.CancelScope(deadline=until) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise _Timeout
            return
        view = memoryview(data)
        while view:
            try:
                # (An SSLSocket writes all of it or raises; retried with the same
                # bytes after SSLWantWriteError, as OpenSSL requires.)
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                await _wait(trio.lowlevel.wait_writable, sock, until)
                continue
            except ssl.SSLWantReadError:  # TLS needs the peer's bytes first
                await _wait(trio.lowlevel.wait_readable, sock, until)
                continue
            view = view[sent:]

    async def receive(self, until: float = math.inf, *, after_send: bool = False) -> bytes:
        """The next bytes from the server (b"" at EOF); `_Timeout` if none by `until`.

        `after_send`: the request was just sent, so nothing is there yet. Let the other
        runnable tasks go first, then try: in a busy crawl the response has nearly
        always arrived by then (98% of pages in the benchmark), which spares the epoll
        registration and wake-up of a `wait_readable` (~6% of a page's CPU).

        Every read is tried before waiting on the descriptor, so with TLS whatever
        OpenSSL already holds decrypted (`pending()`) is returned without a wait.
        A TLS close_notify, or an EOF without it (as ``https_compatible`` trio and
        browsers allow; the HTTP framing tells a cut body), reads as b""."""
        sock = self.sock
        if sock is None:
            assert self.stream is not None
            with trio.CancelScope(deadline=until) as scope:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise _Timeout
            return data if type(data) is bytes else bytes(data)
        if after_send:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return sock.recv(_RECEIVE_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                await _wait(trio.lowlevel.wait_readable, sock, until)
            except ssl.SSLWantWriteError:  # TLS must send (e.g. a key update) first
                await _wait(trio.lowlevel.wait_writable, sock, until)

    async def discard(self) -> None:
        """Close the connection at once (as `_discard`: yields, never raises Cancelled).

        TLS sends no close_notify (nor waits for one): the socket is just closed."""
        sock = self.sock
        if sock is None:
            assert self.stream is not None
            await _discard(self.stream)
            return
        trio.lowlevel.notify_closing(sock)
        sock.close()
        await trio.lowlevel.cancel_shielded_checkpoint()


async def _wait(
    wait: Callable[[socket.socket], Awaitable[None]], sock: socket.socket, until: float
) -> None:
    """``await wait(sock)`` (trio's wait_readable/wait_writable), `_Timeout` at `until`."""
    if until == math.inf:
        await wait(sock)
        return
    with trio.CancelScope(deadline=until) as scope:
        await wait(sock)
    if scope.cancelled_caught:
        raise _Timeout


async def _open_tls(
    stream: trio.SocketStream, ctx: ssl.SSLContext, host: str, key: _PoolKey
) -> _Conn:
    """TLS over ``stream``'s socket as a non-blocking `ssl.SSLSocket`, handshake done.

    ``trio.SSLStream`` runs OpenSSL over ``ssl.MemoryBIO`` and moves every record
    through Python (its locks, buffers and the trio socket); an ``SSLSocket`` reads
    and writes the descriptor in C, and we wait on it only when OpenSSL says
    ``SSLWantReadError``/``SSLWantWriteError``. The context does what it did for
    ``SSLStream``: certificate and host name checks, SNI (``server_hostname``), ALPN.
    A failure closes the socket and raises (an `ssl.SSLError` or `OSError`).
    """
    plain = socket.socket(fileno=stream.socket.detach())
    try:
        plain.setblocking(False)
        tls = ctx.wrap_socket(plain, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        plain.close()
        raise
    conn = _Conn(None, key, tls)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(tls)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(tls)
    except BaseException:
        await conn.discard()
        raise
    return conn


class _ResponseBody(httpx.AsyncByteStream):
    """The response body, read from the connection on demand.

    Yields the payload as received (after de-chunking, before content decoding).
    Reaching the end hands the connection back to the transport (pool or close);
    ``aclose()`` before the end, an error or a cancellation closes it.
    """

    __slots__ = ("_conn", "_deadline", "_request", "_response", "_transport")

    def __init__(
        self,
        transport: TrioTransport,
        conn: _Conn | None,
        response: _Response,
        request: httpx.Request | None,
        deadline: float = math.inf,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._response = response
        self._request = request
        self._deadline = deadline

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        chunks = response.chunks
        if chunks:
            return _take(chunks)
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        transport = self._transport
        read_timeout = transport._read_timeout
        # Bytes read without a byte of body: chunk headers and trailers, bounded as a
        # head is (h11 bounded them too).
        framing = 0
        try:
            while not response.done:
                try:
                    until = min(trio.current_time() + read_timeout, self._deadline)
                    data = await conn.receive(until)
                except _IO_ERRORS as exc:
                    raise httpx.ReadError(_describe(exc), request=self._request) from exc
                except _Timeout:
                    raise httpx.ReadTimeout(_silence(read_timeout), request=self._request) from None
                if not data:
                    if response.until_eof:  # a close-delimited body: EOF is its end
                        response.done = True
                        break
                    raise httpx.ReadError(
                        "connection closed before the response body was complete",
                        request=self._request,
                    )
                try:
                    response.feed(data)
                except _Malformed as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
                if chunks:
                    return _take(chunks)
                framing += len(data)
                if framing > transport._max_header_bytes:
                    raise httpx.RemoteProtocolError(
                        f"over {transport._max_header_bytes} bytes of chunk framing or"
                        " trailers without body data",
                        request=self._request,
                    )
        except BaseException:
            self._conn = None
            await conn.discard()
            raise
        self._conn = None
        if not transport._release(conn, response):
            await conn.discard()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._response.chunks.clear()
        conn = self._conn
        if conn is not None:
            self._conn = None
            await conn.discard()


def _take(chunks: list[bytes]) -> bytes:
    """All the body pieces parsed so far, as one."""
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    chunks.clear()
    return data


@dataclass(frozen=True, slots=True)
class _Template:
    """What `get` sends to one origin with one header tuple, validated once."""

    key: _PoolKey
    block: bytes
    """The header lines and the blank line ending the head."""
    fields: list[tuple[bytes, bytes]]
    keep_alive: bool


class TrioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over trio (llhttp parsing responses), with a per-origin LIFO keep-alive pool.

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
        self._templates: dict[tuple[str, _RawHeaders], _Template] = {}
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
        out = self._prepare(request)
        head, stream = await self._round_trip((scheme, host, port), request, out)
        return httpx.Response(
            head.parser.get_status_code(),
            headers=head.headers,
            stream=stream,
            extensions={"http_version": head.version(), "reason_phrase": head.reason},
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
        try:
            raw_target = target.encode("ascii")
        except UnicodeEncodeError as exc:
            raise httpx.LocalProtocolError(f"bad request target {target!r}: {exc}") from exc
        if _TARGET(raw_target) is None:
            raise httpx.LocalProtocolError(f"bad request target {target!r}")
        out = _Outgoing(
            head=b"GET " + raw_target + b" HTTP/1.1\r\n" + template.block,
            body=b"",
            chunked=False,
            length=None,
            keep_alive=template.keep_alive,
            head_only=False,
        )
        head, stream = await self._round_trip(template.key, None, out, deadline)
        return Reply(
            status=head.parser.get_status_code(),
            reason=head.reason,
            http_version=head.version(),
            headers=head.headers,
            request_headers=list(template.fields),
            stream=stream,
        )

    def _template(self, origin: str, headers: _RawHeaders) -> _Template:
        """Pool key and request head for `get` on one origin (cached), validated by h11."""
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
        fields = probe.headers.raw_items()
        head = _serialize(b"GET", b"/", fields)
        block = head[head.index(b"\r\n") + 2 :]
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        template = self._templates[(origin, headers)] = _Template(
            key, block, fields, _keep_alive(fields)
        )
        return template

    async def _round_trip(
        self,
        key: _PoolKey,
        request: httpx.Request | None,
        out: _Outgoing,
        deadline: float = math.inf,
    ) -> tuple[_Response, _ResponseBody]:
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
            if not conn.readable():
                return await self._exchange(conn, request, out, deadline, reused=True)
            # Not sent on; those idle even longer are likely closed too.
            self._doomed.append(conn)
            self._doom_idle_since(key, conn.idle_since)
            await self._close_doomed()
        conn = await self._connect(request, key, deadline)
        return await self._exchange(conn, request, out, deadline, reused=False)

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

    def _release(self, conn: _Conn, response: _Response) -> bool:
        """The response was read to its end: pool the connection if it is reusable.

        Returns False when the caller must close it instead.
        """
        if response.keep_alive and not response.trailing and not self._closed:
            lst = self._pool.get(conn.key)
            if lst is None:
                lst = self._pool[conn.key] = []
            if len(lst) < self._max_per_origin:
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
                    if type(stream) is trio.SocketStream:
                        ctx = self._get_ssl_context()
                        plain, stream = stream, None  # _open_tls closes it on failure
                        return await _open_tls(plain, ctx, host, key)
                    tls = trio.SSLStream(
                        stream, self._get_ssl_context(), server_hostname=host, https_compatible=True
                    )
                    stream = tls
                    await tls.do_handshake()
                return _Conn(stream, key)
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

    def _prepare(self, request: httpx.Request) -> _Outgoing:
        """The request's head (validated by h11) and body framing, and the body when it
        is known up front: ``bytes`` (possibly empty) for replayable content, else None
        for a body streamed from ``request.stream`` (which then carries a Content-Length
        or Transfer-Encoding header, as httpx sets them)."""
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
        method = request.method.encode("ascii")
        try:
            event = h11.Request(method=method, target=request.url.raw_path, headers=headers)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        chunked = False
        length: int | None = None
        for name, value in event.headers:  # names lowercased; framing validated by h11
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"content-length":
                length = int(value)
        if chunked:
            length = None
        elif body is not None and len(body) != (length or 0):
            raise httpx.LocalProtocolError(
                f"request body is {len(body)} bytes, Content-Length says {length or 0}",
                request=request,
            )
        fields = event.headers.raw_items()
        return _Outgoing(
            head=_serialize(method, event.target, fields),
            body=body,
            chunked=chunked,
            length=length,
            keep_alive=_keep_alive(fields),
            head_only=method == b"HEAD",
        )

    async def _send_body(
        self,
        conn: _Conn,
        request: httpx.Request | None,
        out: _Outgoing,
        start: float,
        deadline: float,
    ) -> None:
        """Send the head and body of ``out``, each write within the write timeout
        (counted from `start` for the first); `_Timeout` when one is not done in time."""
        body = out.body
        timeout = self._read_timeout
        if body is not None and len(body) <= _SEND_CHUNK and not out.chunked:
            # The usual case: one write, and no cancel scope unless it has to wait.
            data = out.head + body if body else out.head
            await conn.send_all(data, min(start + timeout, deadline))
            return
        # A streamed body's pieces may take their time coming: one scope over it all.
        with trio.CancelScope(deadline=min(start + timeout, deadline)) as scope:
            await self._send_pieces(conn, request, out, scope, deadline)
        if scope.cancelled_caught:
            raise _Timeout

    async def _send_pieces(
        self,
        conn: _Conn,
        request: httpx.Request | None,
        out: _Outgoing,
        scope: trio.CancelScope,
        deadline: float,
    ) -> None:
        body = out.body
        timeout = self._read_timeout
        await conn.send_all(out.head)
        pieces: Iterable[bytes] | AsyncIterable[bytes]
        if body is not None:
            pieces = [body[i : i + _SEND_CHUNK] for i in range(0, len(body), _SEND_CHUNK)]
        else:
            assert request is not None  # only a request has a streamed body
            pieces = request.stream
        sent = 0
        limit = out.length or 0

        async def send(piece: bytes) -> None:
            nonlocal sent
            if not piece:
                return
            sent += len(piece)
            if out.chunked:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            elif sent > limit:
                raise httpx.LocalProtocolError(
                    f"request body is over the {limit} bytes its Content-Length says",
                    request=request,
                )
            scope.deadline = min(trio.current_time() + timeout, deadline)
            await conn.send_all(piece)

        if isinstance(pieces, AsyncIterable):
            chunks = aiter(pieces)
            try:
                async for piece in chunks:
                    await send(piece)
            finally:
                # Finalize an abandoned async generator now, not at garbage collection.
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:
            for piece in pieces:
                await send(piece)
        if out.chunked:
            scope.deadline = min(trio.current_time() + timeout, deadline)
            await conn.send_all(b"0\r\n\r\n")
        elif sent < limit:
            raise httpx.LocalProtocolError(
                f"request body is {sent} bytes, Content-Length says {limit}", request=request
            )

    async def _exchange(
        self,
        conn: _Conn,
        request: httpx.Request | None,
        out: _Outgoing,
        deadline: float,
        *,
        reused: bool,
    ) -> tuple[_Response, _ResponseBody]:
        """Send the request on ``conn`` and read the response head.

        Each write and each read is bounded by ``read_timeout`` (a silence) and by
        ``deadline`` (the whole exchange); see `_Conn.send_all`. A reused connection
        closed before any response byte raises ``StaleConnection`` (the server may
        have read the request: the caller decides whether to resend).
        """
        timeout = self._read_timeout
        limit = self._max_header_bytes
        response = _Response(head_only=out.head_only, reusable=out.keep_alive)
        feed = response.feed_head if out.head_only else response.feed
        received = 0
        try:
            # ---- request
            try:
                await self._send_body(conn, request, out, trio.current_time(), deadline)
            except _IO_ERRORS as exc:
                if reused:
                    raise StaleConnection(_describe(exc), request=request) from exc
                raise httpx.WriteError(_describe(exc), request=request) from exc
            except _Timeout:
                raise httpx.WriteTimeout(
                    f"could not send the request within {timeout:g}s", request=request
                ) from None

            # ---- response head (1xx informational responses are skipped)
            until = min(trio.current_time() + timeout, deadline)
            while not response.head_done:
                if received:
                    until = min(trio.current_time() + timeout, deadline)
                try:
                    chunk = await conn.receive(until, after_send=not received)
                except _IO_ERRORS as exc:
                    if reused and not received:
                        raise StaleConnection(_describe(exc), request=request) from exc
                    raise httpx.ReadError(_describe(exc), request=request) from exc
                except _Timeout:
                    raise httpx.ReadTimeout(_silence(timeout), request=request) from None
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
                try:
                    feed(chunk)
                except _Malformed as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=request) from None
                if not response.head_done and received > limit:
                    # (1xx heads before it count too)
                    raise httpx.RemoteProtocolError(
                        f"response head is over {limit} bytes", request=request
                    )

            fields = len(response.headers)
            if fields > self._max_headers:
                raise httpx.RemoteProtocolError(
                    f"response has {fields} header fields (limit {self._max_headers})",
                    request=request,
                )
            if received > limit:  # only then can the complete head be too big
                size = response.head_size()
                if size > limit:
                    raise httpx.RemoteProtocolError(
                        f"response head is {size} bytes (limit {limit})", request=request
                    )
        except BaseException:
            await conn.discard()
            raise

        # Whatever of the body came with the head is in response.chunks (often all).
        done = response.done
        if done and not self._release(conn, response):
            await conn.discard()
        return response, _ResponseBody(self, None if done else conn, response, request, deadline)
