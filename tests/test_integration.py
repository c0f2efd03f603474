"""Real sockets, a real loopback server: politeness measured from the server's log."""

from __future__ import annotations

import httpx
import trio

import crawler
from tests.crawlmodes import Crawl
from tests.web.routes import open_site_server

EPS = 0.01  # the server shares our event loop: its timestamps include scheduling delay


async def test_crawls_a_loopback_site_politely(mode: Crawl) -> None:
    async with open_site_server(ports=2, pages=150, latency=0.02) as server:
        config = crawler.CrawlConfig(
            seeds=(server.url(0), server.url(1)),
            rate=40.0,
            burst=2,
            per_host=2,
            concurrency=16,
            obey_robots=True,
        )
        with trio.fail_after(60):
            pages, stats = await mode(config)
        assert not [page for page in pages if page.error is not None]
        urls = [page.final_url for page in pages]

        assert len(urls) == len(set(urls))
        assert set(urls) == server.reachable_urls()
        assert stats.pages == len(urls) > 300
        for port in server.ports:
            records = server.requests_for(port)
            assert records[0].path == "/robots.txt"
            assert sum(r.path == "/robots.txt" for r in records) == 1
            assert server.max_concurrency(port) <= 2
            # GCRA with burst b: at most b + rate*W starts in any window W.
            for window in (0.1, 0.25, 1.0):
                assert server.max_in_window(port, window - EPS) <= 2 + 40.0 * window
            span = records[-1].start - records[0].start
            assert len(records) / span <= 40.0 * 1.05


async def test_server_sees_exact_spacing_at_burst_one(mode: Crawl) -> None:
    async with open_site_server(ports=1, pages=40) as server:
        config = crawler.CrawlConfig(seeds=(server.url(0),), rate=25.0, per_host=4)
        with trio.fail_after(60):
            await mode(config)
        gaps = server.start_gaps(0)
        assert len(gaps) >= 40
        assert min(gaps) >= 1 / 25.0 - EPS


async def test_default_transport_can_be_swapped() -> None:
    async with open_site_server(ports=1, pages=20) as server:
        config = crawler.CrawlConfig(seeds=(server.url(0),), rate=0, per_host=4)
        async with httpx.AsyncHTTPTransport() as transport:
            with trio.fail_after(60):
                stats = await crawler.crawl(config, transport=transport)
        assert stats.pages == len(server.reachable_urls()) and stats.errors == 0


async def test_leaving_early_closes_connections() -> None:
    async with open_site_server(ports=1, pages=300, latency=0.05) as server:
        config = crawler.CrawlConfig(seeds=(server.url(0),), rate=0, per_host=4)
        with trio.fail_after(60):
            async with crawler.open_crawl(config) as crawl:
                async for _ in crawl:
                    break
        count = len(server.log)
        with trio.fail_after(2):
            await server.wait_quiet()
        await trio.sleep(0.2)
        assert len(server.log) == count
        assert server.in_flight == 0
