"""TrioTransport against real loopback servers that script raw bytes on the wire."""

from __future__ import annotations

import gzip
import os
import socket
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

import httpx
import pytest
import trio
import trustme

from crawler._transport import TrioTransport
from tests.web.core import Conn, RequestRecord, raw_server, responder


def make_transport(**options: Any) -> TrioTransport:
    """A transport with short timeouts (a broken test fails fast, not in 15 s)."""
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("read_timeout", 2.0)
    return TrioTransport(**options)


def ok(body: bytes = b"hello", *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def fetch(
    transport: TrioTransport, url: str, method: str = "GET", **kwargs: Any
) -> tuple[httpx.Response, bytes]:
    """What the engine does: handle_async_request, aiter_raw, aclose."""
    request = httpx.Request(method, url, **kwargs)
    response = await transport.handle_async_request(request)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response, body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- framing


async def test_content_length_body_headers_and_version() -> None:
    wire = (
        b"HTTP/1.1 200 Fine\r\nX-Mixed-Case: One\r\nContent-Length: 5\r\n"
        b"set-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"
    )
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin() + "/path?q=1")
    assert response.status_code == 200
    assert body == b"hello"
    assert response.headers.raw == [
        (b"X-Mixed-Case", b"One"),
        (b"Content-Length", b"5"),
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert response.extensions["http_version"] == b"HTTP/1.1"
    assert response.extensions["reason_phrase"] == b"Fine"
    assert response.request.url == server.origin() + "/path?q=1"
    (req,) = server.log
    assert req.method == "GET"
    assert req.path == "/path?q=1"
    assert req.headers["host"] == f"127.0.0.1:{server.port}"


async def test_chunked_body_is_dechunked_and_streamed() -> None:
    async def handler(peer: Conn) -> None:
        while await peer.read_request():
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await trio.sleep(0.02)  # the body arrives in pieces: read on demand
            await peer.send(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    async with raw_server(handler) as server, make_transport() as transport:
        request = httpx.Request("GET", server.origin())
        response = await transport.handle_async_request(request)
        chunks = [chunk async for chunk in response.aiter_raw()]
        await response.aclose()
        assert chunks == [b"hello", b" world"]
        assert transport.idle_connections() == 1


async def test_close_delimited_http10_body() -> None:
    async def handler(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await trio.sleep(0.02)
        await peer.send(b"second")
        # returning closes the connection: that ends the body

    async with raw_server(handler) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin())
        assert body == b"first second"
        assert response.extensions["http_version"] == b"HTTP/1.0"
        assert transport.idle_connections() == 0


async def test_head_has_no_body_and_connection_is_reused() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"

    def respond(req: RequestRecord) -> bytes:
        return wire if req.method == "HEAD" else ok(b"after head")

    async with raw_server(responder(respond)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin(), "HEAD")
        assert (response.status_code, body) == (200, b"")
        assert response.headers["content-length"] == "12345"
        _, body = await fetch(transport, server.origin())
        assert body == b"after head"
        assert server.connections == 1


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_204_and_304_have_no_body(status: bytes) -> None:
    # A (bogus) Content-Length on 204/304 must not make us wait for a body.
    wire = b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n"
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin())
        assert body == b""
        assert response.status_code == int(status[:3])
        _, body = await fetch(transport, server.origin())
        assert server.connections == 1


async def test_informational_responses_are_skipped() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok(b"final")
    )
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin())
    assert (response.status_code, body) == (200, b"final")
    assert "link" not in response.headers


async def test_gzip_body_is_returned_still_encoded() -> None:
    payload = b"<html>" + b"compressible " * 500 + b"</html>"
    encoded = gzip.compress(payload)
    wire = ok(encoded, extra=b"Content-Encoding: gzip\r\n")
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin())
        assert body == encoded
        assert response.headers["content-encoding"] == "gzip"
        # ... while AsyncClient on top decodes it as usual.
        async with httpx.AsyncClient(transport=transport) as client:
            decoded = await client.get(server.origin())
        assert decoded.content == payload


# ---------------------------------------------------------------- request bodies


