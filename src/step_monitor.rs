//! A training loop's bookkeeping — the running loss, the running metric and
//! the watch for NaN — kept where the loop runs, so that no step makes the
//! host wait for the device.
//!
//! Why: reading the loss back every step (`loss.item()`), copying the
//! gradients' sums back to check them and the logits back to count correct
//! answers makes the CPU wait for the GPU two or three times a step. While it waits it cannot prepare the next batch or queue the
//! next kernels, and while it prepares them the GPU has nothing to do. On
//! the short steps the attacks take (batches of 64 32×32 images, thousands
//! of white-box iterations) those waits are a large part of a step.
//!
//! How: the monitor holds six floats on the loop's device, `[failed_at,
//! source, value, loss_sum, metric_sum, last_loss]`. [`StepMonitor::add_loss`]
//! adds a step's loss to the sum, keeps it as the last loss and, if it is
//! NaN or ±inf, records the step, the
//! source and the value (only the first failure is kept). The optimizers'
//! [`step_watched`](crate::optim::Optimizer::step_watched) does the same
//! for each gradient (on a GPU, through the sum of its NaN and ±inf
//! elements, so one small number per gradient), and the fused updates read `failed_at` and do
//! nothing once it is set — so a failure still leaves every parameter as it
//! was before the failing step, as the eager check did. The host looks only
//! when it chooses, [`StepMonitor::read`]: one copy of six floats, e.g.
//! every few dozen steps and at the end of an epoch, and turns a recorded
//! failure into the same [`Error::NonFinite`] the loop always raised.
//!
//! On the CPU the same code runs with the six floats in host memory, so
//! the CPU tests exercise everything but the kernel (`monitor_watch` in
//! `kernels/optim.cu`, checked by the kernel emulation and on a GPU).
//!
//! Sums are f32: exact for counts below 2^24, and a loss sum over an epoch
//! keeps about six digits, enough for a progress bar and an epoch mean.

use crate::autograd::GradStore;
use crate::cuda::exec::{i32_of, non_finite_sum_into, ptr, run, zeros};
use crate::cuda::launch::Launch;
use crate::cuda::params::{DevPtr, MonitorParams};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const FAILED_AT: usize = 0;
const SOURCE: usize = 1;
const VALUE: usize = 2;
const LOSS_SUM: usize = 3;
const METRIC_SUM: usize = 4;
const LAST_LOSS: usize = 5;
const SLOTS: usize = 6;

/// Where a non-finite value was first seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// The step's loss.
    Loss,
    /// The gradient of the parameter at this position in the list given to
    /// the optimizer (a NaN or ±inf in it: found element by element on the
    /// CPU, by the sum of its non-finite elements on a GPU).
    Gradient(usize),
}

/// The first NaN or ±inf a monitor recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Failure {
    /// The step it happened in (1-based, counted by [`StepMonitor::begin_step`]).
    pub step: usize,
    /// The loss or which gradient.
    pub source: Source,
    /// The value seen: the loss; for a gradient, its first non-finite
    /// element on the CPU, and on a GPU the sum of its non-finite elements
    /// (±inf when they are all infinities of one sign, NaN otherwise).
    pub value: f32,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            Source::Loss => write!(f, "loss is {} at step {}", self.value, self.step),
            Source::Gradient(i) => write!(
                f,
                "the gradient of parameter {i} is not finite ({}) at step {}",
                self.value, self.step
            ),
        }
    }
}

/// What [`StepMonitor::read`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Σ weight·loss over the steps so far.
    pub loss_sum: f64,
    /// Σ metric over the steps so far.
    pub metric_sum: f64,
    /// The loss of the latest [`StepMonitor::add_loss`] (unweighted; 0
    /// before the first), so that a loop that shows its current loss needs
    /// no copy of its own.
    pub last_loss: f32,
    /// The first non-finite loss or gradient, if any. Every update from
    /// that step on was skipped.
    pub failure: Option<Failure>,
}

/// Device-resident loss and metric sums and NaN watch of one training loop
/// (see the module documentation).
pub struct StepMonitor {
    state: Tensor,
    step: usize,
}

impl StepMonitor {
    /// A monitor whose state lives on `device` (where the loop's loss and
    /// gradients are).
    pub fn new(device: Device) -> Result<Self> {
        Ok(StepMonitor {
            state: Tensor::zeros_on([SLOTS], device)?,
            step: 0,
        })
    }

    /// The device the state lives on.
    pub fn device(&self) -> Device {
        self.state.device()
    }

