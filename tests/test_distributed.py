"""Shared crawls: several workers, one Redis, one politeness budget per host.

The subprocess tests run real worker processes (``crawl --redis``) against
``python -m tests.web`` and judge politeness from the site server's own log.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import crawler
from crawler._distributed import (
    default_worker_id,
    open_shared_crawl,
    run_worker,
    shared_status,
    worker_path,
)
from crawler._redis import RedisFrontier, SharedCrawlError, open_redis
from tests.redisserver import unique_crawl_id
from tests.web.core import RequestRecord, load_log, max_concurrency, max_in_window
from tests.web.routes import SiteServer, open_site_server

ROOT = Path(__file__).resolve().parent.parent
RATE, BURST, PER_HOST = 20.0, 2, 2
EPS = 0.04
"""Scheduling slack. Grants are spaced exactly on Redis's clock (tests/test_redis.py), but a
request reaches the server a little after its grant, by a varying amount: measured from the
claim's reply to the request leaving the worker, p50 0.5 ms, p99 ~20 ms, max ~40 ms with
three workers, the server and Redis sharing two busy cores. (Without a shared budget, three
workers would send three times the rate: 60 requests in a 1 s window, not 22.)"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class _SiteProcess:
    def __init__(self, proc: trio.Process, ports: list[int], log: Path) -> None:
        self.proc = proc
        self.ports = ports
        self.log = log

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/" for port in self.ports]

    def reachable(self, pages: int) -> set[str]:
        model = SiteServer(pages=pages)
        model.ports = list(self.ports)
        return model.reachable_urls()

    async def records(self) -> list[RequestRecord]:
        """Stop the server (it flushes its log) and read the log."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await self.proc.wait()
        return load_log(self.log)


async def _start_site(tmp: Path, *, ports: int, pages: int, latency: float) -> _SiteProcess:
    log = tmp / "server.jsonl"
    cmd = [sys.executable, "-m", "tests.web", "--ports", str(ports), "--pages", str(pages)]
    cmd += ["--latency", str(latency), "--log", str(log)]
    proc = await trio.lowlevel.open_process(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(15):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("the test web exited before listening")
            line += chunk
    return _SiteProcess(proc, json.loads(line)["ports"], log)


def _worker_cmd(
    redis_url: str, crawl_id: str, worker: str, out: Path, seeds: Sequence[str], lease: float
) -> list[str]:
    return [
        sys.executable, "-m", "crawler", "--redis", redis_url,
        "--crawl-id", crawl_id, "--worker-id", worker, "-o", str(out), "--lease", str(lease),
        "--rate", str(RATE), "--burst", str(BURST), "--per-host", str(PER_HOST),
        "--concurrency", "4", "-q", *seeds,
    ]  # fmt: skip


def _read_pages(path: Path) -> list[dict[str, Any]]:
    """Pages of one worker's JSON Lines (a worker killed mid-write may leave half a line)."""
    pages = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                pages.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pages


def _assert_polite(records: Sequence[RequestRecord], ports: Sequence[int]) -> None:
    for port in ports:
        mine = [r for r in records if r.port == port]
        assert mine, f"no request reached port {port}"
        assert sum(r.path == "/robots.txt" for r in mine) == 1, "robots.txt fetched once per host"
        assert max_concurrency(mine) <= PER_HOST
        for window in (0.25, 0.5, 1.0, 2.0):
            seen = max_in_window(mine, window - EPS)
            assert seen <= BURST + RATE * window, (port, window, seen)
        starts = sorted(r.start for r in mine)
        span = starts[-1] - starts[0]
        assert len(mine) / span <= RATE * 1.02


