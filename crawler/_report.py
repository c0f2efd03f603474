"""What the ``crawl`` command shows people: the live progress line, the end-of-crawl
summary, and ``--status`` of a stored (``--state``) or shared (``--redis``) crawl.

The three print the same figures (pages, errors by kind, bytes, hosts) with the same
helpers, so a figure reads alike wherever it appears.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import trio

from ._config import CrawlConfig
from ._page import Statistics

if TYPE_CHECKING:
    from ._engine import Crawl
    from ._redis import SharedStatus
    from ._state import Snapshot

__all__ = [
    "Progress",
    "format_shared_status",
    "format_state_status",
    "print_summary",
    "show_progress",
    "throttled_hosts",
]

PROGRESS_INTERVAL = 0.25
RATE_WINDOW = 5.0
TOP_HOSTS = 5
SHARED_HOSTS = 20
"""Hosts listed by a shared crawl's --status (the busiest first)."""


# ---------------------------------------------------------------------------
# Figures, as every report writes them


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def bytes_figure(n: int) -> str:
    """``1.2 MiB (1,232,896)``: readable, and exact."""
    return f"{human_bytes(n)} ({n:,})"


def pages_figure(pages: int, errors: int) -> str:
    return f"{pages:,} ({pages - errors:,} ok, {errors:,} with errors)"


def errors_figure(errors_by_kind: Mapping[str, int]) -> str:
    """Error kinds, the most frequent first; ``none`` when there were none."""
    if not errors_by_kind:
        return "none"
    kinds = sorted(errors_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{kind} {n:,}" for kind, n in kinds)


def politeness_notes(paused_for: float, backoff: float, disallowed: int = 0) -> str:
    """Why a host is held back now (a Retry-After pause, backoff), ``-`` when it is not."""
    notes = []
    if paused_for > 0:
        notes.append(f"Retry-After pause {paused_for:.0f} s")
    if backoff:
        notes.append(f"backoff {backoff:g} s")
    if disallowed:
        notes.append(f"{disallowed:,} disallowed")
    return "; ".join(notes) or "-"


def _busiest_first(done: int, errors: int, origin: str) -> tuple[int, str]:
    return (-(done + errors), origin)


def _text_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Plain-text columns: the first left-aligned, the middle ones right-aligned (figures),
    the last as it is (notes)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:], strict=True)]
        lines.append(indent + "  ".join([*cells, row[-1]]).rstrip())
    return lines


# ---------------------------------------------------------------------------
# Progress (a live line on stderr while crawling)


def throttled_hosts(config: CrawlConfig, stats: Statistics) -> int:
    """Hosts held below their configured rate now (Retry-After pause, robots delay, backoff)."""
    count = 0
    for origin, host in stats.hosts.items():
        if host.paused_until is not None:
            count += 1
            continue
        if host.rate <= 0:
            continue  # unlimited: not throttled
        try:
            name = httpx.URL(origin).host
        except httpx.InvalidURL:  # pragma: no cover - origins come from parsed URLs
            name = origin
        configured = config.limits_for(name, origin)[0]
        if configured == 0 or host.rate < configured * (1 - 1e-9):
            count += 1
    return count


