//! The CUDA path end to end on a real GPU: device, NVRTC module cache,
//! memory pool with budget and peaks, and kernel launches through the Rust
//! params structs, checked against host references. Without a GPU it says
//! "skipped: no CUDA device" (SPLITINV_REQUIRE_CUDA=1 makes that a failure).
//! Everything runs in one test so the global memory budget it changes
//! cannot disturb a concurrently running test; each part runs even when an
//! earlier one failed.

use splitinv::cuda::launch::{launch, split_k_for, split_k_for_tile, ConvTile, Launch};
use splitinv::cuda::params::*;
use splitinv::cuda::{self, GpuDevice};
use std::sync::Arc;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            let e = (*g - *w).abs();
            e.is_nan() || e > atol + rtol * w.abs()
        })
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g}, want {w}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: first mismatches: {}",
        bad.join("; ")
    );
    println!("ok {name} ({} values)", got.len());
}

fn gpu() -> Option<Arc<GpuDevice>> {
    let info = cuda::info();
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
    print!("{info}");
    Some(cuda::device(0).expect("open cuda:0"))
}

/// One named part of the end-to-end test.
type Part = fn(&Arc<GpuDevice>);

#[test]
fn cuda_backend_on_a_real_gpu() {
    let Some(dev) = gpu() else { return };
    dev.load_all_kernels().expect("every module loads");
    // Every part runs even when an earlier one fails, so one run on a GPU
    // machine reports every broken kernel, not just the first.
    let parts: [(&str, Part); 15] = [
        ("roundtrip_and_reuse", roundtrip_and_reuse),
        ("elementwise", elementwise),
        ("reduce", reduce),
        ("sgemm", sgemm),
        ("conv_forward_and_weight_grad", conv_forward_and_weight_grad),
        ("conv_t128_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::T128)
        }),
        ("conv_tc_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::Tc)
        }),
        ("conv_tf32_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::Tf32)
        }),
        ("conv_t128w_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::T128Wide)
        }),
        ("conv_tcw_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::TcWide)
        }),
        ("conv_tf32w_kernels", |d| {
            conv_big_tile_kernels(d, ConvTile::Tf32Wide)
        }),
        ("conv_math_dispatch", conv_math_dispatch),
        ("conv_m8_kernels", conv_m8_kernels),
        ("budget_and_peaks", budget_and_peaks),
        (
            "loops_wait_only_when_they_look",
            loops_wait_only_when_they_look,
        ),
    ];
    let mut failed = Vec::new();
    for (name, part) in parts {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(&dev))).is_ok();
        cuda::set_memory_budget(None);
        cuda::set_conv_math(cuda::ConvMath::Fp32);
        println!("part {name}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(name);
        }
    }
    dev.synchronize().unwrap();
    println!("{}", dev.memory_stats());
    assert!(failed.is_empty(), "failed parts: {failed:?}");
}

fn roundtrip_and_reuse(dev: &Arc<GpuDevice>) {
    let data = rand_vec(1000, 1);
    let buf = dev.upload(&data).unwrap();
    assert_eq!(buf.to_host().unwrap(), data);
    let before = dev.memory_stats();
    drop(buf);
    let again = dev.alloc(990).unwrap(); // same size class
    let after = dev.memory_stats();
    assert_eq!(after.reuses, before.reuses + 1, "{after:?}");
    assert_eq!(after.device_allocs, before.device_allocs);
    drop(again);
    let z = dev.zeros(77).unwrap();
    assert_eq!(z.to_host().unwrap(), vec![0.0; 77]);
}

