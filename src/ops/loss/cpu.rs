//! CPU kernels for the losses.
//!
//! Every hot loop is written once, as plain Rust over slices, and compiled
//! once per SIMD level by [`multiversion!`]: the body is inlined into
//! functions carrying `#[target_feature]`, so the same source becomes
//! AVX-512, AVX2+FMA or baseline code, and the caller picks the level at run
//! time. Loops are shaped for the auto-vectoriser: independent lanes for
//! reductions (floating-point sums are not reassociated otherwise), and
//! `axpy`-style slice updates for the filters.
//!
//! Parallelism sits *outside* the multiversioned bodies (a rayon closure is a
//! separate function and would not inherit the target features): callers
//! split the work into chunks or planes and call a kernel per piece. Partial
//! sums are collected in order and added serially, so results do not depend
//! on how rayon scheduled the pieces (same seed, same numbers).

use crate::cpu::simd::SimdLevel;

/// Defines `fn name(lv: SimdLevel, args..) -> R` that runs `body` compiled
/// for `lv` (AVX-512F, AVX2+FMA, or baseline). A level the CPU lacks falls
/// back to the baseline copy, so passing any level is safe.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(lv: $crate::cpu::simd::SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            match lv {
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::SimdLevel::Avx512
                    if std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma") =>
                {
                    // SAFETY: the features this copy was compiled for were just detected.
                    unsafe { avx512($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::SimdLevel::Avx2 | $crate::cpu::simd::SimdLevel::Avx512
                    if std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma") =>
                {
                    // SAFETY: as above.
                    unsafe { avx2($($arg),*) }
                }
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// Elements per parallel piece of the flat (MSE) kernels.
pub(crate) const CHUNK: usize = 1 << 14;
/// Below this many elements the kernels stay on the calling thread: waking
/// the pool costs more than the loop (the white-box step is overhead-bound).
pub(crate) const PAR_THRESHOLD: usize = 1 << 16;

/// Lanes of the f32 partial sums; 16 fills one AVX-512 register (two AVX2).
const LANES: usize = 16;
/// Elements summed in f32 before folding into f64, so f32 rounding stays small.
const FOLD: usize = 256;

// ----- MSE -----------------------------------------------------------------

multiversion! {
    /// Σ (a − b)² over one chunk, in f64.
    pub(crate) fn sq_diff_sum(a: &[f32], b: &[f32]) -> f64 {
        let mut total = 0f64;
        for (ca, cb) in a.chunks(FOLD).zip(b.chunks(FOLD)) {
            let mut acc = [0f32; LANES];
            let mut ia = ca.chunks_exact(LANES);
            let mut ib = cb.chunks_exact(LANES);
            for (xa, xb) in (&mut ia).zip(&mut ib) {
                for l in 0..LANES {
                    let d = xa[l] - xb[l];
                    acc[l] += d * d;
                }
            }
            let mut s: f64 = acc.iter().map(|&v| v as f64).sum();
            for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
                let d = (x - y) as f64;
                s += d * d;
            }
            total += s;
        }
        total
    }
}

multiversion! {
    /// `out = s·(a − b)` (the MSE gradient with s = 2g/n, or −2g/n for b).
    pub(crate) fn scaled_diff(a: &[f32], b: &[f32], s: f32, out: &mut [f32]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = s * (x - y);
        }
    }
}

multiversion! {
    /// `ga = s·(a − b)`, `gb = −ga`, in one pass.
    pub(crate) fn scaled_diff_both(a: &[f32], b: &[f32], s: f32, ga: &mut [f32], gb: &mut [f32]) {
        for (((oa, ob), &x), &y) in ga.iter_mut().zip(gb.iter_mut()).zip(a).zip(b) {
            let d = s * (x - y);
            *oa = d;
            *ob = -d;
        }
    }
}

/// Σ (a − b)², parallel over chunks when large.
pub(crate) fn mse_sum(lv: SimdLevel, a: &[f32], b: &[f32]) -> f64 {
    use rayon::prelude::*;
    if a.len() >= PAR_THRESHOLD {
        let parts: Vec<f64> = a
            .par_chunks(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .map(|(x, y)| sq_diff_sum(lv, x, y))
            .collect();
        parts.iter().sum()
    } else {
        sq_diff_sum(lv, a, b)
    }
}

/// The MSE gradients: `s·(a − b)` for a and its negation for b, each only
/// when asked for.
pub(crate) fn mse_grad(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    s: f32,
    need_a: bool,
    need_b: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    use rayon::prelude::*;
    let n = a.len();
    let par = n >= PAR_THRESHOLD;
    match (need_a, need_b) {
        (true, true) => {
            let mut ga = vec![0f32; n];
            let mut gb = vec![0f32; n];
            if par {
                ga.par_chunks_mut(CHUNK)
                    .zip(gb.par_chunks_mut(CHUNK))
                    .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                    .for_each(|((oa, ob), (x, y))| scaled_diff_both(lv, x, y, s, oa, ob));
            } else {
                scaled_diff_both(lv, a, b, s, &mut ga, &mut gb);
            }
            (Some(ga), Some(gb))
        }
        (false, false) => (None, None),
        (only_a, _) => {
            // For b alone: −s·(a − b) = s·(b − a), so swap the operands.
            let (x, y) = if only_a { (a, b) } else { (b, a) };
            let mut g = vec![0f32; n];
            if par {
                g.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
                    .for_each(|(o, (x, y))| scaled_diff(lv, x, y, s, o));
            } else {
                scaled_diff(lv, x, y, s, &mut g);
            }
            if only_a {
                (Some(g), None)
            } else {
                (None, Some(g))
            }
        }
    }
}

// ----- cross-entropy ------------------------------------------------------

multiversion! {
    /// Per row of `logits` ([rows, c]): `lse[i] = log Σ_j exp(x_ij)`, computed
    /// as m + log Σ exp(x − m) with m the row maximum so no exp overflows.
    /// Returns Σ_i (lse_i − x_i,label_i) in f64. Labels are pre-validated.
    pub(crate) fn ce_rows(logits: &[f32], c: usize, labels: &[usize], lse: &mut [f32]) -> f64 {
        let mut total = 0f64;
        for ((row, &label), l) in logits.chunks_exact(c).zip(labels).zip(lse.iter_mut()) {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
            *l = m + s.ln();
            let picked = row.get(label).copied().unwrap_or(f32::NAN);
            total += (*l - picked) as f64;
        }
        total
    }
}

multiversion! {
    /// dL/dlogits = s·(softmax(x) − onehot(label)), softmax = exp(x − lse).
    pub(crate) fn ce_grad_rows(
        logits: &[f32],
        c: usize,
        labels: &[usize],
        lse: &[f32],
        s: f32,
        out: &mut [f32],
    ) {
        for (((row, o), &label), &l) in logits
            .chunks_exact(c)
            .zip(out.chunks_exact_mut(c))
            .zip(labels)
            .zip(lse)
        {
            for (oj, &x) in o.iter_mut().zip(row) {
                *oj = s * (x - l).exp();
            }
            if let Some(oj) = o.get_mut(label) {
                *oj -= s;
            }
        }
    }
}

// ----- total variation ----------------------------------------------------

/// One H×W plane: (Σ vertical squared differences, Σ horizontal ones).
///
/// Both sums run over the plane as one flat array, because image rows are
/// short (28 pixels for MNIST) and per-row loops would spend their time in
/// tails. Vertical pairs are (k, k+W) for every k < (H−1)·W, with no
/// exceptions. Horizontal pairs are (k, k+1) for every k < H·W − 1, which
/// includes H − 1 pairs that straddle a row end; those are subtracted after.
pub(crate) fn tv_sq_plane(lv: SimdLevel, x: &[f32], h: usize, w: usize) -> (f64, f64) {
    let hw = h * w;
    let sv = sq_diff_sum(lv, &x[w..hw], &x[..hw - w]);
    let mut sh = sq_diff_sum(lv, &x[1..hw], &x[..hw - 1]);
    for i in 1..h {
        let d = x[i * w] as f64 - x[i * w - 1] as f64;
        sh -= d * d;
    }
    (sv, sh)
}

multiversion! {
    /// Gradient of cv·Σ(vertical d²) + ch·Σ(horizontal d²) for one plane;
    /// overwrites `out`. Each difference d = x[q] − x[p] sends +2c·d to q and
    /// −2c·d to p, so a pixel gets 2c·(x − neighbour) summed over its
    /// neighbours (a discrete Laplacian). Flat passes as in [`tv_sq_plane`]:
    /// horizontally the whole plane as one row, then the H − 1 pairs that
    /// straddle a row end are taken back out.
    pub(crate) fn tv_sq_grad_plane(x: &[f32], h: usize, w: usize, cv: f32, ch: f32, out: &mut [f32]) {
        let (tv, th) = (2.0 * cv, 2.0 * ch);
        let hw = h * w;
        let (x, out) = (&x[..hw], &mut out[..hw]);
        // Horizontal, the plane as one long row.
        out[0] = th * (x[0] - x[1]);
        // Zipped slices instead of x[k ± 1], so no bounds checks block vectorisation.
        for ((o, &c), (&l, &r)) in out[1..hw - 1]
            .iter_mut()
            .zip(&x[1..hw - 1])
            .zip(x[..hw - 2].iter().zip(&x[2..]))
        {
            *o = th * ((c - l) + (c - r));
        }
        out[hw - 1] = th * (x[hw - 1] - x[hw - 2]);
        for i in 1..h {
            let k = i * w;
            let d = th * (x[k] - x[k - 1]);
            out[k] -= d;
            out[k - 1] += d;
        }
        // Vertical: each pixel minus the one above, and minus the one below.
        for ((o, &c), &up) in out[w..].iter_mut().zip(&x[w..]).zip(&x[..hw - w]) {
            *o += tv * (c - up);
        }
        for ((o, &c), &down) in out[..hw - w].iter_mut().zip(&x[..hw - w]).zip(&x[w..]) {
            *o += tv * (c - down);
        }
    }
}

multiversion! {
    /// Power TV for one plane: Σ over i<H−1, j<W−1 of (dh² + dv² + eps)^(β/2).
    /// `beta == 2` skips `powf` (the term is then just the sum).
    pub(crate) fn tv_pow_plane(x: &[f32], h: usize, w: usize, beta: f32, eps: f32) -> f64 {
        let half = 0.5 * beta;
        let mut total = 0f64;
        for i in 0..h - 1 {
            let row = &x[i * w..(i + 1) * w];
            let next = &x[(i + 1) * w..(i + 2) * w];
            let mut s = 0f64;
            for j in 0..w - 1 {
                let dh = row[j + 1] - row[j];
                let dv = next[j] - row[j];
                let q = dh * dh + dv * dv + eps;
                let t = if beta == 2.0 { q } else { q.powf(half) };
                s += t as f64;
            }
            total += s;
        }
        total
    }
}

multiversion! {
    /// Gradient of s·Σ (dh² + dv² + eps)^(β/2) for one plane. With
    /// u = s·β·q^(β/2 − 1): x[i,j+1] gets u·dh, x[i+1,j] gets u·dv and
    /// x[i,j] gets −u·(dh + dv). `a`, `b` are scratch rows of length ≥ W−1;
    /// `out` must be zeroed.
    pub(crate) fn tv_pow_grad_plane(
        x: &[f32],
        h: usize,
        w: usize,
        beta: f32,
        eps: f32,
        s: f32,
        out: &mut [f32],
        a: &mut [f32],
        b: &mut [f32],
    ) {
        let e = 0.5 * beta - 1.0;
        let sb = s * beta;
        let m = w - 1;
        for i in 0..h - 1 {
            let row = &x[i * w..(i + 1) * w];
            let next = &x[(i + 1) * w..(i + 2) * w];
            for j in 0..m {
                let dh = row[j + 1] - row[j];
                let dv = next[j] - row[j];
                let q = dh * dh + dv * dv + eps;
                let u = if beta == 2.0 { sb } else { sb * q.powf(e) };
                a[j] = u * dh;
                b[j] = u * dv;
            }
            let (top, bottom) = out.split_at_mut((i + 1) * w);
            let o = &mut top[i * w..];
            for j in 0..m {
                o[j] -= a[j] + b[j];
            }
            for j in 0..m {
                o[j + 1] += a[j];
            }
            let o_dn = &mut bottom[..w];
            for j in 0..m {
                o_dn[j] += b[j];
            }
        }
    }
}

// ----- SSIM ---------------------------------------------------------------

/// The per-plane constants of the SSIM kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SsimParams {
    /// NP/(NP − 1) for the sample covariance, else 1.
    pub cov_norm: f32,
    /// (K1·L)².
    pub c1: f32,
    /// (K2·L)².
    pub c2: f32,
}

/// Scratch buffers of one plane, allocated once per plane and reused for
/// every row (the kernels themselves never allocate).
pub(crate) struct SsimScratch {
    /// Centred inputs and their products, one image row each: a', b', a'², b'², a'b'.
    q: Vec<f32>,
    /// Horizontally filtered moments: 5 × H × Wv.
    hf: Vec<f32>,
    /// Fully filtered moments of one output row: 5 × Wv.
    mf: Vec<f32>,
    /// Backward: per-position coefficients of one output row: 4 × Wv.
    p: Vec<f32>,
    /// Backward: vertical adjoint, 4 × H × Wv.
    hg: Vec<f32>,
    /// Backward: horizontal adjoint of one image row, 4 × W.
    f: Vec<f32>,
}

impl SsimScratch {
    /// Buffers for an H×W plane and a window of `ws`; `backward` adds the
    /// adjoint buffers.
    pub(crate) fn new(h: usize, w: usize, ws: usize, backward: bool) -> Self {
        let wv = w + 1 - ws;
        let bw = |n: usize| if backward { vec![0f32; n] } else { Vec::new() };
        SsimScratch {
            q: vec![0f32; 5 * w],
            hf: vec![0f32; 5 * h * wv],
            mf: vec![0f32; 5 * wv],
            p: bw(4 * wv),
            hg: bw(4 * h * wv),
            f: bw(4 * w),
        }
    }
}

/// Mean of a plane in f64, used to centre the data: variances computed as
/// E[x²] − E[x]² lose f32 digits when E[x] is large relative to the spread,
/// and both are shift-invariant, so we filter x − mean(x) instead.
pub(crate) fn plane_mean(x: &[f32]) -> f32 {
    (crate::cpu::simd::sum(x) / x.len().max(1) as f64) as f32
}

multiversion! {
    /// Horizontal pass of the separable window over one plane: for every
    /// image row, the five moments (a', b', a'², b'², a'b', with a' = a − ca)
    /// filtered along the row to `wv = W − ws + 1` valid positions.
    pub(crate) fn ssim_hpass(
        a: &[f32],
        b: &[f32],
        w: usize,
        ca: f32,
        cb: f32,
        win: &[f32],
        q: &mut [f32],
        hf: &mut [f32],
    ) {
        let h = a.len() / w;
        let wv = w + 1 - win.len();
        let (qa, rest) = q.split_at_mut(w);
        let (qb, rest) = rest.split_at_mut(w);
        let (qaa, rest) = rest.split_at_mut(w);
        let (qbb, qab) = rest.split_at_mut(w);
        let plane = h * wv;
        for y in 0..h {
            let ra = &a[y * w..(y + 1) * w];
            let rb = &b[y * w..(y + 1) * w];
            for x in 0..w {
                let va = ra[x] - ca;
                let vb = rb[x] - cb;
                qa[x] = va;
                qb[x] = vb;
                qaa[x] = va * va;
                qbb[x] = vb * vb;
                qab[x] = va * vb;
            }
            for (k, src) in [&*qa, &*qb, &*qaa, &*qbb, &*qab].into_iter().enumerate() {
                let o = &mut hf[k * plane + y * wv..k * plane + (y + 1) * wv];
                o.fill(0.0);
                for (t, &wt) in win.iter().enumerate() {
                    for (ov, &sv) in o.iter_mut().zip(&src[t..t + wv]) {
                        *ov += wt * sv;
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Vertical pass for output row `p`: mf[k] = Σ_t win[t]·hf[k][p + t].
    pub(crate) fn ssim_vpass_row(hf: &[f32], h: usize, wv: usize, p: usize, win: &[f32], mf: &mut [f32]) {
        let plane = h * wv;
        for k in 0..5 {
            let o = &mut mf[k * wv..(k + 1) * wv];
            o.fill(0.0);
            for (t, &wt) in win.iter().enumerate() {
                let src = &hf[k * plane + (p + t) * wv..k * plane + (p + t + 1) * wv];
                for (ov, &sv) in o.iter_mut().zip(src) {
                    *ov += wt * sv;
                }
            }
        }
    }
}

multiversion! {
    /// The SSIM of each position of one output row, summed (f64).
    pub(crate) fn ssim_row_sum(mf: &[f32], wv: usize, ca: f32, cb: f32, prm: SsimParams) -> f64 {
        let (mx, rest) = mf.split_at(wv);
        let (my, rest) = rest.split_at(wv);
        let (mxx, rest) = rest.split_at(wv);
        let (myy, mxy) = rest.split_at(wv);
        let k = prm.cov_norm;
        let mut acc = 0f64;
        for x in 0..wv {
            let (ux0, uy0) = (mx[x], my[x]);
            let vx = k * (mxx[x] - ux0 * ux0);
            let vy = k * (myy[x] - uy0 * uy0);
            let vxy = k * (mxy[x] - ux0 * uy0);
            let (ux, uy) = (ux0 + ca, uy0 + cb);
            let a1 = 2.0 * ux * uy + prm.c1;
            let a2 = 2.0 * vxy + prm.c2;
            let b1 = ux * ux + uy * uy + prm.c1;
            let b2 = vx + vy + prm.c2;
            acc += ((a1 * a2) / (b1 * b2)) as f64;
        }
        acc
    }
}

multiversion! {
    /// Backward for one output row: from the moments, the four per-position
    /// coefficients (see `ssim.rs` for the derivation), scaled by `s`,
    /// scattered through the vertical adjoint into `hg` (4 × H × Wv).
    pub(crate) fn ssim_row_backward(
        mf: &[f32],
        h: usize,
        wv: usize,
        p: usize,
        ca: f32,
        cb: f32,
        prm: SsimParams,
        s: f32,
        win: &[f32],
        coef: &mut [f32],
        hg: &mut [f32],
    ) {
        let (mx, rest) = mf.split_at(wv);
        let (my, rest) = rest.split_at(wv);
        let (mxx, rest) = rest.split_at(wv);
        let (myy, mxy) = rest.split_at(wv);
        let k = prm.cov_norm;
        {
            let (p1a, rest) = coef.split_at_mut(wv);
            let (p1b, rest) = rest.split_at_mut(wv);
            let (p2, p3) = rest.split_at_mut(wv);
            for x in 0..wv {
                let (ux0, uy0) = (mx[x], my[x]);
                let vx = k * (mxx[x] - ux0 * ux0);
                let vy = k * (myy[x] - uy0 * uy0);
                let vxy = k * (mxy[x] - ux0 * uy0);
                let (ux, uy) = (ux0 + ca, uy0 + cb);
                let a1 = 2.0 * ux * uy + prm.c1;
                let a2 = 2.0 * vxy + prm.c2;
                let b1 = ux * ux + uy * uy + prm.c1;
                let b2 = vx + vy + prm.c2;
                let inv_d = 1.0 / (b1 * b2);
                let ssim = a1 * a2 * inv_d;
                // ∂S/∂μx, ∂S/∂μy, ∂S/∂σx² (= ∂S/∂σy²), ∂S/∂σxy.
                let s_ux = 2.0 * uy * a2 * inv_d - 2.0 * ux * ssim / b1;
                let s_uy = 2.0 * ux * a2 * inv_d - 2.0 * uy * ssim / b1;
                let s_v = -ssim / b2;
                let s_vxy = 2.0 * a1 * inv_d;
                let c2 = s * 2.0 * k * s_v;
                let c3 = s * k * s_vxy;
                p2[x] = c2;
                p3[x] = c3;
                p1a[x] = s * s_ux - c2 * ux0 - c3 * uy0;
                p1b[x] = s * s_uy - c2 * uy0 - c3 * ux0;
            }
        }
        let plane = h * wv;
        for m in 0..4 {
            let src = &coef[m * wv..(m + 1) * wv];
            for (t, &wt) in win.iter().enumerate() {
                let o = &mut hg[m * plane + (p + t) * wv..m * plane + (p + t + 1) * wv];
                for (ov, &sv) in o.iter_mut().zip(src) {
                    *ov += wt * sv;
                }
            }
        }
    }
}

multiversion! {
    /// Final backward step for one image row `y`: the horizontal adjoint of
    /// the four coefficient maps, then
    /// dA = F1a + a'·F2 + b'·F3 and dB = F1b + b'·F2 + a'·F3.
    pub(crate) fn ssim_hadjoint_row(
        a: &[f32],
        b: &[f32],
        w: usize,
        h: usize,
        y: usize,
        ca: f32,
        cb: f32,
        win: &[f32],
        hg: &[f32],
        f: &mut [f32],
        ga: Option<&mut [f32]>,
        gb: Option<&mut [f32]>,
    ) {
        let wv = w + 1 - win.len();
        let plane = h * wv;
        f.fill(0.0);
        for m in 0..4 {
            let src = &hg[m * plane + y * wv..m * plane + (y + 1) * wv];
            let o = &mut f[m * w..(m + 1) * w];
            for (t, &wt) in win.iter().enumerate() {
                for (ov, &sv) in o[t..t + wv].iter_mut().zip(src) {
                    *ov += wt * sv;
                }
            }
        }
        let (f1a, rest) = f.split_at(w);
        let (f1b, rest) = rest.split_at(w);
        let (f2, f3) = rest.split_at(w);
        let ra = &a[y * w..(y + 1) * w];
        let rb = &b[y * w..(y + 1) * w];
        if let Some(ga) = ga {
            for x in 0..w {
                ga[x] = f1a[x] + (ra[x] - ca) * f2[x] + (rb[x] - cb) * f3[x];
            }
        }
        if let Some(gb) = gb {
            for x in 0..w {
                gb[x] = f1b[x] + (rb[x] - cb) * f2[x] + (ra[x] - ca) * f3[x];
            }
        }
    }
}

/// Σ of the SSIM map of one plane (valid positions only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ssim_plane_sum(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    h: usize,
    w: usize,
    win: &[f32],
    prm: SsimParams,
    sc: &mut SsimScratch,
) -> f64 {
    let ws = win.len();
    let (hv, wv) = (h + 1 - ws, w + 1 - ws);
    let (ca, cb) = (plane_mean(a), plane_mean(b));
    ssim_hpass(lv, a, b, w, ca, cb, win, &mut sc.q, &mut sc.hf);
    let mut total = 0f64;
    for p in 0..hv {
        ssim_vpass_row(lv, &sc.hf, h, wv, p, win, &mut sc.mf);
        total += ssim_row_sum(lv, &sc.mf, wv, ca, cb, prm);
    }
    total
}

/// Gradient of `s · Σ SSIM map` for one plane, into `ga` / `gb` (H×W each, when given).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ssim_plane_grad(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    h: usize,
    w: usize,
    win: &[f32],
    prm: SsimParams,
    s: f32,
    sc: &mut SsimScratch,
    mut ga: Option<&mut [f32]>,
    mut gb: Option<&mut [f32]>,
) {
    let ws = win.len();
    let (hv, wv) = (h + 1 - ws, w + 1 - ws);
    let (ca, cb) = (plane_mean(a), plane_mean(b));
    ssim_hpass(lv, a, b, w, ca, cb, win, &mut sc.q, &mut sc.hf);
    sc.hg.fill(0.0);
    for p in 0..hv {
        ssim_vpass_row(lv, &sc.hf, h, wv, p, win, &mut sc.mf);
        ssim_row_backward(
            lv, &sc.mf, h, wv, p, ca, cb, prm, s, win, &mut sc.p, &mut sc.hg,
        );
    }
    for y in 0..h {
        let ra = ga.as_deref_mut().map(|g| &mut g[y * w..(y + 1) * w]);
        let rb = gb.as_deref_mut().map(|g| &mut g[y * w..(y + 1) * w]);
        ssim_hadjoint_row(lv, a, b, w, h, y, ca, cb, win, &sc.hg, &mut sc.f, ra, rb);
    }
}