async def test_request_bodies_content_length_and_chunked() -> None:
    def echo(req: RequestRecord) -> bytes:
        framing = b"chunked" if req.headers.get("transfer-encoding") else b"length"
        return ok(framing + b":" + req.body)

    async def parts() -> AsyncIterator[bytes]:
        yield b"part1-"
        yield b""
        yield b"part2"

    async with raw_server(responder(echo)) as server, make_transport() as transport:
        _, body = await fetch(transport, server.origin(), "POST", content=b"payload")
        assert body == b"length:payload"
        _, body = await fetch(transport, server.origin(), "POST", content=parts())
        assert body == b"chunked:part1-part2"
        big = os.urandom(300_000)
        _, body = await fetch(transport, server.origin(), "PUT", content=big)
        assert body == b"length:" + big
        assert server.connections == 1


# ---------------------------------------------------------------- keep-alive pool


async def test_keepalive_reuses_connections() -> None:
    async with raw_server(responder(ok())) as server, make_transport() as transport:
        for _ in range(20):
            _, body = await fetch(transport, server.origin())
            assert body == b"hello"
        assert len(server.log) == 20
        assert server.connections == 1


async def test_pool_size_per_origin_is_bounded() -> None:
    async def slow(peer: Conn) -> None:
        while await peer.read_request():
            await trio.sleep(0.05)
            await peer.send(ok())

    transport = make_transport(max_connections_per_origin=2)
    async with raw_server(slow) as server, transport:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(fetch, transport, server.origin())
        assert server.connections == 6
        assert transport.idle_connections() == 2
        await server.wait_open_connections(2)


async def test_connection_closed_while_idle_is_detected_before_sending() -> None:
    # The server answers one request per connection, then closes it while idle
    # (without saying "Connection: close"): the pooled connection is found closed
    # before anything is sent on it, and each request goes out once, on a fresh one.
    async with (
        raw_server(responder(ok(), close_after=1)) as server,
        make_transport() as transport,
    ):
        with trio.fail_after(5):
            for _ in range(5):
                _, body = await fetch(transport, server.origin())
                assert body == b"hello"
                assert transport.idle_connections() == 1
                await server.wait_open_connections(0)  # the server closed it
        assert server.connections == 5
        assert len(server.log) == 5


def reset(peer: Conn) -> None:
    """Make closing the peer's connection send a TCP RST (SO_LINGER 0)."""
    stream = peer.stream
    assert isinstance(stream, trio.SocketStream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("rst", [True, False], ids=["reset", "closed"])
async def test_request_read_then_connection_lost_is_not_resent(rst: bool) -> None:
    # The server reads the second request on a keep-alive connection, then drops the
    # connection: it may have acted on the request, so the transport does not send it
    # again (that is the caller's call, under its rate limit).
    async def second_request_dropped(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(ok())
        await peer.read_request()
        if rst:
            reset(peer)

    async with raw_server(second_request_dropped) as server, make_transport() as transport:
        with trio.fail_after(5):
            await fetch(transport, server.origin())
            assert transport.idle_connections() == 1
            with pytest.raises(httpx.ReadError) as info:
                await fetch(transport, server.origin() + "/again")
        assert info.value.request.url.path == "/again"
        assert [r.path for r in server.log] == ["/", "/again"]
        assert server.connections == 1
        assert transport.idle_connections() == 0


async def test_stale_detection_drops_older_idle_connections() -> None:
    async def slow_then_close(peer: Conn) -> None:
        await responder(ok(), close_after=1)(peer)

    async with raw_server(slow_then_close) as server, make_transport() as transport:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(fetch, transport, server.origin())
        assert transport.idle_connections() == 3
        await server.wait_open_connections(0)
        # One request: the newest idle connection is found closed, so the two other
        # (older) ones are discarded unchecked, and a fresh connection is used.
        _, body = await fetch(transport, server.origin())
        assert body == b"hello"
        assert server.connections == 4
        assert transport.idle_connections() == 1


async def test_new_connection_is_not_retried() -> None:
    async def hang_up(peer: Conn) -> None:
        await peer.read_request()  # then close without answering

    async with raw_server(hang_up) as server, make_transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await fetch(transport, server.origin())
        assert info.value.request.url == server.origin()
        assert server.connections == 1


async def test_expired_idle_connections_are_not_reused() -> None:
    transport = make_transport(keepalive_expiry=0.05)
    async with raw_server(responder(ok())) as server, transport:
        await fetch(transport, server.origin())
        await fetch(transport, server.origin())
        assert server.connections == 1
        await trio.sleep(0.1)
        await fetch(transport, server.origin())
        assert server.connections == 2
        await server.wait_open_connections(1)  # the expired one was closed


async def test_connection_close_response_is_not_pooled() -> None:
    wire = ok(extra=b"Connection: close\r\n")
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        await fetch(transport, server.origin())
        await fetch(transport, server.origin())
        assert transport.idle_connections() == 0
        assert server.connections == 2


# ---------------------------------------------------------------- errors


async def test_oversized_headers_raise_remote_protocol_error() -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(responder(big)) as server, make_transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, server.origin())
    # A complete head that arrives in one read is checked too.
    small_limit = make_transport(max_header_bytes=1024)
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(responder(head)) as server, small_limit:
        with pytest.raises(httpx.RemoteProtocolError, match="head"):
            await fetch(small_limit, server.origin())


async def test_too_many_headers_raise_remote_protocol_error() -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(201))
    async with raw_server(responder(ok(extra=many))) as server, make_transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="header fields"):
            await fetch(transport, server.origin())
    limited = make_transport(max_headers=5)
    few = b"".join(b"X-H%d: v\r\n" % i for i in range(4))
    async with raw_server(responder(ok(extra=few))) as server, limited:
        _, body = await fetch(limited, server.origin())  # 5 fields: allowed
        assert body == b"hello"