fn elementwise(dev: &Arc<GpuDevice>) {
    let n = 100_003;
    let a = rand_vec(n, 2);
    let b: Vec<f32> = rand_vec(n, 3).iter().map(|v| v + 2.0).collect();
    let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
    let out = dev.alloc(n).unwrap();
    let p = BinaryParams {
        a: da.ptr(),
        b: db.ptr(),
        out: out.ptr(),
        n: n as i64,
        op: BinaryCode::Div as i32,
    };
    launch(dev, "ew_binary_fwd", Launch::elementwise(n), &p).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    assert_close(
        "ew_binary_fwd div",
        &out.to_host().unwrap(),
        &want,
        1e-6,
        1e-6,
    );
    let p = UnaryParams {
        x: da.ptr(),
        out: out.ptr(),
        n: n as i64,
        op: UnaryCode::Sigmoid as i32,
        p0: 0.0,
        p1: 0.0,
    };
    launch(dev, "ew_unary_fwd", Launch::elementwise(n), &p).unwrap();
    let want: Vec<f32> = a.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
    assert_close(
        "ew_unary_fwd sigmoid",
        &out.to_host().unwrap(),
        &want,
        1e-6,
        1e-5,
    );
    // A params struct of the wrong kind is refused before launching.
    let e = launch(dev, "ew_binary_fwd", Launch::elementwise(n), &p).unwrap_err();
    assert!(e.to_string().contains("takes a BinaryParams"), "{e}");
}

fn reduce(dev: &Arc<GpuDevice>) {
    let n = 1_000_001;
    let x = rand_vec(n, 4);
    let dx = dev.upload(&x).unwrap();
    let cfg = Launch::elementwise(n);
    let partial = dev.alloc(cfg.blocks()).unwrap();
    let out = dev.alloc(1).unwrap();
    let p1 = ReduceParams {
        x: dx.ptr(),
        out: partial.ptr(),
        n: n as i64,
        scale: 1.0,
        only_non_finite: 0,
    };
    launch(dev, "reduce_sum", cfg, &p1).unwrap();
    let p2 = ReduceParams {
        x: partial.ptr(),
        out: out.ptr(),
        n: cfg.blocks() as i64,
        scale: 1.0 / n as f32,
        only_non_finite: 0,
    };
    launch(dev, "reduce_sum", Launch::per_item(1).unwrap(), &p2).unwrap();
    let want = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let got = out.to_host().unwrap()[0];
    assert!(
        (got as f64 - want).abs() < 1e-6,
        "mean: got {got}, want {want}"
    );
    // only_non_finite: large finite values (a plain f32 sum overflows) add
    // up to 0; one -inf among them to -inf.
    let mut big = vec![3.0e38f32; n];
    let first = |big: &[f32]| {
        let dbig = dev.upload(big).unwrap();
        let p = ReduceParams {
            x: dbig.ptr(),
            out: partial.ptr(),
            n: n as i64,
            scale: 1.0,
            only_non_finite: 1,
        };
        launch(dev, "reduce_sum", cfg, &p).unwrap();
        let p = ReduceParams {
            x: partial.ptr(),
            out: out.ptr(),
            n: cfg.blocks() as i64,
            scale: 1.0,
            only_non_finite: 0,
        };
        launch(dev, "reduce_sum", Launch::per_item(1).unwrap(), &p).unwrap();
        out.to_host().unwrap()[0]
    };
    assert_eq!(first(&big), 0.0, "finite values only");
    big[n / 2] = f32::NEG_INFINITY;
    assert_eq!(first(&big), f32::NEG_INFINITY, "one -inf");
}

fn sgemm(dev: &Arc<GpuDevice>) {
    let (m, k, n) = (130, 77, 201);
    let a = rand_vec(m * k, 5);
    let b = rand_vec(k * n, 6);
    let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
    let c = dev.alloc(m * n).unwrap();
    let p = MatmulParams {
        a: da.ptr(),
        b: db.ptr(),
        c: c.ptr(),
        m: m as i32,
        n: n as i32,
        k: k as i32,
        lda: k as i32,
        ldb: n as i32,
        ldc: n as i32,
        trans_a: 0,
        trans_b: 0,
        alpha: 1.0,
        beta: 0.0,
    };
    launch(dev, "sgemm", Launch::tiles(m, n, 1).unwrap(), &p).unwrap();
    let want = splitinv::cpu::reference::matmul(&a, &b, m, k, n);
    assert_close("sgemm 130x77x201", &c.to_host().unwrap(), &want, 1e-4, 1e-4);
}

