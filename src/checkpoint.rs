//! Training checkpoints: everything `splitinv train --resume` needs to
//! continue a run as if it had never stopped.
//!
//! A checkpoint is one safetensors file. The model's parameters keep their
//! PyTorch names (`conv1.weight`, …); the optimiser's moments and the
//! running weight average ride along under reserved prefixes:
//!
//! | tensor                      | what                                   |
//! |-----------------------------|----------------------------------------|
//! | `<param>`                   | the weights after the last epoch       |
//! | `__adam_m__.<param>`        | Adam's first moment                    |
//! | `__adam_v__.<param>`        | Adam's second moment                   |
//! | `__adam_vmax__.<param>`     | AMSGrad's running maximum              |
//! | `__swa__.<param>`           | the running average of the weights     |
//!
//! and the metadata holds `epochs_done`, `adam_step.<param>`, `swa_count`
//! and `run` (the run's settings, which `--resume` must repeat). A
//! checkpoint without the optimiser tensors (an older file, or one made
//! from a plain weights file by adding `epochs_done`) still resumes; Adam
//! then starts from fresh moments, and the caller says so.

use crate::error::{Error, Result};
use crate::nn::weights::{self, NamedValues};
use crate::nn::Sequential;
use crate::optim::AdamMoments;
use crate::train::SwaAverage;
use std::collections::HashMap;
use std::path::Path;

const ADAM_M: &str = "__adam_m__.";
const ADAM_V: &str = "__adam_v__.";
const ADAM_VMAX: &str = "__adam_vmax__.";
const SWA: &str = "__swa__.";

/// The state of a training run after some epoch, besides the weights.
#[derive(Clone, Debug, Default)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Adam's per-parameter state, in parameter order (`None`: not saved).
    pub adam: Option<Vec<Option<AdamMoments>>>,
    /// The running weight average, once averaging has started.
    pub swa: Option<SwaAverage>,
    /// The settings of the run that wrote it (a JSON object; `None` in
    /// checkpoints from before they were recorded), so a resume with other
    /// settings is refused instead of silently mixing two runs.
    pub run: Option<String>,
}

/// The largest epoch, step or snapshot count a checkpoint may hold: far
/// beyond any real run (2⁴⁰ steps), and far enough below the counters'
/// own limits that adding to them can never overflow.
const MAX_COUNT: u64 = 1 << 40;

fn is_reserved(name: &str) -> bool {
    name.starts_with("__")
}

/// Writes `net`'s weights and `state` to `path`, atomically.
pub fn save(net: &Sequential, state: &TrainState, path: &Path) -> Result<()> {
    let mut tensors: Vec<NamedValues> = weights::param_values(net)?;
    // Names and shapes of the parameters, which the extra tensors share.
    let params: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    let mut meta = HashMap::from([("epochs_done".to_string(), state.epochs_done.to_string())]);
    if let Some(adam) = &state.adam {
        for ((name, shape), m) in params.iter().zip(adam) {
            let Some(m) = m else { continue };
            meta.insert(format!("adam_step.{name}"), m.step.to_string());
            tensors.push((format!("{ADAM_M}{name}"), shape.clone(), m.m.clone()));
            tensors.push((format!("{ADAM_V}{name}"), shape.clone(), m.v.clone()));
            if let Some(vmax) = &m.vmax {
                tensors.push((format!("{ADAM_VMAX}{name}"), shape.clone(), vmax.clone()));
            }
        }
    }
    if let Some(run) = &state.run {
        meta.insert("run".into(), run.clone());
    }
    if let Some(swa) = &state.swa {
        meta.insert("swa_count".into(), swa.count.to_string());
        for ((name, shape), avg) in params.iter().zip(&swa.values) {
            tensors.push((format!("{SWA}{name}"), shape.clone(), avg.clone()));
        }
    }
    weights::write_tensors(path, &tensors, Some(meta))
}

