"""Caffe's solvers: SGD (exact), Nesterov, AdaGrad, RMSProp, AdaDelta, Adam (caffe_facts §6).

    from net.solver import Solver
    solver = Solver.load("examples/mnist/lenet_solver.prototxt")
    solver.solve()                      # or solver.solve(resume="examples/mnist/lenet_iter_5000.solverstate")

One iteration (Solver::Step): zero the parameter diffs; test every `test_interval` iterations; forward +
backward `iter_size` times; clip, normalise, regularise, compute the update and apply it; snapshot every
`snapshot` iterations. Snapshots are `<prefix>_iter_<N>.caffemodel` (weights, loadable by Caffe, OpenCV
DNN and crema) and `<prefix>_iter_<N>.solverstate` (iteration, history, learned net, and crema's resume
data: data-layer positions and RNG states, so a resumed run repeats an uninterrupted one bit for bit).
Both are written atomically; the state records its own length and checksum, so a cut or damaged one is refused by
name (`net.snapshots`). The log (`log_csv`) is written with every snapshot, and a resumed run keeps its rows from
before the resume point. A run starts by removing the temporary files a killed one left beside its snapshots.
SIGINT (Ctrl-C) finishes the current iteration, snapshots and stops.
A NaN/inf loss stops training with `TrainingDiverged` naming the iteration and the first layer with a
non-finite output; no snapshot is written from the diverged state, so the last good one stays.

On the GPU (`Solver(..., device="gpu")`, `crema train --device gpu`): the nets run forward and backward on the
device, every learnable blob becomes a view of three flat device buffers (weights, gradients, history) and one
fused launch applies clipping (global L2 norm reduced on the device), iter_size scaling, weight decay, lr_mult /
decay_mult and the SGD or Nesterov step (kernels/cuda/optim.cu); other solver types raise GPUBackendError.
Snapshots copy weights and history to the host and write the same files as on the CPU, so either device resumes
the other's snapshots (the Dropout masks of the two devices come from different random streams).

Errors: `SolverError(ValueError)` for a bad solver definition or state file; `TrainingDiverged(RuntimeError)`;
`GPUBackendError(RuntimeError)` for device 'gpu' without CuPy or a GPU, or a net / solver type it cannot run.
"""

from __future__ import annotations

import math
import os
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from kernels import optim

from . import train_replay
from .blob import Blob
from .device import assign, check_device, host
from .memory import Budget
from .net import Net, NetError
from .progress import progress_bar
from .schema import Message
from .snapshots import (
    StateFileError,
    encode_solverstate,
    read_log,
    read_solverstate,
    remove_stale_temps,
    write_bytes_atomic,
    write_log,
)

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
WINOGRAD_TESTS = False  # test nets' convolutions on Winograd (see _build_test_nets)


