"""Bing Images scraper: ``BingClient.search(query, page, count) -> list[WebResult]``.

The web app shows images "similar to" a prediction by asking Bing Images for the predicted label. This module
calls the HTML fragment endpoint that Bing's own infinite scroll uses (and that the scrapers of the paper's era
used)::

    GET {base}/images/async?q=<query>&first=<page * count>&count=<count>&mmasync=1

and parses the result tiles. Each tile carries an anchor ``<a class="iusc" m="...">`` whose ``m`` attribute is
HTML-escaped JSON; the keys used here are ``murl`` (the full-size media URL), ``turl`` (Bing's thumbnail),
``purl`` (the page the image appears on) and ``t`` (title, with U+E000 / U+E001 marking the matched words).
The same layout is parsed by searx's ``bing_images`` engine.

Behaviour:

- Realistic browser headers; ``timeout`` seconds for the connect and for each read of every request.
- Retries with exponential backoff (``backoff * 2**k`` seconds before retry ``k + 1``) on HTTP 429, on 5xx and on
  connection errors (refused / reset), at most ``retries`` times. A ``Retry-After`` header of at most
  ``MAX_RETRY_AFTER`` seconds replaces the backoff delay; a longer one ends the retries at once (waiting minutes
  inside a web request helps nobody). A timeout is not retried: the caller's time budget is already spent.
- A TTL cache per ``(query, page, count)``; it is thread-safe (the server calls ``search`` from worker threads).
  Threads missing the cache on the same key wait for one fetch instead of each asking Bing (striped locks).
- Results are filtered: only absolute http(s) media URLs, no duplicates within a page, and no repeats across
  pages of one query: a page never returns a media URL that another cached page of the same query returned.

Exceptions::

    ScraperError                 base of everything this module raises (besides ValueError for bad arguments)
     ├── BingUnavailable         network error, timeout, 5xx or other unexpected HTTP status, retries exhausted
     ├── BingBlocked             403, or 429 after the retries, or a captcha / challenge page instead of results
     └── BingParseError          the response is not the result HTML at all: a non-HTML content type (JSON,
                                 image, ...), a body that is not markup, or a body over MAX_RESPONSE_BYTES

A response that *is* HTML but holds no result tiles (Bing's answer past the last page, or a layout we do not
recognise) returns ``[]`` and is not an error, unless it is a captcha page (``BingBlocked``). An empty body also
returns ``[]``. Tiles with broken or incomplete JSON are skipped, never fatal.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urljoin, urlsplit

import lxml.etree
import lxml.html
import requests

__all__ = [
    "DEFAULT_BASE_URL",
    "BingBlocked",
    "BingClient",
    "BingParseError",
    "BingUnavailable",
    "ScraperError",
    "WebResult",
    "parse_results",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.bing.com"
ENV_BASE_URL = "CREMA_BING_URL"
MAX_RETRY_AFTER = 10.0  # seconds; a longer Retry-After ends the retries
MAX_RESPONSE_BYTES = 8_000_000  # a result fragment is ~0.1-1 MB; anything far larger is not one
MAX_CACHE_ENTRIES = 512

HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate",
}

_HIGHLIGHT = str.maketrans("", "", "\ue000\ue001")
_TILE_XPATH = "//a[contains(concat(' ', normalize-space(@class), ' '), ' iusc ')][@m]"
_CAPTCHA_RE = re.compile(r"captcha", re.IGNORECASE)
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class ScraperError(Exception):
    """Base class of the scraper's errors."""


class BingUnavailable(ScraperError):
    """Bing could not be reached or answered with an error status (network, timeout, 5xx, retries exhausted)."""


class BingBlocked(ScraperError):
    """Bing refused us: 403, 429 after the retries, or a captcha / challenge page."""


class BingParseError(ScraperError):
    """The response is not Bing's result HTML at all."""


