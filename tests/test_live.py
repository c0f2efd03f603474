"""Live control of a running crawl, the same on every backend: in memory, with a durable
state, and shared through Redis by one and by two workers (the `live` fixture). What a
host receives is read from the server's log; real sockets, a real clock."""

from __future__ import annotations

import itertools

import trio

import crawler
from tests.crawlmodes import Live
from tests.web.routes import SiteServer, open_site_server

DEADLINE = 60
SETTLE = 0.3
"""Seconds for a change to reach every worker (a shared crawl sends it through Redis)
and for requests already handed out to start."""


def _config(server: SiteServer, **changes: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {
        "seeds": tuple(server.url(i) for i in range(len(server.ports))),
        "rate": 20.0,
        "per_host": 2,
        "concurrency": 8,
        "obey_robots": False,
    }
    settings.update(changes)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


def _all_pages(live: Live, pages: list[crawler.Page]) -> list[str]:
    return sorted(page.final_url for page in [*pages, *live.others])


async def test_a_paused_host_gets_nothing_until_resumed(live: Live) -> None:
    async with open_site_server(ports=2, pages=60) as server:
        paused_origin = server.origin(1)
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server)) as crawl:
                async for page in crawl:
                    pages.append(page)
                    if len(pages) == 5:
                        crawl.pause(paused_origin)
                        paused_at = trio.current_time()
                        await trio.sleep(1.5)
                        crawl.resume(paused_origin)
                        resumed_at = trio.current_time()
        during = [r for r in server.requests_for(1) if paused_at + SETTLE < r.start < resumed_at]
        assert during == []
        # The other host went on meanwhile, and the paused one was crawled to the end.
        assert [r for r in server.requests_for(0) if paused_at + SETTLE < r.start < resumed_at]
        assert [r for r in server.requests_for(1) if r.start > resumed_at]
        urls = _all_pages(live, pages)
        assert urls == sorted(server.reachable_urls())


async def test_a_paused_crawl_sends_nothing_until_resumed(live: Live) -> None:
    async with open_site_server(ports=2, pages=40) as server:
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server)) as crawl:
                async for page in crawl:
                    pages.append(page)
                    if len(pages) == 5:
                        crawl.pause()
                        paused_at = trio.current_time()
                        await trio.sleep(1.0)
                        assert crawl.statistics().paused
                        crawl.resume()
                        resumed_at = trio.current_time()
        during = [r for r in server.log if paused_at + SETTLE < r.start < resumed_at]
        assert during == []
        assert _all_pages(live, pages) == sorted(server.reachable_urls())


async def test_new_host_limits_pace_the_next_requests(live: Live) -> None:
    async with open_site_server(ports=1, pages=60) as server:
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server, rate=50.0, per_host=4)) as crawl:
                async for page in crawl:
                    pages.append(page)
                    if len(pages) == 5:
                        crawl.set_host_limits("127.0.0.1", rate=5.0)
                        changed_at = trio.current_time()
                    if len(pages) == 12:
                        crawl.stop()
        after = [r.start for r in server.requests_for(0) if r.start > changed_at + SETTLE]
        assert len(after) >= 2
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert min(gaps) >= 1 / 5.0 - 0.02


async def test_added_urls_are_crawled_once(live: Live) -> None:
    async with open_site_server(ports=1, pages=20) as server:
        extra = server.url(0, "/not-linked")  # linked from no page of the site (a 404)
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server)) as crawl:
                async for page in crawl:
                    pages.append(page)
                    if len(pages) == 3:
                        assert crawl.add(extra, priority=1)
                        assert not crawl.add("ftp://elsewhere/")
        urls = _all_pages(live, pages)
        assert urls.count(extra) == 1
        assert server.hits("/not-linked") == 1


async def test_statistics_add_up_per_host(live: Live) -> None:
    async with open_site_server(ports=2, pages=30) as server:
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server, rate=0)) as crawl:
                async for page in crawl:
                    pages.append(page)
                stats = crawl.statistics()
        everything = [*pages, *live.others]
        pages_total = stats.pages + sum(s.pages for s in live.other_stats)
        assert pages_total == len(everything) == len(server.reachable_urls())
        assert stats.queued == 0 and stats.in_flight == 0
        # Per host: every page counted once, under its origin, by every backend (a
        # shared crawl's hosts are the whole crawl's).
        assert set(stats.hosts) == {server.origin(0), server.origin(1)}
        for i in (0, 1):
            host = stats.hosts[server.origin(i)]
            assert host.done + host.errors == sum(
                1 for p in everything if p.url.startswith(server.origin(i) + "/")
            )
            assert host.queued == 0 and host.in_flight == 0 and host.per_host == 2


async def test_a_graceful_stop_delivers_what_is_under_way(live: Live) -> None:
    async with open_site_server(ports=1, pages=60, latency=0.1) as server:
        pages: list[crawler.Page] = []
        with trio.fail_after(DEADLINE):
            async with live.open(_config(server, rate=0, per_host=4)) as crawl:
                async for page in crawl:
                    pages.append(page)
                    if len(pages) == 3:
                        crawl.stop()
                stats = crawl.statistics()
        assert stats.stopped == "stop"
        assert len({page.final_url for page in pages}) == len(pages) >= 3
        # Graceful: every request sent was answered and its page delivered (by this
        # worker, or by the one that went on without it).
        assert len(server.log) == len(pages) + len(live.others)
        assert len(pages) < len(server.reachable_urls()) or live.mode == "redis1"


async def test_leaving_the_block_stops_all_traffic_at_once(live: Live) -> None:
    async with open_site_server(ports=1, pages=60, latency=0.05) as server:
        config = _config(server, rate=0, per_host=4, timeout=5.0, retries=0)
        with trio.fail_after(DEADLINE):
            slow = server.url(0, "/slow-headers?s=30")  # a request that would take 30 s
            async with live.open(config) as crawl:
                assert crawl.add(slow, priority=1)
                seen = 0
                async for _ in crawl:
                    seen += 1
                    if seen == 5:
                        break
            left_at = trio.current_time()
            await trio.sleep(0.5)
        # Leaving cancelled what was under way (the 30 s request among it) and sent
        # nothing more: the server saw no request start after the block was left.
        assert trio.current_time() - left_at < 1.0
        assert not [r for r in server.log if r.start > left_at and live.mode != "redis2"]
        assert server.in_flight == 0 or live.mode == "redis2"
