//! Optimizers (SGD, Adam/AMSGrad) and the step learning-rate schedule.
//!
//! Both optimizers follow PyTorch's `torch.optim` formulas exactly, so
//! hyper-parameters from the paper's code mean the same thing here.
//!
//! **In place, no allocation per step.** Parameters are updated through
//! [`Tensor::cpu_mut`]; the state (momentum buffer, Adam moments) is one
//! tensor per parameter and state kind, allocated the first time that
//! parameter gets a gradient and reused afterwards. The update for one
//! parameter is a single fused pass over (param, grad, state), compiled per
//! SIMD level and split across threads for large parameters.
//!
//! **Parameters are identified by position.** Pass the same list, in the
//! same order, to every `step` (as a model's `parameters()` does); a list of
//! another length or a parameter whose size changed is an error, not a
//! silent mix-up of state. [`Sgd::reset`] / [`Adam::reset`] forget the state.
//!
//! **On the GPU** (parameters and gradients on a CUDA device) each update
//! is one fused launch of `adam_step` / `sgd_step` (`kernels/optim.cu`),
//! and the state lives on the same device. The NaN check then adds up the
//! NaN and ±inf elements of each gradient on the device (0 for a finite
//! gradient, however large its values) and copies only those sums to the
//! host.
//!
//! **All or nothing.** A parameter with no gradient in the store is skipped
//! (as PyTorch skips `grad is None`). Before anything is written, every
//! gradient is checked: a NaN or infinity fails the step with
//! [`Error::NonFinite`] naming the parameter and element, and no parameter
//! or state changes. [`Optimizer::step_watched`] keeps that guarantee
//! without the copy to the host: it records the failure in a
//! [`StepMonitor`] and skips, for training loops that look only now and then.

use crate::autograd::GradStore;
use crate::cpu::simd::{self, SimdLevel};
use crate::cuda::params::DevPtr;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::loss::cpu::multiversion;
use crate::step_monitor::StepMonitor;
use crate::tensor::Tensor;

