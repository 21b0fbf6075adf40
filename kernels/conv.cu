// conv.cu — 2-D convolution (NCHW, stride, padding, dilation) as implicit GEMM.
//
// Each kernel is a matrix product whose operands are read straight out of
// the NCHW tensors (see si_gemm_tile in common.cuh); nothing is unfolded in
// memory. Notation: x [N, Cin, H, W], w [Cout, Cin, KH, KW],
// y [N, Cout, OH, OW], with
//     y[n, co, oy, ox] = bias[co]
//                      + Σ_{ci, ky, kx} w[co, ci, ky, kx] · x[n, ci, iy, ix],
//     iy = oy·sh − ph + ky·dh,   ix = ox·sw − pw + kx·dw   (0 outside x).
//
// Forward (conv2d_fwd)  — GEMM  M = Cout, N = batch·OH·OW, K = Cin·KH·KW:
//     A(co, (ci,ky,kx)) = w (already a row-major Cout×K matrix),
//     B((ci,ky,kx), (n,oy,ox)) = x[n, ci, iy, ix].
//
// Input gradient (conv2d_bwd_data) — y is linear in x, and x[n, ci, iy, ix]
// meets w[co, ci, ky, kx] in every output (oy, ox) with iy = oy·sh − ph + ky·dh.
// So dL/dx[n, ci, iy, ix] = Σ_{co, ky, kx} w[co, ci, ky, kx] · dy[n, co, oy, ox]
// over the (ky, kx) for which oy = (iy + ph − ky·dh)/sh is a whole number in
// range (same for ox). That is a GEMM with M = Cin, N = batch·H·W,
// K = Cout·KH·KW — a *gather*: each thread owns its dx elements and sums
// into registers, so no atomics and no scatter:
//     A(ci, (co,ky,kx)) = w[co, ci, ky, kx],
//     B((co,ky,kx), (n,iy,ix)) = dy[n, co, oy, ox] (0 when not whole / out of range).
// With stride s, only 1/s² of the B entries are non-zero; the simple gather
// keeps the kernel one GEMM. It runs only when x needs a gradient.
//
// Weight gradient (conv2d_bwd_weight) — w[co, ci, ky, kx] multiplies
// x[n, ci, iy, ix] into y[n, co, oy, ox] for every n, oy, ox, so
//     dL/dw[co, ci, ky, kx] = Σ_{n, oy, ox} dy[n, co, oy, ox] · x[n, ci, iy, ix]:
// GEMM with M = Cout, N = Cin·KH·KW, K = batch·OH·OW. K is long and M·N small,
// so the K range is split over gridDim.z blocks (split-K); each writes its
// partial tile to `workspace` [split_k, Cout, Cin·KH·KW] and
// conv2d_bwd_weight_reduce adds them up in a fixed order (deterministic).
// It runs only when w needs a gradient (never for a frozen attacked model).
//
// Bias gradient: Σ over n, oy, ox of dy — reduce.cu: channel_sum.
//
// Transposed convolution (conv_transpose2d_fwd) IS the input-gradient
// computation: for xt [N, Ct_in, IH, IW] and wt [Ct_in, Ct_out, KH, KW]
// (PyTorch layout), call it with cout = Ct_in, cin = Ct_out, (oh, ow) =
// (IH, IW), (h, w) = the transposed conv's output size, dy = xt, weight = wt,
// bias over Ct_out. Its backward reuses the other two kernels:
//     dL/dxt = conv2d_fwd(x = dyt, weight = wt)          (no bias),
//     dL/dwt = conv2d_bwd_weight(x = dyt, dy = xt).
//
// Launch (all GEMM kernels): block 256 threads,
// grid (ceil(GEMM N / 64), ceil(GEMM M / 64), split_k or 1).

