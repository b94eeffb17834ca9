"""`crema index` and `crema serve` from the command line; the served app over real HTTP (uvicorn)."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np

from crema import main
from tests.conftest import ROOT
from tests.server.conftest import digit, png_bytes


def test_index_command(lenet_files, digit_folder, tmp_path, tty_stderr):
    out = tmp_path / "idx"
    args = [
        "index",
        str(digit_folder),
        "--model",
        str(lenet_files["prototxt"]),
        "--weights",
        str(lenet_files["weights"]),
    ]
    assert main([*args, "--out", str(out), "--batch", "16"]) == 0
    captured = tty_stderr.readouterr()
    assert "indexed 90 images (500-d 'ip1' features)" in captured.out
    assert "indexing" in captured.err and "100%" in captured.err and "90/90" in captured.err  # the progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 90 and np.load(out / "shards" / "000000.npy").shape == (90, 500)
    assert manifest["vectors"]["factory"] == "Flat" and manifest["vectors"]["recall_at_10"] == 1.0


def test_index_errors(lenet_files, tmp_path, capsys):
    model = ["--model", str(lenet_files["prototxt"]), "--weights", str(lenet_files["weights"])]
    assert main(["index", str(tmp_path / "nope"), *model]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["index", str(tmp_path), *model, "--feature-blob", "nope"]) == 2
    assert "no blob named 'nope'" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--model", str(lenet_files["prototxt"])]) == 2
    assert "needs --weights" in capsys.readouterr().err


def test_serve_lenet_without_weights(tmp_path, monkeypatch, capsys):
    import net.zoo

    (tmp_path / "lenet").mkdir()
    shutil.copy(ROOT / "models/lenet/deploy.prototxt", tmp_path / "lenet" / "deploy.prototxt")
    monkeypatch.setattr(net.zoo, "MODELS", tmp_path)
    assert main(["serve", "--port", "0", "--model", "lenet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crema: error: LeNet's weights") and "lenet.caffemodel are missing" in err


def test_serve_argument_errors(lenet_files, capsys):
    assert main(["serve", "--model", str(lenet_files["prototxt"])]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["serve", "--weights", str(lenet_files["weights"])]) == 2
    assert "go with a .prototxt --model" in capsys.readouterr().err
    assert main(["serve", "--model", "resnet-9000"]) == 2  # neither a name nor a file
    assert "--model resnet-9000 needs --weights" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_served_app_over_http(crema_server):
    """The real thing: uvicorn, the real Bing client against the fake Bing, the real URL fetcher."""
    with httpx.Client(base_url=crema_server.url, timeout=60) as c:
        health = c.get("/api/health").json()
        assert health["status"] == "ok" and health["gallery"]["count"] == 90 and health["web"]["enabled"]
        r = c.post("/api/search", files={"image": ("d.png", png_bytes(digit(4)), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 5 and body["similar"][0]["label"] == "4"
        assert body["similar"][0]["score"] > 0.999  # the identical picture s11.png is in the gallery
        assert body["web_error"] is None and len(body["web"]) == 6
        assert body["web"][0]["image_url"] == f"{crema_server.bing.url}/img/0.png"
        more = c.get("/api/web", params={"q": body["query"], "page": 1}).json()
        assert more["web_error"] is None and more["web"][0]["title"] == "digit picture 24"  # first = page * 24
        thumb = c.get(body["similar"][0]["thumb_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] in ("image/png", "image/jpeg")
        # the real fetcher refuses our own loopback address
        refused = c.post("/api/search", json={"url": f"{crema_server.bing.url}/img/1.png"})
        assert refused.status_code == 400 and "loopback" in refused.json()["error"]
        page = c.get("/")
        assert page.status_code == 200 and "crema" in page.text


# -- issue 14 item 17: the port is bound before anything is printed or loaded; `crema --version` -----------------
def must_not_load(args):
    raise AssertionError("the model must not be loaded when the port cannot be bound")


def test_serve_port_in_use_fails_at_once_and_says_so(monkeypatch, capsys):
    import socket

    import server.cli

    monkeypatch.setattr(server.cli, "load_model", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"crema: error: port {port} is in use on 127.0.0.1 (another crema serve?); stop that program or choose "
        "another port with --port"
    )
    assert "open http" not in captured.out


def test_serve_bad_host_is_one_line(monkeypatch, capsys):
    import server.cli

    monkeypatch.setattr(server.cli, "load_model", must_not_load)
    assert main(["serve", "--host", "192.0.2.1", "--port", "0"]) == 2  # TEST-NET-1: no interface of ours has it
    assert capsys.readouterr().err.startswith("crema: error: cannot listen on 192.0.2.1:0: ")


def test_serve_runs_uvicorn_on_the_socket_it_bound_and_prints_its_real_port(lenet_files, monkeypatch, capsys):
    import errno
    import socket
    import sys

    import uvicorn

    import server.gallery

    seen = {}

    def fake_run(self, sockets=None):
        (sock,) = sockets
        seen["port"] = sock.getsockname()[1]
        seen["config_port"] = self.config.port
        with socket.socket() as other:  # the port is really held while uvicorn runs
            try:
                other.bind(("127.0.0.1", seen["port"]))
            except OSError as exc:
                seen["bind_errno"] = exc.errno
        seen["sock"] = sock

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(server.gallery, "open_gallery", lambda *a: (None, "no gallery in this test"))
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)  # keep the test process's own
    model = ["--model", str(lenet_files["prototxt"]), "--weights", str(lenet_files["weights"])]
    assert main(["serve", "--port", "0", *model, "--no-web", "--no-personal-gallery"]) == 0
    out = capsys.readouterr().out
    assert seen["port"] > 0 and seen["config_port"] == seen["port"] and seen["bind_errno"] == errno.EADDRINUSE
    assert f"crema: open http://127.0.0.1:{seen['port']}/ (Ctrl+C stops)" in out  # not :0
    assert seen["sock"].fileno() == -1  # closed when serving ends


def test_version(monkeypatch, capsys):
    import tomllib
    from importlib import metadata

    import pytest

    import crema as cli

    with pytest.raises(SystemExit) as exit_info:  # argparse's version action, like --help
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "crema 0.1.0\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)  # a bare checkout: pyproject.toml's version
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert cli.crema_version() == pyproject["project"]["version"] == "0.1.0"


def test_listen_socket_lets_asyncio_turn_nagle_off():
    """The socket `crema serve` binds says it is TCP (proto IPPROTO_TCP), so asyncio sets TCP_NODELAY on each
    connection uvicorn accepts from it: with proto 0 it did not, and every answer after the first few on a keep-alive
    connection waited ~40 ms for the client's delayed ACK (headers and body are two writes)."""
    import asyncio
    import socket

    from server.cli import _listen_socket

    async def main() -> int:
        nodelay = []

        def accepted(reader, writer):
            nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = _listen_socket("127.0.0.1", 0)
        assert listener.proto == socket.IPPROTO_TCP
        server = await asyncio.start_server(accepted, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        return nodelay[0]

    assert asyncio.run(main()) != 0


def test_serve_no_inside_and_the_background_compile(lenet_files, monkeypatch):
    """--no-inside: the app keeps no maps (its state's Inside is None); with or without it, the background compiles'
    Future (AppConfig.inside_ready) is completed by crema serve's own thread, not by a maps request."""
    import sys

    import uvicorn

    import server.gallery

    seen = []

    def fake_run(self, sockets=None):
        state = self.config.app.state.crema
        seen.append((state.inside, state.config.inside_ready.result(timeout=60)))

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(server.gallery, "open_gallery", lambda *a: (None, "no gallery in this test"))
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)
    model = ["--model", str(lenet_files["prototxt"]), "--weights", str(lenet_files["weights"])]
    for extra in (["--no-inside"], []):
        assert main(["serve", "--port", "0", *model, "--no-web", "--no-personal-gallery", *extra]) == 0
    (off, ready_off), (on, ready_on) = seen
    assert off is None and on is not None and ready_off is None and ready_on is None
