//! Reverse-mode automatic differentiation.
//!
//! How a gradient travels, in one paragraph: every op that has an input on a
//! gradient path stores a [`BackwardOp`] in its output. `loss.backward()`
//! walks those links from the loss to the leaves, orders the nodes so that
//! each node is processed after everything that uses it (a topological
//! order), seeds dL/dloss = 1 and, node by node, asks each backward rule to
//! turn dL/d(output) into dL/d(input) for exactly the inputs that need one.
//! Gradients that reach the same tensor along several paths are added. Only
//! leaves that asked for a gradient ([`Tensor::requires_grad`]) end up in the
//! returned [`GradStore`]; everything intermediate is freed as soon as it has
//! been used.

pub mod gradcheck;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

pub use gradcheck::{gradcheck, GradCheck};

/// The backward rule of one op, holding what the op saved for it.
pub trait BackwardOp: Send + Sync {
    /// A short name ("conv2d", "relu", ...), printed by the teaching tools.
    fn name(&self) -> &'static str;
    /// The op's tensor inputs, in the order `backward` returns gradients.
    fn inputs(&self) -> Vec<Tensor>;
    /// Given dL/d(out), returns dL/d(input i) for each input, computing it
    /// only where `needs[i]` is true (and returning `None` elsewhere).
    /// `out` is the op's output (detached), for rules that reuse it.
    fn backward(
        &self,
        out: &Tensor,
        grad_out: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>>;
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// True unless inside a [`no_grad`] scope on this thread.
pub fn is_grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Runs `f` without recording any graph: nothing it computes can be
/// differentiated, and nothing is kept for a backward pass.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Disables graph recording until dropped.
pub struct NoGradGuard(());

impl NoGradGuard {
    /// Starts a no-grad scope.
    pub fn new() -> Self {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The gradients a backward pass produced, by tensor.
#[derive(Default)]
pub struct GradStore {
    grads: HashMap<TensorId, Tensor>,
}

impl GradStore {
    /// The gradient of `t`, if it asked for one and the loss depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn take(&mut self, t: &Tensor) -> Option<Tensor> {
        self.grads.remove(&t.id())
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// True when no gradient was produced.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Adds `g` to whatever gradient `id` already has.
    fn accumulate(map: &mut HashMap<TensorId, Tensor>, id: TensorId, g: Tensor) -> Result<()> {
        match map.remove(&id) {
            None => {
                map.insert(id, g);
            }
            // Out of place on purpose: a backward rule may hand the same
            // gradient tensor to several inputs (add does), so adding in
            // place would corrupt the other copy.
            Some(prev) => {
                map.insert(id, crate::ops::elementwise::add(&prev, &g)?);
            }
        }
        Ok(())
    }
}

/// Nodes reachable from `root` through recorded ops, each after all of its
/// consumers (reverse topological order), found without recursion so deep
/// graphs cannot overflow the stack.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // (node, inputs already pushed?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(f) = t.grad_fn() {
            for i in f.inputs() {
                if i.tracks_grad() && !seen.contains(&i.id()) {
                    stack.push((i, false));
                }
            }
        }
    }
    order.reverse();
    order
}

impl Tensor {
    /// Back-propagates from this scalar loss; returns the gradients of the
    /// leaves that asked for one.
    pub fn backward(&self) -> Result<GradStore> {
        self.backward_keep(&[])
    }

    /// Like [`Tensor::backward`], but also keeps the gradients of the listed
    /// intermediate tensors: the teaching tools use this to show the
    /// gradient at every layer on its way back to the pixels.
    pub fn backward_keep(&self, keep: &[&Tensor]) -> Result<GradStore> {
        if self.numel() != 1 {
            return Err(Error::shape("backward", "a one-element loss", self.shape()));
        }
        let seed = Tensor::full_on(self.shape().clone(), 1.0, self.device())?;
        self.backward_from(seed, keep)
    }

    /// Back-propagates a given dL/d(self) (any shape).
    pub fn backward_from(&self, grad: Tensor, keep: &[&Tensor]) -> Result<GradStore> {
        self.check_same_shape(&grad, "backward seed")?;
        // Backward rules are built from ordinary ops; they must not record a
        // graph of their own (we do not need second derivatives).
        let _no_grad = NoGradGuard::new();
        let keep: HashSet<TensorId> = keep.iter().map(|t| t.id()).collect();
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        let mut store = GradStore::default();
        pending.insert(self.id(), grad);
        for node in topo_order(self) {
            let Some(g) = pending.remove(&node.id()) else {
                continue;
            };
            if let Some(f) = node.grad_fn() {
                let inputs = f.inputs();
                let needs: Vec<bool> = inputs.iter().map(|i| i.tracks_grad()).collect();
                let grads = f.backward(&node.detach(), &g, &needs)?;
                for ((input, need), gi) in inputs.iter().zip(&needs).zip(grads) {
                    if let (true, Some(gi)) = (*need, gi) {
                        if gi.shape() != input.shape() {
                            return Err(Error::shape(f.name(), input.shape(), gi.shape()));
                        }
                        GradStore::accumulate(&mut pending, input.id(), gi)?;
                    }
                }
            }
            if node.is_requires_grad() || keep.contains(&node.id()) {
                store.grads.insert(node.id(), g);
            }
        }
        Ok(store)
    }
}