struct ConvParams {
    const float* x;     // conv input [N, Cin, H, W]
    const float* weight;  // w [Cout, Cin, KH, KW]
    const float* bias;  // conv2d_fwd: [Cout]; conv_transpose2d_fwd: [Cin]; or null
    const float* dy;    // gradient w.r.t. the conv output [N, Cout, OH, OW]
    float* out;         // y (fwd), dx (bwd_data / transpose fwd), dw (bwd_weight)
    float* workspace;   // bwd_weight with split_k > 1: [split_k, Cout, Cin·KH·KW]
    int batch, cin, h, w;
    int cout, kh, kw;
    int oh, ow;
    int stride_h, stride_w;
    int pad_h, pad_w;
    int dil_h, dil_w;
    int split_k;        // bwd_weight: number of K chunks (gridDim.z)
    int accumulate;     // 1: out += result, 0: out = result
};

// ---- forward -------------------------------------------------------------

struct ConvFwdLoader {
    static constexpr bool A_K_FAST = true;   // w rows are contiguous in k
    static constexpr bool B_N_FAST = true;   // x rows are contiguous in ox
    ConvParams p;  // a copy: its fields live in registers
    SI_DEV float a(int co, int k) const {
        return p.weight[(i64)co * (p.cin * p.kh * p.kw) + k];
    }
    SI_DEV float b(int k, int n) const {
        const int khw = p.kh * p.kw;
        const int ci = k / khw, r = k - ci * khw;
        const int ky = r / p.kw, kx = r - ky * p.kw;
        const int ohw = p.oh * p.ow;
        const int img = n / ohw, pix = n - img * ohw;
        const int oy = pix / p.ow, ox = pix - oy * p.ow;
        const int iy = oy * p.stride_h - p.pad_h + ky * p.dil_h;
        const int ix = ox * p.stride_w - p.pad_w + kx * p.dil_w;
        if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return 0.0f;
        return p.x[(((i64)img * p.cin + ci) * p.h + iy) * p.w + ix];
    }
};

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv2d_fwd(ConvParams p) {
    const int M = p.cout, N = p.batch * p.oh * p.ow, K = p.cin * p.kh * p.kw;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvFwdLoader{p}, M, N, 0, K, m0, n0, acc);
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int ohw = p.oh * p.ow;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int n = n0 + tx + 16 * j;
        if (n >= N) continue;
        const int img = n / ohw, pix = n - img * ohw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int co = m0 + ty + 16 * i;
            if (co >= M) continue;
            float v = acc[i][j] + (p.bias ? p.bias[co] : 0.0f);
            float* o = p.out + ((i64)img * p.cout + co) * ohw + pix;
            *o = p.accumulate ? *o + v : v;
        }
    }
}

// ---- input gradient / transposed convolution ------------------------------

struct ConvBwdDataLoader {
    static constexpr bool A_K_FAST = true;   // (ky, kx) contiguous inside one co
    static constexpr bool B_N_FAST = true;   // dx pixels contiguous in ix
    ConvParams p;  // a copy: its fields live in registers
    SI_DEV float a(int ci, int k) const {
        const int khw = p.kh * p.kw;
        const int co = k / khw, r = k - co * khw;
        return p.weight[((i64)co * p.cin + ci) * khw + r];
    }
    SI_DEV float b(int k, int n) const {
        const int khw = p.kh * p.kw;
        const int co = k / khw, r = k - co * khw;
        const int ky = r / p.kw, kx = r - ky * p.kw;
        const int hw = p.h * p.w;
        const int img = n / hw, pix = n - img * hw;
        const int iy = pix / p.w, ix = pix - iy * p.w;
        // Which output row used input row iy through kernel row ky?
        const int ty = iy + p.pad_h - ky * p.dil_h;
        const int tx = ix + p.pad_w - kx * p.dil_w;
        if (ty < 0 || tx < 0) return 0.0f;
        const int oy = ty / p.stride_h, ox = tx / p.stride_w;
        if (oy * p.stride_h != ty || ox * p.stride_w != tx) return 0.0f;
        if (oy >= p.oh || ox >= p.ow) return 0.0f;
        return p.dy[(((i64)img * p.cout + co) * p.oh + oy) * p.ow + ox];
    }
};

