//! One layer: a kind, its hyper-parameters and (for conv/linear) its weights.

use crate::error::{Error, Result};
use crate::ops::{self, Conv2dParams, ConvTranspose2dParams, Pool2dParams};
use crate::tensor::Tensor;
use rand::Rng;

/// A network layer. Weights use PyTorch layouts so `state_dict`s load as is.
#[derive(Clone, Debug)]
pub enum Layer {
    /// 2-D convolution; weight `[Cout, Cin, kh, kw]`, bias `[Cout]`.
    Conv2d {
        /// Kernel weights.
        weight: Tensor,
        /// Optional bias.
        bias: Option<Tensor>,
        /// Stride and padding.
        params: Conv2dParams,
    },
    /// 2-D transposed convolution; weight `[Cin, Cout, kh, kw]`.
    ConvTranspose2d {
        /// Kernel weights.
        weight: Tensor,
        /// Optional bias.
        bias: Option<Tensor>,
        /// Stride, padding, output padding.
        params: ConvTranspose2dParams,
    },
    /// Fully connected; weight `[out, in]`, bias `[out]`.
    Linear {
        /// Weights.
        weight: Tensor,
        /// Optional bias.
        bias: Option<Tensor>,
    },
    /// Max pooling.
    MaxPool2d(Pool2dParams),
    /// Average pooling.
    AvgPool2d(Pool2dParams),
    /// max(x, 0).
    Relu,
    /// Logistic sigmoid.
    Sigmoid,
    /// tanh.
    Tanh,
    /// `[N, ...] -> [N, rest]`.
    Flatten,
    /// Inverted dropout with this drop probability (identity in eval mode).
    Dropout(f32),
    /// `[N, rest] -> [N, dims...]` (decoders turn a vector into feature maps).
    Reshape(Vec<usize>),
}

/// PyTorch's default initialisation for conv and linear layers
/// (kaiming-uniform with a = √5, which reduces to U(−1/√fan_in, 1/√fan_in)),
/// used for both weights and biases.
pub fn init_uniform(shape: &[usize], fan_in: usize, rng: &mut impl Rng) -> Tensor {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    Tensor::rand_uniform(shape.to_vec(), -bound, bound, rng)
}

impl Layer {
    /// A conv layer with PyTorch-default random weights.
    pub fn conv2d(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        rng: &mut impl Rng,
    ) -> Layer {
        let fan_in = cin * k * k;
        Layer::Conv2d {
            weight: init_uniform(&[cout, cin, k, k], fan_in, rng),
            bias: Some(init_uniform(&[cout], fan_in, rng)),
            params: Conv2dParams::new(stride, padding),
        }
    }

    /// A transposed-conv layer with PyTorch-default random weights.
    pub fn conv_transpose2d(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        output_padding: usize,
        rng: &mut impl Rng,
    ) -> Layer {
        // PyTorch computes fan_in of a ConvTranspose weight [Cin, Cout, k, k] as Cout·k·k.
        let fan_in = cout * k * k;
        Layer::ConvTranspose2d {
            weight: init_uniform(&[cin, cout, k, k], fan_in, rng),
            bias: Some(init_uniform(&[cout], fan_in, rng)),
            params: ConvTranspose2dParams::new(stride, padding, output_padding),
        }
    }

    /// A linear layer with PyTorch-default random weights.
    pub fn linear(fin: usize, fout: usize, rng: &mut impl Rng) -> Layer {
        Layer::Linear {
            weight: init_uniform(&[fout, fin], fin, rng),
            bias: Some(init_uniform(&[fout], fin, rng)),
        }
    }

    /// Max pooling with a square kernel and stride.
    pub fn max_pool(k: usize, stride: usize) -> Layer {
        Layer::MaxPool2d(Pool2dParams::new(k, stride))
    }

