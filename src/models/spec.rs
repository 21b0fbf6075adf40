//! User-defined sequential nets from a JSON spec, so an architecture can be
//! attacked without writing Rust. `models/lenet.json` and
//! `models/cifar10cnn.json` in the repository are the two built-in nets in
//! this format.
//!
//! ```json
//! { "name": "tiny", "input": [1, 28, 28],
//!   "normalization": { "mean": [0.5], "std": [0.5] },
//!   "layers": [
//!     { "name": "conv1", "type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1 },
//!     { "name": "act1",  "type": "relu" },
//!     { "name": "pool1", "type": "max_pool2d", "kernel": 2 },
//!     { "name": "flat",  "type": "flatten" },
//!     { "name": "fc",    "type": "linear", "in": 784, "out": 10 } ] }
//! ```

use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential};
use crate::ops::Pool2dParams;
use rand::SeedableRng;
use std::path::Path;

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

/// One layer of a spec.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// Convolution.
    Conv2d {
        /// Layer name.
        name: String,
        /// Input channels.
        #[serde(rename = "in")]
        cin: usize,
        /// Output channels.
        #[serde(rename = "out")]
        cout: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding.
        #[serde(default)]
        padding: usize,
        /// Learn a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Transposed convolution.
    ConvTranspose2d {
        /// Layer name.
        name: String,
        /// Input channels.
        #[serde(rename = "in")]
        cin: usize,
        /// Output channels.
        #[serde(rename = "out")]
        cout: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Padding.
        #[serde(default)]
        padding: usize,
        /// Output padding.
        #[serde(default)]
        output_padding: usize,
    },
    /// Fully connected.
    Linear {
        /// Layer name.
        name: String,
        /// Input features.
        #[serde(rename = "in")]
        fin: usize,
        /// Output features.
        #[serde(rename = "out")]
        fout: usize,
    },
    /// Max pooling (stride defaults to the kernel size).
    MaxPool2d {
        /// Layer name.
        name: String,
        /// Window.
        kernel: usize,
        /// Stride.
        stride: Option<usize>,
    },
    /// Average pooling (stride defaults to the kernel size).
    AvgPool2d {
        /// Layer name.
        name: String,
        /// Window.
        kernel: usize,
        /// Stride.
        stride: Option<usize>,
    },
    /// ReLU.
    Relu {
        /// Layer name.
        name: String,
    },
    /// Sigmoid.
    Sigmoid {
        /// Layer name.
        name: String,
    },
    /// tanh.
    Tanh {
        /// Layer name.
        name: String,
    },
    /// Flatten.
    Flatten {
        /// Layer name.
        name: String,
    },
    /// Dropout.
    Dropout {
        /// Layer name.
        name: String,
        /// Drop probability.
        p: f32,
    },
}

/// Per-channel input normalisation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NormSpec {
    /// Means.
    pub mean: Vec<f32>,
    /// Standard deviations.
    pub std: Vec<f32>,
}

/// A whole net.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Display name.
    pub name: String,
    /// One image's shape `[C, H, W]`.
    pub input: [usize; 3],
    /// Input normalisation.
    pub normalization: NormSpec,
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
}

