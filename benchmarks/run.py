"""The benchmark suite, in one command: ``python benchmarks/run.py`` (see benchmarks/README.md).

1. throughput: a generated 20,000-page static site served by nginx (or a fallback Python
   server) on loopback, crawled to JSON Lines at concurrency 32 without a rate limit by
   (a) our ``crawl`` command, (b) Scrapy, (c) the asyncio + aiohttp + aiolimiter recipe;
   each run a subprocess measured with ``os.wait4`` (wall, CPU, peak RSS); runs
   interleaved a, b, c, a, b, c, ...; medians.
2. politeness: four loopback hosts with 20 ms latency (``tests.web``), crawled at
   20 requests/s per host, burst 1, 2 in flight per host, by ours and by the recipe; the
   server's own log gives each host's achieved rate, densest window, shortest gap between
   request starts and peak concurrency.
3. HTTPS throughput: the same site served by nginx over TLS (a certificate from a
   trustme CA), crawled by ours and by the recipe, both trusting that CA.
4. broad polite crawl: ``tests.web`` on 100 loopback ports (= hosts) with 50 ms
   latency, every host's root a seed, each host limited to 2 requests/s, crawled for a
   fixed time by ours, the recipe and Scrapy; requests/s against the ceiling (hosts x
   rate) and each host's rate, densest windows and concurrency from the server's log.
5. the limiter micro-benchmark ``benchmarks/bench_limiter.py``, when it exists.
6. ``benchmarks/results/RESULTS.md`` (+ ``results.json``, ``throughput.png``,
   ``politeness.png``, and ``profile.txt`` when ours misses a throughput target), headed
   by the command that produced it and the headline: median and range over the rounds.

``--quick`` is a smoke run (2,000 pages, one round, Scrapy capped at 500 pages, short
politeness and broad runs, no micro-benchmark, no profile) that writes to
``benchmarks/work/results-quick/`` unless ``--results`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
WORK: Final = HERE / "work"
RESULTS: Final = HERE / "results"
PY: Final = sys.executable

sys.path.insert(0, str(ROOT))

from tests.web.core import (  # noqa: E402
    RequestRecord,
    load_log,
    max_concurrency,
    max_in_window,
    start_gaps,
)

TOOLS: Final = ("ours", "scrapy", "aiohttp", "ours-lib")
LABELS: Final = {
    "ours": "ours (`crawl`)",
    "scrapy": "Scrapy",
    "aiohttp": "aiohttp + aiolimiter recipe",
    "ours-lib": "ours via the library (diagnostic)",
}
TARGET_VS_AIOHTTP: Final = 2.0
TARGET_VS_SCRAPY: Final = 20.0
TARGET_RSS_VS_AIOHTTP: Final = 1.5
POLITE_RATE: Final = 20.0
POLITE_BURST: Final = 1
POLITE_PER_HOST: Final = 2
POLITE_HOSTS: Final = 4
POLITE_LATENCY: Final = 0.02
POLITE_WINDOWS: Final = (0.25, 0.5, 1.0, 2.0, 5.0)
RATE_TOLERANCE: Final = 0.02
TARGET_HTTPS_VS_AIOHTTP: Final = 1.5
HTTPS_TOOLS: Final = ("ours", "aiohttp")
BROAD_TOOLS: Final = ("ours", "aiohttp", "scrapy")
BROAD_RATE: Final = 2.0
BROAD_BURST: Final = 1
BROAD_PER_HOST: Final = 1
BROAD_LATENCY: Final = 0.05
BROAD_CONCURRENCY: Final = 32
TARGET_BROAD_CEILING: Final = 0.95
CRAWL_TIMEOUT: Final = 1800.0
MiB: Final = 1024 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------------------
# Commands


def crawl_command(
    tool: str,
    seeds: Sequence[str],
    out: Path,
    *,
    concurrency: int,
    per_host: int,
    rate: float = 0.0,
    max_pages: int | None = None,
    ca: Path | None = None,
) -> list[str]:
    """The command line that makes ``tool`` crawl ``seeds`` into ``out`` (JSON Lines).

    `rate`: requests/s per host (burst 1; Scrapy: ``DOWNLOAD_DELAY`` = 1 / rate).
    `ca`: the CA bundle to trust for HTTPS (ours and the recipe)."""
    common = ["-o", str(out), "--concurrency", str(concurrency), "--per-host", str(per_host)]
    tls = ["--ca-bundle", str(ca)] if ca is not None else []
    if ca is not None and tool not in HTTPS_TOOLS:
        raise ValueError(f"{tool} takes no CA bundle here")
    if tool == "ours":
        # `python -m crawler` is the `crawl` console command, run by this interpreter.
        cmd = [PY, "-m", "crawler", *seeds, *common, "--rate", f"{rate:g}", "-q", *tls]
        cmd += ["--burst", str(POLITE_BURST)] if rate else []
    elif tool == "ours-lib":
        cmd = [PY, str(HERE / "crawl_ours.py"), *seeds, *common, "--rate", f"{rate:g}"]
        cmd += ["--burst", str(POLITE_BURST)] if rate else []
    elif tool == "aiohttp":
        cmd = [PY, str(HERE / "crawl_aiohttp.py"), *seeds, *common, "--rate", f"{rate:g}", *tls]
    elif tool == "scrapy":
        cmd = [PY, str(HERE / "crawl_scrapy.py"), *seeds, *common]
        cmd += ["--download-delay", f"{1 / rate:g}"] if rate else []
        cmd += ["--broad"] if len(seeds) > 1 else []
    else:
        raise ValueError(f"unknown tool {tool!r}")
    if max_pages is not None:
        cmd += ["--max-pages", str(max_pages)]
    return cmd


# --------------------------------------------------------------------------------------
# Measuring one child process


@dataclass
class Measured:
    wall: float
    cpu: float
    rss_kib: int
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)
    """What `stop_when` returned, and when (``stopped_after``, seconds)."""


STOP_GRACE = 15.0
"""Seconds a crawler told to stop gets before the next, harder signal."""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children") as file:
                    children = [int(child) for child in file.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _peak_rss_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(
    cmd: Sequence[str],
    stderr_path: Path,
    timeout: float = CRAWL_TIMEOUT,
    *,
    stop_when: Callable[[], dict[str, Any] | None] | None = None,
) -> Measured:
    """Run ``cmd``; wall time, CPU (user + sys) and peak RSS of that child, from wait4.

    CPU includes the child's own children (wait4 counts those it waited for). Peak RSS
    is the sum of each process's peak when the child starts others (ours: its parse
    process), polled from /proc every 0.2 s: wait4 alone gives the largest one's.

    `stop_when`: polled every 0.2 s; once it returns a dict, the child gets SIGINT and
    the dict goes into ``Measured.extra``."""
    extra: dict[str, Any] = {}
    with open(stderr_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            # Started from a background shell, SIGINT is ignored and a Python child then
            # never turns it into KeyboardInterrupt: give the child the default back.
            preexec_fn=_default_sigint,
        )
        done = threading.Event()

        def watchdog() -> None:
            # Signals must reach the main thread, blocked in wait4, not this one.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            deadline = time.monotonic() + timeout
            while not done.wait(0.2 if stop_when is not None else timeout):
                if time.monotonic() >= deadline:
                    proc.kill()
                    return
                found = stop_when() if stop_when is not None else None
                if found is not None:
                    extra.update(found, stopped_after=time.perf_counter() - start)
                    proc.send_signal(signal.SIGINT)
                    # A crawler that does not stop on SIGINT gets SIGTERM, then SIGKILL.
                    for escalate in (signal.SIGTERM, signal.SIGKILL):
                        if done.wait(STOP_GRACE):
                            return
                        proc.send_signal(escalate)
                    return

        own_peak = 0
        peaks: dict[int, int] = {}  # descendant pid -> its peak RSS (KiB)

        def poll_tree() -> None:
            nonlocal own_peak
            while not done.wait(0.2):
                own_peak = max(own_peak, _peak_rss_kib(proc.pid))
                for pid in _descendants(proc.pid):
                    peaks[pid] = max(peaks.get(pid, 0), _peak_rss_kib(pid))

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        poller = threading.Thread(target=poll_tree, daemon=True)
        poller.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
        wall = time.perf_counter() - start
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss  # KiB on Linux: the largest of the child and its children
    if peaks:
        # ru_maxrss is the child's own peak unless one of its children was larger.
        own = own_peak if max(peaks.values()) >= rss_kib else rss_kib
        rss_kib = own + sum(peaks.values())
    return Measured(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        rss_kib=rss_kib,
        returncode=proc.returncode,
        extra=extra,
    )


@dataclass
class Output:
    lines: int
    ok: int
    """Distinct URLs answered 200."""


def read_output(path: Path) -> Output:
    lines = 0
    ok: set[str] = set()
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                lines += 1
                record = json.loads(line)
                if record.get("status") == 200:
                    ok.add(str(record.get("final_url") or record["url"]))
    return Output(lines=lines, ok=len(ok))


# --------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:g} s")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF: Final = """\
{user}
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ text/html html; text/plain txt; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        index index.html;
    }}
}}
"""


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


NGINX_TLS: Final = """ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:SSL:1m;"""


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files() -> TlsFiles:
    """A trustme CA and a certificate for 127.0.0.1 signed by it, written to work/tls/."""
    import trustme

    tls = WORK / "tls"
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir(parents=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(ca=tls / "ca.pem", cert=tls / "server.pem", key=tls / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(files.cert), append=True)
    return files


@contextmanager
def site_server(
    root: Path, *, allow_nginx: bool = True, tls: TlsFiles | None = None
) -> Iterator[tuple[str, str]]:
    """Serve ``root`` on loopback; yield (base URL, description of the server).

    `tls`: serve HTTPS with that certificate (nginx only)."""
    port = free_port()
    nginx = find_nginx() if allow_nginx else None
    work = WORK / ("nginx-tls" if tls else "nginx")
    if tls is not None and not nginx:
        raise RuntimeError("HTTPS needs nginx")
    if nginx:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        conf = work / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        text = NGINX_CONF.format(user=user, work=work, port=port, root=root)
        if tls is not None:
            listen = f"listen 127.0.0.1:{port} "
            text = text.replace(listen, listen + "ssl ", 1).replace(
                f"root {root};",
                NGINX_TLS.format(cert=tls.cert, key=tls.key) + f"\n        root {root};",
                1,
            )
        conf.write_text(text)
        cmd = [nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)]
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        description = f"{version.stderr.strip().removeprefix('nginx version: ')}, 1 worker"
        description += ", TLS (trustme CA)" if tls else ""
    else:
        cmd = [PY, str(HERE / "site.py"), "serve", str(root), "--port", str(port)]
        why = "nginx not found" if allow_nginx else "--python-server"
        description = f"fallback trio + h11 server (benchmarks/site.py serve; {why})"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "server.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=err, stderr=err)
    try:
        wait_for_port(port, proc)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/", description
    finally:
        stop(proc, signal.SIGQUIT if nginx else signal.SIGTERM)


@contextmanager
def logged_site_server(
    log_path: Path, ports: int, pages: int, latency: float, *extra: str
) -> Iterator[tuple[list[int], subprocess.Popen[str]]]:
    """``tests.web`` on ``ports`` ports in one process, answering after
    ``latency`` seconds and logging every request to ``log_path``."""
    log_path.unlink(missing_ok=True)
    cmd = [PY, "-m", "tests.web", "--ports", str(ports), "--pages", str(pages)]
    cmd += ["--latency", f"{latency:g}", "--log", str(log_path), *extra]
    with open(log_path.with_suffix(".stderr"), "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tests.web did not start (see {err.name})")
        yield json.loads(line)["ports"], proc
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def polite_server(log_path: Path, pages: int) -> Iterator[list[int]]:
    """The politeness run's server: POLITE_HOSTS ports with POLITE_LATENCY."""
    with logged_site_server(log_path, POLITE_HOSTS, pages, POLITE_LATENCY) as (ports, _):
        yield ports


