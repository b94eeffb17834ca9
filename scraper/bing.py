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
- Redirects (at most ``MAX_REDIRECTS`` hops) are followed by hand, never by requests: a hop back to the base URL's
  own origin (scheme, host, port: the server the operator configured) is requested like the first request; a hop
  anywhere else, and every hop after it, goes through ``scraper.fetch.fetch_url``, with its checks (http(s) only,
  no userinfo, every address of the host public unicast, the connection pinned to the address checked, the size
  limit, the deadline), fetched once without retries. So a redirect cannot point the server at its own network.
- Retries with exponential backoff (``backoff * 2**k`` seconds before retry ``k + 1``) on HTTP 429, on 5xx and on
  connection errors (refused / reset), at most ``retries`` times. A ``Retry-After`` header of at most
  ``MAX_RETRY_AFTER`` seconds replaces the backoff delay; a longer one ends the retries at once (waiting minutes
  inside a web request helps nobody). A timeout is not retried: the caller's time budget is already spent.
- A TTL cache per ``(query, page, count)``; it is thread-safe (the server calls ``search`` from worker threads).
  Threads missing the cache on the same key wait for one fetch instead of each asking Bing (striped locks).
- Results are filtered: only absolute http(s) media URLs, no duplicates within a page, and no repeats across
  pages of one query: a page never returns a media URL that another cached page of the same query returned.
- Result URLs are percent-encoded as a browser would send them (``browser_url``): real results carry spaces,
  non-ASCII paths and IDN hosts.

Exceptions::

    ScraperError                 base of everything this module raises (besides ValueError for bad arguments)
     ├── BingUnavailable         network error, timeout, 5xx or other unexpected HTTP status, retries exhausted,
     │                           too many redirects, or a redirect refused by scraper.fetch's checks
     ├── BingBlocked             403, or 429 after the retries, or a captcha / challenge page instead of results
     └── BingParseError          the response is not the result HTML at all: a non-HTML content type (JSON,
                                 image, ...), a body that is not markup, or a body over MAX_RESPONSE_BYTES

