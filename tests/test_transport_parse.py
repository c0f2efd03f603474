"""Response parsing by llhttp: where it differs from h11, and what we decided.

TrioTransport used h11 until llhttp (httptools) replaced it on the response side. These
tests pin each case where the two parsers disagree, as a crawler should take it:

* accepted, as h11 did: bare LF line ends, obs-fold continuation lines (RFC 9112 5.2:
  a user agent must accept them), control bytes other than NUL in a value, ``HTTP/1.2``;
* refused, as h11 did: NUL in a value, whitespace before a colon, a Transfer-Encoding
  other than one ``chunked``, a status code under 100, an unasked 101; and, where h11
  accepted, ``chunked`` followed by a tab (llhttp would read it to EOF, chunk framing
  and all);
* refused, where h11 accepted: a repeated Content-Length, even an equal one, and
  Content-Length with Transfer-Encoding (RFC 9112 6.1: "ought to be handled as an
  error"; either is how responses get split);
* reused, where h11 closed: an HTTP/1.0 response saying ``Connection: keep-alive``,
  and a connection whose response was followed by a stray CRLF (ignored before a
  status line, RFC 9112 2.2); any other byte after a response still closes it.
"""

from __future__ import annotations

from itertools import pairwise

import httpx
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crawler._transport import TrioTransport, _Malformed, _Response
from tests.test_transport import fetch, make_transport, ok
from tests.web.core import Conn, RequestRecord, raw_server, responder

HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"


@pytest.mark.parametrize(
    ("wire", "header"),
    [
        (b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 5\n\nhello", b"1"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 5\r\n\r\nhello", b"1"),
        (HELLO + b"X-A: one\r\n two\r\n\r\nhello", b"one two"),
        (HELLO + b"X-A: a\x01b\x7f\r\n\r\nhello", b"a\x01b\x7f"),
        (HELLO + b"X-A: \t padded \t \r\n\r\nhello", b"padded"),
        (b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\nX-A: v\r\n\r\nhello", b"v"),
    ],
    ids=["bare-lf", "mixed-lf", "obs-fold", "control-bytes", "whitespace", "http-1.2"],
)
async def test_lenient_where_h11_was(wire: bytes, header: bytes) -> None:
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin())
    assert (response.status_code, body) == (200, b"hello")
    assert response.headers.get_list("x-a") == [header.decode("latin-1")]


@pytest.mark.parametrize(
    "wire",
    [
        HELLO + b"Content-Length: 5\r\n\r\nhello",
        HELLO + b"Content-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        HELLO + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        HELLO + b"X-A: a\x00b\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 099 Low\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX Y: 1\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    ],
    ids=[
        "content-length-twice-equal",
        "content-length-twice-different",
        "content-length-list",
        "content-length-and-chunked",
        "transfer-encoding-gzip",
        "transfer-encoding-gzip-chunked",
        "transfer-encoding-twice",
        "bad-chunk-size",
        "transfer-encoding-tab",
        "transfer-encoding-empty-element",
        "nul-in-value",
        "space-before-colon",
        "bare-cr-in-value",
        "status-under-100",
        "unasked-101",
        "space-in-name",
        "negative-length",
    ],
)
async def test_malformed_responses_are_protocol_errors(wire: bytes) -> None:
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        with trio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, server.origin())
        assert transport.idle_connections() == 0
        with trio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
            await transport.get(server.origin(), "/")
        assert transport.idle_connections() == 0


@pytest.mark.parametrize(
    "after",
    [b"XYZ", b"\x00", ok(b"second"), b"HTTP/1.1 200 OK\r\n"],
    ids=["garbage", "nul", "whole-response", "partial-response"],
)
async def test_bytes_after_a_response_spoil_the_connection(after: bytes) -> None:
    async with raw_server(responder(ok() + after)) as server, make_transport() as transport:
        _, body = await fetch(transport, server.origin())
        assert body == b"hello"
        assert transport.idle_connections() == 0
        reply = await transport.get(server.origin(), "/")
        assert b"".join([chunk async for chunk in reply.stream]) == b"hello"
        assert transport.idle_connections() == 0
        assert server.connections == 2


