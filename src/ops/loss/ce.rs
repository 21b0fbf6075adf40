//! Cross-entropy of logits against class labels, averaged over the batch:
//! L = (1/N) Σ_i [ log Σ_j exp(x_ij) − x_i,y_i ].
//!
//! Numerically stable: log Σ exp is computed as m + log Σ exp(x − m) with
//! m the row maximum, so the largest exponent is exp(0) = 1 and nothing
//! overflows, however large the logits.
//!
//! Backward: d/dx_ij of log Σ_k exp(x_ik) is exp(x_ij)/Σ_k exp(x_ik) =
//! softmax_ij, and d/dx_ij of x_i,y_i is 1 when j = y_i. So dL/dx_ij =
//! g·(softmax_ij − [j = y_i])/N. The forward saves the per-row log Σ exp
//! (N numbers), so backward gets softmax_ij = exp(x_ij − lse_i) without
//! redoing the row reductions.

use super::{cpu, cuda, loss_device, scalar_shape, upstream};
use crate::autograd::BackwardOp;
use crate::cpu::simd;
use crate::cuda::exec::wrap;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// mean over the batch of −log softmax(logits)\[label\]; `logits` is [N, C],
/// `labels` has N entries, each below C.
pub fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let (n, c) = check_rows("cross_entropy", logits, labels)?;
    if let Device::Cuda(d) = loss_device("cross_entropy", &[logits])? {
        let labels_dev = cuda::upload_labels(d, labels)?;
        return cross_entropy_gpu(d, logits, labels, labels_dev, c);
    }
    let mut lse = vec![0f32; n];
    let total = cpu::ce_rows(simd::level(), &logits.cpu()?, c, labels, &mut lse);
    let value = (total / n as f64) as f32;
    Ok(Tensor::from_cpu_op(
        vec![value],
        scalar_shape(),
        &[logits],
        || {
            Box::new(CrossEntropyBackward {
                logits: logits.clone(),
                labels: labels.to_vec(),
                lse,
                labels_dev: None,
                c,
            })
        },
    ))
}

/// [`cross_entropy`] on GPU `d`, with the labels already there (the
/// backward keeps them).
fn cross_entropy_gpu(
    d: usize,
    logits: &Tensor,
    labels: &[usize],
    labels_dev: crate::cuda::CudaBuffer,
    c: usize,
) -> Result<Tensor> {
    let y = cuda::cross_entropy(d, logits, &labels_dev, labels.len(), c)?;
    Ok(Tensor::from_cuda_op(y, scalar_shape(), &[logits], || {
        Box::new(CrossEntropyBackward {
            logits: logits.clone(),
            labels: labels.to_vec(),
            lse: Vec::new(),
            labels_dev: Some(labels_dev),
            c,
        })
    }))
}

