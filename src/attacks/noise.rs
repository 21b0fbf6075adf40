//! Noise images for the black-box attack's `random` setting, where the
//! attacker has no data at all and trains its inverse network on noise.
//!
//! The paper uses white Gaussian noise. Which noise matters a great deal:
//! an inverse network learns the statistics of what it is trained on, and
//! white noise centred at mid-grey looks nothing like a dark MNIST digit.
//! The attacker cannot see the private images, but it does see their
//! *features* — that is the whole threat model — and it can query f1. So it
//! can pick the noise whose features look like the observed ones: for each
//! candidate (pixel mean, pixel spread, smoothness) on a small grid it
//! queries f1 on a few noise images and compares per-channel feature means
//! and spreads with the observed features; the closest candidate wins.
//! Still no data, no weights, no gradients: only queries and the
//! observations the server has anyway.
//!
//! Measured (MNIST conv1, the authors' linear decoder solved exactly):
//! white N(0, 1) in normalised space 13.9 dB; the calibrated choice, smooth
//! noise around pixel value 0.075, 26.8 dB.

use crate::attacks::blackbox::QueryOracle;
use crate::attacks::whitebox::Normalization;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::Rng;

/// A family of Gaussian noise images: pixel = mean + spread · ẑ, where ẑ
/// is white noise blurred with a Gaussian of `blur` pixels (0: none) and
/// scaled to keep unit variance. Not clipped.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NoiseModel {
    /// Mean pixel value (pixel scale, [0, 1] for images).
    pub mean: f32,
    /// Standard deviation of a pixel.
    pub spread: f32,
    /// σ of the Gaussian blur, in pixels (0 = white noise).
    pub blur: f32,
}

impl NoiseModel {
    /// The paper's noise: white, standard normal in the net's normalised
    /// input space (one channel's mean and std stand for all).
    pub fn paper(norm: &Normalization) -> Self {
        let m = norm.mean.first().copied().unwrap_or(0.0);
        let s = norm.std.first().copied().unwrap_or(1.0);
        NoiseModel {
            mean: m,
            spread: s,
            blur: 0.0,
        }
    }

    /// `n` noise images [n, c, h, w], in pixel scale.
    pub fn sample(&self, n: usize, chw: [usize; 3], rng: &mut impl Rng) -> Result<Tensor> {
        let [c, h, w] = chw;
        let plane = h * w;
        let mut data = crate::tensor::normal_vec(n * c * plane, 0.0, 1.0, rng);
        if self.blur > 0.0 && plane > 0 {
            let blur = GaussianBlur::new(h, w, self.blur);
            let mut tmp = vec![0f32; plane];
            for z in data.chunks_mut(plane) {
                blur.apply(z, &mut tmp);
            }
        }
        for v in data.iter_mut() {
            *v = self.mean + self.spread * *v;
        }
        Tensor::from_vec(data, vec![n, c, h, w])
    }

    /// Picks the candidate whose queried features are closest to the
    /// observed ones (see the module docs), querying `per_candidate` images
    /// for each. Returns the choice and its distance.
    pub fn calibrate(
        oracle: &dyn QueryOracle,
        observed: &Tensor,
        chw: [usize; 3],
        norm: &Normalization,
        per_candidate: usize,
        rng: &mut impl Rng,
    ) -> Result<(NoiseModel, f64)> {
        if per_candidate < 2 {
            return Err(Error::invalid(
                "noise calibration",
                format!("needs at least 2 images per candidate, got {per_candidate}"),
            ));
        }
        let target = channel_stats(observed)?;
        let mut best: Option<(NoiseModel, f64)> = None;
        for &blur in &[0.0f32, 1.0, 2.0] {
            for &spread in &[0.125f32, 0.25, 0.5] {
                for i in 1..10 {
                    let cand = NoiseModel {
                        mean: i as f32 / 10.0,
                        spread,
                        blur,
                    };
                    let x = norm.normalize(&cand.sample(per_candidate, chw, rng)?)?;
                    let v = oracle.query(&x.to_device(observed.device())?)?;
                    let d = stats_distance(&channel_stats(&v)?, &target);
                    if d.is_finite() && best.as_ref().is_none_or(|b| d < b.1) {
                        best = Some((cand, d));
                    }
                }
            }
        }
        best.ok_or_else(|| {
            Error::NonFinite("noise calibration: every candidate gave non-finite features".into())
        })
    }
}

