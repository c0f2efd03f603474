"""Route sets for the test web, and the sites the tests crawl (built from them).

Route sets (add any mix to a :class:`~tests.web.core.Web`):

* :class:`LinkGraph`: ``/`` and ``/page/{i}`` for ``i in range(pages)`` on every origin,
  a deterministic link graph (:meth:`LinkGraph.reachable_urls`), cross-linked between
  origins, optionally gzip-encoded;
* :class:`Robots`: ``/robots.txt``, one body for all origins or one per origin index;
* :class:`Hostile`: ``/hostile/``, an index linking to every hostile route
  (:data:`HOSTILE_ROUTES`):
  ``/retry-after[?s=N]`` (429 + ``Retry-After: N`` on the first hit per origin, then 200),
  ``/retry-after-date[?s=N]`` (the same with an HTTP-date), ``/flaky`` (500, 500, then 200,
  per origin), ``/unavailable`` (always 503, no Retry-After); ``/bomb.gz`` (~1 MB gzip body
  that inflates to 1 GiB of zeros), ``/bad-gzip`` (garbage declared as gzip),
  ``/drip[?s=interval]`` (headers, then one byte per interval, forever), ``/stall`` (never
  answers), ``/slow-headers[?s=N]`` (headers after N=5 s), ``/reset`` (TCP RST after
  reading the request), ``/huge-length`` (Content-Length 10^10, a few bytes, close),
  ``/truncated`` (Content-Length 10000, 100 bytes, close); ``/loop/a`` <-> ``/loop/b`` (302
  loop), ``/redirect-chain/{n}`` (n 301 hops down to a 200 page), ``/redirect-out`` (302 to
  the next origin's ``/page/0``), ``/redirect-to?url=U`` (302 to U), ``/redirect-ftp``
  (302 to ``ftp://example.com/``); ``/badutf8``, ``/latin1`` (charset only in ``<meta>``),
  ``/file.pdf``, ``/trap/...`` (endless link trap), ``/disallowed/...`` (plain HTML, for
  robots ``Disallow`` tests);
* :class:`Pages`: pages by URL (an HTML string, or an ``httpx.Response`` sent as it is);
* :class:`Static`: the files of a directory (the benchmark's fallback server);
* :class:`tests.web.faults.FaultyGraph`: a link graph that answers with injected faults.

Sites: :class:`SiteServer` (link graph + robots + hostile routes, :func:`open_site_server`)
and :class:`MockSite` (:class:`Pages`, usually served through ``site.transport()``).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import gzip
import itertools
import math
import mimetypes
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from tests.web.core import Exchange, Handler, RequestRecord, Routes, Web, html_page

_SEND_CHUNK: Final = 65536
_FILLER_WORDS: Final = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed"),
    *("do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna"),
    *("aliqua", "ut", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation"),
)

Node = tuple[int, int]
"""(origin index, page number), page ``-1`` being the root ``/``."""


def links_html(hrefs: Iterable[str]) -> str:
    items = "".join(f'<li><a href="{h}">{h}</a></li>\n' for h in hrefs)
    return f"<ul>\n{items}</ul>"


# --------------------------------------------------------------------------------------
# The generated link graph


class LinkGraph(Routes):
    """``/`` and ``/page/{i}`` on every origin, each page padded to ``page_bytes``.

    Page ``i`` links to ``/``, to ``links_per_page`` pages of its origin (``i + 1`` first,
    so every page is reachable from ``/``) written in assorted relative and absolute forms,
    and (``cross_links``) to page ``i`` of every other origin; ``/`` links to pages spread
    over the site and to the other origins' roots.  ``gzip``: pages are gzip-encoded for
    clients that accept it.  ``cache``: keep rendered pages (not for huge sites).
    """

    def __init__(
        self,
        pages: int = 300,
        links_per_page: int = 10,
        page_bytes: int = 2048,
        *,
        cross_links: bool = True,
        gzip: bool = False,
        cache: bool = True,
    ) -> None:
        if pages < 1:
            raise ValueError("pages must be >= 1")
        if links_per_page < 1:
            raise ValueError("links_per_page must be >= 1")
        if page_bytes < 0:
            raise ValueError("page_bytes must be >= 0")
        self.pages = pages
        self.links_per_page = links_per_page
        self.page_bytes = page_bytes
        self.cross_links = cross_links
        self.gzip = gzip
        self._cache: dict[tuple[int, int, bool], bytes] | None = {} if cache else None

    def routes(self) -> Iterable[tuple[str, Handler]]:
        return [("/", self._page), ("/page/*", self._page)]

    def page_of(self, path: str) -> int | None:
        """The page ``path`` names (``-1``: the root), or None."""
        if path == "/":
            return -1
        number = path.removeprefix("/page/")
        if number != path and number.isdigit() and str(int(number)) == number:
            return int(number) if int(number) < self.pages else None
        return None

    async def _page(self, ex: Exchange) -> None:
        page = self.page_of(ex.path)
        if page is None:
            await self.web.not_found(ex)
        else:
            await self.serve_page(ex, page)

    async def serve_page(self, ex: Exchange, page: int) -> None:
        """Answer with page ``page`` (``-1``: the root) of the exchange's origin."""
        accept = ex.headers.get("accept-encoding")
        gz = self.gzip and (accept is None or "gzip" in accept.lower())
        headers = [("Vary", "Accept-Encoding")] if self.gzip else []
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        await ex.respond(200, self.body(ex.index, page, gz), headers=headers)

    def body(self, index: int, page: int, gz: bool = False) -> bytes:
        key = (index, page, gz)
        if self._cache is not None and (cached := self._cache.get(key)) is not None:
            return cached
        body = self.render(index, page)
        if gz:
            body = gzip.compress(body, mtime=0)
        if self._cache is not None:
            self._cache[key] = body
        return body

    def render(self, index: int, page: int) -> bytes:
        """Page ``page`` (``-1`` for the root) of one origin, padded to ``page_bytes``."""
        name = self._name(index)
        if page < 0:
            title, hrefs = f"Site {name}", self._root_hrefs(index)
        else:
            title, hrefs = f"Page {page}", self._page_hrefs(index, page)
        body = f'<h1 id="top">{title}</h1>\n<p>Served by port {name}.</p>\n{links_html(hrefs)}'
        pad = self.page_bytes - len(html_page(title, body).encode()) - len('\n<p class="pad"></p>')
        if pad > 0:
            start = max(page, 0) % len(_FILLER_WORDS)
            text = " ".join(_FILLER_WORDS[start:] + _FILLER_WORDS[:start])
            filler = (text + " ") * (pad // (len(text) + 1) + 1)
            body += f'\n<p class="pad">{filler[:pad]}</p>'
        return html_page(title, body).encode()

    def _name(self, index: int) -> str:
        """The port (the host if it has none) of an origin."""
        host = self.web.origin(index).partition("://")[2]
        return host.rpartition(":")[2] if ":" in host else host

    def page_targets(self, i: int) -> list[int]:
        """Page numbers page ``i`` links to, in order (``i + 1`` first: all are reachable)."""
        n = self.pages
        return [(i + 1) % n] + [(i * 7 + k * 13 + 1) % n for k in range(1, self.links_per_page)]

    def root_targets(self) -> list[int]:
        n = self.pages
        return sorted({0} | {(k * n) // self.links_per_page for k in range(self.links_per_page)})

    def _others(self, index: int) -> list[int]:
        return [q for q in range(len(self.web.origins)) if q != index] if self.cross_links else []

    def _page_hrefs(self, index: int, i: int) -> list[str]:
        origin = self.web.origin(index)
        hrefs = ["/", "#top"]
        for k, j in enumerate(self.page_targets(i)):
            match k % 5:
                case 0:
                    hrefs.append(f"/page/{j}")
                case 1:
                    hrefs.append(f"../page/{j}")
                case 2:
                    hrefs.append(f"{origin}/page/{j}")
                case 3:
                    hrefs.append(f"/page/{j}#section-{k}")
                case _:
                    hrefs.append(f"{j}")  # relative to /page/
        return hrefs + [self.web.url(q, f"/page/{i}") for q in self._others(index)]

    def _root_hrefs(self, index: int) -> list[str]:
        hrefs = [
            f"/page/{j}" if k % 2 == 0 else f"page/{j}" for k, j in enumerate(self.root_targets())
        ]
        return hrefs + [self.web.url(q) for q in self._others(index)]

    def targets(self, node: Node) -> list[Node]:
        index, page = node
        if page < 0:
            out = [(index, j) for j in self.root_targets()]
            return out + [(q, -1) for q in self._others(index)]
        out = [(index, -1)] + [(index, j) for j in self.page_targets(page)]
        return out + [(q, page) for q in self._others(index)]

    def url(self, node: Node) -> str:
        index, page = node
        return self.web.url(index, "/" if page < 0 else f"/page/{page}")

    def all_urls(self) -> set[str]:
        origins = range(len(self.web.origins))
        return {self.url((p, i)) for p in origins for i in range(-1, self.pages)}

    def reachable_urls(self, expand: Callable[[str], bool] | None = None) -> set[str]:
        """URLs of the graph reachable from every origin's ``/`` (fragments removed),
        following only pages for which ``expand(url)`` holds (default: all).

        With every page expanded, exactly the set a complete crawl seeded with every ``/``
        must fetch (plus ``/robots.txt``): no other route is ever linked from the graph."""
        seen: set[Node] = {(p, -1) for p in range(len(self.web.origins))}
        queue: deque[Node] = deque(seen)
        while queue:
            node = queue.popleft()
            if expand is not None and not expand(self.url(node)):
                continue
            for target in self.targets(node):
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
        return {self.url(node) for node in seen}


# --------------------------------------------------------------------------------------
# robots.txt


class Robots(Routes):
    """``/robots.txt``: one body for every origin, or one per origin index (404 without)."""

    def __init__(self, robots: Mapping[int, str] | str | None) -> None:
        self.robots = robots

    def routes(self) -> Iterable[tuple[str, Handler]]:
        return [("/robots.txt", self._robots)]

    async def _robots(self, ex: Exchange) -> None:
        robots = self.robots
        body = robots if robots is None or isinstance(robots, str) else robots.get(ex.index)
        if body is None:
            await ex.respond(404, b"no robots.txt here\n", "text/plain; charset=utf-8")
        else:
            await ex.respond(200, body.encode(), "text/plain; charset=utf-8")


# --------------------------------------------------------------------------------------
# Hostile routes

#: Routes linked from ``/hostile/`` (the index itself is not in the list).
HOSTILE_ROUTES: Final[tuple[str, ...]] = (
    *("/retry-after", "/retry-after-date", "/flaky", "/unavailable", "/bomb.gz", "/bad-gzip"),
    *("/drip", "/stall", "/slow-headers", "/reset", "/huge-length", "/truncated", "/loop/a"),
    *("/redirect-chain/5", "/redirect-out", "/redirect-ftp", "/badutf8", "/latin1"),
    *("/file.pdf", "/trap/", "/disallowed/page"),
)

# CRC-32 of 2**30 zero bytes (checked by tests/test_web.py).
_BOMB_CRC32: Final = 0x5B64C2B0
_BOMB_SIZE: Final = 1 << 30


@functools.cache
def bomb_body() -> bytes:
    """A gzip member (~1 MB) that inflates to exactly 1 GiB of zeros.

    Built without deflating 1 GiB: a full flush resets the compressor, so the raw deflate
    output for each 1 MiB block of zeros is byte-identical and can simply be repeated.
    """
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(chunk)
    deflate.flush(zlib.Z_FULL_FLUSH)  # the first block; later ones are identical
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush(zlib.Z_FINISH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, mtime 0, OS unknown
    trailer = struct.pack("<II", _BOMB_CRC32, _BOMB_SIZE & 0xFFFFFFFF)
    return header + block * (_BOMB_SIZE // len(chunk)) + tail + trailer


_PDF_BODY: Final = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    + bytes(range(256)) * 8
    + b"\nendstream\n%%EOF\n"
)
_BAD_GZIP_BODY: Final = b"this is not gzip at all \x00\x01\x02\x03" + bytes(range(200, 256)) * 4
_LATIN1_PAGE: Final = (
    '<!DOCTYPE html>\n<html><head><meta charset="iso-8859-1">'
    "<title>Café über straße</title></head>\n"
    '<body><p>Ça va? Señor.</p><a href="/page/0">zurück</a></body></html>\n'
).encode("latin-1")


class Hostile(Routes):
    """The hostile routes (see the module docstring); ``pages``: the size of the link
    graph they link back into."""

    def __init__(self, pages: int = 300) -> None:
        self.pages = pages

    def routes(self) -> Iterable[tuple[str, Handler]]:
        return [
            *(("/hostile", self._index), ("/hostile/", self._index)),
            *(("/retry-after", self._retry_after), ("/retry-after-date", self._retry_after)),
            *(("/flaky", self._flaky), ("/unavailable", self._unavailable)),
            *(("/bomb.gz", self._bomb), ("/bad-gzip", self._bad_gzip)),
            *(("/drip", self._drip), ("/stall", self._stall)),
            *(("/slow-headers", self._slow_headers), ("/reset", self._reset)),
            *(("/huge-length", self._huge_length), ("/truncated", self._truncated)),
            *(("/loop/a", self._loop), ("/loop/b", self._loop)),
            *(("/redirect-out", self._redirect_out), ("/redirect-to", self._redirect_to)),
            *(("/redirect-ftp", self._redirect_ftp), ("/badutf8", self._badutf8)),
            *(("/latin1", self._latin1), ("/file.pdf", self._pdf)),
            *(("/trap", self._trap), ("/disallowed", self._disallowed)),
            *(("/redirect-chain/*", self._redirect_chain), ("/trap/*", self._trap)),
            ("/disallowed/*", self._disallowed),
        ]

    async def _index(self, ex: Exchange) -> None:
        await ex.html(200, "Hostile routes", links_html(HOSTILE_ROUTES))

    async def _retry_after(self, ex: Exchange) -> None:
        seconds = ex.query_float("s", 2.0)
        if ex.hits > 1:
            await ex.html(200, "Retry-After recovered", '<a href="/page/0">back</a>')
            return
        if ex.path == "/retry-after-date":
            value = email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
        else:
            value = str(math.ceil(seconds))
        body = html_page("Too many requests", "<p>slow down</p>").encode()
        await ex.respond(429, body, headers=[("Retry-After", value)])

    async def _flaky(self, ex: Exchange) -> None:
        if ex.hits <= 2:
            await ex.html(500, "Flaky", f"<p>failure {ex.hits}</p>")
        else:
            await ex.html(200, "Flaky recovered", '<a href="/page/0">back</a>')

    async def _unavailable(self, ex: Exchange) -> None:
        await ex.html(503, "Unavailable", "<p>try again some day</p>")

    async def _bomb(self, ex: Exchange) -> None:
        body = bomb_body()
        headers = [("Content-Type", "text/html"), ("Content-Encoding", "gzip")]
        ex.start_response(200, [*headers, ("Content-Length", str(len(body)))])
        for offset in range(0, len(body), _SEND_CHUNK):
            await ex.send_body(body[offset : offset + _SEND_CHUNK])
        await ex.end_response()

    async def _bad_gzip(self, ex: Exchange) -> None:
        await ex.respond(200, _BAD_GZIP_BODY, headers=[("Content-Encoding", "gzip")])

    async def _drip(self, ex: Exchange) -> None:
        interval = ex.query_float("s", 1.0)

        async def drip() -> None:
            ex.start_response(200, [("Content-Type", "text/html; charset=utf-8")])
            for byte in itertools.cycle(b"<!DOCTYPE html><p>drip " + b"." * 64):
                await ex.send_body(bytes([byte]))
                await trio.sleep(interval)

        await ex.until_client_gone(drip)

    async def _stall(self, ex: Exchange) -> None:
        await ex.until_client_gone(trio.sleep_forever)

    async def _slow_headers(self, ex: Exchange) -> None:
        delay = ex.query_float("s", 5.0)

        async def slow() -> None:
            await trio.sleep(delay)
            await ex.html(200, "Slow headers", '<a href="/page/0">finally</a>')

        await ex.until_client_gone(slow)

    async def _reset(self, ex: Exchange) -> None:
        await ex.reset()

    async def _huge_length(self, ex: Exchange) -> None:
        ex.close = True
        ex.start_response(200, [("Content-Type", "text/html"), ("Content-Length", "10000000000")])
        await ex.send_body(b"<!DOCTYPE html><p>huge")

    async def _truncated(self, ex: Exchange) -> None:
        ex.close = True
        ex.start_response(200, [("Content-Type", "text/html"), ("Content-Length", "10000")])
        await ex.send_body((b"<!DOCTYPE html><title>Truncated</title><p>" + b"t" * 100)[:100])

    async def _loop(self, ex: Exchange) -> None:
        await ex.redirect(302, "/loop/b" if ex.path == "/loop/a" else "/loop/a")

    async def _redirect_chain(self, ex: Exchange) -> None:
        rest = ex.path.removeprefix("/redirect-chain/")
        if not rest.isdigit():
            await self.web.not_found(ex)
        elif (n := int(rest)) > 0:
            await ex.redirect(301, f"/redirect-chain/{n - 1}")
        else:
            await ex.html(200, "Redirect chain end", '<a href="/page/0">home</a>')

    async def _redirect_out(self, ex: Exchange) -> None:
        other = (ex.index + 1) % len(self.web.origins)
        await ex.redirect(302, self.web.url(other, "/page/0"))

    async def _redirect_to(self, ex: Exchange) -> None:
        """302 to the URL in ``?url=`` (not linked from /hostile/: tests build it)."""
        await ex.redirect(302, ex.query.get("url", "/"))

    async def _redirect_ftp(self, ex: Exchange) -> None:
        await ex.redirect(302, "ftp://example.com/")

    async def _badutf8(self, ex: Exchange) -> None:
        n = self.pages
        body = (
            b"<html><head><title>Bad \xff\xfe UTF-8</title></head><body>\x00\x00"
            b'<p>broken \xc3\x28 \xa0\xa1 <a href="/page/%d">one</a>'
            b"<div><span><a href='/page/%d'>two \xed\xa0\x80</a>"
            b"<a href=/page/%d>three<b><i>\x00 unclosed \xf0\x28\x8c\xbc"
            b'<a href="/badutf8#again">self</a><table><tr><td>\xc0\xaf'
        ) % (1 % n, 2 % n, 3 % n)
        await ex.respond(200, body)

    async def _latin1(self, ex: Exchange) -> None:
        await ex.respond(200, _LATIN1_PAGE, "text/html")

    async def _pdf(self, ex: Exchange) -> None:
        await ex.respond(200, _PDF_BODY, "application/pdf")

    async def _trap(self, ex: Exchange) -> None:
        segments = [s for s in ex.path.removeprefix("/trap").split("/") if s]
        base = "/trap/" + "".join(f"{s}/" for s in segments)
        hrefs = [f"{base}x", f"{base}{len(segments) + 1}"]
        await ex.html(200, f"Trap depth {len(segments)}", links_html(hrefs))

    async def _disallowed(self, ex: Exchange) -> None:
        await ex.html(200, "Disallowed", links_html(["/page/0", "/disallowed/other"]))


# --------------------------------------------------------------------------------------
# Pages by URL, and files


class Pages(Routes):
    """Pages by full URL: a string is an HTML page (200), an ``httpx.Response`` is sent as
    it is; any other URL is a 404.  Tests may change :attr:`pages` at any time."""

    def __init__(self, pages: dict[str, str | httpx.Response]) -> None:
        self.pages = pages

    def routes(self) -> Iterable[tuple[str, Handler]]:
        return [("*", self._page)]

    async def _page(self, ex: Exchange) -> None:
        page = self.pages.get(ex.url)
        if page is None:
            page = httpx.Response(404, text="not found")
        elif isinstance(page, str):
            page = httpx.Response(200, html=page)
        await ex.respond_with(page)


class Static(Routes):
    """The files under ``root`` (``/`` is ``/index.html``), each read once and kept."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[str, tuple[int, bytes, str]] = {}

    def routes(self) -> Iterable[tuple[str, Handler]]:
        return [("*", self._file)]

    async def _file(self, ex: Exchange) -> None:
        found = self._cache.get(ex.path)
        if found is None:
            found = self._cache[ex.path] = self._load(ex.path)
        await ex.respond(*found)

    def _load(self, path: str) -> tuple[int, bytes, str]:
        file = self.root / (path + "index.html" if path.endswith("/") else path).lstrip("/")
        with contextlib.suppress(OSError):
            file = file.resolve()
            if self.root in file.parents and file.is_file():
                content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if content_type.startswith("text/"):
                    content_type += "; charset=utf-8"
                return 200, file.read_bytes(), content_type
        return 404, b"not found\n", "text/plain"


# --------------------------------------------------------------------------------------
# Sites


class SiteServer(Web):
    """The generated site (:class:`LinkGraph`, as :attr:`graph`), ``/robots.txt`` and the
    hostile routes on every origin: what most integration tests crawl.

    ``robots``: one robots.txt for every port, or one per port index (404 without).
    """

    def __init__(
        self,
        *,
        pages: int = 300,
        links_per_page: int = 10,
        page_bytes: int = 2048,
        robots: Mapping[int, str] | str | None = None,
        latency: float = 0.0,
        cross_links: bool = True,
        gzip: bool = False,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.graph = LinkGraph(
            pages, links_per_page, page_bytes, cross_links=cross_links, gzip=gzip
        )
        routes = (self.graph, Robots(robots), Hostile(pages))
        super().__init__(*routes, latency=latency, on_record=on_record)

    def reachable_urls(self) -> set[str]:
        return self.graph.reachable_urls()


def open_site_server(
    ports: int = 2, **options: Any
) -> contextlib.AbstractAsyncContextManager[SiteServer]:
    """Serve a :class:`SiteServer` (built with ``options``) on ``ports`` loopback ports."""
    return SiteServer(**options).serving(ports)


class MockSite(Web):
    """Pages by URL (:class:`Pages`, as :attr:`pages`), for unit tests: crawl them through
    ``site.transport()`` (or serve them over loopback like any web)."""

    def __init__(
        self,
        pages: dict[str, str | httpx.Response] | None = None,
        *,
        latency: float = 0.0,
        on_request: Callable[[Exchange], Awaitable[None]] | None = None,
    ) -> None:
        self.pages: dict[str, str | httpx.Response] = {} if pages is None else pages
        super().__init__(Pages(self.pages), latency=latency, on_request=on_request)


def html(title: str, links: list[str], extra: str = "") -> str:
    anchors = "".join(f'<a href="{link}">{link}</a>\n' for link in links)
    return f"<html><head><title>{title}</title>{extra}</head><body>{anchors}</body></html>"


def chain_site(origin: str, count: int, *, fanout: int = 3) -> dict[str, str | httpx.Response]:
    """``count`` pages under ``origin``, each linking to the next ``fanout`` pages."""
    pages: dict[str, str | httpx.Response] = {}
    for i in range(count):
        links = [f"/p/{j}" for j in range(i + 1, min(count, i + 1 + fanout))]
        pages[f"{origin}/p/{i}"] = html(f"page {i}", links)
    pages[f"{origin}/"] = html("home", ["/p/0"])
    return pages


def merge(*sites: Mapping[str, str | httpx.Response]) -> dict[str, str | httpx.Response]:
    merged: dict[str, str | httpx.Response] = {}
    for site in sites:
        merged.update(site)
    return merged
