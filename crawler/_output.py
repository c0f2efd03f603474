"""Where crawled pages go: JSON Lines (one object per page) and WARC archives.

Both writers are async context managers that do their file I/O off the event
loop (``trio.to_thread.run_sync``), batch whatever is ready when several tasks
write at once, and leave only complete lines / complete records behind, even
when the crawl is cancelled half-way: a write that has started always runs to
its end, and ``close()`` writes whatever is still pending before closing. A
JSON Lines write that fails part-way (a full disk) is cut back off a regular
file, so no torn line stays in it (a resumed crawl cuts the WARC back). Both
wait at most ``SHIELD_LIMIT`` (10) seconds after a cancellation: a write stuck on
a hung disk or a full pipe is then abandoned, and its page counts as not written.

JSON Lines schema
-----------------

One JSON object per crawled URL, one per line (UTF-8, ``\\n``-terminated)::

    {"url": "https://example.com/", "final_url": "https://example.com/", "status": 200,
     "depth": 0, "content_type": "text/html", "title": "Example Domain",
     "links": ["https://example.com/about"], "bytes": 1256, "elapsed": 0.0421,
     "fetched_at": "2026-11-29T02:03:04.123456Z", "error": null}

=============  ================  ==============================================================
key            type              meaning
=============  ================  ==============================================================
url            string            the URL as queued (a seed or a discovered link)
final_url      string            the URL of the last response, after redirects
status         int or null       HTTP status of the last response (null: no response at all)
depth          int               link distance from the nearest seed (seeds are 0)
content_type   string or null    the response's Content-Type header, as sent
title          string or null    the HTML ``<title>``, whitespace collapsed
links          array of string   absolute URLs of the links found on the page, in page order
bytes          int               length of the decoded body
elapsed        float             seconds the final response took, to the end of its body
fetched_at     string            when the fetch started, ISO 8601 UTC with microseconds and ``Z``
error          object or null    ``{"kind": ..., "message": ...}`` when the URL failed;
                                 ``kind`` is one of ``crawler.ErrorKind`` (``timeout``,
                                 ``connect``, ``reset``, ``protocol``, ``too_large``,
                                 ``too_many_redirects``, ``redirect_loop``, ``bad_redirect``,
                                 ``robots_unavailable``, ``retry_after_too_long``, ``http``,
                                 ``decoding``, ``blocked``, ``other``)
=============  ================  ==============================================================

WARC
----

``WarcWriter`` writes WARC/1.1 with warcio: a ``warcinfo`` record first, then
for every HTTP exchange behind a page (robots.txt, retries, redirect hops, the
final response) a ``response`` record and a ``request`` record whose
``WARC-Concurrent-To`` names the response. The response record holds the
status line, the headers as received and the body as received (still
content-encoded, de-chunked, cut at ``max_bytes``). Because the body is stored
de-chunked, ``Transfer-Encoding: chunked`` is removed from the stored headers
(the original value is kept as ``X-Crawler-Transfer-Encoding``) and
``Content-Length`` is set to the stored length (a different original value is
kept as ``X-Crawler-Content-Length``); a body cut short carries
``WARC-Truncated: length``. Names ending in ``.gz`` are gzipped per record.

Resuming
--------

Both writers take ``resume_at=OFFSET``: the file is opened for appending after
being cut back to ``OFFSET`` bytes (what a crawl state recorded at its last
commit: anything after it is a torn line or a page that was never committed,
and will be fetched and written again). ``position`` is the file offset just
after the last page written, for the state to record. A gzip-per-record WARC can
be cut at any record boundary; a resumed WARC gets no second ``warcinfo`` record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
import orjson
import trio

from . import _shield
from ._config import CrawlConfig
from ._page import Exchange, Page
from ._version import __version__

__all__ = [
    "SCHEMA",
    "JsonLinesWriter",
    "OutputError",
    "WarcWriter",
    "config_summary",
    "page_to_json",
]

SCHEMA = __doc__
"""The JSON Lines schema and WARC layout, as documented in this module's docstring."""

PathArg = str | os.PathLike[str]


