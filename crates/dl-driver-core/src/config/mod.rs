//! DLIO config model: load a workload (by name, file or tree), apply Hydra-style overrides, fold both key dialects
//! into one [`Config`] with DLIO's code defaults, warn about unknown keys, and validate.

mod dialect;
mod distribution;
mod emit;
mod error;
mod overrides;
mod schema;
mod validate;
mod workloads;

use std::path::PathBuf;

use serde_yaml::Value;

pub use distribution::Distribution;
pub use emit::to_yaml as emit_yaml;
pub use error::{ConfigError, UnknownKey};
pub use overrides::{Override, OverrideKind, Target};
pub use schema::*;
pub use validate::BUILT_IN_PLUGINS;
pub use workloads::{builtin_workload_names, workload_choice};

/// Where a workload comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `workload=NAME`: `--config-dir DIR/workload/NAME.yaml`, else a built-in workload.
    Name(String),
    /// `--config FILE`.
    File(PathBuf),
    /// An in-memory tree (a Python dict), named for messages.
    Tree { name: String, value: Value },
}

/// Knobs of [`load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub config_dir: Option<PathBuf>,
    /// Unknown keys are errors instead of warnings.
    pub strict: bool,
}

/// A loaded, validated workload with what was learned on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<UnknownKey>,
    /// The file or name the workload came from.
    pub source_name: String,
    /// The command-line overrides, as given (secrets redacted).
    pub overrides: Vec<String>,
}

/// Loads a workload, applies `overrides` (DLIO command-line syntax) in order, resolves and validates it.
pub fn load(source: &Source, overrides: &[String], options: &LoadOptions) -> Result<Loaded, ConfigError> {
    let parsed: Vec<Override> = overrides.iter().map(|o| Override::parse(o)).collect::<Result<_, _>>()?;
    load_with(source, &parsed, options)
}

/// [`load`] with overrides already parsed (or built with [`Override::force`]).
pub fn load_with(source: &Source, parsed: &[Override], options: &LoadOptions) -> Result<Loaded, ConfigError> {
    let (source_name, mut raw) = match source {
        Source::Name(name) => workloads::find(name, options.config_dir.as_deref())?,
        Source::File(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io { path: name.clone(), source: e })?;
            let value = parse_yaml(&name, &text)?;
            (name, value)
        }
        Source::Tree { name, value } => (name.clone(), value.clone()),
    };
    if raw.is_null() {
        raw = Value::Mapping(serde_yaml::Mapping::new());
    }
    if !raw.is_mapping() {
        return Err(ConfigError::invalid(
            &source_name,
            "(top level)",
            format!("expected a mapping of sections (model, dataset, reader, ...), got {}", error::show(&raw)),
        ));
    }
    // The workload is renamed to HEAD names first (a key given under both names with two values is its error), and
    // each override sets the HEAD name of its key: the command line replaces the workload's value in either dialect.
    if let Some(top) = raw.as_mapping_mut() {
        dialect::rename(&source_name, top)?;
    }
    let mut set: Vec<(String, &Override)> = Vec::new();
    let mut hydra_run_dir = None;
    for o in parsed {
        match &o.target {
            Target::Workload(path) => {
                let head = dialect::head_path(&path.join("."));
                let conflict = set.iter().find(|(p, e)| *p == head && e.target != o.target && e.value != o.value);
                if let Some((_, earlier)) = conflict {
                    return Err(ConfigError::Override {
                        text: o.redacted_text(),
                        problem: format!(
                            "sets workload.{head}, which {} sets to another value; give one of them",
                            earlier.redacted_text()
                        ),
                    });
                }
                set.push((head.clone(), o));
                let mut renamed = o.clone();
                renamed.target = Target::Workload(head.split('.').map(str::to_string).collect());
                renamed.apply(&mut raw)?;
            }
            Target::Hydra(path) if path == &["run", "dir"] => {
                hydra_run_dir = Some(match &o.value {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                });
            }
            Target::Hydra(_) => {}
        }
    }
    let output_folder_given = raw.get("output").and_then(|o| o.get("folder")).is_some_and(|f| !f.is_null());
    let (mut config, warnings) = resolve(&source_name, raw, options.strict)?;
    if let (false, Some(dir)) = (output_folder_given, hydra_run_dir) {
        config.output.folder = dir;
    }
    Ok(Loaded { config, warnings, source_name, overrides: parsed.iter().map(Override::redacted_text).collect() })
}

/// Parses YAML text, reporting syntax errors with line and column.
pub fn parse_yaml(source_name: &str, text: &str) -> Result<Value, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        ConfigError::Syntax { source_name: source_name.to_string(), line, column, message: e.to_string() }
    })
}

