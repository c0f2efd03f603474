"""The crawl: one nursery, host dispatchers, workers, and two bounded channels.

Each origin with queued work has one dispatcher task. It takes the host's
CapacityLimiter slot, then a global slot, then the host's LeakyBucket slot, and
only then hands the request to a worker over a zero-buffer channel. A host
waiting for its rate slot holds no global slot, so it never parks a worker
while another host has work ready. Workers fetch, settle the outcome (page,
retry or redirect hop) and send pages to the consumer over a bounded channel.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import trio

from ._build import LinkKind, build_page
from ._config import CrawlConfig, HostLimits, _check_number
from ._fetch import Fetched, Fetcher
from ._frontier import Frontier, Host, Request
from ._page import ErrorKind, HostStatistics, Page, PageError, Statistics
from ._retry import Action, judge, redirect_target, retry_delay
from ._robots import (
    Robots,
    RobotsStatus,
    robots_from_fetch,
    robots_from_response,
    robots_source,
)
from ._shield import bounded_shield
from ._state import Batch, CommitResult, Done, HostState, NewUrl, QueuedRow, Snapshot, StateStore
from ._unexpected import ends_crawl, failed_fetch, unexpected_error
from ._urls import origin_of

# epoll rounds sleeps up to the millisecond: a dispatcher that wakes this late is
# accounted at its slot, or each request would lose ~1 ms of the host's rate.
TIMER_SLACK = 0.002
# With a durable state (CrawlConfig.state):
QUEUE_WINDOW = 1000
"""Most requests a host's in-memory queue is refilled to from the database."""
REFILL_AT = QUEUE_WINDOW // 2
"""Refill a host's queue when it holds fewer requests than this."""
DISPATCH_BATCH = 64
"""Most requests a dispatcher hands to idle workers in one turn, without yielding."""
SEEN_CACHE = 65_536
"""URLs per generation of the in-memory seen cache (it holds up to twice that)."""
COMMIT_LINGER = 0.05
"""Seconds a commit waits for more to put in its batch, unless a host runs dry."""
COMMIT_BATCH = 512
"""Commit at once when this many settled URLs are waiting (a link weighs 1/40)."""
MAX_UNCOMMITTED = 4 * COMMIT_BATCH
"""The consumer waits for a commit when this many settled URLs are waiting (a link
weighs 1/40: a batch holds at most about 80,000 links, on top of the one committing)."""
LINK_WEIGHT = 40


