//! Errors and warnings of the config layer: each names the source, the key path, the value and what was expected.

use std::fmt;

/// Why a workload could not be loaded or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML text does not parse.
    #[error("{source_name}:{line}:{column}: invalid YAML: {message}")]
    Syntax { source_name: String, line: usize, column: usize, message: String },
    /// A key holds a value of the wrong type or out of range, or keys contradict each other.
    #[error("{source_name}: {path}: {problem}")]
    Invalid { source_name: String, path: String, problem: String },
    /// Unknown keys under `--strict`.
    #[error("{source_name}: unknown keys (rejected by --strict): {}", .warnings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Strict { source_name: String, warnings: Vec<UnknownKey> },
    /// A command-line override is malformed or cannot be applied.
    #[error("override '{text}': {problem}")]
    Override { text: String, problem: String },
    /// `workload=NAME` names no known workload.
    #[error("workload '{name}' not found: looked in {searched}; built-in workloads: {builtin}")]
    UnknownWorkload { name: String, searched: String, builtin: String },
    /// A config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`] for `path` in `source_name`.
    pub fn invalid(source_name: &str, path: &str, problem: impl Into<String>) -> Self {
        Self::Invalid { source_name: source_name.to_string(), path: path.to_string(), problem: problem.into() }
    }
}

/// A key the config model does not know, with the closest known key when one is near.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub path: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown key {}", self.path)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean {s}?)")?;
        }
        Ok(())
    }
}

/// Renders a YAML value compactly for error messages (`'abc'`, `-3`, `[1, 2]`).
pub fn show(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => format!("'{s}'"),
        serde_yaml::Value::Tagged(t) => show(&t.value),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}
