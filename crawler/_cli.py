"""The ``crawl`` command: flags and a TOML file onto CrawlConfig, pages onto JSON Lines and WARC.

Settings are merged as CrawlConfig defaults < ``--config FILE.toml`` < flags.
Exit status: 0 when the crawl ran (failed pages are in the output with their
error), 1 on a fatal runtime error (an output that cannot be written), 2 on a
usage error, 130 / 143 when stopped by SIGINT / SIGTERM.

With ``--state DIR`` the crawl is durable (see ``crawler._state``): running the
same command again continues it, after cutting the outputs back to what the
state committed; ``--status`` reports on it without crawling.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import tomllib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

import httpx
import trio

from ._config import CrawlConfig, MiB
from ._engine import Crawl, open_crawl
from ._output import JsonLinesWriter, OutputError, WarcWriter
from ._page import Page, Statistics
from ._shield import hurry, threads_running
from ._state import (
    Snapshot,
    StateError,
    StateMismatch,
    StateStore,
    lock_holder,
    read_snapshot,
    reset_state,
)
from ._version import __version__

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_USAGE", "Options", "build_config", "main", "parse_args"]

PROG = "crawl"
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
GRACE_PERIOD = 5.0
"""Seconds in-flight requests get to finish after the first SIGINT/SIGTERM."""
STOP_NOW_LIMIT = 2.0
"""Seconds a stop-now leaves a commit or a close that a hung disk holds up, before
abandoning it (a healthy one takes milliseconds)."""
FORCE_EXIT_AFTER = 4.0
"""Seconds after a stop-now before the process exits whatever blocks it (os._exit)."""
PROGRESS_INTERVAL = 0.25
RATE_WINDOW = 5.0
TOP_HOSTS = 5

_FIELDS = {f.name: f for f in dataclasses.fields(CrawlConfig)}
_DEFAULTS: dict[str, Any] = {
    name: f.default for name, f in _FIELDS.items() if f.default is not dataclasses.MISSING
}
_BOOL_FIELDS = tuple(name for name, value in _DEFAULTS.items() if isinstance(value, bool))
_NOT_IN_FILES = ("should_follow",)
"""CrawlConfig fields a config file cannot set (hooks are Python callables)."""

log = logging.getLogger("crawler.cli")


class UsageError(Exception):
    """Bad command line or config file: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------
# Arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show ``-o, --output PATH`` rather than ``-o PATH, --output PATH``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _show(name: str) -> str:
    """A CrawlConfig default as --help shows it."""
    value = _DEFAULTS[name]
    if value is None:
        return "no limit"
    if isinstance(value, float):
        return f"{value:g}"
    if name == "max_bytes" and isinstance(value, int) and value % MiB == 0:
        return f"{value} = {value // MiB} MiB"
    return str(value)


