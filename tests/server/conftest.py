"""Fixtures for the web app tests: a random-weight LeNet on disk, synthetic digits, a fake Bing, a local
HTTP server. Nothing here touches the internet."""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from net import Net
from scraper.bing import WebResult
from tests.conftest import ROOT, randomize

# Seven-segment digits in a 28x28 box (MNIST-like: white strokes on black).
_SEG = {
    "a": ((8, 4), (19, 4)),
    "b": ((19, 4), (19, 14)),
    "c": ((19, 14), (19, 23)),
    "d": ((8, 23), (19, 23)),
    "e": ((8, 14), (8, 23)),
    "f": ((8, 4), (8, 14)),
    "g": ((8, 14), (19, 14)),
}
_DIGITS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def digit(d: int, dx: int = 0, dy: int = 0, width: int = 3) -> np.ndarray:
    """A seven-segment digit d as uint8 (28, 28), white on black, shifted by (dx, dy)."""
    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    for s in _DIGITS[d]:
        (x0, y0), (x1, y1) = _SEG[s]
        draw.line((x0 + dx, y0 + dy, x1 + dx, y1 + dy), fill=255, width=width)
    return np.asarray(img)


def png_bytes(a: np.ndarray | Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    img = a if isinstance(a, Image.Image) else Image.fromarray(a)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def lenet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """models/lenet/deploy.prototxt + labels.txt with random (seeded) weights, in a temporary folder."""
    d = tmp_path_factory.mktemp("lenet")
    shutil.copy(ROOT / "models" / "lenet" / "deploy.prototxt", d / "deploy.prototxt")
    shutil.copy(ROOT / "models" / "lenet" / "labels.txt", d / "labels.txt")
    net = Net.load(d / "deploy.prototxt", phase="test")
    randomize(net, seed=0)
    net.save(d / "lenet.caffemodel")
    return {"prototxt": d / "deploy.prototxt", "weights": d / "lenet.caffemodel", "labels": d / "labels.txt"}


@pytest.fixture(scope="session")
def model(lenet_files: dict[str, Path]):
    from server.model import Model

    return Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder layout: <d>/<digit>/s<dx><dy>.png, 10 digits x 9 shifts = 90 images."""
    root = tmp_path_factory.mktemp("digits")
    for d in range(10):
        (root / str(d)).mkdir()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                Image.fromarray(digit(d, dx, dy)).save(root / str(d) / f"s{dx + 1}{dy + 1}.png")
    return root


class FakeBing:
    """A stand-in for scraper.bing.BingClient: canned results per page, or an exception to raise."""

    def __init__(self, error: Exception | None = None, pages: int = 3, per_page: int = 4) -> None:
        self.error = error
        self.pages = pages
        self.per_page = per_page
        self.calls: list[tuple[str, int, int]] = []

    def search(self, query: str, page: int = 0, count: int = 35) -> list[WebResult]:
        self.calls.append((query, page, count))
        if self.error is not None:
            raise self.error
        if page >= self.pages:
            return []
        return [
            WebResult(
                image_url=f"https://img.example/{page}-{i}.jpg",
                thumb_url=f"https://tse.example/{page}-{i}.jpg",
                page_url=f"https://site.example/{page}-{i}.html",
                title=f"{query} {page}-{i}",
                source="site.example",
            )
            for i in range(self.per_page)
        ]


class LocalHTTP:
    """A threaded HTTP server on 127.0.0.1 answering GET with `route(path) -> (status, headers, body)`."""

    def __init__(self, route: Callable[[str], tuple[int, dict[str, str], bytes]]) -> None:
        outer = self
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                status, headers, body = route(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except ConnectionError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_http() -> Iterator[Callable[..., LocalHTTP]]:
    servers: list[LocalHTTP] = []

    def start(route: Callable[[str], tuple[int, dict[str, str], bytes]]) -> LocalHTTP:
        servers.append(LocalHTTP(route))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# -- `crema serve` in a subprocess, with a fake Bing on 127.0.0.1 -------------------------------------------------
def fake_bing_route(base: str, tiles: int = 6) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    """Answers Bing's /images/async with `tiles` result tiles (the `m` attribute's HTML-escaped JSON) whose
    images and thumbnails are PNG digits served by the same server."""
    import html
    import json
    from urllib.parse import parse_qs, urlsplit

    def route(path: str) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        if parts.path == "/images/async":
            first = int(parse_qs(parts.query).get("first", ["0"])[0])
            anchors = []
            for i in range(first, first + tiles):
                m = {
                    "murl": f"{base}/img/{i}.png",
                    "turl": f"{base}/thumb/{i}.png",
                    "purl": f"{base}/page/{i}",
                    "t": f"digit picture {i}",
                }
                anchors.append(
                    f'<div class="imgpt"><a class="iusc" href="#" m="{html.escape(json.dumps(m))}">'
                    f'<img src="{base}/thumb/{i}.png"></a></div>'
                )
            body = "<html><body>" + "".join(anchors) + "</body></html>"
            return 200, {"Content-Type": "text/html; charset=utf-8"}, body.encode()
        if parts.path.startswith(("/img/", "/thumb/")):
            n = int(parts.path.rsplit("/", 1)[1].split(".")[0])
            return 200, {"Content-Type": "image/png"}, png_bytes(digit(n % 10))
        return 404, {"Content-Type": "text/plain"}, b"not found"

    return route


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running `crema serve` subprocess."""

    def __init__(self, url: str, proc, log: Path, bing: LocalHTTP, files: dict[str, Path]) -> None:
        self.url, self.proc, self.log, self.bing, self.files = url, proc, log, bing, files


@pytest.fixture(scope="session")
def crema_server(lenet_files, digit_folder, tmp_path_factory) -> Iterator[Served]:
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    tmp = tmp_path_factory.mktemp("serve")
    routes: dict[str, Callable] = {}
    bing = LocalHTTP(lambda path: routes["bing"](path))
    routes["bing"] = fake_bing_route(bing.url)  # tiles point back at this server's own URL
    port = free_port()
    log = tmp / "serve.log"
    cmd = [
        sys.executable, "-m", "crema", "serve", "--port", str(port),
        "--model", str(lenet_files["prototxt"]), "--weights", str(lenet_files["weights"]),
        "--labels", str(lenet_files["labels"]), "--gallery", str(digit_folder), "--cache", str(tmp / "cache"),
        "--bing-url", bing.url, "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"crema serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"crema serve did not answer /api/health within 180 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield Served(url, proc, log, bing, lenet_files)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        bing.close()
