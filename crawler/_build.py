"""Turning one fetch outcome into a Page: shared by the engine and shared-crawl workers."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable

import httpx

from ._config import CrawlConfig
from ._fetch import Fetched
from ._links import ParsedPage, is_html, parse_html
from ._page import Exchange, Page, PageError
from ._sitemaps import parse_sitemap
from ._urls import normalize_url


class LinkKind(enum.Enum):
    """What a page's `links` are, and so how the crawl follows them."""

    PAGE = "page"
    """Links found in HTML: follow at depth + 1."""
    SITEMAP = "sitemap"
    """A sitemap's page URLs: follow at depth + 1."""
    SITEMAP_INDEX = "sitemap_index"
    """A sitemap index's child sitemaps: queue as sitemaps at the same depth."""
    NONE = "none"
    """Nothing to follow (a redirect chain ended here: the links name its target)."""


def html_to_parse(
    fetched: Fetched | None,
    error: PageError | None,
    redirect_target: str | None = None,
    sitemap: bool = False,
) -> str | None:
    """The Content-Type of the body `build_page` parses as HTML; None if it parses none."""
    if redirect_target is not None or sitemap or fetched is None:
        return None
    content_type = fetched.headers.get("content-type")
    return content_type if _is_html_page(fetched, error, content_type) else None


def _is_html_page(fetched: Fetched, error: PageError | None, content_type: str | None) -> bool:
    status = fetched.status
    return error is None and status is not None and 200 <= status < 300 and is_html(content_type)


def build_page(
    config: CrawlConfig,
    *,
    first_url: str,
    url: str,
    depth: int,
    fetched: Fetched | None,
    error: PageError | None,
    redirect_target: str | None = None,
    sitemap: bool = False,
    exchanges: Iterable[Exchange] = (),
    parsed: ParsedPage | None = None,
) -> tuple[Page, LinkKind]:
    """The Page for a fetch (or a failure with no fetch), with its title and links.

    `parsed`: the body parsed already (by a parse process), when `html_to_parse` said
    it is to be; otherwise it is parsed here."""
    title: str | None = None
    links: tuple[str, ...] = ()
    kind = LinkKind.PAGE
    headers = fetched.headers if fetched is not None else httpx.Headers()
    content_type = headers.get("content-type")
    status = fetched.status if fetched is not None else None
    body = fetched.body if fetched is not None else b""
    if redirect_target is not None:
        links, kind = (redirect_target,), LinkKind.NONE
    elif sitemap and fetched is not None and error is None and status == 200:
        locs, is_index = parse_sitemap(body, config.max_bytes)
        limit = config.max_url_length
        canonical = (normalize_url(loc, max_length=limit) for loc in locs)
        links = tuple(dict.fromkeys(u for u in canonical if u is not None))
        kind = LinkKind.SITEMAP_INDEX if is_index else LinkKind.SITEMAP
    elif parsed is not None or (
        fetched is not None and _is_html_page(fetched, error, content_type)
    ):
        if parsed is None:
            parsed = parse_html(
                body,
                url,
                content_type,
                max_links=config.max_links_per_page,
                max_url_length=config.max_url_length,
            )
        title, links = parsed.title, parsed.links
    page = Page(
        url=first_url,
        final_url=url,
        status=status,
        depth=depth,
        headers=headers,
        content_type=content_type,
        title=title,
        links=links,
        body=body,
        elapsed=fetched.elapsed if fetched is not None else 0.0,
        fetched_at=fetched.started_at if fetched is not None else dt.datetime.now(dt.UTC),
        error=error,
        exchanges=tuple(exchanges),
    )
    return page, kind
