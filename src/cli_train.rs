//! `splitinv train` and `splitinv eval`: training and evaluating target
//! classifiers, with atomic per-epoch checkpoints and `--resume`.

use crate::attacks::whitebox::Normalization;
use crate::checkpoint::{self, TrainState};
use crate::data::transforms::Augment;
use crate::data::{self, Dataset, DatasetName, Split};
use crate::error::{Error, Result};
use crate::experiment;
use crate::models::spec::NetSpec;
use crate::models::ModelKind;
use crate::nn::{weights, Sequential};
use crate::train::TrainConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A model chosen on the command line: a built-in name or a JSON spec file.
#[derive(Clone, Debug)]
pub enum ModelChoice {
    /// `lenet` or `cifar10cnn`.
    Builtin(ModelKind),
    /// A spec file.
    Spec(Box<NetSpec>),
}

impl ModelChoice {
    /// Parses `lenet`, `cifar10cnn` or a path to a `.json` spec.
    pub fn parse(s: &str) -> Result<Self> {
        if s.ends_with(".json") || Path::new(s).is_file() {
            return Ok(ModelChoice::Spec(Box::new(NetSpec::from_file(Path::new(
                s,
            ))?)));
        }
        s.parse::<ModelKind>()
            .map(ModelChoice::Builtin)
            .map_err(|_| Error::UnknownName {
                kind: "model",
                name: s.into(),
                expected: "lenet, cifar10cnn, or a path to a JSON net spec".into(),
            })
    }

    /// Builds the net with seeded random weights.
    pub fn build(&self, seed: u64) -> Result<Sequential> {
        match self {
            ModelChoice::Builtin(k) => k.build(seed),
            ModelChoice::Spec(s) => s.build(seed),
        }
    }

    /// The input normalisation.
    pub fn normalization(&self) -> Normalization {
        match self {
            ModelChoice::Builtin(k) => {
                let (m, s) = k.normalization();
                Normalization::new(m, s)
            }
            ModelChoice::Spec(s) => Normalization::new(&s.normalization.mean, &s.normalization.std),
        }
    }

    /// Classes the net tells apart: its output's width for one image. A
    /// spec's comes from its size walk, so its weights are not allocated
    /// once more for this.
    pub fn num_classes(&self) -> Result<usize> {
        let dims = match self {
            ModelChoice::Builtin(k) => {
                let [c, h, w] = k.input_chw();
                k.build(0)?.output_shape(&[1, c, h, w])?[1..].to_vec()
            }
            ModelChoice::Spec(s) => s.output_dims()?.unwrap_or_default(),
        };
        match dims[..] {
            [classes] => Ok(classes),
            _ => Err(Error::invalid(
                "model",
                format!(
                    "a classifier's output for one image must be [classes], \
                     this model's is {dims:?} (end it with a flatten and a linear layer)"
                ),
            )),
        }
    }

    /// One image's shape.
    pub fn input_chw(&self) -> [usize; 3] {
        match self {
            ModelChoice::Builtin(k) => k.input_chw(),
            ModelChoice::Spec(s) => s.input,
        }
    }
}

/// Loads a dataset split and checks its image shape fits the model.
pub fn load_for(
    model: &ModelChoice,
    name: &str,
    split: Split,
    root: Option<&Path>,
    limit: Option<usize>,
) -> Result<Dataset> {
    let name: DatasetName = name.parse()?;
    let ds = data::load(&name, split, data::data_root(root).as_deref(), limit)?;
    let want = model.input_chw();
    if ds.image_dims() != want {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{name} images are {:?} (C, H, W) but the model expects {want:?}",
                ds.image_dims()
            ),
        ));
    }
    // A folder dataset numbers its classes in sorted order, so a split with
    // a class missing or added shifts every label after it; the model's
    // outputs must be the dataset's classes.
    let outputs = model.num_classes()?;
    if !ds.classes.is_empty() && ds.classes.len() != outputs {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{name} ({} split) has {} classes ({}) but the model has {outputs} outputs",
                split.as_str(),
                ds.classes.len(),
                ds.classes.join(", ")
            ),
        ));
    }
    Ok(ds)
}

