//! Launch parameters: one `#[repr(C)]` struct per kernel family, mirroring
//! field for field the struct the kernel takes by value in `kernels/*.cu`.
//!
//! Device pointers are `u64` device addresses (0 means null: "not wanted").
//! Element counts are `i64` (`long long` on the device), sizes `i32` (`int`),
//! flags `i32` (0 or 1). A test compares each struct's `size_of` with the
//! byte size NVRTC gives the kernel's parameter, so a field added on one
//! side only is caught.

/// A device address (`const float*` / `float*` / `int*` in the kernel).
pub type DevPtr = u64;

/// Marks a params struct that may be passed to a kernel by value.
///
/// # Safety
/// The type must be `#[repr(C)]`, contain only plain numbers, and match the
/// kernel's struct layout exactly.
pub unsafe trait KernelParams: Copy + Send + Sync + 'static {}

macro_rules! kernel_params {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: repr(C), plain integers and floats, mirrored from the .cu file.
            unsafe impl KernelParams for $t {}
            // SAFETY: as above; cudarc copies the bytes into the launch.
            unsafe impl cudarc::driver::DeviceRepr for $t {}
        )*
    };
}

/// Op codes of `ew_binary_*` (`BIN_*` in elementwise.cu).
#[allow(missing_docs)]
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryCode {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
}

/// Op codes of `ew_unary_*` (`UN_*` in elementwise.cu).
#[allow(missing_docs)]
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryCode {
    Scale = 0,
    AddScalar = 1,
    Square = 2,
    Sqrt = 3,
    Relu = 4,
    Sigmoid = 5,
    Tanh = 6,
    Exp = 7,
    Ln = 8,
    Clamp = 9,
    AbsPow = 10,
}

impl UnaryCode {
    /// The code and its two scalar parameters `(p0, p1)` for a CPU-side op.
    pub fn from_op(op: crate::ops::elementwise::UnaryOp) -> (Self, f32, f32) {
        use crate::ops::elementwise::UnaryOp as U;
        match op {
            U::Scale(s) => (Self::Scale, s, 0.0),
            U::AddScalar(s) => (Self::AddScalar, s, 0.0),
            U::Square => (Self::Square, 0.0, 0.0),
            U::Sqrt => (Self::Sqrt, 0.0, 0.0),
            U::Relu => (Self::Relu, 0.0, 0.0),
            U::Sigmoid => (Self::Sigmoid, 0.0, 0.0),
            U::Tanh => (Self::Tanh, 0.0, 0.0),
            U::Exp => (Self::Exp, 0.0, 0.0),
            U::Ln => (Self::Ln, 0.0, 0.0),
            U::Clamp(lo, hi) => (Self::Clamp, lo, hi),
            U::AbsPow(p) => (Self::AbsPow, p, 0.0),
        }
    }
}

impl BinaryCode {
    /// The code of a CPU-side binary op.
    pub fn from_op(op: crate::ops::elementwise::BinaryOp) -> Self {
        use crate::ops::elementwise::BinaryOp as B;
        match op {
            B::Add => Self::Add,
            B::Sub => Self::Sub,
            B::Mul => Self::Mul,
            B::Div => Self::Div,
        }
    }
}

/// `ew_binary_fwd`: out = a (op) b.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BinaryParams {
    pub a: DevPtr,
    pub b: DevPtr,
    pub out: DevPtr,
    pub n: i64,
    /// A [`BinaryCode`].
    pub op: i32,
}

/// `ew_binary_bwd`: both input gradients (null pointer = not needed).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BinaryBwdParams {
    pub a: DevPtr,
    pub b: DevPtr,
    pub g: DevPtr,
    pub ga: DevPtr,
    pub gb: DevPtr,
    pub n: i64,
    pub op: i32,
}

/// `ew_unary_fwd`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnaryParams {
    pub x: DevPtr,
    pub out: DevPtr,
    pub n: i64,
    /// A [`UnaryCode`].
    pub op: i32,
    /// Scale, scalar, clamp low bound or exponent.
    pub p0: f32,
    /// Clamp high bound.
    pub p1: f32,
}

/// `ew_unary_bwd`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnaryBwdParams {
    pub x: DevPtr,
    pub y: DevPtr,
    pub g: DevPtr,
    pub gx: DevPtr,
    pub n: i64,
    pub op: i32,
    pub p0: f32,
    pub p1: f32,
}

/// `bias_add_fwd`: `out = x + bias[c]` for x `[N, C, inner]`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BiasAddParams {
    pub x: DevPtr,
    pub bias: DevPtr,
    pub out: DevPtr,
    pub n: i64,
    pub channels: i32,
    pub inner: i32,
}

