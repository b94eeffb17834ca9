"""Worker bodies compiled once, as C callbacks, and run by small parallel and serial drivers.

A ``parallel=True`` Numba kernel is costly to compile: Numba outlines the body of each ``prange`` loop into a gufunc
and links every function the body calls into it and into the kernel's two wrappers, so the same callees (a tile's
LLVM IR, the packing loops) are optimised and turned into machine code three or four times per kernel, and again for
its serial twin (kernels/serial.py). On a new machine that was most of `crema serve`'s cold start (README, Cold start).

A `Task` is the body of such a loop as a plain Python function ``body(t, *args)`` (t: the worker, 0 <= t < workers)
with its argument types declared (arrays and scalars; a tuple's items go as separate arguments). It is compiled
once per machine as a Numba C callback (``cfunc``, in Numba's on-disk cache like every kernel; loaded on first use,
not at import) and called by address:

    _BODY = Task(_body, (float32[::1], int64[::1], ...), boundscheck=False)
    _BODY.parallel(_BODY.address, workers, x, plan, ...)  # for t in prange(workers): body(t, x, plan, ...)
    _BODY.serial(_BODY.address, 1, x, plan, ...)          # the same loop on the calling thread

The drivers are small serial functions (0.1-0.2 s each to compile); the body, with its callees, compiles once for
both. A parallel driver copies the body's address and its arguments into a record in its own stack frame and calls
one launcher, shared by every task, with that record and its trampoline, a few lines of LLVM IR emitted into the
driver (`_trampoline`: read the record, call the body with t and the arguments); the launcher calls
``tramp(t, block)`` once for every t < workers. Its address reaches the cached drivers through a process-wide slot
under a symbol of the JIT's table (LAUNCHER_SYMBOL), filled when a task's `address` is first read. Two launchers
(`use_pool`): kernels.taskpool's threads (x86-64 Linux: a slot goes to whichever thread comes first, so a thread
that another program keeps from running never holds a step up; compiled in milliseconds per process), used by
net.Net for inference plans that run no OpenMP loop, and `_LAUNCH`, a parallel C callback compiled once per machine
(``for t in prange(workers): tramp(t, block)`` on Numba's OpenMP threads), for everything else. (Before, each task's
parallel driver had a prange loop of its own, 0.3-0.6 s to compile each.) The numbers are those of the body compiled
inside a kernel: same code, same order of operations, and by default NumPy's error model, as Numba compiles a prange
body (no zero test around each integer // and %).

Safety: a driver calls an address, so the argument types the caller passes must be the ones the body was compiled
for. Each task has its own drivers, built with its declared types; a driver called with other types fails to
compile with a TypeError that names both (never a call with mismatched arguments). An address of 0 (a task not
compiled yet, see `net.warm`) is skipped by the drivers, and so is every parallel call while the launcher's slot is
0. The drivers' cache entries are keyed on the declared types (their names carry a hash of them), so a changed
declaration never loads a driver built for the old one.

Compile time: a body whose hot loops are explicit vector code (the tiles in LLVM IR) does not need LLVM's -O3; with
``opt=1`` it compiles in about a fifth less CPU time and runs as fast, with the same bits (benchmarks/perf_notes.md).
The drivers compile at level 1 (DRIVER_OPT). A body's level is not part of its cache key: a cache written at another
level is loaded as it is.

`net.warm` compiles the tasks a pass needs in worker processes like the kernels: while `recording()` is active a
task that is not in the on-disk cache is recorded and reads as address 0 instead of compiling (the launcher too).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import os
import threading
import types as pytypes
import warnings
import weakref
from collections.abc import Iterator

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

DRIVER_OPT = 1  # LLVM optimisation level of the drivers (see `llvm_opt`)
# The shared launcher's address, where every parallel driver reads it: a process-wide slot under a symbol of the JIT's
# table (drivers are cached machine code: the address of today's launcher cannot be a constant in them). 0 until a
# task's `address` puts a launcher there (`use_pool(True)`); the drivers launch nothing while it is 0.
LAUNCHER_SYMBOL = "crema_tasks_launcher"
_LAUNCHER_SLOT = ctypes.c_int64(0)
llvm.add_symbol(LAUNCHER_SYMBOL, ctypes.addressof(_LAUNCHER_SLOT))
_armed = False
_call = _call_block = None  # each driver's own (_checked_call, _block_call), given by _driver
_recorder: list | None = None  # the tasks recorded by `recording()`, in first-use order
_owner: int | None = None


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """While inside: reading the address of a task whose code is neither loaded nor in the on-disk cache, from this
    thread, records the task in the yielded list and gives 0 (the drivers skip it) instead of compiling."""
    global _recorder, _owner
    saved = _recorder, _owner
    _recorder, _owner = [], threading.get_ident()
    try:
        yield _recorder
    finally:
        _recorder, _owner = saved


def recording_active() -> bool:
    """Whether some thread is inside `recording()` (net.replay records nothing meanwhile)."""
    return _recorder is not None


@contextlib.contextmanager
def llvm_opt(level: int | None) -> Iterator[None]:
    """Numba's LLVM optimisation level (NUMBA_OPT, 3 unless set) at most `level` for the compiles inside (Numba reads
    it each time it builds a pass manager; the target machine keeps its own); None: unchanged. Holds Numba's compiler
    lock, so no other thread compiles meanwhile with it."""
    if level is None:
        yield
        return
    with global_compiler_lock:
        saved = config.OPT
        config.OPT = type(saved)(min(int(saved), level))
        try:
            yield
        finally:
            config.OPT = saved


def _emit_call(context, builder, want: tuple, addr, t_val, tup):
    """The C callback at `addr` (of argument types `want`) called with t_val and the items of the tuple `tup`, unless
    addr is 0."""
    values = [t_val] + [builder.extract_value(tup, i) for i in range(len(want) - 1)]
    fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(a) for a in want])
    with builder.if_then(builder.icmp_unsigned("!=", addr, addr.type(0)), likely=True):
        builder.call(builder.inttoptr(addr, fnty.as_pointer()), values)
    return context.get_dummy_value()


def _check_types(name: str, want: tuple, got: tuple) -> None:
    """TypeError (at a driver's compile time) unless a task compiled for argument types `want` is called with `got`."""
    if got != want:
        raise TypeError(f"task {name}: compiled for arguments {want}, called with {got}")


def _checked_call(name: str, want: tuple):
    """An intrinsic call(address, t, args) that calls the C callback at `address` with (t, *args) when the types of
    (t, *args) are `want`; a TypeError at compile time otherwise."""

    @intrinsic
    def call(typingctx, address, t, args):
        _check_types(name, want, (t, *args.types))

        def codegen(context, builder, signature, llargs):
            addr, t_val, tup = llargs
            return _emit_call(context, builder, want, addr, t_val, tup)

        return types.void(types.int64, t, args), codegen

    return call


def _trampoline(context, module, want: tuple):
    """The function ``void tramp(i64 t, i64 block)`` of `module` that calls the C callback whose address is the first
    field of the record at `block`, with t and the arguments (of types want[1:]) that follow it: what the shared
    launcher's threads call. Emitted once per module, in LLVM IR (no Numba pipeline: nothing to compile but itself)."""
    name = "crema_task_trampoline_" + hashlib.sha256(repr(want).encode()).hexdigest()[:16]
    try:
        return module.get_global(name)
    except KeyError:
        pass
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64, i64]), name)
    fn.linkage = "internal"
    builder = ir.IRBuilder(fn.append_basic_block())
    t_val, blk = fn.args
    record = ir.LiteralStructType([i64, context.get_value_type(types.Tuple(want[1:]))])
    rec = builder.load(builder.inttoptr(blk, record.as_pointer()))
    _emit_call(context, builder, want, builder.extract_value(rec, 0), t_val, builder.extract_value(rec, 1))
    builder.ret_void()
    return fn


