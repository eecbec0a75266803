//! Reading samples back: where a sample lives in its file ([`FileLayout`], loaded once per file) and the decoding
//! that touches what DLIO's readers touch — the whole npz/npy/csv/image file per sample (np.load, pandas, PIL read
//! it all), the record for tfrecord (found through the `index/` file, else by walking the framing), the dataset rows
//! for hdf5, the offset/size slice for indexed_binary. Decoding checks what a real reader would (zip and npy headers,
//! TFRecord CRCs, image magic numbers) so a corrupt or foreign file fails loudly instead of being timed as valid.
//! Pixels are not decompressed: the benchmark measures storage, not a JPEG codec.

use std::io;
use std::ops::Range;

use flate2::{Decompress, FlushDecompress, Status};

use crate::config::Format;

/// Where the samples of one file are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLayout {
    /// Each sample reads the whole file.
    Whole,
    /// Sample i is the byte range `records[i]` (tfrecord records with their framing, indexed_binary slices).
    Records(Vec<Range<u64>>),
    /// Sample i is row i of each dataset: `bases[d] + i * row .. + row` (hdf5 with contiguous datasets of `rows`).
    Rows { bases: Vec<u64>, row: u64, rows: u64, arrays: RowArrays },
    /// Nothing to read (the synthetic format).
    Nothing,
}

/// What an hdf5 sample's rows are: one row of each dataset, in `names` order, of `dtype` (numpy's notation, such as
/// `<u1` or `<f4`) and shape `dims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowArrays {
    pub names: Vec<String>,
    pub dtype: String,
    pub dims: Vec<u64>,
}

impl FileLayout {
    /// The byte ranges sample `index` reads (`None`: the whole file).
    pub fn ranges(&self, index: u64, key: &str) -> io::Result<Option<Vec<Range<u64>>>> {
        let missing = || invalid(format!("{key}: has no sample {index}"));
        Ok(match self {
            Self::Whole => None,
            Self::Records(r) => {
                Some(vec![r.get(usize::try_from(index).map_err(|_| missing())?).ok_or_else(missing)?.clone()])
            }
            Self::Rows { rows, .. } if index >= *rows => {
                return Err(invalid(format!(
                    "{key}: has {rows} samples, sample {index} was asked for (check dataset.num_samples_per_file)"
                )))
            }
            Self::Rows { bases, row, .. } => Some(
                bases
                    .iter()
                    .map(|b| {
                        let start = index.checked_mul(*row).and_then(|o| o.checked_add(*b));
                        start
                            .and_then(|s| Some(s..s.checked_add(*row)?))
                            .ok_or_else(|| invalid(format!("{key}: sample {index} lies past any file size")))
                    })
                    .collect::<io::Result<_>>()?,
            ),
            Self::Nothing => Some(Vec::new()),
        })
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Parses an index file of "offset length" lines (DLIO's tfrecord index) into record ranges.
pub fn parse_tfrecord_index(text: &[u8], key: &str) -> io::Result<Vec<Range<u64>>> {
    let text = std::str::from_utf8(text).map_err(|_| invalid(format!("{key}: not a text index")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let mut parts = line.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(offset)), Some(Ok(len))) => offset
                    .checked_add(len)
                    .map(|end| offset..end)
                    .ok_or_else(|| invalid(format!("{key}: line {}: offset + length overflows: '{line}'", n + 1))),
                _ => Err(invalid(format!("{key}: line {}: expected 'offset length', got '{line}'", n + 1))),
            }
        })
        .collect()
}

/// The record ranges of a TFRecord file, by walking its framing (length, masked CRC, data, masked CRC).
pub fn frame_tfrecords(file: &[u8], key: &str) -> io::Result<Vec<Range<u64>>> {
    let mut at = 0usize;
    let mut records = Vec::new();
    while at < file.len() {
        let header =
            file.get(at..at + 12).ok_or_else(|| invalid(format!("{key}: truncated record header at byte {at}")))?;
        let len = usize::try_from(u64::from_le_bytes(header[..8].try_into().expect("8 bytes")))
            .map_err(|_| invalid(format!("{key}: record length too large at byte {at}")))?;
        let end = len.checked_add(16).and_then(|n| at.checked_add(n)).filter(|e| *e <= file.len());
        let end = end.ok_or_else(|| invalid(format!("{key}: record at byte {at} runs past the end of the file")))?;
        records.push(at as u64..end as u64);
        at = end;
    }
    Ok(records)
}

