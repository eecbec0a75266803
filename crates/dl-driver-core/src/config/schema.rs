//! The resolved workload config: DLIO's sections and keys in the HEAD dialect, with DLIO's code defaults.
//!
//! Serializing a [`Config`] gives the canonical YAML/JSON that parses back to the same config.

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use super::distribution::Distribution;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[doc = $text] #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// The YAML spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }
    };
}

string_enum!(
    /// Which communicator joins the ranks of a launched job (dl-driver extension): `auto` picks from the launcher's
    /// environment (mpirun/mpiexec/srun: MPI; torchrun: torch.distributed), `none` runs each process alone.
    CommKind { Auto = "auto", Mpi = "mpi", Torch = "torch", None = "none" } default Auto
);
string_enum!(
    /// The training framework being emulated.
    Framework { Tensorflow = "tensorflow", Pytorch = "pytorch" } default Tensorflow
);
string_enum!(
    /// On-storage dataset format.
    Format {
        Tfrecord = "tfrecord", Hdf5 = "hdf5", Csv = "csv", Npz = "npz", Npy = "npy", Jpeg = "jpeg", Png = "png",
        IndexedBinary = "indexed_binary", MmapIndexedBinary = "mmap_indexed_binary", Synthetic = "synthetic",
    } default Tfrecord
);
string_enum!(
    /// The data loader DLIO would use.
    DataLoader {
        Tensorflow = "tensorflow", Pytorch = "pytorch", Dali = "dali", NativeDali = "native_dali",
        Synthetic = "synthetic", Custom = "custom", None = "none",
    } default Tensorflow
);
string_enum!(
    /// File or sample shuffling: off, seeded, or unseeded.
    Shuffle { Off = "off", Seed = "seed", Random = "random" } default Off
);
string_enum!(
    /// Whether samples are read on demand or loaded into memory once.
    ReadType { OnDemand = "on_demand", Memory = "memory" } default OnDemand
);
string_enum!(
    /// File-per-process or shared-file access.
    FileAccess {
        Multi = "multi", Shared = "shared", Collective = "collective", Mpio = "mpio", Posix = "posix",
    } default Multi
);
string_enum!(
    /// Dataset compression.
    Compression { None = "none", Gzip = "gzip", Lzf = "lzf", Bz2 = "bz2", Zip = "zip", Xz = "xz" } default None
);
string_enum!(
    /// Sampler of the data loader (DLIO derives it from the loader when unset).
    Sampler { Index = "index", Iterative = "iterative", None = "none" } default Index
);
string_enum!(
    /// Process start method of loader workers.
    MultiprocessingContext { Fork = "fork", Spawn = "spawn", Forkserver = "forkserver" } default Fork
);
string_enum!(
    /// Element datatypes of model and optimizer state.
    Datatype {
        Fp16 = "fp16", Bf16 = "bf16", Fp32 = "fp32", Fp64 = "fp64", Int8 = "int8", Uint8 = "uint8",
    } default Fp16
);
string_enum!(
    /// Which ranks write checkpoints.
    CheckpointLocation { RankZero = "rank_zero", AllRanks = "all_ranks" } default RankZero
);
string_enum!(
    /// Checkpoint mode: every rank of the job, or only this node's share of a larger job.
    CheckpointMode { Default = "default", Subset = "subset" } default Default
);
string_enum!(
    /// Checkpoint compression (dl-driver extension).
    CheckpointCompression { None = "none", Zstd = "zstd" } default None
);
string_enum!(
    /// Storage type of DLIO's `storage:` block.
    StorageType {
        LocalFs = "local_fs", ParallelFs = "parallel_fs", S3 = "s3", Azure = "azure", Gcs = "gcs",
    } default LocalFs
);
string_enum!(
    /// Profiler DLIO would attach.
    Profiler { None = "none", Iostat = "iostat", Darshan = "darshan", Tensorboard = "tensorboard" } default Iostat
);

impl Datatype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::Fp16 | Self::Bf16 => 2,
            Self::Fp32 => 4,
            Self::Fp64 => 8,
            Self::Int8 | Self::Uint8 => 1,
        }
    }
}

