//! CPU convolution kernels: im2col / col2im around the packed GEMM.
//!
//! Everything is phrased as conv2d (input x: [N, Cin, H, W], weight
//! [Cout, Cin, kh, kw], output y: [N, Cout, OH, OW]) with K = Cin·kh·kw:
//!
//! - forward:      y_n  = W · col(x_n)            ([Cout, K] · [K, OH·OW])
//! - input-grad:   dx_n = col2im(Wᵀ · g_n)        ([K, Cout] · [Cout, OH·OW])
//! - weight-grad:  dW  += g_n · col(x_n)ᵀ         ([Cout, OH·OW] · [OH·OW, K])
//!
//! conv_transpose2d runs the same three kernels with roles swapped.
//!
//! 3×3 stride-1 "same" convolutions with many channels take another route
//! for the forward and the input-gradient: Winograd F(2×2, 3×3) in
//! `winograd.rs` (2.25× fewer multiplies); the dispatch is at the top of
//! [`conv2d_forward`] and [`conv2d_input_grad`]. Stride-1 convolutions with
//! at most 4 output channels (forward, weight-gradient) or 2–4 input
//! channels against at most 16 output channels (input-gradient) take the
//! direct kernels of `direct.rs` instead, which skip the column matrix
//! (measured numbers and the reasons for these bounds there).
//!
//! Data movement, which is what this file is about:
//! - The column matrix is never built for a whole image at once: it is built
//!   for a *tile* of output pixels small enough (about 1 MiB) to stay in the
//!   core's L2 cache, so the GEMM reads it back from cache, not from memory.
//! - 1×1 stride-1 unpadded convolutions need no column matrix at all: the
//!   image itself, [Cin, H·W], is the matrix.
//! - "Same" padded stride-1 convolutions (the CIFAR net's 3×3 pad 1) fill a
//!   column row with one long copy plus a few zeroed border columns.
//! - Scratch buffers are per thread and reused across calls (no page faults
//!   from fresh allocations on every step).
//! - Work is split across the batch when there are enough images, else
//!   across output tiles (forward), input-channel groups (input-grad) or the
//!   pixel sum (weight-grad, with per-part partial sums reduced in a fixed
//!   order so that results do not depend on scheduling).

use crate::cpu::gemm::{gemm_at, MatRef};
use crate::cpu::simd::{self, SimdLevel};
use rayon::prelude::*;
use std::cell::Cell;

/// The sizes of one conv2d, in conv2d's own terms (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Rows of the column matrix: Cin·kh·kw.
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Pixels of one input plane.
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }
    /// Pixels of one output plane.
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    /// 1×1, stride 1, no padding: the image is its own column matrix.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// Multiply-adds ×2 of one of the three kernels over the whole batch.
    pub fn flops(&self) -> usize {
        2 * self.n * self.cout * self.k() * self.out_plane()
    }
}

/// Bytes of column tile we aim to keep resident in L2 next to the GEMM's own
/// packed panels.
const COL_TILE_BYTES: usize = 1 << 20;
/// Below this much work a kernel runs on the calling thread (the GEMM may
/// still use threads): waking the pool would cost more than it saves. The
/// same bar as the GEMM's own (`gemm::PAR_MIN_FLOPS`); at 2 M (the old
/// value) LeNet's convs on 10–32 images ran slower split on two shared
/// cores than on one.
const PAR_MIN_FLOPS: usize = crate::cpu::gemm::PAR_MIN_FLOPS;

/// How a call is carried out: tile width and parallel split. Computed from
/// the geometry and the pool size by [`Plan::new`]; tests build other plans
/// to exercise every path on small inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Output pixels per column tile (≤ OH·OW).
    pub tile: usize,
    /// Threads to split work for (1 = serial).
    pub threads: usize,
    /// Set inside tasks that already keep every thread busy: their GEMMs
    /// should then run on the calling thread.
    pub nested: bool,
}

