//! Matrix products: `matmul`, `linear` (a fully connected layer) and
//! `transpose`.
//!
//! Backward of C = A·B (A: m×k, B: k×n), from G = dL/dC (m×n):
//! each C_ij = Σ_p A_ip B_pj, so dL/dA_ip = Σ_j G_ij B_pj, i.e. dA = G·Bᵀ,
//! and dL/dB_pj = Σ_i A_ip G_ij, i.e. dB = Aᵀ·G.
//!
//! `linear(x, W, b)` is y = x·Wᵀ + b with W stored out×in as in PyTorch, so
//! dx = G·W, dW = Gᵀ·x (summed over the batch by the product itself), and
//! db = Σ_batch G. Each is computed only when that input needs it.

pub(crate) mod cpu;
pub(crate) mod cuda;

use crate::autograd::BackwardOp;
use crate::cuda::exec::{common_device, wrap};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// A·B for matrices.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, k) = a.shape().matrix("matmul")?;
    let (k2, n) = b.shape().matrix("matmul")?;
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!("B with {k} rows"),
            b.shape(),
        ));
    }
    let make = || -> Box<dyn BackwardOp> {
        Box::new(MatmulBackward {
            a: a.clone(),
            b: b.clone(),
        })
    };
    match common_device("matmul", &[a, b])? {
        Device::Cpu => {
            let data = cpu::matmul(&a.cpu()?, &b.cpu()?, m, k, n, false, false);
            Ok(Tensor::from_cpu_op(data, Shape::new([m, n]), &[a, b], make))
        }
        Device::Cuda(d) => {
            let c = cuda::matmul(d, a, b, m, k, n, false, false)?;
            Ok(Tensor::from_cuda_op(c, Shape::new([m, n]), &[a, b], make))
        }
    }
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
}

impl BackwardOp for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (m, k) = self.a.shape().matrix("matmul")?;
        let n = g.shape().dim(1)?;
        if let Device::Cuda(d) = common_device("matmul backward", &[g, &self.a, &self.b])? {
            let ga = needs[0]
                .then(|| wrap(cuda::matmul(d, g, &self.b, m, n, k, false, true)?, [m, k]))
                .transpose()?;
            let gb = needs[1]
                .then(|| wrap(cuda::matmul(d, &self.a, g, k, m, n, true, false)?, [k, n]))
                .transpose()?;
            return Ok(vec![ga, gb]);
        }
        let gv = g.cpu()?;
        let ga = if needs[0] {
            // dA = G·Bᵀ
            Some(Tensor::from_vec(
                cpu::matmul(&gv, &self.b.cpu()?, m, n, k, false, true),
                [m, k],
            )?)
        } else {
            None
        };
        let gb = if needs[1] {
            // dB = Aᵀ·G
            Some(Tensor::from_vec(
                cpu::matmul(&self.a.cpu()?, &gv, k, m, n, true, false),
                [k, n],
            )?)
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

/// y = x·Wᵀ + b; x: `[N, in]`, W: `[out, in]`, b: `[out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, fin) = x.shape().matrix("linear input")?;
    let (fout, fin2) = w.shape().matrix("linear weight")?;
    if fin != fin2 {
        return Err(Error::shape(
            "linear",
            format!("input with {fin2} features"),
            x.shape(),
        ));
    }
    if let Some(b) = b {
        if b.dims() != [fout] {
            return Err(Error::shape("linear bias", [fout], b.shape()));
        }
    }
    let mut inputs = vec![x, w];
    if let Some(b) = b {
        inputs.push(b);
    }
    let make = || -> Box<dyn BackwardOp> {
        Box::new(LinearBackward {
            x: x.clone(),
            w: w.clone(),
            b: b.cloned(),
        })
    };
    let data = match common_device("linear", &inputs)? {
        Device::Cpu => {
            let mut y = cpu::matmul(&x.cpu()?, &w.cpu()?, n, fin, fout, false, true);
            if let Some(b) = b {
                let bv = b.cpu()?;
                for row in y.chunks_mut(fout) {
                    for (o, &bb) in row.iter_mut().zip(bv.iter()) {
                        *o += bb;
                    }
                }
            }
            y
        }
        Device::Cuda(d) => {
            // y = x·Wᵀ, then the bias over the `fout` columns of each row.
            let mut y = cuda::matmul(d, x, w, n, fin, fout, false, true)?;
            if let Some(b) = b {
                let t = wrap(y, [n, fout])?;
                y = crate::ops::elementwise::cuda::bias_add(d, &t, b, fout, 1)?;
            }
            return Ok(Tensor::from_cuda_op(
                y,
                Shape::new([n, fout]),
                &inputs,
                make,
            ));
        }
    };
    Ok(Tensor::from_cpu_op(
        data,
        Shape::new([n, fout]),
        &inputs,
        make,
    ))
}

struct LinearBackward {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
}

