// elementwise.cu — element-wise forward and backward kernels.
//
// Mirrors the CPU set in src/ops/elementwise: binary add/sub/mul/div, the
// unary maps (scale, add_scalar, square, sqrt, relu, sigmoid, tanh, exp, ln,
// clamp, abs_pow) and a per-channel bias add, plus two utilities the
// autograd engine needs on the device (fill, axpy for gradient accumulation)
// and the in-place per-channel clamp of the white-box attack's box
// constraint (clamp_channels).
//
// The op is a code in the params struct rather than one kernel per op: the
// branch is uniform across the whole launch (no divergence) and it keeps the
// op tables in one place. Codes match `BinaryCode` / `UnaryCode` in
// src/cuda/params.rs.

#define BIN_ADD 0
#define BIN_SUB 1
#define BIN_MUL 2
#define BIN_DIV 3

#define UN_SCALE 0
#define UN_ADD_SCALAR 1
#define UN_SQUARE 2
#define UN_SQRT 3
#define UN_RELU 4
#define UN_SIGMOID 5
#define UN_TANH 6
#define UN_EXP 7
#define UN_LN 8
#define UN_CLAMP 9
#define UN_ABS_POW 10

struct BinaryParams {
    const float* a;
    const float* b;
    float* out;
    i64 n;
    int op;
};

// out = a (op) b
extern "C" __global__ void ew_binary_fwd(BinaryParams p) {
    SI_GRID_LOOP(i, p.n) {
        const float a = p.a[i], b = p.b[i];
        float y;
        switch (p.op) {
            case BIN_ADD: y = a + b; break;
            case BIN_SUB: y = a - b; break;
            case BIN_MUL: y = a * b; break;
            default: y = a / b; break;
        }
        p.out[i] = y;
    }
}

struct BinaryBwdParams {
    const float* a;
    const float* b;
    const float* g;   // dL/dy
    float* ga;        // dL/da, or null when a needs no gradient
    float* gb;        // dL/db, or null when b needs no gradient
    i64 n;
    int op;
};

// Both input gradients in one pass over g (each written only when asked for).
// add: (g, g); sub: (g, -g); mul: (g*b, g*a); div: (g/b, -g*a/b^2).
extern "C" __global__ void ew_binary_bwd(BinaryBwdParams p) {
    SI_GRID_LOOP(i, p.n) {
        const float g = p.g[i];
        float da, db;
        switch (p.op) {
            case BIN_ADD: da = g; db = g; break;
            case BIN_SUB: da = g; db = -g; break;
            case BIN_MUL: da = g * p.b[i]; db = g * p.a[i]; break;
            default: {
                const float b = p.b[i];
                da = g / b;
                db = -da * p.a[i] / b;  // -g*a/b^2
            }
        }
        if (p.ga) p.ga[i] = da;
        if (p.gb) p.gb[i] = db;
    }
}

struct UnaryParams {
    const float* x;
    float* out;
    i64 n;
    int op;
    float p0;  // scale, scalar, clamp lo, or exponent
    float p1;  // clamp hi
};

SI_DEV float si_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void ew_unary_fwd(UnaryParams p) {
    SI_GRID_LOOP(i, p.n) {
        const float x = p.x[i];
        float y;
        switch (p.op) {
            case UN_SCALE: y = x * p.p0; break;
            case UN_ADD_SCALAR: y = x + p.p0; break;
            case UN_SQUARE: y = x * x; break;
            case UN_SQRT: y = sqrtf(x); break;
            case UN_RELU: y = x <= 0.0f ? 0.0f : x; break;  // NaN stays NaN (fmaxf would give 0)
            case UN_SIGMOID: y = si_sigmoid(x); break;
            case UN_TANH: y = tanhf(x); break;
            case UN_EXP: y = expf(x); break;
            case UN_LN: y = logf(x); break;
            case UN_CLAMP: y = fminf(fmaxf(x, p.p0), p.p1); break;
            default: y = powf(fabsf(x), p.p0); break;
        }
        p.out[i] = y;
    }
}

struct UnaryBwdParams {
    const float* x;   // forward input
    const float* y;   // forward output (sqrt, sigmoid, tanh, exp reuse it)
    const float* g;   // dL/dy
    float* gx;        // dL/dx
    i64 n;
    int op;
    float p0;
    float p1;
};

