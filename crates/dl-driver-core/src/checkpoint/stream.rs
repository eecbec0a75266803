//! Checkpoint files streamed to and from storage. Writing: tensor bytes are produced on a blocking thread straight
//! into pooled page-aligned chunks (random, or zeros with `randomize_tensor: False`), optionally zstd-compressed as a
//! stream, checksummed (CRC-32C of the stored bytes) and handed to the storage writer — multipart with bounded
//! in-flight parts on object stores, large sequential writes (O_DIRECT on `direct://`) on files — so a shard is never
//! held whole in memory. Reading streams the object back, checks the checksum and, when compressed, decompresses it
//! and checks the original size (zstd's own content checksum is checked too).

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::state::StateReader;
use crate::metrics::Latency;
use crate::sink::data::SampleBytes;
use crate::sink::{ChannelSink, Sink, SinkWriter};
use crate::storage::{BufferPool, LocalFiles, StorageError, Store};

/// Bytes handed from the producing thread to the uploader at a time (and read at a time).
pub const CHUNK: usize = crate::sink::HANDOFF;

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

/// How to write a checkpoint's files.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level, or `None` for no compression.
    pub zstd_level: Option<i32>,
    pub randomize: bool,
    pub fsync: bool,
    /// Seeds the tensor bytes.
    pub seed: u64,
    /// Advanced by the tensor bytes produced (before compression).
    pub progress: ProgressBar,
}

/// One written file, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub rank: u64,
    pub name: String,
    /// Tensor bytes before compression.
    pub bytes: u64,
    /// Bytes on storage.
    pub stored_bytes: u64,
    /// CRC-32C of the stored bytes, hex.
    pub crc32c: String,
}

/// A sink that checksums (CRC-32C) and counts the bytes passing into another, on the producing thread.
struct Checksummed<'a> {
    sink: &'a mut dyn Sink,
    crc: u32,
    stored: u64,
}

impl Sink for Checksummed<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.stored += data.len() as u64;
        self.sink.write(data)
    }

    fn fill(&mut self, len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        let (crc, stored) = (&mut self.crc, &mut self.stored);
        self.sink.fill(len, &mut |buf| {
            produce(buf);
            *crc = crc32c::crc32c_append(*crc, buf);
            *stored += buf.len() as u64;
        })
    }
}

/// Produces `bytes` tensor bytes (compressed when asked) into `sink`; returns the CRC-32C and size of what it
/// stored.
fn produce(bytes: u64, options: &WriteOptions, sink: &mut dyn Sink) -> io::Result<(u32, u64)> {
    let mut sink = Checksummed { sink, crc: 0, stored: 0 };
    let mut data = SampleBytes::new(options.seed, 1.0, 1.0);
    let mut fill = |buf: &mut [u8]| {
        if options.randomize {
            data.fill(buf);
        } else {
            buf.fill(0);
        }
        options.progress.inc(buf.len() as u64);
    };
    let Some(level) = options.zstd_level else {
        sink.fill(bytes, &mut fill)?;
        return Ok((sink.crc, sink.stored));
    };
    let mut encoder = zstd::stream::write::Encoder::new(SinkWriter(&mut sink), level)?;
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(Some(bytes))?;
    let mut scratch = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = scratch.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        fill(&mut scratch[..n]);
        encoder.write_all(&scratch[..n])?;
        left -= n as u64;
    }
    encoder.finish()?;
    Ok((sink.crc, sink.stored))
}

fn producing_failed(store: &Store, key: &str, e: &io::Error) -> CheckpointError {
    CheckpointError::Invalid(format!("{}: producing the tensor bytes failed: {e}", store.uri().join(key)))
}

/// Writes one checkpoint file of `bytes` tensor bytes at `key`; records each part's write latency. Local files are
/// written by the producing thread itself; objects are uploaded as the bytes are produced.
pub async fn write_file(
    store: &Store,
    key: &str,
    rank: u64,
    bytes: u64,
    options: WriteOptions,
    pool: &Arc<BufferPool>,
    part_latency: &mut Latency,
) -> Result<FileEntry, CheckpointError> {
    let (crc, stored) = if let Some(local) = store.local() {
        let owned_key = key.to_string();
        let (crc, stored, latency) =
            tokio::task::spawn_blocking(move || write_local(&local, &owned_key, bytes, &options))
                .await
                .map_err(|e| CheckpointError::Invalid(format!("{key}: the tensor producer failed: {e}")))??;
        part_latency.add(&latency);
        (crc, stored)
    } else {
        upload(store, key, bytes, options, pool, part_latency).await?
    };
    Ok(FileEntry {
        rank,
        name: key.rsplit('/').next().unwrap_or(key).to_string(),
        bytes,
        stored_bytes: stored,
        crc32c: format!("{crc:08x}"),
    })
}

