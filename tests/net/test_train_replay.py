"""net.train_replay: a steady training pass (forward_loss, backward) and a solver's SGD update recorded once and
replayed natively give every iteration the bits of the Python pass (LeNet with an Input layer and with a Data layer
whose tops take new arrays, iter_size 2, Nesterov, 1 and 2 threads), fall back when an array changes under them, and
are refused where a layer does work outside its task calls or a net never runs backward."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from net import Net, replay, train_replay
from net.datasets import idx_paths, write_idx
from net.layers.data import DataLayer
from net.prototxt_loader import parse_text
from net.solver import Solver

ROOT = Path(__file__).resolve().parents[2]
BATCH = 8
HEAD = f"""name: "LeNet"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {BATCH} }} }} }}
"""


def _lenet_body() -> str:
    text = (ROOT / "examples/mnist/lenet_train_test.prototxt").read_text()
    return text[text.index("layer {", text.index('name: "conv1"') - 40) :]


def _solver(tmp_path: Path, head: str = HEAD, body: str | None = None, **extra) -> Solver:
    net = tmp_path / "net.prototxt"
    net.write_text(head + (_lenet_body() if body is None else body))
    fields = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": '"inv"', "gamma": 0.0001,
              "power": 0.75, "max_iter": 1000, "random_seed": 3, **extra}  # fmt: skip
    text = f'net: "{net}"\n' + "".join(f"{k}: {v}\n" for k, v in fields.items())
    return Solver(parse_text(text, "SolverParameter"), log=lambda _: None, progress=False)


def _state(solver: Solver) -> list[np.ndarray]:
    params = [b.data for layer in solver.net.layers for b in layer.blobs]
    return [*params, *solver.history]


def _same_bits(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(a, b))


def _step_both(fast: Solver, slow: Solver, monkeypatch, feed=None) -> None:
    """One iteration of each: `fast` with the replays on, `slow` with them off (the Python passes)."""
    for solver, on in ((fast, True), (slow, False)):
        monkeypatch.setattr(replay, "ENABLED", on)
        if feed is not None:
            feed(solver)
        solver.step(1)
    monkeypatch.setattr(replay, "ENABLED", True)


def _random_feed(seed: int):
    rng = np.random.default_rng(seed)
    batches = {}

    def feed(solver: Solver) -> None:
        it = solver.iter
        if it not in batches:
            batches[it] = (
                rng.random((BATCH, 1, 28, 28), dtype=np.float32),
                rng.integers(0, 10, BATCH).astype(np.float32),
            )
        solver.net.blobs["data"][...] = batches[it][0]
        solver.net.blobs["label"][...] = batches[it][1]

    return feed


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["SGD", "Nesterov"])
def test_lenet_iterations_replayed_have_the_python_bits(tmp_path, monkeypatch, threads, kind) -> None:
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        fast, slow = _solver(tmp_path, type=f'"{kind}"'), _solver(tmp_path, type=f'"{kind}"')
        feed = _random_feed(1)
        for _ in range(8):
            _step_both(fast, slow, monkeypatch, feed)
            assert _same_bits(_state(fast), _state(slow))
            assert fast.losses[-1] == slow.losses[-1]
        assert isinstance(fast.net._plan.train.replay, train_replay.TrainReplay)
        assert isinstance(fast._update_state.replay, train_replay.UpdateReplay)
        # every layer's forward after the data and every backward but the loss's runs natively
        rp = fast.net._plan.train.replay
        assert sum(len(prog) for _, _, prog in rp.forward if prog is not None) > 0
        assert any(prog is not None for _, _, prog in rp.backward), "no backward unit replayed"
    finally:
        numba.set_num_threads(saved)


def test_iter_size_two_replays_the_first_backward_and_accumulates_in_python(tmp_path, monkeypatch) -> None:
    """Within an iteration of iter_size 2 the second backward accumulates into the diffs: its pending-zero flags
    differ from the recorded pass's, so it runs as Python (the forward replayed both times)."""
    fast, slow = _solver(tmp_path, iter_size=2), _solver(tmp_path, iter_size=2)
    feed = _random_feed(2)
    for _ in range(6):
        _step_both(fast, slow, monkeypatch, feed)
        assert _same_bits(_state(fast), _state(slow))
    assert isinstance(fast.net._plan.train.replay, train_replay.TrainReplay)