/// `logits` as [N ≥ 1, C ≥ 1] with one label below C per row.
fn check_rows(op: &'static str, logits: &Tensor, labels: &[usize]) -> Result<(usize, usize)> {
    let (n, c) = logits.shape().matrix(op)?;
    if n == 0 || c == 0 {
        return Err(Error::invalid(
            op,
            format!("logits of shape [{n}, {c}] are empty; expected [N >= 1, C >= 1]"),
        ));
    }
    if labels.len() != n {
        return Err(Error::invalid(
            op,
            format!(
                "{} labels for a batch of {n} logit rows; expected one label per row",
                labels.len()
            ),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
        return Err(Error::invalid(
            op,
            format!(
                "label {l} at batch index {i} is out of range for {c} classes (expected 0..{c})"
            ),
        ));
    }
    Ok((n, c))
}

/// Index of the largest value of `row`: the first of equal maxima; NaN
/// never counts as largest, and a row with nothing above −inf gives 0.
/// (`ce_row_argmax` in `kernels/loss.cu` answers the same.)
pub fn row_argmax(row: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (j, &x) in row.iter().enumerate() {
        if x > best.1 {
            best = (j, x);
        }
    }
    best.0
}

/// How many rows of `logits` ([N, C]) have their [`row_argmax`] at their
/// label: a training loop's count of correct answers, as a one-element
/// tensor on the logits' device, so that the loop can add it up there
/// without a copy to the host. No gradient (a count has none).
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let (n, c) = check_rows("count_correct", logits, labels)?;
    if let Device::Cuda(d) = loss_device("count_correct", &[logits])? {
        let labels_dev = cuda::upload_labels(d, labels)?;
        return wrap(cuda::hits(d, logits, &labels_dev, n, c)?, scalar_shape());
    }
    let x = logits.cpu()?;
    let hits = x
        .chunks_exact(c)
        .zip(labels)
        .filter(|(row, &y)| row_argmax(row) == y)
        .count();
    Tensor::from_vec(vec![hits as f32], scalar_shape())
}

/// [`cross_entropy`] and [`count_correct`] of the same logits and labels,
/// as a training step wants them: `(loss, count)`. On a GPU the labels go
/// to the device once for both (and stay there for the backward).
pub fn cross_entropy_and_correct(logits: &Tensor, labels: &[usize]) -> Result<(Tensor, Tensor)> {
    let (n, c) = check_rows("cross_entropy", logits, labels)?;
    if let Device::Cuda(d) = loss_device("cross_entropy", &[logits])? {
        let labels_dev = cuda::upload_labels(d, labels)?;
        let correct = wrap(cuda::hits(d, logits, &labels_dev, n, c)?, scalar_shape())?;
        return Ok((
            cross_entropy_gpu(d, logits, labels, labels_dev, c)?,
            correct,
        ));
    }
    Ok((
        cross_entropy(logits, labels)?,
        count_correct(logits, labels)?,
    ))
}

struct CrossEntropyBackward {
    logits: Tensor,
    labels: Vec<usize>,
    /// log Σ_j exp(x_ij) per row, saved by the forward pass.
    lse: Vec<f32>,
    /// The labels on the GPU (the GPU backward recomputes log Σ exp per row
    /// inside its warp instead of saving it).
    labels_dev: Option<crate::cuda::CudaBuffer>,
    c: usize,
}

impl BackwardOp for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.logits.clone()]
    }
    fn backward(&self, _out: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs.first().copied().unwrap_or(false) {
            return Ok(vec![None]);
        }
        if let Device::Cuda(d) = loss_device("cross_entropy backward", &[g, &self.logits])? {
            let rows = self.labels.len();
            let labels = match &self.labels_dev {
                Some(l) => l,
                None => &cuda::upload_labels(d, &self.labels)?,
            };
            let dz = cuda::cross_entropy_grad(d, &self.logits, labels, g, rows, self.c)?;
            return Ok(vec![Some(wrap(dz, self.logits.shape().clone())?)]);
        }
        let s = upstream(g, "cross_entropy")? / self.labels.len() as f32;
        let x = self.logits.cpu()?;
        let mut out = vec![0f32; x.len()];
        cpu::ce_grad_rows(
            simd::level(),
            &x,
            self.c,
            &self.labels,
            &self.lse,
            s,
            &mut out,
        );
        Ok(vec![Some(Tensor::from_vec(
            out,
            self.logits.shape().clone(),
        )?)])
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
    fn ce_value_by_hand() {
        // Row 0: uniform over 3 classes → log 3. Row 1: logits (0, ln 3, 0),
        // label 1 → −log(3/5) = log(5/3).
        let x = Tensor::from_vec(vec![0.0, 0.0, 0.0, 0.0, 3f32.ln(), 0.0], [2, 3]).unwrap();
        let l = cross_entropy(&x, &[2, 1]).unwrap().item().unwrap();
        let want = (3f64.ln() + (5.0f64 / 3.0).ln()) / 2.0;
        assert!((l as f64 - want).abs() < 1e-6, "{l} vs {want}");
    }

    #[test]
    fn ce_is_stable_for_huge_logits() {
        // exp(1000) overflows f32; the max-subtracted form gives log(1+e^-1000)≈0 and 1000.
        let x = Tensor::from_vec(vec![1000.0, 0.0, -1000.0, 1000.0], [2, 2]).unwrap();
        let l = cross_entropy(&x, &[0, 0]).unwrap().item().unwrap();
        assert!(l.is_finite());
        assert!((l - 1000.0).abs() < 1e-3, "{l}");
        let xg = x.requires_grad();
        let g = cross_entropy(&xg, &[0, 0]).unwrap().backward().unwrap();
        let gv = g.get(&xg).unwrap().to_vec().unwrap();
        assert!(gv.iter().all(|v| v.is_finite()), "{gv:?}");
        assert_close(&gv, &[0.0, 0.0, -0.5, 0.5], 1e-6, 0.0, "huge-logit grad");
    }

    #[test]
    fn ce_rejects_bad_labels() {
        let x = Tensor::zeros([2, 4]);
        let e = cross_entropy(&x, &[0, 4]).unwrap_err().to_string();
        assert!(e.contains("label 4") && e.contains("4 classes"), "{e}");
        let e = cross_entropy(&x, &[0]).unwrap_err().to_string();
        assert!(e.contains("1 labels") && e.contains("batch of 2"), "{e}");
        assert!(cross_entropy(&Tensor::zeros([2, 2, 2]), &[0, 0]).is_err());
    }

    #[test]
    fn ce_gradcheck() {
        let x = Tensor::from_vec(rnd(5 * 7, 5, -3.0, 3.0), [5, 7]).unwrap();
        let labels = [0, 6, 3, 3, 1];
        let r = gradcheck(
            |v| cross_entropy(&v[0], &labels),
            &[x],
            1e-2,
            2e-5,
            1e-2,
            100,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn ce_kernels_match_reference_at_every_level() {
        for (n, c) in [(1usize, 1usize), (3, 10), (33, 17)] {
            let x = rnd(n * c, 40 + n as u64, -8.0, 8.0);
            let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % c).collect();
            let want = reference::cross_entropy(&x, c, &labels);
            let want_g = reference::cross_entropy_grad(&x, c, &labels, 0.3);
            for lv in available_levels() {
                let mut lse = vec![0f32; n];
                let got = cpu::ce_rows(lv, &x, c, &labels, &mut lse) / n as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{lv}: {got} vs {want}"
                );
                let mut g = vec![0f32; n * c];
                cpu::ce_grad_rows(lv, &x, c, &labels, &lse, 0.3 / n as f32, &mut g);
                assert_close(&g, &want_g, 1e-7, 1e-4, &format!("{lv} ce grad {n}x{c}"));
            }
        }
    }
}
