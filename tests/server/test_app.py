"""The JSON API through Starlette's TestClient: results against an independent NumPy/Net reference, and
every error path (bad uploads, limits, bombs, formats, unsafe URLs, Bing down), and the bounds on hostile load:
reduced decodes of bomb PNGs, JPEGs whose header lies, many-part bodies, deep JSON, huge ids, slow bodies (408),
the body budget, the decode and URL-fetch pools (503 past their queues), client disconnects."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from net import Net
from scraper.bing import BingBlocked, BingUnavailable
from server.app import AppConfig, create_app
from server.gallery import build_array_index
from server.web import WebSearch
from tests.server.conftest import FakeBing, digit, png_bytes

PROB_ATOL = 1e-6  # float32 softmax outputs of the same forward pass computed twice


@pytest.fixture(scope="module")
def gallery(model, tmp_path_factory):
    images = np.stack([digit(d, dx, 0) for dx in (-1, 0, 1) for d in range(10)])
    labels = np.array([d for _ in range(3) for d in range(10)])
    return build_array_index(images, labels, model, tmp_path_factory.mktemp("g") / "idx", name="t", progress=False)


async def until(condition, timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds (no fixed sleeps: a loaded 2-core machine can take longer than any guess)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server's pools"
        await asyncio.sleep(0.005)


def make_client(model, gallery=None, web=None, **config) -> TestClient:
    config.setdefault("warmup", False)
    app = create_app(model, gallery=gallery, web=web or WebSearch(FakeBing()), config=AppConfig(**config))
    return TestClient(app)


@pytest.fixture
def client(model, gallery):
    with make_client(model, gallery) as c:
        yield c


def reference_probs(lenet_files: dict, a: np.ndarray) -> np.ndarray:
    """LeNet probabilities computed without the server: a fresh Net and preprocessing written out in NumPy
    (MNIST scale 1/256; dark-background input, so no inversion)."""
    net = Net.load(lenet_files["prototxt"], lenet_files["weights"], phase="test")
    x = (a.astype(np.float32) * np.float32(0.00390625))[None, None]
    return net.forward(data=x)["prob"][0]


def upload(client: TestClient, data: bytes, name: str = "q.png", ctype: str = "image/png", **kw):
    return client.post("/api/search", files={"image": (name, data, ctype)}, **kw)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grayscale pixels, with a tiny (invalid) data stream:
    opening it reads only the header, so the size checks must refuse it before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- results ---------------------------------------------------------------------------------------------------
def test_search_upload_matches_reference(client, lenet_files, gallery):
    a = digit(3)
    r = upload(client, png_bytes(a))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = reference_probs(lenet_files, a)
    order = np.argsort(-ref, kind="stable")[:5]
    assert [p["index"] for p in body["predictions"]] == order.tolist()
    np.testing.assert_allclose([p["prob"] for p in body["predictions"]], ref[order], rtol=0, atol=PROB_ATOL)
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in order]
    # similar: the exact same digit is in the gallery (id 13: dx=0 row, digit 3), score 1
    assert body["similar"][0]["id"] == 13 and body["similar"][0]["label"] == "3"
    assert body["similar"][0]["source"] == "gallery" and body["similar"][0]["name"] is None
    assert body["similar"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert body["similar"][0]["thumb_url"] == "/api/gallery/13/thumb"
    assert len(body["similar"]) == 12
    # web: the fake Bing was asked for the top label
    assert body["query"] == f"handwritten digit {order[0]}"
    assert body["web_error"] is None and len(body["web"]) == 4
    assert set(body["web"][0]) == {"image_url", "thumb_url", "page_url", "title", "source"}
    assert body["model"]["name"] == "LeNet" and body["model"]["feature_blob"] == "ip1"
    assert set(body["timings_ms"]) == {"read", "decode", "infer", "forward", "similar", "web", "total"}
    assert body["batch_size"] == 1


def test_light_background_photo_is_inverted(client, lenet_files):
    """Dark ink on white paper (an RGB JPEG): lenet-auto inverts it to MNIST's white on black."""
    jpeg = png_bytes(Image.fromarray(255 - digit(7)).convert("RGB"), "JPEG", quality=100)
    r = upload(client, jpeg, "q.jpg", "image/jpeg")
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    # reference: the JPEG decoded by Pillow, to grayscale, inverted, scaled by 1/256
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
    ref = reference_probs(lenet_files, 255 - decoded.astype(np.int16))
    order = np.argsort(-ref, kind="stable")[:5]
    assert [p["index"] for p in got] == order.tolist()
    np.testing.assert_allclose([p["prob"] for p in got], ref[order], rtol=0, atol=PROB_ATOL)


