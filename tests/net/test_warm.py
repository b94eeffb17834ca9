"""net.warm and `crema warm`: the dry pass records what a pass would compile without compiling or running it, the
workers fill Numba's cache, and a process that loads from that cache computes the same bits as one that compiled
everything itself. No timing here (benchmarks/bench_startup.py times cold starts)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from net.warm import collect
from tests.conftest import ROOT

# Pooling (a closure's serial twin: handed to a worker pickled), ReLU and Softmax (module functions and twins)
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }
"""

# A 1x1 convolution, a depthwise one and an inner product: their kernels are task bodies (kernels.tasks) with drivers
TINY_TASKS = """name: "tiny_tasks"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "expand" type: "Convolution" bottom: "data" top: "expand"
        convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "dw" type: "Convolution" bottom: "expand" top: "dw"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 group: 16 } }
layer { name: "fc" type: "InnerProduct" bottom: "dw" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A forward on fixed inputs (random weights, seeded); prints the kernels it compiled (a task body compiled rather
# than loaded from the cache counts too), saves the output.
FORWARD = r"""
import sys
import numpy as np
from numba.core import event
compiled = []

class Listener(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)

event.register("numba:compile", Listener())
from benchmarks.subjects import randomize
from kernels import depthwise, fc, pointwise
from kernels.tasks import Task
from net import Net
from net.classify import feature_blob
from net.per_image import replica
from net.visualize import view_tops
net = Net.load(sys.argv[1], phase="test")
randomize(net, seed=0)
try:  # as `crema serve` runs a model, and `crema warm` warms it: activations shared, its features kept
    net.share_activations(keep=(feature_blob(net),))
except ValueError:  # no layer with parameters
    net.share_activations()
x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
np.save(sys.argv[2], net.forward(data=x)["prob"])
maps = replica(net)  # and its feature maps' forward (server.inside): a batch-1 copy observing the shown layers
for name in view_tops(maps):
    maps.observe(name, lambda name, array: None)
assert np.array_equal(maps.forward(data=x)["prob"], np.load(sys.argv[2]))
for module in (depthwise, fc, pointwise):
    for task in vars(module).values():
        if isinstance(task, Task) and task._address and not task._cfunc.cache_hits:
            compiled.append(task.name)
