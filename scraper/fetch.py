"""Safe URL fetching for "search by URL" and thumbnails: ``fetch_url(url) -> FetchResult``.

A URL typed by a user must not turn the server into a proxy onto its own network (SSRF). ``fetch_url``:

1. accepts only ``http`` / ``https`` URLs without userinfo (``user:pass@``), with a well-formed host; any port;
2. resolves the host the way the OS does (IPv4 literals in every ``inet_aton`` spelling: ``2130706433``,
   ``0x7f.1``, ``017700000001``, ``127.1``; IPv6 literals; names through ``getaddrinfo``) and refuses the URL
   when *any* address is not public unicast (table ``_V4_REFUSED`` / ``_V6_REFUSED``): loopback, RFC 1918
   private, unique-local fc00::/7, link-local 169.254/16 and fe80::/10, CGNAT 100.64/10, multicast, unspecified
   (0.0.0.0/8, ::), reserved 240/4 and broadcast, documentation / benchmarking ranges, IPv4-mapped and
   IPv4-compatible IPv6 (``::ffff:127.0.0.1``); NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged
   by the IPv4 address they embed;
3. connects to exactly the address it checked (no second DNS lookup, so DNS rebinding cannot swap it), sending
   the original ``Host`` header, and for https the original host name as SNI with certificate verification
   against that name;
4. follows redirects itself (at most ``max_redirects``), checking every hop as in 1-3;
5. streams the body, counting bytes, and aborts once it passes ``max_bytes`` (compressed and decompressed);
6. gives the whole fetch (all hops, connect, headers and body) ``timeout`` seconds of wall-clock time, enforced
   by socket timeouts plus a watchdog that shuts the socket down, so a server dripping bytes cannot hold it.
   Name resolution itself (``getaddrinfo``) cannot be interrupted and is not counted.

``allow_private=True`` skips the address check of step 2 (and only that); it exists for tests against a server
on 127.0.0.1.

Exceptions::

    FetchError                   base; also: timeout, DNS failure, connection / TLS failure, non-2xx status,
     │                           too many redirects, unsupported Content-Encoding
     ├── UnsafeURLError          refused before connecting: scheme, userinfo, malformed host or port, or a host
     │                           resolving to a non-public address (also on a redirect hop)
     └── TooLargeError           the body (or its declared Content-Length) exceeds max_bytes

Bad arguments (``max_bytes < 1``, ``timeout <= 0``, ``max_redirects < 0``) raise ValueError.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import quote, urljoin, urlsplit

__all__ = [
    "FetchError",
    "FetchResult",
    "TooLargeError",
    "UnsafeURLError",
    "address_refusal",
    "fetch_url",
    "parse_ipv4_loose",
]

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"

# getaddrinfo, as a module attribute so tests can stand in a fake resolver (no real DNS in tests).
_getaddrinfo = socket.getaddrinfo


class FetchError(Exception):
    """The URL could not be fetched (see the module docstring for the tree)."""


class UnsafeURLError(FetchError):
    """The URL, or a redirect hop, is refused before any connection is made."""


class TooLargeError(FetchError):
    """The response body exceeds ``max_bytes``."""


@dataclass(frozen=True)
class FetchResult:
    """A fetched body. url: the final URL (after redirects); content_type: the Content-Type header as sent
    ("application/octet-stream" when absent); data: the body, decompressed if the server compressed it."""

    url: str
    content_type: str
    data: bytes


# -------------------------------------------------------------------------------------------- address policy

_V4_REFUSED: list[tuple[IPv4Network, str]] = [
    (IPv4Network("0.0.0.0/8"), "unspecified / this-network"),
    (IPv4Network("10.0.0.0/8"), "private (RFC 1918)"),
    (IPv4Network("100.64.0.0/10"), "carrier-grade NAT (RFC 6598)"),
    (IPv4Network("127.0.0.0/8"), "loopback"),
    (IPv4Network("169.254.0.0/16"), "link-local"),
    (IPv4Network("172.16.0.0/12"), "private (RFC 1918)"),
    (IPv4Network("192.0.0.0/24"), "IETF protocol assignments"),
    (IPv4Network("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (IPv4Network("192.88.99.0/24"), "6to4 relay anycast"),
    (IPv4Network("192.168.0.0/16"), "private (RFC 1918)"),
    (IPv4Network("198.18.0.0/15"), "benchmarking"),
    (IPv4Network("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (IPv4Network("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("240.0.0.0/4"), "reserved / broadcast"),
]

_V6_REFUSED: list[tuple[IPv6Network, str]] = [
    (IPv6Network("::/128"), "unspecified"),
    (IPv6Network("::1/128"), "loopback"),
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped IPv6"),
    (IPv6Network("::/96"), "IPv4-compatible IPv6"),
    (IPv6Network("64:ff9b:1::/48"), "local-use NAT64"),
    (IPv6Network("100::/64"), "discard-only"),
    (IPv6Network("2001::/23"), "IETF protocol assignments (Teredo, ORCHID, benchmarking)"),
    (IPv6Network("2001:db8::/32"), "documentation"),
    (IPv6Network("3fff::/20"), "documentation"),
    (IPv6Network("fc00::/7"), "unique-local (private)"),
    (IPv6Network("fe80::/10"), "link-local"),
    (IPv6Network("fec0::/10"), "site-local (deprecated)"),
    (IPv6Network("ff00::/8"), "multicast"),
]
_V6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")


def address_refusal(ip: IPv4Address | IPv6Address) -> str | None:
    """Why ``ip`` must not be contacted (e.g. "loopback (127.0.0.0/8)"), or None for a public unicast address.

    NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged by the IPv4 address they carry; any IPv6
    address outside 2000::/3 that no rule names is "reserved".
    """
    if isinstance(ip, IPv4Address):
        for net, why in _V4_REFUSED:
            if ip in net:
                return f"{why} ({net})"
        return None
    ip = IPv6Address(ip.packed)  # drop any %scope
    for net, why in _V6_REFUSED:
        if ip in net:
            return f"{why} ({net})"
    for net in (_NAT64, _SIX_TO_FOUR):
        if ip in net:
            v4 = IPv4Address(ip.packed[-4:]) if net is _NAT64 else ip.sixtofour
            assert v4 is not None
            inner = address_refusal(v4)
            return None if inner is None else f"{net} embedding {v4}, {inner}"
    if ip not in _V6_GLOBAL_UNICAST:
        return "reserved (outside 2000::/3)"
    return None


def parse_ipv4_loose(host: str) -> IPv4Address | None:
    """``host`` read as an IPv4 literal the way ``inet_aton`` reads it, or None when it is not one.

    1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part fills the remaining
    bytes: ``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1`` are all 127.0.0.1.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            digits, base = part[2:], 16
            if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
                return None
        elif len(part) > 1 and part[0] == "0":
            digits, base = part[1:], 8
            if not all(c in "01234567" for c in digits):
                return None
        else:
            digits, base = part, 10
            if not digits or not all(c in "0123456789" for c in digits):
                return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return IPv4Address(number)


