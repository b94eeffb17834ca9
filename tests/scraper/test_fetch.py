"""scraper.fetch: every refused address class, URL tricks, redirects vetted per hop, DNS pinning, size limits,
timeouts and TLS, against a server on 127.0.0.1 and a fake resolver (no real DNS, no internet).

The reference for the IPv4 spellings is the C library's ``inet_aton`` (``socket.inet_aton``).
"""

from __future__ import annotations

import datetime as dt
import gzip
import socket
import ssl
import threading
import time
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from scraper import fetch
from scraper.fetch import (
    FetchError,
    FetchResult,
    TooLargeError,
    UnsafeURLError,
    address_refusal,
    fetch_url,
    parse_ipv4_loose,
)
from tests.scraper.conftest import fake_resolver, reply

PUBLIC = "93.184.216.34"  # a public address; tests never connect to it


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if fetch tries to resolve a name or open a connection."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"unexpected network use: {args!r}")

    monkeypatch.setattr(fetch, "_getaddrinfo", forbidden)
    monkeypatch.setattr(fetch, "_connect", forbidden)


# ------------------------------------------------------------------------------------------------ refusals

REFUSED_LITERALS = [
    # loopback, in plain and obfuscated IPv4 spellings (all are 127.0.0.1 to inet_aton)
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:8080/admin", "loopback"),
    ("https://127.0.0.1/", "loopback"),
    ("http://127.255.255.254/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7F.0x0.0x0.0x1/", "loopback"),
    ("HTTP://LOCALHOST.127.0.0.1.example/", None),  # a name, not a literal: goes to the (fake) resolver
    # private RFC 1918
    ("http://10.0.0.1/", "private"),
    ("http://012.0.0.1/", "private"),  # octal 012 = 10
    ("http://167772161/", "private"),  # 10.0.0.1
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://3232235777/", "private"),  # 192.168.1.1
    ("http://0xc0.0xa8.1.1/", "private"),
    # link-local (cloud metadata), CGNAT, multicast, unspecified, reserved, broadcast, special ranges
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://2852039166/", "link-local"),  # 169.254.169.254
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.255/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0.0.0.1/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved / broadcast"),
    ("http://4294967295/", "reserved / broadcast"),
    ("http://192.0.0.8/", "IETF protocol"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://192.88.99.1/", "6to4 relay"),
    # IPv6
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]:8000/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456:789a::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[febf::1]/", "link-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[ff05::1:3]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),  # mapped is refused outright, even for a public IPv4
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[::8.8.8.8]/", "IPv4-compatible"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64 of 127.0.0.1
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 of 169.254.169.254
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://[2002:c0a8:101::1]/", "private"),  # 6to4 of 192.168.1.1
    ("http://[2001::1]/", "Teredo"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[100::1]/", "discard"),
    ("http://[4000::1]/", "reserved"),
    ("http://[::2]/", "IPv4-compatible"),
]


@pytest.mark.parametrize(("url", "why"), [c for c in REFUSED_LITERALS if c[1] is not None])
def test_refuses_non_public_literals(url: str, why: str, no_network) -> None:
    with pytest.raises(UnsafeURLError, match=why):
        fetch_url(url)


def test_obfuscated_name_like_literal_goes_to_resolver(monkeypatch) -> None:
    calls: list[str] = []
    table = {"localhost.127.0.0.1.example": ["127.0.0.1"]}
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver(table, calls))
    with pytest.raises(UnsafeURLError, match="loopback"):
        fetch_url("HTTP://LOCALHOST.127.0.0.1.example/")
    assert calls == ["localhost.127.0.0.1.example"]


