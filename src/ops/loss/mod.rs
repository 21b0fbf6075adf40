//! Losses and image-quality measures, each one fused kernel with its own
//! backward rule: mean squared error, cross-entropy, total variation and SSIM.
//!
//! Why fused: the white-box attack runs thousands of small steps, so a loss
//! written as a chain of small ops (sub → square → mean, each allocating a
//! tensor and a graph node) costs more in overhead than in arithmetic. Each
//! loss here reads its inputs once forward, once backward, and records one
//! node.
//!
//! Every loss returns a rank-0 tensor. Gradients go only to the inputs that
//! track one (for MSE and SSIM: either side, or both).
//!
//! | loss | forward | dL/dinput (upstream g) |
//! |---|---|---|
//! | [`mse_loss`] | mean (a−b)² | ±2g(a−b)/n |
//! | [`cross_entropy`] | mean −log softmax(x)\[y\] | g(softmax(x) − onehot(y))/N |
//! | [`tv_loss`] | mean squared neighbour differences | see `tv.rs` |
//! | [`ssim`] | mean SSIM over valid windows | see `ssim.rs` |
//!
//! Beside them, [`count_correct`]: how many rows' largest logit is at their
//! label (training accuracy, kept on the device; no gradient), and
//! [`cross_entropy_and_correct`], both from one upload of the labels.

mod ce;
pub(crate) mod cpu;
pub(crate) mod cuda;
mod mse;
mod ssim;
mod tv;

pub use ce::{count_correct, cross_entropy, cross_entropy_and_correct, row_argmax};
pub use mse::mse_loss;
pub use ssim::{ssim, ssim_per_image, SsimConfig, SsimWindow};
pub use tv::{tv_loss, TvKind};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// The shape of every loss: a scalar.
fn scalar_shape() -> Shape {
    Shape::new(Vec::<usize>::new())
}

/// The one device all inputs live on (a device-mismatch error naming the
/// op otherwise).
fn loss_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    crate::cuda::exec::common_device(op, ts)
}

/// The upstream gradient of a scalar loss, as one number.
fn upstream(g: &Tensor, op: &'static str) -> Result<f32> {
    if g.numel() != 1 {
        return Err(Error::shape(
            op,
            "a one-element upstream gradient",
            g.shape(),
        ));
    }
    g.item()
}

/// Shared helpers for the loss tests: comparison against the references
/// with the first mismatches printed.
#[cfg(test)]
pub(crate) mod testutil {
    /// Asserts |got − want| ≤ atol + rtol·|want| everywhere, listing the first
    /// mismatching indices otherwise.
    pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (&g, &w))| (g as f64 - w).abs() > atol + rtol * w.abs() || g.is_nan())
            .take(8)
            .map(|(i, (g, w))| format!("[{i}] got {g:.8e} want {w:.8e}"))
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: mismatches (first 8): {}",
            bad.join(", ")
        );
    }

    /// Deterministic pseudo-random values in [lo, hi).
    pub fn rnd(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(lo..hi)).collect()
    }
}
