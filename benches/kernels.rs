//! Criterion benchmarks of the convolution kernels at the models' real layer
//! shapes (batch 32).
//!
//! Every benchmark declares `Throughput::Elements(flops)`, where flops =
//! 2·N·Cout·Cin·kh·kw·OH·OW is the multiply-add count ×2 of one kernel call,
//! so criterion's "elements/s" figure reads directly as FLOP/s (e.g.
//! "150 Gelem/s" = 150 GFLOP/s). The three conv kernels (forward,
//! input-gradient, weight-gradient) do the same number of flops.
//!
//! Run: `cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 2`
//! (thread count: `SPLITINV_THREADS`, default all cores; SIMD level:
//! `SPLITINV_SIMD`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::SeedableRng;
use splitinv::ops::{
    conv2d, conv2d_input_grad, conv2d_weight_grad, max_pool2d, Conv2dParams, Pool2dParams,
};
use splitinv::Tensor;
use std::hint::black_box;

/// A conv layer: name, Cin, Cout, kernel, padding, input H = W.
struct Layer {
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    pad: usize,
    hw: usize,
}

const BATCH: usize = 32;

const LAYERS: &[Layer] = &[
    Layer {
        name: "lenet_conv1_1x28_8_k5",
        cin: 1,
        cout: 8,
        k: 5,
        pad: 0,
        hw: 28,
    },
    Layer {
        name: "lenet_conv2_8x12_16_k5",
        cin: 8,
        cout: 16,
        k: 5,
        pad: 0,
        hw: 12,
    },
    // The MNIST black-box decoder's last conv (direct kernels: Cout = 1).
    Layer {
        name: "mnist_decoder_8x24_1_k5_p4",
        cin: 8,
        cout: 1,
        k: 5,
        pad: 4,
        hw: 24,
    },
    Layer {
        name: "cifar_conv11_3x32_64",
        cin: 3,
        cout: 64,
        k: 3,
        pad: 1,
        hw: 32,
    },
    Layer {
        name: "cifar_conv12_64x32_64",
        cin: 64,
        cout: 64,
        k: 3,
        pad: 1,
        hw: 32,
    },
    Layer {
        name: "cifar_conv21_64x16_128",
        cin: 64,
        cout: 128,
        k: 3,
        pad: 1,
        hw: 16,
    },
    Layer {
        name: "cifar_conv22_128x16_128",
        cin: 128,
        cout: 128,
        k: 3,
        pad: 1,
        hw: 16,
    },
    Layer {
        name: "cifar_conv3x_128x8_128",
        cin: 128,
        cout: 128,
        k: 3,
        pad: 1,
        hw: 8,
    },
];

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::rand_uniform(shape.to_vec(), -1.0, 1.0, &mut rng)
}

fn conv_kernels(c: &mut Criterion) {
    let _ = splitinv::cpu::threads::init(None);
    for (kernel, seed) in [
        ("conv2d_forward", 1u64),
        ("conv2d_input_grad", 2),
        ("conv2d_weight_grad", 3),
    ] {
        let mut group = c.benchmark_group(kernel);
        group.sample_size(10);
        for l in LAYERS {
            let p = Conv2dParams::new(1, l.pad);
            let out = l.hw + 2 * l.pad - l.k + 1;
            let flops = 2 * BATCH * l.cout * l.cin * l.k * l.k * out * out;
            group.throughput(Throughput::Elements(flops as u64));
            let x = rnd(&[BATCH, l.cin, l.hw, l.hw], seed);
            let w = rnd(&[l.cout, l.cin, l.k, l.k], seed + 10);
            let b = rnd(&[l.cout], seed + 20);
            let gy = rnd(&[BATCH, l.cout, out, out], seed + 30);
            group.bench_function(BenchmarkId::from_parameter(l.name), |bench| match kernel {
                "conv2d_forward" => {
                    bench.iter(|| black_box(conv2d(&x, &w, Some(&b), p).map(|t| t.numel())))
                }
                "conv2d_input_grad" => bench.iter(|| {
                    black_box(conv2d_input_grad(&gy, &w, [l.hw, l.hw], p).map(|t| t.numel()))
                }),
                _ => bench.iter(|| {
                    black_box(conv2d_weight_grad(&x, &gy, [l.k, l.k], p).map(|t| t.numel()))
                }),
            });
        }
        group.finish();
    }
}

fn pool_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("max_pool2d");
    group.sample_size(10);
    // Throughput here is input elements/s (one comparison each), not flops.
    for (name, dims) in [
        ("lenet_pool1_8x24", [BATCH, 8, 24, 24]),
        ("cifar_pool1_64x32", [BATCH, 64, 32, 32]),
    ] {
        let x = rnd(&dims, 7);
        group.throughput(Throughput::Elements(x.numel() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter(|| black_box(max_pool2d(&x, Pool2dParams::new(2, 2)).map(|t| t.numel())))
        });
    }
    group.finish();
}

criterion_group!(benches, conv_kernels, pool_kernels);
criterion_main!(benches);
