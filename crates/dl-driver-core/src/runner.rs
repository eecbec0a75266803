//! The training loop (dlio.md §4): for each epoch, for each step, wait for the next batch from the pipeline, emulate
//! compute by sleeping a drawn `computation_time`, barrier across ranks, call the plugins; metric blocks split at
//! step checkpoints; evaluation after the scheduled epochs (eval_time, no barrier). Ctrl-C (a [`Cancel`]) stops
//! the run within a step's wait and the run files are still written, marked interrupted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};
use tokio::sync::Notify;

use crate::comm::{CommError, Communicator};
use crate::config::{Config, Distribution, Format, ReadType};
use crate::layout::{self, Split};
use crate::metrics::{block_metrics, step_weighted, StageLatencies, StepTimes};
use crate::pipeline::{Pipeline, PipelineError, ReaderSpec, Readers};
use crate::plan::Plan;
use crate::plugins::{self, Hook, HookError, Plugin, PluginError, StepPoint};
use crate::progress::Display;
pub use crate::records::{BlockRecord, CheckpointRecord, DropCachesRecord, EpochRecord, RankRecord};
use crate::report::{self, Console};
use crate::sampler::{Rng, Sampler, ShufflePolicy, PURPOSE_COMPUTE};
use crate::storage::{self, StorageError, StorageOptions, Store};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Read(#[from] PipelineError),
    /// The dataset does not match the config.
    #[error("{0}")]
    Dataset(String),
    #[error(transparent)]
    Plugin(#[from] HookError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// Stops a run from another thread (Ctrl-C).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<(AtomicBool, Notify)>);

impl Cancel {
    pub fn cancel(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    async fn cancelled(&self) {
        let notified = self.0 .1.notified();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress line on stderr.
    pub progress: bool,
    /// Print DLIO's console lines to stdout (they always go to the log file).
    pub console: bool,
    pub cancel: Cancel,
    /// The user's overrides, saved (redacted) in Hydra's `overrides.yaml` beside the resolved config.
    pub overrides: Vec<String>,
    /// Where the workload came from ([`crate::config::Loaded::source_name`]): Hydra's workload choice.
    pub source_name: String,
}

/// Runs the training (and evaluation) of `config` as `comm`'s rank, or its checkpoint-only workflow, calling the
/// plugins the config asks for and then `extra` at the hook points; writes the run files; returns the report.
pub async fn run(
    config: &Config,
    plan: &Plan,
    options: &RunOptions,
    comm: &dyn Communicator,
    extra: Vec<Box<dyn Plugin>>,
) -> Result<report::Report, RunError> {
    let requests = storage::requests::snapshot();
    let mut plugins = plugins::from_config(config);
    plugins.extend(extra);
    let plugins = plugins.as_mut_slice();
    let training = config.workflow.train;
    let train = if training { Some(readers(config, plan, Split::Train, false).await?) } else { None };
    let eval = if plan.eval_epochs.count > 0 { Some(readers(config, plan, Split::Valid, false).await?) } else { None };
    let display = Display::new(options.progress);
    let console = Console::open(config, comm.rank(), options.console)?.around(display.clone());
    let what = if training { "Training" } else { "Checkpointing" };
    console.out(&format!("Running DLIO [{what}] with {} process(es)", comm.size()));
    report::save_config(config, &options.overrides, &options.source_name, comm.rank())?;
    plugins::call(plugins, Hook::Initialize(plan), comm, &display).await?;
    // DLIO's barrier at the end of its initialization: every rank has listed the dataset before any trains.
    if let Err(e) = comm.barrier() {
        if !e.interrupted {
            return Err(e.into());
        }
    }
    let step_thread_class = thread_class();
    if training {
        let local = comm.local_size().unwrap_or(1).min(comm.size());
        if let Some(warning) = report::page_cache_warning(config, comm.size(), local) {
            console.warn(&warning);
        }
    }
    let mut run = Loop::new(config, plan, options, comm, console, display);
    let mut result = match &train {
        Some(train) => {
            run.console.out(&format!(
                "Max steps per epoch: {} = {} * {} / {} / {} (samples per file * num files / batch size / comm size)",
                plan.train.steps_per_epoch,
                plan.dataset.samples_per_file,
                plan.train.files,
                plan.train.batch_size,
                comm.size()
            ));
            run.epochs(train, eval.as_ref(), plugins).await
        }
        None => run.checkpoint_only(plugins).await,
    };
    // A barrier given up on Ctrl-C (or the launcher's SIGTERM) ends the run as interrupted, keeping what it measured.
    let given_up = |e: &CommError| e.interrupted;
    if matches!(&result, Err(RunError::Comm(e)) if given_up(e))
        || matches!(&result, Err(RunError::Plugin(HookError { source: PluginError::Comm(e), .. })) if given_up(e))
    {
        result = Ok(());
    }
    let finalized = plugins::call(plugins, Hook::Finalize, comm, &run.display).await;
    if let (Ok(()), Err(e)) = (&result, finalized) {
        result = Err(e.into());
    }
    result?;
    let record = RankRecord {
        rank: comm.rank(),
        start: run.start,
        end: Local::now(),
        epochs: run.epochs,
        latency: run.latency,
        interrupted: options.cancel.is_cancelled(),
        step_thread_class,
        drop_caches: run.drops,
        request_errors: storage::requests::since(&requests),
    };
    Ok(report::finish(config, plan, comm, &run.console, &record)?)
}

fn open_store(config: &Config) -> Result<Store, RunError> {
    let mut location = config.data_location().map_err(|e| RunError::Dataset(format!("dataset.data_folder: {e}")))?;
    if config.reader.odirect && location.scheme == storage::Scheme::File {
        location.scheme = storage::Scheme::Direct;
    }
    let options = StorageOptions::from_yaml(&config.storage.options())
        .map_err(|e| RunError::Dataset(format!("storage.storage_options: {e}")))?;
    Ok(storage::open_shared(&location.to_string(), &options)?)
}

/// Opens the dataset, lists a split's files (sorted by name, cut to the configured count: DLIO's rule) and builds
/// its readers; `with_data` hands the samples' bytes to the consumer.
pub async fn readers(config: &Config, plan: &Plan, split: Split, with_data: bool) -> Result<Arc<Readers>, RunError> {
    let d = &config.dataset;
    // DLIO's synthetic reader opens nothing: its phase never touches a store.
    let store = &if d.format == Format::Synthetic {
        storage::open("memory://", &StorageOptions::new())?
    } else {
        open_store(config)?
    };
    let (wanted, subfolders) = match split {
        Split::Train => (d.num_files_train, d.num_subfolders_train),
        Split::Valid => (d.num_files_eval, d.num_subfolders_eval),
    };
    let computed = || {
        let ext = layout::extension(config);
        (0..wanted).map(|i| layout::file_key(split, &d.file_prefix, i, wanted, subfolders, &ext)).collect::<Vec<_>>()
    };
    let files = if d.format == Format::Synthetic {
        // DLIO's synthetic reader never opens a file.
        computed()
    } else if d.skip_listing {
        // The names DLIO's layout gives, in the order a listing gives them, so the access order is the same.
        let mut files = computed();
        sort_listed(&mut files);
        check_computed(store, &files, d.listing_validation_interval, split).await?;
        files
    } else {
        let ext = format!(".{}", layout::extension(config));
        let mut found: Vec<String> = store
            .list(split.folder())
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(&ext) && !k.starts_with("index/"))
            .collect();
        sort_listed(&mut found);
        if (found.len() as u64) < wanted {
            return Err(RunError::Dataset(format!(
                "{}: found {} '*{ext}' files, dataset.num_files_{} asks for {wanted}; generate the dataset first \
                 (dl-driver generate, or workflow.generate_data: True)",
                store.uri().join(split.folder()),
                found.len(),
                if split == Split::Train { "train" } else { "eval" },
            )));
        }
        found.truncate(usize::try_from(wanted).unwrap_or(usize::MAX));
        found
    };
    let r = &config.reader;
    let threads = usize::try_from(r.read_threads.max(1)).unwrap_or(1);
    let spec = ReaderSpec {
        store: store.clone(),
        files,
        format: d.format,
        samples_per_file: plan.dataset.samples_per_file,
        read_threads: threads,
        prefetch: usize::try_from(r.prefetch_size.max(1)).unwrap_or(1),
        transfer: r.transfer_size.and_then(|t| usize::try_from(t).ok()),
        whole_files: r.read_type == ReadType::Memory,
        with_data,
        preprocess: Duration::from_secs_f64(r.preprocess_time.mean().max(0.0)),
    };
    Ok(Readers::new(spec))
}

/// A split's files in DLIO's order: by file name, then by path.
fn sort_listed(files: &mut [String]) {
    files.sort_by(|a, b| (a.rsplit('/').next(), a).cmp(&(b.rsplit('/').next(), b)));
}

/// `dataset.listing_validation_interval`: with `skip_listing`, every `interval`-th computed file and the last must
/// exist before training starts (0 checks none).
async fn check_computed(store: &Store, files: &[String], interval: u64, split: Split) -> Result<(), RunError> {
    let Ok(step) = usize::try_from(interval) else { return Ok(()) };
    if step == 0 || files.is_empty() {
        return Ok(());
    }
    let last = files.len() - 1;
    for key in files.iter().step_by(step).chain(std::iter::once(&files[last])) {
        if !store.exists(key).await? {
            return Err(RunError::Dataset(format!(
                "{}: missing (dataset.skip_listing computes the {} files' names; \
                 dataset.listing_validation_interval {interval} checks every {interval}th): generate the dataset first",
                store.uri().join(key),
                if split == Split::Train { "train" } else { "eval" },
            )));
        }
    }
    Ok(())
}

/// Draws a non-negative duration in seconds from `dist` (the absolute value of the draw, as DLIO sleeps).
pub fn draw(dist: &Distribution, rng: &mut Rng) -> f64 {
    let normal = |rng: &mut Rng| {
        // Box-Muller.
        let u1 = 1.0 - rng.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * rng.next_f64()).cos()
    };
    let value = match *dist {
        Distribution::Constant(v) => v,
        Distribution::Normal { mean, stdev } => mean + stdev * normal(rng),
        Distribution::Uniform { min, max } => min + (max - min) * rng.next_f64(),
        Distribution::Exponential { scale } => -scale * (1.0 - rng.next_f64()).ln(),
        Distribution::Gamma { shape, scale } => {
            // Marsaglia and Tsang; shape < 1 boosted by U^(1/shape).
            let (k, boost) = if shape < 1.0 { (shape + 1.0, rng.next_f64().powf(1.0 / shape)) } else { (shape, 1.0) };
            let d = k - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let x = normal(rng);
                let v = (1.0 + c * x).powi(3);
                if v > 0.0 && (1.0 - rng.next_f64()).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                    break d * v * scale * boost;
                }
            }
        }
        Distribution::Poisson { lam } if lam < 30.0 => {
            // Knuth.
            let limit = (-lam).exp();
            let (mut k, mut p) = (0.0, rng.next_f64());
            while p > limit {
                k += 1.0;
                p *= rng.next_f64();
            }
            k
        }
        Distribution::Poisson { lam } => (lam + lam.sqrt() * normal(rng)).round().max(0.0),
    };
    value.abs()
}

