//! Exact training of a *linear* inverse network by least squares.
//!
//! Some of the authors' decoders are a single stride-1 convolution (MNIST
//! conv1: Conv 8→1 k5 p4; CIFAR conv11: ConvT 64→3 k3 p1). Such a g is
//! linear in its parameters, so the black-box objective
//!
//! ```text
//!   min_θ  Σ_images Σ_pixels ( g_θ(f1(x))[pixel] − x[pixel] )²
//! ```
//!
//! is ordinary least squares. Each output pixel of output channel o is a dot
//! product of one *patch* φ — the k×k window of every feature channel
//! around that pixel, plus a 1 for the bias — with that channel's weights
//! θ_o. Stacking the patches of all pixels of all training images as rows
//! of P and the target pixels as Y, the optimum solves the normal equations
//!
//! ```text
//!   (PᵀP) θ = PᵀY        (one D×D system, D = C_in·k·k + 1, shared by every o)
//! ```
//!
//! We never hold P whole: PᵀP and PᵀY are summed batch by batch (a GEMM
//! each, accumulated in f64), then solved by Cholesky in f64. This is the
//! exact minimiser gradient descent only approaches: on MNIST conv1 the
//! authors' decoder reaches 43.0 dB solved exactly against 39.0 dB after
//! 180k Adam presentations (the paper: 39.64 dB).

use crate::attacks::blackbox::QueryOracle;
use crate::cpu::gemm::{gemm, MatRef};
use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential};
use crate::tensor::Tensor;
use crate::train::TrainRng;

/// A single stride-1 convolution, seen as the equivalent conv2d.
struct LinearConv {
    cin: usize,
    cout: usize,
    k: usize,
    /// Zero padding of the equivalent conv2d.
    pad: usize,
    /// The layer is a transposed conv (weights stored flipped and swapped).
    transposed: bool,
    /// The layer's parameters (shared storage: writing them updates g).
    weight: Tensor,
    bias: Tensor,
}

fn linear_conv(g: &Sequential) -> Option<LinearConv> {
    let [(_, layer)] = g.layers() else {
        return None;
    };
    match layer {
        Layer::Conv2d {
            weight,
            bias: Some(bias),
            params,
        } => {
            let d = weight.dims();
            (params.stride == [1, 1] && params.padding[0] == params.padding[1] && d[2] == d[3])
                .then(|| LinearConv {
                    cin: d[1],
                    cout: d[0],
                    k: d[2],
                    pad: params.padding[0],
                    transposed: false,
                    weight: weight.clone(),
                    bias: bias.clone(),
                })
        }
        Layer::ConvTranspose2d {
            weight,
            bias: Some(bias),
            params,
        } => {
            let d = weight.dims();
            let p = params.padding[0];
            // stride 1: ConvT(pad p) = conv2d(pad k−1−p) with the kernel flipped.
            (params.stride == [1, 1]
                && params.output_padding == [0, 0]
                && params.padding[0] == params.padding[1]
                && d[2] == d[3]
                && p < d[2])
                .then(|| LinearConv {
                    cin: d[0],
                    cout: d[1],
                    k: d[2],
                    pad: d[2] - 1 - p,
                    transposed: true,
                    weight: weight.clone(),
                    bias: bias.clone(),
                })
        }
        _ => None,
    }
}

/// True when `g` is one stride-1 convolution (or transposed convolution)
/// with a bias, which [`fit_exact`] can solve.
pub fn is_linear(g: &Sequential) -> bool {
    linear_conv(g).is_some()
}

/// Images per accumulation step: a patch matrix of 32 MNIST images is
/// 25k rows × 201 (20 MB).
const BATCH: usize = 32;