# ------------------------------------------------------------------------------------------ URL → target


@dataclass(frozen=True)
class _Target:
    url: str
    tls: bool
    host: str  # ASCII host name or canonical IP text (no brackets): SNI and certificate name
    host_header: str
    port: int
    request_target: str
    addresses: tuple[IPv4Address | IPv6Address, ...]


def _ascii_host(host: str, url: str) -> str:
    try:
        ascii_host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError as exc:
        raise UnsafeURLError(f"refusing {url!r}: host {host!r} is not a valid domain name ({exc})") from exc
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise UnsafeURLError(f"refusing {url!r}: host {host!r} is not a valid domain name")
    return ascii_host


def _resolve(host: str, port: int, url: str) -> tuple[IPv4Address | IPv6Address, ...]:
    try:
        infos = _getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r} of {url!r}: {exc}") from exc
    addresses: list[IPv4Address | IPv6Address] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise FetchError(f"host {host!r} of {url!r} resolved to no IPv4 / IPv6 address")
    return tuple(addresses)


def _target(url: str, allow_private: bool) -> _Target:
    """Parse and vet ``url``; resolve its host once. Raises UnsafeURLError / FetchError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"refusing {url!r}: malformed URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"refusing {url!r}: scheme must be http or https, got {scheme or 'none'!r}")
    if "@" in parts.netloc or parts.username is not None:
        raise UnsafeURLError(f"refusing {url!r}: URLs with userinfo (user@host) are not accepted")
    if any(c.isspace() or ord(c) < 32 or c in "\\\x7f" for c in parts.netloc):
        raise UnsafeURLError(f"refusing {url!r}: the host part holds whitespace, control characters or '\\'")
    host = parts.hostname or ""
    if not host:
        raise UnsafeURLError(f"refusing {url!r}: no host")
    if port == 0:
        raise UnsafeURLError(f"refusing {url!r}: port 0")
    tls = scheme == "https"
    port = port or (443 if tls else 80)

    literal: IPv4Address | IPv6Address | None
    if ":" in host:
        try:
            literal = IPv6Address(host)
        except ValueError as exc:
            raise UnsafeURLError(f"refusing {url!r}: bad IPv6 literal {host!r}") from exc
    else:
        literal = parse_ipv4_loose(host)
    if literal is not None:
        addresses: tuple[IPv4Address | IPv6Address, ...] = (literal,)
        name = str(IPv6Address(literal.packed)) if isinstance(literal, IPv6Address) else str(literal)
        shown = f"[{name}]" if isinstance(literal, IPv6Address) else name
    else:
        name = _ascii_host(host, url)
        shown = name
        addresses = _resolve(name, port, url)

    if not allow_private:
        for ip in addresses:
            why = address_refusal(ip)
            if why is not None:
                raise UnsafeURLError(f"refusing {url!r}: host {host!r} is {ip}, a {why} address")

    default_port = 443 if tls else 80
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_PATH_SAFE + "?")
    return _Target(
        url=url,
        tls=tls,
        host=name,
        host_header=host_header,
        port=port,
        request_target=path + (f"?{query}" if query else ""),
        addresses=addresses,
    )


# --------------------------------------------------------------------------------------------------- transport


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Default verifying TLS context (system CA store, hostname check); tests replace it."""
    return ssl.create_default_context()


