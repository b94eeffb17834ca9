"""`crema download NAME`: fetch published model weights, resumable, with a progress bar, hash check and atomic write.

    path = download_file(url, out, sha1="4c8d...", progress=True)
    path = download_weights("googlenet")          # KNOWN_WEIGHTS: URL, hash and size of each published file

The body streams (requests, ``stream=True``, 64 KiB reads) into a partial file beside `out` (same folder, so the
final rename is atomic: os.replace, then the folder fsync'ed with net.paths.fsync_dir). Only a file whose hash
matches is renamed to `out`; a mismatching file is deleted and never appears under the final name. An `out` that
already holds the right bytes is kept without downloading. The file is created with mode 0666 minus the umask (0644
under the usual 022), like any file the user writes, not mkstemp's 0600.

Resuming (HTTP Range). With an expected hash, the partial file has a fixed name, ``.NAME.<hash[:12]>.part``, so a
later run finds it. A cut connection is resumed in the same run (`retries` times, 1 s, 2 s, 4 s apart) with
``Range: bytes=N-`` when the server said it serves ranges (``Accept-Ranges: bytes`` or a 206 answer); a run that still
fails, or is interrupted (Ctrl+C), keeps the partial file and says so, and the next run asks for the rest. A server
that answers a range request with the whole file (200) is read from the start again; a 416 means the partial file
already holds everything (it is then checked). Without an expected hash (`sha1=None`), or from a server that does
not serve ranges, a partial file is kept by no one and deleted on failure. A partial file is locked while a
download writes it (fcntl, where available): a second `crema download` of the same file at once is refused.

Hashes. `sha1` is the SHA-1 of the file's bytes (what model zoos publish). Where the publisher gives no SHA-1 but
the file lives in a git repository, `git_blob` is the repository's own id of that file: SHA-1 of
``b"blob <size>\\0" + bytes``, as `git hash-object` computes it (read from the repository's tree, so the bytes are
exactly those at that commit). `sha256_prefix` is a published SHA-256 prefix, also checked when given.

`download_weights(name, out=...)`: an `out` that is an existing folder, or ends in a path separator
(``--out NEWDIR/``), means "into this folder" under the official file name; the folder is made when missing.

Exceptions: DownloadError (a RuntimeError: network, HTTP status, short body, hash mismatch, a download already
running); ValueError for an unknown model name or a model without a direct download.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from net.paths import fsync_dir
from net.progress import progress_bar
from net.zoo import zoo_weights

__all__ = [
    "KNOWN_WEIGHTS",
    "DownloadError",
    "Hashes",
    "WeightsInfo",
    "download_file",
    "download_weights",
    "file_hashes",
    "list_weights",
]

USER_AGENT = "crema-download/2"
_CHUNK = 1 << 16

try:
    import fcntl
except ImportError:  # Windows: no lock, the hash check still refuses a mixed-up file
    fcntl = None  # type: ignore[assignment]


class DownloadError(RuntimeError):
    """The download failed or produced the wrong bytes."""


@dataclass(frozen=True)
class Hashes:
    """What the downloaded bytes must hash to; every hash given is checked."""

    sha1: str | None = None  # SHA-1 of the file
    git_blob: str | None = None  # git's blob id: SHA-1 of b"blob <size>\0" + file
    sha256_prefix: str | None = None  # the leading hex digits of the file's SHA-256, as some READMEs publish

    def key(self) -> str | None:
        """A short name for the partial file: the first hash given, 12 digits (None: nothing to check)."""
        first = self.sha1 or self.git_blob
        return first.lower()[:12] if first else None


@dataclass(frozen=True)
class WeightsInfo:
    """One published weights file."""

    url: str
    hashes: Hashes
    default_out: Path
    size_hint: str  # as its source gives it (exact sizes are not published); the download checks the hash
    source: str  # where the URL and hash come from

    @property
    def sha1(self) -> str | None:
        return self.hashes.sha1


# Where each fact comes from is in `source`; the sizes are the publishers' (MB as they wrote them).
KNOWN_WEIGHTS: dict[str, WeightsInfo] = {
    "caffenet": WeightsInfo(
        url="http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
        hashes=Hashes(sha1="4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"),
        default_out=zoo_weights("caffenet"),
        size_hint="233 MB",
        source="BVLC/caffe models/bvlc_reference_caffenet/readme.md (caffemodel_url, sha1)",
    ),
    "googlenet": WeightsInfo(
        url="http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
        hashes=Hashes(sha1="405fc5acd08a3bb12de8ee5e23a96bec22f08204"),
        default_out=zoo_weights("googlenet"),
        size_hint="51 MB",
        source="BVLC/caffe models/bvlc_googlenet/readme.md (caffemodel_url, sha1); size: mexopencv's DNN demo",
    ),
    "squeezenet1.0": WeightsInfo(
        url="https://raw.githubusercontent.com/DeepScale/SqueezeNet/b5c3f1a23713c8b3fd7b801d229f6b04c64374a5/"
        "SqueezeNet_v1.0/squeezenet_v1.0.caffemodel",
        hashes=Hashes(
            sha1="579d0beb658e43c45937bf8bb5e4034fea4e1f69", git_blob="a381d848b43d7048c3b362238ece2386c21d6ff0"
        ),
        default_out=zoo_weights("squeezenet1.0"),
        size_hint="4.76 MB",
        source="the file in DeepScale/SqueezeNet at commit b5c3f1a2 (git blob id from that tree); SHA-1 and size not "
        "published by the authors: mexopencv samples/dnn_image_classification_demo.m",
    ),
    "squeezenet1.1": WeightsInfo(
        url="https://raw.githubusercontent.com/DeepScale/SqueezeNet/b5c3f1a23713c8b3fd7b801d229f6b04c64374a5/"
        "SqueezeNet_v1.1/squeezenet_v1.1.caffemodel",
        hashes=Hashes(
            sha1="3397f026368a45ae236403ccc81cfcbe8ebe1bd0", git_blob="9d2fc33abf653a6e8b2ee6cc63ede0e72ec67f44"
        ),
        default_out=zoo_weights("squeezenet1.1"),
        size_hint="4.72 MB",
        source="the file in DeepScale/SqueezeNet at commit b5c3f1a2 (git blob id from that tree); SHA-1 not published "
        "by the authors: OpenCV's opencv_extra testdata/dnn/download_models.py (same URL)",
    ),
    "vgg16": WeightsInfo(
        url="http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",
        hashes=Hashes(sha1="9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24"),
        default_out=zoo_weights("vgg16"),
        size_hint="527 MB",
        source="URL: the VGG model-zoo gist ksimonyan/211839e770f7b538e2d8 (readme.md caffemodel_url); SHA-1 not "
        "published by the authors: mexopencv samples/dnn_image_classification_demo.m",
    ),
    "resnet50": WeightsInfo(
        url="https://dl.opencv.org/models/ResNet-50-model.caffemodel",
        hashes=Hashes(sha1="b7c79ccc21ad0479cddc0dd78b1d20c4d722908d"),
        default_out=zoo_weights("resnet50"),
        size_hint="97.7 MiB",
        source="the authors publish a OneDrive folder only (KaimingHe/deep-residual-networks README); this is "
        "OpenCV's mirror and SHA-1 (opencv_extra testdata/dnn/download_models.py), the same SHA-1 mexopencv lists "
        "for the OneDrive file",
    ),
    "mobilenet_v1": WeightsInfo(
        url="https://raw.githubusercontent.com/shicai/MobileNet-Caffe/728e69033365667b602313c020c3dec2dfbfa4fb/"
        "mobilenet.caffemodel",
        hashes=Hashes(git_blob="132e56b5f14874090622a8287f208e5eac3d8440", sha256_prefix="8d6edcd3"),
        default_out=zoo_weights("mobilenet_v1"),
        size_hint="16.2 MB",
        source="shicai/MobileNet-Caffe at commit 728e6903: git blob id from that tree, SHA-256 prefix and size from "
        "its README (no SHA-1 published)",
    ),
    "mobilenet_v2": WeightsInfo(
        url="https://raw.githubusercontent.com/shicai/MobileNet-Caffe/728e69033365667b602313c020c3dec2dfbfa4fb/"
        "mobilenet_v2.caffemodel",
        hashes=Hashes(git_blob="901c2b5515da944d152e1aa0c3e71108eb227576", sha256_prefix="a3124ce7"),
        default_out=zoo_weights("mobilenet_v2"),
        size_hint="13.5 MB",
        source="shicai/MobileNet-Caffe at commit 728e6903: git blob id from that tree, SHA-256 prefix and size from "
        "its README (no SHA-1 published)",
    ),
}


def list_weights() -> list[tuple[str, WeightsInfo, bool]]:
    """(name, info, already downloaded to its default place) for every known model, in KNOWN_WEIGHTS order."""
    return [(name, info, info.default_out.is_file()) for name, info in KNOWN_WEIGHTS.items()]


def file_hashes(path: str | os.PathLike, chunk: int = 1 << 20) -> dict[str, str]:
    """{"sha1", "git_blob", "sha256"} of a file's bytes, read once."""
    size = os.path.getsize(path)
    sha1, blob, sha256 = hashlib.sha1(), hashlib.sha1(b"blob %d\0" % size), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha1.update(block)
            blob.update(block)
            sha256.update(block)
    return {"sha1": sha1.hexdigest(), "git_blob": blob.hexdigest(), "sha256": sha256.hexdigest()}


