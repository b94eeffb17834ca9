"""Where crema keeps things: the cache folder, and a file's SHA-1 (the key of what is cached from it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["cache_dir", "file_sha1"]


def cache_dir() -> Path:
    """$CREMA_CACHE, else $XDG_CACHE_HOME/crema, else ~/.cache/crema."""
    if os.environ.get("CREMA_CACHE"):
        return Path(os.environ["CREMA_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "crema"


def file_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
