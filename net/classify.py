"""Classify images with a loaded Net: the preprocessing that fits its input, and the top-k of each image.

The command line (`crema classify`) and the web app (server/model.py) share these, so one image gets one answer.
"""

from __future__ import annotations

import numpy as np


def feature_blob(net) -> str:
    """The classifier's input blob, whose rows are an image's features (`crema serve`'s galleries): the first bottom
    of the last layer that has parameters. ValueError when no layer has any."""
    for layer, bottom in zip(reversed(net.layers), reversed(net.bottoms)):
        if layer.blobs and bottom:
            return bottom[0].name
    raise ValueError(f"net '{net.name}': no layer with parameters, so no feature blob; pass --feature-blob NAME")


def preprocess_for(net, preset: str | None):
    """The Preprocess that fits the net's first input: a named preset, or chosen by channel count."""
    from .preprocess import PRESETS
    from .preprocess import preset as get_preset

    shape = net.blob(net.inputs[0]).shape
    if len(shape) != 4:
        raise ValueError(f"input '{net.inputs[0]}' has shape {shape}; classify needs an (N, C, H, W) image input")
    size = (shape[2], shape[3])
    if preset is not None:
        pre = get_preset(preset)
    else:
        pre = PRESETS["lenet-auto"] if shape[1] == 1 else PRESETS["caffenet"]  # the web app's defaults too
    if pre.size != size:
        resize = None
        if pre.resize is not None:
            resize = tuple(round(s * r / p) for s, r, p in zip(size, pre.resize, pre.size))
        pre = pre.replace(size=size, resize=resize)
    return pre


def classify(
    net, images: list[str], labels: list[str] | None, top: int, preset: str | None = None, batch: int = 16
) -> list[dict]:
    """Top-k predictions for each image path: [{"image", "predictions": [{"index","label","prob"}]}]."""
    from .preprocess import load_image

    pre = preprocess_for(net, preset)
    results = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = np.stack([pre(load_image(path)) for path in chunk])
        out = net.forward(**{net.inputs[0]: x})
        probs = out[net.outputs[-1]].reshape(len(chunk), -1)
        if labels is None:
            labels = [str(i) for i in range(probs.shape[1])]
        for path, p in zip(chunk, probs):
            order = np.argsort(-p, kind="stable")[:top]
            preds = [{"index": int(i), "label": labels[i], "prob": float(p[i])} for i in order]
            results.append({"image": path, "predictions": preds})
    return results
