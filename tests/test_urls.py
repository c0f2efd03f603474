"""crawler._urls: normalisation, origins, registrable domains, scope."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler._urls import (
    Scope,
    _canonical_authority_cached,
    _normalize,
    _split_base_cached,
    host_of,
    normalize_links,
    normalize_url,
    origin_of,
    registrable_domain,
)

# RFC 3986 section 5.4: reference resolution examples, base "http://a/b/c/d;p?q".
RFC_BASE = "http://a/b/c/d;p?q"
RFC_NORMAL: list[tuple[str, str | None]] = [
    ("g:h", None),  # a non-http scheme: not crawlable
    ("g", "http://a/b/c/g"),
    ("./g", "http://a/b/c/g"),
    ("g/", "http://a/b/c/g/"),
    ("/g", "http://a/g"),
    ("//g", "http://g/"),
    ("?y", "http://a/b/c/d;p?y"),
    ("g?y", "http://a/b/c/g?y"),
    ("#s", "http://a/b/c/d;p?q"),  # fragment dropped
    ("g#s", "http://a/b/c/g"),
    ("g?y#s", "http://a/b/c/g?y"),
    (";x", "http://a/b/c/;x"),
    ("g;x", "http://a/b/c/g;x"),
    ("g;x?y#s", "http://a/b/c/g;x?y"),
    ("", "http://a/b/c/d;p?q"),
    (".", "http://a/b/c/"),
    ("./", "http://a/b/c/"),
    ("..", "http://a/b/"),
    ("../", "http://a/b/"),
    ("../g", "http://a/b/g"),
    ("../..", "http://a/"),
    ("../../", "http://a/"),
    ("../../g", "http://a/g"),
]
RFC_ABNORMAL: list[tuple[str, str | None]] = [
    ("../../../g", "http://a/g"),
    ("../../../../g", "http://a/g"),
    ("/./g", "http://a/g"),
    ("/../g", "http://a/g"),
    ("g.", "http://a/b/c/g."),
    (".g", "http://a/b/c/.g"),
    ("g..", "http://a/b/c/g.."),
    ("..g", "http://a/b/c/..g"),
    ("./../g", "http://a/b/g"),
    ("./g/.", "http://a/b/c/g/"),
    ("g/./h", "http://a/b/c/g/h"),
    ("g/../h", "http://a/b/c/h"),
    ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
    ("g;x=1/../y", "http://a/b/c/y"),
    ("g?y/./x", "http://a/b/c/g?y/./x"),
    ("g?y/../x", "http://a/b/c/g?y/../x"),
    ("g#s/./x", "http://a/b/c/g"),
    ("g#s/../x", "http://a/b/c/g"),
    ("http:g", "http://a/b/c/g"),  # the "backward compatible" reading, as browsers do
]


@pytest.mark.parametrize(("ref", "expected"), RFC_NORMAL + RFC_ABNORMAL)
def test_rfc3986_reference_resolution(ref: str, expected: str | None) -> None:
    assert normalize_url(ref, RFC_BASE) == expected


CANONICAL = [
    # scheme and host case, default ports, empty path
    ("HTTP://Example.COM", "http://example.com/"),
    ("hTTps://WWW.Example.com/Path/", "https://www.example.com/Path/"),
    ("http://example.com:80/", "http://example.com/"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:443/", "http://example.com:443/"),
    ("https://example.com:80/", "https://example.com:80/"),
    ("http://example.com:8080", "http://example.com:8080/"),
    ("http://example.com:0080/", "http://example.com/"),
    ("http://example.com:/", "http://example.com/"),  # empty port = no port
    ("http://example.com?q", "http://example.com/?q"),
    # IDNA
    ("http://bücher.de/", "http://xn--bcher-kva.de/"),
    ("http://BÜCHER.de/", "http://xn--bcher-kva.de/"),
    ("http://faß.de/", "http://xn--fa-hia.de/"),  # non-transitional (IDNA 2008)
    ("http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/", "http://example.com/"),  # full-width
    ("http://例え.テスト/", "http://xn--r8jz45g.xn--zckzah/"),
    ("http://xn--bcher-kva.de/", "http://xn--bcher-kva.de/"),
    ("http://ex%41mple.com/", "http://example.com/"),  # escapes in hosts decoded
    # IPv4 / IPv6
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/"),
    ("http://0x7f.1/", "http://127.0.0.1/"),  # WHATWG IPv4 parser, as browsers
    ("http://2130706433/", "http://127.0.0.1/"),
    ("http://0177.0.0.01/", "http://127.0.0.1/"),
    ("http://[::1]:8080/", "http://[::1]:8080/"),
    ("http://[::1]:80/", "http://[::1]/"),
    ("http://[2001:DB8:0:0:0:0:0:1]/x", "http://[2001:db8::1]/x"),
    ("http://[::ffff:1.2.3.4]/", "http://[::ffff:102:304]/"),
    # dot segments, also escaped
    ("http://a/b/../c/./d", "http://a/c/d"),
    ("http://a/b/%2e%2E/c", "http://a/c"),
    ("http://a/..", "http://a/"),
    ("http://a//b/../c", "http://a//c"),
    # percent-encoding
    ("http://a/%7e%41%5a%2d%2e%5f", "http://a/~AZ-._"),
    ("http://a/%2f%3a%3F%23", "http://a/%2F%3A%3F%23"),
    ("http://a/%c3%a9", "http://a/%C3%A9"),
    ("http://a/a b", "http://a/a%20b"),
    ("http://a/é?é=é", "http://a/%C3%A9?%C3%A9=%C3%A9"),
    ("http://a/€", "http://a/%E2%82%AC"),
    ("http://a/\x01\x7f", "http://a/%01%7F"),
    ("http://a/100%", "http://a/100%25"),
    ("http://a/%zz%4", "http://a/%25zz%254"),
    ("http://a/%%41", "http://a/%25A"),
    ('http://a/<x>"{y}|^`[z]', "http://a/%3Cx%3E%22%7By%7D%7C%5E%60%5Bz%5D"),
    ("http://a/!$&'()*+,;=:@", "http://a/!$&'()*+,;=:@"),
    ("http://a/?q=a+b&c=%2B/?:@", "http://a/?q=a+b&c=%2B/?:@"),
    ("http://a/?q=a b&x=[1]", "http://a/?q=a%20b&x=%5B1%5D"),
    ("http://a/?b=2&a=1", "http://a/?b=2&a=1"),  # query order kept
    ("http://a/\ud800", "http://a/%EF%BF%BD"),  # lone surrogate -> U+FFFD
    # empty query and fragment
    ("http://a/b?", "http://a/b"),
    ("http://a/b?#frag", "http://a/b"),
    ("http://a/b#frag?x", "http://a/b"),
    ("http://a/b?x#", "http://a/b?x"),
    # whitespace, as browsers strip it
    ("  http://a/b  ", "http://a/b"),
    ("\t\nhttp://a/b\x00\x0c", "http://a/b"),
    ("ht\ttp://a\n.com/b\r/c", "http://a.com/b/c"),
    ("http://a/b c d", "http://a/b%20c%20d"),
    ("http://a/\u00a0x", "http://a/%C2%A0x"),  # NBSP is not stripped
    # backslashes and extra slashes, as browsers do for http(s)
    ("http:\\\\a\\b\\c", "http://a/b/c"),
    ("http:///a/b", "http://a/b"),
    ("http:/a/b", "http://a/b"),
    ("http://a/b?x=\\", "http://a/b?x=%5C"),
    # userinfo preserved (percent-normalised); empty userinfo dropped
    ("http://user:pw@a/", "http://user:pw@a/"),
    ("http://User@A/", "http://User@a/"),
    ("http://us er:p@ss@a/", "http://us%20er:p%40ss@a/"),
    ("http://u;x=y@a/", "http://u%3Bx%3Dy@a/"),
    ("http://@a/", "http://a/"),
    ("http://user@a:80/", "http://user@a/"),
    # trailing dot kept
    ("http://example.com./", "http://example.com./"),
    ("http://under_score.example/", "http://under_score.example/"),
]


@pytest.mark.parametrize(("url", "expected"), CANONICAL)
def test_canonical_form(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected


REJECTED = [
    "javascript:alert(1)",
    "JavaScript:void(0)",
    "mailto:someone@example.com",
    "data:text/html,<p>x</p>",
    "file:///etc/passwd",
    "ftp://example.com/file",
    "tel:+123456",
    "ws://example.com/",
    "about:blank",
    "http://",
    "http:///",
    "http://user@/",
    "http://:80/",
    "http://a:b/",
    "http://a:-1/",
    "http://a:65536/",
    "http://a:0/",
    "http://a:99999999999999999999/",
    "http://a:80:90/",
    "http://[::1/",
    "http://[::1]x/",
    "http://[:::1]/",
    "http://[1.2.3.4]/",
    "http://[fe80::1%25eth0]/",
    "http://[::g]/",
    "http://::1/",
    "http://a b/",
    "http://a<b/",
    "http://a..b/",
    "http://.a/",
    "http://./",
    "http://exa$mple.com/",
    "http://%zz/",
    "http://%C3%28.com/",  # invalid UTF-8 in escaped host
    "http://a%2Fb/",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://1.2.3.09/",  # "09" is not octal
    "http://example.123/",  # ends in a number but is no IPv4 address
    "http://" + "a" * 64 + ".com/",  # DNS label too long
    "http://" + "a." * 127 + "com/",  # host too long
    "http://a\uff01b.com/",  # full-width "!": UTS 46 maps it to "!", not allowed
    "http://xn--.com/",
    "http://\u200b/",
]


@pytest.mark.parametrize("url", REJECTED)
def test_rejected(url: str) -> None:
    assert normalize_url(url) is None
    assert normalize_url(url, "http://example.com/a/") is None


@pytest.mark.parametrize(
    "url", ["", "   ", "relative/path", "/absolute/path", "?q", "#f", "//example.com/x"]
)
def test_relative_without_base(url: str) -> None:
    assert normalize_url(url) is None
    assert normalize_url(url, None) is None
    assert normalize_url(url, "http://example.com/a/") is not None


RELATIVE = [
    # (base, ref, expected)
    ("https://example.com/dir/page.html", "other.html", "https://example.com/dir/other.html"),
    ("https://example.com/dir/page.html", "/root", "https://example.com/root"),
    ("https://example.com/dir/page.html", "//cdn.example.com/x", "https://cdn.example.com/x"),
    ("https://example.com/dir/page.html", "\\\\cdn.example.com\\x", "https://cdn.example.com/x"),
    ("https://example.com/dir/page.html", "///cdn.example.com/x", "https://cdn.example.com/x"),
    ("https://example.com/dir/page.html", "http://other.com", "http://other.com/"),
    ("https://example.com/dir/page.html", "http:other.com/x", "http://other.com/x"),
    ("https://example.com/dir/page.html", "https:x", "https://example.com/dir/x"),
    ("https://example.com/dir/page.html", "https:/x", "https://example.com/x"),
    ("https://example.com/dir/page.html", "https:", "https://example.com/dir/page.html"),
    ("https://example.com/dir/page.html", "a b.html", "https://example.com/dir/a%20b.html"),
    ("https://example.com/dir/page.html", " \n x.html\t", "https://example.com/dir/x.html"),
    ("https://example.com/dir/page.html", "%2e%2e/x", "https://example.com/x"),
    ("https://example.com/dir/page.html", "../../../x", "https://example.com/x"),
    ("https://example.com/dir/page.html", "a:b", None),  # scheme "a"
    ("https://example.com/dir/page.html", "./a:b", "https://example.com/dir/a:b"),
    ("https://example.com/dir/page.html", "1a:b", "https://example.com/dir/1a:b"),
    ("https://example.com/dir/page.html", "?", "https://example.com/dir/page.html"),
    ("https://example.com/dir/page.html?a=1", "#top", "https://example.com/dir/page.html?a=1"),
    ("https://example.com/dir/page.html?a=1", "?b=2", "https://example.com/dir/page.html?b=2"),
    ("https://example.com/dir/page.html?a=1", "", "https://example.com/dir/page.html?a=1"),
    ("https://example.com/dir/", "é", "https://example.com/dir/%C3%A9"),
    ("https://example.com", "x", "https://example.com/x"),
    ("https://example.com:8443/a/b", "c", "https://example.com:8443/a/c"),
    ("https://u:p@example.com/a/b", "c", "https://u:p@example.com/a/c"),
    # the base is normalised too
    ("HTTPS://EXAMPLE.com:443/a/./b/../c", "d", "https://example.com/a/d"),
    ("https://example.com/a b/c", "d", "https://example.com/a%20b/d"),
    # an unusable base: relative references fail, absolute ones still work
    ("mailto:x@example.com", "page.html", None),
    ("not a url", "page.html", None),
    ("ftp://example.com/", "http://ok.example/", "http://ok.example/"),
    ("ftp://example.com/", "//example.com/x", None),
]


@pytest.mark.parametrize(("base", "ref", "expected"), RELATIVE)
def test_relative_resolution(base: str, ref: str, expected: str | None) -> None:
    assert normalize_url(ref, base) == expected


def test_max_length() -> None:
    url = "http://example.com/" + "a" * 100
    assert normalize_url(url, max_length=len(url)) == url
    assert normalize_url(url, max_length=len(url) - 1) is None
    # measured after normalisation: escapes and dropped fragments count as normalised
    assert normalize_url(url + "#" + "f" * 5000, max_length=len(url)) == url
    assert normalize_url("http://example.com/" + "é" * 10, max_length=30) is None
    assert normalize_url("http://example.com/" + "x" * 3000) is None  # default 2083
    assert normalize_url("http://example.com/" + "x" * 2000) is not None


def test_huge_inputs_do_not_raise() -> None:
    assert normalize_url("http://example.com/" + "%" * 100_000) is None
    assert normalize_url("http://example.com:" + "0" * 10_000 + "/") is None
    assert normalize_url("http://" + "9" * 10_000 + "/") is None
    assert normalize_url("http://" + "ü" * 10_000 + "/") is None
    assert normalize_url("\t" * 10_000) is None


def test_caches_are_bounded() -> None:
    huge = "http://example.com/" + "x" * 100_000
    assert normalize_url("y", huge, max_length=1 << 20) == "http://example.com/y"
    assert normalize_url("http://" + "a" * 50_000 + ".com/") is None
    assert _split_base_cached.cache_info().maxsize is not None
    assert _canonical_authority_cached.cache_info().maxsize is not None
    assert registrable_domain.cache_info().maxsize is not None


ORIGINS = [
    ("http://example.com/a?b", "http://example.com", "example.com"),
    ("https://example.com:8443/", "https://example.com:8443", "example.com"),
    ("http://user:pw@example.com:81/x", "http://example.com:81", "example.com"),
    ("http://[::1]:8080/", "http://[::1]:8080", "::1"),
    ("http://[::1]/", "http://[::1]", "::1"),
    ("http://127.0.0.1/", "http://127.0.0.1", "127.0.0.1"),
    ("http://example.com?x=/y", "http://example.com", "example.com"),
]


@pytest.mark.parametrize(("url", "origin", "host"), ORIGINS)
def test_origin_and_host(url: str, origin: str, host: str) -> None:
    assert origin_of(url) == origin
    assert host_of(url) == host
    canonical = normalize_url(url)
    assert canonical is not None
    assert origin_of(canonical) == origin
    assert host_of(canonical) == host


def test_origin_of_non_url() -> None:
    assert origin_of("not a url") == ""
    assert host_of("not a url") == ""


DOMAINS = [
    ("example.com", "example.com"),
    ("www.example.com", "example.com"),
    ("a.b.c.example.com", "example.com"),
    ("a.example.co.uk", "example.co.uk"),
    ("b.example.co.uk", "example.co.uk"),
    ("WWW.Example.CO.UK.", "example.co.uk"),
    ("co.uk", "co.uk"),  # a public suffix itself
    ("alice.github.io", "alice.github.io"),  # private section counts
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("www.xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("localhost", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("host.unknowntld", "host.unknowntld"),
    ("", ""),
]


@pytest.mark.parametrize(("host", "domain"), DOMAINS)
def test_registrable_domain(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


SCOPES = [
    # (mode, seeds, url, allowed)
    ("host", ["http://example.com/"], "http://example.com/x", True),
    ("host", ["http://example.com/"], "https://example.com:8443/x", True),  # any scheme/port
    ("host", ["http://example.com/"], "http://www.example.com/", False),
    ("host", ["http://www.example.com/"], "http://example.com/", False),
    ("host", ["http://example.com/"], "http://example.com./", True),  # trailing dot ignored
    ("host", ["http://example.com/"], "http://other.com/", False),
    ("host", ["http://a.com/", "http://b.com/"], "http://b.com/x", True),
    ("host", ["http://[::1]:8080/"], "http://[::1]:9090/", True),
    ("domain", ["http://a.example.co.uk/"], "http://b.example.co.uk/", True),
    ("domain", ["http://a.example.co.uk/"], "https://example.co.uk/", True),
    ("domain", ["http://a.example.co.uk/"], "http://other.co.uk/", False),
    ("domain", ["http://a.example.co.uk/"], "http://example.com/", False),
    ("domain", ["http://alice.github.io/"], "http://bob.github.io/", False),
    ("domain", ["http://www.example.com/"], "http://static.example.com/x", True),
    ("domain", ["http://127.0.0.1:8000/"], "http://127.0.0.1:9000/", True),
    ("domain", ["http://127.0.0.1:8000/"], "http://127.0.0.2/", False),
    ("any", ["http://example.com/"], "https://anything.example.org/", True),
    ("any", ["http://example.com/"], "mailto:x@example.com", False),
    ("host", ["http://example.com/"], "ftp://example.com/", False),
]


@pytest.mark.parametrize(("mode", "seeds", "url", "allowed"), SCOPES)
def test_scope(mode: str, seeds: list[str], url: str, allowed: bool) -> None:
    assert mode in ("host", "domain", "any")
    scope = Scope(mode, seeds)  # type: ignore[arg-type]
    assert scope.allows(url) is allowed


def test_scope_add_seed_widens() -> None:
    scope = Scope("host", ["http://a.com/"])
    assert not scope.allows("http://b.com/")
    assert scope.add_seed("HTTP://B.COM:8080/x")
    assert scope.allows("http://b.com/")
    assert not scope.add_seed("mailto:x@c.com")  # not a URL: ignored
    assert not scope.allows("http://c.com/")


def test_scope_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="scope"):
        Scope("everything", [])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Properties

# Bounded so the file runs in a few seconds; the strategies, not the count, find bugs.
_LIMITED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

schemes = st.sampled_from(["http", "https", "HTTP", "Https", "ftp", "javascript", "mailto", ""])
hosts = st.one_of(
    st.from_regex(r"[a-zA-Z0-9\-_.]{0,20}", fullmatch=True),
    st.sampled_from(["example.com", "EXAMPLE.com.", "bücher.de", "[::1]", "127.0.0.1", "0x7f.1"]),
    st.text(max_size=12),
)
ports = st.one_of(
    st.just(""),
    st.integers(min_value=-1, max_value=70_000).map(lambda p: f":{p}"),
    st.text(max_size=4),
)
segments = st.one_of(
    st.sampled_from([".", "..", "%2e", "%2E%2e", "", "a", "%41", "%7e", "%", "%zz", "é", " "]),
    st.text(max_size=8),
)
paths = st.lists(segments, max_size=6).map("/".join)
queries = st.one_of(st.none(), st.text(max_size=10))
fragments = st.one_of(st.none(), st.text(max_size=6))
separators = st.sampled_from(["://", ":", ":/", ":///", ":\\\\"])


@st.composite
def urlish(draw: st.DrawFn) -> str:
    url = ""
    scheme = draw(schemes)
    if scheme:
        url = scheme + draw(separators)
    elif draw(st.booleans()):
        url = "//"
    if url.endswith(("/", "\\")) or draw(st.booleans()):
        if draw(st.booleans()):
            url += draw(st.sampled_from(["user@", "u:p@", "@", "a@b@"]))
        url += draw(hosts) + draw(ports)
    path = draw(paths)
    url += ("/" + path) if path and draw(st.booleans()) else path
    query = draw(queries)
    if query is not None:
        url += "?" + query
    fragment = draw(fragments)
    if fragment is not None:
        url += "#" + fragment
    if draw(st.booleans()):
        url = draw(st.sampled_from([" ", "\t", "\n", ""])) + url + draw(st.sampled_from([" ", ""]))
    return url


bases = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "http://example.com/a/b/c?q",
            "https://Example.com:8443/dir/",
            "http://[::1]/x",
            "mailto:nobody",
            "http://bücher.de",
        ]
    ),
    urlish(),
)


def _check_result(result: str | None, max_length: int = 2083) -> None:
    if result is None:
        return
    assert result.startswith(("http://", "https://"))
    assert len(result) <= max_length
    assert result.isascii()
    assert "#" not in result
    assert result.partition("?")[1:] != ("?", "")  # an empty query is dropped
    # httpx accepts it, and prints it back unchanged: what we send is what we stored
    assert str(httpx.URL(result)) == result
    # idempotent
    assert normalize_url(result) == result
    assert _normalize(result, None) == result
    # and a canonical URL is its own base
    assert normalize_url("", result) == result


@_LIMITED
@given(st.text(max_size=60), bases)
def test_normalize_arbitrary_text(text: str, base: str | None) -> None:
    result = _normalize(text, base)  # the unguarded parser: must not raise either
    assert normalize_url(text, base) == (None if result is None or len(result) > 2083 else result)
    _check_result(normalize_url(text, base))


@_LIMITED
@given(urlish(), bases)
def test_normalize_urlish(url: str, base: str | None) -> None:
    result = _normalize(url, base)
    if result is not None:
        _check_result(result, max_length=1 << 30)


@settings(_LIMITED, max_examples=75)
@given(urlish(), st.integers(min_value=0, max_value=80))
def test_normalize_respects_max_length(url: str, max_length: int) -> None:
    result = normalize_url(url, "http://example.com/a/", max_length=max_length)
    assert result is None or len(result) <= max_length


@_LIMITED
@given(st.text(alphabet="abc./%2eE?#:@\\ ", max_size=20))
def test_relative_paths_resolve_like_canonical_inputs(ref: str) -> None:
    result = normalize_url(ref, "http://example.com/a/b/c")
    if result is not None:
        if ref.strip(" ")[:2].replace("\\", "/") != "//":  # else a network-path reference
            assert result.startswith("http://example.com/")
        assert "/./" not in result.partition("?")[0]
        assert "/../" not in result.partition("?")[0]
        _check_result(result)


_DOT_BASES = [
    "http://example.com/",
    "http://example.com/a",
    "http://example.com/a/",
    "http://example.com/a/b/c.html",
    "http://example.com/a//b/",
    "http://example.com//",
    "http://example.com/.well-known/x/y",
    "http://example.com/a/.../b/",
    "http://example.com/a/b?q=1",
]


@_LIMITED
@given(
    st.lists(st.sampled_from([".", "..", "...", "", "a", "b.html", ".x"]), min_size=1, max_size=7),
    st.sampled_from(_DOT_BASES),
    st.sampled_from(["", "?y", "#f"]),
)
def test_relative_dot_segments_resolve_as_in_the_absolute_path(
    segments: list[str], base: str, suffix: str
) -> None:
    # RFC 3986 5.2: a relative path is merged with the base's directory, then its dot
    # segments are removed (5.2.4). The same path written as an absolute URL is the
    # reference: the fast path's own handling of leading "./" and "../" must agree.
    ref = "/".join(segments) + suffix
    if not ref or ref[0] in "/?#":
        return  # not a relative path: the base itself, or "//" naming another host
    path = base.partition("?")[0].removeprefix("http://example.com")
    directory = path[: path.rfind("/") + 1]
    assert normalize_url(ref, base) == normalize_url("http://example.com" + directory + ref)


@_LIMITED
@given(
    st.lists(st.one_of(urlish(), st.sampled_from(["a.html", "./a.html", "../a.html", "#x"]))),
    st.one_of(
        st.sampled_from(
            ["http://example.com/a/b/c?q", "https://Example.com:8443/dir/", "mailto:x"]
        ),
        urlish(),
    ),
    st.one_of(st.none(), st.integers(min_value=-1, max_value=5)),
    st.sampled_from([2083, 30]),
)
def test_normalize_links_is_the_loop_over_normalize_url(
    refs: list[str], base: str, limit: int | None, max_length: int
) -> None:
    expected: dict[str, None] = {}
    if limit is None or limit > 0:
        for ref in refs:
            link = normalize_url(ref, base, max_length=max_length)
            if link is not None and link not in expected:
                expected[link] = None
                if limit is not None and len(expected) >= limit:
                    break
    assert normalize_links(refs, base, max_length=max_length, limit=limit) == tuple(expected)
