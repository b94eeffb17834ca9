"""`crema download caffenet`: fetch official model weights with a progress bar, SHA-1 check and atomic write.

    path = download_file(url, out, sha1="4c8d...", progress=True)

The body streams into a temporary file beside `out` (same folder, so the final rename is atomic), hashed as
it arrives; only a file whose SHA-1 matches is renamed to `out`. A partial or mismatching download never
appears under the final name. An `out` that already holds the right bytes is kept without downloading.

Exceptions: DownloadError (a RuntimeError: network, HTTP status, SHA-1 mismatch); ValueError for an unknown
model name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from net.paths import file_sha1
from net.zoo import CAFFENET_WEIGHTS
from .progress import ProgressBar

__all__ = ["KNOWN_WEIGHTS", "DownloadError", "WeightsInfo", "download_file", "download_weights"]


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


def download_file(url: str, out: str | Path, *, sha1: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `out` atomically (see the module docstring); `sha1=None` skips the check."""
    out = Path(out)
    if sha1 is not None and out.is_file() and file_sha1(out) == sha1.lower():
        if progress:
            print(f"{out} is already there (SHA-1 {sha1} matches)")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha1()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "crema-download/1"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"downloading {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"downloading {url}: {reason}") from None
        with response, os.fdopen(fd, "wb") as f:
            fd = -1
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = ProgressBar(total, f"downloading {out.name}", unit="B") if progress else None
            try:
                while block := response.read(1 << 16):
                    f.write(block)
                    digest.update(block)
                    if bar:
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(f"downloading {url}: connection lost ({exc!r})") from None
            finally:
                if bar:
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


def download_weights(
    name: str, *, url: str | None = None, out: str | Path | None = None, sha1: str | None = None, progress: bool = True
) -> Path:
    """Download the named model's weights (KNOWN_WEIGHTS) to `out` (default: under models/)."""
    info = KNOWN_WEIGHTS.get(name.lower())
    if info is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    target = Path(out) if out is not None else info.default_out
    if target.is_dir():
        target = target / Path(info.url).name
    return download_file(url or info.url, target, sha1=sha1 or info.sha1, progress=progress)
