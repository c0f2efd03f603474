"""A crawl of a hostile loopback server: every bad route is one record, politeness holds."""

from __future__ import annotations

import resource

import trio

import crawler
from tests.web.routes import open_site_server

ROBOTS = "User-agent: *\nDisallow: /disallowed/\n"
SLOW_ROBOTS = "User-agent: *\nCrawl-delay: 0.3\nDisallow: /disallowed/\n"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_hostile_routes_each_end_as_one_record() -> None:
    rss_before = peak_rss_mib()
    robots = {0: ROBOTS, 1: SLOW_ROBOTS, 2: ROBOTS, 3: ROBOTS, 4: ROBOTS}
    async with open_site_server(ports=5, pages=8, robots=robots, cross_links=False) as server:
        # Each route that times out gets a host of its own: timeouts rightly slow their
        # host down (adaptive backoff), and the test need not wait for that elsewhere.
        slow = ("/drip", "/stall", "/slow-headers")
        config = crawler.CrawlConfig(
            seeds=(
                server.url(0, "/hostile/"),
                server.url(1, "/page/0"),
                *(server.url(2 + i, path) for i, path in enumerate(slow)),
            ),
            exclude=tuple(f":{server.ports[0]}{path}$" for path in slow),
            rate=0,
            per_host=2,
            retries=2,
            timeout=0.8,
            read_timeout=0.3,
            max_depth=4,
            max_bytes=2 * 1024 * 1024,  # above the bomb's 1 MiB on the wire: decoding is cut
        )
        pages: dict[str, crawler.Page] = {}
        with trio.fail_after(60):
            async with crawler.open_crawl(config) as crawl:
                async for page in crawl:
                    assert page.url not in pages, "a URL was delivered twice"
                    pages[page.url] = page
                stats = crawl.statistics()

        def kind(path: str) -> str | None:
            error = pages[server.url(0, path)].error
            return None if error is None else str(error.kind)

        def status(path: str) -> int | None:
            return pages[server.url(0, path)].status

        assert status("/retry-after") == 200 and kind("/retry-after") is None
        assert status("/retry-after-date") == 200
        assert status("/flaky") == 200
        assert status("/unavailable") == 503 and kind("/unavailable") == "http"
        assert kind("/bomb.gz") == "too_large"
        assert len(pages[server.url(0, "/bomb.gz")].body) == 2 * 1024 * 1024
        assert kind("/bad-gzip") == "decoding"
        for i, path in enumerate(slow):
            error = pages[server.url(2 + i, path)].error
            assert error is not None and error.kind == "timeout", path
        assert kind("/reset") == "reset"
        assert kind("/huge-length") == "too_large"
        assert kind("/truncated") in ("reset", "protocol")
        assert kind("/loop/a") == "redirect_loop"
        assert status("/redirect-chain/5") == 200
        assert pages[server.url(0, "/redirect-chain/5")].final_url == server.url(
            0, "/redirect-chain/0"
        )
        assert kind("/redirect-ftp") == "bad_redirect"
        badutf8 = pages[server.url(0, "/badutf8")]
        assert badutf8.status == 200 and server.url(0, "/page/1") in badutf8.links
        assert pages[server.url(0, "/latin1")].title is not None
        pdf = pages[server.url(0, "/file.pdf")]
        assert pdf.status == 200 and pdf.links == () and pdf.content_type == "application/pdf"
        assert max(p.depth for p in pages.values()) <= 4  # the trap ended at max_depth

        # From the server's side: robots obeyed, per-host cap held, pauses honoured.
        assert not server.requests_for(path_prefix="/disallowed/")
        assert stats.disallowed >= 1
        for port in server.ports:
            assert server.max_concurrency(port) <= 2
        assert server.hits("/flaky", 0) == 3
        log0 = server.requests_for(0)
        # Retry-After: 2 (the date form has whole-second precision: at least 1 s).
        for path, pause in (("/retry-after", 2.0), ("/retry-after-date", 1.0)):
            first = next(r for r in log0 if r.path == path and r.status == 429)
            # (A request already on the wire when the 429 arrived may land just after it.)
            during = [r for r in log0 if first.end + 0.05 < r.start < first.end + pause - 0.01]
            assert not during, f"requests sent during {path}'s Retry-After pause"
        gaps = server.start_gaps(1)
        assert gaps and min(gaps) >= 0.3 - 0.005  # Crawl-delay on the second host
        assert stats.pages == len(pages) and stats.errors >= 10
        assert not server.errors
    # A 1 GiB gzip bomb capped at 2 MiB: the process grew by far less than the bomb.
    assert peak_rss_mib() - rss_before < 150
