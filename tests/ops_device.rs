//! Every op, on every device: one test body per op, instantiated by
//! [`device_tests!`] once for the CPU and once for CUDA.
//!
//! A body gets the device under test. It runs the op forward and backward on
//! the CPU (the reference) and on that device, compares the values and every
//! input gradient within the body's stated tolerance, and runs the
//! finite-difference gradcheck on that device. On the CPU this is the
//! CPU compared with itself plus a gradcheck; on a GPU it checks the whole
//! CUDA path (dispatch, launch shapes, kernels, autograd on the device).
//!
//! Without a GPU the CUDA version prints "skipped: no CUDA device" and
//! passes; SPLITINV_REQUIRE_CUDA=1 turns that into a failure (as in
//! tests/cuda_device.rs).
//!
//! Tolerances: |got − want| ≤ atol + rtol·|want| with atol 1e-4, rtol 1e-3
//! for element-wise ops, pooling and losses; atol 1e-3, rtol 1e-3 for
//! matmul / linear / conv (k up to a few hundred, accumulated in a
//! different order on the GPU, f32 throughout). The gradchecks use central
//! differences in f32 on the device, so their tolerances are a few 1e-3 to
//! 1e-2 relative.

use rand::SeedableRng;
use splitinv::autograd::gradcheck;
use splitinv::ops::{self, Conv2dParams, ConvTranspose2dParams, Pool2dParams};
use splitinv::ops::{SsimConfig, TvKind};
use splitinv::optim::{Adam, Optimizer, Sgd};
use splitinv::step_monitor::{Reading, Source, StepMonitor};
use splitinv::{Device, Result, Tensor};

/// The GPU to test on, or `None` (after saying why) when there is none.
fn gpu() -> Option<Device> {
    let info = splitinv::cuda::info();
    if !info.available {
        assert!(
            std::env::var("SPLITINV_REQUIRE_CUDA").as_deref() != Ok("1"),
            "SPLITINV_REQUIRE_CUDA=1 but CUDA is unavailable: {info}"
        );
        println!(
            "skipped: no CUDA device ({})",
            info.reason.as_deref().unwrap_or("unknown reason")
        );
        return None;
    }
    Some(Device::Cuda(0))
}

/// Generates `mod $name { fn cpu(); fn cuda(); }` running `$body(device)`.
macro_rules! device_tests {
    ($($name:ident => $body:expr;)*) => {
        $(
            mod $name {
                use super::*;
                #[test]
                fn cpu() {
                    ($body)(Device::Cpu);
                }
                #[test]
                fn cuda() {
                    if let Some(d) = gpu() {
                        ($body)(d);
                    }
                }
            }
        )*
    };
}

fn rnd(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::rand_uniform(shape.to_vec(), lo, hi, &mut rng)
}

/// Values at least 0.1 away from 0 (for div, ln, abs_pow, relu kinks).
fn away(shape: &[usize], seed: u64) -> Tensor {
    let v: Vec<f32> = rnd(shape, seed, -1.0, 1.0)
        .to_vec()
        .unwrap()
        .iter()
        .map(|&x| {
            if x.abs() < 0.1 {
                x + 0.3f32.copysign(x)
            } else {
                x
            }
        })
        .collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// Distinct values 0.01 apart, shuffled: a max pool's winner never changes
/// under a finite-difference step.
fn spaced(shape: &[usize], seed: u64) -> Tensor {
    use rand::seq::SliceRandom;
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.01).collect();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

#[derive(Clone, Copy)]
struct Tol {
    atol: f32,
    rtol: f32,
}

const EW: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-3,
};
const GEMM: Tol = Tol {
    atol: 1e-3,
    rtol: 1e-3,
};

fn assert_close(what: &str, got: &[f32], want: &[f32], t: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            let e = (*g - *w).abs();
            e.is_nan() || e > t.atol + t.rtol * w.abs()
        })
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g}, want {w}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: first mismatches: {}",
        bad.join("; ")
    );
}

/// Forward value and the gradient of every input of Σ r ⊙ f(inputs) (a
/// fixed random r, so every output element counts differently), with the
/// inputs on `dev`. Everything comes back as host vectors.
fn run_on(
    dev: Device,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(dev).unwrap().requires_grad())
        .collect();
    let y = f(&leaves).unwrap();
    assert_eq!(y.device(), dev, "the output lives where the inputs do");
    let r = rnd(y.dims(), 99, 0.5, 1.5).to_device(dev).unwrap();
    let loss = ops::sum(&ops::mul(&y, &r).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let gs = leaves
        .iter()
        .map(|l| {
            let g = grads.get(l).expect("every input gets a gradient");
            assert_eq!(g.device(), dev, "gradients live where the inputs do");
            g.to_vec().unwrap()
        })
        .collect();
    (y.to_vec().unwrap(), gs)
}

