"""A request the server may have received is not sent again behind the rate limit's back.

Seen from the server: a raw handler on the test web that reads the second request of each
keep-alive connection whole, then resets the connection. The transport must not re-send
it at once on a fresh connection; the engine retries it, through its rate limiter.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing

import crawler
from tests.web.core import Conn, http_response, raw_server

CRAWL_DELAY = 0.1
# Loopback and scheduling jitter between the client's send and the server's read.
TOLERANCE = 0.02
PAGES = {
    "/": b'<a href="/a">a</a> <a href="/b">b</a> <a href="/c">c</a>',
    "/a": b"a",
    "/b": b"b",
    "/c": b"c",
    "/robots.txt": f"User-agent: *\nCrawl-delay: {CRAWL_DELAY}\n".encode(),
}


async def reset_second_request(conn: Conn) -> None:
    """Serves PAGES; resets each connection once it has read the connection's second
    request."""
    served = 0
    while (request := await conn.read_request()) is not None:
        served += 1
        if served == 2:
            await conn.reset()  # the whole request was read (a GET has no body): RST
            return
        kind = b"text/plain" if request.path == "/robots.txt" else b"text/html"
        status = b"200 OK" if request.path in PAGES else b"404 No"
        body = PAGES.get(request.path, b"")
        await conn.send(http_response(body, status=status, headers=[(b"Content-Type", kind)]))


async def test_a_request_read_then_reset_is_retried_under_the_crawl_delay() -> None:
    with trio.fail_after(30):
        async with raw_server(reset_second_request) as server:
            origin = server.origin()
            config = crawler.CrawlConfig(
                seeds=(f"{origin}/",), rate=0, per_host=2, retries=3, read_timeout=5.0
            )
            async with crawler.open_crawl(config) as crawl:
                pages = [page async for page in crawl]

    assert sorted(page.url for page in pages) == [f"{origin}/{p}" for p in ("", "a", "b", "c")]
    assert all(page.status == 200 and page.error is None for page in pages), pages
    times = [record.start for record in server.log]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= CRAWL_DELAY - TOLERANCE, server.log
    # Every page but robots.txt was reset once and sent again by the engine.
    targets = [record.path for record in server.log]
    assert targets.count("/robots.txt") == 1
    assert len(targets) > 5


async def test_a_lost_keep_alive_connection_costs_a_rate_slot_not_an_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request lost with its reused connection is sent once more without spending the
    URL's retries, and it waits for its rate slot like any request; a second loss is a
    `reset` record."""
    import httpx

    from crawler._transport import StaleConnection

    origin = "http://a.test"
    hits: list[tuple[float, str]] = []
    losses = {"/once": 1, "/twice": 2}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        hits.append((trio.current_time(), path))
        if losses.get(path, 0) > 0:
            losses[path] -= 1
            raise StaleConnection("server closed the keep-alive connection", request=request)
        if path == "/":
            return httpx.Response(200, html='<a href="/once">1</a><a href="/twice">2</a>')
        return httpx.Response(200, html="<title>ok</title>")

    config = crawler.CrawlConfig(
        seeds=(f"{origin}/",), rate=1.0, burst=1, per_host=1, retries=0, obey_robots=False
    )
    with trio.fail_after(60):
        async with crawler.open_crawl(config, transport=httpx.MockTransport(handle)) as crawl:
            pages = {page.url: page async for page in crawl}
    assert pages[f"{origin}/once"].status == 200  # resent, though retries=0
    lost = pages[f"{origin}/twice"]
    assert lost.error is not None and lost.error.kind == "reset"
    assert [path for _, path in hits].count("/once") == 2
    assert [path for _, path in hits].count("/twice") == 2
    times = [when for when, _ in hits]
    # One request a second, the resends included.
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 1.0 - 1e-9


async def test_each_attempt_has_its_own_free_resend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A keep-alive race before the first attempt does not make a race before the
    second one count as the URL's failure (the server sees every attempt it is owed)."""
    import httpx

    from crawler._transport import StaleConnection

    origin = "http://a.test"
    answers: list[int | str] = ["stale", 500, "stale", 200]
    seen: list[int | str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/":
            answer = answers.pop(0)
            seen.append(answer)
            if answer == "stale":
                raise StaleConnection("server closed the keep-alive connection", request=request)
            assert isinstance(answer, int)
            return httpx.Response(answer, html="<title>t</title>")
        return httpx.Response(404)

    config = crawler.CrawlConfig(
        seeds=(f"{origin}/",), rate=0, per_host=1, retries=1, obey_robots=False
    )
    with trio.fail_after(60):
        async with crawler.open_crawl(config, transport=httpx.MockTransport(handle)) as crawl:
            pages = [page async for page in crawl]
    assert seen == ["stale", 500, "stale", 200]
    assert [(page.status, page.error) for page in pages] == [(200, None)]
