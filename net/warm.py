"""Compiling what a model needs before it runs, several kernels at a time: `crema warm`, and the first `crema serve`
or `crema train` on a machine whose Numba cache lacks them.

    crema warm [--model NAME | --model M.prototxt --weights W] [--solver S.prototxt] [--workers N]
    prepare(run, say=print)            # the kernels `run()` would compile, compiled by a pool of processes
    prepare_forward(prototxt, weights) # ... for a forward at batch 1 (what `crema serve` warms up)
    prepare_training(solver_param)     # ... for the first training iteration and the test pass before it

Numba compiles a kernel on its first call with new argument types, in the calling process and one kernel at a time
(a process-wide compiler lock), then writes the machine code to its on-disk cache (NUMBA_CACHE_DIR, else __pycache__
beside the sources) where later processes load it in milliseconds. On a new machine the first forward is therefore
a long run of single-threaded compiles. `prepare` splits it across processes:

1. ``collect(run)``: `run()` (a pass over a throwaway net: its outputs are garbage afterwards) with every call of a
   compiled function that has no code in memory recorded, the function and its argument types, and skipped: nothing
   is compiled or run. A skipped call returns None, or 1.0 per value the kernel's return statements give (so
   `loss, valid = kernel(...)` goes on). A pass that fails anyway (Python code using a skipped kernel's result
   otherwise) stops there; what it had recorded is still prepared, the rest compiles on first use as before. The
   worker bodies of kernels.tasks are recorded too (their address reads 0 during the pass, and their drivers are
   skipped like any uncompiled kernel).
2. the calls whose code is in the on-disk cache are loaded from it (``load_cached``); they cost nothing more.
3. the others are compiled by a pool of `workers` processes (forked where that is safe: Linux, this process runs
   one Python thread and no Numba parallel loop has run in it, see `_start_method`; else spawned, a fresh
   interpreter), every signature of one
   function in one worker (two processes adding to one function's cache index at once could lose an entry), the
   longest compiles first (task bodies, then parallel kernels, then the rest). Each worker writes the cache; the
   caller's next call of the kernel loads it from there. One function alone compiles in this process (a worker
   would add its start-up).

The numbers do not change: a worker compiles the same function (the module's own object, or a serial twin or a
closure rebuilt from its code and cell values) for the same argument types, with the same flags and the same tiling
key (kernels.tiling), so the code it writes is the code this process would have compiled and loaded
(tests/net/test_warm.py compares the bits).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- 1. which kernels a pass needs -------------------------------------------------------------------------------
@contextlib.contextmanager
def recording() -> Iterator[dict]:
    """While inside: a call, from this thread, of a Numba function with no compiled code in memory for its argument
    types is recorded in the yielded {dispatcher: [argument types, ...]} (first-call order) and does nothing (returns
    a stand-in). Calls that have code in memory, and other threads' calls, run as usual."""
    from numba.core import types
    from numba.core.dispatcher import OmittedArg, _DispatcherBase

    from kernels import tasks

    calls: dict = {}
    original = _DispatcherBase._compile_for_args
    owner = threading.get_ident()

    def record(self, *args, **kws):
        if threading.get_ident() != owner:  # another thread's call compiles and runs as usual
            return original(self, *args, **kws)
        sig = tuple(types.Omitted(a.value) if isinstance(a, OmittedArg) else self.typeof_pyval(a) for a in args)
        sigs = calls.setdefault(self, [])
        if sig not in sigs:
            sigs.append(sig)
        return _stand_in(self.py_func)

    _DispatcherBase._compile_for_args = record
    try:
        with tasks.recording() as bodies:  # task bodies (kernels.tasks): recorded as {task: [None]}
            try:
                yield calls
            finally:
                for task in bodies:
                    calls.setdefault(task, [None])
    finally:
        _DispatcherBase._compile_for_args = original


