//! Dataset formats: one module per format, each writing a file's bytes front to back into a [`Sink`] so files of any
//! size stream with bounded memory. Small companion files (indexes) are returned whole.

pub mod npy;

use std::io;

use crate::config::{Config, Format};
use crate::generate::data::SampleBytes;
use crate::generate::layout::FileSpec;

/// Receives a file's bytes in order.
pub trait Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
}

/// A small file written beside a data file (e.g. an index), keyed relative to the data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    pub key: String,
    pub bytes: Vec<u8>,
}

/// Chunk in which sample bytes are produced and handed to the sink.
const CHUNK: usize = 4 * 1024 * 1024;

/// Streams `len` sample bytes into `write`.
fn stream_samples(data: &mut SampleBytes, len: u64, mut write: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut chunk = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut left = len;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        data.fill(&mut chunk[..n]);
        write(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes one dataset file of `config`'s format into `sink`; returns its companion files.
pub fn write_file(
    config: &Config,
    spec: &FileSpec,
    data: &mut SampleBytes,
    sink: &mut dyn Sink,
) -> io::Result<Vec<Companion>> {
    let (d1, d2) = spec.shape;
    let samples = spec.samples;
    let payload = d1 * d2 * samples;
    match config.dataset.format {
        Format::Npy => {
            sink.write(&npy::header("|u1", &[d1, d2, samples]))?;
            stream_samples(data, payload, |b| sink.write(b))?;
        }
        Format::Npz => {
            let mut zip = npy::ZipStream::new(sink);
            zip.begin("x.npy")?;
            zip.data(&npy::header("|u1", &[d1, d2, samples]))?;
            stream_samples(data, payload, |b| zip.data(b))?;
            zip.end()?;
            zip.begin("y.npy")?;
            zip.data(&npy::header("<f8", &[samples]))?;
            zip.data(&vec![0u8; usize::try_from(samples * 8).expect("label arrays fit in memory")])?;
            zip.end()?;
            zip.finish()?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("generating {other} files is not available yet"),
            ));
        }
    }
    Ok(Vec::new())
}
