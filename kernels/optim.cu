// optim.cu — fused optimizer updates: one pass over the parameters reads
// param, grad and the optimizer state and writes them back (instead of a
// chain of element-wise launches). Semantics follow PyTorch's Adam / AdamW /
// SGD. Block SI_BLOCK, grid-stride.

struct AdamParams {
    float* param;
    const float* grad;
    float* m;           // first moment (exp_avg)
    float* v;           // second moment (exp_avg_sq)
    float* vmax;        // amsgrad: running max of v (max_exp_avg_sq); may be null otherwise
    const float* skip;  // a StepMonitor's "failed at step" slot: non-zero skips the update; may be null
    i64 n;
    float lr;
    float beta1, beta2;
    float eps;
    float weight_decay;
    float bias_correction1;  // 1 − beta1^t
    float bias_correction2;  // 1 − beta2^t
    int amsgrad;
    int decoupled;           // 1: AdamW (decay the weights), 0: L2 (add wd·p to g)
};

// m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,  v̂ = max(v̂, v) with amsgrad,
// p ← p − lr/(1−β1^t) · m / (sqrt(v or v̂)/sqrt(1−β2^t) + eps).
extern "C" __global__ void adam_step(AdamParams p) {
    if (p.skip && *p.skip != 0.0f) return;
    const float step = p.lr / p.bias_correction1;
    const float bc2_sqrt = sqrtf(p.bias_correction2);
    SI_GRID_LOOP(i, p.n) {
        float w = p.param[i];
        float g = p.grad[i];
        if (p.weight_decay != 0.0f) {
            if (p.decoupled) w *= 1.0f - p.lr * p.weight_decay;
            else g = fmaf(p.weight_decay, w, g);
        }
        const float m = fmaf(p.beta1, p.m[i], (1.0f - p.beta1) * g);
        const float v = fmaf(p.beta2, p.v[i], (1.0f - p.beta2) * g * g);
        p.m[i] = m;
        p.v[i] = v;
        float vhat = v;
        if (p.amsgrad) {
            vhat = fmaxf(p.vmax[i], v);
            p.vmax[i] = vhat;
        }
        const float denom = sqrtf(vhat) / bc2_sqrt + p.eps;
        p.param[i] = w - step * m / denom;
    }
}

struct SgdParams {
    float* param;
    const float* grad;
    float* momentum_buf;   // null when momentum == 0
    const float* skip;     // as in AdamParams
    i64 n;
    float lr;
    float momentum;
    float dampening;
    float weight_decay;
    int nesterov;
    int first_step;        // 1: the buffer starts as g (PyTorch), not β·0 + (1−d)·g
};

// g ← g + wd·p;  b ← g (first step) or μ·b + (1−d)·g;
// g ← g + μ·b (Nesterov) or b;  p ← p − lr·g.
extern "C" __global__ void sgd_step(SgdParams p) {
    if (p.skip && *p.skip != 0.0f) return;
    SI_GRID_LOOP(i, p.n) {
        const float w = p.param[i];
        float g = p.grad[i];
        if (p.weight_decay != 0.0f) g = fmaf(p.weight_decay, w, g);
        if (p.momentum != 0.0f && p.momentum_buf) {
            const float b = p.first_step ? g : fmaf(p.momentum, p.momentum_buf[i], (1.0f - p.dampening) * g);
            p.momentum_buf[i] = b;
            g = p.nesterov ? fmaf(p.momentum, b, g) : b;
        }
        p.param[i] = w - p.lr * g;
    }
}

// ---- step monitor -----------------------------------------------------------------
// A training loop's bookkeeping on the device, so that no step waits for the
// host (src/step_monitor.rs): state = [failed_at, source, value, loss_sum,
// metric_sum, last_loss]. For each of `count` values: add weight·value to
// state[sum_slot] (when sum_slot ≥ 0), store the value itself in
// state[last_slot] (when last_slot ≥ 0), and, when `check` is set and nothing
// has failed yet (failed_at == 0), record the first NaN or ±inf: the step
// (≥ 1), its source (first_source + i) and the value. Once failed_at is set
// the fused updates above skip (their `skip` points at it). One thread: the
// values are a loss or a few dozen gradient sums. (|v| < inf is false
// exactly for NaN and ±inf.)

struct MonitorParams {
    float* state;
    const float* values;
    int count;
    int first_source;
    int sum_slot;
    int check;
    int last_slot;
    float step;
    float weight;
};

extern "C" __global__ void monitor_watch(MonitorParams p) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    for (int i = 0; i < p.count; ++i) {
        const float v = p.values[i];
        if (p.sum_slot >= 0) p.state[p.sum_slot] += p.weight * v;
        if (p.last_slot >= 0) p.state[p.last_slot] = v;
        if (p.check && p.state[0] == 0.0f && !(fabsf(v) < -SI_NEG_INF)) {
            p.state[0] = p.step;
            p.state[1] = (float)(p.first_source + i);
            p.state[2] = v;
        }
    }
}
