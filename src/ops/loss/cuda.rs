//! GPU losses (`kernels/loss.cu`). Each forward kernel writes one partial
//! sum per block of a grid-stride launch, already scaled; one more block of
//! `reduce_sum` adds the partials into the one-element result, so the value
//! never leaves the device. The backward kernels read the upstream gradient
//! `g` from device memory for the same reason.

use crate::cuda::exec::{finish_sum, i32_of, i64_of, out, ptr, run};
use crate::cuda::launch::Launch;
use crate::cuda::params::{CrossEntropyParams, MseParams, SsimParams, TvParams};
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

/// Runs a `*_fwd` loss kernel over `items` with `set` filling its params
/// (given the partial-sum buffer's address), then sums the partials.
fn two_stage<P: crate::cuda::params::KernelParams + cudarc::driver::DeviceRepr>(
    ordinal: usize,
    kernel: &str,
    items: usize,
    set: impl FnOnce(u64) -> P,
) -> Result<CudaBuffer> {
    let cfg = Launch::elementwise(items);
    let partials = out(ordinal, cfg.blocks())?;
    run(ordinal, kernel, cfg, &set(partials.ptr()))?;
    let y = out(ordinal, 1)?;
    finish_sum(
        &*crate::cuda::exec::dev(ordinal)?,
        &partials,
        cfg.blocks(),
        y.ptr(),
    )?;
    Ok(y)
}

/// mean((a − b)²) as a one-element buffer.
pub(crate) fn mse(ordinal: usize, a: &Tensor, b: &Tensor) -> Result<CudaBuffer> {
    let n = a.numel();
    let (pa, pb) = (ptr(a)?, ptr(b)?);
    let nn = i64_of(n)?;
    two_stage(ordinal, "mse_fwd", n, |partials| MseParams {
        a: pa,
        b: pb,
        out: partials,
        n: nn,
        scale: 1.0 / n as f32,
        ..MseParams::default()
    })
}

/// (dL/da, dL/db) of the mean squared error, each only if asked.
pub(crate) fn mse_grad(
    ordinal: usize,
    a: &Tensor,
    b: &Tensor,
    g: &Tensor,
    need_a: bool,
    need_b: bool,
) -> Result<(Option<CudaBuffer>, Option<CudaBuffer>)> {
    let n = a.numel();
    let ga = need_a.then(|| out(ordinal, n)).transpose()?;
    let gb = need_b.then(|| out(ordinal, n)).transpose()?;
    let p = MseParams {
        a: ptr(a)?,
        b: ptr(b)?,
        g: ptr(g)?,
        ga: ga.as_ref().map_or(0, |b| b.ptr()),
        gb: gb.as_ref().map_or(0, |b| b.ptr()),
        n: i64_of(n)?,
        scale: 1.0 / n as f32,
        ..MseParams::default()
    };
    run(ordinal, "mse_bwd", Launch::elementwise(n), &p)?;
    Ok((ga, gb))
}

/// The labels as the kernels' `int`s, on the device (an f32-sized slot each,
/// holding the integer's bits).
pub(crate) fn upload_labels(ordinal: usize, labels: &[usize]) -> Result<CudaBuffer> {
    let bits: Vec<f32> = labels
        .iter()
        .map(|&l| i32_of(l, "label").map(|v| f32::from_bits(v as u32)))
        .collect::<Result<_>>()?;
    CudaBuffer::from_host(ordinal, &bits)
}

fn ce_params(
    logits: &Tensor,
    labels: &CudaBuffer,
    rows: usize,
    classes: usize,
) -> Result<CrossEntropyParams> {
    Ok(CrossEntropyParams {
        logits: ptr(logits)?,
        labels: labels.ptr(),
        rows: i32_of(rows, "rows")?,
        classes: i32_of(classes, "classes")?,
        scale: 1.0 / rows as f32,
        ..CrossEntropyParams::default()
    })
}

