//! Storage: a location (`file://`, `direct://`, `s3://`, `az://`, `memory://` or a local path) opens as a [`Store`]:
//! an `object_store::ObjectStore` plus the location's prefix, with the operations the engine needs. `gs://` opens
//! object_store's `GoogleCloudStorage` too, untested (docs/storage.md says why).
//! Nothing above this module branches on the backend.

mod buffer;
mod error;
mod local;
mod options;
pub mod requests;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

pub use crate::uri::{Scheme, StorageUri};
pub use buffer::{AlignedBuf, BufferPool, ALIGN};
pub use error::StorageError;
pub use local::{parallel_parts, read_exact_at, FileWriter, LocalStore, OpenObject};
pub use options::{parse_duration, Settings, StorageOptions, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE};

/// An object as listed: its key relative to the store's location, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// An open storage location.
#[derive(Debug, Clone)]
pub struct Store {
    uri: StorageUri,
    inner: Arc<dyn ObjectStore>,
    /// Set for `file://` and `direct://`: reads go straight to the files.
    local: Option<Arc<LocalStore>>,
    prefix: Path,
    settings: Settings,
    secrets: Arc<Vec<String>>,
}

/// A [`Store`] of local files (`file://`, `direct://`), from [`Store::local`]: what only local files can do,
/// synchronously on the calling thread (producers and readers already on a blocking thread). The type exists only
/// for local stores, so no caller assumes a store is local.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    store: Store,
    local: Arc<LocalStore>,
}

impl LocalFiles {
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A writer of `key` used from the calling thread (a producer writes its bytes itself, while they are in the CPU
    /// cache); the file appears under its name only when finished.
    pub fn file_writer(&self, key: &str) -> Result<FileWriter, StorageError> {
        let location = self.store.location(key)?;
        self.local.file_writer(&location).map_err(|e| self.write_failed(key, &e))
    }

    /// Creates the folder `key` (and its parents) if it does not exist.
    pub fn create_dir(&self, key: &str) -> Result<(), StorageError> {
        let location = self.store.location(key)?;
        std::fs::create_dir_all(self.local.path_of(&location)).map_err(|e| self.write_failed(key, &e))
    }

    /// The error of a failed [`FileWriter`] call on `key`.
    pub fn write_failed(&self, key: &str, error: &io::Error) -> StorageError {
        StorageError::from_io(&self.store.shown(key), "write", error)
    }

    /// `key` opened for positioned reads into any memory ([`read_exact_at`]); `None` on an O_DIRECT store.
    pub fn open_positioned(&self, key: &str) -> Option<Result<std::fs::File, StorageError>> {
        let location = match self.store.location(key) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let opened = self.local.open_positioned(&location)?;
        Some(opened.map_err(|e| StorageError::from_io(&self.store.shown(key), "open", &e)))
    }

    /// The error of a failed positioned read of `key`.
    pub fn read_failed(&self, key: &str, error: &io::Error) -> StorageError {
        StorageError::from_io(&self.store.shown(key), "read", error)
    }

    /// [`Store::fetch`] on the calling thread, for callers that read many small objects.
    pub fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        buf: AlignedBuf,
        transfer: Option<usize>,
    ) -> Result<Fetched, StorageError> {
        let started = Instant::now();
        let object = self.open_object(key)?;
        self.fetch_open(&object, key, range, buf, transfer, started)
    }

    /// `key` opened for [`Self::fetch_open`]: reads of one file in a row then share one open.
    pub fn open_object(&self, key: &str) -> Result<OpenObject, StorageError> {
        let location = self.store.location(key)?;
        self.local.open_object(&location).map_err(|e| StorageError::from_io(&self.store.shown(key), "read", &e))
    }

