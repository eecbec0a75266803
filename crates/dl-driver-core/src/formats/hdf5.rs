//! An HDF5 writer of our own (no libhdf5, so the wheel stays portable): superblock version 2, version-2 object
//! headers with Jenkins lookup3 checksums, a root group with compact links, and contiguous datasets
//! `records_0..k-1` of shape (samples, d1, d2) plus `labels` (int64 zeros), as DLIO's generator writes them.
//! Headers go first and the raw data streams after them, so a file of any size needs no buffering.
//! Compression and chunking (filters, chunk indexes) are not written: asking for them is an error.

use std::io;

use super::{element, fill_samples, Sink};
use crate::config::{Compression, Config};
use crate::generate::data::SampleBytes;
use crate::generate::layout::FileSpec;

const UNDEFINED: u64 = u64::MAX;
const SUPERBLOCK_LEN: u64 = 48;

/// Jenkins' lookup3 `hashlittle`, the checksum of HDF5 metadata.
pub fn lookup3(data: &[u8], initval: u32) -> u32 {
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    let mut a = 0xdead_beef_u32.wrapping_add(data.len() as u32).wrapping_add(initval);
    let (mut b, mut c) = (a, a);
    let mut k = data;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    let mut tail = [0u8; 12];
    tail[..k.len()].copy_from_slice(k);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]));
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    (c ^ b).wrapping_sub(b.rotate_left(24))
}

/// A version-2 object header holding `messages` (type, body).
fn object_header(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let body: usize = messages.iter().map(|(_, m)| 4 + m.len()).sum();
    let mut h = Vec::with_capacity(16 + body);
    h.extend_from_slice(b"OHDR");
    h.push(2); // version
    h.push(0x02); // "size of chunk 0" is 4 bytes; no times, no attribute phase values
    h.extend_from_slice(&u32::try_from(body).expect("headers are small").to_le_bytes());
    for (kind, message) in messages {
        h.push(*kind);
        h.extend_from_slice(&u16::try_from(message.len()).expect("messages are small").to_le_bytes());
        h.push(0); // message flags
        h.extend_from_slice(message);
    }
    let checksum = lookup3(&h, 0);
    h.extend_from_slice(&checksum.to_le_bytes());
    h
}

fn header_len(messages: &[(u8, Vec<u8>)]) -> u64 {
    (4 + 1 + 1 + 4 + messages.iter().map(|(_, m)| 4 + m.len()).sum::<usize>() + 4) as u64
}

/// The datatype message body of a numpy dtype name.
fn datatype(type_name: &str) -> Vec<u8> {
    let (_, size) = element(type_name);
    let size32 = size as u32;
    let mut m = Vec::with_capacity(24);
    if type_name.starts_with("float") {
        let (sign, exp_loc, exp_size, mant_size, bias): (u8, u8, u8, u8, u32) = match size {
            2 => (15, 10, 5, 10, 15),
            4 => (31, 23, 8, 23, 127),
            _ => (63, 52, 11, 52, 1023),
        };
        m.extend_from_slice(&[0x11, 0x20, sign, 0]); // version 1, floating point; LE, implied mantissa bit
        m.extend_from_slice(&size32.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes()); // bit offset
        m.extend_from_slice(&(size32 as u16 * 8).to_le_bytes()); // precision
        m.extend_from_slice(&[exp_loc, exp_size, 0, mant_size]);
        m.extend_from_slice(&bias.to_le_bytes());
    } else {
        let signed = if type_name.starts_with("int") { 0x08 } else { 0 };
        m.extend_from_slice(&[0x10, signed, 0, 0]); // version 1, fixed point, little-endian
        m.extend_from_slice(&size32.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&(size32 as u16 * 8).to_le_bytes());
    }
    m
}

/// The messages of a contiguous dataset of `dims` at `address`.
fn dataset(dims: &[u64], type_name: &str, address: u64) -> Vec<(u8, Vec<u8>)> {
    let mut space = vec![2, u8::try_from(dims.len()).expect("few dims"), 0, 1]; // version 2, simple
    for d in dims {
        space.extend_from_slice(&d.to_le_bytes());
    }
    let bytes = dims.iter().product::<u64>() * element(type_name).1;
    let mut layout = vec![3, 1]; // version 3, contiguous
    layout.extend_from_slice(&address.to_le_bytes());
    layout.extend_from_slice(&bytes.to_le_bytes());
    vec![
        (0x01, space),
        (0x03, datatype(type_name)),
        (0x05, vec![3, 0x0a]), // fill value v3: allocation late, write fill if set, none set
        (0x08, layout),
    ]
}

