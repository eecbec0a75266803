//! Local files as an `ObjectStore`, through the page cache (`file://`) or with O_DIRECT (`direct://`).
//!
//! Reads land in page-aligned buffers. Writes go to a hidden temporary file beside the target that is renamed into
//! place only when complete, so a partly written object never looks complete. With O_DIRECT every transfer is aligned
//! to [`ALIGN`]: reads are widened to aligned bounds, and a tail that is not a multiple of the block size is written
//! padded and then truncated to the real size.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, Extensions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};

use super::buffer::{round_up, AlignedBuf, ALIGN};
use crate::metrics::Latency;

/// Bytes per chunk of a streamed local read.
const STREAM_CHUNK: u64 = 8 * 1024 * 1024;

/// Chunk in which payloads are staged into aligned memory for writing.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

/// How many parts, each on its own thread, fill or check `len` bytes of memory: at most 8 (and the CPUs, counted
/// once per process), at least 4 MiB each.
pub fn parallel_parts(len: usize) -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(8));
    (len / (4 << 20)).clamp(1, threads)
}

/// Fills `target` from `file` at `offset` with positioned reads, `parts` of them at once (on as many threads: filling
/// fresh memory is bound by its page faults, which then run in parallel); one part is read on the calling thread.
pub fn read_exact_at(file: &File, offset: u64, target: &mut [u8], parts: usize) -> io::Result<()> {
    if parts <= 1 {
        return file.read_exact_at(target, offset);
    }
    let part = target.len().div_ceil(parts).max(1);
    let (first, rest) = target.split_at_mut(part.min(target.len()));
    std::thread::scope(|scope| {
        let reads: Vec<_> = rest
            .chunks_mut(part)
            .enumerate()
            .map(|(i, piece)| scope.spawn(move || file.read_exact_at(piece, offset + ((i + 1) * part) as u64)))
            .collect();
        let here = file.read_exact_at(first, offset);
        reads
            .into_iter()
            .fold(here, |done, r| done.and(r.join().unwrap_or_else(|_| Err(io::Error::other("a read panicked")))))
    })
}

/// A local object open for reading, and its size when it was opened.
#[derive(Debug)]
pub struct OpenObject {
    file: File,
    size: u64,
    path: PathBuf,
}

/// A directory of local files served as an object store.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    direct: bool,
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.direct { "direct" } else { "file" };
        write!(f, "LocalStore({scheme}://{})", self.root.display())
    }
}

impl LocalStore {
    /// A store rooted at `root` (nothing is created until something is written); `direct` selects O_DIRECT.
    pub fn new(root: PathBuf, direct: bool) -> Self {
        Self { root, direct }
    }

    pub fn root(&self) -> &FsPath {
        &self.root
    }

    /// The filesystem path of an object key.
    pub fn path_of(&self, location: &Path) -> PathBuf {
        self.root.join(location.as_ref())
    }

