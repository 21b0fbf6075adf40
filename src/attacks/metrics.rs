//! Reconstruction quality: PSNR and SSIM, as the paper's authors computed
//! them and as the standard defines them. Every number printed by the tool
//! says which SSIM protocol it is.
//!
//! All metrics take images in [0, 1] pixel space, `[N, C, H, W]`; the
//! reconstruction is clipped to [0, 1] first (as the authors did).

use crate::error::{Error, Result};
use crate::ops::{ssim, SsimConfig};
use crate::tensor::Tensor;

/// PSNR of a perfect reconstruction is infinite; we report this cap instead
/// so averages stay finite.
pub const PSNR_CAP_DB: f64 = 100.0;

/// Per-image metric values.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageScores {
    /// 10·log10(1 / MSE) on clipped images, dB.
    pub psnr: f64,
    /// SSIM, the authors' protocol (7×7 uniform window, sample covariance,
    /// data range = max − min of the reconstruction, channel mean).
    pub ssim_paper: f64,
    /// SSIM, Wang et al. 2004 (11×11 Gaussian σ = 1.5, data range 1).
    pub ssim_standard: f64,
}

/// Mean and 95% confidence half-width (normal approximation, t for small n).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct MeanCi {
    /// Sample mean.
    pub mean: f64,
    /// Half-width of the 95% confidence interval (0 for one sample).
    pub ci95: f64,
}

impl MeanCi {
    /// From samples.
    pub fn of(v: &[f64]) -> MeanCi {
        let n = v.len();
        if n == 0 {
            return MeanCi {
                mean: f64::NAN,
                ci95: f64::NAN,
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return MeanCi { mean, ci95: 0.0 };
        }
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        MeanCi {
            mean,
            ci95: t95(n - 1) * (var / n as f64).sqrt(),
        }
    }
}

/// Two-sided 95% Student-t quantile for `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

fn clip01(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.clamp(0.0, 1.0)).collect()
}

/// PSNR of one image pair (slices of equal length, range 0 to 1; `recon` is clipped).
pub fn psnr(recon: &[f32], orig: &[f32]) -> f64 {
    let mse = recon
        .iter()
        .zip(orig)
        .map(|(&r, &o)| (r.clamp(0.0, 1.0) as f64 - o as f64).powi(2))
        .sum::<f64>()
        / orig.len().max(1) as f64;
    if mse <= 0.0 {
        PSNR_CAP_DB
    } else {
        (10.0 * (1.0 / mse).log10()).min(PSNR_CAP_DB)
    }
}

/// Scores every image of a batch.
pub fn score(recon: &Tensor, orig: &Tensor) -> Result<Vec<ImageScores>> {
    if recon.shape() != orig.shape() {
        return Err(Error::shape("score", orig.shape(), recon.shape()));
    }
    let (n, c, h, w) = orig.shape().nchw("score")?;
    let rv = clip01(&recon.to_vec()?);
    let ov = orig.to_vec()?;
    let per = c * h * w;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = &rv[i * per..(i + 1) * per];
        let o = &ov[i * per..(i + 1) * per];
        let rt = Tensor::from_slice(r, [1, c, h, w])?;
        let ot = Tensor::from_slice(o, [1, c, h, w])?;
        let (lo, hi) = r
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        // A constant reconstruction has range 0; the authors' formula then
        // divides by zero in C1/C2. Use a tiny positive range instead.
        let range = (hi - lo).max(1e-6);
        let ssim_paper =
            crate::autograd::no_grad(|| ssim(&ot, &rt, &SsimConfig::paper(range)))?.item()? as f64;
        let ssim_standard =
            crate::autograd::no_grad(|| ssim(&ot, &rt, &SsimConfig::standard()))?.item()? as f64;
        out.push(ImageScores {
            psnr: psnr(r, o),
            ssim_paper,
            ssim_standard,
        });
    }
    Ok(out)
}

/// Averages with confidence intervals.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// PSNR, dB.
    pub psnr: MeanCi,
    /// SSIM, paper protocol.
    pub ssim_paper: MeanCi,
    /// SSIM, standard protocol.
    pub ssim_standard: MeanCi,
    /// Images scored.
    pub n: usize,
}

/// Summarises per-image scores.
pub fn summarize(s: &[ImageScores]) -> Summary {
    let col = |f: fn(&ImageScores) -> f64| MeanCi::of(&s.iter().map(f).collect::<Vec<_>>());
    Summary {
        psnr: col(|x| x.psnr),
        ssim_paper: col(|x| x.ssim_paper),
        ssim_standard: col(|x| x.ssim_standard),
        n: s.len(),
    }
}
