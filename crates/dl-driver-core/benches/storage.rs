//! Criterion benches of the core I/O paths: sequential reads from file:// (warm page cache) and direct://,
//! the 128 KiB small-object rate, multipart writes, put/get on the in-memory store (pure overhead), and the floor of
//! reading TFRecord records (pread + CRC-32C) against 1 MiB reads of the same bytes.
//! Run: `cargo bench -p dl-driver-core --bench storage`.

use std::path::PathBuf;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dl_driver_core::storage::{open, AlignedBuf, LocalStore, StorageOptions, Store};
use object_store::path::Path;

const MIB: usize = 1024 * 1024;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Writes `count` files of `size` bytes (once; reused by later runs) and returns their keys.
fn files(root: &std::path::Path, size: usize, count: usize) -> Vec<Path> {
    let data = vec![0xA5u8; size];
    (0..count)
        .map(|i| {
            let name = format!("f{size}-{i}");
            let path = root.join(&name);
            if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(size) {
                std::fs::write(&path, &data).unwrap();
            }
            Path::from(name)
        })
        .collect()
}

fn sequential_reads(c: &mut Criterion) {
    let root = dir("reads");
    let mut group = c.benchmark_group("sequential_read");
    for size in [MIB, 8 * MIB] {
        let keys = files(&root, size, 32);
        group.throughput(Throughput::Bytes(size as u64));
        for (label, direct) in [("file_warm", false), ("direct", true)] {
            let store = LocalStore::new(root.clone(), direct);
            let mut buf = AlignedBuf::with_capacity(size);
            let mut i = 0;
            group.bench_function(BenchmarkId::new(label, format!("{}MiB", size / MIB)), |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    store.read_into(&keys[i], None, &mut buf).unwrap()
                });
            });
        }
    }
    group.finish();
}

fn small_objects(c: &mut Criterion) {
    let root = dir("small");
    let keys = files(&root, 128 * 1024, 2000);
    let store = LocalStore::new(root, false);
    let mut buf = AlignedBuf::with_capacity(128 * 1024);
    let mut group = c.benchmark_group("small_objects_128KiB");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("file_warm_one_thread", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.read_into(&keys[i], None, &mut buf).unwrap()
        });
    });
    group.finish();
}

fn multipart_write(c: &mut Criterion) {
    let rt = runtime();
    let root = dir("writes");
    let mut options = StorageOptions::new();
    options.insert("part_size", (8 * MIB).to_string());
    let stores: Vec<(&str, Store)> = vec![
        ("file", open(&format!("file://{}", root.display()), &options).unwrap()),
        ("memory", open("memory://bench", &options).unwrap()),
    ];
    let chunk = Bytes::from(vec![0x5Au8; MIB]);
    let mut group = c.benchmark_group("multipart_write_64MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(64 * MIB as u64));
    for (label, store) in &stores {
        group.bench_function(*label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut writer = store.writer("multipart.bin").await.unwrap();
                    for _ in 0..64 {
                        writer.write(chunk.clone()).await.unwrap();
                    }
                    writer.finish().await.unwrap();
                });
            });
        });
    }
    group.finish();
}

fn memory_overhead(c: &mut Criterion) {
    let rt = runtime();
    let store = open("memory://overhead", &StorageOptions::new()).unwrap();
    let data = Bytes::from(vec![1u8; 4096]);
    let mut group = c.benchmark_group("memory_store_4KiB");
    group.throughput(Throughput::Elements(1));
    group.bench_function("put", |b| b.iter(|| rt.block_on(store.put("k", data.clone())).unwrap()));
    group.bench_function("get", |b| b.iter(|| rt.block_on(store.get("k")).unwrap()));
    group.finish();
}

/// What reading a resnet50-shaped TFRecord file costs at the least, on 1 and 2 threads: each thread reads 256
/// consecutive records of 114,676 bytes (a 112 KiB image and its framing) with `pread` into a page-aligned buffer of
/// its own, from one open file in the page cache, with and without CRC-32C over each record (TF's reader checks it,
/// and so does dl-driver); beside it, the same bytes in 1 MiB reads (what fio's page-cache limit reads), with and
/// without CRC-32C over each block (a reader of big blocks that checks every byte). The ratio of the faster CRC row
/// to the plain 1 MiB row bounds the share of that limit a correct tfrecord reader can reach here.
fn record_floor(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    const RECORD: usize = 114_676;
    const RECORDS: usize = 1251;
    const PER_ITER: usize = 256;
    let root = dir("records");
    let key = &files(&root, RECORD * RECORDS, 1)[0];
    let file = std::fs::File::open(root.join(key.as_ref())).unwrap();
    let mut group = c.benchmark_group("tfrecord_floor");
    for threads in [1usize, 2] {
        for (label, size, crc) in [
            ("1MiB_reads", MIB, false),
            ("1MiB_reads_crc32c", MIB, true),
            ("record_reads", RECORD, false),
            ("record_reads_crc32c", RECORD, true),
        ] {
            let bytes = PER_ITER * RECORD;
            group.throughput(Throughput::Bytes((threads * bytes) as u64));
            let mut start = 0usize;
            group.bench_function(BenchmarkId::new(label, format!("{threads}_threads")), |b| {
                b.iter(|| {
                    start = (start + bytes) % (RECORD * (RECORDS - PER_ITER));
                    std::thread::scope(|scope| {
                        for t in 0..threads {
                            let file = &file;
                            let from = (start + t * bytes / 2) % (RECORD * (RECORDS - PER_ITER));
                            scope.spawn(move || {
                                let mut buf = AlignedBuf::with_capacity(size);
                                let mut sum = 0u32;
                                let mut at = 0;
                                while at < bytes {
                                    let n = size.min(bytes - at);
                                    let piece = &mut buf.spare_mut()[..n];
                                    file.read_exact_at(piece, (from + at) as u64).unwrap();
                                    if crc {
                                        sum ^= crc32c::crc32c(piece);
                                    }
                                    at += n;
                                }
                                std::hint::black_box(sum)
                            });
                        }
                    });
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sequential_reads, small_objects, multipart_write, memory_overhead, record_floor);
criterion_main!(benches);