fn link(name: &str, address: u64) -> (u8, Vec<u8>) {
    let mut m = vec![1, 0, u8::try_from(name.len()).expect("short names")]; // version 1, hard link
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&address.to_le_bytes());
    (0x06, m)
}

/// Writes one HDF5 file of `spec`.
pub fn write(config: &Config, spec: &FileSpec, data: &mut SampleBytes, sink: &mut dyn Sink) -> io::Result<()> {
    let d = &config.dataset;
    if d.compression != Compression::None || !d.hdf5.chunk_dims.is_empty() || !d.hdf5.max_shape.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "dl-driver's HDF5 writer writes contiguous, uncompressed datasets: dataset.compression, \
             dataset.hdf5.chunk_dims and dataset.hdf5.max_shape are not supported yet",
        ));
    }
    let sets = d.hdf5.num_dset_per_record.max(1);
    let type_name = d.record_element_type.as_str();
    let mut dims = vec![spec.samples];
    match spec.shape.as_slice() {
        // DLIO drops a leading 1 of record_dims and splits the first dimension over the datasets.
        [1, rest @ ..] if !rest.is_empty() => dims.extend_from_slice(rest),
        [first, rest @ ..] => {
            dims.push(first / sets);
            dims.extend_from_slice(rest);
        }
        [] => {}
    }
    let names: Vec<String> = (0..sets).map(|i| format!("records_{i}")).chain(["labels".to_string()]).collect();
    let shapes: Vec<(Vec<u64>, &str)> =
        (0..sets).map(|_| (dims.clone(), type_name)).chain([(vec![spec.samples], "int64")]).collect();

    // Addresses: superblock, root group header, dataset headers, then the raw data of each dataset in order.
    let mut link_info = vec![0, 0];
    link_info.extend_from_slice(&UNDEFINED.to_le_bytes()); // no fractal heap: links are compact
    link_info.extend_from_slice(&UNDEFINED.to_le_bytes());
    let root_messages = |addresses: &[u64]| -> Vec<(u8, Vec<u8>)> {
        let mut m = vec![(0x02, link_info.clone()), (0x0a, vec![0, 0])];
        m.extend(names.iter().zip(addresses).map(|(n, a)| link(n, *a)));
        m
    };
    let root_len = header_len(&root_messages(&vec![0; names.len()]));
    let mut header_at = SUPERBLOCK_LEN + root_len;
    let headers_len: u64 = shapes.iter().map(|(dims, t)| header_len(&dataset(dims, t, 0))).sum();
    let mut data_at = header_at + headers_len;
    let mut dataset_headers = Vec::new();
    let mut addresses = Vec::new();
    for (dims, t) in &shapes {
        let messages = dataset(dims, t, data_at);
        addresses.push(header_at);
        header_at += header_len(&messages);
        data_at += dims.iter().product::<u64>() * element(t).1;
        dataset_headers.push(object_header(&messages));
    }
    let mut superblock = Vec::with_capacity(48);
    superblock.extend_from_slice(b"\x89HDF\r\n\x1a\n");
    superblock.extend_from_slice(&[2, 8, 8, 0]); // version 2, 8-byte offsets and lengths, no flags
    superblock.extend_from_slice(&0u64.to_le_bytes()); // base address
    superblock.extend_from_slice(&UNDEFINED.to_le_bytes()); // no superblock extension
    superblock.extend_from_slice(&data_at.to_le_bytes()); // end of file
    superblock.extend_from_slice(&SUPERBLOCK_LEN.to_le_bytes()); // root group object header
    let checksum = lookup3(&superblock, 0);
    superblock.extend_from_slice(&checksum.to_le_bytes());
    sink.write(&superblock)?;
    sink.write(&object_header(&root_messages(&addresses)))?;
    for h in &dataset_headers {
        sink.write(h)?;
    }
    for (dims, t) in &shapes[..shapes.len() - 1] {
        fill_samples(sink, data, dims.iter().product::<u64>() * element(t).1, |_| {})?;
    }
    sink.write(&vec![0u8; usize::try_from(spec.samples * 8).map_err(io::Error::other)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup3_matches_the_reference_vectors() {
        assert_eq!(lookup3(b"", 0), 0xdead_beef);
        assert_eq!(lookup3(b"Four score and seven years ago", 0), 0x1777_0551);
        assert_eq!(lookup3(b"Four score and seven years ago", 1), 0xcd62_8161);
    }
}
