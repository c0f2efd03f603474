"""Tests of the test web itself (tests/web/)."""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import httpx
import pytest
import trio

from tests.web.core import (
    RequestRecord,
    Web,
    load_log,
    max_concurrency,
    max_in_window,
    start_gaps,
)
from tests.web.faults import Fault, FaultyGraph
from tests.web.routes import (
    HOSTILE_ROUTES,
    Hostile,
    LinkGraph,
    MockSite,
    Robots,
    SiteServer,
    Static,
    bomb_body,
    html,
    open_site_server,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
HREF = re.compile(rb"""href\s*=\s*["']?([^"'\s>]+)""")


def _record(start: float, end: float, port: int = 1) -> RequestRecord:
    return RequestRecord(port, "GET", "/", {}, start, end, 200, 1)


async def _raw_request(port: int, target: str, *, method: str = "GET") -> trio.SocketStream:
    """Send one request on a fresh connection; the caller closes the stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    await stream.send_all(request.encode())
    return stream


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


# ---- analysis helpers ----------------------------------------------------------------------


def test_interval_helpers() -> None:
    records = [_record(0.0, 1.0), _record(0.5, 2.0), _record(1.0, 1.5), _record(3.0, 3.0)]
    assert max_concurrency(records) == 2  # [start, end): the first ends as the third starts
    assert max_concurrency([_record(5.0, 5.0)]) == 1  # a zero-length request still counts
    assert max_concurrency([]) == 0
    assert start_gaps(reversed(records)) == [0.5, 0.5, 2.0]
    assert max_in_window(records, 1.0) == 2
    assert max_in_window(records, 1.0001) == 3
    assert max_in_window([], 1.0) == 0


def test_bomb_body_is_consistent() -> None:
    body = bomb_body()
    assert 900_000 < len(body) < 1_200_000
    crc, size = int.from_bytes(body[-8:-4], "little"), int.from_bytes(body[-4:], "little")
    assert size == 1 << 30
    zeros, expected_crc = bytes(1 << 20), 0
    for _ in range(1024):
        expected_crc = zlib.crc32(zeros, expected_crc)
    assert crc == expected_crc
    inflate = zlib.decompressobj(31)
    head = inflate.decompress(body[:20_000], 8 << 20)
    assert len(head) == 8 << 20
    assert head == bytes(len(head))


# ---- the generated site and the log ----------------------------------------------------------


async def test_pages_log_and_keepalive() -> None:
    async with (
        open_site_server(ports=2, pages=20, page_bytes=3000) as server,
        httpx.AsyncClient() as client,
    ):
        assert len(server.ports) == 2 and len(set(server.ports)) == 2
        root = await client.get(server.url(0))
        page = await client.get(server.url(0, "/page/7?x=1"), headers={"X-Test": "yes"})
        other = await client.get(server.url(1, "/page/19"))
        missing = await client.get(server.url(1, "/page/20"))
        head = await client.head(server.url(0, "/page/1"))
        post = await client.post(server.url(0, "/page/1"), content=b"data")
    assert root.status_code == page.status_code == other.status_code == 200
    assert "<title>Page 7</title>" in page.text
    assert abs(len(page.content) - 3000) < 40
    assert missing.status_code == 404 and post.status_code == 405
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 2000

    port0, port1 = server.ports
    log0 = server.requests_for(port0)
    assert server.requests_for(0) == log0  # an index works as well as a port number
    assert [r.path for r in log0] == ["/", "/page/7?x=1", "/page/1", "/page/1"]
    assert [r.status for r in server.requests_for(1)] == [200, 404]
    record = log0[1]
    assert record.method == "GET" and record.port == port0
    assert record.headers["x-test"] == "yes" and record.headers["host"] == f"127.0.0.1:{port0}"
    assert all(r.start <= r.end < math.inf for r in server.log)
    assert len({r.conn_id for r in log0}) == 1  # keep-alive: one connection per port
    assert server.hits("/page/1") == 2 and server.hits("/page/1", port1) == 0
    assert server.errors == []
    server.reset()
    assert server.log == [] and server.hits("/page/1") == 0


async def test_concurrency_is_observable() -> None:
    async with (
        open_site_server(ports=1, pages=10, latency=0.2) as server,
        httpx.AsyncClient() as client,
    ):

        async def fetch(path: str) -> None:
            assert (await client.get(server.url(0, path))).status_code == 200

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, "/page/1")
            nursery.start_soon(fetch, "/page/2")
        assert server.max_concurrency(0) == 2
        assert len({r.conn_id for r in server.log}) == 2
        for record in server.log:
            assert record.end - record.start >= 0.2
        server.reset()
        await fetch("/page/1")
        await fetch("/page/2")
        assert server.max_concurrency(0) == 1
        (gap,) = server.start_gaps(0)
        assert gap >= 0.2
        assert server.max_in_window(0, 0.1) == 1
        assert server.max_in_window(0, 10) == 2


async def test_reachable_urls_match_a_real_bfs() -> None:
    async with (
        open_site_server(ports=2, pages=25, links_per_page=4) as server,
        httpx.AsyncClient() as client,
    ):
        origins = {server.origin(i) for i in range(2)}
        seen = {server.url(i) for i in range(2)}
        queue = deque(seen)
        while queue:
            url = queue.popleft()
            response = await client.get(url)
            assert response.status_code == 200, url
            for href in HREF.findall(response.content):
                link = urldefrag(urljoin(url, href.decode())).url
                parts = urlsplit(link)
                if f"{parts.scheme}://{parts.netloc}" in origins and link not in seen:
                    seen.add(link)
                    queue.append(link)
        assert seen == server.reachable_urls()
        assert len(seen) == 2 * (25 + 1)  # every page on every port, plus the roots
        # The site never links to hostile routes.
        assert all(r.path == "/" or r.path.startswith("/page/") for r in server.log)


async def test_no_cross_links_and_link_forms() -> None:
    async with (
        open_site_server(ports=2, pages=30, cross_links=False) as server,
        httpx.AsyncClient() as client,
    ):
        body = (await client.get(server.url(0, "/page/5"))).text
        assert f":{server.ports[1]}/" not in body
        for form in ['href="../page/', 'href="http://127.0.0.1:', 'href="/page/', "#section-"]:
            assert form in body
        assert server.reachable_urls() == {server.url(p, "/") for p in range(2)} | {
            server.url(p, f"/page/{i}") for p in range(2) for i in range(30)
        }


async def test_robots_per_port_and_gzip() -> None:
    robots = {0: "User-agent: *\nDisallow: /disallowed/\n"}
    async with (
        open_site_server(ports=2, pages=10, robots=robots, gzip=True) as server,
        httpx.AsyncClient() as client,
    ):
        first = await client.get(server.url(0, "/robots.txt"))
        second = await client.get(server.url(1, "/robots.txt"))
        page = await client.get(server.url(0, "/page/3"))
        plain = await client.get(server.url(0, "/page/3"), headers={"Accept-Encoding": "identity"})
        disallowed = await client.get(server.url(0, "/disallowed/secret"))
    assert first.status_code == 200 and first.text == robots[0]
    assert first.headers["content-type"].startswith("text/plain")
    assert second.status_code == 404
    assert [r.path for r in server.requests_for(0)][:1] == ["/robots.txt"]
    assert page.headers["content-encoding"] == "gzip" and "<title>Page 3</title>" in page.text
    assert "content-encoding" not in plain.headers and plain.text == page.text
    assert disallowed.status_code == 200 and "<title>Disallowed</title>" in disallowed.text


async def test_robots_for_all_ports() -> None:
    async with (
        open_site_server(ports=2, robots="User-agent: *\nCrawl-delay: 1\n") as server,
        httpx.AsyncClient() as client,
    ):
        for i in range(2):
            response = await client.get(server.url(i, "/robots.txt"))
            assert "Crawl-delay: 1" in response.text


# ---- hostile routes -------------------------------------------------------------------------


async def test_status_routes(site_server: SiteServer) -> None:
    server = site_server
    async with httpx.AsyncClient() as client:

        async def get(i: int, path: str) -> httpx.Response:
            return await client.get(server.url(i, path))

        first, again = await get(0, "/retry-after"), await get(0, "/retry-after")
        assert (first.status_code, first.headers["retry-after"]) == (429, "2")
        assert again.status_code == 200
        assert (await get(1, "/retry-after?s=7")).headers["retry-after"] == "7"
        dated = await get(0, "/retry-after-date?s=30")
        assert dated.status_code == 429
        when = email.utils.parsedate_to_datetime(dated.headers["retry-after"]).timestamp()
        assert 25 < when - time.time() <= 31

        flaky = [(await get(0, "/flaky")).status_code for _ in range(4)]
        assert flaky == [500, 500, 200, 200]
        assert (await get(1, "/flaky")).status_code == 500  # counted per port
        assert server.hits("/flaky") == 5 and server.hits("/flaky", 0) == 4
        server.reset()
        assert (await get(0, "/flaky")).status_code == 500
        assert (await get(0, "/retry-after")).status_code == 429

        unavailable = await get(0, "/unavailable")
        assert unavailable.status_code == 503 and "retry-after" not in unavailable.headers
    assert server.errors == []


async def test_redirect_routes(site_server: SiteServer) -> None:
    server = site_server
    async with httpx.AsyncClient() as client:
        loop_a = await client.get(server.url(0, "/loop/a"))
        loop_b = await client.get(server.url(0, "/loop/b"))
        assert (loop_a.status_code, loop_a.headers["location"]) == (302, "/loop/b")
        assert (loop_b.status_code, loop_b.headers["location"]) == (302, "/loop/a")
        with pytest.raises(httpx.TooManyRedirects):
            await client.get(server.url(0, "/loop/a"), follow_redirects=True)

        chain = await client.get(server.url(0, "/redirect-chain/3"), follow_redirects=True)
        assert chain.status_code == 200 and len(chain.history) == 3
        assert {r.status_code for r in chain.history} == {301}
        assert chain.url.path == "/redirect-chain/0"

        out = await client.get(server.url(1, "/redirect-out"))
        assert (out.status_code, out.headers["location"]) == (302, server.url(0, "/page/0"))
        ftp = await client.get(server.url(0, "/redirect-ftp"))
        assert (ftp.status_code, ftp.headers["location"]) == (302, "ftp://example.com/")


async def test_content_routes(site_server: SiteServer) -> None:
    server = site_server
    async with httpx.AsyncClient() as client:
        index = await client.get(server.url(0, "/hostile/"))
        links = {h.decode() for h in HREF.findall(index.content)}
        assert links == set(HOSTILE_ROUTES)

        bad = await client.get(server.url(0, "/badutf8"))
        assert bad.headers["content-type"] == "text/html; charset=utf-8"
        with pytest.raises(UnicodeDecodeError):
            bad.content.decode("utf-8")
        assert b"\x00" in bad.content and b"</html>" not in bad.content
        assert {b"/page/1", b"/page/2", b"/page/3"} <= set(HREF.findall(bad.content))

        latin = await client.get(server.url(0, "/latin1"))
        assert latin.headers["content-type"] == "text/html"
        assert b'<meta charset="iso-8859-1">' in latin.content
        assert "Café".encode("latin-1") in latin.content

        pdf = await client.get(server.url(0, "/file.pdf"))
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF-")

        trap = await client.get(server.url(0, "/trap/x/2"))
        assert set(HREF.findall(trap.content)) == {b"/trap/x/2/x", b"/trap/x/2/3"}
        trap_root = await client.get(server.url(0, "/trap/"))
        assert set(HREF.findall(trap_root.content)) == {b"/trap/x", b"/trap/1"}

        async with client.stream("GET", server.url(0, "/bad-gzip")) as bad_gzip:
            assert bad_gzip.headers["content-encoding"] == "gzip"
            garbage = b"".join([chunk async for chunk in bad_gzip.aiter_raw()])
        with pytest.raises(zlib.error):
            zlib.decompress(garbage, 31)

        async with client.stream("GET", server.url(0, "/bomb.gz")) as bomb:
            assert bomb.headers["content-encoding"] == "gzip"
            assert bomb.headers["content-type"] == "text/html"
            raw = b"".join([chunk async for chunk in bomb.aiter_raw()])
        assert raw == bomb_body()


async def test_broken_framing_routes(site_server: SiteServer) -> None:
    server = site_server
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(server.url(0, "/reset"))
        for path in ("/truncated", "/huge-length"):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(server.url(0, path))
        # The server is still fine afterwards.
        assert (await client.get(server.url(0, "/page/0"))).status_code == 200

    stream = await _raw_request(server.ports[0], "/reset")
    async with stream:
        with pytest.raises(trio.BrokenResourceError):
            await _read_until_closed(stream)

    stream = await _raw_request(server.ports[0], "/huge-length")
    async with stream:
        data = await _read_until_closed(stream)
    assert b"\r\ncontent-length: 10000000000\r\n" in data.lower()

    stream = await _raw_request(server.ports[0], "/truncated")
    async with stream:
        data = await _read_until_closed(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 10000" in head.lower() and len(body) == 100
    await server.wait_quiet()
    assert {r.status for r in server.requests_for(0, path_prefix="/reset")} == {None}
    assert server.errors == []


async def test_slow_routes(site_server: SiteServer) -> None:
    server = site_server
    port = server.ports[0]

    # /drip: headers, then one byte per interval until the client leaves.
    stream = await _raw_request(port, "/drip?s=0.02")
    async with stream:
        received = b""
        with trio.fail_after(5):
            # Chunked framing: each one-byte chunk is b"1\r\n?\r\n" on the wire.
            while received.count(b"\r\n1\r\n") < 10:
                received += await stream.receive_some(1024)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"\r\ntransfer-encoding: chunked\r\n" in received.lower()
    with trio.fail_after(5):
        await server.wait_quiet()
    (drip,) = server.requests_for(port, path_prefix="/drip")
    assert drip.status == 200 and drip.end - drip.start >= 9 * 0.02

    # /stall: never answers; the record is completed when the client goes away.
    stream = await _raw_request(port, "/stall")
    async with stream:
        with trio.move_on_after(0.3) as scope:
            await stream.receive_some(1024)
        assert scope.cancelled_caught
        assert server.in_flight == 1
    with trio.fail_after(5):
        await server.wait_quiet()
    (stall,) = server.requests_for(port, path_prefix="/stall")
    assert stall.status is None and stall.end - stall.start >= 0.3

    # /slow-headers: the head comes after the delay.
    async with httpx.AsyncClient() as client:
        before = trio.current_time()
        slow = await client.get(server.url(0, "/slow-headers?s=0.3"))
        assert slow.status_code == 200 and trio.current_time() - before >= 0.3
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url(0, "/slow-headers"), timeout=0.2)
    assert server.errors == []


# ---- robustness -------------------------------------------------------------------------------


async def test_garbage_and_disconnects_do_not_crash(site_server: SiteServer) -> None:
    server = site_server
    port = server.ports[0]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
        reply = await _read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert len(server.errors) == 1

    # A client cancelled while the server is still working on its request.
    server.latency = 0.2
    stream = await _raw_request(port, "/page/1")
    async with stream:
        with trio.move_on_after(0.05):
            await stream.receive_some(1024)
    # A client that stops reading a big response and leaves.
    stream = await _raw_request(port, "/bomb.gz")
    async with stream:
        assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 200 ")
    # A client that leaves right after sending its request, without reading.
    stream = await _raw_request(port, "/page/2")
    await stream.aclose()
    with trio.fail_after(5):
        await server.wait_quiet()
    server.latency = 0

    # Many concurrent connections.
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:

        async def fetch(i: int) -> None:
            response = await client.get(server.url(i % 2, f"/page/{i}"))
            assert response.status_code == 200

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(fetch, i)
    assert len(server.errors) == 1
    assert all(r.end < math.inf for r in server.log)


# ---- one site, served in process or over loopback ----------------------------------------


async def test_the_same_routes_in_process_and_over_loopback() -> None:
    def site(origins: Sequence[str] = ()) -> Web:
        robots = Robots({0: "User-agent: *\nDisallow: /disallowed/\n"})
        return Web(LinkGraph(pages=20, gzip=True), robots, Hostile(20), origins=origins)

    paths = ["/", "/page/3", "/page/20", "/robots.txt", "/hostile/", "/redirect-chain/2"]
    paths += ["/loop/a", "/redirect-out", "/badutf8", "/latin1", "/file.pdf", "/trap/x/2"]
    paths += ["/flaky", "/flaky", "/flaky", "/retry-after?s=7", "/nowhere"]
    async with site().serving(ports=2) as served:
        mock = site(served.origins)
        async with (
            httpx.AsyncClient() as real,
            httpx.AsyncClient(transport=mock.transport()) as fake,
        ):
            for index in (0, 1):
                for path in paths:
                    got = [await c.get(served.url(index, path)) for c in (real, fake)]
                    a, b = [(r.status_code, r.headers.get("content-type"), r.content) for r in got]
                    assert a == b, path
                    for name in ("location", "retry-after", "content-encoding", "vary"):
                        assert got[0].headers.get(name) == got[1].headers.get(name), path
            with pytest.raises(httpx.ReadError):  # a reset, in process
                await fake.get(served.url(0, "/reset"))
    assert [r.url for r in mock.log] == [r.url for r in served.log] + [served.url(0, "/reset")]
    assert mock.hits("/flaky", 1) == served.hits("/flaky", 1) == 3
    assert served.unknown_paths == mock.unknown_paths == ["/page/20", "/nowhere"] * 2
    assert served.errors == [] and mock.in_flight == 0


async def test_pages_by_url_over_loopback() -> None:
    site = MockSite()
    async with site.serving() as web, httpx.AsyncClient() as client:
        site.pages[web.url(0, "/")] = html("home", ["/moved"])
        site.pages[web.url(0, "/moved")] = httpx.Response(301, headers={"Location": "/"})
        home = await client.get(web.url(0, "/"))
        moved = await client.get(web.url(0, "/moved"))
        missing = await client.get(web.url(0, "/missing"))
        post = await client.post(web.url(0, "/"))
    assert home.status_code == 200 and "<title>home</title>" in home.text
    assert (moved.status_code, moved.headers["location"]) == (301, "/")
    assert missing.status_code == 404 and post.status_code == 405
    assert site.urls() == [web.url(0, p) for p in ("/", "/moved", "/missing", "/")]
    assert len({r.conn_id for r in site.log}) == 1  # all on one kept-alive connection


async def test_static_files(tmp_path: Path) -> None:
    (tmp_path / "site" / "p").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_text("<title>index</title>")
    (tmp_path / "site" / "p" / "1.html").write_text("<title>one</title>")
    (tmp_path / "secret.txt").write_text("outside the root")
    web = Web(Static(tmp_path / "site"), log=False)
    async with web.serving() as web, httpx.AsyncClient() as client:
        index = await client.get(web.url(0, "/"))
        page = await client.get(web.url(0, "/p/1.html?x=1"))
        head = await client.head(web.url(0, "/p/1.html"))
        stream = await _raw_request(web.port, "/../secret.txt", method="GET")
        async with stream:
            outside = await stream.receive_some(1024)
        missing = await client.get(web.url(0, "/p/2.html"))
    assert (index.status_code, index.text) == (200, "<title>index</title>")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert head.content == b"" and head.headers["content-length"] == str(len(page.content))
    assert outside.startswith(b"HTTP/1.1 404 ") and missing.status_code == 404
    assert web.log == [] and web.errors == []


async def test_faulty_graph_faults_budgets_and_history() -> None:
    profile = {Fault.HTTP_503_RETRY_AFTER_1: 0.999}
    faults = FaultyGraph(pages=10, seed=3, profile=profile, max_faults=1, permanent_500=0.2)
    async with Web(faults, log=False).serving(2) as web, httpx.AsyncClient() as client:
        for url in sorted(faults.all_urls()):
            first, second = [await client.get(url) for _ in range(2)]
            node = faults.node_of(url)
            assert node is not None and faults.url(node) == url
            if faults.permanent(node) is Fault.PERMANENT_500:
                assert (first.status_code, second.status_code) == (500, 500)
                assert faults.history[node] == [Fault.PERMANENT_500] * 2
            else:
                assert (first.status_code, first.headers["retry-after"]) == (503, "1")
                assert second.status_code == 200 and len(second.content) == 4096
                assert faults.history[node] == [Fault.HTTP_503_RETRY_AFTER_1, Fault.NONE]
            assert faults.attempts(node) == 2
    permanent = [n for n in faults.history if faults.permanent(n)]
    assert 0 < len(permanent) < len(faults.history) == 2 * 11
    assert faults.budget_spent == len(faults.history) - len(permanent)
    assert faults.node_of(web.url(0, "/page/10")) is None
    assert faults.seeds() == [web.url(0), web.url(1)]
    assert web.peak == web.peak_naive and set(web.peak.values()) == {1} and web.errors == []


async def test_framing_follows_the_client(site_server: SiteServer) -> None:
    port = site_server.ports[0]

    async def exchange(request: bytes, until: bytes | None = None) -> tuple[bytes, bytes]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            with trio.fail_after(5):
                if until is None:
                    data = await _read_until_closed(stream)  # the server closes
                else:
                    data = b""
                    while until not in data:
                        data += await stream.receive_some(1024)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        return head, body

    def length(head: bytes) -> int:
        return int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])

    for request in (
        b"GET /page/1 HTTP/1.0\r\n\r\n",
        b"GET /page/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        head, body = await exchange(request)
        assert b"\r\nConnection: close" in head and len(body) == length(head)
    # Two requests in one packet: a head without a body, then the second answer.
    head, rest = await exchange(
        b"HEAD /page/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /page/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    second_head, _, second_body = rest.partition(b"\r\n\r\n")
    assert length(head) > 2000 and b"Connection" not in head and not rest.startswith(b"<")
    assert second_head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in second_head
    assert b"<title>Page 2</title>" in second_body and len(second_body) == length(second_head)
    # No Content-Length: chunked for HTTP/1.1 (test_slow_routes), close-delimited for 1.0.
    head, body = await exchange(b"GET /drip?s=0.01 HTTP/1.0\r\n\r\n", until=b"<p>drip")
    assert b"transfer-encoding" not in head.lower() and b"Connection: close" in head
    assert body.startswith(b"<!DOCTYPE html>")
    with trio.fail_after(5):
        await site_server.wait_quiet()
    assert site_server.errors == []


# ---- subprocess mode ------------------------------------------------------------------------


@pytest.mark.slow
async def test_subprocess_mode(tmp_path: Path) -> None:
    log_path = tmp_path / "log.jsonl"
    robots_path = tmp_path / "robots.txt"
    robots_path.write_text("User-agent: *\nDisallow: /disallowed/\n")
    command = [
        sys.executable,
        "-m",
        "tests.web",
        "--ports",
        "3",
        "--pages",
        "50",
        "--latency",
        "0.01",
        "--robots-file",
        str(robots_path),
        "--log",
        str(log_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await trio.lowlevel.open_process(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1024)
                assert chunk, "the test web exited before printing its ports"
                line += chunk
        ports = json.loads(line)["ports"]
        assert len(ports) == 3
        async with httpx.AsyncClient() as client:
            page = await client.get(f"http://127.0.0.1:{ports[2]}/page/49")
            robots = await client.get(f"http://127.0.0.1:{ports[0]}/robots.txt")
        assert page.status_code == 200 and "<title>Page 49</title>" in page.text
        assert robots.text == robots_path.read_text()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    records = load_log(log_path)
    assert [(r.port, r.path, r.status) for r in records] == [
        (ports[2], "/page/49", 200),
        (ports[0], "/robots.txt", 200),
    ]
    assert all(r.end - r.start >= 0.01 for r in records)
