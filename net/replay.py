"""A plan's steady forward replayed natively: its steps' task calls recorded once, then run without Python in between.

Every step of a CPU plan (``net.net._Plan``) checks its arrays, picks its buffers and calls one or two task drivers
(``kernels.tasks``). Once the plan is steady (the same shapes, arrays and thread count from forward to forward) the
steps make the same calls with the same arguments every time, so a forward's Python work between the kernels (~0.35
ms of EfficientNet-Lite0's 4.4 ms at batch 1 on 2 threads: 51 driver calls, each a dispatch, a record and a launch,
and the steps' own checks) can be done once:

1. Record (the plan's RECORD_AT-th forward through ``Net.forward``, batches up to MAX_BATCH): the forward runs as
   usual with every task's drivers wrapped (this thread's calls only): each call's task, kind, thread count, body
   address and arguments, by step, and the integer arrays the call changed (claim counters) with their contents
   before it (not the arrays a task carries from call to call on purpose: ``kernels.tasks.carried``).
2. Build: runs of steps that made calls become one ``kernels.program.Program`` each (the counters restored before
   each call); steps without calls (NumPy layers, a step that declares ``replay = False``) stay Python steps, except
   the layers whose forward only points their tops at their bottom's memory (``Layer.aliases``: Split, Flatten,
   Reshape; the guards below hold those arrays) and the steps whose work a fused call did (a residual sum's Eltwise,
   and a ReLU after it; a depthwise after its fused expand; a global pooling after its 1x1: ``done_by``), left out; a
   run ends where an observer is notified (``Net.observe``).
3. Check, before the replay is used: on the plan's input flipped along its last axis and then on the input itself,
   every activation is filled with NaN and the forward run once as Python steps and once replayed; the activations
   (the shared arena once, and every blob outside it) must hold the same bits after both. A step whose effect is not
   all in its recorded calls (NumPy work, state that changes from call to call) shows there, and the plan keeps its
   Python steps.
4. Replay: while every blob, parameter and folded weight array is the object it was at recording, or a view of the
   same memory alike in shape and strides (``Replay.valid``: identity checks, ~10 us hot, 110-150 us right after a
   forward, whose data has evicted those ~250 objects from the caches; so they are read only after an assignment to
   one of the watched attributes, a Blob's `data`, a layer's `blobs` or `folded`, ``net.blob.assignments``, and
   otherwise not at all), and every replayed step's
   ``replay_check`` holds (a Winograd layer whose weights may change in place: their bits against the copy its
   transform was made from, what its Python step compares every call), a forward is the programs and the Python steps
   in order. Otherwise the plan goes back to its Python steps and records again once steady (twice
   at most: LOST_AT_MOST). A Python step that still refuses (an array changed that no guard covers) makes the forward
   every layer's own forward, from the inputs, and the plans are made again.

Training passes (``Net.forward_loss``, ``Net.backward``) replay through ``net.train_replay``, not here; a forward
timed per step never replays. ``CREMA_REPLAY=0`` switches it off. Results: the same bits as the Python steps (checked
at step 3 and in tests/net/test_replay.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numpy as np

from kernels import program, taskpool, tasks

from .blob import assignments

ENABLED = os.environ.get("CREMA_REPLAY", "1") != "0"
RECORD_AT = 3  # a plan's forwards before it is recorded (the first on the pool decides its launcher: Net._run)
MAX_BATCH = 4  # larger batches keep their Python steps (EfficientNet-Lite0 at 8: 0.35 of 35 ms; the check there
# runs four forwards and compares 58 MB of activations: 0.5 s once per plan)
LOST_AT_MOST = 2  # replays of one plan that an array changed under before it keeps its Python steps


class _Recorder:
    """Collects this thread's task calls into `calls` (a list, or None: not collecting)."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.calls: list | None = None
        self.unrecordable = False

    def wrap(self, task, kind: str, real):
        def driver(address, workers, *args, **kwargs):
            if self.calls is None or threading.get_ident() != self.owner:
                return real(address, workers, *args, **kwargs)
            if kwargs:
                self.unrecordable = True
                return real(address, workers, *args, **kwargs)
            ints = [(a, a.copy()) for a in args
                    if isinstance(a, np.ndarray) and a.dtype.kind != "f" and not tasks.is_carried(a)]  # fmt: skip
            out = real(address, workers, *args)
            changed = [(a, before) for a, before in ints if not np.array_equal(a, before)]
            self.calls.append((task, kind, int(workers), int(address), args, changed))
            return out

        return driver


