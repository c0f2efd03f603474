"""The shared frontier of a distributed crawl: per-host queues, the seen-set, leases and
per-host politeness (concurrency tokens, GCRA rate, Retry-After pauses, backoff, robots.txt
state) in Redis, changed only by Lua scripts so that every change is atomic.

Every key of one crawl lives under ``crawler:{<crawl-id>}:`` -- the braces are a Redis
Cluster hash tag, so all keys of a crawl hash to one slot and the scripts (which build
per-host key names from that prefix) run on one node of a cluster as well.

========================  ======  ==========================================================
key (after the prefix)    type    what
========================  ======  ==========================================================
``meta``                  hash    ``epoch`` (server seconds the crawl's clock counts from),
                                  ``settings`` (JSON of the first worker's politeness
                                  settings), ``scopever`` (bumped when a seed widens scope),
                                  ``paused`` (``1`` while the whole crawl is paused),
                                  ``ctlseq`` (orders the pauses of ``control``)
``stats``                 hash    ``pending`` (queued + leased + delayed: 0 = crawl over),
                                  ``admitted``, ``pages``, ``errors``, ``bytes``,
                                  ``disallowed``, ``redirects``, ``retries``, ``recovered``,
                                  ``err:<kind>``, ``drop:<reason>``
``seen``                  set     canonical URLs ever admitted (dedup across workers)
``seeds``                 set     seed URLs given by any worker (the shared scope)
``hosts``                 zset    origins with queued URLs and not paused, scored by the
                                  crawl time at which the origin can next be served (rate
                                  slot, free token, Retry-After, robots.txt)
``hostset``               set     every origin of the crawl
``names``                 hash    host name -> its origins (tab-separated): what a control
                                  key by host name matches
``control``               hash    live control by host name or origin, for hosts that arrive
                                  later: ``pause:<key>`` (``ctlseq`` of the last pause, negated
                                  for a resume), ``limits:<key>`` (JSON rate/burst/per_host)
``h:<origin>``            hash    politeness of one origin: ``rate``/``burst``/``per_host``
                                  (configured), ``interval``/``burst_eff``/``tat``/``nb``
                                  (GCRA state and not-before), ``backoff``, ``robots`` state,
                                  ``paused`` (``1``: paused by its name or origin), counters
``q:<origin>``            list    the origin's queue (JSON entries)
``t:<origin>``            zset    concurrency tokens in use: lease id -> expiry
``robots:<origin>``       hash    robots.txt as fetched (``status``, ``body``)
``leases``                zset    every lease id -> expiry (recovery scans it)
``leased``                hash    lease id -> ``worker \\t origin \\t entry``
``delayed``               zset    ``origin \\t entry`` waiting out a retry delay -> due time
``seq``                   string  lease id counter
``workers``               hash    worker id -> crawl time last seen
``results``               stream  pages, when workers run with ``results="redis"``
``wake``                  channel (pub/sub, not a key) published when a host becomes ready
                                  sooner than the ``hosts`` zset said: idle workers claim
========================  ======  ==========================================================

Times inside Redis are the *server's* clock (``TIME``) counted from ``meta.epoch``, so
workers on machines with skewed clocks agree; a worker only ever sleeps for a duration the
server computed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, cast
from urllib.parse import unquote, urlsplit

import trio

from ._config import HostLimits
from ._retry import BACKOFF_CAP, BACKOFF_FLOOR
from ._shield import bounded_shield
from ._urls import host_of, normalize_url, origin_of

if TYPE_CHECKING:
    import coredis

__all__ = [
    "BadName",
    "Claim",
    "ClaimResult",
    "CrawlFinished",
    "RedisFrontier",
    "RedisUnavailable",
    "RedisUrlError",
    "SharedCrawlError",
    "SharedHostStatus",
    "SharedStatus",
    "check_crawl_id",
    "check_redis_url",
    "control_key",
    "crawl_prefix",
    "open_redis",
]

RedisClient: TypeAlias = "coredis.Redis[str] | coredis.RedisCluster[str]"

DEFAULT_LEASE = 30.0
"""Seconds a claimed request (and its host's concurrency token) stays leased without renewal."""
SETTLE_TIMEOUT = 10.0
"""A settle call (a commit point) runs shielded from cancellation for at most this long."""
RECOVER_PER_CLAIM = 64
PROMOTE_PER_CLAIM = 128
EXAMINE_PER_CLAIM = 128

_CRAWL_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
_WORKER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")


T = TypeVar("T")

logger = logging.getLogger(__name__)

RECONNECT_FOR = 60.0
"""Seconds a worker keeps retrying while Redis cannot be reached (a restart, a failover)
before it gives up with RedisUnavailable."""
RECONNECT_FIRST = 0.05
RECONNECT_MAX_DELAY = 5.0


class SharedCrawlError(Exception):
    """A shared crawl cannot be joined or used (bad id, settings that disagree, ...).

    The message is one line; `exit_status` is what the command line exits with."""

    exit_status = 2


class RedisUrlError(SharedCrawlError, ValueError):
    """A Redis URL that names no server (a usage error)."""


class BadName(SharedCrawlError, ValueError):
    """A crawl id or worker id that cannot be used in key names (a usage error)."""


class RedisUnavailable(SharedCrawlError):
    """Redis could not be reached at start, or stayed out of reach for RECONNECT_FOR."""

    exit_status = 1


class CrawlFinished(SharedCrawlError):
    """The shared crawl was over before this worker joined it: nothing to do."""

    exit_status = 0

    def __init__(self, crawl_id: str, pages: int) -> None:
        super().__init__(
            f"crawl id {crawl_id} is finished ({pages} pages); --reset it, or give"
            " another crawl id, to crawl again"
        )
        self.crawl_id = crawl_id
        self.pages = pages


_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def check_redis_url(url: str) -> str:
    """`url` if it names a Redis server, else RedisUrlError (before any connection)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedisUrlError(f"bad Redis URL {_shown(url)!r}: {exc}") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise RedisUrlError(
            f"bad Redis URL {_shown(url)!r}: expected redis://HOST[:PORT][/DB], rediss://, "
            "unix:///PATH or redis+cluster://HOST[:PORT]"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"bad Redis URL {_shown(url)!r}: no socket path")
        return url
    if not parts.hostname:
        raise RedisUrlError(f"bad Redis URL {_shown(url)!r}: no host")
    if port == 0:
        raise RedisUrlError(f"bad Redis URL {_shown(url)!r}: port 0")
    db = parts.path.strip("/")
    if db and not (db.isdigit() and "cluster" not in parts.scheme):
        raise RedisUrlError(f"bad Redis URL {_shown(url)!r}: database {db!r} is not a number")
    return url


def _shown(url: str) -> str:
    """`url` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return parts._replace(netloc=user + netloc).geturl()
    except ValueError:
        return "<unparsable URL>"


def _why(exc: BaseException) -> str:
    """A short reason for a failed connection, from the first cause that names one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text


def connection_errors() -> tuple[type[BaseException], ...]:
    from coredis.exceptions import ConnectionError as RedisConnectionError

    # BusyLoadingError (a restarted server loading its data) is a ConnectionError too.
    return (RedisConnectionError, TimeoutError)


async def retry_redis(
    call: Callable[[], Awaitable[T]],
    *,
    shielded: bool = False,
    give_up_after: float = RECONNECT_FOR,
) -> T:
    """`call()`, again with backoff while Redis cannot be reached, for up to
    `give_up_after` seconds (then RedisUnavailable).

    `shielded`: each attempt is a commit point, shielded from cancellation for at most
    SETTLE_TIMEOUT; the waits between attempts are not (a stopping worker leaves what was
    not applied to lease expiry). A script applied whose answer was lost is run again:
    the scripts check their leases, so a replay changes nothing (a replayed claim's
    leases expire unused)."""
    errors = connection_errors()
    deadline: float | None = None
    delay = RECONNECT_FIRST
    while True:
        try:
            result: list[T] = []
            if not shielded:
                result.append(await call())
            else:
                with bounded_shield(SETTLE_TIMEOUT):
                    result.append(await call())
                if not result:
                    raise RedisUnavailable(f"Redis did not answer within {SETTLE_TIMEOUT:g} s")
            if deadline is not None:
                logger.warning("Redis is back")
            return result[0]
        except errors as exc:
            now = trio.current_time()
            if deadline is None:
                deadline = now + give_up_after
                logger.warning(
                    "Redis unreachable (%s); retrying for up to %g s", _why(exc), give_up_after
                )
            if now >= deadline:
                raise RedisUnavailable(
                    f"lost Redis ({_why(exc)}) and it did not come back within {give_up_after:g} s"
                ) from None
            await trio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, RECONNECT_MAX_DELAY)


def check_crawl_id(crawl_id: str) -> str:
    if not isinstance(crawl_id, str) or not _CRAWL_ID.fullmatch(crawl_id):
        raise BadName(
            "crawl_id must be 1-200 characters of letters, digits and ._:@- "
            f"(no braces: it is the Redis Cluster hash tag), got {crawl_id!r}"
        )
    return crawl_id


def check_worker_id(worker_id: str) -> str:
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise BadName(
            f"worker_id must be 1-200 characters of letters, digits and ._:@-, got {worker_id!r}"
        )
    return worker_id


def crawl_prefix(crawl_id: str) -> str:
    """``crawler:{<crawl-id>}:`` -- every key of the crawl starts with it."""
    return f"crawler:{{{check_crawl_id(crawl_id)}}}:"


# ---------------------------------------------------------------------------------------
# Lua. One prelude of helpers, then one body per script. Numbers are written with %.17g
# so that times (seconds since the crawl's epoch) and intervals round-trip exactly.

_PRELUDE = """
-- Redis < 7 needs effects replication before a script may write after reading TIME.
if redis.replicate_commands then redis.replicate_commands() end
local P = ARGV[1]
local K_META, K_STATS, K_SEEN, K_SEEDS = P..'meta', P..'stats', P..'seen', P..'seeds'
local K_HOSTS, K_HOSTSET, K_LEASES, K_LEASED = P..'hosts', P..'hostset', P..'leases', P..'leased'
local K_DELAYED, K_WORKERS, K_RESULTS = P..'delayed', P..'workers', P..'results'
local K_CONTROL, K_NAMES = P..'control', P..'names'
local FLOOR, CAP = %(floor)r, %(cap)r
-- A slot due within a nanosecond is due now ((now + T) - T is not always now in floats).
local EPS = 1e-9

local function fmt(x) return string.format('%%.17g', x) end

local function clock()
  local t = redis.call('TIME')
  local epoch = redis.call('HGET', K_META, 'epoch')
  if not epoch then
    epoch = t[1]
    redis.call('HSET', K_META, 'epoch', epoch)
  end
  return (tonumber(t[1]) - tonumber(epoch)) + tonumber(t[2]) / 1000000
end

local function load(o)
  local raw = redis.call('HGETALL', P..'h:'..o)
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  return h
end

local function num(h, k) return tonumber(h[k]) or 0 end

local function put(o, h, k, v)
  h[k] = v
  redis.call('HSET', P..'h:'..o, k, v)
end

local function split(v)
  local a = string.find(v, '\\t', 1, true)
  local b = string.find(v, '\\t', a + 1, true)
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1)
end

