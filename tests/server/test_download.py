"""`crema download`: against a local HTTP server: SHA-1 checked, atomic (nothing left on failure), progress."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crema import main
from server.download import KNOWN_WEIGHTS, DownloadError, download_file

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB
PAYLOAD_SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path == "/model.caffemodel":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            elif self.path == "/chunked":  # no Content-Length: the body is sent in chunks of 100 kB
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(PAYLOAD), 100_000):
                    piece = PAYLOAD[start : start + 100_000]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif self.path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:1000])
                self.close_connection = True
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_ok_and_skip_when_present(server, tmp_path, tty_stderr):
    url, hits = server
    out = tmp_path / "sub" / "w.caffemodel"
    assert download_file(f"{url}/model.caffemodel", out, sha1=PAYLOAD_SHA1.upper()) == out
    assert out.read_bytes() == PAYLOAD and leftovers(out.parent) == ["w.caffemodel"]
    assert "100%" in tty_stderr.readouterr().err  # the progress bar reached the end
    download_file(f"{url}/model.caffemodel", out, sha1=PAYLOAD_SHA1)
    assert hits == ["/model.caffemodel"]  # the second call found the right bytes and did not download


def test_sha1_mismatch_leaves_nothing(server, tmp_path):
    url, _ = server
    out = tmp_path / "w.caffemodel"
    with pytest.raises(DownloadError, match=f"SHA-1 mismatch, expected {'0' * 40}, got {PAYLOAD_SHA1}"):
        download_file(f"{url}/model.caffemodel", out, sha1="0" * 40, progress=False)
    assert leftovers(tmp_path) == []


def test_mismatch_keeps_an_existing_file(server, tmp_path):
    url, _ = server
    out = tmp_path / "w.caffemodel"
    out.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download_file(f"{url}/model.caffemodel", out, sha1="0" * 40, progress=False)
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == ["w.caffemodel"]


@pytest.mark.parametrize("path, words", [("/truncated", "connection lost|got 1,000 bytes"), ("/missing", "HTTP 404")])
def test_broken_downloads(server, tmp_path, path, words):
    url, _ = server
    with pytest.raises(DownloadError, match=words):
        download_file(f"{url}{path}", tmp_path / "w", sha1=PAYLOAD_SHA1, progress=False)
    assert leftovers(tmp_path) == []


def test_unreachable(tmp_path):
    with pytest.raises(DownloadError, match="downloading http://127.0.0.1:9/"):
        download_file("http://127.0.0.1:9/x", tmp_path / "w", sha1=None, progress=False)


def test_cli_download(server, tmp_path, capsys):
    url, _ = server
    # the official SHA-1 does not match our stand-in file: refused, nothing saved
    assert main(["download", "caffenet", "--url", f"{url}/model.caffemodel", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "SHA-1 mismatch" in err and KNOWN_WEIGHTS["caffenet"].sha1 in err
    assert leftovers(tmp_path) == []
    code = main(
        ["download", "caffenet", "--url", f"{url}/model.caffemodel", "--out", str(tmp_path), "--sha1", PAYLOAD_SHA1]
    )
    assert code == 0
    assert (tmp_path / "bvlc_reference_caffenet.caffemodel").read_bytes() == PAYLOAD


def test_official_facts():
    info = KNOWN_WEIGHTS["caffenet"]
    assert info.url == "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel"
    assert info.sha1 == "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"


# -- issue 14 item 17: --out NEWDIR/, the file's mode, requests streaming --------------------------------------
def test_cli_out_with_a_trailing_slash_is_a_new_folder(server, tmp_path, capsys):
    url, _ = server
    for folder in ("new", "deeper/newer"):
        out = f"{tmp_path / folder}/"
        args = ["download", "caffenet", "--url", f"{url}/model.caffemodel", "--out", out, "--sha1", PAYLOAD_SHA1]
        assert main(args) == 0
        saved = tmp_path / folder / "bvlc_reference_caffenet.caffemodel"
        assert (tmp_path / folder).is_dir() and saved.read_bytes() == PAYLOAD
        assert f"saved {saved}" in capsys.readouterr().out
    # without the slash, a path that is not a folder stays a file name
    out = tmp_path / "plain.caffemodel"
    args = ["download", "caffenet", "--url", f"{url}/model.caffemodel", "--out", str(out), "--sha1", PAYLOAD_SHA1]
    assert main(args) == 0
    assert out.read_bytes() == PAYLOAD


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_file_mode_follows_the_umask(server, tmp_path, umask, mode):
    import os
    import stat

    url, _ = server
    old = os.umask(umask)
    try:
        out = download_file(f"{url}/model.caffemodel", tmp_path / "w.caffemodel", sha1=PAYLOAD_SHA1, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_streams_with_requests_without_content_length(server, tmp_path, monkeypatch, tty_stderr):
    import urllib.request

    def no_urllib(*args, **kwargs):
        raise AssertionError("the downloader uses requests")

    monkeypatch.setattr(urllib.request, "urlopen", no_urllib)
    url, hits = server
    out = download_file(f"{url}/chunked", tmp_path / "w", sha1=PAYLOAD_SHA1)
    assert out.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["w"]
    err = tty_stderr.readouterr().err
    assert "downloading w: " in err and "1.02MB " in err  # no total: a running count of bytes
    assert hits == ["/chunked"]


def test_a_failed_download_then_a_good_one(server, tmp_path):
    """Run again after a failure: the second run downloads and saves; no temporary file is left either time."""
    url, hits = server
    with pytest.raises(DownloadError, match="connection lost|got 1,000 bytes"):
        download_file(f"{url}/truncated", tmp_path / "w", sha1=PAYLOAD_SHA1, progress=False)
    assert leftovers(tmp_path) == []
    download_file(f"{url}/model.caffemodel", tmp_path / "w", sha1=PAYLOAD_SHA1, progress=False)
    assert leftovers(tmp_path) == ["w"] and (tmp_path / "w").read_bytes() == PAYLOAD
