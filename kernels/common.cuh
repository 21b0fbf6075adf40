// common.cuh — prepended to every kernel file before NVRTC compiles it.
//
// NVRTC has no system headers, so everything a kernel needs beyond the CUDA
// built-ins (threadIdx, __syncthreads, expf, atomicAdd, __shfl_down_sync, ...)
// is defined here. Conventions used by every kernel file:
//
// * Every kernel is `extern "C"` (no C++ name mangling: the Rust side looks
//   kernels up by their plain name) and takes exactly ONE argument, a struct
//   of launch parameters passed by value. Each struct is mirrored field by
//   field as a `#[repr(C)]` struct in `src/cuda/params.rs`; pointers are
//   64-bit device addresses there (`u64`).
// * Tensors are contiguous f32, NCHW for images.
// * Element counts are `long long` (i64) so that large batches cannot
//   overflow; per-dimension sizes are `int`.
// * Element-wise kernels use grid-stride loops, so any grid size is correct
//   and the host can cap the grid.

typedef long long i64;

#define SI_DEV __device__ __forceinline__

// Negative infinity: what padding contributes to a max pool.
#define SI_NEG_INF (-__int_as_float(0x7f800000))

// Threads per block used by the element-wise and reduction kernels. The host
// launches these kernels with exactly this block size.
#define SI_BLOCK 256

// Global index of this thread in a 1-D launch, and the grid's total thread
// count (the step of a grid-stride loop).
SI_DEV i64 si_gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
SI_DEV i64 si_gstride() { return (i64)gridDim.x * blockDim.x; }

// for (i = this thread; i < n; i += whole grid)
#define SI_GRID_LOOP(i, n) for (i64 i = si_gtid(); i < (i64)(n); i += si_gstride())

// Sum over the 32 lanes of a warp; every lane receives the total.
SI_DEV float si_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Maximum over the 32 lanes of a warp; every lane receives it.
SI_DEV float si_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024). Warps
// reduce with shuffles, the per-warp sums meet in shared memory, and warp 0
// reduces those. Only thread 0's return value is meaningful. Contains
// __syncthreads, so every thread of the block must call it.
SI_DEV float si_block_sum(float v) {
    __shared__ float warp_sums[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = si_warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    const unsigned nwarps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nwarps) ? warp_sums[lane] : 0.0f;
    if (warp == 0) v = si_warp_sum(v);
    __syncthreads();  // warp_sums may be reused by a following call
    return v;
}

// Splits a flat NCHW index into (plane = n*C + c, h, w).
SI_DEV void si_unravel_plane(i64 idx, int H, int W, i64* plane, int* h, int* w) {
    *w = (int)(idx % W);
    i64 t = idx / W;
    *h = (int)(t % H);
    *plane = t / H;
}

// Ceiling division for non-negative a and positive b.
SI_DEV int si_ceil_div(int a, int b) { return (a + b - 1) / b; }