impl Plan {
    pub fn new(g: &ConvGeom) -> Plan {
        let ohw = g.out_plane().max(1);
        let tile = if g.pointwise() {
            ohw
        } else {
            let max = (COL_TILE_BYTES / 4 / g.k().max(1)).max(16);
            let ntiles = ohw.div_ceil(max);
            // Equal tiles, rounded to 16 pixels (one AVX-512 register).
            (ohw.div_ceil(ntiles).div_ceil(16) * 16).min(ohw)
        };
        let threads = if g.flops() >= PAR_MIN_FLOPS {
            crate::cpu::threads::num_threads().max(1)
        } else {
            1
        };
        Plan {
            tile,
            threads,
            nested: false,
        }
    }

    /// The plan for work inside one of `threads` parallel tasks.
    fn inner(&self) -> Plan {
        Plan {
            nested: true,
            ..*self
        }
    }

    fn ntiles(&self, g: &ConvGeom) -> usize {
        g.out_plane().div_ceil(self.tile.max(1))
    }

    /// Output pixels [p0, p0 + t) of tile `i`.
    fn tile_range(&self, g: &ConvGeom, i: usize) -> (usize, usize) {
        let p0 = i * self.tile;
        (p0, self.tile.min(g.out_plane() - p0))
    }
}

/// Runs `f` on a scratch slice of `len` floats owned by this thread and kept
/// for the next call. The buffer is taken out of the thread-local while in
/// use, so a nested call on the same thread (rayon may run another task
/// while this one waits inside a parallel GEMM) simply gets a fresh one.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    }
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let other = s.take();
        s.set(if other.len() > buf.len() { other } else { buf });
    });
    r
}

/// A raw output pointer shared by tasks that write provably disjoint parts.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used for writes to disjoint ranges (see the call sites).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper
    /// rather than the bare pointer field).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// The outputs `o` (along one axis) whose tap `k` reads inside the input:
/// i = o·stride + k − pad must satisfy 0 ≤ i < len. Returns [lo, hi).
fn valid_range(k: usize, pad: usize, stride: usize, len: usize, out_len: usize) -> (usize, usize) {
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    let hi = if len + pad <= k {
        0
    } else {
        (len + pad - k).div_ceil(stride)
    };
    let lo = lo.min(out_len);
    (lo, hi.min(out_len).max(lo))
}

/// Calls `f(p)` for every output pixel p in [pa, pb) whose column ox lies
/// outside [lo, hi): the pixels a tap reads from the zero padding.
#[inline(always)]
fn for_each_border_pixel(
    pa: usize,
    pb: usize,
    ow: usize,
    lo: usize,
    hi: usize,
    mut f: impl FnMut(usize),
) {
    if (lo == 0 && hi == ow) || pa >= pb {
        return;
    }
    let mut base = pa / ow * ow;
    while base < pb {
        for ox in (0..lo).chain(hi..ow) {
            let p = base + ox;
            if p >= pa && p < pb {
                f(p);
            }
        }
        base += ow;
    }
}

/// True when output pixel p and input pixel p + offset line up for every tap
/// (stride 1 and an output as wide as the input: "same" padding).
#[inline(always)]
fn linear_rows(g: &ConvGeom) -> bool {
    g.sh == 1 && g.sw == 1 && g.ow == g.w
}

