"""Set-up errors are clear ValueErrors, checked from the shapes before anything is filled or allocated (issue 14
item 8): a 3-D input into a Convolution (was ZeroDivisionError in the filler), `kernel_size: 4294967295` (was
OverflowError), huge dimensions (was MemoryError, or a machine swapping). A net whose blobs would not fit in the
memory budget (--memory-budget, CREMA_MEMORY_BUDGET, else half the RAM) is refused with the figures."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from net import Net
from net.memory import ENV, Budget, MemoryBudgetError, parse_budget, resolve_budget, total_ram
from net.net import NetError
from tests.conftest import ROOT

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
CONV = (
    'layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
    '  convolution_param {{ num_output: 20 kernel_size: {k} weight_filler {{ type: "xavier" }} }} }}\n'
)
RELU = 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'


def _net_text(dims: str, k: str = "5", extra: str = "") -> str:
    return 'name: "x"\n' + INPUT.format(dims=" ".join(f"dim: {d}" for d in dims.split())) + CONV.format(k=k) + extra


def _quick(fn) -> Exception:
    """The exception `fn` raises; it must come at once and allocate next to nothing."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned for the caller's checks
        error = exc
    else:
        raise AssertionError("no error raised")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 50_000_000, f"{peak} bytes allocated before the error"
    return error


def test_input_without_spatial_axes_into_convolution_is_named_before_the_filler():
    # (N, C, L) is a 1-D convolution, as in Caffe (N-D convolution); (N, C) has no spatial axis at all.
    err = _quick(lambda: Net.from_string(_net_text("1 28")))
    assert isinstance(err, NetError)
    assert str(err) == (
        "Convolution 'conv1': 0 spatial axes after channel axis 1 of input (1, 28): crema supports 1 to 3"
    )


def test_kernel_larger_than_its_input_is_refused_before_the_filler():
    err = _quick(lambda: Net.from_string(_net_text("1 1 28 28", k="4294967295")))
    assert isinstance(err, NetError)
    assert str(err).startswith("Convolution 'conv1': bottom 'data': conv2d: output would be")
    assert "smaller than the dilated kernel 4294967295x4294967295" in str(err)


def test_empty_parameter_dimension_names_layer_and_parameter():
    text = 'name: "x"\n' + INPUT.format(dims="dim: 0 dim: 3")
    text += 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 '
    text += 'axis: 0 weight_filler { type: "xavier" } } }'
    err = _quick(lambda: Net.from_string(text))
    assert isinstance(err, NetError)
    assert str(err) == "InnerProduct 'ip': its weight would have shape (2, 0); dimensions must be >= 1"


def test_huge_parameter_is_refused_before_it_is_filled():
    text = 'name: "x"\n' + INPUT.format(dims="dim: 1 dim: 1 dim: 28 dim: 28")
    text += 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
    text += 'num_output: 2000000000 weight_filler { type: "xavier" } } }'
    budget = parse_budget("12G", "--memory-budget")
    err = _quick(lambda: Net.from_string(text, memory_budget=budget))
    assert isinstance(err, MemoryBudgetError)
    need = 2_000_000_000 * 784 * 4 / 2**30
    assert str(err) == (
        f"net 'x': InnerProduct 'ip': its weight of shape (2000000000, 784) needs {need:.1f} GiB; "
        f"the budget is 12.0 GiB (--memory-budget)"
    )


def test_parameters_count_against_what_earlier_layers_left():
    text = 'name: "x"\n' + INPUT.format(dims="dim: 1 dim: 1000")
    for i in range(3):  # 3 x 4 MB of weights in a 10 MB budget: the third is refused before it is filled
        bottom = "data" if i == 0 else f"ip{i - 1}"
        text += f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "{bottom}" top: "ip{i}" '
        text += "inner_product_param { num_output: 1000 bias_term: false } }\n"
    with pytest.raises(MemoryBudgetError, match=r"InnerProduct 'ip2': its weight of shape \(1000, 1000\) needs 3.8 MiB "
                       r"\(7.6 MiB taken by the parameters before it\); the budget is 10.0 MiB \(test\)"):  # fmt: skip
        Net.from_string(text, memory_budget=Budget(10 * 2**20, "test"))


def _conv_net_need(batch: int, train: bool = False) -> float:
    """What the 'x' net with input (batch, 3, 227, 227) and conv1 (20 outputs, 11x11) takes, in bytes."""
    blobs = batch * 3 * 227 * 227 + batch * 20 * 217 * 217
    params = 20 * 3 * 11 * 11 + 20
    return 4 * (blobs + params) * (2 if train else 1)


