"""scraper.bing: the tile parser on hand-written fixtures, and BingClient against a fake Bing on 127.0.0.1.

The expected results are written out by hand from the fixtures (tests/scraper/fixtures/*.html), which follow
Bing's async result layout: ``ul.dgControl_list > li > ... > a.iusc[m]`` with HTML-escaped JSON in ``m``.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from urllib.parse import parse_qs, urlsplit

import pytest

from scraper import bing, fetch
from scraper.bing import (
    BingBlocked,
    BingClient,
    BingParseError,
    BingUnavailable,
    ScraperError,
    WebResult,
    parse_results,
)
from scraper.fetch import fetch_url
from tests.scraper.conftest import fake_resolver, fixture_text, reply


def mug(n: int) -> WebResult:
    """The result the page fixtures hold for mug ``n``."""
    return WebResult(
        image_url=f"https://cdn.example.com/img/mug{n}.jpg",
        thumb_url=f"https://tse1.mm.bing.net/th?id=OIP.m{n}&pid=15.1",
        page_url=f"https://shop.example.org/mugs/{n}.html",
        title=f"Coffee mug number {n}",
        source="shop.example.org",
    )


def client_for(server, **kwargs) -> BingClient:
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("backoff", 0.0)
    return BingClient(server.url, **kwargs)


def pages_route(handler, hit: int) -> None:
    """Fake Bing: first=0 -> page 0 fixture, first=<count> -> page 1 fixture, later pages empty."""
    query = parse_qs(urlsplit(handler.path).query)
    first = int(query["first"][0])
    count = int(query["count"][0])
    name = {0: "async_page0.html", count: "async_page1.html"}.get(first)
    reply(handler, 200, fixture_text(name).encode() if name else b"")


# ------------------------------------------------------------------------------------------------------ parser


def test_parse_page_fixture() -> None:
    assert parse_results(fixture_text("async_page0.html")) == [mug(n) for n in range(1, 6)]


def test_parse_edge_cases() -> None:
    got = parse_results(fixture_text("edge_cases.html"))
    want = [
        # tile 1: &amp; in the attribute decodes to & in URLs and title; U+E000/E001 removed; non-ASCII kept
        WebResult(
            image_url="http://img.example.net/a.png?w=800&h=600",
            thumb_url="https://tse2.mm.bing.net/th?id=OIP.a&w=300&h=200",
            page_url="http://blog.example.net/post?id=7&lang=en",
            title="Café mug & saucer",
            source="blog.example.net",
        ),
        # tile 2: markers as JSON escapes, whitespace collapsed, class list "iusc hoff"
        WebResult(
            image_url="https://www.example.com/x.jpg",
            thumb_url="https://tse3.mm.bing.net/th?id=OIP.x",
            page_url="https://www.example.com/x",
            title="Espresso cup",
            source="www.example.com",
        ),
        # tile 3: no turl -> the tile's <img src>; no t -> the visible title (markers stripped there too)
        WebResult(
            image_url="https://pics.example.org/3.webp",
            thumb_url="https://tse4.mm.bing.net/th?id=OIP.fallback3",
            page_url="https://pics.example.org/p/3",
            title="Visible title 3",
            source="pics.example.org",
        ),
        # tile 4: no purl -> the image is its own page; relative turl joined to Bing; host lower-cased, no port
        WebResult(
            image_url="https://Images.Example.COM:8443/4.jpg",
            thumb_url="https://www.bing.com/th?id=OIP.rel4",
            page_url="https://Images.Example.COM:8443/4.jpg",
            title="four",
            source="images.example.com",
        ),
        # tiles 5-13 skipped (no murl, non-http murl x5, broken JSON, non-object JSON, duplicate of tile 1)
        # tile 14: upper-case scheme is http(s); javascript: purl and data: turl are dropped; &#xE000; markers
        WebResult(
            image_url="HTTPS://upper.example.com/14.gif",
            thumb_url="",
            page_url="HTTPS://upper.example.com/14.gif",
            title="Latte art",
            source="upper.example.com",
        ),
        # tile 15: a.iusc without m, and a.iuscx with m: both ignored
    ]
    assert got == want


def test_parse_relative_thumbnail_joins_given_base() -> None:
    got = parse_results(fixture_text("edge_cases.html"), base_url="http://127.0.0.1:9")
    assert got[3].thumb_url == "http://127.0.0.1:9/th?id=OIP.rel4"


def test_parse_duplicates_keep_first() -> None:
    tile = (
        '<a class="iusc" m="{{&quot;murl&quot;:&quot;https://a.example/1.jpg&quot;,&quot;t&quot;:&quot;{}&quot;}}"></a>'
    )
    html = "<ul>" + tile.format("first") + tile.format("second") + tile.format("third") + "</ul>"
    got = parse_results(html)
    assert [r.title for r in got] == ["first"]


def test_parse_no_tiles_and_empty_return_empty() -> None:
    assert parse_results(fixture_text("garbage.html")) == []
    assert parse_results(fixture_text("captcha.html")) == []  # the client, not the parser, calls this blocked
    assert parse_results("") == []
    assert parse_results("  \n ") == []
    assert parse_results("<p>hello</p>") == []


@pytest.mark.parametrize("text", ['{"value": []}', "Service temporarily unavailable", "\x89PNG binary"])
def test_parse_non_markup_raises(text: str) -> None:
    with pytest.raises(BingParseError, match="not HTML"):
        parse_results(text)


def test_web_result_to_dict() -> None:
    assert mug(1).to_dict() == {
        "image_url": "https://cdn.example.com/img/mug1.jpg",
        "thumb_url": "https://tse1.mm.bing.net/th?id=OIP.m1&pid=15.1",
        "page_url": "https://shop.example.org/mugs/1.html",
        "title": "Coffee mug number 1",
        "source": "shop.example.org",
    }
    assert json.loads(json.dumps(mug(1).to_dict())) == mug(1).to_dict()


def test_exception_tree() -> None:
    for exc in (BingUnavailable, BingBlocked, BingParseError):
        assert issubclass(exc, ScraperError)
    assert not issubclass(BingBlocked, BingUnavailable)


# ------------------------------------------------------------------------------------------------------ client


def test_request_shape_and_headers(serve) -> None:
    server = serve(pages_route)
    results = client_for(server).search("coffee  mug ", page=0, count=20)
    assert results == [mug(n) for n in range(1, 6)]
    (seen,) = server.seen
    parts = urlsplit(seen.path)
    assert parts.path == "/images/async"
    assert parse_qs(parts.query) == {"q": ["coffee mug"], "first": ["0"], "count": ["20"], "mmasync": ["1"]}
    assert seen.headers["user-agent"].startswith("Mozilla/5.0 (")
    assert "text/html" in seen.headers["accept"]
    assert seen.headers["accept-language"].startswith("en")
    assert seen.headers["accept-encoding"] == "gzip, deflate"


def test_paging_does_not_repeat_results(serve) -> None:
    server = serve(pages_route)
    client = client_for(server)
    assert client.search("coffee mug", page=0, count=35) == [mug(n) for n in range(1, 6)]
    assert client.search("coffee mug", page=1, count=35) == [mug(6), mug(7)]  # mug4, mug5 already returned
    assert client.search("coffee mug", page=2, count=35) == []
    assert [parse_qs(urlsplit(s.path).query)["first"] for s in server.seen] == [["0"], ["35"], ["70"]]
    # cached pages come back unchanged; another query is independent of this one's history
    assert client.search("coffee mug", page=1, count=35) == [mug(6), mug(7)]
    assert client.search("tea cup", page=1, count=35) == [mug(n) for n in (4, 5, 6, 7)]
    assert server.hits == 4


def test_paging_in_reverse_order_still_no_repeats(serve) -> None:
    server = serve(pages_route)
    client = client_for(server)
    assert client.search("coffee mug", page=1) == [mug(n) for n in (4, 5, 6, 7)]
    assert client.search("coffee mug", page=0) == [mug(n) for n in (1, 2, 3)]


def test_429_then_success_with_retry_after(serve) -> None:
    def route(handler, hit: int) -> None:
        if hit < 2:
            reply(handler, 429, b"slow down", headers={"Retry-After": "0"})
        else:
            reply(handler, 200, fixture_text("async_page0.html").encode())

    server = serve(route)
    client = client_for(server, retries=3, backoff=5.0)  # a 5 s backoff would show: Retry-After 0 wins
    sleeps: list[float] = []
    client._sleep = sleeps.append
    assert client.search("coffee") == [mug(n) for n in range(1, 6)]
    assert server.hits == 3
    assert client.requests_sent == 3
    assert sleeps == [0.0, 0.0]


def test_retry_backoff_is_exponential_and_retry_after_small_is_honoured(serve) -> None:
    statuses = [500, 502, (429, "2"), 503, 200]

    def route(handler, hit: int) -> None:
        spec = statuses[hit]
        status, after = spec if isinstance(spec, tuple) else (spec, None)
        body = fixture_text("async_page0.html").encode() if status == 200 else b"oops"
        reply(handler, status, body, headers={"Retry-After": after} if after else None)

    server = serve(route)
    client = client_for(server, retries=4, backoff=0.5)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    assert len(client.search("coffee")) == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # backoff * 2**k, with the Retry-After of 2 s in third place
    assert server.hits == 5


def test_429_exhausted_is_blocked(serve) -> None:
    server = serve(lambda h, hit: reply(h, 429, b"no"))
    client = client_for(server, retries=2)
    with pytest.raises(BingBlocked, match="HTTP 429 on all 3 attempts"):
        client.search("coffee")
    assert server.hits == 3


def test_403_is_blocked_without_retry(serve) -> None:
    server = serve(lambda h, hit: reply(h, 403, b"forbidden"))
    with pytest.raises(BingBlocked, match="403"):
        client_for(server, retries=3).search("coffee")
    assert server.hits == 1


def test_500_exhausted_is_unavailable(serve) -> None:
    server = serve(lambda h, hit: reply(h, 500, b"boom"))
    client = client_for(server, retries=2, backoff=0.01)
    with pytest.raises(BingUnavailable, match="HTTP 500 on all 3 attempts"):
        client.search("coffee")
    assert server.hits == 3
    assert client.requests_sent == 3


def test_long_retry_after_stops_retrying(serve) -> None:
    server = serve(lambda h, hit: reply(h, 503, b"later", headers={"Retry-After": "3600"}))
    with pytest.raises(BingUnavailable, match="Retry-After 3600"):
        client_for(server, retries=3).search("coffee")
    assert server.hits == 1


def test_404_is_unavailable_without_retry(serve) -> None:
    server = serve(lambda h, hit: reply(h, 404, b"not here"))
    with pytest.raises(BingUnavailable, match="HTTP 404"):
        client_for(server, retries=3).search("coffee")
    assert server.hits == 1


def test_timeout_is_unavailable(serve) -> None:
    def route(handler, hit: int) -> None:
        time.sleep(1.0)
        reply(handler, 200, fixture_text("async_page0.html").encode())

    server = serve(route)
    with pytest.raises(BingUnavailable, match="timed out"):
        client_for(server, timeout=0.2, retries=3).search("coffee")
    assert server.hits == 1  # a timeout is not retried


def test_connection_refused_is_unavailable_after_retries(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, b""))
    url = server.url
    server.close()  # nothing listens on the port any more
    client = BingClient(url, timeout=1.0, retries=2, backoff=0.0)
    with pytest.raises(BingUnavailable, match="unreachable after 3 attempts"):
        client.search("coffee")
    assert client.requests_sent == 3


def test_garbage_html_returns_empty(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, fixture_text("garbage.html").encode()))
    assert client_for(server).search("coffee") == []


def test_empty_body_returns_empty(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, b""))
    assert client_for(server).search("coffee") == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"results": []}', "application/json"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b'{"results": []}', "text/html"),
        (b"<html>\x00\x00\x00</html>", "text/html"),
    ],
)
def test_not_a_result_page_is_parse_error(serve, body: bytes, content_type: str) -> None:
    server = serve(lambda h, hit: reply(h, 200, body, content_type=content_type))
    with pytest.raises(BingParseError):
        client_for(server).search("coffee")


def test_captcha_page_is_blocked(serve) -> None:
    server = serve(lambda h, hit: reply(h, 200, fixture_text("captcha.html").encode()))
    with pytest.raises(BingBlocked, match="captcha"):
        client_for(server).search("coffee")


def test_redirect_to_captcha_is_blocked(serve) -> None:
    def route(handler, hit: int) -> None:
        if handler.path.startswith("/images/async"):
            reply(handler, 302, b"", headers={"Location": "/turing/captcha/challenge?redirect=1"})
        else:
            reply(handler, 200, b"<html><body><div id='root'></div></body></html>")

    server = serve(route)
    with pytest.raises(BingBlocked, match="captcha"):
        client_for(server).search("coffee")


def test_gzip_response_is_decoded(serve) -> None:
    def route(handler, hit: int) -> None:
        body = gzip.compress(fixture_text("edge_cases.html").encode("utf-8"))
        reply(handler, 200, body, content_type="text/html", headers={"Content-Encoding": "gzip"})

    server = serve(route)
    results = client_for(server).search("coffee")
    assert results == parse_results(fixture_text("edge_cases.html"), base_url=server.url)
    assert results[0].title == "Café mug & saucer"  # UTF-8 without a charset parameter is read as UTF-8


def test_declared_charset_is_used(serve) -> None:
    html = fixture_text("edge_cases.html").replace('<meta charset="utf-8">', "")
    server = serve(lambda h, hit: reply(h, 200, html.encode("utf-16"), content_type="text/html; charset=utf-16"))
    assert client_for(server).search("coffee")[0].title == "Café mug & saucer"


def test_oversized_response_is_parse_error(serve, monkeypatch) -> None:
    monkeypatch.setattr(bing, "MAX_RESPONSE_BYTES", 1000)
    server = serve(lambda h, hit: reply(h, 200, fixture_text("async_page0.html").encode()))
    with pytest.raises(BingParseError, match="over 1000 bytes"):
        client_for(server).search("coffee")


def test_ttl_cache(serve) -> None:
    server = serve(pages_route)
    client = client_for(server, cache_ttl=600.0)
    now = [1000.0]
    client._clock = lambda: now[0]
    first = client.search("coffee mug")
    assert client.search("coffee mug") == first
    assert client.search("  coffee   mug") == first  # same normalised query, same key
    assert server.hits == 1
    now[0] += 599.0
    client.search("coffee mug")
    assert server.hits == 1
    now[0] += 2.0  # past the TTL
    assert client.search("coffee mug") == first
    assert server.hits == 2
    client.search("coffee mug", page=0, count=10)  # another count is another key
    assert server.hits == 3


def test_cache_disabled(serve) -> None:
    server = serve(pages_route)
    client = client_for(server, cache_ttl=0.0)
    client.search("coffee")
    client.search("coffee")
    assert server.hits == 2


def test_returned_lists_are_copies(serve) -> None:
    server = serve(pages_route)
    client = client_for(server)
    client.search("coffee").clear()
    assert len(client.search("coffee")) == 5


def test_concurrent_searches_fetch_once_per_key_and_never_repeat(serve) -> None:
    gate = threading.Event()

    def route(handler, hit: int) -> None:
        gate.wait(5.0)  # hold every request until all threads are waiting
        pages_route(handler, hit)

    server = serve(route)
    client = client_for(server)
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [(i % 2, pool.submit(client.search, "coffee mug", i % 2)) for i in range(16)]
        time.sleep(0.1)
        gate.set()
        results = [(page, f.result()) for page, f in futures]
    assert server.hits == 2  # one request per (query, page, count)
    page0 = [r for page, r in results if page == 0]
    page1 = [r for page, r in results if page == 1]
    assert all(r == page0[0] for r in page0) and all(r == page1[0] for r in page1)
    urls0 = {r.image_url for r in page0[0]}
    urls1 = {r.image_url for r in page1[0]}
    # whichever page was stored first keeps the overlap (mug4, mug5); together: mug1..mug7, each once
    assert urls0.isdisjoint(urls1)
    assert urls0 | urls1 == {mug(n).image_url for n in range(1, 8)}


def test_base_url_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("CREMA_BING_URL", "http://127.0.0.1:9/")
    assert BingClient().base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("CREMA_BING_URL")
    assert BingClient().base_url == "https://www.bing.com"
    assert BingClient("http://bing.test").base_url == "http://bing.test"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("",), "non-space"),
        (("  ",), "non-space"),
        (("a", -1), "page"),
        (("a", 0, 0), "count"),
        (("a", 0, 151), "count"),
    ],
)
def test_search_argument_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BingClient("http://127.0.0.1:9").search(*args)


@pytest.mark.parametrize("kwargs", [{"base_url": "ftp://bing.test"}, {"timeout": 0}, {"retries": -1}, {"backoff": -1}])
def test_client_argument_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BingClient(**kwargs)


# ------------------------------------------------------------------------ result URLs as a browser sends them


@pytest.mark.parametrize(
    ("given", "want"),
    [
        # already fine: unchanged, scheme and host case included
        ("https://Images.Example.COM:8443/4.jpg", "https://Images.Example.COM:8443/4.jpg"),
        ("HTTPS://upper.example.com/14.gif?a=1&b=2+3", "HTTPS://upper.example.com/14.gif?a=1&b=2+3"),
        # spaces and non-ASCII in the path: UTF-8 percent-encoded
        ("https://cdn.example.com/My Mug (1).jpg", "https://cdn.example.com/My%20Mug%20(1).jpg"),
        ("https://cdn.example.com/Tassen/Größe/ü.jpg", "https://cdn.example.com/Tassen/Gr%C3%B6%C3%9Fe/%C3%BC.jpg"),
        ("https://cdn.example.com/猫.png", "https://cdn.example.com/%E7%8C%AB.png"),
        ('https://cdn.example.com/a"b<c>`{d}.jpg', "https://cdn.example.com/a%22b%3Cc%3E%60%7Bd%7D.jpg"),
        # %XX already there is not encoded again; a stray % in the path is
        ("https://cdn.example.com/My%20Mug%2B.jpg", "https://cdn.example.com/My%20Mug%2B.jpg"),
        (
            "https://cdn.example.com/50%25 off/100% cotton.jpg",
            "https://cdn.example.com/50%25%20off/100%25%20cotton.jpg",
        ),
        # the query keeps its syntax (& = + / ? ; % and %XX); only what cannot stand raw is encoded
        (
            "https://cdn.example.com/i.jpg?q=tasse kaffee&w=1+2&p=a/b?c;d&e=100%&f=%2F&g=ä",
            "https://cdn.example.com/i.jpg?q=tasse%20kaffee&w=1+2&p=a/b?c;d&e=100%&f=%2F&g=%C3%A4",
        ),
        ("https://cdn.example.com/i.jpg#Teil 2", "https://cdn.example.com/i.jpg#Teil%202"),
        # non-ASCII host: IDNA (UTS #46, non-transitional, as browsers)
        ("https://bücher.example/ä.jpg", "https://xn--bcher-kva.example/%C3%A4.jpg"),
        ("http://faß.de:8080/x", "http://xn--fa-hia.de:8080/x"),
        ("https://例え.テスト/a.jpg", "https://xn--r8jz45g.xn--zckzah/a.jpg"),
        # what a browser strips or reads differently
        ("  https://cdn.example.com/a\tb\n.jpg \n", "https://cdn.example.com/ab.jpg"),
        ("https://cdn.example.com\\dir\\a.jpg?x=\\", "https://cdn.example.com/dir/a.jpg?x=\\"),
        ("https://cdn.example.com:/a.jpg", "https://cdn.example.com/a.jpg"),
        ("http://[2001:db8::1]:8080/a b", "http://[2001:db8::1]:8080/a%20b"),
        # not usable: dropped
        ("https://ex ample.com/a.jpg", None),
        ("https://cdn.example.com:99999/a.jpg", None),
        ("http://[2001:db8::1]:99999/a.jpg", None),
        ("https://ä..b/x.jpg", None),  # an empty IDNA label
        ("ftp://cdn.example.com/a b.jpg", None),
        ("//cdn.example.com/a.jpg", None),
        ("https:///a.jpg", None),
        ("", None),
        (None, None),
    ],
)
def test_browser_url(given, want) -> None:
    assert bing.browser_url(given) == want


def test_browser_url_joins_relative_thumbnails() -> None:
    assert bing.browser_url("/th?id=OIP.a b&w=3", "https://www.bing.com") == "https://www.bing.com/th?id=OIP.a%20b&w=3"
    assert bing.browser_url("Tasse ä.jpg", "https://www.bing.com/images/") == (
        "https://www.bing.com/images/Tasse%20%C3%A4.jpg"
    )


def tile(meta: dict) -> str:
    """One result tile whose ``m`` attribute holds ``meta`` as HTML-escaped JSON."""
    import html

    return f'<li><a class="iusc" m="{html.escape(json.dumps(meta, ensure_ascii=False))}"></a></li>'


def test_parse_keeps_results_with_spaces_and_non_ascii_urls() -> None:
    text = "<ul>" + "".join(
        [
            tile(
                {
                    "murl": "https://cdn.example.com/Fotos/Große Tasse (2).jpg",
                    "purl": "https://bücher.example/tassen/große tasse.html?q=kaffee tasse&x=1+2",
                    "turl": "/th?id=OIP.a b",
                    "t": "Große Tasse",
                }
            ),
            # the same image, written already encoded: a duplicate of the first
            tile({"murl": "https://cdn.example.com/Fotos/Gro%C3%9Fe%20Tasse%20(2).jpg", "t": "again"}),
            tile({"murl": "https://ex ample.com/a.jpg", "t": "a host with a space: dropped"}),
        ]
    ) + "</ul>"
    assert parse_results(text) == [
        WebResult(
            image_url="https://cdn.example.com/Fotos/Gro%C3%9Fe%20Tasse%20(2).jpg",
            thumb_url="https://www.bing.com/th?id=OIP.a%20b",
            page_url="https://xn--bcher-kva.example/tassen/gro%C3%9Fe%20tasse.html?q=kaffee%20tasse&x=1+2",
            title="Große Tasse",
            source="xn--bcher-kva.example",
        )
    ]


def test_encoded_result_url_fetches_the_file_it_names(serve) -> None:
    """A result whose murl holds a space and an é: the URL handed on reaches the file the page meant."""

    def route(handler, hit: int) -> None:
        if handler.path.startswith("/images/async"):
            meta = {"murl": f"http://127.0.0.1:{handler.server.server_address[1]}/img/café cup 100%.png"}
            reply(handler, 200, f"<ul>{tile(meta)}</ul>".encode())
        else:
            reply(handler, 200, b"\x89PNG-ish", content_type="image/png")

    server = serve(route)
    (result,) = client_for(server).search("cup")
    assert result.image_url == f"{server.url}/img/caf%C3%A9%20cup%20100%25.png"
    got = fetch_url(result.image_url, allow_private=True, timeout=5)
    assert got.data == b"\x89PNG-ish"
    assert server.seen[-1].path == "/img/caf%C3%A9%20cup%20100%25.png"


# --------------------------------------------------------------- redirects: scraper.fetch's checks on every hop


@pytest.fixture
def connects(monkeypatch) -> list[tuple]:
    """Addresses scraper.fetch connects to (hops off Bing's origin go through it); no real DNS."""
    seen: list[tuple] = []
    real_connect = fetch._connect
    monkeypatch.setattr(fetch, "_connect", lambda t, d: seen.append(t.addresses) or real_connect(t, d))
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_resolver({"internal.example": ["10.0.0.5"]}))
    return seen


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("http://127.0.0.1:{other}/secret", "loopback"),  # a service on the server's own machine
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # the cloud metadata address
        ("http://internal.example/admin", "private"),  # a name resolving into the LAN
        ("http://[::1]:{other}/", "loopback"),
        ("http://0x7f.1:{other}/", "loopback"),
        ("http://u:p@internal.example/", "userinfo"),
        ("file:///etc/passwd", "no http"),
    ],
)
def test_redirect_off_bing_to_a_refused_address_is_not_followed(serve, connects, location: str, match: str) -> None:
    other = serve(lambda h, hit: reply(h, 200, fixture_text("async_page0.html").encode()))
    server = serve(lambda h, hit: reply(h, 302, headers={"Location": location.format(other=other.port)}))
    with pytest.raises(BingUnavailable, match=match):
        client_for(server).search("coffee")
    assert server.hits == 1  # refused, not retried
    assert other.hits == 0 and connects == []  # no connection made to the target