/// Fits a linear `g` exactly on the first `n` attacker images produced by
/// `images` (normalised space; `rng` drives noise generators). Returns the
/// mean squared error per pixel on those images and the ridge used.
pub fn fit_exact(
    oracle: &dyn QueryOracle,
    g: &Sequential,
    n: usize,
    images: &mut dyn FnMut(&[usize], &mut TrainRng) -> Result<Tensor>,
    rng: &mut TrainRng,
) -> Result<ExactFit> {
    let lc = linear_conv(g).ok_or_else(|| {
        Error::invalid(
            "exact inverse fit",
            "the inverse network is not a single stride-1 convolution with a bias",
        )
    })?;
    if n == 0 {
        return Err(Error::invalid("exact inverse fit", "no training images"));
    }
    let (cin, cout, k, pad) = (lc.cin, lc.cout, lc.k, lc.pad);
    let d = cin * k * k + 1;
    let mut gram = vec![0f64; d * d];
    let mut rhs = vec![0f64; d * cout];
    let (mut yy, mut rows_total) = (0f64, 0usize);
    let all: Vec<usize> = (0..n).collect();
    let mut patches: Vec<f32> = Vec::new();
    let mut targets: Vec<f32> = Vec::new();
    let mut g32 = vec![0f32; d * d];
    let mut r32 = vec![0f32; d * cout];
    for idx in all.chunks(BATCH) {
        let x = images(idx, rng)?;
        let v = oracle.query(&x)?;
        let (xd, vd) = (x.dims().to_vec(), v.dims().to_vec());
        let [b, xc, h, w] = xd[..] else {
            return Err(Error::invalid(
                "exact inverse fit",
                format!("images of shape {xd:?}"),
            ));
        };
        let [_, vc, fh, fw] = vd[..] else {
            return Err(Error::invalid(
                "exact inverse fit",
                format!("features of shape {vd:?}"),
            ));
        };
        if vc != cin || xc != cout || fh + 2 * pad + 1 != h + k || fw + 2 * pad + 1 != w + k {
            return Err(Error::invalid(
                "exact inverse fit",
                format!("the decoder maps features {vd:?} to images of another shape than {xd:?}"),
            ));
        }
        let (xv, vv) = (x.to_vec()?, v.to_vec()?);
        let rows = b * h * w;
        patches.clear();
        patches.resize(rows * d, 0.0);
        targets.clear();
        targets.resize(rows * cout, 0.0);
        for i in 0..b {
            for oy in 0..h {
                for ox in 0..w {
                    let row = (i * h + oy) * w + ox;
                    let p = &mut patches[row * d..(row + 1) * d];
                    for c in 0..cin {
                        let plane = &vv[(i * cin + c) * fh * fw..(i * cin + c + 1) * fh * fw];
                        for a in 0..k {
                            let fy = (oy + a) as isize - pad as isize;
                            if fy < 0 || fy >= fh as isize {
                                continue;
                            }
                            for bb in 0..k {
                                let fx = (ox + bb) as isize - pad as isize;
                                if fx >= 0 && fx < fw as isize {
                                    p[(c * k + a) * k + bb] = plane[fy as usize * fw + fx as usize];
                                }
                            }
                        }
                    }
                    p[d - 1] = 1.0;
                    for o in 0..cout {
                        let t = xv[((i * cout + o) * h + oy) * w + ox];
                        targets[row * cout + o] = t;
                        yy += (t as f64) * (t as f64);
                    }
                }
            }
        }
        // PᵀP and PᵀY for this batch in f32 (a few ten thousand rows),
        // summed across batches in f64.
        let pm = MatRef::new(&patches, d, 1);
        gemm(d, d, rows, pm.t(), pm, &mut g32, d, false);
        gemm(
            d,
            cout,
            rows,
            pm.t(),
            MatRef::new(&targets, cout, 1),
            &mut r32,
            cout,
            false,
        );
        for (acc, v) in gram.iter_mut().zip(&g32) {
            *acc += *v as f64;
        }
        for (acc, v) in rhs.iter_mut().zip(&r32) {
            *acc += *v as f64;
        }
        rows_total += rows;
    }
    // Features are often rank-deficient: CIFAR conv11's 64 channels at a
    // position are linear in a 3×3×3 patch, so PᵀP (577×577) has rank far
    // below 577, and f32 rounding in the per-batch GEMMs leaves it slightly
    // indefinite. A ridge settles the null space (any solution there gives
    // the same reconstructions, since observed features lie in the same
    // span); start tiny and grow it only until the factorisation succeeds.
    let mean_diag = (0..d).map(|i| gram[i * d + i]).sum::<f64>() / d as f64;
    let mut solved = None;
    for rel in [1e-9, 1e-7, 1e-5, 1e-3] {
        let ridge = (rel * mean_diag).max(1e-12);
        let mut a = gram.clone();
        for i in 0..d {
            a[i * d + i] += ridge;
        }
        if let Ok(theta) = cholesky_solve(&mut a, d, &rhs, cout) {
            solved = Some((theta, rel));
            break;
        }
    }
    let Some((theta, ridge)) = solved else {
        return Err(Error::NonFinite(
            "exact inverse fit: the normal equations stay singular even with a ridge of 1e-3 × their mean diagonal; the features may be constant or non-finite".into(),
        ));
    };
    // Training MSE = (ΣY² − 2θᵀPᵀY + θᵀPᵀPθ) / (rows·cout).
    let mut sse = yy;
    for o in 0..cout {
        for i in 0..d {
            let ti = theta[i * cout + o];
            sse -= 2.0 * ti * rhs[i * cout + o];
            let gt: f64 = (0..d).map(|j| gram[i * d + j] * theta[j * cout + o]).sum();
            sse += ti * gt;
        }
    }
    write_weights(&lc, &theta)?;
    Ok(ExactFit {
        mse: (sse / (rows_total * cout) as f64).max(0.0),
        ridge,
    })
}