// Floor division that is correct for negative numerators (C++ truncates).
SI_DEV int si_floor_div(int a, int b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

// ---------------------------------------------------------------------------
// Shared-memory tiled GEMM core, used by matmul.cu (plain SGEMM) and conv.cu
// (implicit GEMM: the operands are gathered from NCHW tensors on the fly,
// nothing like im2col is ever materialised).
//
// One block of 256 threads computes a 64×64 tile of C = A·B (A is M×K, B is
// K×N, both *logical* matrices: the loader `L` says how to fetch element
// (m, k) of A and (k, n) of B). The K dimension is walked in steps of 16:
// each step stages a 64×16 slice of A and a 16×64 slice of B in shared
// memory, then every thread multiplies them into its 4×4 register block
// (rows ty + 16i, columns tx + 16j). While a step computes, the next step's
// global loads are already issued into registers (register prefetch), which
// hides most of the memory latency.
//
// L must provide
//   static constexpr bool A_K_FAST;  // true: neighbouring threads read neighbouring k of A
//   static constexpr bool B_N_FAST;  // true: neighbouring threads read neighbouring n of B
//   float a(int m, int k) const;     // called only for m < M, k in [k_begin, k_end)
//   float b(int k, int n) const;     // called only for k in [k_begin, k_end), n < N
// The *_FAST flags pick which index varies across a warp during the tile
// load, so global reads coalesce for the operand's memory layout.
// ---------------------------------------------------------------------------

#define SI_TM 64
#define SI_TN 64
#define SI_TK 16
#define SI_TILE_THREADS 256

template <class L>
struct SiTileLoad {
    // Position of this thread's r-th A element inside the tile.
    static SI_DEV void a_pos(int tid, int r, int* mm, int* kk) {
        if (L::A_K_FAST) { *kk = tid & 15; *mm = (tid >> 4) + 16 * r; }
        else { *mm = tid & 63; *kk = (tid >> 6) + 4 * r; }
    }
    // Position of this thread's r-th B element inside the tile.
    static SI_DEV void b_pos(int tid, int r, int* kk, int* nn) {
        if (L::B_N_FAST) { *nn = tid & 63; *kk = (tid >> 6) + 4 * r; }
        else { *kk = tid & 15; *nn = (tid >> 4) + 16 * r; }
    }
};

// acc[i][j] += sum over k in [k_begin, k_end) of A(m0+ty+16i, k) · B(k, n0+tx+16j).
// The shared tiles; the kernel declares one and passes it in, so a kernel
// that instantiates several loaders still uses only one set of tiles.
struct SiTiles {
    // +1 column of padding: the transposing stores hit distinct banks.
    float a[SI_TK][SI_TM + 1];
    float b[SI_TK][SI_TN + 1];
};

template <class L>
SI_DEV void si_gemm_tile(SiTiles& tiles, const L& ld, int M, int N, int k_begin, int k_end,
                         int m0, int n0, float acc[4][4]) {
    auto& As = tiles.a;
    auto& Bs = tiles.b;
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    float ra[4], rb[4];

    auto fetch = [&](int k0) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int mm, kk, nn, kb;
            SiTileLoad<L>::a_pos(tid, r, &mm, &kk);
            const int m = m0 + mm, ka = k0 + kk;
            ra[r] = (m < M && ka < k_end) ? ld.a(m, ka) : 0.0f;
            SiTileLoad<L>::b_pos(tid, r, &kb, &nn);
            const int n = n0 + nn, k = k0 + kb;
            rb[r] = (n < N && k < k_end) ? ld.b(k, n) : 0.0f;
        }
    };
    auto stage = [&]() {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int mm, kk, nn, kb;
            SiTileLoad<L>::a_pos(tid, r, &mm, &kk);
            As[kk][mm] = ra[r];
            SiTileLoad<L>::b_pos(tid, r, &kb, &nn);
            Bs[kb][nn] = rb[r];
        }
    };

    if (k_begin < k_end) fetch(k_begin);
    for (int k0 = k_begin; k0 < k_end; k0 += SI_TK) {
        stage();
        __syncthreads();
        if (k0 + SI_TK < k_end) fetch(k0 + SI_TK);  // in flight while we compute
#pragma unroll
        for (int kk = 0; kk < SI_TK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();  // everyone is done reading before the next stage()
    }
}

// Splits [0, K) into `splits` chunks that are whole multiples of SI_TK and
// returns chunk `z` (split-K: several blocks share one output tile).
SI_DEV void si_split_k(int K, int splits, int z, int* k_begin, int* k_end) {
    int chunk = si_ceil_div(si_ceil_div(K, splits), SI_TK) * SI_TK;
    if (chunk < SI_TK) chunk = SI_TK;
    const long long b = (long long)z * chunk;
    *k_begin = b < K ? (int)b : K;
    *k_end = b + chunk < K ? (int)(b + chunk) : K;
}
