"""Micro-benchmark of one JSON Lines record: ``crawler._output._encode_line``.

Run: ``python benchmarks/bench_jsonl.py [--number N] [--repeat R]``

Encodes a realistic page (the benchmark site's: 10 absolute links, a title, the usual
Content-Type) and the same page with a non-ASCII title, and prints microseconds per
record next to the reference: the ``json.dumps(ensure_ascii=False)`` encoder the
crawler used before orjson (kept here verbatim), whose bytes it also checks are the
same.

Timings are the thread's CPU time, best of R rounds of N calls, interleaved.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import timeit
from collections.abc import Callable

from crawler._output import _encode_line, page_to_json
from crawler._page import Page

_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def encode_with_json(page: Page) -> bytes:
    """The encoder before orjson (crawler 0.x), for reference."""
    text = json.dumps(page_to_json(page), ensure_ascii=False, separators=(",", ":"))
    if text.isascii():
        return (text + "\n").encode("ascii")
    return (text.translate(_LINE_BREAKERS) + "\n").encode("utf-8", "backslashreplace")


def realistic_page(title: str = "Page 1234 \u2014 Example site") -> Page:
    base = "http://127.0.0.1:8080/p/"
    return Page(
        url=f"{base}1234.html",
        final_url=f"{base}1234.html",
        status=200,
        depth=1234,
        content_type="text/html; charset=utf-8",
        title=title,
        links=tuple(f"{base}{1235 + k * 7}.html" for k in range(10)),
        body=b"x" * 6_123,
        elapsed=0.003_417_25,
        fetched_at=dt.datetime(2026, 11, 29, 2, 3, 4, 123_456, tzinfo=dt.UTC),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing round")
    parser.add_argument("--repeat", type=int, default=30, help="timing rounds (best is kept)")
    args = parser.parse_args(argv)
    number: int = args.number
    repeat: int = args.repeat

    ascii_page = realistic_page("Page 1234 - Example site")
    utf8_page = realistic_page()
    for page in (ascii_page, utf8_page):
        assert _encode_line(page) == encode_with_json(page), "bytes differ from json.dumps"

    candidates: dict[str, Callable[[], object]] = {
        "_encode_line (ASCII page)": lambda: _encode_line(ascii_page),
        "  ref: json.dumps": lambda: encode_with_json(ascii_page),
        "_encode_line (UTF-8 title)": lambda: _encode_line(utf8_page),
        "  ref: json.dumps ": lambda: encode_with_json(utf8_page),
    }
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):
        for name, function in candidates.items():
            seconds = timeit.timeit(function, number=number, timer=time.thread_time)
            best[name] = min(best[name], seconds / number * 1e6)
    size = len(_encode_line(ascii_page))
    print(f"one record: {size} bytes; CPU time, best of {repeat} rounds x {number} calls")
    for name, us in best.items():
        print(f"{name:30} {us:7.2f} us/record")


if __name__ == "__main__":
    main()
