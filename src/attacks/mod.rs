//! The three attacks of He, Zhang & Lee (ACSAC 2019) and their metrics.

pub mod blackbox;
pub mod metrics;
pub mod queryfree;
pub mod whitebox;