/// Resolves a raw workload tree (either dialect) into a validated [`Config`] plus unknown-key warnings.
pub fn resolve(source_name: &str, mut raw: Value, strict: bool) -> Result<(Config, Vec<UnknownKey>), ConfigError> {
    dialect::normalize(source_name, &mut raw)?;
    let known = Config::default().to_value();
    let mut warnings = Vec::new();
    remove_unknown(&mut raw, &known, "", &mut warnings);
    if strict && !warnings.is_empty() {
        return Err(ConfigError::Strict { source_name: source_name.to_string(), warnings });
    }
    let mut config: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::invalid(source_name, &path, friendly_serde_message(&e.into_inner().to_string()))
    })?;
    if config.plugins.iter().any(|p| p == "checkpoint") {
        config.workflow.checkpoint = true;
    }
    validate::validate(source_name, &config)?;
    Ok((config, warnings))
}

/// Removes keys that `known` (the default config's tree) lacks, recording each with a suggestion.
fn remove_unknown(raw: &mut Value, known: &Value, prefix: &str, warnings: &mut Vec<UnknownKey>) {
    let Some(map) = raw.as_mapping_mut() else { return };
    let mut unknown = Vec::new();
    for (key, value) in map.iter_mut() {
        let name = match key {
            Value::String(s) => s.clone(),
            other => error::show(other),
        };
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match known.get(name.as_str()) {
            None => unknown.push((key.clone(), path)),
            Some(k)
                if k.is_mapping()
                    && !FREE_FORM_KEYS.contains(&path.as_str())
                    && !TIME_KEYS.contains(&path.as_str()) =>
            {
                remove_unknown(value, k, &path, warnings);
            }
            Some(_) => {}
        }
    }
    for (key, path) in unknown {
        map.remove(&key);
        let suggestion = suggest(&path);
        warnings.push(UnknownKey { path, suggestion });
    }
}

