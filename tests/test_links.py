"""crawler._links: charset sniffing, title, link extraction."""

from __future__ import annotations

import os
import platform
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler._links import (
    ParsedPage,
    _keep_heap_for_lexbor,
    _parse,
    _prescan_meta,
    _sniff_encoding,
    is_html,
    parse_html,
)
from crawler._urls import normalize_url

PAGE = "http://example.com/dir/page.html"


def links_of(html: str | bytes, url: str = PAGE, **kwargs: int) -> tuple[str, ...]:
    body = html.encode("utf-8") if isinstance(html, str) else html
    return parse_html(body, url, "text/html", **kwargs).links


IS_HTML = [
    ("text/html", True),
    ("text/html; charset=utf-8", True),
    ("TEXT/HTML;charset=ISO-8859-1", True),
    (" text/html ; q=1", True),
    ("application/xhtml+xml", True),
    ("Application/XHTML+XML; charset=utf-8", True),
    ("text/plain", False),
    ("text/htmlx", False),
    ("application/json", False),
    ("image/png", False),
    ("", False),
    (None, False),
]


@pytest.mark.parametrize(("content_type", "expected"), IS_HTML)
def test_is_html(content_type: str | None, expected: bool) -> None:
    assert is_html(content_type) is expected


LINKS = [
    # (html, expected links)
    ('<a href="a.html">x</a>', ("http://example.com/dir/a.html",)),
    ('<a href="/b">x</a><a href="../c">y</a>', ("http://example.com/b", "http://example.com/c")),
    ('<a href="https://other.com">x</a>', ("https://other.com/",)),
    ('<a href="//cdn.example.com/x">x</a>', ("http://cdn.example.com/x",)),
    ("<a href=' spaced.html\n'>x</a>", ("http://example.com/dir/spaced.html",)),
    ('<a href="a b.html">x</a>', ("http://example.com/dir/a%20b.html",)),
    ('<a href="caf&eacute;.html">x</a>', ("http://example.com/dir/caf%C3%A9.html",)),
    ('<a href="?q=1&amp;r=2">x</a>', ("http://example.com/dir/page.html?q=1&r=2",)),
    ('<a href="#top">x</a>', ("http://example.com/dir/page.html",)),
    ("<a href>x</a><a>no href</a>", ("http://example.com/dir/page.html",)),
    ('<area href="map.html">', ("http://example.com/dir/map.html",)),
    ('<iframe src="frame.html"></iframe>', ("http://example.com/dir/frame.html",)),
    (
        '<frameset><frame src="f1.html"><frame src="/f2.html"></frameset>',
        ("http://example.com/dir/f1.html", "http://example.com/f2.html"),
    ),
    ('<link rel="alternate" href="/feed.xml">', ("http://example.com/feed.xml",)),
    ('<link rel="next" href="page2.html">', ("http://example.com/dir/page2.html",)),
    ('<link rel="ALTERNATE  nofollow-ish" href="/x">', ("http://example.com/x",)),
    ('<link rel="prev next" href="/p3">', ("http://example.com/p3",)),
    ('<link rel="stylesheet" href="/s.css"><link rel="icon" href="/f.ico">', ()),
    ('<link rel="alternate stylesheet" href="/alt.css">', ()),
    ('<link href="/norel">', ()),
    ('<link rel="canonical" href="/canonical">', ()),
    # schemes dropped
    (
        '<a href="javascript:void(0)">j</a><a href="mailto:x@example.com">m</a>'
        '<a href="tel:+1">t</a><a href="data:text/html,x">d</a><a href="ftp://e.com/">f</a>'
        '<a href="ok.html">ok</a>',
        ("http://example.com/dir/ok.html",),
    ),
    # malformed dropped
    ('<a href="http://[::1/">x</a><a href="http://a:99999/">y</a>', ()),
    # rel=nofollow (case-insensitive, token list)
    ('<a href="/1" rel="nofollow">x</a><a href="/2" rel="NoFollow noopener">y</a>', ()),
    ('<a href="/1" rel="nofollowx">x</a>', ("http://example.com/1",)),
    ('<area href="/m" rel="nofollow">', ()),
    ('<link rel="alternate nofollow" href="/feed">', ()),
    # de-duplicated after normalisation, first-seen order
    (
        '<a href="/b">1</a><a href="/a">2</a><a href="/b#x">3</a>'
        '<a href="http://EXAMPLE.com:80/a">4</a>',
        ("http://example.com/b", "http://example.com/a"),
    ),
]


