//! Element-wise ops: binary arithmetic on same-shaped tensors, unary maps
//! (activations included), and dropout; plus one in-place projection
//! outside autograd, [`clamp_channels_in_place`] (a per-channel box).
//!
//! Backward rules, for y = op(x) and upstream gradient g = dL/dy:
//!
//! | op            | dL/dx                      | why                                   |
//! |---------------|----------------------------|---------------------------------------|
//! | a + b         | g, g                       | ∂(a+b)/∂a = 1                         |
//! | a − b         | g, −g                      |                                       |
//! | a · b         | g·b, g·a                   | product rule                          |
//! | a / b         | g/b, −g·a/b² = −g·y/b      | quotient rule, reusing y = a/b        |
//! | s·x           | s·g                        |                                       |
//! | x + s         | g                          |                                       |
//! | x²            | 2x·g                       |                                       |
//! | √x            | g/(2y)                     | d√x/dx = 1/(2√x), reusing y           |
//! | relu(x)       | g where x > 0, else 0      | slope 1 or 0 (0 at the kink)          |
//! | σ(x)          | g·y(1−y)                   | σ' = σ(1−σ), reusing y                |
//! | tanh(x)       | g·(1−y²)                   |                                       |
//! | exp(x)        | g·y                        |                                       |
//! | ln(x)         | g/x                        |                                       |
//! | clamp(x,l,h)  | g where l ≤ x ≤ h, else 0  | flat outside the box                  |
//! | |x|^p (p≠0)   | g·p·|x|^(p−1)·sign(x)      |                                       |

pub(crate) mod cpu;
pub(crate) mod cuda;

use crate::autograd::BackwardOp;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::Rng;

/// A binary element-wise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b
    Div,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// A unary element-wise operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// s·x
    Scale(f32),
    /// x + s
    AddScalar(f32),
    /// x²
    Square,
    /// √x
    Sqrt,
    /// max(x, 0)
    Relu,
    /// 1 / (1 + e^−x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// e^x
    Exp,
    /// ln x
    Ln,
    /// min(max(x, lo), hi)
    Clamp(f32, f32),
    /// |x|^p
    AbsPow(f32),
}

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Scale(_) => "scale",
            UnaryOp::AddScalar(_) => "add_scalar",
            UnaryOp::Square => "square",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Exp => "exp",
            UnaryOp::Ln => "ln",
            UnaryOp::Clamp(..) => "clamp",
            UnaryOp::AbsPow(_) => "abs_pow",
        }
    }
}

fn same_device(a: &Tensor, b: &Tensor, op: &'static str) -> Result<Device> {
    let (da, db) = (a.device(), b.device());
    if da != db {
        return Err(Error::DeviceMismatch {
            op,
            a: da.to_string(),
            b: db.to_string(),
        });
    }
    Ok(da)
}

/// Applies a binary op to two tensors of the same shape.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    a.check_same_shape(b, op.name())?;
    let make = || -> Box<dyn BackwardOp> {
        Box::new(BinaryBackward {
            op,
            a: a.clone(),
            b: b.clone(),
        })
    };
    match same_device(a, b, op.name())? {
        Device::Cpu => {
            let data = cpu::binary(&a.cpu()?, &b.cpu()?, op);
            Ok(Tensor::from_cpu_op(data, a.shape().clone(), &[a, b], make))
        }
        Device::Cuda(n) => {
            let y = cuda::binary(n, a, b, op)?;
            Ok(Tensor::from_cuda_op(y, a.shape().clone(), &[a, b], make))
        }
    }
}

/// a + b
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add)
}
/// a − b
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Sub)
}
/// a · b (element-wise)
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul)
}
/// a / b (element-wise)
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Div)
}

struct BinaryBackward {
    op: BinaryOp,
    a: Tensor,
    b: Tensor,
}

impl BackwardOp for BinaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = match self.op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (
                g.clone(),
                if needs[1] { scale(g, -1.0)? } else { g.clone() },
            ),
            BinaryOp::Mul => (
                if needs[0] {
                    mul(g, &self.b)?
                } else {
                    g.clone()
                },
                if needs[1] {
                    mul(g, &self.a)?
                } else {
                    g.clone()
                },
            ),
            BinaryOp::Div => (
                if needs[0] {
                    div(g, &self.b)?
                } else {
                    g.clone()
                },
                // d(a/b)/db = −a/b² = −y/b
                if needs[1] {
                    scale(&mul(g, &div(out, &self.b)?)?, -1.0)?
                } else {
                    g.clone()
                },
            ),
        };
        Ok(vec![needs[0].then_some(ga), needs[1].then_some(gb)])
    }
}

