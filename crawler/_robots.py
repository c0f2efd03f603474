"""robots.txt state per origin. Protego parses it: it is Scrapy's parser, follows the
Google/RFC 9309 matching rules (longest match, Allow beats Disallow on ties, wildcards)
and reads Crawl-delay, Request-rate and Sitemap lines, which the stdlib parser does not."""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protego import Protego

from ._page import ErrorKind, PageError

if TYPE_CHECKING:
    from ._fetch import Fetched

logger = logging.getLogger(__name__)

ROBOTS_MAX_BYTES = 500 * 1024
ROBOTS_TTL = 24 * 3600.0
# After a 5xx or network failure, the host counts as disallowed until this long has passed.
ROBOTS_RETRY = 60.0


class RobotsStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    FETCHING = "fetching"
    PARSED = "parsed"
    ALLOW_ALL = "allow_all"
    UNAVAILABLE = "unavailable"
    IGNORED = "ignored"


@dataclass(slots=True)
class Robots:
    """What one origin's robots.txt says, and when to ask again."""

    status: RobotsStatus = RobotsStatus.UNKNOWN
    parser: Protego | None = None
    expires: float = 0.0
    message: str = ""
    sitemaps: tuple[str, ...] = field(default_factory=tuple)
    error: PageError | None = None
    """Why the host's pages fail while robots.txt is unavailable, when not the default."""

    def needs_fetch(self, now: float) -> bool:
        if self.status is RobotsStatus.IGNORED or self.status is RobotsStatus.FETCHING:
            return False
        return self.status is RobotsStatus.UNKNOWN or now >= self.expires

    def allows(self, url: str, user_agent: str) -> bool:
        if self.status is RobotsStatus.PARSED and self.parser is not None:
            try:
                return bool(self.parser.can_fetch(url, user_agent))
            except Exception:
                # A rule the parser took but cannot match: no usable rule, so allowed
                # (RFC 9309 2.2: only parseable rules count).
                logger.info("robots.txt rules failed on %s", url, exc_info=True)
                return True
        return self.status is not RobotsStatus.UNAVAILABLE

    def unavailable_error(self) -> PageError:
        """The error of a page held back because robots.txt is unavailable."""
        return self.error or PageError(ErrorKind.ROBOTS_UNAVAILABLE, self.message)

    def worth_retrying(self) -> bool:
        """A failed fetch that another attempt may fix: not one of a host we may not
        connect to at all (``block_private``)."""
        return self.status is RobotsStatus.UNAVAILABLE and self.error is None

    def interval(self, user_agent: str) -> float:
        """Seconds between requests that Crawl-delay / Request-rate ask for (0 = none)."""
        if self.status is not RobotsStatus.PARSED or self.parser is None:
            return 0.0
        try:
            return self._interval(self.parser, user_agent)
        except Exception:  # an unusable Crawl-delay / Request-rate is no such line
            logger.info("robots.txt delay unusable", exc_info=True)
            return 0.0

    @staticmethod
    def _interval(parser: Protego, user_agent: str) -> float:
        interval = 0.0
        delay = parser.crawl_delay(user_agent)
        if delay is not None and delay > 0:
            interval = float(delay)
        rate = parser.request_rate(user_agent)
        if rate is not None and rate.requests > 0 and rate.seconds > 0:
            interval = max(interval, rate.seconds / rate.requests)
        # A NaN or infinite delay is no delay anyone can honour: ignore it.
        return interval if math.isfinite(interval) else 0.0


def robots_source(fetched: Fetched) -> tuple[int | None, bytes]:
    """What to keep of a robots.txt fetch (stored, and read by `robots_from_response`):
    ``(status, body)``, or ``(None, why)`` when it failed: the error's message takes the
    body's place, so the URLs it holds back say why."""
    if fetched.error is not None:
        return None, fetched.error.message.encode("utf-8")
    return fetched.status, fetched.body


def robots_from_fetch(fetched: Fetched, now: float) -> Robots:
    """`robots_from_response` of a fetch; a host we may not connect to (BLOCKED) keeps
    that error, which its pages then carry instead of ``robots_unavailable``."""
    status, body = robots_source(fetched)
    return robots_from_response(status, body, now, error=robots_error(fetched))


def robots_error(fetched: Fetched) -> ErrorKind | None:
    """The error kind to keep with a robots.txt fetch (see `robots_from_response`)."""
    if fetched.error is not None and fetched.error.kind is ErrorKind.BLOCKED:
        return ErrorKind.BLOCKED  # not the site failing: we may not connect to it at all
    return None


def robots_from_response(
    status: int | None, body: bytes, now: float, *, error: ErrorKind | None = None
) -> Robots:
    """Interpret a robots.txt fetch the way the major search engines do (RFC 9309 2.3.1).

    ``status`` None: the fetch failed, and ``body`` says why (see `robots_source`);
    `error` (from `robots_error`): the host's pages fail with that error, not
    ``robots_unavailable``, and no retry is worth it."""
    if status is None or status >= 500:
        if status is None:
            why = ": " + (body.decode("utf-8", "replace") or "network failure")
        else:
            why = f" (HTTP {status})"
        robots = Robots(
            RobotsStatus.UNAVAILABLE,
            expires=now + ROBOTS_RETRY,
            message=f"robots.txt unavailable{why}; host treated as disallowed for now",
        )
        if status is None and error is not None:
            robots.error = PageError(error, body.decode("utf-8", "replace"))
        return robots
    if status >= 400:
        return Robots(RobotsStatus.ALLOW_ALL, expires=now + ROBOTS_TTL, message=f"HTTP {status}")
    if status >= 300:
        # Redirects are followed by the caller; one that leads nowhere counts as no file.
        return Robots(RobotsStatus.ALLOW_ALL, expires=now + ROBOTS_TTL, message=f"HTTP {status}")
    text = body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
    try:
        parser = Protego.parse(text)
        sitemaps = tuple(str(url) for url in parser.sitemaps)
    except Exception as exc:
        # The file was served, so the site is up; RFC 9309 2.2 has crawlers use only
        # the rules they can parse, and here there are none: allow all (calling it
        # unavailable would refuse the whole host, again after every retry).
        logger.info("robots.txt unparseable", exc_info=True)
        return Robots(
            RobotsStatus.ALLOW_ALL,
            expires=now + ROBOTS_TTL,
            message=f"robots.txt unparseable ({type(exc).__name__}); all allowed",
        )
    return Robots(RobotsStatus.PARSED, parser=parser, expires=now + ROBOTS_TTL, sitemaps=sitemaps)


def robots_verdict(
    robots: Robots, url: str, user_agent: str, *, redirected: bool
) -> bool | PageError:
    """What robots.txt makes of one request, in every kind of crawl: True, fetch it;
    False, disallowed (counted, no record); a PageError, the URL's record says why it
    was not fetched (robots.txt unavailable, or a redirect chain led to a disallowed
    URL: its first URL was fetched, so it gets a record saying where it stopped)."""
    if robots.allows(url, user_agent):
        return True
    if robots.status is RobotsStatus.UNAVAILABLE:
        return robots.unavailable_error()
    if redirected:
        return PageError(ErrorKind.ROBOTS_DISALLOWED, f"redirect to {url} disallowed")
    return False
