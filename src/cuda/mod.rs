//! CUDA backend.
//!
//! The kernels live in `kernels/*.cu` and are compiled at run time with NVRTC
//! ([`kernels`]); [`context`] opens devices, caches compiled modules per
//! device and owns the memory pool ([`pool`]: a byte budget, peak tracking);
//! [`params`] mirrors each kernel's launch-parameter struct and [`launch`]
//! starts a kernel by name. Nothing here needs a CUDA toolkit at build time;
//! at run time, a missing driver or NVRTC is an error value, never a panic.
//!
//! Every op dispatches on its inputs' device; its `Device::Cuda` branch is
//! in `src/ops/<family>/cuda.rs` and builds on [`exec`] (device checks,
//! pointers, pooled output buffers, fills, two-stage sums).

pub mod context;
pub mod exec;
pub mod kernels;
pub mod launch;
pub mod params;
pub mod pool;
pub mod profile;
pub mod ptx_cache;

pub use context::{device, device_for, info, set_memory_budget, CudaInfo, DeviceMemory, GpuDevice};
pub use launch::{conv_math, set_conv_math, ConvMath};
pub use pool::{format_bytes, parse_bytes, PoolStats};

use crate::error::{Error, Result};

/// A buffer of f32 on a CUDA device.
#[derive(Debug)]
pub struct CudaBuffer {
    ordinal: usize,
    len: usize,
    mem: DeviceMemory,
}

impl CudaBuffer {
    /// `len` zeros on device `ordinal` (opening it if needed).
    pub fn zeros(ordinal: usize, len: usize) -> Result<Self> {
        let mem = device(ordinal)?.zeros(len)?;
        Ok(CudaBuffer { ordinal, len, mem })
    }
    /// Uninitialised room for `len` f32 on device `ordinal`; the caller
    /// writes every element before reading (a kernel's output).
    pub fn uninit(ordinal: usize, len: usize) -> Result<Self> {
        let mem = device(ordinal)?.alloc(len)?;
        Ok(CudaBuffer { ordinal, len, mem })
    }
    /// A copy of host data on device `ordinal`.
    pub fn from_host(ordinal: usize, data: &[f32]) -> Result<Self> {
        let mem = device(ordinal)?.upload(data)?;
        Ok(CudaBuffer {
            ordinal,
            len: data.len(),
            mem,
        })
    }
    /// Copies the contents to the host (waits for queued work).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        self.mem.to_host()
    }
    /// The device memory (its address goes into kernel params).
    pub fn memory(&self) -> &DeviceMemory {
        &self.mem
    }
    /// The device address, for a kernel's params struct.
    pub fn ptr(&self) -> params::DevPtr {
        self.mem.ptr()
    }
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

/// Resolves a `--device` value: `auto`, `cpu`, `cuda` or `cuda:N`.
///
/// `auto` picks `cuda:0` when CUDA is usable and otherwise the CPU, with a
/// one-line notice (returned, for the caller to print) saying why. An
/// explicit `cuda[:N]` that cannot be used is an error naming the reason,
/// never a silent fallback. A CUDA device is opened (and its kernels
/// compiled) here, so a broken setup fails before any work starts.
pub fn select_device(spec: &str) -> Result<(crate::Device, Option<String>)> {
    use crate::Device;
    if spec == "auto" {
        let i = info();
        if !i.available {
            let why = i.reason.unwrap_or_else(|| "unknown reason".into());
            return Ok((
                Device::Cpu,
                Some(format!(
                    "note: no usable CUDA device ({why}); running on the CPU"
                )),
            ));
        }
        return match device(0).and_then(|d| d.load_all_kernels()) {
            Ok(()) => Ok((Device::Cuda(0), None)),
            Err(e) => Ok((
                Device::Cpu,
                Some(format!(
                    "note: cuda:0 cannot be used ({e}); running on the CPU"
                )),
            )),
        };
    }
    let d: Device = spec.parse()?;
    if let Device::Cuda(n) = d {
        let i = info();
        if !i.available {
            return Err(Error::Cuda(format!(
                "--device {spec} was asked for, but CUDA is unavailable: {}; use --device cpu or auto",
                i.reason.unwrap_or_else(|| "unknown reason".into())
            )));
        }
        device(n)
            .and_then(|dev| dev.load_all_kernels())
            .map_err(|e| Error::Cuda(format!("--device {spec}: {e}")))?;
    }
    Ok((d, None))
}
