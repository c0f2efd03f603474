"""The frontier: admission (the rules of `_admission`, dedup, queue bounds) and per-origin
queues."""

from __future__ import annotations

import builtins
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

from ._admission import Admission
from ._bucket import LeakyBucket
from ._config import CrawlConfig, HostLimits
from ._page import Exchange, PageError
from ._retry import decay_backoff, grow_backoff
from ._robots import Robots, RobotsStatus
from ._urls import host_of, normalize_url, origin_of


@dataclass(slots=True, eq=False)
class Request:
    """One URL on its way through the crawl (a redirect hop or retry is a new Request)."""

    url: str
    depth: int
    origin: str
    first_url: str
    redirects: int = 0
    attempt: int = 0
    chain: tuple[str, ...] = ()
    exchanges: list[Exchange] = field(default_factory=list)
    error: PageError | None = None
    """Why a redirect chain ended here, when it did not end in a page."""
    redirect_target: str | None = None
    sitemap: bool = False
    seq: int | None = None
    """The row of `first_url` in a durable state's database."""
    resent: bool = False
    """Sent again once after a lost keep-alive connection (see Action.RESEND)."""
    handle: object = None
    """The backend's own record of the request (a shared crawl's lease)."""


@dataclass(slots=True, eq=False)
class Host:
    """Politeness state and queue of one origin (scheme, host, port)."""

    origin: str
    name: str
    rate: float
    """Configured requests per second (0 = unlimited)."""
    burst: int
    limiter: trio.CapacityLimiter
    bucket: LeakyBucket
    queue: deque[Request] = field(default_factory=deque)
    staged: int = 0
    """Requests taken off the queue and waiting for their slots."""
    waiting: int = 0
    """Requests waiting out a retry delay."""
    in_flight: int = 0
    done: int = 0
    errors: int = 0
    bytes: int = 0
    disallowed: int = 0
    running: bool = False
    paused: bool = False
    robots_delay: float = 0.0
    """Interval from robots.txt Crawl-delay / Request-rate (0 = none)."""
    backoff: float = 0.0
    """Adaptive interval after 429/503/timeouts; decays on healthy responses."""
    backoff_at: float = -math.inf
    """When the backoff last grew: requests started before then don't grow it again."""
    robots: Robots = field(default_factory=Robots)
    sitemaps_seeded: bool = False
    paused_until: float = 0.0
    """Trio time before which Retry-After forbids requests."""
    changed: trio.Event = field(default_factory=trio.Event)
    # -- with a durable state (CrawlConfig.state) only --------------------------------
    backlog: int = 0
    """Queued URLs in the state database not loaded into `queue` yet."""
    cursor: int | None = None
    """Sequence number of the last URL loaded from the database (None: none yet)."""
    refilling: bool = False
    loaded: set[str] = field(default_factory=set)
    """URLs (as stored) of this host's requests in memory: queued, in flight, or
    delivered and not committed yet."""
    robots_source: tuple[int | None, builtins.bytes] | None = None
    """(status, body) robots.txt was parsed from, to be stored."""
    on_change: Callable[[Host], None] | None = None
    """Called when politeness state worth storing changes (pause, backoff, robots)."""

    def effective_interval(self) -> float:
        return max(self._site_interval(), self.backoff)

    def apply_limits(self) -> None:
        """Push the effective interval into the bucket and wake the host's dispatcher."""
        base = 1.0 / self.rate if self.rate > 0 else 0.0
        interval = self.effective_interval()
        # Burst is the operator's allowance at the configured rate; a slower pace
        # asked for by the site (robots, Retry-After, backoff) gets no burst.
        self.bucket.burst = self.burst if interval <= base else 1
        self.bucket.rate = 1.0 / interval if interval > 0 else 0.0
        if interval > base:
            # The slower pace counts from now: the requests already answered (robots.txt
            # among them) were sent at the old pace and may have reached the server late.
            self.bucket.pause_until(trio.current_time() + interval)
        self.wake()

    def slow_down(self, started: float, now: float) -> None:
        """A sign of overload: lengthen the interval, once per round of requests."""
        if started >= self.backoff_at:
            self.backoff = grow_backoff(self.backoff, self._site_interval())
            self.backoff_at = now
            self.apply_limits()
            self.notify()

    def recover(self) -> None:
        """A healthy response: let the interval decay back towards the configured one."""
        if self.backoff > 0:
            self.backoff = decay_backoff(self.backoff, self._site_interval())
            self.apply_limits()
            self.notify()

    def _site_interval(self) -> float:
        return max(1.0 / self.rate if self.rate > 0 else 0.0, self.robots_delay)

    def pause_until(self, deadline: float) -> None:
        """Send nothing to this host before `deadline` (Retry-After)."""
        if deadline > self.paused_until:
            self.paused_until = deadline
            self.bucket.pause_until(deadline)
            self.wake()
            self.notify()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


