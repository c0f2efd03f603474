"""Fetcher over the lean transport (its direct path, no httpx Request/Response): the
size cap on a body without Content-Encoding, and response headers as httpx.Headers
decodes them, whatever bytes they hold."""

from __future__ import annotations

import gzip

import httpx
import pytest
import trio

from crawler._fetch import Fetched, Fetcher, _headers
from crawler._page import ErrorKind
from crawler._transport import TrioTransport
from tests.web.core import http_response, raw_server, responder


async def fetch_once(response: bytes, *, max_bytes: int, keep: bool = False) -> Fetched:
    async with raw_server(responder(response, close_after=1)) as server:
        transport = TrioTransport(read_timeout=2.0)
        fetcher = Fetcher(
            transport,
            user_agent="test",
            timeout=5.0,
            max_bytes=max_bytes,
            keep_exchanges=keep,
            owns_transport=True,
        )
        try:
            with trio.fail_after(5):
                return await fetcher.fetch(server.url(0, "/page"))
        finally:
            await fetcher.aclose()


@pytest.mark.parametrize("size", [999, 1000, 1001, 100_000])
async def test_plain_body_is_cut_at_the_cap(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    # A stated length is refused up front; without one, the body is read and cut.
    unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    fetched = await fetch_once(unframed, max_bytes=1000, keep=True)
    assert fetched.body == body[:1000]
    assert fetched.truncated is (size > 1000)
    if size > 1000:
        assert fetched.error is not None and fetched.error.kind is ErrorKind.TOO_LARGE
        # What was read of it, whole pieces as received, the cut included.
        assert fetched.exchange is not None
        raw_body = fetched.exchange.raw_body
        assert len(raw_body) > 1000 and body.startswith(raw_body)
    else:
        assert fetched.error is None
        assert fetched.raw_size == size


async def test_encoded_body_still_decoded_and_capped() -> None:
    body = b"a" * 5000
    response = http_response(gzip.compress(body), headers=[(b"Content-Encoding", b"gzip")])
    fetched = await fetch_once(response, max_bytes=100_000)
    assert (fetched.body, fetched.error) == (body, None)
    fetched = await fetch_once(response, max_bytes=1000)
    assert fetched.body == body[:1000]
    assert fetched.error is not None and fetched.error.kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"text/html"), (b"X-Note", b"plain")],
        [(b"Content-Type", b"text/html"), (b"X-Note", "café".encode())],
        [(b"Content-Type", b"text/html"), (b"X-Note", b"caf\xe9")],
        [(b"X-\xff", b"v"), (b"Content-Type", b"text/html; charset=\xe9")],
        [],
    ],
)
def test_headers_read_as_httpx_reads_them(raw: list[tuple[bytes, bytes]]) -> None:
    ours, theirs = _headers(raw), httpx.Headers(raw)
    assert ours.encoding == theirs.encoding
    assert list(ours.multi_items()) == list(theirs.multi_items())
    assert ours.get("content-type") == theirs.get("content-type")
    assert ours.get("x-note") == theirs.get("x-note")
