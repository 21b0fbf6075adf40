//! Mini-batch training loops shared by `splitinv train`, the black-box
//! attack (inverse networks) and the query-free attack (shadow models).

use crate::error::{Error, Result};
use crate::optim::{Adam, Optimizer, StepLr};
use crate::step_monitor::{Reading, Source, StepMonitor};
use crate::tensor::Tensor;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The seeded generator used for shuffling, dropout and augmentation.
pub type TrainRng = rand_chacha::ChaCha8Rng;

/// One training step: batch indices in, (loss, metric summed over the
/// batch) out. The metric is a one-element tensor on the loss's device
/// (e.g. [`crate::ops::count_correct`]), or `None` for a loop without one
/// (its epochs report 0).
pub type StepFn<'a> = dyn FnMut(&[usize], &mut TrainRng) -> Result<(Tensor, Option<Tensor>)> + 'a;

/// Steps between two looks at a training loop's loss (see
/// [`crate::step_monitor`]): each look waits for the device, so a loop
/// that looked every step could not run ahead of it. The progress bar's
/// loss and a NaN error come at most this many steps late; the parameters
/// are left as they were before the failing step either way.
pub const READ_EVERY: usize = 32;

/// Produces a labelled, normalised batch for the given indices.
pub type BatchFn<'a> = dyn FnMut(&[usize], &mut TrainRng) -> Result<(Tensor, Vec<usize>)> + 'a;

/// Settings of a training run (defaults: the authors' — Adam with amsgrad,
/// eps 1e-3, lr 1e-3, batch 32, lr halved every 20 epochs).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Initial learning rate.
    pub lr: f32,
    /// Adam epsilon.
    pub eps: f32,
    /// AMSGrad.
    pub amsgrad: bool,
    /// Multiply the lr by `lr_gamma` every `lr_step` epochs.
    pub lr_step: usize,
    /// See `lr_step`.
    pub lr_gamma: f32,
    /// Shuffling / dropout seed.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Stochastic weight averaging (Izmailov et al. 2018): from this 0-based
    /// epoch on, the weights after every epoch are averaged, and the average
    /// is the trained model. `None`: no averaging.
    #[serde(default)]
    pub swa_from: Option<usize>,
    /// Constant learning rate for the averaging epochs (`None`: the step
    /// schedule continues).
    #[serde(default)]
    pub swa_lr: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch: 32,
            lr: 1e-3,
            eps: 1e-3,
            amsgrad: true,
            lr_step: 20,
            lr_gamma: 0.5,
            seed: 0,
            progress: true,
            swa_from: None,
            swa_lr: None,
        }
    }
}