    /// [`Self::fetch`] from `object`, which [`Self::open_object`] opened from `key`; the first byte is timed from
    /// `started` (before the open, when this read needed one).
    pub fn fetch_open(
        &self,
        object: &OpenObject,
        key: &str,
        range: Option<Range<u64>>,
        mut buf: AlignedBuf,
        transfer: Option<usize>,
        started: Instant,
    ) -> Result<Fetched, StorageError> {
        self.local
            .read_open(object, range, &mut buf, transfer)
            .map(|(_, skip, first)| Fetched { buf, skip, first_byte: first - started })
            .map_err(|e| StorageError::from_io(&self.store.shown(key), "read", &e))
    }
}

/// Opens a location with options (see [`StorageOptions`]); environment variables fill in what options leave out.
pub fn open(location: &str, options: &StorageOptions) -> Result<Store, StorageError> {
    let uri = StorageUri::parse(location).map_err(|problem| StorageError::Location { problem })?;
    let shown = uri.to_string();
    let settings = Settings::from_options(&shown, options)?;
    let secrets = Arc::new(options.secrets());
    let build_error = |e: &object_store::Error| StorageError::from_object_store(&shown, "connecting", e, &secrets);
    let (inner, local, prefix): (Arc<dyn ObjectStore>, Option<Arc<LocalStore>>, Path) = match uri.scheme {
        Scheme::File | Scheme::Direct => {
            reject_backend_options(&shown, options, "local files")?;
            let root = std::path::absolute(&uri.path).map_err(|e| StorageError::from_io(&shown, "resolving", &e))?;
            let direct = uri.scheme == Scheme::Direct;
            let store = Arc::new(LocalStore::new(root, direct));
            (store.clone(), Some(store), Path::default())
        }
        Scheme::Memory => {
            reject_backend_options(&shown, options, "memory://")?;
            (memory(), None, key_path(&shown, &uri.path)?)
        }
        Scheme::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&uri.bucket)
                .with_retry(settings.retry.clone())
                .with_http_connector(requests::CountingConnector);
            let mut endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
            for (key, value) in backend_options(options) {
                // DLIO's `s3_force_path_style: true` means path-style requests (object_store's default); `false`
                // only stops forcing it, so it changes nothing.
                let (key, value) = match key {
                    "s3_force_path_style" if parse_bool(&shown, key, value)? => {
                        ("aws_virtual_hosted_style_request", "false".into())
                    }
                    "s3_force_path_style" => continue,
                    other => (other, value.to_string()),
                };
                let parsed: AmazonS3ConfigKey = key.parse().map_err(|_| unknown_option(&shown, key))?;
                if matches!(parsed, AmazonS3ConfigKey::Endpoint) {
                    endpoint = Some(value.clone());
                }
                b = b.with_config(parsed, value);
            }
            if endpoint.as_deref().is_some_and(options::is_loopback_http) && options.get("allow_http").is_none() {
                b = b.with_allow_http(true);
            }
            // As AWS's SDKs do: over HTTPS the body is not hashed into the signature (TLS protects it; SHA-256 of
            // every part cost ~8% of upload throughput), over plain HTTP it is. `unsigned_payload` decides otherwise.
            let https = endpoint.as_deref().is_none_or(|e| e.starts_with("https://"));
            let asked = ["unsigned_payload", "aws_unsigned_payload"].iter().any(|k| options.get(k).is_some());
            if https && !asked && std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
                b = b.with_unsigned_payload(true);
            }
            (Arc::new(b.build().map_err(|e| build_error(&e))?), None, key_path(&shown, &uri.path)?)
        }
        Scheme::Az => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(&uri.bucket)
                .with_retry(settings.retry.clone())
                .with_http_connector(requests::CountingConnector);
            let env_source =
                |names: &[&str]| names.iter().find(|n| std::env::var_os(n).is_some()).map(ToString::to_string);
            let mut endpoint_source = env_source(&["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"]);
            let mut emulator_source = env_source(&["AZURE_STORAGE_USE_EMULATOR"]);
            for (key, value) in backend_options(options) {
                let given = key;
                let key = if key == "endpoint_url" { "endpoint" } else { key };
                let parsed: AzureConfigKey = key.parse().map_err(|_| unknown_option(&shown, key))?;
                match parsed {
                    AzureConfigKey::Endpoint => endpoint_source = Some(format!("storage_options.{given}")),
                    AzureConfigKey::UseEmulator => emulator_source = Some(format!("storage_options.{given}")),
                    _ => {}
                }
                b = b.with_config(parsed, value);
            }
            let endpoint = b.get_config_value(&AzureConfigKey::Endpoint);
            let emulator = b.get_config_value(&AzureConfigKey::UseEmulator).is_some_and(|v| is_truthy(&v));
            if let (true, Some(endpoint), Some(endpoint_source)) = (emulator, &endpoint, endpoint_source) {
                b = explicit_endpoint_over_emulator(
                    b,
                    &shown,
                    endpoint,
                    &endpoint_source,
                    emulator_source.as_deref().unwrap_or("use_emulator"),
                )?;
            }
            if endpoint.as_deref().is_some_and(options::is_loopback_http) && options.get("allow_http").is_none() {
                b = b.with_allow_http(true);
            }
            (Arc::new(b.build().map_err(|e| build_error(&e))?), None, key_path(&shown, &uri.path)?)
        }
        Scheme::Gs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&uri.bucket)
                .with_retry(settings.retry.clone())
                .with_http_connector(requests::CountingConnector);
            for (key, value) in backend_options(options) {
                let parsed: GoogleConfigKey = key.parse().map_err(|_| unknown_option(&shown, key))?;
                b = b.with_config(parsed, value);
            }
            (Arc::new(b.build().map_err(|e| build_error(&e))?), None, key_path(&shown, &uri.path)?)
        }
    };
    Ok(Store { uri, inner, local, prefix, settings, secrets })
}

