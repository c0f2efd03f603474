"""Tests for crawler._bucket.LeakyBucket (all in virtual time)."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import FrozenInstanceError

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler._bucket import LeakyBucket, LeakyBucketStatistics

Log = list[tuple[object, float]]


async def _acquire_at(bucket: LeakyBucket, at: float, cost: float, log: Log, key: object) -> None:
    await trio.sleep_until(at)
    await bucket.acquire(cost)
    log.append((key, trio.current_time()))


async def _hammer(bucket: LeakyBucket, until: float, log: list[float]) -> None:
    while True:
        await bucket.acquire()
        now = trio.current_time()
        if now >= until:
            return
        log.append(now)


def _max_in_window(times: list[float], weights: list[float], width: float) -> float:
    """Largest total weight of grants inside any closed window [t, t + width]."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    prefix = [0.0]
    for i in order:
        prefix.append(prefix[-1] + weights[i])
    best = 0.0
    for lo, t in enumerate(ts):
        hi = bisect.bisect_right(ts, t + width)
        best = max(best, prefix[hi] - prefix[lo])
    return best


def _reference(rate: float, burst: int, arrivals: list[tuple[float, float]]) -> list[float]:
    """Grant times of a FIFO GCRA, computed directly (arrivals sorted by time)."""
    tat = -math.inf
    prev = -math.inf
    out = []
    for at, cost in arrivals:
        start = max(at, prev)
        conform = tat - (burst - cost) / rate
        grant = max(start, conform)
        tat = max(tat, grant) + cost / rate
        prev = grant
        out.append(grant)
    return out


# -- 1. long-run rate ---------------------------------------------------------


# 10**5 sequential grants take ~3.5 s of CPU under the mock clock; the other cases use 2 * 10**4.
@pytest.mark.parametrize(
    ("rate", "burst", "n"), [(10.0, 1, 100_000), (3.0, 4, 20_000), (0.7, 2, 20_000)]
)
async def test_long_run_rate_is_exact(
    autojump_clock: trio.testing.MockClock, rate: float, burst: int, n: int
) -> None:
    bucket = LeakyBucket(rate, burst)
    start = trio.current_time()
    last = start
    for k in range(n):
        await bucket.acquire()
        last = trio.current_time()
        if k < burst:
            assert last == start
    # Grant k (0-based) happens at (k - burst + 1) / rate: the first `burst` are immediate.
    expected = (n - burst) / rate
    assert math.isclose(last - start, expected, rel_tol=1e-9, abs_tol=0)
    assert bucket.statistics().granted == n


async def test_long_run_rate_many_tasks(autojump_clock: trio.testing.MockClock) -> None:
    rate, burst = 50.0, 5
    bucket = LeakyBucket(rate, burst)
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(_hammer, bucket, 200.01, times)
    times.sort()
    # burst at t=0, then exactly one grant per 1/rate.
    assert times[:burst] == [0.0] * burst
    assert len(times) == burst + int(200.0 * rate)
    for k, t in enumerate(times[burst:], start=1):
        assert math.isclose(t, k / rate, rel_tol=1e-9)


# -- 2. at most burst + rate * W in any window ---------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1), (20.0, 1), (5.0, 3), (0.5, 7), (100.0, 10)])
async def test_window_bound(
    autojump_clock: trio.testing.MockClock, rate: float, burst: int
) -> None:
    bucket = LeakyBucket(rate, burst)
    times: list[float] = []
    duration = 60.0 / rate
    async with trio.open_nursery() as nursery:
        for _ in range(25):
            nursery.start_soon(_hammer, bucket, duration, times)
    assert len(times) > burst + 10
    for width in (0.0, 0.5 / rate, 1.0 / rate, 2.5 / rate, 1.0, 7.3 / rate, duration / 2):
        most = _max_in_window(times, [1.0] * len(times), width)
        assert most <= burst + rate * width + 1e-9
    # The bound is tight: the burst really is available, and the rate is reached.
    assert _max_in_window(times, [1.0] * len(times), 0.0) == burst


