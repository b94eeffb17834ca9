"""Loss kernels against their float64 NumPy references, and the references against central differences.

Tolerances: compiled float32 vs float64 reference, loss within 1e-5 relative, gradients within 1e-6 absolute
(probabilities are <= 1); reference gradient vs central differences (h = 1e-6, float64) within
1e-7 + 1e-6 * max(|a|, |n|, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import loss as K
from tests.gradcheck import assert_grad_close, numeric_grad


def _close(a, n, atol=1e-7, rtol=1e-6):
    assert_grad_close(a, n, atol=atol, rtol=rtol)


@pytest.mark.parametrize(
    ("shape", "axis", "ignore", "norm"),
    [
        ((6, 10), 1, None, "VALID"),
        ((3, 4, 2, 5), 1, None, "FULL"),
        ((3, 4, 2, 5), 1, 2, "VALID"),
        ((4, 7), 1, 3, "BATCH_SIZE"),
        ((2, 3, 5), 2, None, "NONE"),
    ],
)
def test_softmax_loss_matches_reference_and_gradient(shape, axis, ignore, norm):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, size=shape).astype(np.float32)
    c = shape[axis]
    positions = int(np.prod(shape)) // c
    labels = rng.integers(0, c, size=positions).astype(np.float32)
    loss, prob, normalizer = K.softmax_loss_forward(x, labels, axis=axis, ignore_label=ignore, normalization=norm)
    ref_loss, ref_prob = K.softmax_loss_ref(x, labels, axis=axis, ignore_label=ignore, normalization=norm)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert np.max(np.abs(prob - ref_prob)) <= 1e-6
    g = K.softmax_loss_backward(
        prob, labels, axis=axis, ignore_label=ignore, normalizer_value=normalizer, loss_weight=0.7
    )
    ref_g = K.softmax_loss_backward_ref(
        ref_prob, labels, axis=axis, ignore_label=ignore, normalization=norm, loss_weight=0.7
    )
    assert np.max(np.abs(g - ref_g)) <= 1e-6
    x64 = x.astype(np.float64)
    num = numeric_grad(
        lambda v: 0.7 * K.softmax_loss_ref(v, labels, axis=axis, ignore_label=ignore, normalization=norm)[0], x64
    )
    _close(ref_g, num)


@pytest.mark.parametrize(
    ("shape", "axis", "ignore", "norm"),
    [((64, 10), 1, None, "VALID"), ((3, 4, 2, 5), 1, 2, "VALID"), ((4, 7), 1, 3, "BATCH_SIZE"),
     ((3, 4, 2, 5), 1, None, "FULL"), ((2, 3, 5), 2, None, "NONE")],
)  # fmt: skip
def test_softmax_loss_runner_has_the_functions_bits(shape, axis, ignore, norm):
    """SoftmaxLossRunner (the tasks a replayed training pass records): loss, prob and gradient with the bits of
    softmax_loss_forward / softmax_loss_backward, labels given as floats (2.7 truncates to 2, as NumPy's cast)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, size=shape).astype(np.float32)
    c = shape[axis]
    labels = (rng.integers(0, c, size=int(np.prod(shape)) // c) + 0.7).astype(np.float32)
    loss, prob, normalizer = K.softmax_loss_forward(x, labels, axis=axis, ignore_label=ignore, normalization=norm)
    g = K.softmax_loss_backward(prob, labels, axis=axis, ignore_label=ignore, normalizer_value=normalizer,
                                loss_weight=0.7)  # fmt: skip
    run = K.SoftmaxLossRunner(shape, axis, ignore, norm)
    out = np.zeros(1, np.float32)
    got_prob = run.forward(x, labels, out)
    assert out[0] == np.float32(loss) and run.norm[0] == normalizer
    np.testing.assert_array_equal(got_prob.view(np.uint32), prob.view(np.uint32))
    dx = np.full(shape, np.nan, np.float32)
    run.backward(np.array([0.7], np.float32), dx)
    want = K.softmax_loss_backward(prob, labels, axis=axis, ignore_label=ignore, normalizer_value=normalizer,
                                   loss_weight=float(np.float32(0.7)))  # fmt: skip
    np.testing.assert_array_equal(dx.view(np.uint32), want.view(np.uint32))
    assert np.max(np.abs(dx - g)) <= 1e-6


def test_softmax_loss_runner_refuses_labels_out_of_range():
    run = K.SoftmaxLossRunner((4, 3), 1, None, "VALID")
    out = np.zeros(1, np.float32)
    for bad, shown in ((3.0, 3), (-1.5, -1), (np.nan, -(2**63))):
        with pytest.raises(ValueError, match=f"label {shown} out of range for 3 classes"):
            run.forward(np.zeros((4, 3), np.float32), np.array([0, 1, bad, 2], np.float32), out)
        assert np.isnan(out[0])
    with pytest.raises(ValueError, match="label count"):
        run.forward(np.zeros((4, 3), np.float32), np.zeros(3, np.float32), out)
    ignoring = K.SoftmaxLossRunner((4, 3), 1, 7, "VALID")
    ignoring.forward(np.zeros((4, 3), np.float32), np.array([0, 7, 7, 2], np.float32), out)
    assert out[0] == np.float32(np.log(3.0))


def test_softmax_loss_clamps_log_of_zero():
    x = np.array([[0.0, 200.0]], dtype=np.float32)
    loss, _, _ = K.softmax_loss_forward(x, np.array([0.0]))
    assert loss == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)


def test_softmax_loss_errors():
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="label count"):
        K.softmax_loss_forward(x, np.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        K.softmax_loss_forward(x, np.array([0, 1, 2, 3.0]))
    with pytest.raises(ValueError, match="normalization"):
        K.softmax_loss_forward(x, np.zeros(4), normalization="MEAN")


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_accuracy_matches_reference_with_ties(top_k):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(50, 6)).astype(np.float32)  # many ties: they count against the sample
    labels = rng.integers(0, 6, size=50).astype(np.float32)
    acc, per_class = K.accuracy_forward(x, labels, top_k=top_k, ignore_label=5)
    ref, ref_per_class = K.accuracy_ref(x, labels, top_k=top_k, ignore_label=5)
    assert acc == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(per_class, ref_per_class, atol=1e-7)


def test_accuracy_tie_counts_against():
    x = np.array([[1.0, 1.0, 0.0]], dtype=np.float32)
    assert K.accuracy_forward(x, np.array([0.0]))[0] == 0.0
    assert K.accuracy_forward(x, np.array([0.0]), top_k=2)[0] == 1.0


def test_euclidean_loss_and_gradient():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 3, 2)).astype(np.float32)
    b = rng.normal(size=(5, 6)).astype(np.float32)
    loss, diff = K.euclidean_loss_forward(a, b)
    assert loss == pytest.approx(K.euclidean_loss_ref(a, b.reshape(a.shape)), rel=1e-6)
    g = K.euclidean_loss_backward(diff, 5, 2.0, 1.0).reshape(a.shape)
    num = numeric_grad(
        lambda v: 2.0 * K.euclidean_loss_ref(v, b.reshape(a.shape).astype(np.float64)), a.astype(np.float64)
    )
    _close(g, num, atol=1e-5, rtol=1e-5)
