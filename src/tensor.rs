//! The tensor: a shape, a shared storage, and — only when a gradient is
//! needed — the op that produced it.
//!
//! A `Tensor` is a cheap handle (`Arc`). Storage is shared between handles, so
//! `reshape`, `detach` and `requires_grad` cost nothing. The autograd graph
//! lives in the tensors: an op's output points at the op's backward rule,
//! which points at the op's inputs. Dropping the last handle of a loss drops
//! the whole graph behind it.

use crate::autograd::{self, BackwardOp};
use crate::device::{CpuBuffer, Device, Storage};
use crate::error::{Error, Result};
use crate::shape::Shape;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A unique identity for a tensor handle (not for its storage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Inner {
    id: TensorId,
    shape: Shape,
    storage: Arc<RwLock<Storage>>,
    /// The backward rule of the op that made this tensor; `None` for leaves
    /// and for anything computed without a gradient.
    grad_fn: Option<Box<dyn BackwardOp>>,
    /// A leaf whose gradient the user asked for.
    requires_grad: bool,
}

/// An n-dimensional array of f32, contiguous, on one device.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, grad_fn={:?}, requires_grad={})",
            self.0.shape,
            self.device(),
            self.0.grad_fn.as_ref().map(|g| g.name()),
            self.0.requires_grad
        )
    }
}

/// Read access to a CPU tensor's elements.
pub struct CpuRead<'a>(RwLockReadGuard<'a, Storage>);

impl std::ops::Deref for CpuRead<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.0 {
            Storage::Cpu(b) => b,
            // Constructed only after checking the variant.
            Storage::Cuda(_) => &[],
        }
    }
}

/// Write access to a CPU tensor's elements (optimizers update in place).
pub struct CpuWrite<'a>(RwLockWriteGuard<'a, Storage>);

