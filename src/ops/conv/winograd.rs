//! Winograd F(2×2, 3×3) for 3×3, stride-1, pad-1 ("same") convolutions with
//! many channels (the CIFAR net's conv12 … conv32).
//!
//! ## Why
//!
//! im2col + GEMM spends 9 multiplies per output pixel, input channel and
//! output channel. Winograd's minimal filtering computes a 2×2 block of
//! outputs from a 4×4 block of inputs with 16 multiplies instead of 36, so
//! the GEMM work drops by 36/16 = 2.25×; the price is three cheap linear
//! transforms (additions only, except the weights').
//!
//! ## The algorithm (Lavin & Gray 2016)
//!
//! In 1-D, two outputs of a 3-tap correlation y_i = Σ_k g_k·d_{i+k} from four
//! inputs d_0..d_3 are Y = Aᵀ[(G g) ⊙ (Bᵀ d)] with
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡ 1    0    0 ⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢ 1/2  1/2  1/2⎥    Aᵀ = ⎡1  1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢ 1/2 −1/2  1/2⎥         ⎣0  1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣ 0    0    1 ⎦
//! ```
//!
//! (check: row 0 of Aᵀ sums m0+m1+m2 = (d0−d2)g0 + (d1+d2)(g0+g1+g2)/2 +
//! (d2−d1)(g0−g1+g2)/2 = d0g0 + d1g1 + d2g2 = y_0, and likewise y_1). The 2-D
//! version nests the 1-D one along rows and columns:
//!
//! ```text
//! Y (2×2) = Aᵀ [ U ⊙ V ] A,   U = G g Gᵀ (4×4),   V = Bᵀ d B (4×4)
//! ```
//!
//! Because every transform is linear, the sum over input channels can be
//! taken *inside* the brackets: for each of the 16 positions ξ of the 4×4
//! transformed tile, M_ξ[co, tile] = Σ_ci U_ξ[co, ci] · V_ξ[ci, tile]. That
//! is 16 independent GEMMs ([Cout, Cin] · [Cin, tiles]), which is where the
//! time goes and why the existing packed GEMM does the work.
//!
//! ## The input-gradient
//!
//! The input-gradient of a 3×3 pad-1 stride-1 conv is itself a 3×3 pad-1
//! stride-1 conv of the output gradient, with the weights transposed over
//! channels and flipped in space: dx[ci] = Σ_co conv(g[co], w[co, ci, 2−ky,
//! 2−kx]). (An input pixel at offset (ky−1, kx−1) from an output pixel is,
//! seen from the input pixel, at offset (1−ky, 1−kx).) So it runs the same
//! kernel with differently transformed weights.
//!
//! ## Numerics
//!
//! F(2×2, 3×3) has small transform constants (0, ±1, ±1/2): its rounding
//! error is a small multiple of direct convolution's, so the tests compare
//! against the f64 reference with the same kind of relative tolerance (a
//! little looser). Larger tiles (F(4×4, 3×3)) would save more work but have
//! constants up to 8 and noticeably worse error.
//!
//! ## Data layout and threading
//!
//! Images are processed in groups of about [`GROUP_TILES`] tiles so the
//! transformed buffers stay cache-sized. Within a group:
//! 1. input transform, parallel over input channels: V is laid out
//!    [ci][ξ][tile], so each channel owns one contiguous block;
//! 2. the 16 GEMMs, parallel over ξ: M is laid out [ξ][co][tile], so each
//!    GEMM owns one contiguous block (its B operand reads V with row stride
//!    16·tiles);
//! 3. output transform, parallel over (image, output channel) planes.

use super::cpu::ConvGeom;
use crate::cpu::gemm::{gemm_at, MatRef};
use crate::cpu::simd::SimdLevel;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Tiles (2×2 output blocks over the whole batch) below which im2col wins:
/// each of the 16 GEMMs would be a few columns wide, and packing U_ξ and
/// transforming the weights would cost more than the multiplies saved
/// (measured: 1×128×8×8, 16 tiles, 1.6 ms Winograd vs 1.0 ms im2col;
/// 64 tiles already favour Winograd).
const MIN_TILES: usize = 32;

/// Channels below which im2col is as good: the GEMMs' inner dimension would
/// be too short for the transforms to pay off (e.g. conv11 with 3 inputs).
const MIN_CHANNELS: usize = 16;

/// Tiles per group: V and M then take 16·C·GROUP_TILES floats each (4 MiB
/// for C = 64), and each GEMM is long enough (≥ 1024 columns when the batch
/// allows) to run near peak.
const GROUP_TILES: usize = 1024;

