//! Opening CUDA devices: context, stream, per-device kernel-module cache,
//! and the memory pool with its budget.
//!
//! Everything here returns an error, never panics, when CUDA is missing:
//! the driver library (`libcuda.so`) and NVRTC are loaded at run time by
//! `cudarc`, and each entry point first checks that the library can be
//! opened (cudarc itself would panic inside its lazy loader). Calls into the
//! loaded libraries are additionally wrapped in `catch_unwind`, so an old
//! driver that lacks a symbol becomes an error too.
//!
//! One stream per device: every launch, copy and free on a device is ordered
//! on that stream, so a pooled block freed by one op and reused by the next
//! can never race.

use super::kernels::{self, guard};
use super::pool::{format_bytes, Pool, PoolStats};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Locks a mutex, recovering the data if a thread panicked while holding it
/// (the bookkeeping stays usable; nothing here is left half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// Why the CUDA driver cannot be used, or `Ok` when `libcuda` loads.
fn ensure_driver() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Cuda(
            "libcuda.so not found (no NVIDIA driver on this machine, or it is not on the \
             library path)"
                .into(),
        ))
    }
}

/// Initialises the driver and returns the number of devices.
pub fn device_count() -> Result<usize> {
    ensure_driver()?;
    guard("cuInit", || {
        cudarc::driver::result::init().map_err(|e| driver_err("cuInit failed", e))?;
        let n = cudarc::driver::result::device::get_count()
            .map_err(|e| driver_err("cuDeviceGetCount failed", e))?;
        Ok(n.max(0) as usize)
    })
}

/// Memory budget applied to devices opened from now on (and, through
/// [`set_memory_budget`], to those already open).
static DEFAULT_BUDGET: Mutex<Option<usize>> = Mutex::new(None);

fn registry() -> &'static Mutex<HashMap<usize, Arc<GpuDevice>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<GpuDevice>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sets the GPU memory budget in bytes (`None`: unlimited) for every device,
/// open or opened later. This is what `--gpu-mem` sets.
pub fn set_memory_budget(bytes: Option<usize>) {
    *lock(&DEFAULT_BUDGET) = bytes;
    for dev in lock(registry()).values() {
        dev.set_budget(bytes);
    }
}

/// The budget new devices get.
pub fn memory_budget() -> Option<usize> {
    *lock(&DEFAULT_BUDGET)
}

/// An open CUDA device: context, stream, compiled modules, memory pool.
pub struct GpuDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    /// Chosen on first compile, so a device opens (for memory) even where
    /// NVRTC is missing; kernel launches then fail with NVRTC's reason.
    arch: OnceLock<String>,
    total_memory: usize,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pool: Mutex<Pool<CudaSlice<f32>>>,
    /// Times the host waited for this device's queued work (a
    /// synchronisation or a copy to the host): what a training loop should
    /// do only now and then (see `crate::step_monitor`).
    host_waits: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuDevice(cuda:{} {}, sm_{}{})",
            self.ordinal, self.name, self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Opens device `ordinal` (once; later calls return the same handle).
pub fn device(ordinal: usize) -> Result<Arc<GpuDevice>> {
    if let Some(dev) = lock(registry()).get(&ordinal) {
        return Ok(dev.clone());
    }
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::Cuda(format!(
            "device cuda:{ordinal} does not exist ({count} CUDA device{} found)",
            if count == 1 { "" } else { "s" }
        )));
    }
    let dev = Arc::new(GpuDevice::open(ordinal)?);
    // Another thread may have opened it meanwhile: keep the first.
    Ok(lock(registry()).entry(ordinal).or_insert(dev).clone())
}

/// The open device behind a [`crate::Device`]; an error for the CPU.
pub fn device_for(d: crate::Device) -> Result<Arc<GpuDevice>> {
    match d {
        crate::Device::Cuda(n) => device(n),
        crate::Device::Cpu => Err(Error::invalid(
            "cuda device",
            "Device::Cpu is not a CUDA device",
        )),
    }
}

/// Picks the architecture to compile for: the device's own, or the newest
/// this NVRTC knows when the device is newer (PTX runs forward).
fn kernel_arch(cc: (i32, i32)) -> Result<String> {
    let want = cc.0 * 10 + cc.1;
    let supported = kernels::nvrtc_supported_archs()?;
    let best = supported.iter().copied().filter(|&a| a <= want).max();
    match best {
        Some(a) => Ok(format!("sm_{a}")),
        None => Err(Error::Cuda(format!(
            "this NVRTC cannot compile for compute capability {}.{} (it supports {:?})",
            cc.0, cc.1, supported
        ))),
    }
}

