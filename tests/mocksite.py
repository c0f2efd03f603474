"""A fake web for unit tests: an httpx.MockTransport over a dict of pages, logging
each request with its virtual start time (works with pytest-trio's autojump_clock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import trio


@dataclass
class Hit:
    url: str
    start: float
    end: float = 0.0


@dataclass
class MockSite:
    pages: dict[str, str | httpx.Response] = field(default_factory=dict)
    latency: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    on_request: Callable[[httpx.Request], Awaitable[None]] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        hit = Hit(url, trio.current_time())
        self.hits.append(hit)
        self.in_flight[origin] = self.in_flight.get(origin, 0) + 1
        self.max_in_flight[origin] = max(self.max_in_flight.get(origin, 0), self.in_flight[origin])
        try:
            if self.on_request is not None:
                await self.on_request(request)
            if self.latency:
                await trio.sleep(self.latency)
            page = self.pages.get(url)
            if page is None:
                return httpx.Response(404, text="not found")
            if isinstance(page, httpx.Response):
                return page
            return httpx.Response(200, html=page)
        finally:
            self.in_flight[origin] -= 1
            hit.end = trio.current_time()

    def starts(self, prefix: str = "") -> list[float]:
        return [h.start for h in self.hits if h.url.startswith(prefix)]

    def urls(self) -> list[str]:
        return [h.url for h in self.hits]


def html(title: str, links: list[str], extra: str = "") -> str:
    anchors = "".join(f'<a href="{link}">{link}</a>\n' for link in links)
    return f"<html><head><title>{title}</title>{extra}</head><body>{anchors}</body></html>"


def chain_site(origin: str, count: int, *, fanout: int = 3) -> dict[str, str | httpx.Response]:
    """`count` pages under `origin`, each linking to the next `fanout` pages."""
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
