//! A real training state's checkpoint files from Python (`dl_driver.torch`'s checkpoints): a writer that streams
//! the buffers it is given (tensors' memory) through the core's [`state`] writer, a reader that fills the caller's
//! buffers and checks the file against its manifest entry, and the manifest itself.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use dl_driver_core::checkpoint::manifest::{self, Manifest};
use dl_driver_core::checkpoint::state;
use dl_driver_core::checkpoint::stream::FileEntry;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use crate::error::{Error, Result};
use crate::runtime;
use crate::storage::open_store;

fn closed(what: &str) -> Error {
    Error::config(format!("this {what} is closed (finished, or stopped by an error)"))
}

fn json_error(what: &str, e: &serde_json::Error) -> Error {
    Error::config(format!("{what}: not a valid checkpoint manifest entry: {e}"))
}

/// One checkpoint file written from buffers: `write(buffer)` appends (zstd when asked, CRC-32C of what is stored),
/// `finish()` completes the file (a local one on the device, with `fsync`) and returns its manifest entry as JSON; a
/// writer dropped unfinished discards it.
#[pyclass(module = "dl_driver._core")]
pub struct StateWriter {
    /// `None` once finished or failed (a Mutex: Python classes must be Sync, an upload is not).
    inner: Mutex<Option<state::StateWriter>>,
}

#[pymethods]
impl StateWriter {
    #[new]
    #[pyo3(signature = (uri, key, rank = 0, zstd_level = None, options = None, fsync = false))]
    fn new(
        py: Python<'_>,
        uri: &str,
        key: String,
        rank: u64,
        zstd_level: Option<i32>,
        options: Option<HashMap<String, String>>,
        fsync: bool,
    ) -> Result<Self> {
        let store = open_store(uri, options)?;
        let writer =
            runtime::run(py, async move { state::StateWriter::create(&store, &key, rank, zstd_level, fsync).await })??;
        Ok(Self { inner: Mutex::new(Some(writer)) })
    }

    /// Appends the bytes of `data` (any buffer of bytes: bytes, memoryview, a uint8 numpy array).
    fn write(&self, py: Python<'_>, data: PyBuffer<u8>) -> Result<()> {
        let mut writer = take(&self.inner, "StateWriter")?;
        let bytes = Bytes::from(data.to_vec(py)?);
        let (written, writer) = runtime::run(py, async move {
            let written = writer.write(bytes).await;
            (written, writer)
        })?;
        written?;
        put(&self.inner, writer);
        Ok(())
    }

    /// Completes the file; returns its manifest entry (JSON: rank, name, bytes, stored_bytes, crc32c).
    fn finish(&self, py: Python<'_>) -> Result<String> {
        let writer = take(&self.inner, "StateWriter")?;
        let entry = runtime::run(py, async move { writer.finish().await })??;
        Ok(serde_json::to_string(&entry).expect("entries serialize"))
    }
}

/// One checkpoint file read back: `read(size)` gives the file's next bytes, `finish()` checks the whole file (size
/// and CRC-32C, then the original size) against its manifest entry.
#[pyclass(module = "dl_driver._core")]
pub struct StateReader {
    inner: Mutex<Option<state::StateReader>>,
}

/// What `slot` holds, taken out (a poisoned lock still holds its value).
fn take<T>(slot: &Mutex<Option<T>>, what: &str) -> Result<T> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().ok_or_else(|| closed(what))
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
}

#[pymethods]
impl StateReader {
    #[new]
    #[pyo3(signature = (uri, key, entry_json, compressed, options = None))]
    fn new(
        py: Python<'_>,
        uri: &str,
        key: String,
        entry_json: &str,
        compressed: bool,
        options: Option<HashMap<String, String>>,
    ) -> Result<Self> {
        let entry: FileEntry = serde_json::from_str(entry_json).map_err(|e| json_error(&key, &e))?;
        let store = open_store(uri, options)?;
        let reader =
            runtime::run(py, async move { state::StateReader::open(&store, &key, &entry, compressed).await })??;
        Ok(Self { inner: Mutex::new(Some(reader)) })
    }

    /// Fills `target` (a writable, contiguous buffer: a new tensor's memory) with the file's next bytes; returns how
    /// many (fewer only at the end of the file). Local files are read straight into it, several reads at once;
    /// others through the read buffer, one copy. The GIL is released meanwhile: nothing else may use `target`.
    fn readinto(&self, py: Python<'_>, target: PyBuffer<u8>) -> Result<usize> {
        if target.readonly() || !target.is_c_contiguous() {
            return Err(Error::config("StateReader.readinto: the target must be a writable, contiguous buffer"));
        }
        let (at, len) = (target.buf_ptr() as usize, target.len_bytes());
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: `target` holds the exporter's buffer, writable and contiguous, for `len` > 0 bytes until this
        // function returns; the slices are made and used only on this thread (or on threads `fill_local` joins
        // before it returns), and the caller gives the buffer to this call alone.
        #[allow(unsafe_code)]
        let memory = move || unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        let mut reader = take(&self.inner, "StateReader")?;
        let direct = py.detach(|| reader.fill_local(memory()));
        let filled = if let Some(filled) = direct {
            filled?
        } else {
            // The read buffer's pieces are copied here, on this thread: a task never writes into `target`, so
            // Ctrl-C (which abandons the task) cannot leave one writing into memory Python has freed.
            let mut filled = 0;
            while filled < len {
                let want = len - filled;
                let (chunk, back) = runtime::run(py, async move {
                    let chunk = reader.next_chunk(want).await;
                    (chunk, reader)
                })?;
                reader = back;
                let chunk = chunk?;
                if chunk.is_empty() {
                    break;
                }
                memory()[filled..filled + chunk.len()].copy_from_slice(&chunk);
                filled += chunk.len();
            }
            filled
        };
        put(&self.inner, reader);
        drop(target);
        Ok(filled)
    }

    /// Reads what is left and checks the file against its manifest entry.
    fn finish(&self, py: Python<'_>) -> Result<()> {
        let reader = take(&self.inner, "StateReader")?;
        runtime::run(py, async move { reader.finish().await })??;
        Ok(())
    }
}

/// Writes a checkpoint's manifest (JSON, as `checkpoint_read_manifest` returns it): what makes it complete.
#[pyfunction]
#[pyo3(signature = (uri, manifest_json, options = None))]
pub fn checkpoint_write_manifest(
    py: Python<'_>,
    uri: &str,
    manifest_json: &str,
    options: Option<HashMap<String, String>>,
) -> Result<()> {
    let m: Manifest = serde_json::from_str(manifest_json).map_err(|e| json_error("manifest", &e))?;
    let store = open_store(uri, options)?;
    runtime::run(py, async move { manifest::write(&store, &m).await })??;
    Ok(())
}

/// The manifest of checkpoint `name` under `uri`, as JSON.
#[pyfunction]
#[pyo3(signature = (uri, name, options = None))]
pub fn checkpoint_read_manifest(
    py: Python<'_>,
    uri: &str,
    name: String,
    options: Option<HashMap<String, String>>,
) -> Result<String> {
    let store = open_store(uri, options)?;
    let m = runtime::run(py, async move { manifest::read(&store, &name).await })??;
    Ok(serde_json::to_string(&m).expect("manifests serialize"))
}
