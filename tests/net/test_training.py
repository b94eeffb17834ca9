"""LeNet training end to end on real MNIST digits, offline: the 10,000 test digits shipped in data/mnist are
split into 8,000 for training and 2,000 for testing (disjoint), written as IDX files in a temporary folder.

- a few hundred iterations: the loss falls and test accuracy exceeds 95%;
- SIGKILL mid-run, resume from the last snapshot: final weights equal an uninterrupted run's, bit for bit;
- Ctrl-C (SIGINT) writes a snapshot and exits cleanly;
- a diverging run stops with a message naming the iteration and layer, keeping the last good snapshot;
- snapshots load in OpenCV DNN and in crema, and `crema test` scores them (and refuses a deploy prototxt);
- a resumed run's log keeps the rows from before its resume point.
The full 10,000-iteration run on the 60,000 training digits is `python -m benchmarks.bench_train`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from net import Net
from net.datasets import load_mnist, write_idx
from net.prototxt_loader import load_solver_prototxt
from net.solver import Solver, TrainingDiverged
from tests.conftest import ROOT

TRAIN_TEST = (ROOT / "examples/mnist/lenet_train_test.prototxt").read_text()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist("test")
    write_idx(folder / "train-images-idx3-ubyte", images[:8000])
    write_idx(folder / "train-labels-idx1-ubyte", labels[:8000])
    write_idx(folder / "t10k-images-idx3-ubyte", images[8000:])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[8000:])
    return folder


def _solver_file(folder: Path, digits: Path, body: str, batch: int = 64) -> Path:
    net = (
        TRAIN_TEST.replace("examples/mnist/mnist_train_lmdb", str(digits / "train"))
        .replace("examples/mnist/mnist_test_lmdb", str(digits / "test"))
        .replace("batch_size: 64", f"batch_size: {batch}")
    )
    (folder / "net.prototxt").write_text(net)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\nsnapshot_prefix: "{folder / "lenet"}"\n{body}\n')
    return path


BASE = """base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75
random_seed: 5 solver_mode: CPU"""


def test_lenet_learns_real_digits(tmp_path, digits):
    path = _solver_file(tmp_path, digits, BASE + " max_iter: 300 display: 50 test_iter: 20 test_interval: 300")
    lines: list[str] = []
    solver = Solver(load_solver_prototxt(str(path)), source=str(path), log=lines.append, progress=False)
    solver.solve()
    train = [r for r in solver.records if r["phase"] == "train"]
    tests = [r for r in solver.records if r["phase"] == "test0"]
    assert train[0]["loss"] > 1.5  # ln(10) = 2.30 at the start
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert tests[-1]["iter"] == 300 and tests[-1]["accuracy"] > 0.95, tests[-1]
    assert any(line.startswith("Iteration 300, Testing net (#0)") for line in lines)
    assert any("Test net output #0: accuracy" in line for line in lines)
    # the snapshot after training loads in crema and in OpenCV DNN and gives the same probabilities
    weights = tmp_path / "lenet_iter_300.caffemodel"
    assert weights.exists() and (tmp_path / "lenet_iter_300.solverstate").exists()
    deploy = ROOT / "models/lenet/deploy.prototxt"
    net = Net.load(deploy, weights)
    x = load_mnist("test")[0][8000:8016, None].astype(np.float32) * np.float32(0.00390625)
    ours = net.forward(data=x)["prob"]
    cv2 = pytest.importorskip("cv2")
    ref = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    ref.setInput(x)
    assert np.max(np.abs(ours - ref.forward())) <= 1e-5


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crema", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _weights(path: Path) -> list[np.ndarray]:
    net = Net.load(ROOT / "models/lenet/deploy.prototxt", path)
    return [a for name in net.params for a in net.params[name]]


def test_sigkill_then_resume_is_bit_exact(tmp_path, digits):
    # 360 iterations after the kill point (~1 s): the polling test kills the run in time even on a loaded machine
    body = BASE + " max_iter: 400 snapshot: 40 display: 0 test_iter: 2 test_interval: 100"
    full = tmp_path / "full"
    full.mkdir()
    proc = _cli("train", "--solver", str(_solver_file(full, digits, body, batch=16)), "--no-progress")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    cut = tmp_path / "cut"
    cut.mkdir()
    solver = _solver_file(cut, digits, body, batch=16)
    proc = _cli("train", "--solver", str(solver), "--no-progress")
    state = cut / "lenet_iter_40.solverstate"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert state.exists()
    assert not (cut / "lenet_iter_400.caffemodel").exists(), "the run finished before it was killed"
    leftovers = [p.name for p in cut.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert all(not p.endswith(".caffemodel") or "iter_" in p for p in leftovers)
    proc = _cli("train", "--solver", str(solver), "--snapshot", str(state), "--no-progress")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Resumed from" in out
    a, b = _weights(full / "lenet_iter_400.caffemodel"), _weights(cut / "lenet_iter_400.caffemodel")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the log kept its rows from before the resume point (written with the snapshot): the same as the whole run's
    assert (cut / "lenet_log.csv").read_text() == (full / "lenet_log.csv").read_text()
    assert not [p.name for p in cut.iterdir() if p.name.endswith((".tmp", ".tmp.png"))]  # removed on the resume


def test_ctrl_c_snapshots_and_stops(tmp_path, digits):
    body = BASE + " max_iter: 100000 display: 10 test_iter: 1 test_interval: 100000 test_initialization: false"
    solver = _solver_file(tmp_path, digits, body, batch=16)
    proc = _cli("train", "--solver", str(solver), "--no-progress")
    deadline = time.time() + 120
    line = ""
    while "Iteration 20," not in line and time.time() < deadline:
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    snaps = sorted(tmp_path.glob("lenet_iter_*.solverstate"))
    assert len(snaps) == 1, out
    it = int(re.search(r"_iter_(\d+)", snaps[0].name).group(1))
    assert it >= 20 and (tmp_path / f"lenet_iter_{it}.caffemodel").exists()
    assert "Interrupted" in out


def test_nan_stops_with_iteration_and_layer(tmp_path, digits):
    path = _solver_file(
        tmp_path,
        digits,
        'base_lr: 1e8 lr_policy: "fixed" momentum: 0.9 max_iter: 50 snapshot: 1 random_seed: 1 display: 0',
        batch=16,
    )
    solver = Solver(load_solver_prototxt(str(path)), source=str(path), log=lambda s: None, progress=False)
    with pytest.raises(TrainingDiverged) as info:
        solver.solve()
    msg = str(info.value)
    it = int(re.search(r"iteration (\d+)", msg).group(1))
    assert re.search(r"layer '\w+'", msg) and ("nan" in msg.lower() or "inf" in msg.lower())
    assert f"lenet_iter_{it}.caffemodel" in msg  # the last good snapshot is named
    assert (tmp_path / f"lenet_iter_{it}.caffemodel").exists()
    assert not (tmp_path / f"lenet_iter_{it + 1}.caffemodel").exists()
    good = _weights(tmp_path / f"lenet_iter_{it}.caffemodel")
    assert all(np.all(np.isfinite(w)) for w in good)


def test_crema_test_scores_a_snapshot(tmp_path, digits):
    path = _solver_file(tmp_path, digits, BASE + " max_iter: 60 display: 0", batch=32)
    Solver(load_solver_prototxt(str(path)), source=str(path), log=lambda s: None, progress=False).solve()
    proc = _cli(
        "test",
        "--model",
        str(tmp_path / "net.prototxt"),
        "--weights",
        str(tmp_path / "lenet_iter_60.caffemodel"),
        "--iterations",
        "5",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    acc = float(re.search(r"^accuracy = ([0-9.]+)", out, re.MULTILINE).group(1))
    assert 0.5 < acc <= 1.0
    assert re.search(r"^loss = [0-9.]+ \(\* 1 = [0-9.]+ loss\)", out, re.MULTILINE)


def test_train_cli_errors(tmp_path):
    bad = tmp_path / "s.prototxt"
    bad.write_text('net: "nope.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1')
    proc = _cli("train", "--solver", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "nope.prototxt" in err and "Traceback" not in err
    env = dict(os.environ)
    proc = _cli("train", "--solver", str(tmp_path / "missing.prototxt"), env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "missing.prototxt" in err


def test_crema_test_refuses_a_deploy_prototxt():
    deploy = ROOT / "models/lenet/deploy.prototxt"
    proc = _cli("test", "--model", str(deploy), "--weights", str(ROOT / "models/lenet/lenet.caffemodel"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and not out, out
    assert err.strip() == (
        f"crema: error: {deploy}: no data layer in its TEST phase; its input blob(s) data come from an Input layer, "
        f"as in a deploy prototxt, so there is nothing to score: give the train/test prototxt (with a Data layer for "
        f"TEST), or classify images with `crema classify`"
    )
