//! Checkpoint files streamed to local stores: the producing and the writing thread, reserved space, zstd, and a
//! failing device (an error, never a hang or a file under the checkpoint's name).

use dl_driver_core::checkpoint::stream::{read_file, write_file, WriteOptions, CHUNK};
use dl_driver_core::metrics::Latency;
use dl_driver_core::storage::{open, BufferPool, StorageOptions};
use indicatif::ProgressBar;

fn scratch(name: &str) -> std::path::PathBuf {
    // CARGO_TARGET_TMPDIR is on the build disk, not tmpfs (which refuses O_DIRECT).
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(zstd_level: Option<i32>) -> WriteOptions {
    WriteOptions { zstd_level, randomize: true, fsync: true, seed: 7, progress: ProgressBar::hidden() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_round_trip_with_and_without_zstd() {
    let dir = scratch("round-trip");
    let pool = BufferPool::new(CHUNK);
    for scheme in ["file", "direct"] {
        let store = open(&format!("{scheme}://{}", dir.display()), &StorageOptions::new()).unwrap();
        for level in [None, Some(3)] {
            let key = format!("{scheme}-{level:?}.pt");
            let size = (5 << 20) + 333;
            let mut latency = Latency::default();
            let written = options(level);
            let entry = write_file(&store, &key, 0, size, written.clone(), &pool, &mut latency).await.unwrap();
            assert_eq!(entry.bytes, size);
            assert_eq!(written.progress.position(), size, "{key}: the bar counts the tensor bytes");
            assert_eq!(std::fs::metadata(dir.join(&key)).unwrap().len(), entry.stored_bytes, "{key}: no padding");
            assert!(latency.summary().count >= 1, "{key}: chunk writes are timed");
            let read = ProgressBar::hidden();
            assert_eq!(read_file(&store, &key, &entry, level.is_some(), &read).await.unwrap(), entry.stored_bytes);
            assert_eq!(read.position(), entry.stored_bytes, "{key}: the bar counts the stored bytes read");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_local_write_is_an_error_not_a_hang() {
    let dir = scratch("full-disk");
    // The temporary file is /dev/full: every write fails with ENOSPC while the producer is still producing.
    std::os::unix::fs::symlink("/dev/full", dir.join(".dl-driver-shard.pt.tmp")).unwrap();
    let store = open(&format!("file://{}", dir.display()), &StorageOptions::new()).unwrap();
    let pool = BufferPool::new(CHUNK);
    let mut latency = Latency::default();
    let written = write_file(&store, "shard.pt", 0, 64 << 20, options(None), &pool, &mut latency);
    let error = tokio::time::timeout(std::time::Duration::from_secs(30), written).await.unwrap().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("shard.pt") && message.contains("No space left"), "{message}");
    assert!(!dir.join("shard.pt").exists(), "nothing appears under the file's name");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_state_round_trips_in_pieces_and_a_flipped_byte_fails() {
    use dl_driver_core::checkpoint::state::{StateReader, StateWriter};
    let store = open("memory://state-round-trip", &StorageOptions::new()).unwrap();
    let data: Vec<u8> = (0..(3 << 20) + 77).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for level in [None, Some(3)] {
        let key = format!("s{level:?}/rank0-tensors.bin");
        let mut writer = StateWriter::create(&store, &key, 0, level, false).await.unwrap();
        for piece in data.chunks(1_000_003) {
            writer.write(bytes::Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let entry = writer.finish().await.unwrap();
        assert_eq!((entry.bytes, entry.name.as_str()), (data.len() as u64, "rank0-tensors.bin"));
        let mut reader = StateReader::open(&store, &key, &entry, level.is_some()).await.unwrap();
        let mut back = vec![0u8; data.len()];
        let mut at = 0;
        for size in [1, 4095, 1 << 20, 7].iter().cycle() {
            let end = (at + size).min(back.len());
            assert_eq!(reader.read(&mut back[at..end]).await.unwrap(), end - at);
            at = end;
            if at == back.len() {
                break;
            }
        }
        assert!(back == data, "{key}: the bytes come back as written");
        reader.finish().await.unwrap();
        // One flipped bit in the stored object: the checksum (or zstd) says so.
        let mut stored = store.get(&key).await.unwrap().to_vec();
        let middle = stored.len() / 2;
        stored[middle] ^= 0x10;
        store.put(&key, stored.into()).await.unwrap();
        let mut reader = StateReader::open(&store, &key, &entry, level.is_some()).await.unwrap();
        let mut sink = vec![0u8; data.len()];
        let failed = match reader.read(&mut sink).await {
            Err(e) => e.to_string(),
            Ok(_) => reader.finish().await.unwrap_err().to_string(),
        };
        assert!(failed.contains("checksum mismatch") || failed.contains("zstd"), "{key}: {failed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_state_files_fill_targets_in_parallel_reads_with_the_same_checks() {
    use dl_driver_core::checkpoint::state::{StateReader, StateWriter};
    let dir = scratch("state-fill");
    let store = open(&format!("file://{}", dir.display()), &StorageOptions::new()).unwrap();
    // Large enough for several parallel parts (4 MiB each), with an odd tail.
    let data: Vec<u8> = (0..(21 << 20) + 333).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let key = "c/rank0-tensors.bin";
    let mut writer = StateWriter::create(&store, key, 0, None, true).await.unwrap();
    writer.write(bytes::Bytes::from(data.clone())).await.unwrap();
    let entry = writer.finish().await.unwrap();
    // A small piece through the buffered path first: the next fill must not skip or repeat its bytes.
    let mut reader = StateReader::open(&store, key, &entry, false).await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(reader.read(&mut back[..100]).await.unwrap(), 100);
    assert!(reader.fill_local(&mut back[100..]).is_none(), "bytes are buffered: the direct path must decline");
    let mut at = 100;
    while at < back.len() {
        at += reader.read(&mut back[at..]).await.unwrap();
    }
    assert!(back == data);
    reader.finish().await.unwrap();
    // Straight into the target, in pieces around the part size, then past the end.
    let mut reader = StateReader::open(&store, key, &entry, false).await.unwrap();
    let mut back = vec![0u8; data.len() + 10];
    let mut at = 0;
    for size in [(9 << 20) + 5, 1, 12 << 20, 1 << 20] {
        let end = (at + size).min(back.len());
        at += reader.fill_local(&mut back[at..end]).expect("a local uncompressed file").unwrap();
    }
    assert_eq!(at, data.len(), "fewer bytes only at the end of the file");
    assert!(back[..data.len()] == data[..]);
    reader.finish().await.unwrap();
    // A flipped byte in the middle of a parallel part fails the combined CRC.
    let path = dir.join(key);
    let mut stored = std::fs::read(&path).unwrap();
    stored[13 << 20] ^= 0x01;
    std::fs::write(&path, stored).unwrap();
    let mut reader = StateReader::open(&store, key, &entry, false).await.unwrap();
    let mut sink = vec![0u8; data.len()];
    assert_eq!(reader.fill_local(&mut sink).unwrap().unwrap(), data.len());
    let failed = reader.finish().await.unwrap_err().to_string();
    assert!(failed.contains("checksum mismatch"), "{failed}");
    // zstd files and object stores decline: the caller reads through the buffered path.
    let memory = open("memory://state-fill", &StorageOptions::new()).unwrap();
    let mut writer = StateWriter::create(&memory, key, 0, None, true).await.unwrap();
    writer.write(bytes::Bytes::from(data[..1000].to_vec())).await.unwrap();
    let entry = writer.finish().await.unwrap();
    let mut reader = StateReader::open(&memory, key, &entry, false).await.unwrap();
    assert!(reader.fill_local(&mut sink[..1000]).is_none());
}
