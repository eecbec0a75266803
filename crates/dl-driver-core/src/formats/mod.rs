//! Dataset formats: one module per container, each writing a file's bytes front to back into a [`Sink`] so files of
//! any size stream with bounded memory. Small companion files (indexes) are returned whole. What each format holds
//! follows DLIO's generators (dlio.md §2): the sample axis is last in npz/npy and first in hdf5.

pub mod hdf5;
pub mod npy;
pub mod read;
pub mod tfrecord;

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::config::{Compression, Config, Format};
use crate::layout::FileSpec;
use crate::sink::data::SampleBytes;
use crate::sink::CHUNK;
pub use crate::sink::{Sink, SinkWriter};

/// A small file written beside a data file (e.g. an index), keyed relative to the data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    pub key: String,
    pub bytes: Vec<u8>,
}

/// Highest xz preset used (pandas' default): presets 7-9 need 0.2-0.7 GiB of encoder memory per file being written.
const MAX_XZ_PRESET: u32 = 6;

/// numpy's `descr` and the element size of a `dataset.record_element_type`.
pub fn element(type_name: &str) -> (&'static str, u64) {
    match type_name {
        "int8" => ("|i1", 1),
        "uint16" => ("<u2", 2),
        "int16" => ("<i2", 2),
        "uint32" => ("<u4", 4),
        "int32" => ("<i4", 4),
        "uint64" => ("<u8", 8),
        "int64" => ("<i8", 8),
        "float16" => ("<f2", 2),
        "float32" => ("<f4", 4),
        "float64" => ("<f8", 8),
        _ => ("|u1", 1),
    }
}

/// Bytes of one sample of `spec`.
pub fn sample_bytes(config: &Config, spec: &FileSpec) -> u64 {
    spec.shape.iter().product::<u64>() * element(&config.dataset.record_element_type).1
}

/// Appends `len` sample bytes to `sink`, generated in place; `observe` sees them (for checksums).
fn fill_samples(
    sink: &mut dyn Sink,
    data: &mut SampleBytes,
    len: u64,
    mut observe: impl FnMut(&[u8]),
) -> io::Result<()> {
    sink.fill(len, &mut |buf| {
        data.fill(buf);
        observe(buf);
    })
}

fn unsupported(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what)
}

/// Writes one dataset file of `config`'s format into `sink`; returns its companion files.
pub fn write_file(
    config: &Config,
    spec: &FileSpec,
    data: &mut SampleBytes,
    sink: &mut dyn Sink,
) -> io::Result<Vec<Companion>> {
    let d = &config.dataset;
    let samples = spec.samples;
    let (descr, _) = element(&d.record_element_type);
    let sample = sample_bytes(config, spec);
    let mut array_shape = spec.shape.clone();
    array_shape.push(samples);
    match d.format {
        Format::Npy => {
            sink.write(&npy::header(descr, &array_shape))?;
            fill_samples(sink, data, sample * samples, |_| {})?;
        }
        Format::Npz => {
            let deflate = d.compression == Compression::Zip;
            let mut zip = npy::ZipStream::new(sink);
            zip.begin("x.npy", deflate)?;
            zip.data(&npy::header(descr, &array_shape))?;
            zip.samples(data, sample * samples)?;
            zip.end()?;
            zip.begin("y.npy", deflate)?;
            zip.data(&npy::header("<i8", &[samples]))?;
            zip.data(&vec![0u8; usize::try_from(samples * 8).map_err(|_| unsupported("too many labels".into()))?])?;
            zip.end()?;
            zip.finish()?;
        }
        Format::Hdf5 => hdf5::write(config, spec, data, sink)?,
        Format::Tfrecord => return tfrecord::write(config, spec, data, sink),
        Format::Csv => write_csv(config, spec, data, sink)?,
        Format::Jpeg | Format::Png => write_image(d.format, spec, data, sink)?,
        Format::IndexedBinary | Format::MmapIndexedBinary => {
            fill_samples(sink, data, sample * samples, |_| {})?;
            let offsets: Vec<u8> = (0..samples).flat_map(|i| (i * sample).to_le_bytes()).collect();
            let sizes: Vec<u8> = (0..samples).flat_map(|_| sample.to_le_bytes()).collect();
            return Ok(vec![
                Companion { key: format!("{}.off.idx", spec.key), bytes: offsets },
                Companion { key: format!("{}.sz.idx", spec.key), bytes: sizes },
            ]);
        }
        // DLIO writes a tiny placeholder holding the file's index; its reader never opens it.
        Format::Synthetic => sink.write(spec.combined.to_string().as_bytes())?,
    }
    Ok(Vec::new())
}

