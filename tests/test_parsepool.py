"""HTML parsing in child processes (crawler._parsepool): the same results as parsing
in-process, and a child's death costs at most the page that killed it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import crawler
import crawler._build
from crawler import _parsepool
from crawler._links import ParsedPage, parse_html
from crawler._parsechild import answer, decode_reply, encode_reply, encode_request
from crawler._parsepool import ParsePool, ParserCrashed, child_command
from tests.web.routes import MockSite, html

ROOT = Path(__file__).resolve().parent.parent
CHILDREN = Path(__file__).resolve().parent / "parse_children.py"
DEADLINE = 30.0
URL = "http://example.com/dir/page.html"

PAGES: list[tuple[bytes, str | None]] = [
    (html("plain", ["/a", "b", "../c#x", "http://other.example/d"]).encode(), "text/html"),
    (b"<title>no type</title><a href='/x'>x</a>", None),
    ("<title>caf\xe9</title><a href='/\xe9'>e</a>".encode("cp1252"), "text/html; charset=latin1"),
    (b'<meta charset="koi8-r"><title>\xf0\xd2\xc9\xd7\xc5\xd4</title>', "text/html"),
    (b"<base href='/base/'><a href='rel'>r</a><a rel=nofollow href='/no'>n</a>", "text/html"),
    (b'<meta name="robots" content="nofollow"><title>t</title><a href="/x">x</a>', "text/html"),
    (b"\xff\xfe<\x00a\x00", "text/html"),
    (b"", "text/html"),
]


def _command(mode: str) -> list[str]:
    return [sys.executable, str(CHILDREN), mode]


@asynccontextmanager
async def running_pool(processes: int = 1, mode: str | None = None) -> AsyncIterator[ParsePool]:
    pool = ParsePool(processes, command=None if mode is None else _command(mode))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


async def wait_ready(pool: ParsePool) -> None:
    while not pool.ready:  # noqa: ASYNC110 - the pool has no event for it (nor needs one)
        await trio.sleep(0.01)


async def parse(pool: ParsePool, body: bytes, content_type: str | None) -> ParsedPage:
    return await pool.parse(body, URL, content_type, max_links=10_000, max_url_length=2083)


def test_frames_round_trip_through_the_child_code() -> None:
    buffer = bytearray()
    for ident, (body, content_type) in enumerate(PAGES, start=1):
        buffer += encode_request(ident, body, URL, content_type, 10_000, 2083)
    buffer += encode_request(99, b"<a href=x>", URL, None, 10, 2083)[:-3]  # incomplete
    replies: list[bytes] = []
    used = answer(buffer, replies.append)
    assert len(replies) == 1  # one write for the batch
    replies = _split(replies[0])
    assert len(replies) == len(PAGES)
    assert bytes(buffer[used:]) == encode_request(99, b"<a href=x>", URL, None, 10, 2083)[:-3]
    for reply, (body, content_type) in zip(replies, PAGES, strict=True):
        assert decode_reply(reply[8:]) == parse_html(body, URL, content_type)


def _split(data: bytes) -> list[bytes]:
    replies = []
    while data:
        _, length = struct.unpack_from("<II", data)
        replies.append(data[: 8 + length])
        data = data[8 + length :]
    return replies


def test_a_careful_request_is_answered_before_the_next_is_parsed() -> None:
    frames = [
        encode_request(i, b"<a href=x>", URL, None, 10, 2083, careful=i == 2) for i in (1, 2, 3, 4)
    ]
    writes: list[bytes] = []
    answer(bytearray(b"".join(frames)), writes.append)
    assert [len(_split(write)) for write in writes] == [2, 2]


def test_a_title_json_cannot_hold_in_utf8_still_round_trips() -> None:
    parsed = ParsedPage(
        title="odd \ud800 title", links=("http://a/",), nofollow=False, encoding="utf-8"
    )
    assert decode_reply(encode_reply(7, parsed)[8:]) == parsed


def test_limits_travel_with_the_page() -> None:
    body = html("t", [f"/p{i}" for i in range(20)]).encode()
    replies: list[bytes] = []
    answer(bytearray(encode_request(1, body, URL, "text/html", 3, 2083)), replies.append)
    assert len(decode_reply(replies[0][8:]).links) == 3


async def test_the_child_parses_as_the_crawl_would() -> None:
    assert child_command() is not None
    with trio.fail_after(DEADLINE):
        async with running_pool() as pool:
            await wait_ready(pool)
            results: dict[int, ParsedPage] = {}

            async def one(index: int) -> None:
                body, content_type = PAGES[index % len(PAGES)]
                results[index] = await parse(pool, body, content_type)

            async with trio.open_nursery() as nursery:
                for index in range(64):
                    nursery.start_soon(one, index)
    for index, parsed in results.items():
        body, content_type = PAGES[index % len(PAGES)]
        assert parsed == parse_html(body, URL, content_type)


async def test_pages_go_to_the_child_once_it_is_ready_and_it_is_reaped() -> None:
    with trio.fail_after(DEADLINE):
        async with running_pool(mode="marked") as pool:
            await wait_ready(pool)
            parsed = await parse(pool, *PAGES[0])
            assert parsed.title is not None and parsed.title.startswith("child ")
            assert parsed.links == parse_html(PAGES[0][0], URL, "text/html").links
            pid = int(parsed.title.split()[1])
    with pytest.raises(ProcessLookupError):  # killed and waited for, not a zombie
        os.kill(pid, 0)


async def test_before_a_child_is_ready_pages_are_parsed_here() -> None:
    with trio.fail_after(DEADLINE):
        async with running_pool(mode="marked") as pool:
            if pool.ready:  # pragma: no cover - a child that started in no time
                pytest.skip("the child was ready at once")
            parsed = await parse(pool, *PAGES[0])
    assert parsed == parse_html(*PAGES[0][:1], URL, PAGES[0][1])


async def test_a_page_that_kills_the_child_is_its_own_error_only() -> None:
    innocent = [(html(f"page {i}", [f"/p{i}"]).encode(), "text/html") for i in range(20)]
    killer = (b"<title>KILL</title>", "text/html")
    outcomes: dict[int, ParsedPage | BaseException] = {}

    async def one(index: int, body: bytes, content_type: str | None) -> None:
        try:
            outcomes[index] = await parse(pool, body, content_type)
        except ParserCrashed as exc:
            outcomes[index] = exc

    with trio.fail_after(DEADLINE):
        async with running_pool(mode="die-on-kill") as pool:
            await wait_ready(pool)
            async with trio.open_nursery() as nursery:
                for index, (body, content_type) in enumerate(innocent[:10]):
                    nursery.start_soon(one, index, body, content_type)
                nursery.start_soon(one, 100, *killer)
                for index, (body, content_type) in enumerate(innocent[10:], start=10):
                    nursery.start_soon(one, index, body, content_type)
            # The pool started another child, which parses what comes next.
            await wait_ready(pool)
            after = await parse(pool, *innocent[0])
    assert isinstance(outcomes.pop(100), ParserCrashed)
    for index, result in outcomes.items():
        assert result == parse_html(innocent[index][0], URL, "text/html")
    assert after == parse_html(innocent[0][0], URL, "text/html")


async def test_a_child_that_never_starts_leaves_parsing_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(DEADLINE):
        async with running_pool(mode="never-ready") as pool:
            with trio.move_on_after(3):  # three starts, each failing at once
                while "parsing in-process" not in caplog.text:  # noqa: ASYNC110 - a log line
                    await trio.sleep(0.02)
            assert "3 times before it was ready" in caplog.text
            assert not pool.ready
            assert await parse(pool, *PAGES[0]) == parse_html(PAGES[0][0], URL, "text/html")


async def test_no_interpreter_means_parsing_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "")
    assert child_command() is None
    with trio.fail_after(DEADLINE):
        async with running_pool() as pool:
            await trio.sleep(0.2)
            assert not pool.ready
            assert await parse(pool, *PAGES[0]) == parse_html(PAGES[0][0], URL, "text/html")


async def test_a_cancelled_parse_leaves_the_pool_working() -> None:
    with trio.fail_after(DEADLINE):
        async with running_pool(mode="slow") as pool:
            await wait_ready(pool)
            with trio.move_on_after(0.1) as scope:
                await parse(pool, *PAGES[0])
            assert scope.cancelled_caught
            # The late reply to the cancelled page is dropped; the next page gets its own.
            assert await parse(pool, *PAGES[1]) == parse_html(PAGES[1][0], URL, PAGES[1][1])


async def test_a_crawl_through_a_child_gets_the_same_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = trio.Event()  # no response before the child is ready

    async def wait_for_gate(_: object) -> None:
        await gate.wait()

    site = MockSite(on_request=wait_for_gate)
    for i in range(30):
        links = [f"/p/{(i * 7 + 1) % 30}", f"/p/{i + 1}"]
        site.pages[f"http://site.test/p/{i}"] = html(f"page {i}", links)
    site.pages["http://site.test/"] = html("home", ["/p/0"])
    site.pages["http://site.test/robots.txt"] = httpx.Response(404)
    base = crawler.CrawlConfig(seeds=("http://site.test/",), rate=0, per_host=4)

    async def run(config: crawler.CrawlConfig) -> dict[str, tuple[str | None, tuple[str, ...]]]:
        pages: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        async with crawler.open_crawl(config, transport=site.transport()) as running:
            if running.parser is not None:
                await wait_ready(running.parser)
            gate.set()
            async for page in running:
                assert page.error is None
                pages[page.url] = (page.title, page.links)
        return pages

    with trio.fail_after(DEADLINE):
        here = await run(base)

        def not_here(*args: object, **kwargs: object) -> ParsedPage:
            raise AssertionError("parsed in the crawl's process")

        # Every page parsed in the child: the crawl's own parse_html would fail the test.
        monkeypatch.setattr(_parsepool, "parse_html", not_here)
        monkeypatch.setattr(crawler._build, "parse_html", not_here)
        gate = trio.Event()
        there = await run(dataclasses.replace(base, parse_processes=1))
    assert len(here) == 32  # p/30 is a 404
    assert there == here


def test_parse_processes_is_checked() -> None:
    with pytest.raises(ValueError, match="parse_processes"):
        crawler.CrawlConfig(seeds=("http://a.test/",), parse_processes=-1)


async def test_a_killed_crawl_takes_its_parse_process_with_it(tmp_path: Path) -> None:
    """kill -9 of the crawl: the child sees its input end and exits (no orphan)."""
    from tests.test_cli import start_crawl
    from tests.web.routes import open_site_server

    async with open_site_server(ports=1, pages=200) as server:
        with trio.fail_after(DEADLINE):
            running = await start_crawl(
                tmp_path, server.url(0), "--rate", "5", "-q", "--parse-processes", "1"
            )
            process = running.process
            try:
                children: list[int] | None = []
                while children == []:
                    await trio.sleep(0.05)
                    children = _children(process.pid)
                if children is None:  # pragma: no cover - no /proc children
                    pytest.skip("this kernel does not list a process's children")
                process.kill()
                await process.wait()
            finally:
                if process.returncode is None:  # pragma: no cover - only on failure
                    process.kill()
                    await process.wait()
            (child,) = children
            while _alive(child):  # noqa: ASYNC110 - polled in /proc
                await trio.sleep(0.05)


def _children(pid: int) -> list[int] | None:
    """The process's children (of all its threads: trio starts processes from a worker
    thread), or None when /proc does not list them."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):  # pragma: no cover
        return None  # a kernel without the file
    children: list[int] = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{thread}/children"
        with contextlib.suppress(FileNotFoundError), open(path) as file:  # a thread just ended
            children += [int(child) for child in file.read().split()]
    return children


