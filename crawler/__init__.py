"""crawler: a trio-native, structured-concurrency web crawler."""

from ._bucket import LeakyBucket, LeakyBucketStatistics
from ._config import CrawlConfig, HostLimits
from ._distributed import SharedCrawl, open_shared_crawl
from ._engine import Crawl, crawl, open_crawl
from ._page import ErrorKind, Exchange, HostStatistics, Page, PageError, Statistics
from ._state import StateError, StateMismatch
from ._version import __version__

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
