//! 2-D convolution and transposed convolution (PyTorch layouts, NCHW).
//!
//! ## conv2d and its two gradients
//!
//! Each output is a dot product of the weights with one window of the input:
//!
//! ```text
//! y[n,co,oy,ox] = b[co] + Σ_{ci,ky,kx} w[co,ci,ky,kx] · x[n,ci, oy·s+ky−p, ox·s+kx−p]
//! ```
//!
//! (pixels outside the input read as 0). Given g = dL/dy:
//!
//! - **input-gradient**: an input pixel `x[n,ci,iy,ix]` appears in every
//!   output whose window covers it, multiplied by the weight tap that lands
//!   on it. So `dL/dx[n,ci,iy,ix] = Σ g[n,co,oy,ox]·w[co,ci,ky,kx]` over all
//!   (co, oy, ox, ky, kx) with oy·s+ky−p = iy and ox·s+kx−p = ix: each g
//!   value is spread back over its window, weighted by w. That is a
//!   *transposed* convolution of g with the same weights. In matrix form
//!   with the column matrix col(x) ([Cin·kh·kw, OH·OW], one column per
//!   window): y = W·col(x), so d col = Wᵀ·g, and col2im adds each column
//!   back onto the pixels it was read from.
//! - **weight-gradient**: a weight tap `w[co,ci,ky,kx]` multiplies, for every
//!   output of channel co, the input pixel under that tap. So
//!   `dL/dw[co,ci,ky,kx] = Σ_{n,oy,ox} g[n,co,oy,ox]·x[n,ci,oy·s+ky−p,ox·s+kx−p]`,
//!   i.e. dW = Σ_n g_n·col(x_n)ᵀ: a correlation of the input with the
//!   output gradient.
//! - **bias-gradient**: `b[co]` is added to every output of channel co, so
//!   `dL/db[co] = Σ_{n,oy,ox} g[n,co,oy,ox]`.
//!
//! The two big gradients are separate kernels and each runs only when its
//! input needs it: in the white-box attack the weights are frozen and only
//! the input-gradient runs.
//!
//! ## conv_transpose2d
//!
//! conv_transpose2d *is* conv2d's input-gradient, used as a layer: with C
//! the linear map x ↦ conv2d(x, w), conv_transpose2d(x, w) = Cᵀx. Its
//! backward therefore reuses the same kernels: dL/dx = C·g = conv2d(g, w)
//! (the transpose of a transpose), and, because y is linear in w as well,
//! dW is conv2d's weight-gradient with the roles of input and output
//! swapped (g plays the input, x the output gradient).
//!
//! The CPU kernels (im2col / col2im around the packed GEMM) are in `cpu.rs`.
//! Stride-1 convolutions with very few channels on one side use the direct
//! kernels of `direct.rs` instead (no column matrix).

pub(crate) mod cpu;
pub(crate) mod cuda;
pub(crate) mod direct;
mod valid;
pub(crate) mod winograd;

use crate::autograd::BackwardOp;
use crate::cpu::simd;
use crate::cuda::exec::{common_device, ptr, wrap};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;
use cpu::ConvGeom;

/// Stride and zero padding of a 2-D convolution, as [rows, columns].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between windows (≥ 1).
    pub stride: [usize; 2],
    /// Zeros added on each side of the input.
    pub padding: [usize; 2],
}

impl Conv2dParams {
    /// The same stride and padding along both axes.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: [stride, stride],
            padding: [padding, padding],
        }
    }
}

impl Default for Conv2dParams {
    /// Stride 1, no padding.
    fn default() -> Self {
        Conv2dParams::new(1, 0)
    }
}

/// Stride, padding and output padding of a 2-D transposed convolution, as
/// [rows, columns]. The output height is
/// (H − 1)·stride − 2·padding + kh + output_padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dParams {
    /// Step between the windows of the matching conv2d (≥ 1).
    pub stride: [usize; 2],
    /// Padding of the matching conv2d (removed from the output's borders).
    pub padding: [usize; 2],
    /// Extra rows/columns at the bottom/right, to pick among the input
    /// sizes a strided conv2d maps to the same output size (< stride).
    pub output_padding: [usize; 2],
}

impl ConvTranspose2dParams {
    /// The same values along both axes.
    pub fn new(stride: usize, padding: usize, output_padding: usize) -> Self {
        ConvTranspose2dParams {
            stride: [stride, stride],
            padding: [padding, padding],
            output_padding: [output_padding, output_padding],
        }
    }
}

impl Default for ConvTranspose2dParams {
    /// Stride 1, no padding, no output padding.
    fn default() -> Self {
        ConvTranspose2dParams::new(1, 0, 0)
    }
}

// ------------------------------------------------------------ validation

fn check_stride_kernel(op: &'static str, stride: [usize; 2], kernel: [usize; 2]) -> Result<()> {
    if stride[0] == 0 || stride[1] == 0 {
        return Err(Error::invalid(
            op,
            format!("stride must be at least 1 along both axes, got {stride:?}"),
        ));
    }
    if kernel[0] == 0 || kernel[1] == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "kernel size must be at least 1×1, got {}×{}",
                kernel[0], kernel[1]
            ),
        ));
    }
    Ok(())
}

