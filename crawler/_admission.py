"""Which URLs may enter a crawl: the rules every frontier applies, whatever keeps it.

The single-process `Frontier` (memory or SQLite state) and the shared crawl's Redis
frontier differ in how they remember what was seen and how they count queues and pages;
the rules a URL itself must pass (canonical form, depth, scope, link traps, include and
exclude patterns) live here, once, so that both crawl the same set of URLs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._config import CrawlConfig
from ._page import Page
from ._unexpected import note_hook
from ._urls import Scope, looks_like_trap, normalize_url, strip_userinfo

__all__ = ["Admission"]


class Admission:
    """The per-URL admission rules of one crawl (pure: nothing is counted or remembered).

    `scope` is public: a crawl widens it (``add_seed``) or replaces it as seeds arrive.
    """

    __slots__ = (
        "_exclude",
        "_include",
        "_max_depth",
        "_max_length",
        "_path_depth",
        "_path_repeats",
        "_should_follow",
        "scope",
    )

    def __init__(self, config: CrawlConfig, scope: Scope | None = None) -> None:
        self.scope = scope if scope is not None else Scope(config.scope, config.seeds)
        self._include = [re.compile(p) for p in config.include]
        self._exclude = [re.compile(p) for p in config.exclude]
        self._max_depth = config.max_depth
        self._max_length = config.max_url_length
        self._path_depth = config.max_path_depth
        self._path_repeats = config.max_path_repeats
        self._should_follow = config.should_follow

    def canonical(self, url: str, *, normalized: bool = False) -> str | None:
        """`url` in canonical form without credentials; None when it is not a crawlable
        http(s) URL or is longer than ``max_url_length`` (refusal reason "invalid").

        `normalized`: `url` comes from parse_html or a sitemap, canonical already."""
        if normalized:
            canonical = url
        else:
            result = normalize_url(url, max_length=self._max_length)
            if result is None:
                return None
            canonical = url if result == url else result  # keep one copy of the string
        if "@" in canonical:
            canonical = strip_userinfo(canonical)  # credentials go to no URL
        return canonical

    def refusal(self, canonical: str, depth: int) -> str | None:
        """Why the canonical URL, found at `depth`, may not be crawled (None: it may).

        The reason is the key it is counted under in ``Statistics.dropped``."""
        max_depth = self._max_depth
        if max_depth is not None and depth > max_depth:
            return "max_depth"
        if not self.scope.allows(canonical):
            return "scope"
        if looks_like_trap(canonical, self._path_depth, self._path_repeats):
            return "trap"
        include = self._include
        if include and not any(p.search(canonical) for p in include):
            return "include"
        for pattern in self._exclude:
            if pattern.search(canonical):
                return "exclude"
        return None

    def links_to_follow(self, page: Page) -> tuple[int, Sequence[str]]:
        """The depth of `page`'s links and those of them to follow (none past
        ``max_depth``; only those ``should_follow`` accepts). They are canonical."""
        depth = page.depth + 1
        max_depth = self._max_depth
        if max_depth is not None and depth > max_depth:
            return depth, ()
        should_follow = self._should_follow
        if should_follow is None:
            return depth, page.links
        try:
            return depth, [link for link in page.links if should_follow(link, page)]
        except Exception as exc:
            note_hook(exc, "should_follow")  # the caller's bug ends the crawl
            raise