/// What [`fit_exact`] achieved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExactFit {
    /// Mean squared error per pixel on the training images.
    pub mse: f64,
    /// The ridge that made the system solvable, relative to the mean
    /// diagonal of PᵀP (1e-9 unless the features are rank-deficient).
    pub ridge: f64,
}

/// Solves A X = B for symmetric positive definite A (d×d, overwritten by
/// its Cholesky factor) and B (d×m); returns X (d×m, row-major).
fn cholesky_solve(a: &mut [f64], d: usize, b: &[f64], m: usize) -> Result<Vec<f64>> {
    for j in 0..d {
        let mut diag = a[j * d + j];
        for p in 0..j {
            diag -= a[j * d + p] * a[j * d + p];
        }
        if !(diag > 0.0 && diag.is_finite()) {
            return Err(Error::NonFinite(format!(
                "exact inverse fit: the normal equations are not positive definite (pivot {j} is {diag}); the features may be constant or non-finite"
            )));
        }
        let l = diag.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for p in 0..j {
                s -= a[i * d + p] * a[j * d + p];
            }
            a[i * d + j] = s / l;
        }
    }
    let mut x = b.to_vec();
    for col in 0..m {
        // L y = b
        for i in 0..d {
            let mut s = x[i * m + col];
            for p in 0..i {
                s -= a[i * d + p] * x[p * m + col];
            }
            x[i * m + col] = s / a[i * d + i];
        }
        // Lᵀ x = y
        for i in (0..d).rev() {
            let mut s = x[i * m + col];
            for p in i + 1..d {
                s -= a[p * d + i] * x[p * m + col];
            }
            x[i * m + col] = s / a[i * d + i];
        }
    }
    Ok(x)
}

