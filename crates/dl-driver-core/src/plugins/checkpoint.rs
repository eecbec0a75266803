//! The checkpoint plugin, with DLIO's semantics (dlio.md §5): step checkpoints every `steps_between_checkpoints`
//! global steps, epoch checkpoints after `checkpoint_after_epoch` and every `epochs_between_checkpoints` epochs, and
//! checkpoint-only workloads (`workflow.train: False`): `num_checkpoints_write` times {sleep
//! `time_between_checkpoints`, barrier, save}, a barrier, then `num_checkpoints_read` loads. Each rank streams its
//! DeepSpeed-named files into `{checkpoint_folder}/global_epoch{E}_step{S}/`; after a barrier and an all-gather of
//! the file entries, rank 0 writes the manifest, which makes the checkpoint complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Local;
use indicatif::ProgressBar;

use super::{CheckpointRecord, HookContext, Plugin, PluginError, StepPoint};
use crate::checkpoint::manifest::{self, Manifest};
use crate::checkpoint::sizing::rank_files;
use crate::checkpoint::stream::{self, CheckpointError, FileEntry, WriteOptions, CHUNK};
use crate::config::{CheckpointCompression, Config};
use crate::metrics::Latency;
use crate::plan::{CheckpointPlan, Plan};
use crate::progress;
use crate::records::timestamp;
use crate::sink::data::mix;
use crate::storage::{self, BufferPool, StorageOptions, Store};

/// Saves and loads DLIO-shaped checkpoints.
pub struct CheckpointPlugin {
    config: Config,
    store: Option<Store>,
    schedule: Option<CheckpointPlan>,
    pool: Arc<BufferPool>,
    /// Checkpoints this run completed, in order.
    written: Vec<String>,
    global_step: u64,
}

impl CheckpointPlugin {
    pub fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            store: None,
            schedule: None,
            pool: BufferPool::new(CHUNK),
            written: Vec::new(),
            global_step: 0,
        }
    }

    fn store(&self) -> Result<&Store, PluginError> {
        self.store
            .as_ref()
            .ok_or_else(|| PluginError::Config("the checkpoint plugin was used before initialize".into()))
    }

    fn options(&self, seed: u64, progress: &ProgressBar) -> WriteOptions {
        let k = &self.config.checkpoint;
        WriteOptions {
            zstd_level: (k.compression == CheckpointCompression::Zstd).then_some(k.compression_level),
            randomize: k.randomize_tensor,
            fsync: k.fsync,
            seed,
            progress: progress.clone(),
        }
    }

    /// Writes this rank's files of checkpoint (epoch, step); rank 0 writes the manifest once every rank is done.
    async fn save(&mut self, epoch: u64, step: u64, ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        let (rank, world) = (ctx.comm.rank(), ctx.comm.size());
        let name = manifest::folder_name(epoch, step);
        let files = rank_files(&self.config, world, rank)
            .map_err(|(path, why)| PluginError::Config(format!("{path}: {why}")))?;
        let (start, started) = (Local::now(), Instant::now());
        let bar = ctx.progress.bar(files.iter().map(|f| f.bytes).sum(), progress::CHECKPOINT);
        bar.set_prefix(format!("saving {name}"));
        let mut part_latency = Latency::default();
        let mut entries = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let seed = mix(self.config.train.seed ^ mix(step) ^ mix(rank << 20 | i as u64));
            let key = format!("{name}/{}", file.name);
            let entry = stream::write_file(
                self.store()?,
                &key,
                rank,
                file.bytes,
                self.options(seed, &bar),
                &self.pool,
                &mut part_latency,
            )
            .await?;
            entries.push(entry);
        }
        bar.finish_and_clear();
        let own = started.elapsed().as_secs_f64();
        // The manifest is written once every rank's files are complete; a rank that fails before this barrier
        // leaves the checkpoint without one (incomplete to every reader).
        ctx.comm.barrier()?;
        let gathered = ctx.comm.all_gather(serde_json::to_string(&entries).expect("entries serialize"))?;
        if rank == 0 {
            let mut all: Vec<FileEntry> = Vec::new();
            for text in gathered {
                all.extend(
                    serde_json::from_str::<Vec<FileEntry>>(&text)
                        .map_err(|e| CheckpointError::Invalid(format!("a rank sent unreadable file entries: {e}")))?,
                );
            }
            let k = &self.config.checkpoint;
            let compressed = k.compression == CheckpointCompression::Zstd;
            let manifest = Manifest {
                format: manifest::FORMAT.into(),
                name: name.clone(),
                epoch,
                step,
                world_size: world,
                compression: k.compression.to_string(),
                compression_level: compressed.then_some(k.compression_level),
                started: timestamp(&start),
                finished: timestamp(&Local::now()),
                total_bytes: all.iter().map(|f| f.bytes).sum(),
                stored_bytes: all.iter().map(|f| f.stored_bytes).sum(),
                files: all,
            };
            manifest::write(self.store()?, &manifest).await?;
        }
        ctx.comm.barrier()?;
        self.written.push(name.clone());
        ctx.checkpoints.push(CheckpointRecord {
            kind: "save",
            name,
            epoch,
            step,
            start,
            started,
            end: Local::now(),
            duration: if self.config.checkpoint.rank_sync { started.elapsed().as_secs_f64() } else { own },
            own_duration: own,
            bytes: entries.iter().map(|e| e.bytes).sum(),
            stored_bytes: entries.iter().map(|e| e.stored_bytes).sum(),
            files: entries.len() as u64,
            part_latency,
        });
        Ok(())
    }

    /// Reads this rank's files of checkpoint `name` back, verifying them.
    async fn load(&mut self, name: &str, ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        let rank = ctx.comm.rank();
        let (start, started) = (Local::now(), Instant::now());
        let store = self.store()?;
        let m = manifest::read(store, name).await?;
        let (mut bytes, mut stored, mut files) = (0, 0, 0);
        let mine = || m.files.iter().filter(|f| f.rank == rank);
        let bar = ctx.progress.bar(mine().map(|f| f.stored_bytes).sum(), progress::CHECKPOINT);
        bar.set_prefix(format!("loading {name}"));
        for entry in mine() {
            let key = format!("{name}/{}", entry.name);
            stored += stream::read_file(store, &key, entry, m.compressed(), &bar).await?;
            bytes += entry.bytes;
            files += 1;
        }
        bar.finish_and_clear();
        let own = started.elapsed().as_secs_f64();
        ctx.comm.barrier()?;
        ctx.checkpoints.push(CheckpointRecord {
            kind: "load",
            name: name.to_string(),
            epoch: m.epoch,
            step: m.step,
            start,
            started,
            end: Local::now(),
            duration: if self.config.checkpoint.rank_sync { started.elapsed().as_secs_f64() } else { own },
            own_duration: own,
            bytes,
            stored_bytes: stored,
            files,
            part_latency: Latency::default(),
        });
        Ok(())
    }
}