@pytest.mark.parametrize(("html", "expected"), LINKS)
def test_links(html: str, expected: tuple[str, ...]) -> None:
    assert links_of(html) == expected


def test_document_order_across_element_kinds() -> None:
    html = (
        '<html><head><link rel="alternate" href="/feed"></head><body>'
        '<a href="/1">1</a><iframe src="/2"></iframe><a href="/3">3</a>'
        '<link rel="next" href="/4"><area href="/5"><a href="/1">dup</a></body></html>'
    )
    assert links_of(html) == tuple(f"http://example.com/{p}" for p in ("feed", 1, 2, 3, 4, 5))


def test_head_links_come_before_body_links() -> None:
    html = '<head><link rel="alternate" href="/feed"></head><body><a href="/a">a</a></body>'
    assert links_of(html) == ("http://example.com/feed", "http://example.com/a")
    html = '<body><a href="/a">a</a><link rel="alternate" href="/feed"></body>'
    assert links_of(html) == ("http://example.com/a", "http://example.com/feed")


BASES = [
    # (html, page url, expected links)
    ('<base href="http://other.com/x/"><a href="y">', PAGE, ("http://other.com/x/y",)),
    ('<base href="/sub/"><a href="y">', PAGE, ("http://example.com/sub/y",)),
    ('<base href="../up/"><a href="y">', PAGE, ("http://example.com/up/y",)),
    (  # the first <base href> wins, wherever it is
        '<a href="y"></a><base target="_blank"><base href="/one/"><base href="/two/">',
        PAGE,
        ("http://example.com/one/y",),
    ),
    ('<base href="javascript:x"><a href="y">', PAGE, ("http://example.com/dir/y",)),
    ('<base href=""><a href="y">', PAGE, ("http://example.com/dir/y",)),
    (
        '<base href="//cdn.example.com/"><a href="y">',
        "https://e.com/",
        ("https://cdn.example.com/y",),
    ),
    ('<base href="http://other.com/"><a href="https://abs.com/">', PAGE, ("https://abs.com/",)),
    # the page URL itself is normalised
    ('<a href="y">', "HTTP://Example.COM:80/a/./b", ("http://example.com/a/y",)),
    # an unusable page URL: only absolute links survive
    ('<a href="y"></a><a href="http://abs.com/">', "not a url", ("http://abs.com/",)),
]


@pytest.mark.parametrize(("html", "url", "expected"), BASES)
def test_base_href(html: str, url: str, expected: tuple[str, ...]) -> None:
    assert links_of(html, url) == expected


NOFOLLOW = [
    ('<meta name="robots" content="nofollow">', True),
    ('<meta name="robots" content="noindex, nofollow">', True),
    ('<meta name="robots" content="NOINDEX,NOFOLLOW">', True),
    ('<meta name="ROBOTS" content="none">', True),
    ('<meta name=" Robots " content="noarchive none">', True),
    ('<meta name="robots" content="noindex">', False),
    ('<meta name="robots" content="follow">', False),
    ('<meta name="robots" content="nofollowing">', False),
    ('<meta name="robots">', False),
    ('<meta name="googlebot" content="nofollow">', False),
    ('<meta name="description" content="nofollow">', False),
    ('<meta content="nofollow">', False),
]


@pytest.mark.parametrize(("meta", "nofollow"), NOFOLLOW)
def test_meta_robots_nofollow(meta: str, nofollow: bool) -> None:
    html = f"<html><head><title>T</title>{meta}</head><body><a href='/x'>x</a></body></html>"
    parsed = parse_html(html.encode(), PAGE, "text/html")
    assert parsed.nofollow is nofollow
    assert parsed.links == (() if nofollow else ("http://example.com/x",))
    assert parsed.title == "T"


TITLES = [
    ("<title>Hello</title>", "Hello"),
    ("<title>  Hello \n\t  World  </title>", "Hello World"),
    ("<title>A &amp; B &lt;3</title>", "A & B <3"),
    ("<title>First</title><title>Second</title>", "First"),
    ("<title></title>", None),
    ("<title>   </title>", None),
    ("<p>no title</p>", None),
    ("<title>Unclosed", "Unclosed"),
    ("<title><b>not</b> markup</title>", "<b>not</b> markup"),
    ("<title>" + "x" * 5000 + "</title>", "x" * 1000),
    ("<title>" + "word " * 400 + "</title>", ("word " * 200).strip()),
]


@pytest.mark.parametrize(("html", "title"), TITLES)
def test_title(html: str, title: str | None) -> None:
    parsed = parse_html(html.encode(), PAGE, None)
    assert parsed.title == title
    assert parsed.title is None or len(parsed.title) <= 1000


