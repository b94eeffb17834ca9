"""Task calls recorded once and replayed by one native call: a plan's steady forward without Python between steps.

A step of a net's plan (``net.net._Plan``) checks its arrays, picks its buffers and calls one or two task drivers
(``kernels.tasks``): Numba's dispatcher unboxes a dozen arguments, the driver copies them into a record and hands the
record to the launcher. In a steady forward (same shapes, same arrays) every step makes the same calls with the same
arguments each time, and that Python work (~4-5 us a step: ~0.3 ms of EfficientNet-Lite0's 4.4 ms at batch 1 on 2
threads) is repeated for nothing. Here the calls are made once more, natively:

    ops = Program()
    ops.call(task, "parallel", workers, address, args)  # as task.parallel(address, workers, *args) would
    ops.restore(counter)                                # the array's present contents copied back before each run
    ops.run()                                           # every op in order, in one ctypes call (the GIL released)

A call is kept as the launcher's record (the body's address and its arguments in Numba's native layout, the layout
the drivers' trampolines read, ``kernels.tasks._trampoline``) and a trampoline for the task's argument types, emitted
here (one small LLVM module a type signature, compiled at first use in each process, milliseconds, not cached).
"parallel" hands the record to the launcher the drivers use (the slot under ``tasks.LAUNCHER_SYMBOL``), "serial" calls
the trampoline for t < workers on the calling thread, as the serial driver does: the same bodies, the same arguments,
the same order, so the same bits. `restore` covers the arrays a call changes that the next run must find as they
were (the claim counters: ``gemm.image_counters`` hands out zeroed ones each call).

An array argument is passed as its data pointer, shape and strides, with no reference (meminfo and parent null, as
the bodies, C callbacks, never box or free it): the Program keeps every array it was given alive, and the caller must
not let them change (``net.replay`` guards that).
"""

from __future__ import annotations

import ctypes
import struct
import threading

import numpy as np
from llvmlite import ir
from numba import types

from kernels import tasks

_CALL_PARALLEL, _CALL_SERIAL, _COPY = 0, 1, 2
_lock = threading.Lock()
_tramps: dict[tuple, tuple] = {}  # argument types -> (library, trampoline address)
_runner: tuple | None = None  # (library, ctypes function)


def _context():
    from numba.core.registry import cpu_target

    return cpu_target.target_context


def _trampoline(want: tuple) -> int:
    """The address of ``void tramp(i64 t, i64 block)`` for a task of argument types `want` (t first), compiled once
    per process: ``kernels.tasks._trampoline``'s code, in a module of its own with external linkage."""
    with _lock:
        got = _tramps.get(want)
        if got is None:
            from numba.core.compiler_lock import global_compiler_lock

            context = _context()
            codegen = context.codegen()
            module = codegen._create_empty_module("crema_program_tramp")
            fn = tasks._trampoline(context, module, want)
            fn.linkage = "external"
            with global_compiler_lock:
                library = codegen.create_library("crema_program_tramp")
                library.add_ir_module(module)
                library.finalize()
                got = library, library.get_pointer_to_function(fn.name)
            _tramps[want] = got
        return got[1]


