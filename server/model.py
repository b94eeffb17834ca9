"""A Caffe classifier loaded for serving: net + preprocessing + labels + the blob that gives features.

    model = Model.load("models/lenet/deploy.prototxt", "models/lenet/lenet.caffemodel", "models/lenet/labels.txt")
    x = model.preprocess(image_bytes)        # (C, H, W) float32, e.g. (1, 28, 28)
    probs, feats = model.infer(x[None])      # (N, K) class probabilities, (N, D) L2-normalised features
    model.top(probs[0], 5)                   # [{"index", "label", "prob"}, ...]

Features come from the classifier's input: the bottom of the last layer that has parameters (LeNet: `ip1`
after its in-place ReLU, 500-d; CaffeNet: `fc7`, 4096-d), or the blob named by `feature_blob`.

`Model.infer` runs `Net.forward`, which writes the net's blobs: call it from one thread at a time (the
server's micro-batcher owns a single inference thread).

    probs, feats = model.infer_any(x)        # the same for batches whose size changes from call to call

Micro-batches (server.batcher) come in any size, and a net run at a new batch size is reshaped and planned again
(its arena placed, its replay recorded): on the 2-core Zen 4 machine EfficientNet-Lite0 at sizes 6-11 in turn took
100-250 ms a batch against 39 ms at a steady 8, CaffeNet 112-250 against 48, LeNet 5-8 against 0.37. `infer_any`
runs only steady sizes: a net whose batches go image by image anyway (``net.per_image.image_by_image``:
EfficientNet-Lite0) runs each image as a batch-1 forward on batch-1 copies of the net, one a thread
(``net.per_image.Images``: the same bits as image by image); any other net runs the batch in chunks of 8, 4, 2 and 1
(11 = 8 + 2 + 1), each size on a copy of the net of its own (``net.per_image.replica``: the same weights,
activations shared alike) kept at that size, made at its first use. `warm_steps` makes them ahead (the app, after
start-up).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from net import Net
from net.classify import feature_blob, preprocess_for
from net.labels import display_label, load_labels
from net.paths import file_sha1
from net.preprocess import Preprocess, load_image

__all__ = ["ALLOWED_FORMATS", "Model", "default_feature_blob", "display_label", "file_sha1"]

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
MAX_CHUNK = 8  # infer_any's largest chunk: copies at 2, 4 and 8 (CaffeNet's activations: 3.5 MB an image)


default_feature_blob = feature_blob  # the classifier's input blob (net.classify)


@dataclass(frozen=True)
class _Files:
    prototxt: Path
    weights: Path
    labels: Path | None


class Model:
    """A loaded classifier; see the module docstring. Build it with `Model.load`."""

    def __init__(
        self,
        net: Net,
        *,
        pre: Preprocess,
        labels: list[str],
        feature_blob: str,
        preset: str,
        files: _Files,
        name: str | None = None,
    ) -> None:
        self.net = net
        self.pre = pre
        self.labels = labels
        self.feature_blob = feature_blob
        self.preset = preset
        self.files = files
        self.name = name or net.name or files.prototxt.stem
        self.input = net.inputs[0]
        self.output = net.outputs[-1]
        last = net.layers[-1]
        self._softmax = last.type != "Softmax"  # a net that ends in logits gets a softmax here
        self.input_shape: tuple[int, int, int] = tuple(net.blob(self.input).shape[1:])  # type: ignore[assignment]
        self.num_classes = len(labels)
        self.feature_dim = int(np.prod(net.blob(feature_blob).shape[1:]))
        self._fingerprint: str | None = None
        self._sized: dict[int, Net] = {}  # infer_any: batch size -> the copy of the net kept at that size
        self._images = None  # infer_any: net.per_image.Images, for a net whose batches go image by image
        net.share_activations(keep=(feature_blob,))  # (server.inside's maps come from a copy that observes them)
        net.freeze()  # the weights never change in place here (Net.freeze)

    @classmethod
    def load(
        cls,
        prototxt: str | Path,
        weights: str | Path,
        labels: str | Path | None = None,
        *,
        preset: str | None = None,
        feature_blob: str | None = None,
        name: str | None = None,
        memory_budget=None,
    ) -> Model:
        """Load a deploy prototxt + caffemodel (+ labels, one per line). Raises ValueError naming the missing or
        mismatched file; the preset defaults to "lenet-auto" for 1-channel inputs and "caffenet" otherwise (named
        models bring their own: `server.cli.load_model`)."""
        prototxt, weights = Path(prototxt), Path(weights)
        for what, path in (("model prototxt", prototxt), ("weights", weights), ("labels", labels)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{what} file {path} not found")
        net = Net.load(prototxt, weights, phase="test", memory_budget=memory_budget)
        if len(net.inputs) != 1:
            raise ValueError(f"{prototxt}: expected one input blob, got {net.inputs}")
        shape = net.blob(net.inputs[0]).shape
        if len(shape) != 4:
            raise ValueError(f"{prototxt}: input '{net.inputs[0]}' has shape {shape}, expected (N, C, H, W)")
        preset = preset or ("lenet-auto" if shape[1] == 1 else "caffenet")
        pre = preprocess_for(net, preset)
        classes = int(np.prod(net.blob(net.outputs[-1]).shape[1:]))
        raw = load_labels(str(labels) if labels is not None else None, classes)
        if feature_blob is None:
            feature_blob = default_feature_blob(net)
        elif feature_blob not in net.blobs:
            raise ValueError(f"{prototxt}: no blob named {feature_blob!r} for features (blobs: {', '.join(net.blobs)})")
        files = _Files(prototxt, weights, Path(labels) if labels is not None else None)
        return cls(
            net,
            pre=pre,
            labels=[display_label(s) for s in raw],
            feature_blob=feature_blob,
            preset=preset,
            files=files,
            name=name,
        )

    # -- inputs ----------------------------------------------------------------------------------------
    def preprocess(self, image: bytes | np.ndarray, *, max_pixels: int = 40_000_000) -> np.ndarray:
        """An encoded image (bytes, allow-listed formats only) or an (H, W[, 3]) array -> (C, H, W) float32.
        Raises net.preprocess.ImageError for bytes that are not a usable image."""
        if isinstance(image, np.ndarray):
            return self.pre(image)
        return self.pre(load_image(image, max_pixels=max_pixels, allowed_formats=ALLOWED_FORMATS))

    # -- inference -------------------------------------------------------------------------------------
    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (N, C, H, W) float32 -> (probs (N, K) float32, features (N, D) float32 with unit L2 rows)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"model '{self.name}': expected input (N, {self.input_shape}), got shape {x.shape}")
        return self._infer_on(self.net, x)

    def _infer_on(self, net: Net, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = net.forward(**{self.input: x})[self.output]
        return self._finish(out, net.blobs[self.feature_blob].astype(np.float32, copy=True))

    def _finish(self, out: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs, unit features) from the net's output and (a copy of) its feature blob."""
        out = out.reshape(len(out), -1)
        if self._softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        feats = feats.reshape(len(feats), -1)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False), feats

    def infer_any(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`infer` for batches whose size changes from call to call (the module docstring): the same outputs, with
        each image's bits those of its batch-1 forward (image by image) or of its chunk's size."""
        n = len(x)
        if n <= 1 or x.ndim != 4 or self.net.device != "cpu":  # (the copies are CPU nets)
            return self.infer(x)
        if self._by_image:
            if self._images is None or self._images.threads != numba.get_num_threads():
                from net.per_image import Images

                self._images = Images(self.net, numba.get_num_threads())
            rows = self._images.run(x, (self.output, self.feature_blob))
            return self._finish(rows[self.output], rows[self.feature_blob])
        parts, start = [], 0
        while start < n:
            size = min(MAX_CHUNK, 1 << ((n - start).bit_length() - 1))
            parts.append(self._infer_on(self._net_for(size), x[start : start + size]))
            start += size
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def warm_steps(self, max_batch: int = MAX_CHUNK) -> list[Callable[[], object]]:
        """Forwards on zeros that make `infer_any`'s copies and record their replays (the first batches of a new size
        cost 160-190 ms each: EfficientNet-Lite0's first two batches of 2 and its fourth, against 10 ms), as separate
        steps (the app runs them one at a time between searches, on the inference thread, after start-up): for an
        image-by-image net, a batch of one image per thread and one of a group per thread (``net.per_image.Images``:
        its batch-1 copies and its copies at GROUP images), else each chunk size up to `max_batch`."""
        from net.per_image import GROUP
        from net.replay import RECORD_AT

        if self.net.device != "cpu":
            return []
        if self._by_image:
            # a batch-1 copy a thread (one thread: a group and an image, the image on that copy); a group copy a
            # thread; the batcher's largest batch caps both (at least 2)
            threads, cap = numba.get_num_threads(), max(2, max_batch)
            ones = GROUP + 1 if threads == 1 and GROUP > 1 else max(2, threads)
            wanted = {min(cap, ones)}
            if GROUP > 1 and GROUP * threads <= cap:
                wanted.add(GROUP * threads)
            sizes = sorted(wanted)
        else:
            sizes = [s for s in (2, 4, MAX_CHUNK) if s <= max_batch]
        steps = []
        for size in sizes:
            x = np.zeros((size, *self.input_shape), np.float32)
            steps += [functools.partial(self.infer_any, x)] * (RECORD_AT + 2)
        return steps

    @functools.cached_property
    def _by_image(self) -> bool:
        """Do the net's batches go image by image (``net.per_image.image_by_image``)? infer_any then runs them on
        ``net.per_image.Images``."""
        from net.per_image import image_by_image

        return image_by_image(self.net)

    def _net_for(self, size: int) -> Net:
        """The net that runs batches of `size` (infer_any): the model's own for 1, else a copy kept at that size."""
        if size == 1:
            return self.net
        net = self._sized.get(size)
        if net is None:
            from net.per_image import replica

            net = self._sized[size] = replica(self.net)
        return net

    def top(self, probs: np.ndarray, k: int = 5) -> list[dict]:
        """probs: (K,) -> the k most probable classes [{"index", "label", "prob"}], ties by lower index."""
        order = np.argsort(-probs, kind="stable")[:k]
        return [{"index": int(i), "label": self.labels[i], "prob": float(probs[i])} for i in order]

    def query_label(self, index: int) -> str:
        """The words to search the web for: the label's first synonym ("tabby, tabby cat" -> "tabby")."""
        return self.labels[index].split(",")[0].strip()

    # -- identity --------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """SHA-1 over the prototxt, the weights, the feature blob and the preprocessing: gallery indexes built
        with another fingerprint hold features that do not compare with this model's."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(self.files.prototxt.read_bytes())
            h.update(file_sha1(self.files.weights).encode())
            h.update(f"|{self.feature_blob}|{self.preset}|{self.pre.size}|{self.pre.resize}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def info(self) -> dict:
        """What /api/models reports: file names (not full paths), shapes, preset, feature blob."""
        return {
            "name": self.name,
            "prototxt": self.files.prototxt.name,
            "weights": self.files.weights.name,
            "labels": self.files.labels.name if self.files.labels else None,
            "input_shape": list(self.input_shape),
            "classes": self.num_classes,
            "preset": self.preset,
            "feature_blob": self.feature_blob,
            "feature_dim": self.feature_dim,
            "fingerprint": self.fingerprint[:16],
        }
