// check_kernels.cpp — runs every kernel of kernels/*.cu under emu.h and
// compares with naive double-precision references written from the
// definitions (and, for backward kernels, with adjoint identities or
// central finite differences). Prints one line per check; exits non-zero
// on any mismatch. Built and run by tests/cuda_emulated.rs.
#include "emu.h"

#include <cfloat>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "common.cuh"
#include "elementwise.cu"
#include "reduce.cu"
#include "matmul.cu"
#include "conv.cu"
#include "pool.cu"
#include "loss.cu"
#include "optim.cu"

typedef std::vector<float> V;
typedef std::vector<double> D;

static int failures = 0, checks = 0;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float urand(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    const double u = (double)(rng_state >> 11) / (double)(1ull << 53);
    return (float)(lo + (hi - lo) * u);
}
static V rand_vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
    V v(n);
    for (auto& x : v) x = urand(lo, hi);
    return v;
}

// |got − want| ≤ atol + rtol·|want| everywhere; prints the first mismatches.
static void check(const std::string& name, const V& got, const D& want, double atol = 1e-5,
                  double rtol = 1e-4) {
    ++checks;
    int bad = 0;
    double worst = 0;
    if (got.size() != want.size()) {
        printf("FAIL %s: %zu values, expected %zu\n", name.c_str(), got.size(), want.size());
        ++failures;
        return;
    }
    for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::fabs((double)got[i] - want[i]);
        const bool ok = err <= atol + rtol * std::fabs(want[i]) && std::isfinite(got[i]) == std::isfinite(want[i]);
        worst = std::max(worst, err);
        if (!ok && bad++ < 5) printf("  %s[%zu]: got %.7g, want %.7g\n", name.c_str(), i, got[i], want[i]);
    }
    if (bad) {
        ++failures;
        printf("FAIL %s: %d of %zu differ (max err %.3g)\n", name.c_str(), bad, got.size(), worst);
    } else {
        printf("ok   %s (%zu values, max err %.3g)\n", name.c_str(), got.size(), worst);
    }
}
static void check1(const std::string& name, float got, double want, double atol = 1e-5, double rtol = 1e-4) {
    check(name, V{got}, D{want}, atol, rtol);
}
static double dot(const V& a, const V& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += (double)a[i] * b[i];
    return s;
}

static unsigned ew_blocks(size_t n, unsigned cap = 4) {
    return (unsigned)std::max<size_t>(1, std::min<size_t>((n + 255) / 256, cap));
}

// Runs a *_fwd kernel that writes per-block partials, then reduce_sum over them.
template <class P>
static float two_stage(void (*k)(P), P p, float* P::*out_field, size_t n) {
    const unsigned blocks = ew_blocks(n, 3);
    V partial(blocks, NAN), result(1, NAN);
    p.*out_field = partial.data();
    emu::launch(k, dim3{blocks}, 256, p);
    ReduceParams r{partial.data(), result.data(), (i64)blocks, 1.0f, 0};
    emu::launch(reduce_sum, dim3{1}, 256, r);
    return result[0];
}

// ---------------------------------------------------------------- elementwise
static void test_elementwise() {
    const size_t n = 1000;
    V a = rand_vec(n), b = rand_vec(n, 0.5f, 2.0f), g = rand_vec(n);
    for (int op = 0; op < 4; ++op) {
        V out(n), ga(n), gb(n);
        emu::launch(ew_binary_fwd, dim3{3}, 256, BinaryParams{a.data(), b.data(), out.data(), (i64)n, op});
        emu::launch(ew_binary_bwd, dim3{2}, 256,
                    BinaryBwdParams{a.data(), b.data(), g.data(), ga.data(), gb.data(), (i64)n, op});
        D y(n), wa(n), wb(n);
        for (size_t i = 0; i < n; ++i) {
            const double x = a[i], z = b[i], gg = g[i];
            switch (op) {
                case 0: y[i] = x + z; wa[i] = gg; wb[i] = gg; break;
                case 1: y[i] = x - z; wa[i] = gg; wb[i] = -gg; break;
                case 2: y[i] = x * z; wa[i] = gg * z; wb[i] = gg * x; break;
                default: y[i] = x / z; wa[i] = gg / z; wb[i] = -gg * x / (z * z);
            }
        }
        const std::string s = "binary op " + std::to_string(op);
        check(s + " fwd", out, y);
        check(s + " bwd a", ga, wa);
        check(s + " bwd b", gb, wb);
    }
    // Unary: positive inputs for sqrt/ln, mixed otherwise.
    for (int op = 0; op <= 10; ++op) {
        const bool positive = op == UN_SQRT || op == UN_LN;
        V x = positive ? rand_vec(n, 0.2f, 3.0f) : rand_vec(n, -2.0f, 2.0f);
        const float p0 = op == UN_CLAMP ? -0.5f : (op == UN_ABS_POW ? 1.7f : 0.75f);
        const float p1 = 0.8f;
        V y(n), gx(n);
        emu::launch(ew_unary_fwd, dim3{2}, 256, UnaryParams{x.data(), y.data(), (i64)n, op, p0, p1});
        emu::launch(ew_unary_bwd, dim3{2}, 256,
                    UnaryBwdParams{x.data(), y.data(), g.data(), gx.data(), (i64)n, op, p0, p1});
        D wy(n), wg(n);
        for (size_t i = 0; i < n; ++i) {
            const double v = x[i];
            double f, d;
            switch (op) {
                case UN_SCALE: f = v * p0; d = p0; break;
                case UN_ADD_SCALAR: f = v + p0; d = 1; break;
                case UN_SQUARE: f = v * v; d = 2 * v; break;
                case UN_SQRT: f = std::sqrt(v); d = 0.5 / std::sqrt(v); break;
                case UN_RELU: f = v > 0 ? v : 0; d = v > 0 ? 1 : 0; break;
                case UN_SIGMOID: f = 1 / (1 + std::exp(-v)); d = f * (1 - f); break;
                case UN_TANH: f = std::tanh(v); d = 1 - f * f; break;
                case UN_EXP: f = std::exp(v); d = f; break;
                case UN_LN: f = std::log(v); d = 1 / v; break;
                case UN_CLAMP: f = std::min<double>(std::max<double>(v, p0), p1); d = (v >= p0 && v <= p1) ? 1 : 0; break;
                default: f = std::pow(std::fabs(v), (double)p0); d = p0 * std::pow(std::fabs(v), p0 - 1.0) * (v > 0 ? 1 : -1);
            }
            wy[i] = f;
            wg[i] = d * g[i];
        }
        check("unary op " + std::to_string(op) + " fwd", y, wy);
        check("unary op " + std::to_string(op) + " bwd", gx, wg, 1e-5, 2e-4);
    }
    // bias add over channels: [N=2, C=3, inner=5]
    {
        V x = rand_vec(30), bias = rand_vec(3), out(30);
        emu::launch(bias_add_fwd, dim3{1}, 256, BiasAddParams{x.data(), bias.data(), out.data(), 30, 3, 5});
        D want(30);
        for (int i = 0; i < 30; ++i) want[i] = (double)x[i] + bias[(i / 5) % 3];
        check("bias_add_fwd", out, want);
    }
    // Per-channel clamp in place, [N=3, C=5, inner=37] = 555 values: one
    // block of 256, so each thread strides over the grid more than once.
    // Channel 3 is a single point (lo = hi), channel 4 unbounded above.
    {
        const int N = 3, C = 5, I = 37, total = N * C * I;
        const V lo = {-1.0f, -0.25f, 0.3f, 0.1f, 0.0f}, hi = {0.5f, 0.25f, 1.7f, 0.1f, INFINITY};
        V x = rand_vec(total, -2.0f, 2.0f);
        x[7] = NAN;
        const V x0 = x;
        emu::launch(clamp_channels, dim3{1}, 256, ClampChannelsParams{x.data(), lo.data(), hi.data(), total, C, I});
        D want(total);
        for (int i = 0; i < total; ++i) {
            const int c = (i / I) % C;
            want[i] = std::min<double>(std::max<double>(x0[i], lo[c]), hi[c]);
        }
        ++checks;
        if (std::isnan(x[7])) {
            printf("ok   clamp_channels keeps a NaN\n");
        } else {
            ++failures;
            printf("FAIL clamp_channels turned a NaN into %g\n", x[7]);
        }
        x[7] = 0.0f;
        want[7] = 0.0;
        check("clamp_channels", x, want, 0.0, 0.0);
    }
    {
        V y = rand_vec(300), x = rand_vec(300), y0 = y;
        emu::launch(ew_axpy, dim3{1}, 256, AxpyParams{x.data(), y.data(), 300, -0.5f});
        D want(300);
        for (int i = 0; i < 300; ++i) want[i] = y0[i] - 0.5 * x[i];
        check("ew_axpy", y, want);
        emu::launch(ew_fill, dim3{1}, 256, FillParams{y.data(), nullptr, 300, 2.5f});
        check("ew_fill", y, D(300, 2.5));
        V g{-1.5f};
        emu::launch(ew_fill, dim3{2}, 256, FillParams{y.data(), g.data(), 300, 0.5f});
        check("ew_fill scaled by a device scalar", y, D(300, -0.75));
    }
    // relu passes NaN on (as PyTorch's, and the CPU's); fmaxf gave 0.
    {
        V x{NAN, -1.0f, 2.0f}, y(3);
        emu::launch(ew_unary_fwd, dim3{1}, 256, UnaryParams{x.data(), y.data(), 3, UN_RELU, 0.0f, 0.0f});
        ++checks;
        if (std::isnan(y[0]) && y[1] == 0.0f && y[2] == 2.0f) {
            printf("ok   relu keeps a NaN\n");
        } else {
            ++failures;
            printf("FAIL relu of (NaN, -1, 2) gave (%g, %g, %g)\n", y[0], y[1], y[2]);
        }
    }
}

