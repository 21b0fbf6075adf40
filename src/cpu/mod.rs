//! CPU backend: SIMD detection, the thread pool, the fast kernels and the
//! naive reference kernels they are tested against.

pub mod gemm;
pub mod reference;
pub mod simd;
pub mod threads;
