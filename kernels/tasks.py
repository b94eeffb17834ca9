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

The drivers are one tiny loop each (a fraction of a second to compile; the parallel one copies the arguments into
its frame first and hands its loop only their address, so Numba's gufunc for the loop takes two integers, not a
dozen arrays); the body, with its callees, compiles once for both. The numbers are those of the body compiled
inside a kernel: same code, same order of operations, and by default NumPy's error model, as Numba compiles a prange
body (no zero test around each integer // and %).

Safety: a driver calls an address, so the argument types the caller passes must be the ones the body was compiled
for. Each task has its own drivers, built with its declared types; a driver called with other types fails to
compile with a TypeError that names both (never a call with mismatched arguments). An address of 0 (a task not
compiled yet, see `net.warm`) is skipped by the drivers. The drivers' cache entries are keyed on the declared types
(their names carry a hash of them), so a changed declaration never loads a driver built for the old one.

Compile time: a body whose hot loops are explicit vector code (the tiles in LLVM IR) does not need LLVM's -O3; with
``opt=1`` it compiles in about a fifth less CPU time and runs as fast, with the same bits (benchmarks/perf_notes.md).
The drivers compile at level 1 (DRIVER_OPT). A body's level is not part of its cache key: a cache written at another
level is loaded as it is.

`net.warm` compiles the tasks a pass needs in worker processes like the kernels: while `recording()` is active a
task that is not in the on-disk cache is recorded and reads as address 0 instead of compiling.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import threading
import types as pytypes
from collections.abc import Iterator

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

DRIVER_OPT = 1  # LLVM optimisation level of the drivers (see `llvm_opt`)
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


def _checked_call(name: str, want: tuple):
    """An intrinsic call(address, t, args) that calls the C callback at `address` with (t, *args) when the types of
    (t, *args) are `want`; a TypeError at compile time otherwise."""

    @intrinsic
    def call(typingctx, address, t, args):
        got = (t, *args.types)
        if got != want:
            raise TypeError(f"task {name}: compiled for arguments {want}, called with {got}")

        def codegen(context, builder, signature, llargs):
            addr, t_val, tup = llargs
            return _emit_call(context, builder, want, addr, t_val, tup)

        return types.void(types.int64, t, args), codegen

    return call


def _block_call(want: tuple):
    """An intrinsic call_block(address, t, block) that calls the C callback at `address` with t and the arguments of
    types want[1:] that `_stash` copied to `block` (so that a parallel loop hands its gufunc two integers, not the
    arrays: a smaller gufunc to compile)."""
    args_type = types.Tuple(want[1:])

    @intrinsic
    def call_block(typingctx, address, t, block):
        def codegen(context, builder, signature, llargs):
            addr, t_val, blk = llargs
            tup = builder.load(builder.inttoptr(blk, context.get_value_type(args_type).as_pointer()))
            return _emit_call(context, builder, want, addr, t_val, tup)

        return types.void(types.int64, types.int64, types.int64), codegen

    return call_block


@intrinsic
def _stash(typingctx, args):
    """The address of a copy of the tuple `args` in the calling function's stack frame (valid until it returns; the
    caller keeps the arrays in it alive)."""

    def codegen(context, builder, signature, llargs):
        (tup,) = llargs
        slot = cgutils.alloca_once(builder, tup.type)
        builder.store(tup, slot)
        return builder.ptrtoint(slot, ir.IntType(64))

    return types.int64(args), codegen


def _parallel_driver(address, workers, *args):  # pragma: no cover - compiled
    _call(0, np.int64(0), args)  # address 0: calls nothing; checks the argument types when compiled
    block = _stash(args)
    for t in prange(workers):
        _call_block(address, np.int64(t), block)


def _serial_driver(address, workers, *args):  # pragma: no cover - compiled
    for t in range(workers):
        _call(address, np.int64(t), args)


def _driver(template, name: str, calls: dict, options: dict, opt: int | None):
    """`template` with its own name and the task's `_call` and `_call_block`, compiled by Numba with `options` (at
    LLVM optimisation level `opt`: see `llvm_opt`) and cached on disk."""
    code = template.__code__
    g = pytypes.FunctionType(code, {**template.__globals__, **calls}, name)
    g.__qualname__ = name
    g.__module__ = template.__module__
    dispatcher = njit(cache=True, **options)(g)
    if opt is not None:
        plain = dispatcher.compile  # called on a first call with new types and by net.warm

        def compile(sig, plain=plain):
            with llvm_opt(opt):
                return plain(sig)

        dispatcher.compile = compile
    return dispatcher


class Task:
    """A worker body ``body(t, *args)`` compiled once as a C callback and run by `parallel` / `serial` drivers (see
    the module docstring). `arg_types`: the Numba types of ``args`` (t is int64); `opt`: the LLVM optimisation level
    of the body at most (`llvm_opt`; None: Numba's, 3 unless NUMBA_OPT says otherwise); `options`: Numba's
    (boundscheck, fastmath, ...)."""

    def __init__(self, body, arg_types, *, opt: int | None = None, **options) -> None:
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
        self._cfunc = None
        self._address = 0
        key = hashlib.sha256(repr((self.arg_types, sorted(self.options.items()))).encode()).hexdigest()[:10]
        calls = {"_call": _checked_call(self.name, self.arg_types), "_call_block": _block_call(self.arg_types)}
        stem = f"{body.__name__}__{key}"
        # a driver is one loop calling an address: the lowest useful level for both (the same code at 1 and 3)
        self.parallel = _driver(_parallel_driver, f"{stem}_parallel", calls, {"parallel": True}, DRIVER_OPT)
        self.serial = _driver(_serial_driver, f"{stem}_serial", calls, {}, DRIVER_OPT)
        self.parallel.crema_task = (self, "parallel")  # how net.warm hands a driver to a worker process
        self.serial.crema_task = (self, "serial")

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def address(self) -> int:
        """The C callback's address: loaded from Numba's cache or compiled on first use (0 for a task recorded by
        `recording()` instead)."""
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


def resolve(module: str, attr: str) -> Task:
    task = getattr(importlib.import_module(module), attr)
    if not isinstance(task, Task):
        raise TypeError(f"{module}.{attr} is not a Task")
    return task