fn write_weights(lc: &LinearConv, theta: &[f64]) -> Result<()> {
    let (cin, cout, k) = (lc.cin, lc.cout, lc.k);
    let d = cin * k * k + 1;
    let (weight, bias) = (&lc.weight, &lc.bias);
    let mut wv = vec![0f32; cin * cout * k * k];
    for o in 0..cout {
        for c in 0..cin {
            for a in 0..k {
                for b in 0..k {
                    let t = theta[((c * k + a) * k + b) * cout + o] as f32;
                    let at = if lc.transposed {
                        // ConvT weight [Cin, Cout, k, k], kernel flipped.
                        ((c * cout + o) * k + (k - 1 - a)) * k + (k - 1 - b)
                    } else {
                        ((o * cin + c) * k + a) * k + b
                    };
                    wv[at] = t;
                }
            }
        }
    }
    let bv: Vec<f32> = (0..cout)
        .map(|o| theta[(d - 1) * cout + o] as f32)
        .collect();
    let dev = weight.device();
    weight.assign(&Tensor::from_vec(wv, weight.shape().clone())?.to_device(dev)?)?;
    bias.assign(&Tensor::from_vec(bv, bias.shape().clone())?.to_device(dev)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::no_grad;
    use rand::SeedableRng;

    /// f1 = a random stride-1 conv; the best linear decoder of a random
    /// linear-inverse problem must (a) reproduce a decoder that generated
    /// the data exactly and (b) never be beaten by perturbing it.
    struct ConvOracle(Sequential);
    impl QueryOracle for ConvOracle {
        fn query(&self, x: &Tensor) -> Result<Tensor> {
            no_grad(|| self.0.forward(x))
        }
    }

    fn setup(transposed: bool) -> (Sequential, Sequential) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut f1 = Sequential::new();
        f1.push("c", Layer::conv2d(2, 3, 3, 1, 0, &mut rng))
            .unwrap();
        let mut g = Sequential::new();
        let layer = if transposed {
            Layer::conv_transpose2d(3, 2, 3, 1, 0, 0, &mut rng)
        } else {
            Layer::conv2d(3, 2, 3, 1, 2, &mut rng)
        };
        g.push("d", layer).unwrap();
        (f1, g)
    }

    fn mse(oracle: &ConvOracle, g: &Sequential, x: &Tensor) -> f64 {
        let y = no_grad(|| g.forward(&oracle.query(x).unwrap())).unwrap();
        let (a, b) = (y.to_vec().unwrap(), x.to_vec().unwrap());
        a.iter()
            .zip(&b)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn exact_fit_is_a_least_squares_minimum_for_conv_and_conv_transpose() {
        for transposed in [false, true] {
            let (f1, g) = setup(transposed);
            assert!(is_linear(&g));
            let oracle = ConvOracle(f1);
            let mut data_rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            let x = Tensor::rand_normal([40, 2, 9, 9], 0.0, 1.0, &mut data_rng);
            let xv = x.to_vec().unwrap();
            let mut images = |idx: &[usize], _: &mut TrainRng| -> Result<Tensor> {
                let per = 2 * 9 * 9;
                let v: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| xv[i * per..(i + 1) * per].to_vec())
                    .collect();
                Tensor::from_vec(v, vec![idx.len(), 2, 9, 9])
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let reported = fit_exact(&oracle, &g, 40, &mut images, &mut rng)
                .unwrap()
                .mse;
            let best = mse(&oracle, &g, &x);
            assert!(
                (reported - best).abs() <= 1e-4 * best.max(1e-6),
                "{reported} vs {best}"
            );
            // Any perturbation of any parameter increases the error.
            for p in g.params() {
                let orig = p.to_vec().unwrap();
                for (i, delta) in [(0usize, 1e-2f32), (orig.len() - 1, -1e-2)] {
                    let mut q = orig.clone();
                    q[i] += delta;
                    p.assign(&Tensor::from_vec(q, p.shape().clone()).unwrap())
                        .unwrap();
                    assert!(
                        mse(&oracle, &g, &x) > best,
                        "transposed {transposed}: not a minimum"
                    );
                    p.assign(&Tensor::from_vec(orig.clone(), p.shape().clone()).unwrap())
                        .unwrap();
                }
            }
        }
    }

    #[test]
    fn rank_deficient_features_are_solved_with_a_ridge() {
        // 16 feature channels that are all linear in a 3×3 patch of one
        // input channel: PᵀP (16·9 + 1 = 145 unknowns) has rank ≤ 9·9 + 1.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut f1 = Sequential::new();
        f1.push("c", Layer::conv2d(1, 16, 3, 1, 1, &mut rng))
            .unwrap();
        let mut g = Sequential::new();
        g.push("d", Layer::conv2d(16, 1, 3, 1, 1, &mut rng))
            .unwrap();
        let oracle = ConvOracle(f1);
        let x = Tensor::rand_normal([64, 1, 10, 10], 0.0, 1.0, &mut rng);
        let xv = x.to_vec().unwrap();
        let mut images = |idx: &[usize], _: &mut TrainRng| -> Result<Tensor> {
            let v: Vec<f32> = idx
                .iter()
                .flat_map(|&i| xv[i * 100..(i + 1) * 100].to_vec())
                .collect();
            Tensor::from_vec(v, vec![idx.len(), 1, 10, 10])
        };
        let fit = fit_exact(&oracle, &g, 64, &mut images, &mut rng).unwrap();
        assert!(
            fit.ridge > 1e-9,
            "expected the ridge to grow, got {}",
            fit.ridge
        );
        // f1 is injective here, so a linear decoder recovers x almost exactly.
        assert!(fit.mse < 1e-3, "training MSE {}", fit.mse);
        assert!((mse(&oracle, &g, &x) - fit.mse).abs() < 1e-3);
    }

    #[test]
    fn non_linear_decoders_are_refused() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut g = Sequential::new();
        g.push("a", Layer::conv_transpose2d(3, 2, 3, 2, 0, 0, &mut rng))
            .unwrap();
        assert!(!is_linear(&g), "stride 2");
        let mut g = Sequential::new();
        g.push("a", Layer::conv2d(3, 2, 3, 1, 1, &mut rng)).unwrap();
        g.push("r", Layer::Relu).unwrap();
        assert!(!is_linear(&g), "two layers");
    }
}
