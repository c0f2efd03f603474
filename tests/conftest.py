"""Shared fixtures for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.siteserver import SiteServer, open_site_server


@pytest.fixture
async def site_server() -> AsyncIterator[SiteServer]:
    """A two-port :class:`~tests.siteserver.SiteServer` with default options."""
    async with open_site_server(ports=2) as server:
        yield server
