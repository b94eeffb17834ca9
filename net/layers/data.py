"""The `Data` layer: MNIST-style IDX images and labels in batches, with Caffe's data transformation.

    layer { name: "mnist" type: "Data" top: "data" top: "label"
            transform_param { scale: 0.00390625 }
            data_param { source: "data/mnist/train" batch_size: 64 } }

Tops: `data` float32 (N, C, H, W) (C = 1 for (count, H, W) IDX images; H, W = crop_size when cropping) and,
when a second top is given, `label` float32 (N,).

What `data_param.source` may name (tried relative to the current directory, then to the repository root):
  * a split prefix `DIR/train` or `DIR/test` (`DIR/t10k` too): the files `DIR/train-images-idx3-ubyte` and
    `DIR/train-labels-idx1-ubyte` (test: `t10k-...`), each read from `.gz` when the plain file is absent;
  * an images file `.../xxx-images-idx3-ubyte[.gz]`: the labels are the `xxx-labels-idx1-ubyte` beside it;
  * Caffe's database names, so `examples/mnist/lenet_train_test.prototxt` runs unchanged: a last path component
    `mnist_train_lmdb` / `mnist_test_lmdb` (or `_leveldb`, or with a `fashion_` prefix) means that split of the
    data set in its default folder ($CREMA_DATA/mnist, else <repo>/data/mnist; `crema data mnist` makes it).
    `backend` is ignored: no LMDB / LevelDB is read.

Order of the samples (a documented difference from Caffe): at TRAIN each epoch visits the samples in a fresh
random permutation drawn from the layer's rng (Caffe's DataLayer reads its database in stored order; MNIST's
stored order is already mixed, so the two are statistically alike); at TEST the samples come in stored order.
Both wrap around at the end of the data, so a batch may straddle two epochs, as in Caffe.
`rand_skip` is not honoured (BVLC's current DataLayer ignores it too).

Transformation (Caffe's DataTransformer, per element, in float32): `top = (pixel - mean) * scale`, where mean is
`mean_file` (a (1, C, H, W) .binaryproto, taken at the pixel's source position) or `mean_value` (one value, or
one per channel), else 0. `crop_size`: a random crop per image at TRAIN, the centre crop at TEST. `mirror`: each
image is flipped left-right with probability 1/2 (both phases, as in Caffe).

`state()` / `set_state()` capture epoch, position, the current epoch's permutation seed and the rng state, so a
run resumed from a snapshot draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kernels import data as gather

from .. import datasets
from ..blob import Blob
from .base import Layer, register

__all__ = ["DataLayer", "resolve_source"]

_CAFFE_DB = re.compile(r"^(fashion[-_]?)?mnist_(train|test)_(lmdb|leveldb)$")


def _exists(path: Path) -> bool:
    return path.exists() or path.with_name(path.name + ".gz").exists()


def _pair(path: Path) -> tuple[Path, Path] | None:
    """(images, labels) paths when `path` is a split prefix or an images file, else None."""
    name = path.name.removesuffix(".gz")
    if name in datasets.SPLITS:
        return datasets.idx_paths(path.parent, name)
    if "-images-idx3-ubyte" in name:
        return path.with_name(name), path.with_name(name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte"))
    return None


def resolve_source(source: str) -> tuple[Path, Path, str]:
    """(images path, labels path, what) for a `data_param.source` (see the module docstring); the paths are
    given without `.gz` and may not exist. `what` describes the resolution for error messages."""
    if not source:
        raise ValueError("data_param.source is empty: name a split prefix such as data/mnist/train")
    given = Path(source)
    match = _CAFFE_DB.match(given.name)
    if match:
        name = "fashion-mnist" if match.group(1) else "mnist"
        split = match.group(2)
        root = datasets.data_root(name, split)
        images, labels = datasets.idx_paths(root, split)
        return images, labels, f"Caffe's {given.name} read as the {name} {split} split in {root}"
    candidates = [given] if given.is_absolute() else [given, datasets.REPO_ROOT / given]
    pairs = [p for p in (_pair(c) for c in candidates) if p is not None]
    if not pairs:
        raise ValueError(
            f"data_param.source {source!r} names no IDX data: expected a split prefix like data/mnist/train "
            "or data/mnist/test, an ...-images-idx3-ubyte file, or Caffe's examples/mnist/mnist_train_lmdb"
        )
    for images, labels in pairs:
        if _exists(images):
            return images, labels, f"{source!r}"
    return pairs[0][0], pairs[0][1], f"{source!r}"


@register("Data")
class DataLayer(Layer):
    """Batches of IDX images (+ labels) with Caffe's transformation; see the module docstring."""

    gpu_forward = True
    gpu_backward = True

    num_bottom = 0
    num_top = (1, 2)

    # -- set-up ----------------------------------------------------------------------------------------------
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        dp = self.param.data_param
        self.batch_size = int(dp.batch_size) if dp.has("batch_size") else 0
        if self.batch_size < 1:
            raise self.error(f"data_param.batch_size must be >= 1, got {self.batch_size}")
        self._load(str(dp.source), want_labels=len(top) > 1)
        self._setup_transform()
        self.shuffle = self.phase == "TRAIN"
        self.epoch = 0
        self.position = 0
        self.epoch_seed: int | None = None
        self.order: np.ndarray | None = None

    def _load(self, source: str, want_labels: bool) -> None:
        try:
            images_path, labels_path, what = resolve_source(source)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        if not _exists(images_path) or (want_labels and not _exists(labels_path)):
            missing = images_path if not _exists(images_path) else labels_path
            dataset = "fashion-mnist" if "fashion" in str(images_path) else "mnist"
            raise self.error(
                f"data source {what}: {missing} (or {missing.name}.gz) not found; "
                f"run `crema data {dataset} --out {missing.parent}` to create the IDX files"
            )
        try:
            if want_labels:
                images, labels = datasets.load_idx_pair(images_path, labels_path)
            else:
                images, labels = datasets.read_idx(images_path), None
        except (ValueError, OSError) as exc:
            raise self.error(f"cannot read data source {what}: {exc}") from None
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[0] == 0:
            raise self.error(f"{images_path}: expected images (N, H, W) or (N, C, H, W) with N > 0, got {images.shape}")
        self.images: np.ndarray = images
        self.labels: np.ndarray | None = None if labels is None else labels.astype(np.float32)
        self.source_paths = (images_path, labels_path)

    def _setup_transform(self) -> None:
        tp = self.param.transform_param
        _, c, h, w = self.images.shape
        self.scale = np.float32(tp.scale)
        self.mirror = bool(tp.mirror)
        self.crop = int(tp.crop_size)
        if tp.force_color:
            raise self.error("transform_param.force_color is not supported for IDX data")
        if self.crop and (self.crop > h or self.crop > w):
            raise self.error(f"transform_param.crop_size {self.crop} exceeds the image size {h}x{w}")
        means = [float(v) for v in tp.mean_value]
        if tp.mean_file and means:
            raise self.error("give transform_param.mean_file or mean_value, not both")
        self.mean_image: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if tp.mean_file:
            from ..caffemodel import load_binaryproto

            mean = load_binaryproto(tp.mean_file)
            if mean.shape[-3:] != (c, h, w) or mean.size != c * h * w:
                raise self.error(f"mean_file {tp.mean_file}: shape {mean.shape}, expected (1, {c}, {h}, {w})")
            self.mean_image = mean.reshape(c, h, w).astype(np.float32)
        elif means:
            if len(means) not in (1, c):
                raise self.error(f"transform_param.mean_value: give 1 value or {c} (one per channel), got {len(means)}")
            self.mean_values = np.asarray(means * (c if len(means) == 1 else 1), np.float32).reshape(c, 1, 1)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        _, c, h, w = self.images.shape
        if self.crop:
            h = w = self.crop
        top[0].reshape((self.batch_size, c, h, w))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    # -- order of the samples --------------------------------------------------------------------------------
    def _start_epoch(self) -> None:
        """Draw the permutation of the epoch now starting (TRAIN only) from a seed taken from self.rng."""
        self.epoch_seed = int(self.rng.integers(0, 2**63 - 1))
        self.order = self._permutation(self.epoch_seed)

    def _permutation(self, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).permutation(self.images.shape[0])

    def next_indices(self) -> np.ndarray:
        """The sample indices of the next batch, int64 (batch_size,); advances the position (and epoch)."""
        n = self.images.shape[0]
        out = np.empty(self.batch_size, np.int64)
        filled = 0
        while filled < self.batch_size:
            if self.position >= n:
                self.epoch += 1
                self.position = 0
                self.order = None
            if self.shuffle and self.order is None:
                self._start_epoch()
            take = min(self.batch_size - filled, n - self.position)
            span = slice(self.position, self.position + take)
            out[filled : filled + take] = self.order[span] if self.shuffle else np.arange(span.start, span.stop)
            filled += take
            self.position += take
        return out

    # -- forward ---------------------------------------------------------------------------------------------
    def transform(self, images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Caffe's transformation of a uint8 batch (B, C, H, W) -> float32 (B, C, h, w); draws crop offsets and
        mirror flips from self.rng where those are on. Written into `out` where it is a writeable C-contiguous
        float32 array of that shape, else into a new one."""
        b, c, h, w = images.shape
        x: np.ndarray = images
        if self.mean_image is not None:
            x = x.astype(np.float32) - self.mean_image
        if self.crop:
            k = self.crop
            if self.phase == "TRAIN":
                hoff = self.rng.integers(0, h - k + 1, size=b)
                woff = self.rng.integers(0, w - k + 1, size=b)
            else:
                hoff = np.full(b, (h - k) // 2)
                woff = np.full(b, (w - k) // 2)
            rows = (hoff[:, None] + np.arange(k))[:, None, :, None]
            cols = (woff[:, None] + np.arange(k))[:, None, None, :]
            x = x[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]
        if self.mirror:
            flip = self.rng.integers(0, 2, size=b).astype(bool)
            x = np.where(flip[:, None, None, None], x[..., ::-1], x)
        if not _fits(out, x.shape, np.float32):
            out = np.empty(x.shape, np.float32)
        if self.mean_values is not None:
            np.subtract(x, self.mean_values, out=out, dtype=np.float32)
            out *= self.scale
        else:
            np.multiply(x, self.scale, out=out, dtype=np.float32)
        return out

    stager = None  # a net.device.BatchStager on GPU nets: batches produced and uploaded one ahead

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.stager is not None:
            self.stager.next(top)
        else:
            self.produce(bottom, top, in_place=True)

    def produce(self, bottom: list[Blob], top: list[Blob], in_place: bool = False) -> None:
        """The next batch into the tops as host arrays (the stager calls this from its thread); `in_place` (a CPU
        net's forward): into the tops' own arrays where they fit, so the tops keep their arrays from batch to batch
        (a replayed training pass reads them: net.train_replay)."""
        idx = self.next_indices()
        if in_place and self._gather(idx, top):
            return
        data = self.transform(self.images[idx], out=top[0].data if in_place else None)
        if data is not top[0].data:
            top[0].data = data
        if len(top) > 1:
            labels = top[1].data
            if in_place and _fits(labels, idx.shape, self.labels.dtype):
                np.take(self.labels, idx, out=labels)
            else:
                top[1].data = self.labels[idx]

    def _gather(self, idx: np.ndarray, top: list[Blob]) -> bool:
        """The plain transform (scale only) of the images at idx, and their labels, straight into the tops' arrays by
        one task (kernels.data.gather_scale: the bits of `transform`); False where it does not apply (a mean, a crop,
        a mirror, or tops that cannot be written in place)."""
        if self.mean_image is not None or self.mean_values is not None or self.crop or self.mirror:
            return False
        images, data = self.images, top[0].data
        if images.dtype != np.uint8 or not images.flags.c_contiguous:
            return False
        if not _fits(data, (idx.size, *images.shape[1:]), np.float32):
            return False
        labels = labels_out = None
        if len(top) > 1:
            labels, labels_out = self.labels, top[1].data
            if labels is None or not _fits(labels_out, idx.shape, np.float32):
                return False
        gather.gather_scale(images, idx, self.scale, data, labels, labels_out)
        return True

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """Nothing to do: a data layer has no bottoms."""

    # -- resumable position ----------------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-serialisable position: {"epoch", "position", "epoch_seed", "rng"} (rng: bit_generator.state); with a
        stager, the position before the batch it holds staged."""
        return self.stager.state() if self.stager is not None else self.own_state()

    def set_state(self, state: dict) -> None:
        """Continue exactly where `state()` was taken: the same permutation, position and rng stream."""
        if self.stager is not None:
            self.stager.set_state(state)
        else:
            self.set_own_state(state)

    def own_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "epoch_seed": self.epoch_seed,
            "rng": self.rng.bit_generator.state,
        }

    def set_own_state(self, state: dict) -> None:
        n = self.images.shape[0]
        epoch, position, seed = int(state["epoch"]), int(state["position"]), state.get("epoch_seed")
        if not 0 <= position <= n or epoch < 0:
            raise self.error(f"cannot resume at epoch {epoch}, position {position}: the data holds {n} samples")
        self.epoch, self.position = epoch, position
        self.epoch_seed = None if seed is None else int(seed)
        self.order = self._permutation(self.epoch_seed) if self.shuffle and self.epoch_seed is not None else None
        if state.get("rng") is not None:
            self.rng.bit_generator.state = state["rng"]


def _fits(a, shape: tuple, dtype) -> bool:
    """Is `a` a writeable C-contiguous host array of this shape and dtype?"""
    return (
        isinstance(a, np.ndarray)
        and a.shape == tuple(shape)
        and a.dtype == dtype
        and a.flags.c_contiguous
        and a.flags.writeable
    )
