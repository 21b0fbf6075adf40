//! Putting the pieces together: training a target classifier, and running
//! each attack against a split of it on a set of images. The CLI commands
//! (`train`, `eval`, `attack`, `reproduce`, `demo`) are thin layers over this.

use crate::attacks::blackbox::{self, ClientOracle, DataSetting};
use crate::attacks::linear_inverse;
use crate::attacks::metrics::{self, ImageScores};
use crate::attacks::noise::NoiseModel;
use crate::attacks::queryfree::{self, ShadowSetting};
use crate::attacks::whitebox::{self, Normalization, WhiteBoxConfig};
use crate::autograd::no_grad;
use crate::checkpoint::TrainState;
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{decoders, shadows, ModelKind};
use crate::nn::Sequential;
use crate::ops;
use crate::optim::Adam;
use crate::tensor::Tensor;
use crate::train::{fit_with, EpochStats, SwaAverage, TrainConfig, TrainRng};
use crate::util::Fnv64;
use std::path::Path;

/// The augmentation an attacker applies to its own training images: flips
/// and small affine jitter for colour photos, jitter without flips for
/// grey-level (digit-like) images.
fn attacker_augment(channels: usize) -> Augment {
    if channels == 3 {
        Augment::cifar()
    } else {
        Augment::digits()
    }
}

/// f2's leading ReLU layers (none when f2 does not start with a ReLU).
/// (Matching after the max-pool too was tried: 1-6 dB worse, the pool
/// throws away detail the reconstruction needs.)
fn leading_relus(f2: &Sequential) -> Vec<(String, crate::nn::Layer)> {
    f2.layers()
        .iter()
        .take_while(|(_, layer)| matches!(layer, crate::nn::Layer::Relu))
        .map(|(name, layer)| (format!("server {name}"), layer.clone()))
        .collect()
}

/// A labelled, normalised batch (optionally augmented) of a dataset.
pub fn prepare_batch(
    ds: &Dataset,
    idx: &[usize],
    norm: &Normalization,
    augment: Option<(&Augment, &mut TrainRng)>,
) -> Result<(Tensor, Vec<usize>)> {
    let (x, labels) = ds.batch(idx)?;
    let x = match augment {
        Some((aug, rng)) => {
            let (c, h, w) = (ds.channels, ds.height, ds.width);
            let mut v = x.to_vec()?;
            aug.apply_batch(&mut v, c, h, w, rng)?;
            Tensor::from_vec(v, x.shape().clone())?
        }
        None => x,
    };
    Ok((
        norm.normalize(&x)?
            .to_device(crate::device::default_device())?,
        labels,
    ))
}

/// Test accuracy of a classifier on a dataset, in [0, 1].
pub fn evaluate(net: &Sequential, ds: &Dataset, norm: &Normalization, batch: usize) -> Result<f64> {
    if ds.is_empty() {
        return Err(Error::invalid("evaluate", "the evaluation set is empty"));
    }
    let mut correct = 0usize;
    let all: Vec<usize> = (0..ds.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        let (x, labels) = prepare_batch(ds, idx, norm, None)?;
        let logits = no_grad(|| net.forward(&x))?;
        let (_, c) = logits.shape().matrix("evaluate")?;
        let v = logits.to_vec()?;
        // An infinite or NaN output has no argmax: an accuracy counted over
        // it would be a number about nothing (weights of 3e38 load, as
        // finite numbers, and gave "9.74%").
        if let Some(j) = crate::optim::first_non_finite(&v) {
            let image = idx.get(j / c.max(1)).copied().unwrap_or(0);
            return Err(Error::NonFinite(format!(
                "evaluate: the net's output {} for image {image} of {} is {}; its weights (or \
                 inputs) are out of range",
                j % c.max(1),
                ds.source,
                v.get(j).copied().unwrap_or(f32::NAN)
            )));
        }
        correct += v
            .chunks_exact(c.max(1))
            .map(crate::ops::loss::row_argmax)
            .zip(&labels)
            .filter(|(a, b)| a == *b)
            .count();
    }
    Ok(correct as f64 / ds.len() as f64)
}

/// Per-epoch record of a classifier training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassifierEpoch {
    /// Loss, rate, lr.
    #[serde(flatten)]
    pub stats: EpochStats,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Test accuracy after the epoch, if a test set was given.
    pub test_accuracy: Option<f64>,
    /// Test accuracy of the weight average, once averaging has started.
    pub swa_test_accuracy: Option<f64>,
}

impl ClassifierEpoch {
    /// The test accuracy of the model this epoch leaves behind: the average
    /// when averaging, else the current weights.
    pub fn model_test_accuracy(&self) -> Option<f64> {
        self.swa_test_accuracy.or(self.test_accuracy)
    }
}