@functools.cache
def _stand_in(py_func) -> Callable:
    """What a skipped call returns (Numba calls the result of _compile_for_args with the arguments): None for a kernel
    that returns nothing, 1.0 for one that returns a value, a tuple of 1.0s for one whose return statements give
    tuples of that length (read from its source): Python code that unpacks a result (`loss, valid = ...`) or divides
    by it goes on with the pass."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(py_func)))
    except (OSError, TypeError, SyntaxError):
        return _skip
    returns = [node.value for node in ast.walk(tree.body[0]) if isinstance(node, ast.Return) and node.value is not None]
    if not returns:
        return _skip
    sizes = {len(v.elts) if isinstance(v, ast.Tuple) else 0 for v in returns}
    value = (1.0,) * sizes.pop() if len(sizes) == 1 and 0 not in sizes else 1.0
    return lambda *_args: value


def _skip(*_args) -> None:
    return None


def collect(run: Callable[[], object]) -> tuple[dict, str | None]:
    """({dispatcher: [signature, ...]}, None) for what `run()` would compile, or (what it had, the error) when the
    pass failed part way."""
    with recording() as calls:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - a pass over skipped kernels may trip on their missing results
            return calls, f"{type(exc).__name__}: {exc}"
        finally:
            if any(getattr(d, "targetoptions", {}).get("parallel") for d in list(calls)):
                from kernels import tasks  # the pass runs OpenMP loops: its tasks will launch on OpenMP too

                tasks._LAUNCH.address  # noqa: B018 - recorded (or loaded) by reading it
    return calls, None


# -- 2. which of them the on-disk cache holds ------------------------------------------------------------------
def _is_task(kernel) -> bool:
    from kernels.tasks import Task

    return isinstance(kernel, Task)


def is_cached_kind(dispatcher) -> bool:
    """Does this function write Numba's on-disk cache (cache=True)? Others would be compiled for nothing."""
    from numba.core.caching import NullCache

    if _is_task(dispatcher):
        return True
    return not isinstance(getattr(dispatcher, "_cache", NullCache()), NullCache)


def load_cached(dispatcher, sig) -> bool:
    """Load `sig`'s code from Numba's on-disk cache into `dispatcher` (as its first call would); False when the cache
    lacks it. The steps of Numba's Dispatcher.compile up to its compile."""
    from numba.core import sigutils
    from numba.core.compiler_lock import global_compiler_lock

    if _is_task(dispatcher):
        return dispatcher.load_cached()
    with global_compiler_lock:
        args, _ = sigutils.normalize_signature(sig)
        if tuple(args) in dispatcher.overloads:
            return True
        cres = dispatcher._cache.load_overload(sig, dispatcher.targetctx)
        if cres is None:
            return False
        dispatcher._cache_hits[sig] += 1
        if not cres.objectmode:
            dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
        dispatcher.add_overload(cres)
        return True


# -- 3. compiling the rest in worker processes -----------------------------------------------------------------
def _name(dispatcher) -> str:
    if _is_task(dispatcher):
        return dispatcher.name
    f = dispatcher.py_func
    return f"{f.__module__}.{f.__qualname__}"


def _reference(dispatcher) -> tuple:
    """How a worker finds this function: ("attr", module, name) for a module's own function, ("twin", module, name)
    for its serial twin (kernels.serial), else ("value", pickled dispatcher): a closure rebuilt from code and cells."""
    import importlib

    from kernels.serial import serial_twin

    if _is_task(dispatcher):
        return ("task", *dispatcher.reference())
    owner = getattr(dispatcher, "crema_task", None)
    if owner is not None:  # a task's driver
        return ("driver", *owner[0].reference(), owner[1])
    f = dispatcher.py_func
    module = importlib.import_module(f.__module__)
    if getattr(module, f.__name__, None) is dispatcher:
        return ("attr", f.__module__, f.__name__)
    base = f.__name__.removesuffix("_serial_twin")
    if (
        base != f.__name__
        and getattr(module, base, None) is not None
        and serial_twin(getattr(module, base)) is dispatcher
    ):
        return ("twin", f.__module__, base)
    return ("value", pickle.dumps(dispatcher))


