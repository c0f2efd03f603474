"""One crawl, run on each backend: in memory, with a durable state, by Redis workers.

``crawl = crawler_for(mode, tmp_path, redis_url)`` gives ``await crawl(config)`` ->
``(pages, statistics)``: every page delivered (duplicates kept, so tests can see them)
and one Statistics for the whole crawl (for shared crawls, the workers' figures summed).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import trio

import crawler
from crawler._distributed import open_shared_crawl
from crawler._redis import RedisFrontier, open_redis
from tests.redisserver import unique_crawl_id

Crawl = Callable[[crawler.CrawlConfig], Awaitable[tuple[list[crawler.Page], crawler.Statistics]]]

MODES: Final = ("memory", "state", "redis1", "redis2")
REDIS_MODES: Final = ("redis1", "redis2")


def _summed(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


def combine(stats: Sequence[crawler.Statistics]) -> crawler.Statistics:
    """The crawl-wide figures of several workers' statistics (counters summed)."""
    first = stats[0]
    return replace(
        first,
        pages=sum(s.pages for s in stats),
        errors=sum(s.errors for s in stats),
        bytes=sum(s.bytes for s in stats),
        disallowed=sum(s.disallowed for s in stats),
        redirects=sum(s.redirects for s in stats),
        dropped=_summed([s.dropped for s in stats]),
        errors_by_kind=_summed([s.errors_by_kind for s in stats]),
    )


async def crawl_in_memory(
    config: crawler.CrawlConfig,
) -> tuple[list[crawler.Page], crawler.Statistics]:
    async with crawler.open_crawl(config) as crawl:
        pages = [page async for page in crawl]
        return pages, crawl.statistics()


async def crawl_shared(
    config: crawler.CrawlConfig, redis_url: str, workers: int
) -> tuple[list[crawler.Page], crawler.Statistics]:
    """`workers` workers in this process, each given the same config, on a fresh crawl id."""
    crawl_id = unique_crawl_id("modes")
    pages: list[crawler.Page] = []
    stats: list[crawler.Statistics] = []

    async def worker(name: str) -> None:
        async with open_shared_crawl(
            config, redis_url=redis_url, crawl_id=crawl_id, worker_id=name
        ) as crawl:
            async for page in crawl:
                pages.append(page)
            stats.append(crawl.statistics())

    try:
        async with trio.open_nursery() as nursery:
            for i in range(workers):
                nursery.start_soon(worker, f"w{i}")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            async with open_redis(redis_url) as client:
                await RedisFrontier(client, crawl_id, worker_id="cleanup").delete()
    return pages, combine(stats)


def crawler_for(mode: str, tmp_path: Path, redis_url: str | None = None) -> Crawl:
    """The crawl function of `mode` (one of MODES); Redis modes need `redis_url`."""
    if mode == "memory":
        return crawl_in_memory
    if mode == "state":
        fresh = itertools.count()

        async def crawl_with_state(
            config: crawler.CrawlConfig,
        ) -> tuple[list[crawler.Page], crawler.Statistics]:
            # A fresh directory per call: a second call must not resume the first.
            state = tmp_path / f"state-{next(fresh)}"
            return await crawl_in_memory(replace(config, state=state))

        return crawl_with_state
    if mode in REDIS_MODES:
        if redis_url is None:
            raise ValueError(f"mode {mode} needs a redis_url")
        url, workers = redis_url, int(mode.removeprefix("redis"))

        async def crawl_with_redis(
            config: crawler.CrawlConfig,
        ) -> tuple[list[crawler.Page], crawler.Statistics]:
            return await crawl_shared(config, url, workers)

        return crawl_with_redis
    raise ValueError(f"unknown mode {mode!r}")


@dataclass
class Live:
    """A crawl to steer while it runs, on one backend: ``async with live.open(config) as
    crawl`` gives the crawl the test drives (live control, statistics, stop). With two
    Redis workers a second one crawls alongside it; its pages land in `others`."""

    mode: str
    tmp_path: Path
    redis_url: str | None = None
    others: list[crawler.Page] = field(default_factory=list)
    other_stats: list[crawler.Statistics] = field(default_factory=list)

    def open(self, config: crawler.CrawlConfig) -> AbstractAsyncContextManager[crawler.Crawl]:
        if self.mode == "memory":
            return crawler.open_crawl(config)
        if self.mode == "state":
            return crawler.open_crawl(replace(config, state=self.tmp_path / "state"))
        return self._shared(config)

    @asynccontextmanager
    async def _shared(self, config: crawler.CrawlConfig) -> AsyncIterator[crawler.Crawl]:
        assert self.redis_url is not None
        url = self.redis_url
        crawl_id = unique_crawl_id("live")

        async def other() -> None:
            async with open_shared_crawl(
                config, redis_url=url, crawl_id=crawl_id, worker_id="other"
            ) as crawl:
                async for page in crawl:
                    self.others.append(page)
                self.other_stats.append(crawl.statistics())

        try:
            async with (
                trio.open_nursery() as nursery,
                open_shared_crawl(
                    config, redis_url=url, crawl_id=crawl_id, worker_id="steered"
                ) as crawl,
            ):
                if self.mode == "redis2":
                    nursery.start_soon(other)
                yield crawl
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                async with open_redis(url) as client:
                    await RedisFrontier(client, crawl_id, worker_id="cleanup").delete()