SPELLINGS = [
    "127.0.0.1", "2130706433", "0x7f.1", "017700000001", "127.1", "127.0.1", "0x7f000001", "0177.0.0.1",
    "0x7F.0x0.0x0.0x1", "0", "00", "0x0", "1.2.3", "4294967295", "0xffffffff", "037777777777", "3232235777",
    "192.168.257", "10.0.65535", "1.16777215", "8.8.8.8", "93.184.216.34",
    # not IPv4 literals for inet_aton
    "4294967296", "0x", "0x.1", "08", "09.1.1.1", "1..2", ".1", "1.", "1.2.3.4.5", "256.1.1.1", "1.2.3.256",
    "1.0x1000000", "1.2.65536", "0x1g", "-1", "+1", "1e3", "", "example.com", "127.0.0.1.",
]  # fmt: skip


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_ipv4_spellings_match_inet_aton(spelling: str) -> None:
    try:
        expected = IPv4Address(socket.inet_aton(spelling))
    except OSError:
        expected = None
    assert parse_ipv4_loose(spelling) == expected


@pytest.mark.parametrize(
    "address", ["8.8.8.8", PUBLIC, "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
                "192.167.255.255", "169.253.255.255", "223.255.255.255", "2606:4700:4700::1111", "2a00:1450::1",
                "64:ff9b::808:808", "2002:808:808::1"]
)  # fmt: skip
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://example.com:70/",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.com/a.jpg",
        "example.com/a.jpg",
        "",
    ],
)
def test_refuses_other_schemes(url: str, no_network) -> None:
    with pytest.raises(UnsafeURLError, match="scheme"):
        fetch_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user@{PUBLIC}/",
        f"http://user:pass@{PUBLIC}/",
        f"http://{PUBLIC}@127.0.0.1/",
        f"http://{PUBLIC}:80@127.0.0.1/",
        "http://@127.0.0.1/",
        f"http://{PUBLIC}\\@127.0.0.1/",
    ],
)
def test_refuses_userinfo(url: str, no_network) -> None:
    with pytest.raises(UnsafeURLError, match="userinfo"):
        fetch_url(url)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://[::1/", "malformed"),
        (f"http://{PUBLIC}:99999/", "malformed"),
        (f"http://{PUBLIC}:0/", "port 0"),
        ("http:///path", "no host"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com\\.evil/", "'\\\\'"),
        ("http://[2001:db8::zz]/", "IPv6"),
        ("http://-bad-.example/", "domain name"),
        ("http://a..b/", "domain name"),
        ("http://" + "a" * 64 + ".example/", "domain name"),
    ],
)
def test_refuses_malformed(url: str, match: str, no_network) -> None:
    with pytest.raises(UnsafeURLError, match=match):
        fetch_url(url)


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"img.example": ["10.0.0.5"]}, "private"),
        ({"img.example": ["127.0.0.1"]}, "loopback"),
        ({"img.example": ["::1"]}, "loopback"),
        ({"img.example": ["169.254.169.254"]}, "link-local"),
        ({"img.example": ["fd00::5"]}, "unique-local"),
        ({"img.example": [PUBLIC, "127.0.0.1"]}, "loopback"),  # any bad address refuses the host
        ({"img.example": ["2606:4700::1", "::ffff:192.168.0.1"]}, "IPv4-mapped"),
    ],
)
def test_refuses_names_resolving_to_non_public(monkeypatch, table, why: str) -> None:
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver(table))
    monkeypatch.setattr(fetch, "_connect", lambda *a: pytest.fail("connected to a refused host"))
    with pytest.raises(UnsafeURLError, match=why):
        fetch_url("https://img.example/cat.jpg")


def test_unresolvable_host(monkeypatch) -> None:
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver({}))
    with pytest.raises(FetchError, match="cannot resolve") as info:
        fetch_url("http://nowhere.example/")
    assert not isinstance(info.value, UnsafeURLError)


def test_idn_host_is_resolved_as_punycode(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver({"xn--bcher-kva.example": ["10.1.1.1"]}, calls))
    with pytest.raises(UnsafeURLError, match="private"):
        fetch_url("http://bücher.example/")
    assert calls == ["xn--bcher-kva.example"]


# ----------------------------------------------------------------------------------------- DNS pinning