# --------------------------------------------------------------------------------------
# 1. Throughput


@dataclass
class Run:
    tool: str
    round: int
    wall: float
    cpu: float
    rss_kib: int
    lines: int
    ok: int
    returncode: int
    complete: bool


@dataclass
class Spread:
    """Median and range (min-max) of one figure over the rounds."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, spec: str = ",.0f", unit: str = "") -> str:
        median = f"{self.median:{spec}}{unit}"
        if self.n < 2:
            return median
        return f"{median} ({self.low:{spec}}{unit}\u2013{self.high:{spec}}{unit})"


@dataclass
class Summary:
    tool: str
    runs: int
    pages: float
    wall: float
    pages_per_s: float
    net_pages_per_s: float
    cpu_ms_per_page: float
    rss_mib: float
    fixed_wall: float
    fixed_cpu: float
    fixed_rss_mib: float
    complete: bool
    pages_per_s_all: list[float] = field(default_factory=list)
    pages_per_s_spread: Spread | None = None
    net_spread: Spread | None = None
    cpu_spread: Spread | None = None


def run_throughput(
    base: str,
    pages: int,
    rounds: int,
    scrapy_pages: int,
    concurrency: int,
    fixed_reps: int,
    *,
    tools: Sequence[str] = TOOLS,
    ca: Path | None = None,
    name: str = "throughput",
) -> tuple[list[Run], dict[str, Measured]]:
    out_dir = WORK / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    # Fixed cost (start-up, robots.txt, one page, shut-down): crawl /empty.html alone.
    fixed: dict[str, Measured] = {}
    for rep in range(fixed_reps):
        for tool in tools:
            out = out_dir / f"fixed-{tool}.jsonl"
            cmd = crawl_command(
                tool,
                [base + "empty.html"],
                out,
                concurrency=concurrency,
                per_host=concurrency,
                ca=ca,
            )
            m = measure(cmd, out.with_suffix(".stderr"))
            if m.returncode != 0 or read_output(out).ok != 1:
                raise RuntimeError(f"{tool}: the fixed-cost crawl failed; see {out}.stderr")
            best = fixed.get(tool)
            fixed[tool] = m if best is None or m.wall < best.wall else best
            log(f"  fixed cost {tool:8} rep {rep + 1}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU")
    runs: list[Run] = []
    for rnd in range(1, rounds + 1):
        for tool in tools:
            out = out_dir / f"{tool}-{rnd}.jsonl"
            cap = scrapy_pages if tool == "scrapy" else None
            cmd = crawl_command(
                tool,
                [base],
                out,
                concurrency=concurrency,
                per_host=concurrency,
                max_pages=cap,
                ca=ca,
            )
            m = measure(cmd, out.with_suffix(".stderr"))
            got = read_output(out)
            expected = min(cap, pages + 1) if cap else pages + 1
            run = Run(
                tool=tool,
                round=rnd,
                wall=m.wall,
                cpu=m.cpu,
                rss_kib=m.rss_kib,
                lines=got.lines,
                ok=got.ok,
                returncode=m.returncode,
                complete=m.returncode == 0 and got.ok >= expected,
            )
            runs.append(run)
            log(
                f"  round {rnd} {tool:8} {got.lines:6d} pages ({got.ok} ok, need {expected})"
                f" {m.wall:7.2f} s  {got.lines / m.wall:8.1f} pages/s  CPU {m.cpu:6.2f} s"
                f"  RSS {m.rss_kib / 1024:6.1f} MiB  exit {m.returncode}"
            )
            if not run.complete:
                log(f"  !! {tool} run {rnd} incomplete; see {out.with_suffix('.stderr')}")
    return runs, fixed


def net_rate(run: Run, fixed: dict[str, Measured]) -> float:
    """Pages per second of wall time less the fixed cost, which is never counted as more
    than half the run (on a small site, noise could make it the whole run)."""
    return run.lines / max(run.wall - fixed[run.tool].wall, run.wall / 2)


def round_ratios(
    runs: Sequence[Run], fixed: dict[str, Measured], num: str, den: str, *, net: bool = True
) -> Spread:
    """``num``'s pages/s over ``den``'s, round by round (same round: same conditions)."""
    by_round: dict[tuple[int, str], Run] = {(r.round, r.tool): r for r in runs}
    ratios = []
    for rnd in sorted({r.round for r in runs}):
        a, b = by_round.get((rnd, num)), by_round.get((rnd, den))
        if a is None or b is None:
            continue
        if net:
            ratios.append(net_rate(a, fixed) / net_rate(b, fixed))
        else:
            ratios.append((a.lines / a.wall) / (b.lines / b.wall))
    return Spread.of(ratios)


def summarise(runs: Sequence[Run], fixed: dict[str, Measured]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for tool in TOOLS:
        mine = [r for r in runs if r.tool == tool]
        if not mine:
            continue
        f = fixed[tool]
        rates = [r.lines / r.wall for r in mine]
        net = [net_rate(r, fixed) for r in mine]
        cpu = [1000 * r.cpu / max(r.lines, 1) for r in mine]
        out[tool] = Summary(
            tool=tool,
            runs=len(mine),
            pages=statistics.median(r.lines for r in mine),
            wall=statistics.median(r.wall for r in mine),
            pages_per_s=statistics.median(rates),
            net_pages_per_s=statistics.median(net),
            cpu_ms_per_page=statistics.median(cpu),
            rss_mib=statistics.median(r.rss_kib / 1024 for r in mine),
            fixed_wall=f.wall,
            fixed_cpu=f.cpu,
            fixed_rss_mib=f.rss_kib / 1024,
            complete=all(r.complete for r in mine),
            pages_per_s_all=rates,
            pages_per_s_spread=Spread.of(rates),
            net_spread=Spread.of(net),
            cpu_spread=Spread.of(cpu),
        )
    return out


# --------------------------------------------------------------------------------------
# 2. Politeness


@dataclass
class HostFigures:
    port: int
    requests: int
    span: float
    rate: float
    max_1s: int
    min_gap_ms: float
    short_gaps: int
    """Gaps between starts shorter than 90% of the interval 1 / rate."""
    peak_concurrency: int
    window_excess: int
    """Largest (count in a window W) - (burst + rate * W), over POLITE_WINDOWS; <= 0 is good."""
    starts: list[float]


@dataclass
class PoliteRun:
    tool: str
    pages: int
    wall: float
    hosts: list[HostFigures]
    error: str | None = None


def host_figures(port: int, records: Sequence[RequestRecord], t0: float) -> HostFigures:
    starts = sorted(r.start for r in records)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    gaps = start_gaps(records)
    excess = max(
        max_in_window(records, w) - math.floor(POLITE_BURST + POLITE_RATE * w + 1e-9)
        for w in POLITE_WINDOWS
    )
    return HostFigures(
        port=port,
        requests=len(starts),
        span=span,
        rate=(len(starts) - 1) / span if span > 0 else math.nan,
        max_1s=max_in_window(records, 1.0),
        min_gap_ms=1000 * min(gaps) if gaps else math.nan,
        short_gaps=sum(1 for g in gaps if g < 0.9 / POLITE_RATE),
        peak_concurrency=max_concurrency(records),
        window_excess=excess,
        starts=[s - t0 for s in starts],
    )


def run_politeness(pages_per_host: int) -> list[PoliteRun]:
    out_dir = WORK / "politeness"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    results: list[PoliteRun] = []
    for tool in ("ours", "aiohttp"):
        log_path = out_dir / f"{tool}-server.jsonl"
        out = out_dir / f"{tool}.jsonl"
        with polite_server(log_path, pages=2 * pages_per_host) as ports:
            seeds = [f"http://127.0.0.1:{p}/" for p in ports]
            cmd = crawl_command(
                tool,
                seeds,
                out,
                concurrency=32,
                per_host=POLITE_PER_HOST,
                rate=POLITE_RATE,
                max_pages=pages_per_host * len(ports),
            )
            m = measure(cmd, out.with_suffix(".stderr"), timeout=600)
        if m.returncode != 0:
            error = f"exit status {m.returncode}; see {out.with_suffix('.stderr')}"
            log(f"  !! {tool} politeness crawl failed: {error}")
            results.append(PoliteRun(tool=tool, pages=0, wall=m.wall, hosts=[], error=error))
            continue
        records = load_log(log_path)
        t0 = min(r.start for r in records)
        hosts = [
            host_figures(p, [r for r in records if r.port == p], t0)
            for p in ports
            if any(r.port == p for r in records)
        ]
        results.append(PoliteRun(tool=tool, pages=read_output(out).lines, wall=m.wall, hosts=hosts))
        for h in hosts:
            log(
                f"  {tool:8} port {h.port}: {h.requests} requests, {h.rate:.3f}/s,"
                f" max {h.max_1s} in 1 s, min gap {h.min_gap_ms:.1f} ms,"
                f" peak concurrency {h.peak_concurrency}"
            )
    return results


# --------------------------------------------------------------------------------------
# Broad polite crawl


@dataclass
class BroadRun:
    tool: str
    hosts: int
    seconds: float
    """The measured window: from the first request the server saw, this long."""
    requests: int
    """Requests started in the window, on all hosts (robots.txt included)."""
    host_rates: list[float]
    """Per host: requests started in the window / its length."""
    max_1s: int
    """The most request starts in any 1 s window, on any host."""
    window_excess: int
    """Largest (count in a window W) - (burst + rate x W) on any host; <= 0 is good."""
    hosts_over: int
    """Hosts with some window over the bound."""
    peak_concurrency: int
    """The most requests in flight at once on any host."""
    idle_hosts: int
    """Hosts that got no request in the window."""
    server_cpu: float
    """The server's CPU seconds over the crawl (it must not be the bottleneck)."""
    returncode: int
    error: str | None = None
    wall: float = 0.0
    """The crawl's wall time, start-up included (the server's CPU is over this)."""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def ceiling(self) -> float:
        return self.hosts * BROAD_RATE

    @property
    def violations(self) -> int:
        over_conc = self.peak_concurrency > BROAD_PER_HOST
        return self.hosts_over + (1 if over_conc else 0)


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def broad_server(
    log_path: Path, hosts: int, pages: int
) -> Iterator[tuple[list[int], subprocess.Popen[str]]]:
    """``tests.web`` on ``hosts`` ports with BROAD_LATENCY, in one process.

    No cross links: every host's root is a seed, so every host has work from the start
    and pages carry 10 links, not one per host."""
    with logged_site_server(log_path, hosts, pages, BROAD_LATENCY, "--no-cross-links") as server:
        yield server