impl GpuDevice {
    fn open(ordinal: usize) -> Result<Self> {
        let (ctx, stream, name, cc, total) = guard("opening the CUDA device", || {
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| driver_err(&format!("cannot open cuda:{ordinal}"), e))?;
            // SAFETY: this crate uses exactly one stream per device, so the
            // per-buffer events cudarc would record are not needed.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx
                .new_stream()
                .map_err(|e| driver_err("cannot create a stream", e))?;
            let name = ctx.name().map_err(|e| driver_err("cuDeviceGetName", e))?;
            let cc = ctx
                .compute_capability()
                .map_err(|e| driver_err("compute capability", e))?;
            let total = ctx
                .total_mem()
                .map_err(|e| driver_err("cuDeviceTotalMem", e))?;
            Ok((ctx, stream, name, cc, total))
        })?;
        Ok(GpuDevice {
            ordinal,
            ctx,
            stream,
            name,
            compute_capability: cc,
            arch: OnceLock::new(),
            total_memory: total,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::new(memory_budget())),
            host_waits: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The device name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    /// The architecture kernels are compiled for (`"sm_90"`): the device's
    /// own, or the newest NVRTC supports when the device is newer.
    pub fn arch(&self) -> Result<String> {
        if let Some(a) = self.arch.get() {
            return Ok(a.clone());
        }
        let a = kernel_arch(self.compute_capability)?;
        Ok(self.arch.get_or_init(|| a).clone())
    }
    /// Total device memory, bytes.
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }
    /// The device's stream (every launch and copy goes through it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Free and total device memory right now, bytes (all processes).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        guard("cuMemGetInfo", || {
            self.ctx
                .mem_get_info()
                .map_err(|e| driver_err("cuMemGetInfo", e))
        })
    }

    /// A kernel by name, compiling its file with NVRTC the first time any
    /// kernel of that file is asked for on this device.
    pub fn function(&self, kernel: &str) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(kernel) {
            return Ok(f.clone());
        }
        let file = kernels::file_of_kernel(kernel)?;
        let module = self.module(file)?;
        let f = guard(kernel, || {
            module
                .load_function(kernel)
                .map_err(|e| driver_err(&format!("{file}: no kernel {kernel}"), e))
        })?;
        lock(&self.functions).insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(m) = lock(&self.modules).get(file) {
            return Ok(m.clone());
        }
        // Compiled outside the lock: NVRTC takes a while and other files may
        // be wanted meanwhile. A duplicate compile in a race is harmless.
        // The PTX comes from the on-disk cache when an earlier run made it
        // from the same source with the same NVRTC (ptx_cache.rs).
        let arch = self.arch()?;
        let full = kernels::full_source(file)?;
        let entry = super::ptx_cache::cache_dir()
            .zip(kernels::nvrtc_version().ok())
            .map(|(dir, v)| super::ptx_cache::entry_path(&dir, file, &full, &arch, v));
        let compile = || kernels::compile_ptx(file, &arch).map(|p| p.text);
        let (text, cached) = super::ptx_cache::get_or_compile(entry.as_deref(), compile)?;
        let load = |text: String| {
            guard(file, || {
                self.ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(text))
                    .map_err(|e| driver_err(&format!("{file}: loading the PTX failed"), e))
            })
        };
        let module = match load(text) {
            Ok(m) => m,
            // A cached entry the driver refuses (damaged on disk, say):
            // compiled afresh, and the entry replaced.
            Err(_) if cached => {
                let fresh = compile()?;
                if let Some(p) = &entry {
                    super::ptx_cache::store(p, &fresh);
                }
                load(fresh)?
            }
            Err(e) => return Err(e),
        };
        Ok(lock(&self.modules).entry(file).or_insert(module).clone())
    }

    /// Compiles and loads every kernel file now (instead of on first use),
    /// so a broken toolchain shows up at start-up.
    pub fn load_all_kernels(&self) -> Result<()> {
        for (file, _) in kernels::KERNEL_SOURCES {
            self.module(file)?;
        }
        Ok(())
    }

    /// Allocates room for `len` f32 from the pool (contents undefined).
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DeviceMemory> {
        let bytes = len.checked_mul(4).ok_or_else(|| {
            Error::invalid(
                "cuda alloc",
                format!("{len} f32 elements overflow a byte count"),
            )
        })?;
        let stream = self.stream.clone();
        let (slice, class) = guard("cuMemAlloc", || {
            lock(&self.pool).take(
                bytes,
                |class| {
                    // SAFETY: contents are undefined until written; every
                    // user either writes before reading or zeroes first.
                    unsafe { stream.alloc::<f32>(class / 4) }.map_err(|e| {
                        Error::Cuda(format!(
                            "cuda:{}: cannot allocate {}: {e:?}",
                            self.ordinal,
                            format_bytes(class)
                        ))
                    })
                },
                drop,
            )
        })?;
        Ok(DeviceMemory {
            slice: Some(slice),
            class,
            len,
            dev: self.clone(),
        })
    }

    /// Allocates `len` zeros.
    pub fn zeros(self: &Arc<Self>, len: usize) -> Result<DeviceMemory> {
        let mut m = self.alloc(len)?;
        if let Some(slice) = m.slice.as_mut() {
            let stream = self.stream.clone();
            guard("cuMemsetD8", || {
                stream
                    .memset_zeros(&mut slice.slice_mut(..len))
                    .map_err(|e| driver_err("cuMemsetD8", e))
            })?;
        }
        Ok(m)
    }

    /// Copies host data to a new device buffer.
    pub fn upload(self: &Arc<Self>, data: &[f32]) -> Result<DeviceMemory> {
        let mut m = self.alloc(data.len())?;
        if let Some(slice) = m.slice.as_mut() {
            let stream = self.stream.clone();
            guard("cuMemcpyHtoD", || {
                stream
                    .memcpy_htod(data, &mut slice.slice_mut(..data.len()))
                    .map_err(|e| driver_err("cuMemcpyHtoD", e))
            })?;
        }
        Ok(m)
    }

    /// Waits until all queued work on the device's stream has finished, and
    /// reports any error a kernel raised asynchronously.
    pub fn synchronize(&self) -> Result<()> {
        self.count_wait();
        guard("cuStreamSynchronize", || {
            self.stream
                .synchronize()
                .map_err(|e| driver_err(&format!("cuda:{}: a kernel failed", self.ordinal), e))?;
            self.ctx
                .check_err()
                .map_err(|e| driver_err("deferred CUDA error", e))
        })
    }

    /// How many times the host has waited for this device so far
    /// ([`GpuDevice::synchronize`] and every copy to the host).
    pub fn host_waits(&self) -> usize {
        self.host_waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_wait(&self) {
        self.host_waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The pool's counters (peak usage, budget, ...).
    pub fn memory_stats(&self) -> PoolStats {
        lock(&self.pool).stats()
    }

    /// Restarts peak tracking from the current usage.
    pub fn reset_peak(&self) {
        lock(&self.pool).reset_peak();
    }

    /// Raises the peaks back to at least those in `earlier` (after a
    /// [`GpuDevice::reset_peak`] used to measure one step).
    pub fn merge_peak(&self, earlier: &PoolStats) {
        lock(&self.pool).merge_peak(earlier);
    }

    /// Frees every cached (unused) block back to the driver.
    pub fn trim(&self) {
        let blocks = lock(&self.pool).trim();
        drop(blocks);
    }

    fn set_budget(&self, bytes: Option<usize>) {
        let released = lock(&self.pool).set_budget(bytes);
        drop(released);
    }
}

/// A block of device memory holding `len` f32, taken from its device's pool
/// and given back (not freed) when dropped.
pub struct DeviceMemory {
    slice: Option<CudaSlice<f32>>,
    class: usize,
    len: usize,
    dev: Arc<GpuDevice>,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceMemory(cuda:{}, {} f32 in a {} block)",
            self.dev.ordinal,
            self.len,
            format_bytes(self.class)
        )
    }
}