def test_a_parameter_array_replaced_sends_the_pass_back_to_python_and_records_again(tmp_path, monkeypatch) -> None:
    fast, slow = _solver(tmp_path), _solver(tmp_path)
    feed = _random_feed(3)
    for _ in range(5):
        _step_both(fast, slow, monkeypatch, feed)
    for solver in (fast, slow):
        blob = solver.net.layers[[layer.name for layer in solver.net.layers].index("ip1")].blobs[0]
        blob.data = blob.data.copy()  # a new array (as loading weights by assignment would)
    for _ in range(6):
        _step_both(fast, slow, monkeypatch, feed)
        assert _same_bits(_state(fast), _state(slow))
    assert fast.net._plan.train.lost == 1 and isinstance(fast.net._plan.train.replay, train_replay.TrainReplay)


@pytest.fixture
def mnist_like(tmp_path):
    """A 40-image IDX data set in MNIST's layout (random pixels, labels i % 10)."""
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        ipath, lpath = idx_paths(tmp_path / "mini", split)
        write_idx(ipath, rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8))
        write_idx(lpath, (np.arange(40) % 10).astype(np.uint8))
    return tmp_path / "mini"


def _data_head(source: Path) -> str:
    return f"""name: "LeNet"
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{source}/train" batch_size: {BATCH} backend: LMDB }} }}
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{source}/test" batch_size: {BATCH} backend: LMDB }} }}
"""


@pytest.mark.parametrize("in_place", [True, False])
def test_data_layer_training_replays_with_the_python_bits(tmp_path, mnist_like, monkeypatch, in_place) -> None:
    """The data layers run first, as Python, before the replay's guards are asked: a batch given new arrays (the Data
    layer's tops when it cannot write in place) sends that pass to Python instead of replaying it on the last batch's
    arrays. Tests every 4 iterations on the test net (forward only: never recorded again)."""
    if not in_place:
        produce = DataLayer.produce
        monkeypatch.setattr(DataLayer, "produce", lambda self, bottom, top, in_place=False: produce(self, bottom, top))
    head = _data_head(mnist_like)
    extra = {"test_iter": 2, "test_interval": 4, "display": 0}
    fast, slow = _solver(tmp_path, head, **extra), _solver(tmp_path, head, **extra)
    for _ in range(12):  # the data set's epoch is 5 batches: epochs reshuffle from the net's generator
        _step_both(fast, slow, monkeypatch)
        assert _same_bits(_state(fast), _state(slow))
        assert fast.losses[-1] == slow.losses[-1]
    st = fast.net._plan.train
    assert isinstance(st.replay, train_replay.TrainReplay) if in_place else st.replay is False
    assert fast.test_nets[0]._plan.train.replay is False


def test_a_layer_with_numpy_work_outside_its_calls_keeps_the_python_pass(tmp_path, monkeypatch) -> None:
    """conv1 with pad 1 takes the im2col weight gradient, whose chunks' partial sums are added in NumPy: the check
    finds the replayed pass differs and the net keeps its Python passes (same bits as a net without replays)."""
    body = _lenet_body().replace("kernel_size: 5\n", "kernel_size: 5\n    pad: 1\n", 1)
    assert "pad: 1" in body
    fast, slow = _solver(tmp_path, body=body), _solver(tmp_path, body=body)
    feed = _random_feed(4)
    for _ in range(6):
        _step_both(fast, slow, monkeypatch, feed)
        assert _same_bits(_state(fast), _state(slow))
    assert fast.net._plan.train.replay is False