print("compiled:", ",".join(compiled))
"""


def _env(cache) -> dict:
    # a fixed thread count and no adapting to the machine's load: the plan (and so the kernels) the same in every
    # process
    return {**os.environ, "NUMBA_CACHE_DIR": str(cache), "NUMBA_NUM_THREADS": "2", "CREMA_ADAPT_THREADS": "0"}


def _run(args: list[str], cache) -> str:
    cmd = [sys.executable, *args]
    r = subprocess.run(cmd, check=False, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_collect_records_without_compiling_or_running():
    @njit
    def scale(x, out):  # pragma: no cover - compiled
        for i in range(x.size):
            out[i] = 2 * x[i]

    @njit
    def pair(x):  # pragma: no cover - compiled
        return x.sum(), x.size

    x, out = np.ones(4), np.zeros(4)

    def run():
        scale(x, out)
        total, n = pair(x)  # a stand-in tuple: the pass goes on
        assert (total, n) == (1.0, 1.0)
        scale(x[:2], out[:2])

    calls, failure = collect(run)
    assert failure is None
    assert list(calls) == [scale, pair]
    assert len(calls[scale]) == 1 and len(calls[pair]) == 1  # one signature: same types twice
    assert not scale.overloads and not pair.overloads  # nothing compiled
    assert not out.any()  # nothing ran


def test_warm_fills_the_cache_and_gives_the_same_bits(tmp_path):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    warmed = tmp_path / "warmed-cache"
    out = _run(["-m", "crema", "warm", "--model", str(proto), "--workers", "2"], warmed)
    # the pooling interior and Softmax (task bodies and their serial drivers), ReLU
    assert "compiled 5 kernels" in out and "left to compile" not in out, out
    assert any(warmed.rglob("*.nbi"))
    again = _run(["-m", "crema", "warm", "--model", str(proto)], warmed)
    assert "already in Numba's cache" in again and "compiling" not in again, again
    loaded = _run(["-c", FORWARD, str(proto), str(tmp_path / "loaded.npy")], warmed)
    assert "compiled: \n" in loaded or loaded.strip().endswith("compiled:"), loaded  # everything from the cache
    compiled = _run(["-c", FORWARD, str(proto), str(tmp_path / "compiled.npy")], tmp_path / "empty-cache")
    assert not compiled.strip().endswith("compiled:"), compiled  # this one compiled its own kernels
    assert np.array_equal(np.load(tmp_path / "loaded.npy"), np.load(tmp_path / "compiled.npy"))


def test_warm_compiles_task_bodies_in_workers_and_gives_the_same_bits(tmp_path):
    proto = tmp_path / "tiny_tasks.prototxt"
    proto.write_text(TINY_TASKS)
    warmed = tmp_path / "warmed-cache"
    out = _run(["-m", "crema", "warm", "--model", str(proto), "--workers", "2", "--batch", "1"], warmed)
    assert "left to compile" not in out, out
    for body in ("pointwise._pw_worker", "depthwise._c8_worker", "fc._ip_whole_worker"):  # bodies and drivers
        assert f"kernels.{body} (" in out and f"{body.split('.')[1]}__" in out, out
    loaded = _run(["-c", FORWARD, str(proto), str(tmp_path / "loaded.npy")], warmed)
    assert loaded.strip().endswith("compiled:"), loaded  # bodies and drivers from the cache
    compiled = _run(["-c", FORWARD, str(proto), str(tmp_path / "compiled.npy")], tmp_path / "empty-cache")
    assert "kernels.pointwise._pw_worker" in compiled, compiled  # this one compiled its own
    assert np.array_equal(np.load(tmp_path / "loaded.npy"), np.load(tmp_path / "compiled.npy"))


def test_collect_leaves_other_threads_alone():
    import threading

    @njit
    def double(x):  # pragma: no cover - compiled
        return 2 * x

    seen = []

    def run():
        t = threading.Thread(target=lambda: seen.append(double(3)))
        t.start()
        t.join()

    calls, failure = collect(run)
    assert failure is None and calls == {} and seen == [6]  # the other thread's call compiled and ran


def test_long_compiles_are_handed_out_first() -> None:
    """start_compiling's order: task bodies by their compile_s, longest first, then parallel=True kernels, then the
    rest (the first-use order kept among equals)."""
    from types import SimpleNamespace

    from kernels import depthwise, fc, pointwise, pointwise_t
    from net.warm import _longest_first

    plain, par = SimpleNamespace(targetoptions={}), SimpleNamespace(targetoptions={"parallel": True})
    groups = [(plain, []), (fc._IP_CHUNKED, []), (par, [])]
    groups += [(depthwise._DW, []), (pointwise._PW, []), (pointwise_t._PT, [])]
    order = [g[0] for g in sorted(groups, key=_longest_first)]
    assert order == [pointwise._PW, fc._IP_CHUNKED, pointwise_t._PT, depthwise._DW, par, plain]
    assert pointwise._PW.compile_s > fc._IP_CHUNKED.compile_s > depthwise._DW.compile_s > 0


START_METHOD = r"""
import sys
import numba
import numpy as np

@numba.njit(parallel=True)
def total(x):
    s = 0.0
    for i in numba.prange(x.size):
        s += x[i]
    return s

if sys.argv[1] == "loop-first":  # an OpenMP loop before crema's counter is in place: never counted, so never forked
    total(np.ones(1000))
from net.warm import _start_method
from kernels import taskpool
if sys.argv[1] == "loop-first":
    print(_start_method()._name)
    raise SystemExit
print(_start_method()._name)
numba.get_num_threads()  # starts Numba's threading layer; GNU OpenMP makes no thread yet
print(_start_method()._name, taskpool.omp_counted_from_start())
total(np.ones(1000))  # an OpenMP loop: its threads now exist
print(_start_method()._name, taskpool.omp_loops() > 0)
"""

# Workers forked after numba.get_num_threads() compile parallel=True kernels into the cache (they never run one: a
# child of a process whose OpenMP layer has started may not)
FORKED_POOL = r"""
import numba
import numpy as np
from net import warm

