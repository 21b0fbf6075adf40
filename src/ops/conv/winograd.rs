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
}

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

/// Transformed weights as 16 matrices [ξ][o][i] (o outputs, i inputs of the
/// conv being run). `transposed` = false: the conv2d itself, w is [o, i, 3,
/// 3]. `transposed` = true: its input-gradient, w is [i, o, 3, 3] and each
/// filter is flipped in space (see the module docs).
fn transform_weights(w: &[f32], o: usize, i: usize, transposed: bool) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * i];
    let oi = o * i;
    for oc in 0..o {
        for ic in 0..i {
            let mut f = [0f32; 9];
            if transposed {
                let src = &w[(ic * o + oc) * 9..(ic * o + oc) * 9 + 9];
                for (k, v) in f.iter_mut().enumerate() {
                    *v = src[8 - k];
                }
            } else {
                f.copy_from_slice(&w[(oc * i + ic) * 9..(oc * i + ic) * 9 + 9]);
            }
            for (xi, v) in transform_filter(f).into_iter().enumerate() {
                u[xi * oi + oc * i + ic] = v;
            }
        }
    }
    u
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
/// `v[ξ·ld + t0 + tile]`. `rows` is scratch of 8·(2·tw + 2) floats.
#[inline(always)]
fn input_transform_body(r: &Run, x: &[f32], v: &mut [f32], ld: usize, t0: usize, rows: &mut [f32]) {
    let pw = 2 * r.tw + 2;
    let (pad, b) = rows.split_at_mut(4 * pw);
    for ty in 0..r.th {
        // The four input rows under this tile row, zero-padded: padded
        // column c holds input column c − 1.
        for k in 0..4 {
            let dst = &mut pad[k * pw..(k + 1) * pw];
            dst.fill(0.0);
            let iy = (2 * ty + k) as isize - 1;
            if iy >= 0 && (iy as usize) < r.h {
                let iy = iy as usize;
                dst[1..1 + r.w].copy_from_slice(&x[iy * r.w..(iy + 1) * r.w]);
            }
        }
        // Bᵀ along the rows, for the whole tile row at once.
        {
            let (p0, rest) = pad.split_at(pw);
            let (p1, rest) = rest.split_at(pw);
            let (p2, p3) = rest.split_at(pw);
            let (b0, rest) = b.split_at_mut(pw);
            let (b1, rest) = rest.split_at_mut(pw);
            let (b2, b3) = rest.split_at_mut(pw);
            for c in 0..pw {
                b0[c] = p0[c] - p2[c];
                b1[c] = p1[c] + p2[c];
                b2[c] = p2[c] - p1[c];
                b3[c] = p1[c] - p3[c];
            }
        }
        // B along the columns, tile by tile.
        let base = t0 + ty * r.tw;
        for i in 0..4 {
            let bi = &b[i * pw..(i + 1) * pw];
            let (v0, rest) = v[(4 * i) * ld..].split_at_mut(ld);
            let (v1, rest) = rest.split_at_mut(ld);
            let (v2, rest) = rest.split_at_mut(ld);
            let v3 = &mut rest[..ld];
            for tx in 0..r.tw {
                let c = 2 * tx;
                let (a0, a1, a2, a3) = (bi[c], bi[c + 1], bi[c + 2], bi[c + 3]);
                v0[base + tx] = a0 - a2;
                v1[base + tx] = a1 + a2;
                v2[base + tx] = a2 - a1;
                v3[base + tx] = a1 - a3;
            }
        }
    }
}