def _external_i64(module, name: str):
    """The declaration of the external i64 `name` in `module` (the JIT resolves it through llvmlite's symbol table)."""
    try:
        return module.get_global(name)
    except KeyError:
        gv = ir.GlobalVariable(module, ir.IntType(64), name)
        gv.linkage = "external"
        return gv


def _block_call(name: str, want: tuple):
    """An intrinsic launch(address, workers, args) that runs the C callback at `address` for t in 0 .. workers - 1 on
    Numba's threads through the shared launcher (`_LAUNCH`, its address read from the symbol LAUNCHER_SYMBOL): the
    address and the arguments (of types want[1:]) are copied to a record in the calling function's stack frame (valid
    until it returns; the caller keeps the arrays in it alive), and the launcher's threads call this driver's
    trampoline (`_trampoline`) with the record. Nothing runs while either address is 0; other argument types are a
    TypeError at compile time, as for `_checked_call`."""

    @intrinsic
    def launch(typingctx, address, workers, args):
        _check_types(name, want, (types.int64, *args.types))

        def codegen(context, builder, signature, llargs):
            addr, n, tup = llargs
            i64 = ir.IntType(64)
            record = ir.LiteralStructType([i64, tup.type])
            slot = cgutils.alloca_once(builder, record)
            builder.store(addr, cgutils.gep_inbounds(builder, slot, 0, 0))
            builder.store(tup, cgutils.gep_inbounds(builder, slot, 0, 1))
            where = builder.load(_external_i64(builder.module, LAUNCHER_SYMBOL))
            tramp = builder.ptrtoint(_trampoline(context, builder.module, want), i64)
            ready = builder.and_(builder.icmp_unsigned("!=", addr, i64(0)), builder.icmp_unsigned("!=", where, i64(0)))
            with builder.if_then(ready, likely=True):
                fnty = ir.FunctionType(ir.VoidType(), [i64, i64, i64])
                builder.call(builder.inttoptr(where, fnty.as_pointer()), [n, tramp, builder.ptrtoint(slot, i64)])
            return context.get_dummy_value()

        return types.void(types.int64, types.int64, args), codegen

    return launch


