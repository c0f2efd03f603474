"""A loopback HTTP/1.1 test server (trio + h11) that serves a generated site on N ports.

Every port is a separate origin (``http://127.0.0.1:<port>``).  The server records every
request it receives in :attr:`SiteServer.log`, so politeness (per-host concurrency, request
spacing, rate) is asserted from the server's side of the wire.

In-process::

    async with open_site_server(ports=2, pages=50, latency=0.05) as server:
        url = server.url(0, "/")            # "http://127.0.0.1:<port0>/"
        ...                                 # crawl
        assert server.max_concurrency(0) <= 2
        assert server.reachable_urls() <= crawled_urls

As a subprocess (CLI tests, benchmarks)::

    python -m tests.siteserver --ports 3 --pages 2000 [--latency 0.01] \\
        [--robots-file F] [--log out.jsonl]

prints ``{"ports": [...]}`` on stdout once listening, appends each finished request to
``--log`` as a JSON line (see :func:`load_log`), and exits with status 0 on SIGTERM/SIGINT.

Routes (on every port):

* ``/`` and ``/page/{i}`` for ``i in range(pages)``: the generated site, see
  :meth:`SiteServer.reachable_urls`.
* ``/robots.txt`` from the ``robots`` option (404 when there is none).
* ``/hostile/``: an index linking to every hostile route below.
* ``/retry-after[?s=N]`` (429 + ``Retry-After: N`` on the first hit per port, then 200),
  ``/retry-after-date[?s=N]`` (the same with an HTTP-date), ``/flaky`` (500, 500, then 200,
  per port), ``/unavailable`` (always 503, no Retry-After).
* ``/bomb.gz`` (~1 MB gzip body that inflates to 1 GiB of zeros), ``/bad-gzip`` (garbage
  declared as gzip), ``/drip[?s=interval]`` (headers, then one byte per interval, forever),
  ``/stall`` (never answers), ``/slow-headers[?s=N]`` (headers after N=5 s), ``/reset``
  (TCP RST after reading the request), ``/huge-length`` (Content-Length 10^10, a few bytes,
  close), ``/truncated`` (Content-Length 10000, 100 bytes, close).
* ``/loop/a`` <-> ``/loop/b`` (302 loop), ``/redirect-chain/{n}`` (n 301 hops down to a 200
  page), ``/redirect-out`` (302 to the next port's ``/page/0``), ``/redirect-ftp`` (302 to
  ``ftp://example.com/``).
* ``/badutf8``, ``/latin1`` (charset only in ``<meta>``), ``/file.pdf``, ``/trap/...``
  (endless link trap), ``/disallowed/...`` (plain HTML, for robots ``Disallow`` tests).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.utils
import functools
import gzip
import itertools
import json
import logging
import math
import signal
import socket
import struct
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, Final
from urllib.parse import parse_qs, urlsplit

import h11
import trio

__all__ = [
    "HOST",
    "RequestRecord",
    "SiteServer",
    "load_log",
    "main",
    "max_concurrency",
    "max_in_window",
    "open_site_server",
    "start_gaps",
]

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"

_RECV_BYTES: Final = 65536
_SEND_CHUNK: Final = 65536

#: Routes linked from ``/hostile/`` (the index itself is not in the list).
HOSTILE_ROUTES: Final[tuple[str, ...]] = (
    "/retry-after",
    "/retry-after-date",
    "/flaky",
    "/unavailable",
    "/bomb.gz",
    "/bad-gzip",
    "/drip",
    "/stall",
    "/slow-headers",
    "/reset",
    "/huge-length",
    "/truncated",
    "/loop/a",
    "/redirect-chain/5",
    "/redirect-out",
    "/redirect-ftp",
    "/badutf8",
    "/latin1",
    "/file.pdf",
    "/trap/",
    "/disallowed/page",
)


# --------------------------------------------------------------------------------------
# The request log


@dataclass
class RequestRecord:
    """One request as the server saw it.

    ``start`` is ``trio.current_time()`` when the request head arrived; ``end`` is when the
    response was fully sent or the connection died (``math.inf`` while still in flight).
    ``status`` is the status the server sent (``None`` if it never sent a head: ``/stall``,
    ``/reset``, a client that left first).  ``port`` is the real port number, not its index.
    """

    port: int
    method: str
    path: str
    headers: dict[str, str]
    start: float
    end: float
    status: int | None
    conn_id: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> RequestRecord:
        data = json.loads(line)
        return cls(
            port=int(data["port"]),
            method=str(data["method"]),
            path=str(data["path"]),
            headers={str(k): str(v) for k, v in data["headers"].items()},
            start=float(data["start"]),
            end=float(data["end"]),
            status=None if data["status"] is None else int(data["status"]),
            conn_id=int(data["conn_id"]),
        )


def load_log(path: str | Path) -> list[RequestRecord]:
    """Read a ``--log`` JSON-lines file written by the subprocess mode."""
    with open(path, encoding="utf-8") as f:
        return [RequestRecord.from_json(line) for line in f if line.strip()]


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
# Precomputed bodies


# CRC-32 of 2**30 zero bytes (checked by tests/test_siteserver.py).
_BOMB_CRC32: Final = 0x5B64C2B0
_BOMB_SIZE: Final = 1 << 30


@functools.cache
def bomb_body() -> bytes:
    """A gzip member (~1 MB) that inflates to exactly 1 GiB of zeros.

    Built without deflating 1 GiB: a full flush resets the compressor, so the raw deflate
    output for each 1 MiB block of zeros is byte-identical and can simply be repeated.
    """
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(chunk)
    deflate.flush(zlib.Z_FULL_FLUSH)  # the first block; later ones are identical
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush(zlib.Z_FINISH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, mtime 0, OS unknown
    trailer = struct.pack("<II", _BOMB_CRC32, _BOMB_SIZE & 0xFFFFFFFF)
    return header + block * (_BOMB_SIZE // len(chunk)) + tail + trailer


_PDF_BODY: Final = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    + bytes(range(256)) * 8
    + b"\nendstream\n%%EOF\n"
)

_BAD_GZIP_BODY: Final = b"this is not gzip at all \x00\x01\x02\x03" + bytes(range(200, 256)) * 4

_FILLER_WORDS: Final = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed"),
    *("do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna"),
    *("aliqua", "ut", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation"),
)


def _html(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def _links_html(hrefs: Iterable[str]) -> str:
    items = "".join(f'<li><a href="{h}">{h}</a></li>\n' for h in hrefs)
    return f"<ul>\n{items}</ul>"


# --------------------------------------------------------------------------------------
# One connection / one exchange


class _Peer:
    """Per-connection state."""

    def __init__(self, stream: trio.SocketStream, port_index: int, port: int, conn_id: int):
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)
        self.port_index = port_index
        self.port = port
        self.conn_id = conn_id
        self.eof = False

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(_RECV_BYTES)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.eof = True
                self.conn.receive_data(data)
                continue
            return event

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)


class _Exchange:
    """One request/response on a connection, handed to route handlers."""

    def __init__(self, peer: _Peer, record: RequestRecord, hits: int):
        self.peer = peer
        self.record = record
        self.method = record.method
        split = urlsplit(record.path)
        self.path = split.path or "/"
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.port_index = peer.port_index
        self.port = peer.port
        #: How many times this route (path without query) was hit on this port, this one
        #: included.
        self.hits = hits
        #: Set by handlers that must not keep the connection alive.
        self.close = False

    def query_float(self, name: str, default: float) -> float:
        try:
            value = float(self.query[name])
        except (KeyError, ValueError):
            return default
        return value if math.isfinite(value) and value >= 0 else default

    async def start_response(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.record.status = status
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        all_headers = [("Server", "siteserver"), *headers]
        if self.close:
            all_headers.append(("Connection", "close"))
        await self.peer.send(h11.Response(status_code=status, headers=all_headers, reason=reason))

    async def send_body(self, data: bytes) -> None:
        if data and self.method != "HEAD":
            await self.peer.send(h11.Data(data=data))

    async def end_response(self) -> None:
        await self.peer.send(h11.EndOfMessage())

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/html; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        await self.start_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
        )
        await self.send_body(body)
        await self.end_response()

    async def html(self, status: int, title: str, body: str) -> None:
        await self.respond(status, _html(title, body).encode())

    async def redirect(self, status: int, location: str) -> None:
        await self.respond(
            status,
            _html("Redirect", f'<a href="{location}">{location}</a>').encode(),
            headers=[("Location", location)],
        )

    async def until_client_gone(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` until it returns or the client closes the connection.

        Anything the client sends meanwhile is discarded, so the connection is closed
        afterwards.
        """
        self.close = True
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                try:
                    while await self.peer.stream.receive_some(_RECV_BYTES):
                        pass
                except trio.BrokenResourceError:
                    pass
                self.peer.eof = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            with contextlib.suppress(trio.BrokenResourceError):
                await body()  # BrokenResourceError: the client left while we were writing
            nursery.cancel_scope.cancel()