def _resolve(ref: tuple):
    import importlib

    if ref[0] in ("task", "driver"):
        from kernels.tasks import resolve

        task = resolve(ref[1], ref[2])
        return task if ref[0] == "task" else getattr(task, ref[3])
    if ref[0] == "value":
        dispatcher = pickle.loads(ref[1])
        dispatcher.enable_caching()  # a rebuilt dispatcher starts without the on-disk cache
        return dispatcher
    function = getattr(importlib.import_module(ref[1]), ref[2])
    if ref[0] == "twin":
        from kernels.serial import serial_twin

        return serial_twin(function)
    return function


def _compile_in_worker(ref: tuple, sigs: list, nice: int = 0) -> tuple[float, str | None]:
    """(seconds, None) after compiling `sigs` of the function `ref` names into Numba's cache, or (seconds, error).
    nice: this worker's niceness at least that from now on (background compiles: `start_compiling`'s `later`)."""
    import kernels  # noqa: F401 - keys the cache on the tiling constants before anything compiles

    if nice:
        with contextlib.suppress(OSError, AttributeError):  # (not on Windows)
            os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    t0 = time.perf_counter()
    try:
        _compile(_resolve(ref), sigs)
    except Exception as exc:  # noqa: BLE001 - reported; the caller's first call compiles it instead
        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - t0, None


def _compile(kernel, sigs: list) -> None:
    if _is_task(kernel):
        kernel.compile()
        return
    for sig in sigs:
        kernel.compile(sig)


@dataclass
class Prepared:
    """What `prepare` found and did: kernels (function, signature) the pass calls, those loaded from the cache, those
    compiled (by `workers` processes, in `seconds`), and the errors (name: message) of those left to compile on use."""

    calls: int = 0
    cached: int = 0
    compiled: int = 0
    workers: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    note: str | None = None


def default_workers() -> int:
    return os.cpu_count() or 1


def _start_method():
    """How the workers start: forked where that is safe, else spawned. A forked worker begins with everything
    imported and Numba's compiler set up: its first job starts 0.5-0.9 s sooner than a new interpreter's, and
    EfficientNet-Lite0's 18 kernels compile in 6.7-6.8 s instead of 7.7-8.0 (2 cores, Zen 4). Safe: Linux, this
    process runs one Python thread (kernels.taskpool's are Python threads too), and no OpenMP loop has run in it
    (`_omp_unused`). A worker only compiles: it never runs a kernel, so it never enters a parallel loop either. That
    is an invariant, not a nicety: Numba's OpenMP layer remembers the process that started it, and a child forked
    after that is killed (SIGTERM) by its first parallel loop; a worker must never run one."""
    import multiprocessing

    if sys.platform.startswith("linux") and threading.active_count() == 1 and _omp_unused():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _omp_unused() -> bool:
    """Whether this process has run no Numba parallel loop: its threading layer not started, or started (any
    numba.get_num_threads() does) as the OpenMP layer, which creates its threads at the first loop, not then, with
    kernels.taskpool's counter of OpenMP loops in place since before the layer started and at 0. GNU OpenMP is not
    fork-safe once it has threads; the other layers (workqueue, TBB) may have started theirs: spawned."""
    import numba
    from numba.np.ufunc import parallel

    from kernels import taskpool

    if not parallel._is_initialized:
        return True
    return numba.threading_layer() == "omp" and taskpool.omp_counted_from_start() and taskpool.omp_loops() == 0


