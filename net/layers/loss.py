"""Loss and metric layers: SoftmaxWithLoss, EuclideanLoss, Accuracy (caffe_facts §4.8-4.9).

Loss layers put their loss weight 1 on top 0 unless the prototxt gives `loss_weight` (the Net reads
`default_loss_weight`). Their backward scales the gradient by the top's diff, which the Net sets to
the loss weight, as Caffe does.
"""

from __future__ import annotations

import numpy as np

from kernels import loss as K

from ..blob import Blob
from ..device import host, kernels_for, on_device
from .base import Layer, diff_out, register


def _ignore_label(param) -> int | None:
    return int(param.ignore_label) if param.has("ignore_label") else None


def _normalization(param) -> str:
    if param.has("normalization"):
        return str(param.normalization)
    if param.has("normalize"):
        return "VALID" if param.normalize else "BATCH_SIZE"
    return "VALID"


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    num_bottom = 2
    num_top = (1, 2)
    default_loss_weight = 1.0

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.axis = int(self.param.softmax_param.axis)
        self.ignore_label = _ignore_label(self.param.loss_param)
        self.normalization = _normalization(self.param.loss_param)
        K.normalizer(self.normalization, 1, 1, 1)  # validates the mode

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        axis = self.axis + len(shape) if self.axis < 0 else self.axis
        if not 0 <= axis < len(shape):
            raise self.error(f"softmax axis {self.axis} out of range for scores of shape {shape}")
        positions = int(np.prod(shape[:axis], dtype=np.int64) * np.prod(shape[axis + 1 :], dtype=np.int64))
        if bottom[1].count != positions:
            raise self.error(
                f"label count ({bottom[1].count}, shape {bottom[1].shape}) must equal the number of predictions "
                f"({positions}) for scores of shape {shape} with axis {self.axis}"
            )
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(shape)

    runner = None  # kernels.loss.SoftmaxLossRunner of the last CPU forward

    def _cpu_runner(self, x, labels, out) -> K.SoftmaxLossRunner | None:
        """The tasks' runner where the forward can take it: float32 C-contiguous scores and labels on the CPU, the loss
        top an array of one float32 of its own (the runner writes it in place: the top keeps its array,
        net.train_replay)."""
        for a in (x, labels):
            if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous and a.size):
                return None
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.size == 1 and out.flags.writeable):
            return None
        run = self.runner
        if run is None or run.shape != x.shape:
            run = K.SoftmaxLossRunner(x.shape, self.axis, self.ignore_label, self.normalization)
        return run

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """On the GPU the loss stays a device scalar and the normaliser is kept on the device for the backward. On the
        CPU two tasks (kernels.loss.SoftmaxLossRunner), which a replayed training pass records."""
        x, labels, out = bottom[0].data, bottom[1].data, top[0].data
        run = self._cpu_runner(x, labels, out)
        self.runner = run
        if run is not None:
            try:
                self.prob = run.forward(x, labels, out.reshape(1))
            except ValueError as exc:
                raise self.error(str(exc)) from None
            self.norm = None  # the runner's (its backward reads it from the runner's array)
            if len(top) > 1:
                top[1].data = self.prob
            return
        try:
            loss, self.prob, self.norm = kernels_for(bottom[0].data).softmax_loss_forward(
                bottom[0].data,
                bottom[1].data,
                axis=self.axis,
                ignore_label=self.ignore_label,
                normalization=self.normalization,
            )
        except ValueError as exc:
            raise self.error(str(exc)) from None
        out = top[0].data
        if on_device(loss):
            top[0].data = loss
        elif isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float32 and out.flags.writeable:
            out[...] = loss  # in place: the top keeps its array (net.train_replay's guards)
        else:
            top[0].data = np.array(loss, dtype=np.float32)
        if len(top) > 1:
            top[1].data = self.prob

    def replay_raise(self) -> None:
        """After a replayed forward (net.train_replay), the error the forward raises for a label out of range."""
        if self.runner is not None:
            try:
                self.runner.check()
            except ValueError as exc:
                raise self.error(str(exc)) from None

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the labels")
        if propagate_down[0]:
            run, weight = self.runner, top[0].diff
            if run is not None and isinstance(weight, np.ndarray) and weight.dtype == np.float32 and weight.size == 1:
                run.backward(weight.reshape(1), diff_out(bottom[0]))
                return
            dx = bottom[0].diff
            bottom[0].diff = kernels_for(self.prob).softmax_loss_backward(
                self.prob,
                bottom[1].data,
                axis=self.axis,
                ignore_label=self.ignore_label,
                normalizer_value=self.norm if run is None else float(run.norm[0]),
                loss_weight=float(host(top[0].diff).reshape(-1)[0]),
                dx=dx if dx.flags.c_contiguous and dx.dtype == np.float32 else None,
            )


@register("EuclideanLoss")
class EuclideanLossLayer(Layer):
    num_bottom = 2
    num_top = 1
    default_loss_weight = 1.0

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        a, b = bottom[0].shape, bottom[1].shape
        if not a or not b or a[0] != b[0] or bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same shape (count per item), got {a} and {b}")
        top[0].reshape(())

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        loss, self.diff = K.euclidean_loss_forward(bottom[0].data, bottom[1].data)
        top[0].data = np.array(loss, dtype=np.float32)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        weight = float(top[0].diff.reshape(-1)[0])
        n = bottom[0].shape[0]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if i < len(propagate_down) and propagate_down[i]:
                bottom[i].diff = K.euclidean_loss_backward(self.diff, n, weight, sign).reshape(bottom[i].shape)


@register("Accuracy")
class AccuracyLayer(Layer):
    gpu_forward = True
    num_bottom = 2
    num_top = (1, 2)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.axis = int(p.axis)
        self.ignore_label = _ignore_label(p)
        if self.top_k < 1:
            raise self.error(f"top_k must be >= 1, got {self.top_k}")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        axis = self.axis + len(shape) if self.axis < 0 else self.axis
        if not 0 <= axis < len(shape):
            raise self.error(f"axis {self.axis} out of range for scores of shape {shape}")
        if self.top_k > shape[axis]:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({shape[axis]})")
        positions = int(np.prod(shape[:axis], dtype=np.int64) * np.prod(shape[axis + 1 :], dtype=np.int64))
        if bottom[1].count != positions:
            raise self.error(
                f"label count ({bottom[1].count}) must equal the number of predictions ({positions}) "
                f"for scores of shape {shape}"
            )
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((shape[axis],))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        try:  # on the host also in GPU nets: the scores and labels are small
            acc, per_class = K.accuracy_forward(
                host(bottom[0].data),
                host(bottom[1].data),
                axis=self.axis,
                top_k=self.top_k,
                ignore_label=self.ignore_label,
            )
        except ValueError as exc:
            raise self.error(str(exc)) from None
        top[0].data = np.array(acc, dtype=np.float32)
        if len(top) > 1:
            top[1].data = per_class

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if any(propagate_down):
            raise self.error("Accuracy has no backward")
