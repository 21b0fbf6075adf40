//! GPU pooling (`kernels/pool.cu`): grid-stride launches, one thread per
//! output (forward, max backward) or per input pixel (average backward,
//! a gather). Max pooling keeps its argmax on the device (an `int` per
//! output, in a pooled f32-sized buffer) and its backward scatters with
//! `atomicAdd` into a zeroed gradient.

use super::cpu::PoolGeom;
use crate::cuda::exec::{i32_of, i64_of, out, ptr, run, zeros};
use crate::cuda::launch::Launch;
use crate::cuda::params::PoolParams;
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

fn params(g: &PoolGeom) -> Result<PoolParams> {
    Ok(PoolParams {
        planes: i64_of(g.planes)?,
        h: i32_of(g.h, "height")?,
        w: i32_of(g.w, "width")?,
        oh: i32_of(g.oh, "output height")?,
        ow: i32_of(g.ow, "output width")?,
        kh: i32_of(g.kh, "kernel height")?,
        kw: i32_of(g.kw, "kernel width")?,
        stride_h: i32_of(g.sh, "stride")?,
        stride_w: i32_of(g.sw, "stride")?,
        pad_h: i32_of(g.ph, "padding")?,
        pad_w: i32_of(g.pw, "padding")?,
        // PyTorch's default, as on the CPU: divide by kh·kw.
        count_include_pad: 1,
        accumulate: 0,
        ..PoolParams::default()
    })
}

/// Max pool forward: (y, argmax). The argmax buffer holds one i32 per
/// output (the winner's index inside its plane), stored in f32-sized slots.
pub(crate) fn max_forward(
    ordinal: usize,
    g: &PoolGeom,
    x: &Tensor,
) -> Result<(CudaBuffer, CudaBuffer)> {
    let n_out = g.planes * g.out_plane();
    let y = out(ordinal, n_out)?;
    let arg = out(ordinal, n_out)?;
    let p = PoolParams {
        x: ptr(x)?,
        y: y.ptr(),
        argmax: arg.ptr(),
        ..params(g)?
    };
    run(ordinal, "maxpool2d_fwd", Launch::elementwise(n_out), &p)?;
    Ok((y, arg))
}

/// Max pool backward: dx[argmax] += dy, into a zeroed dx.
pub(crate) fn max_backward(
    ordinal: usize,
    g: &PoolGeom,
    argmax: &CudaBuffer,
    gy: &Tensor,
) -> Result<CudaBuffer> {
    let dx = zeros(ordinal, g.planes * g.in_plane())?;
    let p = PoolParams {
        argmax: argmax.ptr(),
        dy: ptr(gy)?,
        dx: dx.ptr(),
        ..params(g)?
    };
    let n_out = g.planes * g.out_plane();
    run(ordinal, "maxpool2d_bwd", Launch::elementwise(n_out), &p)?;
    Ok(dx)
}

/// Average pool forward.
pub(crate) fn avg_forward(ordinal: usize, g: &PoolGeom, x: &Tensor) -> Result<CudaBuffer> {
    let n_out = g.planes * g.out_plane();
    let y = out(ordinal, n_out)?;
    let p = PoolParams {
        x: ptr(x)?,
        y: y.ptr(),
        ..params(g)?
    };
    run(ordinal, "avgpool2d_fwd", Launch::elementwise(n_out), &p)?;
    Ok(y)
}

/// Average pool backward (each input gathers dy/(kh·kw) from the windows
/// covering it; every element written).
pub(crate) fn avg_backward(ordinal: usize, g: &PoolGeom, gy: &Tensor) -> Result<CudaBuffer> {
    let n_in = g.planes * g.in_plane();
    let dx = out(ordinal, n_in)?;
    let p = PoolParams {
        dy: ptr(gy)?,
        dx: dx.ptr(),
        ..params(g)?
    };
    run(ordinal, "avgpool2d_bwd", Launch::elementwise(n_in), &p)?;
    Ok(dx)
}
