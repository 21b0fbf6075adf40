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
//! white N(0, 1) in normalised space 13.9 dB; the calibrated choice, 24.7
//! dB (`reproduce`'s seed).
//!
//! Deep in a colour net that calibration breaks down (see
//! [`NoiseModel::natural_colour`]); there the noise takes the statistics of
//! natural photographs instead, which every attacker knows: a power
//! spectrum falling as 1/f^α and strongly correlated colour channels. White
//! or independently coloured noise is speckle that deep features barely
//! respond to, and an inverse network trained on it learns to answer every
//! observation with the same flat image.

use crate::attacks::blackbox::QueryOracle;
use crate::attacks::whitebox::Normalization;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::Rng;

/// The spatial texture of a noise family: how neighbouring pixels relate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Texture {
    /// Independent pixels.
    White,
    /// White noise blurred with a Gaussian of this σ (pixels).
    Blurred(f32),
    /// A Gaussian random field whose power spectrum falls as 1/f^α, the
    /// way natural images' does (α ≈ 2 for photographs; larger α, smoother
    /// fields): large blobs of light and dark with finer detail on top,
    /// including a per-image brightness offset.
    PowerLaw(f32),
}

impl std::fmt::Display for Texture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Texture::White => f.write_str("white"),
            Texture::Blurred(s) => write!(f, "blur:{s}"),
            Texture::PowerLaw(a) => write!(f, "powerlaw:{a}"),
        }
    }
}

/// A family of Gaussian noise images: pixel = mean + spread · ẑ, where ẑ
/// has unit variance and the family's [`Texture`]. Not clipped.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NoiseModel {
    /// Mean pixel value (pixel scale, [0, 1] for images).
    pub mean: f32,
    /// Standard deviation of a pixel.
    pub spread: f32,
    /// How neighbouring pixels relate.
    pub texture: Texture,
    /// Fraction of each pixel's variance that all colour channels share
    /// (0: independent channels; natural images' channels correlate at
    /// ~0.9, so that uncorrelated noise is mostly colour speckle).
    pub shared: f32,
}

