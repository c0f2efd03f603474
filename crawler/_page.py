"""What a crawl hands back: pages, their errors, and statistics."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx


class ErrorKind(enum.StrEnum):
    """Why a URL produced no usable response."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    RESET = "reset"
    PROTOCOL = "protocol"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_LOOP = "redirect_loop"
    BAD_REDIRECT = "bad_redirect"
    ROBOTS_UNAVAILABLE = "robots_unavailable"
    ROBOTS_DISALLOWED = "robots_disallowed"
    RETRY_AFTER_TOO_LONG = "retry_after_too_long"
    HTTP = "http"
    DECODING = "decoding"
    BLOCKED = "blocked"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class PageError:
    """A typed failure: `kind` is stable and machine-readable, `message` is for people."""

    kind: ErrorKind
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": str(self.kind), "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One crawled URL: a response, or an error record when there was none."""

    url: str
    final_url: str
    status: int | None
    depth: int
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    content_type: str | None = None
    title: str | None = None
    links: tuple[str, ...] = ()
    body: bytes = b""
    elapsed: float = 0.0
    fetched_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    error: PageError | None = None
    # Every HTTP exchange behind this record (robots.txt fetched for it, retries,
    # redirect hops, the final response), kept only with CrawlConfig.keep_exchanges.
    exchanges: tuple[Exchange, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """Raw bytes of one HTTP exchange, for archiving (WARC)."""

    method: str
    url: str
    request_headers: tuple[tuple[bytes, bytes], ...]
    http_version: str
    status: int
    reason: str
    response_headers: tuple[tuple[bytes, bytes], ...]
    raw_body: bytes
    truncated: bool
    started_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatistics:
    """Per-origin counters, as of one snapshot."""

    origin: str
    queued: int
    in_flight: int
    done: int
    errors: int
    bytes: int
    rate: float
    """Effective requests per second now (0.0 = unlimited)."""
    paused_until: float | None
    robots: str
    disallowed: int
    backoff: float
    """Adaptive interval (seconds) after signs of overload; 0 when healthy."""
    paused: bool
    per_host: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """A consistent snapshot of a crawl."""

    pages: int
    errors: int
    bytes: int
    elapsed: float
    seen: int
    queued: int
    in_flight: int
    disallowed: int
    """URLs not fetched because robots.txt disallows them."""
    redirects: int
    """Redirect hops followed (their pages are recorded under the chain's first URL)."""
    concurrency: int
    paused: bool
    dropped: Mapping[str, int]
    errors_by_kind: Mapping[str, int]
    hosts: Mapping[str, HostStatistics]
    stopped: str | None = None
    """Why the crawl stopped early: "max_time", "stop" (graceful), "stop_now"; None if
    it ran to its end (or is still running)."""

    @property
    def done(self) -> int:
        """Pages without an error."""
        return self.pages - self.errors

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.elapsed if self.elapsed > 0 else 0.0
