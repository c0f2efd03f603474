"""Sitemap parsing (sitemaps.org 0.9): `<urlset>` pages and `<sitemapindex>` children.

A scan for `<loc>` elements rather than an XML parser: sitemaps in the wild are
often malformed, and the scan cannot be made to expand entities (no XML bomb).
"""

from __future__ import annotations

import html
import re

from ._decode import BodyDecoder, DecodingError

# Opening and closing tags are found apart, not as one `<loc>(.*?)</loc>` pattern: that
# one rescans to the end of the body for every unclosed <loc> (quadratic: a 200 KB body
# of "<loc>" took minutes).
_LOC_OPEN = re.compile(rb"<(?:[A-Za-z0-9_]+:)?loc\s*>")
_LOC_CLOSE = re.compile(rb"</(?:[A-Za-z0-9_]+:)?loc\s*>")
_INDEX = re.compile(rb"<(?:[A-Za-z0-9_]+:)?sitemapindex[\s>]")
_GZIP_MAGIC = b"\x1f\x8b"
_CDATA_OPEN = "<![CDATA["
_CDATA_CLOSE = "]]>"


def parse_sitemap(body: bytes, max_bytes: int) -> tuple[list[str], bool]:
    """The `<loc>` URLs of a sitemap body, and whether it is a sitemap index.

    A gzip body (`.xml.gz` served as a file) is decompressed under the same cap."""
    if body.startswith(_GZIP_MAGIC):
        decoder = BodyDecoder("gzip", max_bytes)
        try:
            body = decoder.feed(body) + decoder.flush()
        except DecodingError:
            return [], False
    locs: list[str] = []
    at = 0
    while (start := _LOC_OPEN.search(body, at)) is not None:
        end = _LOC_CLOSE.search(body, start.end())
        if end is None:
            break  # no </loc> after this one: none after the later ones either
        raw = body[start.end() : end.start()].strip()
        locs.append(_loc_text(raw.decode("utf-8", "replace")))
        at = end.end()
    return locs, _INDEX.search(body) is not None


def _loc_text(raw: str) -> str:
    """A `<loc>`'s text as an XML parser gives it: CDATA sections taken as they are,
    character references resolved everywhere else."""
    if _CDATA_OPEN not in raw:
        return html.unescape(raw)
    parts: list[str] = []
    end = 0
    # str.find, not a regular expression: linear however many sections are left open.
    while (start := raw.find(_CDATA_OPEN, end)) >= 0:
        close = raw.find(_CDATA_CLOSE, start + len(_CDATA_OPEN))
        if close < 0:
            break
        parts.append(html.unescape(raw[end:start]))
        parts.append(raw[start + len(_CDATA_OPEN) : close])
        end = close + len(_CDATA_CLOSE)
    parts.append(html.unescape(raw[end:]))
    return "".join(parts).strip()
