"""JSON Lines and WARC writers, against hand-made pages."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import gzip
import hashlib
import io
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from crawler import _output
from crawler._config import CrawlConfig, HostLimits
from crawler._output import (
    SCHEMA,
    JsonLinesWriter,
    OutputError,
    PathArg,
    WarcWriter,
    config_summary,
    page_to_json,
)
from crawler._page import ErrorKind, Exchange, Page, PageError

WHEN = dt.datetime(2026, 11, 29, 2, 3, 4, 123456, tzinfo=dt.UTC)
SCHEMA_KEYS = [
    "url",
    "final_url",
    "status",
    "depth",
    "content_type",
    "title",
    "links",
    "bytes",
    "elapsed",
    "fetched_at",
    "error",
]


def make_page(i: int = 0, **changes: Any) -> Page:
    fields: dict[str, Any] = {
        "url": f"http://example.com/page/{i}",
        "final_url": f"http://example.com/page/{i}",
        "status": 200,
        "depth": 1,
        "content_type": "text/html; charset=utf-8",
        "title": f"Page {i}",
        "links": (f"http://example.com/page/{i + 1}", "http://example.com/"),
        "body": b"<html><title>Page</title></html>",
        "elapsed": 0.25,
        "fetched_at": WHEN,
    }
    fields.update(changes)
    return Page(**fields)


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]


# ---------------------------------------------------------------------------
# JSON Lines


def test_page_to_json_schema() -> None:
    page = make_page(3, fetched_at=dt.datetime(2026, 11, 29, 2, 3, 4, 5, tzinfo=dt.UTC))
    obj = page_to_json(page)
    assert list(obj) == SCHEMA_KEYS
    assert obj == {
        "url": "http://example.com/page/3",
        "final_url": "http://example.com/page/3",
        "status": 200,
        "depth": 1,
        "content_type": "text/html; charset=utf-8",
        "title": "Page 3",
        "links": ["http://example.com/page/4", "http://example.com/"],
        "bytes": len(page.body),
        "elapsed": 0.25,
        "fetched_at": "2026-11-29T02:03:04.000005Z",
        "error": None,
    }
    for key in SCHEMA_KEYS:
        assert key in SCHEMA  # the schema is documented


def test_page_to_json_error_and_time_zones() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    page = make_page(
        status=None,
        title=None,
        content_type=None,
        links=(),
        body=b"",
        fetched_at=dt.datetime(2026, 11, 29, 3, 3, 4, tzinfo=paris),
        error=PageError(ErrorKind.TIMEOUT, "no complete response within 30 s"),
    )
    obj = page_to_json(page)
    assert obj["error"] == {"kind": "timeout", "message": "no complete response within 30 s"}
    assert obj["fetched_at"] == "2026-11-29T02:03:04.000000Z"
    assert obj["status"] is None and obj["bytes"] == 0 and obj["links"] == []
    naive = page_to_json(make_page(fetched_at=dt.datetime(2026, 1, 2, 3, 4, 5)))
    assert naive["fetched_at"] == "2026-01-02T03:04:05.000000Z"


async def test_jsonl_writes_one_complete_line_per_page(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    pages = [make_page(i) for i in range(20)]
    async with JsonLinesWriter(path) as out:
        for page in pages:
            await out.write(page)
            # flushed to the OS after each page: a reader sees it at once
            assert path.read_bytes().count(b"\n") == out.lines
    assert out.lines == 20
    assert read_lines(path) == [page_to_json(p) for p in pages]


async def test_jsonl_line_breakers_and_bad_text_stay_inside_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    tricky = "a\u2028b\u2029c\x85d\ne\r\x0b\x1c ünïcødé \ud800 end"
    async with JsonLinesWriter(path) as out:
        await out.write(make_page(title=tricky))
        await out.write(make_page(1))
    text = path.read_text(encoding="utf-8")  # valid UTF-8
    assert len(text.splitlines()) == 2  # even str.splitlines sees two lines
    first = json.loads(text.splitlines()[0])
    assert first["title"] == tricky
    assert "ünïcødé" in text  # not needlessly escaped


_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def encode_with_json(page: Page) -> bytes:
    """The JSON Lines encoder before orjson: the bytes the orjson one must keep."""
    text = json.dumps(page_to_json(page), ensure_ascii=False, separators=(",", ":"))
    return (text.translate(_LINE_BREAKERS) + "\n").encode("utf-8", "backslashreplace")


_BROKEN = b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape")  # 'caf\udce9 \udcff\udcfe'
_PARIS = dt.timezone(dt.timedelta(hours=1))
_SAME_BYTES_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "utf-8 title": {"title": "Caf\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001f600"},
    "line breakers": {"title": "a\u2028b\u2029c\x85d \u2014 e", "content_type": "text/x\x85"},
    "control chars": {"title": '\x00\x01\x08\t\n\x0c\r\x1f\x7f\x80 "q" \\ /'},
    "slashes": {"links": ("http://example.com/a/b?c=d/e",)},
    "small elapsed": {"elapsed": 0.0000123},
    "smaller elapsed": {"elapsed": 0.000005},
    "zero elapsed": {"elapsed": 0.0},
    "long elapsed": {"elapsed": 123456.7890123},
    "nan elapsed": {"elapsed": float("nan")},
    "infinite elapsed": {"elapsed": float("inf")},
    "negative elapsed": {"elapsed": -0.00002},
    "whole second": {"fetched_at": WHEN.replace(microsecond=0)},
    "other time zone": {"fetched_at": WHEN.astimezone(_PARIS)},
    "naive time": {"fetched_at": WHEN.replace(tzinfo=None)},
    "error": {"status": None, "error": PageError(ErrorKind.RESET, "peer reset \u00e9")},
    "surrogateescape title": {"title": _BROKEN},
    "surrogateescape header": {"content_type": "text/html; charset=" + _BROKEN},
    "lone surrogate": {"title": "broken \ud800 page \u2028", "links": ("http://x/\udfff",)},
    "surrogate in error": {"error": PageError(ErrorKind.OTHER, "bad \udc80")},
}


@pytest.mark.parametrize("case", list(_SAME_BYTES_CASES))
def test_jsonl_line_bytes_are_those_of_json_dumps(case: str) -> None:
    # orjson writes the line; what it spells differently (tiny floats, NaN, a zero
    # microsecond, other zones) or refuses (lone surrogates) must not show.
    page = make_page(5, **_SAME_BYTES_CASES[case])
    line = _output._encode_line(page)
    assert line == encode_with_json(page)
    text = line.decode("utf-8")  # valid UTF-8, even with surrogates in the page
    assert text.endswith("\n") and len(text.splitlines()) == 1
    assert list(json.loads(text)) == SCHEMA_KEYS


async def test_jsonl_surrogates_from_a_broken_page_do_not_stop_the_writer(
    tmp_path: Path,
) -> None:
    # A title or header decoded with surrogateescape, or holding U+D800: orjson refuses
    # them, the line is still written (escaped, as json.dumps did), and so are the next.
    path = tmp_path / "pages.jsonl"
    pages = [
        make_page(0, title=_BROKEN, content_type="text/html; charset=" + _BROKEN),
        make_page(1, title="x \ud800 y"),
        make_page(2),
    ]
    async with JsonLinesWriter(path) as out:
        for page in pages:
            await out.write(page)
    assert out.lines == 3
    lines = read_lines(path)
    assert [line["title"] for line in lines] == [_BROKEN, "x \ud800 y", "Page 2"]
    assert b"caf\\udce9 \\udcff\\udcfe" in path.read_bytes()


async def test_jsonl_concurrent_writers_are_batched_and_never_torn(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    big = tuple(f"http://example.com/{'x' * 200}/{k}" for k in range(500))
    async with JsonLinesWriter(path) as out, trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(out.write, make_page(i, links=big))
    lines = read_lines(path)
    assert sorted(line["url"] for line in lines) == sorted(make_page(i).url for i in range(100))
    assert all(len(line["links"]) == 500 for line in lines)


async def test_jsonl_cancelled_write_still_lands_whole_on_close(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    async with JsonLinesWriter(path) as out:
        await out.write(make_page(0))
        with trio.CancelScope() as scope:
            scope.cancel()
            await out.write(make_page(1))
    assert [line["url"] for line in read_lines(path)] == [
        "http://example.com/page/0",
        "http://example.com/page/1",
    ]


async def test_jsonl_close_is_idempotent_and_final(tmp_path: Path) -> None:
    out = JsonLinesWriter(tmp_path / "pages.jsonl")
    await out.open()
    await out.aclose()
    await out.aclose()
    out.close()
    with pytest.raises(RuntimeError, match="not open"):
        await out.write(make_page())


async def test_jsonl_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    async with JsonLinesWriter("-") as out:
        await out.write(make_page(7))
    captured = capsys.readouterr().out
    assert captured.count("\n") == 1
    assert json.loads(captured)["url"] == "http://example.com/page/7"
    assert not sys.stdout.closed


@dataclass
class Fault:
    """Which write call of an OutputFile fails (from 1; None: none), and how:

    - "kill": the process dies (SIGKILL) before it, when the calls before it are done;
    - "short write, then ENOSPC": it writes half its bytes (a short count, as write(2)
      returns when the disk fills up), and the next call fails with ENOSPC;
    - "EIO after part": it writes half its bytes, then raises EIO."""

    at: int | None = None
    how: str = ""


class OutputFile(io.FileIO):
    """The JSON Lines file as the writer opens it (unbuffered: one OS write per call),
    recording each write call in `calls` and failing one as `fault` says."""

    def __init__(self, path: str, mode: str, calls: list[bytes], fault: Fault) -> None:
        super().__init__(path, mode)
        self.calls = calls
        self.fault = fault

    def write(self, data: Any, /) -> int:
        chunk = bytes(data)
        self.calls.append(chunk)
        fault = self.fault
        if len(self.calls) != fault.at:
            return super().write(chunk)
        if fault.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.how == "short write, then ENOSPC":
            fault.at, fault.how = fault.at + 1, "ENOSPC"
            return super().write(chunk[: len(chunk) // 2])
        if fault.how == "EIO after part":
            super().write(chunk[: len(chunk) // 2])
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        assert fault.how == "ENOSPC"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def record_output_writes(
    monkeypatch: pytest.MonkeyPatch | None,
    path: PathArg,
    *,
    fail_at: int | None = None,
    how: str = "",
) -> list[bytes]:
    """Open `path` as an OutputFile whenever the writers open it unbuffered (for good,
    without `monkeypatch`); returns the list its write calls are recorded in."""
    target = os.path.abspath(path)
    calls: list[bytes] = []
    fault = Fault(fail_at, how)

    def opener(file: PathArg, mode: str = "r", buffering: int = -1) -> IO[bytes]:
        if buffering == 0 and os.path.abspath(file) == target:
            return OutputFile(os.fspath(file), mode, calls, fault)
        return open(file, mode, buffering)

    if monkeypatch is None:
        _output.open = opener  # type: ignore[attr-defined]
    else:
        monkeypatch.setattr(_output, "open", opener, raising=False)
    return calls


def faulty_command() -> int:
    """The crawl command with a failing JSON Lines file: ``python -c`` runs it with
    ``FAIL_AT HOW JSONL-PATH`` before the command's arguments."""
    from crawler._cli import main

    fail_at, how, path, *argv = sys.argv[1:]
    record_output_writes(None, path, fail_at=int(fail_at), how=how)
    return main(argv)


