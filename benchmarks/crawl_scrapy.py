"""Scrapy, configured like the other two crawlers, run in its own process.

    python benchmarks/crawl_scrapy.py SEED -o out.jsonl [--concurrency 32] \\
        [--per-host 32] [--max-pages N]

Settings: ``CONCURRENT_REQUESTS`` = ``--concurrency``, ``CONCURRENT_REQUESTS_PER_DOMAIN`` =
``--per-host``, ``DOWNLOAD_DELAY = 0``, ``ROBOTSTXT_OBEY = True``, AutoThrottle off,
``LOG_LEVEL = "WARNING"``, the telnet console off (it only opens a port), items written by
``FEEDS`` as JSON Lines, and ``CLOSESPIDER_PAGECOUNT = --max-pages`` (Scrapy lets the
requests already in flight finish, so a few more pages than that are written). Links:
``response.css("a::attr(href)")`` and ``response.follow``; Scrapy's own duplicate filter
(which drops ``#fragments``) and offsite filter (the seed's host) do the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.crawler import CrawlerProcess


class BenchSpider(scrapy.Spider):  # type: ignore[misc, unused-ignore]
    name = "bench"

    def __init__(self, seed: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [seed]
        host = urlsplit(seed).hostname
        self.allowed_domains = [host] if host else []

    def parse(self, response: Any, **kwargs: Any) -> Iterator[Any]:
        hrefs: list[str] = response.css("a::attr(href)").getall()
        yield {
            "url": response.url,
            "status": response.status,
            "title": response.css("title::text").get(),
            "links": [response.urljoin(h) for h in hrefs],
        }
        for href in hrefs:
            yield response.follow(href, callback=self.parse)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/crawl_scrapy.py")
    p.add_argument("seed", metavar="SEED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--per-host", type=int, default=32)
    p.add_argument("--max-pages", type=int, default=0, help="0 = no limit")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.per_host,
        "DOWNLOAD_DELAY": 0,
        "ROBOTSTXT_OBEY": True,
        "AUTOTHROTTLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "CLOSESPIDER_PAGECOUNT": args.max_pages,
        "FEEDS": {args.output: {"format": "jsonlines", "overwrite": True, "encoding": "utf8"}},
    }
    process = CrawlerProcess(settings)
    process.crawl(BenchSpider, seed=args.seed)
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
