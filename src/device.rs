//! Where a tensor's numbers live.
//!
//! [`Storage`] has one variant per kind of device. Every op dispatches on the
//! device of its inputs: the CPU path calls the op's `cpu.rs` kernels, the
//! CUDA path its `cuda.rs` launches. Inputs on different devices are a
//! [`Error::DeviceMismatch`], never a silent copy; tensors move with
//! [`crate::Tensor::to_device`].

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU (SIMD kernels, multi-threaded).
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::UnknownName {
                    kind: "device",
                    name: s.to_string(),
                    expected: "cpu, cuda, cuda:N".into(),
                }),
            },
        }
    }
}

/// The compute device the high-level entry points (training, attacks,
/// benchmarks) put models and batches on: `0` is the CPU, `n + 1` is
/// `cuda:n`. The CLI sets it from `--device`; library users who build their
/// own loops pick devices per tensor with [`crate::Tensor::to_device`].
static DEFAULT_DEVICE: AtomicUsize = AtomicUsize::new(0);

/// Sets the device the training loops, attacks and benchmarks run on.
pub fn set_default_device(d: Device) {
    let code = match d {
        Device::Cpu => 0,
        Device::Cuda(n) => n.saturating_add(1),
    };
    DEFAULT_DEVICE.store(code, Ordering::Relaxed);
}

/// The device set by [`set_default_device`] (the CPU unless changed).
pub fn default_device() -> Device {
    match DEFAULT_DEVICE.load(Ordering::Relaxed) {
        0 => Device::Cpu,
        n => Device::Cuda(n - 1),
    }
}

/// The memory behind a tensor.
#[derive(Debug)]
pub enum Storage {
    /// A host buffer.
    Cpu(CpuBuffer),
    /// A device buffer (filled in by the CUDA backend).
    Cuda(crate::cuda::CudaBuffer),
}

impl Storage {
    /// The device this storage lives on.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.ordinal()),
        }
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(b) => b.len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    /// True when it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static CPU_LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static CPU_PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A host buffer of f32 that counts its bytes, so tests and the CLI can show
/// that the autograd graph is freed (live bytes do not grow across steps).
#[derive(Debug, Default)]
pub struct CpuBuffer(Vec<f32>);

impl CpuBuffer {
    /// Takes ownership of a vector.
    pub fn new(v: Vec<f32>) -> Self {
        let bytes = v.capacity() * 4;
        let live = CPU_LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
        CPU_PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        CpuBuffer(v)
    }

    /// Gives back the vector (the bytes stop counting as tensor memory).
    pub fn into_vec(mut self) -> Vec<f32> {
        let v = std::mem::take(&mut self.0);
        CPU_LIVE_BYTES.fetch_sub(v.capacity() * 4, Ordering::Relaxed);
        v
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        CPU_LIVE_BYTES.fetch_sub(self.0.capacity() * 4, Ordering::Relaxed);
    }
}

impl std::ops::Deref for CpuBuffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}
impl std::ops::DerefMut for CpuBuffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// Bytes held by all live CPU tensors right now.
pub fn cpu_live_bytes() -> usize {
    CPU_LIVE_BYTES.load(Ordering::Relaxed)
}

/// The most bytes held by CPU tensors at once since start (or the last reset).
pub fn cpu_peak_bytes() -> usize {
    CPU_PEAK_BYTES.load(Ordering::Relaxed)
}

/// Sets the peak counter to the current live bytes.
pub fn reset_cpu_peak() {
    CPU_PEAK_BYTES.store(cpu_live_bytes(), Ordering::Relaxed);
}
