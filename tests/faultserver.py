"""A loopback HTTP/1.1 server (trio + h11) that serves a generated site and injects faults.

Every port is an origin (``http://127.0.0.1:<port>``) serving ``/`` and ``/page/{i}`` for
``i in range(pages)``; each page links deterministically to ``links_per_page`` others
(page ``i + 1`` first, so every page is reachable from ``/``), on its own port and on the
other ports.  Before answering a request for one of these pages the server picks a
:class:`Fault` (or none) with small probabilities:

* *failing* faults, after which a client has no usable response: a TCP RST before or after
  the response head, 500/502/503 (some with ``Retry-After: 0`` or ``1``), 429 with
  ``Retry-After: 0``, a stall (no response at all), a truncated body (Content-Length larger
  than what is sent, then FIN), a body that claims gzip but is garbage, a drip slower than
  a sane total deadline;
* *benign* faults, after which the client does have the complete page: a drip over a few
  hundred ms, ``Connection: close``, and a keep-alive connection dropped silently after the
  response (the client learns it only when it reuses the connection).

Failing faults are transient: one URL gets at most ``max_faults`` of them, so a client that
retries enough always ends with the page.  A deterministic subset of URLs fails
permanently instead (always 500, or always a stall).  The choice is a hash of
``(seed, port, page, n)`` for the URL's ``n``-th request, so it does not depend on the order
in which concurrent requests arrive.

The server keeps, per URL, the outcome of each request (:attr:`FaultServer.history`), counts
faults by kind, and measures per-port concurrency the way a site operator would, with one
refinement that removes a scheduling race: when a new request arrives, another request on
the same port counts as in flight only if its TCP connection is still ESTABLISHED (a client
that gave up has already closed its socket, even if the server task has not woken up to
notice).  Linux only (``TCP_INFO``)::

    async with open_fault_server(ports=3, pages=7000, seed=1) as server:
        seeds = server.seeds()                # every port's "/"
        ...                                   # crawl
        assert max(server.max_concurrency) <= per_host
        expected = server.reachable(lambda url: records[url].ok)
"""

from __future__ import annotations

import array
import enum
import fcntl
import functools
import hashlib
import math
import socket
import struct
import termios
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import h11
import trio

__all__ = [
    "DEFAULT_PROFILE",
    "HOST",
    "Fault",
    "FaultServer",
    "Node",
    "open_fault_server",
    "summarize",
]

HOST: Final = "127.0.0.1"

_RECV_BYTES: Final = 65536
_TCP_ESTABLISHED: Final = 1
_STALL_CAP: Final = 10.0
"""A stalled request is dropped after this long even if the client is still waiting."""
_DRIP_CHUNKS: Final = 6
_DRIP_INTERVAL: Final = 0.05
_SLOW_DRIP_CHUNKS: Final = 8
_SLOW_DRIP_INTERVAL: Final = 0.3
_RESET_AFTER_HEAD_DELAY: Final = 0.02
_SILENT_CLOSE_MAX_DELAY: Final = 0.05

Node = tuple[int, int]
"""(port index, page number), page ``-1`` being the root ``/``."""

_FILLER: Final = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud "
)
_GARBAGE_GZIP: Final = b"\x1f\x8b\x08\x00not really gzip\x00\xff\xfe" + bytes(range(256))


