"""Scrapy, configured like the other two crawlers, run in its own process.

    python benchmarks/crawl_scrapy.py SEED [SEED ...] -o out.jsonl [--concurrency 32] \\
        [--per-host 32] [--max-pages N] [--download-delay 0]

Settings: ``CONCURRENT_REQUESTS`` = ``--concurrency``, ``CONCURRENT_REQUESTS_PER_DOMAIN`` =
``--per-host``, ``DOWNLOAD_DELAY`` = ``--download-delay`` (0 by default) without jitter
(``DOWNLOAD_DELAY_JITTER = 0``; ``RANDOMIZE_DOWNLOAD_DELAY = False`` before it existed),
``ROBOTSTXT_OBEY = True``, AutoThrottle off, ``LOG_LEVEL = "WARNING"``, the telnet console
off (it only opens a port), items written by ``FEEDS`` as JSON Lines, and
``CLOSESPIDER_PAGECOUNT = --max-pages`` (Scrapy lets the requests already in flight
finish, so a few more pages than that are written). Links:
``response.css("a::attr(href)")`` and ``response.follow``; Scrapy's own duplicate filter
(which drops ``#fragments``) and offsite filter (the seeds' hosts) do the rest.

Scrapy keys its download slots (delay, per-domain concurrency) by host *name*: all
loopback ports would share the one slot of ``127.0.0.1``. Each request's
``download_slot`` is therefore its ``host:port`` (set on the spider's requests, and by a
small downloader middleware on robots.txt requests), and ports behave like the distinct
hosts they stand for. ``--broad`` follows Scrapy's advice for broad crawls
(https://docs.scrapy.org/en/latest/topics/broad-crawls.html): the scheduler queue that
picks requests for idle download slots (``DownloaderAwarePriorityQueue``); without it,
32 requests delayed in a few hosts' slots hold all 32 places of ``CONCURRENT_REQUESTS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.settings import default_settings


class BenchSpider(scrapy.Spider):  # type: ignore[misc, unused-ignore]
    name = "bench"

    def __init__(self, seeds: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seeds = list(seeds)
        self.allowed_domains = sorted({h for s in seeds if (h := urlsplit(s).hostname)})

    async def start(self) -> AsyncIterator[Any]:
        for seed in self.seeds:
            yield scrapy.Request(seed, meta=_slot(seed), dont_filter=True)

    def parse(self, response: Any, **kwargs: Any) -> Iterator[Any]:
        hrefs: list[str] = response.css("a::attr(href)").getall()
        yield {
            "url": response.url,
            "status": response.status,
            "title": response.css("title::text").get(),
            "links": [response.urljoin(h) for h in hrefs],
        }
        for href in hrefs:
            url = response.urljoin(href)
            yield response.follow(url, callback=self.parse, meta=_slot(url))


def _slot(url: str) -> dict[str, str]:
    # Set when the request is made: the scheduler's queue (below) reads it too.
    return {"download_slot": urlsplit(url).netloc}


class SlotPerPort:
    """Downloader middleware: robots.txt requests, made by Scrapy, get their port's slot too."""

    def process_request(self, request: Any, spider: Any = None) -> None:
        request.meta.setdefault("download_slot", urlsplit(request.url).netloc)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/crawl_scrapy.py")
    p.add_argument("seeds", nargs="+", metavar="SEED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--per-host", type=int, default=32)
    p.add_argument("--max-pages", type=int, default=0, help="0 = no limit")
    p.add_argument("--download-delay", type=float, default=0.0, help="seconds per slot")
    p.add_argument(
        "--broad",
        action="store_true",
        help="Scrapy's advice for broad crawls: SCHEDULER_PRIORITY_QUEUE ="
        " DownloaderAwarePriorityQueue",
    )
    args = p.parse_args(argv)
    settings: dict[str, Any] = {
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.per_host,
        "DOWNLOAD_DELAY": args.download_delay,
        "ROBOTSTXT_OBEY": True,
        "AUTOTHROTTLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "CLOSESPIDER_PAGECOUNT": args.max_pages,
        "DOWNLOADER_MIDDLEWARES": {SlotPerPort: 50},
        "FEEDS": {args.output: {"format": "jsonlines", "overwrite": True, "encoding": "utf8"}},
    }
    if args.broad:
        settings["SCHEDULER_PRIORITY_QUEUE"] = "scrapy.pqueues.DownloaderAwarePriorityQueue"
    if hasattr(default_settings, "DOWNLOAD_DELAY_JITTER"):
        settings["DOWNLOAD_DELAY_JITTER"] = 0
    else:  # before its deprecation; setting it now only warns
        settings["RANDOMIZE_DOWNLOAD_DELAY"] = False
    process = CrawlerProcess(settings)
    process.crawl(BenchSpider, seeds=args.seeds)
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