async def _run_workers(
    tmp: Path,
    redis_url: str,
    crawl_id: str,
    site: _SiteProcess,
    *,
    workers: int,
    lease: float,
    kill: str | None = None,
    kill_after_pages: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    out = tmp / "out.jsonl"
    procs: dict[str, trio.Process] = {}
    for i in range(workers):
        name = f"w{i + 1}"
        # Every worker is given the seeds: duplicates are ignored.
        cmd = _worker_cmd(redis_url, crawl_id, name, out, site.urls(), lease)
        procs[name] = await trio.lowlevel.open_process(
            cmd, cwd=ROOT, env=_env(), stderr=subprocess.DEVNULL
        )
    with trio.fail_after(50):
        if kill is not None:
            victim = Path(worker_path(out, kill))
            async with open_redis(redis_url) as client:
                leased = RedisFrontier(client, crawl_id, worker_id="test").key("leased")
                # Kill it mid-crawl, while it holds a URL lease (a request under way).
                while len(_read_pages(victim)) < kill_after_pages or not any(
                    value.startswith(f"{kill}\t") and not value.endswith("\t")
                    for value in await client.hvals(leased)
                ):
                    assert procs[kill].returncode is None, "the victim finished before the kill"
                    await trio.sleep(0.01)
                procs[kill].send_signal(signal.SIGKILL)
        for name, proc in procs.items():
            code = await proc.wait()
            assert code == (-signal.SIGKILL if name == kill else 0), (name, code)
    return {name: _read_pages(Path(worker_path(out, name))) for name in procs}


@pytest.mark.slow
async def test_three_workers_share_one_politeness_budget(
    tmp_path: Path, redis_url: str, crawl_id: str
) -> None:
    site = await _start_site(tmp_path, ports=4, pages=300, latency=0.0)
    try:
        outputs = await _run_workers(tmp_path, redis_url, crawl_id, site, workers=3, lease=10.0)
    finally:
        records = await site.records()
    urls = [page["url"] for pages in outputs.values() for page in pages]
    assert all(page["error"] is None for pages in outputs.values() for page in pages)
    # Every reachable page exactly once, in the union of the workers' files.
    assert Counter(urls).most_common(1)[0][1] == 1
    assert set(urls) == site.reachable(300)
    # Each worker did a share of the work.
    assert all(len(pages) > 100 for pages in outputs.values()), {
        k: len(v) for k, v in outputs.items()
    }
    _assert_polite(records, site.ports)
    status = await shared_status(redis_url, crawl_id)
    assert status.finished and status.pages == len(urls) and status.leased == 0
    assert set(status.workers) == {"w1", "w2", "w3"}


@pytest.mark.slow
async def test_a_killed_worker_loses_nothing(tmp_path: Path, redis_url: str, crawl_id: str) -> None:
    lease = 2.0
    # Some latency, so that the victim holds leases (requests under way) when it dies.
    site = await _start_site(tmp_path, ports=4, pages=300, latency=0.05)
    try:
        outputs = await _run_workers(
            tmp_path,
            redis_url,
            crawl_id,
            site,
            workers=3,
            lease=lease,
            kill="w2",
            kill_after_pages=60,
        )
    finally:
        records = await site.records()
    status = await shared_status(redis_url, crawl_id)
    assert status.finished and status.leased == 0
    survivors = [page["url"] for name in ("w1", "w3") for page in outputs[name]]
    victim = [page["url"] for page in outputs["w2"]]
    # Nothing lost: every reachable page is in some file.
    assert set(survivors) | set(victim) == site.reachable(300)
    # The survivors never fetched a page twice; a page is in two files only if the victim
    # wrote it and died before it could mark it done (at most its 8 requests under way).
    assert Counter(survivors).most_common(1)[0][1] == 1, Counter(survivors).most_common(3)
    twice = set(survivors) & set(victim)
    assert len(twice) <= 4, twice  # the victim's --concurrency
    # The victim's leases expired and went back to the frontier (its requests under way).
    assert status.recovered >= 1, status
    # The victim's tokens came back too: the survivors kept crawling every host, and the
    # budget held across all workers, before and after the kill.
    _assert_polite(records, site.ports)


# ---------------------------------------------------------------------------------------
# In-process workers


def _config(server: SiteServer, **overrides: Any) -> crawler.CrawlConfig:
    settings: dict[str, Any] = {
        "seeds": tuple(server.url(i) for i in range(len(server.ports))),
        "rate": 0,
        "per_host": 4,
        "concurrency": 8,
    }
    return crawler.CrawlConfig(**{**settings, **overrides})


async def test_two_workers_in_one_program(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=2, pages=60, latency=0.005) as server:
        pages: dict[str, list[crawler.Page]] = {"a": [], "b": []}

        async def worker(name: str) -> None:
            config = _config(server)
            with trio.fail_after(60):
                async with open_shared_crawl(
                    config, redis_url=redis_url, crawl_id=crawl_id, worker_id=name
                ) as crawl:
                    async for page in crawl:
                        pages[name].append(page)
                    assert crawl.statistics().pages == len(pages[name])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "a")
            nursery.start_soon(worker, "b")
        urls = [p.final_url for ps in pages.values() for p in ps]
        assert sorted(urls) == sorted(server.reachable_urls())
        assert pages["a"] and pages["b"]
        for port in server.ports:
            assert server.hits("/robots.txt", port) == 1
            assert server.max_concurrency(port) <= 4


