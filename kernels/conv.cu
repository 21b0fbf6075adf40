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
//
// Large problems: every GEMM kernel has a twin named *_t128 (at the end of
// this file) that computes the same thing on 128×128 output tiles, grid
// (ceil(GEMM N / 128), ceil(GEMM M / 128), split_k or 1). The host picks
// one of the two by problem size (src/ops/conv/cuda.rs).

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

// ---- output stores, shared by the 64 (R = 4) and 128 (R = 8) kernels ------
//
// A layout says which tile row and column acc[i][j] of this thread holds.
// FFMA kernels (SiFfmaLayout): thread (tx, ty) holds rows ty + 16i and
// columns tx + 16j, i, j < R; for fixed (i, j) neighbouring threads write
// neighbouring columns, so the stores coalesce. Tensor-core kernels
// (SiMmaLayout): the mma fragment layout of si_tile128_mma, where a lane
// holds pairs of neighbouring columns.

struct SiFfmaLayout {
    int tx, ty;
    static SI_DEV SiFfmaLayout here() { return SiFfmaLayout{(int)threadIdx.x & 15, (int)threadIdx.x >> 4}; }
    SI_DEV int row(int i) const { return ty + 16 * i; }
    SI_DEV int col(int j) const { return tx + 16 * j; }
};

// The FFMA core on the 64×256 tile (si_tile_wide_mac): thread (tx, ty) =
// (tid & 31, tid >> 5) holds rows ty + 8i and columns tx + 32j.
struct SiFfmaWideLayout {
    int tx, ty;
    static SI_DEV SiFfmaWideLayout here() {
        return SiFfmaWideLayout{(int)threadIdx.x & 31, (int)threadIdx.x >> 5};
    }
    SI_DEV int row(int i) const { return ty + 8 * i; }
    SI_DEV int col(int j) const { return tx + 32 * j; }
};

// (WIDE: the 64×256 tile, where warp w is mma warp (0, w).)
template <bool WIDE = false>
struct SiMmaLayoutT {
    int r0, c0;  // 64·wm + g and 32·wn + 2t
    static SI_DEV SiMmaLayoutT here() {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int wm = WIDE ? 0 : warp >> 2, wn = WIDE ? warp : warp & 3;
        return SiMmaLayoutT{64 * wm + (lane >> 2), 32 * wn + 2 * (lane & 3)};
    }
    SI_DEV int row(int i) const { return r0 + 16 * (i >> 1) + 8 * (i & 1); }
    SI_DEV int col(int j) const { return c0 + 8 * (j >> 1) + (j & 1); }
};
using SiMmaLayout = SiMmaLayoutT<false>;

// The accumulator layout of the 128×128 / 64×256 core for MATH.
template <SiMath MATH, bool WIDE> struct SiLayout128Of { using T = SiMmaLayoutT<WIDE>; };
template <> struct SiLayout128Of<SiMath::Ffma, false> { using T = SiFfmaLayout; };
template <> struct SiLayout128Of<SiMath::Ffma, true> { using T = SiFfmaWideLayout; };
template <SiMath MATH, bool WIDE>
using SiLayout128 = typename SiLayout128Of<MATH, WIDE>::T;

// A GEMM whose rows are channels (M of them) and whose columns are (image,
// pixel) pairs (`plane` pixels per image) into NCHW p.out, adding
// p.bias[row] when given (forward, input gradient, transposed conv).
template <int R, class Lay = SiFfmaLayout>
SI_DEV void conv_store_nchw(const ConvParams& p, const float (&acc)[R][R], int M, int N, int plane,
                            int m0, int n0) {
    const Lay lay = Lay::here();
#pragma unroll
    for (int j = 0; j < R; ++j) {
        const int n = n0 + lay.col(j);
        if (n >= N) continue;
        const int img = n / plane, pix = n - img * plane;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int c = m0 + lay.row(i);
            if (c >= M) continue;
            float v = acc[i][j] + (p.bias ? p.bias[c] : 0.0f);
            float* o = p.out + ((i64)img * M + c) * plane + pix;
            *o = p.accumulate ? *o + v : v;
        }
    }
}

