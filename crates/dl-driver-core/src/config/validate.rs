//! Checks DLIO treats as errors, plus dl-driver's own range checks; and where the data and checkpoints live.

use super::error::ConfigError;
use super::schema::{CheckpointCompression, Config, DataLoader, Format, Framework, Hdf5, Shuffle, StorageType};
use crate::uri::{Scheme, StorageUri};

/// Names `plugins:` may list (the plugins built into the engine).
pub const BUILT_IN_PLUGINS: [&str; 1] = ["checkpoint"];

/// numpy dtype names accepted by `dataset.record_element_type`.
pub const ELEMENT_TYPES: &[&str] =
    &["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"];

impl Config {
    /// Where the dataset lives: `dataset.data_folder` as a URI, placed under DLIO's `storage:` block when relative.
    pub fn data_location(&self) -> Result<StorageUri, String> {
        self.locate(&self.dataset.data_folder)
    }

    /// Where checkpoints go: `checkpoint.checkpoint_folder`, placed like the data folder.
    pub fn checkpoint_location(&self) -> Result<StorageUri, String> {
        self.locate(&self.checkpoint.checkpoint_folder)
    }

    fn locate(&self, folder: &str) -> Result<StorageUri, String> {
        if folder.contains("://") {
            return StorageUri::parse(folder);
        }
        let root = self.storage.storage_root.trim_end_matches('/');
        let object_scheme = match self.storage.storage_type {
            StorageType::LocalFs | StorageType::ParallelFs => None,
            StorageType::S3 => Some("s3://"),
            StorageType::Azure => Some("az://"),
            StorageType::Gcs => Some("gs://"),
        };
        match object_scheme {
            Some(scheme) => {
                if root.is_empty() || root == "." {
                    return Err(format!(
                        "storage.storage_type {} needs storage.storage_root (the bucket), got '{}'",
                        self.storage.storage_type, self.storage.storage_root
                    ));
                }
                let root = root.trim_start_matches(scheme);
                StorageUri::parse(&format!("{scheme}{root}")).map(|u| u.join(folder))
            }
            None if folder.starts_with('/') || root.is_empty() || root == "." => StorageUri::parse(folder),
            None => StorageUri::parse(&format!("{root}/{folder}")),
        }
    }
}

