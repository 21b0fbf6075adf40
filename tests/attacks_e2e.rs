//! End to end on real MNIST (via `SPLITINV_DATA`): the zoo LeNet, the
//! paper's protocol images (first test image of each class), each attack at
//! a couple of split layers with shortened budgets. The thresholds are the
//! paper's numbers where the short budget already beats them, and a clear
//! "much better than nothing" level elsewhere.

use splitinv::attacks::blackbox::DataSetting;
use splitinv::attacks::metrics::{psnr, summarize};
use splitinv::attacks::queryfree::{self, ShadowSetting};
use splitinv::experiment;
use splitinv::reproduce::{self, queryfree_defaults, whitebox_defaults};
use splitinv::train::TrainConfig;
use std::path::Path;

mod common;
use common::ScratchDir;

fn setup() -> Option<reproduce::Setup> {
    let Some(root) = std::env::var_os("SPLITINV_DATA") else {
        println!("skipped: SPLITINV_DATA not set");
        return None;
    };
    Some(
        reproduce::setup(
            "mnist",
            Some(Path::new("models/lenet_mnist.safetensors")),
            Some(Path::new(&root)),
            None,
            Some(6000),
        )
        .unwrap(),
    )
}

#[test]
fn psnr_of_known_images() {
    // MSE 0.01 → 20 dB; identical → capped.
    let a = vec![0.5f32; 100];
    let b = vec![0.6f32; 100];
    assert!((psnr(&b, &a) - 20.0).abs() < 1e-3);
    assert_eq!(psnr(&a, &a), splitinv::attacks::metrics::PSNR_CAP_DB);
    // Reconstructions are clipped to [0, 1] first.
    assert!((psnr(&[1.7f32; 4], &[1.0f32; 4]) - 100.0).abs() < 1e-9);
}

#[test]
fn whitebox_beats_the_paper_at_conv1_and_relu2() {
    let Some(s) = setup() else { return };
    for (split, iters, paper_psnr, paper_ssim) in [
        ("conv1", 400, 39.69, 0.9969),
        ("ReLU2", 2000, 15.10, 0.5998),
    ] {
        let mut cfg = whitebox_defaults(s.target.kind, split);
        cfg.iterations = iters;
        let o = experiment::run_whitebox(&s.target, split, &s.originals, &cfg, None).unwrap();
        let m = summarize(&o.scores);
        println!(
            "white-box {split}: PSNR {:.2}, SSIM paper {:.4}, standard {:.4}",
            m.psnr.mean, m.ssim_paper.mean, m.ssim_standard.mean
        );
        assert_eq!(m.n, 10);
        assert!(
            m.psnr.mean > paper_psnr && m.ssim_paper.mean > paper_ssim,
            "{split}: {m:?}"
        );
    }
}

#[test]
fn blackbox_and_queryfree_recover_digits_at_conv1() {
    let Some(s) = setup() else { return };
    let cfg = TrainConfig {
        epochs: 3,
        batch: 64,
        lr: 1e-2,
        lr_step: 1,
        lr_gamma: 0.3,
        seed: 1,
        progress: false,
        ..TrainConfig::default()
    };
    let bb = experiment::run_blackbox(
        &s.target,
        "conv1",
        DataSetting::SameDist,
        &s.disjoint,
        &s.originals,
        &cfg,
        0,
        None,
    )
    .unwrap();
    let m = summarize(&bb.scores);
    println!(
        "black-box conv1 same-dist: PSNR {:.2}, SSIM paper {:.4}",
        m.psnr.mean, m.ssim_paper.mean
    );
    assert!(m.psnr.mean > 25.0 && m.ssim_paper.mean > 0.9, "{m:?}");

    let mut wb = queryfree_defaults(s.target.kind, "conv1");
    wb.iterations = 500;
    // Run twice through a shadow cache: the first run trains and saves the
    // shadow, the second must load it and give the same reconstruction.
    let cache = ScratchDir::new("shadows");
    let run = || {
        experiment::run_queryfree(
            &s.target,
            "conv1",
            ShadowSetting {
                same_set: false,
                same_net: true,
            },
            &s.disjoint,
            &s.originals,
            &cfg,
            &wb,
            1,
            queryfree::MomentMatching::OFF,
            Some(&*cache),
        )
        .unwrap()
    };
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let qf = run();
    let saved = files();
    assert_eq!(saved.len(), 1, "one shadow file in the cache");
    let bytes = std::fs::read(&saved[0]).unwrap();
    let again = run();
    assert_eq!(files(), saved, "the second run must find the same file");
    assert_eq!(
        std::fs::read(&saved[0]).unwrap(),
        bytes,
        "and not rewrite it"
    );
    assert_eq!(
        qf.recon.to_vec().unwrap(),
        again.recon.to_vec().unwrap(),
        "the cached shadow must reproduce the reconstruction exactly"
    );
    // Proof that the file is what the second run used: halve its weights,
    // and the reconstruction changes.
    let (tensors, meta) = splitinv::nn::weights::read_tensors(&saved[0]).unwrap();
    let halved: Vec<_> = tensors
        .into_iter()
        .map(|(name, dims, v)| (name, dims, v.iter().map(|x| x * 0.5).collect()))
        .collect();
    splitinv::nn::weights::write_tensors(&saved[0], &halved, Some(meta)).unwrap();
    let tampered = run();
    assert_ne!(
        qf.recon.to_vec().unwrap(),
        tampered.recon.to_vec().unwrap(),
        "a run with the cache must use the cached weights"
    );
    let m = summarize(&qf.scores);
    println!(
        "query-free conv1 diff-set same-net: PSNR {:.2}, SSIM paper {:.4}",
        m.psnr.mean, m.ssim_paper.mean
    );
    // The baseline: an all-background (black) guess for the same images.
    let orig = s.originals.to_vec().unwrap();
    let per = orig.len() / 10;
    let blank: f64 = orig
        .chunks(per)
        .map(|o| psnr(&vec![0.0; per], o))
        .sum::<f64>()
        / 10.0;
    println!("blank-image baseline PSNR {blank:.2}");
    assert!(
        m.psnr.mean > blank + 4.0 && m.ssim_paper.mean > 0.55,
        "{m:?} vs blank {blank}"
    );
}