// ---------------------------------------------------------------- reduce
static void test_reduce() {
    const size_t n = 5003;
    V x = rand_vec(n);
    double s = 0;
    for (float v : x) s += v;
    ReduceParams p{x.data(), nullptr, (i64)n, 1.0f, 0};
    check1("reduce_sum (two stages)", two_stage(reduce_sum, p, &decltype(p)::out, n), s, 1e-4, 1e-5);
    // mean: scale on the final stage
    V partial(3), result(1);
    emu::launch(reduce_sum, dim3{3}, 256, ReduceParams{x.data(), partial.data(), (i64)n, 1.0f, 0});
    emu::launch(reduce_sum, dim3{1}, 256, ReduceParams{partial.data(), result.data(), 3, 1.0f / n, 0});
    check1("reduce mean", result[0], s / n, 1e-6, 1e-5);
    // only_non_finite: finite values so large that their plain f32 sum
    // overflows add up to 0; one +inf gives +inf, a NaN or ±inf mixed NaN.
    {
        V big(n, 3.0e38f);
        ReduceParams q{big.data(), nullptr, (i64)n, 1.0f, 1};
        check1("reduce_sum only_non_finite: finite overflow is 0", two_stage(reduce_sum, q, &decltype(q)::out, n), 0.0, 0.0, 0.0);
        ReduceParams plain{big.data(), nullptr, (i64)n, 1.0f, 0};
        check1("reduce_sum plain: the same values overflow", std::isinf(two_stage(reduce_sum, plain, &decltype(plain)::out, n)) ? 1.0f : 0.0f, 1.0, 0.0, 0.0);
        big[4000] = INFINITY;
        check1("reduce_sum only_non_finite: one +inf", two_stage(reduce_sum, q, &decltype(q)::out, n) == INFINITY ? 1.0f : 0.0f, 1.0, 0.0, 0.0);
        big[17] = -INFINITY;
        check1("reduce_sum only_non_finite: +inf and -inf is NaN", std::isnan(two_stage(reduce_sum, q, &decltype(q)::out, n)) ? 1.0f : 0.0f, 1.0, 0.0, 0.0);
        big[17] = NAN;
        big[4000] = 1.0f;
        check1("reduce_sum only_non_finite: a NaN", std::isnan(two_stage(reduce_sum, q, &decltype(q)::out, n)) ? 1.0f : 0.0f, 1.0, 0.0, 0.0);
    }
    // channel sums of [N=3, C=4, inner=37]
    const int N = 3, C = 4, I = 37;
    V y = rand_vec((size_t)N * C * I), out(C, 1.0f);
    emu::launch(channel_sum, dim3{(unsigned)C}, 256, ChannelSumParams{y.data(), out.data(), N, C, I, 0.5f, 1});
    D want(C, 1.0);
    for (int n2 = 0; n2 < N; ++n2)
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < I; ++i) want[c] += 0.5 * y[((size_t)n2 * C + c) * I + i];
    check("channel_sum (accumulate, scale)", out, want);
}

// ---------------------------------------------------------------- sgemm
static void test_sgemm() {
    const int M = 70, N = 45, K = 33;
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 5;
            V a = rand_vec((size_t)(ta ? K : M) * lda), b = rand_vec((size_t)(tb ? N : K) * ldb);
            V c = rand_vec((size_t)M * ldc), c0 = c;
            MatmulParams p{a.data(), b.data(), c.data(), M, N, K, lda, ldb, ldc, ta, tb, 1.5f, 0.5f};
            emu::launch(sgemm, dim3{(N + 63) / 64, (M + 63) / 64}, 256, p);
            D want(c0.begin(), c0.end());
            for (int i = 0; i < M; ++i)
                for (int j = 0; j < N; ++j) {
                    double s = 0;
                    for (int k = 0; k < K; ++k) {
                        const double av = ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k];
                        const double bv = tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
                        s += av * bv;
                    }
                    want[(size_t)i * ldc + j] = 1.5 * s + 0.5 * c0[(size_t)i * ldc + j];
                }
            check("sgemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), c, want);
        }
    // beta = 0 must ignore NaN garbage in C
    V a = rand_vec(4 * 3), b = rand_vec(3 * 2), c(4 * 2, NAN);
    emu::launch(sgemm, dim3{1, 1}, 256, MatmulParams{a.data(), b.data(), c.data(), 4, 2, 3, 3, 2, 2, 0, 0, 1.0f, 0.0f});
    D want(8);
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 2; ++j)
            for (int k = 0; k < 3; ++k) want[i * 2 + j] += (double)a[i * 3 + k] * b[k * 2 + j];
    check("sgemm beta=0 ignores NaN in C", c, want);
}