class Fault(enum.StrEnum):
    """What the server did with one request."""

    NONE = "none"
    # -- failing: the client gets no usable response
    RESET_BEFORE_HEAD = "reset_before_head"
    RESET_AFTER_HEAD = "reset_after_head"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_503_RETRY_AFTER_0 = "http_503_retry_after_0"
    HTTP_503_RETRY_AFTER_1 = "http_503_retry_after_1"
    HTTP_429_RETRY_AFTER_0 = "http_429_retry_after_0"
    STALL = "stall"
    TRUNCATED = "truncated"
    BAD_GZIP = "bad_gzip"
    SLOW_DRIP = "slow_drip"
    """Body bytes every 0.3 s for 2.4 s: each read is quick, the whole is too slow."""
    # -- benign: the client gets the complete page
    DRIP = "drip"
    CLOSE = "close"
    SILENT_CLOSE = "silent_close"
    # -- permanent, for a deterministic subset of URLs
    PERMANENT_500 = "permanent_500"
    PERMANENT_STALL = "permanent_stall"

    @property
    def failing(self) -> bool:
        return self not in _BENIGN

    @property
    def status(self) -> int | None:
        """The status sent with this fault, if a complete error response is sent."""
        return _STATUS.get(self)

    @property
    def error_kinds(self) -> frozenset[str]:
        """Error kinds a client may honestly report after this fault was its last answer."""
        return _ERROR_KINDS[self]


_BENIGN: Final = frozenset({Fault.NONE, Fault.DRIP, Fault.CLOSE, Fault.SILENT_CLOSE})

_STATUS: Final[Mapping[Fault, int]] = {
    Fault.HTTP_500: 500,
    Fault.HTTP_502: 502,
    Fault.HTTP_503: 503,
    Fault.HTTP_503_RETRY_AFTER_0: 503,
    Fault.HTTP_503_RETRY_AFTER_1: 503,
    Fault.HTTP_429_RETRY_AFTER_0: 429,
    Fault.PERMANENT_500: 500,
}

_RETRY_AFTER: Final[Mapping[Fault, str]] = {
    Fault.HTTP_503_RETRY_AFTER_0: "0",
    Fault.HTTP_503_RETRY_AFTER_1: "1",
    Fault.HTTP_429_RETRY_AFTER_0: "0",
}

_ERROR_KINDS: Final[Mapping[Fault, frozenset[str]]] = {
    **{fault: frozenset() for fault in _BENIGN},
    **{fault: frozenset({"http"}) for fault in _STATUS},
    Fault.RESET_BEFORE_HEAD: frozenset({"reset"}),
    Fault.RESET_AFTER_HEAD: frozenset({"reset"}),
    Fault.STALL: frozenset({"timeout"}),
    Fault.PERMANENT_STALL: frozenset({"timeout"}),
    Fault.TRUNCATED: frozenset({"reset", "protocol"}),
    Fault.BAD_GZIP: frozenset({"decoding"}),
    Fault.SLOW_DRIP: frozenset({"timeout"}),
}

