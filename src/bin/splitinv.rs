//! The `splitinv` command line.

use clap::{Parser, Subcommand};
use splitinv::attacks::whitebox::AttackOptimizer;
use splitinv::bench;
use splitinv::cli_train::{self, ModelChoice, TrainArgs};
use splitinv::cpu::{simd, threads};
use splitinv::data::Split;
use splitinv::train::TrainConfig;
use splitinv::{experiment, report, reproduce, Tensor};
use splitinv::{Error, Result};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "splitinv",
    version,
    about = "Model inversion attacks against split (collaborative) inference"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: $SPLITINV_THREADS, else all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Folder holding the datasets (default: $SPLITINV_DATA).
    #[arg(long, global = true)]
    data: Option<std::path::PathBuf>,
    /// Where models and batches run: auto (a GPU when one is usable, else
    /// the CPU with a one-line notice), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// GPU memory budget for the pool allocator, e.g. 2GiB, 512MiB, 1.5GB
    /// (default: no budget beyond the device's memory). Peak use is printed
    /// after every command that used the GPU.
    #[arg(long, global = true)]
    gpu_mem: Option<String>,
    /// GPU convolution precision: fp32 (as on the CPU) or tf32 (the large
    /// convolutions multiply operands rounded to TF32 on tensor cores and
    /// sum in FP32, as PyTorch's do by default). Default:
    /// $SPLITINV_CONV_MATH, else fp32.
    #[arg(long, global = true)]
    conv_math: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole story on synthetic digits, no files needed: train LeNet
    /// briefly, run all three attacks at two split layers, print the table
    /// and write PNG grids.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "results/demo")]
        out: std::path::PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a target classifier; checkpoints every epoch, `--resume` continues.
    Train {
        /// lenet, cifar10cnn, or a JSON net spec file.
        #[arg(long)]
        model: String,
        /// mnist, fashion-mnist, cifar10, synthetic-digits, folder:PATH.
        #[arg(long)]
        dataset: String,
        /// Passes over the training set.
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        epochs: usize,
        /// Mini-batch size.
        #[arg(long, default_value_t = 32, value_parser = at_least_one)]
        batch: usize,
        /// Learning rate (Adam, amsgrad, eps 1e-3; halved every 20 epochs).
        #[arg(long, default_value_t = 1e-3)]
        lr: f32,
        /// Multiply the lr by --lr-gamma every this many epochs.
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        lr_step: usize,
        /// See --lr-step.
        #[arg(long, default_value_t = 0.5)]
        lr_gamma: f32,
        /// Stochastic weight averaging: after this many epochs, average the
        /// weights at the end of every further epoch; the average is the result.
        #[arg(long)]
        swa_from: Option<usize>,
        /// Constant learning rate while averaging (default: the schedule goes on).
        #[arg(long)]
        swa_lr: Option<f32>,
        /// Seed for initialisation, shuffling and augmentation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the weights (safetensors).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Continue from <out>.ckpt.
        #[arg(long)]
        resume: bool,
        /// Use only the first N training images.
        #[arg(long, value_parser = at_least_one)]
        limit: Option<usize>,
        /// Random flip + small affine (default: on for colour data).
        #[arg(long)]
        augment: Option<bool>,
        /// Print the JSON summary only.
        #[arg(long)]
        json: bool,
    },
    /// Test accuracy of trained weights.
    Eval {
        /// lenet, cifar10cnn, or a JSON net spec file.
        #[arg(long)]
        model: String,
        /// Weights (safetensors).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Dataset name.
        #[arg(long)]
        dataset: String,
        /// Evaluate on the training split instead of the test split.
        #[arg(long)]
        train_split: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one attack against a trained target at one split layer.
    Attack {
        /// whitebox, blackbox or queryfree.
        attack: String,
        /// mnist (LeNet) or cifar10 (CIFAR10CNN).
        #[arg(long)]
        dataset: String,
        /// Split layer (every layer is allowed: conv1 … fc3, conv11 … fc2).
        #[arg(long)]
        split: String,
        /// Target weights (default: the zoo's under models/).
        #[arg(long)]
        weights: Option<std::path::PathBuf>,
        /// Attack the first N test images (default: the first of each class).
        #[arg(long, value_parser = at_least_one)]
        images: Option<usize>,
        /// blackbox: same-set | same-dist | random (Gaussian noise shaped like images: natural-photo statistics for colour, calibrated to the observed features for grey levels) | random-white (the paper's white noise); queryfree: {same,diff}-set-{same,diff}-net.
        #[arg(long)]
        setting: Option<String>,
        /// White-box (and query-free inversion) iterations (default: per-split tuned).
        #[arg(long, value_parser = at_least_one)]
        iterations: Option<usize>,
        /// White-box (and query-free inversion) Adam learning rate.
        #[arg(long)]
        lr: Option<f32>,
        /// White-box (and query-free inversion) TV weight.
        #[arg(long)]
        lambda_tv: Option<f32>,
        /// White-box (and query-free inversion) weight of an L2 prior; query-free pulls towards the attacker data's median image.
        #[arg(long)]
        lambda_l2: Option<f32>,
        /// Query-free: shadow networks trained and inverted together (1 = the paper's attack; default 3 for LeNet, 1 for the CIFAR CNN).
        #[arg(long, value_parser = shadow_count)]
        shadows: Option<usize>,
        /// Black-box / query-free: epochs of inverse-network / shadow training (default: tuned).
        #[arg(long, value_parser = at_least_one)]
        train_epochs: Option<usize>,
        /// Black-box / query-free: learning rate of that training (default: tuned, with the epsilon).
        #[arg(long)]
        train_lr: Option<f32>,
        /// Black-box / query-free: Adam's epsilon in that training (default: 1e-8 for the CIFAR CNN's inverse networks and its shadows from the third block on, the authors' 1e-3 elsewhere).
        #[arg(long)]
        train_eps: Option<f32>,
        /// Query-free: weight of a loss that asks each shadow, while it trains, for the per-channel mean and spread of the observed features (0 = off, the paper's shadow training).
        #[arg(long)]
        moment_weight: Option<f32>,
        /// Query-free: how many random mixtures of the feature channels the moment loss matches as well, which pins the correlations between channels (0 = per-channel statistics only; default: two per channel at the CIFAR CNN's conv11, 0 elsewhere; at most 4096).
        #[arg(long)]
        moment_projections: Option<usize>,
        /// Black-box random only: train on this noise instead of the default one, as MEAN,SPREAD,TEXTURE[,SHARED] (pixel scale; TEXTURE white, blur:SIGMA or powerlaw:ALPHA; SHARED the fraction of variance the colour channels share, default 0), e.g. 0.47,0.2,powerlaw:3,0.9.
        #[arg(long)]
        noise: Option<splitinv::attacks::noise::NoiseModel>,
        /// Query-free: keep trained shadows in this folder and reuse them when the same settings come again.
        #[arg(long)]
        shadow_cache: Option<std::path::PathBuf>,
        /// Output folder for the PNG grid and JSON.
        #[arg(long, default_value = "results/attack")]
        out: std::path::PathBuf,
        /// White-box only: write the reconstruction emerging over the iterations as a GIF.
        #[arg(long)]
        gif: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Reproduce the paper's Tables 3, 4 and 6 and the per-layer figure.
    Reproduce {
        /// mnist or cifar10.
        #[arg(long)]
        dataset: String,
        /// Target weights (default: the zoo's under models/).
        #[arg(long)]
        weights: Option<std::path::PathBuf>,
        /// Evaluate on the first N test images (default: the first of each class, as the paper).
        #[arg(long, value_parser = at_least_one)]
        images: Option<usize>,
        /// Output folder (default results/<dataset>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Query-free: keep trained shadows in this folder and reuse them when the same settings come again.
        #[arg(long)]
        shadow_cache: Option<std::path::PathBuf>,
        /// One JSON line per cell.
        #[arg(long)]
        json: bool,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Go on where an interrupted run stopped: reuse the finished cells it left in OUT/cells/ (only those of the same code, target, images, data and seed).
        #[arg(long)]
        resume: bool,
    },
    /// Print the CPU's SIMD level, the thread count and the CUDA status.
    Info,
    /// Time the standard workloads (training steps and white-box attack steps).
    Bench {
        /// One JSON object per line: {"workload", "s_per_step", ...}.
        #[arg(long)]
        json: bool,
        /// Shorter timing (a few steps per workload).
        #[arg(long)]
        quick: bool,
        /// Only workloads whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// After timing, run N more steps with every kernel launch timed on the GPU, and show where a step's GPU time goes (per kernel and grid). GPU only.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20")]
        profile: Option<usize>,
    },
}

/// A count flag that must be at least 1 (0 images, epochs or iterations
/// would run nothing and still write results).
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The most query-free shadows one attack may train (each trains on its
/// own thread, at the same time as the others).
const MAX_SHADOWS: usize = 64;

/// `--shadows`: 1 to [`MAX_SHADOWS`].
fn shadow_count(s: &str) -> std::result::Result<usize, String> {
    let n = at_least_one(s)?;
    if n > MAX_SHADOWS {
        return Err(format!("at most {MAX_SHADOWS} shadows are trained at once"));
    }
    Ok(n)
}

/// Refuses an output path that is an existing folder where a file is
/// written (or a file where a folder is), before any work is done.
///
/// A file output must be a regular file or not exist yet: results are
/// written to a temporary file renamed over the path, which would replace
/// a device or a FIFO (`--out /dev/null` as root) with a plain file.
fn check_out(flag: &str, path: &std::path::Path, want_dir: bool) -> Result<()> {
    let bad = |what: &str| {
        Err(Error::invalid(
            "output",
            format!("{flag} {} must be {what}", path.display()),
        ))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if parent.exists() && !parent.is_dir() {
            return bad(&format!(
                "inside a folder ({} is not one)",
                parent.display()
            ));
        }
    }
    if want_dir {
        if path.exists() && !path.is_dir() {
            return bad("a folder (it is a file)");
        }
    } else if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
        return bad("a file path, not a folder");
    } else if path.exists() && !path.is_file() {
        return bad("a regular file (it is a device, a FIFO or a socket)");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train {
            model,
            dataset,
            epochs,
            batch,
            lr,
            lr_step,
            lr_gamma,
            swa_from,
            swa_lr,
            seed,
            out,
            resume,
            limit,
            augment,
            json,
        } => {
            check_out("--out", &out, false)?;
            check_out(
                "--out's checkpoint",
                &cli_train::checkpoint_path(&out),
                false,
            )?;
            let cfg = TrainConfig {
                epochs,
                batch,
                lr,
                lr_step,
                lr_gamma,
                seed,
                progress: !json,
                swa_from,
                swa_lr,
                ..TrainConfig::default()
            };
            let args = TrainArgs {
                model: ModelChoice::parse(&model)?,
                dataset,
                data: cli.data,
                cfg,
                out,
                resume,
                limit,
                augment,
                // With --json, stdout carries the summary alone.
                log_to_stderr: json,
            };
            let summary = cli_train::train(&args)?;
            println!(
                "{}",
                if json {
                    summary.to_string()
                } else {
                    serde_json::to_string_pretty(&summary).map_err(|e| Error::Msg(e.to_string()))?
                }
            );
            Ok(())
        }
        Cmd::Eval {
            model,
            weights,
            dataset,
            train_split,
            json,
        } => {
            let split = if train_split {
                Split::Train
            } else {
                Split::Test
            };
            let r = cli_train::eval(
                &ModelChoice::parse(&model)?,
                &weights,
                &dataset,
                cli.data.as_deref(),
                split,
            )?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "accuracy {:.2}% on {} {} images ({})",
                    100.0 * r["accuracy"].as_f64().unwrap_or(f64::NAN),
                    r["images"],
                    dataset,
                    split.as_str()
                );
            }
            Ok(())
        }
        Cmd::Attack {
            attack,
            dataset,
            split,
            weights,
            images,
            setting,
            iterations,
            lr,
            lambda_tv,
            lambda_l2,
            shadows,
            train_epochs,
            train_lr,
            train_eps,
            moment_weight,
            moment_projections,
            noise,
            shadow_cache,
            out,
            gif,
            json,
            seed,
        } => {
            let black_box_random = matches!(attack.as_str(), "blackbox" | "black-box")
                && setting.as_deref() == Some("random");
            if let Some(m) = noise.filter(|_| !black_box_random) {
                return Err(Error::invalid(
                    "--noise",
                    format!(
                        "`{m}` only applies to `attack blackbox --setting random`, not `attack {attack}` with setting {}",
                        setting.as_deref().unwrap_or("(default)")
                    ),
                ));
            }
            for (flag, v) in [("--train-lr", train_lr), ("--train-eps", train_eps)] {
                if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                    return Err(Error::invalid(
                        flag,
                        format!("must be a positive number, got {v}"),
                    ));
                }
            }
            check_out("--out", &out, true)?;
            if let Some(g) = &gif {
                check_out("--gif", g, false)?;
                if attack != "whitebox" && attack != "white-box" {
                    return Err(Error::invalid(
                        "--gif",
                        format!("only `attack whitebox` writes a GIF, not `attack {attack}`"),
                    ));
                }
            }
            if let Some(c) = &shadow_cache {
                check_out("--shadow-cache", c, true)?;
            }
            // Everything is checked before setup, which may train a missing
            // target first (hours for the CIFAR CNN).
            let Some(kind) = reproduce::model_for(&dataset) else {
                return Err(Error::UnknownName {
                    kind: "dataset for attack",
                    name: dataset,
                    expected: "mnist, cifar10".into(),
                });
            };
            kind.build(0)?.index_of(&split)?;
            let (name, setting) = match attack.as_str() {
                "whitebox" | "white-box" => {
                    if let Some(st) = &setting {
                        return Err(Error::invalid(
                            "--setting",
                            format!("`{st}`: the white-box attack has no settings"),
                        ));
                    }
                    ("white-box", "-".to_string())
                }
                "blackbox" | "black-box" => {
                    let st = setting.unwrap_or_else(|| "same-dist".into());
                    st.parse::<splitinv::attacks::blackbox::DataSetting>()?;
                    ("black-box", st)
                }
                "queryfree" | "query-free" => {
                    let st = setting.unwrap_or_else(|| "diff-set-same-net".into());
                    st.parse::<splitinv::attacks::queryfree::ShadowSetting>()?;
                    ("query-free", st)
                }
                _ => {
                    return Err(Error::UnknownName {
                        kind: "attack",
                        name: attack,
                        expected: "whitebox, blackbox, queryfree".into(),
                    })
                }
            };
            if let Some(w) = moment_weight.filter(|w| !(*w >= 0.0 && w.is_finite())) {
                return Err(Error::invalid(
                    "--moment-weight",
                    format!("must be a finite number >= 0, got {w}"),
                ));
            }
            let max_k = splitinv::attacks::queryfree::MAX_PROJECTIONS;
            if let Some(k) = moment_projections.filter(|k| *k > max_k) {
                return Err(Error::invalid(
                    "--moment-projections",
                    format!("at most {max_k} channel mixtures, got {k}"),
                ));
            }
            // The white-box flags tune the white-box attack and the query-free
            // attack's inversion of its shadow alike.
            let mut cfg = if name == "query-free" {
                reproduce::queryfree_defaults(kind, &split)
            } else {
                reproduce::whitebox_defaults(kind, &split)
            };
            if let Some(i) = iterations {
                cfg.iterations = i;
            }
            if let Some(l) = lambda_tv {
                cfg.lambda_tv = l;
            }
            if let Some(l) = lambda_l2 {
                cfg.lambda_l2 = l;
            }
            if let Some(lr) = lr {
                if let AttackOptimizer::Adam { lr: ref mut a, .. } = cfg.optimizer {
                    *a = lr;
                }
            }
            cfg.validate()?;
            let mut s = reproduce::setup(
                &dataset,
                weights.as_deref(),
                cli.data.as_deref(),
                images,
                None,
            )?;
            s.shadow_cache = shadow_cache;
            cfg.seed = seed;
            let (cell, o) = if name == "white-box" {
                let mut frames = Vec::new();
                let every = (cfg.iterations / 40).max(1);
                let o = experiment::run_whitebox(
                    &s.target,
                    &split,
                    &s.originals,
                    &cfg,
                    gif.as_ref().map(|_| (&mut frames, every)),
                )?;
                if let Some(g) = &gif {
                    let rows: Vec<Vec<Tensor>> = frames
                        .into_iter()
                        .map(|f| vec![s.originals.clone(), f])
                        .collect();
                    report::save_gif(g, &rows, 3, 100)?;
                    eprintln!("wrote {}", g.display());
                }
                (
                    reproduce::Cell::from_outcome(&dataset, name, "-", &split, &o),
                    o,
                )
            } else {
                let over = reproduce::TrainOverride {
                    epochs: train_epochs,
                    lr: train_lr,
                    eps: train_eps,
                    moment_weight,
                    moment_projections,
                    noise,
                };
                reproduce::run_cell(
                    &s,
                    name,
                    &setting,
                    &split,
                    seed,
                    s.train.len(),
                    Some(&over),
                    (name == "query-free").then_some(&cfg),
                    shadows,
                )?
            };
            let stem = format!("{name}_{setting}_{split}");
            let file = out.join(format!("{stem}.png"));
            report::save_grid(&file, &[&s.originals, &o.recon], 3)?;
            let [json_file, csv_file] = cell.save_files(&out, &stem, &o.scores, &s.attacked)?;
            if json {
                println!("{}", cell.json_line());
            } else {
                println!("{name} {setting} at {split}: PSNR {:.2} ± {:.2} dB, SSIM (paper protocol) {:.4}, SSIM (standard) {:.4}; paper: {} / {} ; {:.1} s", cell.psnr, cell.summary.psnr.ci95, cell.ssim_paper, cell.ssim_standard, cell.paper_psnr.map(|v| format!("{v:.2}")).unwrap_or("—".into()), cell.paper_ssim.map(|v| format!("{v:.4}")).unwrap_or("—".into()), cell.seconds);
                println!(
                    "wrote {} (top: originals, bottom: reconstructions), {} and {} (per-image scores)",
                    file.display(),
                    json_file.display(),
                    csv_file.display()
                );
            }
            Ok(())
        }
        Cmd::Reproduce {
            dataset,
            weights,
            images,
            out,
            shadow_cache,
            json,
            seed,
            resume,
        } => {
            let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("results/{dataset}")));
            check_out("--out", &out, true)?;
            if let Some(c) = &shadow_cache {
                check_out("--shadow-cache", c, true)?;
            }
            let mut s = reproduce::setup(
                &dataset,
                weights.as_deref(),
                cli.data.as_deref(),
                images,
                None,
            )?;
            s.shadow_cache = shadow_cache;
            let cells = reproduce::reproduce(&s, &out, json, seed, resume)?;
            if !json {
                let beaten = cells
                    .iter()
                    .filter(|c| c.beats_paper() == Some(true))
                    .count();
                let total = cells.iter().filter(|c| c.beats_paper().is_some()).count();
                println!("{beaten}/{total} paper cells matched or beaten; tables in {}/results.{{md,csv,json}}", out.display());
            }
            Ok(())
        }
        Cmd::Demo { out, seed } => {
            check_out("--out", &out, true)?;
            splitinv::demo::run(&out, seed).map(|_| ())
        }
        Cmd::Info => {
            println!("splitinv {}", env!("CARGO_PKG_VERSION"));
            println!("device:   {}", splitinv::device::default_device());
            let levels: Vec<String> = simd::available_levels()
                .iter()
                .map(|l| l.to_string())
                .collect();
            println!(
                "cpu simd: {} (available: {})",
                simd::level(),
                levels.join(", ")
            );
            println!("threads:  {}", threads::num_threads());
            println!("cuda:     {}", splitinv::cuda::info());
            println!(
                "conv math: {} on a GPU (--conv-math fp32|tf32)",
                splitinv::cuda::conv_math()?
            );
            Ok(())
        }
        Cmd::Bench {
            json,
            quick,
            filter,
            profile,
        } => {
            let on_gpu = splitinv::device::default_device() != splitinv::Device::Cpu;
            bench::check_profile_steps(profile, on_gpu)?;
            let workloads: Vec<_> = bench::standard_workloads()
                .into_iter()
                .filter(|w| on_gpu || !w.gpu_only)
                .filter(|w| filter.as_deref().is_none_or(|f| w.name.contains(f)))
                .collect();
            if workloads.is_empty() {
                return Err(Error::invalid(
                    "bench",
                    format!(
                        "no workload matches --filter {:?}",
                        filter.unwrap_or_default()
                    ),
                ));
            }
            if !json {
                if on_gpu {
                    println!("GPU convolutions: {}", splitinv::cuda::conv_math()?);
                }
                println!(
                    "{:<28} {:>12} {:>12} {:>7} {:>12} {:>12}",
                    "workload", "ms/step", "images/s", "steps", "GPU peak", "act+grad"
                );
            }
            // A workload that fails is reported and the rest still run, so
            // one broken kernel does not hide every other measurement.
            let mut failed = Vec::new();
            for w in &workloads {
                let r = match bench::run(w, quick, profile) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("bench {}: {e}", w.name);
                        failed.push(w.name.clone());
                        continue;
                    }
                };
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&r).map_err(|e| Error::Msg(e.to_string()))?
                    );
                } else {
                    let fmt = splitinv::cuda::format_bytes;
                    println!(
                        "{:<28} {:>12.4} {:>12.1} {:>7} {:>12} {:>12}",
                        r.workload,
                        r.s_per_step * 1e3,
                        r.images_per_s,
                        r.steps,
                        r.peak_gpu_bytes.map_or("-".into(), fmt),
                        fmt(2 * r.activation_bytes)
                    );
                    if let (Some(kernel_s), Some(rows)) = (r.kernel_s_per_step, &r.kernels) {
                        let launches: f64 = rows.iter().map(|k| k.launches_per_step).sum();
                        println!(
                            "  GPU kernel time {:.4} ms of the {:.4} ms step ({launches:.0} launches per step, over {} steps):",
                            kernel_s * 1e3,
                            r.s_per_step * 1e3,
                            profile.unwrap_or(0)
                        );
                        println!(
                            "{}",
                            splitinv::cuda::profile::rows_table(rows, 15).to_markdown()
                        );
                    }
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Error::Msg(format!(
                    "{} of {} workloads failed: {}",
                    failed.len(),
                    workloads.len(),
                    failed.join(", ")
                )))
            }
        }
    }
}

