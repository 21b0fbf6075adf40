//! `splitinv bench`: the standard workloads, timed on random data.
//!
//! Each workload is one step of real work — a training step of a target net,
//! or one white-box attack step — timed individually after a warm-up; the
//! reported figure is the median seconds per step.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::ModelKind;
use crate::ops::{self, TvKind};
use crate::optim::{Adam, Optimizer};
use crate::step_monitor::StepMonitor;
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
    /// On a GPU: the most bytes the memory pool had in use at once while
    /// the workload was prepared and timed (weights, data, optimiser state,
    /// activations, gradients, workspaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<usize>,
    /// The bytes of the step's activations: the input batch and every
    /// layer's output, f32. Its gradients take as many again, so
    /// `2 * activation_bytes` is what the step cannot do without; the peak
    /// is compared with that.
    pub activation_bytes: usize,
    /// With a kernel profile (`bench --profile`, GPU only): the GPU time of
    /// every kernel launch per step, summed. Against `s_per_step` it says
    /// how much of a step the GPU spends computing; the rest is launch and
    /// host overhead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_s_per_step: Option<f64>,
    /// On a GPU: the convolution precision the step ran at
    /// (`--conv-math`), so that a result says which PyTorch setting it is
    /// to be compared with (TF32 convolutions, PyTorch's default, or FP32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_math: Option<crate::cuda::ConvMath>,
    /// With a kernel profile: per kernel and grid, largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<crate::cuda::profile::KernelRow>>,
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
    /// Only run on a GPU (too big to be worth minutes on a CPU).
    pub gpu_only: bool,
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
                gpu_only: false,
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
                    gpu_only: false,
                });
            }
        }
    }
    // The GPU's own scale: a large training batch and the memory
    // workload (1000 CIFAR images attacked at once).
    v.push(Workload {
        name: "train/cifar/b256".into(),
        model: ModelKind::Cifar10Cnn,
        batch: 256,
        split: None,
        gpu_only: true,
    });
    v.push(Workload {
        name: "whitebox/cifar/ReLU22/b1000".into(),
        model: ModelKind::Cifar10Cnn,
        batch: 1000,
        split: Some("ReLU22"),
        gpu_only: true,
    });
    v
}

