"""What a failed connection says in the records: the cause, said once, also when it is
robots.txt that could not be fetched (single-process crawl, shared crawl, CLI)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
import trio

import crawler
from crawler._distributed import open_shared_crawl
from crawler._fetch import Fetched
from crawler._page import ErrorKind, PageError
from crawler._robots import RobotsStatus, robots_from_response, robots_source
from crawler._transport import TrioTransport

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def crawl_pages(
    config: crawler.CrawlConfig, transport: TrioTransport | None = None
) -> list[crawler.Page]:
    with trio.fail_after(DEADLINE):
        async with crawler.open_crawl(config, transport=transport) as crawl:
            return [page async for page in crawl]


def the_error(pages: list[crawler.Page]) -> PageError:
    [page] = pages
    assert page.error is not None
    return page.error


@pytest.mark.parametrize("obey_robots", [True, False], ids=["robots", "ignore-robots"])
async def test_connection_refused_is_said_once(obey_robots: bool) -> None:
    port = free_port()
    config = crawler.CrawlConfig(
        seeds=(f"http://127.0.0.1:{port}/",), retries=0, obey_robots=obey_robots
    )
    error = the_error(await crawl_pages(config))
    cause = f"connection refused (127.0.0.1:{port})"
    if obey_robots:
        assert error.kind is ErrorKind.ROBOTS_UNAVAILABLE
        assert error.message == (
            f"robots.txt unavailable: ConnectError: {cause}; host treated as disallowed for now"
        )
    else:
        assert error.kind is ErrorKind.CONNECT
        assert error.message == f"ConnectError: {cause}"
    assert error.message.count("refused") == 1
    assert error.message.count("127.0.0.1") == 1


@pytest.mark.parametrize("obey_robots", [True, False], ids=["robots", "ignore-robots"])
async def test_dns_failure_names_the_host_once(obey_robots: bool) -> None:
    # .invalid never resolves (RFC 6761); the resolver says so without the network.
    config = crawler.CrawlConfig(
        seeds=("http://no-such-host.invalid/",), retries=0, obey_robots=obey_robots
    )
    error = the_error(await crawl_pages(config))
    assert error.kind is (ErrorKind.ROBOTS_UNAVAILABLE if obey_robots else ErrorKind.CONNECT)
    assert error.message.count("DNS lookup failed for no-such-host.invalid (") == 1
    assert error.message.count("no-such-host.invalid") == 1


async def test_connect_timeout_names_the_address_once() -> None:
    async def blackhole(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()

    transport = TrioTransport(connect=blackhole, connect_timeout=0.1)
    config = crawler.CrawlConfig(seeds=("http://a.test/",), retries=0, obey_robots=False)
    error = the_error(await crawl_pages(config, transport))
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message == "ConnectTimeout: timed out after 0.1 s connecting to a.test:80"


def test_a_failed_robots_fetch_keeps_its_cause() -> None:
    # What the engine and the shared-crawl workers both store and read back.
    failed = Fetched(
        url="http://a.test/robots.txt",
        status=None,
        headers=httpx.Headers(),
        body=b"",
        raw_size=0,
        elapsed=0.0,
        started_at=dt.datetime.now(dt.UTC),
        error=PageError(ErrorKind.CONNECT, "ConnectError: connection reset (a.test:80)"),
        exchange=None,
    )
    status, body = robots_source(failed)
    robots = robots_from_response(status, body, 0.0)
    assert robots.status is RobotsStatus.UNAVAILABLE
    assert robots.message == (
        "robots.txt unavailable: ConnectError: connection reset (a.test:80);"
        " host treated as disallowed for now"
    )
    # A state stored before causes were kept still reads.
    old = robots_from_response(None, b"", 0.0)
    assert old.message.startswith("robots.txt unavailable: network failure;")
    http = robots_from_response(503, b"", 0.0)
    assert http.message.startswith("robots.txt unavailable (HTTP 503);")


# ---------------------------------------------------------------------------
# Shared crawl: the worker that fetched robots.txt is not the one that reports the URLs


async def test_shared_crawl_robots_unavailable_says_why(redis_url: str, crawl_id: str) -> None:
    port = free_port()
    config = crawler.CrawlConfig(seeds=(f"http://127.0.0.1:{port}/",), retries=0)
    with trio.fail_after(DEADLINE):
        async with open_shared_crawl(
            config, redis_url=redis_url, crawl_id=crawl_id, worker_id="w"
        ) as crawl:
            pages = [page async for page in crawl]
    error = the_error(pages)
    assert error.kind is ErrorKind.ROBOTS_UNAVAILABLE
    assert error.message == (
        f"robots.txt unavailable: ConnectError: connection refused (127.0.0.1:{port});"
        " host treated as disallowed for now"
    )


# ---------------------------------------------------------------------------
# The command


async def test_cli_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [sys.executable, "-m", "crawler", "-q", "--retries", "0", f"http://127.0.0.1:{port}/"],
            cwd=ROOT,
            env=env,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert done.returncode == 0, done.stderr
    [record] = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert record["error"]["kind"] == "robots_unavailable"
    assert record["error"]["message"].count(f"connection refused (127.0.0.1:{port})") == 1