/// `clamp_channels`: `x ← min(max(x, lo[c]), hi[c])` in place for x
/// `[N, C, inner]`; `lo` and `hi` point at C floats each on the device.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClampChannelsParams {
    pub x: DevPtr,
    pub lo: DevPtr,
    pub hi: DevPtr,
    pub n: i64,
    pub channels: i32,
    pub inner: i32,
}

/// `ew_fill`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FillParams {
    pub out: DevPtr,
    pub scale_by: DevPtr,
    pub n: i64,
    pub value: f32,
}

/// `ew_axpy`: y += alpha·x.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AxpyParams {
    pub x: DevPtr,
    pub y: DevPtr,
    pub n: i64,
    pub alpha: f32,
}

/// `reduce_sum`: per-block partial sums times `scale` (of the NaN and
/// ±inf elements only, when `only_non_finite` is 1).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReduceParams {
    pub x: DevPtr,
    pub out: DevPtr,
    pub n: i64,
    pub scale: f32,
    pub only_non_finite: i32,
}

/// `channel_sum`: `out[c] (+)= scale·Σ x[n, c, ·]`; grid = C blocks.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelSumParams {
    pub x: DevPtr,
    pub out: DevPtr,
    pub batch: i32,
    pub channels: i32,
    pub inner: i32,
    pub scale: f32,
    pub accumulate: i32,
}

/// `sgemm`: C = alpha·op(A)·op(B) + beta·C (row-major, leading dimensions).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulParams {
    pub a: DevPtr,
    pub b: DevPtr,
    pub c: DevPtr,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub trans_a: i32,
    pub trans_b: i32,
    pub alpha: f32,
    pub beta: f32,
}

/// Every kernel of conv.cu (see the mapping for the transposed
/// convolution in that file's header).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvParams {
    pub x: DevPtr,
    pub weight: DevPtr,
    pub bias: DevPtr,
    pub dy: DevPtr,
    pub out: DevPtr,
    pub workspace: DevPtr,
    pub batch: i32,
    pub cin: i32,
    pub h: i32,
    pub w: i32,
    pub cout: i32,
    pub kh: i32,
    pub kw: i32,
    pub oh: i32,
    pub ow: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    pub split_k: i32,
    pub accumulate: i32,
}

/// Every kernel of pool.cu.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolParams {
    pub x: DevPtr,
    pub y: DevPtr,
    pub argmax: DevPtr,
    pub dy: DevPtr,
    pub dx: DevPtr,
    pub planes: i64,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub kh: i32,
    pub kw: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    pub count_include_pad: i32,
    pub accumulate: i32,
}

/// `mse_fwd` / `mse_bwd`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MseParams {
    pub a: DevPtr,
    pub b: DevPtr,
    pub out: DevPtr,
    pub g: DevPtr,
    pub ga: DevPtr,
    pub gb: DevPtr,
    pub n: i64,
    pub scale: f32,
}

/// `ce_fwd` / `ce_bwd` (softmax cross-entropy, labels are i32).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyParams {
    pub logits: DevPtr,
    pub labels: DevPtr,
    pub out: DevPtr,
    pub g: DevPtr,
    pub dlogits: DevPtr,
    pub rows: i32,
    pub classes: i32,
    pub scale: f32,
    pub accumulate: i32,
}

/// `tv_sq_*` / `tv_pow_*`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TvParams {
    pub x: DevPtr,
    pub out: DevPtr,
    pub g: DevPtr,
    pub gx: DevPtr,
    pub planes: i64,
    pub h: i32,
    pub w: i32,
    pub weight_h: f32,
    pub weight_w: f32,
    pub scale: f32,
    pub beta: f32,
    pub eps: f32,
    pub accumulate: i32,
}

/// Every `ssim_*` kernel.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SsimParams {
    pub a: DevPtr,
    pub b: DevPtr,
    pub win: DevPtr,
    pub tmp: DevPtr,
    pub stats: DevPtr,
    pub dstats: DevPtr,
    pub smap: DevPtr,
    pub out: DevPtr,
    pub g: DevPtr,
    pub ga: DevPtr,
    pub gb: DevPtr,
    pub planes: i64,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub c1: f32,
    pub c2: f32,
    pub cov_norm: f32,
    pub scale: f32,
    pub accumulate: i32,
}

/// `adam_step` (Adam, AMSGrad, AdamW).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamParams {
    pub param: DevPtr,
    pub grad: DevPtr,
    pub m: DevPtr,
    pub v: DevPtr,
    pub vmax: DevPtr,
    pub skip: DevPtr,
    pub n: i64,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub amsgrad: i32,
    pub decoupled: i32,
}

