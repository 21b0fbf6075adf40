//! The query-free attack (the paper's Algorithm 3): the attacker cannot
//! query f1 but has the server part f2. It trains a *shadow* f1' so that
//! f2(f1'(x)) classifies labelled data correctly with f2 frozen — which
//! forces f1' to produce features f2 understands, i.e. features like f1's —
//! and then runs the white-box attack on f1' against the observed v.

use crate::error::{Error, Result};
use crate::nn::Sequential;
use crate::ops;
use crate::tensor::Tensor;
use crate::train::{fit, BatchFn, EpochStats, TrainConfig};

/// Which data and structure the shadow uses (the paper's four settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowSetting {
    /// Trained on the target's own training set (else a disjoint set).
    pub same_set: bool,
    /// Same architecture as f1 (else the paper's alternative structure).
    pub same_net: bool,
}

impl std::str::FromStr for ShadowSetting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "same-set-same-net" => Ok(ShadowSetting {
                same_set: true,
                same_net: true,
            }),
            "diff-set-same-net" => Ok(ShadowSetting {
                same_set: false,
                same_net: true,
            }),
            "same-set-diff-net" => Ok(ShadowSetting {
                same_set: true,
                same_net: false,
            }),
            "diff-set-diff-net" => Ok(ShadowSetting {
                same_set: false,
                same_net: false,
            }),
            _ => Err(Error::UnknownName {
                kind: "query-free setting",
                name: s.into(),
                expected:
                    "same-set-same-net, diff-set-same-net, same-set-diff-net, diff-set-diff-net"
                        .into(),
            }),
        }
    }
}

impl std::fmt::Display for ShadowSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-set-{}-net",
            if self.same_set { "same" } else { "diff" },
            if self.same_net { "same" } else { "diff" }
        )
    }
}

/// Trains `shadow` through the frozen `f2` with cross-entropy on labelled
/// images from `batch(indices)` (normalised images and labels).
pub fn train_shadow(
    shadow: &mut Sequential,
    f2: &Sequential,
    n: usize,
    batch: &mut BatchFn,
    cfg: &TrainConfig,
    moments: Option<&FeatureMoments>,
) -> Result<Vec<EpochStats>> {
    let mut f2 = f2.clone();
    f2.set_trainable(false);
    shadow.set_trainable(true);
    let s = shadow.clone();
    let mut step =
        |idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| -> Result<(Tensor, Option<Tensor>)> {
            let (x, labels) = batch(idx, rng)?;
            let features = s.forward_train(&x, rng)?;
            let logits = f2.forward(&features)?;
            let (mut loss, correct) = ops::cross_entropy_and_correct(&logits, &labels)?;
            if let Some(m) = moments {
                loss = ops::add(&loss, &m.loss(&features)?)?;
            }
            Ok((loss, Some(correct)))
        };
    let stats = fit(
        &shadow.named_params(),
        n,
        cfg,
        0,
        "shadow",
        &mut step,
        &mut |_| Ok(()),
    )?;
    shadow.set_trainable(false);
    Ok(stats)
}

/// What a shadow is asked to reproduce of the observed features' statistics
/// while it trains ([`FeatureMoments`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MomentMatching {
    /// λ: the weight of the moment loss next to the cross-entropy (0: off,
    /// the paper's shadow training).
    pub weight: f32,
    /// How many random channel mixtures are matched too
    /// ([`FeatureMoments::with_projections`]); `None`: two per channel of
    /// the observed features; `Some(0)`: none.
    pub projections: Option<usize>,
}

impl MomentMatching {
    /// No moment loss: the paper's shadow training.
    pub const OFF: MomentMatching = MomentMatching {
        weight: 0.0,
        projections: Some(0),
    };