/// Output length of a conv along one axis: (len + 2·pad − k)/stride + 1.
fn conv_out_len(
    op: &'static str,
    axis: &str,
    len: usize,
    k: usize,
    pad: usize,
    stride: usize,
) -> Result<usize> {
    let padded = pad
        .checked_mul(2)
        .and_then(|v| v.checked_add(len))
        .ok_or_else(|| Error::invalid(op, format!("padding {pad} is too large")))?;
    if k > padded {
        return Err(Error::invalid(
            op,
            format!("kernel {axis} {k} is larger than the padded input {axis} {padded} (input {len}, padding {pad} on each side)"),
        ));
    }
    Ok((padded - k) / stride + 1)
}

fn nonzero_dims(op: &'static str, what: &str, dims: &[usize]) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} has a zero-sized dimension: {dims:?}"),
        ));
    }
    Ok(())
}

/// The conv2d geometry of input dims `x` [N, Cin, H, W] and weight dims
/// [Cout, Cin, kh, kw], validated.
fn conv2d_geom(op: &'static str, x: &Shape, w: &Shape, p: Conv2dParams) -> Result<ConvGeom> {
    let (n, cin, h, wd) = x.nchw(op)?;
    let (cout, cin_w, kh, kw) = w.nchw(op)?;
    check_stride_kernel(op, p.stride, [kh, kw])?;
    nonzero_dims(op, "weight [Cout, Cin, kh, kw]", w.dims())?;
    if cin != cin_w {
        return Err(Error::shape(
            op,
            format!("input with {cin_w} channels, as the weight {w:?} [Cout, Cin, kh, kw] expects"),
            format!("input {x:?} with {cin} channels"),
        ));
    }
    nonzero_dims(op, "input spatial size [H, W]", &[h, wd])?;
    let oh = conv_out_len(op, "height", h, kh, p.padding[0], p.stride[0])?;
    let ow = conv_out_len(op, "width", wd, kw, p.padding[1], p.stride[1])?;
    Ok(ConvGeom {
        n,
        cin,
        h,
        w: wd,
        cout,
        kh,
        kw,
        sh: p.stride[0],
        sw: p.stride[1],
        ph: p.padding[0],
        pw: p.padding[1],
        oh,
        ow,
    })
}

/// The conv2d geometry whose input-gradient is the conv_transpose2d of
/// input dims `x` [N, Cin, H, W] with weight dims [Cin, Cout, kh, kw]: the
/// conv maps the transposed conv's output [N, Cout, Hout, Wout] back to
/// [N, Cin, H, W].
fn conv_transpose2d_geom(x: &Shape, w: &Shape, p: ConvTranspose2dParams) -> Result<ConvGeom> {
    const OP: &str = "conv_transpose2d";
    let (n, cin, h, wd) = x.nchw(OP)?;
    let (cin_w, cout, kh, kw) = w.nchw(OP)?;
    check_stride_kernel(OP, p.stride, [kh, kw])?;
    nonzero_dims(OP, "weight [Cin, Cout, kh, kw]", w.dims())?;
    if cin != cin_w {
        return Err(Error::shape(
            OP,
            format!("input with {cin_w} channels, as the weight {w:?} [Cin, Cout, kh, kw] expects"),
            format!("input {x:?} with {cin} channels"),
        ));
    }
    nonzero_dims(OP, "input spatial size [H, W]", &[h, wd])?;
    for a in 0..2 {
        if p.output_padding[a] >= p.stride[a] {
            return Err(Error::invalid(
                OP,
                format!(
                    "output_padding {:?} must be smaller than stride {:?} along each axis",
                    p.output_padding, p.stride
                ),
            ));
        }
    }
    // Hout = (H − 1)·s − 2p + k + op, checked for overflow and for ≥ 1.
    let out_len = |len: usize, a: usize, k: usize| -> Result<usize> {
        let full = (len - 1)
            .checked_mul(p.stride[a])
            .and_then(|v| v.checked_add(k + p.output_padding[a]))
            .ok_or_else(|| Error::invalid(OP, format!("output size overflows for input {x:?}")))?;
        let cut = p.padding[a].saturating_mul(2);
        if cut >= full {
            return Err(Error::invalid(
                OP,
                format!(
                    "output size would be {full} − 2·{} ≤ 0 along axis {a} (input {x:?}, kernel {kh}×{kw}, stride {:?}, output_padding {:?})",
                    p.padding[a], p.stride, p.output_padding
                ),
            ));
        }
        Ok(full - cut)
    };
    let hout = out_len(h, 0, kh)?;
    let wout = out_len(wd, 1, kw)?;
    Ok(ConvGeom {
        n,
        cin: cout,
        h: hout,
        w: wout,
        cout: cin,
        kh,
        kw,
        sh: p.stride[0],
        sw: p.stride[1],
        ph: p.padding[0],
        pw: p.padding[1],
        oh: h,
        ow: wd,
    })
}

