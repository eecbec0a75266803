//! dl-driver's engine: the DLIO config model and, in later layers, storage, generation and training emulation.

pub mod checkpoint;
pub mod config;
pub mod formats;
pub mod generate;
pub mod plan;
pub mod storage;