class SolverError(ValueError):
    """The solver definition, a path it names, or a solverstate file is unusable."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


def learning_rate(param: Message, it: int, current_step: int = 0) -> tuple[float, int]:
    """The rate for iteration `it` (0-indexed: the first update uses it = 0) and the multistep counter.

    fixed:     base_lr
    step:      base_lr * gamma ^ floor(it / stepsize)
    exp:       base_lr * gamma ^ it
    inv:       base_lr * (1 + gamma * it) ^ (-power)
    multistep: base_lr * gamma ^ current_step, current_step += 1 (once per call) when it >= stepvalue[current_step]
    poly:      base_lr * (1 - it / max_iter) ^ power
    sigmoid:   base_lr / (1 + exp(-gamma * (it - stepsize)))
    """
    policy = param.lr_policy
    base = float(param.base_lr)
    gamma, power = float(param.gamma), float(param.power)
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        if param.stepsize <= 0:
            raise SolverError("lr_policy 'step' needs stepsize > 0")
        return base * gamma ** (it // int(param.stepsize)), current_step
    if policy == "exp":
        return base * gamma**it, current_step
    if policy == "inv":
        return base * (1.0 + gamma * it) ** (-power), current_step
    if policy == "multistep":
        steps = list(param.stepvalue)
        if current_step < len(steps) and it >= steps[current_step]:
            current_step += 1
        return base * gamma**current_step, current_step
    if policy == "poly":
        return base * (1.0 - it / float(param.max_iter)) ** power, current_step
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(-gamma * (it - int(param.stepsize))))), current_step
    raise SolverError(f"unknown lr_policy {policy!r} (known: {', '.join(POLICIES)})")


class Solver:
    """A Caffe solver over a train net and its test nets (which share the train net's weights)."""

    def __init__(
        self,
        param: Message,
        *,
        source: str = "",
        log: Callable[[str], None] | None = None,
        log_csv: str | os.PathLike | None = None,
        progress: bool = True,
        device: str = "cpu",
        memory_budget: Budget | None = None,
    ) -> None:
        self.param = param
        self.source = source
        self.device = check_device(device)
        self.memory_budget = memory_budget  # for every net it builds (net.memory; None: the default)
        self.log = log or (lambda line: print(line, flush=True))
        self._check()
        self.type = param.type or "SGD"
        seed = int(param.random_seed)
        self.seed = seed if seed >= 0 else int.from_bytes(os.urandom(4), "little")
        self.net = self._build_net("train")
        self.test_nets = self._build_test_nets()
        for t in self.test_nets:
            t.share_weights_from(self.net)
        self.learnable = self.net.learnable()
        self.history = [np.zeros_like(blob.data) for _, _, blob, _, _ in self.learnable]
        self._rates = np.zeros(len(self.learnable), np.float64)  # each blob's rate this iteration (_sgd_update)
        self._update_state = train_replay.UpdateState()
        self.history2 = (
            [np.zeros_like(blob.data) for _, _, blob, _, _ in self.learnable]
            if self.type in ("AdaDelta", "Adam")
            else []
        )
        self.flat = self._flatten_params() if self.device == "gpu" else None
        self.iter = 0
        self.current_step = 0
        self.losses: deque[float] = deque(maxlen=max(1, int(param.average_loss)))
        self.smoothed_loss = float("nan")
        self.last_snapshot: tuple[str, str] | None = None
        self.csv_path = Path(log_csv) if log_csv else None
        self.progress = progress
        self.records: list[dict] = []
        self._stop_requested = False

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> Solver:
        from .prototxt_loader import load_solver_prototxt

        return cls(load_solver_prototxt(str(path)), source=str(path), **kwargs)

    def _check(self) -> None:
        p = self.param
        where = f"{self.source}: " if self.source else ""
        if not p.has("base_lr"):
            raise SolverError(f"{where}base_lr is required")
        if not p.has("max_iter") or p.max_iter < 0:
            raise SolverError(f"{where}max_iter is required and must be >= 0")
        if not p.has("lr_policy"):
            raise SolverError(f"{where}lr_policy is required (one of {', '.join(POLICIES)})")
        if p.lr_policy not in POLICIES:
            raise SolverError(f"{where}unknown lr_policy {p.lr_policy!r} (known: {', '.join(POLICIES)})")
        if (p.type or "SGD") not in TYPES:
            raise SolverError(f"{where}unknown solver type {p.type!r} (known: {', '.join(TYPES)})")
        if p.iter_size < 1:
            raise SolverError(f"{where}iter_size must be >= 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f"{where}regularization_type must be L1 or L2, got {p.regularization_type!r}")
        if p.lr_policy == "multistep" and list(p.stepvalue) != sorted(p.stepvalue):
            raise SolverError(f"{where}stepvalue must increase")
        if p.type == "Adam" and not p.has("momentum"):
            p.momentum = 0.9

    def _resolve(self, path: str) -> str:
        """A path from the solver file: as given (relative to the working directory, as Caffe reads it),
        else relative to the solver file's folder or one of its parents."""
        if os.path.exists(path) or os.path.isabs(path):
            return path
        if self.source:
            for base in [Path(self.source).resolve().parent, *Path(self.source).resolve().parents]:
                candidate = base / path
                if candidate.exists():
                    return str(candidate)
        raise SolverError(f"{self.source or 'solver'}: net file {path!r} not found (relative to {os.getcwd()})")

    def _net_param(self, which: str) -> Message:
        from .prototxt_loader import load_net_prototxt

        p = self.param
        names = ("train_net_param", "train_net", "net_param", "net") if which == "train" else ("net_param", "net")
        fields = [f for f in names if p.has(f)]
        if not fields:
            raise SolverError(f"{self.source or 'solver'}: give the network as net (or {which}_net / net_param)")
        f = fields[0]
        value = getattr(p, f)
        if f.endswith("_param"):
            from .upgrade import upgrade_net

            return upgrade_net(value)
        return load_net_prototxt(self._resolve(value))

    def _build_net(self, phase: str) -> Net:
        state = self.param.train_state
        try:
            return Net(
                self._net_param("train"),
                phase=phase,
                level=int(state.level),
                stages=tuple(state.stage),
                seed=self.seed,
                device=self.device,
                memory_budget=self.memory_budget,
            )
        except NetError as exc:
            raise SolverError(f"train net: {exc}") from None

    def _build_test_nets(self) -> list[Net]:
        p = self.param
        specs: list[Message] = []
        from .prototxt_loader import load_net_prototxt
        from .upgrade import upgrade_net

        specs += [upgrade_net(n) for n in p.test_net_param]
        specs += [load_net_prototxt(self._resolve(n)) for n in p.test_net]
        if not specs and (p.has("net") or p.has("net_param")) and p.test_iter:
            specs.append(self._net_param("test"))
        if len(p.test_iter) != len(specs) and (specs or p.test_iter):
            raise SolverError(
                f"{self.source or 'solver'}: test_iter must be given once per test net "
                f"({len(specs)} test nets, {len(p.test_iter)} test_iter values)"
            )
        if specs and p.test_interval <= 0:
            raise SolverError(f"{self.source or 'solver'}: test nets need test_interval > 0")
        nets = []
        for i, spec in enumerate(specs):
            state = p.test_state[i] if i < len(p.test_state) else Message("NetState")
            try:
                nets.append(
                    Net(
                        spec,
                        phase="test",
                        level=int(state.level),
                        stages=tuple(state.stage),
                        seed=self.seed + 1 + i,
                        device=self.device,
                        memory_budget=self.memory_budget,
                    )
                )
            except NetError as exc:
                raise SolverError(f"test net #{i}: {exc}") from None
        # No Winograd in the test nets (WINOGRAD_TESTS): their weights change under them between tests, and on a new
        # machine its task was the longest compile of the first iteration (LeNet's solver: the test net's conv2 on
        # F(4x4, 5x5), 6.2 s of 20.3 s of compile CPU; cold first iteration 16.2 -> 10.0 s), where it made the tests
        # faster (a LeNet test pass 290 ms without it, 192 ms with it and the weight transform on the threads: 2 s
        # over a 10,000-iteration run's 21 tests). The training net keeps it off too (net.layers.convolution's
        # WINOGRAD_TRAIN); with both on, the task compiles once for both.
        for net in nets:
            for layer in net.layers:
                if hasattr(layer, "winograd"):
                    layer.winograd = WINOGRAD_TESTS
        return nets

    def _flatten_params(self):
        """GPU: move every learnable blob into flat device buffers (weights, gradients, history) as views, so one
        fused launch updates them all; the test nets share the same Blob objects and so see the views too."""
        from kernels.gpu import optim as gpu_optim

        if self.type not in ("SGD", "Nesterov"):
            raise gpu_optim.unsupported_solver(self.type)
        wd = float(self.param.weight_decay)
        flat = gpu_optim.SegmentedParams(
            [blob.shape for _, _, blob, _, _ in self.learnable],
            [lr for _, _, _, lr, _ in self.learnable],
            [wd * decay for _, _, _, _, decay in self.learnable],
        )
        for s, (_, _, blob, _, _) in enumerate(self.learnable):
            view = flat.view(flat.w, s)
            assign(view, blob.data)
            blob.data = view
            blob.diff = flat.view(flat.g, s)
        self.history = [flat.view(flat.h, s) for s in range(len(flat))]
        return flat

    # -- the loop ----------------------------------------------------------------------------
    def rate(self) -> float:
        return learning_rate(self.param, self.iter, self.current_step)[0]

    def solve(self, resume: str | os.PathLike | None = None) -> None:
        """Train to max_iter (resuming from a .solverstate if given), with tests, display and snapshots. First removes
        the temporary files a killed run left beside the snapshots (`net.snapshots.remove_stale_temps`)."""
        if self.param.snapshot_prefix:
            removed = remove_stale_temps(self.param.snapshot_prefix)
            if removed:
                self.log(f"Removed {len(removed)} temporary file(s) left by an interrupted write: {', '.join(removed)}")
        if resume is not None:
            self.restore(resume)
        self.log(f"Solving {self.net.name}")
        self.log(f"Learning Rate Policy: {self.param.lr_policy}")
        old = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            if self._stop_requested:  # second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread
            old = None
        try:
            self.step(int(self.param.max_iter) - self.iter)
            if self._stop_requested:
                self.log("Interrupted: snapshot written, stopping.")
                return
            p = self.param
            if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                self.snapshot()
            if p.display and self.iter % p.display == 0:
                loss = self.net.forward_loss()
                self.log(f"Iteration {self.iter}, loss = {loss:.6g}")
            if self.test_nets and p.test_interval and self.iter % p.test_interval == 0:
                self.test_all()
            self.log("Optimization Done.")
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            self.write_csv()

    def step(self, iters: int) -> None:
        p = self.param
        stop = self.iter + iters
        bar = progress_bar(int(p.max_iter), "training", initial=self.iter, enabled=self.progress)
        try:
            while self.iter < stop:
                if self.flat is not None:
                    self.flat.g.fill(0)  # every parameter diff at once (they are views of it)
                else:
                    self.net.clear_param_diffs()
                if (
                    self.test_nets
                    and p.test_interval > 0
                    and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)
                ):
                    bar.clear()
                    self.test_all()
                loss = 0.0
                for _ in range(int(p.iter_size)):
                    one = self.net.forward_loss()
                    if not math.isfinite(one):
                        self._diverged(one)
                    self.net.backward()
                    loss += one
                loss /= int(p.iter_size)
                self.losses.append(loss)
                self.smoothed_loss = sum(self.losses) / len(self.losses)
                rate = self.apply_update()
                if p.display and self.iter % p.display == 0:
                    bar.clear()
                    self._display(rate)
                self.iter += 1
                bar.set_postfix_str(f"loss {self.smoothed_loss:.4f}", refresh=False)
                bar.update(1)
                if p.snapshot and self.iter % p.snapshot == 0:
                    bar.clear()
                    self.snapshot()
                if self._stop_requested:
                    bar.clear()
                    if not self.last_snapshot or not self.last_snapshot[0].endswith(f"_iter_{self.iter}.caffemodel"):
                        self.snapshot()
                    return
        finally:
            bar.close()

    def _diverged(self, loss: float) -> None:
        where = self.net.first_nonfinite() or "no single layer (the loss sum overflowed)"
        last = f"; the last good snapshot is {self.last_snapshot[0]}" if self.last_snapshot else ""
        raise TrainingDiverged(
            f"iteration {self.iter}: the loss is {loss} (first non-finite value at {where}); "
            f"lower base_lr or check the data{last}"
        )

    def _display(self, rate: float) -> None:
        self.log(f"Iteration {self.iter}, loss = {self.smoothed_loss:.6g}")
        k = 0
        for blob, weight in self._outputs(self.net):
            for v in np.ravel(host(blob.data)):
                tail = f" (* {weight:g} = {weight * float(v):.6g} loss)" if weight else ""
                self.log(f"    Train net output #{k}: {blob.name} = {float(v):.6g}{tail}")
                k += 1
        self.log(f"Iteration {self.iter}, lr = {rate:.6g}")
        self.records.append({"iter": self.iter, "phase": "train", "loss": self.smoothed_loss, "lr": rate})

    @staticmethod
    def _outputs(net: Net) -> list[tuple[Blob, float]]:
        weights = {}
        for i, layer_tops in enumerate(net.tops):
            for j, t in enumerate(layer_tops):
                weights[t.name] = net.loss_weights[i][j]
        return [(net.blob(name), weights.get(name, 0.0)) for name in net.outputs]

    def test_all(self) -> list[dict[str, float]]:
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, index: int = 0) -> dict[str, float]:
        """Run test net `index` for test_iter batches; log and return the mean of every output."""
        net = self.test_nets[index]
        self.log(f"Iteration {self.iter}, Testing net (#{index})")
        n = int(self.param.test_iter[index])
        sums: dict[str, np.ndarray] = {}
        for _ in range(n):
            net.forward_loss()
            for blob, _ in self._outputs(net):
                sums[blob.name] = sums.get(blob.name, 0.0) + host(blob.data).astype(np.float64)
        means = {}
        k = 0
        for blob, weight in self._outputs(net):
            values = np.ravel(sums[blob.name] / max(n, 1))
            for v in values:
                tail = f" (* {weight:g} = {weight * float(v):.6g} loss)" if weight else ""
                self.log(f"    Test net output #{k}: {blob.name} = {float(v):.6g}{tail}")
                k += 1
            if values.size == 1:
                means[blob.name] = float(values[0])
        self.records.append({"iter": self.iter, "phase": f"test{index}", **means})
        return means

    # -- the update --------------------------------------------------------------------------
    def apply_update(self) -> float:
        """Clip, normalise, regularise and apply one update to every learnable blob; returns the rate."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if self.flat is not None:
            self._apply_update_gpu(rate)
            return rate
        if p.clip_gradients >= 0:
            norm = math.sqrt(
                sum(float(np.dot(b.diff.ravel(), b.diff.ravel())) for _, _, b, lr, _ in self.learnable if lr)
            )
            if norm > p.clip_gradients:
                factor = np.float32(p.clip_gradients / norm)
                self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:g} > {p.clip_gradients:g})")
                for _, _, b, lr, _ in self.learnable:
                    if lr:
                        b.diff *= factor
        scale = 1.0 / int(p.iter_size)
        l1 = p.regularization_type == "L1"
        kind = self.type
        if kind in ("SGD", "Nesterov"):  # regularize + update in one pass (the same bits)
            self._sgd_update(rate, scale, l1)
            return rate
        for k, (_, _, blob, lr_mult, decay_mult) in enumerate(self.learnable):
            if lr_mult == 0:
                continue
            w, g, h = blob.data.reshape(-1), blob.diff.reshape(-1), self.history[k].reshape(-1)
            local = rate * lr_mult
            optim.regularize(w, g, scale, float(p.weight_decay) * decay_mult, l1)
            if kind == "AdaGrad":
                optim.adagrad_update(w, g, h, local, float(p.delta))
            elif kind == "RMSProp":
                optim.rmsprop_update(w, g, h, local, float(p.rms_decay), float(p.delta))
            elif kind == "AdaDelta":
                optim.adadelta_update(w, g, h, self.history2[k].reshape(-1), local, float(p.momentum), float(p.delta))
            else:  # Adam
                optim.adam_update(
                    w,
                    g,
                    h,
                    self.history2[k].reshape(-1),
                    local,
                    float(p.momentum),
                    float(p.momentum2),
                    float(p.delta),
                    float(self.iter + 1),
                )
        return rate

    def _sgd_update(self, rate: float, scale: float, l1: bool) -> None:
        """SGD or Nesterov on every learnable blob: one ``optim.sgd_step`` each, its rate read from self._rates, so
        that the steady update is one recorded Program (net.train_replay.update: no Python between the blobs)."""
        p = self.param
        momentum, decay, nesterov = float(p.momentum), float(p.weight_decay), self.type == "Nesterov"
        rates = self._rates
        for k, (_, _, _, lr_mult, _) in enumerate(self.learnable):
            rates[k] = rate * lr_mult

        def python() -> None:
            for k, (_, _, blob, lr_mult, decay_mult) in enumerate(self.learnable):
                if lr_mult == 0:
                    continue
                w, g, h = blob.data.reshape(-1), blob.diff.reshape(-1), self.history[k].reshape(-1)
                optim.sgd_step(w, g, h, scale, decay * decay_mult, l1, rates[k], momentum, nesterov, rates, k)

        blobs = [blob for _, _, blob, lr_mult, _ in self.learnable if lr_mult != 0]
        key = (momentum, decay, nesterov, scale, l1, numba.get_num_threads())  # (the recorded calls' worker counts)
        train_replay.update(self._update_state, key, blobs, self.history, python)

    def _apply_update_gpu(self, rate: float) -> None:
        """The same step as the CPU path, fused into one launch (kernels/cuda/optim.cu); clipping reads the global
        gradient norm back (computed on the device) to decide and log, as the CPU path does."""
        from kernels.gpu import optim as gpu_optim

        p = self.param
        clip = np.float32(1.0)
        if p.clip_gradients >= 0:
            norm = gpu_optim.grad_norm(self.flat)
            if norm > p.clip_gradients:
                clip = np.float32(p.clip_gradients / norm)
                self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:g} > {p.clip_gradients:g})")
        gpu_optim.sgd_update_fused(
            self.flat,
            rate,
            float(p.momentum),
            scale=1.0 / int(p.iter_size),
            clip=float(clip),
            l1=p.regularization_type == "L1",
            nesterov=self.type == "Nesterov",
        )

    # -- snapshots ---------------------------------------------------------------------------
    def _prefix(self) -> str:
        prefix = self.param.snapshot_prefix
        if not prefix:
            raise SolverError("snapshot_prefix is not set")
        return prefix

    def _resume_data(self) -> dict:
        data = {"rng": {}, "layers": {}, "losses": list(self.losses)}
        for tag, net in [("train", self.net)] + [(f"test{i}", n) for i, n in enumerate(self.test_nets)]:
            data["rng"][tag] = net.rng.bit_generator.state
            for layer in net.layers:
                if hasattr(layer, "state") and callable(layer.state):
                    data["layers"][f"{tag}/{layer.name}"] = layer.state()
                if hasattr(layer, "rng") and layer.rng is not net.rng:
                    data["rng"][f"{tag}/{layer.name}"] = layer.rng.bit_generator.state
        return data

    def snapshot(self) -> tuple[str, str]:
        """Write `<prefix>_iter_<N>.caffemodel` and `.solverstate` (each atomically; the state last, with its length
        and checksum: `net.snapshots`), and the log so far, so a run killed later resumes with its history."""
        from .caffemodel import array_to_blob

        prefix = self._prefix()
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        model = f"{prefix}_iter_{self.iter}.caffemodel"
        state_path = f"{prefix}_iter_{self.iter}.solverstate"
        self.log(f"Snapshotting to binary proto file {model}")
        self.net.save(model)
        state = Message("SolverState")
        state.iter = self.iter
        state.learned_net = model
        state.current_step = self.current_step
        for h in self.history + self.history2:
            state.history.append(array_to_blob(host(h)))
        self.write_csv()  # before the state: a state on disk always has its log rows beside it
        self.log(f"Snapshotting solver state to binary proto file {state_path}")
        write_bytes_atomic(state_path, encode_solverstate(state, self._resume_data()))
        self.last_snapshot = (model, state_path)
        return self.last_snapshot

    def restore(self, path: str | os.PathLike) -> None:
        """Resume from a .solverstate: weights from its learned_net, iteration, history, data positions and random
        streams, and the log rows of the iterations before it (from `<prefix>_log.csv`). The file is checked whole
        (length, checksum, resume data) before anything is changed."""
        from .caffemodel import CaffemodelError, blob_to_array

        try:
            state, resume, note = read_solverstate(path)  # checks the resume data's shape too
        except StateFileError as exc:
            raise SolverError(str(exc)) from None
        if note:
            self.log(f"Note: {note}")
        learned = state.learned_net
        if not learned:
            raise SolverError(f"{path}: no learned_net recorded")
        if not os.path.exists(learned):
            sibling = Path(path).with_name(Path(learned).name)
            if not sibling.exists():
                raise SolverError(f"{path}: its weights file {learned} is missing")
            learned = str(sibling)
        hist = list(state.history)
        want = len(self.history) + len(self.history2)
        if len(hist) != want:
            raise SolverError(f"{path}: has {len(hist)} history blobs, this net and solver need {want}")
        arrays = []
        for k, (h, proto) in enumerate(zip(self.history + self.history2, hist)):
            try:
                arr = blob_to_array(proto, source=str(path))
            except CaffemodelError as exc:
                raise SolverError(str(exc)) from None
            if arr.size != h.size:
                raise SolverError(f"{path}: history blob {k} has {arr.size} values, expected {h.size}")
            arrays.append(arr.reshape(h.shape))
        try:
            self.net.copy_from(learned)
        except (NetError, CaffemodelError) as exc:
            raise SolverError(f"{path}: its weights file: {exc}") from None
        for h, arr in zip(self.history + self.history2, arrays):
            assign(h, arr)
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        if resume is not None:
            self._restore_streams(resume, str(path))
        if self.csv_path is not None:
            self.records = read_log(self.csv_path, before=self.iter) + self.records
        self.log(f"Resumed from {path} at iteration {self.iter}")

    def _restore_streams(self, data: dict, path: str) -> None:
        """Data-layer positions, RNG states and recent losses from a state's resume data (shape checked on reading)."""
        nets = {"train": self.net} | {f"test{i}": n for i, n in enumerate(self.test_nets)}
        for net in nets.values():  # GPU nets: no staging thread may draw from an rng being rewound
            for layer in net.layers:
                if getattr(layer, "stager", None) is not None:
                    layer.stager.drain()
        for tag, net in nets.items():
            targets = [(tag, "rng", net.rng)]
            for layer in net.layers:
                key = f"{tag}/{layer.name}"
                if key in data["layers"] and hasattr(layer, "set_state"):
                    targets.append((key, "layers", layer))
                if key in data["rng"] and hasattr(layer, "rng"):
                    targets.append((key, "rng", layer.rng))
            for key, section, target in targets:
                if key not in data[section]:
                    continue
                try:
                    if section == "layers":
                        target.set_state(data[section][key])
                    else:
                        target.bit_generator.state = data[section][key]
                except KeyError as exc:
                    raise SolverError(f"{path}: damaged: resume entry {section}[{key!r}] has no {exc} key") from None
                except (TypeError, ValueError) as exc:
                    raise SolverError(f"{path}: damaged: resume entry {section}[{key!r}] is unusable: {exc}") from None
        self.losses.extend(float(v) for v in data.get("losses", []))

    # -- logs --------------------------------------------------------------------------------
    def write_csv(self) -> None:
        """Write `records` (from before a resume point too) to the log_csv file, if one was given."""
        if self.csv_path and self.records:
            write_log(self.csv_path, self.records)
