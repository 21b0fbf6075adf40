//! `splitinv bench`: the standard workloads, timed on random data.
//!
//! Each workload is one step of real work — a training step of a target net,
//! or one white-box attack step — timed individually after a warm-up; the
//! reported figure is the median seconds per step.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::models::ModelKind;
use crate::ops::{self, TvKind};
use crate::optim::{Adam, Optimizer};
use crate::tensor::Tensor;
use rand::SeedableRng;
use std::time::{Duration, Instant};

/// One benchmark result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Workload name, e.g. `train/mnist/b32`.
    pub workload: String,
    /// Median seconds per step.
    pub s_per_step: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Steps measured.
    pub steps: usize,
}

/// A workload: its name, model, batch size and (for attacks) split layer.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Name as printed.
    pub name: String,
    /// The net.
    pub model: ModelKind,
    /// Batch size.
    pub batch: usize,
    /// `Some(split)` for a white-box attack step, `None` for a training step.
    pub split: Option<&'static str>,
}

/// The standard list: training steps and white-box attack steps.
pub fn standard_workloads() -> Vec<Workload> {
    let mut v = Vec::new();
    for (m, tag) in [
        (ModelKind::Lenet, "mnist"),
        (ModelKind::Cifar10Cnn, "cifar"),
    ] {
        for b in [32, 128] {
            v.push(Workload {
                name: format!("train/{tag}/b{b}"),
                model: m,
                batch: b,
                split: None,
            });
        }
    }
    for (m, tag, splits) in [
        (ModelKind::Lenet, "mnist", ["conv1", "ReLU2", "fc2act"]),
        (
            ModelKind::Cifar10Cnn,
            "cifar",
            ["conv11", "ReLU22", "ReLU32"],
        ),
    ] {
        for s in splits {
            for b in [1, 10] {
                v.push(Workload {
                    name: format!("whitebox/{tag}/{s}/b{b}"),
                    model: m,
                    batch: b,
                    split: Some(s),
                });
            }
        }
    }
    v
}

/// A prepared step that can be run repeatedly.
pub type Step = Box<dyn FnMut() -> Result<()>>;

/// Builds the step closure of a workload on random data (seeded).
pub fn prepare(w: &Workload) -> Result<Step> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let [c, h, wd] = w.model.input_chw();
    // On a GPU each step ends with a synchronisation, so the time measured
    // is the time the queued kernels took, not the time to queue them.
    let dev = crate::device::default_device();
    let sync = move || -> Result<()> {
        match dev {
            crate::Device::Cpu => Ok(()),
            crate::Device::Cuda(n) => crate::cuda::device(n)?.synchronize(),
        }
    };
    match w.split {
        None => {
            let mut net = w.model.build(1)?;
            net.to_device(dev)?;
            net.set_trainable(true);
            let params = net.params();
            let x = Tensor::rand_normal([w.batch, c, h, wd], 0.0, 1.0, &mut rng).to_device(dev)?;
            let labels: Vec<usize> = (0..w.batch).map(|i| i % 10).collect();
            let mut opt = Adam::new(1e-3).with_amsgrad(true).with_eps(1e-3);
            let mut drop_rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            Ok(Box::new(move || {
                let logits = net.forward_train(&x, &mut drop_rng)?;
                let loss = ops::cross_entropy(&logits, &labels)?;
                let grads = loss.backward()?;
                opt.step(&params, &grads)?;
                sync()
            }))
        }
        Some(split) => {
            let mut net = w.model.build(1)?;
            net.to_device(dev)?;
            let (f1, _) = net.split(split)?;
            let x0 =
                Tensor::rand_uniform([w.batch, c, h, wd], -1.0, 1.0, &mut rng).to_device(dev)?;
            let target = no_grad(|| f1.forward(&x0))?;
            let x = Tensor::zeros_on([w.batch, c, h, wd], dev)?.requires_grad();
            let mut opt = Adam::new(1e-2).with_amsgrad(true).with_eps(1e-8);
            Ok(Box::new(move || {
                let feats = f1.forward(&x)?;
                let loss = ops::add(
                    &ops::mse_loss(&feats, &target)?,
                    &ops::tv_loss(&x, TvKind::Squared)?,
                )?;
                let grads = loss.backward()?;
                opt.step(std::slice::from_ref(&x), &grads)?;
                sync()
            }))
        }
    }
}

/// Times a step: warm-up, then individual steps until `budget` has passed
/// (at least `min_steps`); returns the median and the number of steps.
pub fn time_step(
    step: &mut Step,
    warmup: usize,
    min_steps: usize,
    budget: Duration,
) -> Result<(f64, usize)> {
    for _ in 0..warmup {
        step()?;
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_steps || start.elapsed() < budget {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 100_000 {
            break;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], times.len()))
}

/// Runs one workload.
pub fn run(w: &Workload, quick: bool) -> Result<BenchResult> {
    let mut step = prepare(w)?;
    let (warmup, min_steps, budget) = if quick {
        (2, 3, Duration::from_millis(300))
    } else {
        (5, 10, Duration::from_secs(3))
    };
    let (median, steps) = time_step(&mut step, warmup, min_steps, budget)?;
    Ok(BenchResult {
        workload: w.name.clone(),
        s_per_step: median,
        images_per_s: w.batch as f64 / median,
        steps,
    })
}