def _stop_after(log_path: Path, seconds: float) -> Callable[[], dict[str, Any] | None]:
    """A `measure` stop_when: true `seconds` (+ 1 s of margin) after the first request."""
    first: list[float] = []

    def check() -> dict[str, Any] | None:
        if not first:
            if log_path.exists() and log_path.stat().st_size > 0:
                first.append(time.monotonic())
            return None
        if time.monotonic() >= first[0] + seconds + 1.0:
            return {"window": seconds}
        return None

    return check


def broad_figures(
    tool: str,
    records: Sequence[RequestRecord],
    ports: Sequence[int],
    seconds: float,
    server_cpu: float,
    returncode: int,
) -> BroadRun:
    t0 = min(r.start for r in records)
    inside = [r for r in records if r.start < t0 + seconds]
    per_host: dict[int, list[RequestRecord]] = {p: [] for p in ports}
    for r in inside:
        per_host.setdefault(r.port, []).append(r)
    excess: list[int] = []
    for mine in per_host.values():
        excess.append(
            max(
                max_in_window(mine, w) - math.floor(BROAD_BURST + BROAD_RATE * w + 1e-9)
                for w in POLITE_WINDOWS
            )
            if mine
            else -BROAD_BURST
        )
    return BroadRun(
        tool=tool,
        hosts=len(ports),
        seconds=seconds,
        requests=len(inside),
        host_rates=[len(mine) / seconds for mine in per_host.values()],
        max_1s=max(max_in_window(mine, 1.0) for mine in per_host.values()),
        window_excess=max(excess),
        hosts_over=sum(1 for e in excess if e > 0),
        peak_concurrency=max(max_concurrency(mine) for mine in per_host.values()),
        idle_hosts=sum(1 for mine in per_host.values() if not mine),
        server_cpu=server_cpu,
        returncode=returncode,
    )