// ---------------------------------------------------------------- conv
struct ConvShape {
    int n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw;
    int oh() const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
    int ow() const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

static D conv_ref(const ConvShape& s, const V& x, const V& w, const V* bias) {
    const int OH = s.oh(), OW = s.ow();
    D y((size_t)s.n * s.cout * OH * OW);
    for (int n = 0; n < s.n; ++n)
        for (int co = 0; co < s.cout; ++co)
            for (int oy = 0; oy < OH; ++oy)
                for (int ox = 0; ox < OW; ++ox) {
                    double acc = bias ? (*bias)[co] : 0.0;
                    for (int ci = 0; ci < s.cin; ++ci)
                        for (int ky = 0; ky < s.kh; ++ky)
                            for (int kx = 0; kx < s.kw; ++kx) {
                                const int iy = oy * s.sh - s.ph + ky * s.dh, ix = ox * s.sw - s.pw + kx * s.dw;
                                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                                acc += (double)w[((co * s.cin + ci) * s.kh + ky) * s.kw + kx] *
                                       x[((n * s.cin + ci) * s.h + iy) * s.w + ix];
                            }
                    y[((n * s.cout + co) * OH + oy) * OW + ox] = acc;
                }
    return y;
}

static ConvParams conv_params(const ConvShape& s) {
    ConvParams p{};
    p.batch = s.n; p.cin = s.cin; p.h = s.h; p.w = s.w; p.cout = s.cout; p.kh = s.kh; p.kw = s.kw;
    p.oh = s.oh(); p.ow = s.ow(); p.stride_h = s.sh; p.stride_w = s.sw; p.pad_h = s.ph; p.pad_w = s.pw;
    p.dil_h = s.dh; p.dil_w = s.dw; p.split_k = 1; p.accumulate = 0;
    return p;
}

// One family of conv kernels: the 64×64-tile ones, or their *_t128 twins
// (128×128 tiles, hoisted index arithmetic). Both must match the same
// references on every shape.
struct ConvKernels {
    void (*fwd)(ConvParams);
    void (*bwd_data)(ConvParams);
    void (*bwd_weight)(ConvParams);
    void (*transpose)(ConvParams);
    int tile;            // output tile edge: the grid is ceil(GEMM N / tile) × ceil(GEMM M / tile)
    std::string suffix;  // appended to the kernel names in the check names
    // One TF32 product (the *_tf32 kernels): the references are computed
    // from the operands rounded to TF32 (si_tf32), and then the kernels must
    // meet them at the FP32 tolerances: the products of TF32 numbers are
    // exact, only the FP32 sums round. So the check pins the rounding (to
    // nearest, once per operand), not just "about three digits".
    bool tf32_operands = false;
    int tile_m = 0;  // GEMM rows per block, when not `tile` (the 64×256 *_tf32w kernels)
    int rows() const { return tile_m ? tile_m : tile; }
};
static const ConvKernels CONV64{conv2d_fwd, conv2d_bwd_data, conv2d_bwd_weight, conv_transpose2d_fwd, 64, ""};
static const ConvKernels CONV128{conv2d_fwd_t128, conv2d_bwd_data_t128, conv2d_bwd_weight_t128,
                                 conv_transpose2d_fwd_t128, 128, "_t128"};
// The *_tc kernels: the *_t128 ones with the K step on tensor cores (3xTF32).
static const ConvKernels CONVTC{conv2d_fwd_tc, conv2d_bwd_data_tc, conv2d_bwd_weight_tc,
                                conv_transpose2d_fwd_tc, 128, "_tc"};
// The *_m8 kernels: GEMMs of at most 8 rows, one column per thread (no
// weight-gradient twin: launched only for the other three).
static const ConvKernels CONVM8{conv2d_fwd_m8, conv2d_bwd_data_m8, nullptr, conv_transpose2d_fwd_m8, 256, "_m8"};
// The *_tf32 kernels: the *_tc ones with one TF32 product.
static const ConvKernels CONVTF32{conv2d_fwd_tf32, conv2d_bwd_data_tf32, conv2d_bwd_weight_tf32,
                                  conv_transpose2d_fwd_tf32, 128, "_tf32", true};
// The *_tf32w kernels: the *_tf32 ones on 64×256 tiles, for at most 64 GEMM
// rows (no weight gradient).
static const ConvKernels CONVTF32W{conv2d_fwd_tf32w, conv2d_bwd_data_tf32w, nullptr,
                                   conv_transpose2d_fwd_tf32w, 256, "_tf32w", true, 64};
// Their FFMA and 3xTF32 twins (*_t128w, *_tcw), at the FP32 tolerances.
static const ConvKernels CONVT128W{conv2d_fwd_t128w, conv2d_bwd_data_t128w, nullptr,
                                   conv_transpose2d_fwd_t128w, 256, "_t128w", false, 64};
static const ConvKernels CONVTCW{conv2d_fwd_tcw, conv2d_bwd_data_tcw, nullptr,
                                 conv_transpose2d_fwd_tcw, 256, "_tcw", false, 64};
// What the references multiply: v itself, or v rounded to TF32 for a
// family with tf32_operands.
static V operands_of(const ConvKernels& ks, const V& v) {
    if (!ks.tf32_operands) return v;
    V r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = si_tf32(v[i]);
    return r;
}
static unsigned tiles_of(int n, int tile) { return (unsigned)((n + tile - 1) / tile); }

static void test_conv(const ConvShape& s, const std::string& tag, const ConvKernels& ks = CONV64) {
    const int OH = s.oh(), OW = s.ow();
    const size_t nx = (size_t)s.n * s.cin * s.h * s.w, nw = (size_t)s.cout * s.cin * s.kh * s.kw;
    const size_t ny = (size_t)s.n * s.cout * OH * OW;
    V x = rand_vec(nx), w = rand_vec(nw), bias = rand_vec(s.cout), dy = rand_vec(ny);
    // The kernels get x, w, dy; the references multiply these.
    const V xr = operands_of(ks, x), wr = operands_of(ks, w), dyr = operands_of(ks, dy);
    ConvParams p = conv_params(s);
    // forward
    V y(ny, NAN);
    p.x = x.data(); p.weight = w.data(); p.bias = bias.data(); p.out = y.data();
    emu::launch(ks.fwd, dim3{tiles_of(s.n * OH * OW, ks.tile), tiles_of(s.cout, ks.rows())}, 256, p);
    D want_y = conv_ref(s, xr, wr, &bias);
    check("conv2d_fwd" + ks.suffix + " " + tag, y, want_y, 1e-4, 1e-4);
    // accumulate = 1 adds to what out holds: a second pass doubles y.
    p.accumulate = 1;
    emu::launch(ks.fwd, dim3{tiles_of(s.n * OH * OW, ks.tile), tiles_of(s.cout, ks.rows())}, 256, p);
    for (auto& v : want_y) v *= 2;
    check("conv2d_fwd" + ks.suffix + " accumulate " + tag, y, want_y, 2e-4, 1e-4);
    p.accumulate = 0;
    // input gradient: the adjoint of x ↦ conv(x) (no bias), checked exactly
    // against the scatter form of the definition.
    V dx(nx, NAN);
    p.bias = nullptr; p.dy = dy.data(); p.out = dx.data();
    emu::launch(ks.bwd_data, dim3{tiles_of(s.n * s.h * s.w, ks.tile), tiles_of(s.cin, ks.rows())}, 256, p);
    D want_dx(nx, 0.0);
    for (int n = 0; n < s.n; ++n)
        for (int co = 0; co < s.cout; ++co)
            for (int oy = 0; oy < OH; ++oy)
                for (int ox = 0; ox < OW; ++ox)
                    for (int ci = 0; ci < s.cin; ++ci)
                        for (int ky = 0; ky < s.kh; ++ky)
                            for (int kx = 0; kx < s.kw; ++kx) {
                                const int iy = oy * s.sh - s.ph + ky * s.dh, ix = ox * s.sw - s.pw + kx * s.dw;
                                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                                want_dx[((n * s.cin + ci) * s.h + iy) * s.w + ix] +=
                                    (double)wr[((co * s.cin + ci) * s.kh + ky) * s.kw + kx] *
                                    dyr[((n * s.cout + co) * OH + oy) * OW + ox];
                            }
    check("conv2d_bwd_data" + ks.suffix + " " + tag, dx, want_dx, 1e-4, 1e-4);
    if (ks.bwd_weight) {  // (the *_m8 family has none)
        // weight gradient, without and with split-K (+ accumulate)
        D want_dw(nw, 0.0);
        for (int n = 0; n < s.n; ++n)
            for (int co = 0; co < s.cout; ++co)
                for (int oy = 0; oy < OH; ++oy)
                    for (int ox = 0; ox < OW; ++ox)
                        for (int ci = 0; ci < s.cin; ++ci)
                            for (int ky = 0; ky < s.kh; ++ky)
                                for (int kx = 0; kx < s.kw; ++kx) {
                                    const int iy = oy * s.sh - s.ph + ky * s.dh, ix = ox * s.sw - s.pw + kx * s.dw;
                                    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                                    want_dw[((co * s.cin + ci) * s.kh + ky) * s.kw + kx] +=
                                        (double)dyr[((n * s.cout + co) * OH + oy) * OW + ox] *
                                        xr[((n * s.cin + ci) * s.h + iy) * s.w + ix];
                                }
        const int GN = s.cin * s.kh * s.kw;
        for (int split : {1, 3}) {
            V dw(nw, split == 1 ? NAN : 0.25f), ws((size_t)split * nw, NAN);
            p.out = dw.data(); p.workspace = ws.data(); p.split_k = split; p.accumulate = split > 1;
            emu::launch(ks.bwd_weight, dim3{tiles_of(GN, ks.tile), tiles_of(s.cout, ks.tile), (unsigned)split}, 256, p);
            if (split > 1) emu::launch(conv2d_bwd_weight_reduce, dim3{2}, 256, p);
            D want = want_dw;
            if (split > 1) for (auto& v : want) v += 0.25;
            check("conv2d_bwd_weight" + ks.suffix + " split_k=" + std::to_string(split) + " " + tag, dw, want, 1e-4, 1e-4);
        }
    }
    // The two backward kernels are adjoints of the forward:
    //   <conv(x; w), dy> = <x, dx> = <w, dw>.
    // (With TF32 operands, of the rounded ones: dx is the adjoint applied to
    // the rounded dy and w.)
    const D y_nb = conv_ref(s, xr, wr, nullptr);
    double lhs = 0;
    for (size_t i = 0; i < ny; ++i) lhs += y_nb[i] * dyr[i];
    check1("adjoint <conv(x),dy> = <x,dx>" + ks.suffix + " " + tag, (float)dot(xr, dx), lhs, 1e-3, 1e-4);
}

// conv_transpose2d_fwd against its own definition (scatter with output padding).
static void test_conv_transpose(const ConvKernels& ks = CONV64) {
    const int N = 2, CI = 3, CO = 4, IH = 5, IW = 4, K = 3, S = 2, P = 1, OP = 1;
    const int OH = (IH - 1) * S - 2 * P + K + OP, OW = (IW - 1) * S - 2 * P + K + OP;
    V xt = rand_vec((size_t)N * CI * IH * IW), wt = rand_vec((size_t)CI * CO * K * K), bias = rand_vec(CO);
    const V xtr = operands_of(ks, xt), wtr = operands_of(ks, wt);
    D want((size_t)N * CO * OH * OW, 0.0);
    for (int n = 0; n < N; ++n)
        for (int co = 0; co < CO; ++co)
            for (int i = 0; i < OH * OW; ++i) want[(n * CO + co) * OH * OW + i] = bias[co];
    for (int n = 0; n < N; ++n)
        for (int ci = 0; ci < CI; ++ci)
            for (int iy = 0; iy < IH; ++iy)
                for (int ix = 0; ix < IW; ++ix)
                    for (int co = 0; co < CO; ++co)
                        for (int ky = 0; ky < K; ++ky)
                            for (int kx = 0; kx < K; ++kx) {
                                const int oy = iy * S - P + ky, ox = ix * S - P + kx;
                                if (oy < 0 || oy >= OH || ox < 0 || ox >= OW) continue;
                                want[((n * CO + co) * OH + oy) * OW + ox] +=
                                    (double)xtr[((n * CI + ci) * IH + iy) * IW + ix] * wtr[((ci * CO + co) * K + ky) * K + kx];
                            }
    V yt(want.size(), NAN);
    ConvParams p{};
    p.dy = xt.data(); p.weight = wt.data(); p.bias = bias.data(); p.out = yt.data();
    p.batch = N; p.cout = CI; p.cin = CO; p.oh = IH; p.ow = IW; p.h = OH; p.w = OW;
    p.kh = K; p.kw = K; p.stride_h = S; p.stride_w = S; p.pad_h = P; p.pad_w = P; p.dil_h = 1; p.dil_w = 1;
    p.split_k = 1;
    emu::launch(ks.transpose, dim3{tiles_of(N * OH * OW, ks.tile), 1}, 256, p);
    check("conv_transpose2d_fwd" + ks.suffix + " (s2 p1 op1)", yt, want, 1e-4, 1e-4);
}

// si_tf32 (common.cuh) keeps the top 10 mantissa bits, rounding to nearest
// (ties to even), and x − si_tf32(x) rounded again restores x to
// within 2^-21 relative — the premise of the 3xTF32 split.
static void test_tf32_rounding() {
    long bad = 0;
    double worst_split = 0;
    for (int i = 0; i < 200000; ++i) {
        const float x = urand(-1.0f, 1.0f) * std::ldexp(1.0f, (int)(urand(-20.0f, 20.0f)));
        const float hi = si_tf32(x), lo = si_tf32(x - hi);
        const unsigned u = __float_as_uint(hi);
        if (u & 0x1fffu) ++bad;                                  // low 13 bits not zero
        if (std::fabs((double)hi - x) > std::ldexp(std::fabs((double)x), -11)) ++bad;  // not within half a TF32 ulp
        if (x != 0) worst_split = std::max(worst_split, std::fabs(((double)hi + lo - x) / x));
    }
    // A tie goes to the even neighbour: 1 + 2^-11 (half a TF32 ulp above 1)
    // → 1, and 1 + 3·2^-11 (half-way between 1 + 2^-10 and 1 + 2^-9) → 1 + 2^-9,
    // on either sign; just past a tie rounds up.
    for (float s : {1.0f, -1.0f}) {
        if (si_tf32(s * (1.0f + std::ldexp(1.0f, -11))) != s) ++bad;
        if (si_tf32(s * (1.0f + 3 * std::ldexp(1.0f, -11))) != s * (1.0f + std::ldexp(1.0f, -9))) ++bad;
        if (si_tf32(s * (1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -23))) != s * (1.0f + std::ldexp(1.0f, -10)))
            ++bad;
    }
    // The largest float rounds past the largest TF32 number, to infinity.
    if (!std::isinf(si_tf32(FLT_MAX))) ++bad;
    if (!std::isinf(si_tf32(INFINITY)) || !std::isnan(si_tf32(NAN))) ++bad;
    check1("si_tf32 rounding (" + std::to_string(bad) + " bad)", (float)bad, 0.0, 0.0, 0.0);
    check1("si_tf32 hi + lo restores x (worst relative error)", (float)worst_split, 0.0, std::ldexp(1.0, -21), 0.0);
}

