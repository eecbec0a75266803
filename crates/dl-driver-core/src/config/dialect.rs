//! Folds DLIO 2.0.0 key names and `*_stdev` siblings into the HEAD dialect, so both resolve to one config.

use serde_yaml::{Mapping, Value};

use super::distribution::Distribution;
use super::error::{show, ConfigError};
use super::schema::TIME_KEYS;

/// 2.0.0 key -> HEAD key, both as (section, key) paths.
const RENAMES: &[(&str, &str)] = &[
    ("dataset.record_length", "dataset.record_length_bytes"),
    ("dataset.record_length_stdev", "dataset.record_length_bytes_stdev"),
    ("dataset.record_length_resize", "dataset.record_length_bytes_resize"),
    ("model.model_size", "model.model_size_bytes"),
    ("checkpoint.model_size", "model.model_size_bytes"),
    ("checkpoint.optimization_groups", "model.optimization_groups"),
    ("checkpoint.num_layers", "model.num_layers"),
    ("checkpoint.layer_parameters", "model.layer_parameters"),
    ("checkpoint.tensor_parallelism", "model.parallelism.tensor"),
    ("checkpoint.pipeline_parallelism", "model.parallelism.pipeline"),
    ("metric.exclude_start_steps", "output.metric.exclude_start_steps"),
    ("metric.exclude_end_steps", "output.metric.exclude_end_steps"),
];

/// The HEAD name of a key path written in either dialect (`data_reader.x` is `reader.x`; renamed keys map to their
/// HEAD name); other paths are returned as they are.
pub fn head_path(path: &str) -> String {
    let path = match path.strip_prefix("data_reader.") {
        Some(rest) => format!("reader.{rest}"),
        None if path == "data_reader" => "reader".to_string(),
        None => path.to_string(),
    };
    RENAMES.iter().find(|(old, _)| *old == path).map_or(path, |(_, new)| (*new).to_string())
}

/// Rewrites `root` in place into the HEAD dialect.
pub fn normalize(source_name: &str, root: &mut Value) -> Result<(), ConfigError> {
    let invalid = |path: &str, problem: String| ConfigError::invalid(source_name, path, problem);
    let Some(top) = root.as_mapping_mut() else {
        return Err(invalid("(top level)", format!("expected a mapping of sections, got {}", show(root))));
    };
    rename(source_name, top)?;
    // DLIO wraps a single device name in a list.
    if let Some(device @ Value::String(_)) = get(top, "profiling.iostat_devices").cloned() {
        put(top, "profiling.iostat_devices", Value::Sequence(vec![device]));
    }
    // YAML 1.1 readers (PyYAML, OmegaConf) turn a bare `off` into false: accept it as the shuffle mode it was.
    for key in ["reader.file_shuffle", "reader.sample_shuffle"] {
        if get(top, key) == Some(&Value::Bool(false)) {
            put(top, key, Value::String("off".into()));
        }
    }
    for key in TIME_KEYS {
        let stdev_key = format!("{key}_stdev");
        let stdev = match take(top, &stdev_key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| invalid(&stdev_key, format!("expected a number of seconds, got {}", show(&v))))?,
            ),
        };
        let Some(value) = get(top, key).cloned() else {
            if stdev.is_some_and(|s| s != 0.0) {
                return Err(invalid(&stdev_key, format!("{stdev_key} is given without {key}")));
            }
            continue;
        };
        let dist = Distribution::from_value(&value, stdev).map_err(|p| invalid(key, p))?;
        put(top, key, serde_yaml::to_value(dist).expect("distributions serialize"));
    }
    Ok(())
}

