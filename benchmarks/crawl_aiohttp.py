"""The hand-written baseline: the asyncio + aiohttp + aiolimiter crawler of the blog posts.

    python benchmarks/crawl_aiohttp.py SEED [SEED ...] -o out.jsonl \\
        [--concurrency 32] [--per-host 32] [--rate 0] [--max-pages N] [--ca-bundle CA]

The recipe, kept as people write it (and as fast as it goes: ``resp.read()`` bytes
straight into selectolax, no charset sniffing):

* an ``asyncio.Queue`` of URLs and ``--concurrency`` worker tasks;
* ``aiohttp.TCPConnector(limit=concurrency)`` for the global cap (with
  ``ssl=ssl.create_default_context(cafile=CA)`` when ``--ca-bundle`` is given);
* an ``asyncio.Semaphore(per_host)`` per host (``host:port``);
* an ``aiolimiter.AsyncLimiter(rate, 1.0)`` per host when ``--rate`` is given;
* selectolax for ``<a href>``, ``urllib.parse.urljoin`` + ``urldefrag`` to normalise,
  a ``set`` of seen URLs, links followed only to the seeds' hosts;
* one JSON line per page (url, status, title, links);
* it ends when the queue is drained (``queue.join()``).

What the recipe does *not* do, and this copy does not either: robots.txt (never fetched),
Retry-After, retries, per-host fairness, FIFO rate slots (aiolimiter lets a burst of up
to twice the rate through in a 1 s window), resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp  # type: ignore[import-not-found, unused-ignore]
from aiolimiter import AsyncLimiter
from selectolax.lexbor import LexborHTMLParser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/crawl_aiohttp.py")
    p.add_argument("seeds", nargs="+", metavar="SEED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--per-host", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s per host, 0 = none")
    p.add_argument("--max-pages", type=int, default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--ca-bundle", default=None, help="PEM file of the CA to trust (HTTPS)")
    return p.parse_args(argv)


class Recipe:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.out = out
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.seen: set[str] = set()
        self.hosts = {urlsplit(s).netloc for s in args.seeds}
        self.semaphores: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(args.per_host)
        )
        self.limiters: defaultdict[str, AsyncLimiter] = defaultdict(
            lambda: AsyncLimiter(args.rate, 1.0)
        )
        self.started = 0

    def add(self, url: str) -> None:
        if url not in self.seen:
            self.seen.add(url)
            self.queue.put_nowait(url)

    async def fetch(self, session: Any, url: str) -> tuple[int | None, bytes, str, str | None]:
        host = urlsplit(url).netloc
        async with self.semaphores[host]:
            if self.args.rate > 0:
                await self.limiters[host].acquire()
            try:
                async with session.get(url) as resp:
                    body: bytes = await resp.read()
                    return resp.status, body, resp.headers.get("Content-Type", ""), None
            except (TimeoutError, aiohttp.ClientError) as exc:
                return None, b"", "", f"{type(exc).__name__}: {exc}"

    def links_of(self, url: str, body: bytes) -> tuple[str | None, list[str]]:
        tree = LexborHTMLParser(body)
        node = tree.css_first("title")
        title = node.text(strip=True) if node is not None else None
        links: list[str] = []
        for a in tree.css("a[href]"):
            href = a.attributes.get("href")
            if not href:
                continue
            link = urldefrag(urljoin(url, href.strip())).url
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                links.append(link)
                if parts.netloc in self.hosts:
                    self.add(link)
        return title, links

    async def worker(self, session: Any) -> None:
        max_pages = self.args.max_pages
        while True:
            url = await self.queue.get()
            try:
                if max_pages is not None and self.started >= max_pages:
                    continue
                self.started += 1
                status, body, ctype, error = await self.fetch(session, url)
                title: str | None = None
                links: list[str] = []
                if status == 200 and "html" in ctype:
                    title, links = self.links_of(url, body)
                record = {"url": url, "status": status, "title": title, "links": links}
                if error is not None:
                    record["error"] = error
                self.out.write(json.dumps(record) + "\n")
            finally:
                self.queue.task_done()

    async def run(self) -> None:
        for seed in self.args.seeds:
            self.add(urldefrag(seed).url)
        ca = self.args.ca_bundle
        tls = ssl.create_default_context(cafile=ca) if ca else True
        connector = aiohttp.TCPConnector(limit=self.args.concurrency, ssl=tls)
        timeout = aiohttp.ClientTimeout(total=self.args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self.worker(session)) for _ in range(self.args.concurrency)
            ]
            await self.queue.join()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with open(args.output, "w", encoding="utf-8") as out:
        asyncio.run(Recipe(args, out).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
