//! An HDF5 writer of our own (no libhdf5, so the wheel stays portable): superblock version 2, version-2 object
//! headers with Jenkins lookup3 checksums, a root group with compact links, and contiguous datasets
//! `records_0..k-1` of shape (samples, d1, d2) plus `labels` (int64 zeros), as DLIO's generator writes them.
//! Headers go first and the raw data streams after them, so a file of any size needs no buffering.
//! Chunked datasets (`dataset.hdf5.chunk_dims`, DLIO 2.0.0's `enable_chunking`/`chunk_size`, or any compression)
//! are indexed by a version-1 B-tree written before the chunks; with gzip, every chunk's compressed size must be known
//! before the headers, so the chunks are produced and compressed twice (the bytes are deterministic), one at a time.

use std::io;

use super::{element, fill_samples, Sink};
use crate::config::{Compression, Config, Hdf5};
use crate::layout::FileSpec;
use crate::sink::data::SampleBytes;

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

/// Where a dataset's raw data is.
enum Storage<'a> {
    Contiguous {
        address: u64,
    },
    /// Chunks of `chunk` elements indexed by the B-tree at `btree`, through `filter` if any.
    Chunked {
        btree: u64,
        chunk: &'a [u64],
        filter: Option<Filter>,
    },
}

/// The messages of a dataset of `dims` (at most `max_dims`) stored as `storage`.
fn dataset(dims: &[u64], max_dims: Option<&[u64]>, type_name: &str, storage: &Storage) -> Vec<(u8, Vec<u8>)> {
    let rank = u8::try_from(dims.len()).expect("few dims");
    let mut space = vec![2, rank, u8::from(max_dims.is_some()), 1]; // version 2, max dims flag, simple
    for d in dims.iter().chain(max_dims.unwrap_or_default()) {
        space.extend_from_slice(&d.to_le_bytes());
    }
    let element_size = element(type_name).1;
    let mut messages = vec![
        (0x01, space),
        (0x03, datatype(type_name)),
        (0x05, vec![3, 0x0a]), // fill value v3: allocation late, write fill if set, none set
    ];
    match storage {
        Storage::Contiguous { address } => {
            let mut layout = vec![3, 1]; // version 3, contiguous
            layout.extend_from_slice(&address.to_le_bytes());
            layout.extend_from_slice(&(dims.iter().product::<u64>() * element_size).to_le_bytes());
            messages.push((0x08, layout));
        }
        Storage::Chunked { btree, chunk, filter } => {
            // Version 3, chunked: one more dimension than the data, the element size.
            let mut layout = vec![3, 2, rank + 1];
            layout.extend_from_slice(&btree.to_le_bytes());
            for c in chunk.iter().chain([&element_size]) {
                layout.extend_from_slice(&u32::try_from(*c).expect("chunk sizes are checked").to_le_bytes());
            }
            messages.push((0x08, layout));
            if let Some(filter) = filter {
                // Filter pipeline v2 with one optional filter (a chunk it cannot shrink is stored as is): deflate (1)
                // with its level, or h5py's lzf (32000, named) with h5py's client data.
                let mut pipeline = vec![2, 1];
                let (id, name, values): (u16, &[u8], Vec<u32>) = match filter {
                    Filter::Deflate(level) => (1, b"", vec![*level]),
                    Filter::Lzf => {
                        let bytes = chunk.iter().product::<u64>() * element_size;
                        (32000, b"lzf\0", vec![4, 0x0105, u32::try_from(bytes).expect("chunk sizes are checked")])
                    }
                };
                pipeline.extend_from_slice(&id.to_le_bytes());
                if !name.is_empty() {
                    pipeline.extend_from_slice(&(name.len() as u16).to_le_bytes());
                }
                pipeline.extend_from_slice(&1u16.to_le_bytes()); // optional
                pipeline.extend_from_slice(&(values.len() as u16).to_le_bytes());
                pipeline.extend_from_slice(name);
                for v in values {
                    pipeline.extend_from_slice(&v.to_le_bytes());
                }
                messages.push((0x0b, pipeline));
            }
        }
    }
    messages
}

/// Chunks per node of a version-1 B-tree (2K, K = 32: HDF5's default for chunk indexes, implied by superblock v2).
const BTREE_ENTRIES: usize = 64;

/// A B-tree entry: its (left) key and its child's address.
type Entry = (Vec<u8>, u64);

