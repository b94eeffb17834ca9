"""Inside the network through the API (server.inside): /api/search's `inside`, the feature-map PNGs of a search's
picture (checked tile by tile against a net's blobs on the search's input, and those against an unfused net), the
filters PNGs, the cache bounds, where the maps forward runs, and the errors; for LeNet, EfficientNet-Lite0 and
CaffeNet's structure (random weights: its real ones are a 233 MB download)."""

from __future__ import annotations

import time

import numpy as np
from starlette.testclient import TestClient

from net import Net
from net.classify import preprocess_for
from net.visualize import FILTER_TILE_PX, MAP_TILE_PX, layer_views
from server.app import AppConfig, create_app
from server.inside import Inside
from server.model import Model
from server.web import WebSearch
from tests.conftest import ROOT
from tests.net.test_visualize import expected_tile, tiles_of
from tests.server.conftest import digit, png_bytes


def client_for(model: Model, **config) -> TestClient:
    config.setdefault("warmup", False)
    return TestClient(create_app(model, web=WebSearch(None), config=AppConfig(**config)))


def spy_inputs(model: Model, monkeypatch) -> list[np.ndarray]:
    """Record the input of every forward the server runs on the model (its own net, observing nothing)."""
    seen: list[np.ndarray] = []
    infer = model.infer

    def spy(x):
        seen.append(x.copy())
        return infer(x)

    monkeypatch.setattr(model, "infer", spy)
    return seen


def loaded_like(net: Net, prototxt, *, fuse: bool) -> Net:
    """A net of `prototxt` (activations not shared, nothing observed) with `net`'s weights."""
    other = Net.load(prototxt, phase="test", fuse=fuse)
    for name in other.params:
        for a, b in zip(other.params[name], net.params[name]):
            a[...] = b
    return other


