"""One hostile crawl, three backends: in memory, with a durable state, by two Redis workers.

Each mode must deliver the same URLs, each once, with the same (status, error kind), and
agree on the statistics that describe the crawl rather than its timing.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import trio

import crawler
from tests.crawlmodes import crawler_for
from tests.web.routes import SiteServer, open_site_server

ROBOTS = "User-agent: *\nDisallow: /disallowed/\n"
SLOW = ("/drip", "/stall", "/slow-headers")

Outcome = tuple[int | None, str | None, int | None]
"""status, error kind, body length"""


def hostile_config(server: SiteServer) -> crawler.CrawlConfig:
    # Routes that time out get a host each (as in test_hostile): a timeout rightly slows
    # its host down, and the rest of the crawl need not wait for that.
    return crawler.CrawlConfig(
        seeds=(
            server.url(0, "/hostile/"),
            server.url(1, "/"),
            *(server.url(2 + i, path) for i, path in enumerate(SLOW)),
        ),
        exclude=tuple(f":{server.ports[0]}{path}$" for path in SLOW),
        rate=0,
        per_host=4,
        concurrency=16,
        retries=1,
        timeout=2.0,
        read_timeout=0.5,
        max_bytes=2 * 1024 * 1024,  # above the bomb on the wire (~1 MiB): decoding is cut
        max_path_depth=5,  # the link trap is cut by the path rules, not by max_depth
    )


def outcomes(pages: list[crawler.Page]) -> dict[str, Outcome]:
    return {
        p.url: (p.status, None if p.error is None else str(p.error.kind), len(p.body))
        for p in pages
    }


def normalised(result: dict[str, Outcome], server: SiteServer) -> dict[str, Outcome]:
    out = dict(result)
    # /truncated closes the connection after 100 of 10000 promised bytes: whether the
    # client sees a protocol error or a reset is up to the kernel's timing (test_hostile).
    truncated = server.url(0, "/truncated")
    status, kind, size = out[truncated]
    if kind in ("reset", "protocol"):
        out[truncated] = (status, "reset|protocol", size)
    # /drip sends a byte a second and times out on the 0.5 s read timeout: how many bytes
    # arrived first depends on scheduling.
    drip = server.url(2, "/drip")
    status, kind, _ = out[drip]
    out[drip] = (status, kind, None)
    return out


async def test_the_hostile_web_is_the_same_crawl_in_every_mode(
    tmp_path: Path, redis_url: str
) -> None:
    robots = dict.fromkeys(range(5), ROBOTS)
    results: dict[str, dict[str, Outcome]] = {}
    stats: dict[str, crawler.Statistics] = {}
    async with open_site_server(ports=5, pages=8, robots=robots, cross_links=False) as server:
        config = hostile_config(server)
        for mode in ("memory", "state", "redis2"):
            crawl = crawler_for(mode, tmp_path, redis_url)
            started = time.monotonic()
            with trio.fail_after(30):
                pages, stats[mode] = await crawl(config)
                # The stalled routes' server side ends once the client hangs up.
                await server.wait_quiet()
            print(f"{mode}: {len(pages)} pages in {time.monotonic() - started:.1f} s")
            twice = [url for url, n in Counter(p.url for p in pages).items() if n > 1]
            assert not twice, f"{mode}: URLs delivered more than once: {twice}"
            results[mode] = normalised(outcomes(pages), server)
            assert stats[mode].bytes == sum(len(p.body) for p in pages), mode
            assert not server.requests_for(path_prefix="/disallowed/"), mode
            assert not server.errors, (mode, server.errors)
            # /flaky and /retry-after count their hits: each mode starts from a fresh server.
            server.reset()

    memory = results["memory"]
    assert memory[server.url(0, "/bomb.gz")][1:] == ("too_large", 2 * 1024 * 1024)
    assert memory[server.url(0, "/loop/a")][1] == "redirect_loop"
    # /flaky answers 500, 500, then 200: two attempts (retries=1) end at the second 500.
    assert memory[server.url(0, "/flaky")][:2] == (500, "http")
    assert memory[server.url(0, "/retry-after")][:2] == (200, None)
    for i, path in enumerate(SLOW):
        assert memory[server.url(2 + i, path)][1] == "timeout", path
    for mode in ("state", "redis2"):
        only_memory = sorted(memory.keys() - results[mode].keys())
        only_mode = sorted(results[mode].keys() - memory.keys())
        assert not only_memory and not only_mode, (mode, only_memory, only_mode)
        differ = {url: (memory[url], results[mode][url]) for url in memory}
        differ = {url: pair for url, pair in differ.items() if pair[0] != pair[1]}
        assert not differ, (mode, differ)

    def figures(s: crawler.Statistics) -> dict[str, object]:
        return {
            "pages": s.pages,
            "errors": s.errors,
            "errors_by_kind": dict(s.errors_by_kind),
            "disallowed": s.disallowed,
            "redirects": s.redirects,
            "trap": s.dropped.get("trap", 0),
        }

    assert figures(stats["memory"])["trap"] != 0
    assert figures(stats["memory"])["disallowed"] != 0
    for mode in ("state", "redis2"):
        assert figures(stats[mode]) == figures(stats["memory"]), mode