impl std::ops::Deref for CpuWrite<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.0 {
            Storage::Cpu(b) => b,
            Storage::Cuda(_) => &[],
        }
    }
}
impl std::ops::DerefMut for CpuWrite<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut *self.0 {
            Storage::Cpu(b) => b,
            Storage::Cuda(_) => &mut [],
        }
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------

    /// Wraps storage as a leaf tensor (no gradient).
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.numel() {
            return Err(Error::shape(
                "from_storage",
                format!("{} elements", shape.numel()),
                format!("{} elements", storage.len()),
            ));
        }
        Ok(Tensor::leaf(Arc::new(RwLock::new(storage)), shape, false))
    }

    fn leaf(storage: Arc<RwLock<Storage>>, shape: Shape, requires_grad: bool) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape,
            storage,
            grad_fn: None,
            requires_grad,
        }))
    }

    /// A CPU tensor from a vector; the length must match the shape.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements for shape {shape:?}", shape.numel()),
                format!("{} elements", data.len()),
            ));
        }
        Ok(Tensor::leaf(
            Arc::new(RwLock::new(Storage::Cpu(CpuBuffer::new(data)))),
            shape,
            false,
        ))
    }

    /// A CPU tensor from a slice (copied).
    pub fn from_slice(data: &[f32], shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A rank-0 tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::leaf(
            Arc::new(RwLock::new(Storage::Cpu(CpuBuffer::new(vec![v])))),
            Shape::new(Vec::<usize>::new()),
            false,
        )
    }

    /// A tensor filled with `v`.
    pub fn full(shape: impl Into<Shape>, v: f32) -> Tensor {
        let shape = shape.into();
        let data = vec![v; shape.numel()];
        Tensor::leaf(
            Arc::new(RwLock::new(Storage::Cpu(CpuBuffer::new(data)))),
            shape,
            false,
        )
    }

    /// All zeros.
    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// All ones.
    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Uniform in `[lo, hi)`, from the given generator (seeded by the caller for determinism).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.gen_range(lo..hi)).collect();
        Tensor::leaf(
            Arc::new(RwLock::new(Storage::Cpu(CpuBuffer::new(data)))),
            shape,
            false,
        )
    }

    /// Normal with the given mean and standard deviation (Box–Muller, so no extra crate).
    pub fn rand_normal(shape: impl Into<Shape>, mean: f32, std: f32, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let data = normal_vec(shape.numel(), mean, std, rng);
        Tensor::leaf(
            Arc::new(RwLock::new(Storage::Cpu(CpuBuffer::new(data)))),
            shape,
            false,
        )
    }

    /// The output of an op. The backward rule is built (by `make`) and
    /// recorded only when gradients are enabled and some input needs one:
    /// frozen weights and `no_grad` code pay nothing for autograd.
    pub fn from_op(
        storage: Storage,
        shape: Shape,
        inputs: &[&Tensor],
        make: impl FnOnce() -> Box<dyn BackwardOp>,
    ) -> Tensor {
        let record = autograd::is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad());
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape,
            storage: Arc::new(RwLock::new(storage)),
            grad_fn: if record { Some(make()) } else { None },
            requires_grad: false,
        }))
    }

    /// Convenience for CUDA kernels: wraps an output device buffer as an op
    /// result.
    pub fn from_cuda_op(
        buf: crate::cuda::CudaBuffer,
        shape: Shape,
        inputs: &[&Tensor],
        make: impl FnOnce() -> Box<dyn BackwardOp>,
    ) -> Tensor {
        Tensor::from_op(Storage::Cuda(buf), shape, inputs, make)
    }

    /// A tensor filled with `v` on `device` (a fill kernel on a GPU).
    pub fn full_on(shape: impl Into<Shape>, v: f32, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device {
            Device::Cpu => Ok(Tensor::full(shape, v)),
            Device::Cuda(n) => {
                let buf = crate::cuda::exec::filled(n, shape.numel(), v)?;
                Tensor::from_storage(Storage::Cuda(buf), shape)
            }
        }
    }

    /// All zeros on `device`.
    pub fn zeros_on(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, device)
    }

    /// A copy of this tensor on `device` (the same handle when it already
    /// lives there). The copy is a new leaf: gradients do not flow back
    /// through a transfer, but a leaf that asked for its gradient gives a
    /// copy that asks too. Host ↔ device copies wait for queued GPU work.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let here = self.device();
        if here == device {
            return Ok(self.clone());
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuBuffer::new(self.to_vec()?)),
            Device::Cuda(n) => {
                let host = self.to_vec()?;
                Storage::Cuda(crate::cuda::CudaBuffer::from_host(n, &host)?)
            }
        };
        let t = Tensor::from_storage(storage, self.shape().clone())?;
        Ok(if self.is_requires_grad() {
            t.requires_grad()
        } else {
            t
        })
    }

    /// Convenience for CPU kernels: wraps an output vector as an op result.
    pub fn from_cpu_op(
        data: Vec<f32>,
        shape: Shape,
        inputs: &[&Tensor],
        make: impl FnOnce() -> Box<dyn BackwardOp>,
    ) -> Tensor {
        Tensor::from_op(Storage::Cpu(CpuBuffer::new(data)), shape, inputs, make)
    }

    // ----- gradient bookkeeping ------------------------------------------

    /// A handle on the same storage that is a leaf asking for its gradient.
    pub fn requires_grad(&self) -> Tensor {
        Tensor::leaf(self.0.storage.clone(), self.0.shape.clone(), true)
    }

    /// A handle on the same storage with no gradient and no history.
    pub fn detach(&self) -> Tensor {
        Tensor::leaf(self.0.storage.clone(), self.0.shape.clone(), false)
    }

    /// True for a leaf that asked for its gradient.
    pub fn is_requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// True when a gradient flows through this tensor (a grad leaf or an op result on a grad path).
    pub fn tracks_grad(&self) -> bool {
        self.0.requires_grad || self.0.grad_fn.is_some()
    }

    /// The backward rule that made this tensor, if recorded.
    pub fn grad_fn(&self) -> Option<&dyn BackwardOp> {
        self.0.grad_fn.as_deref()
    }

    /// This handle's identity.
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// True when both handles share the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ----- accessors --------------------------------------------------------

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }

    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        self.storage().device()
    }

    /// Read access to the storage (any device).
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read access to the elements of a CPU tensor.
    pub fn cpu(&self) -> Result<CpuRead<'_>> {
        let g = self.storage();
        match &*g {
            Storage::Cpu(_) => Ok(CpuRead(g)),
            Storage::Cuda(_) => Err(Error::DeviceMismatch {
                op: "cpu access (copy with to_vec() or to_device(Device::Cpu))",
                a: "cpu".into(),
                b: g.device().to_string(),
            }),
        }
    }

    /// Write access to the elements of a CPU tensor. Used by optimizers to
    /// update parameters in place; never call it while holding a read guard
    /// of the same tensor.
    pub fn cpu_mut(&self) -> Result<CpuWrite<'_>> {
        let g = self.0.storage.write().unwrap_or_else(|e| e.into_inner());
        match &*g {
            Storage::Cpu(_) => Ok(CpuWrite(g)),
            Storage::Cuda(_) => Err(Error::DeviceMismatch {
                op: "cpu write",
                a: "cpu".into(),
                b: g.device().to_string(),
            }),
        }
    }

    /// A copy of the elements on the host (for a GPU tensor: a device to
    /// host copy, which waits for the queued kernels).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &*self.storage() {
            Storage::Cpu(b) => Ok(b.to_vec()),
            Storage::Cuda(b) => b.to_host(),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape("item", "one element", self.shape()));
        }
        Ok(self.to_vec()?[0])
    }

    /// Copies the values of `src` into this tensor's storage (same shape).
    /// Not recorded by autograd: for loading weights and resetting inputs.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape("assign", self.shape(), src.shape()));
        }
        if self.same_storage(src) {
            return Ok(());
        }
        match (self.device(), src.device()) {
            (Device::Cpu, Device::Cpu) => {
                let s = src.cpu()?;
                let mut d = self.cpu_mut()?;
                d.copy_from_slice(&s);
                Ok(())
            }
            (Device::Cpu, Device::Cuda(_)) => {
                let s = src.to_vec()?;
                let mut d = self.cpu_mut()?;
                d.copy_from_slice(&s);
                Ok(())
            }
            (Device::Cuda(n), _) => {
                let s = src.to_device(Device::Cuda(n))?;
                crate::cuda::exec::copy(&s, self)
            }
        }
    }

    /// Checks that two tensors have the same shape, naming the op if not.
    pub fn check_same_shape(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.shape() != other.shape() {
            return Err(Error::shape(op, self.shape(), other.shape()));
        }
        Ok(())
    }

    /// Same storage, new shape with the same number of elements; gradients
    /// flow back through it as a reshape of the gradient.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{} elements", self.numel()),
                format!("{shape:?} ({} elements)", shape.numel()),
            ));
        }
        let record = autograd::is_grad_enabled() && self.tracks_grad();
        let from = self.shape().clone();
        let input = self.clone();
        Ok(Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape,
            storage: self.0.storage.clone(),
            grad_fn: if record {
                Some(Box::new(ReshapeBackward { input, from }))
            } else {
                None
            },
            requires_grad: false,
        })))
    }

    /// Flattens all dimensions after the first: `[N, ...] -> [N, rest]`.
    pub fn flatten(&self) -> Result<Tensor> {
        let n = self.shape().dim(0)?;
        let rest = self.numel().checked_div(n).unwrap_or(0);
        self.reshape([n, rest])
    }
}

/// Reshape's backward: the gradient has the input's shape and the same
/// numbers, because a reshape moves no data.
struct ReshapeBackward {
    input: Tensor,
    from: Shape,
}

impl BackwardOp for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
    fn backward(
        &self,
        _out: &Tensor,
        grad_out: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad_out.detach().reshape(self.from.clone())?)])
    }
}

/// `n` samples of a normal distribution (Box–Muller).
pub fn normal_vec(n: usize, mean: f32, std: f32, rng: &mut impl Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        if out.len() < n {
            out.push(mean + std * (r * t.sin()) as f32);
        }
    }
    out
}
