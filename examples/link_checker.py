"""Report the broken links of a site: every link that leads to an error or a 4xx/5xx.

    python examples/link_checker.py http://127.0.0.1:8000/ [--rate 5] [--exclude REGEX]

Exits 1 when a broken link was found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import trio

import crawler


def describe(page: crawler.Page) -> str:
    if page.error is not None:
        return f"{page.error.kind}: {page.error.message}"
    return f"HTTP {page.status}"


async def check(config: crawler.CrawlConfig) -> int:
    referrers: defaultdict[str, set[str]] = defaultdict(set)
    broken: dict[str, str] = {}
    async with crawler.open_crawl(config) as crawl:
        async for page in crawl:
            for link in page.links:
                referrers[link].add(page.url)
            if page.error is not None or (page.status is not None and page.status >= 400):
                broken[page.url] = describe(page)
        stats = crawl.statistics()
    for url, why in sorted(broken.items()):
        print(f"BROKEN {url} ({why})")
        for source in sorted(referrers.get(url, ())):
            print(f"    linked from {source}")
    print(f"{stats.pages} pages checked, {len(broken)} broken", file=sys.stderr)
    return 1 if broken else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s per host")
    parser.add_argument("--exclude", action="append", default=[], help="skip matching URLs")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    config = crawler.CrawlConfig(
        seeds=(args.seed,),
        rate=args.rate,
        exclude=tuple(args.exclude),
        retries=args.retries,
        timeout=args.timeout,
    )
    return trio.run(check, config)


if __name__ == "__main__":
    sys.exit(main())