async def test_window_bound_with_idle_gaps_and_costs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate, burst = 4.0, 5
    bucket = LeakyBucket(rate, burst)
    log: Log = []
    arrivals = [(0.0, 1.0), (0.0, 2.0), (0.1, 2.0), (0.2, 5.0), (3.0, 1.0), (9.0, 3.0)]
    arrivals += [(9.0 + 0.01 * i, 0.5) for i in range(1, 30)]
    async with trio.open_nursery() as nursery:
        for i, (at, cost) in enumerate(arrivals):
            nursery.start_soon(_acquire_at, bucket, at + 1e-6 * i, cost, log, i)
    by_key = dict(log)
    times = [by_key[i] for i in range(len(arrivals))]
    costs = [c for _, c in arrivals]
    for width in (0.0, 0.25, 0.5, 1.0, 2.0, 5.0):
        assert _max_in_window(times, costs, width) <= burst + rate * width + 1e-9


# -- 3. FIFO ------------------------------------------------------------------------


async def test_fifo_order_of_waiters(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(2.0, 1)
    log: Log = []
    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(_acquire_at, bucket, 0.001 * i, 1.0, log, i)
    assert [k for k, _ in log] == list(range(30))
    assert [t for _, t in log] == [k / 2.0 for k in range(30)]


async def test_try_acquire_does_not_overtake(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 3)
    await bucket.acquire(2)  # t=0, tat=2
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquire_at, bucket, 0.0, 3.0, log, "big")  # needs an empty bucket: t=2
        await trio.sleep(0.5)
        assert bucket.statistics().waiting == 1
        # Alone, a cost-1 request would fit right now (tat - (burst-1)/rate = 0 <= 0.5) ...
        before = bucket.statistics()
        wait = bucket.try_acquire(1)
        # ... but FIFO puts it after "big": tat 2 + 3 = 5, conforms at 5 - 2 = 3.
        assert wait == 2.5
        assert bucket.next_free() == 3.0
        assert bucket.statistics() == before  # nothing consumed
        nursery.start_soon(_acquire_at, bucket, 0.5, 1.0, log, "small")
    assert log == [("big", 2.0), ("small", 3.0)]


async def test_try_acquire_succeeds_when_free(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(2.0, 2)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == 0.5
    assert bucket.statistics().granted == 2
    await trio.sleep(0.5)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire(2) == 1.0


async def test_large_cost_not_starved_by_small_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate, burst = 10.0, 5
    bucket = LeakyBucket(rate, burst)
    for _ in range(5):
        await bucket.acquire()  # bucket full at t=0, tat = 0.5
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquire_at, bucket, 0.01, 5.0, log, "big")
        for i in range(100):  # a small request every 10 ms; from t=0.1 each would fit alone
            nursery.start_soon(_acquire_at, bucket, 0.02 + 0.01 * i, 1.0, log, i)
    # "big" needs the whole bucket: granted when it drains at tat = 0.5, before every small one.
    assert log[0] == ("big", 0.5)
    assert [k for k, _ in log[1:]] == list(range(100))
    expected = _reference(
        rate, burst, [(0.0, 1.0)] * 5 + [(0.01, 5.0)] + [(0.02 + 0.01 * i, 1.0) for i in range(100)]
    )
    assert [t for _, t in log] == pytest.approx(expected[5:], abs=1e-9)


# -- 4. cancellation ------------------------------------------------------------


