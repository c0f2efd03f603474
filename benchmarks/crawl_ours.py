"""Our crawler through the library, writing JSON Lines the plain way (a diagnostic).

    python benchmarks/crawl_ours.py SEED [SEED ...] -o out.jsonl \\
        [--concurrency 32] [--per-host 32] [--rate 0] [--burst 1] [--max-pages N]
        [--parse-processes N]

The benchmark's "ours" is the real ``crawl`` command. This script runs the same crawl
through ``crawler.open_crawl`` and writes each page (url, status, title, links) with a
buffered ``file.write`` — what the aiohttp recipe does — so the report can tell the
library's own cost from the cost of the command's output and progress layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crawler
from crawler._parsepool import default_parse_processes


async def crawl(args: argparse.Namespace, out: IO[str]) -> None:
    config = crawler.CrawlConfig(
        seeds=tuple(args.seeds),
        concurrency=args.concurrency,
        per_host=args.per_host,
        rate=args.rate,
        burst=args.burst,
        max_pages=args.max_pages,
        obey_robots=True,
        parse_processes=args.parse_processes,
    )
    async with crawler.open_crawl(config) as pages:
        async for page in pages:
            record: dict[str, object] = {
                "url": page.url,
                "final_url": page.final_url,
                "status": page.status,
                "title": page.title,
                "links": list(page.links),
            }
            if page.error is not None:
                record["error"] = page.error.to_json()
            out.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/crawl_ours.py")
    p.add_argument("seeds", nargs="+", metavar="SEED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--per-host", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s per host, 0 = none")
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--max-pages", type=int, default=None)
    p.add_argument(
        "--parse-processes",
        type=int,
        default=default_parse_processes(),
        help="as the crawl command's (default: the same, 1 on 2 or more cores)",
    )
    args = p.parse_args(argv)
    with open(args.output, "w", encoding="utf-8") as out:
        trio.run(crawl, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
