"""A real browser on the real server: headless Chromium opens the page served by `crema serve`, uploads a
digit through the file input, and must show the top-5 bar chart (the same classes and percentages as an
independent Net forward), similar-image tiles from the gallery and web tiles from the fake Bing, all with
their thumbnails loaded. Also: drag-and-drop, paste, "more web results", and a server error in plain words.
Then "Your photos" (the personal gallery): photos added through the file picker with progress, a per-file error,
thumbnails, a search that finds one of them, removal one by one and "Remove all".

Chromium: $CREMA_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium (Debian's package; .ci/run
installs it). Missing, the test fails under CI (CI=true) and is skipped elsewhere, with the reason.
Screenshots are kept at artifacts/browser_search.png and artifacts/browser_personal.png (ignored by git;
$CREMA_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from net import Net
from tests.conftest import ROOT
from tests.server.cdp import Chromium
from tests.server.conftest import digit, png_bytes


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("CREMA_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = "Chromium not found (install Debian's `chromium` package, or set CREMA_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: the browser test must run in CI; .ci/run installs it with apt-get")
        pytest.skip(reason)
    return binary


def artifacts_dir() -> Path:
    return Path(os.environ.get("CREMA_ARTIFACTS") or ROOT / "artifacts")


PREDICTIONS_JS = """JSON.stringify(Array.from(document.querySelectorAll('#predictions li')).map(li => [
  li.querySelector('.label').textContent, li.querySelector('.pct').textContent]))"""
IMAGES_LOADED_JS = """Array.from(document.querySelectorAll('#similar img, #web img'))
  .every(img => img.complete && img.naturalWidth > 0)"""
COUNT_JS = "document.querySelectorAll('{}').length"


# What a person sees, not the `hidden` property: laid out (some box on screen) and not made invisible by CSS.
SHOWN_JS = """(id => {{ const el = document.getElementById(id); const st = getComputedStyle(el);
  return el.getClientRects().length > 0 && st.visibility !== 'hidden' && st.display !== 'none'; }})('{}')"""


def shown(browser, page, *ids: str) -> dict[str, bool]:
    return {i: browser.eval(page, SHOWN_JS.format(i)) for i in ids}


def test_upload_through_the_page(crema_server, chromium, tmp_path, capsys):
    a = digit(2)
    image = tmp_path / "two.png"
    image.write_bytes(png_bytes(a))
    net = Net.load(crema_server.files["prototxt"], crema_server.files["weights"], phase="test")
    ref = net.forward(data=(a.astype(np.float32) * np.float32(0.00390625))[None, None])["prob"][0]
    order = np.argsort(-ref, kind="stable")[:5]
    expected = [[str(i), f"{100 * ref[i]:.1f}%"] for i in order]

    with Chromium(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page()
        browser.send("Page.navigate", {"url": crema_server.url + "/"}, page)
        browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
        browser.wait_for_js(page, "document.getElementById('model-info').textContent.includes('LeNet')")
        # first load: no broken preview, no "New search", no results, no "More web results"
        assert shown(browser, page, "preview", "preview-img", "clear-button", "results", "more-button", "error") == {
            "preview": False, "preview-img": False, "clear-button": False, "results": False, "more-button": False,
            "error": False}  # fmt: skip
        assert shown(browser, page, "dropzone", "url-input") == {
            "dropzone": True, "url-input": True}  # fmt: skip

        browser.set_file(page, "#file-input", image)
        browser.wait_for_js(
            page, f"{COUNT_JS.format('#predictions li')} === 5 && !document.body.classList.contains('busy')",
            what="the predictions",
        )  # fmt: skip
        assert json.loads(browser.eval(page, PREDICTIONS_JS)) == expected
        assert browser.eval(page, COUNT_JS.format("#similar .tile")) == 12
        assert browser.eval(page, COUNT_JS.format("#web .tile")) == 6
        assert browser.eval(page, "document.getElementById('error').hidden") is True
        assert browser.eval(page, "document.getElementById('preview-img').src").startswith("blob:")
        similar = json.loads(browser.eval(page, "JSON.stringify(Array.from(document.querySelectorAll("
                                                "'#similar .title')).map(t => t.textContent))"))  # fmt: skip
        assert similar[0] == "label 2"  # the identical digit from the gallery comes first
        browser.wait_for_js(page, IMAGES_LOADED_JS, what="all thumbnails to load")
        links = json.loads(browser.eval(page, "JSON.stringify(Array.from(document.querySelectorAll("
                                              "'#similar .tile')[0].querySelectorAll('a')).map(x => x.href))"))  # fmt: skip
        assert links[0].startswith(crema_server.url + "/api/gallery/") and links[1].endswith("?download=1")

        shot = browser.screenshot(page, artifacts_dir() / "browser_search.png")
        shutil.copy(shot, tmp_path / "browser_search.png")
        assert shown(browser, page, "preview", "preview-img", "clear-button", "results", "more-button") == {
            "preview": True, "preview-img": True, "clear-button": True, "results": True, "more-button": True}  # fmt: skip

        # "More web results" appends the next page
        browser.eval(page, "document.getElementById('more-button').click()")
        browser.wait_for_js(page, f"{COUNT_JS.format('#web .tile')} === 12", what="the second page of web results")

        # drag-and-drop and paste deliver a File like a real drop / paste would
        drop = """(async () => {
          const blob = await (await fetch('/api/gallery/75/image')).blob();  // a '8' of the digit folder
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                                   cancelable: true}));
          return true; })()"""
        browser.eval(page, drop)
        browser.wait_for_js(page, "document.querySelector('#similar .title').textContent === 'label 8'"
                                  " && !document.body.classList.contains('busy')", what="the dropped image's results")  # fmt: skip
        paste = """(async () => {
          const blob = await (await fetch('/api/gallery/40/image')).blob();  // a '4'
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
          document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
          return true; })()"""
        browser.eval(page, paste)
        browser.wait_for_js(page, "document.querySelector('#similar .title').textContent === 'label 4'"
                                  " && !document.body.classList.contains('busy')", what="the pasted image's results")  # fmt: skip

        # a server-side error reaches the user in plain words
        fake = tmp_path / "not-really.png"
        fake.write_text("this is text, not a picture")
        browser.set_file(page, "#file-input", fake)
        browser.wait_for_js(page, "!document.getElementById('error').hidden", what="the error message")
        error = browser.eval(page, "document.getElementById('error').textContent")
        assert "not an image" in error and "JPEG, PNG" in error
        assert shown(browser, page, "error")["error"] is True

        # "New search" empties the page: no old photo, results or error left on screen
        browser.eval(page, "document.getElementById('clear-button').click()")
        assert shown(browser, page, "preview", "results", "more-button", "error", "clear-button") == {
            "preview": False, "results": False, "more-button": False, "error": False, "clear-button": False}  # fmt: skip
        assert browser.eval(page, "document.getElementById('preview-img').getAttribute('src')") is None
        assert browser.eval(page, "document.getElementById('file-input').value") == ""

    with capsys.disabled():
        print(f"\nbrowser screenshot: {shot}")
    assert shot.stat().st_size > 10_000


PERSONAL_TILES_JS = "document.querySelectorAll('#personal-grid .tile').length"
PERSONAL_IMAGES_LOADED_JS = """Array.from(document.querySelectorAll('#personal-grid img'))
  .every(img => img.complete && img.naturalWidth > 0)"""
# every text the progress line shows, in order (installed before the files are chosen)
WATCH_PROGRESS_JS = """(() => { window.progressSeen = [];
  const node = document.getElementById('personal-status');
  new MutationObserver(() => window.progressSeen.push(node.textContent))
    .observe(node, {childList: true, characterData: true, subtree: true});
  return true; })()"""


def test_personal_gallery_through_the_page(crema_server, chromium, tmp_path, capsys):
    """Two photos (and one broken file) into "Your photos" through the file picker: the progress line counts
    them, the broken one gets its own error, thumbnails appear; a search finds the added photo first; one photo
    is removed with its button, then the rest with "Remove all". The server's list agrees at every step."""
    import httpx

    seven = tmp_path / "seven.png"
    seven.write_bytes(png_bytes(digit(7, 0, 0, 5)))  # not in the --gallery folder (stroke width 5)
    three = tmp_path / "three.jpg"
    three.write_bytes(png_bytes(255 - digit(3), "JPEG", quality=95))  # dark ink on white, as a photo would be
    broken = tmp_path / "broken.png"
    broken.write_text("this is text, not a picture")
    api = httpx.Client(base_url=crema_server.url, timeout=30)

    def names() -> list[str]:
        return [it["name"] for it in api.get("/api/personal").json()["items"]]

    try:
        assert names() == []
        with Chromium(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
            page = browser.new_page()
            browser.send("Page.navigate", {"url": crema_server.url + "/"}, page)
            browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
            assert browser.eval(page, "document.getElementById('personal').hidden") is False
            assert browser.eval(page, "document.getElementById('gallery-hint').hidden") is True  # --gallery is set
            assert browser.eval(page, "document.getElementById('personal-count').textContent") == (
                "0 of 2000 photos · 0 bytes of 500 MB"
            )

            browser.eval(page, WATCH_PROGRESS_JS)
            root = browser.send("DOM.getDocument", {}, page)["root"]["nodeId"]
            node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#personal-files"}, page)["nodeId"]
            browser.send(
                "DOM.setFileInputFiles", {"files": [str(seven), str(broken), str(three)], "nodeId": node}, page
            )
            browser.wait_for_js(
                page, "document.getElementById('personal-status').textContent === 'indexed 2 of 3 · 1 not added'",
                what="the progress line to reach the end",
            )  # fmt: skip
            browser.wait_for_js(page, f"{PERSONAL_TILES_JS} === 2 && {PERSONAL_IMAGES_LOADED_JS}", what="2 thumbnails")
            seen = json.loads(browser.eval(page, "JSON.stringify(window.progressSeen)"))
            assert seen[0] == "indexed 0 of 3" and seen[-1] == "indexed 2 of 3 · 1 not added", seen
            assert browser.eval(page, "document.getElementById('personal-bar').value") == 3
            errors = json.loads(browser.eval(page, "JSON.stringify(Array.from(document.querySelectorAll("
                                                   "'#personal-errors li')).map(li => li.textContent))"))  # fmt: skip
            assert len(errors) == 1 and errors[0].startswith("broken.png: ") and "not an image" in errors[0]
            titles = json.loads(browser.eval(page, "JSON.stringify(Array.from(document.querySelectorAll("
                                                   "'#personal-grid .title')).map(t => t.textContent).sort())"))  # fmt: skip
            assert titles == ["seven.png", "three.jpg"] and sorted(names()) == titles
            count = browser.eval(page, "document.getElementById('personal-count').textContent")
            assert count.startswith("2 of 2000")
            # the uploads' answers can arrive out of order: an older state (lower revision) does not replace it
            browser.eval(page, "setCounts({count: 1, bytes: 1, max_photos: 2000, max_bytes: 500000000, revision: 0})")
            assert browser.eval(page, "document.getElementById('personal-count').textContent") == count
            shot = browser.screenshot(page, artifacts_dir() / "browser_personal.png")

            # a search with the added photo finds it first, marked as one of yours
            browser.set_file(page, "#file-input", seven)
            browser.wait_for_js(page, f"{COUNT_JS.format('#similar .tile')} === 12 && "
                                      "!document.body.classList.contains('busy')", what="the search results")  # fmt: skip
            first = json.loads(browser.eval(page, "JSON.stringify((t => [t.dataset.source, t.querySelector('.title')"
                                                  ".textContent, t.querySelector('.muted').textContent])("
                                                  "document.querySelector('#similar .tile')))"))  # fmt: skip
            assert first[:2] == ["personal", "seven.png"] and first[2].startswith("your photo · similarity 1.000")
            assert "your photos" in browser.eval(page, "document.getElementById('similar-note').textContent")

            # remove one with its button, then the rest with "Remove all"
            browser.eval(page, "Array.from(document.querySelectorAll('#personal-grid .tile')).find(t => "
                               "t.querySelector('.title').textContent === 'seven.png').querySelector('.remove').click()")  # fmt: skip
            browser.wait_for_js(page, f"{PERSONAL_TILES_JS} === 1", what="the removed photo's tile to go")
            assert names() == ["three.jpg"]
            browser.wait_for_js(page, "document.getElementById('personal-count').textContent.startsWith('1 of 2000')")
            browser.eval(page, "window.confirm = () => true; document.getElementById('personal-clear').click()")
            browser.wait_for_js(page, f"{PERSONAL_TILES_JS} === 0", what="every tile to go")
            assert names() == []
            browser.wait_for_js(page, "document.getElementById('personal-clear').hidden && document.getElementById("
                                      "'personal-count').textContent.startsWith('0 of 2000')", what="the counts")  # fmt: skip
    finally:
        api.delete("/api/personal")  # leave the shared server as it was for the other tests
        api.close()
    with capsys.disabled():
        print(f"\nbrowser screenshot: {shot}")


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """`app` under uvicorn on a free 127.0.0.1 port, in a thread of this process; yields its URL."""
    import uvicorn

    from tests.server.conftest import free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


HINT_JS = "(h => h.hidden ? null : h.textContent)(document.getElementById('gallery-hint'))"


def test_page_without_a_gallery(model, chromium, tmp_path):
    """No --gallery: the page says how to get one (drop photos under "Your photos", or `crema index DIR` +
    `crema serve --gallery DIR`) until a photo is added; with the personal gallery turned off as well, the
    section is hidden and the hint names the command line only."""
    from server.app import AppConfig, create_app
    from server.personal import open_personal

    personal = open_personal(model, tmp_path / "cache")
    photo = tmp_path / "two.png"
    photo.write_bytes(png_bytes(digit(2)))
    with Chromium(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page()
        with serve_in_thread(create_app(model, personal=personal, config=AppConfig(warmup=False))) as url:
            browser.send("Page.navigate", {"url": url + "/"}, page)
            browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
            hint = browser.eval(page, HINT_JS)
            assert hint.startswith("No gallery yet") and "“Your photos”" in hint
            assert "`crema index DIR`, then `crema serve --gallery DIR`" in hint
            browser.set_file(page, "#file-input", photo)  # a search says the same under "Similar images"
            browser.wait_for_js(page, "!document.getElementById('similar-error').hidden", what="the similar note")
            assert "crema index DIR" in browser.eval(page, "document.getElementById('similar-error').textContent")
            # web search is off on this server: its note shows, "More web results" does not
            assert shown(browser, page, "web-error", "more-button") == {"web-error": True, "more-button": False}
            browser.set_file(page, "#personal-files", photo)
            browser.wait_for_js(page, f"{PERSONAL_TILES_JS} === 1", what="the added photo")
            assert browser.eval(page, HINT_JS) is None  # there is a gallery now: the photo just added
            browser.set_file(page, "#file-input", photo)
            browser.wait_for_js(page, f"{COUNT_JS.format('#similar .tile')} === 1", what="the similar photo")
            assert browser.eval(page, "document.getElementById('similar-error').hidden") is True

        with serve_in_thread(create_app(model, config=AppConfig(warmup=False))) as url:  # personal gallery off
            browser.send("Page.navigate", {"url": url + "/"}, page)
            browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
            assert browser.eval(page, "document.getElementById('personal').hidden") is True
            hint = browser.eval(page, HINT_JS)
            assert hint.startswith("This server has no gallery") and "crema index DIR" in hint
            assert "Your photos" not in hint


# -- inside the network -----------------------------------------------------------------------------------------
# The pixels of an <img> as the page shows them (a same-origin PNG: no tainted canvas): {w, h, grey values}
PIXELS_JS = """(id => {{ const img = document.getElementById(id); const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');
  g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
  const v = []; for (let i = 0; i < d.length; i += 4) v.push(d[i], d[i + 1], d[i + 2]);
  return JSON.stringify({{w: c.width, h: c.height, v}}); }})('{}')"""
INSIDE_LOADED_JS = """(() => {{ const f = document.getElementById('inside-filters-fig').hidden ||
  (document.getElementById('inside-filters').dataset.loaded || '').includes('layer={0}');
  return f && (document.getElementById('inside-maps').dataset.loaded || '').includes('layer={0}'); }})()"""


def page_pixels(browser, page, img_id: str) -> np.ndarray:
    got = json.loads(browser.eval(page, PIXELS_JS.format(img_id)))
    return np.array(got["v"], np.uint8).reshape(got["h"], got["w"], 3)


def test_inside_the_network_through_the_page(crema_server, chromium, tmp_path):
    """After a search the page shows LeNet's conv1 filters and the digit's conv1 maps, as the server drew them:
    the pixels on the page, tile by tile, are the normalised weights and the normalised maps of an independent
    forward (within one grey level: two forwards may round apart); the selector lists every conv/pooling layer
    and shows pool2's maps, saying that its filters are not pictures."""
    from tests.net.test_visualize import expected_tile, tiles_of

    a = digit(5)
    image = tmp_path / "five.png"
    image.write_bytes(png_bytes(a))
    net = Net.load(crema_server.files["prototxt"], crema_server.files["weights"], phase="test")
    net.forward(data=(a.astype(np.float32) * np.float32(0.00390625))[None, None])

    with Chromium(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page()
        browser.send("Page.navigate", {"url": crema_server.url + "/"}, page)
        browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
        assert shown(browser, page, "inside") == {"inside": False}
        browser.set_file(page, "#file-input", image)
        browser.wait_for_js(page, INSIDE_LOADED_JS.format("conv1"), what="conv1's filters and maps")
        assert shown(browser, page, "inside", "inside-filters", "inside-maps") == {
            "inside": True, "inside-filters": True, "inside-maps": True}  # fmt: skip
        options = json.loads(browser.eval(page, "JSON.stringify(Array.from(document.querySelectorAll("
                                                "'#inside-layer option')).map(o => o.value))"))  # fmt: skip
        assert options == ["conv1", "pool1", "conv2", "pool2"]
        assert browser.eval(page, "document.getElementById('inside-layer').value") == "conv1"
        assert "normalised on its own" in browser.eval(page, "document.getElementById('inside-how').textContent")

        filters = page_pixels(browser, page, "inside-filters")
        w = net.params["conv1"][0]
        for k, t in enumerate(tiles_of(filters[..., 0], 20, 5, 5, 5)):
            assert np.array_equal(t, expected_tile(w[k, 0])), k
        maps = page_pixels(browser, page, "inside-maps")
        for k, t in enumerate(tiles_of(maps[..., 0], 20, 24, 24, 2)):
            diff = np.abs(t.astype(int) - expected_tile(net.blobs["conv1"][0, k]).astype(int))
            assert diff.max() <= 1, (k, diff.max())
        # shown magnified by a whole factor, crisp
        assert browser.eval(page, "document.getElementById('inside-maps').getBoundingClientRect().width") >= 320

        browser.eval(page, "const s = document.getElementById('inside-layer'); s.value = 'pool2';"
                           "s.dispatchEvent(new Event('change')); true")  # fmt: skip
        browser.wait_for_js(page, INSIDE_LOADED_JS.format("pool2"), what="pool2's maps")
        assert shown(browser, page, "inside-filters-fig")["inside-filters-fig"] is False
        assert "not pictures" in browser.eval(page, "document.getElementById('inside-note').textContent")
        maps = page_pixels(browser, page, "inside-maps")
        for k, t in enumerate(tiles_of(maps[..., 0], 50, 4, 4, 12)):
            diff = np.abs(t.astype(int) - expected_tile(net.blobs["pool2"][0, k]).astype(int))
            assert diff.max() <= 1, (k, diff.max())
        assert browser.eval(page, "document.getElementById('inside-error').hidden") is True
        browser.screenshot(page, artifacts_dir() / "browser_inside.png")


@pytest.fixture(scope="module")
def efficientnet_server(tmp_path_factory) -> Iterator[str]:
    """`crema serve` with its default model, EfficientNet-Lite0 (web search and the personal gallery off)."""
    import subprocess
    import sys
    import urllib.request

    from tests.server.conftest import free_port

    tmp = tmp_path_factory.mktemp("serve-efficientnet")
    port = free_port()
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "crema", "serve", "--port", str(port), "--no-web", "--no-personal-gallery",
           "--cache", str(tmp / "cache"), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"crema serve exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"crema serve did not answer /api/health within 300 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_inside_efficientnet_through_the_page(efficientnet_server, chromium, tmp_path):
    """The default model: the stem's 32 colour filters (stride 2, 3x3 stored as 4x4; RGB tiles, exact), its 32 maps of 112x112, the note that
    BatchNorm, Scale and ReLU6 are fused into it, and a 1280-channel layer capped at 256 tiles, saying so."""
    from net.zoo import resolve
    from tests.net.test_visualize import expected_tile, tiles_of

    rng = np.random.default_rng(7)
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)))
    files = resolve("efficientnet-lite0")
    w = Net.load(files.prototxt, files.weights).params["stem"][0]
    with Chromium(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page()
        browser.send("Page.navigate", {"url": efficientnet_server + "/"}, page)
        browser.wait_for_js(page, "document.body && document.body.dataset.ready === '1'", what="the page script")
        browser.set_file(page, "#file-input", image)
        browser.wait_for_js(page, INSIDE_LOADED_JS.format("stem"), timeout=120, what="the stem's filters and maps")
        filters = page_pixels(browser, page, "inside-filters")
        # stored as 4x4 with a zero first row and column (TF's asymmetric SAME padding, net.efficientnet): shown 3x3
        assert not w[:, :, 0].any() and not w[:, :, :, 0].any()
        for k, t in enumerate(tiles_of(filters, 32, 3, 3, 8)):
            assert np.array_equal(t, expected_tile(w[k, :, 1:, 1:].transpose(1, 2, 0))), k
        maps = page_pixels(browser, page, "inside-maps")
        assert maps.shape == (6 * 113 - 1, 6 * 113 - 1, 3)  # 32 tiles: 6 x 6 grid of 112 x 112
        assert "stored as 4x4" in browser.eval(page, "document.getElementById('inside-filters-cap').textContent")
        caption = browser.eval(page, "document.getElementById('inside-maps-cap').textContent")
        assert "ReLU6 'stem/relu6'" in caption and "fused" in caption
        browser.eval(page, "const s = document.getElementById('inside-layer'); s.value = 'head';"
                           "s.dispatchEvent(new Event('change')); true")  # fmt: skip
        layer = browser.eval(page, "document.querySelector('#inside-layer option[value=\"head\"]').textContent")
        if "not kept" not in layer:
            browser.wait_for_js(page, INSIDE_LOADED_JS.format("head"), what="the head's maps")
            assert page_pixels(browser, page, "inside-maps").shape[:2] == (16 * 50 - 1, 16 * 50 - 1)
        assert "the first 256 shown" in browser.eval(page, "document.getElementById('inside-shape').textContent")
        browser.screenshot(page, artifacts_dir() / "browser_inside_efficientnet.png")