async def test_cancelled_head_gives_its_slot_to_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()  # t=0, next slot t=1
    log: Log = []
    cancel_head = trio.CancelScope()

    async def head() -> None:
        with cancel_head:
            await _acquire_at(bucket, 0.1, 1.0, log, "head")
        log.append(("head cancelled", trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(head)
        nursery.start_soon(_acquire_at, bucket, 0.2, 1.0, log, "second")
        nursery.start_soon(_acquire_at, bucket, 0.3, 1.0, log, "third")
        await trio.sleep(0.5)
        before = bucket.statistics()
        assert (before.waiting, before.tat) == (3, 1.0)
        cancel_head.cancel()
        await trio.testing.wait_all_tasks_blocked()
        after = bucket.statistics()
        # The cancelled waiter consumed nothing.
        assert (after.waiting, after.tat, after.granted) == (2, 1.0, 1)
    # "second" gets exactly the slot the cancelled head would have had.
    assert log == [("head cancelled", 0.5), ("second", 1.0), ("third", 2.0)]
    assert bucket.statistics().granted == 3


async def test_cancelled_middle_waiter(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()
    log: Log = []

    async def timed_out() -> None:
        await trio.sleep(0.2)
        with trio.move_on_after(1.3) as cs:  # would be granted at 2, gives up at 1.5
            await bucket.acquire()
        assert cs.cancelled_caught
        log.append(("gave up", trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquire_at, bucket, 0.1, 1.0, log, "a")
        nursery.start_soon(timed_out)
        nursery.start_soon(_acquire_at, bucket, 0.3, 1.0, log, "c")
    assert log == [("a", 1.0), ("gave up", 1.5), ("c", 2.0)]
    assert bucket.statistics().waiting == 0


async def test_already_cancelled_acquire_consumes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0, 1)
    with trio.CancelScope() as cs:
        cs.cancel()
        await bucket.acquire()  # would conform, but is cancelled first
    assert cs.cancelled_caught
    assert bucket.statistics().granted == 0
    assert bucket.try_acquire() == 0.0


async def test_cancelled_sole_waiter_leaves_clean_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()
    with trio.move_on_after(0.5):
        await bucket.acquire(1)
    stats = bucket.statistics()
    assert (stats.waiting, stats.granted, stats.tat) == (0, 1, 1.0)
    await bucket.acquire()
    assert trio.current_time() == 1.0


# -- 5. no polling --------------------------------------------------------------


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: Counter[trio.lowlevel.Task] = Counter()
        self.times: dict[trio.lowlevel.Task, list[float]] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] += 1
        self.times.setdefault(task, []).append(trio.current_time())


async def test_waiters_do_not_poll(autojump_clock: trio.testing.MockClock) -> None:
    n = 20
    bucket = LeakyBucket(0.01, 1)  # one grant every 100 s: long waits
    counter = _StepCounter()
    tasks: dict[int, trio.lowlevel.Task] = {}
    grants: dict[int, float] = {}

    async def waiter(i: int) -> None:
        tasks[i] = trio.lowlevel.current_task()
        await trio.sleep_until(0.001 * i)
        await bucket.acquire()
        grants[i] = trio.current_time()

    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(waiter, i)
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert grants == {i: 100.0 * i for i in range(n)}
    # Task 0: start, wake from its arrival sleep, resume after the fast path's
    # checkpoint. Task 1 finds no queue: start, arrival, resume after the
    # checkpoint (then it parks as head), its exact slot. Others queue at once:
    # start, arrival, become head, wake at the exact slot. However long the wait
    # (up to 1900 s here), nobody wakes up in between.
    assert counter.times[tasks[0]] == [0.0, 0.0, 0.0]
    assert counter.times[tasks[1]] == [0.0, 0.001, 0.001, 100.0]
    for i in range(2, n):
        assert counter.steps[tasks[i]] == 4, i
        start, arrival, head, slot = counter.times[tasks[i]]
        assert (start, arrival, head, slot) == (0.0, 0.001 * i, 100.0 * (i - 1), 100.0 * i)


async def test_rate_change_wakes_head_only_once(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()
    counter = _StepCounter()
    grants: list[float] = []
    holder: list[trio.lowlevel.Task] = []

    async def head() -> None:
        holder.append(trio.lowlevel.current_task())
        await bucket.acquire()
        grants.append(trio.current_time())

    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            await trio.sleep(0.2)
            bucket.rate = 0.5  # backlog 0.8 requests -> slot at 0.2 + 1.6
            await trio.sleep(0.3)
            bucket.rate = 0.25  # backlog 0.65 requests -> slot at 0.5 + 2.6
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert grants == [pytest.approx(3.1, abs=1e-12)]
    # Rate changes move the head's deadline without waking it: start, resume after
    # the checkpoint, then the one wake-up at its final slot.
    assert counter.times[holder[0]] == [0.0, 0.0, pytest.approx(3.1, abs=1e-12)]


# -- 6. checkpoints -------------------------------------------------------------


async def test_every_acquire_is_a_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    for bucket in (LeakyBucket(0), LeakyBucket(1000.0, 5), LeakyBucket(1.0, 3)):
        with trio.testing.assert_checkpoints():
            await bucket.acquire()  # uncontended fast path
        with trio.testing.assert_checkpoints():
            async with bucket:
                pass
    assert trio.current_time() == 0.0
    bucket = LeakyBucket(1.0)
    with trio.testing.assert_checkpoints():
        await bucket.acquire()
    with trio.testing.assert_checkpoints():
        await bucket.acquire()  # waits
    assert trio.current_time() == 1.0


async def test_fast_path_lets_others_run(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(0)
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(3):
            await bucket.acquire()
        assert ran.is_set()


async def test_try_acquire_and_peeks_are_not_checkpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0)
    with trio.testing.assert_no_checkpoints():
        assert bucket.try_acquire() == 0.0
        assert bucket.try_acquire() == 1.0
        assert bucket.next_free() == 1.0
        bucket.statistics()


# -- 7. trio's clock --------------------------------------------------------------


async def test_uses_trio_clock(mock_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == 1.0
    mock_clock.jump(0.25)
    assert bucket.try_acquire() == 0.75
    assert bucket.next_free() == 1.0
    mock_clock.jump(0.75)
    assert bucket.try_acquire() == 0.0
    assert bucket.statistics().tat == 2.0


# -- 8. runtime changes -----------------------------------------------------------


async def _waiters_after_change(
    bucket: LeakyBucket, change_after: float, change: dict[str, float], n: int
) -> list[float]:
    """Queue n cost-1 waiters (10 ms apart), then apply `change` at +change_after."""
    log: Log = []
    base = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(_acquire_at, bucket, base + 0.01 * (i + 1), 1.0, log, i)
        await trio.sleep_until(base + change_after)
        for name, value in change.items():
            setattr(bucket, name, value)
    assert [k for k, _ in log] == list(range(n))
    return [t for _, t in log]


async def test_raise_rate_while_waiting(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0)
    await bucket.acquire()  # tat = 1
    times = await _waiters_after_change(bucket, 0.5, {"rate": 10.0}, 3)
    # 0.5 requests of backlog drain at 10/s: 0.55, then every 0.1 s.
    assert times == pytest.approx([0.55, 0.65, 0.75], abs=1e-12)


async def test_lower_rate_while_waiting(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0)
    await bucket.acquire()
    times = await _waiters_after_change(bucket, 0.5, {"rate": 0.5}, 3)
    assert times == pytest.approx([1.5, 3.5, 5.5], abs=1e-12)


async def test_rate_to_unlimited_releases_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0)
    await bucket.acquire()
    times = await _waiters_after_change(bucket, 0.5, {"rate": 0}, 5)
    assert times == [0.5] * 5
    bucket.rate = 2.0
    await bucket.acquire()
    await bucket.acquire()
    assert trio.current_time() == 1.0


async def test_raise_and_lower_burst_while_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()  # tat = 1
    times = await _waiters_after_change(bucket, 0.25, {"burst": 3}, 4)
    # burst 3: two more fit at once (tat 1 -> 3), the rest one per second.
    assert times == [0.25, 0.25, 1.0, 2.0]

    bucket = LeakyBucket(1.0, 3)
    for _ in range(3):
        await bucket.acquire()  # tat = start + 3 after the burst
    start = trio.current_time()
    assert start == 2.0
    times = await _waiters_after_change(bucket, 0.5, {"burst": 1}, 2)
    # Slot start + 1 under burst 3; under burst 1 the bucket must be empty (t = tat).
    assert times == [start + 3.0, start + 4.0]


async def test_rate_and_burst_validation_at_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = LeakyBucket(1.0, 2)
    with pytest.raises(ValueError, match="rate must be >= 0, got -1"):
        bucket.rate = -1
    with pytest.raises(ValueError, match="burst must be an integer >= 1, got 0"):
        bucket.burst = 0
    assert (bucket.rate, bucket.burst) == (1.0, 2)


async def test_lowered_burst_below_waiter_cost(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 3)
    await bucket.acquire(3)  # tat = 3
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquire_at, bucket, 0.0, 3.0, log, "big")  # slot t=3
        await trio.sleep(1)
        bucket.burst = 1
    # A waiter costlier than the new burst is served once the bucket is empty.
    assert log == [("big", 3.0)]


# -- pause_until / next_free / statistics --------------------------------------------


async def test_pause_until(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 5)
    bucket.pause_until(5.0)
    bucket.pause_until(3.0)  # never moves earlier
    assert bucket.next_free() == 5.0
    assert bucket.try_acquire(0.5) == 5.0
    await bucket.acquire()
    assert trio.current_time() == 5.0
    assert bucket.statistics().tat == 10.0  # full: no burst right after a pause ...
    for expected in (6.0, 7.0, 8.0, 9.0):
        await bucket.acquire()
        assert trio.current_time() == expected  # ... only the rate
    await trio.sleep(5.0)
    for _ in range(5):  # the burst is back once the bucket has drained
        await bucket.acquire()
    assert trio.current_time() == 14.0


async def test_pause_is_a_floor_for_every_cost(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(2.0, 4)
    bucket.pause_until(3.0)
    bucket.burst = 8  # more room in the bucket does not end the pause early
    assert bucket.try_acquire(0.25) == 3.0
    bucket.rate = 100.0
    assert bucket.next_free() == 3.0
    await bucket.acquire(0.25)
    assert trio.current_time() == 3.0


async def test_pause_while_head_waits(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(1.0, 1)
    await bucket.acquire()
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquire_at, bucket, 0.5, 1.0, log, "a")
        nursery.start_soon(_acquire_at, bucket, 0.6, 1.0, log, "b")
        await trio.sleep_until(0.7)
        bucket.pause_until(4.0)
        bucket.burst = 10  # a bigger burst does not shorten a pause
    assert log == [("a", 4.0), ("b", 4.0)]


async def test_pause_with_unlimited_rate(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(0)
    bucket.pause_until(2.0)
    assert bucket.try_acquire() == 2.0
    await bucket.acquire()
    assert trio.current_time() == 2.0


async def test_next_free(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(4.0, 2)
    assert bucket.next_free() == 0.0
    await bucket.acquire()
    assert bucket.next_free() == 0.0
    await bucket.acquire()
    assert bucket.next_free() == 0.25
    await trio.sleep(1.0)
    assert bucket.next_free() == 1.0


async def test_statistics(autojump_clock: trio.testing.MockClock) -> None:
    bucket = LeakyBucket(2.0, 3)
    stats = bucket.statistics()
    assert isinstance(stats, LeakyBucketStatistics)
    assert (stats.rate, stats.burst, stats.tat, stats.waiting, stats.granted) == (
        2.0,
        3,
        -math.inf,
        0,
        0,
    )
    with pytest.raises(FrozenInstanceError):
        stats.granted = 5  # type: ignore[misc]
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(bucket.acquire)
        await trio.sleep(0.1)
        stats = bucket.statistics()
        assert (stats.waiting, stats.granted, stats.tat) == (2, 3, 1.5)
    assert bucket.statistics() == LeakyBucketStatistics(2.0, 3, 2.5, 0, 5)
    assert "rate=2.0" in repr(bucket)


# -- 9. bad arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (-1, 1, "rate must be >= 0, got -1"),
        (math.nan, 1, "rate must be >= 0, got nan"),
        (math.inf, 1, "rate must be finite"),
        (-math.inf, 1, "rate must be >= 0, got -inf"),
        (1.0, 0, "burst must be an integer >= 1, got 0"),
        (1.0, -3, "burst must be an integer >= 1, got -3"),
        (1.0, 1.5, "burst must be an integer >= 1, got 1.5"),
        (1.0, 0.5, "burst must be an integer >= 1, got 0.5"),
        (1.0, True, "burst must be an integer >= 1, got True"),
    ],
)
def test_bad_constructor_arguments(rate: float, burst: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeakyBucket(rate, burst)


def test_bad_rate_type() -> None:
    with pytest.raises(TypeError, match="rate must be a number"):
        LeakyBucket("1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        (0, "cost must be > 0, got 0"),
        (-1, "cost must be > 0, got -1"),
        (math.nan, "cost must be > 0, got nan"),
        (3, r"cost must be <= burst \(2\), got 3"),
        (math.inf, r"cost must be <= burst \(2\), got inf"),
    ],
)
async def test_bad_cost(autojump_clock: trio.testing.MockClock, cost: float, message: str) -> None:
    bucket = LeakyBucket(1.0, 2)
    with pytest.raises(ValueError, match=message):
        await bucket.acquire(cost)
    with pytest.raises(ValueError, match=message):
        bucket.try_acquire(cost)
    assert bucket.statistics().granted == 0


async def test_bad_pause(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match="deadline"):
        LeakyBucket(1.0).pause_until(math.nan)


# -- property test ---------------------------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(min_value=0.5, max_value=50.0),
    burst=st.integers(min_value=1, max_value=6),
    pattern=st.lists(
        st.tuples(
            st.floats(min_value=1e-3, max_value=2.0),  # inter-arrival time
            st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.0]),  # cost (clipped to burst)
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_random_arrivals_property(
    rate: float, burst: int, pattern: list[tuple[float, float]]
) -> None:
    arrivals: list[tuple[float, float]] = []
    t = 0.0
    for gap, cost in pattern:
        t += gap
        arrivals.append((t, min(cost, float(burst))))

    async def main() -> list[float]:
        bucket = LeakyBucket(rate, burst)
        log: Log = []
        async with trio.open_nursery() as nursery:
            for i, (at, cost) in enumerate(arrivals):
                nursery.start_soon(_acquire_at, bucket, at, cost, log, i)
        assert [k for k, _ in log] == list(range(len(arrivals)))  # FIFO
        return [t for _, t in log]

    times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    costs = [c for _, c in arrivals]
    # Exactly the FIFO GCRA schedule: nobody waits longer than necessary.
    assert times == pytest.approx(_reference(rate, burst, arrivals), rel=1e-12, abs=1e-9)
    for i, (at, _) in enumerate(arrivals):
        assert times[i] >= at
    for width in (0.0, 0.3 / rate, 1.0 / rate, 2.0 / rate, 1.0, 5.0):
        assert _max_in_window(times, costs, width) <= burst + rate * width + 1e-9


async def test_try_acquire_slack_absorbs_late_wakeups(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A dispatcher that sleeps until its slot and wakes 1 ms late each time keeps the
    # configured rate with slack, and drifts below it without.
    for slack, expected_last in ((0.002, 99 * 0.05), (0.0, 99 * 0.051)):
        bucket = LeakyBucket(20.0)
        start = trio.current_time()
        grants: list[float] = []
        while len(grants) < 100:
            wait = bucket.try_acquire(slack=slack)
            if wait == 0.0:
                grants.append(trio.current_time() - start)
            else:
                await trio.sleep(wait + 0.001)  # the timer fires late
        assert grants[-1] - grants[0] == pytest.approx(expected_last, abs=0.0015)
    # Slack never accounts a request before its slot: right after a grant, nothing else.
    bucket = LeakyBucket(20.0)
    assert bucket.try_acquire(slack=10.0) == 0.0
    assert bucket.try_acquire(slack=10.0) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="slack"):
        bucket.try_acquire(slack=-1)
