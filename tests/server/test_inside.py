"""Inside the network through the API (server.inside): /api/search's `inside`, the feature-map PNGs of the forward
that answered (checked tile by tile against that forward's net.blobs, and against an unfused net), the filters
PNGs, the per-request and cache bounds, and the errors; for LeNet, EfficientNet-Lite0 and CaffeNet's structure
(random weights: its real ones are a 233 MB download)."""

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


class _Blobs:
    """Copies of the blobs a forward writes (Net.observe holds the bound method weakly: it ends with the spy)."""

    def __init__(self) -> None:
        self.seen: dict[str, np.ndarray] = {}

    def record(self, name: str, data: np.ndarray) -> None:
        self.seen[name] = data.copy()


def spy_forward(model: Model, monkeypatch) -> list[dict]:
    """Record, at every forward the server runs, its input and the blobs of every shown layer."""
    seen: list[dict] = []
    views = layer_views(model.net)
    infer = model.infer
    blobs = _Blobs()
    for v in views:
        model.net.observe(v.top, blobs.record)  # during the forward: the net reuses the blobs' memory afterwards

    def spy(x):
        out = infer(x)
        seen.append({"x": x.copy(), **{v.name: blobs.seen[v.top] for v in views}})
        return out

    monkeypatch.setattr(model, "infer", spy)
    return seen