/// `sgd_step` (SGD with momentum, dampening, Nesterov).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdParams {
    pub param: DevPtr,
    pub grad: DevPtr,
    pub momentum_buf: DevPtr,
    pub skip: DevPtr,
    pub n: i64,
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: i32,
    pub first_step: i32,
}

/// `monitor_watch` (the step monitor's bookkeeping, `src/step_monitor.rs`).
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MonitorParams {
    pub state: DevPtr,
    pub values: DevPtr,
    pub count: i32,
    pub first_source: i32,
    pub sum_slot: i32,
    pub check: i32,
    pub last_slot: i32,
    pub step: f32,
    pub weight: f32,
}

kernel_params!(
    BinaryParams,
    BinaryBwdParams,
    UnaryParams,
    UnaryBwdParams,
    BiasAddParams,
    ClampChannelsParams,
    FillParams,
    AxpyParams,
    ReduceParams,
    ChannelSumParams,
    MatmulParams,
    ConvParams,
    PoolParams,
    MseParams,
    CrossEntropyParams,
    TvParams,
    SsimParams,
    AdamParams,
    SgdParams,
    MonitorParams,
);

/// Which params struct each kernel takes, with its Rust size in bytes:
/// `(kernel name, struct name, size_of)`. Every kernel in `kernels/*.cu`
/// is listed (a test checks that, and that NVRTC agrees on the size).
pub const KERNEL_PARAMS: &[(&str, &str, usize)] = &{
    use std::mem::size_of;
    macro_rules! k {
        ($name:literal, $t:ty) => {
            ($name, stringify!($t), size_of::<$t>())
        };
    }
    [
        k!("ew_binary_fwd", BinaryParams),
        k!("ew_binary_bwd", BinaryBwdParams),
        k!("ew_unary_fwd", UnaryParams),
        k!("ew_unary_bwd", UnaryBwdParams),
        k!("bias_add_fwd", BiasAddParams),
        k!("clamp_channels", ClampChannelsParams),
        k!("ew_fill", FillParams),
        k!("ew_axpy", AxpyParams),
        k!("reduce_sum", ReduceParams),
        k!("channel_sum", ChannelSumParams),
        k!("sgemm", MatmulParams),
        k!("conv2d_fwd", ConvParams),
        k!("conv2d_bwd_data", ConvParams),
        k!("conv_transpose2d_fwd", ConvParams),
        k!("conv2d_bwd_weight", ConvParams),
        k!("conv2d_bwd_weight_reduce", ConvParams),
        k!("conv2d_fwd_t128", ConvParams),
        k!("conv2d_bwd_data_t128", ConvParams),
        k!("conv_transpose2d_fwd_t128", ConvParams),
        k!("conv2d_bwd_weight_t128", ConvParams),
        k!("conv2d_fwd_tc", ConvParams),
        k!("conv2d_bwd_data_tc", ConvParams),
        k!("conv_transpose2d_fwd_tc", ConvParams),
        k!("conv2d_bwd_weight_tc", ConvParams),
        k!("conv2d_fwd_tf32", ConvParams),
        k!("conv2d_bwd_data_tf32", ConvParams),
        k!("conv_transpose2d_fwd_tf32", ConvParams),
        k!("conv2d_bwd_weight_tf32", ConvParams),
        k!("conv2d_fwd_t128w", ConvParams),
        k!("conv2d_bwd_data_t128w", ConvParams),
        k!("conv_transpose2d_fwd_t128w", ConvParams),
        k!("conv2d_fwd_tcw", ConvParams),
        k!("conv2d_bwd_data_tcw", ConvParams),
        k!("conv_transpose2d_fwd_tcw", ConvParams),
        k!("conv2d_fwd_tf32w", ConvParams),
        k!("conv2d_bwd_data_tf32w", ConvParams),
        k!("conv_transpose2d_fwd_tf32w", ConvParams),
        k!("conv2d_fwd_m8", ConvParams),
        k!("conv2d_bwd_data_m8", ConvParams),
        k!("conv_transpose2d_fwd_m8", ConvParams),
        k!("maxpool2d_fwd", PoolParams),
        k!("maxpool2d_bwd", PoolParams),
        k!("avgpool2d_fwd", PoolParams),
        k!("avgpool2d_bwd", PoolParams),
        k!("mse_fwd", MseParams),
        k!("mse_bwd", MseParams),
        k!("ce_fwd", CrossEntropyParams),
        k!("ce_bwd", CrossEntropyParams),
        k!("ce_hits", CrossEntropyParams),
        k!("tv_sq_fwd", TvParams),
        k!("tv_sq_bwd", TvParams),
        k!("tv_pow_fwd", TvParams),
        k!("tv_pow_bwd", TvParams),
        k!("ssim_filter_h", SsimParams),
        k!("ssim_filter_v", SsimParams),
        k!("ssim_map_fwd", SsimParams),
        k!("ssim_map_bwd", SsimParams),
        k!("ssim_filter_v_adj", SsimParams),
        k!("ssim_filter_h_adj", SsimParams),
        k!("adam_step", AdamParams),
        k!("sgd_step", SgdParams),
        k!("monitor_watch", MonitorParams),
    ]
};