@contextlib.contextmanager
def _recording() -> Iterator[_Recorder]:
    rec = _Recorder()
    saved = [(t, t.parallel, t.serial) for t in list(tasks.ALL)]
    for t, par, ser in saved:
        t.parallel, t.serial = rec.wrap(t, "parallel", par), rec.wrap(t, "serial", ser)
    try:
        yield rec
    finally:
        for t, par, ser in saved:
            t.parallel, t.serial = par, ser


class Replay:
    """Segments over a plan's steps: (first, last, Program) run natively, or (i, i, None) step i in Python; checks:
    the replayed steps' ``replay_check``s (each True while what the step made from its weights still holds)."""

    __slots__ = ("checks", "guards", "seen", "segments")

    def __init__(self, segments: list, guards: list, checks: list) -> None:
        self.segments = segments
        self.guards = guards
        self.checks = checks
        self.seen = -1  # net.blob.assignments() when the guards last held (-1: never checked)

    def valid(self) -> bool:
        now = assignments()  # read first: an assignment during the loop below shows at the next call
        if now != self.seen:
            if not guards_hold(self.guards):
                return False
            self.seen = now
        # then the weights' bits (a Winograd layer's transform, when its weights may change in place): these read
        # whole arrays, so only once the identity checks hold
        return all(check() for check in self.checks)

    def run(self, net, plan, notify: bool = True, skip: int = 0) -> bool:
        """One forward; False when a Python step refused (an array changed under the plan: the rest then ran as the
        layers' own forwards, and the plans are dropped). skip: the first program's first ops not run (their work
        done by the caller: ``net.per_image``'s feed)."""
        after = plan.after if notify else {}
        steps = plan.steps
        for first, last, prog in self.segments:
            if skip:
                prog.run_range(skip, len(prog))
                skip = 0
            elif prog is not None:
                prog.run()
            else:
                step, layer, bottom, top = steps[first]
                if step is None:
                    layer.forward(bottom, top)
                elif not step():  # the replayed steps before may have left blocks in their blobs: every layer's
                    for s, (_, layer, bottom, top) in enumerate(steps):  # own forward again, from the inputs
                        layer.forward(bottom, top)
                        if s >= first and s in after:
                            net._notify(after[s])
                    net._drop_plans()
                    return False
            if last in after:
                net._notify(after[last])
        return True


def guards_hold(guards: list) -> bool:
    """Every guarded attribute ([object, attribute, array]) still holds its recorded array (or a new view of the same
    memory). Asked only after an assignment to a watched attribute somewhere (net.blob.assignments), the only way
    they change."""
    for guard in guards:
        obj, attr, value = guard
        now = getattr(obj, attr)
        if now is not value:
            if not _same_memory(now, value):
                return False
            guard[2] = now  # a new view of the same memory (a layer that reassigns its top's view each call)
    return True


def add_calls(prog: program.Program, made: list) -> None:
    """A step's recorded calls into `prog`, each after restoring the integer arrays it changed (claim counters)."""
    for task, kind, workers, address, args, changed in made:
        for array, before in changed:
            prog.restore(array, before)
        prog.call(task, kind, workers, address, args)


def _same_memory(a, b) -> bool:
    """Two arrays over the same memory, alike in type, shape and strides (the recorded pointers still hold)."""
    return (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.ctypes.data == b.ctypes.data
    )


