"""A steady training pass (``Net.forward_loss`` then ``Net.backward``) and a solver's SGD update replayed natively,
as ``net.replay`` does for an inference forward.

A training iteration of LeNet at batch 64 makes ~33 task calls (the forward's steps, the MAX pooling that records its
argmax, every layer's backward, the update); the Python around them (argument checks, shape arithmetic, buffer
choices, the drivers' dispatch) ran at a fraction of its hot speed, its code and data evicted by the kernels between
(the loss layer's 11 us alone took ~190 us in the loop). Once a plan is steady, every pass makes the same calls with
the same arguments, so:

1. Record (the plan's RECORD_AT-th pass): forward_loss runs its steps as usual with every task's drivers wrapped
   (``net.replay._recording``), then backward its layers the same way, each unit's calls kept apart (a unit: a
   forward step, a layer's backward). The blobs as the pass found them are kept for the check.
2. Build: runs of units that made calls become one ``kernels.program.Program`` each (a unit whose work a fused
   step before it did, ``done_by``, adds nothing); a unit that made no call (NumPy work: an EuclideanLoss, an
   Accuracy) and every source (a layer without bottoms: the data layers, which fetch the next batch; they must come
   first) stay Python. A net whose blobs hold over MAX_BYTES is not recorded (the check's copies).
3. Check, before the replay is used, at the end of the recorded pass: four passes, each from the blobs as the
   recorded pass found them (data, diffs, their pending-zero flags, the parameters) with the sources' tops fed and
   the net's random generator put back: Python on the tops flipped along their last axis with the parameters reversed
   and shifted, Python on the tops, then replayed likewise. Every blob's data and diff must hold the same bits in a
   replayed pass as in its Python pass (and the flags and the generator's state the same). Work a unit does outside
   its calls (NumPy on the data, an accumulation into a buffer the Python zeroed, a sum over the parameters alone)
   shows there: the replayed pass of an input follows the Python pass of the other one, so a stale value differs. The
   net ends as the recorded pass left it (generator included).
4. Replay: the sources run first (as Python: they may give their tops new arrays), then, while every blob's data and
   diff, every parameter and every folded weight is the array it was at the recording (identity, checked only after
   an assignment somewhere: ``net.blob.assignments``, which a diff array replaced moves too) and the replayed forward
   steps' ``replay_check``s hold, the rest of the forward is its Programs and Python units in order; its backward is
   replayed too if the parameters' diffs are cleared as they were at the recording (``Blob.clear_diff``: a backward
   after the solver's clear overwrites the diffs; a second one within an iteration, ``iter_size`` > 1, accumulates:
   that backward runs as Python). Otherwise the pass runs as Python, and the plan records again when steady (twice at
   most).

The update (``update``, ``Solver._sgd_update``): one ``optim.sgd_step`` per learnable blob, each rate read from the
solver's array, recorded on its RECORD_AT-th run and replayed while the hyperparameters, the blobs' data and diff
arrays and the history arrays are the recorded ones and no diff is a pending zero.

A net whose forward_loss is never followed by backward (a solver's test nets) is not recorded again. Off with
``CREMA_REPLAY=0`` (as ``net.replay``); never on the GPU nor for a timed pass. Results: the same bits as the Python
pass (checked at step 3 and in tests/net/test_train_replay.py).
"""

from __future__ import annotations

import numba
import numpy as np

from kernels import program, taskpool, tasks

from . import replay
from .blob import assignments

RECORD_AT = 3  # a plan's passes before it is recorded (the first ones allocate diffs and decide the launcher)
MAX_BYTES = 256 << 20  # blobs' data and diffs at most (the check holds three copies of them); larger passes: Python
LOST_AT_MOST = 2  # replays of one plan that an array changed under before it keeps its Python passes


class _State:
    """A plan's training replay: `replay` None until recorded, False where it does not apply, else a TrainReplay."""

    __slots__ = ("lost", "pending", "replay", "replayed", "runs")

    def __init__(self) -> None:
        self.replay: TrainReplay | bool | None = None
        self.runs = 0
        self.lost = 0
        self.pending: dict | None = None  # the recorded forward, waiting for its backward
        self.replayed = False  # this pass's forward was replayed: its backward may be too


