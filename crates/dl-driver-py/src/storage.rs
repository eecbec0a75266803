//! `dl_driver._core.Store` and `Buffer`: the storage layer for Python (inspect what dl-driver wrote, or move data).

use std::collections::HashMap;

use bytes::Bytes;
use dl_driver_core::storage::{self, ObjectInfo as CoreObjectInfo, StorageOptions};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use crate::error::Result;
use crate::runtime::run;
use crate::StorageError;

/// Opens `uri` with keyword options (as text), as `dl_driver.storage.open` and the checkpoint functions take them.
pub fn open_store(uri: &str, options: Option<HashMap<String, String>>) -> Result<storage::Store> {
    let mut opts = StorageOptions::new();
    for (k, v) in options.unwrap_or_default() {
        opts.insert(k, v);
    }
    Ok(storage::open(uri, &opts)?)
}

/// An open storage location (`file://`, `direct://`, `s3://`, `az://`, `memory://` or a local path).
#[pyclass(frozen, module = "dl_driver._core")]
pub struct Store {
    inner: storage::Store,
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (uri, options = None))]
    fn new(uri: &str, options: Option<HashMap<String, String>>) -> Result<Self> {
        open_store(uri, options).map(|inner| Self { inner })
    }

    /// The location, as a URI.
    #[getter]
    fn uri(&self) -> String {
        self.inner.uri().to_string()
    }

    /// The whole object.
    fn get(&self, py: Python<'_>, key: &str) -> Result<Buffer> {
        let (store, key) = (self.inner.clone(), key.to_string());
        let data = run(py, async move { store.get(&key).await })??;
        Ok(Buffer { data })
    }

    /// Bytes `start..end` of the object.
    fn get_range(&self, py: Python<'_>, key: &str, start: u64, end: u64) -> Result<Buffer> {
        if end < start {
            return Err(StorageError::new_err(format!(
                "get_range of {}: end {end} is before start {start}",
                self.inner.uri().join(key)
            ))
            .into());
        }
        let (store, key) = (self.inner.clone(), key.to_string());
        let data = run(py, async move { store.get_range(&key, start..end).await })??;
        Ok(Buffer { data })
    }

    /// Fills the writable, contiguous `target` with the object's bytes from `start` (they must lie within the object):
    /// local files straight into it, several positioned reads at once; others through one ranged read and a copy.
    /// The GIL is released meanwhile: nothing else may use `target`.
    fn readinto(&self, py: Python<'_>, key: &str, start: u64, target: PyBuffer<u8>) -> Result<()> {
        let shown = || self.inner.uri().join(key);
        if target.readonly() || !target.is_c_contiguous() {
            return Err(StorageError::new_err(format!(
                "readinto of {}: the target must be a writable, contiguous buffer",
                shown()
            ))
            .into());
        }
        let (at, len) = (target.buf_ptr() as usize, target.len_bytes());
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `target` holds the exporter's buffer, writable and contiguous, for `len` > 0 bytes until this
        // function returns (it outlives every use below); the caller gives it to this call alone.
        #[allow(unsafe_code)]
        let memory = move || unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        if let Some(files) = self.inner.local() {
            if let Some(file) = files.open_positioned(key) {
                let file = file?;
                let parts = storage::parallel_parts(len);
                py.detach(|| storage::read_exact_at(&file, start, memory(), parts))
                    .map_err(|e| files.read_failed(key, &e))?;
                drop(target);
                return Ok(());
            }
        }
        let (store, owned) = (self.inner.clone(), key.to_string());
        let data = run(py, async move { store.get_range(&owned, start..start + len as u64).await })??;
        if data.len() != len {
            return Err(StorageError::new_err(format!(
                "readinto of {}: {} bytes from {start}, the object holds {} of them",
                shown(),
                len,
                data.len()
            ))
            .into());
        }
        py.detach(|| memory().copy_from_slice(&data));
        drop(target);
        Ok(())
    }

    /// Writes the object (multipart when larger than the part size); it is visible only once complete.
    fn put(&self, py: Python<'_>, key: &str, data: PyBackedBytes) -> Result<()> {
        let (store, key) = (self.inner.clone(), key.to_string());
        Ok(run(py, async move { store.put(&key, Bytes::from_owner(data)).await })??)
    }

    /// Objects below `prefix`, sorted by key.
    #[pyo3(signature = (prefix = ""))]
    fn list(&self, py: Python<'_>, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (store, prefix) = (self.inner.clone(), prefix.to_string());
        let items = run(py, async move { store.list(&prefix).await })??;
        Ok(items.into_iter().map(ObjectInfo::from).collect())
    }

    /// Size and modification time; FileNotFoundError when missing.
    fn head(&self, py: Python<'_>, key: &str) -> Result<ObjectInfo> {
        let (store, key) = (self.inner.clone(), key.to_string());
        Ok(run(py, async move { store.head(&key).await })??.into())
    }

    fn exists(&self, py: Python<'_>, key: &str) -> Result<bool> {
        let (store, key) = (self.inner.clone(), key.to_string());
        Ok(run(py, async move { store.exists(&key).await })??)
    }

    /// Deletes the object (a missing object is not an error).
    fn delete(&self, py: Python<'_>, key: &str) -> Result<()> {
        let (store, key) = (self.inner.clone(), key.to_string());
        Ok(run(py, async move { store.delete(&key).await })??)
    }

    /// Reads every object once, `concurrency` at a time, into reused page-aligned buffers, discarding the data.
    /// Returns `{"objects", "bytes", "seconds"}`: the raw read path, for benchmarks and cache warm-up.
    #[pyo3(signature = (keys, concurrency = 1))]
    fn read_objects(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        concurrency: usize,
    ) -> Result<HashMap<&'static str, f64>> {
        let store = self.inner.clone();
        let report = run(py, async move { store.read_objects(&keys, concurrency).await })??;
        Ok(HashMap::from([
            ("objects", report.objects as f64),
            ("bytes", report.bytes as f64),
            ("seconds", report.seconds),
        ]))
    }

    fn __repr__(&self) -> String {
        format!("<dl_driver.storage.Store {}>", self.inner.uri())
    }
}