/// Options of `splitinv train`.
pub struct TrainArgs {
    /// The model.
    pub model: ModelChoice,
    /// Dataset name.
    pub dataset: String,
    /// Data root.
    pub data: Option<PathBuf>,
    /// Training settings.
    pub cfg: TrainConfig,
    /// Output weights.
    pub out: PathBuf,
    /// Continue from the checkpoint.
    pub resume: bool,
    /// Use at most this many training images.
    pub limit: Option<usize>,
    /// Flip + small affine augmentation (default on for 3-channel data).
    pub augment: Option<bool>,
    /// Progress lines go to stderr instead of stdout (when the caller's
    /// stdout carries JSON, as in `reproduce --json`).
    pub log_to_stderr: bool,
}

/// The checkpoint path for an output file: `<out>.ckpt`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// Runs `splitinv train`; returns the JSON summary.
pub fn train(args: &TrainArgs) -> Result<serde_json::Value> {
    let t0 = std::time::Instant::now();
    macro_rules! say {
        ($($a:tt)*) => {
            if args.log_to_stderr {
                eprintln!($($a)*)
            } else {
                println!($($a)*)
            }
        };
    }
    let train = load_for(
        &args.model,
        &args.dataset,
        Split::Train,
        args.data.as_deref(),
        args.limit,
    )?;
    let test = load_for(
        &args.model,
        &args.dataset,
        Split::Test,
        args.data.as_deref(),
        None,
    )?;
    if !train.classes.is_empty() && !test.classes.is_empty() && train.classes != test.classes {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{}: the training split's classes ({}) are not the test split's ({}); \
                 labels are the classes' positions, so they must be the same list",
                args.dataset,
                train.classes.join(", "),
                test.classes.join(", ")
            ),
        ));
    }
    say!(
        "training on {} ({} images), testing on {} images",
        train.source,
        train.len(),
        test.len()
    );
    // On a GPU the pool's budget reports an allocation it cannot serve.
    let on_cpu = crate::device::default_device() == crate::device::Device::Cpu;
    check_training_memory(
        &args.model,
        args.cfg.batch,
        train.len(),
        on_cpu.then(available_memory).flatten(),
    )?;
    let norm = args.model.normalization();
    let mut net = args.model.build(args.cfg.seed)?;
    let ckpt = checkpoint_path(&args.out);
    let augment = args
        .augment
        .unwrap_or(train.channels == 3)
        .then(Augment::cifar);
    let run = run_settings(args, augment.is_some());
    let mut resume = TrainState::default();
    if args.resume {
        if ckpt.is_file() {
            resume = checkpoint::load(&mut net, &ckpt)?;
            check_same_run(&ckpt, resume.run.as_deref(), &run, &mut |m| say!("{m}"))?;
            // AMSGrad (always on here) needs each parameter's running
            // maximum; say which one is missing, and where.
            let missing_max = resume
                .adam
                .iter()
                .flatten()
                .zip(net.named_params())
                .find(|(m, _)| args.cfg.amsgrad && m.as_ref().is_some_and(|m| m.vmax.is_none()));
            if let Some((_, (name, _))) = missing_max {
                return Err(Error::BadData {
                    path: ckpt.clone(),
                    msg: format!(
                        "AMSGrad is on, but the checkpoint has no running maximum \
                         (__adam_vmax__.{name}) for '{name}'"
                    ),
                });
            }
            if resume.epochs_done > args.cfg.epochs {
                return Err(Error::BadData {
                    path: ckpt.clone(),
                    msg: format!(
                        "the checkpoint is after epoch {}, beyond --epochs {}; \
                         ask for at least {} epochs to resume it",
                        resume.epochs_done, args.cfg.epochs, resume.epochs_done
                    ),
                });
            }
            say!(
                "resuming from {} after epoch {}{}{}",
                ckpt.display(),
                resume.epochs_done,
                if resume.adam.is_some() {
                    ""
                } else {
                    " (the checkpoint has no optimiser state: Adam starts with fresh moments)"
                },
                match &resume.swa {
                    Some(s) => format!(", {} snapshots averaged so far", s.count),
                    None => String::new(),
                }
            );
        } else {
            say!(
                "--resume: no checkpoint at {}, starting from scratch",
                ckpt.display()
            );
        }
    }
    let start = resume.epochs_done;
    let cfg = args.cfg.clone();
    let epochs = experiment::train_classifier(
        &mut net,
        &train,
        Some(&test),
        &norm,
        &cfg,
        augment,
        resume,
        &mut |net, e, state| {
            let swa = match e.swa_test_accuracy {
                Some(a) => format!(
                    "  average of {}: {:.2}%",
                    state.swa.as_ref().map_or(0, |s| s.count),
                    100.0 * a
                ),
                None => String::new(),
            };
            say!(
            "epoch {:>3}/{}: loss {:.4}  train acc {:.2}%  test acc {:.2}%{swa}  {:.0} img/s  lr {:.2e}",
            e.stats.epoch + 1,
            cfg.epochs,
            e.stats.loss,
            100.0 * e.train_accuracy,
            100.0 * e.test_accuracy.unwrap_or(f64::NAN),
            e.stats.images_per_s,
            e.stats.lr
        );
            let state = TrainState {
                run: Some(run.to_string()),
                ..state.clone()
            };
            checkpoint::save(net, &state, &ckpt)
        },
    )?;
    let accuracy = match epochs.last() {
        Some(e) => e.model_test_accuracy(),
        // A resume of a run that had done all its epochs (and was stopped
        // before it saved): score the weights it saves.
        None => Some(experiment::evaluate(&net, &test, &norm, 256)?),
    };
    let meta = HashMap::from([
        ("dataset".to_string(), args.dataset.clone()),
        (
            "test_accuracy".to_string(),
            accuracy.map(|a| format!("{a:.4}")).unwrap_or_default(),
        ),
        ("epochs".to_string(), cfg.epochs.to_string()),
    ]);
    weights::save(&net, &args.out, Some(meta))?;
    let _ = std::fs::remove_file(&ckpt);
    let summary = serde_json::json!({
        "out": args.out.display().to_string(),
        "dataset": args.dataset,
        "train_images": train.len(),
        "test_images": test.len(),
        "test_accuracy": accuracy,
        "epochs": epochs,
        "config": cfg,
        "resumed_from_epoch": start,
        "wall_seconds": t0.elapsed().as_secs_f64(),
    });
    Ok(summary)
}