def _alive(pid: int) -> bool:
    """Running, not exited (an exited orphan may stay a zombie in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_page_that_kills_the_child_is_one_error_record_in_a_crawl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = trio.Event()

    async def wait_for_gate(_: object) -> None:
        await gate.wait()

    site = MockSite(on_request=wait_for_gate)
    site.pages["http://site.test/"] = html("home", [f"/p/{i}" for i in range(10)] + ["/kill"])
    for i in range(10):
        site.pages[f"http://site.test/p/{i}"] = html(f"page {i}", [])
    site.pages["http://site.test/kill"] = html("KILL", ["/never"])
    site.pages["http://site.test/robots.txt"] = httpx.Response(404)
    monkeypatch.setattr(_parsepool, "child_command", lambda: _command("die-on-kill"))
    config = crawler.CrawlConfig(seeds=("http://site.test/",), rate=0, parse_processes=1)
    with trio.fail_after(DEADLINE):
        async with crawler.open_crawl(config, transport=site.transport()) as running:
            assert running.parser is not None
            await wait_ready(running.parser)
            gate.set()
            pages = {page.url: page async for page in running}
    killed = pages.pop("http://site.test/kill")
    assert killed.status == 200
    assert killed.error is not None and killed.error.kind is crawler.ErrorKind.OTHER
    assert "parse process died" in killed.error.message
    assert killed.links == ()
    assert sorted(pages) == sorted(
        ["http://site.test/"] + [f"http://site.test/p/{i}" for i in range(10)]
    )
    assert all(page.error is None for page in pages.values())
