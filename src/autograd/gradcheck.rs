//! Finite-difference gradient checking, public so users can check their own
//! ops and see, number by number, that a backward rule is right.
//!
//! The function under test `f` maps inputs to an output of any shape. We
//! reduce it to a scalar with a fixed random projection, L = Σ r ⊙ f(x), so
//! that every output element contributes with a different weight (a plain sum
//! can hide errors that cancel). The analytic dL/dx comes from `backward`;
//! the numerical one from central differences
//! (L(x + ε·e_j) − L(x − ε·e_j)) / 2ε, with L accumulated in f64 so the
//! subtraction does not lose what little precision f32 leaves.

use crate::autograd::no_grad;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};

/// The outcome of a gradient check.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// Elements compared.
    pub checked: usize,
    /// Largest |analytic − numeric|.
    pub max_abs_err: f64,
    /// Mismatches (input, element, analytic, numeric), the first few.
    pub mismatches: Vec<String>,
}

impl GradCheck {
    /// True when every element agreed within tolerance.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for GradCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "gradcheck: {} elements, max abs err {:.3e}, {} mismatches",
            self.checked,
            self.max_abs_err,
            self.mismatches.len()
        )?;
        for m in self.mismatches.iter().take(10) {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}

/// Element `j` of a (GPU) tensor, read back.
fn analytic_host_value(t: &Tensor, j: usize) -> Result<f32> {
    t.to_vec()?
        .get(j)
        .copied()
        .ok_or_else(|| Error::invalid("gradcheck", format!("element {j} out of range")))
}

fn projected(out: &Tensor, r: &[f32]) -> Result<f64> {
    let v = out.to_vec()?;
    Ok(v.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum())
}

/// Compares analytic and central-difference gradients of `f` at `inputs`.
///
/// Every input gets a gradient; at most `max_elems` elements of each are
/// checked (spread over the tensor). An element passes when
/// |analytic − numeric| ≤ `atol` + `rtol`·|numeric|.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    eps: f32,
    atol: f64,
    rtol: f64,
    max_elems: usize,
) -> Result<GradCheck> {
    if eps <= 0.0 || !eps.is_finite() {
        return Err(Error::invalid(
            "gradcheck",
            format!("eps must be positive, got {eps}"),
        ));
    }
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().requires_grad()).collect();
    let out = f(&leaves)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let r: Vec<f32> = (0..out.numel())
        .map(|_| rng.gen_range(0.5f32..1.5) * if rng.gen::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let rt = Tensor::from_vec(r.clone(), out.shape().clone())?.to_device(out.device())?;
    let loss = crate::ops::reduce::sum(&crate::ops::elementwise::mul(&out, &rt)?)?;
    let grads = loss.backward()?;
    drop(loss);

    let mut report = GradCheck {
        checked: 0,
        max_abs_err: 0.0,
        mismatches: Vec::new(),
    };
    for (k, leaf) in leaves.iter().enumerate() {
        let analytic = match grads.get(leaf) {
            Some(g) => g.to_vec()?,
            None => vec![0.0; leaf.numel()],
        };
        let n = leaf.numel();
        let step = (n / max_elems.max(1)).max(1);
        // A GPU leaf is perturbed through a host copy written back whole.
        let mut host = match leaf.device() {
            Device::Cpu => None,
            Device::Cuda(_) => Some(leaf.to_vec()?),
        };
        let mut set = |j: usize, v: f32| -> Result<()> {
            match host.as_mut() {
                None => {
                    leaf.cpu_mut()?[j] = v;
                    Ok(())
                }
                Some(h) => {
                    h[j] = v;
                    leaf.assign(&Tensor::from_slice(h, leaf.shape().clone())?)
                }
            }
        };
        for j in (0..n).step_by(step) {
            let orig = match leaf.device() {
                Device::Cpu => leaf.cpu()?[j],
                Device::Cuda(_) => analytic_host_value(leaf, j)?,
            };
            set(j, orig + eps)?;
            let lp = no_grad(|| f(&leaves).and_then(|o| projected(&o, &r)))?;
            set(j, orig - eps)?;
            let lm = no_grad(|| f(&leaves).and_then(|o| projected(&o, &r)))?;
            set(j, orig)?;
            let numeric = (lp - lm) / (2.0 * eps as f64);
            let a = analytic[j] as f64;
            let err = (a - numeric).abs();
            report.checked += 1;
            report.max_abs_err = report.max_abs_err.max(err);
            if err.is_nan() || err > atol + rtol * numeric.abs() {
                report.mismatches.push(format!(
                    "input {k} element {j}: analytic {a:.6e}, numeric {numeric:.6e}"
                ));
            }
        }
    }
    Ok(report)
}