async def test_bytes_after_connection_close_response_are_ignored() -> None:
    wire = ok(extra=b"Connection: close\r\n") + b"junk"
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        _, body = await fetch(transport, server.origin())
    assert body == b"hello"


async def test_stray_crlf_after_a_response_is_ignored() -> None:
    # llhttp skips empty lines before a status line (h11 kept them, and closed).
    async with raw_server(responder(ok() + b"\r\n")) as server, make_transport() as transport:
        for _ in range(3):
            _, body = await fetch(transport, server.origin())
            assert body == b"hello"
        assert server.connections == 1


async def test_http10_keep_alive_response_is_reused() -> None:
    wire = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        for _ in range(3):
            response, body = await fetch(transport, server.origin())
            assert body == b"hello"
            assert response.extensions["http_version"] == b"HTTP/1.0"
        assert server.connections == 1


async def test_http10_response_without_keep_alive_is_not_reused() -> None:
    wire = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        for _ in range(2):
            _, body = await fetch(transport, server.origin())
            assert body == b"hello"
        assert transport.idle_connections() == 0
        assert server.connections == 2


async def test_request_saying_connection_close_is_not_pooled() -> None:
    async with raw_server(responder(ok())) as server, make_transport() as transport:
        _, body = await fetch(transport, server.origin(), headers={"Connection": "close"})
        assert body == b"hello"
        assert transport.idle_connections() == 0
        reply = await transport.get(server.origin(), "/", ((b"Connection", b"Close"),))
        assert b"".join([chunk async for chunk in reply.stream]) == b"hello"
        assert transport.idle_connections() == 0
        assert server.connections == 2


async def test_head_response_with_a_body_is_read_as_head_only() -> None:
    # 1xx first, then a head whose (bogus) body follows it: the body is not read
    # as the next response; the connection is closed instead.
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + HELLO + b"\r\nhello"
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        response, body = await fetch(transport, server.origin(), "HEAD")
        assert (response.status_code, body) == (200, b"")
        assert transport.idle_connections() == 0


async def test_too_many_informational_responses() -> None:
    wire = b"HTTP/1.1 103 Early Hints\r\n\r\n" * 33 + ok()
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="1xx"):
            await fetch(transport, server.origin())
    wire = b"HTTP/1.1 103 Early Hints\r\n\r\n" * 32 + ok()
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        _, body = await fetch(transport, server.origin())
        assert body == b"hello"


@pytest.mark.parametrize("body", [b"", b"x" * 200_000])
async def test_close_delimited_body_ends_at_eof(body: bytes) -> None:
    async def handler(peer: Conn) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for offset in range(0, len(body), 50_000):
            await trio.sleep(0.005)
            await peer.send(body[offset : offset + 50_000])

    async with raw_server(handler) as server, make_transport() as transport:
        with trio.fail_after(5):
            _, received = await fetch(transport, server.origin())
            assert received == body
            reply = await transport.get(server.origin(), "/")
            assert b"".join([chunk async for chunk in reply.stream]) == body
        assert transport.idle_connections() == 0


async def test_trailers_are_bounded_like_a_head() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 100) for i in range(3000))
        + b"\r\n"
    )
    async with raw_server(responder(wire)) as server, make_transport() as transport:
        with trio.fail_after(5), pytest.raises(httpx.RemoteProtocolError, match="trailers"):
            await fetch(transport, server.origin())
    limited = make_transport(max_header_bytes=400_000)
    async with raw_server(responder(wire)) as server, limited:
        with trio.fail_after(5):
            _, body = await fetch(limited, server.origin())
        assert body == b"hello"
        assert limited.idle_connections() == 1