/// A B-tree node: its entries, and the key that ends it.
struct Node {
    entries: Vec<Entry>,
    end: Vec<u8>,
}

/// The chunk grid of a dataset, and each chunk's stored size and filter mask.
#[derive(Clone)]
struct Chunks {
    dims: Vec<u64>,
    chunk: Vec<u64>,
    element_size: u64,
    /// (stored bytes, filter mask) per chunk, in row-major chunk order.
    stored: Vec<(u64, u32)>,
}

impl Chunks {
    fn bytes(&self) -> u64 {
        self.chunk.iter().product::<u64>() * self.element_size
    }

    /// Chunk `i`'s first element, in row-major chunk order.
    fn offset(&self, mut i: u64) -> Vec<u64> {
        let mut offset = vec![0; self.dims.len()];
        for axis in (0..self.dims.len()).rev() {
            let across = self.dims[axis].div_ceil(self.chunk[axis]);
            offset[axis] = i % across * self.chunk[axis];
            i /= across;
        }
        offset
    }

    fn count(&self) -> u64 {
        self.dims.iter().zip(&self.chunk).map(|(d, c)| d.div_ceil(*c)).product()
    }

    /// Bytes of B-tree nodes this index takes.
    fn index_len(&self) -> u64 {
        let key = 8 + 8 * (self.dims.len() as u64 + 1);
        let node = 24 + BTREE_ENTRIES as u64 * 8 + (BTREE_ENTRIES as u64 + 1) * key;
        let (mut nodes, mut level) = (0, self.count().div_ceil(BTREE_ENTRIES as u64).max(1));
        loop {
            nodes += level;
            if level == 1 {
                return nodes * node;
            }
            level = level.div_ceil(BTREE_ENTRIES as u64);
        }
    }

    /// The B-tree nodes, to be written at `at`, of the chunks stored from `data_at` on; the root node comes first.
    fn index(&self, at: u64, data_at: u64) -> Vec<u8> {
        let key_len = 8 + 8 * (self.dims.len() + 1);
        let node_len = 24 + BTREE_ENTRIES * 8 + (BTREE_ENTRIES + 1) * key_len;
        let encode = |bytes: u64, mask: u32, offset: &[u64]| {
            let mut k = Vec::with_capacity(key_len);
            k.extend_from_slice(&u32::try_from(bytes).expect("chunk sizes are checked").to_le_bytes());
            k.extend_from_slice(&mask.to_le_bytes());
            for o in offset {
                k.extend_from_slice(&o.to_le_bytes());
            }
            k
        };
        // Leaves: (left key, child address) per chunk; the last right key is one chunk past the last one.
        let mut entries = Vec::with_capacity(self.stored.len());
        let mut address = data_at;
        for (i, (bytes, mask)) in self.stored.iter().enumerate() {
            let mut offset = self.offset(i as u64);
            offset.push(0);
            entries.push((encode(*bytes, *mask, &offset), address));
            address += bytes;
        }
        let mut last = self.offset(self.stored.len() as u64 - 1);
        for (o, c) in last.iter_mut().zip(&self.chunk) {
            *o += c;
        }
        last.push(self.element_size);
        let right = encode(0, 0, &last);
        // Levels from the leaves up: each node holds up to BTREE_ENTRIES entries and ends with the key that starts
        // the next node (or the right key).
        let mut levels: Vec<Vec<Node>> = Vec::new();
        let mut current = entries;
        loop {
            let groups: Vec<&[Entry]> = current.chunks(BTREE_ENTRIES).collect();
            let nodes: Vec<Node> = groups
                .iter()
                .enumerate()
                .map(|(i, g)| Node {
                    entries: g.to_vec(),
                    end: groups.get(i + 1).map_or_else(|| right.clone(), |next| next[0].0.clone()),
                })
                .collect();
            let count = nodes.len();
            levels.push(nodes);
            if count == 1 {
                break;
            }
            // The parents' entries: each node's first key; their child addresses are computed when written.
            current = levels.last().expect("pushed").iter().map(|n| (n.entries[0].0.clone(), 0)).collect();
        }
        // Root first, then each level below it, left to right.
        let mut starts = Vec::with_capacity(levels.len());
        let mut next = at;
        for level in levels.iter().rev() {
            starts.push(next);
            next += (level.len() * node_len) as u64;
        }
        starts.reverse(); // starts[l] = address of level l's first node
        let mut out = Vec::with_capacity(usize::try_from(next - at).expect("indexes fit in memory"));
        for (l, level) in levels.iter().enumerate().rev() {
            for (i, Node { entries: children, end }) in level.iter().enumerate() {
                let node_at = |j: usize| starts[l] + (j * node_len) as u64;
                let start = out.len();
                out.extend_from_slice(b"TREE");
                out.push(1); // raw data chunks
                out.push(u8::try_from(l).expect("shallow trees"));
                out.extend_from_slice(&u16::try_from(children.len()).expect("at most 64").to_le_bytes());
                out.extend_from_slice(&(if i == 0 { UNDEFINED } else { node_at(i - 1) }).to_le_bytes());
                out.extend_from_slice(&(if i + 1 == level.len() { UNDEFINED } else { node_at(i + 1) }).to_le_bytes());
                for (j, (key, address)) in children.iter().enumerate() {
                    out.extend_from_slice(key);
                    // A leaf points at its chunk, an inner node at its child node.
                    let child =
                        if l == 0 { *address } else { starts[l - 1] + ((i * BTREE_ENTRIES + j) * node_len) as u64 };
                    out.extend_from_slice(&child.to_le_bytes());
                }
                out.extend_from_slice(end);
                out.resize(start + node_len, 0);
            }
        }
        out
    }
}

