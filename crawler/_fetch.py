"""One HTTP exchange: send, read the body under the caps and deadlines, classify failures."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from ._config import CrawlConfig
from ._decode import BodyDecoder, DecodingError
from ._guard import AddressGuard, BlockedAddressError
from ._page import ErrorKind, Exchange, PageError
from ._retry import REDIRECT_STATUSES
from ._robots import ROBOTS_MAX_BYTES
from ._transport import Reply, StaleConnection, TrioTransport
from ._unexpected import note_hook
from ._urls import host_of, normalize_url, origin_of


@dataclass(frozen=True, slots=True)
class Fetched:
    """What came back for one request: a response (maybe cut), or an error, never both empty."""

    url: str
    status: int | None
    headers: httpx.Headers
    body: bytes
    raw_size: int
    elapsed: float
    started_at: dt.datetime
    error: PageError | None
    exchange: Exchange | None
    truncated: bool = False
    stale: bool = False
    """The error is a reused keep-alive connection lost before any response byte."""


_NO_SCOPE: Final = contextlib.nullcontext()


TRANSPORT_CLOSE_TIMEOUT = 5.0
# RFC 9309 2.3.1.2: follow at least five consecutive redirects for robots.txt.
ROBOTS_REDIRECTS = 5


class Fetcher:
    """Runs requests through an httpx transport with a total deadline and a decoded-size cap."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        user_agent: str,
        timeout: float,
        max_bytes: int,
        keep_exchanges: bool,
        prepare: Callable[[httpx.Request], httpx.Request] | None = None,
        credentials: Mapping[str, str] | None = None,
        owns_transport: bool = False,
    ) -> None:
        self.transport = transport
        self.owns_transport = owns_transport
        self.prepare = prepare
        # Authorization header per origin, from credentials in the seeds' URLs: sent
        # to that origin only, never across a redirect or link to another.
        self.credentials = dict(credentials or {})
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.keep_exchanges = keep_exchanges
        self.headers = httpx.Headers(
            {
                "User-Agent": user_agent,
                "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",
                "Accept-Encoding": "gzip, deflate, br",
            }
        )
        # Our own transport is called without building an httpx.Request and Response
        # per fetch (a tenth of a page's CPU), unless a `prepare` hook wants the Request.
        self._direct = transport if type(transport) is TrioTransport and prepare is None else None
        self._raw_headers = tuple(self.headers.raw)
        self._raw_credentials = {
            origin: (*self._raw_headers, (b"Authorization", value.encode("latin-1")))
            for origin, value in self.credentials.items()
        }

    async def fetch(
        self,
        url: str,
        *,
        origin: str | None = None,
        max_bytes: int | None = None,
        cut: bool = False,
    ) -> Fetched:
        """GET `url` (whose origin is `origin`, when the caller knows it). A body over
        the cap is an error, refused up front when its declared length says so; with
        `cut=True` the body is read up to the cap and kept."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        if origin is None:
            origin = origin_of(url)
        direct = self._direct
        target = url[len(origin) :]
        request: httpx.Request | None = None
        if direct is None or not target.startswith("/") or not url.startswith(origin):
            direct = None
            request = httpx.Request("GET", url, headers=self.headers)
            if self.credentials:
                authorization = self.credentials.get(origin)
                if authorization is not None:
                    request.headers["Authorization"] = authorization
            if self.prepare is not None:
                try:
                    request = self.prepare(request)
                except Exception as exc:
                    note_hook(exc, "prepare")  # the caller's bug ends the crawl
                    raise
        started_at = dt.datetime.now(dt.UTC)
        start = trio.current_time()
        status: int | None = None
        response_headers: httpx.Headers | None = None
        reply: Reply | None = None
        response: httpx.Response | None = None
        raw_parts: list[bytes] = []
        parts: list[bytes] = []
        raw_size = 0
        truncated = False
        error: PageError | None = None
        stale = False
        deadline = start + self.timeout
        # Our transport keeps the deadline itself; another gets a cancel scope (a plain
        # one: fail_after() is a generator-based context manager, slower still).
        scope = _NO_SCOPE if direct is not None else trio.CancelScope(deadline=deadline)
        try:
            with scope:
                if direct is not None:
                    raw = self._raw_credentials.get(origin, self._raw_headers)
                    reply = await direct.get(origin, target, raw, deadline=deadline)
                    stream: httpx.AsyncByteStream = reply.stream
                    status = reply.status
                    response_headers = _headers(reply.headers)
                    length, encoding = _framing(reply.headers)
                else:
                    assert request is not None
                    response = await self.transport.handle_async_request(request)
                    # The raw stream, not aiter_raw(): a response built with its
                    # content (MockTransport) counts as consumed but still streams.
                    if not isinstance(response.stream, httpx.AsyncByteStream):
                        await response.aclose()
                        raise httpx.LocalProtocolError("transport returned a sync stream")
                    stream = response.stream
                    status = response.status_code
                    response_headers = response.headers
                    length = response_headers.get("content-length")
                    encoding = response_headers.get("content-encoding")
                try:
                    error = None if cut else _check_length(length, cap)
                    if error is None:
                        # No Content-Encoding (most pages): the body is the payload,
                        # cut at the cap, without a BodyDecoder's pipeline per page.
                        decoder = None if encoding is None else BodyDecoder(encoding, cap)
                        chunks = stream.__aiter__()
                        try:
                            async for chunk in chunks:
                                raw_size += len(chunk)
                                if self.keep_exchanges:
                                    raw_parts.append(chunk)
                                if decoder is not None:
                                    parts.append(decoder.feed(chunk))
                                    if decoder.truncated or raw_size > cap:
                                        truncated = True
                                        break
                                elif raw_size > cap:
                                    parts.append(chunk[: len(chunk) - (raw_size - cap)])
                                    truncated = True
                                    break
                                else:
                                    parts.append(chunk)
                        finally:
                            # Close a generator-based stream we left early (a stream
                            # that is its own iterator is closed just below).
                            if not isinstance(chunks, httpx.AsyncByteStream):
                                aclose = getattr(chunks, "aclose", None)
                                if aclose is not None:
                                    await aclose()
                        if not truncated and decoder is not None:
                            parts.append(decoder.flush())
                            truncated = decoder.truncated
                finally:
                    await stream.aclose()
            if isinstance(scope, trio.CancelScope) and scope.cancelled_caught:
                error = PageError(ErrorKind.TIMEOUT, self._overdue())
        except httpx.TimeoutException as exc:
            if trio.current_time() >= deadline:
                error = PageError(ErrorKind.TIMEOUT, self._overdue())
            else:
                error = PageError(ErrorKind.TIMEOUT, _describe(exc, "timed out"))
        except httpx.ConnectError as exc:
            blocked = isinstance(exc.__cause__, BlockedAddressError)
            kind = ErrorKind.BLOCKED if blocked else ErrorKind.CONNECT
            error = PageError(kind, _describe(exc, "connection failed"))
        except (httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
            stale = isinstance(exc, StaleConnection)
            error = PageError(ErrorKind.RESET, _describe(exc, "connection lost"))
        except httpx.ProtocolError as exc:
            error = PageError(ErrorKind.PROTOCOL, _describe(exc, "protocol error"))
        except DecodingError as exc:
            error = PageError(ErrorKind.DECODING, str(exc))
        except (httpx.TransportError, httpx.InvalidURL, OSError) as exc:
            error = PageError(ErrorKind.OTHER, _describe(exc, type(exc).__name__))
        if truncated and error is None and not cut:
            error = PageError(
                ErrorKind.TOO_LARGE, f"body cut at max_bytes={cap} (decoded size exceeded the cap)"
            )
        if response_headers is None:
            response_headers = httpx.Headers()
        exchange = None
        if self.keep_exchanges and status is not None:
            if reply is not None:
                sent = tuple(reply.request_headers)
                version = reply.http_version.decode("ascii", "replace")
                reason = reply.reason.decode("ascii", "ignore")
            else:
                assert request is not None and response is not None
                sent = tuple(request.headers.raw)
                version = _http_version(response)
                reason = response.reason_phrase
            exchange = Exchange(
                method="GET",
                url=url,
                request_headers=sent,
                http_version=version,
                status=status,
                reason=reason,
                response_headers=tuple(response_headers.raw),
                raw_body=b"".join(raw_parts),
                truncated=truncated,
                started_at=started_at,
            )
        return Fetched(
            url=url,
            status=status,
            headers=response_headers,
            body=b"".join(parts),
            raw_size=raw_size,
            elapsed=trio.current_time() - start,
            started_at=started_at,
            error=error,
            exchange=exchange,
            truncated=truncated,
            stale=stale,
        )

    def _overdue(self) -> str:
        return f"no complete response within {self.timeout:g} s"

    @classmethod
    def for_config(
        cls, config: CrawlConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> Fetcher:
        """The crawl's fetcher: `transport`, or the default one, which it then owns."""
        if transport is not None and config.block_private:
            raise ValueError(
                "block_private is enforced by the default transport at connect time;"
                " pass a transport that refuses private addresses instead"
            )
        return cls(
            transport if transport is not None else default_transport(config),
            owns_transport=transport is None,
            user_agent=config.user_agent,
            timeout=config.timeout,
            max_bytes=config.max_bytes,
            keep_exchanges=config.keep_exchanges,
            prepare=config.prepare,
            credentials=seed_credentials(config.seeds),
        )

    async def aclose(self) -> None:
        """Close the transport if this fetcher made it; never cancelled, never stuck."""
        if self.owns_transport:
            with trio.CancelScope(shield=True), trio.move_on_after(TRANSPORT_CLOSE_TIMEOUT):
                await self.transport.aclose()

    async def fetch_robots(self, origin: str) -> Fetched:
        """GET ``origin/robots.txt``, following redirects, cut at 500 KiB."""
        url = f"{origin}/robots.txt"
        fetched = await self.fetch(url, origin=origin, max_bytes=ROBOTS_MAX_BYTES, cut=True)
        for _ in range(ROBOTS_REDIRECTS):
            location = fetched.headers.get("location")
            if fetched.status not in REDIRECT_STATUSES or location is None:
                break
            target = normalize_url(location, url)
            if target is None:
                break
            url = target
            fetched = await self.fetch(url, max_bytes=ROBOTS_MAX_BYTES, cut=True)
        return fetched