@pytest.mark.parametrize("through", ["regular file", "thread"])
async def test_jsonl_writes_each_line_with_one_write_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    # One write(2) per line: a crash between two calls, or a reader tailing the file,
    # sees whole lines only. Also for a line of megabytes, which a writer going through
    # a fixed-size buffer would split.
    path = tmp_path / "pages.jsonl"
    calls = record_output_writes(monkeypatch, path)
    many = tuple(f"http://example.com/{'x' * 100}/{k}" for k in range(20_000))
    pages = [
        make_page(0),
        make_page(1, title="T " * 2_000_000, links=many),
        make_page(2, title="ü" * 100_000),
        make_page(3),
    ]
    async with JsonLinesWriter(path) as out:
        assert out._sink is not None
        out._sink.regular = through == "regular file"  # else through a thread, as a pipe
        for page in pages:
            await out.write(page)
    data = path.read_bytes()
    assert len(data) > 6_000_000
    assert calls == data.splitlines(keepends=True)
    assert [json.loads(call)["url"] for call in calls] == [page.url for page in pages]


@pytest.mark.parametrize("how", ["short write, then ENOSPC", "EIO after part"])
async def test_jsonl_write_failing_part_way_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = tmp_path / "pages.jsonl"
    calls = record_output_writes(monkeypatch, path, fail_at=3, how=how)
    async with JsonLinesWriter(path) as out:
        await out.write(make_page(0))
        await out.write(make_page(1))
        committed = out.position
        with pytest.raises(OutputError, match=r"No space left|Input/output error"):
            await out.write(make_page(2, title="x" * 10_000))
        # Cut back to the last whole line, where the writer says the file ends...
        assert out.position == committed == path.stat().st_size
        assert out.lines == 2
        # ...so that, the disk having room again, the next line follows it.
        await out.write(make_page(3))
    assert len(calls) == 4 + (how == "short write, then ENOSPC")
    assert [line["url"] for line in read_lines(path)] == [make_page(i).url for i in (0, 1, 3)]


