"""Stopping with a hung disk: every shield is bounded, so cancelling returns in time."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import crawler
from crawler import _shield
from crawler._output import JsonLinesWriter, OutputError
from crawler._state import Batch, CommitResult, StateError, StateStore, read_snapshot
from tests.test_output import make_page
from tests.test_state import A, config
from tests.web.routes import MockSite, chain_site


async def test_cancelling_a_crawl_whose_commit_hangs_returns_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shield, "SHIELD_LIMIT", 0.5)
    cfg = config(tmp_path)
    store = StateStore(tmp_path, cfg)
    await store.open()
    db = store._db
    assert db is not None
    real_commit = db.commit
    hung = trio.Event()
    release = threading.Event()
    token = trio.lowlevel.current_trio_token()

    def hanging_commit(batch: Batch) -> CommitResult:
        if batch.done:  # the first batch with pages: the disk hangs
            trio.from_thread.run_sync(hung.set, trio_token=token)
            release.wait(30)
        return real_commit(batch)

    monkeypatch.setattr(db, "commit", hanging_commit)
    pages: list[crawler.Page] = []
    try:
        with trio.fail_after(10):
            with pytest.RaisesGroup(StateError, allow_unwrapped=True, flatten_subgroups=True):
                async with crawler.open_crawl(
                    cfg, transport=MockSite(chain_site(A, 100)).transport(), store=store
                ) as crawl:

                    async def consume() -> None:
                        async for page in crawl:
                            pages.append(page)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(consume)
                        await hung.wait()
                        nursery.cancel_scope.cancel()
                    start = trio.current_time()
                # Leaving the block cancelled the crawl: it waited for the commit for the
                # bound only, then gave it up.
            assert trio.current_time() - start < 0.5 + 1.5
    finally:
        release.set()
        with trio.fail_after(10):
            while _shield.threads_running():  # noqa: ASYNC110 - a thread
                await trio.sleep(0.01)
    # The abandoned commit never landed, even though its thread ran on afterwards.
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.totals.pages == 0
    assert pages


async def test_a_hung_writer_is_given_up_on_when_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shield, "SHIELD_LIMIT", 0.5)
    release = threading.Event()
    out = JsonLinesWriter(tmp_path / "out.jsonl")
    await out.open()

    sink: Any = out._sink
    real = sink.write_all

    def hanging(data: bytes) -> None:
        release.wait(30)
        real(data)

    sink.write_all = hanging
    sink.regular = False  # through a thread, as a pipe would be
    try:
        with trio.fail_after(5):
            with trio.move_on_after(0.2):
                with pytest.raises(OutputError, match="still blocked"):
                    await out.write(make_page(1))
            start = trio.current_time()
            await out.aclose()  # the stuck thread keeps the file: nothing to wait for
            assert trio.current_time() - start < 0.5
    finally:
        release.set()
        with trio.fail_after(10):
            while _shield.threads_running():  # noqa: ASYNC110 - a thread
                await trio.sleep(0.01)
        sink.close()  # left to the stuck thread, which has ended now


async def test_a_commit_slower_than_the_bound_lands_while_the_crawl_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is for a stopping crawl; a big batch (a 50,000-URL sitemap) may take
    # longer than it on a healthy disk, and used to end the crawl with StateError.
    monkeypatch.setattr(_shield, "SHIELD_LIMIT", 0.2)
    cfg = config(tmp_path)
    store = StateStore(tmp_path, cfg)
    await store.open()
    db = store._db
    assert db is not None
    real_commit = db.commit
    slow: list[int] = []

    def slow_commit(batch: Batch) -> CommitResult:
        if batch.done and not slow:
            slow.append(1)
            time.sleep(0.8)  # four times the bound
        return real_commit(batch)

    monkeypatch.setattr(db, "commit", slow_commit)
    with trio.fail_after(30):
        async with crawler.open_crawl(
            cfg, transport=MockSite(chain_site(A, 30)).transport(), store=store
        ) as crawl:
            pages = [page async for page in crawl]
    assert slow and len(pages) == 31
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.totals.pages == 31 and snapshot.queued == 0
