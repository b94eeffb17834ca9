"""Net: a Caffe network as layers over named blobs.

    from net import Net
    net = Net.load("deploy.prototxt", "weights.caffemodel", phase="test")  # weights optional
    out = net.forward(data=x)    # float32 NCHW per input blob; returns {output blob name: ndarray}
    net.blobs["conv1"]           # any blob's data (ndarray) after forward
    net.share_activations(keep=("pool",))  # forward-only: intermediate blobs share memory (net.arena)
    net.observe("conv1", fn)     # fn("conv1", array) in every forward right after conv1 is written
    net.params["conv1"]          # [weight, bias] ndarrays, Caffe layouts
    net.save("copy.caffemodel")  # binary caffemodel

Construction follows Caffe (caffe_facts §5): upgrade, filter layers by phase/level/stage, wire
blobs by name in layer order (a top named like the bottom at the same index is in-place), set up
each layer and infer shapes. Outputs are the blobs no later layer consumes. Weights attach to
layers by name with Caffe's legacy-aware shape check (§7.3).
"""

from __future__ import annotations

import inspect
import math
import os
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numba
import numpy as np

from kernels import pad, taskpool, tasks

from . import arena, per_image, replay, train_replay
from .blob import Blob
from .contention import threads_for
from .device import (
    assign,
    check_device,
    host,
    prepare,
    synchronize,
    to_device,
    to_host,
    upload_into,
)
from .layers import NO_STEP, InputLayer, Layer, check_gpu_capable, create_layer
from .memory import (
    Budget,
    MemoryBudgetError,
    ShapeOnly,
    begin_shape_pass,
    end_shape_pass,
    gib,
    nbytes,
    param_room,
    resolve_budget,
)
from .plan_steps import (
    Subsamples,
    convt_step,
    fuse_conv_depthwise,
    fuse_expand_depthwise,
    fuse_global_pool,
    fuse_residual_sums,
    hand_over_depthwise,
    hand_over_expand,
    hand_over_projection,
    prefetch_ahead,
    strided_pointwise_step,
    sums_only,
    zero_border_step,
)
from .schema import Message

PHASES = {"train": "TRAIN", "test": "TEST"}


class NetError(ValueError):
    """A network definition or its weights do not fit together (names the layer and the problem)."""


# An inference forward on kernels.taskpool that took this long on every thread keeps every thread while other
# processes keep cores busy (net.contention would drop to fewer): its tasks are long against the time slices the
# shared core gives the pool's thread there, and the caller takes the slots that thread has not claimed. With one of
# the 2 cores kept busy (Zen 4 machine): CaffeNet at batch 10 131-144 ms on 2 threads against 166-182 on one, at 64
# 743-786 against 925-1023; at batch 1 (17 ms quietly) 25-28 either way; short forwards (LeNet at 64, EfficientNet-
# Lite0 at 1: fork-joins every few tens of microseconds) stay faster on one thread.
LONG_POOL_FORWARD_S = 0.05
# training's tasks on kernels.taskpool (Net._train_launcher); CREMA_TRAIN_POOL=0 keeps them on OpenMP
TRAIN_POOL = os.environ.get("CREMA_TRAIN_POOL", "1") != "0"
# set_input copies a 4-D float32 input this large on every thread (kernels.pad's row copy with no border), not on
# the caller alone: EfficientNet-Lite0's batch of 32 (19 MB) 1.37-1.53 -> 0.66-0.71 ms (2 threads, Zen 4)
PARALLEL_INPUT_BYTES = 4 << 20


def _nothing() -> None:
    pass


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