/// Bytes of the input batch plus every layer output the step's forward
/// pass keeps (f32), from the shapes of a one-image pass on the CPU.
pub fn activation_bytes(w: &Workload) -> Result<usize> {
    let net = w.model.build(1)?;
    let net = match w.split {
        Some(split) => net.split(split)?.0,
        None => net,
    };
    let per_image = net.activation_elements(&w.model.input_chw())?;
    Ok(per_image * w.batch * std::mem::size_of::<f32>())
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
            let mut monitor = StepMonitor::new(dev)?;
            Ok(Box::new(move || {
                let logits = net.forward_train(&x, &mut drop_rng)?;
                let loss = ops::cross_entropy(&logits, &labels)?;
                watched_step(&mut monitor, loss, &params, &mut opt)?;
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
            let mut monitor = StepMonitor::new(dev)?;
            Ok(Box::new(move || {
                let feats = f1.forward(&x)?;
                let loss = ops::add(
                    &ops::mse_loss(&feats, &target)?,
                    &ops::tv_loss(&x, TvKind::Squared)?,
                )?;
                watched_step(&mut monitor, loss, std::slice::from_ref(&x), &mut opt)?;
                sync()
            }))
        }
    }
}

/// The rest of a step as the training loops and the white-box attack take
/// it ([`crate::train::fit_with`]): the loss into the step monitor,
/// backward, the watched update. Then the monitor is read, which on a GPU
/// waits for the step's kernels (the loops read only every
/// [`crate::train::READ_EVERY`] steps, but a benchmark step must end with
/// the device idle anyway, so that its time is the kernels' time; the
/// synchronisation after it only collects a kernel's deferred error), and
/// a NaN fails the benchmark.
fn watched_step(
    monitor: &mut StepMonitor,
    loss: Tensor,
    params: &[Tensor],
    opt: &mut Adam,
) -> Result<()> {
    monitor.begin_step();
    monitor.add_loss(&loss, 1.0)?;
    let grads = loss.backward()?;
    drop(loss);
    opt.step_watched(params, &grads, monitor)?;
    match monitor.read()?.failure {
        Some(f) => Err(Error::NonFinite(format!("benchmark step: {f}"))),
        None => Ok(()),
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

/// Refuses a kernel profile that cannot run: 0 steps, or on the CPU.
pub fn check_profile_steps(profile_steps: Option<usize>, on_gpu: bool) -> Result<()> {
    match profile_steps {
        Some(0) => Err(Error::invalid(
            "bench --profile",
            "0 steps to profile; expected at least 1",
        )),
        Some(_) if !on_gpu => Err(Error::invalid(
            "bench --profile",
            "the kernel profile times GPU kernels; this run is on the CPU (use --device cuda)",
        )),
        _ => Ok(()),
    }
}

/// Runs one workload. With `profile_steps`, after the timing, that many
/// more steps run with a kernel profile on ([`crate::cuda::profile`]; GPU
/// only), and the result carries it.
pub fn run(w: &Workload, quick: bool, profile_steps: Option<usize>) -> Result<BenchResult> {
    // On a GPU the peak is the workload's own: the previous workload's
    // buffers are gone, and the pool's cache is emptied so that blocks of
    // the wrong size classes don't count.
    let gpu = match crate::device::default_device() {
        crate::Device::Cpu => None,
        crate::Device::Cuda(n) => Some(crate::cuda::device(n)?),
    };
    check_profile_steps(profile_steps, gpu.is_some())?;
    if let Some(g) = &gpu {
        g.synchronize()?;
        g.trim();
        g.reset_peak();
    }
    let mut step = prepare(w)?;
    let (warmup, min_steps, budget) = if quick {
        (2, 3, Duration::from_millis(300))
    } else {
        (5, 10, Duration::from_secs(3))
    };
    let (median, steps) = time_step(&mut step, warmup, min_steps, budget)?;
    let peak_gpu_bytes = gpu.as_ref().map(|g| g.memory_stats().peak_in_use);
    let (kernel_s_per_step, kernels) = match (profile_steps, &gpu) {
        (Some(n), Some(_)) => {
            crate::cuda::profile::start();
            let ran = (0..n).try_for_each(|_| step());
            let times = crate::cuda::profile::stop()?;
            ran?;
            (
                Some(times.total_ms() / 1e3 / n as f64),
                Some(times.per_step(n)?),
            )
        }
        _ => (None, None),
    };
    drop(step);
    Ok(BenchResult {
        workload: w.name.clone(),
        s_per_step: median,
        images_per_s: w.batch as f64 / median,
        steps,
        peak_gpu_bytes,
        activation_bytes: activation_bytes(w)?,
        conv_math: match gpu {
            Some(_) => Some(crate::cuda::conv_math()?),
            None => None,
        },
        kernel_s_per_step,
        kernels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        standard_workloads()
            .into_iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    #[test]
    fn activation_bytes_count_the_input_and_every_layer_output() {
        // LeNet to conv1: the 1×28×28 input and conv1's 8×24×24 output.
        let w = workload("whitebox/mnist/conv1/b10");
        assert_eq!(activation_bytes(&w).unwrap(), 10 * (784 + 8 * 24 * 24) * 4);
        // CIFAR10CNN to ReLU22: input, conv11, ReLU11, conv12, ReLU12 at
        // 64×32×32, pool1 at 64×16×16, conv21, ReLU21, conv22, ReLU22 at
        // 128×16×16.
        let w = workload("whitebox/cifar/ReLU22/b1000");
        let per_image = 3 * 1024 + 4 * 64 * 1024 + 64 * 256 + 4 * 128 * 256;
        assert_eq!(activation_bytes(&w).unwrap(), 1000 * per_image * 4);
    }

    #[test]
    fn the_large_workloads_are_gpu_only() {
        for w in standard_workloads() {
            assert_eq!(w.gpu_only, w.batch > 128, "{}", w.name);
        }
        assert!(workload("train/cifar/b256").gpu_only);
    }
}
