"""A request the server may have received is not sent again behind the rate limit's back.

Seen from the server: a raw trio socket server that reads the second request of each
keep-alive connection whole, then resets the connection. The transport must not re-send
it at once on a fresh connection; the engine retries it, through its rate limiter.
"""

from __future__ import annotations

import itertools
import socket
import struct

import trio
import trio.testing

import crawler

CRAWL_DELAY = 0.1
# Loopback and scheduling jitter between the client's send and the server's read.
TOLERANCE = 0.02
PAGES = {
    b"/": b'<a href="/a">a</a> <a href="/b">b</a> <a href="/c">c</a>',
    b"/a": b"a",
    b"/b": b"b",
    b"/c": b"c",
}


class ResettingServer:
    """Serves PAGES and robots.txt (Crawl-delay); resets each connection once it has
    read the connection's second request."""

    def __init__(self) -> None:
        self.log: list[tuple[float, bytes]] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket()
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen()
            self.port = listener.getsockname()[1]
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self.handle, conn)

    async def handle(self, conn: trio.socket.SocketType) -> None:
        with conn:
            buffer = b""
            served = 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                target = head.split(b" ", 2)[1]
                self.log.append((trio.current_time(), target))
                served += 1
                if served == 2:
                    # The whole request was read (a GET has no body): drop it with a RST.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if target == b"/robots.txt":
                    body = f"User-agent: *\nCrawl-delay: {CRAWL_DELAY}\n".encode()
                    kind = b"text/plain"
                else:
                    body = PAGES.get(target, b"")
                    kind = b"text/html"
                status = b"200 OK" if target in PAGES or target == b"/robots.txt" else b"404 No"
                response = memoryview(
                    b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, kind, len(body), body)
                )
                while response:
                    response = response[await conn.send(response) :]


async def test_a_request_read_then_reset_is_retried_under_the_crawl_delay() -> None:
    server = ResettingServer()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            origin = f"http://127.0.0.1:{server.port}"
            config = crawler.CrawlConfig(
                seeds=(f"{origin}/",), rate=0, per_host=2, retries=3, read_timeout=5.0
            )
            async with crawler.open_crawl(config) as crawl:
                pages = [page async for page in crawl]
            nursery.cancel_scope.cancel()

    assert sorted(page.url for page in pages) == [f"{origin}/{p}" for p in ("", "a", "b", "c")]
    assert all(page.status == 200 and page.error is None for page in pages), pages
    times = [when for when, _ in server.log]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= CRAWL_DELAY - TOLERANCE, server.log
    # Every page but robots.txt was reset once and sent again by the engine.
    targets = [target for _, target in server.log]
    assert targets.count(b"/robots.txt") == 1
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