class TrainReplay:
    """Segments (first, last, Program or None: unit `first` in Python) over the forward's steps and over the backward's
    layers; guards: [object, attribute, array]; checks: the replayed forward steps' ``replay_check``s."""

    __slots__ = ("backward", "blobs", "checks", "forward", "guards", "raises", "seen", "zero_after", "zero_before")

    def __init__(self, forward, backward, guards, checks, blobs, zero_before, zero_after, raises=()) -> None:
        self.forward = forward
        self.raises = list(raises)  # the replayed layers' `replay_raise`: their input errors, after the forward
        self.backward = backward
        self.guards = guards
        self.checks = checks
        self.blobs = blobs  # every blob whose pending-zero flag the pass reads or leaves
        self.zero_before = zero_before
        self.zero_after = zero_after
        self.seen = -1

    def valid(self) -> bool:
        now = assignments()
        if now != self.seen:
            if not replay.guards_hold(self.guards):  # (a diff recorded as None fails: not an array)
                return False
            self.seen = now
        return all(check() for check in self.checks)

    def flags_hold(self) -> bool:
        return all(b._zero == z for b, z in zip(self.blobs, self.zero_before))

    def run_forward(self, net, plan, strict: bool = False) -> bool:
        """The forward after its sources (run by the caller). A Python step that refuses (an array changed under
        it): every layer after the sources runs its own forward, from the sources' tops, the plans are made again
        next time (as net.replay's Replay.run), and False is returned; with `strict` (the check) _Refused is raised.
        Then the replayed layers' input errors (``replay_raise``)."""
        steps = plan.steps
        for first, _, prog in self.forward:
            if prog is not None:
                prog.run()
                continue
            step, layer, bottom, top = steps[first]
            if not bottom:
                continue
            try:
                _python_step(step, layer, bottom, top)
            except _Refused:
                if strict:
                    raise
                _layers_forward(net)
                net._drop_plans()
                return False
        for check in self.raises:
            check()
        return True

    def run_backward(self, net) -> None:
        order = _backward_order(net)
        for first, _, prog in self.backward:
            if prog is not None:
                prog.run()
            else:
                i = order[first]
                net.layers[i].backward(net.tops[i], net.propagate_down[i], net.bottoms[i])
        for b, z in zip(self.blobs, self.zero_after):
            b._zero = z


def _layers_backward(net) -> None:
    """Every layer's backward, in the order Net.backward runs them."""
    for i in _backward_order(net):
        net.layers[i].backward(net.tops[i], net.propagate_down[i], net.bottoms[i])


def _layers_forward(net) -> None:
    """Every layer with bottoms by its own forward (the data layers have run)."""
    for layer, bottom, top in zip(net.layers, net.bottoms, net.tops):
        if bottom:
            layer.forward(bottom, top)


class _Refused(Exception):
    """A Python step found an array changed under the plan while the pass was being recorded or checked."""


def _python_step(step, layer, bottom, top) -> None:
    if step is None:
        layer.forward(bottom, top)
    elif not step():
        raise _Refused


def _backward_order(net) -> list[int]:
    return list(reversed(net.backward_layers))


def _all_blobs(net) -> list:
    seen: set[int] = set()
    out = []
    for blob in (*net._blobs.values(), *(b for layer in net.layers for b in layer.blobs)):
        if id(blob) not in seen:
            seen.add(id(blob))
            out.append(blob)
    return out


def _blob_bytes(net) -> int:
    return sum(b.data.nbytes + (0 if b._diff is None else b._diff.nbytes) for b in _all_blobs(net))


def _state(plan) -> _State:
    st = plan.train
    if st is None:
        st = plan.train = _State()
    return st