/// Fills the column tile `col` (K rows × t) for output pixels [p0, p0 + t)
/// of one image `x` ([Cin, H, W]): col[(ci,ky,kx), j] = x[ci, iy, ix] with
/// iy = oy·sh + ky − ph, ix = ox·sw + kx − pw, or 0 in the padding.
#[inline(always)]
fn im2col_body(g: &ConvGeom, x: &[f32], p0: usize, t: usize, col: &mut [f32]) {
    if super::valid::is_valid_stride1(g) {
        return super::valid::im2col_valid(g, x, p0, t, col);
    }
    let hw = g.in_plane();
    for ci in 0..g.cin {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            let (oy_lo, oy_hi) = valid_range(ky, g.ph, g.sh, g.h, g.oh);
            for kx in 0..g.kw {
                let (ox_lo, ox_hi) = valid_range(kx, g.pw, g.sw, g.w, g.ow);
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut col[r * t..(r + 1) * t];
                if linear_rows(g) {
                    // Pixels with a valid row: one contiguous copy from the
                    // input shifted by `off`, then zero the border columns
                    // (which picked up neighbouring rows' values, or were
                    // clipped at the plane's ends).
                    let pa = (oy_lo * g.ow).clamp(p0, p0 + t);
                    let pb = (oy_hi * g.ow).clamp(pa, p0 + t);
                    row[..pa - p0].fill(0.0);
                    row[pb - p0..].fill(0.0);
                    let off = (ky * g.w + kx) as isize - (g.ph * g.w + g.pw) as isize;
                    // Clip so that the source index p + off stays in the plane.
                    let ca = (pa as isize).max(-off) as usize;
                    let cb = ((pb as isize).min(hw as isize - off).max(ca as isize)) as usize;
                    if ca < cb {
                        let s0 = (ca as isize + off) as usize;
                        row[ca - p0..cb - p0].copy_from_slice(&plane[s0..s0 + (cb - ca)]);
                    }
                    for_each_border_pixel(pa, pb, g.ow, ox_lo, ox_hi, |p| row[p - p0] = 0.0);
                    continue;
                }
                let mut j = 0;
                while j < t {
                    let p = p0 + j;
                    let (oy, ox0) = (p / g.ow, p % g.ow);
                    let seg = (g.ow - ox0).min(t - j);
                    let dst = &mut row[j..j + seg];
                    j += seg;
                    if oy < oy_lo || oy >= oy_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.sh + ky - g.ph;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let a = ox_lo.clamp(ox0, ox0 + seg);
                    let b = ox_hi.clamp(a, ox0 + seg);
                    dst[..a - ox0].fill(0.0);
                    dst[b - ox0..].fill(0.0);
                    if a < b {
                        let ix0 = a * g.sw + kx - g.pw;
                        let d = &mut dst[a - ox0..b - ox0];
                        if g.sw == 1 {
                            d.copy_from_slice(&src[ix0..ix0 + (b - a)]);
                        } else {
                            for (dv, &sv) in d.iter_mut().zip(src[ix0..].iter().step_by(g.sw)) {
                                *dv = sv;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_body`]: adds every entry of the column tile back
/// onto the input pixel it was read from (`dx` += col2im(col)). Entries that
/// came from the padding are dropped. `col` is scratch and may be modified.
#[inline(always)]
fn col2im_body(g: &ConvGeom, col: &mut [f32], p0: usize, t: usize, dx: &mut [f32]) {
    if super::valid::is_valid_stride1(g) {
        return super::valid::col2im_valid(g, col, p0, t, dx);
    }
    let hw = g.in_plane();
    for ci in 0..g.cin {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            let (oy_lo, oy_hi) = valid_range(ky, g.ph, g.sh, g.h, g.oh);
            for kx in 0..g.kw {
                let (ox_lo, ox_hi) = valid_range(kx, g.pw, g.sw, g.w, g.ow);
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut col[r * t..(r + 1) * t];
                if linear_rows(g) {
                    // Zero the padding taps first; then one long vector add
                    // is right everywhere (the zeroed entries land on
                    // neighbouring pixels and add nothing).
                    let pa = (oy_lo * g.ow).clamp(p0, p0 + t);
                    let pb = (oy_hi * g.ow).clamp(pa, p0 + t);
                    for_each_border_pixel(pa, pb, g.ow, ox_lo, ox_hi, |p| row[p - p0] = 0.0);
                    let off = (ky * g.w + kx) as isize - (g.ph * g.w + g.pw) as isize;
                    let ca = (pa as isize).max(-off) as usize;
                    let cb = ((pb as isize).min(hw as isize - off).max(ca as isize)) as usize;
                    if ca < cb {
                        let s0 = (ca as isize + off) as usize;
                        let d = &mut plane[s0..s0 + (cb - ca)];
                        for (dv, &v) in d.iter_mut().zip(&row[ca - p0..cb - p0]) {
                            *dv += v;
                        }
                    }
                    continue;
                }
                let mut j = 0;
                while j < t {
                    let p = p0 + j;
                    let (oy, ox0) = (p / g.ow, p % g.ow);
                    let seg = (g.ow - ox0).min(t - j);
                    let src = &row[j..j + seg];
                    j += seg;
                    if oy < oy_lo || oy >= oy_hi {
                        continue;
                    }
                    let iy = oy * g.sh + ky - g.ph;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let a = ox_lo.clamp(ox0, ox0 + seg);
                    let b = ox_hi.clamp(a, ox0 + seg);
                    if a < b {
                        let ix0 = a * g.sw + kx - g.pw;
                        let s = &src[a - ox0..b - ox0];
                        if g.sw == 1 {
                            for (dv, &v) in dst[ix0..ix0 + (b - a)].iter_mut().zip(s) {
                                *dv += v;
                            }
                        } else {
                            for (dv, &v) in dst[ix0..].iter_mut().step_by(g.sw).zip(s) {
                                *dv += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

// The bodies above, compiled once per instruction-set level (the default
// build targets baseline x86-64, so only these copies may use AVX).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn im2col_avx512(g: &ConvGeom, x: &[f32], p0: usize, t: usize, col: &mut [f32]) {
    im2col_body(g, x, p0, t, col)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn im2col_avx2(g: &ConvGeom, x: &[f32], p0: usize, t: usize, col: &mut [f32]) {
    im2col_body(g, x, p0, t, col)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn col2im_avx512(g: &ConvGeom, col: &mut [f32], p0: usize, t: usize, dx: &mut [f32]) {
    col2im_body(g, col, p0, t, dx)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn col2im_avx2(g: &ConvGeom, col: &mut [f32], p0: usize, t: usize, dx: &mut [f32]) {
    col2im_body(g, col, p0, t, dx)
}

fn im2col(lv: SimdLevel, g: &ConvGeom, x: &[f32], p0: usize, t: usize, col: &mut [f32]) {
    match lv {
        // SAFETY: callers pass only levels that `available_levels` detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { im2col_avx512(g, x, p0, t, col) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { im2col_avx2(g, x, p0, t, col) },
        _ => im2col_body(g, x, p0, t, col),
    }
}

fn col2im(lv: SimdLevel, g: &ConvGeom, col: &mut [f32], p0: usize, t: usize, dx: &mut [f32]) {
    match lv {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { col2im_avx512(g, col, p0, t, dx) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { col2im_avx2(g, col, p0, t, dx) },
        _ => col2im_body(g, col, p0, t, dx),
    }
}

/// One GEMM of a conv kernel. `nested` is true when the caller already runs
/// one task per thread, so splitting this GEMM further only adds overhead.
#[allow(clippy::too_many_arguments)]
#[inline]
fn mm(
    nested: bool,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm_at(simd::level(), !nested, m, n, k, a, b, c, ldc, acc)
}

// ---------------------------------------------------------------- forward

/// Output tile of one image: `out` (row stride `ldo`, starting at pixel p0
/// of output channel 0) gets W · col(x_n)[:, p0..p0+t], added to what is
/// there when `acc` (the bias, pre-filled) else overwriting it.
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    lv: SimdLevel,
    nested: bool,
    g: &ConvGeom,
    x_n: &[f32],
    w: &[f32],
    p0: usize,
    t: usize,
    col: &mut [f32],
    out: &mut [f32],
    ldo: usize,
    acc: bool,
) {
    let k = g.k();
    let a = MatRef::new(w, k, 1);
    if g.pointwise() {
        let b = MatRef::new(&x_n[p0..], g.out_plane(), 1);
        mm(nested, g.cout, t, k, a, b, out, ldo, acc);
    } else {
        let col = &mut col[..k * t];
        im2col(lv, g, x_n, p0, t, col);
        mm(
            nested,
            g.cout,
            t,
            k,
            a,
            MatRef::new(col, t, 1),
            out,
            ldo,
            acc,
        );
    }
}

fn fill_bias(out: &mut [f32], bias: &[f32], plane: usize) {
    for (row, &b) in out.chunks_mut(plane).zip(bias) {
        row.fill(b);
    }
}

/// One whole image, tiles in sequence, written straight into y_n.
fn forward_image(
    lv: SimdLevel,
    g: &ConvGeom,
    plan: &Plan,
    x_n: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y_n: &mut [f32],
) {
    let ohw = g.out_plane();
    if let Some(b) = bias {
        fill_bias(y_n, b, ohw);
    }
    let col_len = if g.pointwise() { 0 } else { g.k() * plan.tile };
    with_scratch(col_len, |col| {
        for i in 0..plan.ntiles(g) {
            let (p0, t) = plan.tile_range(g, i);
            forward_tile(
                lv,
                plan.nested,
                g,
                x_n,
                w,
                p0,
                t,
                col,
                &mut y_n[p0..],
                ohw,
                bias.is_some(),
            );
        }
    });
}

/// y = conv2d(x, w) + bias, overwriting `y` ([N, Cout, OH, OW]).
pub(crate) fn conv2d_forward(
    lv: SimdLevel,
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if super::winograd::enabled() && super::winograd::applies(g) {
        return super::winograd::conv2d_forward(lv, g, x, w, bias, y);
    }
    if super::direct::enabled() && super::direct::forward_applies(g) {
        let threads = super::direct::threads_for(g);
        return super::direct::conv2d_forward(lv, g, threads, x, w, bias, y);
    }
    conv2d_forward_with(lv, g, &Plan::new(g), x, w, bias, y)
}

pub(crate) fn conv2d_forward_with(
    lv: SimdLevel,
    g: &ConvGeom,
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (in_sz, out_sz, ohw) = (g.cin * g.in_plane(), g.cout * g.out_plane(), g.out_plane());
    if in_sz == 0 || out_sz == 0 {
        return;
    }
    let ntiles = plan.ntiles(g);
    if plan.threads > 1 && g.n >= plan.threads {
        // Enough images: one image per task, written in place.
        y.par_chunks_mut(out_sz)
            .zip(x.par_chunks(in_sz))
            .for_each(|(y_n, x_n)| forward_image(lv, g, &plan.inner(), x_n, w, bias, y_n));
    } else if plan.threads > 1 && g.n * ntiles >= 2 {
        // Few images: one (image, tile) per task. A tile's outputs are a
        // column block of y_n (not contiguous), so each task computes into
        // its own buffer and copies the rows out.
        let yp = SharedOut(y.as_mut_ptr());
        let col_len = if g.pointwise() { 0 } else { g.k() * plan.tile };
        (0..g.n * ntiles).into_par_iter().for_each(|item| {
            let (n, i) = (item / ntiles, item % ntiles);
            let (p0, t) = plan.tile_range(g, i);
            let x_n = &x[n * in_sz..(n + 1) * in_sz];
            with_scratch(col_len + g.cout * t, |buf| {
                let (col, out) = buf.split_at_mut(col_len);
                if let Some(b) = bias {
                    fill_bias(out, b, t);
                }
                forward_tile(lv, true, g, x_n, w, p0, t, col, out, t, bias.is_some());
                for (co, row) in out.chunks(t).enumerate() {
                    // SAFETY: y has n·out_sz elements; this writes
                    // y[n][co][p0..p0+t], and no two items share an
                    // (n, tile) pair, so the ranges are disjoint; `y` is
                    // exclusively borrowed for the whole parallel loop.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            row.as_ptr(),
                            yp.ptr().add(n * out_sz + co * ohw + p0),
                            t,
                        );
                    }
                }
            });
        });
    } else {
        for (y_n, x_n) in y.chunks_mut(out_sz).zip(x.chunks(in_sz)) {
            forward_image(lv, g, plan, x_n, w, bias, y_n);
        }
    }
}

// ------------------------------------------------------------- input-grad

/// dx for input channels [ci0, ci0 + cn) of one image (`dx_blk`, those
/// planes only), accumulated: dx_blk += (bias) + col2im(W[:, ci-block]ᵀ · g_n).
#[allow(clippy::too_many_arguments)]
fn input_grad_block(
    lv: SimdLevel,
    g: &ConvGeom,
    plan: &Plan,
    gy_n: &[f32],
    w: &[f32],
    ci0: usize,
    bias: Option<&[f32]>,
    dx_blk: &mut [f32],
) {
    let hw = g.in_plane();
    let cn = dx_blk.len() / hw.max(1);
    if let Some(b) = bias {
        for (plane, &bv) in dx_blk.chunks_mut(hw).zip(&b[ci0..]) {
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    let (k, kk, ohw) = (g.k(), g.kh * g.kw, g.out_plane());
    // Wᵀ restricted to this block's rows: element (i, co) = w[co·K + ci0·kk + i].
    let a = MatRef::new(&w[ci0 * kk..], 1, k);
    if g.pointwise() {
        mm(
            plan.nested,
            cn,
            ohw,
            g.cout,
            a,
            MatRef::new(gy_n, ohw, 1),
            dx_blk,
            hw,
            true,
        );
        return;
    }
    let sub = ConvGeom { cin: cn, ..*g };
    let rows = cn * kk;
    with_scratch(rows * plan.tile, |dcol| {
        for i in 0..plan.ntiles(g) {
            let (p0, t) = plan.tile_range(g, i);
            let dcol = &mut dcol[..rows * t];
            mm(
                plan.nested,
                rows,
                t,
                g.cout,
                a,
                MatRef::new(&gy_n[p0..], ohw, 1),
                dcol,
                t,
                false,
            );
            col2im(lv, &sub, dcol, p0, t, dx_blk);
        }
    });
}

/// dx += (bias per input channel) + conv2d's input-gradient of `gy`
/// ([N, Cout, OH, OW]) → `dx` ([N, Cin, H, W]). With a bias this is
/// exactly conv_transpose2d's forward.
pub(crate) fn conv2d_input_grad(
    lv: SimdLevel,
    g: &ConvGeom,
    gy: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dx: &mut [f32],
) {
    if super::winograd::enabled() && super::winograd::applies(g) {
        return super::winograd::conv2d_input_grad(lv, g, gy, w, bias, dx);
    }
    if super::direct::enabled() && super::direct::input_grad_pays(g) {
        let threads = super::direct::threads_for(g);
        return super::direct::conv2d_input_grad(lv, g, threads, gy, w, bias, dx);
    }
    conv2d_input_grad_with(lv, g, &Plan::new(g), gy, w, bias, dx)
}

pub(crate) fn conv2d_input_grad_with(
    lv: SimdLevel,
    g: &ConvGeom,
    plan: &Plan,
    gy: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dx: &mut [f32],
) {
    let (in_sz, out_sz, hw) = (g.cin * g.in_plane(), g.cout * g.out_plane(), g.in_plane());
    if in_sz == 0 || out_sz == 0 {
        return;
    }
    if plan.threads > 1 && g.n >= plan.threads {
        dx.par_chunks_mut(in_sz)
            .zip(gy.par_chunks(out_sz))
            .for_each(|(dx_n, gy_n)| {
                input_grad_block(lv, g, &plan.inner(), gy_n, w, 0, bias, dx_n)
            });
    } else if plan.threads > 1 && g.cin >= 2 {
        // Few images: split each image's input channels into groups. Their
        // dx planes are disjoint and contiguous, and so are their rows of
        // the column matrix, so the groups are independent.
        let cig = g.cin.div_ceil(plan.threads);
        for (dx_n, gy_n) in dx.chunks_mut(in_sz).zip(gy.chunks(out_sz)) {
            dx_n.par_chunks_mut(cig * hw)
                .enumerate()
                .for_each(|(gi, blk)| {
                    input_grad_block(lv, g, &plan.inner(), gy_n, w, gi * cig, bias, blk)
                });
        }
    } else {
        for (dx_n, gy_n) in dx.chunks_mut(in_sz).zip(gy.chunks(out_sz)) {
            input_grad_block(lv, g, plan, gy_n, w, 0, bias, dx_n);
        }
    }
}

// ------------------------------------------------------------ weight-grad

/// dW += g_n[:, tile] · col(x_n)[:, tile]ᵀ for one (image, tile).
#[allow(clippy::too_many_arguments)]
fn weight_grad_tile(
    lv: SimdLevel,
    nested: bool,
    g: &ConvGeom,
    x_n: &[f32],
    gy_n: &[f32],
    p0: usize,
    t: usize,
    col: &mut [f32],
    dw: &mut [f32],
) {
    let (k, ohw) = (g.k(), g.out_plane());
    let a = MatRef::new(&gy_n[p0..], ohw, 1);
    if g.pointwise() {
        // col(x_n)ᵀ element (j, ci) = x_n[ci·HW + p0 + j].
        mm(
            nested,
            g.cout,
            k,
            t,
            a,
            MatRef::new(&x_n[p0..], 1, ohw),
            dw,
            k,
            true,
        );
    } else {
        let col = &mut col[..k * t];
        im2col(lv, g, x_n, p0, t, col);
        mm(nested, g.cout, k, t, a, MatRef::new(col, 1, t), dw, k, true);
    }
}

/// dw += conv2d's weight-gradient: Σ over images and pixels of
/// gy ⊗ col(x). `dw` is [Cout, Cin, kh, kw].
pub(crate) fn conv2d_weight_grad(
    lv: SimdLevel,
    g: &ConvGeom,
    x: &[f32],
    gy: &[f32],
    dw: &mut [f32],
) {
    if super::direct::enabled() && super::direct::weight_grad_applies(g) {
        let threads = super::direct::threads_for(g);
        return super::direct::conv2d_weight_grad(lv, g, threads, x, gy, dw);
    }
    conv2d_weight_grad_with(lv, g, &Plan::new(g), x, gy, dw)
}

pub(crate) fn conv2d_weight_grad_with(
    lv: SimdLevel,
    g: &ConvGeom,
    plan: &Plan,
    x: &[f32],
    gy: &[f32],
    dw: &mut [f32],
) {
    let (in_sz, out_sz) = (g.cin * g.in_plane(), g.cout * g.out_plane());
    if in_sz == 0 || out_sz == 0 {
        return;
    }
    let ntiles = plan.ntiles(g);
    let items = g.n * ntiles;
    let col_len = if g.pointwise() { 0 } else { g.k() * plan.tile };
    // Work items (image, tile) in a fixed order; part `pi` sums items
    // [pi·items/parts, (pi+1)·items/parts). The split depends only on the
    // sizes and the thread count, never on scheduling, so results repeat.
    let run = |a: usize, b: usize, nested: bool, acc: &mut [f32]| {
        with_scratch(col_len, |col| {
            for item in a..b {
                let (n, i) = (item / ntiles, item % ntiles);
                let (p0, t) = plan.tile_range(g, i);
                let x_n = &x[n * in_sz..(n + 1) * in_sz];
                let gy_n = &gy[n * out_sz..(n + 1) * out_sz];
                weight_grad_tile(lv, nested, g, x_n, gy_n, p0, t, col, acc);
            }
        })
    };
    let parts = plan.threads.min(items).max(1);
    if parts == 1 {
        run(0, items, plan.nested, dw);
        return;
    }
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|pi| {
            let mut acc = vec![0.0f32; dw.len()];
            run(pi * items / parts, (pi + 1) * items / parts, true, &mut acc);
            acc
        })
        .collect();
    for p in &partials {
        for (d, &v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
}

/// Σ over N and the plane of gy, per channel: the bias gradient.
pub(crate) fn channel_sums(gy: &[f32], n: usize, c: usize, plane: usize) -> Vec<f32> {
    let mut acc = vec![0f64; c];
    if plane == 0 {
        return vec![0.0; c];
    }
    for (i, p) in gy.chunks(plane).take(n * c).enumerate() {
        acc[i % c] += crate::cpu::simd::sum(p);
    }
    acc.into_iter().map(|v| v as f32).collect()
}