    fn open_read(&self, path: &FsPath) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.read(true);
        if self.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options.open(path).map_err(|e| refused_direct(e, self.direct, path))
    }

    /// `location` opened for positioned reads into any memory ([`read_exact_at`]); `None` with O_DIRECT, whose reads
    /// need aligned buffers.
    pub fn open_positioned(&self, location: &Path) -> Option<io::Result<File>> {
        (!self.direct).then(|| self.open_read(&self.path_of(location)))
    }

    /// Reads `range` (whole object when `None`) of `location` into `buf`, reusing its memory; returns the object size.
    /// The bytes read start at `buf.as_slice()[offset..]` where `offset` is the returned pair's second element
    /// (non-zero only with O_DIRECT, whose reads start at an aligned offset).
    pub fn read_into(
        &self,
        location: &Path,
        range: Option<Range<u64>>,
        buf: &mut AlignedBuf,
    ) -> io::Result<(u64, usize)> {
        self.read_timed(location, range, buf, None).map(|(size, skip, _)| (size, skip))
    }

    /// [`Self::read_into`] issuing reads of at most `transfer` bytes (rounded up to the O_DIRECT alignment);
    /// also returns when the first bytes arrived.
    pub fn read_timed(
        &self,
        location: &Path,
        range: Option<Range<u64>>,
        buf: &mut AlignedBuf,
        transfer: Option<usize>,
    ) -> io::Result<(u64, usize, Instant)> {
        self.read_open(&self.open_object(location)?, range, buf, transfer)
    }

    /// `location` opened for [`Self::read_open`], with its size.
    pub fn open_object(&self, location: &Path) -> io::Result<OpenObject> {
        let path = self.path_of(location);
        let file = self.open_read(&path)?;
        let size = file.metadata()?.len();
        Ok(OpenObject { file, size, path })
    }

    /// [`Self::read_timed`] from an object opened by [`Self::open_object`] (reads of one file in a row share its
    /// open: the records of a batch).
    pub fn read_open(
        &self,
        object: &OpenObject,
        range: Option<Range<u64>>,
        buf: &mut AlignedBuf,
        transfer: Option<usize>,
    ) -> io::Result<(u64, usize, Instant)> {
        let (file, size, path) = (&object.file, object.size, &object.path);
        // Like S3, a range reaching past the end is cut at the end; one starting past it is an error.
        let range = range.map_or(0..size, |r| r.start..r.end.min(size));
        if range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {}..{} is outside the object of {size} bytes", range.start, range.end),
            ));
        }
        let (start, skip) = if self.direct {
            let aligned = range.start - range.start % ALIGN as u64;
            (aligned, (range.start - aligned) as usize)
        } else {
            (range.start, 0)
        };
        let wanted = skip + (range.end - range.start) as usize;
        let total = if self.direct { round_up(wanted, ALIGN) } else { wanted };
        let step = transfer.map_or(total, |t| if self.direct { round_up(t, ALIGN) } else { t.max(1) });
        buf.reserve_exact_discarding(total);
        let mut done = 0;
        let mut first_byte = None;
        while done < wanted {
            let end = total.min(done + step);
            let n = file.read_at(&mut buf.spare_mut()[done..end], start + done as u64)?;
            first_byte.get_or_insert_with(Instant::now);
            if n == 0 {
                break;
            }
            done += n;
        }
        if done < wanted {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being read", path.display()),
            ));
        }
        buf.set_len(wanted);
        Ok((size, skip, first_byte.unwrap_or_else(Instant::now)))
    }

    /// A writer for `location` used from the calling thread (see [`FileWriter`]).
    pub fn file_writer(&self, location: &Path) -> io::Result<FileWriter> {
        FileWriter::create(&self.path_of(location), self.direct)
    }

    /// Writes `chunks` to `location` through a temporary file renamed into place.
    fn write_object(&self, location: &Path, chunks: &[Bytes], mode: &PutMode) -> io::Result<u64> {
        let target = self.path_of(location);
        if matches!(mode, PutMode::Create) && target.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", target.display())));
        }
        let mut writer = TempWriter::create(&target, self.direct)?;
        writer.write_at(0, chunks.iter().map(AsRef::as_ref))?;
        writer.commit()
    }

    fn meta(location: &Path, metadata: &fs::Metadata) -> ObjectMeta {
        let modified = metadata.modified().map_or_else(|_| Utc::now(), DateTime::<Utc>::from);
        ObjectMeta {
            location: location.clone(),
            last_modified: modified,
            size: metadata.len(),
            e_tag: Some(format!(
                "{:x}-{:x}-{:x}",
                metadata.ino(),
                metadata.mtime_nsec() ^ metadata.mtime(),
                metadata.len()
            )),
            version: None,
        }
    }

    /// Every object below `prefix`, in no particular order.
    fn walk(&self, prefix: Option<&Path>) -> io::Result<Vec<ObjectMeta>> {
        let start = prefix.map_or_else(|| self.root.clone(), |p| self.path_of(p));
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            // Symlinked folders are followed, once each (a link cycle ends here).
            match fs::metadata(&dir) {
                Ok(m) if !seen.insert((m.dev(), m.ino())) => continue,
                _ => {}
            }
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                if is_hidden_temp(&name.to_string_lossy()) {
                    continue;
                }
                let Ok(metadata) = fs::metadata(entry.path()) else { continue }; // follows symlinks; skips dangling ones
                if metadata.is_dir() {
                    pending.push(entry.path());
                } else if metadata.is_file() {
                    if let Some(location) = self.location_of(&entry.path()) {
                        out.push(Self::meta(&location, &metadata));
                    }
                }
            }
        }
        Ok(out)
    }

    fn location_of(&self, path: &FsPath) -> Option<Path> {
        let relative = path.strip_prefix(&self.root).ok()?;
        Path::parse(relative.to_str()?).ok()
    }
}