    /// The loss for `observed`, or `None` when the weight is 0.
    pub fn moments(&self, observed: &Tensor) -> Result<Option<FeatureMoments>> {
        if self.weight == 0.0 {
            return Ok(None);
        }
        let channels = observed.dims().get(1).copied().unwrap_or(0);
        let k = self.projections.unwrap_or(2 * channels);
        let m = FeatureMoments::new(observed, self.weight)?;
        Ok(Some(m.with_projections(observed, k, PROJECTION_SEED)?))
    }
}

/// The most channel mixtures [`FeatureMoments::with_projections`] takes
/// (each costs a 1×1 convolution channel on every training batch).
pub const MAX_PROJECTIONS: usize = 4096;

/// Seed of the random channel mixtures: fixed, so the same observation
/// always asks for the same statistics (and finds its cached shadow).
const PROJECTION_SEED: u64 = 0x51ced;

/// Per-channel statistics of the observed features that a shadow is asked
/// to reproduce on the attacker's images while it trains.
///
/// Cross-entropy through f2 constrains a shadow only in what f2 passes on
/// to the logits; deep in the CIFAR CNN, f2 pools most of the spatial
/// detail away and the shadow's features drift from f1's. The observed
/// features are the one sample of f1's output the attacker holds: the
/// per-channel mean μ_c and spread σ_c over images and positions (as a
/// batch-norm layer keeps them) say how f1 uses each channel on natural
/// images. The extra loss is λ · mean_c[(m_c − μ_c)² + (s_c − σ_c)²] / u²,
/// where m_c, s_c are the shadow's statistics on the training batch and u
/// is the mean observed spread (one unit for all channels, so rarely
/// active channels do not dominate).
///
/// Per-channel statistics leave the correlations between channels free.
/// [`FeatureMoments::with_projections`] adds the same statistics of `k`
/// fixed random mixtures of the channels (a 1×1 convolution), which pin
/// the channel covariance along those directions as well.
pub struct FeatureMoments {
    mean: Tensor,
    spread: Tensor,
    /// λ as asked for; `weight` is λ/u².
    lambda: f32,
    weight: f32,
    projected: Option<ProjectedMoments>,
}

/// The statistics of the observed features along fixed random directions
/// in channel space.
struct ProjectedMoments {
    /// [k, c, 1, 1]: each row a unit vector over the channels.
    directions: Tensor,
    mean: Tensor,
    spread: Tensor,
    weight: f32,
}

