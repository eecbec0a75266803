//! The reader pipeline: `read_threads` sample reads in flight through the storage layer, each a task on the runtime
//! (so decoding uses every core), delivered in the sampler's order as batches, `prefetch_size` batches ready ahead.
//! Reads go into page-aligned buffers from a pool that is reused for the whole run; a batch's bytes are copied into
//! one pooled batch buffer only when the consumer wants the data (Python), so assembling a batch allocates nothing
//! per sample, and the batch buffer returns to its process-wide pool when the consumer drops it (fresh memory costs a
//! page fault per 4 KiB: reading into it ran at a third of the page cache's speed). `reader.read_type: memory` reads
//! each file once per epoch and serves its samples from memory.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, OnceCell};

use crate::config::Format;
use crate::formats::read::{self, FileLayout};
use crate::sampler::{EpochOrder, SampleId};
use crate::storage::{AlignedBuf, BufferPool, OpenObject, StorageError, Store};

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Dataset(String),
}

/// What every reader of a phase shares.
#[derive(Debug)]
pub struct ReaderSpec {
    pub store: Store,
    /// Keys of the phase's files relative to the store, in global file order.
    pub files: Vec<String>,
    pub format: Format,
    pub samples_per_file: u64,
    pub read_threads: usize,
    pub prefetch: usize,
    /// Bytes per read request (`reader.transfer_size`).
    pub transfer: Option<usize>,
    /// `reader.read_type: memory`: read each file once per epoch.
    pub whole_files: bool,
    /// Copy each batch's sample bytes into the batch (for consumers of the data).
    pub with_data: bool,
    /// `reader.preprocess_time` (its mean): each reader sleeps this long per sample after reading it, as DLIO's
    /// readers do.
    pub preprocess: Duration,
}

/// Time spent per sample in each stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleTimes {
    pub first_byte: Duration,
    pub read: Duration,
    pub decode: Duration,
}

/// One batch, in the sampler's order.
#[derive(Debug)]
pub struct Batch {
    pub samples: Vec<SampleId>,
    /// Bytes read from storage for this batch.
    pub bytes_read: u64,
    /// Decoded payload bytes.
    pub decoded: u64,
    pub times: Vec<SampleTimes>,
    /// With `with_data`: the samples' bytes back to back, sample i at `spans[i]` (a pooled buffer: dropping the last
    /// reference hands it back for the next batch), and the layout of sample i's file at `layouts[i]` (what an hdf5
    /// sample's rows are).
    pub data: Option<bytes::Bytes>,
    pub spans: Vec<Range<usize>>,
    pub layouts: Vec<Arc<FileLayout>>,
}

/// Per-run state shared by the readers: file layouts (loaded once) and the buffer pool.
#[derive(Debug)]
pub struct Readers {
    spec: ReaderSpec,
    layouts: Mutex<HashMap<u64, Arc<OnceCell<Arc<FileLayout>>>>>,
    pool: Mutex<Vec<AlignedBuf>>,
}

/// A file's bytes, read by the first sample that needs them.
type SharedFile = Arc<OnceCell<Arc<AlignedBuf>>>;

/// A file read once for several samples (`read_type: memory`), dropped after its last sample of the epoch.
#[derive(Debug, Default)]
struct FileCache {
    /// File -> (bytes, samples of the epoch still to be served).
    files: Mutex<HashMap<u64, (SharedFile, u64)>>,
}

struct SampleOut {
    id: SampleId,
    /// With `with_data`: the sample's bytes at `payload` (several ranges back to back) and its file's layout.
    buf: Option<(AlignedBuf, Arc<FileLayout>)>,
    payload: Range<usize>,
    bytes_read: u64,
    decoded: u64,
    times: SampleTimes,
}

impl Readers {
    pub fn new(spec: ReaderSpec) -> Arc<Self> {
        Arc::new(Self { spec, layouts: Mutex::default(), pool: Mutex::default() })
    }

    pub fn spec(&self) -> &ReaderSpec {
        &self.spec
    }

    /// A read buffer: from the run's pool, or, for a consumer of the data (Python, whose epochs each make their own
    /// readers), from the process-wide one, so a new epoch does not fault in fresh read buffers again.
    fn take_buf(&self) -> AlignedBuf {
        if self.spec.with_data {
            return SAMPLE_BUFFERS.take();
        }
        self.pool.lock().expect("pool lock").pop().unwrap_or_else(|| AlignedBuf::with_capacity(0))
    }

