"""A link graph whose pages answer with injected faults (the soak test's site).

:class:`FaultyGraph` is a :class:`~tests.web.routes.LinkGraph` that, before answering a
request for one of its pages, picks a :class:`Fault` (or none) with small probabilities:

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
``(seed, origin index, page, n)`` for the URL's ``n``-th request, so it does not depend on
the order in which concurrent requests arrive.  The graph keeps, per page, the outcome of
each request (:attr:`FaultyGraph.history`) and counts faults by kind; the web serving it
measures per-origin concurrency (:attr:`~tests.web.core.Web.peak`).  Linux only
(``TCP_INFO``)::

    faults = FaultyGraph(pages=7000, seed=1)
    async with Web(faults, log=False).serving(3) as web:
        seeds = faults.seeds()                # every origin's "/"
        ...                                   # crawl
        assert max(web.peak.values()) <= per_host
        expected = faults.reachable_urls(lambda url: records[url].ok)
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final

import trio

from tests.web.core import HOST, Exchange
from tests.web.routes import LinkGraph, Node

_STALL_CAP: Final = 10.0
"""A stalled request is dropped after this long even if the client is still waiting."""
_DRIP_CHUNKS: Final = 6
_DRIP_INTERVAL: Final = 0.05
_SLOW_DRIP_CHUNKS: Final = 8
_SLOW_DRIP_INTERVAL: Final = 0.3
_RESET_AFTER_HEAD_DELAY: Final = 0.02
_SILENT_CLOSE_MAX_DELAY: Final = 0.05
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


class FaultyGraph(LinkGraph):
    """A :class:`LinkGraph` (pages not cached) whose pages answer with injected faults."""

    def __init__(
        self,
        pages: int = 7000,
        links_per_page: int = 6,
        page_bytes: int = 4096,
        *,
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
        super().__init__(pages, links_per_page, page_bytes, cache=False)
        self.seed = seed
        self.max_faults = max_faults
        self.permanent_500 = permanent_500
        self.permanent_stall = permanent_stall
        self._table: list[tuple[float, Fault]] = []
        total = 0.0
        for fault, probability in profile.items():
            total += probability
            self._table.append((total, fault))
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
        #: Silent closes made while the client's next request was already waiting unread
        #: (the client sees a reset on a reused connection: the keep-alive race).
        self.raced_closes = 0

    def seeds(self) -> list[str]:
        return [self.web.url(p) for p in range(len(self.web.origins))]

    def node_of(self, url: str) -> Node | None:
        prefix = f"http://{HOST}:"
        port_text, _, path = url.removeprefix(prefix).partition("/")
        if not url.startswith(prefix) or not port_text.isdigit():
            return None
        if (port := int(port_text)) not in self.web.ports:
            return None
        page = self.page_of("/" + path)
        return None if page is None else (self.web.ports.index(port), page)

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

    async def serve_page(self, ex: Exchange, page: int) -> None:
        node = (ex.index, page)
        fault = self._decide(node)
        if fault is Fault.RESET_BEFORE_HEAD and ex.conn is not None and ex.conn.requests > 1:
            self.stale_resets[node] += 1
        await self._serve(ex, node, fault)

    async def _serve(self, ex: Exchange, node: Node, fault: Fault) -> None:
        if fault in (Fault.NONE, Fault.CLOSE, Fault.SILENT_CLOSE):
            ex.close = fault is Fault.CLOSE
            await ex.respond(200, self.body(*node))
            if fault is Fault.SILENT_CLOSE:
                # Drop the idle connection without saying so, a moment later: the client
                # finds out when it reuses it (or the next request is reset).
                await trio.sleep(_unit(self.seed, "close", *node) * _SILENT_CLOSE_MAX_DELAY)
                if ex.conn is not None and ex.conn.unread():
                    self.raced_closes += 1  # the client already sent its next request
                ex.close = True
        elif (status := fault.status) is not None:
            body = f"<!DOCTYPE html><title>{status}</title><p>{fault}</p>\n".encode()
            retry_after = _RETRY_AFTER.get(fault)
            headers = [("Retry-After", retry_after)] if retry_after else []
            await ex.respond(status, body, headers=headers)
        elif fault is Fault.BAD_GZIP:
            await ex.respond(200, _GARBAGE_GZIP, headers=[("Content-Encoding", "gzip")])
        elif fault is Fault.RESET_BEFORE_HEAD:
            await ex.reset()
        elif fault in (Fault.STALL, Fault.PERMANENT_STALL):
            with trio.move_on_after(_STALL_CAP):
                await ex.until_client_gone(trio.sleep_forever)  # until the client gives up
        else:
            await self._partial(ex, self.body(*node), fault)

    async def _partial(self, ex: Exchange, body: bytes, fault: Fault) -> None:
        """Faults that send a head and then (some of) the body slowly, or not at all."""
        length = ("Content-Length", str(len(body)))
        ex.start_response(200, [length, ("Content-Type", "text/html; charset=utf-8")])
        ex.close = True
        if fault is Fault.RESET_AFTER_HEAD:
            await ex.send_body(body[: len(body) // 2])
            await trio.sleep(_RESET_AFTER_HEAD_DELAY)
            await ex.reset()
            return
        if fault is Fault.TRUNCATED:
            ex.finish()
            await ex.send_body(body[: len(body) // 2])
            return  # FIN with the body incomplete
        assert fault in (Fault.DRIP, Fault.SLOW_DRIP), f"unhandled fault {fault}"
        slow = fault is Fault.SLOW_DRIP
        chunks = _SLOW_DRIP_CHUNKS if slow else _DRIP_CHUNKS
        interval = _SLOW_DRIP_INTERVAL if slow else _DRIP_INTERVAL
        await ex.flush()
        size = math.ceil(len(body) / chunks)
        for offset in range(0, len(body), size):
            await trio.sleep(interval)
            if not ex.alive():
                return  # the client gave up
            if offset + size >= len(body):
                ex.finish()
            await ex.send_body(body[offset : offset + size])
        ex.close = False
        await ex.end_response()


def summarize(counts: Iterable[tuple[Fault, int]]) -> str:
    """``kind=count`` pairs, largest first, for a test report."""
    return ", ".join(f"{fault}={n}" for fault, n in sorted(counts, key=lambda kv: -kv[1]))
