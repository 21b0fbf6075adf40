//! Reductions to a scalar: sum and mean.
//!
//! Backward: L depends on every x_i with slope 1 (sum) or 1/n (mean), so
//! dL/dx is the upstream scalar g spread over x's shape (times 1/n for mean).

pub(crate) mod cuda;

use crate::autograd::BackwardOp;
use crate::device::Device;
use crate::error::Result;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Σ x, as a rank-0 tensor. Accumulated in f64 blocks.
pub fn sum(x: &Tensor) -> Result<Tensor> {
    reduce(x, 1.0, "sum")
}

/// Σ x / n, as a rank-0 tensor.
pub fn mean(x: &Tensor) -> Result<Tensor> {
    reduce(x, 1.0 / x.numel().max(1) as f32, "mean")
}

fn reduce(x: &Tensor, factor: f32, name: &'static str) -> Result<Tensor> {
    let make = || -> Box<dyn BackwardOp> {
        Box::new(ReduceBackward {
            x: x.clone(),
            factor,
            name,
        })
    };
    let shape = Shape::new(Vec::<usize>::new());
    match x.device() {
        Device::Cpu => {
            let s = crate::cpu::simd::sum(&x.cpu()?) * factor as f64;
            Ok(Tensor::from_cpu_op(vec![s as f32], shape, &[x], make))
        }
        Device::Cuda(n) => {
            let s = cuda::sum(n, x, factor)?;
            Ok(Tensor::from_cuda_op(s, shape, &[x], make))
        }
    }
}

struct ReduceBackward {
    x: Tensor,
    factor: f32,
    name: &'static str,
}

impl BackwardOp for ReduceBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let shape = self.x.shape().clone();
        match crate::cuda::exec::common_device(self.name, &[&self.x, g])? {
            Device::Cpu => Ok(vec![Some(Tensor::full(shape, g.item()? * self.factor))]),
            // On a GPU the upstream number stays there: reading it back
            // would make every training step that takes a mean wait.
            Device::Cuda(n) => {
                let buf = crate::cuda::exec::filled_scaled(n, shape.numel(), self.factor, g)?;
                Ok(vec![Some(crate::cuda::exec::wrap(buf, shape)?)])
            }
        }
    }
}

impl Tensor {
    /// See [`sum`].
    pub fn sum(&self) -> Result<Tensor> {
        sum(self)
    }
    /// See [`mean`].
    pub fn mean(&self) -> Result<Tensor> {
        mean(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck;
    use rand::SeedableRng;

    #[test]
    fn values_and_gradients() {
        let x = Tensor::from_vec((0..10).map(|v| v as f32).collect(), [2, 5]).unwrap();
        assert_eq!(sum(&x).unwrap().item().unwrap(), 45.0);
        assert_eq!(mean(&x).unwrap().item().unwrap(), 4.5);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let x = Tensor::rand_uniform([3, 4, 5], -1.0, 1.0, &mut rng);
        for f in [sum, mean] {
            let r =
                gradcheck(|v| f(&v[0]), std::slice::from_ref(&x), 1e-2, 1e-3, 1e-2, 60).unwrap();
            assert!(r.ok(), "{r}");
        }
    }
}
