//! Shapes of contiguous row-major tensors.
//!
//! Every tensor in the engine is contiguous (NCHW for images), so a shape is
//! just its dimensions; strides are implied. Keeping tensors contiguous makes
//! every kernel a loop over a flat slice, which is what the SIMD kernels want.

use crate::error::{Error, Result};

/// The dimensions of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar of rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Dimension `i`, or an error naming the op if the rank is too small.
    pub fn dim(&self, i: usize) -> Result<usize> {
        self.0.get(i).copied().ok_or_else(|| {
            Error::invalid(
                "shape",
                format!(
                    "dimension {i} requested of a rank-{} shape {self:?}",
                    self.rank()
                ),
            )
        })
    }

    /// The four dimensions of an NCHW tensor, or a shape error naming `op`.
    pub fn nchw(&self, op: &'static str) -> Result<(usize, usize, usize, usize)> {
        match self.0[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(Error::shape(op, "[N, C, H, W]", self)),
        }
    }

    /// The two dimensions of a matrix, or a shape error naming `op`.
    pub fn matrix(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::shape(op, "[rows, cols]", self)),
        }
    }

    /// Row-major strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_numel() {
        let s = Shape::new([2, 3, 4, 5]);
        assert_eq!(s.numel(), 120);
        assert_eq!(s.strides(), vec![60, 20, 5, 1]);
        assert_eq!(s.nchw("t").unwrap(), (2, 3, 4, 5));
        assert!(Shape::new([2, 3]).nchw("t").is_err());
        assert_eq!(Shape::new(Vec::<usize>::new()).numel(), 1);
    }
}
