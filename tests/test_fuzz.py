"""Fuzz: crawls of a loopback server whose responses hypothesis writes byte by byte.

Each example is a small site: ``/`` links to ``/b`` and ``/c``; those, ``/d``,
``/robots.txt`` and ``/sitemap.xml`` answer with generated raw responses (status lines,
headers with non-ASCII bytes and NUL, conflicting framing, garbage Retry-After, Location,
Content-Type, Content-Encoding, truncated and over-long bodies, HTML bombs). It is crawled
end to end through ``open_crawl`` with the default transport on real sockets: the crawl
ends, each URL has at most one record (the seed and its links exactly one, unless
robots.txt disallows them), nothing escapes, and no record is a bug caught by the last
line of defence (an ``other`` error saying "unexpected").

``CRAWLER_FUZZ_EXAMPLES`` sets the number of examples (default 30; derandomized, so CI
runs the same ones each time, unless ``CRAWLER_FUZZ_RANDOM=1``: for long local runs).
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crawler
from tests.web.core import Conn, raw_server

EXAMPLES = int(os.environ.get("CRAWLER_FUZZ_EXAMPLES", "30"))
DEADLINE = 20.0
"""Seconds for one example's crawl: far above the ~0.1-3 s one takes."""
PATHS = ("/b", "/c", "/d", "/robots.txt", "/sitemap.xml")
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("CRAWLER_FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the pieces of a response ------------------------------------------------------------

NESTED = b"<html><body>" + b"<div>" * 100_000 + b'<a href="/d">deep</a>'
MANY_LINKS = b"<html><body>" + b"".join(b'<a href="/e?%d">x</a>' % i for i in range(20_000))
HUGE_TITLE = b"<html><head><title>" + b"t " * 500_000 + b"</title></head>"
BOMBS = (NESTED, MANY_LINKS, HUGE_TITLE, b"<loc>" * 100_000, gzip.compress(b"\0" * 4_000_000))

garbage = st.binary(max_size=40)
status_lines = st.one_of(
    st.just(b"HTTP/1.1 200 OK"),
    st.sampled_from([200, 200, 200, 204, 301, 302, 303, 307, 308, 404, 429, 500, 503]).map(
        lambda code: b"HTTP/1.1 %d Whatever" % code
    ),
    st.sampled_from(
        [b"HTTP/1.1 99999 Huge", b"HTTP/1.1 000 Zero", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200",
         b"HTTP/1.1 200 ", b"HTTP/1.0 200 OK", b"HTTP/1.1 200 \xc3\xa9\xff\x00", b"HTTP/2 200",
         b"http/1.1 200 ok", b"HTTP/1.1 -1 Neg", b"HTTP/1.1 1e3 Sci", b"", b"ICY 200 OK",
         b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK"]
    ),
    garbage,
)  # fmt: skip
retry_after = st.one_of(
    st.sampled_from([b"0", b"1", b"\xc2\xb2", b"-5", b"9" * 400, b"Fri, 31 Dec 9999 23:59:59 GMT",
                     b"Mon, 99 Foo 99999999 99:99:99 GMT", b"1.5", b"", b"\x00"]),
    garbage,
)  # fmt: skip
locations = st.one_of(
    st.sampled_from([b"/c", b"/d", b"/b", b"//", b"http://", b"ftp://x/", b"http://[::1",
                     b"http://exa mple/", b"%", b"/\x00", b"/\xff\xfe", b"javascript:x()",
                     b"http://a.test/elsewhere", b"/d#frag", b"?q=" + b"x" * 3000, b"/d, /c"]),
    garbage,
)  # fmt: skip
content_types = st.one_of(
    st.just(b"text/html"),
    st.sampled_from([b"text/html", b"text/html; charset=utf-8", b"text/html; charset=utf-16",
                     b"text/html; charset=rot13", b"text/html; charset=base64",
                     b"text/html; charset=\xff\xfe", b"text/html; charset=", b"text/html;;;",
                     b"TEXT/HTML; CHARSET=\"x-user-defined\"", b"application/xhtml+xml",
                     b"text/plain", b"application/xml", b"\x00text/html"]),
    garbage.map(lambda junk: b"text/html; charset=" + junk),
)  # fmt: skip
encodings = st.one_of(
    st.sampled_from([b"gzip", b"br", b"deflate", b"identity", b"compress", b"gzip, gzip",
                     b", ".join([b"gzip"] * 1000), b"x-gzip", b"GZIP", b"\xff"]),
    garbage,
)  # fmt: skip
lengths = st.one_of(
    st.sampled_from([b"-1", b"+5", b"1_000", b"\xc2\xb2", b"5, 6", b"99999999999999999999999",
                     b"0x10", b" 3 ", b""]),
    st.integers(min_value=0, max_value=100_000).map(lambda n: str(n).encode()),
)  # fmt: skip
refresh = st.sampled_from(
    [b"0; url=/d", b"0;url='/c'", b"\xff; url=", b"999999999999; url=/d", b"0; url=http://[",
     b"x"]
)  # fmt: skip
header_names = st.one_of(
    st.sampled_from([b"X-Junk", b"Set-Cookie", b"Link", b"Vary"]),
    st.binary(min_size=1, max_size=12).filter(
        lambda name: b":" not in name and b"\r\n" not in name
    ),
)
extra_headers = st.lists(st.tuples(header_names, garbage), max_size=3)


META_REFRESH = b'<meta http-equiv="refresh" content="%s">'


def html_with_links(links: list[bytes], extra: bytes = b"") -> bytes:
    anchors = b"".join(b'<a href="%s">x</a>' % link for link in links)
    return b"<html><head><title>t</title>" + extra + b"</head><body>" + anchors + b"</body>"


bodies = st.one_of(
    st.lists(locations, max_size=4).map(html_with_links),
    refresh.map(lambda value: html_with_links([b"/d"], META_REFRESH % value)),
    st.sampled_from(BOMBS),
    st.binary(max_size=300),
    st.sampled_from([b"\x1f\x8b\x08garbage", gzip.compress(html_with_links([b"/d"]))]),
)  # fmt: skip


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """One raw response: a status line, headers, framing and a body, any of them broken."""
    head = [draw(status_lines)]
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 3)):
        headers.append((b"Content-Type", draw(content_types)))
    if draw(st.booleans()):
        headers.append((b"Retry-After", draw(retry_after)))
    if draw(st.booleans()):
        headers.append((b"Location", draw(locations)))
    if draw(st.integers(0, 3)) == 0:
        headers.append((b"Content-Encoding", draw(encodings)))
    if draw(st.integers(0, 5)) == 0:
        headers.append((b"Refresh", draw(refresh)))
    headers.extend(draw(extra_headers))
    body = draw(bodies)
    framing = draw(
        st.sampled_from(
            ["length", "length", "short", "long", "two", "length+chunked", "chunked",
             "bad-chunk", "none", "garbage-length"]
        )
    )  # fmt: skip
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "short":  # the body is truncated: the server closes early
        headers.append((b"Content-Length", b"%d" % (len(body) + 10)))
    elif framing == "long":  # more bytes than declared
        headers.append((b"Content-Length", b"%d" % max(0, len(body) - 5)))
    elif framing == "two":
        headers += [(b"Content-Length", b"%d" % len(body)), (b"Content-Length", b"%d" % 3)]
    elif framing == "garbage-length":
        headers.append((b"Content-Length", draw(lengths)))
    elif framing in ("chunked", "length+chunked", "bad-chunk"):
        if framing == "length+chunked":
            headers.append((b"Content-Length", b"%d" % len(body)))
        headers.append((b"Transfer-Encoding", b"chunked"))
        size = b"zz" if framing == "bad-chunk" else b"%x" % len(body)
        body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