#[async_trait]
impl Plugin for CheckpointPlugin {
    fn name(&self) -> String {
        "checkpoint".into()
    }

    async fn initialize(&mut self, plan: &Plan, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        let options = StorageOptions::from_yaml(&self.config.storage.options())
            .map_err(|e| PluginError::Config(format!("storage.storage_options: {e}")))?;
        self.store = Some(storage::open_shared(&plan.checkpoint_location, &options)?);
        self.schedule.clone_from(&plan.checkpoint);
        if self.schedule.is_none() {
            return Err(PluginError::Config("workflow.checkpoint is off: nothing to checkpoint".into()));
        }
        Ok(())
    }

    async fn after_step(&mut self, at: StepPoint, ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.global_step = at.global_step;
        let every = self.schedule.as_ref().and_then(|s| s.every_steps).filter(|n| *n > 0);
        if every.is_some_and(|n| at.global_step.is_multiple_of(n)) {
            self.save(at.epoch, at.global_step, ctx).await?;
        }
        Ok(())
    }

    async fn after_epoch(&mut self, epoch: u64, ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        let due = self.schedule.as_ref().is_some_and(|s| s.trigger == "epoch" && s.epochs.contains(epoch));
        if due {
            self.save(epoch, self.global_step, ctx).await?;
        }
        Ok(())
    }

    async fn checkpoint_only(&mut self, ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        let Some(schedule) = self.schedule.clone().filter(|s| s.trigger == "checkpoint_only") else { return Ok(()) };
        let pause = Duration::from_secs_f64(self.config.checkpoint.time_between_checkpoints.max(0.0));
        for i in 1..=schedule.writes {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            ctx.comm.barrier()?;
            self.save(1, i, ctx).await?;
        }
        ctx.comm.barrier()?;
        if schedule.reads == 0 {
            return Ok(());
        }
        if self.config.workflow.drop_caches {
            // MLPerf's rule: write, clear the cache, read.
            let store = self.store()?.clone();
            let keys: Vec<String> = store.list("").await?.into_iter().map(|o| o.key).collect();
            tokio::task::block_in_place(|| store.drop_page_cache(&keys))?;
            ctx.comm.barrier()?;
        }
        let mut names = self.written.clone();
        if names.is_empty() {
            let store = self.store()?;
            let listed = manifest::list(store).await?;
            names = listed.into_iter().filter(|l| l.complete).map(|l| l.name).collect();
        }
        if names.is_empty() {
            return Err(PluginError::Config(format!(
                "checkpoint.num_checkpoints_read is {} but {} holds no complete checkpoint to read",
                schedule.reads,
                self.store()?.uri()
            )));
        }
        for i in 0..schedule.reads {
            let name = names[usize::try_from(i).unwrap_or(0) % names.len()].clone();
            self.load(&name, ctx).await?;
        }
        Ok(())
    }
}