    fn give_buf(&self, buf: AlignedBuf) {
        if self.spec.with_data {
            return SAMPLE_BUFFERS.give(buf);
        }
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.len() < self.spec.read_threads + self.spec.prefetch + 2 {
            pool.push(buf);
        }
    }

    fn key(&self, file: u64) -> Result<&str, PipelineError> {
        self.spec.files.get(usize::try_from(file).unwrap_or(usize::MAX)).map(String::as_str).ok_or_else(|| {
            PipelineError::Dataset(format!(
                "sample of file {file} requested, the phase has {} files",
                self.spec.files.len()
            ))
        })
    }

    fn format_error(&self, e: &io::Error) -> PipelineError {
        PipelineError::Format(format!("{}: {e}", self.spec.store.uri()))
    }

    /// The layout of `file`, loaded on first use.
    async fn layout(&self, file: u64) -> Result<Arc<FileLayout>, PipelineError> {
        let cell = Arc::clone(self.layouts.lock().expect("layout lock").entry(file).or_default());
        cell.get_or_try_init(|| self.load_layout(file)).await.cloned()
    }

    async fn load_layout(&self, file: u64) -> Result<Arc<FileLayout>, PipelineError> {
        let key = self.key(file)?;
        let store = &self.spec.store;
        let layout = match self.spec.format {
            Format::Synthetic => FileLayout::Nothing,
            Format::Tfrecord => {
                let (folder, name) = key.rsplit_once('/').unwrap_or(("", key));
                let split = folder.split('/').next().unwrap_or(folder);
                let index = format!("index/{split}/{name}.idx");
                match store.get(&index).await {
                    Ok(text) => FileLayout::Records(
                        read::parse_tfrecord_index(&text, &store.uri().join(&index).to_string())
                            .map_err(|e| self.format_error(&e))?,
                    ),
                    Err(e) if e.is_not_found() => {
                        let whole = store.get(key).await?;
                        FileLayout::Records(read::frame_tfrecords(&whole, key).map_err(|e| self.format_error(&e))?)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Format::IndexedBinary | Format::MmapIndexedBinary => {
                let (off, sz) = (format!("{key}.off.idx"), format!("{key}.sz.idx"));
                let (offsets, sizes) = futures::try_join!(store.get(&off), store.get(&sz))?;
                FileLayout::Records(read::indexed_ranges(&offsets, &sizes, key).map_err(|e| self.format_error(&e))?)
            }
            Format::Hdf5 => {
                let head = store.get_range(key, 0..HDF5_HEADER).await?;
                read::hdf5_rows(&head).unwrap_or(FileLayout::Whole)
            }
            Format::Npz | Format::Npy | Format::Csv | Format::Jpeg | Format::Png => FileLayout::Whole,
        };
        Ok(Arc::new(layout))
    }

    /// Reads and decodes one sample.
    async fn read_sample(self: Arc<Self>, id: SampleId, cache: Arc<FileCache>) -> Result<SampleOut, PipelineError> {
        let spf = self.spec.samples_per_file.max(1);
        let (file, index) = (id / spf, id % spf);
        let key = self.key(file)?.to_string();
        let layout = self.layout(file).await?;
        let mut times = SampleTimes::default();
        let started = Instant::now();
        let ranges = layout.ranges(index, &key).map_err(|e| self.format_error(&e))?;
        let format = self.spec.format;
        if self.spec.whole_files && *layout != FileLayout::Nothing {
            let (file_bytes, bytes_read) = cache.get(&self, file, &key, &mut times).await?;
            times.read = started.elapsed();
            let decode_started = Instant::now();
            let whole = 0..file_bytes.len() as u64;
            let spans = ranges.unwrap_or_else(|| std::iter::once(whole).collect());
            let mut decoded = 0;
            for r in &spans {
                let part = file_bytes.as_slice().get(r.start as usize..r.end as usize).ok_or_else(|| {
                    PipelineError::Format(format!("{key}: sample {index} lies past the end of the file"))
                })?;
                decoded += read::decode(format, part, &key).map_err(|e| self.format_error(&e))?;
            }
            times.decode = decode_started.elapsed();
            let buf = self.spec.with_data.then(|| {
                let mut b = self.take_buf();
                b.reserve_exact_discarding(spans.iter().map(|r| (r.end - r.start) as usize).sum());
                for r in &spans {
                    b.extend_from_slice(&file_bytes.as_slice()[r.start as usize..r.end as usize]);
                }
                (b, Arc::clone(&layout))
            });
            cache.release(file);
            let len = buf.as_ref().map_or(0, |(b, _)| b.len());
            return Ok(SampleOut { id, buf, payload: 0..len, bytes_read, decoded, times });
        }
        let requests = ranges.map_or_else(|| vec![None], |r| r.into_iter().map(Some).collect());
        let mut read = RangedRead::new(id, key, self.take_buf(), started, self.spec.with_data.then_some(layout));
        for range in requests {
            let buf = read.take_buf();
            let fetched = self.spec.store.fetch(&read.key, range, buf, self.spec.transfer).await?;
            read.absorb(&self, fetched)?;
        }
        Ok(read.finish(&self))
    }

    /// Reads and decodes consecutive samples of one batch: on local stores in one blocking call (no task hand-off
    /// per sample: small samples are dominated by it), elsewhere one request at a time.
    async fn read_chunk(
        self: Arc<Self>,
        ids: Vec<SampleId>,
        cache: Arc<FileCache>,
    ) -> Result<Vec<SampleOut>, PipelineError> {
        let preprocess = self.spec.preprocess * u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let local = if self.spec.whole_files { None } else { self.spec.store.local() };
        let Some(local) = local else {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(Arc::clone(&self).read_sample(id, Arc::clone(&cache)).await?);
            }
            if !preprocess.is_zero() {
                tokio::time::sleep(preprocess).await;
            }
            return Ok(out);
        };
        let spf = self.spec.samples_per_file.max(1);
        let mut planned = Vec::with_capacity(ids.len());
        for id in ids {
            let (file, index) = (id / spf, id % spf);
            let key = self.key(file)?.to_string();
            let layout = self.layout(file).await?;
            let ranges = layout.ranges(index, &key).map_err(|e| self.format_error(&e))?;
            planned.push((id, key, ranges, self.spec.with_data.then_some(layout)));
        }
        let this = Arc::clone(&self);
        let out = tokio::task::spawn_blocking(move || {
            // Consecutive samples of one file (the records of a batch) share one open of it.
            let mut open: Option<(String, OpenObject)> = None;
            planned
                .into_iter()
                .map(|(id, key, ranges, layout)| {
                    // The sample's read time and first byte include the open when it needed one.
                    let started = Instant::now();
                    let (opened, object) = match open.take() {
                        Some(same) if same.0 == key => same,
                        _ => (key.clone(), local.open_object(&key)?),
                    };
                    let mut read = RangedRead::new(id, key, this.take_buf(), started, layout);
                    for range in ranges.map_or_else(|| vec![None], |r| r.into_iter().map(Some).collect()) {
                        let buf = read.take_buf();
                        let fetched = local.fetch_open(&object, &read.key, range, buf, this.spec.transfer, started)?;
                        read.absorb(&this, fetched)?;
                    }
                    open = Some((opened, object));
                    Ok(read.finish(&this))
                })
                .collect::<Result<Vec<_>, PipelineError>>()
        })
        .await
        .map_err(|e| PipelineError::Dataset(format!("a read task failed: {e}")))??;
        if !preprocess.is_zero() {
            tokio::time::sleep(preprocess).await;
        }
        Ok(out)
    }
}

/// One sample read as byte ranges, decoded range by range into the same buffer (with data, the bytes of several
/// ranges are kept back to back in `joined`).
struct RangedRead {
    id: SampleId,
    key: String,
    buf: Option<AlignedBuf>,
    payload: Range<usize>,
    /// With data: the file's layout, handed on with the bytes.
    layout: Option<Arc<FileLayout>>,
    joined: Option<AlignedBuf>,
    started: Instant,
    times: SampleTimes,
    bytes_read: u64,
    decoded: u64,
}

impl RangedRead {
    fn new(id: SampleId, key: String, buf: AlignedBuf, started: Instant, layout: Option<Arc<FileLayout>>) -> Self {
        Self {
            id,
            key,
            buf: Some(buf),
            payload: 0..0,
            layout,
            joined: None,
            started,
            times: SampleTimes::default(),
            bytes_read: 0,
            decoded: 0,
        }
    }

    /// The buffer for the next range (with data, the last range's bytes are kept in `joined` first).
    fn take_buf(&mut self) -> AlignedBuf {
        let buf = self.buf.take().unwrap_or_else(|| AlignedBuf::with_capacity(0));
        if self.layout.is_some() && !self.payload.is_empty() {
            let joined = self.joined.get_or_insert_with(|| AlignedBuf::with_capacity(0));
            joined.extend_from_slice(&buf.as_slice()[self.payload.clone()]);
            self.payload = 0..0;
        }
        buf
    }

    /// Times and decodes one fetched range.
    fn absorb(&mut self, readers: &Readers, fetched: crate::storage::Fetched) -> Result<(), PipelineError> {
        if self.bytes_read == 0 {
            self.times.first_byte = fetched.first_byte;
        }
        self.times.read += self.started.elapsed().saturating_sub(self.times.read + self.times.decode);
        let decode_started = Instant::now();
        let bytes = &fetched.buf.as_slice()[fetched.skip..];
        self.bytes_read += bytes.len() as u64;
        self.decoded += read::decode(readers.spec.format, bytes, &self.key).map_err(|e| readers.format_error(&e))?;
        self.payload = fetched.skip..fetched.buf.len();
        self.buf = Some(fetched.buf);
        self.times.decode += decode_started.elapsed();
        Ok(())
    }

    fn finish(mut self, readers: &Readers) -> SampleOut {
        let mut buf = self.buf.take().unwrap_or_else(|| AlignedBuf::with_capacity(0));
        if let Some(mut joined) = self.joined.take() {
            joined.extend_from_slice(&buf.as_slice()[self.payload.clone()]);
            readers.give_buf(std::mem::replace(&mut buf, joined));
            self.payload = 0..buf.len();
        }
        let buf = if let Some(layout) = self.layout.take() {
            Some((buf, layout))
        } else {
            readers.give_buf(buf);
            None
        };
        SampleOut {
            id: self.id,
            buf,
            payload: self.payload,
            bytes_read: self.bytes_read,
            decoded: self.decoded,
            times: self.times,
        }
    }
}

/// Batch buffers lent to consumers: process-wide, so the next epoch's pipeline reuses the last one's.
static BATCH_BUFFERS: std::sync::LazyLock<Arc<BufferPool>> =
    std::sync::LazyLock::new(|| Arc::new(BufferPool::bounded(0, MAX_POOLED_BATCHES, MAX_POOLED_BATCH_BYTES)));

/// Read buffers of the pipelines whose data goes to a consumer (see [`Readers::take_buf`]), kept across epochs.
static SAMPLE_BUFFERS: std::sync::LazyLock<BufferPool> =
    std::sync::LazyLock::new(|| BufferPool::bounded(0, MAX_POOLED_SAMPLES, MAX_POOLED_BATCH_BYTES / 2));
const MAX_POOLED_SAMPLES: usize = 64;

/// Batch buffers kept for reuse: the batches in flight (prefetch) and a few the consumer still holds; and their bytes
/// at most (batches of whole large files are not kept for the life of the process).
const MAX_POOLED_BATCHES: usize = 8;
const MAX_POOLED_BATCH_BYTES: usize = 1 << 30;

/// Bytes read to find an HDF5 file's datasets.
const HDF5_HEADER: u64 = 64 * 1024;

impl FileCache {
    fn for_order(order: &EpochOrder, spf: u64) -> Self {
        let mut files: HashMap<u64, (SharedFile, u64)> = HashMap::new();
        for id in &order.samples {
            files.entry(id / spf.max(1)).or_default().1 += 1;
        }
        Self { files: Mutex::new(files) }
    }

    async fn get(
        &self,
        readers: &Readers,
        file: u64,
        key: &str,
        times: &mut SampleTimes,
    ) -> Result<(Arc<AlignedBuf>, u64), PipelineError> {
        let cell = self.files.lock().expect("cache lock").get(&file).map(|(c, _)| Arc::clone(c));
        let cell = cell.ok_or_else(|| PipelineError::Dataset(format!("{key}: not in this epoch's order")))?;
        let mut read_now = 0;
        let bytes = cell
            .get_or_try_init(|| async {
                let fetched = readers.spec.store.fetch(key, None, readers.take_buf(), readers.spec.transfer).await?;
                times.first_byte = fetched.first_byte;
                read_now = (fetched.buf.len() - fetched.skip) as u64;
                let mut buf = fetched.buf;
                if fetched.skip > 0 {
                    let mut aligned = AlignedBuf::with_capacity(buf.len() - fetched.skip);
                    aligned.extend_from_slice(&buf.as_slice()[fetched.skip..]);
                    buf = aligned;
                }
                Ok::<_, PipelineError>(Arc::new(buf))
            })
            .await?;
        Ok((Arc::clone(bytes), read_now))
    }

    fn release(&self, file: u64) {
        let mut files = self.files.lock().expect("cache lock");
        if let Some((_, left)) = files.get_mut(&file) {
            *left -= 1;
            if *left == 0 {
                files.remove(&file);
            }
        }
    }
}

/// An epoch's batches, read ahead in the background; dropping it stops the reads.
#[derive(Debug)]
pub struct Pipeline {
    batches: mpsc::Receiver<Result<Batch, PipelineError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pipeline {
    /// Starts reading the first `steps` batches of `order`.
    pub fn start(readers: &Arc<Readers>, order: &Arc<EpochOrder>, batch_size: u64, steps: u64) -> Self {
        let (tx, rx) = mpsc::channel(readers.spec.prefetch.max(1));
        let spf = readers.spec.samples_per_file;
        let cache =
            Arc::new(if readers.spec.whole_files { FileCache::for_order(order, spf) } else { FileCache::default() });
        let n = usize::try_from(steps * batch_size).unwrap_or(usize::MAX).min(order.samples.len());
        let (readers_task, order) = (Arc::clone(readers), Arc::clone(order));
        let task = tokio::spawn(async move {
            let readers = readers_task;
            let batch_len = usize::try_from(batch_size).unwrap_or(usize::MAX).max(1);
            // Each batch in read_threads chunks of consecutive samples, read_threads chunks in flight, in order.
            let threads = readers.spec.read_threads.max(1);
            let chunk_len = batch_len.div_ceil(threads);
            let chunks: Vec<Vec<SampleId>> = order.samples[..n]
                .chunks(batch_len)
                .flat_map(|batch| batch.chunks(chunk_len).map(<[SampleId]>::to_vec))
                .collect();
            let mut samples = futures::stream::iter(chunks)
                .map(|ids| tokio::spawn(Arc::clone(&readers).read_chunk(ids, Arc::clone(&cache))))
                .buffered(threads)
                .flat_map(|joined| {
                    let outs: Vec<Result<SampleOut, PipelineError>> = match joined {
                        Ok(Ok(outs)) => outs.into_iter().map(Ok).collect(),
                        Ok(Err(e)) => vec![Err(e)],
                        Err(e) => vec![Err(PipelineError::Dataset(format!("a read task failed: {e}")))],
                    };
                    futures::stream::iter(outs)
                });
            loop {
                let mut batch = Batch {
                    samples: Vec::with_capacity(batch_len),
                    bytes_read: 0,
                    decoded: 0,
                    times: Vec::with_capacity(batch_len),
                    data: None,
                    spans: Vec::new(),
                    layouts: Vec::new(),
                };
                let mut data = readers.spec.with_data.then(|| BATCH_BUFFERS.take());
                while batch.samples.len() < batch_len {
                    let Some(next) = samples.next().await else { return };
                    let out = match next {
                        Ok(out) => out,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    batch.samples.push(out.id);
                    batch.bytes_read += out.bytes_read;
                    batch.decoded += out.decoded;
                    batch.times.push(out.times);
                    if let (Some(data), Some((buf, layout))) = (&mut data, out.buf) {
                        if data.is_empty() {
                            // Room for the batch, if its samples are the first one's size: no regrowth copies.
                            data.reserve_more(out.payload.len().saturating_mul(batch_len));
                        }
                        let start = data.len();
                        data.extend_from_slice(&buf.as_slice()[out.payload.clone()]);
                        batch.spans.push(start..data.len());
                        batch.layouts.push(layout);
                        readers.give_buf(buf);
                    }
                }
                batch.data = data.map(|d| BufferPool::lend(&BATCH_BUFFERS, d));
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        });
        Self { batches: rx, task }
    }

    /// The next batch; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Batch, PipelineError>> {
        self.batches.recv().await
    }
}
