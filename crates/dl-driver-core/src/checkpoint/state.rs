//! Checkpoint files of a real training state: bytes the caller pushes (a model's tensors, straight from their
//! memory) streamed to storage as they come — optionally zstd-compressed, CRC-32C of the stored bytes — and read
//! back as a stream into the caller's buffers, the checksum and sizes checked at the end (every checkpoint file is
//! read back through [`StateReader`], the emulated ones' too). The manifest written last
//! ([`super::manifest`]) makes such a checkpoint complete, as it does the emulated ones ([`super::stream`]).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::stream::{CheckpointError, FileEntry, CHUNK};
use crate::storage::{BufferPool, LocalFiles, StorageError, Store, Writer};

/// Bytes of compressed output gathered before they go to the upload.
const OUT_CHUNK: usize = 1 << 20;

/// One checkpoint file being written from pushed bytes; [`StateWriter::finish`] completes it, dropping it discards it.
pub struct StateWriter {
    writer: Writer,
    encoder: Option<zstd::stream::raw::Encoder<'static>>,
    out: Vec<u8>,
    crc: u32,
    stored: u64,
    bytes: u64,
    rank: u64,
    name: String,
    shown: String,
}

fn zstd_failed(shown: &str, e: &std::io::Error) -> CheckpointError {
    CheckpointError::Invalid(format!("{shown}: zstd: {e}"))
}

impl StateWriter {
    /// Starts the file at `key` (its name in the manifest is the last path segment), zstd at `zstd_level` if given;
    /// with `sync`, a local file is on the device when [`Self::finish`] returns ([`Store::writer_synced`]).
    pub async fn create(
        store: &Store,
        key: &str,
        rank: u64,
        zstd_level: Option<i32>,
        sync: bool,
    ) -> Result<Self, CheckpointError> {
        let shown = store.uri().join(key).to_string();
        let encoder = match zstd_level {
            Some(level) => {
                let mut e = zstd::stream::raw::Encoder::new(level).map_err(|e| zstd_failed(&shown, &e))?;
                e.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                    .map_err(|e| zstd_failed(&shown, &e))?;
                Some(e)
            }
            None => None,
        };
        Ok(Self {
            writer: store.writer_synced(key, sync).await?,
            encoder,
            out: Vec::with_capacity(if zstd_level.is_some() { OUT_CHUNK } else { 0 }),
            crc: 0,
            stored: 0,
            bytes: 0,
            rank,
            name: key.rsplit('/').next().unwrap_or(key).to_string(),
            shown,
        })
    }

    async fn store_bytes(&mut self, data: Bytes) -> Result<(), CheckpointError> {
        self.crc = crc32c::crc32c_append(self.crc, &data);
        self.stored += data.len() as u64;
        self.writer.write(data).await?;
        Ok(())
    }

    /// Compresses `input` (or, with `finish`, ends the frame) into `out`, handing full chunks to the upload.
    async fn compress(&mut self, mut input: &[u8], finish: bool) -> Result<(), CheckpointError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        loop {
            let encoder = self.encoder.as_mut().expect("compress is called with an encoder");
            if self.out.capacity() - self.out.len() < OUT_CHUNK / 4 {
                let full = std::mem::replace(&mut self.out, Vec::with_capacity(OUT_CHUNK));
                self.store_bytes(Bytes::from(full)).await?;
                continue;
            }
            let start = self.out.len();
            self.out.resize(self.out.capacity(), 0);
            let mut output = OutBuffer::around_pos(&mut self.out[..], start);
            let remaining = if finish {
                encoder.finish(&mut output, true).map_err(|e| zstd_failed(&self.shown, &e))?
            } else {
                let mut inb = InBuffer::around(input);
                encoder.run(&mut inb, &mut output).map_err(|e| zstd_failed(&self.shown, &e))?;
                input = &input[inb.pos()..];
                usize::from(!input.is_empty())
            };
            let written = output.pos();
            self.out.truncate(written);
            if remaining == 0 && (finish || input.is_empty()) {
                return Ok(());
            }
        }
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: Bytes) -> Result<(), CheckpointError> {
        self.bytes += data.len() as u64;
        if self.encoder.is_some() {
            return self.compress(&data, false).await;
        }
        self.store_bytes(data).await
    }

    /// Completes the file: its manifest entry.
    pub async fn finish(mut self) -> Result<FileEntry, CheckpointError> {
        if self.encoder.is_some() {
            self.compress(&[], true).await?;
            let last = std::mem::take(&mut self.out);
            if !last.is_empty() {
                self.store_bytes(Bytes::from(last)).await?;
            }
        }
        let Self { writer, crc, stored, bytes, rank, name, .. } = self;
        writer.finish().await?;
        Ok(FileEntry { rank, name, bytes, stored_bytes: stored, crc32c: format!("{crc:08x}") })
    }
}

