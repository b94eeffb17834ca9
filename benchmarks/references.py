"""Reference frameworks for benchmarks: the same net, the same weights, run by PyTorch CPU and
OpenCV DNN. Used only in benchmarks and tests, never by crema itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def torch_forward(net, dtype: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """A PyTorch function computing `net`'s output from its input, built layer by layer from the
    crema Net (same weights). Supports the layer types of LeNet and CaffeNet. dtype "float64": weights, input and
    arithmetic in float64 (the accuracy reference of the tests), output float64."""
    import torch
    import torch.nn.functional as F

    cast = getattr(torch, dtype)

    steps = []
    for layer in net.layers:
        kind = layer.type
        if kind == "Input":
            continue
        if kind == "Convolution":
            w = torch.from_numpy(layer.blobs[0].data.copy()).to(cast)
            b = torch.from_numpy(layer.blobs[1].data.copy()).to(cast) if len(layer.blobs) > 1 else None
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
            w = torch.from_numpy(layer.blobs[0].data.copy()).to(cast)
            b = torch.from_numpy(layer.blobs[1].data.copy()).to(cast) if len(layer.blobs) > 1 else None
            steps.append(lambda x, w=w, b=b: F.linear(x.reshape(x.shape[0], -1), w, b))
        elif kind == "Softmax":
            steps.append(lambda x: F.softmax(x, dim=1))
        elif kind == "Dropout":
            continue
        else:
            raise ValueError(f"torch reference: unsupported layer type {kind}")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(cast)
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


# -- ONNX Runtime ------------------------------------------------------------------------------------------------
# Graphs are built node by node with onnx.helper from crema's layer parameters (no exporter, no torch): the same
# weights, the same attributes. opset 17.


def onnx_session(nodes: list, inputs: list[tuple[str, tuple]], outputs: list[str], weights: dict, threads: int):
    """An onnxruntime.InferenceSession over `nodes` (onnx NodeProtos), float32 inputs (name, shape; None = dynamic
    dim), float32 initializers `weights` (name -> ndarray), CPU, `threads` intra-op threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "crema_ref",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_node(layer, bottom: str, top: str, weights: dict) -> list:
    """ONNX nodes computing one crema layer (LeNet/CaffeNet types); adds its weights to `weights`."""
    from onnx import helper

    kind, name = layer.type, layer.name
    if kind == "Convolution":
        weights[name + "_w"] = layer.blobs[0].data
        ins = [bottom, name + "_w"]
        if len(layer.blobs) > 1:
            weights[name + "_b"] = layer.blobs[1].data
            ins.append(name + "_b")
        (ph, pw), (sh, sw), (dh, dw) = layer.pad, layer.stride, layer.dilation
        kh, kw = layer.blobs[0].data.shape[2:]
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], "dilations": [dh, dw]}
        return [helper.make_node("Conv", ins, [top], group=layer.group, **attrs)]
    if kind == "Pooling":
        if layer.method != "MAX" or any(layer.pad):
            raise ValueError("onnx reference: MAX pooling without padding only (ONNX's padded AVE differs from Caffe)")
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        return [helper.make_node("MaxPool", [bottom], [top], kernel_shape=[kh, kw], strides=[sh, sw], ceil_mode=1)]
    if kind == "LRN":
        kw = layer.kw
        if kw["region"] != "ACROSS_CHANNELS":
            raise ValueError("onnx reference: ACROSS_CHANNELS LRN only")
        attrs = {"size": kw["local_size"], "alpha": kw["alpha"], "beta": kw["beta"], "bias": kw["k"]}
        return [helper.make_node("LRN", [bottom], [top], **attrs)]
    if kind == "ReLU":
        return [helper.make_node("Relu", [bottom], [top])]
    if kind == "InnerProduct":
        weights[name + "_w"] = layer.blobs[0].data
        ins = [name + "_flat", name + "_w"]
        if len(layer.blobs) > 1:
            weights[name + "_b"] = layer.blobs[1].data
            ins.append(name + "_b")
        return [
            helper.make_node("Flatten", [bottom], [name + "_flat"], axis=1),
            helper.make_node("Gemm", ins, [top], transB=1),
        ]
    if kind == "Softmax":
        return [helper.make_node("Softmax", [bottom], [top], axis=1)]
    if kind == "Dropout":
        return [helper.make_node("Identity", [bottom], [top])]
    raise ValueError(f"onnx reference: unsupported layer type {kind}")