ENCODINGS = [
    # (body, content type, expected codec, expected title)
    ("<title>café</title>".encode(), "text/html; charset=utf-8", "utf-8", "café"),
    ("<title>café</title>".encode(), None, "utf-8", "café"),
    ("<title>café</title>".encode("latin-1"), "text/html; charset=ISO-8859-1", "cp1252", "café"),
    (b"<title>\x93q\x94</title>", "text/html; charset=latin1", "cp1252", "\u201cq\u201d"),
    ("<title>café</title>".encode("cp1252"), 'text/html; charset="windows-1252"', "cp1252", "café"),
    ("<title>Привет</title>".encode("cp1251"), "text/html;charset=cp1251", "cp1251", "Привет"),
    ("<title>Привет</title>".encode("koi8-r"), "text/html; charset=KOI8-R", "koi8-r", "Привет"),
    ("<title>日本</title>".encode("shift_jis"), "text/html; charset=Shift_JIS", "cp932", "日本"),
    ("<title>中文</title>".encode("gbk"), "text/html; charset=gb2312", "gb18030", "中文"),
    # BOMs, which win over the header (as in browsers)
    (b"\xef\xbb\xbf<title>caf\xc3\xa9</title>", None, "utf-8", "café"),
    (b"\xef\xbb\xbf<title>caf\xc3\xa9</title>", "text/html; charset=iso-8859-1", "utf-8", "café"),
    (b"\xff\xfe" + "<title>café</title>".encode("utf-16-le"), None, "utf-16-le", "café"),
    (b"\xfe\xff" + "<title>café</title>".encode("utf-16-be"), None, "utf-16-be", "café"),
    # <meta> declarations in the first 2 KB
    (
        '<meta charset="windows-1251"><title>Привет</title>'.encode("cp1251"),
        "text/html",
        "cp1251",
        "Привет",
    ),
    (
        "<META CHARSET=koi8-r><title>Привет</title>".encode("koi8-r"),
        None,
        "koi8-r",
        "Привет",
    ),
    (
        '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-2">'
        "<title>Łódź</title>".encode("iso-8859-2"),
        None,
        "iso8859-2",
        "Łódź",
    ),
    (  # the header wins over <meta>
        '<meta charset="koi8-r"><title>café</title>'.encode(),
        "text/html; charset=utf-8",
        "utf-8",
        "café",
    ),
    (  # a <meta> after the first 2 KB is not looked at
        (" " * 3000 + '<meta charset="cp1251"><title>café</title>').encode(),
        None,
        "utf-8",
        "café",
    ),
    (  # <meta> claiming UTF-16 in an ASCII-compatible page means UTF-8
        '<meta charset="utf-16"><title>café</title>'.encode(),
        None,
        "utf-8",
        "café",
    ),
    (  # content= charset only counts with http-equiv=content-type
        '<meta name="x" content="charset=koi8-r"><title>café</title>'.encode(),
        None,
        "utf-8",
        "café",
    ),
    # unknown or unusable names fall back
    ("<title>café</title>".encode(), "text/html; charset=no-such-charset", "utf-8", "café"),
    ("<title>café</title>".encode(), "text/html; charset=rot13", "utf-8", "café"),
    ("<title>café</title>".encode(), "text/html; charset=base64", "utf-8", "café"),
    ("<title>café</title>".encode(), "text/html; charset=undefined", "utf-8", "café"),
    ("<title>café</title>".encode(), "text/html; charset=idna", "utf-8", "café"),
    ("<title>café</title>".encode(), "text/html; charset=", "utf-8", "café"),
    ('<meta charset="x-nope"><title>café</title>'.encode(), None, "utf-8", "café"),
    # invalid bytes are replaced, never an error
    (b"<title>caf\xe9 \xff</title>", "text/html; charset=utf-8", "utf-8", "caf\ufffd \ufffd"),
    (b"<title>a\x00b</title>", None, "utf-8", "a\ufffdb"),
]


@pytest.mark.parametrize(("body", "content_type", "codec", "title"), ENCODINGS)
def test_encoding(body: bytes, content_type: str | None, codec: str, title: str) -> None:
    parsed = parse_html(body, PAGE, content_type)
    assert parsed.encoding == codec
    assert parsed.title == title


def test_links_in_legacy_encoding_are_utf8_encoded() -> None:
    body = '<a href="/café?q=é">x</a>'.encode("latin-1")
    parsed = parse_html(body, PAGE, "text/html; charset=iso-8859-1")
    assert parsed.links == ("http://example.com/caf%C3%A9?q=%C3%A9",)


