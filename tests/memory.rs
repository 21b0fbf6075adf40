//! The autograd graph is freed after every step: a white-box attack loop
//! holds the same number of tensor bytes after 10,000 steps as after 10, and
//! its peak does not grow. (Its own test binary, so no other test allocates
//! tensors at the same time and disturbs the global byte counters.)

use rand::SeedableRng;
use splitinv::autograd::no_grad;
use splitinv::device::{cpu_live_bytes, cpu_peak_bytes, reset_cpu_peak};
use splitinv::models::lenet;
use splitinv::ops::{self, TvKind};
use splitinv::optim::{Adam, Optimizer};
use splitinv::Tensor;

#[test]
fn ten_thousand_attack_steps_use_no_more_memory_than_ten() {
    let net = lenet(0).unwrap();
    let (f1, _) = net.split("ReLU2").unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x0 = Tensor::rand_uniform([2, 1, 28, 28], -1.0, 1.0, &mut rng);
    let target = no_grad(|| f1.forward(&x0)).unwrap();
    let x = Tensor::zeros([2, 1, 28, 28]).requires_grad();
    let mut opt = Adam::new(1e-2);
    let mut step = || {
        let loss = ops::add(
            &ops::mse_loss(&f1.forward(&x).unwrap(), &target).unwrap(),
            &ops::tv_loss(&x, TvKind::Squared).unwrap(),
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(std::slice::from_ref(&x), &grads).unwrap();
        loss.item().unwrap()
    };
    let first_loss = step();
    for _ in 1..10 {
        step();
    }
    let live_10 = cpu_live_bytes();
    reset_cpu_peak();
    let mut last_loss = 0.0;
    for _ in 10..10_000 {
        last_loss = step();
    }
    let live_10k = cpu_live_bytes();
    let peak_10k = cpu_peak_bytes();
    println!("live after 10 steps: {live_10} B, after 10000: {live_10k} B, peak during steps 10..10000: {peak_10k} B");
    assert_eq!(live_10, live_10k, "live tensor bytes grew across steps");
    // One step's working set on top of the steady state: a few hundred KB.
    assert!(
        peak_10k < live_10 + 1_000_000,
        "peak {peak_10k} far above steady state {live_10}"
    );
    assert!(
        last_loss < first_loss * 0.6,
        "the attack made progress: {first_loss} -> {last_loss}"
    );
}