/// The whole workload config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub model: Model,
    pub framework: Framework,
    pub workflow: Workflow,
    pub dataset: Dataset,
    pub reader: Reader,
    pub train: Train,
    pub evaluation: Evaluation,
    pub checkpoint: Checkpoint,
    pub output: Output,
    pub profiling: Profiling,
    pub storage: Storage,
    pub metric: Metric,
    /// dl-driver extension: plugins to enable by name (`checkpoint` is the same as `workflow.checkpoint: True`).
    pub plugins: Vec<String>,
    /// dl-driver extension: how the ranks of a multi-process run talk.
    pub distributed: Distributed,
}

/// `distributed:` (dl-driver extension) the communicator of a multi-process run and how long a collective waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Distributed {
    pub communicator: CommKind,
    /// A barrier or gather that not every rank reaches within this many seconds fails, naming where it waited.
    pub timeout_seconds: f64,
}

impl Default for Distributed {
    fn default() -> Self {
        Self { communicator: CommKind::Auto, timeout_seconds: 60.0 }
    }
}

/// `model:` the emulated model (name, and the sizes checkpointing needs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Model {
    pub name: String,
    #[serde(rename = "type")]
    pub model_type: Option<String>,
    pub model_size_bytes: u64,
    pub optimization_groups: Vec<u64>,
    /// Layer count; `-1` means not given.
    pub num_layers: i64,
    pub layer_parameters: Vec<u64>,
    pub model_datatype: Datatype,
    pub optimizer_datatype: Datatype,
    pub parallelism: Parallelism,
    pub transformer: Transformer,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            name: "default".into(),
            model_type: None,
            model_size_bytes: 10240,
            optimization_groups: Vec::new(),
            num_layers: -1,
            layer_parameters: Vec::new(),
            model_datatype: Datatype::Fp16,
            optimizer_datatype: Datatype::Fp32,
            parallelism: Parallelism::default(),
            transformer: Transformer::default(),
        }
    }
}

/// `model.parallelism:` tensor, pipeline and data parallel degrees and the ZeRO stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Parallelism {
    pub tensor: u64,
    pub pipeline: u64,
    /// Data-parallel degree; `-1` derives it from the number of processes.
    pub data: i64,
    pub zero_stage: u64,
}

impl Default for Parallelism {
    fn default() -> Self {
        Self { tensor: 1, pipeline: 1, data: -1, zero_stage: 0 }
    }
}

/// `model.transformer:` the shape of a transformer model, for checkpoint sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Transformer {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub ffn_hidden_size: u64,
    pub num_attention_heads: u64,
    pub num_kv_heads: u64,
}

impl Default for Transformer {
    fn default() -> Self {
        Self { vocab_size: 32000, hidden_size: 2048, ffn_hidden_size: 8192, num_attention_heads: 32, num_kv_heads: 8 }
    }
}

/// `workflow:` which phases run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workflow {
    pub generate_data: bool,
    pub train: bool,
    pub evaluation: bool,
    pub checkpoint: bool,
    pub profiling: bool,
    pub debug: bool,
    /// dl-driver: drop the client's page cache of the dataset before each epoch and of the checkpoints between the
    /// writes and the reads of a checkpoint-only run (`--drop-caches`), outside the measured steps.
    pub drop_caches: bool,
}

impl Default for Workflow {
    fn default() -> Self {
        Self {
            generate_data: false,
            train: true,
            evaluation: false,
            checkpoint: false,
            profiling: false,
            debug: false,
            drop_caches: false,
        }
    }
}