/// The op on `dev` against the CPU (values and gradients within `tol`), then
/// the finite-difference gradcheck on `dev`.
fn check(
    dev: Device,
    what: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    tol: Tol,
    (eps, atol, rtol): (f32, f64, f64),
) {
    let (want_y, want_g) = run_on(Device::Cpu, &f, inputs);
    let (y, g) = run_on(dev, &f, inputs);
    assert_close(&format!("{what} forward on {dev}"), &y, &want_y, tol);
    for (i, (a, b)) in g.iter().zip(&want_g).enumerate() {
        assert_close(&format!("{what} gradient {i} on {dev}"), a, b, tol);
    }
    let on_dev: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap()).collect();
    let r = gradcheck(&f, &on_dev, eps, atol, rtol, 60).unwrap();
    assert!(r.ok(), "{what} gradcheck on {dev}: {r}");
}

/// (x dims, w dims, stride, padding)
type ConvCase = ([usize; 4], [usize; 4], [usize; 2], [usize; 2]);
/// A named optimizer constructor.
type MakeOpt = fn() -> Box<dyn Optimizer>;

const FD: (f32, f64, f64) = (1e-2, 2e-3, 1e-2);

device_tests! {
    binary_ops => |dev: Device| {
        let (a, b) = (rnd(&[3, 5, 7], 1, -1.0, 1.0), away(&[3, 5, 7], 2));
        check(dev, "add", |v| ops::add(&v[0], &v[1]), &[a.clone(), b.clone()], EW, FD);
        check(dev, "sub", |v| ops::sub(&v[0], &v[1]), &[a.clone(), b.clone()], EW, FD);
        check(dev, "mul", |v| ops::mul(&v[0], &v[1]), &[a.clone(), b.clone()], EW, FD);
        check(dev, "div", |v| ops::div(&v[0], &v[1]), &[a, b], EW, (1e-3, 5e-3, 2e-2));
    };
    unary_ops => |dev: Device| {
        let x = away(&[2, 3, 5, 7], 3);
        let pos = rnd(&[2, 3, 5, 7], 4, 0.5, 2.0);
        check(dev, "scale", |v| ops::scale(&v[0], -2.5), std::slice::from_ref(&x), EW, FD);
        check(dev, "add_scalar", |v| ops::add_scalar(&v[0], 0.7), std::slice::from_ref(&x), EW, FD);
        check(dev, "square", |v| ops::square(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "sqrt", |v| ops::sqrt(&v[0]), std::slice::from_ref(&pos), EW, FD);
        check(dev, "relu", |v| ops::relu(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "sigmoid", |v| ops::sigmoid(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "tanh", |v| ops::tanh(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "exp", |v| ops::exp(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "ln", |v| ops::ln(&v[0]), std::slice::from_ref(&pos), EW, FD);
        // Away from the clamp's corners too, so no finite-difference step crosses one.
        let xc: Vec<f32> = x.to_vec().unwrap().iter().map(|&v| if (v + 0.5).abs() < 0.03 || (v - 0.45).abs() < 0.03 { v + 0.07 } else { v }).collect();
        let xc = Tensor::from_vec(xc, x.shape().clone()).unwrap();
        check(dev, "clamp", |v| ops::clamp(&v[0], -0.5, 0.45), &[xc], EW, FD);
        check(dev, "abs_pow", |v| ops::abs_pow(&v[0], 1.5), std::slice::from_ref(&x), EW, FD);
    };
    relu_passes_nan_on => |dev: Device| {
        // As PyTorch's: a NaN upstream must still show downstream (a
        // max(x, 0) turned it into 0 and hid it). 40 values: a SIMD body
        // and a tail.
        let mut v: Vec<f32> = (0..40).map(|i| i as f32 - 20.5).collect();
        v[3] = f32::NAN;
        v[37] = f32::NAN;
        let x = Tensor::from_vec(v.clone(), [40]).unwrap().to_device(dev).unwrap();
        let y = ops::relu(&x).unwrap().to_vec().unwrap();
        for (i, (&a, &b)) in v.iter().zip(&y).enumerate() {
            if a.is_nan() {
                assert!(b.is_nan(), "relu(NaN) at {i} gave {b}");
            } else {
                assert_eq!(b, a.max(0.0), "at {i}");
            }
        }
    };
    clamp_channels_in_place => |dev: Device| {
        // Projection outside autograd: the same bits as the CPU, in place,
        // and the tensor stays a leaf. [N=4, C=3, 9×11]: more than one
        // block of 256; [N=5, C=70] rows: many channels, inner = 1.
        let x0 = rnd(&[4, 3, 9, 11], 160, -2.0, 2.0);
        let (lo, hi) = ([-1.0, 0.0, 0.3], [1.0, 0.25, 0.3]);
        let rows0 = rnd(&[5, 70], 161, -2.0, 2.0);
        let (rlo, rhi): (Vec<f32>, Vec<f32>) = (0..70).map(|c| (-1.0 + 0.01 * c as f32, 0.5 + 0.01 * c as f32)).unzip();
        for (t, l, h) in [(&x0, &lo[..], &hi[..]), (&rows0, &rlo[..], &rhi[..])] {
            let want = Tensor::from_vec(t.to_vec().unwrap(), t.shape().clone()).unwrap();
            ops::clamp_channels_in_place(&want, l, h).unwrap();
            let x = t.to_device(dev).unwrap().requires_grad();
            ops::clamp_channels_in_place(&x, l, h).unwrap();
            assert_eq!(x.device(), dev);
            assert!(x.grad_fn().is_none() && x.is_requires_grad(), "still a leaf on {dev}");
            assert_eq!(x.to_vec().unwrap(), want.to_vec().unwrap(), "clamp_channels on {dev}");
        }
        let x = x0.to_device(dev).unwrap();
        assert!(ops::clamp_channels_in_place(&x, &lo[..2], &hi).is_err());
        assert!(ops::clamp_channels_in_place(&x, &hi, &lo).is_err());
        assert_eq!(x.to_vec().unwrap(), x0.to_vec().unwrap(), "an error leaves x alone");
    };
    reductions => |dev: Device| {
        let x = rnd(&[3, 4, 5, 7], 5, -1.0, 1.0);
        check(dev, "sum", |v| ops::sum(&v[0]), std::slice::from_ref(&x), EW, FD);
        check(dev, "mean", |v| ops::mean(&v[0]), std::slice::from_ref(&x), EW, FD);
        // Long enough for many partial sums (grid of 1024 blocks).
        let big = rnd(&[1_000_003], 6, -1.0, 1.0);
        let s = ops::sum(&big.to_device(dev).unwrap()).unwrap().item().unwrap();
        let want: f64 = big.to_vec().unwrap().iter().map(|&v| v as f64).sum();
        assert!((s as f64 - want).abs() < 1e-2, "sum of 1e6 values on {dev}: {s} vs {want}");
    };
    matmul_linear_transpose => |dev: Device| {
        // Odd sizes, more than one 64×64 tile in each direction, k not a multiple of 16.
        let (a, b) = (rnd(&[67, 37], 7, -1.0, 1.0), rnd(&[37, 131], 8, -1.0, 1.0));
        check(dev, "matmul", |v| ops::matmul(&v[0], &v[1]), &[a.clone(), b], GEMM, FD);
        let (x, w, bias) = (rnd(&[5, 77], 9, -1.0, 1.0), rnd(&[65, 77], 10, -1.0, 1.0), rnd(&[65], 11, -1.0, 1.0));
        check(dev, "linear", |v| ops::linear(&v[0], &v[1], Some(&v[2])), &[x.clone(), w.clone(), bias], GEMM, FD);
        check(dev, "linear no bias", |v| ops::linear(&v[0], &v[1], None), &[x, w], GEMM, FD);
        check(dev, "transpose tall", |v| ops::transpose(&v[0]), std::slice::from_ref(&a), EW, FD);
        let wide = rnd(&[9, 70], 12, -1.0, 1.0);
        check(dev, "transpose wide", |v| ops::transpose(&v[0]), &[wide], EW, FD);
    };
    conv2d => |dev: Device| {
        // (x dims, w dims, stride, padding): odd sizes, H ≠ W, stride 2, padding.
        let cases: &[ConvCase] = &[
            ([2, 3, 7, 6], [4, 3, 3, 3], [2, 2], [1, 1]),
            ([1, 2, 5, 8], [3, 2, 5, 3], [1, 1], [2, 1]),
            ([3, 5, 9, 11], [7, 5, 3, 3], [2, 1], [0, 2]),
            ([1, 1, 28, 28], [8, 1, 5, 5], [1, 1], [0, 0]),
            // More than one tile along M (Cout 70) and a long K for split-K.
            ([4, 9, 17, 15], [70, 9, 3, 3], [1, 1], [1, 1]),
        ];
        for (i, &(xd, wd, stride, padding)) in cases.iter().enumerate() {
            let p = Conv2dParams { stride, padding };
            let (x, w, b) = (rnd(&xd, 20 + i as u64, -1.0, 1.0), rnd(&wd, 30 + i as u64, -1.0, 1.0), rnd(&[wd[0]], 40 + i as u64, -1.0, 1.0));
            check(dev, &format!("conv2d case {i}"), |v| ops::conv2d(&v[0], &v[1], Some(&v[2]), p), &[x.clone(), w.clone(), b], GEMM, FD);
            check(dev, &format!("conv2d no bias case {i}"), |v| ops::conv2d(&v[0], &v[1], None, p), &[x.clone(), w.clone()], GEMM, FD);
            // The standalone gradient kernels agree with the CPU too.
            let y = ops::conv2d(&x, &w, None, p).unwrap();
            let gy = rnd(y.dims(), 50 + i as u64, -1.0, 1.0);
            let on = |t: &Tensor| t.to_device(dev).unwrap();
            let dx = ops::conv2d_input_grad(&on(&gy), &on(&w), [xd[2], xd[3]], p).unwrap();
            let want = ops::conv2d_input_grad(&gy, &w, [xd[2], xd[3]], p).unwrap();
            assert_close(&format!("conv2d_input_grad case {i} on {dev}"), &dx.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
            let dw = ops::conv2d_weight_grad(&on(&x), &on(&gy), [wd[2], wd[3]], p).unwrap();
            let want = ops::conv2d_weight_grad(&x, &gy, [wd[2], wd[3]], p).unwrap();
            assert_close(&format!("conv2d_weight_grad case {i} on {dev}"), &dw.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        }
        // A batch large enough that the weight gradient splits K on the GPU.
        let p = Conv2dParams::new(1, 1);
        let x = rnd(&[8, 16, 32, 32], 60, -1.0, 1.0);
        let gy = rnd(&[8, 32, 32, 32], 61, -1.0, 1.0);
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        let dw = ops::conv2d_weight_grad(&on(&x), &on(&gy), [3, 3], p).unwrap();
        let want = ops::conv2d_weight_grad(&x, &gy, [3, 3], p).unwrap();
        assert_close(&format!("split-K weight gradient on {dev}"), &dw.to_vec().unwrap(), &want.to_vec().unwrap(), Tol { atol: 1e-2, rtol: 1e-3 });
    };
    conv_big_tiles => |dev: Device| {
        // Problems large enough that the size rule picks the 128×128-tile
        // kernels (conv2d_*_t128; unless SPLITINV_CONV_TILE forces a tile):
        // forward M = Cout 70, N = 38·30·30 = 34200 (268 tile columns);
        // input gradient M = Cin 12, N = 38·32·32 (304);
        // weight gradient M = 130, N = 32·9, K = 12·31·31, split so that 6
        // tiles make 264 blocks. Partial tiles everywhere. And GEMMs of at
        // most 8 rows with many columns, which go to the *_m8 kernels: the
        // input gradient M = Cin 5 and the transposed conv M = 5, both
        // N = 38·32·32.
        use splitinv::cuda::launch::{conv_tile_for, few_rows, split_k_for_tile, ConvTile, MIN_T128_BLOCKS, TILE_BIG};
        assert_eq!(conv_tile_for(70, 38 * 30 * 30, 1, None), ConvTile::T128);
        assert_eq!(conv_tile_for(12, 38 * 32 * 32, 1, None), ConvTile::T128);
        assert_eq!(few_rows(12, 38 * 32 * 32, 1, None), None);
        assert_eq!(few_rows(5, 38 * 32 * 32, 1, None), Some(ConvTile::M8));
        let split = split_k_for_tile(130, 32 * 9, 12 * 31 * 31, MIN_T128_BLOCKS, TILE_BIG);
        assert_eq!(conv_tile_for(130, 32 * 9, split, None), ConvTile::T128);
        if dev == Device::Cpu {
            return; // the rest compares a GPU with the CPU
        }
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        let p = Conv2dParams::new(1, 0);
        let (x, w, b) = (rnd(&[38, 5, 32, 32], 100, -1.0, 1.0), rnd(&[70, 5, 3, 3], 101, -1.0, 1.0), rnd(&[70], 102, -1.0, 1.0));
        let y = ops::conv2d(&on(&x), &on(&w), Some(&on(&b)), p).unwrap();
        let want = ops::conv2d(&x, &w, Some(&b), p).unwrap();
        assert_close(&format!("big conv2d on {dev}"), &y.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        // Into 6 channels: the forward's m8 kernel (M = Cout 6, N = 34200).
        assert_eq!(few_rows(6, 38 * 30 * 30, 1, None), Some(ConvTile::M8));
        let (w6, b6) = (rnd(&[6, 5, 3, 3], 110, -1.0, 1.0), rnd(&[6], 111, -1.0, 1.0));
        let y = ops::conv2d(&on(&x), &on(&w6), Some(&on(&b6)), p).unwrap();
        let want6 = ops::conv2d(&x, &w6, Some(&b6), p).unwrap();
        assert_close(&format!("conv2d into 6 channels (m8) on {dev}"), &y.to_vec().unwrap(), &want6.to_vec().unwrap(), GEMM);
        let gy = rnd(want.dims(), 103, -1.0, 1.0);
        let dx = ops::conv2d_input_grad(&on(&gy), &on(&w), [32, 32], p).unwrap();
        let want = ops::conv2d_input_grad(&gy, &w, [32, 32], p).unwrap();
        assert_close(&format!("conv2d_input_grad, 5 channels (m8), on {dev}"), &dx.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        let w12 = rnd(&[70, 12, 3, 3], 109, -1.0, 1.0);
        let dx = ops::conv2d_input_grad(&on(&gy), &on(&w12), [32, 32], p).unwrap();
        let want = ops::conv2d_input_grad(&gy, &w12, [32, 32], p).unwrap();
        assert_close(&format!("big conv2d_input_grad on {dev}"), &dx.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        let pt = ConvTranspose2dParams::new(2, 1, 1);
        let (xt, wt, bt) = (rnd(&[38, 6, 16, 16], 104, -1.0, 1.0), rnd(&[6, 5, 3, 3], 105, -1.0, 1.0), rnd(&[5], 106, -1.0, 1.0));
        let yt = ops::conv_transpose2d(&on(&xt), &on(&wt), Some(&on(&bt)), pt).unwrap();
        let want = ops::conv_transpose2d(&xt, &wt, Some(&bt), pt).unwrap();
        assert_eq!(want.dims(), &[38, 5, 32, 32]);
        assert_close(&format!("conv_transpose2d into 5 channels (m8) on {dev}"), &yt.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        // Into 12 channels: the 128×128 transposed conv with its bias.
        let (wt12, bt12) = (rnd(&[6, 12, 3, 3], 112, -1.0, 1.0), rnd(&[12], 113, -1.0, 1.0));
        let yt = ops::conv_transpose2d(&on(&xt), &on(&wt12), Some(&on(&bt12)), pt).unwrap();
        let want = ops::conv_transpose2d(&xt, &wt12, Some(&bt12), pt).unwrap();
        assert_close(&format!("big conv_transpose2d on {dev}"), &yt.to_vec().unwrap(), &want.to_vec().unwrap(), GEMM);
        let p = Conv2dParams::new(1, 1);
        let (x, gy) = (rnd(&[12, 32, 31, 31], 107, -1.0, 1.0), rnd(&[12, 130, 31, 31], 108, -1.0, 1.0));
        let dw = ops::conv2d_weight_grad(&on(&x), &on(&gy), [3, 3], p).unwrap();
        let want = ops::conv2d_weight_grad(&x, &gy, [3, 3], p).unwrap();
        // The tolerance of the split-K test above: K is about as long.
        assert_close(&format!("big split-K weight gradient on {dev}"), &dw.to_vec().unwrap(), &want.to_vec().unwrap(), Tol { atol: 1e-2, rtol: 1e-3 });
    };
    conv_transpose2d => |dev: Device| {
        let cases: &[([usize; 4], [usize; 4], ConvTranspose2dParams)] = &[
            ([2, 3, 4, 5], [3, 2, 3, 3], ConvTranspose2dParams::new(2, 1, 1)),
            ([1, 6, 5, 3], [6, 4, 3, 3], ConvTranspose2dParams::new(1, 1, 0)),
            ([2, 3, 3, 4], [3, 2, 5, 5], ConvTranspose2dParams { stride: [2, 1], padding: [0, 2], output_padding: [1, 0] }),
        ];
        for (i, &(xd, wd, p)) in cases.iter().enumerate() {
            let (x, w, b) = (rnd(&xd, 70 + i as u64, -1.0, 1.0), rnd(&wd, 80 + i as u64, -1.0, 1.0), rnd(&[wd[1]], 90 + i as u64, -1.0, 1.0));
            check(dev, &format!("conv_transpose2d case {i}"), |v| ops::conv_transpose2d(&v[0], &v[1], Some(&v[2]), p), &[x.clone(), w.clone(), b], GEMM, FD);
            check(dev, &format!("conv_transpose2d no bias case {i}"), |v| ops::conv_transpose2d(&v[0], &v[1], None, p), &[x, w], GEMM, FD);
        }
    };
    pooling => |dev: Device| {
        let cases: &[([usize; 4], Pool2dParams)] = &[
            ([1, 3, 7, 9], Pool2dParams::new(3, 2)),
            ([3, 2, 8, 6], Pool2dParams::new(2, 2)),
            ([3, 4, 5, 7], Pool2dParams::new(3, 1).with_padding(1)),
            ([1, 2, 9, 8], Pool2dParams { kernel: [3, 2], stride: [2, 1], padding: [1, 0] }),
            ([2, 3, 6, 5], Pool2dParams { kernel: [5, 5], stride: [2, 3], padding: [2, 2] }),
        ];
        for (i, &(xd, p)) in cases.iter().enumerate() {
            let x = spaced(&xd, 100 + i as u64);
            check(dev, &format!("max_pool2d case {i}"), |v| ops::max_pool2d(&v[0], p), std::slice::from_ref(&x), EW, (1e-3, 2e-3, 1e-2));
            check(dev, &format!("avg_pool2d case {i}"), |v| ops::avg_pool2d(&v[0], p), &[x], EW, FD);
        }
    };
    losses => |dev: Device| {
        let (a, b) = (rnd(&[3, 2, 9, 8], 110, 0.0, 1.0), rnd(&[3, 2, 9, 8], 111, 0.0, 1.0));
        check(dev, "mse_loss", |v| ops::mse_loss(&v[0], &v[1]), &[a.clone(), b.clone()], EW, (1e-2, 2e-5, 1e-2));
        let logits = rnd(&[7, 10], 112, -3.0, 3.0);
        let labels = [0usize, 3, 9, 2, 2, 7, 5];
        check(dev, "cross_entropy", |v| ops::cross_entropy(&v[0], &labels), std::slice::from_ref(&logits), EW, (1e-2, 1e-4, 1e-2));
        // The loss of cross_entropy_and_correct is cross_entropy, forward
        // and backward, and its count is count_correct's.
        check(dev, "cross_entropy_and_correct", |v| Ok(ops::cross_entropy_and_correct(&v[0], &labels)?.0), std::slice::from_ref(&logits), EW, (1e-2, 1e-4, 1e-2));
        let on_dev = logits.to_device(dev).unwrap();
        let (_, correct) = ops::cross_entropy_and_correct(&on_dev, &labels).unwrap();
        assert_eq!(correct.device(), dev);
        let want = ops::count_correct(&logits, &labels).unwrap().to_vec().unwrap();
        assert_eq!(correct.to_vec().unwrap(), want, "cross_entropy_and_correct count");
        assert!(want[0] > 0.0 && want[0] < 7.0, "the case counts some rows, not all: {want:?}");
        let e = ops::cross_entropy_and_correct(&on_dev, &[0, 11, 0, 0, 0, 0, 0]).unwrap_err().to_string();
        assert!(e.contains("label 11") && e.contains("10 classes"), "{e}");
        // More than 32 classes: a warp loops over its row.
        let wide = rnd(&[3, 45], 113, -3.0, 3.0);
        check(dev, "cross_entropy 45 classes", |v| ops::cross_entropy(&v[0], &[44, 0, 31]), &[wide], EW, (1e-2, 1e-4, 1e-2));
        check(dev, "tv squared", |v| ops::tv_loss(&v[0], TvKind::Squared), std::slice::from_ref(&a), EW, (1e-2, 1e-5, 1e-2));
        check(dev, "tv power", |v| ops::tv_loss(&v[0], TvKind::Power { beta: 1.5, eps: 1e-3 }), std::slice::from_ref(&a), EW, (1e-3, 1e-4, 2e-2));
        let (c, d) = (rnd(&[2, 3, 13, 12], 114, 0.0, 1.0), rnd(&[2, 3, 13, 12], 115, 0.0, 1.0));
        for cfg in [SsimConfig::paper(1.0), SsimConfig::standard()] {
            check(dev, &format!("{cfg}"), |v| ops::ssim(&v[0], &v[1], &cfg), &[c.clone(), d.clone()], Tol { atol: 1e-4, rtol: 2e-3 }, (1e-2, 1e-4, 3e-2));
        }
        let per = ops::ssim_per_image(&c.to_device(dev).unwrap(), &d.to_device(dev).unwrap(), &SsimConfig::standard()).unwrap();
        let want = ops::ssim_per_image(&c, &d, &SsimConfig::standard()).unwrap();
        assert_close("ssim_per_image", &per, &want, EW);
        // count_correct against the host's argmax: ties (the first maximum
        // wins), NaN (never the maximum), a row of −inf (index 0), 45
        // classes (a warp loops over its row), and 300 random rows.
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let rows: Vec<[f32; 4]> = vec![
            [1.0, 3.0, 3.0, 0.0], [nan, 2.0, nan, 1.0], [-inf; 4], [nan; 4],
            [inf, inf, 0.0, 1.0], [0.0, -1.0, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let special = Tensor::from_vec(flat, [rows.len(), 4]).unwrap();
        let host = splitinv::train::argmax_rows(&special).unwrap();
        assert_eq!(host, vec![1, 1, 0, 0, 0, 2, 0], "the host's argmax");
        for labels in [host.clone(), vec![1, 3, 0, 1, 1, 3, 0], vec![3; 7]] {
            let want = labels.iter().zip(&host).filter(|(a, b)| a == b).count() as f32;
            let got = ops::count_correct(&special.to_device(dev).unwrap(), &labels).unwrap();
            assert_eq!(got.device(), dev);
            assert_eq!(got.to_vec().unwrap(), vec![want], "count_correct, labels {labels:?}");
        }
        for (shape, seed) in [([300usize, 10usize], 116u64), ([5, 45], 117)] {
            // Values on a grid of 8 levels, so rows tie often.
            let x = Tensor::from_vec(rnd(&shape, seed, 0.0, 8.0).to_vec().unwrap().iter().map(|v| v.floor()).collect(), shape).unwrap();
            let labels: Vec<usize> = (0..shape[0]).map(|i| (i * 7) % shape[1]).collect();
            let want = splitinv::train::argmax_rows(&x).unwrap().iter().zip(&labels).filter(|(a, b)| a == b).count() as f32;
            let got = ops::count_correct(&x.to_device(dev).unwrap(), &labels).unwrap().to_vec().unwrap();
            assert_eq!(got, vec![want], "count_correct {shape:?}");
            assert!(want > 0.0, "the case counts something");
        }
        let e = ops::count_correct(&special.to_device(dev).unwrap(), &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("2 labels for a batch of 7"), "{e}");
        let e = ops::count_correct(&special.to_device(dev).unwrap(), &[4; 7]).unwrap_err().to_string();
        assert!(e.contains("label 4") && e.contains("4 classes"), "{e}");
    };
    optimizers => |dev: Device| {
        // Three steps of each optimizer, on `dev` and on the CPU, from the
        // same parameters and gradients.
        let p0 = [rnd(&[7, 5], 120, -1.0, 1.0), rnd(&[5], 121, -1.0, 1.0)];
        let gs: Vec<[Tensor; 2]> = (0..3).map(|s| [rnd(&[7, 5], 130 + s, -1.0, 1.0), rnd(&[5], 140 + s, -1.0, 1.0)]).collect();
        let run = |d: Device, opt: &mut dyn Optimizer| -> Vec<Vec<f32>> {
            let ps: Vec<Tensor> = p0.iter().map(|t| Tensor::from_vec(t.to_vec().unwrap(), t.shape().clone()).unwrap().to_device(d).unwrap().requires_grad()).collect();
            for g in &gs {
                // Gradients of Σ g ⊙ p are g itself.
                let loss = ops::add(
                    &ops::sum(&ops::mul(&ps[0], &g[0].to_device(d).unwrap()).unwrap()).unwrap(),
                    &ops::sum(&ops::mul(&ps[1], &g[1].to_device(d).unwrap()).unwrap()).unwrap(),
                ).unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&ps, &grads).unwrap();
            }
            ps.iter().map(|p| p.to_vec().unwrap()).collect()
        };
        let makers: Vec<(&str, MakeOpt)> = vec![
            ("adam", || Box::new(Adam::new(1e-2))),
            ("adam amsgrad wd", || Box::new(Adam::new(1e-2).with_amsgrad(true).with_weight_decay(0.1).with_eps(1e-3))),
            ("sgd", || Box::new(Sgd::new(0.1))),
            ("sgd momentum nesterov wd", || Box::new(Sgd::new(0.1).with_momentum(0.9).with_nesterov(true).with_weight_decay(0.01))),
            ("sgd momentum dampening", || Box::new(Sgd::new(0.1).with_momentum(0.9).with_dampening(0.3))),
        ];
        for (name, make) in &makers {
            let want = run(Device::Cpu, make().as_mut());
            let got = run(dev, make().as_mut());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{name} parameter {i} on {dev}"), g, w, Tol { atol: 1e-5, rtol: 1e-4 });
            }
        }
        // The same steps through a StepMonitor (as the training loops take
        // them): the same parameters, and the loss sum; then a NaN in the
        // gradient of parameter 1 at step 2, or in the loss at step 2:
        // recorded, and steps 2 and 3 leave the parameters as step 1 did.
        // A copy (detach and a move to the same device share the storage
        // the optimizers update in place).
        let fresh = |t: &Tensor| Tensor::from_vec(t.to_vec().unwrap(), t.shape().clone()).unwrap();
        let watched = |d: Device, opt: &mut dyn Optimizer, nan: Option<&str>| -> (Vec<Vec<f32>>, Reading) {
            let ps: Vec<Tensor> = p0.iter().map(|t| fresh(t).to_device(d).unwrap().requires_grad()).collect();
            let mut monitor = StepMonitor::new(d).unwrap();
            for (s, g) in gs.iter().enumerate() {
                let mut loss = ops::add(
                    &ops::sum(&ops::mul(&ps[0], &g[0].to_device(d).unwrap()).unwrap()).unwrap(),
                    &ops::sum(&ops::mul(&ps[1], &g[1].to_device(d).unwrap()).unwrap()).unwrap(),
                ).unwrap();
                if s == 1 && nan == Some("gradient") {
                    // + Σ sqrt(0·p1): the loss stays finite, but p1's
                    // gradient is 0·(1/(2·sqrt 0)) = 0·inf = NaN.
                    let zero = Tensor::zeros_on([5], d).unwrap();
                    loss = ops::add(&loss, &ops::sum(&ops::sqrt(&ops::mul(&ps[1], &zero).unwrap()).unwrap()).unwrap()).unwrap();
                }
                if s == 1 && nan == Some("loss") {
                    loss = ops::add(&loss, &Tensor::scalar(f32::INFINITY).to_device(d).unwrap()).unwrap();
                }
                monitor.begin_step();
                monitor.add_loss(&loss, 2.0).unwrap();
                let grads = loss.backward().unwrap();
                opt.step_watched(&ps, &grads, &mut monitor).unwrap();
            }
            (ps.iter().map(|p| p.to_vec().unwrap()).collect(), monitor.read().unwrap())
        };
        for (name, make) in &makers {
            let want = run(Device::Cpu, make().as_mut());
            let (got, r) = watched(dev, make().as_mut(), None);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{name} watched, parameter {i} on {dev}"), g, w, Tol { atol: 1e-5, rtol: 1e-4 });
            }
            assert_eq!(r.failure, None, "{name}");
            // Σ 2·loss over the three steps, against the CPU's.
            let (_, rc) = watched(Device::Cpu, make().as_mut(), None);
            assert!(rc.loss_sum.abs() > 0.1, "{name}: a loss sum that says something: {rc:?}");
            assert!((r.loss_sum - rc.loss_sum).abs() <= 1e-4 * (1.0 + rc.loss_sum.abs()), "{name}: loss sum {r:?} against {rc:?}");
            // The last loss: step 3's, unweighted, not the sum.
            assert!(rc.last_loss != 0.0 && (rc.last_loss as f64 - rc.loss_sum / 2.0).abs() > 1e-3, "{name}: {rc:?}");
            assert!((r.last_loss - rc.last_loss).abs() <= 1e-4 * (1.0 + rc.last_loss.abs()), "{name}: last loss {r:?} against {rc:?}");
            let after_one = {
                let ps: Vec<Tensor> = p0.iter().map(|t| fresh(t).requires_grad()).collect();
                let loss = ops::add(&ops::sum(&ops::mul(&ps[0], &gs[0][0]).unwrap()).unwrap(), &ops::sum(&ops::mul(&ps[1], &gs[0][1]).unwrap()).unwrap()).unwrap();
                make().step(&ps, &loss.backward().unwrap()).unwrap();
                ps.iter().map(|p| p.to_vec().unwrap()).collect::<Vec<_>>()
            };
            for (what, source, value) in [("gradient", Source::Gradient(1), f32::NAN), ("loss", Source::Loss, f32::INFINITY)] {
                let (got, r) = watched(dev, make().as_mut(), Some(what));
                let f = r.failure.unwrap_or_else(|| panic!("{name}: a NaN {what} went unseen"));
                assert_eq!((f.step, f.source), (2, source), "{name}, {what}: {f:?}");
                assert_eq!(f.value.is_nan(), value.is_nan(), "{name}, {what}: {f:?}");
                for (i, (g, w)) in got.iter().zip(&after_one).enumerate() {
                    assert_close(&format!("{name}, NaN {what}: parameter {i} on {dev} as after step 1"), g, w, Tol { atol: 1e-6, rtol: 1e-5 });
                }
            }
        }
        // count_correct sums into the monitor's metric.
        let mut monitor = StepMonitor::new(dev).unwrap();
        let logits = Tensor::from_vec(vec![0.0, 1.0, 2.0, 0.5, 3.0, 1.0], [3, 2]).unwrap().to_device(dev).unwrap();
        for labels in [[1usize, 0, 0], [1, 1, 0]] {
            monitor.add_metric(&ops::count_correct(&logits, &labels).unwrap()).unwrap();
        }
        assert_eq!(monitor.read().unwrap().metric_sum, 5.0);
        // A NaN gradient fails the step and leaves the parameter alone.
        let p = Tensor::ones([4]).to_device(dev).unwrap().requires_grad();
        let bad = Tensor::from_vec(vec![1.0, f32::NAN, 1.0, 1.0], [4]).unwrap().to_device(dev).unwrap();
        let grads = ops::sum(&ops::mul(&p, &bad).unwrap()).unwrap().backward().unwrap();
        let e = Adam::new(0.1).step(std::slice::from_ref(&p), &grads).unwrap_err().to_string();
        assert!(e.contains("element 1"), "{e}");
        assert_eq!(p.to_vec().unwrap(), vec![1.0; 4]);
        // A gradient of large finite values, whose f32 sum overflows to
        // +inf, is finite element by element: neither the eager check nor
        // the monitor may call it a failure (on a GPU both look at the sum
        // of the non-finite elements only). SGD at lr 1e-38 moves each
        // parameter by -3 a step.
        let p = Tensor::ones([4096]).to_device(dev).unwrap().requires_grad();
        let big = Tensor::full([4096], 3.0e38).to_device(dev).unwrap();
        let big_grads = || ops::sum(&ops::mul(&p, &big).unwrap()).unwrap().backward().unwrap();
        Sgd::new(1e-38).step(std::slice::from_ref(&p), &big_grads()).unwrap();
        let mut monitor = StepMonitor::new(dev).unwrap();
        monitor.begin_step();
        Sgd::new(1e-38).step_watched(std::slice::from_ref(&p), &big_grads(), &mut monitor).unwrap();
        assert_eq!(monitor.read().unwrap().failure, None, "large finite gradient on {dev}");
        let moved = p.to_vec().unwrap();
        assert!(moved.iter().all(|&v| (v + 5.0).abs() < 1e-3), "two steps of -3 each: {:?}", &moved[..4]);
    };
    transfers_and_devices => |dev: Device| {
        let x = rnd(&[3, 4], 150, -1.0, 1.0);
        let y = x.to_device(dev).unwrap();
        assert_eq!(y.device(), dev);
        assert_eq!(y.to_vec().unwrap(), x.to_vec().unwrap(), "a round trip is exact");
        let back = y.to_device(Device::Cpu).unwrap();
        assert_eq!(back.to_vec().unwrap(), x.to_vec().unwrap());
        assert!(x.to_device(Device::Cpu).unwrap().same_storage(&x), "no copy to the same device");
        let z = Tensor::zeros_on([5], dev).unwrap();
        assert_eq!(z.to_vec().unwrap(), vec![0.0; 5]);
        // assign copies across devices.
        let t = Tensor::zeros_on([3, 4], dev).unwrap();
        t.assign(&x).unwrap();
        assert_eq!(t.to_vec().unwrap(), x.to_vec().unwrap());
        if dev != Device::Cpu {
            // Mixing devices is a clear error, never a silent copy.
            let e = ops::add(&x, &y).unwrap_err().to_string();
            assert!(e.contains("device mismatch in add") && e.contains("cpu") && e.contains("cuda:0"), "{e}");
            let w = rnd(&[2, 4], 151, -1.0, 1.0);
            let e = ops::linear(&y, &w, None).unwrap_err().to_string();
            assert!(e.contains("device mismatch in linear"), "{e}");
            let e = y.cpu().err().expect("no host view of GPU memory").to_string();
            assert!(e.contains("to_vec"), "{e}");
        }
    };
}