/// True when conv2d with geometry `g` is a 3×3 stride-1 "same" convolution
/// with enough channels for Winograd to beat im2col. The input-gradient of
/// such a conv has the same shape with channels swapped, so the test is
/// symmetric in Cin/Cout.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.ph == 1
        && g.pw == 1
        && g.oh == g.h
        && g.ow == g.w
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        && g.n * g.h.div_ceil(2) * g.w.div_ceil(2) >= MIN_TILES
}

/// False when the environment sets `SPLITINV_WINOGRAD=0`: the dispatch then
/// keeps im2col for every conv (for A/B timing and for ruling Winograd out
/// when chasing a numerical difference). Read once.
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPLITINV_WINOGRAD").map_or(true, |v| v.trim() != "0"))
}

/// The per-filter form of the weight transform, kept as the readable
/// definition that the tests check the pipeline with.
#[cfg(test)]
/// U = G g Gᵀ for one 3×3 filter `f` (row-major), as 16 values ξ = 4i + j.
fn transform_filter(f: [f32; 9]) -> [f32; 16] {
    // G f: 4×3 (rows: f0, (f0+f1+f2)/2, (f0−f1+f2)/2, f2 of f's rows).
    let mut gf = [[0f32; 3]; 4];
    for c in 0..3 {
        let (a, b, d) = (f[c], f[3 + c], f[6 + c]);
        gf[0][c] = a;
        gf[1][c] = 0.5 * (a + b + d);
        gf[2][c] = 0.5 * (a - b + d);
        gf[3][c] = d;
    }
    // (G f) Gᵀ: the same combination along each row.
    let mut u = [0f32; 16];
    for (i, r) in gf.iter().enumerate() {
        u[4 * i] = r[0];
        u[4 * i + 1] = 0.5 * (r[0] + r[1] + r[2]);
        u[4 * i + 2] = 0.5 * (r[0] - r[1] + r[2]);
        u[4 * i + 3] = r[2];
    }
    u
}

/// Transformed weights, laid out [o][ξ][i] (o outputs, i inputs of the
/// conv being run), so that each output channel's block is contiguous (and
/// built in parallel) while U_ξ is still a matrix with row stride 16·i.
/// `transposed` = false: the conv2d itself, w is [o, i, 3, 3].
/// `transposed` = true: its input-gradient, w is [i, o, 3, 3] and each
/// filter is flipped in space (see the module docs).
fn compute_weights(lv: SimdLevel, w: &[f32], o: usize, i: usize, transposed: bool) -> Vec<f32> {
    let mut u = vec![0f32; u_row(i) * o];
    // U_ab = Σ_pq G_ap f_pq G_bq: each of the 16 outputs is a fixed
    // combination of the 9 taps. Applying it to whole rows of taps (tap pq
    // of every input filter of one output channel) makes it 16×9
    // vectorisable axpys instead of one scalar 4×4 product per filter.
    u.par_chunks_mut(u_row(i)).enumerate().for_each_init(
        || vec![0f32; 9 * i],
        |taps, (oc, blk)| transform_block(lv, w, o, i, transposed, oc, taps, blk),
    );
    u
}

/// Transformed weights entries kept by [`transform_weights`].
const CACHE_ENTRIES: usize = 12;

/// A transformed weight set and the exact weights it came from.
struct CacheEntry {
    o: usize,
    i: usize,
    transposed: bool,
    w: Vec<f32>,
    u: Arc<Vec<f32>>,
}

/// [`compute_weights`], remembered across calls. In the white-box attack
/// the weights are frozen and every step transforms the same ones again
/// (≈0.3–0.9 ms per 128×128 layer and direction, several percent of a
/// step). An entry is reused only when the weights are bit-for-bit the ones
/// it was made from (a memcmp-speed check, ~20× cheaper than the
/// transform), so weights updated in place by an optimiser are simply
/// transformed again.
fn transform_weights(
    lv: SimdLevel,
    w: &[f32],
    o: usize,
    i: usize,
    transposed: bool,
) -> Arc<Vec<f32>> {
    static CACHE: Mutex<Vec<CacheEntry>> = Mutex::new(Vec::new());
    let same = |e: &CacheEntry| {
        e.o == o
            && e.i == i
            && e.transposed == transposed
            && e.w.len() == w.len()
            && e.w.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits())
    };
    if let Ok(cache) = CACHE.lock() {
        if let Some(e) = cache.iter().find(|e| same(e)) {
            return Arc::clone(&e.u);
        }
    }
    let u = Arc::new(compute_weights(lv, w, o, i, transposed));
    // A poisoned lock only means another thread panicked mid-update; the
    // cache is then just skipped.
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() >= CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push(CacheEntry {
            o,
            i,
            transposed,
            w: w.to_vec(),
            u: Arc::clone(&u),
        });
    }
    u
}

