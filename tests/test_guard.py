"""Scope safety: non-public addresses refused at connect time, credentials kept home."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio
import trio.testing

import crawler
from crawler._guard import AddressGuard, BlockedAddressError, is_public
from crawler._transport import TrioTransport
from tests.web.core import Exchange
from tests.web.routes import MockSite, html, open_site_server


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("not an address", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


class FakeResolver(trio.abc.HostnameResolver):
    """Resolves names from a table; never touches the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: Any,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        addresses = self.table.get(name, [name])
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, int(port)),
            )
            for a in addresses
        ]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_guard_refuses_a_name_resolving_to_a_private_address() -> None:
    trio.socket.set_custom_hostname_resolver(
        FakeResolver({"intranet.test": ["10.0.0.7"], "mixed.test": ["10.0.0.8", "127.0.0.1"]})
    )
    guard = AddressGuard()
    with pytest.raises(BlockedAddressError, match=r"10\.0\.0\.7"):
        await guard("intranet.test", 80)
    with pytest.raises(BlockedAddressError):
        await guard("mixed.test", 80)
    with pytest.raises(BlockedAddressError):
        await guard("127.0.0.1", 80)
    assert guard.blocked == 3


async def test_block_private_blocks_redirect_and_private_dns() -> None:
    trio.socket.set_custom_hostname_resolver(
        FakeResolver({"localhost": ["127.0.0.1"], "intranet.test": ["10.0.0.7"]})
    )
    async with open_site_server(ports=2, pages=3) as server:
        # The seed's host 127.0.0.1 is exempt (the user asked for it); "localhost" is
        # another name for loopback: neither a redirect nor a link may connect there.
        local = f"http://localhost:{server.ports[1]}/page/0"
        hop = server.url(0, "/redirect-to?" + urlencode({"url": local}))
        guard = AddressGuard(["127.0.0.1"])
        config = crawler.CrawlConfig(seeds=(server.url(0, "/"),), scope="any", rate=0, max_depth=0)
        with trio.fail_after(60):
            async with (
                TrioTransport(connect=guard) as transport,
                crawler.open_crawl(config, transport=transport) as crawl,
            ):
                assert crawl.add(hop)
                assert crawl.add("http://intranet.test/secret")
                pages = {page.url: page async for page in crawl}
        served = {(r.port, r.path) for r in server.log}
    assert pages[server.url(0, "/")].status == 200
    redirected = pages[hop]
    assert redirected.error is not None and redirected.error.kind == "blocked"
    assert redirected.final_url == local
    secret = pages["http://intranet.test/secret"].error
    assert secret is not None and secret.kind == "blocked"
    assert not [p for p in served if p[0] == server.ports[1]]  # nothing reached port 2
    assert guard.blocked >= 2


async def test_credentials_stay_with_their_origin(autojump_clock: trio.testing.MockClock) -> None:
    seen: dict[str, str | None] = {}

    async def record(ex: Exchange) -> None:
        assert ex.request is not None
        url = ex.request.url.copy_with(username=None, password=None)
        seen[str(url)] = ex.headers.get("authorization")

    site = MockSite(
        {
            "http://a.test/": html("home", ["/next", "http://b.test/"]),
            "http://a.test/next": httpx.Response(302, headers={"Location": "http://b.test/x"}),
            "http://b.test/": html("b", []),
            "http://b.test/x": html("bx", []),
        },
        on_request=record,
    )
    config = crawler.CrawlConfig(
        seeds=("http://user:pw@a.test/",), scope="any", rate=0, obey_robots=False
    )
    with trio.fail_after(60):
        await crawler.crawl(config, transport=site.transport())
    assert seen["http://a.test/"] is not None and seen["http://a.test/"].startswith("Basic ")
    assert seen["http://b.test/"] is None
    assert seen["http://b.test/x"] is None
