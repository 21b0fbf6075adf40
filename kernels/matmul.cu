// matmul.cu — tiled SGEMM: C = alpha · op(A) · op(B) + beta · C.
//
// op(X) is X or Xᵀ (trans_a / trans_b). Row-major storage with leading
// dimensions: A(m, k) = a[m·lda + k], or a[k·lda + m] when transposed; same
// for B. The tile machinery (shared-memory staging, 4×4 register blocks,
// register prefetch) is si_gemm_tile in common.cuh; this file only says how
// to read A and B. Launch: block 256 threads, grid (ceil(N/64), ceil(M/64)).
//
// Backward of C = A·B (for the lead's wiring): dA = dC·Bᵀ (trans_b = 1),
// dB = Aᵀ·dC (trans_a = 1), each launched only when that input needs a
// gradient; beta = 1 accumulates into an existing gradient.

struct MatmulParams {
    const float* a;
    const float* b;
    float* c;
    int m, n, k;
    int lda, ldb, ldc;
    int trans_a, trans_b;
    float alpha, beta;
};

template <bool TA, bool TB>
struct MatLoader {
    // Coalesce along the contiguous axis of each operand.
    static constexpr bool A_K_FAST = !TA;
    static constexpr bool B_N_FAST = !TB;
    const float* a_ptr;
    const float* b_ptr;
    int lda, ldb;
    // Row m of op(A) starts at a_ptr + m·lda (or + m when transposed) and
    // steps 1 (or lda) along k; B's columns likewise.
    struct Row { const float* a; };
    struct Col { const float* b; };
    SI_DEV Row row(int m) const { return Row{TA ? a_ptr + m : a_ptr + (i64)m * lda}; }
    SI_DEV Col col(int n) const { return Col{TB ? b_ptr + (i64)n * ldb : b_ptr + n}; }
    SI_DEV float a_at(int k, const Row& r, bool ok) const {
        return si_load_if(TA ? r.a + (i64)k * lda : r.a + k, ok);
    }
    SI_DEV float b_at(int k, const Col& c, bool ok) const {
        return si_load_if(TB ? c.b + k : c.b + (i64)k * ldb, ok);
    }
};

template <bool TA, bool TB>
SI_DEV void matmul_run(SiTiles& tiles, const MatmulParams& p) {
    const MatLoader<TA, TB> ld{p.a, p.b, p.lda, p.ldb};
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    float acc[4][4] = {};
    si_gemm_tile(tiles, ld, p.m, p.n, 0, p.k, m0, n0, acc);
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= p.m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n >= p.n) continue;
            float* c = p.c + (i64)m * p.ldc + n;
            // beta == 0 must not read C: it may hold garbage (even NaN).
            *c = p.beta == 0.0f ? p.alpha * acc[i][j] : fmaf(p.beta, *c, p.alpha * acc[i][j]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) sgemm(MatmulParams p) {
    __shared__ SiTiles tiles;
    if (p.trans_a) {
        if (p.trans_b) matmul_run<true, true>(tiles, p); else matmul_run<true, false>(tiles, p);
    } else {
        if (p.trans_b) matmul_run<false, true>(tiles, p); else matmul_run<false, false>(tiles, p);
    }
}