    /// Starts the next step; what is watched until the next call belongs to it.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Steps begun so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Adds `weight · loss` (a one-element tensor) to the loss sum, keeps
    /// `loss` as the last loss, and records the step if the loss is NaN or
    /// ±inf.
    pub fn add_loss(&mut self, loss: &Tensor, weight: f32) -> Result<()> {
        self.watch(loss, LOSS_SUM, weight, true, "loss")
    }

    /// Adds a one-element metric (e.g. a count of correct answers) to the
    /// metric sum. Not checked for NaN: it changes no parameter.
    pub fn add_metric(&mut self, metric: &Tensor) -> Result<()> {
        self.watch(metric, METRIC_SUM, 1.0, false, "metric")
    }

    /// Checks each gradient in `grads` of `params` (by the sum of its NaN
    /// and ±inf elements on the GPU, element by element on the CPU) and records the first non-finite one
    /// as [`Source::Gradient`] of its position in `params`.
    pub(crate) fn watch_gradients(&mut self, params: &[Tensor], grads: &GradStore) -> Result<()> {
        match self.device() {
            Device::Cpu => {
                if self.failed_on_host()? {
                    return Ok(());
                }
                for (i, p) in params.iter().enumerate() {
                    let Some(g) = grads.get(p) else { continue };
                    self.same_device(g, "gradient")?;
                    let g = g.cpu()?;
                    if let Some(j) = crate::optim::first_non_finite(&g) {
                        let v = g.get(j).copied().unwrap_or(f32::NAN);
                        drop(g);
                        self.record(Source::Gradient(i), v)?;
                        return Ok(());
                    }
                }
                Ok(())
            }
            Device::Cuda(n) => {
                // Parameters without a gradient keep their zero.
                let sums = zeros(n, params.len())?;
                for (i, p) in params.iter().enumerate() {
                    let Some(g) = grads.get(p) else { continue };
                    self.same_device(g, "gradient")?;
                    non_finite_sum_into(n, ptr(g)?, g.numel(), sums.ptr() + 4 * i as u64)?;
                }
                self.launch(n, sums.ptr(), params.len(), None, 0.0, true, 1)
            }
        }
    }

    /// The device address of `failed_at`, for the fused updates' `skip`.
    pub(crate) fn skip_ptr(&self) -> Result<DevPtr> {
        ptr(&self.state)
    }

    /// On the CPU: whether a failure has been recorded (free to ask there).
    pub(crate) fn failed_on_host(&self) -> Result<bool> {
        Ok(self.state.cpu()?[FAILED_AT] != 0.0)
    }

    /// Copies the state to the host (on a GPU this waits for the queued
    /// work) and reports the sums and the first failure.
    pub fn read(&self) -> Result<Reading> {
        let s = self.state.to_vec()?;
        let failure = (s[FAILED_AT] != 0.0).then(|| {
            let source = s[SOURCE] as usize;
            Failure {
                step: s[FAILED_AT] as usize,
                source: if source == 0 {
                    Source::Loss
                } else {
                    Source::Gradient(source - 1)
                },
                value: s[VALUE],
            }
        });
        Ok(Reading {
            loss_sum: s[LOSS_SUM] as f64,
            metric_sum: s[METRIC_SUM] as f64,
            last_loss: s[LAST_LOSS],
            failure,
        })
    }

    fn watch(
        &mut self,
        t: &Tensor,
        slot: usize,
        weight: f32,
        check: bool,
        what: &str,
    ) -> Result<()> {
        if t.numel() != 1 {
            return Err(Error::invalid(
                "step monitor",
                format!("the {what} has {} elements; expected one", t.numel()),
            ));
        }
        self.same_device(t, what)?;
        match self.device() {
            Device::Cpu => {
                let v = t.cpu()?[0];
                let mut s = self.state.cpu_mut()?;
                s[slot] += weight * v;
                if slot == LOSS_SUM {
                    s[LAST_LOSS] = v;
                }
                drop(s);
                if check && !v.is_finite() && !self.failed_on_host()? {
                    self.record(Source::Loss, v)?;
                }
                Ok(())
            }
            Device::Cuda(n) => self.launch(n, ptr(t)?, 1, Some(slot), weight, check, 0),
        }
    }

