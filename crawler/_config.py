"""Crawl configuration: small, frozen, validated objects (no dict of strings).

Also where a configuration comes from: a TOML file merged with overrides (the ``crawl``
command's flags), and the table of settings that have a flag, with their help.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ._version import __version__

if TYPE_CHECKING:
    from ._page import Page

Scope = Literal["host", "domain", "any"]
SCOPES: tuple[str, ...] = ("host", "domain", "any")

DEFAULT_USER_AGENT = (
    f"crawler/{__version__} (+https://pypi.org/project/crawler/; polite trio crawler)"
)
MiB = 1024 * 1024


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if math.isnan(value) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostLimits:
    """Per-host overrides of the crawl-wide politeness limits (None = inherit)."""

    rate: float | None = None
    burst: int | None = None
    per_host: int | None = None

    def __post_init__(self) -> None:
        if self.rate is not None:
            _check_number("rate", self.rate, minimum=0)
            if math.isinf(self.rate):
                raise ValueError("rate must be finite (use 0 for unlimited)")
        if self.burst is not None:
            _check_number("burst", self.burst, minimum=1, integer=True)
        if self.per_host is not None:
            _check_number("per_host", self.per_host, minimum=1, integer=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlConfig:
    """Everything a crawl needs to know. Frozen; bad values raise ValueError naming the field."""

    seeds: tuple[str, ...]
    max_pages: int | None = None
    max_depth: int | None = None
    concurrency: int = 32
    per_host: int = 2
    rate: float = 1.0
    """Requests per second per host; 0 means unlimited."""
    burst: int = 1
    scope: Scope = "host"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hosts: Mapping[str, HostLimits] = field(default_factory=dict)
    """Per-host overrides, keyed by host name (``example.com``) or origin (``https://example.com:8443``)."""
    user_agent: str = DEFAULT_USER_AGENT
    obey_robots: bool = True
    sitemaps: bool = False
    retries: int = 2
    max_bytes: int = 10 * MiB
    timeout: float = 30.0
    """Total deadline for one request: connect, send and read included."""
    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    """Longest silence between two reads of one response."""
    max_redirects: int = 10
    max_retry_after: float = 600.0
    max_url_length: int = 2083
    max_links_per_page: int = 10_000
    max_path_depth: int = 32
    """Links with more path segments than this are dropped (link traps)."""
    max_path_repeats: int = 3
    """Links repeating one path segment more than this many times are dropped (traps)."""
    max_host_queue: int = 100_000
    """URLs queued per host beyond this are dropped and counted."""
    max_queued: int = 1_000_000
    """URLs queued in memory in all, beyond this dropped and counted (spilled with state)."""
    max_time: float | None = None
    """Stop gracefully after this many seconds (None = no limit)."""
    max_header_bytes: int = 64 * 1024
    max_headers: int = 200
    ca_bundle: Path | None = None
    """CA certificates to verify TLS with: a PEM file, or a directory of them (c_rehash
    layout), used instead of certifi's bundle and of SSL_CERT_FILE / SSL_CERT_DIR."""
    verify_tls: bool = True
    """False: do not verify TLS certificates at all (like curl -k)."""
    block_private: bool = False
    """Refuse to connect to loopback, private, link-local and other non-public addresses
    (checked after DNS resolution), except the seeds' own hosts."""
    result_buffer: int = 8
    """Pages buffered for the consumer. A slow consumer stalls the crawl once this many
    pages (plus one per worker) wait for it; 0 hands each page over directly (the
    tightest backpressure, but then a worker waits for the consumer's every turn, which
    costs a fast crawl ~10% more CPU per page). More than 8 gains a few percent more
    and holds that many more pages in memory (a sitemap page carries 50,000 links)."""
    parse_processes: int = 0
    """Child processes that parse HTML pages while this one fetches (see `_parsepool`):
    on a machine with a core to spare, 1 makes a fast crawl ~1.25x faster. 0 parses in
    the crawl's own process, which an embedding program may prefer (no processes)."""
    keep_exchanges: bool = False
    """Keep raw request/response bytes on each Page (needed for WARC output)."""
    state: Path | None = None
    stay_open: bool = False
    """Keep running when the frontier empties, for crawls fed with Crawl.add(); end with
    Crawl.stop(). Seeds may then be empty."""
    # Hooks: plain callables. One that raises stops the crawl with its exception.
    should_follow: Callable[[str, Page], bool] | None = None
    """Called for each in-scope link with the page it was found on: False skips it."""
    prepare: Callable[[httpx.Request], httpx.Request] | None = None
    """Called with each request before it is sent (add headers, cookies); returns it."""
    on_page: Callable[[Page], Awaitable[None] | None] | None = None
    """Called with each page by crawler.crawl(), for callers who prefer callbacks."""

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, str):
            seeds = (seeds,)
        object.__setattr__(self, "seeds", tuple(seeds))
        for name in ("include", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.seeds and not self.stay_open:
            raise ValueError("seeds must name at least one URL")
        for seed in self.seeds:
            if not isinstance(seed, str):
                raise ValueError(f"seeds must be strings, got {seed!r}")
            parsed = httpx.URL(seed) if _parses(seed) else None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"seeds: {seed!r} is not an absolute http(s) URL")
        for name in ("max_pages", "max_depth"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, minimum=0, integer=True)
        _check_number("concurrency", self.concurrency, minimum=1, integer=True)
        _check_number("per_host", self.per_host, minimum=1, integer=True)
        _check_number("rate", self.rate, minimum=0)
        if math.isinf(self.rate):
            raise ValueError("rate must be finite (use 0 for unlimited)")
        _check_number("burst", self.burst, minimum=1, integer=True)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        for name in ("include", "exclude"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise ValueError(
                        f"{name}: invalid regular expression {pattern!r}: {exc}"
                    ) from None
        hosts = dict(self.hosts)
        for key, limits in hosts.items():
            if not isinstance(limits, HostLimits):
                raise ValueError(f"hosts[{key!r}] must be a HostLimits, got {limits!r}")
        object.__setattr__(self, "hosts", MappingProxyType(hosts))
        if not isinstance(self.user_agent, str) or not self.user_agent.strip():
            raise ValueError("user_agent must be a non-empty string")
        _check_number("retries", self.retries, minimum=0, integer=True)
        _check_number("max_bytes", self.max_bytes, minimum=1, integer=True)
        for name in ("timeout", "connect_timeout", "read_timeout", "max_retry_after"):
            value = getattr(self, name)
            _check_number(name, value, minimum=0)
            if value == 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        _check_number("max_redirects", self.max_redirects, minimum=0, integer=True)
        _check_number("max_url_length", self.max_url_length, minimum=16, integer=True)
        _check_number("max_links_per_page", self.max_links_per_page, minimum=0, integer=True)
        _check_number("max_path_depth", self.max_path_depth, minimum=1, integer=True)
        _check_number("max_path_repeats", self.max_path_repeats, minimum=1, integer=True)
        _check_number("max_host_queue", self.max_host_queue, minimum=1, integer=True)
        _check_number("max_queued", self.max_queued, minimum=1, integer=True)
        _check_number("max_header_bytes", self.max_header_bytes, minimum=1024, integer=True)
        _check_number("max_headers", self.max_headers, minimum=1, integer=True)
        if self.max_time is not None:
            _check_number("max_time", self.max_time, minimum=0)
        _check_number("result_buffer", self.result_buffer, minimum=0, integer=True)
        _check_number("parse_processes", self.parse_processes, minimum=0, integer=True)
        if self.state is not None:
            object.__setattr__(self, "state", Path(self.state))
        if not isinstance(self.verify_tls, bool):
            raise ValueError(f"verify_tls must be true or false, got {self.verify_tls!r}")
        if self.ca_bundle is not None:
            if not isinstance(self.ca_bundle, str | os.PathLike):
                raise ValueError(f"ca_bundle must be a path, got {self.ca_bundle!r}")
            object.__setattr__(self, "ca_bundle", Path(self.ca_bundle))
            _check_ca_bundle(self.ca_bundle)
            if not self.verify_tls:
                raise ValueError("ca_bundle is not used when TLS verification is off; pick one")

    def limits_for(self, host: str, origin: str) -> tuple[float, int, int]:
        """(rate, burst, per_host) for a host, after per-host overrides (origin beats host)."""
        rate, burst, per_host = self.rate, self.burst, self.per_host
        for key in (host, origin):
            limits = self.hosts.get(key)
            if limits is not None:
                rate = limits.rate if limits.rate is not None else rate
                burst = limits.burst if limits.burst is not None else burst
                per_host = limits.per_host if limits.per_host is not None else per_host
        return rate, burst, per_host

    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str] | None,
        /,
        *,
        labels: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> CrawlConfig:
        """CrawlConfig's defaults < `defaults` (a caller's own, such as the command's) <
        the TOML file at `path` (None: no file) < `overrides` (None ones ignored).

        A bad value raises ConfigError naming where it came from: the file, or an override's
        label (`labels`, else the setting's flag in OPTIONS). NoSeeds when nothing names a
        seed and the crawl does not stay open."""
        file = os.fspath(path) if path is not None else None
        read = read_config_file(file) if file is not None else {}
        origins = dict.fromkeys(read, "file")
        data = {**(defaults or {}), **read}
        for name, value in overrides.items():
            if value is None:
                continue
            data[name] = tuple(value) if isinstance(value, list) else value
            label = (labels or {}).get(name, OPTION_FLAGS.get(name))
            if label is None:
                origins.pop(name, None)
            else:
                origins[name] = label
        if not data.get("seeds") and not data.get("stay_open"):
            raise NoSeeds(f"{file}: no seed URL given" if file else "no seed URL given")
        try:
            return cls.from_mapping(data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(_relabel(str(exc), origins, file)) from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> CrawlConfig:
        """Build from a TOML-like mapping; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        hosts = merged.get("hosts")
        if hosts is not None:
            if not isinstance(hosts, Mapping):
                raise ValueError("hosts must be a table of per-host limits")
            converted: dict[str, HostLimits] = {}
            for key, value in hosts.items():
                if isinstance(value, HostLimits):
                    converted[key] = value
                    continue
                if not isinstance(value, Mapping):
                    raise ValueError(f"hosts.{key} must be a table")
                bad = sorted(set(value) - {"rate", "burst", "per_host"})
                if bad:
                    raise ValueError(f"hosts.{key}: unknown setting(s): {', '.join(bad)}")
                try:
                    converted[key] = HostLimits(**value)
                except ValueError as exc:
                    raise ValueError(f"hosts.{key}.{exc}") from None
            merged["hosts"] = converted
        for key in ("seeds", "include", "exclude"):
            if key in merged and isinstance(merged[key], list):
                merged[key] = tuple(merged[key])
        if "seeds" not in merged and not merged.get("stay_open"):
            raise ValueError("seeds must name at least one URL")
        return cls(**merged)


def _check_ca_bundle(path: Path) -> None:
    """Fail now, not at the first HTTPS connection, on a CA bundle that cannot be used."""
    try:
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
            return
        ssl.create_default_context(cafile=path)  # reads and parses it, once
    except ssl.SSLError as exc:
        raise ValueError(
            f"ca_bundle: {path} holds no usable PEM certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ValueError(f"ca_bundle: cannot read {path}: {exc.strerror or exc}") from None


def _parses(url: str) -> bool:
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return True


def iter_config_fields() -> Iterable[str]:
    return (f.name for f in fields(CrawlConfig))


# ---------------------------------------------------------------------------
# Config files and flags


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the file or flag it came from."""


class NoSeeds(ConfigError):
    """No seed URL anywhere (file or overrides), and the crawl does not stay open."""


OptionKind = Literal["int", "number", "text", "choice", "regexes", "path", "dir", "on", "off"]
"""How a setting is written: on the command line (``on``/``off``: a flag without a value
that sets True/False) and in a TOML file."""


@dataclass(frozen=True, slots=True)
class Option:
    """A CrawlConfig setting that has a command-line flag; the one place its help is written."""

    name: str
    flag: str
    kind: OptionKind
    help: str
    """One line; ``{default}`` stands for CrawlConfig's default, as show_default writes it."""
    group: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def full_help(self) -> str:
        return self.help.replace("{default}", show_default(self.name))


_WHAT = "what to crawl"
_POLITE = "politeness and limits"

OPTIONS: tuple[Option, ...] = (
    Option("max_pages", "--max-pages", "int", "stop after N pages (default: {default})",
           _WHAT, "N"),
    Option("max_depth", "--max-depth", "int",
           "follow links at most N hops from a seed (default: {default})", _WHAT, "N"),
    Option("scope", "--scope", "choice",
           "follow links to the seed's host, its registrable domain, or anywhere "
           "(default: {default})", _WHAT, choices=SCOPES),
    Option("include", "--include", "regexes",
           "only follow URLs matching REGEX (repeatable; default: all)", _WHAT, "REGEX"),
    Option("exclude", "--exclude", "regexes",
           "never follow URLs matching REGEX (repeatable; default: none)", _WHAT, "REGEX"),
    Option("obey_robots", "--ignore-robots", "off",
           "do not fetch or obey robots.txt (default: robots.txt obeyed)", _WHAT),
    Option("sitemaps", "--sitemaps", "on",
           "also seed from the sitemaps robots.txt lists (default: off)", _WHAT),
    Option("concurrency", "--concurrency", "int",
           "global cap on requests in flight (default: {default})", _POLITE, "N"),
    Option("per_host", "--per-host", "int",
           "cap on requests in flight per host (default: {default})", _POLITE, "N"),
    Option("rate", "--rate", "number",
           "requests per second per host, 0 = unlimited (default: {default})", _POLITE, "R"),
    Option("burst", "--burst", "int",
           "requests a host may get back to back (default: {default})", _POLITE, "B"),
    Option("user_agent", "--user-agent", "text", "User-Agent header (default: {default})",
           _POLITE, "UA"),
    Option("retries", "--retries", "int",
           "retries after a timeout, reset or 5xx/429 (default: {default})", _POLITE, "N"),
    Option("max_bytes", "--max-bytes", "int", "cut bodies at N bytes (default: {default})",
           _POLITE, "N"),
    Option("max_time", "--max-time", "number",
           "stop gracefully after this long (default: {default})", _POLITE, "SECONDS"),
    Option("block_private", "--block-private", "on",
           "refuse to connect to loopback, private and link-local addresses (after DNS), "
           "except the seeds' own hosts (default: off)", _POLITE),
    Option("timeout", "--timeout", "number",
           "total deadline for one request, connect and read included (default: {default})",
           _POLITE, "SECONDS"),
    Option("ca_bundle", "--ca-bundle", "path",
           "verify TLS with the CA certificates in PATH (PEM file or directory) instead of "
           "certifi's, SSL_CERT_FILE's or SSL_CERT_DIR's (default: certifi, or those if set)",
           "TLS", "PATH"),
    Option("verify_tls", "--insecure", "off",
           "do not verify TLS certificates (like curl -k; default: verified)", "TLS"),
    Option("parse_processes", "--parse-processes", "int",
           "child processes that parse HTML while this one fetches; 0 = parse here "
           "(default: 1 when this process may use 2 or more cores, else 0)", "running", "N"),
    Option("state", "--state", "dir",
           "keep the crawl's state (frontier, seen URLs, politeness, statistics) in DIR; "
           "the same command run again resumes it (default: none)", "running", "DIR"),
)  # fmt: skip
OPTION_FLAGS: Mapping[str, str] = MappingProxyType({o.name: o.flag for o in OPTIONS})

_FIELDS = {f.name: f for f in dataclasses.fields(CrawlConfig)}
_DEFAULTS: dict[str, Any] = {
    name: f.default for name, f in _FIELDS.items() if f.default is not dataclasses.MISSING
}
_BOOL_FIELDS = tuple(name for name, value in _DEFAULTS.items() if isinstance(value, bool))
_NOT_IN_FILES = ("should_follow",)
"""CrawlConfig fields a config file cannot set (hooks are Python callables)."""
_PATHS = {"dir": "a directory path", "path": "a path"}


def show_default(name: str) -> str:
    """A CrawlConfig default as help shows it."""
    value = _DEFAULTS[name]
    if value is None:
        return "no limit"
    if isinstance(value, float):
        return f"{value:g}"
    if name == "max_bytes" and isinstance(value, int) and value % MiB == 0:
        return f"{value} = {value // MiB} MiB"
    return str(value)


def read_config_file(path: str) -> dict[str, Any]:
    """The settings in a TOML file, checked for unknown keys and values TOML cannot type."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    for name in _NOT_IN_FILES:
        if name in data:
            raise ConfigError(f"{path}: {name} cannot be set in a config file")
    for name in _BOOL_FIELDS:
        if name in data and not isinstance(data[name], bool):
            raise ConfigError(f"{path}: {name} must be true or false, got {data[name]!r}")
    for option in OPTIONS:
        what = _PATHS.get(option.kind)
        value = data.get(option.name)
        if what is not None and value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {option.name} must be {what}, got {value!r}")
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
