"""2-D max and average pooling with Caffe's exact semantics (NCHW, float32): forward and backward.

Kernels, in the order they appear:
  0. `pool2d_forward_ref`, `pool2d_backward_ref`  NumPy references (one vectorised (N, C) step per output position;
                            the backward in float64).
  1. For the outputs whose window lies wholly inside the image, the window size and stride compile-time constants
                            (one cached compilation per entry of SPECIALISED), so the window loops unroll:
                            `_interior_worker(kh, kw, sh, sw, method)`, AVE, a task per window (kernels.tasks:
                            _AVE_INTERIOR_2222, ...; a plan of tasks only runs on kernels.taskpool's threads); MAX,
                            with or without the argmax (training), `_vector_max_worker` (VECTOR_MAX): `_max_run`'s
                            LLVM IR, VW outputs of a row a vector (stride 2: the even lanes of two loads), masked at
                            the row's end, AVX-512 only; the scalar loops' values and argmax, bit for bit (tested).
                            One thread, against those loops: CaffeNet's pool1 110 -> 45 us, LeNet's pool1 with the
                            argmax 190 -> 102 us, GoogLeNet's 3 x 3 / 1 64 -> 49 us;
                            `_interior_kernels(kh, kw, sh, sw)`, Numba prange over the N*C planes: AVE backward.
  2. `_max_border_worker`, `_ave_border_worker`  tasks over the planes, the same over the remaining (border) outputs
                            with clipped windows and runtime parameters; for window shapes outside SPECIALISED they do
                            every output (an AVE window over the whole plane, global pooling: `_global_ave_worker`
                            instead). Tasks, not prange loops: ResNet-50's and GoogLeNet's padded / ceil-mode MAX
                            pools ran the only OpenMP loops of their plans, which kept those plans off
                            kernels.taskpool and their steady forwards from net.replay.
  3. `_max_backward_planes`  a task (kernels.tasks) over planes: zero dx, then route each top gradient to its argmax.
  4. AVE backward: the interior kernel zeroes dx and spreads dy / divisor over the interior windows, then
     `_ave_backward_border` does the border windows (or everything, zeroing first, for other window shapes).
Public: `pool2d_output_shape`, `pool2d_forward` (optionally recording the argmax `mask`), `pool2d_backward`,
`global_pool_forward`, `global_pool_backward`.

Caffe rules (caffe_facts.md 4.2), per spatial axis:
  out  = ceil((in + 2*pad - k) / stride) + 1      (FLOOR mode: floor)
  then, only if pad > 0: out -= 1 when (out - 1) * stride >= in + pad.
  MAX: window clipped to the image, padding is never a candidate, strict '>' against a running maximum that starts
       at -FLT_MAX, so the first maximum in row-major window order wins and NaN never wins; a window with no
       candidate (no real pixel, possible only with pad 0 and stride > kernel, or only NaN / values <= -FLT_MAX)
       gives -FLT_MAX and argmax -1, and its gradient goes nowhere. The argmax mask holds h * W + w within the
       input plane (Caffe's `max_idx_`), int32. Backward: dx[argmax] += dy (windows may overlap).
  AVE: divisor = (hend - hstart) * (wend - wstart) with ends clipped to in + pad *before* clipping to the image;
       the sum runs over real pixels only. An empty window gives 0 / divisor as in Caffe (-0.0, or NaN when the
       divisor is 0). Backward: every real pixel of a window gets dy / divisor (accumulated over windows).
Backward overwrites dx (it is an input gradient; pooling has no parameters).

Timing (forward and backward of LeNet's and CaffeNet's pooling layers against torch):
`python -m benchmarks --only layers --filter pool`.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

from kernels.gemm import as64, splat
from kernels.serial import SMALL_WORK
from kernels.tasks import Task
from kernels.tiling import VW

__all__ = [
    "global_pool_backward",
    "global_pool_forward",
    "pool2d_backward",
    "pool2d_backward_ref",
    "pool2d_forward",
    "pool2d_forward_ref",
    "pool2d_output_shape",
]

NEG_FLT_MAX = np.float32(-np.finfo(np.float32).max)
NO_MASK = np.empty((0, 0, 0), np.int32)  # the interior tasks' mask argument where no argmax is recorded
METHODS = ("MAX", "AVE")
ROUND_MODES = ("CEIL", "FLOOR")
# (kh, kw, sh, sw) with compile-time specialised interior kernels: LeNet (2, 2, 2, 2), CaffeNet/AlexNet/VGG-style
# (3, 3, 2, 2) and (2, 2, 2, 2), stride-1 3x3 (GoogLeNet). Other shapes run the generic border kernel everywhere.
SPECIALISED = frozenset({(2, 2, 2, 2), (3, 3, 2, 2), (2, 2, 1, 1), (3, 3, 1, 1)})


# -- parameters and shapes ---------------------------------------------------------------------
def _pair(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value  # the layers' own form: no conversion on the hot path
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"pooling {what}: expected an int or a pair (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


def check_pool_params(kernel, stride, pad, method: str | None, round_mode: str) -> tuple[tuple[int, int], ...]:
    """Normalise kernel/stride/pad to (h, w) pairs and check them as Caffe's PoolingLayer does."""
    k, s, p = _pair(kernel, "kernel"), _pair(stride, "stride"), _pair(pad, "pad")
    if min(k) <= 0 or min(s) <= 0 or min(p) < 0:
        raise ValueError(f"pooling: expected kernel > 0, stride > 0, pad >= 0, got kernel={k} stride={s} pad={p}")
    if p != (0, 0) and (p[0] >= k[0] or p[1] >= k[1]):
        raise ValueError(f"pooling: pad must be smaller than the kernel, got pad={p} kernel={k}")
    if method is not None and method not in METHODS:
        raise ValueError(f"pooling: method must be one of {METHODS}, got {method!r}")
    if round_mode not in ROUND_MODES:
        raise ValueError(f"pooling: round_mode must be one of {ROUND_MODES}, got {round_mode!r}")
    return k, s, p


