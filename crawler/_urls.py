"""URL normalisation, origins, registrable domains and crawl scope.

This module is on the crawler's CPU hot path: every link of every page goes through
:func:`normalize_url`. It is a small hand-written parser (no ``urllib.parse``) tuned for
the common case, a relative path resolved against the page URL: the base URL is split
once (bounded ``lru_cache``) and a clean ASCII path is checked with one regex and joined
without further work.

Canonical form produced by :func:`normalize_url` (the rules are RFC 3986 section 6
normalisation, with the WHATWG URL Standard's leniency where browsers are lenient):

* only ``http`` and ``https``; the scheme and the host are lower-cased;
* leading/trailing C0 controls and spaces are stripped, and tabs/newlines anywhere are
  removed, as browsers do; backslashes before the query count as ``/`` (browsers again),
  and any number of slashes after ``http:`` starts the authority;
* ``http:path`` (same scheme as the base, no ``//``) is relative to the base, as in
  browsers (RFC 3986 section 5.4.2's "backward compatible" reading);
* non-ASCII hosts are converted to punycode with IDNA 2008 / UTS 46 (failure -> None);
  percent-escapes in hosts are decoded first; ASCII hosts must be DNS-like names
  (letters, digits, ``-``, ``_``; labels of 1-63 characters; at most 253 characters
  plus an optional trailing dot, which is kept); a host whose last label is a number is
  parsed as an IPv4 address like browsers do (``0x7f.1`` -> ``127.0.0.1``) or rejected;
  IPv6 literals are validated and written in compressed lower-case form; zone ids are
  rejected;
* the port must be 1-65535; the default port (80 for http, 443 for https) is dropped, and
  an empty port (``http://host:/``) means no port;
* the path is never empty (``/``) and has its ``.``/``..`` segments removed
  (RFC 3986 section 5.2.4, also for ``%2e`` spellings);
* percent-encoding: escapes are upper-cased; escapes of unreserved characters are decoded
  (``%41`` -> ``A``, ``%7E`` -> ``~``); characters not allowed by RFC 3986 in that
  component (space, controls, non-ASCII as UTF-8, ``"<>[\\]^`{|}``) are escaped; a ``%``
  that does not start an escape becomes ``%25`` (needed for idempotence once unreserved
  escapes are decoded);
* userinfo is kept (the engine decides what to send) but percent-normalised the way
  ``httpx`` does (``;``, ``=`` and ``@`` escaped); an empty userinfo (``http://@host/``)
  is dropped;
* the query keeps its order and its bytes (only percent-normalised, non-ASCII as UTF-8);
  an empty query is dropped (``http://a/b?`` -> ``http://a/b``): servers virtually never
  distinguish the two and it makes duplicates collapse;
* the fragment is dropped.

The result is idempotent (``normalize_url(normalize_url(x)) == normalize_url(x)``) and
``httpx.URL`` accepts it and prints it back unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

import idna

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = [
    "Scope",
    "host_of",
    "normalize_links",
    "normalize_url",
    "origin_of",
    "registrable_domain",
]

ScopeMode = Literal["host", "domain", "any"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_C0_AND_SPACE = "".join(chr(i) for i in range(0x21))
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):").match

# Literal characters allowed per component (RFC 3986 section 3); everything else is escaped.
_UNRESERVED = "A-Za-z0-9\\-._~"
_PATH_CHARS = _UNRESERVED + "!$&'()*+,;=:@/"
_QUERY_CHARS = _PATH_CHARS + "?"
# httpx escapes ';' and '=' in userinfo; doing the same keeps str(httpx.URL(u)) == u.
_USERINFO_CHARS = _UNRESERVED + "!$&'()*+,:"

_PATH_CLEAN = re.compile(f"[{_PATH_CHARS}]*").fullmatch
_QUERY_CLEAN = re.compile(f"[{_QUERY_CHARS}]*").fullmatch
_USERINFO_CLEAN = re.compile(f"[{_USERINFO_CHARS}]*").fullmatch
_PATH_FIX = re.compile(f"%[0-9A-Fa-f]{{2}}|[^{_PATH_CHARS}%]+|%").sub
_QUERY_FIX = re.compile(f"%[0-9A-Fa-f]{{2}}|[^{_QUERY_CHARS}%]+|%").sub
_USERINFO_FIX = re.compile(f"%[0-9A-Fa-f]{{2}}|[^{_USERINFO_CHARS}%]+|%").sub

_BYTE_ESCAPES = tuple(f"%{b:02X}" for b in range(256))
_UNRESERVED_SET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# "%xx" (upper-cased) -> its canonical spelling: the character when unreserved, else "%XX".
_ESCAPE_CANON = {
    esc: (chr(b) if chr(b) in _UNRESERVED_SET else esc) for b, esc in enumerate(_BYTE_ESCAPES)
}
_SURROGATE = re.compile("[\ud800-\udfff]")

_HOST_NAME = re.compile(r"(?:[a-z0-9_\-]{1,63}\.)*[a-z0-9_\-]{1,63}\.?").fullmatch
# WHATWG "ends in a number": the last label (ignoring one trailing dot) is a number.
_ENDS_IN_NUMBER = re.compile(r"(?:^|\.)(?:[0-9]+|0x[0-9a-f]*)\.?$").search
_OCTAL_DIGITS = frozenset("01234567")
_HEX_DIGITS = frozenset("0123456789abcdef")

# Longer authorities and base URLs are handled without going through the caches, which
# then hold at most 512 x 300 + 64 x 8 KiB characters.
_MAX_CACHED_AUTHORITY = 300
_MAX_CACHED_BASE = 8192

# Fast path: a reference that needs no cleaning, escaping or scheme detection. Either
# "http(s)://name[:port]" + path, or a relative path (no ':', which could be a scheme;
# no '%', '\\', whitespace or other characters that need work), then an optional clean
# query and any fragment. Paths that do not start with '/' after an authority, empty
# relative references and '//' references fall back to the general parser.
_FAST = re.compile(
    r"(?:(https?)://([A-Za-z0-9.\-_]+(?::[0-9]{1,5})?))?"
    r"([A-Za-z0-9\-._~!$&'()*+,;=@/]*)"
    r"(?:\?([A-Za-z0-9\-._~!$&'()*+,;=:@/?]*))?"
    r"(?:#.*)?",
    re.DOTALL,
).fullmatch


def _fix_escapes(match: re.Match[str]) -> str:
    text = match.group()
    if text[0] == "%":
        if len(text) == 3:
            return _ESCAPE_CANON[text.upper()]
        return "%25"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: U+FFFD, as browsers do
        data = _SURROGATE.sub("\ufffd", text).encode("utf-8")
    return "".join([_BYTE_ESCAPES[b] for b in data])


def _fix_path(path: str) -> str:
    return path if _PATH_CLEAN(path) else _PATH_FIX(_fix_escapes, path)


def _fix_query(query: str) -> str:
    return query if _QUERY_CLEAN(query) else _QUERY_FIX(_fix_escapes, query)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path (starts with '/')."""
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i, segment in enumerate(segments):
        if segment == ".":
            if i == last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if len(part) >= 2 and part[0] == "0":
        if part[1] == "x":
            part, radix = part[2:], 16
        else:
            part, radix = part[1:], 8
    if not part:
        return 0
    if radix == 10:
        ok = part.isascii() and part.isdigit()
    elif radix == 8:
        ok = _OCTAL_DIGITS.issuperset(part)
    else:
        ok = _HEX_DIGITS.issuperset(part)
    if not ok or len(part.lstrip("0")) > 12:  # > 2**32 anyway; keeps int() cheap
        return None
    return int(part, radix)