impl TrainConfig {
    /// Rejects impossible values.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::invalid("train", "--batch must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid(
                "train",
                format!("--lr must be a positive number, got {}", self.lr),
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(
                "train",
                format!("Adam's eps must be a positive number, got {}", self.eps),
            ));
        }
        if self.lr_step == 0 {
            return Err(Error::invalid("train", "lr_step must be at least 1"));
        }
        if self.epochs == 0 {
            return Err(Error::invalid("train", "--epochs must be at least 1"));
        }
        if !(self.lr_gamma > 0.0 && self.lr_gamma.is_finite()) {
            return Err(Error::invalid(
                "train",
                format!(
                    "--lr-gamma must be a positive number, got {}",
                    self.lr_gamma
                ),
            ));
        }
        if let Some(lr) = self.swa_lr {
            if !(lr > 0.0 && lr.is_finite()) {
                return Err(Error::invalid(
                    "train",
                    format!("--swa-lr must be a positive number, got {lr}"),
                ));
            }
            if self.swa_from.is_none() {
                return Err(Error::invalid("train", "--swa-lr needs --swa-from"));
            }
        }
        if let Some(from) = self.swa_from {
            if from >= self.epochs {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "--swa-from {} must be below --epochs {} (averaging starts after that many epochs)",
                        from, self.epochs
                    ),
                ));
            }
        }
        if self.lr_gamma > 1.0 {
            // A growing schedule peaks at its last epoch, or at the last
            // one before a constant averaging rate (--swa-lr) takes over;
            // without one the schedule goes on through the averaging.
            let end = match (self.swa_from, self.swa_lr) {
                (Some(from), Some(_)) => from.min(self.epochs),
                _ => self.epochs,
            };
            if let Some(peak) = end.checked_sub(1) {
                let k = (peak / self.lr_step.max(1)) as f64;
                let lr = self.lr as f64 * (self.lr_gamma as f64).powf(k);
                if !(lr as f32).is_finite() {
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "--lr {} grown by --lr-gamma {} every --lr-step {} epochs reaches \
                             {lr:.3e} by epoch {peak}, past f32's range; lower --lr-gamma, raise \
                             --lr-step or train fewer --epochs",
                            self.lr, self.lr_gamma, self.lr_step
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The learning rate of a 0-based epoch: the step schedule, or the
    /// constant `swa_lr` once averaging has started.
    pub fn lr_at(&self, epoch: usize) -> Result<f32> {
        match (self.swa_from, self.swa_lr) {
            (Some(from), Some(lr)) if epoch >= from => Ok(lr),
            _ => StepLr {
                step_size: self.lr_step,
                gamma: self.lr_gamma,
            }
            .lr_at(self.lr, epoch),
        }
    }

    /// The optimiser these settings describe.
    pub fn optimizer(&self) -> Adam {
        Adam::new(self.lr)
            .with_eps(self.eps)
            .with_amsgrad(self.amsgrad)
    }
}

/// What one epoch achieved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochStats {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Extra metric from the step function (e.g. training accuracy), mean.
    pub metric: f64,
    /// Images per second.
    pub images_per_s: f64,
    /// Learning rate used.
    pub lr: f32,
}

/// Every bar of the process, so that bars shown at the same time (shadows
/// training side by side) each keep a line of their own.
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A progress bar with rate and ETA (hidden when `show` is false).
pub fn progress_bar(len: u64, show: bool, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = bars().add(ProgressBar::new(len));
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_prefix(prefix.to_string());
    pb
}

/// Clears a bar from [`progress_bar`] off the terminal and lets go of it.
pub fn finish_bar(pb: &ProgressBar) {
    pb.finish_and_clear();
    // (A no-op for a hidden bar, which never joined.)
    bars().remove(pb);
}

/// Runs `epochs` passes over `n` samples in shuffled mini-batches with a
/// fresh optimiser; see [`fit_with`].
pub fn fit(
    params: &[(String, Tensor)],
    n: usize,
    cfg: &TrainConfig,
    start_epoch: usize,
    label: &str,
    step: &mut StepFn,
    end_epoch: &mut dyn FnMut(&EpochStats) -> Result<()>,
) -> Result<Vec<EpochStats>> {
    let mut opt = cfg.optimizer();
    fit_with(
        params,
        n,
        cfg,
        &mut opt,
        start_epoch,
        label,
        step,
        &mut |s, _| end_epoch(s),
    )
}

/// Runs epochs `start_epoch..cfg.epochs` over `n` samples in shuffled
/// mini-batches, training the `named` parameters (named as in a
/// checkpoint, so that a NaN gradient is reported by its layer). `step`
/// gets the indices of a batch and returns (loss tensor, optional
/// one-element metric for the batch); the loop does backward and the
/// optimiser step, watches for NaN on the device (see
/// [`crate::step_monitor`]: a NaN or infinite loss or gradient fails the
/// run at the next look, [`READ_EVERY`] steps or the epoch's end at the
/// latest, with the step it happened in, and no parameter changes from that
/// step on; an error the loop meets in between gives way to the recorded
/// NaN, its likely cause), sets each epoch's learning rate
/// ([`TrainConfig::lr_at`]) and calls `end_epoch` after every epoch with the
/// optimiser (whose state a checkpoint saves). `opt` may carry state from a
/// checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn fit_with(
    named: &[(String, Tensor)],
    n: usize,
    cfg: &TrainConfig,
    opt: &mut Adam,
    start_epoch: usize,
    label: &str,
    step: &mut StepFn,
    end_epoch: &mut dyn FnMut(&EpochStats, &Adam) -> Result<()>,
) -> Result<Vec<EpochStats>> {
    cfg.validate()?;
    if n == 0 {
        return Err(Error::invalid("train", "the training set is empty"));
    }
    let params: Vec<Tensor> = named.iter().map(|(_, t)| t.clone()).collect();
    let names: Vec<&str> = named.iter().map(|(s, _)| s.as_str()).collect();
    // The loop's bookkeeping lives where the parameters do.
    let device = params
        .first()
        .map_or(crate::device::Device::Cpu, |p| p.device());
    let mut all = Vec::new();
    for epoch in start_epoch..cfg.epochs {
        let lr = cfg.lr_at(epoch)?;
        opt.set_lr(lr);
        let at = Where {
            label,
            epoch,
            epochs: cfg.epochs,
            lr,
            lr_flag: lr_flag(cfg, epoch, label),
            names: &names,
        };
        // Seeded per epoch so a resumed run shuffles exactly as an uninterrupted one.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
        );
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let pb = progress_bar(
            n as u64,
            cfg.progress,
            &format!("{label} {}/{}", epoch + 1, cfg.epochs),
        );
        let t0 = std::time::Instant::now();
        let mut monitor = StepMonitor::new(device)?;
        let mut seen = 0usize;
        let steps = n.div_ceil(cfg.batch);
        for (k, idx) in order.chunks(cfg.batch).enumerate() {
            let taken = (|| -> Result<()> {
                let (loss, metric) = step(idx, &mut rng)?;
                monitor.begin_step();
                monitor.add_loss(&loss, idx.len() as f32)?;
                if let Some(m) = &metric {
                    monitor.add_metric(m)?;
                }
                let grads = loss.backward()?;
                drop(loss);
                opt.step_watched(&params, &grads, &mut monitor)
            })();
            if let Err(e) = taken {
                return Err(recorded_or(e, &monitor, &at));
            }
            seen += idx.len();
            pb.inc(idx.len() as u64);
            // (The epoch's last step is looked at below.)
            if (k + 1).is_multiple_of(READ_EVERY) && k + 1 < steps {
                let r = checked(monitor.read()?, &at)?;
                pb.set_message(format!("loss {:.4}", r.loss_sum / seen as f64));
            }
        }
        let r = checked(monitor.read()?, &at)?;
        finish_bar(&pb);
        let stats = EpochStats {
            epoch,
            loss: r.loss_sum / seen as f64,
            metric: r.metric_sum / seen as f64,
            images_per_s: seen as f64 / t0.elapsed().as_secs_f64(),
            lr,
        };
        end_epoch(&stats, opt)?;
        all.push(stats);
    }
    Ok(all)
}