/// Something that updates parameters from their gradients.
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads`, in place.
    fn step(&mut self, params: &[Tensor], grads: &GradStore) -> Result<()>;
    /// [`step`](Self::step) without waiting for the device: a non-finite
    /// gradient is recorded in `monitor` instead of failing the call, and
    /// this update and every later one through the same monitor leave the
    /// parameters and the state as they were (the GPU kernels read the
    /// monitor's flag; see [`crate::step_monitor`]). The caller finds out
    /// from [`StepMonitor::read`]. Other errors (shapes, devices) still
    /// fail the call. After a recorded failure on a GPU the host-side step
    /// counter of Adam has moved on while the moments have not: read the
    /// monitor and stop, as the training loops do.
    fn step_watched(
        &mut self,
        params: &[Tensor],
        grads: &GradStore,
        monitor: &mut StepMonitor,
    ) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Changes the learning rate (schedules call this between epochs).
    fn set_lr(&mut self, lr: f32);
}

/// `Optimizer` for a type whose `update(params, grads, monitor)` does the
/// work (plain steps without a monitor, watched ones with) and whose `lr`
/// field holds the learning rate.
macro_rules! optimizer_via_update {
    ($t:ty) => {
        impl Optimizer for $t {
            fn step(&mut self, params: &[Tensor], grads: &GradStore) -> Result<()> {
                self.update(params, grads, None)
            }
            fn step_watched(
                &mut self,
                params: &[Tensor],
                grads: &GradStore,
                monitor: &mut StepMonitor,
            ) -> Result<()> {
                self.update(params, grads, Some(monitor))
            }
            fn lr(&self) -> f32 {
                self.lr
            }
            fn set_lr(&mut self, lr: f32) {
                self.lr = lr;
            }
        }
    };
}

/// Elements per thread piece; parameters shorter than [`PAR_THRESHOLD`]
/// are updated on the calling thread.
const CHUNK: usize = 1 << 14;
/// Parameters at least this large are updated in parallel.
const PAR_THRESHOLD: usize = 1 << 16;

fn check_hyper(op: &'static str, name: &str, v: f32, ok: bool, expected: &str) -> Result<()> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} = {v}; expected {expected}"),
        ))
    }
}

/// Index of the first NaN or ±inf in `x`, if any. The common all-finite case
/// is one vectorisable pass: 0·v is 0 for finite v and NaN otherwise, and NaN
/// survives addition, so independent lane sums flag a bad value.
pub(crate) fn first_non_finite(x: &[f32]) -> Option<usize> {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut it = x.chunks_exact(L);
    for c in &mut it {
        for l in 0..L {
            acc[l] += c[l] * 0.0;
        }
    }
    let tail_ok = it.remainder().iter().all(|v| v.is_finite());
    if acc.iter().all(|v| *v == 0.0) && tail_ok {
        return None;
    }
    x.iter().position(|v| !v.is_finite())
}

/// Checks every (parameter, gradient) pair before any update: device, shape,
/// storage, finiteness, and that the parameter list matches the state
/// (its size and device per parameter). With a `monitor`, finiteness is
/// left to it (recorded, not an error).
fn validate(
    op: &'static str,
    params: &[Tensor],
    grads: &GradStore,
    state_sizes: &[Option<(usize, Device)>],
    monitor: Option<&mut StepMonitor>,
) -> Result<()> {
    // GPU gradients whose finiteness is checked at the end, all at once.
    let mut on_gpu: Vec<(usize, usize, &Tensor)> = Vec::new();
    if !state_sizes.is_empty() && state_sizes.len() != params.len() {
        return Err(Error::invalid(
            op,
            format!(
                "this optimizer holds state for {} parameters but step got {}; pass the same \
                 parameter list every step (or call reset())",
                state_sizes.len(),
                params.len()
            ),
        ));
    }
    for (i, p) in params.iter().enumerate() {
        let Some(g) = grads.get(p) else { continue };
        let dev = crate::cuda::exec::common_device(op, &[p, g])?;
        if g.shape() != p.shape() {
            return Err(Error::shape(op, p.shape(), g.shape()));
        }
        if p.same_storage(g) {
            return Err(Error::invalid(
                op,
                format!("parameter {i} shares its storage with its own gradient"),
            ));
        }
        if let Some(Some((_, d))) = state_sizes.get(i) {
            if *d != dev {
                return Err(Error::DeviceMismatch {
                    op,
                    a: format!("optimizer state of parameter {i} on {d} (call reset() after moving parameters)"),
                    b: dev.to_string(),
                });
            }
        }
        if let Some(Some((n, _))) = state_sizes.get(i) {
            if *n != p.numel() {
                return Err(Error::invalid(
                    op,
                    format!(
                        "parameter {i} has {} elements but its optimizer state has {n}; \
                         pass the same parameter list every step (or call reset())",
                        p.numel()
                    ),
                ));
            }
        }
        if monitor.is_some() {
            continue;
        }
        if let Device::Cuda(n) = dev {
            on_gpu.push((n, i, g));
            continue;
        }
        if let Some(j) = first_non_finite(&g.cpu()?) {
            let v = g.cpu()?.get(j).copied().unwrap_or(f32::NAN);
            return Err(non_finite(op, i, p, j, v));
        }
    }
    if let Some(m) = monitor {
        return m.watch_gradients(params, grads);
    }
    // A sum of only the non-finite elements is non-zero exactly when a
    // gradient holds a NaN or infinity; only then is that gradient copied
    // to find the element.
    let mut ordinals: Vec<usize> = on_gpu.iter().map(|(n, _, _)| *n).collect();
    ordinals.sort_unstable();
    ordinals.dedup();
    for n in ordinals {
        let group: Vec<&(usize, usize, &Tensor)> = on_gpu.iter().filter(|e| e.0 == n).collect();
        let ts: Vec<&Tensor> = group.iter().map(|e| e.2).collect();
        let sums = crate::cuda::exec::non_finite_sums(n, &ts)?;
        for (s, (_, i, g)) in sums.iter().zip(group) {
            if *s == 0.0 {
                continue;
            }
            let host = g.to_vec()?;
            if let Some(j) = first_non_finite(&host) {
                let v = host.get(j).copied().unwrap_or(f32::NAN);
                let p = params.get(*i).unwrap_or(g);
                return Err(non_finite(op, *i, p, j, v));
            }
        }
    }
    Ok(())
}

fn non_finite(op: &str, i: usize, p: &Tensor, j: usize, v: f32) -> Error {
    Error::NonFinite(format!(
        "{op}: the gradient of parameter {i} (shape {:?}) is {v} at element {j}; \
         no parameter was updated",
        p.dims()
    ))
}

/// The fused GPU updates (`kernels/optim.cu`), one launch per parameter.
mod gpu {
    use crate::cuda::exec::{i64_of, opt_ptr, ptr, run};
    use crate::cuda::launch::Launch;
    use crate::cuda::params::{AdamParams, DevPtr, SgdParams};
    use crate::error::Result;
    use crate::tensor::Tensor;

    /// PyTorch's SGD rule on device `ordinal`; `buf` is the momentum buffer
    /// (None without momentum), `first` its first use.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sgd(
        ordinal: usize,
        p: &Tensor,
        g: &Tensor,
        buf: Option<&Tensor>,
        lr: f32,
        wd: f32,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        first: bool,
        skip: DevPtr,
    ) -> Result<()> {
        let prm = SgdParams {
            param: ptr(p)?,
            grad: ptr(g)?,
            momentum_buf: opt_ptr(buf)?,
            skip,
            n: i64_of(p.numel())?,
            lr,
            momentum: if buf.is_some() { momentum } else { 0.0 },
            dampening,
            weight_decay: wd,
            nesterov: nesterov as i32,
            first_step: first as i32,
        };
        run(ordinal, "sgd_step", Launch::elementwise(p.numel()), &prm)
    }

    /// PyTorch's Adam rule (L2 weight decay, optional AMSGrad) on device
    /// `ordinal`; bias corrections 1 − β^t computed by the caller in f64.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adam(
        ordinal: usize,
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        vmax: Option<&Tensor>,
        (lr, beta1, beta2, eps, weight_decay): (f32, f32, f32, f32, f32),
        bc1: f64,
        bc2: f64,
        skip: DevPtr,
    ) -> Result<()> {
        let prm = AdamParams {
            param: ptr(p)?,
            grad: ptr(g)?,
            m: ptr(m)?,
            v: ptr(v)?,
            vmax: opt_ptr(vmax)?,
            skip,
            n: i64_of(p.numel())?,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: bc1 as f32,
            bias_correction2: bc2 as f32,
            amsgrad: vmax.is_some() as i32,
            decoupled: 0,
        };
        run(ordinal, "adam_step", Launch::elementwise(p.numel()), &prm)
    }
}

// ----- kernels ----------------------------------------------------------------

multiversion! {
    /// Plain SGD: p −= lr·(g + wd·p).
    fn sgd_plain(p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= lr * (g + wd * *p);
        }
    }
}

multiversion! {
    /// SGD with momentum, PyTorch's rule: d = g + wd·p; buf = d on the first
    /// step, else momentum·buf + (1 − dampening)·d; the step is buf, or
    /// d + momentum·buf with Nesterov; p −= lr·step.
    fn sgd_momentum(
        p: &mut [f32],
        g: &[f32],
        buf: &mut [f32],
        lr: f32,
        wd: f32,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        first: bool,
    ) {
        let keep = 1.0 - dampening;
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = g + wd * *p;
            *b = if first { d } else { momentum * *b + keep * d };
            let step = if nesterov { d + momentum * *b } else { *b };
            *p -= lr * step;
        }
    }
}

/// Per-step constants of one Adam update.
#[derive(Clone, Copy)]
struct AdamCoef {
    /// lr / (1 − β1^t)
    step_size: f32,
    /// √(1 − β2^t)
    bc2_sqrt: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
}

multiversion! {
    /// Adam, PyTorch's rule: d = g + wd·p; m += (1 − β1)(d − m);
    /// v = β2·v + (1 − β2)·d²; with AMSGrad vmax = max(vmax, v) replaces v
    /// below; p −= step_size · m / (√v / √(1 − β2^t) + eps).
    fn adam_update(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        c: AdamCoef,
    ) {
        let (w1, w2) = (1.0 - c.beta1, 1.0 - c.beta2);
        match vmax {
            None => {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let d = g + c.wd * *p;
                    *m += w1 * (d - *m);
                    *v = *v * c.beta2 + w2 * d * d;
                    let denom = v.sqrt() / c.bc2_sqrt + c.eps;
                    *p -= c.step_size * (*m / denom);
                }
            }
            Some(vmax) => {
                for ((((p, &g), m), v), vm) in p
                    .iter_mut()
                    .zip(g)
                    .zip(m.iter_mut())
                    .zip(v.iter_mut())
                    .zip(vmax.iter_mut())
                {
                    let d = g + c.wd * *p;
                    *m += w1 * (d - *m);
                    *v = *v * c.beta2 + w2 * d * d;
                    *vm = vm.max(*v);
                    let denom = vm.sqrt() / c.bc2_sqrt + c.eps;
                    *p -= c.step_size * (*m / denom);
                }
            }
        }
    }
}

// ----- SGD ---------------------------------------------------------------------

/// Stochastic gradient descent with optional momentum, dampening, Nesterov
/// momentum and L2 weight decay — `torch.optim.SGD` semantics.
#[derive(Debug)]
pub struct Sgd {
    /// Learning rate (≥ 0).
    pub lr: f32,
    /// Momentum factor (≥ 0; 0 = plain SGD, no state).
    pub momentum: f32,
    /// Dampening of the momentum (0 by default; Nesterov needs 0).
    pub dampening: f32,
    /// L2 penalty added to the gradient as wd·p (≥ 0).
    pub weight_decay: f32,
    /// Nesterov momentum (needs momentum > 0 and dampening 0).
    pub nesterov: bool,
    /// One momentum buffer per parameter position, made on first use.
    bufs: Vec<Option<Tensor>>,
    pub(crate) level: SimdLevel,
}

impl Sgd {
    /// Plain SGD with this learning rate (no momentum, no weight decay).
    pub fn new(lr: f32) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            bufs: Vec::new(),
            level: simd::level(),
        }
    }
    /// Sets the momentum factor.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }
    /// Sets the dampening.
    pub fn with_dampening(mut self, dampening: f32) -> Self {
        self.dampening = dampening;
        self
    }
    /// Sets the L2 weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Turns Nesterov momentum on or off.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
    /// Forgets the momentum buffers (the next step starts fresh).
    pub fn reset(&mut self) {
        self.bufs.clear();
    }

    fn check(&self) -> Result<()> {
        let op = "sgd";
        check_hyper(op, "lr", self.lr, self.lr >= 0.0, "a finite value >= 0")?;
        check_hyper(
            op,
            "momentum",
            self.momentum,
            self.momentum >= 0.0,
            "a finite value >= 0",
        )?;
        check_hyper(op, "dampening", self.dampening, true, "a finite value")?;
        check_hyper(
            op,
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "a finite value >= 0",
        )?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                op,
                format!(
                    "Nesterov momentum needs momentum > 0 and dampening = 0 (got momentum {}, dampening {})",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }
}

optimizer_via_update!(Sgd);

impl Sgd {
    fn update(
        &mut self,
        params: &[Tensor],
        grads: &GradStore,
        mut monitor: Option<&mut StepMonitor>,
    ) -> Result<()> {
        self.check()?;
        let sizes: Vec<Option<(usize, Device)>> = self
            .bufs
            .iter()
            .map(|b| b.as_ref().map(|t| (t.numel(), t.device())))
            .collect();
        validate("sgd", params, grads, &sizes, monitor.as_deref_mut())?;
        let Some(skip) = skip_flag(monitor.as_deref())? else {
            return Ok(());
        };
        let use_momentum = self.momentum != 0.0;
        if use_momentum && self.bufs.is_empty() {
            self.bufs = (0..params.len()).map(|_| None).collect();
        }
        let (lv, lr, wd) = (self.level, self.lr, self.weight_decay);
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if let Device::Cuda(n) = p.device() {
                let first = use_momentum && self.bufs.get(i).is_some_and(|b| b.is_none());
                if first {
                    if let Some(slot) = self.bufs.get_mut(i) {
                        *slot = Some(Tensor::zeros_on(p.shape().clone(), p.device())?);
                    }
                }
                let buf = if use_momentum {
                    self.bufs.get(i).and_then(|b| b.as_ref())
                } else {
                    None
                };
                let (m, damp, nest) = (self.momentum, self.dampening, self.nesterov);
                gpu::sgd(n, p, g, buf, lr, wd, m, damp, nest, first, skip)?;
                continue;
            }
            let g = g.cpu()?;
            let mut pw = p.cpu_mut()?;
            if !use_momentum {
                par_pieces2(&mut pw, &g, |p, g| sgd_plain(lv, p, g, lr, wd));
                continue;
            }
            let first = self.bufs.get(i).is_some_and(|b| b.is_none());
            if first {
                if let Some(slot) = self.bufs.get_mut(i) {
                    *slot = Some(Tensor::zeros(p.shape().clone()));
                }
            }
            let Some(Some(buf)) = self.bufs.get(i) else {
                continue;
            };
            let mut bw = buf.cpu_mut()?;
            let (m, damp, nest) = (self.momentum, self.dampening, self.nesterov);
            par_pieces3(&mut pw, &g, &mut bw, |p, g, b| {
                sgd_momentum(lv, p, g, b, lr, wd, m, damp, nest, first)
            });
        }
        Ok(())
    }
}

/// What a watched update passes to the GPU kernels as `skip`: `Some(0)`
/// (never skip) without a monitor, the monitor's flag on a GPU, and on the
/// CPU, where the flag can be read for free, `None` (skip this update) once
/// a failure is recorded.
fn skip_flag(monitor: Option<&StepMonitor>) -> Result<Option<DevPtr>> {
    match monitor {
        None => Ok(Some(0)),
        Some(m) => match m.device() {
            Device::Cpu if m.failed_on_host()? => Ok(None),
            Device::Cpu => Ok(Some(0)),
            Device::Cuda(_) => m.skip_ptr().map(Some),
        },
    }
}

/// Runs `f` over matching pieces of (p, g), in parallel when large.
fn par_pieces2(p: &mut [f32], g: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    use rayon::prelude::*;
    if p.len() >= PAR_THRESHOLD {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| f(p, g));
    } else {
        f(p, g);
    }
}

/// Runs `f` over matching pieces of (p, g, s), in parallel when large.
fn par_pieces3(
    p: &mut [f32],
    g: &[f32],
    s: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    if p.len() >= PAR_THRESHOLD {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .for_each(|((p, g), s)| f(p, g, s));
    } else {
        f(p, g, s);
    }
}

// ----- Adam ---------------------------------------------------------------------

/// The moments of one parameter.
/// One parameter's Adam state on the host (see [`Adam::export_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamMoments {
    /// Steps taken (drives the bias correction).
    pub step: u64,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
    /// AMSGrad's running maximum of `v`, when AMSGrad was on.
    pub vmax: Option<Vec<f32>>,
}

