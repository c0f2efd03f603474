"""Soak test: 20,000+ fetches against a loopback server that injects faults at random.

A warm-up crawl (3 ports x 700 pages) runs first, so that lazy imports, caches and the
allocator's arenas are in place; the process's open file descriptors and resident memory
are measured after it, and again after the main crawl (3 ports x 7,000 pages, about
22,000 requests with retries).  Checked:

* the crawl finishes (inside ``trio.fail_after``);
* every URL ends as exactly one page record, and the set of records is exactly the set of
  pages a crawler must learn about: the server's link graph followed from every root
  through the pages that were fetched successfully (an error page hides its links);
* each record agrees with what the server last did for that URL (a complete page is a
  success; a reset, a stall, a truncated or garbled body, a 5xx the crawler ran out of
  retries for is an error of the matching kind) and no URL was tried more than
  ``retries + 1`` times (a reset on a kept-alive connection before any response byte may
  be resent at once by the transport, as a stale connection: it is not counted);
* the server never saw more than ``per_host`` requests at once on any port;
* no leak: the same number of fds as after the warm-up (+- 2), RSS growth under 32 MiB (the
  crawl's own legitimate growth, the test's and the server's bookkeeping, is about 10 MiB).
  A leaked Page (4 KiB body, its links and headers) per URL would be over 100 MiB, a
  leaked connection per fault would be hundreds of fds.

``pytest -m slow tests/test_soak.py -s`` prints a report (timings, fds, RSS, faults).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import trio

import crawler
from tests.web.core import Web
from tests.web.faults import Fault, FaultyGraph, summarize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, TCP_INFO"),
]

PORTS = 3
PAGES = 7_000
WARMUP_PAGES = 700
PER_HOST = 8
CONCURRENCY = 32
RETRIES = 2
SEED = int(os.environ.get("CRAWLER_SOAK_SEED", "20240601"))
"""Fault choices are a function of the seed: set CRAWLER_SOAK_SEED to explore others."""
WARMUP_DEADLINE = 60.0
CRAWL_DEADLINE = 150.0
MIN_FETCHES = 20_000
FD_MARGIN = 2
RSS_MARGIN = 32 * 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size now (not the peak): resident pages x page size."""
    with open("/proc/self/statm", encoding="ascii") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Record:
    status: int | None
    kind: str | None
    """Error kind, None for a page without error."""

    @property
    def ok(self) -> bool:
        return self.kind is None and self.status == 200


@dataclass
class Crawled:
    records: dict[str, Record] = field(default_factory=dict)
    deliveries: Counter[str] = field(default_factory=Counter)
    statistics: crawler.Statistics | None = None
    seconds: float = 0.0


def config_for(site: FaultyGraph) -> crawler.CrawlConfig:
    return crawler.CrawlConfig(
        seeds=tuple(site.seeds()),
        rate=0,
        per_host=PER_HOST,
        concurrency=CONCURRENCY,
        retries=RETRIES,
        timeout=1.0,
        read_timeout=0.5,
        connect_timeout=1.0,
        obey_robots=False,
    )


async def crawl_all(site: FaultyGraph, deadline: float) -> Crawled:
    out = Crawled()
    start = time.perf_counter()
    with trio.fail_after(deadline):
        async with crawler.open_crawl(config_for(site)) as crawl:
            async for page in crawl:
                out.deliveries[page.url] += 1
                kind = None if page.error is None else str(page.error.kind)
                out.records[page.url] = Record(page.status, kind)
            out.statistics = crawl.statistics()
    out.seconds = time.perf_counter() - start
    return out


