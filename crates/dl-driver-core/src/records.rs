//! What a run measured, as plain records: metric blocks, epochs, checkpoints and a rank's whole run, with DLIO's
//! timestamp format. The runner and the plugins fill them in; the report turns them into run files.

use std::time::Instant;

use chrono::{DateTime, Local};
use serde::Serialize;

use crate::metrics::{Latency, StageLatencies, StepTimes};

/// DLIO's timestamp: local time with microseconds, no zone.
pub fn timestamp(t: &DateTime<Local>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// One metric block (or an evaluation) of one rank.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRecord {
    pub start: DateTime<Local>,
    pub end: DateTime<Local>,
    pub duration: f64,
    pub steps: Vec<StepTimes>,
    pub au: f64,
    pub throughput: f64,
    pub bytes_read: u64,
}

/// One epoch of one rank.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub start: DateTime<Local>,
    pub end: DateTime<Local>,
    pub duration: f64,
    pub blocks: Vec<BlockRecord>,
    pub eval: Option<BlockRecord>,
    /// Step-weighted over the blocks.
    pub au: f64,
    pub throughput: f64,
    pub digest: String,
    pub eval_digest: Option<String>,
    pub repeated_samples: u64,
    /// Checkpoints saved or loaded in this epoch, each with the number of the block it follows.
    pub checkpoints: Vec<(usize, CheckpointRecord)>,
}

/// What one rank measured.
#[derive(Debug, Clone)]
pub struct RankRecord {
    pub rank: u64,
    pub start: DateTime<Local>,
    pub end: DateTime<Local>,
    pub epochs: Vec<EpochRecord>,
    pub latency: StageLatencies,
    pub interrupted: bool,
    /// The scheduling class of the thread that ran the step loop ([`crate::runner::thread_class`]).
    pub step_thread_class: &'static str,
    /// `workflow.drop_caches`: the cache drops before the epochs, timed outside the steps.
    pub drop_caches: Option<DropCachesRecord>,
    /// Failed HTTP attempts of the object stores during the run, by kind (`storage::requests`).
    pub request_errors: std::collections::BTreeMap<String, u64>,
}

/// The page-cache drops of a run (`workflow.drop_caches`).
#[derive(Debug, Clone, Serialize)]
pub struct DropCachesRecord {
    /// `vm.drop_caches`, `posix_fadvise` or none (an object store).
    pub how: &'static str,
    pub times: u64,
    pub seconds: f64,
}

/// A checkpoint saved or loaded by this rank, reported to the runner for the metrics and run files.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    /// `save` or `load`.
    pub kind: &'static str,
    pub name: String,
    pub epoch: u64,
    pub step: u64,
    pub start: DateTime<Local>,
    #[serde(skip)]
    pub started: Instant,
    pub end: DateTime<Local>,
    /// DLIO's duration: this rank's time from its start to its own files written, and with `checkpoint.rank_sync`
    /// to the barrier after every rank's (DLIO HEAD's `end_ckpt`).
    pub duration: f64,
    /// This rank's time to write (or read) its own files: the slowest rank's is MLPerf's checkpoint duration.
    pub own_duration: f64,
    /// This rank's tensor bytes, and bytes on storage.
    pub bytes: u64,
    pub stored_bytes: u64,
    pub files: u64,
    #[serde(skip)]
    pub part_latency: Latency,
}
