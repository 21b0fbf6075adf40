//! GPU convolutions (`kernels/conv.cu`): implicit GEMMs that read their
//! operands straight from the NCHW tensors, one 64×64 output tile per block
//! of 256 threads, grid (ceil(GEMM N / 64), ceil(GEMM M / 64), split-K).
//!
//! | kernel | GEMM M | GEMM N | GEMM K |
//! |---|---|---|---|
//! | `conv2d_fwd` | Cout | batch·OH·OW | Cin·kh·kw |
//! | `conv2d_bwd_data`, `conv_transpose2d_fwd` | Cin | batch·H·W | Cout·kh·kw |
//! | `conv2d_bwd_weight` | Cout | Cin·kh·kw | batch·OH·OW (split over z) |
//!
//! Every function takes the *conv2d* geometry `g` (for a transposed conv,
//! the conv2d whose input-gradient it is, as in `mod.rs`).

use super::cpu::ConvGeom;
use crate::cuda::exec::{i32_of, out, ptr, run};
use crate::cuda::launch::{split_k_for, Launch};
use crate::cuda::params::{ConvParams, DevPtr};
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

/// Blocks that keep a large GPU busy (about four per SM on a 132-SM H100 /
/// H200); below this many output tiles the weight gradient splits K.
const TARGET_BLOCKS: usize = 4 * 132;

fn params(g: &ConvGeom) -> Result<ConvParams> {
    Ok(ConvParams {
        batch: i32_of(g.n, "batch")?,
        cin: i32_of(g.cin, "input channels")?,
        h: i32_of(g.h, "input height")?,
        w: i32_of(g.w, "input width")?,
        cout: i32_of(g.cout, "output channels")?,
        kh: i32_of(g.kh, "kernel height")?,
        kw: i32_of(g.kw, "kernel width")?,
        oh: i32_of(g.oh, "output height")?,
        ow: i32_of(g.ow, "output width")?,
        stride_h: i32_of(g.sh, "stride")?,
        stride_w: i32_of(g.sw, "stride")?,
        pad_h: i32_of(g.ph, "padding")?,
        pad_w: i32_of(g.pw, "padding")?,
        dil_h: 1,
        dil_w: 1,
        split_k: 1,
        accumulate: 0,
        ..ConvParams::default()
    })
}

/// The GEMM's N (a pixel count over the batch) must fit the kernels' int.
fn gemm_n(batch: usize, plane: usize) -> Result<usize> {
    let n = batch * plane;
    i32_of(n, "batch × pixels")?;
    Ok(n)
}

/// y = conv2d(x, w) + b: [N, Cout, OH, OW].
pub(crate) fn forward(
    ordinal: usize,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<DevPtr>,
) -> Result<CudaBuffer> {
    let y = out(ordinal, g.n * g.cout * g.out_plane())?;
    let p = ConvParams {
        x: ptr(x)?,
        weight: ptr(w)?,
        bias: bias.unwrap_or(0),
        out: y.ptr(),
        ..params(g)?
    };
    let cfg = Launch::tiles(g.cout, gemm_n(g.n, g.out_plane())?, 1)?;
    run(ordinal, "conv2d_fwd", cfg, &p)?;
    Ok(y)
}

/// dL/dx of conv2d from dL/dy `gy` (gather form, no atomics): [N, Cin, H, W].
/// With a bias over Cin this is also the transposed convolution's forward.
pub(crate) fn input_grad(
    ordinal: usize,
    g: &ConvGeom,
    gy: &Tensor,
    w: &Tensor,
    bias: Option<DevPtr>,
) -> Result<CudaBuffer> {
    let dx = out(ordinal, g.n * g.cin * g.in_plane())?;
    let p = ConvParams {
        weight: ptr(w)?,
        dy: ptr(gy)?,
        bias: bias.unwrap_or(0),
        out: dx.ptr(),
        ..params(g)?
    };
    let cfg = Launch::tiles(g.cin, gemm_n(g.n, g.in_plane())?, 1)?;
    // Same code; the name says which role it plays in a profile.
    let kernel = if bias.is_some() {
        "conv_transpose2d_fwd"
    } else {
        "conv2d_bwd_data"
    };
    run(ordinal, kernel, cfg, &p)?;
    Ok(dx)
}

/// dL/dw of conv2d from its input `x` and dL/dy `gy`: [Cout, Cin, kh, kw].
/// When the output tiles are too few to fill the GPU, the long K axis
/// (batch·OH·OW) is split over `split_k` blocks that write partial tiles to
/// a workspace, added in a fixed order by `conv2d_bwd_weight_reduce`.
pub(crate) fn weight_grad(
    ordinal: usize,
    g: &ConvGeom,
    x: &Tensor,
    gy: &Tensor,
) -> Result<CudaBuffer> {
    let (m, n) = (g.cout, g.k());
    let big_k = gemm_n(g.n, g.out_plane())?;
    i32_of(n, "Cin·kh·kw")?;
    let dw = out(ordinal, m * n)?;
    let split = split_k_for(m, n, big_k, TARGET_BLOCKS);
    let mut p = ConvParams {
        x: ptr(x)?,
        dy: ptr(gy)?,
        out: dw.ptr(),
        ..params(g)?
    };
    if split <= 1 {
        run(ordinal, "conv2d_bwd_weight", Launch::tiles(m, n, 1)?, &p)?;
        return Ok(dw);
    }
    let ws = out(ordinal, split * m * n)?;
    p.workspace = ws.ptr();
    p.split_k = i32_of(split, "split_k")?;
    run(
        ordinal,
        "conv2d_bwd_weight",
        Launch::tiles(m, n, split)?,
        &p,
    )?;
    run(
        ordinal,
        "conv2d_bwd_weight_reduce",
        Launch::elementwise(m * n),
        &p,
    )?;
    Ok(dw)
}
