"""HTML decoding and link extraction: the other half of the crawler's CPU hot path.

Parser: ``selectolax.lexbor.LexborHTMLParser``. selectolax 1.0 removed the Modest backend
(``selectolax.parser.HTMLParser`` raises ImportError), so there is nothing to choose
between any more; Lexbor is also the spec-compliant one (frames only inside
``<frameset>``, ``<base>`` anywhere, NUL and invalid UTF-8 replaced by U+FFFD).

Speed notes (see ``benchmarks/bench_links.py``):

* UTF-8 pages (nearly all of them) are handed to Lexbor as bytes, which it parses as
  UTF-8 itself, instead of decoding to ``str`` and having selectolax encode it back.
* Elements are collected with ``tags()`` (one C walk per tag name, ~0.5-1 us each) rather
  than ``css()``: the first ``css()`` call on a document builds a Lexbor CSS parser and
  selector engine, which costs more than all the ``tags()`` calls together. ``tags()``
  gives one list per tag name; when links come from more than one kind of element and
  document order cannot be inferred (``<link>`` elements sit in ``<head>``, so they come
  before everything in ``<body>``), one ``css()`` query restores document order.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import os
import re
import sys
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode

from ._urls import normalize_links, normalize_url

__all__ = ["ParsedPage", "is_html", "parse_html"]

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_MAX_TITLE = 1000
_PRESCAN_BYTES = 2048
_UTF8 = "utf-8"
_META_UTF8 = b'<meta charset="utf-8"'
_META_UTF8_UPPER = b'<meta charset="UTF-8"'

# WHATWG Encoding Standard labels -> Python codec names, for the encodings pages use.
# https://encoding.spec.whatwg.org/#names-and-labels (browsers read latin-1/ascii pages as
# windows-1252, "gbk" with the gb18030 decoder, "euc-kr" as windows-949, and so on).
_LABELS: dict[str, str] = {}
for _codec, _labels in {
    "utf-8": "utf-8 utf8 unicode-1-1-utf-8 unicode11utf8 unicode20utf8 x-unicode20utf8",
    "cp1252": "windows-1252 ascii us-ascii ansi_x3.4-1968 cp1252 cp819 csisolatin1 ibm819 "
    "iso-8859-1 iso-ir-100 iso8859-1 iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 "
    "x-cp1252 x-user-defined",
    "cp866": "ibm866 866 cp866 csibm866",
    "iso8859-2": "iso-8859-2 csisolatin2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 l2 latin2",
    "iso8859-3": "iso-8859-3 csisolatin3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 l3 latin3",
    "iso8859-4": "iso-8859-4 csisolatin4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 l4 latin4",
    "iso8859-5": "iso-8859-5 csisolatincyrillic cyrillic iso-ir-144 iso8859-5 iso88595",
    "iso8859-6": "iso-8859-6 arabic asmo-708 csiso88596e csiso88596i csisolatinarabic "
    "ecma-114 iso-8859-6-e iso-8859-6-i iso-ir-127 iso8859-6 iso88596",
    "iso8859-7": "iso-8859-7 csisolatingreek ecma-118 elot_928 greek greek8 iso-ir-126 "
    "iso8859-7 iso88597 sun_eu_greek",
    "iso8859-8": "iso-8859-8 csiso88598e csisolatinhebrew hebrew iso-8859-8-e iso-ir-138 "
    "iso8859-8 iso88598 visual iso-8859-8-i csiso88598i logical",
    "iso8859-10": "iso-8859-10 csisolatin6 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso8859-13": "iso-8859-13 iso8859-13 iso885913",
    "iso8859-14": "iso-8859-14 iso8859-14 iso885914",
    "iso8859-15": "iso-8859-15 csisolatin9 iso8859-15 iso885915 iso_8859-15 l9",
    "iso8859-16": "iso-8859-16",
    "koi8-r": "koi8-r cskoi8r koi koi8 koi8_r",
    "koi8-u": "koi8-u koi8-ru",
    "mac-roman": "macintosh csmacintosh mac x-mac-roman",
    "mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "cp874": "windows-874 dos-874 iso-8859-11 iso8859-11 iso885911 tis-620",
    "cp1250": "windows-1250 cp1250 x-cp1250",
    "cp1251": "windows-1251 cp1251 x-cp1251",
    "cp1253": "windows-1253 cp1253 x-cp1253",
    "cp1254": "windows-1254 cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 "
    "iso_8859-9 l5 latin5 x-cp1254",
    "cp1255": "windows-1255 cp1255 x-cp1255",
    "cp1256": "windows-1256 cp1256 x-cp1256",
    "cp1257": "windows-1257 cp1257 x-cp1257",
    "cp1258": "windows-1258 cp1258 x-cp1258",
    "gb18030": "gb18030 gbk chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 "
    "iso-ir-58 x-gbk",
    "big5hkscs": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc_jp": "euc-jp cseucpkdfmtjapanese x-euc-jp",
    "iso2022_jp": "iso-2022-jp csiso2022jp",
    "cp932": "shift_jis csshiftjis ms932 ms_kanji shift-jis sjis windows-31j x-sjis",
    "cp949": "euc-kr cseuckr csksc56011987 iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 "
    "ksc5601 ksc_5601 windows-949",
    "utf-16-be": "utf-16be unicodefffe",
    "utf-16-le": "utf-16le utf-16 csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff",
}.items():
    for _label in _labels.split():
        _LABELS[_label] = _codec
_CODECS = frozenset(_LABELS.values())
# Python spellings of encodings whose WHATWG decoder is another codec.
_CODEC_ALIASES = {
    "latin-1": "cp1252",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "utf-16": "utf-16-le",
}

_CT_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([^\s;"']{1,64})""", re.IGNORECASE)
_META_TAG = re.compile(rb"<meta[\s/]([^>]*)", re.IGNORECASE)
_FIRST_META = re.compile(rb"<meta", re.IGNORECASE).search  # (bytes: ASCII case only)
_ATTRIBUTE = re.compile(rb"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")
_CONTENT_CHARSET = re.compile(rb"""charset\s*=\s*["']?\s*([^\s;"']{1,64})""", re.IGNORECASE)