/// Validates a resolved config; the first problem found is returned.
pub fn validate(source_name: &str, c: &Config) -> Result<(), ConfigError> {
    let err = |path: &str, problem: String| Err(ConfigError::invalid(source_name, path, problem));
    let at_least = |path: &str, value: u64, min: u64| {
        if value < min {
            err(path, format!("got {value}, expected an integer >= {min}"))
        } else {
            Ok(())
        }
    };

    for (i, name) in c.plugins.iter().enumerate() {
        if !BUILT_IN_PLUGINS.contains(&name.as_str()) {
            return err(
                &format!("plugins[{i}]"),
                format!("unknown plugin '{name}', expected one of: {}", BUILT_IN_PLUGINS.join(", ")),
            );
        }
    }

    let timeout = c.distributed.timeout_seconds;
    if !(timeout.is_finite() && timeout > 0.0) {
        return err("distributed.timeout_seconds", format!("got {timeout}, expected a number of seconds > 0"));
    }

    // DLIO's own errors. The loader checks matter only when data is read (checkpoint-only workloads read none).
    let reads_data = c.workflow.train || c.workflow.evaluation;
    match (c.framework, c.reader.data_loader) {
        _ if !reads_data => {}
        (Framework::Tensorflow, DataLoader::Pytorch) | (Framework::Pytorch, DataLoader::Tensorflow) => {
            return err(
                "reader.data_loader",
                format!(
                    "data loader '{}' does not match framework '{}': use reader.data_loader: {} (or change framework)",
                    c.reader.data_loader, c.framework, c.framework
                ),
            );
        }
        _ => {}
    }
    if reads_data && c.dataset.format == Format::Tfrecord && c.reader.data_loader == DataLoader::Pytorch {
        return err(
            "dataset.format",
            "tfrecord cannot be read by the pytorch data loader (DLIO rejects it): use framework: tensorflow with \
             reader.data_loader: tensorflow, or another format"
                .into(),
        );
    }
    if c.dataset.record_length_bytes_stdev > 0.0 && !c.dataset.record_dims.is_empty() {
        return err(
            "dataset.record_dims",
            format!(
                "record_dims {:?} fixes the sample shape, so dataset.record_length_bytes_stdev must be 0 (got {})",
                c.dataset.record_dims, c.dataset.record_length_bytes_stdev
            ),
        );
    }
    if matches!(c.dataset.format, Format::Jpeg | Format::Png) {
        if c.dataset.record_element_type != "uint8" {
            return err(
                "dataset.record_element_type",
                format!("{} images hold uint8 pixels, got '{}'", c.dataset.format, c.dataset.record_element_type),
            );
        }
        if c.dataset.record_dims.len() > 2 {
            return err(
                "dataset.record_dims",
                format!(
                    "{} images are 2-D (grayscale), got {} dims {:?}",
                    c.dataset.format,
                    c.dataset.record_dims.len(),
                    c.dataset.record_dims
                ),
            );
        }
    }
    let model = &c.model;
    let par = &model.parallelism;
    at_least("model.parallelism.tensor", par.tensor, 1)?;
    at_least("model.parallelism.pipeline", par.pipeline, 1)?;
    if par.data == 0 || par.data < -1 {
        return err(
            "model.parallelism.data",
            format!("got {}, expected -1 (derived from the process count) or an integer >= 1", par.data),
        );
    }
    if par.zero_stage > 3 {
        return err("model.parallelism.zero_stage", format!("got {}, expected 0, 1, 2 or 3", par.zero_stage));
    }
    if model.num_layers > 0 && (model.num_layers as u64) < par.pipeline {
        return err(
            "model.num_layers",
            format!(
                "{} layers cannot be split over {} pipeline stages (model.parallelism.pipeline)",
                model.num_layers, par.pipeline
            ),
        );
    }
    if par.zero_stage == 3 && par.pipeline > 1 {
        return err(
            "model.parallelism.zero_stage",
            format!(
                "ZeRO stage 3 cannot be combined with pipeline parallelism (model.parallelism.pipeline is {})",
                par.pipeline
            ),
        );
    }
    if c.checkpoint.num_checkpoints_write > 0 && c.checkpoint.num_checkpoints_read > c.checkpoint.num_checkpoints_write
    {
        return err(
            "checkpoint.num_checkpoints_read",
            format!(
                "cannot read {} checkpoints when only {} are written (checkpoint.num_checkpoints_write)",
                c.checkpoint.num_checkpoints_read, c.checkpoint.num_checkpoints_write
            ),
        );
    }

    // dl-driver's range checks.
    let d = &c.dataset;
    at_least("dataset.num_samples_per_file", d.num_samples_per_file, 1)?;
    if c.workflow.train || c.workflow.generate_data {
        at_least("dataset.num_files_train", d.num_files_train, 1)?;
    }
    if c.workflow.evaluation {
        at_least("dataset.num_files_eval", d.num_files_eval, 1)?;
    }
    if !(d.record_length_bytes.is_finite() && d.record_length_bytes > 0.0) {
        return err(
            "dataset.record_length_bytes",
            format!("got {}, expected a number of bytes > 0", d.record_length_bytes),
        );
    }
    for (path, v) in [
        ("dataset.record_length_bytes_stdev", d.record_length_bytes_stdev),
        ("dataset.record_length_bytes_resize", d.record_length_bytes_resize),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return err(path, format!("got {v}, expected a number of bytes >= 0"));
        }
    }
    for (path, v) in [("dataset.compress_ratio", d.compress_ratio), ("dataset.dedup_ratio", d.dedup_ratio)] {
        if !(v.is_finite() && (1.0..=4096.0).contains(&v)) {
            return err(path, format!("got {v}, expected a ratio from 1 (none) to 4096"));
        }
    }
    if d.record_dims.contains(&0) {
        return err("dataset.record_dims", format!("got {:?}, expected dimensions >= 1", d.record_dims));
    }
    if !ELEMENT_TYPES.contains(&d.record_element_type.as_str()) {
        return err(
            "dataset.record_element_type",
            format!("got '{}', expected one of {}", d.record_element_type, ELEMENT_TYPES.join(", ")),
        );
    }
    if d.file_prefix.is_empty() || d.file_prefix.contains('/') {
        return err("dataset.file_prefix", format!("got '{}', expected a non-empty name without '/'", d.file_prefix));
    }
    at_least("dataset.hdf5.num_dset_per_record", d.hdf5.num_dset_per_record, 1)?;
    if d.compression_level > 9 {
        return err("dataset.compression_level", format!("got {}, expected 0-9", d.compression_level));
    }
    let data_location = match c.data_location() {
        Ok(location) => location,
        Err(problem) => return err("dataset.data_folder", problem),
    };

    let r = &c.reader;
    at_least("reader.batch_size", r.batch_size, 1)?;
    at_least("reader.batch_size_eval", r.batch_size_eval, 1)?;
    at_least("reader.computation_threads", r.computation_threads, 1)?;
    if r.sample_shuffle != Shuffle::Off {
        at_least("reader.shuffle_size", r.shuffle_size, 1)?;
    }
    if r.transfer_size == Some(0) {
        return err(
            "reader.transfer_size",
            "got 0, expected a read size in bytes >= 1 (or null for whole reads)".into(),
        );
    }
    if r.odirect && !matches!(data_location.scheme, Scheme::File | Scheme::Direct) {
        return err(
            "reader.odirect",
            format!("O_DIRECT applies to local files, but dataset.data_folder is '{}'", c.dataset.data_folder),
        );
    }

    if c.workflow.train {
        at_least("train.epochs", c.train.epochs, 1)?;
    }
    if c.train.total_training_steps == 0 || c.train.total_training_steps < -1 {
        return err(
            "train.total_training_steps",
            format!("got {}, expected -1 (no cap) or a step count >= 1", c.train.total_training_steps),
        );
    }
    at_least("evaluation.epochs_between_evals", c.evaluation.epochs_between_evals, 1)?;

    let k = &c.checkpoint;
    at_least("checkpoint.epochs_between_checkpoints", k.epochs_between_checkpoints, 1)?;
    if k.steps_between_checkpoints == 0 || k.steps_between_checkpoints < -1 {
        return err(
            "checkpoint.steps_between_checkpoints",
            format!("got {}, expected -1 (checkpoint by epoch) or a step count >= 1", k.steps_between_checkpoints),
        );
    }
    if !(k.time_between_checkpoints.is_finite()
        && (k.time_between_checkpoints >= 0.0 || k.time_between_checkpoints == -1.0))
    {
        return err(
            "checkpoint.time_between_checkpoints",
            format!("got {}, expected seconds >= 0 (or -1 for none)", k.time_between_checkpoints),
        );
    }
    if k.compression == CheckpointCompression::Zstd && !(1..=22).contains(&k.compression_level) {
        return err("checkpoint.compression_level", format!("got {}, expected a zstd level 1-22", k.compression_level));
    }
    // A generation run (mlpstorage's datagen: generate_data on, train off) of a workload that checkpoints only
    // generates.
    let generation_only = c.workflow.generate_data && !c.workflow.train;
    if c.workflow.checkpoint
        && !c.workflow.train
        && !generation_only
        && k.num_checkpoints_write < 1
        && k.num_checkpoints_read < 1
    {
        return err(
            "checkpoint.num_checkpoints_write",
            format!(
                "checkpoint-only mode (workflow.train false, workflow.checkpoint true) writes num_checkpoints_write \
                 checkpoints and then reads num_checkpoints_read; got {} and {}, expected at least one >= 1 (reading \
                 alone reads the checkpoints already in checkpoint.checkpoint_folder)",
                k.num_checkpoints_write, k.num_checkpoints_read
            ),
        );
    }
    if k.num_checkpoints_write < -1 || k.num_checkpoints_read < -1 {
        return err(
            "checkpoint.num_checkpoints_write",
            format!(
                "got write {} / read {}, expected counts >= 0 (or -1 for not given)",
                k.num_checkpoints_write, k.num_checkpoints_read
            ),
        );
    }
    if k.ksm.is_some() && k.randomize_tensor {
        return err(
            "checkpoint.ksm",
            "kernel same-page merging needs identical tensors: set checkpoint.randomize_tensor: false (DLIO's rule)"
                .into(),
        );
    }
    if let Some(first) = c.dataset.record_dims.first() {
        if !first.is_multiple_of(c.dataset.hdf5.num_dset_per_record) {
            return err(
                "dataset.hdf5.num_dset_per_record",
                format!(
                    "{} does not divide record_dims[0] = {first} (DLIO splits the first dimension over the datasets)",
                    c.dataset.hdf5.num_dset_per_record
                ),
            );
        }
    }
    if c.dataset.format == Format::Hdf5 && !c.dataset.record_dims.is_empty() {
        let h = &c.dataset.hdf5;
        let dims = h.records_dims(c.dataset.num_samples_per_file, &c.dataset.record_dims);
        if dims.len() > Hdf5::MAX_RANK {
            return err(
                "dataset.record_dims",
                format!(
                    "got {} dims {:?}: with the sample axis the records datasets would have {} dimensions, HDF5 \
                     allows at most {}",
                    c.dataset.record_dims.len(),
                    c.dataset.record_dims,
                    dims.len(),
                    Hdf5::MAX_RANK
                ),
            );
        }
        if !h.chunk_dims.is_empty() {
            if h.chunk_dims.len() != dims.len() || h.chunk_dims.contains(&0) {
                return err(
                    "dataset.hdf5.chunk_dims",
                    format!(
                        "got {:?}, expected {} positive sizes, one per dimension of the records datasets {dims:?}",
                        h.chunk_dims,
                        dims.len()
                    ),
                );
            }
            if Hdf5::chunk_count(&dims, &h.chunk_dims).is_none_or(|n| n > Hdf5::MAX_CHUNKS) {
                return err(
                    "dataset.hdf5.chunk_dims",
                    format!(
                        "got {:?}: chunks that small tile the records datasets {dims:?} in more than {} chunks, \
                         whose index would not fit in memory; use larger chunks",
                        h.chunk_dims,
                        Hdf5::MAX_CHUNKS
                    ),
                );
            }
        }
    }
    if c.reader.data_loader_classname.is_some() && c.reader.data_loader_sampler.is_none() {
        return err(
            "reader.data_loader_sampler",
            "a custom reader.data_loader_classname needs reader.data_loader_sampler: iterative or index (DLIO's rule)"
                .into(),
        );
    }
    if let Err(problem) = c.checkpoint_location() {
        return err("checkpoint.checkpoint_folder", problem);
    }
    let t = &model.transformer;
    for (path, v, max) in [
        ("model.transformer.hidden_size", t.hidden_size, 1 << 24),
        ("model.transformer.ffn_hidden_size", t.ffn_hidden_size, 1 << 24),
        ("model.transformer.vocab_size", t.vocab_size, 1 << 32),
        ("model.transformer.num_attention_heads", t.num_attention_heads, 1 << 16),
        ("model.transformer.num_kv_heads", t.num_kv_heads, 1 << 16),
        ("model.num_layers", u64::try_from(model.num_layers).unwrap_or(0), 1 << 20),
        ("model.parallelism.tensor", par.tensor, 1 << 20),
        ("model.parallelism.pipeline", par.pipeline, 1 << 20),
    ] {
        if v > max {
            return err(path, format!("got {v}, expected at most {max}"));
        }
    }
    if model.model_type.as_deref() == Some("transformer") {
        for (path, v) in [
            ("model.transformer.hidden_size", t.hidden_size),
            ("model.transformer.vocab_size", t.vocab_size),
            ("model.transformer.ffn_hidden_size", t.ffn_hidden_size),
            ("model.transformer.num_attention_heads", t.num_attention_heads),
            ("model.transformer.num_kv_heads", t.num_kv_heads),
            ("model.num_layers", u64::try_from(model.num_layers).unwrap_or(0)),
        ] {
            at_least(path, v, 1)?;
        }
        if t.num_kv_heads > t.num_attention_heads {
            return err(
                "model.transformer.num_kv_heads",
                format!("got {}, expected at most num_attention_heads ({})", t.num_kv_heads, t.num_attention_heads),
            );
        }
    }

    let m = &c.metric;
    if !(m.au > 0.0 && m.au <= 1.0) {
        return err("metric.au", format!("got {}, expected a fraction in (0, 1], e.g. 0.90", m.au));
    }
    if c.output.folder.is_empty() {
        return err("output.folder", "got an empty string, expected a folder".into());
    }
    Ok(())
}
