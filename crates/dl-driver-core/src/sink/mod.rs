//! Where produced bytes go: the [`Sink`] that formats write a file into front to back, the sample byte stream
//! ([`data`]), and the sinks that hand bytes on (to a local file's writer, or to an upload in pooled chunks).

pub mod data;

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{AlignedBuf, BufferPool, FileWriter};

/// Bytes handed from a producing thread to the uploader at a time.
pub(crate) const HANDOFF: usize = 8 * 1024 * 1024;

/// Receives a file's bytes in order.
pub trait Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// Appends `len` bytes that `produce` writes in place, in pieces (sinks with buffers of their own override this
    /// so sample bytes are generated straight into them, without a copy).
    fn fill(&mut self, len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        in_chunks(len, produce, &mut |chunk| self.write(chunk))
    }
}

impl Sink for FileWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        FileWriter::write(self, data)
    }

    fn fill(&mut self, len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        FileWriter::fill(self, len, produce)
    }
}

/// A file built in memory (small files, tests).
impl Sink for Vec<u8> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// Produces `len` bytes through a reused chunk buffer, handing each piece to `consume`.
pub(crate) fn in_chunks(
    len: u64,
    produce: &mut dyn FnMut(&mut [u8]),
    consume: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut chunk = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut left = len;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        produce(&mut chunk[..n]);
        consume(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Chunk in which sample bytes are produced and handed to the sink.
pub(crate) const CHUNK: usize = 4 * 1024 * 1024;

/// An [`io::Write`] over a [`Sink`], for encoders.
pub struct SinkWriter<'a>(pub &'a mut dyn Sink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands produced bytes to a consumer in chunks of the pool's buffer size, blocking while the consumer is behind
/// (used by generation and by the checkpoint writer).
pub(crate) struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    pending: AlignedBuf,
    pool: Arc<BufferPool>,
}

impl ChannelSink {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Bytes>, pool: Arc<BufferPool>) -> Self {
        Self { tx, pending: pool.take(), pool }
    }

    /// Sends what is pending (call once the last bytes are in).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.pending, self.pool.take());
        let chunk = BufferPool::lend(&self.pool, data);
        self.tx.blocking_send(chunk).map_err(|_| io::Error::other("the upload stopped"))
    }
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        self.pool.give(std::mem::replace(&mut self.pending, AlignedBuf::with_capacity(0)));
    }
}

impl Sink for ChannelSink {
    fn fill(&mut self, mut len: u64, produce: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        while len > 0 {
            let start = self.pending.len();
            let n = (self.pending.capacity() - start).min(usize::try_from(len).unwrap_or(usize::MAX));
            produce(&mut self.pending.spare_mut()[start..start + n]);
            self.pending.set_len(start + n);
            len -= n as u64;
            if self.pending.len() == self.pending.capacity() {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(self.pending.capacity() - self.pending.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == self.pending.capacity() {
                self.flush()?;
            }
        }
        Ok(())
    }
}
