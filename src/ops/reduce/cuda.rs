//! GPU reductions (`kernels/reduce.cu`): a full sum in two launches of
//! `reduce_sum` (grid partials, then one block over them), and per-channel
//! sums with `channel_sum` (one block per channel), the bias gradient of
//! conv and linear layers.

use crate::cuda::exec::{i32_of, out, ptr, run, sum_into};
use crate::cuda::launch::Launch;
use crate::cuda::params::ChannelSumParams;
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

/// `factor · Σ x` as a one-element device buffer.
pub(crate) fn sum(ordinal: usize, x: &Tensor, factor: f32) -> Result<CudaBuffer> {
    let y = out(ordinal, 1)?;
    sum_into(ordinal, ptr(x)?, x.numel(), factor, y.ptr())?;
    Ok(y)
}

/// `out[c] = Σ_{n, s} x[n, c, s]` for x viewed as `[batch, channels, inner]`.
pub(crate) fn channel_sums(
    ordinal: usize,
    x: &Tensor,
    batch: usize,
    channels: usize,
    inner: usize,
) -> Result<CudaBuffer> {
    let y = out(ordinal, channels)?;
    let p = ChannelSumParams {
        x: ptr(x)?,
        out: y.ptr(),
        batch: i32_of(batch, "batch")?,
        channels: i32_of(channels, "channels")?,
        inner: i32_of(inner, "inner size")?,
        scale: 1.0,
        accumulate: 0,
    };
    run(ordinal, "channel_sum", Launch::per_item(channels)?, &p)?;
    Ok(y)
}