-- Earliest crawl time at which the origin can be handed a request: a free concurrency
-- token (else the earliest token lease expiry), a conforming GCRA slot, the Retry-After
-- not-before, and robots.txt not being fetched by someone else.
local function ready_at(o, h, now)
  local toks = P..'t:'..o
  if redis.call('ZCARD', toks) >= num(h, 'per_host') then
    local first = redis.call('ZRANGE', toks, 0, 0, 'WITHSCORES')
    return tonumber(first[2])
  end
  local at = num(h, 'tat') - (num(h, 'burst_eff') - 1) * num(h, 'interval')
  local nb = num(h, 'nb')
  if nb > at then at = nb end
  if h.robots == 'fetching' then
    local u = num(h, 'robots_until')
    if u > at then at = u end
  elseif h.robots == 'unknown' then
    local r = num(h, 'robots_retry')
    if r > at then at = r end
  end
  return at
end

-- Set when a host became ready sooner than the hosts zset told the sleeping workers (a
-- freed token, work for an idle host): the script then wakes them with one PUBLISH.
local NOTIFY = false

local function rescore(o, h, now)
  -- A paused host is out of the zset: claim never examines it, and the claimers' wait
  -- does not count it. Its resume puts it back.
  if h.paused == '1' or redis.call('LLEN', P..'q:'..o) == 0 then
    redis.call('ZREM', K_HOSTS, o)
    return
  end
  local at = ready_at(o, h, now)
  if at <= now + EPS then
    local old = redis.call('ZSCORE', K_HOSTS, o)
    if not old or tonumber(old) > now + EPS then NOTIFY = true end
  end
  redis.call('ZADD', K_HOSTS, fmt(at), o)
end

local function notify()
  if NOTIFY then redis.call('PUBLISH', P..'wake', '1') end
end

