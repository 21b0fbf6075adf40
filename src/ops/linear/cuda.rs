//! GPU matrix products through the tiled `sgemm` kernel
//! (`kernels/matmul.cu`): C[M×N] = alpha·op(A)[M×K]·op(B)[K×N] + beta·C,
//! row-major with leading dimensions; op(X) = Xᵀ reads the stored matrix
//! with its indices swapped. Grid: 64×64 output tiles, (ceil(N/64),
//! ceil(M/64)), 256 threads.

use crate::cuda::exec::{gemm_side, i32_of, out, ptr, run};
use crate::cuda::launch::Launch;
use crate::cuda::params::{DevPtr, MatmulParams};
use crate::cuda::CudaBuffer;
use crate::error::Result;
use crate::tensor::Tensor;

/// One operand: its address, whether it is read transposed, and the row
/// length of the matrix as stored.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub ptr: DevPtr,
    pub trans: bool,
    pub ld: usize,
}

/// C = op(A)·op(B) into `c` (ldc = n), overwriting it.
pub(crate) fn gemm(
    ordinal: usize,
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: DevPtr,
) -> Result<()> {
    let p = MatmulParams {
        a: a.ptr,
        b: b.ptr,
        c,
        m: gemm_side(m, "GEMM rows")?,
        n: gemm_side(n, "GEMM columns")?,
        k: gemm_side(k, "GEMM depth")?,
        lda: i32_of(a.ld.max(1), "lda")?,
        ldb: i32_of(b.ld.max(1), "ldb")?,
        ldc: i32_of(n.max(1), "ldc")?,
        trans_a: a.trans as i32,
        trans_b: b.trans as i32,
        alpha: 1.0,
        beta: 0.0,
    };
    run(ordinal, "sgemm", Launch::tiles(m, n, 1)?, &p)
}

fn plain(t: &Tensor, ld: usize) -> Result<Operand> {
    Ok(Operand {
        ptr: ptr(t)?,
        trans: false,
        ld,
    })
}

fn transposed(t: &Tensor, ld: usize) -> Result<Operand> {
    Ok(Operand {
        ptr: ptr(t)?,
        trans: true,
        ld,
    })
}

/// A[m×k]·B[k×n] (or with either operand stored transposed: `ta` means A
/// is stored k×m, `tb` means B is stored n×k), as a new m×n buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    ordinal: usize,
    a: &Tensor,
    b: &Tensor,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<CudaBuffer> {
    let c = out(ordinal, m * n)?;
    let a = if ta { transposed(a, m)? } else { plain(a, k)? };
    let b = if tb { transposed(b, k)? } else { plain(b, n)? };
    gemm(ordinal, (m, n, k), a, b, c.ptr())?;
    Ok(c)
}

/// The transpose of an r×c matrix. There is no transpose kernel: this is a
/// GEMM with an identity of the smaller side (min(r, c)² extra floats), the
/// transposed read doing the work. Nothing on the models' paths uses it.
pub(crate) fn transpose(ordinal: usize, x: &Tensor, r: usize, c: usize) -> Result<CudaBuffer> {
    let y = out(ordinal, r * c)?;
    let s = r.min(c);
    let mut eye = vec![0.0f32; s * s];
    for i in 0..s {
        if let Some(v) = eye.get_mut(i * s + i) {
            *v = 1.0;
        }
    }
    let eye = CudaBuffer::from_host(ordinal, &eye)?;
    let id = Operand {
        ptr: eye.ptr(),
        trans: false,
        ld: s,
    };
    if c <= r {
        // Y[c×r] = I_c · Xᵀ  (X stored r×c, read transposed: ld = c).
        gemm(ordinal, (c, r, c), id, transposed(x, c)?, y.ptr())?;
    } else {
        // Y[c×r] = Xᵀ · I_r  (A = X stored r×c, read transposed: ld = c).
        gemm(ordinal, (c, r, r), transposed(x, c)?, id, y.ptr())?;
    }
    Ok(y)
}
