"""A Prometheus endpoint for a running crawl.

The exposition format is prometheus_client's (the reference implementation: escaping,
number formatting and `# TYPE` rules are its job, not ours): a Collector reads one
consistent `Crawl.statistics()` snapshot per scrape, in a registry of its own (never the
process-global one). The HTTP side stays a small trio + h11 endpoint rather than
prometheus_client's `start_http_server`, so it lives in the crawl's nursery with no thread.

Scrapers are untrusted peers: each connection runs in its own task under one deadline for
the whole exchange, anything a client can cause (a reset, garbage, a stall, a refusal to
read) closes that connection only, and the number of open connections is capped.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable, Sequence
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

log = logging.getLogger("crawler.metrics")

# What generate_latest writes (the classic text format).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"
MAX_REQUEST_BYTES = 16 * 1024
RECEIVE_BYTES = 4096
REQUEST_TIMEOUT = 10.0
"""Seconds for a whole exchange, from accept to the last byte of the response."""
MAX_CONNECTIONS = 16
"""Connections served at once; a scraper needs one, so this is ample and bounds memory."""
# accept(2) errors that mean "out of resources now" (trio.serve_listeners' list): wait.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1
# Everything a misbehaving client can raise while we talk to it.
CLIENT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError)


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


class MetricsServer:
    """`GET /metrics` over trio listeners, with a connection cap and per-exchange deadline."""

    def __init__(
        self,
        snapshot: Callable[[], Statistics],
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatisticsCollector(snapshot))
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.accepted = 0
        """Connections accepted so far, refused ones included."""
        self.open = 0
        """Connections being served now."""
        self.peak = 0
        self.refused = 0
        """Connections closed at once because `max_connections` were open."""

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.SocketStream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on `listeners` (and close them) until cancelled."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery)
            task_status.started()

    async def _accept(
        self, listener: trio.abc.Listener[trio.SocketStream], nursery: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, trio.ClosedResourceError) as exc:
                    if isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS:
                        log.warning(
                            "metrics: accept failed (%s), retrying in %s s",
                            os.strerror(exc.errno or 0),
                            ACCEPT_RETRY,
                        )
                        await trio.sleep(ACCEPT_RETRY)
                        continue
                    # Anything else is unlikely to clear up: stop serving metrics, and
                    # let the crawl go on without them.
                    log.error("metrics: endpoint stopped, accept failed: %s", exc)
                    return
                self.accepted += 1
                if self.open >= self.max_connections:
                    # Over the cap, close at once rather than stop accepting: a refused
                    # scrape fails fast and Prometheus retries next interval, while one
                    # left in the backlog behind stalled clients would hang for up to
                    # REQUEST_TIMEOUT; open sockets stay at max_connections + 1.
                    self.refused += 1
                    await trio.aclose_forcefully(stream)
                    continue
                self.open += 1
                self.peak = max(self.peak, self.open)
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(self.request_timeout) as scope:
                await self._exchange(stream)
            if scope.cancelled_caught:
                log.debug("metrics: dropped a client after %s s", self.request_timeout)
        except CLIENT_ERRORS as exc:
            log.debug("metrics: dropped a client: %r", exc)
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)

    async def _exchange(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            request = await _receive_request(stream, connection)
        except h11.RemoteProtocolError as exc:
            # Garbage: answer with h11's status (400, 431, 505...) while it allows one.
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _respond(stream, connection, exc.error_status_hint, b"bad request\n")
            return
        if request is None:
            return
        head = request.method == b"HEAD"
        extra: list[tuple[bytes, bytes]] = []
        if request.target.partition(b"?")[0] != b"/metrics":
            status, body, kind = 404, b"metrics are at /metrics\n", TEXT_TYPE
        elif request.method not in (b"GET", b"HEAD"):
            status, body, kind = 405, b"only GET\n", TEXT_TYPE
            extra.append((b"allow", b"GET, HEAD"))
        else:
            status, body, kind = 200, generate_latest(self.registry), CONTENT_TYPE
        await _respond(stream, connection, status, body, content_type=kind, head=head, extra=extra)


async def _receive_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    """The request's head, or None if the client closed before sending one."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(RECEIVE_BYTES))
        elif isinstance(event, h11.Request):
            return event
        else:
            return None


async def _respond(
    stream: trio.SocketStream,
    connection: h11.Connection,
    status: int,
    body: bytes,
    *,
    content_type: bytes = TEXT_TYPE,
    head: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head:
        data += connection.send(h11.Data(data=body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def serve_metrics(
    crawl: Crawl,
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `GET /metrics` for `crawl` until cancelled; reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    server = MetricsServer(
        crawl.statistics, max_connections=max_connections, request_timeout=request_timeout
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        task_status.started(bound)