impl NetSpec {
    /// Reads and checks a spec file.
    pub fn from_file(path: &Path) -> Result<NetSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec: NetSpec = serde_json::from_str(&text).map_err(|e| Error::BadData {
            path: path.to_path_buf(),
            msg: format!("not a valid net spec: {e}"),
        })?;
        spec.build(0).map_err(|e| Error::BadData {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(spec)
    }

    /// Builds the net with seeded random weights, checking every layer's
    /// sizes against the shape that actually reaches it.
    pub fn build(&self, seed: u64) -> Result<Sequential> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let [c, h, w] = self.input;
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::invalid(
                "net spec",
                format!("input shape {:?} has a zero dimension", self.input),
            ));
        }
        if self.normalization.mean.len() != c
            || self.normalization.std.len() != c
            || self.normalization.mean.iter().any(|m| !m.is_finite())
            // A subnormal std overflows the normalised input to inf.
            || self.normalization.std.iter().any(|s| !(s.is_normal() && *s > 0.0))
        {
            return Err(Error::invalid(
                "net spec",
                format!(
                    "normalization needs {c} finite means and {c} positive stds of normal size \
                     (at least {:e}), got mean {:?}, std {:?}",
                    f32::MIN_POSITIVE,
                    self.normalization.mean,
                    self.normalization.std
                ),
            ));
        }
        // Sizes first: the layers below allocate their weights, and the dry
        // run allocates every activation, so an absurd size must be refused
        // before either happens.
        self.check_sizes()?;
        let mut net = Sequential::new();
        for l in &self.layers {
            let (name, layer) = match l {
                LayerSpec::Conv2d {
                    name,
                    cin,
                    cout,
                    kernel,
                    stride,
                    padding,
                    bias,
                } => {
                    let mut layer =
                        Layer::conv2d(*cin, *cout, *kernel, *stride, *padding, &mut rng);
                    if !bias {
                        if let Layer::Conv2d { bias, .. } = &mut layer {
                            *bias = None;
                        }
                    }
                    (name, layer)
                }
                LayerSpec::ConvTranspose2d {
                    name,
                    cin,
                    cout,
                    kernel,
                    stride,
                    padding,
                    output_padding,
                } => (
                    name,
                    Layer::conv_transpose2d(
                        *cin,
                        *cout,
                        *kernel,
                        *stride,
                        *padding,
                        *output_padding,
                        &mut rng,
                    ),
                ),
                LayerSpec::Linear { name, fin, fout } => {
                    (name, Layer::linear(*fin, *fout, &mut rng))
                }
                LayerSpec::MaxPool2d {
                    name,
                    kernel,
                    stride,
                } => (
                    name,
                    Layer::MaxPool2d(Pool2dParams::new(*kernel, stride.unwrap_or(*kernel))),
                ),
                LayerSpec::AvgPool2d {
                    name,
                    kernel,
                    stride,
                } => (
                    name,
                    Layer::AvgPool2d(Pool2dParams::new(*kernel, stride.unwrap_or(*kernel))),
                ),
                LayerSpec::Relu { name } => (name, Layer::Relu),
                LayerSpec::Sigmoid { name } => (name, Layer::Sigmoid),
                LayerSpec::Tanh { name } => (name, Layer::Tanh),
                LayerSpec::Flatten { name } => (name, Layer::Flatten),
                LayerSpec::Dropout { name, p } => (name, Layer::Dropout(*p)),
            };
            net.push(name.clone(), layer)?;
        }
        // A dry run on one zero image catches every size mismatch with the layer's name.
        net.output_shape(&[1, c, h, w])?;
        Ok(net)
    }

    /// Walks the layers with checked arithmetic before anything is
    /// allocated: every kernel, stride and dropout rate must make sense,
    /// and no weight tensor, no activation of one image and not the whole
    /// net's weights may exceed [`MAX_SPEC_ELEMENTS`]. Channel and feature
    /// mismatches are left to the dry run in [`NetSpec::build`], which names
    /// them; where the walk loses track of the shape (a mismatch it cannot
    /// follow), it goes on checking the weights alone.
    /// Returns one image's activation elements at every layer together
    /// (input included) and the output's shape, where the walk could follow
    /// it.
    fn check_sizes(&self) -> Result<(usize, Option<Walk>)> {
        let input = &self.input;
        let Some(mut activations) = capped_product(input) else {
            return Err(Error::invalid(
                "net spec",
                format!(
                    "input shape {input:?} has more than {MAX_SPEC_ELEMENTS} elements per image"
                ),
            ));
        };
        let mut shape = Some(Walk::Image(input[0], input[1], input[2]));
        let mut total = 0usize;
        for l in &self.layers {
            let name = l.name();
            let bad = |msg: String| Error::invalid("net spec", format!("layer `{name}`: {msg}"));
            let count = |what: &str, dims: &[usize]| -> Result<usize> {
                capped_product(dims).ok_or_else(|| {
                    bad(format!(
                        "{what} {dims:?} has more than {MAX_SPEC_ELEMENTS} elements"
                    ))
                })
            };
            // A convolution's output, from `side` (the output length of an
            // input length, `None` where the window does not fit).
            let image_out = |cout: usize, side: &dyn Fn(usize) -> Option<usize>| match shape {
                Some(Walk::Image(_, h, w)) => match (side(h), side(w)) {
                    (Some(oh), Some(ow)) => {
                        count("output", &[cout, oh, ow]).map(|_| Some(Walk::Image(cout, oh, ow)))
                    }
                    _ => Ok(None),
                },
                _ => Ok(None),
            };
            let positive = |field: &str, v: usize| {
                if v == 0 {
                    Err(bad(format!("`{field}` must be at least 1, got 0")))
                } else {
                    Ok(())
                }
            };
            let mut weights = 0usize;
            shape = match l {
                LayerSpec::Conv2d {
                    cin,
                    cout,
                    kernel: k,
                    stride,
                    padding,
                    ..
                } => {
                    positive("in", *cin)?;
                    positive("out", *cout)?;
                    positive("kernel", *k)?;
                    positive("stride", *stride)?;
                    weights = count("weight", &[*cout, *cin, *k, *k])? + cout;
                    // out = (in + 2p − k) / s + 1, if the window fits at all.
                    image_out(*cout, &|n| {
                        padding
                            .checked_mul(2)
                            .and_then(|p2| n.checked_add(p2))
                            .and_then(|n| n.checked_sub(*k))
                            .map(|n| n / stride + 1)
                    })?
                }
                LayerSpec::ConvTranspose2d {
                    cin,
                    cout,
                    kernel: k,
                    stride,
                    padding,
                    output_padding,
                    ..
                } => {
                    positive("in", *cin)?;
                    positive("out", *cout)?;
                    positive("kernel", *k)?;
                    positive("stride", *stride)?;
                    weights = count("weight", &[*cin, *cout, *k, *k])? + cout;
                    // out = (in − 1)·s − 2p + k + output_padding.
                    image_out(*cout, &|n| {
                        (n - 1)
                            .checked_mul(*stride)
                            .and_then(|n| n.checked_add(*k))
                            .and_then(|n| n.checked_add(*output_padding))
                            .and_then(|n| n.checked_sub(padding.checked_mul(2)?))
                            .filter(|&n| n > 0)
                    })?
                }
                LayerSpec::Linear { fin, fout, .. } => {
                    positive("in", *fin)?;
                    positive("out", *fout)?;
                    weights = count("weight", &[*fout, *fin])? + fout;
                    count("output", &[*fout])?;
                    Some(Walk::Flat(*fout))
                }
                LayerSpec::MaxPool2d { kernel, stride, .. }
                | LayerSpec::AvgPool2d { kernel, stride, .. } => {
                    positive("kernel", *kernel)?;
                    let s = stride.unwrap_or(*kernel);
                    positive("stride", s)?;
                    match shape {
                        Some(Walk::Image(c, h, w)) if h >= *kernel && w >= *kernel => {
                            Some(Walk::Image(c, (h - kernel) / s + 1, (w - kernel) / s + 1))
                        }
                        _ => None,
                    }
                }
                LayerSpec::Dropout { p, .. } => {
                    if !(0.0..1.0).contains(p) {
                        return Err(bad(format!("dropout `p` must lie in [0, 1), got {p}")));
                    }
                    shape
                }
                LayerSpec::Flatten { .. } => match shape {
                    Some(Walk::Image(c, h, w)) => Some(Walk::Flat(c * h * w)),
                    flat => flat,
                },
                LayerSpec::Relu { .. } | LayerSpec::Sigmoid { .. } | LayerSpec::Tanh { .. } => {
                    shape
                }
            };
            activations = activations.saturating_add(match shape {
                Some(Walk::Image(c, h, w)) => c * h * w,
                Some(Walk::Flat(n)) => n,
                None => 0,
            });
            total = total
                .checked_add(weights)
                .filter(|&t| t <= MAX_SPEC_ELEMENTS)
                .ok_or_else(|| {
                    bad(format!(
                        "the net's weights up to here exceed {MAX_SPEC_ELEMENTS} elements"
                    ))
                })?;
        }
        Ok((activations, shape))
    }

    /// The elements of one image's activations at every layer together
    /// (input included), as far as the size walk can follow the shapes:
    /// what a forward pass keeps for the backward, per image.
    pub fn activation_elements(&self) -> Result<usize> {
        Ok(self.check_sizes()?.0)
    }

    /// One image's output shape (`[C, H, W]` or `[features]`), found by the
    /// size walk without building the net; `None` where the walk cannot
    /// follow the shapes (a spec that [`NetSpec::build`] refuses).
    pub fn output_dims(&self) -> Result<Option<Vec<usize>>> {
        Ok(self.check_sizes()?.1.map(|s| match s {
            Walk::Image(c, h, w) => vec![c, h, w],
            Walk::Flat(n) => vec![n],
        }))
    }
}

