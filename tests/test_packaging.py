"""What a wheel carries: every package folder is listed in pyproject.toml, and the shipped files are mapped in."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
