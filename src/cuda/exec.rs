//! What every op's `cuda.rs` needs: the device of a set of tensors, the
//! device address of a tensor, output buffers from the pool, fills, copies
//! and the second stage of a two-stage reduction.
//!
//! Pointers taken from a tensor stay valid as long as the caller holds the
//! tensor: all work on a device is ordered on its single stream, so a buffer
//! dropped (given back to the pool) after a launch is only reused by work
//! queued behind that launch.

use super::launch::{launch, Launch};
use super::params::{DevPtr, FillParams, ReduceParams, UnaryCode, UnaryParams};
use super::{device, CudaBuffer, GpuDevice};
use crate::device::{Device, Storage};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The one device all of `ts` live on, or a [`Error::DeviceMismatch`]
/// naming the op and the two devices that differ.
pub fn common_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let first = ts.first().map(|t| t.device()).unwrap_or(Device::Cpu);
    for t in ts.iter().skip(1) {
        let d = t.device();
        if d != first {
            return Err(Error::DeviceMismatch {
                op,
                a: first.to_string(),
                b: d.to_string(),
            });
        }
    }
    Ok(first)
}

/// The open device `ordinal`.
pub(crate) fn dev(ordinal: usize) -> Result<Arc<GpuDevice>> {
    device(ordinal)
}

/// Launches `kernel` on device `ordinal` (see [`launch`]).
pub(crate) fn run<P: super::params::KernelParams + cudarc::driver::DeviceRepr>(
    ordinal: usize,
    kernel: &str,
    cfg: Launch,
    params: &P,
) -> Result<()> {
    launch(&*dev(ordinal)?, kernel, cfg, params)
}

/// The device address of a CUDA tensor's storage (an error for a CPU one).
pub(crate) fn ptr(t: &Tensor) -> Result<DevPtr> {
    match &*t.storage() {
        Storage::Cuda(b) => Ok(b.ptr()),
        Storage::Cpu(_) => Err(Error::DeviceMismatch {
            op: "cuda kernel argument",
            a: "cuda".into(),
            b: "cpu".into(),
        }),
    }
}

/// The address of an optional tensor, 0 (null: "not given") for `None`.
pub(crate) fn opt_ptr(t: Option<&Tensor>) -> Result<DevPtr> {
    t.map(ptr).transpose().map(|p| p.unwrap_or(0))
}

/// Room for `len` f32 on device `ordinal`; every element must be written
/// by the kernel that fills it.
pub(crate) fn out(ordinal: usize, len: usize) -> Result<CudaBuffer> {
    CudaBuffer::uninit(ordinal, len)
}

/// `len` zeros on device `ordinal`.
pub(crate) fn zeros(ordinal: usize, len: usize) -> Result<CudaBuffer> {
    CudaBuffer::zeros(ordinal, len)
}

/// A new leaf tensor over a device buffer.
pub(crate) fn wrap(buf: CudaBuffer, shape: impl Into<crate::shape::Shape>) -> Result<Tensor> {
    Tensor::from_storage(Storage::Cuda(buf), shape)
}

/// Element count as the kernels' `long long`.
pub(crate) fn i64_of(n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::invalid("cuda", format!("{n} elements exceed i64")))
}

/// The largest side (M, N or K) a GEMM kernel takes (`si_gemm_tile`,
/// `si_gemm_tile128`): their tile and K-step indices (up to a side + 127,
/// + 16) are 32-bit ints.
pub(crate) const GEMM_SIDE_MAX: usize = i32::MAX as usize - 256;

/// `v` as a GEMM side, or an error naming it if it exceeds [`GEMM_SIDE_MAX`].
pub(crate) fn gemm_side(v: usize, what: &str) -> Result<i32> {
    if v > GEMM_SIDE_MAX {
        return Err(Error::invalid(
            "cuda",
            format!(
                "{what} = {v} is more than the {GEMM_SIDE_MAX} a side of the GPU GEMM \
                 kernels can be (32-bit tile indices)"
            ),
        ));
    }
    i32_of(v, what)
}

/// A size as the kernels' `int`.
pub(crate) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::invalid(
            "cuda",
            format!("{what} = {v} exceeds the kernels' 32-bit int"),
        )
    })
}

/// `len` copies of `v` on device `ordinal` (`ew_fill`).
pub fn filled(ordinal: usize, len: usize, v: f32) -> Result<CudaBuffer> {
    let buf = out(ordinal, len)?;
    let p = FillParams {
        out: buf.ptr(),
        scale_by: 0,
        n: i64_of(len)?,
        value: v,
    };
    run(ordinal, "ew_fill", Launch::elementwise(len), &p)?;
    Ok(buf)
}