def _parse_ipv4(host: str) -> str | None:
    """The WHATWG IPv4 parser (1-4 parts, decimal/octal/hex); None when invalid."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        if not part:
            return None
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    last = numbers.pop()
    if any(n > 255 for n in numbers) or last >= 256 ** (4 - len(numbers)):
        return None
    address = last
    for i, n in enumerate(numbers):
        address += n << (8 * (3 - i))
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"


def _canonical_host(host: str) -> str | None:
    if not host:
        return None
    if "%" in host:
        try:
            host = unquote(host, errors="strict")
        except UnicodeDecodeError:
            return None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except ValueError:  # idna.IDNAError and UnicodeError are ValueErrors
            return None
    host = host.lower()
    if len(host) > 254 or not _HOST_NAME(host):
        return None
    if _ENDS_IN_NUMBER(host):
        return _parse_ipv4(host)
    if "xn--" in host and not _valid_a_labels(host):
        return None
    return host


def _valid_a_labels(host: str) -> bool:
    """Punycode labels must decode to valid IDNA 2008 labels (browsers check this too)."""
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except ValueError:
                return False
    return True


def _canonical_ipv6(literal: str) -> str | None:
    if not literal or not literal.isascii() or "%" in literal:
        return None
    try:
        return ipaddress.IPv6Address(literal).compressed
    except ValueError:
        return None


def _canonical_authority_uncached(scheme: str, authority: str) -> str | None:
    at = authority.rfind("@")
    if at >= 0:
        userinfo = authority[:at]
        if not _USERINFO_CLEAN(userinfo):
            userinfo = _USERINFO_FIX(_fix_escapes, userinfo)
        hostport = authority[at + 1 :]
    else:
        userinfo = ""
        hostport = authority
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            return None
        literal = _canonical_ipv6(hostport[1:end])
        if literal is None:
            return None
        host = f"[{literal}]"
        port = hostport[end + 1 :]
        if port:
            if port[0] != ":":
                return None
            port = port[1:]
    else:
        colon = hostport.find(":")
        if colon >= 0:
            name, port = hostport[:colon], hostport[colon + 1 :]
        else:
            name, port = hostport, ""
        canonical = _canonical_host(name)
        if canonical is None:
            return None
        host = canonical
    if port:
        if not (port.isascii() and port.isdigit()) or len(port.lstrip("0")) > 5:
            return None
        number = int(port)
        if not 0 < number <= 65535:
            return None
        if number != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{number}"
    return f"{userinfo}@{host}" if userinfo else host


_canonical_authority_cached = lru_cache(maxsize=512)(_canonical_authority_uncached)


def _canonical_authority(scheme: str, authority: str) -> str | None:
    if len(authority) > _MAX_CACHED_AUTHORITY:
        return _canonical_authority_uncached(scheme, authority)
    return _canonical_authority_cached(scheme, authority)


def _absolute(scheme: str, rest: str, query: str | None) -> str | None:
    """`rest` is 'authority[/path]' (no leading slashes, no query, no fragment)."""
    slash = rest.find("/")
    if slash < 0:
        authority, path = rest, "/"
    else:
        authority, path = rest[:slash], _fix_path(rest[slash:])
        if "/." in path:
            path = _remove_dot_segments(path)
    canonical = _canonical_authority(scheme, authority)
    if canonical is None:
        return None
    if query:
        return f"{scheme}://{canonical}{path}?{_fix_query(query)}"
    return f"{scheme}://{canonical}{path}"


# (scheme, "scheme://authority", path, query or None, directory of path) of a base URL.
_BaseParts = tuple[str, str, str, str | None, str]


def _split_base_uncached(base: str) -> _BaseParts | None:
    canonical = _normalize(base, None)
    if canonical is None:
        return None
    scheme, _, rest = canonical.partition("://")
    slash = rest.find("/")
    authority, path_query = rest[:slash], rest[slash:]
    path, question, query = path_query.partition("?")
    directory = path[: path.rfind("/") + 1]
    return scheme, f"{scheme}://{authority}", path, (query if question else None), directory


_split_base_cached = lru_cache(maxsize=64)(_split_base_uncached)


def _split_base(base: str) -> _BaseParts | None:
    """The base URL, normalised and split; cached (bounded) unless huge."""
    if len(base) > _MAX_CACHED_BASE:
        return _split_base_uncached(base)
    return _split_base_cached(base)


def _join_relative(prefix: str, directory: str, path: str, query: str | None) -> str:
    """The canonical URL of a clean relative path (`_FAST` matched it: no scheme, no
    authority, not empty, not starting with '/') and query, against a canonical base's
    ``scheme://authority`` (`prefix`) and directory."""
    # Leading "./" and "../" (common in links) resolved here against the base's
    # directory, which is canonical (no dot segments): what _remove_dot_segments would
    # make of them, without its split and loop. Any other dot segment is left to it.
    while path[0] == ".":
        if path.startswith("./"):
            path = path[2:]
        elif path.startswith("../"):
            path = path[3:]
            directory = directory[: directory.rfind("/", 0, -1) + 1] or "/"
        else:
            break
        if not path:
            break
    path = directory + path
    if "/." in path:
        path = _remove_dot_segments(path)
    return f"{prefix}{path}?{query}" if query else prefix + path


