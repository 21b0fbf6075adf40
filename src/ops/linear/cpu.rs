//! CPU matmul: row-major matrices with optional transposition, through the
//! packed GEMM in `cpu::gemm`.

use crate::cpu::gemm::{gemm, MatRef};

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
