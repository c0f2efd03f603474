"""The engine's rules, the same on every backend (the `mode` fixture: in memory, with a
durable state, shared through Redis by one and by two workers): Retry-After, redirects,
retries, and the crawl's limits. Judged from the server's log and the pages."""

from __future__ import annotations

import re
from collections import Counter

import trio

import crawler
from tests.crawlmodes import Crawl
from tests.web.routes import SiteServer, open_site_server

DEADLINE = 60
EPS = 0.02  # the server shares our event loop: its timestamps include scheduling delay


def _config(server: SiteServer, *seeds: str, **changes: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {
        "seeds": seeds or (server.url(0),),
        "rate": 0,
        "per_host": 4,
        "concurrency": 8,
        "obey_robots": False,
    }
    settings.update(changes)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


async def test_retry_after_holds_the_host_back(mode: Crawl) -> None:
    async with open_site_server(ports=1, pages=20) as server:
        # One request at a time: the 429 is settled before anything else is sent.
        seeds = (server.url(0, "/retry-after?s=1"), server.url(0))
        config = _config(server, *seeds, per_host=1)
        with trio.fail_after(DEADLINE):
            pages, stats = await mode(config)
        log = server.requests_for(0)
        first_429 = next(r for r in log if r.path.startswith("/retry-after"))
        after = [r for r in log if r.start > first_429.start]
        # Nothing reached the host for the second it asked for, then the crawl went on.
        assert after and min(r.start for r in after) - first_429.end >= 1.0 - EPS
        retried = [p for p in pages if "retry-after" in p.url]
        assert len(retried) == 1 and retried[0].status == 200
        assert stats.pages == len(pages) == len(server.reachable_urls()) + 1


async def test_redirects_are_followed_hop_by_hop_and_loops_end(mode: Crawl) -> None:
    async with open_site_server(ports=2, pages=5) as server:
        config = _config(
            server,
            server.url(0, "/redirect-chain/3"),
            server.url(0, "/loop/a"),
            server.url(0, "/redirect-out"),
            include=(re.escape(server.origin(0) + "/"),),
        )
        with trio.fail_after(DEADLINE):
            pages, stats = await mode(config)
        by_url = {p.url: p for p in pages}
        assert len(by_url) == len(pages)  # each URL once
        chain = by_url[server.url(0, "/redirect-chain/3")]
        assert chain.status == 200 and chain.final_url == server.url(0, "/redirect-chain/0")
        loop = by_url[server.url(0, "/loop/a")]
        assert loop.error is not None or loop.status in (301, 302)
        # A redirect to a URL the crawl may not follow ends the chain there, with its target.
        out = by_url[server.url(0, "/redirect-out")]
        assert out.status == 302 and out.links == (server.url(1, "/page/0"),)
        assert not server.requests_for(1)
        assert server.hits("/redirect-chain/1") == 1
        assert stats.redirects >= 3


async def test_retries_then_success(mode: Crawl) -> None:
    async with open_site_server(ports=1, pages=3) as server:
        config = _config(server, server.url(0, "/flaky"), retries=3)
        with trio.fail_after(DEADLINE):
            pages, _ = await mode(config)
        flaky = [p for p in pages if p.url.endswith("/flaky")]
        assert len(flaky) == 1 and flaky[0].status == 200
        assert server.hits("/flaky") == 3


async def test_max_pages_is_exact(mode: Crawl) -> None:
    async with open_site_server(ports=2, pages=60) as server:
        config = _config(server, server.url(0), server.url(1), max_pages=25)
        with trio.fail_after(DEADLINE):
            pages, stats = await mode(config)
        assert len(pages) == stats.pages == 25
        assert len(server.log) == 25
        assert Counter(p.url for p in pages).most_common(1)[0][1] == 1


async def test_max_time_stops_the_crawl(mode: Crawl) -> None:
    async with open_site_server(ports=1, pages=200) as server:
        config = _config(server, rate=10.0, per_host=1, max_time=1.0)
        with trio.fail_after(DEADLINE):
            started = trio.current_time()
            pages, stats = await mode(config)
            took = trio.current_time() - started
        assert stats.stopped == "max_time"
        assert took < 5.0
        assert 5 <= len(pages) <= 20  # about ten a second for a second
        assert len(server.log) == len(pages)  # what was sent was delivered
