//! CUDA backend.
//!
//! The kernels live in `kernels/*.cu` and are compiled at run time with NVRTC.
//! This module is the seam the rest of the engine talks to; until the device
//! side is complete, a CUDA buffer cannot be created and asking for one is an
//! error that says so.

use crate::error::{Error, Result};

/// A buffer of f32 on a CUDA device.
#[derive(Debug)]
pub struct CudaBuffer {
    ordinal: usize,
    len: usize,
}

impl CudaBuffer {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The error every CUDA entry point returns until a device can be opened.
pub fn unavailable(what: &str) -> Error {
    Error::Cuda(format!(
        "{what}: no CUDA device is available in this build/run; use --device cpu"
    ))
}

/// Fails with [`unavailable`]; the GPU path of an op calls this.
pub fn not_available<T>(what: &str) -> Result<T> {
    Err(unavailable(what))
}
