"""Every parser of a value read from the network takes any input without raising, and in
bounded time: Retry-After, Content-Length, Content-Encoding, charsets, robots.txt,
sitemaps, HTML."""

from __future__ import annotations

import codecs
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler._decode import BodyDecoder, DecodingError
from crawler._fetch import _check_length
from crawler._links import MAX_DEPTH, _sniff_encoding, parse_html
from crawler._page import ErrorKind
from crawler._retry import parse_retry_after
from crawler._robots import RobotsStatus, robots_from_response
from crawler._sitemaps import parse_sitemap

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like what it is meant to be, mixed with anything at all.
header_text = st.one_of(
    st.text(),
    st.text(alphabet="0123456789 ,+-_.e\u00b2\u0663\x00\t", max_size=30),
    st.from_regex(
        r"[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,6} \d\d:\d\d:\d\d [A-Z]{3}", fullmatch=True
    ),
)
content_types = st.one_of(
    st.none(),
    st.text(),
    st.builds(
        lambda mime, label: f"{mime}; charset={label}",
        st.sampled_from(["text/html", "text/plain", "application/xhtml+xml", ""]),
        st.one_of(
            st.sampled_from(["utf-8", "UTF-16", "latin1", "x-user-defined", "utf-7", "rot13",
                             "base64", "zlib", "hex", "punycode", "idna", "\"utf-8\"", "'"]),
            st.text(max_size=70),
        ),
    ),
)  # fmt: skip
robots_lines = st.lists(
    st.one_of(
        st.builds(
            lambda key, value: f"{key}:{value}",
            st.sampled_from(["User-agent", "Disallow", "Allow", "Crawl-delay", "Request-rate",
                             "Sitemap", "Host", "Visit-time", "user-AGENT", ""]),
            st.one_of(st.text(max_size=40), st.sampled_from(
                ["*", "/", "/$", "/*?", "nan", "inf", "-1", "1e400", "0/0", "1/0s", "9" * 40,
                 "1/10m 0100-0200", "%", "%ff%", "/\x00"])),
        ),
        st.text(max_size=40),
    ),
    max_size=20,
).map("\n".join)  # fmt: skip


@SETTINGS
@given(header_text)
def test_retry_after_is_none_or_a_delay(value: str) -> None:
    delay = parse_retry_after(value)
    assert delay is None or (isinstance(delay, float) and delay >= 0 and not math.isnan(delay))


@SETTINGS
@given(st.one_of(st.none(), header_text), st.integers(min_value=0, max_value=10**7))
def test_content_length_check_never_raises(value: str | None, cap: int) -> None:
    error = _check_length(value, cap)
    assert error is None or error.kind is ErrorKind.TOO_LARGE


def test_content_length_is_ascii_digits_only() -> None:
    for ignored in ("+5000", "5_000", "\u0665\u0660\u0660\u0660", "5000, 6000", "0x2000", "-1"):
        assert _check_length(ignored, 100) is None, ignored
    for too_big in ("5000", " 5000 ", "5000, 5000", "9" * 5000):
        error = _check_length(too_big, 100)
        assert error is not None and error.kind is ErrorKind.TOO_LARGE, too_big
    assert _check_length("0" * 40 + "7", 100) is None


@SETTINGS
@given(
    st.one_of(
        st.none(), st.text(), st.lists(st.sampled_from(["gzip", "br", "deflate"])).map(", ".join)
    ),
    st.binary(max_size=200),
)
def test_body_decoder_raises_only_decoding_error(encoding: str | None, data: bytes) -> None:
    try:
        decoder = BodyDecoder(encoding, 1000)
        out = decoder.feed(data) + decoder.flush()
    except DecodingError:
        return
    assert len(out) <= 1000


def test_a_thousand_stacked_encodings_are_refused_up_front() -> None:
    with pytest.raises(DecodingError, match="too many"):
        BodyDecoder(", ".join(["gzip"] * 1000), 1000)


@SETTINGS
@given(st.binary(max_size=400), content_types)
def test_charset_sniffing_gives_a_usable_codec(body: bytes, content_type: str | None) -> None:
    codec, bom = _sniff_encoding(body, content_type)
    assert codecs.lookup(codec).name and 0 <= bom <= 3
    assert isinstance(body[bom:].decode(codec, "replace"), str)
    parse_html(body, "http://a.test/", content_type)


@SETTINGS
@given(
    st.one_of(st.none(), st.integers(min_value=-1000, max_value=10**6)),
    st.one_of(robots_lines.map(str.encode), st.binary(max_size=300)),
    st.one_of(st.text(), st.sampled_from(["http://a.test/", "http://a.test/%ff%", "/x?\x00"])),
    st.one_of(st.text(max_size=20), st.just("crawler")),
)
def test_robots_never_raise(status: int | None, body: bytes, url: str, agent: str) -> None:
    robots = robots_from_response(status, body, 0.0)
    assert isinstance(robots.allows(url, agent), bool)
    interval = robots.interval(agent)
    assert math.isfinite(interval) and interval >= 0
    assert all(isinstance(sitemap, str) for sitemap in robots.sitemaps)
    assert robots.status is not RobotsStatus.FETCHING


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from([b"<loc>", b"</loc>", b"<sm:loc >", b"<![CDATA[", b"]]>", b"&amp;",
                             b"&#xffffff;", b"<sitemapindex>", b"\x1f\x8b", b"http://a/", b"\xff"]),
            max_size=30,
        ).map(b"".join),
    )
)  # fmt: skip
def test_sitemaps_never_raise(body: bytes) -> None:
    locs, is_index = parse_sitemap(body, 10_000)
    assert all(isinstance(loc, str) for loc in locs) and isinstance(is_index, bool)


# -- bombs: each was seconds to minutes of CPU with the event loop blocked -----------------


def _within(seconds: float, started: float) -> None:
    assert time.perf_counter() - started < seconds


def test_unclosed_loc_tags_are_linear() -> None:
    started = time.perf_counter()
    assert parse_sitemap(b"<loc>" * 200_000, 10**7) == ([], False)  # was minutes
    assert parse_sitemap(b"<loc><![CDATA[" * 100_000 + b"</loc>", 10**7)[0] != []
    _within(2.0, started)


def test_deeply_nested_html_is_cut_not_parsed_for_minutes() -> None:
    started = time.perf_counter()
    body = b'<a href="/first">' + b"<div>" * 100_000 + b'<a href="/deep">'  # was ~100 s
    parsed = parse_html(body, "http://a.test/", "text/html")
    assert parsed.links == ("http://a.test/first",)
    stray = b"</div>" * 50_000 + b"<div></p>" * 50_000  # end tags that close nothing
    assert parse_html(stray, "http://a.test/", "text/html").links == ()
    _within(3.0, started)


def test_wide_html_is_not_cut() -> None:
    # Thousands of tags, none deep: every link is kept.
    items = b"".join(b'<li><img src=x><a href="/p/%d">p</a><br>' % i for i in range(MAX_DEPTH * 3))
    parsed = parse_html(b"<ul>" + items + b"</ul>", "http://a.test/", "text/html")
    assert len(parsed.links) == MAX_DEPTH * 3