class Progress:
    """A live status line on stderr, refreshed from Crawl.statistics()."""

    def __init__(self, config: CrawlConfig) -> None:
        self.config = config
        self.samples: deque[tuple[float, int]] = deque()

    def render(self, stats: Statistics) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        self.samples.append((now, stats.pages))
        while self.samples and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        first_time, first_pages = self.samples[0]
        span = now - first_time
        rate = (stats.pages - first_pages) / span if span > 0.5 else stats.pages_per_second

        line = Text()
        line.append(f"{stats.pages:,} pages", style="bold")
        line.append(f"  {rate:,.1f}/s", style="cyan")
        line.append(f"  queued {stats.queued:,}  in flight {stats.in_flight:,}")
        line.append("  errors ")
        line.append(f"{stats.errors:,}", style="red" if stats.errors else "")
        line.append(
            f"  hosts {len(stats.hosts):,} ({throttled_hosts(self.config, stats):,} throttled)"
        )
        line.append(f"  {human_bytes(stats.bytes)}  {human_seconds(stats.elapsed)}", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_row(Spinner("dots", style="green"), line)
        max_pages = self.config.max_pages
        if max_pages:
            bar = ProgressBar(total=max_pages, completed=min(stats.pages, max_pages), width=40)
            return Group(grid, bar)
        return grid


async def show_progress(crawl: Crawl, config: CrawlConfig, file: TextIO) -> None:
    """Keep the progress line on `file` up to date until cancelled (then it vanishes)."""
    from rich.console import Console
    from rich.live import Live

    progress = Progress(config)
    with Live(
        progress.render(crawl.statistics()),
        console=Console(file=file),
        auto_refresh=False,
        transient=True,
        redirect_stdout=False,
    ) as live:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            live.update(progress.render(crawl.statistics()), refresh=True)


# ---------------------------------------------------------------------------
# The summary (at the end of a crawl)


def print_summary(
    stats: Statistics,
    *,
    file: TextIO,
    outputs: Sequence[tuple[str, str]] = (),
    stopped_by: str | None = None,
) -> None:
    """The end-of-crawl summary table (printed even when stderr is not a terminal)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=False)
    table = Table(title="crawl summary", show_header=False, title_justify="left", box=box.ROUNDED)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("pages", pages_figure(stats.pages, stats.errors))
    table.add_row("errors by kind", errors_figure(stats.errors_by_kind))
    table.add_row("bytes", bytes_figure(stats.bytes))
    table.add_row("pages/s", f"{stats.pages_per_second:,.1f}")
    table.add_row("elapsed", human_seconds(stats.elapsed))
    table.add_row("seen URLs", f"{stats.seen:,}")
    if stats.disallowed:
        table.add_row("robots.txt disallowed", f"{stats.disallowed:,}")
    dropped = {k: v for k, v in stats.dropped.items() if v}
    if dropped:
        table.add_row("links dropped", ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())))
    if stats.queued or stats.in_flight:
        table.add_row("left undone", f"{stats.queued:,} queued, {stats.in_flight:,} in flight")
    for label, value in outputs:
        table.add_row(label, value)
    if stopped_by is not None:
        table.add_row("stopped by", stopped_by)
    console.print(table)

    if stats.hosts:
        top = sorted(stats.hosts.values(), key=lambda h: _busiest_first(h.done, h.errors, h.origin))
        hosts = Table(
            title=f"top hosts ({len(stats.hosts):,} in all)", title_justify="left", box=box.ROUNDED
        )
        hosts.add_column("host", overflow="fold")
        hosts.add_column("pages", justify="right")
        hosts.add_column("errors", justify="right")
        hosts.add_column("bytes", justify="right")
        hosts.add_column("rate now (req/s)", justify="right")
        for host in top[:TOP_HOSTS]:
            hosts.add_row(
                host.origin,
                f"{host.done + host.errors:,}",
                f"{host.errors:,}",
                human_bytes(host.bytes),
                f"{host.rate:g}" if host.rate > 0 else "unlimited",
            )
        console.print(hosts)


# ---------------------------------------------------------------------------
# --status


def format_state_status(
    directory: Path, snapshot: Snapshot, holder: int | None, *, now: float | None = None
) -> str:
    """``--status`` of a ``--state DIR`` crawl: `holder` is the pid running it, if any."""
    now = time.time() if now is None else now
    totals = snapshot.totals
    queued = snapshot.queued
    if holder is not None:
        status = f"running (pid {holder})"
    elif queued:
        status = f"stopped, {queued:,} URLs to go (run the same crawl command to resume)"
    elif totals.pages:
        status = "complete"
    else:
        status = "not started"
    fp = snapshot.fingerprint or {}
    lines = [
        f"state: {directory}",
        f"status: {status}",
        f"seeds: {' '.join(fp.get('seeds', []))}",
    ]
    scope = [f"scope {fp.get('scope', '?')}"]
    for key in ("include", "exclude"):
        if fp.get(key):
            scope.append(f"{key} {' '.join(fp[key])}")
    if fp.get("max_depth") is not None:
        scope.append(f"max_depth {fp['max_depth']}")
    lines += [
        f"crawl: {', '.join(scope)}",
        f"runs: {totals.runs:,}",
        f"pages done: {pages_figure(totals.pages, totals.errors)}",
        f"queued: {queued:,}",
        f"seen URLs: {snapshot.seen:,}",
        f"errors by kind: {errors_figure(totals.errors_by_kind)}",
        f"robots.txt disallowed: {totals.disallowed:,}",
        f"redirects: {totals.redirects:,}",
        f"bytes: {bytes_figure(totals.bytes)}",
        f"elapsed: {human_seconds(totals.elapsed)}",
    ]
    for name, offset in sorted(snapshot.outputs.items()):
        role, _, path = name.partition(":")
        lines.append(f"output {role}: {path} ({offset:,} bytes committed)")
    lines.append(f"hosts: {len(snapshot.hosts):,}")
    if snapshot.hosts:
        rows = [("origin", "done", "errors", "queued", "bytes", "politeness")]
        for host in sorted(
            snapshot.hosts, key=lambda h: _busiest_first(h.done, h.errors, h.origin)
        ):
            paused_for = host.paused_until - now if host.paused_until > now else 0.0
            rows.append(
                (
                    host.origin,
                    f"{host.done:,}",
                    f"{host.errors:,}",
                    f"{host.queued:,}",
                    human_bytes(host.bytes),
                    politeness_notes(paused_for, host.backoff, host.disallowed),
                )
            )
        lines += _text_table(rows)
    return "\n".join(lines) + "\n"


def format_shared_status(status: SharedStatus, *, hosts: int = SHARED_HOSTS) -> str:
    """``--status`` of a shared (``--redis``) crawl: the whole crawl, every worker."""
    state = "finished" if status.finished else ("empty" if status.admitted == 0 else "running")
    if status.paused and not status.finished:
        state += ", paused"
    lines = [
        f"crawl {status.crawl_id}: {state}",
        f"  queued {status.queued:,}  leased (in flight) {status.leased:,}"
        f"  delayed {status.delayed:,}  pending {status.pending:,}",
        f"  pages {pages_figure(status.pages, status.errors)}"
        f"  bytes {bytes_figure(status.bytes)}  seen {status.seen:,}",
        f"  disallowed {status.disallowed:,}  redirects {status.redirects:,}"
        f"  retries {status.retries:,}  recovered leases {status.recovered:,}",
        f"  errors by kind: {errors_figure(status.errors_by_kind)}",
    ]
    if status.dropped:
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(status.dropped.items()))
        lines.append(f"  dropped: {dropped}")
    if status.workers:
        lines.append("  workers (seconds since last heard from):")
        for worker, age in sorted(status.workers.items()):
            lines.append(f"    {worker}  {age:.1f}")
    lines.append(f"  hosts: {status.host_count:,}")
    # The hosts with the most work left first: where a running crawl spends its time.
    shown = sorted(status.hosts.values(), key=lambda h: (-h.queued - h.leased, h.origin))
    for host in shown[:hosts]:
        rate = f"{host.rate:g}/s" if host.rate else "unlimited"
        notes = politeness_notes(host.paused_for, host.backoff)
        if host.paused and not status.paused:  # the crawl's own pause is on its first line
            notes = "paused" if notes == "-" else f"paused; {notes}"
        lines.append(
            f"    {host.origin}  queued {host.queued:,}  leased {host.leased}/{host.per_host}"
            f"  done {host.done:,}  errors {host.errors:,}  bytes {human_bytes(host.bytes)}"
            f"  rate {rate}  robots {host.robots}" + (f"  ({notes})" if notes != "-" else "")
        )
    if len(shown) > hosts:
        lines.append(f"    ... {len(shown) - hosts} more")
    return "\n".join(lines)