def split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(param: Message) -> Message:
    """Caffe's automatic Split layers (caffe_facts §5.4): a top consumed by more than one later bottom
    (a non-zero loss weight counts as one more consumer) gets a Split layer right after its producer,
    and the consumers read its tops in order. The loss weight moves to the last split top, which no
    layer consumes, so the backward pass sums every consumer's gradient with the loss's."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(param.layer):
        for j, name in enumerate(lp.bottom):
            if name in last_top:
                source[(i, j)] = last_top[name]
                consumers[last_top[name]] = consumers.get(last_top[name], 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
            if j < len(lp.loss_weight) and lp.loss_weight[j] != 0:
                consumers[(i, j)] = consumers.get((i, j), 0) + 1
    if all(n <= 1 for n in consumers.values()):
        return param
    out = param.copy()
    out.clear("layer")
    used: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(param.layer):
        new = lp.copy()
        bottoms = list(new.bottom)
        for j, name in enumerate(bottoms):
            src = source.get((i, j))
            if src is not None and consumers[src] > 1:
                k = used.get(src, 0)
                used[src] = k + 1
                bottoms[j] = split_blob_name(name, param.layer[src[0]].name, src[1], k)
        new.bottom = bottoms
        weights = list(new.loss_weight)
        split_weights: dict[int, float] = {}
        for j in range(len(new.top)):
            if consumers.get((i, j), 0) > 1 and j < len(weights) and weights[j] != 0:
                split_weights[j] = weights[j]
                weights[j] = 0.0
        if split_weights:
            new.loss_weight = weights
        out.layer.append(new)
        for j, name in enumerate(lp.top):
            n = consumers.get((i, j), 0)
            if n > 1:
                split = out.add("layer", name=f"{name}_{lp.name}_{j}_split", type="Split", bottom=[name])
                split.top = [split_blob_name(name, lp.name, j, k) for k in range(n)]
                if j in split_weights:
                    split.loss_weight = [0.0] * (n - 1) + [split_weights[j]]
    return out


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
        fuse: bool = True,
        memory_budget: Budget | None = None,
    ) -> None:
        from .upgrade import filter_net

        # the blobs must fit in this (net.memory): checked from the shapes before they are allocated, at
        # construction and on every reshape; None: CREMA_MEMORY_BUDGET, else half the machine's RAM
        self.fused = fuse  # BatchNorm + Scale folded, activations fused (net.per_image's copies are made alike)
        self.memory_budget = resolve_budget(memory_budget)
        self.device = check_device(device)  # RuntimeError for 'gpu' without CuPy or a visible device
        self.phase = _phase(phase)
        self.param = filter_net(param, self.phase, level, tuple(stages))
        self._built = insert_splits(self.param)
        self.name: str = self.param.name
        self.seed_sequence = np.random.SeedSequence(seed)
        self.rng = np.random.default_rng(self.seed_sequence)  # the same stream as default_rng(seed)
        self._blobs: dict[str, Blob] = {}
        self.layers: list[Layer] = []
        self.bottoms: list[list[Blob]] = []
        self.tops: list[list[Blob]] = []
        self.inputs: list[str] = []
        self.loss_weights: list[list[float]] = []
        self._plan: _Plan | None = None  # CPU: the execution plan of the current shapes (_run), made on first use
        self._spare_plan: _Plan | None = None  # ... and the one for the other thread count (net.contention)
        self._share: frozenset[str] | None = None  # share_activations' keep (None: every blob has its own array)
        self._arena: np.ndarray | None = None  # ... the buffer the shared blobs live in
        self._arena_stale = True  # ... placed again before the next plan (after a reshape)
        self.shared_bytes = 0  # ... bytes of the blobs in it (the arena itself: self._arena.nbytes)
        self._observers: dict[str, list] = {}  # observe(): blob name -> callbacks
        self.image_copy = False  # net.per_image's group copy: its own batches run whole, never image by image
        self.frozen = False  # freeze(): the parameters never change in place (kernels keep what they derive)
        self.copies: weakref.WeakSet[Net] = weakref.WeakSet()  # net.per_image.replica's copies on these parameters
        # training (forward_loss, backward) on kernels.taskpool's threads until a pass there runs an OpenMP loop
        self._train_pool = True
        self._build()
        self._plan_backward()
        if self.device != "cpu":
            check_gpu_capable(self)  # every layer declares a GPU forward (and backward where it runs one)
            prepare(self)  # data staging, dropout rngs
        if fuse:  # BatchNorm + Scale folded into convolutions, activations into kernel epilogues (both devices)
            fuse_layers(self)
        self.blobs = _Blobs(self._blobs)
        self.params = _Params(self.layers)

    # -- construction ------------------------------------------------------------------------
    def _build(self) -> None:
        """Create, set up and shape every layer. Tops are shape-only until the end (memory.ShapeOnly); parameters are
        filled as layers set up, each within what the earlier ones left of the budget; then the whole net's need
        is checked and the tops allocated."""
        available: dict[str, None] = {}
        budget = self.memory_budget
        param_bytes = 0
        seen_params: set[int] = set()
        for lp in self._built.layer:
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
                    blob = self._blobs[name] = ShapeOnly(name)
                top.append(blob)
                available[name] = None
            if isinstance(layer, InputLayer):  # Input, and MemoryData (fed the same way)
                self.inputs.extend(lp.top)
            try:
                with param_room(budget.bytes - param_bytes, budget):
                    layer.setup(bottom, top)
                layer.reshape(bottom, top)
            except MemoryBudgetError as exc:
                raise MemoryBudgetError(f"net '{self.name}': {exc}") from None
            except ValueError as exc:
                raise NetError(str(exc) if str(exc).startswith(lp.type) else f"{where}: {exc}") from None
            for blob in layer.blobs:
                if id(blob) not in seen_params:
                    seen_params.add(id(blob))
                    param_bytes += nbytes(blob.shape)
            self.layers.append(layer)
            self.bottoms.append(bottom)
            self.tops.append(top)
            self.loss_weights.append(self._layer_loss_weights(lp, layer, where))
        self.outputs: list[str] = list(available)
        self.check_memory()
        end_shape_pass([(blob, None, None) for blob in self._blobs.values()])

    def memory_need(self) -> int:
        """Bytes the net's blobs take at their current shapes (read from the shapes, nothing allocated): every blob and
        parameter, twice in a TRAIN net (the gradients)."""
        need = sum(nbytes(blob.shape) for blob in self._blobs.values())
        seen: set[int] = set()
        for layer in self.layers:
            for blob in layer.blobs:
                if id(blob) not in seen:
                    seen.add(id(blob))
                    need += nbytes(blob.shape)
        return 2 * need if self.phase == "TRAIN" else need

    def check_memory(self) -> None:
        """MemoryBudgetError, with the figures, when `memory_need` exceeds the budget."""
        need, budget = self.memory_need(), self.memory_budget
        if need <= budget.bytes:
            return
        first = self._blobs[self.inputs[0]] if self.inputs else self.tops[0][0] if self.tops and self.tops[0] else None
        at = f" at batch {first.shape[0]}" if first is not None and first.shape else ""
        what = "its blobs and their gradients" if self.phase == "TRAIN" else "its blobs"
        raise MemoryBudgetError(
            f"net '{self.name}' needs {gib(need)} for {what}{at}; the budget is {gib(budget.bytes)} ({budget.source})"
        )

    @staticmethod
    def _layer_loss_weights(lp: Message, layer: Layer, where: str) -> list[float]:
        if lp.loss_weight:
            if len(lp.loss_weight) != len(lp.top):
                raise NetError(
                    f"{where}: loss_weight must be given once per top ({len(lp.top)}), got {len(lp.loss_weight)}"
                )
            return [float(w) for w in lp.loss_weight]
        weights = [0.0] * len(lp.top)
        default = getattr(layer, "default_loss_weight", 0.0)
        if weights and default:
            weights[0] = default
        return weights

    def _plan_backward(self) -> None:
        """Which layers run backward and to which bottoms (caffe_facts §5.8): a layer needs backward if a
        bottom needs it or it has a parameter with lr_mult != 0 (or force_backward), and it leads to a loss."""
        need_blob: set[int] = set()
        force = bool(self.param.force_backward)
        need_layer = []
        for layer, bottom, top, lp in zip(self.layers, self.bottoms, self.tops, self._built.layer):
            specs = list(lp.param)
            layer.param_needs_grad = [
                (float(specs[j].lr_mult) if j < len(specs) else 1.0) != 0.0 for j in range(len(layer.blobs))
            ]
            need = any(id(b) in need_blob for b in bottom) or any(layer.param_needs_grad)
            need = need or (force and bool(bottom) and layer.type not in ("Accuracy",))
            need_layer.append(need)
            if need:
                need_blob.update(id(t) for t in top)
        # Keep only layers whose tops reach a loss.
        under_loss: set[int] = set()
        self.backward_layers: list[int] = []
        self.propagate_down: list[list[bool]] = [[] for _ in self.layers]
        for i in reversed(range(len(self.layers))):
            tops = self.tops[i]
            reaches = any(w != 0 for w in self.loss_weights[i]) or any(id(t) in under_loss for t in tops)
            if reaches:
                under_loss.update(id(b) for b in self.bottoms[i])
            lp = self._built.layer[i]
            pd = []
            for j, b in enumerate(self.bottoms[i]):
                want = id(b) in need_blob and (j >= len(lp.propagate_down) or bool(lp.propagate_down[j]))
                pd.append(want and reaches and self.layers[i].type != "Accuracy")
            self.propagate_down[i] = pd
            if need_layer[i] and reaches and (any(pd) or any(self.layers[i].param_needs_grad)):
                self.backward_layers.append(i)
        self.backward_layers.reverse()
        self.loss_tops = [
            (self.tops[i][j], w) for i in range(len(self.layers)) for j, w in enumerate(self.loss_weights[i]) if w != 0
        ]

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
        fuse: bool = True,
        memory_budget: Budget | None = None,
    ) -> Net:
        """Build a net from a text prototxt and, if given, copy weights from a binary caffemodel. fuse=False keeps
        every layer's own forward (no folding or fused activations: `fuse_layers`); memory_budget: see `Net`."""
        from .prototxt_loader import load_net_prototxt

        net = cls(
            load_net_prototxt(str(prototxt)),
            phase=phase,
            level=level,
            stages=stages,
            seed=seed,
            device=device,
            fuse=fuse,
            memory_budget=memory_budget,
        )
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
                assign(blob.data, values.reshape(blob.shape))
        self.refold()

    def to_proto(self) -> Message:
        """The net's NetParameter with every layer's parameters written as blobs (with `shape`)."""
        from .caffemodel import array_to_blob

        out = self.param.copy()
        by_name = {layer.name: layer for layer in self.layers}
        for lp in out.layer:
            lp.clear("blobs")
            for blob in by_name[lp.name].blobs if lp.name in by_name else []:
                lp.blobs.append(array_to_blob(host(blob.data)))
        return out

    def save(self, path: str | Path) -> None:
        """Write the weights as a binary caffemodel (atomically)."""
        from .caffemodel import save_caffemodel

        save_caffemodel(str(path), self.to_proto())

    def freeze(self, frozen: bool = True) -> None:
        """Promise that the parameters will not change in place from now on, as an inference server's do (and as
        ONNX Runtime's and OpenCV DNN's are constants): the kernels then keep what they derive from each weight
        array (Winograd's transformed filters, packed panels) while it is the same array, as for folded BatchNorm
        weights, instead of comparing the weights with a copy every forward (CaffeNet's conv2-5 at batch 1 read 19 MB
        for that) and taking slower paths where weights may change. A new array (`blob.data = array`) is seen by
        the next forward; a change in place only after `refold()`, as for folded weights (`copy_from` writes in place
        and refolds). The copies made of the net (`net.per_image.replica`: `copies`) follow both. freeze(False)
        undoes it, and so does `share_weights_from` (weights a solver trains in place). crema classify and serve
        freeze their nets."""
        self.frozen = bool(frozen)
        for layer in self.layers:
            layer.weights_frozen = self.frozen
        self._drop_derived()  # the runners were made for the other promise
        for copy in list(self.copies):
            copy.freeze(frozen)

    def refold(self) -> None:
        """Fold BatchNorm + Scale into their convolutions again (`fuse_layers`) and drop what the kernels derived
        from the weights: call it after changing parameters in place, outside the solver and copy_from, in a net
        with folded layers or a frozen one (`freeze`)."""
        for layer in self.layers:
            if getattr(layer, "fold", None) is not None:
                layer.folded = None
        self._drop_derived()
        for copy in list(self.copies):  # copies kept outside the plan (server.model's, server.inside's) too
            copy.refold()

    def _drop_derived(self) -> None:
        """Drop what the kernels made from the weights: the plans' runners and a layer forward's own kept runners."""
        for layer in self.layers:
            layer.__dict__.pop("_winograd_runners", None)
        self._drop_plans()

    # -- running -----------------------------------------------------------------------------
    def reshape(self, inputs: Mapping[str, tuple[int, ...]] | None = None) -> None:
        """Propagate input shapes through every layer; `inputs` first gives input blobs new shapes (zeros). A shape
        pass comes first (memory.ShapeOnly: nothing allocated), then the memory budget is checked (MemoryBudgetError),
        then the tops that changed size get zeros. On an error every blob keeps the array it had."""
        self._drop_plans()
        saved = begin_shape_pass(self._blobs.values())
        try:
            for name, shape in (inputs or {}).items():
                if name not in self.inputs:
                    have = ", ".join(self.inputs)
                    raise ValueError(f"{name!r} is not an input of net '{self.name}' (inputs: {have})")
                old = self._blobs[name].shape
                if len(shape) != len(old):
                    raise ValueError(f"input '{name}': expected {len(old)} dimensions like {old}, got {tuple(shape)}")
                self._blobs[name].reshape(shape)
            for layer, bottom, top in zip(self.layers, self.bottoms, self.tops):
                try:
                    layer.reshape(bottom, top)
                except ValueError as exc:
                    raise NetError(str(exc)) from None
            self.check_memory()
        except BaseException:
            end_shape_pass(saved, undo=True)
            raise
        end_shape_pass(saved)
        self._arena_stale = True

    def set_input(self, name: str, value: np.ndarray) -> None:
        if name not in self.inputs:
            raise ValueError(f"{name!r} is not an input of net '{self.name}' (inputs: {', '.join(self.inputs)})")
        blob = self._blobs[name]
        old = blob.data
        if self.device != "cpu" and upload_into(old, value):
            return  # into the device input: no host copy, no new device array
        if (
            type(value) is np.ndarray
            and value.shape == old.shape
            and value.dtype.kind in "fiub"
            and type(old) is np.ndarray
            and old.flags.writeable
        ):
            # into the blob's own array: no new pages each call (EfficientNet's 600 KB input faulted in ~40 us of
            # fresh pages per forward), the float32 cast as astype's
            if old.nbytes >= PARALLEL_INPUT_BYTES and pad.copy_rows(value, old):
                return
            np.copyto(old, value, casting="unsafe")
            return
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arr.ndim != old.ndim:
            raise ValueError(f"input '{name}': expected {old.ndim} dimensions like {blob.shape}, got shape {arr.shape}")
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
        if self.device != "cpu":
            to_device(self)  # weights once, inputs every call; activations then stay on the device
        self._run(None, adapt=True, pool=True)
        return {name: to_host(self._blobs[name].data) for name in self.outputs}

    def _train_launcher(self):
        """Arm the launcher for a training pass (forward_loss or backward) and return a function to call after it:
        kernels.taskpool's threads while no pass of this net has run an OpenMP loop (a Numba prange kernel that is not
        a task; mixing the two pools would keep both spinning on the same cores), else OpenMP. Every pass on the pool
        counts OpenMP loops (kernels.taskpool.omp_loops): one that ran any (the first, or a later one after a reshape)
        moves the net to OpenMP for good. The bits do not depend on the launcher: a slot works on its own buffers,
        whoever runs it; the thread count is the same. GPU nets launch no CPU task."""
        if self.device != "cpu":
            return _nothing
        # use_pool: False where the pool is not available (or while net.warm records)
        if not tasks.use_pool(TRAIN_POOL and self._train_pool):
            return _nothing
        before = taskpool.omp_loops()

        def decide() -> None:
            self._train_pool = taskpool.omp_probe_installed() and taskpool.omp_loops() == before

        return decide

    def _run(self, timings: list[float] | None, adapt: bool = False, pool: bool = False, train: bool = False) -> None:
        """One forward: on the CPU the plan's steps (timed per step into `timings[layer index]` when given: a layer the
        plan leaves out, e.g. a fused activation, gets 0), on the GPU every layer's forward (timed to completion).
        `adapt` (inference: `forward`): on fewer threads while other processes keep cores busy (``net.contention``);
        a forward's bits do not depend on the thread count (tests/net/test_contention.py). Training does not adapt:
        its gradients' reductions do depend on it, and a run must not depend on the machine's load. `pool` (inference:
        `forward`, `time_forward`): the tasks on kernels.taskpool's threads unless the plan runs an OpenMP loop (its
        first forward there decides; the bits are the same); else on Numba's OpenMP threads; training (`train`) arms
        its launcher itself (`_train_launcher`). With both (`forward`), untimed: a batch may run image by image
        (``net.per_image``), and a steady plan's task calls are replayed natively (``net.replay``)."""
        if self.device == "cpu":
            requested = numba.get_num_threads()
            threads = threads_for(requested) if adapt else requested
            busy = threads != requested
            if busy and any(  # a long forward on the pool keeps every thread (LONG_POOL_FORWARD_S)
                p is not None and p.threads == requested and p.pool and p.seconds >= LONG_POOL_FORWARD_S
                for p in (self._plan, self._spare_plan)
            ):
                threads = requested
            if threads != requested:
                numba.set_num_threads(threads)  # this thread's count only (Numba's setting is per thread)
            try:
                plan = self._plan_for(threads)
                deciding = False
                if pool and plan.pool is not False:  # inference: on kernels.taskpool unless the plan runs OpenMP
                    deciding = tasks.use_pool(True) and plan.pool is None  # its first forward on the pool decides
                    before = taskpool.omp_loops() if deciding else 0
                elif not train:  # training arms its launcher itself (_train_launcher)
                    tasks.use_pool(False)
                # Net.forward once the launcher is decided: image by image (net.per_image) or replayed (net.replay)
                steady = pool and adapt and timings is None and not deciding
                t0 = time.perf_counter()
                if not (steady and (per_image.forward(self, plan) or replay.forward(self, plan))):
                    self._run_plan(plan, timings)
                if pool and not deciding:  # (the deciding forward, the plan's first, may have compiled)
                    # a quiet forward sets it; one slowed by others on every thread can only lower it (a one-off
                    # slow forward, e.g. the one that records the replay, must not keep a short net on every thread)
                    took = time.perf_counter() - t0
                    plan.seconds = took if not busy else min(plan.seconds, took)
                if deciding:
                    plan.pool = taskpool.omp_probe_installed() and taskpool.omp_loops() == before
            finally:
                if threads != requested:
                    numba.set_num_threads(requested)
            return
        writers = [(layer, top) for layer, top in zip(self.layers, self.tops)] if self._observers else []
        after = _last_writers(writers, self._observers)
        for i, (layer, bottom, top) in enumerate(zip(self.layers, self.bottoms, self.tops)):
            if timings is None:
                layer.forward(bottom, top)
            else:
                synchronize(self.device)  # GPU launches are asynchronous: time each layer to completion
                t0 = time.perf_counter()
                layer.forward(bottom, top)
                synchronize(self.device)
                timings[i] += time.perf_counter() - t0
            if i in after:
                self._notify(after[i])

    def _plan_for(self, threads: int) -> _Plan:
        """The plan for `threads` threads (the current thread count): the current one, or the other one kept from
        before a change of thread count (a busy spell of other processes: ``net.contention``), or a new one (with
        shared activations placed first when they are stale: the placement follows the plan's steps, and the plan
        is then made again over the arena's arrays)."""
        plan = self._plan
        if plan is not None and plan.threads == threads:
            return plan
        spare = self._spare_plan
        if spare is not None and spare.threads == threads:  # a reshape drops both: the spare has today's shapes
            self._plan, self._spare_plan = spare, plan
            return spare
        new = _Plan(self)
        if self._share is not None and self._arena_stale:
            self._arena = None  # the old arena goes as its blobs are placed again
            skip = {id(self._blobs[name]) for name in (*self.inputs, *self.outputs, *self._share)}
            self._arena, self.shared_bytes = arena.share(new.steps, skip)
            self._arena_stale = False
            plan = self._spare_plan = None  # made over the old arrays
            new = _Plan(self)
        self._spare_plan, self._plan = plan, new
        return new

    def _run_plan(self, plan: _Plan, timings: list[float] | None, first: int = 0, end: int | None = None) -> None:
        """The plan's steps first..end-1 (all by default; net.train_replay runs its data layers apart)."""
        index = None if timings is None else {id(layer): i for i, layer in enumerate(self.layers)}
        after = plan.after
        for s in range(first, len(plan.steps) if end is None else end):
            step, layer, bottom, top = plan.steps[s]
            if index is not None:
                t0 = time.perf_counter()
            if step is None:
                layer.forward(bottom, top)
            elif not step():  # an array changed under the plan: the layer's own forward, new plans next time
                layer.forward(bottom, top)
                self._drop_plans()
            if index is not None:
                timings[index[id(layer)]] += time.perf_counter() - t0
            if after and s in after:
                self._notify(after[s])

    def _notify(self, names: list[str]) -> None:
        for name in names:
            data = host(self._blobs[name].data)  # a GPU net's blob copied to the host
            for ref in self._observers[name]:
                fn = ref()
                if fn is not None:
                    fn(name, data)

    # -- sharing and observing activations ------------------------------------------------------------
    def share_activations(self, keep: tuple[str, ...] | list[str] = ()) -> None:
        """From the next forward on, the net's intermediate blobs share one buffer by lifetime (``net.arena``): the
        inputs, the outputs and the blobs named in `keep` keep arrays of their own; any other blob's values are
        valid only while the forward still needs them (read them with `observe`). For forward-only use on the CPU
        (the GPU path keeps its own arrays); `backward` is refused from then on."""
        missing = [name for name in keep if name not in self._blobs]
        if missing:
            raise NetError(f"share_activations: no blob named {', '.join(map(repr, missing))} in net '{self.name}'")
        self._share = frozenset(keep)
        self._arena_stale = True
        self._drop_plans()

    def observe(self, name: str, fn) -> None:
        """Call fn(name, array) in every forward right after the step that writes blob `name` last (in-place layers
        included), before any later step runs: the way to read a blob that `share_activations` reuses. The array
        is the blob's own on the CPU (a copy from a GPU net's device): copy what is kept. A bound method is held weakly (observing ends with its object)."""
        if name not in self._blobs:
            raise NetError(f"observe: no blob named {name!r} in net '{self.name}'")
        ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else (lambda: fn)
        self._observers.setdefault(name, []).append(ref)
        self._drop_plans()

    def _drop_plans(self) -> None:
        self._plan = self._spare_plan = None

    # -- training ----------------------------------------------------------------------------
    def forward_loss(self, timings: list[float] | None = None) -> float:
        """Run every layer on the current inputs (data layers fetch their next batch) and return the
        weighted loss, sum over loss tops of loss_weight * sum(top). On the GPU, parameters and inputs are uploaded
        first (once / every call) and the loss tops are read back (the one synchronisation of an iteration). On the
        CPU the blobs keep their arrays from pass to pass (the data layers' and the loss's tops included: a steady
        pass is replayed natively over them, ``net.train_replay``): copy what is kept across passes."""
        if self.device != "cpu":
            to_device(self)
        decide = self._train_launcher()
        if timings is not None or not train_replay.forward(self):  # a steady pass replayed (net.train_replay)
            self._run(timings, train=True)
        decide()
        loss = 0.0
        for blob, weight in self.loss_tops:
            loss += weight * float(np.sum(host(blob.data), dtype=np.float64))
        return loss

    def backward(self, timings: list[float] | None = None) -> None:
        """Backpropagate from every loss top: its diff is set to the loss weight; each layer that needs
        backward then overwrites its bottoms' diffs and accumulates into its parameters' diffs."""
        if self._share is not None:
            raise NetError(f"net '{self.name}' shares its activations (share_activations): backward needs them")
        self._seed_loss_diffs()
        decide = self._train_launcher()
        if timings is None and train_replay.backward(self):  # after a replayed forward (net.train_replay)
            decide()
            return
        for i in reversed(self.backward_layers):
            if timings is not None:
                synchronize(self.device)  # GPU launches are asynchronous: time each layer to completion
            t0 = time.perf_counter() if timings is not None else 0.0
            self.layers[i].backward(self.tops[i], self.propagate_down[i], self.bottoms[i])
            if timings is not None:
                synchronize(self.device)
                timings[i] += time.perf_counter() - t0
        decide()

    def _seed_loss_diffs(self) -> None:
        """Each loss top's diff set to its loss weight, in place: the same array every pass (net.train_replay)."""
        for blob, weight in self.loss_tops:
            blob.diff_to_overwrite()[0].fill(weight)

    def forward_backward(self) -> float:
        loss = self.forward_loss()
        self.backward()
        return loss

    def learnable(self) -> list[tuple[str, int, Blob, float, float]]:
        """(layer name, blob index, Blob, lr_mult, decay_mult) for every parameter blob, in layer order;
        shared blobs (the same Blob in two layers) appear once."""
        out = []
        seen: set[int] = set()
        for layer, lp in zip(self.layers, self._built.layer):
            specs = list(lp.param)
            for j, blob in enumerate(layer.blobs):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                lr = float(specs[j].lr_mult) if j < len(specs) else 1.0
                decay = float(specs[j].decay_mult) if j < len(specs) else 1.0
                out.append((layer.name, j, blob, lr, decay))
        return out

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff (lazily: ``Blob.clear_diff``)."""
        for layer in self.layers:
            for blob in layer.blobs:
                blob.clear_diff()

    def share_weights_from(self, other: Net) -> None:
        """Use `other`'s parameter Blobs in every layer of the same name (Caffe's ShareTrainedLayersWith:
        the test net sees the train net's current weights without copies)."""
        if self.frozen:
            self.freeze(False)  # its weights are now trained in place
        source = {layer.name: layer for layer in other.layers if layer.blobs}
        for layer in self.layers:
            src = source.get(layer.name)
            if src is None or not layer.blobs:
                continue
            if len(src.blobs) != len(layer.blobs) or any(a.shape != b.shape for a, b in zip(src.blobs, layer.blobs)):
                raise NetError(
                    f"layer '{layer.name}': cannot share weights, shapes {[b.shape for b in src.blobs]} vs "
                    f"{[b.shape for b in layer.blobs]}"
                )
            layer.blobs = list(src.blobs)
        # The weights now belong to a net that trains them in place: nothing stays folded
        for layer in self.layers:
            if getattr(layer, "fold", None) is not None:
                for folded in layer.fold:
                    folded.fused = False
                layer.fold = layer.folded = None
        self._drop_plans()  # their steps hold the old parameter Blobs

    def first_nonfinite(self) -> str | None:
        """Name the first layer (in forward order) whose output holds NaN or inf, with the blob."""
        for layer, top in zip(self.layers, self.tops):
            for t in top:
                if t.data.size and not np.all(np.isfinite(host(t.data))):
                    return f"layer '{layer.name}' ({layer.type}), top '{t.name}'"
        for layer in self.layers:
            for j, b in enumerate(layer.blobs):
                if not np.all(np.isfinite(host(b.data))):
                    return f"layer '{layer.name}' ({layer.type}), parameter {j}"
        return None

    def time_forward(self, iterations: int = 10, warmup: int = 1) -> list[float]:
        """Average forward milliseconds per layer over `iterations` runs on the current inputs, timing the path every
        forward takes (the CPU plan's steps; 0 for a layer the plan leaves out)."""
        for _ in range(warmup):
            self._run(None, pool=True)
        timings = [0.0] * len(self.layers)
        for _ in range(iterations):
            self._run(timings, pool=True)
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