/// Largest compressed chunk: one is held in memory, with its compressed copy, per file being written.
const MAX_CHUNK_BYTES: u64 = 32 * 1024 * 1024;
/// Chunk size dl-driver picks when compression is asked for without chunk dimensions.
const AUTO_CHUNK_BYTES: u64 = 1024 * 1024;

/// The chunk shape of `dims`, if the dataset is chunked: `hdf5.chunk_dims`, else DLIO 2.0.0's `enable_chunking`
/// (`(1, c, c)` with c = ceil(sqrt(chunk_size))), else, when compressed or resizable, about 1 MiB chunks of whole
/// trailing rows. Chunk sides are capped at the dataset's (maximum) extent, as h5py requires.
fn chunk_shape(
    d: &crate::config::Dataset,
    dims: &[u64],
    max_dims: Option<&[u64]>,
    element_size: u64,
) -> io::Result<Option<Vec<u64>>> {
    let extent = |axis: usize| max_dims.map_or(dims[axis], |m| m[axis].max(dims[axis])).max(1);
    let chunk: Vec<u64> = if !d.hdf5.chunk_dims.is_empty() {
        if d.hdf5.chunk_dims.len() != dims.len() || d.hdf5.chunk_dims.contains(&0) {
            return Err(invalid(format!(
                "dataset.hdf5.chunk_dims {:?}: expected {} positive sizes, one per dimension of the records datasets {dims:?}",
                d.hdf5.chunk_dims,
                dims.len()
            )));
        }
        d.hdf5.chunk_dims.iter().enumerate().map(|(axis, c)| (*c).min(extent(axis))).collect()
    } else if d.enable_chunking {
        if d.chunk_size == 0 {
            return Err(invalid("dataset.chunk_size 0: enable_chunking needs a chunk size in bytes".into()));
        }
        let side = (d.chunk_size as f64).sqrt().ceil() as u64;
        (0..dims.len()).map(|axis| if axis == 0 { 1 } else { side.min(extent(axis)) }).collect()
    } else if d.compression != Compression::None || max_dims.is_some() {
        let mut chunk: Vec<u64> = (0..dims.len()).map(|axis| if axis == 0 { 1 } else { extent(axis) }).collect();
        for axis in 1..chunk.len() {
            while chunk.iter().product::<u64>() * element_size > AUTO_CHUNK_BYTES && chunk[axis] > 1 {
                chunk[axis] = chunk[axis].div_ceil(2);
            }
        }
        // Small samples: several per chunk, up to the target size.
        let sample_bytes = chunk[1..].iter().product::<u64>() * element_size;
        chunk[0] = (AUTO_CHUNK_BYTES / sample_bytes.max(1)).clamp(1, extent(0));
        chunk
    } else {
        return Ok(None);
    };
    if Hdf5::chunk_count(dims, &chunk).is_none_or(|n| n > Hdf5::MAX_CHUNKS) {
        return Err(invalid(format!(
            "HDF5 chunks of {chunk:?} elements tile the records datasets {dims:?} in more than {} chunks \
             (dataset.hdf5.chunk_dims / dataset.chunk_size): use larger chunks",
            Hdf5::MAX_CHUNKS
        )));
    }
    let bytes = chunk.iter().product::<u64>() * element_size;
    if d.compression != Compression::None && bytes > MAX_CHUNK_BYTES {
        return Err(invalid(format!(
            "compressed HDF5 chunks of {chunk:?} elements are {bytes} bytes: dl-driver holds a chunk in memory while \
             compressing it, at most {MAX_CHUNK_BYTES} bytes (dataset.hdf5.chunk_dims / dataset.chunk_size)"
        )));
    }
    if bytes > u64::from(u32::MAX) {
        return Err(invalid(format!("HDF5 chunks of {chunk:?} elements are {bytes} bytes: HDF5 allows under 4 GiB")));
    }
    Ok(Some(chunk))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
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
    let filter = match d.compression {
        Compression::None => None,
        Compression::Gzip => Some(Filter::Deflate(u32::try_from(d.compression_level.min(9)).expect("at most 9"))),
        Compression::Lzf => Some(Filter::Lzf),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("dataset.compression {other} for hdf5: HDF5 files take gzip, lzf or none"),
            ))
        }
    };
    let sets = d.hdf5.num_dset_per_record.max(1);
    let set_count =
        usize::try_from(sets).map_err(|_| invalid(format!("dataset.hdf5.num_dset_per_record {sets}: too many")))?;
    let type_name = d.record_element_type.as_str();
    let element_size = element(type_name).1;
    let dims = d.hdf5.records_dims(spec.samples, &spec.shape);
    if dims.len() > Hdf5::MAX_RANK {
        return Err(invalid(format!(
            "dataset.record_dims {:?}: the records datasets would have {} dimensions, HDF5 allows {}",
            spec.shape,
            dims.len(),
            Hdf5::MAX_RANK
        )));
    }
    let max_dims = if d.hdf5.max_shape.is_empty() {
        None
    } else if d.hdf5.max_shape.len() != dims.len() || d.hdf5.max_shape.iter().zip(&dims).any(|(m, d)| m < d) {
        return Err(invalid(format!(
            "dataset.hdf5.max_shape {:?}: expected {} sizes, each at least the records datasets' {dims:?}",
            d.hdf5.max_shape,
            dims.len()
        )));
    } else {
        Some(d.hdf5.max_shape.clone())
    };
    let chunks = chunk_shape(d, &dims, max_dims.as_deref(), element_size)?.map(|chunk| {
        let mut c = Chunks { dims: dims.clone(), chunk, element_size, stored: Vec::new() };
        let bytes = c.bytes();
        c.stored = vec![(bytes, 0); usize::try_from(c.count()).expect("chunk counts fit in memory")];
        c
    });
    let mut chunk_sets: Vec<Chunks> = Vec::new();
    if let Some(c) = chunks {
        chunk_sets = vec![c.clone(); set_count];
        if let Some(filter) = filter {
            // First pass: compress every chunk once to learn its stored size (same bytes as the second pass).
            let mut sizes = data.clone();
            let mut compressor = ChunkCompressor::new(c.bytes(), filter);
            for set in &mut chunk_sets {
                for stored in &mut set.stored {
                    let (bytes, mask) = compressor.compress(&mut sizes);
                    *stored = (bytes.len() as u64, mask);
                }
            }
        }
    }
    let names: Vec<String> = (0..sets).map(|i| format!("records_{i}")).chain(["labels".to_string()]).collect();

    // Addresses: superblock, root group header, dataset headers, chunk indexes, then the raw data of each dataset.
    let mut link_info = vec![0, 0];
    link_info.extend_from_slice(&UNDEFINED.to_le_bytes()); // no fractal heap: links are compact
    link_info.extend_from_slice(&UNDEFINED.to_le_bytes());
    // DLIO HEAD's reader opens `records_0`, DLIO 2.0.0's `records`: a second hard link to the first dataset serves
    // both (that dataset's header counts its two links).
    let root_messages = |addresses: &[u64]| -> Vec<(u8, Vec<u8>)> {
        let mut m = vec![(0x02, link_info.clone()), (0x0a, vec![0, 0])];
        m.extend(names.iter().zip(addresses).map(|(n, a)| link(n, *a)));
        m.push(link("records", addresses[0]));
        m
    };
    let counted = |set: usize, mut messages: Vec<(u8, Vec<u8>)>| {
        if set == 0 {
            messages.push((0x16, vec![0, 2, 0, 0, 0])); // object reference count, version 0: 2 links
        }
        messages
    };
    let storage = |set: usize, at: u64| match chunk_sets.get(set) {
        Some(c) => Storage::Chunked { btree: at, chunk: &c.chunk, filter },
        None => Storage::Contiguous { address: at },
    };
    let records_bytes = |set: usize| match chunk_sets.get(set) {
        Some(c) => c.stored.iter().map(|(bytes, _)| bytes).sum(),
        None => dims.iter().product::<u64>() * element_size,
    };
    let root_len = header_len(&root_messages(&vec![0; names.len()]));
    let headers_len: u64 = (0..set_count)
        .map(|set| header_len(&counted(set, dataset(&dims, max_dims.as_deref(), type_name, &storage(set, 0)))))
        .sum::<u64>()
        + header_len(&dataset(&[spec.samples], None, "int64", &Storage::Contiguous { address: 0 }));
    let mut header_at = SUPERBLOCK_LEN + root_len;
    let mut index_at = header_at + headers_len;
    let mut data_at = index_at + chunk_sets.iter().map(Chunks::index_len).sum::<u64>();
    let (mut headers, mut indexes, mut addresses) = (Vec::new(), Vec::new(), Vec::new());
    for set in 0..set_count {
        let messages = match chunk_sets.get(set) {
            Some(c) => {
                indexes.push(c.index(index_at, data_at));
                let messages = dataset(&dims, max_dims.as_deref(), type_name, &storage(set, index_at));
                index_at += c.index_len();
                messages
            }
            None => dataset(&dims, max_dims.as_deref(), type_name, &storage(set, data_at)),
        };
        let messages = counted(set, messages);
        data_at += records_bytes(set);
        addresses.push(header_at);
        header_at += header_len(&messages);
        headers.push(object_header(&messages));
    }
    let labels = dataset(&[spec.samples], None, "int64", &Storage::Contiguous { address: data_at });
    addresses.push(header_at);
    headers.push(object_header(&labels));
    data_at += spec.samples * 8;

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
    for h in headers.iter().chain(&indexes) {
        sink.write(h)?;
    }
    for set in 0..set_count {
        match (chunk_sets.get(set), filter) {
            (Some(c), Some(filter)) => {
                let mut compressor = ChunkCompressor::new(c.bytes(), filter);
                for expected in &c.stored {
                    let (bytes, mask) = compressor.compress(data);
                    debug_assert_eq!((bytes.len() as u64, mask), *expected, "both passes produce the same chunks");
                    sink.write(bytes)?;
                }
            }
            _ => fill_samples(sink, data, records_bytes(set), |_| {})?,
        }
    }
    sink.write(&vec![0u8; usize::try_from(spec.samples * 8).map_err(io::Error::other)?])
}

