"""Durable crawl state: one SQLite database (WAL mode) in the ``state`` directory.

It holds the frontier (every admitted URL with its host, depth, retry count and
state), which doubles as the seen-set (``INSERT OR IGNORE`` on the URL primary
key), per-host politeness (a ``Retry-After`` pause as wall-clock time, the
adaptive backoff, the robots.txt body and its expiry), cumulative statistics,
and the byte offsets of the output files at the last commit.

The unit of commit is a :class:`Batch`: the pages the consumer has finished with
(their outputs already handed to the OS), each with the links it discovered, in
one transaction. A page's "done" mark and its links are never committed apart,
so a crash loses neither; a page delivered but not committed is still ``queued``
and is fetched again on resume, after its output has been cut back to the last
committed offset.

Only one thread touches the connection at a time: every call goes through
``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)`` owned by the store.
Nothing here runs on the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._shield import Abandoned, bounded_shield, run_abandonable, run_committed

if TYPE_CHECKING:
    from ._config import CrawlConfig

__all__ = [
    "DB_NAME",
    "Batch",
    "CommitResult",
    "Done",
    "HostState",
    "NewUrl",
    "QueuedRow",
    "Snapshot",
    "StateError",
    "StateMismatch",
    "StateStore",
    "StoredHost",
    "Totals",
    "UrlState",
    "fingerprint",
    "lock_holder",
    "read_snapshot",
    "reset_state",
]

SCHEMA_VERSION = 1
DB_NAME = "crawl.sqlite3"
LOCK_NAME = "crawl.lock"
LOCK_TRIES = 10
"""Tries, 50 ms apart, at the lock: `lock_holder` holds it for an instant."""
FLAG_SITEMAP = 1

T = TypeVar("T")
RobotsRecord = tuple[int | None, bytes, float]
"""A stored robots.txt: (HTTP status, None for a network failure; body; wall-clock expiry)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL UNIQUE,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    disallowed INTEGER NOT NULL DEFAULT 0,
    paused_until REAL NOT NULL DEFAULT 0,
    backoff REAL NOT NULL DEFAULT 0,
    robots_status INTEGER,
    robots_body BLOB,
    robots_expires REAL
);
CREATE TABLE IF NOT EXISTS urls (
    seq INTEGER PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    host INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    flags INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS urls_queued ON urls (host) WHERE state = 0;
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""


class UrlState(enum.IntEnum):
    QUEUED = 0
    DONE = 1
    """Delivered without an error."""
    FAILED = 2
    """Delivered with an error record."""
    DISALLOWED = 3
    """Refused by robots.txt: never fetched, no output."""
    HOP = 4
    """A redirect hop: fetched as part of another URL's record."""


class StateError(Exception):
    """The state directory cannot be used (locked, corrupt, unwritable, another crawl's)."""


class StateMismatch(StateError):
    """The state directory holds a crawl with different seeds or scope."""

    def __init__(self, path: Path, differences: Sequence[str]) -> None:
        self.path = path
        self.differences = tuple(differences)
        super().__init__(
            f"{path} holds a different crawl ({'; '.join(self.differences)}): resume it "
            "with the same seeds, scope, include, exclude and max_depth, or start over "
            "(--state-reset, or delete the directory)"
        )


# ---------------------------------------------------------------------------
# Records passed between the engine and the store


def fingerprint(config: CrawlConfig) -> dict[str, Any]:
    """The settings that define which URLs a crawl covers; a state is tied to them."""
    return {
        "seeds": sorted(set(config.seeds)),
        "scope": config.scope,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "max_depth": config.max_depth,
    }


@dataclass(slots=True)
class NewUrl:
    """A URL to admit: a seed, a URL given to Crawl.add(), or a discovered link."""

    url: str
    origin: str
    depth: int
    sitemap: bool = False
    front: bool = False
    """Queue it before the host's other work (Crawl.add(priority=...))."""


_MAX_PARAMS = 500
"""Most ``?`` parameters in one statement (SQLite allows at least 999)."""


@dataclass(slots=True)
class Done:
    """A URL the consumer has finished with (its output, if any, is written)."""

    seq: int | None
    """Its row (from QueuedRow.seq); None: find it by `url`."""
    url: str
    origin: str
    error_kind: str | None
    bytes: int
    redirects: int
    links: list[NewUrl] = field(default_factory=list)
    hops: list[str] = field(default_factory=list)
    """Redirect hops of the record: they join the seen-set with it."""


@dataclass(slots=True)
class HostState:
    """Politeness state of one origin, in wall-clock time."""

    origin: str
    paused_until: float
    backoff: float
    robots: RobotsRecord | None
    """None: not fetched."""


@dataclass(slots=True)
class Batch:
    inserts: list[NewUrl] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)
    disallowed: list[tuple[int | None, str, str]] = field(default_factory=list)
    """(seq, url, origin) refused by robots.txt."""
    attempts: list[tuple[int | None, str, int]] = field(default_factory=list)
    """(seq, url, attempt) of requests waiting to be retried."""
    hosts: list[HostState] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def __len__(self) -> int:
        return len(self.inserts) + len(self.done) + len(self.disallowed) + len(self.attempts)

    def empty(self) -> bool:
        return not (len(self) or self.hosts or self.outputs or self.dropped or self.elapsed)


