// emu.h — runs the CUDA kernels of kernels/*.cu on the CPU, for tests.
//
// Just enough of CUDA to execute our kernels faithfully with real
// concurrency: every thread of a block is an OS thread, __syncthreads is a
// barrier over the block, warp shuffles exchange through a buffer with a
// barrier per warp, atomicAdd is an atomic. Blocks run one after another,
// so __shared__ variables can be plain statics. Slow (hundreds of threads
// on a couple of cores), so tests keep the problems small. It checks the
// kernels' index arithmetic and math; it says nothing about speed, and
// cannot catch bugs that need real GPU timing (none of our kernels rely on
// implicit warp synchronisation).
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float shfl_buf[1024];
}  // namespace emu

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::isnan;
using std::max;
using std::min;

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned t = threadIdx.x, w = t / 32;
    emu::shfl_buf[t] = v;
    emu::warp_barriers[w]->arrive_and_wait();
    const float r = emu::shfl_buf[t ^ (unsigned)lane_mask];
    emu::warp_barriers[w]->arrive_and_wait();
    return r;
}

inline float atomicAdd(float* addr, float v) { return std::atomic_ref<float>(*addr).fetch_add(v); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }

namespace emu {
// Runs kernel k over grid × block (1-D blocks, a multiple of 32 threads).
template <class P>
void launch(void (*k)(P), dim3 grid, unsigned threads, const P& p) {
    blockDim = dim3{threads, 1, 1};
    gridDim = grid;
    std::barrier<> bar((std::ptrdiff_t)threads);
    block_barrier = &bar;
    warp_barriers.clear();
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = dim3{x, y, z};
                        k(p);
                        bar.arrive_and_wait();  // the block is done before the next starts
                    }
        });
    }
    for (auto& th : pool) th.join();
}
}  // namespace emu
