//! One error type for the whole crate.
//!
//! Every failure is a value with enough context to act on: the file and offset
//! for data errors, the expected and found shapes for shape errors, the name
//! that was not understood for lookups. The library never panics on bad input.

use std::path::PathBuf;

/// Everything that can go wrong in `splitinv`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that had to agree did not.
    #[error("shape mismatch in {op}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// The operation that checked the shapes.
        op: &'static str,
        /// What the operation needed.
        expected: String,
        /// What it was given.
        found: String,
    },
    /// A parameter value that cannot work (zero stride, kernel larger than input, ...).
    #[error("invalid argument for {op}: {msg}")]
    InvalidArgument {
        /// The operation or command that rejected the value.
        op: &'static str,
        /// What was wrong, with the value.
        msg: String,
    },
    /// Tensors on different devices were combined.
    #[error("device mismatch in {op}: {a} vs {b}")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// First device.
        a: String,
        /// Second device.
        b: String,
    },
    /// CUDA was asked for but cannot be used.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A data file is malformed: wrong magic, truncated, inconsistent header.
    #[error("bad data file {path}: {msg}")]
    BadData {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        msg: String,
    },
    /// A weight file does not match the model.
    #[error("weights in {path} do not match the model:\n{mismatches}")]
    WeightMismatch {
        /// The weight file.
        path: PathBuf,
        /// One line per mismatching tensor.
        mismatches: String,
    },
    /// A name (layer, split point, dataset, model) that is not known.
    #[error("unknown {kind} '{name}'; expected one of: {expected}")]
    UnknownName {
        /// What kind of name ("layer", "dataset", ...).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The names that are accepted.
        expected: String,
    },
    /// A loss or gradient became NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Anything else, with a message.
    #[error("{0}")]
    Msg(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for an [`Error::ShapeMismatch`].
    pub fn shape(
        op: &'static str,
        expected: impl std::fmt::Debug,
        found: impl std::fmt::Debug,
    ) -> Self {
        Error::ShapeMismatch {
            op,
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
