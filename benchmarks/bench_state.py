"""What a durable state (``crawl --state DIR``) costs: throughput, and memory for a big frontier.

    python benchmarks/bench_state.py [--rounds 3] [--pages 20000] [--frontier 1000000]
                                     [--skip-throughput] [--skip-frontier]

1. throughput: the 20,000-page benchmark site (``benchmarks/site.py generate``), served by
   nginx when installed (else ``benchmarks/site.py serve``), crawled to JSON Lines with
   ``--rate 0 --concurrency 32 --per-host 32``, without and with ``--state`` (a fresh
   directory each run), interleaved; the median pages/s of each and their ratio
   (target: with >= 0.8x without).
2. frontier: a loopback server whose robots.txt names a sitemap index of gzipped sitemaps
   listing ``--frontier`` URLs (50,000 per sitemap, the protocol's limit), crawled with
   ``--sitemaps --state``; once the state holds every URL (read from its database), the
   crawl gets SIGINT. Peak RSS of the ``crawl`` process comes from ``os.wait4``
   (target: < 300 MB). The same without ``--state`` (SIGINT once every sitemap is in the
   output) shows what the in-memory frontier costs.

Each crawl is a subprocess (``python -m crawler``), measured with ``os.wait4``.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

# benchmarks/run.py, beside this script: its site server and process helpers.
import run as RUN

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
WORK: Final = HERE / "work" / "state"
PY: Final = sys.executable
PER_SITEMAP: Final = 50_000
MiB: Final = 1024 * 1024
TARGET_RATIO: Final = 0.8
TARGET_RSS_MIB: Final = 300.0
TIMEOUT: Final = 1800.0


def log(message: str) -> None:
    print(f"[bench_state] {message}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


# --------------------------------------------------------------------------------------
# Running one crawl


def run_crawl(
    args: Sequence[str], stderr_path: Path, *, stop_when: Any = None, timeout: float = TIMEOUT
) -> RUN.Measured:
    """Run ``python -m crawler ARGS`` (see ``run.measure``: SIGINT once `stop_when`
    returns a dict; wall, CPU and peak RSS from wait4)."""
    return RUN.measure([PY, "-m", "crawler", *args], stderr_path, timeout, stop_when=stop_when)


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


# --------------------------------------------------------------------------------------
# 1. Throughput


def throughput(pages: int, rounds: int, warc: bool) -> dict[str, Any]:
    made = subprocess.run(
        [PY, str(HERE / "site.py"), "generate", "--pages", str(pages)],
        cwd=ROOT,
        env=child_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    root = Path(json.loads(made.stdout)["dir"])
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    with RUN.site_server(root) as (base, server):
        log(f"throughput: {pages:,}-page site at {base} ({server}), {rounds} round(s)")
        for round_ in range(rounds):
            for mode in ("without", "with"):
                out = WORK / f"tp-{mode}.jsonl"
                state = WORK / f"tp-state-{round_}"
                shutil.rmtree(state, ignore_errors=True)
                args = [base, "-o", str(out), "-q", "--rate", "0"]
                args += ["--concurrency", "32", "--per-host", "32"]
                if warc:
                    args += ["--warc", str(WORK / f"tp-{mode}.warc.gz")]
                if mode == "with":
                    args += ["--state", str(state)]
                m = run_crawl(args, WORK / f"tp-{mode}.stderr")
                lines = count_lines(out)
                if m.returncode != 0:
                    raise RuntimeError(f"crawl {mode} --state exited {m.returncode}")
                figures = {
                    "pages": lines,
                    "wall": m.wall,
                    "pages_per_s": lines / m.wall,
                    "cpu": m.cpu,
                    "rss_mib": m.rss_kib / 1024,
                }
                runs[mode].append(figures)
                log(
                    f"  round {round_ + 1} {mode:>7} --state: {lines:,} pages in {m.wall:.2f} s "
                    f"= {lines / m.wall:,.0f} pages/s (cpu {m.cpu:.2f} s, "
                    f"peak RSS {m.rss_kib / 1024:.0f} MiB)"
                )
                shutil.rmtree(state, ignore_errors=True)
    med = {mode: statistics.median(r["pages_per_s"] for r in rs) for mode, rs in runs.items()}
    return {
        "server": server,
        "pages": pages,
        "runs": runs,
        "median_pages_per_s": med,
        "ratio": med["with"] / med["without"],
    }


# --------------------------------------------------------------------------------------
# 2. A frontier of a million URLs


class _SitemapSite:
    def __init__(self, urls: int, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.count = (urls + PER_SITEMAP - 1) // PER_SITEMAP
        self.urls = urls
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def sitemap(self, i: int) -> bytes:
        with self._lock:
            body = self._cache.get(i)
            if body is None:
                start, end = i * PER_SITEMAP, min(self.urls, (i + 1) * PER_SITEMAP)
                locs = "".join(
                    f"<url><loc>{self.base}/p/{n}</loc></url>\n" for n in range(start, end)
                )
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
                    f"{locs}</urlset>\n"
                )
                body = self._cache[i] = gzip.compress(xml.encode(), mtime=0)
            return body

    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/robots.txt":
            text = f"User-agent: *\nDisallow:\nSitemap: {self.base}/sitemap-index.xml\n"
            return 200, "text/plain", text.encode()
        if path == "/sitemap-index.xml":
            entries = "".join(
                f"<sitemap><loc>{self.base}/sitemap-{i}.xml.gz</loc></sitemap>\n"
                for i in range(self.count)
            )
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
                f"{entries}</sitemapindex>\n"
            )
            return 200, "application/xml", xml.encode()
        if path.startswith("/sitemap-") and path.endswith(".xml.gz"):
            try:
                i = int(path.removeprefix("/sitemap-").removesuffix(".xml.gz"))
            except ValueError:
                i = -1
            if 0 <= i < self.count:
                return 200, "application/gzip", self.sitemap(i)
        if path == "/" or path.startswith("/p/"):
            return 200, "text/html", b"<html><head><title>p</title></head><body>p</body></html>"
        return 404, "text/plain", b"not found"


@contextmanager
def sitemap_server(urls: int) -> Iterator[str]:
    port = RUN.free_port()
    site = _SitemapSite(urls, port)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, ctype, body = site.respond(self.path.split("?")[0])
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for i in range(site.count):  # compress up front: the crawl should not wait for it
        site.sitemap(i)
    try:
        yield site.base + "/"
    finally:
        server.shutdown()
        server.server_close()


def _state_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'seen'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _sitemaps_written(out: Path) -> int:
    """Sitemap records in a JSON Lines output (their lines are long: read it whole)."""
    if not out.exists():
        return 0
    count = 0
    with open(out, "rb") as file:
        for line in file:
            if line.endswith(b"\n") and b'.xml.gz","final_url"' in line[:300]:
                count += 1
    return count


def frontier(urls: int, *, with_state: bool) -> dict[str, Any]:
    mode = "with" if with_state else "without"
    out = WORK / f"fr-{mode}.jsonl"
    state = WORK / "fr-state"
    shutil.rmtree(state, ignore_errors=True)
    out.unlink(missing_ok=True)
    with sitemap_server(urls) as base:
        sitemaps = (urls + PER_SITEMAP - 1) // PER_SITEMAP
        log(f"frontier {mode} --state: {urls:,} URLs in {sitemaps} sitemaps at {base}")
        args = [base, "--sitemaps", "-o", str(out), "-q", "--rate", "0"]
        args += ["--concurrency", "8", "--per-host", "8"]
        wanted = urls + 1  # and the seed
        if with_state:
            args += ["--state", str(state)]
            db = state / "crawl.sqlite3"

            def stop_when() -> dict[str, Any] | None:
                seen = _state_count(db)
                return {"queued_in_state": seen} if seen >= wanted else None

        else:

            def stop_when() -> dict[str, Any] | None:
                written = _sitemaps_written(out)
                return {"sitemaps_delivered": written} if written >= sitemaps else None

        m = run_crawl(args, WORK / f"fr-{mode}.stderr", stop_when=stop_when)
    result: dict[str, Any] = {
        "urls": urls,
        "peak_rss_mib": m.rss_kib / 1024,
        "wall": m.wall,
        "cpu": m.cpu,
        "returncode": m.returncode,
        **m.extra,
    }
    if with_state:
        status = subprocess.run(
            [PY, "-m", "crawler", "--state", str(state), "--status"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        result["status"] = status.stdout
        shutil.rmtree(state, ignore_errors=True)
    log(
        f"  peak RSS {m.rss_kib / 1024:,.0f} MiB, loaded in "
        f"{m.extra.get('stopped_after', float('nan')):.1f} s, exit {m.returncode}"
    )
    return result


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_state.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--frontier", type=int, default=1_000_000)
    parser.add_argument("--warc", action="store_true", help="also write a WARC in part 1")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-frontier", action="store_true")
    parser.add_argument("--skip-stateless-frontier", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if not args.skip_throughput:
        results["throughput"] = tp = throughput(args.pages, args.rounds, args.warc)
        med = tp["median_pages_per_s"]
        verdict = "met" if tp["ratio"] >= TARGET_RATIO else "MISSED"
        print(
            f"throughput ({tp['pages']:,}-page site, {tp['server']}, median of {args.rounds}): "
            f"{med['without']:,.0f} pages/s without --state, {med['with']:,.0f} with: "
            f"{tp['ratio']:.2f}x (target >= {TARGET_RATIO}x: {verdict})"
        )
    if not args.skip_frontier:
        results["frontier"] = fr = frontier(args.frontier, with_state=True)
        verdict = "met" if fr["peak_rss_mib"] < TARGET_RSS_MIB else "MISSED"
        print(
            f"frontier of {args.frontier:,} URLs with --state: peak RSS "
            f"{fr['peak_rss_mib']:,.0f} MiB (target < {TARGET_RSS_MIB:g} MiB: {verdict}), "
            f"all in the state after {fr.get('stopped_after', float('nan')):.1f} s"
        )
        if not args.skip_stateless_frontier:
            results["frontier_stateless"] = fs = frontier(args.frontier, with_state=False)
            print(
                f"frontier of {args.frontier:,} URLs without --state: peak RSS "
                f"{fs['peak_rss_mib']:,.0f} MiB"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