// dL/dx = g * dy/dx; the table with derivations is in src/ops/elementwise/mod.rs.
extern "C" __global__ void ew_unary_bwd(UnaryBwdParams p) {
    SI_GRID_LOOP(i, p.n) {
        const float g = p.g[i];
        float d;
        switch (p.op) {
            case UN_SCALE: d = g * p.p0; break;
            case UN_ADD_SCALAR: d = g; break;
            case UN_SQUARE: d = 2.0f * p.x[i] * g; break;
            case UN_SQRT: d = g * 0.5f / p.y[i]; break;
            case UN_RELU: d = p.x[i] > 0.0f ? g : 0.0f; break;
            case UN_SIGMOID: { const float y = p.y[i]; d = g * y * (1.0f - y); break; }
            case UN_TANH: { const float y = p.y[i]; d = g * (1.0f - y * y); break; }
            case UN_EXP: d = g * p.y[i]; break;
            case UN_LN: d = g / p.x[i]; break;
            case UN_CLAMP: { const float x = p.x[i]; d = (x >= p.p0 && x <= p.p1) ? g : 0.0f; break; }
            default: {
                // d|x|^p/dx = p |x|^(p-1) sign(x); 0 at x = 0 like the CPU path.
                const float x = p.x[i];
                d = (x == 0.0f) ? 0.0f : g * p.p0 * powf(fabsf(x), p.p0 - 1.0f) * copysignf(1.0f, x);
            }
        }
        p.gx[i] = d;
    }
}

struct BiasAddParams {
    const float* x;     // [N, C, inner]
    const float* bias;  // [C]
    float* out;
    i64 n;              // N*C*inner
    int channels;       // C
    int inner;          // H*W for images, 1 for [N, F] rows
};

// out = x + bias[c]. Backward: dL/dx = g, dL/dbias[c] = sum of g over every
// position of channel c (reduce.cu: channel_sum).
extern "C" __global__ void bias_add_fwd(BiasAddParams p) {
    SI_GRID_LOOP(i, p.n) {
        const int c = (int)((i / p.inner) % p.channels);
        p.out[i] = p.x[i] + p.bias[c];
    }
}

struct ClampChannelsParams {
    float* x;         // [N, C, inner], clamped in place
    const float* lo;  // [C] lower bounds
    const float* hi;  // [C] upper bounds; lo[c] <= hi[c], no NaN (checked on the host)
    i64 n;            // N*C*inner
    int channels;     // C
    int inner;        // H*W for images, 1 for [N, C] rows
};

// x[n, c, ...] = min(max(x, lo[c]), hi[c]), in place: the projection onto
// the valid pixel box (per channel, in the net's normalised space) that the
// white-box attack applies after every optimiser step, so the image never
// leaves the device. Not an autograd op: nothing is recorded and there is no
// backward. Written as two comparisons, exactly like Rust's f32::clamp on the
// CPU path, so both devices give the same bits; in particular a NaN stays
// NaN (fmaxf(NaN, lo) would turn it into lo).
extern "C" __global__ void clamp_channels(ClampChannelsParams p) {
    SI_GRID_LOOP(i, p.n) {
        const int c = (int)((i / p.inner) % p.channels);
        float v = p.x[i];
        const float lo = p.lo[c], hi = p.hi[c];
        if (v < lo) v = lo;
        if (v > hi) v = hi;
        p.x[i] = v;
    }
}

// out[i] = value, or value · (*scale_by) when scale_by is set: a scalar that
// lives on the device (an upstream gradient) spread without a copy to the host.
struct FillParams {
    float* out;
    const float* scale_by;
    i64 n;
    float value;
};

extern "C" __global__ void ew_fill(FillParams p) {
    const float v = p.scale_by ? p.value * *p.scale_by : p.value;
    SI_GRID_LOOP(i, p.n) p.out[i] = v;
}

struct AxpyParams {
    const float* x;
    float* y;
    i64 n;
    float alpha;
};

// y += alpha * x: accumulates a gradient into an existing one.
extern "C" __global__ void ew_axpy(AxpyParams p) {
    SI_GRID_LOOP(i, p.n) p.y[i] += p.alpha * p.x[i];
}
