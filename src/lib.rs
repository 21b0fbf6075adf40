//! # splitinv
//!
//! Model inversion attacks against split (collaborative) inference, after
//! He, Zhang & Lee, "Model Inversion Attacks Against Collaborative
//! Inference" (ACSAC 2019), on a from-scratch tensor engine.
//!
//! ## One gradient, from the loss back to the pixels
//!
//! The white-box attack minimises L(x) = mean((f1(x) − v)²) + λ·TV(x) over the
//! image x. With f1 = conv → relu, the backward pass runs:
//!
//! 1. `mean((z − v)²)`: dL/dz = 2(z − v)/n (the `mse` rule);
//! 2. `relu`: dL/da = dL/dz where a > 0, else 0;
//! 3. `conv2d`: dL/dx = the *transposed* convolution of dL/da with the same
//!    weights (the input-gradient kernel) — the weight-gradient kernel is
//!    skipped, because the attacker's model is frozen;
//! 4. the TV term adds its own gradient to dL/dx.
//!
//! Every op documents its rule next to its code (`ops/<op>/mod.rs`) and is
//! checked against finite differences ([`autograd::gradcheck()`]).

#![warn(missing_docs)]

pub mod attacks;
pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod cli_train;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod experiment;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod report;
pub mod reproduce;
pub mod shape;
pub mod step_monitor;
pub mod tensor;
pub mod train;
pub mod util;

pub use autograd::{no_grad, GradStore};
pub use device::Device;
pub use error::{Error, Result};
pub use shape::Shape;
pub use tensor::Tensor;
