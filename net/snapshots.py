"""The solver's files on disk: `.solverstate` with its own length and checksum, the `_log.csv` history kept across
resumes, and the temporary files an interrupted write leaves behind.

    data = encode_solverstate(state, resume)          # bytes: crema's resume record first, then Caffe's fields
    state, resume, note = read_solverstate(path)      # verified; note: why it could not be (older files), or None
    records = read_log("lenet_log.csv", before=5000)  # the rows of iterations before a resume point
    write_log("lenet_log.csv", records)               # atomically
    removed = remove_stale_temps("snapshots/lenet")   # left by a kill in the middle of a write

A crema solverstate is one SolverState message written in two parts: the `crema_resume` record (field 1000, JSON)
first, then every other field. The JSON's "check" entry holds the byte length and the SHA-256 of the second part,
so a file cut anywhere (even exactly at a record boundary, which still decodes) or damaged is refused by name.
Protobuf readers merge records in any order, so Caffe still reads the file (and skips field 1000). States without a
"check" (Caffe's, crema's before it had one) load unverified, with a note saying so.

Errors: `StateFileError(ValueError)`, whose message starts with the file's path and says what is wrong with it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from .paths import write_atomic
from .schema import Message

RESUME_FIELD = 1000  # SolverState.crema_resume (net.schema)
_RESUME_KEY = bytes([(RESUME_FIELD << 3 | 2) & 0x7F | 0x80, (RESUME_FIELD << 3 | 2) >> 7])  # varint, wire type 2
assert _RESUME_KEY == b"\xc2\x3e"


class StateFileError(ValueError):
    """A solverstate (or the weights it names) that cannot be used; the message names the file."""


# -- .solverstate ----------------------------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a solverstate")


def encode_solverstate(state: Message, resume: dict) -> bytes:
    """The file's bytes: the crema_resume record (`resume` as JSON plus "check": length and SHA-256 of the rest),
    then the encoding of `state` (which must not set crema_resume itself)."""
    from .caffemodel import encode

    assert not state.has("crema_resume"), "the resume data goes in `resume`"
    rest = encode(state)
    check = {"length": len(rest), "sha256": hashlib.sha256(rest).hexdigest()}
    head = Message("SolverState")
    head.crema_resume = json.dumps({**resume, "check": check}, default=_json_default).encode()
    return encode(head) + rest


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; (-1, pos) if it runs past the end or past 10 bytes."""
    value = shift = 0
    for i in range(pos, min(len(data), pos + 10)):
        value |= (data[i] & 0x7F) << shift
        shift += 7
        if data[i] < 0x80:
            return value, i + 1
    return -1, pos


