"""Web side of crema's image search: the Bing Images client (``scraper.bing``) and the SSRF-safe URL fetcher
(``scraper.fetch``). See each module's docstring for its exception tree."""

from __future__ import annotations

from scraper.bing import (
    BingBlocked,
    BingClient,
    BingParseError,
    BingUnavailable,
    ScraperError,
    WebResult,
    parse_results,
)
from scraper.fetch import FetchError, FetchResult, TooLargeError, UnsafeURLError, fetch_url

__all__ = [
    "BingBlocked",
    "BingClient",
    "BingParseError",
    "BingUnavailable",
    "FetchError",
    "FetchResult",
    "ScraperError",
    "TooLargeError",
    "UnsafeURLError",
    "WebResult",
    "fetch_url",
    "parse_results",
]
