"""A redis-server for the tests: the one named by ``CRAWLER_TEST_REDIS``, else a private one
started on a free loopback port (when ``redis-server`` is on PATH), else the one ``.ci/redis``
starts on 127.0.0.1:6399.

Without any of them the Redis tests fail under CI (``CI=true``: a missing server must not
pass as green) and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

ENV = "CRAWLER_TEST_REDIS"
DEFAULT_URL = "redis://127.0.0.1:6399/0"
START_TIMEOUT = 10.0


def ping(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at `url` (plain TCP only)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def private_redis(binary: str) -> Iterator[str]:
    """Run `binary` (redis-server) on a free loopback port, without persistence."""
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis tests need a server under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def redis_for_tests() -> Iterator[str]:
    """The URL of a Redis server to test against (see the module docstring)."""
    url = os.environ.get(ENV)
    if url:
        if not ping(url):
            unavailable(f"{ENV}={url} does not answer PING")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is not None:
        with private_redis(binary) as private:
            yield private
        return
    if ping(DEFAULT_URL):
        yield DEFAULT_URL
        return
    unavailable(f"no redis-server on PATH, {ENV} unset, nothing at {DEFAULT_URL} (.ci/redis)")


def unique_crawl_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RestartableRedis:
    """A private redis-server that keeps its data across a restart on the same port (an
    append-only file synced on every write), for tests of workers riding out an outage."""

    def __init__(self, binary: str, directory: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.directory]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (SIGTERM: it finishes its append-only file first) and wait for it."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def restartable_redis(directory: str) -> Iterator[RestartableRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server on PATH: restarts need a private one")
        raise AssertionError("unreachable")  # pragma: no cover - unavailable() raises
    server = RestartableRedis(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