def run_broad(hosts: int, seconds: float) -> list[BroadRun]:
    out_dir = WORK / "broad"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    pages = math.ceil(BROAD_RATE * seconds * 1.5) + 20  # more than any host can get
    results: list[BroadRun] = []
    for tool in BROAD_TOOLS:
        log_path = out_dir / f"{tool}-server.jsonl"
        out = out_dir / f"{tool}.jsonl"
        with broad_server(log_path, hosts, pages) as (ports, server):
            seeds = [f"http://127.0.0.1:{p}/" for p in ports]
            cmd = crawl_command(
                tool,
                seeds,
                out,
                concurrency=BROAD_CONCURRENCY,
                per_host=BROAD_PER_HOST,
                rate=BROAD_RATE,
            )
            cpu_before = _proc_cpu(server.pid)
            m = measure(
                cmd,
                out.with_suffix(".stderr"),
                timeout=seconds + 120,
                stop_when=_stop_after(log_path, seconds),
            )
            server_cpu = _proc_cpu(server.pid) - cpu_before
        records = load_log(log_path) if log_path.exists() else []
        if "window" not in m.extra or not records:
            error = f"exit status {m.returncode} before the window ended; see {out}.stderr"
            log(f"  !! {tool} broad crawl failed: {error}")
            results.append(
                BroadRun(tool, hosts, seconds, 0, [], 0, 0, 0, 0, hosts, server_cpu,
                         m.returncode, error)
            )  # fmt: skip
            continue
        run = broad_figures(tool, records, ports, seconds, server_cpu, m.returncode)
        run.wall = m.wall
        results.append(run)
        log(
            f"  {tool:8} {run.requests} requests in {seconds:g} s = {run.requests_per_s:.1f}/s"
            f" ({100 * run.requests_per_s / run.ceiling:.1f}% of {run.ceiling:g}/s),"
            f" max {run.max_1s} in 1 s on a host, over bound on {run.hosts_over} hosts,"
            f" peak concurrency {run.peak_concurrency}, server CPU {server_cpu:.1f} s"
        )
    return results


# --------------------------------------------------------------------------------------
# 3. Limiter micro-benchmark