/// The Rust size of the params struct a kernel takes, by kernel name.
pub fn params_size(kernel: &str) -> Option<usize> {
    KERNEL_PARAMS
        .iter()
        .find(|(k, _, _)| *k == kernel)
        .map(|(_, _, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Sizes worked out by hand from the C layout rules: 8-byte pointers and
    /// i64 first, then 4-byte fields, the total rounded up to 8.
    #[test]
    fn struct_sizes_match_the_c_layout() {
        assert_eq!(size_of::<BinaryParams>(), 3 * 8 + 8 + 4 + 4); // 40
        assert_eq!(size_of::<BinaryBwdParams>(), 5 * 8 + 8 + 8); // 56
        assert_eq!(size_of::<UnaryParams>(), 2 * 8 + 8 + 3 * 4 + 4); // 40
        assert_eq!(size_of::<UnaryBwdParams>(), 4 * 8 + 8 + 3 * 4 + 4); // 56
        assert_eq!(size_of::<BiasAddParams>(), 3 * 8 + 8 + 2 * 4); // 40
        assert_eq!(size_of::<ClampChannelsParams>(), 3 * 8 + 8 + 2 * 4); // 40
        assert_eq!(size_of::<FillParams>(), 2 * 8 + 8 + 8); // 32
        assert_eq!(size_of::<AxpyParams>(), 2 * 8 + 8 + 8); // 32
        assert_eq!(size_of::<ReduceParams>(), 2 * 8 + 8 + 2 * 4); // 32
        assert_eq!(size_of::<ChannelSumParams>(), 2 * 8 + 5 * 4 + 4); // 40
        assert_eq!(size_of::<MatmulParams>(), 3 * 8 + 10 * 4); // 64
        assert_eq!(size_of::<ConvParams>(), 6 * 8 + 17 * 4 + 4); // 120
        assert_eq!(size_of::<PoolParams>(), 5 * 8 + 8 + 12 * 4); // 96
        assert_eq!(size_of::<MseParams>(), 6 * 8 + 8 + 8); // 64
        assert_eq!(size_of::<CrossEntropyParams>(), 5 * 8 + 4 * 4); // 56
        assert_eq!(size_of::<TvParams>(), 4 * 8 + 8 + 8 * 4); // 72
        assert_eq!(size_of::<SsimParams>(), 11 * 8 + 8 + 8 * 4); // 128
        assert_eq!(size_of::<AdamParams>(), 6 * 8 + 8 + 9 * 4 + 4); // 96
        assert_eq!(size_of::<SgdParams>(), 4 * 8 + 8 + 6 * 4); // 64
        assert_eq!(size_of::<MonitorParams>(), 2 * 8 + 7 * 4 + 4); // 48 (4 of padding)
    }

    #[test]
    fn every_kernel_has_a_params_entry_and_back() {
        let kernels: Vec<&str> = crate::cuda::kernels::KERNEL_SOURCES
            .iter()
            .flat_map(|(_, src)| crate::cuda::kernels::kernel_names(src))
            .collect();
        for k in &kernels {
            assert!(
                params_size(k).is_some(),
                "kernel {k} has no KERNEL_PARAMS entry"
            );
        }
        for (k, _, _) in KERNEL_PARAMS {
            assert!(
                kernels.contains(k),
                "KERNEL_PARAMS lists {k}, no .cu file defines it"
            );
        }
    }

    #[test]
    fn op_codes_follow_the_cpu_ops() {
        use crate::ops::elementwise::{BinaryOp, UnaryOp};
        assert_eq!(BinaryCode::from_op(BinaryOp::Div) as i32, 3);
        assert_eq!(
            UnaryCode::from_op(UnaryOp::Clamp(-1.0, 2.0)),
            (UnaryCode::Clamp, -1.0, 2.0)
        );
        assert_eq!(UnaryCode::from_op(UnaryOp::AbsPow(1.5)).0 as i32, 10);
        // The .cu defines must say the same numbers.
        let src = crate::cuda::kernels::source("elementwise.cu").unwrap();
        assert!(src.contains("#define UN_ABS_POW 10") && src.contains("#define BIN_DIV 3"));
    }
}
