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

// *p when ok, else 0, as one predicated load: *p is not read when !ok,
// so p may then point anywhere (past a tensor, before it). The GEMM cores'
// gathers go through this: each element is either in range or padding (a
// tap outside the image, a row past M, a k past the end). Written as
// `ok ? *p : 0`, ptxas wrapped every gathered element in a branch region of
// its own (BSSY, BRA, BSYNC, a MOV) and kept the address arithmetic apart
// from the test; as a predicate the sm_90 K loops shrank by 10–25%
// (conv2d_fwd_tf32 239 → 211 instructions, conv2d_bwd_data_tf32 472 → 358,
// sgemm 519 → 457; benches/gpu/sass_loop.py). For read-only inputs only:
// the asm tells the compiler nothing about memory, so it may move the load
// past a store. (The CPU emulation reads *p directly.)
SI_DEV float si_load_if(const float* p, bool ok) {
#if defined(__CUDA_ARCH__)
    float v;
    asm("{\n\t.reg .pred q;\n\tsetp.ne.b32 q, %2, 0;\n\tmov.f32 %0, 0f00000000;\n\t"
        "@q ld.global.f32 %0, [%1];\n\t}"
        : "=f"(v)
        : "l"(p), "r"((int)ok));
    return v;
#else
    return ok ? *p : 0.0f;
#endif
}