def test_redirect_chain_on_bing_then_elsewhere_is_checked_at_the_hop_that_leaves(serve, connects) -> None:
    other = serve(lambda h, hit: reply(h, 200, b"secret"))

    def route(handler, hit: int) -> None:
        if handler.path.startswith("/images/async"):
            reply(handler, 302, headers={"Location": "/hop"})  # same origin: followed
        else:
            reply(handler, 307, headers={"Location": f"http://127.0.0.1:{other.port}/internal"})

    server = serve(route)
    with pytest.raises(BingUnavailable, match=r"refused URL: refusing 'http://127\.0\.0\.1:\d+/internal'.*loopback"):
        client_for(server).search("coffee")
    assert [s.path.split("?")[0] for s in server.seen] == ["/images/async", "/hop"]
    assert other.hits == 0 and connects == []


def test_every_hop_after_leaving_bing_is_checked(serve, connects, monkeypatch) -> None:
    # The policy treats 127.0.0.1 as public here (the test servers live there); 127.0.0.2 stays loopback.
    real = fetch.address_refusal
    monkeypatch.setattr(fetch, "address_refusal", lambda ip: None if ip == IPv4Address("127.0.0.1") else real(ip))
    other = serve(lambda h, hit: reply(h, 302, headers={"Location": f"http://127.0.0.2:{h.server.server_address[1]}/"}))
    server = serve(lambda h, hit: reply(h, 302, headers={"Location": f"{other.url}/elsewhere"}))
    with pytest.raises(BingUnavailable, match=r"refusing 'http://127\.0\.0\.2:\d+/'.*loopback"):
        client_for(server).search("coffee")
    assert other.hits == 1 and connects == [(IPv4Address("127.0.0.1"),)]


