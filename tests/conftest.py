"""Shared fixtures for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.crawlmodes import MODES, REDIS_MODES, Crawl, Live, crawler_for
from tests.redisserver import redis_for_tests, unique_crawl_id
from tests.web.routes import SiteServer, open_site_server


@pytest.fixture
async def site_server() -> AsyncIterator[SiteServer]:
    """A two-port :class:`~tests.web.SiteServer` with default options."""
    async with open_site_server(ports=2) as server:
        yield server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis server for one test module (a private redis-server when one is installed)."""
    with redis_for_tests() as url:
        yield url


@pytest.fixture
async def crawl_id(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh crawl id, named after the test module; its keys are deleted afterwards."""
    from crawler._redis import RedisFrontier, open_redis

    name = unique_crawl_id(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield name
    async with open_redis(redis_url) as client:
        await RedisFrontier(client, name, worker_id="cleanup").delete()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> Crawl:
    """``await mode(config) -> (pages, statistics)`` on each backend in turn: in memory,
    with a durable state, by one and by two Redis workers (see tests/crawlmodes.py).
    Real sockets and a real clock only: shared workers need Redis, not a mock clock."""
    name: str = request.param
    redis_url = request.getfixturevalue("redis_url") if name in REDIS_MODES else None
    return crawler_for(name, tmp_path, redis_url)


@pytest.fixture(params=MODES)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Live:
    """A crawl to steer while it runs (``async with live.open(config) as crawl``), on each
    backend in turn, as `mode` runs them (see tests/crawlmodes.py)."""
    name: str = request.param
    redis_url = request.getfixturevalue("redis_url") if name in REDIS_MODES else None
    return Live(name, tmp_path, redis_url)
