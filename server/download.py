"""`crema download caffenet`: fetch official model weights with a progress bar, SHA-1 check and atomic write.

    path = download_file(url, out, sha1="4c8d...", progress=True)

The body streams (requests, ``stream=True``, 64 KiB reads) into a temporary file beside `out` (same folder, so the
final rename is atomic), hashed as it arrives; only a file whose SHA-1 matches is renamed to `out`. A partial or
mismatching download never appears under the final name and is deleted. An `out` that already holds the right
bytes is kept without downloading (so an interrupted `crema download` is simply run again). The file is created
with mode 0666 minus the umask (0644 under the usual 022), like any file the user writes, not mkstemp's 0600.

`download_weights(name, out=...)`: an `out` that is an existing folder, or ends in a path separator
(``--out NEWDIR/``), means "into this folder" under the official file name; the folder is made when missing.

Exceptions: DownloadError (a RuntimeError: network, HTTP status, short body, SHA-1 mismatch); ValueError for an
unknown model name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import requests

from net.paths import file_sha1
from net.progress import progress_bar
from net.zoo import CAFFENET_WEIGHTS

__all__ = ["KNOWN_WEIGHTS", "DownloadError", "WeightsInfo", "download_file", "download_weights"]

USER_AGENT = "crema-download/1"
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The download failed or produced the wrong bytes."""


@dataclass(frozen=True)
class WeightsInfo:
    url: str
    sha1: str
    default_out: Path
    size_hint: str


# BVLC model zoo facts (models/bvlc_reference_caffenet/readme.md): URL and SHA-1 of the released weights.
KNOWN_WEIGHTS: dict[str, WeightsInfo] = {
    "caffenet": WeightsInfo(
        url="http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
        sha1="4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
        default_out=CAFFENET_WEIGHTS,
        size_hint="233 MB",
    ),
}


def _create_part(out: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `out`: (descriptor open for writing, path). Mode 0666 minus the umask."""
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise DownloadError(f"cannot create a temporary file beside {out}: 100 names taken")


def download_file(url: str, out: str | Path, *, sha1: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `out` atomically (see the module docstring); `sha1=None` skips the check.

    timeout: seconds for the connect and for each read (not the whole download)."""
    out = Path(out)
    if sha1 is not None and out.is_file() and file_sha1(out) == sha1.lower():
        if progress:
            print(f"{out} is already there (SHA-1 {sha1} matches)")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_part(out)
    digest = hashlib.sha1()
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            try:
                # identity: Content-Length then counts the bytes written, and the SHA-1 is of what is stored
                headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
                response = requests.get(url, headers=headers, stream=True, timeout=timeout)
            except requests.RequestException as exc:
                raise DownloadError(f"downloading {url}: {_reason(exc)}") from None
            with response:
                if response.status_code != 200:
                    raise DownloadError(f"downloading {url}: HTTP {response.status_code} {response.reason}")
                length = response.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
                bar = progress_bar(total, f"downloading {out.name}", unit="B", enabled=progress)
                try:
                    for block in response.iter_content(_CHUNK):
                        f.write(block)
                        digest.update(block)
                        bar.update(len(block))
                except requests.RequestException as exc:
                    raise DownloadError(f"downloading {url}: connection lost ({_reason(exc)})") from None
                finally:
                    bar.close()
            if total is not None and f.tell() != total:
                raise DownloadError(f"downloading {url}: got {f.tell():,} bytes, the server announced {total:,}")
            f.flush()
            os.fsync(f.fileno())
        got = digest.hexdigest()
        if sha1 is not None and got != sha1.lower():
            raise DownloadError(
                f"downloading {url}: SHA-1 mismatch, expected {sha1.lower()}, got {got}; "
                f"the file was not saved (a truncated download or a different file at that URL)"
            )
        os.replace(tmp, out)
        return out
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause of a requests error, in words (urllib3 wraps the socket error once or twice)."""
    inner: BaseException = exc
    while True:
        cause = getattr(inner, "reason", None)
        if not isinstance(cause, BaseException):
            cause = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if cause is None:
            break
        inner = cause
    if inner.args and isinstance(inner.args[0], str):
        return inner.args[0]
    return str(inner) or inner.__class__.__name__


def download_weights(
    name: str, *, url: str | None = None, out: str | Path | None = None, sha1: str | None = None, progress: bool = True
) -> Path:
    """Download the named model's weights (KNOWN_WEIGHTS) to `out` (default: under models/): a file path, or a
    folder (an existing one, or any path ending in a separator, made when missing) to put the official file in."""
    info = KNOWN_WEIGHTS.get(name.lower())
    if info is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    target = Path(out) if out is not None else info.default_out
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    if target.is_dir() or (out is not None and os.fspath(out).endswith(separators)):
        target = target / Path(info.url).name
    return download_file(url or info.url, target, sha1=sha1 or info.sha1, progress=progress)