async def test_jsonl_write_refused_after_a_torn_line_that_cannot_be_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pages.jsonl"
    record_output_writes(monkeypatch, path, fail_at=2, how="EIO after part")
    async with JsonLinesWriter(path) as out:
        await out.write(make_page(0))
        assert out._sink is not None

        def cut(offset: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        out._sink.cut = cut
        with pytest.raises(OutputError, match="Input/output error"):
            await out.write(make_page(1))
        with pytest.raises(OutputError, match="torn line that cannot be cut off"):
            await out.write(make_page(2))
    assert path.read_bytes().count(b"\n") == 1


@pytest.mark.parametrize("kind", ["missing-dir", "is-dir", "under-a-file"])
async def test_jsonl_unwritable_path_fails_at_open(tmp_path: Path, kind: str) -> None:
    if kind == "missing-dir":
        path = tmp_path / "no" / "such" / "pages.jsonl"
    elif kind == "is-dir":
        path = tmp_path
    else:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "pages.jsonl"
    with pytest.raises(OutputError) as info:
        async with JsonLinesWriter(path):
            pass  # pragma: no cover
    assert info.value.path == os.fspath(path)
    assert str(info.value).startswith(f"cannot write {path}: ")
    assert info.value.reason


# ---------------------------------------------------------------------------
# WARC

ORIGIN = "http://example.com"
HTML = b"<html><head><title>Hello</title></head><body>" + b"hello world " * 200 + b"</body></html>"
GZ_HTML = gzip.compress(HTML, mtime=0)


def request_headers(path: str = "/") -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"Host", b"example.com"),
        (b"User-Agent", b"crawler/test"),
        (b"Accept-Encoding", b"gzip, deflate, br"),
    )