def _longest_first(group: tuple) -> tuple:
    """Sort key of a (dispatcher, sigs) group: the long compiles first, so that the pool hands out the short ones as
    workers free up (the last one to start then ends soon after the others): task bodies (kernels.tasks) by their
    compile_s, longest first, then parallel=True kernels, then the rest. (EfficientNet-Lite0's cold `crema serve`, 18
    tasks on 2 workers, Zen 4: the inner product's task, 1.9 s to compile, was handed out last, and the serve took 0.7
    s longer once its tiles grew; handed out early, 0.2-0.3 s: 9.6-9.9 s against 9.4-9.6 s before the tiles.)"""
    kernel = group[0]
    if _is_task(kernel):
        return (0, -kernel.compile_s)
    return (1 if kernel.targetoptions.get("parallel") else 2, 0.0)


LATER_NICE = 10  # the niceness of a worker once it compiles `later` kernels (the caller serves meanwhile)


def start_compiling(
    groups: list[tuple], workers: int, say: Say = _quiet, later: list[tuple] = ()
) -> Callable[[], dict[str, str]]:
    """Compile [(dispatcher, [sig, ...]), ...] into Numba's cache, `workers` processes at a time: they are compiling
    when this returns (one worker or one function is compiled in this process before it returns); the returned
    function waits for them and gives {name: error} for the ones that failed. `later`: more groups, compiled after
    those by the same processes at niceness LATER_NICE; the returned function does not wait for them, its `later()`
    does (and gives their errors; without worker processes it compiles them in this process)."""
    errors: dict[str, str] = {}
    later_errors: dict[str, str] = {}
    if workers <= 1 or len(groups) + len(later) == 1:

        def compile_here(todo: list[tuple], errs: dict[str, str]) -> dict[str, str]:
            for dispatcher, sigs in todo:
                try:
                    _compile(dispatcher, sigs)
                except Exception as exc:  # noqa: BLE001 - the kernel's first call raises it again, where it belongs
                    errs[_name(dispatcher)] = f"{type(exc).__name__}: {exc}"
            return errs

        compile_here(groups, errors)
        done = lambda: errors
        done.later = _Once(functools.partial(compile_here, list(later), later_errors))
        done.cancel = _nothing
        return done
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = []
    for nice, part in ((0, groups), (LATER_NICE, later)):
        for dispatcher, sigs in sorted(part, key=_longest_first):
            try:
                jobs.append((dispatcher, _reference(dispatcher), sigs, nice))
            except Exception as exc:  # noqa: BLE001 - not picklable: compiled on first use instead
                why = f"cannot hand to a worker: {type(exc).__name__}: {exc}"
                (later_errors if nice else errors)[_name(dispatcher)] = why
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_start_method())
    try:  # the workers start (fork) here, in this thread
        futures = {pool.submit(_compile_in_worker, ref, sigs, nice): (d, nice) for d, ref, sigs, nice in jobs}
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    first = [f for f, (_, nice) in futures.items() if not nice]
    rest = [f for f, (_, nice) in futures.items() if nice]

    def wait(part: list, errs: dict[str, str], shutdown: bool) -> dict[str, str]:
        for done, future in enumerate(as_completed(part), 1):
            name = _name(futures[future][0])
            try:
                seconds, error = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (memory, a signal): compiled on first use
                seconds, error = 0.0, f"worker lost: {type(exc).__name__}: {exc}"
            if error:
                errs[name] = error
            say(f"  [{done}/{len(part)}] {name} ({seconds:.1f} s){'  failed: ' + error if error else ''}")
        if shutdown:
            pool.shutdown()
        return errs

    def cancel() -> None:
        """Stop now: queued compiles dropped, the workers ended (a kernel they were writing is compiled on first
        use; Numba writes a cache entry whole or not at all)."""
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError):
                process.terminate()

    finish = functools.partial(wait, first, errors, not rest)
    finish.later = _Once(functools.partial(wait, rest, later_errors, True))
    finish.cancel = cancel
    return finish


def _nothing() -> None:
    pass


