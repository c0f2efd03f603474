"""The ``crawl`` command: flags and a TOML file onto CrawlConfig, pages onto JSON Lines and WARC.

Settings are merged as CrawlConfig defaults < ``--config FILE.toml`` < flags.
Exit status: 0 when the crawl ran (failed pages are in the output with their
error), 1 on a fatal runtime error (an output that cannot be written), 2 on a
usage error, 130 / 143 when stopped by SIGINT / SIGTERM.

With ``--state DIR`` the crawl is durable (see ``crawler._state``): running the
same command again continues it, after cutting the outputs back to what the
state committed; ``--status`` reports on it without crawling.

With ``--redis URL --crawl-id NAME`` the command is one worker of a crawl shared
through Redis (``crawler._distributed``); ``--status`` and ``--reset`` act on that crawl.

Config files are read in ``crawler._config``, what is shown (progress, summary,
``--status``) is written in ``crawler._report``, ``-v`` log lines in ``crawler._logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

import trio

from ._config import OPTION_FLAGS, OPTIONS, ConfigError, CrawlConfig, NoSeeds, read_config_file
from ._engine import Crawl, open_crawl
from ._logs import log_page, setup_logging
from ._output import JsonLinesWriter, OutputError, WarcWriter
from ._page import Statistics
from ._parsepool import default_parse_processes
from ._redis import DEFAULT_LEASE, SharedCrawlError, check_crawl_id, check_worker_id
from ._report import format_shared_status, format_state_status, print_summary, show_progress
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


_TYPES: dict[str, Callable[[str], Any]] = {
    "int": _integer,
    "number": _number,
    "path": Path,
    "dir": Path,
}
_WHAT = "what to crawl"
_POLITE = "politeness and limits"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


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

    for group in (_WHAT, _POLITE, "TLS"):
        _add_options(p.add_argument_group(group), group)

    run = p.add_argument_group("running")
    _add_options(run, "running")
    run.add_argument(
        "--state-reset",
        action="store_true",
        help="with --state: forget the stored crawl and start over, truncating the outputs",
    )
    run.add_argument(
        "--status",
        action="store_true",
        help="with --state (or --redis): print the crawl's progress and exit, crawling nothing",
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
    shared.add_argument(
        "--lease",
        metavar="SECONDS",
        type=_number,
        help="how long a request this worker claims stays its own without renewal: a worker "
        f"that dies gives its requests back after this long (default: {DEFAULT_LEASE:g})",
    )
    shared.add_argument(
        "--reset",
        action="store_true",
        help="delete every key of the shared crawl in Redis (frontier, seen URLs, statistics, "
        "results stream) and exit, crawling nothing; stop its workers first",
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


def _add_options(group: argparse._ArgumentGroup, name: str) -> None:
    """The flags of the CrawlConfig settings in this help group (see _config.OPTIONS)."""
    for option in OPTIONS:
        if option.group != name:
            continue
        how: dict[str, Any] = {"dest": option.name, "help": option.full_help}
        if option.kind in ("on", "off"):
            how.update(action="store_const", const=option.kind == "on")
        elif option.kind == "choice":
            how.update(choices=option.choices)
        else:
            how.update(metavar=option.metavar, type=_TYPES.get(option.kind))
            if option.kind == "regexes":
                how.update(action="append")
        group.add_argument(option.flag, **how)


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
    lease: float = DEFAULT_LEASE


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse a command line into Options; raise UsageError with a one-line message."""
    return _options(_build_parser().parse_args(argv))


def _check_shared_flags(args: argparse.Namespace) -> None:
    """A shared crawl's flags: only with --redis, and names Redis keys can carry."""
    if args.redis is None:
        for flag, given in (
            ("--crawl-id", args.crawl_id is not None),
            ("--lease", args.lease is not None),
            ("--reset", args.reset),
        ):
            if given:
                raise UsageError(f"{flag} needs --redis URL")
        return
    if args.crawl_id is None:
        raise UsageError("--redis needs --crawl-id NAME")
    try:
        check_crawl_id(args.crawl_id)
        if args.worker_id is not None:
            check_worker_id(args.worker_id)
    except ValueError as exc:
        raise UsageError("--" + str(exc).replace("_", "-", 1)) from None
    if args.lease is not None and args.lease <= 0:
        raise UsageError(f"--lease must be > 0, got {args.lease:g}")