def _axis_out(size: int, k: int, s: int, p: int, round_mode: str) -> int:
    span = size + 2 * p - k
    out = (-(-span // s) if round_mode == "CEIL" else span // s) + 1  # exact integer ceil / floor division
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_output_shape(in_hw: tuple[int, int], kernel, stride, pad, round_mode: str = "CEIL") -> tuple[int, int]:
    """Caffe's pooled (oh, ow) for an input of spatial size `in_hw` = (H, W).

    kernel, stride, pad: int or (h, w). round_mode: "CEIL" (Caffe's default) or "FLOOR".
    Raises ValueError for invalid parameters or when the kernel does not fit (output size < 1).
    """
    k, s, p = check_pool_params(kernel, stride, pad, None, round_mode)
    h, w = (int(v) for v in in_hw)
    oh, ow = _axis_out(h, k[0], s[0], p[0], round_mode), _axis_out(w, k[1], s[1], p[1], round_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: kernel {k} with pad {p} does not fit input {h}x{w} (output {oh}x{ow})")
    return oh, ow


def _check_array(a: np.ndarray, what: str, dtype=np.float32) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 4:
        got = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what}: expected a 4-D {np.dtype(dtype).name} array (N, C, H, W), got {got}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {a.strides} (use np.ascontiguousarray)")


def _check_input(x: np.ndarray, what: str = "pooling input") -> None:
    _check_array(x, what)


def _interior(size: int, out: int, k: int, s: int, p: int) -> tuple[int, int]:
    """Outputs [lo, hi) along one axis whose window [o*s - p, o*s - p + k) lies inside [0, size)."""
    lo = min(-(-p // s), out)
    hi = min(out, (size - k + p) // s + 1) if size - k + p >= 0 else 0
    return lo, max(lo, hi)


# -- 0. NumPy references -------------------------------------------------------------------------
def _ref_dtype(x: np.ndarray) -> np.dtype:
    """References return float64 for float64 input (finite differences), float32 otherwise."""
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)


def _windows(h: int, w: int, k, s, p, oh: int, ow: int):
    """Yield (i, j, h0, h1, w0, w1, divisor): clipped window rows [h0, h1), columns [w0, w1) and the AVE divisor."""
    for i in range(oh):
        hs = i * s[0] - p[0]
        he = min(hs + k[0], h + p[0])
        for j in range(ow):
            ws = j * s[1] - p[1]
            we = min(ws + k[1], w + p[1])
            yield i, j, max(hs, 0), min(he, h), max(ws, 0), min(we, w), (he - hs) * (we - ws)


def _max_ref(win: np.ndarray, h0: int, w0: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's running strict-'>' maximum over a window block (N, C, wh, ww): (values, argmax h * W + w or -1)."""
    n, c, wh, ww = win.shape
    if win.size == 0:
        return np.full((n, c), NEG_FLT_MAX, win.dtype), np.full((n, c), -1, np.int32)
    flat = win.reshape(n, c, wh * ww)
    with np.errstate(invalid="ignore"):
        cand = np.where(flat > NEG_FLT_MAX, flat, -np.inf)  # NaN and values <= -FLT_MAX never win
    a = cand.argmax(axis=2)  # first maximum in row-major order
    best = np.take_along_axis(cand, a[..., None], axis=2)[..., 0]
    ok = best > -np.inf
    idx = np.where(ok, (h0 + a // ww) * width + w0 + a % ww, -1).astype(np.int32)
    return np.where(ok, best, NEG_FLT_MAX).astype(win.dtype), idx


def pool2d_forward_ref(
    x: np.ndarray,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Plain reference: x (N, C, H, W) float32 -> y (N, C, oh, ow) float32, Caffe semantics (module doc). A float64
    x gives a float64 y (for finite-difference checks).

    With return_mask (MAX only), returns (y, mask): mask (N, C, oh, ow) int32, the argmax h * W + w or -1.
    """
    k, s, p = check_pool_params(kernel, stride, pad, method, round_mode)
    if return_mask and method != "MAX":
        raise ValueError(f"pooling: return_mask needs method MAX, got {method!r}")
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    y = np.empty((n, c, oh, ow), dtype=_ref_dtype(x))
    mask = np.empty((n, c, oh, ow), dtype=np.int32)
    for i, j, h0, h1, w0, w1, divisor in _windows(h, w, k, s, p, oh, ow):
        win = x[:, :, h0:h1, w0:w1]
        if method == "MAX":
            y[:, :, i, j], mask[:, :, i, j] = _max_ref(win, h0, w0, w)
        else:
            total = win.sum(axis=(2, 3), dtype=np.float64).astype(y.dtype)
            with np.errstate(invalid="ignore", divide="ignore"):
                y[:, :, i, j] = total / y.dtype.type(divisor)
    return (y, mask) if return_mask else y


def pool2d_backward_ref(
    dy: np.ndarray,
    x: np.ndarray,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
) -> np.ndarray:
    """Plain reference backward in float64: dy (N, C, oh, ow), x (N, C, H, W) the forward input -> dx (N, C, H, W)
    float64. MAX routes each dy to its window's first maximum in x; AVE spreads dy / divisor over the real pixels."""
    k, s, p = check_pool_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"pooling backward: expected dy of shape {(n, c, oh, ow)}, got {dy.shape}")
    g = dy.astype(np.float64)
    dx = np.zeros((n, c, h * w))
    rows = np.arange(n)[:, None]
    chans = np.arange(c)[None, :]
    for i, j, h0, h1, w0, w1, divisor in _windows(h, w, k, s, p, oh, ow):
        if method == "MAX":
            _, idx = _max_ref(x[:, :, h0:h1, w0:w1], h0, w0, w)
            ok = idx >= 0
            dx[rows, chans, np.maximum(idx, 0)] += np.where(ok, g[:, :, i, j], 0.0)  # one (n, c) pair per index
        elif h1 > h0 and w1 > w0:
            dx.reshape(n, c, h, w)[:, :, h0:h1, w0:w1] += (g[:, :, i, j] / divisor)[:, :, None, None]
    return dx.reshape(n, c, h, w)


# -- 1. interior kernels, specialised on the window shape ----------------------------------------
# Indices are uint64 so Numba emits no negative-index wraparound code; with constant KH/KW/SH/SW the window loops
# unroll and the loop over output columns vectorises (benchmarks/perf_notes.md: against runtime window sizes).
@cache
def _interior_kernels(kh: int, kw: int, sh: int, sw: int):
    KH, KW, SH, SW = kh, kw, sh, sw  # compile-time constants of the closures below
    U = np.uint64

    @njit(cache=True, parallel=True)
    def ave_bwd(dy, dx, i0, i1, j0, j1, ph, pw):  # pragma: no cover - compiled
        """Zero each dx plane, then add dy / (KH * KW) over the interior windows."""
        nj = U(j1 - j0)
        divisor = np.float32(KH * KW)
        height, width = dx.shape[1], dx.shape[2]
        for q in prange(dx.shape[0]):
            for hh in range(height):
                for ww in range(width):
                    dx[q, hh, ww] = np.float32(0.0)
            for i in range(i0, i1):
                h0 = U(i * SH - ph)
                wb = U(j0 * SW - pw)
                for jj in range(nj):
                    w0 = wb + U(SW) * jj
                    g = dy[q, i, U(j0) + jj] / divisor
                    for dh in range(KH):
                        for dw in range(KW):
                            dx[q, h0 + U(dh), w0 + U(dw)] += g

    return ave_bwd


# MAX interiors on _max_run's vectors (False: the scalar loops below, as for AVE). AVX-512 only: with AVX2's masked
# loads and stores (vmaskmov) they lost to the scalar loops on 3 of 5 shapes (Zen 4 emulating AVX2, one thread:
# GoogLeNet's 3 x 3 / 1 52 -> 92 us, LeNet's pool1 123 -> 165 us; CaffeNet's pool1 97 -> 75 us)
VECTOR_MAX = VW == 16


def _max_run_codegen(kh: int, kw: int, sw: int, record: bool):
    """_max_run's LLVM IR for one window (kh x kw, stride sw along the row) and `record`."""

    def codegen(context, builder, signature, args):
        x_v, xo_v, width_v, y_v, yo_v, mask_v, valid_v, hidx_v = args[:8]
        i64, i32, i1 = ir.IntType(64), ir.IntType(32), ir.IntType(1)
        f32 = ir.FloatType()
        fv, iv = ir.VectorType(f32, VW), ir.VectorType(i32, VW)
        mtype = ir.VectorType(i1, VW)

        def data(i, v):
            return context.make_array(signature.args[i])(context, builder, v).data

        xd, yd = data(0, x_v), data(3, y_v)
        xo, width, yo, valid, hidx = (as64(builder, v) for v in (xo_v, width_v, yo_v, valid_v, hidx_v))

        def lanes_below(limit, first):  # mask of lanes l with first + l < limit (limit an i64)
            lim = splat(builder, builder.trunc(limit, i32), iv)
            return builder.icmp_signed("<", ir.Constant(iv, [first + lane for lane in range(VW)]), lim)

        def intrinsic_fn(name, ret, params):
            return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params), name)

        vptr = fv.as_pointer()
        mload = intrinsic_fn(f"llvm.masked.load.v{VW}f32.p0v{VW}f32", fv, [vptr, i32, mtype, fv])
        mstore = intrinsic_fn(f"llvm.masked.store.v{VW}f32.p0v{VW}f32", ir.VoidType(), [fv, vptr, i32, mtype])
        out_mask = lanes_below(valid, 0)
        # source lanes read: stride 1, lanes j < valid; stride 2, lanes 2j (j < valid) of two vectors: l <= 2(valid-1)
        src_limit = valid if sw == 1 else builder.sub(builder.mul(valid, ir.Constant(i64, 2)), ir.Constant(i64, 1))
        src_masks = [lanes_below(src_limit, VW * h) for h in range(sw)]
        zero = ir.Constant(fv, [0.0] * VW)

        def load(at, m):
            ptr = builder.bitcast(builder.gep(xd, [at]), vptr)
            return builder.call(mload, [ptr, ir.Constant(i32, 4), m, zero])

        best = splat(builder, ir.Constant(f32, float(NEG_FLT_MAX)), fv)
        idx = ir.Constant(iv, [-1] * VW) if record else None
        steps = ir.Constant(iv, [lane * sw for lane in range(VW)])
        even = ir.Constant(iv, [2 * lane for lane in range(VW)])
        for dh in range(kh):
            down = builder.mul(width, ir.Constant(i64, dh))  # row dh of the windows
            row = builder.add(xo, down)
            for dw in range(kw):
                at = builder.add(row, ir.Constant(i64, dw))
                if sw == 1:
                    v = load(at, src_masks[0])
                else:
                    a = load(at, src_masks[0])
                    b = load(builder.add(at, ir.Constant(i64, VW)), src_masks[1])
                    v = builder.shuffle_vector(a, b, even)
                gt = builder.fcmp_ordered(">", v, best)
                best = builder.select(gt, v, best)
                if record:
                    tap = builder.add(hidx, builder.add(down, ir.Constant(i64, dw)))
                    here = builder.add(splat(builder, builder.trunc(tap, i32), iv), steps)
                    idx = builder.select(gt, here, idx)
        builder.call(mstore, [best, builder.bitcast(builder.gep(yd, [yo]), vptr), ir.Constant(i32, 4), out_mask])
        if record:
            ivp = iv.as_pointer()
            istore = intrinsic_fn(f"llvm.masked.store.v{VW}i32.p0v{VW}i32", ir.VoidType(), [iv, ivp, i32, mtype])
            md = data(5, mask_v)
            builder.call(istore, [idx, builder.bitcast(builder.gep(md, [yo]), ivp), ir.Constant(i32, 4), out_mask])
        return context.get_dummy_value()

    return codegen


@intrinsic
def _max_run(typingctx, x, xo, width, y, yo, mask, valid, hidx, kh, kw, sw, record):
    """Up to VW outputs of one output row of a MAX pooling's interior, one output a vector lane, in LLVM IR; the
    window (kh x kw, stride sw along the row) and `record` compile-time constants (literals: the task bodies pass
    their closure's; the vertical stride is the caller's, in xo). Lane j (< valid) takes the window whose top-left
    input is x.flat[xo + j*sw] (rows `width` apart) and writes y.flat[yo + j]; with `record`, also its argmax, the
    in-plane index hidx + j*sw + dh*width + dw, into mask.flat[yo + j]. The taps in row-major order, each a strict >
    against the running maximum from -FLT_MAX (NaN never wins, the first maximum keeps its index): the scalar kernel's
    values and argmax, bit for bit. Loads and stores are masked to the valid lanes (stride 2: two vectors of the row and
    their even lanes), so nothing past the last window is read."""
    window = []
    for v in (kh, kw, sw, record):
        if not isinstance(v, (types.IntegerLiteral, types.BooleanLiteral)):
            raise errors.RequireLiteralValue(v)
        window.append(v.literal_value)
    sig = types.void(x, xo, width, y, yo, mask, valid, hidx, kh, kw, sw, record)
    return sig, _max_run_codegen(*window[:3], bool(window[3]))


def _vector_max_worker(kh: int, kw: int, sh: int, sw: int, record: bool):
    """The MAX interior (with `record`, also the argmax) as a task body on _max_run: worker t's share of the planes,
    each interior output row in runs of VW outputs (the last one masked)."""
    KH, KW, SH, SW, REC = kh, kw, sh, sw, record  # compile-time constants (plain values: the cache key is stable)

    def body(t, x, y, mask, i0, i1, j0, j1, ph, pw, workers):  # pragma: no cover - compiled
        planes, height, width = x.shape
        oh, ow = y.shape[1], y.shape[2]
        for q in range(t * planes // workers, (t + 1) * planes // workers):
            for i in range(i0, i1):
                h0 = i * SH - ph
                for jc in range(j0, j1, VW):
                    w0 = jc * SW - pw
                    _max_run(x, (q * height + h0) * width + w0, width, y, (q * oh + i) * ow + jc, mask,
                             min(VW, j1 - jc), h0 * width + w0, KH, KW, SW, REC)  # fmt: skip

    kind = "max_mask" if record else "max"
    body.__name__ = body.__qualname__ = f"_{kind}_interior_{kh}{kw}{sh}{sw}_vector_worker"
    i64 = types.int64
    return Task(body, (_F3, _F3, types.int32[:, :, ::1], i64, i64, i64, i64, i64, i64, i64), boundscheck=False, opt=1)


def _interior_worker(kh: int, kw: int, sh: int, sw: int, method: str, record: bool = False):
    """The interior forward (MAX or AVE) for one specialised window as a task body (kernels.tasks): worker t's share
    of the planes, each output's window in row-major order (MAX: strict >, from -FLT_MAX, NaN never wins, as the
    border kernel; AVE: float32 sum, then / kh*kw). `record` (MAX, training): also each output's argmax into `mask`
    (the first maximum; no candidate: -1), its index h * W + w in the input plane; else `mask` is not read. Inference
    plans run these on kernels.taskpool's threads (an OpenMP loop in a plan keeps the whole plan on OpenMP), and a
    training step with no OpenMP loop does too."""
    KH, KW, SH, SW = kh, kw, sh, sw  # compile-time constants of the body
    U = np.uint64
    ave = method == "AVE"

    def body(t, x, y, mask, i0, i1, j0, j1, ph, pw, workers):  # pragma: no cover - compiled
        width = x.shape[2]
        nj = U(j1 - j0)
        divisor = np.float32(KH * KW)
        planes = x.shape[0]
        for q in range(t * planes // workers, (t + 1) * planes // workers):
            for i in range(i0, i1):
                h0 = U(i * SH - ph)
                wb = U(j0 * SW - pw)
                for jj in range(nj):
                    w0 = wb + U(SW) * jj
                    if ave:
                        acc = np.float32(0.0)
                        for dh in range(KH):
                            for dw in range(KW):
                                acc += x[q, h0 + U(dh), w0 + U(dw)]
                        y[q, i, U(j0) + jj] = acc / divisor
                    elif record:
                        m = NEG_FLT_MAX
                        idx = -1
                        for dh in range(KH):
                            for dw in range(KW):
                                v = x[q, h0 + U(dh), w0 + U(dw)]
                                if v > m:
                                    m = v
                                    idx = np.int64((h0 + U(dh)) * U(width) + w0 + U(dw))
                        y[q, i, U(j0) + jj] = m
                        mask[q, i, U(j0) + jj] = idx
                    else:
                        m = NEG_FLT_MAX
                        for dh in range(KH):
                            for dw in range(KW):
                                v = x[q, h0 + U(dh), w0 + U(dw)]
                                m = v if v > m else m  # noqa: FURB136 (Caffe's strict >, NaN never wins)
                        y[q, i, U(j0) + jj] = m

    kind = "max_mask" if record else method.lower()
    body.__name__ = body.__qualname__ = f"_{kind}_interior_{kh}{kw}{sh}{sw}_worker"
    i64 = types.int64
    return Task(body, (_F3, _F3, types.int32[:, :, ::1], i64, i64, i64, i64, i64, i64, i64), boundscheck=False)


_F3 = types.float32[:, :, ::1]
# module-level names (net.warm's compile workers find a task by its module and name): _MAX_INTERIOR_2222, ...,
# _MAX_MASK_INTERIOR_2222, ...
INTERIOR_TASKS = {}
MASK_TASKS = {}
for _window in sorted(SPECIALISED):
    for _method in METHODS:
        _name = f"_{_method}_INTERIOR_{''.join(map(str, _window))}"
        globals()[_name] = INTERIOR_TASKS[(*_window, _method)] = (
            _vector_max_worker(*_window, False)
            if VECTOR_MAX and _method == "MAX"
            else _interior_worker(*_window, _method)
        )
    _name = f"_MAX_MASK_INTERIOR_{''.join(map(str, _window))}"
    globals()[_name] = MASK_TASKS[_window] = (
        _vector_max_worker(*_window, True) if VECTOR_MAX else _interior_worker(*_window, "MAX", record=True)
    )
del _window, _method, _name


# -- 2. border kernels: clipped windows, runtime parameters --------------------------------------
@njit(cache=True, inline="always")
def _max_one(x, y, mask, record, q, i, j, h0, h1, kw, sw, pw, width):  # pragma: no cover - compiled
    w0 = j * sw - pw
    w1 = min(w0 + kw, width)
    w0 = max(w0, 0)
    m = NEG_FLT_MAX
    idx = -1
    for hh in range(h0, h1):
        for ww in range(w0, w1):
            v = x[q, hh, ww]
            if v > m:
                m = v
                idx = hh * width + ww
    y[q, i, j] = m
    if record:
        mask[q, i, j] = idx


def _max_border_worker(t, x, y, mask, record, kh, kw, sh, sw, ph, pw, i0, i1, j0, j1, workers):  # pragma: no cover
    """Worker t's share of the planes (kernels.tasks): every output outside the interior rectangle [i0, i1) x [j0, j1)
    (which may be empty)."""
    planes, height, width = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for q in range(t * planes // workers, (t + 1) * planes // workers):
        for i in range(oh):
            h0 = i * sh - ph
            h1 = min(h0 + kh, height)
            h0 = max(h0, 0)
            lo, hi = (j0, j1) if i0 <= i < i1 else (ow, ow)
            for j in range(lo):
                _max_one(x, y, mask, record, q, i, j, h0, h1, kw, sw, pw, width)
            for j in range(hi, ow):
                _max_one(x, y, mask, record, q, i, j, h0, h1, kw, sw, pw, width)


@njit(cache=True, inline="always")
def _ave_one(x, y, q, i, j, hs, he, kw, sw, pw, height, width):  # pragma: no cover - compiled
    ws = j * sw - pw
    we = min(ws + kw, width + pw)
    divisor = np.float32((he - hs) * (we - ws))
    acc = np.float32(0.0)
    for hh in range(max(hs, 0), min(he, height)):
        for ww in range(max(ws, 0), min(we, width)):
            acc += x[q, hh, ww]
    y[q, i, j] = acc / divisor


def _ave_border_worker(t, x, y, kh, kw, sh, sw, ph, pw, i0, i1, j0, j1, workers):  # pragma: no cover - compiled
    """As _max_border_worker for AVE."""
    planes, height, width = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for q in range(t * planes // workers, (t + 1) * planes // workers):
        for i in range(oh):
            hs = i * sh - ph
            he = min(hs + kh, height + ph)
            lo, hi = (j0, j1) if i0 <= i < i1 else (ow, ow)
            for j in range(lo):
                _ave_one(x, y, q, i, j, hs, he, kw, sw, pw, height, width)
            for j in range(hi, ow):
                _ave_one(x, y, q, i, j, hs, he, kw, sw, pw, height, width)


_I = types.int64
_MAX_BORDER = Task(
    _max_border_worker, (_F3, _F3, types.int32[:, :, ::1], types.boolean, *(_I,) * 11), boundscheck=False
)
_AVE_BORDER = Task(_ave_border_worker, (_F3, _F3, *(_I,) * 11), boundscheck=False)


# -- 3, 4. backward kernels ------------------------------------------------------------------------
def _max_backward_worker(t, dy, mask, dx, workers):  # pragma: no cover - compiled
    """Worker t's share of the planes (kernels.tasks). dy, mask (P, oh*ow); dx (P, H*W): dx = 0, then
    dx[q, mask[q, t]] += dy[q, t] (mask -1: dropped)."""
    planes, size = dx.shape
    outs = dy.shape[1]
    zero = np.float32(0.0)
    for q in range(t * planes // workers, (t + 1) * planes // workers):
        for i in range(size):
            dx[q, i] = zero
        for i in range(outs):
            idx = mask[q, i]
            if idx >= 0:
                dx[q, idx] += dy[q, i]


_MAX_BACKWARD = Task(
    _max_backward_worker,
    (types.float32[:, ::1], types.int32[:, ::1], types.float32[:, ::1], types.int64),
    boundscheck=False,
)


def _max_backward_planes(dy: np.ndarray, mask: np.ndarray, dx: np.ndarray) -> None:
    """`_max_backward_worker` over every plane, planes shared by the threads; C-contiguous dy, mask (P, oh*ow) and
    writeable dx (P, H*W)."""
    workers = max(1, min(numba.get_num_threads(), dx.shape[0]))
    dy = np.require(dy, np.float32, ["C", "W"])  # a read-only dy is another type for the task: copied
    mask = np.require(mask, np.int32, ["C", "W"])
    _MAX_BACKWARD.parallel(_MAX_BACKWARD.address, workers, dy, mask, dx, workers)


@njit(cache=True, inline="always")
def _ave_spread(dy, dx, q, i, j, hs, he, kw, sw, pw, height, width):  # pragma: no cover - compiled
    ws = j * sw - pw
    we = min(ws + kw, width + pw)
    g = dy[q, i, j] / np.float32((he - hs) * (we - ws))
    for hh in range(max(hs, 0), min(he, height)):
        for ww in range(max(ws, 0), min(we, width)):
            dx[q, hh, ww] += g


@njit(cache=True, parallel=True, error_model="numpy")
def _ave_backward_border(dy, dx, zero, window, rect):  # pragma: no cover - compiled
    """dy (P, oh, ow); dx (P, H, W): (dx = 0 when `zero`), then every window outside the interior rectangle
    rect = (i0, i1, j0, j1) adds dy / divisor to its real pixels; window = (kh, kw, sh, sw, ph, pw)."""
    kh, kw, sh, sw, ph, pw = window
    i0, i1, j0, j1 = rect
    planes, height, width = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for q in prange(planes):
        if zero:
            for hh in range(height):
                for ww in range(width):
                    dx[q, hh, ww] = np.float32(0.0)
        for i in range(oh):
            hs = i * sh - ph
            he = min(hs + kh, height + ph)
            lo, hi = (j0, j1) if i0 <= i < i1 else (ow, ow)
            for j in range(lo):
                _ave_spread(dy, dx, q, i, j, hs, he, kw, sw, pw, height, width)
            for j in range(hi, ow):
                _ave_spread(dy, dx, q, i, j, hs, he, kw, sw, pw, height, width)


# -- public ------------------------------------------------------------------------------------
def _regions(x3_shape, y3_shape, k, s, p) -> tuple[object | None, tuple[int, int, int, int], bool]:
    """(the window's AVE backward interior kernel, or None where the window is not specialised (or has no interior),
    interior rectangle (i0, i1, j0, j1), whether border outputs remain) for input planes (P, H, W) and output planes
    (P, OH, OW)."""
    height, width = x3_shape[1:]
    oh, ow = y3_shape[1:]
    i0, i1 = _interior(height, oh, k[0], s[0], p[0])
    j0, j1 = _interior(width, ow, k[1], s[1], p[1])
    if (k[0], k[1], s[0], s[1]) not in SPECIALISED or i0 == i1 or j0 == j1:
        return None, (0, 0, 0, 0), True
    return _interior_kernels(k[0], k[1], s[0], s[1]), (i0, i1, j0, j1), (i0, i1, j0, j1) != (0, oh, 0, ow)


def _run_forward(x3, y3, mask3, method: str, k, s, p) -> None:
    """One forward over (P, H, W) planes: the interior kernel when specialised, the border kernel for the rest."""
    record = mask3 is not None and method == "MAX"
    _forward_steps((x3.shape, y3.shape), method, k, s, p, record)(x3, y3, mask3)


def _global_ave_worker(t, x3, y3, workers):  # pragma: no cover - compiled
    """Worker t's share of the planes (kernels.tasks) of an AVE pooling whose one window is the whole plane (global
    pooling, EfficientNet-Lite0's head): the border kernel's sum in the same order and the same divisor, so the same
    bits, without its window arithmetic; 8 planes at a time, so 8 addition chains overlap (one chain is bound by the
    latency of its additions: 1280 planes of 7 x 7 34 -> 15 us on 1 thread)."""
    planes, height, width = x3.shape
    divisor = np.float32(height * width)
    hw = height * width
    x2 = x3.reshape(planes, hw)
    q0, q1 = t * planes // workers, (t + 1) * planes // workers
    acc = np.empty(8, np.float32)
    q = q0
    while q + 8 <= q1:  # 8 planes' sums side by side: 8 independent addition chains, each in the plane's order
        for lane in range(8):
            acc[lane] = np.float32(0.0)
        for i in range(hw):
            for lane in range(8):
                acc[lane] += x2[q + lane, i]
        for lane in range(8):
            y3[q + lane, 0, 0] = acc[lane] / divisor
        q += 8
    for r in range(q, q1):
        one = np.float32(0.0)
        for i in range(hw):
            one += x2[r, i]
        y3[r, 0, 0] = one / divisor


_GLOBAL_AVE = Task(_global_ave_worker, (_F3, _F3, types.int64), opt=1, boundscheck=False)


def _forward_steps(planes, method: str, k, s, p, record: bool, serial: bool = False):
    """The kernel calls of one forward over planes ((P, H, W), (P, OH, OW)), chosen once (`_regions`): returns
    run(x3, y3, mask3), mask3 used (and filled with the argmax) only when `record` (MAX). serial: the kernels' serial
    twins (``kernels.serial``). An AVE window covering the whole plane (global pooling) runs `_GLOBAL_AVE`."""
    if method == "AVE" and tuple(k) == tuple(planes[0][1:]) and tuple(p) == (0, 0):
        workers = 1 if serial else numba.get_num_threads()
        kind = "serial" if serial else "parallel"

        def run_global(x3, y3, _mask3) -> None:  # the driver looked up each call (net.replay records through it)
            getattr(_GLOBAL_AVE, kind)(_GLOBAL_AVE.address, workers, x3, y3, workers)

        return run_global
    kernels, rect, border = _regions(*planes, k, s, p)
    # every task here (kernels.tasks) over the planes: parallel, or on this thread
    workers = 1 if serial else max(1, min(numba.get_num_threads(), planes[0][0]))
    kind = "serial" if serial else "parallel"
    interior = None
    if kernels is not None:  # the task of this window
        if record:  # MAX recording the argmax (training)
            mask_task = MASK_TASKS[(k[0], k[1], s[0], s[1])]

            def interior(x3, y3, mask3, i0, i1, j0, j1, ph, pw) -> None:  # the driver looked up each call, as above
                getattr(mask_task, kind)(mask_task.address, workers, x3, y3, mask3, i0, i1, j0, j1, ph, pw, workers)

        else:
            task = INTERIOR_TASKS[(k[0], k[1], s[0], s[1], method)]

            def interior(x3, y3, i0, i1, j0, j1, ph, pw) -> None:  # the driver looked up each call, as above
                getattr(task, kind)(task.address, workers, x3, y3, NO_MASK, i0, i1, j0, j1, ph, pw, workers)

    inner_args = (*rect, p[0], p[1])
    border_args = (k[0], k[1], s[0], s[1], p[0], p[1], *rect, workers)

    def max_border(x3, y3, mask3, record) -> None:  # the driver looked up each call (net.replay records through it)
        getattr(_MAX_BORDER, kind)(_MAX_BORDER.address, workers, x3, y3, mask3, record, *border_args)

    def ave_border(x3, y3) -> None:
        getattr(_AVE_BORDER, kind)(_AVE_BORDER.address, workers, x3, y3, *border_args)

    def run(x3, y3, mask3) -> None:
        if interior is not None:
            if record:
                interior(x3, y3, mask3, *inner_args)
            else:
                interior(x3, y3, *inner_args)
        if border:
            if method == "AVE":
                ave_border(x3, y3)
            else:
                max_border(x3, y3, mask3 if record else NO_MASK, record)

    return run


class ForwardRunner:
    """A forward without an argmax mask with everything that depends only on the shapes worked out once (checks,
    output size, interior rectangle, which kernels): ``runner(x, out)`` for a C-contiguous float32 x of the shape
    given here and out of ``runner.out_shape`` (not overlapping x). Kept by a CPU Net's execution plan
    (``net.net``); ``pool2d_forward`` runs the same kernel calls."""

    __slots__ = ("out_shape", "planes", "steps")

    def __init__(self, x_shape, *, method="MAX", kernel=(2, 2), stride=(1, 1), pad=(0, 0), round_mode="CEIL"):
        k, s, p = check_pool_params(kernel, stride, pad, method, round_mode)
        n, c, h, w = x_shape
        oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
        self.out_shape = (n, c, oh, ow)
        self.planes = ((n * c, h, w), (n * c, oh, ow))
        empty = n * c * h * w == 0
        serial = n * c * h * w < SMALL_WORK  # a parallel call would cost more than the pooling (kernels.serial)
        self.steps = None if empty else _forward_steps(self.planes, method, k, s, p, False, serial)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        if self.steps is not None:
            self.steps(x.reshape(self.planes[0]), out.reshape(self.planes[1]), None)


def pool2d_forward(
    x: np.ndarray,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    out: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe MAX/AVE pooling. x (N, C, H, W) float32 C-contiguous -> y (N, C, oh, ow) float32.

    kernel, stride, pad: int or (h, w); round_mode "CEIL" | "FLOOR". `out`, when given, must be a C-contiguous
    float32 array of the output shape (not aliasing x); it is filled and returned. `mask` (MAX only), when given,
    must be a C-contiguous int32 array of the output shape: it receives each output's argmax as h * W + w in its
    input plane (-1 for a window with no candidate), for `pool2d_backward`. Without a mask the forward does no
    argmax bookkeeping.
    """
    _check_input(x)
    k, s, p = check_pool_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    if out is None:
        out = np.empty((n, c, oh, ow), dtype=np.float32)
    else:
        _check_input(out, "pooling out")
        if out.shape != (n, c, oh, ow):
            raise ValueError(f"pooling out: expected shape {(n, c, oh, ow)}, got {out.shape}")
    if mask is not None:
        if method != "MAX":
            raise ValueError(f"pooling mask: only MAX pooling records an argmax, got method {method!r}")
        _check_array(mask, "pooling mask", np.int32)
        if mask.shape != (n, c, oh, ow):
            raise ValueError(f"pooling mask: expected shape {(n, c, oh, ow)}, got {mask.shape}")
    if x.size == 0:
        return out
    m3 = None if mask is None else mask.reshape(n * c, oh, ow)
    _run_forward(x.reshape(n * c, h, w), out.reshape(n * c, oh, ow), m3, method, k, s, p)
    return out


def pool2d_backward(
    dy: np.ndarray,
    x: np.ndarray | tuple[int, int, int, int],
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of `pool2d_forward` with respect to its input; dx is OVERWRITTEN (not accumulated).

    dy (N, C, oh, ow) float32 C-contiguous, the top gradient. x: the forward input (N, C, H, W) float32, or just its
    shape. MAX routes each dy to the window's argmax: from `mask` (as recorded by `pool2d_forward(..., mask=...)`)
    when given, else recomputed from x (which must then be the array). AVE spreads dy / divisor over the window's
    real pixels. Returns dx (N, C, H, W) float32, written into `out` when given (C-contiguous, not aliasing dy).
    """
    k, s, p = check_pool_params(kernel, stride, pad, method, round_mode)
    _check_array(dy, "pooling backward dy")
    shape = tuple(int(v) for v in (x.shape if isinstance(x, np.ndarray) else x))
    if len(shape) != 4:
        raise ValueError(f"pooling backward: expected the input shape (N, C, H, W), got {shape}")
    n, c, h, w = shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"pooling backward dy: expected shape {(n, c, oh, ow)} for input {shape}, got {dy.shape}")
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        _check_array(out, "pooling backward out")
        if out.shape != shape:
            raise ValueError(f"pooling backward out: expected shape {shape}, got {out.shape}")
        if np.shares_memory(out, dy):
            raise ValueError("pooling backward out: must not overlap dy")
    if out.size == 0:
        return out
    if method == "AVE":
        dy3, dx3 = dy.reshape(n * c, oh, ow), out.reshape(n * c, h, w)
        kernels, rect, border = _regions(dx3.shape, dy3.shape, k, s, p)
        if kernels is not None:
            kernels(dy3, dx3, *rect, p[0], p[1])
        if border:
            _ave_backward_border(dy3, dx3, kernels is None, (k[0], k[1], s[0], s[1], p[0], p[1]), rect)
        return out
    if mask is None:
        if not isinstance(x, np.ndarray):
            raise ValueError("pooling backward: MAX needs the argmax mask or the forward input x (got only a shape)")
        _check_input(x)
        mask = np.empty(dy.shape, dtype=np.int32)
        pool2d_forward(x, method="MAX", kernel=k, stride=s, pad=p, round_mode=round_mode, mask=mask)
    else:
        _check_array(mask, "pooling backward mask", np.int32)
        if mask.shape != dy.shape:
            raise ValueError(f"pooling backward mask: expected shape {dy.shape} (as dy), got {mask.shape}")
    _max_backward_planes(dy.reshape(n * c, oh * ow), mask.reshape(n * c, oh * ow), out.reshape(n * c, h * w))
    return out


def global_pool_forward(
    x: np.ndarray, method: str = "MAX", out: np.ndarray | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """Global pooling (Caffe `global_pooling: true`): kernel (H, W), stride 1, pad 0.

    x (N, C, H, W) float32 -> y (N, C, 1, 1) float32; `mask` as in `pool2d_forward`.
    """
    _check_input(x)
    return pool2d_forward(x, method=method, kernel=x.shape[2:], stride=(1, 1), pad=(0, 0), out=out, mask=mask)


def global_pool_backward(
    dy: np.ndarray,
    x: np.ndarray | tuple[int, int, int, int],
    method: str = "MAX",
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of `global_pool_forward`: dy (N, C, 1, 1) -> dx (N, C, H, W) float32, overwritten."""
    shape = x.shape if isinstance(x, np.ndarray) else tuple(x)
    if len(shape) != 4:
        raise ValueError(f"global pooling backward: expected the input shape (N, C, H, W), got {tuple(shape)}")
    return pool2d_backward(dy, x, method=method, kernel=shape[2:], stride=(1, 1), pad=(0, 0), mask=mask, out=out)
