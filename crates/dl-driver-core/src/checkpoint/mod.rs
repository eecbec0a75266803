//! Checkpoint layout and sizing (the streaming writer and reader arrive with the checkpoint plugin).

pub mod sizing;
