"""The transport's socket waits: a read or write that must wait does so under its own
deadline (``until``) and raises ``_Timeout`` when it passes; one that need not wait
takes no cancel scope at all."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator

import pytest
import trio

from crawler._transport import _Conn, _Timeout

KEY = ("http", "127.0.0.1", 80)


@pytest.fixture
def pair() -> Iterator[tuple[_Conn, socket.socket]]:
    """A connection over one end of a socket pair, and the other end (blocking off)."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    conn = _Conn(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), KEY)
    try:
        yield conn, theirs
    finally:
        assert conn.sock is not None
        conn.sock.close()
        theirs.close()


def fill(sock: socket.socket) -> None:
    """Write to ``sock`` until the kernel takes no more."""
    block = b"x" * 65_536
    while True:
        try:
            sock.send(block)
        except BlockingIOError:
            return


async def test_receive_times_out_at_until(pair: tuple[_Conn, socket.socket]) -> None:
    conn, _ = pair
    until = trio.current_time() + 0.1
    with trio.fail_after(2), pytest.raises(_Timeout):
        await conn.receive(until)
    assert trio.current_time() >= until


async def test_receive_waits_for_data_without_a_deadline(
    pair: tuple[_Conn, socket.socket],
) -> None:
    conn, theirs = pair
    async with trio.open_nursery() as nursery:

        async def later() -> None:
            await trio.sleep(0.05)
            theirs.send(b"late")

        nursery.start_soon(later)
        with trio.fail_after(2):
            assert await conn.receive(math.inf, after_send=True) == b"late"


async def test_send_times_out_at_until_when_the_peer_reads_nothing(
    pair: tuple[_Conn, socket.socket],
) -> None:
    conn, _ = pair
    assert conn.sock is not None
    fill(conn.sock)
    until = trio.current_time() + 0.1
    with trio.fail_after(2), pytest.raises(_Timeout):
        await conn.send_all(b"more", until)
    assert trio.current_time() >= until


async def test_a_passed_until_still_reads_what_is_there(
    pair: tuple[_Conn, socket.socket],
) -> None:
    # The deadline bounds waiting: data already there is read, with no wait.
    conn, theirs = pair
    theirs.send(b"ready")
    assert await conn.receive(trio.current_time() - 1) == b"ready"
    with pytest.raises(_Timeout):
        await conn.receive(trio.current_time() - 1)


async def test_outer_cancellation_still_interrupts_a_wait(
    pair: tuple[_Conn, socket.socket],
) -> None:
    conn, _ = pair
    with trio.move_on_after(0.05) as scope:
        await conn.receive(math.inf)
    assert scope.cancelled_caught
