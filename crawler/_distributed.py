"""A worker of a shared crawl: many processes, on many machines, crawling one frontier in
Redis with one per-host politeness budget.

Each worker process runs one trio nursery::

    claimer ──(claims up to `free` requests of hosts that are ready now)──► job tasks
      ▲  sleeps exactly until the earliest host is ready                  │ fetch (Fetcher)
      │  (at most MAX_WAIT: other workers may add work), or until a job   │ settle: retry,
      │  of its own ends                                                  │ redirect hop or
      └──────────────────────────── free slot ◄───────────────────────────┘ page ─► consumer
    renewer: extends the leases of the jobs under way every lease/3 (and is a heartbeat)

The per-host concurrency token, the GCRA rate slot, Retry-After pauses, the adaptive backoff
and robots.txt live in Redis (see :mod:`crawler._redis`) and are shared by every worker, so
N workers never hit a host harder than one would. A claimed request is a lease: a worker
that dies loses nothing, its leases expire and go back to the frontier. The fetch, the
decision about the outcome (retry, redirect, page) and the page itself are those of the
single-process engine (`Fetcher`, `parse_html`, `normalize_url`, `Scope`, the robots.txt
and retry helpers, `Page`).

Delivery is at least once: with ``results="local"`` a page's lease is completed only when
the consumer asks for the next page (or leaves the block normally), so a page is never lost
to a worker killed between fetching it and writing it down; a worker killed after writing it
but before completing it makes another worker fetch it again. With ``results="redis"`` the
page is appended to the crawl's Redis stream in the same atomic step that completes its
lease: exactly once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import random
import re
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import trio

from ._admission import Admission
from ._build import LinkKind, build_page
from ._config import CrawlConfig
from ._fetch import Fetched, Fetcher
from ._page import ErrorKind, Exchange, Page, PageError, Statistics
from ._redis import (
    DEFAULT_LEASE,
    RECONNECT_FOR,
    Claim,
    CrawlFinished,
    RedisClient,
    RedisFrontier,
    SharedCrawlError,
    SharedStatus,
    check_crawl_id,
    check_worker_id,
    connection_errors,
    open_redis,
)
from ._retry import Action, Verdict, judge, redirect_target, retry_delay
from ._robots import (
    ROBOTS_MAX_BYTES,
    ROBOTS_RETRY,
    ROBOTS_TTL,
    Robots,
    RobotsStatus,
    robots_error,
    robots_from_response,
    robots_source,
)
from ._unexpected import ends_crawl, failed_fetch, unexpected_error
from ._urls import Scope, host_of, normalize_url, origin_of

__all__ = [
    "SharedCrawl",
    "default_worker_id",
    "open_shared_crawl",
    "run_worker",
    "shared_status",
    "worker_path",
]

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


# ---------------------------------------------------------------------------------------
# Queue entries: what travels through Redis for one request


@dataclass(slots=True, eq=False)
class _Job:
    """One claimed URL on its way through this worker (like the engine's Request)."""

    claim: Claim
    url: str
    depth: int
    first_url: str
    redirects: int = 0
    attempt: int = 0
    chain: tuple[str, ...] = ()
    sitemap: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    resent: bool = False
    error: PageError | None = None
    redirect_target: str | None = None
    applied: bool = False
    """Pause and health of the last response were already sent to Redis."""


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


def _job(claim: Claim) -> _Job:
    data = json.loads(claim.entry)
    url = str(data["u"])
    return _Job(
        claim=claim,
        url=url,
        depth=int(data["d"]),
        first_url=str(data.get("f", url)),
        redirects=int(data.get("r", 0)),
        attempt=int(data.get("a", 0)),
        chain=tuple(data.get("c", ())),
        sitemap=bool(data.get("s", 0)),
        exchanges=[_exchange_from_json(x) for x in data.get("x", ())],
        resent=bool(data.get("rs", 0)),
    )


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


# ---------------------------------------------------------------------------------------
# The worker


@dataclass(slots=True, eq=False)
class _Held:
    """A lease this worker holds, and what to tell Redis if the worker has to stop now."""

    claim: Claim
    final: dict[str, Any] | None = None
    """The completion of the page handed to the consumer."""
    acked: bool = False
    """The consumer is done with that page: at shutdown, send `final` (not a release)."""


@dataclass(slots=True, eq=False)
class _Delivery:
    page: Page
    lease: str | None
    acked: trio.Event = field(default_factory=trio.Event)


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


class SharedCrawl:
    """This worker's part of a shared crawl: iterate it for the pages this worker fetched.

    Made by :func:`open_shared_crawl`. ``statistics()`` counts this worker's pages;
    ``await status()`` reads the whole crawl's progress from Redis.
    """

    def __init__(
        self,
        config: CrawlConfig,
        frontier: RedisFrontier,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._fetcher = Fetcher.for_config(config, transport)
        self._admission = Admission(config)
        self._scope_version = -1
        self._results_send, self._results_recv = trio.open_memory_channel[_Delivery](
            config.result_buffer
        )
        self._rng = random.Random()
        self._free = config.concurrency
        self._active = 0
        self._wake = trio.Event()
        self._stopping = False
        self._stop_reason: str | None = None
        self.finished_before: int | None = None
        """The crawl's pages, when it was over before this worker joined (nothing to do)."""
        self._jobs_scope: trio.CancelScope | None = None
        self._held: dict[str, _Held] = {}
        self._last: _Delivery | None = None
        self._robots: dict[str, tuple[int, Robots]] = {}
        self._robots_exchanges: dict[str, list[Exchange]] = {}
        self._known_hosts: set[str] = set()
        self._started: float | None = None
        self._ended: float | None = None
        self._pages = 0
        self._errors = 0
        self._bytes = 0
        self._disallowed = 0
        self._redirects = 0
        self._added = 0
        self._lost = 0
        self._errors_by_kind: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    # -- the consumer's side ------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Page]:
        return self

    async def __anext__(self) -> Page:
        self._ack_last()
        try:
            delivery = await self._results_recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._last = delivery
        return delivery.page

    def _ack_last(self) -> None:
        """The consumer is done with the last page: its lease may be completed."""
        last, self._last = self._last, None
        if last is not None:
            held = self._held.get(last.lease) if last.lease is not None else None
            if held is not None:
                held.acked = True
            last.acked.set()

    def stop(self, *, graceful: bool = True) -> None:
        """Claim nothing new. Graceful: requests under way finish and their pages are
        delivered, then iteration ends. Not graceful: they are cancelled now and their
        leases go back to the shared frontier at once."""
        self._stopping = True
        if self._stop_reason is None:
            self._stop_reason = "stop" if graceful else "stop_now"
        self._poke()
        if not graceful and self._jobs_scope is not None:
            self._jobs_scope.cancel()

    def statistics(self) -> Statistics:
        """This worker's share of the crawl (``seen`` = URLs this worker added)."""
        now = trio.current_time()
        end = self._ended if self._ended is not None else now
        return Statistics(
            pages=self._pages,
            errors=self._errors,
            bytes=self._bytes,
            elapsed=end - self._started if self._started is not None else 0.0,
            seen=self._added,
            queued=0,
            in_flight=self._active,
            disallowed=self._disallowed,
            redirects=self._redirects,
            concurrency=self.config.concurrency,
            paused=False,
            dropped=dict(self._dropped),
            errors_by_kind=dict(self._errors_by_kind),
            hosts={},
            stopped=self._stop_reason,
        )

    async def status(self) -> SharedStatus:
        """The whole crawl's progress, from Redis."""
        return await self.frontier.status()

    # -- running ------------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started = trio.current_time()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._renew_leases, name="renew leases")
                if self.config.max_time is not None:
                    outer.start_soon(self._stop_after, self.config.max_time, name="max_time")
                await outer.start(self._listen, name="wake-ups")
                async with trio.open_nursery() as jobs:
                    self._jobs_scope = jobs.cancel_scope
                    task_status.started()
                    await self._claim_loop(jobs)
                outer.cancel_scope.cancel()
        finally:
            self._ended = trio.current_time()
            self._results_send.close()
            with trio.CancelScope(shield=True):
                try:
                    with trio.move_on_after(RELEASE_TIMEOUT):
                        await self._release_all()
                except SharedCrawlError as exc:
                    # Redis is gone: what this worker held goes back when its leases expire.
                    logger.warning("worker %s: leases not given back: %s", self.worker_id, exc)
                finally:
                    await self._fetcher.aclose()

    async def _stop_after(self, seconds: float) -> None:
        """max_time: this worker stops gracefully after `seconds` of its own run (the
        crawl goes on with the other workers, or with the next one to join)."""
        await trio.sleep(seconds)
        if self._stop_reason is None:
            self._stop_reason = "max_time"
        self.stop()

    async def _join(self) -> None:
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
            self._admission.scope = Scope(
                self.config.scope, [*self.config.seeds, *await self.frontier.seeds()]
            )
            self._scope_version = version

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _claim_loop(self, jobs: trio.Nursery) -> None:
        """Claim requests while slots are free; sleep exactly until the next host is ready."""
        batch = max(1, self.config.concurrency // CLAIM_BATCH_DIVISOR)
        while not self._stopping:
            wake = self._wake
            if self._free <= 0:
                await wake.wait()
                continue
            if self._free < batch and self._active > 0:
                # Claim several at once: a round trip per page costs as much CPU as the
                # rest of the page. Wait a moment for more jobs to end (they poke us).
                with trio.move_on_after(CLAIM_BATCH_WAIT):
                    while self._free < batch and self._active > 0 and not self._stopping:
                        await self._wake.wait()
                if self._stopping:
                    break
            wanted = self._free
            result = await self.frontier.claim(wanted)
            for claim in result.claims:
                self._free -= 1
                self._active += 1
                self._held[claim.lease] = _Held(claim)
                jobs.start_soon(self._run_job, claim, name=f"{claim.kind} {claim.origin}")
            if result.scope_version != self._scope_version:
                await self._reload_scope(result.scope_version)
            if len(result.claims) == wanted:
                continue
            if (
                not result.claims
                and result.pending == 0
                and self._active == 0
                and not self.stay_open
            ):
                return
            delay = MAX_WAIT if result.wait is None else min(result.wait, MAX_WAIT)
            with trio.move_on_after(delay):
                await wake.wait()

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

    async def _release_all(self) -> None:
        """Leaving: complete what the consumer took, give everything else back."""
        ops: list[dict[str, Any]] = []
        for lease, held in list(self._held.items()):
            if held.final is not None and held.acked:
                ops.append(held.final)
            else:
                ops.append({"k": "release", "l": lease, "o": held.claim.origin})
        self._held.clear()
        if ops:
            await self.frontier.settle_many(ops)

    async def _run_job(self, claim: Claim) -> None:
        try:
            if claim.kind == "robots":
                await self._robots_job(claim)
            else:
                await self._url_job(_job(claim))
        finally:
            self._active -= 1
            self._free += 1
            self._poke()

    async def _finish(self, lease: str, op: dict[str, Any]) -> int:
        """Send the outcome of a lease; forget the lease."""
        code = await self.frontier.settle(op)
        self._held.pop(lease, None)
        if code == 0:
            self._lost += 1
        return code

    # -- robots.txt ---------------------------------------------------------------------

    async def _robots_job(self, claim: Claim) -> None:
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

    # -- one URL ------------------------------------------------------------------------

    async def _url_job(self, job: _Job) -> None:
        config = self.config
        claim = job.claim
        if config.obey_robots:
            robots = await self._robots_for(claim.origin, claim.version)
            if not robots.allows(job.url, config.user_agent):
                if robots.status is RobotsStatus.UNAVAILABLE:
                    await self._deliver(job, None, robots.unavailable_error())
                elif job.redirects:
                    error = PageError(
                        ErrorKind.ROBOTS_DISALLOWED, f"redirect to {job.url} disallowed"
                    )
                    await self._deliver(job, None, error)
                else:
                    op: dict[str, Any] = {
                        "k": "done",
                        "l": claim.lease,
                        "o": claim.origin,
                        "e": claim.entry,
                        "dis": 1,
                    }
                    if await self._finish(claim.lease, op):
                        self._disallowed += 1
                return
        # The guards here and in _follow_redirect and _deliver cover what reads the
        # network's input, not the frontier's calls: a bug met by one URL's input is
        # that URL's error record (see _unexpected), a Redis failure ends the worker.
        try:
            fetched = await self._fetcher.fetch(job.url)
            if fetched.exchange is not None:
                job.exchanges.append(fetched.exchange)
            verdict = judge(fetched, job.attempt, self.config, resent=job.resent)
        except Exception as exc:
            if ends_crawl(exc):
                raise
            await self._deliver(job, None, unexpected_error(exc, job.url))
            return
        await self._settle(job, fetched, verdict)

    async def _settle(self, job: _Job, fetched: Fetched, verdict: Verdict) -> None:
        """Turn one fetch into a page, a retry or a redirect hop (as the engine does)."""
        pause, health = verdict.pause, verdict.health
        if verdict.action is Action.RESEND:
            await self._retry(job, resend=True)
        elif verdict.action is Action.RETRY_NOW:
            await self._retry(job, pause=pause)
        elif verdict.action is Action.RETRY_LATER:
            await self._retry(job, delay=retry_delay(job.attempt, self._rng), health=health)
        elif verdict.action is Action.REDIRECT and await self._follow_redirect(
            job, fetched, pause, health
        ):
            return
        else:
            await self._deliver(job, fetched, verdict.error, pause=pause, health=health)

    def _politeness(
        self, op: dict[str, Any], job: _Job, pause: float | None, health: str | None
    ) -> dict[str, Any]:
        if not job.applied:
            if pause is not None:
                op["pause"] = pause
            if health is not None:
                op["health"] = health
                op["started"] = job.claim.claimed_at
        return op

    async def _retry(
        self,
        job: _Job,
        *,
        delay: float | None = None,
        pause: float | None = None,
        health: str | None = None,
        resend: bool = False,
    ) -> None:
        """Queue the job again; `resend`: once more after a lost keep-alive connection,
        not counted as an attempt (judge's Action.RESEND)."""
        claim = job.claim
        keep = job.exchanges if self.config.keep_exchanges else ()
        entry = _entry(
            job.url,
            job.depth,
            first_url=job.first_url,
            redirects=job.redirects,
            attempt=job.attempt if resend else job.attempt + 1,
            chain=job.chain,
            sitemap=job.sitemap,
            exchanges=keep,
            resent=resend or job.resent,
        )
        op: dict[str, Any] = {"k": "retry", "l": claim.lease, "o": claim.origin, "ne": entry}
        if delay is not None:
            op["delay"] = delay
        await self._finish(claim.lease, self._politeness(op, job, pause, health))

    async def _follow_redirect(
        self, job: _Job, fetched: Fetched, pause: float | None, health: str | None
    ) -> bool:
        """Queue the next hop; False when the chain ends here (the page records why)."""
        config = self.config
        try:
            target, error = redirect_target(fetched, job.url, job.chain, job.redirects, config)
            if target is not None:
                target = self._admission.canonical(target) or target
            refused = target is not None and self._admission.refusal(target, job.depth) is not None
        except Exception as exc:
            if ends_crawl(exc):
                raise
            job.error = unexpected_error(exc, job.url)
            return False
        if target is None:
            job.error = error or job.error
            return False
        job.redirect_target = target
        if self._stopping or refused:
            return False
        claim = job.claim
        origin = origin_of(target)
        keep = job.exchanges if config.keep_exchanges else ()
        entry = _entry(
            target,
            job.depth,
            first_url=job.first_url,
            redirects=job.redirects + 1,
            chain=(*job.chain, job.url),
            exchanges=keep,
        )
        op: dict[str, Any] = {
            "k": "hop",
            "l": claim.lease,
            "o": claim.origin,
            "links": [[target, entry, origin, 0]],
        }
        if origin not in self._known_hosts:
            op["hosts"] = [self._host_spec(target, origin)]
        code = await self.frontier.settle(self._politeness(op, job, pause, health))
        job.applied = True
        if code == 2:
            return False  # already seen: this response is the chain's page
        self._held.pop(claim.lease, None)
        if code == 1:
            self._known_hosts.add(origin)
            self._redirects += 1
        else:
            self._lost += 1
        return True

    async def _deliver(
        self,
        job: _Job,
        fetched: Fetched | None,
        error: PageError | None,
        *,
        pause: float | None = None,
        health: str | None = None,
    ) -> None:
        """Build the page (as the engine does), hand it over, complete the lease."""
        config = self.config
        claim = job.claim
        exchanges = [*self._robots_exchanges.pop(claim.origin, ()), *job.exchanges]
        admitted = _Admitted()
        try:
            page, kind = build_page(
                config,
                first_url=job.first_url,
                url=job.url,
                depth=job.depth,
                fetched=fetched,
                error=error or job.error,
                redirect_target=job.redirect_target,
                sitemap=job.sitemap,
                exchanges=exchanges,
            )
            if kind is LinkKind.PAGE:
                if page.links:
                    self._admit_links(page, admitted)
            elif kind is not LinkKind.NONE:
                index = kind is LinkKind.SITEMAP_INDEX
                self._admit(page.links, job.depth + (0 if index else 1), admitted, sitemap=index)
        except Exception as exc:
            if ends_crawl(exc):
                raise
            admitted = _Admitted()
            page, kind = build_page(
                config,
                first_url=job.first_url,
                url=job.url,
                depth=job.depth,
                fetched=None,
                error=unexpected_error(exc, job.url),
                exchanges=exchanges,
            )
        error, body = page.error, page.body
        op: dict[str, Any] = {
            "k": "done",
            "l": claim.lease,
            "o": claim.origin,
            "e": claim.entry,
            "page": 1,
            "bytes": len(body),
        }
        self._bounds(op)
        if error is not None:
            op["err"] = str(error.kind)
        self._politeness(admitted.into(op), job, pause, health)
        if self.results == "redis":
            from ._output import page_to_json

            op["res"] = json.dumps(page_to_json(page), separators=(",", ":"))
            if await self._finish(claim.lease, op):
                self._count(page, admitted)
                await self._results_send.send(_Delivery(page, None))
            return
        # Local results: complete the lease only once the consumer is done with the page.
        held = self._held.get(claim.lease)
        if held is not None:
            held.final = op
        delivery = _Delivery(page, claim.lease)
        await self._results_send.send(delivery)
        await delivery.acked.wait()
        if await self._finish(claim.lease, op):
            self._count(page, admitted)

    def _count(self, page: Page, admitted: _Admitted) -> None:
        self._pages += 1
        self._bytes += len(page.body)
        if page.error is not None:
            self._errors += 1
            self._errors_by_kind[str(page.error.kind)] += 1
        self._added += sum(1 for link in admitted.links if link[3] != -1)
        self._dropped.update(admitted.drops)
        self._known_hosts.update(str(host[0]) for host in admitted.hosts)

    # -- admission (the rules of Frontier.admit; Redis keeps the seen-set and bounds) ----

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
        admission = self._admission
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
            # robots.txt is judged when the URL's turn comes (_url_job), as in one process:
            # a disallowed URL counts towards max_pages and in this worker's statistics.
            admitted.links.append([canonical, entry, origin, 1])
            if origin not in self._known_hosts and origin not in new_hosts:
                new_hosts.add(origin)
                admitted.hosts.append(self._host_spec(canonical, origin))

    def _admit_links(self, page: Page, admitted: _Admitted) -> None:
        depth, links = self._admission.links_to_follow(page)
        self._admit(links, depth, admitted, normalized=True)


def default_worker_id() -> str:
    """``<hostname>-<pid>``, with anything but ``[A-Za-z0-9._:@-]`` replaced by ``-``."""
    raw = f"{socket.gethostname() or 'worker'}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", raw)[-200:]


def worker_path(path: str | os.PathLike[str], worker_id: str) -> str:
    """This worker's own output file: ``out.jsonl`` -> ``out.w-<id>.jsonl``,
    ``site.warc.gz`` -> ``site.w-<id>.warc.gz``; ``-`` (stdout) stays ``-``."""
    text = os.fspath(path)
    if text == "-":
        return text
    p = Path(text)
    suffixes = p.suffixes[-2:] if p.suffix == ".gz" else p.suffixes[-1:]
    suffix = "".join(suffixes)
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    if not stem:
        stem, suffix = p.name, ""
    return str(p.with_name(f"{stem}.w-{check_worker_id(worker_id)}{suffix}"))


@asynccontextmanager
async def open_shared_crawl(
    config: CrawlConfig,
    *,
    redis_url: str | None = None,
    crawl_id: str,
    worker_id: str | None = None,
    client: RedisClient | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    results: Results = "local",
    lease: float = DEFAULT_LEASE,
    stay_open: bool | None = None,
    reconnect_for: float = RECONNECT_FOR,
) -> AsyncIterator[SharedCrawl]:
    """Join the shared crawl `crawl_id` in Redis as one worker; iterate for its pages.

    Give `redis_url` (``redis://host:port/db``, ``redis+cluster://host:port``) or an
    entered coredis `client`. Seeds in `config` are added to the shared frontier (ones seen
    before are ignored); a worker may join with none. Iteration ends when the shared
    frontier is empty and nothing is leased by any worker (with ``stay_open``: on
    ``stop()``). Leaving the block stops this worker at once; its unfinished requests go
    back to the frontier. An exception raised in the block propagates unchanged.

    `stay_open` overrides ``config.stay_open``: a worker joining without seeds needs a
    CrawlConfig with ``stay_open=True`` (CrawlConfig insists on seeds otherwise) and
    passes ``stay_open=False`` to end with the crawl.

    While Redis cannot be reached (a restart), the worker retries with backoff for up to
    `reconnect_for` seconds, then raises RedisUnavailable; leases that expired meanwhile
    go back to the frontier as when a worker dies.
    """
    if (redis_url is None) == (client is None):
        raise ValueError("give exactly one of redis_url and client")
    worker = check_worker_id(worker_id if worker_id is not None else default_worker_id())
    async with AsyncExitStack() as stack:
        if client is None:
            assert redis_url is not None
            client = await stack.enter_async_context(open_redis(redis_url))
        frontier = RedisFrontier(
            client, crawl_id, worker_id=worker, lease=lease, reconnect_for=reconnect_for
        )
        crawl = SharedCrawl(
            config, frontier, transport=transport, results=results, stay_open=stay_open
        )
        try:
            await crawl._join()
        except BaseException:
            await crawl._fetcher.aclose()
            raise
        raised: BaseException | None = None
        with _one_shared_error():
            async with trio.open_nursery() as nursery:
                await nursery.start(crawl._run, name=f"shared crawl {crawl_id}")
                try:
                    yield crawl
                except BaseException as exc:  # re-raised below, after the crawl's tasks are gone
                    raised = exc
                else:
                    crawl._ack_last()
                nursery.cancel_scope.cancel()
        if raised is not None:
            raise raised


@contextmanager
def _one_shared_error() -> Iterator[None]:
    """A crawl task's SharedCrawlError (Redis gone for good) comes out as itself, not in
    an ExceptionGroup: it is the one-line reason the worker ends."""
    try:
        yield
    except BaseExceptionGroup as group:
        shared, rest = group.split(SharedCrawlError)
        if shared is None or rest is not None:
            raise
        first: BaseException = shared
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def shared_status(redis_url: str, crawl_id: str, *, host_limit: int = 1000) -> SharedStatus:
    """The progress of the shared crawl `crawl_id` (queued, leased, done, errors, per host)."""
    async with open_redis(redis_url) as client:
        frontier = RedisFrontier(client, crawl_id, worker_id="status")
        return await frontier.status(host_limit=host_limit)


async def run_worker(
    config: CrawlConfig,
    *,
    redis_url: str,
    crawl_id: str,
    worker_id: str | None = None,
    output: str | os.PathLike[str] | None = None,
    warc: str | os.PathLike[str] | None = None,
    results: Results = "local",
    lease: float = DEFAULT_LEASE,
    transport: httpx.AsyncBaseTransport | None = None,
    stay_open: bool | None = None,
    stop_on_signals: bool = False,
    signals: list[int] | None = None,
) -> Statistics:
    """Run one worker to the end of the shared crawl, writing its pages to its own files
    (`output` JSON Lines and `warc`, each named with :func:`worker_path`).

    With `stop_on_signals`, SIGINT/SIGTERM stop it gracefully (a second one: at once);
    the signals received are appended to `signals` (for the exit status).
    The files are created with the first page: a worker that gets none leaves none.
    Returns this worker's statistics; raises CrawlFinished when the crawl was over
    before this worker joined (and `stay_open` is false)."""
    from ._output import JsonLinesWriter, WarcWriter

    worker = check_worker_id(worker_id if worker_id is not None else default_worker_id())
    check_crawl_id(crawl_id)  # before connecting: a usage error, not a Redis one
    if warc is not None and not config.keep_exchanges:
        config = replace(config, keep_exchanges=True)
    async with AsyncExitStack() as stack:
        writers: list[JsonLinesWriter | WarcWriter] = []
        made: list[JsonLinesWriter | WarcWriter] = []
        if output is not None:
            writers.append(JsonLinesWriter(worker_path(output, worker)))
        if warc is not None:
            writers.append(WarcWriter(worker_path(warc, worker), config=config))
        crawl = await stack.enter_async_context(
            open_shared_crawl(
                config,
                redis_url=redis_url,
                crawl_id=crawl_id,
                worker_id=worker,
                transport=transport,
                results=results,
                lease=lease,
                stay_open=stay_open,
            )
        )
        if crawl.finished_before is not None:
            raise CrawlFinished(crawl_id, crawl.finished_before)
        async with trio.open_nursery() as nursery:
            if stop_on_signals:
                nursery.start_soon(_stop_on_signals, crawl, signals)
            async for page in crawl:
                if not made:
                    # Closed (flushed) before the crawl completes its last leases.
                    made.extend([await stack.enter_async_context(w) for w in writers])
                for writer in made:
                    await writer.write(page)
            nursery.cancel_scope.cancel()
        return crawl.statistics()


async def _stop_on_signals(crawl: SharedCrawl, received: list[int] | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        graceful = True
        async for signum in signals:
            if received is not None:
                received.append(signum)
            crawl.stop(graceful=graceful)
            graceful = False
