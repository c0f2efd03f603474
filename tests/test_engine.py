"""The engine under a fake network (httpx.MockTransport) and a fake clock (autojump_clock)."""

from __future__ import annotations

import itertools
import math

import httpx
import pytest
import trio
import trio.testing

import crawler
from tests.web.core import Exchange
from tests.web.routes import MockSite, chain_site, html, merge

A = "http://a.test"
B = "http://b.test"


def config(**kwargs: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {
        "seeds": (f"{A}/",),
        "rate": 0,
        "obey_robots": False,
        "per_host": 2,
        "concurrency": 8,
    }
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


async def collect(
    cfg: crawler.CrawlConfig, site: MockSite
) -> tuple[list[crawler.Page], crawler.Statistics]:
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            pages = [page async for page in crawl]
            return pages, crawl.statistics()


async def test_crawls_every_reachable_page_once(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 50))
    pages, stats = await collect(config(), site)
    urls = [p.final_url for p in pages]
    assert sorted(urls) == sorted({f"{A}/", *(f"{A}/p/{i}" for i in range(50))})
    assert len(site.log) == 51  # each fetched once despite 3 inbound links per page
    assert stats.pages == 51 and stats.errors == 0 and stats.queued == 0 and stats.in_flight == 0
    assert stats.hosts[A].done == 51
    assert stats.bytes == sum(len(p.body) for p in pages)
    page0 = next(p for p in pages if p.url == f"{A}/p/0")
    assert page0.title == "page 0"
    assert page0.links == (f"{A}/p/1", f"{A}/p/2", f"{A}/p/3")
    assert page0.depth == 1 and page0.status == 200 and page0.error is None
    assert page0.content_type is not None and page0.content_type.startswith("text/html")


async def test_dedup_normalises_urls(autojump_clock: trio.testing.MockClock) -> None:
    links = ["/x", "/x#frag", "/./x", "/y/../x", "HTTP://A.TEST:80/x", "x", "/x?"]
    site = MockSite({f"{A}/": html("home", links), f"{A}/x": html("x", [])})
    pages, _ = await collect(config(), site)
    assert site.urls().count(f"{A}/x") == 1
    assert {p.url for p in pages} == {f"{A}/", f"{A}/x"}


async def test_scope_host_domain_any(autojump_clock: trio.testing.MockClock) -> None:
    links = [
        "http://a.test/in",
        "http://sub.a.test/sub",
        "http://other.test/out",
        "mailto:x@a.test",
    ]
    pages: dict[str, str | httpx.Response] = {
        f"{A}/": html("home", links),
        "http://a.test/in": html("in", []),
        "http://sub.a.test/sub": html("sub", []),
        "http://other.test/out": html("out", []),
    }
    for scope, expected in [
        ("host", {"http://a.test/", "http://a.test/in"}),
        ("domain", {"http://a.test/", "http://a.test/in", "http://sub.a.test/sub"}),
        (
            "any",
            {
                "http://a.test/",
                "http://a.test/in",
                "http://sub.a.test/sub",
                "http://other.test/out",
            },
        ),
    ]:
        site = MockSite(dict(pages))
        got, stats = await collect(config(scope=scope), site)
        assert {p.url for p in got} == expected, scope
        assert set(site.urls()) == expected
        if scope == "host":
            assert stats.dropped["scope"] == 2


async def test_include_exclude_depth_and_max_pages(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 30, fanout=1))  # / -> p0 -> p1 -> ... a chain
    pages, _ = await collect(config(max_depth=3), site)
    assert sorted(p.depth for p in pages) == [0, 1, 2, 3]

    site = MockSite(chain_site(A, 30, fanout=2))
    pages, stats = await collect(config(max_pages=7), site)
    assert len(pages) == 7 and len(site.log) == 7
    assert stats.dropped["max_pages"] >= 1

    site = MockSite(chain_site(A, 10, fanout=1))
    pages, _ = await collect(config(exclude=[r"/p/[5-9]$"]), site)
    assert {p.url for p in pages} == {f"{A}/", *(f"{A}/p/{i}" for i in range(5))}

    site = MockSite(chain_site(A, 10, fanout=1))
    pages, _ = await collect(config(include=[r"/p/[0-3]$", r"/$"]), site)
    assert {p.url for p in pages} == {f"{A}/", *(f"{A}/p/{i}" for i in range(4))}