fn check_bias(op: &'static str, b: Option<&Tensor>, c: usize) -> Result<()> {
    if let Some(b) = b {
        if b.dims() != [c] {
            return Err(Error::shape(op, format!("bias [{c}]"), b.shape()));
        }
    }
    Ok(())
}

/// The GPU ordinal all of `ts` live on, `None` when they are all on the
/// CPU, or a device-mismatch error.
fn gpu_of(op: &'static str, ts: &[&Tensor]) -> Result<Option<usize>> {
    Ok(match common_device(op, ts)? {
        Device::Cpu => None,
        Device::Cuda(n) => Some(n),
    })
}

/// The device address of an optional bias (0: none).
fn bias_ptr(b: Option<&Tensor>) -> Result<Option<u64>> {
    b.map(ptr).transpose()
}

fn check_dims(op: &'static str, t: &Tensor, want: [usize; 4], what: &str) -> Result<()> {
    if t.dims() != want {
        return Err(Error::shape(op, format!("{what} {want:?}"), t.shape()));
    }
    Ok(())
}

// ------------------------------------------------------------------ conv2d

/// 2-D convolution (cross-correlation, as in PyTorch).
///
/// `x`: `[N, Cin, H, W]`; `w`: `[Cout, Cin, kh, kw]`; `b`: `[Cout]`. Returns
/// [N, Cout, OH, OW] with OH = (H + 2·padding − kh)/stride + 1.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let g = conv2d_geom("conv2d", x.shape(), w.shape(), p)?;
    check_bias("conv2d", b, g.cout)?;
    let mut all = vec![x, w];
    all.extend(b);
    let make = || -> Box<dyn BackwardOp> {
        Box::new(Conv2dBackward {
            x: x.clone(),
            w: w.clone(),
            b: b.cloned(),
            g,
        })
    };
    if let Some(d) = gpu_of("conv2d", &all)? {
        let y = cuda::forward(d, &g, x, w, bias_ptr(b)?)?;
        let shape = Shape::new([g.n, g.cout, g.oh, g.ow]);
        return Ok(Tensor::from_cuda_op(y, shape, &all, make));
    }
    let mut y = vec![0.0f32; g.n * g.cout * g.out_plane()];
    {
        let bv = b.map(|b| b.cpu()).transpose()?;
        cpu::conv2d_forward(
            simd::level(),
            &g,
            &x.cpu()?,
            &w.cpu()?,
            bv.as_deref(),
            &mut y,
        );
    }
    Ok(Tensor::from_cpu_op(
        y,
        Shape::new([g.n, g.cout, g.oh, g.ow]),
        &all,
        make,
    ))
}

/// conv2d's input-gradient kernel on its own (no graph is recorded):
/// dL/dx ([N, Cin, H, W], H×W = `input_hw`) from dL/dy `gy`
/// ([N, Cout, OH, OW]) and the weight `w` ([Cout, Cin, kh, kw]).
/// This is what the white-box attack runs at every frozen conv layer.
pub fn conv2d_input_grad(
    gy: &Tensor,
    w: &Tensor,
    input_hw: [usize; 2],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_input_grad";
    let (n, _, _, _) = gy.shape().nchw(OP)?;
    let cin = w.shape().dim(1)?;
    let g = conv2d_geom(
        OP,
        &Shape::new([n, cin, input_hw[0], input_hw[1]]),
        w.shape(),
        p,
    )?;
    check_dims(OP, gy, [g.n, g.cout, g.oh, g.ow], "output gradient")?;
    if let Some(d) = gpu_of(OP, &[gy, w])? {
        return wrap(
            cuda::input_grad(d, &g, gy, w, None)?,
            [g.n, g.cin, g.h, g.w],
        );
    }
    let mut dx = vec![0.0f32; g.n * g.cin * g.in_plane()];
    cpu::conv2d_input_grad(simd::level(), &g, &gy.cpu()?, &w.cpu()?, None, &mut dx);
    Tensor::from_vec(dx, [g.n, g.cin, g.h, g.w])
}

/// conv2d's weight-gradient kernel on its own (no graph is recorded):
/// dL/dw ([Cout, Cin, kh, kw], kh×kw = `kernel_hw`) from the input `x`
/// ([N, Cin, H, W]) and dL/dy `gy` ([N, Cout, OH, OW]).
pub fn conv2d_weight_grad(
    x: &Tensor,
    gy: &Tensor,
    kernel_hw: [usize; 2],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_weight_grad";
    let cout = gy.shape().dim(1)?;
    let cin = x.shape().dim(1)?;
    let ws = Shape::new([cout, cin, kernel_hw[0], kernel_hw[1]]);
    let g = conv2d_geom(OP, x.shape(), &ws, p)?;
    check_dims(OP, gy, [g.n, g.cout, g.oh, g.ow], "output gradient")?;
    if let Some(d) = gpu_of(OP, &[x, gy])? {
        return wrap(cuda::weight_grad(d, &g, x, gy)?, ws);
    }
    let mut dw = vec![0.0f32; g.cout * g.k()];
    cpu::conv2d_weight_grad(simd::level(), &g, &x.cpu()?, &gy.cpu()?, &mut dw);
    Tensor::from_vec(dw, ws)
}

