"""TrioTransport.get, the engine's path without httpx Request/Response objects.

It shares the pool, framing and error handling with handle_async_request (see
test_transport.py); these tests pin what is its own: the cached per-origin request
head, plain-TCP I/O through a duplicate socket, and the caller's deadline.
"""

from __future__ import annotations

import os
import ssl

import httpx
import pytest
import trio
import trustme

from crawler._transport import Reply, TrioTransport
from tests.web.core import Conn, RequestRecord, raw_server, responder

HEADERS = ((b"User-Agent", b"test-agent"), (b"Accept", b"text/html"))


def ok(body: bytes = b"hello") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def read(reply: Reply) -> bytes:
    try:
        return b"".join([chunk async for chunk in reply.stream])
    finally:
        await reply.stream.aclose()


async def test_get_sends_a_cached_head_and_reuses_the_connection() -> None:
    wire = b"HTTP/1.1 203 Fine\r\nX-Mixed-Case: One\r\nContent-Length: 2\r\n\r\nhi"
    async with (
        raw_server(responder(wire)) as server,
        TrioTransport(read_timeout=2.0) as transport,
    ):
        origin = f"http://127.0.0.1:{server.port}"
        for i in range(3):
            reply = await transport.get(origin, f"/p/{i}?q=1", HEADERS)
            assert await read(reply) == b"hi"
            assert (reply.status, reply.reason, reply.http_version) == (203, b"Fine", b"HTTP/1.1")
            assert reply.headers == [(b"X-Mixed-Case", b"One"), (b"Content-Length", b"2")]
            host = f"127.0.0.1:{server.port}".encode()
            assert reply.request_headers == [(b"Host", host), *HEADERS]
        assert server.connections == 1
        assert [r.path for r in server.log] == ["/p/0?q=1", "/p/1?q=1", "/p/2?q=1"]
        for request in server.log:
            assert request.method == "GET"
            assert request.headers["user-agent"] == "test-agent"
            assert request.headers["host"] == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nhello",  # close-delimited: the server hangs up
    ],
)
async def test_get_reads_chunked_and_close_delimited_bodies(wire: bytes) -> None:
    close_after = 1 if wire.startswith(b"HTTP/1.0") else None
    async with (
        raw_server(responder(wire, close_after=close_after)) as server,
        TrioTransport(read_timeout=2.0) as transport,
    ):
        reply = await transport.get(f"http://127.0.0.1:{server.port}", "/")
        assert await read(reply) == b"hello"


async def test_get_retries_a_stale_pooled_connection_once() -> None:
    async with (
        raw_server(responder(ok(), close_after=1)) as server,
        TrioTransport(read_timeout=2.0) as transport,
    ):
        origin = f"http://127.0.0.1:{server.port}"
        for _ in range(3):
            assert await read(await transport.get(origin, "/")) == b"hello"
            await trio.sleep(0.02)  # the server closes the idle connection
        assert server.connections == 3


async def test_get_deadline_bounds_a_dripping_response() -> None:
    async def drip(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while True:  # never silent for read_timeout, never done
            await peer.send(b"x")
            await trio.sleep(0.02)

    async with raw_server(drip) as server, TrioTransport(read_timeout=5.0) as transport:
        start = trio.current_time()
        reply = await transport.get(f"http://127.0.0.1:{server.port}", "/", deadline=start + 0.3)
        with trio.fail_after(3), pytest.raises(httpx.ReadTimeout):  # not: drip forever
            await read(reply)
        assert 0.25 < trio.current_time() - start < 2.0


async def test_get_deadline_bounds_a_silent_head() -> None:
    async def silent(peer: Conn) -> None:
        await peer.read_request()
        await trio.sleep_forever()

    async with raw_server(silent) as server, TrioTransport(read_timeout=5.0) as transport:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await transport.get(f"http://127.0.0.1:{server.port}", "/", deadline=start + 0.2)
        assert trio.current_time() - start < 2.0


@pytest.mark.parametrize(
    ("origin", "target", "headers", "error"),
    [
        ("http://127.0.0.1:1", "/caf\u00e9", (), httpx.LocalProtocolError),
        ("http://127.0.0.1:1", "/a b", (), httpx.LocalProtocolError),
        ("ftp://127.0.0.1:1", "/", (), httpx.UnsupportedProtocol),
        ("http://127.0.0.1:1/path", "/", (), httpx.UnsupportedProtocol),
        ("http://127.0.0.1:1", "/", ((b"X-Bad", b"a\r\nb"),), httpx.LocalProtocolError),
    ],
)
async def test_get_refuses_bad_input_before_connecting(
    origin: str, target: str, headers: tuple[tuple[bytes, bytes], ...], error: type[Exception]
) -> None:
    async with TrioTransport() as transport:
        with pytest.raises(error):
            await transport.get(origin, target, headers)


async def test_get_over_tls() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with (
        raw_server(responder(ok(b"secure")), ssl_context=server_ctx) as server,
        TrioTransport(verify=client_ctx, read_timeout=2.0) as transport,
    ):
        origin = f"https://127.0.0.1:{server.port}"
        for _ in range(2):
            assert await read(await transport.get(origin, "/")) == b"secure"
        assert server.connections == 1


async def test_get_leaks_no_file_descriptors() -> None:
    def reset_or_ok(request: RequestRecord) -> bytes:
        return (
            ok() if request.path == "/ok" else b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"
        )

    before = open_fds()
    async with (
        raw_server(responder(reset_or_ok, close_after=1)) as server,
        TrioTransport(read_timeout=2.0) as transport,
    ):
        origin = f"http://127.0.0.1:{server.port}"
        with trio.fail_after(10):
            for _ in range(5):
                assert await read(await transport.get(origin, "/ok")) == b"hello"
                # Closed by the server once idle: found so, not sent on (a request on
                # it as it closes would fail, and is not re-sent by the transport).
                await server.wait_open_connections(0)
                with pytest.raises(httpx.ReadError):  # truncated body: connection dropped
                    await read(await transport.get(origin, "/short"))
                reply = await transport.get(origin, "/ok")
                await reply.stream.aclose()  # abandoned before the body: connection closed
                await server.wait_open_connections(0)
    assert open_fds() == before


async def test_get_holds_one_descriptor_per_pooled_connection() -> None:
    async with raw_server(responder(ok())) as server:
        before = open_fds()
        async with TrioTransport(read_timeout=2.0) as transport:
            origin = f"http://127.0.0.1:{server.port}"
            await server.wait_open_connections(0)
            assert await read(await transport.get(origin, "/")) == b"hello"
            await server.wait_open_connections(1)
            # the server's end of the connection and ours: nothing duplicated
            assert open_fds() == before + 2
        assert transport.idle_connections() == 0
