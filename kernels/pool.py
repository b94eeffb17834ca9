"""2-D max and average pooling with Caffe's exact semantics (NCHW, float32).

Kernels, in the order they appear:
  0. `pool2d_forward_ref`   NumPy reference: one vectorised (N, C) reduction per output position.
  1. `_max_pool_planes`     Numba, prange over the N*C planes, row-buffer loops (see the note above it).
  2. `_ave_pool_planes`     Numba, same loop nest, Caffe's AVE divisor.
Public: `pool2d_output_shape`, `pool2d_forward`, `global_pool_forward`. The backward pass will sit next to the
forward (`pool2d_backward(dy, x, ...)`, re-walking the same windows to find the first maximum), so the forward
here keeps no argmax.

Caffe rules (caffe_facts.md 4.2), per spatial axis:
  out  = ceil((in + 2*pad - k) / stride) + 1      (FLOOR mode: floor)
  then, only if pad > 0: out -= 1 when (out - 1) * stride >= in + pad.
  MAX: window clipped to the image, padding is never a candidate, strict '>' so the first maximum wins; a window
       with no real pixel (possible only with pad 0 and stride > kernel) gives -FLT_MAX, as in Caffe.
  AVE: divisor = (hend - hstart) * (wend - wstart) with ends clipped to in + pad *before* clipping to the image;
       the sum runs over real pixels only. An empty window gives 0 / divisor as in Caffe (-0.0, or NaN when the
       divisor is 0).

Timing: `CREMA_BENCH=1 python -m pytest tests/kernels/test_pool.py -q -s -k timing` prints pool1/pool2/pool5.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["global_pool_forward", "pool2d_forward", "pool2d_forward_ref", "pool2d_output_shape"]

NEG_FLT_MAX = np.float32(-np.finfo(np.float32).max)
METHODS = ("MAX", "AVE")
ROUND_MODES = ("CEIL", "FLOOR")


# -- parameters and shapes ---------------------------------------------------------------------
def _pair(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"pooling {what}: expected an int or a pair (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


def _check_params(kernel, stride, pad, method: str | None, round_mode: str) -> tuple[tuple[int, int], ...]:
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
    k, s, p = _check_params(kernel, stride, pad, None, round_mode)
    h, w = (int(v) for v in in_hw)
    oh, ow = _axis_out(h, k[0], s[0], p[0], round_mode), _axis_out(w, k[1], s[1], p[1], round_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: kernel {k} with pad {p} does not fit input {h}x{w} (output {oh}x{ow})")
    return oh, ow


def _check_input(x: np.ndarray, what: str = "pooling input") -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a 4-D float32 array (N, C, H, W), got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


# -- 0. NumPy reference ------------------------------------------------------------------------
def pool2d_forward_ref(
    x: np.ndarray, *, method: str = "MAX", kernel=(2, 2), stride=(1, 1), pad=(0, 0), round_mode: str = "CEIL"
) -> np.ndarray:
    """Plain reference: x (N, C, H, W) float32 -> y (N, C, oh, ow) float32, Caffe semantics (module doc)."""
    k, s, p = _check_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    y = np.empty((n, c, oh, ow), dtype=np.float32)
    for i in range(oh):
        h0 = i * s[0] - p[0]
        h1 = min(h0 + k[0], h + p[0])
        for j in range(ow):
            w0 = j * s[1] - p[1]
            w1 = min(w0 + k[1], w + p[1])
            win = x[:, :, max(h0, 0) : min(h1, h), max(w0, 0) : min(w1, w)]
            if method == "MAX":
                y[:, :, i, j] = win.max(axis=(2, 3)) if win.size else NEG_FLT_MAX
            else:
                total = win.sum(axis=(2, 3), dtype=np.float64).astype(np.float32)
                with np.errstate(invalid="ignore", divide="ignore"):
                    y[:, :, i, j] = total / np.float32((h1 - h0) * (w1 - w0))
    return y


# -- 1, 2. Numba kernels over (P, H, W) planes ----------------------------------------------------
# Row-buffer formulation: for one output row, walk the window offsets (hh, dw) in row-major order and update a
# buffer of all `ow` outputs at once. Each output still sees its candidates in Caffe's row-major window order (so
# the first maximum wins and AVE sums in Caffe's order), but the innermost loop is a branch-free select/add over
# outputs, which LLVM vectorises: about 3.5x faster than one scalar window loop per output.
@njit(cache=True)
def _col_range(dw, pw, sw, width, ow):  # pragma: no cover - compiled
    """Outputs j whose window column j*sw - pw + dw lies inside [0, width): returns (jlo, jhi, offset)."""
    off = dw - pw
    jlo = (-off + sw - 1) // sw if off < 0 else 0
    jhi = min(ow, (width - 1 - off) // sw + 1)
    return jlo, jhi, off


@njit(cache=True, parallel=True)
def _max_pool_planes(x, y, kh, kw, sh, sw, ph, pw):  # pragma: no cover - compiled
    planes, height, width = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for q in prange(planes):
        m = np.empty(ow, dtype=np.float32)
        for i in range(oh):
            h0 = i * sh - ph
            h1 = min(h0 + kh, height)
            m[:] = NEG_FLT_MAX
            for hh in range(max(h0, 0), h1):
                for dw in range(kw):
                    jlo, jhi, off = _col_range(dw, pw, sw, width, ow)
                    for j in range(jlo, jhi):
                        v = x[q, hh, j * sw + off]
                        m[j] = v if v > m[j] else m[j]  # noqa: FURB136 (Caffe's strict >, NaN never wins)
            y[q, i, :] = m


@njit(cache=True, parallel=True, error_model="numpy")
def _ave_pool_planes(x, y, kh, kw, sh, sw, ph, pw):  # pragma: no cover - compiled
    planes, height, width = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for q in prange(planes):
        acc = np.empty(ow, dtype=np.float32)
        for i in range(oh):
            h0 = i * sh - ph
            h1 = min(h0 + kh, height + ph)
            acc[:] = 0.0
            for hh in range(max(h0, 0), min(h1, height)):
                for dw in range(kw):
                    jlo, jhi, off = _col_range(dw, pw, sw, width, ow)
                    for j in range(jlo, jhi):
                        acc[j] += x[q, hh, j * sw + off]
            for j in range(ow):
                w0 = j * sw - pw
                w1 = min(w0 + kw, width + pw)
                y[q, i, j] = acc[j] / np.float32((h1 - h0) * (w1 - w0))


# -- public ------------------------------------------------------------------------------------
def pool2d_forward(
    x: np.ndarray,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe MAX/AVE pooling. x (N, C, H, W) float32 C-contiguous -> y (N, C, oh, ow) float32.

    kernel, stride, pad: int or (h, w); round_mode "CEIL" | "FLOOR". `out`, when given, must be a C-contiguous
    float32 array of the output shape (not aliasing x); it is filled and returned.
    """
    _check_input(x)
    k, s, p = _check_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), k, s, p, round_mode)
    if out is None:
        out = np.empty((n, c, oh, ow), dtype=np.float32)
    else:
        _check_input(out, "pooling out")
        if out.shape != (n, c, oh, ow):
            raise ValueError(f"pooling out: expected shape {(n, c, oh, ow)}, got {out.shape}")
    if x.size == 0:
        return out
    kernel_fn = _max_pool_planes if method == "MAX" else _ave_pool_planes
    kernel_fn(x.reshape(n * c, h, w), out.reshape(n * c, oh, ow), k[0], k[1], s[0], s[1], p[0], p[1])
    return out


def global_pool_forward(x: np.ndarray, method: str = "MAX", out: np.ndarray | None = None) -> np.ndarray:
    """Global pooling (Caffe `global_pooling: true`): kernel (H, W), stride 1, pad 0.

    x (N, C, H, W) float32 -> y (N, C, 1, 1) float32.
    """
    _check_input(x)
    return pool2d_forward(x, method=method, kernel=x.shape[2:], stride=(1, 1), pad=(0, 0), out=out)
