"""A Prometheus endpoint for a running crawl.

The exposition format is prometheus_client's (the reference implementation: escaping,
number formatting and `# TYPE` rules are its job, not ours): a Collector reads one
consistent `Crawl.statistics()` snapshot per scrape, in a registry of its own (never the
process-global one). The HTTP side stays a small trio + h11 endpoint rather than
prometheus_client's `start_http_server`, so it lives in the crawl's nursery with no thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ._page import Statistics

if TYPE_CHECKING:
    from ._engine import Crawl

# What generate_latest writes (the classic text format).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0


class StatisticsCollector(Collector):
    """Metric families over one `statistics()` snapshot per `collect()` (per scrape)."""

    def __init__(self, snapshot: Callable[[], Statistics]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        stats = self._snapshot()
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
            if kind == "counter":
                yield CounterMetricFamily(f"crawler_{name}", text, value=value)
            else:
                yield GaugeMetricFamily(f"crawler_{name}", text, value=value)

        by_kind = CounterMetricFamily(
            "crawler_errors_by_kind_total",
            "Pages that ended in an error, by kind.",
            labels=["kind"],
        )
        for kind_name, count in sorted(stats.errors_by_kind.items()):
            by_kind.add_metric([kind_name], count)
        yield by_kind
        dropped = CounterMetricFamily(
            "crawler_dropped_total", "Links not admitted, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped

        hosts = stats.hosts
        for name, kind, text, attr in (
            ("host_queued_requests", "gauge", "Requests waiting, per origin.", "queued"),
            (
                "host_in_flight_requests",
                "gauge",
                "Requests being fetched, per origin.",
                "in_flight",
            ),
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
        ):
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(f"crawler_{name}", text, labels=["origin"])
            else:
                family = GaugeMetricFamily(f"crawler_{name}", text, labels=["origin"])
            for origin, host in hosts.items():
                family.add_metric([origin], getattr(host, attr))
            yield family
        paused = GaugeMetricFamily(
            "crawler_host_paused",
            "1 while an origin is paused (by the caller or a Retry-After).",
            labels=["origin"],
        )
        for origin, host in hosts.items():
            paused.add_metric([origin], int(host.paused or host.paused_until is not None))
        yield paused
        robots = GaugeMetricFamily(
            "crawler_host_robots",
            "robots.txt state per origin (1 for the current state).",
            labels=["origin", "state"],
        )
        for origin, host in hosts.items():
            robots.add_metric([origin, host.robots], 1)
        yield robots


async def _serve_one(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
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
                status, body = 200, generate_latest(registry)
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
    registry = CollectorRegistry()
    registry.register(StatisticsCollector(crawl.statistics))
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await nursery.start(trio.serve_listeners, partial(_serve_one, registry=registry), listeners)
