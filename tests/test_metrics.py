"""The Prometheus endpoint, scraped over a real socket during a crawl."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import crawler
from crawler._metrics import MetricsServer, StatisticsCollector, serve_metrics
from crawler._page import HostStatistics
from tests.web.routes import open_site_server


def parse(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_endpoint_during_a_crawl() -> None:
    with trio.fail_after(30):
        await _crawl_and_scrape()


async def _crawl_and_scrape() -> None:
    async with open_site_server(ports=1, pages=60, latency=0.01) as server:
        config = crawler.CrawlConfig(seeds=(server.url(0),), rate=50.0, per_host=2)
        origin = server.origin(0)
        async with crawler.open_crawl(config) as crawl, trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, crawl, "127.0.0.1", 0)
            scrapes: list[dict[str, float]] = []
            async with httpx.AsyncClient() as client:
                async for _ in crawl:
                    if len(scrapes) < 3:
                        response = await client.get(f"http://127.0.0.1:{port}/metrics")
                        assert response.status_code == 200
                        assert response.headers["content-type"].startswith("text/plain")
                        scrapes.append(parse(response.text))
                missing = await client.get(f"http://127.0.0.1:{port}/other")
                assert missing.status_code == 404
                final = parse((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
            nursery.cancel_scope.cancel()
        stats = crawl.statistics()
    assert final["crawler_pages_total"] == stats.pages == 61
    assert final[f'crawler_host_rate{{origin="{origin}"}}'] == 50.0
    assert final[f'crawler_host_robots{{origin="{origin}",state="allow_all"}}'] == 1
    assert final[f'crawler_host_pages_total{{origin="{origin}"}}'] == 61
    assert scrapes[0]["crawler_pages_total"] <= scrapes[-1]["crawler_pages_total"]
    for scrape in scrapes:
        assert (
            scrape["crawler_pages_total"]
            + scrape["crawler_queued_requests"]
            + scrape["crawler_in_flight_requests"]
            + scrape["crawler_disallowed_total"]
            + scrape["crawler_redirects_total"]
            == scrape["crawler_seen_urls"]
        )


def statistics(**changes: Any) -> crawler.Statistics:
    fields: dict[str, Any] = {
        "pages": 1,
        "errors": 0,
        "bytes": 10,
        "elapsed": 2.0,
        "seen": 1,
        "queued": 0,
        "in_flight": 0,
        "disallowed": 0,
        "redirects": 0,
        "concurrency": 4,
        "paused": False,
        "dropped": {},
        "errors_by_kind": {},
        "hosts": {},
    }
    return crawler.Statistics(**(fields | changes))


def host(origin: str, **changes: Any) -> HostStatistics:
    fields: dict[str, Any] = {
        "origin": origin,
        "queued": 0,
        "in_flight": 0,
        "done": 1,
        "errors": 0,
        "bytes": 10,
        "rate": 0.0,
        "paused_until": None,
        "robots": "allow_all",
        "disallowed": 0,
        "backoff": 0.0,
        "paused": False,
        "per_host": 2,
    }
    return HostStatistics(**(fields | changes))


def exposition(snapshot: Callable[[], crawler.Statistics]) -> str:
    registry = CollectorRegistry()
    registry.register(StatisticsCollector(snapshot))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, parsed back by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_labels_are_escaped() -> None:
    stats = statistics(dropped={"scope": 3}, errors_by_kind={'we"ird\nkind': 1})
    text = exposition(lambda: stats)
    assert 'crawler_errors_by_kind_total{kind="we\\"ird\\nkind"} 1.0' in text
    assert "# TYPE crawler_pages_total counter" in text
    parsed = samples(text)
    assert parsed[("crawler_errors_by_kind_total", (("kind", 'we"ird\nkind'),))] == 1
    assert parsed[("crawler_dropped_total", (("reason", "scope"),))] == 3


def test_large_counters_are_exact_and_one_snapshot_per_scrape() -> None:
    # `{v:g}` once exported 12,345,678 as 1.23457e+07.
    big = 10**15 + 1
    calls = 0

    def snapshot() -> crawler.Statistics:
        nonlocal calls
        calls += 1
        return statistics(
            pages=12_345_678,
            bytes=big,
            hosts={"http://a.test": host("http://a.test", done=12_345_678, bytes=big)},
        )

    parsed = samples(exposition(snapshot))
    assert calls == 1
    assert parsed[("crawler_pages_total", ())] == 12_345_678
    assert parsed[("crawler_bytes_total", ())] == big
    origin = (("origin", "http://a.test"),)
    assert parsed[("crawler_host_pages_total", origin)] == 12_345_678
    assert parsed[("crawler_host_bytes_total", origin)] == big
    assert parsed[("crawler_host_robots", (*origin, ("state", "allow_all")))] == 1


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (the caller bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - the server has no event for it
        await trio.sleep(0.01)


@asynccontextmanager
async def metrics_server(
    snapshot: Callable[[], crawler.Statistics] = statistics, **options: Any
) -> AsyncIterator[tuple[MetricsServer, int]]:
    """A MetricsServer in a nursery, so anything escaping it fails the test (as in the CLI)."""
    server = MetricsServer(snapshot, **options)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        yield server, port
        nursery.cancel_scope.cancel()


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock


async def read_all(sock: trio.socket.SocketType) -> bytes:
    """What the server sends until it closes (a reset counts as a close)."""
    chunks: list[bytes] = []
    while True:
        try:
            data = await sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def test_a_client_that_resets_does_not_stop_the_server() -> None:
    with trio.fail_after(10):
        async with metrics_server() as (server, port):
            for n, request in enumerate(
                (b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), start=1
            ):
                # A plain socket: connect, send and reset with no checkpoint in between.
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.connect(("127.0.0.1", port))
                await until(lambda n=n: server.accepted == n)  # type: ignore[misc]
                client.sendall(request)
                client.close()  # SO_LINGER 0: RST
                await until(lambda: server.open == 0)
            response = await scrape(port)
            assert response.status_code == 200
            assert "crawler_pages_total 1.0" in response.text


async def test_stalled_clients_do_not_block_scrapes_and_are_dropped() -> None:
    with trio.fail_after(10):
        async with metrics_server(request_timeout=1.0) as (server, port):
            with await connect(port) as silent, await connect(port) as half:
                await half.send(b"GET /metrics HT")
                await until(lambda: server.accepted == 2)
                start = trio.current_time()
                assert (await scrape(port)).status_code == 200
                scraped = trio.current_time()
                assert await read_all(silent) == b""
                assert await read_all(half) == b""
                dropped = trio.current_time()
            assert scraped < dropped and dropped - start >= 0.8
            await until(lambda: server.open == 0)


async def test_a_client_that_never_reads_is_dropped() -> None:
    # A body bigger than the socket buffers, so the server blocks in send_all.
    huge = statistics(hosts={f"http://{n}.test/{'x' * 40_000}": host("h") for n in range(40)})
    snapshots = iter([huge])

    def snapshot() -> crawler.Statistics:
        return next(snapshots, statistics())

    with trio.fail_after(15):
        async with metrics_server(snapshot, request_timeout=1.0) as (server, port):
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            with sock:
                await sock.connect(("127.0.0.1", port))
                await sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                await until(lambda: server.accepted == 1)
                start = trio.current_time()
                await until(lambda: server.open == 0)
                assert trio.current_time() - start >= 0.5
            assert (await scrape(port)).status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\x01\x02 garbage\r\n\r\n", b"400"),
        (b"\xff" * 64, b"400"),  # then EOF: the client can still read the answer
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000, b"431"),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"405"),
        (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    ],
)
async def test_bad_requests_get_an_answer_or_a_close(request_bytes: bytes, status: bytes) -> None:
    with trio.fail_after(10):
        async with metrics_server() as (server, port):
            with await connect(port) as sock:
                await sock.send(request_bytes)
                sock.shutdown(socket.SHUT_WR)
                reply = await read_all(sock)
            if status == b"431":  # the server stops reading mid-request: may be a reset
                assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
            else:
                assert reply.startswith(b"HTTP/1.1 " + status + b" ")
            if request_bytes.startswith(b"HEAD"):
                assert reply.endswith(b"\r\n\r\n")  # headers only
            await until(lambda: server.open == 0)
            assert (await scrape(port)).status_code == 200


async def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    with trio.fail_after(10):
        async with metrics_server(max_connections=3, request_timeout=60) as (server, port):
            stalled = [await connect(port) for _ in range(3)]
            try:
                await until(lambda: server.open == 3)
                with await connect(port) as extra:
                    assert await read_all(extra) == b""
                with pytest.raises(httpx.TransportError):
                    await scrape(port)
                assert server.open == server.peak == 3 and server.refused == 2
                for sock in stalled[:2]:
                    sock.close()
                await until(lambda: server.open == 1)
                assert (await scrape(port)).status_code == 200
                assert server.peak == 3
            finally:
                for sock in stalled:
                    sock.close()


class FailingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener whose accept() raises `errors` first, then accepts for real."""

    def __init__(self, listener: trio.SocketListener, errors: list[OSError]) -> None:
        self.listener = listener
        self.errors = errors

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return await self.listener.accept()

    async def aclose(self) -> None:
        await self.listener.aclose()


async def test_accept_errors_do_not_escape() -> None:
    with trio.fail_after(10):
        server = MetricsServer(statistics)
        (real,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = real.socket.getsockname()[1]
        (other,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        emfile = FailingListener(real, [OSError(errno.EMFILE, "Too many open files")] * 3)
        broken = FailingListener(other, [OSError(errno.EINVAL, "Invalid argument")])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [emfile, broken])
            # EMFILE: retried after a pause; anything else: that listener stops, quietly.
            assert (await scrape(port)).status_code == 200
            assert not broken.errors
            nursery.cancel_scope.cancel()


async def test_serve_metrics_uses_no_global_registry() -> None:
    with trio.fail_after(30):
        async with open_site_server(ports=1, pages=5) as site:
            config = crawler.CrawlConfig(seeds=(site.url(0),), stay_open=True)
            async with crawler.open_crawl(config) as crawl, trio.open_nursery() as nursery:
                port = await nursery.start(serve_metrics, crawl, "127.0.0.1", 0)
                assert (await scrape(port)).status_code == 200
                nursery.cancel_scope.cancel()
                crawl.stop(graceful=False)
    assert not [m for m in REGISTRY.collect() if m.name.startswith("crawler_")]
