//! A chain of named layers.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Layers applied in order, each with a unique name (`conv1`, `ReLU1`, ...).
#[derive(Clone, Debug, Default)]
pub struct Sequential {
    layers: Vec<(String, Layer)>,
}

impl Sequential {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer; names must be unique.
    pub fn push(&mut self, name: impl Into<String>, layer: Layer) -> Result<&mut Self> {
        let name = name.into();
        // Parameters are saved as `<layer>.<weight|bias>`, and a checkpoint
        // keeps the optimiser's state under `__adam_m__.<parameter>`: a
        // name with a dot, or one starting with `__`, could not be read back.
        if name.is_empty() || name.contains('.') || name.starts_with("__") {
            return Err(Error::invalid(
                "Sequential::push",
                format!(
                    "layer name '{name}': expected a non-empty name without '.' that does not \
                     start with '__' (parameters are saved as <layer>.weight)"
                ),
            ));
        }
        if self.layers.iter().any(|(n, _)| *n == name) {
            return Err(Error::invalid(
                "Sequential::push",
                format!("duplicate layer name '{name}'"),
            ));
        }
        self.layers.push((name, layer));
        Ok(self)
    }

    /// Builder form of [`Sequential::push`].
    pub fn with(mut self, name: impl Into<String>, layer: Layer) -> Result<Self> {
        self.push(name, layer)?;
        Ok(self)
    }

    /// The layers with their names.
    pub fn layers(&self) -> &[(String, Layer)] {
        &self.layers
    }

    /// Mutable access to the layers (for loading weights).
    pub fn layers_mut(&mut self) -> &mut [(String, Layer)] {
        &mut self.layers
    }

    /// Layer names in order.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Position of a layer, or an error listing the names that exist.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.layers
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownName {
                kind: "layer",
                name: name.to_string(),
                expected: self.layer_names().join(", "),
            })
    }

    /// Evaluation-mode forward pass (dropout off).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_range(x, 0, self.layers.len(), None)
    }

    /// Training-mode forward pass (dropout on, drawn from `rng`).
    pub fn forward_train(&self, x: &Tensor, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Tensor> {
        self.forward_range(x, 0, self.layers.len(), Some(rng))
    }

    /// Runs layers `start..end`.
    pub fn forward_range(
        &self,
        x: &Tensor,
        start: usize,
        end: usize,
        mut rng: Option<&mut rand_chacha::ChaCha8Rng>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (name, layer) in self.layers.get(start..end).unwrap_or(&[]) {
            h = layer
                .forward(&h, rng.as_deref_mut())
                .map_err(|e| Error::Msg(format!("layer '{name}' ({}): {e}", layer.kind())))?;
        }
        Ok(h)
    }

    /// Forward through every layer, returning each layer's output (for
    /// teaching printouts and per-layer figures).
    pub fn forward_all(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(self.layers.len());
        let mut h = x.clone();
        for (_, layer) in &self.layers {
            h = layer.forward(&h, None)?;
            outs.push(h.clone());
        }
        Ok(outs)
    }

    /// Cuts the network after `layer`: (client f1 including `layer`, server
    /// f2 with the rest). Both share the original weight storage.
    pub fn split(&self, layer: &str) -> Result<(Sequential, Sequential)> {
        let i = self.index_of(layer)? + 1;
        Ok((
            Sequential {
                layers: self.layers[..i].to_vec(),
            },
            Sequential {
                layers: self.layers[i..].to_vec(),
            },
        ))
    }

    /// All parameters with PyTorch-style names (`conv1.weight`, ...).
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .flat_map(|(n, l)| {
                l.params()
                    .into_iter()
                    .map(move |(s, t)| (format!("{n}.{s}"), t.clone()))
            })
            .collect()
    }

    /// All parameter tensors, in order.
    pub fn params(&self) -> Vec<Tensor> {
        self.named_params().into_iter().map(|(_, t)| t).collect()
    }

    /// Makes every parameter a gradient leaf (training) or frozen (attacks).
    /// Storage is shared, so weights are not copied.
    pub fn set_trainable(&mut self, trainable: bool) {
        for (_, l) in &mut self.layers {
            if trainable {
                l.map_params(&|t| t.requires_grad());
            } else {
                l.map_params(&|t| t.detach());
            }
        }
    }

    /// Moves every parameter to `device` (a copy per parameter; nothing
    /// happens for those already there). Trainable parameters stay
    /// trainable. Handles to the old parameters (clones of this network
    /// made before) keep the old copies.
    pub fn to_device(&mut self, device: crate::Device) -> Result<()> {
        for (_, l) in &mut self.layers {
            l.try_map_params(&mut |t| t.to_device(device))?;
        }
        Ok(())
    }

    /// The device of the parameters (the CPU for a network without any).
    pub fn device(&self) -> crate::Device {
        self.layers
            .iter()
            .flat_map(|(_, l)| l.params())
            .map(|(_, t)| t.device())
            .next()
            .unwrap_or_default()
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|t| t.numel()).sum()
    }

    /// Output shape for a given input shape (runs a forward pass on zeros without a graph).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let out = crate::autograd::no_grad(|| self.forward(&Tensor::zeros(input.to_vec())))?;
        Ok(out.dims().to_vec())
    }

    /// The elements one image of shape `chw` (`[C, H, W]`) and every layer
    /// output it makes hold together: what a training step keeps per image
    /// for its backward pass. From a forward pass of one zero image.
    pub fn activation_elements(&self, chw: &[usize]) -> Result<usize> {
        let mut shape = vec![1];
        shape.extend_from_slice(chw);
        let x = Tensor::zeros(shape);
        let outs = crate::autograd::no_grad(|| self.forward_all(&x))?;
        Ok(x.numel() + outs.iter().map(Tensor::numel).sum::<usize>())
    }
}
