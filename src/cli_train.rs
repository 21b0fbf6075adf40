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
    say!(
        "training on {} ({} images), testing on {} images",
        train.source,
        train.len(),
        test.len()
    );
    let norm = args.model.normalization();
    let mut net = args.model.build(args.cfg.seed)?;
    let ckpt = checkpoint_path(&args.out);
    let mut resume = TrainState::default();
    if args.resume {
        if ckpt.is_file() {
            resume = checkpoint::load(&mut net, &ckpt)?;
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
    let augment = args
        .augment
        .unwrap_or(train.channels == 3)
        .then(Augment::cifar);
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
            checkpoint::save(net, state, &ckpt)
        },
    )?;
    let accuracy = epochs.last().and_then(|e| e.model_test_accuracy());
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