@njit(cache=True, inline="always")
def share16(n, t, workers):  # pragma: no cover - compiled
    """(lo, hi): worker t's share of n items in whole 16-item blocks (the last share takes what is left; a share
    may be empty), for bodies that walk a flat array, e.g. ``x[lo:hi]``: slices, so the loop over them is a
    range(size) (a range(lo, hi) of signed ints keeps Numba's negative-index test and does not vectorise)."""
    chunk = ((n + workers - 1) // workers + 15) // 16 * 16
    return min(n, t * chunk), min(n, (t + 1) * chunk)


def _parallel_driver(address, workers, *args):  # pragma: no cover - compiled
    _call_block(address, workers, args)  # the shared launcher: for t in prange(workers): body(t, *args)


def _serial_driver(address, workers, *args):  # pragma: no cover - compiled
    for t in range(workers):
        _call(address, np.int64(t), args)


def _driver(template, name: str, calls: dict):
    """`template` with its own name and the task's `_call` and `_call_block`, compiled by Numba at LLVM optimisation
    level DRIVER_OPT (`llvm_opt`; a driver is one loop calling an address: the same code at 1 and 3) and cached on
    disk."""
    code = template.__code__
    g = pytypes.FunctionType(code, {**template.__globals__, **calls}, name)
    g.__qualname__ = name
    g.__module__ = template.__module__
    dispatcher = njit(cache=True)(g)
    plain = dispatcher.compile  # called on a first call with new types and by net.warm

    def compile(sig):
        with llvm_opt(DRIVER_OPT):
            return plain(sig)

    dispatcher.compile = compile
    return dispatcher


ALL: list = []  # every Task made (module-level constants): kernels.program's recorder wraps their drivers
_CARRIED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> array: see carried()


def carried(array: np.ndarray) -> np.ndarray:
    """Mark an integer array that a task's workers change from call to call on purpose (state carried to the next
    call, e.g. ``fc``'s turns): a replay (``net.replay``) passes it as it is instead of restoring the contents it had
    when recorded, as it does for claim counters. Returns the array."""
    _CARRIED[id(array)] = array
    return array


def is_carried(array: np.ndarray) -> bool:
    """Was this very array marked with carried()?"""
    return _CARRIED.get(id(array)) is array


class Task:
    """A worker body ``body(t, *args)`` compiled once as a C callback and run by `parallel` / `serial` drivers (see
    the module docstring). `arg_types`: the Numba types of ``args`` (t is int64); `opt`: the LLVM optimisation level
    of the body at most (`llvm_opt`; None: Numba's, 3 unless NUMBA_OPT says otherwise); `compile_s`: about how long
    the body takes to compile (seconds on a Zen 4 EPYC core, measured with `crema warm`; 0: short), so that `net.warm`
    hands the long compiles to its workers first; `options`: Numba's (boundscheck, fastmath, ...)."""

    def __init__(self, body, arg_types, *, opt: int | None = None, compile_s: float = 0.0, **options) -> None:
        nested = [a for a in arg_types if isinstance(a, types.BaseTuple)]
        if nested:
            raise TypeError(f"task {body.__qualname__}: pass the items of {nested} as separate arguments")
        self.body = body
        self.arg_types = (types.int64, *arg_types)
        # as in the body of a prange loop, whose gufunc Numba compiles with NumPy's error model: no zero test (and
        # ZeroDivisionError) around each integer // and %, in the body and in the functions inlined into it
        self.options = {"error_model": "numpy", **options}
        self.name = f"{body.__module__}.{body.__qualname__}"
        self.opt = opt
        self.compile_s = float(compile_s)
        self._cfunc = None
        self._address = 0
        key = hashlib.sha256(repr((self.arg_types, sorted(self.options.items()))).encode()).hexdigest()[:10]
        calls = {
            "_call": _checked_call(self.name, self.arg_types),
            "_call_block": _block_call(self.name, self.arg_types),
        }
        stem = f"{body.__name__}__{key}"
        self.parallel = _driver(_parallel_driver, f"{stem}_parallel", calls)
        self.serial = _driver(_serial_driver, f"{stem}_serial", calls)
        self.parallel.crema_task = (self, "parallel")  # how net.warm hands a driver to a worker process
        self.serial.crema_task = (self, "serial")
        ALL.append(self)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def address(self) -> int:
        """The C callback's address: loaded from Numba's cache or compiled on first use (0 for a task recorded by
        `recording()` instead); a launcher for the parallel driver too: the pool's where it is enabled, else `_LAUNCH`,
        loaded or compiled (see `use_pool`; nothing while `recording()` records it instead)."""
        if self._address and _armed:
            return self._address
        address = self._own_address()
        if not _armed and self is not _LAUNCH:
            use_pool(True)
        return address

    def _own_address(self) -> int:
        if self._address:
            return self._address
        if _recorder is not None and _owner == threading.get_ident():
            if not self.load_cached():
                if self not in _recorder:
                    _recorder.append(self)
                return 0
            return self._address
        self.compile()
        return self._address

    def _callback(self):
        from numba.core.ccallback import CFunc

        if self._cfunc is None:
            self._cfunc = CFunc(self.body, (self.arg_types, types.void), locals={}, options=dict(self.options))
            self._cfunc.enable_caching()
        return self._cfunc

    def load_cached(self) -> bool:
        """Load the C callback from Numba's on-disk cache (no compiling); False when the cache lacks it."""
        if self._address:
            return True
        with global_compiler_lock:
            cf = self._callback()
            cres = cf._cache.load_overload(cf._sig, cf._targetdescr.target_context)
            if cres is None:
                return False
            cf._cache_hits += 1
            cf._library = cres.library
            cf._wrapper_name = cres.fndesc.llvm_cfunc_wrapper_name
            cf._wrapper_address = cres.library.get_pointer_to_function(cf._wrapper_name)
            self._address = int(cf._wrapper_address)
        return True

    def compile(self) -> None:
        """Load the C callback from the cache, or compile it (and write the cache)."""
        if self._address:
            return
        cf = self._callback()
        with llvm_opt(self.opt):
            cf.compile()
        self._address = int(cf.address)

    def reference(self) -> tuple[str, str]:
        """(module, attribute) under which a new process finds this task."""
        module = importlib.import_module(self.body.__module__)
        for attr, value in vars(module).items():
            if value is self:
                return self.body.__module__, attr
        raise LookupError(f"task {self.name} is not a module-level name of {self.body.__module__}")


@intrinsic
def _call_trampoline(typingctx, tramp, t, block):
    """Call ``void tramp(i64 t, i64 block)`` (a driver's `_trampoline`)."""

    def codegen(context, builder, signature, llargs):
        tramp_val, t_val, blk = llargs
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64])
        builder.call(builder.inttoptr(tramp_val, fnty.as_pointer()), [t_val, blk])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64), codegen


