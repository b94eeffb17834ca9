"""Solver updates against hand-computed ones (caffe_facts §6), per lr policy, momentum, weight decay, clipping,
iter_size and the adaptive solvers. Gradients are set by hand, so these tests exercise only the solver.

Tolerance: float32 weights against float64 hand computation, 1e-6 relative + 1e-7 absolute."""

from __future__ import annotations

import math

import numpy as np
import pytest

from net.prototxt_loader import parse_text
from net.solver import Solver, SolverError, learning_rate

NET = """
net_param {
  name: "tiny"
  layer { name: "data" type: "Input" top: "data" top: "target"
          input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                                bias_filler { type: "constant" value: 0.25 } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
}
random_seed: 7
"""


def _solver(extra: str) -> Solver:
    return Solver(parse_text(NET + extra, "SolverParameter"), progress=False, log=lambda line: None)


def _close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.abs(a - b) <= 1e-7 + 1e-6 * np.abs(b)), np.max(np.abs(a - b))


def _set_grads(solver: Solver, grads: list[np.ndarray]) -> None:
    for (_, _, blob, _, _), g in zip(solver.learnable, grads):
        blob.diff[...] = g


@pytest.mark.parametrize(
    ("policy", "extra", "formula"),
    [
        ("fixed", "", lambda it: 0.1),
        ("step", "gamma: 0.5 stepsize: 3", lambda it: 0.1 * 0.5 ** (it // 3)),
        ("exp", "gamma: 0.9", lambda it: 0.1 * 0.9**it),
        ("inv", "gamma: 0.0001 power: 0.75", lambda it: 0.1 * (1 + 0.0001 * it) ** -0.75),
        ("poly", "power: 2 max_iter: 10", lambda it: 0.1 * (1 - it / 10) ** 2),
        ("sigmoid", "gamma: -0.5 stepsize: 4", lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
    ],
)
def test_lr_policies(policy, extra, formula):
    param = parse_text(f'base_lr: 0.1 lr_policy: "{policy}" {extra}', "SolverParameter")
    for it in range(10):
        assert learning_rate(param, it)[0] == pytest.approx(formula(it), rel=1e-6)


def test_multistep_advances_once_per_iteration():
    param = parse_text('base_lr: 1 lr_policy: "multistep" gamma: 0.1 stepvalue: 2 stepvalue: 4', "SolverParameter")
    step, rates = 0, []
    for it in range(6):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_sgd_momentum_weight_decay_and_lr_mult_by_hand():
    s = _solver('base_lr: 0.1 lr_policy: "inv" gamma: 0.01 power: 0.75 momentum: 0.9 weight_decay: 0.005 max_iter: 5')
    w0 = [blob.data.astype(np.float64).copy() for _, _, blob, _, _ in s.learnable]
    hist = [np.zeros_like(w) for w in w0]
    rng = np.random.default_rng(3)
    w = [x.copy() for x in w0]
    for it in range(3):
        grads = [rng.normal(size=x.shape) for x in w]
        _set_grads(s, grads)
        s.iter = it
        s.apply_update()
        rate = 0.1 * (1 + 0.01 * it) ** -0.75
        for k, (lr_mult, decay_mult) in enumerate([(1, 1), (2, 0)]):
            g = grads[k].astype(np.float32).astype(np.float64) + 0.005 * decay_mult * w[k]
            hist[k] = 0.9 * hist[k] + rate * lr_mult * g
            w[k] = w[k] - hist[k]
        for k, (_, _, blob, _, _) in enumerate(s.learnable):
            _close(blob.data, w[k])
            _close(s.history[k], hist[k])


def test_iter_size_clip_and_l1():
    s = _solver(
        'base_lr: 0.5 lr_policy: "fixed" weight_decay: 0.1 regularization_type: "L1" iter_size: 2 '
        "clip_gradients: 1.0 max_iter: 1"
    )
    w = [blob.data.astype(np.float64).copy() for _, _, blob, _, _ in s.learnable]
    grads = [np.full(x.shape, 3.0) for x in w]
    _set_grads(s, grads)
    s.apply_update()
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    for k, ((_, _, blob, _, _), (lr_mult, decay_mult)) in enumerate(zip(s.learnable, [(1, 1), (2, 0)])):
        g = grads[k] * (1.0 / norm) / 2 + 0.1 * decay_mult * np.sign(w[k])
        _close(blob.data, w[k] - 0.5 * lr_mult * g)


@pytest.mark.parametrize("kind", ["Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_adaptive_solvers_by_hand(kind):
    s = _solver(f'type: "{kind}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 delta: 1e-6 max_iter: 3')
    w = [blob.data.astype(np.float64).copy() for _, _, blob, _, _ in s.learnable]
    h = [np.zeros_like(x) for x in w]
    h2 = [np.zeros_like(x) for x in w]
    rng = np.random.default_rng(4)
    for it in range(3):
        grads = [rng.normal(size=x.shape).astype(np.float32).astype(np.float64) for x in w]
        _set_grads(s, grads)
        s.iter = it
        s.apply_update()
        for k, lr_mult in enumerate([1, 2]):
            g, rate = grads[k], 0.01 * lr_mult
            if kind == "Nesterov":
                old = h[k].copy()
                h[k] = 0.9 * h[k] + rate * g
                step = 1.9 * h[k] - 0.9 * old
            elif kind == "AdaGrad":
                h[k] = h[k] + g * g
                step = rate * g / (np.sqrt(h[k]) + 1e-6)
            elif kind == "RMSProp":
                h[k] = 0.99 * h[k] + 0.01 * g * g
                step = rate * g / (np.sqrt(h[k]) + 1e-6)
            elif kind == "AdaDelta":
                h[k] = 0.9 * h[k] + 0.1 * g * g
                u = g * np.sqrt(h2[k] + 1e-6) / np.sqrt(h[k] + 1e-6)
                h2[k] = 0.9 * h2[k] + 0.1 * u * u
                step = rate * u
            else:
                h[k] = 0.9 * h[k] + 0.1 * g
                h2[k] = 0.999 * h2[k] + 0.001 * g * g
                t = it + 1
                step = rate * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * h[k] / (np.sqrt(h2[k]) + 1e-6)
            w[k] = w[k] - step
        for k, (_, _, blob, _, _) in enumerate(s.learnable):
            _close(blob.data, w[k])


def test_solver_errors():
    with pytest.raises(SolverError, match="lr_policy"):
        _solver('base_lr: 0.1 lr_policy: "cosine" max_iter: 1')
    with pytest.raises(SolverError, match="base_lr"):
        _solver('lr_policy: "fixed" max_iter: 1')
    with pytest.raises(SolverError, match="solver type"):
        _solver('type: "LBFGS" base_lr: 0.1 lr_policy: "fixed" max_iter: 1')


def test_progress_bar_on_a_terminal(tty_stderr):
    """The training bar (net.progress, tqdm) counts iterations up to max_iter and shows the smoothed loss; the
    log lines are printed between its redraws."""
    lines = []
    param = parse_text(NET + 'base_lr: 0.01 lr_policy: "fixed" max_iter: 6 display: 3', "SolverParameter")
    solver = Solver(param, log=lines.append)
    solver.step(6)
    last = tty_stderr.readouterr().err.rsplit("\r", 1)[-1]
    assert last.startswith("training: 100%") and "6/6" in last and f"loss {solver.smoothed_loss:.4f}" in last
    assert any(line.startswith("Iteration 3") for line in lines)


CONV_NET = """
net_param {
  name: "conv5x5"
  layer { name: "data" type: "Input" top: "data" top: "target"
          input_param { shape { dim: 100 dim: 20 dim: 12 dim: 12 } shape { dim: 100 dim: 50 dim: 8 dim: 8 } } }
  layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "target" top: "loss" }
}
base_lr: 0.01 lr_policy: "fixed" max_iter: 10 test_iter: 1 test_interval: 10
"""


def test_test_nets_and_training_net_run_winograd_on_the_current_weights_when_asked(monkeypatch):
    """A solver's test nets and training net keep their convolutions off Winograd by default (WINOGRAD_TESTS,
    WINOGRAD_TRAIN: its compile would join a new machine's first iteration), though a deploy net of the same shapes
    (LeNet's conv2 at the test batch) takes F(4x4, 5x5); with both switches on they take it and follow the weights the
    solver changes in place: after steps, the test net's convolution is within F(4x4, 5x5)'s bound of the float64
    convolution of the weights then."""
    from kernels.conv import conv2d_forward_ref
    from net import solver as solver_module
    from net.layers import convolution

    off = Solver(parse_text(CONV_NET, "SolverParameter"), progress=False, log=lambda line: None)
    shapes = (off.test_nets[0].blob("data").shape, off.net.params["conv"][0].shape)
    for net in (off.test_nets[0], off.net):
        conv = next(layer for layer in net.layers if layer.name == "conv")
        assert not conv.uses_winograd(*shapes)
    probe = next(layer for layer in off.test_nets[0].layers if layer.name == "conv")
    probe.winograd = True  # the rule alone (a TEST-phase layer of these shapes) would take it
    assert probe.uses_winograd(*shapes)
    monkeypatch.setattr(solver_module, "WINOGRAD_TESTS", True)
    monkeypatch.setattr(convolution, "WINOGRAD_TRAIN", True)
    solver = Solver(parse_text(CONV_NET, "SolverParameter"), progress=False, log=lambda line: None)
    (test_net,) = solver.test_nets
    conv = next(layer for layer in test_net.layers if layer.name == "conv")
    trained = next(layer for layer in solver.net.layers if layer.name == "conv")
    shapes = (test_net.blob("data").shape, conv.blobs[0].shape)
    assert conv.uses_winograd(*shapes) and trained.uses_winograd(*shapes)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shapes[0], dtype=np.float32)
    for _ in range(2):
        solver.net.set_input("data", x)
        solver.net.set_input("target", rng.standard_normal((100, 50, 8, 8), dtype=np.float32))
        solver.step(3)
        test_net.set_input("data", x)
        test_net.forward_loss()
        w, b = solver.net.params["conv"]
        want = conv2d_forward_ref(x, w, b, dtype=np.float64)
        bound = conv2d_forward_ref(np.abs(x), np.abs(w), np.abs(b), dtype=np.float64)
        assert np.all(np.abs(test_net.blob("conv").data - want) <= 2e-5 * bound + 1e-7)
