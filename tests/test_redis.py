"""The Lua scripts of the shared frontier, against a real redis-server.

Times asserted here are the scripts' own (the Redis server's clock, as each claim reports
it), so GCRA spacing is checked exactly, without the scheduling noise of a client.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from crawler._redis import (
    Claim,
    RedisClient,
    RedisFrontier,
    check_crawl_id,
    crawl_prefix,
    open_redis,
)
from tests.redisserver import unique_crawl_id

ORIGIN = "http://a.test"
SETTINGS = {"test": True}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    async with open_redis(redis_url) as client:
        yield client


def entry(url: str, depth: int = 0) -> str:
    return json.dumps({"u": url, "d": depth}, separators=(",", ":"))


def link(url: str, origin: str = ORIGIN, counts: int = 1) -> list[object]:
    return [url, entry(url), origin, counts]


def host(
    origin: str = ORIGIN, *, rate: float = 0.0, burst: int = 1, per_host: int = 100, robots: int = 0
) -> list[object]:
    return [origin, rate, burst, per_host, robots]


def frontier(
    client: RedisClient, crawl_id: str, worker: str = "w1", lease: float = 30.0
) -> RedisFrontier:
    return RedisFrontier(client, crawl_id, worker_id=worker, lease=lease)


async def seed(
    f: RedisFrontier, urls: list[str], hosts: list[list[object]], *, max_pages: int | None = None
) -> int:
    origin_of = {str(h[0]): str(h[0]) for h in hosts}
    links = [link(u, next(o for o in origin_of if u.startswith(o))) for u in urls]
    _, _, added, _ = await f.join(
        SETTINGS, scope=[], links=links, hosts=hosts, max_pages=max_pages, max_host_queue=10**6
    )
    return added


def done(claim: Claim, **extra: Any) -> dict[str, Any]:
    return {"k": "done", "l": claim.lease, "o": claim.origin, "e": claim.entry, "page": 1, **extra}


@asynccontextmanager
async def cleanup(client: RedisClient, crawl_id: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await frontier(client, crawl_id).delete()


# ---------------------------------------------------------------------------------------
# GCRA


async def test_gcra_wait_is_the_exact_time_to_the_next_slot(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        f = frontier(client, cid)
        await seed(f, [f"{ORIGIN}/{i}" for i in range(10)], [host(rate=4.0, burst=2)])
        first = await f.claim(10)
        # A fresh bucket lets `burst` requests through at once, then one per 1/rate.
        assert len(first.claims) == 2
        assert first.wait is not None and 0.24 < first.wait <= 0.25 + 1e-6
        again = await f.claim(10)
        assert again.claims == ()
        assert again.wait is not None
        assert again.wait == pytest.approx(0.25 - (again.now - first.now), abs=1e-6)
        await trio.sleep(again.wait)
        third = await f.claim(10)
        assert len(third.claims) == 1
        assert third.now - first.now >= 0.25 - 1e-6


@pytest.mark.parametrize("burst", [1, 3])
async def test_gcra_spacing_holds_across_concurrent_claimers(
    client: RedisClient, burst: int
) -> None:
    """Four workers race for one host at 40/s: the grants (server clock) never exceed
    burst + rate*W in any window; at burst 1 they are spaced by at least 1/rate; the slots
    are not wasted (the long-run rate is the configured one)."""
    rate, grants_wanted = 40.0, 48
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        await seed(
            frontier(client, cid),
            [f"{ORIGIN}/{i}" for i in range(grants_wanted)],
            [host(rate=rate, burst=burst)],
        )
        grants: list[float] = []

        async def worker(name: str) -> None:
            f = frontier(client, cid, name)
            while len(grants) < grants_wanted:
                result = await f.claim(1)
                grants.extend(c.claimed_at for c in result.claims)
                for c in result.claims:
                    await f.settle(done(c))
                if not result.claims:
                    await trio.sleep(min(result.wait or 0.05, 0.05))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(worker, f"w{i}")
        grants.sort()
        assert len(grants) == grants_wanted
        interval = 1.0 / rate
        if burst == 1:
            # Each grant waits for its own slot: exact spacing.
            gaps = [b - a for a, b in itertools.pairwise(grants)]
            assert min(gaps) >= interval - 1e-6
        for window in (0.05, 0.1, 0.25, 0.5):
            best = max(sum(1 for t in grants if start <= t < start + window) for start in grants)
            assert best <= burst + rate * window + 1e-9
        # Racing claimers waste no slot: a grant is late only by a claim's round trip (a few
        # ms here, all four claimers sharing one event loop), so the pace stays near `rate`.
        span = grants[-1] - grants[0]
        assert span < (grants_wanted - burst) * interval * 1.6


async def test_retry_after_pauses_the_host_for_every_worker(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        a, b = frontier(client, cid, "a"), frontier(client, cid, "b")
        await seed(a, [f"{ORIGIN}/1", f"{ORIGIN}/2"], [host(rate=0.0)])
        (claim,) = (await a.claim(1)).claims
        retry = {"k": "retry", "l": claim.lease, "o": ORIGIN, "ne": claim.entry, "pause": 0.4}
        assert await a.settle(retry) == 1
        blocked = await b.claim(5)
        assert blocked.claims == ()
        assert blocked.wait is not None and 0.35 < blocked.wait <= 0.4 + 1e-6
        await trio.sleep(blocked.wait)
        after = await b.claim(5)
        # The retried URL went back to the front of the queue.
        assert [c.entry for c in after.claims] == [claim.entry, entry(f"{ORIGIN}/2")]


async def test_crawl_delay_from_robots_sets_the_shared_interval(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        a, b = frontier(client, cid, "a"), frontier(client, cid, "b")
        await seed(a, [f"{ORIGIN}/{i}" for i in range(5)], [host(rate=0.0, robots=1)])
        (robots,) = (await a.claim(5)).claims
        assert robots.kind == "robots" and robots.entry == ""
        # robots.txt is being fetched: nobody gets a URL of that host meanwhile.
        waiting = await b.claim(5)
        assert waiting.claims == ()
        assert waiting.wait is not None and waiting.wait > 25
        body = "User-agent: *\nCrawl-delay: 0.3\n"
        op = {
            "k": "robots", "l": robots.lease, "o": ORIGIN, "status": "200", "body": body,
            "interval": 0.3, "ttl": 3600.0,
        }  # fmt: skip
        assert await a.settle(op) == 1
        assert await a.robots(ORIGIN) == (200, body.encode(), "")
        # The slower pace counts from now, with no burst.
        first = await b.claim(5)
        assert first.claims == ()
        assert first.wait is not None and 0.25 < first.wait <= 0.3 + 1e-6
        await trio.sleep(first.wait)
        got = await b.claim(5)
        assert [c.kind for c in got.claims] == ["url"]
        assert got.claims[0].version == 1  # robots.txt version, to reload it
        assert got.wait is not None and 0.29 < got.wait <= 0.3 + 1e-6


async def test_backoff_grows_on_overload_and_decays(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        f = frontier(client, cid)
        await seed(f, [f"{ORIGIN}/{i}" for i in range(4)], [host(rate=0.0)])
        one, two = (await f.claim(2)).claims
        slow = {"health": "slow", "started": one.claimed_at}
        retry = {"k": "retry", "l": one.lease, "o": ORIGIN, "ne": one.entry, **slow}
        await f.settle(retry)
        # A second sign from the same round does not grow it again.
        await f.settle({**done(two), "health": "slow", "started": two.claimed_at})
        status = await f.status()
        assert status.hosts[ORIGIN].backoff == 0.25  # BACKOFF_FLOOR
        result = await f.claim(1)
        assert result.claims == () and result.wait is not None and result.wait > 0.1
        await trio.sleep(result.wait)
        (three,) = (await f.claim(1)).claims
        await f.settle({**done(three), "health": "ok", "started": three.claimed_at})
        assert (await f.status()).hosts[ORIGIN].backoff == 0.0


# ---------------------------------------------------------------------------------------
# Concurrency tokens and leases


async def test_concurrency_tokens_never_exceed_the_cap(client: RedisClient) -> None:
    cid = unique_crawl_id()
    cap = 3
    async with cleanup(client, cid):
        await seed(
            frontier(client, cid), [f"{ORIGIN}/{i}" for i in range(120)], [host(per_host=cap)]
        )
        holding = 0
        most = 0
        fetched: list[str] = []

        async def worker(name: str, seed_: int) -> None:
            nonlocal holding, most
            f = frontier(client, cid, name)
            rng = __import__("random").Random(seed_)
            async with trio.open_nursery() as nursery:
                while True:
                    result = await f.claim(4)
                    if not result.claims and result.pending == 0:
                        return
                    for c in result.claims:
                        holding += 1
                        most = max(most, holding)
                        nursery.start_soon(hold, f, c, rng.uniform(0.0, 0.01))
                    tokens = await client.zcard(f.key(f"t:{ORIGIN}"))
                    assert tokens <= cap
                    if not result.claims:
                        await trio.sleep(0.002)

        async def hold(f: RedisFrontier, c: Claim, seconds: float) -> None:
            nonlocal holding
            await trio.sleep(seconds)
            holding -= 1  # before Redis frees the token: `holding` never over-counts
            fetched.append(c.entry)
            assert await f.settle(done(c)) == 1

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(worker, f"w{i}", i)
        assert most == cap
        assert len(fetched) == len(set(fetched)) == 120


async def test_expired_leases_return_urls_and_tokens(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        dead = frontier(client, cid, "dead", lease=0.3)
        alive = frontier(client, cid, "alive", lease=0.3)
        await seed(dead, [f"{ORIGIN}/{i}" for i in range(3)], [host(per_host=2)])
        taken = (await dead.claim(5)).claims
        assert len(taken) == 2
        blocked = await alive.claim(5)
        assert blocked.claims == ()  # both tokens are leased
        assert blocked.wait is not None and 0.25 < blocked.wait <= 0.3 + 1e-6
        assert blocked.pending == 3
        await trio.sleep(blocked.wait + 0.01)
        back = await alive.claim(5)
        assert sorted(c.entry for c in back.claims) == sorted(c.entry for c in taken)
        status = await alive.status()
        assert status.recovered == 2 and status.leased == 2 and status.pending == 3
        # The dead worker's late answers change nothing: its leases are gone.
        assert [await dead.settle(done(c)) for c in taken] == [0, 0]
        for c in back.claims:
            assert await alive.settle(done(c)) == 1
        last = await alive.claim(5)
        assert len(last.claims) == 1
        await alive.settle(done(last.claims[0]))
        final = await alive.status()
        assert final.pending == 0 and final.pages == 3 and final.leased == 0


async def test_a_late_completion_wins_while_its_url_waits_in_the_queue(
    client: RedisClient,
) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        slow = frontier(client, cid, "slow", lease=0.2)
        await seed(slow, [f"{ORIGIN}/1"], [host()])
        (claim,) = (await slow.claim(1)).claims
        await trio.sleep(0.25)
        # Recovery runs on the next claim (by anyone): the URL is queued again...
        other = frontier(client, cid, "other", lease=0.2)
        assert (await other.claim(0)).pending == 1
        assert await client.llen(slow.key(f"q:{ORIGIN}")) == 1
        # ...and the slow worker's completion takes it back out: fetched once, counted once.
        assert await slow.settle(done(claim)) == 1
        status = await slow.status()
        assert status.pending == 0 and status.pages == 1 and status.queued == 0


async def test_renewal_keeps_a_lease(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        holder = frontier(client, cid, "holder", lease=0.3)
        other = frontier(client, cid, "other", lease=0.3)
        await seed(holder, [f"{ORIGIN}/1"], [host(per_host=1)])
        (claim,) = (await holder.claim(1)).claims
        for _ in range(5):
            await trio.sleep(0.15)
            assert await holder.renew([claim.lease]) == []
            assert (await other.claim(1)).claims == ()
        assert await holder.settle(done(claim)) == 1
        assert await holder.renew([claim.lease]) == [claim.lease]
        status = await other.status()
        assert set(status.workers) == {"holder"}


async def test_released_leases_go_back_at_once(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        a, b = frontier(client, cid, "a"), frontier(client, cid, "b")
        await seed(a, [f"{ORIGIN}/1", f"{ORIGIN}/2"], [host(per_host=1, robots=1)])
        (robots,) = (await a.claim(2)).claims
        assert robots.kind == "robots"
        assert await a.settle({"k": "release", "l": robots.lease, "o": ORIGIN}) == 1
        (again,) = (await b.claim(2)).claims
        assert again.kind == "robots"  # someone else may fetch robots.txt now
        op = {
            "k": "robots", "l": again.lease, "o": ORIGIN, "status": "404", "body": "",
            "interval": 0.0, "ttl": 3600.0,
        }  # fmt: skip
        await b.settle(op)
        (url,) = (await b.claim(2)).claims
        assert await b.settle({"k": "release", "l": url.lease, "o": ORIGIN}) == 1
        (same,) = (await a.claim(2)).claims
        assert same.entry == url.entry


async def test_delayed_retries_come_back_when_due(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        f = frontier(client, cid)
        await seed(f, [f"{ORIGIN}/1"], [host()])
        (claim,) = (await f.claim(1)).claims
        retried = json.dumps({"u": f"{ORIGIN}/1", "d": 0, "a": 1}, separators=(",", ":"))
        op = {"k": "retry", "l": claim.lease, "o": ORIGIN, "ne": retried, "delay": 0.2}
        assert await f.settle(op) == 1
        waiting = await f.claim(1)
        assert waiting.claims == () and waiting.pending == 1
        assert waiting.wait is not None and 0.15 < waiting.wait <= 0.2 + 1e-6
        await trio.sleep(waiting.wait)
        (back,) = (await f.claim(1)).claims
        assert back.entry == retried


# ---------------------------------------------------------------------------------------
# Dedup, scope, termination, keys


async def test_seeds_and_links_are_deduplicated_across_workers(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        workers = [frontier(client, cid, f"w{i}") for i in range(4)]
        urls = [f"{ORIGIN}/{i}" for i in range(50)]
        added: list[int] = []

        async def join(f: RedisFrontier, offset: int) -> None:
            # Overlapping seed lists, given at the same time.
            added.append(await seed(f, urls[offset : offset + 30], [host()]))

        async with trio.open_nursery() as nursery:
            for i, f in enumerate(workers):
                nursery.start_soon(join, f, i * 7)
        assert sum(added) == 50
        # Links found by several workers at once enter once.
        claims = (await workers[0].claim(4)).claims
        fresh = [f"{ORIGIN}/new/{i}" for i in range(40)]

        async def complete(f: RedisFrontier, c: Claim) -> None:
            assert await f.settle(done(c, links=[link(u) for u in fresh])) == 1

        async with trio.open_nursery() as nursery:
            for f, c in zip(workers, claims, strict=True):
                nursery.start_soon(complete, f, c)
        status = await workers[0].status()
        assert status.seen == 50 + 40
        assert status.admitted == status.seen
        assert status.pending == status.queued == 50 + 40 - 4
        # A link disallowed by robots.txt (known to the sender) is seen, counted, not queued.
        (c,) = (await workers[1].claim(1)).claims
        blocked = link(f"{ORIGIN}/private", counts=-1)
        await workers[1].settle(done(c, links=[blocked, blocked]))
        status = await workers[0].status()
        assert status.disallowed == 1 and status.queued == 50 + 40 - 5


async def test_max_pages_is_shared(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        a, b = frontier(client, cid, "a"), frontier(client, cid, "b")
        assert await seed(a, [f"{ORIGIN}/{i}" for i in range(3)], [host()], max_pages=5) == 3
        assert await seed(b, [f"{ORIGIN}/{i}" for i in range(3, 9)], [host()], max_pages=5) == 2
        status = await a.status()
        assert status.admitted == 5 and status.dropped == {"max_pages": 4}


async def test_the_crawl_ends_when_nothing_is_queued_or_leased(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        a, b = frontier(client, cid, "a"), frontier(client, cid, "b")
        await seed(a, [f"{ORIGIN}/1"], [host()])
        (claim,) = (await a.claim(1)).claims
        idle = await b.claim(1)
        assert idle.claims == () and idle.pending == 1  # leased by a: not over
        await a.settle(done(claim, links=[link(f"{ORIGIN}/2")]))
        (second,) = (await b.claim(1)).claims
        await b.settle(done(second, links=[link(f"{ORIGIN}/1")]))  # seen: not queued
        over = await a.claim(1)
        assert over.claims == () and over.pending == 0 and over.wait is None
        assert (await a.status()).finished


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _cluster_slot(key: str) -> int:
    """Redis Cluster's HASH_SLOT: CRC16 of the first {...} tag, if any, mod 16384."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % 16384


