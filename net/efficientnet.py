"""EfficientNet-Lite0 (ImageNet) from a PyTorch state dict to a Caffe deploy prototxt + caffemodel.

    state = net.pth.load_state_dict("efficientnet-lite0-57934424.pth")   # torch-free, safe reader
    param = build_net(state)                                              # NetParameter with weights as blobs
    write_model(state, "out/")       # out/deploy.prototxt, out/efficientnet-lite0.caffemodel, out/synset_words.txt

The architecture is the TF reference's (efficientnet_lite_builder): a 3x3/2 stem, 16 MBConv blocks without
squeeze-excitation (1x1 expand, kxk depthwise, 1x1 project; a residual sum where stride is 1 and the width does not
change), a 1x1 head to 1280 channels, global average pooling and a 1000-way InnerProduct. Activations are ReLU6,
BatchNorm uses eps 1e-3. The weights' names are those of the lukemelas-style PyTorch port (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, `_blocks.N._depthwise_conv`, `_blocks.N._bn0..2`, `_blocks.N._project_conv`,
`_conv_head`, `_bn1`, `_fc`).

Only standard Caffe layer types are written, so the files also load in OpenCV DNN: Convolution (depthwise as
`group` = channels), BatchNorm (use_global_stats, eps 1e-3) + Scale (bias_term), ReLU6, Eltwise SUM, Pooling
AVE with global_pooling, InnerProduct and Softmax.

TF "SAME" padding. With stride 1 and an odd kernel the padding is symmetric, (k - 1) / 2 on each side. With stride 2
TF pads the total `max((ceil(H / 2) - 1) * 2 + k - H, 0)` as total // 2 before and the rest after: 0 before and 1
after for 3x3/2 on 224 or 112, 1 and 2 for 5x5/2 on 56 or 14. Caffe pads symmetrically. An exact equivalent: a
(k + 1) x (k + 1) kernel whose first row and first column are zero, with Caffe pad = the after-padding. Output i then
reads padded rows 2i .. 2i + k of [after zeros, x, after zeros], i.e. input rows 2i - after .. 2i - after + k; the
zero first tap drops row 2i - after, leaving 2i - before .. 2i - before + k - 1, which is TF's window, and the output
size (H + 2 * after - (k + 1)) / 2 + 1 equals TF's. The extra taps multiply zeros, so the sums are those of TF's
window (tests/net/test_efficientnet.py checks the logits against the PyTorch port, which pads asymmetrically).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .caffemodel import array_to_blob, save_caffemodel
from .paths import shipped_dir
from .prototxt_loader import format_text
from .schema import Message

__all__ = ["BN_EPS", "IMAGE_SIZE", "STAGES", "ConversionError", "build_net", "expected_shapes", "write_model"]

IMAGE_SIZE = 224
BN_EPS = 1e-3
STEM, HEAD, CLASSES = 32, 1280, 1000
# (repeats, kernel, first stride, expand ratio, input channels, output channels) per stage, Lite0 (width and depth
# multipliers 1.0; the Lite variants keep the stem and head fixed).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LABELS = shipped_dir("models") / "caffenet" / "synset_words.txt"  # ImageNet-1k in the standard order


class ConversionError(ValueError):
    """A state dict that does not hold EfficientNet-Lite0's weights (names the missing, extra or misshapen ones)."""


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) for the 16 blocks."""
    out = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            out.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the PyTorch state dict, name -> shape (BatchNorm's num_batches_tracked is a scalar)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["_conv_stem.weight"] = (STEM, 3, 3, 3)
    bn("_bn0", STEM)
    for i, (k, _s, e, cin, cout) in enumerate(_blocks()):
        p, mid = f"_blocks.{i}", cin * e
        if e != 1:
            shapes[f"{p}._expand_conv.weight"] = (mid, cin, 1, 1)
            bn(f"{p}._bn0", mid)
        shapes[f"{p}._depthwise_conv.weight"] = (mid, 1, k, k)
        bn(f"{p}._bn1", mid)
        shapes[f"{p}._project_conv.weight"] = (cout, mid, 1, 1)
        bn(f"{p}._bn2", cout)
    shapes["_conv_head.weight"] = (HEAD, STAGES[-1][5], 1, 1)
    bn("_bn1", HEAD)
    shapes["_fc.weight"] = (CLASSES, HEAD)
    shapes["_fc.bias"] = (CLASSES,)
    return shapes


def check_state(state: Mapping[str, np.ndarray], source: str = "state dict") -> None:
    """Raise ConversionError naming every missing, extra or misshapen tensor (at most 10 of each)."""
    want = expected_shapes()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    wrong = [
        f"{k} {tuple(np.shape(state[k]))} (expected {want[k]})"
        for k in want
        if k in state and tuple(np.shape(state[k])) != want[k]
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", extra), ("misshapen", wrong)):
        if items:
            more = f" and {len(items) - 10} more" if len(items) > 10 else ""
            problems.append(f"{len(items)} {what}: {', '.join(items[:10])}{more}")
    if problems:
        raise ConversionError(f"{source} is not EfficientNet-Lite0's weights: {'; '.join(problems)}")
    for k in want:
        if want[k] and not np.issubdtype(np.asarray(state[k]).dtype, np.floating):
            raise ConversionError(f"{source}: tensor {k} has dtype {np.asarray(state[k]).dtype}, expected floating point")


def same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) for one axis of `size` pixels."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = state
        self.param = Message("NetParameter", name="efficientnet-lite0")
        inp = self.param.add("layer", name="data", type="Input", top=["data"])
        inp.mutable("input_param").add("shape", dim=[1, 3, IMAGE_SIZE, IMAGE_SIZE])
        self.size = IMAGE_SIZE

    def _tensor(self, key: str) -> np.ndarray:
        return np.ascontiguousarray(self.state[key], dtype=np.float32)

    def conv(self, name: str, bottom: str, key: str, k: int, stride: int, group: int = 1) -> str:
        w = self._tensor(key)
        before, after = same_pads(self.size, k, stride)
        if after == before + 1:  # TF's asymmetric SAME pad: one more leading zero tap, symmetric pad `after`
            w = np.pad(w, ((0, 0), (0, 0), (1, 0), (1, 0)))
            pad, kernel = after, k + 1
        elif after == before:
            pad, kernel = before, k
        else:  # pragma: no cover - cannot happen for a square kernel (total // 2 vs the rest)
            raise ConversionError(f"{name}: SAME padding {before}/{after} has no Caffe equivalent")
        lp = self.param.add("layer", name=name, type="Convolution", bottom=[bottom], top=[name])
        cp = lp.mutable("convolution_param")
        cp.num_output = int(w.shape[0])
        cp.bias_term = False
        cp.kernel_size = [kernel]
        if stride != 1:
            cp.stride = [stride]
        if pad:
            cp.pad = [pad]
        if group != 1:
            cp.group = group
        lp.blobs.append(array_to_blob(w))
        self.size = (self.size + 2 * pad - kernel) // stride + 1
        return name

    def bn(self, top: str, key: str, relu6: bool) -> None:
        """BatchNorm + Scale (+ ReLU6), all in place on `top`."""
        bn = self.param.add("layer", name=f"{top}/bn", type="BatchNorm", bottom=[top], top=[top])
        bn.mutable("batch_norm_param").use_global_stats = True
        bn.mutable("batch_norm_param").eps = BN_EPS
        for leaf in ("running_mean", "running_var"):
            bn.blobs.append(array_to_blob(self._tensor(f"{key}.{leaf}")))
        bn.blobs.append(array_to_blob(np.ones(1, np.float32)))  # Caffe's moving-average scale factor
        sc = self.param.add("layer", name=f"{top}/scale", type="Scale", bottom=[top], top=[top])
        sc.mutable("scale_param").bias_term = True
        sc.blobs.append(array_to_blob(self._tensor(f"{key}.weight")))
        sc.blobs.append(array_to_blob(self._tensor(f"{key}.bias")))
        if relu6:
            self.param.add("layer", name=f"{top}/relu6", type="ReLU6", bottom=[top], top=[top])

    def build(self) -> Message:
        x = self.conv("stem", "data", "_conv_stem.weight", 3, 2)
        self.bn(x, "_bn0", relu6=True)
        for i, (k, s, e, cin, cout) in enumerate(_blocks()):
            p, block_in = f"_blocks.{i}", x
            if e != 1:
                x = self.conv(f"block{i}/expand", x, f"{p}._expand_conv.weight", 1, 1)
                self.bn(x, f"{p}._bn0", relu6=True)
            x = self.conv(f"block{i}/dw", x, f"{p}._depthwise_conv.weight", k, s, group=cin * e)
            self.bn(x, f"{p}._bn1", relu6=True)
            x = self.conv(f"block{i}/project", x, f"{p}._project_conv.weight", 1, 1)
            self.bn(x, f"{p}._bn2", relu6=False)
            if s == 1 and cin == cout:
                add = self.param.add("layer", name=f"block{i}/add", type="Eltwise", bottom=[x, block_in])
                add.top = [f"block{i}/add"]
                add.mutable("eltwise_param").operation = "SUM"
                x = f"block{i}/add"
        x = self.conv("head", x, "_conv_head.weight", 1, 1)
        self.bn(x, "_bn1", relu6=True)
        pool = self.param.add("layer", name="pool", type="Pooling", bottom=[x], top=["pool"])
        pool.mutable("pooling_param").pool = "AVE"
        pool.mutable("pooling_param").global_pooling = True
        fc = self.param.add("layer", name="fc", type="InnerProduct", bottom=["pool"], top=["fc"])
        fc.mutable("inner_product_param").num_output = CLASSES
        fc.blobs.append(array_to_blob(self._tensor("_fc.weight")))
        fc.blobs.append(array_to_blob(self._tensor("_fc.bias")))
        self.param.add("layer", name="prob", type="Softmax", bottom=["fc"], top=["prob"])
        return self.param


def build_net(state: Mapping[str, np.ndarray], source: str = "state dict") -> Message:
    """The deploy NetParameter with every layer's weights as blobs (a caffemodel's content plus the net's shape)."""
    check_state(state, source)
    return _Builder(state).build()