/// csv: what DLIO's `pd.DataFrame(records).to_csv(path)` writes, pandas' defaults: a header line (`,0,1,...`, the
/// column labels after an empty index label), then `samples` identical rows of prod(shape) comma-separated values,
/// each after its row index. (DLIO's reader, `pd.read_csv(path).to_numpy()`, takes the first line as the header: a
/// file without one lost a row and failed on its last sample.) The file is
/// compressed as pandas' `to_csv(compression=...)` writes it when `dataset.compression` is gzip, bz2 or xz (one
/// stream; the key ends in `.gz`, `.bz2`, `.xz`) or zip (the key ends in `.zip`: an archive of one deflated member
/// named as the file without `.zip`). Encoders write into the sink as they produce, so memory stays bounded.
fn write_csv(config: &Config, spec: &FileSpec, data: &mut SampleBytes, sink: &mut dyn Sink) -> io::Result<()> {
    // `dataset.compression_level` (validated 0-9) clamped into each codec's range, as for gzip.
    let level = config.dataset.compression_level.min(9) as u32;
    match config.dataset.compression {
        Compression::None => csv_rows(config, spec, data, SinkWriter(sink)).map(drop),
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(SinkWriter(sink), flate2::Compression::new(level));
            csv_rows(config, spec, data, gz)?.finish().map(drop)
        }
        Compression::Bz2 => {
            let bz = bzip2::write::BzEncoder::new(SinkWriter(sink), bzip2::Compression::new(level.clamp(1, 9)));
            csv_rows(config, spec, data, bz)?.finish().map(drop)
        }
        Compression::Xz => {
            let xz = lzma_rust2::XzWriter::new(
                SinkWriter(sink),
                lzma_rust2::XzOptions::with_preset(level.min(MAX_XZ_PRESET)),
            )?;
            csv_rows(config, spec, data, xz)?.finish().map(drop)
        }
        Compression::Zip => {
            let file = spec.key.rsplit('/').next().unwrap_or(&spec.key);
            let mut zip = npy::ZipStream::new(sink);
            zip.begin(file.strip_suffix(".zip").unwrap_or(file), true)?;
            csv_rows(config, spec, data, &mut zip)?;
            zip.end()?;
            zip.finish()
        }
        Compression::Lzf => Err(unsupported(
            "dataset.compression lzf for csv: expected none, gzip, bz2, xz or zip (DLIO writes csv with pandas, which \
             has no lzf codec; lzf is an hdf5 filter)"
                .into(),
        )),
    }
}

/// Writes the csv text of [`write_csv`] into `out` (through a buffer) and returns `out`, flushed, for finishing.
fn csv_rows<W: Write>(config: &Config, spec: &FileSpec, data: &mut SampleBytes, out: W) -> io::Result<W> {
    let values = spec.shape.iter().product::<u64>();
    let kind = config.dataset.record_element_type.as_str();
    let mut out = io::BufWriter::with_capacity(CHUNK, out);
    let row_seed = data.fork();
    let mut bytes = vec![0u8; CHUNK.min(usize::try_from(values).unwrap_or(CHUNK))];
    let mut text = String::with_capacity(bytes.len() * 4);
    for column in 0..values {
        write!(out, ",{column}")?;
    }
    out.write_all(b"\n")?;
    for index in 0..spec.samples {
        write!(out, "{index},")?;
        // Every row is the same record: regenerate it from one seed instead of holding it (it can be huge).
        let mut row = SampleBytes::new(row_seed, 1.0, 1.0);
        let mut left = values;
        let mut first = true;
        while left > 0 {
            let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            row.fill(&mut bytes[..n]);
            text.clear();
            for &b in &bytes[..n] {
                if !first {
                    text.push(',');
                }
                first = false;
                let _ = match kind {
                    "int8" => write!(text, "{}", b.cast_signed()),
                    "float16" | "float32" | "float64" => write!(text, "{:?}", f64::from(b) / 256.0),
                    _ => write!(text, "{b}"),
                };
            }
            out.write_all(text.as_bytes())?;
            left -= n as u64;
        }
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)
}

/// jpeg / png: one 8-bit grayscale image of d1 rows by d2 columns per file (Pillow's defaults: JPEG quality 75).
fn write_image(format: Format, spec: &FileSpec, data: &mut SampleBytes, sink: &mut dyn Sink) -> io::Result<()> {
    let (height, width) = match spec.shape.as_slice() {
        [h, w, ..] => (*h, *w),
        [h] => (*h, 1),
        [] => (1, 1),
    };
    let too_big = || unsupported(format!("a {width}x{height} image is larger than {format} allows (65535 per side)"));
    let (w16, h16) = (u16::try_from(width).map_err(|_| too_big())?, u16::try_from(height).map_err(|_| too_big())?);
    let mut pixels = vec![0u8; usize::try_from(width * height).map_err(|_| too_big())?];
    data.fill(&mut pixels);
    if format == Format::Png {
        let mut encoder = png::Encoder::new(SinkWriter(sink), u32::from(w16), u32::from(h16));
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&pixels).map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)?;
    } else {
        let mut encoded = Vec::new();
        jpeg_encoder::Encoder::new(&mut encoded, 75)
            .encode(&pixels, w16, h16, jpeg_encoder::ColorType::Luma)
            .map_err(io::Error::other)?;
        sink.write(&encoded)?;
    }
    Ok(())
}