/// Loads a checkpoint into `net` and returns the rest of its state. The
/// weights must match the model exactly (the error lists mismatches); the
/// optimiser and average tensors must be complete or absent.
pub fn load(net: &mut Sequential, path: &Path) -> Result<TrainState> {
    let (tensors, meta) = weights::read_tensors(path)?;
    let bad = |msg: String| Error::BadData {
        path: path.to_path_buf(),
        msg,
    };
    let epochs_done: usize = match meta.get("epochs_done") {
        None => return Err(bad("checkpoint has no 'epochs_done' metadata".into())),
        Some(v) => v
            .parse()
            .ok()
            .filter(|&e: &usize| e as u64 <= MAX_COUNT)
            .ok_or_else(|| {
                bad(format!(
                    "metadata epochs_done = '{v}' is not an epoch count"
                ))
            })?,
    };
    let mut extras: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for (name, shape, values) in tensors.iter().filter(|(n, _, _)| is_reserved(n)) {
        extras.insert(name.clone(), (shape.clone(), values.clone()));
    }
    weights::load_values(net, path, tensors, is_reserved)?;
    let params: Vec<(String, Vec<usize>)> = net
        .named_params()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let has_adam = params
        .iter()
        .any(|(n, _)| extras.contains_key(&format!("{ADAM_M}{n}")));
    // Takes the state tensor `key` out of `extras`, checking it has its
    // parameter's shape `want` (a moment with another shape, even with the
    // same element count, is another model's).
    let mut take = |key: String, want: &[usize]| -> Result<Option<Vec<f32>>> {
        let Some((shape, values)) = extras.remove(&key) else {
            return Ok(None);
        };
        if shape != want {
            return Err(bad(format!(
                "tensor '{key}' has shape {shape:?}, but its parameter has {want:?}"
            )));
        }
        Ok(Some(values))
    };

    let adam = if has_adam {
        let mut out = Vec::with_capacity(params.len());
        for (n, dims) in &params {
            let m = take(format!("{ADAM_M}{n}"), dims)?;
            let v = take(format!("{ADAM_V}{n}"), dims)?;
            let vmax = take(format!("{ADAM_VMAX}{n}"), dims)?;
            // Second moments are running means of squares: never negative.
            for (key, t) in [(ADAM_V, &v), (ADAM_VMAX, &vmax)] {
                if let Some((i, x)) = t.iter().flatten().enumerate().find(|(_, x)| **x < 0.0) {
                    return Err(bad(format!(
                        "tensor '{key}{n}' holds {x} at element {i}; a second moment is never \
                         negative"
                    )));
                }
            }
            let step = meta.get(&format!("adam_step.{n}"));
            match (m, v, step) {
                (Some(m), Some(v), Some(step)) => {
                    let step = step
                        .parse()
                        .ok()
                        .filter(|&s: &u64| s <= MAX_COUNT)
                        .ok_or_else(|| {
                            bad(format!("metadata adam_step.{n} = '{step}' is not a step count"))
                        })?;
                    out.push(Some(AdamMoments { step, m, v, vmax }));
                }
                (None, None, None) if vmax.is_none() => out.push(None),
                _ => {
                    return Err(bad(format!(
                        "the optimiser state of '{n}' is incomplete (expected {ADAM_M}{n}, {ADAM_V}{n} and metadata adam_step.{n}, with or without {ADAM_VMAX}{n})"
                    )))
                }
            }
        }
        Some(out)
    } else {
        None
    };

    let swa = match meta.get("swa_count") {
        None => None,
        Some(c) => {
            let count: usize = c
                .parse()
                .ok()
                .filter(|&c: &usize| c as u64 <= MAX_COUNT)
                .ok_or_else(|| bad(format!("metadata swa_count = '{c}' is not a count")))?;
            let mut values = Vec::with_capacity(params.len());
            for (n, dims) in &params {
                values.push(take(format!("{SWA}{n}"), dims)?.ok_or_else(|| {
                    bad(format!("swa_count is set but tensor {SWA}{n} is missing"))
                })?);
            }
            Some(SwaAverage { count, values })
        }
    };
    if let Some(name) = extras.keys().min() {
        return Err(bad(format!(
            "unexpected tensor '{name}' (not optimiser or average state of any parameter)"
        )));
    }
    Ok(TrainState {
        epochs_done,
        adam,
        swa,
        run: meta.get("run").cloned(),
    })
}
