"""TrioTransport over TLS: the non-blocking ``ssl.SSLSocket`` path, against servers that
cut TLS records into pieces, close mid-body (with and without close_notify), send bodies
of many records, or leave decrypted bytes in OpenSSL's buffer; SNI, host name checks,
the handshake timeout, and the ``trio.SSLStream`` path kept for other streams."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio
import trustme

import crawler._transport as transport_module
from crawler._transport import TrioTransport
from tests.test_transport import fetch, free_port, ok, open_fds
from tests.web.core import Conn, Web

HOST = "site.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", HOST))).configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Trickle(trio.abc.Stream):
    """A server-side TCP stream that sends ``piece`` bytes at a time, a pause between,
    so that the client receives TLS records (the handshake's too) in fragments."""

    def __init__(self, inner: trio.SocketStream, piece: int) -> None:
        self.inner = inner
        self.piece = piece

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.piece):
            await self.inner.send_all(view[start : start + self.piece])
            await trio.sleep(0.0005)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


Handler = Callable[[Conn, trio.SSLStream[trio.abc.Stream]], Awaitable[None]]


@asynccontextmanager
async def tls_server(
    ctx: ssl.SSLContext, handler: Handler, *, piece: int | None = None
) -> AsyncIterator[Web]:
    """A TLS server (the test web's raw connections) whose handler gets the TLS stream
    itself, so that it can send a close_notify (``aclose``) or drop the TCP connection
    under it (``abort``); ``piece``: the TCP stream under TLS trickles."""

    async def handle(conn: Conn) -> None:
        assert isinstance(conn.stream, trio.SSLStream)
        await handler(conn, conn.stream)

    web = Web(handler=handle)

    async def on_connection(tcp: trio.SocketStream) -> None:
        transport: trio.abc.Stream = tcp if piece is None else Trickle(tcp, piece)
        tls = trio.SSLStream(transport, ctx, server_side=True, https_compatible=True)
        await web._connection(0, tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
        web.ports = [listeners[0].socket.getsockname()[1]]
        try:
            yield web
        finally:
            nursery.cancel_scope.cancel()


def answer(*responses: bytes) -> Handler:
    """Answer each request on the connection with ``responses`` (the last repeated)."""

    async def handle(peer: Conn, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        served = 0
        while await peer.read_request() is not None:
            await peer.send(responses[min(served, len(responses) - 1)])
            served += 1

    return handle


def tls_transport(ca: trustme.CA, **options: object) -> TrioTransport:
    options.setdefault("verify", client_context(ca))
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("read_timeout", 2.0)
    return TrioTransport(**options)  # type: ignore[arg-type]


def url(server: Web, path: str = "/") -> str:
    return f"https://127.0.0.1:{server.port}{path}"


async def test_records_in_small_pieces(ca: trustme.CA) -> None:
    # (A record is decrypted only once all of it is in: the read timeout, 2 s, must
    # cover the slowest record, ~100 pieces here.)
    body = bytes(range(256)) * 16
    async with (
        tls_server(server_context(ca), answer(ok(body)), piece=50) as server,
        tls_transport(ca) as transport,
    ):
        with trio.fail_after(20):
            for _ in range(2):
                response, got = await fetch(transport, url(server))
                assert (response.status_code, got) == (200, body)
        assert server.connections == 1


async def test_large_body_of_many_records_then_reuse(ca: trustme.CA) -> None:
    body = b"0123456789abcdef" * 65_536  # 1 MiB: some 64 records of 16 KiB
    async with (
        tls_server(server_context(ca), answer(ok(body), ok(b"next"))) as server,
        tls_transport(ca) as transport,
    ):
        with trio.fail_after(10):
            _, got = await fetch(transport, url(server))
            assert got == body
            _, got = await fetch(transport, url(server))
            assert got == b"next"
        assert server.connections == 1


async def test_decrypted_bytes_held_by_openssl_are_read_without_waiting(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads smaller than a TLS record leave the rest of it decrypted inside OpenSSL
    # (SSLSocket.pending()), with nothing left on the descriptor: waiting for the
    # descriptor to turn readable before reading would hang here.
    monkeypatch.setattr(transport_module, "_RECEIVE_SIZE", 100)
    body = b"x" * 200_000
    async with (
        tls_server(server_context(ca), answer(ok(body))) as server,
        tls_transport(ca) as transport,
    ):
        with trio.fail_after(10):
            _, got = await fetch(transport, url(server))
        assert got == body


async def test_idle_connection_with_decrypted_bytes_pending_is_not_reused(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One record holds the response and three stray bytes; a read of exactly the
    # response's size leaves those bytes in OpenSSL (invisible to poll(2)). The
    # connection must not carry the next request: its answer would start "XYZ".
    first = ok(b"hello")
    monkeypatch.setattr(transport_module, "_RECEIVE_SIZE", len(first))
    async with (
        tls_server(server_context(ca), answer(first + b"XYZ", ok(b"again"))) as server,
        tls_transport(ca) as transport,
    ):
        with trio.fail_after(5):
            _, got = await fetch(transport, url(server))
            assert got == b"hello"
            assert transport.idle_connections() == 1
            _, got = await fetch(transport, url(server))
            assert got == b"hello"  # a new connection's first answer
        assert server.connections == 2


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "abrupt"])
async def test_close_mid_body_is_a_read_error(ca: trustme.CA, notify: bool) -> None:
    async def cut(peer: Conn, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        if notify:
            await tls.aclose()  # close_notify, then TCP close
        else:
            await trio.aclose_forcefully(tls.transport_stream)  # TCP close only

    before = open_fds()
    async with tls_server(server_context(ca), cut) as server, tls_transport(ca) as transport:
        with trio.fail_after(5), pytest.raises(httpx.ReadError) as info:
            await fetch(transport, url(server))
        assert str(info.value) == "connection closed before the response body was complete"
        assert transport.idle_connections() == 0
        await server.wait_open_connections(0)
    assert open_fds() == before


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "abrupt"])
async def test_close_delimited_body_ends_at_close(ca: trustme.CA, notify: bool) -> None:
    # As with trio.SSLStream(https_compatible=True): an EOF without close_notify ends
    # a body that only the close delimits (servers commonly skip close_notify).
    async def until_close(peer: Conn, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 50_000)
        if notify:
            await tls.aclose()
        else:
            await trio.aclose_forcefully(tls.transport_stream)

    async with (
        tls_server(server_context(ca), until_close) as server,
        tls_transport(ca) as transport,
    ):
        with trio.fail_after(5):
            _, got = await fetch(transport, url(server))
        assert got == b"y" * 50_000
        assert transport.idle_connections() == 0


async def test_idle_connection_closed_with_close_notify_is_not_reused(ca: trustme.CA) -> None:
    async def once(peer: Conn, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        await peer.read_request()
        await peer.send(ok())
        await tls.aclose()

    async with tls_server(server_context(ca), once) as server, tls_transport(ca) as transport:
        with trio.fail_after(5):
            for _ in range(3):
                _, got = await fetch(transport, url(server))
                assert got == b"hello"
                await server.wait_open_connections(0)
        assert server.connections == 3


async def to_loopback(host: str, port: int) -> trio.SocketStream:
    """A connect hook: every host name is 127.0.0.1 (as DNS might say)."""
    return await trio.open_tcp_stream("127.0.0.1", port)


async def test_sni_and_host_name_check(ca: trustme.CA) -> None:
    names: list[str | None] = []
    ctx = server_context(ca, HOST)

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    ctx.sni_callback = sni
    async with (
        tls_server(ctx, answer(ok(b"by name"))) as server,
        tls_transport(ca, connect=to_loopback) as transport,
    ):
        _, got = await fetch(transport, f"https://{HOST}:{server.port}/")
    assert got == b"by name"
    assert names == [HOST]


async def test_host_name_mismatch_is_a_verification_failure(ca: trustme.CA) -> None:
    async with (
        tls_server(server_context(ca, "other.example"), answer(ok())) as server,
        tls_transport(ca, connect=to_loopback) as transport,
    ):
        with trio.fail_after(5), pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, f"https://{HOST}:{server.port}/")
    assert str(info.value).startswith(f"TLS certificate verification failed for {HOST}: ")
    assert "mismatch" in str(info.value)


async def test_handshake_timeout(ca: trustme.CA) -> None:
    # A server that accepts TCP and never says a TLS word.
    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    before = open_fds()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with tls_transport(ca, connect_timeout=0.2) as transport:
            with trio.fail_after(5), pytest.raises(httpx.ConnectTimeout):
                await fetch(transport, f"https://127.0.0.1:{port}/")
        nursery.cancel_scope.cancel()
    assert open_fds() == before


async def test_peer_closing_during_the_handshake(ca: trustme.CA) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65_536)  # all of the ClientHello, so no reset
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with tls_transport(ca) as transport:
            with trio.fail_after(5), pytest.raises(httpx.ConnectError) as info:
                await fetch(transport, f"https://127.0.0.1:{port}/")
        nursery.cancel_scope.cancel()
    # (What trio.SSLStream said too.)
    assert str(info.value) == "TLS handshake with 127.0.0.1 failed: UNEXPECTED_EOF_WHILE_READING"


