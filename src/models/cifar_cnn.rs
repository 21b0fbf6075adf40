//! The CIFAR-10 CNN of the authors' code (DESIGN.md §2).

/// The input normalisation, defined once with the data transforms.
pub use crate::data::transforms::{CIFAR_MEAN, CIFAR_STD};
use crate::error::Result;
use crate::nn::{Layer, Sequential};
use rand::SeedableRng;

/// Every layer of the CIFAR CNN, each a split point.
pub const CIFAR_SPLITS: [&str; 18] = [
    "conv11", "ReLU11", "conv12", "ReLU12", "pool1", "conv21", "ReLU21", "conv22", "ReLU22",
    "pool2", "conv31", "ReLU31", "conv32", "ReLU32", "pool3", "fc1", "fc1act", "fc2",
];

/// conv11 3→64, conv12 64→64, pool, conv21 64→128, conv22 128→128, pool,
/// conv31 128→128, conv32 128→128, pool (k3 p1, each followed by ReLU) →
/// flatten 2048 → fc1 512 → Sigmoid → fc2 10.
pub fn cifar10_cnn(seed: u64) -> Result<Sequential> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut net = Sequential::new();
    let blocks = [("1", 3, 64), ("2", 64, 128), ("3", 128, 128)];
    for (b, cin, cout) in blocks {
        net.push(
            format!("conv{b}1"),
            Layer::conv2d(cin, cout, 3, 1, 1, &mut rng),
        )?;
        net.push(format!("ReLU{b}1"), Layer::Relu)?;
        net.push(
            format!("conv{b}2"),
            Layer::conv2d(cout, cout, 3, 1, 1, &mut rng),
        )?;
        net.push(format!("ReLU{b}2"), Layer::Relu)?;
        net.push(format!("pool{b}"), Layer::max_pool(2, 2))?;
    }
    net.with("flatten", Layer::Flatten)?
        .with("fc1", Layer::linear(2048, 512, &mut rng))?
        .with("fc1act", Layer::Sigmoid)?
        .with("fc2", Layer::linear(512, 10, &mut rng))
}