/// Applies a unary op.
pub fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let make = || -> Box<dyn BackwardOp> { Box::new(UnaryBackward { op, x: x.clone() }) };
    match x.device() {
        Device::Cpu => {
            let data = cpu::unary(&x.cpu()?, op);
            Ok(Tensor::from_cpu_op(data, x.shape().clone(), &[x], make))
        }
        Device::Cuda(n) => {
            let y = cuda::unary(n, x, op)?;
            Ok(Tensor::from_cuda_op(y, x.shape().clone(), &[x], make))
        }
    }
}

/// s·x
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    unary(x, UnaryOp::Scale(s))
}
/// x + s
pub fn add_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    unary(x, UnaryOp::AddScalar(s))
}
/// x²
pub fn square(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Square)
}
/// √x
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Sqrt)
}
/// max(x, 0)
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Relu)
}
/// The logistic sigmoid.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Sigmoid)
}
/// tanh
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Tanh)
}
/// e^x
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Exp)
}
/// ln x
pub fn ln(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Ln)
}
/// |x|^p
pub fn abs_pow(x: &Tensor, p: f32) -> Result<Tensor> {
    unary(x, UnaryOp::AbsPow(p))
}
/// Clamps into `[lo, hi]`; errors if `lo > hi`.
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    if lo > hi || lo.is_nan() || hi.is_nan() {
        return Err(Error::invalid(
            "clamp",
            format!("need lo <= hi, got lo={lo}, hi={hi}"),
        ));
    }
    unary(x, UnaryOp::Clamp(lo, hi))
}

/// Projects `x` onto a per-channel box, in place:
/// `x[n, c, …] ← min(max(x[n, c, …], lo[c]), hi[c])` for `x` of shape
/// `[N, C, …]` (NCHW images, or `[N, C]` rows), on the device `x` lives on.
///
/// This is the projection step of projected gradient descent (the white-box
/// attack's box constraint), not a differentiable op: like an optimiser
/// step it works outside autograd, records no graph node and leaves `x`'s
/// gradient tracking as it is (a leaf that requires grad stays one). Call
/// it between steps, never while a graph that saved `x` is still to be
/// backpropagated. On a GPU the bounds (2·C floats) are uploaded and the
/// tensor is clamped by one `clamp_channels` launch; nothing else moves.
///
/// A NaN element stays NaN (as with `f32::clamp`), on every device, and
/// infinite bounds are allowed (no bound on that side).
///
/// # Errors
/// `x` of rank < 2; `lo` or `hi` not of length C; a NaN bound or
/// `lo[c] > hi[c]`. `x` is left unchanged then.
pub fn clamp_channels_in_place(x: &Tensor, lo: &[f32], hi: &[f32]) -> Result<()> {
    use std::cmp::Ordering;
    const OP: &str = "clamp_channels_in_place";
    let dims = x.dims();
    let (channels, inner) = match dims {
        [_, c, rest @ ..] => (*c, rest.iter().product::<usize>()),
        _ => {
            return Err(Error::invalid(
                OP,
                format!("needs x of shape [N, C, ...], got {dims:?}"),
            ))
        }
    };
    if lo.len() != channels || hi.len() != channels {
        return Err(Error::invalid(
            OP,
            format!(
                "x {dims:?} has C = {channels} channels, got {} lower and {} upper bounds",
                lo.len(),
                hi.len()
            ),
        ));
    }
    // Incomparable (a NaN bound) counts as out of order.
    let in_order =
        |l: &f32, h: &f32| matches!(l.partial_cmp(h), Some(Ordering::Less | Ordering::Equal));
    if let Some((c, (l, h))) = lo
        .iter()
        .zip(hi)
        .enumerate()
        .find(|(_, (l, h))| !in_order(l, h))
    {
        return Err(Error::invalid(
            OP,
            format!("channel {c}: need lo <= hi, got lo={l}, hi={h}"),
        ));
    }
    if x.numel() == 0 {
        return Ok(());
    }
    match x.device() {
        Device::Cpu => {
            cpu::clamp_channels(&mut x.cpu_mut()?, inner, lo, hi);
            Ok(())
        }
        Device::Cuda(n) => cuda::clamp_channels(n, x, inner, lo, hi),
    }
}

struct UnaryBackward {
    op: UnaryOp,
    x: Tensor,
}

