//! Workload lookup for `workload=NAME`: `--config-dir DIR/workload/NAME.yaml` first, then the built-in workloads
//! compiled from `configs/workload/`.

use std::path::Path;

use serde_yaml::Value;

use super::error::ConfigError;

include!(concat!(env!("OUT_DIR"), "/workloads.rs"));

/// Names of the built-in workloads.
pub fn builtin_workload_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(name, _)| *name).collect()
}

/// The `workload=NAME` choice behind a source name that [`find`] gave (a built-in workload, or `DIR/workload/NAME.yaml`
/// from `--config-dir`); `None` for a file or tree given directly.
pub fn workload_choice(source_name: &str) -> Option<String> {
    if let Some(name) = source_name.strip_prefix("workload ").and_then(|n| n.strip_suffix(" (built-in)")) {
        return Some(name.to_string());
    }
    let path = Path::new(source_name);
    let in_workload_dir = path.parent().and_then(Path::file_name).is_some_and(|d| d == "workload");
    let yaml = path.extension().is_some_and(|e| e == "yaml");
    (in_workload_dir && yaml).then(|| path.file_stem().map(|s| s.to_string_lossy().into_owned())).flatten()
}

/// Finds workload `name` and parses it; returns the source name used in messages and the raw tree.
pub fn find(name: &str, config_dir: Option<&Path>) -> Result<(String, Value), ConfigError> {
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." {
        return Err(ConfigError::UnknownWorkload {
            name: name.to_string(),
            searched: "nowhere: a workload name has no slashes (use --config FILE for a path)".into(),
            builtin: builtin_workload_names().join(", "),
        });
    }
    let mut searched = Vec::new();
    if let Some(dir) = config_dir {
        if !dir.is_dir() {
            return Err(ConfigError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "--config-dir is not a directory"),
            });
        }
        let path = dir.join("workload").join(format!("{name}.yaml"));
        if path.is_file() {
            let source = path.display().to_string();
            let text =
                std::fs::read_to_string(&path).map_err(|e| ConfigError::Io { path: source.clone(), source: e })?;
            let value = super::parse_yaml(&source, &text)?;
            return Ok((source, value));
        }
        searched.push(path.display().to_string());
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        let source = format!("workload {name} (built-in)");
        return Ok((source.clone(), super::parse_yaml(&source, text)?));
    }
    searched.push("the built-in workloads".into());
    Err(ConfigError::UnknownWorkload {
        name: name.to_string(),
        searched: searched.join(", "),
        builtin: builtin_workload_names().join(", "),
    })
}