async def test_malformed_status_line_is_remote_protocol_error() -> None:
    async with (
        raw_server(responder(b"HTTP/1.1 2x0 What\r\n\r\n")) as server,
        make_transport() as transport,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, server.origin())


@pytest.mark.parametrize("chunked", [False, True])
async def test_truncated_body_raises_read_error(chunked: bool) -> None:
    if chunked:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-part"
    else:
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"

    async def truncate(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(wire)

    async with raw_server(truncate) as server, make_transport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.origin()))
        received = b""
        with pytest.raises(httpx.ReadError):
            async for chunk in response.aiter_raw():
                received += chunk
        await response.aclose()
        assert received in (b"only ten b", b"only-part")


async def test_silent_server_raises_read_timeout() -> None:
    async def silent(peer: Conn) -> None:
        await peer.wait_eof()

    transport = TrioTransport(connect_timeout=1.0, read_timeout=0.2)
    async with raw_server(silent) as server, transport:
        with trio.fail_after(2):
            with pytest.raises(httpx.ReadTimeout):
                await fetch(transport, server.origin())
        await server.wait_open_connections(0)


async def test_stalled_body_raises_read_timeout() -> None:
    async def stall(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.wait_eof()

    transport = TrioTransport(connect_timeout=1.0, read_timeout=0.2)
    async with raw_server(stall) as server, transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.origin()))
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
        await response.aclose()
        await server.wait_open_connections(0)


async def test_unread_request_body_raises_write_timeout() -> None:
    async def never_reads(peer: Conn) -> None:
        await trio.sleep_forever()

    async def endless() -> AsyncGenerator[bytes, None]:
        block = b"x" * 1_000_000
        for _ in range(200):
            yield block

    transport = TrioTransport(connect_timeout=1.0, read_timeout=0.2)
    async with raw_server(never_reads) as server, transport, aclosing(endless()) as body:
        with trio.fail_after(5), pytest.raises(httpx.WriteTimeout):
            await fetch(transport, server.origin(), "POST", content=body)


async def test_connection_refused_is_connect_error() -> None:
    port = free_port()
    async with make_transport() as transport:
        with trio.fail_after(5), pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, f"http://127.0.0.1:{port}/")
        assert info.value.request.url.path == "/"
    # trio wraps the refusal in "all attempts to connect ... failed": said once, plainly.
    assert str(info.value) == f"connection refused (127.0.0.1:{port})"


async def test_connection_refused_on_every_address_is_said_once() -> None:
    port = free_port()

    async def two_addresses(host: str, port: int) -> trio.abc.Stream:
        errors = [ConnectionRefusedError(111, "Connection refused") for _ in range(2)]
        raise OSError(f"all attempts to connect to {host}:{port} failed") from ExceptionGroup(
            "attempts", errors
        )

    async with make_transport(connect=two_addresses) as transport:
        with trio.fail_after(5), pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, f"http://localhost:{port}/")
    assert str(info.value) == f"connection refused (localhost:{port})"