def _run_function():
    """``void run(i64 ops, i64 n)``: the ops (4 int64 each: kind, a, b, c) in order. Parallel: the launcher in the
    tasks' slot, launcher(a = workers, b = trampoline, c = record); serial: b(t, c) for t < a; copy: c bytes from b
    to a."""
    global _runner
    with _lock:
        if _runner is not None:
            return _runner[1]
        from numba.core.compiler_lock import global_compiler_lock

        codegen = _context().codegen()
        module = codegen._create_empty_module("crema_program_run")
        i8p, i64, void = ir.IntType(8).as_pointer(), ir.IntType(64), ir.VoidType()
        tramp_ty = ir.FunctionType(void, [i64, i64]).as_pointer()
        launch_ty = ir.FunctionType(void, [i64, i64, i64]).as_pointer()
        memcpy = module.declare_intrinsic("llvm.memcpy", [i8p, i8p, i64])
        slot = tasks._external_i64(module, tasks.LAUNCHER_SYMBOL)
        fn = ir.Function(module, ir.FunctionType(void, [i64, i64]), "crema_program_run")
        ops, n = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        head, body, done = (fn.append_basic_block(s) for s in ("head", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64)
        i.add_incoming(i64(0), fn.entry_basic_block)
        b.cbranch(b.icmp_signed("<", i, n), body, done)
        b.position_at_end(body)
        op = b.inttoptr(b.add(ops, b.mul(i, i64(32))), i64.as_pointer())
        kind, a, bb, c = (b.load(b.gep(op, [i64(k)])) for k in range(4))
        par, not_par = fn.append_basic_block("parallel"), fn.append_basic_block("not_parallel")
        serial, copy, nxt = (fn.append_basic_block(s) for s in ("serial", "copy", "next"))
        b.cbranch(b.icmp_unsigned("==", kind, i64(_CALL_PARALLEL)), par, not_par)
        b.position_at_end(par)
        where = b.load(slot)
        launch, alone = fn.append_basic_block("launch"), fn.append_basic_block("alone")
        b.cbranch(b.icmp_unsigned("!=", where, i64(0)), launch, alone)  # no launcher: the slots on this thread
        b.position_at_end(launch)
        b.call(b.inttoptr(where, launch_ty), [a, bb, c])
        b.branch(nxt)
        b.position_at_end(not_par)
        b.cbranch(b.icmp_unsigned("==", kind, i64(_CALL_SERIAL)), serial, copy)
        for block in (serial, alone):  # for t < a: b(t, c)
            b.position_at_end(block)
            loop, step = fn.append_basic_block("loop"), fn.append_basic_block("step")
            b.branch(loop)
            b.position_at_end(loop)
            t = b.phi(i64)
            t.add_incoming(i64(0), block)
            b.cbranch(b.icmp_signed("<", t, a), step, nxt)
            b.position_at_end(step)
            b.call(b.inttoptr(bb, tramp_ty), [t, c])
            t.add_incoming(b.add(t, i64(1)), step)
            b.branch(loop)
        b.position_at_end(copy)
        b.call(memcpy, [b.inttoptr(a, i8p), b.inttoptr(bb, i8p), c, ir.IntType(1)(0)])
        b.branch(nxt)
        b.position_at_end(nxt)
        i.add_incoming(b.add(i, i64(1)), nxt)
        b.branch(head)
        b.position_at_end(done)
        b.ret_void()
        with global_compiler_lock:
            library = codegen.create_library("crema_program_run")
            library.add_ir_module(module)
            library.finalize()
            address = library.get_pointer_to_function("crema_program_run")
        run = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64)(address)  # a ctypes call releases the GIL
        _runner = library, run
        return run


_abi: dict[tuple[str, str], tuple[int, int]] = {}  # (target data, LLVM type: their text) -> (ABI size, alignment)


def _size_align(ty: ir.Type, td) -> tuple[int, int]:
    """(ABI size, ABI alignment) of an LLVM type from the target data, once per type: llvmlite answers each query by
    parsing a module of its own (a replay's first record, EfficientNet-Lite0's 37 task calls, asked ~1,200 times:
    ~0.1 s of the forward that records it)."""
    key = (str(td), str(ty))
    got = _abi.get(key)
    if got is None:
        got = _abi[key] = (ty.get_abi_size(td), ty.get_abi_alignment(td))
    return got