def _mismatch(path: Path, want: Hashes) -> str | None:
    """None when `path` matches every hash in `want`, else what differs (expected vs got)."""
    got = file_hashes(path)
    wrong = []
    if want.sha1 and got["sha1"] != want.sha1.lower():
        wrong.append(f"SHA-1 mismatch, expected {want.sha1.lower()}, got {got['sha1']}")
    if want.git_blob and got["git_blob"] != want.git_blob.lower():
        wrong.append(f"git blob id mismatch, expected {want.git_blob.lower()}, got {got['git_blob']}")
    if want.sha256_prefix and not got["sha256"].startswith(want.sha256_prefix.lower()):
        wrong.append(f"SHA-256 mismatch, expected {want.sha256_prefix.lower()}..., got {got['sha256']}")
    return "; ".join(wrong) or None


def _open_part(out: Path, key: str | None) -> tuple[int, Path]:
    """The partial file beside `out`, opened for reading and writing (created empty when missing, mode 0666 minus
    the umask) and locked: (descriptor, path). A fixed name for a known hash (resumable), else a fresh random one."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
    if key is not None:
        part = out.with_name(f".{out.name}.{key}.part")
        fd = os.open(part, flags, 0o666)
    else:
        for _ in range(100):
            part = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(part, flags | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise DownloadError(f"cannot create a temporary file beside {out}: 100 names taken")
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DownloadError(f"another download is writing {part} now; wait for it to finish") from None
    return fd, part


@dataclass
class _Attempt:
    """What one request left behind: whether the server serves ranges and whether the body arrived whole."""

    resumable: bool = False
    complete: bool = False
    error: str = ""


def _fetch_once(url: str, fd: int, offset: int, *, timeout: float, progress: bool, label: str) -> _Attempt:
    """One GET from `offset` (a Range request when > 0), appended to the partial file at that offset. Raises
    DownloadError for an answer that cannot be used (an HTTP error, an unreachable server); returns a failed
    _Attempt for a cut body, so the caller may resume."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}  # identity: the stored bytes are hashed
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        return _Attempt(error=f"downloading {url}: {_reason(exc)}")
    with response:
        status = response.status_code
        resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" or status == 206
        if offset and status == 416:  # the partial file already holds the whole file (checked by the caller)
            return _Attempt(resumable=True, complete=True)
        if status == 206 and offset:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(f"downloading {url}: asked for bytes from {offset:,}, the server sent from {start}")
        elif status == 200:
            offset, total = 0, _int(response.headers.get("Content-Length", ""))
        else:
            raise DownloadError(f"downloading {url}: HTTP {status} {response.reason}")
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        done = offset
        bar = progress_bar(total, label, unit="B", initial=offset, enabled=progress)
        try:
            for block in response.iter_content(_CHUNK):
                _write(fd, block)
                done += len(block)
                bar.update(len(block))
        except requests.RequestException as exc:
            return _Attempt(
                resumable, error=f"downloading {url}: connection lost ({_reason(exc)}) after {done:,} bytes"
            )
        finally:
            bar.close()
    if total is not None and done != total:
        return _Attempt(resumable, error=f"downloading {url}: got {done:,} bytes, the server announced {total:,}")
    return _Attempt(resumable, complete=True)


