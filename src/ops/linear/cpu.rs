//! CPU matmul: row-major matrices with optional transposition, through the
//! packed GEMM in `cpu::gemm` — except for products with very few rows
//! (a linear layer on one image or a handful), see [`small_matmul_at`].

use crate::cpu::gemm::{gemm, MatRef};
use crate::cpu::simd::{self, SimdLevel};

/// At most this many rows of C take the small path. The packed GEMM copies
/// all of B into panels on every call; with one or a few rows of A that
/// copy costs as much as the product itself, while the plain loops below
/// read B once, in place.
const SMALL_M: usize = 4;

/// C = op(A)·op(B) where op(A) is m×k and op(B) is k×n; `ta`/`tb` say the
/// stored matrix is the transpose (A stored k×m, B stored n×k).
pub(crate) fn matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Vec<f32> {
    if m <= SMALL_M && !(ta && tb) {
        let mut c = vec![0.0; m * n];
        small_matmul_at(simd::level(), a, b, m, k, n, ta, tb, &mut c);
        return c;
    }
    let mut c = vec![0.0; m * n];
    let a = if ta {
        MatRef::new(a, 1, m)
    } else {
        MatRef::new(a, k, 1)
    };
    let b = if tb {
        MatRef::new(b, 1, k)
    } else {
        MatRef::new(b, n, 1)
    };
    gemm(m, n, k, a, b, &mut c, n, false);
    c
}

/// C (m×n, zeroed by the caller) = op(A)·op(B) for small m without packing.
/// Two loop orders, picked by which way B is contiguous:
/// - B stored k×n (`!tb`): row i of C is Σ_p A(i,p)·B[p, :], a sum of
///   scaled contiguous rows (vectorises along n);
/// - B stored n×k (`tb`, e.g. a linear layer's weight): C(i,j) is the dot
///   product of A's row i with B's row j, both contiguous (needs `!ta`).
///
/// Both transposed is not handled (the caller uses the GEMM).
#[allow(clippy::too_many_arguments)]
pub(crate) fn small_matmul_at(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    c: &mut [f32],
) {
    match lv {
        // SAFETY: callers pass only levels that `available_levels` detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { small_avx512(a, b, m, k, n, ta, tb, c) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { small_avx2(a, b, m, k, n, ta, tb, c) },
        _ => small_body(a, b, m, k, n, ta, tb, c),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_avx512(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    c: &mut [f32],
) {
    small_body(a, b, m, k, n, ta, tb, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_avx2(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    c: &mut [f32],
) {
    small_body(a, b, m, k, n, ta, tb, c)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn small_body(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    c: &mut [f32],
) {
    // A(i, p) as stored.
    let a_at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
    for (i, crow) in c.chunks_mut(n.max(1)).take(m).enumerate() {
        if tb {
            let arow = &a[i * k..(i + 1) * k];
            for (j, cv) in crow.iter_mut().enumerate() {
                *cv = dot(arow, &b[j * k..(j + 1) * k]);
            }
        } else {
            for (p, brow) in b.chunks(n.max(1)).take(k).enumerate() {
                let av = a_at(i, p);
                for (cv, &bv) in crow.iter_mut().zip(brow) {
                    *cv += av * bv;
                }
            }
        }
    }
}

/// Dot product with 16 independent partial sums, so the compiler can keep
/// them in one vector register (a single running sum would serialise every
/// add and not vectorise).
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for ((s, &xv), &yv) in acc.iter_mut().zip(xs).zip(ys) {
            *s += xv * yv;
        }
    }
    let mut tail = 0.0f32;
    for (&xv, &yv) in xr.iter().zip(yr) {
        tail += xv * yv;
    }
    acc.iter().sum::<f32>() + tail
}

pub(crate) fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; r * c];
    // Blocked so both the reads and the writes stay in cache.
    const B: usize = 32;
    for i0 in (0..r).step_by(B) {
        for j0 in (0..c).step_by(B) {
            for i in i0..(i0 + B).min(r) {
                for j in j0..(j0 + B).min(c) {
                    out[j * r + i] = x[i * c + j];
                }
            }
        }
    }
    out
}