def _resume_json(raw: bytes, path: str) -> dict:
    try:
        resume = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateFileError(f"{path}: damaged: its crema resume data is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise StateFileError(
            f"{path}: damaged: its crema resume data is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if not isinstance(resume, dict):
        raise StateFileError(f"{path}: damaged: its crema resume data is a JSON {type(resume).__name__}, not an object")
    return resume


def _not_a_state(data: bytes, path: str) -> str | None:
    """A sentence for a file that is a caffemodel rather than a solverstate, else None."""
    from .caffemodel import CaffemodelError, decode

    try:
        net = decode(data, "NetParameter", source=path)
    except CaffemodelError:
        return None
    if not (net.layer or net.layers):
        return None
    return _weights_not_state(path)


def _weights_not_state(path: str) -> str:
    return (
        f"{path}: this is a weights file (.caffemodel), not a .solverstate: to start training from these weights "
        f"use --weights {path}; to resume a run give --snapshot its <prefix>_iter_N.solverstate"
    )


def read_solverstate(path: str | os.PathLike) -> tuple[Message, dict | None, str | None]:
    """(state, resume data or None, note or None) of a .solverstate; crema_resume is left out of `state`.

    A state with a recorded length and checksum is verified before it is decoded. `note` says why a state could not
    be verified (Caffe's, or crema's from before the check); the caller should show it. Raises StateFileError.
    """
    from .caffemodel import CaffemodelError, decode

    name = str(path)
    if name.endswith(".caffemodel"):
        raise StateFileError(_weights_not_state(name))
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StateFileError(f"{name}: no such solver state file") from None
    except OSError as exc:
        raise StateFileError(f"{name}: cannot read the solver state: {exc.strerror or exc}") from None
    if not data:
        raise StateFileError(f"{name}: empty file (a snapshot cut short?); resume from an earlier snapshot")
    resume: dict | None = None
    note: str | None = None
    body = data
    if data.startswith(_RESUME_KEY) or _RESUME_KEY.startswith(data):  # crema's layout: the resume record first
        size, start = _varint(data, len(_RESUME_KEY))
        if len(data) <= len(_RESUME_KEY) or size < 0 or start + size > len(data):
            raise StateFileError(
                f"{name}: damaged: cut short inside its first record ({len(data)} bytes); resume from an earlier "
                f"snapshot"
            )
        resume = _resume_json(data[start : start + size], name)
        body = data[start + size :]
        check = resume.pop("check", None)
        if check is None:
            note = f"{name}: no length or checksum recorded (an older crema wrote it); loaded without verifying it"
        else:
            if not isinstance(check, dict) or "length" not in check or "sha256" not in check:
                raise StateFileError(f"{name}: damaged: its 'check' entry lacks 'length' or 'sha256'")
            if len(body) != check["length"]:
                raise StateFileError(
                    f"{name}: damaged: {len(body)} bytes of solver state where {check['length']} were written "
                    f"(cut short or padded); resume from an earlier snapshot"
                )
            if hashlib.sha256(body).hexdigest() != check["sha256"]:
                raise StateFileError(
                    f"{name}: damaged: the checksum of its {len(body)} bytes does not match the one recorded; "
                    f"resume from an earlier snapshot"
                )
    try:
        state = decode(body, "SolverState", source=name)
    except CaffemodelError as exc:
        raise StateFileError(_not_a_state(data, name) or str(exc)) from None
    if resume is None and state.has("crema_resume") and state.crema_resume:  # older crema: the record came last
        resume = _resume_json(bytes(state.crema_resume), name)
        note = f"{name}: no length or checksum recorded (an older crema wrote it); loaded without verifying it"
    elif resume is None:
        note = (
            f"{name}: no crema resume data (Caffe's solverstate?): not verified, and data order and random streams "
            f"start afresh"
        )
    if resume is not None:
        check_resume(resume, name)
    state.clear("crema_resume")
    return state, resume, note


def check_resume(data: dict, path: str) -> None:
    """The resume data's shape: 'rng' and 'layers' objects, 'losses' (optional) a list of numbers."""
    for key in ("rng", "layers"):
        if key not in data:
            have = ", ".join(map(repr, data)) or "none"
            raise StateFileError(f"{path}: damaged: its crema resume data has no {key!r} key (has: {have})")
        if not isinstance(data[key], dict):
            raise StateFileError(f"{path}: damaged: {key!r} in its crema resume data is not a JSON object")
    losses = data.get("losses", [])
    if not isinstance(losses, list) or not all(isinstance(v, (int, float)) for v in losses):
        raise StateFileError(f"{path}: damaged: 'losses' in its crema resume data is not a list of numbers")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (net.paths.write_atomic: `.NAME.XXXXXXXX.tmp` beside it, then renamed)."""
    write_atomic(path, data)


def stale_temp_pattern(prefix: str) -> re.Pattern:
    """The names of the temporary files crema's writers make for `prefix` (in its folder), all through
    net.paths.write_atomic: snapshots (`.P_iter_N.caffemodel.XXXX.tmp`, `.P_iter_N.solverstate.XXXX.tmp`), the log
    (`.P_log.csv.XXXX.tmp`) and the chart (`.P_chart.png.XXXX.tmp`); also the names older versions used for the log
    and chart (`P_log.csv.tmp`, `P_chart.png.tmp.png`)."""
    base = re.escape(Path(prefix).name)
    ours = rf"\.{base}(?:_iter_\d+\.(?:caffemodel|solverstate)|_log\.csv|_chart\.png)\.[A-Za-z0-9_]+\.tmp"
    return re.compile(rf"{ours}|{base}_log\.csv\.tmp|{base}_chart\.png\.tmp\.png")


def remove_stale_temps(prefix: str) -> list[str]:
    """Delete the temporary files an interrupted write left for `prefix` (see `stale_temp_pattern`); their paths.
    Only for a run starting: a second run writing with the same prefix at the same time would lose its temp file
    (two runs sharing a prefix overwrite each other's snapshots anyway)."""
    folder = Path(prefix).parent
    if not folder.is_dir():
        return []
    pattern = stale_temp_pattern(prefix)
    removed = []
    for entry in os.scandir(folder):
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(entry.path)
    return sorted(removed)


# -- the training log ------------------------------------------------------------------------------------------
def _value(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def read_log(path: str | os.PathLike, before: int) -> list[dict]:
    """The rows of `path` (a `_log.csv` written by `write_log`) with iter < `before`, as records: iter int, phase
    str, other columns float; empty cells left out. Missing or unreadable file, or rows without a whole-number
    iter: nothing (those rows)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            it = int(row.get("iter") or "")
        except ValueError:
            continue
        if it >= before:
            continue
        rec: dict = {"iter": it}
        for key, cell in row.items():
            if key in (None, "iter") or cell in (None, ""):
                continue
            rec[key] = cell if key == "phase" else _value(cell)
        records.append(rec)
    return records


def write_log(path: str | os.PathLike, records: list[dict]) -> None:
    """`records` as CSV (one column per key, in order of first appearance), written atomically."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for r in records:
        writer.writerow(["" if r.get(k) is None else str(r.get(k)) for k in keys])
    write_atomic(path, out.getvalue().encode("utf-8"))
