//! The white-box attack (the paper's Algorithm 1, regularised maximum
//! likelihood): the attacker knows f1 and sees v = f1(x0); it searches for
//!
//!   x* = argmin_x  mean((f1(x) − v)²) + λ_TV·TV(x) + λ_L2·mean(x²)
//!
//! by gradient descent on x, starting from a constant image. All attacked
//! images go through in one batch; v is computed once, without a graph, and
//! the weights of f1 are frozen, so each step records only the path from x
//! to the loss and runs only the input-gradient kernels.

use crate::error::{Error, Result};
use crate::nn::Sequential;
use crate::ops::{self, TvKind};
use crate::optim::{Adam, Optimizer, Sgd};
use crate::step_monitor::{Failure, StepMonitor};
use crate::tensor::Tensor;
use rand::SeedableRng;

/// The optimiser that moves the image.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AttackOptimizer {
    /// Adam (the authors' choice: lr 1e-2; they left eps at 1e-8 and amsgrad off).
    Adam {
        /// Learning rate.
        lr: f32,
        /// Denominator epsilon.
        eps: f32,
        /// AMSGrad variant.
        amsgrad: bool,
    },
    /// Plain gradient descent.
    Gd {
        /// Step size.
        lr: f32,
    },
}

/// Where the search starts.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Init {
    /// Zeros in normalised space (the authors' choice: the data mean colour).
    Zeros,
    /// A constant pixel value in [0, 1].
    Constant(f32),
    /// Uniform random pixels in [0, 1] (seeded).
    Random,
}

/// Every knob of the white-box attack.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WhiteBoxConfig {
    /// Optimiser.
    pub optimizer: AttackOptimizer,
    /// Gradient steps.
    pub iterations: usize,
    /// Starting image.
    pub init: Init,
    /// Weight of the total-variation prior.
    pub lambda_tv: f32,
    /// TV exponent β (2 = the authors' squared form).
    pub tv_beta: f32,
    /// Weight of an L2 prior on the (normalised) image: λ_L2 · mean (x − c)².
    pub lambda_l2: f32,
    /// The image c that prior pulls towards, in pixels, `C·H·W` values
    /// (`None`: the normalised zero, i.e. the data's mean colour). An
    /// attacker who holds data from the target's distribution uses its mean
    /// image: it pins down what the features cannot see, such as a flat
    /// background a shadow network is blind to.
    #[serde(default)]
    pub l2_center: Option<Vec<f32>>,
    /// Project onto the valid pixel box after every step.
    pub box_constraint: bool,
    /// Seed for random initialisation.
    pub seed: u64,
}

impl Default for WhiteBoxConfig {
    /// The authors' settings: Adam lr 1e-2, 5000 steps, zeros, λ_TV = 0.
    fn default() -> Self {
        WhiteBoxConfig {
            optimizer: AttackOptimizer::Adam {
                lr: 1e-2,
                eps: 1e-8,
                amsgrad: false,
            },
            iterations: 5000,
            init: Init::Zeros,
            lambda_tv: 0.0,
            tv_beta: 2.0,
            lambda_l2: 0.0,
            l2_center: None,
            box_constraint: false,
            seed: 0,
        }
    }
}

impl WhiteBoxConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("whitebox", m));
        match self.optimizer {
            AttackOptimizer::Adam { lr, eps, .. } if !(lr > 0.0 && eps > 0.0) => {
                return bad(format!(
                    "Adam needs lr > 0 and eps > 0, got lr={lr}, eps={eps}"
                ))
            }
            AttackOptimizer::Gd { lr }
                if lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) =>
            {
                return bad(format!("GD needs lr > 0, got {lr}"))
            }
            _ => {}
        }
        if self.lambda_tv < 0.0
            || self.lambda_l2 < 0.0
            || !self.lambda_tv.is_finite()
            || !self.lambda_l2.is_finite()
        {
            return bad(format!(
                "λ_TV and λ_L2 must be finite and >= 0, got {} and {}",
                self.lambda_tv, self.lambda_l2
            ));
        }
        if self.tv_beta <= 0.0 {
            return bad(format!("TV β must be > 0, got {}", self.tv_beta));
        }
        if let Init::Constant(v) = self.init {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!(
                    "constant init must be a pixel value in [0, 1], got {v}"
                ));
            }
        }
        Ok(())
    }
}

