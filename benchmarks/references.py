"""Reference frameworks for benchmarks: the same net, the same weights, run by PyTorch CPU and
OpenCV DNN. Used only in benchmarks and tests, never by crema itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def torch_forward(net) -> Callable[[np.ndarray], np.ndarray]:
    """A PyTorch function computing `net`'s output from its input, built layer by layer from the
    crema Net (same weights). Supports the layer types of LeNet and CaffeNet."""
    import torch
    import torch.nn.functional as F

    steps = []
    for layer in net.layers:
        kind = layer.type
        if kind == "Input":
            continue
        if kind == "Convolution":
            w = torch.from_numpy(layer.blobs[0].data.copy())
            b = torch.from_numpy(layer.blobs[1].data.copy()) if len(layer.blobs) > 1 else None
            steps.append(
                lambda x, w=w, b=b, L=layer: F.conv2d(
                    x, w, b, stride=L.stride, padding=L.pad, dilation=L.dilation, groups=L.group
                )
            )
        elif kind == "Pooling":
            if layer.method == "MAX":
                steps.append(lambda x, L=layer: F.max_pool2d(x, L.kernel, L.stride, L.pad, ceil_mode=True))
            else:
                steps.append(lambda x, L=layer: F.avg_pool2d(x, L.kernel, L.stride, L.pad, ceil_mode=True))
        elif kind == "LRN":
            kw = layer.kw
            if kw["region"] != "ACROSS_CHANNELS":
                raise ValueError("torch reference supports ACROSS_CHANNELS LRN only")
            steps.append(lambda x, kw=kw: F.local_response_norm(x, kw["local_size"], kw["alpha"], kw["beta"], kw["k"]))
        elif kind == "ReLU":
            steps.append(F.relu)
        elif kind == "InnerProduct":
            w = torch.from_numpy(layer.blobs[0].data.copy())
            b = torch.from_numpy(layer.blobs[1].data.copy()) if len(layer.blobs) > 1 else None
            steps.append(lambda x, w=w, b=b: F.linear(x.reshape(x.shape[0], -1), w, b))
        elif kind == "Softmax":
            steps.append(lambda x: F.softmax(x, dim=1))
        elif kind == "Dropout":
            continue
        else:
            raise ValueError(f"torch reference: unsupported layer type {kind}")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            for step in steps:
                t = step(t)
            return t.numpy()

    return run


def opencv_forward(prototxt: str, caffemodel: str) -> Callable[[np.ndarray], np.ndarray]:
    """OpenCV DNN (Caffe importer, OpenCV < 5) on the same files, CPU backend."""
    import cv2

    ref = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(x: np.ndarray) -> np.ndarray:
        ref.setInput(x)
        return ref.forward()

    return run


def set_threads(n: int) -> dict[str, int]:
    """Pin every framework to `n` threads; returns what each reports back."""
    import numba

    numba.set_num_threads(n)
    got = {"crema (numba)": numba.get_num_threads()}
    try:
        import torch

        torch.set_num_threads(n)
        got["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
        got["opencv"] = cv2.getNumThreads()
    except ImportError:
        pass
    return got
