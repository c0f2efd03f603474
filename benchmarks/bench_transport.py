"""Requests/s of TrioTransport versus httpx's default pool, against a loopback server.

Starts nginx (if installed) serving a static 6 KB file from a temp dir, else the small
trio + h11 server of ``benchmarks/site.py serve`` in a subprocess, then runs
``--requests`` GETs with ``--concurrency`` trio tasks through:

  (a) ``TrioTransport.get``: origin + target in, no httpx objects (the engine's path)
  (a2) ``TrioTransport.handle_async_request`` directly + ``aiter_raw`` (the httpx
       transport interface, which the engine uses when a ``prepare`` hook is set)
  (b) ``httpx.AsyncClient(transport=TrioTransport())``
  (c) ``httpx.AsyncClient()`` with its default httpcore pool
  (d) raw trio + h11 (no httpx at all): the ceiling, for reference

Prints a Markdown table and writes it to ``benchmarks/results/transport.md``.

    python benchmarks/bench_transport.py [--requests 5000] [--concurrency 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import h11
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# benchmarks/run.py, beside this script: its port and process helpers.
import run as RUN

from crawler._transport import TrioTransport

BODY_SIZE = 6 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "transport.md"

NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ text/html html; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
    }}
}}
"""


@contextmanager
def run_server() -> Iterator[tuple[str, str]]:
    """Yield (url, description) of a loopback server with a 6 KB page."""
    port = RUN.free_port()
    body = (b"<html><body>" + b"x" * BODY_SIZE)[: BODY_SIZE - 15] + b"</body></html>\n"
    assert len(body) == BODY_SIZE
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        www = Path(tmp, "www")
        www.mkdir()
        (www / "page.html").write_bytes(body)
        nginx = shutil.which("nginx")
        if nginx:
            os.chmod(tmp, 0o755)
            user = "user root;" if os.geteuid() == 0 else ""
            conf = Path(tmp, "nginx.conf")
            conf.write_text(NGINX_CONF.format(user=user, dir=tmp, port=port))
            cmd = [nginx, "-p", tmp, "-c", str(conf)]
            version = subprocess.run(
                [nginx, "-v"], capture_output=True, text=True, check=False
            ).stderr.strip()
            description = f"{version.replace('nginx version: ', '')}, 1 worker"
        else:
            site = Path(__file__).resolve().parent / "site.py"
            cmd = [sys.executable, str(site), "serve", str(www), "--port", str(port)]
            description = "trio + h11 server (benchmarks/site.py serve; nginx not installed)"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            RUN.wait_for_port(port, proc)
            yield f"http://127.0.0.1:{port}/page.html", description
        finally:
            RUN.stop(proc, signal.SIGTERM if nginx is None else signal.SIGQUIT)
            if proc.stderr is not None:
                proc.stderr.close()


# --------------------------------------------------------------------- clients

Fetch = Callable[[], Awaitable[int]]


Result = tuple[float, float]
"""(requests per second, client CPU microseconds per request)"""


async def drive(fetch: Fetch, requests: int, concurrency: int) -> Result:
    """Run ``requests`` fetches over ``concurrency`` tasks."""
    remaining = requests
    received = 0

    async def worker() -> None:
        nonlocal remaining, received
        while remaining > 0:
            remaining -= 1
            n = await fetch()  # not `received += await ...`: that reads before awaiting
            received += n

    start = time.perf_counter()
    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if received != requests * BODY_SIZE:
        raise RuntimeError(f"received {received} body bytes, expected {requests * BODY_SIZE}")
    return requests / elapsed, cpu / requests * 1e6


async def bench_transport_direct(url: str, requests: int, concurrency: int, warmup: int) -> Result:
    async with TrioTransport() as transport:

        async def fetch() -> int:
            response = await transport.handle_async_request(httpx.Request("GET", url))
            n = 0
            async for chunk in response.aiter_raw():
                n += len(chunk)
            await response.aclose()
            return n

        await drive(fetch, warmup, concurrency)
        return await drive(fetch, requests, concurrency)