class _Once:
    """fn() run by the first caller; later callers (any thread) wait for it and get the same result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.lock, self.done, self.result = fn, threading.Lock(), False, None

    def __call__(self) -> Any:
        with self.lock:
            if not self.done:
                self.result, self.done = self.fn(), True
            return self.result


def prepare(
    run: Callable[[], object], *, workers: int | None = None, say: Say = _quiet, verbose: bool = False
) -> Prepared:
    """Compile, `workers` processes at a time (default: one per core), the kernels `run()` would compile one by one;
    `run` is a pass over a throwaway net (see the module docstring). `say` gets a line before and after compiling,
    and one per kernel when `verbose`. Nothing is compiled when the cache has everything. Spawned workers (where
    they cannot be forked) import the caller's main module: a script that calls this needs
    `if __name__ == "__main__":` (as any multiprocessing program; `crema` and `python -m` are fine)."""
    return start_prepare(run, workers=workers, say=say, verbose=verbose)()


def start_prepare(
    run: Callable[[], object],
    *,
    workers: int | None = None,
    say: Say = _quiet,
    verbose: bool = False,
    later: Callable[[], object] | None = None,
) -> Callable[[], Prepared]:
    """`prepare` started: when this returns, the workers are compiling; the returned function waits for them (and
    says "compiled ..."). In between, this process may do other work that compiles nothing (`crema serve` imports its
    web app meanwhile): what it compiled could race a worker on the same cache entry. `later`: a second pass whose
    kernels that `run` does not need compile after run's in the same processes, at a lower priority
    (`start_compiling`); the returned function does not wait for them: its `later()` does (any thread, any number of
    times; it says "compiled ... in the background" and returns their Prepared; `crema serve`: its feature maps'
    plan, server.inside), and its `cancel()` drops what is left (a server that stops meanwhile)."""
    report = Prepared()
    todo = _missing(run, report)
    later_report = Prepared()
    later_todo = _missing(later, later_report, skip=todo) if later is not None else []
    t0 = time.perf_counter()
    if todo:
        report.compiled = sum(len(sigs) for _, sigs in todo)
        report.workers = 1 if len(todo) == 1 else min(workers or default_workers(), len(todo))
        say(
            f"compiling {report.compiled} kernels into Numba's cache ({report.workers} process"
            f"{'es' if report.workers > 1 else ''}; once per machine: "
            f"later starts load them from {numba_cache_dir()})"
        )
    if later_todo:
        later_report.compiled = sum(len(sigs) for _, sigs in later_todo)
        later_report.workers = min(workers or default_workers(), len(todo) + len(later_todo))

    def no_workers(exc: BaseException, part: list) -> dict[str, str]:  # everything compiles on first use, as before
        return {_name(d): f"no worker processes: {type(exc).__name__}: {exc}" for d, _ in part}

    pending: Callable[[], dict[str, str]] = dict
    pending_later: Callable[[], dict[str, str]] = dict
    cancel: Callable[[], None] = _nothing
    if todo or later_todo:
        try:
            pending = start_compiling(todo, max(report.workers, later_report.workers), say if verbose else _quiet,
                                      later=later_todo)  # fmt: skip
            pending_later, cancel = pending.later, pending.cancel
        except (OSError, RuntimeError) as exc:
            pending = functools.partial(no_workers, exc, todo)
            pending_later = functools.partial(no_workers, exc, later_todo)

    def wait(rep: Prepared, pending_part: Callable[[], dict[str, str]], part: list, what: str) -> Prepared:
        try:
            rep.errors = pending_part()
        except (OSError, RuntimeError) as exc:
            rep.errors = no_workers(exc, part)
        rep.seconds = time.perf_counter() - t0
        failed = f", {len(rep.errors)} left to compile on first use" if rep.errors else ""
        say(f"compiled {rep.compiled - len(rep.errors)} {what} in {rep.seconds:.1f} s{failed}")
        return rep

    def finish() -> Prepared:
        return wait(report, pending, todo, "kernels") if todo else report

    def finish_later() -> Prepared:
        if not later_todo:
            return later_report
        return wait(later_report, pending_later, later_todo, "more kernels in the background")

    finish.later = _Once(finish_later)
    finish.cancel = cancel
    return finish


def _missing(run: Callable[[], object], report: Prepared, skip: list[tuple] = ()) -> list[tuple]:
    """[(dispatcher, [sig, ...]), ...]: what `run()` would compile that Numba's cache lacks (the rest is loaded from
    it now) and `skip` does not list; counted in `report`."""
    calls, report.note = collect(run)
    skipped = {d: set(sigs) for d, sigs in skip}
    todo = []
    for dispatcher, sigs in calls.items():
        report.calls += len(sigs)
        if not is_cached_kind(dispatcher):
            continue
        sigs = [sig for sig in sigs if sig not in skipped.get(dispatcher, ())]
        missing = [sig for sig in sigs if not load_cached(dispatcher, sig)]
        report.cached += len(sigs) - len(missing)
        if missing:
            todo.append((dispatcher, missing))
    return todo


def numba_cache_dir() -> str:
    """Where Numba's cache goes: NUMBA_CACHE_DIR, else __pycache__ folders beside the kernels' sources."""
    from numba.core import config

    return config.CACHE_DIR or str(Path(__file__).resolve().parents[1] / "kernels" / "__pycache__")


# -- the passes -------------------------------------------------------------------------------------------------
SERVE_BATCHES = (1, 2, 4, 8)  # the batches `crema serve` runs a model at (server.model's `infer_any`): warmed


def serve_passes(
    prototxt,
    weights,
    net,
    keep,
    *,
    batching: bool = True,
    maps: bool = True,
    threads: int | None = None,
    memory_budget=None,
) -> tuple[Callable[[], object], Callable[[], object] | None]:
    """(run, later): what `crema serve` compiles for its model (`net`: it, loaded; keep: its kept blobs). run: the
    forwards it runs before it answers, at `serve_batches` (batch 1 alone without batching); later (None where there
    is nothing), what it compiles after start-up: with `maps`, the feature maps' forward (server.inside: a batch-1
    copy that observes the shown layers, so its plan fuses less), and with batching the one-thread forward of
    infer_any's copies (`images_pass`)."""
    from .visualize import view_tops

    kw = {"threads": threads, "memory_budget": memory_budget, "keep": keep}
    run = forward_pass(prototxt, weights, batch=serve_batches(net) if batching else 1, **kw)
    passes = [
        forward_pass(prototxt, weights, observe=view_tops, **kw) if maps else None,
        images_pass(prototxt, weights, net, memory_budget=memory_budget, keep=keep) if batching else None,
    ]
    passes = [p for p in passes if p is not None]
    return run, ((lambda: [p() for p in passes]) if passes else None)