/// `dataset:` where the data lives and what it looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dataset {
    /// A local path or a URI (`file://`, `direct://`, `s3://`, `az://`, `memory://`).
    pub data_folder: String,
    pub format: Format,
    pub num_files_train: u64,
    pub num_files_eval: u64,
    pub num_samples_per_file: u64,
    pub num_subfolders_train: u64,
    pub num_subfolders_eval: u64,
    pub record_length_bytes: f64,
    pub record_length_bytes_stdev: f64,
    pub record_length_bytes_resize: f64,
    pub record_dims: Vec<u64>,
    pub record_element_type: String,
    /// Accepted for compatibility; DLIO recomputes it from record_element_type.
    pub record_element_bytes: u64,
    pub file_prefix: String,
    pub compression: Compression,
    pub compression_level: u64,
    pub enable_chunking: bool,
    pub chunk_size: u64,
    pub keep_files: bool,
    pub generation_buffer_size: u64,
    pub hdf5: Hdf5,
    /// dl-driver extension: generated sample bytes compress by about this factor (1 = incompressible).
    pub compress_ratio: f64,
    /// dl-driver extension: each distinct 4 KiB block of sample bytes appears this many times (1 = no duplicates).
    pub dedup_ratio: f64,
    /// MLPerf Storage v3 (mlpstorage injects it): training computes the split's file names from DLIO's layout
    /// instead of listing the store.
    pub skip_listing: bool,
    /// With `skip_listing`: before training, every N-th computed file (and the last) must exist (0: none checked).
    pub listing_validation_interval: u64,
    /// Injected by mlpstorage v3 (what its datagen wrote): accepted, without effect.
    pub num_files_generated: Option<u64>,
    /// Injected by mlpstorage v3 (the dataset's bytes on disk): accepted, without effect.
    pub total_disk_bytes: Option<u64>,
}

impl Default for Dataset {
    fn default() -> Self {
        Self {
            data_folder: "./data/".into(),
            format: Format::Tfrecord,
            num_files_train: 8,
            num_files_eval: 0,
            num_samples_per_file: 1,
            num_subfolders_train: 0,
            num_subfolders_eval: 0,
            record_length_bytes: 65536.0,
            record_length_bytes_stdev: 0.0,
            record_length_bytes_resize: 0.0,
            record_dims: Vec::new(),
            record_element_type: "uint8".into(),
            record_element_bytes: 4,
            file_prefix: "img".into(),
            compression: Compression::None,
            compression_level: 4,
            enable_chunking: false,
            chunk_size: 0,
            keep_files: true,
            generation_buffer_size: 2 * 1024 * 1024 * 1024,
            hdf5: Hdf5::default(),
            compress_ratio: 1.0,
            dedup_ratio: 1.0,
            skip_listing: false,
            listing_validation_interval: 0,
            num_files_generated: None,
            total_disk_bytes: None,
        }
    }
}

/// `dataset.hdf5:` HDF5 layout options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hdf5 {
    pub num_dset_per_record: u64,
    pub chunk_dims: Vec<u64>,
    pub max_shape: Vec<u64>,
}

impl Default for Hdf5 {
    fn default() -> Self {
        Self { num_dset_per_record: 1, chunk_dims: Vec::new(), max_shape: Vec::new() }
    }
}

impl Hdf5 {
    /// HDF5's limit on the dimensions of a dataset (`H5S_MAX_RANK`).
    pub const MAX_RANK: usize = 32;
    /// The most chunks one `records_*` dataset may have: dl-driver keeps each chunk's index entry in memory while
    /// writing (16 bytes each), and h5py walks them all on open; 2^24 chunks is 256 MiB of index.
    pub const MAX_CHUNKS: u64 = 1 << 24;

    /// The shape of each `records_*` dataset of a file of `samples` samples of `shape` (samples first): DLIO drops a
    /// leading 1 of the shape and splits its first dimension over `num_dset_per_record` datasets.
    pub fn records_dims(&self, samples: u64, shape: &[u64]) -> Vec<u64> {
        let mut dims = vec![samples];
        match shape {
            [1, rest @ ..] if !rest.is_empty() => dims.extend_from_slice(rest),
            [first, rest @ ..] => {
                dims.push(first / self.num_dset_per_record.max(1));
                dims.extend_from_slice(rest);
            }
            [] => {}
        }
        dims
    }

    /// How many chunks of `chunk` (sides capped at `dims`) tile `dims`; `None` past u64.
    pub fn chunk_count(dims: &[u64], chunk: &[u64]) -> Option<u64> {
        dims.iter().zip(chunk).try_fold(1u64, |n, (d, c)| n.checked_mul(d.div_ceil((*c).clamp(1, (*d).max(1)))))
    }
}

