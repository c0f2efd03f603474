"""The frontier of a crawl shared by many workers (processes, machines) through Redis.

The per-host concurrency token, the GCRA rate slot, Retry-After pauses, the adaptive
backoff, pauses and limits set while the crawl runs, and robots.txt live in Redis (see
:mod:`crawler._redis`) and are shared by every worker, so N workers never hit a host
harder than one would. The engine is the one every crawl runs (`Crawl`); this backend
feeds its workers::

    claimer ──(claims up to the free global slots, of hosts ready now)──► engine workers
      ▲  sleeps until the earliest host is ready (at most MAX_WAIT: other    │ settle:
      │  workers may add work), or until a worker or another worker frees    │ one op per
      │  a slot                                                              │ request
      └───────────────────────────────────────────────────────────────────────┘
    serve: lease renewal (a heartbeat), wake-ups, completions, live control, status

A claimed request is a lease: a worker that dies loses nothing, its leases expire and go
back to the frontier. Delivery is at least once: with ``results="local"`` a page's lease
is completed only once the consumer is done with it (asks for the next page), so a page
is never lost to a worker killed between fetching it and writing it down. With
``results="redis"`` the page is appended to the crawl's Redis stream in the same atomic
step that completes its lease: exactly once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from ._admission import Admission
from ._backend import EngineParts, Figures, Links
from ._config import CrawlConfig, HostLimits
from ._frontier import Request
from ._page import ErrorKind, Exchange, HostStatistics, Page, PageError
from ._redis import (
    Claim,
    RedisFrontier,
    SharedCrawlError,
    SharedStatus,
    connection_errors,
    control_key,
)
from ._retry import Verdict, retry_delay
from ._robots import (
    ROBOTS_MAX_BYTES,
    ROBOTS_RETRY,
    ROBOTS_TTL,
    Robots,
    RobotsStatus,
    robots_error,
    robots_from_response,
    robots_source,
    robots_verdict,
)
from ._shield import bounded_shield
from ._unexpected import ends_crawl, failed_fetch, unexpected_error
from ._urls import Scope, host_of, normalize_url, origin_of

Results = Literal["local", "redis"]

logger = logging.getLogger(__name__)

MAX_WAIT = 0.5
"""Longest sleep of an idle claimer: other workers may add work it cannot see coming."""
CLAIM_BATCH_DIVISOR = 8
CLAIM_BATCH_WAIT = 0.01
"""With requests under way, the claimer waits up to this long for concurrency/8 free slots,
so that one claim round trip serves several requests."""
RELEASE_TIMEOUT = 5.0
RESUBSCRIBE_DELAY = 1.0
"""Seconds between attempts to subscribe to wake-ups again while Redis is away."""
STATUS_EVERY = 1.0
"""Per-host statistics come from Redis at most this often (and only when asked for)."""
STATUS_HOSTS = 1000


def shared_settings(config: CrawlConfig) -> dict[str, Any]:
    """The settings every worker of one crawl must agree on (the first worker's win)."""
    return {
        "rate": float(config.rate),
        "burst": config.burst,
        "per_host": config.per_host,
        "hosts": {
            key: [limits.rate, limits.burst, limits.per_host]
            for key, limits in sorted(config.hosts.items())
        },
        "obey_robots": config.obey_robots,
        "user_agent": config.user_agent,
        "scope": config.scope,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "max_depth": config.max_depth,
        "max_pages": config.max_pages,
    }


# ---------------------------------------------------------------------------------------
# Queue entries: what travels through Redis for one request


def _entry(
    url: str,
    depth: int,
    *,
    first_url: str | None = None,
    redirects: int = 0,
    attempt: int = 0,
    chain: Sequence[str] = (),
    sitemap: bool = False,
    exchanges: Sequence[Exchange] = (),
    resent: bool = False,
) -> str:
    data: dict[str, Any] = {"u": url, "d": depth}
    if first_url is not None and first_url != url:
        data["f"] = first_url
    if redirects:
        data["r"] = redirects
    if attempt:
        data["a"] = attempt
    if chain:
        data["c"] = list(chain)
    if sitemap:
        data["s"] = 1
    if exchanges:
        data["x"] = [_exchange_to_json(x) for x in exchanges]
    if resent:
        data["rs"] = 1
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True, eq=False)
class _Lease:
    """What this worker holds of one claimed request (`Request.handle`)."""

    claim: Claim
    pause: float | None = None
    health: str | None = None
    applied: bool = False
    """The pause and health of the last response went to Redis already."""
    final: dict[str, Any] | None = None
    """The completion of the page handed to the consumer."""
    acked: bool = False
    """The consumer is done with that page: complete it (at shutdown too), not release."""
    ended: bool = False
    """Settled (or back in the frontier): no longer counted as active."""
    free: dict[str, Any] | None = None
    """The 'free' op of its page while it waits to be sent (see `consumer_done`)."""


