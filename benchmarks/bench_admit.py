"""Micro-benchmark of link admission: ``Frontier.admit`` on a page's canonical links.

Run: ``python benchmarks/bench_admit.py [--number N] [--repeat R]``

`admit` runs once per discovered link that is not in the seen-set yet, so its cost is a
per-link cost of the single-process crawl. Prints nanoseconds per call for new links
(every rule runs: depth, scope, trap, include/exclude, host queue, max_pages) and for
links seen before (the dedup only). Timings are the thread's CPU time, best of R rounds.
"""

from __future__ import annotations

import argparse
import time

from crawler._config import CrawlConfig
from crawler._frontier import Frontier

SITE = "https://www.example.com"


def links(n: int) -> list[str]:
    """Canonical links of a typical site: a few path segments, some with a query."""
    out = []
    for i in range(n):
        section = ("docs", "blog", "shop", "news")[i % 4]
        query = f"?page={i % 7}" if i % 5 == 0 else ""
        out.append(f"{SITE}/{section}/{i // 100}/item-{i}.html{query}")
    return out


def run(number: int) -> tuple[float, float]:
    """(ns per admit of a new link, ns per admit of a seen link)."""
    config = CrawlConfig(seeds=(f"{SITE}/",), exclude=(r"\.pdf$",), max_host_queue=10**9)
    urls = links(number)
    frontier = Frontier(config)
    admit = frontier.admit
    start = time.thread_time_ns()
    for url in urls:
        admit(url, 1, normalized=True)
    fresh = (time.thread_time_ns() - start) / number
    start = time.thread_time_ns()
    for url in urls:
        admit(url, 1, normalized=True)
    seen = (time.thread_time_ns() - start) / number
    assert frontier.admitted == number
    return fresh, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="links per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (best is shown)")
    args = parser.parse_args()
    results = [run(args.number) for _ in range(args.repeat)]
    print(f"Frontier.admit, new link:  {min(r[0] for r in results):7.0f} ns/call")
    print(f"Frontier.admit, seen link: {min(r[1] for r in results):7.0f} ns/call")


if __name__ == "__main__":
    main()