@dataclass(slots=True, frozen=True)
class QueuedRow:
    url: str
    origin: str
    seq: int
    depth: int
    attempt: int
    sitemap: bool


@dataclass(slots=True)
class CommitResult:
    new: Counter[str] = field(default_factory=Counter)
    """Newly queued URLs per origin, to be loaded by a later refill."""
    front: list[QueuedRow] = field(default_factory=list)
    """Newly queued priority URLs, to go straight to the front of their host's queue."""
    seen: int = 0
    """URLs known to the state after the commit."""
    dropped_max_pages: int = 0
    """New links not queued because max_pages URLs were admitted already."""


@dataclass(slots=True)
class Totals:
    """Cumulative statistics of every run of the crawl."""

    pages: int = 0
    errors: int = 0
    bytes: int = 0
    disallowed: int = 0
    redirects: int = 0
    elapsed: float = 0.0
    runs: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "pages": self.pages,
                "errors": self.errors,
                "bytes": self.bytes,
                "disallowed": self.disallowed,
                "redirects": self.redirects,
                "elapsed": self.elapsed,
                "runs": self.runs,
                "errors_by_kind": self.errors_by_kind,
                "dropped": self.dropped,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Totals:
        data = json.loads(text)
        return cls(
            pages=int(data.get("pages", 0)),
            errors=int(data.get("errors", 0)),
            bytes=int(data.get("bytes", 0)),
            disallowed=int(data.get("disallowed", 0)),
            redirects=int(data.get("redirects", 0)),
            elapsed=float(data.get("elapsed", 0.0)),
            runs=int(data.get("runs", 0)),
            errors_by_kind={str(k): int(v) for k, v in data.get("errors_by_kind", {}).items()},
            dropped={str(k): int(v) for k, v in data.get("dropped", {}).items()},
        )

    def copy(self) -> Totals:
        return dataclasses.replace(
            self, errors_by_kind=dict(self.errors_by_kind), dropped=dict(self.dropped)
        )


@dataclass(slots=True, frozen=True)
class StoredHost:
    origin: str
    queued: int
    done: int
    errors: int
    bytes: int
    disallowed: int
    paused_until: float
    """Wall-clock time (time.time()) before which Retry-After forbids requests; 0 = none."""
    backoff: float
    robots: RobotsRecord | None


