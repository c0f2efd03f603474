"""Shared fixtures for the test suite."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.siteserver import SiteServer, open_site_server

# `tests` is a package (so `tests.siteserver` imports and `python -m tests.siteserver`
# runs from the repository root); keep its helper modules importable as top-level
# modules as well (`from _rawserver import ...`).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)


@pytest.fixture
async def site_server() -> AsyncIterator[SiteServer]:
    """A two-port :class:`~tests.siteserver.SiteServer` with default options."""
    async with open_site_server(ports=2) as server:
        yield server