def scale(h: int, w: int, target: int) -> int:
    return max(1, -(-target // max(h, w)))


def check_model(
    model: Model, monkeypatch, image: bytes, *, prototxt, bgr: bool, layers: int = 3, crop: int = 0
) -> dict:
    """One search, then the first `layers` layers' maps: each tile equals a net's (fused as served, activations not
    shared) blob of that layer on the search's input (normalised per tile), and those blobs are close to an unfused
    net's; one forward of the model for the search, one of the maps copy per maps request, none for filters; the
    first layer's filters PNG equals its weights (without their first `crop` rows and columns, which must be zero).
    Returns inside."""
    seen = spy_inputs(model, monkeypatch)
    fused, plain = loaded_like(model.net, prototxt, fuse=True), loaded_like(model.net, prototxt, fuse=False)
    with client_for(model) as c:
        r = c.post("/api/search", files={"image": ("q.png", image, "image/png")})
        assert r.status_code == 200, r.text
        inside = r.json()["inside"]
        assert len(seen) == 1 and not model.net._observers  # the search's forward observes nothing: its plan fuses
        assert [v["name"] for v in inside["layers"]] == [v.name for v in layer_views(model.net)]
        assert inside["first"] == inside["layers"][0]["name"] and inside["layers"][0]["filters"]
        fused.forward(**{fused.inputs[0]: seen[0]})
        plain.forward(**{plain.inputs[0]: seen[0]})
        for k, layer in enumerate(inside["layers"][:layers]):
            c_, h, w = layer["shape"]
            n = min(c_, 256)
            png = c.get(layer["maps_url"])
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert c.get("/api/health").json()["inside"]["forwards"] == k + 1  # one forward a maps request
            tiles = tiles_of(png.content, n, h, w, scale(h, w, MAP_TILE_PX))
            blob = fused.blobs[layer["blob"]][0]
            ref = plain.blobs[layer["blob"]][0]
            np.testing.assert_allclose(blob, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
            for t in range(n):
                assert np.array_equal(tiles[t], expected_tile(blob[t])), (layer["name"], t)
        assert len(seen) == 1
        first = inside["layers"][0]
        wts = model.net.params[first["name"]][0]
        assert not wts[:, :, :crop].any() and not wts[:, :, :, :crop].any()
        wts = wts[:, :, crop:, crop:]
        png = c.get(first["filters_url"])
        assert png.status_code == 200
        assert c.get("/api/health").json()["inside"]["forwards"] == layers
        tiles = tiles_of(png.content, wts.shape[0], *wts.shape[2:], scale(*wts.shape[2:], FILTER_TILE_PX))
        for k in range(wts.shape[0]):
            f = wts[k, 0] if wts.shape[1] == 1 else (wts[k, ::-1] if bgr else wts[k]).transpose(1, 2, 0)
            assert np.array_equal(tiles[k], expected_tile(f)), k
    return inside


def test_lenet_maps_are_the_searched_pictures(model, lenet_files, monkeypatch):
    inside = check_model(model, monkeypatch, png_bytes(digit(6)), prototxt=lenet_files["prototxt"], bgr=False, layers=4)
    assert [v["name"] for v in inside["layers"]] == ["conv1", "pool1", "conv2", "pool2"]
    assert inside["layers"][0]["shape"] == [20, 24, 24] and "normalised on its own" in inside["normalisation"]
    assert [v["filters_url"] is not None for v in inside["layers"]] == [True, False, False, False]


def test_efficientnet_first_conv_and_fused_notes(monkeypatch):
    from net.zoo import resolve

    files = resolve("efficientnet-lite0")
    model = Model.load(files.prototxt, files.weights, files.labels, preset=files.preset)
    rng = np.random.default_rng(0)
    photo = png_bytes(rng.integers(0, 256, size=(240, 260, 3), dtype=np.uint8))
    inside = check_model(model, monkeypatch, photo, prototxt=files.prototxt, bgr=False, layers=2, crop=1)
    stem = inside["layers"][0]
    assert stem["filters_note"] == "stored as 4x4: the first row and first column, zero in every filter, left out"
    assert (stem["name"], stem["shape"]) == ("stem", [32, 112, 112])  # stride-2 3x3, 32 filters on RGB
    assert "ReLU6 'stem/relu6'" in stem["note"] and "folded into its weights" in stem["note"]
    # every layer's maps, not only the first two rendered above, are the unfused net's (no fusion of the maps copy
    # leaves a blob stale: the residual sums fused into the 1x1 projections write both blobs)
    x = model.preprocess(photo)
    capture = Inside(model.net, bgr=False)
    key = capture.store(x)
    plain = Net.load(files.prototxt, files.weights, fuse=False)
    plain.forward(data=x[None])
    assert len(capture.views) == 49
    for view in layer_views(plain):
        ref = plain.blobs[view.top][0, :256]
        maps = capture.maps(key, view.name)
        np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    head = next(v for v in inside["layers"] if v["name"] == "head")
    assert head["channels"] == 1280 and head["shown"] == 256
    assert not model.net._observers  # the model's own plan observes nothing


def test_caffenet_structure_bgr_filters(monkeypatch):
    """CaffeNet's deploy prototxt with random weights: conv1's 96 colour filters come out RGB (the net reads BGR)."""
    net = Net.load(ROOT / "models/caffenet/deploy.prototxt", phase="test")
    views = layer_views(net)
    assert [v.name for v in views] == ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    assert "ReLU 'relu1'" in views[0].note
    model = Model(net, pre=preprocess_for(net, "caffenet"), labels=[str(i) for i in range(1000)], feature_blob="fc7",
                  preset="caffenet", files=None, name="caffenet")  # fmt: skip
    model._fingerprint = "0" * 40  # no weights file to hash
    monkeypatch.setattr(Model, "info", lambda self: {"name": self.name})
    rng = np.random.default_rng(1)
    photo = png_bytes(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8))
    inside = check_model(
        model, monkeypatch, photo, prototxt=ROOT / "models/caffenet/deploy.prototxt", bgr=True, layers=2
    )
    assert inside["layers"][0]["shape"] == [96, 55, 55]


def test_bad_requests_are_clear_4xx(model):
    with client_for(model) as c:
        inside = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(1)), "image/png")}).json()["inside"]
        rid = inside["id"]
        cases = [
            (f"/api/inside/{rid}/maps?layer=conv9", 404, "no layer named 'conv9'"),
            (f"/api/inside/{rid}/maps?layer=ip1", 400, "'ip1' cannot be shown: it is a layer of type InnerProduct"),
            (f"/api/inside/{rid}/maps", 400, "layer must name a layer"),
            (f"/api/inside/{'0' * 32}/maps?layer=conv1", 404, "no feature maps for request"),
            ("/api/filters?layer=conv2", 400, "has no filters to show as images"),
            ("/api/filters?layer=prob", 400, "it is a layer of type Softmax"),
            ("/api/filters?layer=nope", 404, "no layer named 'nope'"),
            ("/api/filters?layer=" + "x" * 300, 400, "1..200 characters"),
        ]
        for url, status, words in cases:
            r = c.get(url)
            assert r.status_code == status and words in r.json()["error"], (url, r.status_code, r.text)


