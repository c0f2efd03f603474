"""The examples run as programs against a loopback site."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from tests.web.routes import open_site_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


async def test_link_checker_reports_broken_links() -> None:
    async with open_site_server(ports=1, pages=5) as server:
        slow = r"/(drip|stall|slow-headers|trap|bomb)"
        result = await trio.run_process(
            [
                sys.executable,
                str(EXAMPLES / "link_checker.py"),
                server.url(0, "/hostile/"),
                "--rate",
                "0",
                "--retries",
                "0",
                "--exclude",
                slow,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 1, result.stderr.decode()
    broken = {line.split()[1] for line in out.splitlines() if line.startswith("BROKEN")}
    for path in ("/unavailable", "/reset", "/huge-length", "/loop/a", "/redirect-ftp"):
        assert server.url(0, path) in broken, path
    assert server.url(0, "/badutf8") not in broken
    assert f"linked from {server.url(0, '/hostile/')}" in out


async def test_seed_server_accepts_seeds_while_running() -> None:
    command = [sys.executable, str(EXAMPLES / "seed_server.py"), "--port", "0", "--rate", "0"]
    lines: list[dict[str, object]] = []
    send, receive = trio.open_memory_channel[dict[str, object]](1000)

    async def wait_for(count: int) -> None:
        while len(lines) < count:
            lines.append(await receive.receive())

    async def read_lines(stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                await send.send(json.loads(line))

    async with open_site_server(ports=2, pages=10, cross_links=False) as server:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
                process: trio.Process = await nursery.start(run)
                assert process.stdout is not None
                nursery.start_soon(read_lines, process.stdout)
                await wait_for(1)
                api = f"http://127.0.0.1:{lines[0]['listening']}"
                async with httpx.AsyncClient() as client:
                    reply = await client.post(f"{api}/seeds", content=server.url(0))
                    assert reply.status_code == 202
                    await wait_for(1 + 11)
                    reply = await client.post(f"{api}/seeds", content=server.url(1))
                    assert reply.json() == {"added": {server.url(1): True}}
                    await wait_for(1 + 22)
                    stats = (await client.get(f"{api}/stats")).json()
                    assert stats["pages"] == 22
                    await client.post(f"{api}/stop")
                await process.wait()
    lines.extend(receive.receive_nowait() for _ in range(receive.statistics().current_buffer_used))
    urls = [line["url"] for line in lines[1:]]
    assert len(urls) == len(set(urls)) == 22
    assert process.returncode == 0