/// An object as listed.
#[pyclass(frozen, get_all, module = "dl_driver._core")]
pub struct ObjectInfo {
    key: String,
    size: u64,
    /// POSIX timestamp in seconds.
    last_modified: f64,
}

impl From<Bytes> for Buffer {
    fn from(data: Bytes) -> Self {
        Self { data }
    }
}

impl From<CoreObjectInfo> for ObjectInfo {
    fn from(o: CoreObjectInfo) -> Self {
        Self { key: o.key, size: o.size, last_modified: o.last_modified.timestamp_micros() as f64 / 1e6 }
    }
}

#[pymethods]
impl ObjectInfo {
    fn __repr__(&self) -> String {
        format!("ObjectInfo(key={:?}, size={})", self.key, self.size)
    }
}

/// Bytes read from storage, shared with Python without a copy (buffer protocol: `memoryview`, `bytes()`, numpy).
#[pyclass(frozen, module = "dl_driver._core")]
pub struct Buffer {
    data: Bytes,
}

#[pymethods]
impl Buffer {
    // SAFETY: PyBuffer_FillInfo describes `data`, which lives as long as `slf`; the view holds a reference to
    // `slf` (FillInfo increments it) and the buffer is read-only, and frozen means `data` never changes.
    #[allow(unsafe_code)]
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        let len = pyo3::ffi::Py_ssize_t::try_from(data.len()).map_err(|_| StorageError::new_err("buffer too large"))?;
        let status =
            unsafe { pyo3::ffi::PyBuffer_FillInfo(view, slf.as_ptr(), data.as_ptr().cast_mut().cast(), len, 1, flags) };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// A copy as `bytes`.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.data)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        if let Ok(buffer) = other.cast::<Buffer>() {
            return buffer.get().data == self.data;
        }
        other.extract::<PyBackedBytes>().is_ok_and(|b| *b == *self.data)
    }

    fn __repr__(&self) -> String {
        format!("<dl_driver.Buffer of {} bytes>", self.data.len())
    }
}