A response that *is* HTML but holds no result tiles (Bing's answer past the last page, or a layout we do not
recognise) returns ``[]`` and is not an error, unless it is a captcha page (``BingBlocked``). An empty body also
returns ``[]``. Tiles with broken or incomplete JSON are skipped, never fatal.
"""

from __future__ import annotations

import codecs
import email.message
import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urljoin, urlsplit

import idna
import lxml.etree
import lxml.html
import requests

from .fetch import FetchError, TooLargeError, UnsafeURLError, fetch_url

__all__ = [
    "DEFAULT_BASE_URL",
    "BingBlocked",
    "BingClient",
    "BingParseError",
    "BingUnavailable",
    "ScraperError",
    "WebResult",
    "browser_url",
    "parse_results",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.bing.com"
ENV_BASE_URL = "CREMA_BING_URL"
MAX_RETRY_AFTER = 10.0  # seconds; a longer Retry-After ends the retries
MAX_RESPONSE_BYTES = 8_000_000  # a result fragment is ~0.1-1 MB; anything far larger is not one
MAX_CACHE_ENTRIES = 512
MAX_REDIRECTS = 5  # hops followed per request, on Bing's origin and elsewhere together

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


# What a browser percent-encodes in each part of an http(s) URL (the WHATWG URL standard's percent-encode sets),
# beyond C0 controls, DEL and every non-ASCII character, which are encoded everywhere (as UTF-8).
_PATH_ENCODE = frozenset(' "#<>?`{}')
_QUERY_ENCODE = frozenset(' "#<>')  # nothing the query's own syntax uses: & = + ; / ? % stay as they are
_FRAGMENT_ENCODE = frozenset(' "<>`')
_USERINFO_ENCODE = _PATH_ENCODE | frozenset("/:;=@[\\]^|")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters a host may not hold (WHATWG's forbidden host code points, plus space).
_FORBIDDEN_HOST = frozenset(" #%/:<>?@[\\]^|")


def _percent_encode(text: str, encode: frozenset[str], *, escape_stray_percent: bool = True) -> str:
    """``text`` with C0 controls, space, DEL, non-ASCII (as UTF-8) and the characters in ``encode`` written as
    %XX. A '%' that starts a valid %XX sequence is kept (no double encoding); a stray '%' becomes %25 when
    ``escape_stray_percent`` (a path naming the file "100% cotton.jpg"), else it is kept."""
    out: list[str] = []
    for i, ch in enumerate(text):
        code = ord(ch)
        if ch == "%":
            valid = len(text) > i + 2 and text[i + 1] in _HEX and text[i + 2] in _HEX
            out.append("%" if valid or not escape_stray_percent else "%25")
        elif code <= 0x20 or code >= 0x7F or ch in encode:
            if 0xD800 <= code <= 0xDFFF:  # a lone surrogate (JSON allows "\ud800"): U+FFFD, as a browser does
                ch = "\ufffd"
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def _browser_host(hostport: str) -> str | None:
    """``host[:port]`` of a URL as a browser sends it: an ASCII host as given (case kept), a non-ASCII one through
    IDNA (UTS #46, non-transitional: ``bücher.example`` -> ``xn--bcher-kva.example``); None when it is no host."""
    if hostport.startswith("["):  # IPv6 literal (urlsplit has checked the brackets and the address)
        end = hostport.index("]") + 1
        host, colon, port = hostport[:end], hostport[end : end + 1], hostport[end + 1 :]
        if colon not in ("", ":"):
            return None
    else:
        host, colon, port = hostport.partition(":")
    if colon and not port:  # "host:" is the default port
        colon = ""
    if colon and not (port.isdigit() and port.isascii() and int(port) <= 65535):
        return None
    if host.startswith("["):
        return host + colon + port
    if "%" in host:
        host = unquote(host)
    if not host or any(c in _FORBIDDEN_HOST or ord(c) < 0x20 or ord(c) == 0x7F for c in host):
        return None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    return host + colon + port


def browser_url(value: object, base: str | None = None) -> str | None:
    """``value`` as the absolute http(s) URL a browser would request (joined to ``base`` when given), else None.

    Bing hands back URLs as the pages wrote them: spaces, non-ASCII paths and hosts, a raw '%'. Like a browser,
    this removes tabs and newlines, strips leading and trailing spaces and controls, and percent-encodes (UTF-8)
    controls, spaces, non-ASCII and the characters each part may not hold raw: path and fragment and userinfo
    fully, the query only where it must (its ``& = + ; / ? %`` are kept as they are). Already-encoded %XX
    sequences are never encoded again; a stray '%' in the path becomes %25. A non-ASCII host is IDNA-encoded;
    an ASCII URL that needs no encoding comes back unchanged (scheme and host case included). None for other
    schemes, a missing or malformed host, or a bad port.
    """
    if not isinstance(value, str):
        return None
    value = value.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    if not value:
        return None
    cut = min((i for i in (value.find("?"), value.find("#")) if i >= 0), default=len(value))
    value = value[:cut].replace("\\", "/") + value[cut:]  # before the query, '\' is '/' to a browser
    try:
        if base is not None:
            value = urljoin(base, value)
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = _browser_host(hostport)
    if host is None:
        return None
    if at:
        user, colon, password = userinfo.partition(":")
        userinfo = _percent_encode(user, _USERINFO_ENCODE) + colon + _percent_encode(password, _USERINFO_ENCODE)
    scheme = value[: len(parts.scheme)]  # as written: urlsplit lower-cases it
    url = f"{scheme}://{userinfo}{at}{host}{_percent_encode(parts.path, _PATH_ENCODE)}"
    if parts.query:
        url += "?" + _percent_encode(parts.query, _QUERY_ENCODE, escape_stray_percent=False)
    if parts.fragment:
        url += "#" + _percent_encode(parts.fragment, _FRAGMENT_ENCODE)
    return url


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
    image_url = browser_url(meta.get("murl"))
    if image_url is None:
        return None
    thumb_fallback, title_fallback = _tile_fallbacks(anchor)
    thumb_url = browser_url(meta.get("turl"), base_url) or browser_url(thumb_fallback, base_url) or ""
    page_url = browser_url(meta.get("purl")) or image_url
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


@dataclass(frozen=True)
class _Page:
    """A 2xx answer, read: the final URL (after redirects), its Content-Type header ("" when absent), the body."""

    url: str
    content_type: str
    body: bytes


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, lower case, default port filled in; None when it has userinfo."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _charset(content_type: str) -> str:
    """The charset a Content-Type declares, if Python knows it, else UTF-8 (what Bing sends)."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    charset = message.get_param("charset")
    if isinstance(charset, str):
        try:
            return codecs.lookup(charset.strip()).name
        except LookupError:
            pass
    return "utf-8"


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
    its own session. allow_private: redirect hops off Bing's origin skip scraper.fetch's public-address check
    (tests against 127.0.0.1 only).
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
        allow_private: bool = False,
    ) -> None:
        base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        normalised = browser_url(base)
        if normalised is None:
            raise ValueError(f"BingClient: base_url must be an http(s) URL with a host, got {base!r}")
        if timeout <= 0:
            raise ValueError(f"BingClient: timeout must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"BingClient: retries must be >= 0, got {retries}")
        if backoff < 0 or cache_ttl < 0:
            raise ValueError(f"BingClient: backoff and cache_ttl must be >= 0, got {backoff} and {cache_ttl}")
        self.base_url = normalised.rstrip("/")
        self._origin = _origin(normalised)
        self.allow_private = bool(allow_private)
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
        self.requests_sent = 0  # HTTP requests made, retries and redirect hops included (for monitoring and tests)

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
            results = self._parse(self._get(f"{self.base_url}/images/async", params))
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

    def _get(self, url: str, params: dict[str, str]) -> _Page:
        """GET with retries and vetted redirects: the final 2xx page, its body (decompressed, at most
        MAX_RESPONSE_BYTES) read and the connection closed."""
        session = self._session_for_thread()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._send(session, url, params)
                response, elsewhere = self._follow_redirects(session, response)
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
            if elsewhere is not None:
                return self._fetch_elsewhere(*elsewhere)
            status = response.status_code
            if 200 <= status < 300:
                body = self._read_body(response, url)
                return _Page(response.url, response.headers.get("Content-Type", ""), body)
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

    def _send(self, session: requests.Session, url: str, params: dict[str, str] | None) -> requests.Response:
        """One GET, redirects not followed (``_follow_redirects`` vets them)."""
        with self._lock:
            self.requests_sent += 1
        return session.get(
            url, params=params, headers=HEADERS, timeout=self.timeout, stream=True, allow_redirects=False
        )

    def _follow_redirects(
        self, session: requests.Session, response: requests.Response
    ) -> tuple[requests.Response, tuple[str, int] | None]:
        """Follow redirects that stay on the base URL's origin; stop at the first hop elsewhere.

        Returns (the first response that is not a redirect, None), or (the last redirect, closed; (the URL of
        the hop elsewhere, redirects left for it)). BingUnavailable past MAX_REDIRECTS hops or for a Location
        that is no http(s) URL."""
        for hop in range(MAX_REDIRECTS + 1):
            if not response.is_redirect:
                return response, None
            response.close()
            location = browser_url(response.headers.get("Location", ""), response.url)
            if location is None:
                where = response.headers.get("Location", "")
                raise BingUnavailable(f"Bing redirected to {where!r}, which is no http(s) URL: {response.url}")
            if hop == MAX_REDIRECTS:
                break
            if _origin(location) != self._origin:
                return response, (location, MAX_REDIRECTS - hop - 1)
            response = self._send(session, location, None)
        raise BingUnavailable(f"Bing redirected more than {MAX_REDIRECTS} times: {response.url}")

    def _fetch_elsewhere(self, url: str, max_redirects: int) -> _Page:
        """A redirect hop off Bing's origin, fetched by ``scraper.fetch`` with its checks (once, no retries)."""
        with self._lock:
            self.requests_sent += 1
        try:
            result = fetch_url(
                url,
                max_bytes=MAX_RESPONSE_BYTES,
                timeout=self.timeout,
                max_redirects=max_redirects,
                allow_private=self.allow_private,
            )
        except UnsafeURLError as exc:
            raise BingUnavailable(f"Bing redirected to a refused URL: {exc}") from exc
        except TooLargeError as exc:
            raise BingParseError(f"Bing response over {MAX_RESPONSE_BYTES} bytes: {url}") from exc
        except FetchError as exc:
            raise BingUnavailable(f"Bing redirected to {url}, which failed: {exc}") from exc
        return _Page(result.url, result.content_type, result.data)

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

    def _parse(self, page: _Page) -> list[WebResult]:
        """Results of a 2xx page; raises BingParseError / BingBlocked as the module docstring says."""
        mime = page.content_type.split(";")[0].strip().lower()
        if mime and mime not in _HTML_TYPES:
            raise BingParseError(f"Bing answered {mime!r}, expected text/html: {page.url}")
        text = page.body.decode(_charset(page.content_type), errors="replace")
        if "\x00" in text:
            raise BingParseError(f"Bing response is binary, expected HTML: {page.url}")
        results = parse_results(text, base_url=self.base_url)
        if not results and _looks_like_captcha(text, page.url):
            raise BingBlocked(f"Bing served a captcha / challenge page instead of results: {page.url}")
        return results