async def test_connection_refused_over_tls(ca: trustme.CA) -> None:
    port = free_port()
    async with tls_transport(ca) as transport:
        with pytest.raises(httpx.ConnectError) as info:
            await fetch(transport, f"https://127.0.0.1:{port}/")
    assert str(info.value) == f"connection refused (127.0.0.1:{port})"


class Wrapped(trio.abc.Stream):
    """Not a trio.SocketStream: TLS over it goes through trio.SSLStream."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_other_streams_still_get_tls(ca: trustme.CA) -> None:
    async def wrapped(host: str, port: int) -> trio.abc.Stream:
        return Wrapped(await trio.open_tcp_stream(host, port))

    async with (
        tls_server(server_context(ca), answer(ok(b"wrapped"))) as server,
        tls_transport(ca, connect=wrapped) as transport,
    ):
        for _ in range(2):
            _, got = await fetch(transport, url(server))
            assert got == b"wrapped"
        assert server.connections == 1


async def test_get_over_tls_pools_and_cancels_cleanly(ca: trustme.CA) -> None:
    async def slow(peer: Conn, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        while (request := await peer.read_request()) is not None:
            if request.path == "/slow":
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                await peer.wait_eof()
                return
            await peer.send(ok())

    before = open_fds()
    async with tls_server(server_context(ca), slow) as server, tls_transport(ca) as transport:
        origin = f"https://127.0.0.1:{server.port}"
        reply = await transport.get(origin, "/")
        assert b"".join([chunk async for chunk in reply.stream]) == b"hello"
        with trio.move_on_after(0.1) as scope:
            reply = await transport.get(origin, "/slow")
            async for _ in reply.stream:
                pass
        assert scope.cancelled_caught
        assert transport.idle_connections() == 0
        await server.wait_open_connections(0)
    assert open_fds() == before