/// How far features `got` are from `target` in per-channel mean and
/// spread: the mean over channels of the squared differences, in units of
/// the target channel's spread (a channel that never varies still gets a
/// sensible unit). 0 = identical statistics.
pub fn feature_stats_distance(got: &Tensor, target: &Tensor) -> Result<f64> {
    let (g, t) = (channel_stats(got)?, channel_stats(target)?);
    if g.len() != t.len() {
        return Err(Error::invalid(
            "feature statistics",
            format!("{} channels against {}", g.len(), t.len()),
        ));
    }
    Ok(stats_distance(&g, &t))
}

fn stats_distance(got: &[(f64, f64)], target: &[(f64, f64)]) -> f64 {
    let mean_spread = target.iter().map(|s| s.1).sum::<f64>() / target.len().max(1) as f64;
    let unit = |s: f64| s.max(1e-3 * mean_spread).max(1e-12);
    got.iter()
        .zip(target)
        .map(|(g, t)| {
            let u = unit(t.1);
            ((g.0 - t.0) / u).powi(2) + ((g.1 - t.1) / u).powi(2)
        })
        .sum::<f64>()
        / target.len().max(1) as f64
}

/// (mean, standard deviation) of each channel (dimension 1) of a feature
/// batch, over the batch and any spatial positions.
pub(crate) fn channel_stats(v: &Tensor) -> Result<Vec<(f64, f64)>> {
    let dims = v.dims().to_vec();
    if dims.len() < 2 || dims[0] == 0 || dims[1] == 0 {
        return Err(Error::invalid(
            "noise calibration",
            format!("features of shape {dims:?} have no channels to compare"),
        ));
    }
    let (n, c) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    let data = v.to_vec()?;
    let mut out = Vec::with_capacity(c);
    for ch in 0..c {
        let (mut s, mut s2) = (0f64, 0f64);
        for i in 0..n {
            let base = (i * c + ch) * inner;
            for &x in &data[base..base + inner] {
                s += x as f64;
                s2 += (x as f64) * (x as f64);
            }
        }
        let cnt = (n * inner) as f64;
        let mean = s / cnt;
        out.push((mean, (s2 / cnt - mean * mean).max(0.0).sqrt()));
    }
    Ok(out)
}

/// Separable Gaussian blur of h×w planes, reflecting at the borders,
/// scaled so white noise of unit variance stays of unit variance. Built
/// once per batch: the kernel and the reflected source index of every
/// (position, tap) do not depend on the plane.
struct GaussianBlur {
    h: usize,
    w: usize,
    kernel: Vec<f32>,
    gain: f32,
    /// Source column of (x, tap), `w·taps` entries.
    xs: Vec<usize>,
    /// Source row of (y, tap), `h·taps` entries.
    ys: Vec<usize>,
}

