"""The one engine: every crawl (in memory, with ``--state``, shared through Redis) is a
`Crawl`; what differs is its frontier backend (see `_backend`).

A nursery of workers takes ready requests from a zero-buffer channel (the backend
hands a request over only once it holds the host's slots and a global one), fetches,
judges the response (page, retry, redirect hop), settles the outcome with the backend,
and sends pages to the consumer over a bounded channel: a slow consumer slows the crawl.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import trio

from ._backend import Counts, FrontierBackend, Links
from ._build import LinkKind, build_page, html_to_parse
from ._config import CrawlConfig, HostLimits, _check_number
from ._durable import DurableBackend
from ._fetch import Fetched, Fetcher
from ._frontier import Request
from ._links import ParsedPage, keep_heap_for_parsing
from ._memory import MemoryBackend
from ._page import ErrorKind, Page, PageError, Statistics
from ._parsepool import ParsePool, ParserCrashed
from ._retry import Action, judge, redirect_target, retry_delay
from ._state import StateStore
from ._unexpected import ends_crawl, unexpected_error


class Crawl:
    """A running crawl: iterate it for pages; ask it for statistics; stop it."""

    def __init__(
        self,
        config: CrawlConfig,
        transport: httpx.AsyncBaseTransport | None,
        *,
        store: StateStore | None = None,
        backend: FrontierBackend | None = None,
    ) -> None:
        self.config = config
        keep_heap_for_parsing()
        if backend is None:
            if store is not None or config.state is not None:
                backend = DurableBackend(config, store)
            else:
                backend = MemoryBackend(config)
        self.backend = backend
        self.fetcher = Fetcher.for_config(config, transport)
        self.parser = ParsePool(config.parse_processes) if config.parse_processes else None
        self.global_limiter = trio.CapacityLimiter(config.concurrency)
        self.requests, self._requests_recv = trio.open_memory_channel[Request](0)
        self._results_send, self._results_recv = trio.open_memory_channel[Page](
            config.result_buffer
        )
        self.counts = Counts()
        self._stop_reason: str | None = None
        self._source: trio.CancelScope | None = None
        self._workers: trio.Nursery | None = None
        self._worker_count = 0
        self._rng = random.Random()
        self._started: float | None = None
        self._ended: float | None = None
        self._last_handed: Page | None = None
        backend.attach(self)

    # -- the consumer's side ---------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Page]:
        return self

    async def __anext__(self) -> Page:
        # Asking for the next page says the last one is dealt with.
        if self._last_handed is not None:
            self.mark_done(self._last_handed)
        await self.backend.wait_for_room()
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
        self._last_handed = page
        return page

    def mark_done(self, page: Page, *, outputs: Mapping[str, int] | None = None) -> None:
        """Record that `page` is dealt with (written out), so that a resumed crawl does
        not deliver it again (with a durable state) and a shared crawl may complete its
        lease. `outputs` (output name -> byte offset just after this page's output) are
        stored with it, in the same transaction.

        Without it, a page counts as dealt with when the consumer asks for the next one."""
        if self._last_handed is page:
            self._last_handed = None
        self.backend.consumer_done(page, outputs)

    def stop(self, *, graceful: bool = True) -> None:
        """Schedule nothing new. Graceful: in-flight requests finish and their pages are
        delivered, then iteration ends. Not graceful: in-flight requests are cancelled now."""
        if self._stop_reason is None:
            self._stop_reason = "stop" if graceful else "stop_now"
        self.backend.stop(graceful=graceful)
        if self._source is not None:
            self._source.cancel()
        if not graceful and self._workers is not None:
            self._workers.cancel_scope.cancel()

    def add(self, url: str, *, depth: int = 0, priority: int = 0, seed: bool = False) -> bool:
        """Queue a URL under the same dedup, scope and filter rules as a discovered link.

        `priority > 0` puts it at the front of its host's queue. `seed=True` also widens
        the scope to its host (or domain), as a seed given at start would. Returns whether
        it was queued (False if seen before, out of scope, filtered, or the crawl stops).
        With a durable state or a shared crawl the frontier has the last word on "seen
        before": True then means it was passed on to be queued if new."""
        return self.backend.add(url, depth, front=priority > 0, seed=seed)

    def set_host_limits(
        self,
        host: str,
        *,
        rate: float | None = None,
        per_host: int | None = None,
        burst: int | None = None,
    ) -> None:
        """Change one host's limits (a host name, or an origin like ``https://h:8443``),
        for the next request, now and for the rest of the crawl (in a shared crawl: for
        every worker)."""
        limits = HostLimits(rate=rate, burst=burst, per_host=per_host)  # validates
        self.backend.set_host_limits(host, limits)

    def set_concurrency(self, concurrency: int) -> None:
        """Change this process's in-flight cap for the next request."""
        _check_number("concurrency", concurrency, minimum=1, integer=True)
        self.global_limiter.total_tokens = concurrency
        # Every global slot needs a worker to hand its request to.
        while self._workers is not None and self._worker_count < concurrency:
            self._start_worker(self._workers)

    def pause(self, host: str | None = None) -> None:
        """Send no new request (to one host, or anywhere); in-flight ones finish."""
        self.backend.set_paused(host, True)

    def resume(self, host: str | None = None) -> None:
        self.backend.set_paused(host, False)

    def statistics(self) -> Statistics:
        now = trio.current_time()
        end = self._ended if self._ended is not None else now
        figures = self.backend.figures()
        counts = self.counts
        elapsed = end - self._started if self._started is not None else 0.0
        return Statistics(
            pages=counts.pages,
            errors=counts.errors,
            bytes=counts.bytes,
            elapsed=figures.elapsed_before + elapsed,
            seen=figures.seen,
            queued=figures.queued,
            in_flight=figures.in_flight,
            disallowed=counts.disallowed,
            redirects=counts.redirects,
            concurrency=int(self.global_limiter.total_tokens),
            paused=figures.paused,
            dropped=figures.dropped,
            errors_by_kind=dict(counts.errors_by_kind),
            hosts=figures.hosts,
            stopped=self._stop_reason,
        )

    # -- running ---------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started = trio.current_time()
        try:
            async with trio.open_nursery() as workers:
                self._workers = workers
                for _ in range(self.config.concurrency):
                    self._start_worker(workers)
                async with self.requests:
                    await self._feed(task_status)
        finally:
            self._ended = trio.current_time()
            self._requests_recv.close()
            self._results_send.close()
            await self.fetcher.aclose()

    async def _feed(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the backend's request source until the frontier is done, `max_time` is up,
        or the crawl stops (which cancels it)."""
        max_time = self.config.max_time
        with trio.CancelScope() as self._source:
            if self._stop_reason is not None:  # stopped before it started
                self._source.cancel()
            async with trio.open_nursery() as source:
                done = trio.Event()
                source.start_soon(self._source_run, done, task_status)
                with trio.move_on_after(math.inf if max_time is None else max_time):
                    await done.wait()
                if not done.is_set() and self._stop_reason is None:
                    self._stop_reason = "max_time"
                    self.stop()
                source.cancel_scope.cancel()

    async def _source_run(self, done: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        try:
            await self.backend.run(task_status=task_status)
        finally:
            done.set()

    def _start_worker(self, workers: trio.Nursery) -> None:
        self._worker_count += 1
        workers.start_soon(self._worker, self._requests_recv.clone())

    # -- workers -----------------------------------------------------------------------

    async def _worker(self, requests: trio.MemoryReceiveChannel[Request]) -> None:
        backend = self.backend
        fetcher = self.fetcher
        async with requests:
            async for request in requests:
                try:
                    try:
                        try:
                            fetched = await fetcher.fetch(request.url, origin=request.origin)
                        finally:
                            backend.fetched(request)
                        await self._settle(request, fetched)
                    except Exception as exc:
                        # A bug met by one URL's input is that URL's error record. Raised
                        # before the page was counted (only the hand-over comes after, and
                        # its failures end the crawl), so it is delivered exactly once.
                        if ends_crawl(exc):
                            raise
                        error = unexpected_error(exc, request.url)
                        await self.deliver(request, None, error)
                finally:
                    self.global_limiter.release_on_behalf_of(request)

    async def _settle(self, request: Request, fetched: Fetched) -> None:
        """Turn one fetch into a page, a retry or a redirect hop, and adjust politeness."""
        if fetched.exchange is not None:
            request.exchanges.append(fetched.exchange)
        verdict = judge(fetched, request.attempt, self.config, resent=request.resent)
        backend = self.backend
        backend.politeness(request, verdict, trio.current_time() - fetched.elapsed)
        action = verdict.action
        if action is Action.RESEND:
            request.resent = True
            await backend.requeue(request, resend=True)  # through the frontier: a rate slot
            return
        if action is Action.RETRY_NOW or action is Action.RETRY_LATER:
            later = action is Action.RETRY_LATER
            delay = retry_delay(request.attempt, self._rng) if later else None
            request.attempt += 1
            # The free resend after a lost keep-alive connection is one per attempt: a
            # race met before an earlier attempt says nothing of this one.
            request.resent = False
            await backend.requeue(request, delay=delay)
            return
        if action is Action.REDIRECT and await self._follow_redirect(request, fetched):
            return
        await self.deliver(request, fetched, verdict.error)

    async def _follow_redirect(self, request: Request, fetched: Fetched) -> bool:
        """Queue the next hop; False when the chain ends here (the page records why)."""
        target, error = redirect_target(
            fetched, request.url, request.chain, request.redirects, self.config
        )
        if target is None:
            request.error = error or request.error
            return False
        request.redirect_target = target
        return await self.backend.redirect(request, target)

    async def deliver(
        self, request: Request, fetched: Fetched | None, error: PageError | None
    ) -> None:
        """Build the page, settle it with the backend (its links, its count), which
        hands it to the consumer."""
        config = self.config
        error = error or request.error
        parsed: ParsedPage | None = None
        if self.parser is not None and fetched is not None:
            content_type = html_to_parse(fetched, error, request.redirect_target, request.sitemap)
            if content_type is not None:
                try:
                    parsed = await self.parser.parse(
                        fetched.body,
                        request.url,
                        content_type,
                        max_links=config.max_links_per_page,
                        max_url_length=config.max_url_length,
                    )
                except ParserCrashed as exc:
                    error = PageError(ErrorKind.OTHER, str(exc))
        page, kind = build_page(
            config,
            first_url=request.first_url,
            url=request.url,
            depth=request.depth,
            fetched=fetched,
            error=error,
            redirect_target=request.redirect_target,
            sitemap=request.sitemap,
            exchanges=request.exchanges,
            parsed=parsed,
        )
        links: Links | None = None
        if kind is LinkKind.PAGE:
            if page.links:
                depth, urls = self.backend.admission.links_to_follow(page)
                if urls:
                    links = Links(depth, urls)
        elif kind is not LinkKind.NONE and page.links:
            index = kind is LinkKind.SITEMAP_INDEX
            links = Links(request.depth + (0 if index else 1), page.links, sitemap=index)
        await self.backend.settle_page(request, page, links)

    async def hand_over(self, page: Page) -> None:
        """Put `page` in the results channel, waiting only while it is full (a slow
        consumer slows the crawl). Not a checkpoint when there is room: the caller's
        next step (a worker's next request, a dispatcher's loop) is one, and a task
        switch per page is measurable."""
        try:
            self._results_send.send_nowait(page)
        except trio.WouldBlock:
            await self._results_send.send(page)


@asynccontextmanager
async def open_crawl(
    config: CrawlConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: StateStore | None = None,
    backend: FrontierBackend | None = None,
) -> AsyncIterator[Crawl]:
    """Run a crawl inside the caller's task tree; leaving the block stops it at once.

    An exception raised by the caller's block propagates out unchanged. With
    `config.state`, the crawl continues the one stored there (`StateError` /
    `StateMismatch` if it cannot); `store` is that state opened already (the crawl
    closes it). `backend` is where the frontier lives (default: memory, or the state).
    """
    crawl = Crawl(config, transport, store=store, backend=backend)
    raised: BaseException | None = None
    try:
        try:
            await crawl.backend.open()
        except BaseException:
            await crawl.fetcher.aclose()
            raise
        async with trio.open_nursery() as nursery:
            if crawl.parser is not None:
                await nursery.start(crawl.parser.run, name="crawl parse processes")
            await nursery.start(crawl.backend.serve, name="crawl frontier")
            await nursery.start(crawl._run, name="crawl")
            try:
                yield crawl
            except BaseException as exc:  # re-raised below, after the crawl's tasks are gone
                raised = exc
            # A page handed over and not marked done (the consumer left before asking
            # for the next) is not done: a resumed or shared crawl delivers it again.
            nursery.cancel_scope.cancel()
    finally:
        await crawl.backend.aclose()
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
