//! SSIM, the structural similarity index (Wang, Bovik, Sheikh & Simoncelli,
//! 2004), as a differentiable loss/metric.
//!
//! ## Forward
//!
//! For every window position p (only positions where the whole window fits
//! in the image: "valid") and every image and channel, with window weights
//! w (summing to 1):
//!
//! ```text
//! μx = Σ w·x      σx² = k·(Σ w·x² − μx²)      σxy = k·(Σ w·x·y − μx·μy)
//! μy = Σ w·y      σy² = k·(Σ w·y² − μy²)      (k = NP/(NP−1) for the sample covariance, else 1)
//!
//!        (2μxμy + C1)(2σxy + C2)        A1·A2
//! S  =  ---------------------------  =  -----,   C1 = (K1·L)², C2 = (K2·L)²
//!       (μx² + μy² + C1)(σx² + σy² + C2)  B1·B2
//! ```
//!
//! and the result is the mean of S over all positions, channels and images.
//! scikit-image filters the whole image and then crops (win−1)/2 pixels at
//! each border before averaging; the cropped region is exactly the set of
//! valid positions, so the numbers agree (checked in the tests below).
//!
//! The window is separable (Gaussian and uniform alike), so the five
//! moments are filtered along rows, then along columns: 2·win multiplies per
//! pixel and moment instead of win². Inputs are centred on the plane mean
//! first, which changes no variance or covariance but keeps E[x²] − E[x]²
//! from cancelling away the f32 digits.
//!
//! ## Backward, in a minute
//!
//! Treat S as a function of five numbers per position (μx, μy, σx², σy², σxy):
//!
//! ```text
//! ∂S/∂μx  = 2μy·A2/(B1B2) − 2μx·S/B1        ∂S/∂σx² = ∂S/∂σy² = −S/B2
//! ∂S/∂μy  = 2μx·A2/(B1B2) − 2μy·S/B1        ∂S/∂σxy = 2·A1/(B1B2)
//! ```
//!
//! (product and quotient rules: A1 holds μ, A2 holds σxy, B1 holds μ, B2
//! holds the variances). Then how those five depend on one pixel x_q, whose
//! weight in window p is w_pq:
//!
//! ```text
//! ∂μx/∂x_q = w_pq      ∂σx²/∂x_q = 2k·w_pq·(x_q − μx)      ∂σxy/∂x_q = k·w_pq·(y_q − μy)
//! ```
//!
//! Chain rule, summing over every window p that contains q:
//!
//! ```text
//! dL/dx_q = Σ_p w_pq·[ P1(p) + x_q·P2(p) + y_q·P3(p) ]   with (s = g / number of positions)
//!   P2 = s·2k·∂S/∂σx²,   P3 = s·k·∂S/∂σxy,   P1 = s·∂S/∂μx − P2·μx − P3·μy
//! ```
//!
//! "Σ_p w_pq·M(p)" is the window filter run backwards (its adjoint): each
//! position scatters its value, times the weights, over the pixels of its
//! window. So the backward pass is: recompute the moments, form P1, P2, P3
//! per position, push the three maps through the adjoint filter (columns
//! then rows), and combine F1 + x·F2 + y·F3 per pixel. The gradient for y
//! is the same with x and y swapped (P1 uses ∂S/∂μy, μy, μx; P2, P3 are
//! shared), so asking for both costs four adjoint maps, not six.

use super::cpu::{self, SsimParams, SsimScratch};
use super::{cuda, loss_device, scalar_shape, upstream};
use crate::autograd::BackwardOp;
use crate::cpu::simd::{self, SimdLevel};
use crate::cuda::exec::wrap;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The SSIM window: its weights, summed over the window, are 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SsimWindow {
    /// Gaussian weights exp(−d²/2σ²) over a size×size window (size odd).
    /// scikit-image's `gaussian_weights=True` with `sigma` uses
    /// size = 2·int(3.5σ + 0.5) + 1, i.e. 11 for σ = 1.5.
    Gaussian {
        /// Side of the square window, odd, ≥ 3.
        size: usize,
        /// Standard deviation in pixels, > 0.
        sigma: f32,
    },
    /// Equal weights over a size×size window (size odd).
    Uniform {
        /// Side of the square window, odd, ≥ 3.
        size: usize,
    },
}

