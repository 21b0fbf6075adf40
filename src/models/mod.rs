//! The target networks of the paper, by name.

mod cifar_cnn;
pub mod decoders;
mod lenet;
pub mod shadows;
pub mod spec;

pub use cifar_cnn::{cifar10_cnn, CIFAR_MEAN, CIFAR_SPLITS, CIFAR_STD};
pub use lenet::{lenet, LENET_SPLITS, MNIST_MEAN, MNIST_STD};

use crate::error::{Error, Result};
use crate::nn::Sequential;

/// A built-in architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// LeNet-5 for 28×28 grayscale (MNIST).
    Lenet,
    /// The 6-conv + 2-fc CIFAR-10 CNN.
    Cifar10Cnn,
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lenet" | "lenet5" | "lenet-5" => Ok(ModelKind::Lenet),
            "cifar10cnn" | "cifar10_cnn" | "cifar-cnn" | "cifar" => Ok(ModelKind::Cifar10Cnn),
            _ => Err(Error::UnknownName {
                kind: "model",
                name: s.to_string(),
                expected: "lenet, cifar10cnn".into(),
            }),
        }
    }
}

impl ModelKind {
    /// The name `--model` takes (`lenet`, `cifar10cnn`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Lenet => "lenet",
            ModelKind::Cifar10Cnn => "cifar10cnn",
        }
    }
    /// Builds the architecture with seeded PyTorch-default initialisation.
    pub fn build(self, seed: u64) -> Result<Sequential> {
        match self {
            ModelKind::Lenet => lenet(seed),
            ModelKind::Cifar10Cnn => cifar10_cnn(seed),
        }
    }
    /// Input shape of one image, `[C, H, W]`.
    pub fn input_chw(self) -> [usize; 3] {
        match self {
            ModelKind::Lenet => [1, 28, 28],
            ModelKind::Cifar10Cnn => [3, 32, 32],
        }
    }
    /// Per-channel normalisation (mean, std) the net expects.
    pub fn normalization(self) -> (&'static [f32], &'static [f32]) {
        match self {
            ModelKind::Lenet => (&MNIST_MEAN, &MNIST_STD),
            ModelKind::Cifar10Cnn => (&CIFAR_MEAN, &CIFAR_STD),
        }
    }
    /// The split point in [`ModelKind::splits`] whose features `split`'s
    /// are: `flatten` only reshapes the last pooling's output (the same
    /// numbers in one row), so it is tuned as that split. Any other name
    /// comes back as it is.
    pub fn same_features_as(self, split: &str) -> &str {
        match (self, split) {
            (ModelKind::Lenet, "flatten") => "pool2",
            (ModelKind::Cifar10Cnn, "flatten") => "pool3",
            _ => split,
        }
    }
    /// Every split point, in order.
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            ModelKind::Lenet => &LENET_SPLITS,
            ModelKind::Cifar10Cnn => &CIFAR_SPLITS,
        }
    }
    /// Whether `split` is the first conv layer or its ReLU (the splits
    /// where f1 is one linear map, before or after one ReLU).
    pub fn is_first_conv(self, split: &str) -> bool {
        self.splits().iter().take(2).any(|s| *s == split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn first_conv_splits() {
        for (kind, yes) in [
            (ModelKind::Lenet, ["conv1", "ReLU1"]),
            (ModelKind::Cifar10Cnn, ["conv11", "ReLU11"]),
        ] {
            for s in kind.splits() {
                assert_eq!(kind.is_first_conv(s), yes.contains(s), "{kind:?} {s}");
            }
        }
        assert!(!ModelKind::Lenet.is_first_conv("conv11"));
    }

    #[test]
    fn lenet_shapes_match_the_paper() {
        let net = lenet(0).unwrap();
        assert_eq!(
            net.layer_names(),
            [
                "conv1", "ReLU1", "pool1", "conv2", "ReLU2", "pool2", "flatten", "fc1", "fc1act",
                "fc2", "fc2act", "fc3"
            ]
        );
        let outs = net.forward_all(&Tensor::zeros([2, 1, 28, 28])).unwrap();
        let dims: Vec<Vec<usize>> = outs.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(dims[0], [2, 8, 24, 24]); // conv1, the paper's split
        assert_eq!(dims[4], [2, 16, 8, 8]); // ReLU2, the paper's split
        assert_eq!(dims[6], [2, 256]);
        // flatten holds pool2's numbers (tuned as pool2: same_features_as).
        assert_eq!(outs[6].to_vec().unwrap(), outs[5].to_vec().unwrap());
        assert_eq!(ModelKind::Lenet.same_features_as("flatten"), "pool2");
        assert_eq!(
            net.index_of("pool2").unwrap() + 1,
            net.index_of("flatten").unwrap()
        );
        assert_eq!(dims[11], [2, 10]);
        let (f1, f2) = net.split("ReLU2").unwrap();
        assert_eq!(f1.len() + f2.len(), net.len());
        assert!(f1.params()[0].same_storage(&net.params()[0]));
        assert!(net.split("conv9").is_err());
    }

    #[test]
    fn cifar_shapes_match_the_paper() {
        let net = cifar10_cnn(0).unwrap();
        let outs = net.forward_all(&Tensor::zeros([1, 3, 32, 32])).unwrap();
        let at = |n: &str| outs[net.index_of(n).unwrap()].dims().to_vec();
        assert_eq!(at("conv11"), [1, 64, 32, 32]);
        assert_eq!(at("ReLU22"), [1, 128, 16, 16]);
        assert_eq!(at("ReLU32"), [1, 128, 8, 8]);
        assert_eq!(at("fc1"), [1, 512]);
        assert_eq!(at("fc2"), [1, 10]);
        for s in CIFAR_SPLITS {
            net.index_of(s).unwrap();
        }
        let pool = ModelKind::Cifar10Cnn.same_features_as("flatten");
        assert_eq!(
            net.index_of(pool).unwrap() + 1,
            net.index_of("flatten").unwrap()
        );
    }
}
