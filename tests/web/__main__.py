"""Serve the test site from a subprocess (CLI tests, benchmarks)::

    python -m tests.web --ports 3 --pages 2000 [--latency 0.01] \\
        [--robots-file F] [--log out.jsonl] [--gzip] [--no-cross-links]

prints ``{"ports": [...]}`` on stdout once listening, appends each finished request to
``--log`` as a JSON line (see :func:`tests.web.load_log`), and exits with status 0 on
SIGTERM/SIGINT.  The site is :class:`tests.web.SiteServer`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import trio

from tests.web.core import RequestRecord
from tests.web.routes import SiteServer


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.web", description="Loopback test site.")
    parser.add_argument("--ports", type=int, default=2)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--links-per-page", type=int, default=10)
    parser.add_argument("--page-bytes", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--robots-file", type=Path, help="robots.txt body for every port")
    parser.add_argument("--log", type=Path, help="append finished requests as JSON lines")
    parser.add_argument("--gzip", action="store_true", help="gzip-encode site pages")
    parser.add_argument("--no-cross-links", dest="cross_links", action="store_false")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace, robots: str | None, log: IO[str] | None) -> None:
    def write(record: RequestRecord) -> None:
        if log is not None:
            log.write(record.to_json() + "\n")
            log.flush()

    site = SiteServer(
        pages=args.pages,
        links_per_page=args.links_per_page,
        page_bytes=args.page_bytes,
        robots=robots,
        latency=args.latency,
        cross_links=args.cross_links,
        gzip=args.gzip,
        on_record=write,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with site.serving(args.ports):
            sys.stdout.write(json.dumps({"ports": site.ports}) + "\n")
            sys.stdout.flush()
            async for _ in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    robots = args.robots_file.read_text(encoding="utf-8") if args.robots_file else None
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    try:
        trio.run(_run, args, robots, log)
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