class _Deadline:
    def __init__(self, seconds: float, url: str) -> None:
        self.seconds = seconds
        self.url = url
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def error(self) -> FetchError:
        return FetchError(f"fetching {self.url!r} timed out after {self.seconds:g} s")


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTPConnection whose socket is made beforehand (connected to a vetted IP, TLS already wrapped)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__("pinned.invalid", timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # the socket is already connected
        if self.sock is None:
            raise http.client.NotConnected("pinned connection has no socket")


def _connect(target: _Target, deadline: _Deadline) -> socket.socket:
    """A socket to one of ``target.addresses`` (in order), TLS-wrapped with SNI / verification for https."""
    errors: list[str] = []
    for ip in target.addresses:
        sock = None
        try:
            sock = socket.create_connection((str(ip), target.port), timeout=deadline.remaining())
            if target.tls:
                sock = _ssl_context().wrap_socket(sock, server_hostname=target.host)
            return sock
        except ssl.SSLError as exc:  # certificate or handshake: another address will not do better
            if sock is not None:
                sock.close()
            raise FetchError(f"TLS with {target.host!r} ({ip}) failed for {target.url!r}: {exc}") from exc
        except TimeoutError as exc:
            if sock is not None:
                sock.close()
            raise deadline.error() from exc
        except OSError as exc:
            if sock is not None:
                sock.close()
            errors.append(f"{ip}: {exc}")
    raise FetchError(f"cannot connect to {target.host!r} for {target.url!r}: {'; '.join(errors)}")


class _Watchdog:
    """Shuts ``sock`` down when the deadline passes, waking any blocked recv (a dripping server cannot stall)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self.fired = threading.Event()
        self._sock = sock
        self._timer = threading.Timer(deadline.remaining(), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _decoder(encoding: str, url: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
    raise FetchError(f"{url!r} answered with unsupported Content-Encoding {encoding!r}")


def _read_body(
    response: http.client.HTTPResponse, sock: socket.socket, url: str, max_bytes: int, deadline: _Deadline
) -> bytes:
    """The body, at most ``max_bytes`` both as received and after decompression."""
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise TooLargeError(f"{url!r} declares {int(declared)} bytes, more than max_bytes={max_bytes}")
    decoder = _decoder(response.getheader("Content-Encoding") or "", url)
    chunks: list[bytes] = []
    received = size = 0
    while True:
        sock.settimeout(deadline.remaining())
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise TooLargeError(f"{url!r} sent more than max_bytes={max_bytes} bytes")
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, max_bytes - size + 1)
            except zlib.error as exc:
                raise FetchError(f"{url!r}: corrupt compressed body ({exc})") from exc
        size += len(chunk)
        if size > max_bytes:
            raise TooLargeError(f"{url!r} body decompresses to more than max_bytes={max_bytes} bytes")
        chunks.append(chunk)
    if decoder is not None:
        tail = decoder.flush()
        size += len(tail)
        if size > max_bytes:
            raise TooLargeError(f"{url!r} body decompresses to more than max_bytes={max_bytes} bytes")
        chunks.append(tail)
    return b"".join(chunks)


def _one_hop(target: _Target, max_bytes: int, deadline: _Deadline) -> tuple[int, str | None, str, bytes]:
    """GET ``target`` once: (status, Location header, Content-Type, body; body only for 2xx)."""
    sock = _connect(target, deadline)
    watchdog = _Watchdog(sock, deadline)
    conn = _PinnedConnection(sock, timeout=deadline.remaining())
    try:
        conn.putrequest("GET", target.request_target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target.host_header)
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept", "image/avif,image/webp,image/*,text/html;q=0.8,*/*;q=0.5")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Connection", "close")
        conn.endheaders()
        sock.settimeout(deadline.remaining())
        response = conn.getresponse()
        status = response.status
        location = response.getheader("Location")
        content_type = response.getheader("Content-Type") or "application/octet-stream"
        body = b""
        if 200 <= status < 300:
            body = _read_body(response, sock, target.url, max_bytes, deadline)
        if watchdog.fired.is_set():  # the shutdown may read as a clean EOF: never return a cut-off body
            raise deadline.error()
        return status, location, content_type, body
    except FetchError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or watchdog.fired.is_set() or deadline.expired():
            raise deadline.error() from exc
        raise FetchError(f"connection to {target.host!r} failed for {target.url!r}: {exc!r}") from exc
    finally:
        watchdog.cancel()
        conn.close()


# ------------------------------------------------------------------------------------------------------ public


def fetch_url(
    url: str,
    *,
    max_bytes: int = 10_000_000,
    timeout: float = 10.0,
    max_redirects: int = 5,
    allow_private: bool = False,
) -> FetchResult:
    """GET ``url`` safely (see the module docstring) and return its body.

    max_bytes: largest body accepted (as received and decompressed). timeout: wall-clock seconds for the whole
    fetch, redirects included. max_redirects: redirect hops followed (301/302/303/307/308), each one vetted.
    allow_private: skip the public-address check (tests against 127.0.0.1 only).
    Raises UnsafeURLError, TooLargeError or FetchError; ValueError for bad arguments.
    """
    if not isinstance(url, str):
        raise TypeError(f"fetch_url: url must be a str, got {type(url).__name__}")
    if max_bytes < 1:
        raise ValueError(f"fetch_url: max_bytes must be >= 1, got {max_bytes}")
    if not timeout > 0:
        raise ValueError(f"fetch_url: timeout must be > 0 seconds, got {timeout}")
    if max_redirects < 0:
        raise ValueError(f"fetch_url: max_redirects must be >= 0, got {max_redirects}")
    url = url.strip()
    deadline = _Deadline(float(timeout), url)
    for hop in range(max_redirects + 1):
        target = _target(url, allow_private)
        status, location, content_type, body = _one_hop(target, max_bytes, deadline)
        if 200 <= status < 300:
            return FetchResult(url=url, content_type=content_type, data=body)
        if status in _REDIRECTS and location:
            if hop == max_redirects:
                break
            url = urljoin(url, location.strip())
            continue
        raise FetchError(f"{url!r} answered HTTP {status}, expected 2xx")
    raise FetchError(f"too many redirects fetching {deadline.url!r}: more than max_redirects={max_redirects}")