def exchange(
    url: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes, **kw: Any
) -> Exchange:
    fields: dict[str, Any] = {
        "method": "GET",
        "url": url,
        "request_headers": request_headers(),
        "http_version": "HTTP/1.1",
        "status": status,
        "reason": {200: "OK", 301: "Moved Permanently", 404: "Not Found"}.get(status, "Whatever"),
        "response_headers": tuple(headers),
        "raw_body": body,
        "truncated": False,
        "started_at": WHEN,
    }
    fields.update(kw)
    return Exchange(**fields)


def sample_pages() -> list[Page]:
    robots = exchange(
        f"{ORIGIN}/robots.txt",
        404,
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"9")],
        b"not found",
        started_at=WHEN,
    )
    hop = exchange(
        f"{ORIGIN}/old",
        301,
        [(b"Location", b"/"), (b"Content-Length", b"0")],
        b"",
        started_at=WHEN + dt.timedelta(seconds=1),
    )
    final = exchange(
        f"{ORIGIN}/",
        200,
        [
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Content-Encoding", b"gzip"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
        GZ_HTML,
        started_at=WHEN + dt.timedelta(seconds=2, microseconds=7),
    )
    first = make_page(
        url=f"{ORIGIN}/old",
        final_url=f"{ORIGIN}/",
        body=HTML,
        exchanges=(robots, hop, final),
    )
    cut = exchange(
        f"{ORIGIN}/big",
        200,
        [(b"Content-Type", b"application/octet-stream"), (b"Content-Length", b"100000")],
        b"x" * 1000,
        truncated=True,
        started_at=WHEN + dt.timedelta(seconds=3),
    )
    big = make_page(
        url=f"{ORIGIN}/big",
        final_url=f"{ORIGIN}/big",
        body=b"x" * 1000,
        error=PageError(ErrorKind.TOO_LARGE, "body cut at max_bytes=1000"),
        exchanges=(cut,),
    )
    refused = make_page(
        url=f"{ORIGIN}/down",
        status=None,
        error=PageError(ErrorKind.CONNECT, "connection refused"),
    )
    return [first, big, refused]


def load_records(path: Path) -> list[Any]:
    from warcio.archiveiterator import ArchiveIterator

    records = []
    with open(path, "rb") as file:
        for record in ArchiveIterator(file):
            body = record.content_stream().read()
            records.append((record, body))
    return records


@pytest.mark.parametrize("name", ["crawl.warc.gz", "crawl.warc"])
async def test_warc_reads_back_with_warcio(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    config = CrawlConfig(
        seeds=(f"{ORIGIN}/old",), rate=2.5, hosts={"example.com": HostLimits(rate=5)}
    )
    async with WarcWriter(path, config=config) as warc:
        for page in sample_pages():
            await warc.write(page)
    assert warc.records == 1 + 2 * 4

    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        # one gzip member per record: the file is a concatenation of gzip streams
        assert raw.count(b"\x1f\x8b\x08") >= warc.records
    else:
        assert raw.startswith(b"WARC/1.1\r\n")

    records = load_records(path)
    types = [r.rec_type for r, _ in records]
    assert types == ["warcinfo"] + ["response", "request"] * 4

    info, info_body = records[0]
    fields = dict(line.split(": ", 1) for line in info_body.decode("utf-8").splitlines() if line)
    assert fields["software"].startswith("crawler/")
    assert fields["format"] == "WARC File Format 1.1"
    assert fields["robots"] == "obey"
    assert fields["http-header-user-agent"] == config.user_agent
    settings = json.loads(fields["description"].removeprefix("crawl settings: "))
    assert settings["rate"] == 2.5
    assert settings["hosts"] == {"example.com": {"rate": 5}}
    assert info.rec_headers.get_header("WARC-Filename") == name

    pairs = [(records[i], records[i + 1]) for i in range(1, len(records), 2)]
    uris = [resp.rec_headers.get_header("WARC-Target-URI") for (resp, _), _ in pairs]
    assert uris == [f"{ORIGIN}/robots.txt", f"{ORIGIN}/old", f"{ORIGIN}/", f"{ORIGIN}/big"]
    for (resp, _), (req, req_body) in pairs:
        assert req.rec_headers.get_header("WARC-Concurrent-To") == resp.rec_headers.get_header(
            "WARC-Record-ID"
        )
        assert req.rec_headers.get_header("WARC-Target-URI") == resp.rec_headers.get_header(
            "WARC-Target-URI"
        )
        assert resp.rec_headers.get_header("WARC-Payload-Digest").startswith("sha1:")
        assert req.http_headers.protocol == "GET"
        assert req.http_headers.get_header("User-Agent") == "crawler/test"
        assert req_body == b""

    (robots, robots_body), _ = pairs[0]
    assert robots.http_headers.get_statuscode() == "404"
    assert robots_body == b"not found"
    assert robots.rec_headers.get_header("WARC-Date") == "2026-11-29T02:03:04.123456Z"

    (hop, _), (hop_req, _) = pairs[1]
    assert hop.http_headers.statusline == "301 Moved Permanently"
    assert hop.http_headers.get_header("Location") == "/"
    assert hop_req.http_headers.statusline == "/old HTTP/1.1"

    (final, final_body), _ = pairs[2]
    headers = final.http_headers
    assert headers.protocol == "HTTP/1.1"
    assert final.rec_headers.get_header("WARC-Date") == "2026-11-29T02:03:06.123463Z"
    assert headers.get_header("Transfer-Encoding") is None
    assert headers.get_header("X-Crawler-Transfer-Encoding") == "chunked"
    assert headers.get_header("Content-Length") == str(len(GZ_HTML))
    assert [v for k, v in headers.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert final_body == HTML  # content_stream() undid the stored Content-Encoding
    assert final.rec_headers.get_header("WARC-Truncated") is None
    digest = base64.b32encode(hashlib.sha1(GZ_HTML).digest()).decode()
    assert final.rec_headers.get_header("WARC-Payload-Digest") == f"sha1:{digest}"

    (big, big_body), _ = pairs[3]
    assert big.rec_headers.get_header("WARC-Truncated") == "length"
    assert big.http_headers.get_header("Content-Length") == "1000"
    assert big.http_headers.get_header("X-Crawler-Content-Length") == "100000"
    assert big_body == b"x" * 1000


async def test_warcio_index_and_check_accept_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crawl.warc.gz"
    async with WarcWriter(path) as warc:
        for page in sample_pages():
            await warc.write(page)
    cli = [sys.executable, "-c", "from warcio.cli import main; main()"]
    index = await trio.run_process(
        [*cli, "index", "-f", "warc-type,warc-target-uri,http:status,length", os.fspath(path)],
        capture_stdout=True,
        capture_stderr=True,
    )
    entries = [json.loads(line) for line in index.stdout.decode().splitlines()]
    assert [e["warc-type"] for e in entries] == ["warcinfo"] + ["response", "request"] * 4
    responses = [(e["warc-target-uri"], e["http:status"]) for e in entries[1::2]]
    assert responses == [
        (f"{ORIGIN}/robots.txt", "404"),
        (f"{ORIGIN}/old", "301"),
        (f"{ORIGIN}/", "200"),
        (f"{ORIGIN}/big", "200"),
    ]
    check = await trio.run_process(
        [*cli, "check", "-v", os.fspath(path)], capture_stdout=True, capture_stderr=True
    )
    assert b"digest pass" in check.stdout
    assert b"fail" not in check.stdout


async def test_warc_http2_status_line_and_protocol(tmp_path: Path) -> None:
    path = tmp_path / "h2.warc"
    h2 = exchange(
        f"{ORIGIN}/", 200, [(b"content-type", b"text/plain")], b"hi", http_version="HTTP/2"
    )
    async with WarcWriter(path) as warc:
        await warc.write(make_page(exchanges=(h2,)))
    (_, _), (resp, body), (req, _) = load_records(path)
    assert resp.http_headers.protocol == "HTTP/1.1"
    assert resp.rec_headers.get_header("WARC-Protocol") == "h2"
    assert req.rec_headers.get_header("WARC-Protocol") == "h2"
    assert resp.http_headers.get_header("Content-Length") == "2"
    assert body == b"hi"


async def test_warc_header_declared_body_not_read_is_truncated(tmp_path: Path) -> None:
    # a Content-Length over max_bytes: the body was never read
    path = tmp_path / "skip.warc"
    skipped = exchange(f"{ORIGIN}/huge", 200, [(b"Content-Length", b"99999999")], b"")
    async with WarcWriter(path) as warc:
        await warc.write(make_page(exchanges=(skipped,)))
    (_, _), (resp, body), _ = load_records(path)
    assert resp.rec_headers.get_header("WARC-Truncated") == "length"
    assert resp.http_headers.get_header("Content-Length") == "0"
    assert body == b""


async def test_warc_page_without_exchanges_adds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.warc.gz"
    async with WarcWriter(path) as warc:
        await warc.write(make_page())
    assert warc.records == 1
    assert [r.rec_type for r, _ in load_records(path)] == ["warcinfo"]


async def test_warc_unwritable_path_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "crawl.warc.gz"
    with pytest.raises(OutputError, match=r"cannot write .*crawl\.warc\.gz: No such file"):
        async with WarcWriter(path):
            pass  # pragma: no cover
    assert not path.parent.exists()


async def test_warc_pending_pages_are_written_on_close(tmp_path: Path) -> None:
    path = tmp_path / "crawl.warc"
    pages = sample_pages()
    async with WarcWriter(path) as warc:
        with trio.CancelScope() as scope:
            scope.cancel()
            await warc.write(pages[0])
    assert len(load_records(path)) == 1 + 2 * 3


def test_config_summary_is_json_and_skips_hooks() -> None:
    config = CrawlConfig(
        seeds=("http://a.example/",),
        include=("x",),
        state=Path("st"),
        should_follow=lambda url, page: True,
    )
    summary = config_summary(config)
    assert "should_follow" not in summary
    assert summary["seeds"] == ["http://a.example/"]
    assert summary["state"] == "st"
    json.dumps(summary)