/// Azurite's well-known account and key (Microsoft documents them; object_store's emulator mode uses them too).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// object_store's truthy strings for boolean config values.
fn is_truthy(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes" | "y")
}

/// The emulator flag is on and an endpoint is given: object_store's emulator mode would send every request to
/// `AZURITE_BLOB_STORAGE_URL` or 127.0.0.1:10000 and ignore the endpoint. The endpoint wins (used as given, as a
/// connection string's `BlobEndpoint`, account in the path for Azurite), with Azurite's account and key where none is
/// set. An `AZURITE_BLOB_STORAGE_URL` that points elsewhere contradicts it: an error naming both settings.
fn explicit_endpoint_over_emulator(
    mut b: MicrosoftAzureBuilder,
    uri: &str,
    endpoint: &str,
    endpoint_source: &str,
    emulator_source: &str,
) -> Result<MicrosoftAzureBuilder, StorageError> {
    if let Ok(azurite) = std::env::var("AZURITE_BLOB_STORAGE_URL") {
        if !endpoint.starts_with(azurite.trim_end_matches('/')) {
            return Err(StorageError::Option {
                uri: uri.into(),
                key: endpoint_source.into(),
                problem: format!(
                    "{endpoint_source} is {endpoint} but {emulator_source} is on and AZURITE_BLOB_STORAGE_URL is \
                     {azurite}: the two say different servers; unset one of them"
                ),
            });
        }
    }
    b = b.with_use_emulator(false);
    if b.get_config_value(&AzureConfigKey::AccountName).is_none() {
        b = b.with_account(AZURITE_ACCOUNT);
    }
    let credentials = [AzureConfigKey::AccessKey, AzureConfigKey::SasKey, AzureConfigKey::Token];
    if credentials.iter().all(|k| b.get_config_value(k).is_none()) {
        b = b.with_access_key(AZURITE_KEY);
    }
    Ok(b)
}