// SiDivisor (common.cuh): multiply-and-shift division, used by the *_t128
// loaders, must equal n / d for every 0 ≤ n < 2^31 and 1 ≤ d < 2^31. Checked
// for d = 1..2048, around every power of two, near 2^31 and at random, each
// with small n, n next to multiples of d (where a wrong quotient would show
// first), the largest n and random n.
static void test_divisor() {
    std::vector<int> ds;
    for (int d = 1; d <= 2048; ++d) ds.push_back(d);
    for (int b = 11; b <= 30; ++b)
        for (int e : {-1, 0, 1}) ds.push_back((1 << b) + e);
    ds.push_back(2147483647);
    for (int i = 0; i < 200; ++i) ds.push_back(1 + (int)(urand(0.0f, 1.0f) * 2147483000.0f));
    long tried = 0, bad = 0;
    auto one = [&](const SiDivisor& q, int d, long long n) {
        if (n < 0 || n > 2147483647LL) return;
        ++tried;
        const int got = q.div((int)n), want = (int)(n / d);
        if (got != want && bad++ < 5) printf("  SiDivisor: %lld / %d gave %d, want %d\n", n, d, got, want);
    };
    for (int d : ds) {
        const SiDivisor q = SiDivisor::make(d);
        for (long long n = 0; n < 600; ++n) one(q, d, n);
        const long long top = 2147483647LL / d;
        for (long long j : {1LL, 2LL, 3LL, 7LL, top / 2, top - 1, top, top + 1})
            for (long long e = -1; e <= 1; ++e) one(q, d, j * d + e);
        one(q, d, 2147483647LL);
        for (int i = 0; i < 64; ++i) one(q, d, (long long)(urand(0.0f, 1.0f) * 2147483647.0));
    }
    ++checks;
    if (bad) {
        ++failures;
        printf("FAIL SiDivisor: %ld of %ld quotients wrong\n", bad, tried);
    } else {
        printf("ok   SiDivisor (%zu divisors, %ld quotients)\n", ds.size(), tried);
    }
}