async def test_response_dripped_a_byte_at_a_time() -> None:
    wire = (
        b"HTTP/1.1 203 Quite Fine\r\nX-Long: " + b"v" * 40 + b"\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    )

    async def drip(peer: Conn) -> None:
        while await peer.read_request():
            for i in range(len(wire)):
                await peer.send(wire[i : i + 1])
                await trio.sleep(0.001)  # one read per byte, mostly

    async with raw_server(drip) as server, make_transport() as transport:
        with trio.fail_after(10):
            for _ in range(2):
                reply = await transport.get(server.origin(), "/")
                assert b"".join([chunk async for chunk in reply.stream]) == b"hello world"
                assert (reply.status, reply.reason) == (203, b"Quite Fine")
                assert reply.headers == [
                    (b"X-Long", b"v" * 40),
                    (b"Transfer-Encoding", b"chunked"),
                ]
        assert server.connections == 1


def test_parser_fed_a_byte_at_a_time() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"body", extra=b"X-A: a\r\n b\r\n") + b"\r\n"
    response = _Response(head_only=False, reusable=True)
    for i in range(len(wire)):
        response.feed(wire[i : i + 1])
    assert (response.parser.get_status_code(), response.reason) == (200, b"OK")
    assert response.headers == [(b"Content-Length", b"4"), (b"X-A", b"a b")]
    assert b"".join(response.chunks) == b"body"
    assert response.done and response.keep_alive and not response.trailing


def test_parser_error_names_the_fault() -> None:
    response = _Response(head_only=False, reusable=True)
    with pytest.raises(_Malformed, match="Duplicate Content-Length"):
        response.feed(HELLO + b"Content-Length: 5\r\n\r\nhello")


async def test_get_and_handle_async_request_send_the_same_head() -> None:
    seen: list[RequestRecord] = []

    def record(request: RequestRecord) -> bytes:
        seen.append(request)
        return ok()

    headers = ((b"User-Agent", b"ua"), (b"Accept", b"*/*"))
    async with raw_server(responder(record)) as server, TrioTransport() as transport:
        reply = await transport.get(server.origin(), "/x?y=1", headers)
        await reply.stream.aclose()
        await fetch(transport, server.origin() + "/x?y=1", headers=list(headers))
    get, via_httpx = seen
    assert (get.method, get.path) == (via_httpx.method, via_httpx.path) == ("GET", "/x?y=1")
    host = (b"Host", f"127.0.0.1:{server.port}".encode())
    assert get.raw_headers[0] == via_httpx.raw_headers[0] == host
    assert get.raw_headers[1:] == [(b"User-Agent", b"ua"), (b"Accept", b"*/*")]


PIECES = [
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 204 No\r\n", b"HTTP/1.1 103 Hints\r\n\r\n",
    b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"X-A: v \r\n", b" folded\r\n", b"X-B:\x00\r\n", b"\n", b"\r\n", b"5\r\nhello\r\n",
    b"0\r\n\r\n", b"hello", b"garbage", b"HTTP/1.1 2x0\r\n",
]  # fmt: skip


def parse(data: bytes, cuts: list[int], *, head_only: bool) -> tuple[object, ...]:
    response = _Response(head_only=head_only, reusable=True)
    feed = response.feed_head if head_only else response.feed
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for start, end in pairwise(bounds):
            if end > start:
                feed(data[start:end])
    except _Malformed:
        return ("malformed",)
    return (
        response.head_done,
        response.done,
        response.parser.get_status_code() if response.head_done else None,
        response.reason if response.head_done else None,
        response.headers if response.head_done else None,
        b"".join(response.chunks),
        response.keep_alive,
        response.until_eof,
        response.trailing,
    )


@given(
    st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    st.booleans(),
)
@settings(max_examples=300, deadline=None, derandomize=True)
# A read ending just after the first byte of a next response: llhttp stops there.
@example(ok() + b"HTTP/1.1 200 OK\r\n", [44], False)
def test_parse_does_not_depend_on_how_bytes_arrive(
    data: bytes, cuts: list[int], head_only: bool
) -> None:
    assert parse(data, cuts, head_only=head_only) == parse(data, [], head_only=head_only)
