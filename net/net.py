"""Net: a Caffe network as layers over named blobs.

    from net import Net
    net = Net.load("deploy.prototxt", "weights.caffemodel", phase="test")  # weights optional
    out = net.forward(data=x)    # float32 NCHW per input blob; returns {output blob name: ndarray}
    net.blobs["conv1"]           # any blob's data (ndarray) after forward
    net.params["conv1"]          # [weight, bias] ndarrays, Caffe layouts
    net.save("copy.caffemodel")  # binary caffemodel

Construction follows Caffe (caffe_facts §5): upgrade, filter layers by phase/level/stage, wire
blobs by name in layer order (a top named like the bottom at the same index is in-place), set up
each layer and infer shapes. Outputs are the blobs no later layer consumes. Weights attach to
layers by name with Caffe's legacy-aware shape check (§7.3).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .blob import Blob
from .layers import Layer, create_layer
from .schema import Message

PHASES = {"train": "TRAIN", "test": "TEST"}


class NetError(ValueError):
    """A network definition or its weights do not fit together (names the layer and the problem)."""


class _Blobs(Mapping):
    """Read-only name -> ndarray view of a net's blobs."""

    def __init__(self, blobs: dict[str, Blob]) -> None:
        self._blobs = blobs

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._blobs[name].data
        except KeyError:
            raise KeyError(f"no blob named {name!r} (blobs: {', '.join(self._blobs)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)


class _Params(Mapping):
    """Read-only layer name -> [weight, bias] view; the arrays are the live parameters."""

    def __init__(self, layers: list[Layer]) -> None:
        self._layers = {layer.name: layer for layer in layers if layer.blobs}

    def __getitem__(self, name: str) -> list[np.ndarray]:
        try:
            return [b.data for b in self._layers[name].blobs]
        except KeyError:
            raise KeyError(f"no layer with parameters named {name!r} (have: {', '.join(self._layers)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)


def _phase(phase: str) -> str:
    key = phase.lower()
    if key not in PHASES:
        raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
    return PHASES[key]


class Net:
    """A network built from a NetParameter. Use `Net.load` for files."""

    def __init__(
        self,
        param: Message,
        *,
        phase: str = "test",
        level: int = 0,
        stages: tuple[str, ...] = (),
        seed: int | None = None,
        device: str = "cpu",
    ) -> None:
        from .upgrade import filter_net

        if device != "cpu":
            raise RuntimeError(f"device {device!r} is not available: this build runs on the CPU only")
        self.phase = _phase(phase)
        self.param = filter_net(param, self.phase, level, tuple(stages))
        self.name: str = self.param.name
        self.rng = np.random.default_rng(seed)
        self._blobs: dict[str, Blob] = {}
        self.layers: list[Layer] = []
        self.bottoms: list[list[Blob]] = []
        self.tops: list[list[Blob]] = []
        self.inputs: list[str] = []
        self._build()
        self.blobs = _Blobs(self._blobs)
        self.params = _Params(self.layers)

    # -- construction ------------------------------------------------------------------------
    def _build(self) -> None:
        available: dict[str, None] = {}
        for lp in self.param.layer:
            where = f"layer '{lp.name}' ({lp.type})"
            try:
                layer = create_layer(lp, self.phase, self.rng)
            except ValueError as exc:
                raise NetError(str(exc)) from None
            bottom = []
            for name in lp.bottom:
                if name not in self._blobs:
                    have = ", ".join(self._blobs) or "none"
                    raise NetError(
                        f"{where}: bottom '{name}' is not produced by any earlier layer (blobs so far: {have})"
                    )
                bottom.append(self._blobs[name])
                available.pop(name, None)
            top = []
            for i, name in enumerate(lp.top):
                if i < len(lp.bottom) and lp.bottom[i] == name:
                    blob = self._blobs[name]
                elif name in self._blobs:
                    raise NetError(f"{where}: top '{name}' is produced by multiple sources")
                else:
                    blob = self._blobs[name] = Blob(name)
                top.append(blob)
                available[name] = None
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            try:
                layer.setup(bottom, top)
                layer.reshape(bottom, top)
            except ValueError as exc:
                raise NetError(str(exc) if str(exc).startswith(lp.type) else f"{where}: {exc}") from None
            self.layers.append(layer)
            self.bottoms.append(bottom)
            self.tops.append(top)
        self.outputs: list[str] = list(available)

    @classmethod
    def load(
        cls,
        prototxt: str | Path,
        weights: str | Path | None = None,
        phase: str = "test",
        *,
        level: int = 0,
        stages: tuple[str, ...] = (),
        seed: int | None = None,
        device: str = "cpu",
    ) -> Net:
        """Build a net from a text prototxt and, if given, copy weights from a binary caffemodel."""
        from .prototxt_loader import load_net_prototxt

        net = cls(load_net_prototxt(str(prototxt)), phase=phase, level=level, stages=stages, seed=seed, device=device)
        if weights is not None:
            net.copy_from(weights)
        return net

    @classmethod
    def from_string(cls, text: str, **kwargs) -> Net:
        from .prototxt_loader import parse_text
        from .upgrade import upgrade_net

        return cls(upgrade_net(parse_text(text, "NetParameter")), **kwargs)

    # -- weights -----------------------------------------------------------------------------
    def copy_from(self, weights: str | Path | Message) -> None:
        """Copy parameters from a caffemodel (path or decoded NetParameter), layer by layer by name."""
        from .caffemodel import blob_shape_matches, blob_to_array, load_caffemodel

        source = str(weights) if not isinstance(weights, Message) else "<NetParameter>"
        param = load_caffemodel(source) if not isinstance(weights, Message) else weights
        by_name: dict[str, Layer] = {}
        for layer in self.layers:
            by_name.setdefault(layer.name, layer)
        for src in param.layer:
            target = by_name.get(src.name)
            if target is None:
                continue
            if len(src.blobs) != len(target.blobs):
                raise NetError(
                    f"{source}: layer '{src.name}' has {len(src.blobs)} blobs in the file, "
                    f"the net's {target.type} layer expects {len(target.blobs)}"
                )
            for i, (blob_proto, blob) in enumerate(zip(src.blobs, target.blobs)):
                values = blob_to_array(blob_proto)
                if not blob_shape_matches(blob_proto, blob.shape):
                    raise NetError(
                        f"{source}: layer '{src.name}' blob {i} has shape {values.shape} in the file, "
                        f"the net expects {blob.shape} (rename the layer to learn it from scratch)"
                    )
                blob.data[...] = values.reshape(blob.shape)

    def to_proto(self) -> Message:
        """The net's NetParameter with every layer's parameters written as blobs (with `shape`)."""
        from .caffemodel import array_to_blob

        out = self.param.copy()
        for lp, layer in zip(out.layer, self.layers):
            lp.clear("blobs")
            for blob in layer.blobs:
                lp.blobs.append(array_to_blob(blob.data))
        return out

    def save(self, path: str | Path) -> None:
        """Write the weights as a binary caffemodel (atomically)."""
        from .caffemodel import save_caffemodel

        save_caffemodel(str(path), self.to_proto())

    # -- running -----------------------------------------------------------------------------
    def reshape(self) -> None:
        """Propagate input shapes through every layer."""
        for layer, bottom, top in zip(self.layers, self.bottoms, self.tops):
            try:
                layer.reshape(bottom, top)
            except ValueError as exc:
                raise NetError(str(exc)) from None

    def set_input(self, name: str, value: np.ndarray) -> None:
        if name not in self.inputs:
            raise ValueError(f"{name!r} is not an input of net '{self.name}' (inputs: {', '.join(self.inputs)})")
        arr = np.ascontiguousarray(value, dtype=np.float32)
        blob = self._blobs[name]
        if arr.ndim != blob.data.ndim:
            raise ValueError(
                f"input '{name}': expected {blob.data.ndim} dimensions like {blob.shape}, got shape {arr.shape}"
            )
        blob.data = arr if arr is not value else arr.copy()

    def forward(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run every layer. Keyword arguments feed input blobs (float32, any batch size; other
        spatial sizes are accepted where the net allows them). Returns copies of the output blobs."""
        reshape = False
        for name, value in inputs.items():
            old = self._blobs[name].shape if name in self._blobs else None
            self.set_input(name, value)
            reshape |= self._blobs[name].shape != old
        if reshape:
            self.reshape()
        self._run(None)
        return {name: self._blobs[name].data.copy() for name in self.outputs}

    def _run(self, timings: list[float] | None) -> None:
        for i, (layer, bottom, top) in enumerate(zip(self.layers, self.bottoms, self.tops)):
            if timings is None:
                layer.forward(bottom, top)
            else:
                t0 = time.perf_counter()
                layer.forward(bottom, top)
                timings[i] += time.perf_counter() - t0

    def time_forward(self, iterations: int = 10, warmup: int = 1) -> list[float]:
        """Average forward milliseconds per layer over `iterations` runs on the current inputs."""
        for _ in range(warmup):
            self._run(None)
        timings = [0.0] * len(self.layers)
        for _ in range(iterations):
            self._run(timings)
        return [1000.0 * t / max(iterations, 1) for t in timings]

    def blob(self, name: str) -> Blob:
        """The Blob object (data + diff) named `name`."""
        return self._blobs[name]

    def summary(self) -> list[dict]:
        """One row per layer: name, type, bottoms, tops with shapes, parameter shapes and count."""
        rows = []
        for layer, bottom, top in zip(self.layers, self.bottoms, self.tops):
            rows.append(
                {
                    "name": layer.name,
                    "type": layer.type,
                    "bottoms": [b.name for b in bottom],
                    "tops": [(t.name, t.shape) for t in top],
                    "params": [b.shape for b in layer.blobs],
                    "count": sum(b.count for b in layer.blobs),
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {len(self.layers)} layers, inputs={self.inputs}, outputs={self.outputs})"