def images_pass(prototxt, weights, net, *, memory_budget=None, keep=()):
    """For a net whose micro-batches run image by image (``per_image.Images``' batch-1 copies, one Numba thread
    each), that forward: batch 1 on one thread (3 drivers more for EfficientNet-Lite0, whose bodies the forward on
    all threads has; `crema serve` compiles them in the background, as its first micro-batch of two can wait for
    them); None for any other net."""
    from .per_image import image_by_image

    if not image_by_image(net):
        return None
    return forward_pass(prototxt, weights, threads=1, memory_budget=memory_budget, keep=keep)


def serve_batches(net) -> tuple[int, ...]:
    """The batches `crema serve` runs this net at, so warms it up at: SERVE_BATCHES (its micro-batches in chunks of
    8, 4, 2 and 1: LeNet's batches of 4 and 8 call kernels that 1 and 2 do not), or batch 1 alone for a net whose
    micro-batches run image by image as batch-1 forwards (server.model's `infer_any`, ``per_image.image_by_image``:
    EfficientNet-Lite0's batch-2 plan compiled 2 kernels more, 2.4 s of a new machine's start on 2 cores)."""
    from .per_image import image_by_image

    return (1,) if image_by_image(net) else SERVE_BATCHES


def forward_pass(
    prototxt: str | os.PathLike,
    weights: str | os.PathLike | None,
    *,
    batch: int | tuple[int, ...] = 1,
    threads: int | None = None,
    memory_budget=None,
    keep: tuple[str, ...] | Callable[[Any], tuple[str, ...]] | None = (),
    observe: Callable[[Any], tuple[str, ...]] | None = None,
):
    """A forward of a throwaway copy of the net (test phase, these weights: the plan picks kernels by the weights
    too) at `batch` on zeros (a tuple: one forward at each; `crema serve` warms SERVE_BATCHES, as its micro-batches
    run other kernels than a single request, e.g. LeNet's and CaffeNet's chunked inner product), on `threads` Numba
    threads (default: this thread's count; the plan's kernels depend on it); returns run(). keep (or keep(net)): the
    net shares its activations keeping these blobs (``Net.share_activations``) and is frozen (``Net.freeze``), as
    `crema serve` and `crema classify` run a model: the plan then fuses steps (an expand and its depthwise, handoffs in
    blocks) and runs other kernels than without (None: neither, as `crema time` runs it). observe: observe(net) ->
    the blobs read during the forward (``Net.observe``: `crema serve`'s feature maps, server.inside,
    ``net.visualize.view_tops``), which the plan leaves out of those fusions."""
    import numba
    import numpy as np

    from .net import Net

    requested = numba.get_num_threads()
    count = threads or requested
    numba.set_num_threads(count)
    try:  # loaded outside `recording`: what loading compiles, the caller's own load has compiled already
        net = Net.load(prototxt, weights, phase="test", memory_budget=memory_budget)
    finally:
        numba.set_num_threads(requested)
    if keep is not None:  # run as classify and serve run it: activations shared, weights frozen
        net.share_activations(keep=tuple(keep(net) if callable(keep) else keep))
        net.freeze()
    for name in observe(net) if observe is not None else ():
        net.observe(name, _ignore)
    batches = (batch,) if isinstance(batch, int) else tuple(batch)
    inputs = [{name: np.zeros((b, *net.blob(name).shape[1:]), np.float32) for name in net.inputs} for b in batches]

    def run() -> None:
        try:
            numba.set_num_threads(count)
            for one in inputs:
                net.forward(**one)
        finally:
            numba.set_num_threads(requested)

    return run