async def test_results_stream_holds_each_page_once(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=40) as server:
        config = _config(server)
        with trio.fail_after(60):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="s", results="redis"
            ) as crawl:
                yielded = [page.url async for page in crawl]
        async with open_redis(redis_url) as client:
            key = f"crawler:{{{crawl_id}}}:results"
            entries = await client.xrange(key)
        pages = [json.loads(entry.field_values["page"]) for entry in entries]
        assert sorted(p["url"] for p in pages) == sorted(yielded)
        assert sorted(yielded) == sorted(server.reachable_urls())
        assert {entry.field_values["worker"] for entry in entries} == {"s"}


async def test_retry_after_pauses_the_host_for_all_workers(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=5) as server:
        seeds = (server.url(0, "/retry-after?s=1"), server.url(0, "/"))
        # One request at a time: the 429 is settled before anything else is sent.
        config = _config(server, seeds=seeds, per_host=1)

        async def worker(name: str) -> list[crawler.Page]:
            with trio.fail_after(60):
                async with open_shared_crawl(
                    config, redis_url=redis_url, crawl_id=crawl_id, worker_id=name
                ) as crawl:
                    return [page async for page in crawl]

        results: list[list[crawler.Page]] = []

        async def run(name: str) -> None:
            results.append(await worker(name))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a")
            nursery.start_soon(run, "b")
        first_429 = next(r for r in server.log if r.status == 429)
        after = [r for r in server.log if r.start > first_429.start]
        assert after, "the crawl went on after the 429"
        # Nobody sent anything to the host for the Retry-After second.
        assert min(r.start for r in after) - first_429.end >= 1.0 - EPS
        pages = [p for ps in results for p in ps]
        retried = [p for p in pages if "retry-after" in p.url]
        assert len(retried) == 1 and retried[0].status == 200


async def test_robots_txt_is_fetched_once_and_obeyed_by_every_worker(
    redis_url: str, crawl_id: str
) -> None:
    robots = "User-agent: *\nDisallow: /page/1\nCrawl-delay: 0.05\n"
    async with open_site_server(ports=1, pages=30, robots=robots) as server:
        config = _config(server)
        urls: list[str] = []

        async def worker(name: str) -> None:
            with trio.fail_after(60):
                async with open_shared_crawl(
                    config, redis_url=redis_url, crawl_id=crawl_id, worker_id=name
                ) as crawl:
                    urls.extend([page.url async for page in crawl])

        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(worker, name)
        assert server.hits("/robots.txt") == 1
        # "Disallow: /page/1" is a prefix: /page/1 and /page/10 to /page/19.
        assert not [r.path for r in server.log if r.path.startswith("/page/1")]
        assert not [u for u in urls if "/page/1" in u]
        gaps = server.start_gaps(0)
        # Crawl-delay 0.05 s shared by all three workers (and the robots.txt fetch first).
        assert min(gaps[1:]) >= 0.05 - 0.01
        status = await shared_status(redis_url, crawl_id)
        assert status.disallowed == 11 and status.finished


async def test_seedless_worker_joins_and_ends_with_the_crawl(
    redis_url: str, crawl_id: str, tmp_path: Path
) -> None:
    async with open_site_server(ports=1, pages=30, latency=0.01) as server:
        seeded = _config(server)
        joiner = crawler.CrawlConfig(seeds=(), stay_open=True, rate=0, per_host=4, concurrency=8)
        out = tmp_path / "out.jsonl"

        async def join_later() -> crawler.Statistics:
            await trio.sleep(0.05)
            return await run_worker(
                joiner,
                redis_url=redis_url,
                crawl_id=crawl_id,
                worker_id="joiner",
                output=out,
                stay_open=False,
            )

        stats: list[crawler.Statistics] = []

        async def joined() -> None:
            stats.append(await join_later())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(joined)
                await run_worker(
                    seeded,
                    redis_url=redis_url,
                    crawl_id=crawl_id,
                    worker_id="seeder",
                    output=out,
                )
        by_worker = {
            name: [page["url"] for page in _read_pages(Path(worker_path(out, name)))]
            for name in ("seeder", "joiner")
        }
        assert sorted(by_worker["seeder"] + by_worker["joiner"]) == sorted(server.reachable_urls())
        assert stats[0].pages == len(by_worker["joiner"])


