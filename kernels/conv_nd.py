"""3-D convolution (Caffe's N-D `kernel_size` with three spatial axes) and the im2col / col2im it runs on.

Shapes (Caffe's blobs, channel axis 1): x (N, C, D, H, W); w (M, C / group, kd, kh, kw); b (M,);
y (N, M, OD, OH, OW) with O* = (I + 2 * pad - dilation * (k - 1) - 1) // stride + 1 per axis, and
  y[n, m, od, oh, ow] = b[m] + sum_{c, a, i, j} w[m, c, a, i, j] * x_pad[n, g(m) * C/group + c,
                                                   od*sd + a*dd, oh*sh + i*dh, ow*sw + j*dw]

Kernels, in order:
1. ``conv3d_forward_ref`` / ``conv3d_backward_ref`` - float64 NumPy: one tensordot per kernel offset (no im2col),
   the obviously-correct reference the tests compare against.
2. ``_im2col3d`` - Numba, ``prange`` over the C*kd*kh*kw rows of the column matrix (K, OD*OH*OW) of one image's
   group of channels: row (c, a, i, j) holds x_pad at (c, od*sd + a*dd, oh*sh + i*dh, ow*sw + j*dw), zero in the
   padding. ``_col2im3d`` is its adjoint, ``prange`` over channels (the rows of one channel add into that channel
   only, so threads never write the same element).
3. ``conv3d_forward`` / ``conv3d_backward`` - per image and group: im2col, then crema's SGEMM (kernels.gemm):
   y_g = w_g (Mg, K) @ cols (K, P); dw_g += dy_g @ cols^T; dcols = w_g^T @ dy_g, col2im'd into dx.
   No packing of im2col straight into the GEMM's B format (kernels.conv does that for 2-D): the columns are written
   once and packed by gemm, one extra pass over K x P floats per image and group.

Also ``im2col_nd`` / ``col2im_nd`` for Caffe's Im2col layer (2-D runs as 3-D with a depth of 1).
Benchmark: none of its own; one figure measured on the shared machine is in benchmarks/perf_notes.md.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.gemm import gemm

__all__ = [
    "col2im_nd",
    "conv3d_backward",
    "conv3d_backward_ref",
    "conv3d_forward",
    "conv3d_forward_ref",
    "conv_nd_output_shape",
    "im2col_nd",
]

Triple = tuple[int, int, int]


def conv_nd_output_shape(in_shape, kernel, stride, pad, dilation) -> tuple[int, ...]:
    """Output spatial shape per axis: (I + 2p - d(k - 1) - 1) // s + 1; ValueError when an axis would be empty."""
    out = []
    for axis, (i, k, s, p, d) in enumerate(zip(in_shape, kernel, stride, pad, dilation)):
        o = (int(i) + 2 * int(p) - int(d) * (int(k) - 1) - 1) // int(s) + 1
        if o <= 0:
            raise ValueError(
                f"spatial axis {axis}: input {i} with kernel {k}, dilation {d} and pad {p} gives an empty output"
            )
        out.append(o)
    return tuple(out)


def _offset_slices(off: Triple, dil: Triple, out: Triple, stride: Triple) -> tuple[slice, ...]:
    return tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, n, s in zip(off, dil, out, stride))


def _padded(x64: np.ndarray, pad: Triple) -> np.ndarray:
    n, c = x64.shape[:2]
    xp = np.zeros((n, c, *(s + 2 * p for s, p in zip(x64.shape[2:], pad))))
    xp[(slice(None), slice(None), *(slice(p, p + s) for s, p in zip(x64.shape[2:], pad)))] = x64
    return xp


