"""Bounded shields: cleanup that cancellation may not interrupt, for at most a while.

A commit or a close runs to its end when the crawl is cancelled (a half-done commit
point helps nobody), but a hung disk or a stdout pipe nobody reads must not keep
the process alive forever: every shield has a deadline, and work done in a thread
is abandoned when it passes (the thread runs on; its result is thrown away).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import outcome
import trio
from trio.lowlevel import RunVar

__all__ = [
    "SHIELD_LIMIT",
    "Abandoned",
    "bounded_shield",
    "hurry",
    "run_abandonable",
    "run_bounded",
    "run_committed",
    "threads_running",
]

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


class Abandoned(Exception):
    """Work in a thread was given up on: past its bound after a cancellation."""


async def run_bounded(
    fn: Callable[..., T],
    *args: object,
    limiter: trio.CapacityLimiter | None = None,
    limit: float | None = None,
) -> T:
    """`fn(*args)` in a worker thread, waited for however long it takes unless cancelled.

    Once cancelled, a call whose thread has started is still waited for, shielded, for
    at most `limit` seconds (default SHIELD_LIMIT; less after `hurry`): its result is
    returned if it ends in time (a commit or a write that ran counts), else `Abandoned`
    is raised and the thread runs on, its result thrown away. An abandoned thread keeps
    its limiter token until it ends."""
    global _running
    started = threading.Event()
    ended = threading.Event()
    outcome: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        global _running
        with _lock:
            _running += 1
        started.set()
        try:
            outcome.append(fn(*args))
        except BaseException as exc:  # handed back to the caller below
            error.append(exc)
        finally:
            ended.set()
            with _lock:
                _running -= 1

    try:
        await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
    except trio.Cancelled:
        if not started.is_set() or limit == 0:
            raise  # never ran, or not to be waited for
        with bounded_shield(limit):
            while not ended.is_set():  # noqa: ASYNC110 - a thread, polled only while stopping
                await trio.sleep(0.01)
        if not ended.is_set():
            raise Abandoned from None
    if error:
        raise error[0]
    return outcome[0]


async def run_abandonable(
    fn: Callable[..., T], *args: object, limiter: trio.CapacityLimiter | None = None
) -> T:
    """`fn(*args)` in a worker thread, given up on at once when cancelled (for a close
    inside a bounded shield: its deadline is the bound)."""
    return await run_bounded(fn, *args, limiter=limiter, limit=0)


async def run_committed(
    fn: Callable[..., T],
    *args: object,
    limiter: trio.CapacityLimiter | None = None,
    limit: float | None = None,
) -> T:
    """`fn(*args)` in a worker thread that starts whether or not the caller is cancelled
    meanwhile: a commit point, whose work a cancellation just before it starts must not
    lose. Waited for however long it takes (a big commit is no hung disk); once the
    caller is cancelled, for at most `limit` more seconds (default SHIELD_LIMIT; less
    after `hurry`), then `Abandoned` is raised and the thread runs on, its result thrown
    away. An abandoned thread keeps its limiter token until it ends."""
    global _running
    borrower = object()
    if limiter is not None:
        with bounded_shield(limit):
            await limiter.acquire_on_behalf_of(borrower)
        if borrower not in limiter.statistics().borrowers:
            raise Abandoned  # the bound passed while another call held the limiter
    token = trio.lowlevel.current_trio_token()
    ended = trio.Event()
    result: list[outcome.Outcome[T]] = []

    def finish() -> None:
        ended.set()
        if limiter is not None:
            limiter.release_on_behalf_of(borrower)

    def deliver(value: outcome.Outcome[T]) -> None:
        global _running
        result.append(value)
        with _lock:
            _running -= 1
        with contextlib.suppress(trio.RunFinishedError):  # abandoned, and the run is over
            token.run_sync_soon(finish)

    with _lock:
        _running += 1
    trio.lowlevel.start_thread_soon(functools.partial(fn, *args), deliver)
    try:
        await ended.wait()
    except trio.Cancelled:
        with bounded_shield(limit):
            await ended.wait()
        if not ended.is_set():
            raise Abandoned from None
    return result[0].unwrap()


def threads_running() -> int:
    """Calls of `run_bounded` whose thread has not ended (abandoned ones included)."""
    with _lock:
        return _running
