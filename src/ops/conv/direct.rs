//! Direct convolution kernels (no column matrix) for stride-1 convolutions
//! with very few channels on one side.
//!
//! Why a third route next to im2col + GEMM (`cpu.rs`) and Winograd: im2col
//! copies every input pixel kh·kw times into a column matrix so that one
//! GEMM can do the arithmetic. That pays when the GEMM has many rows (output
//! channels) that each reuse the copied column. With one output channel (the
//! MNIST black-box decoder's last conv, 8→1 k5 pad 4) the GEMM is a
//! matrix-vector product: every copied value is used once, so the copy
//! costs as much as the arithmetic (the profile showed im2col and its
//! memmove at over half the time). The input-gradient looks like the same
//! problem when Cin is tiny (LeNet conv1 1→8; conv_transpose2d 64→3, which
//! *is* an input-gradient), but there the measurements favour the direct
//! kernel only for 2–4 input channels against a narrow summed side (see
//! [`MAX_FEW`]).
//!
//! Here each image is copied once, with its zero border, into a small
//! padded buffer that stays in cache, and the arithmetic reads it in place.
//! With stride 1, output pixel (oy, ox) reads, through tap (ky, kx), padded
//! pixel (oy + ky, ox + kx). So a run of 16 neighbouring outputs of one row
//! reads a run of 16 neighbouring padded pixels, shifted by the tap: every
//! (channel, tap) step is one vector multiply-add of a weight with 16
//! contiguous floats. (A first version worked on the unpadded rows, with
//! each axpy's column range clipped at the borders; its per-row bookkeeping
//! and short remainders made it 3–6× *slower* than im2col + GEMM. The
//! padded copy costs one pass over the input, against kh·kw for im2col.)
//!
//! [`correlate_rows_body`] does the forward and, with the kernel flipped,
//! the input-gradient; [`weight_grad_image_body`] the weight-gradient. Both
//! keep their accumulators in registers (up to 16 blocks of 16 outputs
//! across the output planes, or 8 taps × 16 lanes). Both are written once
//! against a small 16-lane vector trait ([`Lanes`]: one AVX-512 register,
//! two AVX2 ones, or a plain array) and compiled once per SIMD level inside
//! `#[target_feature]` wrappers (the build targets baseline x86-64), as in
//! `cpu.rs`.
//!
//! When the dispatch in `cpu.rs` picks these kernels, and the timings behind
//! it: see [`MAX_FEW`].

use super::cpu::{with_scratch, ConvGeom};
use crate::cpu::simd::SimdLevel;
use rayon::prelude::*;

/// The forward and the weight-gradient take this route up to this many
/// output channels, the input-gradient up to this many input channels
/// (and only where it measured faster, see [`input_grad_applies`]).
///
/// Measured with `direct_vs_im2col_timing` below, release build (AVX-512,
/// 2 threads, on the shared 2-core machine while a training job ran at
/// higher priority: noisy, ±15% run to run; medians of 15 alternating
/// runs), im2col + GEMM → direct kernel, ms:
///
/// | shape                                     | C = 1       | 2           | 3           | 4           |
/// |-------------------------------------------|-------------|-------------|-------------|-------------|
/// | conv 8→C k5 p4 [64,8,24,24] forward       | 5.5 → 0.72  | 5.2 → 0.77  | 5.2 → 0.93  | 5.1 → 1.10  |
/// | same, weight-gradient                     | 6.4 → 0.84  | 6.4 → 1.58  | 6.5 → 2.28  | 6.5 → 3.03  |
/// | conv C→8 k5 [32,C,28,28] input-gradient   | 0.23 → 0.31 | 0.46 → 0.38 | 0.77 → 0.58 | 1.32 → 0.84 |
/// | conv_transpose2d 64→C k3 p1 [32,64,32,32] | 0.83 → 1.91 | 0.97 → 1.89 | 1.19 → 2.13 | 1.43 → 2.46 |
///
/// The forward and weight-gradient win by 2–8× (the GEMM with Cout ≤ 4
/// rows is a matrix-vector product behind an im2col that costs more than
/// the arithmetic). The input-gradient wins for 2–4 channels against a
/// narrow summed side (Cout = 8), loses for one channel (LeNet conv1: the
/// GEMM's m = 25 rows and col2im of 25 rows are cheap there), and loses
/// clearly when the summed side is wide (conv_transpose2d from 64
/// channels: the GEMM's k = 64 is efficient, while here the padded copy of
/// the 64-channel, 8 MB gradient is a pure streaming pass that perf showed
/// at half of the kernel's time). So the dispatch uses the direct
/// input-gradient only for [`input_grad_pays`]. An earlier version with
/// one pass per output plane measured 8 channels still ahead for the
/// forward and weight-gradient; 4 keeps the register-blocked variants
/// (CO ≤ 4) few.
pub(crate) const MAX_FEW: usize = 4;

/// False when the environment sets `SPLITINV_DIRECT=0`: the dispatch then
/// keeps im2col + GEMM for these convolutions too (for A/B timing).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPLITINV_DIRECT").map_or(true, |v| v.trim() != "0"))
}

/// Below this much work (2·multiply-adds) the direct kernels run on the
/// calling thread: the GEMM's bar. Measured on the shared machine (other
/// core busy), the 20 Mflop decoder conv ran the same on 1 and 2 threads
/// (forward 0.61 vs 0.68 ms, weight-gradient 0.85 vs 0.84), the 7 Mflop
/// LeNet input-gradient too (0.32 vs 0.32): no evidence for a different
/// bar, and on an idle machine the split halves the larger ones.
const PAR_MIN_FLOPS: usize = crate::cpu::gemm::PAR_MIN_FLOPS;

/// Lanes of one output block (one AVX-512 register).
const V: usize = 16;

fn stride1(g: &ConvGeom) -> bool {
    g.sh == 1 && g.sw == 1
}

/// True when the direct forward is the faster route: stride 1 and at most
/// [`MAX_FEW`] output channels.
pub(crate) fn forward_applies(g: &ConvGeom) -> bool {
    stride1(g) && g.cout <= MAX_FEW
}

/// True when the direct weight-gradient is the faster route (same rule as
/// the forward: the GEMM would have only Cout rows).
pub(crate) fn weight_grad_applies(g: &ConvGeom) -> bool {
    forward_applies(g)
}

/// True when the direct input-gradient can run: stride 1 and at most
/// [`MAX_FEW`] input channels (what the tests exercise).
pub(crate) fn input_grad_applies(g: &ConvGeom) -> bool {
    stride1(g) && g.cin <= MAX_FEW
}