def default_transport(config: CrawlConfig) -> httpx.AsyncBaseTransport:
    """The lean trio transport (llhttp parsing responses), sized and guarded as `config` says."""
    most_per_host = max([config.per_host, *(h.per_host or 0 for h in config.hosts.values())])
    guard = AddressGuard(host_of(seed) for seed in config.seeds) if config.block_private else None
    return TrioTransport(
        max_connections_per_origin=most_per_host,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_header_bytes=config.max_header_bytes,
        max_headers=config.max_headers,
        connect=guard,
        verify=config.ca_bundle or config.verify_tls,
    )


def seed_credentials(seeds: Iterable[str]) -> dict[str, str]:
    """Basic credentials from seeds like ``https://user:pw@host/``, keyed by origin."""
    found: dict[str, str] = {}
    for seed in seeds:
        url = httpx.URL(seed)
        canonical = normalize_url(seed)
        if (url.username or url.password) and canonical is not None:
            token = f"{url.username}:{url.password}".encode()
            found[origin_of(canonical)] = "Basic " + base64.b64encode(token).decode("ascii")
    return found


def _headers(raw: list[tuple[bytes, bytes]]) -> httpx.Headers:
    """``httpx.Headers(raw)``, told its encoding when every byte is ASCII.

    The first ``get`` on an ``httpx.Headers`` works out its encoding by decoding every
    name and value (~10 us for nginx's eight headers); ASCII is what it finds for
    nearly every response, and ``bytes.isascii`` shows it at a tenth of the cost."""
    headers = httpx.Headers(raw)
    if all(name.isascii() and value.isascii() for name, value in raw):
        headers.encoding = "ascii"
    return headers


