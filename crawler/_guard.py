"""Refuse connections to non-public addresses, checked after DNS resolution.

The check runs in the transport's connect step on the addresses DNS returned, and
the socket is opened to those vetted addresses only, so a name that resolves to a
public address for the check and a private one for the connect (DNS rebinding)
cannot get through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import trio


class BlockedAddressError(OSError):
    """The host resolved only to addresses the crawl may not connect to."""


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return ip.is_global and not ip.is_multicast


class AddressGuard:
    """A transport `connect` hook that only connects to public addresses.

    `allowed_hosts` (the seeds' own host names) are exempt: a user who explicitly
    crawls `http://localhost:8000/` means it."""

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        self.allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.blocked = 0

    async def __call__(self, host: str, port: int) -> trio.SocketStream:
        name = host.lower().rstrip(".").strip("[]")
        if name in self.allowed_hosts or host.lower() in self.allowed_hosts:
            return await trio.open_tcp_stream(host, port)
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        public = [a for a in addresses if is_public(a)]
        if not public:
            self.blocked += 1
            raise BlockedAddressError(
                f"blocked: {host} resolves to non-public address(es) {', '.join(addresses)}"
            )
        errors: list[OSError] = []
        for address in public:
            try:
                return await trio.open_tcp_stream(address, port)
            except OSError as exc:
                errors.append(exc)
        # Chained like trio's own error, so the transport can name each cause.
        raise OSError(f"could not connect to any address of {host}") from ExceptionGroup(
            f"connecting to {host}", errors
        )
