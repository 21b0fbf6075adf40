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
            || self.normalization.std.iter().any(|s| *s <= 0.0)
        {
            return Err(Error::invalid(
                "net spec",
                format!("normalization needs {c} means and {c} positive stds"),
            ));
        }
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
}