/// `reader:` (DLIO 2.0.0: `data_reader:`) the input pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reader {
    pub data_loader: DataLoader,
    /// Unset: iterative for the tensorflow loader, index otherwise (DLIO's derivation).
    pub data_loader_sampler: Option<Sampler>,
    pub data_loader_classname: Option<String>,
    pub reader_classname: Option<String>,
    pub batch_size: u64,
    pub batch_size_eval: u64,
    pub read_threads: u64,
    pub computation_threads: u64,
    pub prefetch_size: u64,
    pub file_shuffle: Shuffle,
    pub sample_shuffle: Shuffle,
    pub shuffle_size: u64,
    pub read_type: ReadType,
    pub file_access: FileAccess,
    pub transfer_size: Option<u64>,
    pub preprocess_time: Distribution,
    pub pin_memory: bool,
    pub odirect: bool,
    pub dont_use_mmap: bool,
    pub multiprocessing_context: MultiprocessingContext,
    pub transformed_record_dims: Vec<u64>,
    pub transformed_record_element_type: String,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            data_loader: DataLoader::Tensorflow,
            data_loader_sampler: None,
            data_loader_classname: None,
            reader_classname: None,
            batch_size: 1,
            batch_size_eval: 1,
            read_threads: 1,
            computation_threads: 1,
            prefetch_size: 2,
            file_shuffle: Shuffle::Off,
            sample_shuffle: Shuffle::Off,
            shuffle_size: 1024,
            read_type: ReadType::OnDemand,
            file_access: FileAccess::Multi,
            transfer_size: None,
            preprocess_time: Distribution::Constant(0.0),
            pin_memory: true,
            odirect: false,
            dont_use_mmap: false,
            multiprocessing_context: MultiprocessingContext::Fork,
            transformed_record_dims: Vec::new(),
            transformed_record_element_type: "uint8".into(),
        }
    }
}

/// `train:` epochs, steps and emulated compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Train {
    pub epochs: u64,
    /// Caps the steps of each epoch when > 0.
    pub total_training_steps: i64,
    pub computation_time: Distribution,
    pub seed: u64,
    pub seed_change_epoch: bool,
}

impl Default for Train {
    fn default() -> Self {
        Self {
            epochs: 1,
            total_training_steps: -1,
            computation_time: Distribution::Constant(0.0),
            seed: 123,
            seed_change_epoch: true,
        }
    }
}

/// `evaluation:` eval phases between epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evaluation {
    pub eval_time: Distribution,
    pub eval_after_epoch: u64,
    pub epochs_between_evals: u64,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self { eval_time: Distribution::Constant(0.0), eval_after_epoch: 1, epochs_between_evals: 1 }
    }
}

/// `checkpoint:` when and how checkpoints are written and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Checkpoint {
    /// A local path or a URI, like `dataset.data_folder`.
    pub checkpoint_folder: String,
    pub checkpoint_after_epoch: u64,
    pub epochs_between_checkpoints: u64,
    /// Checkpoint every N steps when > 0; epoch mode otherwise.
    pub steps_between_checkpoints: i64,
    #[serde(rename = "type")]
    pub location: CheckpointLocation,
    pub checkpoint_mechanism_classname: Option<String>,
    pub fsync: bool,
    pub time_between_checkpoints: f64,
    /// Checkpoint-only mode: how many checkpoints to write (`-1`: not given).
    pub num_checkpoints_write: i64,
    /// Checkpoint-only mode: how many to read back afterwards (`-1`: not given).
    pub num_checkpoints_read: i64,
    pub recovery_rank_shift: bool,
    pub mode: CheckpointMode,
    pub randomize_tensor: bool,
    pub rank_sync: bool,
    /// DLIO's kernel same-page merging options (accepted, free-form).
    pub ksm: Option<Mapping>,
    pub compression: CheckpointCompression,
    pub compression_level: i32,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            checkpoint_folder: "./checkpoints/".into(),
            checkpoint_after_epoch: 1,
            epochs_between_checkpoints: 1,
            steps_between_checkpoints: -1,
            location: CheckpointLocation::RankZero,
            checkpoint_mechanism_classname: None,
            fsync: false,
            time_between_checkpoints: -1.0,
            num_checkpoints_write: -1,
            num_checkpoints_read: -1,
            recovery_rank_shift: false,
            mode: CheckpointMode::Default,
            randomize_tensor: true,
            rank_sync: false,
            ksm: None,
            compression: CheckpointCompression::None,
            compression_level: 3,
        }
    }
}