/// Per-channel affine map between pixel space [0, 1] and the net's input space.
#[derive(Clone, Debug)]
pub struct Normalization {
    /// Channel means.
    pub mean: Vec<f32>,
    /// Channel standard deviations.
    pub std: Vec<f32>,
}

impl Normalization {
    /// From slices.
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalization {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// Pixels → net input.
    pub fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        crate::data::transforms::normalize(x, &self.mean, &self.std)
    }

    /// Net input → pixels (not clipped).
    pub fn denormalize(&self, x: &Tensor) -> Result<Tensor> {
        crate::data::transforms::denormalize(x, &self.mean, &self.std)
    }
}

/// What the caller sees every `report_every` steps.
pub struct Progress<'a> {
    /// Step just taken (1-based).
    pub iteration: usize,
    /// Loss before that step, on the iterations where the loop reads it
    /// back from the device (every [`crate::train::READ_EVERY`] and the
    /// last; reading waits for the device, so not every iteration).
    pub loss: Option<f32>,
    /// The current estimate, normalised space.
    pub x: &'a Tensor,
}

/// Mean squared error between `net(x)` and the observed features.
fn feature_loss(net: &Sequential, x: &Tensor, target: &Tensor) -> Result<Tensor> {
    let feats = net.forward(x)?;
    if feats.shape() != target.shape() {
        return Err(Error::shape(
            "whitebox target features",
            feats.shape(),
            target.shape(),
        ));
    }
    ops::mse_loss(&feats, target)
}