/// The loop's state.
struct Loop<'a> {
    config: &'a Config,
    plan: &'a Plan,
    options: &'a RunOptions,
    comm: &'a dyn Communicator,
    console: Console,
    rng: Rng,
    start: DateTime<Local>,
    epochs: Vec<EpochRecord>,
    latency: StageLatencies,
    progress: Arc<Progress>,
    /// Where the training bar draws, and the plugins' bars below it.
    display: Display,
    /// `workflow.drop_caches`: the drops so far.
    drops: Option<DropCachesRecord>,
}

/// Counters the progress bar reads, and the bar ([`crate::progress`]; hidden unless asked and on a terminal).
#[derive(Debug)]
struct Progress {
    steps: AtomicU64,
    samples: AtomicU64,
    bytes: AtomicU64,
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// The training bar, when the run trains (a checkpoint-only run draws only its checkpoints' bars).
    fn new(display: &Display, training: bool, steps: u64) -> Self {
        Self {
            steps: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bar: if training {
                display.bar(steps, crate::progress::TRAINING)
            } else {
                indicatif::ProgressBar::hidden()
            },
        }
    }
}

/// A point in time, on the wall clock (for the run files) and the monotonic one (for durations).
#[derive(Debug, Clone, Copy)]
struct Stamp {
    wall: DateTime<Local>,
    at: Instant,
}

