"""Tile x split-K sweep of crema's GPU convolution (conv2d_igemm), to calibrate kernels.gpu.backend's plan choice.

    python -m benchmarks.bench_gpu_tiles [--json benchmarks/results/gpu_conv_tiles.json]

For each layer shape (CaffeNet conv1-5 at batch 1 / 64 / 256, LeNet conv1-2, EfficientNet-Lite0's 1x1 layers at
batch 1 / 64): the plan `gemm_plan` chooses ("auto") and every tile of kernels.gpu.backend.TILES with 1, 2, 4 and 8
K splits, forced through the launcher's own gemm_plan. Each forced result is checked against the chosen plan's
(max abs err <= 1e-3 * max|y|: split-K only reorders the sums) before it is timed: median milliseconds of 15 calls
by CUDA events after 3 warm-up calls. One line per layer and batch: the chosen plan, its time, and the best pair.
Figures of the first run (an H200): benchmarks/gpu_notes.md. Needs CuPy and a CUDA device (exit status 2 without).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LAYERS = [  # name, C, H, M (output channels), k, stride, pad, group, batches
    ("caffenet conv1", 3, 227, 96, 11, 4, 0, 1, (1, 64, 256)),
    ("caffenet conv2", 96, 27, 256, 5, 1, 2, 2, (1, 64, 256)),
    ("caffenet conv3", 256, 13, 384, 3, 1, 1, 1, (1, 64, 256)),
    ("caffenet conv4", 384, 13, 384, 3, 1, 1, 2, (1, 64, 256)),
    ("caffenet conv5", 384, 13, 256, 3, 1, 1, 2, (1, 64, 256)),
    ("lenet conv1", 1, 28, 20, 5, 1, 0, 1, (64, 10000)),
    ("lenet conv2", 20, 12, 50, 5, 1, 0, 1, (64, 10000)),
    ("effnet 1x1 32->16 112", 32, 112, 16, 1, 1, 0, 1, (1, 64)),
    ("effnet 1x1 16->96 112", 16, 112, 96, 1, 1, 0, 1, (1, 64)),
    ("effnet 1x1 144->24 56", 144, 56, 24, 1, 1, 0, 1, (1, 64)),
    ("effnet 1x1 480->80 14", 480, 14, 80, 1, 1, 0, 1, (1, 64)),
    ("effnet 1x1 320->1280 7", 320, 7, 1280, 1, 1, 0, 1, (1, 64)),
]
SPLITS = (1, 2, 4, 8)


def _median_ms(cp, fn) -> float:
    """Median milliseconds of 15 calls by CUDA events, after 3 (bench_gpu's timing)."""
    from benchmarks.bench_gpu import _time

    return 1e3 * float(np.median(_time(cp, fn, 3, 15)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="also write the raw times there")
    args = p.parse_args(argv)
    from benchmarks.bench_gpu import conv_inputs
    from kernels import gpu
    from kernels.gpu import backend as gr
    from kernels.gpu import conv as gconv

    reason = gpu.unavailable_reason()
    if reason is not None:
        print(f"bench_gpu_tiles: no GPU to benchmark on: {reason}", file=sys.stderr)
        return 2
    import cupy as cp

    chosen_plan, forced = gr.gemm_plan, {}
    gconv.gemm_plan = lambda m, n, k, batch, sm, **kw: chosen_plan(m, n, k, batch, sm, **forced)
    rng = np.random.default_rng(0)
    sm_count, rows, bad = gpu.runtime().sm_count, [], []

    def one(name: str, c: int, h: int, m: int, k: int, s: int, pad: int, g: int, n: int) -> dict:
        x, w, b, kw = conv_inputs(cp, rng, n, c, h, m, k, s, pad, g)
        run = lambda: gconv.conv2d_forward(x, w, b, **kw)
        forced.clear()
        want = run()
        auto = chosen_plan(m // g, n * want.shape[2] * want.shape[3], c // g * k * k, g, sm_count)
        ms = {"auto": _median_ms(cp, run)}
        for tile in gr.TILES:
            for splits in SPLITS:
                forced.update(tile=tile, splits=splits)
                label = f"{tile.bm}x{tile.bn} s{splits}"
                if float(cp.abs(run() - want).max()) > 1e-3 * float(cp.abs(want).max()):
                    print(f"MISMATCH {name} N={n} {label}")
                    bad.append(label)
                    continue
                ms[label] = _median_ms(cp, run)
        forced.clear()
        best_ms, best = min((v, key) for key, v in ms.items())
        print(f"{name:<24} N={n:<5} chosen {auto.tile.bm}x{auto.tile.bn} s{auto.splits}: {ms['auto']:.4f} ms"
              f" | best {best}: {best_ms:.4f} ms")  # fmt: skip
        return {"layer": name, "batch": n, "auto_tile": [auto.tile.bm, auto.tile.bn], "auto_splits": auto.splits,
                "ms": ms}  # fmt: skip

    try:
        for name, c, h, m, k, s, pad, g, batches in LAYERS:
            for n in batches:
                rows.append(one(name, c, h, m, k, s, pad, g, n))
                cp.get_default_memory_pool().free_all_blocks()
    finally:
        gconv.gemm_plan = chosen_plan
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"raw results: {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