/// Refuses to train on the CPU when one batch's activations and their
/// gradients (4 bytes each, kept for the backward pass) would need more
/// than `available` bytes: the allocation would abort the process mid-run
/// instead of failing. A spec's size limit is per image; this is the same
/// per batch, and the built-in nets get it too (the CIFAR CNN needs 3.5
/// MiB per image, so `--batch 50000` would need 171 GiB). `available` is
/// `None` where there is nothing to check against (on a GPU, whose pool
/// reports an allocation it cannot serve as an error of its own).
fn check_training_memory(
    model: &ModelChoice,
    batch: usize,
    train_len: usize,
    available: Option<u64>,
) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    // A batch never holds more than the training set.
    let images = batch.min(train_len);
    let (name, per_image) = match model {
        ModelChoice::Spec(spec) => (spec.name.clone(), spec.activation_elements()?),
        ModelChoice::Builtin(k) => (
            k.name().to_string(),
            k.build(0)?.activation_elements(&k.input_chw())?,
        ),
    };
    let need = per_image as u128 * images as u128 * 4 * 2;
    if need > u128::from(available) {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        let images = if images < batch {
            format!(" ({images} images, the whole training set)")
        } else {
            String::new()
        };
        return Err(Error::invalid(
            "train",
            format!(
                "{name} at --batch {batch}{images} needs about {:.1} GiB for its activations and \
                 their gradients, more than the {:.1} GiB of memory available; lower --batch",
                gib(need),
                gib(u128::from(available))
            ),
        ));
    }
    Ok(())
}

