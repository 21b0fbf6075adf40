//! Total variation: how much neighbouring pixels differ. The white-box
//! attack adds λ·TV(x) to prefer smooth, natural-looking reconstructions.
//!
//! Two forms, both over every image and channel of x: [N, C, H, W].
//!
//! **Squared** (the authors' code, β = 2), two separate means:
//!   TV = mean_{i<H−1, j} (x[i+1,j] − x[i,j])²  +  mean_{i, j<W−1} (x[i,j+1] − x[i,j])².
//! Backward: each squared difference d² with d = x[q] − x[p] has
//! ∂d²/∂x[q] = 2d and ∂d²/∂x[p] = −2d. So every pixel collects +2d/n from
//! the difference that ends at it and −2d/n from the one that starts at it,
//! in each direction, n being that direction's count (N·C·(H−1)·W vertical,
//! N·C·H·(W−1) horizontal).
//!
//! **Power** (the paper's form, after Mahendran & Vedaldi):
//!   TV = mean_{i<H−1, j<W−1} (dh² + dv² + ε)^(β/2),  dh = x[i,j+1] − x[i,j], dv = x[i+1,j] − x[i,j].
//! Backward: with q = dh² + dv² + ε, d q^(β/2)/dq = (β/2)·q^(β/2−1), and
//! ∂q/∂x[i,j+1] = 2dh, ∂q/∂x[i+1,j] = 2dv, ∂q/∂x[i,j] = −2(dh + dv). So with
//! u = g·β·q^(β/2−1)/n, the right neighbour gets u·dh, the lower one u·dv and
//! the pixel itself −u·(dh + dv).

use super::{cpu, cuda, loss_device, scalar_shape, upstream};
use crate::autograd::BackwardOp;
use crate::cpu::simd::{self, SimdLevel};
use crate::cuda::exec::wrap;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Which total-variation formula [`tv_loss`] computes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TvKind {
    /// Mean squared vertical plus mean squared horizontal differences (β = 2,
    /// the authors' code).
    Squared,
    /// mean of (dh² + dv² + eps)^(beta/2) (the paper's formula).
    Power {
        /// The exponent β (> 0). β < 2 needs eps > 0: the gradient of
        /// q^(β/2) is infinite at q = 0, which every flat patch reaches.
        beta: f32,
        /// Added inside the power (≥ 0).
        eps: f32,
    },
}

impl TvKind {
    fn geom(self, planes: usize, h: usize, w: usize) -> cuda::TvGeom {
        cuda::TvGeom {
            planes,
            h,
            w,
            power: match self {
                TvKind::Squared => None,
                TvKind::Power { beta, eps } => Some((beta, eps)),
            },
        }
    }

