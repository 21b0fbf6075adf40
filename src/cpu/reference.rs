//! Naive reference kernels: the oracles every fast kernel is tested against.
//!
//! Written for obviousness, not speed: straight loops over the definition,
//! accumulating in f64.

/// C = A·B for row-major A (m×k) and B (k×n).
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}