impl Stamp {
    fn now() -> Self {
        Self { wall: Local::now(), at: Instant::now() }
    }
}

/// A block being measured.
struct OpenBlock {
    start: Stamp,
    steps: Vec<StepTimes>,
    bytes_read: u64,
}

impl OpenBlock {
    fn new(start: Stamp) -> Self {
        Self { start, steps: Vec::new(), bytes_read: 0 }
    }

    fn add(&mut self, times: StepTimes, bytes: u64) {
        self.steps.push(times);
        self.bytes_read += bytes;
    }

    /// Ends the block at `end`.
    fn close(self, config: &Config, batch: u64, end: Stamp) -> BlockRecord {
        let duration = end.at.saturating_duration_since(self.start.at).as_secs_f64();
        let m = &config.output.metric;
        let (au, throughput) = block_metrics(&self.steps, duration, batch, m.exclude_start_steps, m.exclude_end_steps);
        BlockRecord {
            start: self.start.wall,
            end: end.wall,
            duration,
            steps: self.steps,
            au,
            throughput,
            bytes_read: self.bytes_read,
        }
    }
}

/// One epoch's metric blocks, as DLIO's `start_block` / `end_block` around step checkpoints: a step checkpoint
/// closes the open block where the checkpoint starts, and the next block opens when the checkpoint has ended, before
/// the next step begins. A block's window so holds exactly the steps whose loads and compute it counts (AU <= 100%),
/// and blocks and checkpoints tile the epoch.
struct EpochBlocks {
    open: OpenBlock,
    closed: Vec<BlockRecord>,
}

