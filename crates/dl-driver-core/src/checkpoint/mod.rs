//! Checkpoints: DLIO's layout and sizing, the streaming writer and verifying reader, and the manifest.

pub mod manifest;
pub mod sizing;
pub mod stream;