def _in_place_after(net: Net, i: int, producer: int) -> bool:
    """Does layer i rewrite, in place and alone, the single top of layer `producer`?"""
    return (
        len(net.tops[producer]) == 1
        and len(net.bottoms[i]) == 1
        and len(net.tops[i]) == 1
        and net.bottoms[i][0] is net.tops[producer][0]
        and net.tops[i][0] is net.bottoms[i][0]
    )


def fuse_layers(net: Net) -> None:
    """Fold and fuse what follows a Convolution or InnerProduct in place, so one kernel call does it all; one pass for
    both devices, led by what each layer class declares (`Layer.epilogue`, `Layer.epilogue_max`):

    - Convolution -> BatchNorm (global statistics) -> Scale, both in place on the convolution's top and neither run
      backward: the BatchNorm and Scale are folded into the convolution's weights and bias when its plan is made
      (`ConvolutionLayer.fold`); they then do nothing. The blob holds the same values up to rounding (within 1e-6
      relative). Parameters changed in place after a forward need `net.refold()` (copy_from does it).
    - then an in-place activation the producer's kernel epilogue can apply on this device: a ReLU with negative slope
      0 ("relu" epilogues), or a ReLU6 / Clip with min 0 ("clamp" epilogues: Convolution). The layer's forward is
      skipped; its backward still runs, from the same in-place data.
    """
    backward = set(net.backward_layers)
    layers = net.layers
    for p, producer in enumerate(layers):
        kind = producer.epilogue.get(net.device)
        if kind is None:
            continue
        i = p + 1
        if (
            producer.type == "Convolution"
            and i + 1 < len(layers)
            and layers[i].type == "BatchNorm"
            and layers[i].use_global
            and layers[i + 1].type == "Scale"
            and len(net.bottoms[i + 1]) == 1
            and layers[i + 1].axis % 4 == 1
            and layers[i + 1].blobs
            and layers[i + 1].blobs[0].shape == producer.blobs[0].shape[:1]
            and _in_place_after(net, i, p)
            and _in_place_after(net, i + 1, p)
            and not ({i, i + 1} & backward)
        ):
            producer.fold = (layers[i], layers[i + 1])
            layers[i].fused = layers[i + 1].fused = True
            i += 2
        if i >= len(layers) or not _in_place_after(net, i, p):
            continue
        act = layers[i]
        hi = act.epilogue_max()
        if hi is None or (hi != math.inf and kind != "clamp"):
            continue
        producer.fused_relu = True
        if hi != math.inf:
            producer.relu_max = hi
        act.fused = True


