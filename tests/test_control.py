"""Steering a running crawl: add URLs, change limits, pause, stop, hooks, statistics."""

from __future__ import annotations

import itertools

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

import crawler
from tests.web.core import Exchange
from tests.web.routes import MockSite, chain_site, html, merge, open_site_server

A = "http://a.test"
B = "http://b.test"


def config(**kwargs: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {"seeds": (f"{A}/",), "rate": 0, "obey_robots": False}
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_rate_change_takes_effect_for_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 40, fanout=39))
    with trio.fail_after(600):
        async with crawler.open_crawl(config(rate=1.0), transport=site.transport()) as crawl:
            n = 0
            async for _ in crawl:
                n += 1
                if n == 5:
                    changed_at = trio.current_time()
                    crawl.set_host_limits("a.test", rate=4.0)
                if n == 20:
                    slowed_at = trio.current_time()
                    crawl.set_host_limits(A, rate=0.5)
    starts = site.starts()
    before = [s for s in starts if s < changed_at]
    fast = [s for s in starts if changed_at < s < slowed_at]
    slow = [s for s in starts if s > slowed_at]
    assert min(gaps(before)) == pytest.approx(1.0)
    assert min(gaps(fast)) == pytest.approx(0.25) and max(gaps(fast)) == pytest.approx(0.25)
    assert fast[0] - changed_at <= 0.25 + 1e-9  # right after the change
    assert min(gaps(slow)) == pytest.approx(2.0)


async def test_rate_change_seen_by_a_real_server() -> None:
    async with open_site_server(ports=1, pages=200) as server:
        cfg = crawler.CrawlConfig(seeds=(server.url(0),), rate=10.0, per_host=2)
        with trio.fail_after(600):
            async with crawler.open_crawl(cfg) as crawl:
                n = 0
                async for _ in crawl:
                    n += 1
                    if n == 10:
                        changed_at = trio.current_time()
                        crawl.set_host_limits("127.0.0.1", rate=50.0)
                    if n == 60:
                        crawl.stop()
        log = server.requests_for(0)
        before = [r.start for r in log if r.start < changed_at]
        after = [r.start for r in log if r.start > changed_at + 0.05]
        assert min(gaps(before)) >= 0.1 - 0.01
        assert min(gaps(after)) >= 0.02 - 0.01
        assert len(after) / (after[-1] - after[0]) > 30  # well above the old 10/s


async def test_paused_host_receives_nothing_until_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(merge(chain_site(A, 30), chain_site(B, 30)), latency=0.1)
    cfg = config(seeds=(f"{A}/", f"{B}/"), rate=5.0)
    with trio.fail_after(600):
        async with (
            crawler.open_crawl(cfg, transport=site.transport()) as crawl,
            trio.open_nursery() as nursery,
        ):

            async def steer() -> None:
                await trio.sleep(1.0)
                crawl.pause("b.test")
                await trio.sleep(0.01)
                paused_at = trio.current_time()
                assert crawl.statistics().hosts[B].paused
                await trio.sleep(5.0)
                assert not [h for h in site.log if h.url.startswith(B) and h.start > paused_at]
                assert [h for h in site.log if h.url.startswith(A) and h.start > paused_at]
                crawl.resume("b.test")
                resumed_at = trio.current_time()
                await trio.sleep(1.0)
                assert [h for h in site.log if h.url.startswith(B) and h.start >= resumed_at]

            nursery.start_soon(steer)
            pages = [p async for p in crawl]
    assert len(pages) == 62


async def test_pause_whole_crawl(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(merge(chain_site(A, 20), chain_site(B, 20)))
    cfg = config(seeds=(f"{A}/", f"{B}/"), rate=2.0)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            got = 0
            async for _ in crawl:
                got += 1
                if got == 6:
                    crawl.pause()
                    count = len(site.log)
                    await trio.sleep(30)
                    assert len(site.log) <= count + 2  # only what was already handed to workers
                    assert crawl.statistics().paused
                    crawl.resume()
    assert got == 42


async def test_urls_added_mid_crawl_are_fetched_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 10))
    site.pages[f"{A}/extra"] = html("extra", ["/p/0", "/extra2"])
    site.pages[f"{A}/extra2"] = html("extra2", [])
    site.pages[f"{B}/other"] = html("other", [])
    with trio.fail_after(600):
        async with crawler.open_crawl(config(rate=2.0), transport=site.transport()) as crawl:
            async for page in crawl:
                if page.url == f"{A}/p/2":
                    assert crawl.add(f"{A}/extra", priority=1)
                    assert not crawl.add(f"{A}/extra")  # dedup
                    assert not crawl.add(f"{A}/p/0")  # seen already
                    assert not crawl.add(f"{B}/other")  # out of scope
                    assert not crawl.add("mailto:x@a.test")
                    assert crawl.add(f"{B}/other", seed=True)  # a new seed widens the scope
    urls = site.urls()
    for url in (f"{A}/extra", f"{A}/extra2", f"{B}/other"):
        assert urls.count(url) == 1