DEFAULT_PROFILE: Final[Mapping[Fault, float]] = {
    # failing (about 6.5 % of requests while a URL has fault budget left)
    Fault.RESET_BEFORE_HEAD: 0.008,
    Fault.RESET_AFTER_HEAD: 0.008,
    Fault.HTTP_500: 0.008,
    Fault.HTTP_502: 0.006,
    Fault.HTTP_503: 0.004,
    Fault.HTTP_503_RETRY_AFTER_0: 0.004,
    Fault.HTTP_503_RETRY_AFTER_1: 0.0005,
    Fault.HTTP_429_RETRY_AFTER_0: 0.003,
    Fault.STALL: 0.003,
    Fault.TRUNCATED: 0.008,
    Fault.BAD_GZIP: 0.002,
    Fault.SLOW_DRIP: 0.002,
    # benign (about 3 %)
    Fault.DRIP: 0.005,
    Fault.CLOSE: 0.012,
    Fault.SILENT_CLOSE: 0.012,
}
"""Probability of each fault for one request."""


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts`` (stable across processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _tcp_established(stream: trio.SocketStream) -> bool:
    """Whether the peer has neither closed nor reset the connection (Linux TCP_INFO)."""
    try:
        info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return False
    return info[0] == _TCP_ESTABLISHED


def _unread_bytes(stream: trio.SocketStream) -> int:
    """Bytes received on the connection and not read yet (FIONREAD)."""
    buffer = array.array("i", [0])
    try:
        fcntl.ioctl(stream.socket.fileno(), termios.FIONREAD, buffer)
    except OSError:
        return 0
    return buffer[0]


@dataclass(eq=False, slots=True)
class _Exchange:
    port_index: int
    stream: trio.SocketStream
    active: bool = True


class FaultServer:
    """A generated site on several loopback ports, answering with injected faults.

    Start it with :func:`open_fault_server`.
    """

    def __init__(
        self,
        *,
        pages: int = 7000,
        links_per_page: int = 8,
        page_bytes: int = 4096,
        seed: int = 0,
        profile: Mapping[Fault, float] = DEFAULT_PROFILE,
        max_faults: int = 2,
        permanent_500: float = 0.0015,
        permanent_stall: float = 0.0005,
    ) -> None:
        if pages < 2 or links_per_page < 2:
            raise ValueError("pages and links_per_page must be >= 2")
        if sum(profile.values()) >= 1.0 or any(p < 0 for p in profile.values()):
            raise ValueError("fault probabilities must be >= 0 and sum to less than 1")
        if any(f in (Fault.NONE, Fault.PERMANENT_500, Fault.PERMANENT_STALL) for f in profile):
            raise ValueError("the profile holds per-request faults only")
        self.pages = pages
        self.links_per_page = links_per_page
        self.page_bytes = page_bytes
        self.seed = seed
        self.max_faults = max_faults
        self.permanent_500 = permanent_500
        self.permanent_stall = permanent_stall
        self._table: list[tuple[float, Fault]] = []
        total = 0.0
        for fault, probability in profile.items():
            total += probability
            self._table.append((total, fault))
        self.ports: list[int] = []
        #: Outcome of every request for each page, in arrival order.
        self.history: dict[Node, list[Fault]] = {}
        #: Resets before the head on a kept-alive connection, per page: to the client these
        #: look like a stale connection, which it may retry at once without counting it as
        #: a retry (see :meth:`attempts`).
        self.stale_resets: Counter[Node] = Counter()
        #: Requests by outcome (``Fault.NONE``: a clean 200).
        self.fault_counts: Counter[Fault] = Counter()
        #: Failing faults that were drawn but not injected: the URL's budget was spent.
        self.budget_spent = 0
        #: Peak requests in flight per port (see the module docstring for the definition).
        self.max_concurrency: list[int] = []
        #: Peak of the naive count (requests whose server task has not finished yet).
        self.max_concurrency_naive: list[int] = []
        #: Requests for paths outside the site (404).
        self.unknown_paths: list[str] = []
        #: Protocol errors and unexpected exceptions (a client going away is not an error).
        self.errors: list[str] = []
        #: Silent closes made while the client's next request was already waiting unread
        #: (the client sees a reset on a reused connection: the keep-alive race).
        self.raced_closes = 0
        self.connections = 0
        self.open_connections = 0
        self._active: list[set[_Exchange]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def serve(self, nursery: trio.Nursery, ports: int) -> list[int]:
        """Listen on ``ports`` fresh loopback ports, serving from tasks in ``nursery``."""
        if self.ports:
            raise RuntimeError("this FaultServer is already serving")
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
        self.max_concurrency = [0] * ports
        self.max_concurrency_naive = [0] * ports
        self._active = [set() for _ in range(ports)]
        for index, listeners in enumerate(all_listeners):
            handler = functools.partial(self._handle_connection, index)
            await nursery.start(trio.serve_listeners, handler, listeners)
        return list(self.ports)

    # ---- the site --------------------------------------------------------------------

    def url(self, node: Node) -> str:
        port_index, page = node
        path = "/" if page < 0 else f"/page/{page}"
        return f"http://{HOST}:{self.ports[port_index]}{path}"

    def seeds(self) -> list[str]:
        return [self.url((p, -1)) for p in range(len(self.ports))]

    def all_urls(self) -> set[str]:
        return {self.url((p, i)) for p in range(len(self.ports)) for i in range(-1, self.pages)}

    def targets(self, node: Node) -> list[Node]:
        """The pages ``node`` links to, in order (duplicates removed)."""
        port_index, page = node
        n, count = self.pages, self.links_per_page
        others = [p for p in range(len(self.ports)) if p != port_index]
        out: list[Node]
        if page < 0:
            out = [(port_index, (k * n) // count) for k in range(count)]
            out += [(p, -1) for p in others]
        else:
            local = count - min(2, len(others))
            out = [(port_index, -1), (port_index, (page + 1) % n)]
            out += [(port_index, (page * 7919 + k * 104729 + 1) % n) for k in range(1, local)]
            out += [(p, page) for p in others[:2]]
        return list(dict.fromkeys(out))

    def reachable(self, expand: Callable[[str], bool] | None = None) -> set[str]:
        """URLs reachable from every port's root, following only pages for which
        ``expand(url)`` holds (default: all), i.e. what a crawler that got exactly those
        pages right must have learned about."""
        start = [(p, -1) for p in range(len(self.ports))]
        seen: set[Node] = set(start)
        queue: deque[Node] = deque(start)
        while queue:
            node = queue.popleft()
            if expand is not None and not expand(self.url(node)):
                continue
            for target in self.targets(node):
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
        return {self.url(node) for node in seen}

    def node_of(self, url: str) -> Node | None:
        prefix = f"http://{HOST}:"
        if not url.startswith(prefix):
            return None
        port_text, _, path = url.removeprefix(prefix).partition("/")
        if not port_text.isdigit() or int(port_text) not in self.ports:
            return None
        return self._node_for(self.ports.index(int(port_text)), "/" + path)

    def attempts(self, node: Node) -> int:
        """Requests for ``node``, not counting resets a client may take for a stale
        keep-alive connection and resend at once (those are the transport's business)."""
        return len(self.history.get(node, ())) - self.stale_resets[node]

    def permanent(self, node: Node) -> Fault | None:
        """The permanent fault of this page, if it is one of the always-failing ones."""
        u = _unit(self.seed, "permanent", *node)
        if u < self.permanent_500:
            return Fault.PERMANENT_500
        if u < self.permanent_500 + self.permanent_stall:
            return Fault.PERMANENT_STALL
        return None

    def _node_for(self, port_index: int, path: str) -> Node | None:
        if path == "/":
            return (port_index, -1)
        number = path.removeprefix("/page/")
        if number != path and number.isdigit() and str(int(number)) == number:
            page = int(number)
            if page < self.pages:
                return (port_index, page)
        return None

    def _hrefs(self, node: Node) -> list[str]:
        """Links to the targets, written in assorted relative and absolute forms."""
        port_index, page = node
        hrefs = ["#top"]
        for k, (p, i) in enumerate(self.targets(node)):
            path = "/" if i < 0 else f"/page/{i}"
            if p != port_index:
                hrefs.append(f"http://{HOST}:{self.ports[p]}{path}")
            elif i < 0 or k % 4 == 0:
                hrefs.append(path)
            elif k % 4 == 1:
                hrefs.append(f"../page/{i}" if page >= 0 else f"page/{i}")
            elif k % 4 == 2:
                hrefs.append(f"http://{HOST}:{self.ports[p]}{path}#s{k}")
            else:
                hrefs.append(f"{i}" if page >= 0 else f"./page/{i}")
        return hrefs

    def render(self, node: Node) -> bytes:
        port_index, page = node
        title = f"Site {self.ports[port_index]}" if page < 0 else f"Page {page}"
        items = "".join(f'<li><a href="{h}">{h}</a></li>\n' for h in self._hrefs(node))
        head = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title></head>\n<body>\n"
            f'<h1 id="top">{title}</h1>\n<ul>\n{items}</ul>\n'
        )
        tail = "</body></html>\n"
        pad = self.page_bytes - len(head) - len(tail) - len("<p></p>\n")
        filler = (_FILLER * (pad // len(_FILLER) + 1))[: max(pad, 0)]
        return f"{head}<p>{filler}</p>\n{tail}".encode()

    # ---- choosing a fault ------------------------------------------------------------

    def _decide(self, node: Node) -> Fault:
        history = self.history.setdefault(node, [])
        permanent = self.permanent(node)
        if permanent is not None:
            fault = permanent
        else:
            u = _unit(self.seed, *node, len(history))
            fault = Fault.NONE
            for bound, candidate in self._table:
                if u < bound:
                    fault = candidate
                    break
            if fault.failing and sum(f.failing for f in history) >= self.max_faults:
                self.budget_spent += 1
                fault = Fault.NONE
        history.append(fault)
        self.fault_counts[fault] += 1
        return fault

    # ---- connections -----------------------------------------------------------------

    def _note_error(self, message: str) -> None:
        self.errors.append(message)

    def _begin(self, port_index: int, stream: trio.SocketStream) -> _Exchange:
        exchange = _Exchange(port_index, stream)
        active = self._active[port_index]
        active.add(exchange)
        naive = len(active)
        if naive > self.max_concurrency_naive[port_index]:
            self.max_concurrency_naive[port_index] = naive
        if naive > self.max_concurrency[port_index]:
            alive = 1 + sum(1 for x in active if x is not exchange and _tcp_established(x.stream))
            self.max_concurrency[port_index] = max(self.max_concurrency[port_index], alive)
        return exchange

    def _end(self, exchange: _Exchange) -> None:
        """The response is complete from here on (call it just before its last write)."""
        if exchange.active:
            exchange.active = False
            self._active[exchange.port_index].discard(exchange)

    async def _handle_connection(self, port_index: int, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                reused = False
                while await self._serve_one(port_index, stream, conn, reused):
                    conn.start_next_cycle()
                    reused = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except h11.ProtocolError as exc:
            self._note_error(f"port {self.ports[port_index]}: protocol error: {exc!r}")
        except Exception as exc:
            self._note_error(f"port {self.ports[port_index]}: unexpected error: {exc!r}")
        finally:
            self.open_connections -= 1

    async def _next_event(self, stream: trio.SocketStream, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECV_BYTES))
                continue
            return event

    async def _serve_one(
        self, port_index: int, stream: trio.SocketStream, conn: h11.Connection, reused: bool
    ) -> bool:
        """Serve one request; return whether to keep the connection."""
        try:
            event = await self._next_event(stream, conn)
        except trio.BrokenResourceError:
            return False
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed
        exchange = self._begin(port_index, stream)
        try:
            while not isinstance(await self._next_event(stream, conn), h11.EndOfMessage):
                pass
            path = event.target.decode("latin-1").partition("?")[0]
            node = self._node_for(port_index, path)
            if node is None:
                self.unknown_paths.append(path)
                body = b"not found\n"
                await self._respond(exchange, conn, 404, body, [("Content-Type", "text/plain")])
                return conn.our_state is h11.DONE
            fault = self._decide(node)
            if fault is Fault.RESET_BEFORE_HEAD and reused:
                self.stale_resets[node] += 1
            return await self._serve_page(exchange, conn, node, fault)
        finally:
            self._end(exchange)

    async def _respond(
        self,
        exchange: _Exchange,
        conn: h11.Connection,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]],
    ) -> None:
        head = [("Content-Length", str(len(body))), *headers]
        data = _send(conn, h11.Response(status_code=status, headers=head))
        data += _send(conn, h11.Data(data=body)) + _send(conn, h11.EndOfMessage())
        self._end(exchange)
        await exchange.stream.send_all(data)

    async def _serve_page(
        self, exchange: _Exchange, conn: h11.Connection, node: Node, fault: Fault
    ) -> bool:
        stream = exchange.stream
        html = [("Content-Type", "text/html; charset=utf-8")]
        if fault in (Fault.NONE, Fault.CLOSE, Fault.SILENT_CLOSE):
            extra = [("Connection", "close")] if fault is Fault.CLOSE else []
            await self._respond(exchange, conn, 200, self.render(node), [*html, *extra])
            if fault is Fault.SILENT_CLOSE:
                # Drop the idle connection without saying so, a moment later: the client
                # finds out when it reuses it (or the next request is reset).
                await trio.sleep(_unit(self.seed, "close", *node) * _SILENT_CLOSE_MAX_DELAY)
                if _unread_bytes(stream):
                    self.raced_closes += 1  # the client already sent its next request
                return False
            return fault is Fault.NONE
        status = fault.status
        if status is not None:
            body = f"<!DOCTYPE html><title>{status}</title><p>{fault}</p>\n".encode()
            retry_after = _RETRY_AFTER.get(fault)
            headers = [*html, *([("Retry-After", retry_after)] if retry_after else [])]
            await self._respond(exchange, conn, status, body, headers)
            return True
        if fault is Fault.BAD_GZIP:
            await self._respond(exchange, conn, 200, _GARBAGE_GZIP, [*html, _GZIP])
            return True
        if fault is Fault.RESET_BEFORE_HEAD:
            self._end(exchange)
            await _reset(stream)
            return False
        if fault in (Fault.STALL, Fault.PERMANENT_STALL):
            with trio.move_on_after(_STALL_CAP):
                while await stream.receive_some(_RECV_BYTES):
                    pass  # wait for the client to give up and close
            return False
        body = self.render(node)
        head_event = h11.Response(
            status_code=200, headers=[("Content-Length", str(len(body))), *html]
        )
        head = _send(conn, head_event)
        if fault is Fault.RESET_AFTER_HEAD:
            await stream.send_all(head + body[: len(body) // 2])
            await trio.sleep(_RESET_AFTER_HEAD_DELAY)
            self._end(exchange)
            await _reset(stream)
            return False
        if fault is Fault.TRUNCATED:
            self._end(exchange)
            await stream.send_all(head + body[: len(body) // 2])
            return False  # FIN with the body incomplete
        if fault in (Fault.DRIP, Fault.SLOW_DRIP):
            slow = fault is Fault.SLOW_DRIP
            chunks = _SLOW_DRIP_CHUNKS if slow else _DRIP_CHUNKS
            interval = _SLOW_DRIP_INTERVAL if slow else _DRIP_INTERVAL
            await stream.send_all(head)
            size = math.ceil(len(body) / chunks)
            for offset in range(0, len(body), size):
                await trio.sleep(interval)
                if not _tcp_established(stream):
                    return False  # the client gave up
                last = offset + size >= len(body)
                if last:
                    self._end(exchange)
                await stream.send_all(_send(conn, h11.Data(data=body[offset : offset + size])))
            _send(conn, h11.EndOfMessage())  # Content-Length framing: no bytes to send
            return True
        raise AssertionError(f"unhandled fault {fault}")  # pragma: no cover


_GZIP: Final = ("Content-Encoding", "gzip")


def _send(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


async def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER on, zero timeout)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


@asynccontextmanager
async def open_fault_server(
    ports: int = 3,
    *,
    pages: int = 7000,
    links_per_page: int = 8,
    page_bytes: int = 4096,
    seed: int = 0,
    profile: Mapping[Fault, float] = DEFAULT_PROFILE,
    max_faults: int = 2,
    permanent_500: float = 0.0015,
    permanent_stall: float = 0.0005,
) -> AsyncIterator[FaultServer]:
    """Serve a :class:`FaultServer` on ``ports`` loopback ports for the ``async with`` body.

    Leaving the block closes the listeners and every connection."""
    server = FaultServer(
        pages=pages,
        links_per_page=links_per_page,
        page_bytes=page_bytes,
        seed=seed,
        profile=profile,
        max_faults=max_faults,
        permanent_500=permanent_500,
        permanent_stall=permanent_stall,
    )
    async with trio.open_nursery() as nursery:
        await server.serve(nursery, ports)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def summarize(counts: Iterable[tuple[Fault, int]]) -> str:
    """``kind=count`` pairs, largest first, for a test report."""
    return ", ".join(f"{fault}={n}" for fault, n in sorted(counts, key=lambda kv: -kv[1]))
