"""Snapshots and the training log across resumes (issue 14 item 9, item 17 in part): the log keeps the rows before
the resume point; temp files left by a kill are removed when a run starts; a .solverstate carries its length and
checksum, so a cut or damaged one is refused by name (older ones load with a note); a missing key or bad JSON is a
clear error naming the file and the key; a .caffemodel given to resume says to use --weights."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from net.caffemodel import blob_to_array, encode, load_caffemodel
from net.prototxt_loader import parse_text
from net.schema import Message
from net.snapshots import encode_solverstate, read_log, read_solverstate, remove_stale_temps, write_log
from net.solver import Solver, SolverError
from tests.conftest import ROOT

NET = """
net_param {
  name: "tiny"
  layer { name: "data" type: "Input" top: "data" top: "target"
          input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
  layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" dropout_param { dropout_ratio: 0.5 } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
}
random_seed: 7 base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 1
"""


def _solver(folder: Path, max_iter: int = 6, snapshot: int = 3, lines: list | None = None) -> Solver:
    text = NET + f'max_iter: {max_iter} snapshot: {snapshot} snapshot_prefix: "{folder / "tiny"}"'
    log = lines.append if lines is not None else (lambda line: None)
    solver = Solver(parse_text(text, "SolverParameter"), log=log, log_csv=folder / "tiny_log.csv", progress=False)
    rng = np.random.default_rng(0)
    solver.net.set_input("data", rng.standard_normal((4, 3)).astype(np.float32))
    solver.net.set_input("target", rng.standard_normal((4, 2)).astype(np.float32))
    return solver


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished 6-iteration run with snapshots at 3 and 6: its folder."""
    _solver(tmp_path).solve()
    return tmp_path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the log ---------------------------------------------------------------------------------------------------
def test_resume_keeps_the_log_before_the_resume_point(run, tmp_path):
    whole = (run / "tiny_log.csv").read_text()
    assert [r["iter"] for r in _rows(run / "tiny_log.csv")] == ["0", "1", "2", "3", "4", "5"]
    solver = _solver(run)
    solver.solve(resume=run / "tiny_iter_3.solverstate")  # rows 3.. replaced, 0..2 kept
    assert (run / "tiny_log.csv").read_text() == whole  # the resumed run repeats the first bit for bit
    assert [r["iter"] for r in solver.records] == [0, 1, 2, 3, 4, 5]


def test_resume_replaces_rows_after_the_resume_point(run):
    rows = _rows(run / "tiny_log.csv")
    first = float(rows[4]["loss"])
    solver = _solver(run, max_iter=4)  # resumed at 3, stops at 4: rows 4 and 5 of the old run are gone
    solver.solve(resume=run / "tiny_iter_3.solverstate")
    again = _rows(run / "tiny_log.csv")
    assert [r["iter"] for r in again] == ["0", "1", "2", "3"]
    assert again[:3] == rows[:3]
    assert float(rows[3]["loss"]) == float(again[3]["loss"]) and first == float(rows[4]["loss"])


def test_read_and_write_log(tmp_path):
    records = [
        {"iter": 0, "phase": "train", "loss": 2.5, "lr": 0.01},
        {"iter": 0, "phase": "test0", "accuracy": 0.125},
        {"iter": 10, "phase": "train", "loss": 1.0 / 3.0, "lr": 0.01},
    ]
    write_log(tmp_path / "log.csv", records)
    assert read_log(tmp_path / "log.csv", before=100) == records  # floats round-trip exactly
    assert read_log(tmp_path / "log.csv", before=10) == records[:2]
    assert read_log(tmp_path / "missing.csv", before=10) == []


def test_a_killed_run_keeps_its_log_up_to_its_last_snapshot(tmp_path):
    solver = _solver(tmp_path, max_iter=6)
    solver.step(5)  # snapshot at 3 wrote the log; no solve() to write it at the end (as after a SIGKILL)
    assert [r["iter"] for r in _rows(tmp_path / "tiny_log.csv")] == ["0", "1", "2"]


# -- temp files ------------------------------------------------------------------------------------------------
def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path):
    stale = [
        ".tiny_iter_3.caffemodel.ab12_x9.tmp",
        ".tiny_iter_3.solverstate.Zq81kk_3.tmp",
        "tiny_log.csv.tmp",
        "tiny_chart.png.tmp.png",
    ]
    kept = ["tiny_iter_3.caffemodel", ".other_iter_3.caffemodel.ab12.tmp", "notes.tmp", "tiny_log.csv"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(Path(p).name for p in remove_stale_temps(str(tmp_path / "tiny"))) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    for name in stale:
        (tmp_path / name).write_bytes(b"x")
    lines: list[str] = []
    _solver(tmp_path, max_iter=0, lines=lines).solve()
    assert not any((tmp_path / name).exists() for name in stale)
    assert any(line.startswith("Removed 4 temporary file(s) left by an interrupted write") for line in lines)


# -- .solverstate integrity ------------------------------------------------------------------------------------
def test_state_records_its_length_and_checksum(run):
    path = run / "tiny_iter_3.solverstate"
    data = path.read_bytes()
    assert data.startswith(b"\xc2\x3e")  # field 1000 first: the resume record, with the check
    state, resume, note = read_solverstate(path)
    assert note is None and state.iter == 3 and not state.has("crema_resume")
    assert set(resume) >= {"rng", "layers", "losses"} and "check" not in resume


def _last_record_start(data: bytes) -> int:
    """Offset of the state's last record (current_step, field 4, written last)."""
    tail = Message("SolverState")
    tail.current_step = 0
    tail_bytes = encode(tail)
    assert data.endswith(tail_bytes)
    return len(data) - len(tail_bytes)


def test_a_state_cut_exactly_before_its_last_record_is_refused(run):
    path = run / "tiny_iter_3.solverstate"
    data = path.read_bytes()
    cut = run / "cut.solverstate"
    cut.write_bytes(data[: _last_record_start(data)])
    with pytest.raises(SolverError, match=rf"^{cut}: damaged: \d+ bytes of solver state where \d+ were written"):
        _solver(run).restore(cut)
    for size in (1, 2, 3, 40, len(data) - 1):
        cut.write_bytes(data[:size])
        with pytest.raises(SolverError, match=rf"^{cut}: damaged: "):
            _solver(run).restore(cut)
    cut.write_bytes(b"")
    with pytest.raises(SolverError, match=rf"^{cut}: empty file"):
        _solver(run).restore(cut)


def test_a_changed_byte_is_refused(run):
    data = bytearray((run / "tiny_iter_3.solverstate").read_bytes())
    data[-20] ^= 0x01
    bad = run / "bad.solverstate"
    bad.write_bytes(bytes(data))
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: the checksum of its \d+ bytes does not match"):
        _solver(run).restore(bad)


def _old_style(path: Path, resume: dict | None) -> bytes:
    """The state at `path` as crema wrote it before the check: crema_resume last, no 'check' (or none at all)."""
    state, _, _ = read_solverstate(path)
    if resume is not None:
        state.crema_resume = json.dumps(resume).encode()
    return encode(state)


def test_an_older_state_loads_with_a_note_and_resumes_exactly(run):
    path = run / "tiny_iter_3.solverstate"
    _, resume, _ = read_solverstate(path)
    old = run / "old.solverstate"
    old.write_bytes(_old_style(path, resume))
    uninterrupted = load_caffemodel(run / "tiny_iter_6.caffemodel")  # read first: the resumed run rewrites it
    ip = next(layer for layer in uninterrupted.layer if layer.name == "ip")
    lines: list[str] = []
    solver = _solver(run, lines=lines)
    solver.solve(resume=old)
    note = f"Note: {old}: no length or checksum recorded (an older crema wrote it); loaded without verifying it"
    assert note in lines
    assert np.array_equal(solver.net.params["ip"][0], blob_to_array(ip.blobs[0]).reshape(2, 3))


def test_a_caffe_state_without_resume_data_loads_with_a_note(run):
    caffe = run / "caffe.solverstate"
    caffe.write_bytes(_old_style(run / "tiny_iter_3.solverstate", None))
    lines: list[str] = []
    solver = _solver(run, lines=lines)
    solver.restore(caffe)
    assert solver.iter == 3
    assert any(line.startswith(f"Note: {caffe}: no crema resume data (Caffe's solverstate?)") for line in lines)


def _with_resume(path: Path, raw: bytes) -> bytes:
    """The state at `path` with its resume record replaced by `raw` (and no check)."""
    state, _, _ = read_solverstate(path)
    head = Message("SolverState")
    head.crema_resume = raw
    return encode(head) + encode(state)


@pytest.mark.parametrize("missing", ["rng", "layers"])
def test_a_missing_key_names_the_file_and_the_key(run, missing):
    path = run / "tiny_iter_3.solverstate"
    state, resume, _ = read_solverstate(path)
    del resume[missing]
    bad = run / "bad.solverstate"
    bad.write_bytes(encode_solverstate(state, resume))  # with a valid check: the content itself is wrong
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: its crema resume data has no '{missing}' key \(has: "):
        _solver(run).restore(bad)
    bad.write_bytes(_old_style(path, resume))  # and without one
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: its crema resume data has no '{missing}' key"):
        _solver(run).restore(bad)


def test_a_bad_layer_state_names_the_entry(run):
    path = run / "tiny_iter_3.solverstate"
    state, resume, _ = read_solverstate(path)
    resume["rng"]["train"] = {"bit_generator": "PCG64"}
    bad = run / "bad.solverstate"
    bad.write_bytes(encode_solverstate(state, resume))
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: resume entry rng\['train'\] "):
        _solver(run).restore(bad)


def test_bad_json_names_the_file(run):
    bad = run / "bad.solverstate"
    bad.write_bytes(_with_resume(run / "tiny_iter_3.solverstate", b'{"rng": {'))
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: its crema resume data is not valid JSON \("):
        _solver(run).restore(bad)
    bad.write_bytes(_with_resume(run / "tiny_iter_3.solverstate", b"[1, 2]"))
    with pytest.raises(SolverError, match=rf"^{bad}: damaged: its crema resume data is a JSON list, not an object"):
        _solver(run).restore(bad)


def test_a_refused_state_changes_nothing(run):
    solver = _solver(run)
    weights = solver.net.params["ip"][0].copy()
    data = (run / "tiny_iter_6.solverstate").read_bytes()
    (run / "cut.solverstate").write_bytes(data[:-3])
    with pytest.raises(SolverError):
        solver.restore(run / "cut.solverstate")
    assert solver.iter == 0 and np.array_equal(solver.net.params["ip"][0], weights)


# -- a caffemodel where a solverstate belongs ------------------------------------------------------------------
def test_a_caffemodel_given_to_resume_says_use_weights(run):
    weights = run / "tiny_iter_3.caffemodel"
    with pytest.raises(SolverError, match=rf"^{weights}: this is a weights file \(.caffemodel\), not a .solverstate: "
                       rf"to start training from these weights use --weights {weights}"):  # fmt: skip
        _solver(run).restore(weights)
    renamed = run / "renamed.solverstate"  # recognised by its content too
    renamed.write_bytes(weights.read_bytes())
    with pytest.raises(SolverError, match=rf"^{renamed}: this is a weights file \(.caffemodel\)"):
        _solver(run).restore(renamed)


def test_cli_resume_from_a_caffemodel_says_use_weights(run):
    solver = run / "solver.prototxt"
    solver.write_text(NET + f'max_iter: 6 snapshot_prefix: "{run / "tiny"}"')
    weights = run / "tiny_iter_3.caffemodel"
    proc = subprocess.run(
        [sys.executable, "-m", "crema", "train", "--solver", str(solver), "--snapshot", str(weights)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"use --weights {weights} to start from these weights" in proc.stderr