def test_forward_loss_alone_is_recorded_once_then_left_alone() -> None:
    net = Net(parse_text(HEAD + _lenet_body(), "NetParameter"), phase="train", seed=0)
    net.blobs["data"][...] = np.random.default_rng(0).random((BATCH, 1, 28, 28), dtype=np.float32)
    net.blobs["label"][...] = np.arange(BATCH) % 10
    losses = [net.forward_loss() for _ in range(train_replay.RECORD_AT + 2)]
    assert net._plan.train.replay is False and len(set(losses)) == 1


def test_replays_off_with_the_switch(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(replay, "ENABLED", False)
    solver = _solver(tmp_path)
    feed = _random_feed(5)
    for _ in range(5):
        feed(solver)
        solver.step(1)
    st = solver.net._plan.train
    assert st is None or st.replay is None
    assert solver._update_state.replay is None


def test_the_recording_pass_leaves_what_the_python_pass_leaves(tmp_path, monkeypatch) -> None:
    """The pass that records and checks (four more passes, from the blobs as it found them) ends with the blobs, the
    diffs' pending-zero flags and the net's generator as the Python pass leaves them."""
    fast, slow = _solver(tmp_path), _solver(tmp_path)
    feed = _random_feed(6)
    for _ in range(train_replay.RECORD_AT - 1):
        _step_both(fast, slow, monkeypatch, feed)
    for solver, on in ((fast, True), (slow, False)):
        monkeypatch.setattr(replay, "ENABLED", on)
        feed(solver)
        solver.net.clear_param_diffs()
        solver.net.forward_loss()
        solver.net.backward()
    monkeypatch.setattr(replay, "ENABLED", True)
    assert isinstance(fast.net._plan.train.replay, train_replay.TrainReplay)
    assert fast.net.rng.bit_generator.state == slow.net.rng.bit_generator.state
    for mine, theirs in zip(train_replay._all_blobs(fast.net), train_replay._all_blobs(slow.net)):
        assert mine.name == theirs.name and mine._zero == theirs._zero
        assert _same_bits([mine.data], [theirs.data]), mine.name
        if theirs._diff is not None:
            assert _same_bits([mine._diff], [theirs._diff]), mine.name


def test_a_label_out_of_range_raises_in_a_replayed_pass_as_in_python(tmp_path, monkeypatch) -> None:
    """The loss layer's tasks check the labels; a replayed pass asks that check after its forward
    (``replay_raise``) and raises the layer's error, as the Python pass does."""
    solver = _solver(tmp_path)
    feed = _random_feed(7)
    for _ in range(train_replay.RECORD_AT + 1):
        feed(solver)
        solver.step(1)
    assert isinstance(solver.net._plan.train.replay, train_replay.TrainReplay)
    feed(solver)
    solver.net.blobs["label"][3] = 12.0
    with pytest.raises(ValueError, match="SoftmaxWithLoss 'loss': label 12 out of range for 10 classes"):
        solver.step(1)


def test_a_transposed_inner_product_with_zero_biases_and_iter_size_three(tmp_path, monkeypatch) -> None:
    """ip1 with transpose takes the GEMM and then a bias (and ReLU) pass over its rows, a task since this round: the
    recording pass (the first iteration's third pass, biases still their filler's zeros) and every later one have
    the Python pass's bits. The check runs one round with the parameters shifted, so work done from the parameters
    alone in Python could not pass it on zero biases."""
    body = _lenet_body().replace("num_output: 500\n", "num_output: 500\n    transpose: true\n", 1)
    assert "transpose: true" in body
    fast, slow = _solver(tmp_path, body=body, iter_size=3), _solver(tmp_path, body=body, iter_size=3)
    feed = _random_feed(8)
    for _ in range(5):
        _step_both(fast, slow, monkeypatch, feed)
        assert _same_bits(_state(fast), _state(slow))
    assert isinstance(fast.net._plan.train.replay, train_replay.TrainReplay)