// p itself, but opaque to the compiler: what it was computed from is
// forgotten. For a per-thread base pointer that a K loop offsets by an int
// (si_load_if(base + i, ...)): knowing base = p.x + 64-bit offset, the
// compiler kept the offset and rebuilt the address from p.x for every
// load, a 64-bit add and scale of four instructions, where a pointer held
// in two registers needs one IMAD.WIDE.
SI_DEV const float* si_opaque(const float* p) {
#if defined(__CUDA_ARCH__)
    asm("mov.b64 %0, %0;" : "+l"(p));
#endif
    return p;
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
//   struct Row;  Row row(int m) const;        // what A(m, ·) needs, worked out once
//   struct Col;  Col col(int n) const;        // what B(·, n) needs, worked out once
//   float a_at(int k, const Row&, bool ok) const;  // ok ? A(m, k) : 0
//   float b_at(int k, const Col&, bool ok) const;  // ok ? B(k, n) : 0
// row()/col() are called only with m < M / n < N. a_at/b_at get ok = false
// for an element past the GEMM's edge (m ≥ M, n ≥ N, k ≥ k_end; its Row or
// Col is then a real one, its k may lie past K) and must then return 0
// without reading it; they AND ok into their own bounds tests and load with
// si_load_if, so the whole test is a predicate and not a branch.
// The *_FAST flags pick which index varies across a warp during the tile
// load, so global reads coalesce for the operand's memory layout.
//
// Why rows and columns: a thread fetches the same few rows of A and columns
// of B for the whole K walk (SiTile64Pos), so everything that depends on
// the row or column alone (for a convolution: the image, the output pixel,
// their divisions) is split once per thread, and a K step only splits k.
// Done per element instead, a gathered conv operand costs three or four
// integer divisions of about twenty instructions each: far more than the
// multiply-adds it feeds.
// ---------------------------------------------------------------------------

#define SI_TM 64
#define SI_TN 64
#define SI_TK 16
#define SI_TILE_THREADS 256

// Thread tid's r-th (r < 4) A and B element of a 64×16 / 16×64 step. With
// A_K_FAST a thread holds 4 rows ((tid >> 4) + 16r) and one k (tid & 15);
// otherwise one row (tid & 63) and 4 k ((tid >> 6) + 4r). B likewise.
template <class L>
struct SiTile64Pos {
    static constexpr int RA = L::A_K_FAST ? 4 : 1;  // distinct A rows per thread
    static constexpr int RB = L::B_N_FAST ? 1 : 4;  // distinct B columns per thread
    static SI_DEV int a_m(int tid, int r) { return L::A_K_FAST ? (tid >> 4) + 16 * r : tid & 63; }
    static SI_DEV int a_k(int tid, int r) { return L::A_K_FAST ? tid & 15 : (tid >> 6) + 4 * r; }
    static SI_DEV int b_k(int tid, int r) { return L::B_N_FAST ? (tid >> 6) + 4 * r : tid & 15; }
    static SI_DEV int b_n(int tid, int r) { return L::B_N_FAST ? tid & 63 : (tid >> 4) + 16 * r; }
};

// acc[i][j] += sum over k in [k_begin, k_end) of A(m0+ty+16i, k) · B(k, n0+tx+16j).
// The shared tiles; the kernel declares one and passes it in, so a kernel
// that instantiates several loaders still uses only one set of tiles.
struct SiTiles {
    // +1 column of padding: the transposing stores hit distinct banks.
    float a[SI_TK][SI_TM + 1];
    float b[SI_TK][SI_TN + 1];
};

// Requires m0 < M and n0 < N (the grid covers the output exactly).
template <class L>
SI_DEV void si_gemm_tile(SiTiles& tiles, const L& ld, int M, int N, int k_begin, int k_end,
                         int m0, int n0, float acc[4][4]) {
    using Pos = SiTile64Pos<L>;
    auto& As = tiles.a;
    auto& Bs = tiles.b;
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;

    typename L::Row rows[Pos::RA];
    typename L::Col cols[Pos::RB];
    bool row_ok[Pos::RA], col_ok[Pos::RB];
#pragma unroll
    for (int q = 0; q < Pos::RA; ++q) {
        const int m = m0 + Pos::a_m(tid, q);
        row_ok[q] = m < M;
        rows[q] = ld.row(row_ok[q] ? m : m0);  // a real row either way; unused if !ok
    }
#pragma unroll
    for (int q = 0; q < Pos::RB; ++q) {
        const int n = n0 + Pos::b_n(tid, q);
        col_ok[q] = n < N;
        cols[q] = ld.col(col_ok[q] ? n : n0);
    }

    float ra[4], rb[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int qa = L::A_K_FAST ? r : 0;
            const int ka = k0 + Pos::a_k(tid, r);
            ra[r] = ld.a_at(ka, rows[qa], row_ok[qa] && ka < k_end);
            const int qb = L::B_N_FAST ? 0 : r;
            const int kb = k0 + Pos::b_k(tid, r);
            rb[r] = ld.b_at(kb, cols[qb], col_ok[qb] && kb < k_end);
        }
    };
    auto stage = [&]() {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            As[Pos::a_k(tid, r)][Pos::a_m(tid, r)] = ra[r];
            Bs[Pos::b_k(tid, r)][Pos::b_n(tid, r)] = rb[r];
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

// ---------------------------------------------------------------------------
// Division by a divisor that stays the same for a whole kernel, as one
// widening multiply and one shift. GPUs have no integer divide
// instruction: `/` compiles to a sequence of about twenty instructions,
// more than the multiply-adds one gathered operand feeds.
//
// For 0 ≤ n < 2^31 and 1 ≤ d < 2^31, let l = ceil(log2 d), p = 31 + l and
// mul = ceil(2^p / d), which fits in 32 bits. Then n / d = ⌊n·mul / 2^p⌋.
// Why: mul·d = 2^p + e with 0 ≤ e < d, so n·mul / 2^p = n/d + n·e/(d·2^p),
// and n·e < 2^31·2^l = 2^p keeps the extra term below 1/d: too small to
// carry n/d = q + r/d (r ≤ d − 1) past q + 1. (The construction CUTLASS's
// FastDivmod uses.) d = 1 needs no case of its own: l = 0, p = 31,
// mul = 2^31. The product is taken in 64 bits and shifted by p (31..62):
// one IMAD.WIDE.U32 and one funnel shift, with no branch on d, so the
// compiler has no reason to lay the loop out once per case. make() runs
// once per thread. n must not be negative: callers rule negative
// numerators out first.
struct SiDivisor {
    unsigned mul, shift;
    static SI_DEV SiDivisor make(int d) {
        // The 64-bit division below is a software routine on the GPU (tens
        // of instructions, once per thread and divisor); d = 1 (a stride
        // of 1, a 1-wide kernel) needs none.
        if (d <= 1) return SiDivisor{1u << 31, 31u};
        int l = 0;
        while ((1u << l) < (unsigned)d) ++l;  // ceil(log2 d), 1..31
        const int p = 31 + l;
        return SiDivisor{(unsigned)(((1ull << p) + (unsigned)d - 1) / (unsigned)d), (unsigned)p};
    }
    SI_DEV int div(int n) const {
        return (int)(((unsigned long long)(unsigned)n * mul) >> shift);
    }
};

// ---------------------------------------------------------------------------
// The large-problem GEMM core: a 128×128 output tile per block of 256
// threads (conv.cu's *_t128 kernels; si_gemm_tile above stays the core of
// matmul.cu and of the small-problem conv kernels).
//
// Same scheme as si_gemm_tile, with more work per thread: each thread keeps
// an 8×8 register block (rows ty + 16i, columns tx + 16j, i, j < 8, so the
// shared-memory reads are broadcasts, as in the 64 core), and K is walked in
// steps of 8, with the next step's global loads in flight in registers while
// the current one computes. Why 128×128×8 with 8×8 per thread:
//   * per k, a thread reads 8 + 8 values from shared memory for 64 FMAs
//     (4:1), where the 64 core reads 4 + 4 for 16 (2:1): on large problems
//     shared-memory bandwidth, not the FMA units, limits the 64 core;
//   * per step, the block gathers 128·8 + 8·128 operand elements for
//     128·128·8 FMAs: half the global loads, and half the index arithmetic,
//     per FMA.
// The price: 64 accumulators per thread (about twice the registers of the
// 64 core) and a quarter as many blocks for the same problem, so a small
// problem no longer fills the GPU. The host therefore picks this core by
// problem size (conv_tile_for in src/cuda/launch.rs); it is expected to help
// large problems, which a GPU benchmark has to confirm.
//
// L is a loader as for si_gemm_tile (the same loaders serve both cores).
// A thread fetches 4 A elements per step: with A_K_FAST one k (tid & 7) and 4
// rows ((tid >> 3) + 32r), otherwise one row (tid & 127) and 4 k ((tid >> 7)
// + 2r); B likewise. So it holds 4 or 1 Rows and 1 or 4 Cols for the whole
// walk (SiTile128Pos::RA / RB).
// ---------------------------------------------------------------------------

// A loader may declare K_TABLE = true and provide, besides a_at / b_at,
//   SiKInfo k_info(int k) const;                       // what k alone decides
//   SiKInfo k_none() const;                            // the entry of a k past the end
//   float a_at(int k, const SiKInfo&, const Row&, bool ok) const;
//   float b_at(int k, const SiKInfo&, const Col&, bool ok) const;
// The 128×128 core then splits each k of a K step once for the whole block
// (threads 0..7 write k_info of the next step's 8 k into shared memory while
// staging the current one) instead of once per gathered element: the conv
// loaders' two multiply-shift divisions and the products of k's parts. A
// thread's 4 B elements of the forward lie at 4 different k, so each paid
// its own split. (The 64×64 core has no table; a loader's plain a_at / b_at
// compute k_info themselves.)
//
// The entries of k ≥ k_end (the last step's tail) are k_none(): a tap so
// far outside every image that b_at's own bounds test fails, so b_at reads
// nothing and returns 0 for it whatever the column. The core therefore
// passes B only its column test as ok and leaves the k test to the table:
// one compare and one predicate AND less per gathered element (A, whose
// product with that 0 must not be NaN, keeps its k test).
struct alignas(16) SiKInfo {
    int a, b, dy, dx;  // the loader's meaning (conv.cu)
};
// k_none()'s tap shift: past any image the host accepts (it refuses a
// padded side of SI_TAP_FAR pixels or more, src/ops/conv/cuda.rs), and
// small enough that adding it to a pixel index cannot overflow an int.
#define SI_TAP_FAR (1 << 30)

#define SI_BM 128
#define SI_BN 128
#define SI_BK 8
// Row padding of the shared tiles, one per way of reading them.
//
// FFMA (SI_BPAD): with *_FAST = true for k, a warp stores 8 consecutive k ×
// 4 consecutive m; with rows of 128 + 4 floats, element (k, m) sits in bank
// (4k + m) mod 32, all 32 distinct (with + 1 they would collide up to 4
// ways). The other layout stores 32 consecutive m of one k. The FFMA reads
// are broadcasts, conflict-free with any padding.
//
// Tensor cores (SI_BPAD_TC): a warp reads mma fragments, element
// (k0 + t, m0 + g) for t < 4, g < 8 (si_tile128_mma): bank (pad·t + g) mod
// 32, all 32 distinct for pad 8, two-way conflicts for pad 4. The stores
// then collide two ways instead ((8k + m) mod 32 repeats after k = 4), but
// a thread stores 8 values per K step and reads 24.
#define SI_BPAD 4
#define SI_BPAD_TC 8
// The thread mapping below (SiTile128Pos) is written for exactly these sizes.
static_assert(SI_BM == 128 && SI_BN == 128 && SI_BK == 8 && SI_TILE_THREADS == 256,
              "si_gemm_tile128's thread mapping assumes 256 threads on 128x128x8 tiles");

template <int PAD, int BM = SI_BM, int BN = SI_BN>
struct SiTiles128P {
    float a[SI_BK][BM + PAD];
    float b[SI_BK][BN + PAD];
};

// How the 128×128 core does its multiply-adds:
//   Ffma   — FP32 FFMA on the CUDA cores (the *_t128 kernels);
//   Tf32x3 — TF32 tensor cores, three products per operand pair, as
//            accurate as FP32 (the *_tc kernels);
//   Tf32   — TF32 tensor cores, one product of the operands rounded to
//            TF32 (the *_tf32 kernels): about 3 significant decimal digits
//            per product, PyTorch's default for convolutions
//            (torch.backends.cudnn.allow_tf32), opt-in here.
enum class SiMath { Ffma, Tf32x3, Tf32 };
// The wide tile: 64×256 instead of 128×128, for GEMMs of at most 64 rows
// (conv.cu's *_t128w, *_tcw and *_tf32w kernels; a conv into or out of 64
// channels: CIFAR's conv11 and conv12 forward, conv12 and conv21 input
// gradients). On a 128×128 tile such a GEMM leaves rows 64..127 empty: on
// tensor cores warps 4..7 sit out the mma, on FFMA every thread does half
// its multiply-adds, while every thread still gathers its share of the
// operands, so a block does half a tile's work for a whole tile's gathers.
// A 64×256 tile keeps all 8 warps busy (tensor cores: warp w owns columns
// 32w .. 32w + 31; FFMA: si_tile_wide_mac) and gathers 64·8 + 8·256
// operands per K step for 64·256·8 multiply-adds: 0.16 gathers per
// multiply-add, against 0.25 on the half-used 128×128 tile.
#define SI_WM 64
#define SI_WN 256
// The shared tiles of each core (the tensor-core ones read mma fragments).
template <SiMath MATH, bool WIDE = false>
using SiTiles128 = SiTiles128P<MATH == SiMath::Ffma ? SI_BPAD : SI_BPAD_TC, WIDE ? SI_WM : SI_BM,
                               WIDE ? SI_WN : SI_BN>;

template <class L, bool WIDE = false>
struct SiTile128Pos {
    static constexpr int NA = WIDE ? 2 : 4;  // A elements a thread stages per K step
    static constexpr int NB = WIDE ? 8 : 4;  // B elements
    static constexpr int RA = L::A_K_FAST ? NA : 1;  // distinct A rows per thread
    static constexpr int RB = L::B_N_FAST ? 1 : NB;  // distinct B columns per thread
    // Tile row / k of this thread's r-th A element (r < NA).
    static SI_DEV int a_m(int tid, int r) { return L::A_K_FAST ? (tid >> 3) + 32 * r : tid & 127; }
    static SI_DEV int a_k(int tid, int r) { return L::A_K_FAST ? tid & 7 : (tid >> 7) + 2 * r; }
    // Tile k / column of this thread's r-th B element (r < NB). Wide: one
    // column per thread, all 8 k (a warp reads 32 neighbouring columns).
    static SI_DEV int b_k(int tid, int r) {
        return L::B_N_FAST ? (WIDE ? r : (tid >> 7) + 2 * r) : tid & 7;
    }
    static SI_DEV int b_n(int tid, int r) {
        return L::B_N_FAST ? (WIDE ? tid : tid & 127) : (tid >> 3) + 32 * r;
    }
};

// One staged K step: acc[i][j] += Σ_kk As[kk][ty + 16i] · Bs[kk][tx + 16j],
// for the first RI row groups (RI = 4 when the tile's rows 64.. are all past M).
template <int RI>
SI_DEV void si_tile128_mac(const SiTiles128<SiMath::Ffma>& t, int tx, int ty, float acc[8][8]) {
#pragma unroll
    for (int kk = 0; kk < SI_BK; ++kk) {
        float av[RI], bv[8];
#pragma unroll
        for (int i = 0; i < RI; ++i) av[i] = t.a[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 8; ++j) bv[j] = t.b[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < RI; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
}

// The same step on the 64×256 tile: thread (tx, ty) = (tid & 31, tid >> 5)
// owns rows ty + 8i and columns tx + 32j, so a warp (one ty) reads each A
// value as a broadcast and 32 neighbouring B values: no bank conflicts, 16
// shared reads for 64 FMAs per k, as on the full 128×128 tile.
SI_DEV void si_tile_wide_mac(const SiTiles128<SiMath::Ffma, true>& t, int tx, int ty, float acc[8][8]) {
#pragma unroll
    for (int kk = 0; kk < SI_BK; ++kk) {
        float av[8], bv[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = t.a[kk][ty + 8 * i];
#pragma unroll
        for (int j = 0; j < 8; ++j) bv[j] = t.b[kk][tx + 32 * j];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
}

// ---------------------------------------------------------------------------
// Tensor cores: the same 128×128×8 step on TF32 mma.sync with three products
// per operand pair, as accurate as FP32 FFMA (conv.cu's *_tc kernels).
//
// TF32 keeps 10 of FP32's 23 mantissa bits. Split each operand into its TF32
// rounding and the TF32 rounding of what is left, x ≈ x_hi + x_lo (x_lo is
// about 2^-11·|x|; together they carry ~21 bits). Then
//     a·b = a_hi·b_hi + a_hi·b_lo + a_lo·b_hi + a_lo·b_lo,
// and the last term, ~2^-22·|a·b|, is below FP32's own rounding: dropped.
// Products of TF32 numbers are exact in the FP32 accumulator, so the three
// mma per step give FFMA's accuracy (summed in another order) at three times
// the tensor work, which tensor cores still do several times faster than
// FFMA (the "3xTF32" of CUTLASS).
//
// mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32: a warp adds a 16×8 A times an
// 8×8 B into a 16×8 C. Lane l = 4g + t (g = l >> 2, t = l & 3) holds
//   A: a[0] = A(g, t),  a[1] = A(g+8, t),  a[2] = A(g, t+4),  a[3] = A(g+8, t+4)
//   B: b[0] = B(t, g),  b[1] = B(t+4, g)
//   C: c[0] = C(g, 2t), c[1] = C(g, 2t+1), c[2] = C(g+8, 2t), c[3] = C(g+8, 2t+1)
// (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32).
// ---------------------------------------------------------------------------

// x rounded to TF32 (to nearest, ties to even, as cuBLAS and CUTLASS round
// on sm_90), kept in an FP32 register with the 13 dropped mantissa bits
// zero. Inf stays Inf; on the bit path below (before sm_90, and the CPU
// emulation) a NaN stays a NaN unless its payload lies only in the 13
// dropped bits (then the mask makes it Inf, and the lo part of the 3xTF32
// split, NaN − Inf, is NaN, so the product is still NaN). What sm_90's
// cvt.rn.tf32 makes of a NaN PTX does not say; not checked on a GPU yet.
//
// Why ties to even and not ties away (cvt.rna, sm_80's only TF32 cvt): on
// sm_90 cvt.rn.tf32.f32 is one instruction, F2FP.TF32.F32.PACK_B, while
// ptxas expands cvt.rna to three (a compare against infinity, an add of
// 0x1000 under it, a mask), and the *_tf32 kernels round every operand
// they stage: 8 values per thread and K step, 10 on the wide tile
// (benches/gpu/sass_loop.py counts the loops). Its result is the FP32 bit
// pattern with the low 13 bits zero, which CUTLASS's sm_90 converter also
// reads back as a float; the *_tc kernels' split x − hi needs exactly
// that, and the GPU tests of those kernels at FP32 tolerances would show
// otherwise. Before sm_90 (and in the CPU emulation) the same rounding is
// written out in bits: adding 0x0fff plus the last kept bit and truncating
// rounds to nearest, ties to even, in sign-magnitude.
SI_DEV float si_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned u;
    asm("cvt.rn.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return __uint_as_float(u);
#else
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x0fffu + ((u >> 13) & 1u)) & 0xffffe000u;
    return __uint_as_float(u);
#endif
}

// x rounded to TF32 to nearest, ties either way: the 3xTF32 split
// (si_tile128_mma), whose hi + lo restores x whichever way a tie goes, so
// it takes each architecture's cheapest rounding: si_tf32's one F2FP on
// sm_90, cvt.rna before it (ptxas: three instructions, against about six
// for si_tf32's ties-to-even in bits; 48 of them per K step and warp).
SI_DEV float si_tf32_split(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 900
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return __uint_as_float(u & 0xffffe000u);
#else
    return si_tf32(x);
#endif
}

// c += A·B for one warp's m16n8k8 fragments (operands already TF32).
SI_DEV void si_mma_tf32(float c[4], const float a[4], const float b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#elif defined(SI_CUDA_EMULATION)
    // The CPU emulation of tests/cuda_emu implements the instruction from
    // the PTX fragment tables, so it checks the bookkeeping above.
    si_emu_mma_tf32(c, a, b);
#else
    // Before sm_80 there are no TF32 tensor cores; the host never launches
    // the *_tc kernels there (src/cuda/launch.rs), so this is unreachable.
    __trap();
#endif
}

// One staged K step (SI_BK = 8 = the mma's k) on tensor cores. Warp (wm, wn)
// (wm < 2, wn < 4) owns tile rows 64·wm .. +63 and columns 32·wn .. +31: 4 × 4
// mma tiles of 16 × 8. Its lanes keep
//     acc[2·mi + h][2·ni + e] = C(64·wm + 16·mi + 8·h + g, 32·wn + 8·ni + 2·t + e),
// the layout conv.cu's SiMmaLayout stores from.
//
// Tf32x3 splits each operand it reads into hi + lo and runs three mma;
// Tf32 reads operands that si_gemm_tile128 already rounded to TF32 when it
// staged them (8 roundings per thread and K step instead of 24 here) and
// runs one.
template <SiMath MATH, class Tiles>
SI_DEV void si_tile128_mma(const Tiles& s, int wm, int wn, int g, int t, float acc[8][8]) {
    static_assert(MATH != SiMath::Ffma, "si_tile128_mma is the tensor-core step");
    constexpr bool split = MATH == SiMath::Tf32x3;
    float b_hi[4][2], b_lo[4][2];
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const float v = s.b[t + 4 * q][32 * wn + 8 * ni + g];
            if constexpr (split) {
                b_hi[ni][q] = si_tf32_split(v);
                b_lo[ni][q] = si_tf32_split(v - b_hi[ni][q]);
            } else {
                b_hi[ni][q] = v;
            }
        }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
        float a_hi[4], a_lo[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float v = s.a[t + 4 * (q >> 1)][64 * wm + 16 * mi + 8 * (q & 1) + g];
            if constexpr (split) {
                a_hi[q] = si_tf32_split(v);
                a_lo[q] = si_tf32_split(v - a_hi[q]);
            } else {
                a_hi[q] = v;
            }
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            float c[4] = {acc[2 * mi][2 * ni], acc[2 * mi][2 * ni + 1], acc[2 * mi + 1][2 * ni],
                          acc[2 * mi + 1][2 * ni + 1]};
            if constexpr (split) {
                // Small terms first, so they are not lost next to the big one.
                si_mma_tf32(c, a_lo, b_hi[ni]);
                si_mma_tf32(c, a_hi, b_lo[ni]);
            }
            si_mma_tf32(c, a_hi, b_hi[ni]);
            acc[2 * mi][2 * ni] = c[0];
            acc[2 * mi][2 * ni + 1] = c[1];
            acc[2 * mi + 1][2 * ni] = c[2];
            acc[2 * mi + 1][2 * ni + 1] = c[3];
        }
    }
}

// acc[i][j] += Σ over k in [k_begin, k_end) of A(m0+ty+16i, k) · B(k, n0+tx+16j)
// (MATH = Ffma), or the same sums on tensor cores with the accumulator
// layout of si_tile128_mma (Tf32x3, Tf32). Requires m0 < M and n0 < N (the
// grid covers the output exactly). WIDE: the 64×256 tile (M ≤ 64 per tile;
// on tensor cores warp w is the mma warp (0, w), on FFMA the layout of
// si_tile_wide_mac).
template <class L, SiMath MATH = SiMath::Ffma, bool WIDE = false>
SI_DEV void si_gemm_tile128(SiTiles128<MATH, WIDE>& tiles, const L& ld, int M, int N, int k_begin,
                            int k_end, int m0, int n0, float acc[8][8]) {
    using Pos = SiTile128Pos<L, WIDE>;
    // Every conv loader reads A along k; the other layout is written out but
    // no loader uses it, so no test covers it yet.
    static_assert(L::A_K_FAST, "si_gemm_tile128: A_K_FAST = false is untested");
    static_assert(!WIDE || L::B_N_FAST, "the wide tile is written for B read along n");
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;

    // The rows and columns this thread fetches, split once for the whole walk.
    // (The same walk as si_gemm_tile's, written out in both: moved into one
    // shared struct, it lost ptxas' sharing of the k split between a_at and
    // b_at in the weight gradient, 158 → 259 loop instructions, counted with
    // benches/gpu/sass_loop.py.)
    typename L::Row rows[Pos::RA];
    typename L::Col cols[Pos::RB];
    bool row_ok[Pos::RA], col_ok[Pos::RB];
#pragma unroll
    for (int q = 0; q < Pos::RA; ++q) {
        const int m = m0 + Pos::a_m(tid, q);
        row_ok[q] = m < M;
        rows[q] = ld.row(row_ok[q] ? m : m0);  // a real row either way; unused if !ok
    }
#pragma unroll
    for (int q = 0; q < Pos::RB; ++q) {
        const int n = n0 + Pos::b_n(tid, q);
        col_ok[q] = n < N;
        cols[q] = ld.col(col_ok[q] ? n : n0);
    }

    // With a K_TABLE loader: k_info of a step's 8 k, double-buffered by
    // the step's parity (a step's entries are written while the previous
    // step's may still be read).
    __shared__ SiKInfo ktab[2][SI_BK];
    auto parity = [&](int k0) { return ((k0 - k_begin) / SI_BK) & 1; };
    auto fill_table = [&](int k0) {
        if constexpr (L::K_TABLE) {
            if (tid < SI_BK) ktab[parity(k0)][tid] = k0 + tid < k_end ? ld.k_info(k0 + tid) : ld.k_none();
        }
    };
    constexpr int NR = Pos::NA > Pos::NB ? Pos::NA : Pos::NB;
    float ra[Pos::NA], rb[Pos::NB];
    auto fetch = [&](int k0) {
        // k0 + i < k_end as i < k_left: one compare against a constant i per
        // element instead of an add and a compare.
        const int k_left = k_end - k0;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            if (r < Pos::NA) {
                const int qa = L::A_K_FAST ? r : 0;
                const int ia = Pos::a_k(tid, r), ka = k0 + ia;
                const bool ok = row_ok[qa] && ia < k_left;
                if constexpr (L::K_TABLE) ra[r] = ld.a_at(ka, ktab[parity(k0)][ia], rows[qa], ok);
                else ra[r] = ld.a_at(ka, rows[qa], ok);
            }
            if (r < Pos::NB) {
                const int qb = L::B_N_FAST ? 0 : r;
                const int ib = Pos::b_k(tid, r), kb = k0 + ib;
                if constexpr (L::K_TABLE) rb[r] = ld.b_at(kb, ktab[parity(k0)][ib], cols[qb], col_ok[qb]);
                else rb[r] = ld.b_at(kb, cols[qb], col_ok[qb] && ib < k_left);
            }
        }
    };
    auto stage = [&]() {
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            // TF32: rounded once here, not by each of the warps that read it.
            if (r < Pos::NA) {
                const float v = MATH == SiMath::Tf32 ? si_tf32(ra[r]) : ra[r];
                tiles.a[Pos::a_k(tid, r)][Pos::a_m(tid, r)] = v;
            }
            if (r < Pos::NB) {
                const float v = MATH == SiMath::Tf32 ? si_tf32(rb[r]) : rb[r];
                tiles.b[Pos::b_k(tid, r)][Pos::b_n(tid, r)] = v;
            }
        }
    };

    // When rows m0 + 64 .. m0 + 127 all lie past M (M = 64, the last tile of
    // M = 192, ...), row groups i ≥ 4 hold nothing: skip their shared reads
    // and FMAs. The same for every thread of the block, so no divergence.
    const bool low_half = !WIDE && m0 + 64 >= M;
    if (k_begin < k_end) {
        if constexpr (L::K_TABLE) {
            fill_table(k_begin);
            __syncthreads();
        }
        fetch(k_begin);
    }
    for (int k0 = k_begin; k0 < k_end; k0 += SI_BK) {
        stage();
        if (k0 + SI_BK < k_end) fill_table(k0 + SI_BK);  // read by everyone after the barrier
        __syncthreads();
        if (k0 + SI_BK < k_end) fetch(k0 + SI_BK);  // in flight while we compute
        if constexpr (MATH != SiMath::Ffma) {
            // Warps 4..7 own rows 64..127: nothing to do there in a low-half
            // tile (the same for the whole warp, as mma.sync requires).
            const int warp = tid >> 5, lane = tid & 31;
            if (WIDE)
                si_tile128_mma<MATH>(tiles, 0, warp, lane >> 2, lane & 3, acc);
            else if (!(low_half && warp >= 4))
                si_tile128_mma<MATH>(tiles, warp >> 2, warp & 3, lane >> 2, lane & 3, acc);
        } else {
            if constexpr (WIDE) si_tile_wide_mac(tiles, tid & 31, tid >> 5, acc);
            else if (low_half) si_tile128_mac<4>(tiles, tx, ty, acc);
            else si_tile128_mac<8>(tiles, tx, ty, acc);
        }
        __syncthreads();  // everyone is done reading before the next stage()
    }
}

// ---------------------------------------------------------------------------
// Few rows: a GEMM with M ≤ 8 (conv.cu's *_m8 kernels: a convolution into 1
// to 8 channels, e.g. the input gradient of a net's first conv, Cin = 3, or
// a decoder's last layer). On the 64×64 or 128×128 cores such a GEMM uses
// at most 8 of each tile's 64 or 128 rows (3 of 128 for an RGB input
// gradient), and every block still gathers its whole B tile, K step by K
// step: nearly all of the work is thrown away. Here a block of 256 threads
// owns all M rows of 256 columns, one column per thread, so each gathered B
// element feeds M multiply-adds and is loaded once:
//     acc[m] += A(m, k) · B(k, n)   for m < M, this thread's n,
// with A staged in shared memory SI_M8_KC values of k at a time (one
// element per thread, zero past M and K) and read back as two float4
// broadcasts per k, and, for a K_TABLE loader, the chunk's k_info next to
// it. Launch: grid ceil(N / 256), block 256.
// ---------------------------------------------------------------------------

#define SI_M8 8
#define SI_M8_KC 32
static_assert(SI_M8 * SI_M8_KC == SI_TILE_THREADS, "si_gemm_m8 stages one A element per thread");

template <class L>
SI_DEV void si_gemm_m8(const L& ld, int M, int N, int K, int n, float acc[SI_M8]) {
    __shared__ float4 as[SI_M8_KC][SI_M8 / 4];  // A(0..7, k0 + kk)
    float* const as_f = reinterpret_cast<float*>(&as[0][0]);
    const int tid = threadIdx.x;
    const bool col_ok = n < N;
    // The column is worked out once; a thread past N keeps staging A.
    const typename L::Col col = ld.col(col_ok ? n : 0);
    const int am = tid & (SI_M8 - 1), ak = tid / SI_M8;  // the A element this thread stages
    const typename L::Row row = ld.row(am < M ? am : 0);
    // With a K_TABLE loader, k_info of the chunk's k: split once per block,
    // not once per thread (every thread walks the same k).
    __shared__ SiKInfo ktab[SI_M8_KC];
    for (int k0 = 0; k0 < K; k0 += SI_M8_KC) {
        const int k = k0 + ak;
        as_f[ak * SI_M8 + am] = ld.a_at(k, row, am < M && k < K);
        if constexpr (L::K_TABLE) {
            if (tid < SI_M8_KC && k0 + tid < K) ktab[tid] = ld.k_info(k0 + tid);
        }
        __syncthreads();
        if (col_ok) {
            const int kn = min(SI_M8_KC, K - k0);
#pragma unroll 4
            for (int kk = 0; kk < kn; ++kk) {
                float b;
                if constexpr (L::K_TABLE) b = ld.b_at(k0 + kk, ktab[kk], col, true);
                else b = ld.b_at(k0 + kk, col, true);
                const float4 lo = as[kk][0], hi = as[kk][1];
                acc[0] = fmaf(lo.x, b, acc[0]);
                acc[1] = fmaf(lo.y, b, acc[1]);
                acc[2] = fmaf(lo.z, b, acc[2]);
                acc[3] = fmaf(lo.w, b, acc[3]);
                acc[4] = fmaf(hi.x, b, acc[4]);
                acc[5] = fmaf(hi.y, b, acc[5]);
                acc[6] = fmaf(hi.z, b, acc[6]);
                acc[7] = fmaf(hi.w, b, acc[7]);
            }
        }
        __syncthreads();  // everyone is done with this A chunk (and table)
    }
}
