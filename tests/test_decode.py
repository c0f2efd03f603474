"""Tests for crawler._decode.BodyDecoder."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crawler._decode as decode_module
from crawler._decode import MAX_ENCODINGS, BodyDecoder, DecodingError

MiB = 1 << 20
GiB = 1 << 30
ROOT = Path(__file__).absolute().parent.parent


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "br": brotli.compress,
    "identity": lambda data: data,
}

SAMPLE = os.urandom(3000) + b"<html>" + b"hello, world! " * 5000 + bytes(100_000) + b"</html>"


def _decode_all(decoder: BodyDecoder, body: bytes, cuts: list[int]) -> bytes:
    points = [0, *sorted(cuts), len(body)]
    out = [decoder.feed(body[a:b]) for a, b in itertools.pairwise(points)]
    out.append(decoder.flush())
    return b"".join(out)


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_round_trip(encoding: str) -> None:
    body = ENCODERS[encoding](SAMPLE)
    decoder = BodyDecoder(encoding, 10 * MiB)
    assert decoder.feed(body) + decoder.flush() == SAMPLE
    assert decoder.total == len(SAMPLE)
    assert not decoder.truncated


@pytest.mark.parametrize("header", [None, "", "identity", " Identity , "])
def test_no_encoding(header: str | None) -> None:
    decoder = BodyDecoder(header, 100)
    assert decoder.feed(b"abc") == b"abc"
    assert decoder.feed(b"") == b""
    assert decoder.flush() == b""
    assert decoder.total == 3


def test_raw_deflate_is_detected() -> None:
    body = _raw_deflate(SAMPLE)
    decoder = BodyDecoder("deflate", 10 * MiB)
    assert _decode_all(decoder, body, [1, 2, 3]) == SAMPLE


@pytest.mark.parametrize("prefix", [b"", b"\x00", b"x"])
def test_raw_deflate_of_any_first_bytes(prefix: bytes) -> None:
    # Raw deflate whose first two bytes happen not to look like a zlib header.
    data = prefix + SAMPLE[:5000]
    assert BodyDecoder("deflate", MiB).feed(_raw_deflate(data)) == data


@pytest.mark.parametrize(
    ("header", "encode"),
    [
        ("gzip, br", lambda d: brotli.compress(gzip.compress(d))),
        ("br, gzip", lambda d: gzip.compress(brotli.compress(d))),
        ("deflate, gzip, br", lambda d: brotli.compress(gzip.compress(zlib.compress(d)))),
        ("GZIP ,identity,  Br", lambda d: brotli.compress(gzip.compress(d))),
        ("gzip, gzip", lambda d: gzip.compress(gzip.compress(d))),
    ],
)
def test_stacked_encodings(header: str, encode: Callable[[bytes], bytes]) -> None:
    body = encode(SAMPLE)
    decoder = BodyDecoder(header, 10 * MiB)
    assert _decode_all(decoder, body, [len(body) // 3, len(body) // 2]) == SAMPLE


def test_multi_member_gzip_and_trailing_garbage() -> None:
    # Members bigger than one decoded piece (64 KiB), so a member ends mid-pull.
    big = SAMPLE * 3
    body = gzip.compress(big[:200_000]) + gzip.compress(big[200_000:]) + gzip.compress(b"!")
    assert _decode_all(BodyDecoder("gzip", 10 * MiB), body, [10, 2000]) == big + b"!"
    assert BodyDecoder("gzip", 10 * MiB).feed(body) == big + b"!"
    # Bytes after the last member that are not another member are ignored.
    body = gzip.compress(SAMPLE) + b"\x00\x00 trailing junk"
    assert BodyDecoder("gzip", 10 * MiB).feed(body) == SAMPLE
    # A second member split right after its first magic byte.
    first, second = gzip.compress(b"one "), gzip.compress(b"two")
    decoder = BodyDecoder("gzip", 100)
    assert _decode_all(decoder, first + second, [len(first) + 1]) == b"one two"


def test_truncated_stream_yields_what_it_has() -> None:
    body = gzip.compress(SAMPLE)
    decoder = BodyDecoder("gzip", 10 * MiB)
    out = decoder.feed(body[: len(body) // 2]) + decoder.flush()
    assert SAMPLE.startswith(out)
    assert 0 < len(out) < len(SAMPLE)
    assert not decoder.truncated


def test_brotli_without_output_limit_api(monkeypatch: pytest.MonkeyPatch) -> None:
    # brotli < 1.2 has no output_buffer_limit: input then goes in small slices.
    monkeypatch.setattr(decode_module, "_BROTLI_HAS_LIMIT", False)
    body = brotli.compress(SAMPLE)
    assert _decode_all(BodyDecoder("br", 10 * MiB), body, [100, 101, 5000]) == SAMPLE


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from([*sorted(ENCODERS), "gzip, br", "raw-deflate", "multi-gzip"]),
    data=st.binary(max_size=3000).map(lambda b: b * 7),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
    cap=st.one_of(st.none(), st.integers(min_value=0, max_value=25_000)),
)
def test_random_split_points(
    encoding: str, data: bytes, cuts: list[float], cap: int | None
) -> None:
    if encoding == "raw-deflate":
        header, body = "deflate", _raw_deflate(data)
    elif encoding == "multi-gzip":
        half = len(data) // 2
        header, body = "gzip", gzip.compress(data[:half]) + gzip.compress(data[half:])
    elif encoding == "gzip, br":
        header, body = encoding, brotli.compress(gzip.compress(data))
    else:
        header, body = encoding, ENCODERS[encoding](data)
    limit = len(data) if cap is None else cap
    decoder = BodyDecoder(header, limit)
    out = _decode_all(decoder, body, [int(c * len(body)) for c in cuts])
    assert out == data[:limit]
    assert decoder.total == len(out)
    assert decoder.truncated == (len(data) > limit)


# -- the cap -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity"])
def test_cap_is_exact(encoding: str) -> None:
    body = ENCODERS[encoding](SAMPLE)
    n = len(SAMPLE)
    exact = BodyDecoder(encoding, n)
    assert _decode_all(exact, body, [17]) == SAMPLE
    assert not exact.truncated  # exactly at the cap is not "cut"
    for cap in (n - 1, 1000, 1, 0):
        decoder = BodyDecoder(encoding, cap)
        out = [decoder.feed(piece) for piece in _chunks(body, 4096)]
        assert b"".join(out) + decoder.flush() == SAMPLE[:cap]
        assert decoder.truncated
        assert decoder.total == cap
        assert decoder.feed(b"more") == b""


def test_empty_body_with_zero_cap() -> None:
    decoder = BodyDecoder("gzip", 0)
    assert decoder.feed(b"") + decoder.flush() == b""
    assert not decoder.truncated


def test_each_feed_returns_what_that_chunk_yields() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    first = c.compress(b"a" * 1000) + c.flush(zlib.Z_SYNC_FLUSH)
    second = c.compress(b"b" * 1000) + c.flush()
    decoder = BodyDecoder("gzip", 10_000)
    assert decoder.feed(first) == b"a" * 1000
    assert decoder.feed(second) == b"b" * 1000
    assert decoder.flush() == b""


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["compress", "zstd", "gzip, lzma", "x-compress"])
def test_unknown_encoding(header: str) -> None:
    with pytest.raises(DecodingError, match="unsupported content-encoding"):
        BodyDecoder(header, 100)
    assert issubclass(DecodingError, ValueError)


def test_too_many_encodings() -> None:
    BodyDecoder(", ".join(["gzip"] * MAX_ENCODINGS), 10)
    with pytest.raises(DecodingError, match="too many content-encodings"):
        BodyDecoder(", ".join(["gzip"] * (MAX_ENCODINGS + 1)), 10)


def test_negative_cap() -> None:
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        BodyDecoder(None, -1)


def _flip(body: bytes, index: int) -> bytes:
    return body[:index] + bytes([body[index] ^ 0xFF]) + body[index + 1 :]


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("gzip", b"this is not gzip at all"),
        ("gzip", _flip(gzip.compress(SAMPLE), len(gzip.compress(SAMPLE)) - 6)),  # bad CRC
        ("gzip", gzip.compress(SAMPLE)[:10] + b"\xff" * 64),  # bad deflate data
        ("x-gzip", _flip(gzip.compress(SAMPLE), 3)),  # reserved flag bits
        ("deflate", _flip(zlib.compress(SAMPLE), len(zlib.compress(SAMPLE)) - 2)),  # bad adler
        ("br", b"\xff" * 100),
        ("br", brotli.compress(SAMPLE) + b"junk"),
        ("gzip, br", brotli.compress(b"\x1f\x8b but not gzip")),
    ],
)
def test_corrupt_data_raises(header: str, body: bytes) -> None:
    decoder = BodyDecoder(header, 10 * MiB)
    with pytest.raises(DecodingError, match="corrupt"):
        for piece in _chunks(body, 1000):
            decoder.feed(piece)
        decoder.flush()


# -- bombs -------------------------------------------------------------------------------


def _gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of `size` zero bytes (a multiple of 1 MiB), built in ~1 MiB steps."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # A full flush makes the segment self-contained, so it can be repeated.
    segment = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    final = c.flush()
    crc = 0
    zeros = bytes(MiB)
    for _ in range(size // MiB):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return header + segment * (size // MiB) + final + trailer


def _brotli_bomb(size: int) -> bytes:
    """A brotli stream of `size` zero bytes, compressed 1 MiB at a time."""
    c = brotli.Compressor(quality=1)
    zeros = bytes(MiB)
    parts = [c.process(zeros) for _ in range(size // MiB)]
    parts.append(c.finish())
    return b"".join(parts)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return _gzip_bomb(GiB)


@pytest.fixture(scope="module")
def brotli_bomb() -> bytes:
    return _brotli_bomb(GiB)


def test_bomb_builders_are_valid() -> None:
    assert gzip.decompress(_gzip_bomb(8 * MiB)) == bytes(8 * MiB)
    assert brotli.decompress(_brotli_bomb(8 * MiB)) == bytes(8 * MiB)


def _peak_while_decoding(header: str, body: bytes, chunk: int, cap: int) -> tuple[int, int]:
    """(decoded bytes, peak traced allocation in bytes) for feeding `body` in `chunk`s."""
    tracemalloc.start()
    try:
        decoder = BodyDecoder(header, cap)
        total = 0
        for piece in _chunks(body, chunk):
            total += len(decoder.feed(piece))
            if decoder.truncated:
                break
        total += len(decoder.flush())
        assert decoder.truncated
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return total, peak


@pytest.mark.parametrize("chunk", [64 * 1024, 2 * MiB])
def test_gzip_bomb_is_capped(gzip_bomb: bytes, chunk: int) -> None:
    assert len(gzip_bomb) < 1.1 * MiB  # ~1 MiB that inflates to 1 GiB
    total, peak = _peak_while_decoding("gzip", gzip_bomb, chunk, MiB)
    assert total == MiB
    assert peak < 20 * MiB, peak


@pytest.mark.parametrize("chunk", [64 * 1024, 2 * MiB])
def test_brotli_bomb_is_capped(brotli_bomb: bytes, chunk: int) -> None:
    assert len(brotli_bomb) < MiB
    total, peak = _peak_while_decoding("br", brotli_bomb, chunk, MiB)
    assert total == MiB
    assert peak < 20 * MiB, peak


@pytest.mark.parametrize("header", ["gzip", "br"])
def test_bomb_peak_is_about_the_cap(header: str, gzip_bomb: bytes, brotli_bomb: bytes) -> None:
    # With a bigger cap, the peak is the cap plus a few pieces, not a multiple of it.
    body = gzip_bomb if header == "gzip" else brotli_bomb
    cap = 16 * MiB
    total, peak = _peak_while_decoding(header, body, 64 * 1024, cap)
    assert total == cap
    assert peak < cap + 4 * MiB, peak


def test_stacked_bomb_is_capped(gzip_bomb: bytes) -> None:
    # br over a gzip bomb: ~150 bytes on the wire, 1 GiB after both layers.
    c = brotli.Compressor(quality=5)
    body = c.process(gzip_bomb) + c.finish()
    assert len(body) < 10_000
    total, peak = _peak_while_decoding("gzip, br", body, 64 * 1024, MiB)
    assert total == MiB
    assert peak < 20 * MiB, peak


_RSS_SCRIPT = """
import json, resource, sys
from crawler._decode import BodyDecoder
header, path, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open(path, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoder = BodyDecoder(header, cap)
total = 0
for i in range(0, len(body), 65536):
    total += len(decoder.feed(body[i : i + 65536]))
    if decoder.truncated:
        break
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"total": total, "growth_kib": after - before}))
"""


@pytest.mark.parametrize("header", ["gzip", "br"])
def test_bomb_process_peak_rss(
    header: str, gzip_bomb: bytes, brotli_bomb: bytes, tmp_path: Path
) -> None:
    # tracemalloc does not see brotli's own C allocations: check the whole process too.
    path = tmp_path / "bomb"
    path.write_bytes(gzip_bomb if header == "gzip" else brotli_bomb)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, header, str(path), str(MiB)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["total"] == MiB
    assert report["growth_kib"] < 20 * 1024, report