def check_exactly_once(site: FaultyGraph, crawled: Crawled) -> None:
    twice = {url: n for url, n in crawled.deliveries.items() if n > 1}
    assert not twice, f"URLs delivered more than once: {sorted(twice.items())[:10]}"
    records = crawled.records
    outside = set(records) - site.all_urls()
    assert not outside, f"records for URLs the site never linked to: {sorted(outside)[:10]}"
    expected = site.reachable_urls(lambda url: url in records and records[url].ok)
    lost = expected - set(records)
    assert not lost, f"{len(lost)} URLs lost (no record): {sorted(lost)[:10]}"
    unexpected = set(records) - expected
    assert not unexpected, f"records for URLs no fetched page linked to: {sorted(unexpected)[:10]}"
    stats = crawled.statistics
    assert stats is not None
    kinds = Counter(r.kind for r in records.values() if r.kind is not None)
    assert stats.pages == len(records)
    assert stats.errors == sum(kinds.values())
    assert dict(stats.errors_by_kind) == dict(kinds)
    assert (stats.queued, stats.in_flight) == (0, 0)


def check_outcomes(site: FaultyGraph, crawled: Crawled) -> None:
    """Each record matches the server's last answer for its URL."""
    mismatches: list[str] = []
    for url, record in crawled.records.items():
        node = site.node_of(url)
        assert node is not None
        history = site.history.get(node)
        if not history:
            mismatches.append(f"{url}: recorded as {record} but never requested")
            continue
        last = history[-1]
        attempts = site.attempts(node)
        if attempts > RETRIES + 1:
            mismatches.append(f"{url}: {attempts} attempts: {history}")
        if site.permanent(node) is not None and attempts != RETRIES + 1:
            mismatches.append(f"{url}: fails permanently but was tried {attempts} times")
        if last.failing:
            good = record.kind in last.error_kinds and (
                last.status is None or record.status == last.status
            )
        else:
            good = record.ok
        if not good:
            mismatches.append(f"{url}: recorded as {record}, server history {history}")
    assert not mismatches, f"{len(mismatches)} records disagree with the server: {mismatches[:10]}"


async def test_soak_faults_every_url_once_no_leak() -> None:
    warm_site = FaultyGraph(WARMUP_PAGES, seed=SEED + 1)
    async with Web(warm_site, log=False).serving(PORTS):
        warm = await crawl_all(warm_site, WARMUP_DEADLINE)
    check_exactly_once(warm_site, warm)
    warm_report = f"warm-up {len(warm.records)} records in {warm.seconds:.1f} s"
    del warm, warm_site
    gc.collect()
    fds_before, rss_before = open_fds(), rss_bytes()

    site = FaultyGraph(PAGES, seed=SEED)
    async with Web(site, log=False).serving(PORTS) as server:
        crawled = await crawl_all(site, CRAWL_DEADLINE)
    gc.collect()
    fds_after, rss_after = open_fds(), rss_bytes()

    fetches = sum(site.fault_counts.values())
    stats = crawled.statistics
    assert stats is not None
    print(
        f"\nsoak: {warm_report};"
        f" {fetches} fetches, {len(crawled.records)} records in {crawled.seconds:.1f} s"
        f"\n  fds {fds_before} -> {fds_after}; RSS {rss_before / 2**20:.1f} MiB ->"
        f" {rss_after / 2**20:.1f} MiB ({(rss_after - rss_before) / 2**20:+.1f} MiB)"
        f"\n  server: {server.connections} connections, max concurrency per port"
        f" {list(server.peak.values())} (naive {list(server.peak_naive.values())}),"
        f" {site.budget_spent} faults skipped (budget spent),"
        f" {site.raced_closes} silent closes raced a reused request"
        f"\n  faults: {summarize(site.fault_counts.items())}"
        f"\n  errors by kind: {dict(stats.errors_by_kind)}"
    )

    assert not server.errors, server.errors[:10]
    assert not server.unknown_paths, server.unknown_paths[:10]
    assert fetches >= MIN_FETCHES
    assert sum(n for f, n in site.fault_counts.items() if f is not Fault.NONE) > 1_000
    check_exactly_once(site, crawled)
    assert len(crawled.records) >= 0.99 * len(site.all_urls())
    check_outcomes(site, crawled)
    assert max(server.peak.values()) <= PER_HOST, server.peak
    assert abs(fds_after - fds_before) <= FD_MARGIN, (fds_before, fds_after)
    assert rss_after - rss_before < RSS_MARGIN, (rss_before, rss_after)