/// Everything that defines which SSIM a number is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SsimConfig {
    /// The window shape.
    pub window: SsimWindow,
    /// L, the dynamic range of the pixel values (C1 = (K1·L)², C2 = (K2·L)²).
    pub data_range: f32,
    /// K1 (stabilises the luminance term).
    pub k1: f32,
    /// K2 (stabilises the contrast/structure term).
    pub k2: f32,
    /// Scale variances and covariance by NP/(NP − 1), NP = pixels in the
    /// window (an unbiased estimate; scikit-image's `use_sample_covariance`).
    pub sample_covariance: bool,
}

impl SsimConfig {
    /// The standard SSIM of Wang et al. 2004: 11×11 Gaussian window,
    /// σ = 1.5, data range 1, K1 = 0.01, K2 = 0.03, population covariance.
    pub fn standard() -> Self {
        SsimConfig {
            window: SsimWindow::Gaussian {
                size: 11,
                sigma: 1.5,
            },
            data_range: 1.0,
            k1: 0.01,
            k2: 0.03,
            sample_covariance: false,
        }
    }

    /// The SSIM the paper's numbers were computed with: scikit-image's old
    /// `compare_ssim` defaults (7×7 uniform window, sample covariance,
    /// K1 = 0.01, K2 = 0.03). The authors passed data_range = max − min of
    /// the reconstruction, so the caller computes and passes it.
    pub fn paper(data_range: f32) -> Self {
        SsimConfig {
            window: SsimWindow::Uniform { size: 7 },
            data_range,
            k1: 0.01,
            k2: 0.03,
            sample_covariance: true,
        }
    }

    /// The side of the (square) window.
    pub fn window_size(&self) -> usize {
        match self.window {
            SsimWindow::Gaussian { size, .. } | SsimWindow::Uniform { size } => size,
        }
    }

    /// Checks every parameter, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let size = self.window_size();
        if size < 3 || size.is_multiple_of(2) {
            return Err(Error::invalid(
                "ssim",
                format!("window size {size}; expected an odd size >= 3"),
            ));
        }
        if let SsimWindow::Gaussian { sigma, .. } = self.window {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(Error::invalid(
                    "ssim",
                    format!("Gaussian sigma = {sigma}; expected a finite value > 0"),
                ));
            }
        }
        for (name, v) in [
            ("data_range", self.data_range),
            ("k1", self.k1),
            ("k2", self.k2),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(
                    "ssim",
                    format!("{name} = {v}; expected a finite value > 0"),
                ));
            }
        }
        Ok(())
    }

    /// The 1-D window weights (the 2-D window is their outer product),
    /// normalised to sum 1. Computed in f64 as scipy does, then rounded.
    pub fn weights(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let w: Vec<f64> = match self.window {
            SsimWindow::Uniform { size } => vec![1.0; size],
            SsimWindow::Gaussian { size, sigma } => {
                let r = (size / 2) as f64;
                let s2 = sigma as f64 * sigma as f64;
                (0..size)
                    .map(|t| (-0.5 * (t as f64 - r).powi(2) / s2).exp())
                    .collect()
            }
        };
        let total: f64 = w.iter().sum();
        Ok(w.iter().map(|v| (v / total) as f32).collect())
    }

    fn params(&self) -> SsimParams {
        let np = (self.window_size() * self.window_size()) as f32;
        let l = self.data_range;
        SsimParams {
            cov_norm: if self.sample_covariance {
                np / (np - 1.0)
            } else {
                1.0
            },
            c1: (self.k1 * l) * (self.k1 * l),
            c2: (self.k2 * l) * (self.k2 * l),
        }
    }
}

impl std::fmt::Display for SsimConfig {
    /// A description for reports, so every SSIM number says which SSIM it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = self.window_size();
        match self.window {
            SsimWindow::Gaussian { sigma, .. } => {
                write!(f, "SSIM [{size}x{size} Gaussian sigma={sigma}")?
            }
            SsimWindow::Uniform { .. } => write!(f, "SSIM [{size}x{size} uniform")?,
        }
        write!(
            f,
            ", data_range={}, K1={}, K2={}, {} covariance]",
            self.data_range,
            self.k1,
            self.k2,
            if self.sample_covariance {
                "sample"
            } else {
                "population"
            }
        )
    }
}

