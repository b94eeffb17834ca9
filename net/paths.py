"""Where crema keeps things and how it writes them: the files that ship with it (models/, data/), the cache folder, a
file's SHA-1 (the key of what is cached from it), and the one atomic write every writer uses (caffemodels, solver
states, logs' files, gallery files)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "cache_dir", "file_sha1", "fsync_dir", "shipped_dir", "wheel_install", "write_atomic"]

_HERE = Path(__file__).resolve().parent


def wheel_install() -> bool:
    """True where crema runs from an installed wheel (its shipped files under net/shipped/), not a checkout."""
    return (_HERE / "shipped").is_dir()


def shipped_dir(name: str) -> Path:
    """The read-only files that ship with crema: "models" (prototxts, LeNet's weights, labels) or "data" (the MNIST
    test split). In a checkout or an editable install they are the folders beside the packages; a wheel carries them
    as package data under net/shipped/ (pyproject.toml maps them there), so `crema serve` runs from any directory."""
    if name not in ("models", "data"):
        raise ValueError(f"no shipped folder {name!r} (models or data)")
    return _HERE / "shipped" / name if wheel_install() else _HERE.parent / name


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


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened and synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, sync_dir: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` (`.NAME.XXXXXXXX.tmp`, unique per writer) for a writer that needs a file name
    (e.g. FAISS's write_index); when the block ends without an error the file is fsync'ed, given an existing file's
    mode (else 0644) and renamed over `path`, then the folder fsync'ed (sync_dir). On any error it is removed."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes], *, sync_dir: bool = True) -> None:
    """Write `data` (bytes, or chunks of bytes) to `path` so a reader sees the old file or the whole new one, never
    part of it (through `atomic_path`)."""
    with atomic_path(path, sync_dir=sync_dir) as tmp, open(tmp, "wb") as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            f.writelines(data)
