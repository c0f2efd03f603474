"""Robots, Retry-After, backoff, retries and redirects under a fake network and clock."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

import crawler
from crawler._retry import (
    BACKOFF_CAP,
    decay_backoff,
    grow_backoff,
    parse_retry_after,
    retry_delay,
)
from tests.crawlmodes import Crawl
from tests.web.core import Exchange
from tests.web.routes import MockSite, chain_site, html, merge, open_site_server

A = "http://a.test"
B = "http://b.test"


def config(**kwargs: object) -> crawler.CrawlConfig:
    settings: dict[str, object] = {"seeds": (f"{A}/",), "rate": 0, "per_host": 2}
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)  # type: ignore[arg-type]


async def collect(
    cfg: crawler.CrawlConfig, site: MockSite
) -> tuple[dict[str, crawler.Page], crawler.Statistics]:
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            pages = {page.url: page async for page in crawl}
            return pages, crawl.statistics()


def robots(text: str) -> httpx.Response:
    return httpx.Response(200, text=text, headers={"Content-Type": "text/plain"})


# -- robots.txt ------------------------------------------------------------------------


async def test_robots_disallow_obeyed_and_counted(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 20))
    site.pages[f"{A}/"] = html("home", ["/p/0", "/p/15"])
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nDisallow: /p/1\nAllow: /p/15\n")
    pages, stats = await collect(config(), site)
    fetched = site.urls()
    assert fetched[0] == f"{A}/robots.txt"
    assert fetched.count(f"{A}/robots.txt") == 1
    assert not [u for u in fetched if u.startswith(f"{A}/p/1") and u != f"{A}/p/15"]
    assert f"{A}/p/15" in fetched
    # Links seen to disallowed pages: p/1 (from p/0), p/10-12 (from p/8, p/9), p/16-18.
    assert stats.disallowed == 7
    assert stats.hosts[A].robots == "parsed"
    assert f"{A}/p/1" not in pages


async def test_robots_matches_our_user_agent(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 5))
    site.pages[f"{A}/robots.txt"] = robots(
        "User-agent: otherbot\nDisallow: /\n\nUser-agent: mybot\nDisallow: /p/2\n"
    )
    _pages, _ = await collect(config(user_agent="mybot/1.0"), site)
    assert f"{A}/p/2" not in site.urls() and f"{A}/p/3" in site.urls()


async def test_crawl_delay_lowers_rate_never_raises(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 6, fanout=5))
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nCrawl-delay: 3\n")
    _, stats = await collect(config(rate=10.0), site)
    starts = site.starts()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) == pytest.approx(3.0)
    assert stats.hosts[A].rate == pytest.approx(1 / 3)

    site = MockSite(chain_site(A, 6, fanout=5))
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nRequest-rate: 1/5\n")
    await collect(config(rate=10.0), site)
    starts = site.starts()
    assert min(b - a for a, b in itertools.pairwise(starts)) == pytest.approx(5.0)

    # A Crawl-delay shorter than the configured interval changes nothing.
    site = MockSite(chain_site(A, 6, fanout=5))
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nCrawl-delay: 0.1\n")
    await collect(config(rate=0.5), site)
    starts = site.starts()
    assert min(b - a for a, b in itertools.pairwise(starts)) == pytest.approx(2.0)


async def test_robots_4xx_allows_5xx_disallows(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 3))
    site.pages[f"{A}/robots.txt"] = httpx.Response(404)
    pages, stats = await collect(config(), site)
    assert len(pages) == 4 and stats.hosts[A].robots == "allow_all"

    site = MockSite(chain_site(A, 3))
    site.pages[f"{A}/robots.txt"] = httpx.Response(503)
    pages, stats = await collect(config(retries=1), site)
    assert site.urls() == [f"{A}/robots.txt"] * 2  # retried once, nothing else fetched
    assert [p.error.kind for p in pages.values() if p.error] == ["robots_unavailable"]
    assert stats.hosts[A].robots == "unavailable"


async def test_robots_ignored_when_asked(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 3))
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nDisallow: /\n")
    pages, stats = await collect(config(obey_robots=False), site)
    assert len(pages) == 4 and f"{A}/robots.txt" not in site.urls()
    assert stats.hosts[A].robots == "ignored"


async def test_robots_oversized_is_cut(autojump_clock: trio.testing.MockClock) -> None:
    filler = "# " + "x" * 1000 + "\n"
    text = "User-agent: *\nDisallow: /p/1\n" + filler * 600 + "Disallow: /p/2\n"
    site = MockSite(chain_site(A, 3))
    site.pages[f"{A}/robots.txt"] = robots(text)
    _pages, _ = await collect(config(), site)
    assert f"{A}/p/1" not in site.urls()
    assert f"{A}/p/2" in site.urls()  # the rule past 500 KiB was never read


# -- Retry-After and backoff -----------------------------------------------------------


def test_parse_retry_after_both_forms() -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Sun, 29 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now=now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5e3x", "\u00b2", "\u0663", "1\u00b2", "\x00"):
        assert parse_retry_after(bad) is None
    assert parse_retry_after("9" * 400) == float("inf")  # 400 digits overflow float(int())
    far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=now)
    assert far is not None and far > 1e10
    assert parse_retry_after("Mon, 99 Foo 99999999 99:99:99 GMT") is None


@pytest.mark.parametrize("value", [b"\xb2", b"9" * 400, b"\xd9\xa3", b"Fri, 31 Dec 99999 GMT"])
async def test_a_malformed_retry_after_costs_one_record(
    autojump_clock: trio.testing.MockClock, value: bytes
) -> None:
    """Retry-After: ² once ended the whole crawl (str.isdigit() accepts it, int() does not)."""
    site = MockSite(chain_site(A, 5, fanout=4))
    site.pages[f"{A}/p/1"] = httpx.Response(503, headers=[(b"Retry-After", value)], text="busy")
    with trio.fail_after(300):
        pages, stats = await collect(config(obey_robots=False, retries=1), site)
    assert set(pages) == set(site.pages)  # every page, once, the 503 included
    assert pages[f"{A}/p/1"].error is not None
    assert all(page.error is None for url, page in pages.items() if url != f"{A}/p/1")
    assert stats.pages == len(site.pages)


async def test_retry_after_pauses_the_host(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0
    site = MockSite(merge(chain_site(A, 10, fanout=9), chain_site(B, 10, fanout=9)))

    async def limited(ex: Exchange) -> None:
        nonlocal calls
        if ex.url == f"{A}/p/0":
            calls += 1

    site.on_request = limited
    site.pages[f"{A}/p/0"] = httpx.Response(429, headers={"Retry-After": "7"}, html="slow down")
    cfg = config(seeds=(f"{A}/", f"{B}/"), obey_robots=False)
    # Serve 429 once, then the page.
    original = site.handle

    async def handle(request: httpx.Request) -> httpx.Response:
        response = await original(request)
        if str(request.url) == f"{A}/p/0" and calls > 1:
            return httpx.Response(200, html=html("p0", ["/p/1"]))
        return response

    transport = httpx.MockTransport(handle)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=transport) as crawl:
            pages = {p.url: p async for p in crawl}
    first_429 = next(h.start for h in site.log if h.url == f"{A}/p/0")
    a_after = [h.start for h in site.log if h.url.startswith(A) and h.start > first_429]
    assert a_after and min(a_after) == pytest.approx(first_429 + 7.0)
    assert pages[f"{A}/p/0"].status == 200
    # The other host was never paused.
    assert max(h.start for h in site.log if h.url.startswith(B)) < 1.0


async def test_retry_after_too_long_fails_the_url(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 2))
    site.pages[f"{A}/p/0"] = httpx.Response(503, headers={"Retry-After": "3600"})
    pages, _ = await collect(config(obey_robots=False), site)
    error = pages[f"{A}/p/0"].error
    assert error is not None and error.kind == "retry_after_too_long"
    assert "3600" in error.message
    assert trio.current_time() < 60


async def test_retries_then_success_and_exhaustion(autojump_clock: trio.testing.MockClock) -> None:
    attempts: dict[str, int] = {}

    async def handle(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        attempts[url] = attempts.get(url, 0) + 1
        if url == f"{A}/":
            return httpx.Response(200, html=html("home", ["/flaky", "/down", "/missing"]))
        if url == f"{A}/flaky":
            if attempts[url] <= 2:
                return httpx.Response(500)
            return httpx.Response(200, html=html("ok", []))
        if url == f"{A}/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(404)

    cfg = config(obey_robots=False, retries=2)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=httpx.MockTransport(handle)) as crawl:
            pages = {p.url: p async for p in crawl}
    assert attempts[f"{A}/flaky"] == 3 and pages[f"{A}/flaky"].status == 200
    assert attempts[f"{A}/down"] == 3
    down = pages[f"{A}/down"].error
    assert down is not None and down.kind == "connect"
    assert attempts[f"{A}/missing"] == 1  # permanent errors are not retried


def test_retry_schedule_full_jitter_and_backoff_bounds() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        delays = [retry_delay(attempt, rng) for _ in range(200)]
        cap = min(30.0, 0.5 * 2**attempt)
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # the whole range is used
    value = 0.0
    seen = []
    for _ in range(20):
        value = grow_backoff(value, 0.1)
        seen.append(value)
    assert seen[0] == 0.25 and seen[1] == 0.5 and seen[-1] == BACKOFF_CAP
    for _ in range(20):
        value = decay_backoff(value, 0.1)
    assert value == 0.0


async def test_backoff_grows_on_503_and_decays(autojump_clock: trio.testing.MockClock) -> None:
    state = {"overloaded": True}

    async def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/":
            return httpx.Response(200, html=html("home", [f"/p/{i}" for i in range(30)]))
        if state["overloaded"] and path.startswith("/p/") and int(path[3:]) < 6:
            return httpx.Response(503)
        return httpx.Response(200, html=html(path, []))

    rates: list[float] = []
    cfg = config(obey_robots=False, rate=10.0, retries=0, per_host=1)
    with trio.fail_after(600):
        async with crawler.open_crawl(cfg, transport=httpx.MockTransport(handle)) as crawl:
            async for _ in crawl:
                rates.append(crawl.statistics().hosts[A].rate)
    assert min(rates) < 10.0 / 8  # backed off well below the configured rate
    assert rates[-1] == pytest.approx(10.0)  # and recovered


# -- redirects -------------------------------------------------------------------------


async def test_redirects_hop_by_hop(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(merge(chain_site(A, 3), chain_site(B, 3)))
    site.pages[f"{A}/"] = html("home", ["/r1", "/loop-a", "/ftp", "/out", "/chain/12"])
    site.pages[f"{A}/r1"] = httpx.Response(301, headers={"Location": "/r2"})
    site.pages[f"{A}/r2"] = httpx.Response(302, headers={"Location": "/p/2"})
    site.pages[f"{A}/loop-a"] = httpx.Response(302, headers={"Location": "/loop-b"})
    site.pages[f"{A}/loop-b"] = httpx.Response(302, headers={"Location": "/loop-a"})
    site.pages[f"{A}/ftp"] = httpx.Response(302, headers={"Location": "ftp://a.test/x"})
    site.pages[f"{A}/out"] = httpx.Response(302, headers={"Location": f"{B}/p/0"})
    for i in range(12, 0, -1):
        site.pages[f"{A}/chain/{i}"] = httpx.Response(302, headers={"Location": f"/chain/{i - 1}"})
    site.pages[f"{A}/chain/0"] = html("end", [])
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nDisallow: /p/1\n")
    pages, _ = await collect(config(max_redirects=10), site)

    r1 = pages[f"{A}/r1"]
    assert r1.final_url in (f"{A}/p/2", f"{A}/r2")
    loop = pages[f"{A}/loop-a"].error
    assert loop is not None and loop.kind == "redirect_loop"
    ftp = pages[f"{A}/ftp"].error
    assert ftp is not None and ftp.kind == "bad_redirect"
    out = pages[f"{A}/out"]
    assert out.error is None and out.links == (f"{B}/p/0",)
    assert not [u for u in site.urls() if u.startswith(B)]  # out of scope: not followed
    chain = pages[f"{A}/chain/12"].error
    assert chain is not None and chain.kind == "too_many_redirects"
    assert f"{A}/chain/1" not in site.urls()
    assert site.urls().count(f"{A}/p/2") == 1  # dedup across redirect targets


async def test_redirect_into_disallowed_path(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 1))
    site.pages[f"{A}/"] = html("home", ["/go"])
    site.pages[f"{A}/go"] = httpx.Response(302, headers={"Location": "/private/x"})
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\nDisallow: /private\n")
    pages, _ = await collect(config(), site)
    assert f"{A}/private/x" not in site.urls()
    error = pages[f"{A}/go"].error
    assert error is not None and error.kind == "robots_disallowed"


async def test_size_cap_and_content_length(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite(chain_site(A, 1))
    site.pages[f"{A}/"] = html("home", ["/big", "/declared"])

    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(50):
                yield b"x" * 100

    # Streamed without a Content-Length: read up to the cap, then cut.
    site.pages[f"{A}/big"] = httpx.Response(
        200, stream=Stream(), headers={"Content-Type": "text/html"}
    )
    site.pages[f"{A}/declared"] = httpx.Response(
        200, content=b"tiny", headers={"Content-Length": "99999999999", "Content-Type": "text/html"}
    )
    pages, _ = await collect(config(obey_robots=False, max_bytes=1000), site)
    big = pages[f"{A}/big"]
    assert big.error is not None and big.error.kind == "too_large" and len(big.body) == 1000
    declared = pages[f"{A}/declared"]
    assert declared.error is not None and declared.error.kind == "too_large"


# -- sitemaps --------------------------------------------------------------------------


async def test_sitemaps_seed_the_frontier(autojump_clock: trio.testing.MockClock) -> None:
    import gzip

    site = MockSite({f"{A}/": html("home", [])})
    site.pages[f"{A}/robots.txt"] = robots(f"User-agent: *\nSitemap: {A}/index.xml\n")
    site.pages[f"{A}/index.xml"] = httpx.Response(
        200,
        content=(
            b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/'
            b'sitemap/0.9"><sitemap><loc>http://a.test/s1.xml.gz</loc></sitemap>'
            b"<sitemap><loc>http://other.test/s.xml</loc></sitemap></sitemapindex>"
        ),
        headers={"Content-Type": "application/xml"},
    )
    urlset = (
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<url><loc>http://a.test/only-in-sitemap?a=1&amp;b=2</loc></url>"
        b"<url><loc> http://a.test/second </loc></url></urlset>"
    )
    site.pages[f"{A}/s1.xml.gz"] = httpx.Response(
        200, content=gzip.compress(urlset), headers={"Content-Type": "application/x-gzip"}
    )
    site.pages[f"{A}/sitemap.xml"] = httpx.Response(404)
    site.pages[f"{A}/only-in-sitemap?a=1&b=2"] = html("hidden", [])
    site.pages[f"{A}/second"] = html("second", [])
    pages, _ = await collect(config(sitemaps=True), site)
    assert pages[f"{A}/only-in-sitemap?a=1&b=2"].title == "hidden"
    assert pages[f"{A}/second"].status == 200
    assert not [u for u in site.urls() if "other.test" in u]  # out of scope

    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\n")
    site.log.clear()
    pages, _ = await collect(config(sitemaps=False), site)
    assert f"{A}/second" not in pages


def test_sitemap_locs_in_cdata_are_kept() -> None:
    from crawler._sitemaps import parse_sitemap

    body = (
        b"<urlset><url><loc><![CDATA[http://a.test/x?a=1&b=2]]></loc></url>"
        b"<url><loc>\n  <![CDATA[ http://a.test/y ]]>\n</loc></url>"
        b"<url><loc>http://a.test/z?a=1&amp;b=2</loc></url>"
        b"<url><loc><![CDATA[http://a.test/&amp;]]></loc></url></urlset>"
    )
    locs, index = parse_sitemap(body, 1_000_000)
    assert locs == [
        "http://a.test/x?a=1&b=2",
        "http://a.test/y",
        "http://a.test/z?a=1&b=2",
        "http://a.test/&amp;",  # CDATA is literal text: no entity is resolved in it
    ]
    assert not index


async def test_cdata_sitemap_entries_are_crawled(autojump_clock: trio.testing.MockClock) -> None:
    site = MockSite({f"{A}/": html("home", [])})
    site.pages[f"{A}/robots.txt"] = robots("User-agent: *\n")
    site.pages[f"{A}/sitemap.xml"] = httpx.Response(
        200,
        content=b"<urlset><url><loc><![CDATA[http://a.test/hidden]]></loc></url></urlset>",
        headers={"Content-Type": "application/xml"},
    )
    site.pages[f"{A}/hidden"] = html("hidden", [])
    with trio.fail_after(60):
        pages, _ = await collect(config(sitemaps=True), site)
    assert pages[f"{A}/hidden"].title == "hidden"


async def test_robots_on_a_loopback_site_in_every_mode(mode: Crawl) -> None:
    # test_robots_disallow_obeyed_and_counted and test_redirect_into_disallowed_path on
    # real sockets, so that shared workers (no mock clock) run them too.
    robots = "User-agent: *\nDisallow: /disallowed/\n"
    async with open_site_server(ports=1, pages=5, robots=robots) as server:
        hop = server.url(0, "/redirect-to?url=/disallowed/x")
        seeds = (server.url(0), hop, server.url(0, "/disallowed/page"))
        config = crawler.CrawlConfig(seeds=seeds, rate=0, per_host=2)
        with trio.fail_after(30):
            pages, stats = await mode(config)
        by_url = {page.url: page for page in pages}
        assert len(by_url) == len(pages)
        assert set(by_url) == server.reachable_urls() | {hop}
        error = by_url[hop].error
        assert error is not None and error.kind == "robots_disallowed"
        assert stats.disallowed == 1 and stats.errors == 1
        assert not server.requests_for(path_prefix="/disallowed/")
        assert server.hits("/robots.txt", 0) == 1