/// Renames DLIO 2.0.0 sections and keys to their HEAD names in place; the same key given under both names with two
/// values is an error (one source gives one value).
pub fn rename(source_name: &str, top: &mut Mapping) -> Result<(), ConfigError> {
    let invalid = |path: &str, problem: String| ConfigError::invalid(source_name, path, problem);
    if let Some(reader) = top.remove("data_reader") {
        if top.contains_key("reader") {
            return Err(invalid(
                "data_reader",
                "both data_reader (DLIO 2.0.0) and reader (HEAD) are given; keep one of them".into(),
            ));
        }
        top.insert("reader".into(), reader);
    }
    if let Some(Value::String(name)) = top.get("model").cloned() {
        let mut model = Mapping::new();
        model.insert("name".into(), Value::String(name));
        top.insert("model".into(), Value::Mapping(model));
    }
    for (section, value) in top.iter() {
        let name = section.as_str().unwrap_or_default();
        if !value.is_mapping() && !value.is_null() && !matches!(name, "framework") && is_section(name) {
            return Err(invalid(name, format!("expected a section (a mapping of keys), got {}", show(value))));
        }
    }
    for (old, new) in RENAMES {
        let Some(value) = take(top, old) else { continue };
        match get(top, new) {
            Some(existing) if *existing != value => {
                return Err(invalid(
                    old,
                    format!(
                        "{old} (DLIO 2.0.0 name) is {} but {new} is {}; give one of them",
                        show(&value),
                        show(existing)
                    ),
                ))
            }
            _ => put(top, new, value),
        }
    }
    Ok(())
}

fn is_section(name: &str) -> bool {
    matches!(
        name,
        "model"
            | "workflow"
            | "dataset"
            | "reader"
            | "train"
            | "evaluation"
            | "checkpoint"
            | "output"
            | "profiling"
            | "storage"
            | "metric"
    )
}

fn get<'a>(top: &'a Mapping, path: &str) -> Option<&'a Value> {
    let mut node = top;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = node.get(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        node = value.as_mapping()?;
    }
    None
}

fn take(top: &mut Mapping, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let map = match parent {
        Some(p) => p.split('.').try_fold(&mut *top, |m, part| m.get_mut(part)?.as_mapping_mut())?,
        None => top,
    };
    map.remove(last)
}

fn put(top: &mut Mapping, path: &str, value: Value) {
    let mut node = top;
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().expect("paths are never empty");
    for part in parents {
        if !node.get(*part).is_some_and(Value::is_mapping) {
            node.insert((*part).into(), Value::Mapping(Mapping::new()));
        }
        node = node.get_mut(*part).and_then(Value::as_mapping_mut).expect("inserted above");
    }
    node.insert((*last).into(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(yaml: &str) -> Result<Value, ConfigError> {
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        normalize("t.yaml", &mut v).map(|()| v)
    }

    #[test]
    fn maps_old_names_to_head_names() {
        let v = normalized(
            "model: unet3d\ndata_reader: {batch_size: 4}\ndataset: {record_length: 10, record_length_stdev: 2}\n\
             checkpoint: {model_size: 100, tensor_parallelism: 2}\ntrain: {computation_time: 0.5, computation_time_stdev: 0.1}",
        )
        .unwrap();
        let expected: Value = serde_yaml::from_str(
            "model: {name: unet3d, model_size_bytes: 100, parallelism: {tensor: 2}}\nreader: {batch_size: 4}\n\
             dataset: {record_length_bytes: 10, record_length_bytes_stdev: 2}\ncheckpoint: {}\n\
             train: {computation_time: {type: normal, mean: 0.5, stdev: 0.1}}",
        )
        .unwrap();
        assert_eq!(v, expected);
    }

    #[test]
    fn conflicting_dialects_are_errors() {
        let e = normalized("dataset: {record_length: 10, record_length_bytes: 11}").unwrap_err().to_string();
        assert!(e.contains("dataset.record_length") && e.contains("10") && e.contains("11"), "{e}");
        let e = normalized("reader: {}\ndata_reader: {}").unwrap_err().to_string();
        assert!(e.contains("data_reader"), "{e}");
        let e = normalized("train: {computation_time_stdev: 0.1}").unwrap_err().to_string();
        assert!(e.contains("train.computation_time_stdev"), "{e}");
        let e = normalized("train: 5").unwrap_err().to_string();
        assert!(e.contains("train: expected a section"), "{e}");
    }
}
