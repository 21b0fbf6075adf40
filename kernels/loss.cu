// loss.cu — losses and image priors, forward and backward.
//
// Scalar results come out in two stages, like reduce.cu: the *_fwd kernel
// writes one partial sum per block to out[blockIdx.x] (already multiplied by
// `scale`), then reduce.cu's reduce_sum (1 block, scale 1) adds the
// partials. Backward kernels read the upstream gradient of the scalar loss
// from device memory (`g`, one float) so nothing waits for the host.
// Unless noted: block SI_BLOCK, grid-stride.

// ---- mean squared error ------------------------------------------------------
// L = scale·Σ (a − b)²  (scale = 1/n for the mean).
// dL/da = 2·scale·(a − b)·g,  dL/db = −dL/da.

struct MseParams {
    const float* a;
    const float* b;
    float* out;        // fwd: per-block partial sums
    const float* g;    // bwd: upstream gradient (1 float)
    float* ga;         // bwd: dL/da or null
    float* gb;         // bwd: dL/db or null
    i64 n;
    float scale;
};

extern "C" __global__ void mse_fwd(MseParams p) {
    float acc = 0.0f;
    SI_GRID_LOOP(i, p.n) {
        const float d = p.a[i] - p.b[i];
        acc = fmaf(d, d, acc);
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

extern "C" __global__ void mse_bwd(MseParams p) {
    const float k = 2.0f * p.scale * p.g[0];
    SI_GRID_LOOP(i, p.n) {
        const float d = k * (p.a[i] - p.b[i]);
        if (p.ga) p.ga[i] = d;
        if (p.gb) p.gb[i] = -d;
    }
}

// ---- softmax cross-entropy ---------------------------------------------------
// Per row r: loss_r = logsumexp(z_r) − z_r[label_r]; L = scale·Σ_r loss_r.
// dL/dz_r[c] = scale·g·(softmax(z_r)[c] − [c == label_r]): the softmax
// Jacobian and the log cancel to "probability minus one-hot".
// One warp per row (rows are short: 10 classes); the block size must be a
// multiple of 32 (launch as for rows·32 items, e.g. Launch::elementwise). A label outside [0, classes) gives NaN (the host checks
// labels before launching, this only keeps bad data from passing silently).

struct CrossEntropyParams {
    const float* logits;  // [rows, classes]
    const int* labels;    // [rows]
    float* out;           // fwd: per-block partial sums
    const float* g;       // bwd: upstream gradient (1 float)
    float* dlogits;       // bwd: [rows, classes]
    int rows;
    int classes;
    float scale;
    int accumulate;       // bwd: dlogits += result
};

// Row r of the calling warp: one warp per row, the grid's warps striding
// over the rows.
#define SI_FOR_EACH_ROW_OF_WARP(r, rows)                                          \
    for (int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < (rows); \
         r += gridDim.x * (blockDim.x >> 5))

// logsumexp of one row, computed by one warp (every lane gets it).
SI_DEV float ce_row_lse(const float* z, int classes, int lane) {
    float mx = SI_NEG_INF;
    for (int c = lane; c < classes; c += 32) mx = fmaxf(mx, z[c]);
    mx = si_warp_max(mx);
    float s = 0.0f;
    for (int c = lane; c < classes; c += 32) s += expf(z[c] - mx);
    s = si_warp_sum(s);
    return mx + logf(s);
}

extern "C" __global__ void ce_fwd(CrossEntropyParams p) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    SI_FOR_EACH_ROW_OF_WARP(r, p.rows) {
        const float* z = p.logits + (i64)r * p.classes;
        const float lse = ce_row_lse(z, p.classes, lane);
        const int y = p.labels[r];
        const float loss = (y >= 0 && y < p.classes) ? lse - z[y] : __int_as_float(0x7fc00000);
        if (lane == 0) acc += loss;
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

// Index of the largest logit of one row, computed by one warp (every lane
// gets it): the first of several equal maxima, as the host's argmax; NaN
// never wins (it compares false), and a row with nothing above −inf gives 0.
// Indices travel as floats, exact below 2^24 classes.
SI_DEV int ce_row_argmax(const float* z, int classes, int lane) {
    float best = SI_NEG_INF, at = (float)classes;  // classes: nothing yet
    for (int c = lane; c < classes; c += 32)
        if (z[c] > best) best = z[c], at = (float)c;
    for (int o = 16; o > 0; o >>= 1) {
        const float b = __shfl_xor_sync(0xffffffffu, best, o);
        const float a = __shfl_xor_sync(0xffffffffu, at, o);
        if (b > best || (b == best && a < at)) best = b, at = a;
    }
    return at < (float)classes ? (int)at : 0;
}

// Training accuracy without a copy to the host: per-block counts of the rows
// whose largest logit is at their label (times `scale`, 1 for a count),
// added up by reduce_sum like the loss. No gradient.
extern "C" __global__ void ce_hits(CrossEntropyParams p) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    SI_FOR_EACH_ROW_OF_WARP(r, p.rows) {
        const int best = ce_row_argmax(p.logits + (i64)r * p.classes, p.classes, lane);
        if (lane == 0 && best == p.labels[r]) acc += 1.0f;
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

extern "C" __global__ void ce_bwd(CrossEntropyParams p) {
    const int lane = threadIdx.x & 31;
    const float k = p.scale * p.g[0];
    SI_FOR_EACH_ROW_OF_WARP(r, p.rows) {
        const float* z = p.logits + (i64)r * p.classes;
        float* dz = p.dlogits + (i64)r * p.classes;
        const float lse = ce_row_lse(z, p.classes, lane);
        const int y = p.labels[r];
        for (int c = lane; c < p.classes; c += 32) {
            const float d = k * (expf(z[c] - lse) - (c == y ? 1.0f : 0.0f));
            dz[c] = p.accumulate ? dz[c] + d : d;
        }
    }
}

// ---- total variation -----------------------------------------------------------
// Per plane (one channel of one image), dh(y,x) = x[y+1,x] − x[y,x] and
// dw(y,x) = x[y,x+1] − x[y,x].
//
// Squared form (the authors' TV, β = 2):
//   L = weight_h·Σ dh² + weight_w·Σ dw²,
//   weight_h = 1/(planes·(H−1)·W), weight_w = 1/(planes·H·(W−1)) for the two means
//   (the host passes 0 for a direction of length 1).
//   x[y,x] appears in dh(y,x) with sign − and in dh(y−1,x) with sign +, so
//   dL/dx[y,x] = 2·weight_h·(−dh(y,x) + dh(y−1,x)) + 2·weight_w·(−dw(y,x) + dw(y,x−1)),
//   terms that fall outside the image dropped.
//
// Power form (Mahendran & Vedaldi): over y < H−1, x < W−1,
//   L = scale·Σ q(y,x)^(β/2),  q = dh² + dw² + eps.
//   ∂q^(β/2)/∂x[y,x]   = β·q^(β/2−1)·(−dh − dw)   (the pixel is the base of both)
//   ∂q(y−1,x)^(β/2)/∂x[y,x] = β·q(y−1,x)^(β/2−1)·dh(y−1,x)
//   ∂q(y,x−1)^(β/2)/∂x[y,x] = β·q(y,x−1)^(β/2−1)·dw(y,x−1)
// Both backward kernels gather these terms per pixel (no atomics).

struct TvParams {
    const float* x;     // [planes, H, W]
    float* out;         // fwd: per-block partial sums
    const float* g;     // bwd: upstream gradient (1 float)
    float* gx;          // bwd: dL/dx
    i64 planes;
    int h, w;
    float weight_h;     // squared form
    float weight_w;     // squared form
    float scale;        // power form
    float beta;         // power form exponent
    float eps;          // power form
    int accumulate;     // bwd: gx += result
};

extern "C" __global__ void tv_sq_fwd(TvParams p) {
    const i64 total = p.planes * p.h * p.w;
    float acc = 0.0f;
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, x;
        si_unravel_plane(i, p.h, p.w, &plane, &y, &x);
        const float v = p.x[i];
        if (y + 1 < p.h) { const float d = p.x[i + p.w] - v; acc = fmaf(p.weight_h * d, d, acc); }
        if (x + 1 < p.w) { const float d = p.x[i + 1] - v; acc = fmaf(p.weight_w * d, d, acc); }
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc;
}

extern "C" __global__ void tv_sq_bwd(TvParams p) {
    const i64 total = p.planes * p.h * p.w;
    const float gh = 2.0f * p.weight_h * p.g[0], gw = 2.0f * p.weight_w * p.g[0];
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, x;
        si_unravel_plane(i, p.h, p.w, &plane, &y, &x);
        const float v = p.x[i];
        float d = 0.0f;
        if (y + 1 < p.h) d -= gh * (p.x[i + p.w] - v);
        if (y > 0) d += gh * (v - p.x[i - p.w]);
        if (x + 1 < p.w) d -= gw * (p.x[i + 1] - v);
        if (x > 0) d += gw * (v - p.x[i - 1]);
        p.gx[i] = p.accumulate ? p.gx[i] + d : d;
    }
}

// dh, dw and q at (y, x) of a plane; valid for y < H−1, x < W−1.
SI_DEV float tv_q(const float* xp, int w, int y, int x, float eps, float* dh, float* dw) {
    const float v = xp[y * w + x];
    *dh = xp[(y + 1) * w + x] - v;
    *dw = xp[y * w + x + 1] - v;
    return (*dh) * (*dh) + (*dw) * (*dw) + eps;
}

extern "C" __global__ void tv_pow_fwd(TvParams p) {
    const i64 total = p.planes * p.h * p.w;
    const float half_beta = 0.5f * p.beta;
    float acc = 0.0f;
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, x;
        si_unravel_plane(i, p.h, p.w, &plane, &y, &x);
        if (y + 1 < p.h && x + 1 < p.w) {
            float dh, dw;
            const float q = tv_q(p.x + plane * p.h * p.w, p.w, y, x, p.eps, &dh, &dw);
            acc += powf(q, half_beta);
        }
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

extern "C" __global__ void tv_pow_bwd(TvParams p) {
    const i64 total = p.planes * p.h * p.w;
    const float e = 0.5f * p.beta - 1.0f;
    const float k = p.scale * p.beta * p.g[0];
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, x;
        si_unravel_plane(i, p.h, p.w, &plane, &y, &x);
        const float* xp = p.x + plane * p.h * p.w;
        float d = 0.0f, dh, dw;
        if (y + 1 < p.h && x + 1 < p.w) {
            const float q = tv_q(xp, p.w, y, x, p.eps, &dh, &dw);
            d -= powf(q, e) * (dh + dw);
        }
        if (y > 0 && x + 1 < p.w) {
            const float q = tv_q(xp, p.w, y - 1, x, p.eps, &dh, &dw);
            d += powf(q, e) * dh;
        }
        if (x > 0 && y + 1 < p.h) {
            const float q = tv_q(xp, p.w, y, x - 1, p.eps, &dh, &dw);
            d += powf(q, e) * dw;
        }
        d *= k;
        p.gx[i] = p.accumulate ? p.gx[i] + d : d;
    }
}

// ---- SSIM ------------------------------------------------------------------------
// For images a, b (one plane = one channel of one image), with a separable
// window wᵢ·wⱼ (uniform 7×7: wᵢ = 1/7; Gaussian 11×11, σ = 1.5, normalised)
// applied in "valid" mode (only where the window fits, which equals
// scikit-image's result after it crops (K−1)/2 from the borders):
//   five filtered statistics  μa = W∗a, μb = W∗b, Eaa = W∗a², Ebb = W∗b², Eab = W∗ab;
//   σa² = cn·(Eaa − μa²), σb² = cn·(Ebb − μb²), σab = cn·(Eab − μa·μb)
//   (cn = K²/(K²−1) for the sample covariance, 1 otherwise);
//   S = (2μaμb + C1)(2σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)),
//   L = scale·Σ S  (scale = 1/(planes·Hv·Wv): the mean SSIM).
//
// Pipeline (buffers: stats and dstats [5, planes, Hv, Wv], tmp [5, planes, H, Wv]):
//   forward:  ssim_filter_h (a, b → tmp: rows filtered), ssim_filter_v (tmp →
//             stats), ssim_map_fwd (stats → partial sums, optional S map);
//   backward: ssim_map_bwd (stats → dstats = dL/d(each statistic)),
//             ssim_filter_v_adj (dstats → tmp), ssim_filter_h_adj (tmp → ga, gb).
// The backward of a filter is its adjoint: a valid correlation with the window
// becomes a "full" convolution — each input pixel collects w[t]·(gradient at
// the output t places before it). Then the chain rule through the statistics
// (a enters μa linearly, Eaa as a², Eab as a·b):
//   dL/da = G_μa + 2a·G_Eaa + b·G_Eab,   dL/db = G_μb + 2b·G_Ebb + a·G_Eab,
// where G_s is the adjoint-filtered dL/ds.
// Derivatives of S (A1 = 2μaμb + C1, A2 = 2σab + C2, B1 = μa² + μb² + C1,
// B2 = σa² + σb² + C2, D = B1·B2, S = A1·A2/D):
//   ∂S/∂μa  = [2μb·A2 − 2cn·μb·A1 − S·(2μa·B2 − 2cn·μa·B1)] / D
//   ∂S/∂μb  = [2μa·A2 − 2cn·μa·A1 − S·(2μb·B2 − 2cn·μb·B1)] / D
//   ∂S/∂Eaa = ∂S/∂Ebb = −S·cn / B2
//   ∂S/∂Eab = 2cn·A1 / D

struct SsimParams {
    const float* a;       // [planes, H, W]
    const float* b;       // [planes, H, W]
    const float* win;     // [K] 1-D window (the 2-D window is its outer product)
    float* tmp;           // [5, planes, H, Wv]
    float* stats;         // [5, planes, Hv, Wv]
    float* dstats;        // [5, planes, Hv, Wv]
    float* smap;          // fwd: optional per-pixel S [planes, Hv, Wv], or null
    float* out;           // fwd: per-block partial sums
    const float* g;       // bwd: upstream gradient (1 float)
    float* ga;            // bwd: dL/da or null
    float* gb;            // bwd: dL/db or null
    i64 planes;
    int h, w;
    int k;                // window length; Hv = H − K + 1, Wv = W − K + 1
    float c1, c2;
    float cov_norm;
    float scale;
    int accumulate;       // bwd: ga/gb += result
};

// tmp[s, plane, y, j] = Σ_t win[t] · f_s(a, b)[plane, y, j + t]
extern "C" __global__ void ssim_filter_h(SsimParams p) {
    const int wv = p.w - p.k + 1;
    const i64 plane_sz = (i64)p.h * wv;
    const i64 total = p.planes * plane_sz;
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, j;
        si_unravel_plane(i, p.h, wv, &plane, &y, &j);
        const i64 row = (plane * p.h + y) * p.w + j;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f;
        for (int t = 0; t < p.k; ++t) {
            const float c = p.win[t], va = p.a[row + t], vb = p.b[row + t];
            s0 = fmaf(c, va, s0);
            s1 = fmaf(c, vb, s1);
            s2 = fmaf(c, va * va, s2);
            s3 = fmaf(c, vb * vb, s3);
            s4 = fmaf(c, va * vb, s4);
        }
        p.tmp[i] = s0;
        p.tmp[i + total] = s1;
        p.tmp[i + 2 * total] = s2;
        p.tmp[i + 3 * total] = s3;
        p.tmp[i + 4 * total] = s4;
    }
}

// stats[s, plane, i, j] = Σ_t win[t] · tmp[s, plane, i + t, j]
extern "C" __global__ void ssim_filter_v(SsimParams p) {
    const int wv = p.w - p.k + 1, hv = p.h - p.k + 1;
    const i64 total = p.planes * hv * wv;
    const i64 tmp_total = p.planes * p.h * wv;
    SI_GRID_LOOP(i, 5 * total) {
        const i64 s = i / total, r = i - s * total;
        i64 plane; int y, j;
        si_unravel_plane(r, hv, wv, &plane, &y, &j);
        const float* col = p.tmp + s * tmp_total + (plane * p.h + y) * wv + j;
        float acc = 0.0f;
        for (int t = 0; t < p.k; ++t) acc = fmaf(p.win[t], col[(i64)t * wv], acc);
        p.stats[i] = acc;
    }
}

struct SsimTerms { float s, a1, a2, b1, b2; };

SI_DEV SsimTerms ssim_terms(float mua, float mub, float eaa, float ebb, float eab,
                            float c1, float c2, float cn) {
    SsimTerms t;
    t.a1 = 2.0f * mua * mub + c1;
    t.a2 = 2.0f * cn * (eab - mua * mub) + c2;
    t.b1 = mua * mua + mub * mub + c1;
    t.b2 = cn * (eaa - mua * mua) + cn * (ebb - mub * mub) + c2;
    t.s = (t.a1 * t.a2) / (t.b1 * t.b2);
    return t;
}

extern "C" __global__ void ssim_map_fwd(SsimParams p) {
    const i64 total = p.planes * (p.h - p.k + 1) * (p.w - p.k + 1);
    float acc = 0.0f;
    SI_GRID_LOOP(i, total) {
        const SsimTerms t = ssim_terms(p.stats[i], p.stats[i + total], p.stats[i + 2 * total],
                                       p.stats[i + 3 * total], p.stats[i + 4 * total],
                                       p.c1, p.c2, p.cov_norm);
        if (p.smap) p.smap[i] = t.s;
        acc += t.s;
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

extern "C" __global__ void ssim_map_bwd(SsimParams p) {
    const i64 total = p.planes * (p.h - p.k + 1) * (p.w - p.k + 1);
    const float k = p.scale * p.g[0];
    const float cn = p.cov_norm;
    SI_GRID_LOOP(i, total) {
        const float mua = p.stats[i], mub = p.stats[i + total];
        const SsimTerms t = ssim_terms(mua, mub, p.stats[i + 2 * total], p.stats[i + 3 * total],
                                       p.stats[i + 4 * total], p.c1, p.c2, cn);
        const float inv_d = 1.0f / (t.b1 * t.b2);
        const float d_mua = (2.0f * mub * t.a2 - 2.0f * cn * mub * t.a1
                             - t.s * (2.0f * mua * t.b2 - 2.0f * cn * mua * t.b1)) * inv_d;
        const float d_mub = (2.0f * mua * t.a2 - 2.0f * cn * mua * t.a1
                             - t.s * (2.0f * mub * t.b2 - 2.0f * cn * mub * t.b1)) * inv_d;
        const float d_e2 = -t.s * cn / t.b2;
        const float d_eab = 2.0f * cn * t.a1 * inv_d;
        p.dstats[i] = k * d_mua;
        p.dstats[i + total] = k * d_mub;
        p.dstats[i + 2 * total] = k * d_e2;
        p.dstats[i + 3 * total] = k * d_e2;
        p.dstats[i + 4 * total] = k * d_eab;
    }
}

// Adjoint of ssim_filter_v: tmp[s, plane, y, j] = Σ_t win[t] · dstats[s, plane, y − t, j]
// over the t with 0 ≤ y − t < Hv.
extern "C" __global__ void ssim_filter_v_adj(SsimParams p) {
    const int wv = p.w - p.k + 1, hv = p.h - p.k + 1;
    const i64 total = p.planes * p.h * wv;
    const i64 st_total = p.planes * hv * wv;
    SI_GRID_LOOP(i, 5 * total) {
        const i64 s = i / total, r = i - s * total;
        i64 plane; int y, j;
        si_unravel_plane(r, p.h, wv, &plane, &y, &j);
        const float* col = p.dstats + s * st_total + plane * hv * wv + j;
        const int t_lo = max(0, y - hv + 1), t_hi = min(p.k - 1, y);
        float acc = 0.0f;
        for (int t = t_lo; t <= t_hi; ++t) acc = fmaf(p.win[t], col[(i64)(y - t) * wv], acc);
        p.tmp[i] = acc;
    }
}

// Adjoint of ssim_filter_h, then the chain rule through a², b², ab.
extern "C" __global__ void ssim_filter_h_adj(SsimParams p) {
    const int wv = p.w - p.k + 1;
    const i64 total = p.planes * p.h * p.w;
    const i64 tmp_total = p.planes * p.h * wv;
    SI_GRID_LOOP(i, total) {
        i64 plane; int y, x;
        si_unravel_plane(i, p.h, p.w, &plane, &y, &x);
        const i64 row = (plane * p.h + y) * wv;
        const int t_lo = max(0, x - wv + 1), t_hi = min(p.k - 1, x);
        float g0 = 0.0f, g1 = 0.0f, g2 = 0.0f, g3 = 0.0f, g4 = 0.0f;
        for (int t = t_lo; t <= t_hi; ++t) {
            const float c = p.win[t];
            const i64 j = row + x - t;
            g0 = fmaf(c, p.tmp[j], g0);
            g1 = fmaf(c, p.tmp[j + tmp_total], g1);
            g2 = fmaf(c, p.tmp[j + 2 * tmp_total], g2);
            g3 = fmaf(c, p.tmp[j + 3 * tmp_total], g3);
            g4 = fmaf(c, p.tmp[j + 4 * tmp_total], g4);
        }
        const float va = p.a[i], vb = p.b[i];
        if (p.ga) {
            const float d = g0 + 2.0f * va * g2 + vb * g4;
            p.ga[i] = p.accumulate ? p.ga[i] + d : d;
        }
        if (p.gb) {
            const float d = g1 + 2.0f * vb * g3 + va * g4;
            p.gb[i] = p.accumulate ? p.gb[i] + d : d;
        }
    }
}
