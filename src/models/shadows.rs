//! Shadow models for the query-free attack: a stand-in f1' for the client
//! part, trained through the frozen server part f2. "Same net" is f1's own
//! architecture with fresh weights; "different net" is an alternative whose
//! output has f1's shape — the paper's Table 5 structures where it gives
//! them (MNIST conv1: two 3×3 convs; ReLU2: four 3×3 convs; CIFAR conv11:
//! 3×3 with 16 filters then 3×3 with 64; ReLU22: 5×5 with 64 then 5×5 with
//! 128), and the same idea carried on for every other layer.

use super::ModelKind;
use crate::error::Result;
use crate::nn::{Layer, Sequential};
use rand::SeedableRng;

/// The shadow f1' for `split` of `kind`.
pub fn shadow_for(kind: ModelKind, split: &str, same_net: bool, seed: u64) -> Result<Sequential> {
    if same_net {
        let net = kind.build(seed)?;
        return Ok(net.split(split)?.0);
    }
    let alt = match kind {
        ModelKind::Lenet => lenet_alternative(seed)?,
        ModelKind::Cifar10Cnn => cifar_alternative(split, seed)?,
    };
    Ok(alt.split(split)?.0)
}

/// LeNet with every 5×5 conv replaced by two 3×3 convs. Cut at conv1 it is
/// the paper's "two 3×3 convs", at ReLU2 its "four 3×3 convs".
fn lenet_alternative(seed: u64) -> Result<Sequential> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Sequential::new()
        .with("conv1a", Layer::conv2d(1, 8, 3, 1, 0, &mut r))?
        .with("ReLU1a", Layer::Relu)?
        .with("conv1", Layer::conv2d(8, 8, 3, 1, 0, &mut r))?
        .with("ReLU1", Layer::Relu)?
        .with("pool1", Layer::max_pool(2, 2))?
        .with("conv2a", Layer::conv2d(8, 16, 3, 1, 0, &mut r))?
        .with("ReLU2a", Layer::Relu)?
        .with("conv2", Layer::conv2d(16, 16, 3, 1, 0, &mut r))?
        .with("ReLU2", Layer::Relu)?
        .with("pool2", Layer::max_pool(2, 2))?
        .with("flatten", Layer::Flatten)?
        .with("fc1", Layer::linear(256, 120, &mut r))?
        .with("fc1act", Layer::Relu)?
        .with("fc2", Layer::linear(120, 84, &mut r))?
        .with("fc2act", Layer::Relu)?
        .with("fc3", Layer::linear(84, 10, &mut r))
}

/// The CIFAR alternatives. In the first block: 3×3/16 then 3×3/64 filters
/// (the paper's conv11 shadow). Deeper: 5×5/64, pool, then 5×5/128 convs
/// (the paper's ReLU22 shadow), continued with 5×5 convs in block 3.
fn cifar_alternative(split: &str, seed: u64) -> Result<Sequential> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut net = Sequential::new();
    let first_block = matches!(split, "conv11" | "ReLU11" | "conv12" | "ReLU12" | "pool1");
    if first_block {
        net.push("conv11a", Layer::conv2d(3, 16, 3, 1, 1, &mut r))?;
        net.push("ReLU11a", Layer::Relu)?;
        net.push("conv11", Layer::conv2d(16, 64, 3, 1, 1, &mut r))?;
        net.push("ReLU11", Layer::Relu)?;
        net.push("conv12", Layer::conv2d(64, 64, 3, 1, 1, &mut r))?;
        net.push("ReLU12", Layer::Relu)?;
        net.push("pool1", Layer::max_pool(2, 2))?;
        return Ok(net);
    }
    net.push("conv1a", Layer::conv2d(3, 64, 5, 1, 2, &mut r))?;
    net.push("ReLU1a", Layer::Relu)?;
    net.push("pool1", Layer::max_pool(2, 2))?;
    // Name the 5×5/128 conv after whichever layer of block 2 is the split,
    // so `split(name)` cuts right after it.
    let (c2, a2) = if matches!(split, "conv21" | "ReLU21") {
        ("conv21", "ReLU21")
    } else {
        ("conv22", "ReLU22")
    };
    net.push(c2, Layer::conv2d(64, 128, 5, 1, 2, &mut r))?;
    net.push(a2, Layer::Relu)?;
    net.push("pool2", Layer::max_pool(2, 2))?;
    let (c3, a3) = if matches!(split, "conv31" | "ReLU31") {
        ("conv31", "ReLU31")
    } else {
        ("conv32", "ReLU32")
    };
    net.push(c3, Layer::conv2d(128, 128, 5, 1, 2, &mut r))?;
    net.push(a3, Layer::Relu)?;
    net.push("pool3", Layer::max_pool(2, 2))?;
    net.push("flatten", Layer::Flatten)?;
    net.push("fc1", Layer::linear(2048, 512, &mut r))?;
    net.push("fc1act", Layer::Sigmoid)?;
    net.push("fc2", Layer::linear(512, 10, &mut r))?;
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shadow_matches_the_client_output_shape() {
        for kind in [ModelKind::Lenet, ModelKind::Cifar10Cnn] {
            let net = kind.build(0).unwrap();
            let [c, h, w] = kind.input_chw();
            for split in kind.splits() {
                let f1 = net.split(split).unwrap().0;
                let want = f1.output_shape(&[1, c, h, w]).unwrap();
                for same in [true, false] {
                    let s = shadow_for(kind, split, same, 1).unwrap();
                    assert_eq!(
                        s.output_shape(&[1, c, h, w]).unwrap(),
                        want,
                        "{kind:?} {split} same_net={same}"
                    );
                }
            }
        }
    }
}