/// Applies `--gpu-mem` and `--device`: the budget first (so the device
/// opens under it), then the device every command puts its models and
/// batches on.
fn setup_device(cli: &Cli) -> Result<splitinv::Device> {
    if let Some(mem) = &cli.gpu_mem {
        // The flag, not the parser, is what the user knows by name.
        let bytes = splitinv::cuda::parse_bytes(mem).map_err(|e| match e {
            Error::InvalidArgument { msg, .. } => Error::invalid("--gpu-mem", msg),
            e => e,
        })?;
        if bytes == 0 {
            return Err(Error::invalid(
                "--gpu-mem",
                "the budget must be more than 0 bytes",
            ));
        }
        splitinv::cuda::set_memory_budget(Some(bytes));
    }
    if let Some(m) = &cli.conv_math {
        splitinv::cuda::set_conv_math(m.parse()?);
    }
    // A bad SPLITINV_CONV_MATH (or benchmark knob SPLITINV_CONV_TILE,
    // SPLITINV_CONV_BIG_MIN_BLOCKS) stops the command here, on any device,
    // not at its first conv on a GPU.
    splitinv::cuda::conv_math()?;
    splitinv::cuda::launch::conv_tile_override()?;
    splitinv::cuda::launch::big_tile_min_blocks()?;
    let (dev, notice) = splitinv::cuda::select_device(&cli.device)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    splitinv::device::set_default_device(dev);
    Ok(dev)
}

/// After a command that ran on a GPU: its peak memory (from the pool), and
/// how often the host waited for the device (see `splitinv::step_monitor`).
fn report_gpu_memory(dev: splitinv::Device) {
    if let splitinv::Device::Cuda(n) = dev {
        if let Ok(d) = splitinv::cuda::device(n) {
            let _ = d.synchronize();
            eprintln!("cuda:{n} {}", d.memory_stats());
            eprintln!("cuda:{n} host waits for the device: {}", d.host_waits());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The command itself runs on a worker of the kernel thread pool: every
    // parallel kernel it calls then starts on the current thread, instead of
    // waking a pool thread and putting the main thread to sleep (a context
    // switch per op, which dominated the small MNIST steps).
    let result = simd::check_env()
        .and_then(|()| threads::init(cli.threads))
        .and_then(|()| setup_device(&cli))
        .and_then(|dev| {
            let r = rayon::scope(|_| run(cli));
            report_gpu_memory(dev);
            r
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