async def test_every_key_of_a_crawl_shares_its_hash_tag(client: RedisClient) -> None:
    cid = unique_crawl_id("tag")
    async with cleanup(client, cid):
        f = frontier(client, cid, lease=0.1)
        other = "http://b.test:8080"
        urls = [f"{ORIGIN}/{i}" for i in range(4)]
        await seed(f, [*urls, f"{other}/1"], [host(robots=1, per_host=2), host(other)])
        claims = (await f.claim(2)).claims
        robots = next(c for c in claims if c.kind == "robots")
        op = {
            "k": "robots", "l": robots.lease, "o": ORIGIN, "status": "200", "body": "",
            "interval": 0.0, "ttl": 60.0,
        }  # fmt: skip
        await f.settle(op)
        url = next(c for c in claims if c.origin == other)
        ne = json.dumps({"u": f"{other}/1", "d": 0, "a": 1})
        await f.settle({"k": "retry", "l": url.lease, "o": other, "ne": ne, "delay": 5})
        (page,) = (await f.claim(1)).claims
        await f.settle(done(page, res=json.dumps({"url": page.entry})))
        held = (await f.claim(1)).claims  # a lease (and token) left to expire
        assert len(held) == 1
        await f.renew([])
        keys = [key async for key in client.scan_iter(match=f"crawler:{{{cid}}}:*")]
        everything = [key async for key in client.scan_iter(match="*")]
        mine = [key for key in everything if cid in key]
        assert sorted(keys) == sorted(mine)
        names = {key.removeprefix(crawl_prefix(cid)).split(":")[0] for key in keys}
        assert names >= {"meta", "stats", "seen", "hosts", "hostset", "h", "q", "t", "robots"}
        assert names >= {"leases", "leased", "delayed", "seq", "workers", "results"}
        assert all(key.startswith(f"crawler:{{{cid}}}:") for key in keys)
        assert len({_cluster_slot(key) for key in keys}) == 1


