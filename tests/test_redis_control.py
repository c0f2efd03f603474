"""Live control of a shared crawl, in Redis: pause/resume (the crawl, a host name, an origin),
per-host limits, adding URLs (at the front, widening the scope), and what status shows.

Driven against a real redis-server through RedisFrontier directly, as tests/test_redis.py
does; times asserted are the scripts' own (the server's clock, as each claim reports it).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from crawler._redis import (
    Claim,
    ClaimResult,
    RedisClient,
    RedisFrontier,
    control_key,
    crawl_prefix,
    open_redis,
)
from crawler._report import format_shared_status

A = "http://a.test"
A_TLS = "https://a.test:8443"
B = "http://b.test"
SETTINGS = {"test": True}
DEADLINE = 10.0
"""Seconds any one wait of a test may take (pytest-timeout is the backstop)."""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
def f(client: RedisClient, crawl_id: str) -> RedisFrontier:
    """One worker's view of a fresh crawl (the crawl_id fixture deletes its keys)."""
    return RedisFrontier(client, crawl_id, worker_id="w1")


def entry(url: str) -> str:
    return json.dumps({"u": url, "d": 0}, separators=(",", ":"))


def origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def links(*urls: str) -> list[list[object]]:
    return [[u, entry(u), origin_of(u), 1] for u in urls]


def host(origin: str, *, rate: float = 0.0, burst: int = 1, per_host: int = 100) -> list[object]:
    return [origin, rate, burst, per_host, 0]


def urls(origin: str, n: int, tag: str = "") -> list[str]:
    return [f"{origin}/{tag}{i}" for i in range(n)]


async def seed(f: RedisFrontier, found: list[str], hosts: list[list[object]]) -> int:
    _, _, added, _ = await f.join(
        SETTINGS,
        scope=[],
        links=links(*found),
        hosts=hosts,
        max_pages=None,
        max_host_queue=10**6,
    )
    return added


def done(claim: Claim) -> dict[str, Any]:
    return {"k": "done", "l": claim.lease, "o": claim.origin, "e": claim.entry, "page": 1}


def by_origin(result: ClaimResult) -> Counter[str]:
    return Counter(c.origin for c in result.claims)


async def claim_until(f: RedisFrontier, n: int, ok: Callable[[ClaimResult], bool]) -> ClaimResult:
    """Claim until `ok(result)` (sleeping the wait the server gives), within DEADLINE."""
    with trio.fail_after(DEADLINE):
        while True:
            result = await f.claim(n)
            if ok(result):
                return result
            assert not result.claims, f"claimed what the test did not expect: {result}"
            await trio.sleep(min(result.wait if result.wait is not None else 0.05, 0.5))


async def woken(
    client: RedisClient, f: RedisFrontier, action: Callable[[], Awaitable[None]]
) -> None:
    """Run `action` and see it publish on the crawl's wake channel (within DEADLINE)."""
    async with client.pubsub(channels=[f.key("wake")], ignore_subscribe_messages=True) as wake:
        await action()
        with trio.fail_after(DEADLINE):
            async for _ in wake:
                return


# ---------------------------------------------------------------------------------------
# pause / resume


async def test_a_paused_host_is_skipped_while_another_is_served(
    client: RedisClient, f: RedisFrontier
) -> None:
    await seed(f, [*urls(A, 5), *urls(B, 5)], [host(A), host(B)])
    leased = (await f.claim(1)).claims[0]
    assert leased.origin == A  # alphabetical at equal scores: a.test first
    await f.set_paused(A, True)
    result = await f.claim(20)
    assert by_origin(result) == {B: 5}
    # Only the paused host has work: the wait is the lease's, not "now" (no spinning).
    idle = await f.claim(20)
    assert idle.claims == () and idle.pending == 10  # queued + leased
    assert idle.wait is not None and idle.wait > 1.0
    # The request leased before the pause finishes as ever; renewals work.
    assert await f.renew([leased.lease]) == []
    assert await f.settle(done(leased)) == 1
    assert (await f.claim(20)).claims == ()
    await woken(client, f, lambda: f.set_paused(A, False))
    assert by_origin(await f.claim(20)) == {A: 4}