def run_limiter_bench() -> str | None:
    script = HERE / "bench_limiter.py"
    if not script.exists():
        return None
    proc = subprocess.run(
        [PY, str(script)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    text = proc.stdout.strip()
    if proc.returncode != 0:
        text += f"\n\n(bench_limiter.py exited with status {proc.returncode}:\n"
        text += "\n".join(proc.stderr.strip().splitlines()[-15:]) + ")"
    return text


# --------------------------------------------------------------------------------------
# Profile of our crawl


@dataclass
class Profile:
    tool: str
    summary: str
    """The layer table and the top functions, for RESULTS.md."""
    full: str
    """Everything, for profile.txt."""


def profile_crawl(tool: str, base: str, concurrency: int) -> Profile:
    """Sample one crawl of the site with py-spy (or cProfile, if py-spy is missing or fails)."""
    out_dir = WORK / "profile" / tool
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    pages_path = out_dir / "pages.jsonl"
    crawl = crawl_command(tool, [base], pages_path, concurrency=concurrency, per_host=concurrency)
    pyspy = shutil.which("py-spy")
    if pyspy:
        raw = out_dir / "pyspy.txt"
        cmd = [pyspy, "record", "-F", "-r", "250", "-f", "raw", "-o", str(raw), "--", *crawl]
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, check=False)
        if proc.returncode == 0 and raw.exists():
            head = f"{LABELS[tool]}: {read_output(pages_path).ok:,} pages crawled under py-spy\n\n"
            return Profile(
                tool, head + _pyspy_report(raw, 15, brief=True), head + _pyspy_report(raw, 40)
            )
        log(f"  py-spy failed ({proc.returncode}); falling back to cProfile")
    import io
    import pstats

    prof = out_dir / "crawl.prof"
    subprocess.run(
        [PY, "-m", "cProfile", "-o", str(prof), *crawl[1:]],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        check=True,
    )

    def stats(top: int) -> str:
        buf = io.StringIO()
        data = pstats.Stats(str(prof), stream=buf)
        data.sort_stats("tottime").print_stats(top)
        data.sort_stats("cumulative").print_stats(top)
        head = f"{LABELS[tool]}: cProfile (deterministic; it inflates code of many small calls)"
        return head + "\n\n" + buf.getvalue()

    return Profile(tool, stats(12), stats(40))


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _module_of(file: str) -> str:
    """A frame's file as a bucket: crawler files by name, other code by top package."""
    if file.startswith("crawler/"):
        return file
    if file.startswith("<frozen"):
        return "python (frozen)"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py") if "/" in file else f"stdlib {head.removesuffix('.py')}"


_OUTPUT: Final = "JSON Lines output: encode + one write per page (_output.py)"
_PARSE: Final = "HTML parse + link extraction (parse_html, selectolax, urls)"


def _category(frames: Sequence[tuple[str, str]]) -> str:
    """What one sample's CPU was spent on, from its (function, file) stack, root first."""
    if frames and frames[-1][1].startswith("trio/_core/_thread_cache"):
        # A cached thread waiting for work (one is left by the output file's open):
        # py-spy may sample its wait as running; it is not in the process's CPU time.
        return "idle worker thread (sampled wait, not CPU)"
    for func, file in frames:  # outer layers claim everything below them
        if file.startswith("<frozen importlib"):
            return "imports (start-up)"
        if file == "crawler/_state.py":
            return "durable state (SQLite, in its own thread)"
        if file == "crawler/_output.py":
            return _OUTPUT
        if func == "parse_html":
            return _PARSE
        if file == "crawler/_parsepool.py" or file.startswith("trio/_unix_pipes"):
            return "handing pages to the parse process and back (_parsepool, pipes)"
        if file in ("crawler/_robots.py", "crawler/_decode.py") or file.startswith("protego"):
            return "robots.txt, decoding"
    for func, file in reversed(frames):  # otherwise the innermost recognisable layer
        if func.endswith(("_nonblocking_helper", "_Conn.send_all", "_Conn.receive")):
            return "socket send/recv syscalls (loopback TCP, kernel included)"
        if func.endswith("get_events"):
            return "epoll_wait"
        if file.startswith("h11/"):
            return "h11 (HTTP/1.1 state machine)"
        if file.startswith("httpx/"):
            return "httpx objects (Request, URL, Headers)"
        if file in ("crawler/_urls.py", "crawler/_frontier.py"):
            return "URL normalisation + frontier (discovered links)"
        if file.startswith("crawler/"):
            return "crawler engine, fetch, transport (own Python)"
        if file.startswith(("trio/", "outcome/", "<attrs generated", "contextlib")):
            return "trio run loop, cancel scopes, channels"
    return "other"


def _pyspy_report(raw: Path, top: int, *, brief: bool = False) -> str:
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        names = []
        parsed: list[tuple[str, str]] = []
        for frame in frames:
            m = _FRAME.match(frame)
            names.append(f"{m['func']} ({m['file']})" if m else frame)
            parsed.append((m["func"], m["file"]) if m else (frame, "?"))
        categories[_category(parsed)] += count
        own[names[-1]] += count
        for name in set(names):
            total[name] += count
        leaf = _FRAME.match(frames[-1])
        by_module[_module_of(leaf["file"]) if leaf else "?"] += count
    if not samples:
        return "py-spy recorded no samples"

    def table(title: str, counter: Counter[str], width: int) -> list[str]:
        rows = [f"{title}", f"{'share':>7}  {'samples':>7}  name", "-" * width]
        for name, count in counter.most_common(top):
            rows.append(f"{100 * count / samples:6.1f}%  {count:7d}  {name}")
        return [*rows, ""]

    lines = [
        f"py-spy, {samples} samples of the crawling process while on CPU (idle waits excluded;"
        " its parse process, if any, is not sampled)",
        "",
        *table("Where the CPU goes (each sample charged to one layer)", categories, 80),
        *([] if brief else table("Self time by module (the leaf frame's file)", by_module, 60)),
        *table("Self time by function", own, 100),
        *([] if brief else table("Total (inclusive) time by function", total, 100)),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["CPU"] = found.group(1).strip() if found else platform.processor() or "?"
    except OSError:
        info["CPU"] = platform.processor() or "?"
    info["cores"] = str(os.cpu_count())
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
        kib = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)
        info["RAM"] = f"{int(kib.group(1)) / MiB:.1f} GiB" if kib else "?"
    except OSError:
        info["RAM"] = "?"
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    for dist in (
        "crawler",
        "trio",
        "httpx",
        "h11",
        "selectolax",
        "scrapy",
        "twisted",
        "aiohttp",
        "aiolimiter",
    ):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------
# Report


@dataclass
class Throughput:
    """One throughput part (plain HTTP or HTTPS): its runs and their summary."""

    server: str
    runs: list[Run]
    fixed: dict[str, Measured]
    summary: dict[str, Summary]


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def headline_rows(
    plain: Throughput | None, https: Throughput | None, broad: Sequence[BroadRun]
) -> list[tuple[str, str, str, str]]:
    """(figure, median (min-max) over the rounds, target, met) for the headline table."""
    rows: list[tuple[str, str, str, str]] = []

    def part(t: Throughput, prefix: str, targets: Sequence[tuple[str, float]]) -> None:
        for tool in ("ours", "aiohttp", "scrapy"):
            s = t.summary.get(tool)
            if s is not None and s.net_spread is not None:
                rows.append((f"{prefix}{LABELS[tool]}, pages/s net", s.net_spread.text(), "", ""))
        for other, target in targets:
            if {"ours", other} <= t.summary.keys():
                ratio = round_ratios(t.runs, t.fixed, "ours", other)
                rows.append(
                    (
                        f"{prefix}ours / {LABELS[other]}, pages/s net",
                        ratio.text(".2f", "x"),
                        f">= {target:g}x",
                        _met(ratio.median >= target),
                    )
                )

    if plain is not None:
        part(plain, "", [("aiohttp", TARGET_VS_AIOHTTP), ("scrapy", TARGET_VS_SCRAPY)])
    if https is not None:
        part(https, "HTTPS: ", [("aiohttp", TARGET_HTTPS_VS_AIOHTTP)])
    for run in broad:
        if run.error is not None:
            rows.append((f"broad polite crawl: {LABELS[run.tool]}", "failed", "", ""))
            continue
        share = run.requests_per_s / run.ceiling
        figure = (
            f"{100 * share:.1f}% ({run.requests_per_s:.1f} of {run.ceiling:g} req/s),"
            f" {run.violations} violation(s)"
        )
        target, met = "", ""
        if run.tool == "ours":
            target = f">= {100 * TARGET_BROAD_CEILING:g}%, no violation"
            met = _met(share >= TARGET_BROAD_CEILING and run.violations == 0)
        rows.append((f"broad polite crawl: {LABELS[run.tool]}", figure, target, met))
    return rows


def console_table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    header = ("figure", "median (min\u2013max)", "target", "met")
    table = [header, *((a, b, c, d.replace("*", "")) for a, b, c, d in rows)]
    widths = [max(len(r[i].replace("`", "")) for r in table) for i in range(4)]
    lines = []
    for i, row in enumerate(table):
        cells = [cell.replace("`", "").ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(
    args: argparse.Namespace,
    info: dict[str, str],
    server: str,
    summary: dict[str, Summary],
    runs: Sequence[Run],
    polite: Sequence[PoliteRun],
    limiter: str | None,
    profiles: Sequence[Profile],
    loads: tuple[str, str],
    started: str,
    *,
    command: str,
    headline: Sequence[tuple[str, str, str, str]],
    fixed: dict[str, Measured] | None = None,
    https: Throughput | None = None,
    https_note: str | None = None,
    broad: Sequence[BroadRun] = (),
) -> str:
    md: list[str] = ["# Benchmark results", ""]
    md += [f"Command: `{command}`", ""]
    if args.quick:
        md += [
            "**Quick figures** (`--quick`: a smoke run, one round on a small site, short",
            "runs): they check that the suite works, they are not the headline.",
            "",
        ]
    md.append(
        f"Produced on {started}: {args.rounds} round(s), {args.pages:,}-page site, Scrapy"
        f" capped at {args.scrapy_pages:,} pages."
    )
    if headline:
        md += [
            "",
            "## Headline",
            "",
            f"Median and, after it, the range (min-max) over the {args.rounds} round(s) of the",
            "throughput runs (a ratio is taken within each round, then its median and range;",
            "pages/s *net* leaves out each command's start-up and shut-down). The broad polite",
            "crawl is one run per crawler.",
            "",
            "| figure | median (min-max) | target | met |",
            "| --- | --- | --- | --- |",
        ]
        md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in headline]
    md += ["", "## Machine", "", "| | |", "| --- | --- |"]
    for key, value in info.items():
        md.append(f"| {key} | {value} |")
    md.append(f"| site server | {server} |")
    md.append(f"| load average (1/5/15 min) at start | {loads[0]} |")
    md.append(f"| load average at end | {loads[1]} |")
    md += [
        "",
        "The load average counts every runnable process on the machine. Above ~1 on 2 cores,",
        "other work shared the CPUs and every wall-clock figure below is slower than on an",
        "idle machine; CPU per page is the figure that contention disturbs least.",
    ]
    if summary:
        md += ["", "## 1. Throughput", ""]
        md += [
            f"Crawl the generated {args.pages:,}-page site (6 KB pages, 10 relative links",
            "each) to JSON Lines, concurrency 32 (32 per host), no rate limit; robots.txt",
            "fetched and obeyed by ours and Scrapy (the aiohttp recipe has no robots support).",
            "Each run is a fresh process; wall time, CPU (user + sys) and peak RSS come from",
            "`os.wait4` on that process, whose CPU includes its own children's (ours: the",
            "parse process, see `crawler/_parsepool.py`) and whose peak RSS is its largest",
            "process's, not their sum. *Fixed cost* is the same command crawling one",
            "unlinked page (start-up, robots.txt, shut-down); *pages/s net* divides by the",
            "wall time minus that (at most half of it: on a small site, noise could make the",
            "fixed cost the whole run), which matters for Scrapy's shorter capped run. Medians",
            f"over {args.rounds} interleaved round(s), the range (min-max) after them; a ratio",
            "of pages/s is taken within each round, then its median and range.",
            "",
            "| crawler | pages | wall s | pages/s | pages/s net | CPU ms/page | peak RSS MiB"
            " | fixed cost s | complete |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for tool, s in summary.items():
            md.append(
                f"| {LABELS[tool]} | {s.pages:,.0f} | {s.wall:.2f}"
                f" | {Spread.of(s.pages_per_s_all).text()}"
                f" | {s.net_spread.text() if s.net_spread else '?'}"
                f" | {s.cpu_spread.text('.3f') if s.cpu_spread else '?'} | {s.rss_mib:.1f}"
                f" | {s.fixed_wall:.2f} | {'yes' if s.complete else '**no**'} |"
            )
        if {"ours", "aiohttp", "scrapy"} <= summary.keys() and fixed is not None:
            o, a = summary["ours"], summary["aiohttp"]

            def per_round(num: str, den: str) -> tuple[Spread, float]:
                net = round_ratios(runs, fixed, num, den)
                return net, round_ratios(runs, fixed, num, den, net=False).median

            vs_aiohttp, vs_aiohttp_wall = per_round("ours", "aiohttp")
            vs_scrapy, vs_scrapy_wall = per_round("ours", "scrapy")
            rows: list[tuple[str, Spread | float, float, float | None, bool]] = [
                (
                    "pages/s net, ours / aiohttp",
                    vs_aiohttp,
                    vs_aiohttp_wall,
                    TARGET_VS_AIOHTTP,
                    True,
                ),
                (
                    "pages/s net, ours / Scrapy",
                    vs_scrapy,
                    vs_scrapy_wall,
                    TARGET_VS_SCRAPY,
                    True,
                ),
                (
                    "CPU per page, aiohttp / ours",
                    a.cpu_ms_per_page / o.cpu_ms_per_page,
                    a.cpu_ms_per_page / o.cpu_ms_per_page,
                    None,
                    True,
                ),
                (
                    "peak RSS, ours / aiohttp",
                    o.rss_mib / a.rss_mib,
                    o.rss_mib / a.rss_mib,
                    TARGET_RSS_VS_AIOHTTP,
                    False,
                ),
            ]
            lib = summary.get("ours-lib")
            if lib is not None:
                lib_vs, lib_vs_wall = per_round("ours-lib", "aiohttp")
                rows += [
                    (
                        "pages/s net, ours via the library / aiohttp",
                        lib_vs,
                        lib_vs_wall,
                        None,
                        True,
                    ),
                    (
                        "CPU per page, aiohttp / ours via the library",
                        a.cpu_ms_per_page / lib.cpu_ms_per_page,
                        a.cpu_ms_per_page / lib.cpu_ms_per_page,
                        None,
                        True,
                    ),
                ]
            md += [
                "",
                "| ratio | measured, median (min-max) | (with start-up) | target | met |",
                "| --- | ---: | ---: | ---: | --- |",
            ]
            for name, measured, wall_ratio, target, at_least in rows:
                ratio = measured if isinstance(measured, Spread) else Spread.of([measured])
                shown = ratio.text(".2f", "x")
                if target is None:
                    md.append(f"| {name} | {shown} | {wall_ratio:.2f}x | (diagnostic) | |")
                    continue
                met = _met(ratio.median >= target if at_least else ratio.median <= target)
                sign = ">=" if at_least else "<="
                md.append(f"| {name} | {shown} | {wall_ratio:.2f}x | {sign} {target:g}x | {met} |")
            md += [
                "",
                "CPU per page is the contention-proof view of the pages/s target: where a",
                "crawler is CPU-bound on one core, the pages/s ratio tends to the inverse CPU",
                "ratio. Ours spreads its CPU over two cores (the crawl, and its parse process),",
                "so its lead in pages/s is larger than its lead in CPU per page. *Ours via",
                "the library* is the same crawl through `crawler.open_crawl`, writing JSON Lines",
                "with a plain buffered `file.write` (`benchmarks/crawl_ours.py`): the gap between",
                "it and the `crawl` command is the cost of the command's output layer.",
            ]
        md += [
            "",
            "Every run:",
            "",
            "| round | crawler | pages (lines) | distinct 200s | wall s | pages/s | CPU s"
            " | peak RSS MiB | exit |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in runs:
            md.append(
                f"| {r.round} | {r.tool} | {r.lines:,} | {r.ok:,} | {r.wall:.2f}"
                f" | {r.lines / r.wall:,.0f} | {r.cpu:.2f} | {r.rss_kib / 1024:.1f}"
                f" | {r.returncode} |"
            )
        md += ["", "![throughput](throughput.png)"]
    if https is not None or https_note is not None:
        md += ["", "## 2. HTTPS throughput", ""]
    if https_note is not None:
        md.append(https_note)
    if https is not None:
        md += [
            "The same site and the same crawl (concurrency 32, 32 per host, no rate limit),",
            f"served over TLS by {https.server}: the CA and the",
            "certificate for 127.0.0.1 are made with trustme and written to",
            "`benchmarks/work/tls/`. Ours runs `python -m crawler --ca-bundle CA`; the recipe",
            "passes `ssl.create_default_context(cafile=CA)` to its `TCPConnector`. HTTP/1.1",
            "and keep-alive for both. Median (min-max) over the rounds.",
            "",
            "| crawler | pages | pages/s | pages/s net | CPU ms/page | peak RSS MiB | complete |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for tool, s in https.summary.items():
            assert s.pages_per_s_spread and s.net_spread and s.cpu_spread
            md.append(
                f"| {LABELS[tool]} | {s.pages:,.0f} | {s.pages_per_s_spread.text()}"
                f" | {s.net_spread.text()} | {s.cpu_spread.text('.3f')} | {s.rss_mib:.1f}"
                f" | {'yes' if s.complete else '**no**'} |"
            )
        if {"ours", "aiohttp"} <= https.summary.keys():
            https_ratio = round_ratios(https.runs, https.fixed, "ours", "aiohttp")
            cpu = Spread.of(
                [
                    (a.cpu / max(a.lines, 1)) / (o.cpu / max(o.lines, 1))
                    for o in https.runs
                    for a in https.runs
                    if o.tool == "ours" and a.tool == "aiohttp" and o.round == a.round
                ]
            )
            md += [
                "",
                "| ratio | median (min-max) | target | met |",
                "| --- | --- | ---: | --- |",
                f"| pages/s net, ours / aiohttp | {https_ratio.text('.2f', 'x')}"
                f" | >= {TARGET_HTTPS_VS_AIOHTTP:g}x"
                f" | {_met(https_ratio.median >= TARGET_HTTPS_VS_AIOHTTP)} |",
                f"| CPU per page, aiohttp / ours | {cpu.text('.2f', 'x')} | (diagnostic) | |",
            ]
        md += ["", "| round | crawler | pages | wall s | pages/s | CPU s | exit |"]
        md += ["| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in https.runs:
            md.append(
                f"| {r.round} | {r.tool} | {r.lines:,} | {r.wall:.2f} | {r.lines / r.wall:,.0f}"
                f" | {r.cpu:.2f} | {r.returncode} |"
            )
    if polite:
        md += ["", "## 3. Politeness accuracy", ""]
        md += [
            f"{POLITE_HOSTS} loopback hosts (ports of `tests.web`, {POLITE_LATENCY * 1000:g}"
            f" ms latency per request), {POLITE_RATE:g} requests/s per host, burst"
            f" {POLITE_BURST}, {POLITE_PER_HOST} in flight per host, {args.polite_pages} pages",
            "per host. Every figure comes from the server's log of request start and end",
            "times. Rate = (requests - 1) / (last start - first start). The bound for a",
            f"window W is burst + rate x W (= {POLITE_BURST + POLITE_RATE:g} for W = 1 s);"
            " *over bound* is",
            "the largest excess over all windows W in "
            + ", ".join(f"{w:g}" for w in POLITE_WINDOWS)
            + " s (0 or less = never over). A short gap (under 90% of 1 / rate) with no",
            "window over the bound is a request that reached the server late, followed by",
            "one on time: on a busy machine, a crawler process that is descheduled for a",
            "moment after a rate slot was granted shows up here.",
            "",
            "| crawler | host | requests | span s | rate /s | error | max in 1 s | over bound"
            f" | min gap ms | gaps < {900 / POLITE_RATE:g} ms | peak concurrency |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in polite:
            if run.error is not None:
                md.append(f"| {LABELS[run.tool]} | crawl failed: {run.error} ||||||||||")
            for i, h in enumerate(run.hosts):
                err = (h.rate - POLITE_RATE) / POLITE_RATE
                md.append(
                    f"| {LABELS[run.tool]} | {i} | {h.requests} | {h.span:.2f} | {h.rate:.3f}"
                    f" | {100 * err:+.2f}% | {h.max_1s} | {h.window_excess:+d}"
                    f" | {h.min_gap_ms:.1f} | {h.short_gaps} | {h.peak_concurrency} |"
                )
        md += ["", "| target (ours) | measured | met |", "| --- | --- | --- |"]
        ours = next((r for r in polite if r.tool == "ours"), None)
        if ours is not None and ours.hosts:
            worst = max(abs(h.rate - POLITE_RATE) / POLITE_RATE for h in ours.hosts)
            over = max(h.window_excess for h in ours.hosts)
            conc = max(h.peak_concurrency for h in ours.hosts)
            md.append(
                f"| rate within {100 * RATE_TOLERANCE:g}% of {POLITE_RATE:g}/s on every host"
                f" | worst {100 * worst:.2f}% | {'yes' if worst <= RATE_TOLERANCE else '**no**'} |"
            )
            md.append(
                f"| never more than burst + rate x W in a window | worst excess {over:+d}"
                f" | {'yes' if over <= 0 else '**no**'} |"
            )
            md.append(
                f"| concurrency <= {POLITE_PER_HOST} per host | peak {conc}"
                f" | {'yes' if conc <= POLITE_PER_HOST else '**no**'} |"
            )
        md += ["", "![politeness](politeness.png)"]
    if broad:
        md += ["", "## 4. Broad polite crawl", ""]
        first = broad[0]
        md += [
            f"{first.hosts} loopback ports of one `tests.web` process (= {first.hosts}"
            f" hosts), {BROAD_LATENCY * 1000:g} ms",
            "latency per request, every host's `/` a seed (so every host has work from the",
            f"start), each host limited to {BROAD_RATE:g} requests/s: ours with `--rate"
            f" {BROAD_RATE:g} --burst {BROAD_BURST} --per-host {BROAD_PER_HOST}",
            f"--concurrency {BROAD_CONCURRENCY}`; the recipe with `AsyncLimiter({BROAD_RATE:g}, 1)`"
            f" + `Semaphore({BROAD_PER_HOST})` per host and",
            f"{BROAD_CONCURRENCY} workers; Scrapy with `DOWNLOAD_DELAY = {1 / BROAD_RATE:g}`"
            f" (no jitter), `CONCURRENT_REQUESTS_PER_DOMAIN = {BROAD_PER_HOST}`,",
            f"`CONCURRENT_REQUESTS = {BROAD_CONCURRENCY}` and one download slot per port. Each"
            f" crawls for {first.seconds:g} s from the first",
            "request the server sees; the figures are those of that window, from the server's",
            "log (robots.txt requests included: they count against a host's rate).",
            f"The ceiling is hosts x rate = {first.ceiling:g} requests/s. The bound for a window"
            f" W on one host is burst + rate x W (= {BROAD_BURST + BROAD_RATE:g} for W = 1 s,",
            "burst 1 as ours is set); *violations* = hosts with a window over the bound, plus",
            f"one if any host had more than {BROAD_PER_HOST} request(s) in flight. The server's"
            " CPU is there to show it was not the bottleneck. A share above 100% is the burst:",
            "a host may get burst + rate x W requests in W seconds, not rate x W.",
            "",
            "| crawler | requests/s | of the ceiling | per-host rate median (min-max) |"
            " hosts idle | max in 1 s on a host | worst excess | hosts over | peak per-host"
            " concurrency | server CPU |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in broad:
            if b.error is not None:
                md.append(f"| {LABELS[b.tool]} | failed: {b.error} |||||||||")
                continue
            rates = Spread.of(b.host_rates)
            md.append(
                f"| {LABELS[b.tool]} | {b.requests_per_s:.1f}"
                f" | {100 * b.requests_per_s / b.ceiling:.1f}%"
                f" | {rates.text('.2f', '/s')} | {b.idle_hosts} | {b.max_1s}"
                f" | {b.window_excess:+d} | {b.hosts_over} | {b.peak_concurrency}"
                f" | {100 * b.server_cpu / max(b.wall, 1e-9):.0f}% |"
            )
        ours_broad = next((r for r in broad if r.tool == "ours" and r.error is None), None)
        if ours_broad is not None:
            share = ours_broad.requests_per_s / ours_broad.ceiling
            md += [
                "",
                "| target (ours) | measured | met |",
                "| --- | --- | --- |",
                f"| >= {100 * TARGET_BROAD_CEILING:g}% of the ceiling | {100 * share:.1f}%"
                f" | {_met(share >= TARGET_BROAD_CEILING)} |",
                f"| no politeness violation | {ours_broad.violations}"
                f" | {_met(ours_broad.violations == 0)} |",
            ]
    md += ["", "## 5. Limiter micro-benchmark", ""]
    if limiter is None:
        md.append(
            "Not run: " + ("skipped by --quick." if args.quick else "bench_limiter.py not found.")
        )
    else:
        md += ["Output of `python benchmarks/bench_limiter.py` (headings demoted):", ""]
        md += [("###" + line) if line.startswith("#") else line for line in limiter.splitlines()]
    if profiles:
        md += [
            "",
            "## Profile of our crawl",
            "",
            "Our crawl missed a throughput target, so `run.py` sampled one more crawl of the",
            "same site with py-spy, through the `crawl` command and through the library.",
            "Only samples on CPU count (waits in epoll are idle). Each sample is charged to",
            "one layer: the outermost of output / HTML parsing / robots if on the stack, else",
            "the innermost recognisable one. Full text in `profile.txt`.",
        ]
        for prof in profiles:
            md += ["", f"### {LABELS[prof.tool]}", "", "```", prof.summary.rstrip(), "```"]
    return "\n".join(md) + "\n"


def plot(summary: dict[str, Summary], polite: Sequence[PoliteRun], out_dir: Path) -> list[str]:
    """Write throughput.png and politeness.png; return the names written."""
    try:
        import matplotlib
    except ImportError:
        log("  matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    polite = [run for run in polite if run.hosts]
    colors = {"ours": "#1f77b4", "scrapy": "#2ca02c", "aiohttp": "#d62728", "ours-lib": "#9ecae1"}
    if summary:
        tools = list(summary)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
        panels: list[tuple[str, list[float]]] = [
            (
                "pages/s (net of start-up; higher is better)",
                [summary[t].net_pages_per_s for t in tools],
            ),
            ("CPU ms per page (lower is better)", [summary[t].cpu_ms_per_page for t in tools]),
            ("peak RSS MiB (lower is better)", [summary[t].rss_mib for t in tools]),
        ]
        for ax, (title, values) in zip(axes, panels, strict=True):
            bars = ax.bar(tools, values, color=[colors[t] for t in tools])
            ax.tick_params(axis="x", labelsize=9)
            ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values])
            ax.set_title(title, fontsize=10)
            ax.margins(y=0.15)
        fig.suptitle("Throughput: crawl a static site on loopback, concurrency 32")
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("throughput.png")
    if polite:
        fig, axes = plt.subplots(1, len(polite), figsize=(6.5 * len(polite), 4.2), sharey=True)
        axes_list = list(axes) if len(polite) > 1 else [axes]
        for ax, run in zip(axes_list, polite, strict=True):
            for i, h in enumerate(run.hosts):
                xs: list[float] = []
                ys: list[int] = []
                lo = 0
                for hi, t in enumerate(h.starts):
                    while t - h.starts[lo] >= 1.0:
                        lo += 1
                    xs.append(t)
                    ys.append(hi - lo + 1)
                ax.step(xs, ys, where="post", label=f"host {i}", linewidth=1)
            ax.axhline(POLITE_RATE, color="grey", linestyle=":", label=f"rate {POLITE_RATE:g}/s")
            ax.axhline(
                POLITE_BURST + POLITE_RATE,
                color="black",
                linestyle="--",
                label=f"bound burst + rate x 1 s = {POLITE_BURST + POLITE_RATE:g}",
            )
            ax.set_title(LABELS[run.tool].replace("`", ""))
            ax.set_xlabel("seconds since the first request")
            ax.legend(fontsize=8, loc="lower right")
        axes_list[0].set_ylabel("requests started in the last 1 s (server log)")
        fig.suptitle(
            f"Politeness: {POLITE_RATE:g} requests/s per host, burst {POLITE_BURST}, "
            f"{POLITE_PER_HOST} in flight per host"
        )
        fig.tight_layout()
        fig.savefig(out_dir / "politeness.png", dpi=110)
        plt.close(fig)
        written.append("politeness.png")
    return written


# --------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Throughput and politeness of our crawler against Scrapy and an "
        "aiohttp + aiolimiter recipe. See benchmarks/README.md.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small site, one round")
    p.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 3)")
    p.add_argument("--pages", type=int, default=None, help="site size (default 20000)")
    p.add_argument(
        "--scrapy-pages", type=int, default=None, help="cap Scrapy's crawl (default 3000)"
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--polite-pages", type=int, default=None, help="pages per host (default 200 = ~10 s)"
    )
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--no-https", dest="https", action="store_false", help="skip HTTPS")
    p.add_argument("--no-politeness", dest="politeness", action="store_false")
    p.add_argument(
        "--no-broad", dest="broad", action="store_false", help="skip the broad polite crawl"
    )
    p.add_argument("--broad-hosts", type=int, default=100, help="hosts (ports) of the broad crawl")
    p.add_argument(
        "--broad-seconds", type=float, default=None, help="length of each broad crawl (25 s)"
    )
    p.add_argument("--no-limiter", dest="limiter", action="store_false")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default=None,
        help="profile our crawl: when it misses a target (auto, the default), always, never",
    )
    p.add_argument("--python-server", action="store_true", help="use the fallback, not nginx")
    p.add_argument("--results", type=Path, default=None, help="output directory")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.pages = args.pages or (2000 if quick else 20_000)
    args.scrapy_pages = args.scrapy_pages or (500 if quick else 3000)
    args.polite_pages = args.polite_pages or (40 if quick else 200)
    args.broad_seconds = args.broad_seconds or (8.0 if quick else 25.0)
    args.profile = args.profile or ("never" if quick else "auto")
    args.results = args.results or (WORK / "results-quick" if quick else RESULTS)
    if quick:
        args.limiter = False
    if args.broad_seconds <= 0:
        p.error("--broad-seconds must be > 0")
    for name in ("rounds", "pages", "scrapy_pages", "polite_pages", "concurrency", "broad_hosts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers and crawls in flight are stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _terminate)
    missing = [m for m in ("scrapy", "aiohttp", "aiolimiter") if not importlib.util.find_spec(m)]
    if args.https and not importlib.util.find_spec("trustme"):
        missing.append("trustme")
    if missing:
        log(f"missing {', '.join(missing)}: run  pip install -e '.[bench]'  first")
        return 2
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = loadavg()
    info = machine()
    server = "(not used)"
    summary: dict[str, Summary] = {}
    runs: list[Run] = []
    plain: Throughput | None = None
    https: Throughput | None = None
    https_note: str | None = None
    profiles: list[Profile] = []
    site_dir: Path | None = None
    if args.throughput or args.https:
        log(f"generating the {args.pages:,}-page site (skipped when present) ...")
        gen = subprocess.run(
            [PY, str(HERE / "site.py"), "generate", "--pages", str(args.pages)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        site_dir = Path(json.loads(gen.stdout)["dir"])
    if args.throughput:
        assert site_dir is not None
        with site_server(site_dir, allow_nginx=not args.python_server) as (base, server):
            log(f"throughput: {base} served by {server}")
            runs, fixed = run_throughput(
                base,
                args.pages,
                args.rounds,
                args.scrapy_pages,
                args.concurrency,
                fixed_reps=1 if args.quick else 2,
            )
            summary = summarise(runs, fixed)
            plain = Throughput(server, runs, fixed, summary)
            missed = False
            if {"ours", "aiohttp", "scrapy"} <= summary.keys():
                o, a, s = summary["ours"], summary["aiohttp"], summary["scrapy"]
                missed = (
                    o.net_pages_per_s < TARGET_VS_AIOHTTP * a.net_pages_per_s
                    or o.net_pages_per_s < TARGET_VS_SCRAPY * s.net_pages_per_s
                )
            if args.profile == "always" or (args.profile == "auto" and missed):
                log("profiling our crawl ...")
                profiles = [profile_crawl(t, base, args.concurrency) for t in ("ours", "ours-lib")]
    if args.https:
        assert site_dir is not None
        nginx = None if args.python_server else find_nginx()
        if nginx is None:
            https_note = "Not run: HTTPS is served by nginx, and nginx was not used."
            log(f"https: skipped ({https_note})")
        else:
            tls = make_tls_files()
            with site_server(site_dir, tls=tls) as (base, https_server):
                log(f"https: {base} served by {https_server}, CA {tls.ca}")
                https_runs, https_fixed = run_throughput(
                    base,
                    args.pages,
                    args.rounds,
                    args.scrapy_pages,
                    args.concurrency,
                    fixed_reps=1,
                    tools=HTTPS_TOOLS,
                    ca=tls.ca,
                    name="https",
                )
            https = Throughput(
                https_server, https_runs, https_fixed, summarise(https_runs, https_fixed)
            )
    polite: list[PoliteRun] = []
    if args.politeness:
        log("politeness ...")
        polite = run_politeness(args.polite_pages)
    broad: list[BroadRun] = []
    if args.broad:
        log(f"broad polite crawl: {args.broad_hosts} hosts, {args.broad_seconds:g} s each ...")
        broad = run_broad(args.broad_hosts, args.broad_seconds)
    limiter: str | None = None
    if args.limiter:
        log("limiter micro-benchmark ...")
        limiter = run_limiter_bench()
    load_end = loadavg()
    out_dir: Path = args.results
    out_dir.mkdir(parents=True, exist_ok=True)
    headline = headline_rows(plain, https, broad)
    report = render(
        args,
        info,
        server,
        summary,
        runs,
        polite,
        limiter,
        profiles,
        (load_start, load_end),
        started,
        command=command,
        headline=headline,
        fixed=None if plain is None else plain.fixed,
        https=https,
        https_note=https_note,
        broad=broad,
    )
    (out_dir / "RESULTS.md").write_text(report, encoding="utf-8")
    if profiles:
        text = "\n\n".join(p.full.rstrip() for p in profiles)
        (out_dir / "profile.txt").write_text(text + "\n", encoding="utf-8")
    raw = {
        "started": started,
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "server": server,
        "load": [load_start, load_end],
        "summary": {k: asdict(v) for k, v in summary.items()},
        "runs": [asdict(r) for r in runs],
        "https": None if https is None else {
            "server": https.server,
            "summary": {k: asdict(v) for k, v in https.summary.items()},
            "runs": [asdict(r) for r in https.runs],
        },
        "politeness": [asdict(r) for r in polite],
        "broad": [asdict(r) for r in broad],
        "headline": [dict(zip(("figure", "median_range", "target", "met"), row, strict=True))
                     for row in headline],
    }  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    written = plot(summary, polite, out_dir)
    log(f"wrote {out_dir / 'RESULTS.md'}" + "".join(f", {w}" for w in written))
    quick = " (quick figures: a smoke run, not the headline)" if args.quick else ""
    print(f"{command}{quick}")
    print(f"median (min-max) over {args.rounds} round(s); load average {load_start} -> {load_end}")
    print()
    print(console_table(headline))
    print()
    print(f"full report: {out_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
