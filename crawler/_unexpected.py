"""The last line of defence: an exception nobody expected while handling one URL
becomes that URL's error record, so no input from the network can end a crawl.

Only failures of the crawl itself end it: an unusable state, a lost shared frontier,
a closed results channel, or an exception from the caller's own hooks (marked with
`note_hook` where the hook is called)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import httpx
import trio

from ._page import ErrorKind, PageError
from ._redis import SharedCrawlError
from ._state import StateError

if TYPE_CHECKING:
    from ._fetch import Fetched

logger = logging.getLogger(__name__)

_HOOK_NOTE = "raised by the crawl's hook CrawlConfig."
_MAX_MESSAGE = 500
"""Characters of the exception's text kept in the record (it may quote a huge header)."""
_CRAWL_FAILURES = (StateError, SharedCrawlError, trio.BrokenResourceError, trio.ClosedResourceError)


def note_hook(exc: BaseException, name: str) -> None:
    """Mark `exc` as raised by the caller's hook `name`: it ends the crawl, and the note
    tells the caller where it came from."""
    exc.add_note(_HOOK_NOTE + name)


def ends_crawl(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the crawl (or its caller), not of one URL."""
    if not isinstance(exc, Exception) or isinstance(exc, _CRAWL_FAILURES):
        return True
    if isinstance(exc, BaseExceptionGroup):  # a task group's: any one of them decides
        return any(ends_crawl(inner) for inner in exc.exceptions)
    notes: object = getattr(exc, "__notes__", None)
    return isinstance(notes, list) and any(
        isinstance(note, str) and note.startswith(_HOOK_NOTE) for note in notes
    )


def unexpected_error(exc: BaseException, url: str) -> PageError:
    """`exc`, raised while handling `url`, as the URL's error record; its traceback goes
    to the package's log at INFO, which -v shows (a bug worth reporting)."""
    logger.info("unexpected %s while handling %s", type(exc).__name__, url, exc_info=exc)
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails is still one URL's failure
        text = "<unprintable>"
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    message = f"unexpected {type(exc).__name__}: {text}" if text else type(exc).__name__
    return PageError(ErrorKind.OTHER, message)


def failed_fetch(url: str, error: PageError) -> Fetched:
    """A fetch of `url` that ended in `error` with no response."""
    from ._fetch import Fetched

    now = dt.datetime.now(dt.UTC)
    return Fetched(url, None, httpx.Headers(), b"", 0, 0.0, now, error, None)
