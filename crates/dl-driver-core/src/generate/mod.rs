//! Dataset generation in DLIO's layouts and formats: shapes drawn as DLIO draws them, files striped over ranks,
//! bytes produced on worker threads and streamed to storage with bounded memory; files appear only when complete.

pub use crate::layout::{self, shapes};
pub use crate::sink::data;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::config::Config;
use crate::formats;
use crate::sink::{ChannelSink, Sink, HANDOFF};
use crate::storage::{self, BufferPool, LocalFiles, StorageError, StorageOptions, Store};
use layout::FileSpec;

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The config cannot be generated (bad location or storage options).
    #[error("{0}")]
    Config(String),
    /// A file could not be encoded.
    #[error("{key}: {message}")]
    Format { key: String, message: String },
}

/// Which part of the dataset to write, and how.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub rank: u64,
    pub world_size: u64,
    /// Keep files that already exist (they are complete: files only ever appear whole).
    pub skip_existing: bool,
    /// Files produced at once (each on its own thread).
    pub threads: usize,
    /// Print a progress line to stderr.
    pub progress: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self { rank: 0, world_size: 1, skip_existing: false, threads, progress: false }
    }
}

/// What a generation did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateReport {
    pub files_written: u64,
    pub files_skipped: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Generates this rank's share of the dataset of `config`.
