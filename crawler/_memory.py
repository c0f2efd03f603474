"""The frontier in this process: per-origin queues, one dispatcher task per origin.

Each origin with queued work has one dispatcher task. It takes the host's
CapacityLimiter slot, then a global slot, then the host's LeakyBucket slot, and
only then hands the request to a worker over the engine's zero-buffer channel. A
host waiting for its rate slot holds no global slot, so it never parks a worker
while another host has work ready.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import trio

from ._backend import EngineParts, Figures, Links
from ._config import CrawlConfig, HostLimits
from ._frontier import Frontier, Host, Request
from ._page import HostStatistics, Page
from ._retry import Verdict, retry_delay
from ._robots import Robots, RobotsStatus, robots_from_fetch, robots_source, robots_verdict
from ._unexpected import ends_crawl, failed_fetch, unexpected_error
from ._urls import origin_of

# epoll rounds sleeps up to the millisecond: a dispatcher that wakes this late is
# accounted at its slot, or each request would lose ~1 ms of the host's rate.
TIMER_SLACK = 0.002
DISPATCH_BATCH = 64
"""Most requests a dispatcher hands to idle workers in one turn, without yielding."""


class MemoryBackend(EngineParts):
    """The default frontier: everything in memory, gone with the process."""

    def __init__(self, config: CrawlConfig, *, seen_cache: int | None = None) -> None:
        self.config = config
        self.frontier = Frontier(config, seen_cache=seen_cache)
        self.admission = self.frontier.admission
        self.finished = trio.Event()
        self._pending = 0
        """Requests admitted and not settled yet (the crawl ends at 0)."""
        self._dispatch: trio.Nursery | None = None
        self._stopping = False
        self._paused = False
        self._rng = random.Random()

    async def open(self) -> None:
        pass

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def aclose(self) -> None:
        pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as dispatch:
            self._dispatch = dispatch
            try:
                for seed in self.config.seeds:
                    self._add(seed, 0)
                self._started()
                self._check_finished()
                task_status.started()
                await self.finished.wait()
            finally:
                # Before the nursery waits for its children: once they are done it is
                # closed, and a commit or a worker may call in before this task resumes.
                self._dispatch = None
            dispatch.cancel_scope.cancel()

    def _started(self) -> None:
        """The seeds are in: a durable frontier starts loading its queues."""

    def stop(self, *, graceful: bool) -> None:
        del graceful
        self._stopping = True
        for host in self.frontier:
            self._drop_queue(host)

    def _drop_queue(self, host: Host) -> None:
        self._pending -= len(host.queue)
        host.queue.clear()

    # -- admission ---------------------------------------------------------------------

    def add(self, url: str, depth: int, *, front: bool, seed: bool) -> bool:
        if seed:
            self.frontier.scope.add_seed(url)
        return self._add(url, depth, front=front)

    def _add(
        self,
        url: str,
        depth: int,
        *,
        sitemap: bool = False,
        front: bool = False,
        normalized: bool = False,
    ) -> bool:
        if self._stopping:
            return False
        if self._pending >= self.config.max_queued:
            self.frontier.dropped["max_queued"] += 1
            return False
        canonical = self.frontier.admit(url, depth, normalized=normalized)
        if canonical is None:
            return False
        self._queue_new(canonical, depth, sitemap=sitemap, front=front)
        return True

    def _queue_new(self, canonical: str, depth: int, *, sitemap: bool, front: bool) -> None:
        request = Request(
            url=canonical,
            depth=depth,
            origin=origin_of(canonical),
            first_url=canonical,
            sitemap=sitemap,
        )
        self._pending += 1
        self._enqueue(request, front=front)

    def _admit_links(self, links: Links) -> None:
        seen = self.frontier.seen
        depth, sitemap = links.depth, links.sitemap
        for link in links.urls:
            if link in seen:  # most links on a page: out before the call into admit()
                continue
            self._add(link, depth, sitemap=sitemap, normalized=True)

    def _enqueue(self, request: Request, *, front: bool = False) -> None:
        if self._stopping:
            self._unsent(request)
            return
        host = self.frontier.host_for(request.url)
        if front:
            host.queue.appendleft(request)
        else:
            host.queue.append(request)
        self._start_dispatcher(host)

    def _unsent(self, request: Request) -> None:
        """A request taken out of its queue will not be sent (the crawl stops)."""
        self._done_with(request)

    def _done_with(self, request: Request) -> None:
        """A request left the crawl (delivered or dropped); maybe the crawl is over."""
        del request
        self._pending -= 1
        self._check_finished()

    def _check_finished(self) -> None:
        if not self.config.stay_open and self._pending <= 0:
            self.finished.set()

    def _start_dispatcher(self, host: Host) -> None:
        if host.queue and not host.running and self._dispatch is not None:
            host.running = True
            self._dispatch.start_soon(self._dispatch_host, host, name=f"host {host.origin}")

    # -- dispatch: one task per origin with queued work --------------------------------

    async def _dispatch_host(self, host: Host) -> None:
        handed = 0  # requests handed over since this task last yielded
        requests = self._requests
        try:
            while host.queue:
                request = host.queue.popleft()
                self._taken(host)
                host.staged += 1
                try:
                    allowed = await self._robots_allow(host, request)
                    if allowed:
                        if self.config.sitemaps and not host.sitemaps_seeded:
                            self._seed_sitemaps(host)
                        await self._take_slots(host, request)
                except BaseException:
                    self._unsent(request)
                    raise
                finally:
                    host.staged -= 1
                if not allowed:  # settled without a fetch; a long run of them must yield
                    await trio.lowlevel.checkpoint()
                    continue
                host.in_flight += 1
                try:
                    # A worker is free: the global slot we hold is one no busy worker holds.
                    requests.send_nowait(request)
                except trio.WouldBlock:
                    pass
                else:
                    # Handed over. Keep handing requests to idle workers in this turn:
                    # one request per turn of the scheduler kept ~1 request in flight
                    # in a CPU-bound crawl (each turn then completes one page, and the
                    # run loop's overhead is paid per page instead of per batch).
                    handed += 1
                    if handed >= DISPATCH_BATCH:
                        handed = 0
                        await trio.lowlevel.checkpoint()  # a cancellation here is fine
                    continue
                handed = 0
                try:
                    await requests.send(request)
                except BaseException:  # cancelled (the crawl stops): never sent
                    host.in_flight -= 1
                    host.limiter.release_on_behalf_of(request)
                    self._global.release_on_behalf_of(request)
                    self._unsent(request)
                    raise
        finally:
            host.running = False
            self._ran_dry(host)

    def _taken(self, host: Host) -> None:
        """A request left the host's queue (a durable frontier may refill it)."""

    def _ran_dry(self, host: Host) -> None:
        """The host's dispatcher ends: its queue is empty (or the crawl stops)."""

    async def _take_slots(self, host: Host, borrower: object) -> None:
        """The host's concurrency slot, then a global and a rate slot (`_take_slot`);
        all or none. Not a checkpoint when all are free: the dispatcher checkpoints
        once per request, not once per slot."""
        try:
            host.limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            await host.limiter.acquire_on_behalf_of(borrower)
        try:
            await self._take_slot(host, borrower)
        except BaseException:
            host.limiter.release_on_behalf_of(borrower)
            raise

    async def _take_slot(self, host: Host, borrower: object) -> None:
        """Hold a global slot and a rate slot; wait for the rate slot holding nothing global."""
        while True:
            if self._paused or host.paused:
                await host.changed.wait()
                continue
            try:
                self._global.acquire_on_behalf_of_nowait(borrower)
            except trio.WouldBlock:
                await self._global.acquire_on_behalf_of(borrower)
            if self._paused or host.paused:
                self._global.release_on_behalf_of(borrower)
                continue
            delay = host.bucket.try_acquire(slack=TIMER_SLACK)
            if delay <= 0.0:
                return
            self._global.release_on_behalf_of(borrower)
            with trio.move_on_after(delay):
                await host.changed.wait()

    def _seed_sitemaps(self, host: Host) -> None:
        """Queue the host's sitemaps: robots.txt `Sitemap:` lines and /sitemap.xml."""
        host.sitemaps_seeded = True
        for url in (*host.robots.sitemaps, f"{host.origin}/sitemap.xml"):
            self._add(url, 0, sitemap=True)

    # -- robots.txt --------------------------------------------------------------------

    async def _robots_allow(self, host: Host, request: Request) -> bool:
        config = self.config
        if not config.obey_robots:
            return True
        if host.robots.needs_fetch(trio.current_time()):
            await self._fetch_robots(host, request)
        verdict = robots_verdict(
            host.robots, request.url, config.user_agent, redirected=bool(request.redirects)
        )
        if verdict is True:
            return True
        if verdict is False:
            host.disallowed += 1
            self._counts.disallowed += 1
            self._disallowed(request, host)
        else:
            await self._engine.deliver(request, None, verdict)
        return False

    def _disallowed(self, request: Request, host: Host) -> None:
        """robots.txt disallows the request: it is settled without a page."""
        self._done_with(request)

    async def _fetch_robots(self, host: Host, request: Request) -> None:
        """Fetch robots.txt through the host's own limiter and bucket, with retries."""
        host.robots.status = RobotsStatus.FETCHING
        token = object()
        robots: Robots | None = None
        try:
            for attempt in range(self.config.retries + 1):
                await self._take_slots(host, token)
                try:
                    fetched = await self._fetcher.fetch_robots(host.origin)
                except Exception as exc:
                    if ends_crawl(exc):
                        raise
                    # A bug in the fetch, not the site: robots.txt is unavailable, as
                    # after a network failure (the parser itself never raises).
                    error = unexpected_error(exc, f"{host.origin}/robots.txt")
                    fetched = failed_fetch(f"{host.origin}/robots.txt", error)
                finally:
                    self._global.release_on_behalf_of(token)
                    host.limiter.release_on_behalf_of(token)
                if fetched.exchange is not None:
                    request.exchanges.append(fetched.exchange)
                robots = robots_from_fetch(fetched, trio.current_time())
                host.robots_source = robots_source(fetched)
                if not robots.worth_retrying():
                    break
                if attempt < self.config.retries:
                    await trio.sleep(retry_delay(attempt, self._rng))
        finally:
            host.robots = robots if robots is not None else Robots()
            if robots is None:
                host.robots_source = None
        host.robots_delay = host.robots.interval(self.config.user_agent)
        host.apply_limits()
        host.notify()

    # -- the workers' side -------------------------------------------------------------

    def fetched(self, request: Request) -> None:
        host = self.frontier.hosts[request.origin]
        host.in_flight -= 1
        host.limiter.release_on_behalf_of(request)

    def politeness(self, request: Request, verdict: Verdict, started: float) -> None:
        host = self.frontier.hosts[request.origin]
        now = trio.current_time()
        if verdict.pause is not None:
            host.pause_until(now + verdict.pause)
        if verdict.health == "slow":
            host.slow_down(started, now)
        elif verdict.health == "ok":
            host.recover()

    async def requeue(
        self, request: Request, *, delay: float | None = None, resend: bool = False
    ) -> None:
        self._attempted(request, resend=resend)
        if delay is None:
            self._enqueue(request, front=True)  # through the dispatcher: a rate slot
        elif self._dispatch is None:  # stopping: no more requests
            self._enqueue(request, front=True)
        else:
            host = self.frontier.hosts[request.origin]
            self._dispatch.start_soon(self._retry_later, request, host, delay)

    def _attempted(self, request: Request, *, resend: bool) -> None:
        """The request is queued again (its `attempt` counts this one, unless `resend`)."""

    async def _retry_later(self, request: Request, host: Host, delay: float) -> None:
        host.waiting += 1
        try:
            await trio.sleep(delay)
        finally:
            host.waiting -= 1
        self._enqueue(request, front=True)

    async def redirect(self, request: Request, target: str) -> bool:
        canonical = self.frontier.admit(target, request.depth, count=False)
        if canonical is not None and not await self._unseen(canonical):
            canonical = None
        if canonical is None or self._stopping:
            return False
        hop = Request(
            url=canonical,
            depth=request.depth,
            origin=origin_of(canonical),
            first_url=request.first_url,
            redirects=request.redirects + 1,
            chain=(*request.chain, request.url),
            exchanges=request.exchanges,
            seq=request.seq,
        )
        self._counts.redirects += 1
        self._enqueue(hop)
        return True

    async def _unseen(self, canonical: str) -> bool:
        """Whether a redirect target the frontier admitted is new to the crawl."""
        del canonical
        return True

    async def settle_page(self, request: Request, page: Page, links: Links | None) -> None:
        if links is not None:
            self._admit_links(links)
        self._count_host(request, page)
        try:
            await self._engine.hand_over(page)
        finally:
            self._done_with(request)

    def _count_host(self, request: Request, page: Page) -> Host:
        self._counts.count(page)
        host = self.frontier.hosts[request.origin]
        host.bytes += len(page.body)
        if page.error is not None:
            host.errors += 1
        else:
            host.done += 1
        return host

    # -- the consumer's side -----------------------------------------------------------

    def consumer_done(self, page: Page, outputs: Mapping[str, int] | None) -> None:
        del page, outputs

    async def wait_for_room(self) -> None:
        pass

    # -- live control ------------------------------------------------------------------

    def set_paused(self, key: str | None, paused: bool) -> None:
        if key is None:
            self._paused = paused
            for each in self.frontier:
                each.wake()
            return
        for each in self.frontier.matching(key, create=True):
            each.paused = paused
            each.wake()

    def set_host_limits(self, key: str, limits: HostLimits) -> None:
        self.frontier.override(key, limits)

    def figures(self) -> Figures:
        now = trio.current_time()
        hosts = {host.origin: self._host_statistics(host, now) for host in self.frontier}
        return Figures(
            seen=self._seen(),
            queued=sum(h.queued for h in hosts.values()),
            in_flight=sum(h.in_flight for h in hosts.values()),
            paused=self._paused,
            dropped=dict(self.frontier.dropped),
            hosts=hosts,
            elapsed_before=self._elapsed_before(),
        )

    def _seen(self) -> int:
        return len(self.frontier.seen)

    def _elapsed_before(self) -> float:
        return 0.0

    def _host_statistics(self, host: Host, now: float) -> HostStatistics:
        return HostStatistics(
            origin=host.origin,
            queued=len(host.queue) + host.staged + host.waiting + host.backlog,
            in_flight=host.in_flight,
            done=host.done,
            errors=host.errors,
            bytes=host.bytes,
            rate=host.bucket.rate,
            paused_until=host.paused_until if host.paused_until > now else None,
            robots=str(host.robots.status),
            disallowed=host.disallowed,
            backoff=host.backoff,
            paused=host.paused or self._paused,
            per_host=int(host.limiter.total_tokens),
        )