def _launch_body(workers, tramp, block):  # pragma: no cover - compiled
    """The one parallel loop of every task: for t in prange(workers): tramp(t, block). Compiled once (a parallel C
    callback) for all tasks; a driver hands it its trampoline and its record of the body's address and arguments."""
    for t in prange(workers):
        _call_trampoline(tramp, np.int64(t), block)


_LAUNCH = Task(_launch_body, (types.int64, types.int64), parallel=True)


POOL_ENV = "CREMA_TASK_POOL"  # "0": Numba's OpenMP loop (_LAUNCH) launches the tasks even where the pool is available
_pool_address = 0  # kernels.taskpool's launcher, once started
_pooled = False  # which launcher the slot holds: the pool's (True) or _LAUNCH's
_pool_ok = False  # pool_enabled(), read once at import (`_start_counting`)


def pool_enabled() -> bool:
    """Whether the parallel drivers may launch through kernels.taskpool (x86-64 Linux, unless CREMA_TASK_POOL=0)
    rather than through `_LAUNCH`, Numba's OpenMP loop (see `use_pool`)."""
    from kernels import taskpool

    return taskpool.available() and os.environ.get(POOL_ENV, "1") != "0"


def use_pool(on: bool) -> bool:
    """Launch the tasks through kernels.taskpool's threads (on, where `pool_enabled`) or through `_LAUNCH` from now on
    (process-wide: the drivers read one slot); returns whether the pool launches them. net.Net picks per plan: the
    pool for inference plans that run no OpenMP loop, else OpenMP (kernels.taskpool says why). Either launcher gives
    the same results. The pool's threads start on first use (not while `recording()`: nothing launches then, and
    net.warm may fork after it); `_LAUNCH` is loaded or compiled on first use (recorded while `recording()`)."""
    global _pool_address, _pooled, _armed, _pool_ok
    on = on and _pool_ok
    if on == _pooled and _armed:
        return on
    address = 0
    if on:
        if not _pool_address:
            if _recorder is not None and _owner == threading.get_ident():
                return False
            from numba import config as numba_config

            from kernels import taskpool

            try:
                _pool_address = taskpool.launcher(numba_config.NUMBA_NUM_THREADS)
            except Exception as exc:  # noqa: BLE001 - the OpenMP launcher always works
                warnings.warn(f"kernels.taskpool could not start ({exc}); tasks launch on OpenMP", stacklevel=2)
                _pool_ok = False
        address = _pool_address
    pooled = bool(address)
    if not address:
        address = _LAUNCH.address
    if address:
        _LAUNCHER_SLOT.value = address
        _armed, _pooled = True, pooled
    return pooled


def _start_counting() -> None:
    """Where the pool is enabled, count Numba's OpenMP loops from import on (kernels.taskpool.install_omp_probe;
    nothing is started), so that kernels linked later, every plan's, are counted."""
    global _pool_ok
    _pool_ok = pool_enabled()
    if _pool_ok:
        from kernels import taskpool

        taskpool.install_omp_probe()


_start_counting()


def _disarm_after_fork() -> None:
    """A forked child re-arms on its first task: its pool (kernels.taskpool) has none of the parent's threads."""
    global _armed, _pooled, _pool_address
    _armed, _pooled, _pool_address = False, False, 0
    _LAUNCHER_SLOT.value = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disarm_after_fork)


def resolve(module: str, attr: str) -> Task:
    task = getattr(importlib.import_module(module), attr)
    if not isinstance(task, Task):
        raise TypeError(f"{module}.{attr} is not a Task")
    return task
