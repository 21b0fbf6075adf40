//! How an inversion gradient flows: invert the features of a small conv net
//! for one image and print, every few steps, the loss and the size of the
//! gradient at every layer as it travels from the loss back to the pixels.
//!
//! Run: `cargo run --release --example gradient_flow`
//!
//! What to look for: the gradient norm changes at each layer by roughly the
//! size of that layer's local derivative — ReLU zeroes the slots whose
//! pre-activation is negative, max-pooling routes everything to one pixel per
//! window, and the conv input-gradient (a transposed convolution with the same
//! weights) spreads it back over the receptive field. As the reconstruction
//! improves the loss falls and every gradient shrinks with it.

use splitinv::autograd::no_grad;
use splitinv::ops::{self, TvKind};
use splitinv::optim::{Adam, Optimizer};
use splitinv::{models, Result, Tensor};

/// A 28×28 test image drawn in code: a ring and a bar, values in [−1, 1].
fn test_image() -> Tensor {
    let mut v = vec![-1.0f32; 28 * 28];
    for y in 0..28 {
        for x in 0..28 {
            let (dx, dy) = (x as f32 - 13.5, y as f32 - 13.5);
            let r = (dx * dx + dy * dy).sqrt();
            if (6.0..9.0).contains(&r) || ((12..=15).contains(&x) && (4..=23).contains(&y)) {
                v[y * 28 + x] = 1.0;
            }
        }
    }
    Tensor::from_vec(v, [1, 1, 28, 28]).unwrap_or_else(|_| Tensor::zeros([1, 1, 28, 28]))
}

fn norm(t: &Tensor) -> Result<f32> {
    Ok(t.to_vec()?.iter().map(|v| v * v).sum::<f32>().sqrt())
}

fn main() -> Result<()> {
    // The trained zoo LeNet when it is there (run from the repository root),
    // else random weights — the gradient flows the same way through both.
    let mut net = models::lenet(0)?;
    let zoo = std::path::Path::new("models/lenet_mnist.safetensors");
    if zoo.is_file() {
        splitinv::nn::weights::load(&mut net, zoo)?;
        println!("weights: {}", zoo.display());
    } else {
        println!("weights: random (models/lenet_mnist.safetensors not found)");
    }
    let (f1, _) = net.split("ReLU2")?;
    let x0 = test_image();
    let target = no_grad(|| f1.forward(&x0))?;
    let x = Tensor::zeros([1, 1, 28, 28]).requires_grad();
    let mut opt = Adam::new(0.1);
    let names = f1.layer_names();

    print!("{:>5} {:>10}", "step", "loss");
    for n in names.iter().rev() {
        print!(" {:>9}", format!("|g|{n}"));
    }
    println!(" {:>9}", "|g|pixels");

    for step in 0..=300 {
        // Keep every layer's output so backward can report its gradient.
        let mut acts = Vec::new();
        let mut h = x.clone();
        for (_, layer) in f1.layers() {
            h = layer.forward(&h, None)?;
            acts.push(h.clone());
        }
        let loss = ops::add(
            &ops::mse_loss(&h, &target)?,
            &ops::scale(&ops::tv_loss(&x, TvKind::Squared)?, 0.01)?,
        )?;
        let keep: Vec<&Tensor> = acts.iter().collect();
        let grads = loss.backward_keep(&keep)?;
        if step % 30 == 0 {
            print!("{step:>5} {:>10.3e}", loss.item()?);
            for a in acts.iter().rev() {
                let g = grads.get(a).map(norm).transpose()?.unwrap_or(0.0);
                print!(" {g:>9.2e}");
            }
            println!(
                " {:>9.2e}",
                grads.get(&x).map(norm).transpose()?.unwrap_or(0.0)
            );
        }
        opt.step(std::slice::from_ref(&x), &grads)?;
    }
    let err = ops::mse_loss(&x.detach(), &x0)?.item()?;
    println!("\npixel MSE of the reconstruction (normalised space): {err:.4}");
    Ok(())
}