async def bench_transport_get(url: str, requests: int, concurrency: int, warmup: int) -> Result:
    parsed = httpx.URL(url)
    origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
    target = parsed.raw_path.decode("ascii")
    async with TrioTransport() as transport:

        async def fetch() -> int:
            reply = await transport.get(origin, target, ((b"User-Agent", b"bench"),))
            n = 0
            async for chunk in reply.stream:
                n += len(chunk)
            await reply.stream.aclose()
            return n

        await drive(fetch, warmup, concurrency)
        return await drive(fetch, requests, concurrency)


async def bench_client(
    url: str, requests: int, concurrency: int, warmup: int, transport: TrioTransport | None
) -> Result:
    async with httpx.AsyncClient(transport=transport) as client:

        async def fetch() -> int:
            response = await client.get(url)
            return len(response.content)

        await drive(fetch, warmup, concurrency)
        return await drive(fetch, requests, concurrency)


async def bench_raw_h11(url: str, requests: int, concurrency: int, warmup: int) -> Result:
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    target = parsed.raw_path
    host_header = parsed.netloc
    pool: list[tuple[trio.SocketStream, h11.Connection]] = []

    async def fetch() -> int:
        if pool:
            stream, conn = pool.pop()
        else:
            stream = await trio.open_tcp_stream(host, port)
            conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method=b"GET", target=target, headers=[(b"Host", host_header)])
        data = conn.send(request)
        await stream.send_all(data + conn.send(h11.EndOfMessage()))
        n = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                n += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        conn.start_next_cycle()
        pool.append((stream, conn))
        return n

    try:
        await drive(fetch, warmup, concurrency)
        return await drive(fetch, requests, concurrency)
    finally:
        for stream, _ in pool:
            await stream.aclose()


# ------------------------------------------------------------- fallback server


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="runs per client; median reported")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    n, c, w = args.requests, args.concurrency, args.warmup
    cases: list[tuple[str, Callable[[str], Awaitable[Result]]]] = [
        (
            "(a) `TrioTransport.get` (no httpx objects; the engine's path)",
            lambda url: bench_transport_get(url, n, c, w),
        ),
        (
            "(a2) `TrioTransport.handle_async_request` + `aiter_raw`",
            lambda url: bench_transport_direct(url, n, c, w),
        ),
        (
            "(b) `httpx.AsyncClient(transport=TrioTransport())`",
            lambda url: bench_client(url, n, c, w, TrioTransport()),
        ),
        (
            "(c) `httpx.AsyncClient()` (default httpcore pool)",
            lambda url: bench_client(url, n, c, w, None),
        ),
        (
            "(d) raw trio + h11, no httpx (reference ceiling)",
            lambda url: bench_raw_h11(url, n, c, w),
        ),
    ]
    rows: list[tuple[str, float, float, float]] = []
    with run_server() as (url, server):
        load_before = os.getloadavg()[0]
        for name, case in cases:
            results = [trio.run(case, url) for _ in range(args.runs)]
            rates = [rate for rate, _ in results]
            cpu = statistics.median(cpu for _, cpu in results)
            rows.append((name, statistics.median(rates), max(rates), cpu))
            print(f"{name}: " + ", ".join(f"{r:,.0f}" for r in rates), file=sys.stderr)
        load_after = os.getloadavg()[0]

    base = rows[3][1]
    lines = [
        "# Transport benchmark",
        "",
        f"{n:,} GETs of a {BODY_SIZE // 1024} KB static page by {c} concurrent trio tasks "
        f"(after {w} warm-up requests), against {server} on 127.0.0.1; "
        f"median and best of {args.runs} runs. Python {platform.python_version()}, "
        f"trio {trio.__version__}, httpx {httpx.__version__}, h11 {version('h11')}, "
        f"{os.cpu_count()} CPUs; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (client and server share the CPUs, so other load "
        "lowers every row; compare rows within one run). Client CPU is this process's "
        "CPU time per request (nginx excluded).",
        "",
        "| client | req/s (median) | req/s (best) | client CPU µs/req | vs default httpx |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, median, best, cpu in rows:
        lines.append(
            f"| {name} | {median:,.0f} | {best:,.0f} | {cpu:,.0f} | {median / base:.1f}x |"
        )
    lines.append("")
    lines.append("Reproduce: `python benchmarks/bench_transport.py`.")
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