async def test_a_paused_host_counts_in_no_wait(f: RedisFrontier) -> None:
    """A paused host's next slot wakes nobody: it is out of the schedule until resumed."""
    await seed(f, urls(A, 3), [host(A, rate=1.0)])
    first = await f.claim(5)
    assert len(first.claims) == 1 and first.wait is not None and first.wait < 1.5
    assert await f.settle(done(first.claims[0])) == 1  # no lease left to wait for
    await f.set_paused("a.test", True)
    idle = await f.claim(5)
    assert idle.claims == () and idle.wait is None and idle.pending == 2
    await f.set_paused("a.test", False)
    back = await f.claim(5)
    assert back.wait is not None and back.wait <= 1.0 + 1e-6


async def test_a_paused_crawl_hands_out_nothing_and_its_resume_wakes_workers(
    client: RedisClient, f: RedisFrontier
) -> None:
    await seed(f, [*urls(A, 3), *urls(B, 3)], [host(A), host(B)])
    leased = (await f.claim(1)).claims[0]
    await f.set_paused(None, True)
    paused = await f.claim(20)
    assert paused.claims == () and paused.paused
    # No wait at all: an idle claimer sleeps its longest (MAX_WAIT) instead of spinning.
    assert paused.wait is None and paused.pending == 6
    # Settles, renewals and status keep working while paused.
    assert await f.renew([leased.lease]) == []
    assert await f.settle(done(leased)) == 1
    status = await f.status()
    assert status.paused and status.pending == 5
    assert all(h.paused for h in status.hosts.values())
    # Pausing the crawl leaves the hosts' own pause state alone (as in one process).
    assert (await client.hget(f.key(f"h:{A}"), "paused")) == "0"
    await woken(client, f, lambda: f.set_paused(None, False))
    resumed = await f.claim(20)
    assert not resumed.paused and by_origin(resumed) == {A: 2, B: 3}
    assert not (await f.status()).paused


async def test_a_pause_by_host_name_holds_for_origins_that_arrive_later(
    f: RedisFrontier,
) -> None:
    await f.set_paused("A.test", True)  # any case: the key is canonicalised
    await seed(f, [*urls(A, 2), *urls(A_TLS, 2), *urls(B, 2)], [host(A), host(A_TLS), host(B)])
    assert by_origin(await f.claim(20)) == {B: 2}
    status = await f.status()
    assert status.hosts[A].paused and status.hosts[A_TLS].paused
    assert not status.hosts[B].paused and not status.paused
    await f.set_paused("a.test", False)
    assert by_origin(await f.claim(20)) == {A: 2, A_TLS: 2}


async def test_the_later_of_a_host_name_and_an_origin_pause_holds_for_a_new_host(
    f: RedisFrontier,
) -> None:
    # Paused by name, then one origin of it resumed before it exists: that origin runs.
    await f.set_paused("a.test", True)
    await f.set_paused(A_TLS, False)
    # And an origin paused before its name is resumed: the name's resume is later.
    await f.set_paused("http://b.test:8080", True)
    await f.set_paused("b.test", False)
    b_port = "http://b.test:8080"
    await seed(
        f,
        [*urls(A, 2), *urls(A_TLS, 2), *urls(b_port, 2)],
        [host(A), host(A_TLS), host(b_port)],
    )
    assert by_origin(await f.claim(20)) == {A_TLS: 2, b_port: 2}
    # An origin paused after its name was resumed stays paused.
    await f.set_paused("http://b.test:81", True)
    await seed(f, urls("http://b.test:81", 1), [host("http://b.test:81")])
    assert (await f.claim(20)).claims == ()


async def test_an_origin_pause_leaves_the_other_origins_of_its_host(f: RedisFrontier) -> None:
    await seed(f, [*urls(A, 2), *urls(A_TLS, 2)], [host(A), host(A_TLS)])
    await f.set_paused("https://A.TEST:8443/some/page", True)  # a URL stands for its origin
    assert by_origin(await f.claim(20)) == {A: 2}
    await f.set_paused("a.test", False)  # the name resumes every origin of it
    assert by_origin(await f.claim(20)) == {A_TLS: 2}


# ---------------------------------------------------------------------------------------
# limits