/// Where in a loop a NaN or infinity was met, to word its error.
struct Where<'a> {
    label: &'a str,
    /// 0-based; messages count from 1, as the progress lines do.
    epoch: usize,
    epochs: usize,
    lr: f32,
    lr_flag: &'static str,
    names: &'a [&'a str],
}

/// The flag that set the learning rate of `epoch`: the target's training
/// takes `train --lr` (or `--swa-lr` once averaging has begun); the
/// attacks' inverse networks and shadows take `attack --train-lr`.
fn lr_flag(cfg: &TrainConfig, epoch: usize, label: &str) -> &'static str {
    if label != "train" {
        return "--train-lr";
    }
    match (cfg.swa_from, cfg.swa_lr) {
        (Some(from), Some(_)) if epoch >= from => "--swa-lr",
        // A learning rate grown past the set one came from the schedule.
        _ if cfg.lr_gamma > 1.0 && epoch >= cfg.lr_step => "--lr or --lr-gamma",
        _ => "--lr",
    }
}

/// The error a loop met, unless its monitor has recorded a NaN or infinity
/// before it: then that, the likelier cause (and the error the loop would
/// have raised at its next look).
fn recorded_or(e: Error, monitor: &StepMonitor, at: &Where) -> Error {
    match monitor.read() {
        Ok(r) if r.failure.is_some() => checked(r, at).err().unwrap_or(e),
        _ => e,
    }
}