def test_web_paging(client):
    r1 = upload(client, png_bytes(digit(1)), params={"page": 1})
    assert r1.status_code == 200
    assert r1.json()["page"] == 1 and all(" 1-" in w["title"] for w in r1.json()["web"])
    r2 = client.get("/api/web", params={"q": "handwritten digit 1", "page": 2})
    assert r2.status_code == 200
    assert r2.json() == {
        "query": "handwritten digit 1",
        "page": 2,
        "web": [
            {
                "image_url": f"https://img.example/2-{i}.jpg",
                "thumb_url": f"https://tse.example/2-{i}.jpg",
                "page_url": f"https://site.example/2-{i}.html",
                "title": f"handwritten digit 1 2-{i}",
                "source": "site.example",
            }
            for i in range(4)
        ],
        "web_error": None,
    }
    assert client.get("/api/web", params={"q": "x", "page": 3}).json()["web"] == []


@pytest.mark.parametrize("params", [{"page": "-1"}, {"page": "abc"}, {"page": "21"}])
def test_bad_page(client, params):
    r = upload(client, png_bytes(digit(1)), params=params)
    assert r.status_code == 400 and "page" in r.json()["error"]


def test_web_route_needs_query(client):
    r = client.get("/api/web")
    assert r.status_code == 400 and "q must be" in r.json()["error"]
    assert client.get("/api/web", params={"q": "x" * 201}).status_code == 400


def test_url_search_via_local_server(model, gallery, local_http, lenet_files):
    data = png_bytes(digit(5))
    srv = local_http(lambda path: (200, {"Content-Type": "image/png"}, data) if path == "/five.png" else (404, {}, b""))
    with make_client(model, gallery, allow_private_urls=True) as c:
        r = c.post("/api/search", json={"url": f"{srv.url}/five.png"})
        assert r.status_code == 200, r.text
        ref = reference_probs(lenet_files, digit(5))
        assert [p["index"] for p in r.json()["predictions"]] == np.argsort(-ref, kind="stable")[:5].tolist()
        missing = c.post("/api/search", json={"url": f"{srv.url}/missing.png"})
        assert missing.status_code == 502 and "404" in missing.json()["error"]


