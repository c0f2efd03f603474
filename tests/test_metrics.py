"""The Prometheus endpoint, scraped over a real socket during a crawl."""

from __future__ import annotations

import httpx
import trio

import crawler
from crawler._metrics import render, serve_metrics
from tests.siteserver import open_site_server


def parse(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_endpoint_during_a_crawl() -> None:
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


def test_render_escapes_labels() -> None:
    stats = crawler.Statistics(
        pages=1,
        errors=1,
        bytes=10,
        elapsed=2.0,
        seen=1,
        queued=0,
        in_flight=0,
        disallowed=0,
        redirects=0,
        concurrency=4,
        paused=False,
        dropped={"scope": 3},
        errors_by_kind={'we"ird\nkind': 1},
        hosts={},
    )
    text = render(stats)
    assert 'crawler_errors_by_kind_total{kind="we\\"ird\\nkind"} 1' in text
    assert 'crawler_dropped_total{reason="scope"} 3' in text
    assert "# TYPE crawler_pages_total counter" in text