@dataclass(frozen=True)
class WebResult:
    """One image result.

    image_url: the full-size image (http or https). thumb_url: Bing's thumbnail ("" when the tile has none).
    page_url: the page showing the image (the image URL itself when the tile names no page).
    title: plain text, highlight markers removed. source: the page's host name (lower case, no port).
    """

    image_url: str
    thumb_url: str
    page_url: str
    title: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- parsing


def _http_url(value: object, base: str | None = None) -> str | None:
    """``value`` as an absolute http(s) URL with a host (joined to ``base`` when given), else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value:
        return None
    if base is not None:
        value = urljoin(base, value)
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if any(c.isspace() or ord(c) < 32 for c in value):
        return None
    return value


def _clean_title(value: object) -> str:
    """Title text without Bing's highlight markers (U+E000 / U+E001), whitespace collapsed."""
    if not isinstance(value, str):
        return ""
    return " ".join(value.translate(_HIGHLIGHT).split())


def _tile_fallbacks(anchor: lxml.html.HtmlElement) -> tuple[str, str]:
    """(thumbnail src, visible title) from the tile around ``anchor``, for tiles whose JSON lacks them."""
    thumb = ""
    for img in anchor.iter("img"):
        thumb = img.get("src") or img.get("data-src") or ""
        if thumb:
            break
    title = ""
    tile = anchor.getparent()
    while tile is not None and tile.tag != "li":
        tile = tile.getparent()
    if tile is not None:
        for link in tile.xpath(".//div[contains(@class, 'infnmpt')]//a"):
            title = link.get("title") or link.text_content()
            if title.strip():
                break
    if not title.strip():
        for img in anchor.iter("img"):
            title = img.get("alt") or ""
            break
    return thumb, title


def _tile_result(anchor: lxml.html.HtmlElement, base_url: str) -> WebResult | None:
    """The result of one ``a.iusc`` tile, or None when its JSON is broken or names no usable media URL."""
    try:
        meta = json.loads(anchor.get("m") or "")
    except ValueError as exc:
        log.debug("skipping tile with broken JSON: %s", exc)
        return None
    if not isinstance(meta, dict):
        return None
    image_url = _http_url(meta.get("murl"))
    if image_url is None:
        return None
    thumb_fallback, title_fallback = _tile_fallbacks(anchor)
    thumb_url = _http_url(meta.get("turl"), base_url) or _http_url(thumb_fallback, base_url) or ""
    page_url = _http_url(meta.get("purl")) or image_url
    title = _clean_title(meta.get("t")) or _clean_title(title_fallback)
    source = (urlsplit(page_url).hostname or "").lower()
    return WebResult(image_url=image_url, thumb_url=thumb_url, page_url=page_url, title=title, source=source)


def parse_results(text: str, *, base_url: str = DEFAULT_BASE_URL) -> list[WebResult]:
    """Result tiles of one Bing Images HTML page or fragment, in page order, duplicates (same image URL) dropped.

    text: the decoded response body. base_url: what relative thumbnail URLs are joined to.
    Returns [] for an empty body or markup without tiles; tiles with broken JSON or no http(s) ``murl`` are
    skipped. Raises BingParseError when ``text`` is not markup at all (no ``<`` anywhere, or unparsable).
    """
    if not text.strip():
        return []
    if "<" not in text:
        raise BingParseError(f"Bing response is not HTML: starts with {text.strip()[:60]!r}")
    try:
        doc = lxml.html.document_fromstring(text)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise BingParseError(f"Bing response is not parsable HTML: {exc}") from exc
    results: list[WebResult] = []
    seen: set[str] = set()
    for anchor in doc.xpath(_TILE_XPATH):
        result = _tile_result(anchor, base_url)
        if result is None or result.image_url in seen:
            continue
        seen.add(result.image_url)
        results.append(result)
    return results


def _looks_like_captcha(text: str, final_url: str) -> bool:
    """True for Bing's bot challenge (served at /turing/captcha/... or as a page mentioning a captcha)."""
    return bool(_CAPTCHA_RE.search(urlsplit(final_url).path) or _CAPTCHA_RE.search(text))


