"""`crema download`, resumable: a local HTTP server that serves byte ranges and cuts connections on demand. A cut
connection resumed in the same run, a partial file resumed by the next run, a wrong hash (nothing saved, the partial
file dropped), a server that ignores Range, git blob ids, the lock, `crema download --list` and the published facts."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crema import main
from net.zoo import MODELS
from server.download import KNOWN_WEIGHTS, DownloadError, Hashes, download_file, file_hashes

PAYLOAD = bytes(range(251)) * 4001  # ~1 MB, not a multiple of the 64 KiB reads
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()
CUT = 300_000  # bytes of body sent before a cut; the client keeps what whole reads it finished (<= CUT)


@pytest.fixture
def ranged():
    """(base URL, state): state["cuts"] = how many of the next answers stop after CUT bytes of their body;
    state["ranges"] = False makes the server ignore Range (200, whole file); state["requests"] lists each request's
    Range header (None without one)."""
    state: dict = {"cuts": 0, "ranges": True, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked = self.headers.get("Range")
            state["requests"].append(asked)
            if state.get("unavailable"):
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if asked and state["ranges"]:
                start = int(asked.removeprefix("bytes=").split("-")[0])
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            else:
                self.send_response(200)
            if state["ranges"]:
                self.send_header("Accept-Ranges", "bytes")
            body = PAYLOAD[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state["cuts"] > 0:
                state["cuts"] -= 1
                self.wfile.write(body[:CUT])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/w.caffemodel", state
    httpd.shutdown()
    httpd.server_close()


def starts(state: dict) -> list[int]:
    """The first byte each Range request asked for."""
    return [int(r.removeprefix("bytes=").rstrip("-")) for r in state["requests"] if r]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_sleep(seconds: float) -> None:
    pass


def test_a_cut_connection_is_resumed_in_the_same_run(ranged, tmp_path):
    url, state = ranged
    state["cuts"] = 2
    out = download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False, sleep=no_sleep)
    assert out.read_bytes() == PAYLOAD and files(tmp_path) == ["w.caffemodel"]
    assert state["requests"][0] is None and len(state["requests"]) == 3
    first, second = starts(state)
    assert 0 < first <= CUT and first < second <= first + CUT  # each resumption asked for the rest only


def test_a_partial_file_is_resumed_by_the_next_run(ranged, tmp_path):
    url, state = ranged
    state["cuts"] = 1
    out = tmp_path / "w.caffemodel"
    with pytest.raises(DownloadError, match=f"connection lost|got {CUT:,} bytes") as err:
        download_file(url, out, sha1=SHA1, progress=False, retries=0)
    part = tmp_path / f".w.caffemodel.{SHA1[:12]}.part"
    assert "run again to resume" in str(err.value) and str(part) in str(err.value)
    kept = part.read_bytes()
    assert files(tmp_path) == [part.name] and 0 < len(kept) <= CUT and kept == PAYLOAD[: len(kept)]
    # the next run asks for the rest only
    download_file(url, out, sha1=SHA1, progress=False)
    assert out.read_bytes() == PAYLOAD and files(tmp_path) == ["w.caffemodel"]
    assert state["requests"] == [None, f"bytes={len(kept)}-"]


def test_an_http_error_keeps_a_partial_file_for_later(ranged, tmp_path):
    url, state = ranged
    part = tmp_path / f".w.caffemodel.{SHA1[:12]}.part"
    part.write_bytes(PAYLOAD[:CUT])
    state["unavailable"] = True
    with pytest.raises(DownloadError, match="HTTP 503"):
        download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert files(tmp_path) == [part.name] and part.read_bytes() == PAYLOAD[:CUT]
    state["unavailable"] = False
    download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert (tmp_path / "w.caffemodel").read_bytes() == PAYLOAD
    assert state["requests"] == [f"bytes={CUT}-", f"bytes={CUT}-"]


def test_a_complete_partial_file_is_checked_and_saved(ranged, tmp_path):
    url, state = ranged
    (tmp_path / f".w.caffemodel.{SHA1[:12]}.part").write_bytes(PAYLOAD)
    download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert state["requests"] == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing more to send
    assert (tmp_path / "w.caffemodel").read_bytes() == PAYLOAD and files(tmp_path) == ["w.caffemodel"]


def test_wrong_hash_saves_nothing_and_drops_the_partial_file(ranged, tmp_path):
    url, state = ranged
    state["cuts"] = 1
    with pytest.raises(DownloadError, match=f"SHA-1 mismatch, expected {'0' * 40}, got {SHA1}"):
        download_file(url, tmp_path / "w.caffemodel", sha1="0" * 40, progress=False, sleep=no_sleep)
    assert files(tmp_path) == []  # resumed once, then refused: the next run starts from the first byte
    assert state["requests"][0] is None and len(starts(state)) == 1


def test_a_damaged_partial_file_is_refused_then_downloaded_again(ranged, tmp_path):
    url, state = ranged
    part = tmp_path / f".w.caffemodel.{SHA1[:12]}.part"
    part.write_bytes(b"x" * CUT)  # not the file's first bytes
    with pytest.raises(DownloadError, match="SHA-1 mismatch"):
        download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert files(tmp_path) == []
    download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert (tmp_path / "w.caffemodel").read_bytes() == PAYLOAD
    assert state["requests"] == [f"bytes={CUT}-", None]


def test_a_server_without_ranges_is_read_again_from_the_start(ranged, tmp_path):
    url, state = ranged
    (tmp_path / f".w.caffemodel.{SHA1[:12]}.part").write_bytes(PAYLOAD[:CUT])
    state["ranges"] = False  # answers 200 with the whole file to a Range request
    download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert (tmp_path / "w.caffemodel").read_bytes() == PAYLOAD and files(tmp_path) == ["w.caffemodel"]
    # a cut from such a server cannot be resumed: no retry, nothing kept
    state["cuts"] = 1
    with pytest.raises(DownloadError, match="connection lost|got") as err:
        download_file(url, tmp_path / "v.caffemodel", sha1=SHA1, progress=False, sleep=no_sleep)
    assert "resume" not in str(err.value) and files(tmp_path) == ["w.caffemodel"]


def test_retries_run_out(ranged, tmp_path):
    url, state = ranged
    state["cuts"] = 5
    waits: list[float] = []
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False, retries=2, sleep=waits.append)
    assert waits == [1.0, 2.0] and len(state["requests"]) == 3
    # the kept bytes are the file's first bytes; the next run finishes it
    kept = (tmp_path / f".w.caffemodel.{SHA1[:12]}.part").read_bytes()
    assert CUT < len(kept) <= 3 * CUT and kept == PAYLOAD[: len(kept)]
    state["cuts"] = 0
    download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert (tmp_path / "w.caffemodel").read_bytes() == PAYLOAD


def test_git_blob_and_sha256_prefix(ranged, tmp_path):
    url, _ = ranged
    blob = hashlib.sha1(b"blob %d\0" % len(PAYLOAD) + PAYLOAD).hexdigest()
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    out = download_file(url, tmp_path / "a", hashes=Hashes(git_blob=blob, sha256_prefix=sha256[:8]), progress=False)
    assert out.read_bytes() == PAYLOAD
    assert file_hashes(out) == {"sha1": SHA1, "git_blob": blob, "sha256": sha256}
    with pytest.raises(DownloadError, match=f"SHA-256 mismatch, expected 00000000..., got {sha256}"):
        download_file(url, tmp_path / "b", hashes=Hashes(git_blob=blob, sha256_prefix="00000000"), progress=False)
    with pytest.raises(DownloadError, match=f"git blob id mismatch, expected {'1' * 40}, got {blob}"):
        download_file(url, tmp_path / "c", hashes=Hashes(git_blob="1" * 40), progress=False)
    assert files(tmp_path) == ["a"]


def test_a_second_download_of_the_same_file_at_once_is_refused(ranged, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    url, _ = ranged
    part = tmp_path / f".w.caffemodel.{SHA1[:12]}.part"
    with open(part, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another download is writing"):
            download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
    assert files(tmp_path) == [part.name]  # the other download's file is left alone


def test_cli_list_and_names(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name, info in KNOWN_WEIGHTS.items():
        assert name in out and info.url in out and info.size_hint in out
    assert main(["download"]) == 2
    assert "crema download --list" in capsys.readouterr().err
    assert main(["download", "alexnet-9000"]) == 2
    assert "unknown model 'alexnet-9000'; known: caffenet, googlenet" in capsys.readouterr().err


def test_cli_downloads_a_zoo_model_with_its_published_hash(ranged, tmp_path, capsys):
    url, _ = ranged
    # our stand-in file is not GoogLeNet: refused by the published SHA-1
    assert main(["download", "googlenet", "--url", url, "--out", f"{tmp_path}/", "--no-progress"]) == 2
    assert KNOWN_WEIGHTS["googlenet"].sha1 in capsys.readouterr().err and files(tmp_path) == []
    assert main(["download", "googlenet", "--url", url, "--out", f"{tmp_path}/", "--sha1", SHA1]) == 0
    assert (tmp_path / "bvlc_googlenet.caffemodel").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", sorted(KNOWN_WEIGHTS))
def test_published_facts(name):
    info = KNOWN_WEIGHTS[name]
    assert info.url.startswith(("http://", "https://")) and info.source
    hashes = [h for h in (info.hashes.sha1, info.hashes.git_blob) if h]
    assert hashes and all(len(h) == 40 and int(h, 16) >= 0 for h in hashes)
    # the weights land beside the model's prototxt, so `--model NAME` finds them
    assert info.default_out.parent == MODELS / name and (MODELS / name / "deploy.prototxt").is_file()


def test_a_disk_error_is_one_clear_error(ranged, tmp_path, monkeypatch):
    from server import download

    url, _ = ranged

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download, "_write", full)
    with pytest.raises(DownloadError, match="No space left on device"):
        download_file(url, tmp_path / "w.caffemodel", sha1=SHA1, progress=False)
