//! 2-D max and average pooling (NCHW, PyTorch semantics).
//!
//! Backward rules, with g = dL/dy:
//!
//! - **max**: `y[n,c,oy,ox]` = x at the window's largest pixel (its argmax).
//!   Nudging any other pixel of the window a little does not change y, and
//!   nudging the argmax changes y one for one, so the whole of g goes to the
//!   argmax: `dL/dx[i]` = Σ g over the windows whose argmax is i. When windows
//!   overlap (kernel > stride) one pixel can be the argmax of several
//!   windows, and then their gradients add. The forward saves the argmax
//!   positions (u32, one per output) so the backward does not search again.
//! - **avg**: y = (1/(kh·kw))·Σ_window x, dividing by the full window area
//!   even where the window covers padding (PyTorch's default
//!   count_include_pad = true). Every pixel of the window has slope
//!   1/(kh·kw), so each pixel receives g/(kh·kw) from every window that
//!   covers it.

pub(crate) mod cpu;
pub(crate) mod cuda;

use crate::autograd::BackwardOp;
use crate::cuda::exec::{common_device, wrap};
use crate::cuda::CudaBuffer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;
use cpu::PoolGeom;

/// Window size, stride and zero padding of a 2-D pooling op, as
/// [rows, columns].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Window size (≥ 1).
    pub kernel: [usize; 2],
    /// Step between windows (≥ 1).
    pub stride: [usize; 2],
    /// Padding on each side (at most half the kernel, as in PyTorch).
    pub padding: [usize; 2],
}

impl Pool2dParams {
    /// A square `kernel` window moved by `stride`, no padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Pool2dParams {
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [0, 0],
        }
    }

    /// The same with `padding` on every side.
    pub fn with_padding(self, padding: usize) -> Self {
        Pool2dParams {
            padding: [padding, padding],
            ..self
        }
    }
}

fn pool_geom(op: &'static str, x: &Shape, p: Pool2dParams) -> Result<PoolGeom> {
    let (n, c, h, w) = x.nchw(op)?;
    if p.stride.contains(&0) {
        return Err(Error::invalid(
            op,
            format!(
                "stride must be at least 1 along both axes, got {:?}",
                p.stride
            ),
        ));
    }
    if p.kernel.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("kernel must be at least 1×1, got {:?}", p.kernel),
        ));
    }
    if p.padding[0] > p.kernel[0] / 2 || p.padding[1] > p.kernel[1] / 2 {
        return Err(Error::invalid(
            op,
            format!(
                "padding {:?} must be at most half the kernel {:?}",
                p.padding, p.kernel
            ),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::invalid(
            op,
            format!("input {x:?} has an empty spatial size"),
        ));
    }
    let out = |len: usize, a: usize| -> Result<usize> {
        let padded = len + 2 * p.padding[a];
        if p.kernel[a] > padded {
            return Err(Error::invalid(
                op,
                format!(
                    "kernel {:?} is larger than the padded input {}×{} (input {x:?}, padding {:?})",
                    p.kernel,
                    h + 2 * p.padding[0],
                    w + 2 * p.padding[1],
                    p.padding
                ),
            ));
        }
        Ok((padded - p.kernel[a]) / p.stride[a] + 1)
    };
    let (oh, ow) = (out(h, 0)?, out(w, 1)?);
    Ok(PoolGeom {
        planes: n * c,
        h,
        w,
        kh: p.kernel[0],
        kw: p.kernel[1],
        sh: p.stride[0],
        sw: p.stride[1],
        ph: p.padding[0],
        pw: p.padding[1],
        oh,
        ow,
    })
}

fn out_shape(x: &Tensor, g: &PoolGeom) -> Shape {
    let d = x.dims();
    Shape::new([d[0], d[1], g.oh, g.ow])
}

fn check_grad(op: &'static str, gy: &Tensor, g: &PoolGeom) -> Result<()> {
    if gy.numel() != g.planes * g.out_plane() || gy.shape().rank() != 4 {
        return Err(Error::shape(
            op,
            format!(
                "output gradient with {} planes of {}×{}",
                g.planes, g.oh, g.ow
            ),
            gy.shape(),
        ));
    }
    Ok(())
}