/// The product of `dims`, if it does not overflow and stays within
/// [`MAX_SPEC_ELEMENTS`].
fn capped_product(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_SPEC_ELEMENTS)
}

/// The most elements a spec may ask for in one weight tensor, in one
/// image's activation at any layer, and in all its weights together: 2³⁰
/// floats, 4 GiB. Far above any net this tool attacks; low enough that a
/// typo (an extra zero or ten) is an error instead of an allocation that
/// aborts the process.
pub const MAX_SPEC_ELEMENTS: usize = 1 << 30;

/// An activation's shape, one image, as the size walk follows it.
#[derive(Clone, Copy)]
enum Walk {
    /// Channels, height, width.
    Image(usize, usize, usize),
    /// Features after a flatten or a linear layer (whether the next layer
    /// takes that many is left to the dry run).
    Flat(usize),
}

impl LayerSpec {
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            LayerSpec::Conv2d { name, .. }
            | LayerSpec::ConvTranspose2d { name, .. }
            | LayerSpec::Linear { name, .. }
            | LayerSpec::MaxPool2d { name, .. }
            | LayerSpec::AvgPool2d { name, .. }
            | LayerSpec::Relu { name }
            | LayerSpec::Sigmoid { name }
            | LayerSpec::Tanh { name }
            | LayerSpec::Flatten { name }
            | LayerSpec::Dropout { name, .. } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-channel 28×28 spec whose layers are `layers` (JSON objects).
    fn spec(layers: &str) -> NetSpec {
        serde_json::from_str(&format!(
            r#"{{"name": "t", "input": [1, 28, 28],
                "normalization": {{"mean": [0.5], "std": [0.5]}},
                "layers": [{layers}]}}"#
        ))
        .unwrap()
    }

    fn refused(s: &NetSpec) -> String {
        match s.build(0) {
            Ok(_) => panic!("{s:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_small_spec_builds_and_the_walk_agrees_with_the_dry_run() {
        let mut s = spec(
            r#"{"name": "c", "type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1, "stride": 2},
               {"name": "t", "type": "conv_transpose2d", "in": 4, "out": 2, "kernel": 2, "stride": 2},
               {"name": "p", "type": "avg_pool2d", "kernel": 2},
               {"name": "d", "type": "dropout", "p": 0.5},
               {"name": "f", "type": "flatten"},
               {"name": "l", "type": "linear", "in": 392, "out": 10}"#,
        );
        let net = s.build(1).unwrap();
        assert_eq!(net.output_shape(&[1, 1, 28, 28]).unwrap(), vec![1, 10]);
        // Input 784, conv 4·14·14, transposed conv 2·28·28, pool 2·14·14,
        // dropout and flatten the same, linear 10.
        assert_eq!(
            s.activation_elements().unwrap(),
            784 + 784 + 1568 + 392 + 392 + 392 + 10
        );
        assert_eq!(s.output_dims().unwrap(), Some(vec![10]));
        s.layers.truncate(3);
        assert_eq!(s.output_dims().unwrap(), Some(vec![2, 14, 14]));
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        // Each of these allocated terabytes (and aborted) or overflowed
        // `usize` (and panicked) before the walk.
        for (layers, want) in [
            (
                r#"{"name": "big", "type": "conv2d", "in": 1, "out": 1000000000000, "kernel": 5}"#,
                "layer `big`: weight [1000000000000, 1, 5, 5] has more than",
            ),
            (
                r#"{"name": "wrap", "type": "conv2d", "in": 1000000000000, "out": 1000000000000, "kernel": 1000000}"#,
                "layer `wrap`: weight",
            ),
            (
                r#"{"name": "fc", "type": "linear", "in": 100000000000, "out": 10}"#,
                "layer `fc`: weight [10, 100000000000]",
            ),
            (
                r#"{"name": "pad", "type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1000000}"#,
                "layer `pad`: output [4, 2000026, 2000026]",
            ),
            (
                r#"{"name": "up", "type": "conv_transpose2d", "in": 1, "out": 4, "kernel": 3, "stride": 100000}"#,
                "layer `up`: output [4, 2700003, 2700003]",
            ),
            (
                r#"{"name": "f", "type": "flatten"}, {"name": "empty", "type": "linear", "in": 784, "out": 0}"#,
                "layer `empty`: `out` must be at least 1, got 0",
            ),
            (
                r#"{"name": "none", "type": "conv2d", "in": 1, "out": 0, "kernel": 3}"#,
                "layer `none`: `out` must be at least 1",
            ),
            (
                r#"{"name": "k0", "type": "max_pool2d", "kernel": 0}"#,
                "layer `k0`: `kernel` must be at least 1",
            ),
            (
                r#"{"name": "s0", "type": "conv2d", "in": 1, "out": 1, "kernel": 1, "stride": 0}"#,
                "layer `s0`: `stride` must be at least 1",
            ),
            (
                r#"{"name": "drop", "type": "dropout", "p": 2.0}"#,
                "layer `drop`: dropout `p` must lie in [0, 1), got 2",
            ),
            (
                r#"{"name": "drop1", "type": "dropout", "p": 1.0}"#,
                "dropout `p` must lie in [0, 1)",
            ),
            // Names a checkpoint could not read back: parameters are saved
            // as <layer>.weight, the optimiser state under __adam_m__.<...>.
            (
                r#"{"name": "__adam_m__.x", "type": "relu"}"#,
                "layer name '__adam_m__.x': expected a non-empty name without '.'",
            ),
            (r#"{"name": "a.b", "type": "relu"}"#, "layer name 'a.b'"),
            (r#"{"name": "", "type": "relu"}"#, "layer name ''"),
        ] {
            let e = refused(&spec(layers));
            assert!(e.contains(want), "{layers}: {e}");
        }
        // Many layers, each under the cap, but not together.
        let fc = |i: usize| {
            format!(r#"{{"name": "fc{i}", "type": "linear", "in": 16384, "out": 16384}}"#)
        };
        let layers: Vec<String> = (0..4).map(fc).collect();
        let mut s = spec(&format!(
            r#"{{"name": "f", "type": "flatten"}}, {{"name": "in", "type": "linear", "in": 784, "out": 16384}}, {}"#,
            layers.join(", ")
        ));
        let e = refused(&s);
        assert!(
            e.contains("layer `fc3`: the net's weights up to here exceed"),
            "{e}"
        );
        s.layers.truncate(5);
        s.check_sizes().unwrap();
    }

    #[test]
    fn a_huge_input_or_a_degenerate_normalisation_is_refused() {
        let mut s = spec(r#"{"name": "r", "type": "relu"}"#);
        s.input = [1, 1_000_000, 1_000_000];
        assert!(refused(&s).contains("has more than"));
        for (mean, std) in [
            (0.5, 1e-45),
            (0.5, 0.0),
            (f32::NAN, 0.5),
            (0.5, f32::INFINITY),
        ] {
            let mut s = spec(r#"{"name": "r", "type": "relu"}"#);
            s.normalization = NormSpec {
                mean: vec![mean],
                std: vec![std],
            };
            let e = refused(&s);
            assert!(
                e.contains("positive stds of normal size"),
                "{mean} {std}: {e}"
            );
        }
    }
}