/// What conv2d saves for its backward: handles on its inputs (no copies).
struct Conv2dBackward {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    g: ConvGeom,
}

impl BackwardOp for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn inputs(&self) -> Vec<Tensor> {
        let mut v = vec![self.x.clone(), self.w.clone()];
        v.extend(self.b.clone());
        v
    }
    fn backward(&self, _out: &Tensor, gy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = &self.g;
        check_dims(
            "conv2d backward",
            gy,
            [g.n, g.cout, g.oh, g.ow],
            "output gradient",
        )?;
        let need = |i: usize| needs.get(i).copied().unwrap_or(false);
        if let Some(d) = gpu_of("conv2d backward", &[gy, &self.x, &self.w])? {
            let mut out = vec![
                need(0)
                    .then(|| {
                        wrap(
                            cuda::input_grad(d, g, gy, &self.w, None)?,
                            [g.n, g.cin, g.h, g.w],
                        )
                    })
                    .transpose()?,
                need(1)
                    .then(|| {
                        wrap(
                            cuda::weight_grad(d, g, &self.x, gy)?,
                            [g.cout, g.cin, g.kh, g.kw],
                        )
                    })
                    .transpose()?,
            ];
            if self.b.is_some() {
                out.push(
                    need(2)
                        .then(|| {
                            let db = crate::ops::reduce::cuda::channel_sums(
                                d,
                                gy,
                                g.n,
                                g.cout,
                                g.out_plane(),
                            )?;
                            wrap(db, [g.cout])
                        })
                        .transpose()?,
                );
            }
            return Ok(out);
        }
        let lv = simd::level();
        let gv = gy.cpu()?;
        let mut out = Vec::with_capacity(3);
        // dx = col2im(Wᵀ·g): the transposed convolution of g with w.
        out.push(if need(0) {
            let mut dx = vec![0.0f32; g.n * g.cin * g.in_plane()];
            cpu::conv2d_input_grad(lv, g, &gv, &self.w.cpu()?, None, &mut dx);
            Some(Tensor::from_vec(dx, [g.n, g.cin, g.h, g.w])?)
        } else {
            None
        });
        // dW = Σ_n g_n·col(x_n)ᵀ.
        out.push(if need(1) {
            let mut dw = vec![0.0f32; g.cout * g.k()];
            cpu::conv2d_weight_grad(lv, g, &self.x.cpu()?, &gv, &mut dw);
            Some(Tensor::from_vec(dw, [g.cout, g.cin, g.kh, g.kw])?)
        } else {
            None
        });
        // db = Σ_{n,oy,ox} g.
        if self.b.is_some() {
            out.push(if need(2) {
                Some(Tensor::from_vec(
                    cpu::channel_sums(&gv, g.n, g.cout, g.out_plane()),
                    [g.cout],
                )?)
            } else {
                None
            });
        }
        Ok(out)
    }
}

// -------------------------------------------------------- conv_transpose2d

/// 2-D transposed convolution ("deconvolution", as in PyTorch): the
/// input-gradient of conv2d used as a layer, which upsamples when
/// stride > 1.
///
/// `x`: `[N, Cin, H, W]`; `w`: `[Cin, Cout, kh, kw]`; `b`: `[Cout]`. Returns
/// [N, Cout, Hout, Wout] with Hout = (H − 1)·stride − 2·padding + kh +
/// output_padding; output_padding must be smaller than the stride.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> Result<Tensor> {
    let g = conv_transpose2d_geom(x.shape(), w.shape(), p)?;
    // In conv2d terms the transposed conv's output channels are g.cin.
    check_bias("conv_transpose2d", b, g.cin)?;
    let mut all = vec![x, w];
    all.extend(b);
    let make = || -> Box<dyn BackwardOp> {
        Box::new(ConvTranspose2dBackward {
            x: x.clone(),
            w: w.clone(),
            b: b.cloned(),
            g,
        })
    };
    if let Some(d) = gpu_of("conv_transpose2d", &all)? {
        let y = cuda::input_grad(d, &g, x, w, bias_ptr(b)?)?;
        let shape = Shape::new([g.n, g.cin, g.h, g.w]);
        return Ok(Tensor::from_cuda_op(y, shape, &all, make));
    }
    let mut y = vec![0.0f32; g.n * g.cin * g.in_plane()];
    {
        let bv = b.map(|b| b.cpu()).transpose()?;
        cpu::conv2d_input_grad(
            simd::level(),
            &g,
            &x.cpu()?,
            &w.cpu()?,
            bv.as_deref(),
            &mut y,
        );
    }
    Ok(Tensor::from_cpu_op(
        y,
        Shape::new([g.n, g.cin, g.h, g.w]),
        &all,
        make,
    ))
}

