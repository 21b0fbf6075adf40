//! Layers and a `Sequential` of *named* layers that can be split in two.
//!
//! A split network f = f2 ∘ f1 is exactly a `Sequential` cut after a named
//! layer: [`Sequential::split`] returns the client part (up to and including
//! the layer) and the server part, sharing the same weight storage.

mod layer;
mod sequential;
pub mod weights;

pub use layer::{init_uniform, Layer};
pub use sequential::Sequential;