/// The error for a filesystem that refuses O_DIRECT (EINVAL at open), saying so.
fn refused_direct(error: io::Error, direct: bool, path: &FsPath) -> io::Error {
    if direct && error.raw_os_error() == Some(libc::EINVAL) {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the filesystem of {} refuses O_DIRECT ({error}); use file:// for this location", path.display()),
        )
    } else {
        error
    }
}

/// Our temporary files are hidden from listings.
fn is_hidden_temp(name: &str) -> bool {
    name.starts_with(".dl-driver-")
}

/// A temporary file beside its target, written at offsets, renamed into place by [`TempWriter::commit`].
struct TempWriter {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    direct: bool,
    /// Bytes of real data written so far (the end of the furthest write).
    len: u64,
    /// Space was reserved up front (and may exceed what was written).
    preallocated: bool,
    staging: Option<AlignedBuf>,
}

impl TempWriter {
    /// Opens the target's temporary file, `.dl-driver-{name}.tmp`, locked for this writer. A temporary file left by
    /// a writer that died is unlocked (locks end with their process) and is taken over, so an interrupted run leaves
    /// no garbage once the file is written again.
    fn create(target: &FsPath, direct: bool) -> io::Result<Self> {
        let dir =
            target.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an object needs a name"))?;
        fs::create_dir_all(dir)?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = dir.join(format!(".dl-driver-{name}.tmp"));
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(false);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(&temp).map_err(|e| refused_direct(e, direct, &temp))?;
        if let Err(e) = file.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("{} is being written by another writer", target.display()),
                ),
                fs::TryLockError::Error(e) => e,
            });
        }
        // Only a temporary file taken over from a dead writer needs emptying: on ext4, truncating even an empty file
        // makes its close flush the file to the device (auto_da_alloc), which cost every write a synchronous flush.
        if file.metadata()?.len() > 0 {
            file.set_len(0)?;
        }
        Ok(Self { file, temp, target: target.to_path_buf(), direct, len: 0, preallocated: false, staging: None })
    }

    /// Writes `chunks` back to back from `offset`; with O_DIRECT, `offset` must be aligned and only the last write
    /// of the object may end unaligned.
    fn write_at<'a>(&mut self, offset: u64, chunks: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut at = offset;
        if self.direct {
            let staging = self.staging.get_or_insert_with(|| AlignedBuf::with_capacity(WRITE_CHUNK));
            at = direct_write_at(&self.file, offset, chunks, staging)?;
        } else {
            for chunk in chunks {
                self.file.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
        }
        self.len = self.len.max(at);
        Ok(())
    }

    /// Cuts the file to the data written: O_DIRECT wrote whole blocks, a reservation may be longer than the data.
    fn trim(&self) -> io::Result<()> {
        if (self.direct || self.preallocated) && self.file.metadata()?.len() != self.len {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }

    fn commit(self) -> io::Result<u64> {
        self.trim()?;
        fs::rename(&self.temp, &self.target)?;
        Ok(self.len)
    }

    /// Starts writing `offset..offset + len` back to the device without waiting (`sync_file_range`), so a file
    /// flushed at its end has most of its bytes on the device by then: the writes and the device overlap. Advisory:
    /// where the call fails, the flush at the end does all of it.
    #[allow(unsafe_code)]
    fn start_writeback(&self, offset: u64, len: u64) {
        if let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) {
            // SAFETY: the fd is this writer's open file; the call only schedules writeback of the range.
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        }
    }

    /// Completes the file flushed to the device: its data before it gets its name, its directory entry after.
    fn commit_synced(self) -> io::Result<u64> {
        self.trim()?;
        self.file.sync_all()?;
        let target = self.target.clone();
        let len = self.commit()?;
        if let Some(dir) = target.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(len)
    }
}

/// Asks a local multipart upload to end on the device (`PutMultipartOptions::extensions`): writeback of each part
/// starts as it is written, and completing flushes the file and then its directory entry.
#[derive(Debug, Clone, Copy)]
pub struct SyncToDevice;

impl Drop for TempWriter {
    fn drop(&mut self) {
        // After a successful commit the temporary name no longer exists; otherwise this discards a partial write
        // (while the lock is still held, so no other writer is using the name).
        let _ = fs::remove_file(&self.temp);
    }
}