/// `len` copies of `v · *scale` on device `ordinal`, where `scale` is one
/// float on the device (`ew_fill`): a scalar spread without waiting for it.
pub(crate) fn filled_scaled(
    ordinal: usize,
    len: usize,
    v: f32,
    scale: &Tensor,
) -> Result<CudaBuffer> {
    let buf = out(ordinal, len)?;
    let p = FillParams {
        out: buf.ptr(),
        scale_by: ptr(scale)?,
        n: i64_of(len)?,
        value: v,
    };
    run(ordinal, "ew_fill", Launch::elementwise(len), &p)?;
    Ok(buf)
}

/// Copies `src` into `dst`'s storage (same device, same element count), as
/// `dst = 1·src` through the unary kernel (bit-exact for every finite value).
pub(crate) fn copy(src: &Tensor, dst: &Tensor) -> Result<()> {
    let Device::Cuda(n) = common_device("assign", &[src, dst])? else {
        return Err(Error::invalid("cuda copy", "both tensors must be on a GPU"));
    };
    if src.numel() != dst.numel() {
        return Err(Error::shape("assign", dst.shape(), src.shape()));
    }
    let p = UnaryParams {
        x: ptr(src)?,
        out: ptr(dst)?,
        n: i64_of(src.numel())?,
        op: UnaryCode::Scale as i32,
        p0: 1.0,
        p1: 0.0,
    };
    run(n, "ew_unary_fwd", Launch::elementwise(src.numel()), &p)
}

/// Second stage of a two-stage reduction: the `blocks` partial sums in
/// `partials` (written by a `*_fwd` or `reduce_sum` launch with
/// `Launch::elementwise`) added by one block into `dst` (one f32).
pub(crate) fn finish_sum(
    d: &GpuDevice,
    partials: &CudaBuffer,
    blocks: usize,
    dst: DevPtr,
) -> Result<()> {
    let p = ReduceParams {
        x: partials.ptr(),
        out: dst,
        n: i64_of(blocks)?,
        scale: 1.0,
        only_non_finite: 0,
    };
    launch(d, "reduce_sum", Launch::per_item(1)?, &p)
}

/// `scale · Σ x` over the `n` floats at `x`, written to `dst` (one f32):
/// `reduce_sum` over a grid, then over the grid's partial sums. No atomics,
/// so the result is the same run after run.
pub(crate) fn sum_into(ordinal: usize, x: DevPtr, n: usize, scale: f32, dst: DevPtr) -> Result<()> {
    reduce_into(ordinal, x, n, scale, false, dst)
}

/// The sum of only the NaN and ±inf among the `n` floats at `x`, written
/// to `dst`: 0 when every element is finite, NaN or ±inf when one is not.
/// The NaN watch over a gradient: unlike a plain sum, large finite
/// elements cannot overflow it into a false alarm.
pub(crate) fn non_finite_sum_into(ordinal: usize, x: DevPtr, n: usize, dst: DevPtr) -> Result<()> {
    reduce_into(ordinal, x, n, 1.0, true, dst)
}

fn reduce_into(
    ordinal: usize,
    x: DevPtr,
    n: usize,
    scale: f32,
    only_non_finite: bool,
    dst: DevPtr,
) -> Result<()> {
    let d = dev(ordinal)?;
    let cfg = Launch::elementwise(n);
    let partials = out(ordinal, cfg.blocks())?;
    let p = ReduceParams {
        x,
        out: partials.ptr(),
        n: i64_of(n)?,
        scale,
        only_non_finite: only_non_finite as i32,
    };
    launch(&d, "reduce_sum", cfg, &p)?;
    // The partials are 0 or non-finite already; a plain sum keeps that.
    finish_sum(&d, &partials, cfg.blocks(), dst)
}

/// [`non_finite_sum_into`] of each tensor (all on device `ordinal`), with
/// one copy to the host for all of them: a non-zero entry marks a tensor
/// holding a NaN or infinity, found without copying the tensors.
pub(crate) fn non_finite_sums(ordinal: usize, ts: &[&Tensor]) -> Result<Vec<f32>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let dst = out(ordinal, ts.len())?;
    for (i, t) in ts.iter().enumerate() {
        non_finite_sum_into(ordinal, ptr(t)?, t.numel(), dst.ptr() + 4 * i as u64)?;
    }
    dst.to_host()
}