def test_huge_batch_is_refused_with_its_figures():
    budget = parse_budget("12G", "--memory-budget")
    err = _quick(lambda: Net.from_string(_net_text("5000000 3 227 227", k="11", extra=RELU), memory_budget=budget))
    assert isinstance(err, MemoryBudgetError)
    need = _conv_net_need(5_000_000) / 2**30
    assert str(err) == (
        f"net 'x' needs {need:.1f} GiB for its blobs at batch 5000000; the budget is 12.0 GiB (--memory-budget)"
    )


def test_budget_from_the_environment_and_the_default(monkeypatch):
    text = _net_text("5000000 3 227 227", k="11")
    monkeypatch.setenv(ENV, "2G")
    with pytest.raises(MemoryBudgetError, match=r"the budget is 2\.0 GiB \(CREMA_MEMORY_BUDGET=2G\)$"):
        Net.from_string(text)
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match=r"^CREMA_MEMORY_BUDGET: expected a size such as 12G"):
        Net.from_string(text)
    monkeypatch.delenv(ENV)
    ram = total_ram()
    assert ram is not None
    assert resolve_budget().bytes == int(ram * 0.5)
    with pytest.raises(MemoryBudgetError, match=r"\(50% of this machine's [0-9.]+ GiB RAM; raise it with "
                       r"--memory-budget or CREMA_MEMORY_BUDGET\)$"):  # fmt: skip
        Net.from_string(text)


def test_sizes():
    assert parse_budget("12G", "f").bytes == 12 * 2**30
    assert parse_budget("1.5 GiB", "f").bytes == 3 * 2**29
    assert parse_budget("500MB", "f").bytes == 500 * 2**20
    assert parse_budget("1048576", "f").bytes == 2**20
    assert parse_budget("25%", "f").bytes == int(total_ram() * 0.25)
    for bad in ("", "12Q", "-1G", "0", "G"):
        with pytest.raises(ValueError, match="^f: "):
            parse_budget(bad, "f")


def test_a_train_net_counts_its_gradients():
    text = _net_text("64 3 227 227", k="11")
    test_need = _conv_net_need(64)
    budget = Budget(int(test_need * 1.5), "b")  # fits at TEST, not at TRAIN (data and diffs)
    Net.from_string(text, memory_budget=budget, phase="test")
    with pytest.raises(MemoryBudgetError, match=r"for its blobs and their gradients at batch 64; the budget is"):
        Net.from_string(text, memory_budget=budget, phase="train")


def test_reshape_checks_before_it_allocates_and_keeps_the_net_usable():
    net = Net.from_string(_net_text("2 1 28 28", extra=RELU), memory_budget=Budget(2**30, "--memory-budget"))
    x = np.ones((2, 1, 28, 28), np.float32)
    before = net.forward(data=x)["conv1"]
    err = _quick(lambda: net.reshape({"data": (10**7, 1, 28, 28)}))
    assert isinstance(err, MemoryBudgetError)
    assert re.fullmatch(r"net 'x' needs [0-9.]+ GiB for its blobs at batch 10000000; the budget is 1\.0 GiB "
                        r"\(--memory-budget\)", str(err))  # fmt: skip
    assert net.blob("data").shape == (2, 1, 28, 28) and net.blob("conv1").shape == (2, 20, 24, 24)
    assert np.array_equal(net.forward(data=x)["conv1"], before)
    net.reshape({"data": (3, 1, 28, 28)})  # within the budget: zeros of the new shapes
    assert net.blob("data").shape == (3, 1, 28, 28) and not net.blob("data").data.any()
    assert net.blob("conv1").shape == (3, 20, 24, 24) and net.blob("conv1").data.flags.writeable
    assert net.forward(data=np.ones((3, 1, 28, 28), np.float32))["conv1"].shape == (3, 20, 24, 24)
    with pytest.raises(ValueError, match=r"input 'data': expected 4 dimensions like \(3, 1, 28, 28\), got \(3, 1\)"):
        net.reshape({"data": (3, 1)})


def test_absurd_dimensions_are_refused_by_name():
    dims = " ".join(["dim: 4294967295"] * 4)
    err = _quick(lambda: Net.from_string('name: "x"\n' + INPUT.format(dims=dims)))
    assert isinstance(err, NetError)
    assert "blob 'data'" in str(err) and "more than any memory" in str(err)
    assert math.prod([4294967295] * 4) > 2**64


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crema", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_verbs_take_a_memory_budget(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        'net_param { name: "big" ' + INPUT.format(dims="dim: 100000 dim: 3 dim: 64 dim: 64") + "}\n"
        'base_lr: 0.1 lr_policy: "fixed" max_iter: 1\n'
    )
    proc = _cli("train", "--solver", str(solver), "--memory-budget", "1G", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "crema: error: net 'big' needs 9.2 GiB for its blobs and their gradients at batch 100000; "
        "the budget is 1.0 GiB (--memory-budget)"
    )
    proc = _cli("train", "--solver", str(solver), "--memory-budget", "lots")
    assert proc.returncode == 2 and "argument --memory-budget: expected a size such as 12G" in proc.stderr
