// reduce.cu — reductions: sum / mean to a scalar, and per-channel sums.
//
// A full reduction is two launches of `reduce_sum`, both with SI_BLOCK
// threads per block:
//   1. grid = B blocks over the n inputs: block b writes its partial sum to
//      out[b] (each thread first sums a grid-stride slice, then the block
//      combines its threads with warp shuffles, si_block_sum);
//   2. grid = 1 block over the B partials, with `scale` = 1 (sum) or 1/n
//      (mean): writes the result to out[0].
// No atomics, so the result is the same run after run.
// With `only_non_finite` set, finite elements count as 0: the sum is then
// NaN or ±inf exactly when some element is (the NaN watch over a gradient),
// and a gradient of large finite values cannot overflow into a false alarm.
// Backward of sum/mean needs no kernel: dL/dx_i = g·scale for every i, an
// ew_fill (or a scale of a broadcast) on the host side.

struct ReduceParams {
    const float* x;
    float* out;    // gridDim.x partial sums (or the single result)
    i64 n;
    float scale;   // multiplies each block's sum
    int only_non_finite;  // 1: add only the NaN and ±inf elements
};

extern "C" __global__ void reduce_sum(ReduceParams p) {
    float acc = 0.0f;
    SI_GRID_LOOP(i, p.n) {
        const float v = p.x[i];
        acc += (p.only_non_finite && fabsf(v) < -SI_NEG_INF) ? 0.0f : v;
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) p.out[blockIdx.x] = acc * p.scale;
}

struct ChannelSumParams {
    const float* x;   // [N, C, inner]
    float* out;       // [C]
    int batch;        // N
    int channels;     // C
    int inner;        // H*W (1 for [N, F] rows: then this sums the columns)
    float scale;
    int accumulate;   // 1: out[c] += sum, 0: out[c] = sum
};

// One block per channel c (grid = C blocks): sum over every (n, position)
// of channel c. This is the bias gradient of a convolution (inner = H*W) or
// of a linear layer (inner = 1, channels = F).
extern "C" __global__ void channel_sum(ChannelSumParams p) {
    const int c = blockIdx.x;
    if (c >= p.channels) return;  // whole block leaves together
    const i64 per_channel = (i64)p.batch * p.inner;
    float acc = 0.0f;
    for (i64 j = threadIdx.x; j < per_channel; j += blockDim.x) {
        const i64 n = j / p.inner;
        const i64 s = j - n * p.inner;
        acc += p.x[(n * p.channels + c) * p.inner + s];
    }
    acc = si_block_sum(acc);
    if (threadIdx.x == 0) {
        const float v = acc * p.scale;
        p.out[c] = p.accumulate ? p.out[c] + v : v;
    }
}
