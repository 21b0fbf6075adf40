//! The three attacks of He, Zhang & Lee (ACSAC 2019) and their metrics.

pub mod blackbox;
pub mod linear_inverse;
pub mod metrics;
pub mod noise;
pub mod queryfree;
pub mod whitebox;