/// The memory the OS says is available for new allocations (Linux's
/// `MemAvailable`), or `None` where that cannot be read.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The settings a resumed run must share with the run that wrote its
/// checkpoint: the model and everything that shapes the training except
/// `--epochs` (a run may be extended) and the progress display.
fn run_settings(args: &TrainArgs, augment: bool) -> serde_json::Value {
    let c = &args.cfg;
    // A spec with the same weight shapes can still be another net (other
    // activations or normalisation): the whole spec is compared.
    let model = match &args.model {
        ModelChoice::Builtin(k) => serde_json::json!(format!("{k:?}")),
        ModelChoice::Spec(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
    };
    serde_json::json!({
        "model": model,
        "dataset": args.dataset,
        "limit": args.limit,
        "augment": augment,
        "batch": c.batch,
        "lr": c.lr,
        "eps": c.eps,
        "amsgrad": c.amsgrad,
        "lr_step": c.lr_step,
        "lr_gamma": c.lr_gamma,
        "seed": c.seed,
        "swa_from": c.swa_from,
        "swa_lr": c.swa_lr,
    })
}

/// Refuses to resume `ckpt` when the run that wrote it had other settings
/// than `now`, naming each one that differs. A checkpoint that predates
/// the record is trusted, with a notice through `say`.
fn check_same_run(
    ckpt: &Path,
    saved: Option<&str>,
    now: &serde_json::Value,
    say: &mut dyn FnMut(String),
) -> Result<()> {
    let Some(saved) = saved else {
        say(format!(
            "note: {} does not record its run's settings; assuming they are these",
            ckpt.display()
        ));
        return Ok(());
    };
    let bad = |msg: String| Error::BadData {
        path: ckpt.to_path_buf(),
        msg,
    };
    let saved: serde_json::Value = serde_json::from_str(saved)
        .map_err(|e| bad(format!("metadata `run` is not a JSON object: {e}")))?;
    let (Some(then), Some(now)) = (saved.as_object(), now.as_object()) else {
        return Err(bad("metadata `run` is not a JSON object".into()));
    };
    let null = serde_json::Value::Null;
    let differ: Vec<String> = now
        .iter()
        .filter(|(k, v)| then.get(*k).unwrap_or(&null) != *v)
        .map(|(k, v)| format!("{k} {} there, {v} now", then.get(k).unwrap_or(&null)))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(bad(format!(
        "--resume: the checkpoint was written by a run with other settings ({}); \
         resume with the same settings, or start over without --resume",
        differ.join("; ")
    )))
}

/// Runs `splitinv eval`: test accuracy of `weights` on a dataset split.
pub fn eval(
    model: &ModelChoice,
    weights_path: &Path,
    dataset: &str,
    data_dir: Option<&Path>,
    split: Split,
) -> Result<serde_json::Value> {
    let mut net = model.build(0)?;
    weights::load(&mut net, weights_path)?;
    net.to_device(crate::device::default_device())?;
    let ds = load_for(model, dataset, split, data_dir, None)?;
    let acc = experiment::evaluate(&net, &ds, &model.normalization(), 256)?;
    Ok(
        serde_json::json!({ "weights": weights_path.display().to_string(), "dataset": dataset, "split": split.as_str(), "images": ds.len(), "accuracy": acc }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;

    /// A built-in net's batch is checked against the memory as a spec's
    /// is: LeNet keeps 14,130 floats per image (784 input pixels; conv1
    /// and its ReLU 4,608 each, pool1 1,152; conv2 and its ReLU 1,024
    /// each; pool2 and flatten 256 each; fc1 and its ReLU 120 each, fc2
    /// and its ReLU 84 each, fc3 10), twice over with the gradients, 4
    /// bytes each.
    #[test]
    fn a_built_in_net_batch_that_cannot_fit_is_refused() {
        let lenet = ModelChoice::Builtin(ModelKind::Lenet);
        let per_image = ModelKind::Lenet
            .build(0)
            .unwrap()
            .activation_elements(&[1, 28, 28])
            .unwrap();
        assert_eq!(
            per_image,
            784 + 4608 + 4608 + 1152 + 1024 + 1024 + 256 + 256 + 120 * 2 + 84 * 2 + 10
        );
        let need = (per_image * 1000 * 8) as u64;
        let e = check_training_memory(&lenet, 1000, 60_000, Some(need - 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lenet at --batch 1000 needs about 0.1 GiB") && e.contains("lower --batch"),
            "{e}"
        );
        assert!(check_training_memory(&lenet, 1000, 60_000, Some(need)).is_ok());
        // A batch larger than the training set holds the training set.
        assert!(check_training_memory(&lenet, 1_000_000, 1000, Some(need)).is_ok());
        let e = check_training_memory(&lenet, 1_000_000, 1000, Some(need - 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lenet at --batch 1000000 (1000 images, the whole training set) needs"),
            "{e}"
        );
        // Nothing to check against (a GPU, or no /proc/meminfo).
        assert!(check_training_memory(&lenet, usize::MAX / 8, usize::MAX, None).is_ok());
    }
}
