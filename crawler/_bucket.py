"""A GCRA leaky bucket rate limiter for trio."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType

import trio
from trio import current_time
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    checkpoint,
    current_task,
    enable_ki_protection,
    reschedule,
    wait_task_rescheduled,
)

__all__ = ["LeakyBucket", "LeakyBucketStatistics"]

_INF = math.inf


@dataclass(frozen=True, slots=True)
class LeakyBucketStatistics:
    """A snapshot of a :class:`LeakyBucket`'s state."""

    rate: float
    burst: int
    tat: float
    waiting: int
    granted: int


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"rate must be a number, got {rate!r}")
    if not rate >= 0:  # also catches NaN
        raise ValueError(f"rate must be >= 0, got {rate!r}")
    if rate == _INF:
        raise ValueError(f"rate must be finite (use 0 for unlimited), got {rate!r}")
    return float(rate)


def _check_burst(burst: int) -> int:
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
    if burst < 1:
        raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
    return burst


def _bad_cost(cost: float, burst: int) -> Exception:
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return TypeError(f"cost must be a number, got {cost!r}")
    if not cost > 0:
        return ValueError(f"cost must be > 0, got {cost!r}")
    return ValueError(f"cost must be <= burst ({burst}), got {cost!r}")


class _Waiter:
    __slots__ = ("cost", "parked", "task")

    def __init__(self, task: Task, cost: float) -> None:
        self.task = task
        self.cost = cost
        self.parked = False

    def abort(self, _: RaiseCancelT) -> Abort:
        self.parked = False
        return Abort.SUCCEEDED