    fn validate(self) -> Result<()> {
        if let TvKind::Power { beta, eps } = self {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(Error::invalid(
                    "tv_loss",
                    format!("beta = {beta}; expected a finite value > 0"),
                ));
            }
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(Error::invalid(
                    "tv_loss",
                    format!("eps = {eps}; expected a finite value >= 0"),
                ));
            }
            if beta < 2.0 && eps == 0.0 {
                return Err(Error::invalid(
                    "tv_loss",
                    format!(
                        "beta = {beta} < 2 with eps = 0: the gradient is infinite wherever \
                         neighbouring pixels are equal; use eps > 0 (e.g. 1e-8)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Total variation of x: [N, C, H, W] (H, W ≥ 2), as a rank-0 tensor.
pub fn tv_loss(x: &Tensor, kind: TvKind) -> Result<Tensor> {
    let (n, c, h, w) = x.shape().nchw("tv_loss")?;
    kind.validate()?;
    if h < 2 || w < 2 || n * c == 0 {
        return Err(Error::invalid(
            "tv_loss",
            format!("image of shape {:?} has no neighbouring pixels in both directions; expected N, C >= 1 and H, W >= 2", x.dims()),
        ));
    }
    if let Device::Cuda(d) = loss_device("tv_loss", &[x])? {
        let y = cuda::tv(d, x, &kind.geom(n * c, h, w))?;
        return Ok(Tensor::from_cuda_op(y, scalar_shape(), &[x], || {
            Box::new(TvBackward { x: x.clone(), kind })
        }));
    }
    let value = tv_forward(simd::level(), &x.cpu()?, n * c, h, w, kind) as f32;
    Ok(Tensor::from_cpu_op(
        vec![value],
        scalar_shape(),
        &[x],
        || Box::new(TvBackward { x: x.clone(), kind }),
    ))
}

/// The loss value (f64), planes in parallel when large.
pub(crate) fn tv_forward(
    lv: SimdLevel,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    kind: TvKind,
) -> f64 {
    use rayon::prelude::*;
    let par = x.len() >= cpu::PAR_THRESHOLD && planes > 1;
    match kind {
        TvKind::Squared => {
            let f = |p: &[f32]| cpu::tv_sq_plane(lv, p, h, w);
            let parts: Vec<(f64, f64)> = if par {
                x.par_chunks(h * w).map(f).collect()
            } else {
                x.chunks(h * w).map(f).collect()
            };
            let (sv, sh) = parts
                .iter()
                .fold((0.0, 0.0), |(a, b), &(v, hz)| (a + v, b + hz));
            sv / (planes * (h - 1) * w) as f64 + sh / (planes * h * (w - 1)) as f64
        }
        TvKind::Power { beta, eps } => {
            let f = |p: &[f32]| cpu::tv_pow_plane(lv, p, h, w, beta, eps);
            let parts: Vec<f64> = if par {
                x.par_chunks(h * w).map(f).collect()
            } else {
                x.chunks(h * w).map(f).collect()
            };
            parts.iter().sum::<f64>() / (planes * (h - 1) * (w - 1)) as f64
        }
    }
}

/// dL/dx for upstream gradient `g`, planes in parallel when large.
pub(crate) fn tv_grad(
    lv: SimdLevel,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    kind: TvKind,
    g: f32,
) -> Vec<f32> {
    use rayon::prelude::*;
    let par = x.len() >= cpu::PAR_THRESHOLD && planes > 1;
    // Zeroed: the power kernel accumulates (the squared one overwrites).
    let mut out = vec![0f32; x.len()];
    let hw = h * w;
    match kind {
        TvKind::Squared => {
            let cv = g / (planes * (h - 1) * w) as f32;
            let ch = g / (planes * h * (w - 1)) as f32;
            let f = |(o, p): (&mut [f32], &[f32])| cpu::tv_sq_grad_plane(lv, p, h, w, cv, ch, o);
            if par {
                out.par_chunks_mut(hw).zip(x.par_chunks(hw)).for_each(f);
            } else {
                out.chunks_mut(hw).zip(x.chunks(hw)).for_each(f);
            }
        }
        TvKind::Power { beta, eps } => {
            let s = g / (planes * (h - 1) * (w - 1)) as f32;
            let f = |(ra, rb): &mut (Vec<f32>, Vec<f32>), (o, p): (&mut [f32], &[f32])| {
                cpu::tv_pow_grad_plane(lv, p, h, w, beta, eps, s, o, ra, rb)
            };
            let init = || (vec![0f32; w], vec![0f32; w]);
            if par {
                out.par_chunks_mut(hw)
                    .zip(x.par_chunks(hw))
                    .for_each_init(init, f);
            } else {
                let mut scratch = init();
                for piece in out.chunks_mut(hw).zip(x.chunks(hw)) {
                    f(&mut scratch, piece);
                }
            }
        }
    }
    out
}

struct TvBackward {
    x: Tensor,
    kind: TvKind,
}

impl BackwardOp for TvBackward {
    fn name(&self) -> &'static str {
        "tv_loss"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs.first().copied().unwrap_or(false) {
            return Ok(vec![None]);
        }
        let (n, c, h, w) = self.x.shape().nchw("tv_loss")?;
        if let Device::Cuda(d) = loss_device("tv_loss backward", &[g, &self.x])? {
            let gx = cuda::tv_grad(d, &self.x, &self.kind.geom(n * c, h, w), g)?;
            return Ok(vec![Some(wrap(gx, self.x.shape().clone())?)]);
        }
        let g = upstream(g, "tv_loss")?;
        let out = tv_grad(simd::level(), &self.x.cpu()?, n * c, h, w, self.kind, g);
        Ok(vec![Some(Tensor::from_vec(out, self.x.shape().clone())?)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, rnd};
    use super::*;
    use crate::autograd::gradcheck;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;

    #[test]
    fn tv_values_by_hand() {
        // One 2×3 plane:
        //   0 1 3
        //   2 2 2
        // vertical d: 2, 1, −1 → mean of squares (4+1+1)/3 = 2
        // horizontal d: 1, 2, 0, 0 → (1+4)/4 = 1.25
        let x = Tensor::from_vec(vec![0.0, 1.0, 3.0, 2.0, 2.0, 2.0], [1, 1, 2, 3]).unwrap();
        let l = tv_loss(&x, TvKind::Squared).unwrap().item().unwrap();
        assert!((l - 3.25).abs() < 1e-6, "{l}");
        // Power, beta 1, eps 0.5: positions (0,0): dh 1, dv 2 → √5.5;
        // (0,1): dh 2, dv 1 → √5.5. Mean √5.5.
        let l = tv_loss(
            &x,
            TvKind::Power {
                beta: 1.0,
                eps: 0.5,
            },
        )
        .unwrap()
        .item()
        .unwrap();
        assert!((l - 5.5f32.sqrt()).abs() < 1e-6, "{l}");
    }

    #[test]
    fn tv_rejects_bad_input() {
        assert!(tv_loss(&Tensor::zeros([1, 1, 1, 5]), TvKind::Squared).is_err());
        assert!(tv_loss(&Tensor::zeros([4, 4]), TvKind::Squared).is_err());
        let x = Tensor::zeros([1, 1, 3, 3]);
        let e = tv_loss(
            &x,
            TvKind::Power {
                beta: 1.0,
                eps: 0.0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("eps"), "{e}");
        assert!(tv_loss(
            &x,
            TvKind::Power {
                beta: -1.0,
                eps: 1.0
            }
        )
        .is_err());
        assert!(tv_loss(
            &x,
            TvKind::Power {
                beta: 2.0,
                eps: f32::NAN
            }
        )
        .is_err());
    }

    #[test]
    fn tv_gradcheck_odd_non_square() {
        let x = Tensor::from_vec(rnd(2 * 3 * 5 * 7, 7, -1.0, 1.0), [2, 3, 5, 7]).unwrap();
        for kind in [
            TvKind::Squared,
            TvKind::Power {
                beta: 2.0,
                eps: 0.0,
            },
            TvKind::Power {
                beta: 1.0,
                eps: 0.1,
            },
            TvKind::Power {
                beta: 3.0,
                eps: 1e-3,
            },
        ] {
            let r = gradcheck(
                |v| tv_loss(&v[0], kind),
                std::slice::from_ref(&x),
                1e-2,
                2e-5,
                1e-2,
                210,
            )
            .unwrap();
            assert!(r.ok(), "{kind:?}: {r}");
        }
    }

    #[test]
    fn tv_kernels_match_reference_at_every_level() {
        // Sizes around the 16-lane width, and one big enough for the parallel path.
        for (planes, h, w) in [
            (1usize, 2usize, 2usize),
            (3, 5, 17),
            (2, 33, 31),
            (12, 80, 70),
        ] {
            let x = rnd(planes * h * w, (planes * h * w) as u64, -1.0, 1.0);
            for kind in [
                TvKind::Squared,
                TvKind::Power {
                    beta: 2.0,
                    eps: 1e-3,
                },
                TvKind::Power {
                    beta: 1.5,
                    eps: 1e-2,
                },
            ] {
                let (want, want_g) = match kind {
                    TvKind::Squared => (
                        reference::tv_squared(&x, planes, h, w),
                        reference::tv_squared_grad(&x, planes, h, w, 0.6),
                    ),
                    TvKind::Power { beta, eps } => (
                        reference::tv_power(&x, planes, h, w, beta as f64, eps as f64),
                        reference::tv_power_grad(&x, planes, h, w, beta as f64, eps as f64, 0.6),
                    ),
                };
                for lv in available_levels() {
                    let got = tv_forward(lv, &x, planes, h, w, kind);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs(),
                        "{lv} {kind:?} {planes}x{h}x{w}: {got} vs {want}"
                    );
                    let g = tv_grad(lv, &x, planes, h, w, kind, 0.6);
                    let scale = want_g.iter().fold(0f64, |m, v| m.max(v.abs()));
                    assert_close(
                        &g,
                        &want_g,
                        1e-5 * scale,
                        1e-4,
                        &format!("{lv} {kind:?} {planes}x{h}x{w} grad"),
                    );
                }
            }
        }
    }
}