def _normalize(url: str, base: str | None) -> str | None:
    """The normaliser proper; may raise only on a bug (normalize_url guards it)."""
    fast = _FAST(url)
    if fast is not None:
        fast_scheme, fast_authority, fast_path, fast_query = fast.groups()
        prefix: str | None = None
        if fast_scheme is not None:
            if not fast_path or fast_path[0] == "/":
                canonical = _canonical_authority(fast_scheme, fast_authority)
                if canonical is None:
                    return None
                prefix = f"{fast_scheme}://{canonical}"
                fast_path = fast_path or "/"
        elif fast_path and not fast_path.startswith("//") and base is not None:
            parts = _split_base(base)
            if parts is None:
                return None
            if fast_path[0] != "/":
                return _join_relative(parts[1], parts[4], fast_path, fast_query)
            prefix = parts[1]
        if prefix is not None:
            if "/." in fast_path:
                fast_path = _remove_dot_segments(fast_path)
            return f"{prefix}{fast_path}?{fast_query}" if fast_query else prefix + fast_path

    url = url.strip(_C0_AND_SPACE)
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    hash_ = url.find("#")
    if hash_ >= 0:
        url = url[:hash_]
    question = url.find("?")
    query: str | None = None
    if question >= 0:
        query = url[question + 1 :]
        url = url[:question]
    if "\\" in url:
        url = url.replace("\\", "/")

    parts = _split_base(base) if base is not None else None
    if ":" in url and (match := _SCHEME(url)) is not None:
        scheme = match.group(1).lower()
        if scheme != "http" and scheme != "https":
            return None
        ref = url[match.end() :]
        if parts is None or parts[0] != scheme or ref.startswith("//"):
            return _absolute(scheme, ref.lstrip("/"), query)
    elif parts is None:
        return None
    else:
        ref = url
        if ref.startswith("//"):
            return _absolute(parts[0], ref.lstrip("/"), query)

    scheme, prefix, base_path, base_query, base_dir = parts
    if not ref:
        path = base_path
        if query is None:
            query = base_query
    elif ref[0] == "/":
        path = _fix_path(ref)
    else:
        path = base_dir + _fix_path(ref)
    if "/." in path:
        path = _remove_dot_segments(path)
    if query:
        return f"{prefix}{path}?{_fix_query(query)}"
    return prefix + path