async def test_workers_must_agree_on_politeness(redis_url: str, crawl_id: str) -> None:
    async with (
        open_site_server(ports=1, pages=3) as server,
        open_shared_crawl(
            _config(server, rate=5.0), redis_url=redis_url, crawl_id=crawl_id, worker_id="a"
        ) as crawl,
    ):
        with pytest.raises(SharedCrawlError, match=r"rate=5\.0 \(this worker: 9\.0\)"):
            async with open_shared_crawl(
                _config(server, rate=9.0),
                redis_url=redis_url,
                crawl_id=crawl_id,
                worker_id="b",
            ):
                pass  # pragma: no cover
        crawl.stop(graceful=False)
        async for _ in crawl:
            pass


async def test_leaving_early_gives_the_leases_back(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=50, latency=0.2) as server:
        config = _config(server, per_host=4)
        with trio.fail_after(60):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="quitter"
            ) as crawl:
                async for _ in crawl:
                    break
        status = await shared_status(redis_url, crawl_id)
        # The page taken was never marked done (the consumer did not ask for the next
        # one): as with a durable state, it is delivered again, never lost.
        assert status.leased == 0 and status.pages == 0
        assert status.queued == status.pending > 0
        # Another worker finishes the crawl without waiting for any lease to expire.
        with trio.fail_after(15):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="finisher"
            ) as crawl:
                rest = [page.url async for page in crawl]
        assert sorted(rest) == sorted(server.reachable_urls())


async def test_stop_finishes_what_is_under_way(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=50, latency=0.05) as server:
        config = _config(server)
        with trio.fail_after(60):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
            ) as crawl:
                seen = 0
                async for _ in crawl:
                    seen += 1
                    if seen == 5:
                        crawl.stop()
        status = await shared_status(redis_url, crawl_id)
        assert status.leased == 0 and status.pages == seen and not status.finished
        assert server.in_flight == 0


def test_worker_files_are_named_after_the_worker() -> None:
    assert worker_path("out.jsonl", "w1") == "out.w-w1.jsonl"
    assert worker_path("dir/site.warc.gz", "host-7") == "dir/site.w-host-7.warc.gz"
    assert worker_path("pages", "a") == "pages.w-a"
    assert worker_path("-", "a") == "-"
    assert worker_path(Path("x.y.jsonl"), "a") == "x.y.w-a.jsonl"
    assert default_worker_id().endswith(f"-{os.getpid()}")
    with pytest.raises(ValueError, match="worker_id"):
        worker_path("out.jsonl", "bad id")


async def test_status_command(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=10) as server:
        config = _config(server)
        with trio.fail_after(60):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
            ) as crawl:
                async for _ in crawl:
                    pass
    cmd = [sys.executable, "-m", "crawler", "--redis", redis_url]
    cmd += ["--crawl-id", crawl_id, "--status"]
    with trio.fail_after(30):
        result = await trio.run_process(cmd, cwd=ROOT, env=_env(), capture_stdout=True)
    text = result.stdout.decode()
    assert f"crawl {crawl_id}: finished" in text
    assert "queued 0  leased (in flight) 0" in text
    assert f"{server.origin(0)}  queued 0  leased 0/4  done 11" in text
    assert "pages 11 (11 ok, 0 with errors)" in text
    workers = text.split("workers (seconds since last heard from):")[1].split()
    assert workers[0] == "w" and math.isfinite(float(workers[1]))


async def test_reset_command_deletes_the_crawl(redis_url: str, crawl_id: str) -> None:
    async with (
        open_site_server(ports=1, pages=3) as server,
        open_shared_crawl(
            _config(server), redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
        ) as crawl,
    ):
        async for _ in crawl:
            pass
    cmd = [sys.executable, "-m", "crawler", "--redis", redis_url, "--crawl-id", crawl_id]
    with trio.fail_after(30):
        result = await trio.run_process(
            [*cmd, "--reset"], cwd=ROOT, env=_env(), capture_stdout=True
        )
        async with open_redis(redis_url) as client:
            keys = [key async for key in client.scan_iter(match=f"crawler:{{{crawl_id}}}:*")]
        status = await trio.run_process(
            [*cmd, "--status"], cwd=ROOT, env=_env(), capture_stdout=True
        )
    deleted = result.stdout.decode().strip()
    assert deleted.startswith(f"crawl {crawl_id}: deleted ") and deleted.endswith(" keys")
    assert int(deleted.split()[-2]) > 0 and keys == []
    assert f"crawl {crawl_id}: empty" in status.stdout.decode()