class OutputError(Exception):
    """An output file could not be opened or written."""

    def __init__(self, path: PathArg, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(path, reason)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _iso_utc(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    elif when.tzinfo is not dt.UTC:
        when = when.astimezone(dt.UTC)
    # isoformat: half the cost of strftime, on every page.
    return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# ---------------------------------------------------------------------------
# JSON Lines


def page_to_json(page: Page) -> dict[str, Any]:
    """The JSON Lines object for one page (see the module docstring for the schema)."""
    return _record(page, list(page.links), round(page.elapsed, 6), _iso_utc(page.fetched_at))


def _record(page: Page, links: object, elapsed: object, fetched_at: object) -> dict[str, Any]:
    """The schema's keys, in order: the one place that lists them."""
    error = page.error
    return {
        "url": page.url,
        "final_url": page.final_url,
        "status": page.status,
        "depth": page.depth,
        "content_type": page.content_type,
        "title": page.title,
        "links": links,
        "bytes": len(page.body),
        "elapsed": elapsed,
        "fetched_at": fetched_at,
        "error": None if error is None else error.to_json(),
    }


# Characters that a JSON encoder writes raw but that some line splitters
# (str.splitlines, JavaScript) treat as line ends. They can only occur inside
# JSON strings, where the escaped form means the same.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
_LINE_BREAKER_BYTES = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)


def _elapsed_value(elapsed: float) -> float | orjson.Fragment:
    value = round(elapsed, 6)
    if 1e-4 <= value < 1e16 or value == 0.0:
        return value  # orjson spells these as repr() does
    # orjson writes 1e-05 as 0.00001 and NaN as null: keep json.dumps's spelling.
    return orjson.Fragment(json.dumps(value))


def _fetched_at_value(when: dt.datetime) -> dt.datetime | str:
    if when.tzinfo is dt.UTC and when.microsecond:
        return when  # orjson (OPT_UTC_Z) writes _iso_utc's text, ~10x faster
    # orjson drops a zero microsecond and keeps other zones' offsets.
    return _iso_utc(when)


def _encode_line(page: Page) -> bytes:
    """One JSON Lines record: page_to_json(page) as UTF-8, with json.dumps's bytes
    (ensure_ascii=False) and line breakers escaped; ``\\n``-terminated."""
    # The links tuple as it is: orjson writes it as an array, no list copy.
    record = _record(
        page, page.links, _elapsed_value(page.elapsed), _fetched_at_value(page.fetched_at)
    )
    try:
        data = orjson.dumps(record, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # A lone surrogate (a header decoded with surrogateescape, a broken title) or an
        # int past 64 bits: orjson refuses what json.dumps escapes.
        return _encode_line_slow(page)
    if data.isascii():  # the usual case: nothing to escape, and a cheap check
        return data
    for raw, escaped in _LINE_BREAKER_BYTES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def _encode_line_slow(page: Page) -> bytes:
    """The json.dumps encoder, for the records orjson refuses; same bytes otherwise."""
    text = json.dumps(page_to_json(page), ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate becomes its JSON escape.
    return (text.translate(_LINE_BREAKERS) + "\n").encode("utf-8", "backslashreplace")


class _Sink:
    """A byte destination written by one thread at a time, without Python-side buffering.

    `regular`: a regular file, where a small write only copies into the page cache.
    `cut`: cut the file back to an offset and continue there (None: a pipe, a terminal)."""

    def __init__(
        self,
        name: str,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        *,
        regular: bool = False,
        cut: Callable[[int], None] | None = None,
    ):
        self.name = name
        self.write_all = write
        self.close = close
        self.regular = regular
        self.cut = cut


def _open_for_resume(path: Path, offset: int, buffering: int = -1) -> IO[bytes]:
    """Open `path` for appending after cutting it back to `offset` bytes.

    Raises OSError (to be reported as an OutputError) if the file is shorter than
    `offset`: it was changed outside the crawl, and resuming would lose pages."""
    if offset < 0:
        raise ValueError("resume_at must be >= 0")
    if offset == 0:
        return open(path, "wb", buffering=buffering)
    file = open(path, "r+b", buffering=buffering)  # noqa: SIM115 - returned
    try:
        size = os.fstat(file.fileno()).st_size
        if size < offset:
            raise OSError(
                f"cannot resume: it holds {size:,} bytes, fewer than the {offset:,} "
                "already committed (was it changed or replaced?)"
            )
        file.truncate(offset)
        file.seek(offset)
    except BaseException:
        file.close()
        raise
    return file


def _open_file_sink(path: Path, resume_at: int | None = None) -> _Sink:
    raw: IO[bytes]
    if resume_at is None:
        raw = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by the sink
    else:
        raw = _open_for_resume(path, resume_at, buffering=0)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = raw.write(view)
            if written is None:  # pragma: no cover - only on non-blocking files
                continue
            view = view[written:]

    def cut(offset: int) -> None:
        raw.truncate(offset)
        raw.seek(offset)

    regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
    return _Sink(os.fspath(path), write, raw.close, regular=regular, cut=cut if regular else None)


def _stdout_sink() -> _Sink:
    stream: IO[bytes] | None = getattr(sys.stdout, "buffer", None)
    if stream is None:  # stdout replaced by a text-only object (e.g. under a test harness)
        text = sys.stdout

        def write_text(data: bytes) -> None:
            text.write(data.decode("utf-8", "surrogateescape"))
            text.flush()

        return _Sink("-", write_text, text.flush)
    binary = stream

    def write(data: bytes) -> None:
        binary.write(data)
        binary.flush()

    return _Sink("-", write, binary.flush)


class _Writer:
    """What both writers share: a path, a resume offset, a lock that orders writes and
    close, the byte position after the last write, and async-context-manager use."""

    def __init__(self, path: PathArg, resume_at: int | None) -> None:
        self.path = os.fspath(path)
        self._resume_at = resume_at
        self._lock = trio.Lock()
        self._position = resume_at or 0
        self._closed = False
        self._stuck: threading.Event | None = None
        """Set when the thread of an abandoned write or close ends (it owns the file till then)."""

    @property
    def position(self) -> int:
        """Bytes in the file after the last write (for stdout: bytes written)."""
        return self._position

    async def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """`close()` off the event loop, after any write in progress; immune to cancellation,
        for at most SHIELD_LIMIT seconds."""
        with _shield.bounded_shield():
            async with self._lock:
                if self._blocked():
                    self._closed = True  # the stuck thread owns the file: leave it be
                    return
                ended = threading.Event()

                def close() -> None:
                    try:
                        self.close()
                    finally:
                        ended.set()

                try:
                    await _shield.run_abandonable(close)
                except trio.Cancelled:
                    self._stuck = ended  # past the bound: the thread keeps the file
                    raise

    def _blocked(self) -> bool:
        return self._stuck is not None and not self._stuck.is_set()

    def _check_blocked(self) -> None:
        if self._blocked():
            raise OutputError(self.path, "an earlier write is still blocked")

    async def _in_thread(self, fn: Callable[..., None], *args: Any) -> None:
        """`fn(*args)` (a write) in a thread. Once cancelled, it is still waited for, for
        at most SHIELD_LIMIT seconds; then it is abandoned (OutputError) and counts as not
        done: its page is not marked done, and a resumed crawl redoes it."""
        ended = threading.Event()

        def work() -> None:
            try:
                fn(*args)
            finally:
                ended.set()

        try:
            await _shield.run_bounded(work)
        except _shield.Abandoned:
            self._stuck = ended
            raise OutputError(
                self.path,
                "a write was still blocked well after the crawl was stopped "
                "(a hung disk, or a pipe nobody reads?)",
            ) from None


class JsonLinesWriter(_Writer):
    """Write pages as JSON Lines to a file, or to stdout when the path is ``"-"``.

    Each line is written whole, with one write call, and reaches the OS before
    `write` returns (no buffer to lose on Ctrl-C)::

        async with JsonLinesWriter("pages.jsonl") as out:
            async for page in crawl:
                await out.write(page)

    `resume_at`: append to an existing file after cutting it back to that many bytes.
    """

    def __init__(self, path: PathArg = "-", *, resume_at: int | None = None) -> None:
        super().__init__(path, resume_at)
        if resume_at is not None and self.path == "-":
            raise ValueError("stdout cannot be resumed")
        self._sink: _Sink | None = None
        self._pending: list[bytes] = []
        self._lines = 0
        self._torn: str | None = None
        """Why nothing more can be written: a torn line could not be cut off."""

    @property
    def lines(self) -> int:
        """Lines (pages) handed to the OS so far."""
        return self._lines

    async def open(self) -> None:
        """Open (create or truncate) the file; raise `OutputError` if that fails."""
        if self._sink is not None or self._closed:
            raise RuntimeError("JsonLinesWriter can be opened only once")
        if self.path == "-":
            self._sink = _stdout_sink()
            return
        try:
            self._sink = await trio.to_thread.run_sync(
                _open_file_sink, Path(self.path), self._resume_at
            )
        except OSError as exc:
            raise OutputError(self.path, _reason(exc)) from None

    async def write(self, page: Page) -> None:
        """Append one line for `page`; return when it (and any line queued before it) is written."""
        if self._sink is None or self._closed:
            raise RuntimeError("JsonLinesWriter is not open")
        self._check_blocked()
        line = _encode_line(page)
        if self._sink.regular:
            # One line into a regular file is a page-cache copy of a few microseconds;
            # a thread hop per page cost ~0.3 ms of CPU, a third of a page's budget.
            # Pipes, terminals and sockets (stdout) can block: those go to a thread.
            if self._lock.locked():  # close() is flushing in its thread: queue behind it
                self._pending.append(line)
            else:
                self._write_batch(self._sink, [line])
            # After the write (a cancelled call still wrote). Only a cancellation point:
            # the consumer's loop, receiving the next page, is the schedule point.
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        self._pending.append(line)
        async with self._lock:
            # Whoever holds the lock writes every line that is ready, in one call.
            if not self._pending:
                return  # a concurrent writer already wrote ours
            batch, self._pending = self._pending, []
            self._check_blocked()
            await self._in_thread(self._write_batch, self._sink, batch)

    def _write_batch(self, sink: _Sink, batch: list[bytes]) -> None:
        if self._torn is not None:
            raise OutputError(self.path, self._torn)
        data = b"".join(batch) if len(batch) > 1 else batch[0]
        try:
            sink.write_all(data)
        except OSError as exc:
            self._cut_back(sink)
            raise OutputError(self.path, _reason(exc)) from None
        self._lines += len(batch)
        self._position += len(data)

    def _cut_back(self, sink: _Sink) -> None:
        """After a write that failed part-way (a full disk): drop its torn line, so that
        the file holds whole lines only and a later line starts on a line of its own."""
        if sink.cut is None:
            return  # a pipe: what the reader got stays got
        try:
            sink.cut(self._position)
        except OSError as exc:
            # Anything appended now would be glued to the torn line: refuse it.
            self._torn = f"a failed write left a torn line that cannot be cut off ({_reason(exc)})"

    def close(self) -> None:
        """Write any pending lines, flush and close (stdout is flushed, not closed)."""
        if self._closed:
            return
        self._closed = True
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            if self._pending:
                batch, self._pending = self._pending, []
                self._write_batch(sink, batch)
        finally:
            try:
                sink.close()
            except OSError as exc:
                raise OutputError(self.path, _reason(exc)) from None


# ---------------------------------------------------------------------------
# WARC


_HOOKS = ("should_follow",)


def config_summary(config: CrawlConfig) -> dict[str, Any]:
    """The settings of a crawl as a JSON-able mapping (hooks left out)."""
    summary: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in _HOOKS or callable(value):
            continue
        if f.name == "hosts":
            value = {
                key: {k: v for k, v in (("rate", lim.rate), ("burst", lim.burst),
                                        ("per_host", lim.per_host)) if v is not None}
                for key, lim in value.items()
            }  # fmt: skip
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = os.fspath(value)
        summary[f.name] = value
    return summary


def _field_value(value: object) -> str:
    """One line of application/warc-fields: no CR/LF may leak in."""
    return " ".join(str(value).split())


_HTTP1 = ("HTTP/1.0", "HTTP/1.1")
_NO_BODY_STATUSES = (204, 304)


def _http_version(version: str) -> tuple[str, str | None]:
    """(status-line protocol, WARC-Protocol value or None)."""
    text = version.strip().upper()
    if not text.startswith("HTTP/"):
        text = f"HTTP/{text}"
    if text in _HTTP1:
        return text, None
    # HTTP/2 and 3 have no status line: store an HTTP/1.1 one, say what was spoken.
    number = text.removeprefix("HTTP/")
    return "HTTP/1.1", "h2" if number in ("2", "2.0") else f"h{number.split('.')[0]}"


def _stored_response_headers(exchange: Exchange) -> tuple[list[tuple[str, str]], bool]:
    """Headers as they will be stored, and whether the stored body is shorter than the real one."""
    stored_length = len(exchange.raw_body)
    truncated = exchange.truncated
    headers: list[tuple[str, str]] = []
    original_lengths: list[str] = []
    for raw_name, raw_value in exchange.response_headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        lowered = name.lower()
        if lowered == "transfer-encoding":
            codings = [c.strip() for c in value.split(",") if c.strip()]
            kept = [c for c in codings if c.lower() != "chunked"]
            if len(kept) != len(codings):
                headers.append(("X-Crawler-Transfer-Encoding", value))
                if kept:
                    headers.append((name, ", ".join(kept)))
                continue
        elif lowered == "content-length":
            original_lengths.append(value)
            continue
        headers.append((name, value))
    status = exchange.status
    bodyless = 100 <= status < 200 or status in _NO_BODY_STATUSES
    if bodyless:
        headers.extend(("Content-Length", value) for value in original_lengths)
    else:
        headers.append(("Content-Length", str(stored_length)))
        for value in original_lengths:
            if value.strip() != str(stored_length):
                headers.append(("X-Crawler-Content-Length", value))
                with contextlib.suppress(ValueError):
                    truncated = truncated or int(value.strip()) > stored_length
    return headers, truncated


class WarcWriter(_Writer):
    """Write every HTTP exchange of each page to a WARC file (gzip per record for ``*.gz``).

    Pages must come from a crawl with ``CrawlConfig(keep_exchanges=True)``;
    a page without exchanges (a URL refused before any request) adds nothing::

        async with WarcWriter("site.warc.gz", config=config) as warc:
            async for page in crawl:
                await warc.write(page)

    Every write reaches the OS before it returns. `resume_at`: append to an existing
    archive after cutting it back to that many bytes (a record boundary).
    """

    def __init__(
        self, path: PathArg, *, config: CrawlConfig | None = None, resume_at: int | None = None
    ) -> None:
        super().__init__(path, resume_at)
        self.gzip = self.path.endswith(".gz")
        self._config = config
        self._file: IO[bytes] | None = None
        self._out: IO[bytes] | None = None
        """The file, also while close() writes what is pending."""
        self._writer: Any = None
        self._pending: list[Page] = []
        self._records = 0

    @property
    def records(self) -> int:
        """WARC records written so far (warcinfo included)."""
        return self._records

    async def open(self) -> None:
        """Create the file and write the warcinfo record; raise `OutputError` if that fails."""
        if self._file is not None or self._closed:
            raise RuntimeError("WarcWriter can be opened only once")
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        from warcio.warcwriter import WARCWriter

        try:
            if self._resume_at is None:
                self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            else:
                self._file = _open_for_resume(Path(self.path), self._resume_at)
        except OSError as exc:
            raise OutputError(self.path, _reason(exc)) from None
        self._out = self._file
        self._writer = WARCWriter(self._file, gzip=self.gzip, warc_version="1.1")
        if self._resume_at:
            return  # the archive has its warcinfo record already
        try:
            self._write_warcinfo()
            self._file.flush()
            self._position = self._file.tell()
        except OSError as exc:
            self._file.close()
            self._file = None
            raise OutputError(self.path, _reason(exc)) from None

    def _warcinfo_fields(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            warcio_version = version("warcio")
        except PackageNotFoundError:  # pragma: no cover
            warcio_version = "unknown"
        info: dict[str, str] = {
            "software": f"crawler/{__version__} (warcio/{warcio_version})",
            "format": "WARC File Format 1.1",
            "conformsTo": (
                "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/"
            ),
            "hostname": socket.gethostname(),
        }
        config = self._config
        if config is not None:
            info["http-header-user-agent"] = config.user_agent
            info["robots"] = "obey" if config.obey_robots else "ignore"
            info["isPartOf"] = " ".join(config.seeds)
            info["description"] = "crawl settings: " + json.dumps(
                config_summary(config), separators=(",", ":"), sort_keys=True
            )
        return {name: _field_value(value) for name, value in info.items()}

    def _write_warcinfo(self) -> None:
        writer = self._writer
        record = writer.create_warcinfo_record(Path(self.path).name, self._warcinfo_fields())
        writer.write_record(record)
        self._records += 1

    async def write(self, page: Page) -> None:
        """Append a request and a response record for every exchange of `page`."""
        if self._file is None or self._closed:
            raise RuntimeError("WarcWriter is not open")
        if not page.exchanges:
            return
        self._check_blocked()
        self._pending.append(page)
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            self._check_blocked()
            await self._in_thread(self._write_pages, batch)

    def _write_pages(self, pages: list[Page]) -> None:
        file = self._out
        assert file is not None
        try:
            for page in pages:
                for exchange in page.exchanges:
                    self._write_exchange(exchange)
            file.flush()
        except OSError as exc:
            raise OutputError(self.path, _reason(exc)) from None
        self._position = file.tell()

    def _write_exchange(self, exchange: Exchange) -> None:
        from warcio.statusandheaders import StatusAndHeaders
        from warcio.timeutils import datetime_to_iso_date

        writer = self._writer
        protocol, warc_protocol = _http_version(exchange.http_version)
        started = exchange.started_at
        if started.tzinfo is not None:
            started = started.astimezone(dt.UTC).replace(tzinfo=None)
        warc_date = datetime_to_iso_date(started, use_micros=True)

        headers, truncated = _stored_response_headers(exchange)
        reason = " ".join(exchange.reason.split())
        status_line = f"{exchange.status} {reason}" if reason else str(exchange.status)
        response_http = StatusAndHeaders(status_line, headers, protocol=protocol)
        response_warc: dict[str, str] = {"WARC-Date": warc_date}
        if warc_protocol is not None:
            response_warc["WARC-Protocol"] = warc_protocol
        if truncated:
            response_warc["WARC-Truncated"] = "length"
        response = writer.create_warc_record(
            exchange.url,
            "response",
            payload=io.BytesIO(exchange.raw_body),
            length=len(exchange.raw_body),
            warc_headers_dict=response_warc,
            http_headers=response_http,
        )

        target = httpx.URL(exchange.url).raw_path.decode("ascii") or "/"
        request_headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in exchange.request_headers
        ]
        request_http = StatusAndHeaders(
            f"{exchange.method} {target} {protocol}", request_headers, is_http_request=True
        )
        request_warc: dict[str, str] = {"WARC-Date": warc_date}
        if warc_protocol is not None:
            request_warc["WARC-Protocol"] = warc_protocol
        request = writer.create_warc_record(
            exchange.url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            warc_headers_dict=request_warc,
            http_headers=request_http,
        )
        # Writes the response, then the request with WARC-Concurrent-To = the response's ID.
        writer.write_request_response_pair(request, response)
        self._records += 2

    def close(self) -> None:
        """Write any pending pages, flush and close the file."""
        if self._closed:
            return
        self._closed = True
        file, self._file = self._file, None
        if file is None:
            return
        try:
            if self._pending:
                batch, self._pending = self._pending, []
                self._write_pages(batch)
            file.flush()
        except OSError as exc:
            raise OutputError(self.path, _reason(exc)) from None
        finally:
            file.close()