def test_allowed_redirect_elsewhere_is_fetched_through_the_checked_fetcher(serve, connects) -> None:
    def other_route(handler, hit: int) -> None:
        if handler.path == "/moved":
            reply(handler, 301, headers={"Location": "/final page"})
        else:
            reply(handler, 200, fixture_text("async_page0.html").encode())

    other = serve(other_route)
    server = serve(lambda h, hit: reply(h, 302, headers={"Location": f"{other.url}/moved"}))
    client = client_for(server, allow_private=True)
    assert client.search("coffee") == [mug(n) for n in range(1, 6)]
    assert [s.path for s in other.seen] == ["/moved", "/final%20page"]
    assert other.seen[0].headers["user-agent"] == fetch.USER_AGENT  # scraper.fetch made these requests
    assert connects == [(IPv4Address("127.0.0.1"),)] * 2  # pinned to the address it checked, each hop
    assert client.requests_sent == 2  # Bing once, then the hop elsewhere (fetch follows its own redirects)


def test_redirect_loop_on_bing_ends(serve) -> None:
    server = serve(lambda h, hit: reply(h, 302, headers={"Location": f"/again{hit}"}))
    with pytest.raises(BingUnavailable, match=f"redirected more than {bing.MAX_REDIRECTS} times"):
        client_for(server).search("coffee")
    assert server.hits == bing.MAX_REDIRECTS + 1


def test_redirect_elsewhere_too_large_is_parse_error(serve, monkeypatch) -> None:
    monkeypatch.setattr(bing, "MAX_RESPONSE_BYTES", 1000)
    other = serve(lambda h, hit: reply(h, 200, fixture_text("async_page0.html").encode()))
    server = serve(lambda h, hit: reply(h, 302, headers={"Location": f"{other.url}/big"}))
    with pytest.raises(BingParseError, match="over 1000 bytes"):
        client_for(server, allow_private=True).search("coffee")
