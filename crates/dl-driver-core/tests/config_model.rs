//! The config model end to end: both dialects, malformed inputs, and the YAML round trip.

use dl_driver_core::config::{load, parse_yaml, resolve, Config, ConfigError, LoadOptions, Source};
use proptest::prelude::*;
use serde_yaml::Value;

fn tree(yaml: &str) -> Source {
    Source::Tree { name: "w.yaml".into(), value: serde_yaml::from_str(yaml).expect("test YAML parses") }
}

fn resolved(yaml: &str) -> Config {
    load(&tree(yaml), &[], &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}")).config
}

#[test]
fn both_dialects_resolve_to_the_same_config() {
    let old = resolved(
        "model: unet3d\nframework: pytorch\n\
         data_reader: {data_loader: pytorch, batch_size: 7, read_threads: 4, preprocess_time: 0.1, preprocess_time_stdev: 0.01}\n\
         dataset: {format: npz, record_length: 146600628, record_length_stdev: 68341808, record_length_resize: 2097152}\n\
         train: {computation_time: 0.323, computation_time_stdev: 0.02}\n\
         evaluation: {eval_time: 0.5}\n\
         metric: {exclude_start_steps: 2}\n\
         checkpoint: {model_size: 499153191, optimization_groups: [1, 2], num_layers: 4, layer_parameters: [3, 4],\n\
                      tensor_parallelism: 2, pipeline_parallelism: 2}",
    );
    let head = resolved(
        "model: {name: unet3d, model_size_bytes: 499153191, optimization_groups: [1, 2], num_layers: 4,\n\
                 layer_parameters: [3, 4], parallelism: {tensor: 2, pipeline: 2}}\n\
         framework: pytorch\n\
         reader: {data_loader: pytorch, batch_size: 7, read_threads: 4, preprocess_time: {mean: 0.1, stdev: 0.01}}\n\
         dataset: {format: npz, record_length_bytes: 146600628, record_length_bytes_stdev: 68341808,\n\
                   record_length_bytes_resize: 2097152}\n\
         train: {computation_time: {type: normal, mean: 0.323, stdev: 0.02}}\n\
         evaluation: {eval_time: {mean: 0.5}}\n\
         output: {metric: {exclude_start_steps: 2}}",
    );
    assert_eq!(old, head);
    assert_eq!(head.model.model_size_bytes, 499_153_191);
    // Stock unet3d files name the HEAD model size `model.model_size`: it counts as model_size_bytes.
    assert_eq!(resolved("model: {name: u, model_size: 42}").model.model_size_bytes, 42);
}