// The weight gradient's M×N tile: into p.out, or with split-K into slice
// blockIdx.z of p.workspace. Every chunk writes its whole tile (zeros for
// an empty chunk), so the reduce never reads stale memory.
template <int R, class Lay = SiFfmaLayout>
SI_DEV void conv_store_dw(const ConvParams& p, const float (&acc)[R][R], int M, int N, int splits,
                          int m0, int n0) {
    const Lay lay = Lay::here();
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int co = m0 + lay.row(i);
        if (co >= M) continue;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int n = n0 + lay.col(j);
            if (n >= N) continue;
            const i64 idx = (i64)co * N + n;
            if (splits > 1) {
                p.workspace[(i64)blockIdx.z * M * N + idx] = acc[i][j];
            } else {
                p.out[idx] = p.accumulate ? p.out[idx] + acc[i][j] : acc[i][j];
            }
        }
    }
}

// ---- the operands, as the GEMM cores read them ----------------------------
//
// One loader per GEMM (common.cuh says what a loader provides); the 64×64
// and the 128×128 cores use the same ones. Everything that depends on the
// output row m or column n alone (an image's base pointer, oy·s − p, ...)
// is worked out once per thread by row()/col(); in the K loop a_at/b_at
// only split k, with SiDivisor (on the 128×128 core, once per block and K
// step: k_info and its table, common.cuh). Offsets inside one image, and
// inside w, are 32-bit ints: the host refuses an image or a weight of 2^31
// elements or more (src/ops/conv/cuda.rs), so 64-bit arithmetic (and its
// sign extensions) is left to the image base pointers (and dy's rows in
// the weight gradient). Notation as in the header: n = (img, oy, ox) etc.

// Forward: A(co, k) = w[co, k]; B(k = (ci,ky,kx), n = (img,oy,ox)) = x[img, ci, iy, ix].
struct ConvFwdHoisted {
    static constexpr bool A_K_FAST = true;  // w rows are contiguous in k
    static constexpr bool B_N_FAST = true;  // x rows are contiguous in ox
    ConvParams p;
    int K, khw, hw, ohw;
    SiDivisor by_khw, by_kw;
    static SI_DEV ConvFwdHoisted make(const ConvParams& p) {
        const int khw = p.kh * p.kw;
        return ConvFwdHoisted{p, p.cin * khw, khw, p.h * p.w, p.oh * p.ow,
                              SiDivisor::make(khw), SiDivisor::make(p.kw)};
    }
    // Row co of w, as an offset: w is under 2^31 elements (checked by the
    // host), and one int per row keeps the 4 rows a thread reads in 4
    // registers, where pointers took 8 and ptxas rebuilt them every K step.
    struct Row { int w; };
    // Where output pixel (oy, ox) of image img puts tap (0, 0): its row and
    // column in the image, and its address (outside x when the tap lies in
    // the padding; B only reads taps inside).
    struct Col { const float* x; int iy0, ix0; };
    SI_DEV Row row(int co) const { return Row{co * K}; }
    SI_DEV float a_at(int k, const Row& r, bool ok) const { return si_load_if(p.weight + (r.w + k), ok); }
    SI_DEV Col col(int n) const {
        const int img = n / ohw, pix = n - img * ohw;
        const int oy = pix / p.ow, ox = pix - oy * p.ow;
        const int iy0 = oy * p.stride_h - p.pad_h, ix0 = ox * p.stride_w - p.pad_w;
        return Col{si_opaque(p.x + (i64)img * p.cin * hw + (iy0 * p.w + ix0)), iy0, ix0};
    }
    // What B(k, ·) needs from k alone (SiKInfo): the offset of tap
    // (ci, ky, kx) from the tap (0, 0) of the same pixel, and its ky·dh, kx·dw.
    static constexpr bool K_TABLE = true;
    SI_DEV SiKInfo k_info(int k) const {
        const int ci = by_khw.div(k), r = k - ci * khw;
        const int ky = by_kw.div(r), kx = r - ky * p.kw;
        const int dy = ky * p.dil_h, dx = kx * p.dil_w;
        // In unsigned: the 64×64 core also splits a k past K (a row of its
        // last step that it then does not read), whose ci·hw may pass an int.
        return SiKInfo{0, (int)((unsigned)ci * hw + (unsigned)(dy * p.w + dx)), dy, dx};
    }
    // A tap SI_TAP_FAR rows and columns above the image: iy and ix < 0.
    SI_DEV SiKInfo k_none() const { return SiKInfo{0, 0, -SI_TAP_FAR, -SI_TAP_FAR}; }
    SI_DEV float a_at(int k, const SiKInfo&, const Row& r, bool ok) const { return a_at(k, r, ok); }
    SI_DEV float b_at(int, const SiKInfo& ki, const Col& c, bool ok) const {
        const int iy = c.iy0 + ki.dy, ix = c.ix0 + ki.dx;
        // One unsigned compare per axis: a negative index wraps to a huge one.
        const bool in = (unsigned)iy < (unsigned)p.h && (unsigned)ix < (unsigned)p.w;
        return si_load_if(c.x + ki.b, ok && in);
    }
    SI_DEV float b_at(int k, const Col& c, bool ok) const { return b_at(k, k_info(k), c, ok); }
};