// k_none() (common.cuh, conv.cu): the table entry of a k past the end must
// make b_at read nothing and give 0 for every column, since the 128×128
// core then passes B no k test of its own. x and dy are all NaN here, so an
// entry that let b_at read would give NaN (and ASan would see a read of
// the 4-element buffers in the last two shapes, whose images are far
// larger). Shapes: padding, stride and dilation per axis; padded sides
// just under 2^30 pixels, k_none's own limit (the host's row check refuses
// these shapes anyway; they bound what the shift alone guarantees).
static void test_k_none() {
    const ConvShape shapes[] = {
        {2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1},
        {2, 2, 9, 9, 4, 5, 5, 3, 2, 4, 3, 2, 3},
        {1, 1, 1, (1 << 30) - 4, 1, 1, 1, 1, 1, 0, 1, 1, 1},
        {1, 1, (1 << 30) - 6, 1, 1, 3, 1, 1, 1, 1, 0, 1, 1},
    };
    long tried = 0, bad = 0;
    for (const ConvShape& sh : shapes) {
        const bool huge = (long long)sh.h * sh.w > (1 << 20);
        const size_t nx = huge ? 4 : (size_t)sh.n * sh.cin * sh.h * sh.w;
        const size_t ny = huge ? 4 : (size_t)sh.n * sh.cout * sh.oh() * sh.ow();
        V x(nx, NAN), dy(ny, NAN);
        ConvParams p = conv_params(sh);
        p.x = x.data();
        p.dy = dy.data();
        const ConvFwdHoisted fwd = ConvFwdHoisted::make(p);
        const ConvBwdDataHoisted bwd = ConvBwdDataHoisted::make(p);
        const long long nf = (long long)sh.n * sh.oh() * sh.ow(), nb = (long long)sh.n * sh.h * sh.w;
        auto columns = [&](long long n_cols, auto&& f) {
            for (long long c = 0; c < n_cols; c += (n_cols > 4096 ? n_cols / 1000 : 1)) f((int)c);
            f((int)(n_cols - 1));
        };
        columns(nf, [&](int c) {
            ++tried;
            const float v = fwd.b_at(0, fwd.k_none(), fwd.col(c), true);
            if (v != 0.0f && bad++ < 5) printf("  fwd k_none: column %d gave %g\n", c, v);
        });
        columns(nb, [&](int c) {
            ++tried;
            const float v = bwd.b_at(0, bwd.k_none(), bwd.col(c), true);
            if (v != 0.0f && bad++ < 5) printf("  bwd_data k_none: column %d gave %g\n", c, v);
        });
    }
    check1("k_none reads nothing (" + std::to_string(tried) + " columns, " + std::to_string(bad) + " bad)",
           (float)bad, 0.0, 0.0, 0.0);
}

// ---------------------------------------------------------------- pooling
static void test_pool() {
    const int planes = 3, H = 7, W = 6;
    struct G { int kh, kw, sh, sw, ph, pw; };
    for (G g : {G{2, 2, 2, 2, 0, 0}, G{3, 3, 2, 2, 1, 1}, G{3, 2, 1, 2, 1, 0}}) {
        const int OH = (H + 2 * g.ph - g.kh) / g.sh + 1, OW = (W + 2 * g.pw - g.kw) / g.sw + 1;
        const std::string tag = "k" + std::to_string(g.kh) + "x" + std::to_string(g.kw) + " s" +
                                std::to_string(g.sh) + std::to_string(g.sw) + " p" + std::to_string(g.ph) + std::to_string(g.pw);
        V x = rand_vec((size_t)planes * H * W), dy = rand_vec((size_t)planes * OH * OW);
        V y(dy.size(), NAN), dx(x.size(), 0.0f);
        std::vector<int> arg(dy.size(), -7);
        PoolParams p{x.data(), y.data(), arg.data(), dy.data(), dx.data(), planes, H, W, OH, OW,
                     g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, 1, 0};
        emu::launch(maxpool2d_fwd, dim3{1}, 256, p);
        emu::launch(maxpool2d_bwd, dim3{1}, 256, p);
        D wy(y.size()), wdx(x.size(), 0.0);
        for (int pl = 0; pl < planes; ++pl)
            for (int oy = 0; oy < OH; ++oy)
                for (int ox = 0; ox < OW; ++ox) {
                    double best = -INFINITY; int bi = -1;
                    for (int ky = 0; ky < g.kh; ++ky)
                        for (int kx = 0; kx < g.kw; ++kx) {
                            const int iy = oy * g.sh - g.ph + ky, ix = ox * g.sw - g.pw + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            const double v = x[(pl * H + iy) * W + ix];
                            if (bi < 0 || v > best) { best = v; bi = iy * W + ix; }
                        }
                    const int o = (pl * OH + oy) * OW + ox;
                    wy[o] = best;
                    wdx[pl * H * W + bi] += dy[o];
                }
        check("maxpool2d_fwd " + tag, y, wy);
        check("maxpool2d_bwd " + tag, dx, wdx);
        for (int cip = 0; cip < 2; ++cip) {
            V ay(dy.size(), NAN), adx(x.size(), NAN);
            PoolParams q = p;
            q.y = ay.data(); q.dx = adx.data(); q.count_include_pad = cip;
            emu::launch(avgpool2d_fwd, dim3{1}, 256, q);
            emu::launch(avgpool2d_bwd, dim3{1}, 256, q);
            D wy2(ay.size()), wdx2(x.size(), 0.0);
            for (int pl = 0; pl < planes; ++pl)
                for (int oy = 0; oy < OH; ++oy)
                    for (int ox = 0; ox < OW; ++ox) {
                        double s = 0; int inside = 0, padded = 0;
                        for (int ky = 0; ky < g.kh; ++ky)
                            for (int kx = 0; kx < g.kw; ++kx) {
                                const int iy = oy * g.sh - g.ph + ky, ix = ox * g.sw - g.pw + kx;
                                if (iy < H + g.ph && ix < W + g.pw) ++padded;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                s += x[(pl * H + iy) * W + ix]; ++inside;
                            }
                        const double d = cip ? padded : inside;
                        const int o = (pl * OH + oy) * OW + ox;
                        wy2[o] = s / d;
                        for (int ky = 0; ky < g.kh; ++ky)
                            for (int kx = 0; kx < g.kw; ++kx) {
                                const int iy = oy * g.sh - g.ph + ky, ix = ox * g.sw - g.pw + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                wdx2[(pl * H + iy) * W + ix] += dy[o] / d;
                            }
                    }
            check("avgpool2d_fwd cip=" + std::to_string(cip) + " " + tag, ay, wy2);
            check("avgpool2d_bwd cip=" + std::to_string(cip) + " " + tag, adx, wdx2);
        }
    }
}

// ---------------------------------------------------------------- losses
// Central differences of a double-precision function, at a few indices.
// Tolerance: rel_tol of the largest sampled derivative (plus a hair), so
// small gradients (SSIM's are ~1e-3) are held to the same relative standard.
static void fd_check(const std::string& name, const V& grad, V x, const std::function<double(const V&)>& f,
                     int samples = 12, double h = 1e-3, double rel_tol = 2e-3) {
    D want, got;
    V gotf;
    for (int s = 0; s < samples; ++s) {
        const size_t i = (size_t)(s * 7919) % x.size();
        const float keep = x[i];
        x[i] = keep + (float)h; const double fp = f(x);
        x[i] = keep - (float)h; const double fm = f(x);
        x[i] = keep;
        want.push_back((fp - fm) / (2 * h));
        gotf.push_back(grad[i]);
    }
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    if (scale == 0) {
        printf("FAIL %s: all sampled derivatives are zero, the check would be vacuous\n", name.c_str());
        ++failures;
        return;
    }
    check(name + " vs finite differences (max |d| " + std::to_string(scale) + ")", gotf, want,
          rel_tol * scale + 1e-9, 1e-2);
}

