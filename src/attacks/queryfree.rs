//! The query-free attack (the paper's Algorithm 3): the attacker cannot
//! query f1 but has the server part f2. It trains a *shadow* f1' so that
//! f2(f1'(x)) classifies labelled data correctly with f2 frozen — which
//! forces f1' to produce features f2 understands, i.e. features like f1's —
//! and then runs the white-box attack on f1' against the observed v.

use crate::error::{Error, Result};
use crate::nn::Sequential;
use crate::ops;
use crate::tensor::Tensor;
use crate::train::{argmax_rows, fit, BatchFn, EpochStats, TrainConfig};

/// Which data and structure the shadow uses (the paper's four settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowSetting {
    /// Trained on the target's own training set (else a disjoint set).
    pub same_set: bool,
    /// Same architecture as f1 (else the paper's alternative structure).
    pub same_net: bool,
}

impl std::str::FromStr for ShadowSetting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "same-set-same-net" => Ok(ShadowSetting {
                same_set: true,
                same_net: true,
            }),
            "diff-set-same-net" => Ok(ShadowSetting {
                same_set: false,
                same_net: true,
            }),
            "same-set-diff-net" => Ok(ShadowSetting {
                same_set: true,
                same_net: false,
            }),
            "diff-set-diff-net" => Ok(ShadowSetting {
                same_set: false,
                same_net: false,
            }),
            _ => Err(Error::UnknownName {
                kind: "query-free setting",
                name: s.into(),
                expected:
                    "same-set-same-net, diff-set-same-net, same-set-diff-net, diff-set-diff-net"
                        .into(),
            }),
        }
    }
}

impl std::fmt::Display for ShadowSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-set-{}-net",
            if self.same_set { "same" } else { "diff" },
            if self.same_net { "same" } else { "diff" }
        )
    }
}

/// Trains `shadow` through the frozen `f2` with cross-entropy on labelled
/// images from `batch(indices)` (normalised images and labels).
pub fn train_shadow(
    shadow: &mut Sequential,
    f2: &Sequential,
    n: usize,
    batch: &mut BatchFn,
    cfg: &TrainConfig,
) -> Result<Vec<EpochStats>> {
    let mut f2 = f2.clone();
    f2.set_trainable(false);
    shadow.set_trainable(true);
    let params = shadow.params();
    let s = shadow.clone();
    let mut step = |idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| -> Result<(Tensor, f64)> {
        let (x, labels) = batch(idx, rng)?;
        let logits = f2.forward(&s.forward_train(&x, rng)?)?;
        let correct = argmax_rows(&logits)?
            .iter()
            .zip(&labels)
            .filter(|(a, b)| a == b)
            .count();
        Ok((ops::cross_entropy(&logits, &labels)?, correct as f64))
    };
    let stats = fit(&params, n, cfg, 0, "shadow", &mut step, &mut |_| Ok(()))?;
    shadow.set_trainable(false);
    Ok(stats)
}