def test_connects_to_the_checked_address_without_second_lookup(monkeypatch) -> None:
    """A rebinding resolver answers public first, loopback after: only the first answer may be used."""
    answers = iter([[PUBLIC], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[str] = []

    def rebinding(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        return fake_resolver({host: next(answers)})(host, port)

    connected: list[tuple] = []

    def refuse_connection(address, timeout=None, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError("test: no connection")

    monkeypatch.setattr(fetch, "_getaddrinfo", rebinding)
    monkeypatch.setattr(fetch.socket, "create_connection", refuse_connection)
    with pytest.raises(FetchError, match="cannot connect"):
        fetch_url("http://rebind.example/img.png")
    assert calls == ["rebind.example"]
    assert connected == [(PUBLIC, 80)]


def test_pinned_connection_sends_original_host(serve, monkeypatch) -> None:
    server = serve(lambda h, hit: reply(h, 200, b"\x89PNG-data", content_type="image/png"))
    answers = iter([["127.0.0.1"], ["10.255.255.1"]])  # a second lookup would go somewhere unroutable
    calls: list[str] = []

    def resolver(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        return fake_resolver({host: next(answers)})(host, port)

    monkeypatch.setattr(fetch, "_getaddrinfo", resolver)
    url = f"http://pics.example:{server.port}/a%20b/c.png?x=1&y=%2F"
    got = fetch_url(url, allow_private=True, timeout=5)
    assert got == FetchResult(url=url, content_type="image/png", data=b"\x89PNG-data")
    assert calls == ["pics.example"]
    (seen,) = server.seen
    assert seen.path == "/a%20b/c.png?x=1&y=%2F"
    assert seen.headers["host"] == f"pics.example:{server.port}"
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["user-agent"].startswith("Mozilla/5.0")


def test_path_is_percent_encoded(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, b"ok", content_type="text/plain"))
    fetch_url(f"{server.url}/caf\u00e9 cup.jpg?q=a b\r\nX-Injected: 1", allow_private=True, timeout=5)
    (seen,) = server.seen
    # urlsplit drops CR / LF / TAB as WHATWG parsers do; the rest is percent-encoded: no header injection
    assert seen.path == "/caf%C3%A9%20cup.jpg?q=a%20bX-Injected:%201"
    assert "x-injected" not in seen.headers
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"


# --------------------------------------------------------------------------------------------- redirects


def test_redirects_followed_and_final_url_reported(serve) -> None:
    def route(handler, hit: int) -> None:
        if handler.path == "/start":
            reply(handler, 302, headers={"Location": "/middle"})
        elif handler.path == "/middle":
            reply(handler, 301, headers={"Location": "end.jpg?v=2"})
        else:
            reply(handler, 200, b"JPEGDATA", content_type="image/jpeg")

    server = serve(route)
    got = fetch_url(f"{server.url}/start", allow_private=True, timeout=5)
    assert got.url == f"{server.url}/end.jpg?v=2"
    assert got.data == b"JPEGDATA"
    assert [s.path for s in server.seen] == ["/start", "/middle", "/end.jpg?v=2"]


def test_too_many_redirects(serve) -> None:
    server = serve(lambda h, hit: reply(h, 307, headers={"Location": f"/hop{hit + 1}"}))
    with pytest.raises(FetchError, match="too many redirects"):
        fetch_url(f"{server.url}/hop0", allow_private=True, max_redirects=3, timeout=5)
    assert server.hits == 4  # the first request and 3 redirects followed
    with pytest.raises(FetchError, match="too many redirects"):
        fetch_url(f"{server.url}/again", allow_private=True, max_redirects=0, timeout=5)


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://0x7f.0.0.2/", "loopback"),  # 127.0.0.2
        ("http://[::ffff:127.0.0.2]/", "IPv4-mapped"),
        ("http://internal.example/", "private"),
        ("file:///etc/passwd", "scheme"),
        ("http://u:p@internal.example/", "userinfo"),
    ],
)
def test_redirect_to_refused_target_is_refused_at_the_hop(serve, monkeypatch, location: str, match: str) -> None:
    # Hop 1 needs a reachable server, which lives on 127.0.0.1: the policy treats exactly that address as
    # public here, and every other address through the real rules. 127.0.0.2 stays loopback.
    real = fetch.address_refusal
    monkeypatch.setattr(fetch, "address_refusal", lambda ip: None if ip == IPv4Address("127.0.0.1") else real(ip))
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver({"internal.example": ["192.168.0.10"]}))
    connects: list[object] = []
    real_connect = fetch._connect
    monkeypatch.setattr(fetch, "_connect", lambda t, d: connects.append(t.addresses) or real_connect(t, d))

    server = serve(lambda h, hit: reply(h, 302, headers={"Location": location}))
    with pytest.raises(UnsafeURLError, match=match):
        fetch_url(f"{server.url}/image.jpg", timeout=5)
    assert server.hits == 1
    assert connects == [(IPv4Address("127.0.0.1"),)]  # no connection attempted for the refused hop


def test_http_error_status(serve) -> None:
    server = serve(lambda h, hit: reply(h, 404, b"missing"))
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{server.url}/x.jpg", allow_private=True, timeout=5)


# ------------------------------------------------------------------------------------------------ size


def stream_forever(handler, hit: int) -> None:
    """200 without Content-Length (body ends at close) that never ends: only a streaming limit stops it."""
    handler.protocol_version = "HTTP/1.0"
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    block = b"x" * 65536
    for _ in range(10_000):  # 655 MB: far beyond anything a test should buffer
        handler.wfile.write(block)


def test_size_limit_enforced_while_streaming(serve) -> None:
    server = serve(stream_forever)
    with pytest.raises(TooLargeError, match="more than max_bytes=100000"):
        fetch_url(f"{server.url}/big", allow_private=True, max_bytes=100_000, timeout=10)


def test_size_limit_on_chunked_body(serve) -> None:
    def route(handler, hit: int) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b"8000\r\n" + b"y" * 0x8000 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    server = serve(route)
    with pytest.raises(TooLargeError):
        fetch_url(f"{server.url}/chunked", allow_private=True, max_bytes=50_000, timeout=10)


def test_declared_length_over_limit_refused_before_reading(serve) -> None:
    def route(handler, hit: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000000000")
        handler.end_headers()
        handler.wfile.write(b"z" * 10)

    server = serve(route)
    with pytest.raises(TooLargeError, match="declares 1000000000 bytes"):
        fetch_url(f"{server.url}/liar", allow_private=True, max_bytes=1_000_000, timeout=5)


def test_size_limit_boundary(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, b"a" * (1000 + hit), content_type="image/gif"))
    got = fetch_url(f"{server.url}/exact", allow_private=True, max_bytes=1000, timeout=5)
    assert got.data == b"a" * 1000 and got.content_type == "image/gif"
    with pytest.raises(TooLargeError):
        fetch_url(f"{server.url}/one-more", allow_private=True, max_bytes=1000, timeout=5)


def test_gzip_body_decoded_and_bomb_refused(serve) -> None:
    payload = bytes(range(256)) * 40
    bomb = gzip.compress(b"\x00" * 20_000_000)  # ~20 KB on the wire, 20 MB decoded

    def route(handler, hit: int) -> None:
        body = gzip.compress(payload) if handler.path == "/small" else bomb
        reply(handler, 200, body, content_type="application/octet-stream", headers={"Content-Encoding": "gzip"})

    server = serve(route)
    assert fetch_url(f"{server.url}/small", allow_private=True, timeout=5).data == payload
    assert len(bomb) < 1_000_000
    with pytest.raises(TooLargeError, match="decompresses"):
        fetch_url(f"{server.url}/bomb", allow_private=True, max_bytes=1_000_000, timeout=5)


def test_missing_content_type_defaults(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, b"raw", content_type=None))
    assert fetch_url(server.url, allow_private=True, timeout=5).content_type == "application/octet-stream"


