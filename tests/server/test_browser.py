"""A real browser on the real server: headless Chromium opens the page served by `crema serve`, uploads a
digit through the file input, and must show the top-5 bar chart (the same classes and percentages as an
independent Net forward), similar-image tiles from the gallery and web tiles from the fake Bing, all with
their thumbnails loaded. Also: drag-and-drop, paste, "more web results", and a server error in plain words.

Chromium: $CREMA_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium (Debian's package; .ci/run
installs it). Missing, the test fails under CI (CI=true) and is skipped elsewhere, with the reason.
The screenshot is kept at artifacts/browser_search.png (ignored by git; $CREMA_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import json
import os
import shutil
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

    with capsys.disabled():
        print(f"\nbrowser screenshot: {shot}")
    assert shot.stat().st_size > 10_000