def download_file(
    url: str,
    out: str | Path,
    *,
    sha1: str | None = None,
    hashes: Hashes | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `url` to `out` atomically and resumably (see the module docstring). The expected hash is `sha1`
    or `hashes`; with neither, nothing is checked and nothing is resumed across runs.

    timeout: seconds for the connect and for each read (not the whole download). retries: resumptions of a cut
    connection within this call (only from a server that serves ranges)."""
    out = Path(out)
    want = hashes if hashes is not None else Hashes(sha1=sha1)
    key = want.key()
    if key is not None and out.is_file() and _mismatch(out, want) is None:
        if progress:
            print(f"{out} is already there ({key}... matches)")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, part = _open_part(out, key)
    keep = False  # keep the partial file for the next run
    try:
        offset = os.fstat(fd).st_size
        if offset and progress:
            print(f"resuming {out.name} from {offset:,} bytes ({part.name})")
        label = f"downloading {out.name}"
        resumable = offset > 0  # a partial file from an earlier run: that server served ranges
        keep = key is not None and resumable  # kept through an HTTP error too: the next run may still resume
        for attempt in range(retries + 1):
            got = _fetch_once(url, fd, offset, timeout=timeout, progress=progress, label=label)
            resumable = resumable or got.resumable
            keep = key is not None and resumable
            if got.complete:
                break
            offset = os.fstat(fd).st_size
            if not resumable or attempt == retries:
                hint = f"; {offset:,} bytes kept in {part}, run again to resume" if keep and offset else ""
                raise DownloadError(got.error + hint)
            sleep(2.0**attempt)
        os.fsync(fd)
        wrong = _mismatch(part, want) if key is not None else None
        if wrong is not None:
            keep = False
            raise DownloadError(
                f"downloading {url}: {wrong}; the file was not saved (a damaged download or a different file at "
                "that URL)"
            )
        os.replace(part, out)
        fsync_dir(out.parent)
        keep = True  # nothing left to delete: the partial file is now `out`
        return out
    except KeyboardInterrupt:
        keep = key is not None and part.exists() and os.fstat(fd).st_size > 0
        raise
    except OSError as exc:  # the disk: full, read-only, gone (network errors arrive as DownloadError)
        raise DownloadError(f"saving {url} to {part}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
        if not keep and part.exists():
            part.unlink()


def _write(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _content_range(text: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header `bytes a-b/total` (None where absent or '*')."""
    unit, _, rest = text.partition(" ")
    if unit != "bytes":
        return None, None
    span, _, total = rest.partition("/")
    return _int(span.partition("-")[0]), _int(total)


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
    """Download the named model's weights (KNOWN_WEIGHTS) to `out` (default: under models/NAME/): a file path, or a
    folder (an existing one, or any path ending in a separator, made when missing) to put the official file in.
    `url` and `sha1` replace the published ones (a mirror; a --sha1 replaces every published hash)."""
    info = KNOWN_WEIGHTS.get(name.lower())
    if info is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    source = url or info.url
    target = Path(out) if out is not None else info.default_out
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    if target.is_dir() or (out is not None and os.fspath(out).endswith(separators)):
        target = target / info.default_out.name
    want = Hashes(sha1=sha1) if sha1 else info.hashes
    return download_file(source, target, hashes=want, progress=progress)