impl DeviceMemory {
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device it lives on.
    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.dev
    }
    /// The raw device address, for a kernel's params struct. Valid while
    /// `self` lives; all work is ordered on the device's single stream.
    pub fn ptr(&self) -> super::params::DevPtr {
        match &self.slice {
            Some(s) => {
                let (p, _sync) = cudarc::driver::DevicePtr::device_ptr(s, &self.dev.stream);
                p
            }
            None => 0,
        }
    }
    /// Copies the contents back to the host (waits for queued work).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let Some(slice) = &self.slice else {
            return Ok(Vec::new());
        };
        let stream = self.dev.stream.clone();
        let mut out = vec![0f32; self.len];
        self.dev.count_wait();
        guard("cuMemcpyDtoH", || {
            stream
                .memcpy_dtoh(&slice.slice(..self.len), &mut out)
                .map_err(|e| driver_err("cuMemcpyDtoH", e))?;
            stream
                .synchronize()
                .map_err(|e| driver_err("cuStreamSynchronize", e))
        })?;
        Ok(out)
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            lock(&self.dev.pool).give_back(slice, self.class);
        }
    }
}

/// One CUDA device as [`info`] sees it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Name, e.g. "NVIDIA H200".
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total memory, bytes.
    pub total_memory: usize,
}

/// What the machine offers for CUDA.
#[derive(Clone, Debug)]
pub struct CudaInfo {
    /// True when at least one device can be used.
    pub available: bool,
    /// Why CUDA cannot be used (when `available` is false).
    pub reason: Option<String>,
    /// Driver API version (major, minor), e.g. (12, 8).
    pub driver_version: Option<(i32, i32)>,
    /// NVRTC version, or why NVRTC cannot be loaded.
    pub nvrtc: std::result::Result<(i32, i32), String>,
    /// The devices.
    pub devices: Vec<DeviceInfo>,
}