def _options(args: argparse.Namespace) -> Options:
    if args.state_reset and args.state is None:
        raise UsageError("--state-reset needs --state DIR")
    _check_shared_flags(args)
    overrides: dict[str, Any] = {name: getattr(args, name) for name in OPTION_FLAGS}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.warc is not None:
        overrides["keep_exchanges"] = True
    labels = {"seeds": "SEED"}
    # The command's own default: a config file or the flag still wins.
    defaults = {"parse_processes": default_parse_processes()}
    try:
        try:
            config = CrawlConfig.from_toml(
                args.config, labels=labels, defaults=defaults, **overrides
            )
        except NoSeeds:
            if args.redis is None:
                where = f" or seeds = [...] in {args.config}" if args.config else ""
                raise UsageError(f"no seed URL given (pass SEED arguments{where})") from None
            # A worker may join the crawl that others seeded.
            overrides.update(seeds=(), stay_open=True)
            config = CrawlConfig.from_toml(
                args.config, labels=labels, defaults=defaults, **overrides
            )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.redis is not None and config.state is not None:
        raise UsageError("--redis and --state do not go together: the state is in Redis")
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
        lease=args.lease if args.lease is not None else DEFAULT_LEASE,
    )


def _config_file_state(path: str) -> str | None:
    try:
        state = read_config_file(path).get("state")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return state if isinstance(state, str) else None


