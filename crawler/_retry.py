"""Retry policy: which failures are retried, Retry-After parsing, jittered backoff."""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._page import ErrorKind, PageError
from ._urls import normalize_url

if TYPE_CHECKING:
    from ._config import CrawlConfig
    from ._fetch import Fetched

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_ERRORS = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.RESET})
# Backoff of one URL's retries: full jitter over an exponential cap (AWS architecture blog).
RETRY_BASE = 0.5
RETRY_CAP = 30.0
# Adaptive per-host interval after 429/503/timeouts: doubles, bounded, halves when healthy.
BACKOFF_FLOOR = 0.25
BACKOFF_CAP = 60.0
# float() of more digits than this is past any sane wait (and 400 digits overflow it).
_MAX_DELTA_DIGITS = 15


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None if invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii():
        # RFC 9110 allows ASCII only; str.isdigit() and int() accept other digits ("²").
        return None
    if text.isdigit():
        # A huge delta is "wait forever": max_retry_after turns it into an error record.
        return float(text) if len(text) <= _MAX_DELTA_DIGITS else math.inf
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = now or dt.datetime.now(dt.UTC)
    try:
        return max(0.0, (when - current).total_seconds())
    except OverflowError:  # pragma: no cover - both are bounded datetimes
        return None


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


class Action(enum.Enum):
    """What to do with one fetch's outcome."""

    DELIVER = "deliver"
    RETRY_NOW = "retry_now"
    """Retry as soon as the host's Retry-After pause allows."""
    RETRY_LATER = "retry_later"
    """Retry after a jittered backoff (retry_delay)."""
    REDIRECT = "redirect"
    RESEND = "resend"
    """Send again, under the rate limit, without counting an attempt: a reused
    keep-alive connection was lost before any response (once per request)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one fetch, and what it says about the host's health."""

    action: Action
    error: PageError | None = None
    """For DELIVER: the page's error."""
    pause: float | None = None
    """A Retry-After pause (seconds) the host must observe from now."""
    health: Literal["slow", "ok"] | None = None
    """"slow": a sign of overload (grow the backoff); "ok": a healthy answer (decay it)."""


def judge(fetched: Fetched, attempt: int, config: CrawlConfig, *, resent: bool = False) -> Verdict:
    """Retry-After, backoff, retry and redirect policy for one fetch (no side effects);
    the single-process engine and shared-crawl workers both apply it. `resent`: the
    request was sent again already after a lost keep-alive connection."""
    if fetched.stale and not resent:
        # A keep-alive race (the server closed the idle connection as the request
        # went out) says nothing of the URL: it costs a rate slot, not an attempt.
        return Verdict(Action.RESEND)
    status = fetched.status
    kind = fetched.error.kind if fetched.error is not None else None
    pause: float | None = None
    overloaded = False
    if status in (429, 503):
        pause = parse_retry_after(fetched.headers.get("retry-after"))
        if pause is not None:
            if pause > config.max_retry_after:
                too_long = PageError(
                    ErrorKind.RETRY_AFTER_TOO_LONG,
                    f"HTTP {status} asked to wait {pause:g} s, over max_retry_after="
                    f"{config.max_retry_after:g} s",
                )
                return Verdict(Action.DELIVER, error=too_long)
            if attempt < config.retries:
                return Verdict(Action.RETRY_NOW, pause=pause)
        else:
            overloaded = True
    health: Literal["slow", "ok"] | None = None
    if overloaded or kind in (ErrorKind.TIMEOUT, ErrorKind.CONNECT):
        health = "slow"
    elif status is not None:
        health = "ok"
    if (status in RETRY_STATUSES or kind in RETRY_ERRORS) and attempt < config.retries:
        return Verdict(Action.RETRY_LATER, pause=pause, health=health)
    if status in REDIRECT_STATUSES and fetched.error is None:
        return Verdict(Action.REDIRECT, pause=pause, health=health)
    error = fetched.error
    if error is None and status in RETRY_STATUSES:
        error = PageError(ErrorKind.HTTP, f"HTTP {status} after {attempt + 1} attempt(s)")
    return Verdict(Action.DELIVER, error=error, pause=pause, health=health)


def redirect_target(
    fetched: Fetched, url: str, chain: Collection[str], redirects: int, config: CrawlConfig
) -> tuple[str | None, PageError | None]:
    """Where a redirect from `url` leads: (canonical target, None) to follow it, or
    (None, why the chain ends here); (None, None) when there is no Location at all.
    `chain` holds the URLs before `url`, `redirects` how many hops led to it."""
    location = fetched.headers.get("location")
    if location is None:
        return None, None
    target = normalize_url(location, url, max_length=config.max_url_length)
    if target is None:
        return None, PageError(
            ErrorKind.BAD_REDIRECT, f"redirect to {location!r}: not an http(s) URL"
        )
    if target == url or target in chain:
        return None, PageError(ErrorKind.REDIRECT_LOOP, f"redirect loop back to {target}")
    if redirects >= config.max_redirects:
        return None, PageError(
            ErrorKind.TOO_MANY_REDIRECTS,
            f"more than max_redirects={config.max_redirects} redirects",
        )
    return target, None