/// Shapes checked, config validated: what the kernels need.
struct Plan {
    n: usize,
    planes: usize,
    h: usize,
    w: usize,
    win: Vec<f32>,
    prm: SsimParams,
    /// Valid positions per plane.
    positions: usize,
    /// Where both images live.
    device: Device,
}

impl Plan {
    fn gpu(&self) -> cuda::SsimGeom<'_> {
        cuda::SsimGeom {
            planes: self.planes,
            h: self.h,
            w: self.w,
            win: &self.win,
            c1: self.prm.c1,
            c2: self.prm.c2,
            cov_norm: self.prm.cov_norm,
        }
    }
}

fn plan(a: &Tensor, b: &Tensor, cfg: &SsimConfig) -> Result<Plan> {
    a.check_same_shape(b, "ssim")?;
    let (n, c, h, w) = a.shape().nchw("ssim")?;
    let win = cfg.weights()?;
    let ws = win.len();
    if n * c == 0 {
        return Err(Error::invalid(
            "ssim",
            format!("empty batch of shape {:?}", a.dims()),
        ));
    }
    if h < ws || w < ws {
        return Err(Error::invalid(
            "ssim",
            format!(
                "images of {h}x{w} pixels are smaller than the {ws}x{ws} SSIM window; \
                 use a smaller window (e.g. SsimConfig::paper's 7x7) or larger images"
            ),
        ));
    }
    Ok(Plan {
        n,
        planes: n * c,
        h,
        w,
        prm: cfg.params(),
        positions: (h + 1 - ws) * (w + 1 - ws),
        win,
        device: loss_device("ssim", &[a, b])?,
    })
}

/// Work (elements × window) above which planes are processed in parallel.
const PAR_WORK: usize = 1 << 16;

/// Σ of the SSIM map of every plane, in plane order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plane_sums(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    win: &[f32],
    prm: SsimParams,
) -> Vec<f64> {
    use rayon::prelude::*;
    let hw = h * w;
    let ws = win.len();
    let f = |sc: &mut SsimScratch, (pa, pb): (&[f32], &[f32])| {
        cpu::ssim_plane_sum(lv, pa, pb, h, w, win, prm, sc)
    };
    if planes > 1 && a.len() * ws >= PAR_WORK {
        a.par_chunks(hw)
            .zip(b.par_chunks(hw))
            .map_init(|| SsimScratch::new(h, w, ws, false), f)
            .collect()
    } else {
        let mut sc = SsimScratch::new(h, w, ws, false);
        a.chunks(hw)
            .zip(b.chunks(hw))
            .map(|p| f(&mut sc, p))
            .collect()
    }
}

/// One plane's gradient outputs: (of a, of b), each present only if asked for.
type PlaneGrads<'a> = (Option<&'a mut [f32]>, Option<&'a mut [f32]>);

/// Gradients of `s · Σ_planes Σ_positions S` w.r.t. a and b (each only if asked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn grads(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    win: &[f32],
    prm: SsimParams,
    s: f32,
    need_a: bool,
    need_b: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    use rayon::prelude::*;
    let hw = h * w;
    let ws = win.len();
    let mut ga = need_a.then(|| vec![0f32; a.len()]);
    let mut gb = need_b.then(|| vec![0f32; b.len()]);
    // One (Option<&mut plane of ga>, Option<&mut plane of gb>) per plane.
    fn split(g: &mut Option<Vec<f32>>, hw: usize, planes: usize) -> Vec<Option<&mut [f32]>> {
        match g {
            Some(v) => v.chunks_mut(hw).map(Some).collect(),
            None => (0..planes).map(|_| None).collect(),
        }
    }
    let (pa, pb) = (split(&mut ga, hw, planes), split(&mut gb, hw, planes));
    let f = |sc: &mut SsimScratch, (i, (oa, ob)): (usize, PlaneGrads)| {
        let range = i * hw..(i + 1) * hw;
        cpu::ssim_plane_grad(
            lv,
            &a[range.clone()],
            &b[range],
            h,
            w,
            win,
            prm,
            s,
            sc,
            oa,
            ob,
        )
    };
    if planes > 1 && a.len() * ws >= PAR_WORK {
        pa.into_par_iter()
            .zip(pb.into_par_iter())
            .enumerate()
            .for_each_init(|| SsimScratch::new(h, w, ws, true), f);
    } else {
        let mut sc = SsimScratch::new(h, w, ws, true);
        for item in pa.into_iter().zip(pb).enumerate() {
            f(&mut sc, item);
        }
    }
    (ga, gb)
}