impl BackwardOp for UnaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, out: &Tensor, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let gx = match same_device(&self.x, g, "unary backward")? {
            Device::Cpu => Tensor::from_vec(
                cpu::unary_backward(&self.x.cpu()?, &out.cpu()?, &g.cpu()?, self.op),
                g.shape().clone(),
            )?,
            Device::Cuda(n) => crate::cuda::exec::wrap(
                cuda::unary_backward(n, &self.x, out, g, self.op)?,
                g.shape().clone(),
            )?,
        };
        Ok(vec![Some(gx)])
    }
}

/// Inverted dropout (training mode): zeroes each element with probability
/// `p` and scales survivors by 1/(1−p), so the expected value is unchanged.
/// Backward multiplies by the same mask: it is a product with a constant.
pub fn dropout(x: &Tensor, p: f32, rng: &mut impl Rng) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "dropout",
            format!("p must be in [0, 1), got {p}"),
        ));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.numel())
        .map(|_| if rng.gen::<f32>() < p { 0.0 } else { keep })
        .collect();
    // The mask is drawn on the host (same numbers on every device for a
    // seed) and moved next to x.
    mul(
        x,
        &Tensor::from_vec(mask, x.shape().clone())?.to_device(x.device())?,
    )
}

impl Tensor {
    /// See [`add`].
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        add(self, o)
    }
    /// See [`sub`].
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        sub(self, o)
    }
    /// See [`mul`].
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        mul(self, o)
    }
    /// See [`div`].
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        div(self, o)
    }
    /// See [`scale`].
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        scale(self, s)
    }
    /// See [`relu`].
    pub fn relu(&self) -> Result<Tensor> {
        relu(self)
    }
    /// See [`sigmoid`].
    pub fn sigmoid(&self) -> Result<Tensor> {
        sigmoid(self)
    }
    /// See [`tanh`].
    pub fn tanh(&self) -> Result<Tensor> {
        tanh(self)
    }
    /// See [`square`].
    pub fn square(&self) -> Result<Tensor> {
        square(self)
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

    fn away_from_zero(t: &Tensor) -> Tensor {
        let v: Vec<f32> = t
            .to_vec()
            .unwrap()
            .iter()
            .map(|&x| {
                if x.abs() < 0.1 {
                    x + 0.3f32.copysign(x)
                } else {
                    x
                }
            })
            .collect();
        Tensor::from_vec(v, t.shape().clone()).unwrap()
    }

    #[test]
    fn forward_values() {
        let a = Tensor::from_vec(vec![1.0, -2.0, 3.0], [3]).unwrap();
        let b = Tensor::from_vec(vec![2.0, 4.0, -1.0], [3]).unwrap();
        assert_eq!(add(&a, &b).unwrap().to_vec().unwrap(), vec![3.0, 2.0, 2.0]);
        assert_eq!(
            sub(&a, &b).unwrap().to_vec().unwrap(),
            vec![-1.0, -6.0, 4.0]
        );
        assert_eq!(
            mul(&a, &b).unwrap().to_vec().unwrap(),
            vec![2.0, -8.0, -3.0]
        );
        assert_eq!(
            div(&a, &b).unwrap().to_vec().unwrap(),
            vec![0.5, -0.5, -3.0]
        );
        assert_eq!(relu(&a).unwrap().to_vec().unwrap(), vec![1.0, 0.0, 3.0]);
        assert_eq!(
            clamp(&a, -1.0, 2.0).unwrap().to_vec().unwrap(),
            vec![1.0, -1.0, 2.0]
        );
        let s = sigmoid(&a).unwrap().to_vec().unwrap();
        assert!((s[0] - 0.7310586).abs() < 1e-6);
        assert!(add(&a, &Tensor::zeros([4])).is_err());
        assert!(clamp(&a, 1.0, 0.0).is_err());
    }

    #[test]
    fn clamp_channels_in_place_clamps_each_channel() {
        // [N=2, C=3, 2×2]: per channel one value below, one inside, one
        // above and one on a bound; channel 2 is a single point (lo = hi).
        let (lo, hi) = ([-1.0, 0.0, 0.5], [1.0, 0.25, 0.5]);
        let per_image = [
            [-3.0, 0.5, 2.0, 1.0],
            [-0.1, 0.1, 7.0, 0.0],
            [0.0, 0.5, 9.0, -9.0],
        ];
        let x: Vec<f32> = [per_image, per_image]
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        let x = Tensor::from_vec(x, [2, 3, 2, 2]).unwrap().requires_grad();
        clamp_channels_in_place(&x, &lo, &hi).unwrap();
        let want_image = [
            [-1.0, 0.5, 1.0, 1.0],
            [0.0, 0.1, 0.25, 0.0],
            [0.5, 0.5, 0.5, 0.5],
        ];
        let want: Vec<f32> = [want_image, want_image]
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        assert_eq!(x.to_vec().unwrap(), want);
        // Outside autograd: x is still the same leaf.
        assert!(x.grad_fn().is_none() && x.is_requires_grad());

        // [N, C] rows (inner = 1), a NaN element, infinite bounds.
        let rows = Tensor::from_vec(vec![-5.0, f32::NAN, 5.0, 3.0], [2, 2]).unwrap();
        clamp_channels_in_place(&rows, &[f32::NEG_INFINITY, 0.0], &[0.0, f32::INFINITY]).unwrap();
        let v = rows.to_vec().unwrap();
        assert_eq!((v[0], v[2], v[3]), (-5.0, 0.0, 3.0));
        assert!(v[1].is_nan(), "a NaN element stays NaN");

        // Errors, and x untouched.
        let y = Tensor::from_vec(vec![-2.0, 2.0, -2.0, 2.0], [1, 2, 2]).unwrap();
        let err =
            |lo: &[f32], hi: &[f32]| clamp_channels_in_place(&y, lo, hi).unwrap_err().to_string();
        assert!(
            err(&[0.0], &[1.0, 1.0]).contains("C = 2"),
            "{}",
            err(&[0.0], &[1.0, 1.0])
        );
        assert!(err(&[0.0, 0.0], &[1.0, 1.0, 1.0]).contains("3 upper"));
        assert!(err(&[0.0, 2.0], &[1.0, 1.0]).contains("channel 1"));
        assert!(err(&[f32::NAN, 0.0], &[1.0, 1.0]).contains("channel 0"));
        assert!(clamp_channels_in_place(&Tensor::zeros([4]), &[0.0], &[1.0]).is_err());
        assert_eq!(y.to_vec().unwrap(), vec![-2.0, 2.0, -2.0, 2.0]);
        // Nothing to clamp is fine.
        clamp_channels_in_place(&Tensor::zeros([0, 2, 3]), &[0.0; 2], &[1.0; 2]).unwrap();
        clamp_channels_in_place(&Tensor::zeros([2, 2, 0]), &[0.0; 2], &[1.0; 2]).unwrap();
    }

    #[test]
    fn binary_gradients() {
        let a = rnd(&[3, 5], 1);
        let b = away_from_zero(&rnd(&[3, 5], 2));
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let r = gradcheck(
                |x| binary(&x[0], &x[1], op),
                &[a.clone(), b.clone()],
                1e-3,
                1e-3,
                1e-2,
                100,
            )
            .unwrap();
            assert!(r.ok(), "{op:?}: {r}");
        }
    }

    #[test]
    fn unary_gradients() {
        let x = away_from_zero(&rnd(&[4, 7], 3));
        let pos = add_scalar(&x.detach(), 1.5).unwrap().detach();
        let ops = [
            (UnaryOp::Scale(-2.5), &x),
            (UnaryOp::AddScalar(0.7), &x),
            (UnaryOp::Square, &x),
            (UnaryOp::Sqrt, &pos),
            (UnaryOp::Relu, &x),
            (UnaryOp::Sigmoid, &x),
            (UnaryOp::Tanh, &x),
            (UnaryOp::Exp, &x),
            (UnaryOp::Ln, &pos),
            (UnaryOp::Clamp(-0.5, 0.45), &x),
            (UnaryOp::AbsPow(1.5), &x),
        ];
        for (op, input) in ops {
            let r = gradcheck(
                |v| unary(&v[0], op),
                std::slice::from_ref(input),
                1e-3,
                1e-3,
                1e-2,
                100,
            )
            .unwrap();
            assert!(r.ok(), "{op:?}: {r}");
        }
    }

    #[test]
    fn dropout_keeps_expectation_and_masks_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x = Tensor::ones([10_000]).requires_grad();
        let y = dropout(&x, 0.3, &mut rng).unwrap();
        let v = y.to_vec().unwrap();
        let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f32 / v.len() as f32;
        assert!((zeros - 0.3).abs() < 0.03);
        let g = crate::ops::reduce::sum(&y).unwrap().backward().unwrap();
        assert_eq!(
            g.get(&x).unwrap().to_vec().unwrap(),
            v,
            "gradient of sum(dropout(1)) is the mask"
        );
        assert!(dropout(&x, 1.0, &mut rng).is_err());
    }
}