def test_max_links() -> None:
    html = "".join(f'<a href="/{i}">{i}</a>' for i in range(50))
    assert links_of(html, max_links=10) == tuple(f"http://example.com/{i}" for i in range(10))
    assert links_of(html, max_links=0) == ()
    assert len(links_of(html)) == 50
    # duplicates do not count towards the cap
    html = '<a href="/a"></a>' * 20 + '<a href="/b"></a>'
    assert links_of(html, max_links=2) == ("http://example.com/a", "http://example.com/b")


def test_max_url_length() -> None:
    html = '<a href="/short"></a><a href="/' + "x" * 100 + '"></a>'
    assert links_of(html, max_url_length=50) == ("http://example.com/short",)
    assert len(links_of(html)) == 2
    # a <base href> that is too long is ignored, like an invalid one
    html = '<base href="/' + "b" * 100 + '/"><a href="y"></a>'
    assert links_of(html, max_url_length=50) == ("http://example.com/dir/y",)


def test_parsed_page_is_frozen() -> None:
    parsed = parse_html(b"<title>t</title>", PAGE, None)
    assert parsed == ParsedPage(title="t", links=(), nofollow=False, encoding="utf-8")
    with pytest.raises(AttributeError):
        parsed.title = "x"  # type: ignore[misc]


BROKEN = [
    b"",
    b"\x00" * 100,
    b"<",
    b"<a href=",
    b'<a href="/unterminated',
    b"<a href='/ok'><<<>>><a href=\"/ok2\"",
    b"<html><body><a href=/x>a</a></p></div></body></html></html><a href=/y>",
    b"\xff\xfe\x00",
    b"\xfe\xff\xd8\x00",  # lone UTF-16 surrogate
    b"\xef\xbb\xbf",
    b"<!-- <a href='/commented'> -->",
    b"<script>document.write('<a href=\"/s\">')</script>",
    b"<svg><a href='/svg'>s</a></svg>",
    b"<a href='/" + b"\x80" * 1000 + b"'>x</a>",
    b"<a href='/" + b"a" * 100_000 + b"'>x</a>",
    b"<a " + b"x=1 " * 10_000 + b"href='/many-attrs'>",
    b"<title>" + b"\x00\xff" * 1000,
    b"<meta charset='\x00\xff'><a href=/x>",
    b"<meta http-equiv=content-type content='text/html; charset=\xff'>",
    b"<a href='\t\n/with-whitespace\r'>",
    b"<table><a href=/in-table>x</a><tr><td><a href=/cell>y</a></td></tr></table>",
    b"<base href><a href=x>",
    b"<base href='http://[bad'><a href=x>",
]


@pytest.mark.parametrize("body", BROKEN)
def test_broken_markup_never_raises(body: bytes) -> None:
    for content_type in (
        None,
        "text/html",
        "text/html; charset=\x00\xff",
        "text/html; charset=utf-16",
    ):
        parsed = parse_html(body, PAGE, content_type)
        for link in parsed.links:
            assert normalize_url(link) == link
            assert link.startswith("http://")


def test_commented_and_scripted_links_are_not_links() -> None:
    assert links_of(b"<!-- <a href='/c'> --><script>x='<a href=\"/s\">'</script>") == ()


# ---------------------------------------------------------------------------------------
# Properties

# Bounded so the file runs in a few seconds.
_LIMITED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hrefs = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "/a",
            "b/c",
            "../d",
            "?q",
            "#f",
            "//other.example/x",
            "https://Example.com:443/",
            "javascript:x",
            "mailto:a@b",
            "http://[::1]:8080/",
            "http://bücher.de/",
            "http://a:99999/",
        ]
    ),
)
tag_templates = st.sampled_from(
    [
        '<a href="{}">x</a>',
        "<a href='{}' rel=nofollow>x</a>",
        '<area href="{}">',
        '<link rel="alternate" href="{}">',
        '<iframe src="{}"></iframe>',
        '<frame src="{}">',
        '<base href="{}">',
        '<meta name="robots" content="{}">',
        "<title>{}</title>",
        "<p>{}</p>",
        "{}",
    ]
)


@st.composite
def html_documents(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(tag_templates, hrefs), max_size=12))
    html = "".join(template.format(value) for template, value in parts)
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16-le", "cp1251"]))
    return html.encode(encoding, "replace")


