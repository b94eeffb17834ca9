"""Weight fillers with Caffe's distributions (filler.hpp): constant, uniform, gaussian, xavier, msra,
positive_unitball. A FillerParameter with no type is constant 0, so a layer without a weight_filler
starts at zero, as in Caffe.

Bit-exact reproduction of Caffe's boost::mt19937 streams is not attempted (caffe_facts §6.4):
the distributions match, the numbers do not.
"""

from __future__ import annotations

import numpy as np

from .schema import Message


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    count = int(np.prod(shape)) if shape else 1
    fan_in = count / shape[0] if shape and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(filler: Message, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    mode = filler.variance_norm
    norm = fan_out if mode == "FAN_OUT" else (fan_in + fan_out) / 2.0 if mode == "AVERAGE" else fan_in
    if norm <= 0:  # an empty shape; layers check theirs first (net.memory.check_param_shape)
        raise ValueError(f"{filler.type} filler: shape {shape} has no fan-in/fan-out to scale by")
    return norm


def fill(filler: Message, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 array of `shape` drawn as `filler` (a FillerParameter Message) says."""
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, dtype=np.float32)
    elif kind == "uniform":
        out = rng.uniform(filler.min, filler.max, size=shape)
    elif kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, size=shape)
        if filler.sparse >= 0 and shape:
            keep = filler.sparse / max(shape[0], 1)
            out *= rng.random(size=shape) < keep
    elif kind == "xavier":
        scale = np.sqrt(3.0 / _norm(filler, shape))
        out = rng.uniform(-scale, scale, size=shape)
    elif kind == "msra":
        out = rng.normal(0.0, np.sqrt(2.0 / _norm(filler, shape)), size=shape)
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, size=shape)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
    else:
        known = "constant, uniform, gaussian, xavier, msra, positive_unitball"
        raise ValueError(f"unknown filler type {kind!r} (known: {known})")
    return np.ascontiguousarray(out, dtype=np.float32)