class LeakyBucket:
    """GCRA leaky bucket: ``rate`` requests per second, bursts of up to ``burst``.

    A request of cost ``c`` conforms at time ``now`` iff
    ``max(tat, now) + c/rate - now <= burst/rate``; it then sets
    ``tat = max(tat, now) + c/rate``. ``rate == 0`` means unlimited. Waiters
    are served strictly FIFO; only the head waiter sleeps, until its exact slot.
    The clock is :func:`trio.current_time`.
    """

    __slots__ = (
        "_burst",
        "_granted",
        "_head_scope",
        "_inv",
        "_not_before",
        "_queue",
        "_queued_cost",
        "_rate",
        "_tat",
    )

    def __init__(self, rate: float, burst: int = 1) -> None:
        self._rate = _check_rate(rate)
        self._inv = 1.0 / self._rate if self._rate else 0.0
        self._burst = _check_burst(burst)
        self._tat = -_INF
        self._not_before = -_INF
        self._granted = 0
        self._queue: OrderedDict[_Waiter, None] = OrderedDict()
        self._queued_cost = 0.0
        self._head_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return (
            f"<LeakyBucket rate={self._rate!r} burst={self._burst} "
            f"waiting={len(self._queue)} granted={self._granted}>"
        )

    # -- configuration -----------------------------------------------------

    @property
    def rate(self) -> float:
        """Requests per second (0 = unlimited). Settable; applies to waiters at once."""
        return self._rate

    @rate.setter
    @enable_ki_protection
    def rate(self, rate: float) -> None:
        new = _check_rate(rate)
        if new == self._rate:
            return
        tat = self._tat
        if tat != -_INF:
            # Keep the backlog (in requests) and drain it at the new rate.
            now = current_time()
            if tat > now:
                self._tat = now + (tat - now) * self._rate * (1.0 / new if new else 0.0)
        self._rate = new
        self._inv = 1.0 / new if new else 0.0
        self._retarget_head()

    @property
    def burst(self) -> int:
        """Maximum burst, in cost units. Settable; applies to waiters at once."""
        return self._burst

    @burst.setter
    @enable_ki_protection
    def burst(self, burst: int) -> None:
        self._burst = _check_burst(burst)
        self._retarget_head()

    # -- core ----------------------------------------------------------------

    def _conform_at(self, cost: float) -> float:
        # Earliest time a cost-`cost` request conforms, ignoring the queue.
        # A waiter whose cost exceeds a lowered burst conforms once the bucket is empty.
        slack = self._burst - cost
        t = self._tat - slack * self._inv if slack > 0 else self._tat
        nb = self._not_before
        return t if t >= nb else nb

    def _fifo_conform_at(self, cost: float, now: float) -> float:
        # Earliest time a newcomer conforms once every queued waiter has gone first.
        if not self._queue:
            return self._conform_at(cost)
        tat = self._tat
        tat = (tat if tat > now else now) + self._queued_cost * self._inv
        t = tat - (self._burst - cost) * self._inv
        nb = self._not_before
        return t if t >= nb else nb

    def _consume(self, cost: float, now: float) -> None:
        tat = self._tat
        self._tat = (tat if tat > now else now) + cost * self._inv
        self._granted += 1

    def _retarget_head(self) -> None:
        # Move the sleeping head's wake-up to its new exact slot (it re-checks on waking).
        scope = self._head_scope
        if scope is not None and self._queue:
            head = next(iter(self._queue))
            scope.deadline = self._conform_at(head.cost)

    @enable_ki_protection
    async def acquire(self, cost: float = 1) -> None:
        """Wait (FIFO) until a request of ``cost`` conforms, then consume it."""
        if not 0 < cost <= self._burst:
            raise _bad_cost(cost, self._burst)
        if not self._queue:
            # The checkpoint comes first, so a cancelled call has consumed nothing;
            # a conforming request is then granted without yielding again.
            await checkpoint()
            if not self._queue:
                now = current_time()
                tat = self._tat
                if tat - (self._burst - cost) * self._inv <= now and self._not_before <= now:
                    self._tat = (tat if tat > now else now) + cost * self._inv
                    self._granted += 1
                    return
        # Queue up; parking is the checkpoint (a cancelled caller leaves at once).
        await self._wait(cost)

    @enable_ki_protection
    async def _wait(self, cost: float) -> None:
        waiter = _Waiter(current_task(), cost)
        enqueued = current_time()
        queue = self._queue
        queue[waiter] = None
        self._queued_cost += cost
        try:
            while True:
                if next(iter(queue)) is not waiter:
                    # Not at the head: park with no deadline until the head leaves.
                    waiter.parked = True
                    await wait_task_rescheduled(waiter.abort)
                    continue
                now = current_time()
                deadline = self._conform_at(cost)
                if deadline <= now:
                    break
                with trio.CancelScope(deadline=deadline) as scope:
                    self._head_scope = scope
                    try:
                        waiter.parked = True
                        await wait_task_rescheduled(waiter.abort)
                    finally:
                        self._head_scope = None
        except BaseException:
            self._leave(waiter)
            raise
        self._leave(waiter)
        # A waiter that queued before its slot is accounted at the slot, not at its
        # (late by timer granularity) wake-up: no drift below the rate.
        self._consume(cost, max(deadline, enqueued))

    @enable_ki_protection
    def _leave(self, waiter: _Waiter) -> None:
        queue = self._queue
        was_head = next(iter(queue)) is waiter
        del queue[waiter]
        if queue:
            self._queued_cost -= waiter.cost
            if was_head:
                head = next(iter(queue))
                if head.parked:
                    head.parked = False
                    reschedule(head.task)
        else:
            self._queued_cost = 0.0

    @enable_ki_protection
    def try_acquire(self, cost: float = 1, *, slack: float = 0.0) -> float:
        """Consume ``cost`` and return 0.0 if it conforms now, else return the wait.

        Never overtakes queued waiters: with waiters queued, the wait is the one
        FIFO implies, and nothing is consumed unless every queued waiter would
        still conform at once.

        ``slack``: a caller that slept until the returned wait and woke up to this
        late (timers fire late by up to a millisecond) is accounted at its slot,
        not at its wake-up, so the long-run rate does not drift below ``rate``.
        Never accounted before its slot, nor more than ``slack`` before now, and an
        arrival long after its slot (an idle bucket) is accounted at once.
        """
        if not 0 < cost <= self._burst:
            raise _bad_cost(cost, self._burst)
        if not slack >= 0:
            raise ValueError(f"slack must be >= 0, got {slack!r}")
        now = current_time()
        at = self._fifo_conform_at(cost, now)
        if at <= now:
            # Late by at most `slack` past a slot: accounted at the slot. Otherwise
            # (an idle bucket, a long wait elsewhere) it is a fresh arrival: now.
            self._consume(cost, at if now - at <= slack else now)
            return 0.0
        return at - now

    def next_free(self) -> float:
        """Trio time at which a cost-1 request issued now would conform (FIFO included)."""
        now = current_time()
        at = self._fifo_conform_at(1.0, now)
        return at if at > now else now

    @enable_ki_protection
    def pause_until(self, deadline: float) -> None:
        """Let no request conform before ``deadline`` (trio time); never moves earlier.

        ``tat`` is pushed so that a cost-1 request conforms exactly at ``deadline``
        with the bucket then full (no burst right after a Retry-After); a floor
        keeps the pause exact for smaller costs and later rate or burst changes.
        """
        if math.isnan(deadline):
            raise ValueError(f"deadline must be a time, got {deadline!r}")
        if deadline > self._not_before:
            self._not_before = deadline
            tat = deadline + (self._burst - 1) * self._inv
            if tat > self._tat:
                self._tat = tat
            self._retarget_head()

    def statistics(self) -> LeakyBucketStatistics:
        """Return a :class:`LeakyBucketStatistics` snapshot."""
        return LeakyBucketStatistics(
            rate=self._rate,
            burst=self._burst,
            tat=self._tat,
            waiting=len(self._queue),
            granted=self._granted,
        )

    @enable_ki_protection
    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