-- The interval is the largest of the configured one, robots.txt's and the adaptive
-- backoff; a slower pace than configured gets no burst and counts from now (as
-- Host.apply_limits and LeakyBucket's rate setter do in one process).
local function apply_limits(o, h, now)
  local rate = num(h, 'rate')
  local base = 0
  if rate > 0 then base = 1 / rate end
  local interval = math.max(base, num(h, 'robots_delay'), num(h, 'backoff'))
  local burst = num(h, 'burst')
  if interval > base then burst = 1 end
  local old = num(h, 'interval')
  local tat = num(h, 'tat')
  if interval ~= old and tat > now then
    if old > 0 then tat = now + (tat - now) * interval / old else tat = now end
  end
  local nb = num(h, 'nb')
  if interval > base then
    local deadline = now + interval
    if deadline > nb then
      nb = deadline
      local t2 = deadline + (burst - 1) * interval
      if t2 > tat then tat = t2 end
    end
  end
  h.interval, h.burst_eff, h.tat, h.nb = fmt(interval), tostring(burst), fmt(tat), fmt(nb)
  redis.call('HSET', P..'h:'..o, 'interval', h.interval, 'burst_eff', h.burst_eff,
    'tat', h.tat, 'nb', h.nb)
end

-- Retry-After: nothing conforms before now + pause, and the bucket is full then.
local function pause(o, h, seconds, now)
  if not seconds or seconds <= 0 then return end
  local deadline = now + seconds
  if deadline > num(h, 'nb') then
    local tat = math.max(num(h, 'tat'), deadline + (num(h, 'burst_eff') - 1) * num(h, 'interval'))
    put(o, h, 'nb', fmt(deadline))
    put(o, h, 'tat', fmt(tat))
  end
end

-- Adaptive backoff (crawler._retry.grow_backoff / decay_backoff), once per round.
local function health(o, h, how, started, now)
  if not how then return end
  local rate = num(h, 'rate')
  local base = 0
  if rate > 0 then base = 1 / rate end
  local site = math.max(base, num(h, 'robots_delay'))
  local backoff = num(h, 'backoff')
  if how == 'slow' then
    if (started or now) >= num(h, 'backoff_at') then
      put(o, h, 'backoff', fmt(math.min(CAP, math.max(backoff * 2, site * 2, FLOOR))))
      put(o, h, 'backoff_at', fmt(now))
      apply_limits(o, h, now)
    end
  elseif how == 'ok' and backoff > 0 then
    local halved = backoff / 2
    if halved <= math.max(site, FLOOR / 2) then halved = 0 end
    put(o, h, 'backoff', fmt(halved))
    apply_limits(o, h, now)
  end
end

-- The host name of an origin (host_of in crawler._urls: no port, IPv6 without brackets).
local function name_of(o)
  local hp = string.match(o, '^[^:]*://(.*)$') or o
  if string.sub(hp, 1, 1) == '[' then
    local close = string.find(hp, ']', 1, true)
    if close then return string.sub(hp, 2, close - 1) end
    return string.sub(hp, 2)
  end
  local colon = string.find(hp, ':', 1, true)
  if colon then return string.sub(hp, 1, colon - 1) end
  return hp
end

-- The origins a control key (a host name, or an origin) names now.
local function matching(key)
  if string.find(key, '://', 1, true) then
    if redis.call('EXISTS', P..'h:'..key) == 1 then return {key} end
    return {}
  end
  local found = {}
  local v = redis.call('HGET', K_NAMES, key)
  if v then
    for o in string.gmatch(v, '[^\\t]+') do found[#found + 1] = o end
  end
  return found
end

-- A stored pause/resume of a key is its sequence number, negative for a resume: of the
-- host name's and the origin's, the later one holds for a host created afterwards.
local function paused_by(by_name, by_origin)
  local a, b = tonumber(by_name) or 0, tonumber(by_origin) or 0
  if math.abs(b) > math.abs(a) then a = b end
  return a > 0
end

local function ensure_host(spec)
  local o = spec[1]
  local key = P..'h:'..o
  if redis.call('EXISTS', key) == 1 then return end
  local rate, burst, per_host = tonumber(spec[2]), tonumber(spec[3]), tonumber(spec[4])
  -- Limits and pauses set while the crawl runs (set_host_limits, set_paused) hold for
  -- hosts that arrive later; an origin's limits beat its host name's (as limits_for).
  local name = name_of(o)
  local c = redis.call('HMGET', K_CONTROL, 'limits:'..name, 'limits:'..o, 'pause:'..name,
    'pause:'..o)
  for i = 1, 2 do
    if c[i] then
      local l = cjson.decode(c[i])
      if l.rate then rate = tonumber(l.rate) end
      if l.burst then burst = l.burst end
      if l.per_host then per_host = l.per_host end
    end
  end
  local paused = '0'
  if paused_by(c[3], c[4]) then paused = '1' end
  local interval = 0
  if rate > 0 then interval = 1 / rate end
  local robots = 'ignored'
  if spec[5] == 1 then robots = 'unknown' end
  redis.call('HSET', key, 'rate', fmt(rate), 'burst', burst, 'per_host', per_host,
    'interval', fmt(interval), 'burst_eff', burst, 'tat', '0', 'nb', '0',
    'backoff', '0', 'backoff_at', '-1', 'robots', robots, 'robots_until', '0',
    'robots_retry', '0', 'robots_expires', '0', 'robots_ver', '0', 'robots_attempts', '0',
    'robots_delay', '0', 'done', '0', 'errors', '0', 'bytes', '0', 'disallowed', '0',
    'paused', paused)
  redis.call('SADD', K_HOSTSET, o)
  -- The name -> origins index, so that a key by host name finds every origin of it.
  local origins = redis.call('HGET', K_NAMES, name)
  if origins then origins = origins..'\\t'..o else origins = o end
  redis.call('HSET', K_NAMES, name, origins)
end

-- Admit one URL ({url, entry, origin, counts}); dedup by the seen-set. The bounds are
-- those of the single-process engine: max_queued (a page's links and sitemaps, not
-- redirect hops) against pending, the crawl-wide queued + leased + delayed count.
-- `front` (a table, or nil): collect the entries per origin for the front of the queue.
local function admit(link, max_pages, cap, max_queued, touched, front)
  local url, e, o, counts = link[1], link[2], link[3], link[4]
  if counts == -1 then
    -- robots.txt (known to the sender) disallows it: mark it seen and count it once.
    if redis.call('SADD', K_SEEN, url) == 1 then
      redis.call('HINCRBY', K_STATS, 'disallowed', 1)
      if redis.call('EXISTS', P..'h:'..o) == 1 then
        redis.call('HINCRBY', P..'h:'..o, 'disallowed', 1)
      end
    end
    return 0
  end
  if redis.call('SISMEMBER', K_SEEN, url) == 1 then return 0 end
  if counts == 1 and max_queued >= 0 and
      tonumber(redis.call('HGET', K_STATS, 'pending') or '0') >= max_queued then
    redis.call('HINCRBY', K_STATS, 'drop:max_queued', 1)
    return 0
  end
  if counts == 1 and max_pages >= 0 and
      tonumber(redis.call('HGET', K_STATS, 'admitted') or '0') >= max_pages then
    redis.call('HINCRBY', K_STATS, 'drop:max_pages', 1)
    return 0
  end
  local q = P..'q:'..o
  local ahead = front and front[o]
  if redis.call('LLEN', q) + (ahead and #ahead or 0) >= cap then
    redis.call('HINCRBY', K_STATS, 'drop:max_host_queue', 1)
    return 0
  end
  redis.call('SADD', K_SEEN, url)
  if counts == 1 then redis.call('HINCRBY', K_STATS, 'admitted', 1) end
  if front then
    if not ahead then
      ahead = {}
      front[o] = ahead
    end
    ahead[#ahead + 1] = e
  else
    redis.call('RPUSH', q, e)
  end
  redis.call('HINCRBY', K_STATS, 'pending', 1)
  touched[o] = true
  return 1
end

local function admit_all(op, now)
  for _, spec in ipairs(op.hosts or {}) do ensure_host(spec) end
  local touched = {}
  local front = nil
  if op.front then front = {} end
  local added = 0
  for _, link in ipairs(op.links or {}) do
    added = added + admit(link, op.max or -1, op.cap or 1e18, op.mq or -1, touched, front)
  end
  -- In reverse, so that the batch keeps its order at the head of each queue.
  for o, entries in pairs(front or {}) do
    for i = #entries, 1, -1 do redis.call('LPUSH', P..'q:'..o, entries[i]) end
  end
  for o, _ in pairs(touched) do
    if not redis.call('ZSCORE', K_HOSTS, o) then rescore(o, load(o), now) end
  end
  return added
end

local function new_lease(o, e, expires, worker)
  local id = tostring(redis.call('INCR', P..'seq'))
  redis.call('ZADD', K_LEASES, fmt(expires), id)
  redis.call('ZADD', P..'t:'..o, fmt(expires), id)
  redis.call('HSET', K_LEASED, id, worker..'\\t'..o..'\\t'..e)
  return id
end

local function drop_lease(id, o)
  redis.call('ZREM', K_LEASES, id)
  redis.call('HDEL', K_LEASED, id)
  redis.call('ZREM', P..'t:'..o, id)
end

-- Expired leases: their URLs go back to the front of their queues, their tokens return.
local function recover(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local v = redis.call('HGET', K_LEASED, id)
    if v then
      local _, o, e = split(v)
      drop_lease(id, o)
      if e ~= '' then
        redis.call('LPUSH', P..'q:'..o, e)
        redis.call('HINCRBY', K_STATS, 'recovered', 1)
      end
      rescore(o, load(o), now)
    else
      redis.call('ZREM', K_LEASES, id)
    end
  end
end

local function promote(now, limit)
  local items = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, v in ipairs(items) do
    redis.call('ZREM', K_DELAYED, v)
    local a = string.find(v, '\\t', 1, true)
    local o = string.sub(v, 1, a - 1)
    redis.call('LPUSH', P..'q:'..o, string.sub(v, a + 1))
    if not redis.call('ZSCORE', K_HOSTS, o) then rescore(o, load(o), now) end
  end
end

local function count(h, o, op)
  if op.page == 1 then
    redis.call('HINCRBY', K_STATS, 'pages', 1)
    redis.call('HINCRBY', K_STATS, 'bytes', op.bytes or 0)
    redis.call('HINCRBY', P..'h:'..o, 'bytes', op.bytes or 0)
    if op.err then
      redis.call('HINCRBY', K_STATS, 'errors', 1)
      redis.call('HINCRBY', K_STATS, 'err:'..op.err, 1)
      redis.call('HINCRBY', P..'h:'..o, 'errors', 1)
    else
      redis.call('HINCRBY', P..'h:'..o, 'done', 1)
    end
  end
  if op.dis then
    redis.call('HINCRBY', K_STATS, 'disallowed', op.dis)
    redis.call('HINCRBY', P..'h:'..o, 'disallowed', op.dis)
  end
  for reason, n in pairs(op.drops or {}) do
    redis.call('HINCRBY', K_STATS, 'drop:'..reason, n)
  end
end
"""

# Hand out up to ARGV[2] requests of hosts that are ready now; return the wait until the
# earliest could be, the crawl's pending count, the scope version, the crawl time and
# whether the whole crawl is paused (then nothing is handed out and the wait is empty:
# the claimer sleeps its longest, and a resume wakes it).
_CLAIM = """
local n, lease, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = clock()
recover(now, %(recover)d)
promote(now, %(promote)d)
local out = {}
local claimed, examined = 0, 0
local crawl_paused = redis.call('HGET', K_META, 'paused') == '1'
if crawl_paused then n = 0 end
while claimed < n and examined < %(examine)d do
  local c = redis.call('ZRANGEBYSCORE', K_HOSTS, '-inf', fmt(now + EPS), 'LIMIT', 0, 1)
  if #c == 0 then break end
  examined = examined + 1
  local o = c[1]
  local q = P..'q:'..o
  local h = nil
  if redis.call('LLEN', q) > 0 then h = load(o) end
  if not h or h.paused == '1' then
    -- Nothing queued, or paused (rescore keeps paused hosts out already: be safe).
    redis.call('ZREM', K_HOSTS, o)
  else
    local at = ready_at(o, h, now)
    if at > now + EPS then
      redis.call('ZADD', K_HOSTS, fmt(at), o)
    else
      local tat = num(h, 'tat')
      if tat < now then tat = now end
      put(o, h, 'tat', fmt(tat + num(h, 'interval')))
      local rs = h.robots
      if rs == 'unknown' or rs == 'fetching' or
          (rs == 'done' and num(h, 'robots_expires') <= now) then
        local expires = now + lease
        local id = new_lease(o, '', expires, worker)
        put(o, h, 'robots', 'fetching')
        put(o, h, 'robots_until', fmt(expires))
        for _, v in ipairs({'r', id, o, '', h.robots_attempts or '0'}) do out[#out + 1] = v end
      else
        local e = redis.call('LPOP', q)
        local id = new_lease(o, e, now + lease, worker)
        for _, v in ipairs({'u', id, o, e, h.robots_ver or '0'}) do out[#out + 1] = v end
      end
      claimed = claimed + 1
      rescore(o, h, now)
    end
  end
end
local wait = nil
if not crawl_paused then
  for _, key in ipairs({K_HOSTS, K_DELAYED, K_LEASES}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local w = tonumber(first[2]) - now
      if wait == nil or w < wait then wait = w end
    end
  end
end
local head = {
  wait and fmt(math.max(wait, 0)) or '',
  redis.call('HGET', K_STATS, 'pending') or '0',
  redis.call('HGET', K_META, 'scopever') or '0',
  fmt(now),
  crawl_paused and '1' or '0',
}
for _, v in ipairs(out) do head[#head + 1] = v end
notify()
return head
"""

# Apply a batch of outcomes (JSON list of ops); return one code per op.
_SETTLE = """
local ops = cjson.decode(ARGV[2])
local worker = ARGV[3]
local now = clock()
local codes = {}
for i, op in ipairs(ops) do
  local o, k = op.o, op.k
  local code = 0
  local held = op.l and redis.call('HEXISTS', K_LEASED, op.l) == 1
  if k == 'done' then
    if not held and op.e and op.e ~= '' and redis.call('LREM', P..'q:'..o, 1, op.e) == 1 then
      held = true  -- the expired lease was requeued but not claimed again: still ours
    elseif held then
      drop_lease(op.l, o)
    end
    if held then
      local h = load(o)
      pause(o, h, op.pause, now)
      health(o, h, op.health, op.started, now)
      count(h, o, op)
      admit_all(op, now)
      if op.res then redis.call('XADD', K_RESULTS, '*', 'page', op.res, 'worker', worker) end
      redis.call('HINCRBY', K_STATS, 'pending', -1)
      rescore(o, h, now)
      code = 1
    end
  elseif k == 'hop' then
    if held then
      local h = load(o)
      pause(o, h, op.pause, now)
      health(o, h, op.health, op.started, now)
      if admit_all(op, now) == 1 then
        drop_lease(op.l, o)
        redis.call('HINCRBY', K_STATS, 'redirects', 1)
        redis.call('HINCRBY', K_STATS, 'pending', -1)
        count(h, o, op)
        rescore(o, h, now)
        code = 1
      else
        code = 2
      end
    end
  elseif k == 'retry' then
    if held then
      drop_lease(op.l, o)
      local h = load(o)
      pause(o, h, op.pause, now)
      health(o, h, op.health, op.started, now)
      if op.delay then
        redis.call('ZADD', K_DELAYED, fmt(now + op.delay), o..'\\t'..op.ne)
      else
        redis.call('LPUSH', P..'q:'..o, op.ne)
      end
      redis.call('HINCRBY', K_STATS, 'retries', 1)
      rescore(o, h, now)
      code = 1
    end
  elseif k == 'robots' then
    if held then drop_lease(op.l, o) end
    local h = load(o)
    if op.retry then
      put(o, h, 'robots', 'unknown')
      put(o, h, 'robots_retry', fmt(now + op.retry))
      put(o, h, 'robots_attempts', tostring(num(h, 'robots_attempts') + 1))
    else
      redis.call('HSET', P..'robots:'..o, 'status', op.status, 'body', op.body,
        'error', op.error or '')
      put(o, h, 'robots', 'done')
      put(o, h, 'robots_expires', fmt(now + op.ttl))
      put(o, h, 'robots_attempts', '0')
      put(o, h, 'robots_delay', fmt(op.interval))
      put(o, h, 'robots_ver', tostring(num(h, 'robots_ver') + 1))
      apply_limits(o, h, now)
      admit_all(op, now)
    end
    rescore(o, h, now)
    if held then code = 1 end
  elseif k == 'free' then
    -- The fetch is over but the page not yet written down (its lease stays until
    -- then): the host's token goes back now, with the response's politeness and the
    -- page's links (admitting them twice, should the page be fetched again, is harmless).
    if held then
      redis.call('ZREM', P..'t:'..o, op.l)
      local h = load(o)
      pause(o, h, op.pause, now)
      health(o, h, op.health, op.started, now)
      count(h, o, {drops = op.drops})
      admit_all(op, now)
      rescore(o, h, now)
      code = 1
    end
  elseif k == 'release' then
    if held then
      local _, lo, e = split(redis.call('HGET', K_LEASED, op.l))
      drop_lease(op.l, lo)
      local h = load(lo)
      if e ~= '' then
        redis.call('LPUSH', P..'q:'..lo, e)
      elseif h.robots == 'fetching' then
        put(lo, h, 'robots', 'unknown')
      end
      rescore(lo, h, now)
      code = 1
    end
  end
  codes[i] = tostring(code)
end
notify()
return codes
"""

# Extend leases (JSON list of ids); return the ids that were lost. Also a heartbeat.
_RENEW = """
local ids = cjson.decode(ARGV[2])
local lease, worker = tonumber(ARGV[3]), ARGV[4]
local now = clock()
local expires = fmt(now + lease)
local lost = {}
-- A lease that expired is void, whoever notices first: recovered here as by a claim
-- (renewing it would depend on whether a claim happened to run first).
recover(now, %(recover)d)
for _, id in ipairs(ids) do
  local v = redis.call('HGET', K_LEASED, id)
  if v then
    local _, o, e = split(v)
    redis.call('ZADD', K_LEASES, 'XX', expires, id)
    redis.call('ZADD', P..'t:'..o, 'XX', expires, id)
    if e == '' and redis.call('HGET', P..'h:'..o, 'robots') == 'fetching' then
      redis.call('HSET', P..'h:'..o, 'robots_until', expires)
    end
  else
    lost[#lost + 1] = id
  end
end
redis.call('HSET', K_WORKERS, worker, fmt(now))
return lost
"""

# Join (or create) the crawl: the first worker's settings win; seeds widen the scope.
_JOIN = """
local spec = cjson.decode(ARGV[2])
local worker = ARGV[3]
local now = clock()
redis.call('HSETNX', K_META, 'settings', spec.settings)
for _, url in ipairs(spec.scope) do
  if redis.call('SADD', K_SEEDS, url) == 1 then redis.call('HINCRBY', K_META, 'scopever', 1) end
end
local added = admit_all(spec, now)
redis.call('HSET', K_WORKERS, worker, fmt(now))
notify()
return {redis.call('HGET', K_META, 'settings'), redis.call('HGET', K_META, 'scopever') or '0',
  tostring(added), redis.call('HGET', K_STATS, 'pending') or '0'}
"""

_STATUS = """
local limit = tonumber(ARGV[2])
local now = clock()
local hosts = {}
for i, o in ipairs(redis.call('SORT', K_HOSTSET, 'ALPHA', 'LIMIT', 0, limit)) do
  local f = redis.call('HMGET', P..'h:'..o, 'done', 'errors', 'bytes', 'disallowed',
    'interval', 'backoff', 'nb', 'robots', 'per_host', 'paused')
  hosts[i] = {o, tostring(redis.call('LLEN', P..'q:'..o)),
    tostring(redis.call('ZCARD', P..'t:'..o)), f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9],
    f[10] or '0'}
end
return {fmt(now), redis.call('HGETALL', K_STATS), tostring(redis.call('SCARD', K_SEEN)),
  tostring(redis.call('ZCARD', K_LEASES)), tostring(redis.call('ZCARD', K_DELAYED)),
  redis.call('HGETALL', K_WORKERS), tostring(redis.call('SCARD', K_HOSTSET)), hosts,
  redis.call('HGET', K_META, 'settings') or '', redis.call('HGET', K_META, 'paused') or '0'}
"""

# Pause (ARGV[3] = '1') or resume the crawl (ARGV[2] = '') or a host name or origin. A
# key's pause is stored as well, for hosts that arrive later (ensure_host). Leased requests
# finish; a resume rescores the hosts and wakes the sleeping workers.
_PAUSE = """
local key, paused = ARGV[2], ARGV[3] == '1'
local now = clock()
if key == '' then
  if paused then
    redis.call('HSET', K_META, 'paused', '1')
  else
    redis.call('HDEL', K_META, 'paused')
  end
else
  local seq = redis.call('HINCRBY', K_META, 'ctlseq', 1)
  if not paused then seq = -seq end
  redis.call('HSET', K_CONTROL, 'pause:'..key, tostring(seq))
  for _, o in ipairs(matching(key)) do
    local h = load(o)
    if paused then put(o, h, 'paused', '1') else put(o, h, 'paused', '0') end
    rescore(o, h, now)
  end
end
if not paused then NOTIFY = true end
notify()
return 1
"""

# New limits (JSON {rate (a string, exact), burst, per_host}, absent = keep) for a host
# name or origin: stored for hosts that arrive later, applied now to the existing ones.
_LIMITS = """
local key, new = ARGV[2], cjson.decode(ARGV[3])
local now = clock()
local stored = redis.call('HGET', K_CONTROL, 'limits:'..key)
local merged = {}
if stored then merged = cjson.decode(stored) end
for _, f in ipairs({'rate', 'burst', 'per_host'}) do
  if new[f] ~= nil then merged[f] = new[f] end
end
redis.call('HSET', K_CONTROL, 'limits:'..key, cjson.encode(merged))
for _, o in ipairs(matching(key)) do
  local h = load(o)
  if new.rate ~= nil then put(o, h, 'rate', fmt(tonumber(new.rate))) end
  if new.burst ~= nil then put(o, h, 'burst', tostring(new.burst)) end
  if new.per_host ~= nil then put(o, h, 'per_host', tostring(new.per_host)) end
  apply_limits(o, h, now)
  rescore(o, h, now)
end
notify()
return 1
"""

# Add URLs (the shapes of join) while the crawl runs; seeds widen the scope; `front` puts
# them at the head of their hosts' queues. Returns how many were new and the scope version.
_ADD = """
local spec = cjson.decode(ARGV[2])
local now = clock()
for _, url in ipairs(spec.scope) do
  if redis.call('SADD', K_SEEDS, url) == 1 then redis.call('HINCRBY', K_META, 'scopever', 1) end
end
local added = admit_all(spec, now)
notify()
return {tostring(added), redis.call('HGET', K_META, 'scopever') or '0'}
"""


def _script(body: str, **params: int) -> str:
    prelude = _PRELUDE % {"floor": float(BACKOFF_FLOOR), "cap": float(BACKOFF_CAP)}
    return prelude + (body % params if params else body)


CLAIM_LUA = _script(
    _CLAIM, recover=RECOVER_PER_CLAIM, promote=PROMOTE_PER_CLAIM, examine=EXAMINE_PER_CLAIM
)
SETTLE_LUA = _script(_SETTLE)
RENEW_LUA = _script(_RENEW, recover=RECOVER_PER_CLAIM)
JOIN_LUA = _script(_JOIN)
STATUS_LUA = _script(_STATUS)
PAUSE_LUA = _script(_PAUSE)
LIMITS_LUA = _script(_LIMITS)
ADD_LUA = _script(_ADD)


# ---------------------------------------------------------------------------------------
# Python side


@dataclass(frozen=True, slots=True)
class Claim:
    """One request handed to this worker: a URL (``kind="url"``) or the host's robots.txt
    (``kind="robots"``). ``entry`` is the queued JSON exactly as stored."""

    kind: Literal["url", "robots"]
    lease: str
    origin: str
    entry: str
    version: int
    """robots.txt version of the host (url), or robots.txt attempts so far (robots)."""
    claimed_at: float
    """Crawl time (server clock since the crawl's epoch) of the claim."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claims: tuple[Claim, ...]
    wait: float | None
    """Seconds until the earliest host, delayed retry or lease expiry is due (None: nothing
    scheduled at all, or the whole crawl is paused). Paused hosts are not counted."""
    pending: int
    """URLs queued, leased or delayed crawl-wide: 0 means the crawl is over."""
    scope_version: int
    now: float
    paused: bool = False
    """The whole crawl is paused (`RedisFrontier.set_paused`): nothing was handed out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedHostStatus:
    origin: str
    queued: int
    leased: int
    done: int
    errors: int
    bytes: int
    disallowed: int
    rate: float
    """Effective requests per second now (0.0 = unlimited)."""
    backoff: float
    paused_for: float
    """Seconds until the host may be sent a request again after a Retry-After (0 = not paused)."""
    robots: str
    per_host: int
    """Requests to the host in flight at once, at most (its concurrency tokens)."""
    paused: bool = False
    """Paused by its host name or origin, or with the whole crawl (`set_paused`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStatus:
    """Crawl-wide progress of a shared crawl, read from Redis."""

    crawl_id: str
    pending: int
    queued: int
    leased: int
    delayed: int
    pages: int
    errors: int
    bytes: int
    seen: int
    admitted: int
    disallowed: int
    redirects: int
    retries: int
    recovered: int
    """Leases that expired (a worker died or stalled) and were put back in the frontier."""
    errors_by_kind: Mapping[str, int]
    dropped: Mapping[str, int]
    workers: Mapping[str, float]
    """Worker id -> seconds since it was last heard from."""
    host_count: int
    hosts: Mapping[str, SharedHostStatus] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    paused: bool = False
    """The whole crawl is paused: no worker is handed a new request."""

    @property
    def finished(self) -> bool:
        return self.pending == 0 and self.admitted > 0


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[RedisClient]:
    """A connected coredis client for ``url``, closed on exit.

    ``redis://``, ``rediss://`` and ``unix://`` URLs name one server;
    ``redis+cluster://host:port`` (or ``rediss+cluster://``) names a Redis Cluster through
    one of its nodes. A malformed URL raises RedisUrlError, a server that does not
    answer PING RedisUnavailable, both before anything else happens.
    """
    check_redis_url(url)
    try:
        import coredis
    except ImportError:
        raise SharedCrawlError(
            "shared crawls need the coredis package: pip install 'crawler[redis]'"
        ) from None
    client: RedisClient
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        # Built from its parts: coredis's own RedisCluster.from_url warns (DeprecationWarning).
        parts = urlsplit(url)
        client = coredis.RedisCluster(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme.startswith("rediss"),
            decode_responses=True,
        )
    else:
        client = coredis.Redis.from_url(url, decode_responses=True)
    raised: BaseException | None = None
    entered = False
    failures: tuple[type[BaseException], ...] = (*connection_errors(), OSError)
    # At start anything but an answer is a failure (a wrong password, a non-Redis port).
    refused: tuple[type[BaseException], ...] = (*failures, coredis.exceptions.RedisError)
    try:
        async with client:
            try:
                try:
                    await client.ping()
                except refused as exc:
                    raise RedisUnavailable(
                        f"cannot reach Redis at {_shown(url)}: {_why(exc)}"
                    ) from None
                entered = True
                yield client
            except BaseException as exc:  # re-raised below: the client's task group would wrap it
                raised = exc
    except failures as exc:
        if entered:
            raise
        raise RedisUnavailable(f"cannot reach Redis at {_shown(url)}: {_why(exc)}") from None
    if raised is not None:
        raise raised


@dataclass(slots=True, eq=False)
class _Settling:
    op: dict[str, Any]
    code: int | None = None


def _admission_spec(
    scope: Sequence[str],
    links: Sequence[Sequence[object]],
    hosts: Sequence[Sequence[object]],
    max_pages: int | None,
    max_host_queue: int,
    max_queued: int | None,
) -> dict[str, Any]:
    """What the join and add scripts both take: URLs, their hosts, and the bounds."""
    return {
        "scope": list(scope),
        "links": [list(link) for link in links],
        "hosts": [list(host) for host in hosts],
        "max": -1 if max_pages is None else max_pages,
        "cap": max_host_queue,
        "mq": -1 if max_queued is None else max_queued,
    }


class RedisFrontier:
    """One crawl's shared state in Redis, seen from one worker.

    Every method is one round trip running one Lua script (so one atomic step); ``settle``
    batches the outcomes that several tasks hand in at once into one call.
    """

    def __init__(
        self,
        client: RedisClient,
        crawl_id: str,
        *,
        worker_id: str,
        lease: float = DEFAULT_LEASE,
        reconnect_for: float = RECONNECT_FOR,
    ) -> None:
        """`reconnect_for`: seconds to keep retrying while Redis cannot be reached."""
        if not (isinstance(lease, int | float) and math.isfinite(lease) and lease > 0):
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.client = client
        self.crawl_id = check_crawl_id(crawl_id)
        self.worker_id = check_worker_id(worker_id)
        self.prefix = crawl_prefix(crawl_id)
        self.lease = float(lease)
        self.reconnect_for = reconnect_for
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._join = client.register_script(JOIN_LUA)
        self._status = client.register_script(STATUS_LUA)
        self._pause = client.register_script(PAUSE_LUA)
        self._limits = client.register_script(LIMITS_LUA)
        self._add = client.register_script(ADD_LUA)
        self._keys = [self.key("meta")]
        self._settling: list[_Settling] = []
        self._settle_lock = trio.Lock()

    def key(self, name: str) -> str:
        return self.prefix + name

    async def _call(self, script: Any, *args: str | int | float, shielded: bool = False) -> Any:
        """Run one script; while Redis is out of reach, again with backoff (`retry_redis`)."""
        arguments = [self.prefix, *args]
        return await retry_redis(
            lambda: script(self._keys, arguments),
            shielded=shielded,
            give_up_after=self.reconnect_for,
        )

    async def join(
        self,
        settings: Mapping[str, Any],
        *,
        scope: Sequence[str],
        links: Sequence[Sequence[object]],
        hosts: Sequence[Sequence[object]],
        max_pages: int | None,
        max_host_queue: int,
        max_queued: int | None = None,
    ) -> tuple[dict[str, Any], int, int, int]:
        """Register the settings (the first worker's win), the seeds' scope and the seeds.

        Returns (the crawl's settings, scope version, seeds newly queued, pending)."""
        spec = {
            "settings": json.dumps(settings, sort_keys=True),
            **_admission_spec(scope, links, hosts, max_pages, max_host_queue, max_queued),
        }
        raw = cast(list[str], await self._call(self._join, _dumps(spec), self.worker_id))
        return json.loads(raw[0]), int(raw[1]), int(raw[2]), int(raw[3])

    async def add(
        self,
        links: Sequence[Sequence[object]],
        hosts: Sequence[Sequence[object]],
        *,
        scope: Sequence[str] = (),
        front: bool = False,
        max_pages: int | None,
        max_host_queue: int,
        max_queued: int | None = None,
    ) -> int:
        """Admit URLs while the crawl runs, under the bounds and dedup of `join` / `settle`.

        `links` are ``[url, entry, origin, counts]``, `hosts` the specs of origins that may
        be new (``[origin, rate, burst, per_host, obey_robots]``), as `join` takes them.
        `scope`: seed URLs that widen the shared scope (the scope version goes up, so every
        worker reloads it). `front`: the new URLs go to the head of their hosts' queues, in
        the order given. Returns how many URLs were new (queued). Adding to a crawl that
        is over (see `finished_pages`) queues the URLs, for workers still running."""
        spec = {
            **_admission_spec(scope, links, hosts, max_pages, max_host_queue, max_queued),
            "front": bool(front),
        }
        raw = cast(list[str], await self._call(self._add, _dumps(spec)))
        return int(raw[0])

    async def set_paused(self, key: str | None, paused: bool) -> None:
        """Pause (or resume) the whole crawl (`key` None) or one host name or origin.

        A host name (``example.com``) names every origin of that host, any scheme or port;
        an origin (``https://example.com:8443``) one origin (as `Frontier.matching`). The
        key is stored, so a host that arrives later is paused too; for such a host the
        later of its host name's and its origin's pause/resume holds. While paused, claims
        hand out nothing of it (of anything: the crawl), and leased requests finish;
        settle, renew and status work as ever. A resume wakes the sleeping workers.
        Pausing the crawl and pausing hosts are independent (as in one process)."""
        if not isinstance(paused, bool):
            raise TypeError(f"paused must be a bool, got {paused!r}")
        name = "" if key is None else control_key(key)
        await self._call(self._pause, name, "1" if paused else "0")

    async def set_host_limits(
        self,
        key: str,
        rate: float | None = None,
        burst: int | None = None,
        per_host: int | None = None,
    ) -> None:
        """New politeness limits for a host name or origin (matched as in `set_paused`);
        None keeps a value. They apply at once to the matching hosts (a slower rate
        spaces the next request by the new interval; a lower `per_host` holds new
        requests until enough leased ones finish) and to hosts that arrive later, where an
        origin's limits beat its host name's. `rate` 0 means unlimited. Bad values raise
        ValueError (as HostLimits)."""
        limits = HostLimits(rate=rate, burst=burst, per_host=per_host)  # validates
        name = control_key(key)
        spec: dict[str, object] = {}
        if limits.rate is not None:
            spec["rate"] = repr(float(limits.rate))  # a string: cjson would round the float
        if limits.burst is not None:
            spec["burst"] = limits.burst
        if limits.per_host is not None:
            spec["per_host"] = limits.per_host
        if spec:
            await self._call(self._limits, name, _dumps(spec))

    async def finished_pages(self) -> int | None:
        """The crawl's pages if it is over (nothing pending, something admitted: see
        `SharedStatus.finished`), else None."""
        key = self.key("stats")
        pending, admitted, pages = await self._retry(
            lambda: self.client.hmget(key, ["pending", "admitted", "pages"])
        )
        if int(pending or 0) == 0 and int(admitted or 0) > 0:
            return int(pages or 0)
        return None

    async def seeds(self) -> list[str]:
        """Every seed URL given by any worker (the shared scope)."""
        key = self.key("seeds")
        return sorted(await self._retry(lambda: self.client.smembers(key)))

    async def claim(self, n: int) -> ClaimResult:
        """Take up to `n` requests from hosts that may be sent one now.

        Shielded from cancellation (for at most SETTLE_TIMEOUT), like `settle`: a claim
        whose answer were lost would leave its leases to expire unused."""
        raw = cast(
            list[str],
            await self._call(self._claim, n, repr(self.lease), self.worker_id, shielded=True),
        )
        wait = float(raw[0]) if raw[0] else None
        claims = tuple(
            Claim(
                kind="url" if raw[i] == "u" else "robots",
                lease=raw[i + 1],
                origin=raw[i + 2],
                entry=raw[i + 3],
                version=int(raw[i + 4]),
                claimed_at=float(raw[3]),
            )
            for i in range(5, len(raw), 5)
        )
        return ClaimResult(
            claims=claims,
            wait=wait,
            pending=int(raw[1]),
            scope_version=int(raw[2]),
            now=float(raw[3]),
            paused=raw[4] == "1",
        )

    async def settle(self, op: dict[str, Any]) -> int:
        """Apply one outcome (``done``, ``hop``, ``retry``, ``robots``, ``release``).

        Returns 1 when applied, 0 when the lease was lost to another worker (the outcome
        was not applied), 2 for a ``hop`` whose target was already seen (lease kept).
        Outcomes handed in while a call is under way go together in the next call. The call
        is a commit point: it is shielded from cancellation (for at most SETTLE_TIMEOUT).
        """
        return (await self.settle_many([op]))[0]

    async def settle_many(self, ops: Sequence[dict[str, Any]]) -> list[int]:
        """`settle` for several outcomes, applied in order in one atomic step."""
        mine = [_Settling(op) for op in ops]
        self._settling.extend(mine)
        try:
            # Waiting here is not a commit point: a task cancelled meanwhile leaves its
            # outcome to the worker's shutdown (or to lease expiry).
            async with self._settle_lock:
                if any(s.code is None for s in mine) and self._settling:
                    batch, self._settling = self._settling, []
                    payload = _dumps([s.op for s in batch])
                    try:
                        codes = cast(
                            list[str],
                            await self._call(self._settle, payload, self.worker_id, shielded=True),
                        )
                    except BaseException:
                        # Not applied: the other tasks' outcomes go in the next call.
                        self._settling[:0] = [s for s in batch if s not in mine]
                        raise
                    for each, code in zip(batch, codes, strict=True):
                        each.code = int(code)
        except BaseException:
            self._settling = [s for s in self._settling if s not in mine]
            raise
        codes_out: list[int] = []
        for each in mine:
            if each.code is None:
                # Taken into a call of another task that failed: that task raised too.
                raise RedisUnavailable("Redis did not take this worker's outcomes")
            codes_out.append(each.code)
        return codes_out

    async def renew(self, leases: Sequence[str]) -> list[str]:
        """Extend these leases by the lease time; return the ones that were lost."""
        raw = await self._call(self._renew, _dumps(list(leases)), repr(self.lease), self.worker_id)
        return list(cast(list[str], raw))

    async def robots(self, origin: str) -> tuple[int | None, bytes, str] | None:
        """robots.txt of `origin` as stored by whoever fetched it: (HTTP status or None for a
        failed fetch, body, the failure's ErrorKind when it is worth keeping (`blocked`) or
        ""), or None when nobody has stored it yet."""
        key = self.key(f"robots:{origin}")
        status, body, error = await self._retry(
            lambda: self.client.hmget(key, ["status", "body", "error"])
        )
        if status is None:
            return None
        return (int(status) if status else None), (body or "").encode("utf-8"), error or ""

    async def status(self, *, host_limit: int = 1000) -> SharedStatus:
        """Crawl-wide progress, with at most `host_limit` hosts (alphabetical)."""
        raw = cast(list[Any], await self._call(self._status, host_limit))
        now = float(raw[0])
        stats = _pairs(raw[1])
        workers = _pairs(raw[5])
        crawl_paused = raw[9] == "1"
        hosts: dict[str, SharedHostStatus] = {}
        queued = 0
        for row in raw[7]:
            origin, q, leased, done, errors, size, dis = row[:7]
            interval, backoff, nb, robots, per, host_paused = row[7:]
            interval_f = float(interval or 0)
            host = SharedHostStatus(
                origin=origin,
                queued=int(q),
                leased=int(leased),
                done=int(done or 0),
                errors=int(errors or 0),
                bytes=int(size or 0),
                disallowed=int(dis or 0),
                rate=1.0 / interval_f if interval_f > 0 else 0.0,
                backoff=float(backoff or 0),
                paused_for=max(0.0, float(nb or 0) - now),
                robots=str(robots or ""),
                per_host=int(per or 0),
                paused=crawl_paused or host_paused == "1",
            )
            hosts[origin] = host
            queued += host.queued
        count = int(raw[6])
        if count > len(hosts):
            queued = sum(
                [await self.client.llen(self.key(f"q:{o}")) for o in await self._origins()]
            )
        return SharedStatus(
            crawl_id=self.crawl_id,
            pending=int(stats.get("pending", 0)),
            queued=queued,
            leased=int(raw[3]),
            delayed=int(raw[4]),
            pages=int(stats.get("pages", 0)),
            errors=int(stats.get("errors", 0)),
            bytes=int(stats.get("bytes", 0)),
            seen=int(raw[2]),
            admitted=int(stats.get("admitted", 0)),
            disallowed=int(stats.get("disallowed", 0)),
            redirects=int(stats.get("redirects", 0)),
            retries=int(stats.get("retries", 0)),
            recovered=int(stats.get("recovered", 0)),
            errors_by_kind={
                k.removeprefix("err:"): int(v) for k, v in stats.items() if k.startswith("err:")
            },
            dropped={
                k.removeprefix("drop:"): int(v) for k, v in stats.items() if k.startswith("drop:")
            },
            workers={w: max(0.0, now - float(t)) for w, t in workers.items()},
            host_count=count,
            hosts=hosts,
            settings=json.loads(raw[8]) if raw[8] else {},
            paused=crawl_paused,
        )

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retry_redis(call, give_up_after=self.reconnect_for)

    async def _origins(self) -> list[str]:
        return sorted(await self.client.smembers(self.key("hostset")))

    async def delete(self) -> int:
        """Delete every key of this crawl; return how many there were."""
        keys = [key async for key in self.client.scan_iter(match=_glob_escape(self.prefix) + "*")]
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += await self.client.delete(keys[start : start + 500])
        return deleted


def control_key(key: str) -> str:
    """A host name or origin for `set_paused` / `set_host_limits`, in the canonical form the
    frontier stores (lower case, IDNA, no default port, IPv6 without brackets in a name).
    A URL stands for its origin. ValueError for anything else."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"a host key must be a host name or an origin, got {key!r}")
    text = key.strip()
    if "://" in text:
        canonical = normalize_url(text)
        origin = origin_of(canonical) if canonical is not None else ""
        if not origin:
            raise ValueError(f"{key!r} is not an http(s) origin such as https://example.com")
        return origin
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    bad = any(c in text for c in "/?#@[] \t")
    canonical = (
        None if bad else normalize_url(f"http://[{text}]/" if ":" in text else f"http://{text}/")
    )
    if canonical is None:
        raise ValueError(
            f"{key!r} is not a host name (give an origin such as https://example.com:8443"
            " for one port)"
        )
    return host_of(canonical)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