async def test_redirect_chains_cross_workers_with_their_exchanges(
    redis_url: str, crawl_id: str
) -> None:
    async with open_site_server(ports=2, pages=3) as server:
        seeds = (server.url(0, "/redirect-chain/3"), server.url(0, "/redirect-out"))
        config = _config(server, seeds=seeds, max_depth=0, keep_exchanges=True)
        pages: list[crawler.Page] = []

        async def worker(name: str) -> None:
            with trio.fail_after(60):
                async with open_shared_crawl(
                    config, redis_url=redis_url, crawl_id=crawl_id, worker_id=name
                ) as crawl:
                    pages.extend([page async for page in crawl])

        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(worker, name)
        by_url = {page.url: page for page in pages}
        assert sorted(by_url) == sorted(seeds)
        chain = by_url[seeds[0]]
        assert chain.final_url == server.url(0, "/redirect-chain/0")
        assert chain.status == 200 and chain.error is None
        # Every hop's exchange travelled with the request, whichever worker fetched it
        # (robots.txt's may ride along with the first page of its host).
        hops = [x for x in chain.exchanges if "redirect-chain" in x.url]
        assert [x.status for x in hops] == [301, 301, 301, 200]
        out = by_url[seeds[1]]
        assert out.final_url == server.url(1, "/page/0") and out.status == 200
        status = await shared_status(redis_url, crawl_id)
        assert status.redirects == 4 and status.pages == 2 and status.finished


async def test_an_exception_in_the_block_propagates_unchanged(
    redis_url: str, crawl_id: str
) -> None:
    async with open_site_server(ports=1, pages=20, latency=0.05) as server:
        config = _config(server)
        with pytest.raises(KeyError, match="mine"):
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
            ) as crawl:
                async for _ in crawl:
                    raise KeyError("mine")
        status = await shared_status(redis_url, crawl_id)
        # The page the block failed on was not taken as done: it goes back, as do the rest.
        assert status.leased == 0 and status.pages == 0 and status.pending > 0


async def test_crawl_command_runs_a_shared_worker(
    crawl_id: str, redis_url: str, tmp_path: Path
) -> None:
    """`crawl --redis URL --crawl-id NAME` is a worker; `--status` reports on the crawl."""
    with trio.fail_after(60):
        async with open_site_server(ports=1, pages=20) as server:
            out = tmp_path / "out.jsonl"
            command = [
                sys.executable,
                "-m",
                "crawler",
                "--redis",
                redis_url,
                "--crawl-id",
                crawl_id,
                "--worker-id",
                "w1",
                "--rate",
                "0",
                "-q",
                "-o",
                str(out),
                server.url(0),
            ]
            result = await trio.run_process(command, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr.decode()
            lines = (tmp_path / "out.w-w1.jsonl").read_text().splitlines()
            assert len(lines) == len({json.loads(line)["url"] for line in lines}) == 21
            status = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "crawler",
                    "--redis",
                    redis_url,
                    "--crawl-id",
                    crawl_id,
                    "--status",
                ],
                capture_stdout=True,
                check=False,
            )
            assert status.returncode == 0
            assert "21" in status.stdout.decode()
            usage = await trio.run_process(
                [sys.executable, "-m", "crawler", "--redis", redis_url, server.url(0)],
                capture_stderr=True,
                check=False,
            )
            assert usage.returncode == 2 and b"--crawl-id" in usage.stderr


# ---------------------------------------------------------------------------------------
# The same admission rules and robots.txt verdicts as the single-process engine


