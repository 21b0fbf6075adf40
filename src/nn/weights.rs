//! Saving and loading weights in safetensors, with PyTorch `state_dict`
//! names (`conv1.weight`, `conv1.bias`, ...), so a PyTorch model of the same
//! architecture exported with `safetensors.torch.save_file(model.state_dict(), path)`
//! loads as is.

use super::Sequential;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// One named f32 tensor as stored in a file: (name, shape, values).
pub type NamedValues = (String, Vec<usize>, Vec<f32>);

/// Writes named f32 tensors and metadata to a safetensors file, atomically
/// (a temporary file renamed into place, so a crash never leaves a
/// half-written file).
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedValues],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<&[u8]> = tensors
        .iter()
        .map(|(_, _, v)| bytemuck::cast_slice(v.as_slice()))
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::Msg(format!("safetensors: {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let serialized = safetensors::serialize(views, &metadata)
        .map_err(|e| Error::Msg(format!("safetensors: {e}")))?;
    crate::util::write_atomic(path, &serialized)
}

/// Reads every tensor of a safetensors file as f32 (f16 and bf16 are
/// converted), sorted by name, with the file's metadata. A tensor of another
/// dtype, or with NaN or infinite values, is an error naming it.
pub fn read_tensors(path: &Path) -> Result<(Vec<NamedValues>, HashMap<String, String>)> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::BadData {
        path: path.to_path_buf(),
        msg,
    };
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| bad(format!("{name}: {e}")))?;
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            d => {
                return Err(bad(format!(
                    "'{name}': dtype {d:?} is not supported (expected F32, F16 or BF16)"
                )))
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("'{name}': contains NaN or infinite values")));
        }
        out.push((name, view.shape().to_vec(), values));
    }
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&data).map_err(|e| bad(format!("{e}")))?;
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// The host values of every parameter of `net`, with PyTorch names.
pub fn param_values(net: &Sequential) -> Result<Vec<NamedValues>> {
    net.named_params()
        .into_iter()
        .map(|(name, t)| Ok((name, t.dims().to_vec(), t.to_vec()?)))
        .collect()
}

/// Writes every parameter of `net` to `path` (atomically).
pub fn save(
    net: &Sequential,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_tensors(path, &param_values(net)?, metadata)
}

/// Loads `path` into `net`, which must have exactly the same parameter names
/// and shapes; otherwise the error lists every mismatch. Accepts f32, f16
/// and bf16 tensors (converted to f32).
pub fn load(net: &mut Sequential, path: &Path) -> Result<()> {
    load_with_metadata(net, path).map(|_| ())
}

/// Like [`load`], also returning the file's metadata strings.
pub fn load_with_metadata(net: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    let (tensors, meta) = read_tensors(path)?;
    load_values(net, path, tensors, |_| false)?;
    Ok(meta)
}

/// Copies `tensors` into `net`'s parameters. Names for which `extra` is
/// true are someone else's (a checkpoint's optimiser state) and skipped;
/// any other name or shape that doesn't match the model is listed in the
/// error, and then nothing is loaded.
pub fn load_values(
    net: &Sequential,
    path: &Path,
    tensors: Vec<NamedValues>,
    extra: impl Fn(&str) -> bool,
) -> Result<()> {
    let expected: HashMap<String, Vec<usize>> = net
        .named_params()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let mut mismatches = Vec::new();
    let mut loaded: HashMap<String, Tensor> = HashMap::new();
    let mut names = Vec::new();
    for (name, shape, values) in tensors {
        if extra(&name) {
            continue;
        }
        names.push(name.clone());
        let Some(want) = expected.get(&name) else {
            // PyTorch state_dicts may carry buffers we do not use (e.g. num_batches_tracked).
            mismatches.push(format!(
                "  unexpected tensor '{name}' {shape:?} (the model has no such parameter)"
            ));
            continue;
        };
        if &shape != want {
            mismatches.push(format!(
                "  '{name}': file has shape {shape:?}, model expects {want:?}"
            ));
            continue;
        }
        loaded.insert(name, Tensor::from_vec(values, want.clone())?);
    }
    let mut missing: Vec<&String> = expected.keys().filter(|k| !names.contains(k)).collect();
    missing.sort();
    for m in missing {
        mismatches.push(format!("  missing tensor '{m}' {:?}", expected[m]));
    }
    if !mismatches.is_empty() {
        return Err(Error::WeightMismatch {
            path: path.to_path_buf(),
            mismatches: mismatches.join("\n"),
        });
    }
    // Copy into the existing storage so every handle (e.g. a split's halves) sees the weights.
    for (name, t) in net.named_params() {
        if let Some(src) = loaded.get(&name) {
            t.assign(src)?;
        }
    }
    Ok(())
}
