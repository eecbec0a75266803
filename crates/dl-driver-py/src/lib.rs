//! `dl_driver._core`: thin Python bindings of dl-driver-core. Configs cross the boundary as JSON text.

// pyo3 hands functions owned arguments extracted from Python objects.
#![allow(clippy::needless_pass_by_value)]

mod comm;
mod engine;
mod error;
mod runtime;
mod state;
mod storage;

use dl_driver_core::config::{self, LoadOptions, Override, Source};
use dl_driver_core::plan;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(dl_driver, DlDriverError, PyException, "Base class of every dl-driver error.");
pyo3::create_exception!(dl_driver, ConfigError, DlDriverError, "A workload config is malformed or inconsistent.");
pyo3::create_exception!(
    dl_driver,
    StorageError,
    DlDriverError,
    "A storage operation failed (the message names the URI)."
);
pyo3::create_exception!(dl_driver, FormatError, DlDriverError, "A dataset file could not be encoded or decoded.");
pyo3::create_exception!(
    dl_driver,
    CheckpointError,
    DlDriverError,
    "A checkpoint is incomplete, corrupt or cannot be written."
);

use crate::error::{Error, Result};

fn json_error(what: &str, e: &serde_json::Error) -> Error {
    Error::config(format!("{what}: {e}"))
}

/// What `load_config` returns to Python.
#[pyclass(frozen, get_all, module = "dl_driver._core")]
struct LoadResult {
    /// The resolved config as JSON text.
    config_json: String,
    warnings: Vec<String>,
    source_name: String,
    overrides: Vec<String>,
}

/// Loads and validates a workload.
///
/// `kind` is `name` (workload=NAME), `file` (a YAML path) or `json` (a config tree as JSON text).
/// `overrides` are DLIO command-line overrides; `typed_overrides_json` is a JSON list of `[path, value]` pairs.
#[pyfunction]
#[pyo3(signature = (source, kind, overrides, typed_overrides_json, config_dir, strict))]
fn load_config(
    py: Python<'_>,
    source: &str,
    kind: &str,
    overrides: Vec<String>,
    typed_overrides_json: &str,
    config_dir: Option<String>,
    strict: bool,
) -> Result<LoadResult> {
    let source = match kind {
        "name" => Source::Name(source.to_string()),
        "file" => Source::File(source.into()),
        "json" => {
            let value: serde_yaml::Value =
                serde_json::from_str(source).map_err(|e| json_error("the config dict is not valid", &e))?;
            Source::Tree { name: "config dict".into(), value }
        }
        other => return Err(DlDriverError::new_err(format!("unknown source kind '{other}'")).into()),
    };
    let typed: Vec<(String, serde_yaml::Value)> =
        serde_json::from_str(typed_overrides_json).map_err(|e| json_error("overrides are not valid", &e))?;
    let options = LoadOptions { config_dir: config_dir.map(Into::into), strict };
    let loaded = py.detach(|| {
        let mut parsed: Vec<Override> = overrides.iter().map(|o| Override::parse(o)).collect::<Result<_, _>>()?;
        for (path, value) in typed {
            parsed.push(Override::force(&path, value)?);
        }
        config::load_with(&source, &parsed, &options)
    })?;
    Ok(LoadResult {
        config_json: serde_json::to_string(&loaded.config).expect("configs serialize"),
        warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
        source_name: loaded.source_name,
        overrides: loaded.overrides,
    })
}

fn parse_config(config_json: &str) -> Result<config::Config> {
    let value: serde_yaml::Value = serde_json::from_str(config_json).map_err(|e| json_error("config", &e))?;
    Ok(config::resolve("config", value, true)?.0)
}

/// The derived plan of a resolved config for `world_size` processes, as JSON text; with `run`, also checked for a
/// run (every phase that runs has a step).
#[pyfunction]
#[pyo3(signature = (config_json, source_name, world_size, run = false))]
fn plan_json(config_json: &str, source_name: &str, world_size: u64, run: bool) -> Result<String> {
    let cfg = parse_config(config_json)?;
    let p = plan::plan(&cfg, source_name, world_size)?;
    if run {
        p.check_steps(source_name)?;
    }
    Ok(serde_json::to_string(&p).expect("plans serialize"))
}

/// The canonical YAML of a resolved config; credentials are shown as `***` when `redact`.
#[pyfunction]
#[pyo3(signature = (config_json, redact = true))]
fn config_yaml(config_json: &str, redact: bool) -> Result<String> {
    Ok(parse_config(config_json)?.to_yaml(redact))
}