def _request(lease: _Lease, robots_exchanges: Sequence[Exchange]) -> Request:
    claim = lease.claim
    data = json.loads(claim.entry)
    url = str(data["u"])
    return Request(
        url=url,
        depth=int(data["d"]),
        origin=claim.origin,
        first_url=str(data.get("f", url)),
        redirects=int(data.get("r", 0)),
        attempt=int(data.get("a", 0)),
        chain=tuple(data.get("c", ())),
        sitemap=bool(data.get("s", 0)),
        exchanges=[*robots_exchanges, *(_exchange_from_json(x) for x in data.get("x", ()))],
        resent=bool(data.get("rs", 0)),
        handle=lease,
    )


def _lease(request: Request) -> _Lease:
    handle = request.handle
    assert isinstance(handle, _Lease)
    return handle


def _headers_to_json(headers: Sequence[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _headers_from_json(data: Sequence[Sequence[str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in data)


def _exchange_to_json(exchange: Exchange) -> dict[str, Any]:
    return {
        "method": exchange.method,
        "url": exchange.url,
        "request_headers": _headers_to_json(exchange.request_headers),
        "http_version": exchange.http_version,
        "status": exchange.status,
        "reason": exchange.reason,
        "response_headers": _headers_to_json(exchange.response_headers),
        "raw_body": base64.b64encode(exchange.raw_body).decode("ascii"),
        "truncated": exchange.truncated,
        "started_at": exchange.started_at.isoformat(),
    }


def _exchange_from_json(data: dict[str, Any]) -> Exchange:
    return Exchange(
        method=str(data["method"]),
        url=str(data["url"]),
        request_headers=_headers_from_json(data["request_headers"]),
        http_version=str(data["http_version"]),
        status=int(data["status"]),
        reason=str(data["reason"]),
        response_headers=_headers_from_json(data["response_headers"]),
        raw_body=base64.b64decode(data["raw_body"]),
        truncated=bool(data["truncated"]),
        started_at=dt.datetime.fromisoformat(data["started_at"]),
    )


@dataclass(slots=True)
class _Admitted:
    links: list[list[object]] = field(default_factory=list)
    hosts: list[list[object]] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)

    def into(self, op: dict[str, Any]) -> dict[str, Any]:
        if self.links:
            op["links"] = self.links
        if self.hosts:
            op["hosts"] = self.hosts
        if self.drops:
            op["drops"] = dict(self.drops)
        return op


class RedisBackend(EngineParts):
    """This worker's side of a shared crawl.

    In `statistics()`, pages, errors, bytes, redirects, disallowed and dropped count
    this worker's work (sum them over the workers for the crawl's); ``seen`` counts the
    URLs this worker added; ``queued`` and ``hosts`` are the whole crawl's, read from
    Redis at most once a second; ``in_flight`` is this worker's.
    """

    def __init__(
        self,
        config: CrawlConfig,
        frontier: RedisFrontier,
        *,
        results: Results = "local",
        stay_open: bool | None = None,
    ) -> None:
        if results not in ("local", "redis"):
            raise ValueError(f"results must be 'local' or 'redis', got {results!r}")
        self.config = config
        self.frontier = frontier
        self.worker_id = frontier.worker_id
        self.results = results
        self.stay_open = config.stay_open if stay_open is None else stay_open
        self.admission = Admission(config)
        self.finished_before: int | None = None
        """The crawl's pages, when it was over before this worker joined (nothing to do)."""
        self._scope_version = -1
        self._rng = random.Random()
        self._active = 0
        """Requests claimed and not settled yet (with the engine, or settling here)."""
        self._wake = trio.Event()
        self._stopping = False
        self._held: dict[str, _Lease] = {}
        self._by_page: dict[int, tuple[Page, _Lease]] = {}
        self._completions: list[dict[str, Any]] = []
        self._control: list[tuple[str, Any]] = []
        self._send_now = trio.Event()
        self._robots: dict[str, tuple[int, Robots]] = {}
        self._robots_exchanges: dict[str, list[Exchange]] = {}
        self._known_hosts: set[str] = set()
        self._added = 0
        self._lost = 0
        self._dropped: Counter[str] = Counter()
        self._paused = False
        self._status: SharedStatus | None = None
        self._status_at = -float("inf")
        self._want_status = trio.Event()

    # -- joining ------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        admitted = _Admitted()
        scope: list[str] = []
        for seed in config.seeds:
            canonical = normalize_url(seed, max_length=config.max_url_length)
            if canonical is not None:
                scope.append(canonical)
        self._admit(config.seeds, 0, admitted)
        settings = shared_settings(config)
        theirs, version, added, pending = await self.frontier.join(
            settings,
            scope=scope,
            links=admitted.links,
            hosts=admitted.hosts,
            max_pages=config.max_pages,
            max_host_queue=config.max_host_queue,
            max_queued=config.max_queued,
        )
        if pending == 0 and not self.stay_open:
            # Over already: say so, whatever settings this worker came with.
            self.finished_before = await self.frontier.finished_pages()
            if self.finished_before is not None:
                return
        if theirs != settings:
            differences = ", ".join(
                f"{key}={theirs.get(key)!r} (this worker: {settings.get(key)!r})"
                for key in sorted(set(theirs) | set(settings))
                if theirs.get(key) != settings.get(key)
            )
            raise SharedCrawlError(
                f"crawl {self.frontier.crawl_id!r} runs with other settings: {differences}"
            )
        self._added += added
        self._dropped.update(admitted.drops)
        self._known_hosts.update(str(host[0]) for host in admitted.hosts)
        await self._reload_scope(version)

    async def _reload_scope(self, version: int) -> None:
        if version != self._scope_version:
            self.admission.scope = Scope(
                self.config.scope, [*self.config.seeds, *await self.frontier.seeds()]
            )
            self._scope_version = version

    async def status(self) -> SharedStatus:
        """The whole crawl's progress, from Redis."""
        return await self.frontier.status()

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    # -- the request source: claims -----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.finished_before is not None:
            return
        async with trio.open_nursery() as side:
            await self._claim_loop(side)
            side.cancel_scope.cancel()
        if not self._stopping:
            await self._fetch_status()  # the final figures, for statistics() at the end

    async def _fetch_status(self) -> None:
        self._status = await self.frontier.status(host_limit=STATUS_HOSTS)
        self._status_at = trio.current_time()

    async def _claim_loop(self, side: trio.Nursery) -> None:
        """Claim requests while slots are free; sleep exactly until the next host is ready."""
        batch = max(1, self.config.concurrency // CLAIM_BATCH_DIVISOR)
        while not self._stopping:
            wake = self._wake
            free = int(self._global.available_tokens)
            if free <= 0 or self._paused:
                await wake.wait()
                continue
            if free < batch and self._active > 0:
                # Claim several at once: a round trip per page costs as much CPU as the
                # rest of the page. Wait a moment for more requests to end (they poke us).
                with trio.move_on_after(CLAIM_BATCH_WAIT):
                    while (
                        int(self._global.available_tokens) < batch
                        and self._active > 0
                        and not self._stopping
                    ):
                        await self._wake.wait()
                if self._stopping:
                    break
                free = int(self._global.available_tokens)
            result = await self.frontier.claim(free)
            for claim in result.claims:
                lease = _Lease(claim)
                self._held[claim.lease] = lease
                self._active += 1
                if claim.kind == "robots":
                    await self._global.acquire_on_behalf_of(lease)
                    side.start_soon(self._robots_job, lease, name=f"robots {claim.origin}")
                else:
                    await self._hand(lease, side)
            if result.scope_version != self._scope_version:
                await self._reload_scope(result.scope_version)
            if len(result.claims) == free:
                continue
            if (
                not result.claims
                and result.pending == 0
                and self._active == 0
                and not self._completions
                and not self.stay_open
            ):
                return
            delay = MAX_WAIT if result.wait is None else min(result.wait, MAX_WAIT)
            with trio.move_on_after(delay):
                await wake.wait()

    async def _hand(self, lease: _Lease, side: trio.Nursery) -> None:
        """One claimed URL: robots.txt's verdict, then to a worker (holding a global slot)."""
        config = self.config
        claim = lease.claim
        request = _request(lease, self._robots_exchanges.pop(claim.origin, ()))
        if config.obey_robots:
            robots = await self._robots_for(claim.origin, claim.version)
            verdict = robots_verdict(
                robots, request.url, config.user_agent, redirected=bool(request.redirects)
            )
            if verdict is not True:
                side.start_soon(self._not_fetched, request, verdict)
                return
        await self._global.acquire_on_behalf_of(request)
        try:
            self._requests.send_nowait(request)
        except trio.WouldBlock:
            try:
                await self._requests.send(request)
            except BaseException:  # cancelled (the crawl stops): released at the end
                self._global.release_on_behalf_of(request)
                raise

    async def _not_fetched(self, request: Request, verdict: bool | PageError) -> None:
        try:
            if isinstance(verdict, PageError):
                await self._engine.deliver(request, None, verdict)
                return
            claim = _lease(request).claim
            op: dict[str, Any] = {
                "k": "done",
                "l": claim.lease,
                "o": claim.origin,
                "e": claim.entry,
                "dis": 1,
            }
            if await self._finish(claim.lease, op):
                self._counts.disallowed += 1
        finally:
            self._ended(_lease(request))

    def _ended(self, lease: _Lease) -> None:
        """A claimed request is settled (or back in the frontier)."""
        if not lease.ended:
            lease.ended = True
            self._active -= 1
            self._poke()

    def stop(self, *, graceful: bool) -> None:
        del graceful
        self._stopping = True
        self._poke()

    # -- robots.txt ---------------------------------------------------------------------

    async def _robots_job(self, lease: _Lease) -> None:
        try:
            await self._fetch_robots(lease.claim)
        finally:
            self._global.release_on_behalf_of(lease)
            self._ended(lease)

    async def _fetch_robots(self, claim: Claim) -> None:
        config = self.config
        origin = claim.origin
        try:
            fetched = await self._fetcher.fetch_robots(origin)
        except Exception as exc:
            if ends_crawl(exc):
                raise
            # A bug in the fetch, not the site: unavailable, as after a network failure.
            url = f"{origin}/robots.txt"
            fetched = failed_fetch(url, unexpected_error(exc, url))
        if fetched.exchange is not None:
            self._robots_exchanges.setdefault(origin, []).append(fetched.exchange)
        status, source = robots_source(fetched)
        error = robots_error(fetched)
        robots = robots_from_response(status, source, 0.0, error=error)
        op: dict[str, Any] = {"k": "robots", "l": claim.lease, "o": origin}
        if robots.worth_retrying() and claim.version < config.retries:
            op["retry"] = retry_delay(claim.version, self._rng)
        else:
            # A failure's message is kept too, for the records of the URLs it holds back.
            keep = robots.status is RobotsStatus.PARSED or status is None
            body = source[:ROBOTS_MAX_BYTES] if keep else b""
            op["status"] = "" if status is None else str(status)
            op["body"] = body.decode("utf-8", errors="replace")
            op["interval"] = robots.interval(config.user_agent)
            unavailable = robots.status is RobotsStatus.UNAVAILABLE
            op["ttl"] = ROBOTS_RETRY if unavailable else ROBOTS_TTL
            if error is not None:
                op["error"] = str(error)
            if config.sitemaps and not unavailable:
                admitted = _Admitted()
                sitemaps = (*robots.sitemaps, f"{origin}/sitemap.xml")
                self._admit(sitemaps, 0, admitted, sitemap=True)
                self._bounds(admitted.into(op))
        await self._finish(claim.lease, op)

    async def _robots_for(self, origin: str, version: int) -> Robots:
        """The origin's robots.txt at `version` (0: never fetched, robots ignored)."""
        if version == 0:
            return Robots(RobotsStatus.IGNORED)
        cached = self._robots.get(origin)
        if cached is not None and cached[0] >= version:
            return cached[1]
        stored = await self.frontier.robots(origin)
        if stored is None:
            robots = Robots(RobotsStatus.IGNORED)
        else:
            status, body, error = stored
            robots = robots_from_response(
                status, body, 0.0, error=ErrorKind(error) if error else None
            )
        self._robots[origin] = (version, robots)
        return robots

    # -- the workers' side: one op per request ------------------------------------------

    def fetched(self, request: Request) -> None:
        del request  # the host's token is Redis's, given back with the request's op

    def politeness(self, request: Request, verdict: Verdict, started: float) -> None:
        del started  # Redis judges a round of requests by its own clock: the claim's
        lease = _lease(request)
        lease.pause, lease.health = verdict.pause, verdict.health

    def _politeness(self, op: dict[str, Any], lease: _Lease) -> dict[str, Any]:
        if not lease.applied:
            if lease.pause is not None:
                op["pause"] = lease.pause
            if lease.health is not None:
                op["health"] = lease.health
                op["started"] = lease.claim.claimed_at
        return op

    async def _finish(self, lease: str, op: dict[str, Any]) -> int:
        """Send the outcome of a lease; forget the lease."""
        code = await self.frontier.settle(op)
        self._held.pop(lease, None)
        if code == 0:
            self._lost += 1
        return code

    async def requeue(
        self, request: Request, *, delay: float | None = None, resend: bool = False
    ) -> None:
        del resend  # the request's attempt and resent flag say it
        lease = _lease(request)
        claim = lease.claim
        keep = request.exchanges if self.config.keep_exchanges else ()
        entry = _entry(
            request.url,
            request.depth,
            first_url=request.first_url,
            redirects=request.redirects,
            attempt=request.attempt,
            chain=request.chain,
            sitemap=request.sitemap,
            exchanges=keep,
            resent=request.resent,
        )
        op: dict[str, Any] = {"k": "retry", "l": claim.lease, "o": claim.origin, "ne": entry}
        if delay is not None:
            op["delay"] = delay
        try:
            await self._finish(claim.lease, self._politeness(op, lease))
        finally:
            self._ended(lease)

    async def redirect(self, request: Request, target: str) -> bool:
        canonical = self.admission.canonical(target)
        if canonical is None or self._stopping:
            return False
        if self.admission.refusal(canonical, request.depth) is not None:
            return False
        lease = _lease(request)
        claim = lease.claim
        origin = origin_of(canonical)
        keep = request.exchanges if self.config.keep_exchanges else ()
        entry = _entry(
            canonical,
            request.depth,
            first_url=request.first_url,
            redirects=request.redirects + 1,
            chain=(*request.chain, request.url),
            exchanges=keep,
        )
        op: dict[str, Any] = {
            "k": "hop",
            "l": claim.lease,
            "o": claim.origin,
            "links": [[canonical, entry, origin, 0]],
        }
        if origin not in self._known_hosts:
            op["hosts"] = [self._host_spec(canonical, origin)]
        code = await self.frontier.settle(self._politeness(op, lease))
        lease.applied = True
        if code == 2:
            return False  # already seen: this response is the chain's page
        self._held.pop(claim.lease, None)
        if code == 1:
            self._known_hosts.add(origin)
            self._counts.redirects += 1
        else:
            self._lost += 1
        self._ended(lease)
        return True

    async def settle_page(self, request: Request, page: Page, links: Links | None) -> None:
        try:
            await self._settle_page(request, page, links)
        finally:
            self._ended(_lease(request))

    async def _settle_page(self, request: Request, page: Page, links: Links | None) -> None:
        lease = _lease(request)
        claim = lease.claim
        admitted = _Admitted()
        if links is not None:
            self._admit(links.urls, links.depth, admitted, sitemap=links.sitemap, normalized=True)
        done: dict[str, Any] = {
            "k": "done",
            "l": claim.lease,
            "o": claim.origin,
            "e": claim.entry,
            "page": 1,
            "bytes": len(page.body),
        }
        if page.error is not None:
            done["err"] = str(page.error.kind)
        if self.results == "redis":
            from ._output import page_to_json

            op = self._bounds(self._politeness(admitted.into(done), lease))
            op["res"] = json.dumps(page_to_json(page), separators=(",", ":"))
            if await self._finish(claim.lease, op):
                self._count(page, admitted)
                await self._engine.hand_over(page)
            return
        # Local results: the lease is completed (`done`) only once the consumer is done
        # with the page; the host's token, the response's politeness and the links go
        # now, or a slow consumer would hold the host back (and its Retry-After).
        free = {"k": "free", "l": claim.lease, "o": claim.origin}
        free = self._bounds(self._politeness(admitted.into(free), lease))
        lease.applied = True
        lease.final = done
        lease.free = free
        self._completions.append(free)
        self._send_now.set()
        self._count(page, admitted)
        self._by_page[id(page)] = (page, lease)
        try:
            await self._engine.hand_over(page)
        except BaseException:
            self._by_page.pop(id(page), None)
            raise

    def _count(self, page: Page, admitted: _Admitted) -> None:
        self._counts.count(page)
        self._added += sum(1 for link in admitted.links if link[3] != -1)
        self._dropped.update(admitted.drops)
        self._known_hosts.update(str(host[0]) for host in admitted.hosts)

    # -- admission (the rules of Admission; Redis keeps the seen-set and bounds) --------

    def _bounds(self, op: dict[str, Any]) -> dict[str, Any]:
        """The frontier's bounds, which Redis applies to the URLs `op` admits."""
        config = self.config
        op["max"] = -1 if config.max_pages is None else config.max_pages
        op["cap"] = config.max_host_queue
        op["mq"] = config.max_queued
        return op

    def _host_spec(self, url: str, origin: str) -> list[object]:
        rate, burst, per_host = self.config.limits_for(host_of(url), origin)
        return [origin, rate, burst, per_host, 1 if self.config.obey_robots else 0]

    def _admit(
        self,
        urls: Sequence[str],
        depth: int,
        admitted: _Admitted,
        *,
        sitemap: bool = False,
        normalized: bool = False,
    ) -> None:
        admission = self.admission
        new_hosts = {str(h[0]) for h in admitted.hosts}
        for url in urls:
            canonical = admission.canonical(url, normalized=normalized)
            if canonical is None:
                admitted.drops["invalid"] += 1
                continue
            refusal = admission.refusal(canonical, depth)
            if refusal is not None:
                admitted.drops[refusal] += 1
                continue
            origin = origin_of(canonical)
            entry = _entry(canonical, depth, sitemap=sitemap)
            # robots.txt is judged when the URL's turn comes (_hand), as in one process:
            # a disallowed URL counts towards max_pages and in this worker's statistics.
            admitted.links.append([canonical, entry, origin, 1])
            if origin not in self._known_hosts and origin not in new_hosts:
                new_hosts.add(origin)
                admitted.hosts.append(self._host_spec(canonical, origin))

    # -- the consumer's side -------------------------------------------------------------

    def consumer_done(self, page: Page, outputs: Mapping[str, int] | None) -> None:
        del outputs
        entry = self._by_page.pop(id(page), None)
        if entry is None or entry[0] is not page:
            return
        lease = entry[1]
        if lease.final is not None and lease.claim.lease in self._held:
            lease.acked = True
            if lease.free is not None:
                # Its 'free' op is not sent yet: it becomes the completion (one op a page,
                # as long as the consumer keeps up).
                lease.free.update(lease.final)
                lease.final, lease.free = lease.free, None
                return
            self._completions.append(lease.final)
            self._send_now.set()

    async def wait_for_room(self) -> None:
        pass

    # -- live control: ops for Redis, sent by `serve` ------------------------------------

    def add(self, url: str, depth: int, *, front: bool, seed: bool) -> bool:
        if self._stopping:
            return False
        scope: list[str] = []
        if seed:
            canonical = normalize_url(url, max_length=self.config.max_url_length)
            if canonical is not None:
                self.admission.scope.add_seed(canonical)
                scope.append(canonical)
        admitted = _Admitted()
        self._admit([url], depth, admitted)
        self._dropped.update(admitted.drops)
        if not admitted.links:
            return False
        self._queue_control("add", (admitted, scope, front))
        return True

    def set_paused(self, key: str | None, paused: bool) -> None:
        if key is None:
            self._paused = paused
            self._poke()
        else:
            key = control_key(key)  # a bad key is the caller's ValueError, not the crawl's
        self._queue_control("pause", (key, paused))

    def set_host_limits(self, key: str, limits: HostLimits) -> None:
        self._queue_control("limits", (control_key(key), limits))

    def _queue_control(self, kind: str, args: Any) -> None:
        self._control.append((kind, args))
        self._send_now.set()

    def figures(self) -> Figures:
        now = trio.current_time()
        if now - self._status_at >= STATUS_EVERY:
            self._want_status.set()
        status = self._status
        hosts: dict[str, HostStatistics] = {}
        queued = 0
        paused = self._paused
        if status is not None:
            queued = status.queued + status.delayed
            paused = paused or status.paused
            for origin, host in status.hosts.items():
                hosts[origin] = HostStatistics(
                    origin=origin,
                    queued=host.queued,
                    in_flight=host.leased,
                    done=host.done,
                    errors=host.errors,
                    bytes=host.bytes,
                    rate=host.rate,
                    paused_until=now + host.paused_for if host.paused_for > 0 else None,
                    robots=host.robots,
                    disallowed=host.disallowed,
                    backoff=host.backoff,
                    paused=host.paused or paused,
                    per_host=host.per_host,
                )
        return Figures(
            seen=self._added,
            queued=queued,
            in_flight=self._active,
            paused=paused,
            dropped=dict(self._dropped),
            hosts=hosts,
        )

    # -- background work ------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.finished_before is not None:
            task_status.started()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_leases, name="renew leases")
            nursery.start_soon(self._send_ops, name="completions")
            nursery.start_soon(self._refresh_status, name="status")
            await nursery.start(self._listen, name="wake-ups")
            task_status.started()

    async def _send_ops(self) -> None:
        """Complete the leases of pages the consumer is done with; send live control."""
        while True:
            await self._send_now.wait()
            self._send_now = trio.Event()
            control, self._control = self._control, []
            for kind, args in control:
                await self._send_control(kind, args)
            ops, self._completions = self._completions, []
            for op in ops:
                taken = self._held.get(str(op["l"]))
                if taken is not None:
                    taken.free = None  # from now on its completion is an op of its own
            if ops:
                codes = await self.frontier.settle_many(ops)
                for op, code in zip(ops, codes, strict=False):
                    if op["k"] != "free":
                        self._held.pop(str(op["l"]), None)
                    if code == 0:
                        self._lost += 1
                self._poke()

    async def _send_control(self, kind: str, args: Any) -> None:
        frontier = self.frontier
        config = self.config
        if kind == "add":
            admitted, scope, front = args
            added = await frontier.add(
                admitted.links,
                admitted.hosts,
                scope=scope,
                front=front,
                max_pages=config.max_pages,
                max_host_queue=config.max_host_queue,
                max_queued=config.max_queued,
            )
            self._added += added
            self._known_hosts.update(str(host[0]) for host in admitted.hosts)
        elif kind == "pause":
            key, paused = args
            await frontier.set_paused(key, paused)
        elif kind == "limits":
            key, limits = args
            await frontier.set_host_limits(
                key, rate=limits.rate, burst=limits.burst, per_host=limits.per_host
            )
        self._poke()

    async def _refresh_status(self) -> None:
        while True:
            await self._want_status.wait()
            self._want_status = trio.Event()
            await self._fetch_status()

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Wake the claimer when another worker frees a token or adds work to an idle host."""
        channel = self.frontier.key("wake")
        errors = connection_errors()
        started = False
        while True:
            try:
                async with self.frontier.client.pubsub(
                    channels=[channel], ignore_subscribe_messages=True
                ) as messages:
                    if not started:
                        task_status.started()
                        started = True
                    async for _ in messages:
                        self._poke()
                return
            except errors:
                if not started:
                    raise
                # Redis is away: the claimer polls every MAX_WAIT meanwhile, and the
                # frontier's calls decide when to give up on it.
                await trio.sleep(RESUBSCRIBE_DELAY)

    async def _renew_leases(self) -> None:
        period = self.frontier.lease / 3.0
        while True:
            await trio.sleep(period)
            renewed = await self.frontier.renew(list(self._held))
            lost = [lease for lease in renewed if lease in self._held]
            if lost:
                # This worker stalled for longer than a lease: those URLs are back in the
                # frontier (a completion still wins while they wait there).
                logger.warning(
                    "worker %s: %d lease(s) expired before renewal", self.worker_id, len(lost)
                )

    async def aclose(self) -> None:
        """Leaving: complete what the consumer took, give everything else back."""
        ops: list[dict[str, Any]] = []
        for lease_id, lease in list(self._held.items()):
            if lease.final is not None and lease.acked:
                ops.append(lease.final)
            else:
                ops.append({"k": "release", "l": lease_id, "o": lease.claim.origin})
        self._held.clear()
        if not ops:
            return
        with bounded_shield(RELEASE_TIMEOUT):
            try:
                await self.frontier.settle_many(ops)
            except SharedCrawlError as exc:
                # Redis is gone: what this worker held goes back when its leases expire.
                logger.warning("worker %s: leases not given back: %s", self.worker_id, exc)
