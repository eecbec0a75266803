//! The checkpoint manifest (`{checkpoint}/manifest.json`), written last: a checkpoint folder without one is
//! incomplete and readers ignore it. Listing, verifying and deleting checkpoints under a location.

use serde::{Deserialize, Serialize};

use super::stream::{read_file, CheckpointError, FileEntry};
use crate::storage::Store;

/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST: &str = "manifest.json";
/// What `format` says, so readers can tell our manifests from other JSON.
pub const FORMAT: &str = "dl-driver-checkpoint/1";

/// Everything about one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The folder name, `global_epoch{E}_step{S}`.
    pub name: String,
    pub epoch: u64,
    pub step: u64,
    pub world_size: u64,
    /// `none` or `zstd`.
    pub compression: String,
    pub compression_level: Option<i32>,
    pub started: String,
    pub finished: String,
    /// Tensor bytes of every file, and bytes on storage.
    pub total_bytes: u64,
    pub stored_bytes: u64,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn compressed(&self) -> bool {
        self.compression == "zstd"
    }

    /// original / stored bytes (1.0 without compression).
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.total_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// The folder of the checkpoint after `epoch` at global step `step`.
pub fn folder_name(epoch: u64, step: u64) -> String {
    format!("global_epoch{epoch}_step{step}")
}

/// Writes `manifest` into its folder: the step that makes the checkpoint complete.
pub async fn write(store: &Store, manifest: &Manifest) -> Result<(), CheckpointError> {
    let text = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
    store.put(&format!("{}/{MANIFEST}", manifest.name), text.into()).await?;
    Ok(())
}

/// The manifest of checkpoint `name`.
pub async fn read(store: &Store, name: &str) -> Result<Manifest, CheckpointError> {
    let key = format!("{name}/{MANIFEST}");
    let text = store.get(&key).await?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        CheckpointError::Corrupt(format!("{}: not a dl-driver checkpoint manifest: {e}", store.uri().join(&key)))
    })?;
    if manifest.format != FORMAT {
        return Err(CheckpointError::Corrupt(format!(
            "{}: format '{}', expected '{FORMAT}'",
            store.uri().join(&key),
            manifest.format
        )));
    }
    Ok(manifest)
}

/// A checkpoint folder found under a location.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub name: String,
    /// Has a manifest (complete); without one the checkpoint is incomplete and invisible to readers.
    pub complete: bool,
    pub objects: u64,
    pub stored_bytes: u64,
}

/// Checkpoint folders (`global_epoch*_step*`) under the store's location, complete or not, oldest step first.
pub async fn list(store: &Store) -> Result<Vec<Listed>, CheckpointError> {
    let mut found: Vec<Listed> = Vec::new();
    for object in store.list("").await? {
        let Some((folder, file)) = object.key.split_once('/') else { continue };
        if !folder.starts_with("global_epoch") {
            continue;
        }
        // Listings are sorted by key, so a folder's objects are consecutive: only the last entry can match.
        if found.last().is_none_or(|l| l.name != folder) {
            found.push(Listed { name: folder.to_string(), complete: false, objects: 0, stored_bytes: 0 });
        }
        let entry = found.last_mut().expect("just ensured");
        entry.objects += 1;
        entry.stored_bytes += object.size;
        entry.complete |= file == MANIFEST;
    }
    found.sort_by_key(|l| (parse_name(&l.name), l.name.clone()));
    Ok(found)
}

fn parse_name(name: &str) -> (u64, u64) {
    let rest = name.trim_start_matches("global_epoch");
    let (epoch, step) = rest.split_once("_step").unwrap_or((rest, "0"));
    (epoch.parse().unwrap_or(0), step.parse().unwrap_or(0))
}

/// Reads every file of a complete checkpoint and checks it against the manifest; returns the stored bytes read.
pub async fn verify(store: &Store, name: &str) -> Result<u64, CheckpointError> {
    let manifest = read(store, name).await?;
    let mut total = 0;
    let unshown = indicatif::ProgressBar::hidden();
    for entry in &manifest.files {
        total += read_file(store, &format!("{name}/{}", entry.name), entry, manifest.compressed(), &unshown).await?;
    }
    Ok(total)
}

/// Deletes a checkpoint folder, manifest first (so a half-deleted checkpoint is never taken as complete).
pub async fn delete(store: &Store, name: &str) -> Result<u64, CheckpointError> {
    let objects = store.list(name).await?;
    if objects.is_empty() {
        return Err(CheckpointError::Invalid(format!("{}: no such checkpoint", store.uri().join(name))));
    }
    let manifest = format!("{name}/{MANIFEST}");
    store.delete(&manifest).await?;
    for o in objects.iter().filter(|o| o.key != manifest) {
        store.delete(&o.key).await?;
    }
    Ok(objects.len() as u64)
}
