"""crawler: a trio-native, structured-concurrency web crawler."""

from typing import TYPE_CHECKING, Any

from ._bucket import LeakyBucket, LeakyBucketStatistics
from ._config import CrawlConfig, HostLimits
from ._engine import Crawl, crawl, open_crawl
from ._page import ErrorKind, Exchange, HostStatistics, Page, PageError, Statistics
from ._state import StateError, StateMismatch
from ._version import __version__

if TYPE_CHECKING:
    from ._distributed import SharedCrawl, open_shared_crawl


def __getattr__(name: str) -> Any:
    # The Redis-backed shared crawl pulls in coredis: a third of the start-up time of a
    # single-process crawl that never uses it. Load it when first asked for.
    if name in ("SharedCrawl", "open_shared_crawl"):
        from . import _distributed

        return getattr(_distributed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Crawl",
    "CrawlConfig",
    "ErrorKind",
    "Exchange",
    "HostLimits",
    "HostStatistics",
    "LeakyBucket",
    "LeakyBucketStatistics",
    "Page",
    "PageError",
    "SharedCrawl",
    "StateError",
    "StateMismatch",
    "Statistics",
    "__version__",
    "crawl",
    "open_crawl",
    "open_shared_crawl",
]