/// Mean SSIM of a and b ([N, C, H, W], same shape) over images, channels and
/// valid window positions, as a rank-0 tensor. Differentiable w.r.t. both
/// (each gradient computed only if that side tracks one); 1 − ssim is a loss.
pub fn ssim(a: &Tensor, b: &Tensor, cfg: &SsimConfig) -> Result<Tensor> {
    let p = plan(a, b, cfg)?;
    if let Device::Cuda(d) = p.device {
        let y = cuda::ssim(d, a, b, &p.gpu())?;
        return Ok(Tensor::from_cuda_op(y, scalar_shape(), &[a, b], || {
            Box::new(SsimBackward {
                a: a.clone(),
                b: b.clone(),
                cfg: *cfg,
            })
        }));
    }
    let sums = plane_sums(
        simd::level(),
        &a.cpu()?,
        &b.cpu()?,
        p.planes,
        p.h,
        p.w,
        &p.win,
        p.prm,
    );
    let value = sums.iter().sum::<f64>() / (p.planes * p.positions) as f64;
    Ok(Tensor::from_cpu_op(
        vec![value as f32],
        scalar_shape(),
        &[a, b],
        || {
            Box::new(SsimBackward {
                a: a.clone(),
                b: b.clone(),
                cfg: *cfg,
            })
        },
    ))
}

/// SSIM of each image (mean over its channels and valid positions); not
/// differentiable. For per-image reports and for the paper's protocol, where
/// each image has its own data range (call once per image then).
pub fn ssim_per_image(a: &Tensor, b: &Tensor, cfg: &SsimConfig) -> Result<Vec<f32>> {
    let p = plan(a, b, cfg)?;
    if let Device::Cuda(_) = p.device {
        // A report metric, not a training step: computed on the host.
        return ssim_per_image(&a.to_device(Device::Cpu)?, &b.to_device(Device::Cpu)?, cfg);
    }
    let sums = plane_sums(
        simd::level(),
        &a.cpu()?,
        &b.cpu()?,
        p.planes,
        p.h,
        p.w,
        &p.win,
        p.prm,
    );
    let per = p.planes / p.n;
    Ok(sums
        .chunks(per)
        .map(|c| (c.iter().sum::<f64>() / (per * p.positions) as f64) as f32)
        .collect())
}

struct SsimBackward {
    a: Tensor,
    b: Tensor,
    cfg: SsimConfig,
}