SI_DEV void conv_bwd_data_run(const ConvParams& p) {
    const int M = p.cin, N = p.batch * p.h * p.w, K = p.cout * p.kh * p.kw;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvBwdDataLoader{p}, M, N, 0, K, m0, n0, acc);
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int hw = p.h * p.w;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int n = n0 + tx + 16 * j;
        if (n >= N) continue;
        const int img = n / hw, pix = n - img * hw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int ci = m0 + ty + 16 * i;
            if (ci >= M) continue;
            float v = acc[i][j] + (p.bias ? p.bias[ci] : 0.0f);
            float* o = p.out + ((i64)img * p.cin + ci) * hw + pix;
            *o = p.accumulate ? *o + v : v;
        }
    }
}

// dx = the transposed convolution of dy with w (bias must be null here).
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv2d_bwd_data(ConvParams p) {
    conv_bwd_data_run(p);
}

// The same computation used as a layer: see the mapping in the header.
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv_transpose2d_fwd(ConvParams p) {
    conv_bwd_data_run(p);
}

// ---- weight gradient --------------------------------------------------------

struct ConvBwdWeightLoader {
    static constexpr bool A_K_FAST = true;   // dy rows contiguous in ox
    static constexpr bool B_N_FAST = false;  // x rows contiguous in ox, which is k here
    ConvParams p;  // a copy: its fields live in registers
    SI_DEV float a(int co, int k) const {
        const int ohw = p.oh * p.ow;
        const int img = k / ohw, pix = k - img * ohw;
        return p.dy[((i64)img * p.cout + co) * ohw + pix];
    }
    SI_DEV float b(int k, int n) const {
        const int ohw = p.oh * p.ow;
        const int img = k / ohw, pix = k - img * ohw;
        const int oy = pix / p.ow, ox = pix - oy * p.ow;
        const int khw = p.kh * p.kw;
        const int ci = n / khw, r = n - ci * khw;
        const int ky = r / p.kw, kx = r - ky * p.kw;
        const int iy = oy * p.stride_h - p.pad_h + ky * p.dil_h;
        const int ix = ox * p.stride_w - p.pad_w + kx * p.dil_w;
        if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return 0.0f;
        return p.x[(((i64)img * p.cin + ci) * p.h + iy) * p.w + ix];
    }
};

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv2d_bwd_weight(ConvParams p) {
    const int M = p.cout, N = p.cin * p.kh * p.kw, K = p.batch * p.oh * p.ow;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    const int splits = p.split_k > 1 ? p.split_k : 1;
    int k_begin, k_end;
    si_split_k(K, splits, blockIdx.z, &k_begin, &k_end);
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvBwdWeightLoader{p}, M, N, k_begin, k_end, m0, n0, acc);
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int co = m0 + ty + 16 * i;
        if (co >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            const i64 idx = (i64)co * N + n;
            if (splits > 1) {
                // Every chunk writes its whole tile (zeros for an empty
                // chunk), so the reduce never reads stale memory.
                p.workspace[(i64)blockIdx.z * M * N + idx] = acc[i][j];
            } else {
                p.out[idx] = p.accumulate ? p.out[idx] + acc[i][j] : acc[i][j];
            }
        }
    }
}

// dw = Σ_z workspace[z] (in order z = 0, 1, ...). Grid-stride over
// Cout·Cin·KH·KW elements, block SI_BLOCK.
extern "C" __global__ void conv2d_bwd_weight_reduce(ConvParams p) {
    const i64 total = (i64)p.cout * p.cin * p.kh * p.kw;
    SI_GRID_LOOP(i, total) {
        float s = 0.0f;
        for (int z = 0; z < p.split_k; ++z) s += p.workspace[(i64)z * total + i];
        p.out[i] = p.accumulate ? p.out[i] + s : s;
    }
}