// Input gradient: A(ci, k = (co,ky,kx)) = w[co, ci, ky, kx];
// B(k, n = (img,iy,ix)) = dy[img, co, oy, ox] with oy·sh = iy + ph − ky·dh.
struct ConvBwdDataHoisted {
    static constexpr bool A_K_FAST = true;  // (ky, kx) contiguous inside one co
    static constexpr bool B_N_FAST = true;  // dx pixels contiguous in ix
    ConvParams p;
    int khw, hw, ohw;
    int cin_khw;     // distance between w[co, ci] and w[co + 1, ci]
    bool strided;    // a stride above 1: only every s-th tap meets an output
    SiDivisor by_khw, by_kw, by_sh, by_sw;
    static SI_DEV ConvBwdDataHoisted make(const ConvParams& p) {
        const int khw = p.kh * p.kw;
        return ConvBwdDataHoisted{p, khw, p.h * p.w, p.oh * p.ow, p.cin * khw,
                                  p.stride_h != 1 || p.stride_w != 1,
                                  SiDivisor::make(khw), SiDivisor::make(p.kw),
                                  SiDivisor::make(p.stride_h), SiDivisor::make(p.stride_w)};
    }
    struct Row { int w; };  // offset of w[0, ci, 0, 0] (w is under 2^31 elements, as above)
    // iy + ph and ix + pw for dx pixel (iy, ix) of image img, and the dy
    // address B's offsets start from: dy[img, 0, iy + ph, ix + pw] at stride
    // 1, where every tap meets output (iy + ph − ky·dh, ix + pw − kx·dw) and
    // k_info's offset already holds −(ky·dh·OW + kx·dw); dy[img, 0, 0, 0]
    // when strided, where the output is found by division. (Either may lie
    // outside dy; B only reads taps inside.)
    struct Col { const float* dy; int ty0, tx0; };
    SI_DEV Row row(int ci) const { return Row{ci * khw}; }
    // What A(·, k) and B(k, ·) need from k = (co, ky, kx) alone (SiKInfo):
    // the offset of w[co, ·, ky, kx] from w[0, ·, 0, 0], B's offset from
    // Col::dy (dy[·, co] from dy[·, 0], at stride 1 less the tap's shift),
    // and ky·dh, kx·dw.
    static constexpr bool K_TABLE = true;
    SI_DEV SiKInfo k_info(int k) const {
        const int co = by_khw.div(k), rr = k - co * khw;
        const int ky = by_kw.div(rr), kx = rr - ky * p.kw;
        const int dy = ky * p.dil_h, dx = kx * p.dil_w;
        // In unsigned, as the forward's: a k past K, never read, may pass an int.
        const unsigned a = (unsigned)co * cin_khw + rr;
        const unsigned b = (unsigned)co * ohw - (unsigned)(strided ? 0 : dy * p.ow + dx);
        return SiKInfo{(int)a, (int)b, dy, dx};
    }
    // A tap shift of SI_TAP_FAR: oy and ox < 0, outside at any stride.
    SI_DEV SiKInfo k_none() const { return SiKInfo{0, 0, SI_TAP_FAR, SI_TAP_FAR}; }
    SI_DEV float a_at(int, const SiKInfo& ki, const Row& r, bool ok) const {
        return si_load_if(p.weight + (r.w + ki.a), ok);
    }
    SI_DEV float a_at(int k, const Row& r, bool ok) const { return a_at(k, k_info(k), r, ok); }
    SI_DEV Col col(int n) const {
        const int img = n / hw, pix = n - img * hw;
        const int iy = pix / p.w, ix = pix - iy * p.w;
        const int ty0 = iy + p.pad_h, tx0 = ix + p.pad_w;
        const float* img_dy = p.dy + (i64)img * p.cout * ohw;
        return Col{si_opaque(strided ? img_dy : img_dy + (ty0 * p.ow + tx0)), ty0, tx0};
    }
    SI_DEV float b_at(int, const SiKInfo& ki, const Col& c, bool ok) const {
        // Which output row used input row iy through kernel row ky?
        int oy = c.ty0 - ki.dy, ox = c.tx0 - ki.dx;
        if (strided) {  // stride 1 (the common case) needs no division at all
            // Only a tap a whole number of strides from the output counts;
            // a negative one is outside (and is divided as 0 instead).
            ok = ok && oy >= 0 && ox >= 0;
            oy = max(oy, 0);
            ox = max(ox, 0);
            const int qy = by_sh.div(oy), qx = by_sw.div(ox);
            ok = ok && qy * p.stride_h == oy && qx * p.stride_w == ox;
            oy = qy;
            ox = qx;
        }
        const bool in = (unsigned)oy < (unsigned)p.oh && (unsigned)ox < (unsigned)p.ow;
        // (ki.b of a k past K, never read, may be anything: added in unsigned.)
        const int off = strided ? (int)((unsigned)ki.b + (unsigned)(oy * p.ow + ox)) : ki.b;
        return si_load_if(c.dy + off, ok && in);
    }
    SI_DEV float b_at(int k, const Col& c, bool ok) const { return b_at(k, k_info(k), c, ok); }
};