#[derive(Debug)]
struct AdamState {
    /// Steps this parameter has taken (bias correction uses it, as PyTorch's
    /// per-parameter `state['step']`).
    step: u64,
    m: Tensor,
    v: Tensor,
    /// AMSGrad's running maximum of v.
    vmax: Option<Tensor>,
}

/// Adam (Kingma & Ba) with optional AMSGrad and L2 weight decay —
/// `torch.optim.Adam` semantics, bias correction included. The paper's
/// training used `Adam::new(1e-3).with_eps(1e-3).with_amsgrad(true)`; its
/// white-box attack `Adam::new(1e-2)`.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate (≥ 0).
    pub lr: f32,
    /// Decay of the first moment, in [0, 1).
    pub beta1: f32,
    /// Decay of the second moment, in [0, 1).
    pub beta2: f32,
    /// Added to the denominator (≥ 0).
    pub eps: f32,
    /// L2 penalty added to the gradient as wd·p (≥ 0; this is Adam, not AdamW).
    pub weight_decay: f32,
    /// Use the running maximum of the second moment (Reddi et al. 2018).
    pub amsgrad: bool,
    state: Vec<Option<AdamState>>,
    pub(crate) level: SimdLevel,
}

impl Adam {
    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight
    /// decay, no AMSGrad.
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            state: Vec::new(),
            level: simd::level(),
        }
    }
    /// Sets (β1, β2).
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the L2 weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Turns AMSGrad on or off.
    pub fn with_amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }
    /// Forgets all moments and step counts.
    pub fn reset(&mut self) {
        self.state.clear();
    }

    /// Copies the per-parameter state (step count and moments) to the host,
    /// in parameter order; `None` for a parameter that has not stepped yet.
    /// A checkpoint stores this so a resumed run continues with the same
    /// moments instead of restarting Adam's warm-up.
    pub fn export_state(&self) -> Result<Vec<Option<AdamMoments>>> {
        self.state
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| {
                        Ok(AdamMoments {
                            step: s.step,
                            m: s.m.to_vec()?,
                            v: s.v.to_vec()?,
                            vmax: s.vmax.as_ref().map(|t| t.to_vec()).transpose()?,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Restores state saved by [`Adam::export_state`] for `params` (same
    /// order). Every moment must have its parameter's length, and AMSGrad
    /// needs the running maximum; otherwise nothing changes and the error
    /// names the parameter.
    pub fn import_state(
        &mut self,
        params: &[Tensor],
        saved: Vec<Option<AdamMoments>>,
    ) -> Result<()> {
        if saved.len() != params.len() {
            return Err(Error::invalid(
                "adam",
                format!(
                    "saved state has {} parameters, the model has {}",
                    saved.len(),
                    params.len()
                ),
            ));
        }
        let mut state = Vec::with_capacity(saved.len());
        for (i, (p, s)) in params.iter().zip(saved).enumerate() {
            let Some(s) = s else {
                state.push(None);
                continue;
            };
            let n = p.numel();
            let lens_ok =
                s.m.len() == n && s.v.len() == n && s.vmax.as_ref().is_none_or(|x| x.len() == n);
            if !lens_ok {
                return Err(Error::invalid(
                    "adam",
                    format!("saved moments of parameter {i} do not have its {n} elements"),
                ));
            }
            if self.amsgrad && s.vmax.is_none() {
                return Err(Error::invalid(
                    "adam",
                    format!(
                        "amsgrad is on but the saved state of parameter {i} has no running maximum"
                    ),
                ));
            }
            let (shape, dev) = (p.shape().clone(), p.device());
            let to = |v: Vec<f32>| Tensor::from_vec(v, shape.clone())?.to_device(dev);
            state.push(Some(AdamState {
                step: s.step,
                m: to(s.m)?,
                v: to(s.v)?,
                vmax: s.vmax.map(to).transpose()?,
            }));
        }
        self.state = state;
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let op = "adam";
        check_hyper(op, "lr", self.lr, self.lr >= 0.0, "a finite value >= 0")?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            check_hyper(op, name, b, (0.0..1.0).contains(&b), "a value in [0, 1)")?;
        }
        check_hyper(op, "eps", self.eps, self.eps >= 0.0, "a finite value >= 0")?;
        check_hyper(
            op,
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "a finite value >= 0",
        )
    }
}

optimizer_via_update!(Adam);

impl Adam {
    fn update(
        &mut self,
        params: &[Tensor],
        grads: &GradStore,
        mut monitor: Option<&mut StepMonitor>,
    ) -> Result<()> {
        self.check()?;
        let sizes: Vec<Option<(usize, Device)>> = self
            .state
            .iter()
            .map(|s| s.as_ref().map(|s| (s.m.numel(), s.m.device())))
            .collect();
        validate("adam", params, grads, &sizes, monitor.as_deref_mut())?;
        let Some(skip) = skip_flag(monitor.as_deref())? else {
            return Ok(());
        };
        // A state made without AMSGrad has no maximum to continue from.
        if self.amsgrad && self.state.iter().flatten().any(|s| s.vmax.is_none()) {
            return Err(Error::invalid(
                "adam",
                "amsgrad was switched on after the first step; call reset() first",
            ));
        }
        if self.state.is_empty() {
            self.state = (0..params.len()).map(|_| None).collect();
        }
        let lv = self.level;
        let hyper = (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay);
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let Some(slot) = self.state.get_mut(i) else {
                continue;
            };
            if slot.is_none() {
                let (shape, dev) = (p.shape().clone(), p.device());
                *slot = Some(AdamState {
                    step: 0,
                    m: Tensor::zeros_on(shape.clone(), dev)?,
                    v: Tensor::zeros_on(shape.clone(), dev)?,
                    vmax: self
                        .amsgrad
                        .then(|| Tensor::zeros_on(shape, dev))
                        .transpose()?,
                });
            }
            let Some(st) = slot.as_mut() else { continue };
            st.step += 1;
            // Bias corrections in f64, as PyTorch computes them in Python floats.
            let t = st.step as f64;
            let bc1 = 1.0 - (self.beta1 as f64).powf(t);
            let bc2 = 1.0 - (self.beta2 as f64).powf(t);
            let c = AdamCoef {
                step_size: (self.lr as f64 / bc1) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                wd: self.weight_decay,
            };
            if let Device::Cuda(n) = p.device() {
                let vmax = st.vmax.as_ref().filter(|_| self.amsgrad);
                gpu::adam(n, p, g, &st.m, &st.v, vmax, hyper, bc1, bc2, skip)?;
                continue;
            }
            let g = g.cpu()?;
            let mut pw = p.cpu_mut()?;
            let mut mw = st.m.cpu_mut()?;
            let mut vw = st.v.cpu_mut()?;
            // AMSGrad only while switched on (a state with vmax can run without it).
            let mut vmw = match (&st.vmax, self.amsgrad) {
                (Some(t), true) => Some(t.cpu_mut()?),
                _ => None,
            };
            adam_pieces(lv, &mut pw, &g, &mut mw, &mut vw, vmw.as_deref_mut(), c);
        }
        Ok(())
    }
}

/// One Adam update, in parallel pieces when the parameter is large.
fn adam_pieces(
    lv: SimdLevel,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
    c: AdamCoef,
) {
    use rayon::prelude::*;
    if p.len() < PAR_THRESHOLD {
        adam_update(lv, p, g, m, v, vmax, c);
        return;
    }
    let base = p
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK));
    match vmax {
        None => base.for_each(|(((p, g), m), v)| adam_update(lv, p, g, m, v, None, c)),
        Some(vm) => base
            .zip(vm.par_chunks_mut(CHUNK))
            .for_each(|((((p, g), m), v), vm)| adam_update(lv, p, g, m, v, Some(vm), c)),
    }
}

