//! Optimizer state is allocated on the first step and reused: the bytes held
//! by CPU tensors do not change across later steps.
//!
//! A separate test binary with a single test, because `cpu_live_bytes` is a
//! process-wide counter that tests running in parallel threads would disturb.

use splitinv::device::cpu_live_bytes;
use splitinv::ops::{add, mse_loss};
use splitinv::optim::{Adam, Optimizer, Sgd};
use splitinv::Tensor;

#[test]
fn optimizer_steps_allocate_nothing_after_the_first() {
    // One small parameter and one large enough for the parallel update path.
    let sizes = [37usize, 70_000];
    let targets: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::from_vec((0..n).map(|i| (i as f32 * 0.1).sin()).collect(), [n]).unwrap())
        .collect();
    let elems: usize = sizes.iter().sum();
    // (name, optimizer, state floats per parameter element)
    let cases: Vec<(&str, Box<dyn Optimizer>, usize)> = vec![
        ("adam", Box::new(Adam::new(0.01)), 2),
        ("amsgrad", Box::new(Adam::new(0.01).with_amsgrad(true)), 3),
        ("sgd", Box::new(Sgd::new(0.1)), 0),
        (
            "sgd-momentum",
            Box::new(Sgd::new(0.1).with_momentum(0.9)),
            1,
        ),
    ];
    for (name, mut opt, state_per_elem) in cases {
        let params: Vec<Tensor> = sizes
            .iter()
            .map(|&n| Tensor::zeros([n]).requires_grad())
            .collect();
        for step in 0..5 {
            let loss = add(
                &mse_loss(&params[0], &targets[0]).unwrap(),
                &mse_loss(&params[1], &targets[1]).unwrap(),
            )
            .unwrap();
            let grads = loss.backward().unwrap();
            drop(loss);
            let before = cpu_live_bytes();
            opt.step(&params, &grads).unwrap();
            let grew = cpu_live_bytes() as i64 - before as i64;
            let want = if step == 0 {
                (state_per_elem * elems * 4) as i64
            } else {
                0
            };
            assert_eq!(grew, want, "{name}, step {step}: live bytes grew by {grew}");
        }
        // The optimizer did move the parameters towards the targets.
        assert!(
            params[1].to_vec().unwrap()[5] != 0.0,
            "{name} did not update"
        );
    }
}