class Crawl:
    """A running crawl: iterate it for pages; ask it for statistics; stop it."""

    def __init__(
        self,
        config: CrawlConfig,
        transport: httpx.AsyncBaseTransport | None,
        *,
        store: StateStore | None = None,
    ) -> None:
        self.config = config
        if store is None and config.state is not None:
            store = StateStore(config.state, config)
        self._store = store
        self._fetcher = Fetcher.for_config(config, transport)
        self._frontier = Frontier(config, seen_cache=SEEN_CACHE if store is not None else None)
        self._global = trio.CapacityLimiter(config.concurrency)
        self._requests_send, self._requests_recv = trio.open_memory_channel[Request](0)
        self._results_send, self._results_recv = trio.open_memory_channel[Page](
            config.result_buffer
        )
        self._pending = 0
        self._finished = trio.Event()
        self._stopping = False
        self._stop_reason: str | None = None
        self._paused = False
        self._workers: trio.Nursery | None = None
        self._worker_count = 0
        self._redirects = 0
        self._dispatch: trio.Nursery | None = None
        self._workers_scope: trio.CancelScope | None = None
        self._rng = random.Random()
        self._started: float | None = None
        self._ended: float | None = None
        self._pages = 0
        self._errors = 0
        self._bytes = 0
        self._disallowed = 0
        self._errors_by_kind: Counter[str] = Counter()
        # Durable state only: see _run_state and _commit_loop.
        self._batch = Batch()
        self._batch_links = 0
        self._batch_ready = trio.Event()
        self._commit_now = trio.Event()
        self._committed = trio.Event()
        self._committing = False
        self._state_failed = False
        self._live = 0
        """Requests loaded from the database and not committed (or forgotten) yet."""
        self._backlog = 0
        """Queued URLs in the database not loaded into memory (sum of Host.backlog)."""
        self._handed: dict[int, tuple[Page, Done]] = {}
        self._last_handed: Page | None = None
        self._dirty_hosts: set[Host] = set()
        self._dropped_committed: Counter[str] = Counter()
        self._seen_total = 0
        self._elapsed_before = 0.0
        self._elapsed_mark = 0.0

    # -- the consumer's side ---------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Page]:
        return self

    async def __anext__(self) -> Page:
        if self._store is not None:
            # Asking for the next page says the last one is dealt with.
            if self._last_handed is not None:
                self.mark_done(self._last_handed)
            while self._uncommitted() >= MAX_UNCOMMITTED and not self._state_failed:
                await self._committed.wait()
        try:
            # A page already waiting is taken without a task switch: the consumer then
            # drains what the workers delivered in one turn of the scheduler, instead of
            # one page per turn with the workers blocked on a full channel meanwhile.
            page = self._results_recv.receive_nowait()
        except trio.WouldBlock:
            try:
                page = await self._results_recv.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._store is not None:
            self._last_handed = page
        return page

    def mark_done(self, page: Page, *, outputs: Mapping[str, int] | None = None) -> None:
        """With a durable state: record that `page` is dealt with (written out), so a
        resumed crawl does not deliver it again. It is committed with the links it found,
        in the next batch; `outputs` (output name -> byte offset just after this page's
        output) are stored in that same transaction.

        Without it, a page counts as dealt with when the consumer asks for the next
        one. Does nothing without a durable state."""
        if self._store is None:
            return
        entry = self._handed.pop(id(page), None)
        if entry is None:
            return
        if entry[0] is not page:  # pragma: no cover - an id reused by another object
            self._handed[id(page)] = entry
            return
        if self._last_handed is page:
            self._last_handed = None
        self._batch.done.append(entry[1])
        if outputs:
            self._batch.outputs.update(outputs)
        self._batch_ready.set()
        if self._uncommitted() >= COMMIT_BATCH:
            self._commit_now.set()

    def _uncommitted(self) -> int:
        """How full the next batch is, in settled URLs (a link weighs 1/LINK_WEIGHT)."""
        batch = self._batch
        return len(batch.done) + len(batch.disallowed) + self._batch_links // LINK_WEIGHT

    def stop(self, *, graceful: bool = True) -> None:
        """Schedule nothing new. Graceful: in-flight requests finish and their pages are
        delivered, then iteration ends. Not graceful: in-flight requests are cancelled now."""
        self._stopping = True
        if self._stop_reason is None:
            self._stop_reason = "stop" if graceful else "stop_now"
        for host in self._frontier:
            if self._store is not None:
                self._stop_queue(host)
            else:
                self._pending -= len(host.queue)
                host.queue.clear()
        if self._dispatch is not None:
            self._dispatch.cancel_scope.cancel()
        if not graceful and self._workers_scope is not None:
            self._workers_scope.cancel()

    def add(self, url: str, *, depth: int = 0, priority: int = 0, seed: bool = False) -> bool:
        """Queue a URL under the same dedup, scope and filter rules as a discovered link.

        `priority > 0` puts it at the front of its host's queue. `seed=True` also widens
        the scope to its host (or domain), as a seed given at start would. Returns whether
        it was queued (False if seen before, out of scope, filtered, or the crawl stops).
        With a durable state the database has the last word on "seen before": True
        then means it was passed on to be queued if new."""
        if seed:
            self._frontier.scope.add_seed(url)
        return self._add(url, depth, front=priority > 0)

    def set_host_limits(
        self,
        host: str,
        *,
        rate: float | None = None,
        per_host: int | None = None,
        burst: int | None = None,
    ) -> None:
        """Change one host's limits (a host name, or an origin like ``https://h:8443``),
        for the next request, now and for the rest of the crawl."""
        limits = HostLimits(rate=rate, burst=burst, per_host=per_host)  # validates
        self._frontier.override(host, limits)

    def set_concurrency(self, concurrency: int) -> None:
        """Change the global in-flight cap for the next request."""
        _check_number("concurrency", concurrency, minimum=1, integer=True)
        self._global.total_tokens = concurrency
        # Every global slot needs a worker to hand its request to.
        while self._workers is not None and self._worker_count < concurrency:
            self._start_worker(self._workers)

    def pause(self, host: str | None = None) -> None:
        """Send no new request (to one host, or anywhere); in-flight ones finish."""
        self._set_paused(host, True)

    def resume(self, host: str | None = None) -> None:
        self._set_paused(host, False)

    def _set_paused(self, host: str | None, paused: bool) -> None:
        if host is None:
            self._paused = paused
            for each in self._frontier:
                each.wake()
            return
        for each in self._frontier.matching(host, create=True):
            each.paused = paused
            each.wake()

    def statistics(self) -> Statistics:
        now = trio.current_time()
        end = self._ended if self._ended is not None else now
        hosts = {
            host.origin: HostStatistics(
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
            for host in self._frontier
        }
        elapsed = end - self._started if self._started is not None else 0.0
        return Statistics(
            pages=self._pages,
            errors=self._errors,
            bytes=self._bytes,
            elapsed=self._elapsed_before + elapsed,
            seen=self._seen_total if self._store is not None else len(self._frontier.seen),
            queued=sum(h.queued for h in hosts.values()),
            in_flight=sum(h.in_flight for h in hosts.values()),
            disallowed=self._disallowed,
            redirects=self._redirects,
            concurrency=int(self._global.total_tokens),
            paused=self._paused,
            dropped=dict(self._frontier.dropped),
            errors_by_kind=dict(self._errors_by_kind),
            hosts=hosts,
            stopped=self._stop_reason,
        )

    # -- running ---------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started = trio.current_time()
        try:
            async with trio.open_nursery() as workers:
                self._workers_scope = workers.cancel_scope
                self._workers = workers
                for _ in range(self.config.concurrency):
                    self._start_worker(workers)
                try:
                    async with self._requests_send, trio.open_nursery() as dispatch:
                        self._dispatch = dispatch
                        for seed in self.config.seeds:
                            self._add(seed, 0)
                        for host in self._frontier:
                            self._maybe_refill(host)
                        self._check_finished()
                        task_status.started()
                        max_time = self.config.max_time
                        with trio.move_on_after(math.inf if max_time is None else max_time):
                            await self._finished.wait()
                        if not self._finished.is_set() and self._stop_reason is None:
                            self._stop_reason = "max_time"
                            self.stop()
                        dispatch.cancel_scope.cancel()
                finally:
                    self._dispatch = None
        finally:
            self._ended = trio.current_time()
            self._requests_recv.close()
            self._results_send.close()
            await self._fetcher.aclose()

    def _start_worker(self, workers: trio.Nursery) -> None:
        self._worker_count += 1
        workers.start_soon(self._worker, self._requests_recv.clone())

    def _add(
        self,
        url: str,
        depth: int,
        *,
        sitemap: bool = False,
        front: bool = False,
        into: list[NewUrl] | None = None,
        normalized: bool = False,
    ) -> bool:
        """Admit a URL. With a durable state it goes to the database (in the next
        commit), not to a queue; `into` collects a page's links, which are passed on
        even once the crawl stops (they must reach the state before the page is done)."""
        if self._stopping and into is None:
            return False
        if self._store is None and self._pending >= self.config.max_queued:
            self._frontier.dropped["max_queued"] += 1
            return False
        canonical = self._frontier.admit(url, depth, normalized=normalized)
        if canonical is None:
            return False
        if self._store is not None:
            new = NewUrl(canonical, sys.intern(origin_of(canonical)), depth, sitemap, front)
            if into is not None:
                into.append(new)
            else:
                self._batch.inserts.append(new)
                self._batch_links += 1
                self._batch_ready.set()
            return True
        request = Request(
            url=canonical,
            depth=depth,
            origin=origin_of(canonical),
            first_url=canonical,
            sitemap=sitemap,
        )
        self._pending += 1
        self._enqueue(request, front=front)
        return True

    def _enqueue(self, request: Request, *, front: bool = False) -> None:
        if self._stopping:
            if self._store is not None:
                self._unsent(request)
            else:
                self._done_with(request)
            return
        host = self._frontier.host_for(request.url)
        if front:
            host.queue.appendleft(request)
        else:
            host.queue.append(request)
        self._start_dispatcher(host)

    def _done_with(self, request: Request) -> None:
        """A request left the crawl (delivered or dropped); maybe the crawl is over."""
        del request
        self._pending -= 1
        self._check_finished()

    def _check_finished(self) -> None:
        if self.config.stay_open:
            return
        if self._store is None:
            if self._pending <= 0:
                self._finished.set()
        elif (
            self._live <= 0 and self._backlog <= 0 and not len(self._batch) and not self._committing
        ):
            self._finished.set()

    # -- dispatch: one task per origin with queued work --------------------------------

    async def _dispatch_host(self, host: Host) -> None:
        handed = 0  # requests handed over since this task last yielded
        try:
            while host.queue:
                request = host.queue.popleft()
                if self._store is not None:
                    self._maybe_refill(host)
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
                    self._requests_send.send_nowait(request)
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
                    await self._requests_send.send(request)
                except BaseException:  # cancelled (the crawl stops): never sent
                    host.in_flight -= 1
                    host.limiter.release_on_behalf_of(request)
                    self._global.release_on_behalf_of(request)
                    self._unsent(request)
                    raise
        finally:
            host.running = False
            if self._store is not None:
                # Ran dry: the links found lately are waiting in the next commit.
                self._commit_now.set()

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

    def _unsent(self, request: Request) -> None:
        """A request taken out of its queue will not be sent (the crawl stops)."""
        if self._store is not None and self._forget(request):
            host = self._frontier.host_for(request.first_url)
            host.backlog += 1  # still queued in the database: counted as queued
            self._backlog += 1

    def _seed_sitemaps(self, host: Host) -> None:
        """Queue the host's sitemaps: robots.txt `Sitemap:` lines and /sitemap.xml."""
        host.sitemaps_seeded = True
        for url in (*host.robots.sitemaps, f"{host.origin}/sitemap.xml"):
            self._add(url, 0, sitemap=True)

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

    async def _robots_allow(self, host: Host, request: Request) -> bool:
        config = self.config
        if not config.obey_robots:
            return True
        if host.robots.needs_fetch(trio.current_time()):
            await self._fetch_robots(host, request)
        if host.robots.allows(request.url, config.user_agent):
            return True
        if host.robots.status is RobotsStatus.UNAVAILABLE:
            await self._deliver(request, host, None, host.robots.unavailable_error())
            return False
        if request.redirects:
            # The chain's first URL was fetched: it gets a record saying where it stopped.
            error = PageError(ErrorKind.ROBOTS_DISALLOWED, f"redirect to {request.url} disallowed")
            await self._deliver(request, host, None, error)
        else:
            host.disallowed += 1
            self._disallowed += 1
            if self._store is not None:
                self._batch.disallowed.append((request.seq, request.url, host.origin))
                self._batch_ready.set()
            else:
                self._done_with(request)
        return False

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

    # -- durable state: loading, refilling, committing ---------------------------------

    async def _open_state(self) -> None:
        """Open the state database (if not open yet) and take up where it left off."""
        store = self._store
        if store is None:
            return
        snapshot = store.snapshot if store.is_open else await store.open()
        assert snapshot is not None
        self._load_state(snapshot)

    def _load_state(self, snapshot: Snapshot) -> None:
        totals = snapshot.totals
        self._pages, self._errors, self._bytes = totals.pages, totals.errors, totals.bytes
        self._disallowed, self._redirects = totals.disallowed, totals.redirects
        self._errors_by_kind = Counter(totals.errors_by_kind)
        self._frontier.dropped = Counter(totals.dropped)
        self._dropped_committed = Counter(totals.dropped)
        self._elapsed_before = totals.elapsed
        self._elapsed_mark = trio.current_time()
        self._seen_total = snapshot.seen
        self._frontier.on_change = self._host_changed
        config = self.config
        now, wall = trio.current_time(), time.time()
        for stored in snapshot.hosts:
            host = self._frontier.host_for(stored.origin)
            host.done, host.errors, host.bytes = stored.done, stored.errors, stored.bytes
            host.disallowed = stored.disallowed
            host.backlog = stored.queued
            self._backlog += stored.queued
            if stored.robots is not None and config.obey_robots:
                status, body, expires = stored.robots
                robots = robots_from_response(status, body, now)
                robots.expires = now + (expires - wall)
                host.robots, host.robots_source = robots, (status, body)
                host.robots_delay = robots.interval(config.user_agent)
            host.backoff = stored.backoff
            if host.backoff or host.robots_delay:
                host.apply_limits()
            if stored.paused_until > wall:
                host.pause_until(now + (stored.paused_until - wall))

    def _host_changed(self, host: Host) -> None:
        self._dirty_hosts.add(host)
        self._batch_ready.set()

    def _host_state(self, host: Host) -> HostState:
        now, wall = trio.current_time(), time.time()
        paused = wall + (host.paused_until - now) if host.paused_until > now else 0.0
        robots = None
        if host.robots_source is not None and host.robots.status is not RobotsStatus.FETCHING:
            status, body = host.robots_source
            robots = (status, body, wall + (host.robots.expires - now))
        return HostState(host.origin, paused, host.backoff, robots)

    def _maybe_refill(self, host: Host) -> None:
        """Load more of the host's queued URLs from the database when its queue runs low."""
        if (
            host.backlog <= 0
            or host.refilling
            or len(host.queue) >= REFILL_AT
            or self._stopping
            or self._dispatch is None
        ):
            return
        host.refilling = True
        self._dispatch.start_soon(self._refill, host, name=f"refill {host.origin}")

    async def _refill(self, host: Host) -> None:
        assert self._store is not None
        want = QUEUE_WINDOW - len(host.queue)
        try:
            rows = await self._store.load(host.origin, host.cursor, want)
        finally:
            host.refilling = False
        # No await from here on: a commit's new rows cannot slip between the load and
        # the bookkeeping (store calls run one at a time, and each caller does its
        # bookkeeping before the next call starts).
        if rows:
            host.cursor = rows[-1].seq
        added = 0
        for row in rows:
            if row.url in host.loaded:
                continue  # a priority URL, queued already
            host.queue.append(self._request_from_row(host, row))
            added += 1
        taken = host.backlog if len(rows) < want else min(added, host.backlog)
        host.backlog -= taken
        self._backlog -= taken
        if self._stopping:
            self._stop_queue(host)
            return
        self._start_dispatcher(host)
        self._maybe_refill(host)
        self._check_finished()

    def _request_from_row(self, host: Host, row: QueuedRow) -> Request:
        host.loaded.add(row.url)
        self._live += 1
        return Request(
            url=row.url,
            depth=row.depth,
            origin=host.origin,
            first_url=row.url,
            attempt=row.attempt,
            sitemap=row.sitemap,
            seq=row.seq,
        )

    def _stop_queue(self, host: Host) -> None:
        """Drop the host's queue from memory: it is still queued in the database, for a
        resumed crawl to fetch (and counts as queued in the statistics)."""
        self._live -= len(host.queue)
        host.backlog += len(host.queue)
        self._backlog += len(host.queue)
        for request in host.queue:
            host.loaded.discard(request.first_url)
        host.queue.clear()

    def _start_dispatcher(self, host: Host) -> None:
        if host.queue and not host.running and self._dispatch is not None:
            host.running = True
            self._dispatch.start_soon(self._dispatch_host, host, name=f"host {host.origin}")

    def _forget(self, request: Request) -> bool:
        """A request leaves memory unsettled: it stays queued in the database.

        False if it was forgotten (or settled) already."""
        host = self._frontier.hosts.get(origin_of(request.first_url))
        if host is None or request.first_url not in host.loaded:
            return False
        host.loaded.discard(request.first_url)
        self._live -= 1
        self._check_finished()
        return True

    def _note_attempt(self, request: Request) -> None:
        if self._store is not None and not request.redirects:
            self._batch.attempts.append((request.seq, request.first_url, request.attempt))
            self._batch_ready.set()

    async def _commit_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit whatever has settled, one batch at a time, until cancelled; then the rest."""
        task_status.started()
        try:
            while True:
                await self._batch_ready.wait()
                # Linger, so that one transaction takes many pages; not when a host
                # has run out of work, which may be waiting in this very batch.
                with trio.move_on_after(COMMIT_LINGER):
                    await self._commit_now.wait()
                self._batch_ready = trio.Event()
                self._commit_now = trio.Event()
                await self._commit()
        finally:
            if not self._state_failed:
                # Bounded: a hung disk must not keep a cancelled crawl alive.
                with bounded_shield():
                    await self._commit()

    async def _commit(self) -> None:
        assert self._store is not None
        batch = self._take_batch()
        if batch.empty():
            return
        self._committing = True
        try:
            result = await self._store.commit(batch)
        except BaseException:
            self._state_failed = True
            raise
        finally:
            self._committing = False
        self._apply_commit(batch, result)

    def _take_batch(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        self._batch_links = 0
        batch.hosts = [self._host_state(host) for host in self._dirty_hosts]
        self._dirty_hosts.clear()
        dropped = self._frontier.dropped
        for reason, count in dropped.items():
            delta = count - self._dropped_committed[reason]
            if delta > 0:
                batch.dropped[reason] = delta
        self._dropped_committed = Counter(dropped)
        now = trio.current_time()
        batch.elapsed, self._elapsed_mark = now - self._elapsed_mark, now
        return batch

    def _apply_commit(self, batch: Batch, result: CommitResult) -> None:
        self._seen_total = result.seen
        if result.dropped_max_pages:
            self._frontier.dropped["max_pages"] += result.dropped_max_pages
            self._dropped_committed["max_pages"] += result.dropped_max_pages
        frontier = self._frontier
        for origin, count in result.new.items():
            host = frontier.host_for(origin)
            host.backlog += count
            self._backlog += count
            self._maybe_refill(host)
        for row in result.front:
            host = frontier.host_for(row.origin)
            if row.url not in host.loaded and not self._stopping:
                host.queue.appendleft(self._request_from_row(host, row))
                self._start_dispatcher(host)
            elif self._stopping:
                host.backlog += 1
                self._backlog += 1
        for done in batch.done:
            self._settled(done.url)
        for _, url, _ in batch.disallowed:
            self._settled(url)
        self._committed.set()
        self._committed = trio.Event()
        self._check_finished()

    def _settled(self, url: str) -> None:
        host = self._frontier.hosts.get(origin_of(url))
        if host is not None and url in host.loaded:
            host.loaded.discard(url)
            self._live -= 1

    # -- workers -----------------------------------------------------------------------

    async def _worker(self, requests: trio.MemoryReceiveChannel[Request]) -> None:
        async with requests:
            async for request in requests:
                host = self._frontier.hosts[request.origin]
                try:
                    try:
                        try:
                            fetched = await self._fetcher.fetch(request.url, origin=request.origin)
                        finally:
                            host.in_flight -= 1
                            host.limiter.release_on_behalf_of(request)
                        await self._settle(request, host, fetched)
                    except Exception as exc:
                        # A bug met by one URL's input is that URL's error record. Raised
                        # before the page was counted (only the hand-over comes after, and
                        # its failures end the crawl), so it is delivered exactly once.
                        if ends_crawl(exc):
                            raise
                        error = unexpected_error(exc, request.url)
                        await self._deliver(request, host, None, error)
                finally:
                    self._global.release_on_behalf_of(request)

    async def _settle(self, request: Request, host: Host, fetched: Fetched) -> None:
        """Turn one fetch into a page, a retry or a redirect hop, and adjust politeness."""
        if fetched.exchange is not None:
            request.exchanges.append(fetched.exchange)
        verdict = judge(fetched, request.attempt, self.config, resent=request.resent)
        now = trio.current_time()
        if verdict.pause is not None:
            host.pause_until(now + verdict.pause)
        if verdict.health == "slow":
            host.slow_down(now - fetched.elapsed, now)
        elif verdict.health == "ok":
            host.recover()
        if verdict.action is Action.RESEND:
            request.resent = True
            self._enqueue(request, front=True)  # through the dispatcher: a rate slot
            return
        if verdict.action is Action.RETRY_NOW:
            request.attempt += 1
            self._note_attempt(request)
            self._enqueue(request, front=True)
            return
        if verdict.action is Action.RETRY_LATER:
            delay = retry_delay(request.attempt, self._rng)
            request.attempt += 1
            self._note_attempt(request)
            if self._dispatch is None:  # stopping: no more requests
                self._enqueue(request, front=True)
            else:
                self._dispatch.start_soon(self._retry_later, request, host, delay)
            return
        if verdict.action is Action.REDIRECT and await self._follow_redirect(request, fetched):
            return
        await self._deliver(request, host, fetched, verdict.error)

    async def _retry_later(self, request: Request, host: Host, delay: float) -> None:
        host.waiting += 1
        try:
            await trio.sleep(delay)
        finally:
            host.waiting -= 1
        self._enqueue(request, front=True)

    async def _follow_redirect(self, request: Request, fetched: Fetched) -> bool:
        """Queue the next hop; False when the chain ends here (the page records why)."""
        target, error = redirect_target(
            fetched, request.url, request.chain, request.redirects, self.config
        )
        if target is None:
            request.error = error or request.error
            return False
        request.redirect_target = target
        canonical = self._frontier.admit(target, request.depth, count=False)
        # The cache forgets: the database knows every URL admitted before.
        if (
            canonical is not None
            and self._store is not None
            and await self._store.contains(canonical)
        ):
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
        self._redirects += 1
        self._enqueue(hop)
        return True

    async def _deliver(
        self, request: Request, host: Host, fetched: Fetched | None, error: PageError | None
    ) -> None:
        """Build the page, queue its links, hand it to the consumer."""
        into: list[NewUrl] | None = [] if self._store is not None else None
        page, kind = build_page(
            self.config,
            first_url=request.first_url,
            url=request.url,
            depth=request.depth,
            fetched=fetched,
            error=error or request.error,
            redirect_target=request.redirect_target,
            sitemap=request.sitemap,
            exchanges=request.exchanges,
        )
        error, body = page.error, page.body
        if kind is LinkKind.PAGE:
            self._add_links(page, into)
        elif kind is not LinkKind.NONE:
            index = kind is LinkKind.SITEMAP_INDEX
            for link in page.links:
                depth = request.depth + (0 if index else 1)
                self._add(link, depth, sitemap=index, into=into, normalized=True)
        self._pages += 1
        self._bytes += len(body)
        host.bytes += len(body)
        if error is not None:
            self._errors += 1
            host.errors += 1
            self._errors_by_kind[str(error.kind)] += 1
        else:
            host.done += 1
        if into is None:
            try:
                await self._hand_over(page)
            finally:
                self._done_with(request)
            return
        # The links go to the state now, in the next commit: before the page's "done"
        # mark, never after it (a crash in between would lose them), and without
        # waiting for the consumer to deal with the page.
        if into:
            self._batch.inserts.extend(into)
            self._batch_links += len(into)
            self._batch_ready.set()
            if self._uncommitted() >= COMMIT_BATCH:
                self._commit_now.set()
        done = Done(
            seq=request.seq,
            url=request.first_url,
            origin=host.origin,
            error_kind=str(error.kind) if error is not None else None,
            bytes=len(body),
            redirects=request.redirects,
            hops=[*request.chain[1:], request.url] if request.redirects else [],
        )
        self._handed[id(page)] = (page, done)
        try:
            await self._hand_over(page)
        except BaseException:
            # Not handed over: still queued in the database, fetched again on resume.
            self._handed.pop(id(page), None)
            self._forget(request)
            raise

    async def _hand_over(self, page: Page) -> None:
        """Put `page` in the results channel, waiting only while it is full (a slow
        consumer slows the crawl). Not a checkpoint when there is room: the caller's
        next step (a worker's next request, a dispatcher's loop) is one, and a task
        switch per page is measurable."""
        try:
            self._results_send.send_nowait(page)
        except trio.WouldBlock:
            await self._results_send.send(page)

    def _add_links(self, page: Page, into: list[NewUrl] | None = None) -> None:
        depth, links = self._frontier.admission.links_to_follow(page)
        seen = self._frontier.seen
        for link in links:
            if link in seen:  # most links on a page: out before the call into admit()
                continue
            self._add(link, depth, into=into, normalized=True)


@asynccontextmanager
async def open_crawl(
    config: CrawlConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: StateStore | None = None,
) -> AsyncIterator[Crawl]:
    """Run a crawl inside the caller's task tree; leaving the block stops it at once.

    An exception raised by the caller's block propagates out unchanged. With
    `config.state`, the crawl continues the one stored there (`StateError` /
    `StateMismatch` if it cannot); `store` is that state opened already (the crawl
    closes it).
    """
    crawl = Crawl(config, transport, store=store)
    raised: BaseException | None = None
    try:
        await crawl._open_state()
        async with trio.open_nursery() as nursery:
            if crawl._store is not None:
                await nursery.start(crawl._commit_loop, name="crawl state")
            await nursery.start(crawl._run, name="crawl")
            try:
                yield crawl
            except BaseException as exc:  # re-raised below, after the crawl's tasks are gone
                raised = exc
            nursery.cancel_scope.cancel()
    finally:
        if crawl._store is not None:
            await crawl._store.aclose()
    if raised is not None:
        raise raised


async def crawl(
    config: CrawlConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> Statistics:
    """Crawl to the end, handing each page to `config.on_page` if set (a function or
    coroutine function); return the final statistics."""
    on_page = config.on_page
    async with open_crawl(config, transport=transport) as running:
        async for page in running:
            if on_page is not None:
                result = on_page(page)
                if inspect.isawaitable(result):
                    await result
        return running.statistics()