/// Y = Aᵀ M A for every tile of one output plane `y` (h×w), reading
/// `m[ξ·ld + t0 + tile]`; y = bias + Y, or y += bias + Y when `acc`.
#[inline(always)]
fn output_transform_body(
    r: &Run,
    m: &[f32],
    ld: usize,
    t0: usize,
    bias: f32,
    acc: bool,
    y: &mut [f32],
) {
    for ty in 0..r.th {
        let base = t0 + ty * r.tw;
        let mr = |xi: usize| &m[xi * ld + base..xi * ld + base + r.tw];
        let ms: [&[f32]; 16] = std::array::from_fn(mr);
        let y0 = 2 * ty;
        let two_rows = y0 + 1 < r.h;
        let (row0, row1) = y[y0 * r.w..].split_at_mut(r.w);
        for tx in 0..r.tw {
            let mut s0 = [0f32; 4];
            let mut s1 = [0f32; 4];
            for j in 0..4 {
                let (a, b, c, d) = (ms[j][tx], ms[4 + j][tx], ms[8 + j][tx], ms[12 + j][tx]);
                s0[j] = a + b + c;
                s1[j] = b - c - d;
            }
            let out = [
                [s0[0] + s0[1] + s0[2], s0[1] - s0[2] - s0[3]],
                [s1[0] + s1[1] + s1[2], s1[1] - s1[2] - s1[3]],
            ];
            let x0 = 2 * tx;
            let ncols = if x0 + 1 < r.w { 2 } else { 1 };
            for (dy, row) in [&mut *row0, &mut *row1].into_iter().enumerate() {
                if dy == 1 && !two_rows {
                    break;
                }
                for dx in 0..ncols {
                    let v = bias + out[dy][dx];
                    if acc {
                        row[x0 + dx] += v;
                    } else {
                        row[x0 + dx] = v;
                    }
                }
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
) {
    output_transform_body(r, m, ld, t0, bias, acc, y)
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
) {
    output_transform_body(r, m, ld, t0, bias, acc, y)
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
) {
    match lv {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { output_transform_avx512(r, m, ld, t0, bias, acc, y) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { output_transform_avx2(r, m, ld, t0, bias, acc, y) },
        _ => output_transform_body(r, m, ld, t0, bias, acc, y),
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
    let mut v = vec![0f32; 16 * r.c_in * max_t];
    let mut m = vec![0f32; 16 * r.c_out * max_t];
    let pw = 2 * r.tw + 2;
    let mut n0 = 0;
    while n0 < n {
        let gn = group.min(n - n0);
        let t = gn * tpi;
        let xg = &x[n0 * in_sz..(n0 + gn) * in_sz];
        // 1. V[ci][ξ][tile]: each input channel owns 16·t floats.
        v[..16 * r.c_in * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each_init(
                || vec![0f32; 8 * pw],
                |rows, (ci, vc)| {
                    for img in 0..gn {
                        let plane = &xg[img * in_sz + ci * hw..img * in_sz + (ci + 1) * hw];
                        input_transform(lv, r, plane, vc, t, img * tpi, rows);
                    }
                },
            );
        // 2. M_ξ = U_ξ · V_ξ, one GEMM per ξ ([c_out, c_in] · [c_in, t]).
        let vr = &v[..16 * r.c_in * t];
        m[..16 * r.c_out * t]
            .par_chunks_mut(r.c_out * t)
            .enumerate()
            .for_each(|(xi, mx)| {
                let a = MatRef::new(&u[xi * r.c_out * r.c_in..], r.c_in, 1);
                let b = MatRef::new(&vr[xi * t..], 16 * t, 1);
                gemm_at(lv, false, r.c_out, t, r.c_in, a, b, mx, t, false);
            });
        // 3. Output planes (image, co), each from its 16 rows of M.
        let mr = &m[..16 * r.c_out * t];
        y[n0 * out_sz..(n0 + gn) * out_sz]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(p, plane)| {
                let (img, co) = (p / r.c_out, p % r.c_out);
                let b = bias.map_or(0.0, |b| b[co]);
                let mc = &mr[co * t..];
                output_transform(lv, r, mc, r.c_out * t, img * tpi, b, acc, plane);
            });
        n0 += gn;
    }
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
    let u = transform_weights(w, g.cout, g.cin, false);
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
    let u = transform_weights(w, g.cin, g.cout, true);
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
            .filter(|(_, (a, b))| !((*a - *b).abs() <= tol * (1.0 + b.abs())))
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
            let g = geom(n, cin, h, w, cout);
            assert!(applies(&g));
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
    }

    #[test]
    fn winograd_conv2d_gradcheck() {
        // Through the public op, at a size where the dispatch picks Winograd
        // for both the forward and the input-gradient.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x = Tensor::rand_uniform(vec![2, 16, 5, 3], -1.0, 1.0, &mut rng);
        let w = Tensor::rand_uniform(vec![16, 16, 3, 3], -0.3, 0.3, &mut rng);
        let b = Tensor::rand_uniform(vec![16], -1.0, 1.0, &mut rng);
        assert!(applies(&geom(2, 16, 5, 3, 16)));
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
}
