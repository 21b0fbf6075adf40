//! The black-box attack (the paper's Algorithm 2): the attacker cannot see
//! f1's weights or gradients, only *query* it. It feeds its own images X
//! through f1, trains an inverse network g to minimise Σ‖g(f1(x)) − x‖², and
//! answers an observed v with g(v).
//!
//! The query-only access is an API boundary: the attack receives a
//! [`QueryOracle`], whose only method returns detached features computed
//! without a graph — there is no way to reach f1's weights through it.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::nn::Sequential;
use crate::ops;
use crate::tensor::Tensor;
use crate::train::{fit, EpochStats, TrainConfig};

/// Forward-only access to the client model f1.
pub trait QueryOracle {
    /// f1(x) for a batch of normalised images; no gradient, no weights.
    fn query(&self, x: &Tensor) -> Result<Tensor>;
}

/// Wraps a client net so that only queries are possible.
pub struct ClientOracle {
    f1: Sequential,
    queries: std::cell::Cell<usize>,
}

impl ClientOracle {
    /// Hides `f1` behind the query interface.
    pub fn new(f1: Sequential) -> Self {
        ClientOracle {
            f1,
            queries: std::cell::Cell::new(0),
        }
    }
    /// Images queried so far.
    pub fn queries(&self) -> usize {
        self.queries.get()
    }
}

impl QueryOracle for ClientOracle {
    fn query(&self, x: &Tensor) -> Result<Tensor> {
        self.queries.set(self.queries.get() + x.shape().dim(0)?);
        Ok(no_grad(|| self.f1.forward(&x.detach()))?.detach())
    }
}

/// What the attacker trains g on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DataSetting {
    /// The target's own training set.
    SameSet,
    /// A disjoint set from the same distribution.
    SameDist,
    /// Gaussian noise shaped like images: with the statistics of natural
    /// photographs for colour images, calibrated to the observed features
    /// for grey-level ones (see [`super::noise`]).
    Random,
    /// The paper's noise: white, standard normal in normalised space.
    RandomWhite,
}

impl DataSetting {
    /// Whether the attacker trains on noise rather than images.
    pub fn is_noise(self) -> bool {
        matches!(self, DataSetting::Random | DataSetting::RandomWhite)
    }
}

impl std::str::FromStr for DataSetting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "same-set" => Ok(DataSetting::SameSet),
            "same-dist" => Ok(DataSetting::SameDist),
            "random" => Ok(DataSetting::Random),
            "random-white" => Ok(DataSetting::RandomWhite),
            _ => Err(Error::UnknownName {
                kind: "black-box setting",
                name: s.into(),
                expected: "same-set, same-dist, random, random-white".into(),
            }),
        }
    }
}

impl std::fmt::Display for DataSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataSetting::SameSet => "same-set",
            DataSetting::SameDist => "same-dist",
            DataSetting::Random => "random",
            DataSetting::RandomWhite => "random-white",
        })
    }
}

/// Trains the inverse network `g` (made trainable here) on `n` attacker
/// images produced by `images(indices)` (normalised space). Returns the
/// per-epoch statistics; `g` holds the trained weights.
pub fn train_inverse(
    oracle: &dyn QueryOracle,
    g: &mut Sequential,
    n: usize,
    images: &mut dyn FnMut(&[usize], &mut rand_chacha::ChaCha8Rng) -> Result<Tensor>,
    cfg: &TrainConfig,
) -> Result<Vec<EpochStats>> {
    g.set_trainable(true);
    let gg = g.clone();
    let mut step =
        |idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| -> Result<(Tensor, Option<Tensor>)> {
            let x = images(idx, rng)?;
            let v = oracle.query(&x)?;
            let recon = gg.forward(&v)?;
            if recon.shape() != x.shape() {
                return Err(Error::shape(
                    "inverse network output",
                    x.shape(),
                    recon.shape(),
                ));
            }
            Ok((ops::mse_loss(&recon, &x)?, None))
        };
    let stats = fit(
        &g.named_params(),
        n,
        cfg,
        0,
        "inverse",
        &mut step,
        &mut |_| Ok(()),
    )?;
    g.set_trainable(false);
    Ok(stats)
}

/// g(v): the black-box reconstruction of observed features.
pub fn reconstruct(g: &Sequential, v: &Tensor) -> Result<Tensor> {
    no_grad(|| g.forward(v))
}