/// A local file written front to back from the calling thread, for producers on blocking threads. Bytes are staged
/// in an aligned buffer and written sequentially in chunks small enough to still be in the CPU cache when the kernel
/// copies them (8 MiB with O_DIRECT, where the device is the limit), to a temporary file that [`FileWriter::finish`]
/// renames into place; a writer dropped unfinished removes it.
pub struct FileWriter {
    temp: TempWriter,
    buf: AlignedBuf,
    offset: u64,
    failed: bool,
    latency: Latency,
}

/// Chunk of a buffered [`FileWriter`]: produced bytes are still in the L2 cache when the kernel copies them.
pub const CACHED_WRITE_CHUNK: usize = 1024 * 1024;

impl FileWriter {
    fn create(target: &FsPath, direct: bool) -> io::Result<Self> {
        let temp = TempWriter::create(target, direct)?;
        let chunk = if direct { WRITE_CHUNK } else { CACHED_WRITE_CHUNK };
        Ok(Self { temp, buf: AlignedBuf::with_capacity(chunk), offset: 0, failed: false, latency: Latency::default() })
    }

    /// Reserves `len` bytes for the file on the device up front (as `fio` does by default), when the filesystem
    /// can: the filesystem then allocates its blocks at once instead of page by page as they are written.
    pub fn preallocate(&mut self, len: u64) {
        let Ok(len) = libc::off_t::try_from(len) else { return };
        if len > 0 {
            // SAFETY: fallocate on an open descriptor we own; failure (e.g. unsupported) only skips the reservation.
            #[allow(unsafe_code)]
            let reserved = unsafe { libc::fallocate(self.temp.file.as_raw_fd(), 0, 0, len) } == 0;
            self.temp.preallocated = reserved;
        }
    }

    /// Whether a write to the file failed (as opposed to the producer of the bytes).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Appends `data`; whole chunks of it are written without a copy when nothing is staged (and, with O_DIRECT,
    /// `data` is aligned in memory).
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let chunk = self.buf.capacity();
        if self.buf.is_empty()
            && data.len() >= chunk
            && (!self.temp.direct || (data.as_ptr() as usize).is_multiple_of(ALIGN))
        {
            let whole = data.len() / chunk * chunk;
            self.write_direct(&data[..whole])?;
            data = &data[whole..];
        }
        while !data.is_empty() {
            let n = data.len().min(self.buf.capacity() - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.write_if_full()?;
        }
        Ok(())
    }

    /// Appends `len` bytes that `produce` writes in place, a chunk at a time.
    pub fn fill(&mut self, mut len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        while len > 0 {
            let start = self.buf.len();
            let n = (self.buf.capacity() - start).min(usize::try_from(len).unwrap_or(usize::MAX));
            produce(&mut self.buf.spare_mut()[start..start + n]);
            self.buf.set_len(start + n);
            len -= n as u64;
            self.write_if_full()?;
        }
        Ok(())
    }

    fn write_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() < self.buf.capacity() {
            return Ok(());
        }
        let buf = std::mem::replace(&mut self.buf, AlignedBuf::with_capacity(0));
        let result = self.write_direct(buf.as_slice());
        self.buf = buf;
        self.buf.set_len(0);
        result
    }

    /// Writes whole aligned chunks at the (aligned) end of the file, as they are, with or without O_DIRECT.
    fn write_direct(&mut self, data: &[u8]) -> io::Result<()> {
        let started = Instant::now();
        let result = self.temp.file.write_all_at(data, self.offset);
        self.latency.record(started.elapsed());
        self.failed |= result.is_err();
        result?;
        self.offset += data.len() as u64;
        self.temp.len = self.offset;
        Ok(())
    }

    /// Writes what is left, flushes the file to the device when `fsync` (before it gets its name, and its directory
    /// entry after), and renames it into place; returns its size and the latencies of all its chunk writes.
    pub fn finish(mut self, fsync: bool) -> io::Result<(u64, Latency)> {
        let result = self.finish_writes(fsync);
        self.failed |= result.is_err();
        result?;
        let target = self.temp.target.clone();
        let size = self.temp.commit()?;
        if fsync {
            if let Some(dir) = target.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok((size, self.latency))
    }

    fn finish_writes(&mut self, fsync: bool) -> io::Result<()> {
        if !self.buf.is_empty() {
            let started = Instant::now();
            self.temp.write_at(self.offset, [self.buf.as_slice()])?;
            self.latency.record(started.elapsed());
            self.offset += self.buf.len() as u64;
            self.buf.set_len(0);
        }
        if fsync {
            // The size is final before the flush, so a synced file never comes back padded.
            self.temp.trim()?;
            self.temp.file.sync_all()?;
        }
        Ok(())
    }
}

