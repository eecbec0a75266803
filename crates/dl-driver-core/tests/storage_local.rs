//! Local stores: O_DIRECT alignment handling, page-cache bypass, atomic writes, reused buffers.
//! (The conformance suite that runs against every backend is tests/test_storage_conformance.py.)

use std::path::PathBuf;

use bytes::Bytes;
use dl_driver_core::storage::{open, AlignedBuf, StorageOptions, Store};

fn scratch(name: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is on the build disk, not tmpfs: O_DIRECT there really bypasses the page cache.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn store(scheme: &str, dir: &std::path::Path) -> Store {
    open(&format!("{scheme}://{}", dir.display()), &StorageOptions::new()).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_round_trips_unaligned_sizes_and_ranges() {
    let dir = scratch("direct-sizes");
    let direct = store("direct", &dir);
    let file = store("file", &dir);
    for (i, len) in [0usize, 1, 511, 4095, 4096, 4097, 1 << 20, (8 << 20) + 123, (20 << 20) + 7].into_iter().enumerate()
    {
        let data = pattern(len, i as u8);
        let key = format!("d/obj-{len}");
        direct.put(&key, Bytes::from(data.clone())).await.unwrap();
        assert_eq!(std::fs::metadata(dir.join(&key)).unwrap().len(), len as u64, "no padding left behind");
        assert_eq!(direct.get(&key).await.unwrap().as_ref(), &data[..], "direct get of {len} bytes");
        assert_eq!(file.get(&key).await.unwrap().as_ref(), &data[..], "file get of {len} bytes");
        if len > 5000 {
            let r = direct.get_range(&key, 4000..len as u64 - 3).await.unwrap();
            assert_eq!(r.as_ref(), &data[4000..len - 3]);
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_multipart_with_unaligned_tail() {
    let dir = scratch("direct-multipart");
    let mut options = StorageOptions::new();
    options.insert("part_size", (1 << 20).to_string()).insert("max_in_flight", "3");
    let direct = open(&format!("direct://{}", dir.display()), &options).unwrap();
    let data = pattern((5 << 20) + 1000, 9);
    let mut writer = direct.writer("big").await.unwrap();
    for chunk in data.chunks(300_000) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert!(!dir.join("big").exists(), "not visible before finish");
    writer.finish().await.unwrap();
    assert_eq!(direct.get("big").await.unwrap().as_ref(), &data[..]);
    let mut aborted = direct.writer("gone").await.unwrap();
    aborted.write(Bytes::from(pattern(3 << 20, 1))).await.unwrap();
    aborted.abort().await.unwrap();
    assert!(!direct.exists("gone").await.unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("big")], "no temporary files remain");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_writers_stream_from_the_calling_thread() {
    let dir = scratch("file-writer");
    for scheme in ["file", "direct"] {
        let store = store(scheme, &dir);
        let data = pattern((9 << 20) + 4321, 3);
        // A temporary file left by a writer that died is taken over and emptied.
        std::fs::create_dir_all(dir.join(scheme)).unwrap();
        std::fs::write(dir.join(format!("{scheme}/.dl-driver-obj.tmp")), pattern(data.len() + 10_000, 1)).unwrap();
        let local = store.local().expect("file:// and direct:// stores are local files");
        let mut writer = local.file_writer(&format!("{scheme}/obj")).unwrap();
        let (head, rest) = data.split_at(777);
        writer.write(head).unwrap();
        let mut at = 0;
        writer
            .fill(rest.len() as u64, &mut |buf| {
                buf.copy_from_slice(&rest[at..at + buf.len()]);
                at += buf.len();
            })
            .unwrap();
        assert!(!dir.join(format!("{scheme}/obj")).exists(), "{scheme}: not visible before finish");
        let (size, latency) = writer.finish(true).unwrap();
        assert_eq!(size, data.len() as u64);
        assert!(latency.summary().count >= 2, "{scheme}: chunk writes are timed");
        assert_eq!(std::fs::read(dir.join(format!("{scheme}/obj"))).unwrap(), data, "{scheme}: same bytes, no padding");
        let mut dropped = local.file_writer(&format!("{scheme}/gone")).unwrap();
        dropped.write(&data[..3 << 20]).unwrap();
        drop(dropped);
        let left: Vec<_> = std::fs::read_dir(dir.join(scheme)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("obj")], "{scheme}: no temporary files remain");
    }
    assert!(open("memory://x", &StorageOptions::new()).unwrap().local().is_none(), "only local stores");
    std::fs::remove_dir_all(dir).unwrap();
}

fn read_bytes_of_this_process() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines().find_map(|l| l.strip_prefix("read_bytes: ")).expect("read_bytes line").trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_bypass_the_page_cache() {
    let dir = scratch("direct-bypass");
    let file = store("file", &dir);
    let direct = store("direct", &dir);
    let len = 32 << 20;
    file.put("x", Bytes::from(pattern(len, 3))).await.unwrap();
    // Warm the page cache through file://, then read again: served from memory, no device reads.
    let buf = AlignedBuf::with_capacity(len);
    let (buf, _) = file.read_into("x", None, buf).await.unwrap();
    let before = read_bytes_of_this_process();
    let (buf, _) = file.read_into("x", None, buf).await.unwrap();
    let cached = read_bytes_of_this_process() - before;
    // The same file through direct:// goes to the device although every page is cached.
    let before = read_bytes_of_this_process();
    let (buf, skip) = direct.read_into("x", None, buf).await.unwrap();
    let uncached = read_bytes_of_this_process() - before;
    assert_eq!(&buf.as_slice()[skip..], &pattern(len, 3)[..]);
    assert!(cached < (len as u64) / 8, "a cached buffered read fetched {cached} bytes from the device");
    assert!(uncached >= len as u64, "an O_DIRECT read fetched only {uncached} of {len} bytes from the device");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_into_reuses_the_buffer() {
    let dir = scratch("reuse");
    let file = store("file", &dir);
    file.put("a", Bytes::from(pattern(100_000, 1))).await.unwrap();
    file.put("b", Bytes::from(pattern(50_000, 2))).await.unwrap();
    let buf = AlignedBuf::with_capacity(1 << 20);
    let address = buf.as_slice().as_ptr();
    let (buf, skip) = file.read_into("a", None, buf).await.unwrap();
    assert_eq!((&buf.as_slice()[skip..], buf.as_slice().as_ptr()), (&pattern(100_000, 1)[..], address));
    let (buf, skip) = file.read_into("b", Some(10..20_010), buf).await.unwrap();
    assert_eq!((&buf.as_slice()[skip..], buf.as_slice().as_ptr()), (&pattern(50_000, 2)[10..20_010], address));
    let e = file.read_into("missing", None, buf).await.unwrap_err();
    assert!(e.is_not_found() && e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn options_for_the_wrong_backend_are_rejected() {
    let mut options = StorageOptions::new();
    options.insert("endpoint_url", "http://127.0.0.1:9");
    let e = open("file:///tmp/x", &options).unwrap_err().to_string();
    assert!(e.contains("endpoint_url") && e.contains("file:///tmp/x"), "{e}");
    let mut options = StorageOptions::new();
    options.insert("no_such_option", "1");
    let e = open("s3://bucket/p", &options).unwrap_err().to_string();
    assert!(e.contains("no_such_option") && e.contains("unknown option"), "{e}");
    let e = open("ftp://x/y", &StorageOptions::new()).unwrap_err().to_string();
    assert!(e.contains("ftp://"), "{e}");
}

#[tokio::test]
async fn get_stream_yields_the_whole_object() {
    use futures::TryStreamExt;
    let store = open("memory://stream", &StorageOptions::new()).unwrap();
    let data = pattern(3 << 20, 4);
    store.put("s", Bytes::from(data.clone())).await.unwrap();
    let chunks: Vec<Bytes> = store.get_stream("s").await.unwrap().try_collect().await.unwrap();
    assert_eq!(chunks.concat(), data);
    assert!(store.get_stream("missing").await.err().is_some_and(|e| e.is_not_found()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_symlinks_and_accepts_trailing_slashes() {
    let dir = scratch("symlinks");
    let data = dir.join("real");
    std::fs::create_dir_all(data.join("train")).unwrap();
    std::fs::write(data.join("train/a.npz"), b"a").unwrap();
    std::os::unix::fs::symlink(data.join("train/a.npz"), data.join("train/b.npz")).unwrap();
    std::os::unix::fs::symlink(&data, data.join("train/loop")).unwrap();
    let store = store("file", &data);
    let keys: Vec<String> = store.list("train/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert!(keys.contains(&"train/a.npz".to_string()) && keys.contains(&"train/b.npz".to_string()), "{keys:?}");
    assert!(keys.len() < 10, "a symlink cycle is walked once: {keys:?}");
    assert!(open(&format!("file://{}", dir.join("absent").display()), &StorageOptions::new()).is_ok());
    assert!(!dir.join("absent").exists(), "opening a location creates nothing");
    std::fs::remove_dir_all(dir).unwrap();
}