def onnx_forward(net, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime (CPU) on a graph built from the crema Net `net`: same layers, same weights."""
    nodes, weights = [], {}
    current = None
    first = None
    for layer in net.layers:
        if layer.type == "Input":
            first = current = "data"
            continue
        top = f"t{len(nodes)}_{layer.name}"
        nodes += onnx_node(layer, current, top, weights)
        current = top
    c, h, w = net.blobs["data"].shape[1:]
    sess = onnx_session(nodes, [(first, ("N", c, h, w))], [current], weights, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {first: x})[0]

    return run


def onnx_dag_forward(net, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime (CPU) on a graph built from the crema Net `net` blob by blob, for nets that branch and merge
    (GoogLeNet's Concat, ResNet's Eltwise, BatchNorm + Scale). Build it from a net loaded with fuse=False: a folded
    net's convolutions already hold their BatchNorm. ORT applies its own graph optimisations (it folds the
    BatchNormalization nodes into the Convs and fuses Relu)."""
    from onnx import helper

    nodes, weights = [], {}
    version: dict[str, str] = {}  # crema blob name -> the ONNX tensor that holds its current value
    first = None
    for layer, bottoms, tops in zip(net.layers, net.bottoms, net.tops):
        if layer.type == "Input":
            first = tops[0].name
            version[first] = first
            continue
        ins = [version[b.name] for b in bottoms]
        outs = [f"t{len(nodes)}_{t.name}" for t in tops]
        if layer.type == "Split":
            nodes += [helper.make_node("Identity", ins, [o]) for o in outs]
        else:
            nodes += onnx_dag_node(layer, ins, outs, weights)
        for t, o in zip(tops, outs):
            version[t.name] = o
    last = version[net.outputs[-1]]
    c, h, w = net.blobs[first].shape[1:]
    sess = onnx_session(nodes, [(first, ("N", c, h, w))], [last], weights, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {first: x})[0]

    return run


def onnx_dag_node(layer, ins: list[str], outs: list[str], weights: dict) -> list:
    """ONNX nodes for one layer of the Caffe zoo classifiers (onnx_node's types plus padded / global / average
    pooling, Concat, Eltwise, BatchNorm with global statistics, Scale); adds its weights to `weights`."""
    from onnx import helper

    kind, name, x, y = layer.type, layer.name, ins[0], outs[0]
    if kind == "Pooling":
        if layer.global_pooling:
            op = "GlobalMaxPool" if layer.method == "MAX" else "GlobalAveragePool"
            return [helper.make_node(op, [x], [y])]
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
        if layer.method == "AVE" and (ph or pw):
            raise ValueError("onnx reference: padded AVE pooling differs from Caffe's (its divisor counts the pad)")
        op = "MaxPool" if layer.method == "MAX" else "AveragePool"
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], "ceil_mode": 1}
        return [helper.make_node(op, [x], [y], **attrs)]
    if kind == "Concat":
        return [helper.make_node("Concat", ins, [y], axis=int(layer.param.concat_param.axis))]
    if kind == "Eltwise":
        op = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[layer.op]
        if layer.coeffs is not None:
            scaled = []
            for i, (t, c) in enumerate(zip(ins, layer.coeffs)):
                weights[f"{name}_c{i}"] = np.array(c, np.float32)
                scaled.append(f"{name}_s{i}")
            return [helper.make_node("Mul", [t, f"{name}_c{i}"], [s]) for i, (t, s) in enumerate(zip(ins, scaled))] + [
                helper.make_node("Sum", scaled, [y])
            ]
        if op == "Mul" and len(ins) > 2:
            raise ValueError("onnx reference: Eltwise PROD of two inputs only")
        return [helper.make_node(op, ins, [y])]
    if kind == "BatchNorm":
        if not layer.use_global:
            raise ValueError("onnx reference: BatchNorm with global statistics only")
        mean, var, factor = (b.data for b in layer.blobs)
        f = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        c = mean.shape[0]
        weights[name + "_mean"], weights[name + "_var"] = mean * f, var * f
        weights[name + "_one"], weights[name + "_zero"] = np.ones(c, np.float32), np.zeros(c, np.float32)
        bn_ins = [x, name + "_one", name + "_zero", name + "_mean", name + "_var"]
        return [helper.make_node("BatchNormalization", bn_ins, [y], epsilon=layer.eps)]
    if kind == "Scale":
        if len(ins) != 1 or layer.axis % 4 != 1 or layer.blobs[0].data.ndim != 1:
            raise ValueError("onnx reference: Scale by a per-channel parameter only")
        weights[name + "_g"] = layer.blobs[0].data.reshape(-1, 1, 1)
        if len(layer.blobs) == 1:
            return [helper.make_node("Mul", [x, name + "_g"], [y])]
        weights[name + "_b"] = layer.blobs[1].data.reshape(-1, 1, 1)
        return [
            helper.make_node("Mul", [x, name + "_g"], [name + "_gx"]),
            helper.make_node("Add", [name + "_gx", name + "_b"], [y]),
        ]
    return onnx_node(layer, x, y, weights)
