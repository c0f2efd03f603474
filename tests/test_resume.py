"""Stop the ``crawl`` command at random moments (SIGKILL, SIGINT), or make a commit to its
state fail, and run it again with the same ``--state``: in the end the JSON Lines and WARC
outputs hold every reachable page exactly once, every line parses and the WARC reads back
cleanly.

The site is a subprocess (``python -m tests.web``), as the crawl is; the moments are
drawn from a fixed ``random.Random`` seed, so a failure can be replayed."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from crawler._state import _SCHEMA, DB_NAME
from tests.test_cli import ROOT, _create, _env, read_jsonl, warc_contents
from tests.test_state import crawl_args, run
from tests.web.routes import SiteServer, open_site_server

PORTS = 3
PAGES = 1000
KILLS = 3
SEED = 20261129
RUN_TIMEOUT = 60.0


@asynccontextmanager
async def site_process() -> AsyncIterator[SiteServer]:
    """The loopback site in a subprocess; a SiteServer (not serving) that knows its ports."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.web", "--ports", str(PORTS), "--pages", str(PAGES)],
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


FAIL_SECOND_OFFSETS = """
CREATE TRIGGER fail_offsets BEFORE INSERT ON outputs
WHEN EXISTS (SELECT 1 FROM outputs WHERE name = NEW.name)
BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
"""
"""Fails the second commit that records output offsets, after its done marks are written
(in the database file, so it works on the command's own connection)."""


async def test_a_commit_failing_before_its_offsets_loses_and_doubles_no_page(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / DB_NAME) as conn:
        conn.executescript(_SCHEMA + FAIL_SECOND_OFFSETS)
    conn.close()
    # Latency: the crawl spans several commits, whose batches are not all written yet.
    async with open_site_server(ports=2, pages=150, latency=0.01) as server:
        code, _, err = await run(*crawl_args(server, tmp_path), "-q")
        assert code == 1, err
        assert "cannot write crawl state" in err and "injected failure" in err, err

        # The failed batch left no trace: the pages marked done are exactly those whose
        # lines end before the committed offset (the lines after it are the failed batch's).
        jsonl, warc = tmp_path / "out.jsonl", tmp_path / "out.warc.gz"
        with sqlite3.connect(state / DB_NAME) as conn:
            offsets = dict(conn.execute("SELECT name, offset FROM outputs").fetchall())
            done = {url for (url,) in conn.execute("SELECT url FROM urls WHERE state IN (1, 2)")}
            conn.execute("DROP TRIGGER fail_offsets")
        conn.close()
        committed = offsets[f"jsonl:{jsonl}"]
        data = jsonl.read_bytes()
        assert len(data) > committed  # pages were written whose commit failed
        kept = [json.loads(line) for line in data[:committed].splitlines()]
        assert done and Counter(page["url"] for page in kept) == Counter(done)
        assert 0 < offsets[f"warc:{warc}"] < warc.stat().st_size

        code, _, err = await run(*crawl_args(server, tmp_path), "-q")
        assert code == 0, err
        assert_every_page_once(tmp_path, server)


def assert_every_page_once(tmp_path: Path, server: SiteServer) -> None:
    """The outputs of `crawl_args` hold every reachable page of `server` exactly once."""
    reachable = server.reachable_urls()
    urls = Counter(page["url"] for page in read_jsonl(tmp_path / "out.jsonl"))
    assert set(urls) == reachable, (len(reachable - set(urls)), len(set(urls) - reachable))
    assert max(urls.values()) == 1, [url for url, n in urls.items() if n > 1][:5]
    kinds, responses, requests = warc_contents(tmp_path / "out.warc.gz")
    assert kinds.count("warcinfo") == 1
    robots = {server.url(i, "/robots.txt") for i in range(len(server.ports))}
    pages = Counter({uri: n for uri, n in responses.items() if uri not in robots})
    assert set(pages) == reachable and max(pages.values()) == 1
    assert requests == responses


FAIL_AT = 120
"""The JSON Lines write call that fails: even, to land between two calls a line might
be split into."""


@pytest.mark.parametrize(
    ("how", "code"), [("kill", -signal.SIGKILL), ("short write, then ENOSPC", 1)]
)
async def test_a_jsonl_write_cut_short_leaves_no_torn_line_then_resumes_exactly_once(
    tmp_path: Path, how: str, code: int
) -> None:
    jsonl = tmp_path / "out.jsonl"
    async with open_site_server(ports=2, pages=150, latency=0.01) as server:
        args = crawl_args(server, tmp_path, "-q")
        with trio.fail_after(60):
            done = await trio.run_process(
                [
                    sys.executable,
                    "-c",
                    "import sys; from tests.test_output import faulty_command; "
                    "sys.exit(faulty_command())",
                    str(FAIL_AT),
                    how,
                    str(jsonl),
                    *args,
                ],
                cwd=ROOT,
                env=_env(),
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
        err = done.stderr.decode()
        assert done.returncode == code, err
        if how != "kill":
            assert "No space left on device" in err, err
        # As the failure left it: the lines of the calls before it, each whole.
        text = jsonl.read_text(encoding="utf-8")
        assert text.endswith("\n"), text[-200:]
        assert len([json.loads(line) for line in text.splitlines()]) == FAIL_AT - 1

        code, _, err = await run(*args)
        assert code == 0, err
        assert_every_page_once(tmp_path, server)