    /// A short kind name ("conv2d", "relu", ...), as in spec files.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "conv2d",
            Layer::ConvTranspose2d { .. } => "conv_transpose2d",
            Layer::Linear { .. } => "linear",
            Layer::MaxPool2d(_) => "max_pool2d",
            Layer::AvgPool2d(_) => "avg_pool2d",
            Layer::Relu => "relu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Flatten => "flatten",
            Layer::Dropout(_) => "dropout",
            Layer::Reshape(_) => "reshape",
        }
    }

    /// Runs the layer. `rng` is `Some` in training mode (dropout active).
    pub fn forward(&self, x: &Tensor, rng: Option<&mut rand_chacha::ChaCha8Rng>) -> Result<Tensor> {
        match self {
            Layer::Conv2d {
                weight,
                bias,
                params,
            } => ops::conv2d(x, weight, bias.as_ref(), *params),
            Layer::ConvTranspose2d {
                weight,
                bias,
                params,
            } => ops::conv_transpose2d(x, weight, bias.as_ref(), *params),
            Layer::Linear { weight, bias } => ops::linear(x, weight, bias.as_ref()),
            Layer::MaxPool2d(p) => ops::max_pool2d(x, *p),
            Layer::AvgPool2d(p) => ops::avg_pool2d(x, *p),
            Layer::Relu => ops::relu(x),
            Layer::Sigmoid => ops::sigmoid(x),
            Layer::Tanh => ops::tanh(x),
            Layer::Flatten => x.flatten(),
            Layer::Dropout(p) => match rng {
                Some(rng) => ops::dropout(x, *p, rng),
                None => Ok(x.clone()),
            },
            Layer::Reshape(dims) => {
                let mut shape = vec![x.shape().dim(0)?];
                shape.extend_from_slice(dims);
                x.reshape(shape)
            }
        }
    }

    /// The layer's parameters with their suffixes ("weight", "bias").
    pub fn params(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Layer::Conv2d { weight, bias, .. }
            | Layer::ConvTranspose2d { weight, bias, .. }
            | Layer::Linear { weight, bias } => {
                let mut v = vec![("weight", weight)];
                if let Some(b) = bias {
                    v.push(("bias", b));
                }
                v
            }
            _ => Vec::new(),
        }
    }

    /// Replaces every parameter handle by `f(handle)` (same storage; used to
    /// switch between trainable and frozen).
    pub fn map_params(&mut self, f: &dyn Fn(&Tensor) -> Tensor) {
        match self {
            Layer::Conv2d { weight, bias, .. }
            | Layer::ConvTranspose2d { weight, bias, .. }
            | Layer::Linear { weight, bias } => {
                *weight = f(weight);
                if let Some(b) = bias {
                    *b = f(b);
                }
            }
            _ => {}
        }
    }

    /// Replaces every parameter handle by `f(handle)`, stopping at the first
    /// error (moving weights between devices).
    pub fn try_map_params(&mut self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        match self {
            Layer::Conv2d { weight, bias, .. }
            | Layer::ConvTranspose2d { weight, bias, .. }
            | Layer::Linear { weight, bias } => {
                *weight = f(weight)?;
                if let Some(b) = bias {
                    *b = f(b)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces the parameter `suffix` by `t`, checking the shape.
    pub fn set_param(&mut self, suffix: &str, t: Tensor) -> Result<()> {
        let slot = match (self, suffix) {
            (
                Layer::Conv2d { weight, .. }
                | Layer::ConvTranspose2d { weight, .. }
                | Layer::Linear { weight, .. },
                "weight",
            ) => weight,
            (
                Layer::Conv2d { bias: Some(b), .. }
                | Layer::ConvTranspose2d { bias: Some(b), .. }
                | Layer::Linear { bias: Some(b), .. },
                "bias",
            ) => b,
            (l, s) => {
                return Err(Error::invalid(
                    "set_param",
                    format!("a {} layer has no parameter '{s}'", l.kind()),
                ))
            }
        };
        if slot.shape() != t.shape() {
            return Err(Error::shape("set_param", slot.shape(), t.shape()));
        }
        *slot = t;
        Ok(())
    }
}