def forward(net) -> bool:
    """forward_loss's steps replayed (or recorded, when due); False: the caller runs them (Net._run)."""
    if not replay.ENABLED or net.device != "cpu":
        return False
    plan = net._plan_for(numba.get_num_threads())
    st = _state(plan)
    if st.pending is not None:  # a recorded forward no backward followed: a forward-only net (a solver's test net)
        st.pending, st.replay = None, False
    st.replayed = False
    if st.replay is False:
        return False
    sources = _leading_sources(plan)
    if st.replay is None:
        if plan.after or not all(bottom for _, _, bottom, _ in plan.steps[sources:]):
            st.replay = False  # observed blobs (Net.observe), or a data layer after another layer
            return False
        if tasks.recording_active():  # net.warm's recording
            return False
        st.runs += 1
        if st.runs < RECORD_AT:
            return False
        if _blob_bytes(net) > MAX_BYTES:  # the check's copies: not for a pass this large (its Python is a small part)
            st.replay = False
            return False
        return _record_forward(net, plan, st)
    rp = st.replay
    net._run_plan(plan, None, 0, sources)  # the data layers first: they may give their tops new arrays
    if not rp.valid():
        st.lost += 1
        st.replay, st.runs = (None if st.lost < LOST_AT_MOST else False), 0
        net._run_plan(plan, None, sources)
        return True
    st.replayed = rp.run_forward(net, plan)
    return True


def _leading_sources(plan) -> int:
    """How many of the plan's first steps are sources (layers without bottoms)."""
    n = 0
    while n < len(plan.steps) and not plan.steps[n][2]:
        n += 1
    return n


def backward(net) -> bool:
    """backward's layers replayed (or recorded and checked after a recorded forward); False: the caller runs them."""
    plan = net._plan
    st = None if plan is None else plan.train
    if st is None:
        return False
    if st.pending is not None:
        pending, st.pending = st.pending, None
        return _record_backward(net, plan, st, pending)
    if not st.replayed:
        return False
    st.replayed = False
    rp = st.replay
    if not isinstance(rp, TrainReplay) or not rp.valid() or not rp.flags_hold():
        return False
    rp.run_backward(net)
    return True


def _record_forward(net, plan, st: _State) -> bool:
    """Run this pass's forward as Python steps while recording their calls (step 1); the backward that follows
    finishes the recording (`_record_backward`)."""
    if not replay._RECORDING.acquire(blocking=False):
        st.runs = 0
        return False
    # every blob as the pass finds it (parameters included: a layer may update its own in the forward)
    start = [(b, b.data.copy(), None if b._diff is None else b._diff.copy(), b._zero) for b in _all_blobs(net)]
    calls: list[list] = []
    complete = True
    rng_mid = None
    try:
        with replay._recording() as rec:
            for s, (step, layer, bottom, top) in enumerate(plan.steps):
                if bottom and rng_mid is None:
                    rng_mid = net.rng.bit_generator.state
                rec.calls = made = []
                try:
                    _python_step(step, layer, bottom, top)
                except _Refused:  # an array changed under the plan: the rest as Net._run_plan does, no replay
                    rec.calls = None
                    layer.forward(bottom, top)
                    net._run_plan(plan, None, s + 1)
                    complete = False
                    break
                rec.calls = None
                calls.append(made)
            unrecordable = rec.unrecordable
    finally:
        replay._RECORDING.release()
    if not complete:
        net._drop_plans()
        return True
    if unrecordable:
        st.replay = False
        return True
    if rng_mid is None:
        rng_mid = net.rng.bit_generator.state
    st.pending = {"calls": calls, "rng": rng_mid, "start": start}
    return True


def _record_backward(net, plan, st: _State, pending: dict) -> bool:
    """Run this pass's backward as Python while recording its calls, then build (step 2) and check (step 3)."""
    blobs = _all_blobs(net)
    zero_before = [b._zero for b in blobs]
    if not replay._RECORDING.acquire(blocking=False):
        st.runs = 0
        return False
    order = _backward_order(net)
    calls: list[list] = []
    try:
        with replay._recording() as rec:
            for i in order:
                rec.calls = made = []
                net.layers[i].backward(net.tops[i], net.propagate_down[i], net.bottoms[i])
                rec.calls = None
                calls.append(made)
            unrecordable = rec.unrecordable
    finally:
        replay._RECORDING.release()
    zero_after = [b._zero for b in blobs]
    rng_end = net.rng.bit_generator.state
    if unrecordable:
        st.replay = False
        return True
    everything = [*pending["calls"], *calls]
    if any(address == 0 for made in everything for _, _, _, address, _, _ in made):
        st.runs = 0  # net.warm's recording: kernels not compiled yet
        return True
    rp = _build(net, plan, pending["calls"], calls, blobs, zero_before, zero_after)
    if rp is None:
        st.replay = False
        return True
    ok = _check(net, plan, rp, pending, zero_after)
    net.rng.bit_generator.state = rng_end
    st.replay = rp if ok else False
    return True


