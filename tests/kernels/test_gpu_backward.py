"""GPU training kernels (the backward launchers of kernels/gpu/*.py + kernels/cuda/*.cu, kernels/gpu/optim.py +
optim.cu) against the CPU.

Same test bodies on two runtimes (fixture `rt`): "emulator" runs the CUDA sources on the CPU (tests/kernels/cuda_emu.py:
threads of a block in reverse order; argument types, launch limits and out-of-bounds writes checked), "cuda" on a GPU
(skipped with CuPy's reason when there is none: nothing here has run on a real GPU yet). Random small shapes.
Tolerances, max abs error:
  convolution and InnerProduct dx / dw / db: <= 1e-5 * sqrt(K) * max(max|ref|, 1) against the float64 reference,
      K the longest reduction (N*OH*OW for dW, M/group*kh*kw for dX) - as tests/kernels/test_gpu.py;
  MAX pooling, ReLU, Dropout, Concat, Eltwise, Split: exact (a selection, or one rounding per element, as the CPU);
  AVE pooling, Sigmoid, TanH, Softmax: <= 1e-6 against the CPU kernel; LRN: <= 2e-6 * max(max|ref|, 1);
  SoftmaxWithLoss: loss relative 1e-6, gradient <= 1e-7 against the CPU kernel;
  fused SGD / Nesterov update: w, g, h equal to the CPU solver kernels' within 1 float32 ulp (same float64 formulas);
  gradient checks (float32 central differences through the emulated forward, h = 1e-2): relative 2e-2.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import activations, conv, elementwise, fc, gpu, lrn, optim, pool
from kernels import loss as closs
from kernels.gpu import conv as gpu_conv
from kernels.gpu import optim as gpu_optim
from tests.gradcheck import numeric_grad
from tests.kernels.cuda_emu import EmuRuntime, compiler, default_build_dir, runtime_for

RTOL = 1e-5
ATOL = 1e-6


@pytest.fixture(scope="module", params=["emulator", "cuda"])
def rt(request):
    return runtime_for(request.param)


@pytest.fixture
def dev(rt):
    with gpu.use_runtime(rt):
        yield rt


def up(a):
    return gpu.to_device(np.asarray(a))


def down(a) -> np.ndarray:
    return gpu.to_host(a)


def randn(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def assert_gemm_close(got: np.ndarray, want: np.ndarray, k: int) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = RTOL * np.sqrt(max(k, 1)) * max(float(np.abs(want).max(initial=0.0)), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= tol, f"max abs err {err:.3e} > tol {tol:.3e}"
    return err


def assert_near(got, want, atol=ATOL) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# -- convolution, InnerProduct ------------------------------------------------------------------------
CONV_CASES = [  # x shape, w shape, stride, pad, dilation, group
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 9, 9), (6, 2, 3, 3), 2, 0, 2, 2),
    ((3, 6, 5, 5), (4, 6, 1, 1), 1, 0, 1, 1),
    ((2, 2, 8, 10), (4, 2, 2, 3), (1, 2), (1, 0), 1, 1),
    ((2, 4, 12, 12), (5, 4, 5, 5), 1, 0, 1, 1),  # LeNet conv2-like
    ((1, 3, 19, 19), (4, 3, 11, 11), 4, 0, 1, 1),  # CaffeNet conv1-like
    ((2, 6, 9, 9), (6, 1, 4, 4), 2, 2, 1, 6),  # depthwise (its forward: conv2d_depthwise), EfficientNet's stride 2
]


@pytest.mark.parametrize(("xs", "ws", "stride", "pad", "dilation", "group"), CONV_CASES)
def test_conv2d_backward(dev, xs, ws, stride, pad, dilation, group) -> None:
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w = randn(rng, *xs), randn(rng, *ws)
    kw = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    y = conv.conv2d_forward(x, w, None, **kw)
    dy = randn(rng, *y.shape)
    rdx, rdw, rdb = conv.conv2d_backward_ref(dy, x, w, **kw)
    dw0, db0 = randn(rng, *ws), randn(rng, ws[0])  # accumulated into
    dx, dw, db = gpu.conv2d_backward(up(dy), up(x), up(w), dw=up(dw0), db=up(db0), **kw)
    npix = y.shape[0] * y.shape[2] * y.shape[3]
    assert_gemm_close(down(dx), rdx, ws[0] // group * ws[2] * ws[3])
    assert_gemm_close(down(dw), rdw + dw0, npix)
    assert_gemm_close(down(db), rdb + db0, npix)
    dx, dw, db = gpu.conv2d_backward(up(dy), up(x), up(w), need_dw=False, need_db=False, **kw)
    assert dw is None and db is None
    assert_gemm_close(down(dx), rdx, ws[0] // group * ws[2] * ws[3])


def test_conv2d_backward_chunks_images(dev, monkeypatch) -> None:
    """A small COL_LIMIT forces one image per chunk: the same result."""
    rng = np.random.default_rng(3)
    x, w = randn(rng, 3, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    dy = randn(rng, 3, 3, 4, 4)
    rdx, rdw, rdb = conv.conv2d_backward_ref(dy, x, w)
    monkeypatch.setattr(gpu_conv, "COL_LIMIT", 2 * 9 * 16)
    dx, dw, db = gpu.conv2d_backward(up(dy), up(x), up(w))
    assert_gemm_close(down(dx), rdx, 27)
    assert_gemm_close(down(dw), rdw, 48)
    assert_gemm_close(down(db), rdb, 48)


def test_conv2d_backward_errors(dev) -> None:
    x, w = up(np.zeros((1, 2, 5, 5), np.float32)), up(np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 3, 3, 3\)"):
        gpu.conv2d_backward(up(np.zeros((1, 3, 2, 2), np.float32)), x, w)
    with pytest.raises(ValueError, match="dw was given but need_dw is False"):
        gpu.conv2d_backward(up(np.zeros((1, 3, 3, 3), np.float32)), x, w, dw=w, need_dw=False)
    with pytest.raises(ValueError, match="expected a device array"):
        gpu.conv2d_backward(np.zeros((1, 3, 3, 3), np.float32), x, w)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 6, 4), (5, 30, 7), (40, 50, 70)])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_backward(dev, m, k, n, transpose) -> None:
    rng = np.random.default_rng(m + k + n)
    x = randn(rng, m, k)
    w = randn(rng, k, n) if transpose else randn(rng, n, k)
    dy = randn(rng, m, n)
    rdx, rdw, rdb = fc.inner_product_backward_ref(dy, x, w, transpose=transpose)
    dw0 = randn(rng, *w.shape)
    dx, dw, db = gpu.inner_product_backward(up(dy), up(x), up(w), transpose=transpose, dw=up(dw0))
    assert_gemm_close(down(dx), rdx, n)
    assert_gemm_close(down(dw), rdw + dw0, m)
    assert_gemm_close(down(db), rdb, m)
    _, dw, _ = gpu.inner_product_backward(
        up(dy), up(x), up(w), transpose=transpose, dw=up(dw0), need_dx=False, need_db=False, overwrite_dw=True
    )
    assert_gemm_close(down(dw), rdw, m)  # dw0 ignored


# -- pooling, LRN --------------------------------------------------------------------------------------
POOL_CASES = [  # shape, kernel, stride, pad, round_mode
    ((2, 3, 13, 13), 3, 2, 0, "CEIL"),
    ((1, 2, 6, 6), 3, 2, 1, "CEIL"),
    ((2, 2, 6, 7), 2, 4, 1, "FLOOR"),
    ((2, 3, 12, 10), (3, 2), (2, 1), (1, 0), "CEIL"),
    ((2, 2, 8, 8), 2, 2, 0, "CEIL"),  # LeNet
]


@pytest.mark.parametrize(("shape", "kernel", "stride", "pad", "mode"), POOL_CASES)
def test_pool2d_backward(dev, shape, kernel, stride, pad, mode) -> None:
    rng = np.random.default_rng(sum(shape))
    x = randn(rng, *shape)
    x.reshape(-1)[3::11] = x.reshape(-1)[4::11]  # ties
    kw = {"kernel": kernel, "stride": stride, "pad": pad, "round_mode": mode}
    mask = np.empty((*shape[:2], *pool.pool2d_output_shape(shape[2:], kernel, stride, pad, mode)), np.int32)
    pool.pool2d_forward(x, method="MAX", mask=mask, **kw)
    dy = randn(rng, *mask.shape)
    want = pool.pool2d_backward(dy, x, method="MAX", mask=mask, **kw)
    got = gpu.pool2d_backward(up(dy), up(x), method="MAX", mask=up(mask), **kw)
    np.testing.assert_array_equal(down(got), want)
    got = gpu.pool2d_backward(up(dy), up(x), method="MAX", **kw)  # argmax recomputed on the device
    np.testing.assert_array_equal(down(got), want)
    want = pool.pool2d_backward(dy, x.shape, method="AVE", **kw)
    assert_near(down(gpu.pool2d_backward(up(dy), x.shape, method="AVE", **kw)), want)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize(("local_size", "beta"), [(5, 0.75), (3, 1.0), (3, 0.6)])
def test_lrn_backward(dev, region, local_size, beta) -> None:
    rng = np.random.default_rng(local_size)
    x, dy = randn(rng, 2, 7, 4, 5) * 3, randn(rng, 2, 7, 4, 5)
    kw = {"local_size": local_size, "alpha": 1e-2, "beta": beta, "k": 2.0, "region": region}
    want = lrn.lrn_backward(dy, x, **kw)
    assert_near(down(gpu.lrn_backward(up(dy), up(x), **kw)), want, 2e-6 * max(float(np.abs(want).max()), 1.0))


# -- activations, softmax, loss, dropout -------------------------------------------------------------------------
def test_activation_backwards(dev) -> None:
    rng = np.random.default_rng(4)
    x, dy = randn(rng, 3, 5, 7) * 3, randn(rng, 3, 5, 7)
    x.reshape(-1)[::9] = 0.0
    for slope in (0.0, 0.1):
        got = gpu.relu_backward(up(dy), up(x), slope)
        np.testing.assert_array_equal(down(got), activations.relu_backward(dy, x, slope))
    d = up(dy)
    assert gpu.relu_backward(d, up(x), out=d) is d  # in place
    np.testing.assert_array_equal(down(d), activations.relu_backward(dy, x))
    x.reshape(-1)[1::9] = 6.0  # on the bound: inside when inclusive, outside otherwise
    for inclusive in (True, False):
        got = gpu.clip_backward(up(dy), up(x), 0.0, 6.0, inclusive=inclusive)
        np.testing.assert_array_equal(down(got), activations.clip_backward(dy, x, 0.0, 6.0, inclusive=inclusive))
    y = activations.sigmoid_forward(x)
    assert_near(down(gpu.sigmoid_backward(up(dy), up(y))), activations.sigmoid_backward(dy, y))
    y = activations.tanh_forward(x)
    assert_near(down(gpu.tanh_backward(up(dy), up(y))), activations.tanh_backward(dy, y))


@pytest.mark.parametrize(("shape", "axis"), [((3, 10), 1), ((4, 300), 1), ((2, 5, 3, 4), 1), ((2, 3, 6), -1)])
def test_softmax_backward(dev, shape, axis) -> None:
    rng = np.random.default_rng(5)
    y = activations.softmax_forward(randn(rng, *shape) * 3, axis=axis)
    dy = randn(rng, *shape)
    want = activations.softmax_backward(dy, y, axis=axis)
    assert_near(down(gpu.softmax_backward(up(dy), up(y), axis=axis)), want)
    d = up(dy)
    gpu.softmax_backward(d, up(y), axis=axis, out=d)
    assert_near(down(d), want)


@pytest.mark.parametrize("normalization", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize(("shape", "ignore"), [((6, 10), None), ((6, 10), 3), ((2, 4, 3, 2), 1)])
def test_softmax_loss(dev, normalization, shape, ignore) -> None:
    rng = np.random.default_rng(6)
    x = randn(rng, *shape) * 4
    labels = rng.integers(0, shape[1], size=(shape[0], *shape[2:])).astype(np.float32)
    kw = {"axis": 1, "ignore_label": ignore}
    loss, prob, norm = closs.softmax_loss_forward(x, labels, normalization=normalization, **kw)
    gloss, gprob, stats = gpu.softmax_loss_forward(up(x), up(labels), normalization=normalization, **kw)
    assert down(gloss).shape == ()
    assert abs(float(down(gloss)) - loss) <= 1e-6 * max(abs(loss), 1.0)
    assert float(down(stats)[1]) == norm
    assert_near(down(gprob), prob.astype(np.float32))
    want = closs.softmax_loss_backward(prob, labels, normalizer_value=norm, loss_weight=0.5, **kw)
    got = gpu.softmax_loss_backward(gprob, up(labels), normalizer_value=stats, loss_weight=0.5, **kw)
    assert_near(down(got), want, 1e-7)
    got = gpu.softmax_loss_backward(gprob, up(labels), normalizer_value=norm, loss_weight=0.5, **kw)
    assert_near(down(got), want, 1e-7)


def test_softmax_loss_rejects_bad_labels(dev) -> None:
    with pytest.raises(ValueError, match=r"1 label\(s\) out of range for 3 classes"):
        gpu.softmax_loss_forward(up(np.zeros((2, 3), np.float32)), up(np.array([0, 3], np.float32)))


def test_dropout(dev) -> None:
    rng = np.random.default_rng(7)
    x = randn(rng, 4, 50, 25)
    y, mask = gpu.dropout_forward(up(x), 0.3, train=True, rng=np.random.default_rng(1))
    m = down(mask).astype(bool)
    assert abs(m.mean() - 0.7) < 0.02  # 5000 draws: 4.9 sigma
    np.testing.assert_array_equal(down(y), activations.dropout_forward_ref(x, 0.3, m))
    _, mask2 = gpu.dropout_forward(up(x), 0.3, train=True, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(down(mask2), down(mask))  # the seed comes from rng: reproducible
    dy = randn(rng, *x.shape)
    want = activations.dropout_backward(dy, 0.3, m)
    np.testing.assert_array_equal(down(gpu.dropout_backward(up(dy), 0.3, mask)), want)
    np.testing.assert_array_equal(down(gpu.dropout_backward(up(dy), 0.3)), dy)
    t, none = gpu.dropout_forward(up(x), 0.3)
    assert none is None
    np.testing.assert_array_equal(down(t), x)


# -- Concat, Eltwise, Split ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_backward(dev, axis) -> None:
    rng = np.random.default_rng(8)
    shape = [2, 3, 4]
    sizes = [1, 5, 0]
    shape[axis] = sum(sizes)
    dy = randn(rng, *shape)
    want = elementwise.concat_backward(dy, sizes, axis, propagate_down=[True, False, True])
    got = gpu.concat_backward(up(dy), sizes, axis, propagate_down=[True, False, True])
    assert got[1] is None
    for g, w in zip(got, want):
        if w is not None:
            np.testing.assert_array_equal(down(g), w)


@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX"])
def test_eltwise_and_split_backward(dev, operation) -> None:
    rng = np.random.default_rng(9)
    xs = [randn(rng, 2, 3, 5) for _ in range(3)]
    xs[1].reshape(-1)[::3] = xs[0].reshape(-1)[::3]
    dy = randn(rng, 2, 3, 5)
    coeffs = [0.5, -2.0, 3.0] if operation == "SUM" else None
    mask = None
    if operation == "MAX":
        mask = np.empty(dy.shape, np.int32)
        elementwise.eltwise_forward(xs, "MAX", mask=mask)
    want = elementwise.eltwise_backward(dy, xs, operation, coeffs, mask=mask)
    dmask = None if mask is None else up(mask)
    got = gpu.eltwise_backward(up(dy), [up(x) for x in xs], operation, coeffs, mask=dmask)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(down(g), w)
    np.testing.assert_array_equal(down(gpu.split_backward([up(x) for x in xs])), elementwise.split_backward(xs))
    d0 = up(xs[0])
    assert gpu.split_backward([d0, up(xs[1])], out=d0) is d0
    np.testing.assert_array_equal(down(d0), elementwise.split_backward(xs[:2]))


# -- fused solver update ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("l1", [False, True])
def test_fused_sgd_matches_the_cpu_solver_kernels(dev, nesterov, l1) -> None:
    rng = np.random.default_rng(10)
    shapes = [(5, 3), (7,), (1,), (130,)]
    lr_mult, decay_mult, wd = [1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.5], 5e-4
    params = gpu_optim.SegmentedParams(shapes, lr_mult, [wd * d for d in decay_mult])
    ws = [randn(rng, *s) for s in shapes]
    gs = [randn(rng, *s) for s in shapes]
    hs = [randn(rng, *s) * 0.1 for s in shapes]
    for s in range(len(shapes)):
        params.view(params.w, s)[...] = up(ws[s])
        params.view(params.g, s)[...] = up(gs[s])
        params.view(params.h, s)[...] = up(hs[s])
    norm = gpu_optim.grad_norm(params)
    want_norm = np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g, lr in zip(gs, lr_mult) if lr))
    assert abs(norm - want_norm) <= 1e-6 * want_norm
    clip = np.float32(0.5)
    rate, momentum, scale = 0.01, 0.9, 0.5
    gpu_optim.sgd_update_fused(params, rate, momentum, scale=scale, clip=float(clip), l1=l1, nesterov=nesterov)
    update = optim.nesterov_update if nesterov else optim.sgd_update
    for s in range(len(shapes)):
        w, g, h = ws[s].ravel().copy(), gs[s].ravel().copy(), hs[s].ravel().copy()
        if lr_mult[s]:
            g *= clip
            optim.regularize(w, g, scale, wd * decay_mult[s], l1)
            update(w, g, h, rate * lr_mult[s], momentum)
        for buf, want in ((params.w, w), (params.g, g), (params.h, h)):
            got = down(params.view(buf, s)).ravel()
            np.testing.assert_array_max_ulp(got, want, maxulp=1)
    gaps = down(params.w)
    for s in range(len(shapes)):
        gaps[params.starts[s] : params.starts[s] + params.sizes[s]] = 0
    assert not gaps.any()  # the alignment gaps stay zero


# -- gradient checks through the emulated forward ------------------------------------------------------------------
def _close(a: np.ndarray, n: np.ndarray, tol: float = 2e-2) -> None:
    scale = max(float(np.abs(a).max()), float(np.abs(n).max()), 1.0)
    err = float(np.abs(a - n).max())
    assert err <= tol * scale, f"analytic vs numeric max err {err:.3e} > {tol * scale:.3e}"


def test_gradient_check_conv_pool_lrn_ip_loss(dev) -> None:
    """loss = SoftmaxWithLoss(IP(LRN(AVE-pool(ReLU(conv(x)))))) on the device; the device backward of x and of the
    conv weight against float32 central differences of the device forward."""
    rng = np.random.default_rng(11)
    x, w = randn(rng, 2, 2, 6, 6), randn(rng, 3, 2, 3, 3) * 0.5
    b, wi = randn(rng, 3) * 0.1, randn(rng, 4, 3 * 2 * 2) * 0.5
    labels = np.array([1, 3], np.float32)
    lrn_kw = {"local_size": 3, "alpha": 0.5, "beta": 0.75, "k": 1.0}
    pool_kw = {"method": "AVE", "kernel": 2, "stride": 2}

    def forward(xh: np.ndarray, wh: np.ndarray):
        y1 = gpu.conv2d_forward(up(xh), up(wh), up(b), relu=True)
        y2 = gpu.pool2d_forward(y1, **pool_kw)
        y3 = gpu.lrn_forward(y2, **lrn_kw)
        y4 = gpu.inner_product_forward(y3, up(wi), None)
        loss, prob, stats = gpu.softmax_loss_forward(y4, up(labels))
        return (y1, y2, y3, y4, prob, stats), float(down(loss))

    (y1, y2, y3, _, prob, stats), _ = forward(x, w)
    d4 = gpu.softmax_loss_backward(prob, up(labels), normalizer_value=stats)
    d3, _, _ = gpu.inner_product_backward(d4, y3, up(wi), need_dw=False, need_db=False)
    d2 = gpu.lrn_backward(d3, y2, **lrn_kw)
    d1 = gpu.pool2d_backward(d2, y1.shape, **pool_kw)
    d1 = gpu.relu_backward(d1, y1)
    dx, dw, _ = gpu.conv2d_backward(d1, up(x), up(w), need_db=False)
    _close(down(dx), numeric_grad(lambda v: forward(v, w)[1], x.copy(), 1e-2))  # float32 steps, float64 quotients
    _close(down(dw), numeric_grad(lambda v: forward(x, v)[1], w.copy(), 1e-2))


def test_bench_gpu_train_exits_cleanly_without_a_gpu(monkeypatch, capsys) -> None:
    import sys

    from benchmarks import bench_gpu_train
    from kernels.gpu import backend as gr

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gr, "_active", None)
    monkeypatch.setenv("CUPY_TF32", "0")
    assert bench_gpu_train.main(["--only", "conv"]) == 2
    assert "bench_gpu_train: no GPU to benchmark on: the GPU backend needs CuPy" in capsys.readouterr().err


def test_barrier_kernels_in_every_thread_order() -> None:
    """The kernels with __syncthreads (softmax_backward_rows, softmax_loss, channel_sum, sumsq_segments,
    sum_partials) in forward and shuffled thread order too (the fixture runs them reversed): a missing barrier
    gives a wrong answer in some order."""
    if compiler() is None:
        pytest.skip("g++ not found: the CUDA emulator cannot be built")
    rng = np.random.default_rng(12)
    y = activations.softmax_forward(randn(rng, 3, 70))
    dy, x = randn(rng, 3, 70), randn(rng, 3, 70) * 3
    labels = np.array([1, 5, 69], np.float32)
    loss, _, _ = closs.softmax_loss_forward(x, labels)
    dyc, xc, wc = randn(rng, 2, 5, 3, 3), randn(rng, 2, 2, 5, 5), randn(rng, 5, 2, 3, 3)
    for order in (0, 2):
        with gpu.use_runtime(EmuRuntime(default_build_dir(), order=order)):
            assert_near(down(gpu.softmax_backward(up(dy), up(y))), activations.softmax_backward(dy, y))
            gloss, _, _ = gpu.softmax_loss_forward(up(x), up(labels))
            assert abs(float(down(gloss)) - loss) <= 1e-6 * loss
            _, _, db = gpu.conv2d_backward(up(dyc), up(xc), up(wc), need_dx=False, need_dw=False)
            assert_gemm_close(down(db), dyc.astype(np.float64).sum(axis=(0, 2, 3)), 18)
            params = gpu_optim.SegmentedParams([(300,), (7,)], [1.0, 1.0], [0.0, 0.0])
            params.g[...] = up(np.ones(params.total, np.float32))
            assert abs(gpu_optim.grad_norm(params) - np.sqrt(params.total)) < 1e-9