async def _shared_pages(
    config: crawler.CrawlConfig,
    redis_url: str,
    crawl_id: str,
    workers: int,
    transport: Any = None,
    **options: Any,
) -> tuple[list[crawler.Page], list[crawler.Statistics]]:
    pages: list[crawler.Page] = []
    stats: list[crawler.Statistics] = []

    async def worker(name: str) -> None:
        async with open_shared_crawl(
            config,
            redis_url=redis_url,
            crawl_id=crawl_id,
            worker_id=name,
            transport=transport,
            **options,
        ) as crawl:
            pages.extend([page async for page in crawl])
            stats.append(crawl.statistics())

    async with trio.open_nursery() as nursery:
        for i in range(workers):
            nursery.start_soon(worker, f"w{i}")
    return pages, stats


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_link_trap_is_cut_as_in_one_process(
    redis_url: str, crawl_id: str, workers: int
) -> None:
    from crawler._urls import looks_like_trap

    async with open_site_server(ports=1, pages=3) as server:
        # /trap/ links to ./x and ./N forever: only the path rules end the crawl.
        config = _config(server, seeds=(server.url(0, "/trap/"),), max_path_depth=5)
        with trio.fail_after(30):
            async with crawler.open_crawl(config) as single:
                alone = {page.url async for page in single}
                assert single.statistics().dropped["trap"] > 0
            pages, stats = await _shared_pages(config, redis_url, crawl_id, workers)
        shared = [page.url for page in pages]
        assert len(shared) == len(set(shared))
        assert set(shared) == alone
        assert not [url for url in shared if looks_like_trap(url, 5, 3)]
        dropped = sum(s.dropped.get("trap", 0) for s in stats)
        status = await shared_status(redis_url, crawl_id)
        assert dropped > 0 and status.dropped["trap"] == dropped and status.finished


@pytest.mark.parametrize("workers", [1, 2])
async def test_disallowed_urls_are_counted_by_the_workers_as_in_one_process(
    redis_url: str, crawl_id: str, workers: int
) -> None:
    # Links to disallowed URLs found once robots.txt was known used to be counted by Redis
    # alone (the sender filtered them): the workers' statistics said 0 where one process
    # said 11.
    robots = "User-agent: *\nDisallow: /page/1\n"
    async with open_site_server(ports=1, pages=30, robots=robots) as server:
        config = _config(server)
        with trio.fail_after(30):
            async with crawler.open_crawl(config) as single:
                alone = {page.url async for page in single}
                expected = single.statistics().disallowed
            pages, stats = await _shared_pages(config, redis_url, crawl_id, workers)
        assert expected == 11  # /page/1 and /page/10 to /page/19
        assert {page.url for page in pages} == alone
        assert sum(s.disallowed for s in stats) == expected
        status = await shared_status(redis_url, crawl_id)
        assert status.disallowed == expected and status.finished


async def test_a_host_we_may_not_connect_to_is_blocked_as_in_one_process(
    redis_url: str, crawl_id: str
) -> None:
    from crawler._guard import AddressGuard
    from crawler._transport import TrioTransport
    from tests.test_guard import FakeResolver

    trio.socket.set_custom_hostname_resolver(FakeResolver({"intranet.test": ["10.0.0.7"]}))
    async with open_site_server(ports=1, pages=2) as server:
        secret = "http://intranet.test/secret"
        config = _config(server, seeds=(server.url(0), secret), scope="any", max_depth=0)
        errors: dict[str, dict[str, str | None]] = {}
        for mode in ("single", "shared"):
            guard = AddressGuard(["127.0.0.1"])
            with trio.fail_after(30):
                async with TrioTransport(connect=guard) as transport:
                    if mode == "single":
                        async with crawler.open_crawl(config, transport=transport) as crawl:
                            pages = [page async for page in crawl]
                    else:
                        pages, _ = await _shared_pages(
                            config, redis_url, crawl_id, 1, transport=transport
                        )
            errors[mode] = {p.url: p.error.kind if p.error else None for p in pages}
            # robots.txt of the blocked host was tried once: no retry can make it reachable.
            assert guard.blocked == 1, mode
        assert errors["shared"] == errors["single"]
        assert errors["single"][secret] == "blocked"


# ---------------------------------------------------------------------------------------
# The engine's bounds in shared mode