/// (YAML, overrides, the key path the message must name, a fragment of the problem).
const MALFORMED: &[(&str, &[&str], &str, &str)] = &[
    ("dataset: {num_files_train: -3}", &[], "dataset.num_files_train", "-3"),
    ("dataset: {num_files_train: lots}", &[], "dataset.num_files_train", "lots"),
    ("dataset: {num_samples_per_file: 0}", &[], "dataset.num_samples_per_file", ">= 1"),
    ("reader: {batch_size: 0}", &[], "reader.batch_size", ">= 1"),
    ("reader: {batch_size_eval: 0}", &[], "reader.batch_size_eval", ">= 1"),
    ("reader: {read_threads: 2.5}", &[], "reader.read_threads", "2.5"),
    ("reader: {file_shuffle: sometimes}", &[], "reader.file_shuffle", "sometimes"),
    ("framework: tensorflow\nreader: {data_loader: pytorch}", &[], "reader.data_loader", "does not match framework"),
    ("framework: pytorch\nreader: {data_loader: tensorflow}", &[], "reader.data_loader", "does not match framework"),
    (
        "framework: pytorch\nreader: {data_loader: pytorch}\ndataset: {format: tfrecord}",
        &[],
        "dataset.format",
        "tfrecord",
    ),
    ("framework: jax", &[], "framework", "jax"),
    ("dataset: {format: parquet}", &[], "dataset.format", "parquet"),
    ("dataset: {record_length_bytes: 0}", &[], "dataset.record_length_bytes", "> 0"),
    ("dataset: {record_dims: [4, 4], record_length_bytes_stdev: 10}", &[], "dataset.record_dims", "stdev"),
    (
        "dataset: {format: png, record_dims: [2, 2, 2]}\nframework: pytorch\nreader: {data_loader: pytorch}",
        &[],
        "dataset.record_dims",
        "2-D",
    ),
    (
        "dataset: {format: jpeg, record_element_type: float32}\nframework: pytorch\nreader: {data_loader: pytorch}",
        &[],
        "dataset.record_element_type",
        "uint8",
    ),
    ("dataset: {data_folder: 'ftp://host/data'}", &[], "dataset.data_folder", "unsupported URI scheme"),
    ("dataset: {data_folder: 's3://'}", &[], "dataset.data_folder", "bucket"),
    ("checkpoint: {checkpoint_folder: 's3://Bad_Bucket/x'}", &[], "checkpoint.checkpoint_folder", "not a valid name"),
    ("storage: {storage_type: s3, storage_root: ''}", &[], "dataset.data_folder", "storage_root"),
    ("storage: {storage_type: nfs}", &[], "storage.storage_type", "nfs"),
    ("train: {epochs: 0}", &[], "train.epochs", ">= 1"),
    ("train: {computation_time: {type: weibull}}", &[], "train.computation_time", "weibull"),
    ("train: {computation_time: fast}", &[], "train.computation_time", "fast"),
    ("checkpoint: {steps_between_checkpoints: 0}", &[], "checkpoint.steps_between_checkpoints", "-1"),
    ("checkpoint: {num_checkpoints_write: 2, num_checkpoints_read: 3}", &[], "checkpoint.num_checkpoints_read", "3"),
    ("workflow: {train: False, checkpoint: True}", &[], "checkpoint.num_checkpoints_write", "checkpoint-only"),
    ("model: {num_layers: 2, parallelism: {pipeline: 4}}", &[], "model.num_layers", "4 pipeline"),
    ("model: {parallelism: {pipeline: 2, zero_stage: 3}}", &[], "model.parallelism.zero_stage", "pipeline"),
    ("model: {parallelism: {zero_stage: 5}}", &[], "model.parallelism.zero_stage", "5"),
    ("metric: {au: 90}", &[], "metric.au", "fraction"),
    ("reader: {odirect: True}\ndataset: {data_folder: 's3://bkt/x'}", &[], "reader.odirect", "local files"),
    ("checkpoint: {compression: zstd, compression_level: 40}", &[], "checkpoint.compression_level", "1-22"),
    ("train: 5", &[], "train", "section"),
    (
        "dataset: {record_length: 10, record_length_bytes: 20}",
        &[],
        "dataset.record_length (DLIO 2.0.0 name) is 10",
        "20",
    ),
    ("[1, 2]", &["++workload.train.epochs=2"], "(top level)", "expected a mapping of sections"),
    ("checkpoint: {ksm: {madv_mergeable_id: 12}}", &[], "checkpoint.ksm", "randomize_tensor"),
    (
        "dataset: {record_dims: [3, 4], hdf5: {num_dset_per_record: 2}}",
        &[],
        "dataset.hdf5.num_dset_per_record",
        "record_dims[0] = 3",
    ),
    ("model: {transformer: {hidden_size: 99999999999}}", &[], "model.transformer.hidden_size", "at most"),
    (
        "dataset: {format: hdf5, record_dims: [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]}",
        &[],
        "dataset.record_dims",
        "HDF5 allows at most 32",
    ),
    (
        "dataset: {format: hdf5, num_samples_per_file: 1024, record_dims: [4096, 4096], hdf5: {chunk_dims: [1, 1, 1]}}",
        &[],
        "dataset.hdf5.chunk_dims",
        "more than 16777216 chunks",
    ),
    (
        "dataset: {format: hdf5, record_dims: [8, 8], hdf5: {chunk_dims: [1, 8]}}",
        &[],
        "dataset.hdf5.chunk_dims",
        "expected 3 positive sizes",
    ),
    ("{}", &["++workload.reader.batch_size=abc"], "reader.batch_size", "abc"),
    ("{}", &["workload.train.epochs=3"], "workload.train.epochs", "++workload.train.epochs"),
    ("{}", &["++workload.train.epochs=[1,2"], "workload.train.epochs", "not closed"),
    ("{}", &["++dataset.num_files_train=4"], "dataset.num_files_train", "unknown config group"),
];