def _program_of(units: list, native: list[bool]) -> list:
    """Segments over units (a list of call lists): runs of native units in one Program each, the others alone."""
    segments: list = []
    cur = None
    for u, made in enumerate(units):
        if native[u]:
            if cur is None:
                cur = [u, u, program.Program()]
            replay.add_calls(cur[2], made)
            cur[1] = u
        else:
            if cur is not None:
                segments.append(tuple(cur))
                cur = None
            segments.append((u, u, None))
    if cur is not None:
        segments.append(tuple(cur))
    return segments


def _build(net, plan, fcalls, bcalls, blobs, zero_before, zero_after) -> TrainReplay | None:
    fnative: list[bool] = []
    for s, (step, _, bottom, _) in enumerate(plan.steps):
        done_by = getattr(step, "done_by", None)
        if done_by is not None:  # its work done by the step before: nothing to run where that one is replayed
            fnative.append(s > 0 and fnative[s - 1] and replay._is(done_by, plan.steps[s - 1][0]))
        else:
            fnative.append(bool(bottom) and bool(fcalls[s]) and (step is None or replay._replayable(step)))
    bnative = [bool(made) for made in bcalls]
    if not any(fnative) and not any(bnative):
        return None
    forward = _program_of(fcalls, fnative)
    backward = _program_of(bcalls, bnative)
    checks = [c for s, native in enumerate(fnative) if native for c in replay._checks(plan.steps[s][0])]
    guards = replay._guards(net, plan)
    for b in blobs:
        guards.append([b, "_diff", b._diff])
    raises = [
        f for s, native in enumerate(fnative) if native and (f := getattr(plan.steps[s][1], "replay_raise", None))
    ]
    return TrainReplay(forward, backward, guards, checks, blobs, zero_before, zero_after, raises)


# -- the check (step 3) --------------------------------------------------------------------------------------------
def _sources(net) -> list:
    """The net's inputs and the tops of every layer without bottoms (data layers, Input: the plan leaves the latter
    out)."""
    out, seen = [], set()
    for blob in (*(net._blobs[name] for name in net.inputs), *(t for b, top in zip(net.bottoms, net.tops) if not b
                                                              for t in top)):  # fmt: skip
        if id(blob) not in seen:
            seen.add(id(blob))
            out.append(blob)
    return out


def _check(net, plan, rp: TrainReplay, pending: dict, zero_after) -> bool:
    """Step 3 of the module docstring. Each pass starts from the blobs as the recorded pass found them (data, diffs,
    their pending-zero flags, the parameters; for the flipped tops the parameters reversed and shifted, so that work
    done in Python from the parameters alone shows too), the sources' tops fed. The net ends holding the recorded
    pass's results (the replayed pass on the same input, the same bits; or, where the check fails, the Python pass
    again)."""
    fed = _sources(net)
    original = [b.data.copy() for b in fed]
    flipped = [(v[..., ::-1] if v.ndim else v).copy() for v in original]
    fed_ids = {id(b) for b in fed}
    param_ids = {id(b) for layer in net.layers for b in layer.blobs}
    start = pending["start"]
    shifted = {id(b): (data.reshape(-1)[::-1] * np.float32(1.0625) + np.float32(0.0078125)).reshape(data.shape)
               for b, data, _, _ in start if id(b) in param_ids}  # fmt: skip
    blobs = rp.blobs

    def arrays() -> list:
        out = [b.data for b in blobs if id(b) not in fed_ids]
        return out + [b._diff for b in blobs if b._diff is not None]

    def prepare(feed, params_shifted: bool) -> None:
        for b, data, diff, zero in start:
            np.copyto(b.data, shifted[id(b)] if params_shifted and id(b) in shifted else data)
            if b._diff is not None:
                if diff is None:
                    b._diff.fill(0.0)  # not allocated then: zeros when read
                else:
                    np.copyto(b._diff, diff)
            b._zero = zero
        for b, value in zip(fed, feed):  # (after: a Split of an input shares its memory)
            np.copyto(b.data, value)
        net.rng.bit_generator.state = pending["rng"]

    def python_pass() -> None:
        for step, layer, bottom, top in plan.steps:
            if bottom:
                _python_step(step, layer, bottom, top)
        net._seed_loss_diffs()
        _layers_backward(net)

    def replayed_pass() -> None:
        rp.run_forward(net, plan, strict=True)
        net._seed_loss_diffs()
        rp.run_backward(net)

    def state() -> tuple:
        return [b._zero for b in blobs], net.rng.bit_generator.state

    rounds = ((flipped, True), (original, False))
    ok = True
    try:
        shots = []
        for feed, params_shifted in rounds:
            prepare(feed, params_shifted)
            before = taskpool.omp_loops()
            python_pass()
            shots.append(([a.copy() for a in arrays()], state(), taskpool.omp_loops() - before))
        for (feed, params_shifted), (want, want_state, loops) in zip(rounds, shots):
            prepare(feed, params_shifted)
            before = taskpool.omp_loops()
            replayed_pass()
            if taskpool.omp_loops() - before != loops or state() != want_state:
                ok = False
                break
            if not all(np.array_equal(a.view(np.uint32), w.view(np.uint32)) for a, w in zip(arrays(), want)):
                ok = False
                break
    except Exception:  # noqa: BLE001 - a pass the check cannot run (a step refusing, a layer's error on the
        ok = False  # flipped input) is a pass not to replay; the net's own pass below raises what it raises
    if not ok:  # the recorded pass's results again, as Python
        prepare(original, False)
        try:
            python_pass()
        except _Refused:  # every layer's own forward then, from the sources' tops, and the plans made again
            net._drop_plans()
            _layers_forward(net)
            net._seed_loss_diffs()
            _layers_backward(net)
    if [b._zero for b in blobs] != zero_after:  # pragma: no cover - the passes above leave what the recorded one did
        ok = False
    return ok