_Handler = Callable[["SiteServer", _Exchange], Awaitable[None]]


# --------------------------------------------------------------------------------------
# The server


class SiteServer:
    """A generated site plus hostile routes, served on several loopback ports.

    Start it with :func:`open_site_server` (or :meth:`serve` in a nursery you own).
    Helpers that take a ``port`` accept either the port number or its index in
    :attr:`ports`.
    """

    def __init__(
        self,
        *,
        pages: int = 300,
        links_per_page: int = 10,
        page_bytes: int = 2048,
        robots: dict[int, str] | str | None = None,
        latency: float = 0.0,
        cross_links: bool = True,
        gzip: bool = False,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        if pages < 1:
            raise ValueError("pages must be >= 1")
        if links_per_page < 1:
            raise ValueError("links_per_page must be >= 1")
        if latency < 0 or page_bytes < 0:
            raise ValueError("latency and page_bytes must be >= 0")
        self.pages = pages
        self.links_per_page = links_per_page
        self.page_bytes = page_bytes
        self.robots = robots
        self.latency = latency
        self.cross_links = cross_links
        self.gzip = gzip
        #: Called (synchronously) with every record once it is finished.
        self.on_record = on_record
        self.ports: list[int] = []
        #: Every request, in arrival order; records are appended when the head arrives and
        #: completed (``end``, ``status``) in place.
        self.log: list[RequestRecord] = []
        #: Protocol errors and unexpected exceptions (client disconnects are not errors).
        self.errors: list[str] = []
        self._hits: Counter[tuple[int, str]] = Counter()
        self._conn_ids = itertools.count(1)
        self._page_cache: dict[tuple[int, int, bool], bytes] = {}
        self._in_flight = 0
        self._quiet: trio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def serve(self, nursery: trio.Nursery, ports: int = 2) -> list[int]:
        """Listen on ``ports`` fresh loopback ports, serving from tasks in ``nursery``."""
        if self.ports:
            raise RuntimeError("this SiteServer is already serving")
        if ports < 1:
            raise ValueError("ports must be >= 1")
        all_listeners: list[list[trio.SocketListener]] = []
        try:
            for _ in range(ports):
                all_listeners.append(await trio.open_tcp_listeners(0, host=HOST))
        except BaseException:
            for listeners in all_listeners:
                for listener in listeners:
                    await listener.aclose()
            raise
        self.ports = [ls[0].socket.getsockname()[1] for ls in all_listeners]
        for index, listeners in enumerate(all_listeners):
            handler = functools.partial(self._handle_connection, index)
            await nursery.start(trio.serve_listeners, handler, listeners)
        return list(self.ports)

    def reset(self) -> None:
        """Forget the log, the errors and the hit counters (``/flaky`` etc. start over)."""
        self.log.clear()
        self.errors.clear()
        self._hits.clear()

    @property
    def in_flight(self) -> int:
        """How many requests are being served right now."""
        return self._in_flight

    async def wait_quiet(self) -> None:
        """Wait until no request is in flight (bound it with ``trio.fail_after``).

        Useful after a client gave up on ``/stall`` or ``/drip``: the server notices the
        disconnect a moment later, and only then completes the record.
        """
        while self._in_flight:
            self._quiet = trio.Event()
            await self._quiet.wait()

    # ---- URLs and queries ---------------------------------------------------------------

    def port_number(self, port: int) -> int:
        """Resolve a port number or a port index to the port number."""
        if port in self.ports:
            return port
        if 0 <= port < len(self.ports):
            return self.ports[port]
        raise ValueError(f"{port} is neither a port of this server nor a port index")

    def origin(self, port_index: int) -> str:
        return f"http://{HOST}:{self.ports[port_index]}"

    def url(self, port_index: int, path: str = "/") -> str:
        return self.origin(port_index) + path

    def hits(self, path: str, port: int | None = None) -> int:
        """How often ``path`` (without query) was requested, on one port or all of them."""
        if port is not None:
            return self._hits[(self.port_number(port), path)]
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

    # ---- the generated site ---------------------------------------------------------------

    def page_targets(self, i: int) -> list[int]:
        """Page numbers page ``i`` links to, in order (``i + 1`` first: all are reachable)."""
        n = self.pages
        return [(i + 1) % n] + [(i * 7 + k * 13 + 1) % n for k in range(1, self.links_per_page)]

    def root_targets(self) -> list[int]:
        n = self.pages
        return sorted({0} | {(k * n) // self.links_per_page for k in range(self.links_per_page)})

    def _page_hrefs(self, port_index: int, i: int) -> list[str]:
        port = self.ports[port_index]
        hrefs = ["/", "#top"]
        for k, j in enumerate(self.page_targets(i)):
            match k % 5:
                case 0:
                    hrefs.append(f"/page/{j}")
                case 1:
                    hrefs.append(f"../page/{j}")
                case 2:
                    hrefs.append(f"http://{HOST}:{port}/page/{j}")
                case 3:
                    hrefs.append(f"/page/{j}#section-{k}")
                case _:
                    hrefs.append(f"{j}")  # relative to /page/
        if self.cross_links:
            hrefs += [f"http://{HOST}:{q}/page/{i}" for q in self.ports if q != port]
        return hrefs

    def _root_hrefs(self, port_index: int) -> list[str]:
        port = self.ports[port_index]
        hrefs = [
            f"/page/{j}" if k % 2 == 0 else f"page/{j}" for k, j in enumerate(self.root_targets())
        ]
        if self.cross_links:
            hrefs += [f"http://{HOST}:{q}/" for q in self.ports if q != port]
        return hrefs

    def _render(self, port_index: int, page: int) -> bytes:
        """Page ``page`` (``-1`` for the root) for one port, padded to ``page_bytes``."""
        port = self.ports[port_index]
        if page < 0:
            title, hrefs = f"Site {port}", self._root_hrefs(port_index)
        else:
            title, hrefs = f"Page {page}", self._page_hrefs(port_index, page)
        body = f'<h1 id="top">{title}</h1>\n<p>Served by port {port}.</p>\n{_links_html(hrefs)}'
        size = len(_html(title, body).encode()) + len('\n<p class="pad"></p>')
        pad = self.page_bytes - size
        if pad > 0:
            start = max(page, 0) % len(_FILLER_WORDS)
            words = _FILLER_WORDS[start:] + _FILLER_WORDS[:start]
            text = " ".join(words)
            filler = (text + " ") * (pad // (len(text) + 1) + 1)
            body += f'\n<p class="pad">{filler[:pad]}</p>'
        return _html(title, body).encode()

    def _page_bytes(self, port_index: int, page: int, gz: bool) -> bytes:
        key = (port_index, page, gz)
        cached = self._page_cache.get(key)
        if cached is None:
            cached = self._render(port_index, page)
            if gz:
                cached = gzip.compress(cached, mtime=0)
            self._page_cache[key] = cached
        return cached

    def reachable_urls(self) -> set[str]:
        """URLs of the generated site reachable from ``/`` on every port (fragments removed).

        Computed by a BFS over the deterministic link graph; hostile routes are never linked
        from the site, so this is exactly the set a complete, unrestricted crawl seeded with
        every port's ``/`` must fetch (plus ``/robots.txt``).
        """
        Node = tuple[int, int]  # (port index, page number or -1 for the root)
        seen: set[Node] = {(p, -1) for p in range(len(self.ports))}
        queue: deque[Node] = deque(seen)
        while queue:
            p, page = queue.popleft()
            nxt: list[Node]
            if page < 0:
                nxt = [(p, j) for j in self.root_targets()]
                if self.cross_links:
                    nxt += [(q, -1) for q in range(len(self.ports)) if q != p]
            else:
                nxt = [(p, -1)] + [(p, j) for j in self.page_targets(page)]
                if self.cross_links:
                    nxt += [(q, page) for q in range(len(self.ports)) if q != p]
            for node in nxt:
                if node not in seen:
                    seen.add(node)
                    queue.append(node)
        return {self.url(p, "/" if page < 0 else f"/page/{page}") for p, page in seen}

    # ---- connection handling ---------------------------------------------------------------

    def _note_error(self, message: str) -> None:
        self.errors.append(message)
        logger.warning("siteserver: %s", message)

    async def _handle_connection(self, port_index: int, stream: trio.SocketStream) -> None:
        peer = _Peer(stream, port_index, self.ports[port_index], next(self._conn_ids))
        async with stream:
            try:
                while await self._serve_one(peer):
                    peer.conn.start_next_cycle()
            except* trio.BrokenResourceError:
                logger.debug("siteserver: connection %d: client went away", peer.conn_id)
            except* Exception as group:
                self._note_error(f"connection {peer.conn_id}: unexpected error: {group!r}")
                logger.debug("siteserver: traceback", exc_info=group)

    async def _reject(
        self, peer: _Peer, exc: h11.RemoteProtocolError, record: RequestRecord | None
    ) -> None:
        if peer.eof:
            logger.debug("siteserver: connection %d closed mid-request", peer.conn_id)
            return
        self._note_error(f"port {peer.port} connection {peer.conn_id}: bad request: {exc}")
        if peer.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint
        if record is not None:
            record.status = status
        body = f"bad request: {exc}\n".encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        await peer.send(h11.Response(status_code=status, headers=headers))
        await peer.send(h11.Data(data=body))
        await peer.send(h11.EndOfMessage())

    async def _serve_one(self, peer: _Peer) -> bool:
        """Serve one request; return whether the connection can be kept alive."""
        try:
            event = await peer.next_event()
        except h11.RemoteProtocolError as exc:
            await self._reject(peer, exc, None)
            return False
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed
        record = RequestRecord(
            port=peer.port,
            method=event.method.decode("latin-1"),
            path=event.target.decode("latin-1"),
            headers={},
            start=trio.current_time(),
            end=math.inf,
            status=None,
            conn_id=peer.conn_id,
        )
        for name, value in event.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            record.headers[key] = (
                f"{record.headers[key]}, {text}" if key in record.headers else text
            )
        self.log.append(record)
        self._in_flight += 1
        try:
            try:
                while not isinstance(await peer.next_event(), h11.EndOfMessage):
                    pass  # discard any request body
            except h11.RemoteProtocolError as exc:
                await self._reject(peer, exc, record)
                return False
            path = urlsplit(record.path).path or "/"
            self._hits[(peer.port, path)] += 1
            exchange = _Exchange(peer, record, self._hits[(peer.port, path)])
            if self.latency:
                await trio.sleep(self.latency)
            await self._dispatch(exchange)
        finally:
            record.end = trio.current_time()
            self._in_flight -= 1
            if not self._in_flight and self._quiet is not None:
                self._quiet.set()
            if self.on_record is not None:
                self.on_record(record)
        return (
            not exchange.close
            and peer.conn.our_state is h11.DONE
            and peer.conn.their_state is h11.DONE
        )

    async def _dispatch(self, ex: _Exchange) -> None:
        if ex.method not in ("GET", "HEAD"):
            await ex.respond(
                405, b"method not allowed\n", "text/plain", headers=[("Allow", "GET, HEAD")]
            )
            return
        handler = _EXACT_ROUTES.get(ex.path)
        if handler is None:
            for prefix, candidate in _PREFIX_ROUTES:
                if ex.path.startswith(prefix):
                    handler = candidate
                    break
        await (handler or SiteServer._not_found)(self, ex)

    # ---- route handlers --------------------------------------------------------------------

    async def _not_found(self, ex: _Exchange) -> None:
        await ex.html(404, "Not found", f"<p>No such page: {ex.path}</p>")

    async def _site_page(self, ex: _Exchange, page: int) -> None:
        accept = ex.record.headers.get("accept-encoding")
        gz = self.gzip and (accept is None or "gzip" in accept.lower())
        headers = [("Vary", "Accept-Encoding")] if self.gzip else []
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        await ex.respond(200, self._page_bytes(ex.port_index, page, gz), headers=headers)

    async def _root(self, ex: _Exchange) -> None:
        await self._site_page(ex, -1)

    async def _page(self, ex: _Exchange) -> None:
        number = ex.path.removeprefix("/page/")
        if number.isdigit() and int(number) < self.pages and str(int(number)) == number:
            await self._site_page(ex, int(number))
        else:
            await self._not_found(ex)

    async def _robots(self, ex: _Exchange) -> None:
        robots = self.robots
        body = robots.get(ex.port_index) if isinstance(robots, dict) else robots
        if body is None:
            await ex.respond(404, b"no robots.txt here\n", "text/plain; charset=utf-8")
        else:
            await ex.respond(200, body.encode(), "text/plain; charset=utf-8")

    async def _hostile_index(self, ex: _Exchange) -> None:
        await ex.html(200, "Hostile routes", _links_html(HOSTILE_ROUTES))

    async def _retry_after(self, ex: _Exchange) -> None:
        seconds = ex.query_float("s", 2.0)
        if ex.hits > 1:
            await ex.html(200, "Retry-After recovered", '<a href="/page/0">back</a>')
            return
        if ex.path == "/retry-after-date":
            value = email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
        else:
            value = str(math.ceil(seconds))
        body = _html("Too many requests", "<p>slow down</p>").encode()
        await ex.respond(429, body, headers=[("Retry-After", value)])

    async def _flaky(self, ex: _Exchange) -> None:
        if ex.hits <= 2:
            await ex.html(500, "Flaky", f"<p>failure {ex.hits}</p>")
        else:
            await ex.html(200, "Flaky recovered", '<a href="/page/0">back</a>')

    async def _unavailable(self, ex: _Exchange) -> None:
        await ex.html(503, "Unavailable", "<p>try again some day</p>")

    async def _bomb(self, ex: _Exchange) -> None:
        body = bomb_body()
        await ex.start_response(
            200,
            [
                ("Content-Type", "text/html"),
                ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(body))),
            ],
        )
        for offset in range(0, len(body), _SEND_CHUNK):
            await ex.send_body(body[offset : offset + _SEND_CHUNK])
        await ex.end_response()

    async def _bad_gzip(self, ex: _Exchange) -> None:
        await ex.respond(200, _BAD_GZIP_BODY, headers=[("Content-Encoding", "gzip")])

    async def _drip(self, ex: _Exchange) -> None:
        interval = ex.query_float("s", 1.0)

        async def drip() -> None:
            await ex.start_response(200, [("Content-Type", "text/html; charset=utf-8")])
            for byte in itertools.cycle(b"<!DOCTYPE html><p>drip " + b"." * 64):
                await ex.send_body(bytes([byte]))
                await trio.sleep(interval)

        await ex.until_client_gone(drip)

    async def _stall(self, ex: _Exchange) -> None:
        await ex.until_client_gone(trio.sleep_forever)

    async def _slow_headers(self, ex: _Exchange) -> None:
        delay = ex.query_float("s", 5.0)

        async def slow() -> None:
            await trio.sleep(delay)
            await ex.html(200, "Slow headers", '<a href="/page/0">finally</a>')

        await ex.until_client_gone(slow)

    async def _reset(self, ex: _Exchange) -> None:
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        ex.peer.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        ex.close = True

    async def _huge_length(self, ex: _Exchange) -> None:
        ex.close = True
        await ex.start_response(
            200, [("Content-Type", "text/html"), ("Content-Length", "10000000000")]
        )
        await ex.send_body(b"<!DOCTYPE html><p>huge")

    async def _truncated(self, ex: _Exchange) -> None:
        ex.close = True
        await ex.start_response(200, [("Content-Type", "text/html"), ("Content-Length", "10000")])
        await ex.send_body((b"<!DOCTYPE html><title>Truncated</title><p>" + b"t" * 100)[:100])

    async def _loop(self, ex: _Exchange) -> None:
        await ex.redirect(302, "/loop/b" if ex.path == "/loop/a" else "/loop/a")

    async def _redirect_chain(self, ex: _Exchange) -> None:
        rest = ex.path.removeprefix("/redirect-chain/")
        if not rest.isdigit():
            await self._not_found(ex)
        elif (n := int(rest)) > 0:
            await ex.redirect(301, f"/redirect-chain/{n - 1}")
        else:
            await ex.html(200, "Redirect chain end", '<a href="/page/0">home</a>')

    async def _redirect_out(self, ex: _Exchange) -> None:
        other = self.ports[(ex.port_index + 1) % len(self.ports)]
        await ex.redirect(302, f"http://{HOST}:{other}/page/0")

    async def _redirect_to(self, ex: _Exchange) -> None:
        """302 to the URL in ``?url=`` (not linked from /hostile/: tests build it)."""
        await ex.redirect(302, ex.query.get("url", "/"))

    async def _redirect_ftp(self, ex: _Exchange) -> None:
        await ex.redirect(302, "ftp://example.com/")

    async def _badutf8(self, ex: _Exchange) -> None:
        n = self.pages
        body = (
            b"<html><head><title>Bad \xff\xfe UTF-8</title></head><body>\x00\x00"
            b'<p>broken \xc3\x28 \xa0\xa1 <a href="/page/%d">one</a>'
            b"<div><span><a href='/page/%d'>two \xed\xa0\x80</a>"
            b"<a href=/page/%d>three<b><i>\x00 unclosed \xf0\x28\x8c\xbc"
            b'<a href="/badutf8#again">self</a><table><tr><td>\xc0\xaf'
        ) % (1 % n, 2 % n, 3 % n)
        await ex.respond(200, body)

    async def _latin1(self, ex: _Exchange) -> None:
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="iso-8859-1">'
            "<title>Café über straße</title></head>\n"
            '<body><p>Ça va? Señor.</p><a href="/page/0">zurück</a></body></html>\n'
        )
        await ex.respond(200, page.encode("latin-1"), "text/html")

    async def _pdf(self, ex: _Exchange) -> None:
        await ex.respond(200, _PDF_BODY, "application/pdf")

    async def _trap(self, ex: _Exchange) -> None:
        segments = [s for s in ex.path.removeprefix("/trap").split("/") if s]
        base = "/trap/" + "".join(f"{s}/" for s in segments)
        hrefs = [f"{base}x", f"{base}{len(segments) + 1}"]
        await ex.html(200, f"Trap depth {len(segments)}", _links_html(hrefs))

    async def _disallowed(self, ex: _Exchange) -> None:
        await ex.html(
            200,
            "Disallowed",
            _links_html(["/page/0", "/disallowed/other"]),
        )


_EXACT_ROUTES: Final[dict[str, _Handler]] = {
    "/": SiteServer._root,
    "/robots.txt": SiteServer._robots,
    "/hostile": SiteServer._hostile_index,
    "/hostile/": SiteServer._hostile_index,
    "/retry-after": SiteServer._retry_after,
    "/retry-after-date": SiteServer._retry_after,
    "/flaky": SiteServer._flaky,
    "/unavailable": SiteServer._unavailable,
    "/bomb.gz": SiteServer._bomb,
    "/bad-gzip": SiteServer._bad_gzip,
    "/drip": SiteServer._drip,
    "/stall": SiteServer._stall,
    "/slow-headers": SiteServer._slow_headers,
    "/reset": SiteServer._reset,
    "/huge-length": SiteServer._huge_length,
    "/truncated": SiteServer._truncated,
    "/loop/a": SiteServer._loop,
    "/loop/b": SiteServer._loop,
    "/redirect-out": SiteServer._redirect_out,
    "/redirect-to": SiteServer._redirect_to,
    "/redirect-ftp": SiteServer._redirect_ftp,
    "/badutf8": SiteServer._badutf8,
    "/latin1": SiteServer._latin1,
    "/file.pdf": SiteServer._pdf,
    "/trap": SiteServer._trap,
    "/disallowed": SiteServer._disallowed,
}

_PREFIX_ROUTES: Final[tuple[tuple[str, _Handler], ...]] = (
    ("/page/", SiteServer._page),
    ("/redirect-chain/", SiteServer._redirect_chain),
    ("/trap/", SiteServer._trap),
    ("/disallowed/", SiteServer._disallowed),
)


@asynccontextmanager
async def open_site_server(
    ports: int = 2,
    *,
    pages: int = 300,
    links_per_page: int = 10,
    page_bytes: int = 2048,
    robots: dict[int, str] | str | None = None,
    latency: float = 0.0,
    cross_links: bool = True,
    gzip: bool = False,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> AsyncIterator[SiteServer]:
    """Serve a :class:`SiteServer` on ``ports`` loopback ports for the ``async with`` body."""
    server = SiteServer(
        pages=pages,
        links_per_page=links_per_page,
        page_bytes=page_bytes,
        robots=robots,
        latency=latency,
        cross_links=cross_links,
        gzip=gzip,
        on_record=on_record,
    )
    async with trio.open_nursery() as nursery:
        await server.serve(nursery, ports)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Subprocess mode


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.siteserver", description="Loopback test site server."
    )
    parser.add_argument("--ports", type=int, default=2)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--links-per-page", type=int, default=10)
    parser.add_argument("--page-bytes", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--robots-file", type=Path, help="robots.txt body for every port")
    parser.add_argument("--log", type=Path, help="append finished requests as JSON lines")
    parser.add_argument("--gzip", action="store_true", help="gzip-encode site pages")
    parser.add_argument("--no-cross-links", dest="cross_links", action="store_false")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace, robots: str | None, log: IO[str] | None) -> None:
    def write(record: RequestRecord) -> None:
        if log is not None:
            log.write(record.to_json() + "\n")
            log.flush()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_site_server(
            args.ports,
            pages=args.pages,
            links_per_page=args.links_per_page,
            page_bytes=args.page_bytes,
            robots=robots,
            latency=args.latency,
            cross_links=args.cross_links,
            gzip=args.gzip,
            on_record=write,
        ) as server:
            sys.stdout.write(json.dumps({"ports": server.ports}) + "\n")
            sys.stdout.flush()
            async for _ in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    robots = args.robots_file.read_text(encoding="utf-8") if args.robots_file else None
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    try:
        trio.run(_run, args, robots, log)
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