def normalize_url(url: str, base: str | None = None, *, max_length: int = 2083) -> str | None:
    """Resolve `url` against the absolute URL `base` and return its canonical form.

    Returns None for anything that is not a well-formed http(s) URL, or whose canonical
    form is longer than `max_length`. Never raises; idempotent. See the module docstring
    for the canonical form.
    """
    try:
        result = _normalize(url, base)
    except Exception:  # pragma: no cover - defensive; property tests target _normalize
        return None
    if result is None or len(result) > max_length:
        return None
    return result


def normalize_links(
    refs: Iterable[str], base: str, *, max_length: int = 2083, limit: int | None = None
) -> tuple[str, ...]:
    """``normalize_url(ref, base, max_length=max_length)`` of each of `refs`, without
    the Nones and the repeats (the first kept), stopping at `limit` URLs: a page's links.

    The same results as that loop, for less: the base is split once, and the common
    reference, a clean relative path, is joined here without the per-link calls.
    Never raises."""
    links: dict[str, None] = {}
    if limit is not None and limit <= 0:
        return ()
    try:
        parts = _split_base(base)
    except Exception:  # pragma: no cover - defensive, as in normalize_url
        parts = None
    fast = _FAST if parts is not None else None
    prefix, directory = (parts[1], parts[4]) if parts is not None else ("", "")
    for ref in refs:
        link: str | None = None
        match = fast(ref) if fast is not None else None
        if match is not None and match.group(1) is None:
            path = match.group(3)
            if path and path[0] != "/":
                try:
                    link = _join_relative(prefix, directory, path, match.group(4))
                except Exception:  # pragma: no cover - defensive, as in normalize_url
                    link = None
                if link is not None and len(link) > max_length:
                    link = None
            else:
                link = normalize_url(ref, base, max_length=max_length)
        else:
            link = normalize_url(ref, base, max_length=max_length)
        if link is not None and link not in links:
            links[link] = None
            if limit is not None and len(links) >= limit:
                break
    return tuple(links)