async def test_max_time_stops_a_worker_gracefully(redis_url: str, crawl_id: str) -> None:
    async with open_site_server(ports=1, pages=300, latency=0.05) as server:
        config = _config(server, per_host=2, max_time=1.0)
        with trio.fail_after(20):
            start = trio.current_time()
            async with open_shared_crawl(
                config, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
            ) as crawl:
                pages = [page async for page in crawl]
                stats = crawl.statistics()
            took = trio.current_time() - start
        assert stats.stopped == "max_time" and stats.pages == len(pages) > 0
        assert 1.0 <= took < 3.0, took  # the requests under way finished, nothing more
        assert server.in_flight == 0
        status = await shared_status(redis_url, crawl_id)
        # The rest stays queued for the next worker; nothing is left leased.
        assert not status.finished and status.leased == 0 and status.queued > 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_max_queued_bounds_the_shared_frontier(
    redis_url: str, crawl_id: str, workers: int
) -> None:
    async with open_site_server(ports=1, pages=300, links_per_page=20) as server:
        config = _config(server, max_queued=30)
        peak = 0

        async def watch(client: Any, key: str) -> None:
            nonlocal peak
            while True:
                peak = max(peak, int(await client.hget(key, "pending") or 0))
                await trio.sleep(0.002)

        with trio.fail_after(30):
            async with open_redis(redis_url) as client, trio.open_nursery() as nursery:
                key = RedisFrontier(client, crawl_id, worker_id="test").key("stats")
                nursery.start_soon(watch, client, key)
                pages, _ = await _shared_pages(config, redis_url, crawl_id, workers)
                nursery.cancel_scope.cancel()
        status = await shared_status(redis_url, crawl_id)
        # Dropped links come back through other pages of this densely linked site.
        assert status.finished and status.dropped["max_queued"] > 0
        assert 0 < peak <= 30 and status.pages == len(pages)


# ---------------------------------------------------------------------------------------
# How a worker starts and ends


async def _crawl_command(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "crawler", *args],
            cwd=ROOT,
            env=_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            "redis://127.0.0.1:1/0",
            1,
            "crawl: error: cannot reach Redis at redis://127.0.0.1:1/0: connection refused",
        ),
        ("foo://", 2, "crawl: error: bad Redis URL 'foo://': expected redis://"),
        ("redis://host:notaport", 2, "crawl: error: bad Redis URL 'redis://host:notaport': "),
        ("redis://:pw@127.0.0.1:1/0", 1, "crawl: error: cannot reach Redis at redis://:***@"),
    ],
)
async def test_a_worker_that_cannot_start_says_why_in_one_line(
    tmp_path: Path, url: str, code: int, message: str
) -> None:
    out = tmp_path / "out.jsonl"
    result = await _crawl_command(
        "--redis", url, "--crawl-id", "x", "-o", str(out), "http://127.0.0.1:9/"
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == code and len(lines) == 1, result.stderr.decode()
    assert lines[0].startswith(message) and "pw" not in lines[0]
    assert not os.listdir(tmp_path)  # no output file
    status = await _crawl_command("--redis", url, "--crawl-id", "x", "--status")
    assert status.returncode == code and status.stderr.decode().splitlines() == lines[:1]


async def test_a_worker_joining_a_finished_crawl_says_so(
    tmp_path: Path, redis_url: str, crawl_id: str
) -> None:
    async with open_site_server(ports=1, pages=20) as server:
        config = _config(server)
        with trio.fail_after(30):
            pages, _ = await _shared_pages(config, redis_url, crawl_id, 1)
        out = tmp_path / "out.jsonl"
        for seeds in ([server.url(0)], []):
            result = await _crawl_command(
                "--redis", redis_url, "--crawl-id", crawl_id, "-o", str(out), *seeds
            )
            assert result.returncode == 0, result.stderr.decode()
            assert result.stderr.decode() == (
                f"crawl: crawl id {crawl_id} is finished ({len(pages)} pages); "
                "--reset it, or give another crawl id, to crawl again\n"
            )
            assert not os.listdir(tmp_path)  # nothing written, not even an empty file


async def test_a_worker_that_gets_no_page_leaves_no_file(
    tmp_path: Path, redis_url: str, crawl_id: str
) -> None:
    async with open_site_server(ports=1, pages=5) as server:
        # The crawl's one URL never answers and is leased to the first worker: the second
        # finds nothing to do until the crawl ends.
        config = _config(
            server,
            seeds=(server.url(0, "/stall"),),
            max_depth=0,
            timeout=2.0,
            retries=0,
            obey_robots=False,
        )
        idle = replace(config, seeds=(), stay_open=True)
        out = tmp_path / "out.jsonl"
        with trio.fail_after(30):
            async with open_redis(redis_url) as client, trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(run_worker, config, redis_url=redis_url, crawl_id=crawl_id)
                )
                leased = RedisFrontier(client, crawl_id, worker_id="test").key("leased")
                while not await client.hlen(leased):  # noqa: ASYNC110 - polled in Redis
                    await trio.sleep(0.005)
                stats = await run_worker(
                    idle,
                    redis_url=redis_url,
                    crawl_id=crawl_id,
                    worker_id="idle",
                    output=out,
                    stay_open=False,
                )
        assert stats.pages == 0
        assert not await trio.Path(worker_path(out, "idle")).exists()
        status = await shared_status(redis_url, crawl_id)
        assert status.finished and status.pages == 1