# ------------------------------------------------------------------------------------------------------ client


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _normalise_query(query: str) -> str:
    if not isinstance(query, str):
        raise TypeError(f"BingClient.search: query must be a str, got {type(query).__name__}")
    normalised = " ".join(query.split())
    if not normalised:
        raise ValueError(f"BingClient.search: query must contain non-space characters, got {query!r}")
    return normalised


class BingClient:
    """Thread-safe Bing Images client with retries and a TTL cache.

    base_url: scheme and host (and optional path prefix) of Bing; default ``$CREMA_BING_URL``, else
    ``https://www.bing.com``. timeout: seconds for the connect and each read. retries: extra attempts after the
    first on 429 / 5xx / connection errors. backoff: first retry delay in seconds, doubled each retry.
    cache_ttl: seconds a (query, page, count) result stays cached; 0 disables the cache.
    session: a requests.Session to use (the caller then owns its thread-safety); by default each thread gets
    its own session.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        cache_ttl: float = 600.0,
        session: requests.Session | None = None,
    ) -> None:
        base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        if _http_url(base) is None:
            raise ValueError(f"BingClient: base_url must be an http(s) URL with a host, got {base!r}")
        if timeout <= 0:
            raise ValueError(f"BingClient: timeout must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"BingClient: retries must be >= 0, got {retries}")
        if backoff < 0 or cache_ttl < 0:
            raise ValueError(f"BingClient: backoff and cache_ttl must be >= 0, got {backoff} and {cache_ttl}")
        self.base_url = base.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.cache_ttl = float(cache_ttl)
        self._session = session
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _cache and requests_sent
        self._stripes = [threading.Lock() for _ in range(32)]  # per-key fetch locks (striped)
        # (query, page, count) -> (expiry on the monotonic clock, results); insertion order = age
        self._cache: dict[tuple[str, int, int], tuple[float, list[WebResult]]] = {}
        self._sleep: Callable[[float], None] = time.sleep  # replaceable in tests
        self._clock: Callable[[], float] = time.monotonic
        self.requests_sent = 0  # HTTP requests made, retries included (for monitoring and tests)

    # -- public ---------------------------------------------------------------------------------------------

    def search(self, query: str, page: int = 0, count: int = 35) -> list[WebResult]:
        """Image results for ``query``: page ``page`` (0-based) of ``count`` results per page.

        Bing decides how many tiles it actually returns (often a few more or fewer than ``count``). Media URLs
        already returned for this query on another cached page are left out. Raises ValueError for bad
        arguments and the ScraperError subclasses described in the module docstring.
        """
        query = _normalise_query(query)
        if not isinstance(page, int) or page < 0:
            raise ValueError(f"BingClient.search: page must be an int >= 0, got {page!r}")
        if not isinstance(count, int) or not 1 <= count <= 150:
            raise ValueError(f"BingClient.search: count must be an int in 1..150, got {count!r}")
        key = (query, page, count)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        with self._stripes[hash(key) % len(self._stripes)]:  # one fetch per key at a time: no stampede
            cached = self._cache_get(key)
            if cached is not None:
                return cached
            params = {"q": query, "first": str(page * count), "count": str(count), "mmasync": "1"}
            response, body = self._get(f"{self.base_url}/images/async", params)
            results = self._parse(response, body)
            return self._cache_put(key, results)

    def clear_cache(self) -> None:
        """Forget every cached page (and with them what counts as already returned)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Close this thread's own session (a session passed in is left to its owner)."""
        own = getattr(self._local, "session", None)
        if own is not None:
            own.close()
            self._local.session = None

    # -- cache ----------------------------------------------------------------------------------------------

    def _cache_get(self, key: tuple[str, int, int]) -> list[WebResult] | None:
        if self.cache_ttl <= 0:
            return None
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._cache[key]
                return None
            return list(entry[1])

    def _cache_put(self, key: tuple[str, int, int], results: list[WebResult]) -> list[WebResult]:
        """Drop media URLs that other live pages of the same query returned, store, return the kept list."""
        now = self._clock()
        with self._lock:
            for old in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[old]
            returned = {r.image_url for k, (_, rs) in self._cache.items() if k[0] == key[0] and k != key for r in rs}
            kept = [r for r in results if r.image_url not in returned]
            if self.cache_ttl > 0:
                self._cache.pop(key, None)
                self._cache[key] = (now + self.cache_ttl, kept)
                while len(self._cache) > MAX_CACHE_ENTRIES:
                    del self._cache[next(iter(self._cache))]
        return list(kept)

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _session_for_thread(self) -> requests.Session:
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _get(self, url: str, params: dict[str, str]) -> tuple[requests.Response, bytes]:
        """GET with retries: a 2xx response (closed) and its decompressed body (at most MAX_RESPONSE_BYTES)."""
        session = self._session_for_thread()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            with self._lock:
                self.requests_sent += 1
            try:
                response = session.get(url, params=params, headers=HEADERS, timeout=self.timeout, stream=True)
            except requests.Timeout as exc:
                raise BingUnavailable(f"Bing request timed out after {self.timeout:g} s: {url}") from exc
            except requests.ConnectionError as exc:
                if last:
                    raise BingUnavailable(
                        f"Bing unreachable after {attempt + 1} attempts: {url}: {exc.__class__.__name__}"
                    ) from exc
                self._sleep(self.backoff * 2**attempt)
                continue
            except requests.RequestException as exc:
                raise BingUnavailable(f"Bing request failed: {url}: {exc}") from exc
            status = response.status_code
            if 200 <= status < 300:
                return response, self._read_body(response, url)
            response.close()
            if status == 403:
                raise BingBlocked(f"Bing refused the request (HTTP 403): {response.url}")
            if status != 429 and not 500 <= status < 600:
                raise BingUnavailable(f"Bing answered HTTP {status} (expected 200): {response.url}")
            delay = _retry_after(response.headers.get("Retry-After"))
            error = BingBlocked if status == 429 else BingUnavailable
            if last:
                raise error(f"Bing answered HTTP {status} on all {attempt + 1} attempts: {response.url}")
            if delay is not None and delay > MAX_RETRY_AFTER:
                raise error(f"Bing answered HTTP {status} with Retry-After {delay:g} s: {response.url}")
            self._sleep(self.backoff * 2**attempt if delay is None else delay)
        raise AssertionError("unreachable: the loop returns or raises")

    @staticmethod
    def _read_body(response: requests.Response, url: str) -> bytes:
        """The (decompressed) body, streamed; BingParseError past MAX_RESPONSE_BYTES."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise BingParseError(f"Bing response over {MAX_RESPONSE_BYTES} bytes: {url}")
                chunks.append(chunk)
        except requests.Timeout as exc:
            raise BingUnavailable(f"Bing response timed out while reading: {url}") from exc
        except requests.RequestException as exc:
            raise BingUnavailable(f"Bing response broke off while reading: {url}: {exc}") from exc
        finally:
            response.close()
        return b"".join(chunks)

    def _parse(self, response: requests.Response, body: bytes) -> list[WebResult]:
        """Results of a 2xx response; raises BingParseError / BingBlocked as the module docstring says."""
        content_type = response.headers.get("Content-Type", "")
        mime = content_type.split(";")[0].strip().lower()
        if mime and mime not in _HTML_TYPES:
            raise BingParseError(f"Bing answered {mime!r}, expected text/html: {response.url}")
        encoding = response.encoding if "charset" in content_type.lower() else "utf-8"
        try:
            text = body.decode(encoding or "utf-8", errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        if "\x00" in text:
            raise BingParseError(f"Bing response is binary, expected HTML: {response.url}")
        results = parse_results(text, base_url=self.base_url)
        if not results and _looks_like_captcha(text, response.url):
            raise BingBlocked(f"Bing served a captcha / challenge page instead of results: {response.url}")
        return results