MAX_DEPTH = 2048
"""Elements nested deeper than this are cut off the page (see _cut_deep_nesting)."""
_DEEP_CHECK_TAGS = 8192
_TAG = re.compile(rb"<(/?)([a-z][a-z0-9]*)")
# Void elements, and those an end tag is usually left out for (they close each other),
# make a page no deeper.
_NOT_NESTING = frozenset(
    b"area base br col embed hr img input link meta source track wbr param keygen "
    b"p li dt dd option optgroup tr td th thead tbody tfoot colgroup caption rb rt rp".split()
)
_LINK_TAGS = ("a", "area", "frame", "iframe")

# glibc malloc: raise the mmap threshold to 1 MiB and the trim threshold to 4 MiB.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 20), (_M_TRIM_THRESHOLD, 4 << 20))


def _keep_heap_for_lexbor() -> bool:
    """Stop glibc from handing Lexbor's memory back to the kernel after every page.

    Each ``LexborHTMLParser`` allocates a document of a few hundred KiB (memory pools,
    hash tables) and frees it all when the page is done. With glibc's defaults that
    free shrinks the heap (``brk``), or a part over the 128 KiB mmap threshold is
    unmapped, and the next page maps the memory again and faults every page of it in,
    zeroed: about 30 us of a 6 KB page's 75 us parse, ~1.2 ``brk`` calls and 1-2
    page faults a page over a crawl. Allocations up to 1 MiB now come from the heap,
    and up to 4 MiB of free memory stays at its top for the next page (what a
    long-running server would set with ``MALLOC_TRIM_THRESHOLD_``).

    Process-wide, so it is done only on glibc, and not at all when the user set
    malloc's tunables (``GLIBC_TUNABLES``, ``MALLOC_*_`` variables): theirs win.
    Returns whether the settings were made."""
    if not sys.platform.startswith("linux") or os.environ.get("GLIBC_TUNABLES"):
        return False
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (musl's mallopt does nothing, others differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - no libc to load
        return False
    return all(mallopt(option, value) == 1 for option, value in _MALLOC_SETTINGS)


_heap_kept: bool | None = None


def keep_heap_for_parsing() -> None:
    """Called when a crawl starts (not at import: a program that only imports the
    library keeps its allocator as it is); once per process."""
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = _keep_heap_for_lexbor()


_LINK_SELECTOR = "a, area, link, frame, iframe"
_ROBOTS_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class ParsedPage:
    """What the crawler needs from an HTML page."""

    title: str | None
    """Text of the first ``<title>``, whitespace collapsed, at most 1,000 characters;
    None when there is no title or it is blank."""
    links: tuple[str, ...]
    """Canonical absolute http(s) URLs, first-seen order, no duplicates."""
    nofollow: bool
    """The page asked robots not to follow its links (``<meta name=robots>``)."""
    encoding: str
    """Python codec name the body was decoded with (e.g. "utf-8", "cp1252")."""


def is_html(content_type: str | None) -> bool:
    """True for ``text/html`` and ``application/xhtml+xml`` (parameters ignored)."""
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() in _HTML_TYPES


def _codec_for(label: str | bytes) -> str | None:
    """Python codec for a charset label, restricted to real text encodings pages use."""
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    label = label.strip().lower()
    codec = _LABELS.get(label)
    if codec is not None:
        return codec
    try:
        name = codecs.lookup(label).name
    except Exception:  # LookupError, or ValueError/TypeError on odd labels
        return None
    name = _CODEC_ALIASES.get(name, name)
    return name if name in _CODECS else None


def _prescan_meta(head: bytes) -> str | None:
    """The charset of the first ``<meta charset>`` or ``<meta http-equiv=content-type>``."""
    for tag in _META_TAG.finditer(head):
        attributes: dict[bytes, bytes] = {}
        for name, double, single, bare in _ATTRIBUTE.findall(tag.group(1)):
            attributes.setdefault(name.lower(), double or single or bare)
        label = attributes.get(b"charset")
        if label is None and attributes.get(b"http-equiv", b"").lower() == b"content-type":
            match = _CONTENT_CHARSET.search(attributes.get(b"content", b""))
            label = match.group(1) if match is not None else None
        if label:
            codec = _codec_for(label[:64])
            if codec is not None:
                # A page that could be read as ASCII to find this is not UTF-16 (WHATWG).
                return _UTF8 if codec.startswith("utf-16") else codec
    return None


def _sniff_encoding(body: bytes, content_type: str | None) -> tuple[str, int]:
    """(codec, length of the byte order mark to skip).

    A byte order mark wins over the Content-Type header, as in browsers (WHATWG
    "encoding sniffing"): a UTF-8 BOM on a page served as iso-8859-1 is UTF-8. Then the
    header's charset, then a ``<meta>`` declaration in the first 2 KB, then UTF-8.
    Unknown or unusable labels are ignored.
    """
    if body[:3] == b"\xef\xbb\xbf":
        return _UTF8, 3
    if body[:2] == b"\xff\xfe":
        return "utf-16-le", 2
    if body[:2] == b"\xfe\xff":
        return "utf-16-be", 2
    if content_type and "charset" in content_type.lower():
        match = _CT_CHARSET.search(content_type)
        if match is not None:
            codec = _codec_for(match.group(1))
            if codec is not None:
                return codec, 0
    # The first "<meta" of the first 2 KB, in any case (a search: no copy, no lower()).
    meta = _FIRST_META(body, 0, _PRESCAN_BYTES)
    if meta is not None:
        at = meta.start()
        if body.startswith(_META_UTF8, at, _PRESCAN_BYTES) or body.startswith(
            _META_UTF8_UPPER, at, _PRESCAN_BYTES
        ):
            return _UTF8, 0  # the usual first <meta>, without the regular expressions
        codec = _prescan_meta(body[:_PRESCAN_BYTES])
        if codec is not None:
            return codec, 0
    return _UTF8, 0


def _cut_deep_nesting(body: bytes) -> bytes:
    """`body`, cut where its elements nest deeper than MAX_DEPTH.

    Lexbor walks the stack of open elements for each block-level start tag, so a page
    of 100,000 nested ``<div>`` took ~100 s to parse, blocking the whole crawl; browsers
    cap the depth too (Chrome at 512). Counting costs a Python loop over the tags
    (~15% of the parse), so only pages with enough tags to cost much are counted."""
    if len(body) <= _DEEP_CHECK_TAGS or body.count(b"<") <= _DEEP_CHECK_TAGS:
        return body
    lowered = body.lower()
    depth = 0
    for index, (closing, name) in enumerate(_TAG.findall(lowered)):  # findall: 2x finditer
        if name in _NOT_NESTING:
            continue
        if closing:
            if depth:
                depth -= 1
        else:
            depth += 1
            if depth > MAX_DEPTH:
                cut = next(itertools.islice(_TAG.finditer(lowered), index, None))
                return body[: cut.start()]
    return body


def _build_tree(body: bytes, codec: str, bom: int) -> LexborHTMLParser:
    if codec == _UTF8:
        # Lexbor parses bytes as UTF-8 (invalid sequences and NUL become U+FFFD).
        return LexborHTMLParser(body[bom:] if bom else body)
    return LexborHTMLParser(body[bom:].decode(codec, "replace"))


def _rel_tokens(attributes: dict[str, str | None]) -> list[str]:
    rel = attributes.get("rel")
    return rel.lower().split() if rel else []


def _followable_link(attributes: dict[str, str | None]) -> bool:
    """``<link rel=alternate|next href>``, not a stylesheet and not nofollow."""
    if "href" not in attributes:
        return False
    rel = _rel_tokens(attributes)
    return (
        ("alternate" in rel or "next" in rel) and "nofollow" not in rel and "stylesheet" not in rel
    )


def _page_nofollow(tree: LexborHTMLParser) -> bool:
    for meta in tree.tags("meta"):
        attributes = meta.attributes
        name = attributes.get("name")
        if name is None or name.strip().lower() != "robots":
            continue
        content = attributes.get("content")
        if content:
            tokens = _ROBOTS_SPLIT.split(content.lower())
            if "nofollow" in tokens or "none" in tokens:
                return True
    return False


def _title(tree: LexborHTMLParser) -> str | None:
    titles = tree.tags("title")
    if not titles:
        return None
    text = " ".join(titles[0].text().split())
    if len(text) > _MAX_TITLE:
        text = text[:_MAX_TITLE].rstrip()
    return text or None


def _link_nodes(tree: LexborHTMLParser) -> tuple[list[LexborNode], str | None]:
    """Elements that may carry a link, in document order, and their tag name when they
    all have the same one (most pages: only ``<a>``)."""
    tags = tree.tags
    links = [node for node in tags("link") if _followable_link(node.attributes)]
    groups = [(group, tag) for tag in _LINK_TAGS if (group := tags(tag))]
    if links:
        if not groups:
            return links, "link"
        # A document has one <head>, which precedes <body>, and the parser never puts
        # a/area/frame/iframe in <head>: links that are children of <head> come first.
        if len(groups) == 1 and all(_parent_tag(node) == "head" for node in links):
            return links + groups[0][0], None
    elif len(groups) <= 1:
        return groups[0] if groups else ([], None)
    return tree.css(_LINK_SELECTOR), None


def _parent_tag(node: LexborNode) -> str | None:
    parent = node.parent
    return None if parent is None else parent.tag


def _raw_links(nodes: list[LexborNode], same_tag: str | None = None) -> list[str]:
    """Link attribute values worth resolving (href/src; a bare attribute counts as "").

    `same_tag`: the tag name of every node, when `_link_nodes` knows it (it then need
    not be asked of each node)."""
    raw: list[str] = []
    for node in nodes:
        tag = same_tag or node.tag
        attributes = node.attributes
        if tag == "a" or tag == "area":
            if "href" not in attributes:
                continue
            if "rel" in attributes and "nofollow" in _rel_tokens(attributes):
                continue
            value = attributes["href"]
        elif tag == "link":
            if not _followable_link(attributes):
                continue
            value = attributes["href"]
        else:  # frame, iframe
            if "src" not in attributes:
                continue
            value = attributes["src"]
        raw.append(value or "")
    return raw


def parse_html(
    body: bytes,
    url: str,
    content_type: str | None,
    *,
    max_links: int = 10_000,
    max_url_length: int = 2083,
) -> ParsedPage:
    """Decode and parse an HTML page; return its title and followable links.

    `url` is the page's (final) URL, the base for relative links unless the page has a
    ``<base href>`` (the first one, itself resolved against `url`). Links come from
    ``<a href>``, ``<area href>``, ``<link rel=alternate|next href>``, ``<frame src>``
    and ``<iframe src>``, in document order; ``rel=nofollow`` links are skipped, and a
    page-level ``<meta name=robots content=nofollow|none>`` drops them all
    (``nofollow=True``). Links are canonical (:func:`~crawler._urls.normalize_url`; the
    ones it rejects are dropped), unique and at most `max_links`.

    The charset comes from a byte order mark, else the Content-Type header, else a
    ``<meta>`` in the first 2 KB, else UTF-8; undecodable bytes become U+FFFD. Never
    raises.
    """
    codec, bom = _sniff_encoding(body, content_type)
    try:
        return _parse(body, url, codec, bom, max_links, max_url_length)
    except Exception:  # pragma: no cover - defensive; property tests target _parse
        return ParsedPage(title=None, links=(), nofollow=False, encoding=codec)


def _parse(
    body: bytes, url: str, codec: str, bom: int, max_links: int, max_url_length: int
) -> ParsedPage:
    """parse_html proper; may raise only on a bug (parse_html guards it)."""
    tree = _build_tree(_cut_deep_nesting(body), codec, bom)
    title = _title(tree)
    if _page_nofollow(tree):
        return ParsedPage(title=title, links=(), nofollow=True, encoding=codec)
    if max_links <= 0:
        return ParsedPage(title=title, links=(), nofollow=False, encoding=codec)

    base = url
    for element in tree.tags("base"):
        attributes = element.attributes
        if "href" in attributes:
            href = attributes["href"] or ""
            base = normalize_url(href, url, max_length=max_url_length) or url
            break

    links = normalize_links(
        _raw_links(*_link_nodes(tree)), base, max_length=max_url_length, limit=max_links
    )
    return ParsedPage(title=title, links=links, nofollow=False, encoding=codec)