async def test_rate_and_burst_exact_under_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 20, fanout=5))
    await collect(config(rate=2.0, per_host=4), site)
    starts = site.starts()
    assert len(starts) == 21
    # First request at once, then exactly 0.5 s apart: the server never sees two closer.
    assert starts[0] == pytest.approx(0.0, abs=1e-9)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) == pytest.approx(0.5, abs=1e-9)
    assert starts[-1] == pytest.approx(10.0, abs=1e-6)

    site = MockSite(chain_site(A, 20, fanout=19))
    site.latency = 0.0
    await collect(config(rate=1.0, burst=3, per_host=8), site)
    starts = site.starts()
    for i, start in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s < start + 1.0 - 1e-9)
        assert in_window <= 3 + 1.0  # burst + rate * W for W = 1 s


async def test_per_host_concurrency_and_global_cap(autojump_clock: trio.testing.MockClock) -> None:
    for per_host, concurrency, host_peak, total_peak in [(3, 8, 3, 6), (3, 4, 2, 4)]:
        site = MockSite(
            merge(chain_site(A, 40, fanout=10), chain_site(B, 40, fanout=10)), latency=1.0
        )
        cfg = config(seeds=(f"{A}/", f"{B}/"), per_host=per_host, concurrency=concurrency)
        peak = 0

        async def watch(ex: Exchange, site: MockSite = site) -> None:
            nonlocal peak
            peak = max(peak, site.in_flight)

        site.on_request = watch
        pages, _ = await collect(cfg, site)
        assert len(pages) == 82
        assert site.peak[A] >= host_peak and site.peak[B] >= host_peak
        assert max(site.peak.values()) <= per_host
        assert peak == total_peak


async def test_per_host_overrides(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(merge(chain_site(A, 10, fanout=9), chain_site(B, 10, fanout=9)))
    cfg = config(
        seeds=(f"{A}/", f"{B}/"),
        rate=1.0,
        hosts={"b.test": crawler.HostLimits(rate=4.0)},
    )
    await collect(cfg, site)
    a, b = site.starts(A), site.starts(B)
    assert min(y - x for x, y in itertools.pairwise(a)) == pytest.approx(1.0)
    assert min(y - x for x, y in itertools.pairwise(b)) == pytest.approx(0.25)


async def test_slow_host_never_holds_back_a_ready_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two workers only: if a worker waited for the slow host's rate slot, the fast host
    # would crawl at the slow host's pace.
    slow = chain_site(A, 20, fanout=20)
    fast = chain_site(B, 200, fanout=3)
    site = MockSite(merge(slow, fast), latency=0.01)
    cfg = config(
        seeds=(f"{A}/", f"{B}/"),
        concurrency=2,
        rate=1.0,
        hosts={"b.test": crawler.HostLimits(rate=0)},
    )
    pages, _ = await collect(cfg, site)
    last_fast = max(h.end for h in site.log if h.url.startswith(B))
    last_slow = max(h.end for h in site.log if h.url.startswith(A))
    assert len(pages) == 21 + 201
    assert last_slow >= 20.0
    # 201 pages at 2 in flight with 10 ms latency: about a second, not twenty.
    assert last_fast < 2.0


@pytest.mark.parametrize("buffer", [0, 8])
async def test_backpressure_slow_consumer(
    autojump_clock: trio.testing.MockClock, buffer: int
) -> None:
    site = MockSite(chain_site(A, 200, fanout=5))
    cfg = config(concurrency=4, per_host=4, result_buffer=buffer)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            first = await crawl.__anext__()
            assert first.url == f"{A}/"
            await trio.sleep(100)  # the consumer dawdles: fetching must stall, not pile up
            stalled = len(site.log)
            # delivered + the buffer + one page per worker + one being handed over
            assert stalled <= 1 + buffer + 4 + 1
            count = 1
            async for _ in crawl:
                count += 1
                await trio.sleep(1)
            assert count == 201


async def test_leaving_early_stops_all_traffic(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 500, fanout=5), latency=0.1)
    with trio.fail_after(600):
        async with crawler.open_crawl(
            config(concurrency=8, per_host=8), transport=site.transport()
        ) as crawl:
            async for page in crawl:
                if page.url.endswith("/p/3"):
                    break
            left_at = trio.current_time()
    count = len(site.log)
    assert trio.current_time() - left_at < 0.01
    await trio.sleep(10)
    assert len(site.log) == count  # nothing after the block
    assert count < 100