/// Every key path of the config, sections included (`reader`, `reader.read_threads`, ...).
pub fn known_paths() -> Vec<String> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(map) = value.as_mapping() {
            for (k, v) in map {
                let name = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
                out.push(path.clone());
                if !FREE_FORM_KEYS.contains(&path.as_str()) {
                    walk(v, &path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&Config::default().to_value(), "", &mut out);
    out
}

/// The closest known key to an unknown `path`: the same key name in another section, else the nearest spelling.
fn suggest(path: &str) -> Option<String> {
    let known = known_paths();
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let depth = path.matches('.').count();
    if let Some(same_leaf) = known.iter().find(|k| k.rsplit('.').next() == Some(leaf) && k.as_str() != path) {
        return Some(same_leaf.clone());
    }
    known
        .iter()
        .filter(|k| k.matches('.').count() == depth)
        .map(|k| (levenshtein(k, path), k))
        .filter(|(d, _)| *d <= 2.max(leaf.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Rewrites serde's Rust type names into what a YAML author expects.
fn friendly_serde_message(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, plain) in [
        ("expected u64", "expected an integer >= 0"),
        ("expected u32", "expected an integer >= 0"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list"),
    ] {
        m = m.replace(rust, plain);
    }
    m.replace("invalid type: ", "got ").replace("invalid value: ", "got ").replace("unknown variant", "unknown value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Source {
        Source::Tree { name: "t.yaml".into(), value: serde_yaml::from_str(yaml).unwrap() }
    }

    fn load_err(yaml: &str) -> String {
        load(&tree(yaml), &[], &LoadOptions::default()).unwrap_err().to_string()
    }

    #[test]
    fn empty_workload_gets_dlio_defaults() {
        let cfg = load(&tree("{}"), &[], &LoadOptions::default()).unwrap().config;
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.dataset.format, Format::Tfrecord);
        assert_eq!(cfg.reader.prefetch_size, 2);
        assert_eq!(cfg.train.seed, 123);
        assert_eq!(cfg.output.folder, "output");
    }

    #[test]
    fn unknown_keys_warn_with_suggestions() {
        let loaded =
            load(&tree("reader: {read_thread: 4}\ntrain: {read_threads: 2}\nreadr: {}"), &[], &LoadOptions::default())
                .unwrap();
        let shown: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"unknown key reader.read_thread (did you mean reader.read_threads?)".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"unknown key train.read_threads (did you mean reader.read_threads?)".to_string()),
            "{shown:?}"
        );
        assert!(shown.contains(&"unknown key readr (did you mean reader?)".to_string()), "{shown:?}");
        let strict = LoadOptions { strict: true, ..LoadOptions::default() };
        let e = load(&tree("reader: {read_thread: 4}"), &[], &strict).unwrap_err().to_string();
        assert!(e.contains("t.yaml") && e.contains("reader.read_thread") && e.contains("--strict"), "{e}");
    }

    #[test]
    fn type_errors_name_file_path_and_value() {
        let e = load_err("dataset: {num_files_train: many}");
        assert!(
            e.contains("t.yaml: dataset.num_files_train") && e.contains("\"many\"") && e.contains("integer"),
            "{e}"
        );
        let e = load_err("reader: {batch_size: -2}");
        assert!(e.contains("reader.batch_size") && e.contains("-2"), "{e}");
        let e = load_err("dataset: {format: parquet}");
        assert!(e.contains("dataset.format") && e.contains("parquet") && e.contains("npz"), "{e}");
    }

    #[test]
    fn yaml_syntax_errors_have_line_and_column() {
        let e = parse_yaml("w.yaml", "dataset:\n  num_files_train: [1, 2\n").unwrap_err().to_string();
        assert!(e.starts_with("w.yaml:") && e.contains("invalid YAML"), "{e}");
        let ConfigError::Syntax { line, .. } = parse_yaml("w.yaml", "a: 1\nb: : 2\n").unwrap_err() else { panic!() };
        assert_eq!(line, 2);
    }

    #[test]
    fn hydra_run_dir_sets_the_output_folder_unless_given() {
        let o = vec!["++hydra.run.dir=/tmp/run1".to_string(), "++hydra.output_subdir=x".to_string()];
        let cfg = load(&tree("{}"), &o, &LoadOptions::default()).unwrap().config;
        assert_eq!(cfg.output.folder, "/tmp/run1");
        let cfg = load(&tree("output: {folder: mine}"), &o, &LoadOptions::default()).unwrap().config;
        assert_eq!(cfg.output.folder, "mine");
    }

    fn with_overrides(yaml: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let o: Vec<String> = overrides.iter().map(ToString::to_string).collect();
        load(&tree(yaml), &o, &LoadOptions::default()).map(|l| l.config)
    }

    #[test]
    fn a_command_line_override_replaces_the_workloads_value_in_either_dialect() {
        let cases = [
            ("dataset: {record_length_bytes: 146600628}", "++workload.dataset.record_length=8388608"),
            ("dataset: {record_length: 146600628}", "++workload.dataset.record_length_bytes=8388608"),
            ("dataset: {record_length: 146600628}", "workload.dataset.record_length_bytes=8388608"),
            ("dataset: {record_length_bytes: 146600628}", "workload.dataset.record_length=8388608"),
        ];
        for (yaml, o) in cases {
            let cfg = with_overrides(yaml, &[o]).unwrap_or_else(|e| panic!("{yaml} + {o}: {e}"));
            assert_eq!(cfg.dataset.record_length_bytes, 8_388_608.0, "{yaml} + {o}");
        }
        let cfg = with_overrides("model: {model_size_bytes: 10}", &["++workload.checkpoint.model_size=20"]).unwrap();
        assert_eq!(cfg.model.model_size_bytes, 20);
        let cfg =
            with_overrides("checkpoint: {tensor_parallelism: 2}", &["++workload.model.parallelism.tensor=1"]).unwrap();
        assert_eq!(cfg.model.parallelism.tensor, 1);
        let cfg = with_overrides("data_reader: {batch_size: 4}", &["++workload.reader.batch_size=8"]).unwrap();
        assert_eq!(cfg.reader.batch_size, 8);
        let cfg = with_overrides("reader: {batch_size: 4}", &["workload.data_reader.batch_size=2"]).unwrap();
        assert_eq!(cfg.reader.batch_size, 2);
        let cfg =
            with_overrides("metric: {exclude_start_steps: 3}", &["++workload.output.metric.exclude_start_steps=0"]);
        assert_eq!(cfg.unwrap().output.metric.exclude_start_steps, 0);
    }

    #[test]
    fn two_values_for_one_key_in_one_source_stay_errors() {
        let e = with_overrides("dataset: {record_length: 10, record_length_bytes: 11}", &["++workload.train.epochs=1"]);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("t.yaml") && e.contains("dataset.record_length") && e.contains("give one"), "{e}");
        let both = ["++workload.dataset.record_length=10", "++workload.dataset.record_length_bytes=11"];
        let e = with_overrides("{}", &both).unwrap_err().to_string();
        assert!(
            e.contains("++workload.dataset.record_length_bytes=11")
                && e.contains("++workload.dataset.record_length=10")
                && e.contains("give one of them"),
            "{e}"
        );
        let same = ["++workload.dataset.record_length=10", "++workload.dataset.record_length_bytes=10"];
        assert_eq!(with_overrides("{}", &same).unwrap().dataset.record_length_bytes, 10.0);
        let twice = ["++workload.train.epochs=2", "++workload.train.epochs=3"];
        assert_eq!(with_overrides("{}", &twice).unwrap().train.epochs, 3, "one spelling twice: the last wins");
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }
}