/// Opens one of a workload's locations with its `storage.storage_options`, which DLIO shares between the data and
/// the checkpoint folder: a local or memory location ignores the backend options meant for the other (an object
/// store) instead of rejecting them.
pub fn open_shared(location: &str, options: &StorageOptions) -> Result<Store, StorageError> {
    let uri = StorageUri::parse(location).map_err(|problem| StorageError::Location { problem })?;
    if matches!(uri.scheme, Scheme::File | Scheme::Direct | Scheme::Memory) {
        let backend: Vec<&str> = backend_options(options).map(|(k, _)| k).collect();
        let mut generic = StorageOptions::new();
        for (k, v) in options.iter().filter(|(k, _)| !backend.contains(k)) {
            generic.insert(k, v);
        }
        return open(location, &generic);
    }
    open(location, options)
}

/// The process's one in-memory store: every `memory://` location opened in a process sees the same objects (so a
/// run can generate into memory and then train from it), until the process exits.
fn memory() -> Arc<InMemory> {
    static MEMORY: std::sync::OnceLock<Arc<InMemory>> = std::sync::OnceLock::new();
    Arc::clone(MEMORY.get_or_init(|| Arc::new(InMemory::new())))
}

fn backend_options(options: &StorageOptions) -> impl Iterator<Item = (&str, &str)> {
    options.iter().filter(|(k, _)| !options::is_own_key(k))
}

fn reject_backend_options(uri: &str, options: &StorageOptions, what: &str) -> Result<(), StorageError> {
    match backend_options(options).next() {
        Some((key, _)) => Err(StorageError::Option {
            uri: uri.into(),
            key: key.into(),
            problem: format!("{what} take no backend options (only max_in_flight and part_size)"),
        }),
        None => Ok(()),
    }
}

fn unknown_option(uri: &str, key: &str) -> StorageError {
    StorageError::Option {
        uri: uri.into(),
        key: key.into(),
        problem: "unknown option: expected DLIO's storage_options (access_key_id, secret_access_key, endpoint_url, \
                  region, s3_force_path_style, s3_max_attempts), dl-driver's (max_in_flight, part_size, max_retries, \
                  retry_timeout, backoff_initial, backoff_max) or an object_store config key of this backend"
            .into(),
    }
}

fn parse_bool(uri: &str, key: &str, value: &str) -> Result<bool, StorageError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(StorageError::Option {
            uri: uri.into(),
            key: key.into(),
            problem: format!("got '{value}', expected true or false"),
        }),
    }
}

/// An object key path, checked (no empty, `.` or `..` segments).
fn key_path(uri: &str, key: &str) -> Result<Path, StorageError> {
    if key.is_empty() {
        return Ok(Path::default());
    }
    if key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(StorageError::Location {
            problem: format!("{uri}: key '{key}' has an empty, '.' or '..' segment"),
        });
    }
    // `parse` keeps the key as written (UTF-8, spaces); `Path::from` would percent-encode it.
    Path::parse(key).map_err(|e| StorageError::Location { problem: format!("{uri}: key '{key}': {e}") })
}

impl Store {
    /// The location this store was opened on.
    pub fn uri(&self) -> &StorageUri {
        &self.uri
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn location(&self, key: &str) -> Result<Path, StorageError> {
        let key = key.trim_matches('/');
        let relative = key_path(&self.uri.to_string(), key)?;
        Ok(if self.prefix.as_ref().is_empty() {
            relative
        } else {
            self.prefix.parts().chain(relative.parts()).collect()
        })
    }

    fn shown(&self, key: &str) -> String {
        self.uri.join(key).to_string()
    }

    fn fail(&self, key: &str, operation: &'static str, e: &object_store::Error) -> StorageError {
        StorageError::from_object_store(&self.shown(key), operation, e, &self.secrets)
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        if self.is_local() {
            // One read into one buffer: the local object stream comes in chunks that would be copied together again.
            let fetched = self.fetch(key, None, AlignedBuf::with_capacity(0), None).await?;
            return Ok(Bytes::from_owner(fetched.buf).slice(fetched.skip..));
        }
        let location = self.location(key)?;
        let result = self.inner.get(&location).await.map_err(|e| self.fail(key, "get", &e))?;
        result.bytes().await.map_err(|e| self.fail(key, "get", &e))
    }

    /// The object as a stream of chunks, for consumers that process data as it arrives.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, StorageError>> + Send + 'static, StorageError> {
        let location = self.location(key)?;
        let result = self.inner.get(&location).await.map_err(|e| self.fail(key, "get", &e))?;
        let (shown, secrets) = (self.shown(key), Arc::clone(&self.secrets));
        Ok(result.into_stream().map_err(move |e| StorageError::from_object_store(&shown, "get", &e, &secrets)))
    }