impl std::fmt::Display for CudaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.available {
            writeln!(
                f,
                "CUDA: unavailable ({})",
                self.reason.as_deref().unwrap_or("unknown reason")
            )?;
        } else {
            writeln!(f, "CUDA: available")?;
        }
        if let Some((ma, mi)) = self.driver_version {
            writeln!(f, "  driver API {ma}.{mi}")?;
        }
        match &self.nvrtc {
            Ok((ma, mi)) => writeln!(f, "  NVRTC {ma}.{mi}")?,
            Err(why) => writeln!(f, "  NVRTC: unavailable ({why})")?,
        }
        for d in &self.devices {
            writeln!(
                f,
                "  cuda:{} {} (compute capability {}.{}, {})",
                d.ordinal,
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                format_bytes(d.total_memory)
            )?;
        }
        Ok(())
    }
}

/// Reports the driver, NVRTC and devices, or why CUDA cannot be used. Never
/// panics and never fails: a missing piece is described in the result.
pub fn info() -> CudaInfo {
    let nvrtc = kernels::nvrtc_version().map_err(|e| strip_prefix(&e));
    let mut info = CudaInfo {
        available: false,
        reason: None,
        driver_version: None,
        nvrtc,
        devices: Vec::new(),
    };
    let count = match device_count() {
        Ok(n) => n,
        Err(e) => {
            info.reason = Some(strip_prefix(&e));
            return info;
        }
    };
    info.driver_version = guard("cuDriverGetVersion", || {
        let mut v = 0;
        // SAFETY: out-parameter; the driver is initialised (device_count).
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(|e| driver_err("cuDriverGetVersion", e))?;
        Ok((v / 1000, (v % 1000) / 10))
    })
    .ok();
    for ordinal in 0..count {
        let d = guard("device query", || {
            use cudarc::driver::result::device as dev;
            use cudarc::driver::sys::CUdevice_attribute as A;
            let handle = dev::get(ordinal as i32).map_err(|e| driver_err("cuDeviceGet", e))?;
            let name = dev::get_name(handle).map_err(|e| driver_err("cuDeviceGetName", e))?;
            // SAFETY: a valid device handle from cuDeviceGet.
            let (major, minor, total) = unsafe {
                (
                    dev::get_attribute(handle, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                    dev::get_attribute(handle, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
                    dev::total_mem(handle),
                )
            };
            Ok(DeviceInfo {
                ordinal,
                name,
                compute_capability: (
                    major.map_err(|e| driver_err("compute capability", e))?,
                    minor.map_err(|e| driver_err("compute capability", e))?,
                ),
                total_memory: total.map_err(|e| driver_err("cuDeviceTotalMem", e))?,
            })
        });
        match d {
            Ok(d) => info.devices.push(d),
            Err(e) => {
                info.reason = Some(strip_prefix(&e));
                return info;
            }
        }
    }
    if info.devices.is_empty() {
        info.reason = Some("the driver loads but reports no CUDA device".into());
    } else if let Err(why) = &info.nvrtc {
        info.reason = Some(format!("a GPU is present but {why}"));
    } else {
        info.available = true;
    }
    info
}

fn strip_prefix(e: &Error) -> String {
    let s = e.to_string();
    s.strip_prefix("CUDA: ").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_never_panics_and_explains_itself() {
        let i = info();
        let text = i.to_string();
        if i.available {
            assert!(!i.devices.is_empty(), "{text}");
            assert!(text.contains("cuda:0"), "{text}");
        } else {
            let reason = i.reason.clone().unwrap_or_default();
            assert!(!reason.is_empty(), "unavailable without a reason: {text}");
            assert!(text.starts_with("CUDA: unavailable ("), "{text}");
        }
    }

    #[test]
    fn opening_a_device_without_a_driver_is_an_error() {
        if info().available {
            // With a GPU: a nonexistent ordinal is the error case.
            let e = device(10_000).unwrap_err().to_string();
            assert!(e.contains("cuda:10000 does not exist"), "{e}");
        } else {
            let e = device(0).unwrap_err().to_string();
            assert!(e.starts_with("CUDA: "), "{e}");
        }
    }

    #[test]
    fn the_cpu_is_not_a_cuda_device() {
        let e = device_for(crate::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("Device::Cpu"), "{e}");
    }

    #[test]
    fn budget_setting_is_remembered() {
        let before = memory_budget();
        set_memory_budget(Some(1 << 30));
        assert_eq!(memory_budget(), Some(1 << 30));
        set_memory_budget(before);
    }
}
