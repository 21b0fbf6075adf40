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
//! Each has a twin with a `_t128` suffix on 128×128 tiles (grid in units of
//! 128), faster on large problems, and a `_tc` one that runs the 128×128
//! tiles on tensor cores at FP32 accuracy (3xTF32), and a `_tf32` one with
//! a single TF32 product, and GEMMs of at most 8 rows (a conv into at most
//! 8 channels) have `_m8` ones; which one runs is decided per launch by
//! [`tile_for`] (the rule: [`crate::cuda::launch::conv_tile_for`];
//! `SPLITINV_CONV_TILE=64|128` forces one, `tc` opts into tensor cores;
//! `--conv-math tf32` puts the 128×128 choices on `_tf32`).
//!
//! Every function takes the *conv2d* geometry `g` (for a transposed conv,
//! the conv2d whose input-gradient it is, as in `mod.rs`).

use super::cpu::ConvGeom;
use crate::cuda::exec::{gemm_side, i32_of, out, ptr, run};
use crate::cuda::launch::{
    big_tile_min_blocks, conv_math, conv_tile, conv_tile_override, split_k_for, split_k_for_tile,
    with_math, ConvTile, Launch, TILE_BIG,
};
use crate::cuda::params::{ConvParams, DevPtr};
use crate::cuda::CudaBuffer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Blocks that keep a large GPU busy (about four per SM on a 132-SM H100 /
/// H200); below this many output tiles the weight gradient splits K.
const TARGET_BLOCKS: usize = 4 * 132;

fn params(g: &ConvGeom) -> Result<ConvParams> {
    // The k table's entry for a k past the end shifts a tap by 2^30 rows
    // and columns (SI_TAP_FAR in kernels/common.cuh) to land it outside
    // every image: that needs each padded side, with the kernel, under 2^30.
    for (side, pad, k, what) in [(g.h, g.ph, g.kh, "height"), (g.w, g.pw, g.kw, "width")] {
        let v = side + 2 * pad + k;
        if v >= 1 << 30 {
            return Err(Error::invalid(
                "cuda",
                format!(
                    "the padded input {what} and the kernel ({side} + 2·{pad} + {k} = {v} pixels) \
                     must stay under 2^30 for the GPU convolutions"
                ),
            ));
        }
    }
    // The kernels address inside one image, and inside w, with 32-bit ints
    // (kernels/conv.cu, "the operands"): refuse what would overflow them.
    i32_of(g.cin * g.in_plane(), "one input image (Cin·H·W elements)")?;
    i32_of(
        g.cout * g.out_plane(),
        "one output image (Cout·OH·OW elements)",
    )?;
    i32_of(g.cout * g.k(), "the weight (Cout·Cin·kh·kw elements)")?;
    // The forward's k table holds a tap's offset from the pixel's tap (0, 0),
    // up to Cin·H·W + (kh − 1)·W + kw − 1 for a tap that lies in the image.
    i32_of(
        g.cin * g.in_plane() + g.kh * g.w + g.kw,
        "one input image and a kernel's reach past it (Cin·H·W + kh·W + kw)",
    )?;
    // A pixel's tap (0, 0) as an offset from its image's first element,
    // negative in the padding: up to (H + ph)·W + W + pw in the forward, and
    // in the input gradient at stride 1 up to (H + ph)·OW + W + pw, from
    // which k table entries take up to kh·OW + kw.
    i32_of(
        (g.h + g.ph + g.kh) * g.w.max(g.ow) + g.w + g.pw + g.kw,
        "a padded image's rows and a kernel's reach ((H + ph + kh)·max(W, OW) + W + pw + kw)",
    )?;
    // Every side of the three GEMMs, with room for the tile and K-step
    // arithmetic past it (m0 + 127, k0 + 16) to stay a positive int.
    for (v, what) in [
        (g.cin, "input channels"),
        (g.cout, "output channels"),
        (g.k(), "Cin·kh·kw"),
        (g.cout * g.kh * g.kw, "Cout·kh·kw"),
        (g.n * g.in_plane(), "batch × input pixels"),
        (g.n * g.out_plane(), "batch × output pixels"),
    ] {
        gemm_side(v, what)?;
    }
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

/// [`conv_tile`] for a launch on GPU `ordinal`, see [`on_device`].
fn tile_for(ordinal: usize, m: usize, n: usize, split_k: usize) -> Result<ConvTile> {
    on_device(ordinal, conv_tile(m, n, split_k)?)
}

/// `tile` where GPU `ordinal` can run it. The tensor-core kernels need
/// compute capability 8.0 or later: before that, `tc` (a benchmark's
/// explicit request) is an error, not a wrong result, and TF32 (a
/// permission to round, `--conv-math tf32`) falls back to the FP32 kernels.
fn on_device(ordinal: usize, tile: ConvTile) -> Result<ConvTile> {
    if !tile.needs_tensor_cores() {
        return Ok(tile);
    }
    let (major, minor) = crate::cuda::device(ordinal)?.compute_capability();
    match tile {
        _ if major >= 8 => Ok(tile),
        ConvTile::Tf32 => Ok(ConvTile::T128),
        ConvTile::Tf32Wide => Ok(ConvTile::T128Wide),
        _ => Err(Error::invalid(
            "SPLITINV_CONV_TILE",
            format!(
                "tc needs TF32 tensor cores (compute capability 8.0 or later); cuda:{ordinal} is {major}.{minor}: use 64, 128 or unset it"
            ),
        )),
    }
}

/// The GEMM's N (a pixel count over the batch) must fit the kernels' int.
fn gemm_n(batch: usize, plane: usize) -> Result<usize> {
    let n = batch * plane;
    gemm_side(n, "batch × pixels")?;
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
    let n = gemm_n(g.n, g.out_plane())?;
    let tile = tile_for(ordinal, g.cout, n, 1)?;
    let cfg = Launch::conv_tiles(tile, g.cout, n, 1)?;
    run(ordinal, &tile.kernel("conv2d_fwd"), cfg, &p)?;
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
    let n = gemm_n(g.n, g.in_plane())?;
    let tile = tile_for(ordinal, g.cin, n, 1)?;
    let cfg = Launch::conv_tiles(tile, g.cin, n, 1)?;
    // Same code; the name says which role it plays in a profile.
    let kernel = if bias.is_some() {
        tile.kernel("conv_transpose2d_fwd")
    } else {
        tile.kernel("conv2d_bwd_data")
    };
    run(ordinal, &kernel, cfg, &p)?;
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
    let (tile, split) =
        weight_grad_plan(m, n, big_k, conv_tile_override()?, big_tile_min_blocks()?);
    let tile = on_device(ordinal, with_math(tile, conv_math()?))?;
    let kernel = tile.kernel("conv2d_bwd_weight");
    let mut p = ConvParams {
        x: ptr(x)?,
        dy: ptr(gy)?,
        out: dw.ptr(),
        ..params(g)?
    };
    if split <= 1 {
        run(ordinal, &kernel, Launch::conv_tiles(tile, m, n, 1)?, &p)?;
        return Ok(dw);
    }
    let ws = out(ordinal, split * m * n)?;
    p.workspace = ws.ptr();
    p.split_k = i32_of(split, "split_k")?;
    run(ordinal, &kernel, Launch::conv_tiles(tile, m, n, split)?, &p)?;
    run(
        ordinal,
        "conv2d_bwd_weight_reduce",
        Launch::elementwise(m * n),
        &p,
    )?;
    Ok(dw)
}

/// Tile and split-K of the weight gradient (GEMM `m`×`n`, long axis `k`).
///
/// The split is chosen for each tile size: for 128×128 tiles it aims at
/// `min_blocks` blocks ([`crate::cuda::launch::MIN_T128_BLOCKS`], two per SM, unless
/// `SPLITINV_CONV_BIG_MIN_BLOCKS` says otherwise; fewer, larger chunks and a
/// smaller workspace), and [`crate::cuda::launch::conv_tile_for`] then
/// decides with those blocks; the 64×64 kernel keeps its own split, aiming
/// at `TARGET_BLOCKS`.
fn weight_grad_plan(
    m: usize,
    n: usize,
    k: usize,
    forced: Option<ConvTile>,
    min_blocks: usize,
) -> (ConvTile, usize) {
    let split_big = split_k_for_tile(m, n, k, min_blocks, TILE_BIG);
    let tile = crate::cuda::launch::conv_tile_for_min(m, n, split_big, forced, min_blocks);
    match tile {
        ConvTile::T128 | ConvTile::Tc | ConvTile::Tf32 => (tile, split_big),
        // (The size rule never answers M8 or a wide tile; the weight
        // gradient has no such kernels.)
        ConvTile::T64
        | ConvTile::M8
        | ConvTile::T128Wide
        | ConvTile::TcWide
        | ConvTile::Tf32Wide => (ConvTile::T64, split_k_for(m, n, k, TARGET_BLOCKS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::MIN_T128_BLOCKS;

    /// The kernels' 32-bit offsets inside an image and inside w: a geometry
    /// that would overflow them is refused, naming what is too large.
    #[test]
    fn images_too_large_for_32_bit_offsets_are_refused() {
        let g = ConvGeom {
            n: 2,
            cin: 3,
            h: 32,
            w: 32,
            cout: 8,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: 1,
            pw: 1,
            oh: 32,
            ow: 32,
        };
        assert!(params(&g).is_ok());
        let big_in = ConvGeom {
            cin: 4,
            h: 1 << 15,
            w: 1 << 14,
            oh: 8,
            ow: 8,
            ..g
        };
        let e = params(&big_in).unwrap_err().to_string();
        assert!(
            e.contains("one input image") && e.contains("2147483648"),
            "{e}"
        );
        let big_out = ConvGeom {
            cout: 1 << 12,
            oh: 1 << 10,
            ow: 1 << 9,
            ..g
        };
        let e = params(&big_out).unwrap_err().to_string();
        assert!(e.contains("one output image"), "{e}");
        let big_w = ConvGeom {
            cin: 1 << 14,
            cout: 1 << 14,
            kh: 3,
            kw: 3,
            h: 4,
            w: 4,
            oh: 1,
            ow: 1,
            ..g
        };
        let e = params(&big_w).unwrap_err().to_string();
        assert!(e.contains("the weight"), "{e}");
        // A GEMM side within one tile of 2^31: m0 + 127 would wrap.
        let long_batch = ConvGeom {
            n: (i32::MAX as usize - 100) / 4,
            cin: 1,
            h: 2,
            w: 2,
            cout: 1,
            oh: 2,
            ow: 2,
            ..g
        };
        let e = params(&long_batch).unwrap_err().to_string();
        assert!(e.contains("batch × input pixels"), "{e}");
        assert!(gemm_n(long_batch.n, 4).is_err());
        // Four channels of one row of 2^28 pixels under a 5-tall kernel
        // padded by 2: the image fits, but tap (ci = 3, ky = 4) sits
        // 3·2^28 + 4·2^28 elements from tap 0 (the k table's offset), and
        // with the kernel's reach past the image that passes an int.
        let tall_reach = ConvGeom {
            n: 1,
            cin: 4,
            h: 1,
            w: 1 << 28,
            cout: 1,
            kh: 5,
            kw: 1,
            ph: 2,
            pw: 0,
            oh: 1,
            ow: 1 << 28,
            ..g
        };
        let e = params(&tall_reach).unwrap_err().to_string();
        assert!(e.contains("a kernel's reach"), "{e}");
        // Rows of 600 M pixels padded by one row: the image and its taps fit
        // an int. The padded rows (−1..1) would too, but the check bounds
        // every tap's offset by (H + ph + kh)·max(W, OW) + W + pw + kw (here
        // 3·600 M), which does not: it refuses a little more than it must.
        let padded_rows = ConvGeom {
            n: 1,
            cin: 1,
            h: 1,
            w: 600_000_000,
            cout: 1,
            kh: 1,
            kw: 1,
            ph: 1,
            pw: 0,
            oh: 3,
            ow: 600_000_000,
            ..g
        };
        let e = params(&padded_rows).unwrap_err().to_string();
        assert!(e.contains("a padded image's rows"), "{e}");
        // One row of 2^30 pixels: every int holds it, but not the table's
        // 2^30-pixel shift for a k past the end.
        let wide_row = ConvGeom {
            n: 1,
            cin: 1,
            h: 1,
            w: 1 << 30,
            cout: 1,
            kh: 1,
            kw: 1,
            ph: 0,
            pw: 0,
            oh: 1,
            ow: 1 << 30,
            ..g
        };
        let e = params(&wide_row).unwrap_err().to_string();
        assert!(
            e.contains("padded input width") && e.contains("2^30"),
            "{e}"
        );
    }

    #[test]
    fn weight_grad_plan_per_tile() {
        // CIFAR conv22 weight gradient (128 → 128, 3×3) at batch 256 on
        // 16×16: 9 big tiles, split to reach 2·132 blocks.
        let (m, n, k) = (128, 128 * 9, 256 * 256);
        let (t, s) = weight_grad_plan(m, n, k, None, MIN_T128_BLOCKS);
        assert_eq!((t, s), (ConvTile::T128, MIN_T128_BLOCKS.div_ceil(9)));
        // Batch 4: K too short to split far enough, the 64 kernel with its split.
        let (t, s) = weight_grad_plan(m, n, 4 * 256, None, MIN_T128_BLOCKS);
        assert_eq!(
            (t, s),
            (ConvTile::T64, split_k_for(m, n, 4 * 256, TARGET_BLOCKS))
        );
        // Forced either way; the split follows the tile.
        let (t, s) = weight_grad_plan(m, n, 4 * 256, Some(ConvTile::T128), MIN_T128_BLOCKS);
        assert_eq!(t, ConvTile::T128);
        assert_eq!(
            s,
            split_k_for_tile(m, n, 4 * 256, MIN_T128_BLOCKS, TILE_BIG)
        );
        let (t, s) = weight_grad_plan(m, n, k, Some(ConvTile::T64), MIN_T128_BLOCKS);
        assert_eq!((t, s), (ConvTile::T64, split_k_for(m, n, k, TARGET_BLOCKS)));
        // Tensor cores where the rule picks 128, with the 128 split.
        let (t, s) = weight_grad_plan(m, n, k, Some(ConvTile::Tc), MIN_T128_BLOCKS);
        assert_eq!((t, s), (ConvTile::Tc, MIN_T128_BLOCKS.div_ceil(9)));
        let (t, _) = weight_grad_plan(m, n, 4 * 256, Some(ConvTile::Tc), MIN_T128_BLOCKS);
        assert_eq!(t, ConvTile::T64);
    }
}