def _deploy_text(param: Message) -> str:
    deploy = param.copy()
    for lp in deploy.layer:
        lp.clear("blobs")
    header = (
        "# EfficientNet-Lite0 (ImageNet-1k), converted by `crema import efficientnet-lite0` from the PyTorch port's\n"
        "# weights. Preprocessing (crema preset 'efficientnet'): RGB, centred square crop of 224/256 of the shorter\n"
        "# side, bicubic resize to 224x224, (v - 127) / 128. Stride-2 convolutions use a (k+1)x(k+1) kernel with a\n"
        "# zero first row and column for TF's asymmetric SAME padding (net/efficientnet.py).\n"
    )
    return header + format_text(deploy)


def write_model(state: Mapping[str, np.ndarray], out_dir: str | os.PathLike, source: str = "state dict") -> dict:
    """Write deploy.prototxt, efficientnet-lite0.caffemodel and synset_words.txt into `out_dir` atomically: the files
    are written into a temporary folder beside it, which is renamed into place, so a reader never sees half a model
    (into an existing folder, each file is renamed into place). If `out_dir` holds the three files already (another
    process converted first), they are left as they are. Returns the file paths."""
    out = Path(out_dir)
    param = build_net(state, source)
    files = {
        "prototxt": out / "deploy.prototxt",
        "weights": out / "efficientnet-lite0.caffemodel",
        "labels": out / "synset_words.txt",
    }
    if out.is_dir() and all(p.is_file() for p in files.values()):
        return files
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / files["prototxt"].name).write_text(_deploy_text(param), encoding="utf-8")
        save_caffemodel(tmp / files["weights"].name, param)
        shutil.copyfile(LABELS, tmp / files["labels"].name)
        try:
            os.rename(tmp, out)  # the whole folder at once; fails if `out` exists and is not empty
        except OSError:
            if out.is_dir() and all(p.is_file() for p in files.values()):
                return files  # another process converted first
            if not out.is_dir():
                raise
            for key in ("weights", "labels", "prototxt"):  # into an existing folder: each file atomically
                os.replace(tmp / files[key].name, files[key])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return files
