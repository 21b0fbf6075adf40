//! CPU kernels for element-wise ops (vectorised through `cpu::simd`).

use super::{BinaryOp, UnaryOp};
use crate::cpu::simd;

pub(crate) fn binary(a: &[f32], b: &[f32], op: BinaryOp) -> Vec<f32> {
    match op {
        BinaryOp::Add => simd::map2(a, b, |x, y| x + y),
        BinaryOp::Sub => simd::map2(a, b, |x, y| x - y),
        BinaryOp::Mul => simd::map2(a, b, |x, y| x * y),
        BinaryOp::Div => simd::map2(a, b, |x, y| x / y),
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    match op {
        UnaryOp::Scale(s) => simd::map1(x, |v| v * s),
        UnaryOp::AddScalar(s) => simd::map1(x, |v| v + s),
        UnaryOp::Square => simd::map1(x, |v| v * v),
        UnaryOp::Sqrt => simd::map1(x, f32::sqrt),
        // Not `v.max(0.0)`: that maps NaN to 0 and hides it; PyTorch's
        // relu (and this one) passes NaN on, so a NaN upstream still shows.
        UnaryOp::Relu => simd::map1(x, |v| if v <= 0.0 { 0.0 } else { v }),
        UnaryOp::Sigmoid => simd::map1(x, sigmoid),
        UnaryOp::Tanh => simd::map1(x, f32::tanh),
        UnaryOp::Exp => simd::map1(x, f32::exp),
        UnaryOp::Ln => simd::map1(x, f32::ln),
        UnaryOp::Clamp(lo, hi) => simd::map1(x, |v| v.clamp(lo, hi)),
        UnaryOp::AbsPow(p) => simd::map1(x, |v| v.abs().powf(p)),
    }
}

/// dL/dx for a unary op, from the input x, the output y and g = dL/dy.
pub(crate) fn unary_backward(x: &[f32], y: &[f32], g: &[f32], op: UnaryOp) -> Vec<f32> {
    match op {
        UnaryOp::Scale(s) => simd::map1(g, |g| g * s),
        UnaryOp::AddScalar(_) => g.to_vec(),
        UnaryOp::Square => simd::map2(g, x, |g, x| 2.0 * x * g),
        UnaryOp::Sqrt => simd::map2(g, y, |g, y| g * 0.5 / y),
        UnaryOp::Relu => simd::map2(g, x, |g, x| if x > 0.0 { g } else { 0.0 }),
        UnaryOp::Sigmoid => simd::map2(g, y, |g, y| g * y * (1.0 - y)),
        UnaryOp::Tanh => simd::map2(g, y, |g, y| g * (1.0 - y * y)),
        UnaryOp::Exp => simd::map2(g, y, |g, y| g * y),
        UnaryOp::Ln => simd::map2(g, x, |g, x| g / x),
        UnaryOp::Clamp(lo, hi) => {
            simd::map2(g, x, move |g, x| if x >= lo && x <= hi { g } else { 0.0 })
        }
        UnaryOp::AbsPow(p) => simd::map2(g, x, move |g, x| {
            if x == 0.0 {
                0.0
            } else {
                g * p * x.abs().powf(p - 1.0) * x.signum()
            }
        }),
    }
}

/// `x ← min(max(x, lo[c]), hi[c])` in place for x viewed as
/// `[N, C, inner]`, C = `lo.len()` (checked by the caller: `inner` > 0,
/// equal lengths, `lo[c] <= hi[c]` and no NaN bound, which `f32::clamp`
/// would panic on). A NaN element stays NaN.
pub(crate) fn clamp_channels(x: &mut [f32], inner: usize, lo: &[f32], hi: &[f32]) {
    let bounds = lo.iter().zip(hi).cycle();
    for (plane, (&l, &h)) in x.chunks_mut(inner).zip(bounds) {
        for v in plane {
            *v = v.clamp(l, h);
        }
    }
}