/// Mean softmax cross-entropy; one warp per row, so the launch counts
/// 32 threads per row.
pub(crate) fn cross_entropy(
    ordinal: usize,
    logits: &Tensor,
    labels: &CudaBuffer,
    rows: usize,
    classes: usize,
) -> Result<CudaBuffer> {
    let base = ce_params(logits, labels, rows, classes)?;
    rows_sum(ordinal, "ce_fwd", rows, base)
}

/// The number of rows whose largest logit is at their label, as a
/// one-element buffer (`ce_hits`, one warp per row, then reduce_sum).
pub(crate) fn hits(
    ordinal: usize,
    logits: &Tensor,
    labels: &CudaBuffer,
    rows: usize,
    classes: usize,
) -> Result<CudaBuffer> {
    let base = ce_params(logits, labels, rows, classes)?;
    rows_sum(
        ordinal,
        "ce_hits",
        rows,
        CrossEntropyParams { scale: 1.0, ..base },
    )
}

/// A one-warp-per-row kernel's per-block partials (32 threads per row),
/// added up into one float.
fn rows_sum(
    ordinal: usize,
    kernel: &str,
    rows: usize,
    base: CrossEntropyParams,
) -> Result<CudaBuffer> {
    two_stage(ordinal, kernel, rows * 32, |partials| CrossEntropyParams {
        out: partials,
        ..base
    })
}

/// dL/dlogits = g·(softmax − onehot)/rows.
pub(crate) fn cross_entropy_grad(
    ordinal: usize,
    logits: &Tensor,
    labels: &CudaBuffer,
    g: &Tensor,
    rows: usize,
    classes: usize,
) -> Result<CudaBuffer> {
    let dz = out(ordinal, rows * classes)?;
    let p = CrossEntropyParams {
        g: ptr(g)?,
        dlogits: dz.ptr(),
        ..ce_params(logits, labels, rows, classes)?
    };
    run(ordinal, "ce_bwd", Launch::elementwise(rows * 32), &p)?;
    Ok(dz)
}

/// TV geometry and form: `Some((beta, eps))` for the power form.
pub(crate) struct TvGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub power: Option<(f32, f32)>,
}

fn tv_params(x: &Tensor, t: &TvGeom) -> Result<TvParams> {
    let (planes, h, w) = (t.planes, t.h, t.w);
    let mut p = TvParams {
        x: ptr(x)?,
        planes: i64_of(planes)?,
        h: i32_of(h, "height")?,
        w: i32_of(w, "width")?,
        ..TvParams::default()
    };
    match t.power {
        None => {
            // Two means: over the vertical and over the horizontal pairs.
            p.weight_h = 1.0 / (planes * (h - 1) * w) as f32;
            p.weight_w = 1.0 / (planes * h * (w - 1)) as f32;
        }
        Some((beta, eps)) => {
            p.scale = 1.0 / (planes * (h - 1) * (w - 1)) as f32;
            p.beta = beta;
            p.eps = eps;
        }
    }
    Ok(p)
}

/// Total variation (squared or power form) as a one-element buffer.
pub(crate) fn tv(ordinal: usize, x: &Tensor, t: &TvGeom) -> Result<CudaBuffer> {
    let base = tv_params(x, t)?;
    let kernel = if t.power.is_some() {
        "tv_pow_fwd"
    } else {
        "tv_sq_fwd"
    };
    two_stage(ordinal, kernel, x.numel(), |partials| TvParams {
        out: partials,
        ..base
    })
}

/// dL/dx of the total variation (every element written).
pub(crate) fn tv_grad(ordinal: usize, x: &Tensor, t: &TvGeom, g: &Tensor) -> Result<CudaBuffer> {
    let gx = out(ordinal, x.numel())?;
    let p = TvParams {
        g: ptr(g)?,
        gx: gx.ptr(),
        ..tv_params(x, t)?
    };
    let kernel = if t.power.is_some() {
        "tv_pow_bwd"
    } else {
        "tv_sq_bwd"
    };
    run(ordinal, kernel, Launch::elementwise(x.numel()), &p)?;
    Ok(gx)
}