@dataclass(slots=True, frozen=True)
class Snapshot:
    """What a state directory holds, as of the last commit."""

    path: Path
    fingerprint: dict[str, Any] | None
    totals: Totals
    hosts: tuple[StoredHost, ...]
    outputs: Mapping[str, int]
    seen: int

    @property
    def queued(self) -> int:
        return sum(h.queued for h in self.hosts)


# ---------------------------------------------------------------------------
# The database


_ROBOTS_NONE = -1
"""robots_status value for "fetch failed at the network level"."""


class _Database:
    """The synchronous side: one connection, used by one thread at a time."""

    def __init__(self, directory: Path, *, lock: bool) -> None:
        """Open (creating) the state in `directory`; without `lock`, only to read it."""
        self.directory = directory
        self._lock_fd: int | None = None
        self._abandon_guard = threading.Lock()
        self.abandoned = False
        """Set when the async side gave up waiting for a commit: it must not land, and its
        thread closes the connection when it ends."""
        try:
            if lock:
                directory.mkdir(parents=True, exist_ok=True)
                self._lock_fd = _lock(directory / LOCK_NAME)
                self.conn = sqlite3.connect(
                    directory / DB_NAME, isolation_level=None, check_same_thread=False
                )
            else:  # read only: no lock, no pid file, no schema; WAL readers block no writer
                uri = (directory / DB_NAME).absolute().as_uri() + "?mode=ro"
                self.conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
        except OSError as exc:
            self._unlock()
            raise StateError(f"cannot use state directory {directory}: {_reason(exc)}") from None
        except sqlite3.Error as exc:
            self._unlock()
            raise StateError(f"cannot open {directory / DB_NAME}: {exc}") from None
        try:
            self.conn.execute("PRAGMA busy_timeout=5000")
            if lock:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("PRAGMA cache_size=-8192")
                self.conn.executescript(_SCHEMA)
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            self.close()
            raise StateError(f"{directory / DB_NAME} is not a usable crawl state: {exc}") from None
        version = meta.get("schema")
        if version is not None and version != str(SCHEMA_VERSION):
            self.close()
            raise StateError(
                f"{directory / DB_NAME} has state format {version}; this crawler reads "
                f"format {SCHEMA_VERSION}"
            )
        self.fingerprint: dict[str, Any] | None = (
            json.loads(meta["fingerprint"]) if "fingerprint" in meta else None
        )
        self.totals = Totals.from_json(meta["totals"]) if "totals" in meta else Totals()
        self.seq_hi = int(meta.get("seq_hi", 0))
        self.seq_lo = int(meta.get("seq_lo", 0))
        self.seen = int(meta.get("seen", 0))
        self.admitted = int(meta.get("admitted", 0))
        self.host_ids: dict[str, int] = {
            origin: hid for hid, origin in self.conn.execute("SELECT id, origin FROM hosts")
        }
        self.max_pages: int | None = None

    # -- opening ------------------------------------------------------------------------

    def bind(self, config: CrawlConfig) -> None:
        """Tie a fresh state to `config`, or check that it is the crawl this state holds."""
        wanted = fingerprint(config)
        self.max_pages = config.max_pages
        if self.fingerprint is None:
            self.fingerprint = wanted
            self._set_meta({"schema": str(SCHEMA_VERSION), "fingerprint": json.dumps(wanted)})
            return
        differences = [
            f"{key}: {self.fingerprint.get(key)!r} before, {value!r} now"
            for key, value in wanted.items()
            if self.fingerprint.get(key) != value
        ]
        if differences:
            raise StateMismatch(self.directory, differences)

    def start_run(self) -> None:
        self.totals.runs += 1
        self._set_meta({"totals": self.totals.to_json()})

    def snapshot(self) -> Snapshot:
        queued = dict(
            self.conn.execute(
                "SELECT host, count(*) FROM urls WHERE state = 0 GROUP BY host"
            ).fetchall()
        )
        hosts = tuple(
            StoredHost(
                origin=origin,
                queued=queued.get(hid, 0),
                done=done,
                errors=errors,
                bytes=nbytes,
                disallowed=disallowed,
                paused_until=paused_until,
                backoff=backoff,
                robots=None
                if robots_status is None
                else (
                    None if robots_status == _ROBOTS_NONE else robots_status,
                    bytes(robots_body or b""),
                    float(robots_expires or 0.0),
                ),
            )
            for (
                hid,
                origin,
                done,
                errors,
                nbytes,
                disallowed,
                paused_until,
                backoff,
                robots_status,
                robots_body,
                robots_expires,
            ) in self.conn.execute(
                "SELECT id, origin, done, errors, bytes, disallowed, paused_until, backoff, "
                "robots_status, robots_body, robots_expires FROM hosts ORDER BY id"
            )
        )
        outputs = dict(self.conn.execute("SELECT name, offset FROM outputs").fetchall())
        return Snapshot(
            path=self.directory,
            fingerprint=self.fingerprint,
            totals=self.totals.copy(),
            hosts=hosts,
            outputs=outputs,
            seen=self.seen,
        )

    # -- the crawl ----------------------------------------------------------------------

    def commit(self, batch: Batch) -> CommitResult:
        """Apply `batch` in one transaction: all of it, or (on an error) none of it."""
        saved = (self.totals.copy(), self.seq_hi, self.seq_lo, self.seen, self.admitted)
        new_hosts: list[str] = []
        result = CommitResult()
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._apply(cur, batch, result, new_hosts)
                if self.abandoned:  # given up on: reported as not done, so it must not land
                    raise sqlite3.OperationalError("commit abandoned")
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                self.totals, self.seq_hi, self.seq_lo, self.seen, self.admitted = saved
                for origin in new_hosts:
                    del self.host_ids[origin]
                raise
        finally:
            with self._abandon_guard:
                close = self.abandoned
            if close:
                self.close()
        result.seen = self.seen
        return result

    def abandon(self) -> None:
        """Give up on the commit in progress (called from another thread)."""
        with self._abandon_guard:
            self.abandoned = True

    def _apply(
        self, cur: sqlite3.Cursor, batch: Batch, result: CommitResult, new_hosts: list[str]
    ) -> None:
        totals = self.totals
        host_delta: dict[int, list[int]] = {}

        def delta(origin: str) -> list[int]:
            hid = self._host_id(cur, origin, new_hosts)
            counters = host_delta.get(hid)
            if counters is None:
                counters = host_delta[hid] = [0, 0, 0, 0]
            return counters

        if any(new.front for new in batch.inserts):
            for new in batch.inserts:
                self._insert(cur, new, UrlState.QUEUED, result, new_hosts)
        else:  # the usual case: one statement per run of links to one host
            self._insert_links(cur, batch.inserts, result, new_hosts)
        kinds = totals.errors_by_kind
        marked = self._mark_all(cur, batch.done)
        for done in batch.done:
            state = UrlState.DONE if done.error_kind is None else UrlState.FAILED
            if not marked:
                self._mark(cur, done.seq, done.url, state)
                if cur.rowcount == 0:
                    if self._exists(cur, done.url):
                        continue  # marked before: count it once
                    self._insert(
                        cur, NewUrl(done.url, done.origin, 0), state, result, new_hosts, count=False
                    )
            counters = delta(done.origin)
            totals.pages += 1
            totals.bytes += done.bytes
            totals.redirects += done.redirects
            counters[2] += done.bytes
            if done.error_kind is None:
                counters[0] += 1
            else:
                totals.errors += 1
                counters[1] += 1
                kinds[done.error_kind] = kinds.get(done.error_kind, 0) + 1
            self._insert_links(cur, done.links, result, new_hosts)
            for hop in done.hops:
                self._insert(
                    cur, NewUrl(hop, done.origin, 0), UrlState.HOP, result, new_hosts, count=False
                )
        for seq, url, origin in batch.disallowed:
            self._mark(cur, seq, url, UrlState.DISALLOWED)
            if cur.rowcount:
                totals.disallowed += 1
                delta(origin)[3] += 1
        for seq, url, attempt in batch.attempts:
            if seq is not None:
                cur.execute(
                    "UPDATE urls SET attempt = ? WHERE seq = ? AND state = 0", (attempt, seq)
                )
            else:
                cur.execute(
                    "UPDATE urls SET attempt = ? WHERE url = ? AND state = 0", (attempt, url)
                )
        for host in batch.hosts:
            hid = self._host_id(cur, host.origin, new_hosts)
            robots = host.robots
            cur.execute(
                "UPDATE hosts SET paused_until = ?, backoff = ?, robots_status = ?, "
                "robots_body = ?, robots_expires = ? WHERE id = ?",
                (
                    host.paused_until,
                    host.backoff,
                    None if robots is None else _ROBOTS_NONE if robots[0] is None else robots[0],
                    None if robots is None else robots[1],
                    None if robots is None else robots[2],
                    hid,
                ),
            )
        if host_delta:
            cur.executemany(
                "UPDATE hosts SET done = done + ?, errors = errors + ?, bytes = bytes + ?, "
                "disallowed = disallowed + ? WHERE id = ?",
                [(*counters, hid) for hid, counters in host_delta.items()],
            )
        if batch.outputs:
            cur.executemany(
                "INSERT OR REPLACE INTO outputs (name, offset) VALUES (?, ?)",
                list(batch.outputs.items()),
            )
        for reason, count in batch.dropped.items():
            totals.dropped[reason] = totals.dropped.get(reason, 0) + count
        totals.elapsed += batch.elapsed
        self._set_meta(
            {
                "totals": totals.to_json(),
                "seq_hi": str(self.seq_hi),
                "seq_lo": str(self.seq_lo),
                "seen": str(self.seen),
                "admitted": str(self.admitted),
            },
            cur,
        )

    def _insert(
        self,
        cur: sqlite3.Cursor,
        new: NewUrl,
        state: UrlState,
        result: CommitResult,
        new_hosts: list[str],
        *,
        count: bool = True,
    ) -> None:
        max_pages = self.max_pages
        if count and max_pages is not None and self.admitted >= max_pages:
            if not self._exists(cur, new.url):
                dropped = self.totals.dropped
                dropped["max_pages"] = dropped.get("max_pages", 0) + 1
                result.dropped_max_pages += 1
            return
        hid = self._host_id(cur, new.origin, new_hosts)
        seq = self.seq_lo - 1 if new.front else self.seq_hi + 1
        flags = FLAG_SITEMAP if new.sitemap else 0
        cur.execute(
            "INSERT OR IGNORE INTO urls (seq, url, host, depth, state, flags) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (seq, new.url, hid, new.depth, state, flags),
        )
        if cur.rowcount != 1:
            return
        if new.front:
            self.seq_lo = seq
        else:
            self.seq_hi = seq
        self.seen += 1
        self.admitted += count
        if state is UrlState.QUEUED:
            if new.front:
                result.front.append(QueuedRow(new.url, new.origin, seq, new.depth, 0, new.sitemap))
            else:
                result.new[new.origin] += 1

    def _insert_links(
        self,
        cur: sqlite3.Cursor,
        links: list[NewUrl],
        result: CommitResult,
        new_hosts: list[str],
    ) -> None:
        """Queue a page's links: one executemany per run of links to the same origin."""
        if self.max_pages is not None or len(links) < 8:
            for link in links:
                self._insert(cur, link, UrlState.QUEUED, result, new_hosts)
            return
        conn = self.conn
        start = 0
        while start < len(links):
            origin = links[start].origin
            end = start + 1
            while end < len(links) and links[end].origin == origin:
                end += 1
            hid = self._host_id(cur, origin, new_hosts)
            seq = self.seq_hi
            rows = [
                (seq + i, link.url, hid, link.depth, FLAG_SITEMAP if link.sitemap else 0)
                for i, link in enumerate(links[start:end], 1)
            ]
            before = conn.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO urls (seq, url, host, depth, state, flags) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                rows,
            )
            added = conn.total_changes - before
            self.seq_hi = seq + len(rows)  # ignored rows leave gaps: harmless
            self.seen += added
            self.admitted += added
            result.new[origin] += added
            start = end

    def _mark_all(self, cur: sqlite3.Cursor, done: list[Done]) -> bool:
        """Mark every page of `done` with one statement per state, if each is a queued
        row (the usual case); False, having changed nothing, when any is not."""
        if len(done) < 8 or any(d.seq is None for d in done):
            return False
        if len({d.seq for d in done}) != len(done):
            return False
        cur.execute("SAVEPOINT marks")
        changed = 0
        for state in (UrlState.DONE, UrlState.FAILED):
            seqs = [d.seq for d in done if (d.error_kind is None) == (state is UrlState.DONE)]
            for start in range(0, len(seqs), _MAX_PARAMS):
                part = seqs[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(part))
                cur.execute(
                    f"UPDATE urls SET state = ? WHERE state = 0 AND seq IN ({marks})",
                    (state, *part),
                )
                changed += cur.rowcount
        if changed != len(done):  # some were marked before: row by row, to count once
            cur.execute("ROLLBACK TO marks")
            cur.execute("RELEASE marks")
            return False
        cur.execute("RELEASE marks")
        return True

    def _mark(self, cur: sqlite3.Cursor, seq: int | None, url: str, state: UrlState) -> None:
        if seq is not None:
            cur.execute("UPDATE urls SET state = ? WHERE seq = ? AND state = 0", (state, seq))
        else:
            cur.execute("UPDATE urls SET state = ? WHERE url = ? AND state = 0", (state, url))

    def _exists(self, cur: sqlite3.Cursor, url: str) -> bool:
        return cur.execute("SELECT 1 FROM urls WHERE url = ?", (url,)).fetchone() is not None

    def _host_id(self, cur: sqlite3.Cursor, origin: str, new_hosts: list[str]) -> int:
        hid = self.host_ids.get(origin)
        if hid is None:
            cur.execute("INSERT INTO hosts (origin) VALUES (?)", (origin,))
            hid = cur.lastrowid
            assert hid is not None
            self.host_ids[origin] = hid
            new_hosts.append(origin)
        return hid

    def load(self, origin: str, after: int | None, limit: int) -> list[QueuedRow]:
        """Up to `limit` queued URLs of `origin` after sequence number `after`, in order."""
        hid = self.host_ids.get(origin)
        if hid is None:
            return []
        rows = self.conn.execute(
            "SELECT url, seq, depth, attempt, flags FROM urls "
            "WHERE host = ? AND state = 0 AND seq > ? ORDER BY seq LIMIT ?",
            (hid, after if after is not None else -(2**62), limit),
        ).fetchall()
        return [
            QueuedRow(url, origin, seq, depth, attempt, bool(flags & FLAG_SITEMAP))
            for url, seq, depth, attempt, flags in rows
        ]

    def contains(self, url: str) -> bool:
        return self._exists(self.conn.cursor(), url)

    def _set_meta(self, values: Mapping[str, str], cur: sqlite3.Cursor | None = None) -> None:
        (cur or self.conn).executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
        )

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for as long as the returned fd is open.

    The OS drops it when the process dies, however it dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
        return fd
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 < LOCK_TRIES:
                time.sleep(0.05)  # maybe only a `--status` probing it (lock_holder)
                continue
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateError(f"{path.parent} is in use by another crawl (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


# ---------------------------------------------------------------------------
# The async side


class StateStore:
    """A crawl's state directory, used from trio: each call runs in a worker thread.

    ``open()`` takes the directory's lock (one crawl at a time), checks that the state
    belongs to `config` (raising `StateMismatch` if not) and returns a `Snapshot`.
    """

    def __init__(self, directory: str | os.PathLike[str], config: CrawlConfig) -> None:
        self.directory = Path(directory)
        self.config = config
        self._db: _Database | None = None
        self._limiter = trio.CapacityLimiter(1)
        self.snapshot: Snapshot | None = None
        self._broken: str | None = None
        """Why the store is unusable: a commit was abandoned, its thread may still run."""

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def open(self) -> Snapshot:
        if self._db is not None:
            raise RuntimeError("StateStore is already open")
        self.snapshot = await self._call(self._open_sync)
        return self.snapshot

    def _open_sync(self) -> Snapshot:
        db = _Database(self.directory, lock=True)
        try:
            db.bind(self.config)
            db.start_run()
            snapshot = db.snapshot()
        except BaseException:
            db.close()
            raise
        self._db = db
        return snapshot

    def _need(self) -> _Database:
        if self._db is None:
            raise RuntimeError("StateStore is not open")
        if self._broken is not None:
            raise StateError(self._broken)
        return self._db

    async def commit(self, batch: Batch) -> CommitResult:
        """Apply `batch` in one transaction. A commit point: it runs even if cancelled
        before it starts, however long it takes (a batch of a 50,000-URL sitemap is no
        hung disk); once cancelled, it is waited for at most SHIELD_LIMIT seconds more,
        then abandoned (StateError): it never lands, and the store is no longer usable."""
        db = self._need()
        try:
            return await run_committed(db.commit, batch, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StateError(f"cannot write crawl state in {self.directory}: {exc}") from None
        except Abandoned:
            db.abandon()
            self._broken = (
                f"a commit to the crawl state in {self.directory} was still running "
                "well after the crawl was stopped (a hung disk?): given up on, not "
                "committed; a resumed crawl redoes it"
            )
            raise StateError(self._broken) from None

    async def load(self, origin: str, after: int | None, limit: int) -> list[QueuedRow]:
        return await self._read(self._need().load, origin, after, limit)

    async def contains(self, url: str) -> bool:
        return await self._read(self._need().contains, url)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            # Not abandoned: a cancelled read still holding the limiter made a commit
            # waiting behind it lose its batch (see the report on the stop branch).
            return await self._call(fn, *args)
        except sqlite3.Error as exc:
            raise StateError(f"cannot read crawl state in {self.directory}: {exc}") from None

    async def aclose(self) -> None:
        """Close the database and release the lock; immune to cancellation, for at most
        SHIELD_LIMIT seconds (then the close is left to its thread)."""
        db, self._db = self._db, None
        if db is None:
            return
        if self._broken is not None and self._limiter.borrowed_tokens:
            return  # the abandoned commit's thread closes it when it ends
        with bounded_shield():
            await run_abandonable(db.close, limiter=self._limiter)


def read_snapshot(directory: str | os.PathLike[str]) -> Snapshot | None:
    """What a state directory holds (None if it holds no crawl); blocking, read only."""
    path = Path(directory)
    if not (path / DB_NAME).exists():
        return None
    db = _Database(path, lock=False)
    try:
        return db.snapshot()
    finally:
        db.close()


def lock_holder(directory: str | os.PathLike[str]) -> int | None:
    """The pid of the crawl using a state directory now, or None; blocking."""
    path = Path(directory) / LOCK_NAME
    try:
        # Read only: never creates or rewrites the pid file, and the shared lock taken
        # to probe is held for an instant (a crawl starting then retries: see _lock).
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {_reason(exc)}") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def reset_state(directory: str | os.PathLike[str]) -> None:
    """Delete a crawl state (the database and its WAL files); blocking.

    Refuses (StateError) while another crawl holds the directory."""
    path = Path(directory)
    if not path.exists():
        return
    fd = _lock(path / LOCK_NAME)
    try:
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"):
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
    finally:
        os.close(fd)