/// True when the direct input-gradient is also the faster route (see the
/// table at [`MAX_FEW`]): 2–4 input channels and a narrow summed side.
pub(crate) fn input_grad_pays(g: &ConvGeom) -> bool {
    input_grad_applies(g) && g.cin >= 2 && g.cout <= 16
}

/// Threads worth using for this geometry (1 below [`PAR_MIN_FLOPS`]).
pub(crate) fn threads_for(g: &ConvGeom) -> usize {
    if g.flops() >= PAR_MIN_FLOPS {
        crate::cpu::threads::num_threads().max(1)
    } else {
        1
    }
}

/// One stride-1 correlation of padded planes:
/// out[o, oy, ox] = Σ_{i,ky,kx} wt[o, i, ky, kx] · P_i[oy + ky, ox + kx],
/// where P_i is source plane i placed at row `pt`, column `pl` of a zero
/// plane of `hp` × `wp` (`pt`, `pl` may be negative: then the source is
/// cropped instead).
#[derive(Clone, Copy, Debug)]
struct Corr {
    /// Source (= padded) planes per image.
    ci: usize,
    /// Output planes per image.
    co: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    /// Source plane size.
    sh: usize,
    sw: usize,
    /// Where the source's (0, 0) lands in the padded plane.
    pt: isize,
    pl: isize,
}

impl Corr {
    /// conv2d's forward: P = x padded by (ph, pw).
    fn forward(g: &ConvGeom) -> Corr {
        Corr {
            ci: g.cin,
            co: g.cout,
            oh: g.oh,
            ow: g.ow,
            kh: g.kh,
            kw: g.kw,
            sh: g.h,
            sw: g.w,
            pt: g.ph as isize,
            pl: g.pw as isize,
        }
    }
    /// conv2d's input-gradient: P = gy padded by (kh−1−ph, kw−1−pw), read
    /// through the flipped kernel (see [`conv2d_input_grad`]).
    fn input_grad(g: &ConvGeom) -> Corr {
        Corr {
            ci: g.cout,
            co: g.cin,
            oh: g.h,
            ow: g.w,
            kh: g.kh,
            kw: g.kw,
            sh: g.oh,
            sw: g.ow,
            pt: g.kh as isize - 1 - g.ph as isize,
            pl: g.kw as isize - 1 - g.pw as isize,
        }
    }
    /// Output blocks of `V` per row.
    fn nb(&self) -> usize {
        self.ow.div_ceil(V)
    }
    /// Padded plane rows: every row oy + ky an output reads.
    fn hp(&self) -> usize {
        self.oh + self.kh - 1
    }
    /// Padded plane width: whole blocks of V plus room for the taps.
    fn wp(&self) -> usize {
        self.nb() * V + self.kw - 1
    }
    fn padded_len(&self) -> usize {
        self.ci * self.hp() * self.wp()
    }
}

// ------------------------------------------------------------ vector lanes

/// 16 f32 lanes: one AVX-512 register, two AVX2 registers, or a plain
/// array (the scalar level, which the compiler vectorises with SSE). The
/// kernels below are written once against this trait and instantiated per
/// level inside `#[target_feature]` wrappers.
///
/// (Plain Rust loops over slices were tried first: the compiler kept the
/// accumulators in memory, bounds-checked every 16-float load, and in the
/// weight-gradient turned the overlapping shifted loads into shuffles; the
/// result ran at a fraction of the FMA rate.)
trait Lanes: Copy {
    /// All lanes = v.
    ///
    /// # Safety
    /// The level's CPU features are present (also for the methods below).
    unsafe fn splat(v: f32) -> Self;
    /// # Safety
    /// `p` is valid for reading 16 floats.
    unsafe fn load(p: *const f32) -> Self;
    /// self + a·b, lane by lane (fused where the level has FMA).
    ///
    /// # Safety
    /// As [`Lanes::splat`].
    unsafe fn madd(self, a: Self, b: Self) -> Self;
    /// The lanes as an array.
    ///
    /// # Safety
    /// As [`Lanes::splat`].
    unsafe fn to_array(self) -> [f32; V];
    /// # Safety
    /// `p` is valid for writing 16 floats.
    unsafe fn store(self, p: *mut f32);
}

/// The scalar level's lanes (no FMA: `mul_add` would be a library call).
#[derive(Clone, Copy)]
struct Plain([f32; V]);