def build_config(argv: Sequence[str] | None = None) -> CrawlConfig:
    """The CrawlConfig a command line asks for (defaults < config file < flags)."""
    return parse_args(argv).config


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
        self.fatal_status = EXIT_FATAL
        self.usage: str | None = None
        """A usage error found once running (a state that is another crawl's): exit 2."""
        self.work_scope = trio.CancelScope()
        self.watchdog: threading.Timer | None = None
        self.outputs: list[tuple[str, str]] = []
        self.names = _output_names(options)
        """Output files by role ("jsonl", "warc"), as a state names them."""
        self.opened: list[JsonLinesWriter | WarcWriter] = []
        """The outputs open (a shared crawl's worker opens them with its first page)."""

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
                    return self.fatal_status  # else: most likely a write abandoned by the stop
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
                        jsonl_path, warc_path = self._output_paths()
                        if jsonl_path is not None:
                            jsonl = JsonLinesWriter(
                                jsonl_path, resume_at=offsets.get(self.names.get("jsonl", ""))
                            )
                        if warc_path is not None:
                            warc = WarcWriter(
                                warc_path,
                                config=self.config,
                                resume_at=offsets.get(self.names.get("warc", "")),
                            )
                        writers = [w for w in (jsonl, warc) if w is not None]
                        if options.redis is None:
                            for writer in writers:
                                await stack.enter_async_context(writer)
                            self.opened = writers
                        log.info(
                            "crawl started",
                            extra={
                                "seeds": " ".join(self.config.seeds),
                                "output": options.output,
                            },
                        )
                        async with self._open_crawl(store) as crawl:
                            self.crawl = crawl
                            if self._finished_before(crawl):
                                return
                            if self.signal is not None:
                                crawl.stop(graceful=not self.hard_stop)
                            if options.metrics is not None and not await self._serve_metrics(
                                nursery, crawl, *options.metrics
                            ):
                                crawl.stop(graceful=False)
                                return
                            if self._wants_progress():
                                nursery.start_soon(show_progress, crawl, self.config, sys.stderr)
                            try:
                                await self._consume(crawl, stack, writers, jsonl, warc)
                            finally:
                                self.stats = crawl.statistics()
            except* StateError as group:
                self.fatal = str(_first_leaf(group))
        except OutputError as exc:
            self.fatal = str(exc)
        except SharedCrawlError as exc:  # one line (Redis gone, a bad URL, other settings)
            self.fatal = str(exc)
            self.fatal_status = exc.exit_status
        except BaseExceptionGroup as group:
            # An OutputError alongside a StateError: report the output's.
            output_errors, rest = group.split(OutputError)
            if output_errors is None:
                raise
            self.fatal = str(_first_leaf(output_errors))
            if rest is not None:
                raise rest from None
        finally:
            if jsonl is not None and jsonl in self.opened:
                target = "stdout" if jsonl.path == "-" else jsonl.path
                self.outputs.append(("pages written", f"{jsonl.lines:,} to {target}"))
            if warc is not None and warc in self.opened:
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

    def _output_paths(self) -> tuple[str | None, str | None]:
        """Where pages go: -o and --warc; a shared crawl's worker has files of its own
        (out.w-ID.jsonl), and with --results redis its pages go to Redis, not stdout."""
        options = self.options
        if options.redis is None:
            return options.output, options.warc
        from ._distributed import worker_path

        worker = self.worker_id
        jsonl: str | None = worker_path(options.output, worker)
        if options.output == "-" and options.results == "redis":
            jsonl = None
        warc = worker_path(options.warc, worker) if options.warc is not None else None
        return jsonl, warc

    @property
    def worker_id(self) -> str:
        from ._distributed import default_worker_id

        return self.options.worker_id or default_worker_id()

    def _open_crawl(
        self, store: StateStore | None
    ) -> contextlib.AbstractAsyncContextManager[Crawl]:
        options = self.options
        if options.redis is None:
            return open_crawl(self.config, store=store)
        from ._distributed import open_shared_crawl

        assert options.crawl_id is not None
        return open_shared_crawl(
            self.config,
            redis_url=options.redis,
            crawl_id=options.crawl_id,
            worker_id=self.worker_id,
            results=options.results,
            lease=options.lease,
            stay_open=False,
        )

    def _finished_before(self, crawl: Crawl) -> bool:
        """A shared crawl that was over before this worker joined: say so, crawl nothing."""
        finished = getattr(crawl.backend, "finished_before", None)
        if finished is None:
            return False
        from ._redis import CrawlFinished

        self._say(str(CrawlFinished(self.options.crawl_id or "", finished)))
        return True

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

    async def _consume(
        self,
        crawl: Crawl,
        stack: contextlib.AsyncExitStack,
        writers: list[JsonLinesWriter | WarcWriter],
        jsonl: JsonLinesWriter | None,
        warc: WarcWriter | None,
    ) -> None:
        verbose = log.isEnabledFor(logging.INFO)
        durable = self.config.state is not None
        jsonl_name = self.names.get("jsonl")
        warc_name = self.names.get("warc")
        async for page in crawl:
            try:
                if not self.opened:
                    # A shared crawl's worker makes its files with its first page: one
                    # that gets none leaves none.
                    for writer in writers:
                        await stack.enter_async_context(writer)
                    self.opened = writers
                for writer in writers:
                    await writer.write(page)
            except OutputError as exc:
                self.fatal = str(exc)
                crawl.stop(graceful=False)
                return
            if durable:
                # Written out (handed to the OS): the page is done, and the outputs
                # end here; both go into the state in one transaction.
                outputs: dict[str, int] = {}
                if jsonl_name is not None and jsonl is not None:
                    outputs[jsonl_name] = jsonl.position
                if warc_name is not None and warc is not None:
                    outputs[warc_name] = warc.position
                crawl.mark_done(page, outputs=outputs)
            if verbose:
                log_page(page)

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
    file.write(format_state_status(directory, snapshot, holder))
    file.flush()
    return EXIT_OK


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
        _check_shared_flags(args)
        if args.redis is not None and (args.status or args.reset):
            if args.reset and args.status:
                raise UsageError("--reset and --status do not go together")
            if args.reset and args.seeds:
                raise UsageError("--reset deletes the shared crawl and exits: it takes no SEED")
            return _shared_command(args.redis, args.crawl_id, reset=args.reset)
        if args.status:
            state = args.state
            if state is None and args.config is not None:
                state = _config_file_state(args.config)
            if state is None:
                raise UsageError("--status needs --state DIR")
            return _print_status(Path(state), sys.stdout)
        options = _options(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(options.verbose, options.log_format)
    if not options.config.verify_tls:
        print(
            f"{PROG}: warning: TLS certificates are not verified (--insecure): "
            "HTTPS pages may come from anyone on the path",
            file=sys.stderr,
            flush=True,
        )
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


def _shared_command(redis_url: str, crawl_id: str, *, reset: bool) -> int:
    """--status or --reset of a shared crawl."""
    from ._redis import SharedCrawlError

    unreachable: tuple[type[Exception], ...] = (OSError,)
    with contextlib.suppress(ImportError):  # without coredis, open_redis says what to install
        from coredis.exceptions import RedisError

        unreachable = (OSError, RedisError)
    try:
        text = trio.run(_reset_shared if reset else _shared_status, redis_url, crawl_id)
    except SharedCrawlError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except unreachable as exc:
        print(f"{PROG}: error: Redis at {redis_url}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(text)
    return EXIT_OK


async def _shared_status(redis_url: str, crawl_id: str) -> str:
    from ._distributed import shared_status

    return format_shared_status(await shared_status(redis_url, crawl_id))


async def _reset_shared(redis_url: str, crawl_id: str) -> str:
    from ._redis import RedisFrontier, open_redis

    async with open_redis(redis_url) as client:
        deleted = await RedisFrontier(client, crawl_id, worker_id="reset").delete()
    return f"crawl {crawl_id}: deleted {deleted} keys"


def _quiet_stdout_on_exit() -> None:
    """Avoid 'Exception ignored ... BrokenPipeError' at exit when stdout's reader went away."""
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
