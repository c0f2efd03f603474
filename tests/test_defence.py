"""The last line of defence: a bug met while handling one URL is that URL's error record
(kind ``other``) and the crawl goes on; the caller's own hooks still end the crawl."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from protego import Protego

import crawler
import crawler._build
import crawler._distributed
import crawler._engine
import crawler._retry
from crawler._build import build_page
from crawler._fetch import Fetcher
from crawler._links import parse_html
from crawler._unexpected import ends_crawl, note_hook, unexpected_error
from tests.web.routes import MockSite, chain_site, open_site_server

A = "http://a.test"
SITE = 8
DEADLINE = 60.0
"""Virtual seconds under autojump_clock: far above what these crawls need."""


def config(**kwargs: Any) -> crawler.CrawlConfig:
    settings: dict[str, Any] = {"seeds": (f"{A}/",), "rate": 0, "obey_robots": False}
    settings.update(kwargs)
    return crawler.CrawlConfig(**settings)


def every_url() -> set[str]:
    return {f"{A}/", *(f"{A}/p/{i}" for i in range(SITE))}


async def crawl_all(
    cfg: crawler.CrawlConfig, site: MockSite
) -> tuple[list[crawler.Page], crawler.Statistics]:
    with trio.fail_after(DEADLINE):
        async with crawler.open_crawl(cfg, transport=site.transport()) as crawl:
            pages = [page async for page in crawl]
            return pages, crawl.statistics()


def boom_at(url: str, real: Any) -> Any:
    """`real`, raising RuntimeError("boom") when its `url` keyword is `url`."""

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("url") == url and kwargs.get("fetched") is not None:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    return flaky


def assert_one_boom(pages: list[crawler.Page], stats: crawler.Statistics, url: str) -> None:
    counts = Counter(page.url for page in pages)
    assert set(counts) == every_url() and set(counts.values()) == {1}
    failed = [page for page in pages if page.error is not None]
    assert [page.url for page in failed] == [url]
    error = failed[0].error
    assert error is not None and error.kind is crawler.ErrorKind.OTHER
    assert "RuntimeError" in error.message and "boom" in error.message
    assert stats.pages == len(pages) and stats.errors == 1
    assert stats.errors_by_kind == {"other": 1}
    assert stats.done == len(pages) - 1 and stats.in_flight == 0 and stats.queued == 0


async def test_a_bug_in_build_page_is_one_error_record(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = f"{A}/p/3"
    monkeypatch.setattr(crawler._engine, "build_page", boom_at(target, build_page))
    site = MockSite(chain_site(A, SITE))
    with caplog.at_level(logging.INFO, logger="crawler"):
        pages, stats = await crawl_all(config(), site)
    assert_one_boom(pages, stats, target)
    assert len(site.log) == len(every_url())  # fetched once, not retried
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 1 and target in logged[0].getMessage()


async def test_a_bug_in_the_link_extractor_is_one_error_record(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"{A}/p/5"
    real = parse_html

    def flaky(body: bytes, url: str, *args: Any, **kwargs: Any) -> Any:
        if url == target:
            raise RuntimeError("boom")
        return real(body, url, *args, **kwargs)

    monkeypatch.setattr(crawler._build, "parse_html", flaky)
    pages, stats = await crawl_all(config(concurrency=3), MockSite(chain_site(A, SITE)))
    assert_one_boom(pages, stats, target)


async def test_a_header_that_breaks_a_parser_is_one_error_record(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"{A}/p/2"
    real = crawler._retry.parse_retry_after

    def fragile(value: str | None, **kwargs: Any) -> float | None:
        if value == "breaks the parser":
            raise RuntimeError("boom")
        return real(value, **kwargs)

    monkeypatch.setattr(crawler._retry, "parse_retry_after", fragile)
    site = MockSite(chain_site(A, SITE))
    site.pages[target] = httpx.Response(503, headers={"Retry-After": "breaks the parser"})
    pages, stats = await crawl_all(config(retries=2), site)
    assert_one_boom(pages, stats, target)
    # Its links were never read, but the others reach every page.


async def test_with_state_the_failed_url_is_done_and_not_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"{A}/p/3"
    with monkeypatch.context() as patch:
        patch.setattr(crawler._engine, "build_page", boom_at(target, build_page))
        site = MockSite(chain_site(A, SITE))
        pages, stats = await crawl_all(config(state=tmp_path), site)
    assert_one_boom(pages, stats, target)
    # Resumed without the bug: everything, the failed URL too, was committed as done.
    again, stats = await crawl_all(config(state=tmp_path), site)
    assert again == [] and stats.pages == len(pages) and stats.errors_by_kind == {"other": 1}
    assert len(site.log) == len(every_url())


async def test_unparseable_robots_txt_allows_all(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Protego, "parse", broken)
    site = MockSite(chain_site(A, SITE))
    site.pages[f"{A}/robots.txt"] = httpx.Response(200, text="User-agent: *\nDisallow: /p/\n")
    pages, stats = await crawl_all(config(obey_robots=True), site)
    assert {page.url for page in pages} == every_url() and stats.errors == 0
    assert stats.hosts[A].robots == "allow_all"


async def test_a_bug_fetching_robots_txt_makes_it_unavailable(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: object, origin: str) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Fetcher, "fetch_robots", broken)
    pages, _ = await crawl_all(config(obey_robots=True, retries=1), MockSite(chain_site(A, 3)))
    assert [page.url for page in pages] == [f"{A}/"]
    error = pages[0].error
    assert error is not None and error.kind is crawler.ErrorKind.ROBOTS_UNAVAILABLE


async def test_a_raising_should_follow_hook_still_ends_the_crawl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def should_follow(url: str, parent: crawler.Page) -> bool:
        raise RuntimeError("hook bug")

    site = MockSite(chain_site(A, SITE))
    with (
        trio.fail_after(DEADLINE),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="hook bug"), flatten_subgroups=True
        ) as caught,
    ):
        async with crawler.open_crawl(
            config(should_follow=should_follow), transport=site.transport()
        ) as crawl:
            async for _ in crawl:
                pass
    match, _ = caught.value.split(RuntimeError)
    assert match is not None
    leaves: list[BaseException] = [match]
    while isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    (exc,) = leaves
    assert any("should_follow" in note for note in getattr(exc, "__notes__", ()))


def test_what_ends_the_crawl() -> None:
    assert not ends_crawl(RuntimeError("boom")) and not ends_crawl(MemoryError())
    assert ends_crawl(crawler.StateError("locked")) and ends_crawl(trio.BrokenResourceError())
    assert ends_crawl(trio.Cancelled._create()) and ends_crawl(KeyboardInterrupt())
    hooked = ValueError("hook")
    note_hook(hooked, "prepare")
    assert ends_crawl(hooked) and ends_crawl(ExceptionGroup("g", [ValueError(), hooked]))
    assert not ends_crawl(ExceptionGroup("g", [ValueError(), KeyError()]))

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    error = unexpected_error(Unprintable(), "http://x/")
    assert error.kind is crawler.ErrorKind.OTHER and "Unprintable" in error.message
    assert len(unexpected_error(ValueError("x" * 100_000), "http://x/").message) < 1000


# -- the shared-crawl worker ------------------------------------------------------------


async def test_a_bug_in_a_shared_crawl_is_one_error_record(
    redis_url: str, crawl_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_site_server(ports=1, pages=30) as server:
        target = server.url(0, "/page/3")
        monkeypatch.setattr(crawler._engine, "build_page", boom_at(target, build_page))
        cfg = crawler.CrawlConfig(seeds=(server.url(0),), rate=0, per_host=4, concurrency=4)
        with trio.fail_after(DEADLINE):
            async with crawler.open_shared_crawl(
                cfg, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
            ) as crawl:
                pages = [page async for page in crawl]
                stats = crawl.statistics()
        counts = Counter(page.url for page in pages)
        assert set(counts.values()) == {1}
        failed = [page for page in pages if page.error is not None]
        assert [page.url for page in failed] == [target]
        assert failed[0].error is not None and "RuntimeError: boom" in failed[0].error.message
        assert stats.pages == len(pages) and stats.errors_by_kind == {"other": 1}
        # /page/3's links were lost with it; every other page it does not alone reach is here.
        assert len(pages) >= len(server.reachable_urls()) - 10
