//! Checkpoints: DLIO's layout and sizing, the streaming writer and verifying reader, the manifest, and the files of
//! a real training state (`state`).

pub mod manifest;
pub mod sizing;
pub mod state;
pub mod stream;