_EPILOG = f"""\
settings are merged as: built-in defaults < --config FILE.toml < flags.
A config file takes the CrawlConfig keys, e.g.:

  seeds = ["https://example.com/"]
  rate = 2
  exclude = ["/login", "[?&]sort="]
  [hosts."example.com"]
  rate = 5
  per_host = 4

with --state DIR, running the same command again resumes the crawl (after Ctrl-C
or a crash): outputs are cut back to the last commit and appended to, so each
page is in them exactly once. --status reports on the stored crawl.

exit status: 0 the crawl ran (failed pages are in the output with their error),
1 fatal runtime error (e.g. an output that cannot be written), 2 usage error
(including a --state DIR that holds a different crawl), 130 / 143 stopped by
SIGINT / SIGTERM (outputs are complete and closed).

{PROG} {__version__}"""


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        usage=f"{PROG} [options] SEED [SEED ...]",
        description="Crawl the web from SEED URLs, politely; write pages as JSON Lines "
        "(and optionally a WARC archive).",
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("seeds", nargs="*", metavar="SEED", help="start URL(s) (http or https)")

    out = p.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default="-",
        help="pages as JSON Lines ('-' = stdout; default: -)",
    )
    out.add_argument(
        "--warc",
        metavar="PATH",
        help="also write a WARC file of every HTTP exchange (.warc.gz: gzip per record; "
        "default: none)",
    )

    scope = p.add_argument_group("what to crawl")
    scope.add_argument(
        "--max-pages",
        metavar="N",
        type=_integer,
        help=f"stop after N pages (default: {_show('max_pages')})",
    )
    scope.add_argument(
        "--max-depth",
        metavar="N",
        type=_integer,
        help=f"follow links at most N hops from a seed (default: {_show('max_depth')})",
    )
    scope.add_argument(
        "--scope",
        choices=("host", "domain", "any"),
        help="follow links to the seed's host, its registrable domain, or anywhere "
        f"(default: {_show('scope')})",
    )
    scope.add_argument(
        "--include",
        metavar="REGEX",
        action="append",
        help="only follow URLs matching REGEX (repeatable; default: all)",
    )
    scope.add_argument(
        "--exclude",
        metavar="REGEX",
        action="append",
        help="never follow URLs matching REGEX (repeatable; default: none)",
    )
    scope.add_argument(
        "--ignore-robots",
        dest="obey_robots",
        action="store_const",
        const=False,
        help="do not fetch or obey robots.txt (default: robots.txt obeyed)",
    )
    scope.add_argument(
        "--sitemaps",
        action="store_const",
        const=True,
        help="also seed from the sitemaps robots.txt lists (default: off)",
    )

    polite = p.add_argument_group("politeness and limits")
    polite.add_argument(
        "--concurrency",
        metavar="N",
        type=_integer,
        help=f"global cap on requests in flight (default: {_show('concurrency')})",
    )
    polite.add_argument(
        "--per-host",
        metavar="N",
        type=_integer,
        help=f"cap on requests in flight per host (default: {_show('per_host')})",
    )
    polite.add_argument(
        "--rate",
        metavar="R",
        type=_number,
        help=f"requests per second per host, 0 = unlimited (default: {_show('rate')})",
    )
    polite.add_argument(
        "--burst",
        metavar="B",
        type=_integer,
        help=f"requests a host may get back to back (default: {_show('burst')})",
    )
    polite.add_argument(
        "--user-agent", metavar="UA", help=f"User-Agent header (default: {_show('user_agent')})"
    )
    polite.add_argument(
        "--retries",
        metavar="N",
        type=_integer,
        help=f"retries after a timeout, reset or 5xx/429 (default: {_show('retries')})",
    )
    polite.add_argument(
        "--max-bytes",
        metavar="N",
        type=_integer,
        help=f"cut bodies at N bytes (default: {_show('max_bytes')})",
    )
    polite.add_argument(
        "--max-time",
        metavar="SECONDS",
        type=_number,
        help="stop gracefully after this long (default: no limit)",
    )
    polite.add_argument(
        "--block-private",
        action="store_true",
        default=None,
        help="refuse to connect to loopback, private and link-local addresses (after DNS), "
        "except the seeds' own hosts (default: off)",
    )
    polite.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_number,
        help="total deadline for one request, connect and read included "
        f"(default: {_show('timeout')})",
    )
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--ca-bundle",
        metavar="PATH",
        type=Path,
        help="verify TLS with the CA certificates in PATH (PEM file or directory) instead of "
        "certifi's, SSL_CERT_FILE's or SSL_CERT_DIR's (default: certifi, or those if set)",
    )
    tls.add_argument(
        "--insecure",
        dest="verify_tls",
        action="store_const",
        const=False,
        help="do not verify TLS certificates (like curl -k; default: verified)",
    )

    run = p.add_argument_group("running")
    run.add_argument(
        "--state",
        metavar="DIR",
        type=Path,
        help="keep the crawl's state (frontier, seen URLs, politeness, statistics) in DIR; "
        "the same command run again resumes it (default: none)",
    )
    run.add_argument(
        "--state-reset",
        action="store_true",
        help="with --state: forget the stored crawl and start over, truncating the outputs",
    )
    run.add_argument(
        "--status",
        action="store_true",
        help="with --state: print the stored crawl's progress and exit, crawling nothing",
    )
    run.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve Prometheus metrics at http://HOST:PORT/metrics while crawling "
        "(port 0: any free port; default: off)",
    )
    shared = p.add_argument_group("shared crawls (several workers, one Redis)")
    shared.add_argument(
        "--redis",
        metavar="URL",
        help="join the shared crawl in this Redis (redis://HOST:PORT/DB, redis+cluster://...); "
        "needs --crawl-id (default: none)",
    )
    shared.add_argument("--crawl-id", metavar="NAME", help="name of the shared crawl")
    shared.add_argument(
        "--worker-id",
        metavar="ID",
        help="this worker's id, also in its output file names (default: HOSTNAME-PID)",
    )
    shared.add_argument(
        "--results",
        choices=("local", "redis"),
        default="local",
        help="local: this worker's own -o/--warc files (out.w-ID.jsonl); redis: append pages "
        "to the crawl's Redis Stream (default: local)",
    )
    run.add_argument(
        "--config",
        metavar="FILE.toml",
        help='read settings (CrawlConfig keys, [hosts."NAME"] tables) from a TOML file; '
        "flags override it (default: none)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display and no summary"
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="structured log lines on stderr (default: off)",
    )
    run.add_argument(
        "--log-format",
        choices=("logfmt", "json"),
        default="logfmt",
        help="format of the -v log lines (default: logfmt)",
    )
    run.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