async def test_lowering_per_host_limits_claims_of_existing_and_later_hosts(
    f: RedisFrontier,
) -> None:
    await seed(f, urls(A, 10), [host(A, per_host=100)])
    await f.set_host_limits("a.test", per_host=2)
    first = await f.claim(20)
    assert by_origin(first) == {A: 2}
    # Another origin of the host, arriving later with the configured 100, gets 2 as well.
    await seed(f, urls(A_TLS, 10), [host(A_TLS, per_host=100)])
    assert by_origin(await f.claim(20)) == {A_TLS: 2}
    # A finished request frees one token.
    assert await f.settle(done(first.claims[0])) == 1
    assert by_origin(await f.claim(20)) == {A: 1}
    status = await f.status()
    assert status.hosts[A].per_host == 2 and status.hosts[A_TLS].per_host == 2


async def test_lowering_the_rate_spaces_requests_of_an_existing_host(f: RedisFrontier) -> None:
    await seed(f, urls(A, 10), [host(A, rate=0.0)])
    assert len((await f.claim(3)).claims) == 3  # unlimited: all at once
    await f.set_host_limits(A, rate=4.0)
    first = await f.claim(20)
    assert len(first.claims) == 1
    # GCRA: the next slot is exactly 1/rate after the one just granted.
    assert first.wait is not None and 0.2 < first.wait <= 0.25 + 1e-6
    again = await claim_until(f, 20, lambda r: len(r.claims) > 0)
    assert len(again.claims) == 1 and again.now - first.now >= 0.25 - 1e-6
    assert (await f.status()).hosts[A].rate == 4.0


async def test_limits_set_before_a_host_exists_hold_when_it_arrives(f: RedisFrontier) -> None:
    await f.set_host_limits("a.test", rate=4.0)
    await f.set_host_limits("a.test", per_host=1)  # None keeps the stored rate
    await f.set_host_limits(B, rate=4.0, burst=3)
    await seed(f, [*urls(A, 5), *urls(B, 5)], [host(A, per_host=100), host(B, per_host=100)])
    first = await f.claim(20)
    # a.test: one token; b.test: a full bucket of 3, then one per 1/rate.
    assert by_origin(first) == {A: 1, B: 3}
    assert first.wait is not None and 0.2 < first.wait <= 0.25 + 1e-6
    hosts = (await f.status()).hosts
    assert hosts[A].rate == 4.0 and hosts[A].per_host == 1
    assert hosts[B].rate == 4.0 and hosts[B].per_host == 100


async def test_an_origin_override_beats_a_host_name_override(f: RedisFrontier) -> None:
    await f.set_host_limits(A_TLS, per_host=3)
    await f.set_host_limits("a.test", per_host=1)  # later, but by name: the origin wins
    await seed(f, [*urls(A, 5), *urls(A_TLS, 5)], [host(A), host(A_TLS)])
    assert by_origin(await f.claim(20)) == {A: 1, A_TLS: 3}
    hosts = (await f.status()).hosts
    assert hosts[A].per_host == 1 and hosts[A_TLS].per_host == 3