impl GaussianBlur {
    fn new(h: usize, w: usize, sigma: f32) -> Self {
        let r = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f32> = (-r..=r)
            .map(|t| (-(t * t) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
        // Blurring white noise of variance 1 leaves variance (Σk²)² (the 2-D
        // kernel is the outer product); dividing by Σk² brings it back to 1
        // without touching the low frequencies a per-plane rescale would.
        let gain = 1.0 / kernel.iter().map(|k| k * k).sum::<f32>();
        let reflect = |i: isize, n: usize| -> usize {
            let n = n as isize;
            if n == 1 {
                return 0;
            }
            let period = 2 * (n - 1);
            let m = i.rem_euclid(period);
            (if m < n { m } else { period - m }) as usize
        };
        let taps = kernel.len();
        let table = |n: usize| -> Vec<usize> {
            (0..n)
                .flat_map(|i| (0..taps).map(move |k| reflect(i as isize + k as isize - r, n)))
                .collect()
        };
        GaussianBlur {
            h,
            w,
            gain,
            xs: table(w),
            ys: table(h),
            kernel,
        }
    }

    /// Blurs one plane `z` in place; `tmp` is scratch of the same length.
    fn apply(&self, z: &mut [f32], tmp: &mut [f32]) {
        let (h, w, taps) = (self.h, self.w, self.kernel.len());
        for y in 0..h {
            let row = &z[y * w..(y + 1) * w];
            for x in 0..w {
                let src = &self.xs[x * taps..(x + 1) * taps];
                tmp[y * w + x] = self
                    .kernel
                    .iter()
                    .zip(src)
                    .map(|(kv, &i)| kv * row[i])
                    .sum();
            }
        }
        for y in 0..h {
            let src = &self.ys[y * taps..(y + 1) * taps];
            for x in 0..w {
                z[y * w + x] = self.gain
                    * self
                        .kernel
                        .iter()
                        .zip(src)
                        .map(|(kv, &i)| kv * tmp[i * w + x])
                        .sum::<f32>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    struct Identity;
    impl QueryOracle for Identity {
        fn query(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.detach())
        }
    }

    #[test]
    fn feature_stats_distance_is_zero_for_equal_statistics_and_grows_with_a_shift() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = Tensor::rand_uniform([4, 3, 5, 5], -1.0, 1.0, &mut rng);
        assert!(feature_stats_distance(&a, &a).unwrap() < 1e-12);
        // Same values with the images in another order: still 0.
        let v = a.to_vec().unwrap();
        let swapped: Vec<f32> = v[75..].iter().chain(&v[..75]).copied().collect();
        let b = Tensor::from_vec(swapped, [4, 3, 5, 5]).unwrap();
        assert!(feature_stats_distance(&b, &a).unwrap() < 1e-9);
        // Shift one channel's mean by one of its spreads: distance 1/3.
        let stats = channel_stats(&a).unwrap();
        let shifted: Vec<f32> = a
            .to_vec()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (i / 25) % 3 == 1 {
                    x + stats[1].1 as f32
                } else {
                    x
                }
            })
            .collect();
        let c = Tensor::from_vec(shifted, [4, 3, 5, 5]).unwrap();
        let d = feature_stats_distance(&c, &a).unwrap();
        assert!((d - 1.0 / 3.0).abs() < 1e-4, "{d}");
        let other = Tensor::zeros([4, 2, 5, 5]);
        assert!(feature_stats_distance(&other, &a).is_err());
    }

    #[test]
    fn samples_have_the_requested_mean_spread_and_smoothness() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for blur in [0.0, 2.0] {
            let m = NoiseModel {
                mean: 0.3,
                spread: 0.25,
                blur,
            };
            let x = m.sample(32, [1, 32, 32], &mut rng).unwrap();
            let s = channel_stats(&x).unwrap()[0];
            assert!((s.0 - 0.3).abs() < 0.02, "mean {}", s.0);
            // (Reflection at the borders adds a little variance when blurred.)
            assert!((s.1 - 0.25).abs() < 0.03, "spread {}", s.1);
            // Neighbour correlation: ~0 for white noise, high when blurred.
            let v = x.to_vec().unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for row in v.chunks(32) {
                for p in row.windows(2) {
                    num += ((p[0] - 0.3) * (p[1] - 0.3)) as f64;
                    den += ((p[0] - 0.3) * (p[0] - 0.3)) as f64;
                }
            }
            let corr = num / den;
            if blur == 0.0 {
                assert!(corr.abs() < 0.05, "white noise correlation {corr}");
            } else {
                assert!(corr > 0.8, "blurred noise correlation {corr}");
            }
        }
    }

    #[test]
    fn calibration_recovers_the_noise_that_made_the_observation() {
        // Through the identity "f1", the observation's statistics are the
        // images' own; calibration must find the generating candidate.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let truth = NoiseModel {
            mean: 0.2,
            spread: 0.5,
            blur: 0.0,
        };
        let norm = Normalization::new(&[0.5], &[0.5]);
        let obs = norm
            .normalize(&truth.sample(32, [1, 8, 8], &mut rng).unwrap())
            .unwrap();
        let (got, d) =
            NoiseModel::calibrate(&Identity, &obs, [1, 8, 8], &norm, 32, &mut rng).unwrap();
        assert!(
            (got.mean - 0.2).abs() < 1e-6 && got.spread == 0.5,
            "{got:?} ({d})"
        );
        assert!(NoiseModel::calibrate(&Identity, &obs, [1, 8, 8], &norm, 1, &mut rng).is_err());
    }

    #[test]
    fn blur_keeps_a_constant_plane_flat() {
        let mut z = vec![2.5f32; 5 * 7];
        GaussianBlur::new(5, 7, 1.5).apply(&mut z, &mut [0.0; 5 * 7]);
        let first = z[0];
        assert!(z.iter().all(|v| (v - first).abs() < 1e-4), "{z:?}");
    }
}