# --------------------------------------------------------------------------------------------- timeouts


def test_timeout_waiting_for_response(serve) -> None:
    def route(handler, hit: int) -> None:
        time.sleep(1.5)
        reply(handler, 200, b"late")

    server = serve(route)
    with pytest.raises(FetchError, match="timed out after 0.2 s"):
        fetch_url(f"{server.url}/slow", allow_private=True, timeout=0.2)


def test_timeout_is_total_not_per_read(serve) -> None:
    """A server dripping one byte every 50 ms never trips a per-read timeout; the 0.3 s deadline must."""

    def route(handler, hit: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b"d")
            handler.wfile.flush()
            time.sleep(0.05)

    server = serve(route)
    with pytest.raises(FetchError, match="timed out after 0.3 s"):
        fetch_url(f"{server.url}/drip", allow_private=True, timeout=0.3)


def test_timeout_on_dripping_headers(serve) -> None:
    """Headers trickling in (each within the per-read timeout) must still be cut off at the deadline: the
    watchdog shuts the socket down, so the server cannot finish sending its 60 headers (6 s of dripping)."""
    outcome: list[str] = []
    done = threading.Event()

    def route(handler, hit: int) -> None:
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(60):
                handler.wfile.write(f"X-Slow-{i}: 1\r\n".encode())
                handler.wfile.flush()
                time.sleep(0.1)
            handler.wfile.write(b"Content-Length: 2\r\n\r\nok")
            handler.wfile.flush()
            outcome.append("finished")
        except ConnectionError:
            outcome.append("cut off")
        finally:
            done.set()

    server = serve(route)
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(f"{server.url}/drip-headers", allow_private=True, timeout=0.3)
    assert done.wait(10.0)
    assert outcome == ["cut off"]