    /// Bytes `range` of the object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let location = self.location(key)?;
        if range.start == range.end {
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
        let result = self.inner.get_opts(&location, options).await.map_err(|e| self.fail(key, "get", &e))?;
        result.bytes().await.map_err(|e| self.fail(key, "get", &e))
    }

    /// Reads `range` (the whole object when `None`) into `buf`, reusing its memory: the hot read path.
    /// Returns the buffer with the bytes at `buf.as_slice()[offset..]`, and `offset`.
    pub async fn read_into(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        buf: AlignedBuf,
    ) -> Result<(AlignedBuf, usize), StorageError> {
        self.fetch(key, range, buf, None).await.map(|f| (f.buf, f.skip))
    }

    /// [`Self::read_into`] in requests of at most `transfer` bytes (one request when `None`), timing the first byte.
    pub async fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        mut buf: AlignedBuf,
        transfer: Option<usize>,
    ) -> Result<Fetched, StorageError> {
        if let Some(local) = self.local() {
            let owned_key = key.to_string();
            return tokio::task::spawn_blocking(move || local.fetch(&owned_key, range, buf, transfer)).await.map_err(
                |e| StorageError::Backend { uri: self.shown(key), operation: "read", message: e.to_string() },
            )?;
        }
        let location = self.location(key)?;
        let started = Instant::now();
        // Requests of at most `transfer` bytes, one after another; without a range, the first request's response
        // tells the object's size (no extra HEAD).
        let step = transfer.map_or(u64::MAX, |t| t.max(1) as u64);
        let mut next = range.as_ref().map_or(0, |r| r.start);
        let mut end = range.as_ref().map(|r| r.end);
        let mut first_byte = None;
        buf.reserve_exact_discarding(0);
        loop {
            let wanted = match (end, transfer) {
                (None, None) => None,
                (end, _) => Some(next..end.unwrap_or(u64::MAX).min(next.saturating_add(step))),
            };
            let options = GetOptions { range: wanted.map(GetRange::Bounded), ..GetOptions::default() };
            let result = self.inner.get_opts(&location, options).await.map_err(|e| self.fail(key, "get", &e))?;
            first_byte.get_or_insert_with(|| started.elapsed());
            let total = end.unwrap_or(u64::MAX).min(result.meta.size);
            end = Some(total);
            next = result.range.end;
            buf.reserve_more((result.range.end - result.range.start) as usize);
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.try_next().await.map_err(|e| self.fail(key, "get", &e))? {
                buf.extend_from_slice(&chunk);
            }
            if next >= total {
                break;
            }
        }
        Ok(Fetched { buf, skip: 0, first_byte: first_byte.unwrap_or_default() })
    }

    /// Whether the store is local files (`file://`, `direct://`); [`Self::local`] gives what only they can do.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Drops what the client's page cache holds of `keys` (blocking; call it off the async workers): as root, the
    /// whole cache (`sync`, then `vm.drop_caches = 3`, which also drops what other processes cached); otherwise
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on each key's file. An object store has no client page cache: nothing
    /// to drop. Returns how it was done.
    pub fn drop_page_cache(&self, keys: &[String]) -> Result<&'static str, StorageError> {
        let Some(local) = &self.local else { return Ok("none (an object store: no client page cache)") };
        if drop_whole_page_cache() {
            return Ok("vm.drop_caches");
        }
        for key in keys {
            let path = local.path_of(&self.location(key)?);
            let file = std::fs::File::open(&path).map_err(|e| StorageError::from_io(&self.shown(key), "open", &e))?;
            fadvise_dont_need(&file).map_err(|e| StorageError::from_io(&self.shown(key), "posix_fadvise", &e))?;
        }
        Ok("posix_fadvise")
    }

    /// The store as local files (`file://`, `direct://`), `None` for object stores.
    pub fn local(&self) -> Option<LocalFiles> {
        let local = Arc::clone(self.local.as_ref()?);
        Some(LocalFiles { store: self.clone(), local })
    }

    /// Size and modification time of the object.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let location = self.location(key)?;
        let meta = self.inner.head(&location).await.map_err(|e| self.fail(key, "head", &e))?;
        Ok(ObjectInfo {
            key: key.trim_start_matches('/').to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        })
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the object in one request, or as a multipart upload when larger than the part size.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        if data.len() <= self.settings.part_size {
            let location = self.location(key)?;
            self.inner.put(&location, PutPayload::from_bytes(data)).await.map_err(|e| self.fail(key, "put", &e))?;
            return Ok(());
        }
        let mut writer = self.writer(key).await?;
        writer.write(data).await?;
        writer.finish().await
    }

    /// A streaming writer: parts of `part_size` bytes, at most `max_in_flight` uploading at once.
    pub async fn writer(&self, key: &str) -> Result<Writer, StorageError> {
        self.writer_synced(key, false).await
    }

    /// [`Self::writer`]; with `sync`, a local file is on the device when `finish` returns (its writeback starts part
    /// by part, then the file and its directory are flushed). Object stores hold what they acknowledged.
    pub async fn writer_synced(&self, key: &str, sync: bool) -> Result<Writer, StorageError> {
        let location = self.location(key)?;
        let mut options = object_store::PutMultipartOptions::default();
        if sync {
            options.extensions.insert(local::SyncToDevice);
        }
        let upload = self
            .inner
            .put_multipart_opts(&location, options)
            .await
            .map_err(|e| self.fail(key, "starting an upload", &e))?;
        Ok(Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, self.settings.part_size)),
            // Local parts go to one file: two writers at once contend on the inode and nearly doubled the kernel time
            // of a 4 GiB checkpoint (8.1 s vs 4.6 s of sys time), so one part at a time; the producer keeps running.
            max_in_flight: if self.local.is_some() { 1 } else { self.settings.max_in_flight },
            store: self.clone(),
            key: key.to_string(),
            written: 0,
        })
    }

    /// Objects below `prefix` (relative to the store's location), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let base = self.location(prefix)?;
        let store_prefix = self.prefix.as_ref().len();
        let mut items: Vec<ObjectInfo> = self
            .inner
            .list(if base.as_ref().is_empty() { None } else { Some(&base) })
            .map_ok(|meta| {
                let full = meta.location.as_ref();
                let key = if store_prefix == 0 { full } else { full.get(store_prefix + 1..).unwrap_or("") };
                ObjectInfo { key: key.to_string(), size: meta.size, last_modified: meta.last_modified }
            })
            .try_collect()
            .await
            .map_err(|e| self.fail(prefix, "list", &e))?;
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(items)
    }

    /// Deletes the object; deleting a missing object is not an error (as on S3).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let location = self.location(key)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(key, "delete", &e)),
        }
    }
}

