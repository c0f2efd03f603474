"""Joining a crawl shared by many workers through Redis: `open_shared_crawl` runs the one
engine (`Crawl`) with a `RedisBackend` (see :mod:`crawler._shared` for how the frontier,
leases and politeness live in Redis); `run_worker` is one worker writing its own files.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import trio

from ._config import CrawlConfig
from ._engine import Crawl, open_crawl
from ._page import Statistics
from ._redis import (
    DEFAULT_LEASE,
    RECONNECT_FOR,
    CrawlFinished,
    RedisClient,
    RedisFrontier,
    SharedCrawlError,
    SharedStatus,
    check_crawl_id,
    check_worker_id,
    open_redis,
)
from ._shared import RedisBackend, Results, shared_settings

__all__ = [
    "SharedCrawl",
    "default_worker_id",
    "open_shared_crawl",
    "run_worker",
    "shared_settings",
    "shared_status",
    "worker_path",
]

SharedCrawl = Crawl
"""A shared crawl is a `Crawl` whose frontier is a `RedisBackend` (``crawl.backend``)."""


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
) -> AsyncIterator[Crawl]:
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
        backend = RedisBackend(config, frontier, results=results, stay_open=stay_open)
        with _one_shared_error():
            async with open_crawl(config, transport=transport, backend=backend) as crawl:
                yield crawl


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
        backend = crawl.backend
        assert isinstance(backend, RedisBackend)
        if backend.finished_before is not None:
            raise CrawlFinished(crawl_id, backend.finished_before)
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


async def _stop_on_signals(crawl: Crawl, received: list[int] | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        graceful = True
        async for signum in signals:
            if received is not None:
                received.append(signum)
            crawl.stop(graceful=graceful)
            graceful = False