/// One output channel's block of [`transform_weights`]; `taps` is scratch
/// of 9·i floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_block_body(
    w: &[f32],
    o: usize,
    i: usize,
    transposed: bool,
    oc: usize,
    taps: &mut [f32],
    blk: &mut [f32],
) {
    let gm: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    // taps[pq][ic] = filter (oc, ic) at tap pq.
    for ic in 0..i {
        for pq in 0..9 {
            taps[pq * i + ic] = if transposed {
                w[(ic * o + oc) * 9 + 8 - pq]
            } else {
                w[(oc * i + ic) * 9 + pq]
            };
        }
    }
    for xi in 0..16 {
        let (a, b) = (xi / 4, xi % 4);
        let dst = &mut blk[xi * i..(xi + 1) * i];
        dst.fill(0.0);
        for pq in 0..9 {
            let c = gm[a][pq / 3] * gm[b][pq % 3];
            if c != 0.0 {
                for (d, &t) in dst.iter_mut().zip(&taps[pq * i..(pq + 1) * i]) {
                    *d += c * t;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_block_avx512(
    w: &[f32],
    o: usize,
    i: usize,
    transposed: bool,
    oc: usize,
    taps: &mut [f32],
    blk: &mut [f32],
) {
    transform_block_body(w, o, i, transposed, oc, taps, blk)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_block_avx2(
    w: &[f32],
    o: usize,
    i: usize,
    transposed: bool,
    oc: usize,
    taps: &mut [f32],
    blk: &mut [f32],
) {
    transform_block_body(w, o, i, transposed, oc, taps, blk)
}

#[allow(clippy::too_many_arguments)]
fn transform_block(
    lv: SimdLevel,
    w: &[f32],
    o: usize,
    i: usize,
    transposed: bool,
    oc: usize,
    taps: &mut [f32],
    blk: &mut [f32],
) {
    match lv {
        // SAFETY: callers pass only levels that `available_levels` detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { transform_block_avx512(w, o, i, transposed, oc, taps, blk) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { transform_block_avx2(w, o, i, transposed, oc, taps, blk) },
        _ => transform_block_body(w, o, i, transposed, oc, taps, blk),
    }
}

/// Row stride of the transformed weights' [o] blocks: 16·i plus one cache
/// line, so that the rows of U_ξ do not all fall in the same cache sets.
fn u_row(i: usize) -> usize {
    16 * i + 16
}

/// The smallest odd number of cache lines (of 16 floats) holding `t` floats.
fn odd_lines(t: usize) -> usize {
    (t.div_ceil(16) | 1) * 16
}

/// Runs `f` on two scratch slices owned by the calling thread and kept for
/// the next call (the transformed tiles are megabytes: allocating and
/// zeroing them every call showed up as ~9% memset). Taken out of the
/// thread-local while in use, so a nested call gets fresh ones.
fn with_buffers<R>(a_len: usize, b_len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    thread_local! {
        static BUFS: std::cell::Cell<(Vec<f32>, Vec<f32>)> =
            const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    }
    let (mut a, mut b) = BUFS.with(|c| c.take());
    if a.len() < a_len {
        a.resize(a_len, 0.0);
    }
    if b.len() < b_len {
        b.resize(b_len, 0.0);
    }
    let r = f(&mut a[..a_len], &mut b[..b_len]);
    BUFS.with(|c| c.set((a, b)));
    r
}

/// Geometry of one run: `c_in` → `c_out` channels on h×w planes.
#[derive(Clone, Copy)]
struct Run {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    /// Tile rows / columns per image: ⌈h/2⌉, ⌈w/2⌉.
    th: usize,
    tw: usize,
}

impl Run {
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// V = Bᵀ d B for every tile of one input plane `x` (h×w), written to
/// `v[ξ·ld + t0 + tile]`. `rows` is scratch of at least 16·(tw + 1) floats.
///
/// Tile (ty, tx) reads input rows 2ty−1 … 2ty+2 and columns 2tx−1 … 2tx+2.
/// Splitting each row into its odd columns (e[k] = x[2k−1], the tiles'
/// columns 0 and 2) and even columns (o[k] = x[2k], columns 1 and 3) turns
/// the stride-2 tile walk into unit-stride vector loops over tx.
#[inline(always)]
fn input_transform_body(r: &Run, x: &[f32], v: &mut [f32], ld: usize, t0: usize, rows: &mut [f32]) {
    let n = r.tw + 1;
    let (ro, rb) = rows[..16 * n].split_at_mut(8 * n);
    for ty in 0..r.th {
        // e/o halves of the four input rows under this tile row, zero
        // outside the image.
        for k in 0..4 {
            let (e, o) = ro[2 * k * n..(2 * k + 2) * n].split_at_mut(n);
            let iy = (2 * ty + k) as isize - 1;
            if iy < 0 || iy as usize >= r.h {
                e.fill(0.0);
                o.fill(0.0);
                continue;
            }
            let src = &x[iy as usize * r.w..(iy as usize + 1) * r.w];
            // Input column c is padded column c + 1: even c → o[c/2], odd
            // c → e[(c+1)/2]. Pairs first (branch-free, vectorisable), then
            // the zero padding at both ends.
            let pairs = r.w / 2;
            for ((pair, ov), ev) in src
                .chunks_exact(2)
                .zip(&mut o[..pairs])
                .zip(&mut e[1..=pairs])
            {
                *ov = pair[0];
                *ev = pair[1];
            }
            e[0] = 0.0;
            e[pairs + 1..].fill(0.0);
            if r.w % 2 == 1 {
                o[pairs] = src[r.w - 1];
                o[pairs + 1..].fill(0.0);
            } else {
                o[pairs..].fill(0.0);
            }
        }
        // Bᵀ along the rows (on e and o halves alike): b0 = d0 − d2,
        // b1 = d1 + d2, b2 = d2 − d1, b3 = d1 − d3.
        {
            let row = |k: usize| &ro[k * n..(k + 1) * n];
            let (d0, d1, d2, d3) = (
                (row(0), row(1)),
                (row(2), row(3)),
                (row(4), row(5)),
                (row(6), row(7)),
            );
            let (b0, rest) = rb.split_at_mut(2 * n);
            let (b1, rest) = rest.split_at_mut(2 * n);
            let (b2, b3) = rest.split_at_mut(2 * n);
            for (h, (p1, p2)) in [(d1.0, d2.0), (d1.1, d2.1)].into_iter().enumerate() {
                let (p0, p3) = if h == 0 { (d0.0, d3.0) } else { (d0.1, d3.1) };
                let s = h * n..(h + 1) * n;
                for (((((q0, q1), q2), q3), (a, c)), (b, d)) in b0[s.clone()]
                    .iter_mut()
                    .zip(&mut b1[s.clone()])
                    .zip(&mut b2[s.clone()])
                    .zip(&mut b3[s])
                    .zip(p0.iter().zip(p2))
                    .zip(p1.iter().zip(p3))
                {
                    *q0 = a - c;
                    *q1 = b + c;
                    *q2 = c - b;
                    *q3 = b - d;
                }
            }
        }
        // B along the columns: a tile's columns a0..a3 are e[tx], o[tx],
        // e[tx+1], o[tx+1].
        let base = t0 + ty * r.tw;
        let tw = r.tw;
        for i in 0..4 {
            let (e, o) = rb[2 * i * n..(2 * i + 2) * n].split_at(n);
            let (v0, rest) = v[(4 * i) * ld..].split_at_mut(ld);
            let (v1, rest) = rest.split_at_mut(ld);
            let (v2, rest) = rest.split_at_mut(ld);
            let v3 = &mut rest[..ld];
            let (v0, v1) = (&mut v0[base..base + tw], &mut v1[base..base + tw]);
            let (v2, v3) = (&mut v2[base..base + tw], &mut v3[base..base + tw]);
            let (a0, a1, a2, a3) = (&e[..tw], &o[..tw], &e[1..=tw], &o[1..=tw]);
            for t in 0..tw {
                v0[t] = a0[t] - a2[t];
                v1[t] = a1[t] + a2[t];
                v2[t] = a2[t] - a1[t];
                v3[t] = a1[t] - a3[t];
            }
        }
    }
}

/// Y = Aᵀ M A for every tile of one output plane `y` (h×w), reading
/// `m[ξ·ld + t0 + tile]`; y = bias + Y, or y += bias + Y when `acc`.
/// `tmp` is scratch of at least 12·tw floats. The four outputs of each tile
/// are first computed as four unit-stride rows over tx, then interleaved
/// into the image rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_transform_body(
    r: &Run,
    m: &[f32],
    ld: usize,
    t0: usize,
    bias: f32,
    acc: bool,
    y: &mut [f32],
    tmp: &mut [f32],
) {
    let tw = r.tw;
    let (sr, orow) = tmp[..12 * tw].split_at_mut(8 * tw);
    let (o00, rest) = orow.split_at_mut(tw);
    let (o01, rest) = rest.split_at_mut(tw);
    let (o10, o11) = rest.split_at_mut(tw);
    for ty in 0..r.th {
        let base = t0 + ty * tw;
        let mrow = |xi: usize| &m[xi * ld + base..xi * ld + base + tw];
        // Aᵀ along the rows, column j of every tile at once:
        // s0_j = m0j + m1j + m2j, s1_j = m1j − m2j − m3j.
        for j in 0..4 {
            let (s0, s1) = sr[2 * j * tw..(2 * j + 2) * tw].split_at_mut(tw);
            let (a, b, c, d) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
            for (((((p, q), &a), &b), &c), &d) in
                s0.iter_mut().zip(s1.iter_mut()).zip(a).zip(b).zip(c).zip(d)
            {
                *p = a + b + c;
                *q = b - c - d;
            }
        }
        // … and along the columns: y_i0 = s_i0 + s_i1 + s_i2,
        // y_i1 = s_i1 − s_i2 − s_i3.
        for (i, (ya, yb)) in [(&mut *o00, &mut *o01), (&mut *o10, &mut *o11)]
            .into_iter()
            .enumerate()
        {
            let srow = |j: usize| &sr[(2 * j + i) * tw..(2 * j + i + 1) * tw];
            let (c0, c1, c2, c3) = (srow(0), srow(1), srow(2), srow(3));
            for t in 0..tw {
                ya[t] = bias + c0[t] + c1[t] + c2[t];
                yb[t] = bias + c1[t] - c2[t] - c3[t];
            }
        }
        for (dy, (oa, ob)) in [(&*o00, &*o01), (&*o10, &*o11)].into_iter().enumerate() {
            let yy = 2 * ty + dy;
            if yy >= r.h {
                break;
            }
            let row = &mut y[yy * r.w..(yy + 1) * r.w];
            let full = r.w / 2;
            let (pairs, tail) = row.split_at_mut(2 * full);
            if acc {
                for ((p, &a), &b) in pairs.chunks_exact_mut(2).zip(oa).zip(ob) {
                    p[0] += a;
                    p[1] += b;
                }
            } else {
                for ((p, &a), &b) in pairs.chunks_exact_mut(2).zip(oa).zip(ob) {
                    p[0] = a;
                    p[1] = b;
                }
            }
            // Odd width: the last tile's right column falls outside.
            if let Some(last) = tail.first_mut() {
                *last = if acc { *last + oa[full] } else { oa[full] };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn input_transform_avx512(
    r: &Run,
    x: &[f32],
    v: &mut [f32],
    ld: usize,
    t0: usize,
    rows: &mut [f32],
) {
    input_transform_body(r, x, v, ld, t0, rows)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform_avx2(
    r: &Run,
    x: &[f32],
    v: &mut [f32],
    ld: usize,
    t0: usize,
    rows: &mut [f32],
) {
    input_transform_body(r, x, v, ld, t0, rows)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_avx512(
    r: &Run,
    m: &[f32],
    ld: usize,
    t0: usize,
    bias: f32,
    acc: bool,
    y: &mut [f32],
    tmp: &mut [f32],
) {
    output_transform_body(r, m, ld, t0, bias, acc, y, tmp)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_avx2(
    r: &Run,
    m: &[f32],
    ld: usize,
    t0: usize,
    bias: f32,
    acc: bool,
    y: &mut [f32],
    tmp: &mut [f32],
) {
    output_transform_body(r, m, ld, t0, bias, acc, y, tmp)
}

fn input_transform(
    lv: SimdLevel,
    r: &Run,
    x: &[f32],
    v: &mut [f32],
    ld: usize,
    t0: usize,
    rows: &mut [f32],
) {
    match lv {
        // SAFETY: callers pass only levels that `available_levels` detected
        // (simd::level() or a test's loop over available_levels()).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { input_transform_avx512(r, x, v, ld, t0, rows) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { input_transform_avx2(r, x, v, ld, t0, rows) },
        _ => input_transform_body(r, x, v, ld, t0, rows),
    }
}

#[allow(clippy::too_many_arguments)]
fn output_transform(
    lv: SimdLevel,
    r: &Run,
    m: &[f32],
    ld: usize,
    t0: usize,
    bias: f32,
    acc: bool,
    y: &mut [f32],
    tmp: &mut [f32],
) {
    match lv {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { output_transform_avx512(r, m, ld, t0, bias, acc, y, tmp) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { output_transform_avx2(r, m, ld, t0, bias, acc, y, tmp) },
        _ => output_transform_body(r, m, ld, t0, bias, acc, y, tmp),
    }
}

/// y (=|+=) bias + conv3x3_same(x) over `n` images with transformed weights
/// `u` ([16][c_out][c_in]).
#[allow(clippy::too_many_arguments)]
fn run(
    lv: SimdLevel,
    r: &Run,
    n: usize,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    acc: bool,
    y: &mut [f32],
) {
    let (hw, tpi) = (r.h * r.w, r.tiles());
    let (in_sz, out_sz) = (r.c_in * hw, r.c_out * hw);
    if n == 0 || in_sz == 0 || out_sz == 0 {
        return;
    }
    let group = (GROUP_TILES / tpi).clamp(1, n);
    let max_t = group * tpi;
    // Row strides are padded to an odd number of cache lines: with the
    // natural strides (t = 1024 tiles, 16·64 weights) every row of a GEMM
    // operand would start 4 KiB apart, land in the same L1/L2 sets, and the
    // packing loops would thrash them.
    let ld = odd_lines(max_t);
    let (v_ch, m_xi) = (16 * ld + 16, r.c_out * ld + 16);
    with_buffers(r.c_in * v_ch, 16 * m_xi, |v, m| {
        let mut n0 = 0;
        while n0 < n {
            let gn = group.min(n - n0);
            let t = gn * tpi;
            let xg = &x[n0 * in_sz..(n0 + gn) * in_sz];
            // 1. V[ci][ξ][tile]: each input channel owns one block.
            v.par_chunks_mut(v_ch).enumerate().for_each_init(
                || vec![0f32; 16 * (r.tw + 1)],
                |rows, (ci, vc)| {
                    for img in 0..gn {
                        let plane = &xg[img * in_sz + ci * hw..img * in_sz + (ci + 1) * hw];
                        input_transform(lv, r, plane, vc, ld, img * tpi, rows);
                    }
                },
            );
            // 2. M_ξ = U_ξ · V_ξ, one GEMM per ξ ([c_out, c_in] · [c_in, t]).
            let vr = &*v;
            m.par_chunks_mut(m_xi).enumerate().for_each(|(xi, mx)| {
                let a = MatRef::new(&u[xi * r.c_in..], u_row(r.c_in), 1);
                let b = MatRef::new(&vr[xi * ld..], v_ch, 1);
                gemm_at(lv, false, r.c_out, t, r.c_in, a, b, mx, ld, false);
            });
            // 3. Output planes (image, co), each from its 16 rows of M.
            let mr = &*m;
            y[n0 * out_sz..(n0 + gn) * out_sz]
                .par_chunks_mut(hw)
                .enumerate()
                .for_each_init(
                    || vec![0f32; 12 * r.tw],
                    |tmp, (p, plane)| {
                        let (img, co) = (p / r.c_out, p % r.c_out);
                        let b = bias.map_or(0.0, |b| b[co]);
                        let mc = &mr[co * ld..];
                        output_transform(lv, r, mc, m_xi, img * tpi, b, acc, plane, tmp);
                    },
                );
            n0 += gn;
        }
    });
}

fn run_geom(c_in: usize, c_out: usize, g: &ConvGeom) -> Run {
    Run {
        c_in,
        c_out,
        h: g.h,
        w: g.w,
        th: g.h.div_ceil(2),
        tw: g.w.div_ceil(2),
    }
}

/// y = conv2d(x, w) + bias, overwriting `y`. Only for geometries where
/// [`applies`] holds.
pub(crate) fn conv2d_forward(
    lv: SimdLevel,
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let u = transform_weights(lv, w, g.cout, g.cin, false);
    run(lv, &run_geom(g.cin, g.cout, g), g.n, x, &u, bias, false, y);
}

/// dx += (bias per input channel) + conv2d's input-gradient of `gy`: the
/// same-size 3×3 conv of `gy` with the flipped, channel-transposed weights.
/// Only for geometries where [`applies`] holds.
pub(crate) fn conv2d_input_grad(
    lv: SimdLevel,
    g: &ConvGeom,
    gy: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dx: &mut [f32],
) {
    let u = transform_weights(lv, w, g.cin, g.cout, true);
    run(lv, &run_geom(g.cout, g.cin, g), g.n, gy, &u, bias, true, dx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;
    use crate::ops::conv::{conv2d, Conv2dParams};
    use crate::tensor::Tensor;
    use rand::SeedableRng;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::rand_uniform(vec![n], -1.0, 1.0, &mut rng)
            .to_vec()
            .unwrap()
    }

    fn geom(n: usize, cin: usize, h: usize, w: usize, cout: usize) -> ConvGeom {
        ConvGeom {
            n,
            cin,
            h,
            w,
            cout,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: 1,
            pw: 1,
            oh: h,
            ow: w,
        }
    }

    /// |got − want| ≤ tol·(1 + |want|); names the first mismatching
    /// [n, c, y, x] indices.
    fn assert_close(what: &str, got: &[f32], want: &[f32], dims: [usize; 4], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (a, b))| {
                // NaN counts as a mismatch.
                let d = (**a - **b).abs();
                d.is_nan() || d > tol * (1.0 + b.abs())
            })
            .take(5)
            .map(|(i, (a, b))| {
                let [_, c, h, w] = dims;
                let idx = [i / (c * h * w), i / (h * w) % c, i / w % h, i % w];
                format!("{idx:?}: got {a}, want {b}")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: first mismatches:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn filter_transform_reproduces_one_dimensional_identity() {
        // A single tile, single channel: the full Aᵀ[U ⊙ V]A pipeline must
        // give the four direct 3×3 correlations of a 4×4 patch.
        let f: [f32; 9] = [1.0, -2.0, 0.5, 3.0, 0.25, -1.0, 2.0, 1.5, -0.75];
        let d: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let u = transform_filter(f);
        // V via the kernel on a 2×2 "plane" inside padding would shift the
        // patch, so apply Bᵀ d B by hand here.
        let bt = [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ];
        let at = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
        let mut v = [[0f32; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                for a in 0..4 {
                    for b in 0..4 {
                        v[i][j] += bt[i][a] * d[a * 4 + b] * bt[j][b];
                    }
                }
            }
        }
        for oy in 0..2 {
            for ox in 0..2 {
                let mut want = 0f32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        want += f[ky * 3 + kx] * d[(oy + ky) * 4 + ox + kx];
                    }
                }
                let mut got = 0f32;
                for i in 0..4 {
                    for j in 0..4 {
                        got += at[oy][i] * u[i * 4 + j] * v[i][j] * at[ox][j];
                    }
                }
                assert!((got - want).abs() < 1e-5, "({oy},{ox}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn winograd_matches_reference_at_every_level() {
        // Odd and even sizes, H ≠ W, channels not multiples of 8, batches
        // that split into several groups (8×8: 16 tiles/image → 64 images
        // per group; 33×31 spans one group per image).
        let cases = [
            (2, 16, 7, 5, 17),
            (1, 19, 33, 31, 16),
            (3, 16, 8, 8, 24),
            (70, 16, 8, 8, 16),
            (3, 20, 1, 1, 18),
        ];
        for (ci, &(n, cin, h, w, cout)) in cases.iter().enumerate() {
            // The kernels are exact for any size; `applies` only decides
            // when they pay off, so tiny cases are run directly too.
            let g = geom(n, cin, h, w, cout);
            let xd = [n, cin, h, w];
            let wd = [cout, cin, 3, 3];
            let x = vals(n * cin * h * w, 100 + ci as u64);
            let wt = vals(cout * cin * 9, 200 + ci as u64);
            let b = vals(cout, 300 + ci as u64);
            let bx = vals(cin, 400 + ci as u64);
            let (want_y, yd) = reference::conv2d(&x, xd, &wt, wd, Some(&b), [1, 1], [1, 1]);
            let gy = vals(want_y.len(), 500 + ci as u64);
            let want_dx = reference::conv2d_input_grad(&gy, yd, &wt, wd, [h, w], [1, 1], [1, 1]);
            // dx is accumulated onto a prefilled 0.5, plus a bias per input
            // channel (conv_transpose2d's use).
            let want_dx: Vec<f32> = want_dx
                .iter()
                .enumerate()
                .map(|(i, v)| v + 0.5 + bx[i / (h * w) % cin])
                .collect();
            for lv in available_levels() {
                let what = format!("case {ci} {:?} level {lv}", cases[ci]);
                let mut y = vec![f32::NAN; want_y.len()];
                conv2d_forward(lv, &g, &x, &wt, Some(&b), &mut y);
                assert_close(&format!("forward {what}"), &y, &want_y, yd, 2e-4);
                let mut dx = vec![0.5; want_dx.len()];
                conv2d_input_grad(lv, &g, &gy, &wt, Some(&bx), &mut dx);
                assert_close(&format!("input-grad {what}"), &dx, &want_dx, xd, 2e-4);
            }
        }
    }

    #[test]
    fn weights_changed_in_place_are_transformed_again() {
        // The transformed-weight cache must not serve stale weights when an
        // optimiser updates the same buffer.
        let g = geom(2, 16, 6, 6, 16);
        let lv = crate::cpu::simd::level();
        let x = vals(2 * 16 * 36, 61);
        let mut wt = vals(16 * 16 * 9, 62);
        for round in 0..3 {
            let (want, yd) =
                reference::conv2d(&x, [2, 16, 6, 6], &wt, [16, 16, 3, 3], None, [1, 1], [1, 1]);
            let mut y = vec![f32::NAN; want.len()];
            conv2d_forward(lv, &g, &x, &wt, None, &mut y);
            assert_close(&format!("round {round}"), &y, &want, yd, 2e-4);
            wt[round * 7] += 0.25;
        }
    }

    #[test]
    fn applies_only_to_same_3x3_with_channels() {
        assert!(applies(&geom(1, 64, 32, 32, 64)));
        assert!(!applies(&geom(1, 3, 32, 32, 64)));
        assert!(!applies(&geom(1, 64, 32, 32, 3)));
        let strided = ConvGeom {
            sh: 2,
            sw: 2,
            oh: 16,
            ow: 16,
            ..geom(1, 64, 32, 32, 64)
        };
        assert!(!applies(&strided));
        let unpadded = ConvGeom {
            ph: 0,
            pw: 0,
            oh: 30,
            ow: 30,
            ..geom(1, 64, 32, 32, 64)
        };
        assert!(!applies(&unpadded));
        assert!(!applies(&geom(1, 128, 8, 8, 128)));
        assert!(applies(&geom(2, 128, 8, 8, 128)));
    }

    #[test]
    fn winograd_conv2d_gradcheck() {
        // Through the public op, at a size where the dispatch picks Winograd
        // for both the forward and the input-gradient.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x = Tensor::rand_uniform(vec![2, 16, 7, 9], -1.0, 1.0, &mut rng);
        let w = Tensor::rand_uniform(vec![16, 16, 3, 3], -0.3, 0.3, &mut rng);
        let b = Tensor::rand_uniform(vec![16], -1.0, 1.0, &mut rng);
        assert!(applies(&geom(2, 16, 7, 9, 16)));
        let r = crate::autograd::gradcheck::gradcheck(
            |t: &[Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), Conv2dParams::new(1, 1)),
            &[x, w, b],
            1e-2,
            1e-3,
            1e-2,
            80,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
    }

    /// Timing, not a check: min-of-7 wall time of forward + input-grad for
    /// the CIFAR net's shapes, im2col vs Winograd, on a 1-thread and a
    /// 2-thread pool. `cargo test --lib winograd_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn winograd_timing() {
        use crate::ops::conv::cpu as im2col;
        let lv = crate::cpu::simd::level();
        let w = vals(128 * 128 * 9, 9);
        for tr in [false, true] {
            let t = std::time::Instant::now();
            for _ in 0..20 {
                std::hint::black_box(compute_weights(lv, &w, 128, 128, tr));
            }
            println!(
                "transform_weights 128x128 transposed={tr}: {:.3} ms",
                t.elapsed().as_secs_f64() * 50.0
            );
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for &(n, cin, hw, cout) in &[
                (10, 64, 32, 64),
                (10, 64, 16, 128),
                (10, 128, 16, 128),
                (10, 128, 8, 128),
                (1, 64, 32, 64),
                (1, 128, 16, 128),
                (1, 128, 8, 128),
                (32, 64, 32, 64),
            ] {
                let g = geom(n, cin, hw, hw, cout);
                let x = vals(n * cin * hw * hw, 1);
                let wt = vals(cout * cin * 9, 2);
                let gy = vals(n * cout * hw * hw, 3);
                let mut y = vec![0.0; gy.len()];
                let mut dx = vec![0.0; x.len()];
                let time = |f: &mut dyn FnMut()| {
                    (0..7)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            f();
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .fold(f64::INFINITY, f64::min)
                };
                let plan = im2col::Plan::new(&g);
                let plan = im2col::Plan {
                    threads: threads.min(plan.threads),
                    ..plan
                };
                let a = pool.install(|| {
                    time(&mut || {
                        im2col::conv2d_forward_with(lv, &g, &plan, &x, &wt, None, &mut y);
                        im2col::conv2d_input_grad_with(lv, &g, &plan, &gy, &wt, None, &mut dx);
                    })
                });
                let b = pool.install(|| {
                    time(&mut || {
                        conv2d_forward(lv, &g, &x, &wt, None, &mut y);
                        conv2d_input_grad(lv, &g, &gy, &wt, None, &mut dx);
                    })
                });
                let gf = 2.0 * g.flops() as f64 / 1e9;
                println!(
                    "threads {threads} n{n} {cin}->{cout} {hw}x{hw}: im2col {a:.3} ms ({:.0} GF/s), winograd {b:.3} ms ({:.0} GF/s eq)",
                    gf / a * 1e3,
                    gf / b * 1e3
                );
            }
        }
    }
}
