"""A Prometheus text endpoint for a running crawl.

A tiny trio + h11 server rather than prometheus-client: the client's HTTP server
runs in its own thread and its registry is process-global, while this lives in
the crawl's nursery, reads one consistent `Crawl.statistics()` snapshot per
scrape, and adds no dependency.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio

from ._page import Statistics

if TYPE_CHECKING:
    from ._engine import Crawl

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP crawler_{name} {help_text}", f"# TYPE crawler_{name} {kind}", *samples]


def render(stats: Statistics) -> str:
    """Statistics in the Prometheus text exposition format (version 0.0.4)."""

    def host_samples(name: str, values: dict[str, float]) -> list[str]:
        return [f'crawler_{name}{{origin="{_escape(o)}"}} {v:g}' for o, v in values.items()]

    hosts = stats.hosts
    lines: list[str] = []
    for name, kind, text, value in (
        ("pages_total", "counter", "Pages delivered (errors included).", stats.pages),
        ("errors_total", "counter", "Pages that ended in an error.", stats.errors),
        ("bytes_total", "counter", "Decoded body bytes received.", stats.bytes),
        ("seen_urls", "gauge", "Distinct URLs admitted to the crawl.", stats.seen),
        ("queued_requests", "gauge", "Requests waiting to be sent.", stats.queued),
        ("in_flight_requests", "gauge", "Requests being fetched.", stats.in_flight),
        (
            "disallowed_total",
            "counter",
            "URLs skipped because robots.txt disallows them.",
            stats.disallowed,
        ),
        ("redirects_total", "counter", "Redirect hops followed.", stats.redirects),
        ("concurrency", "gauge", "Global in-flight cap.", stats.concurrency),
        ("paused", "gauge", "1 while the whole crawl is paused.", int(stats.paused)),
        ("elapsed_seconds", "gauge", "Seconds since the crawl started.", stats.elapsed),
        ("pages_per_second", "gauge", "Average pages per second.", stats.pages_per_second),
    ):
        lines += _family(name, kind, text, [f"crawler_{name} {value:g}"])
    lines += _family(
        "errors_by_kind_total",
        "counter",
        "Pages that ended in an error, by kind.",
        [
            f'crawler_errors_by_kind_total{{kind="{_escape(k)}"}} {v}'
            for k, v in sorted(stats.errors_by_kind.items())
        ],
    )
    lines += _family(
        "dropped_total",
        "counter",
        "Links not admitted, by reason.",
        [
            f'crawler_dropped_total{{reason="{_escape(k)}"}} {v}'
            for k, v in sorted(stats.dropped.items())
        ],
    )
    per_host = (
        ("host_queued_requests", "gauge", "Requests waiting, per origin.", "queued"),
        ("host_in_flight_requests", "gauge", "Requests being fetched, per origin.", "in_flight"),
        ("host_pages_total", "counter", "Pages without error, per origin.", "done"),
        ("host_errors_total", "counter", "Pages with an error, per origin.", "errors"),
        ("host_bytes_total", "counter", "Decoded body bytes, per origin.", "bytes"),
        (
            "host_rate",
            "gauge",
            "Effective requests per second, per origin (0 = unlimited).",
            "rate",
        ),
        ("host_backoff_seconds", "gauge", "Adaptive backoff interval, per origin.", "backoff"),
        ("host_per_host_limit", "gauge", "In-flight cap, per origin.", "per_host"),
        (
            "host_disallowed_total",
            "counter",
            "URLs disallowed by robots.txt, per origin.",
            "disallowed",
        ),
    )
    for name, kind, text, attr in per_host:
        values = {o: float(getattr(h, attr)) for o, h in hosts.items()}
        lines += _family(name, kind, text, host_samples(name, values))
    lines += _family(
        "host_paused",
        "gauge",
        "1 while an origin is paused (by the caller or a Retry-After).",
        host_samples(
            "host_paused",
            {o: float(h.paused or h.paused_until is not None) for o, h in hosts.items()},
        ),
    )
    lines += _family(
        "host_robots",
        "gauge",
        "robots.txt state per origin (1 for the current state).",
        [
            f'crawler_host_robots{{origin="{_escape(o)}",state="{_escape(h.robots)}"}} 1'
            for o, h in hosts.items()
        ],
    )
    return "\n".join(lines) + "\n"


async def _serve_one(stream: trio.SocketStream, crawl: Crawl) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    async with stream:
        with trio.move_on_after(REQUEST_TIMEOUT):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    try:
                        connection.receive_data(data)
                    except h11.RemoteProtocolError:
                        return
                    continue
                if isinstance(event, h11.Request):
                    break
                return
            if event.target.split(b"?")[0] == b"/metrics":
                status, body = 200, render(crawl.statistics()).encode()
            else:
                status, body = 404, b"metrics are at /metrics\n"
            headers = [
                (b"content-type", CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            data = connection.send(h11.Response(status_code=status, headers=headers))
            data = (data or b"") + (connection.send(h11.Data(data=body)) or b"")
            data += connection.send(h11.EndOfMessage()) or b""
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError:
                return


async def serve_metrics(
    crawl: Crawl,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `GET /metrics` for `crawl` until cancelled; reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await nursery.start(trio.serve_listeners, partial(_serve_one, crawl=crawl), listeners)