def scale(h: int, w: int, target: int) -> int:
    return max(1, -(-target // max(h, w)))


def check_model(
    model: Model, monkeypatch, image: bytes, *, plain: Net, bgr: bool, layers: int = 3, crop: int = 0
) -> dict:
    """One search: the first `layers` layers' maps equal the answering forward's blobs (normalised per tile), and are
    close to an unfused net's on the same input; the first layer's filters PNG equals its weights (without their
    first `crop` rows and columns, which must be zero). Returns inside."""
    seen = spy_forward(model, monkeypatch)
    with client_for(model) as c:
        r = c.post("/api/search", files={"image": ("q.png", image, "image/png")})
        assert r.status_code == 200, r.text
        inside = r.json()["inside"]
        assert len(seen) == 1  # no second forward for the pictures
        assert [v["name"] for v in inside["layers"]] == [v.name for v in layer_views(model.net)]
        assert inside["first"] == inside["layers"][0]["name"] and inside["layers"][0]["filters"]
        plain.forward(**{plain.inputs[0]: seen[0]["x"]})
        for layer in inside["layers"][:layers]:
            assert layer["kept"], layer
            c_, h, w = layer["shape"]
            n = min(c_, 256)
            png = c.get(layer["maps_url"])
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            tiles = tiles_of(png.content, n, h, w, scale(h, w, MAP_TILE_PX))
            blob = seen[0][layer["name"]][0]
            ref = plain.blobs[layer["blob"]][0]
            np.testing.assert_allclose(blob, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
            for k in range(n):
                assert np.array_equal(tiles[k], expected_tile(blob[k])), (layer["name"], k)
        assert len(seen) == 1
        first = inside["layers"][0]
        wts = model.net.params[first["name"]][0]
        assert not wts[:, :, :crop].any() and not wts[:, :, :, :crop].any()
        wts = wts[:, :, crop:, crop:]
        png = c.get(first["filters_url"])
        assert png.status_code == 200
        tiles = tiles_of(png.content, wts.shape[0], *wts.shape[2:], scale(*wts.shape[2:], FILTER_TILE_PX))
        for k in range(wts.shape[0]):
            f = wts[k, 0] if wts.shape[1] == 1 else (wts[k, ::-1] if bgr else wts[k]).transpose(1, 2, 0)
            assert np.array_equal(tiles[k], expected_tile(f)), k
    return inside


def test_lenet_maps_are_the_answering_forward(model, lenet_files, monkeypatch):
    plain = Net.load(lenet_files["prototxt"], lenet_files["weights"], fuse=False)
    inside = check_model(model, monkeypatch, png_bytes(digit(6)), plain=plain, bgr=False, layers=4)
    assert [v["name"] for v in inside["layers"]] == ["conv1", "pool1", "conv2", "pool2"]
    assert inside["layers"][0]["shape"] == [20, 24, 24] and "normalised on its own" in inside["normalisation"]
    assert [v["filters_url"] is not None for v in inside["layers"]] == [True, False, False, False]


def test_efficientnet_first_conv_and_fused_notes(monkeypatch):
    from net.zoo import resolve

    files = resolve("efficientnet-lite0")
    model = Model.load(files.prototxt, files.weights, files.labels, preset=files.preset)
    plain = Net.load(files.prototxt, files.weights, fuse=False)
    rng = np.random.default_rng(0)
    photo = png_bytes(rng.integers(0, 256, size=(240, 260, 3), dtype=np.uint8))
    inside = check_model(model, monkeypatch, photo, plain=plain, bgr=False, layers=2, crop=1)
    stem = inside["layers"][0]
    assert stem["filters_note"] == "stored as 4x4: the first row and first column, zero in every filter, left out"
    assert (stem["name"], stem["shape"]) == ("stem", [32, 112, 112])  # stride-2 3x3, 32 filters on RGB
    assert "ReLU6 'stem/relu6'" in stem["note"] and "folded into its weights" in stem["note"]
    # every layer's kept maps, not only the first two rendered above, are the unfused net's (no fusion leaves a
    # blob stale: the residual sums fused into the 1x1 projections write both blobs)
    x = model.preprocess(photo)[None]
    capture = Inside(model.net, bgr=False)  # copies the maps during the forward (the net reuses their memory)
    model.infer(x)
    rows = capture.capture(1)
    plain.forward(data=x)
    assert len(rows[0]) == 49
    for view in layer_views(plain):
        ref = plain.blobs[view.top][0, :256]
        np.testing.assert_allclose(rows[0][view.name], ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    head = next(v for v in inside["layers"] if v["name"] == "head")
    assert head["channels"] == 1280 and head["shown"] == 256
    assert all(v["kept"] for v in inside["layers"]) and not inside["note"]  # 22.6 MB of maps: within 24 MB
    # 8 MB a request: the layers that do not fit are listed, not kept, and their maps answer 404 saying why
    with client_for(model, inside_request_bytes=8 << 20) as c:
        r = c.post("/api/search", files={"image": ("q.png", photo, "image/png")})
        inside = r.json()["inside"]
        assert inside["layers"][0]["kept"] and "not kept" in inside["note"]
        layer = next(v for v in inside["layers"] if not v["kept"])
        r = c.get(f"/api/inside/{inside['id']}/maps?layer={layer['name']}")
        assert r.status_code == 404 and "were not kept for this request" in r.json()["error"]


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
    plain = Net.load(ROOT / "models/caffenet/deploy.prototxt", phase="test", fuse=False)
    for name in plain.params:
        for a, b in zip(plain.params[name], net.params[name]):
            a[...] = b
    rng = np.random.default_rng(1)
    photo = png_bytes(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8))
    inside = check_model(model, monkeypatch, photo, plain=plain, bgr=True, layers=2)
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


def test_per_request_budget_and_cache_bounds(model):
    # 62,000 bytes a request: conv1's maps (20 x 24 x 24 floats: 46,080 bytes) fit, then pool1 (11,520) fits,
    # conv2 (12,800) does not, pool2 (3,200) does: 60,800 bytes a request
    with client_for(model, inside_request_bytes=62_000, inside_cache_bytes=100_000) as c:
        ids = []
        for d in range(3):
            r = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(d)), "image/png")})
            inside = r.json()["inside"]
            assert [v["kept"] for v in inside["layers"]] == [True, True, False, True]
            ids.append(inside["id"])
        stats = c.get("/api/health").json()["inside"]
        assert (stats["bytes"], stats["entries"]) == (60_800, 1)  # past 100,000 bytes the oldest go first
        assert c.get(f"/api/inside/{ids[0]}/maps?layer=conv1").status_code == 404
        assert c.get(f"/api/inside/{ids[2]}/maps?layer=conv1").status_code == 200
        r = c.get(f"/api/inside/{ids[2]}/maps?layer=conv2")
        assert r.status_code == 404 and "were not kept" in r.json()["error"]


def test_too_large_grid_and_nothing_kept_are_4xx(model, monkeypatch):
    import net.visualize

    with client_for(model, inside_request_bytes=1_000) as c:  # under conv1's 46,080 bytes: nothing kept
        inside = c.post("/api/search", files={"image": ("q.png", png_bytes(digit(4)), "image/png")}).json()["inside"]
        assert not any(v["kept"] for v in inside["layers"]) and inside["layers"][0]["maps_url"] is None
        r = c.get(f"/api/inside/{inside['id']}/maps?layer=conv1")
        assert r.status_code == 404 and "were not kept for this request" in r.json()["error"]
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


