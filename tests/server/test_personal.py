"""The personal gallery through the JSON API (Starlette's TestClient, the random-weight LeNet): add, list, search
merged with the --gallery index, remove, clear, limits, persistence across an app restart, the switch-off, bad
uploads, ids out of range, concurrent adds, crash leftovers and atomic writes. Features of an added photo are
checked bit for bit against the model's own features of the same bytes."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import server.personal
from net import Net
from server.app import AppConfig, create_app
from server.gallery import build_array_index
from server.model import Model
from server.personal import THUMB_SIZE, PersonalGallery, clean_name, open_personal
from server.web import WebSearch
from tests.conftest import randomize
from tests.server.conftest import FakeBing, digit, png_bytes
from tests.server.test_app import bomb_png

SCORE_ATOL = 1e-5  # float32 dot products of unit vectors vs the float64 reference


@pytest.fixture(scope="module")
def gallery(model, tmp_path_factory):
    """30 digits (0..9 at three shifts), labels 0..9: the --gallery index beside the personal gallery."""
    images = np.stack([digit(d, dx, 0) for dx in (-1, 0, 1) for d in range(10)])
    labels = np.array([d for _ in range(3) for d in range(10)])
    return build_array_index(images, labels, model, tmp_path_factory.mktemp("g") / "idx", name="t", progress=False)


def client_for(
    model, cache: Path, gallery=None, *, personal: bool = True, max_photos=2000, max_bytes=500_000_000, **cfg
):
    cfg.setdefault("warmup", False)
    store = open_personal(model, cache, max_photos=max_photos, max_bytes=max_bytes) if personal else None
    app = create_app(model, gallery=gallery, personal=store, web=WebSearch(FakeBing()), config=AppConfig(**cfg))
    return TestClient(app)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def client(model, cache):
    with client_for(model, cache) as c:
        yield c


def add(c: TestClient, data: bytes, name: str = "photo.png", ctype: str = "image/png"):
    return c.post("/api/personal", files={"image": (name, data, ctype)})


def search(c: TestClient, data: bytes) -> dict:
    r = c.post("/api/search", files={"image": ("q.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def folder(model, cache: Path) -> Path:
    return cache / "personal" / model.fingerprint[:16]


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A colour 'photo' (JPEG) of random blocks."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
    return png_bytes(img, "JPEG", quality=90)


def files_on_disk(model, cache: Path) -> dict[str, list[str]]:
    root = folder(model, cache)
    return {sub: sorted(p.name for p in (root / sub).iterdir()) for sub in ("photos", "thumbs", "features")}


# -- adding and listing --------------------------------------------------------------------------------------------
def test_add_and_list(client, model, cache):
    data = png_bytes(digit(3))
    r = add(client, data, "three.png")
    assert r.status_code == 201, r.text
    body = r.json()
    item = body["item"]
    assert item["id"] == 0 and item["name"] == "three.png" and item["media_type"] == "image/png"
    assert (item["width"], item["height"]) == (28, 28)
    assert item["thumb_url"] == "/api/personal/0/thumb" and item["image_url"] == "/api/personal/0/image"
    root = folder(model, cache)
    stored = sum(
        (root / sub / name).stat().st_size for sub, names in files_on_disk(model, cache).items() for name in names
    )
    assert item["bytes"] == stored and body["count"] == 1 and body["bytes"] == stored
    assert body["max_photos"] == 2000 and body["max_bytes"] == 500_000_000
    assert files_on_disk(model, cache) == {"photos": ["0.png"], "thumbs": ["0.jpg"], "features": ["0.npy"]}

    jpeg = photo(1, (300, 200))
    r2 = add(client, jpeg, "holiday/beach.jpg", "image/jpeg")
    assert r2.status_code == 201 and r2.json()["item"]["id"] == 1
    listing = client.get("/api/personal").json()
    assert [it["id"] for it in listing["items"]] == [0, 1] and listing["count"] == 2
    assert listing["items"][1]["name"] == "beach.jpg" and listing["items"][1]["media_type"] == "image/jpeg"
    assert (listing["items"][1]["width"], listing["items"][1]["height"]) == (300, 200)
    assert client.get("/api/health").json()["personal"]["count"] == 2


def test_features_equal_the_models_features_exactly(client, model, cache):
    """The stored features are the model's features of the same bytes, bit for bit (one photo at a time goes
    through the batcher as a batch of one, the same forward as model.infer on one image)."""
    for k, data in enumerate(
        [png_bytes(digit(5)), photo(2), png_bytes(Image.fromarray(255 - digit(7)).convert("RGB"))]
    ):
        assert add(client, data).status_code == 201
        expected = model.infer(model.preprocess(data)[None])[1][0]
        stored = np.load(folder(model, cache) / "features" / f"{k}.npy", allow_pickle=False)
        assert stored.dtype == np.float32 and stored.shape == (model.feature_dim,)
        np.testing.assert_array_equal(stored, expected)
        ids, feats = client.app.state.crema.personal._snapshot
        np.testing.assert_array_equal(feats[list(ids).index(k)], expected)


def test_thumbnail_and_image(client):
    data = photo(3, (400, 300))
    assert add(client, data, "..\\../etc/passwd.jpg", "image/jpeg").status_code == 201
    t = client.get("/api/personal/0/thumb")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(t.content))
    assert thumb.format == "JPEG" and max(thumb.size) == THUMB_SIZE and thumb.size == (160, 120)
    full = client.get("/api/personal/0/image")
    assert full.status_code == 200 and full.content == data and full.headers["content-type"] == "image/jpeg"
    assert full.headers["content-disposition"] == 'inline; filename="photo-0.jpg"'
    d = client.get("/api/personal/0/image", params={"download": "1"})
    assert d.headers["content-disposition"] == 'attachment; filename="photo-0.jpg"'
    # the client's file name is a display string only: its last component
    assert client.get("/api/personal").json()["items"][0]["name"] == "passwd.jpg"


def test_clean_name():
    assert clean_name("C:\\photos\\cat.jpg") == "cat.jpg" and clean_name("a/b/../dog.png") == "dog.png"
    assert clean_name("bad\x00\x1b[31mname.png") == "bad[31mname.png"
    assert clean_name("x" * 300 + ".jpg") == "x" * 120 and clean_name("dir/") is None and clean_name(None) is None


# -- search --------------------------------------------------------------------------------------------------------
def test_search_merges_gallery_and_personal_by_score(model, cache, gallery):
    mine = [png_bytes(digit(3, 0, 0, 4)), png_bytes(digit(8, 1, 1, 2)), photo(4)]
    with client_for(model, cache, gallery) as c:
        for data in mine:
            assert add(c, data).status_code == 201
        query = png_bytes(digit(3, 0, 0, 4))  # the same bytes as personal photo 0
        body = search(c, query)
    similar = body["similar"]
    assert len(similar) == 12 and body["similar_error"] is None
    top = similar[0]
    assert (top["source"], top["id"]) == ("personal", 0) and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["thumb_url"] == "/api/personal/0/thumb" and top["label"] is None and top["name"] == "photo.png"
    # reference: every candidate of both sources scored in float64, merged, best 12
    q = model.infer(model.preprocess(query)[None])[1][0].astype(np.float64)
    candidates = [("gallery", i, float(f @ q)) for i, f in enumerate(gallery.features.astype(np.float64))]
    for i, data in enumerate(mine):
        f = model.infer(model.preprocess(data)[None])[1][0].astype(np.float64)
        candidates.append(("personal", i, float(f @ q)))
    ref = sorted(candidates, key=lambda c: -c[2])[:12]
    np.testing.assert_allclose([s["score"] for s in similar], [r[2] for r in ref], rtol=0, atol=SCORE_ATOL)
    for got, want in zip(similar, ref):
        assert (got["source"], got["id"]) == want[:2] or abs(got["score"] - want[2]) < SCORE_ATOL
    assert [s["score"] for s in similar] == sorted((s["score"] for s in similar), reverse=True)
    assert {s["source"] for s in similar} == {"gallery", "personal"}
    for s in similar:
        assert s["thumb_url"] == f"/api/{s['source']}/{s['id']}/thumb"
        if s["source"] == "gallery":
            assert s["label"] is not None and s["name"] is None


def test_search_with_only_the_personal_gallery(client):
    empty = search(client, png_bytes(digit(1)))
    assert empty["similar"] == []
    assert "crema index DIR" in empty["similar_error"] and "personal gallery" in empty["similar_error"]
    assert add(client, png_bytes(digit(1))).status_code == 201
    assert add(client, png_bytes(digit(2))).status_code == 201
    body = search(client, png_bytes(digit(1)))
    assert body["similar_error"] is None
    assert [(s["source"], s["id"]) for s in body["similar"]] == [("personal", 0), ("personal", 1)]


# -- removing ------------------------------------------------------------------------------------------------------
def test_remove_one_then_all(client, model, cache):
    for d in (1, 2, 3):
        assert add(client, png_bytes(digit(d))).status_code == 201
    sizes = {it["id"]: it["bytes"] for it in client.get("/api/personal").json()["items"]}
    r = client.delete("/api/personal/1")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "removed": 1,
        "count": 2,
        "bytes": sizes[0] + sizes[2],
        "max_photos": 2000,
        "max_bytes": 500_000_000,
        "revision": 5,  # the new folder's manifest, 3 adds, this remove
    }
    assert [it["id"] for it in client.get("/api/personal").json()["items"]] == [0, 2]
    assert files_on_disk(model, cache)["features"] == ["0.npy", "2.npy"]
    assert client.get("/api/personal/1/thumb").status_code == 404
    assert client.get("/api/personal/1/image").status_code == 404
    again = client.delete("/api/personal/1")
    assert again.status_code == 404 and again.json()["error"] == "no photo 1 in the personal gallery"
    assert all(s["id"] != 1 for s in search(client, png_bytes(digit(2)))["similar"])

    cleared = client.delete("/api/personal")
    assert cleared.status_code == 200 and cleared.json()["removed"] == 2 and cleared.json()["count"] == 0
    assert files_on_disk(model, cache) == {"photos": [], "thumbs": [], "features": []}
    assert client.get("/api/personal").json()["items"] == []
    assert search(client, png_bytes(digit(2)))["similar"] == []
    # ids are never reused: a browser's cached thumbnail of photo 2 never shows another photo
    assert add(client, png_bytes(digit(4))).json()["item"]["id"] == 3


# -- limits --------------------------------------------------------------------------------------------------------
def test_count_limit(model, cache):
    with client_for(model, cache, max_photos=2) as c:
        assert add(c, png_bytes(digit(1))).status_code == 201
        assert add(c, png_bytes(digit(2))).status_code == 201
        r = add(c, png_bytes(digit(3)))
        assert r.status_code == 409
        assert (
            r.json()["error"]
            == "the personal gallery is full: it holds 2 photos, the limit is 2; remove some photos first"
        )
        assert c.get("/api/personal").json()["count"] == 2 and len(files_on_disk(model, cache)["photos"]) == 2
        assert c.delete("/api/personal/0").status_code == 200
        assert add(c, png_bytes(digit(3))).status_code == 201


def test_bytes_limit(model, cache, tmp_path):
    data = photo(5, (200, 150))
    with client_for(model, tmp_path / "probe") as c:
        size = add(c, data).json()["item"]["bytes"]  # what one such photo stores: photo + thumbnail + features
    with client_for(model, cache, max_bytes=2 * size + size // 2) as c:
        assert add(c, data).status_code == 201
        assert add(c, data).status_code == 201  # the same photo twice is allowed: two items
        r = add(c, data)
        assert r.status_code == 409, r.text
        assert "full" in r.json()["error"] and "limit is left" in r.json()["error"]
        assert c.get("/api/personal").json()["bytes"] == 2 * size
        assert len(files_on_disk(model, cache)["photos"]) == 2
    with client_for(model, tmp_path / "tiny", max_bytes=len(data) // 2) as c:  # refused before decoding
        r = add(c, data)
        assert r.status_code == 409 and c.get("/api/personal").json()["count"] == 0


def test_upload_limits_and_checks_are_the_searchs(model, cache):
    """The /api/search checks: size cap, allowed formats, pixel limit, empty, truncated, not an image."""
    with client_for(model, cache, max_upload=5000, max_pixels=100 * 100) as c:
        cases = [
            (add(c, b"\0" * 70_000), 413, "too large"),  # over the body limit (declared length)
            (add(c, b"\0" * 5001), 413, "5,001 bytes"),  # the image part over the limit
            (add(c, png_bytes(np.zeros((120, 120), dtype=np.uint8))), 413, "Mpx"),  # 14,400 px > 10,000
            (add(c, b"hello, this is text\n" * 10, "notes.txt", "text/plain"), 415, "not an image"),
            (add(c, b""), 400, "empty"),
            (
                add(c, png_bytes(Image.fromarray(digit(2)).convert("RGB"), "TIFF"), "x.tif", "image/tiff"),
                415,
                "not allowed",
            ),
        ]
        data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
        cases.append((add(c, data[: len(data) // 2]), 400, "truncated"))
        cases.append(
            (c.post("/api/personal", files={"picture": ("a.png", png_bytes(digit(1)), "image/png")}), 400, "'image'")
        )
        cases.append((c.post("/api/personal", json={"url": "https://example.com/a.jpg"}), 415, "multipart/form-data"))
        cases.append(
            (
                c.post(
                    "/api/personal",
                    content=b"--b\r\nbroken",
                    headers={"Content-Type": "multipart/form-data; boundary=b"},
                ),
                400,
                "multipart",
            )
        )
        for r, status, words in cases:
            assert r.status_code == status, (words, r.status_code, r.text)
            assert words in r.json()["error"], (words, r.json())
        assert c.get("/api/personal").json()["count"] == 0
        assert files_on_disk(model, cache) == {"photos": [], "thumbs": [], "features": []}
        assert c.app.state.crema.batcher._expected == 0  # every refused upload withdrew its announcement


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb(client):
    r = add(client, bomb_png(20_000, 20_000))
    assert r.status_code == 413 and "Mpx" in r.json()["error"]
    assert client.get("/api/personal").json()["count"] == 0


# -- ids -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/personal/0/thumb"),
        ("GET", "/api/personal/1/image"),
        ("GET", "/api/personal/99999999999999999999/image"),
        ("GET", "/api/personal/-1/thumb"),
        ("GET", "/api/personal/1e3/thumb"),
        ("GET", "/api/personal/..%2f..%2fetc%2fpasswd/image"),
        ("GET", "/api/personal/photos%2f0.png/image"),
        ("DELETE", "/api/personal/7"),
        ("DELETE", "/api/personal/-1"),
        ("DELETE", "/api/personal/99999999999999999999"),
        ("DELETE", "/api/personal/abc"),
    ],
)
def test_ids_out_of_range(client, method, path):
    assert add(client, png_bytes(digit(1))).json()["item"]["id"] == 0
    assert client.delete("/api/personal/0").status_code == 200  # id 0 existed once: still 404 now
    r = client.request(method, path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "error" in r.json()


def test_wrong_methods(client):
    assert client.put("/api/personal").status_code == 405
    assert client.post("/api/personal/0").status_code == 405
    assert client.delete("/api/personal/0/thumb").status_code == 405


# -- switched off ---------------------------------------------------------------------------------------------------
def test_switched_off(model, cache):
    with client_for(model, cache, personal=False) as c:
        for method, path in [
            ("GET", "/api/personal"),
            ("DELETE", "/api/personal"),
            ("DELETE", "/api/personal/0"),
            ("GET", "/api/personal/0/thumb"),
            ("GET", "/api/personal/0/image"),
        ]:
            r = c.request(method, path)
            assert r.status_code == 403, (method, path)
            assert r.json() == {
                "error": "the personal gallery is turned off on this server (crema serve --no-personal-gallery)"
            }
        r = add(c, png_bytes(digit(1)))
        assert r.status_code == 403 and "turned off" in r.json()["error"]
        assert c.get("/api/health").json()["personal"] is None
        body = search(c, png_bytes(digit(1)))
        assert body["similar"] == [] and body["similar_error"] is None  # no gallery note given to create_app
    assert not cache.exists()  # nothing was written


# -- persistence ---------------------------------------------------------------------------------------------------
def test_persists_across_restart(model, cache):
    data = [png_bytes(digit(d)) for d in (4, 5, 6)]
    with client_for(model, cache) as c:
        for d in data:
            assert add(c, d).status_code == 201
        assert c.delete("/api/personal/2").status_code == 200  # the newest: next_id must still move on
        before = c.get("/api/personal").json()
        feats_before = c.app.state.crema.personal._snapshot[1].copy()
    with client_for(model, cache) as c:  # a new app, a new PersonalGallery read from disk
        after = c.get("/api/personal").json()
        assert after == before and [it["id"] for it in after["items"]] == [0, 1]
        np.testing.assert_array_equal(c.app.state.crema.personal._snapshot[1], feats_before)
        assert c.get("/api/personal/1/image").content == data[1]
        top = search(c, data[1])["similar"][0]
        assert (top["source"], top["id"]) == ("personal", 1) and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert add(c, data[2]).json()["item"]["id"] == 3


def test_one_folder_per_model(model, cache, lenet_files, tmp_path):
    """Another model's (here: other weights') photos live in another folder and never mix."""
    d = tmp_path / "other"
    d.mkdir()
    shutil.copy(lenet_files["prototxt"], d / "deploy.prototxt")
    shutil.copy(lenet_files["labels"], d / "labels.txt")
    net = Net.load(d / "deploy.prototxt", phase="test")
    randomize(net, seed=1)
    net.save(d / "other.caffemodel")
    other = Model.load(d / "deploy.prototxt", d / "other.caffemodel", d / "labels.txt")
    assert other.fingerprint != model.fingerprint
    with client_for(model, cache) as c:
        assert add(c, png_bytes(digit(1))).status_code == 201
    with client_for(other, cache) as c:
        assert c.get("/api/personal").json()["count"] == 0
        assert search(c, png_bytes(digit(1)))["similar"] == []
    assert sorted(p.name for p in (cache / "personal").iterdir()) == sorted(
        [model.fingerprint[:16], other.fingerprint[:16]]
    )
    manifest = json.loads((folder(model, cache) / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == model.fingerprint
    # a folder whose manifest names another model is refused, not mixed in
    shutil.copy(folder(model, cache) / "manifest.json", folder(other, cache) / "manifest.json")
    with pytest.raises(ValueError, match="another model"):
        open_personal(other, cache)


# -- crash safety and concurrency --------------------------------------------------------------------------------------
def test_crash_leftovers_are_removed_on_open(model, cache):
    with client_for(model, cache) as c:
        assert add(c, png_bytes(digit(1))).status_code == 201
    root = folder(model, cache)
    leftovers = [root / "photos" / "7.png", root / "features" / "7.npy", root / "thumbs" / ".7.jpg.k2j4x9q1.tmp",
                 root / ".manifest.json.0a1b2c3d.tmp"]  # fmt: skip  (net.paths.write_atomic temporary names)
    for p in leftovers:
        p.write_bytes(b"partial")
    (root / "notes.txt").write_text("not ours")
    store = open_personal(model, cache)
    assert len(store) == 1 and not any(p.exists() for p in leftovers)
    assert (root / "notes.txt").exists() and (root / "photos" / "0.png").exists()


def test_failed_write_leaves_the_gallery_as_it_was(client, model, cache, monkeypatch):
    assert add(client, png_bytes(digit(1))).status_code == 201
    manifest = (folder(model, cache) / "manifest.json").read_bytes()
    real_replace = server.personal.os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "manifest.json":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(server.personal.os, "replace", failing_replace)
    r = add(client, png_bytes(digit(2)))
    assert (
        r.status_code == 507 and r.json()["error"] == "the server could not store the change: No space left on device"
    )
    monkeypatch.undo()
    assert (folder(model, cache) / "manifest.json").read_bytes() == manifest  # the old manifest, whole
    assert files_on_disk(model, cache) == {"photos": ["0.png"], "thumbs": ["0.jpg"], "features": ["0.npy"]}
    assert not [p for p in folder(model, cache).rglob(".*tmp*")]  # no temporary file left behind
    assert client.get("/api/personal").json()["count"] == 1
    assert add(client, png_bytes(digit(2))).json()["item"]["id"] == 1


def test_corrupt_manifest_is_refused(model, cache):
    open_personal(model, cache)
    (folder(model, cache) / "manifest.json").write_text('{"format": "crema-personal", "vers')
    with pytest.raises(ValueError, match="manifest.json cannot be read"):
        open_personal(model, cache)


def test_concurrent_uploads(model, cache):
    """16 adds at once: unique ids, every one stored, features as the model's (batched forwards: to float32
    noise), and with a limit of 10 exactly 10 succeed."""
    photos = [png_bytes(digit(d % 10, d // 10, 0)) for d in range(16)]

    async def go(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(
                *[c.post("/api/personal", files={"image": (f"{k}.png", p, "image/png")}) for k, p in enumerate(photos)]
            )

    for limit, cache_dir in ((2000, cache / "a"), (10, cache / "b")):
        store = open_personal(model, cache_dir, max_photos=limit)
        # a long window: batches close when the announced requests are in, not when a loaded machine's clock says
        app = create_app(model, personal=store, config=AppConfig(warmup=False, window_ms=2000.0))
        responses = asyncio.run(go(app))
        app.state.crema.batcher.close()
        ok = [r for r in responses if r.status_code == 201]
        assert len(ok) == min(16, limit) and all(r.status_code == 409 for r in responses if r.status_code != 201)
        ids = sorted(r.json()["item"]["id"] for r in ok)
        assert ids == list(range(len(ok)))
        # every answer's counts are a state at least as new as its own add: the page keeps the highest revision
        by_revision = sorted((r.json()["revision"], r.json()["count"]) for r in ok)
        assert by_revision[-1] == (1 + len(ok), len(ok)) and all(c >= 1 for _, c in by_revision)
        assert [c for _, c in by_revision] == sorted(c for _, c in by_revision)
        reopened = PersonalGallery(store.path, store.model, max_photos=limit)  # what a restart reads
        assert [it["id"] for it in reopened.items()] == ids
        for r in ok:
            item = r.json()["item"]
            expected = model.infer(model.preprocess(photos[int(item["name"].split(".")[0])])[None])[1][0]
            stored = np.load(store.path / "features" / f"{item['id']}.npy")
            np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-6)
    assert app.state.crema.batcher.stats()["batches"] < 16


def test_two_processes_on_one_folder(model, cache):
    """Two instances on the same folder (as two `crema serve` processes would be) see each other's changes
    and never hand out the same id."""
    a = open_personal(model, cache)
    b = open_personal(model, cache)
    x = model.preprocess(png_bytes(digit(1)))
    feature = model.infer(x[None])[1][0]
    photo_ = server.personal.prepare_photo(png_bytes(digit(1)))
    assert a.add(photo_, feature)["id"] == 0
    assert [it["id"] for it in b.items()] == [0]
    assert b.add(photo_, feature)["id"] == 1
    assert a.remove(1)["id"] == 1
    assert [it["id"] for it in b.items()] == [0] and b.summary()["count"] == 1
    assert a.add(photo_, feature)["id"] == 2
    # the revision counts the manifest's writes from both: creation, add, add, remove, add
    assert a.summary()["revision"] == b.summary()["revision"] == 5
    assert PersonalGallery(a.path, a.model).summary()["revision"] == 5
