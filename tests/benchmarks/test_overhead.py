"""benchmarks.bench_overhead's view inside a replayed forward: every native call of LeNet's plan timed alone, in order,
summed by task; the net's answers unchanged after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.bench_overhead import native_ops
from net import Net, replay

ROOT = Path(__file__).resolve().parents[2]


def test_native_ops_time_every_call_of_the_replay_by_task() -> None:
    net = Net.load(
        str(ROOT / "models/lenet/deploy.prototxt"), str(ROOT / "models/lenet/lenet.caffemodel"), phase="test"
    )
    x = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    want = net.forward(data=x)["prob"].copy()
    for _ in range(replay.RECORD_AT + 2):
        net.forward(data=x)
    got = native_ops(net, rounds=3)
    if not replay.ENABLED:
        assert got is None
        return
    assert got is not None
    calls = sum(sum(n != "restore" for n in prog.names) for _, _, prog in net._plan.replay.segments if prog)
    assert got["ops"] == calls >= 5  # conv1, pool1, conv2, pool2, ip1, ... (fused ReLU; some may run serially)
    assert abs(sum(got["by_task_us"].values()) - got["alone_sum_us"]) < 1e-6 * got["alone_sum_us"]
    assert got["whole_us"] > 0 and all(v > 0 for v in got["by_task_us"].values())
    assert all(name.startswith("kernels.") for name in got["by_task_us"])
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)