/// A monitor's reading, or the loop's error for the NaN or infinity it saw.
fn checked(r: Reading, at: &Where) -> Result<Reading> {
    let Some(f) = r.failure else {
        return Ok(r);
    };
    // The monitor counts parameters; the user knows layers.
    let name = match f.source {
        Source::Gradient(i) => at.names.get(i).map(|n| (i, n)),
        Source::Loss => None,
    };
    let what = match name {
        Some((i, n)) => format!(
            "the gradient of {n} (parameter {i}) is not finite ({}) at step {}",
            f.value, f.step
        ),
        None => f.to_string(),
    };
    Err(Error::NonFinite(format!(
        "{}: {what} of epoch {}/{}, at learning rate {:e}; no \
         parameter was updated from that step on; lower {}",
        at.label,
        at.epoch + 1,
        at.epochs,
        at.lr,
        at.lr_flag
    )))
}

/// Index of the largest logit in each row (the first of equal maxima, as
/// [`crate::ops::count_correct`] counts).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let (n, c) = logits.shape().matrix("argmax")?;
    if c == 0 {
        return Ok(vec![0; n]);
    }
    let v = logits.to_vec()?;
    Ok(v.chunks_exact(c)
        .map(crate::ops::loss::row_argmax)
        .collect())
}

/// Stochastic weight averaging: the running mean of a model's weights taken
/// after each averaging epoch. For a net without batch norm (both of ours)
/// the averaged weights are used as they are; nothing needs recomputing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwaAverage {
    /// Snapshots averaged so far.
    pub count: usize,
    /// The mean of each parameter, in parameter order.
    pub values: Vec<Vec<f32>>,
}

impl SwaAverage {
    /// The current weights as an average of one snapshot.
    pub fn snapshot(params: &[Tensor]) -> Result<Self> {
        Ok(SwaAverage {
            count: 1,
            values: params.iter().map(|p| p.to_vec()).collect::<Result<_>>()?,
        })
    }

    fn check_len(&self, params: &[Tensor]) -> Result<()> {
        if self.values.len() == params.len() {
            return Ok(());
        }
        Err(Error::invalid(
            "swa",
            format!(
                "the average has {} parameters, the model {}",
                self.values.len(),
                params.len()
            ),
        ))
    }