    fn record(&mut self, source: Source, value: f32) -> Result<()> {
        let mut s = self.state.cpu_mut()?;
        s[FAILED_AT] = self.step.max(1) as f32;
        s[SOURCE] = match source {
            Source::Loss => 0.0,
            Source::Gradient(i) => (i + 1) as f32,
        };
        s[VALUE] = value;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        ordinal: usize,
        values: DevPtr,
        count: usize,
        slot: Option<usize>,
        weight: f32,
        check: bool,
        first_source: usize,
    ) -> Result<()> {
        let p = MonitorParams {
            state: ptr(&self.state)?,
            values,
            count: i32_of(count, "monitored values")?,
            first_source: i32_of(first_source, "monitored source")?,
            sum_slot: slot.map_or(-1, |s| s as i32),
            check: check as i32,
            last_slot: if slot == Some(LOSS_SUM) {
                LAST_LOSS as i32
            } else {
                -1
            },
            // Steps are counted from 1, so 0 means "nothing failed".
            step: self.step.max(1) as f32,
            weight,
        };
        run(ordinal, "monitor_watch", Launch::per_item(1)?, &p)
    }

    fn same_device(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.device() != self.device() {
            return Err(Error::DeviceMismatch {
                op: "step monitor",
                a: format!("monitor on {}", self.device()),
                b: format!("{what} on {}", t.device()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_weighted_losses_and_metrics() {
        let mut m = StepMonitor::new(Device::Cpu).unwrap();
        for (loss, weight, metric) in [(2.0, 3.0, 5.0), (-1.0, 1.0, 2.0), (0.25, 4.0, 0.0)] {
            m.begin_step();
            m.add_loss(&Tensor::scalar(loss), weight).unwrap();
            m.add_metric(&Tensor::scalar(metric)).unwrap();
        }
        let r = m.read().unwrap();
        assert_eq!((r.loss_sum, r.metric_sum, r.failure), (6.0, 7.0, None));
        // The last loss unweighted, and metrics do not touch it.
        assert_eq!(r.last_loss, 0.25);
        assert_eq!(m.steps(), 3);
    }

    #[test]
    fn keeps_the_first_failure_only() {
        let mut m = StepMonitor::new(Device::Cpu).unwrap();
        m.begin_step();
        m.add_loss(&Tensor::scalar(1.0), 1.0).unwrap();
        // A NaN metric is not a failure: it changes no parameter.
        m.add_metric(&Tensor::scalar(f32::NAN)).unwrap();
        assert_eq!(m.read().unwrap().failure, None);
        m.begin_step();
        m.add_loss(&Tensor::scalar(f32::NEG_INFINITY), 1.0).unwrap();
        m.begin_step();
        m.add_loss(&Tensor::scalar(f32::NAN), 1.0).unwrap();
        let f = m.read().unwrap().failure.unwrap();
        assert_eq!(
            (f.step, f.source, f.value),
            (2, Source::Loss, f32::NEG_INFINITY)
        );
        assert_eq!(f.to_string(), "loss is -inf at step 2");
    }

    /// A failed loss is not overwritten by a failed gradient later (the
    /// CPU branch of watch_gradients returns early once something failed).
    #[test]
    fn a_gradient_failure_after_a_loss_failure_keeps_the_loss() {
        let p = Tensor::ones([3]).requires_grad();
        // Σ sqrt(0·p): value 0, gradient 0·inf = NaN.
        let zero = Tensor::zeros([3]);
        let nan_grads = || {
            crate::ops::sum(&crate::ops::sqrt(&crate::ops::mul(&p, &zero).unwrap()).unwrap())
                .unwrap()
                .backward()
                .unwrap()
        };
        let mut m = StepMonitor::new(Device::Cpu).unwrap();
        m.begin_step();
        m.watch_gradients(std::slice::from_ref(&p), &nan_grads())
            .unwrap();
        let f = m.read().unwrap().failure.unwrap();
        assert_eq!((f.step, f.source), (1, Source::Gradient(0)));
        assert!(f.value.is_nan());
        let mut m = StepMonitor::new(Device::Cpu).unwrap();
        m.begin_step();
        m.add_loss(&Tensor::scalar(f32::INFINITY), 1.0).unwrap();
        m.begin_step();
        m.watch_gradients(std::slice::from_ref(&p), &nan_grads())
            .unwrap();
        let f = m.read().unwrap().failure.unwrap();
        assert_eq!(
            (f.step, f.source, f.value),
            (1, Source::Loss, f32::INFINITY)
        );
    }

    #[test]
    fn refuses_a_loss_of_more_than_one_element() {
        let mut m = StepMonitor::new(Device::Cpu).unwrap();
        let e = m
            .add_loss(&Tensor::zeros([2]), 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the loss has 2 elements; expected one"), "{e}");
    }
}
