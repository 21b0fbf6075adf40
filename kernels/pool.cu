// pool.cu — 2-D max and average pooling (NCHW), forward and backward.
//
// Geometry as in PyTorch: output (oy, ox) looks at the window of input rows
// oy·sh − ph ... oy·sh − ph + kh − 1 (columns likewise); positions outside
// the input are padding. All kernels: block SI_BLOCK, grid-stride loops.
//
// Max pool backward: dL/dx is dL/dy routed to the one input that won each
// window (stored as argmax by the forward pass). Overlapping windows (stride
// < kernel) can route several outputs to the same input, so the backward
// adds with atomicAdd into a dx that the host zeroed (or that holds a
// gradient to accumulate into).
//
// Average pool backward: y = (1/d)·Σ window, so each input receives dy/d
// from every window that contains it. Written as a gather (each input sums
// over the windows covering it): no atomics, deterministic.

struct PoolParams {
    const float* x;     // [planes, H, W], planes = N·C
    float* y;           // [planes, OH, OW]
    int* argmax;        // max pool: index iy·W + ix of the winner inside its plane (-1: none)
    const float* dy;    // [planes, OH, OW]
    float* dx;          // [planes, H, W]
    i64 planes;
    int h, w, oh, ow;
    int kh, kw;
    int stride_h, stride_w;
    int pad_h, pad_w;
    int count_include_pad;  // avg pool: divide by the padded window size (PyTorch default)
    int accumulate;         // avg pool backward: dx += result
};

extern "C" __global__ void maxpool2d_fwd(PoolParams p) {
    const i64 total = p.planes * p.oh * p.ow;
    SI_GRID_LOOP(i, total) {
        i64 plane; int oy, ox;
        si_unravel_plane(i, p.oh, p.ow, &plane, &oy, &ox);
        const float* xp = p.x + plane * p.h * p.w;
        const int y0 = oy * p.stride_h - p.pad_h, x0 = ox * p.stride_w - p.pad_w;
        float best = SI_NEG_INF;
        int arg = -1;
        for (int ky = 0; ky < p.kh; ++ky) {
            const int iy = y0 + ky;
            if (iy < 0 || iy >= p.h) continue;
            for (int kx = 0; kx < p.kw; ++kx) {
                const int ix = x0 + kx;
                if (ix < 0 || ix >= p.w) continue;
                const float v = xp[iy * p.w + ix];
                // NaN wins and stays (as in PyTorch), so it propagates.
                if (arg < 0 || v > best || isnan(v)) {
                    best = v;
                    arg = iy * p.w + ix;
                    if (isnan(v)) { ky = p.kh; break; }
                }
            }
        }
        p.y[i] = best;
        if (p.argmax) p.argmax[i] = arg;
    }
}

extern "C" __global__ void maxpool2d_bwd(PoolParams p) {
    const i64 total = p.planes * p.oh * p.ow;
    SI_GRID_LOOP(i, total) {
        const int arg = p.argmax[i];
        if (arg < 0) continue;
        const i64 plane = i / ((i64)p.oh * p.ow);
        atomicAdd(p.dx + plane * p.h * p.w + arg, p.dy[i]);
    }
}

// PyTorch's divisor: the window clipped to the padded input (count_include_pad)
// or to the real input.
SI_DEV float avg_divisor(const PoolParams& p, int oy, int ox) {
    int y0 = oy * p.stride_h - p.pad_h, x0 = ox * p.stride_w - p.pad_w;
    int y1 = min(y0 + p.kh, p.h + p.pad_h), x1 = min(x0 + p.kw, p.w + p.pad_w);
    const int padded = (y1 - y0) * (x1 - x0);
    y0 = max(y0, 0); x0 = max(x0, 0);
    y1 = min(y1, p.h); x1 = min(x1, p.w);
    const int inside = (y1 - y0) * (x1 - x0);
    return (float)(p.count_include_pad ? padded : (inside > 0 ? inside : 1));
}

extern "C" __global__ void avgpool2d_fwd(PoolParams p) {
    const i64 total = p.planes * p.oh * p.ow;
    SI_GRID_LOOP(i, total) {
        i64 plane; int oy, ox;
        si_unravel_plane(i, p.oh, p.ow, &plane, &oy, &ox);
        const float* xp = p.x + plane * p.h * p.w;
        const int y0 = oy * p.stride_h - p.pad_h, x0 = ox * p.stride_w - p.pad_w;
        float s = 0.0f;
        for (int iy = max(y0, 0); iy < min(y0 + p.kh, p.h); ++iy)
            for (int ix = max(x0, 0); ix < min(x0 + p.kw, p.w); ++ix) s += xp[iy * p.w + ix];
        p.y[i] = s / avg_divisor(p, oy, ox);
    }
}

extern "C" __global__ void avgpool2d_bwd(PoolParams p) {
    const i64 total = p.planes * p.h * p.w;
    SI_GRID_LOOP(i, total) {
        i64 plane; int iy, ix;
        si_unravel_plane(i, p.h, p.w, &plane, &iy, &ix);
        // Windows covering iy: oy·sh − ph ≤ iy ≤ oy·sh − ph + kh − 1.
        const int oy_lo = max(0, si_floor_div(iy + p.pad_h - p.kh, p.stride_h) + 1);
        const int oy_hi = min(p.oh - 1, si_floor_div(iy + p.pad_h, p.stride_h));
        const int ox_lo = max(0, si_floor_div(ix + p.pad_w - p.kw, p.stride_w) + 1);
        const int ox_hi = min(p.ow - 1, si_floor_div(ix + p.pad_w, p.stride_w));
        const float* dyp = p.dy + plane * p.oh * p.ow;
        float s = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi; ++oy)
            for (int ox = ox_lo; ox <= ox_hi; ++ox)
                s += dyp[oy * p.ow + ox] / avg_divisor(p, oy, ox);
        p.dx[i] = p.accumulate ? p.dx[i] + s : s;
    }
}