/// An HDF5 chunk filter dl-driver writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// zlib at this level (HDF5's deflate filter, `compression: gzip`).
    Deflate(u32),
    /// LZF (h5py's filter 32000).
    Lzf,
}

/// Produces chunks of sample bytes and filters them; a chunk the filter cannot shrink is stored as is, with its filter
/// skipped in the chunk's mask (the filters are optional, as h5py sets them).
struct ChunkCompressor {
    raw: Vec<u8>,
    out: Vec<u8>,
    filter: Filter,
    table: Vec<usize>,
}

impl ChunkCompressor {
    fn new(chunk_bytes: u64, filter: Filter) -> Self {
        let len = usize::try_from(chunk_bytes).expect("chunks are at most MAX_CHUNK_BYTES");
        let table = if filter == Filter::Lzf { vec![usize::MAX; LZF_TABLE] } else { Vec::new() };
        Self { raw: vec![0; len], out: Vec::with_capacity(len + len / 1000 + 64), filter, table }
    }

    /// The next chunk's stored bytes and filter mask.
    fn compress(&mut self, data: &mut SampleBytes) -> (&[u8], u32) {
        data.fill(&mut self.raw);
        self.out.clear();
        let shrunk = match self.filter {
            Filter::Deflate(level) => {
                let mut deflater = flate2::Compress::new(flate2::Compression::new(level), true);
                let status = deflater.compress_vec(&self.raw, &mut self.out, flate2::FlushCompress::Finish);
                matches!(status, Ok(flate2::Status::StreamEnd)) && self.out.len() < self.raw.len()
            }
            Filter::Lzf => lzf_compress(&self.raw, &mut self.out, &mut self.table),
        };
        if shrunk {
            (&self.out, 0)
        } else {
            (&self.raw, 1)
        }
    }
}