/// Max pooling. `x`: [N, C, H, W] → [N, C, OH, OW] with
/// OH = (H + 2·padding − kh)/stride + 1. Padding never wins the max.
/// Overlapping windows (kernel > stride) are allowed; gradients then add
/// at a shared argmax.
pub fn max_pool2d(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    let g = pool_geom("max_pool2d", x.shape(), p)?;
    if u32::try_from(g.in_plane()).is_err() {
        return Err(Error::invalid(
            "max_pool2d",
            format!("planes of {}×{} pixels do not fit u32 indices", g.h, g.w),
        ));
    }
    if let Device::Cuda(d) = x.device() {
        let (y, arg) = cuda::max_forward(d, &g, x)?;
        return Ok(Tensor::from_cuda_op(y, out_shape(x, &g), &[x], || {
            Box::new(MaxPoolBackward {
                x: x.clone(),
                idx: Argmax::Cuda(arg),
                g,
            })
        }));
    }
    let n_out = g.planes * g.out_plane();
    let mut y = vec![0.0f32; n_out];
    let mut idx = vec![0u32; n_out];
    cpu::max_pool_forward(&g, &x.cpu()?, &mut y, &mut idx);
    Ok(Tensor::from_cpu_op(y, out_shape(x, &g), &[x], || {
        Box::new(MaxPoolBackward {
            x: x.clone(),
            idx: Argmax::Cpu(idx),
            g,
        })
    }))
}

/// Where each window's maximum was, on the device that computed it.
enum Argmax {
    Cpu(Vec<u32>),
    /// One i32 per output, in a device buffer.
    Cuda(CudaBuffer),
}

/// What max pooling saves: the argmax of every window.
struct MaxPoolBackward {
    x: Tensor,
    idx: Argmax,
    g: PoolGeom,
}

impl BackwardOp for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, _out: &Tensor, gy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs.first().copied().unwrap_or(false) {
            return Ok(vec![None]);
        }
        check_grad("max_pool2d backward", gy, &self.g)?;
        // dx[argmax] += g (adding where windows share an argmax).
        let dev = common_device("max_pool2d backward", &[gy, &self.x])?;
        match (&self.idx, dev) {
            (Argmax::Cpu(idx), Device::Cpu) => {
                let mut dx = vec![0.0f32; self.x.numel()];
                cpu::max_pool_backward(&self.g, &gy.cpu()?, idx, &mut dx);
                Ok(vec![Some(Tensor::from_vec(dx, self.x.shape().clone())?)])
            }
            (Argmax::Cuda(idx), Device::Cuda(d)) => {
                let dx = cuda::max_backward(d, &self.g, idx, gy)?;
                Ok(vec![Some(wrap(dx, self.x.shape().clone())?)])
            }
            _ => Err(Error::DeviceMismatch {
                op: "max_pool2d backward",
                a: "the forward pass's device".into(),
                b: dev.to_string(),
            }),
        }
    }
}

/// Average pooling with PyTorch's default count_include_pad: each output is
/// the window sum divided by kh·kw, padding counted as zeros.
/// `x`: [N, C, H, W] → [N, C, OH, OW].
pub fn avg_pool2d(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    let g = pool_geom("avg_pool2d", x.shape(), p)?;
    if let Device::Cuda(d) = x.device() {
        let y = cuda::avg_forward(d, &g, x)?;
        return Ok(Tensor::from_cuda_op(y, out_shape(x, &g), &[x], || {
            Box::new(AvgPoolBackward { x: x.clone(), g })
        }));
    }
    let mut y = vec![0.0f32; g.planes * g.out_plane()];
    cpu::avg_pool_forward(&g, &x.cpu()?, &mut y);
    Ok(Tensor::from_cpu_op(y, out_shape(x, &g), &[x], || {
        Box::new(AvgPoolBackward { x: x.clone(), g })
    }))
}

struct AvgPoolBackward {
    x: Tensor,
    g: PoolGeom,
}