@pytest.mark.parametrize("lease", [30.0, 1.0])
async def test_workers_ride_out_a_redis_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, lease: float
) -> None:
    from tests.redisserver import restartable_redis

    (tmp_path / "redis").mkdir()
    crawl_id = unique_crawl_id("restart")
    with restartable_redis(str(tmp_path / "redis")) as redis:
        async with open_site_server(ports=1, pages=60, latency=0.1) as server:
            config = _config(server, per_host=4, concurrency=4)

            async def restart(client: Any) -> None:
                leased = RedisFrontier(client, crawl_id, worker_id="test").key("leased")
                # Mid-crawl, with requests under way (leases held).
                while len(server.log) < 10 or not await client.hlen(leased):  # noqa: ASYNC110
                    await trio.sleep(0.005)
                await trio.to_thread.run_sync(redis.stop)
                down_at = trio.current_time()
                while not any("unreachable" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                if lease < 5:
                    # Down for longer than a lease: the leases expire in Redis's clock.
                    await trio.sleep_until(down_at + 2 * lease)
                await trio.to_thread.run_sync(redis.start)

            with trio.fail_after(60):
                async with open_redis(redis.url) as client, trio.open_nursery() as nursery:
                    nursery.start_soon(restart, client)
                    pages, _ = await _shared_pages(
                        config, redis.url, crawl_id, 2, lease=lease, reconnect_for=30.0
                    )
            urls = [page.url for page in pages]
            status = await shared_status(redis.url, crawl_id)
    assert any("Redis is back" in r.getMessage() for r in caplog.records)
    # Nothing lost.
    assert set(urls) == server.reachable_urls()
    assert status.finished and status.leased == 0 and status.pages == len(set(urls))
    if lease > 5:
        assert len(urls) == len(set(urls))  # nothing expired: nothing fetched twice
    else:
        # The expired leases went back and were claimed again; a page is written twice
        # only if its first holder had written it (at most its requests under way).
        assert status.recovered >= 1
        assert len(urls) - len(set(urls)) <= 2 * config.concurrency


async def test_a_worker_gives_up_when_redis_stays_away(tmp_path: Path) -> None:
    from crawler._redis import RedisUnavailable
    from tests.redisserver import restartable_redis

    (tmp_path / "redis").mkdir()
    with restartable_redis(str(tmp_path / "redis")) as redis:
        async with open_site_server(ports=1, pages=60, latency=0.1) as server:
            config = _config(server, per_host=2, concurrency=2)
            with trio.fail_after(30), pytest.raises(RedisUnavailable, match="within 1 s"):
                async with open_shared_crawl(
                    config,
                    redis_url=redis.url,
                    crawl_id=unique_crawl_id("gone"),
                    worker_id="w",
                    reconnect_for=1.0,
                ) as crawl:
                    async for _ in crawl:
                        if redis.proc is not None:
                            await trio.to_thread.run_sync(redis.stop)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_worker_stopped_by_a_signal_exits_as_one_process_does(
    tmp_path: Path, redis_url: str, crawl_id: str, signum: int, code: int
) -> None:
    """Ctrl-C or SIGTERM stops a worker gracefully, with the exit status of `crawl`."""
    site = await _start_site(tmp_path, ports=1, pages=200, latency=0.05)
    try:
        out = tmp_path / "out.jsonl"
        cmd = _worker_cmd(redis_url, crawl_id, "w1", out, site.urls(), 30.0)
        proc = await trio.lowlevel.open_process(
            cmd, cwd=ROOT, env=_env(), stderr=subprocess.DEVNULL
        )
        with trio.fail_after(40):
            while not _read_pages(Path(worker_path(out, "w1"))):  # mid-crawl
                assert proc.returncode is None, "the worker finished before the signal"
                await trio.sleep(0.02)
            proc.send_signal(signum)
            assert await proc.wait() == code
        pages = _read_pages(Path(worker_path(out, "w1")))
        assert 0 < len(pages) < 201 and len({p["url"] for p in pages}) == len(pages)
    finally:
        await site.records()
