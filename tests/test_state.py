"""Durable crawl state (``CrawlConfig.state`` / ``crawl --state DIR``): the SQLite store, the
engine on top of it, the writers' resume mode and the command's --status / --state-reset.

Crash-and-resume of the real command (SIGKILL, SIGINT) is in test_resume.py."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import crawler
from crawler._engine import Crawl
from crawler._memory import MemoryBackend
from crawler._output import JsonLinesWriter, OutputError, WarcWriter
from crawler._state import (
    DB_NAME,
    Batch,
    Done,
    HostState,
    NewUrl,
    StateError,
    StateMismatch,
    StateStore,
    UrlState,
    read_snapshot,
    reset_state,
)
from tests.test_cli import ROOT, RUN_TIMEOUT, _env, read_jsonl, warc_contents
from tests.test_output import make_page
from tests.web.routes import MockSite, SiteServer, chain_site, html, open_site_server

A = "http://a.test"


def config(state: Path, **kwargs: Any) -> crawler.CrawlConfig:
    settings: dict[str, Any] = {
        "seeds": (f"{A}/",),
        "rate": 0,
        "obey_robots": False,
        "per_host": 2,
        "concurrency": 8,
        "state": state,
    }
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)


def rows(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(state / DB_NAME) as conn:
        return conn.execute(sql, args).fetchall()


def open_for_writing(path: Path) -> Any:
    return open(path, "wb")


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (the caller bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - the crawl has no event for it
        await trio.sleep(0.01)


def new(url: str, depth: int = 1, *, front: bool = False) -> NewUrl:
    return NewUrl(url, url.split("/", 3)[0] + "//" + url.split("/", 3)[2], depth, front=front)


# ---------------------------------------------------------------------------
# The store


async def test_fresh_state_then_commit_done_and_links_together(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path))
    snapshot = await store.open()
    assert (snapshot.totals.pages, snapshot.queued, snapshot.seen, snapshot.outputs) == (
        0,
        0,
        0,
        {},
    )
    result = await store.commit(Batch(inserts=[new(f"{A}/", 0)]))
    assert result.new == {A: 1} and result.seen == 1
    [row] = await store.load(A, None, 10)
    assert (row.url, row.depth, row.attempt) == (f"{A}/", 0, 0)

    done = Done(
        seq=row.seq,
        url=row.url,
        origin=A,
        error_kind=None,
        bytes=100,
        redirects=0,
        links=[new(f"{A}/x"), new(f"{A}/y"), new(f"{A}/x")],
    )
    result = await store.commit(Batch(done=[done], outputs={"jsonl:/out": 123}))
    assert result.new == {A: 2}  # /x once: INSERT OR IGNORE
    assert result.seen == 3
    assert [r.url for r in await store.load(A, row.seq, 10)] == [f"{A}/x", f"{A}/y"]
    await store.aclose()

    stored = read_snapshot(tmp_path)
    assert stored is not None
    snapshot = stored
    assert snapshot.totals.pages == 1 and snapshot.totals.bytes == 100
    assert snapshot.queued == 2 and snapshot.seen == 3
    assert snapshot.outputs == {"jsonl:/out": 123}
    [host] = snapshot.hosts
    assert (host.origin, host.done, host.queued, host.bytes) == (A, 1, 2, 100)


async def test_a_failing_batch_changes_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/", 0)]))
    [row] = await store.load(A, None, 10)
    good = Done(row.seq, row.url, A, None, 10, 0, links=[new(f"{A}/a")])
    bad_link = NewUrl(f"{A}/bad", A, object())  # type: ignore[arg-type]  # fails mid-batch
    bad = Done(None, f"{A}/elsewhere", A, "http", 5, 0, links=[new(f"{A}/b"), bad_link])
    with pytest.raises(StateError, match="cannot write crawl state"):
        await store.commit(
            Batch(done=[good, bad], outputs={"jsonl:/out": 999}, hosts=[HostState(A, 0, 1, None)])
        )
    # Nothing of it landed: no done mark, no links, no offsets, no counters.
    assert rows(tmp_path, "SELECT url, state FROM urls") == [(f"{A}/", 0)]
    assert rows(tmp_path, "SELECT name FROM outputs") == []
    # ...and the store's own counters were rolled back with it.
    result = await store.commit(Batch(done=[good]))
    assert result.new == {A: 1} and result.seen == 2
    await store.aclose()
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert (snapshot.totals.pages, snapshot.totals.errors, snapshot.totals.bytes) == (1, 0, 10)
    assert snapshot.hosts[0].backoff == 0


FAIL_AT = {
    "done marks": "UPDATE OF state ON urls",
    "output offsets": "INSERT ON outputs",
    "totals (the last statement)": "INSERT ON meta",
}


@pytest.mark.parametrize("statement", list(FAIL_AT))
async def test_a_commit_failing_at_any_statement_lands_none_of_it(
    tmp_path: Path, statement: str
) -> None:
    # Exactly-once rests on a page's done mark and the output offset after its line
    # landing together: marks without offsets lose pages on resume (the output is cut
    # back, the pages are not fetched again), offsets without marks double them. The
    # SQLite layer itself fails here, in the middle of the transaction.
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/{i}", 1) for i in range(20)]))
    queued = await store.load(A, None, 100)
    before = {"jsonl:/out": 1000, "warc:/out": 5000}
    first = [Done(r.seq, r.url, A, None, 10, 0) for r in queued[:10]]
    await store.commit(Batch(done=first, outputs=before))

    db = store._db
    assert db is not None
    db.conn.execute(
        f"CREATE TEMP TRIGGER fail BEFORE {FAIL_AT[statement]} "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    second = [Done(r.seq, r.url, A, None, 10, 0, links=[new(f"{A}/new")]) for r in queued[10:]]
    with pytest.raises(StateError, match="injected failure"):
        await store.commit(Batch(done=second, outputs={"jsonl:/out": 2000, "warc:/out": 9000}))
    await store.aclose()

    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert snapshot.outputs == before
    assert (snapshot.totals.pages, snapshot.queued, snapshot.seen) == (10, 10, 20)
    states = rows(tmp_path, "SELECT url, state FROM urls ORDER BY seq")
    assert states == [(r.url, UrlState.DONE) for r in queued[:10]] + [
        (r.url, UrlState.QUEUED) for r in queued[10:]
    ]
    # A resumed crawl gets the second batch's pages again, to write after offset 1000.
    store = StateStore(tmp_path, config(tmp_path))
    assert (await store.open()).outputs == before
    assert [r.url for r in await store.load(A, None, 100)] == [r.url for r in queued[10:]]
    await store.aclose()


@pytest.mark.parametrize("again", [False, True])
async def test_a_batch_of_done_pages_is_counted_once(tmp_path: Path, again: bool) -> None:
    # Twelve pages done in one commit take the one-statement path; a page marked in
    # an earlier commit sends the whole batch row by row, where it counts once.
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/{i}", 1) for i in range(12)]))
    queued = await store.load(A, None, 100)
    done = [Done(r.seq, r.url, A, "http" if i % 3 else None, 10, 0) for i, r in enumerate(queued)]
    if again:
        await store.commit(Batch(done=done[:1]))
    await store.commit(Batch(done=done))
    await store.aclose()
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    assert (snapshot.totals.pages, snapshot.totals.errors, snapshot.queued) == (12, 8, 0)
    states = dict(rows(tmp_path, "SELECT url, state FROM urls"))
    assert sorted(states.values()) == sorted([UrlState.DONE] * 4 + [UrlState.FAILED] * 8)


async def test_refill_pages_through_the_queue_in_order_and_priority_first(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/{i}") for i in range(25)]))
    first = await store.load(A, None, 10)
    assert [r.url for r in first] == [f"{A}/{i}" for i in range(10)]
    second = await store.load(A, first[-1].seq, 10)
    assert [r.url for r in second] == [f"{A}/{i}" for i in range(10, 20)]
    result = await store.commit(Batch(inserts=[new(f"{A}/urgent", front=True)]))
    assert result.new == {} and [r.url for r in result.front] == [f"{A}/urgent"]
    assert result.front[0].seq < first[0].seq
    assert [r.url for r in await store.load(A, second[-1].seq, 10)] == [
        f"{A}/{i}" for i in range(20, 25)
    ]
    assert (await store.load(A, None, 1))[0].url == f"{A}/urgent"
    assert await store.contains(f"{A}/7") and not await store.contains(f"{A}/nope")
    await store.aclose()


async def test_max_pages_is_counted_by_the_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path, max_pages=3))
    await store.open()
    result = await store.commit(Batch(inserts=[new(f"{A}/{i}") for i in range(5)]))
    assert result.new == {A: 3} and result.dropped_max_pages == 2
    await store.aclose()
    store = StateStore(tmp_path, config(tmp_path, max_pages=4))
    await store.open()
    result = await store.commit(Batch(inserts=[new(f"{A}/{i}") for i in range(6)]))
    assert result.new == {A: 1}  # one more allowed, across runs
    await store.aclose()


async def test_another_crawl_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path, seeds=(f"{A}/", "http://b.test/")))
    await store.open()
    await store.aclose()
    # The same crawl: seeds in another order, other politeness settings.
    same = config(tmp_path, seeds=("http://b.test/", f"{A}/"), rate=5, per_host=1)
    store = StateStore(tmp_path, same)
    await store.open()
    await store.aclose()
    changes: list[tuple[dict[str, Any], str]] = [
        ({"seeds": (f"{A}/",)}, "seeds"),
        ({"scope": "domain"}, "scope"),
        ({"include": ("/x",)}, "include"),
        ({"exclude": ("/y",)}, "exclude"),
        ({"max_depth": 2}, "max_depth"),
    ]
    for changed, needle in changes:
        settings = {"seeds": (f"{A}/", "http://b.test/"), **changed}
        store = StateStore(tmp_path, config(tmp_path, **settings))
        with pytest.raises(StateMismatch, match=needle) as info:
            await store.open()
        assert "--state-reset" in str(info.value)
        assert not store.is_open


async def test_one_crawl_at_a_time(tmp_path: Path) -> None:
    first = StateStore(tmp_path, config(tmp_path))
    await first.open()
    second = StateStore(tmp_path, config(tmp_path))
    with pytest.raises(StateError, match="in use by another crawl"):
        await second.open()
    with pytest.raises(StateError, match="in use"):
        reset_state(tmp_path)
    await first.aclose()
    await second.open()
    await second.aclose()
    reset_state(tmp_path)
    assert read_snapshot(tmp_path) is None


# ---------------------------------------------------------------------------
# The engine with a state


async def crawl_until(
    cfg: crawler.CrawlConfig, site: MockSite, stop_after: int | None = None
) -> tuple[list[crawler.Page], crawler.Statistics]:
    pages: list[crawler.Page] = []
    with trio.fail_after(30):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            async for page in crawl:
                pages.append(page)
                if len(pages) == stop_after:
                    crawl.stop()
            stats = crawl.statistics()
    return pages, stats


async def test_resume_fetches_each_page_once_across_runs(tmp_path: Path) -> None:
    site = MockSite(chain_site(A, 200))
    cfg = config(tmp_path)
    first, stats = await crawl_until(cfg, site, stop_after=50)
    assert 50 <= len(first) < 60  # in-flight requests were let finish
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.totals.pages == len(first) and snapshot.queued > 0

    second, stats = await crawl_until(cfg, site)
    urls = [p.url for p in first + second]
    assert sorted(urls) == sorted({f"{A}/", *(f"{A}/p/{i}" for i in range(200))})
    assert len(site.log) == 201  # nothing fetched twice
    assert stats.pages == 201 and stats.queued == 0  # statistics accumulate
    assert stats.hosts[A].done == 201
    assert stats.seen == 201

    third, stats = await crawl_until(cfg, site)
    assert third == [] and len(site.log) == 201 and stats.pages == 201


async def test_a_page_counts_as_done_when_the_next_is_asked_for(tmp_path: Path) -> None:
    site = MockSite(chain_site(A, 10, fanout=1))
    cfg = config(tmp_path)
    with trio.fail_after(10):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            got = [await crawl.__anext__(), await crawl.__anext__()]
            # The second page was handed over but not dealt with: leave now.
    assert [p.url for p in got] == [f"{A}/", f"{A}/p/0"]
    pages, _ = await crawl_until(cfg, site)
    # /p/0 is delivered again (it was never marked done), / is not; the crawl ran ahead
    # into the results buffer, so the rest are fetched again in any order.
    assert sorted(p.url for p in pages) == sorted(f"{A}/p/{i}" for i in range(10))


async def test_mark_done_explicitly_with_output_offsets(tmp_path: Path) -> None:
    site = MockSite(chain_site(A, 5, fanout=1))
    cfg = config(tmp_path)
    with trio.fail_after(10):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            async for page in crawl:
                crawl.mark_done(page, outputs={"jsonl:/x": len(page.url)})
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.outputs == {"jsonl:/x": len(f"{A}/p/4")}
    assert snapshot.totals.pages == 6 and snapshot.queued == 0


async def test_robots_and_retry_after_survive_a_restart(tmp_path: Path) -> None:
    pages: dict[str, str | httpx.Response] = {
        f"{A}/robots.txt": "User-agent: *\nDisallow: /private\nCrawl-delay: 0\n",
        f"{A}/": html("home", ["/private/x", "/busy"]),  # refused, then paused: in order
        f"{A}/busy": httpx.Response(429, headers={"Retry-After": "300"}),
    }
    site = MockSite(pages)
    cfg = config(tmp_path, obey_robots=True, retries=3)
    with trio.fail_after(10):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            home = await crawl.__anext__()
            assert home.url == f"{A}/"
            crawl.mark_done(home)
            await until(
                lambda: (
                    crawl.statistics().hosts[A].paused_until is not None
                    and crawl.statistics().disallowed == 1
                )
            )
            crawl.stop(graceful=False)
    assert site.urls() == [f"{A}/robots.txt", f"{A}/", f"{A}/busy"]
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None
    [host] = snapshot.hosts
    assert host.paused_until == pytest.approx(time.time() + 300, abs=30)
    assert host.robots is not None and b"Disallow: /private" in host.robots[1]
    assert host.disallowed == 1 and snapshot.totals.disallowed == 1
    assert rows(tmp_path, "SELECT attempt FROM urls WHERE url = ?", f"{A}/busy") == [(1,)]

    with trio.fail_after(10):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            stats = crawl.statistics()
            assert stats.hosts[A].paused_until is not None  # still waiting out Retry-After
            assert stats.hosts[A].robots == "parsed"  # from the state: not fetched again
            assert stats.disallowed == 1 and stats.pages == 1
            await trio.sleep(0.2)
            crawl.stop(graceful=False)
    assert site.urls() == [f"{A}/robots.txt", f"{A}/", f"{A}/busy"]


async def test_redirect_hops_join_the_seen_set(tmp_path: Path) -> None:
    # /new is found on the redirect target's page, so its link back to /moved comes
    # after the hop was admitted, whatever the order the workers finish in.
    pages: dict[str, str | httpx.Response] = {
        f"{A}/": html("home", ["/old"]),
        f"{A}/old": httpx.Response(301, headers={"Location": f"{A}/moved"}),
        f"{A}/moved": html("moved", ["/", "/new"]),
        f"{A}/new": html("new", ["/moved"]),
    }
    site = MockSite(pages)
    got, _ = await crawl_until(config(tmp_path), site)
    by_url = {p.url: p for p in got}
    assert set(by_url) == {f"{A}/", f"{A}/old", f"{A}/new"}
    assert by_url[f"{A}/old"].final_url == f"{A}/moved"
    assert sorted(site.urls()).count(f"{A}/moved") == 1
    hops = rows(tmp_path, "SELECT url FROM urls WHERE state = 4")
    assert hops == [(f"{A}/moved",)]


async def test_stateless_crawl_keeps_no_state(tmp_path: Path) -> None:
    site = MockSite(chain_site(A, 5))
    cfg = crawler.CrawlConfig(seeds=(f"{A}/",), rate=0, obey_robots=False)
    async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
        assert isinstance(crawl, Crawl) and type(crawl.backend) is MemoryBackend
        pages = [p async for p in crawl]
        crawl.mark_done(pages[0])  # a no-op without a state
    assert len(pages) == 6


async def test_open_crawl_refuses_another_crawls_state(tmp_path: Path) -> None:
    site = MockSite(chain_site(A, 3))
    await crawl_until(config(tmp_path), site)
    with pytest.raises(StateMismatch):
        async with crawler.open_crawl(
            config(tmp_path, seeds=("http://b.test/",)), transport=site.transport()
        ):
            raise AssertionError("not reached")  # pragma: no cover


# ---------------------------------------------------------------------------
# The writers' resume mode


async def test_writers_cut_back_to_the_committed_offset(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    async with JsonLinesWriter(path) as out:
        await out.write(make_page(0))
        committed = out.position
        await out.write(make_page(1))
    assert committed == len(path.read_bytes().split(b"\n")[0]) + 1
    append(path, b'{"torn')
    async with JsonLinesWriter(path, resume_at=committed) as out:
        assert out.position == committed
        await out.write(make_page(2))
        assert out.position == path.stat().st_size
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["url"] for line in lines] == [make_page(0).url, make_page(2).url]

    with pytest.raises(OutputError, match="fewer than the"):
        async with JsonLinesWriter(path, resume_at=10**6):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="stdout"):
        JsonLinesWriter("-", resume_at=0)


async def test_gzip_warc_resumes_at_a_record_boundary(tmp_path: Path) -> None:
    from crawler._page import Exchange

    def page(i: int) -> crawler.Page:
        exchange = Exchange(
            method="GET",
            url=f"http://example.com/page/{i}",
            request_headers=((b"host", b"example.com"),),
            http_version="1.1",
            status=200,
            reason="OK",
            response_headers=((b"content-type", b"text/html"),),
            raw_body=b"<html>%d</html>" % i,
            truncated=False,
            started_at=make_page(i).fetched_at,
        )
        return make_page(i, exchanges=(exchange,))

    path = tmp_path / "out.warc.gz"
    async with WarcWriter(path) as warc:
        await warc.write(page(0))
        committed = warc.position
        await warc.write(page(1))
    assert 0 < committed < path.stat().st_size
    append(path, b"\x1f\x8b torn record")
    async with WarcWriter(path, resume_at=committed) as warc:
        await warc.write(page(2))
    kinds, responses, _ = warc_contents(path)
    assert kinds == ["warcinfo", "response", "request", "response", "request"]
    assert set(responses) == {"http://example.com/page/0", "http://example.com/page/2"}


# ---------------------------------------------------------------------------
# The command: --status, refusal, --state-reset, torn outputs


async def run(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "crawler", *args],
            cwd=ROOT,
            env=_env(),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
async def site() -> Any:
    async with open_site_server(ports=2, pages=30) as server:
        yield server


def crawl_args(server: SiteServer, tmp_path: Path, *extra: str) -> list[str]:
    return [
        server.url(0),
        server.url(1),
        "--rate",
        "0",
        "-o",
        str(tmp_path / "out.jsonl"),
        "--warc",
        str(tmp_path / "out.warc.gz"),
        "--state",
        str(tmp_path / "state"),
        *extra,
    ]


async def test_status_of_a_finished_crawl_and_of_none(tmp_path: Path, site: SiteServer) -> None:
    code, _, err = await run(*crawl_args(site, tmp_path))
    assert code == 0, err
    assert "(complete)" in err
    code, out, err = await run("--state", str(tmp_path / "state"), "--status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    pages = len(site.reachable_urls())
    assert "status: complete" in lines
    assert f"pages done: {pages} ({pages} ok, 0 with errors)" in lines
    assert "queued: 0" in lines
    assert "errors by kind: none" in lines
    assert f"seeds: {' '.join(sorted([site.url(0), site.url(1)]))}" in lines
    assert any(line.startswith("output jsonl: ") for line in lines)
    assert any(line.strip().startswith(site.origin(0)) for line in lines)

    code, out, err = await run("--state", str(tmp_path / "nothing"), "--status")
    assert code == 2 and out == "" and "no crawl state in" in err
    code, out, err = await run("--status")
    assert code == 2 and "--status needs --state DIR" in err


async def test_status_of_a_stopped_crawl(tmp_path: Path, site: SiteServer) -> None:
    code, _, err = await run(*crawl_args(site, tmp_path, "--max-depth", "1"))
    assert code == 0, err
    state = tmp_path / "state"
    # A crawl stopped half-way: put some work back in the queue by hand.
    with sqlite3.connect(state / DB_NAME) as conn:
        conn.execute("UPDATE urls SET state = 0 WHERE url LIKE '%/page/%'")
    code, out, _ = await run("--state", str(state), "--status")
    assert code == 0
    assert "status: stopped, " in out and "to resume" in out


async def test_another_crawl_in_the_state_is_refused_with_exit_2(
    tmp_path: Path, site: SiteServer
) -> None:
    code, _, err = await run(*crawl_args(site, tmp_path))
    assert code == 0, err
    before = (tmp_path / "out.jsonl").read_bytes()
    code, _, err = await run(*crawl_args(site, tmp_path, "--max-depth", "3"))
    assert code == 2
    assert err.startswith("crawl: error: ") and "holds a different crawl" in err
    assert "max_depth" in err and "--state-reset" in err and "Traceback" not in err
    assert (tmp_path / "out.jsonl").read_bytes() == before  # outputs untouched

    args = crawl_args(site, tmp_path)
    args[args.index(str(tmp_path / "out.jsonl"))] = str(tmp_path / "other.jsonl")
    code, _, err = await run(*args)
    assert code == 2 and "resume it with the same -o / --warc" in err
    assert not (tmp_path / "other.jsonl").exists()


async def test_state_reset_starts_over(tmp_path: Path, site: SiteServer) -> None:
    code, _, err = await run(*crawl_args(site, tmp_path, "--max-depth", "0"))
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2
    code, _, err = await run(*crawl_args(site, tmp_path, "--state-reset"))
    assert code == 0, err
    pages = read_jsonl(tmp_path / "out.jsonl")
    assert {p["url"] for p in pages} == site.reachable_urls()
    assert len(pages) == len(site.reachable_urls())
    code, _, err = await run(site.url(0), "--state-reset")
    assert code == 2 and "--state-reset needs --state DIR" in err


async def test_torn_outputs_are_cut_back_on_resume(tmp_path: Path, site: SiteServer) -> None:
    code, _, err = await run(*crawl_args(site, tmp_path))
    assert code == 0, err
    jsonl, warc = tmp_path / "out.jsonl", tmp_path / "out.warc.gz"
    good_jsonl, good_warc = jsonl.read_bytes(), warc.read_bytes()
    append(jsonl, b'{"url": "http://torn')
    append(warc, good_warc[:100])
    code, _, err = await run(*crawl_args(site, tmp_path))
    assert code == 0, err
    assert "resuming the crawl" in err
    assert jsonl.read_bytes() == good_jsonl and warc.read_bytes() == good_warc

    jsonl.write_bytes(good_jsonl[:-10])  # shorter than committed: changed behind our back
    code, _, err = await run(*crawl_args(site, tmp_path))
    assert code == 1 and "fewer than the" in err


def test_a_state_that_cannot_be_written_is_a_fatal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from crawler import _state
    from crawler._cli import main

    real_commit = _state._Database.commit
    calls = 0

    def commit(self: Any, batch: Batch) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_commit(self, batch)

    monkeypatch.setattr(_state._Database, "commit", commit)
    out = tmp_path / "out.jsonl"
    argv = ["http://127.0.0.1:1/", "--ignore-robots", "--retries", "0", "-q", "-o", str(out)]
    code = main([*argv, "--state", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("crawl: error: cannot write crawl state in ")
    assert "disk I/O error" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# The command's --metrics option (here with the other new flags of the command)


async def test_metrics_are_served_while_the_command_crawls(tmp_path: Path) -> None:
    import re

    async with open_site_server(ports=1, pages=200) as server:
        err_path = tmp_path / "stderr.txt"
        with open_for_writing(err_path) as err:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "crawler",
                    server.url(0),
                    "--rate",
                    "20",
                    "--max-pages",
                    "60",
                    "-o",
                    str(tmp_path / "out.jsonl"),
                    "--metrics",
                    "127.0.0.1:0",
                ],
                cwd=ROOT,
                env=_env(),
                stderr=err,
            )
        try:
            with trio.fail_after(30):
                await until(lambda: "/metrics" in err_path.read_text())
                match = re.search(
                    r"metrics at (http://127\.0\.0\.1:\d+/metrics)", err_path.read_text()
                )
                assert match is not None
                async with httpx.AsyncClient() as client:
                    response = await client.get(match.group(1))
                assert response.status_code == 200
                assert "crawler_pages_total" in response.text
                assert await process.wait() == 0
        finally:
            if process.poll() is None:  # pragma: no cover - only on failure
                process.kill()
                await process.wait()


async def test_metrics_port_in_use_is_a_fatal_error(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with listener:
        code, _, err = await run(
            "http://127.0.0.1:1/", "-o", str(tmp_path / "o.jsonl"), "--metrics", f"127.0.0.1:{port}"
        )
    assert code == 1
    assert (
        err == f"crawl: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    )
    code, _, err = await run("http://127.0.0.1:1/", "--metrics", "9100")
    assert code == 2 and "--metrics: expected HOST:PORT, got '9100'" in err


# ---------------------------------------------------------------------------
# Errors and --status


async def test_load_and_contains_report_a_broken_state_as_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/", 0)]))
    assert await store.contains(f"{A}/")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # behind the store's back
        conn.execute("DROP TABLE urls")
    with pytest.raises(StateError, match="cannot read crawl state"):
        await store.load(A, None, 10)
    with pytest.raises(StateError, match="cannot read crawl state"):
        await store.contains(f"{A}/")
    await store.aclose()


async def test_load_of_a_state_overwritten_with_garbage_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/{i}", 0) for i in range(2000)]))
    await store.aclose()
    await store.open()
    db = tmp_path / DB_NAME
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\xa5" * (len(data) - 100))  # all but the header: garbage
    with pytest.raises(StateError, match="cannot read crawl state"):
        await store.load(A, None, 10)
    with pytest.raises(StateError, match="cannot read crawl state"):
        await store.contains(f"{A}/7")
    await store.aclose()


async def test_status_reads_without_the_lock_or_the_pid_file(tmp_path: Path) -> None:
    from crawler._state import LOCK_NAME, lock_holder

    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.commit(Batch(inserts=[new(f"{A}/", 0)]))
    pid_file = tmp_path / LOCK_NAME
    before = (pid_file.read_bytes(), pid_file.stat().st_mtime_ns)
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "crawler", "--state", str(tmp_path), "--status"],
            cwd=ROOT,
            env=_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert f"status: running (pid {os.getpid()})" in done.stdout.decode()
    assert (pid_file.read_bytes(), pid_file.stat().st_mtime_ns) == before
    await store.aclose()

    # Stopped: the probe leaves the pid file alone too, and the lock free.
    before = (pid_file.read_bytes(), pid_file.stat().st_mtime_ns)
    assert lock_holder(tmp_path) is None
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.queued == 1
    assert (pid_file.read_bytes(), pid_file.stat().st_mtime_ns) == before
    again = StateStore(tmp_path, config(tmp_path))
    await again.open()  # the lock can be taken
    await again.aclose()


async def test_a_crawl_starts_while_status_probes_the_lock(tmp_path: Path) -> None:
    import fcntl

    from crawler._state import LOCK_NAME

    store = StateStore(tmp_path, config(tmp_path))
    await store.open()
    await store.aclose()
    # What lock_holder does, held a little longer: a crawl starting now waits it out.
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.open)
                await trio.sleep(0.1)
                os.close(fd)
                fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
    assert store.is_open
    await store.aclose()