/// Trains `net` as a classifier with cross-entropy (the authors' recipe:
/// Adam/amsgrad, eps 1e-3, lr halved every 20 epochs), continuing from
/// `resume` (epochs done, optimiser moments, weight average; use
/// `TrainState::default()` for a fresh run) and calling `on_epoch` after
/// every epoch with the current weights and the state a checkpoint needs.
/// With `cfg.swa_from` set, the weights left in `net` at the end are the
/// average (stochastic weight averaging).
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    net: &mut Sequential,
    train: &Dataset,
    test: Option<&Dataset>,
    norm: &Normalization,
    cfg: &TrainConfig,
    augment: Option<Augment>,
    resume: TrainState,
    on_epoch: &mut dyn FnMut(&Sequential, &ClassifierEpoch, &TrainState) -> Result<()>,
) -> Result<Vec<ClassifierEpoch>> {
    net.to_device(crate::device::default_device())?;
    net.set_trainable(true);
    let params = net.params();
    let mut opt = cfg.optimizer();
    if let Some(saved) = resume.adam {
        opt.import_state(&params, saved)?;
    }
    let mut swa = resume.swa.unwrap_or_default();
    let model = net.clone();
    let mut step = |idx: &[usize], rng: &mut TrainRng| -> Result<(Tensor, Option<Tensor>)> {
        let (x, labels) =
            prepare_batch(train, idx, norm, augment.as_ref().map(|a| (a, &mut *rng)))?;
        let logits = model.forward_train(&x, rng)?;
        let (loss, correct) = ops::cross_entropy_and_correct(&logits, &labels)?;
        Ok((loss, Some(correct)))
    };
    let mut epochs = Vec::new();
    let eval_net = net.clone();
    let mut end = |s: &EpochStats, opt: &Adam| -> Result<()> {
        let accuracy = |net: &Sequential| match test {
            Some(t) => evaluate(net, t, norm, 256).map(Some),
            None => Ok(None),
        };
        let test_accuracy = accuracy(&eval_net)?;
        let averaging = cfg.swa_from.is_some_and(|from| s.epoch >= from);
        let swa_test_accuracy = if averaging {
            swa.update(&params)?;
            // Score the average by swapping it in, then put the weights back.
            let current = SwaAverage::snapshot(&params)?;
            swa.write_into(&params)?;
            let acc = accuracy(&eval_net);
            current.write_into(&params)?;
            acc?
        } else {
            None
        };
        let e = ClassifierEpoch {
            stats: s.clone(),
            train_accuracy: s.metric,
            test_accuracy,
            swa_test_accuracy,
        };
        let state = TrainState {
            epochs_done: s.epoch + 1,
            adam: Some(opt.export_state()?),
            swa: (swa.count > 0).then(|| swa.clone()),
            run: None,
        };
        on_epoch(&eval_net, &e, &state)?;
        epochs.push(e);
        Ok(())
    };
    fit_with(
        &net.named_params(),
        train.len(),
        cfg,
        &mut opt,
        resume.epochs_done,
        "train",
        &mut step,
        &mut end,
    )?;
    // Only a run that averages ends on the average (a resumed checkpoint's
    // average is never a reason to; the caller refuses such a resume).
    if cfg.swa_from.is_some() && swa.count > 0 {
        swa.write_into(&params)?;
    }
    net.set_trainable(false);
    Ok(epochs)
}

/// A trained target network with what an attack needs to know about it.
#[derive(Clone)]
pub struct Target {
    /// The architecture (for decoders and shadows).
    pub kind: ModelKind,
    /// The whole net f = f2 ∘ f1 (frozen).
    pub net: Sequential,
    /// Input normalisation.
    pub norm: Normalization,
}

impl Target {
    /// Wraps a net.
    pub fn new(kind: ModelKind, mut net: Sequential) -> Self {
        net.set_trainable(false);
        let (m, s) = kind.normalization();
        Target {
            kind,
            net,
            norm: Normalization::new(m, s),
        }
    }

    /// Loads a built-in architecture's weights from a safetensors file.
    pub fn load(kind: ModelKind, weights: &Path) -> Result<Self> {
        let mut net = kind.build(0)?;
        crate::nn::weights::load(&mut net, weights)?;
        net.to_device(crate::device::default_device())?;
        Ok(Target::new(kind, net))
    }

    /// The features the server sees for these pixel images: f1(normalise(x)).
    pub fn observe(&self, split: &str, pixels: &Tensor) -> Result<Tensor> {
        let (f1, _) = self.net.split(split)?;
        let x = self.norm.normalize(pixels)?.to_device(self.net.device())?;
        no_grad(|| f1.forward(&x))
    }

    fn chw(&self) -> [usize; 3] {
        self.kind.input_chw()
    }

    fn to_pixels(&self, x: &Tensor) -> Result<Tensor> {
        ops::clamp(&self.norm.denormalize(x)?, 0.0, 1.0)
    }
}

/// One attack's outcome on a batch of images.
#[derive(Clone)]
pub struct AttackOutcome {
    /// Reconstructions as pixels in [0, 1], `[N, C, H, W]`.
    pub recon: Tensor,
    /// Per-image scores.
    pub scores: Vec<ImageScores>,
    /// Seconds spent (training included, unless cached shadows were loaded).
    pub seconds: f64,
}

