"""Bounded shields: cleanup that cancellation may not interrupt, for at most a while.

A commit or a close runs to its end when the crawl is cancelled (a half-done commit
point helps nobody), but a hung disk or a stdout pipe nobody reads must not keep
the process alive forever: every shield has a deadline, and work done in a thread
is abandoned when it passes (the thread runs on; its result is thrown away).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio
from trio.lowlevel import RunVar

__all__ = ["SHIELD_LIMIT", "bounded_shield", "hurry", "run_abandonable", "threads_running"]

T = TypeVar("T")

SHIELD_LIMIT = 10.0
"""Seconds a shielded commit or close may take; a healthy disk never comes close."""

HURRY_FLOOR = 0.25
"""Seconds a shield opened after `hurry`'s deadline still gets: a healthy commit or close
lands, a hung one costs little."""

_lock = threading.Lock()
_running = 0
_hurry: RunVar[float] = RunVar("bounded_shield_hurry", default=math.inf)
_active: RunVar[set[trio.CancelScope]] = RunVar("bounded_shield_active")


@contextmanager
def bounded_shield(limit: float | None = None) -> Iterator[trio.CancelScope]:
    """A scope shielded from outside cancellation that cancels itself after `limit`
    seconds (default SHIELD_LIMIT, read at each call); check `cancelled_caught`."""
    seconds = SHIELD_LIMIT if limit is None else limit
    active = _active_scopes()
    with trio.CancelScope(shield=True) as scope:
        now = trio.current_time()
        scope.deadline = min(now + seconds, max(_hurry.get(), now + HURRY_FLOOR))
        active.add(scope)
        try:
            yield scope
        finally:
            active.discard(scope)


def hurry(seconds: float) -> None:
    """Stop now: every bounded shield of this run open now ends within `seconds`; one
    opened later, by then or within HURRY_FLOOR seconds."""
    deadline = min(_hurry.get(), trio.current_time() + seconds)
    _hurry.set(deadline)
    for scope in _active_scopes():
        scope.deadline = min(scope.deadline, deadline)


def _active_scopes() -> set[trio.CancelScope]:
    try:
        return _active.get()
    except LookupError:
        active: set[trio.CancelScope] = set()
        _active.set(active)
        return active


async def run_abandonable(
    fn: Callable[..., T], *args: object, limiter: trio.CapacityLimiter | None = None
) -> T:
    """`fn(*args)` in a worker thread; on cancellation stop waiting for it at once.

    An abandoned thread keeps its limiter token until it ends, so later calls through
    the same limiter wait for it (and are bounded by their own shields)."""
    global _running
    # [started, given up before the thread started]
    status = [False, False]

    def counted() -> T:
        global _running
        with _lock:
            if status[1]:
                raise RuntimeError("abandoned before it started")  # pragma: no cover
            status[0] = True
        try:
            return fn(*args)
        finally:
            with _lock:
                _running -= 1

    with _lock:
        _running += 1
    try:
        return await trio.to_thread.run_sync(counted, limiter=limiter, abandon_on_cancel=True)
    except BaseException:
        with _lock:
            if not status[0] and not status[1]:
                status[1] = True
                _running -= 1
        raise


def threads_running() -> int:
    """Calls of `run_abandonable` whose thread has not ended (abandoned ones included)."""
    with _lock:
        return _running