def _ignore(_name, _array) -> None:
    pass


def training_pass(param, *, source: str = "", memory_budget=None):
    """A throwaway solver's first iteration, with the test pass Caffe runs before it (test_initialization); returns
    run(). `param`: a parsed solver prototxt (net.prototxt_loader.load_solver_prototxt)."""

    from .solver import Solver

    solver = Solver(param, source=source, log=_quiet, progress=False, memory_budget=memory_budget)

    def run() -> None:
        if solver.test_nets and param.test_interval > 0 and param.test_initialization:
            for net in solver.test_nets:
                net.forward_loss()
        solver.net.forward_loss()
        solver.net.backward()
        solver.apply_update()

    return run


def prepare_forward(
    prototxt,
    weights,
    *,
    batch: int | tuple[int, ...] = 1,
    threads: int | None = None,
    memory_budget=None,
    keep: tuple[str, ...] | None = (),
    observe: Callable[[Any], tuple[str, ...]] | None = None,
    wait: bool = True,
    **kw,
):
    """`prepare` for a forward at `batch` (`keep`, `observe`: see forward_pass); with wait=False, `start_prepare`'s
    function to wait with."""
    run = forward_pass(
        prototxt, weights, batch=batch, threads=threads, memory_budget=memory_budget, keep=keep, observe=observe
    )
    return prepare(run, **kw) if wait else start_prepare(run, **kw)