/// The result of [`Store::fetch`]: the bytes are `buf.as_slice()[skip..]`.
#[derive(Debug)]
pub struct Fetched {
    pub buf: AlignedBuf,
    pub skip: usize,
    /// From the call to the first bytes (the response headers on object stores).
    pub first_byte: Duration,
}

/// What [`Store::read_objects`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadReport {
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Store {
    /// Reads every object in `keys` once, `concurrency` at a time, into reused page-aligned buffers, discarding the
    /// data: the raw read path, for benchmarks and cache warm-up. Local files are read by `concurrency` OS threads.
    pub async fn read_objects(&self, keys: &[String], concurrency: usize) -> Result<ReadReport, StorageError> {
        let concurrency = concurrency.clamp(1, keys.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let bytes = if let Some(local) = &self.local {
            let (local, keys, store) = (Arc::clone(local), keys.to_vec(), self.clone());
            tokio::task::spawn_blocking(move || {
                std::thread::scope(|scope| {
                    let workers: Vec<_> = (0..concurrency)
                        .map(|_| {
                            scope.spawn(|| -> Result<u64, StorageError> {
                                let mut buf = AlignedBuf::with_capacity(0);
                                let mut total = 0;
                                loop {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let Some(key) = keys.get(i) else { return Ok(total) };
                                    let location = store.location(key)?;
                                    let (_, skip) = local
                                        .read_into(&location, None, &mut buf)
                                        .map_err(|e| StorageError::from_io(&store.shown(key), "read", &e))?;
                                    total += (buf.len() - skip) as u64;
                                }
                            })
                        })
                        .collect();
                    workers.into_iter().map(|w| w.join().expect("reader threads do not panic")).sum::<Result<u64, _>>()
                })
            })
            .await
            .map_err(|e| StorageError::Backend {
                uri: self.uri.to_string(),
                operation: "read",
                message: e.to_string(),
            })??
        } else {
            let workers = (0..concurrency).map(|_| async {
                let mut buf = AlignedBuf::with_capacity(0);
                let mut total = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(key) = keys.get(i) else { return Ok::<u64, StorageError>(total) };
                    let (filled, skip) = self.read_into(key, None, buf).await?;
                    total += (filled.len() - skip) as u64;
                    buf = filled;
                }
            });
            futures::future::try_join_all(workers).await?.into_iter().sum()
        };
        Ok(ReadReport { objects: keys.len() as u64, bytes, seconds: started.elapsed().as_secs_f64() })
    }
}