#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    w: &[f32],
    (n, ci, h, wd): (usize, usize, usize, usize),
    (co, kh, kw): (usize, usize, usize),
    s: usize,
    p: usize,
) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 * p - kh) / s + 1;
    let ow = (wd + 2 * p - kw) / s + 1;
    let mut y = vec![0f32; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f64;
                    for c in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                acc += w[((o * ci + c) * kh + ky) * kw + kx] as f64
                                    * x[((b * ci + c) * h + iy as usize) * wd + ix as usize] as f64;
                            }
                        }
                    }
                    y[((b * co + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    (y, oh, ow)
}

/// The shape fields of a square-kernel conv's launch parameters (no
/// pointers, no split, no dilation).
fn conv_geometry(
    (n, ci, h, w): (usize, usize, usize, usize),
    (co, k): (usize, usize),
    (oh, ow): (usize, usize),
    stride: usize,
    pad: usize,
) -> ConvParams {
    let i = |v: usize| v as i32;
    ConvParams {
        batch: i(n),
        cin: i(ci),
        h: i(h),
        w: i(w),
        cout: i(co),
        kh: i(k),
        kw: i(k),
        oh: i(oh),
        ow: i(ow),
        stride_h: i(stride),
        stride_w: i(stride),
        pad_h: i(pad),
        pad_w: i(pad),
        dil_h: 1,
        dil_w: 1,
        split_k: 1,
        ..Default::default()
    }
}

fn conv_forward_and_weight_grad(dev: &Arc<GpuDevice>) {
    // CIFAR conv21-like: 64 → 128 channels, 3×3, pad 1, on 16×16, batch 4.
    let (n, ci, h, w, co, k) = (4, 64, 16, 16, 128, 3);
    let x = rand_vec(n * ci * h * w, 7);
    let wt = rand_vec(co * ci * k * k, 8);
    let (want, oh, ow) = conv_ref(&x, &wt, (n, ci, h, w), (co, k, k), 1, 1);
    let (dx, dw) = (dev.upload(&x).unwrap(), dev.upload(&wt).unwrap());
    let y = dev.alloc(want.len()).unwrap();
    let mut p = ConvParams {
        x: dx.ptr(),
        weight: dw.ptr(),
        out: y.ptr(),
        ..conv_geometry((n, ci, h, w), (co, k), (oh, ow), 1, 1)
    };
    launch(
        dev,
        "conv2d_fwd",
        Launch::tiles(co, n * oh * ow, 1).unwrap(),
        &p,
    )
    .unwrap();
    assert_close(
        "conv2d_fwd 64→128 k3 p1",
        &y.to_host().unwrap(),
        &want,
        1e-3,
        1e-3,
    );
    // Weight gradient with dy = y, split-K vs no split: same numbers.
    let gn = ci * k * k;
    let big_k = n * oh * ow;
    let split = split_k_for(co, gn, big_k, 4 * 132).max(2);
    let g1 = dev.alloc(co * gn).unwrap();
    let g2 = dev.alloc(co * gn).unwrap();
    let ws = dev.alloc(split * co * gn).unwrap();
    p.dy = y.ptr();
    p.out = g1.ptr();
    launch(
        dev,
        "conv2d_bwd_weight",
        Launch::tiles(co, gn, 1).unwrap(),
        &p,
    )
    .unwrap();
    p.out = g2.ptr();
    p.workspace = ws.ptr();
    p.split_k = split as i32;
    launch(
        dev,
        "conv2d_bwd_weight",
        Launch::tiles(co, gn, split).unwrap(),
        &p,
    )
    .unwrap();
    launch(
        dev,
        "conv2d_bwd_weight_reduce",
        Launch::elementwise(co * gn),
        &p,
    )
    .unwrap();
    let (a, b) = (g1.to_host().unwrap(), g2.to_host().unwrap());
    assert_close("conv2d_bwd_weight split-K = no split", &b, &a, 1e-3, 1e-4);
}

/// x rounded to TF32 as the `_tf32` kernels round their operands
/// (`si_tf32` in kernels/common.cuh: to nearest, ties to even).
fn tf32(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits(u.wrapping_add(0x0fff + ((u >> 13) & 1)) & 0xffff_e000)
}

/// The 128×128 kernels of `tile` (`*_t128` on FFMA, `*_tc` and `*_tf32` on
/// tensor cores), or their 64×256 twins (`*_t128w`, `*_tcw`, `*_tf32w`: the
/// forward and the input gradient only), launched directly (whatever the
/// size rule would pick):
/// against the host reference for the forward, against the 64×64 kernels
/// (themselves checked above and in the emulator) for the input gradient,
/// the transposed conv with bias and the weight gradient with and without
/// split-K, at the same tolerances for all (the `_tc` kernels' 3xTF32 is
/// meant to be as accurate as FP32; the `_tf32` kernels' references get the
/// operands rounded to TF32, whose products are exact, so they too must
/// agree to FP32 rounding). Stride 2 and odd sizes: partial 128×128 tiles
/// in M and N.
fn conv_big_tile_kernels(dev: &Arc<GpuDevice>, tile: ConvTile) {
    if tile.needs_tensor_cores() && dev.compute_capability().0 < 8 {
        // No TF32 tensor cores: the kernels would trap (the library refuses).
        println!("skipped: the {tile:?} kernels need compute capability 8.0 or later");
        return;
    }
    // FFMA sums in FP32: 1e-3 either way. The _tc kernels must be as
    // accurate: with K from 171 to 1350 here, dropping 3xTF32's correction
    // terms (plain TF32, ~2^-11 relative per operand) errs by several 1e-3,
    // FP32 by a few 1e-5, so this bound tells the two apart.
    let (atol, rtol) = if matches!(tile, ConvTile::T128 | ConvTile::T128Wide) {
        (1e-3, 1e-3)
    } else {
        (3e-4, 1e-4)
    };
    // The wide tiles (*_t128w, *_tcw, *_tf32w) take at most 64 GEMM rows:
    // 50 output channels.
    let wide = tile.rows_in_one_block().is_some();
    let co = if wide { 50 } else { 150 };
    let (n, ci, h, w, k, s, pad) = (3, 19, 23, 21, 3, 2, 1);
    let x = rand_vec(n * ci * h * w, 17);
    let wt = rand_vec(co * ci * k * k, 18);
    // What the references multiply.
    let operands = |v: &[f32]| -> Vec<f32> {
        match tile {
            ConvTile::Tf32 | ConvTile::Tf32Wide => v.iter().map(|&a| tf32(a)).collect(),
            _ => v.to_vec(),
        }
    };
    let (want, oh, ow) = conv_ref(
        &operands(&x),
        &operands(&wt),
        (n, ci, h, w),
        (co, k, k),
        s,
        pad,
    );
    let dy_host = rand_vec(want.len(), 19);
    let bias_host = rand_vec(co.max(ci), 20);
    let (dx, dw) = (dev.upload(&x).unwrap(), dev.upload(&wt).unwrap());
    let dy = dev.upload(&dy_host).unwrap();
    let bias = dev.upload(&bias_host).unwrap();
    let base = ConvParams {
        x: dx.ptr(),
        weight: dw.ptr(),
        ..conv_geometry((n, ci, h, w), (co, k), (oh, ow), s, pad)
    };
    // The 64×64 reference launches read these.
    let (x_ref, w_ref) = (
        dev.upload(&operands(&x)).unwrap(),
        dev.upload(&operands(&wt)).unwrap(),
    );
    let dy_ref = dev.upload(&operands(&dy_host)).unwrap();
    let base_ref = ConvParams {
        x: x_ref.ptr(),
        weight: w_ref.ptr(),
        ..base
    };
    let big = |rows, cols, split| Launch::conv_tiles(tile, rows, cols, split).unwrap();
    // Forward, without a bias: the host reference has none.
    let y = dev.alloc(want.len()).unwrap();
    let p = ConvParams {
        out: y.ptr(),
        ..base
    };
    let fwd = tile.kernel("conv2d_fwd");
    launch(dev, &fwd, big(co, n * oh * ow, 1), &p).unwrap();
    let name = format!("{fwd} 19→{co} k3 s2 p1");
    assert_close(&name, &y.to_host().unwrap(), &want, atol, rtol);
    // Input gradient and transposed conv (with bias over Cin): 64 vs 128.
    for (k64, b) in [("conv2d_bwd_data", 0), ("conv_transpose2d_fwd", bias.ptr())] {
        let k128 = tile.kernel(k64);
        let (g64, g128) = (dev.alloc(x.len()).unwrap(), dev.alloc(x.len()).unwrap());
        let p_ref = ConvParams {
            dy: dy_ref.ptr(),
            bias: b,
            out: g64.ptr(),
            ..base_ref
        };
        launch(dev, k64, Launch::tiles(ci, n * h * w, 1).unwrap(), &p_ref).unwrap();
        let p = ConvParams {
            dy: dy.ptr(),
            bias: b,
            out: g128.ptr(),
            ..base
        };
        launch(dev, &k128, big(ci, n * h * w, 1), &p).unwrap();
        let (a, b) = (g64.to_host().unwrap(), g128.to_host().unwrap());
        assert_close(&format!("{k128} = {k64}"), &b, &a, atol, rtol);
    }
    if wide {
        return; // no weight-gradient kernel on the wide tile
    }
    // Weight gradient: 64 without split vs 128 without and with split-K.
    let gn = ci * k * k;
    let want_dw = dev.alloc(co * gn).unwrap();
    let p = ConvParams {
        dy: dy_ref.ptr(),
        out: want_dw.ptr(),
        ..base_ref
    };
    launch(
        dev,
        "conv2d_bwd_weight",
        Launch::tiles(co, gn, 1).unwrap(),
        &p,
    )
    .unwrap();
    let want_dw = want_dw.to_host().unwrap();
    let big_k = n * oh * ow;
    for split in [1, split_k_for_tile(co, gn, big_k, 264, 128).max(2)] {
        let g = dev.alloc(co * gn).unwrap();
        let ws = dev.alloc(split * co * gn).unwrap();
        let p = ConvParams {
            dy: dy.ptr(),
            out: g.ptr(),
            workspace: ws.ptr(),
            split_k: split as i32,
            ..base
        };
        let bwd_w = tile.kernel("conv2d_bwd_weight");
        launch(dev, &bwd_w, big(co, gn, split), &p).unwrap();
        if split > 1 {
            let reduce = Launch::elementwise(co * gn);
            launch(dev, "conv2d_bwd_weight_reduce", reduce, &p).unwrap();
        }
        let name = format!("{bwd_w} split_k={split} = conv2d_bwd_weight");
        assert_close(&name, &g.to_host().unwrap(), &want_dw, atol, rtol);
    }
}

/// The `*_m8` kernels (GEMMs of at most 8 rows, one column per thread)
/// launched directly: the forward into 7 channels against the host
/// reference, the input gradient of 5 channels and the transposed conv into
/// 5 (with bias) against the 64×64 kernels; stride 2, K over several of the
/// kernels' 32-long A chunks, N over several 256-column blocks.
fn conv_m8_kernels(dev: &Arc<GpuDevice>) {
    let (n, ci, h, w, co, k, s, pad) = (3, 5, 23, 21, 7, 5, 2, 2);
    let x = rand_vec(n * ci * h * w, 27);
    let wt = rand_vec(co * ci * k * k, 28);
    let (want, oh, ow) = conv_ref(&x, &wt, (n, ci, h, w), (co, k, k), s, pad);
    let dy = dev.upload(&rand_vec(want.len(), 29)).unwrap();
    let bias = dev.upload(&rand_vec(ci, 30)).unwrap();
    let (dx, dw) = (dev.upload(&x).unwrap(), dev.upload(&wt).unwrap());
    let base = ConvParams {
        x: dx.ptr(),
        weight: dw.ptr(),
        ..conv_geometry((n, ci, h, w), (co, k), (oh, ow), s, pad)
    };
    let m8 = |rows, cols| Launch::conv_tiles(ConvTile::M8, rows, cols, 1).unwrap();
    let y = dev.alloc(want.len()).unwrap();
    let p = ConvParams {
        out: y.ptr(),
        ..base
    };
    launch(dev, "conv2d_fwd_m8", m8(co, n * oh * ow), &p).unwrap();
    assert_close(
        "conv2d_fwd_m8 5→7 k5 s2 p2",
        &y.to_host().unwrap(),
        &want,
        1e-4,
        1e-4,
    );
    for (k64, b) in [("conv2d_bwd_data", 0), ("conv_transpose2d_fwd", bias.ptr())] {
        let km8 = ConvTile::M8.kernel(k64);
        let (g64, g8) = (dev.alloc(x.len()).unwrap(), dev.alloc(x.len()).unwrap());
        let mut p = ConvParams {
            dy: dy.ptr(),
            bias: b,
            out: g64.ptr(),
            ..base
        };
        launch(dev, k64, Launch::tiles(ci, n * h * w, 1).unwrap(), &p).unwrap();
        p.out = g8.ptr();
        launch(dev, &km8, m8(ci, n * h * w), &p).unwrap();
        let (a, b) = (g64.to_host().unwrap(), g8.to_host().unwrap());
        assert_close(&format!("{km8} = {k64}"), &b, &a, 1e-4, 1e-4);
    }
}

/// `--conv-math`: under `tf32` a convolution the size rule puts on
/// 128×128 tiles runs on the `_tf32` kernels (seen in a kernel profile),
/// one into at most 64 channels on the wide `_tf32w` ones, and both stay
/// within TF32's error of the CPU; under `fp32` the same launches run on
/// `_t128` (and a wide one with twice the columns on `_t128w`); a small
/// one stays on the 64×64 FP32 kernel either way.
fn conv_math_dispatch(dev: &Arc<GpuDevice>) {
    use splitinv::ops::{self, Conv2dParams};
    if dev.compute_capability().0 < 8 {
        println!("skipped: TF32 falls back to FP32 before compute capability 8.0");
        return;
    }
    for var in ["SPLITINV_CONV_TILE", "SPLITINV_CONV_BIG_MIN_BLOCKS"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("skipped: {var} changes the size rule this part checks");
            return;
        }
    }
    use splitinv::{Device, Tensor};
    let rnd = |dims: &[usize], seed: u64| {
        let v = rand_vec(dims.iter().product(), seed);
        Tensor::from_vec(v, dims.to_vec()).unwrap()
    };
    // M = Cout 70, N = 38·30·30: 268 tiles of 128×128 (the rule's big side).
    let (x, w) = (rnd(&[38, 5, 32, 32], 40), rnd(&[70, 5, 3, 3], 41));
    let (xs, ws) = (rnd(&[2, 5, 8, 8], 42), rnd(&[70, 5, 3, 3], 43));
    let p = Conv2dParams::new(1, 0);
    let want = ops::conv2d(&x, &w, None, p).unwrap().to_vec().unwrap();
    let gpu = Device::Cuda(0);
    let on = |t: &Tensor| t.to_device(gpu).unwrap();
    let conv_on_gpu = |x: &Tensor, w: &Tensor| {
        ops::conv2d(&on(x), &on(w), None, p)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let kernels_of = |f: &dyn Fn() -> Vec<f32>| -> (Vec<String>, Vec<f32>) {
        cuda::profile::start();
        let out = f();
        let rows = cuda::profile::stop().unwrap().per_step(1).unwrap();
        (rows.into_iter().map(|r| r.kernel).collect(), out)
    };
    // Into 48 channels (at most 64 GEMM rows): the wide tile, under TF32
    // from 132 blocks of 256 columns on (34200 columns: 134), under FP32
    // from 264 (76·30·30 = 68400 columns: 268).
    let w48 = rnd(&[48, 5, 3, 3], 44);
    let want48 = ops::conv2d(&x, &w48, None, p).unwrap().to_vec().unwrap();
    let x76 = rnd(&[76, 5, 32, 32], 45);
    let want76 = ops::conv2d(&x76, &w48, None, p).unwrap().to_vec().unwrap();
    for (math, big_kernel, wide_kernel, wide_76, atol) in [
        (
            cuda::ConvMath::Tf32,
            "conv2d_fwd_tf32",
            "conv2d_fwd_tf32w",
            "conv2d_fwd_tf32w",
            2e-2,
        ),
        (
            cuda::ConvMath::Fp32,
            "conv2d_fwd_t128",
            "conv2d_fwd_t128",
            "conv2d_fwd_t128w",
            1e-3,
        ),
    ] {
        cuda::set_conv_math(math);
        let (names, y) = kernels_of(&|| conv_on_gpu(&x, &w));
        assert!(names.iter().any(|k| k == big_kernel), "{math}: {names:?}");
        assert_close(&format!("{big_kernel} by the rule"), &y, &want, atol, 1e-2);
        let (names, y) = kernels_of(&|| conv_on_gpu(&x, &w48));
        assert!(names.iter().any(|k| k == wide_kernel), "{math}: {names:?}");
        assert_close(
            &format!("{wide_kernel} by the rule"),
            &y,
            &want48,
            atol,
            1e-2,
        );
        let (names, y) = kernels_of(&|| conv_on_gpu(&x76, &w48));
        assert!(names.iter().any(|k| k == wide_76), "{math}: {names:?}");
        assert_close(&format!("{wide_76} by the rule"), &y, &want76, atol, 1e-2);
        let (names, _) = kernels_of(&|| conv_on_gpu(&xs, &ws));
        assert!(names.iter().any(|k| k == "conv2d_fwd"), "{math}: {names:?}");
    }
}

fn budget_and_peaks(dev: &Arc<GpuDevice>) {
    dev.trim();
    dev.reset_peak();
    let base = dev.memory_stats().in_use;
    let big = dev.alloc(4 << 20).unwrap(); // 16 MiB
    assert!(dev.memory_stats().peak_in_use >= base + (16 << 20));
    drop(big);
    cuda::set_memory_budget(Some(base + (8 << 20)));
    let e = dev.alloc(4 << 20).unwrap_err().to_string();
    cuda::set_memory_budget(None);
    assert!(e.contains("budget"), "{e}");
    assert!(e.contains("16.00 MiB"), "the need is in the message: {e}");
    assert!(dev.alloc(4 << 20).is_ok(), "fits again without a budget");
}

/// The white-box attack and the training loop queue their steps without
/// waiting for the GPU: the host waits only when a loop looks at its
/// monitor (every READ_EVERY steps and at the end), not two or three times
/// a step as when every step read its loss and gradient sums back. Both
/// loops still work on the device: the attack lowers its loss, the
/// training loop counts its accuracy there.
fn loops_wait_only_when_they_look(dev: &Arc<GpuDevice>) {
    use rand::SeedableRng;
    use splitinv::attacks::whitebox::{invert, Normalization, WhiteBoxConfig};
    use splitinv::nn::{Layer, Sequential};
    use splitinv::train::{fit, TrainConfig, TrainRng, READ_EVERY};
    use splitinv::{ops, Device, Tensor};
    let gpu = Device::Cuda(0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut net = Sequential::new()
        .with("conv", Layer::conv2d(3, 8, 3, 1, 1, &mut rng))
        .unwrap()
        .with("relu", Layer::Relu)
        .unwrap();
    net.to_device(gpu).unwrap();
    let x0 = Tensor::rand_uniform([2, 3, 8, 8], -1.0, 1.0, &mut rng)
        .to_device(gpu)
        .unwrap();
    let target = net.forward(&x0).unwrap().detach();
    let norm = Normalization::new(&[0.5; 3], &[0.25; 3]);
    let iterations = 4 * READ_EVERY;
    // With the L2 prior, whose mean's backward spreads the upstream
    // gradient from the device (no copy to the host either).
    let cfg = WhiteBoxConfig {
        iterations,
        lambda_l2: 0.1,
        ..WhiteBoxConfig::default()
    };
    let mut losses = Vec::new();
    let before = dev.host_waits();
    invert(&net, &target, [3, 8, 8], &norm, &cfg, &mut |p| {
        losses.extend(p.loss);
        Ok(())
    })
    .unwrap();
    let waits = dev.host_waits() - before;
    // One per look (the monitor's copy brings the loss for the progress
    // bar along); 2 to spare (nothing else around the loop should wait:
    // the pixel box and the start image are built on the host).
    assert!(
        waits <= 4 + 2,
        "white-box: {waits} host waits in {iterations} iterations"
    );
    assert_eq!(losses.len(), 4);
    assert!(losses[3] < losses[0], "the loss went down: {losses:?}");

    // A linear classifier on 8 separable points, 2 epochs of 64 steps.
    let mut clf = Sequential::new()
        .with("fc", Layer::linear(4, 2, &mut rng))
        .unwrap();
    clf.to_device(gpu).unwrap();
    clf.set_trainable(true);
    let params = clf.named_params();
    let xs: Vec<f32> = (0..8)
        .flat_map(|i| {
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            [s, 0.5 * s, -s, 0.1 * i as f32]
        })
        .collect();
    let labels: Vec<usize> = (0..8).map(|i| i % 2).collect();
    let tc = TrainConfig {
        epochs: 2,
        batch: 1,
        lr: 1e-2,
        ..TrainConfig::default()
    };
    let mut step =
        |idx: &[usize], _: &mut TrainRng| -> splitinv::Result<(Tensor, Option<Tensor>)> {
            // Uploaded every step, as the real loops do (a copy to the device
            // does not wait).
            let rows: Vec<f32> = idx
                .iter()
                .flat_map(|&i| xs[(i % 8) * 4..(i % 8) * 4 + 4].to_vec())
                .collect();
            let x = Tensor::from_vec(rows, [idx.len(), 4])?.to_device(gpu)?;
            let y: Vec<usize> = idx.iter().map(|&i| labels[i % 8]).collect();
            let logits = clf.forward(&x)?;
            Ok((
                ops::cross_entropy(&logits, &y)?,
                Some(ops::count_correct(&logits, &y)?),
            ))
        };
    let before = dev.host_waits();
    let stats = fit(&params, 64, &tc, 0, "t", &mut step, &mut |_| Ok(())).unwrap();
    let waits = dev.host_waits() - before;
    assert!(
        waits <= 2 * (64 / READ_EVERY + 1) + 2,
        "training: {waits} host waits in 128 steps"
    );
    assert!(
        stats[1].metric > 0.9,
        "accuracy counted on the device: {:?}",
        stats[1]
    );
    assert!(stats[1].loss < stats[0].loss, "{stats:?}");
}
