//! LeNet-5 as in the authors' code (DESIGN.md §2).

/// The input normalisation, defined once with the data transforms.
pub use crate::data::transforms::{MNIST_MEAN, MNIST_STD};
use crate::error::Result;
use crate::nn::{Layer, Sequential};
use rand::SeedableRng;

/// Every layer of LeNet, each a split point.
pub const LENET_SPLITS: [&str; 11] = [
    "conv1", "ReLU1", "pool1", "conv2", "ReLU2", "pool2", "fc1", "fc1act", "fc2", "fc2act", "fc3",
];

/// conv1 1→8 k5 → ReLU → maxpool 2 → conv2 8→16 k5 → ReLU → maxpool 2 →
/// flatten 256 → fc1 120 → ReLU → fc2 84 → ReLU → fc3 10.
pub fn lenet(seed: u64) -> Result<Sequential> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Sequential::new()
        .with("conv1", Layer::conv2d(1, 8, 5, 1, 0, &mut rng))?
        .with("ReLU1", Layer::Relu)?
        .with("pool1", Layer::max_pool(2, 2))?
        .with("conv2", Layer::conv2d(8, 16, 5, 1, 0, &mut rng))?
        .with("ReLU2", Layer::Relu)?
        .with("pool2", Layer::max_pool(2, 2))?
        .with("flatten", Layer::Flatten)?
        .with("fc1", Layer::linear(256, 120, &mut rng))?
        .with("fc1act", Layer::Relu)?
        .with("fc2", Layer::linear(120, 84, &mut rng))?
        .with("fc2act", Layer::Relu)?
        .with("fc3", Layer::linear(84, 10, &mut rng))
}