def _framing(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """Content-Length and Content-Encoding from raw header fields, in one pass, as
    ``httpx.Headers.get`` gives them (repeated fields joined with ", ")."""
    length: list[bytes] = []
    encoding: list[bytes] = []
    for name, value in raw:
        if len(name) == 14 and name.lower() == b"content-length":
            length.append(value)
        elif len(name) == 16 and name.lower() == b"content-encoding":
            encoding.append(value)
    return (
        b", ".join(length).decode("latin-1") if length else None,
        b", ".join(encoding).decode("latin-1") if encoding else None,
    )


def _check_length(value: str | None, cap: int) -> PageError | None:
    """Refuse a declared body over the cap before reading it (encoded or not).

    Only a valid length counts: 1*DIGIT in ASCII (RFC 9110 8.6; int() also takes "+5",
    "1_000" and other scripts' digits), or a list of one such value repeated. Any other
    value is ignored here; the streamed body is capped all the same."""
    if value is None:
        return None
    first, _, rest = value.partition(",")
    digits = first.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    if rest and any(other.strip() != digits for other in rest.split(",")):
        return None
    digits = digits.lstrip("0") or "0"
    # int() of a 5,000-digit string raises; 20 digits are over any cap already.
    if len(digits) > 20 or int(digits) > cap:
        shown = digits if len(digits) <= 20 else f"of {len(digits)} digits"
        return PageError(
            ErrorKind.TOO_LARGE, f"Content-Length {shown} exceeds max_bytes={cap}; body not read"
        )
    return None


def _http_version(response: httpx.Response) -> str:
    version = response.extensions.get("http_version", b"HTTP/1.1")
    return version.decode("ascii", "replace") if isinstance(version, bytes) else str(version)


def _describe(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__}: {fallback}"
