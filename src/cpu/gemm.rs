//! General matrix multiply, C (m×n) = A (m×k) · B (k×n), on strided views.
//!
//! This is the workhorse of conv, conv-transpose and linear layers.
//! (Baseline version: a simple loop nest; the packed, register-blocked
//! SIMD kernels replace its body.)

/// A read-only strided matrix view: element (i, j) is `data[i*rs + j*cs]`.
/// Transposition is just swapping the strides.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view with the given strides.
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        MatRef { data, rs, cs }
    }
    /// The transposed view.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// C = A·B (or C += A·B when `accumulate`), C row-major with row stride `ldc`.
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if !accumulate {
            row.iter_mut().for_each(|v| *v = 0.0);
        }
        for p in 0..k {
            let aip = a.at(i, p);
            for (j, cv) in row.iter_mut().enumerate() {
                *cv += aip * b.at(p, j);
            }
        }
    }
}