def prepare_training(param, *, source: str = "", memory_budget=None, **kw) -> Prepared:
    return prepare(training_pass(param, source=source, memory_budget=memory_budget), **kw)


# -- `crema warm` -----------------------------------------------------------------------------------------------
def cmd_warm(args: argparse.Namespace) -> int:
    from .visualize import view_tops
    from .zoo import DEFAULT_MODEL, is_model_name, resolve

    say = lambda msg: print(f"crema: {msg}", flush=True)
    reports = []
    if args.solver:
        from .prototxt_loader import load_solver_prototxt

        say(f"training with {args.solver}: the first iteration and the test pass")
        param = load_solver_prototxt(args.solver)
        reports.append(prepare_training(param, source=args.solver, workers=args.workers, say=say, verbose=True))
    if args.model or not args.solver:
        name = args.model or DEFAULT_MODEL
        if is_model_name(name):
            files = resolve(name)
            prototxt, weights = files.prototxt, files.weights
        else:  # without --weights: the prototxt's fillers (the plan may pick other kernels than for real weights)
            prototxt, weights = name, args.weights
        from .classify import feature_blob
        from .net import Net

        def keep(net) -> tuple[str, ...]:  # as crema serve runs it (server.model)
            try:
                return (feature_blob(net),)
            except ValueError:  # no layer with parameters (crema serve refuses the net)
                return ()

        if args.batch is None:
            run, later = serve_passes(prototxt, weights, Net.load(prototxt, weights, phase="test"), keep)
            say(f"{name}: the forwards crema serve runs, and its feature maps' forward at batch 1")
        else:
            run = forward_pass(prototxt, weights, batch=args.batch, keep=keep)
            later = forward_pass(prototxt, weights, keep=keep, observe=view_tops)  # the feature maps' (server.inside)
            say(f"{name}: forwards at batch {args.batch} as crema serve runs them, and its feature maps' at batch 1")
        preparing = start_prepare(run, later=later, workers=args.workers, say=say, verbose=True)
        reports += [preparing(), preparing.later()]
    for r in reports:
        if r.note:
            say(f"the dry pass stopped early ({r.note}): the kernels after that point compile on first use")
        if not r.compiled and r.calls:
            say(f"all {r.calls} kernels already in Numba's cache ({numba_cache_dir()})")
    return 1 if any(r.errors for r in reports) else 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "warm",
        help="compile a model's kernels into Numba's cache ahead of time, in parallel (default: the serve model)",
        description="Compile, one process per core, the kernels a forward of the model (and with --solver, the first "
        "training iteration) needs, into Numba's on-disk cache; later `crema serve` / `crema train` load them. The "
        "kernels depend on the thread count: give the --threads the model will run with (default: all cores).",
    )
    p.add_argument("--model", help="a model name or a deploy .prototxt (default: the default model; with --solver only "
                   "the solver's net unless given)")  # fmt: skip
    p.add_argument("--weights", help=".caffemodel for a .prototxt --model (default: its fillers)")
    p.add_argument("--solver", help="also a solver .prototxt: its first training iteration and test pass")
    p.add_argument("--batch", type=int, help="forward batch size (default: those `crema serve` runs: 1, 2, 4 and 8, or 1 "
                   "where its micro-batches run image by image)")  # fmt: skip
    p.add_argument("--workers", type=int, help="compiling processes (default: one per core)")
    p.set_defaults(func=cmd_warm)


if __name__ == "__main__":  # python -m net.warm: the same as `crema warm`
    parser = argparse.ArgumentParser(prog="crema")
    add_commands(parser.add_subparsers(dest="command", required=True))
    sys.exit(cmd_warm(parser.parse_args(["warm", *sys.argv[1:]])))