content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "text/html",
            "text/html; charset=utf-8",
            "text/html; charset=iso-8859-1",
            "text/html; charset=utf-16",
            "text/html; charset=bogus",
        ]
    ),
    st.text(max_size=30),
)
page_urls = st.sampled_from(
    [PAGE, "https://example.com/", "http://[::1]:8080/a/b", "not a url", "HTTP://EXAMPLE.COM"]
)


def _check_parsed(parsed: ParsedPage, max_links: int = 10_000) -> None:
    assert isinstance(parsed.encoding, str)
    assert len(parsed.links) <= max_links
    assert len(set(parsed.links)) == len(parsed.links)
    for link in parsed.links:
        assert link.startswith(("http://", "https://"))
        assert normalize_url(link) == link
    if parsed.nofollow:
        assert parsed.links == ()
    if parsed.title is not None:
        assert parsed.title == parsed.title.strip()
        assert 0 < len(parsed.title) <= 1000


@_LIMITED
@given(st.binary(max_size=600), content_types, page_urls)
def test_parse_arbitrary_bytes(body: bytes, content_type: str | None, url: str) -> None:
    codec, bom = _sniff_encoding(body, content_type)
    unguarded = _parse(body, url, codec, bom, 10_000, 2083)  # must not raise either
    parsed = parse_html(body, url, content_type)
    assert parsed == unguarded
    _check_parsed(parsed)


@_LIMITED
@given(html_documents(), content_types, page_urls, st.integers(min_value=0, max_value=5))
def test_parse_generated_html(
    body: bytes, content_type: str | None, url: str, max_links: int
) -> None:
    codec, bom = _sniff_encoding(body, content_type)
    unguarded = _parse(body, url, codec, bom, max_links, 2083)  # must not raise either
    parsed = parse_html(body, url, content_type, max_links=max_links)
    assert parsed == unguarded
    _check_parsed(parsed, max_links)
    everything = parse_html(body, url, content_type)
    _check_parsed(everything)
    assert everything.links[:max_links] == parsed.links


@pytest.mark.parametrize(
    "head",
    [
        b'<meta charset="utf-8">',
        b'<meta charset="UTF-8"/>',
        b'<meta charset="utf-8" data-x="1">',
        b'<meta charset="utf-8x">',
        b'<meta charset="utf-8"><meta charset="koi8-r">',
        b'<metadata><meta charset="koi8-r">',
        b'<META charset="windows-1252">',
        b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-2">',
    ],
)
def test_common_meta_charset_shortcut_agrees_with_the_prescan(head: bytes) -> None:
    # `<meta charset="utf-8"` as the first <meta> skips the regular expressions;
    # the answer must be what the full prescan gives.
    body = b"<!DOCTYPE html><html><head>" + head + b"<title>t</title></head></html>"
    assert _sniff_encoding(body, None) == (_prescan_meta(body) or "utf-8", 0)


@pytest.mark.parametrize(
    "env",
    [{"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, {"MALLOC_TRIM_THRESHOLD_": "0"}],
)
def test_malloc_settings_leave_the_users_own_alone(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _keep_heap_for_lexbor() is False


def test_malloc_settings_are_made_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in [n for n in os.environ if n.startswith("MALLOC_") and n.endswith("_")]:
        monkeypatch.delenv(name)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert _keep_heap_for_lexbor() is glibc


def _sniff_meta_as_before(body: bytes) -> str:
    """The <meta> step of _sniff_encoding as it was written first (lower() of a copy)."""
    head = body[:2048]
    at = head.lower().find(b"<meta")
    if at >= 0:
        if head.startswith(b'<meta charset="utf-8"', at) or head.startswith(
            b'<meta charset="UTF-8"', at
        ):
            return "utf-8"
        codec = _prescan_meta(head)
        if codec is not None:
            return codec
    return "utf-8"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=2060),
    st.lists(
        st.sampled_from(
            [b"<meta", b"<META", b"<MeTa", b' charset="utf-8"', b' charset="UTF-8"',
             b'<meta charset="utf-8"', b' charset="koi8-r">', b"<meta charset=koi8-r>",
             b">", b"<", b"x", b" ", b"<title>t</title>"]
        ),
        max_size=8,
    ),
)  # fmt: skip
def test_meta_prescan_finds_what_it_found_before(padding: int, pieces: list[bytes]) -> None:
    # Near the 2 KB limit too: a <meta> that starts inside it but ends after it.
    body = b"x" * padding + b"".join(pieces)
    assert _sniff_encoding(body, None) == (_sniff_meta_as_before(body), 0)
