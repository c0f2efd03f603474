"""Shared-crawl throughput: pages/s with 1 and 2 worker processes sharing one Redis.

    python benchmarks/bench_distributed.py [--pages 20000] [--rounds 2] [--workers 1,2]

The site is the benchmark suite's generated static site (``benchmarks/site.py generate``)
served by nginx when installed (``benchmarks/run.py``'s configuration, in a work directory
of our own) or by ``site.py serve``; Redis is a private ``redis-server`` on a free loopback
port, without persistence. Each worker is ``python -m crawler._distributed`` with
``--rate 0 --concurrency 32 --per-host 64`` (the shared per-host cap is not what limits two
workers of 32), writing its own JSON Lines file. For reference the single-process ``crawl``
command crawls the same site with the same settings (``--per-host 32``).

Writes ``benchmarks/results/distributed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
WORK: Final = HERE / "work" / "distributed"
RESULTS: Final = HERE / "results"
PY: Final = sys.executable
CONCURRENCY: Final = 32

sys.path.insert(0, str(ROOT))

# benchmarks/run.py, beside this script: its nginx configuration and process helpers.
import run as RUN  # noqa: E402

from tests.redisserver import private_redis  # noqa: E402


def log(message: str) -> None:
    print(f"[bench_distributed] {message}", file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, str]]:
    """Serve `root` on loopback as run.py does, in our own work directory."""
    port: int = RUN.free_port()
    nginx: str | None = RUN.find_nginx()
    work = WORK / "nginx"
    if nginx:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        conf = work / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(RUN.NGINX_CONF.format(user=user, work=work, port=port, root=root))
        cmd = [nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)]
        description = "nginx, 1 worker"
    else:
        cmd = [PY, str(HERE / "site.py"), "serve", str(root), "--port", str(port)]
        description = "fallback trio + h11 server (benchmarks/site.py serve; nginx not found)"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "server.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=err, stderr=err)
    try:
        RUN.wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/", description
    finally:
        RUN.stop(proc, signal.SIGQUIT if nginx else signal.SIGTERM)


@dataclass
class Run:
    workers: int
    pages: int
    wall: float
    cpu: float
    """CPU seconds of the worker processes (user + system)."""
    per_worker: list[int]

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.wall


def count_lines(path: Path) -> int:
    """Lines in a worker's output; a worker that wrote nothing leaves no file."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run_shared(redis_url: str, seed: str, workers: int, timeout: float) -> Run:
    crawl_id = f"bench-{uuid.uuid4().hex[:8]}"
    out_dir = WORK / crawl_id
    out_dir.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    for i in range(workers):
        cmd = [PY, "-m", "crawler", "--redis", redis_url, "--crawl-id", crawl_id]
        cmd += ["--worker-id", f"w{i + 1}", "-o", str(out_dir / "out.jsonl"), "--rate", "0"]
        cmd += ["--concurrency", str(CONCURRENCY), "--per-host", str(2 * CONCURRENCY), "-q"]
        cmd += [seed]
        with open(out_dir / f"w{i + 1}.stderr", "wb") as err:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stderr=err))
    cpu = 0.0
    deadline = start + timeout
    for proc in procs:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"{workers} workers did not finish within {timeout:g} s")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(f"a worker exited with {proc.returncode}; see {out_dir}")
    wall = time.perf_counter() - start
    per_worker = [count_lines(out_dir / f"out.w-w{i + 1}.jsonl") for i in range(workers)]
    urls: set[str] = set()
    for i in range(workers):
        with open(out_dir / f"out.w-w{i + 1}.jsonl", encoding="utf-8") as f:
            urls.update(json.loads(line)["url"] for line in f)
    if len(urls) != sum(per_worker):
        raise RuntimeError(f"{sum(per_worker) - len(urls)} page(s) crawled twice; see {out_dir}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return Run(workers, sum(per_worker), wall, cpu, per_worker)


def run_single(seed: str, timeout: float) -> Run | None:
    """The single-process `crawl` command on the same site (None if it fails)."""
    out = WORK / "single.jsonl"
    cmd = [PY, "-m", "crawler", seed, "-o", str(out), "--concurrency", str(CONCURRENCY)]
    cmd += ["--per-host", str(CONCURRENCY), "--rate", "0", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stderr=subprocess.DEVNULL)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0 or wall > timeout or not out.exists():
        return None
    pages = count_lines(out)
    out.unlink()
    return Run(0, pages, wall, usage.ru_utime + usage.ru_stime, [pages])


def render(
    runs: Sequence[Run], single: Sequence[Run], *, pages: int, server: str, load: str
) -> str:
    versions = {}
    for name in ("coredis", "trio", "httpx"):
        with contextlib.suppress(Exception):
            versions[name] = importlib.metadata.version(name)
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    lines = [
        "# Shared crawl throughput (`benchmarks/bench_distributed.py`)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", redis-server {' '.join(redis_version[2:3])}; site served by {server}; "
        f"load average before: {load}.",
        "",
        f"A {pages:,}-page static site (one origin), no rate limit; each worker process "
        f"`--concurrency {CONCURRENCY} --per-host {2 * CONCURRENCY}`, JSON Lines to its own "
        "file, one shared Redis on loopback. Medians of the rounds; in every shared run the "
        "workers' files held every page exactly once (checked).",
        "",
        "| setup | pages | wall s | pages/s | CPU s (all workers) | CPU ms/page "
        "| pages per worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    groups: dict[int, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.workers, []).append(run)
    rows: list[tuple[str, list[Run]]] = []
    if single:
        rows.append(("single-process `crawl` (reference)", list(single)))
    rows += [(f"shared crawl, {n} worker(s)", group) for n, group in sorted(groups.items())]
    for label, group in rows:
        best = sorted(group, key=lambda r: r.pages_per_second)[len(group) // 2]
        lines.append(
            f"| {label} | {best.pages:,} | {statistics.median(r.wall for r in group):.1f} "
            f"| {statistics.median(r.pages_per_second for r in group):,.0f} "
            f"| {statistics.median(r.cpu for r in group):.1f} "
            f"| {1000 * statistics.median(r.cpu / r.pages for r in group):.2f} "
            f"| {' / '.join(str(n) for n in best.per_worker)} |"
        )
    lines += [
        "",
        "Raw rounds: "
        + "; ".join(
            f"{'single' if r.workers == 0 else f'{r.workers}w'} {r.pages_per_second:,.0f}/s"
            for r in [*single, *runs]
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--no-single", dest="single", action="store_false")
    parser.add_argument("--results", type=Path, default=RESULTS / "distributed.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        log("redis-server not found: run  .ci/redis install  (or apt-get install redis-server)")
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gen = subprocess.run(
        [PY, str(HERE / "site.py"), "generate", "--pages", str(args.pages)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    site_dir = Path(json.loads(gen.stdout)["dir"])
    runs: list[Run] = []
    single: list[Run] = []
    with private_redis(redis_server) as redis_url, serve(site_dir) as (seed, server):
        log(f"site {seed} ({server}), redis {redis_url}")
        for round_ in range(args.rounds):
            if args.single:
                ran = run_single(seed, args.timeout)
                if ran is None:
                    log("the single-process `crawl` command failed; left out")
                else:
                    single.append(ran)
                    log(f"round {round_ + 1}: single-process {ran.pages_per_second:,.0f} pages/s")
            for n in counts:
                run = run_shared(redis_url, seed, n, args.timeout)
                if run.pages != args.pages + 1:  # the pages plus index.html
                    log(f"warning: {n} worker(s) crawled {run.pages} pages")
                runs.append(run)
                log(
                    f"round {round_ + 1}: {n} worker(s) {run.pages_per_second:,.0f} pages/s "
                    f"({run.wall:.1f} s, {run.per_worker})"
                )
    report = render(runs, single, pages=args.pages, server=server, load=load)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