/// Little-endian u64 arrays (indexed_binary's `.off.idx` and `.sz.idx`) into ranges.
pub fn indexed_ranges(offsets: &[u8], sizes: &[u8], key: &str) -> io::Result<Vec<Range<u64>>> {
    if !offsets.len().is_multiple_of(8) || offsets.len() != sizes.len() {
        return Err(invalid(format!(
            "{key}: .off.idx ({} bytes) and .sz.idx ({} bytes) must hold the same number of u64 values",
            offsets.len(),
            sizes.len()
        )));
    }
    let u64s =
        |b: &[u8]| b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<_>>();
    u64s(offsets)
        .into_iter()
        .zip(u64s(sizes))
        .enumerate()
        .map(|(i, (o, s))| {
            o.checked_add(s).map(|end| o..end).ok_or_else(|| {
                invalid(format!("{key}: sample {i}: offset {o} + size {s} overflows (corrupt .off.idx/.sz.idx)"))
            })
        })
        .collect()
}

/// Checks a sample's bytes as `format`'s reader would; returns the decoded payload size in bytes.
pub fn decode(format: Format, bytes: &[u8], key: &str) -> io::Result<u64> {
    match format {
        Format::Npz => npz_array_bytes(bytes, "x.npy", key),
        Format::Npy => npy_array_bytes(bytes, key),
        Format::Tfrecord => tfrecord_record(bytes, key),
        Format::Jpeg => magic(bytes, &[0xff, 0xd8, 0xff], "JPEG", key),
        Format::Png => magic(bytes, b"\x89PNG\r\n\x1a\n", "PNG", key),
        Format::Csv => csv_bytes(bytes, key),
        Format::Hdf5 | Format::IndexedBinary | Format::MmapIndexedBinary | Format::Synthetic => Ok(bytes.len() as u64),
    }
}

/// pandas reads the whole text, decompressing `.csv.gz`, `.csv.bz2` and `.csv.xz` (known by their magic numbers): the
/// decoded text's size. A `.csv.zip` is read whole and counts as its file's size.
fn csv_bytes(bytes: &[u8], key: &str) -> io::Result<u64> {
    let (decoded, codec) = if bytes.starts_with(&[0x1f, 0x8b]) {
        (io::copy(&mut flate2::read::MultiGzDecoder::new(bytes), &mut io::sink()), "gzip")
    } else if bytes.starts_with(b"BZh") {
        (io::copy(&mut bzip2::read::MultiBzDecoder::new(bytes), &mut io::sink()), "bzip2")
    } else if bytes.starts_with(b"\xfd7zXZ\x00") {
        (io::copy(&mut lzma_rust2::XzReader::new(bytes, true), &mut io::sink()), "xz")
    } else {
        return Ok(bytes.len() as u64);
    };
    decoded.map_err(|e| invalid(format!("{key}: corrupt {codec} stream: {e}")))
}

fn magic(bytes: &[u8], expected: &[u8], what: &str, key: &str) -> io::Result<u64> {
    if bytes.starts_with(expected) {
        Ok(bytes.len() as u64)
    } else {
        Err(invalid(format!("{key}: not a {what} file (bad magic number)")))
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The npy header's dtype size and shape, and where the data starts.
fn npy_header(bytes: &[u8], key: &str) -> io::Result<(u64, Vec<u64>, usize)> {
    let bad = |why: &str| invalid(format!("{key}: not a valid .npy array: {why}"));
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (le16(bytes, 8) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (le32(bytes, 8) as usize, 12),
        v => return Err(bad(&format!("unsupported version {v}"))),
    };
    let header = bytes.get(start..start + len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |name: &str| {
        let at = header.find(&format!("'{name}':")).ok_or_else(|| bad(&format!("no '{name}' in the header")))?;
        let rest = header.get(at + name.len() + 3..).ok_or_else(|| bad(&format!("no value for '{name}'")))?;
        Ok::<&str, io::Error>(rest.trim_start())
    };
    let descr = field("descr")?;
    let size: u64 = descr
        .trim_start_matches('\'')
        .chars()
        .skip(2)
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| bad("unreadable descr"))?;
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("unreadable shape"))?;
    let dims = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.parse::<u64>().map_err(|_| bad("unreadable shape")))
        .collect::<io::Result<Vec<u64>>>()?;
    Ok((size, dims, start + len))
}