/// A streaming upload; [`Writer::finish`] makes the object visible, [`Writer::abort`] (or an error) discards it.
pub struct Writer {
    upload: Option<WriteMultipart>,
    max_in_flight: usize,
    store: Store,
    key: String,
    written: u64,
}

/// A writer dropped before `finish` (an error upstream, a cancelled call) aborts its upload, so object stores keep
/// no orphaned multipart uploads and local stores no temporary files.
impl Drop for Writer {
    fn drop(&mut self) {
        if let (Some(upload), Ok(runtime)) = (self.upload.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

impl Writer {
    /// Appends `data`, waiting while `max_in_flight` parts are uploading; on error the upload is aborted.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        let Some(upload) = self.upload.as_mut() else { return Err(self.closed()) };
        if let Err(e) = upload.wait_for_capacity(self.max_in_flight).await {
            return Err(self.fail_and_abort("upload", &e).await);
        }
        self.written += data.len() as u64;
        self.upload.as_mut().expect("checked above").put(data);
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Uploads what is left and completes the object.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        let upload = self.upload.take().ok_or_else(|| self.closed())?;
        upload.finish().await.map(drop).map_err(|e| self.store.fail(&self.key, "completing an upload", &e))
    }

    /// Discards the upload.
    pub async fn abort(mut self) -> Result<(), StorageError> {
        match self.upload.take() {
            Some(upload) => upload.abort().await.map_err(|e| self.store.fail(&self.key, "aborting an upload", &e)),
            None => Ok(()),
        }
    }

    async fn fail_and_abort(&mut self, operation: &'static str, e: &object_store::Error) -> StorageError {
        let error = self.store.fail(&self.key, operation, e);
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
        error
    }

    fn closed(&self) -> StorageError {
        StorageError::Backend {
            uri: self.store.shown(&self.key),
            operation: "write",
            message: "the writer was closed after an error".into(),
        }
    }
}

/// As root: `sync`, then `vm.drop_caches = 3`; false when not root or the kernel refuses (a read-only /proc/sys).
#[allow(unsafe_code)]
fn drop_whole_page_cache() -> bool {
    // SAFETY: geteuid and sync take no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)` on the whole file: its clean cached pages are dropped.
#[allow(unsafe_code)]
fn fadvise_dont_need(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the descriptor stays open for the call; fadvise only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