pub async fn generate(config: &Config, options: &GenerateOptions) -> Result<GenerateReport, GenerateError> {
    let started = Instant::now();
    let location = config.data_location().map_err(|e| GenerateError::Config(format!("dataset.data_folder: {e}")))?;
    let storage_options = StorageOptions::from_yaml(&config.storage.options())
        .map_err(|e| GenerateError::Config(format!("storage.storage_options: {e}")))?;
    let store = storage::open_shared(&location.to_string(), &storage_options)?;
    // Rank 0 creates DLIO's folders, as DLIO's generator does; object stores have no folders, and DLIO lists an
    // empty prefix there as an empty split, so nothing is written for them.
    if let (0, Some(local)) = (options.rank, store.local()) {
        for folder in layout::dataset_folders(config) {
            local.create_dir(&folder)?;
        }
    }
    let files = layout::dataset_files(config, options.rank, options.world_size);
    let existing: HashSet<String> =
        if options.skip_existing { store.list("").await?.into_iter().map(|o| o.key).collect() } else { HashSet::new() };
    let (todo, skipped): (Vec<FileSpec>, Vec<FileSpec>) = files.into_iter().partition(|f| !existing.contains(&f.key));
    let total_files = todo.len() as u64;
    let progress = Arc::new(Progress::default());
    let pool = BufferPool::new(HANDOFF);
    let bar = crate::progress::Display::new(options.progress).bar(total_files, crate::progress::GENERATION);
    let ticker = options.progress.then(|| tokio::spawn(Progress::tick(Arc::clone(&progress), bar.clone())));
    let config = Arc::new(config.clone());
    // After a failure no new file starts, but the files in progress run to their end (complete, or aborted with
    // their temporary data removed) before the error is returned: dropping them midway would leave that to chance.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<(), GenerateError>> = futures::stream::iter(todo)
        .map(|spec| {
            let (config, progress, pool, failed) =
                (Arc::clone(&config), Arc::clone(&progress), Arc::clone(&pool), &failed);
            let store = &store;
            async move {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let result = write_one(store, config, spec, progress, pool).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                result
            }
        })
        .buffer_unordered(options.threads.max(1))
        .collect()
        .await;
    let result = results.into_iter().find(Result::is_err).unwrap_or(Ok(()));
    if let Some(ticker) = ticker {
        ticker.abort();
        progress.show(&bar);
        bar.finish();
    }
    result?;
    Ok(GenerateReport {
        files_written: total_files,
        files_skipped: skipped.len() as u64,
        bytes_written: progress.bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Produces one file on a blocking thread and uploads it as it is produced (local files: writes it from that
/// thread); companions first, the file last.
async fn write_one(
    store: &Store,
    config: Arc<Config>,
    spec: FileSpec,
    progress: Arc<Progress>,
    pool: Arc<BufferPool>,
) -> Result<(), GenerateError> {
    let seed = data::mix(config.train.seed ^ data::mix(spec.index) ^ data::mix(spec.split as u64 + 1));
    if let Some(local) = store.local() {
        let key = spec.key.clone();
        return tokio::task::spawn_blocking(move || write_local(&local, &config, &spec, seed, &progress))
            .await
            .map_err(|e| GenerateError::Format { key, message: e.to_string() })?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let key = spec.key.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let d = &config.dataset;
        let mut bytes = data::SampleBytes::new(seed, d.compress_ratio, d.dedup_ratio);
        let mut sink = ChannelSink::new(tx, pool);
        let companions = formats::write_file(&config, &spec, &mut bytes, &mut sink)?;
        sink.flush()?;
        Ok::<_, io::Error>(companions)
    });
    let mut writer = store.writer(&key).await?;
    while let Some(chunk) = rx.recv().await {
        let len = chunk.len() as u64;
        if let Err(e) = writer.write(chunk).await {
            drop(rx);
            let _ = producer.await;
            return Err(e.into());
        }
        progress.bytes.fetch_add(len, Ordering::Relaxed);
    }
    let outcome = producer.await.map_err(|e| GenerateError::Format { key: key.clone(), message: e.to_string() })?;
    let companions = match outcome {
        Ok(c) => c,
        Err(e) => {
            let _ = writer.abort().await;
            return Err(GenerateError::Format { key, message: e.to_string() });
        }
    };
    for companion in companions {
        store.put(&companion.key, Bytes::from(companion.bytes)).await?;
    }
    writer.finish().await?;
    progress.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Produces and writes one local file from the calling thread, each chunk written while it is in the CPU cache.
fn write_local(
    local: &LocalFiles,
    config: &Config,
    spec: &FileSpec,
    seed: u64,
    progress: &Progress,
) -> Result<(), GenerateError> {
    let d = &config.dataset;
    let mut bytes = data::SampleBytes::new(seed, d.compress_ratio, d.dedup_ratio);
    let mut writer = local.file_writer(&spec.key)?;
    let companions = match formats::write_file(config, spec, &mut bytes, &mut Counted { sink: &mut writer, progress }) {
        Ok(companions) => companions,
        Err(e) if writer.failed() => return Err(local.write_failed(&spec.key, &e).into()),
        Err(e) => return Err(GenerateError::Format { key: spec.key.clone(), message: e.to_string() }),
    };
    for companion in companions {
        let mut file = local.file_writer(&companion.key)?;
        file.write(&companion.bytes)
            .and_then(|()| file.finish(false).map(drop))
            .map_err(|e| local.write_failed(&companion.key, &e))?;
    }
    writer.finish(false).map_err(|e| local.write_failed(&spec.key, &e))?;
    progress.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A sink that counts the bytes passing into the progress line.
struct Counted<'a> {
    sink: &'a mut dyn Sink,
    progress: &'a Progress,
}

impl Sink for Counted<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.sink.write(data)?;
        self.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn fill(&mut self, len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        let progress = self.progress;
        self.sink.fill(len, &mut |buf| {
            produce(buf);
            progress.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        })
    }
}

/// Files and bytes done, for the progress line.
#[derive(Default)]
struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

impl Progress {
    async fn tick(progress: Arc<Self>, bar: indicatif::ProgressBar) {
        loop {
            progress.show(&bar);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Files written on the bar; MiB and MiB/s in its message.
    fn show(&self, bar: &indicatif::ProgressBar) {
        let started = *self.started.get_or_init(Instant::now);
        let mib = self.bytes.load(Ordering::Relaxed) as f64 / 1_048_576.0;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(self.files.load(Ordering::Relaxed));
        bar.set_message(format!("{mib:.0} MiB, {:.0} MiB/s", mib / secs));
    }
}