fn outcome(
    target: &Target,
    recon_norm: &Tensor,
    originals: &Tensor,
    t0: std::time::Instant,
) -> Result<AttackOutcome> {
    let recon = target.to_pixels(recon_norm)?;
    let scores = metrics::score(&recon, originals)?;
    Ok(AttackOutcome {
        recon,
        scores,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Rows `range` of an `[N, ...]` tensor, as a new CPU tensor.
fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor> {
    let n = t.shape().dim(0)?;
    let per = t.numel() / n.max(1);
    let v = t.to_vec()?;
    let part = v
        .get(range.start * per..range.end * per)
        .ok_or_else(|| Error::invalid("rows", format!("rows {range:?} of {n}")))?;
    let mut dims = t.dims().to_vec();
    dims[0] = range.len();
    Tensor::from_slice(part, dims)
}

/// `[N_i, ...]` tensors stacked along the first axis, on the CPU.
fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    let mut data = Vec::new();
    let mut n = 0;
    for p in parts {
        data.extend(p.to_vec()?);
        n += p.shape().dim(0)?;
    }
    let mut dims = parts
        .first()
        .map(|p| p.dims().to_vec())
        .ok_or_else(|| Error::invalid("cat_rows", "nothing to stack"))?;
    dims[0] = n;
    Tensor::from_vec(data, dims)
}

/// How many images one attack batch may hold on the GPU, or `None` when
/// the whole batch is run at once (on the CPU, or when it fits).
///
/// The need per image is *measured*: `probe` runs one iteration of the
/// attack on the first image of `v` (the observed features) with the pool's
/// peak counter reset, minus what was in use before. That counts exactly
/// what the attack allocates (activations kept for backward, their
/// gradients, the optimizer state, size-class rounding) with no model of
/// the layers to keep in sync; the activations, and so the need, grow
/// linearly with the batch. 10% is kept in reserve for the per-launch
/// scratch (partial sums) that does not scale with the batch. The room is
/// the budget (`--gpu-mem`), else the device's free memory.
fn gpu_chunk(
    v: &Tensor,
    what: &str,
    probe: &mut dyn FnMut(&Tensor) -> Result<()>,
) -> Result<Option<usize>> {
    let crate::Device::Cuda(ord) = v.device() else {
        return Ok(None);
    };
    let n = v.shape().dim(0)?;
    let dev = crate::cuda::device(ord)?;
    let base = dev.memory_stats();
    let room = match base.budget {
        Some(b) => b.saturating_sub(base.in_use),
        None => dev.mem_info()?.0 + base.cached,
    };
    let one = rows(v, 0..1)?.to_device(v.device())?;
    dev.reset_peak();
    probe(&one)
        .map_err(|e| Error::Msg(format!("{what}: one image does not fit on the GPU: {e}")))?;
    dev.synchronize()?;
    let need = dev
        .memory_stats()
        .peak_in_use
        .saturating_sub(base.in_use)
        .max(1);
    // The command's own peak (reported at its end) is kept.
    dev.merge_peak(&base);
    let per_image = need + need / 10;
    let fit = room / per_image;
    if fit == 0 {
        return Err(Error::Cuda(format!(
            "{what}: one image needs about {} of GPU memory (measured), but only {} is \
             free under the budget {}; raise --gpu-mem",
            crate::cuda::format_bytes(per_image),
            crate::cuda::format_bytes(room),
            base.budget
                .map_or("(none: device memory)".into(), crate::cuda::format_bytes)
        )));
    }
    if fit >= n {
        return Ok(None);
    }
    eprintln!(
        "{what}: {n} images need about {} of GPU memory, {} is free: attacking {fit} at a time",
        crate::cuda::format_bytes(per_image * n),
        crate::cuda::format_bytes(room)
    );
    Ok(Some(fit))
}

/// `f` applied to `v` whole (`chunk` = `None`), or to consecutive chunks of
/// `chunk` rows on `v`'s device, the results stacked in order.
fn map_chunks(
    v: &Tensor,
    chunk: Option<usize>,
    f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let Some(chunk) = chunk else {
        return f(v);
    };
    let n = v.shape().dim(0)?;
    let mut parts = Vec::new();
    for start in (0..n).step_by(chunk.max(1)) {
        let part = rows(v, start..(start + chunk).min(n))?.to_device(v.device())?;
        parts.push(f(&part)?);
    }
    cat_rows(&parts)
}

/// [`gpu_chunk`] for the white-box attack on `f1`.
fn whitebox_chunk(
    f1: &Sequential,
    v: &Tensor,
    target: &Target,
    cfg: &WhiteBoxConfig,
) -> Result<Option<usize>> {
    let probe = WhiteBoxConfig {
        iterations: 1,
        ..cfg.clone()
    };
    gpu_chunk(v, "white-box", &mut |one| {
        whitebox::invert(f1, one, target.chw(), &target.norm, &probe, &mut |_| Ok(())).map(|_| ())
    })
}

/// White-box attack on `originals` (pixels) at `split`. On a GPU, a batch
/// that does not fit the memory budget is attacked in chunks that do (each
/// chunk is an independent attack: the loss is a mean per chunk, and the
/// images do not interact, so only the effective step size per image can
/// differ slightly from one big batch with a mean loss).
pub fn run_whitebox(
    target: &Target,
    split: &str,
    originals: &Tensor,
    cfg: &WhiteBoxConfig,
    frames: Option<(&mut Vec<Tensor>, usize)>,
) -> Result<AttackOutcome> {
    let t0 = std::time::Instant::now();
    let v = target.observe(split, originals)?;
    let (f1, _) = target.net.split(split)?;
    if let Some(chunk) = whitebox_chunk(&f1, &v, target, cfg)? {
        let n = originals.shape().dim(0)?;
        let mut recons = Vec::new();
        let mut chunk_frames: Vec<Vec<Tensor>> = Vec::new();
        let every = frames.as_ref().map(|(_, e)| *e);
        for start in (0..n).step_by(chunk) {
            let part = rows(originals, start..(start + chunk).min(n))?;
            let mut fr = Vec::new();
            let o = run_whitebox(target, split, &part, cfg, every.map(|e| (&mut fr, e)))?;
            recons.push(o.recon);
            chunk_frames.push(fr);
        }
        if let Some((out, _)) = frames {
            let count = chunk_frames.iter().map(Vec::len).min().unwrap_or(0);
            for i in 0..count {
                let parts: Vec<Tensor> = chunk_frames
                    .iter()
                    .filter_map(|f| f.get(i).cloned())
                    .collect();
                out.push(cat_rows(&parts)?);
            }
        }
        // The chunks' reconstructions are pixels already.
        let recon = cat_rows(&recons)?;
        let scores = metrics::score(&recon, originals)?;
        return Ok(AttackOutcome {
            recon,
            scores,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let pb = crate::train::progress_bar(cfg.iterations as u64, true, &format!("white-box {split}"));
    let mut frames = frames;
    let recon = whitebox::invert(&f1, &v, target.chw(), &target.norm, cfg, &mut |p| {
        if let Some(loss) = p.loss {
            pb.set_position(p.iteration as u64);
            pb.set_message(format!("loss {loss:.3e}"));
        }
        if let Some((f, every)) = frames.as_mut() {
            if p.iteration % (*every).max(1) == 0 || p.iteration == 1 {
                f.push(target.to_pixels(&p.x.detach())?);
            }
        }
        Ok(())
    })?;
    crate::train::finish_bar(&pb);
    outcome(target, &recon, originals, t0)
}

/// Black-box attack: trains an inverse network on `attacker` images
/// (pixels; ignored for the random setting, which draws Gaussian noise in
/// normalised space) through the query-only oracle, then inverts. `noise`,
/// when given, replaces the random setting's default noise
/// ([`NoiseModel::for_random_setting`]).
#[allow(clippy::too_many_arguments)]
pub fn run_blackbox(
    target: &Target,
    split: &str,
    setting: DataSetting,
    attacker: &Dataset,
    originals: &Tensor,
    cfg: &TrainConfig,
    random_n: usize,
    noise: Option<NoiseModel>,
) -> Result<AttackOutcome> {
    let t0 = std::time::Instant::now();
    let (f1, _) = target.net.split(split)?;
    let oracle = ClientOracle::new(f1);
    let [c, h, w] = target.chw();
    let dev = target.net.device();
    let probe = Tensor::zeros_on([1, c, h, w], dev)?;
    let feat = no_grad(|| blackbox::QueryOracle::query(&oracle, &probe))?;
    let mut g = decoders::decoder_for(split, &feat.dims()[1..], [c, h, w], cfg.seed ^ 0xdec0)?;
    g.to_device(dev)?;
    let norm = target.norm.clone();
    let n = if setting.is_noise() {
        random_n
    } else {
        attacker.len()
    };
    let v = target.observe(split, originals)?;
    let noise = match (setting, noise) {
        (DataSetting::Random, Some(m)) => {
            eprintln!("   black-box random: noise given: {m}");
            m
        }
        (DataSetting::Random, None) => {
            let mut rng = <TrainRng as rand::SeedableRng>::seed_from_u64(cfg.seed ^ 0x0153);
            let (m, d) = NoiseModel::for_random_setting(&oracle, &v, [c, h, w], &norm, &mut rng)?;
            match d {
                Some(d) => eprintln!(
                    "   black-box random: noise calibrated to the observed features: pixel mean {:.1}, spread {}, texture {} (distance {d:.3})",
                    m.mean, m.spread, m.texture
                ),
                None => eprintln!(
                    "   black-box random: noise with the statistics of natural colour photos: {m} (mean, spread, texture, shared colour variance)"
                ),
            }
            m
        }
        _ => NoiseModel::paper(&norm),
    };
    // No augmentation here, unlike the shadows: the resampled, slightly
    // blurred copies teach the decoder the wrong image statistics (MNIST
    // conv1 same-dist: 39.5 dB plain, 36.4 dB with jitter).
    let mut images = |idx: &[usize], rng: &mut TrainRng| -> Result<Tensor> {
        if setting.is_noise() {
            norm.normalize(&noise.sample(idx.len(), [c, h, w], rng)?)?
                .to_device(dev)
        } else {
            Ok(prepare_batch(attacker, idx, &norm, None)?.0)
        }
    };
    if linear_inverse::is_linear(&g) {
        // A one-convolution decoder is linear: solve its least-squares
        // training problem exactly instead of descending towards it.
        let n = n.min(EXACT_FIT_IMAGES);
        let mut rng = <TrainRng as rand::SeedableRng>::seed_from_u64(cfg.seed ^ 0x1f17);
        let fit = linear_inverse::fit_exact(&oracle, &g, n, &mut images, &mut rng)?;
        eprintln!(
            "   black-box: linear inverse network solved exactly by least squares on {n} images (training MSE {:.3e}, ridge {:.0e} of the mean diagonal)",
            fit.mse, fit.ridge
        );
    } else {
        blackbox::train_inverse(&oracle, &mut g, n, &mut images, cfg)?;
    }
    // On a GPU, more images than the budget holds are decoded in chunks.
    let chunk = gpu_chunk(&v, "black-box", &mut |one| {
        blackbox::reconstruct(&g, one).map(|_| ())
    })?;
    let recon = map_chunks(&v, chunk, &mut |part| blackbox::reconstruct(&g, part))?;
    outcome(target, &recon, originals, t0)
}

/// Attacker images the exact fit of a linear inverse network sums its
/// normal equations over: the MNIST conv1 decoder has 201 unknowns, and 10k
/// images give 7.8M equations (more changes the result by < 0.05 dB).
pub const EXACT_FIT_IMAGES: usize = 10_000;

/// Whether the query-free attack compares shadow and observed features
/// after f2's leading ReLU (when f2 starts with one) rather than before it.
/// After, except for a `linear_shadow` (no non-linearity, as the same-net
/// shadow of a first conv) of the CIFAR CNN. A linear map that agrees with
/// f1 on the positive part of the features of natural images — all that
/// cross-entropy training through the ReLU can teach it — agrees
/// everywhere, so the negative part carries information too (dark regions,
/// which the ReLU hides). conv11 same-set-same-net, the same
/// 200k-presentation shadow: after the ReLU 22.88 dB / SSIM 0.893, before
/// it 23.95 / 0.911. The different-structure conv11 shadow has a ReLU
/// inside and no such guarantee: after 15.95 / 0.513, before 14.35 /
/// 0.342. Not on LeNet either: digits
/// are mostly flat black and pin the shadow down along few directions;
/// before the ReLU the background picks up faint grey patches near the
/// borders, which the paper's SSIM (data range from the reconstruction)
/// punishes (conv1 diff-set-same-net: after 22.82 dB / SSIM 0.913,
/// before 22.70 / 0.869, though standard SSIM 0.933 → 0.968).
pub fn queryfree_matches_after_relu(kind: ModelKind, linear_shadow: bool) -> bool {
    !(kind == ModelKind::Cifar10Cnn && linear_shadow)
}

/// Whether a layer is an affine map of its input (no activation, pooling
/// or dropout).
fn is_linear_layer(layer: &crate::nn::Layer) -> bool {
    use crate::nn::Layer;
    matches!(
        layer,
        Layer::Conv2d { .. }
            | Layer::ConvTranspose2d { .. }
            | Layer::Linear { .. }
            | Layer::Flatten
    )
}

/// Whether the query-free attack rescales each shadow's feature channels to
/// the observed features' size (`shadow_scale`, below): on CIFAR10CNN,
/// unless the shadow is linear (the same-net shadow of conv11, which the
/// rescaling costs 0.9 dB: 23.95 → 23.00 dB). A shadow trained through f2
/// only by cross-entropy is free to give its features another size than
/// f1's (larger features make larger logits and a lower loss); the sizes
/// were not measured, but the symptom fits:
/// inverting a deep CIFAR shadow drove every image to the same input,
/// as if the observed features were far smaller than anything the shadow
/// produces on images, and the rescaling removed it. ReLU22 same-set, one
/// shadow, 50k presentations: all ten reconstructions one identical green
/// pattern, whatever the priors (9.33 dB / SSIM 0.046 with the default TV 3
/// and L2 0.3, the same with TV 0.01 and no L2); rescaled, 12.24 / 0.021
/// (standard SSIM 0.058 → 0.125), and with TV 0.01 and no L2 the
/// reconstructions differ per image (9.59 / 0.084). Still short of the
/// paper's 12.74 / 0.175. The different-structure conv11 shadow (a ReLU
/// inside) has the same problem in a milder form: its feature statistics
/// are 2.53 from the observed ones (the same-net shadow's: 0.64), and
/// rescaled 0.36; conv11 same-set-diff-net, 1500 inversion steps: 15.95 dB
/// / SSIM 0.513 as it is, 17.22 / 0.695 rescaled. LeNet's shadows are left
/// as they are.
pub fn queryfree_matches_scale(kind: ModelKind, linear_shadow: bool) -> bool {
    kind == ModelKind::Cifar10Cnn && !linear_shadow
}

/// Root mean square of each channel of `[N, C, ...]` features (RMS² =
/// mean² + spread²).
fn channel_rms(t: &Tensor) -> Result<Vec<f64>> {
    Ok(crate::attacks::noise::channel_stats(t)?
        .iter()
        .map(|(m, s)| (m * m + s * s).sqrt())
        .collect())
}

/// A shadow's features on the attacker's own images (the first 256), on
/// `device`: what the attacker compares with the observed features.
fn shadow_features_on_data(
    shadow: &Sequential,
    data: &Dataset,
    norm: &Normalization,
    device: crate::Device,
) -> Result<Tensor> {
    let idx: Vec<usize> = (0..data.len().min(256)).collect();
    let (x, _) = prepare_batch(data, &idx, norm, None)?;
    no_grad(|| shadow.forward(&x.to_device(device)?))
}

/// Per-channel factors that give `ours` — the shadow's features on the
/// attacker's data ([`shadow_features_on_data`]) — the RMS of the observed
/// features: the attacker sees both, and nothing else about f1's scale.
fn shadow_scale(ours: &Tensor, observed: &Tensor) -> Result<Vec<f32>> {
    let ours = channel_rms(ours)?;
    let want = channel_rms(observed)?;
    if ours.len() != want.len() {
        return Err(Error::invalid(
            "query-free",
            format!(
                "the shadow has {} feature channels, the observed features {}",
                ours.len(),
                want.len()
            ),
        ));
    }
    Ok(ours
        .iter()
        .zip(&want)
        // A channel the shadow never uses stays as it is.
        .map(|(&o, &w)| if o > 1e-12 { (w / o) as f32 } else { 1.0 })
        .collect())
}

/// A 1×1 convolution multiplying channel c by `scale[c]`.
fn channel_scale_layer(scale: &[f32], device: crate::Device) -> Result<crate::nn::Layer> {
    let c = scale.len();
    let mut w = vec![0f32; c * c];
    for (i, &s) in scale.iter().enumerate() {
        w[i * c + i] = s;
    }
    Ok(crate::nn::Layer::Conv2d {
        weight: Tensor::from_vec(w, [c, c, 1, 1])?.to_device(device)?,
        bias: None,
        params: ops::Conv2dParams::new(1, 0),
    })
}

/// Bump when a change to shadow training (initialisation, augmentation,
/// the training loop) makes shadows cached by an earlier build stale.
const SHADOW_CACHE_VERSION: u32 = 1;

/// The part of a cached shadow's key that is the same for every shadow of
/// one query-free run: model, split, setting, the attacker's data (every
/// pixel and label), the input normalisation and the frozen f2's weights.
fn shadow_cache_key(
    kind: ModelKind,
    split: &str,
    setting: ShadowSetting,
    data: &Dataset,
    norm: &Normalization,
    f2: &Sequential,
    moments: Option<&queryfree::FeatureMoments>,
) -> Result<Fnv64> {
    let mut h = Fnv64::default();
    h.write(format!("v{SHADOW_CACHE_VERSION}/{kind:?}/{split}/{setting}/").as_bytes());
    h.write(format!("{:?}/{:?}/", norm.mean, norm.std).as_bytes());
    h.write(
        format!(
            "{}x{}x{}x{}/",
            data.n, data.channels, data.height, data.width
        )
        .as_bytes(),
    );
    h.write_f32s(&data.images);
    for &l in &data.labels {
        h.write(&(l as u64).to_le_bytes());
    }
    for (name, t) in f2.named_params() {
        h.write(name.as_bytes());
        h.write_f32s(&t.to_vec()?);
    }
    // A shadow trained towards observed statistics depends on them (and so
    // on the attacked images); without, the key is what it always was.
    if let Some(m) = moments {
        h.write(b"moments/");
        h.write_f32s(&m.fingerprint()?);
    }
    Ok(h)
}

/// The file name shadow `k`, trained with `cfg`, is cached under: the run's
/// key ([`shadow_cache_key`]) with the training settings and `k` hashed in.
/// Anything else that decides the weights is code, covered by
/// [`SHADOW_CACHE_VERSION`]; a file whose layers don't fit the shadow is
/// refused when loaded.
fn shadow_cache_name(
    key: &Fnv64,
    kind: ModelKind,
    split: &str,
    setting: ShadowSetting,
    cfg: &TrainConfig,
    k: u64,
) -> Result<String> {
    let mut h = Fnv64(key.0);
    // The progress bar does not change the weights.
    let cfg = TrainConfig {
        progress: false,
        ..cfg.clone()
    };
    h.write(
        serde_json::to_string(&cfg)
            .map_err(|e| Error::invalid("shadow cache", e.to_string()))?
            .as_bytes(),
    );
    h.write(&k.to_le_bytes());
    Ok(format!(
        "shadow_{kind:?}_{split}_{setting}_{k}_{:016x}.safetensors",
        h.0
    ))
}

/// A shadow whose feature statistics are more than this many times as far
/// from the observed ones as the closest shadow's is left out. The distance
/// ([`noise::feature_stats_distance`](crate::attacks::noise::feature_stats_distance))
/// compares per-channel means and spreads of the shadow's features on the
/// attacker's own images with the observed features: both are features of
/// images from the same distribution, so a shadow faithful to f1 is close.
pub const SHADOW_OUTLIER_RATIO: f64 = 2.0;

/// Drops the shadows that learnt features unlike f1's (see
/// [`SHADOW_OUTLIER_RATIO`]); the closest one always stays. One bad shadow
/// spoils the joint inversion: LeNet conv1 same-set-diff-net, distances
/// 0.52, 0.57 and 1.83; with the first-conv priors of that day (TV 0.1, L2
/// 0.1) all three inverted together gave 16.97 dB / SSIM 0.613, the first
/// two 22.46 / 0.885 (22.12 / 0.881 with today's TV 0.05, L2 0.15). In the
/// other three conv1 settings the
/// distances stay within 1.6× of each other and every shadow is kept.
fn keep_faithful_shadows(nets: Vec<(Sequential, f64)>) -> Vec<Sequential> {
    let best = nets.iter().map(|n| n.1).fold(f64::INFINITY, f64::min);
    nets.into_iter()
        .enumerate()
        .filter_map(|(k, (net, d))| {
            let keep = d <= SHADOW_OUTLIER_RATIO * best || !best.is_finite();
            eprintln!(
                "   query-free: shadow {k}: feature-statistics distance {d:.3}{}",
                if keep { "" } else { " — left out" }
            );
            keep.then_some(net)
        })
        .collect()
}

/// Runs `prepare(k)` for every shadow `k` and returns the results in order.
///
/// On the CPU the shadows train side by side, each on its own thread pool
/// with an equal share of the threads. A small net's training step is a
/// chain of kernels too short to keep two cores busy: LeNet's shadows, one
/// after the other on the shared pool, used 1.45 of 2 cores; side by side,
/// one thread each, 1.9 (MNIST conv1 diff-set-same-net: 43.4 s → 29.6 s).
/// A kernel's split of its work, and so the rounding of its sums, depends on
/// the threads it has; with a fixed share per shadow a run is as
/// reproducible as before (on a 2-core machine every LeNet shadow now trains
/// single-threaded, whatever else is running).
/// On a GPU the shadows train one after the other on the device's stream.
fn for_each_shadow<T: Send>(
    n: usize,
    device: crate::Device,
    prepare: &(dyn Fn(u64) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    if n <= 1 || device != crate::Device::Cpu {
        return (0..n as u64).map(prepare).collect();
    }
    let share = (crate::cpu::threads::num_threads() / n).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n as u64)
            .map(|k| {
                scope.spawn(move || -> Result<T> {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(share)
                        .build()
                        .map_err(|e| {
                            Error::invalid("threads", format!("a shadow's thread pool: {e}"))
                        })?;
                    pool.install(|| prepare(k))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::invalid(
                        "query-free",
                        "a shadow's training thread panicked",
                    ))
                })
            })
            .collect()
    })
}

/// Query-free attack: trains `n_shadows` shadow nets f1' (seeds differ)
/// through the frozen f2 on `shadow_data`, leaves out those whose features
/// look unlike the observed ones (see `SHADOW_OUTLIER_RATIO`), then runs
/// the white-box attack on the rest at once ([`whitebox::invert_ensemble`];
/// one shadow is the paper's attack). With `shadow_cache`, trained shadows are kept in
/// that folder and reused by later runs with the same settings. A
/// `matching` with a weight above 0 adds [`queryfree::FeatureMoments`] of
/// the observed features to each shadow's training loss.
#[allow(clippy::too_many_arguments)]
pub fn run_queryfree(
    target: &Target,
    split: &str,
    setting: ShadowSetting,
    shadow_data: &Dataset,
    originals: &Tensor,
    train_cfg: &TrainConfig,
    wb: &WhiteBoxConfig,
    n_shadows: usize,
    matching: queryfree::MomentMatching,
    shadow_cache: Option<&Path>,
) -> Result<AttackOutcome> {
    if n_shadows == 0 {
        return Err(Error::invalid(
            "query-free",
            "the number of shadow networks must be at least 1, got 0",
        ));
    }
    let t0 = std::time::Instant::now();
    let (_, f2) = target.net.split(split)?;
    let v = target.observe(split, originals)?;
    let norm = target.norm.clone();
    // The shadow was trained only through f2, so it is faithful only in
    // what f2 sees: where f2 starts with a ReLU (a pre-activation split such
    // as conv1), the negative part of its features is unconstrained.
    // Matching after that ReLU — on both sides — fits the shadow where it
    // agrees with f1 and leaves alone where it cannot (but see
    // `queryfree_matches_after_relu` for where that is not the default).
    let linear_shadow = shadows::shadow_for(target.kind, split, setting.same_net, 0)?
        .layers()
        .iter()
        .all(|(_, layer)| is_linear_layer(layer));
    let relus = if queryfree_matches_after_relu(target.kind, linear_shadow) {
        leading_relus(&f2)
    } else {
        Vec::new()
    };
    // The shadow's own output is what f1's is compared with: before any
    // ReLU added for matching.
    let moments = matching.moments(&v)?;
    let mut observed = v;
    for (_, layer) in &relus {
        observed = layer.forward(&observed, None)?;
    }
    // The attacker's labelled set may be small (the same-distribution
    // setting has 10k MNIST images against the target's 60k); jittering it
    // stops the shadow from fitting f2 only on those exact images.
    let aug = attacker_augment(shadow_data.channels);
    let cache_key = match shadow_cache {
        Some(_) => Some(shadow_cache_key(
            target.kind,
            split,
            setting,
            shadow_data,
            &norm,
            &f2,
            moments.as_ref(),
        )?),
        None => None,
    };
    let scale_features = queryfree_matches_scale(target.kind, linear_shadow);
    let prepare = |k: u64| -> Result<(Sequential, f64)> {
        let seed = train_cfg.seed ^ 0x5bad ^ k.wrapping_mul(0x9e37_79b9);
        let mut shadow = shadows::shadow_for(target.kind, split, setting.same_net, seed)?;
        let cfg = TrainConfig {
            seed: train_cfg.seed.wrapping_add(k),
            ..train_cfg.clone()
        };
        let cached = match (shadow_cache, &cache_key) {
            (Some(dir), Some(key)) => Some(dir.join(shadow_cache_name(
                key,
                target.kind,
                split,
                setting,
                &cfg,
                k,
            )?)),
            _ => None,
        };
        match &cached {
            Some(file) if file.exists() => {
                crate::nn::weights::load(&mut shadow, file)?;
                shadow.to_device(target.net.device())?;
                eprintln!("   query-free: shadow {k} loaded from {}", file.display());
            }
            _ => {
                if let Some(file) = &cached {
                    eprintln!(
                        "   query-free: shadow {k} not in the cache; training it for {}",
                        file.display()
                    );
                }
                shadow.to_device(target.net.device())?;
                let mut batch = |idx: &[usize], rng: &mut TrainRng| {
                    prepare_batch(shadow_data, idx, &norm, Some((&aug, rng)))
                };
                queryfree::train_shadow(
                    &mut shadow,
                    &f2,
                    shadow_data.len(),
                    &mut batch,
                    &cfg,
                    moments.as_ref(),
                )?;
                if let Some(file) = &cached {
                    // (An atomic write that creates the folder.)
                    crate::nn::weights::save(&shadow, file, None)?;
                    eprintln!("   query-free: shadow {k} saved to {}", file.display());
                }
            }
        }
        for (name, layer) in &relus {
            shadow.push(name.clone(), layer.clone())?;
        }
        // The shadow's features on the attacker's own images, computed once:
        // they set the scale, and (scaled) tell how far the shadow is from
        // the observed features (`SHADOW_OUTLIER_RATIO`).
        let mut features = shadow_features_on_data(&shadow, shadow_data, &norm, observed.device())?;
        if scale_features && observed.dims().len() == 4 {
            let scale = shadow_scale(&features, &observed)?;
            let layer = channel_scale_layer(&scale, observed.device())?;
            features = no_grad(|| layer.forward(&features, None))?;
            shadow.push("feature scale", layer)?;
        }
        let d = crate::attacks::noise::feature_stats_distance(&features, &observed)?;
        Ok((shadow, d))
    };
    let nets = for_each_shadow(n_shadows, target.net.device(), &prepare)?;
    let nets = keep_faithful_shadows(nets);
    // The attacker holds data from the target's distribution: an L2 prior
    // without an explicit centre pulls towards that data's median image.
    let mut wb = wb.clone();
    if wb.lambda_l2 > 0.0 && wb.l2_center.is_none() {
        // The median, not the mean: the mean of digits is a grey blur
        // that the pull turns into haze; the median is the background
        // (MNIST diff-set-same-net conv1: 22.04 dB / SSIM 0.887 with the
        // mean, 22.58 / 0.905 with the median).
        wb.l2_center = Some(shadow_data.median_image());
    }
    let refs: Vec<&Sequential> = nets.iter().collect();
    let invert = |observed: &Tensor| -> Result<Tensor> {
        let pb =
            crate::train::progress_bar(wb.iterations as u64, true, &format!("query-free {split}"));
        let recon =
            whitebox::invert_ensemble(&refs, observed, target.chw(), &norm, &wb, &mut |p| {
                if p.iteration % 50 == 0 {
                    pb.set_position(p.iteration as u64);
                }
                Ok(())
            })?;
        crate::train::finish_bar(&pb);
        Ok(recon)
    };
    // On a GPU, more images than the budget holds are inverted in chunks
    // (the shadows are trained once and shared).
    let probe = WhiteBoxConfig {
        iterations: 1,
        ..wb.clone()
    };
    let chunk = gpu_chunk(&observed, "query-free", &mut |one| {
        whitebox::invert_ensemble(&refs, one, target.chw(), &norm, &probe, &mut |_| Ok(()))
            .map(|_| ())
    })?;
    let recon = map_chunks(&observed, chunk, &mut |part| invert(part))?;
    outcome(target, &recon, originals, t0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights that overflow the outputs (finite, so they load) make
    /// `evaluate` fail naming the image, not count argmaxes of infinities.
    #[test]
    fn an_accuracy_over_non_finite_outputs_is_refused() {
        let net = ModelKind::Lenet.build(0).unwrap();
        let ds = crate::data::synthetic_digits(8, 1);
        let norm = Target::new(ModelKind::Lenet, net.clone()).norm;
        let acc = evaluate(&net, &ds, &norm, 4).unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let (_, w) = &net.named_params()[0];
        w.assign(&Tensor::full(w.dims().to_vec(), 3e38)).unwrap();
        let e = evaluate(&net, &ds, &norm, 4).unwrap_err().to_string();
        assert!(
            e.contains("the net's output") && e.contains("for image 0 of synthetic-digits"),
            "{e}"
        );
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn shadow_cache_key_changes_with_the_moments_asked_for_and_only_then() {
        use rand::SeedableRng;
        let net = ModelKind::Lenet.build(1).unwrap();
        let (_, f2) = net.split("conv1").unwrap();
        let data = Dataset {
            images: vec![0.25; 2 * 28 * 28],
            labels: vec![0, 1],
            n: 2,
            channels: 1,
            height: 28,
            width: 28,
            classes: vec!["a".into(), "b".into()],
            source: "test".into(),
        };
        let norm = Normalization::new(&[0.5], &[0.5]);
        let setting: ShadowSetting = "diff-set-same-net".parse().unwrap();
        let key = |m: Option<&queryfree::FeatureMoments>| {
            shadow_cache_key(ModelKind::Lenet, "conv1", setting, &data, &norm, &f2, m)
                .unwrap()
                .0
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let obs = Tensor::rand_uniform([2, 8, 24, 24], -1.0, 1.0, &mut rng);
        let other = Tensor::rand_uniform([2, 8, 24, 24], -1.0, 1.0, &mut rng);
        let m1 = queryfree::FeatureMoments::new(&obs, 1.0).unwrap();
        let m2 = queryfree::FeatureMoments::new(&other, 1.0).unwrap();
        let m3 = queryfree::FeatureMoments::new(&obs, 0.5).unwrap();
        // Without moments nothing is added to the key, so caches written
        // before the moment loss existed still load.
        assert_eq!(key(None), key(None));
        let keys = [key(None), key(Some(&m1)), key(Some(&m2)), key(Some(&m3))];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "keys {i} and {j}");
            }
        }
        assert_eq!(key(Some(&m1)), keys[1]);
        // The last bits of the statistics (summation order: threads, GPU
        // blocks) do not change the key: the same observation scaled by
        // 1 + 1e-7 (a rounding-level change) keeps it.
        let nudged = crate::ops::scale(&obs, 1.0 + 1e-7).unwrap();
        let m1b = queryfree::FeatureMoments::new(&nudged, 1.0).unwrap();
        assert_eq!(key(Some(&m1b)), keys[1]);
    }

    #[test]
    fn channel_scaling_gives_the_wanted_rms() {
        // [2, 3, 1, 2]: channel c of image n holds (n+1)·(c+1)·[1, -1].
        let mut v = Vec::new();
        for n in 0..2 {
            for c in 0..3 {
                let a = ((n + 1) * (c + 1)) as f32;
                v.extend([a, -a]);
            }
        }
        let t = Tensor::from_vec(v, [2, 3, 1, 2]).unwrap();
        let rms = channel_rms(&t).unwrap();
        for (c, r) in rms.iter().enumerate() {
            // mean of a² over n = 1, 2: (c+1)²·(1 + 4)/2.
            let want = ((c + 1) as f64) * 2.5f64.sqrt();
            assert!((r - want).abs() < 1e-9, "channel {c}: {r} vs {want}");
        }
        let layer = channel_scale_layer(&[2.0, 0.5, 0.0], crate::Device::Cpu).unwrap();
        let y = layer.forward(&t, None).unwrap();
        let got = channel_rms(&y).unwrap();
        for (c, s) in [2.0, 0.5, 0.0].iter().enumerate() {
            assert!((got[c] - s * rms[c]).abs() < 1e-6, "channel {c}");
        }
        assert_eq!(y.dims(), t.dims());
    }

    #[test]
    fn query_free_matching_side_and_scaling_per_split() {
        use ModelKind::{Cifar10Cnn, Lenet};
        let linear = |kind, split, same_net| {
            shadows::shadow_for(kind, split, same_net, 0)
                .unwrap()
                .layers()
                .iter()
                .all(|(_, l)| is_linear_layer(l))
        };
        assert!(linear(Cifar10Cnn, "conv11", true));
        assert!(!linear(Cifar10Cnn, "conv11", false));
        assert!(!linear(Cifar10Cnn, "conv12", true));
        assert!(linear(Lenet, "conv1", true));
        assert!(!queryfree_matches_after_relu(Cifar10Cnn, true));
        assert!(queryfree_matches_after_relu(Cifar10Cnn, false));
        assert!(queryfree_matches_after_relu(Lenet, true));
        assert!(!queryfree_matches_scale(Cifar10Cnn, true));
        assert!(queryfree_matches_scale(Cifar10Cnn, false));
        assert!(!queryfree_matches_scale(Lenet, false));
    }

    #[test]
    fn shadows_far_from_the_observed_statistics_are_left_out() {
        let tagged = |k: usize| {
            let mut net = Sequential::new();
            for i in 0..k {
                net.push(format!("r{i}"), crate::nn::Layer::Relu).unwrap();
            }
            net
        };
        let kept = |ds: &[f64]| -> Vec<usize> {
            let nets = ds
                .iter()
                .enumerate()
                .map(|(k, &d)| (tagged(k), d))
                .collect();
            keep_faithful_shadows(nets)
                .iter()
                .map(|n| n.layers().len())
                .collect()
        };
        assert_eq!(kept(&[0.52, 0.57, 1.83]), vec![0, 1]);
        assert_eq!(kept(&[0.53, 0.60, 0.81]), vec![0, 1, 2]);
        assert_eq!(kept(&[2.0, 0.9]), vec![1]);
        assert_eq!(kept(&[0.4, f64::NAN]), vec![0]);
        assert_eq!(kept(&[f64::NAN]), vec![0], "the only shadow always stays");
    }

    #[test]
    fn shadows_side_by_side_come_back_in_order_with_a_share_of_the_threads() {
        let share = (crate::cpu::threads::num_threads() / 3).max(1);
        let got = for_each_shadow(3, crate::Device::Cpu, &|k| {
            // Later shadows finish first: the order must not follow.
            std::thread::sleep(std::time::Duration::from_millis(30 * (3 - k)));
            Ok((k, rayon::current_num_threads()))
        })
        .unwrap();
        assert_eq!(got, vec![(0, share), (1, share), (2, share)]);
        // One shadow keeps the whole pool.
        let one = for_each_shadow(1, crate::Device::Cpu, &|_| Ok(rayon::current_num_threads()));
        assert_eq!(one.unwrap(), vec![crate::cpu::threads::num_threads()]);
        // A failing shadow fails the whole run, with its own error.
        let err = for_each_shadow(2, crate::Device::Cpu, &|k| {
            if k == 1 {
                Err(Error::invalid("shadow", "shadow 1 failed"))
            } else {
                Ok(k)
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("shadow 1 failed"), "{err}");
    }

    #[test]
    fn chunked_application_equals_the_whole() {
        // 7 rows of 3 values in chunks of 3: sizes 3, 3, 1, stacked in order.
        let data: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let v = Tensor::from_vec(data.clone(), [7, 3]).unwrap();
        let mut calls = Vec::new();
        let mut double = |t: &Tensor| {
            calls.push(t.shape().dim(0).unwrap());
            ops::scale(t, 2.0)
        };
        let whole = map_chunks(&v, None, &mut double).unwrap();
        let chunked = map_chunks(&v, Some(3), &mut double).unwrap();
        assert_eq!(calls, vec![7, 3, 3, 1]);
        assert_eq!(chunked.dims(), &[7, 3]);
        assert_eq!(chunked.to_vec().unwrap(), whole.to_vec().unwrap());
        let want: Vec<f32> = data.iter().map(|x| 2.0 * x).collect();
        assert_eq!(whole.to_vec().unwrap(), want);
    }
}