class SeenCache:
    """A bounded set of URLs: it remembers at least the last `size` added, at most 2 * size.

    The seen-set of a crawl with a durable state lives in its database; this cache in
    front of it keeps most duplicate links (a site's navigation, links back to pages
    seen moments ago) from ever reaching it.
    """

    __slots__ = ("_old", "_size", "_young")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._young: set[str] = set()
        self._old: set[str] = set()

    def __contains__(self, url: object) -> bool:
        return url in self._young or url in self._old

    def add(self, url: str) -> None:
        young = self._young
        young.add(url)
        if len(young) >= self._size:
            self._old = young
            self._young = set()

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class Frontier:
    """Decides which URLs enter the crawl and keeps them in per-origin queues."""

    def __init__(self, config: CrawlConfig, *, seen_cache: int | None = None) -> None:
        """`seen_cache`: the crawl has a durable state, which is the real seen-set and
        counts `max_pages`; keep only a `SeenCache` of that many URLs in memory."""
        self.config = config
        self.admission = Admission(config)
        self.scope = self.admission.scope
        self.durable = seen_cache is not None
        self.seen: set[str] | SeenCache = set() if seen_cache is None else SeenCache(seen_cache)
        self.hosts: dict[str, Host] = {}
        self.dropped: Counter[str] = Counter()
        self.admitted = 0
        # Limits set while the crawl runs, keyed like CrawlConfig.hosts.
        self.overrides: dict[str, HostLimits] = {}
        self.on_change: Callable[[Host], None] | None = None
        """Given to every Host as its `on_change` hook."""

    def admit(
        self, url: str, depth: int, *, count: bool = True, normalized: bool = False
    ) -> str | None:
        """Return the canonical URL if it may be crawled and was not seen; mark it seen.

        `count=False` admits a redirect hop, which is not a page of its own. With a
        durable state, "not seen" means "not in the cache": the database has the last
        word (and counts max_pages). `normalized`: `url` comes from parse_html or a
        sitemap, canonical already (the hot path), so it is not normalised again."""
        config = self.config
        admission = self.admission
        if normalized and "@" not in url:
            canonical: str | None = url  # the hot path: a link from parse_html
        else:
            canonical = admission.canonical(url, normalized=normalized)
        if canonical is None:
            self.dropped["invalid"] += 1
            return None
        if canonical in self.seen:
            return None
        refusal = admission.refusal(canonical, depth)
        if refusal is not None:
            self.dropped[refusal] += 1
            return None
        if not self.durable:
            host = self.hosts.get(origin_of(canonical))
            if host is not None and len(host.queue) >= config.max_host_queue:
                self.dropped["max_host_queue"] += 1
                return None
        if (
            count
            and config.max_pages is not None
            and not self.durable
            and self.admitted >= config.max_pages
        ):
            self.dropped["max_pages"] += 1
            return None
        self.seen.add(canonical)
        self.admitted += count
        return canonical

    def host_for(self, url: str) -> Host:
        origin = origin_of(url)
        host = self.hosts.get(origin)
        if host is None:
            name = host_of(url)
            rate, burst, per_host = self.config.limits_for(name, origin)
            for key in (name, origin):
                if key in self.overrides:
                    rate, burst, per_host = _merge(self.overrides[key], rate, burst, per_host)
            host = Host(
                origin=origin,
                name=name,
                rate=rate,
                burst=burst,
                limiter=trio.CapacityLimiter(per_host),
                bucket=LeakyBucket(rate, burst),
                robots=Robots(
                    RobotsStatus.UNKNOWN if self.config.obey_robots else RobotsStatus.IGNORED
                ),
                on_change=self.on_change,
            )
            self.hosts[origin] = host
        return host

    def override(self, key: str, limits: HostLimits) -> None:
        """New limits for a host name or origin: for its hosts now and any created later."""
        previous = self.overrides.get(key, HostLimits())
        self.overrides[key] = HostLimits(
            rate=limits.rate if limits.rate is not None else previous.rate,
            burst=limits.burst if limits.burst is not None else previous.burst,
            per_host=limits.per_host if limits.per_host is not None else previous.per_host,
        )
        for host in self.matching(key):
            host.rate, host.burst, per_host = _merge(
                limits, host.rate, host.burst, int(host.limiter.total_tokens)
            )
            host.limiter.total_tokens = per_host
            host.apply_limits()

    def matching(self, key: str, *, create: bool = False) -> list[Host]:
        """Hosts whose name or origin is `key`; with `create`, make the origin's host."""
        found = [h for h in self.hosts.values() if key in (h.name, h.origin)]
        if not found and create and "://" in key:
            canonical = normalize_url(key)
            if canonical is not None:
                found = [self.host_for(canonical)]
        return found

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())


def _merge(limits: HostLimits, rate: float, burst: int, per_host: int) -> tuple[float, int, int]:
    return (
        limits.rate if limits.rate is not None else rate,
        limits.burst if limits.burst is not None else burst,
        limits.per_host if limits.per_host is not None else per_host,
    )