/// Chunks between the producing and the writing thread of a local checkpoint file, and their size: small enough to
/// stay in the CPU's shared cache between the two.
const LOCAL_CHUNKS: usize = 4;
const LOCAL_CHUNK: usize = 1024 * 1024;

/// Produces and writes a local checkpoint file, flushed to the device when asked. Two threads overlap: this one
/// produces (random bytes, zstd, CRC-32C) into a few small pooled chunks while the other writes the previous ones, so
/// a shard is produced and copied into the page cache at once instead of in turn.
fn write_local(
    local: &LocalFiles,
    key: &str,
    bytes: u64,
    options: &WriteOptions,
) -> Result<(u32, u64, Latency), CheckpointError> {
    let mut writer = local.file_writer(key)?;
    if options.zstd_level.is_none() {
        writer.preallocate(bytes);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(LOCAL_CHUNKS);
    let target = &mut writer;
    let (produced, written) = std::thread::scope(|scope| {
        // The receiver moves into the writing thread: if it stops, the producer's next hand-off fails.
        let writing = scope.spawn(move || {
            while let Some(chunk) = rx.blocking_recv() {
                target.write(&chunk)?;
            }
            Ok::<_, io::Error>(())
        });
        let mut sink = ChannelSink::new(tx, BufferPool::new(LOCAL_CHUNK));
        let produced = produce(bytes, options, &mut sink).and_then(|done| sink.flush().map(|()| done));
        drop(sink);
        (produced, writing.join().expect("the checkpoint writer thread does not panic"))
    });
    if let Err(e) = written {
        return Err(local.write_failed(key, &e).into());
    }
    let (crc, stored) = produced.map_err(|e| producing_failed(local.store(), key, &e))?;
    let (_, latency) = writer.finish(options.fsync).map_err(|e| local.write_failed(key, &e))?;
    Ok((crc, stored, latency))
}

/// Uploads a checkpoint object as a producer on a blocking thread makes its bytes; returns its CRC-32C and size.
async fn upload(
    store: &Store,
    key: &str,
    bytes: u64,
    options: WriteOptions,
    pool: &Arc<BufferPool>,
    part_latency: &mut Latency,
) -> Result<(u32, u64), CheckpointError> {
    let mut writer = store.writer(key).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let mut sink = ChannelSink::new(tx, Arc::clone(pool));
    let production = tokio::task::spawn_blocking(move || {
        let produced = produce(bytes, &options, &mut sink)?;
        sink.flush()?;
        Ok::<_, io::Error>(produced)
    });
    let mut upload = Ok(());
    while let Some(chunk) = rx.recv().await {
        let started = Instant::now();
        if let Err(e) = writer.write(chunk).await {
            upload = Err(e);
            break;
        }
        part_latency.record(started.elapsed());
    }
    drop(rx);
    let outcome =
        production.await.map_err(|e| CheckpointError::Invalid(format!("{key}: the tensor producer failed: {e}")));
    if let Err(e) = upload {
        let _ = writer.abort().await;
        return Err(e.into());
    }
    let produced = match outcome {
        Ok(Ok(produced)) => produced,
        Ok(Err(e)) => {
            let _ = writer.abort().await;
            return Err(producing_failed(store, key, &e));
        }
        Err(e) => {
            let _ = writer.abort().await;
            return Err(e);
        }
    };
    writer.finish().await?;
    Ok(produced)
}

/// Reads a checkpoint file back and verifies it against its manifest entry (the [`StateReader`]'s checks),
/// advancing `progress` by the stored bytes read; returns their count.
pub async fn read_file(
    store: &Store,
    key: &str,
    entry: &FileEntry,
    compressed: bool,
    progress: &ProgressBar,
) -> Result<u64, CheckpointError> {
    let mut reader = StateReader::open(store, key, entry, compressed).await?;
    let mut counted = 0;
    loop {
        let done = reader.next_chunk(usize::MAX).await?.is_empty();
        progress.inc(reader.stored() - counted);
        counted = reader.stored();
        if done {
            break;
        }
    }
    reader.finish().await?;
    Ok(counted)
}