def conv3d_forward_ref(x, w, b, *, stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1), group: int = 1):
    """float64 reference of the module docstring's formula; returns float64 (N, M, OD, OH, OW)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    m, cg = w64.shape[:2]
    out = conv_nd_output_shape(x64.shape[2:], w64.shape[2:], stride, pad, dilation)
    xp = _padded(x64, pad)
    mg = m // group
    y = np.zeros((x64.shape[0], m, *out))
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w64[g * mg : (g + 1) * mg]
        for off in np.ndindex(*w64.shape[2:]):
            xs = xg[(slice(None), slice(None), *_offset_slices(off, dilation, out, stride))]
            y[:, g * mg : (g + 1) * mg] += np.moveaxis(np.tensordot(wg[(..., *off)], xs, axes=([1], [1])), 0, 1)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, m, 1, 1, 1)
    return y


def conv3d_backward_ref(dy, x, w, *, stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1), group: int = 1):
    """float64 gradients of conv3d_forward_ref: (dx, dw, db)."""
    dy64, x64, w64 = (np.asarray(a, np.float64) for a in (dy, x, w))
    m, cg = w64.shape[:2]
    out = dy64.shape[2:]
    xp = _padded(x64, pad)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w64)
    mg = m // group
    for g in range(group):
        dyg = dy64[:, g * mg : (g + 1) * mg]
        for off in np.ndindex(*w64.shape[2:]):
            win = (slice(None), slice(g * cg, (g + 1) * cg), *_offset_slices(off, dilation, out, stride))
            dw[(slice(g * mg, (g + 1) * mg), slice(None), *off)] = np.tensordot(dyg, xp[win], axes=([0, 2, 3, 4],) * 2)
            dxp[win] += np.moveaxis(
                np.tensordot(dyg, w64[(slice(g * mg, (g + 1) * mg), slice(None), *off)], ([1], [0])), 4, 1
            )
    crop = (slice(None), slice(None), *(slice(p, p + s) for s, p in zip(x64.shape[2:], pad)))
    return dxp[crop].copy(), dw, dy64.sum(axis=(0, 2, 3, 4))


# --------------------------------------------------------------------------------------------- im2col / col2im
@njit(cache=True, parallel=True, boundscheck=False)
def _im2col3d(x, c0, cn, dims, geom, cols):
    """cols (cn*kd*kh*kw, od*oh*ow) from channels c0 .. c0+cn of x (C, D, H, W), float32; geom is
    (kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, od, oh, ow)."""
    d_in, h_in, w_in = dims[0], dims[1], dims[2]
    kd, kh, kw, sd, sh, sw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    pd, ph, pw, dd, dh, dw = geom[6], geom[7], geom[8], geom[9], geom[10], geom[11]
    od, oh, ow = geom[12], geom[13], geom[14]
    taps = kd * kh * kw
    for r in prange(cn * taps):
        c = r // taps
        t = r - c * taps
        a = t // (kh * kw)
        i = (t // kw) % kh
        j = t % kw
        col = 0
        for zo in range(od):
            z = zo * sd + a * dd - pd
            for yo in range(oh):
                y = yo * sh + i * dh - ph
                for xo in range(ow):
                    xx = xo * sw + j * dw - pw
                    if 0 <= z < d_in and 0 <= y < h_in and 0 <= xx < w_in:
                        cols[r, col] = x[c0 + c, z, y, xx]
                    else:
                        cols[r, col] = 0.0
                    col += 1


@njit(cache=True, parallel=True, boundscheck=False)
def _col2im3d(cols, c0, cn, dims, geom, dx):
    """dx[c0 + c] += the adjoint of _im2col3d (padding dropped), channel by channel in parallel."""
    d_in, h_in, w_in = dims[0], dims[1], dims[2]
    kd, kh, kw, sd, sh, sw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    pd, ph, pw, dd, dh, dw = geom[6], geom[7], geom[8], geom[9], geom[10], geom[11]
    od, oh, ow = geom[12], geom[13], geom[14]
    taps = kd * kh * kw
    for c in prange(cn):
        for t in range(taps):
            r = c * taps + t
            a = t // (kh * kw)
            i = (t // kw) % kh
            j = t % kw
            col = 0
            for zo in range(od):
                z = zo * sd + a * dd - pd
                for yo in range(oh):
                    y = yo * sh + i * dh - ph
                    for xo in range(ow):
                        xx = xo * sw + j * dw - pw
                        if 0 <= z < d_in and 0 <= y < h_in and 0 <= xx < w_in:
                            dx[c0 + c, z, y, xx] += cols[r, col]
                        col += 1


def _triples(kernel, stride, pad, dilation) -> tuple[Triple, Triple, Triple, Triple]:
    out = []
    for name, v in (("kernel", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation)):
        v = tuple(int(e) for e in v)
        if len(v) != 3:
            raise ValueError(f"conv_nd: {name} needs 3 values (depth, height, width), got {v}")
        out.append(v)
    return tuple(out)


def _geom(kernel, stride, pad, dilation, out) -> np.ndarray:
    return np.array([*kernel, *stride, *pad, *dilation, *out], np.int64)


def im2col_nd(x: np.ndarray, kernel, stride, pad, dilation) -> np.ndarray:
    """x (C, D, H, W) float32 -> cols (C*kd*kh*kw, OD*OH*OW) float32 (rows ordered c, kd, kh, kw as in Caffe)."""
    kernel, stride, pad, dilation = _triples(kernel, stride, pad, dilation)
    x = np.ascontiguousarray(x, np.float32)
    out = conv_nd_output_shape(x.shape[1:], kernel, stride, pad, dilation)
    cols = np.empty((x.shape[0] * math.prod(kernel), math.prod(out)), np.float32)
    _im2col3d(x, 0, x.shape[0], np.array(x.shape[1:], np.int64), _geom(kernel, stride, pad, dilation, out), cols)
    return cols


def col2im_nd(cols: np.ndarray, shape, kernel, stride, pad, dilation, out: np.ndarray | None = None) -> np.ndarray:
    """The adjoint of im2col_nd: cols (C*kd*kh*kw, OD*OH*OW) summed back into an image of `shape` (C, D, H, W);
    written into `out` (zeroed first) when given."""
    kernel, stride, pad, dilation = _triples(kernel, stride, pad, dilation)
    o = conv_nd_output_shape(shape[1:], kernel, stride, pad, dilation)
    dx = np.zeros(tuple(shape), np.float32) if out is None else out
    if out is not None:
        dx[...] = 0.0
    cols = np.ascontiguousarray(cols, np.float32)
    _col2im3d(cols, 0, shape[0], np.array(shape[1:], np.int64), _geom(kernel, stride, pad, dilation, o), dx)
    return dx


# --------------------------------------------------------------------------------------------- public functions
def _check(x: np.ndarray, w: np.ndarray, group: int) -> None:
    if x.ndim != 5 or w.ndim != 5:
        raise ValueError(f"conv3d: expected x (N, C, D, H, W) and w (M, C/group, kd, kh, kw), got {x.shape}, {w.shape}")
    if group <= 0 or x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise ValueError(f"conv3d: input {x.shape} and weights {w.shape} do not fit group {group}")


def conv3d_forward(x, w, b, *, stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1), group: int = 1, out=None):
    """y (N, M, OD, OH, OW) float32 (module docstring); `out`, when given, is written and returned."""
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.float32)
    _check(x, w, group)
    kernel, stride, pad, dilation = _triples(w.shape[2:], stride, pad, dilation)
    o = conv_nd_output_shape(x.shape[2:], kernel, stride, pad, dilation)
    n, m, cg = x.shape[0], w.shape[0], w.shape[1]
    mg, k, p = m // group, cg * math.prod(kernel), math.prod(o)
    y = np.empty((n, m, *o), np.float32) if out is None else out
    geom, dims = _geom(kernel, stride, pad, dilation, o), np.array(x.shape[2:], np.int64)
    cols = np.empty((k, p), np.float32)
    w2 = w.reshape(m, k)
    for i in range(n):
        yi = y[i].reshape(m, p)
        for g in range(group):
            _im2col3d(x[i], g * cg, cg, dims, geom, cols)
            gemm(w2[g * mg : (g + 1) * mg], cols, out=yi[g * mg : (g + 1) * mg])
    if b is not None:
        y += np.asarray(b, np.float32).reshape(1, m, 1, 1, 1)
    return y


def conv3d_backward(
    dy, x, w, *, stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1), group: int = 1,
    dx=None, dw=None, db=None, need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
):  # fmt: skip
    """(dx, dw, db): dx OVERWRITTEN (a new array unless `dx` is given); dw and db ACCUMULATE into the arrays given
    (new zeroed ones when None). Each part only when its need_* is set (None returned otherwise)."""
    dy = np.ascontiguousarray(dy, np.float32)
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.float32)
    _check(x, w, group)
    kernel, stride, pad, dilation = _triples(w.shape[2:], stride, pad, dilation)
    o = conv_nd_output_shape(x.shape[2:], kernel, stride, pad, dilation)
    n, m, cg = x.shape[0], w.shape[0], w.shape[1]
    if dy.shape != (n, m, *o):
        raise ValueError(f"conv3d_backward: expected dy of shape {(n, m, *o)}, got {dy.shape}")
    mg, k, p = m // group, cg * math.prod(kernel), math.prod(o)
    geom, dims = _geom(kernel, stride, pad, dilation, o), np.array(x.shape[2:], np.int64)
    if need_dx:
        dx = np.zeros(x.shape, np.float32) if dx is None else dx
        dx[...] = 0.0
    if need_dw and dw is None:
        dw = np.zeros(w.shape, np.float32)
    if need_db:
        db = np.zeros(m, np.float32) if db is None else db
        db += dy.sum(axis=(0, 2, 3, 4), dtype=np.float64).astype(np.float32)
    cols = np.empty((k, p), np.float32)
    w2 = w.reshape(m, k)
    dw2 = dw.reshape(m, k) if need_dw else None
    for i in range(n):
        dyi = dy[i].reshape(m, p)
        for g in range(group):
            dyg = dyi[g * mg : (g + 1) * mg]
            if need_dw:
                _im2col3d(x[i], g * cg, cg, dims, geom, cols)
                gemm(dyg, cols, trans_b=True, out=dw2[g * mg : (g + 1) * mg], accumulate=True)
            if need_dx:
                gemm(w2[g * mg : (g + 1) * mg], dyg, trans_a=True, out=cols)
                _col2im3d(cols, g * cg, cg, dims, geom, dx[i])
    return (dx if need_dx else None), (dw if need_dw else None), (db if need_db else None)