async def test_dns_failure_is_connect_error() -> None:
    async def no_such_host(host: str, port: int) -> trio.abc.Stream:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with make_transport(connect=no_such_host) as transport:
        with pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, "http://no-such-host.invalid/")
    message = str(info.value)
    assert message == "DNS lookup failed for no-such-host.invalid (Name or service not known)"


async def test_dns_failure_of_a_real_lookup() -> None:
    # .invalid never resolves (RFC 6761), and the resolver answers that without
    # the network.
    async with make_transport() as transport:
        with trio.fail_after(10), pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, "http://no-such-host.invalid/")
    message = str(info.value)
    assert message.startswith("DNS lookup failed for no-such-host.invalid (")
    assert message.count("no-such-host.invalid") == 1


async def test_connect_timeout() -> None:
    async def blackhole(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()

    async with TrioTransport(connect=blackhole, connect_timeout=0.1) as transport:
        with trio.fail_after(2), pytest.raises(httpx.ConnectTimeout) as info:
            await fetch(transport, "http://example.test/")
    assert str(info.value) == "timed out after 0.1 s connecting to example.test:80"


async def test_connect_hook_is_used() -> None:
    seen: list[tuple[str, int]] = []
    async with raw_server(responder(ok(b"via hook"))) as server:

        async def to_server(host: str, port: int) -> trio.abc.Stream:
            seen.append((host, port))
            return await trio.open_tcp_stream("127.0.0.1", server.port)

        async with make_transport(connect=to_server) as transport:
            _, body = await fetch(transport, "http://www.example.com/x")
    assert body == b"via hook"
    assert seen == [("www.example.com", 80)]
    assert server.log[0].headers["host"] == "www.example.com"


async def test_unsupported_scheme() -> None:
    async with TrioTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await fetch(transport, "ftp://example.com/")


async def test_invalid_request_header_is_local_protocol_error() -> None:
    async with raw_server(responder(ok())) as server, make_transport() as transport:
        request = httpx.Request("GET", server.origin(), headers={"X-Bad": "a\x00b"})
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(request)
        assert server.connections == 0


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


async def test_tls_with_trusted_ca(ca: trustme.CA) -> None:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with (
        raw_server(responder(ok(b"secure")), ssl_context=tls_server_context(ca)) as server,
        make_transport(verify=client_ctx) as transport,
    ):
        url = f"https://127.0.0.1:{server.port}/"
        for _ in range(3):
            response, body = await fetch(transport, url)
            assert (response.status_code, body) == (200, b"secure")
        assert server.connections == 1


async def test_tls_default_verification_rejects_unknown_ca(ca: trustme.CA) -> None:
    async with (
        raw_server(responder(ok()), ssl_context=tls_server_context(ca)) as server,
        make_transport() as transport,
    ):
        with trio.fail_after(5), pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, f"https://127.0.0.1:{server.port}/")
    # The verify_message, said once (trio wraps the SSLError in a BrokenResourceError).
    assert str(info.value) == (
        "TLS certificate verification failed for 127.0.0.1: unable to get local issuer certificate"
    )


async def test_tls_verify_false_accepts_unknown_ca(ca: trustme.CA) -> None:
    async with (
        raw_server(responder(ok(b"anyway")), ssl_context=tls_server_context(ca)) as server,
        make_transport(verify=False) as transport,
    ):
        _, body = await fetch(transport, f"https://127.0.0.1:{server.port}/")
    assert body == b"anyway"


async def test_tls_connection_closed_while_idle_is_not_reused(ca: trustme.CA) -> None:
    # The check looks at the socket under the TLS layer.
    async with (
        raw_server(responder(ok(), close_after=1), ssl_context=tls_server_context(ca)) as server,
        make_transport(verify=False) as transport,
    ):
        with trio.fail_after(5):
            for _ in range(3):
                _, body = await fetch(transport, f"https://127.0.0.1:{server.port}/")
                assert body == b"hello"
                await server.wait_open_connections(0)
        assert server.connections == 3
        assert len(server.log) == 3


# ---------------------------------------------------------------- closing, cancellation, leaks


async def test_aclose_mid_body_closes_the_connection() -> None:
    async def big(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        await peer.wait_eof()
        peer.web.client_closed.set()

    async with raw_server(big) as server, make_transport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.origin()))
        async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_raw())) as chunks:
            async for chunk in chunks:
                assert chunk
                break
        await response.aclose()
        with trio.fail_after(1):
            await server.client_closed.wait()
        assert transport.idle_connections() == 0