/// `crc` continued over `data`, its `parts` computed on as many threads and combined in order.
fn crc32c_append_parallel(crc: u32, data: &[u8], parts: usize) -> u32 {
    if parts <= 1 {
        return crc32c::crc32c_append(crc, data);
    }
    let part = data.len().div_ceil(parts).max(1);
    std::thread::scope(|scope| {
        let pieces: Vec<_> = data.chunks(part).map(|c| (scope.spawn(move || crc32c::crc32c(c)), c.len())).collect();
        pieces.into_iter().fold(crc, |acc, (piece, len)| {
            let piece = piece.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            crc32c::crc32c_combine(acc, piece, len)
        })
    })
}

/// Where a file's stored bytes come from: large reads on a blocking thread for local files, into pooled buffers that
/// come back when their bytes are consumed (object_store's stream of a local file, and fresh buffers, page-faulted
/// their way to a fraction of the speed), one read ahead of the consumer (it copies the last one meanwhile: loading
/// a state into fresh tensors is bound by that copy's page faults, and the read overlaps it); the object's stream
/// otherwise.
enum Source {
    Local(Box<LocalSource>),
    Stream(BoxStream<'static, Result<Bytes, StorageError>>),
}

struct LocalSource {
    files: LocalFiles,
    key: String,
    /// Where the next read to start begins.
    at: u64,
    size: u64,
    pool: std::sync::Arc<BufferPool>,
    ahead: Option<tokio::task::JoinHandle<Result<Bytes, StorageError>>>,
    /// The file, opened once for [`StateReader::fill_local`].
    positioned: Option<std::fs::File>,
}

impl LocalSource {
    /// Starts reading the next chunk, if any is left.
    fn read_ahead(&mut self) {
        if self.at >= self.size {
            return;
        }
        let range = self.at..self.size.min(self.at + CHUNK as u64);
        self.at = range.end;
        let (files, key, pool) = (self.files.clone(), self.key.clone(), std::sync::Arc::clone(&self.pool));
        self.ahead = Some(tokio::task::spawn_blocking(move || {
            let fetched = files.fetch(&key, Some(range), pool.take(), None)?;
            Ok(BufferPool::lend(&pool, fetched.buf).slice(fetched.skip..))
        }));
    }
}

impl Source {
    async fn next(&mut self) -> Result<Option<Bytes>, CheckpointError> {
        match self {
            Self::Stream(stream) => Ok(stream.next().await.transpose()?),
            Self::Local(local) => {
                if local.ahead.is_none() {
                    local.read_ahead();
                }
                let Some(pending) = local.ahead.take() else { return Ok(None) };
                let chunk = pending
                    .await
                    .map_err(|e| CheckpointError::Invalid(format!("{}: the reader failed: {e}", local.key)))??;
                local.read_ahead();
                Ok(Some(chunk))
            }
        }
    }
}

impl Drop for LocalSource {
    fn drop(&mut self) {
        if let Some(pending) = self.ahead.take() {
            pending.abort();
        }
    }
}

/// One checkpoint file read back into the caller's buffers; [`StateReader::finish`] checks it against its entry.
pub struct StateReader {
    source: Source,
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    /// Bytes ready for the caller, from `at`.
    ready: Bytes,
    at: usize,
    /// Stored bytes not yet decompressed.
    input: Bytes,
    crc: u32,
    stored: u64,
    original: u64,
    ended: bool,
    entry: FileEntry,
    shown: String,
}

impl StateReader {
    pub async fn open(store: &Store, key: &str, entry: &FileEntry, compressed: bool) -> Result<Self, CheckpointError> {
        let shown = store.uri().join(key).to_string();
        let decoder = if compressed {
            Some(zstd::stream::raw::Decoder::new().map_err(|e| zstd_failed(&shown, &e))?)
        } else {
            None
        };
        let source = match store.local() {
            Some(files) => Source::Local(Box::new(LocalSource {
                files,
                key: key.to_string(),
                at: 0,
                size: store.head(key).await?.size,
                pool: BufferPool::new(CHUNK),
                ahead: None,
                positioned: None,
            })),
            None => Source::Stream(store.get_stream(key).await?.boxed()),
        };
        Ok(Self {
            source,
            decoder,
            ready: Bytes::new(),
            at: 0,
            input: Bytes::new(),
            crc: 0,
            stored: 0,
            original: 0,
            ended: false,
            entry: entry.clone(),
            shown,
        })
    }

    /// Makes more bytes ready; false at the end of the file.
    async fn refill(&mut self) -> Result<bool, CheckpointError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        loop {
            if self.input.is_empty() && !self.ended {
                match self.source.next().await? {
                    Some(chunk) => {
                        self.crc = crc32c::crc32c_append(self.crc, &chunk);
                        self.stored += chunk.len() as u64;
                        self.input = chunk;
                    }
                    None => self.ended = true,
                }
            }
            let Some(decoder) = self.decoder.as_mut() else {
                if self.input.is_empty() {
                    return Ok(false);
                }
                self.ready = std::mem::take(&mut self.input);
                self.at = 0;
                self.original += self.ready.len() as u64;
                return Ok(true);
            };
            // Run even on empty input: a full output may have left decompressed bytes inside the decoder.
            let mut out = vec![0u8; OUT_CHUNK];
            let mut inb = InBuffer::around(&self.input[..]);
            let mut output = OutBuffer::around(&mut out[..]);
            if let Err(e) = decoder.run(&mut inb, &mut output) {
                return Err(self.damaged(&e).await);
            }
            let (used, made) = (inb.pos(), output.pos());
            self.input = self.input.slice(used..);
            if made > 0 {
                out.truncate(made);
                self.original += made as u64;
                self.ready = Bytes::from(out);
                self.at = 0;
                return Ok(true);
            }
            if self.input.is_empty() && self.ended {
                return Ok(false);
            }
        }
    }

