"""Retry policy: which failures are retried, Retry-After parsing, jittered backoff."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random

from ._page import ErrorKind

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_ERRORS = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.RESET})
# Backoff of one URL's retries: full jitter over an exponential cap (AWS architecture blog).
RETRY_BASE = 0.5
RETRY_CAP = 30.0
# Adaptive per-host interval after 429/503/timeouts: doubles, bounded, halves when healthy.
BACKOFF_FLOOR = 0.25
BACKOFF_CAP = 60.0


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None if invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - current).total_seconds())


def retry_delay(attempt: int, rng: random.Random) -> float:
    """Full-jitter backoff before retry number `attempt` (0-based)."""
    return rng.uniform(0.0, min(RETRY_CAP, RETRY_BASE * math.pow(2.0, attempt)))


def grow_backoff(current: float, interval: float) -> float:
    """The host's next adaptive interval after a sign of overload."""
    return min(BACKOFF_CAP, max(current * 2.0, interval * 2.0, BACKOFF_FLOOR))


def decay_backoff(current: float, interval: float) -> float:
    """The host's next adaptive interval after a healthy response (0 = back to normal)."""
    halved = current / 2.0
    return 0.0 if halved <= max(interval, BACKOFF_FLOOR / 2.0) else halved
