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

struct alignas(16) float4 {
    float x, y, z, w;
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
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for the calling warp,
// written from the PTX ISA's fragment tables ("Matrix Fragments for
// mma.m16n8k8", .tf32), independently of how common.cuh fills them:
//   A (16×8, row-major): element (r, k) is in lane 4·(r % 8) + k % 4,
//                        register (r ≥ 8) + 2·(k ≥ 4);
//   B (8×8, column):     element (k, n) is in lane 4·n + k % 4, register (k ≥ 4);
//   C/D (16×8):          element (r, n) is in lane 4·(r % 8) + n / 2,
//                        register 2·(r ≥ 8) + n % 2.
// Every lane publishes its fragments, the warp meets, each lane computes the
// whole product from them and keeps its own four outputs. Like the
// hardware, it reads only the top 19 bits (TF32) of each operand register,
// so a kernel that forgot to round would lose accuracy here too; the
// products are formed in FP32 (exact for TF32 operands), summed in k order.
#define SI_CUDA_EMULATION 1
namespace emu {
inline float mma_a[1024][4], mma_b[1024][2];
}
inline void si_emu_mma_tf32(float c[4], const float a[4], const float b[2]) {
    const unsigned t = threadIdx.x, w = t / 32, base = w * 32, lane = t % 32;
    for (int q = 0; q < 4; ++q) emu::mma_a[t][q] = a[q];
    for (int q = 0; q < 2; ++q) emu::mma_b[t][q] = b[q];
    emu::warp_barriers[w]->arrive_and_wait();
    auto tf32 = [](float v) { return std::bit_cast<float>(std::bit_cast<unsigned>(v) & 0xffffe000u); };
    auto A = [&](int r, int k) { return tf32(emu::mma_a[base + 4 * (r % 8) + k % 4][(r >= 8) + 2 * (k >= 4)]); };
    auto B = [&](int k, int n) { return tf32(emu::mma_b[base + 4 * n + k % 4][k >= 4]); };
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
            if ((unsigned)(4 * (r % 8) + n / 2) != lane) continue;
            float& d = c[2 * (r >= 8) + n % 2];
            for (int k = 0; k < 8; ++k) d = std::fma(A(r, k), B(k, n), d);
        }
    emu::warp_barriers[w]->arrive_and_wait();
}

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
