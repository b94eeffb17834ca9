"""Web image results for a label, shielded so that a slow or dead Bing never breaks a search.

    web = WebSearch(BingClient(base_url), count=24)
    results, error = await web.search("tabby", page=0)   # ([WebResult dicts], None) or ([], "plain words")

The blocking client runs on a small thread pool of its own (a hung request cannot starve the server's other
threads). Each call waits at most `budget_s`; past that the API answers without web results (the request
goes on in its thread and fills the client's cache for the next call). After Bing is found unreachable
or blocking us, web search is skipped for `cooldown_s` seconds (a circuit breaker), so an offline server
answers at once instead of waiting out the client's retries on every request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Protocol

from scraper.bing import BingBlocked, BingUnavailable, ScraperError

__all__ = ["WebSearch"]

log = logging.getLogger(__name__)


class _Client(Protocol):
    def search(self, query: str, page: int = 0, count: int = 35) -> list: ...


class WebSearch:
    """See the module docstring. `client=None` turns web search off with `off_reason` as the error."""

    def __init__(
        self,
        client: _Client | None,
        *,
        count: int = 24,
        budget_s: float = 8.0,
        cooldown_s: float = 30.0,
        workers: int = 4,
        off_reason: str = "web search is turned off on this server",
    ) -> None:
        self.client = client
        self.count = count
        self.budget_s = budget_s
        self.cooldown_s = cooldown_s
        self.off_reason = off_reason
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="crema-web") if client else None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _trip(self, reason: str) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.cooldown_s
            self._down_reason = reason

    def status(self) -> dict:
        """{"enabled", "available", "reason"} for /api/health."""
        with self._lock:
            down = time.monotonic() < self._down_until
            reason = self._down_reason if down else None
        if not self.enabled:
            return {"enabled": False, "available": False, "reason": self.off_reason}
        return {"enabled": True, "available": not down, "reason": reason}

    async def search(self, query: str, page: int = 0) -> tuple[list[dict], str | None]:
        """([WebResult dicts], None) or ([], the reason in plain words)."""
        if self.client is None or self._pool is None:
            return [], self.off_reason
        with self._lock:
            wait = self._down_until - time.monotonic()
            if wait > 0:
                return [], f"{self._down_reason} (next try in {wait:.0f} s)"
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self.client.search, query, page, self.count)
        try:
            results = await asyncio.wait_for(asyncio.shield(fut), self.budget_s)
        except asyncio.TimeoutError:
            return [], f"web search took longer than {self.budget_s:g} s; try again"
        except BingUnavailable as exc:
            self._trip("web search is unavailable: Bing could not be reached")
            log.warning("Bing unavailable: %s", exc)
            return [], f"web search is unavailable: Bing could not be reached ({exc})"
        except BingBlocked as exc:
            self._trip("web search is unavailable: Bing refused the request")
            log.warning("Bing blocked us: %s", exc)
            return [], f"web search is unavailable: Bing refused the request ({exc})"
        except ScraperError as exc:
            return [], f"web search failed: {exc}"
        except ValueError as exc:
            return [], f"web search: {exc}"
        except Exception as exc:
            log.exception("web search failed")
            return [], f"web search failed ({type(exc).__name__})"
        return [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in results], None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
