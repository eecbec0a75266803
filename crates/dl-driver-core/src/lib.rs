//! dl-driver's engine: the DLIO config model, storage, dataset generation and training emulation.

pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod formats;
pub mod generate;
pub mod layout;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod progress;
pub mod records;
pub mod report;
pub mod runner;
pub mod sampler;
pub mod sink;
pub mod storage;
pub mod uri;