impl BackwardOp for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<Tensor> {
        let mut v = vec![self.x.clone(), self.w.clone()];
        if let Some(b) = &self.b {
            v.push(b.clone());
        }
        v
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (n, fin) = self.x.shape().matrix("linear")?;
        let fout = self.w.shape().dim(0)?;
        if let Device::Cuda(d) = common_device("linear backward", &[g, &self.x, &self.w])? {
            let need = |i: usize| needs.get(i).copied().unwrap_or(false);
            // dx = G·W, dW = Gᵀ·x, db = column sums of G.
            let mut out = vec![
                need(0)
                    .then(|| {
                        wrap(
                            cuda::matmul(d, g, &self.w, n, fout, fin, false, false)?,
                            [n, fin],
                        )
                    })
                    .transpose()?,
                need(1)
                    .then(|| {
                        wrap(
                            cuda::matmul(d, g, &self.x, fout, n, fin, true, false)?,
                            [fout, fin],
                        )
                    })
                    .transpose()?,
            ];
            if self.b.is_some() {
                out.push(
                    need(2)
                        .then(|| {
                            wrap(
                                crate::ops::reduce::cuda::channel_sums(d, g, n, fout, 1)?,
                                [fout],
                            )
                        })
                        .transpose()?,
                );
            }
            return Ok(out);
        }
        let gv = g.cpu()?;
        let mut out = vec![None, None];
        if needs[0] {
            // dx = G·W : [n, out]·[out, in]
            out[0] = Some(Tensor::from_vec(
                cpu::matmul(&gv, &self.w.cpu()?, n, fout, fin, false, false),
                [n, fin],
            )?);
        }
        if needs[1] {
            // dW = Gᵀ·x : [out, n]·[n, in]
            out[1] = Some(Tensor::from_vec(
                cpu::matmul(&gv, &self.x.cpu()?, fout, n, fin, true, false),
                [fout, fin],
            )?);
        }
        if self.b.is_some() {
            out.push(if needs.get(2).copied().unwrap_or(false) {
                let mut db = vec![0.0f32; fout];
                for row in gv.chunks(fout) {
                    for (d, &v) in db.iter_mut().zip(row) {
                        *d += v;
                    }
                }
                Some(Tensor::from_vec(db, [fout])?)
            } else {
                None
            });
        }
        Ok(out)
    }
}

/// The transpose of a matrix (a copy; gradients transpose back).
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    let (r, c) = x.shape().matrix("transpose")?;
    let make = || -> Box<dyn BackwardOp> { Box::new(TransposeBackward { x: x.clone() }) };
    match x.device() {
        Device::Cpu => {
            let data = cpu::transpose(&x.cpu()?, r, c);
            Ok(Tensor::from_cpu_op(data, Shape::new([c, r]), &[x], make))
        }
        Device::Cuda(d) => {
            let y = cuda::transpose(d, x, r, c)?;
            Ok(Tensor::from_cuda_op(y, Shape::new([c, r]), &[x], make))
        }
    }
}

struct TransposeBackward {
    x: Tensor,
}

impl BackwardOp for TransposeBackward {
    fn name(&self) -> &'static str {
        "transpose"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(transpose(g)?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck;
    use rand::SeedableRng;

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::rand_uniform(shape.to_vec(), -1.0, 1.0, &mut rng)
    }

    #[test]
    fn matmul_matches_reference() {
        let a = rnd(&[5, 7], 1);
        let b = rnd(&[7, 3], 2);
        let c = matmul(&a, &b).unwrap().to_vec().unwrap();
        let want =
            crate::cpu::reference::matmul(&a.to_vec().unwrap(), &b.to_vec().unwrap(), 5, 7, 3);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        assert!(matmul(&a, &a).is_err());
    }

    #[test]
    fn small_matmul_matches_reference_at_every_level() {
        // Few rows (the small path), every stored layout it handles, odd
        // sizes with and without a 16-float tail.
        for (m, k, n) in [(1, 7, 3), (3, 37, 5), (4, 256, 120), (2, 16, 1)] {
            let a = rnd(&[m, k], 11).to_vec().unwrap();
            let b = rnd(&[k, n], 12).to_vec().unwrap();
            let want = crate::cpu::reference::matmul(&a, &b, m, k, n);
            let at = cpu::transpose(&a, m, k);
            let bt = cpu::transpose(&b, k, n);
            for lv in crate::cpu::simd::available_levels() {
                for (ta, tb) in [(false, false), (true, false), (false, true)] {
                    let aa = if ta { &at } else { &a };
                    let bb = if tb { &bt } else { &b };
                    let mut c = vec![0.0; m * n];
                    cpu::small_matmul_at(lv, aa, bb, m, k, n, ta, tb, &mut c);
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "m{m} k{k} n{n} ta {ta} tb {tb} level {lv}: first mismatch at \
                             ({}, {}): {x} vs {y}",
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gradients() {
        let a = rnd(&[4, 6], 3);
        let b = rnd(&[6, 5], 4);
        let r = gradcheck(
            |v| matmul(&v[0], &v[1]),
            &[a.clone(), b],
            1e-2,
            1e-3,
            1e-2,
            100,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
        let w = rnd(&[3, 6], 5);
        let bias = rnd(&[3], 6);
        let r = gradcheck(
            |v| linear(&v[0], &v[1], Some(&v[2])),
            &[a.clone(), w, bias],
            1e-2,
            1e-3,
            1e-2,
            100,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
        let r = gradcheck(|v| transpose(&v[0]), &[a], 1e-2, 1e-3, 1e-2, 100).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn linear_skips_weight_gradient_when_frozen() {
        let x = rnd(&[2, 3], 7).requires_grad();
        let w = rnd(&[4, 3], 8); // frozen
        let y = linear(&x, &w, None).unwrap();
        let g = y.sum().unwrap().backward().unwrap();
        assert!(g.get(&x).is_some());
        assert!(g.get(&w).is_none());
        assert_eq!(g.len(), 1);
    }
}