def _split_authority(url: str) -> tuple[str, str]:
    """(scheme, authority without userinfo) of a canonical URL; ('', '') if not one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", ""
    end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if 0 <= index < end:
            end = index
    authority = rest[:end]
    return scheme, authority[authority.rfind("@") + 1 :]


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a canonical URL (default port omitted, no userinfo).

    The key for per-host politeness.
    """
    scheme, hostport = _split_authority(url)
    return f"{scheme}://{hostport}" if scheme else ""


def host_of(url: str) -> str:
    """The host of a canonical URL, without port; IPv6 literals without brackets."""
    _, hostport = _split_authority(url)
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")]
    colon = hostport.find(":")
    return hostport if colon < 0 else hostport[:colon]


_psl: PublicSuffixList | None = None


def _public_suffix_list() -> PublicSuffixList:
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        _psl = PublicSuffixList()  # the list ships with the package: no network
    return _psl


@lru_cache(maxsize=4096)
def registrable_domain(host: str) -> str:
    """eTLD+1 of `host` ("a.example.co.uk" -> "example.co.uk"), using the Public Suffix List.

    Private-section suffixes count ("a.github.io" -> "a.github.io"). IP addresses,
    single-label hosts and hosts that are themselves public suffixes return the host
    (lower-cased, without a trailing dot).
    """
    host = host.lower().rstrip(".")
    if not host or ":" in host or "." not in host or _ENDS_IN_NUMBER(host):
        return host
    domain: object = _public_suffix_list().privatesuffix(host)
    return domain if isinstance(domain, str) else host


class Scope:
    """Which URLs a crawl may follow, decided from its seeds.

    * ``"host"``: same host name as a seed (any scheme, any port; a trailing dot ignored).
      ``www.example.com`` and ``example.com`` are different hosts.
    * ``"domain"``: same registrable domain (eTLD+1) as a seed's host.
    * ``"any"``: every http(s) URL.

    `allows` expects a canonical URL (from :func:`normalize_url`).
    """

    __slots__ = ("_domains", "_hosts", "mode")

    def __init__(self, mode: ScopeMode, seeds: Iterable[str] = ()) -> None:
        if mode not in ("host", "domain", "any"):
            raise ValueError(f"scope must be 'host', 'domain' or 'any', got {mode!r}")
        self.mode: ScopeMode = mode
        self._hosts: set[str] = set()
        self._domains: set[str] = set()
        for seed in seeds:
            self.add_seed(seed)

    def add_seed(self, url: str) -> bool:
        """Widen the scope to cover `url`'s host (or registrable domain).

        Returns False, changing nothing, when `url` does not normalise to an http(s) URL
        (such a seed could never be admitted anyway); seeds are validated upstream.
        """
        canonical = normalize_url(url)
        if canonical is None:
            return False
        host = host_of(canonical).rstrip(".")
        self._hosts.add(host)
        self._domains.add(registrable_domain(host))
        return True

    def allows(self, url: str) -> bool:
        if not (url.startswith("https://") or url.startswith("http://")):
            return False
        if self.mode == "any":
            return True
        host = host_of(url).rstrip(".")
        if host in self._hosts:
            return True
        if self.mode == "host":
            return False
        return registrable_domain(host) in self._domains

    def __repr__(self) -> str:
        return f"Scope({self.mode!r}, hosts={sorted(self._hosts)!r})"


def strip_userinfo(url: str) -> str:
    """A canonical URL without ``user:password@``: credentials are never crawled, shown
    in outputs or sent anywhere but the seed's own origin (see Fetcher)."""
    start = url.find("://") + 3
    end = url.find("/", start)
    at = url.rfind("@", start, end if end >= 0 else len(url))
    return url if at < 0 else url[:start] + url[at + 1 :]


def looks_like_trap(url: str, max_depth: int, max_repeats: int) -> bool:
    """True for a canonical URL whose path is deeper than `max_depth` segments or repeats
    one segment more than `max_repeats` times (endless calendars, /a/b/a/b/...)."""
    start = url.find("/", url.find("://") + 3)
    end = url.find("?", start)
    path = url[start : end if end >= 0 else len(url)]
    slashes = path.count("/")
    if slashes <= min(max_depth, max_repeats):
        return False  # too short to repeat anything too often, or to be too deep
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) > max_depth:
        return True
    counts: dict[str, int] = {}
    for segment in segments:
        counts[segment] = n = counts.get(segment, 0) + 1
        if n > max_repeats:
            return True
    return False
