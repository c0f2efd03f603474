"""The in-memory frontier with a durable state (``--state``): SQLite behind it.

The database is the real frontier: every URL admitted, every outcome, the politeness
state worth keeping. Memory holds a window of each host's queue (refilled from the
database as it runs low) and a cache of the URLs seen lately. Outcomes are written
behind, in batches: a page counts as done when the consumer is done with it, and its
links go into the same transaction, so a crash loses nothing and a resumed crawl
delivers every page exactly once.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping

import trio

from ._backend import Links
from ._config import CrawlConfig
from ._frontier import Host, Request
from ._memory import MemoryBackend
from ._page import Page
from ._robots import RobotsStatus, robots_from_response
from ._state import Batch, CommitResult, Done, HostState, NewUrl, QueuedRow, Snapshot, StateStore
from ._urls import origin_of

QUEUE_WINDOW = 1000
"""Most requests a host's in-memory queue is refilled to from the database."""
REFILL_AT = QUEUE_WINDOW // 2
"""Refill a host's queue when it holds fewer requests than this."""
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


class DurableBackend(MemoryBackend):
    """`MemoryBackend` with write-behind to a `StateStore`: exactly once, resumable."""

    def __init__(self, config: CrawlConfig, store: StateStore | None = None) -> None:
        super().__init__(config, seen_cache=SEEN_CACHE)
        if store is None:
            assert config.state is not None
            store = StateStore(config.state, config)
        self.store = store
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
        self._dirty_hosts: set[Host] = set()
        self._dropped_committed: Counter[str] = Counter()
        self._seen_total = 0
        self._elapsed_before_ = 0.0
        self._elapsed_mark = 0.0

    # -- loading ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the state database (if not open yet) and take up where it left off."""
        store = self.store
        snapshot = store.snapshot if store.is_open else await store.open()
        assert snapshot is not None
        self._load_state(snapshot)

    def _load_state(self, snapshot: Snapshot) -> None:
        totals = snapshot.totals
        counts = self._counts
        counts.pages, counts.errors, counts.bytes = totals.pages, totals.errors, totals.bytes
        counts.disallowed, counts.redirects = totals.disallowed, totals.redirects
        counts.errors_by_kind = Counter(totals.errors_by_kind)
        frontier = self.frontier
        frontier.dropped = Counter(totals.dropped)
        self._dropped_committed = Counter(totals.dropped)
        self._elapsed_before_ = totals.elapsed
        self._elapsed_mark = trio.current_time()
        self._seen_total = snapshot.seen
        frontier.on_change = self._host_changed
        config = self.config
        now, wall = trio.current_time(), time.time()
        for stored in snapshot.hosts:
            host = frontier.host_for(stored.origin)
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

    def _started(self) -> None:
        for host in self.frontier:
            self._maybe_refill(host)

    async def aclose(self) -> None:
        await self.store.aclose()

    # -- admission: into the next commit, not into a queue --------------------------

    def _add(
        self,
        url: str,
        depth: int,
        *,
        sitemap: bool = False,
        front: bool = False,
        normalized: bool = False,
    ) -> bool:
        """The database has the last word on "seen before": True means the URL was
        passed on to be queued if new."""
        if self._stopping:
            return False
        new = self._admit(url, depth, sitemap=sitemap, front=front, normalized=normalized)
        if new is None:
            return False
        self._batch.inserts.append(new)
        self._batch_links += 1
        self._batch_ready.set()
        return True

    def _admit(
        self, url: str, depth: int, *, sitemap: bool, front: bool, normalized: bool
    ) -> NewUrl | None:
        canonical = self.frontier.admit(url, depth, normalized=normalized)
        if canonical is None:
            return None
        return NewUrl(canonical, sys.intern(origin_of(canonical)), depth, sitemap, front)

    async def _unseen(self, canonical: str) -> bool:
        # The cache forgets: the database knows every URL admitted before.
        return not await self.store.contains(canonical)

    # -- queues: a window of the database's ------------------------------------------

    def _taken(self, host: Host) -> None:
        self._maybe_refill(host)

    def _ran_dry(self, host: Host) -> None:
        # Ran dry: the links found lately are waiting in the next commit.
        self._commit_now.set()

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
        want = QUEUE_WINDOW - len(host.queue)
        try:
            rows = await self.store.load(host.origin, host.cursor, want)
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
            self._drop_queue(host)
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

    def _drop_queue(self, host: Host) -> None:
        """Drop the host's queue from memory: it is still queued in the database, for a
        resumed crawl to fetch (and counts as queued in the statistics)."""
        self._live -= len(host.queue)
        host.backlog += len(host.queue)
        self._backlog += len(host.queue)
        for request in host.queue:
            host.loaded.discard(request.first_url)
        host.queue.clear()

    def _unsent(self, request: Request) -> None:
        if self._forget(request):
            host = self.frontier.host_for(request.first_url)
            host.backlog += 1  # still queued in the database: counted as queued
            self._backlog += 1

    def _forget(self, request: Request) -> bool:
        """A request leaves memory unsettled: it stays queued in the database.

        False if it was forgotten (or settled) already."""
        host = self.frontier.hosts.get(origin_of(request.first_url))
        if host is None or request.first_url not in host.loaded:
            return False
        host.loaded.discard(request.first_url)
        self._live -= 1
        self._check_finished()
        return True

    def _check_finished(self) -> None:
        if self.config.stay_open:
            return
        if self._live <= 0 and self._backlog <= 0 and not len(self._batch) and not self._committing:
            self.finished.set()

    # -- outcomes -----------------------------------------------------------------------

    def _disallowed(self, request: Request, host: Host) -> None:
        self._batch.disallowed.append((request.seq, request.url, host.origin))
        self._batch_ready.set()

    def _attempted(self, request: Request, *, resend: bool) -> None:
        if not resend and not request.redirects:
            self._batch.attempts.append((request.seq, request.first_url, request.attempt))
            self._batch_ready.set()

    async def settle_page(self, request: Request, page: Page, links: Links | None) -> None:
        into: list[NewUrl] = []
        if links is not None:
            # Passed on even once the crawl stops: they must reach the state before the
            # page is done.
            seen = self.frontier.seen
            depth, sitemap = links.depth, links.sitemap
            for link in links.urls:
                if link in seen:
                    continue
                new = self._admit(link, depth, sitemap=sitemap, front=False, normalized=True)
                if new is not None:
                    into.append(new)
        host = self._count_host(request, page)
        # The links go to the state now, in the next commit: before the page's "done"
        # mark, never after it (a crash in between would lose them), and without
        # waiting for the consumer to deal with the page.
        if into:
            self._batch.inserts.extend(into)
            self._batch_links += len(into)
            self._batch_ready.set()
            if self._uncommitted() >= COMMIT_BATCH:
                self._commit_now.set()
        error = page.error
        done = Done(
            seq=request.seq,
            url=request.first_url,
            origin=host.origin,
            error_kind=str(error.kind) if error is not None else None,
            bytes=len(page.body),
            redirects=request.redirects,
            hops=[*request.chain[1:], request.url] if request.redirects else [],
        )
        self._handed[id(page)] = (page, done)
        try:
            await self._engine.hand_over(page)
        except BaseException:
            # Not handed over: still queued in the database, fetched again on resume.
            self._handed.pop(id(page), None)
            self._forget(request)
            raise

    # -- the consumer's side -------------------------------------------------------------

    def consumer_done(self, page: Page, outputs: Mapping[str, int] | None) -> None:
        entry = self._handed.pop(id(page), None)
        if entry is None:
            return
        if entry[0] is not page:  # pragma: no cover - an id reused by another object
            self._handed[id(page)] = entry
            return
        self._batch.done.append(entry[1])
        if outputs:
            self._batch.outputs.update(outputs)
        self._batch_ready.set()
        if self._uncommitted() >= COMMIT_BATCH:
            self._commit_now.set()

    async def wait_for_room(self) -> None:
        while self._uncommitted() >= MAX_UNCOMMITTED and not self._state_failed:
            await self._committed.wait()

    def _uncommitted(self) -> int:
        """How full the next batch is, in settled URLs (a link weighs 1/LINK_WEIGHT)."""
        batch = self._batch
        return len(batch.done) + len(batch.disallowed) + self._batch_links // LINK_WEIGHT

    # -- committing -------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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
                # Cancelled: the commit runs and is waited for, bounded (a hung disk must
                # not keep a cancelled crawl alive; see StateStore.commit).
                await self._commit()

    async def _commit(self) -> None:
        batch = self._take_batch()
        if batch.empty():
            return
        self._committing = True
        try:
            result = await self.store.commit(batch)
        except BaseException:
            self._state_failed = True
            raise
        finally:
            self._committing = False
        self._apply_commit(batch, result)

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

    def _take_batch(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        self._batch_links = 0
        batch.hosts = [self._host_state(host) for host in self._dirty_hosts]
        self._dirty_hosts.clear()
        dropped = self.frontier.dropped
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
            self.frontier.dropped["max_pages"] += result.dropped_max_pages
            self._dropped_committed["max_pages"] += result.dropped_max_pages
        frontier = self.frontier
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
        host = self.frontier.hosts.get(origin_of(url))
        if host is not None and url in host.loaded:
            host.loaded.discard(url)
            self._live -= 1

    # -- statistics ---------------------------------------------------------------------

    def _seen(self) -> int:
        return self._seen_total

    def _elapsed_before(self) -> float:
        return self._elapsed_before_
