//! `splitinv demo`: the whole story in under two minutes on two cores, with
//! no files at all — synthetic digits, a briefly trained LeNet, and all
//! three attacks at two split layers.

use crate::attacks::blackbox::DataSetting;
use crate::attacks::metrics::{summarize, Summary};
use crate::attacks::queryfree::{self, ShadowSetting};
use crate::attacks::whitebox::{AttackOptimizer, Init, WhiteBoxConfig};
use crate::data::synthetic::{synthetic_digits, TEST_SEED, TRAIN_SEED};
use crate::error::{Error, Result};
use crate::experiment::{self, Target};
use crate::models::ModelKind;
use crate::report::{save_grid, Table};
use crate::train::TrainConfig;
use std::path::Path;

/// One row of the demo's results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoRow {
    /// Attack name.
    pub attack: String,
    /// Split layer.
    pub split: String,
    /// Scores (PSNR in dB; both SSIM protocols).
    pub summary: Summary,
    /// Seconds.
    pub seconds: f64,
}

/// Runs the demo, writing PNGs and `results.json` under `out`.
pub fn run(out: &Path, seed: u64) -> Result<Vec<DemoRow>> {
    let t0 = std::time::Instant::now();
    println!("1. synthetic digits (drawn in code, no files): 12000 to train the target, 6000 for the attacker, 1000 to test");
    let all = synthetic_digits(18_000, TRAIN_SEED ^ seed);
    let target_train = all.subset(&(0..12_000).collect::<Vec<_>>())?;
    let attacker = all.subset(&(12_000..18_000).collect::<Vec<_>>())?;
    let test = synthetic_digits(1_000, TEST_SEED ^ seed);

    println!("2. training LeNet-5 (the client/server net f = f2 ∘ f1)");
    let kind = ModelKind::Lenet;
    let mut net = kind.build(seed)?;
    let target0 = Target::new(kind, net.clone());
    let cfg = TrainConfig {
        epochs: 2,
        batch: 32,
        lr: 2e-3,
        seed,
        ..TrainConfig::default()
    };
    let epochs = experiment::train_classifier(
        &mut net,
        &target_train,
        Some(&test),
        &target0.norm,
        &cfg,
        None,
        crate::checkpoint::TrainState::default(),
        &mut |_, e, _| {
            println!(
                "   epoch {}: loss {:.4}, train acc {:.2}%, test acc {:.2}%, {:.0} img/s",
                e.stats.epoch + 1,
                e.stats.loss,
                100.0 * e.train_accuracy,
                100.0 * e.test_accuracy.unwrap_or(f64::NAN),
                e.stats.images_per_s
            );
            Ok(())
        },
    )?;
    let acc = epochs.last().and_then(|e| e.test_accuracy).unwrap_or(0.0);
    let target = Target::new(kind, net);

    let idx = test.first_of_each_class();
    let (originals, _) = test.batch(&idx)?;
    println!("3. attacking the first test image of each class ({} images) at split layers conv1 and ReLU2", idx.len());
    let mut rows = Vec::new();
    let mut grids = Vec::new();
    for split in ["conv1", "ReLU2"] {
        let wb = WhiteBoxConfig {
            optimizer: AttackOptimizer::Adam {
                lr: 0.05,
                eps: 1e-8,
                amsgrad: false,
            },
            iterations: 600,
            init: Init::Zeros,
            lambda_tv: if split == "conv1" { 0.0 } else { 0.02 },
            box_constraint: true,
            ..WhiteBoxConfig::default()
        };
        let white = experiment::run_whitebox(&target, split, &originals, &wb, None)?;
        let bb_cfg = TrainConfig {
            epochs: 3,
            batch: 32,
            lr: 2e-3,
            seed: seed + 1,
            ..TrainConfig::default()
        };
        let black = experiment::run_blackbox(
            &target,
            split,
            DataSetting::SameDist,
            &attacker,
            &originals,
            &bb_cfg,
            0,
            None,
        )?;
        let qf_cfg = TrainConfig {
            epochs: 2,
            batch: 32,
            lr: 2e-3,
            seed: seed + 2,
            ..TrainConfig::default()
        };
        // The inversion of a shadow takes the query-free attack's tuned
        // priors (a shadow is only an approximation of f1: a white-box
        // prior lets the image fit the shadow's errors), at the demo's
        // iteration budget, and the tuned shadow count.
        let qf_wb = WhiteBoxConfig {
            iterations: wb.iterations,
            ..crate::reproduce::queryfree_defaults(kind, split)
        };
        let query_free = experiment::run_queryfree(
            &target,
            split,
            ShadowSetting {
                same_set: false,
                same_net: true,
            },
            &attacker,
            &originals,
            &qf_cfg,
            &qf_wb,
            crate::reproduce::queryfree_shadows(kind),
            queryfree::MomentMatching::OFF,
            None,
        )?;
        for (name, o) in [
            ("white-box", &white),
            ("black-box same-dist", &black),
            ("query-free diff-set same-net", &query_free),
        ] {
            rows.push(DemoRow {
                attack: name.into(),
                split: split.into(),
                summary: summarize(&o.scores),
                seconds: o.seconds,
            });
        }
        let path = out.join(format!("demo_{split}.png"));
        save_grid(
            &path,
            &[&originals, &white.recon, &black.recon, &query_free.recon],
            3,
        )?;
        grids.push(path);
    }

    let mut table = Table::new(&[
        "attack",
        "split",
        "PSNR dB",
        "SSIM (paper)",
        "SSIM (standard)",
        "seconds",
    ]);
    for r in &rows {
        table.push(vec![
            r.attack.clone(),
            r.split.clone(),
            format!("{:.2} ± {:.2}", r.summary.psnr.mean, r.summary.psnr.ci95),
            format!("{:.4}", r.summary.ssim_paper.mean),
            format!("{:.4}", r.summary.ssim_standard.mean),
            format!("{:.1}", r.seconds),
        ]);
    }
    println!(
        "\nTarget LeNet test accuracy on synthetic digits: {:.2}%",
        100.0 * acc
    );
    println!("{}", table.to_text());
    println!("SSIM (paper) = the authors' protocol: 7×7 uniform window, sample covariance, data range of the reconstruction;");
    println!("SSIM (standard) = Wang et al. 2004: 11×11 Gaussian σ=1.5, data range 1. PSNR ± 95% confidence half-width.");
    let json = serde_json::json!({ "target_test_accuracy": acc, "rows": rows, "seconds": t0.elapsed().as_secs_f64() });
    crate::util::write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)
            .map_err(|e| Error::Msg(e.to_string()))?
            .as_bytes(),
    )?;
    crate::util::write_atomic(&out.join("results.md"), table.to_markdown().as_bytes())?;
    crate::util::write_atomic(&out.join("results.csv"), table.to_csv().as_bytes())?;
    for g in &grids {
        println!(
            "wrote {} (rows: originals, white-box, black-box, query-free)",
            g.display()
        );
    }
    println!(
        "wrote {}/results.{{json,md,csv}}; total {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(rows)
}