async def test_cancellation_mid_request_leaves_no_socket() -> None:
    async def silent(peer: Conn) -> None:
        await peer.wait_eof()
        peer.web.client_closed.set()

    before = open_fds()
    async with raw_server(silent) as server, make_transport() as transport:
        with trio.move_on_after(0.1) as scope:
            await fetch(transport, server.origin())
        assert scope.cancelled_caught
        with trio.fail_after(1):
            await server.client_closed.wait()
        assert transport.idle_connections() == 0
    assert open_fds() == before


async def test_cancellation_mid_body_closes_the_connection() -> None:
    async def trickle(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await peer.wait_eof()
        peer.web.client_closed.set()

    async with raw_server(trickle) as server, make_transport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.origin()))
        with trio.move_on_after(0.1):
            await response.aread()
        with trio.fail_after(1):
            await server.client_closed.wait()
        await response.aclose()


async def test_no_file_descriptor_leaks_across_error_cases(ca: trustme.CA) -> None:
    async def misbehave(peer: Conn) -> None:
        req = await peer.read_request()
        if req is None:
            return
        path = req.path
        if path == "/truncated":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
        elif path == "/garbage":
            await peer.send(b"NOT HTTP AT ALL\r\n\r\n")
        elif path == "/silent":
            await peer.wait_eof()
        elif path == "/hangup":
            return
        elif path == "/huge-head":
            await peer.send(b"HTTP/1.1 200 OK\r\nX: " + b"h" * 100_000 + b"\r\n\r\n")
        else:
            await peer.send(ok())
            await peer.wait_eof()

    before = open_fds()
    async with raw_server(misbehave) as server:
        tls_ctx = tls_server_context(ca)
        async with raw_server(responder(ok()), ssl_context=tls_ctx) as tls_server:
            transport = TrioTransport(connect_timeout=1.0, read_timeout=0.15)
            async with transport:
                for _ in range(3):
                    for path in ("/truncated", "/garbage", "/silent", "/hangup", "/huge-head"):
                        with pytest.raises(httpx.TransportError):
                            await fetch(transport, server.origin() + path)
                    with pytest.raises(httpx.ConnectError):
                        await fetch(transport, f"http://127.0.0.1:{free_port()}/")
                    with pytest.raises(httpx.ConnectError):
                        await fetch(transport, f"https://127.0.0.1:{tls_server.port}/")
                    with trio.move_on_after(0.05):
                        await fetch(transport, server.origin() + "/silent")
                    _, body = await fetch(transport, server.origin() + "/ok")
                    assert body == b"hello"
                assert transport.idle_connections() == 1
    assert open_fds() == before


async def test_closed_transport_closes_pool_and_refuses_requests() -> None:
    async def keep(peer: Conn) -> None:
        await responder(ok())(peer)
        peer.web.client_closed.set()

    async with raw_server(keep) as server:
        transport = make_transport()
        await fetch(transport, server.origin())
        assert transport.idle_connections() == 1
        await transport.aclose()
        assert transport.idle_connections() == 0
        with trio.fail_after(1):
            await server.client_closed.wait()
        with pytest.raises(RuntimeError):
            await fetch(transport, server.origin())


# ---------------------------------------------------------------- AsyncClient


async def test_works_under_httpx_async_client() -> None:
    def respond(req: RequestRecord) -> bytes:
        if req.path == "/redirect":
            return b"HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n"
        return ok(f"{req.method} {req.path} ".encode() + req.body)

    async with (
        raw_server(responder(respond)) as server,
        httpx.AsyncClient(transport=make_transport(), follow_redirects=True) as client,
    ):
        response = await client.get(server.origin() + "/redirect")
        assert response.text == "GET /final "
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"
        response = await client.post(server.origin() + "/form", data={"a": "1"})
        assert response.text == "POST /form a=1"
        async with client.stream("GET", server.origin() + "/s") as streamed:
            assert await streamed.aread() == b"GET /s "
        assert server.connections == 1


def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError):
        TrioTransport(read_timeout=-1)
    with pytest.raises(ValueError):
        TrioTransport(connect_timeout=float("nan"))
    with pytest.raises(ValueError):
        TrioTransport(max_headers=0)
    with pytest.raises(ValueError):
        TrioTransport(max_connections_per_origin=-1)
