"""The Prometheus endpoint, scraped over a real socket during a crawl."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import trio
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import crawler
from crawler._metrics import StatisticsCollector, serve_metrics
from crawler._page import HostStatistics
from tests.siteserver import open_site_server


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


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


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