// Weight gradient: A(co, k = (img,oy,ox)) = dy[img, co, oy, ox];
// B(k, n = (ci,ky,kx)) = x[img, ci, iy, ix].
struct ConvBwdWeightHoisted {
    static constexpr bool A_K_FAST = true;   // dy rows contiguous in ox
    static constexpr bool B_N_FAST = false;  // x rows contiguous in ox, which is k here
    // A and B elements of a thread share their k, so the split below is
    // already done once per K step; no table.
    static constexpr bool K_TABLE = false;
    ConvParams p;
    int hw, ohw;
    i64 cout_ohw, cin_hw;  // one image of dy, of x
    SiDivisor by_ohw, by_ow;
    static SI_DEV ConvBwdWeightHoisted make(const ConvParams& p) {
        const int ohw = p.oh * p.ow, hw = p.h * p.w;
        return ConvBwdWeightHoisted{p, hw, ohw, (i64)p.cout * ohw, (i64)p.cin * hw,
                                    SiDivisor::make(ohw), SiDivisor::make(p.ow)};
    }
    struct Row { const float* dy; };  // &dy[0, co, 0, 0]
    // Offset of x[0, ci, 0, 0], and ky·dh − ph, kx·dw − pw for tap (ci, ky, kx).
    struct Col { int x_off, iy_off, ix_off; };
    SI_DEV Row row(int co) const { return Row{p.dy + (i64)co * ohw}; }
    SI_DEV float a_at(int k, const Row& r, bool ok) const {
        const int img = by_ohw.div(k), pix = k - img * ohw;
        return si_load_if(r.dy + (i64)img * cout_ohw + pix, ok);
    }
    SI_DEV Col col(int n) const {
        const int khw = p.kh * p.kw;
        const int ci = n / khw, r = n - ci * khw;
        const int ky = r / p.kw, kx = r - ky * p.kw;
        return Col{ci * hw, ky * p.dil_h - p.pad_h, kx * p.dil_w - p.pad_w};
    }
    SI_DEV float b_at(int k, const Col& c, bool ok) const {
        // The same k split as a_at's: the compiler computes it once per step.
        const int img = by_ohw.div(k), pix = k - img * ohw;
        const int oy = by_ow.div(pix), ox = pix - oy * p.ow;
        const int iy = oy * p.stride_h + c.iy_off, ix = ox * p.stride_w + c.ix_off;
        const bool in = (unsigned)iy < (unsigned)p.h && (unsigned)ix < (unsigned)p.w;
        return si_load_if(p.x + (i64)img * cin_hw + (c.x_off + iy * p.w + ix), ok && in);
    }
};