/// Bytes of the array in an .npy file, after checking the file holds all of it.
pub fn npy_array_bytes(bytes: &[u8], key: &str) -> io::Result<u64> {
    let (size, dims, data) = npy_header(bytes, key)?;
    let expected = dims
        .iter()
        .try_fold(size, |a, d| a.checked_mul(*d))
        .ok_or_else(|| invalid(format!("{key}: the shape overflows")))?;
    if ((bytes.len() - data) as u64) < expected {
        return Err(invalid(format!(
            "{key}: the array of shape {dims:?} needs {expected} bytes, the file holds {}",
            bytes.len() - data
        )));
    }
    Ok(expected)
}

/// Finds `member` in a zip (npz) through its central directory and returns its array's size, inflating it when
/// deflated (as numpy.load does).
pub fn npz_array_bytes(bytes: &[u8], member: &str, key: &str) -> io::Result<u64> {
    let bad = |why: String| invalid(format!("{key}: not a valid .npz file: {why}"));
    let eocd = (0..bytes.len().saturating_sub(21))
        .rev()
        .take(65_557)
        .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| bad("no end of central directory".into()))?;
    let (mut entries, mut cd) = (le16(bytes, eocd + 10), le32(bytes, eocd + 16));
    if (entries == 0xffff || cd == 0xffff_ffff) && eocd >= 20 && bytes[eocd - 20..].starts_with(b"PK\x06\x07") {
        let z = usize::try_from(le64(bytes, eocd - 20 + 8)).map_err(|_| bad("zip64 offset".into()))?;
        if !bytes.get(z..).is_some_and(|b| b.starts_with(b"PK\x06\x06")) || bytes.len() < z + 56 {
            return Err(bad("broken zip64 end record".into()));
        }
        entries = le64(bytes, z + 32);
        cd = le64(bytes, z + 48);
    }
    let mut at = usize::try_from(cd).map_err(|_| bad("central directory offset".into()))?;
    for _ in 0..entries {
        let entry = at.checked_add(46).and_then(|end| bytes.get(at..end)).filter(|e| e.starts_with(b"PK\x01\x02"));
        let entry = entry.ok_or_else(|| bad(format!("broken central directory at byte {at}")))?;
        let (method, name_len, extra_len, comment_len) =
            (le16(entry, 10), le16(entry, 28) as usize, le16(entry, 30) as usize, le16(entry, 32) as usize);
        let (mut compressed, mut size, mut local) = (le32(entry, 20), le32(entry, 24), le32(entry, 42));
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("truncated name".into()))?;
        let extra = bytes.get(at + 46 + name_len..at + 46 + name_len + extra_len).unwrap_or(&[]);
        zip64_sizes(extra, &mut size, &mut compressed, &mut local);
        at += 46 + name_len + extra_len + comment_len;
        if name != member.as_bytes() {
            continue;
        }
        let local = usize::try_from(local).map_err(|_| bad("member offset".into()))?;
        let header =
            local.checked_add(30).and_then(|end| bytes.get(local..end)).filter(|h| h.starts_with(b"PK\x03\x04"));
        let header = header.ok_or_else(|| bad(format!("no local header for {member}")))?;
        let start = local + 30 + le16(header, 26) as usize + le16(header, 28) as usize;
        let data = usize::try_from(compressed).ok().and_then(|c| bytes.get(start..start.checked_add(c)?));
        let data = data.ok_or_else(|| bad(format!("{member} runs past the end of the file")))?;
        return match method {
            0 => npy_array_bytes(data, key),
            8 => inflated_npy_bytes(data, size, key),
            m => Err(bad(format!("{member} uses compression method {m}, expected stored (0) or deflate (8)"))),
        };
    }
    Err(bad(format!("no member {member}")))
}

fn zip64_sizes(mut extra: &[u8], size: &mut u64, compressed: &mut u64, local: &mut u64) {
    while extra.len() >= 4 {
        let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
        let body = extra.get(4..4 + len).unwrap_or(&[]);
        if id == 1 {
            let mut fields = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
            for slot in [size, compressed, local] {
                if *slot == 0xffff_ffff {
                    if let Some(v) = fields.next() {
                        *slot = v;
                    }
                }
            }
            return;
        }
        extra = extra.get(4 + len..).unwrap_or(&[]);
    }
}