    /// Why a file zstd could not decode is damaged: a checksum mismatch, if the rest of the file shows one (it says
    /// more than the decoder's complaint), else the decoder's error.
    async fn damaged(&mut self, e: &std::io::Error) -> CheckpointError {
        let zstd = CheckpointError::Corrupt(format!("{}: zstd: {e} (a damaged or truncated file)", self.shown));
        while !self.ended {
            match self.source.next().await {
                Ok(Some(chunk)) => {
                    self.crc = crc32c::crc32c_append(self.crc, &chunk);
                    self.stored += chunk.len() as u64;
                }
                Ok(None) => self.ended = true,
                Err(other) => return other,
            }
        }
        self.mismatch().unwrap_or(zstd)
    }

    /// The checksum error, when what was stored differs from the manifest entry.
    fn mismatch(&self) -> Option<CheckpointError> {
        let crc = format!("{:08x}", self.crc);
        (self.stored != self.entry.stored_bytes || crc != self.entry.crc32c).then(|| {
            CheckpointError::Corrupt(format!(
                "{}: checksum mismatch: read {} bytes with CRC-32C {crc}, the manifest says {} bytes with {}",
                self.shown, self.stored, self.entry.stored_bytes, self.entry.crc32c
            ))
        })
    }

    /// Stored bytes read so far.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The file's next bytes, at most `max` of them (a view of the read buffer, no copy); empty at the end.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Bytes, CheckpointError> {
        if self.at == self.ready.len() && !self.refill().await? {
            return Ok(Bytes::new());
        }
        let n = (self.ready.len() - self.at).min(max);
        let chunk = self.ready.slice(self.at..self.at + n);
        self.at += n;
        Ok(chunk)
    }

    /// Fills `target` with the file's next bytes straight from a local file through the page cache, several
    /// positioned reads at once (filling fresh memory, such as new tensors, is bound by its page faults, which then
    /// run in parallel), CRC-32C over them in parallel too; returns how many (fewer only at the end of the file).
    /// `None` when this reader cannot (zstd, an object store, O_DIRECT, or bytes already buffered): use
    /// [`Self::read`]. Blocks the calling thread.
    pub fn fill_local(&mut self, target: &mut [u8]) -> Option<Result<usize, CheckpointError>> {
        if self.decoder.is_some() || self.at < self.ready.len() || !self.input.is_empty() {
            return None;
        }
        let Source::Local(local) = &mut self.source else { return None };
        if local.ahead.is_some() {
            return None;
        }
        if local.positioned.is_none() {
            match local.files.open_positioned(&local.key)? {
                Ok(file) => local.positioned = Some(file),
                Err(e) => return Some(Err(e.into())),
            }
        }
        let file = local.positioned.as_ref()?;
        let n = usize::try_from(local.size.saturating_sub(local.at)).unwrap_or(usize::MAX).min(target.len());
        let target = &mut target[..n];
        let parts = crate::storage::parallel_parts(n);
        if let Err(e) = crate::storage::read_exact_at(file, local.at, target, parts) {
            return Some(Err(local.files.read_failed(&local.key, &e).into()));
        }
        local.at += n as u64;
        self.crc = crc32c_append_parallel(self.crc, target, parts);
        self.stored += n as u64;
        self.original += n as u64;
        Some(Ok(n))
    }

    /// Fills `buf` with the file's next bytes; returns how many (fewer only at the end of the file).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, CheckpointError> {
        let mut filled = 0;
        while filled < buf.len() {
            let chunk = self.next_chunk(buf.len() - filled).await?;
            if chunk.is_empty() {
                break;
            }
            buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
            filled += chunk.len();
        }
        Ok(filled)
    }

    /// Reads what is left and checks the whole file against its manifest entry: stored size and CRC-32C, then the
    /// original size.
    pub async fn finish(mut self) -> Result<(), CheckpointError> {
        let mut rest = 0u64;
        while self.refill().await? {
            rest += (self.ready.len() - self.at) as u64;
            self.at = self.ready.len();
        }
        if let Some(mismatch) = self.mismatch() {
            return Err(mismatch);
        }
        if self.original != self.entry.bytes || rest > 0 {
            return Err(CheckpointError::Corrupt(format!(
                "{}: holds {} bytes, the manifest says {} ({rest} were left unread)",
                self.shown, self.original, self.entry.bytes
            )));
        }
        Ok(())
    }
}