def test_crawl_ids_cannot_break_the_hash_tag() -> None:
    assert crawl_prefix("site-2026.v1") == "crawler:{site-2026.v1}:"
    for bad in ("", "a{b", "a}b", "with space", "x" * 201):
        with pytest.raises(ValueError, match="crawl_id"):
            check_crawl_id(bad)


async def test_status_reports_queues_leases_and_hosts(client: RedisClient) -> None:
    cid = unique_crawl_id()
    async with cleanup(client, cid):
        f = frontier(client, cid)
        other = "http://b.test"
        await seed(
            f,
            [f"{ORIGIN}/1", f"{ORIGIN}/2", f"{other}/1"],
            [host(per_host=1), host(other, rate=2.0, per_host=1)],
        )
        claims = (await f.claim(5)).claims
        assert Counter(c.origin for c in claims) == {ORIGIN: 1, other: 1}
        await f.settle(done(claims[0], err="timeout", bytes=10))
        status = await f.status()
        assert status.queued == 1 and status.leased == 1 and status.pending == 2
        assert status.pages == 1 and status.errors == 1 and status.errors_by_kind == {"timeout": 1}
        assert status.hosts[other].rate == 2.0 and status.hosts[ORIGIN].rate == 0.0
        assert status.settings == SETTINGS
        assert set(status.workers) == {"w1"}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://h", True),
        ("rediss://:pw@h:6380/2", True),
        ("unix:///run/redis.sock", True),
        ("redis+cluster://h:7000", True),
        ("foo://", False),
        ("redis://", False),
        ("redis://host:notaport", False),
        ("redis://h:6379/x", False),
        ("redis+cluster://h:7000/1", False),
        ("unix://", False),
        ("h:6379", False),
    ],
)
def test_redis_urls_are_checked_before_connecting(url: str, ok: bool) -> None:
    from crawler._redis import RedisUrlError, check_redis_url

    if ok:
        assert check_redis_url(url) == url
    else:
        with pytest.raises(RedisUrlError, match="bad Redis URL") as raised:
            check_redis_url(url)
        assert "pw" not in str(raised.value) and "\n" not in str(raised.value)