impl BackwardOp for AvgPoolBackward {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn backward(&self, _out: &Tensor, gy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs.first().copied().unwrap_or(false) {
            return Ok(vec![None]);
        }
        check_grad("avg_pool2d backward", gy, &self.g)?;
        // dx += g/(kh·kw) over each window.
        if let Device::Cuda(d) = common_device("avg_pool2d backward", &[gy, &self.x])? {
            let dx = cuda::avg_backward(d, &self.g, gy)?;
            return Ok(vec![Some(wrap(dx, self.x.shape().clone())?)]);
        }
        let mut dx = vec![0.0f32; self.x.numel()];
        cpu::avg_pool_backward(&self.g, &gy.cpu()?, &mut dx);
        Ok(vec![Some(Tensor::from_vec(dx, self.x.shape().clone())?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck;
    use crate::cpu::reference;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::rand_uniform(shape.to_vec(), -1.0, 1.0, &mut rng)
    }

    /// A random permutation of distinct values 0.01 apart, so that a
    /// finite-difference step of 1e-3 never changes which pixel is the max.
    fn spaced(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.01).collect();
        v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        Tensor::from_vec(v, shape.to_vec()).unwrap()
    }

    /// |a − b| ≤ tol·(1 + |b|); false for NaN.
    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (a, b))| !close(**a, **b, 1e-5))
            .take(5)
            .map(|(i, (a, b))| format!("flat index {i}: got {a}, want {b}"))
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: first mismatches:\n{}",
            bad.join("\n")
        );
    }

    /// (input dims, kernel, stride, padding)
    type PoolCase = ([usize; 4], [usize; 2], [usize; 2], [usize; 2]);
    const CASES: &[PoolCase] = &[
        ([1, 3, 7, 9], [3, 3], [2, 2], [0, 0]),
        ([3, 2, 8, 6], [2, 2], [2, 2], [0, 0]),
        ([2, 3, 7, 9], [2, 2], [2, 2], [0, 0]),
        ([3, 4, 5, 7], [3, 3], [1, 1], [1, 1]),
        ([1, 2, 9, 8], [3, 2], [2, 1], [1, 0]),
        ([2, 3, 6, 5], [5, 5], [2, 3], [2, 2]),
        // Large enough for the parallel path.
        ([3, 16, 33, 31], [3, 3], [2, 2], [1, 1]),
        ([2, 64, 16, 16], [2, 2], [2, 2], [0, 0]),
    ];

    #[test]
    fn pools_match_reference_forward_and_backward() {
        for (ci, &(xd, k, s, p)) in CASES.iter().enumerate() {
            let params = Pool2dParams {
                kernel: k,
                stride: s,
                padding: p,
            };
            let x = rnd(&xd, ci as u64).requires_grad();
            let xv = x.to_vec().unwrap();

            let (want, want_idx, od) = reference::max_pool2d(&xv, xd, k, s, p);
            let y = max_pool2d(&x, params).unwrap();
            assert_eq!(y.dims(), od, "case {ci}");
            assert_close(
                &format!("max forward case {ci}"),
                &y.to_vec().unwrap(),
                &want,
            );
            let gy = rnd(&od, 100 + ci as u64);
            let grads = y.backward_from(gy.clone(), &[]).unwrap();
            let want_dx =
                reference::max_pool2d_backward(&gy.to_vec().unwrap(), &want_idx, xd, od[2] * od[3]);
            assert_close(
                &format!("max backward case {ci}"),
                &grads.get(&x).unwrap().to_vec().unwrap(),
                &want_dx,
            );

            let (want, od) = reference::avg_pool2d(&xv, xd, k, s, p);
            let y = avg_pool2d(&x, params).unwrap();
            assert_eq!(y.dims(), od, "case {ci}");
            assert_close(
                &format!("avg forward case {ci}"),
                &y.to_vec().unwrap(),
                &want,
            );
            let grads = y.backward_from(gy.clone(), &[]).unwrap();
            let want_dx = reference::avg_pool2d_backward(&gy.to_vec().unwrap(), xd, k, s, p);
            assert_close(
                &format!("avg backward case {ci}"),
                &grads.get(&x).unwrap().to_vec().unwrap(),
                &want_dx,
            );
        }
    }

    #[test]
    fn max_pool_gradcheck_overlapping_and_not() {
        for (i, p) in [
            Pool2dParams::new(3, 2),
            Pool2dParams::new(2, 2),
            Pool2dParams::new(3, 2).with_padding(1),
        ]
        .into_iter()
        .enumerate()
        {
            let r = gradcheck(
                |v| max_pool2d(&v[0], p),
                &[spaced(&[2, 3, 7, 6], i as u64)],
                1e-3,
                1e-3,
                1e-2,
                300,
            )
            .unwrap();
            assert!(r.ok(), "{p:?}: {r}");
        }
    }

    #[test]
    fn avg_pool_gradcheck() {
        let p = Pool2dParams::new(3, 2).with_padding(1);
        let r = gradcheck(
            |v| avg_pool2d(&v[0], p),
            &[rnd(&[2, 3, 7, 6], 7)],
            1e-2,
            1e-3,
            1e-2,
            300,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
        let r = gradcheck(
            |v| avg_pool2d(&v[0], Pool2dParams::new(2, 2)),
            &[rnd(&[1, 2, 5, 4], 8)],
            1e-2,
            1e-3,
            1e-2,
            300,
        )
        .unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn shared_argmax_gets_both_gradients() {
        // 3×5 plane, kernel 3 stride 2: windows cover columns 0–2 and 2–4,
        // sharing column 2. The maximum sits at (1, 2), in both.
        let mut v = vec![0.0f32; 15];
        v[7] = 10.0;
        v[0] = 5.0;
        v[14] = 6.0;
        let x = Tensor::from_vec(v, [1, 1, 3, 5]).unwrap().requires_grad();
        let y = max_pool2d(&x, Pool2dParams::new(3, 2)).unwrap();
        assert_eq!(y.dims(), [1, 1, 1, 2]);
        assert_eq!(y.to_vec().unwrap(), vec![10.0, 10.0]);
        let gy = Tensor::from_vec(vec![1.0, 2.0], [1, 1, 1, 2]).unwrap();
        let dx = y.backward_from(gy, &[]).unwrap();
        let dx = dx.get(&x).unwrap().to_vec().unwrap();
        let mut want = vec![0.0; 15];
        want[7] = 3.0;
        assert_eq!(dx, want);
        // Average with padding divides by the full area: a 2×2 plane of
        // ones, kernel 3 pad 1 stride 2 → one window holding 4 real pixels.
        let y = avg_pool2d(
            &Tensor::ones([1, 1, 2, 2]),
            Pool2dParams::new(3, 2).with_padding(1),
        )
        .unwrap();
        assert_eq!(y.to_vec().unwrap(), vec![4.0 / 9.0]);
    }

    #[test]
    fn max_pool_2x2_ties_and_nan_match_the_general_rule() {
        // 2×2 stride 2 takes the fast path, which must keep the general
        // rule: the first maximum in scan order wins, and so does a NaN.
        // Plane 2×6: window 0 ties (first wins), window 1 holds a NaN,
        // window 2 is -inf everywhere but one pixel.
        let v = vec![
            1.0,
            0.0,
            2.0,
            f32::NAN,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            0.5,
            1.0,
            7.0,
            9.0,
            f32::NEG_INFINITY,
            -3.0,
        ];
        let x = Tensor::from_vec(v, [1, 1, 2, 6]).unwrap().requires_grad();
        let y = max_pool2d(&x, Pool2dParams::new(2, 2)).unwrap();
        let yv = y.to_vec().unwrap();
        assert_eq!(yv[0], 1.0);
        assert!(yv[1].is_nan(), "{yv:?}");
        assert_eq!(yv[2], -3.0);
        let gy = Tensor::from_vec(vec![1.0, 2.0, 3.0], [1, 1, 1, 3]).unwrap();
        let dx = y.backward_from(gy, &[]).unwrap();
        let dx = dx.get(&x).unwrap().to_vec().unwrap();
        let mut want = vec![0.0; 12];
        want[0] = 1.0;
        want[3] = 2.0;
        want[11] = 3.0;
        assert_eq!(dx, want);
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        let x = rnd(&[1, 2, 4, 4], 9);
        let e = max_pool2d(&x, Pool2dParams::new(2, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride") && e.contains("[0, 0]"), "{e}");
        let e = avg_pool2d(&x, Pool2dParams::new(5, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel [5, 5]") && e.contains("4×4"), "{e}");
        let e = max_pool2d(&x, Pool2dParams::new(2, 2).with_padding(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("padding [2, 2]") && e.contains("half"), "{e}");
        let e = max_pool2d(&rnd(&[2, 4, 4], 10), Pool2dParams::new(2, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[N, C, H, W]"), "{e}");
        let e = max_pool2d(&x, Pool2dParams::new(0, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel"), "{e}");
    }
}
