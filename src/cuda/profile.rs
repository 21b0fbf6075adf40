//! Per-kernel GPU time: which kernels a step spends its time in.
//!
//! While a recording is on ([`start`] … [`stop`]), every kernel launch is
//! bracketed by two CUDA events on the device's stream, and the time between
//! them is added to that kernel's total, keyed by kernel name *and* grid, so
//! the same kernel on differently sized layers shows up as separate rows.
//! Events are read back in batches, which keeps the recording from
//! synchronising after every launch; the times are those of the kernels on
//! the GPU, not of queueing them. The events themselves cost a few
//! microseconds of host time per launch, so a step's wall time is not
//! measured with a recording on (`bench --profile` times first, then records).
//!
//! Why this and not Nsight: the GPU machines this project is measured on are
//! lent for minutes, with nothing but our own binaries on them.

use super::kernels::guard;
use super::GpuDevice;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Launches whose events are kept before their times are read back.
const PENDING_LIMIT: usize = 4096;

static ON: AtomicBool = AtomicBool::new(false);
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// One kernel launch shape: the kernel's name and its grid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct KernelKey {
    /// Kernel name (`conv2d_fwd_t128`).
    pub kernel: String,
    /// Grid (x, y, z).
    pub grid: (u32, u32, u32),
}

/// Total GPU time of one [`KernelKey`].
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct KernelTotal {
    /// Launches recorded.
    pub launches: usize,
    /// Milliseconds, summed over the launches.
    pub ms: f64,
}

/// GPU time per kernel and grid over a recording.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelTimes {
    totals: BTreeMap<KernelKey, KernelTotal>,
}

/// One row of [`KernelTimes::per_step`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelRow {
    /// Kernel name.
    pub kernel: String,
    /// Grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Launches per step.
    pub launches_per_step: f64,
    /// GPU milliseconds per step.
    pub ms_per_step: f64,
    /// Share of the step's summed kernel time, in [0, 1].
    pub share: f64,
}

impl KernelTimes {
    /// Adds one launch's time.
    pub fn add(&mut self, kernel: &str, grid: (u32, u32, u32), ms: f64) {
        let t = self
            .totals
            .entry(KernelKey {
                kernel: kernel.to_string(),
                grid,
            })
            .or_default();
        t.launches += 1;
        t.ms += ms;
    }

    /// Summed milliseconds of every launch.
    pub fn total_ms(&self) -> f64 {
        self.totals.values().map(|t| t.ms).sum()
    }

    /// The totals divided over `steps` steps, largest first. `steps` of 0
    /// is an error, not a division by zero.
    pub fn per_step(&self, steps: usize) -> Result<Vec<KernelRow>> {
        if steps == 0 {
            return Err(Error::invalid("kernel profile", "0 steps recorded"));
        }
        let total = self.total_ms();
        let s = steps as f64;
        let mut rows: Vec<KernelRow> = self
            .totals
            .iter()
            .map(|(k, t)| KernelRow {
                kernel: k.kernel.clone(),
                grid: k.grid,
                launches_per_step: t.launches as f64 / s,
                ms_per_step: t.ms / s,
                share: if total > 0.0 { t.ms / total } else { 0.0 },
            })
            .collect();
        rows.sort_by(|a, b| {
            b.ms_per_step
                .total_cmp(&a.ms_per_step)
                .then_with(|| a.kernel.cmp(&b.kernel))
                .then_with(|| a.grid.cmp(&b.grid))
        });
        Ok(rows)
    }

    /// A readable table of [`KernelTimes::per_step`] ([`rows_table`]).
    pub fn table(&self, steps: usize, top: usize) -> Result<crate::report::Table> {
        Ok(rows_table(&self.per_step(steps)?, top))
    }
}

/// A readable table of per-step rows (largest first, as
/// [`KernelTimes::per_step`] gives them): the `top` largest, then one row
/// for the rest.
pub fn rows_table(rows: &[KernelRow], top: usize) -> crate::report::Table {
    let mut t = crate::report::Table::new(&[
        "kernel",
        "grid",
        "launches/step",
        "µs/launch",
        "ms/step",
        "share",
    ]);
    for r in rows.iter().take(top) {
        t.push(vec![
            r.kernel.clone(),
            format!("{}×{}×{}", r.grid.0, r.grid.1, r.grid.2),
            format!("{:.1}", r.launches_per_step),
            format!("{:.1}", 1e3 * r.ms_per_step / r.launches_per_step.max(1e-9)),
            format!("{:.4}", r.ms_per_step),
            format!("{:.1}%", 100.0 * r.share),
        ]);
    }
    if rows.len() > top {
        let rest = &rows[top..];
        t.push(vec![
            format!("({} more)", rest.len()),
            String::new(),
            format!(
                "{:.1}",
                rest.iter().map(|r| r.launches_per_step).sum::<f64>()
            ),
            String::new(),
            format!("{:.4}", rest.iter().map(|r| r.ms_per_step).sum::<f64>()),
            format!("{:.1}%", 100.0 * rest.iter().map(|r| r.share).sum::<f64>()),
        ]);
    }
    t
}