/// Inflates a deflated .npy member in pieces (no buffer of its full size) and checks its header and length.
fn inflated_npy_bytes(data: &[u8], size: u64, key: &str) -> io::Result<u64> {
    let mut inflater = Decompress::new(false);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    loop {
        let before = inflater.total_out();
        let consumed = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let status = inflater
            .decompress(&data[consumed.min(data.len())..], &mut chunk, FlushDecompress::None)
            .map_err(|e| invalid(format!("{key}: corrupt deflate stream: {e}")))?;
        let produced = usize::try_from(inflater.total_out() - before).unwrap_or(0);
        if head.len() < 4096 {
            head.extend_from_slice(&chunk[..produced.min(4096 - head.len())]);
        }
        match status {
            Status::StreamEnd => break,
            _ if produced == 0 && inflater.total_in() as usize >= data.len() => {
                return Err(invalid(format!("{key}: deflate stream ends early")))
            }
            _ => {}
        }
    }
    if inflater.total_out() != size {
        return Err(invalid(format!("{key}: inflated to {} bytes, the zip says {size}", inflater.total_out())));
    }
    let (item, dims, data_at) = npy_header(&head, key)?;
    let expected = dims
        .iter()
        .try_fold(item, |a, d| a.checked_mul(*d))
        .ok_or_else(|| invalid(format!("{key}: the shape overflows")))?;
    if size.checked_sub(data_at as u64) != Some(expected) {
        return Err(invalid(format!("{key}: the array of shape {dims:?} needs {expected} bytes")));
    }
    Ok(expected)
}

/// Checks one framed TFRecord (both masked CRC-32Cs, as TensorFlow's reader does); returns the Example's size.
fn tfrecord_record(bytes: &[u8], key: &str) -> io::Result<u64> {
    let bad = |why: &str| invalid(format!("{key}: corrupt TFRecord: {why}"));
    if bytes.len() < 16 {
        return Err(bad("shorter than its framing"));
    }
    let len = le64(bytes, 0);
    if len != bytes.len() as u64 - 16 {
        return Err(bad(&format!("length field says {len} bytes, the record holds {}", bytes.len() - 16)));
    }
    if le32(bytes, 8) != u64::from(super::tfrecord::masked_crc(crc32c::crc32c(&bytes[..8]))) {
        return Err(bad("length CRC mismatch"));
    }
    let data = &bytes[12..bytes.len() - 4];
    if le32(bytes, bytes.len() - 4) != u64::from(super::tfrecord::masked_crc(crc32c::crc32c(data))) {
        return Err(bad("data CRC mismatch"));
    }
    Ok(len)
}

/// The dataset rows of an HDF5 file written with superblock v2/v3 and contiguous datasets `records_*` (as
/// dl-driver writes them); `None` for other layouts (h5py's default superblock v0), which are then read whole.
pub fn hdf5_rows(header: &[u8]) -> Option<FileLayout> {
    if !header.starts_with(b"\x89HDF\r\n\x1a\n") || !matches!(header.get(8), Some(2 | 3)) || header.get(9) != Some(&8) {
        return None;
    }
    let root = usize::try_from(le64(header.get(..44)?, 36)).ok()?;
    let mut datasets: Vec<(String, u64)> = messages(header, root)?
        .into_iter()
        .filter(|(kind, _)| *kind == 0x06)
        .filter_map(|(_, m)| {
            let flags = *m.get(1)?;
            let mut at = 2 + usize::from(flags & 0x08 != 0) + if flags & 0x04 != 0 { 8 } else { 0 };
            at += usize::from(flags & 0x10 != 0);
            let width = 1usize << (flags & 3);
            let mut len = 0usize;
            for i in 0..width {
                len |= usize::from(*m.get(at + i)?) << (8 * i);
            }
            at += width;
            let end = at.checked_add(len)?;
            let name = std::str::from_utf8(m.get(at..end)?).ok()?.to_string();
            let link_type = if flags & 0x08 != 0 { *m.get(2)? } else { 0 };
            (link_type == 0).then(|| Some((name, le64(m.get(end..end.checked_add(8)?)?, 0))))?
        })
        .filter(|(name, _)| name.starts_with("records_"))
        .collect();
    datasets.sort_by_key(|(name, _)| name.trim_start_matches("records_").parse::<u64>().unwrap_or(u64::MAX));
    let mut bases = Vec::new();
    let mut names = Vec::new();
    let mut row: Option<(u64, String, Vec<u64>)> = None;
    let mut rows = None;
    for (name, address) in datasets {
        let mut dims = None;
        let (mut element, mut base) = (None, None);
        for (kind, m) in messages(header, usize::try_from(address).ok()?)? {
            match kind {
                0x01 if m.first() == Some(&2) => {
                    let n = usize::from(*m.get(1)?);
                    dims = Some(
                        (0..n).map(|i| m.get(4 + 8 * i..12 + 8 * i).map(|b| le64(b, 0))).collect::<Option<Vec<_>>>()?,
                    );
                }
                0x03 => element = Some((le32(m.get(..8)?, 4), numpy_dtype(m)?)),
                0x08 if m.get(..2) == Some(&[3, 1]) => base = Some(le64(m.get(..10)?, 2)),
                _ => {}
            }
        }
        let (dims, (element, dtype), base) = (dims?, element?, base?);
        let this_row = (dims.get(1..)?.iter().try_fold(element, |a, d| a.checked_mul(*d))?, dtype, dims[1..].to_vec());
        if rows.is_some_and(|r| r != dims[0]) || row.as_ref().is_some_and(|r| *r != this_row) {
            return None;
        }
        rows = Some(dims[0]);
        row = Some(this_row);
        bases.push(base);
        names.push(name);
    }
    let (row, dtype, dims) = row?;
    Some(FileLayout::Rows { bases, row, rows: rows?, arrays: RowArrays { names, dtype, dims } })
}

