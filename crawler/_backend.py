"""The seam between the one engine (`Crawl`) and where a crawl's frontier lives.

The engine owns what every crawl does the same way: the workers, the fetch, the verdict
on each response (`judge`), the page and its links, the consumer's side, stopping and
the statistics. A backend owns where requests come from and where their outcomes go:

* `MemoryBackend` (`_memory.py`): per-origin queues and dispatchers in this process;
* `DurableBackend` (`_durable.py`): the same, with every outcome written behind to
  SQLite (``--state``), exactly once;
* `RedisBackend` (`_shared.py`): a frontier shared by many workers through Redis.

Every backend applies the same admission rules (`Admission`) and the same robots.txt
verdict (`robots_verdict`); they differ only in what remembers the URLs seen, the
queues and the politeness state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from ._admission import Admission
    from ._config import CrawlConfig, HostLimits
    from ._fetch import Fetched, Fetcher
    from ._frontier import Request
    from ._page import HostStatistics, Page, PageError
    from ._retry import Verdict


@dataclass(slots=True)
class Counts:
    """The crawl's running totals (this process's, plus a resumed state's)."""

    pages: int = 0
    errors: int = 0
    bytes: int = 0
    disallowed: int = 0
    redirects: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)

    def count(self, page: Page) -> None:
        self.pages += 1
        self.bytes += len(page.body)
        if page.error is not None:
            self.errors += 1
            self.errors_by_kind[str(page.error.kind)] += 1


@dataclass(slots=True, kw_only=True)
class Figures:
    """What a backend adds to `Statistics`: the frontier's side of a snapshot."""

    seen: int
    queued: int
    in_flight: int
    paused: bool
    dropped: Mapping[str, int]
    hosts: Mapping[str, HostStatistics]
    elapsed_before: float = 0.0
    """Seconds crawled by earlier runs of a resumed crawl."""


@dataclass(slots=True)
class Links:
    """URLs a page asks the crawl to add (canonical already), and at which depth."""

    depth: int
    urls: Sequence[str]
    sitemap: bool = False
    """They are sitemaps (the entries of a sitemap index)."""


class Engine(Protocol):
    """The engine, as a backend sees it."""

    config: CrawlConfig
    fetcher: Fetcher
    global_limiter: trio.CapacityLimiter
    requests: trio.MemorySendChannel[Request]
    counts: Counts

    async def deliver(
        self, request: Request, fetched: Fetched | None, error: PageError | None
    ) -> None:
        """Build the request's page and settle it (`FrontierBackend.settle_page`)."""

    async def hand_over(self, page: Page) -> None:
        """Put the page in the results channel (waits while the consumer is behind)."""


class FrontierBackend(Protocol):
    """Where one crawl's frontier lives. Called from one trio thread, by one engine."""

    admission: Admission

    def attach(self, engine: Engine) -> None:
        """Called once, before `open`."""

    async def open(self) -> None:
        """Start, resume or join the crawl (load a state, join a shared crawl)."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Background work for the crawl's whole life (commits, lease renewal), until
        cancelled; then the last of it (a final commit), bounded."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Feed ready requests to ``engine.requests`` (each holding a global slot, taken
        on the request's behalf) until the frontier is exhausted; the engine cancels it
        to stop."""

    def stop(self, *, graceful: bool) -> None:
        """Hand out nothing new."""

    async def aclose(self) -> None:
        """The crawl is over: give back or write down what is still held."""

    # -- the workers' side ----------------------------------------------------------

    def fetched(self, request: Request) -> None:
        """The request's fetch is over: the host's own in-flight slot is free."""

    def politeness(self, request: Request, verdict: Verdict, started: float) -> None:
        """Apply a response's Retry-After pause and health (backoff) to its host."""

    async def requeue(
        self, request: Request, *, delay: float | None = None, resend: bool = False
    ) -> None:
        """Queue the request again: at the front of its host's queue, or after `delay`.
        Its `attempt` is the next one already; `resend`: sent again after a lost
        keep-alive connection, which is no new attempt."""

    async def redirect(self, request: Request, target: str) -> bool:
        """Queue the next hop of a redirect chain; False when the chain ends here."""

    async def settle_page(self, request: Request, page: Page, links: Links | None) -> None:
        """The request's page: admit its links, count it, hand it over (``engine.hand_over``)."""

    # -- the consumer's side --------------------------------------------------------

    def consumer_done(self, page: Page, outputs: Mapping[str, int] | None) -> None:
        """The consumer is done with `page` (written out, ending at `outputs`)."""

    async def wait_for_room(self) -> None:
        """Before the next page: wait while too much is settled but not written down."""

    # -- live control ---------------------------------------------------------------

    def add(self, url: str, depth: int, *, front: bool, seed: bool) -> bool:
        """Admit a URL as a discovered link would be (`seed`: widen the scope first)."""

    def set_paused(self, key: str | None, paused: bool) -> None:
        """Pause or resume one host (name or origin), or the whole crawl (None)."""

    def set_host_limits(self, key: str, limits: HostLimits) -> None:
        """New limits for a host name or origin, now and for hosts seen later."""

    def figures(self) -> Figures:
        """The frontier's side of a statistics snapshot."""


class EngineParts:
    """What a backend keeps of the engine it serves, from `attach` (one place for it)."""

    _engine: Engine
    _fetcher: Fetcher
    _global: trio.CapacityLimiter
    _requests: trio.MemorySendChannel[Request]
    _counts: Counts

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        self._fetcher = engine.fetcher
        self._global = engine.global_limiter
        self._requests = engine.requests
        self._counts = engine.counts