impl FeatureMoments {
    /// The statistics of `observed` ([n, c, …]), weighted by `weight`.
    pub fn new(observed: &Tensor, weight: f32) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::invalid(
                "feature-moment weight",
                format!("must be finite and ≥ 0, got {weight}"),
            ));
        }
        let (mean, spread, unit) = observed_moments(observed)?;
        Ok(FeatureMoments {
            mean,
            spread,
            lambda: weight,
            weight: weight / (unit * unit) as f32,
            projected: None,
        })
    }

    /// Also matches the statistics of `k` random mixtures of the channels
    /// (unit vectors drawn from `seed`), weighted like the per-channel ones
    /// but in units of the mixtures' own mean spread. `k` = 0 removes them.
    pub fn with_projections(mut self, observed: &Tensor, k: usize, seed: u64) -> Result<Self> {
        if k == 0 {
            self.projected = None;
            return Ok(self);
        }
        if k > MAX_PROJECTIONS {
            return Err(Error::invalid(
                "feature-moment projections",
                format!("at most {MAX_PROJECTIONS} channel mixtures, got {k}"),
            ));
        }
        let c = observed.dims().get(1).copied().unwrap_or(0);
        if c == 0 {
            return Err(Error::invalid(
                "feature moments",
                format!("features of shape {:?} have no channels", observed.dims()),
            ));
        }
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let raw = Tensor::rand_normal([k, c], 0.0, 1.0, &mut rng).to_vec()?;
        let mut unit_rows = Vec::with_capacity(k * c);
        for row in raw.chunks(c) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            unit_rows.extend(row.iter().map(|v| v / norm));
        }
        let directions = Tensor::from_vec(unit_rows, [k, c, 1, 1])?.to_device(observed.device())?;
        let projected = crate::autograd::no_grad(|| project(&observed.detach(), &directions))?;
        let (mean, spread, unit) = observed_moments(&projected)?;
        // The mixtures get the same λ, in their own unit.
        self.projected = Some(ProjectedMoments {
            directions,
            mean,
            spread,
            weight: self.lambda / (unit * unit) as f32,
        });
        Ok(self)
    }

    /// The weight and the observed statistics, for a cache key, each
    /// rounded to four significant digits: the statistics are sums whose
    /// last bits depend on the summation order (CPU threads, GPU blocks, a
    /// change of kernel), and a shadow trained towards them does not.
    pub fn fingerprint(&self) -> Result<Vec<f32>> {
        let mut v = vec![self.weight];
        v.extend(self.mean.to_vec()?);
        v.extend(self.spread.to_vec()?);
        // Without mixtures the fingerprint is what it always was, so
        // caches written before they existed still load.
        if let Some(p) = &self.projected {
            v.push(p.weight);
            v.extend(p.mean.to_vec()?);
            v.extend(p.spread.to_vec()?);
        }
        Ok(v.into_iter().map(four_significant_digits).collect())
    }

    /// The weighted distance of `features`' statistics from the observed
    /// ones, differentiable in `features`.
    pub fn loss(&self, features: &Tensor) -> Result<Tensor> {
        let d = moment_distance(features, &self.mean, &self.spread, self.weight)?;
        match &self.projected {
            None => Ok(d),
            Some(p) => {
                let directions = p.directions.to_device(features.device())?;
                let mixed = project(features, &directions)?;
                ops::add(&d, &moment_distance(&mixed, &p.mean, &p.spread, p.weight)?)
            }
        }
    }
}

/// weight · (mean_c (m_c − mean_c)² + mean_c (s_c − spread_c)²) for the
/// statistics m, s of `features`.
fn moment_distance(
    features: &Tensor,
    mean: &Tensor,
    spread: &Tensor,
    weight: f32,
) -> Result<Tensor> {
    let (m, s) = channel_moments(features)?;
    let mean = mean.to_device(features.device())?;
    let spread = spread.to_device(features.device())?;
    let d = ops::add(
        &ops::mean(&ops::square(&ops::sub(&m, &mean)?)?)?,
        &ops::mean(&ops::square(&ops::sub(&s, &spread)?)?)?,
    )?;
    ops::scale(&d, weight)
}

/// The per-channel (mean, spread) of observed features and the mean spread
/// u they are measured in; an observation where nothing varies is refused.
fn observed_moments(observed: &Tensor) -> Result<(Tensor, Tensor, f64)> {
    let (mean, spread) = crate::autograd::no_grad(|| channel_moments(&observed.detach()))?;
    let unit = spread_unit(&spread.to_vec()?);
    if !(unit.is_finite() && unit > 0.0) {
        return Err(Error::invalid(
            "observed features",
            format!("no channel varies (mean spread {unit}); nothing to match"),
        ));
    }
    Ok((mean, spread, unit))
}

/// The mean of the spreads `s`, without the 1e-8 that keeps
/// [`channel_moments`]' square root differentiable.
fn spread_unit(s: &[f32]) -> f64 {
    s.iter()
        .map(|v| ((*v as f64).powi(2) - 1e-8).max(0.0).sqrt())
        .sum::<f64>()
        / s.len().max(1) as f64
}

/// The features mixed along `directions` ([k, c, 1, 1]): a 1×1 convolution
/// of [n, c, …] features, whose trailing dimensions are flattened into one
/// column; [n, k, …] out (flattened).
fn project(f: &Tensor, directions: &Tensor) -> Result<Tensor> {
    let dims = f.dims().to_vec();
    if dims.len() < 2 {
        return Err(Error::invalid(
            "feature moments",
            format!("features of shape {dims:?} have no channels"),
        ));
    }
    let inner: usize = dims[2..].iter().product();
    let x = f.reshape([dims[0], dims[1], inner, 1])?;
    ops::conv2d(&x, directions, None, ops::Conv2dParams::new(1, 0))
}