/// `output:` where run files go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    /// The run folder; when the workload leaves it unset, Hydra's run dir if given, else `output`.
    pub folder: String,
    pub log_file: String,
    pub metric: OutputMetric,
}

/// `output.metric:` steps left out of AU and throughput at each end of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputMetric {
    pub exclude_start_steps: u64,
    pub exclude_end_steps: u64,
}

impl Default for OutputMetric {
    fn default() -> Self {
        Self { exclude_start_steps: 1, exclude_end_steps: 0 }
    }
}

impl Default for Output {
    fn default() -> Self {
        Self { folder: "output".into(), log_file: "dlio.log".into(), metric: OutputMetric::default() }
    }
}

/// `profiling:` DLIO's profiler hooks (accepted for compatibility).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profiling {
    pub profiler: Profiler,
    pub iostat_devices: Vec<String>,
}

impl Default for Profiling {
    fn default() -> Self {
        Self { profiler: Profiler::Iostat, iostat_devices: Vec::new() }
    }
}

/// `storage:` DLIO's storage block; `storage_root` prefixes relative folders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Storage {
    pub storage_type: StorageType,
    pub storage_root: String,
    /// Backend options (credentials, endpoint, region, retries, ...): free-form, never printed unredacted.
    pub storage_options: Mapping,
    /// DLIO's S3 addressing (mlpstorage v3 injects it here): the same as `storage_options.s3_force_path_style`,
    /// which wins when both are given.
    pub s3_force_path_style: Option<bool>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            storage_type: StorageType::LocalFs,
            storage_root: "./".into(),
            storage_options: Mapping::new(),
            s3_force_path_style: None,
        }
    }
}

impl Storage {
    /// `storage_options` with `s3_force_path_style` added when only this block's key sets it.
    pub fn options(&self) -> Mapping {
        let mut options = self.storage_options.clone();
        if let Some(path_style) = self.s3_force_path_style {
            let key = Value::String("s3_force_path_style".into());
            if !options.contains_key(&key) {
                options.insert(key, Value::Bool(path_style));
            }
        }
        options
    }
}

/// `metric:` the accelerator-utilization target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metric {
    /// AU threshold as a fraction (0.90 = 90%).
    pub au: f64,
}

impl Default for Metric {
    fn default() -> Self {
        Self { au: 0.90 }
    }
}

/// Keys whose values are free-form maps: their contents are not checked against the schema.
pub const FREE_FORM_KEYS: &[&str] = &["storage.storage_options", "checkpoint.ksm"];

/// Keys holding a time distribution (a number or a dict).
pub const TIME_KEYS: &[&str] = &["train.computation_time", "evaluation.eval_time", "reader.preprocess_time"];

/// Option keys whose values are credentials and are shown as `***`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("key")
        || ["secret", "password", "token", "sas", "access_key", "connection_string", "credential"]
            .iter()
            .any(|s| k.contains(s))
}

/// Whether a value holds credentials anywhere in it (a mapping with a secret key, at any depth).
pub fn contains_secret(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map.iter().any(|(k, v)| k.as_str().is_some_and(is_secret_key) || contains_secret(v)),
        Value::Sequence(items) => items.iter().any(contains_secret),
        Value::Tagged(t) => contains_secret(&t.value),
        _ => false,
    }
}

impl Config {
    /// The canonical YAML text of this config, credentials shown as `***` when `redact`; readers of YAML 1.1
    /// (PyYAML, OmegaConf) and 1.2 read the same values from it.
    pub fn to_yaml(&self, redact: bool) -> String {
        super::emit::to_yaml(&if redact { self.to_redacted_value() } else { self.to_value() })
    }

    /// The canonical YAML tree of this config.
    pub fn to_value(&self) -> Value {
        serde_yaml::to_value(self).expect("a Config always serializes")
    }

    /// The canonical tree with credentials in `storage.storage_options` replaced by `***`.
    pub fn to_redacted_value(&self) -> Value {
        let mut value = self.to_value();
        if let Some(options) =
            value.get_mut("storage").and_then(|s| s.get_mut("storage_options")).and_then(Value::as_mapping_mut)
        {
            for (k, v) in options.iter_mut() {
                if k.as_str().is_some_and(is_secret_key) {
                    *v = Value::String("***".into());
                }
            }
        }
        value
    }
}
