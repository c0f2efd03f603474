"""Stop the ``crawl`` command at random moments (SIGKILL, SIGINT) and run it again with the
same ``--state``: in the end the JSON Lines and WARC outputs hold every reachable page
exactly once, every line parses and the WARC reads back cleanly.

The site is a subprocess (``python -m tests.siteserver``), as the crawl is; the moments are
drawn from a fixed ``random.Random`` seed, so a failure can be replayed."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.siteserver import SiteServer
from tests.test_cli import ROOT, _create, _env

PORTS = 3
PAGES = 1000
KILLS = 3
SEED = 20261129
RUN_TIMEOUT = 60.0


@asynccontextmanager
async def site_process() -> AsyncIterator[SiteServer]:
    """The loopback site in a subprocess; a SiteServer (not serving) that knows its ports."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.siteserver", "--ports", str(PORTS), "--pages", str(PAGES)],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        received = b""
        with trio.fail_after(20):
            while not received.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the site server exited before listening"
                received += chunk
        server = SiteServer(pages=PAGES)
        server.ports = json.loads(received)["ports"]
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
        with trio.move_on_after(10) as waited:
            await process.wait()
        if waited.cancelled_caught:  # pragma: no cover - only on failure
            process.kill()
            await process.wait()


def lines_in(path: Path) -> int:
    try:
        with open(path, "rb") as file:
            return file.read().count(b"\n")
    except FileNotFoundError:
        return 0


def crawl_command(server: SiteServer, tmp_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crawler",
        *(server.url(i) for i in range(PORTS)),
        "--rate",
        "0",
        "--concurrency",
        "16",
        "--per-host",
        "8",
        "-o",
        str(tmp_path / "pages.jsonl"),
        "--warc",
        str(tmp_path / "site.warc.gz"),
        "--state",
        str(tmp_path / "state"),
        "-q",
    ]


async def run_once(
    command: list[str], tmp_path: Path, index: int, stop: tuple[int, int, float] | None
) -> int:
    """Run the crawl; with `stop` = (signal, lines, delay), send the signal `delay` seconds
    after the output has grown by `lines` lines (if it has not finished by then)."""
    out = tmp_path / "pages.jsonl"
    with _create(tmp_path / f"stderr-{index}.txt") as stderr:
        process = await trio.lowlevel.open_process(
            command, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stderr=stderr
        )
    try:
        with trio.fail_after(RUN_TIMEOUT):
            if stop is not None:
                signum, grow, delay = stop
                target = lines_in(out) + grow
                while process.poll() is None and lines_in(out) < target:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # another process's file: nothing to wait on
                await trio.sleep(delay)
                if process.poll() is None:
                    process.send_signal(signum)
            return await process.wait()
    finally:
        if process.poll() is None:  # pragma: no cover - only on failure
            process.kill()
            await process.wait()


def check_outputs(tmp_path: Path, server: SiteServer) -> None:
    from warcio.archiveiterator import ArchiveIterator

    text = (tmp_path / "pages.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n"), "the last line is incomplete"
    pages = [json.loads(line) for line in text.splitlines()]
    assert all(page["error"] is None and page["status"] == 200 for page in pages)
    urls = Counter(page["url"] for page in pages)
    reachable = server.reachable_urls()
    assert set(urls) == reachable, (len(set(urls) - reachable), len(reachable - set(urls)))
    assert max(urls.values()) == 1, [url for url, n in urls.items() if n > 1][:5]

    responses: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    with open(tmp_path / "site.warc.gz", "rb") as file:
        for record in ArchiveIterator(file):
            kinds[record.rec_type] += 1
            uri = record.rec_headers.get_header("WARC-Target-URI")
            if record.rec_type == "response":
                responses[uri] += 1
                record.content_stream().read()
            elif record.rec_type == "request":
                requests[uri] += 1
    assert kinds["warcinfo"] == 1
    robots = {server.url(i, "/robots.txt") for i in range(PORTS)}
    page_records = {uri: n for uri, n in responses.items() if uri not in robots}
    assert set(page_records) == reachable
    assert max(page_records.values()) == 1
    assert set(responses) - set(page_records) <= robots  # robots.txt: maybe again per run
    assert requests == responses


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)]
)
async def test_interrupted_crawls_resume_to_every_page_exactly_once(
    tmp_path: Path, signum: int, code: int
) -> None:
    rng = random.Random(SEED + signum)
    async with site_process() as server:
        command = crawl_command(server, tmp_path)
        stopped = 0
        for index in range(KILLS):
            stop = (signum, rng.randint(150, 700), rng.uniform(0.0, 0.05))
            returncode = await run_once(command, tmp_path, index, stop)
            stderr = (tmp_path / f"stderr-{index}.txt").read_text()
            assert "Traceback" not in stderr, stderr
            if returncode == 0:  # pragma: no cover - finished before the signal
                break
            assert returncode == code, stderr
            stopped += 1
        assert stopped >= 2  # the site is big enough for the crawl to be cut short
        assert await run_once(command, tmp_path, KILLS, None) == 0
        check_outputs(tmp_path, server)

        # Once complete, running it again fetches nothing and changes nothing.
        before = (tmp_path / "pages.jsonl").read_bytes()
        assert await run_once(command, tmp_path, KILLS + 1, None) == 0
        assert (tmp_path / "pages.jsonl").read_bytes() == before
    status = await trio.run_process(
        [sys.executable, "-m", "crawler", "--state", str(tmp_path / "state"), "--status"],
        cwd=ROOT,
        env=_env(),
        capture_stdout=True,
    )
    text = status.stdout.decode()
    pages = len(server.reachable_urls())
    assert "status: complete" in text
    assert f"pages done: {pages:,} ({pages:,} ok, 0 with errors)" in text
    assert f"runs: {stopped + 2}" in text