static void test_losses() {
    // MSE
    {
        const size_t n = 777;
        V a = rand_vec(n), b = rand_vec(n), ga(n), gb(n), g{0.7f};
        double s = 0;
        for (size_t i = 0; i < n; ++i) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        MseParams p{a.data(), b.data(), nullptr, g.data(), ga.data(), gb.data(), (i64)n, 1.0f / n};
        check1("mse_fwd", two_stage(mse_fwd, p, &decltype(p)::out, n), s / n, 1e-6, 1e-5);
        emu::launch(mse_bwd, dim3{2}, 256, p);
        D wa(n), wb(n);
        for (size_t i = 0; i < n; ++i) { wa[i] = 0.7 * 2.0 * (a[i] - (double)b[i]) / n; wb[i] = -wa[i]; }
        check("mse_bwd a", ga, wa, 1e-7);
        check("mse_bwd b", gb, wb, 1e-7);
    }
    // softmax cross-entropy, 37 classes (more than a warp) and 10 classes
    for (int classes : {10, 37}) {
        const int rows = 13;
        V z = rand_vec((size_t)rows * classes, -3.0f, 3.0f), dz((size_t)rows * classes), g{1.3f};
        std::vector<int> labels(rows);
        for (int r = 0; r < rows; ++r) labels[r] = (r * 5 + 1) % classes;
        CrossEntropyParams p{z.data(), labels.data(), nullptr, g.data(), dz.data(), rows, classes, 1.0f / rows, 0};
        double loss = 0;
        D wdz((size_t)rows * classes);
        for (int r = 0; r < rows; ++r) {
            double mx = -INFINITY, se = 0;
            for (int c = 0; c < classes; ++c) mx = std::max(mx, (double)z[r * classes + c]);
            for (int c = 0; c < classes; ++c) se += std::exp(z[r * classes + c] - mx);
            const double lse = mx + std::log(se);
            loss += lse - z[r * classes + labels[r]];
            for (int c = 0; c < classes; ++c)
                wdz[r * classes + c] = 1.3 / rows * (std::exp(z[r * classes + c] - lse) - (c == labels[r]));
        }
        check1("ce_fwd classes=" + std::to_string(classes), two_stage(ce_fwd, p, &decltype(p)::out, (size_t)rows * 32), loss / rows, 1e-5, 1e-5);
        emu::launch(ce_bwd, dim3{1}, 256, p);
        check("ce_bwd classes=" + std::to_string(classes), dz, wdz, 1e-6);
    }
    // ce_hits: rows whose largest logit (the first of equal maxima; NaN never;
    // an all −inf/NaN row: index 0) is at the label, on integer-valued rows
    // that tie often, plus rows of NaN, −inf and +inf.
    // (300 rows: three blocks, each warp over several rows.)
    for (auto [classes, rows] : {std::pair{10, 40}, std::pair{37, 40}, std::pair{10, 300}}) {
        V z = rand_vec((size_t)rows * classes, 0.0f, 4.0f);
        for (float& v : z) v = std::floor(v);
        for (int c = 0; c < classes; ++c) {
            z[0 * classes + c] = NAN;
            z[1 * classes + c] = -INFINITY;
            z[2 * classes + c] = c % 3 == 1 ? INFINITY : 1.0f;
            z[3 * classes + c] = c == classes - 1 ? 9.0f : (c % 2 ? NAN : 1.0f);
        }
        std::vector<int> labels(rows);
        int want = 0;
        for (int r = 0; r < rows; ++r) {
            int best = 0;
            float bv = -INFINITY;
            for (int c = 0; c < classes; ++c)
                if (z[r * classes + c] > bv) bv = z[r * classes + c], best = c;
            // Every third row labelled right, the rest by a rule that is sometimes right.
            labels[r] = r % 3 == 0 ? best : (r * 7) % classes;
            want += labels[r] == best;
        }
        CrossEntropyParams p{z.data(), labels.data(), nullptr, nullptr, nullptr, rows, classes, 1.0f, 0};
        check1("ce_hits classes=" + std::to_string(classes) + " rows=" + std::to_string(rows), two_stage(ce_hits, p, &decltype(p)::out, (size_t)rows * 32), want, 0.0, 0.0);
    }
    // total variation, both forms
    {
        const int planes = 2, H = 6, W = 5;
        const size_t n = (size_t)planes * H * W;
        V x = rand_vec(n), gx(n), g{0.9f};
        const float wh = 1.0f / (planes * (H - 1) * W), ww = 1.0f / (planes * H * (W - 1));
        auto tv_sq = [&](const V& v) {
            double s = 0;
            for (int pl = 0; pl < planes; ++pl)
                for (int y = 0; y < H; ++y)
                    for (int xx = 0; xx < W; ++xx) {
                        const double c = v[(pl * H + y) * W + xx];
                        if (y + 1 < H) { const double d = v[(pl * H + y + 1) * W + xx] - c; s += wh * d * d; }
                        if (xx + 1 < W) { const double d = v[(pl * H + y) * W + xx + 1] - c; s += ww * d * d; }
                    }
            return s;
        };
        TvParams p{x.data(), nullptr, g.data(), gx.data(), planes, H, W, wh, ww, 1.0f, 2.0f, 0.0f, 0};
        check1("tv_sq_fwd", two_stage(tv_sq_fwd, p, &decltype(p)::out, n), tv_sq(x), 1e-6, 1e-5);
        emu::launch(tv_sq_bwd, dim3{1}, 256, p);
        fd_check("tv_sq_bwd", gx, x, [&](const V& v) { return 0.9 * tv_sq(v); });
        const float beta = 1.5f, eps = 1e-2f, scale = 1.0f / (planes * (H - 1) * (W - 1));
        auto tv_pow = [&](const V& v) {
            double s = 0;
            for (int pl = 0; pl < planes; ++pl)
                for (int y = 0; y + 1 < H; ++y)
                    for (int xx = 0; xx + 1 < W; ++xx) {
                        const double c = v[(pl * H + y) * W + xx];
                        const double dh = v[(pl * H + y + 1) * W + xx] - c, dw = v[(pl * H + y) * W + xx + 1] - c;
                        s += std::pow(dh * dh + dw * dw + eps, beta / 2);
                    }
            return s * scale;
        };
        TvParams q{x.data(), nullptr, g.data(), gx.data(), planes, H, W, 0, 0, scale, beta, eps, 0};
        check1("tv_pow_fwd", two_stage(tv_pow_fwd, q, &decltype(q)::out, n), tv_pow(x), 1e-6, 1e-5);
        emu::launch(tv_pow_bwd, dim3{1}, 256, q);
        fd_check("tv_pow_bwd", gx, x, [&](const V& v) { return 0.9 * tv_pow(v); });
    }
    // SSIM: the authors' uniform 7×7 window with sample covariance, and a
    // lopsided 5-tap window (no symmetry to hide a flipped index in the
    // adjoint filters) with plain covariance.
    for (int variant = 0; variant < 2; ++variant) {
        const int planes = 2, H = 12, W = 11, K = variant ? 5 : 7, HV = H - K + 1, WV = W - K + 1;
        const size_t n = (size_t)planes * H * W, nv = (size_t)planes * HV * WV;
        V a = rand_vec(n, 0.0f, 1.0f), b = a;
        for (auto& v : b) v = std::min(1.0f, std::max(0.0f, v + urand(-0.2f, 0.2f)));
        V win(K, 1.0f / K);
        if (variant) win = V{0.1f, 0.4f, 0.25f, 0.15f, 0.1f};
        const std::string tag = variant ? " (lopsided 5, plain cov)" : " (uniform 7, sample cov)";
        const float L = 1.0f, c1 = (0.01f * L) * (0.01f * L), c2 = (0.03f * L) * (0.03f * L);
        const float cn = variant ? 1.0f : (float)(K * K) / (K * K - 1);
        auto ssim_ref = [&](const V& av, const V& bv) {
            double total = 0;
            for (int pl = 0; pl < planes; ++pl)
                for (int i = 0; i < HV; ++i)
                    for (int j = 0; j < WV; ++j) {
                        double ma = 0, mb = 0, aa = 0, bb = 0, ab = 0;
                        for (int u = 0; u < K; ++u)
                            for (int t = 0; t < K; ++t) {
                                const double wgt = (double)win[u] * win[t];
                                const double va = av[(pl * H + i + u) * W + j + t], vb = bv[(pl * H + i + u) * W + j + t];
                                ma += wgt * va; mb += wgt * vb; aa += wgt * va * va; bb += wgt * vb * vb; ab += wgt * va * vb;
                            }
                        const double sa = cn * (aa - ma * ma), sb = cn * (bb - mb * mb), sab = cn * (ab - ma * mb);
                        total += (2 * ma * mb + c1) * (2 * sab + c2) / ((ma * ma + mb * mb + c1) * (sa + sb + c2));
                    }
            return total / nv;
        };
        V tmp(5 * (size_t)planes * H * WV), stats(5 * nv), dstats(5 * nv), smap(nv), ga(n), gb(n), g{1.0f};
        SsimParams p{a.data(), b.data(), win.data(), tmp.data(), stats.data(), dstats.data(), smap.data(),
                     nullptr, g.data(), ga.data(), gb.data(), planes, H, W, K, c1, c2, cn, 1.0f / nv, 0};
        emu::launch(ssim_filter_h, dim3{2}, 256, p);
        emu::launch(ssim_filter_v, dim3{2}, 256, p);
        check1("ssim fwd" + tag, two_stage(ssim_map_fwd, p, &decltype(p)::out, nv), ssim_ref(a, b), 1e-5, 1e-4);
        emu::launch(ssim_map_bwd, dim3{2}, 256, p);
        emu::launch(ssim_filter_v_adj, dim3{2}, 256, p);
        emu::launch(ssim_filter_h_adj, dim3{2}, 256, p);
        fd_check("ssim bwd a" + tag, ga, a, [&](const V& v) { return ssim_ref(v, b); }, 16, 1e-3, 2e-3);
        fd_check("ssim bwd b" + tag, gb, b, [&](const V& v) { return ssim_ref(a, v); }, 16, 1e-3, 2e-3);
        // identical images: SSIM is exactly 1
        V same(nv);
        SsimParams q = p;
        q.b = a.data();
        emu::launch(ssim_filter_h, dim3{2}, 256, q);
        emu::launch(ssim_filter_v, dim3{2}, 256, q);
        check1("ssim of an image with itself" + tag, two_stage(ssim_map_fwd, q, &decltype(q)::out, nv), 1.0, 1e-5, 0);
    }
}

