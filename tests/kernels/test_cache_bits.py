"""Every number is the same whatever Numba's cache holds: a process that compiles crema's kernels and one that loads
them from the cache give the same bits (issue 14: with fastmath, LLVM chose a reduction's vector shape per
compilation, and conv's bias gradient differed between cold and warm processes, growing to 7.6e-3 in the weights
after 400 iterations).

One child process runs a few LeNet training iterations (forward, backward, SGD update: conv, pooling, inner product,
ReLU, softmax loss), an EfficientNet-Lite0 forward (1x1 and depthwise convolutions, folded BatchNorm, ReLU6,
residual sums) and depthwise backwards with an empty NUMBA_CACHE_DIR, then a second one with the cache the first wrote; every weight and
blob must be equal bit for bit. Slow (the cold child compiles those kernels): about a minute on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, tempfile
from pathlib import Path
import numpy as np
from benchmarks.subjects import TRAIN_HEAD, TRAIN_SOLVER, ROOT
from net import Net
from net.prototxt_loader import load_solver_prototxt
from net.solver import Solver
from net.zoo import efficientnet_lite0

wd = Path(tempfile.mkdtemp())
text = (ROOT / "examples/mnist/lenet_train_test.prototxt").read_text()
body = text[text.index("layer {", text.index('name: "conv1"') - 40):]
(wd / "n.prototxt").write_text(TRAIN_HEAD + body)
(wd / "s.prototxt").write_text(TRAIN_SOLVER.format(net=wd / "n.prototxt", prefix=wd / "snap"))
solver = Solver(load_solver_prototxt(str(wd / "s.prototxt")), log=lambda _: None, progress=False)
net = solver.net
rng = np.random.default_rng(0)
out = {}
for it in range(4):
    net.blobs["data"][...] = rng.random((64, 1, 28, 28), dtype=np.float32)
    net.blobs["label"][...] = rng.integers(0, 10, 64)
    solver.step(1)
for name in net.params:
    for i, a in enumerate(net.params[name]):
        out[f"lenet:{name}:{i}"] = np.array(a)
files = efficientnet_lite0(cache=sys.argv[2], say=lambda _msg: None)
eff = Net.load(files.prototxt, files.weights)
eff.forward(data=rng.uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32))
for name in eff.blobs:
    out[f"eff:{name}"] = np.array(eff.blobs[name])
from kernels.depthwise import depthwise_backward
for shape, k, s in (((2, 16, 14, 14), 5, 1), ((1, 24, 28, 28), 3, 2), ((1, 40, 7, 7), 3, 1)):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[1], 1, k, k)).astype(np.float32)
    oh = (shape[2] + 2 - k) // s + 1
    dy = rng.standard_normal((shape[0], shape[1], oh, oh)).astype(np.float32)
    for j, g in enumerate(depthwise_backward(dy, x, w, stride=(s, s), pad=(1, 1))):
        out[f"dw:{shape}:{j}"] = np.array(g)
np.savez(sys.argv[1], **out)
"""


def _run(tmp: Path, tag: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp / "numba-cache")}
    out = tmp / f"{tag}.npz"
    r = subprocess.run([sys.executable, "-c", CHILD, str(out), str(tmp / "crema-cache")], cwd=ROOT, env=env,
                       check=False, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_cold_and_warm_cache_give_the_same_bits(tmp_path):
    cold = _run(tmp_path, "cold")
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))  # the cold run did write the cache
    warm = _run(tmp_path, "warm")
    assert cold.keys() == warm.keys() and len(cold) > 80
    differ = [k for k in cold if not np.array_equal(cold[k], warm[k])]
    assert differ == [], f"cold and warm Numba caches differ in {differ[:10]}"