# Flags whose value goes straight to the CrawlConfig field of the same name.
_CONFIG_FLAGS: dict[str, str] = {
    "max_pages": "--max-pages",
    "max_depth": "--max-depth",
    "scope": "--scope",
    "include": "--include",
    "exclude": "--exclude",
    "obey_robots": "--ignore-robots",
    "sitemaps": "--sitemaps",
    "concurrency": "--concurrency",
    "per_host": "--per-host",
    "rate": "--rate",
    "burst": "--burst",
    "user_agent": "--user-agent",
    "retries": "--retries",
    "max_bytes": "--max-bytes",
    "timeout": "--timeout",
    "max_time": "--max-time",
    "block_private": "--block-private",
    "ca_bundle": "--ca-bundle",
    "verify_tls": "--insecure",
    "state": "--state",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """A parsed command line: the crawl's settings and what the command does with the pages."""

    config: CrawlConfig
    output: str = "-"
    warc: str | None = None
    quiet: bool = False
    verbose: bool = False
    log_format: Literal["logfmt", "json"] = "logfmt"
    config_file: str | None = None
    state_reset: bool = False
    metrics: tuple[str, int] | None = None
    redis: str | None = None
    crawl_id: str | None = None
    worker_id: str | None = None
    results: Literal["local", "redis"] = "local"


def _load_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    for name in _NOT_IN_FILES:
        if name in data:
            raise UsageError(f"{path}: {name} cannot be set in a config file")
    for name in _BOOL_FIELDS:
        if name in data and not isinstance(data[name], bool):
            raise UsageError(f"{path}: {name} must be true or false, got {data[name]!r}")
    if "state" in data and not isinstance(data["state"], str):
        raise UsageError(f"{path}: state must be a directory path, got {data['state']!r}")
    if "ca_bundle" in data and not isinstance(data["ca_bundle"], str):
        raise UsageError(f"{path}: ca_bundle must be a path, got {data['ca_bundle']!r}")
    return data


def _relabel(message: str, origins: Mapping[str, str], config_file: str | None) -> str:
    """Name where a bad value came from: the flag, or the config file."""
    match = re.match(r"(\w+)", message)
    name = match.group(1) if match else ""
    origin = origins.get(name)
    if origin is not None and origin != "file":
        return origin + message[len(name) :]
    if config_file is not None and (origin == "file" or name not in _FIELDS):
        return f"{config_file}: {message}"
    return message


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse a command line into Options; raise UsageError with a one-line message."""
    return _options(_build_parser().parse_args(argv))


def _options(args: argparse.Namespace) -> Options:
    if args.state_reset and args.state is None:
        raise UsageError("--state-reset needs --state DIR")
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if args.config is not None:
        data = _load_config_file(args.config)
        origins = dict.fromkeys(data, "file")
    for name, flag in _CONFIG_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            data[name] = tuple(value) if isinstance(value, list) else value
            origins[name] = flag
    if args.seeds:
        data["seeds"] = tuple(args.seeds)
        origins["seeds"] = "SEED"
    if args.warc is not None:
        data["keep_exchanges"] = True
    if args.redis is not None:
        if args.crawl_id is None:
            raise UsageError("--redis needs --crawl-id NAME")
        if data.get("state") is not None:
            raise UsageError("--redis and --state do not go together: the state is in Redis")
        if not data.get("seeds"):
            data["seeds"], data["stay_open"] = (), True  # join the crawl others seeded
    elif args.crawl_id is not None:
        raise UsageError("--crawl-id needs --redis URL")
    if not data.get("seeds") and not data.get("stay_open"):
        where = f" or seeds = [...] in {args.config}" if args.config else ""
        raise UsageError(f"no seed URL given (pass SEED arguments{where})")
    try:
        config = CrawlConfig.from_mapping(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(_relabel(str(exc), origins, args.config)) from None
    return Options(
        config=config,
        output=args.output,
        warc=args.warc,
        quiet=args.quiet,
        verbose=args.verbose,
        log_format=args.log_format,
        config_file=args.config,
        state_reset=args.state_reset,
        redis=args.redis,
        crawl_id=args.crawl_id,
        worker_id=args.worker_id,
        results=args.results,
        metrics=args.metrics,
    )


def build_config(argv: Sequence[str] | None = None) -> CrawlConfig:
    """The CrawlConfig a command line asks for (defaults < config file < flags)."""
    return parse_args(argv).config


# ---------------------------------------------------------------------------
# Logging (-v)


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is now (rich's live display swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # pragma: no cover - logging must never crash the crawl
            self.handleError(record)


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
    out: dict[str, Any] = {
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _RESERVED and not key.startswith("_"):
            out[key] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and not re.search(r'[\s"=\\]', text) and text.isprintable():
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _record_fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record), default=str, separators=(",", ":"))


def _setup_logging(options: Options) -> None:
    logger = logging.getLogger("crawler")
    logger.propagate = False
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler | logging.NullHandler)]:
        logger.removeHandler(old)
    if options.verbose:
        handler = _StderrHandler()
        handler.setFormatter(
            LogfmtFormatter() if options.log_format == "logfmt" else JsonFormatter()
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())


# ---------------------------------------------------------------------------
# Progress and summary


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _human_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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


class _Progress:
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
        line.append(f"  {_human_bytes(stats.bytes)}  {_human_seconds(stats.elapsed)}", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_row(Spinner("dots", style="green"), line)
        max_pages = self.config.max_pages
        if max_pages:
            bar = ProgressBar(total=max_pages, completed=min(stats.pages, max_pages), width=40)
            return Group(grid, bar)
        return grid


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
    ok = stats.pages - stats.errors
    table.add_row("pages", f"{stats.pages:,} ({ok:,} ok, {stats.errors:,} with errors)")
    if stats.errors_by_kind:
        kinds = sorted(stats.errors_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        table.add_row("errors by kind", ", ".join(f"{kind} {n:,}" for kind, n in kinds))
    else:
        table.add_row("errors by kind", "none")
    table.add_row("bytes", f"{_human_bytes(stats.bytes)} ({stats.bytes:,})")
    table.add_row("pages/s", f"{stats.pages_per_second:,.1f}")
    table.add_row("elapsed", _human_seconds(stats.elapsed))
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
        top = sorted(stats.hosts.values(), key=lambda h: (-(h.done + h.errors), h.origin))
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
                _human_bytes(host.bytes),
                f"{host.rate:g}" if host.rate > 0 else "unlimited",
            )
        console.print(hosts)


# ---------------------------------------------------------------------------
# Running


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover
        return f"signal {signum}"


class _Run:
    """One run of the command: the outputs, the crawl, the signal watcher, the progress display."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.config = options.config
        self.crawl: Crawl | None = None
        self.stats: Statistics | None = None
        self.signal: int | None = None
        self.hard_stop = False
        self.stop_how = "graceful stop"
        self.fatal: str | None = None
        self.usage: str | None = None
        """A usage error found once running (a state that is another crawl's): exit 2."""
        self.work_scope = trio.CancelScope()
        self.watchdog: threading.Timer | None = None
        self.outputs: list[tuple[str, str]] = []
        self.names = _output_names(options)
        """Output files by role ("jsonl", "warc"), as a state names them."""

    def _say(self, message: str) -> None:
        if not self.options.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    async def main(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals, nursery)
                await self._crawl(nursery)
                nursery.cancel_scope.cancel()
            if not self.options.quiet and self.stats is not None:
                stopped_by = None
                if self.signal is not None:
                    stopped_by = f"{_signal_name(self.signal)} ({self.stop_how})"
                print_summary(
                    self.stats, file=sys.stderr, outputs=self.outputs, stopped_by=stopped_by
                )
            if self.usage is not None:
                print(f"{PROG}: error: {self.usage}", file=sys.stderr, flush=True)
                return EXIT_USAGE
            if self.fatal is not None:
                print(f"{PROG}: error: {self.fatal}", file=sys.stderr, flush=True)
                if not (self.hard_stop and self.signal is not None):
                    return EXIT_FATAL  # else: most likely a write abandoned by the stop
            if self.signal is not None:
                return 128 + self.signal
            return EXIT_OK

    async def _crawl(self, nursery: trio.Nursery) -> None:
        options = self.options
        jsonl: JsonLinesWriter | None = None
        warc: WarcWriter | None = None
        try:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with self.work_scope:
                        store: StateStore | None = None
                        offsets: Mapping[str, int] = {}
                        if self.config.state is not None:
                            opened = await self._open_state()
                            if opened is None:
                                return
                            store, offsets = opened
                            # Closed by the crawl; here in case the outputs fail to open.
                            stack.push_async_callback(store.aclose)
                        jsonl = JsonLinesWriter(
                            options.output, resume_at=offsets.get(self.names.get("jsonl", ""))
                        )
                        await stack.enter_async_context(jsonl)
                        if options.warc is not None:
                            warc = WarcWriter(
                                options.warc,
                                config=self.config,
                                resume_at=offsets.get(self.names["warc"]),
                            )
                            await stack.enter_async_context(warc)
                        log.info(
                            "crawl started",
                            extra={
                                "seeds": " ".join(self.config.seeds),
                                "output": options.output,
                            },
                        )
                        async with open_crawl(self.config, store=store) as crawl:
                            self.crawl = crawl
                            if self.signal is not None:
                                crawl.stop(graceful=not self.hard_stop)
                            if options.metrics is not None and not await self._serve_metrics(
                                nursery, crawl, *options.metrics
                            ):
                                crawl.stop(graceful=False)
                                return
                            if self._wants_progress():
                                nursery.start_soon(self._show_progress, crawl)
                            try:
                                await self._consume(crawl, jsonl, warc)
                            finally:
                                self.stats = crawl.statistics()
            except* StateError as group:
                self.fatal = str(_first_leaf(group))
        except OutputError as exc:
            self.fatal = str(exc)
        except BaseExceptionGroup as group:
            # An OutputError alongside a StateError: report the output's.
            output_errors, rest = group.split(OutputError)
            if output_errors is None:
                raise
            self.fatal = str(_first_leaf(output_errors))
            if rest is not None:
                raise rest from None
        finally:
            if jsonl is not None:
                target = "stdout" if jsonl.path == "-" else jsonl.path
                self.outputs.append(("pages written", f"{jsonl.lines:,} to {target}"))
            if warc is not None:
                self.outputs.append(("WARC records", f"{warc.records:,} to {warc.path}"))
            if self.config.state is not None and self.stats is not None:
                left = self.stats.queued + self.stats.in_flight
                note = "complete" if not left else f"{left:,} to go: run again to resume"
                self.outputs.append(("state", f"{self.config.state} ({note})"))
            if self.stats is not None:
                s = self.stats
                log.info(
                    "crawl finished",
                    extra={"pages": s.pages, "errors": s.errors, "bytes": s.bytes,
                           "elapsed": round(s.elapsed, 3)},
                )  # fmt: skip

    async def _open_state(self) -> tuple[StateStore, Mapping[str, int]] | None:
        """Open the crawl's state (starting over with --state-reset); None on a usage error.

        Returns the store (locked: no other crawl can use it, nor truncate our outputs)
        and the offsets to cut each output back to."""
        config = self.config
        assert config.state is not None
        if self.options.state_reset:
            await trio.to_thread.run_sync(reset_state, config.state)
        store = StateStore(config.state, config)
        try:
            snapshot = await store.open()
        except StateMismatch as exc:
            self.usage = str(exc)
            return None
        try:
            offsets = self._resume_offsets(snapshot)
        except UsageError as exc:
            await store.aclose()
            self.usage = str(exc)
            return None
        if snapshot.totals.pages:
            self._say(
                f"resuming the crawl in {config.state}: {snapshot.totals.pages:,} pages done, "
                f"{snapshot.queued:,} queued"
            )
        return store, offsets

    def _resume_offsets(self, snapshot: Snapshot) -> Mapping[str, int]:
        """Where each output file continues: the state's committed offsets."""
        names = set(self.names.values())
        stored = dict(snapshot.outputs)
        if not stored and not snapshot.totals.pages:
            return dict.fromkeys(names, 0)  # nothing committed: the files start over
        if set(stored) != names:
            before = _describe_outputs(stored) or "standard output only"
            now = _describe_outputs(names) or "standard output only"
            raise UsageError(
                f"{snapshot.path} holds a crawl written to {before}, not {now}: resume it "
                "with the same -o / --warc, or start over with --state-reset"
            )
        return stored

    async def _serve_metrics(
        self, nursery: trio.Nursery, crawl: Crawl, host: str, port: int
    ) -> bool:
        from ._metrics import serve_metrics

        try:
            bound = await nursery.start(serve_metrics, crawl, host, port)
        except OSError as exc:
            self.fatal = f"cannot serve metrics on {_join_host_port(host, port)}: {_why(exc)}"
            return False
        self._say(f"metrics at http://{_join_host_port(host, bound)}/metrics")
        return True

    def _wants_progress(self) -> bool:
        """A live display on stderr, unless -q, stderr is no terminal, or pages go to it."""
        if self.options.quiet or not _is_terminal(sys.stderr):
            return False
        return not (self.options.output == "-" and _is_terminal(sys.stdout))

    async def _consume(self, crawl: Crawl, jsonl: JsonLinesWriter, warc: WarcWriter | None) -> None:
        verbose = log.isEnabledFor(logging.INFO)
        durable = self.config.state is not None
        jsonl_name = self.names.get("jsonl")
        warc_name = self.names.get("warc")
        async for page in crawl:
            try:
                await jsonl.write(page)
                if warc is not None:
                    await warc.write(page)
            except OutputError as exc:
                self.fatal = str(exc)
                crawl.stop(graceful=False)
                return
            if durable:
                # Written out (handed to the OS): the page is done, and the outputs
                # end here; both go into the state in one transaction.
                outputs: dict[str, int] = {}
                if jsonl_name is not None:
                    outputs[jsonl_name] = jsonl.position
                if warc_name is not None and warc is not None:
                    outputs[warc_name] = warc.position
                crawl.mark_done(page, outputs=outputs)
            if verbose:
                _log_page(page)

    async def _watch_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            if self.signal is None:
                self.signal = signum
                in_flight = self.crawl.statistics().in_flight if self.crawl is not None else 0
                log.warning("signal", extra={"signal": _signal_name(signum), "action": "graceful"})
                name = _signal_name(signum)
                if in_flight:
                    self._say(
                        f"{name}: stopping; letting {in_flight} request(s) in flight finish "
                        f"(up to {GRACE_PERIOD:g} s). Signal again to stop at once."
                    )
                else:
                    self._say(f"{name}: stopping.")
                if self.crawl is not None:
                    self.crawl.stop(graceful=True)
                nursery.start_soon(self._grace_timer)
            else:
                log.warning("signal", extra={"signal": _signal_name(signum), "action": "cancel"})
                self._say(f"{_signal_name(signum)} again: stopping now.")
                self._stop_now()

    async def _grace_timer(self) -> None:
        await trio.sleep(GRACE_PERIOD)
        if self.crawl is not None and not self.hard_stop:
            self._say(f"in-flight requests still running after {GRACE_PERIOD:g} s: cancelling.")
            self.hard_stop = True
            self.stop_how = f"in-flight requests cancelled after {GRACE_PERIOD:g} s"
            self.crawl.stop(graceful=False)
            self._bound_the_stop()

    def _stop_now(self) -> None:
        self.hard_stop = True
        self.stop_how = "stopped at once"
        if self.crawl is not None:
            self.stats = self.crawl.statistics()
            self.crawl.stop(graceful=False)
        self.work_scope.cancel()
        self._bound_the_stop()

    def _bound_the_stop(self) -> None:
        """From now on the process ends within FORCE_EXIT_AFTER seconds, whatever the disk
        or the stdout pipe is doing: commits and closes are cut short (what was committed
        stays committed; a resumed crawl redoes the rest), and a watchdog thread ends the
        process if even that is not enough (a write stuck where trio cannot reach it)."""
        hurry(STOP_NOW_LIMIT)
        if self.watchdog is not None:
            return
        code = 128 + (self.signal if self.signal is not None else signal.SIGINT)
        self.watchdog = threading.Timer(FORCE_EXIT_AFTER, _force_exit, (code, FORCE_EXIT_AFTER))
        self.watchdog.daemon = True
        self.watchdog.start()

    def cancel_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()

    async def _show_progress(self, crawl: Crawl) -> None:
        from rich.console import Console
        from rich.live import Live

        progress = _Progress(self.config)
        console = Console(file=sys.stderr)
        with Live(
            progress.render(crawl.statistics()),
            console=console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
        ) as live:
            while True:
                await trio.sleep(PROGRESS_INTERVAL)
                live.update(progress.render(crawl.statistics()), refresh=True)


def _output_names(options: Options) -> dict[str, str]:
    """The output files of a run, as a state records them: role -> "role:/absolute/path"."""
    names: dict[str, str] = {}
    if options.output != "-":
        names["jsonl"] = f"jsonl:{os.path.abspath(options.output)}"
    if options.warc is not None:
        names["warc"] = f"warc:{os.path.abspath(options.warc)}"
    return names


def _describe_outputs(names: Iterable[str]) -> str:
    flags = {"jsonl": "-o", "warc": "--warc"}
    described = []
    for name in sorted(names):
        role, _, path = name.partition(":")
        described.append(f"{flags.get(role, role)} {path}")
    return " ".join(described)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# ---------------------------------------------------------------------------
# --status


def _print_status(directory: Path, file: TextIO) -> int:
    try:
        snapshot = read_snapshot(directory)
        holder = lock_holder(directory)
    except StateError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    if snapshot is None:
        print(f"{PROG}: error: no crawl state in {directory}", file=sys.stderr)
        return EXIT_USAGE
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
    ok = totals.pages - totals.errors
    lines += [
        f"crawl: {', '.join(scope)}",
        f"runs: {totals.runs:,}",
        f"pages done: {totals.pages:,} ({ok:,} ok, {totals.errors:,} with errors)",
        f"queued: {queued:,}",
        f"seen URLs: {snapshot.seen:,}",
    ]
    if totals.errors_by_kind:
        kinds = sorted(totals.errors_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("errors by kind: " + ", ".join(f"{k} {n:,}" for k, n in kinds))
    else:
        lines.append("errors by kind: none")
    lines += [
        f"robots.txt disallowed: {totals.disallowed:,}",
        f"redirects: {totals.redirects:,}",
        f"bytes: {_human_bytes(totals.bytes)} ({totals.bytes:,})",
        f"elapsed: {_human_seconds(totals.elapsed)}",
    ]
    for name, offset in sorted(snapshot.outputs.items()):
        role, _, path = name.partition(":")
        lines.append(f"output {role}: {path} ({offset:,} bytes committed)")
    lines.append(f"hosts: {len(snapshot.hosts):,}")
    if snapshot.hosts:
        now = time.time()
        rows = [("origin", "done", "errors", "queued", "bytes", "politeness")]
        for host in sorted(snapshot.hosts, key=lambda h: (-(h.done + h.errors), h.origin)):
            notes = []
            if host.paused_until > now:
                notes.append(f"Retry-After pause {host.paused_until - now:.0f} s")
            if host.backoff:
                notes.append(f"backoff {host.backoff:g} s")
            if host.disallowed:
                notes.append(f"{host.disallowed:,} disallowed")
            rows.append(
                (
                    host.origin,
                    f"{host.done:,}",
                    f"{host.errors:,}",
                    f"{host.queued:,}",
                    _human_bytes(host.bytes),
                    "; ".join(notes) or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            numbers = zip(row[1:5], widths[1:], strict=True)
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in numbers]
            lines.append("  " + "  ".join([*cells, row[5]]).rstrip())
    file.write("\n".join(lines) + "\n")
    file.flush()
    return EXIT_OK


def _log_page(page: Page) -> None:
    if page.error is None:
        log.info(
            "page",
            extra={
                "url": page.url,
                "status": page.status,
                "depth": page.depth,
                "bytes": len(page.body),
                "links": len(page.links),
                "elapsed": round(page.elapsed, 4),
            },
        )
    else:
        log.warning(
            "page failed",
            extra={
                "url": page.url,
                "status": page.status,
                "depth": page.depth,
                "kind": str(page.error.kind),
                "error": page.error.message,
            },
        )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Terminated(BaseException):
    """SIGTERM outside the crawl's own signal handling (start-up, shutdown)."""


def _on_late_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _force_exit(code: int, after: float | None) -> NoReturn:
    """The last resort: one line on stderr (a raw write: a stuck thread may hold the
    stream's lock), then exit without flushing stdout, which may be what is stuck."""
    when = f"{after:g} s after stopping" if after is not None else "after the crawl ended"
    with contextlib.suppress(OSError):
        os.write(
            2,
            f"{PROG}: a write is still blocked {when} (a hung disk or an unread stdout?): "
            "exiting without waiting for it\n".encode(),
        )
    os._exit(code)


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(inner, kind) for inner in exc.exceptions)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crawl`` console script; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before or after the crawl's own signal handling
        return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        if args.status and args.redis is not None:
            if args.crawl_id is None:
                raise UsageError("--redis needs --crawl-id NAME")
            return trio.run(_print_shared_status, args.redis, args.crawl_id)
        if args.status:
            state = args.state
            if state is None and args.config is not None:
                state = _load_config_file(args.config).get("state")
            if state is None:
                raise UsageError("--status needs --state DIR")
            return _print_status(Path(state), sys.stdout)
        options = _options(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(options)
    if not options.config.verify_tls:
        print(
            f"{PROG}: warning: TLS certificates are not verified (--insecure): "
            "HTTPS pages may come from anyone on the path",
            file=sys.stderr,
            flush=True,
        )
    if options.redis is not None:
        return _run_shared(options)
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_late_sigterm)
    run = _Run(options)
    try:
        code = trio.run(run.main)
    except BaseException as exc:
        if _contains(exc, KeyboardInterrupt):
            return 128 + signal.SIGINT
        if _contains(exc, _Terminated):
            return 128 + signal.SIGTERM
        raise
    finally:
        run.cancel_watchdog()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if threads_running():
        # An abandoned write still holds a file (or stdout's lock): exiting normally
        # would block on it at interpreter shutdown.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        _force_exit(code, None)
    if options.output == "-":
        _quiet_stdout_on_exit()
    return code


async def _print_shared_status(redis_url: str, crawl_id: str) -> int:
    from ._distributed import shared_status
    from ._redis import SharedCrawlError, format_status

    try:
        status = await shared_status(redis_url, crawl_id)
    except SharedCrawlError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(format_status(status))
    return 0


def _run_shared(options: Options) -> int:
    """One worker of a crawl shared through Redis; its outputs are named per worker."""
    from ._distributed import run_worker
    from ._redis import SharedCrawlError

    assert options.redis is not None and options.crawl_id is not None
    config = options.config
    try:
        stats = trio.run(
            partial(
                run_worker,
                config,
                redis_url=options.redis,
                crawl_id=options.crawl_id,
                worker_id=options.worker_id,
                output=None
                if options.output == "-" and options.results == "redis"
                else options.output,
                warc=options.warc,
                results=options.results,
                stay_open=False,
                stop_on_signals=True,
            )
        )
    except SharedCrawlError as exc:  # one line; CrawlFinished is no error (exit 0)
        print(f"{PROG}: {'error: ' if exc.exit_status else ''}{exc}", file=sys.stderr)
        return exc.exit_status
    except OutputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    if not options.quiet:
        print(
            f"{PROG}: worker done: {stats.pages} pages, {stats.errors} errors, "
            f"{stats.pages_per_second:.1f} pages/s",
            file=sys.stderr,
        )
    return 0


def _quiet_stdout_on_exit() -> None:
    """Avoid 'Exception ignored ... BrokenPipeError' at exit when stdout's reader went away."""
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