// ---- the 64×64 kernels ---------------------------------------------------
//
// Launch bounds (256, 4): at most 64 registers, four blocks per SM, as the
// per-element loaders these kernels had before got without a bound. Left
// to itself ptxas gives the hoisted loaders up to 95 registers (two or
// three blocks); held to 64 they fit without spilling (ptxas -v, sm_80 and
// sm_90), and tests/nvrtc_compile.rs fails if that changes.

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 4) conv2d_fwd(ConvParams p) {
    const int M = p.cout, N = p.batch * p.oh * p.ow, K = p.cin * p.kh * p.kw;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvFwdHoisted::make(p), M, N, 0, K, m0, n0, acc);
    conv_store_nchw(p, acc, M, N, p.oh * p.ow, m0, n0);
}

SI_DEV void conv_bwd_data_run(const ConvParams& p) {
    const int M = p.cin, N = p.batch * p.h * p.w, K = p.cout * p.kh * p.kw;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvBwdDataHoisted::make(p), M, N, 0, K, m0, n0, acc);
    conv_store_nchw(p, acc, M, N, p.h * p.w, m0, n0);
}

// dx = the transposed convolution of dy with w (bias must be null here).
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 4) conv2d_bwd_data(ConvParams p) {
    conv_bwd_data_run(p);
}