impl BackwardOp for SsimBackward {
    fn name(&self) -> &'static str {
        "ssim"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let need_a = needs.first().copied().unwrap_or(false);
        let need_b = needs.get(1).copied().unwrap_or(false);
        if !need_a && !need_b {
            return Ok(vec![None, None]);
        }
        let p = plan(&self.a, &self.b, &self.cfg)?;
        if let Device::Cuda(d) = loss_device("ssim backward", &[g, &self.a])? {
            let (ga, gb) = cuda::ssim_grad(d, &self.a, &self.b, &p.gpu(), g, need_a, need_b)?;
            let shape = self.a.shape();
            return Ok(vec![
                ga.map(|b| wrap(b, shape.clone())).transpose()?,
                gb.map(|b| wrap(b, shape.clone())).transpose()?,
            ]);
        }
        let s = upstream(g, "ssim")? / (p.planes * p.positions) as f32;
        let (ga, gb) = grads(
            simd::level(),
            &self.a.cpu()?,
            &self.b.cpu()?,
            p.planes,
            p.h,
            p.w,
            &p.win,
            p.prm,
            s,
            need_a,
            need_b,
        );
        let wrap = |v: Option<Vec<f32>>| -> Result<Option<Tensor>> {
            v.map(|v| Tensor::from_vec(v, self.a.shape().clone()))
                .transpose()
        };
        Ok(vec![wrap(ga)?, wrap(gb)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, rnd};
    use super::*;
    use crate::autograd::gradcheck;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;

    /// The two test images, by a formula both Rust and numpy evaluate in f64
    /// and round to f32 (see `ssim_matches_scikit_image`).
    fn formula_images() -> (Tensor, Tensor) {
        let (n_, c_, h_, w_) = (2, 3, 16, 19);
        let mut a = Vec::new();
        let mut b = Vec::new();
        for n in 0..n_ {
            for c in 0..c_ {
                for i in 0..h_ {
                    for j in 0..w_ {
                        let (n, c, i, j) = (n as f64, c as f64, i as f64, j as f64);
                        a.push((0.5 + 0.4 * (0.7 * i + 1.3 * j + c + 0.5 * n).sin()) as f32);
                        b.push(
                            (0.5 + 0.3 * (0.6 * i + 1.4 * j + c + 0.5 * n + 0.3).sin()
                                + 0.15 * (0.9 * i * j / 7.0 + n).cos())
                                as f32,
                        );
                    }
                }
            }
        }
        (
            Tensor::from_vec(a, [n_, c_, h_, w_]).unwrap(),
            Tensor::from_vec(b, [n_, c_, h_, w_]).unwrap(),
        )
    }

    /// scikit-image 0.26.0, numpy, Python 3.11:
    ///
    /// ```python
    /// import numpy as np
    /// from skimage.metrics import structural_similarity as ssim
    /// N, C, H, W = 2, 3, 16, 19
    /// n, c, i, j = np.meshgrid(np.arange(N), np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    /// a = (0.5 + 0.4 * np.sin(0.7 * i + 1.3 * j + c + 0.5 * n)).astype(np.float32).astype(np.float64)
    /// b = (0.5 + 0.3 * np.sin(0.6 * i + 1.4 * j + c + 0.5 * n + 0.3)
    ///      + 0.15 * np.cos(0.9 * i * j / 7.0 + n)).astype(np.float32).astype(np.float64)
    /// for k in range(N):
    ///     std = ssim(a[k], b[k], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    ///                data_range=1.0, channel_axis=0)
    ///     dr = a[k].max() - a[k].min()
    ///     pap = ssim(a[k], b[k], win_size=7, use_sample_covariance=True, data_range=dr, channel_axis=0)
    ///     print(k, repr(float(std)), repr(float(pap)), repr(float(dr)))
    /// ```
    /// output:
    /// ```text
    /// 0 0.7791483046367259 0.7146512177303362 0.7999935522675514
    /// 1 0.7943772606663496 0.7213906833399287 0.7999935522675514
    /// ```
    #[test]
    fn ssim_matches_scikit_image() {
        // Observed agreement is ~1e-8 (f32 output); 1e-5 leaves room for libm differences.
        let standard = [0.7791483046367259f64, 0.7943772606663496];
        let paper = [0.7146512177303362f64, 0.7213906833399287];
        let (a, b) = formula_images();
        let per = ssim_per_image(&a, &b, &SsimConfig::standard()).unwrap();
        for (k, (&got, &want)) in per.iter().zip(&standard).enumerate() {
            assert!(
                (got as f64 - want).abs() < 1e-5,
                "standard image {k}: {got} vs {want}"
            );
        }
        let mean = ssim(&a, &b, &SsimConfig::standard())
            .unwrap()
            .item()
            .unwrap() as f64;
        assert!(
            (mean - (standard[0] + standard[1]) / 2.0).abs() < 1e-5,
            "{mean}"
        );
        let av = a.to_vec().unwrap();
        let bv = b.to_vec().unwrap();
        let img = av.len() / 2;
        for k in 0..2 {
            let ai = &av[k * img..(k + 1) * img];
            let bi = &bv[k * img..(k + 1) * img];
            let max = ai.iter().fold(f32::MIN, |m, &v| m.max(v));
            let min = ai.iter().fold(f32::MAX, |m, &v| m.min(v));
            let ta = Tensor::from_slice(ai, [1, 3, 16, 19]).unwrap();
            let tb = Tensor::from_slice(bi, [1, 3, 16, 19]).unwrap();
            let got = ssim(&ta, &tb, &SsimConfig::paper(max - min))
                .unwrap()
                .item()
                .unwrap() as f64;
            assert!(
                (got - paper[k]).abs() < 1e-5,
                "paper image {k}: {got} vs {}",
                paper[k]
            );
        }
    }

    #[test]
    fn ssim_of_identical_images_is_one() {
        let x = Tensor::from_vec(rnd(2 * 12 * 13, 3, 0.0, 1.0), [2, 1, 12, 13]).unwrap();
        for cfg in [SsimConfig::standard(), SsimConfig::paper(1.0)] {
            let v = ssim(&x, &x, &cfg).unwrap().item().unwrap();
            assert!((v - 1.0).abs() < 1e-5, "{cfg}: {v}");
        }
    }

    #[test]
    fn ssim_rejects_bad_input() {
        let small = Tensor::zeros([1, 1, 10, 12]);
        let e = ssim(&small, &small, &SsimConfig::standard())
            .unwrap_err()
            .to_string();
        assert!(e.contains("10x12") && e.contains("11x11"), "{e}");
        let x = Tensor::zeros([1, 1, 12, 12]);
        let mut cfg = SsimConfig::standard();
        cfg.window = SsimWindow::Uniform { size: 4 };
        assert!(ssim(&x, &x, &cfg).unwrap_err().to_string().contains("odd"));
        assert!(ssim(&x, &x, &SsimConfig::paper(0.0)).is_err());
        assert!(ssim(&x, &Tensor::zeros([1, 1, 12, 13]), &SsimConfig::paper(1.0)).is_err());
        assert!(ssim(
            &Tensor::zeros([12, 12]),
            &Tensor::zeros([12, 12]),
            &SsimConfig::paper(1.0)
        )
        .is_err());
    }

    #[test]
    fn ssim_describes_itself() {
        assert_eq!(
            SsimConfig::standard().to_string(),
            "SSIM [11x11 Gaussian sigma=1.5, data_range=1, K1=0.01, K2=0.03, population covariance]"
        );
        assert!(SsimConfig::paper(0.8).to_string().contains("7x7 uniform"));
    }

    #[test]
    fn ssim_gaussian_weights_match_scipy() {
        // scipy.ndimage._filters._gaussian_kernel1d(1.5, 0, 5)[5] = 0.26601172486179436 (sums to 1).
        let w = SsimConfig::standard().weights().unwrap();
        assert_eq!(w.len(), 11);
        assert!(
            (w[5] as f64 - 0.266_011_724_861_794_4).abs() < 1e-6,
            "{}",
            w[5]
        );
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ssim_gradcheck() {
        // Odd, non-square planes; a 3x3 uniform window with the sample
        // covariance (the paper's kind) and a 5x5 Gaussian (the standard
        // kind). Central differences in f32 agree to ~2e-6 here, against
        // gradients up to ~6e-2.
        let a = Tensor::from_vec(rnd(2 * 2 * 7 * 9, 11, 0.0, 1.0), [2, 2, 7, 9]).unwrap();
        let b = Tensor::from_vec(rnd(2 * 2 * 7 * 9, 12, 0.0, 1.0), [2, 2, 7, 9]).unwrap();
        for cfg in [
            SsimConfig {
                window: SsimWindow::Uniform { size: 3 },
                ..SsimConfig::paper(1.0)
            },
            SsimConfig {
                window: SsimWindow::Gaussian {
                    size: 5,
                    sigma: 1.0,
                },
                ..SsimConfig::standard()
            },
        ] {
            let r = gradcheck(
                |v| ssim(&v[0], &v[1], &cfg),
                &[a.clone(), b.clone()],
                1e-2,
                2e-5,
                1e-2,
                252,
            )
            .unwrap();
            assert!(r.ok(), "{cfg}: {r}");
        }
    }

    #[test]
    fn ssim_gradient_only_where_needed() {
        let a = Tensor::from_vec(rnd(8 * 8, 13, 0.0, 1.0), [1, 1, 8, 8]).unwrap();
        let b = Tensor::from_vec(rnd(8 * 8, 14, 0.0, 1.0), [1, 1, 8, 8]).unwrap();
        let cfg = SsimConfig::paper(1.0);
        let ag = a.requires_grad();
        let g = ssim(&ag, &b, &cfg).unwrap().backward().unwrap();
        assert_eq!(g.len(), 1);
        assert!(g.get(&ag).is_some());
        // Frozen both: no graph at all.
        assert!(ssim(&a, &b, &cfg).unwrap().grad_fn().is_none());
    }

    #[test]
    fn ssim_kernels_match_reference_at_every_level() {
        // (planes, h, w, config): small odd planes, a 16-lane-crossing width,
        // and enough work for the parallel path.
        let cases = [
            (1usize, 7usize, 9usize, SsimConfig::paper(1.0)),
            (3, 13, 35, SsimConfig::standard()),
            (
                4,
                20,
                17,
                SsimConfig {
                    window: SsimWindow::Gaussian {
                        size: 5,
                        sigma: 0.8,
                    },
                    sample_covariance: true,
                    ..SsimConfig::paper(2.0)
                },
            ),
            (30, 32, 32, SsimConfig::paper(0.9)),
        ];
        for (planes, h, w, cfg) in cases {
            let a = rnd(planes * h * w, 100 + h as u64, 0.0, 1.0);
            // b correlated with a, so the SSIM values are not all near 0.
            let noise = rnd(planes * h * w, 200 + w as u64, -0.2, 0.2);
            let b: Vec<f32> = a
                .iter()
                .zip(&noise)
                .map(|(x, e)| 0.8 * x + e + 0.1)
                .collect();
            let win = cfg.weights().unwrap();
            let prm = cfg.params();
            let win64: Vec<f64> = win.iter().map(|&v| v as f64).collect();
            let (c1, c2, k) = (prm.c1 as f64, prm.c2 as f64, prm.cov_norm as f64);
            let want = reference::ssim(&a, &b, planes, h, w, &win64, k, c1, c2);
            let positions = (planes * (h + 1 - win.len()) * (w + 1 - win.len())) as f64;
            let (wa, wb) = reference::ssim_grad(&a, &b, planes, h, w, &win64, k, c1, c2, 0.5);
            let scale = wa.iter().chain(&wb).fold(0f64, |m, v| m.max(v.abs()));
            for lv in available_levels() {
                let sums = plane_sums(lv, &a, &b, planes, h, w, &win, prm);
                let got = sums.iter().sum::<f64>() / positions;
                assert!(
                    (got - want).abs() < 2e-5,
                    "{lv} {cfg} {planes}x{h}x{w}: {got} vs {want}"
                );
                let s = (0.5 / positions) as f32;
                let what = format!("{lv} {cfg} {planes}x{h}x{w}");
                let (ga, gb) = grads(lv, &a, &b, planes, h, w, &win, prm, s, true, true);
                assert_close(&ga.unwrap(), &wa, 2e-4 * scale, 2e-3, &format!("{what} ga"));
                assert_close(&gb.unwrap(), &wb, 2e-4 * scale, 2e-3, &format!("{what} gb"));
                let (ga, none) = grads(lv, &a, &b, planes, h, w, &win, prm, s, true, false);
                assert!(none.is_none());
                assert_close(
                    &ga.unwrap(),
                    &wa,
                    2e-4 * scale,
                    2e-3,
                    &format!("{what} ga only"),
                );
                let (none, gb) = grads(lv, &a, &b, planes, h, w, &win, prm, s, false, true);
                assert!(none.is_none());
                assert_close(
                    &gb.unwrap(),
                    &wb,
                    2e-4 * scale,
                    2e-3,
                    &format!("{what} gb only"),
                );
            }
        }
    }
}