/// `v` rounded to four significant digits (through its decimal form, so
/// that the result does not depend on how `v` is computed downstream).
fn four_significant_digits(v: f32) -> f32 {
    format!("{v:.3e}").parse().unwrap_or(v)
}

/// (mean, spread) of each channel (dimension 1) of `f` over the batch and
/// any spatial positions, as two [1, c] tensors. Built from differentiable
/// ops: an average pool over the whole plane, then a [1, n] row of 1/n
/// times the [n, c] plane means; spread = √(E[f²] − E[f]² + 1e-8).
fn channel_moments(f: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = f.dims().to_vec();
    if dims.len() < 2 || dims[0] == 0 || dims[1] == 0 {
        return Err(Error::invalid(
            "feature moments",
            format!("features of shape {dims:?} have no channels"),
        ));
    }
    let (n, c) = (dims[0], dims[1]);
    // Any trailing dimensions are flattened into one tall "plane" and
    // averaged by one pooling window covering it.
    let inner: usize = dims[2..].iter().product();
    let plane_means = |t: &Tensor| -> Result<Tensor> {
        if inner == 1 {
            return t.reshape([n, c]);
        }
        let p = ops::Pool2dParams {
            kernel: [inner, 1],
            stride: [inner, 1],
            padding: [0, 0],
        };
        ops::avg_pool2d(&t.reshape([n, c, inner, 1])?, p)?.reshape([n, c])
    };
    let avg = Tensor::full_on([1, n], 1.0 / n as f32, f.device())?;
    let m = ops::matmul(&avg, &plane_means(f)?)?;
    let m2 = ops::matmul(&avg, &plane_means(&ops::square(f)?)?)?;
    let var = ops::relu(&ops::sub(&m2, &ops::square(&m)?)?)?;
    let spread = ops::sqrt(&ops::add_scalar(&var, 1e-8)?)?;
    Ok((m, spread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck::gradcheck;
    use rand::SeedableRng;

    #[test]
    fn training_with_the_moment_loss_brings_the_shadow_statistics_to_the_observed() {
        use crate::attacks::noise::feature_stats_distance;
        use crate::attacks::whitebox::Normalization;
        use crate::experiment::prepare_batch;
        use crate::models::{shadows, ModelKind};
        // Observed: an untrained LeNet's ReLU2 features of a few digits.
        // The shadow trains through that LeNet's f2 on other digits, with
        // and without the moment loss, from the same start.
        let target = ModelKind::Lenet.build(3).unwrap();
        let (f1, f2) = target.split("ReLU2").unwrap();
        let norm = Normalization::new(&[0.5], &[0.5]);
        let data = crate::data::synthetic::synthetic_digits(256, 11);
        let seen = crate::data::synthetic::synthetic_digits(16, 12);
        let (x, _) = prepare_batch(&seen, &(0..16).collect::<Vec<_>>(), &norm, None).unwrap();
        let observed = crate::autograd::no_grad(|| f1.forward(&x)).unwrap();
        let (all, _) = prepare_batch(&data, &(0..256).collect::<Vec<_>>(), &norm, None).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch: 32,
            lr: 1e-2,
            progress: false,
            ..TrainConfig::default()
        };
        let moments = FeatureMoments::new(&observed, 1.0).unwrap();
        let distance = |m: Option<&FeatureMoments>| {
            let mut shadow = shadows::shadow_for(ModelKind::Lenet, "ReLU2", true, 5).unwrap();
            let mut batch = |idx: &[usize], _: &mut rand_chacha::ChaCha8Rng| {
                prepare_batch(&data, idx, &norm, None)
            };
            train_shadow(&mut shadow, &f2, data.len(), &mut batch, &cfg, m).unwrap();
            let f = crate::autograd::no_grad(|| shadow.forward(&all)).unwrap();
            feature_stats_distance(&f, &observed).unwrap()
        };
        let (plain, matched) = (distance(None), distance(Some(&moments)));
        assert!(
            matched < 0.5 * plain,
            "distance with the moment loss {matched}, without {plain}"
        );
    }

    #[test]
    fn channel_mixtures_see_the_correlations_that_per_channel_moments_miss() {
        // Two channels that are equal in the observation, and in `other`
        // hold the same values with channel 1 reversed in space: the same
        // per-channel mean and spread, but uncorrelated instead of equal.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let plane = Tensor::rand_uniform([16], -1.0, 2.0, &mut rng)
            .to_vec()
            .unwrap();
        let reversed: Vec<f32> = plane.iter().rev().copied().collect();
        let obs = Tensor::from_vec([plane.clone(), plane.clone()].concat(), [1, 2, 4, 4]).unwrap();
        let other = Tensor::from_vec([plane, reversed].concat(), [1, 2, 4, 4]).unwrap();
        let plain = FeatureMoments::new(&obs, 1.0).unwrap();
        let mixed = FeatureMoments::new(&obs, 1.0)
            .unwrap()
            .with_projections(&obs, 8, 3)
            .unwrap();
        let value = |m: &FeatureMoments, x: &Tensor| m.loss(x).unwrap().to_vec().unwrap()[0];
        assert!(
            value(&plain, &other).abs() < 1e-6,
            "{}",
            value(&plain, &other)
        );
        assert!(value(&mixed, &obs).abs() < 1e-6, "{}", value(&mixed, &obs));
        assert!(value(&mixed, &other) > 1e-2, "{}", value(&mixed, &other));
        // The mixtures' gradient is the one central differences give, and
        // k = 0 is the plain loss again.
        let x = Tensor::rand_uniform([2, 2, 4, 4], -1.0, 1.0, &mut rng);
        let r = gradcheck(
            |t| mixed.loss(&t[0]),
            std::slice::from_ref(&x),
            1e-3,
            1e-3,
            2e-2,
            100,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
        let none = FeatureMoments::new(&obs, 1.0)
            .unwrap()
            .with_projections(&obs, 0, 3)
            .unwrap();
        assert_eq!(value(&none, &x), value(&plain, &x));
        assert_eq!(none.fingerprint().unwrap(), plain.fingerprint().unwrap());
        assert_ne!(mixed.fingerprint().unwrap(), plain.fingerprint().unwrap());
        // [n, c] features (after a linear layer) mix the same way.
        let flat = Tensor::rand_uniform([5, 3], 0.0, 1.0, &mut rng);
        let m = FeatureMoments::new(&flat, 1.0)
            .unwrap()
            .with_projections(&flat, 4, 1)
            .unwrap();
        assert!(value(&m, &flat).abs() < 1e-6);
    }

    #[test]
    fn moment_matching_defaults_to_two_mixtures_per_channel() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let obs = Tensor::rand_uniform([2, 3, 4, 4], 0.0, 1.0, &mut rng);
        assert!(MomentMatching::OFF.moments(&obs).unwrap().is_none());
        let len = |projections| {
            let m = MomentMatching {
                weight: 1.0,
                projections,
            };
            m.moments(&obs)
                .unwrap()
                .unwrap()
                .fingerprint()
                .unwrap()
                .len()
        };
        // weight, 3 means, 3 spreads; then the mixtures' weight, means and
        // spreads.
        assert_eq!(len(Some(0)), 7);
        assert_eq!(len(Some(5)), 7 + 1 + 10);
        assert_eq!(len(None), 7 + 1 + 12);
        let bad = MomentMatching {
            weight: -1.0,
            projections: None,
        };
        assert!(bad.moments(&obs).is_err());
        let too_many = MomentMatching {
            weight: 1.0,
            projections: Some(MAX_PROJECTIONS + 1),
        };
        let err = too_many.moments(&obs).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("4097")),
            "{err:?}"
        );
    }

    #[test]
    fn the_fingerprint_ignores_rounding_level_changes_of_the_statistics() {
        assert_eq!(four_significant_digits(1.234_56e-3), 1.235e-3);
        assert_eq!(four_significant_digits(-98_765.4), -98_770.0);
        assert_eq!(four_significant_digits(0.0), 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let obs = Tensor::rand_uniform([3, 5, 4, 4], -1.0, 2.0, &mut rng);
        let nudged = ops::scale(&obs, 1.0 + 1e-7).unwrap();
        let a = FeatureMoments::new(&obs, 1.0).unwrap();
        let b = FeatureMoments::new(&nudged, 1.0).unwrap();
        // The raw statistics differ in their last bits …
        assert_ne!(a.mean.to_vec().unwrap(), b.mean.to_vec().unwrap());
        // … the fingerprint does not; a real change does show.
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        let moved = ops::add_scalar(&obs, 1e-2).unwrap();
        let c = FeatureMoments::new(&moved, 1.0).unwrap();
        assert_ne!(a.fingerprint().unwrap(), c.fingerprint().unwrap());
    }

    #[test]
    fn moments_are_the_per_channel_mean_and_spread() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let f = Tensor::rand_uniform([3, 2, 4, 5], -1.0, 2.0, &mut rng);
        // The same values as [n, c, h·w] and as [n, c] rows of a
        // flattened [n·…] batch give the same statistics per layout.
        let flat = channel_moments(&f.reshape([3, 2, 20]).unwrap()).unwrap();
        let rows = channel_moments(&f.reshape([3, 40]).unwrap()).unwrap();
        assert_eq!(rows.0.dims(), &[1, 40]);
        let (m, s) = channel_moments(&f).unwrap();
        assert_eq!(m.to_vec().unwrap(), flat.0.to_vec().unwrap());
        assert_eq!(s.to_vec().unwrap(), flat.1.to_vec().unwrap());
        let v = f.to_vec().unwrap();
        for ch in 0..2 {
            let xs: Vec<f64> = (0..3)
                .flat_map(|i| v[(i * 2 + ch) * 20..(i * 2 + ch + 1) * 20].iter())
                .map(|&x| x as f64)
                .collect();
            let mu = xs.iter().sum::<f64>() / 60.0;
            let sd = (xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / 60.0).sqrt();
            let (gm, gs) = (
                m.to_vec().unwrap()[ch] as f64,
                s.to_vec().unwrap()[ch] as f64,
            );
            assert!(
                (gm - mu).abs() < 1e-5 && (gs - sd).abs() < 1e-4,
                "{gm} {mu} {gs} {sd}"
            );
        }
    }

    #[test]
    fn moment_loss_is_zero_on_the_observation_and_has_the_right_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let obs = Tensor::rand_uniform([4, 3, 3, 3], 0.0, 1.0, &mut rng);
        let m = FeatureMoments::new(&obs, 2.0).unwrap();
        let l = m.loss(&obs).unwrap().to_vec().unwrap()[0];
        assert!(l.abs() < 1e-6, "{l}");
        // Other features cost something, with the gradient that central
        // differences give.
        let other = Tensor::rand_uniform([2, 3, 3, 3], -1.0, 1.0, &mut rng);
        assert!(m.loss(&other).unwrap().to_vec().unwrap()[0] > 0.01);
        let r = gradcheck(|x| m.loss(&x[0]), &[other], 1e-3, 1e-3, 2e-2, 100).unwrap();
        assert!(r.ok(), "{r}");
        assert!(FeatureMoments::new(&obs, f32::NAN).is_err());
        assert!(FeatureMoments::new(&Tensor::zeros([2, 3, 2, 2]), 1.0).is_err());
    }
}