async def test_stay_open_crawl_fed_by_add(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(merge(chain_site(A, 5), chain_site(B, 5)))
    cfg = crawler.CrawlConfig(seeds=(), stay_open=True, rate=0, obey_robots=False, scope="any")
    urls: list[str] = []
    with trio.fail_after(600):
        async with (
            crawler.open_crawl(cfg, transport=site.transport()) as crawl,
            trio.open_nursery() as nursery,
        ):

            async def feed() -> None:
                crawl.add(f"{A}/")
                await trio.sleep(10)  # idle: the crawl must not end by itself
                crawl.add(f"{B}/")
                await trio.sleep(10)
                crawl.stop()

            nursery.start_soon(feed)
            async for page in crawl:
                urls.append(page.url)
    assert len(urls) == 12 and trio.current_time() == pytest.approx(20.0)


async def test_graceful_stop_delivers_every_in_flight_page(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 100, fanout=10), latency=2.0)
    cfg = config(per_host=6, concurrency=6)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            got: list[str] = []
            async for page in crawl:
                got.append(page.url)
                if len(got) == 7:
                    crawl.stop()
                    stopped_at = trio.current_time()
    started_before_stop = {h.url for h in site.log if h.start <= stopped_at}
    assert started_before_stop == set(got)  # every request in flight became a page
    assert not [h for h in site.log if h.start > stopped_at]


async def test_global_concurrency_changes(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(merge(chain_site(A, 60, fanout=20), chain_site(B, 60, fanout=20)), latency=1)
    peak: list[int] = []

    async def watch(ex: Exchange) -> None:
        peak.append(site.in_flight)

    site.on_request = watch
    cfg = config(seeds=(f"{A}/", f"{B}/"), per_host=8, concurrency=2)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            n = 0
            async for _ in crawl:
                n += 1
                if n == 10:
                    assert max(peak) == 2
                    mark = len(peak)
                    crawl.set_concurrency(12)
                if n == 60:
                    assert max(peak[mark:]) == 12
                    mark = len(peak)
                    crawl.set_concurrency(3)
                    later = len(peak) + 20
                if n == 100:
                    assert max(peak[later:]) <= 3
            assert crawl.statistics().concurrency == 3


async def test_statistics_add_up(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 60, fanout=4), latency=0.3)
    site.pages[f"{A}/robots.txt"] = httpx.Response(200, text="User-agent: *\nDisallow: /p/5$\n")
    site.pages[f"{A}/p/3"] = httpx.Response(301, headers={"Location": "/moved"})
    site.pages[f"{A}/moved"] = html("moved", ["/p/50"])
    site.pages[f"{A}/p/7"] = httpx.Response(500)
    cfg = config(obey_robots=True, rate=10.0, per_host=3, retries=1)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            async for _ in crawl:
                s = crawl.statistics()
                assert (
                    s.done + s.errors + s.queued + s.in_flight + s.disallowed + s.redirects
                    == s.seen
                )
                host = s.hosts[A]
                assert host.done + host.errors == s.pages
                assert host.robots == "parsed" and host.rate == pytest.approx(10.0)
            final = crawl.statistics()
    assert final.queued == 0 and final.in_flight == 0
    assert final.redirects == 1 and final.disallowed == 1 and final.errors == 1
    assert final.errors_by_kind == {"http": 1}


async def test_hooks(autojump_clock: trio.testing.MockClock) -> None:
    seen_headers: list[str | None] = []

    async def record(ex: Exchange) -> None:
        seen_headers.append(ex.headers.get("x-token"))

    site = MockSite(chain_site(A, 20), on_request=record)

    def prepare(request: httpx.Request) -> httpx.Request:
        request.headers["X-Token"] = "secret" if request.url.host == "a.test" else "none"
        return request

    def should_follow(url: str, parent: crawler.Page) -> bool:
        assert parent.status == 200
        return not url.endswith(("/p/4", "/p/5", "/p/6"))

    pages: list[crawler.Page] = []

    async def on_page(page: crawler.Page) -> None:
        await trio.lowlevel.checkpoint()
        pages.append(page)

    cfg = config(prepare=prepare, should_follow=should_follow, on_page=on_page)
    with trio.fail_after(600):
        stats = await crawler.crawl(cfg, transport=site.transport())
    assert stats.pages == len(pages) == 5  # / p/0 p/1 p/2 p/3; p/4-6 cut the chain
    assert set(seen_headers) == {"secret"}


async def test_a_hook_that_raises_fails_loudly(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 20))

    def should_follow(url: str, parent: crawler.Page) -> bool:
        raise LookupError("hook bug")

    with pytest.RaisesGroup(
        pytest.RaisesExc(LookupError, match="hook bug"), flatten_subgroups=True
    ):
        with trio.fail_after(600):
            await crawler.crawl(config(should_follow=should_follow), transport=site.transport())

    def prepare(request: httpx.Request) -> httpx.Request:
        raise KeyError("prepare bug")

    with pytest.RaisesGroup(pytest.RaisesExc(KeyError), flatten_subgroups=True):
        with trio.fail_after(600):
            await crawler.crawl(config(prepare=prepare), transport=site.transport())
