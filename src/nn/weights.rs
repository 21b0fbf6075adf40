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

/// Writes every parameter of `net` to `path` (atomically: a temporary file
/// renamed into place, so a crash never leaves a half-written file).
pub fn save(
    net: &Sequential,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let params = net.named_params();
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(params.len());
    for (name, t) in &params {
        let v = t.to_vec()?;
        bytes.push((
            name.clone(),
            t.dims().to_vec(),
            bytemuck::cast_slice(&v).to_vec(),
        ));
    }
    let mut views = Vec::with_capacity(bytes.len());
    for (name, shape, data) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::Msg(format!("safetensors: {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let serialized = safetensors::serialize(views, &metadata)
        .map_err(|e| Error::Msg(format!("safetensors: {e}")))?;
    crate::util::write_atomic(path, &serialized)
}

/// Loads `path` into `net`, which must have exactly the same parameter names
/// and shapes; otherwise the error lists every mismatch. Accepts f32, f16
/// and bf16 tensors (converted to f32).
pub fn load(net: &mut Sequential, path: &Path) -> Result<()> {
    load_with_metadata(net, path).map(|_| ())
}

/// Like [`load`], also returning the file's metadata strings.
pub fn load_with_metadata(net: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| Error::BadData {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    let expected: HashMap<String, Vec<usize>> = net
        .named_params()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let mut mismatches = Vec::new();
    let mut loaded: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for name in &names {
        let view = st.tensor(name).map_err(|e| Error::BadData {
            path: path.to_path_buf(),
            msg: format!("{name}: {e}"),
        })?;
        let Some(want) = expected.get(name) else {
            // PyTorch state_dicts may carry buffers we do not use (e.g. num_batches_tracked).
            mismatches.push(format!(
                "  unexpected tensor '{name}' {:?} (the model has no such parameter)",
                view.shape()
            ));
            continue;
        };
        if view.shape() != want.as_slice() {
            mismatches.push(format!(
                "  '{name}': file has shape {:?}, model expects {want:?}",
                view.shape()
            ));
            continue;
        }
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
                mismatches.push(format!(
                    "  '{name}': dtype {d:?} is not supported (expected F32, F16 or BF16)"
                ));
                continue;
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            mismatches.push(format!("  '{name}': contains NaN or infinite values"));
            continue;
        }
        loaded.insert(name.clone(), Tensor::from_vec(values, want.clone())?);
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
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| Error::BadData {
        path: path.to_path_buf(),
        msg: format!("{e}"),
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