impl std::fmt::Display for NoiseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.mean, self.spread, self.texture)?;
        if self.shared > 0.0 {
            write!(f, ",{}", self.shared)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for NoiseModel {
    type Err = Error;
    /// `MEAN,SPREAD,TEXTURE[,SHARED]` with TEXTURE `white`, `blur:SIGMA`
    /// or `powerlaw:ALPHA` and SHARED in [0, 1] (default 0), e.g.
    /// `0.45,0.25,powerlaw:2,0.9`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "noise model",
                format!("`{s}`: {why} (expected MEAN,SPREAD,TEXTURE[,SHARED] with TEXTURE white, blur:SIGMA or powerlaw:ALPHA and SHARED the fraction of variance the colour channels share, e.g. 0.45,0.25,powerlaw:2,0.9)"),
            )
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let (mean, spread, texture, shared) = match parts[..] {
            [m, s, t] => (m, s, t, None),
            [m, s, t, c] => (m, s, t, Some(c)),
            _ => return Err(bad("three or four comma-separated fields needed")),
        };
        let num = |v: &str, what: &str| -> Result<f32> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(&format!("{what} `{v}` is not a finite number")))
        };
        let (mean, spread) = (num(mean, "mean")?, num(spread, "spread")?);
        if !(0.0..=1.0).contains(&mean) {
            return Err(bad("the mean is a pixel value and must lie in [0, 1]"));
        }
        if !(spread > 0.0 && spread <= 1.0) {
            return Err(bad("the spread must lie in (0, 1]"));
        }
        let texture = match texture.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
            None if texture == "white" => Texture::White,
            Some(("blur", v)) => {
                let sigma = num(v, "blur sigma")?;
                if !(0.0..=8.0).contains(&sigma) {
                    return Err(bad("the blur sigma must lie in [0, 8] pixels"));
                }
                Texture::Blurred(sigma)
            }
            Some(("powerlaw", v)) => {
                let alpha = num(v, "power-law exponent")?;
                if !(0.0..=6.0).contains(&alpha) {
                    return Err(bad("the power-law exponent must lie in [0, 6]"));
                }
                Texture::PowerLaw(alpha)
            }
            _ => return Err(bad(&format!("unknown texture `{texture}`"))),
        };
        let shared = match shared {
            Some(v) => num(v, "shared fraction")?,
            None => 0.0,
        };
        if !(0.0..=1.0).contains(&shared) {
            return Err(bad("the shared fraction must lie in [0, 1]"));
        }
        Ok(NoiseModel {
            mean,
            spread,
            texture,
            shared,
        })
    }
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
            texture: Texture::White,
            shared: 0.0,
        }
    }

    /// `n` noise images [n, c, h, w], in pixel scale.
    pub fn sample(&self, n: usize, chw: [usize; 3], rng: &mut impl Rng) -> Result<Tensor> {
        let [c, h, w] = chw;
        let plane = h * w;
        let shared = self.shared.clamp(0.0, 1.0);
        let mut data = if shared > 0.0 && c > 1 {
            // One extra plane per image, common to its channels:
            // √shared · common + √(1 − shared) · own keeps unit variance.
            let z = self.unit_planes(n * (c + 1), h, w, rng);
            let (a, b) = (shared.sqrt(), (1.0 - shared).sqrt());
            let mut data = Vec::with_capacity(n * c * plane);
            for img in z.chunks(((c + 1) * plane).max(1)) {
                let (common, own) = img.split_at(plane);
                data.extend(
                    own.chunks(plane.max(1))
                        .flat_map(|p| p.iter().zip(common).map(move |(o, m)| a * m + b * o)),
                );
            }
            data
        } else {
            self.unit_planes(n * c, h, w, rng)
        };
        for v in data.iter_mut() {
            *v = self.mean + self.spread * *v;
        }
        Tensor::from_vec(data, vec![n, c, h, w])
    }

    /// `count` planes of h×w unit-variance noise with the family's texture.
    fn unit_planes(&self, count: usize, h: usize, w: usize, rng: &mut impl Rng) -> Vec<f32> {
        let plane = h * w;
        if plane == 0 {
            return Vec::new();
        }
        match self.texture {
            Texture::PowerLaw(alpha) => {
                let mut data = vec![0f32; count * plane];
                PowerLawField::new(h, w, alpha).draw_planes(&mut data, rng);
                data
            }
            Texture::Blurred(sigma) if sigma > 0.0 => {
                let mut data = crate::tensor::normal_vec(count * plane, 0.0, 1.0, rng);
                let blur = GaussianBlur::new(h, w, sigma);
                let mut tmp = vec![0f32; plane];
                for z in data.chunks_mut(plane) {
                    blur.apply(z, &mut tmp);
                }
                data
            }
            _ => crate::tensor::normal_vec(count * plane, 0.0, 1.0, rng),
        }
    }

    /// Noise with the statistics of natural colour photographs: a power
    /// spectrum falling as 1/f³ (smooth blobs with finer detail on top),
    /// colour channels sharing 90 % of their variance, pixel mean 0.47 and
    /// spread 0.2 — what any collection of photos shows (CIFAR-10's own
    /// pixels average 0.47 with spread 0.25), so it asks the attacker for
    /// no private data. Photographs' spectra fall as about 1/f²; the
    /// steeper 1/f³ was chosen by measurement, because the deep features an
    /// attacker decodes keep the coarse structure only (CIFAR ReLU32, one
    /// epoch, mean 0.45, spread 0.25, 90 % shared: 1/f² 12.48 dB / SSIM
    /// 0.0009, 1/f³ 12.07 / 0.2515; 1/f^2.5 with mean 0.47: 11.57 / 0.2657).
    ///
    /// Why not calibrate colour noise like grey-level noise: at the CIFAR
    /// CNN's ReLU32 no noise matches the observed feature statistics well,
    /// every candidate lands within the distance's sampling noise (0.28 to
    /// 0.32), and the winner moves with the seed — pixel mean 0.6, 0.7 or
    /// 0.9. An inverse network trained on such bright noise answers every
    /// observation with the same flat grey (one epoch at ReLU32: mean 0.7
    /// 9.02 dB / SSIM 0.0015; this prior 12.46 / 0.2599). Without the shared
    /// colour it collapses the same way (mean 0.7, independent channels:
    /// 8.89 / 0.0018).
    pub fn natural_colour() -> Self {
        NoiseModel {
            mean: 0.47,
            spread: 0.2,
            texture: Texture::PowerLaw(3.0),
            shared: 0.9,
        }
    }

    /// The noise of the black-box `random` setting for images of shape
    /// `chw`: [`natural_colour`](Self::natural_colour) for colour images,
    /// else [`calibrate`](Self::calibrate)d to the `observed` features with
    /// 64 images per candidate. The distance is `None` when nothing was
    /// calibrated.
    pub fn for_random_setting(
        oracle: &dyn QueryOracle,
        observed: &Tensor,
        chw: [usize; 3],
        norm: &Normalization,
        rng: &mut impl Rng,
    ) -> Result<(NoiseModel, Option<f64>)> {
        if chw[0] > 1 {
            return Ok((Self::natural_colour(), None));
        }
        let (m, d) = Self::calibrate(oracle, observed, chw, norm, 64, rng)?;
        Ok((m, Some(d)))
    }

    /// The grid [`calibrate`](Self::calibrate) searches for images of
    /// `channels` colour channels: pixel means 0.1 … 0.9, spreads 0.125,
    /// 0.25 and 0.5, and five textures — white, blurred by 1 or 2 px, and
    /// power-law spectra with α = 2 and 3 — each with independent colour
    /// channels and, for colour images, with 90 % of the variance shared.
    pub fn candidates(channels: usize) -> Vec<NoiseModel> {
        let textures = [
            Texture::White,
            Texture::Blurred(1.0),
            Texture::Blurred(2.0),
            Texture::PowerLaw(2.0),
            Texture::PowerLaw(3.0),
        ];
        let shares: &[f32] = if channels > 1 { &[0.0, 0.9] } else { &[0.0] };
        let mut out = Vec::new();
        for texture in textures {
            for &shared in shares {
                for spread in [0.125f32, 0.25, 0.5] {
                    for i in 1..10 {
                        out.push(NoiseModel {
                            mean: i as f32 / 10.0,
                            spread,
                            texture,
                            shared,
                        });
                    }
                }
            }
        }
        out
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
        for cand in Self::candidates(chw[0]) {
            let x = norm.normalize(&cand.sample(per_candidate, chw, rng)?)?;
            let v = oracle.query(&x.to_device(observed.device())?)?;
            let d = stats_distance(&channel_stats(&v)?, &target);
            if d.is_finite() && best.as_ref().is_none_or(|b| d < b.1) {
                best = Some((cand, d));
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

/// Draws h×w planes of a stationary Gaussian random field with power
/// spectrum ∝ 1/f^α and unit variance.
///
/// Why this way: a field is white noise filtered in frequency space. Give
/// every frequency (ky, kx) an independent complex Gaussian coefficient
/// (a + ib)·A(f) with amplitude A(f) = f^(−α/2); the real part of the
/// inverse DFT, Σ_k A_k (a_k cos θ_k − b_k sin θ_k), is then Gaussian with
/// variance Σ_k A_k², and dividing by √(Σ_k A_k²) gives unit variance. The
/// DC term (f = 0) takes the amplitude of the lowest non-zero frequency,
/// 1/max(h, w), so each image gets its own brightness offset. The field
/// wraps around at the borders (a torus), which the inverse network does
/// not mind. The inverse DFT is separable: h·w·w complex products along
/// rows, then h·h·w for the real part down the columns; 32×32 costs ~0.1
/// ms a plane, small next to a training step.
/// Planes of power-law noise drawn from one seed (see
/// [`PowerLawField::draw_planes`]): a fixed number, not one per thread, so
/// the noise does not change with the thread count.
const PLANES_PER_SEED: usize = 32;

struct PowerLawField {
    h: usize,
    w: usize,
    /// A(f) / √(Σ A²), h·w entries in (ky, kx) order.
    amp: Vec<f32>,
    /// cos and sin of 2π·k·x/w, w·w entries in (k, x) order.
    cos_w: Vec<f32>,
    sin_w: Vec<f32>,
    /// cos and sin of 2π·k·y/h, h·h entries in (k, y) order.
    cos_h: Vec<f32>,
    sin_h: Vec<f32>,
}

impl PowerLawField {
    fn new(h: usize, w: usize, alpha: f32) -> Self {
        // Signed frequency of DFT index k on n points, in cycles per pixel.
        let freq = |k: usize, n: usize| -> f64 {
            let k = if 2 * k > n {
                k as f64 - n as f64
            } else {
                k as f64
            };
            k / n as f64
        };
        let f_min = 1.0 / h.max(w).max(1) as f64;
        let mut amp: Vec<f64> = Vec::with_capacity(h * w);
        for ky in 0..h {
            for kx in 0..w {
                let f = freq(ky, h).hypot(freq(kx, w)).max(f_min);
                amp.push(f.powf(-alpha as f64 / 2.0));
            }
        }
        let norm = amp.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-30);
        let table = |n: usize, trig: fn(f64) -> f64| -> Vec<f32> {
            (0..n * n)
                .map(|i| {
                    let (k, x) = (i / n, i % n);
                    trig(2.0 * std::f64::consts::PI * ((k * x) % n) as f64 / n as f64) as f32
                })
                .collect()
        };
        PowerLawField {
            h,
            w,
            amp: amp.iter().map(|a| (a / norm) as f32).collect(),
            cos_w: table(w, f64::cos),
            sin_w: table(w, f64::sin),
            cos_h: table(h, f64::cos),
            sin_h: table(h, f64::sin),
        }
    }

    /// Fills `data` (whole h·w planes) with independent draws of the
    /// field, in parallel.
    ///
    /// Why in parallel: the black-box `random` setting draws fresh noise
    /// for every training batch, 300k CIFAR images per decoder. Drawn on
    /// one core (two Box–Muller normals per pixel plus the DFT, ~19 ms per
    /// 64-image batch) that is ~90 s per decoder, far more than the
    /// decoder's training steps take on a GPU: the black-box random row
    /// took about 5 of the 9.3 minutes of an H200 `reproduce` run.
    ///
    /// Each block of [`PLANES_PER_SEED`] planes gets its own generator,
    /// seeded from `rng` in block order, so the noise depends on `rng`
    /// alone and not on how many threads draw it.
    fn draw_planes(&self, data: &mut [f32], rng: &mut impl Rng) {
        use rand::SeedableRng;
        use rayon::prelude::*;
        let plane = self.h * self.w;
        if plane == 0 {
            return;
        }
        let block = PLANES_PER_SEED * plane;
        let seeds: Vec<u64> = (0..data.len().div_ceil(block)).map(|_| rng.gen()).collect();
        data.par_chunks_mut(block)
            .zip(seeds.par_iter())
            .for_each_init(
                || (vec![0f32; plane], vec![0f32; plane]),
                |(t_re, t_im), (planes, &seed)| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    let coeff = crate::tensor::normal_vec(2 * planes.len(), 0.0, 1.0, &mut rng);
                    for (z, c) in planes
                        .chunks_exact_mut(plane)
                        .zip(coeff.chunks_exact(2 * plane))
                    {
                        t_re.fill(0.0);
                        t_im.fill(0.0);
                        self.draw(z, c, t_re, t_im);
                    }
                },
            );
    }

    /// Writes one plane (h·w values) of the field into `z` from `coeff`
    /// (2·h·w standard normals: re, im per frequency); `t_re` and `t_im`
    /// are zeroed scratch of h·w values.
    fn draw(&self, z: &mut [f32], coeff: &[f32], t_re: &mut [f32], t_im: &mut [f32]) {
        let (h, w) = (self.h, self.w);
        // Along the rows: t[ky][x] = Σ_kx C[ky][kx] · e^{2πi·kx·x/w}.
        for ky in 0..h {
            for kx in 0..w {
                let a = self.amp[ky * w + kx];
                let (re, im) = (
                    a * coeff[2 * (ky * w + kx)],
                    a * coeff[2 * (ky * w + kx) + 1],
                );
                let (cos, sin) = (&self.cos_w[kx * w..][..w], &self.sin_w[kx * w..][..w]);
                let (row_re, row_im) = (&mut t_re[ky * w..][..w], &mut t_im[ky * w..][..w]);
                for x in 0..w {
                    row_re[x] += re * cos[x] - im * sin[x];
                    row_im[x] += re * sin[x] + im * cos[x];
                }
            }
        }
        // Down the columns, real part only: z[y][x] = Re Σ_ky t[ky][x] · e^{2πi·ky·y/h}.
        z.fill(0.0);
        for ky in 0..h {
            let (row_re, row_im) = (&t_re[ky * w..][..w], &t_im[ky * w..][..w]);
            for y in 0..h {
                let (c, s) = (self.cos_h[ky * h + y], self.sin_h[ky * h + y]);
                let out = &mut z[y * w..][..w];
                for x in 0..w {
                    out[x] += row_re[x] * c - row_im[x] * s;
                }
            }
        }
    }
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
                texture: Texture::Blurred(blur),
                shared: 0.0,
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

    /// Mean squared magnitude of the 2-D DFT of `planes` (h×w each) at
    /// the frequencies whose radius lies in [lo, hi) cycles per pixel, and
    /// the mean of f^−α over the same frequencies (what a 1/f^α spectrum
    /// predicts, up to a constant).
    fn band_power(planes: &[f32], h: usize, w: usize, lo: f64, hi: f64, alpha: f64) -> (f64, f64) {
        let tau = 2.0 * std::f64::consts::PI;
        let freq = |k: usize, n: usize| {
            let k = if 2 * k > n {
                k as f64 - n as f64
            } else {
                k as f64
            };
            k / n as f64
        };
        let (mut total, mut count, mut predicted) = (0f64, 0usize, 0f64);
        for p in planes.chunks(h * w) {
            for ky in 0..h {
                for kx in 0..w {
                    let f = freq(ky, h).hypot(freq(kx, w));
                    if f < lo || f >= hi {
                        continue;
                    }
                    predicted += f.powf(-alpha);
                    let (mut re, mut im) = (0f64, 0f64);
                    for y in 0..h {
                        for x in 0..w {
                            let th =
                                tau * (ky * y) as f64 / h as f64 + tau * (kx * x) as f64 / w as f64;
                            re += p[y * w + x] as f64 * th.cos();
                            im -= p[y * w + x] as f64 * th.sin();
                        }
                    }
                    total += re * re + im * im;
                    count += 1;
                }
            }
        }
        let n = count.max(1) as f64;
        (total / n, predicted / n)
    }

    #[test]
    fn power_law_noise_has_unit_variance_and_the_requested_spectral_slope() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // A non-square plane catches rows and columns mixed up.
        let (h, w) = (12, 20);
        for alpha in [0.0f32, 2.0, 3.0] {
            let m = NoiseModel {
                mean: 0.4,
                spread: 0.2,
                texture: Texture::PowerLaw(alpha),
                shared: 0.0,
            };
            let x = m.sample(200, [1, h, w], &mut rng).unwrap();
            let s = channel_stats(&x).unwrap()[0];
            assert!((s.0 - 0.4).abs() < 0.02, "α {alpha}: mean {}", s.0);
            assert!((s.1 - 0.2).abs() < 0.01, "α {alpha}: spread {}", s.1);
            // Power in the band around f = 1/8 against the band around f =
            // 1/2 (a factor ~4 in frequency): ~4^α for a 1/f^α spectrum.
            let z: Vec<f32> = x.to_vec().unwrap().iter().map(|v| v - 0.4).collect();
            let (low, want_low) = band_power(&z, h, w, 0.1, 0.15, alpha as f64);
            let (high, want_high) = band_power(&z, h, w, 0.45, 0.55, alpha as f64);
            let (ratio, want) = (low / high, want_low / want_high);
            assert!(
                alpha == 0.0 || want > 3f64.powf(alpha as f64),
                "bands too close"
            );
            assert!(
                (ratio / want).ln().abs() < 0.35,
                "α {alpha}: power ratio {ratio}, want {want}"
            );
        }
        // Each image gets its own brightness: per-image means spread out
        // for α = 2 (std of the DC term over the total ≈ 1/√Σ(f_min/f)²).
        let m = NoiseModel {
            mean: 0.0,
            spread: 1.0,
            texture: Texture::PowerLaw(2.0),
            shared: 0.0,
        };
        let x = m
            .sample(400, [1, h, w], &mut rng)
            .unwrap()
            .to_vec()
            .unwrap();
        let means: Vec<f64> = x
            .chunks(h * w)
            .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64)
            .collect();
        let sd = (means.iter().map(|m| m * m).sum::<f64>() / means.len() as f64).sqrt();
        assert!(sd > 0.15 && sd < 0.5, "std of the image means {sd}");
    }

    #[test]
    fn power_law_noise_depends_on_the_seed_not_on_the_thread_count() {
        let m = NoiseModel::natural_colour();
        // 70 images × 4 planes: several seed blocks and a partial last one.
        let draw = |threads: usize, seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                m.sample(70, [3, 8, 8], &mut rng).unwrap().to_vec().unwrap()
            })
        };
        let one = draw(1, 9);
        assert_eq!(one, draw(3, 9), "1 and 3 threads drew different noise");
        assert_ne!(one, draw(3, 10), "another seed, the same noise");
        // Every block was drawn: no plane left at zero (the mean, 0.47).
        for (i, p) in one.chunks(64).enumerate() {
            assert!(
                p.iter().any(|&v| (v - m.mean).abs() > 1e-3),
                "plane {i} is flat"
            );
        }
    }

    #[test]
    fn shared_noise_correlates_the_colour_channels_by_the_shared_fraction() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for texture in [Texture::White, Texture::PowerLaw(2.0)] {
            for shared in [0.0f32, 0.5, 0.9] {
                let m = NoiseModel {
                    mean: 0.5,
                    spread: 0.2,
                    texture,
                    shared,
                };
                let x = m.sample(64, [3, 16, 16], &mut rng).unwrap();
                let st = channel_stats(&x).unwrap();
                for (mean, sd) in &st {
                    assert!(
                        (mean - 0.5).abs() < 0.03 && (sd - 0.2).abs() < 0.02,
                        "{st:?}"
                    );
                }
                // Correlation of channels 0 and 2 over all pixels.
                let v = x.to_vec().unwrap();
                let (mut num, mut d0, mut d2) = (0f64, 0f64, 0f64);
                for img in v.chunks(3 * 256) {
                    for p in 0..256 {
                        let (a, b) = ((img[p] - 0.5) as f64, (img[512 + p] - 0.5) as f64);
                        num += a * b;
                        d0 += a * a;
                        d2 += b * b;
                    }
                }
                let corr = num / (d0 * d2).sqrt();
                assert!(
                    (corr - shared as f64).abs() < 0.08,
                    "{texture}: shared {shared}, correlation {corr}"
                );
            }
        }
    }

    #[test]
    fn the_random_setting_uses_photo_statistics_for_colour_and_calibrates_grey_levels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let grey = NoiseModel {
            mean: 0.1,
            spread: 0.5,
            texture: Texture::PowerLaw(3.0),
            shared: 0.0,
        };
        let norm1 = Normalization::new(&[0.5], &[0.5]);
        let obs = norm1
            .normalize(&grey.sample(32, [1, 8, 8], &mut rng).unwrap())
            .unwrap();
        let (got, d) =
            NoiseModel::for_random_setting(&Identity, &obs, [1, 8, 8], &norm1, &mut rng).unwrap();
        assert!(d.is_some());
        assert!((got.mean - 0.1).abs() < 1e-6 && got.spread == 0.5, "{got}");
        let norm3 = Normalization::new(&[0.5; 3], &[0.5; 3]);
        let colour = NoiseModel::natural_colour();
        let obs3 = norm3
            .normalize(&colour.sample(8, [3, 8, 8], &mut rng).unwrap())
            .unwrap();
        let (got3, d3) =
            NoiseModel::for_random_setting(&Identity, &obs3, [3, 8, 8], &norm3, &mut rng).unwrap();
        assert_eq!((got3, d3), (colour, None));
        assert_eq!(got3.texture, Texture::PowerLaw(3.0));
        assert!(got3.shared > 0.5);
    }

    #[test]
    fn noise_models_parse_print_and_refuse_bad_specs() {
        let m: NoiseModel = "0.45,0.25,powerlaw:2".parse().unwrap();
        assert_eq!(
            m,
            NoiseModel {
                mean: 0.45,
                spread: 0.25,
                texture: Texture::PowerLaw(2.0),
                shared: 0.0,
            }
        );
        assert_eq!(m.to_string().parse::<NoiseModel>().unwrap(), m);
        let c: NoiseModel = "0.45,0.25,powerlaw:2,0.9".parse().unwrap();
        assert_eq!((c.texture, c.shared), (Texture::PowerLaw(2.0), 0.9));
        assert_eq!(c.to_string().parse::<NoiseModel>().unwrap(), c);
        let b: NoiseModel = "0.1, 0.5, blur: 1.5".parse().unwrap();
        assert_eq!(b.texture, Texture::Blurred(1.5));
        assert_eq!(
            "0,1,white".parse::<NoiseModel>().unwrap().texture,
            Texture::White
        );
        for bad in [
            "0.45,0.25",
            "0.45,0.25,pink",
            "0.45,-1,white",
            "nan,0.2,white",
            "0.4,0.2,powerlaw:9",
            "0.4,0.2,blur:x",
            "0.4,0.2,white,1.5",
            "5,0.2,white",
            "0.4,0,white",
            "0.4,0.2,blur:64",
            "0.4,0.2,white,0.5,1",
        ] {
            let e = bad.parse::<NoiseModel>().unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
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
            texture: Texture::White,
            shared: 0.0,
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
