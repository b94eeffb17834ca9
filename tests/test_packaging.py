"""What a wheel carries: every package folder is listed in pyproject.toml, and the shipped files are mapped in."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("kernels", "net", "server", "scraper", "benchmarks")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in LIBRARY
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(_config()["packages"])
    assert folders <= listed, f"package folders missing from pyproject.toml: {sorted(folders - listed)}"
    assert {"net.shipped.models", "net.shipped.data"} <= listed


def test_shipped_folders_map_to_the_checkout_folders() -> None:
    from net.paths import shipped_dir

    config = _config()
    assert config["package-dir"]["net.shipped.models"] == "models"
    assert config["package-dir"]["net.shipped.data"] == "data"
    assert shipped_dir("models") == ROOT / "models" and shipped_dir("data") == ROOT / "data"
    assert (shipped_dir("models") / "lenet" / "lenet.caffemodel").is_file()


def test_zoo_downloads_go_to_the_cache_in_a_wheel_install(tmp_path, monkeypatch) -> None:
    from net import zoo

    shipped = tmp_path / "site-packages" / "net" / "shipped" / "models"
    (shipped / "googlenet").mkdir(parents=True)
    monkeypatch.setattr(zoo, "MODELS", shipped)
    monkeypatch.setenv("CREMA_CACHE", str(tmp_path / "cache"))
    file = zoo.CAFFE_ZOO["googlenet"].weights
    monkeypatch.setattr(zoo, "WHEEL_INSTALL", False)
    assert zoo.zoo_weights("googlenet") == shipped / "googlenet" / file  # a checkout: beside the prototxt, as before
    monkeypatch.setattr(zoo, "WHEEL_INSTALL", True)
    assert zoo.zoo_weights("googlenet") == tmp_path / "cache" / "zoo" / "googlenet" / file
    (shipped / "googlenet" / file).write_bytes(b"w")
    assert zoo.zoo_weights("googlenet") == shipped / "googlenet" / file  # one already there is used