// ---------------------------------------------------------------- optimizers
static void test_optim() {
    const size_t n = 300;
    float zero = 0.0f;
    for (int ams = 0; ams < 2; ++ams)
        for (int dec = 0; dec < 2; ++dec) {
            V w = rand_vec(n), m(n, 0.0f), v(n, 0.0f), vmax(n, 0.0f);
            D rw(w.begin(), w.end()), rm(n, 0.0), rv(n, 0.0), rvmax(n, 0.0);
            const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-3f, wd = 0.05f;
            for (int t = 1; t <= 3; ++t) {
                V g = rand_vec(n);
                const float bc1 = 1.0f - std::pow(b1, (float)t), bc2 = 1.0f - std::pow(b2, (float)t);
                // A zero skip flag (what a StepMonitor holds until a failure) updates.
                AdamParams p{w.data(), g.data(), m.data(), v.data(), vmax.data(), ams ? &zero : nullptr, (i64)n, lr, b1, b2, eps, wd, bc1, bc2, ams, dec};
                emu::launch(adam_step, dim3{1}, 256, p);
                for (size_t i = 0; i < n; ++i) {
                    double gi = g[i];
                    if (dec) rw[i] *= 1.0 - (double)lr * wd; else gi += (double)wd * rw[i];
                    rm[i] = b1 * rm[i] + (1.0 - b1) * gi;
                    rv[i] = b2 * rv[i] + (1.0 - b2) * gi * gi;
                    double vh = rv[i];
                    if (ams) { rvmax[i] = std::max(rvmax[i], rv[i]); vh = rvmax[i]; }
                    rw[i] -= (double)lr / bc1 * rm[i] / (std::sqrt(vh) / std::sqrt((double)bc2) + eps);
                }
            }
            check("adam_step amsgrad=" + std::to_string(ams) + " adamw=" + std::to_string(dec), w, rw, 1e-5, 1e-4);
        }
    for (int nesterov = 0; nesterov < 2; ++nesterov) {
        V w = rand_vec(n), buf(n, 0.0f);
        D rw(w.begin(), w.end()), rb(n, 0.0);
        const float lr = 0.1f, mu = 0.9f, damp = nesterov ? 0.0f : 0.1f, wd = 1e-2f;
        for (int t = 0; t < 3; ++t) {
            V g = rand_vec(n);
            SgdParams p{w.data(), g.data(), buf.data(), nesterov ? &zero : nullptr, (i64)n, lr, mu, damp, wd, nesterov, t == 0};
            emu::launch(sgd_step, dim3{1}, 256, p);
            for (size_t i = 0; i < n; ++i) {
                double gi = g[i] + (double)wd * rw[i];
                rb[i] = t == 0 ? gi : mu * rb[i] + (1.0 - damp) * gi;
                gi = nesterov ? gi + mu * rb[i] : rb[i];
                rw[i] -= lr * gi;
            }
        }
        check("sgd_step nesterov=" + std::to_string(nesterov), w, rw, 1e-6, 1e-5);
    }
    // A set skip flag (a StepMonitor's failed_at) leaves everything as it was.
    {
        float failed_at = 3.0f;
        V w = rand_vec(n), g = rand_vec(n), m = rand_vec(n), v(n, 0.5f), vmax(n, 0.5f), buf = rand_vec(n);
        const V w0 = w, m0 = m, buf0 = buf;
        AdamParams pa{w.data(), g.data(), m.data(), v.data(), vmax.data(), &failed_at, (i64)n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.1f, 0.001f, 1, 0};
        emu::launch(adam_step, dim3{2}, 256, pa);
        SgdParams ps{w.data(), g.data(), buf.data(), &failed_at, (i64)n, 0.1f, 0.9f, 0.0f, 0.0f, 0, 0};
        emu::launch(sgd_step, dim3{2}, 256, ps);
        check("adam_step/sgd_step skipped: params", w, D(w0.begin(), w0.end()), 0.0, 0.0);
        check("adam_step skipped: moments", m, D(m0.begin(), m0.end()), 0.0, 0.0);
        check("sgd_step skipped: momentum", buf, D(buf0.begin(), buf0.end()), 0.0, 0.0);
    }
    // monitor_watch: sums, then the first non-finite value only.
    {
        V state(6, 0.0f);
        V a{1.0f, 2.0f}, b{3.0f, NAN, INFINITY}, c{-INFINITY};
        emu::launch(monitor_watch, dim3{1}, 32, MonitorParams{state.data(), a.data(), 2, 0, 3, 1, 5, 1.0f, 0.5f});
        check("monitor_watch loss sum and last value", state, D{0, 0, 0, 1.5, 0, 2.0}, 0.0, 0.0);
        emu::launch(monitor_watch, dim3{1}, 32, MonitorParams{state.data(), b.data(), 3, 1, -1, 1, -1, 7.0f, 1.0f});
        emu::launch(monitor_watch, dim3{1}, 32, MonitorParams{state.data(), c.data(), 1, 0, 4, 1, -1, 9.0f, 1.0f});
        // failed at step 7, source 1 + 1 (the NaN), not the later -inf; the
        // metric slot took the -inf (its sum), nothing else moved.
        const bool ok = state[0] == 7.0f && state[1] == 2.0f && std::isnan(state[2]) && state[3] == 1.5f && state[4] == -INFINITY && state[5] == 2.0f;
        check1("monitor_watch first failure kept", ok ? 1.0f : 0.0f, 1.0, 0.0, 0.0);
        V d{NAN};
        V clean(6, 0.0f);
        emu::launch(monitor_watch, dim3{1}, 32, MonitorParams{clean.data(), d.data(), 1, 0, -1, 0, -1, 2.0f, 1.0f});
        check("monitor_watch check=0 records nothing", clean, D(6, 0.0), 0.0, 0.0);
    }
}

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    const std::string only = argc > 1 ? argv[1] : "";
    auto want = [&](const char* s) { return only.empty() || only == s; };
    if (want("elementwise")) test_elementwise();
    if (want("reduce")) test_reduce();
    if (want("matmul")) test_sgemm();
    if (want("conv")) {
        // odd sizes, non-square kernel, stride 2, padding; then dilation, and
        // Cout > 64 / many pixels to cross tile borders in every direction.
        test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)");
        test_conv(ConvShape{1, 2, 8, 9, 3, 3, 3, 1, 2, 2, 1, 2, 1}, "(3x3 dil 2,1)");
        test_conv(ConvShape{2, 5, 10, 9, 70, 3, 3, 1, 1, 1, 1, 1, 1}, "(Cout 70, k3 p1)");
        test_conv(ConvShape{1, 1, 12, 12, 8, 5, 5, 1, 1, 0, 0, 1, 1}, "(LeNet conv1 shape)");
        test_conv_transpose();
    }
    if (want("conv") || want("conv128")) {
        // The 128×128-tile twins on the same shapes (stride 2, dilation,
        // Cout 70, k5 without padding, split-K 1 and 3, the transposed conv)...
        test_divisor();
        test_k_none();
        test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)", CONV128);
        test_conv(ConvShape{1, 2, 8, 9, 3, 3, 3, 1, 2, 2, 1, 2, 1}, "(3x3 dil 2,1)", CONV128);
        test_conv(ConvShape{2, 5, 10, 9, 70, 3, 3, 1, 1, 1, 1, 1, 1}, "(Cout 70, k3 p1)", CONV128);
        test_conv(ConvShape{1, 1, 12, 12, 8, 5, 5, 1, 1, 0, 0, 1, 1}, "(LeNet conv1 shape)", CONV128);
        test_conv_transpose(CONV128);
        // ...and one where every GEMM has M and N above 128 and not multiples
        // of 128, so partial tiles in both directions, 2×2 and more tiles,
        // both halves of the row-group skip (fwd: rows 128..199 of the second
        // tile use all 8 row groups; bwd_data: rows 128, 129 only the first 4)
        // and many K steps. GEMMs: fwd 200×180×1170, bwd_data 130×180×1800,
        // bwd_weight 200×1170×180 (split 3: chunks of 64, 64, 52).
        test_conv(ConvShape{2, 130, 9, 10, 200, 3, 3, 1, 1, 1, 1, 1, 1}, "(130->200 k3 p1, M,N > 128)", CONV128);
        // Stride 2 with dilation on the big tiles, M ≤ 64 (the low-half path).
        test_conv(ConvShape{4, 7, 13, 12, 20, 3, 3, 2, 2, 2, 1, 2, 1}, "(s2 dil 2,1, N > 128)", CONV128);
    }
    if (want("conv") || want("convtc")) {
        // The tensor-core twins, at the same tolerances: 3xTF32 must be as
        // accurate as FP32. They share the *_t128 loaders (checked above on
        // the long-K shapes), so these shapes aim at what is new, the mma
        // fragments and the store layout, with short K (the emulated mma
        // meets its warp twice per call, which is slow): partial tiles, M
        // and N above 128 in every GEMM (1×1 130 → 200: fwd 200×180×130,
        // bwd_data 130×180×200, bwd_weight 200×130×180, every warp's rows
        // and columns), and the low-half tile where warps 4..7 sit idle.
        test_tf32_rounding();
        test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)", CONVTC);
        test_conv(ConvShape{2, 5, 10, 9, 70, 3, 3, 1, 1, 1, 1, 1, 1}, "(Cout 70, k3 p1)", CONVTC);
        test_conv_transpose(CONVTC);
        test_conv(ConvShape{2, 130, 9, 10, 200, 1, 1, 1, 1, 0, 0, 1, 1}, "(1x1 130->200, M,N > 128)", CONVTC);
        test_conv(ConvShape{4, 7, 13, 12, 20, 3, 3, 2, 2, 2, 1, 2, 1}, "(s2 dil 2,1, N > 128)", CONVTC);
    }
    if (want("conv") || want("convm8")) {
        // At most 8 GEMM rows (Cout for the forward, Cin for the input
        // gradient), one column per thread: short and long K (several A
        // chunks of 32, the last partial), N over several blocks of 256
        // with a partial last one, stride, dilation, padding, the
        // transposed conv with bias.
        test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)", CONVM8);
        test_conv(ConvShape{1, 2, 8, 9, 3, 3, 3, 1, 2, 2, 1, 2, 1}, "(3x3 dil 2,1)", CONVM8);
        test_conv(ConvShape{1, 1, 12, 12, 8, 5, 5, 1, 1, 0, 0, 1, 1}, "(LeNet conv1 shape)", CONVM8);
        test_conv(ConvShape{3, 6, 15, 14, 7, 3, 3, 1, 1, 1, 1, 1, 1}, "(6->7 k3 p1, N > 512)", CONVM8);
        test_conv(ConvShape{4, 7, 13, 12, 8, 3, 3, 2, 2, 2, 1, 2, 1}, "(7->8 s2 dil 2,1)", CONVM8);
        // All 8 rows in the input gradient; K = 1; K exactly one and two
        // A chunks; stride, padding and dilation different on each axis.
        test_conv(ConvShape{2, 8, 11, 13, 6, 3, 3, 1, 1, 1, 1, 1, 1}, "(8->6, input gradient M = 8)", CONVM8);
        test_conv(ConvShape{3, 1, 20, 20, 1, 1, 1, 1, 1, 0, 0, 1, 1}, "(1x1 1->1, K = 1)", CONVM8);
        test_conv(ConvShape{2, 4, 12, 12, 8, 4, 2, 1, 1, 0, 0, 1, 1}, "(fwd K = 32, input gradient K = 64)", CONVM8);
        test_conv(ConvShape{2, 2, 9, 9, 4, 5, 5, 3, 2, 4, 3, 2, 3}, "(s3,2 p4,3 dil 2,3)", CONVM8);
        test_conv_transpose(CONVM8);
    }
    if (want("conv") || want("conv128") || want("convtc") || want("convtf32")) {
        // Every 128×128 family on two more shapes: M between 65 and 128 in
        // every GEMM (70 -> 90: both row halves, the upper one partial), and
        // stride, padding and dilation that differ per axis.
        for (const ConvKernels* ks : {&CONV128, &CONVTC, &CONVTF32}) {
            if (!want("conv") && !want(ks == &CONV128 ? "conv128" : ks == &CONVTC ? "convtc" : "convtf32")) continue;
            test_conv(ConvShape{1, 70, 6, 5, 90, 3, 3, 1, 1, 1, 1, 1, 1}, "(70->90, M in 65..128)", *ks);
            test_conv(ConvShape{2, 3, 9, 9, 20, 5, 5, 3, 2, 4, 3, 2, 3}, "(s3,2 p4,3 dil 2,3)", *ks);
        }
    }
    if (want("conv") || want("convtf32w") || want("convt128w") || want("convtcw")) {
        // The 64×256 tiles: GEMMs of at most 64 rows (Cout for the forward,
        // Cin for the input gradient): partial column blocks, exactly 64
        // rows with a long K, stride and dilation, the transposed conv. The
        // TF32 ones against references from TF32-rounded operands.
        for (const ConvKernels* ks : {&CONVTF32W, &CONVT128W, &CONVTCW}) {
            if (!want("conv") && !want(ks == &CONVTF32W ? "convtf32w" : ks == &CONVT128W ? "convt128w" : "convtcw"))
                continue;
            test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)", *ks);
            test_conv(ConvShape{2, 5, 10, 9, 60, 3, 3, 1, 1, 1, 1, 1, 1}, "(5->60 k3 p1)", *ks);
            test_conv(ConvShape{1, 64, 6, 5, 64, 3, 3, 1, 1, 1, 1, 1, 1}, "(64->64, M = 64, K = 576)", *ks);
            test_conv(ConvShape{4, 7, 13, 12, 20, 3, 3, 2, 2, 2, 1, 2, 1}, "(s2 dil 2,1, N > 256)", *ks);
            test_conv_transpose(*ks);
        }
    }
    if (want("conv") || want("convtf32")) {
        // One TF32 product: the same shapes as the 3xTF32 kernels, against
        // references from TF32-rounded operands (ConvKernels::tf32_operands).
        test_conv(ConvShape{2, 3, 9, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1}, "(3x2 s2,1 p1,0)", CONVTF32);
        test_conv(ConvShape{2, 5, 10, 9, 70, 3, 3, 1, 1, 1, 1, 1, 1}, "(Cout 70, k3 p1)", CONVTF32);
        test_conv_transpose(CONVTF32);
        test_conv(ConvShape{2, 130, 9, 10, 200, 1, 1, 1, 1, 0, 0, 1, 1}, "(1x1 130->200, M,N > 128)", CONVTF32);
        test_conv(ConvShape{4, 7, 13, 12, 20, 3, 3, 2, 2, 2, 1, 2, 1}, "(s2 dil 2,1, N > 128)", CONVTF32);
    }
    if (want("pool")) test_pool();
    if (want("loss")) test_losses();
    if (want("optim")) test_optim();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