def test_cache_bounds(model):
    # LeNet's input is 1 x 28 x 28 floats, 3,136 bytes: 7,000 bytes keep the last two searches
    with client_for(model, inside_cache_bytes=7_000) as c:
        ids = []
        for d in range(3):
            r = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(d)), "image/png")})
            ids.append(r.json()["inside"]["id"])
        stats = c.get("/api/health").json()["inside"]
        assert (stats["bytes"], stats["entries"], stats["forwards"]) == (6_272, 2, 0)  # no maps asked for yet
        r = c.get(f"/api/inside/{ids[0]}/maps?layer=conv1")  # past 7,000 bytes the oldest go first
        assert r.status_code == 404 and "search again" in r.json()["error"]
        assert c.get(f"/api/inside/{ids[1]}/maps?layer=conv2").status_code == 200
    with client_for(model, inside_ttl_s=0.0) as c:
        r = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(3)), "image/png")})
        time.sleep(0.01)
        assert c.get(r.json()["inside"]["layers"][0]["maps_url"]).status_code == 404  # expired
        assert c.get("/api/health").json()["inside"]["entries"] == 0


def test_too_large_grid_is_4xx(model, monkeypatch):
    import net.visualize

    monkeypatch.setattr(net.visualize, "MAX_SIDE", 200)  # conv1's grid is 244 px wide: "too large" now
    with client_for(model) as c:
        inside = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(4)), "image/png")}).json()["inside"]
        r = c.get(inside["layers"][0]["maps_url"])
        assert r.status_code == 400 and "over the 200-pixel limit" in r.json()["error"]


def test_inside_off(model):
    with client_for(model, inside=False) as c:
        body = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(1)), "image/png")}).json()
        assert body["inside"] is None and body["predictions"]
        assert c.get("/api/filters?layer=conv1").status_code == 404


def test_each_search_gets_its_own_maps(model):
    """Three searches: each one's maps are its own picture's (as a batch of the three through a net of its own gives
    them, row by row), whichever was searched last; asked again, the same."""
    inside = Inside(model.net, bgr=False)
    x = np.stack([model.preprocess(png_bytes(digit(d))) for d in (2, 5, 8)])
    keys = [inside.store(row) for row in x]
    plain = Net.load(model.files.prototxt, model.files.weights)
    plain.forward(data=x)
    for i in (2, 0, 1, 2):
        for view in inside.views:
            maps = inside.maps(keys[i], view.name)
            assert np.array_equal(maps, plain.blobs[view.top][i, : len(maps)]), (i, view.name)
    assert inside.forwards == 4 * len(inside.views)


def test_maps_run_on_the_inference_thread_after_ready(model, monkeypatch):
    """Maps requests wait for AppConfig.inside_ready (crema serve: the maps plan's kernels, compiled in the
    background) without a thread, then run their forward on the inference thread (never beside a search's forward);
    the app's warm-up runs the maps copy once after start-up, once ready."""
    import concurrent.futures
    import threading

    threads = []
    maps = Inside.maps

    def spy(self, key, layer):
        threads.append(threading.current_thread().name)
        return maps(self, key, layer)

    monkeypatch.setattr(Inside, "maps", spy)
    ready: concurrent.futures.Future = concurrent.futures.Future()
    ready.set_running_or_notify_cancel()
    threading.Timer(0.5, ready.set_result, (None,)).start()
    with client_for(model, inside_ready=ready) as c:
        inside = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(1)), "image/png")}).json()["inside"]
        t0 = time.monotonic()
        assert c.get(inside["layers"][1]["maps_url"]).status_code == 200
        assert time.monotonic() - t0 >= 0.3  # it waited for ready
        assert c.get(inside["layers"][2]["maps_url"]).status_code == 200
    assert threads == ["crema-infer", "crema-infer"]
    warmed = []
    monkeypatch.setattr(Inside, "warm", lambda self: warmed.append(threading.current_thread().name))
    with client_for(model, warmup=True) as c:
        deadline = time.monotonic() + 30
        while not warmed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert warmed == ["crema-infer"]


def test_openapi_documents_inside(model):
    with client_for(model) as c:
        spec = c.get("/api/openapi.json").json()
    assert {"/api/inside/{id}/maps", "/api/filters"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["SearchResult"]["properties"]
    assert "inside" in props and "InsideLayer" in spec["components"]["schemas"]


def test_maps_are_kept_and_bounded(model):
    """A maps PNG asked for again comes from the kept PNGs (no second forward); with no room for maps forwards on the
    inference thread (inside_queue=0) a maps request is refused with 503 and Retry-After, and searches go on."""
    with client_for(model) as c:
        inside = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(7)), "image/png")}).json()["inside"]
        first = c.get(inside["layers"][0]["maps_url"])
        again = c.get(inside["layers"][0]["maps_url"])
        assert first.status_code == again.status_code == 200 and first.content == again.content
        assert c.get("/api/health").json()["inside"]["forwards"] == 1
    with client_for(model, inside_queue=0) as c:
        r = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(7)), "image/png")})
        assert r.status_code == 200
        busy = c.get(r.json()["inside"]["layers"][0]["maps_url"])
        assert busy.status_code == 503 and "too many feature-map requests" in busy.json()["error"]
        assert busy.headers["Retry-After"] == "1"