def _guards(net, plan) -> list:
    """(object, attribute, value) for every array a step may have been built on: blobs, parameters, folded weights."""
    seen, out = set(), []

    def add(obj, attr):
        key = (id(obj), attr)
        if key not in seen:
            seen.add(key)
            out.append([obj, attr, getattr(obj, attr)])

    for blob in net._blobs.values():
        add(blob, "data")
    for _, layer, bottom, top in plan.steps:
        for blob in (*bottom, *top):
            add(blob, "data")
        add(layer, "blobs")
        for blob in layer.blobs:
            add(blob, "data")
        if hasattr(layer, "folded"):
            add(layer, "folded")
    return out


def chain(step) -> Iterator:
    """The step, the step it wraps (its `inner`: ``plan_steps._after_refusal``), and so on."""
    while step is not None:
        yield step
        step = getattr(step, "inner", None)


def _is(step, other) -> bool:
    """Is `other` the step `step` or a wrapper of it?"""
    return any(s is step for s in chain(other))


def _replayable(step) -> bool:
    """Unless the step, or a step it wraps, says ``replay = False`` (plan_steps.zero_border_step for weights that may
    change: it checks their border every call)."""
    return all(getattr(s, "replay", True) is not False for s in chain(step))


def _build(net, plan, calls: list[list]) -> Replay | None:
    segments: list = []
    cur = None
    native = -1  # the last step replayed natively
    for s, (step, layer, _, _) in enumerate(plan.steps):
        made = calls[s]
        if native == s - 1 and _is(getattr(step, "done_by", None), plan.steps[s - 1][0]):
            # its work was done by the step before, replayed (plan_steps.fuse_residual_sums: the sum's step, and the
            # ReLU's after it); where its blob is observed, a segment ends here for the notification
            native = s
            if s in plan.after:
                segments.append((cur[0], s, cur[2]) if cur is not None else (s, s, program.Program()))
                cur = None
            continue
        if step is None and not made and getattr(layer, "aliases", False):
            continue  # Split, Flatten, Reshape: their tops point at their bottom's memory, which the guards hold
        if step is not None and made and _replayable(step):
            if cur is None:
                cur = [s, s, program.Program()]
            add_calls(cur[2], made)
            cur[1] = native = s
            if s in plan.after:
                segments.append(tuple(cur))
                cur = None
        else:
            if cur is not None:
                segments.append(tuple(cur))
                cur = None
            segments.append((s, s, None))
    if cur is not None:
        segments.append(tuple(cur))
    if not any(prog is not None for _, _, prog in segments):
        return None
    checks = [c for first, last, prog in segments if prog is not None for s in range(first, last + 1)
              for c in _checks(plan.steps[s][0])]  # fmt: skip
    return Replay(segments, _guards(net, plan), checks)


def _checks(step) -> list:
    """The ``replay_check``s of a step and the steps it wraps."""
    return [s.replay_check for s in chain(step) if getattr(s, "replay_check", None) is not None]


def _python_forward(plan) -> bool:
    for step, layer, bottom, top in plan.steps:
        if step is None:
            layer.forward(bottom, top)
        elif not step():
            return False
    return True


def _activations(net, plan, inputs) -> list[np.ndarray]:
    """The memory the plan's steps write, inputs left out: the shared activations' arena (net.arena) once, and the
    arrays of the blobs outside it. Left out as well: the tops that alias an input's memory (a Split of the input
    blob, where two layers read it: poisoned, the check's forwards would have run on NaN, and the recording forward
    returned NaN)."""
    arena = net._arena
    out = [] if arena is None else [arena]
    seen = set(inputs)
    held = [net._blobs[name].data for name in net.inputs]
    for _, _, _, top in plan.steps:
        for blob in top:
            if id(blob) not in seen:
                seen.add(id(blob))
                if any(np.may_share_memory(blob.data, a) for a in held):
                    continue
                if arena is None or not np.may_share_memory(blob.data, arena):
                    out.append(blob.data)
    return out


def _poison(arrays: list) -> None:
    for a in arrays:
        a.fill(np.nan)


def _same(arrays: list, snapshot: list) -> bool:
    """The same bits (NaNs included)."""
    return all(np.array_equal(a.view(np.uint32), s.view(np.uint32)) for a, s in zip(arrays, snapshot))