def _leaves(ty: ir.Type, td, at: int, out: list) -> int:
    """Append (offset, LLVM scalar type) of every scalar in `ty` laid out from offset `at` (natural alignment, as
    LLVM lays out a non-packed struct); returns the offset after it."""
    size, align = _size_align(ty, td)
    at = -(-at // align) * align
    if isinstance(ty, ir.BaseStructType):
        start = at
        for e in ty.elements:
            at = _leaves(e, td, at, out)
        return start + size
    if isinstance(ty, ir.ArrayType):
        for _ in range(ty.count):
            at = _leaves(ty.element, td, at, out)
        return at
    out.append((at, ty))
    return at + size


def _values(nb_type, value) -> list:
    """The scalars of one argument in the order of its native layout (arrays: meminfo, parent, nitems, itemsize,
    data, shape, strides)."""
    if isinstance(nb_type, types.Array):
        dtype = _ARRAY_FIELDS.get(nb_type)
        if dtype is None:
            from numba.np.numpy_support import as_dtype

            fields = tuple(_context().data_model_manager[nb_type]._fields)
            want = ("meminfo", "parent", "nitems", "itemsize", "data", "shape", "strides")
            if fields != want:  # pragma: no cover - a Numba whose array layout moved
                raise TypeError(f"kernels.program: Numba's array layout is {fields}, not {want}")
            dtype = _ARRAY_FIELDS[nb_type] = as_dtype(nb_type.dtype)
        if not isinstance(value, np.ndarray) or value.ndim != nb_type.ndim or value.dtype != dtype:
            raise TypeError(
                f"kernels.program: {nb_type} argument given {type(value).__name__} {getattr(value, 'dtype', '')}"
            )
        if nb_type.layout == "C" and not value.flags.c_contiguous:
            raise TypeError(f"kernels.program: {nb_type} argument given a non-contiguous array")
        return [0, 0, value.size, value.itemsize, value.ctypes.data, *value.shape, *value.strides]
    if isinstance(nb_type, types.Boolean):
        return [int(bool(value))]
    if isinstance(nb_type, types.Integer):
        return [int(value)]
    if isinstance(nb_type, types.Float):
        return [float(value)]
    raise TypeError(f"kernels.program: no native layout for argument type {nb_type}")


_FORMATS = {64: "q", 32: "i", 8: "b", 1: "B"}
_ARRAY_FIELDS: dict = {}  # array type -> its NumPy dtype, once its native layout was checked


_layouts: dict[tuple, tuple] = {}  # argument types -> (record size, [(offset, struct format)])


def _layout(want: tuple) -> tuple:
    got = _layouts.get(want)
    if got is None:
        context = _context()
        td = context.target_data
        record = ir.LiteralStructType([ir.IntType(64), context.get_value_type(types.Tuple(want[1:]))])
        leaves: list = []
        _leaves(record, td, 0, leaves)
        formats = []
        for off, ty in leaves:
            if isinstance(ty, ir.PointerType):
                fmt = "Q"
            elif isinstance(ty, ir.DoubleType):
                fmt = "d"
            elif isinstance(ty, ir.FloatType):
                fmt = "f"
            elif isinstance(ty, ir.IntType) and ty.width in _FORMATS:
                fmt = _FORMATS[ty.width]
            else:  # pragma: no cover
                raise TypeError(f"kernels.program: no packing for {ty}")
            formats.append((off, "<" + fmt))
        got = _layouts[want] = (record.get_abi_size(td), formats)
    return got


def record_bytes(want: tuple, address: int, args: tuple) -> bytes:
    """The launcher's record of a call: {i64 address, the arguments (of types want[1:])} as the trampoline reads it."""
    size, leaves = _layout(want)
    values = [int(address)]
    for nb_type, value in zip(want[1:], args, strict=True):
        values += _values(nb_type, value)
    if len(values) != len(leaves):  # pragma: no cover - a layout this module does not know
        raise TypeError(f"kernels.program: {len(values)} values for {len(leaves)} fields of a {want} record")
    buf = bytearray(size)
    for (off, fmt), v in zip(leaves, values):
        struct.pack_into(fmt, buf, off, v)
    return bytes(buf)


class Program:
    """Task calls and restores in order, run natively by `run` (see the module docstring)."""

    def __init__(self) -> None:
        self._ops: list[tuple[int, int, int, int]] = []
        self.names: list[str] = []  # each op's task name, or "restore" (profiling: run_range)
        self._keep: list = []  # every array and record the ops point into
        self._table: np.ndarray | None = None  # the ops as one (n, 4) int64 array, made on the first run
        self._run = None  # the native runner (`_run_function`), found on the first run

    def __len__(self) -> int:
        return len(self._ops)

    def call(self, task: tasks.Task, kind: str, workers: int, address: int, args: tuple) -> None:
        """Add ``task.<kind>(address, workers, *args)`` (kind "parallel" or "serial")."""
        if kind not in ("parallel", "serial"):
            raise ValueError(f"kernels.program: kind {kind!r}")
        if not address:
            raise ValueError(f"kernels.program: task {task.name} has no code yet (address 0)")
        want = task.arg_types
        rec = np.frombuffer(record_bytes(want, address, args), np.uint8).copy()
        self._keep += [rec, *(a for a in args if isinstance(a, np.ndarray))]
        code = _CALL_PARALLEL if kind == "parallel" else _CALL_SERIAL
        self._ops.append((code, int(workers), _trampoline(want), rec.ctypes.data))
        self.names.append(task.name)
        self._table = None

    def restore(self, array: np.ndarray, contents: np.ndarray | None = None) -> None:
        """Before the ops that follow, copy `contents` (default: `array`'s present contents) into `array`
        (C-contiguous, the same size and type)."""
        saved = np.array(array if contents is None else contents, copy=True)
        if not array.flags.c_contiguous or saved.dtype != array.dtype or saved.size != array.size:
            raise ValueError("kernels.program: restore needs a C-contiguous array and contents of its size and type")
        self._keep += [array, saved]
        self._ops.append((_COPY, array.ctypes.data, saved.ctypes.data, array.nbytes))
        self.names.append("restore")
        self._table = None

    def _prepared(self) -> np.ndarray:
        table = self._table
        if table is None:
            table = self._table = np.array(self._ops, np.int64).reshape(-1, 4)
            self._run = _run_function()
        return table

    def run(self) -> None:
        table = self._prepared()
        if len(table):
            self._run(table.ctypes.data, len(table))

    def run_range(self, first: int, end: int) -> None:
        """Ops first .. end - 1 only, in order (profiling one op in its place, its restores with it:
        ``benchmarks.bench_overhead``)."""
        table = self._prepared()
        if not 0 <= first <= end <= len(table):
            raise ValueError(f"kernels.program: ops {first}..{end} of {len(table)}")
        if end > first:
            self._run(table[first:end].ctypes.data, end - first)