@pytest.mark.parametrize(
    "limits",
    [
        {"rate": -1.0},
        {"rate": math.nan},
        {"rate": math.inf},
        {"burst": 0},
        {"burst": 1.5},
        {"per_host": 0},
        {"per_host": True},
    ],
)
async def test_bad_limits_raise_and_store_nothing(
    client: RedisClient, f: RedisFrontier, limits: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        await f.set_host_limits("a.test", **limits)
    assert not await client.exists([f.key("control")])


@pytest.mark.parametrize("key", ["", "  ", "ftp://a.test", "a.test:8080", "a/b", "a b"])
async def test_bad_host_keys_raise(f: RedisFrontier, key: str) -> None:
    with pytest.raises(ValueError):
        await f.set_paused(key, True)
    with pytest.raises(ValueError):
        await f.set_host_limits(key, per_host=1)


def test_host_keys_are_canonical() -> None:
    assert control_key("Example.COM") == "example.com"
    assert control_key("https://Example.com:443/x") == "https://example.com"
    assert control_key("[::1]") == "::1"
    assert control_key("http://[::1]:8080") == "http://[::1]:8080"
    assert control_key("bücher.de") == "xn--bcher-kva.de"


# ---------------------------------------------------------------------------------------
# add


async def test_urls_added_in_front_are_claimed_first(f: RedisFrontier) -> None:
    await seed(f, urls(A, 3), [host(A)])
    added = await f.add(
        links(f"{A}/x", f"{A}/y", f"{A}/0"),  # /0 was seen: not added again
        [],
        front=True,
        max_pages=None,
        max_host_queue=10**6,
    )
    assert added == 2
    order = [json.loads(c.entry)["u"] for c in (await f.claim(10)).claims]
    assert order == [f"{A}/x", f"{A}/y", f"{A}/0", f"{A}/1", f"{A}/2"]


async def test_added_urls_go_to_the_back_and_keep_the_bounds(f: RedisFrontier) -> None:
    await seed(f, urls(A, 2), [host(A)])
    added = await f.add(
        links(*urls(A, 3, "n"), *urls(B, 3)),
        [host(B)],
        max_pages=6,
        max_host_queue=4,
    )
    # a.test: 2 queued + n0, n1 reach max_host_queue 4; b.test: b/0, b/1 reach max_pages 6.
    assert added == 4
    assert (await f.status()).dropped == {"max_host_queue": 1, "max_pages": 1}
    # In front, the entries not pushed yet count towards max_host_queue as well.
    added = await f.add(links(*urls(B, 5, "f")), [], front=True, max_pages=None, max_host_queue=3)
    assert added == 1  # b.test holds 2: one more fits
    claims = (await f.claim(20)).claims
    order = {o: [json.loads(c.entry)["u"] for c in claims if c.origin == o] for o in (A, B)}
    assert order == {
        A: [f"{A}/0", f"{A}/1", f"{A}/n0", f"{A}/n1"],
        B: [f"{B}/f0", f"{B}/0", f"{B}/1"],
    }


async def test_added_seeds_widen_the_scope_and_wake_workers(
    client: RedisClient, f: RedisFrontier
) -> None:
    await seed(f, urls(A, 1), [host(A)])
    before = (await f.claim(10)).scope_version

    async def add() -> None:
        added = await f.add(
            links(f"{B}/"), [host(B)], scope=[f"{B}/"], max_pages=None, max_host_queue=10**6
        )
        assert added == 1

    await woken(client, f, add)
    result = await f.claim(10)
    assert result.scope_version == before + 1
    assert [c.origin for c in result.claims] == [B]
    assert f"{B}/" in await f.seeds()
    # The same seed again widens nothing.
    await f.add([], [], scope=[f"{B}/"], max_pages=None, max_host_queue=10**6)
    assert (await f.claim(10)).scope_version == before + 1


# ---------------------------------------------------------------------------------------
# status


async def test_status_shows_pauses_and_limits(f: RedisFrontier) -> None:
    await seed(f, [*urls(A, 2), *urls(B, 2)], [host(A, per_host=4), host(B, rate=2.0)])
    await f.set_paused("b.test", True)
    await f.set_host_limits(A, per_host=7)
    status = await f.status()
    assert not status.paused
    assert not status.hosts[A].paused and status.hosts[B].paused
    assert status.hosts[A].per_host == 7 and status.hosts[B].rate == 2.0
    text = format_shared_status(status)
    b_line = next(line for line in text.splitlines() if B in line)
    a_line = next(line for line in text.splitlines() if A in line)
    assert "paused" in b_line and "paused" not in a_line
    assert "/7" in a_line
    await f.set_paused(None, True)
    text = format_shared_status(await f.status())
    assert "paused" in text.splitlines()[0]


async def test_control_keys_share_the_crawl_hash_tag(
    client: RedisClient, f: RedisFrontier, crawl_id: str
) -> None:
    await f.set_paused("a.test", True)
    await f.set_host_limits(A_TLS, rate=1.0)
    await seed(f, urls(A, 1), [host(A)])
    await f.add(links(f"{B}/"), [host(B)], scope=[f"{B}/"], max_pages=None, max_host_queue=9)
    await f.set_paused(None, True)
    keys = [key async for key in client.scan_iter(match="*")]
    mine = [key for key in keys if crawl_id in key]
    assert {f.key("control"), f.key("names")} <= set(mine)
    assert all(key.startswith(crawl_prefix(crawl_id)) for key in mine)