    /// Adds the current weights: mean ← mean + (w − mean) / (count + 1).
    pub fn update(&mut self, params: &[Tensor]) -> Result<()> {
        if self.count == 0 {
            *self = SwaAverage::snapshot(params)?;
            return Ok(());
        }
        self.check_len(params)?;
        let k = 1.0 / (self.count + 1) as f32;
        for (avg, p) in self.values.iter_mut().zip(params) {
            let w = p.to_vec()?;
            if w.len() != avg.len() {
                return Err(Error::invalid(
                    "swa",
                    format!(
                        "a parameter has {} elements, its average {}",
                        w.len(),
                        avg.len()
                    ),
                ));
            }
            for (a, w) in avg.iter_mut().zip(&w) {
                *a += (w - *a) * k;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Writes the average into `params` (their storage, so every handle on
    /// the model sees it).
    pub fn write_into(&self, params: &[Tensor]) -> Result<()> {
        self.check_len(params)?;
        for (avg, p) in self.values.iter().zip(params) {
            let t = Tensor::from_vec(avg.clone(), p.shape().clone())?.to_device(p.device())?;
            p.assign(&t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_impossible_settings_and_names_them() {
        assert!(TrainConfig::default().validate().is_ok());
        for (cfg, says) in [
            (
                TrainConfig {
                    eps: 0.0,
                    ..TrainConfig::default()
                },
                "eps",
            ),
            (
                TrainConfig {
                    eps: f32::NAN,
                    ..TrainConfig::default()
                },
                "eps",
            ),
            (
                TrainConfig {
                    lr: -1e-3,
                    ..TrainConfig::default()
                },
                "--lr",
            ),
            (
                TrainConfig {
                    batch: 0,
                    ..TrainConfig::default()
                },
                "--batch",
            ),
            (
                TrainConfig {
                    epochs: 0,
                    ..TrainConfig::default()
                },
                "--epochs must be at least 1",
            ),
            (
                TrainConfig {
                    lr_gamma: f32::NAN,
                    ..TrainConfig::default()
                },
                "--lr-gamma must be a positive number, got NaN",
            ),
            (
                TrainConfig {
                    lr_gamma: 0.0,
                    ..TrainConfig::default()
                },
                "--lr-gamma",
            ),
        ] {
            let err = cfg
                .validate()
                .expect_err("an impossible setting was accepted")
                .to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    /// One parameter, a loss of 2·p (gradient 2) and a metric of 1 per
    /// batch; `bad_at`: the step (1-based, in epoch 0) whose loss is NaN;
    /// `fail_at`: a step that returns an error. Returns the parameter each
    /// step saw, the result, the parameter, and the epochs `end_epoch` saw.
    fn run_with(
        bad_at: Option<usize>,
        fail_at: Option<usize>,
    ) -> (Vec<f32>, Result<Vec<EpochStats>>, f32, usize) {
        let p = Tensor::scalar(1.0).requires_grad();
        let cfg = TrainConfig {
            epochs: 2,
            batch: 4,
            lr: 0.01,
            ..TrainConfig::default()
        };
        let mut seen = Vec::new();
        let q = p.clone();
        let mut step = |_: &[usize], _: &mut TrainRng| -> Result<(Tensor, Option<Tensor>)> {
            seen.push(q.item()?);
            if fail_at == Some(seen.len()) {
                return Err(Error::invalid("batch", "a corrupt image"));
            }
            let mut loss = crate::ops::scale(&q, 2.0)?;
            if bad_at == Some(seen.len()) {
                loss = crate::ops::add(&loss, &Tensor::scalar(f32::NAN))?;
            }
            Ok((loss, Some(Tensor::scalar(1.0))))
        };
        // 50 batches of 4 an epoch: more than READ_EVERY steps.
        let mut ended = 0;
        let r = fit(
            &[("p".to_string(), p.clone())],
            200,
            &cfg,
            0,
            "t",
            &mut step,
            &mut |_| {
                ended += 1;
                Ok(())
            },
        );
        let last = p.item().unwrap_or(f32::NAN);
        (seen, r, last, ended)
    }

    fn run(bad_at: Option<usize>) -> (Vec<f32>, Result<Vec<EpochStats>>, f32) {
        let (seen, r, last, _) = run_with(bad_at, None);
        (seen, r, last)
    }

    #[test]
    fn fit_sums_the_loss_and_metric_on_the_monitor() {
        let (seen, r, last) = run(None);
        let stats = r.unwrap();
        assert_eq!(seen.len(), 100);
        assert!(last < 1.0, "the parameter moved down its gradient");
        for (e, s) in stats.iter().enumerate() {
            // The batch-weighted mean of 2·p over the epoch's 50 steps.
            let steps = &seen[50 * e..50 * (e + 1)];
            let want = steps.iter().map(|&v| 2.0 * v as f64).sum::<f64>() / 50.0;
            assert!(
                (s.loss - want).abs() < 1e-5,
                "epoch {e}: {} vs {want}",
                s.loss
            );
            // A metric of 1 per batch of 4.
            assert!((s.metric - 0.25).abs() < 1e-12, "epoch {e}: {}", s.metric);
        }
    }

    #[test]
    fn a_nan_loss_fails_at_the_next_look_with_its_step_and_updates_nothing_after() {
        let (seen, r, last) = run(Some(3));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("t: loss is NaN at step 3 of epoch 1/"), "{e}");
        // Not the target's training ("train"): the attacks' flag.
        assert!(e.ends_with("lower --train-lr"), "{e}");
        assert!(
            e.contains("no parameter was updated from that step on"),
            "{e}"
        );
        // The loop ran on to its next look, without updating anything.
        assert_eq!(seen.len(), READ_EVERY);
        assert!(
            seen[2] < seen[1] && seen[1] < seen[0],
            "steps 1 and 2 updated"
        );
        assert!(seen[2..].iter().all(|&v| v == seen[2]), "{seen:?}");
        assert_eq!(last, seen[2]);
    }

    /// A NaN after the epoch's last look is caught by the read at the
    /// epoch's end, before `end_epoch` (which saves checkpoints) runs.
    #[test]
    fn a_nan_after_the_last_look_fails_the_epoch_before_it_ends() {
        let (seen, r, last, ended) = run_with(Some(40), None);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("t: loss is NaN at step 40 of epoch 1/"), "{e}");
        assert_eq!((seen.len(), ended), (50, 0));
        assert_eq!(last, seen[39]);
    }

    /// A gradient's NaN or infinity is reported by its parameter's name,
    /// with the epoch's learning rate and the flag that set it.
    #[test]
    fn a_non_finite_gradient_names_its_parameter_and_learning_rate() {
        let a = Tensor::scalar(1.0).requires_grad();
        let b = Tensor::scalar(0.0).requires_grad();
        let cfg = TrainConfig {
            epochs: 1,
            batch: 4,
            lr: 0.01,
            ..TrainConfig::default()
        };
        let (qa, qb) = (a.clone(), b.clone());
        // d sqrt(b)/db = 1/(2·sqrt(b)) is +inf at b = 0; the loss is finite.
        let mut step = |_: &[usize], _: &mut TrainRng| -> Result<(Tensor, Option<Tensor>)> {
            let loss = crate::ops::add(&crate::ops::scale(&qa, 2.0)?, &crate::ops::sqrt(&qb)?)?;
            Ok((loss, None))
        };
        let named = [
            ("a.weight".to_string(), a.clone()),
            ("b.bias".to_string(), b.clone()),
        ];
        let e = fit(&named, 8, &cfg, 0, "shadow", &mut step, &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the gradient of b.bias (parameter 1) is not finite (inf) at step 1 of epoch 1/1, at learning rate 1e-2"),
            "{e}"
        );
        assert!(e.ends_with("lower --train-lr"), "{e}");
        assert_eq!((a.item().unwrap(), b.item().unwrap()), (1.0, 0.0));
    }

    #[test]
    fn the_advice_names_the_flag_that_set_the_rate() {
        let cfg = TrainConfig {
            lr_step: 2,
            ..TrainConfig::default()
        };
        assert_eq!(lr_flag(&cfg, 5, "train"), "--lr");
        assert_eq!(lr_flag(&cfg, 5, "inverse"), "--train-lr");
        let grows = TrainConfig {
            lr_gamma: 10.0,
            ..cfg.clone()
        };
        assert_eq!(lr_flag(&grows, 1, "train"), "--lr");
        assert_eq!(lr_flag(&grows, 2, "train"), "--lr or --lr-gamma");
        let swa = TrainConfig {
            swa_from: Some(3),
            swa_lr: Some(0.05),
            ..cfg.clone()
        };
        assert_eq!(lr_flag(&swa, 2, "train"), "--lr");
        assert_eq!(lr_flag(&swa, 3, "train"), "--swa-lr");
        // A schedule that overflows f32 is refused before any step.
        let huge = TrainConfig {
            lr_gamma: 1e30,
            lr_step: 1,
            ..TrainConfig::default()
        };
        let e = huge.lr_at(2).unwrap_err().to_string();
        assert!(
            e.contains("learning rate of epoch 2 would be") && e.contains("inf"),
            "{e}"
        );
        // ...and by validate, for the run's last epoch, before any work.
        let e = TrainConfig {
            epochs: 3,
            ..huge.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--lr 0.001 grown by --lr-gamma 1000000000000000000000000000000 every --lr-step 1 epochs reaches 1.000e57 by epoch 2")
                && e.contains("lower --lr-gamma, raise --lr-step or train fewer --epochs"),
            "{e}"
        );
        assert!(TrainConfig {
            epochs: 2,
            ..huge.clone()
        }
        .validate()
        .is_ok());
        // A constant averaging rate stops the growth at --swa-from...
        let averaged = TrainConfig {
            epochs: 60,
            swa_from: Some(2),
            swa_lr: Some(1e-3),
            ..huge.clone()
        };
        assert!(averaged.validate().is_ok());
        // ...without one, the schedule grows through the averaging.
        let e = TrainConfig {
            swa_lr: None,
            ..averaged
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("by epoch 59"), "{e}");
    }

    /// An error after a recorded NaN (here a batch that fails to load)
    /// gives way to the NaN, its likelier cause; without the NaN the
    /// error comes through as it is.
    #[test]
    fn an_error_after_a_nan_reports_the_nan() {
        let (_, r, _, _) = run_with(Some(3), Some(5));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("loss is NaN at step 3 of epoch 1/"), "{e}");
        let (_, r, _, _) = run_with(None, Some(5));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("a corrupt image"), "{e}");
    }
}
