"""Streaming, size-capped decoding of ``Content-Encoding`` bodies.

Memory stays bounded whatever the compression ratio: every stage produces
output on demand, at most what the next stage (or the cap) asks for.
"""

from __future__ import annotations

import io
import zlib
from typing import Protocol

import brotli

__all__ = ["MAX_ENCODINGS", "BodyDecoder", "DecodingError"]

#: Most stacked encodings accepted (curl's limit too).
MAX_ENCODINGS = 5
# Largest piece a stage produces at a time.
_CHUNK = 64 * 1024
# brotli >= 1.2 can bound each process() call's output.
_BROTLI_HAS_LIMIT = hasattr(brotli.Decompressor, "can_accept_more_data")
# Without it, input goes in slices this small.
_BROTLI_SLICE = 256
_GZIP_MAGIC = b"\x1f\x8b"


class DecodingError(ValueError):
    """The body's Content-Encoding is unsupported or its data is corrupt."""


class _Stage(Protocol):
    def push(self, data: bytes) -> None: ...

    def pull(self, limit: int) -> bytes:
        """Return 1..limit decoded bytes, or b"" if more input is needed."""
        ...


class _Identity:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def push(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def pull(self, limit: int) -> bytes:
        buf = self._buf
        if len(buf) <= limit:
            self._buf = b""
            return buf
        self._buf = buf[limit:]
        return buf[:limit]


class _Zlib:
    """gzip (multi-member) or deflate (zlib-wrapped or raw, detected)."""

    __slots__ = ("_d", "_done", "_gzip", "_members", "_name", "_pending")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._name = "gzip" if gzip else "deflate"
        self._d: zlib._Decompress | None = None  # None: a stream starts at the next bytes
        self._members = 0
        self._pending = b""
        self._done = False

    def push(self, data: bytes) -> None:
        if not self._done:
            self._pending = self._pending + data if self._pending else data

    def _start(self, head: bytes) -> zlib._Decompress | None:
        if self._gzip:
            if self._members and head != _GZIP_MAGIC:
                return None  # trailing bytes after the last gzip member
            wbits = 16 + zlib.MAX_WBITS
        elif self._members:
            return None  # trailing bytes after the deflate stream
        else:  # zlib wrapper (RFC 1950) or raw deflate (RFC 1951)?
            cmf, flg = head[0], head[1]
            wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
            wbits = zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS
        self._members += 1
        return zlib.decompressobj(wbits)

    def pull(self, limit: int) -> bytes:
        while not self._done:
            d = self._d
            if d is None:
                if len(self._pending) < 2:
                    return b""
                d = self._d = self._start(self._pending[:2])
                if d is None:
                    self._pending = b""
                    self._done = True
                    break
            try:
                # Small pieces: zlib copies its output blocks into one bytes at the end.
                out = d.decompress(self._pending, min(limit, _CHUNK))
            except zlib.error as exc:
                raise DecodingError(f"corrupt {self._name} data: {exc}") from None
            if d.eof:  # the rest (another gzip member?) is in unused_data
                self._pending = d.unused_data
                self._d = None
            else:
                self._pending = d.unconsumed_tail
            if out:
                return out
            if self._d is not None:
                return b""  # all input consumed: need more
        return b""


class _Brotli:
    __slots__ = ("_buf", "_d", "_pending")

    def __init__(self) -> None:
        self._d = brotli.Decompressor()
        self._pending = b""
        self._buf = b""  # output beyond what was asked for (brotli's limit is coarse)

    def push(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else data

    def pull(self, limit: int) -> bytes:
        while not self._buf:
            out = self._step(min(limit, _CHUNK))
            if out is None:
                return b""
            self._buf = out
        buf = self._buf
        if len(buf) <= limit:
            self._buf = b""
            return buf
        self._buf = buf[limit:]
        return buf[:limit]

    def _step(self, limit: int) -> bytes | None:
        """Decode a little more: None when more input is needed."""
        d = self._d
        try:
            if _BROTLI_HAS_LIMIT:
                # can_accept_more_data() only says the input buffer is empty:
                # output may still be pending, so always ask for it.
                data = b""
                if self._pending and d.can_accept_more_data():
                    data, self._pending = self._pending, b""
                out: bytes = d.process(data, output_buffer_limit=limit)
                return out if out or data else None
            if not self._pending:
                return None
            data = self._pending[:_BROTLI_SLICE]
            self._pending = self._pending[_BROTLI_SLICE:]
            out = d.process(data)
            return out
        except brotli.error as exc:
            raise DecodingError(f"corrupt br data: {exc}") from None


def _stage(name: str) -> _Stage:
    if name in ("gzip", "x-gzip"):
        return _Zlib(gzip=True)
    if name == "deflate":
        return _Zlib(gzip=False)
    if name == "br":
        return _Brotli()
    raise DecodingError(f"unsupported content-encoding {name!r}")


class BodyDecoder:
    """Decode a body as it streams in, producing at most ``max_bytes`` in total.

    ``content_encoding`` is the header value (``"gzip, br"`` means gzip was
    applied first, so br is undone first). Output past the cap is dropped and
    :attr:`truncated` set. Input after the end of a gzip/deflate stream is
    ignored, and a stream cut short yields what it decoded, without an error.
    """

    __slots__ = ("_left", "_max_bytes", "_stages", "_truncated")

    def __init__(self, content_encoding: str | None, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        names = [
            token
            for token in (part.strip().lower() for part in (content_encoding or "").split(","))
            if token and token != "identity"
        ]
        if len(names) > MAX_ENCODINGS:
            raise DecodingError(
                f"too many content-encodings ({len(names)} > {MAX_ENCODINGS}): {content_encoding!r}"
            )
        stages = [_stage(name) for name in reversed(names)]
        self._stages: list[_Stage] = stages or [_Identity()]
        self._max_bytes = max_bytes
        self._left = max_bytes
        self._truncated = False

    @property
    def truncated(self) -> bool:
        """True once decoded output went past ``max_bytes`` and was cut."""
        return self._truncated

    @property
    def total(self) -> int:
        """Decoded bytes produced so far."""
        return self._max_bytes - self._left

    def feed(self, chunk: bytes) -> bytes:
        """Decode ``chunk``; return what it yields, within what is left of the cap."""
        if self._truncated:
            return b""
        if chunk:
            self._stages[0].push(bytes(chunk))
        return self._drain()

    def flush(self) -> bytes:
        """Return any decoded output still held back (the input is complete)."""
        if self._truncated:
            return b""
        return self._drain()

    def _drain(self) -> bytes:
        # Output is gathered without a second full-size copy: one piece is
        # returned as is, several go through a BytesIO (getvalue() does not copy).
        first = b""
        buf: io.BytesIO | None = None
        last = len(self._stages) - 1
        while True:
            left = self._left
            if not left:
                # At the cap: one more byte means the body was too big.
                if self._pull(last, 1):
                    self._truncated = True
                    self._stages = [_Identity()]  # drop what the stages still hold
                break
            piece = self._pull(last, left)
            if not piece:
                break
            self._left = left - len(piece)
            if buf is not None:
                buf.write(piece)
            elif not first:
                first = piece
            else:
                buf = io.BytesIO()
                buf.write(first)
                buf.write(piece)
                first = b""
        return buf.getvalue() if buf is not None else first

    def _pull(self, index: int, limit: int) -> bytes:
        stage = self._stages[index]
        while True:
            out = stage.pull(limit)
            if out or index == 0:
                return out
            data = self._pull(index - 1, _CHUNK)
            if not data:
                return b""
            stage.push(data)