@numba.njit(parallel=True, cache=True)
def total(x):
    s = 0.0
    for i in numba.prange(x.size):
        s += x[i]
    return s

@numba.njit(parallel=True, cache=True)
def scaled(x):
    y = np.empty_like(x)
    for i in numba.prange(x.size):
        y[i] = 2.0 * x[i]
    return y

numba.get_num_threads()
print(warm._start_method()._name)
sig = (numba.float64[::1],)
errors = warm.start_compiling([(total, [sig]), (scaled, [sig])], 2)()
print(errors or "ok")
print(total(np.ones(10)), scaled(np.ones(3)).sum(), total.stats.cache_hits[sig] + scaled.stats.cache_hits[sig])
"""


def _run_python(*args: str, **env: str) -> list[str]:
    """The words a new interpreter (python *args, crema's pool and the OpenMP layer asked for) prints."""
    env = {**os.environ, "CREMA_TASK_POOL": "1", "NUMBA_THREADING_LAYER": "omp", **env}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_workers_fork_until_an_openmp_loop_has_run(tmp_path) -> None:
    """The compile workers are forked (they start with everything imported) from a process whose Numba threading
    layer (OpenMP) has started but that has run no parallel loop yet (`crema serve`'s case: the plan asks
    numba.get_num_threads), and spawned once one has run (GNU OpenMP is not fork-safe with threads), or where one may
    have run before crema's counter was in place. Forked after the layer started, the workers compile parallel
    kernels into the cache, which the parent then loads."""
    from kernels import taskpool

    if not taskpool.available():  # the OpenMP loop counter comes with the pool (x86-64 Linux)
        pytest.skip("kernels.taskpool is not available here")
    assert _run_python("-c", START_METHOD, "counted") == ["fork", "fork", "True", "spawn", "True"]
    assert _run_python("-c", START_METHOD, "loop-first") == ["spawn"]
    script = tmp_path / "forked_pool.py"  # a file: Numba caches functions of files, not of -c scripts
    script.write_text(FORKED_POOL)
    assert _run_python(str(script), NUMBA_CACHE_DIR=str(tmp_path)) == ["fork", "ok", "10.0", "6.0", "2"]


def test_later_kernels_compile_when_asked_and_once(monkeypatch):
    """start_compiling's `later` groups (one process here): the first groups compile before it returns, the later ones
    only when `later()` is called, once whatever the number of calls and threads; `cancel` is there either way."""
    import threading

    from net import warm

    compiled = []
    monkeypatch.setattr(warm, "_compile", lambda kernel, sigs: compiled.append(kernel))
    monkeypatch.setattr(warm, "_name", lambda kernel: kernel)
    finish = warm.start_compiling([("now", ["sig"])], workers=1, later=[("then", ["sig"])])
    assert compiled == ["now"] and finish() == {}
    threads = [threading.Thread(target=finish.later) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finish.later() == {} and compiled == ["now", "then"]
    finish.cancel()


def test_serve_warms_the_batches_it_runs(tmp_path):
    """crema serve's warm-up follows server.model.infer_any: a batched net (LeNet) at 1, 2, 4 and 8 (its chunks), with
    no one-thread pass; a net whose micro-batches run image by image (here a net without weights: FLOPs per weight
    byte unbounded) at batch 1, and a one-thread batch-1 pass for its copies (images_pass)."""
    from net import Net
    from net.warm import SERVE_BATCHES, images_pass, serve_batches

    lenet = ROOT / "models" / "lenet" / "deploy.prototxt"
    net = Net.load(lenet, phase="test")
    assert serve_batches(net) == SERVE_BATCHES == (1, 2, 4, 8)
    assert images_pass(lenet, None, net) is None
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    tiny = Net.load(proto, phase="test")
    assert serve_batches(tiny) == (1,)
    _, failure = collect(images_pass(proto, None, tiny))  # a pass over the net on one thread, run dry
    assert failure is None