/// Hash slots of the LZF compressor.
const LZF_TABLE: usize = 1 << 14;

/// Compresses `input` into `out` in liblzf's format (literal runs of up to 32 bytes; back references of 3 to 264
/// bytes up to 8 KiB back); false when that would not be shorter than the input (h5py then stores the chunk as is).
fn lzf_compress(input: &[u8], out: &mut Vec<u8>, table: &mut [usize]) -> bool {
    table.fill(usize::MAX);
    let limit = input.len();
    let flush_literals = |out: &mut Vec<u8>, mut literals: &[u8]| {
        while !literals.is_empty() {
            let n = literals.len().min(32);
            out.push((n - 1) as u8);
            out.extend_from_slice(&literals[..n]);
            literals = &literals[n..];
        }
    };
    let (mut i, mut literal_start) = (0, 0);
    while i + 3 <= input.len() {
        if out.len() >= limit {
            return false;
        }
        let key = u32::from(input[i]) << 16 | u32::from(input[i + 1]) << 8 | u32::from(input[i + 2]);
        let slot = (key.wrapping_mul(0x9E37_79B1) >> 18) as usize % table.len();
        let candidate = std::mem::replace(&mut table[slot], i);
        if candidate != usize::MAX && i - candidate <= 8192 && input[candidate..candidate + 3] == input[i..i + 3] {
            let longest = (input.len() - i).min(264);
            let mut len = 3;
            while len < longest && input[candidate + len] == input[i + len] {
                len += 1;
            }
            flush_literals(out, &input[literal_start..i]);
            let (distance, code) = (i - candidate - 1, len - 2);
            if code < 7 {
                out.push(((code << 5) | (distance >> 8)) as u8);
            } else {
                out.push(((7 << 5) | (distance >> 8)) as u8);
                out.push((code - 7) as u8);
            }
            out.push((distance & 0xff) as u8);
            i += len;
            literal_start = i;
        } else {
            i += 1;
        }
    }
    flush_literals(out, &input[literal_start..]);
    out.len() < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// liblzf's decoder, to check the compressor against.
    fn lzf_decompress(mut input: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        while let Some((&ctrl, rest)) = input.split_first() {
            input = rest;
            if ctrl < 32 {
                let n = usize::from(ctrl) + 1;
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
            } else {
                let mut len = usize::from(ctrl >> 5);
                if len == 7 {
                    len += usize::from(input[0]);
                    input = &input[1..];
                }
                let back = (usize::from(ctrl & 0x1f) << 8 | usize::from(input[0])) + 1;
                input = &input[1..];
                for _ in 0..len + 2 {
                    out.push(out[out.len() - back]);
                }
            }
        }
        out
    }

    #[test]
    fn lzf_round_trips_and_gives_up_on_random_bytes() {
        let mut table = vec![0; LZF_TABLE];
        let mut text = b"abcabcabcabc hello hello hello ".repeat(500);
        text.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
        text.extend(std::iter::repeat_n(9u8, 1000));
        let mut out = Vec::new();
        assert!(lzf_compress(&text, &mut out, &mut table));
        assert!(out.len() < text.len() / 4, "compressible: {} of {}", out.len(), text.len());
        assert_eq!(lzf_decompress(&out), text);
        let mut random = vec![0u8; 100_000];
        SampleBytes::new(1, 1.0, 1.0).fill(&mut random);
        out.clear();
        assert!(!lzf_compress(&random, &mut out, &mut table), "random bytes do not shrink");
        let mut shaped = vec![0u8; 100_000];
        SampleBytes::new(1, 4.0, 1.0).fill(&mut shaped);
        out.clear();
        assert!(lzf_compress(&shaped, &mut out, &mut table));
        assert_eq!(lzf_decompress(&out), shaped);
    }

    #[test]
    fn lookup3_matches_the_reference_vectors() {
        assert_eq!(lookup3(b"", 0), 0xdead_beef);
        assert_eq!(lookup3(b"Four score and seven years ago", 0), 0x1777_0551);
        assert_eq!(lookup3(b"Four score and seven years ago", 1), 0xcd62_8161);
    }
}
