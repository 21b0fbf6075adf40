//! Mean squared error, L = (1/n) Σ (a_i − b_i)².
//!
//! Backward: each term depends only on its own pair, and d(a−b)²/da =
//! 2(a−b), d(a−b)²/db = −2(a−b). With the 1/n of the mean and the upstream
//! g: dL/da = 2g(a−b)/n and dL/db = −dL/da. In the white-box attack `a` is
//! the feature map of the guess and `b` the observed (constant) target, so
//! only dL/da is computed.

use super::{cpu, cuda, loss_device, scalar_shape, upstream};
use crate::autograd::BackwardOp;
use crate::cpu::simd;
use crate::cuda::exec::wrap;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// mean((a − b)²) over all elements, as a rank-0 tensor; differentiable in
/// both `a` and `b` (each gradient computed only if that side tracks one).
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_same_shape(b, "mse_loss")?;
    let dev = loss_device("mse_loss", &[a, b])?;
    let n = a.numel();
    if n == 0 {
        return Err(Error::invalid(
            "mse_loss",
            "the inputs are empty (0 elements)",
        ));
    }
    if let Device::Cuda(d) = dev {
        let y = cuda::mse(d, a, b)?;
        return Ok(Tensor::from_cuda_op(y, scalar_shape(), &[a, b], || {
            Box::new(MseBackward {
                a: a.clone(),
                b: b.clone(),
            })
        }));
    }
    let sum = cpu::mse_sum(simd::level(), &a.cpu()?, &b.cpu()?);
    let value = (sum / n as f64) as f32;
    Ok(Tensor::from_cpu_op(
        vec![value],
        scalar_shape(),
        &[a, b],
        || {
            Box::new(MseBackward {
                a: a.clone(),
                b: b.clone(),
            })
        },
    ))
}

struct MseBackward {
    a: Tensor,
    b: Tensor,
}

impl BackwardOp for MseBackward {
    fn name(&self) -> &'static str {
        "mse_loss"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let need_a = needs.first().copied().unwrap_or(false);
        let need_b = needs.get(1).copied().unwrap_or(false);
        if let Device::Cuda(d) = loss_device("mse_loss backward", &[g, &self.a, &self.b])? {
            let (ga, gb) = cuda::mse_grad(d, &self.a, &self.b, g, need_a, need_b)?;
            let shape = self.a.shape();
            return Ok(vec![
                ga.map(|b| wrap(b, shape.clone())).transpose()?,
                gb.map(|b| wrap(b, shape.clone())).transpose()?,
            ]);
        }
        let s = 2.0 * upstream(g, "mse_loss")? / self.a.numel() as f32;
        let (ga, gb) = cpu::mse_grad(
            simd::level(),
            &self.a.cpu()?,
            &self.b.cpu()?,
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

    #[test]
    fn mse_value_by_hand() {
        let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
        let b = Tensor::from_vec(vec![0.0, 2.0, 5.0, 3.0], [2, 2]).unwrap();
        // (1 + 0 + 4 + 1) / 4
        assert_eq!(mse_loss(&a, &b).unwrap().item().unwrap(), 1.5);
        assert!(mse_loss(&a, &Tensor::zeros([4])).is_err());
    }

    #[test]
    fn mse_gradcheck_both_sides() {
        let a = Tensor::from_vec(rnd(3 * 5 * 7, 1, -1.0, 1.0), [3, 5, 7]).unwrap();
        let b = Tensor::from_vec(rnd(3 * 5 * 7, 2, -1.0, 1.0), [3, 5, 7]).unwrap();
        let r = gradcheck(|v| mse_loss(&v[0], &v[1]), &[a, b], 1e-2, 2e-5, 1e-2, 200).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn mse_gradient_only_where_needed() {
        let a = Tensor::from_vec(rnd(10, 3, -1.0, 1.0), [10])
            .unwrap()
            .requires_grad();
        let b = Tensor::from_vec(rnd(10, 4, -1.0, 1.0), [10]).unwrap();
        let g = mse_loss(&a, &b).unwrap().backward().unwrap();
        assert_eq!(g.len(), 1);
        // Only b: the gradient is −2(a−b)/n.
        let a2 = a.detach();
        let b2 = b.requires_grad();
        let g = mse_loss(&a2, &b2).unwrap().backward().unwrap();
        let gb = g.get(&b2).unwrap().to_vec().unwrap();
        let (_, want) = reference::mse_grad(&a2.to_vec().unwrap(), &b.to_vec().unwrap(), 1.0);
        assert_close(&gb, &want, 1e-7, 1e-6, "mse grad b");
    }

    #[test]
    fn mse_kernels_match_reference_at_every_level() {
        // Big enough for the parallel path and ragged tails.
        for n in [1usize, 15, 17, 1000, 70_001] {
            let a = rnd(n, 10 + n as u64, -2.0, 2.0);
            let b = rnd(n, 20 + n as u64, -2.0, 2.0);
            let want = reference::mse(&a, &b);
            let (wa, wb) = reference::mse_grad(&a, &b, 0.7);
            for lv in available_levels() {
                let got = cpu::mse_sum(lv, &a, &b) / n as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs(),
                    "level {lv} n {n}: {got} vs {want}"
                );
                let s = 2.0 * 0.7 / n as f32;
                let (ga, gb) = cpu::mse_grad(lv, &a, &b, s, true, true);
                assert_close(&ga.unwrap(), &wa, 1e-9, 1e-5, &format!("{lv} n {n} ga"));
                assert_close(&gb.unwrap(), &wb, 1e-9, 1e-5, &format!("{lv} n {n} gb"));
                let (ga, none) = cpu::mse_grad(lv, &a, &b, s, true, false);
                assert!(none.is_none());
                assert_close(
                    &ga.unwrap(),
                    &wa,
                    1e-9,
                    1e-5,
                    &format!("{lv} n {n} ga only"),
                );
                let (none, gb) = cpu::mse_grad(lv, &a, &b, s, false, true);
                assert!(none.is_none());
                assert_close(
                    &gb.unwrap(),
                    &wb,
                    1e-9,
                    1e-5,
                    &format!("{lv} n {n} gb only"),
                );
            }
        }
    }
}
