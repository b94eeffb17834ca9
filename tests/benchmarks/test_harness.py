"""The benchmark harness (benchmarks/harness.py, benchmarks/__main__.py): checks before timing, refusal to time a
wrong result, the reports it writes. Tiny cases and --quick only: these tests time nothing worth reading."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from benchmarks import harness, subjects
from benchmarks.__main__ import main


def test_compare_states_error_and_tolerance():
    line = harness.compare("x", np.float32([1.0, 2.0]), np.float64([1.0, 2.0 + 1e-6]), rtol=1e-5)
    assert "max abs err" in line
    with pytest.raises(harness.Mismatch, match=r"max abs err 1\.000e-02 > tol"):
        harness.compare("x", np.float32([1.0, 2.01]), np.float64([1.0, 2.0]), rtol=1e-3)
    with pytest.raises(harness.Mismatch):  # NaN never passes
        harness.compare("x", np.float32([np.nan]), np.float64([0.0]), atol=1.0)
    with pytest.raises(harness.Mismatch, match="shape"):
        harness.compare("x", np.zeros(3), np.zeros(4))


def _case(ours, target=None):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    want = a * 2

    def check():
        return [harness.compare("double", ours(a), want)]

    return harness.Case("gemm", "double", lambda: ours(a), {"numpy": lambda: a + a}, 12.0, check, target, 2, 2)


def test_run_case_times_every_side_in_rounds():
    result = harness.run_case(_case(lambda a: a * 2, ("numpy", 0.0)), pause=0.0)
    assert result.error is None and result.checks
    assert len(result.runs["crema"]) == len(result.runs["numpy"]) == 4
    assert result.ratio("numpy") > 0 and result.target_met() is True
    line = harness.line(result, 1e9, ["numpy"])
    assert " ms |" in line and "x numpy" in line and "target 0.0x numpy: met" in line


def _timed_result(crema: list[list[float]], ref: list[list[float]], target=("numpy", 1.2)) -> harness.Result:
    """A Result with these calls a round (rounds of the same length for both sides), as run_case leaves them."""
    case = harness.Case("net", "scripted", lambda: None, {"numpy": lambda: None}, 0.0, None, target, 0, len(crema))
    result = harness.Result(case)
    result.runs = {"crema": [t for r in crema for t in r], "numpy": [t for r in ref for t in r]}
    return result


def test_spread_of_a_ratio_comes_from_its_rounds():
    steady = _timed_result([[1.0, 1.0]] * 7, [[2.0, 2.1]] * 7)
    assert steady.rounds_of("crema") == [[1.0, 1.0]] * 7
    assert steady.target_spread() == (2.05, 2.05)  # every resampling: the same medians
    # a slow spell over crema's first four rounds and the reference's first two: the median ratio 0.84x, but rounds
    # drawn otherwise give up to 1.25x
    crema = [[1.5, 1.5]] * 4 + [[1.0, 1.0]] * 3
    ref = [[1.6, 1.6]] * 2 + [[1.25, 1.25]] * 5
    spell = _timed_result(crema, ref)
    lo, hi = spell.target_spread()
    assert spell.target_ratio() == pytest.approx(1.25 / 1.5)
    assert lo == pytest.approx(1.25 / 1.5) and hi == pytest.approx(1.25) and lo < hi
    assert spell.target_spread() == (lo, hi)  # a fixed seed: the same runs, the same range
    assert f"target 1.2x numpy: MISSED ({lo:.2f}-{hi:.2f}x)" in harness.line(spell, None, ["numpy"])
    table = harness.markdown([spell], None, {"when": "now"})
    assert f"**missed** ({lo:.2f}-{hi:.2f}x)" in table and "resamplings of the case's rounds" in table
    assert harness.to_json([spell], {})["results"][0]["target_ratio_spread"] == (lo, hi)
    # no target, or sides of different round counts: no range
    assert _timed_result([[1.0]] * 3, [[2.0]] * 3, target=None).target_spread() is None
    assert _timed_result([[1.0]] * 3, [[2.0]] * 3).spread("torch") is None
    uneven = _timed_result([[1.0]] * 3, [[2.0]] * 3)
    uneven.runs["numpy"].append(2.0)  # 4 calls in 3 rounds: no split, no range (not a range over the wrong rounds)
    assert uneven.rounds_of("numpy") == [] and uneven.target_spread() is None


class _Scripted:
    """A stand-in for harness.Calm: its answers in order, then calm."""

    def __init__(self, *answers: bool):
        self.answers, self.left, self.asked = list(answers), 100.0, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answers.pop(0) if self.answers else True


def test_a_round_that_a_slow_spell_touched_is_taken_again(monkeypatch):
    monkeypatch.setattr(harness, "CALM_POLL_S", 0.0)
    calls = []
    case = _case(lambda a: (calls.append(1), a * 2)[1], ("numpy", 0.0))
    # the probe before crema's first round: calm; after it: slow (dropped); then slow once more while waiting; calm
    calm = _Scripted(True, False, False, True)
    result = harness.run_case(case, pause=0.0, calm=calm)
    assert result.dropped == 1 and result.slow == 0
    assert len(result.runs["crema"]) == len(result.runs["numpy"]) == 4  # 2 rounds of 2, the dropped one not among them
    # crema: the timing call, the check's call, the warm-up, then (untimed + 2 timed) x 3 rounds taken
    assert len(calls) == 3 + 3 * 3
    assert calm.asked == 1 + 1 + 2 + 1 + 3  # the first probe, the dropped round's, two waits, the retake's, 3 more
    assert calm.left < 100.0
    assert "1 rounds retaken" in harness.line(result, 1e9, ["numpy"])
    row = harness.to_json([result], {})["results"][0]
    assert row["rounds_retaken"] == 1 and row["rounds_kept_slow"] == 0
    foot = harness.markdown([result], 1e9, {"calm": True})
    assert "1 rounds (of 4, every side alike) were taken again" in foot and "0 kept slow" in foot


def test_rounds_are_kept_and_counted_once_the_case_waited_long_enough(monkeypatch):
    monkeypatch.setattr(harness, "CALM_CASE_S", 0.0)
    result = harness.run_case(_case(lambda a: a * 2), pause=0.0, calm=_Scripted(*[False] * 20))
    assert result.dropped == 0 and result.slow == 4  # every side's every round, kept as it came
    assert len(result.runs["crema"]) == len(result.runs["numpy"]) == 4
    assert "4 kept slow" in harness.line(result, 1e9, ["numpy"])
    out_of_run = _Scripted(*[False] * 20)
    out_of_run.left = 0.0  # the run's waiting spent: the same
    assert harness.run_case(_case(lambda a: a * 2), pause=0.0, calm=out_of_run).slow == 4


def test_calm_probe_measures_every_thread_against_the_peak():
    from kernels.tiling import VW

    probe = harness.Calm(1, 1e9, seconds=1e-4)
    # 8 ymm chains under AVX2 (16 spill: every round read as slow); 16 zmm chains under AVX-512 (8 read 84% of the
    # peak on a Xeon with two 512-bit FMA ports, below CALM: every round read as slow there)
    assert probe.lanes == (16 if VW == 16 else 8) * VW
    assert probe.rate() > 1e8  # a vector FMA loop: far above 0.1 GFLOP/s on any x86-64 core
    assert probe() is True  # 1 GFLOP/s: every machine is calm against that
    assert harness.Calm(1, 1e15, seconds=1e-4)() is False  # no core reaches a PFLOP/s


def test_settle_waits_for_threads_that_spin_after_a_call():
    import threading
    import time

    def spin(seconds: float) -> None:  # a framework's worker thread spinning on after its call
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    assert harness.settle(0.0) < 0.1  # an idle process: one window
    worker = threading.Thread(target=spin, args=(0.3,))
    worker.start()
    try:
        waited = harness.settle(0.0)
    finally:
        worker.join()
    assert 0.2 <= waited <= harness.SETTLE_MAX_S + 0.1


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_busy_run_times_every_side_and_crema_on_one_thread():
    saved = numba.get_num_threads()
    numba.set_num_threads(2)
    seen = []
    case = _case(lambda a: (seen.append(numba.get_num_threads()), a * 2)[1], ("numpy", 0.0))
    try:
        result = harness.run_case(case, pause=0.0)
        seen.clear()
        harness.run_busy(result, 1, pause=0.0)
        assert numba.get_num_threads() == 2  # the single-thread side put the count back
    finally:
        numba.set_num_threads(saved)
    assert result.busy == 1
    assert len(result.busy_runs["crema"]) == len(result.busy_runs["numpy"]) == len(result.busy_single) == 4
    # each side: a warm-up call, then per round an untimed call and 2 timed ones (2 rounds): 7 calls; crema's side
    # (a plain callable here, no net to adapt) on the 2 threads asked for, the single-thread side on 1
    assert seen.count(2) == seen.count(1) == 7
    assert result.slowdown("crema") > 0 and result.busy_vs_single() > 0
    assert result.busy_target_met() in (True, False)
    line = harness.busy_line(result)
    assert "with 1 busy process(es): crema" in line and "numpy" in line and "1 thread" in line
    assert "crema slowdown" in harness.busy_markdown([result])
    assert harness.to_json([result], {})["results"][0]["busy"]["processes"] == 1
    assert not harness.busy_markdown([harness.run_case(case, pause=0.0)])  # no busy run: no table


def test_busy_processes_end_even_without_the_harness():
    procs = harness.start_busy(1)
    try:
        assert procs[0].poll() is None
    finally:
        harness.stop_busy(procs)
    assert procs[0].poll() is not None
    assert f"+ {harness.BUSY_MAX_S}" in " ".join(procs[0].args)  # bounded: the spin loop has a deadline


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches the spinner through /proc")
def test_busy_processes_die_with_a_killed_harness(tmp_path):
    """A harness killed by a signal (no `finally` runs) takes its busy processes with it."""
    import os
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "pid"
    code = (
        "import sys, time\nfrom benchmarks import harness\nprocs = harness.start_busy(1)\n"
        f"open({str(pid_file)!r}, 'w').write(str(procs[0].pid))\ntime.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break  # ended (a zombie until its new parent reaps it)
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the busy process outlived the harness")


def test_wrong_result_is_never_timed():
    result = harness.run_case(_case(lambda a: a * 2 + 1e-3), pause=0.0)
    assert result.error and result.error.startswith("MISMATCH")
    assert not result.runs  # nothing timed
    line = harness.line(result, 1e9, ["numpy"])
    assert "MISMATCH" in line and " ms " not in line
    assert result.target_met() is None


def test_measured_peak_is_plausible():
    import numba

    peak = harness.measure_peak(1, seconds=0.02)
    assert 1e9 < peak < 1e13  # 1 GFLOP/s .. 10 TFLOP/s per core
    assert numba.get_num_threads() >= 1


def test_readme_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{harness.README_BEGIN}\nold\n{harness.README_END}\nrest\n")
    assert harness.update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{harness.README_BEGIN}\n| new |\n{harness.README_END}\nrest\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not harness.update_readme(plain, "| new |\n") and plain.read_text() == "no markers\n"


def test_project_readme_has_the_markers():
    text = (subjects.ROOT / "README.md").read_text()
    assert text.index(harness.README_BEGIN) < text.index(harness.README_END)


def test_main_quick_gemm_writes_every_report(tmp_path, capsys):
    out = {k: tmp_path / f"b.{k}" for k in ("json", "md", "png")}
    code = main(
        ["--quick", "--threads", "1", "--only", "gemm", "--filter", "M=N=K=256"]
        + ["--json", str(out["json"]), "--markdown", str(out["md"]), "--chart", str(out["png"])]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "sgemm M=N=K=256" in text and "GFLOP/s" in text and "x numpy" in text
    data = json.loads(out["json"].read_text())
    (row,) = data["results"]
    assert row["error"] is None and row["checks"] and row["median_s"]["crema"] > 0
    assert data["meta"]["threads"] == 1 and data["meta"]["peak_gflops"] > 1
    assert "| gemm | sgemm M=N=K=256 |" in out["md"].read_text()
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_refuses_to_time_a_wrong_kernel(tmp_path, capsys, monkeypatch):
    import kernels.gemm

    real = kernels.gemm.gemm

    def off_by_a_little(a, b, **kw):
        out = real(a, b, **kw)
        out += 1e-2
        return out

    monkeypatch.setattr(kernels.gemm, "gemm", off_by_a_little)
    code = main(
        ["--quick", "--threads", "1", "--only", "gemm", "--filter", "M=N=K=256", "--json", str(tmp_path / "b.json")]
        + ["--markdown", str(tmp_path / "b.md"), "--chart", str(tmp_path / "b.png")]
    )
    text = capsys.readouterr().out
    assert code == 1
    (line,) = [t for t in text.splitlines() if "sgemm M=N=K=256" in t]
    assert "MISMATCH" in line and " ms " not in line


def test_published_results_only_when_asked(capsys):
    """A run without --publish writes nothing under benchmarks/results/; --quick cannot be published."""
    from benchmarks import __main__ as bench_main

    results = subjects.ROOT / "benchmarks/results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    assert main(["--quick", "--threads", "1", "--only", "gemm", "--filter", "M=N=K=256"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before
    assert "raw runs:" not in capsys.readouterr().out
    for flag in ("--publish", "--readme"):
        with pytest.raises(SystemExit):
            bench_main.parse(["--quick", flag])
        assert "not published" in capsys.readouterr().err
    args = bench_main.parse(["--publish"])
    assert (args.json, args.markdown, args.chart) == (results / "bench.json", results / "bench.md", results / "bench.png")


def test_onnx_reference_net_matches_crema():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from benchmarks.references import onnx_forward
    from net import Net

    net = Net.load(subjects.ROOT / "models/lenet/deploy.prototxt")
    subjects.randomize(net, seed=3)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    got = net.forward(data=x)["prob"]
    want = onnx_forward(net, threads=1)(x)
    assert float(np.max(np.abs(got - want))) <= 1e-5  # softmax, float32 on both sides


def test_train_case_checks_one_step_against_torch(tmp_path):
    pytest.importorskip("torch")
    (case,) = subjects.train_cases(np.random.default_rng(0), 1, tmp_path)
    case.ours()
    lines = case.check()
    assert any("weights after 1 step vs torch" in t for t in lines)
    assert not math.isnan(float(lines[0].split("max abs err ")[1].split("<=")[0]))