robots_bodies = st.one_of(
    st.lists(
        st.sampled_from(
            [b"User-agent: *", b"Disallow: /d", b"Disallow: /c", b"Allow: /", b"Crawl-delay: nan",
             b"Crawl-delay: 0.01", b"Crawl-delay: 1e400", b"Request-rate: 0/0",
             b"Sitemap: /sitemap.xml", b"Sitemap: \x00", b"Disallow: /%ff%", b"User-agent: \xff",
             b"Disallow: *$*$", b"\x00"]
        ),
        max_size=8,
    ).map(b"\n".join),
    st.binary(max_size=200),
)  # fmt: skip


@st.composite
def robots_responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200 OK", b"200 OK", b"404 No", b"500 Err", b"301 Moved"]))
    body = draw(robots_bodies)
    location = b"Location: /robots.txt\r\n" if status.startswith(b"301") else b""
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status, location, len(body), body)


@dataclass
class Site:
    responses: dict[str, bytes]
    sitemaps: bool
    obey_robots: bool
    keep_alive: bool
    served: Counter[str] = field(default_factory=Counter)


def framed(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


HOME = html_with_links([b"/b", b"/c"])
HOME_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (
    len(HOME),
    HOME,
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

sites = st.builds(
    Site,
    responses=st.fixed_dictionaries(
        {
            "/b": responses(),
            "/c": responses(),
            "/d": st.one_of(responses(), st.just(NOT_FOUND)),
            # Mostly a well-formed robots.txt response: a broken one blocks the host.
            "/robots.txt": st.integers(0, 3).flatmap(
                lambda pick: responses() if pick == 0 else robots_responses()
            ),
            "/sitemap.xml": st.one_of(responses(), st.sampled_from(BOMBS).map(framed)),
        }
    ),
    sitemaps=st.booleans(),
    obey_robots=st.booleans(),
    keep_alive=st.booleans(),
)


async def crawl_site(site: Site) -> tuple[list[crawler.Page], crawler.Statistics, str]:
    async def handle(peer: Conn) -> None:
        # Without keep-alive, one response per connection; with it, a response with more
        # bytes than it declares leaves them for the client to read as the next response.
        while True:
            request = await peer.read_request()
            if request is None:
                return
            path = request.path.partition("?")[0]
            site.served[path] += 1
            await peer.send(HOME_RESPONSE if path == "/" else site.responses.get(path, NOT_FOUND))
            if not site.keep_alive:
                return

    with trio.fail_after(DEADLINE):
        async with raw_server(handle) as server:
            config = crawler.CrawlConfig(
                seeds=(server.origin() + "/",),
                rate=0,
                per_host=4,
                retries=1,
                timeout=1.0,
                connect_timeout=0.5,
                read_timeout=0.5,
                max_retry_after=0.5,
                max_bytes=1024 * 1024,
                max_depth=3,
                max_pages=100,  # the 20,000 links of MANY_LINKS are not all fetched
                obey_robots=site.obey_robots,
                sitemaps=site.sitemaps,
            )
            async with crawler.open_crawl(config) as crawl:
                pages = [page async for page in crawl]
                stats = crawl.statistics()
    return pages, stats, server.origin()


def check(site: Site, pages: list[crawler.Page], stats: crawler.Statistics, origin: str) -> None:
    counts = Counter(page.url for page in pages)
    assert set(counts.values()) <= {1}, f"a URL delivered twice: {counts}"
    assert stats.pages == len(pages) and stats.in_flight == 0 and stats.queued == 0
    assert stats.errors == sum(page.error is not None for page in pages)
    home = next((page for page in pages if page.url == origin + "/"), None)
    assert home is not None or stats.disallowed, "the seed has no record"
    if home is not None and home.error is None:
        # Its links were read: each has its record, unless robots.txt disallows it.
        missing = [path for path in ("/b", "/c") if origin + path not in counts]
        assert len(missing) <= stats.disallowed, (missing, stats)
    for page in pages:
        assert page.url.startswith(origin + "/")
        if page.error is not None:
            assert not page.error.message.startswith("unexpected "), page.error


@SETTINGS
@given(sites)
def test_generated_responses_never_end_the_crawl(site: Site) -> None:
    started = time.perf_counter()
    pages, stats, origin = trio.run(crawl_site, site)
    check(site, pages, stats, origin)
    assert time.perf_counter() - started < DEADLINE


def page(body: bytes, *headers: bytes) -> bytes:
    head = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n%sContent-Length: %d\r\n\r\n%s" % (
        head,
        len(body),
        body,
    )


def test_bombs_are_crawled_in_bounded_time() -> None:
    # Generated examples rarely serve a bomb as a well-formed page: these always do. Each
    # cost seconds to minutes of CPU, with the event loop blocked, before parse_html cut
    # deep nesting and parse_sitemap stopped rescanning for </loc>.
    site = Site(
        responses={
            "/b": page(b'<a href="/d">shallow</a>' + NESTED),
            "/c": page(HUGE_TITLE, b"Refresh: 0; url=/d"),
            "/d": page(MANY_LINKS),
            "/robots.txt": framed(b"User-agent: *\nSitemap: /sitemap.xml\nSitemap: /c\n"),
            "/sitemap.xml": framed(
                b"<loc>" + b"<![CDATA[" * 30_000 + b"</loc>" + b"<loc>" * 100_000
            ),
        },
        sitemaps=True,
        obey_robots=True,
        keep_alive=True,
    )
    started = time.perf_counter()
    pages, stats, origin = trio.run(crawl_site, site)
    check(site, pages, stats, origin)
    assert time.perf_counter() - started < 10.0
    records = {page.url.removeprefix(origin): page for page in pages}
    assert records["/b"].status == 200 and records["/c"].status == 200
    assert records["/b"].links == (origin + "/d",)  # the one past 2,048 levels is cut
    assert len(records["/d"].links) == 10_000  # max_links_per_page
    assert stats.dropped["max_pages"] > 0
    title = records["/c"].title
    assert title is not None and len(title) <= 1000
    assert records["/sitemap.xml"].error is None and records["/sitemap.xml"].links == ()