// The same computation used as a layer: see the mapping in the header.
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 4) conv_transpose2d_fwd(ConvParams p) {
    conv_bwd_data_run(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 4) conv2d_bwd_weight(ConvParams p) {
    const int M = p.cout, N = p.cin * p.kh * p.kw, K = p.batch * p.oh * p.ow;
    const int m0 = blockIdx.y * SI_TM, n0 = blockIdx.x * SI_TN;
    const int splits = p.split_k > 1 ? p.split_k : 1;
    int k_begin, k_end;
    si_split_k(K, splits, blockIdx.z, &k_begin, &k_end);
    float acc[4][4] = {};
    __shared__ SiTiles tiles;
    si_gemm_tile(tiles, ConvBwdWeightHoisted::make(p), M, N, k_begin, k_end, m0, n0, acc);
    conv_store_dw(p, acc, M, N, splits, m0, n0);
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

// ---- large problems: the *_t128 kernels ------------------------------------
//
// The same four GEMMs on the 128×128 core (si_gemm_tile128 in common.cuh,
// which says why that tile shape), with the same ConvParams, the same
// results (bias, accumulate, split-K workspace and its reduce) and the same
// launch except for the tile: grid (ceil(GEMM N / 128), ceil(GEMM M / 128),
// split_k or 1), block 256. The host uses them when the problem is large
// enough that the bigger tiles still give a few blocks per SM, and the
// 64×64 kernels otherwise.
//
// __launch_bounds__(256, 2): at most 128 registers per thread, so two
// blocks fit on an SM (64 Ki registers). The 64 accumulators, 16 operand
// registers, the prefetch and the hoisted row/column data fit in that
// without spilling (ptxas -v, sm_80 and sm_90: 126–128 registers, no
// spills, 8448 bytes of shared memory per block; tests/nvrtc_compile.rs
// fails on any spill it does not know of).
//

// The 128×128 bodies, on FFMA (the *_t128 kernels) or on tensor cores (the
// *_tc and *_tf32 kernels); SiMath in common.cuh.
// (WIDE: the 64×256 tile of the *_tf32w kernels, grid (ceil(N / 256),
// ceil(M / 64)).)
template <SiMath MATH, bool WIDE = false>
SI_DEV void conv_fwd_run128(const ConvParams& p) {
    const int M = p.cout, N = p.batch * p.oh * p.ow, K = p.cin * p.kh * p.kw;
    const int m0 = blockIdx.y * (WIDE ? SI_WM : SI_BM), n0 = blockIdx.x * (WIDE ? SI_WN : SI_BN);
    float acc[8][8] = {};
    __shared__ SiTiles128<MATH, WIDE> tiles;
    si_gemm_tile128<ConvFwdHoisted, MATH, WIDE>(tiles, ConvFwdHoisted::make(p), M, N, 0, K, m0, n0, acc);
    conv_store_nchw<8, SiLayout128<MATH, WIDE>>(p, acc, M, N, p.oh * p.ow, m0, n0);
}

template <SiMath MATH, bool WIDE = false>
SI_DEV void conv_bwd_data_run128(const ConvParams& p) {
    const int M = p.cin, N = p.batch * p.h * p.w, K = p.cout * p.kh * p.kw;
    const int m0 = blockIdx.y * (WIDE ? SI_WM : SI_BM), n0 = blockIdx.x * (WIDE ? SI_WN : SI_BN);
    float acc[8][8] = {};
    __shared__ SiTiles128<MATH, WIDE> tiles;
    si_gemm_tile128<ConvBwdDataHoisted, MATH, WIDE>(tiles, ConvBwdDataHoisted::make(p), M, N, 0, K, m0,
                                                    n0, acc);
    conv_store_nchw<8, SiLayout128<MATH, WIDE>>(p, acc, M, N, p.h * p.w, m0, n0);
}

// With split_k > 1 it writes the same workspace layout as conv2d_bwd_weight,
// reduced by conv2d_bwd_weight_reduce.
template <SiMath MATH>
SI_DEV void conv_bwd_weight_run128(const ConvParams& p) {
    const int M = p.cout, N = p.cin * p.kh * p.kw, K = p.batch * p.oh * p.ow;
    const int m0 = blockIdx.y * SI_BM, n0 = blockIdx.x * SI_BN;
    const int splits = p.split_k > 1 ? p.split_k : 1;
    int k_begin, k_end;
    si_split_k(K, splits, blockIdx.z, &k_begin, &k_end);
    float acc[8][8] = {};
    __shared__ SiTiles128<MATH> tiles;
    si_gemm_tile128<ConvBwdWeightHoisted, MATH>(tiles, ConvBwdWeightHoisted::make(p), M, N, k_begin,
                                              k_end, m0, n0, acc);
    conv_store_dw<8, SiLayout128<MATH, false>>(p, acc, M, N, splits, m0, n0);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_t128(ConvParams p) {
    conv_fwd_run128<SiMath::Ffma>(p);
}

// conv2d_bwd_data on 128×128 tiles (bias must be null here).
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_t128(ConvParams p) {
    conv_bwd_data_run128<SiMath::Ffma>(p);
}

// conv_transpose2d_fwd on 128×128 tiles.
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_t128(ConvParams p) {
    conv_bwd_data_run128<SiMath::Ffma>(p);
}

// conv2d_bwd_weight on 128×128 tiles (split-K as conv2d_bwd_weight).
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_weight_t128(ConvParams p) {
    conv_bwd_weight_run128<SiMath::Ffma>(p);
}

// ---- the *_tc kernels: the *_t128 ones on tensor cores ---------------------
//
// Same ConvParams, grid, block, results and split-K workspace as the *_t128
// kernels; the K step runs on TF32 mma.sync with FP32 accuracy (3xTF32, see
// si_tile128_mma in common.cuh). Need sm_80 or later. Opt-in
// (SPLITINV_CONV_TILE=tc) until a GPU run has measured them against the
// FFMA kernels; the emulation in tests/cuda_emu checks their results.

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_tc(ConvParams p) {
    conv_fwd_run128<SiMath::Tf32x3>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_tc(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32x3>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_tc(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32x3>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_weight_tc(ConvParams p) {
    conv_bwd_weight_run128<SiMath::Tf32x3>(p);
}

// ---- the *_tf32 kernels: one TF32 product ------------------------------------
//
// The *_tc kernels with one mma per step on operands rounded to TF32
// (SiMath::Tf32): each product carries TF32's 11 significant bits, the sums
// are FP32. This is the precision PyTorch's convolutions run at by default
// (cuDNN with allow_tf32), a third of the tensor work of 3xTF32. Opt-in
// (--conv-math tf32); the emulation checks them against references computed
// from the TF32-rounded operands.

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_tf32(ConvParams p) {
    conv_fwd_run128<SiMath::Tf32>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_tf32(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_tf32(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_weight_tf32(ConvParams p) {
    conv_bwd_weight_run128<SiMath::Tf32>(p);
}

// ---- the *_m8 kernels: GEMMs with at most 8 rows ---------------------------
//
// conv2d_fwd with Cout ≤ 8, conv2d_bwd_data / conv_transpose2d_fwd with
// Cin ≤ 8, on si_gemm_m8 (common.cuh says why): one column per thread, all
// rows. Same ConvParams, results and bias / accumulate as the tiled
// kernels; grid (ceil(GEMM N / 256)), block 256. The host picks them for
// such GEMMs when N is long (src/cuda/launch.rs, conv_tile_for).

// Column n's M results into NCHW p.out (+ bias[row], or added to out).
SI_DEV void conv_store_m8(const ConvParams& p, const float (&acc)[SI_M8], int M, int N, int plane,
                          int n) {
    if (n >= N) return;
    const int img = n / plane, pix = n - img * plane;
    float* const o = p.out + (i64)img * M * plane + pix;
#pragma unroll
    for (int m = 0; m < SI_M8; ++m) {
        if (m >= M) break;
        const float v = acc[m] + (p.bias ? p.bias[m] : 0.0f);
        float* const om = o + (i64)m * plane;
        *om = p.accumulate ? *om + v : v;
    }
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv2d_fwd_m8(ConvParams p) {
    const int M = p.cout, N = p.batch * p.oh * p.ow, K = p.cin * p.kh * p.kw;
    const int n = blockIdx.x * SI_TILE_THREADS + threadIdx.x;
    float acc[SI_M8] = {};
    si_gemm_m8(ConvFwdHoisted::make(p), M, N, K, n, acc);
    conv_store_m8(p, acc, M, N, p.oh * p.ow, n);
}

SI_DEV void conv_bwd_data_run_m8(const ConvParams& p) {
    const int M = p.cin, N = p.batch * p.h * p.w, K = p.cout * p.kh * p.kw;
    const int n = blockIdx.x * SI_TILE_THREADS + threadIdx.x;
    float acc[SI_M8] = {};
    si_gemm_m8(ConvBwdDataHoisted::make(p), M, N, K, n, acc);
    conv_store_m8(p, acc, M, N, p.h * p.w, n);
}

// conv2d_bwd_data for Cin ≤ 8 (bias must be null here).
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv2d_bwd_data_m8(ConvParams p) {
    conv_bwd_data_run_m8(p);
}

// conv_transpose2d_fwd with at most 8 output channels.
extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS) conv_transpose2d_fwd_m8(ConvParams p) {
    conv_bwd_data_run_m8(p);
}

// ---- the wide kernels: *_t128w, *_tcw, *_tf32w on 64×256 tiles ------------
//
// For GEMMs of at most 64 rows (common.cuh, SI_WM: a 128×128 tile would
// do half its work for all its gathers): conv2d_fwd with Cout ≤ 64,
// conv2d_bwd_data / conv_transpose2d_fwd with Cin ≤ 64. Grid
// (ceil(GEMM N / 256), ceil(GEMM M / 64)), block 256; otherwise as the
// *_t128, *_tc and *_tf32 kernels. No weight-gradient twins (their B
// operand is read along k).

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_t128w(ConvParams p) {
    conv_fwd_run128<SiMath::Ffma, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_t128w(ConvParams p) {
    conv_bwd_data_run128<SiMath::Ffma, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_t128w(ConvParams p) {
    conv_bwd_data_run128<SiMath::Ffma, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_tcw(ConvParams p) {
    conv_fwd_run128<SiMath::Tf32x3, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_tcw(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32x3, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_tcw(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32x3, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_fwd_tf32w(ConvParams p) {
    conv_fwd_run128<SiMath::Tf32, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv2d_bwd_data_tf32w(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32, true>(p);
}

extern "C" __global__ void __launch_bounds__(SI_TILE_THREADS, 2) conv_transpose2d_fwd_tf32w(ConvParams p) {
    conv_bwd_data_run128<SiMath::Tf32, true>(p);
}
