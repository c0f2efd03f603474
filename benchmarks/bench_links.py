"""Micro-benchmark of the link hot path: ``parse_html`` and ``normalize_url``.

Run: ``python benchmarks/bench_links.py [--number N] [--repeat R]``

Builds a deterministic ~6 KB HTML page with 10 relative links and typical markup and
prints microseconds per call next to the references: selectolax alone (parse + one CSS
query for the same elements) and ``urllib.parse.urljoin`` for the same 10 links.

Timings are the thread's CPU time (``time.thread_time``), best of R rounds of N calls,
with the candidates interleaved round by round, so that other processes on a shared
machine neither inflate a figure nor favour whichever candidate ran in a quiet moment.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

from crawler._links import parse_html
from crawler._urls import normalize_url

PAGE_URL = "https://www.example.com/docs/guide/index.html"
SELECTOR = "a[href], area[href], link[href], frame[src], iframe[src], base[href], title"


def build_page() -> bytes:
    """~6 KB of typical HTML: head boilerplate, a nav of 10 relative links, prose."""
    nav = "".join(
        f'      <li class="nav-item"><a class="nav-link" href="{href}">Chapter {i}</a></li>\n'
        for i, href in enumerate(relative_links())
    )
    paragraph = (
        '    <p class="body-text">Lorem ipsum dolor sit amet, <em>consectetur</em> '
        "adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "
        "Ut enim ad minim veniam, quis nostrud exercitation.</p>\n"
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n'
        '  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '  <meta name="description" content="A deterministic benchmark page.">\n'
        "  <title>The Guide \u2014 Example Docs</title>\n"
        '  <link rel="stylesheet" href="/static/css/site.css?v=3">\n'
        '  <link rel="icon" href="/favicon.ico">\n'
        '  <script src="/static/js/app.js" defer></script>\n'
        "  <style>body { font-family: system-ui, sans-serif; } .nav-link { color: #333; }</style>\n"
        "</head>\n<body>\n"
        '  <header class="site-header"><nav aria-label="Main">\n    <ul class="nav">\n'
        f"{nav}"
        "    </ul>\n  </nav></header>\n"
        '  <main id="content">\n    <h1>The Guide</h1>\n'
        f"{paragraph * 19}"
        '    <img src="/static/img/diagram.png" alt="Diagram" width="640" height="480">\n'
        "  </main>\n"
        '  <footer class="site-footer"><p>&copy; 2024 Example Corp.</p></footer>\n'
        "</body>\n</html>\n"
    )
    return page.encode("utf-8")


def relative_links() -> list[str]:
    """The common case: relative paths on the same host (some with ./ and ../)."""
    return [
        "intro.html",
        "install.html",
        "./quickstart.html",
        "../api/index.html",
        "/docs/guide/config.html",
        "advanced/scheduling.html",
        "advanced/politeness.html?lang=en",
        "/blog/",
        "faq.html#general",
        "../changelog.html",
    ]


def best_us(
    candidates: dict[str, Callable[[], object]], number: int, repeat: int
) -> dict[str, float]:
    """Best CPU time per call of each candidate, in microseconds, interleaving rounds."""
    best = dict.fromkeys(candidates, float("inf"))
    for function in candidates.values():
        function()  # warm caches (lru_cache of the base URL, selectolax module state)
    for _ in range(repeat):
        for name, function in candidates.items():
            seconds = timeit.timeit(function, number=number, timer=time.thread_time)
            best[name] = min(best[name], seconds / number * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=200, help="calls per timing round")
    parser.add_argument("--repeat", type=int, default=50, help="timing rounds (best is kept)")
    args = parser.parse_args(argv)
    number: int = args.number
    repeat: int = args.repeat

    body = build_page()
    links = relative_links()
    parsed = parse_html(body, PAGE_URL, "text/html; charset=utf-8")
    assert len(parsed.links) == len(links), parsed.links

    def run_parse_html() -> object:
        return parse_html(body, PAGE_URL, "text/html; charset=utf-8")

    def run_selectolax() -> object:
        return LexborHTMLParser(body).css(SELECTOR)

    def run_normalize() -> object:
        return [normalize_url(link, PAGE_URL) for link in links]

    def run_urljoin() -> object:
        return [urljoin(PAGE_URL, link) for link in links]

    absolute = [urljoin(PAGE_URL, link) for link in links]

    def run_normalize_absolute() -> object:
        return [normalize_url(link) for link in absolute]

    best = best_us(
        {
            "parse_html": run_parse_html,
            "selectolax": run_selectolax,
            "normalize": run_normalize,
            "normalize_absolute": run_normalize_absolute,
            "urljoin": run_urljoin,
        },
        number,
        repeat,
    )
    parse_us = best["parse_html"]
    selectolax_us = best["selectolax"]
    normalize_us = best["normalize"]
    normalize_abs_us = best["normalize_absolute"]
    urljoin_us = best["urljoin"]

    n = len(links)
    print(
        f"page: {len(body):,} bytes, {n} relative links; CPU time, best of {repeat} rounds"
        f" x {number} calls"
    )
    print(f"parse_html                     {parse_us:8.1f} us/call")
    print(f"  ref: selectolax parse + css  {selectolax_us:8.1f} us/call")
    print(
        f"normalize_url (relative)       {normalize_us / n:8.2f} us/call"
        f"  ({normalize_us:.1f} us per {n})"
    )
    print(
        f"normalize_url (absolute)       {normalize_abs_us / n:8.2f} us/call"
        f"  ({normalize_abs_us:.1f} us per {n})"
    )
    print(
        f"  ref: urllib.parse.urljoin    {urljoin_us / n:8.2f} us/call"
        f"  ({urljoin_us:.1f} us per {n})"
    )
    print(f"normalize_url vs urljoin: {urljoin_us / normalize_us:.1f}x faster")


if __name__ == "__main__":
    main()