/// conv_transpose2d's saved inputs; `g` is the geometry of the conv2d
/// whose input-gradient the forward computed.
struct ConvTranspose2dBackward {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    g: ConvGeom,
}

impl BackwardOp for ConvTranspose2dBackward {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }
    fn inputs(&self) -> Vec<Tensor> {
        let mut v = vec![self.x.clone(), self.w.clone()];
        v.extend(self.b.clone());
        v
    }
    fn backward(&self, _out: &Tensor, gy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = &self.g;
        const OP: &str = "conv_transpose2d backward";
        check_dims(OP, gy, [g.n, g.cin, g.h, g.w], "output gradient")?;
        let need = |i: usize| needs.get(i).copied().unwrap_or(false);
        if let Some(d) = gpu_of(OP, &[gy, &self.x, &self.w])? {
            // dx = conv2d(g, w); dW = weight-gradient with g as the input and
            // x as the output gradient; db = per-channel sums of g.
            let mut out = vec![
                need(0)
                    .then(|| {
                        wrap(
                            cuda::forward(d, g, gy, &self.w, None)?,
                            [g.n, g.cout, g.oh, g.ow],
                        )
                    })
                    .transpose()?,
                need(1)
                    .then(|| {
                        wrap(
                            cuda::weight_grad(d, g, gy, &self.x)?,
                            [g.cout, g.cin, g.kh, g.kw],
                        )
                    })
                    .transpose()?,
            ];
            if self.b.is_some() {
                out.push(
                    need(2)
                        .then(|| {
                            let db = crate::ops::reduce::cuda::channel_sums(
                                d,
                                gy,
                                g.n,
                                g.cin,
                                g.in_plane(),
                            )?;
                            wrap(db, [g.cin])
                        })
                        .transpose()?,
                );
            }
            return Ok(out);
        }
        let lv = simd::level();
        let gv = gy.cpu()?;
        let mut out = Vec::with_capacity(3);
        // dx = conv2d(g, w): the forward kernel, g in the role of the input.
        out.push(if need(0) {
            let mut dx = vec![0.0f32; g.n * g.cout * g.out_plane()];
            cpu::conv2d_forward(lv, g, &gv, &self.w.cpu()?, None, &mut dx);
            Some(Tensor::from_vec(dx, [g.n, g.cout, g.oh, g.ow])?)
        } else {
            None
        });
        // dW = conv2d's weight-gradient with g as the input and x as the
        // output gradient: Σ_n x_n·col(g_n)ᵀ, laid out [Cin, Cout, kh, kw].
        out.push(if need(1) {
            let mut dw = vec![0.0f32; g.cout * g.k()];
            cpu::conv2d_weight_grad(lv, g, &gv, &self.x.cpu()?, &mut dw);
            Some(Tensor::from_vec(dw, [g.cout, g.cin, g.kh, g.kw])?)
        } else {
            None
        });
        if self.b.is_some() {
            out.push(if need(2) {
                Some(Tensor::from_vec(
                    cpu::channel_sums(&gv, g.n, g.cin, g.in_plane()),
                    [g.cin],
                )?)
            } else {
                None
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;
    use cpu::Plan;
    use rand::SeedableRng;

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::rand_uniform(shape.to_vec(), -1.0, 1.0, &mut rng)
    }

    fn vals(shape: &[usize], seed: u64) -> Vec<f32> {
        rnd(shape, seed).to_vec().unwrap()
    }

    /// The multi-index of flat index `i` in `dims`.
    fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            idx[d] = i % dims[d];
            i /= dims[d];
        }
        idx
    }

    /// |got − want| ≤ atol + rtol·|want| everywhere; on failure names the
    /// first mismatching indices.
    /// |a − b| ≤ tol·(1 + |b|); false for NaN.
    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], dims: &[usize]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (a, b))| !close(**a, **b, 1e-4))
            .take(5)
            .map(|(i, (a, b))| format!("{:?}: got {a}, want {b}", unravel(i, dims)))
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: first mismatches (of dims {dims:?}):\n{}",
            bad.join("\n")
        );
    }

    /// (N, Cin, H, W, Cout, kh, kw, stride, padding)
    type ConvCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
    );
    /// (N, Cin, H, W, Cout, kh, kw, stride, padding, output_padding)
    type ConvTCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
    );

    /// Odd sizes, H ≠ W,
    /// strides 1–2, padding 0–2, channels not multiples of 8, batch 1–3,
    /// plus the paths: "same" padding, pointwise 1×1, 1×1 strided/padded,
    /// kernel larger than the unpadded input.
    const CASES: &[ConvCase] = &[
        (1, 3, 7, 5, 5, 3, 3, [1, 1], [1, 1]),
        (3, 5, 9, 11, 7, 3, 3, [2, 2], [1, 1]),
        (3, 2, 8, 13, 3, 5, 5, [1, 1], [2, 2]),
        (1, 1, 28, 28, 8, 5, 5, [1, 1], [0, 0]),
        (3, 9, 6, 7, 10, 1, 1, [1, 1], [0, 0]),
        (1, 4, 10, 9, 6, 2, 3, [2, 1], [0, 2]),
        (2, 3, 5, 5, 4, 1, 1, [2, 2], [1, 1]),
        (1, 3, 4, 4, 2, 6, 6, [1, 1], [1, 1]),
        (3, 6, 12, 12, 9, 3, 3, [1, 1], [0, 0]),
        (1, 7, 9, 9, 3, 3, 3, [2, 2], [2, 2]),
        (2, 8, 12, 11, 5, 5, 4, [1, 1], [0, 0]),
    ];

    fn plan(tile: usize, threads: usize, nested: bool) -> Plan {
        Plan {
            tile,
            threads,
            nested,
        }
    }

    /// The default plan and forced ones: tiny and uneven tiles, every
    /// parallel split, nested GEMMs.
    fn plans(g: &ConvGeom) -> Vec<Plan> {
        let ohw = g.out_plane();
        vec![
            Plan::new(g),
            plan(7, 1, false),
            plan(16, 2, false),
            plan(ohw, 2, false),
            plan(5, 4, true),
            plan(ohw.div_ceil(2), 8, false),
        ]
    }

    #[test]
    fn conv2d_kernels_match_reference_at_every_level_and_plan() {
        for (ci, &(n, cin, h, w, cout, kh, kw, s, p)) in CASES.iter().enumerate() {
            let xd = [n, cin, h, w];
            let wd = [cout, cin, kh, kw];
            let x = vals(&xd, 10 + ci as u64);
            let wt = vals(&wd, 20 + ci as u64);
            let b = vals(&[cout], 30 + ci as u64);
            let params = Conv2dParams {
                stride: s,
                padding: p,
            };
            let g = conv2d_geom("test", &Shape::new(xd), &Shape::new(wd), params).unwrap();
            let (want_y, yd) = reference::conv2d(&x, xd, &wt, wd, Some(&b), s, p);
            assert_eq!(yd, [n, cout, g.oh, g.ow]);
            let gy = vals(&yd, 40 + ci as u64);
            let want_dx = reference::conv2d_input_grad(&gy, yd, &wt, wd, [h, w], s, p);
            let want_dw = reference::conv2d_weight_grad(&x, xd, &gy, yd, [kh, kw], s, p);
            for lv in available_levels() {
                for plan in plans(&g) {
                    let what = format!("case {ci} {:?} level {lv} {plan:?}", CASES[ci]);
                    let mut y = vec![f32::NAN; want_y.len()];
                    cpu::conv2d_forward_with(lv, &g, &plan, &x, &wt, Some(&b), &mut y);
                    assert_close(&format!("forward {what}"), &y, &want_y, &yd);
                    let mut y0 = vec![f32::NAN; want_y.len()];
                    cpu::conv2d_forward_with(lv, &g, &plan, &x, &wt, None, &mut y0);
                    let want_y0: Vec<f32> = want_y
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v - b[i / g.out_plane() % cout])
                        .collect();
                    assert_close(&format!("forward no bias {what}"), &y0, &want_y0, &yd);
                    let mut dx = vec![0.0; want_dx.len()];
                    cpu::conv2d_input_grad_with(lv, &g, &plan, &gy, &wt, None, &mut dx);
                    assert_close(&format!("input-grad {what}"), &dx, &want_dx, &xd);
                    let mut dw = vec![0.0; want_dw.len()];
                    cpu::conv2d_weight_grad_with(lv, &g, &plan, &x, &gy, &mut dw);
                    assert_close(&format!("weight-grad {what}"), &dw, &want_dw, &wd);
                }
            }
        }
    }

    #[test]
    fn conv_transpose2d_matches_reference_at_every_level_and_plan() {
        // (N, Cin, H, W, Cout, kh, kw, stride, padding, output_padding)
        let cases: &[ConvTCase] = &[
            (3, 5, 4, 5, 3, 3, 3, [2, 2], [1, 1], [1, 1]),
            (1, 6, 5, 3, 4, 3, 3, [1, 1], [1, 1], [0, 0]),
            (2, 3, 3, 4, 2, 5, 5, [2, 1], [0, 2], [1, 0]),
            (1, 2, 4, 4, 3, 4, 4, [3, 3], [1, 1], [2, 0]),
            (3, 4, 3, 3, 5, 1, 1, [1, 1], [0, 0], [0, 0]),
        ];
        for (ci, &(n, cin, h, w, cout, kh, kw, s, p, op)) in cases.iter().enumerate() {
            let xd = [n, cin, h, w];
            let wd = [cin, cout, kh, kw];
            let x = vals(&xd, 50 + ci as u64);
            let wt = vals(&wd, 60 + ci as u64);
            let b = vals(&[cout], 70 + ci as u64);
            let params = ConvTranspose2dParams {
                stride: s,
                padding: p,
                output_padding: op,
            };
            let g = conv_transpose2d_geom(&Shape::new(xd), &Shape::new(wd), params).unwrap();
            let (want, yd) = reference::conv_transpose2d(&x, xd, &wt, wd, Some(&b), s, p, op);
            assert_eq!(yd, [n, g.cin, g.h, g.w], "case {ci}");
            for lv in available_levels() {
                for plan in plans(&g) {
                    let mut y = vec![0.0; want.len()];
                    cpu::conv2d_input_grad_with(lv, &g, &plan, &x, &wt, Some(&b), &mut y);
                    assert_close(
                        &format!("conv_transpose2d case {ci} level {lv} {plan:?}"),
                        &y,
                        &want,
                        &yd,
                    );
                }
            }
            // The public op agrees (at the active level).
            let y = conv_transpose2d(
                &Tensor::from_vec(x.clone(), xd).unwrap(),
                &Tensor::from_vec(wt.clone(), wd).unwrap(),
                Some(&Tensor::from_vec(b.clone(), [cout]).unwrap()),
                params,
            )
            .unwrap();
            assert_eq!(y.dims(), yd);
            assert_close("conv_transpose2d op", &y.to_vec().unwrap(), &want, &yd);
        }
    }

    #[test]
    fn conv2d_gradcheck() {
        // Stride 2, padding 1, odd non-square sizes, with bias.
        let r = gradcheck(
            |v| conv2d(&v[0], &v[1], Some(&v[2]), Conv2dParams::new(2, 1)),
            &[rnd(&[2, 3, 7, 6], 1), rnd(&[4, 3, 3, 3], 2), rnd(&[4], 3)],
            1e-2,
            1e-3,
            1e-2,
            80,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
        // Stride 1, padding 2, non-square kernel, no bias.
        let p = Conv2dParams {
            stride: [1, 1],
            padding: [2, 1],
        };
        let r = gradcheck(
            |v| conv2d(&v[0], &v[1], None, p),
            &[rnd(&[1, 2, 5, 8], 4), rnd(&[3, 2, 5, 3], 5)],
            1e-2,
            1e-3,
            1e-2,
            80,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn conv_transpose2d_gradcheck() {
        // The inverse-network upsampler: stride 2, padding 1, output_padding 1.
        let r = gradcheck(
            |v| {
                conv_transpose2d(
                    &v[0],
                    &v[1],
                    Some(&v[2]),
                    ConvTranspose2dParams::new(2, 1, 1),
                )
            },
            &[rnd(&[2, 3, 4, 5], 6), rnd(&[3, 2, 3, 3], 7), rnd(&[2], 8)],
            1e-2,
            1e-3,
            1e-2,
            80,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn frozen_weight_gets_no_gradient() {
        let x = rnd(&[2, 3, 6, 5], 9).requires_grad();
        let w = rnd(&[4, 3, 3, 3], 10); // frozen, as in the white-box attack
        let b = rnd(&[4], 11); // frozen too
        let y = conv2d(&x, &w, Some(&b), Conv2dParams::new(1, 1)).unwrap();
        let grads = y.sum().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_some());
        assert!(grads.get(&w).is_none());
        assert!(grads.get(&b).is_none());
        assert_eq!(grads.len(), 1);
        // With nothing requiring a gradient, no graph is recorded at all.
        let y = conv2d(&x.detach(), &w, None, Conv2dParams::default()).unwrap();
        assert!(y.grad_fn().is_none());
    }

    #[test]
    fn conv2d_small_case_by_hand() {
        // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,0],[0,-1]], b = 0.5:
        // y[i,j] = x[i,j] − x[i+1,j+1] + 0.5 = −4 + 0.5.
        let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), [1, 1, 3, 3])
            .unwrap()
            .requires_grad();
        let w = Tensor::from_vec(vec![1.0, 0.0, 0.0, -1.0], [1, 1, 2, 2])
            .unwrap()
            .requires_grad();
        let b = Tensor::from_vec(vec![0.5], [1]).unwrap().requires_grad();
        let y = conv2d(&x, &w, Some(&b), Conv2dParams::default()).unwrap();
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        assert_eq!(y.to_vec().unwrap(), vec![-3.5; 4]);
        let grads = y.sum().unwrap().backward().unwrap();
        // dL/dx: +1 where w[0,0] touched (top-left 2×2), −1 where w[1,1]
        // touched (bottom-right 2×2); the centre gets both.
        assert_eq!(
            grads.get(&x).unwrap().to_vec().unwrap(),
            vec![1.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, -1.0]
        );
        // dL/dw[ky,kx] = sum of the 2×2 block of x starting at (ky, kx).
        assert_eq!(
            grads.get(&w).unwrap().to_vec().unwrap(),
            vec![12.0, 16.0, 24.0, 28.0]
        );
        assert_eq!(grads.get(&b).unwrap().to_vec().unwrap(), vec![4.0]);
    }

    #[test]
    fn conv_transpose2d_small_case_by_hand() {
        // Stride 2 with a 2×2 kernel of ones: each input pixel becomes a
        // 2×2 block of its value.
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap();
        let w = Tensor::ones([1, 1, 2, 2]);
        let y = conv_transpose2d(&x, &w, None, ConvTranspose2dParams::new(2, 0, 0)).unwrap();
        assert_eq!(y.dims(), [1, 1, 4, 4]);
        assert_eq!(
            y.to_vec().unwrap(),
            vec![1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]
        );
        // The decoders' upsampler shape: 8×8 → 16×16 with k3 s2 p1 op1.
        let x = rnd(&[1, 4, 8, 8], 12);
        let w = rnd(&[4, 2, 3, 3], 13);
        let y = conv_transpose2d(&x, &w, None, ConvTranspose2dParams::new(2, 1, 1)).unwrap();
        assert_eq!(y.dims(), [1, 2, 16, 16]);
    }

    #[test]
    fn standalone_gradient_kernels_agree_with_backward() {
        let p = Conv2dParams::new(2, 1);
        let x = rnd(&[3, 4, 9, 8], 14).requires_grad();
        let w = rnd(&[5, 4, 3, 3], 15).requires_grad();
        let y = conv2d(&x, &w, None, p).unwrap();
        let gy = rnd(y.dims(), 16);
        let grads = y.backward_from(gy.clone(), &[]).unwrap();
        let dx = conv2d_input_grad(&gy, &w, [9, 8], p).unwrap();
        let dw = conv2d_weight_grad(&x, &gy, [3, 3], p).unwrap();
        assert_eq!(
            dx.to_vec().unwrap(),
            grads.get(&x).unwrap().to_vec().unwrap()
        );
        assert_eq!(
            dw.to_vec().unwrap(),
            grads.get(&w).unwrap().to_vec().unwrap()
        );
        // A gradient of the wrong shape is refused.
        // (Input height 10 would also give 5 rows: that ambiguity is what
        // conv_transpose2d's output_padding resolves.)
        assert!(conv2d_input_grad(&gy, &w, [12, 8], p).is_err());
        assert!(conv2d_weight_grad(&x, &gy, [5, 3], p).is_err());
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        let x = rnd(&[1, 3, 5, 5], 17);
        let w = rnd(&[4, 2, 3, 3], 18);
        let e = err_text(conv2d(&x, &w, None, Conv2dParams::default()));
        assert!(e.contains("2 channels") && e.contains("3 channels"), "{e}");
        let w = rnd(&[4, 3, 7, 3], 19);
        let e = err_text(conv2d(&x, &w, None, Conv2dParams::new(1, 0)));
        assert!(
            e.contains("kernel height 7") && e.contains("padded input height 5"),
            "{e}"
        );
        assert!(conv2d(&x, &w, None, Conv2dParams::new(1, 1)).is_ok());
        let w = rnd(&[4, 3, 3, 3], 20);
        let e = err_text(conv2d(&x, &w, None, Conv2dParams::new(0, 1)));
        assert!(e.contains("stride") && e.contains("[0, 0]"), "{e}");
        let e = err_text(conv2d(
            &x,
            &w,
            Some(&rnd(&[3], 21)),
            Conv2dParams::default(),
        ));
        assert!(e.contains("bias [4]"), "{e}");
        let e = err_text(conv2d(
            &rnd(&[3, 5, 5], 22),
            &w,
            None,
            Conv2dParams::default(),
        ));
        assert!(e.contains("[N, C, H, W]"), "{e}");
        let e = err_text(conv2d(
            &x,
            &rnd(&[0, 3, 3, 3], 23),
            None,
            Conv2dParams::default(),
        ));
        assert!(e.contains("zero-sized"), "{e}");

        let wt = rnd(&[3, 2, 3, 3], 24);
        let e = err_text(conv_transpose2d(
            &x,
            &wt,
            None,
            ConvTranspose2dParams::new(2, 1, 2),
        ));
        assert!(
            e.contains("output_padding [2, 2]") && e.contains("stride [2, 2]"),
            "{e}"
        );
        assert!(conv_transpose2d(&x, &wt, None, ConvTranspose2dParams::new(2, 1, 1)).is_ok());
        let e = err_text(conv_transpose2d(
            &x,
            &rnd(&[4, 2, 3, 3], 25),
            None,
            Default::default(),
        ));
        assert!(e.contains("4 channels") && e.contains("3 channels"), "{e}");
        // (1−1)·1 − 2·2 + 3 = −1 rows: output size 0.
        let e = err_text(conv_transpose2d(
            &rnd(&[1, 3, 1, 1], 26),
            &wt,
            None,
            ConvTranspose2dParams::new(1, 2, 0),
        ));
        assert!(e.contains("output size"), "{e}");
        let e = err_text(conv_transpose2d(
            &x,
            &wt,
            None,
            ConvTranspose2dParams::new(0, 0, 0),
        ));
        assert!(e.contains("stride"), "{e}");
    }
}