def test_capture_keeps_each_rows_own_maps(model):
    """A batch of three: each row's maps are that row's slice of the batch's blobs (as a net of its own computes
    them), copies (the next forward overwrites the blobs, not them); handed over once."""
    inside = Inside(model.net, bgr=False)
    x = np.stack([model.preprocess(png_bytes(digit(d))) for d in (2, 5, 8)])
    model.infer(x)
    rows = inside.capture(3)
    model.infer(x[::-1].copy())
    plain = Net.load(model.files.prototxt, model.files.weights)
    plain.forward(data=x)
    assert rows and all(rows)
    for i, row in enumerate(rows):
        assert set(row) == {v.name for v in inside.views}
        for name, maps in row.items():
            view = next(v for v in inside.views if v.name == name)
            assert np.array_equal(maps, plain.blobs[view.top][i, : len(maps)]), (i, name)
    second = inside.capture(3)  # the second forward's (the batch reversed), not the first's again
    for name, maps in second[0].items():
        assert np.array_equal(maps, rows[2][name]), name
    assert inside.capture(3) == [{}, {}, {}]  # handed over once


def test_openapi_documents_inside(model):
    with client_for(model) as c:
        spec = c.get("/api/openapi.json").json()
    assert {"/api/inside/{id}/maps", "/api/filters"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["SearchResult"]["properties"]
    assert "inside" in props and "InsideLayer" in spec["components"]["schemas"]


def test_arenas_are_reused_within_the_cache_bound(lenet_files, monkeypatch):
    """A row's maps are views of one arena; once the cache is full, the next forward copies into the arena of the
    entry that leaves it (no fresh memory), the maps are that forward's, and entries plus arenas kept for reuse stay
    within max_bytes; an entry being drawn keeps its arena until the drawing is done; kept arenas go after ttl_s."""
    import server.inside

    model = Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])  # no other Inside
    per_row = 73_600  # LeNet's conv1, pool1, conv2 and pool2 maps: 46,080 + 11,520 + 12,800 + 3,200 bytes
    fresh = []
    new_arena = server.inside._new_arena
    monkeypatch.setattr(server.inside, "_new_arena", lambda n: fresh.append(n) or new_arena(n))
    inside = Inside(model.net, bgr=False, max_bytes=2 * per_row + 1000)
    x = [model.preprocess(png_bytes(digit(d)))[None] for d in range(4)]
    keys, arenas, copies = [], [], []
    for i in range(3):
        model.infer(x[i])
        row = inside.capture(1)[0]
        assert row.arena.nbytes == per_row and all(np.shares_memory(m, row.arena) for m in row.values())
        arenas.append(row.arena)
        copies.append({k: v.copy() for k, v in row.items()})
        keys.append(inside.store(row))
        assert row.arena is None  # the entry owns it now
        maker = inside._maker
        if maker is not None:
            maker.join()  # while the cache fills, the next arena is mapped ahead on a thread of its own
        stats = inside.stats()
        assert stats["bytes"] + stats["reuse_bytes"] <= inside.max_bytes
        assert stats["reuse_bytes"] == (per_row if i == 0 else 0)  # room for one more only after the first
    # the first forward's arena and the one made ahead for the second; the third made room: the first entry went
    # and its arena was reused
    assert fresh == [per_row] * 2
    assert arenas[2] is arenas[0] and inside.stats()["entries"] == 2
    # the second entry is being drawn while the next forward drops it: its arena is not taken
    entry = inside.get(keys[1], reading=True)
    model.infer(x[3])
    row = inside.capture(1)[0]
    assert fresh == [per_row] * 3 and not np.shares_memory(row.arena, arenas[1])
    assert all(np.array_equal(entry.maps[k], v) for k, v in copies[1].items())  # still the second's maps
    inside.done(entry)  # now it can be reused
    assert inside.stats()["reuse_bytes"] == per_row
    inside.store(row)
    assert inside.stats()["reuse_bytes"] == 0  # 2 entries (147,200 bytes) leave no room within 148,200
    model.infer(x[0])
    again = inside.capture(1)[0]
    assert len(fresh) == 3 and again.arena is arenas[2]  # the oldest entry's, reused
    plain = Net.load(model.files.prototxt, model.files.weights)
    plain.forward(data=x[0])
    for name, maps in again.items():
        view = next(v for v in inside.views if v.name == name)
        assert np.array_equal(maps, plain.blobs[view.top][0, : len(maps)]), name
    inside.store(again)
    inside.ttl_s = 0.0  # everything expires: entries and the arenas kept for reuse
    time.sleep(0.01)
    assert inside.stats()["entries"] == 0 and inside.stats()["reuse_bytes"] == 0
