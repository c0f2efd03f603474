"""Sitemap parsing (sitemaps.org 0.9): `<urlset>` pages and `<sitemapindex>` children.

A scan for `<loc>` elements rather than an XML parser: sitemaps in the wild are
often malformed, and the scan cannot be made to expand entities (no XML bomb).
"""

from __future__ import annotations

import html
import re

from ._decode import BodyDecoder, DecodingError

_LOC = re.compile(rb"<(?:[A-Za-z0-9_]+:)?loc\s*>\s*(.*?)\s*</(?:[A-Za-z0-9_]+:)?loc\s*>", re.S)
_INDEX = re.compile(rb"<(?:[A-Za-z0-9_]+:)?sitemapindex[\s>]")
_GZIP_MAGIC = b"\x1f\x8b"
_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)


def parse_sitemap(body: bytes, max_bytes: int) -> tuple[list[str], bool]:
    """The `<loc>` URLs of a sitemap body, and whether it is a sitemap index.

    A gzip body (`.xml.gz` served as a file) is decompressed under the same cap."""
    if body.startswith(_GZIP_MAGIC):
        decoder = BodyDecoder("gzip", max_bytes)
        try:
            body = decoder.feed(body) + decoder.flush()
        except DecodingError:
            return [], False
    locs = [_loc_text(m.group(1).decode("utf-8", "replace")) for m in _LOC.finditer(body)]
    return locs, _INDEX.search(body) is not None


def _loc_text(raw: str) -> str:
    """A `<loc>`'s text as an XML parser gives it: CDATA sections taken as they are,
    character references resolved everywhere else."""
    if "<![CDATA[" not in raw:
        return html.unescape(raw)
    parts: list[str] = []
    end = 0
    for match in _CDATA.finditer(raw):
        parts.append(html.unescape(raw[end : match.start()]))
        parts.append(match.group(1))
        end = match.end()
    parts.append(html.unescape(raw[end:]))
    return "".join(parts).strip()