impl Lanes for Plain {
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Plain([v; V])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: forwarded contract (16 readable floats).
        Plain(unsafe { p.cast::<[f32; V]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn madd(self, a: Self, b: Self) -> Self {
        let mut o = self.0;
        for ((ov, av), bv) in o.iter_mut().zip(a.0).zip(b.0) {
            *ov += av * bv;
        }
        Plain(o)
    }
    #[inline(always)]
    unsafe fn to_array(self) -> [f32; V] {
        self.0
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: forwarded contract (16 writable floats).
        unsafe { p.cast::<[f32; V]>().write_unaligned(self.0) }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// AVX2 + FMA: two 8-lane registers.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2Lanes(__m256, __m256);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2Lanes {
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX present (trait contract).
        unsafe { Avx2Lanes(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: 16 readable floats; AVX present.
        unsafe { Avx2Lanes(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
    #[inline(always)]
    unsafe fn madd(self, a: Self, b: Self) -> Self {
        // SAFETY: FMA present.
        unsafe {
            Avx2Lanes(
                _mm256_fmadd_ps(a.0, b.0, self.0),
                _mm256_fmadd_ps(a.1, b.1, self.1),
            )
        }
    }
    #[inline(always)]
    unsafe fn to_array(self) -> [f32; V] {
        let mut o = [0.0f32; V];
        // SAFETY: `o` holds 16 floats; AVX present.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), self.0);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), self.1);
        }
        o
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: 16 writable floats; AVX present.
        unsafe {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
    }
}

/// AVX-512F: one 16-lane register.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx512Lanes(__m512);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512Lanes {
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX-512F present (trait contract).
        unsafe { Avx512Lanes(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: 16 readable floats; AVX-512F present.
        unsafe { Avx512Lanes(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn madd(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F present.
        unsafe { Avx512Lanes(_mm512_fmadd_ps(a.0, b.0, self.0)) }
    }
    #[inline(always)]
    unsafe fn to_array(self) -> [f32; V] {
        let mut o = [0.0f32; V];
        // SAFETY: `o` holds 16 floats; AVX-512F present.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), self.0) };
        o
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: 16 writable floats; AVX-512F present.
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
}

// ------------------------------------------------------------ padded copy

/// `d` = 0 (at least 16 floats), in whole vector stores; the last store
/// overlaps the previous one instead of a remainder loop.
///
/// # Safety
/// The level's CPU features are present.
#[inline(always)]
unsafe fn zero_row<L: Lanes>(d: &mut [f32]) {
    let (n, p) = (d.len(), d.as_mut_ptr());
    if n < V {
        d.fill(0.0);
        return;
    }
    // SAFETY: every store covers [k, k + 16) ⊆ [0, n).
    unsafe {
        let z = L::splat(0.0);
        let mut k = 0;
        while k + V <= n {
            z.store(p.add(k));
            k += V;
        }
        if k < n {
            z.store(p.add(n - V));
        }
    }
}

/// `d` = `s` (equal lengths), in whole vector moves as [`zero_row`].
///
/// # Safety
/// The level's CPU features are present.
#[inline(always)]
unsafe fn copy_row<L: Lanes>(d: &mut [f32], s: &[f32]) {
    let n = d.len();
    if n < V || s.len() != n {
        d.copy_from_slice(s);
        return;
    }
    let (dp, sp) = (d.as_mut_ptr(), s.as_ptr());
    // SAFETY: every move covers [k, k + 16) ⊆ [0, n) of both slices.
    unsafe {
        let mut k = 0;
        while k + V <= n {
            L::load(sp.add(k)).store(dp.add(k));
            k += V;
        }
        if k < n {
            L::load(sp.add(n - V)).store(dp.add(n - V));
        }
    }
}

/// Copies source planes (`sh` × `sw` each) into `dst` as padded planes
/// (`hp` × `wp`), the source's (0, 0) at (pt, pl), zeros elsewhere.
///
/// (Rows are short: 24–32 floats. With `fill` + `copy_from_slice` each row
/// cost three library calls, and this copy took ~30% of the direct
/// input-gradient's time; vector moves with an overlapping last move
/// avoid the calls.)
///
/// # Safety
/// The level's CPU features are present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pad_planes_body<L: Lanes, const UNUSED: usize>(
    src: &[f32],
    sh: usize,
    sw: usize,
    pt: isize,
    pl: isize,
    hp: usize,
    wp: usize,
    dst: &mut [f32],
) {
    let c0 = pl.clamp(0, wp as isize) as usize;
    let c1 = (pl + sw as isize).clamp(c0 as isize, wp as isize) as usize;
    // Source column of padded column c0 (≥ 0: c0 ≥ pl).
    let s0 = (c0 as isize - pl) as usize;
    for (sp, dp) in src.chunks_exact(sh * sw).zip(dst.chunks_exact_mut(hp * wp)) {
        for (r, drow) in dp.chunks_exact_mut(wp).enumerate() {
            // SAFETY (both calls): CPU features by this fn's contract.
            unsafe { zero_row::<L>(drow) };
            let sr = r as isize - pt;
            if sr < 0 || sr >= sh as isize || c0 == c1 {
                continue;
            }
            let srow = &sp[sr as usize * sw..(sr as usize + 1) * sw];
            unsafe { copy_row::<L>(&mut drow[c0..c1], &srow[s0..s0 + (c1 - c0)]) };
        }
    }
}

// ------------------------------------------------- forward / input-grad

/// Output rows [r0, r0 + rows) of every output plane of one image
/// (`outs[o]` holds plane o's rows), from the image's padded planes `pp`
/// and the filters `wt` ([co, ci, kh, kw]). Overwrites the rows with
/// bias + Σ, or adds bias + Σ to them when `add`. `CO` (= c.co) planes ×
/// `B` output blocks are accumulated in registers at once.
///
/// Derivation (forward): y[co,oy,ox] = b[co] + Σ_{ci,ky,kx} w[co,ci,ky,kx] ·
/// x[ci, oy+ky−ph, ox+kx−pw], and x[ci, oy+ky−ph, ox+kx−pw] is exactly the
/// padded pixel P_ci[oy+ky, ox+kx] (0 in the border). Fix (ci, ky, kx): for
/// 16 neighbouring outputs ox0..ox0+16 of row oy the term reads the 16
/// neighbouring padded pixels P_ci[oy+ky, ox0+kx ..]: one vector
/// multiply-add with the weight broadcast. B such blocks, for all CO output
/// planes (which read the same pixels with different weights, so each
/// load feeds CO multiply-adds), are summed in registers over every
/// (ci, ky, kx) and stored once. The padded width is a whole number of
/// blocks, so there is no remainder loop (lanes past OW are computed and
/// dropped).
///
/// # Safety
/// The level's CPU features are present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate_rows_body<L: Lanes, const CO: usize, const B: usize>(
    c: &Corr,
    pp: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    add: bool,
    r0: usize,
    outs: &mut [&mut [f32]],
) {
    let (nb, wp, plane, kk) = (c.nb(), c.wp(), c.hp() * c.wp(), c.kh * c.kw);
    let kc = c.ci * kk;
    let rows = outs.first().map_or(0, |o| o.len()) / c.ow.max(1);
    // What the unchecked reads below rely on (always true for the callers'
    // geometry): every padded plane and filter is there, the rows lie
    // inside the plane, and there are CO output planes.
    if pp.len() < c.padded_len()
        || wt.len() < CO * kc
        || r0 + rows > c.oh
        || outs.len() != CO
        || c.co != CO
        || bias.is_some_and(|b| b.len() < CO)
    {
        debug_assert!(false, "correlate_rows: inconsistent sizes");
        return;
    }
    let mut b0 = [0.0f32; CO];
    for (o, v) in b0.iter_mut().enumerate() {
        *v = bias.map_or(0.0, |b| b[o]);
    }
    let items = rows * nb;
    let mut it = 0;
    while it < items {
        // Padded offsets of the B blocks (oy, b); past the end, repeat the
        // last block (computed, not stored).
        let mut off = [0usize; B];
        for (r, o) in off.iter_mut().enumerate() {
            let j = (it + r).min(items - 1);
            *o = (r0 + j / nb) * wp + (j % nb) * V;
        }
        // SAFETY (all lane calls): CPU features by this fn's contract.
        let mut acc = [[unsafe { L::splat(0.0) }; B]; CO];
        for (a, &bv) in acc.iter_mut().zip(&b0) {
            *a = [unsafe { L::splat(bv) }; B];
        }
        for i in 0..c.ci {
            for ky in 0..c.kh {
                let row = pp[i * plane + ky * wp..].as_ptr();
                let wrow = i * kk + ky * c.kw;
                for kx in 0..c.kw {
                    let mut px = [unsafe { L::splat(0.0) }; B];
                    for (p, &o) in px.iter_mut().zip(&off) {
                        // SAFETY: the read ends at padded column
                        // (nb−1)·16 + kw−1 + 16 ≤ wp of row oy + ky ≤ hp − 1
                        // of plane i < ci: inside `pp` (checked above).
                        *p = unsafe { L::load(row.add(o + kx)) };
                    }
                    for (o, ao) in acc.iter_mut().enumerate() {
                        let wv = unsafe { L::splat(wt[o * kc + wrow + kx]) };
                        for (a, &p) in ao.iter_mut().zip(&px) {
                            *a = unsafe { a.madd(wv, p) };
                        }
                    }
                }
            }
        }
        for (ao, out) in acc.iter().zip(outs.iter_mut()) {
            for (r, a) in ao.iter().enumerate().take(items - it) {
                let j = it + r;
                let (oy, b) = (j / nb, j % nb);
                let n = V.min(c.ow - b * V);
                let lanes = unsafe { a.to_array() };
                let d = &mut out[oy * c.ow + b * V..oy * c.ow + b * V + n];
                if add {
                    d.iter_mut().zip(lanes).for_each(|(dv, av)| *dv += av);
                } else {
                    d.copy_from_slice(&lanes[..n]);
                }
            }
        }
        it += B;
    }
}

/// [`correlate_rows_body`] for the SIMD level `lv` (detected on this CPU)
/// and c.co ∈ 1..=4, with as many blocks as the level's registers hold:
/// AVX-512 has 32 registers (CO·B accumulators + B pixels + CO weights
/// fit for CO·B ≤ 16), AVX2 16 (and two per 16 lanes).
#[allow(clippy::too_many_arguments)]
fn correlate_rows(
    lv: SimdLevel,
    c: &Corr,
    pp: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    add: bool,
    r0: usize,
    outs: &mut [&mut [f32]],
) {
    macro_rules! by_co {
        ($l:ty, $b1:literal, $b2:literal, $b3:literal, $b4:literal; $c:ident, $($a:ident),*) => {
            match $c.co {
                1 => correlate_rows_body::<$l, 1, $b1>($c, $($a),*),
                2 => correlate_rows_body::<$l, 2, $b2>($c, $($a),*),
                3 => correlate_rows_body::<$l, 3, $b3>($c, $($a),*),
                _ => correlate_rows_body::<$l, 4, $b4>($c, $($a),*),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512(
        c: &Corr,
        pp: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        add: bool,
        r0: usize,
        outs: &mut [&mut [f32]],
    ) {
        // SAFETY: AVX-512F is enabled here.
        unsafe { by_co!(Avx512Lanes, 8, 6, 4, 4; c, pp, wt, bias, add, r0, outs) }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2(
        c: &Corr,
        pp: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        add: bool,
        r0: usize,
        outs: &mut [&mut [f32]],
    ) {
        // SAFETY: AVX2 and FMA are enabled here.
        unsafe { by_co!(Avx2Lanes, 4, 2, 1, 1; c, pp, wt, bias, add, r0, outs) }
    }
    match lv {
        // SAFETY: `lv` was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { avx512(c, pp, wt, bias, add, r0, outs) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { avx2(c, pp, wt, bias, add, r0, outs) },
        // SAFETY: plain lanes need no CPU feature.
        _ => unsafe { by_co!(Plain, 2, 1, 1, 1; c, pp, wt, bias, add, r0, outs) },
    }
}

// ------------------------------------------------------------ weight-grad

/// dw[p·kh·kw + t] += Σ_{oy,ox} gy[co,oy,ox] · P_ci[oy+ky, ox+kx] (tap
/// t = ky·kw + kx) for one image and the filter pairs p = co·Cin + ci in
/// [p0, p0 + pairs) (`dw` holds those pairs only). `pp`: the image's padded
/// input planes (forward layout); `gp`: its output gradient with rows
/// zero-filled to nb·16 floats, so that lanes past OW contribute nothing.
/// `T` taps are accumulated in registers at once.
///
/// Derivation: dw[co,ci,ky,kx] = Σ_{n,oy,ox} gy[n,co,oy,ox] ·
/// x[n,ci,oy+ky−ph,ox+kx−pw] = Σ gy[n,co,oy,ox] · P_ci[oy+ky, ox+kx]: for a
/// block of 16 outputs, the gradient block times the padded block the
/// forward read through that tap, lane by lane. The products stay spread
/// over 16 lanes in one register per tap, summed over every row and block
/// of the image (a dot product per row would end in a horizontal sum each
/// time); T taps share each gradient-block load, and each register is
/// added up once at the end.
///
/// # Safety
/// The level's CPU features are present.
#[inline(always)]
unsafe fn weight_grad_image_body<L: Lanes, const T: usize>(
    g: &ConvGeom,
    pp: &[f32],
    gp: &[f32],
    p0: usize,
    dw: &mut [f32],
) {
    let c = Corr::forward(g);
    let (nb, wp, kk) = (c.nb(), c.wp(), g.kh * g.kw);
    let (gw, plane) = (nb * V, c.hp() * wp);
    let pairs = dw.len() / kk;
    // What the unchecked reads rely on (always true for the caller).
    if pp.len() < c.padded_len() || gp.len() < g.cout * g.oh * gw || p0 + pairs > g.cout * g.cin {
        debug_assert!(false, "weight_grad_image: inconsistent sizes");
        return;
    }
    for (pi, dwp) in dw.chunks_exact_mut(kk).enumerate() {
        let (co, ci) = ((p0 + pi) / g.cin, (p0 + pi) % g.cin);
        let pl = pp[ci * plane..].as_ptr();
        let gpl = gp[co * g.oh * gw..].as_ptr();
        for t0 in (0..kk).step_by(T) {
            // Padded offsets of the T taps (past kk: repeat the last tap,
            // computed and dropped), and the output rows whose padded rows
            // hold input data for some tap of the group.
            let mut toff = [0usize; T];
            for (q, o) in toff.iter_mut().enumerate() {
                let t = (t0 + q).min(kk - 1);
                *o = (t / g.kw) * wp + t % g.kw;
            }
            let (ky_a, ky_b) = (t0 / g.kw, (t0 + T).min(kk).saturating_sub(1) / g.kw);
            let oy_lo = g.ph.saturating_sub(ky_b).min(g.oh);
            let oy_hi = (g.h + g.ph).saturating_sub(ky_a).clamp(oy_lo, g.oh);
            // SAFETY (all lane calls): CPU features by this fn's contract.
            let mut acc = [unsafe { L::splat(0.0) }; T];
            for oy in oy_lo..oy_hi {
                for b in 0..nb {
                    // SAFETY: row oy < oh of gradient plane co, block b < nb.
                    let gv = unsafe { L::load(gpl.add(oy * gw + b * V)) };
                    let base = oy * wp + b * V;
                    for (a, &o) in acc.iter_mut().zip(&toff) {
                        // SAFETY: padded row oy + ky ≤ hp − 1, columns up to
                        // (nb−1)·16 + kw−1 + 16 ≤ wp: inside plane ci.
                        *a = unsafe { a.madd(gv, L::load(pl.add(base + o))) };
                    }
                }
            }
            for (d, a) in dwp[t0..(t0 + T).min(kk)].iter_mut().zip(&acc) {
                *d += unsafe { a.to_array() }.iter().sum::<f32>();
            }
        }
    }
}

// ------------------------------------------------- per-level compilation

/// Defines `$name(lv, args..)`, which runs `$body::<Lanes, blocks>(args..)`
/// compiled for the SIMD level `lv` (callers pass only levels that
/// `available_levels` detected). AVX-512 has 32 registers, room for 8
/// accumulators plus operands; AVX2 (16 registers, two per 16 lanes) for 4.
macro_rules! per_level {
    ($name:ident => $body:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(lv: SimdLevel, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                // SAFETY: AVX-512F is enabled here.
                unsafe { $body::<Avx512Lanes, 8>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                // SAFETY: AVX2 and FMA are enabled here.
                unsafe { $body::<Avx2Lanes, 4>($($arg),*) }
            }
            match lv {
                // SAFETY: `lv` was detected on this CPU.
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: plain lanes need no CPU feature.
                _ => unsafe { $body::<Plain, 4>($($arg),*) },
            }
        }
    };
}

per_level!(pad_planes => pad_planes_body(
    src: &[f32], sh: usize, sw: usize, pt: isize, pl: isize, hp: usize, wp: usize,
    dst: &mut [f32],
));
per_level!(weight_grad_image => weight_grad_image_body(
    g: &ConvGeom, pp: &[f32], gp: &[f32], p0: usize, dw: &mut [f32],
));

// ------------------------------------------------------------ entry points

/// Runs the correlation `c` over a batch of `n` images: `src` [n, ci, sh,
/// sw], `wt` [co, ci, kh, kw], `out` [n, co, oh, ow] (overwritten with
/// bias + Σ, or incremented by it when `add`). c.co must be 1..=4. With
/// threads: one image per task when there are enough images, else each
/// image is padded once and its rows are split into blocks (each block
/// covering all output planes).
#[allow(clippy::too_many_arguments)]
fn correlate(
    lv: SimdLevel,
    c: &Corr,
    n: usize,
    threads: usize,
    src: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    add: bool,
    out: &mut [f32],
) {
    let (in_sz, ohw, kc) = (c.ci * c.sh * c.sw, c.oh * c.ow, c.ci * c.kh * c.kw);
    if ohw == 0 || in_sz == 0 || kc == 0 || !(1..=MAX_FEW).contains(&c.co) {
        return;
    }
    let image = |src_n: &[f32], out_n: &mut [f32], threads: usize| {
        with_scratch(c.padded_len(), |pp| {
            pad_planes(lv, src_n, c.sh, c.sw, c.pt, c.pl, c.hp(), c.wp(), pp);
            let pp = &*pp;
            // Row blocks; block k gets rows [k·blk, ..) of every plane.
            let blk = c.oh.div_ceil(threads.clamp(1, c.oh));
            let mut blocks: Vec<Vec<&mut [f32]>> = Vec::new();
            for plane in out_n.chunks_exact_mut(ohw) {
                for (k, rows) in plane.chunks_mut(blk * c.ow).enumerate() {
                    if blocks.len() <= k {
                        blocks.push(Vec::with_capacity(c.co));
                    }
                    blocks[k].push(rows);
                }
            }
            let run = |k: usize, outs: &mut Vec<&mut [f32]>| {
                correlate_rows(lv, c, pp, wt, bias, add, k * blk, outs);
            };
            if blocks.len() > 1 {
                blocks
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(k, outs)| run(k, outs));
            } else {
                blocks.iter_mut().enumerate().for_each(|(k, o)| run(k, o));
            }
        })
    };
    let out_sz = c.co * ohw;
    if threads > 1 && n >= threads {
        out.par_chunks_exact_mut(out_sz)
            .zip(src.par_chunks_exact(in_sz))
            .for_each(|(o, s)| image(s, o, 1));
    } else {
        for (o, s) in out.chunks_exact_mut(out_sz).zip(src.chunks_exact(in_sz)) {
            image(s, o, threads);
        }
    }
}

/// y = conv2d(x, w) + bias, overwriting `y` ([N, Cout, OH, OW]); stride 1
/// only ([`forward_applies`]). `threads`: how many to split for (1 =
/// serial; [`threads_for`] picks it from the work).
pub(crate) fn conv2d_forward(
    lv: SimdLevel,
    g: &ConvGeom,
    threads: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    correlate(lv, &Corr::forward(g), g.n, threads, x, w, bias, false, y);
}

/// dx += (bias per input channel) + conv2d's input-gradient of `gy`
/// ([N, Cout, OH, OW]) → `dx` ([N, Cin, H, W]); stride 1 only
/// ([`input_grad_applies`]). With a bias this is conv_transpose2d's forward.
///
/// Derivation: the forward adds w[co,ci,ky,kx]·x[ci,iy,ix] to
/// y[co, iy−ky+ph, ix−kx+pw]; the adjoint sends the gradient back along the
/// same arrows: dx[ci,iy,ix] = Σ_{co,ky,kx} w[co,ci,ky,kx] ·
/// gy[co, iy+ph−ky, ix+pw−kx] (0 outside gy). Substituting ky' = kh−1−ky,
/// kx' = kw−1−kx turns this into gy[co, iy+ky'−(kh−1−ph), ...]: a forward
/// correlation of gy, padded by kh−1−ph (a "full" correlation; negative
/// means cropped), with the kernel flipped in both axes and its two channel
/// axes swapped. So the same register-blocked kernel runs, on gy, and each
/// task writes only its own dx rows (no reduction).
pub(crate) fn conv2d_input_grad(
    lv: SimdLevel,
    g: &ConvGeom,
    threads: usize,
    gy: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dx: &mut [f32],
) {
    let kk = g.kh * g.kw;
    // wf[ci, co, ky', kx'] = w[co, ci, kh−1−ky', kw−1−kx'] (small: Cin ≤ 4).
    let mut wf = vec![0.0f32; g.cin * g.cout * kk];
    for (i, v) in wf.iter_mut().enumerate() {
        let (ci, co, t) = (i / (g.cout * kk), i / kk % g.cout, i % kk);
        *v = w[(co * g.cin + ci) * kk + (kk - 1 - t)];
    }
    let c = Corr::input_grad(g);
    correlate(lv, &c, g.n, threads, gy, &wf, bias, true, dx);
}

/// dw += conv2d's weight-gradient ([Cout, Cin, kh, kw]) from `x` and `gy`;
/// stride 1 only ([`weight_grad_applies`]).
///
/// With threads, images are split into `threads` contiguous groups, each
/// summed into its own partial dw and the partials added in a fixed order
/// (results do not depend on scheduling); with fewer images than threads
/// the filter pairs (co, ci) are split instead (disjoint parts of dw, no
/// reduction; each task pads the images itself).
pub(crate) fn conv2d_weight_grad(
    lv: SimdLevel,
    g: &ConvGeom,
    threads: usize,
    x: &[f32],
    gy: &[f32],
    dw: &mut [f32],
) {
    let c = Corr::forward(g);
    let (in_sz, out_sz) = (g.cin * g.in_plane(), g.cout * g.out_plane());
    let (kk, pairs, gw) = (g.kh * g.kw, g.cout * g.cin, c.nb() * V);
    if in_sz == 0 || out_sz == 0 || kk == 0 {
        return;
    }
    // Pairs [p0, p0 + dwp.len()/kk) over images [a, b).
    let run = |a: usize, b: usize, p0: usize, dwp: &mut [f32]| {
        with_scratch(c.padded_len() + g.cout * g.oh * gw, |buf| {
            let (pp, gp) = buf.split_at_mut(c.padded_len());
            for i in a..b {
                let (x_n, gy_n) = (
                    &x[i * in_sz..(i + 1) * in_sz],
                    &gy[i * out_sz..(i + 1) * out_sz],
                );
                pad_planes(lv, x_n, g.h, g.w, c.pt, c.pl, c.hp(), c.wp(), pp);
                pad_planes(lv, gy_n, g.oh, g.ow, 0, 0, g.oh, gw, gp);
                weight_grad_image(lv, g, pp, gp, p0, dwp);
            }
        })
    };
    if threads > 1 && g.n >= threads {
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|pi| {
                let mut part = vec![0.0f32; pairs * kk];
                run(pi * g.n / threads, (pi + 1) * g.n / threads, 0, &mut part);
                part
            })
            .collect();
        for p in &partials {
            for (d, &v) in dw.iter_mut().zip(p) {
                *d += v;
            }
        }
    } else if threads > 1 && pairs >= 2 {
        let per = pairs.div_ceil(threads);
        dw.par_chunks_mut(per * kk)
            .enumerate()
            .for_each(|(i, dwp)| run(0, g.n, i * per, dwp));
    } else {
        run(0, g.n, 0, dw);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{conv2d_geom, conv_transpose2d_geom, Conv2dParams, ConvTranspose2dParams};
    use super::*;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;
    use crate::shape::Shape;
    use crate::tensor::Tensor;
    use rand::SeedableRng;

    fn vals(shape: &[usize], seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::rand_uniform(shape.to_vec(), -1.0, 1.0, &mut rng)
            .to_vec()
            .unwrap()
    }

    fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            idx[d] = i % dims[d];
            i /= dims[d];
        }
        idx
    }

    /// |a − b| ≤ 1e-4·(1 + |b|); false for NaN.
    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + b.abs())
    }

    /// [`close`] everywhere; on failure names the first mismatching indices.
    fn assert_close(what: &str, got: &[f32], want: &[f32], dims: &[usize]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (a, b))| !close(**a, **b))
            .take(5)
            .map(|(i, (a, b))| format!("{:?}: got {a}, want {b}", unravel(i, dims)))
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: first mismatches (of dims {dims:?}):\n{}",
            bad.join("\n")
        );
    }

    /// (N, H, W, kh, kw, padding [ph, pw])
    type Case = (usize, usize, usize, usize, usize, [usize; 2]);

    /// Run with every few-channel count 1..=4 on the small side and 5
    /// channels on the other. Odd and non-square sizes, padding 0/1/2/4
    /// (4 > k−1 with k = 3 and 1: whole rows of padding; the input-gradient
    /// then crops instead of padding), kernels 1/3/5 and non-square, output
    /// widths below, at and between multiples of 16 (2, 5, 9, 16, 28, 32, 33, 39), and
    /// tap counts that leave the weight-gradient's last group of taps
    /// partly empty (9, 15, 25).
    const CASES: &[Case] = &[
        (1, 7, 5, 3, 3, [1, 1]),
        (3, 9, 13, 5, 5, [0, 0]),
        (3, 8, 11, 5, 5, [2, 2]),
        (1, 6, 33, 3, 3, [4, 4]),
        (3, 5, 7, 1, 1, [0, 0]),
        (1, 4, 6, 1, 1, [4, 1]),
        (3, 24, 24, 5, 5, [4, 4]),
        (1, 10, 29, 3, 5, [2, 4]),
        (3, 3, 4, 5, 5, [2, 1]),
        (1, 5, 16, 3, 3, [1, 1]),
        (3, 12, 32, 3, 3, [1, 1]),
    ];
    const THREADS: &[usize] = &[1, 2, 3, 8];

    #[test]
    fn direct_kernels_match_reference_at_every_level() {
        for (ci, &(n, h, w, kh, kw, p)) in CASES.iter().enumerate() {
            for few in 1..=MAX_FEW {
                let many = 5;
                let s = [1, 1];
                let params = Conv2dParams {
                    stride: s,
                    padding: p,
                };
                // Few output channels: forward and weight-gradient.
                let (xd, wd) = ([n, many, h, w], [few, many, kh, kw]);
                let g = conv2d_geom("t", &Shape::new(xd), &Shape::new(wd), params).unwrap();
                assert!(forward_applies(&g) && weight_grad_applies(&g));
                let seed = 100 * ci as u64 + 10 * few as u64;
                let (x, wt, b) = (vals(&xd, seed), vals(&wd, seed + 1), vals(&[few], seed + 2));
                let (want_y, yd) = reference::conv2d(&x, xd, &wt, wd, Some(&b), s, p);
                let gy = vals(&yd, seed + 3);
                let want_dw = reference::conv2d_weight_grad(&x, xd, &gy, yd, [kh, kw], s, p);
                // Few input channels: input-gradient (with and without the
                // bias that conv_transpose2d adds).
                let (xd2, wd2) = ([n, few, h, w], [many, few, kh, kw]);
                let g2 = conv2d_geom("t", &Shape::new(xd2), &Shape::new(wd2), params).unwrap();
                assert!(input_grad_applies(&g2));
                let wt2 = vals(&wd2, seed + 4);
                let b2 = vals(&[few], seed + 5);
                let gy2 = vals(&[n, many, g2.oh, g2.ow], seed + 6);
                let gd2 = [n, many, g2.oh, g2.ow];
                let want_dx = reference::conv2d_input_grad(&gy2, gd2, &wt2, wd2, [h, w], s, p);
                for lv in available_levels() {
                    for &t in THREADS {
                        let what =
                            format!("case {ci} {:?} few {few} level {lv} threads {t}", CASES[ci]);
                        let mut y = vec![f32::NAN; want_y.len()];
                        conv2d_forward(lv, &g, t, &x, &wt, Some(&b), &mut y);
                        assert_close(&format!("forward {what}"), &y, &want_y, &yd);
                        let mut y0 = vec![f32::NAN; want_y.len()];
                        conv2d_forward(lv, &g, t, &x, &wt, None, &mut y0);
                        let want_y0: Vec<f32> = want_y
                            .iter()
                            .enumerate()
                            .map(|(i, v)| v - b[i / g.out_plane() % few])
                            .collect();
                        assert_close(&format!("forward no bias {what}"), &y0, &want_y0, &yd);
                        // Accumulates onto what is there.
                        let mut dw = vec![1.0; want_dw.len()];
                        conv2d_weight_grad(lv, &g, t, &x, &gy, &mut dw);
                        let want_dw1: Vec<f32> = want_dw.iter().map(|v| v + 1.0).collect();
                        assert_close(&format!("weight-grad {what}"), &dw, &want_dw1, &wd);
                        let mut dx = vec![0.0; want_dx.len()];
                        conv2d_input_grad(lv, &g2, t, &gy2, &wt2, None, &mut dx);
                        assert_close(&format!("input-grad {what}"), &dx, &want_dx, &xd2);
                        let mut dxb = vec![0.5; want_dx.len()];
                        conv2d_input_grad(lv, &g2, t, &gy2, &wt2, Some(&b2), &mut dxb);
                        let want_dxb: Vec<f32> = want_dx
                            .iter()
                            .enumerate()
                            .map(|(i, v)| v + 0.5 + b2[i / (h * w) % few])
                            .collect();
                        assert_close(&format!("input-grad bias {what}"), &dxb, &want_dxb, &xd2);
                    }
                }
            }
        }
    }

    #[test]
    fn direct_input_grad_is_conv_transpose2d() {
        // conv_transpose2d 6→few, k3 p1 and k5 p2, odd sizes, with bias.
        for few in 1..=MAX_FEW {
            for (k, pad) in [(3, 1), (5, 2), (3, 0)] {
                let (xd, wd) = ([3, 6, 5, 7], [6, few, k, k]);
                let params = ConvTranspose2dParams::new(1, pad, 0);
                let g = conv_transpose2d_geom(&Shape::new(xd), &Shape::new(wd), params).unwrap();
                assert!(input_grad_applies(&g));
                let (x, wt, b) = (vals(&xd, 7), vals(&wd, 8), vals(&[few], 9));
                let (want, yd) = reference::conv_transpose2d(
                    &x,
                    xd,
                    &wt,
                    wd,
                    Some(&b),
                    [1, 1],
                    [pad, pad],
                    [0, 0],
                );
                for lv in available_levels() {
                    for &t in THREADS {
                        let mut y = vec![0.0; want.len()];
                        conv2d_input_grad(lv, &g, t, &x, &wt, Some(&b), &mut y);
                        let what = format!("conv_transpose2d few {few} k{k} p{pad} {lv} t{t}");
                        assert_close(&what, &y, &want, &yd);
                    }
                }
            }
        }
    }

    #[test]
    fn public_ops_on_the_direct_route_pass_gradcheck() {
        use super::super::{conv2d, conv_transpose2d};
        use crate::autograd::gradcheck;
        let rnd = |d: &[usize], seed| Tensor::from_vec(vals(d, seed), d.to_vec()).unwrap();
        // conv2d 5→2 k3 p2 (forward and weight-gradient direct) and 3→2
        // k5×3 p1 (input-gradient direct too: 2 ≤ Cin ≤ 4).
        for (xd, wd, pad) in [
            ([2, 5, 6, 7], [2, 5, 3, 3], 2),
            ([1, 3, 5, 8], [2, 3, 5, 3], 1),
        ] {
            let p = Conv2dParams::new(1, pad);
            let g = conv2d_geom("t", &Shape::new(xd), &Shape::new(wd), p).unwrap();
            assert!(forward_applies(&g) && weight_grad_applies(&g));
            let r = gradcheck(
                |v| conv2d(&v[0], &v[1], Some(&v[2]), p),
                &[rnd(&xd, 1), rnd(&wd, 2), rnd(&[wd[0]], 3)],
                1e-2,
                1e-3,
                1e-2,
                80,
            )
            .unwrap();
            assert!(r.ok(), "conv2d {xd:?} {wd:?} p{pad}: {r}");
        }
        // conv_transpose2d 6→3 k3 p1 stride 1: its forward is the direct
        // input-gradient (Cin = 3 ≤ 4 outputs, 6 summed).
        let p = ConvTranspose2dParams::new(1, 1, 0);
        let (xd, wd) = ([2, 6, 5, 6], [6, 3, 3, 3]);
        let g = conv_transpose2d_geom(&Shape::new(xd), &Shape::new(wd), p).unwrap();
        assert!(input_grad_pays(&g));
        let r = gradcheck(
            |v| conv_transpose2d(&v[0], &v[1], Some(&v[2]), p),
            &[rnd(&xd, 4), rnd(&wd, 5), rnd(&[3], 6)],
            1e-2,
            1e-3,
            1e-2,
            80,
        )
        .unwrap();
        assert!(r.ok(), "conv_transpose2d: {r}");
    }

    /// Median wall times in ms of `a` and `b` over `reps` runs each, run
    /// alternately after one warm-up each (so that the load of the shared
    /// machine drifts over both alike).
    fn median_ms2(reps: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
        a();
        b();
        let time = |f: &mut dyn FnMut()| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        };
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ta.push(time(&mut a));
            tb.push(time(&mut b));
        }
        ta.sort_by(|x, y| x.total_cmp(y));
        tb.sort_by(|x, y| x.total_cmp(y));
        (ta[reps / 2], tb[reps / 2])
    }

    /// im2col + GEMM (the `_with` path with its default plan, which is what
    /// the dispatch ran before this module) against the direct kernels, at
    /// the active level with the pool's threads. Run it in release mode (the
    /// test profile keeps debug assertions, which slow the GEMM's
    /// intrinsics ~3×):
    /// `cargo test --release --lib direct_vs_im2col_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn direct_vs_im2col_timing() {
        use super::super::cpu::{self as c, Plan};
        let lv = crate::cpu::simd::level();
        let reps = 15;
        let nt = crate::cpu::threads::num_threads();
        println!("level {lv}, {nt} threads, median of {reps}, im2col -> direct (ms)");
        // Forward + weight-gradient, few output channels: the MNIST decoder
        // conv 8→Cout k5 p4 on [64, 8, 24, 24].
        for cout in 1..=MAX_FEW {
            let (xd, wd) = ([64, 8, 24, 24], [cout, 8, 5, 5]);
            let p = Conv2dParams::new(1, 4);
            let g = conv2d_geom("t", &Shape::new(xd), &Shape::new(wd), p).unwrap();
            let (x, w, b) = (vals(&xd, 1), vals(&wd, 2), vals(&[cout], 3));
            let gy = vals(&[64, cout, g.oh, g.ow], 4);
            let (mut y0, mut y1) = (vec![0.0; gy.len()], vec![0.0; gy.len()]);
            let (mut d0, mut d1) = (vec![0.0; cout * g.k()], vec![0.0; cout * g.k()]);
            let plan = Plan::new(&g);
            let (f0, f1) = median_ms2(
                reps,
                || c::conv2d_forward_with(lv, &g, &plan, &x, &w, Some(&b), &mut y0),
                || conv2d_forward(lv, &g, threads_for(&g), &x, &w, Some(&b), &mut y1),
            );
            let (w0, w1) = median_ms2(
                reps,
                || c::conv2d_weight_grad_with(lv, &g, &plan, &x, &gy, &mut d0),
                || conv2d_weight_grad(lv, &g, threads_for(&g), &x, &gy, &mut d1),
            );
            println!(
                "conv 8->{cout} k5 p4 [64,8,24,24]: forward {f0:.3} -> {f1:.3}, \
                 weight-grad {w0:.3} -> {w1:.3}"
            );
            if cout == 1 {
                // The thread threshold: the same work serial vs split.
                let (s1, s2) = median_ms2(
                    reps,
                    || conv2d_forward(lv, &g, 1, &x, &w, Some(&b), &mut y0),
                    || conv2d_forward(lv, &g, nt, &x, &w, Some(&b), &mut y1),
                );
                let (s3, s4) = median_ms2(
                    reps,
                    || conv2d_weight_grad(lv, &g, 1, &x, &gy, &mut d0),
                    || conv2d_weight_grad(lv, &g, nt, &x, &gy, &mut d1),
                );
                println!(
                    "  1 thread -> {nt} ({} Mflop): forward {s1:.3} -> {s2:.3}, \
                     weight-grad {s3:.3} -> {s4:.3}",
                    g.flops() / 1_000_000
                );
            }
        }
        // Input-gradient, few input channels: LeNet conv1 Cin→8 k5 on
        // [32, Cin, 28, 28].
        for cin in 1..=MAX_FEW {
            let (xd, wd) = ([32, cin, 28, 28], [8, cin, 5, 5]);
            let p = Conv2dParams::new(1, 0);
            let g = conv2d_geom("t", &Shape::new(xd), &Shape::new(wd), p).unwrap();
            let w = vals(&wd, 2);
            let gy = vals(&[32, 8, g.oh, g.ow], 4);
            let n = 32 * cin * g.in_plane();
            let (mut dx0, mut dx1) = (vec![0.0; n], vec![0.0; n]);
            let plan = Plan::new(&g);
            let (i0, i1) = median_ms2(
                reps,
                || c::conv2d_input_grad_with(lv, &g, &plan, &gy, &w, None, &mut dx0),
                || conv2d_input_grad(lv, &g, threads_for(&g), &gy, &w, None, &mut dx1),
            );
            println!("conv {cin}->8 k5 [32,{cin},28,28]: input-grad {i0:.3} -> {i1:.3}");
            if cin == 1 {
                let (s1, s2) = median_ms2(
                    reps,
                    || conv2d_input_grad(lv, &g, 1, &gy, &w, None, &mut dx0),
                    || conv2d_input_grad(lv, &g, nt, &gy, &w, None, &mut dx1),
                );
                let mf = g.flops() / 1_000_000;
                println!("  1 thread -> {nt} ({mf} Mflop): input-grad {s1:.3} -> {s2:.3}");
            }
        }
        // conv_transpose2d 64→Cout k3 p1 on [32, 64, 32, 32], with bias.
        for cout in 1..=MAX_FEW {
            let (xd, wd) = ([32, 64, 32, 32], [64, cout, 3, 3]);
            let p = ConvTranspose2dParams::new(1, 1, 0);
            let g = conv_transpose2d_geom(&Shape::new(xd), &Shape::new(wd), p).unwrap();
            let (x, w, b) = (vals(&xd, 1), vals(&wd, 2), vals(&[cout], 3));
            let n = 32 * cout * g.in_plane();
            let (mut y0, mut y1) = (vec![0.0; n], vec![0.0; n]);
            let plan = Plan::new(&g);
            let (t0, t1) = median_ms2(
                reps,
                || c::conv2d_input_grad_with(lv, &g, &plan, &x, &w, Some(&b), &mut y0),
                || conv2d_input_grad(lv, &g, threads_for(&g), &x, &w, Some(&b), &mut y1),
            );
            println!("conv_transpose2d 64->{cout} k3 p1 [32,64,32,32]: forward {t0:.3} -> {t1:.3}");
        }
    }
}