struct Pending {
    kernel: String,
    grid: (u32, u32, u32),
    start: CudaEvent,
    end: CudaEvent,
}

#[derive(Default)]
struct Recorder {
    pending: Vec<Pending>,
    times: KernelTimes,
}

impl Recorder {
    /// Reads back every pending launch's time (waits for the last one).
    fn drain(&mut self) -> Result<()> {
        for p in self.pending.drain(..) {
            let ms = guard("cuEventElapsedTime", || {
                p.start
                    .elapsed_ms(&p.end)
                    .map_err(|e| Error::Cuda(format!("timing {}: {e:?}", p.kernel)))
            })?;
            self.times.add(&p.kernel, p.grid, f64::from(ms));
        }
        Ok(())
    }
}

fn recorder() -> std::sync::MutexGuard<'static, Option<Recorder>> {
    RECORDER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a recording (discarding any unfinished one).
pub fn start() {
    *recorder() = Some(Recorder::default());
    ON.store(true, Ordering::SeqCst);
}

/// Ends the recording and returns its times (empty if none was started).
pub fn stop() -> Result<KernelTimes> {
    ON.store(false, Ordering::SeqCst);
    match recorder().take() {
        Some(mut r) => {
            r.drain()?;
            Ok(r.times)
        }
        None => Ok(KernelTimes::default()),
    }
}

/// Whether launches are being recorded.
pub(crate) fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Runs `launch` (one kernel launch on `dev`'s stream) between two timing
/// events when a recording is on.
pub(crate) fn timed(
    dev: &GpuDevice,
    kernel: &str,
    grid: (u32, u32, u32),
    launch: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !is_on() {
        return launch();
    }
    let record = || {
        guard("cuEventRecord", || {
            dev.stream()
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| Error::Cuda(format!("profiling {kernel}: {e:?}")))
        })
    };
    let start = record()?;
    launch()?;
    let end = record()?;
    let mut rec = recorder();
    if let Some(r) = rec.as_mut() {
        r.pending.push(Pending {
            kernel: kernel.to_string(),
            grid,
            start,
            end,
        });
        if r.pending.len() >= PENDING_LIMIT {
            r.drain()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_step_rows_divide_by_steps_and_sort_by_time() {
        let mut t = KernelTimes::default();
        for _ in 0..4 {
            t.add("conv2d_fwd", (8, 1, 1), 0.5);
            t.add("relu_fwd", (64, 1, 1), 0.125);
        }
        t.add("conv2d_fwd", (2, 1, 1), 0.75);
        t.add("conv2d_fwd", (2, 1, 1), 0.75);
        assert_eq!(t.total_ms(), 4.0);
        let rows = t.per_step(2).unwrap();
        let launches: f64 = rows.iter().map(|r| r.launches_per_step).sum();
        assert_eq!(launches, 5.0, "10 launches over 2 steps");
        assert_eq!(rows.len(), 3, "the same kernel on two grids is two rows");
        assert_eq!(
            (rows[0].kernel.as_str(), rows[0].grid),
            ("conv2d_fwd", (8, 1, 1))
        );
        assert_eq!(rows[0].launches_per_step, 2.0);
        assert_eq!(rows[0].ms_per_step, 1.0);
        assert_eq!(rows[1].grid, (2, 1, 1));
        assert_eq!(rows[2].kernel, "relu_fwd");
        assert_eq!(rows[2].ms_per_step, 0.25);
        let shares: f64 = rows.iter().map(|r| r.share).sum();
        assert!((shares - 1.0).abs() < 1e-12);
        assert!((rows[0].share - 0.5).abs() < 1e-12);
        assert!(t.per_step(0).is_err());

        let md = t.table(2, 2).unwrap().to_markdown();
        assert!(md.contains("conv2d_fwd") && md.contains("8×1×1"), "{md}");
        assert!(md.contains("(1 more)"), "{md}");
        assert!(md.contains("12.5%"), "relu's share, in the rest row: {md}");
        assert!(
            md.contains("500.0"),
            "µs per launch of the 8-block conv: {md}"
        );
    }

    #[test]
    fn stop_without_start_is_empty_and_nothing_is_recorded_when_off() {
        assert!(!is_on());
        assert_eq!(stop().unwrap(), KernelTimes::default());
    }
}