# -------------------------------------------------------------------------------------------------- TLS


def make_tls(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``name`` signed by a fresh CA, client context trusting that CA)."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography creates the test certificates")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("crema test CA", ca_key, "crema test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(name, key, "crema test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    return server_ctx, client_ctx


def test_https_pins_ip_and_verifies_original_name(serve, monkeypatch, tmp_path: Path) -> None:
    server_ctx, client_ctx = make_tls(tmp_path, "images.example")
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)
    server = serve(lambda h, hit: reply(h, 200, b"secure-bytes", content_type="image/webp"), tls=server_ctx)
    monkeypatch.setattr(fetch, "_ssl_context", lambda: client_ctx)
    monkeypatch.setattr(
        fetch, "_getaddrinfo", fake_resolver({"images.example": ["127.0.0.1"], "wrong.example": ["127.0.0.1"]})
    )

    got = fetch_url(f"https://images.example:{server.port}/p.webp", allow_private=True, timeout=5)
    assert got.data == b"secure-bytes" and got.content_type == "image/webp"
    assert sni == ["images.example"]
    assert server.seen[0].headers["host"] == f"images.example:{server.port}"

    # same IP, other name: the certificate does not match, so the fetch fails (no silent fallback)
    with pytest.raises(FetchError, match="TLS") as info:
        fetch_url(f"https://wrong.example:{server.port}/p.webp", allow_private=True, timeout=5)
    assert "certificate" in str(info.value).lower() or "hostname" in str(info.value).lower()
    # an untrusted CA fails too
    monkeypatch.setattr(fetch, "_ssl_context", lambda: ssl.create_default_context())
    with pytest.raises(FetchError, match="TLS"):
        fetch_url(f"https://images.example:{server.port}/p.webp", allow_private=True, timeout=5)


# ------------------------------------------------------------------------------------------------ misc


def test_exception_tree() -> None:
    assert issubclass(UnsafeURLError, FetchError) and issubclass(TooLargeError, FetchError)
    assert not issubclass(TooLargeError, UnsafeURLError)


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"timeout": 0}, {"timeout": -1.0}, {"max_redirects": -1}])
def test_argument_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        fetch_url("http://127.0.0.1/", allow_private=True, **kwargs)