# -- the solver's update -------------------------------------------------------------------------------------------
class UpdateState:
    """A solver's recorded SGD / Nesterov update: `replay` None until recorded, False where it does not apply, else
    an UpdateReplay."""

    __slots__ = ("lost", "replay", "runs")

    def __init__(self) -> None:
        self.replay: UpdateReplay | bool | None = None
        self.runs = 0
        self.lost = 0


class UpdateReplay:
    """The update's task calls (one ``optim.sgd_step`` per learnable blob, the rates read from the solver's array) in
    one Program; it holds while the hyperparameters (`key`), the blobs' data and diff arrays and the history arrays
    are those recorded and no diff is a pending zero (the update reads diffs through ``Blob.diff``, which would
    write the zeros first)."""

    __slots__ = ("arrays", "histories", "key", "prog")

    def __init__(self, prog, key, blobs, histories) -> None:
        self.prog = prog
        self.key = key
        self.arrays = [(b, b.data, b._diff) for b in blobs]
        self.histories = list(histories)

    def holds(self, key, histories) -> bool:
        return (
            key == self.key
            and all(b.data is d and b._diff is g and not b._zero for b, d, g in self.arrays)
            and len(histories) == len(self.histories)
            and all(h is h0 for h, h0 in zip(histories, self.histories))
        )


def update(state: UpdateState, key, blobs: list, histories: list, python) -> None:
    """One solver update: the recorded one replayed while it holds, else `python()` (the update's Python loop, whose
    every call is an ``optim.sgd_step`` task), recorded on its RECORD_AT-th run. The same bits either way: the same
    calls with the same arrays, the rates written into the array before the replay."""
    rp = state.replay
    if isinstance(rp, UpdateReplay):
        if replay.ENABLED and rp.holds(key, histories):
            rp.prog.run()
            return
        state.lost += 1
        state.replay, state.runs = (None if state.lost < LOST_AT_MOST else False), 0
    if state.replay is False or not replay.ENABLED or tasks.recording_active():
        python()
        return
    state.runs += 1
    if state.runs < RECORD_AT or any(b._zero for b in blobs) or not replay._RECORDING.acquire(blocking=False):
        python()
        return
    try:
        with replay._recording() as rec:
            rec.calls = calls = []
            python()
            rec.calls = None
            unrecordable = rec.unrecordable
    finally:
        replay._RECORDING.release()
    if unrecordable or not calls or any(address == 0 for _, _, _, address, _, _ in calls):
        state.replay = False if unrecordable or not calls else None
        return
    state.replay = UpdateReplay(_program_of([calls], [True])[0][2], key, blobs, histories)