/// O_DIRECT write of `chunks` from an aligned `offset`, staged through aligned memory; the tail is padded with zeros.
/// Returns the offset after the last real byte.
fn direct_write_at<'a>(
    file: &File,
    offset: u64,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    staging: &mut AlignedBuf,
) -> io::Result<u64> {
    if !offset.is_multiple_of(ALIGN as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("O_DIRECT writes must start at a multiple of {ALIGN} bytes, got offset {offset}"),
        ));
    }
    let capacity = staging.capacity();
    let mut filled = 0;
    let mut at = offset;
    for mut chunk in chunks {
        while !chunk.is_empty() {
            let n = chunk.len().min(capacity - filled);
            staging.spare_mut()[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            chunk = &chunk[n..];
            if filled == capacity {
                file.write_all_at(&staging.spare_mut()[..capacity], at)?;
                at += capacity as u64;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        let padded = round_up(filled, ALIGN);
        let spare = staging.spare_mut();
        spare[filled..padded].fill(0);
        file.write_all_at(&spare[..padded], at)?;
        at += filled as u64;
    }
    Ok(at)
}

fn io_to_store(error: io::Error, location: &Path) -> object_store::Error {
    match error.kind() {
        io::ErrorKind::NotFound => {
            object_store::Error::NotFound { path: location.to_string(), source: Box::new(error) }
        }
        io::ErrorKind::AlreadyExists => {
            object_store::Error::AlreadyExists { path: location.to_string(), source: Box::new(error) }
        }
        _ => object_store::Error::Generic { store: "local", source: Box::new(error) },
    }
}

async fn blocking<T: Send + 'static>(
    location: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    let result = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
    result.map_err(|e| io_to_store(e, location))
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(object_store::Error::NotImplemented {
                operation: "conditional update".into(),
                implementer: "local files".into(),
            });
        }
        let this = self.clone_handle();
        let loc = location.clone();
        let chunks: Vec<Bytes> = payload.into_iter().collect();
        let mode = opts.mode;
        blocking(location, move || this.write_object(&loc, &chunks, &mode)).await?;
        Ok(PutResult { e_tag: None, version: None, extensions: Extensions::default() })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let target = self.path_of(location);
        let direct = self.direct;
        let writer = blocking(location, move || TempWriter::create(&target, direct)).await?;
        Ok(Box::new(LocalUpload {
            location: location.clone(),
            state: Arc::new(std::sync::Mutex::new(Some(writer))),
            next_offset: 0,
            unaligned_part_seen: false,
            sync: opts.extensions.get::<SyncToDevice>().is_some(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let this = self.clone_handle();
        let loc = location.clone();
        let path = self.path_of(location);
        let metadata = blocking(location, move || fs::metadata(&path)).await?;
        if !metadata.is_file() {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not a regular file".into(),
            });
        }
        let meta = Self::meta(location, &metadata);
        let size = meta.size;
        let range = match options.range {
            None => 0..size,
            Some(GetRange::Bounded(r)) => r.start..r.end.min(size),
            Some(GetRange::Offset(o)) => o..size,
            Some(GetRange::Suffix(n)) => size.saturating_sub(n)..size,
        };
        if range.start > range.end || (range.start >= size && size > 0 && !options.head) {
            return Err(object_store::Error::Generic {
                store: "local",
                source: format!("range {}..{} is outside {location} of {size} bytes", range.start, range.end).into(),
            });
        }
        if options.head {
            return Ok(GetResult {
                payload: GetResultPayload::Stream(stream::empty().boxed()),
                meta,
                range: 0..0,
                attributes: Attributes::default(),
                extensions: Extensions::default(),
            });
        }
        // Streamed in chunks, so a large object never sits whole in memory.
        let chunks = stream::unfold(range.start, move |at| {
            let (this, loc) = (this.clone_handle(), loc.clone());
            let end = range.end.min(at + STREAM_CHUNK);
            async move {
                if at >= end {
                    return None;
                }
                let read = blocking(&loc.clone(), move || {
                    let mut buf = AlignedBuf::with_capacity(0);
                    let (_, skip) = this.read_into(&loc, Some(at..end), &mut buf)?;
                    Ok(Bytes::from_owner(buf).slice(skip..))
                })
                .await;
                Some((read, end))
            }
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(chunks.fuse().boxed()),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Extensions::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let root = self.root.clone();
        locations
            .then(move |location| {
                let root = root.clone();
                async move {
                    let location = location?;
                    let path = root.join(location.as_ref());
                    let loc = location.clone();
                    blocking(&loc, move || {
                        fs::remove_file(&path)?;
                        // Like an object store, leave no empty folders behind (up to the store's root).
                        let mut dir = path.parent();
                        while let Some(d) = dir.filter(|d| d.starts_with(&root) && *d != root.as_path()) {
                            if fs::remove_dir(d).is_err() {
                                break;
                            }
                            dir = d.parent();
                        }
                        Ok(())
                    })
                    .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone_handle();
        let prefix = prefix.cloned();
        stream::once(async move {
            let loc = prefix.clone().unwrap_or_default();
            blocking(&loc, move || this.walk(prefix.as_ref())).await
        })
        .map(|result| match result {
            Ok(items) => stream::iter(items.into_iter().map(Ok)).boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let this = self.clone_handle();
        let prefix = prefix.cloned();
        let loc = prefix.clone().unwrap_or_default();
        blocking(&loc, move || {
            let dir = prefix.as_ref().map_or_else(|| this.root.clone(), |p| this.path_of(p));
            let mut result =
                ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Extensions::default() };
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(result),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if is_hidden_temp(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                let Some(location) = this.location_of(&entry.path()) else { continue };
                let Ok(metadata) = fs::metadata(entry.path()) else { continue };
                if metadata.is_dir() {
                    result.common_prefixes.push(location);
                } else if metadata.is_file() {
                    result.objects.push(Self::meta(&location, &metadata));
                }
            }
            Ok(result)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let (source, target) = (self.path_of(from), self.path_of(to));
        let create_only = matches!(options.mode, CopyMode::Create);
        blocking(from, move || {
            if create_only && target.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", target.display()),
                ));
            }
            if let Some(dir) = target.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::copy(&source, &target).map(drop)
        })
        .await
    }
}

impl LocalStore {
    fn clone_handle(&self) -> Arc<Self> {
        Arc::new(Self { root: self.root.clone(), direct: self.direct })
    }
}

/// A multipart upload into a temporary file; parts are written at their offsets as they arrive.
#[derive(Debug)]
struct LocalUpload {
    location: Path,
    state: Arc<std::sync::Mutex<Option<TempWriter>>>,
    next_offset: u64,
    unaligned_part_seen: bool,
    /// Flushed to the device ([`SyncToDevice`]).
    sync: bool,
}

impl std::fmt::Debug for TempWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TempWriter({})", self.temp.display())
    }
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.next_offset;
        let len = data.content_length() as u64;
        self.next_offset += len;
        let misaligned = self.unaligned_part_seen;
        self.unaligned_part_seen |= !len.is_multiple_of(ALIGN as u64);
        let state = Arc::clone(&self.state);
        let location = self.location.clone();
        let sync = self.sync;
        Box::pin(async move {
            blocking(&location, move || {
                let mut guard = state.lock().map_err(|_| io::Error::other("a previous part panicked"))?;
                let writer = guard.as_mut().ok_or_else(|| io::Error::other("the upload was completed or aborted"))?;
                if writer.direct && misaligned {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("with O_DIRECT only the last part may be shorter than a multiple of {ALIGN} bytes"),
                    ));
                }
                writer.write_at(offset, data.iter().map(AsRef::as_ref))?;
                if sync && !writer.direct {
                    writer.start_writeback(offset, len);
                }
                Ok(())
            })
            .await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let state = Arc::clone(&self.state);
        let sync = self.sync;
        blocking(&self.location, move || {
            let writer = state
                .lock()
                .map_err(|_| io::Error::other("a part panicked"))?
                .take()
                .ok_or_else(|| io::Error::other("the upload was already completed or aborted"))?;
            if sync {
                writer.commit_synced()
            } else {
                writer.commit()
            }
        })
        .await?;
        Ok(PutResult { e_tag: None, version: None, extensions: Extensions::default() })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let state = Arc::clone(&self.state);
        blocking(&self.location, move || {
            drop(state.lock().map_err(|_| io::Error::other("a part panicked"))?.take());
            Ok(())
        })
        .await
    }
}