class _Plan:
    """A CPU net's execution plan: per layer, the step its `Layer.plan` made for the current shapes (geometry,
    kernel choice, thread split and output arrays fixed once), or None to call its `forward`; layers with nothing to
    do (inputs, fused ReLUs, TEST dropout in place) are left out. Cuts the per-layer Python work of a forward from
    argument checks and shape arithmetic to a few identity and flag checks (LeNet at batch 1 is mostly that work).
    Made on the first forward after a reshape and when the thread count changes."""

    __slots__ = ("after", "lost", "per_image", "pool", "replay", "runs", "seconds", "steps", "threads", "train")

    def __init__(self, net: Net) -> None:
        self.threads = numba.get_num_threads()
        self.pool: bool | None = None  # inference on kernels.taskpool: None until its first forward there decides
        self.seconds = 0.0  # the wall time of its last inference forward (Net._run: LONG_POOL_FORWARD_S)
        self.replay = None  # net.replay: None until recorded, False where it does not apply, else a Replay
        self.runs = 0  # forwards before the replay is recorded
        self.lost = 0  # replays an array changed under
        self.per_image = None  # net.per_image: None until decided, False (batched), else its PerImage
        self.train = None  # net.train_replay's state for training passes over this plan
        self.steps = []
        subs = Subsamples()  # strided_pointwise_step's buffers, one per input and stride
        rowwise = per_image.rowwise(net)  # inner products with batch-1 bits a row (per_image.rowwise)
        for layer, bottom, top in zip(net.layers, net.bottoms, net.tops):
            subs.note(layer, bottom, top)
            step = zero_border_step(layer, bottom, top) or strided_pointwise_step(layer, bottom, top, subs)
            if not step and rowwise and layer.type == "InnerProduct":
                step = layer.plan(bottom, top, rowwise=True)
            step = step or convt_step(layer, bottom, top) or layer.plan(bottom, top)
            if step is not NO_STEP:
                self.steps.append((step, layer, bottom, top))
        self.steps = fuse_residual_sums(self.steps)
        if net._share is not None:  # blobs nobody reads after a forward may take another layout between two steps
            names = (*net.inputs, *net.outputs, *net._share, *net._observers)
            keep = {id(net._blobs[n]) for n in names if n in net._blobs}
            self.steps = fuse_expand_depthwise(fuse_conv_depthwise(self.steps, keep), keep)
            self.steps = hand_over_projection(hand_over_expand(self.steps, keep), keep)
            self.steps = hand_over_depthwise(self.steps, keep)
            self.steps = fuse_global_pool(sums_only(self.steps, keep), keep)
        self.steps = prefetch_ahead(self.steps)
        self.after = _last_writers([(layer, top) for _, layer, _, top in self.steps], net._observers)


def _last_writers(writers: list[tuple], observers: Mapping[str, list]) -> dict[int, list[str]]:
    """{index in `writers` ((layer, tops) in run order): the observed blob names it writes last}."""
    last: dict[str, int] = {}
    for i, (_, top) in enumerate(writers):
        for t in top:
            if t.name in observers:
                last[t.name] = i
    after: dict[int, list[str]] = {}
    for name, i in last.items():
        after.setdefault(i, []).append(name)
    return after