/// Runs the attack against observed features `target` (one row per image).
/// Returns the reconstruction in *normalised* space, `[N, C, H, W]`.
pub fn invert(
    f1: &Sequential,
    target: &Tensor,
    chw: [usize; 3],
    norm: &Normalization,
    cfg: &WhiteBoxConfig,
    on_progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<Tensor> {
    invert_ensemble(&[f1], target, chw, norm, cfg, on_progress)
}

/// [`invert`] against several stand-ins for f1 at once (the query-free
/// attack's shadow ensemble): the feature loss is the mean over the nets.
/// Each shadow errs where the data never pinned it down, and those errors
/// differ from shadow to shadow, so an image that satisfies all of them
/// is closer to what the target saw.
pub fn invert_ensemble(
    nets: &[&Sequential],
    target: &Tensor,
    chw: [usize; 3],
    norm: &Normalization,
    cfg: &WhiteBoxConfig,
    on_progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<Tensor> {
    cfg.validate()?;
    if nets.is_empty() {
        return Err(Error::invalid("whitebox", "no network to invert"));
    }
    let n = target.shape().dim(0)?;
    let [c, h, w] = chw;
    let pixels = match cfg.init {
        Init::Zeros => norm.denormalize(&Tensor::zeros([n, c, h, w]))?,
        Init::Constant(v) => Tensor::full([n, c, h, w], v),
        Init::Random => Tensor::rand_uniform(
            [n, c, h, w],
            0.0,
            1.0,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed),
        ),
    };
    // The guess lives where the observed features (and f1) do.
    let x = norm
        .normalize(&pixels)?
        .to_device(target.device())?
        .requires_grad();
    let target = target.detach();
    let l2_center = match &cfg.l2_center {
        Some(img) if img.len() != c * h * w => {
            return Err(Error::invalid(
                "whitebox",
                format!(
                    "the L2 prior's centre has {} values, expected C·H·W = {}",
                    img.len(),
                    c * h * w
                ),
            ))
        }
        Some(img) => {
            let one = norm
                .normalize(&Tensor::from_slice(img, [1, c, h, w])?)?
                .to_vec()?;
            Some(Tensor::from_vec(one.repeat(n), [n, c, h, w])?.to_device(target.device())?)
        }
        None => None,
    };
    let (lo, hi) = (
        norm.normalize(&Tensor::zeros([1, c, 1, 1]))?.to_vec()?,
        norm.normalize(&Tensor::ones([1, c, 1, 1]))?.to_vec()?,
    );
    let tv_kind = if cfg.tv_beta == 2.0 {
        TvKind::Squared
    } else {
        TvKind::Power {
            beta: cfg.tv_beta,
            eps: 1e-8,
        }
    };
    let mut opt: Box<dyn Optimizer> = match cfg.optimizer {
        AttackOptimizer::Adam { lr, eps, amsgrad } => {
            Box::new(Adam::new(lr).with_eps(eps).with_amsgrad(amsgrad))
        }
        AttackOptimizer::Gd { lr } => Box::new(Sgd::new(lr)),
    };
    // The loss and the NaN watch stay on x's device: the loop looks at them
    // only every READ_EVERY iterations (see crate::step_monitor).
    let mut monitor = StepMonitor::new(x.device())?;
    let nan_error = |f: Failure| {
        Error::NonFinite(format!(
            "white-box: {f} (steps are iterations); lower the learning rate"
        ))
    };
    let ran = (|| -> Result<()> {
        for it in 1..=cfg.iterations {
            let mut loss = feature_loss(nets[0], &x, &target)?;
            for net in &nets[1..] {
                loss = ops::add(&loss, &feature_loss(net, &x, &target)?)?;
            }
            if nets.len() > 1 {
                loss = ops::scale(&loss, 1.0 / nets.len() as f32)?;
            }
            if cfg.lambda_tv > 0.0 {
                loss = ops::add(
                    &loss,
                    &ops::scale(&ops::tv_loss(&x, tv_kind)?, cfg.lambda_tv)?,
                )?;
            }
            if cfg.lambda_l2 > 0.0 {
                let off = match &l2_center {
                    Some(centre) => ops::sub(&x, centre)?,
                    None => x.clone(),
                };
                loss = ops::add(
                    &loss,
                    &ops::scale(&ops::mean(&ops::square(&off)?)?, cfg.lambda_l2)?,
                )?;
            }
            monitor.begin_step();
            monitor.add_loss(&loss, 1.0)?;
            let grads = loss.backward()?;
            drop(loss);
            opt.step_watched(std::slice::from_ref(&x), &grads, &mut monitor)?;
            if cfg.box_constraint {
                // Project onto the pixel box, in place, where x lives. (After
                // a NaN the step above left x as it was, and x stays finite.)
                ops::clamp_channels_in_place(&x, &lo, &hi)?;
            }
            // A look is one wait for the device: the monitor's copy brings
            // this iteration's loss along with the NaN watch.
            let look = it.is_multiple_of(crate::train::READ_EVERY) || it == cfg.iterations;
            let mut lv = None;
            if look {
                let r = monitor.read()?;
                if let Some(f) = r.failure {
                    return Err(nan_error(f));
                }
                lv = Some(r.last_loss);
            }
            on_progress(Progress {
                iteration: it,
                loss: lv,
                x: &x,
            })?;
        }
        Ok(())
    })();
    // An error met after a recorded NaN gives way to the NaN, its likely cause.
    if let Err(e) = ran {
        return Err(match monitor.read().map(|r| r.failure) {
            Ok(Some(f)) => nan_error(f),
            _ => e,
        });
    }
    Ok(x.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Layer;

    /// With the box constraint every step ends inside the pixel box (per
    /// channel, in normalised space), even with a step size that would
    /// throw the image far outside it; without it the image leaves the box.
    #[test]
    fn box_constraint_keeps_every_step_inside_the_pixel_box() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let net = Sequential::new()
            .with("conv", Layer::conv2d(3, 4, 3, 1, 1, &mut rng))
            .unwrap();
        let norm = Normalization::new(&[0.5, 0.4, 0.3], &[0.25, 0.2, 0.1]);
        let bound = |v: Tensor| norm.normalize(&v).unwrap().to_vec().unwrap();
        let (lo, hi) = (
            bound(Tensor::zeros([1, 3, 1, 1])),
            bound(Tensor::ones([1, 3, 1, 1])),
        );
        assert!(lo.iter().zip(&hi).all(|(l, h)| l < h));
        // Observed features of an image far outside [0, 1].
        let far = Tensor::rand_uniform([2, 3, 5, 6], -30.0, 30.0, &mut rng);
        let target = net.forward(&far).unwrap().detach();
        let run = |box_constraint: bool| {
            let cfg = WhiteBoxConfig {
                optimizer: AttackOptimizer::Gd { lr: 50.0 },
                iterations: 4,
                box_constraint,
                ..WhiteBoxConfig::default()
            };
            let mut steps = Vec::new();
            let x = invert(&net, &target, [3, 5, 6], &norm, &cfg, &mut |p| {
                steps.push(p.x.to_vec()?);
                Ok(())
            })
            .unwrap();
            steps.push(x.to_vec().unwrap());
            steps
        };
        let inside = |v: &[f32]| {
            v.chunks(30)
                .enumerate()
                .all(|(i, plane)| plane.iter().all(|&p| p >= lo[i % 3] && p <= hi[i % 3]))
        };
        let boxed = run(true);
        assert_eq!(boxed.len(), 5);
        assert!(boxed.iter().all(|v| inside(v)), "a step left the box");
        // Some pixels sit on the bounds: the projection did something.
        assert!(boxed[4].iter().any(|p| lo.contains(p) || hi.contains(p)));
        assert!(
            !run(false).iter().all(|v| inside(v)),
            "the test needs a step that leaves the box"
        );
    }

    /// A NaN loss is reported at the next look (every READ_EVERY
    /// iterations) with the iteration it happened in, and the image is
    /// left as it was before it; the loss is shown only on looks.
    #[test]
    fn a_nan_loss_fails_at_the_next_look_and_leaves_the_image_alone() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let net = Sequential::new()
            .with("conv", Layer::conv2d(1, 2, 3, 1, 1, &mut rng))
            .unwrap();
        let norm = Normalization::new(&[0.5], &[0.25]);
        let good = net
            .forward(&Tensor::rand_uniform([1, 1, 4, 4], 0.0, 1.0, &mut rng))
            .unwrap()
            .detach();
        let mut nan = good.to_vec().unwrap();
        nan[5] = f32::NAN;
        let nan = Tensor::from_vec(nan, good.shape().clone()).unwrap();
        let every = crate::train::READ_EVERY;
        let cfg = WhiteBoxConfig {
            iterations: every + 8,
            ..WhiteBoxConfig::default()
        };
        let (mut xs, mut losses) = (Vec::new(), Vec::new());
        let e = invert(&net, &nan, [1, 4, 4], &norm, &cfg, &mut |p| {
            xs.push(p.x.to_vec()?);
            losses.push(p.loss);
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("white-box: loss is NaN at step 1"), "{e}");
        assert_eq!(xs.len(), every - 1, "stopped at the first look");
        assert!(
            xs.iter().all(|x| x == &xs[0]),
            "the image moved after the NaN"
        );
        assert!(losses.iter().all(|l| l.is_none()));
        // The same run against finite features: the loss at every look.
        let mut looks = Vec::new();
        invert(&net, &good, [1, 4, 4], &norm, &cfg, &mut |p| {
            if let Some(l) = p.loss {
                looks.push((p.iteration, l));
            }
            Ok(())
        })
        .unwrap();
        let at: Vec<usize> = looks.iter().map(|l| l.0).collect();
        assert_eq!(at, vec![every, every + 8]);
        assert!(looks.iter().all(|l| l.1.is_finite() && l.1 >= 0.0));
    }
}