/// What an SSIM launch needs besides the two images.
pub(crate) struct SsimGeom<'a> {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub win: &'a [f32],
    pub c1: f32,
    pub c2: f32,
    pub cov_norm: f32,
}

/// The device buffers of one SSIM evaluation: the window, the row-filtered
/// moments `tmp` [5, planes, H, Wv] and the filtered moments `stats`
/// [5, planes, Hv, Wv], filled by `ssim_filter_h` then `ssim_filter_v`.
struct SsimRun {
    p: SsimParams,
    _win: CudaBuffer,
    tmp: CudaBuffer,
    stats: CudaBuffer,
    /// Positions: planes·Hv·Wv.
    positions: usize,
}

fn ssim_stats(ordinal: usize, a: &Tensor, b: &Tensor, s: &SsimGeom) -> Result<SsimRun> {
    let k = s.win.len();
    let (hv, wv) = (s.h + 1 - k, s.w + 1 - k);
    let positions = s.planes * hv * wv;
    let win = CudaBuffer::from_host(ordinal, s.win)?;
    let tmp = out(ordinal, 5 * s.planes * s.h * wv)?;
    let stats = out(ordinal, 5 * positions)?;
    let p = SsimParams {
        a: ptr(a)?,
        b: ptr(b)?,
        win: win.ptr(),
        tmp: tmp.ptr(),
        stats: stats.ptr(),
        planes: i64_of(s.planes)?,
        h: i32_of(s.h, "height")?,
        w: i32_of(s.w, "width")?,
        k: i32_of(k, "window")?,
        c1: s.c1,
        c2: s.c2,
        cov_norm: s.cov_norm,
        scale: 1.0 / positions as f32,
        ..SsimParams::default()
    };
    run(
        ordinal,
        "ssim_filter_h",
        Launch::elementwise(s.planes * s.h * wv),
        &p,
    )?;
    run(
        ordinal,
        "ssim_filter_v",
        Launch::elementwise(5 * positions),
        &p,
    )?;
    Ok(SsimRun {
        p,
        _win: win,
        tmp,
        stats,
        positions,
    })
}

/// Mean SSIM over planes and valid positions, as a one-element buffer.
pub(crate) fn ssim(ordinal: usize, a: &Tensor, b: &Tensor, s: &SsimGeom) -> Result<CudaBuffer> {
    let r = ssim_stats(ordinal, a, b, s)?;
    let base = r.p;
    two_stage(ordinal, "ssim_map_fwd", r.positions, |partials| {
        SsimParams {
            out: partials,
            ..base
        }
    })
}

/// (dL/da, dL/db) of the mean SSIM, each only if asked: the statistics are
/// recomputed, then map backward, adjoint column filter, adjoint row filter.
pub(crate) fn ssim_grad(
    ordinal: usize,
    a: &Tensor,
    b: &Tensor,
    s: &SsimGeom,
    g: &Tensor,
    need_a: bool,
    need_b: bool,
) -> Result<(Option<CudaBuffer>, Option<CudaBuffer>)> {
    let r = ssim_stats(ordinal, a, b, s)?;
    let n = a.numel();
    let dstats = out(ordinal, r.stats.len())?;
    let ga = need_a.then(|| out(ordinal, n)).transpose()?;
    let gb = need_b.then(|| out(ordinal, n)).transpose()?;
    let p = SsimParams {
        dstats: dstats.ptr(),
        g: ptr(g)?,
        ga: ga.as_ref().map_or(0, |b| b.ptr()),
        gb: gb.as_ref().map_or(0, |b| b.ptr()),
        ..r.p
    };
    run(
        ordinal,
        "ssim_map_bwd",
        Launch::elementwise(r.positions),
        &p,
    )?;
    run(
        ordinal,
        "ssim_filter_v_adj",
        Launch::elementwise(r.tmp.len()),
        &p,
    )?;
    run(ordinal, "ssim_filter_h_adj", Launch::elementwise(n), &p)?;
    Ok((ga, gb))
}