// ----- schedule --------------------------------------------------------------------

/// Multiplies the learning rate by `gamma` every `step_size` epochs:
/// lr(epoch) = base · gamma^⌊epoch / step_size⌋ (PyTorch's `StepLR`). The
/// paper's training halves the rate every 20 epochs: `StepLr { step_size: 20, gamma: 0.5 }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLr {
    /// Epochs between decays (≥ 1).
    pub step_size: usize,
    /// Factor applied at each decay (finite, ≥ 0).
    pub gamma: f32,
}

impl StepLr {
    /// The learning rate for `epoch` (counted from 0), given the base rate.
    pub fn lr_at(&self, base_lr: f32, epoch: usize) -> Result<f32> {
        if self.step_size == 0 {
            return Err(Error::invalid(
                "step_lr",
                "step_size = 0; expected at least 1 epoch between decays",
            ));
        }
        check_hyper(
            "step_lr",
            "gamma",
            self.gamma,
            self.gamma >= 0.0,
            "a finite value >= 0",
        )?;
        let k = (epoch / self.step_size) as f64;
        let lr = (base_lr as f64 * (self.gamma as f64).powf(k)) as f32;
        // A gamma above 1 grows the rate; past f32's range every update
        // would be infinite.
        if !lr.is_finite() {
            return Err(Error::invalid(
                "step_lr",
                format!(
                    "the learning rate of epoch {epoch} would be {base_lr} · {}^{k} = {lr}; \
                     expected a finite rate (lower the gamma)",
                    self.gamma
                ),
            ));
        }
        Ok(lr)
    }

