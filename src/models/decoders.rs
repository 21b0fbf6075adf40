//! Inverse networks for the black-box attack: g maps the features seen at a
//! split layer back to an image (in the target net's normalised space).
//!
//! For the paper's split layers these are the authors' decoders (DESIGN.md
//! §2). For every other layer one is built automatically from the feature
//! shape: a linear layer lifts a feature *vector* to small feature maps;
//! stride-2 transposed convolutions double the spatial size until it
//! reaches the image's; a final transposed conv maps to the image channels.

use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential};
use rand::SeedableRng;

/// The decoder for features of shape `feat` (without the batch dimension)
/// at layer `split`, producing images of shape `chw`.
pub fn decoder_for(split: &str, feat: &[usize], chw: [usize; 3], seed: u64) -> Result<Sequential> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let r = &mut rng;
    let [c0, h0, w0] = chw;
    let mut g = Sequential::new();
    match (split, feat, chw) {
        // Authors' MNIST decoders (ReLU2: widened, see below).
        ("conv1" | "ReLU1", [8, 24, 24], [1, 28, 28]) => {
            g.push("deconv1", Layer::conv2d(8, 1, 5, 1, 4, r))?;
        }
        ("conv2" | "ReLU2", [16, 8, 8], [1, 28, 28]) => {
            // The authors' shape with 16 hidden channels instead of 8: with
            // the same training, same-dist 20.11 → 21.12 dB (paper 20.81),
            // same-set 19.92 → 20.77 (paper 20.35); 12 channels gave 20.50,
            // 24 gave 21.17, 32 gave 20.37 (same-dist; the lr suits ≤ 24).
            g.push("deconv1", Layer::conv_transpose2d(16, 16, 5, 1, 0, 0, r))?;
            g.push("relu1", Layer::Relu)?;
            g.push("deconv2", Layer::conv_transpose2d(16, 1, 5, 2, 0, 1, r))?;
        }
        // Authors' CIFAR decoders.
        ("conv11" | "ReLU11", [64, 32, 32], [3, 32, 32]) => {
            g.push("deconv1", Layer::conv_transpose2d(64, 3, 3, 1, 1, 0, r))?;
        }
        ("conv21" | "ReLU21" | "conv22" | "ReLU22", [128, 16, 16], [3, 32, 32]) => {
            g.push("deconv1", Layer::conv_transpose2d(128, 64, 3, 2, 1, 1, r))?;
            g.push("relu1", Layer::Relu)?;
            g.push("deconv2", Layer::conv_transpose2d(64, 3, 3, 1, 1, 0, r))?;
        }
        ("conv31" | "ReLU31" | "conv32" | "ReLU32", [128, 8, 8], [3, 32, 32]) => {
            g.push("deconv1", Layer::conv_transpose2d(128, 128, 3, 2, 1, 1, r))?;
            g.push("relu1", Layer::Relu)?;
            g.push("deconv2", Layer::conv_transpose2d(128, 64, 3, 2, 1, 1, r))?;
            g.push("relu2", Layer::Relu)?;
            g.push("deconv3", Layer::conv_transpose2d(64, 3, 3, 1, 1, 0, r))?;
        }
        _ => return auto_decoder(feat, [c0, h0, w0], r),
    }
    Ok(g)
}

/// Builds a decoder from shapes alone (any layer, FC layers included).
pub fn auto_decoder(
    feat: &[usize],
    chw: [usize; 3],
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Sequential> {
    let [c0, h0, w0] = chw;
    let mut g = Sequential::new();
    // Start: feature maps (c, h, w).
    let (mut c, mut h, mut w) = match *feat {
        [c, h, w] => (c, h, w),
        [d] => {
            // Lift a vector to maps at 1/4 (or 1/8) of the image size.
            let (hs, ws) = if h0 >= 32 {
                (h0 / 8, w0 / 8)
            } else {
                (h0.div_ceil(4), w0.div_ceil(4))
            };
            let ch = if h0 >= 32 { 128 } else { 32 };
            g.push("lift", Layer::linear(d, ch * hs * ws, rng))?;
            g.push("lift_act", Layer::Relu)?;
            g.push("unflatten", Layer::Reshape(vec![ch, hs, ws]))?;
            (ch, hs, ws)
        }
        _ => {
            return Err(Error::invalid(
                "decoder",
                format!("cannot build a decoder for features of shape {feat:?}"),
            ))
        }
    };
    let mut k = 0;
    // Double the size while that does not overshoot.
    while h * 2 <= h0 && w * 2 <= w0 {
        k += 1;
        let cout = (c / 2).max(16).max(c0);
        g.push(
            format!("up{k}"),
            Layer::conv_transpose2d(c, cout, 3, 2, 1, 1, rng),
        )?;
        g.push(format!("up{k}_act"), Layer::Relu)?;
        (c, h, w) = (cout, h * 2, w * 2);
    }
    if h > h0 || w > w0 || h0 - h != w0 - w {
        return Err(Error::invalid(
            "decoder",
            format!("cannot map feature maps {c}×{h}×{w} onto images {c0}×{h0}×{w0}"),
        ));
    }
    // Close the remaining gap (e.g. 24 → 28, 7·4 = 28 → 28) with one kernel:
    // a stride-1 transposed conv of size k grows the map by k − 1.
    let grow = h0 - h;
    let kk = if grow == 0 { 3 } else { grow + 1 };
    let pad = if grow == 0 { 1 } else { 0 };
    g.push("out", Layer::conv_transpose2d(c, c0, kk, 1, pad, 0, rng))?;
    Ok(g)
}