impl EpochBlocks {
    fn start(at: Stamp) -> Self {
        Self { open: OpenBlock::new(at), closed: Vec::new() }
    }

    /// Counts a step in the open block.
    fn step(&mut self, times: StepTimes, bytes: u64) {
        self.open.add(times, bytes);
    }

    /// A checkpoint ran from `started` to `ended`: closes the open block at `started` and opens the next at
    /// `ended`. The block it closed.
    fn checkpoint(&mut self, config: &Config, batch: u64, started: Stamp, ended: Stamp) -> &BlockRecord {
        let closing = std::mem::replace(&mut self.open, OpenBlock::new(ended));
        self.closed.push(closing.close(config, batch, started));
        &self.closed[self.closed.len() - 1]
    }

    /// Ends the epoch at `end`: the open block is its last unless a checkpoint after the last step left it
    /// empty. The epoch's blocks.
    fn finish(mut self, config: &Config, batch: u64, end: Stamp) -> Vec<BlockRecord> {
        if !self.open.steps.is_empty() || self.closed.is_empty() {
            self.closed.push(self.open.close(config, batch, end));
        }
        self.closed
    }
}

impl<'a> Loop<'a> {
    /// A barrier across the ranks; false when it was given up because the run was interrupted.
    fn barrier(&self) -> Result<bool, RunError> {
        match self.comm.barrier() {
            Ok(()) => Ok(true),
            Err(e) if e.interrupted => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn new(
        config: &'a Config,
        plan: &'a Plan,
        options: &'a RunOptions,
        comm: &'a dyn Communicator,
        console: Console,
        display: Display,
    ) -> Self {
        Self {
            config,
            plan,
            options,
            comm,
            console,
            rng: Rng::derive(config.train.seed, 0, comm.rank(), PURPOSE_COMPUTE),
            start: Local::now(),
            epochs: Vec::new(),
            latency: StageLatencies::default(),
            progress: Arc::new(Progress::new(&display, config.workflow.train, plan.train.steps_per_epoch)),
            display,
            drops: None,
        }
    }

    /// `workflow.drop_caches`: drops the page cache of the split's files, outside the measured steps, then waits
    /// for every rank (no rank reads while another drops).
    fn drop_caches(&mut self, readers: &Readers) -> Result<(), RunError> {
        let start = Instant::now();
        let (store, files) = (readers.spec().store.clone(), readers.spec().files.clone());
        let how = tokio::task::block_in_place(|| store.drop_page_cache(&files))?;
        self.comm.barrier()?;
        let seconds = start.elapsed().as_secs_f64();
        self.console.out(&format!("Dropped the page cache ({how}) in {seconds:.3} s"));
        let drops = self.drops.get_or_insert(DropCachesRecord { how, times: 0, seconds: 0.0 });
        drops.times += 1;
        drops.seconds += seconds;
        Ok(())
    }

    fn sampler(&self, split: Split) -> Sampler {
        let (phase, r) = (if split == Split::Train { &self.plan.train } else { &self.plan.eval }, &self.config.reader);
        Sampler {
            files: phase.files,
            samples_per_file: self.plan.dataset.samples_per_file,
            rank: self.comm.rank(),
            world_size: self.comm.size(),
            batch_size: phase.batch_size,
            steps_per_epoch: phase.steps_per_epoch,
            policy: ShufflePolicy {
                file: r.file_shuffle,
                sample: r.sample_shuffle,
                seed: self.config.train.seed,
                seed_change_epoch: self.config.train.seed_change_epoch,
            },
        }
    }

    /// Epoch loop; returns early (Ok) when cancelled.
    async fn epochs(
        &mut self,
        train: &Arc<Readers>,
        eval: Option<&Arc<Readers>>,
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<(), RunError> {
        let ticker = self.options.progress.then(|| tokio::spawn(tick(Arc::clone(&self.progress))));
        let result = self.epochs_inner(train, eval, plugins).await;
        if let Some(t) = ticker {
            t.abort();
            self.progress.bar.finish_and_clear();
        }
        result
    }

    async fn epochs_inner(
        &mut self,
        train: &Arc<Readers>,
        eval: Option<&Arc<Readers>>,
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<(), RunError> {
        let sampler = self.sampler(Split::Train);
        let steps = self.plan.train.steps_per_epoch;
        let batch = self.plan.train.batch_size;
        let mut global_step = 0;
        for epoch in 1..=self.plan.train.epochs {
            if self.options.cancel.is_cancelled() {
                return Ok(());
            }
            plugins::call(plugins, Hook::BeforeEpoch(epoch), self.comm, &self.display).await?;
            if self.config.workflow.drop_caches {
                self.drop_caches(train)?;
            }
            let epoch_start = (Local::now(), Instant::now());
            self.console.out(&format!("Starting epoch {epoch}: {steps} steps expected"));
            self.progress.steps.store(0, Ordering::Relaxed);
            self.progress.bar.reset();
            self.progress.bar.set_length(steps);
            self.progress.bar.set_prefix(epoch.to_string());
            let order = Arc::new(sampler.epoch(epoch));
            let mut pipeline = Pipeline::start(train, &order, batch, steps);
            let mut checkpoints = Vec::new();
            let mut blocks = EpochBlocks::start(Stamp::now());
            self.console.out("Starting block 1");
            for step in 1..=steps {
                global_step += 1;
                let at = StepPoint { epoch, step, global_step };
                let Some((times, bytes, saved)) =
                    self.step(&mut pipeline, self.config.train.computation_time, true, at, plugins).await?
                else {
                    break;
                };
                blocks.step(times, bytes);
                if let Some(first) = saved.first() {
                    let started = Stamp { wall: first.start, at: first.started };
                    let number = blocks.closed.len() + 1;
                    self.log_block(blocks.checkpoint(self.config, batch, started, Stamp::now()), epoch, number);
                    self.add_checkpoints(&mut checkpoints, number, saved);
                    if step < steps {
                        self.console.out(&format!("Starting block {}", blocks.closed.len() + 1));
                    }
                }
            }
            let before = blocks.closed.len();
            let blocks = blocks.finish(self.config, batch, Stamp::now());
            if let Some(b) = blocks.get(before) {
                self.log_block(b, epoch, before + 1);
            }
            drop(pipeline);
            // DLIO's barriers around the end of an epoch's training and its epoch checkpoint.
            self.barrier()?;
            let saved = plugins::call(plugins, Hook::AfterEpoch(epoch), self.comm, &self.display).await?;
            self.barrier()?;
            self.add_checkpoints(&mut checkpoints, blocks.len(), saved);
            let weights = |f: fn(&BlockRecord) -> f64| blocks.iter().map(|b| (f(b), b.steps.len())).collect::<Vec<_>>();
            let (au, throughput) = (step_weighted(&weights(|b| b.au)), step_weighted(&weights(|b| b.throughput)));
            let done: usize = blocks.iter().map(|b| b.steps.len()).sum();
            let duration = epoch_start.1.elapsed().as_secs_f64();
            self.console.out(&format!("Ending epoch {epoch} - {done} steps completed in {duration:.2} s"));
            self.progress.bar.println(format!(
                "epoch {epoch}: {done} steps in {duration:.2} s, {:.0} samples/s, AU {au:.2}%",
                throughput * self.comm.size() as f64
            ));
            let mut record = EpochRecord {
                epoch,
                start: epoch_start.0,
                end: Local::now(),
                duration,
                blocks,
                eval: None,
                au,
                throughput,
                digest: order.digest.clone(),
                eval_digest: None,
                repeated_samples: order.repeated,
                checkpoints,
            };
            if let Some(eval) =
                eval.filter(|_| self.plan.eval_epochs.contains(epoch) && !self.options.cancel.is_cancelled())
            {
                let (block, digest) = self.evaluate(eval, epoch, plugins).await?;
                // An evaluation cut off before its first step measured nothing.
                if !block.steps.is_empty() {
                    record.eval = Some(block);
                    record.eval_digest = Some(digest);
                }
            }
            // An epoch cut off by Ctrl-C before its first step measured nothing: it is not an epoch of the result.
            if done > 0 || !self.options.cancel.is_cancelled() {
                self.epochs.push(record);
            }
        }
        Ok(())
    }

    /// Logs and keeps the checkpoints a hook reported, after block `block`.
    fn add_checkpoints(
        &mut self,
        into: &mut Vec<(usize, CheckpointRecord)>,
        block: usize,
        records: Vec<CheckpointRecord>,
    ) {
        for r in records {
            let gib = r.bytes as f64 / f64::from(1u32 << 30);
            let rate = if r.duration > 0.0 { gib / r.duration } else { 0.0 };
            self.progress.bar.println(format!(
                "checkpoint {} {}: {gib:.3} GiB in {:.2} s ({rate:.2} GiB/s)",
                r.kind, r.name, r.duration
            ));
            self.console.out(&format!(
                "Ending {} checkpoint {} ({:.3} GiB in {:.2} s) for epoch {}",
                r.kind,
                r.name,
                r.bytes as f64 / f64::from(1u32 << 30),
                r.duration,
                r.epoch
            ));
            self.latency.0[6].add(&r.part_latency);
            into.push((block, r));
        }
    }

    /// The checkpoint-only workflow: the plugins' write and read loops, reported as epoch 1's checkpoints.
    async fn checkpoint_only(&mut self, plugins: &mut [Box<dyn Plugin>]) -> Result<(), RunError> {
        let (start, started) = (Local::now(), Instant::now());
        let records = plugins::call(plugins, Hook::CheckpointOnly, self.comm, &self.display).await?;
        let mut checkpoints = Vec::new();
        let (mut saves, mut loads) = (0, 0);
        for r in records {
            let n = if r.kind == "save" { &mut saves } else { &mut loads };
            *n += 1;
            let number = *n;
            self.add_checkpoints(&mut checkpoints, number, vec![r]);
        }
        self.epochs.push(EpochRecord {
            epoch: 1,
            start,
            end: Local::now(),
            duration: started.elapsed().as_secs_f64(),
            blocks: Vec::new(),
            eval: None,
            au: 0.0,
            throughput: 0.0,
            digest: String::new(),
            eval_digest: None,
            repeated_samples: 0,
            checkpoints,
        });
        Ok(())
    }

    fn log_block(&self, b: &BlockRecord, epoch: u64, number: usize) {
        self.console.out(&format!("Ending block {number} - {} steps completed in {:.2} s", b.steps.len(), b.duration));
        self.console
            .out(&format!("Epoch {epoch} - Block {number} [Training] Accelerator Utilization [AU] (%): {:.4}", b.au));
        self.console.out(&format!(
            "Epoch {epoch} - Block {number} [Training] Throughput (samples/second): {:.4}",
            b.throughput * self.comm.size() as f64
        ));
    }

    async fn evaluate(
        &mut self,
        eval: &Arc<Readers>,
        epoch: u64,
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<(BlockRecord, String), RunError> {
        let (steps, batch) = (self.plan.eval.steps_per_epoch, self.plan.eval.batch_size);
        self.console.out(&format!("Starting eval - {steps} steps expected"));
        self.progress.steps.store(0, Ordering::Relaxed);
        self.progress.bar.reset();
        self.progress.bar.set_length(steps);
        self.progress.bar.set_prefix(format!("{epoch} (eval)"));
        let order = Arc::new(self.sampler(Split::Valid).epoch(epoch));
        let mut pipeline = Pipeline::start(eval, &order, batch, steps);
        let mut block = OpenBlock::new(Stamp::now());
        for step in 1..=steps {
            let at = StepPoint { epoch, step, global_step: 0 };
            let Some(times) = self.step(&mut pipeline, self.config.evaluation.eval_time, false, at, plugins).await?
            else {
                break;
            };
            block.add(times.0, times.1);
        }
        let b = block.close(self.config, batch, Stamp::now());
        self.console.out(&format!("Ending eval - {} steps completed in {:.2} s", b.steps.len(), b.duration));
        self.console.out(&format!("Epoch {epoch} [Eval] Accelerator Utilization [AU] (%): {:.4}", b.au));
        self.console.out(&format!(
            "Epoch {epoch} [Eval] Throughput (samples/second): {:.4}",
            b.throughput * self.comm.size() as f64
        ));
        Ok((b, order.digest.clone()))
    }

    /// One step; `None` when cancelled.
    async fn step(
        &mut self,
        pipeline: &mut Pipeline,
        compute: Distribution,
        training: bool,
        at: StepPoint,
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<Option<(StepTimes, u64, Vec<CheckpointRecord>)>, RunError> {
        let cancel = self.options.cancel.clone();
        let t0 = Instant::now();
        let batch = tokio::select! {
            b = pipeline.next() => b,
            () = cancel.cancelled() => return Ok(None),
        };
        let batch = batch
            .ok_or_else(|| RunError::Dataset("the reader pipeline ended before the epoch's last step".into()))??;
        let t1 = Instant::now();
        for t in &batch.times {
            self.latency.record(0, t.first_byte);
            self.latency.record(1, t.read);
            self.latency.record(2, t.decode);
        }
        if training {
            plugins::call(plugins, Hook::BeforeStep(at), self.comm, &self.display).await?;
        }
        let seconds = draw(&compute, &mut self.rng);
        let t_compute = Instant::now();
        let wanted = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        if seconds > 0.0 {
            let deadline =
                t_compute.checked_add(wanted).unwrap_or_else(|| t_compute + Duration::from_secs(86_400 * 365));
            // On this thread, out of the runtime's way: a timer wakeup on a worker waits behind whatever reader
            // task (decoding) holds it, and a hop to the blocking pool adds a wakeup the loaded CPUs delay.
            if !tokio::task::block_in_place(|| wait_until(deadline, &cancel)) {
                return Ok(None);
            }
        }
        let t2 = Instant::now();
        // DLIO's per-step barrier, which emulates the gradient all-reduce.
        if training && !self.barrier()? {
            return Ok(None);
        }
        let t3 = Instant::now();
        self.latency.record(3, t1 - t0);
        self.latency.record(4, t2 - t_compute);
        if seconds > 0.0 {
            self.latency.record(7, (t2 - t_compute).saturating_sub(wanted));
        }
        if training {
            self.latency.record(5, t3 - t2);
        }
        let saved = if training {
            plugins::call(plugins, Hook::AfterStep(at), self.comm, &self.display).await?
        } else {
            Vec::new()
        };
        self.progress.steps.fetch_add(1, Ordering::Relaxed);
        self.progress.samples.fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        self.progress.bytes.fetch_add(batch.bytes_read, Ordering::Relaxed);
        let times = StepTimes {
            load: (t1 - t0).as_secs_f64(),
            proc: (t2 - t0).as_secs_f64(),
            compute: (t2 - t_compute).as_secs_f64(),
        };
        Ok(Some((times, batch.bytes_read, saved)))
    }
}

/// For the `on_thread_start` of a training run's runtime: its threads (tokio's workers and blocking pool: they read,
/// decode and write) run in Linux's `SCHED_IDLE` class, so the step loop's thread (outside the runtime, a higher class)
/// preempts them the moment its compute deadline comes even when they keep every CPU busy (a nice value is not
/// enough: a woken thread then waits for the running one's slice, up to ~4 ms). Only the calling thread changes.
pub fn lower_runtime_thread_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on thread 0 (the caller) with a valid parameter only changes its scheduling class.
    #[allow(unsafe_code)]
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param);
    }
}

/// For the step loop's thread of a training run: moves the calling thread to Linux's `SCHED_FIFO` class at the lowest
/// real-time priority, so no normal-class thread (another process's, the interpreter's) can delay the end of an
/// emulated compute; the thread sleeps between computes and spins at most [`SPIN_BEFORE_DEADLINE`], and the kernel's
/// real-time throttling keeps a share of every CPU for the rest. Without the privilege (`CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO`) the thread stays in the normal class ([`thread_class`] tells which).
pub fn raise_step_thread_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on thread 0 (the caller) with a valid parameter only changes its scheduling class.
    #[allow(unsafe_code)]
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param);
    }
}

