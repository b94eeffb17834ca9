// cuda_emu.h: run crema's CUDA C kernels (kernels/cuda/*.cu) on the CPU, for tests on machines without a GPU.
//
// g++ compiles a .cu file with this header force-included (-include cuda_emu.h). Blocks run one after another; the
// threads of a block are fibers on one OS thread, each running until it reaches a barrier
// (__syncthreads, or a warp shuffle, emulated with two block barriers) or returns, in forward, reverse or shuffled
// order, so a missing barrier shows up as a wrong result in one of the orders. Threads that have returned count as
// arrived at every later barrier. __shared__ variables become function statics (one block at a time). Warp shuffles
// need every thread of the block to reach them, which crema's kernels guarantee (documented at each kernel).
// Not emulated: warp-synchronous code without shuffles, races between blocks (other than through atomicAdd), the
// memory model. The launcher interface (emu::launch / emu::signature) is used by tests/kernels/cuda_emu.py.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}

namespace emu {

enum State { READY, WAITING, DONE };

// Switching stacks: on x86-64 a 6-register switch (no signal-mask system call, unlike swapcontext); elsewhere
// ucontext. A fiber's first switch "returns" into fiber_main on its own stack.
#if defined(__x86_64__)
extern "C" void emu_stack_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.type emu_stack_switch, @function
emu_stack_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_stack_switch, .-emu_stack_switch
)");
struct Context {
    void* sp = nullptr;
};
inline void switch_to(Context& save, Context& load) { emu_stack_switch(&save.sp, load.sp); }
inline void start(Context& c, std::vector<char>& stack, void (*fn)()) {
    auto top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                          // fn's return slot: fn never returns
    *--sp = reinterpret_cast<void*>(fn);      // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // r15 r14 r13 r12 rbx rbp
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_to(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }
inline void start(Context& c, std::vector<char>& stack, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack.data();
    c.uc.uc_stack.ss_size = stack.size();
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

struct Fiber {
    Context ctx;
    std::vector<char> stack;
    State state = READY;
};

inline constexpr size_t STACK_BYTES = 128 * 1024;
inline Context scheduler;
inline std::vector<Fiber> fibers;
inline int current = -1;
inline void (*body)(void*) = nullptr;  // runs the kernel for the current thread
inline void* body_arg = nullptr;
inline int order_mode = 0;  // 0 forward, 1 reverse, 2 shuffled
inline uint64_t rng_state = 0x9E3779B97F4A7C15ull;
inline std::vector<uint64_t> lanes;  // shuffle exchange slots, one per thread
inline long long barriers = 0;
inline bool direct = false;  // threads run straight through, no fibers: only for kernels without barriers

inline void fiber_main() {
    body(body_arg);
    fibers[current].state = DONE;
    switch_to(fibers[current].ctx, scheduler);  // never resumed
    std::abort();
}

inline void syncthreads() {
    if (direct) {
        std::fputs("cuda_emu: a kernel run without fibers reached a barrier (see synchronising())\n", stderr);
        std::abort();
    }
    ++barriers;
    fibers[current].state = WAITING;
    switch_to(fibers[current].ctx, scheduler);
}

inline void set_thread(int t) {
    threadIdx = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
}

inline void shuffle(std::vector<int>& v) {  // Fisher-Yates with xorshift64: reproducible, no <random>
    for (size_t i = v.size(); i > 1; --i) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        std::swap(v[i - 1], v[rng_state % i]);
    }
}

inline std::vector<int> thread_order(int nt) {
    std::vector<int> order(nt);
    std::iota(order.begin(), order.end(), 0);
    if (order_mode == 1) std::reverse(order.begin(), order.end());
    if (order_mode == 2) shuffle(order);
    return order;
}

inline void run_block_direct() {
    for (int t : thread_order(int(blockDim.x * blockDim.y * blockDim.z))) {
        set_thread(t);
        body(body_arg);
    }
}

inline void run_block() {
    const int nt = int(blockDim.x * blockDim.y * blockDim.z);
    if (int(fibers.size()) < nt) fibers.resize(nt);
    lanes.assign(nt, 0);
    for (int t = 0; t < nt; ++t) {
        Fiber& f = fibers[t];
        if (f.stack.empty()) f.stack.resize(STACK_BYTES);
        start(f.ctx, f.stack, fiber_main);
        f.state = READY;
    }
    std::vector<int> order = thread_order(nt);
    for (bool waiting = true; waiting;) {  // one round per barrier: run every ready thread up to its next barrier
        for (int t : order) {
            if (fibers[t].state != READY) continue;
            current = t;
            set_thread(t);
            switch_to(scheduler, fibers[t].ctx);
        }
        waiting = false;
        for (int t = 0; t < nt; ++t) {
            if (fibers[t].state == WAITING) {
                fibers[t].state = READY;
                waiting = true;
            }
        }
        if (order_mode == 2) shuffle(order);
    }
    current = -1;
}

template <class T>
T shfl_xor(T v, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
    const int t = current;
    std::memcpy(&lanes[t], &v, sizeof(T));
    syncthreads();
    const int partner = (t & ~31) | ((t & 31) ^ lane_mask);
    T out;
    std::memcpy(&out, &lanes[partner < int(lanes.size()) ? partner : t], sizeof(T));
    syncthreads();
    return out;
}

// Kernel parameter type codes: 'p' pointer, 'i' int, 'q' long long, 'f' float, 'd' double.
template <class T>
struct code;
template <class T>
struct code<T*> {
    static constexpr char c = 'p';
};
template <>
struct code<int> {
    static constexpr char c = 'i';
};
template <>
struct code<long long> {
    static constexpr char c = 'q';
};
template <>
struct code<float> {
    static constexpr char c = 'f';
};
template <>
struct code<double> {
    static constexpr char c = 'd';
};

template <class... A>
const char* signature(void (*)(A...)) {
    static const char s[] = {code<A>::c..., '\0'};
    return s;
}

template <class... A, size_t... I>
void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<A*>(args[I])...);
}

template <class... A>
long long launch(void (*k)(A...), dim3 grid, dim3 block, void** args, int order, int use_fibers) {
    order_mode = order;
    direct = !use_fibers;
    barriers = 0;
    gridDim = grid;
    blockDim = block;
    struct Bound {
        void (*k)(A...);
        void** args;
    } bound{k, args};
    body = [](void* p) {
        auto* b = static_cast<Bound*>(p);
        call(b->k, b->args, std::index_sequence_for<A...>{});
    };
    body_arg = &bound;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = dim3(x, y, z);
                if (direct) {
                    run_block_direct();
                } else {
                    run_block();
                }
            }
    return barriers;
}

}  // namespace emu

#define __syncthreads() emu::syncthreads()
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
    return emu::shfl_xor(v, lane_mask);
}

// Appended by cuda_emu.py after the kernel source, once per kernel NAME:
#define EMU_EXPORT(NAME)                                                                                      \
    extern "C" const char* emu_sig_##NAME() { return emu::signature(NAME); }                                  \
    extern "C" long long emu_launch_##NAME(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,   \
                                           unsigned bz, void** args, int order, int fibers) {                 \
        return emu::launch(NAME, dim3(gx, gy, gz), dim3(bx, by, bz), args, order, fibers);                    \
    }
