//! GPU launches for the element-wise ops (`kernels/elementwise.cu`): one
//! grid-stride launch per op, the op picked by a code in the params struct.

use super::{BinaryOp, UnaryOp};
use crate::cuda::exec::{i32_of, i64_of, out, ptr, run};
use crate::cuda::launch::Launch;
use crate::cuda::params::{
    BiasAddParams, BinaryCode, BinaryParams, ClampChannelsParams, UnaryBwdParams, UnaryCode,
    UnaryParams,
};
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

/// `a (op) b`, same shapes, both on device `ordinal`.
pub(crate) fn binary(ordinal: usize, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<CudaBuffer> {
    let n = a.numel();
    let y = out(ordinal, n)?;
    let p = BinaryParams {
        a: ptr(a)?,
        b: ptr(b)?,
        out: y.ptr(),
        n: i64_of(n)?,
        op: BinaryCode::from_op(op) as i32,
    };
    run(ordinal, "ew_binary_fwd", Launch::elementwise(n), &p)?;
    Ok(y)
}

/// `op(x)`.
pub(crate) fn unary(ordinal: usize, x: &Tensor, op: UnaryOp) -> Result<CudaBuffer> {
    let n = x.numel();
    let y = out(ordinal, n)?;
    let (code, p0, p1) = UnaryCode::from_op(op);
    let p = UnaryParams {
        x: ptr(x)?,
        out: y.ptr(),
        n: i64_of(n)?,
        op: code as i32,
        p0,
        p1,
    };
    run(ordinal, "ew_unary_fwd", Launch::elementwise(n), &p)?;
    Ok(y)
}

/// dL/dx of `y = op(x)` from g = dL/dy (the kernel reads x or y as the
/// rule needs; see the table in `mod.rs`).
pub(crate) fn unary_backward(
    ordinal: usize,
    x: &Tensor,
    y: &Tensor,
    g: &Tensor,
    op: UnaryOp,
) -> Result<CudaBuffer> {
    let n = g.numel();
    let gx = out(ordinal, n)?;
    let (code, p0, p1) = UnaryCode::from_op(op);
    let p = UnaryBwdParams {
        x: ptr(x)?,
        y: ptr(y)?,
        g: ptr(g)?,
        gx: gx.ptr(),
        n: i64_of(n)?,
        op: code as i32,
        p0,
        p1,
    };
    run(ordinal, "ew_unary_bwd", Launch::elementwise(n), &p)?;
    Ok(gx)
}

/// `x + bias[c]` for x viewed as `[N, channels, inner]` (`inner` = 1 for
/// the rows of a linear layer, H·W for images).
pub(crate) fn bias_add(
    ordinal: usize,
    x: &Tensor,
    bias: &Tensor,
    channels: usize,
    inner: usize,
) -> Result<CudaBuffer> {
    let n = x.numel();
    let y = out(ordinal, n)?;
    let p = BiasAddParams {
        x: ptr(x)?,
        bias: ptr(bias)?,
        out: y.ptr(),
        n: i64_of(n)?,
        channels: i32_of(channels.max(1), "channels")?,
        inner: i32_of(inner.max(1), "inner size")?,
    };
    run(ordinal, "bias_add_fwd", Launch::elementwise(n), &p)?;
    Ok(y)
}

/// `x ← min(max(x, lo[c]), hi[c])` in place for x viewed as
/// `[N, C, inner]`, C = `lo.len()` (bounds checked by the caller). The
/// bounds go up as one small buffer `[lo…, hi…]`; it returns to the pool
/// when this function ends, and the pool hands it out again only to work
/// queued behind the launch, so the kernel still reads it intact.
pub(crate) fn clamp_channels(
    ordinal: usize,
    x: &Tensor,
    inner: usize,
    lo: &[f32],
    hi: &[f32],
) -> Result<()> {
    let channels = lo.len();
    let bounds = CudaBuffer::from_host(ordinal, &[lo, hi].concat())?;
    let n = x.numel();
    let p = ClampChannelsParams {
        x: ptr(x)?,
        lo: bounds.ptr(),
        hi: bounds.ptr() + 4 * channels as u64,
        n: i64_of(n)?,
        channels: i32_of(channels.max(1), "channels")?,
        inner: i32_of(inner.max(1), "inner size")?,
    };
    run(ordinal, "clamp_channels", Launch::elementwise(n), &p)
}