def test_url_too_large(model, local_http):
    srv = local_http(lambda path: (200, {"Content-Type": "image/png"}, b"\0" * 5000))
    with make_client(model, allow_private_urls=True, max_upload=1000) as c:
        r = c.post("/api/search", json={"url": f"{srv.url}/big.png"})
    assert r.status_code == 413 and "1,000 byte limit" in r.json()["error"]


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://127.0.0.1:9/x.png", "loopback"),
        ("http://2130706433/x.png", "loopback"),  # 127.0.0.1 spelled as one number
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://[::ffff:127.0.0.1]/x.png", "IPv4-mapped"),
        ("file:///etc/passwd", "http"),
        ("ftp://example.com/x.png", "http"),
    ],
)
def test_unsafe_urls_refused(client, url, words):
    r = client.post("/api/search", json={"url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("this URL cannot be fetched") and words in r.json()["error"]


# -- upload errors ---------------------------------------------------------------------------------------------
def test_non_image_upload(client):
    r = upload(client, b"hello, this is text\n" * 10, "notes.txt", "text/plain")
    assert r.status_code == 415
    assert "not an image" in r.json()["error"] and "JPEG, PNG" in r.json()["error"]


def test_empty_upload(client):
    r = upload(client, b"", "empty.png")
    assert r.status_code == 400 and "empty" in r.json()["error"]


def test_truncated_image(client):
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    r = upload(client, data[: len(data) // 2])
    assert r.status_code == 400 and "truncated" in r.json()["error"]


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_format_not_in_allow_list(client, fmt):
    r = upload(client, png_bytes(Image.fromarray(digit(2)).convert("RGB"), fmt), "x.bin", "application/octet-stream")
    assert r.status_code == 415, r.text
    assert "is not allowed" in r.json()["error"]


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "JPEG"])
def test_allowed_formats(client, fmt):
    r = upload(client, png_bytes(Image.fromarray(digit(2)).convert("RGB"), fmt), "x", "application/octet-stream")
    assert r.status_code == 200, r.text


def test_upload_too_large_declared(model):
    with make_client(model, max_upload=1000) as c:
        r = upload(c, b"\0" * 70_000)
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_upload_too_large_streamed_without_length(model):
    """No Content-Length (chunked body): the limit is enforced while reading."""
    boundary = "xyz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.encode()

    def body():
        yield head
        for _ in range(100):
            yield b"\0" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    with make_client(model, max_upload=1000) as c:
        r = c.post("/api/search", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_image_part_over_limit(model):
    """The body fits the multipart allowance but the image itself is over the limit."""
    with make_client(model, max_upload=1000) as c:
        r = upload(c, b"\0" * 1500)
    assert r.status_code == 413 and "1,500 bytes" in r.json()["error"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(12_000, 12_000), (20_000, 20_000)])
def test_decompression_bomb(client, size):
    """144 Mpx is past crema's 40 Mpx limit (Pillow only warns); 400 Mpx is past Pillow's own error limit."""
    r = upload(client, bomb_png(*size))
    assert r.status_code == 413, r.text
    assert "too large" in r.json()["error"] and "Mpx" in r.json()["error"]


def test_pixel_limit_is_configurable(model):
    with make_client(model, max_pixels=50 * 50) as c:
        r = upload(c, png_bytes(np.zeros((60, 60), dtype=np.uint8)))
    assert r.status_code == 413 and "3600" not in r.json()["error"] and "Mpx" in r.json()["error"]


def test_wrong_content_type(client):
    r = client.post("/api/search", content=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    r = client.post("/api/search", content=b"abc")
    assert r.status_code == 415


def test_form_without_image_field(client):
    r = client.post("/api/search", files={"picture": ("a.png", png_bytes(digit(1)), "image/png")})
    assert r.status_code == 400 and "'image'" in r.json()["error"]


def test_image_sent_as_a_text_field(client):
    body = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc\r\n--b--\r\n'
    r = client.post("/api/search", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "the form field 'image' is not a file" in r.json()["error"]


def test_first_image_of_a_form_is_used(client):
    files = [("image", ("a.png", png_bytes(digit(3)), "image/png")), ("image", ("b.png", b"junk", "image/png"))]
    r = client.post("/api/search", files=files)
    assert r.status_code == 200, r.text


def test_malformed_multipart(client):
    r = client.post(
        "/api/search", content=b"--b\r\nno headers end", headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    r = client.post("/api/search", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and "boundary" in r.json()["error"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"url": 5}', b'{"link": "https://x.example/a.png"}'])
def test_bad_json(client, body):
    r = client.post("/api/search", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert '"url"' in r.json()["error"]


def test_upload_file_name_is_not_used(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = upload(client, png_bytes(digit(4)), name="../../../../tmp/evil.png")
    assert r.status_code == 200 and "evil" not in r.text
    assert list(tmp_path.iterdir()) == []


# -- web search failures -----------------------------------------------------------------------------------------
def test_bing_down_still_answers(model, gallery):
    fake = FakeBing(error=BingUnavailable("connection refused"))
    with make_client(model, gallery, web=WebSearch(fake, cooldown_s=60)) as c:
        r = upload(c, png_bytes(digit(6)))
        assert r.status_code == 200
        body = r.json()
        assert body["web"] == [] and "unavailable" in body["web_error"] and "connection refused" in body["web_error"]
        assert len(body["predictions"]) == 5 and len(body["similar"]) == 12
        # the circuit breaker: the next search does not wait on Bing again
        r2 = upload(c, png_bytes(digit(6)))
        assert "next try in" in r2.json()["web_error"] and len(fake.calls) == 1
        assert c.get("/api/health").json()["web"]["available"] is False


def test_bing_blocked(model):
    with make_client(model, web=WebSearch(FakeBing(error=BingBlocked("captcha page")))) as c:
        body = upload(c, png_bytes(digit(6))).json()
    assert body["web"] == [] and "refused" in body["web_error"] and len(body["predictions"]) == 5


def test_bing_slow_is_cut_off(model):
    release = threading.Event()

    class Slow(FakeBing):
        def search(self, query, page=0, count=35):
            release.wait(30)  # answers only once the test has its answer: a missed budget would take 30 s
            return super().search(query, page, count)

    try:
        with make_client(model, web=WebSearch(Slow(), budget_s=0.2)) as c:
            t0 = time.perf_counter()
            body = upload(c, png_bytes(digit(6))).json()
            assert time.perf_counter() - t0 < 10  # not the 30 s the search takes (the rest is the forward, loaded)
            release.set()
    finally:
        release.set()
    assert body["web"] == [] and "longer than 0.2 s" in body["web_error"]


def test_web_off(model):
    with make_client(model, web=WebSearch(None, off_reason="web search is turned off (--no-web)")) as c:
        body = upload(c, png_bytes(digit(6))).json()
    assert body["web"] == [] and body["web_error"] == "web search is turned off (--no-web)"
    assert body["similar"] == [] and len(body["predictions"]) == 5


def test_no_gallery_note(model):
    app = create_app(model, gallery_note="no gallery here", config=AppConfig(warmup=False))
    with TestClient(app) as c:
        body = upload(c, png_bytes(digit(6))).json()
    assert body["similar"] == [] and body["similar_error"] == "no gallery here"


# -- micro-batching through the app ------------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_rows_stay_apart(model, lenet_files):
    app = create_app(model, config=AppConfig(warmup=False, window_ms=200.0, max_batch=32))
    digits = [digit(d, dx, dy) for d in range(10) for dx, dy in ((0, 0), (1, 1))][:16]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(
                *[c.post("/api/search", files={"image": ("q.png", png_bytes(a), "image/png")}) for a in digits]
            )

    responses = asyncio.run(go())
    net = Net.load(lenet_files["prototxt"], lenet_files["weights"], phase="test")
    for a, r in zip(digits, responses):
        assert r.status_code == 200, r.text
        ref = net.forward(data=(a.astype(np.float32) * np.float32(0.00390625))[None, None])["prob"][0]
        order = np.argsort(-ref, kind="stable")[:5]
        got = r.json()["predictions"]
        assert [p["index"] for p in got] == order.tolist()
        np.testing.assert_allclose([p["prob"] for p in got], ref[order], rtol=0, atol=PROB_ATOL)
    stats = app.state.crema.batcher.stats()
    assert stats["requests"] == 16 and stats["batches"] < 16  # at least one forward served several requests
    assert max(r.json()["batch_size"] for r in responses) > 1
    app.state.crema.batcher.close()


# -- other routes ---------------------------------------------------------------------------------------------------
def test_health_models_openapi(client, model):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["model"] == "LeNet" and h["gallery"]["count"] == 30
    assert h["personal"] is None  # this app has no personal gallery (tests/server/test_personal.py has)
    assert h["batching"]["enabled"] is True and h["batching"]["max_batch"] == 32
    m = client.get("/api/models").json()
    assert m["models"][0] == model.info() and m["models"][0]["input_shape"] == [1, 28, 28]
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    api_routes = {r.path.replace(":int", "") for r in client.app.routes if getattr(r, "path", "").startswith("/api/")}
    assert api_routes == set(spec["paths"])
    json.dumps(spec)  # plain JSON


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in r.text and "/static/app.js" in r.text
    assert 'id="personal"' in r.text and "webkitdirectory" in r.text  # the personal gallery's section
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and kind in s.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server/app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/api/gallery/-1/thumb",
        "/api/gallery/1e3/thumb",
        "/api/gallery/..%2f..%2fetc%2fpasswd/thumb",
        "/api/gallery/30/thumb",
        "/api/gallery/99999999999999999999/image",
        "/nope",
    ],
)
def test_paths_cannot_escape(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "error" in r.json()


def test_method_not_allowed(client):
    r = client.get("/api/search")
    assert r.status_code == 405 and "GET" in r.json()["error"]


def test_gallery_thumb_and_download(client, gallery):
    t = client.get("/api/gallery/13/thumb")
    assert t.status_code == 200 and t.headers["content-type"] == "image/png"
    thumb = np.asarray(Image.open(io.BytesIO(t.content)))
    np.testing.assert_array_equal(thumb[::3, ::3], digit(3))  # 28 px digit drawn 3x (nearest)
    d = client.get("/api/gallery/13/image", params={"download": "1"})
    assert d.status_code == 200 and d.headers["content-disposition"] == 'attachment; filename="gallery-13.png"'
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(d.content))), digit(3))
    assert client.get("/api/gallery/13/image").headers["content-disposition"].startswith("inline")


def test_server_without_gallery_404s_thumbs(model):
    with make_client(model) as c:
        r = c.get("/api/gallery/0/thumb")
    assert r.status_code == 404 and "no gallery" in r.json()["error"]


def test_static_dir_exists():
    from server.app import STATIC_DIR

    assert {p.name for p in Path(STATIC_DIR).iterdir()} >= {"index.html", "app.js", "app.css"}


def test_inference_thread_count(model):
    """AppConfig.threads sets Numba's thread count for the inference thread only (numba.set_num_threads is
    thread-local; the batcher's on_start), for its batches and its other jobs, leaving the test process's own
    setting alone."""
    import numba

    before = numba.get_num_threads()
    with make_client(model, threads=1) as c:
        assert upload(c, png_bytes(digit(0))).status_code == 200
        st = c.app.state.crema
        original = st.batcher.fn
        st.batcher.fn = lambda x: (np.full(len(x), numba.get_num_threads()),)  # a probe on the inference thread
        assert int(st.batcher.submit(np.zeros(model.input_shape, dtype=np.float32)).result(timeout=30)[0]) == 1
        st.batcher.fn = original
        assert st.batcher.submit_call(numba.get_num_threads).result(timeout=30) == 1  # its other jobs too (maps)
    assert numba.get_num_threads() == before


# -- hostile inputs and load bounds (issue 14) ----------------------------------------------------------------------
def flat_png(side: int, value: int = 88) -> bytes:
    """A single-colour grayscale PNG: side x side pixels in a few tens of KB (zlib's ~1000:1 on a flat image)."""
    return png_bytes(Image.new("L", (side, side), value))


def lying_jpeg(side: int = 6000) -> bytes:
    """A 16x16 grey JPEG whose frame header is patched to claim side x side pixels (~330 bytes, no data for them)."""
    data = bytearray(png_bytes(Image.new("L", (16, 16), 128), "JPEG"))
    struct.pack_into(">HH", data, data.find(b"\xff\xc0") + 5, side, side)
    return bytes(data)


def many_parts(n: int, boundary: str = "b") -> tuple[bytes, str]:
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'.encode()
    return part * n + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def asgi_gather(app, *requests: Callable) -> list:
    """Run request(client) coroutines concurrently against `app` in this event loop (no lifespan)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
        return await asyncio.gather(*[r(c) for r in requests])


def files(data: bytes, ctype: str = "image/png") -> dict:
    return {"image": ("q", data, ctype)}


def test_bomb_png_is_answered_from_a_reduced_decode(client, lenet_files):
    """25 Mpx of one grey level (above REDUCE_ABOVE, under the 40 Mpx limit): decoded reduced, and the answer is
    the model's answer for a 28x28 image of that level."""
    data = flat_png(5000)
    assert len(data) < 100_000
    r = upload(client, data)
    assert r.status_code == 200, r.text
    ref = reference_probs(lenet_files, np.full((28, 28), 88, dtype=np.uint8))
    order = np.argsort(-ref, kind="stable")[:5]
    got = r.json()["predictions"]
    assert [p["index"] for p in got] == order.tolist()
    np.testing.assert_allclose([p["prob"] for p in got], ref[order], rtol=0, atol=PROB_ATOL)


def test_jpeg_whose_header_lies_is_refused(client):
    r = upload(client, lying_jpeg(), "lie.jpg", "image/jpeg")
    assert r.status_code == 400, r.text
    assert "truncated image: the JPEG header claims 6000x6000 pixels" in r.json()["error"]


def test_many_parts_refused_as_they_arrive(client):
    """180,000 empty parts (9.5 MB, inside the upload limit): refused from the first chunk, in milliseconds."""
    body, ctype = many_parts(180_000)
    t0 = time.perf_counter()
    r = client.post("/api/search", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "too many parts" in r.json()["error"], r.text
    assert r.headers["connection"] == "close" and time.perf_counter() - t0 < 1.0
    ok, ctype = many_parts(16)  # the limit itself is fine (no field named image: that is the error)
    r = client.post("/api/search", content=ok, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "no file field named 'image'" in r.json()["error"]


def test_deeply_nested_json_is_400(client):
    r = client.post("/api/search", content=b"[" * 60_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]


@pytest.mark.parametrize("route", ["/api/gallery/{}/thumb", "/api/gallery/{}/image"])
def test_huge_gallery_id_is_404(client, route):
    r = client.get(route.format("9" * 5000))
    assert r.status_code == 404 and "at most 18 digits" in r.json()["error"]
    assert client.get(route.format("0" * 17 + "13")).status_code == 404  # 19 digits, even with leading zeros
    assert client.get(route.format("013")).status_code == 200


def test_huge_personal_id_is_404(model, tmp_path):
    from server.personal import open_personal

    app = create_app(model, personal=open_personal(model, tmp_path), config=AppConfig(warmup=False))
    with TestClient(app) as c:
        for method, route in (("GET", "/api/personal/{}/thumb"), ("GET", "/api/personal/{}/image"),
                              ("DELETE", "/api/personal/{}")):  # fmt: skip
            r = c.request(method, route.format("7" * 5000))
            assert r.status_code == 404 and "at most 18 digits" in r.json()["error"], (method, route)
            assert c.request(method, route.format(12)).status_code == 404  # a plain missing id


def test_slow_body_gets_408_in_process(model):
    """A body that stops arriving: 408 once body_timeout has passed, with Connection: close."""
    app = create_app(model, config=AppConfig(warmup=False, body_timeout=0.3))
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n'

    async def trickle():
        yield head
        await asyncio.sleep(5)  # the rest never comes in time
        yield b"\r\n--b--\r\n"

    async def slow(c):
        return await c.post("/api/search", content=trickle(),
                            headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip

    t0 = time.perf_counter()
    (r,) = asyncio.run(asgi_gather(app, slow))
    assert r.status_code == 408 and "arrived too slowly" in r.json()["error"] and r.headers["connection"] == "close"
    assert time.perf_counter() - t0 < 3.0
    app.state.crema.batcher.close()


def test_slow_body_gets_408_over_a_socket(model):
    """The same through uvicorn on 127.0.0.1: a client that declares 10 MB and stops 100 bytes short is answered 408
    within the deadline and its connection is closed, so it holds neither memory nor the connection."""
    import socket
    import threading

    import uvicorn

    app = create_app(model, config=AppConfig(warmup=False, body_timeout=0.5))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q"\r\n\r\n' + b"\0" * 1_000_000
            s.sendall(b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body)  # fmt: skip
            t0 = time.monotonic()
            answer = b""
            while chunk := s.recv(65536):  # ends when the server closes the connection
                answer += chunk
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"arrived too slowly" in answer and waited < 5.0
        assert app.state.crema.bodies.held == 0  # the budget got its bytes back
    finally:
        server.should_exit = True
        thread.join(30)


def test_body_budget_refuses_with_503(model):
    with make_client(model, body_budget=1000) as c:
        r = upload(c, png_bytes(digit(1)) + b"\0" * 2000)
        assert r.status_code == 503 and "too many uploads" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
        assert c.app.state.crema.bodies.held == 0
    with make_client(model, body_budget=100_000) as c:  # a body within the budget, and it is given back after
        assert upload(c, png_bytes(digit(1))).status_code == 200
        assert c.app.state.crema.bodies.held == 0


def test_decodes_are_bounded_and_excess_gets_503(model, monkeypatch):
    """decode_workers=1, decode_queue=1: one decode runs, one waits, the third request is refused at once."""
    import threading

    import server.app

    release = threading.Event()
    started = threading.Event()
    real = server.app.decode_input

    def blocking(*args, **kw):
        started.set()
        release.wait(10)
        return real(*args, **kw)

    monkeypatch.setattr(server.app, "decode_input", blocking)
    app = create_app(model, config=AppConfig(warmup=False, decode_workers=1, decode_queue=1))
    data = png_bytes(digit(3))

    async def first(c):
        return await c.post("/api/search", files=files(data))

    async def later(c):
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        second = asyncio.ensure_future(c.post("/api/search", files=files(data)))
        await until(lambda: app.state.crema.decodes.stats()["waiting"] == 1)  # the second is queued now
        third = await c.post("/api/search", files=files(data))
        release.set()
        return third, await second

    r1, (r3, r2) = asyncio.run(asgi_gather(app, first, later))
    assert r1.status_code == 200 and r2.status_code == 200
    assert r3.status_code == 503 and "busy with other image decodes" in r3.json()["error"]
    assert app.state.crema.decodes.stats()["refused"] == 1
    app.state.crema.batcher.close()


def test_url_fetches_have_their_own_pool(model):
    """Slow URL servers fill the fetch pool (2 running + 1 waiting, the next one 503) while an upload is answered at
    once: fetches no longer take the threads that decode uploads."""
    import threading

    release = threading.Event()

    def slow_fetcher(url, *, max_bytes, timeout, allow_private):
        release.wait(10)
        return png_bytes(digit(5))

    app = create_app(model, config=AppConfig(warmup=False, fetch_workers=2, fetch_queue=1), fetcher=slow_fetcher)
    upload_s: list[float] = []

    def by_url(c):
        return c.post("/api/search", json={"url": "https://slow.example/x.png"})

    async def meanwhile(c):
        stats = app.state.crema.fetches.stats
        await until(lambda: stats()["running"] == 2 and stats()["waiting"] == 1)  # the three URL requests hold it
        refused = await by_url(c)
        t0 = time.perf_counter()
        r = await c.post("/api/search", files=files(png_bytes(digit(1))))
        upload_s.append(time.perf_counter() - t0)
        release.set()
        return refused, r

    *by_urls, (refused, up) = asyncio.run(asgi_gather(app, by_url, by_url, by_url, meanwhile))
    assert [r.status_code for r in by_urls] == [200, 200, 200]
    assert refused.status_code == 503 and "busy with other URL fetches" in refused.json()["error"]
    assert up.status_code == 200 and upload_s[0] < 8.0  # not held until the fetches end (release: after it)
    app.state.crema.batcher.close()


def test_url_fetch_wait_counts_against_its_timeout(model):
    """A fetch that waits for a thread gets only what is left of url_timeout (here nothing: 504 without fetching)."""
    import threading

    release = threading.Event()
    calls: list[float] = []

    def fetcher(url, *, max_bytes, timeout, allow_private):
        calls.append(timeout)
        release.wait(10)
        return png_bytes(digit(5))

    app = create_app(model, config=AppConfig(warmup=False, fetch_workers=1, url_timeout=0.5), fetcher=fetcher)

    async def hold(c):
        r = await c.post("/api/search", json={"url": "https://a.example/x.png"})
        return r

    async def waits(c):
        await until(lambda: app.state.crema.fetches.stats()["running"] == 1)
        t = asyncio.ensure_future(c.post("/api/search", json={"url": "https://b.example/x.png"}))
        await asyncio.sleep(0.8)  # its whole url_timeout passes in the queue
        release.set()
        return await t

    first, second = asyncio.run(asgi_gather(app, hold, waits))
    assert first.status_code == 200 and len(calls) == 1 and calls[0] <= 0.5
    assert second.status_code == 503 and "waited" in second.json()["error"]
    app.state.crema.batcher.close()


def test_client_disconnect_is_not_a_500(model):
    """The client goes away mid-body: a 400 (sent nowhere), not a 500 with a traceback."""
    app = create_app(model, config=AppConfig(warmup=False))
    messages = iter([
        {"type": "http.request", "body": b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n",
         "more_body": True},
        {"type": "http.disconnect"},
    ])  # fmt: skip
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert b"closed the connection" in sent[1]["body"]
    assert app.state.crema.bodies.held == 0


def test_unhandled_errors_are_500_and_not_logged_by_the_app(model, monkeypatch, caplog):
    """Starlette re-raises after the 500 answer and the server logs the traceback; the app does not log it again."""
    import server.app

    def broken(*args, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.app, "decode_input", broken)
    app = create_app(model, config=AppConfig(warmup=False))
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level("ERROR"):
        r = upload(c, png_bytes(digit(1)))
    assert r.status_code == 500 and r.json()["error"].startswith("internal server error")
    assert not [rec for rec in caplog.records if rec.name == "server.app"]


def test_health_reports_the_limits(client):
    limits = client.get("/api/health").json()["limits"]
    assert set(limits) == {"decode", "fetch", "bodies"}
    assert limits["decode"]["workers"] >= 1 and limits["fetch"]["workers"] == 16
    assert limits["bodies"] == {"limit": 200_000_000, "held": 0, "refused": 0}
