"""crema's own thread pool for the tasks' parallel launches: a late or descheduled thread never holds a step up.

Every task's parallel driver (kernels.tasks) hands one launcher ``void launch(i64 workers, i64 tramp, i64 block)`` a
trampoline and a record, and the launcher must call ``tramp(t, block)`` once for every t < workers. Numba's OpenMP
loop (``for t in prange(workers)``, kernels.tasks._LAUNCH) gives slot t to thread t and returns when every thread has
arrived at its closing barrier: when another thread keeps one of the two cores busy (another process, or the worker
of another library in the same process that spins after its own call: ONNX Runtime's does for ~60 ms), the thread
that shares that core runs in time slices of milliseconds, and every step of a forward waits for it. Measured on the
2-core machine: EfficientNet-Lite0 on 2 threads took 25-52 ms right after an ONNX Runtime call, 8 ms otherwise.

Here (x86-64 Linux; elsewhere the OpenMP launcher stays) the slots go to whoever comes first: the calling thread
publishes the job and claims slots itself, one at a time, as do the pool's threads that are awake; the call returns
when every slot is done. A thread that has not woken up by the time the caller has claimed every slot gets nothing and
is not waited for (the bodies share their tasks dynamically, so a slot that comes late finds none left). The results
do not depend on which thread runs which slot: a slot's body works on slot t's own buffers, whoever runs it.

The launcher and the worker loop are a few dozen lines of LLVM IR (atomics, the x86 ``pause``, and futex waits through
libc's ``syscall``), compiled at first use in each process (milliseconds, not cached). State (outside Python's heap,
never freed: the daemon threads may still read it while the interpreter shuts down), each on its own 64-byte line:

    claim      i64  (generation << 32) | next slot: a slot is claimed by a compare-and-swap that also checks the
                    generation, so a thread that read an older job's fields can never claim a newer job's slot
    done       i64  slots of the current job finished
    seq        i32  futex word, bumped on every publish (the sleeping threads wait on it)
    sleepers   i64  threads in the futex wait (the caller wakes at most workers - 1, only when there are some)
    busy       i64  a launch in progress (a second caller, from another thread, runs its slots itself)
    waiter     i64  the caller sleeps on done (the thread that finishes the last slot wakes it)
    job[2]          {tramp, block, workers} of generations g & 1: a job's fields are only rewritten two
                    generations later, after the claim word has moved on (so a stale claim fails)

Idle threads spin on the claim word for SPIN_PAUSES ``pause`` instructions (~1 ms: longer than the gap between two
parallel steps of a forward, serial steps included; 8192 pauses, 0.14 ms, left the thread asleep at the start of
some LeNet batch-64 steps, which then ran on the caller alone) and then sleep in the kernel until the next publish; OpenMP's threads spin for ~10 ms
after each parallel loop, which a co-tenant on the same core pays for. The caller waits for slots that others claimed
by spinning WAIT_PAUSES pauses, then sleeps until the last one is done (its core idle, so the kernel can move there a
slot's thread that something else keeps from running on its own core).

A caller that wakes sleeping threads first steers them (``STEER``): each pool thread gets the process's CPUs less the
caller's own as its affinity, then the futex wake, and the thread takes every CPU back once it runs. Without that, on
a 2-vCPU KVM guest (AMD EPYC) the kernel put a thread woken after 20 ms or more of idleness on the caller's CPU in 15
of 20 wakes, queued behind the caller, which spins or runs the slots itself: the thread ran 3-5 ms late, and a whole
EfficientNet-Lite0 forward at batch 1 on 2 threads that came after an idle spell (a web request) ran at one thread's
speed, median 11.8-12.1 ms against 4.8-5.2 back to back; steered, 5.2-6.1 ms (and 0 of 20 wakes on the caller's CPU,
the thread running within 0.1 ms). A wake costs one sched_setaffinity per pool thread in each of the two; back-to-back
launches (threads spinning, not asleep) never steer. ``CREMA_POOL_STEER=0`` turns it off.

    launch = taskpool.launcher(threads)   # the launcher's address (0 where the pool is not available)
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

from llvmlite import ir

SPIN_PAUSES = 65536  # an idle thread's pauses before it sleeps (~17 ns each on the Zen 3 VM: ~1.1 ms)
WAIT_PAUSES = 32768  # the caller's pauses (~0.55 ms) while others finish their slots, before it sleeps until they are
# done (a batch-32 task can take ~1 ms: with a shorter spin the caller would sleep, and pay a wake-up, at many steps)
_SYS_FUTEX, _SYS_SETAFFINITY, _SYS_GETTID = 202, 203, 186  # x86-64 Linux
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_LINE = 8  # int64 per 64-byte line
_CLAIM, _DONE, _SEQ, _SLEEPERS, _BUSY, _WAITER, _JOB = (i * _LINE for i in range(7))
_NTIDS = _JOB + 2 * _LINE  # pool threads registered (their tids follow, MAX_TIDS of them)
_TIDS = _NTIDS + 1
MAX_TIDS = 63
_MASK_WORDS = 16  # a cpu_set_t of 1024 CPUs
_ALLOWED = _TIDS + MAX_TIDS  # the process's CPUs when the pool was built (a cpu_set_t)
_STEER = _ALLOWED + _MASK_WORDS  # 1: steering on (STEER and every allowed CPU < 1024)
_END = _STEER + _LINE
# a caller that wakes sleeping pool threads keeps them off its own CPU for that wake (see the module docstring)
STEER = os.environ.get("CREMA_POOL_STEER", "1") != "0"

_lock = threading.Lock()
_pool = None  # (state address, launch address, worker address, library) of this process
_threads: list[threading.Thread] = []


def available() -> bool:
    """The pool's platform: Linux on x86-64 (futex, pause); elsewhere the tasks keep Numba's OpenMP launcher."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def _build():
    """Compile the launcher and the worker loop for a fresh state block; returns (state, launch, worker, library)
    addresses and the library that holds the code."""
    from numba.core import cgutils
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    # outside Python's heap, never freed: the daemon threads may still read it while the interpreter shuts down
    libc = ctypes.CDLL(None)
    libc.aligned_alloc.restype, libc.aligned_alloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t, ctypes.c_size_t)
    size = 8 * _END
    base = libc.aligned_alloc(64, size)
    if not base:
        raise MemoryError("kernels.taskpool: no memory for the pool's state")
    ctypes.memset(base, 0, size)
    syscall = ctypes.cast(ctypes.CDLL(None).syscall, ctypes.c_void_p).value
    getcpu = ctypes.cast(ctypes.CDLL(None).sched_getcpu, ctypes.c_void_p).value
    cpus = os.sched_getaffinity(0)
    if STEER and len(cpus) > 1 and max(cpus) < 64 * _MASK_WORDS:
        for cpu in cpus:
            word = ctypes.c_uint64.from_address(base + 8 * (_ALLOWED + cpu // 64))
            word.value |= 1 << (cpu % 64)
        ctypes.c_int64.from_address(base + 8 * _STEER).value = 1

    codegen = cpu_target.target_context.codegen()
    module = codegen._create_empty_module("crema_taskpool")
    i32, i64 = ir.IntType(32), ir.IntType(64)
    void = ir.VoidType()
    tramp_ty = ir.FunctionType(void, [i64, i64]).as_pointer()
    sys_ty = ir.FunctionType(i64, [i64], var_arg=True).as_pointer()
    pause = ir.Function(module, ir.FunctionType(void, []), "llvm.x86.sse2.pause")

    def field(builder, index, ty=i64):
        return builder.inttoptr(i64(base + 8 * index), ty.as_pointer())

    done_addr = i64(base + 8 * _DONE)  # futex word: done's low 32 bits (little-endian)

    def gen_of(builder, word):
        return builder.lshr(word, i64(32))

    # void run_slots(i64 g, i64 n, i64 tramp, i64 block): claim and run slots of generation g until none is left
    run = ir.Function(module, ir.FunctionType(void, [i64, i64, i64, i64]), "crema_pool_run_slots")
    run.linkage = "internal"
    g, n, tramp, block = run.args
    b = ir.IRBuilder(run.append_basic_block("entry"))
    loop, claim_it, body, out = (run.append_basic_block(s) for s in ("loop", "claim", "body", "out"))
    b.branch(loop)
    b.position_at_end(loop)
    word = b.load_atomic(field(b, _CLAIM), "acquire", 8)
    slot = b.and_(word, i64(0xFFFFFFFF))
    ours = b.and_(b.icmp_unsigned("==", gen_of(b, word), g), b.icmp_unsigned("<", slot, n))
    b.cbranch(ours, claim_it, out)
    b.position_at_end(claim_it)
    res = b.cmpxchg(field(b, _CLAIM), word, b.add(word, i64(1)), "acq_rel", "acquire")
    b.cbranch(b.extract_value(res, 1), body, loop)
    b.position_at_end(body)
    b.call(b.inttoptr(tramp, tramp_ty), [slot, block])
    before = b.atomic_rmw("add", field(b, _DONE), i64(1), "seq_cst")
    waiter = b.load_atomic(field(b, _WAITER), "seq_cst", 8)
    wake_caller = run.append_basic_block("wake_caller")
    last = b.icmp_signed(">=", b.add(before, i64(1)), n)  # only the last slot's end wakes a sleeping caller
    b.cbranch(b.and_(last, b.icmp_unsigned("!=", waiter, i64(0))), wake_caller, loop)
    b.position_at_end(wake_caller)
    b.call(b.inttoptr(i64(syscall), sys_ty), [i64(_SYS_FUTEX), done_addr, i64(_FUTEX_WAKE_PRIVATE), i64(1)])
    b.branch(loop)
    b.position_at_end(out)
    b.ret_void()

    # void steer(): before waking sleeping pool threads, the caller gives each the process's CPUs less its own as
    # its affinity, so the kernel cannot queue a woken thread behind the caller (which spins or works while it
    # waits); the thread takes the whole set back once it runs (worker, after its futex wait). The set is never
    # empty: steering is on only with two CPUs or more, and a caller outside them clears none
    steer = ir.Function(module, ir.FunctionType(void, []), "crema_pool_steer")
    steer.linkage = "internal"
    b = ir.IRBuilder(steer.append_basic_block("entry"))
    go, out = steer.append_basic_block("go"), steer.append_basic_block("out")
    on = b.load_atomic(field(b, _STEER), "monotonic", 8)
    cpu = b.sext(b.call(b.inttoptr(i64(getcpu), ir.FunctionType(i32, []).as_pointer()), []), i64)
    ok = b.and_(b.icmp_unsigned("!=", on, i64(0)), b.icmp_signed(">=", cpu, i64(0)))
    b.cbranch(b.and_(ok, b.icmp_signed("<", cpu, i64(64 * _MASK_WORDS))), go, out)
    b.position_at_end(go)
    mask = b.alloca(ir.ArrayType(i64, _MASK_WORDS))
    for k in range(_MASK_WORDS):
        word = b.load(b.inttoptr(i64(base + 8 * (_ALLOWED + k)), i64.as_pointer()))
        b.store(word, b.gep(mask, [i32(0), i32(k)]))
    at = b.gep(mask, [i32(0), b.lshr(cpu, i64(6))])
    b.store(b.and_(b.load(at), b.not_(b.shl(i64(1), b.and_(cpu, i64(63))))), at)
    registered = b.load_atomic(field(b, _NTIDS), "acquire", 8)
    count = b.select(b.icmp_signed("<", registered, i64(MAX_TIDS)), registered, i64(MAX_TIDS))
    with cgutils.for_range(b, count) as loop:
        tid_at = b.add(i64(base + 8 * _TIDS), b.mul(loop.index, i64(8)))
        tid = b.load_atomic(b.inttoptr(tid_at, i64.as_pointer()), "acquire", 8)
        with b.if_then(b.icmp_signed(">", tid, i64(0))):  # 0: a thread between its count and its tid (never the caller)
            b.call(b.inttoptr(i64(syscall), sys_ty),
                   [i64(_SYS_SETAFFINITY), tid, i64(8 * _MASK_WORDS), b.ptrtoint(mask, i64)])  # fmt: skip
    b.branch(out)
    b.position_at_end(out)
    b.ret_void()

    # void launch(i64 workers, i64 tramp, i64 block)
    launch = ir.Function(module, ir.FunctionType(void, [i64, i64, i64]), "crema_pool_launch")
    n, tramp, block = launch.args
    b = ir.IRBuilder(launch.append_basic_block("entry"))
    names = ("try", "serial", "serial_body", "serial_end", "publish", "wake", "work", "wait", "wait_more", "sleep",
             "sleep_wait", "sleep_done", "finish")  # fmt: skip
    (try_, serial, serial_body, serial_end, publish, wake, work, wait, wait_more, sleep, sleep_wait, sleep_done,
     finish) = (launch.append_basic_block(s) for s in names)  # fmt: skip
    b.cbranch(b.icmp_signed("<=", n, i64(1)), serial, try_)
    b.position_at_end(try_)
    got = b.cmpxchg(field(b, _BUSY), i64(0), i64(1), "acquire", "monotonic")
    b.cbranch(b.extract_value(got, 1), publish, serial)
    # serial: every slot on this thread (one worker, or another launch in progress)
    b.position_at_end(serial)
    b.branch(serial_body)
    b.position_at_end(serial_body)
    t = b.phi(i64)
    t.add_incoming(i64(0), serial)
    more = b.icmp_signed("<", t, n)
    step = launch.append_basic_block("serial_step")
    b.cbranch(more, step, serial_end)
    b.position_at_end(step)
    b.call(b.inttoptr(tramp, tramp_ty), [t, block])
    t.add_incoming(b.add(t, i64(1)), step)
    b.branch(serial_body)
    b.position_at_end(serial_end)
    b.ret_void()
    # publish: the job's fields, done = 0, then the claim word of the next generation (release), then seq
    b.position_at_end(publish)
    old = b.load_atomic(field(b, _CLAIM), "acquire", 8)
    g1 = b.and_(b.add(gen_of(b, old), i64(1)), i64(0xFFFFFFFF))
    job = b.add(i64(_JOB), b.mul(b.and_(g1, i64(1)), i64(3)))
    for k, v in enumerate((tramp, block, n)):
        ptr = b.inttoptr(b.add(i64(base), b.mul(b.add(job, i64(k)), i64(8))), i64.as_pointer())
        b.store_atomic(v, ptr, "release", 8)
    b.store_atomic(i64(0), field(b, _DONE), "monotonic", 8)
    b.store_atomic(b.shl(g1, i64(32)), field(b, _CLAIM), "release", 8)
    b.atomic_rmw("add", field(b, _SEQ, i32), i32(1), "seq_cst")
    sleepers = b.load_atomic(field(b, _SLEEPERS), "seq_cst", 8)
    b.cbranch(b.icmp_signed(">", sleepers, i64(0)), wake, work)
    b.position_at_end(wake)
    seq_addr = i64(base + 8 * _SEQ)
    b.call(steer, [])
    wanted = b.sub(n, i64(1))  # at most one thread a slot besides the caller (a busy machine has no core to spare)
    b.call(b.inttoptr(i64(syscall), sys_ty), [i64(_SYS_FUTEX), seq_addr, i64(_FUTEX_WAKE_PRIVATE), wanted])
    b.branch(work)
    b.position_at_end(work)
    b.call(run, [g1, n, tramp, block])
    b.branch(wait)
    # wait: every slot done (the ones other threads claimed): WAIT_PAUSES pauses, then a futex wait on done (woken
    # by the thread that finishes a slot): a sleeping caller leaves its core idle, so the kernel can move a claimed
    # slot's thread there at once when something else runs on that thread's core
    b.position_at_end(wait)
    spins = b.phi(i64)
    spins.add_incoming(i64(0), work)
    done = b.load_atomic(field(b, _DONE), "acquire", 8)
    b.cbranch(b.icmp_signed(">=", done, n), finish, wait_more)
    b.position_at_end(wait_more)
    b.call(pause, [])
    nxt = b.add(spins, i64(1))
    b.cbranch(b.icmp_signed(">=", nxt, i64(WAIT_PAUSES)), sleep, wait)
    spins.add_incoming(nxt, wait_more)
    b.position_at_end(sleep)
    b.store_atomic(i64(1), field(b, _WAITER), "seq_cst", 8)
    d = b.load_atomic(field(b, _DONE), "seq_cst", 8)
    b.cbranch(b.icmp_signed(">=", d, n), sleep_done, sleep_wait)
    b.position_at_end(sleep_wait)
    b.call(b.inttoptr(i64(syscall), sys_ty),
           [i64(_SYS_FUTEX), done_addr, i64(_FUTEX_WAIT_PRIVATE), b.and_(d, i64(0xFFFFFFFF)), i64(0)])  # fmt: skip
    b.branch(sleep_done)
    b.position_at_end(sleep_done)
    b.store_atomic(i64(0), field(b, _WAITER), "seq_cst", 8)
    b.branch(wait)
    spins.add_incoming(i64(0), sleep_done)
    b.position_at_end(finish)
    b.store_atomic(i64(0), field(b, _BUSY), "release", 8)
    b.ret_void()

    # void worker(): forever: wait for a new generation (spin, then sleep on seq), run its slots
    worker = ir.Function(module, ir.FunctionType(void, []), "crema_pool_worker")
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    names = ("register", "start", "outer", "spin", "spin_more", "sleep", "sleep_wait", "sleep_abort", "got")
    register, start, outer, spin, spin_more, sleep, sleep_wait, sleep_abort, got = (
        worker.append_basic_block(s) for s in names
    )
    # this thread's tid, for steer: slot k of the first MAX_TIDS threads (a slot still 0 is skipped)
    my_tid = b.call(b.inttoptr(i64(syscall), sys_ty), [i64(_SYS_GETTID)])
    k = b.atomic_rmw("add", field(b, _NTIDS), i64(1), "seq_cst")
    b.cbranch(b.icmp_signed("<", k, i64(MAX_TIDS)), register, start)
    b.position_at_end(register)
    b.store_atomic(my_tid, b.inttoptr(b.add(i64(base + 8 * _TIDS), b.mul(k, i64(8))), i64.as_pointer()), "release", 8)
    b.branch(start)
    b.position_at_end(start)
    first = gen_of(b, b.load_atomic(field(b, _CLAIM), "acquire", 8))
    b.branch(outer)
    b.position_at_end(outer)
    seen = b.phi(i64)
    seen.add_incoming(first, start)
    b.branch(spin)
    b.position_at_end(spin)
    count = b.phi(i64)
    count.add_incoming(i64(0), outer)
    w = b.load_atomic(field(b, _CLAIM), "acquire", 8)
    g = gen_of(b, w)
    b.cbranch(b.icmp_unsigned("!=", g, seen), got, spin_more)
    b.position_at_end(spin_more)
    b.call(pause, [])
    c1 = b.add(count, i64(1))
    count.add_incoming(c1, spin_more)
    b.cbranch(b.icmp_signed("<", c1, i64(SPIN_PAUSES)), spin, sleep)
    b.position_at_end(sleep)
    b.atomic_rmw("add", field(b, _SLEEPERS), i64(1), "seq_cst")
    sq = b.load_atomic(field(b, _SEQ, i32), "seq_cst", 4)
    w2 = b.load_atomic(field(b, _CLAIM), "seq_cst", 8)
    b.cbranch(b.icmp_unsigned("!=", gen_of(b, w2), seen), sleep_abort, sleep_wait)
    b.position_at_end(sleep_wait)
    b.call(b.inttoptr(i64(syscall), sys_ty),
           [i64(_SYS_FUTEX), seq_addr, i64(_FUTEX_WAIT_PRIVATE), b.zext(sq, i64), i64(0)])  # fmt: skip
    b.atomic_rmw("sub", field(b, _SLEEPERS), i64(1), "seq_cst")
    # woken (the caller may have steered this thread off its CPU for the wake): every allowed CPU again
    with b.if_then(b.icmp_unsigned("!=", b.load_atomic(field(b, _STEER), "monotonic", 8), i64(0))):
        b.call(b.inttoptr(i64(syscall), sys_ty),
               [i64(_SYS_SETAFFINITY), i64(0), i64(8 * _MASK_WORDS), i64(base + 8 * _ALLOWED)])  # fmt: skip
    seen.add_incoming(seen, b.block)
    b.branch(outer)
    b.position_at_end(sleep_abort)
    b.atomic_rmw("sub", field(b, _SLEEPERS), i64(1), "seq_cst")
    b.branch(spin)
    count.add_incoming(i64(0), sleep_abort)
    b.position_at_end(got)
    job = b.add(i64(_JOB), b.mul(b.and_(g, i64(1)), i64(3)))
    fields = []
    for k in range(3):
        ptr = b.inttoptr(b.add(i64(base), b.mul(b.add(job, i64(k)), i64(8))), i64.as_pointer())
        fields.append(b.load_atomic(ptr, "acquire", 8))
    b.call(run, [g, fields[2], fields[0], fields[1]])
    seen.add_incoming(g, got)
    b.branch(outer)

    with global_compiler_lock:
        library = codegen.create_library("crema_taskpool")
        library.add_ir_module(module)
        library.finalize()
        launch_addr = library.get_pointer_to_function("crema_pool_launch")
        worker_addr = library.get_pointer_to_function("crema_pool_worker")
    return base, launch_addr, worker_addr, library


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: its pool starts afresh (new state, new threads) on first use."""
    global _pool, _threads, _lock
    _pool, _threads, _lock = None, [], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def launcher(threads: int) -> int:
    """The launcher's address, with `threads` - 1 pool threads running (started here, once per process; more are
    added when a larger count is asked for); 0 where the pool is not available (see `available`)."""
    global _pool
    if not available():
        return 0
    with _lock:
        if _pool is None:
            _pool = _build()
        worker = ctypes.CFUNCTYPE(None)(_pool[2])  # a ctypes call releases the GIL: the loop runs without it
        while len(_threads) < threads - 1:
            th = threading.Thread(target=worker, name=f"crema-task-{len(_threads) + 1}", daemon=True)
            th.start()
            _threads.append(th)
        return _pool[1]


def state() -> dict:
    """The pool's counters (tests and diagnostics): generation, next slot, done, sleepers, busy, threads, the pool
    threads' tids and whether steering is on."""
    if _pool is None:
        return {"threads": 0}
    base = _pool[0]
    read = lambda i: ctypes.c_int64.from_address(base + 8 * i).value
    claim = read(_CLAIM)
    return {
        "generation": claim >> 32,
        "next_slot": claim & 0xFFFFFFFF,
        "done": read(_DONE),
        "sleepers": read(_SLEEPERS),
        "busy": read(_BUSY),
        "waiter": read(_WAITER),
        "threads": len(_threads),
        "tids": [tid for tid in (read(_TIDS + k) for k in range(min(read(_NTIDS), MAX_TIDS))) if tid],
        "steer": bool(read(_STEER)),
    }


# -- which plans run on the pool --------------------------------------------------------------------------------
# The pool's threads and Numba's OpenMP threads do not share the cores well: OpenMP's spin for ~10 ms after each of
# its loops, so in a forward whose steps alternate between tasks and plain parallel kernels each kind of step runs
# with the other's threads spinning (LeNet at batch 64, whose pooling steps are OpenMP loops: 2.7 -> 4.4 ms). A Net
# therefore runs a plan on the pool only when its forward ran no OpenMP loop (net.Net: the first forward of each plan
# decides), and training stays on OpenMP. Numba's parallel kernels reach OpenMP through one function, the JIT symbol
# numba_parallel_for: it is pointed at a wrapper that counts the calls (`omp_loops`) and calls the real one. Kernels
# linked before the wrapper is in place call the real one uncounted (their plans then run on the pool: the results are
# the same, only the speed is not).
_omp_count = ctypes.c_int64(0)
_real_parallel_for = ctypes.c_int64(0)  # Numba's numba_parallel_for, which the wrapper calls (set when known)
_probe = None  # the wrapper's library once installed; "pending" until Numba's threads start; False when it cannot be
_from_start = False  # the wrapper went in before Numba's threading layer started: no OpenMP loop ran uncounted


def omp_loops() -> int:
    """Numba OpenMP loops started in this process since the wrapper was installed (`install_omp_probe`)."""
    return _omp_count.value


def omp_counted_from_start() -> bool:
    """Whether `omp_loops` counts every OpenMP loop this process ever ran: the wrapper is in place and went in
    before Numba's threading layer started (kernels imported before any parallel loop ran; kernels linked earlier
    would call the real function uncounted). net.warm forks its compile workers only when this holds and the count
    is 0."""
    return _from_start and omp_probe_installed()


def omp_probe_installed() -> bool:
    """Whether `omp_loops` counts every OpenMP loop from here on (also while Numba's thread pool has not started: no
    OpenMP loop can run before it does, and the wrapper goes in when it starts)."""
    return _probe is not None and _probe is not False


def _wrapper():
    """(library, address) of ``crema_counted_parallel_for``: count, then call the function in _real_parallel_for.
    Compiled under Numba's compiler lock, before any of Numba's threading locks is held (see install_omp_probe)."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    module = codegen._create_empty_module("crema_omp_probe")
    i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
    fnty = ir.FunctionType(ir.VoidType(), [i8p] * 5 + [i64] * 3)  # numba.np.ufunc.parallel's numba_parallel_for
    fn = ir.Function(module, fnty, "crema_counted_parallel_for")
    b = ir.IRBuilder(fn.append_basic_block())
    b.atomic_rmw("add", b.inttoptr(i64(ctypes.addressof(_omp_count)), i64.as_pointer()), i64(1), "monotonic")
    real = b.load_atomic(b.inttoptr(i64(ctypes.addressof(_real_parallel_for)), i64.as_pointer()), "acquire", 8)
    b.call(b.inttoptr(real, fnty.as_pointer()), list(fn.args))
    b.ret_void()
    with global_compiler_lock:
        library = codegen.create_library("crema_omp_probe")
        library.add_ir_module(module)
        library.finalize()
        return library, library.get_pointer_to_function("crema_counted_parallel_for")


def _point_to(library, address) -> bool:
    """Re-point the JIT symbol numba_parallel_for at the wrapper (kernels linked from now on call it)."""
    from llvmlite import binding as llvm

    real = llvm.address_of_symbol("numba_parallel_for")
    if not real or real == address:
        return False
    _real_parallel_for.value = real
    llvm.add_symbol("numba_parallel_for", address)
    return True


def install_omp_probe() -> bool:
    """Count Numba's OpenMP loops from now on (see above); True once in place (or pending: Numba's threading layer,
    which adds numba_parallel_for to the JIT's symbols, not loaded yet; the symbol is re-pointed right after it is,
    with nothing compiled then: that runs under Numba's threading locks). Starts no thread (net.warm forks its
    compile workers only while no OpenMP loop has run: `omp_counted_from_start`). Any failure: no counting (and so no
    pool for plans)."""
    global _probe, _from_start
    if _probe is not None:
        return omp_probe_installed()
    try:
        from numba.np.ufunc import parallel

        library, address = _wrapper()
        if parallel._is_initialized:
            _probe = library if _point_to(library, address) else False
            return omp_probe_installed()
        original = parallel._load_threading_functions

        def load_then_point(lib):
            global _probe
            original(lib)
            try:
                _probe = library if _point_to(library, address) else False
            except Exception:  # noqa: BLE001 - never in the way of Numba's own start
                _probe = False

        parallel._load_threading_functions = load_then_point
        _probe = "pending"
        _from_start = True
    except Exception:  # noqa: BLE001 - another Numba: no counting, and so no pool for plans
        _probe = False
    return omp_probe_installed()