def _check(net, plan, rp: Replay) -> bool:
    """Step 3 of the module docstring: replayed = Python steps, to the bit, on the flipped input and on the input;
    the net ends holding the input's forward."""
    inputs = {name: net._blobs[name].data.copy() for name in net.inputs}
    flipped = {name: (v[..., ::-1] if v.ndim else v) for name, v in inputs.items()}
    blobs = _activations(net, plan, {id(net._blobs[name]) for name in net.inputs})
    ok = True
    for feed in (flipped, inputs):
        for name, value in feed.items():
            np.copyto(net._blobs[name].data, value)
        _poison(blobs)
        loops = taskpool.omp_loops()
        if not _python_forward(plan):
            ok = False
            break
        loops = taskpool.omp_loops() - loops
        snapshot = [a.copy() for a in blobs]
        _poison(blobs)
        before = taskpool.omp_loops()  # an OpenMP loop the Python steps did not run (on the pool, its threads then
        if not rp.run(net, plan, notify=False) or not _same(blobs, snapshot) or taskpool.omp_loops() - before != loops:
            ok = False  # spin for ~10 ms against the pool's: Net._run keeps plans that run one off the pool)
            break
    if not ok:  # the net must hold the input's forward: its inputs back, the Python steps (the plan is sound)
        for name, value in inputs.items():
            np.copyto(net._blobs[name].data, value)
        if not _python_forward(plan):  # a step refused: the layers' own forwards, new plans next time
            for _, layer, bottom, top in plan.steps:
                layer.forward(bottom, top)
            net._drop_plans()
    return ok


_RECORDING = threading.Lock()  # one recording at a time: each wraps every task's drivers and puts them back
_LATER = object()  # record(): not now (a task without code yet, or another thread recording)


def record(net, plan):
    """Run this forward as Python steps while recording their task calls (step 1), then build (2) and check (3) the
    replay. Returns (whether this forward ran, the Replay), the Replay None where there is nothing to replay or the
    check fails (the plan keeps its Python steps), _LATER where it cannot be recorded now. The forward's results (and
    the observers' notifications) are those of the Python steps."""
    if not _RECORDING.acquire(blocking=False):
        return False, _LATER
    try:
        calls: list[list] = []
        after = plan.after
        complete = True
        with _recording() as rec:
            for s, (step, layer, bottom, top) in enumerate(plan.steps):
                rec.calls = made = []
                if step is None:
                    layer.forward(bottom, top)
                elif not step():  # an array changed under the plan: finish as Net._run_plan does, no replay
                    rec.calls = None
                    layer.forward(bottom, top)
                    complete = False
                calls.append(made)
                rec.calls = None
                if after and s in after:
                    net._notify(after[s])
            unrecordable = rec.unrecordable
    finally:
        _RECORDING.release()
    if not complete:
        net._drop_plans()
        return True, None
    if any(address == 0 for made in calls for _, _, _, address, _, _ in made):
        return True, _LATER  # net.warm's recording: kernels not compiled yet
    rp = None if unrecordable else _build(net, plan, calls)
    if rp is None:
        return True, None
    return True, (rp if _check(net, plan, rp) else None)


def forward(net, plan) -> bool:
    """Run an inference forward by the plan's replay (recording it when due); False: the caller runs the steps."""
    if not ENABLED:
        return False
    rp = plan.replay
    if rp is None:
        if tasks.recording_active():
            return False
        lead = net._blobs[net.inputs[0]].shape[:1] if net.inputs else ()
        if lead and lead[0] > MAX_BATCH:
            plan.replay = False  # the Python work is a small part of a large batch's forward: not worth the check
            return False
        plan.runs += 1
        if plan.runs < RECORD_AT:
            return False
        ran, got = record(net, plan)
        if got is _LATER:
            plan.runs = 0
        else:
            plan.replay = got if got is not None else False
        return ran
    if rp is False:
        return False
    if not rp.valid():  # back to the Python steps; recorded again once steady, twice at most
        plan.lost += 1
        plan.replay, plan.runs = (None if plan.lost < LOST_AT_MOST else False), 0
        return False
    rp.run(net, plan)
    return True