#[test]
fn malformed_inputs_name_the_key_and_the_problem() {
    assert!(MALFORMED.len() >= 20);
    for (yaml, overrides, path, problem) in MALFORMED {
        let overrides: Vec<String> = overrides.iter().map(ToString::to_string).collect();
        let err = load(&tree(yaml), &overrides, &LoadOptions::default())
            .map_or_else(|e| e.to_string(), |l| format!("no error, got {:?}", l.config));
        assert!(
            err.contains(path) && err.contains(problem),
            "{yaml} {overrides:?}: expected {path} / {problem}, got: {err}"
        );
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    match parse_yaml("bad.yaml", "dataset:\n  format: npz\n  num_files_train: [1\n") {
        Err(ConfigError::Syntax { source_name, line, column, .. }) => {
            assert_eq!(source_name, "bad.yaml");
            assert!(line >= 3 && column > 0, "line {line} column {column}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn config_files_and_config_dirs_load() {
    let dir = std::env::temp_dir().join(format!("dl-driver-config-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("workload")).unwrap();
    std::fs::write(dir.join("workload/mine.yaml"), "dataset: {num_files_train: 3}\n").unwrap();
    let opts = LoadOptions { config_dir: Some(dir.clone()), ..LoadOptions::default() };
    let loaded = load(&Source::Name("mine".into()), &[], &opts).unwrap();
    assert_eq!(loaded.config.dataset.num_files_train, 3);
    assert!(loaded.source_name.ends_with("workload/mine.yaml"));
    // --config-dir shadows a built-in workload of the same name.
    std::fs::write(dir.join("workload/unet3d_h100.yaml"), "dataset: {num_files_train: 5}\n").unwrap();
    assert_eq!(load(&Source::Name("unet3d_h100".into()), &[], &opts).unwrap().config.dataset.num_files_train, 5);
    let loaded = load(&Source::File(dir.join("workload/mine.yaml")), &[], &LoadOptions::default()).unwrap();
    assert_eq!(loaded.config.dataset.num_files_train, 3);
    let e = load(&Source::Name("nope".into()), &[], &opts).unwrap_err().to_string();
    assert!(e.contains("'nope' not found") && e.contains("unet3d_h100"), "{e}");
    let e = load(&Source::File(dir.join("missing.yaml")), &[], &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("missing.yaml"), "{e}");
    let typo = LoadOptions { config_dir: Some(dir.join("no-such-dir")), ..LoadOptions::default() };
    let e = load(&Source::Name("unet3d_h100".into()), &[], &typo).unwrap_err().to_string();
    assert!(e.contains("no-such-dir") && e.contains("--config-dir"), "a mistyped --config-dir must not fall back: {e}");
    let iostat = load(&tree("profiling: {iostat_devices: sda}"), &[], &LoadOptions::default()).unwrap().config;
    assert_eq!(iostat.profiling.iostat_devices, vec!["sda".to_string()]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Valid values per key, to build random configs from.
fn field() -> impl Strategy<Value = (&'static str, Value)> {
    let int = |path: &'static str, lo: u64, hi: u64| (lo..hi).prop_map(move |v| (path, Value::from(v)));
    let pick = |path: &'static str, options: &'static [&'static str]| {
        proptest::sample::select(options).prop_map(move |v| (path, Value::from(v)))
    };
    prop_oneof![
        int("dataset.num_files_train", 1, 100_000),
        int("dataset.num_samples_per_file", 1, 2000),
        int("dataset.num_subfolders_train", 0, 100),
        (1.0f64..1e9).prop_map(|v| ("dataset.record_length_bytes", Value::from(v))),
        int("reader.batch_size", 1, 1000),
        int("reader.read_threads", 0, 64),
        int("reader.prefetch_size", 0, 16),
        pick("reader.file_shuffle", &["off", "seed", "random"]),
        pick("reader.read_type", &["on_demand", "memory"]),
        pick("dataset.format", &["npz", "npy", "hdf5", "csv", "jpeg", "png", "indexed_binary", "synthetic"]),
        pick(
            "dataset.data_folder",
            &["data/x", "/abs/data", "s3://bkt/data", "az://ctr/p", "direct:///mnt/d", "gs://bkt"]
        ),
        int("train.epochs", 1, 20),
        int("train.seed", 0, 1 << 31),
        (0.0f64..2.0).prop_map(|v| ("train.computation_time", Value::from(v))),
        ((0.0f64..1.0), (0.0f64..0.5)).prop_map(|(m, s)| {
            ("train.computation_time", serde_yaml::from_str(&format!("{{mean: {m}, stdev: {s}}}")).unwrap())
        }),
        ((0.0f64..1.0), (1.0f64..2.0)).prop_map(|(a, b)| {
            ("evaluation.eval_time", serde_yaml::from_str(&format!("{{type: uniform, min: {a}, max: {b}}}")).unwrap())
        }),
        int("checkpoint.epochs_between_checkpoints", 1, 10),
        (0.01f64..1.0).prop_map(|v| ("metric.au", Value::from(v))),
        pick("storage.storage_options.endpoint_url", &["http://127.0.0.1:9000", "https://s3.example"]),
        pick("dataset.file_prefix", &["yes", "off", "1_000", "img", "données", "a b", "~", "null", "0x1F", "-x"]),
        pick("storage.storage_options.region", &["no", "0.5", "line\nk: no", "x: y", "'quoted'", "#hash"]),
        pick("model.model_datatype", &["fp16", "bf16", "fp32"]),
        int("model.parallelism.tensor", 1, 9),
        int("model.transformer.hidden_size", 1, 1 << 24),
        (1i64..100_000).prop_map(|v| ("checkpoint.steps_between_checkpoints", Value::from(v))),
        (0.0f64..1e6).prop_map(|v| ("checkpoint.time_between_checkpoints", Value::from(v))),
    ]
}

fn set(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let map = node.as_mapping_mut().unwrap();
        if !map.contains_key(*part) {
            map.insert((*part).into(), Value::Mapping(serde_yaml::Mapping::new()));
        }
        node = map.get_mut(*part).unwrap();
    }
    node.as_mapping_mut().unwrap().insert(parts[parts.len() - 1].into(), value);
}

#[test]
fn yaml_is_read_the_same_by_yaml_1_1_readers() {
    let cfg = resolved("reader: {file_shuffle: 'off', sample_shuffle: seed}\nprofiling: {iostat_devices: ['on', sda]}");
    let text = cfg.to_yaml(false);
    assert!(text.contains("file_shuffle: \"off\""), "{text}");
    assert!(text.contains("- \"on\""), "{text}");
    let (again, _) = resolve("y", parse_yaml("y", &text).unwrap(), true).unwrap();
    assert_eq!(again, cfg);
    let tiny = resolved("train: {computation_time: 5.0e-324}\nmetric: {au: 1.0e-7}");
    let text = tiny.to_yaml(false);
    assert!(text.contains("computation_time: 5.0e-324") && text.contains("au: 1.0e-7"), "{text}");
    assert_eq!(resolve("y", parse_yaml("y", &text).unwrap(), true).unwrap().0, tiny);
    // What PyYAML makes of an unquoted `off`.
    assert_eq!(resolved("reader: {sample_shuffle: false}").reader.sample_shuffle, dl_driver_core::config::Shuffle::Off);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn resolved_config_round_trips_through_yaml(fields in proptest::collection::vec(field(), 0..12)) {
        let mut raw = Value::Mapping(serde_yaml::Mapping::new());
        set(&mut raw, "framework", Value::from("pytorch"));
        set(&mut raw, "reader.data_loader", Value::from("pytorch"));
        set(&mut raw, "dataset.format", Value::from("npz"));
        for (path, value) in fields {
            set(&mut raw, path, value);
        }
        let (config, _) = resolve("p.yaml", raw, true).unwrap();
        let text = config.to_yaml(false);
        let (again, warnings) = resolve("p.yaml", parse_yaml("p.yaml", &text).unwrap(), true).unwrap();
        prop_assert!(warnings.is_empty());
        prop_assert_eq!(&again, &config);
        let json = serde_json::to_string(&config).unwrap();
        let from_json: Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(resolve("p.json", from_json, true).unwrap().0, config);
    }
}
