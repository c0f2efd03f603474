"""The parse process's side of `_parsepool`, and the frames both sides exchange.

Kept apart from the pool (and from the package's ``__init__``, see `_parsepool`) so a
parse process imports only the parser: Lexbor, link extraction, URL normalisation.

Frames, over the child's stdin and stdout:

* request: ``<IIiIIIB`` (id, URL length, Content-Type length or -1 for none, body
  length, max links, max URL length, careful), then the URL, the Content-Type and the
  body. Replies are written a batch at a time, except that a careful request's reply
  (and any before it) is written before the next request is parsed: a page sent again
  after a child died is careful, so that the next death points at one page;
* reply: ``<II`` (id, payload length), then ``[title, links, nofollow, encoding]`` as
  JSON. Id 0 with an empty payload is the child's first reply: it is ready.
"""

from __future__ import annotations

import json
import os
import signal
import struct
from collections.abc import Callable

import orjson

from ._links import ParsedPage, keep_heap_for_parsing, parse_html

REQUEST = struct.Struct("<IIiIIIB")
REPLY = struct.Struct("<II")
READY = 0
"""The id of the child's first reply, and never a request's."""
_U32 = 0xFFFFFFFF
_READ_SIZE = 1 << 20


def _text(value: str) -> bytes:
    # Header values and URLs are str here; a lone surrogate must not stop a page.
    return value.encode("utf-8", "surrogateescape")


def encode_request(
    ident: int,
    body: bytes,
    url: str,
    content_type: str | None,
    max_links: int,
    max_url_length: int,
    *,
    careful: bool = False,
) -> bytes:
    url_bytes = _text(url)
    type_bytes = b"" if content_type is None else _text(content_type)
    head = REQUEST.pack(
        ident,
        len(url_bytes),
        -1 if content_type is None else len(type_bytes),
        len(body),
        min(max_links, _U32),
        min(max_url_length, _U32),
        careful,
    )
    return b"".join((head, url_bytes, type_bytes, body))


def encode_reply(ident: int, parsed: ParsedPage) -> bytes:
    fields = [parsed.title, list(parsed.links), parsed.nofollow, parsed.encoding]
    try:
        payload = orjson.dumps(fields)
    except TypeError:  # a lone surrogate in a title: orjson refuses, json escapes it
        payload = json.dumps(fields).encode("ascii")
    return REPLY.pack(ident, len(payload)) + payload


def decode_reply(payload: bytes) -> ParsedPage:
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:  # json.dumps's escaped lone surrogates
        fields = json.loads(payload)
    title, links, nofollow, encoding = fields
    return ParsedPage(title=title, links=tuple(links), nofollow=nofollow, encoding=encoding)


def answer(buffer: bytearray, write: Callable[[bytes], None]) -> int:
    """Answer the complete requests at the start of `buffer`; return their length."""
    replies: list[bytes] = []
    at = 0
    size = REQUEST.size
    while len(buffer) - at >= size:
        ident, url_length, type_length, body_length, max_links, max_url_length, careful = (
            REQUEST.unpack_from(buffer, at)
        )
        start = at + size
        type_start = start + url_length
        body_start = type_start + max(type_length, 0)
        end = body_start + body_length
        if len(buffer) < end:
            break
        url = bytes(buffer[start:type_start]).decode("utf-8", "surrogateescape")
        content_type = (
            None
            if type_length < 0
            else bytes(buffer[type_start:body_start]).decode("utf-8", "surrogateescape")
        )
        parsed = parse_html(
            bytes(buffer[body_start:end]),
            url,
            content_type,
            max_links=max_links,
            max_url_length=max_url_length,
        )
        replies.append(encode_reply(ident, parsed))
        at = end
        if careful:
            write(b"".join(replies))
            replies.clear()
    if replies:
        write(b"".join(replies))
    return at


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(stdin: int = 0, stdout: int = 1) -> None:
    """Answer requests until the crawl closes our stdin, or is gone (the same EOF, or
    a broken pipe: then quietly, as the crawl's kill -9 is not our error)."""
    # Ctrl-C reaches the whole process group; the crawl decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_heap_for_parsing()

    def write(data: bytes) -> None:
        _write_all(stdout, data)

    buffer = bytearray()
    try:
        write(REPLY.pack(READY, 0))
        while chunk := os.read(stdin, _READ_SIZE):
            buffer += chunk
            used = answer(buffer, write)
            if used:
                del buffer[:used]
    except BrokenPipeError:
        pass
