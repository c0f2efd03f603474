"""Each bound has a default, holds, and shows in the statistics when it bites."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

import crawler
from crawler._urls import looks_like_trap
from tests.web.routes import MockSite, chain_site, html

A = "http://a.test"


def config(**kwargs: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {"seeds": (f"{A}/",), "rate": 0, "obey_robots": False}
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "trap"),
    [
        ("http://a/", False),
        ("http://a/x/y/z", False),
        ("http://a/cal/2026/11/29", False),
        ("http://a/x/x/x", False),
        ("http://a/x/x/x/x", True),  # one segment four times
        ("http://a/a/b/a/b/a/b/a/b", True),
        ("http://a/" + "/".join(f"d{i}" for i in range(33)), True),  # 33 deep
        ("http://a/" + "/".join(f"d{i}" for i in range(32)), False),
        ("http://a/p?next=/x/x/x/x/x", False),  # the query is not the path
    ],
)
def test_trap_shapes(url: str, trap: bool) -> None:
    assert looks_like_trap(url, 32, 3) is trap


async def test_endless_link_trap_is_cut(autojump_clock: trio.testing.MockClock) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.1)  # virtual time passes: a crawl that runs away meets the deadline
        path = request.url.path.rstrip("/")
        depth = path.count("/")
        return httpx.Response(200, html=html(path, [f"{path}/x/", f"{path}/{depth}/"]))

    cfg = config(seeds=(f"{A}/trap",), max_path_depth=6, max_path_repeats=2)
    with trio.fail_after(60):
        async with crawler.open_crawl(cfg, transport=httpx.MockTransport(handle)) as crawl:
            pages = [page async for page in crawl]
            stats = crawl.statistics()
    assert stats.dropped["trap"] > 0
    assert all(not looks_like_trap(p.url, 6, 2) for p in pages)
    assert len(pages) < 100


async def test_queue_bounds_drop_and_count(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite({f"{A}/": html("home", [f"/p/{i}" for i in range(500)])}, latency=0.01)
    cfg = config(max_host_queue=100)
    with trio.fail_after(60):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            pages = [page async for page in crawl]
            stats = crawl.statistics()
    assert len(pages) == 101 and stats.dropped["max_host_queue"] == 400

    site = MockSite({f"{A}/": html("home", [f"/p/{i}" for i in range(500)])}, latency=0.01)
    with trio.fail_after(60):
        async with crawler.open_crawl(config(max_queued=50), transport=site.transport()) as crawl:
            pages = [page async for page in crawl]
            stats = crawl.statistics()
    assert stats.dropped["max_queued"] > 0 and len(pages) <= 52


async def test_max_time_stops_gracefully(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 500), latency=0.5)
    with trio.fail_after(60):
        async with crawler.open_crawl(
            config(rate=2.0, max_time=10.0), transport=site.transport()
        ) as crawl:
            pages = [page async for page in crawl]
            stats = crawl.statistics()
    assert stats.stopped == "max_time"
    assert trio.current_time() == pytest.approx(10.5, abs=0.6)  # in-flight pages finished
    assert not [h for h in site.log if h.start > 10.0]
    assert len(pages) == len(site.log)


async def test_header_limits_are_protocol_errors() -> None:
    from tests.web.routes import open_site_server

    async with open_site_server(ports=1, pages=2) as server:
        cfg = crawler.CrawlConfig(
            seeds=(server.url(0),), rate=0, max_headers=1, retries=0, obey_robots=False
        )
        with trio.fail_after(30):
            stats = await crawler.crawl(cfg)
    assert stats.errors_by_kind.get("protocol", 0) >= 1


def test_command_line_flags_for_bounds() -> None:
    from crawler._cli import build_config

    config = build_config(["--block-private", "--max-time", "5", "http://a.test/"])
    assert config.block_private is True and config.max_time == 5.0
    assert build_config(["http://a.test/"]).block_private is False