/// The canonical JSON of a resolved config with credentials shown as `***`.
#[pyfunction]
fn redacted_config_json(config_json: &str) -> Result<String> {
    let cfg = parse_config(config_json)?;
    Ok(serde_json::to_string(&cfg.to_redacted_value()).expect("YAML values serialize as JSON"))
}

/// Any JSON text rendered as YAML.
#[pyfunction]
fn json_to_yaml(text: &str) -> Result<String> {
    let value: serde_yaml::Value = serde_json::from_str(text).map_err(|e| json_error("JSON", &e))?;
    Ok(serde_yaml::to_string(&value).expect("YAML values serialize"))
}

/// YAML text (`source` names it in errors) as JSON text: what the run folders' Hydra files hold, for Python
/// readers without a YAML library.
#[pyfunction]
fn yaml_to_json(text: &str, source: &str) -> Result<String> {
    let value = config::parse_yaml(source, text)?;
    serde_json::to_string(&value).map_err(|e| DlDriverError::new_err(format!("{source}: {e}")).into())
}

/// Generates this rank's share of a config's dataset; returns what was done.
#[pyfunction]
#[pyo3(signature = (config_json, rank = 0, world_size = 1, skip_existing = false, threads = None, progress = false))]
fn generate(
    py: Python<'_>,
    config_json: &str,
    rank: u64,
    world_size: u64,
    skip_existing: bool,
    threads: Option<usize>,
    progress: bool,
) -> Result<std::collections::HashMap<&'static str, f64>> {
    use dl_driver_core::generate::{self, GenerateOptions};
    engine::check_rank(rank, world_size)?;
    let config = parse_config(config_json)?;
    let defaults = GenerateOptions::default();
    let options =
        GenerateOptions { rank, world_size, skip_existing, threads: threads.unwrap_or(defaults.threads), progress };
    let report = runtime::run(py, async move { generate::generate(&config, &options).await })??;
    Ok(std::collections::HashMap::from([
        ("files_written", report.files_written as f64),
        ("files_skipped", report.files_skipped as f64),
        ("bytes_written", report.bytes_written as f64),
        ("seconds", report.seconds),
    ]))
}

/// Whether an option key names a credential (its value is never shown).
#[pyfunction]
fn is_secret_key(key: &str) -> bool {
    config::is_secret_key(key)
}

/// Names of the workloads built into this package.
#[pyfunction]
fn builtin_workloads() -> Vec<&'static str> {
    config::builtin_workload_names()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DlDriverError", py.get_type::<DlDriverError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add_function(wrap_pyfunction!(engine::checkpoint_list, m)?)?;
    m.add_function(wrap_pyfunction!(engine::checkpoint_verify, m)?)?;
    m.add_function(wrap_pyfunction!(engine::checkpoint_delete, m)?)?;
    m.add_function(wrap_pyfunction!(generate, m)?)?;
    m.add_function(wrap_pyfunction!(engine::run_benchmark, m)?)?;
    m.add_function(wrap_pyfunction!(engine::save_run_config, m)?)?;
    m.add_function(wrap_pyfunction!(state::checkpoint_write_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(state::checkpoint_read_manifest, m)?)?;
    m.add_class::<state::StateWriter>()?;
    m.add_class::<state::StateReader>()?;
    m.add_class::<comm::Comm>()?;
    m.add_class::<engine::Batches>()?;
    m.add_class::<engine::PyBatch>()?;
    m.add_class::<storage::Store>()?;
    m.add_class::<storage::ObjectInfo>()?;
    m.add_class::<storage::Buffer>()?;
    m.add("FREE_FORM_KEYS", config::FREE_FORM_KEYS.to_vec())?;
    m.add_class::<LoadResult>()?;
    m.add_function(wrap_pyfunction!(is_secret_key, m)?)?;
    m.add_function(wrap_pyfunction!(load_config, m)?)?;
    m.add_function(wrap_pyfunction!(plan_json, m)?)?;
    m.add_function(wrap_pyfunction!(config_yaml, m)?)?;
    m.add_function(wrap_pyfunction!(redacted_config_json, m)?)?;
    m.add_function(wrap_pyfunction!(json_to_yaml, m)?)?;
    m.add_function(wrap_pyfunction!(yaml_to_json, m)?)?;
    m.add_function(wrap_pyfunction!(builtin_workloads, m)?)?;
    Ok(())
}