async def test_cancelling_the_callers_scope_stops_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 1000, fanout=3), latency=0.5)
    received = 0
    with trio.move_on_after(3) as scope:
        async with crawler.open_crawl(config(), transport=site.transport()) as crawl:
            async for _ in crawl:
                received += 1
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(3.0)
    count = len(site.log)
    await trio.sleep(10)
    assert len(site.log) == count
    assert 0 < received < 1000


def all_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_no_task_left_behind(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 100, fanout=3), latency=0.2)
    before = all_tasks()
    with trio.fail_after(600):
        async with crawler.open_crawl(config(), transport=site.transport()) as crawl:
            async for _ in crawl:
                assert all_tasks() > before + 8  # workers and dispatchers are running
                break
    assert all_tasks() == before


async def test_consumer_exception_propagates_unchanged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = MockSite(chain_site(A, 100, fanout=3), latency=0.1)

    class Boom(Exception):
        pass

    error = Boom("consumer failed")
    with pytest.raises(Boom) as info:
        with trio.fail_after(600):
            async with crawler.open_crawl(config(), transport=site.transport()) as crawl:
                async for _ in crawl:
                    raise error
    assert info.value is error


async def test_http_errors_and_non_html_are_records(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(
        {
            f"{A}/": html("home", ["/missing", "/doc.pdf", "/gone"]),
            f"{A}/doc.pdf": httpx.Response(
                200,
                content=b"%PDF-1.4 <a href='/hidden'>",
                headers={"Content-Type": "application/pdf"},
            ),
            f"{A}/gone": httpx.Response(410),
        }
    )
    pages, stats = await collect(config(), site)
    by_url = {p.url: p for p in pages}
    assert by_url[f"{A}/missing"].status == 404
    assert by_url[f"{A}/doc.pdf"].links == () and by_url[f"{A}/doc.pdf"].title is None
    assert by_url[f"{A}/gone"].status == 410
    assert f"{A}/hidden" not in site.urls()
    assert stats.pages == 4


async def test_crawl_returns_statistics(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 10), latency=0.5)
    with trio.fail_after(600):
        stats = await crawler.crawl(config(), transport=site.transport())
    assert stats.pages == 11 and stats.errors == 0
    assert stats.elapsed > 0 and math.isfinite(stats.pages_per_second)
    assert stats.seen == 11


async def test_graceful_and_hard_stop(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 300, fanout=5), latency=1.0)
    with trio.fail_after(600):
        async with crawler.open_crawl(
            config(per_host=4, concurrency=4), transport=site.transport()
        ) as crawl:
            got = []
            async for page in crawl:
                got.append(page)
                if len(got) == 5:
                    in_flight = crawl.statistics().in_flight
                    crawl.stop()
            # Graceful: the in-flight pages still arrive, nothing new starts.
            assert len(got) >= 5 + in_flight - 1
            assert len(site.log) <= len(got) + 1

    site = MockSite(chain_site(A, 300, fanout=5), latency=1.0)
    with trio.fail_after(600):
        async with crawler.open_crawl(
            config(per_host=4, concurrency=4), transport=site.transport()
        ) as crawl:
            n = 0
            async for _ in crawl:
                n += 1
                if n == 5:
                    crawl.stop(graceful=False)
                    stopped_at = trio.current_time()
            assert trio.current_time() - stopped_at < 0.01


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        crawler.CrawlConfig(seeds=("http://a/",), concurrency=0)
    with pytest.raises(ValueError, match="rate"):
        crawler.CrawlConfig(seeds=("http://a/",), rate=float("nan"))
    with pytest.raises(ValueError, match="scope"):
        crawler.CrawlConfig(seeds=("http://a/",), scope="planet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds"):
        crawler.CrawlConfig(seeds=("ftp://a/",))
    with pytest.raises(ValueError, match="exclude"):
        crawler.CrawlConfig(seeds=("http://a/",), exclude=("(",))
    with pytest.raises(ValueError, match="burst"):
        crawler.CrawlConfig(seeds=("http://a/",), burst=0)
    with pytest.raises(ValueError, match="unknown setting"):
        crawler.CrawlConfig.from_mapping({"seeds": ["http://a/"], "speed": 3})
    cfg = crawler.CrawlConfig(seeds=["http://a/"])  # type: ignore[arg-type]
    assert cfg.seeds == ("http://a/",)
    with pytest.raises(AttributeError):
        cfg.rate = 3  # type: ignore[misc]