/// numpy's name of an HDF5 datatype message's integer or float type (`<u1`, `>i8`, `<f4`); `None` for other classes
/// and for sizes or layouts numpy has no dtype for.
fn numpy_dtype(message: &[u8]) -> Option<String> {
    let (class, bits, size) = (message.first()? & 0x0f, *message.get(1)?, le32(message.get(..8)?, 4));
    let order = if bits & 0x01 == 0 { '<' } else { '>' };
    let kind = match (class, size) {
        (0, 1 | 2 | 4 | 8) if bits & 0x08 != 0 => 'i',
        (0, 1 | 2 | 4 | 8) => 'u',
        // IEEE floats only: bits 1-3 (VAX orders, padding) are zero in numpy's.
        (1, 2 | 4 | 8) if bits & 0x0e == 0 => 'f',
        _ => return None,
    };
    Some(format!("{order}{kind}{size}"))
}

/// The messages of a version 2 object header at `at` (no continuation blocks: ours have none).
fn messages(bytes: &[u8], at: usize) -> Option<Vec<(u8, &[u8])>> {
    let h = bytes.get(at..)?;
    if !h.starts_with(b"OHDR") || h.get(4) != Some(&2) {
        return None;
    }
    let flags = *h.get(5)?;
    let mut p = 6 + if flags & 0x20 != 0 { 16 } else { 0 } + if flags & 0x10 != 0 { 4 } else { 0 };
    let width = 1usize << (flags & 3);
    let mut size = 0usize;
    for i in 0..width {
        size |= usize::from(*h.get(p + i)?) << (8 * i);
    }
    p += width;
    let end = p.checked_add(size)?.min(h.len());
    let mut out = Vec::new();
    while p + 4 <= end {
        let kind = *h.get(p)?;
        let len = le16(h, p + 1) as usize;
        p += 4 + if flags & 0x04 != 0 { 2 } else { 0 };
        out.push((kind, h.get(p..p + len)?));
        p += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut rng = crate::sampler::Rng::new(9);
        let mut npy = crate::formats::npy::header("<f4", &[4, 4]);
        npy.extend_from_slice(&[0u8; 64]);
        let mut tf = Vec::new();
        tf.extend_from_slice(&u64::MAX.to_le_bytes());
        tf.extend_from_slice(&[0u8; 20]);
        assert!(frame_tfrecords(&tf, "t").is_err(), "a huge length is an error, not a wrap-around");
        for _ in 0..2000 {
            let mut bytes = npy.clone();
            let cut = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(cut.max(1));
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] = rng.next_u64() as u8;
            let _ = npy_array_bytes(&bytes, "x");
            let _ = npz_array_bytes(&bytes, "x.npy", "x");
            let _ = frame_tfrecords(&bytes, "x");
            let _ = hdf5_rows(&bytes);
            let _ = parse_tfrecord_index(&bytes, "x");
            let mut hdf = b"\x89HDF\r\n\x1a\n\x02\x08\x08\x00".to_vec();
            hdf.extend_from_slice(&bytes);
            let _ = hdf5_rows(&hdf);
        }
    }

    /// Writes one file of each format (and compression) as generation does.
    #[test]
    fn hdf5_rows_say_what_a_sample_holds() {
        for (element, dsets, dtype) in [("uint8", 1, "<u1"), ("float32", 2, "<f4"), ("int64", 3, "<i8")] {
            let mut c = crate::config::Config::default();
            c.dataset.format = Format::Hdf5;
            c.dataset.num_samples_per_file = 3;
            c.dataset.record_dims = vec![4, 6];
            c.dataset.record_element_type = element.into();
            c.dataset.hdf5.num_dset_per_record = dsets;
            let spec = crate::layout::dataset_files(&c, 0, 1).remove(0);
            let mut data = crate::sink::data::SampleBytes::new(3, 1.0, 1.0);
            let mut file = Vec::new();
            crate::formats::write_file(&c, &spec, &mut data, &mut file).unwrap();
            let Some(FileLayout::Rows { bases, row, rows, arrays }) = hdf5_rows(&file) else {
                panic!("{element}: rows expected")
            };
            let names: Vec<String> = (0..dsets).map(|d| format!("records_{d}")).collect();
            // DLIO splits the sample's first dimension over the datasets.
            let dims = vec![4 / dsets, 6];
            let size = u64::from(dtype[2..].parse::<u8>().unwrap());
            assert_eq!((bases.len(), row, rows), (dsets as usize, dims[0] * 6 * size, 3));
            assert_eq!(arrays, RowArrays { names, dtype: dtype.into(), dims });
        }
    }

    fn written_files() -> Vec<(String, Format, Vec<u8>, Vec<crate::formats::Companion>)> {
        use crate::config::Compression as C;
        let cases = [
            (Format::Npz, C::None, vec![]),
            (Format::Npz, C::Zip, vec![]),
            (Format::Npy, C::None, vec![]),
            (Format::Hdf5, C::None, vec![]),
            (Format::Hdf5, C::Gzip, vec![]),
            (Format::Hdf5, C::None, vec![2, 8, 8]),
            (Format::Tfrecord, C::None, vec![]),
            (Format::Csv, C::None, vec![]),
            (Format::Csv, C::Gzip, vec![]),
            (Format::Csv, C::Bz2, vec![]),
            (Format::Csv, C::Xz, vec![]),
            (Format::Csv, C::Zip, vec![]),
            (Format::Jpeg, C::None, vec![]),
            (Format::Png, C::None, vec![]),
            (Format::IndexedBinary, C::None, vec![]),
            (Format::MmapIndexedBinary, C::None, vec![]),
        ];
        cases
            .into_iter()
            .map(|(format, compression, record_dims)| {
                let mut c = crate::config::Config::default();
                c.dataset.format = format;
                c.dataset.compression = compression;
                c.dataset.num_samples_per_file = 4;
                c.dataset.record_length_bytes = 1024.0;
                c.dataset.record_element_type = "uint8".into();
                if !record_dims.is_empty() {
                    c.dataset.record_dims = vec![16, 16];
                    c.dataset.hdf5.chunk_dims = record_dims;
                }
                let spec = crate::layout::dataset_files(&c, 0, 1).remove(0);
                let mut data = crate::sink::data::SampleBytes::new(3, 1.0, 1.0);
                let mut sink = Vec::new();
                let companions = crate::formats::write_file(&c, &spec, &mut data, &mut sink).unwrap();
                (spec.key, format, sink, companions)
            })
            .collect()
    }

    /// Reads every sample of a file as the pipeline does (layout, then each sample's ranges, then decode).
    fn read_every_sample(
        format: Format,
        file: &[u8],
        companions: &[crate::formats::Companion],
        samples: &[u64],
        key: &str,
    ) -> io::Result<u64> {
        let companion = |suffix: &str| companions.iter().find(|c| c.key.ends_with(suffix)).map(|c| c.bytes.as_slice());
        let layout = match format {
            Format::Tfrecord => match companion(".idx") {
                Some(index) => FileLayout::Records(parse_tfrecord_index(index, key)?),
                None => FileLayout::Records(frame_tfrecords(file, key)?),
            },
            Format::IndexedBinary | Format::MmapIndexedBinary => FileLayout::Records(indexed_ranges(
                companion(".off.idx").unwrap_or(&[]),
                companion(".sz.idx").unwrap_or(&[]),
                key,
            )?),
            Format::Hdf5 => hdf5_rows(&file[..file.len().min(64 * 1024)]).unwrap_or(FileLayout::Whole),
            Format::Synthetic => FileLayout::Nothing,
            _ => FileLayout::Whole,
        };
        let mut decoded = 0;
        for &index in samples {
            let ranges = layout.ranges(index, key)?.unwrap_or_else(|| std::iter::once(0..file.len() as u64).collect());
            for r in ranges {
                let part = usize::try_from(r.start)
                    .ok()
                    .zip(usize::try_from(r.end).ok())
                    .and_then(|(start, end)| file.get(start..end))
                    .ok_or_else(|| invalid(format!("{key}: sample {index} lies past the end")))?;
                decoded += decode(format, part, key)?;
            }
        }
        Ok(decoded)
    }

    #[test]
    fn truncated_and_corrupted_files_of_every_format_are_errors_never_panics() {
        let mut rng = crate::sampler::Rng::new(11);
        for (key, format, file, companions) in written_files() {
            let whole = read_every_sample(format, &file, &companions, &[0, 1, 2, 3], &key);
            assert!(whole.is_ok(), "{key}: the file as written reads back: {whole:?}");
            // Formats whose readers know the length they need refuse a file cut one byte short of its last sample's
            // end (images and plain csv are read whole by PIL/pandas, which we do not emulate byte by byte; a
            // contiguous HDF5 file carries 32 bytes of metadata after its rows, and an HDF5 file without row layout
            // is read whole).
            let rows = (format == Format::Hdf5).then(|| hdf5_rows(&file)).flatten();
            let read_whole = matches!(format, Format::Jpeg | Format::Png | Format::Csv);
            let checks_length = !read_whole && (format != Format::Hdf5 || rows.is_some());
            if checks_length {
                let end = match &rows {
                    Some(layout) => layout.ranges(3, &key).unwrap().unwrap().last().unwrap().end as usize,
                    None => file.len(),
                };
                let short = read_every_sample(format, &file[..end - 1], &companions, &[0, 1, 2, 3], &key);
                assert!(
                    short.is_err(),
                    "{key}: a file cut one byte short of its last sample is an error, got {short:?}"
                );
            }
            for round in 0..400 {
                let mut bytes = file.clone();
                let mut companions = companions.clone();
                match round % 4 {
                    0 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                    1 | 2 => {
                        for _ in 0..=rng.below(8) {
                            let i = rng.below(bytes.len() as u64) as usize;
                            bytes[i] = rng.next_u64() as u8;
                        }
                    }
                    _ => {
                        for c in companions.iter_mut().filter(|c| !c.bytes.is_empty()) {
                            let i = rng.below(c.bytes.len() as u64) as usize;
                            c.bytes[i] = if rng.below(2) == 0 { 0xff } else { rng.next_u64() as u8 };
                            c.bytes.truncate(c.bytes.len() - rng.below(2) as usize);
                        }
                        // Giant lengths and offsets where the header holds them.
                        let at = rng.below(bytes.len().min(256) as u64) as usize;
                        let end = (at + 8).min(bytes.len());
                        bytes[at..end].fill(0xff);
                    }
                }
                // Errors are fine, panics (overflow, slicing, allocation) fail the test.
                let _ = read_every_sample(format, &bytes, &companions, &[0, 1, 2, 3, 4, 1 << 40, u64::MAX], &key);
            }
        }
    }

    #[test]
    fn giant_offsets_are_errors_not_wrap_arounds() {
        let max = u64::MAX.to_le_bytes();
        let e = indexed_ranges(&max, &8u64.to_le_bytes(), "f").unwrap_err().to_string();
        assert!(e.contains("f: sample 0: offset") && e.contains("overflows"), "{e}");
        let e = parse_tfrecord_index(format!("{} 2\n", u64::MAX).as_bytes(), "i").unwrap_err().to_string();
        assert!(e.contains("i: line 1: offset + length overflows"), "{e}");
        let arrays = RowArrays { names: vec!["records_0".into()], dtype: "<u1".into(), dims: vec![] };
        let rows = FileLayout::Rows { bases: vec![16], row: u64::MAX / 2, rows: 8, arrays };
        assert!(rows.ranges(3, "h").unwrap_err().to_string().contains("h: sample 3"));
    }

    #[test]
    fn npy_headers_are_checked() {
        let mut file = crate::formats::npy::header("<f4", &[2, 3, 4]);
        file.extend_from_slice(&[0u8; 96]);
        assert_eq!(npy_array_bytes(&file, "a.npy").unwrap(), 96);
        let e = npy_array_bytes(&file[..file.len() - 1], "a.npy").unwrap_err();
        assert!(e.to_string().contains("a.npy: the array of shape [2, 3, 4] needs 96 bytes"), "{e}");
        assert!(npy_array_bytes(b"PK\x03\x04junkjunk", "a.npy").unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn compressed_csv_decodes_to_the_plain_text() {
        use crate::config::Compression as C;
        let write = |compression: C| {
            let mut c = crate::config::Config::default();
            c.dataset.format = Format::Csv;
            c.dataset.compression = compression;
            c.dataset.num_samples_per_file = 3;
            c.dataset.record_length_bytes = 4096.0;
            let spec = crate::layout::dataset_files(&c, 0, 1).remove(0);
            let mut data = crate::sink::data::SampleBytes::new(7, 1.0, 1.0);
            let mut sink = Vec::new();
            crate::formats::write_file(&c, &spec, &mut data, &mut sink).map(|_| (spec.key, sink))
        };
        let (key, plain) = write(C::None).unwrap();
        assert!(key.ends_with("_of_8.csv") && plain.ends_with(b"\n"), "{key}");
        for (compression, suffix) in [(C::Gzip, ".csv.gz"), (C::Bz2, ".csv.bz2"), (C::Xz, ".csv.xz")] {
            let (key, mut file) = write(compression).unwrap();
            assert!(key.ends_with(suffix), "{key}");
            assert_eq!(decode(Format::Csv, &file, &key).unwrap(), plain.len() as u64, "{key}");
            let middle = file.len() / 2;
            file[middle] ^= 0x55;
            assert!(decode(Format::Csv, &file, &key).is_err(), "{key}: a damaged stream is an error");
        }
        let (key, zip) = write(C::Zip).unwrap();
        assert!(key.ends_with(".csv.zip") && zip.starts_with(b"PK\x03\x04"), "{key}");
        let name = key.rsplit('/').next().unwrap().strip_suffix(".zip").unwrap();
        assert_eq!(&zip[30..30 + name.len()], name.as_bytes(), "the one member is the file name without .zip");
        assert_eq!(decode(Format::Csv, &zip, &key).unwrap(), zip.len() as u64);
        let e = write(C::Lzf).unwrap_err().to_string();
        assert!(e.contains("dataset.compression lzf") && e.contains("expected none, gzip, bz2, xz or zip"), "{e}");
    }

    #[test]
    fn tfrecord_framing_and_crcs() {
        let mut file = Vec::new();
        for payload in [&b"hello"[..], b"world!"] {
            let len = (payload.len() as u64).to_le_bytes();
            file.extend_from_slice(&len);
            file.extend_from_slice(&crate::formats::tfrecord::masked_crc(crc32c::crc32c(&len)).to_le_bytes());
            file.extend_from_slice(payload);
            file.extend_from_slice(&crate::formats::tfrecord::masked_crc(crc32c::crc32c(payload)).to_le_bytes());
        }
        let records = frame_tfrecords(&file, "t").unwrap();
        assert_eq!(records, vec![0..21, 21..43]);
        assert_eq!(decode(Format::Tfrecord, &file[21..43], "t").unwrap(), 6);
        file[35] ^= 1;
        assert!(decode(Format::Tfrecord, &file[21..43], "t").unwrap_err().to_string().contains("data CRC"));
        assert!(frame_tfrecords(&file[..40], "t").unwrap_err().to_string().contains("past the end"));
        assert_eq!(parse_tfrecord_index(b"0 21\n21 22\n", "i").unwrap(), records);
        assert!(parse_tfrecord_index(b"0 x\n", "i").unwrap_err().to_string().contains("line 1"));
    }
}