    /// Sets `opt`'s learning rate for `epoch`.
    pub fn apply(&self, opt: &mut dyn Optimizer, base_lr: f32, epoch: usize) -> Result<()> {
        opt.set_lr(self.lr_at(base_lr, epoch)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;
    use crate::ops::{mse_loss, mul, sum};

    /// A GradStore holding exactly `grads[i]` for `params[i]` (None = no
    /// gradient): L = Σ_i Σ p_i·c_i has dL/dp_i = c_i.
    fn store(params: &[Tensor], grads: &[Option<Vec<f32>>]) -> GradStore {
        let mut total: Option<Tensor> = None;
        for (p, g) in params.iter().zip(grads) {
            let Some(g) = g else { continue };
            let c = Tensor::from_slice(g, p.shape().clone()).unwrap();
            let term = sum(&mul(p, &c).unwrap()).unwrap();
            total = Some(match total {
                None => term,
                Some(t) => crate::ops::add(&t, &term).unwrap(),
            });
        }
        total.unwrap().backward().unwrap()
    }

    /// Deterministic gradients for step t: shrinking over time, so that
    /// AMSGrad's maximum differs from v.
    fn grad_at(n: usize, t: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + salt + t as f32 * 1.1).sin() * 2.0) / (1.0 + t as f32))
            .collect()
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 2e-6 + 2e-5 * w.abs(),
                "{what}: first mismatch at [{i}]: got {g:.9} want {w:.9}"
            );
        }
    }

    #[test]
    fn adam_matches_pytorch_formulas_at_every_level() {
        // Two parameters; the second is big enough for the parallel path.
        let sizes = [37usize, 70_003];
        for amsgrad in [false, true] {
            for wd in [0.0f32, 0.05] {
                for lv in available_levels() {
                    let init: Vec<Vec<f32>> = sizes
                        .iter()
                        .map(|&n| (0..n).map(|i| (i as f32 * 0.13).cos()).collect())
                        .collect();
                    let params: Vec<Tensor> = init
                        .iter()
                        .zip(sizes)
                        .map(|(v, n)| Tensor::from_slice(v, [n]).unwrap().requires_grad())
                        .collect();
                    let mut opt = Adam::new(0.01)
                        .with_betas(0.8, 0.6)
                        .with_eps(1e-3)
                        .with_weight_decay(wd)
                        .with_amsgrad(amsgrad);
                    opt.level = lv;
                    let mut want: Vec<Vec<f64>> = init
                        .iter()
                        .map(|v| v.iter().map(|&x| x as f64).collect())
                        .collect();
                    let mut st: Vec<reference::AdamRef> =
                        sizes.iter().map(|&n| reference::AdamRef::new(n)).collect();
                    for t in 0..6 {
                        let gs: Vec<Vec<f32>> = sizes
                            .iter()
                            .enumerate()
                            .map(|(k, &n)| grad_at(n, t, k as f32))
                            .collect();
                        let grads =
                            store(&params, &gs.iter().cloned().map(Some).collect::<Vec<_>>());
                        opt.step(&params, &grads).unwrap();
                        for k in 0..2 {
                            st[k].step(
                                &mut want[k],
                                &gs[k],
                                0.01,
                                0.8,
                                0.6,
                                1e-3,
                                wd as f64,
                                amsgrad,
                            );
                            let what = format!("adam amsgrad={amsgrad} wd={wd} {lv} t={t} p{k}");
                            close(&params[k].to_vec().unwrap(), &want[k], &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn amsgrad_changes_the_trajectory() {
        // With shrinking gradients v decays below its maximum, so the two differ.
        let run = |ams: bool| {
            let p = Tensor::from_vec(vec![1.0; 8], [8]).unwrap().requires_grad();
            // β2 = 0.5: v forgets quickly, so it drops below its running maximum.
            let mut opt = Adam::new(0.1).with_betas(0.9, 0.5).with_amsgrad(ams);
            for t in 0..5 {
                let g = store(std::slice::from_ref(&p), &[Some(grad_at(8, t, 0.0))]);
                opt.step(std::slice::from_ref(&p), &g).unwrap();
            }
            p.to_vec().unwrap()
        };
        let (a, b) = (run(false), run(true));
        assert!(
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-2),
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn sgd_matches_pytorch_formulas_at_every_level() {
        let sizes = [19usize, 70_001];
        let variants = [
            (0.0f32, 0.0f32, 0.0f32, false),
            (0.9, 0.0, 0.0, false),
            (0.9, 0.0, 0.01, true),
            (0.5, 0.3, 0.02, false),
        ];
        for (momentum, dampening, wd, nesterov) in variants {
            for lv in available_levels() {
                let init: Vec<Vec<f32>> = sizes
                    .iter()
                    .map(|&n| (0..n).map(|i| (i as f32 * 0.29).sin()).collect())
                    .collect();
                let params: Vec<Tensor> = init
                    .iter()
                    .zip(sizes)
                    .map(|(v, n)| Tensor::from_slice(v, [n]).unwrap().requires_grad())
                    .collect();
                let mut opt = Sgd::new(0.05)
                    .with_momentum(momentum)
                    .with_dampening(dampening)
                    .with_weight_decay(wd)
                    .with_nesterov(nesterov);
                opt.level = lv;
                let mut want: Vec<Vec<f64>> = init
                    .iter()
                    .map(|v| v.iter().map(|&x| x as f64).collect())
                    .collect();
                let mut bufs: Vec<Option<Vec<f64>>> = vec![None, None];
                for t in 0..5 {
                    let gs: Vec<Vec<f32>> = sizes
                        .iter()
                        .enumerate()
                        .map(|(k, &n)| grad_at(n, t, k as f32 + 3.0))
                        .collect();
                    let grads = store(&params, &gs.iter().cloned().map(Some).collect::<Vec<_>>());
                    opt.step(&params, &grads).unwrap();
                    for k in 0..2 {
                        reference::sgd_step(
                            &mut want[k],
                            &gs[k],
                            &mut bufs[k],
                            0.05,
                            momentum as f64,
                            dampening as f64,
                            wd as f64,
                            nesterov,
                        );
                        let what = format!(
                            "sgd m={momentum} d={dampening} wd={wd} n={nesterov} {lv} t={t} p{k}"
                        );
                        close(&params[k].to_vec().unwrap(), &want[k], &what);
                    }
                }
            }
        }
    }

    #[test]
    fn sgd_momentum_by_hand() {
        // p = 1, g = 1 every step, lr 0.1, momentum 0.9:
        // buf 1 → p 0.9; buf 1.9 → p 0.71; buf 2.71 → p 0.439.
        let p = Tensor::from_vec(vec![1.0], [1]).unwrap().requires_grad();
        let mut opt = Sgd::new(0.1).with_momentum(0.9);
        for want in [0.9f32, 0.71, 0.439] {
            let g = store(std::slice::from_ref(&p), &[Some(vec![1.0])]);
            opt.step(std::slice::from_ref(&p), &g).unwrap();
            let got = p.item().unwrap();
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn optimizers_converge_on_a_quadratic() {
        // min mean((x − target)²): the minimiser is the target.
        let target =
            Tensor::from_vec((0..50).map(|i| (i as f32 * 0.3).sin()).collect(), [5, 10]).unwrap();
        let mut opts: Vec<(&str, Box<dyn Optimizer>, usize)> = vec![
            ("adam", Box::new(Adam::new(0.05)), 600),
            ("amsgrad", Box::new(Adam::new(0.05).with_amsgrad(true)), 600),
            ("sgd", Box::new(Sgd::new(10.0)), 200),
            (
                "sgd-nesterov",
                Box::new(Sgd::new(2.0).with_momentum(0.9).with_nesterov(true)),
                300,
            ),
        ];
        for (name, opt, steps) in opts.iter_mut() {
            let x = Tensor::zeros([5, 10]).requires_grad();
            let params = [x.clone()];
            for _ in 0..*steps {
                let g = mse_loss(&x, &target).unwrap().backward().unwrap();
                opt.step(&params, &g).unwrap();
            }
            let err = mse_loss(&x, &target).unwrap().item().unwrap();
            assert!(err < 1e-8, "{name}: final mse {err}");
        }
    }

    #[test]
    fn non_finite_gradient_is_an_error_and_changes_nothing() {
        let a = Tensor::from_vec(vec![1.0; 40], [40])
            .unwrap()
            .requires_grad();
        let b = Tensor::from_vec(vec![2.0; 3], [3]).unwrap().requires_grad();
        let params = [a.clone(), b.clone()];
        let mut bad = vec![0.5f32; 40];
        bad[33] = f32::NAN;
        for (grads, idx, elem) in [
            (
                vec![Some(vec![0.5; 40]), Some(vec![0.1, f32::INFINITY, 0.1])],
                1,
                1,
            ),
            (vec![Some(bad), Some(vec![0.1; 3])], 0, 33),
        ] {
            let g = store(&params, &grads);
            let mut opts: Vec<Box<dyn Optimizer>> = vec![
                Box::new(Adam::new(0.1).with_amsgrad(true)),
                Box::new(Sgd::new(0.1).with_momentum(0.9)),
            ];
            for opt in opts.iter_mut() {
                let e = opt.step(&params, &g).unwrap_err();
                assert!(matches!(e, Error::NonFinite(_)), "{e}");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("parameter {idx}"))
                        && msg.contains(&format!("element {elem}")),
                    "{msg}"
                );
                assert_eq!(a.to_vec().unwrap(), vec![1.0; 40]);
                assert_eq!(b.to_vec().unwrap(), vec![2.0; 3]);
            }
        }
        assert_eq!(first_non_finite(&[1.0; 35]), None);
        let mut v = vec![1.0f32; 35];
        v[34] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&v), Some(34));
        v[34] = 1.0;
        v[3] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(3));
    }

    #[test]
    fn params_without_gradient_are_skipped() {
        let a = Tensor::from_vec(vec![1.0; 4], [4]).unwrap().requires_grad();
        let b = Tensor::from_vec(vec![2.0; 4], [4]).unwrap().requires_grad();
        let params = [a.clone(), b.clone()];
        let mut opt = Adam::new(0.1);
        let g = store(&params, &[None, Some(vec![1.0; 4])]);
        opt.step(&params, &g).unwrap();
        assert_eq!(a.to_vec().unwrap(), vec![1.0; 4]);
        assert!(b.to_vec().unwrap().iter().all(|&v| (v - 1.9).abs() < 1e-5));
        assert!(
            opt.state[0].is_none(),
            "no state for a parameter never stepped"
        );
        // A different parameter list is refused rather than mixing up state.
        let e = opt.step(&params[..1], &g).unwrap_err().to_string();
        assert!(e.contains("2 parameters") && e.contains("got 1"), "{e}");
    }

    #[test]
    fn bad_hyper_parameters_are_errors() {
        let p = Tensor::zeros([2]).requires_grad();
        let g = store(std::slice::from_ref(&p), &[Some(vec![1.0, 1.0])]);
        let ps = std::slice::from_ref(&p);
        let e = Adam::new(0.1)
            .with_betas(1.0, 0.9)
            .step(ps, &g)
            .unwrap_err();
        assert!(e.to_string().contains("beta1 = 1"), "{e}");
        assert!(Adam::new(f32::NAN).step(ps, &g).is_err());
        let e = Sgd::new(0.1).with_nesterov(true).step(ps, &g).unwrap_err();
        assert!(e.to_string().contains("Nesterov"), "{e}");
        assert!(Sgd::new(-1.0).step(ps, &g).is_err());
        assert_eq!(p.to_vec().unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn step_lr_schedule() {
        let s = StepLr {
            step_size: 20,
            gamma: 0.5,
        };
        let want = [
            (0, 1e-3),
            (19, 1e-3),
            (20, 5e-4),
            (39, 5e-4),
            (40, 2.5e-4),
            (65, 1.25e-4),
        ];
        for (epoch, lr) in want {
            let got = s.lr_at(1e-3, epoch).unwrap();
            assert!((got - lr).abs() <= 1e-9, "epoch {epoch}: {got} vs {lr}");
        }
        let mut opt = Adam::new(1e-3);
        s.apply(&mut opt, 1e-3, 45).unwrap();
        assert!((opt.lr() - 2.5e-4).abs() < 1e-10);
        let e = StepLr {
            step_size: 0,
            gamma: 0.5,
        }
        .lr_at(1.0, 3)
        .unwrap_err();
        assert!(e.to_string().contains("step_size = 0"), "{e}");
    }
}
