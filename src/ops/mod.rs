//! Every differentiable operation, one folder per op family: `mod.rs` holds
//! the API, the backward rule and its derivation; `cpu.rs` the CPU kernels
//! and `cuda.rs` the GPU launches (kernels in `kernels/*.cu`).

pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod reduce;

pub use conv::{
    conv2d, conv2d_input_grad, conv2d_weight_grad, conv_transpose2d, Conv2dParams,
    ConvTranspose2dParams,
};
pub use elementwise::{
    abs_pow, add, add_scalar, clamp, clamp_channels_in_place, div, dropout, exp, ln, mul, relu,
    scale, sigmoid, sqrt, square, sub, tanh,
};
pub use linear::{linear, matmul, transpose};
pub use loss::{
    count_correct, cross_entropy, cross_entropy_and_correct, mse_loss, ssim, ssim_per_image,
    tv_loss, SsimConfig, SsimWindow, TvKind,
};
pub use pool::{avg_pool2d, max_pool2d, Pool2dParams};
pub use reduce::{mean, sum};