/// The calling thread's scheduling class: "fifo", "idle" or "normal" (any other).
pub fn thread_class() -> &'static str {
    // SAFETY: sched_getscheduler on thread 0 (the caller) only reads its policy.
    #[allow(unsafe_code)]
    let policy = unsafe { libc::sched_getscheduler(0) };
    match policy {
        libc::SCHED_FIFO => "fifo",
        libc::SCHED_IDLE => "idle",
        _ => "normal",
    }
}

/// How long before a compute deadline [`wait_until`] stops sleeping and spins: covers the wakeup latency of a
/// sleeping thread on CPUs the readers keep busy (benches/compute_exactness.sh measures it).
const SPIN_BEFORE_DEADLINE: Duration = Duration::from_millis(1);

/// Blocks this thread until `deadline`: sleeps (in slices that notice `cancel`) until [`SPIN_BEFORE_DEADLINE`]
/// before it, then spins. False when cancelled first.
fn wait_until(deadline: Instant, cancel: &Cancel) -> bool {
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match left.checked_sub(SPIN_BEFORE_DEADLINE) {
            Some(sleep) if !sleep.is_zero() => std::thread::sleep(sleep.min(SLICE)),
            _ => break,
        }
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
    true
}

/// Moves the bar to the epoch's step and puts this rank's samples/s and MiB/s (over the last half second) in its
/// message, twice a second.
async fn tick(progress: Arc<Progress>) {
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (samples, bytes) = (progress.samples.load(Ordering::Relaxed), progress.bytes.load(Ordering::Relaxed));
        let seconds = last.0.elapsed().as_secs_f64();
        progress.bar.set_position(progress.steps.load(Ordering::Relaxed));
        progress.bar.set_message(format!(
            "{:.0} samples/s  {:.1} MiB/s",
            samples.saturating_sub(last.1) as f64 / seconds,
            bytes.saturating_sub(last.2) as f64 / seconds / f64::from(1u32 << 20)
        ));
        last = (Instant::now(), samples, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest, Strategy};

    /// One simulated step: load, compute, barrier and hook times (µs), and the checkpoint after it (µs), if any.
    type SimStep = (u64, u64, u64, u64, Option<u64>);

    fn sim_step() -> impl Strategy<Value = SimStep> {
        (0..5_000u64, 0..5_000u64, 0..500u64, 0..500u64, prop::option::weighted(0.2, 0..50_000u64))
    }

    proptest! {
        /// Defect: a block after a step checkpoint started after its first step's compute, which it still counted
        /// (AU up to 23,017%). Driven as the epoch loop drives them, on a simulated clock, blocks and checkpoints tile
        /// the epoch, every block holds the steps it counts, and no AU exceeds 100%, whatever the schedule.
        #[test]
        fn blocks_tile_the_epoch_and_au_never_exceeds_100(
            steps in prop::collection::vec(sim_step(), 1..40),
            eval in prop::collection::vec((0..3_000u64, 0..3_000u64), 0..10),
            exclude in (0..3u64, 0..3u64),
        ) {
            let mut config = Config::default();
            config.output.metric.exclude_start_steps = exclude.0;
            config.output.metric.exclude_end_steps = exclude.1;
            let origin = Stamp::now();
            let mut clock = 0u64;
            let at = |us: u64| Stamp {
                wall: origin.wall + chrono::Duration::microseconds(us.cast_signed()),
                at: origin.at + Duration::from_micros(us),
            };
            let secs = |us: u64| us as f64 / 1e6;
            let mut blocks = EpochBlocks::start(at(clock));
            let mut checkpoints = Vec::new();
            for &(load, compute, barrier, hook, checkpoint) in &steps {
                let times = StepTimes { load: secs(load), proc: secs(load + compute), compute: secs(compute) };
                clock += load + compute + barrier + hook;
                blocks.step(times, 1);
                if let Some(d) = checkpoint {
                    let started = clock;
                    clock += d;
                    blocks.checkpoint(&config, 4, at(started), at(clock));
                    checkpoints.push((started, clock));
                }
            }
            let end = clock;
            let blocks = blocks.finish(&config, 4, at(end));
            let mut eval_block = OpenBlock::new(at(clock));
            for &(load, compute) in &eval {
                clock += load + compute;
                eval_block.add(StepTimes { load: secs(load), proc: secs(load + compute), compute: secs(compute) }, 1);
            }
            let eval_block = eval_block.close(&config, 1, at(clock));

            prop_assert_eq!(blocks.iter().map(|b| b.steps.len()).sum::<usize>(), steps.len());
            prop_assert!(blocks.iter().all(|b| !b.steps.is_empty()), "no empty block");
            for b in blocks.iter().chain([&eval_block]) {
                prop_assert!(b.au <= 100.0 + 1e-9, "AU {} of a block of {} steps", b.au, b.steps.len());
            }
            // The windows, in order: block, checkpoint, block, ..., the epoch's end; then the evaluation.
            let mut edges = vec![origin.wall];
            for (i, b) in blocks.iter().enumerate() {
                prop_assert_eq!(b.start, *edges.last().unwrap());
                let next = checkpoints.get(i).map_or(at(end).wall, |c| at(c.1).wall);
                if let Some(c) = checkpoints.get(i) {
                    prop_assert_eq!(b.end, at(c.0).wall);
                } else {
                    prop_assert_eq!(b.end, at(end).wall);
                }
                edges.push(next);
            }
            prop_assert_eq!(*edges.last().unwrap(), at(end).wall);
            prop_assert_eq!(eval_block.start, at(end).wall);
            let covered: f64 = blocks.iter().map(|b| b.duration).sum::<f64>()
                + checkpoints.iter().map(|c| secs(c.1 - c.0)).sum::<f64>();
            prop_assert!((covered - secs(end)).abs() < 1e-9);
        }
    }

    #[test]
    fn draws_follow_their_distributions() {
        let mut rng = Rng::new(1);
        let mean = |d: Distribution, rng: &mut Rng| (0..20_000).map(|_| draw(&d, rng)).sum::<f64>() / 20_000.0;
        assert_eq!(draw(&Distribution::Constant(0.25), &mut rng), 0.25);
        assert_eq!(
            draw(&Distribution::Constant(-0.25), &mut rng),
            0.25,
            "negative draws are slept as their absolute value"
        );
        for (d, expected) in [
            (Distribution::Normal { mean: 1.0, stdev: 0.1 }, 1.0),
            (Distribution::Uniform { min: 0.2, max: 0.4 }, 0.3),
            (Distribution::Exponential { scale: 0.5 }, 0.5),
            (Distribution::Gamma { shape: 2.0, scale: 0.5 }, 1.0),
            (Distribution::Gamma { shape: 0.5, scale: 2.0 }, 1.0),
            (Distribution::Poisson { lam: 4.0 }, 4.0),
            (Distribution::Poisson { lam: 100.0 }, 100.0),
        ] {
            let m = mean(d, &mut rng);
            assert!((m - expected).abs() < expected * 0.03, "{d:?}: mean {m}");
        }
    }
}
