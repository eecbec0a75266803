//! DLIO's run files in `output.folder` (dlio.md §7): `summary.json` (rank 0) with DLIO's field names and types,
//! `{rank}_per_epoch_stats.json`, `{rank}_output.json`, the log file (`dlio.log`) with DLIO's console lines,
//! Hydra's `.hydra/` (or `++hydra.output_subdir`) `config.yaml`, `hydra.yaml` and `overrides.yaml`, and dl-driver's own `dl_driver_report.json` (rank 0) with every
//! rank's access-order digests and per-stage latency percentiles.
//!
//! Differences from DLIO 2.0.0, on purpose: a value DLIO would write as the bare token NaN (a mean over no epochs)
//! is written as `null`, which JSON readers accept; per-epoch stats are written by every rank.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Local;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::comm::{CommError, Communicator};
use crate::config::Config;
use crate::metrics::{across_ranks, mean_stdev, LatencySummary, StageLatencies};
use crate::plan::Plan;
use crate::progress::Display;
pub use crate::records::timestamp;
use crate::records::{BlockRecord, CheckpointRecord, EpochRecord, RankRecord};

/// DLIO's console and log lines: rank 0 prints `[OUTPUT] {ts} message` to stdout and appends it to the log file.
#[derive(Debug)]
pub struct Console {
    log: Option<Mutex<fs::File>>,
    print: bool,
    /// The run's bars, cleared while a line prints.
    display: Display,
}

/// Why the run files or the cross-rank results could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("{0}")]
    Output(String),
}

fn output_error(path: &Path, e: &std::io::Error) -> ReportError {
    ReportError::Output(format!("output.folder: cannot write {}: {e}", path.display()))
}

impl Console {
    /// Creates the output folder; rank 0 starts a fresh log file there.
    pub fn open(config: &Config, rank: u64, print: bool) -> Result<Self, ReportError> {
        let folder = PathBuf::from(&config.output.folder);
        fs::create_dir_all(&folder).map_err(|e| output_error(&folder, &e))?;
        if rank != 0 {
            return Ok(Self { log: None, print: false, display: Display::default() });
        }
        let path = folder.join(&config.output.log_file);
        let file = fs::File::create(&path).map_err(|e| output_error(&path, &e))?;
        Ok(Self { log: Some(Mutex::new(file)), print, display: Display::default() })
    }

    /// Prints its lines around `display`'s bars.
    #[must_use]
    pub fn around(self, display: Display) -> Self {
        Self { display, ..self }
    }

    /// One `[OUTPUT]` line with a timestamp.
    pub fn out(&self, message: &str) {
        self.raw(&format!("[OUTPUT] {} {message}", timestamp(&Local::now())));
    }

    /// `[WARNING] {ts} message` on stderr (rank 0) and in the log file.
    pub fn warn(&self, message: &str) {
        let Some(log) = &self.log else { return };
        let text = format!("[WARNING] {} {message}", timestamp(&Local::now()));
        self.display.suspend(|| eprintln!("{text}"));
        let _ = writeln!(log.lock().expect("log lock"), "{text}");
    }

    /// Lines as given.
    pub fn raw(&self, text: &str) {
        let Some(log) = &self.log else { return };
        if self.print {
            self.display.suspend(|| println!("{text}"));
        }
        // The log is best effort: a full disk must not turn a finished measurement into a failure.
        let _ = writeln!(log.lock().expect("log lock"), "{text}");
    }
}

/// Writes Hydra's record of the run as DLIO's Hydra writes it, in `<hydra.run.dir>/<hydra.output_subdir>` (the run
/// dir defaults to `output.folder`, the subdir to `.hydra`; `++hydra.output_subdir=null` writes nothing):
/// `config.yaml` (the composed config, `workload:` then the resolved workload, secrets redacted), `hydra.yaml`
/// (Hydra's settings: run dir, output subdir, the overrides split into Hydra's and the task's, the workload choice)
/// and `overrides.yaml` (the task's overrides: `workload=NAME`, then `++workload.*` as given). `source_name` is the
/// workload's source, as [`crate::config::Loaded`] names it.
pub fn save_config(config: &Config, overrides: &[String], source_name: &str, rank: u64) -> Result<(), ReportError> {
    if rank != 0 {
        return Ok(());
    }
    let mut run_dir = None;
    let mut subdir = Some(".hydra".to_string());
    let (mut task, mut hydra) = (Vec::new(), Vec::new());
    if let Some(name) = crate::config::workload_choice(source_name) {
        task.push(format!("workload={name}"));
    }
    for text in overrides {
        let parsed = crate::config::Override::parse(text);
        let shown = parsed.as_ref().map_or_else(|_| text.clone(), crate::config::Override::redacted_text);
        match parsed.as_ref().map(|o| (&o.target, &o.value)) {
            Ok((crate::config::Target::Hydra(path), value)) => {
                match (path.join(".").as_str(), value) {
                    ("run.dir", serde_yaml::Value::String(dir)) => run_dir = Some(dir.clone()),
                    ("output_subdir", serde_yaml::Value::Null) => subdir = None,
                    ("output_subdir", serde_yaml::Value::String(dir)) => subdir = Some(dir.clone()),
                    _ => {}
                }
                hydra.push(shown);
            }
            _ => task.push(shown),
        }
    }
    let Some(subdir) = subdir else { return Ok(()) };
    let run_dir = run_dir.unwrap_or_else(|| config.output.folder.clone());
    let folder = Path::new(&run_dir).join(&subdir);
    fs::create_dir_all(&folder).map_err(|e| output_error(&folder, &e))?;
    let mut composed = serde_yaml::Mapping::new();
    composed.insert("workload".into(), config.to_redacted_value());
    let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    let settings = json!({"hydra": {
        "run": {"dir": run_dir},
        "output_subdir": subdir,
        "help": {"app_name": "dlio_benchmark"},
        "overrides": {"hydra": hydra, "task": task},
        "job": {"name": "dlio_benchmark", "config_name": "config"},
        "runtime": {"cwd": cwd, "output_dir": run_dir, "choices": {"workload": crate::config::workload_choice(source_name)}},
        "mode": "RUN",
    }});
    let settings = serde_yaml::to_value(settings).expect("JSON values are YAML values");
    let task = serde_yaml::Value::Sequence(task.into_iter().map(Into::into).collect());
    let files = [
        ("config.yaml", crate::config::emit_yaml(&composed.into())),
        ("hydra.yaml", crate::config::emit_yaml(&settings)),
        ("overrides.yaml", crate::config::emit_yaml(&task)),
    ];
    for (name, text) in files {
        let path = folder.join(name);
        fs::write(&path, text).map_err(|e| output_error(&path, &e))?;
    }
    Ok(())
}

/// The report of a run: DLIO's summary plus dl-driver's details.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `summary.json` (rank 0's view; other ranks hold their own values).
    pub summary: Value,
    /// `dl_driver_report.json`.
    pub details: Value,
    pub output_folder: String,
    pub interrupted: bool,
}

/// What one rank shares with the others at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RankShare {
    rank: u64,
    hostname: String,
    /// The communicator's node id (ranks of a node share it), when it has one.
    node: Option<u64>,
    memory_gib: f64,
    cpus: u64,
    train_au: Vec<f64>,
    train_throughput: Vec<f64>,
    eval_au: Vec<f64>,
    eval_throughput: Vec<f64>,
    digests: Vec<String>,
    eval_digests: Vec<String>,
    repeated_samples: Vec<u64>,
    /// Per epoch: the samples this rank's training steps consumed and the bytes they read.
    #[serde(default)]
    samples: Vec<u64>,
    #[serde(default)]
    bytes_read: Vec<u64>,
    latency: std::collections::BTreeMap<String, LatencySummary>,
    /// The per-stage histograms themselves (value ns, count), for the job's merged ones.
    histograms: std::collections::BTreeMap<String, Vec<(u64, u64)>>,
    saves: Checkpoints,
    loads: Checkpoints,
    interrupted: bool,
    /// Failed HTTP attempts by kind (retried by the object store's client, or the run's failure).
    #[serde(default)]
    request_errors: std::collections::BTreeMap<String, u64>,
}

fn checkpoints_of(record: &RankRecord, kind: &str) -> Checkpoints {
    record
        .epochs
        .iter()
        .flat_map(|e| &e.checkpoints)
        .filter(|(_, c)| c.kind == kind)
        .map(|(_, c)| (c.name.clone(), c.duration, c.own_duration, c.bytes))
        .collect()
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

fn checkpoint_details(c: &CheckpointRecord) -> Value {
    json!({
        "kind": c.kind,
        "name": c.name,
        "epoch": c.epoch,
        "step": c.step,
        "duration": c.duration,
        "bytes": c.bytes,
        "stored_bytes": c.stored_bytes,
        "files": c.files,
        "GiB_per_second": if c.duration > 0.0 { gib(c.bytes) / c.duration } else { 0.0 },
        "compression_ratio": if c.stored_bytes > 0 { c.bytes as f64 / c.stored_bytes as f64 } else { 1.0 },
    })
}

/// Gathers every rank's results and writes the run files.
pub fn finish(
    config: &Config,
    plan: &Plan,
    comm: &dyn Communicator,
    console: &Console,
    record: &RankRecord,
) -> Result<Report, ReportError> {
    let host = Host::probe();
    let share = RankShare {
        rank: record.rank,
        hostname: host.hostname.clone(),
        node: comm.node(),
        memory_gib: host.memory_gib,
        cpus: host.cpus,
        train_au: record.epochs.iter().map(|e| e.au).collect(),
        train_throughput: record.epochs.iter().map(|e| e.throughput).collect(),
        eval_au: record.epochs.iter().filter_map(|e| e.eval.as_ref().map(|b| b.au)).collect(),
        eval_throughput: record.epochs.iter().filter_map(|e| e.eval.as_ref().map(|b| b.throughput)).collect(),
        digests: record.epochs.iter().map(|e| e.digest.clone()).collect(),
        eval_digests: record.epochs.iter().filter_map(|e| e.eval_digest.clone()).collect(),
        repeated_samples: record.epochs.iter().map(|e| e.repeated_samples).collect(),
        samples: record
            .epochs
            .iter()
            .map(|e| e.blocks.iter().map(|b| b.steps.len() as u64).sum::<u64>() * plan.train.batch_size)
            .collect(),
        bytes_read: record.epochs.iter().map(|e| e.blocks.iter().map(|b| b.bytes_read).sum()).collect(),
        latency: record.latency.summaries().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        histograms: record.latency.buckets(),
        saves: checkpoints_of(record, "save"),
        loads: checkpoints_of(record, "load"),
        interrupted: record.interrupted,
        request_errors: record.request_errors.clone(),
    };
    let gathered = comm.all_gather(serde_json::to_string(&share).expect("shares serialize"))?;
    let ranks: Vec<RankShare> = gathered
        .iter()
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| CommError::failed("all_gather", format!("a rank sent an unreadable result: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let folder = PathBuf::from(&config.output.folder);
    let write = |name: String, value: &Value| {
        let path = folder.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        fs::write(&path, text + "\n").map_err(|e| output_error(&path, &e))
    };
    write(format!("{}_per_epoch_stats.json", record.rank), &per_epoch_stats(record))?;
    let nodes = Nodes::of(&ranks, config, comm.size());
    write(format!("{}_output.json", record.rank), &rank_output(config, record, &host, &nodes))?;
    let summary = summary(config, plan, comm, record, &ranks, &host, &nodes);
    let interrupted = ranks.iter().any(|r| r.interrupted);
    let mut job_latency = StageLatencies::default();
    for r in &ranks {
        job_latency.add_buckets(&r.histograms);
    }
    let mut request_errors = std::collections::BTreeMap::<String, u64>::new();
    for (kind, n) in ranks.iter().flat_map(|r| &r.request_errors) {
        *request_errors.entry(kind.clone()).or_default() += n;
    }
    let details = json!({
        "dl_driver_version": env!("CARGO_PKG_VERSION"),
        "interrupted": interrupted,
        "world_size": comm.size(),
        "data_location": plan.data_location,
        "format": plan.dataset.format,
        "metric_definitions": "dlio.md §6: kept steps exclude output.metric.exclude_start_steps/exclude_end_steps",
        "ranks": ranks,
        "rank": record.rank,
        "epochs": record.epochs.iter().map(epoch_details).collect::<Vec<_>>(),
        "checkpoints": record.epochs.iter().flat_map(|e| &e.checkpoints).map(|(_, c)| checkpoint_details(c)).collect::<Vec<_>>(),
        "latency": share.latency,
        "latency_all_ranks": job_latency.summaries(),
        "checkpoint_rule": checkpoint_rule(&ranks),
        "request_errors": request_errors,
        "compute": compute_details(config, &share.latency, record.step_thread_class),
        "page_cache": {
            "read_through_page_cache": page_cached(config),
            "data_per_host_GiB": nodes.data_per_host_gib,
            "host_memory_GiB": nodes.hosts.iter().map(|h| h.1).collect::<Vec<_>>(),
            "host_memory_override": memory_override().is_some(),
            "multiple_needed": PAGE_CACHE_MULTIPLE,
            "potential_caching": nodes.hosts.iter().any(|h| potential_caching(config, nodes.data_per_host_gib, h.1)),
            "drop_caches": record.drop_caches,
        },
    });
    if record.rank == 0 {
        write("summary.json".into(), &summary)?;
        write("dl_driver_report.json".into(), &details)?;
        console.raw(&metric_block(config, &summary));
        if interrupted {
            console.out("Interrupted: the run files hold what was measured until then");
        }
        console.out(&format!("Saved outputs in {}", folder.display()));
    }
    Ok(Report { summary, details, output_folder: config.output.folder.clone(), interrupted })
}

/// The configured compute beside the measured one (docs/training.md: AU counts the measured time, as DLIO does).
fn compute_details(
    config: &Config,
    latency: &std::collections::BTreeMap<String, LatencySummary>,
    step_thread_class: &str,
) -> Value {
    json!({
        "configured": {
            "train.computation_time": config.train.computation_time,
            "train.computation_time_mean_seconds": config.train.computation_time.mean(),
            "evaluation.eval_time": config.evaluation.eval_time,
            "evaluation.eval_time_mean_seconds": config.evaluation.eval_time.mean(),
        },
        "measured": latency.get("compute"),
        "overshoot": latency.get("compute_overshoot"),
        "au_uses": "measured",
        "step_thread_class": step_thread_class,
    })
}

fn block_details(b: &BlockRecord) -> Value {
    json!({"duration": b.duration, "steps": b.steps.len(), "au": b.au, "throughput": b.throughput, "bytes_read": b.bytes_read})
}

fn epoch_details(e: &EpochRecord) -> Value {
    json!({
        "epoch": e.epoch,
        "duration": e.duration,
        "au": e.au,
        "throughput": e.throughput,
        "digest": e.digest,
        "repeated_samples": e.repeated_samples,
        "blocks": e.blocks.iter().map(block_details).collect::<Vec<_>>(),
        "eval": e.eval.as_ref().map(block_details),
        "eval_digest": e.eval_digest,
    })
}

fn stamp_checkpoint(c: &CheckpointRecord) -> Value {
    let throughput = if c.duration > 0.0 { gib(c.bytes) / c.duration } else { 0.0 };
    json!({
        "start": timestamp(&c.start),
        "end": timestamp(&c.end),
        "duration": format!("{:.2}", c.duration),
        "throughput": throughput,
    })
}

fn stamp_block(b: &BlockRecord) -> Value {
    json!({"start": timestamp(&b.start), "end": timestamp(&b.end), "duration": format!("{:.2}", b.duration)})
}

fn per_epoch_stats(record: &RankRecord) -> Value {
    let mut out = Map::new();
    for e in &record.epochs {
        let mut epoch = Map::new();
        epoch.insert("start".into(), json!(timestamp(&e.start)));
        for (i, b) in e.blocks.iter().enumerate() {
            epoch.insert(format!("block{}", i + 1), stamp_block(b));
            for (_, c) in e.checkpoints.iter().filter(|(n, _)| *n == i + 1) {
                epoch.insert(format!("{}_ckpt{}", c.kind, i + 1), stamp_checkpoint(c));
            }
        }
        if e.blocks.is_empty() {
            for (n, c) in &e.checkpoints {
                epoch.insert(format!("{}_ckpt{n}", c.kind), stamp_checkpoint(c));
            }
        }
        epoch.insert("end".into(), json!(timestamp(&e.end)));
        epoch.insert("duration".into(), json!(format!("{:.2}", e.duration)));
        if let Some(eval) = &e.eval {
            epoch.insert("eval".into(), stamp_block(eval));
        }
        out.insert(e.epoch.to_string(), Value::Object(epoch));
    }
    Value::Object(out)
}

fn rank_output(config: &Config, record: &RankRecord, host: &Host, nodes: &Nodes) -> Value {
    let mut out = Map::new();
    out.insert("host_memory_GB".into(), json!(host.memory_gib));
    out.insert("host_cpu_count".into(), json!(host.cpus));
    out.insert("host_processor_name".into(), json!(host.processor));
    // The per-host data size (every rank on the node) against this host's memory.
    out.insert(
        "potential_caching".into(),
        json!(u8::from(potential_caching(config, nodes.data_per_host_gib, host.memory_gib))),
    );
    out.insert("host_cpuinfo".into(), json!(host.cpuinfo));
    out.insert("host_meminfo".into(), json!(host.meminfo));
    for e in &record.epochs {
        let named: Vec<(String, &BlockRecord)> = e
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("block{}", i + 1), b))
            .chain(e.eval.iter().map(|b| ("eval".to_string(), b)))
            .collect();
        let field =
            |f: &dyn Fn(&BlockRecord) -> Value| Value::Object(named.iter().map(|(n, b)| (n.clone(), f(b))).collect());
        let epoch = json!({
            "load": field(&|b| json!(b.steps.iter().map(|s| s.load).collect::<Vec<_>>())),
            "proc": field(&|b| json!(b.steps.iter().map(|s| s.proc).collect::<Vec<_>>())),
            "throughput": field(&|b| json!(b.throughput)),
            "au": field(&|b| json!(b.au)),
            "compute": field(&|b| json!(b.steps.iter().map(|s| s.compute).collect::<Vec<_>>())),
        });
        out.insert(e.epoch.to_string(), epoch);
    }
    out.insert("hostname".into(), json!(host.hostname));
    Value::Object(out)
}

/// The job's hosts as DLIO's statscounter sees them: ranks grouped by hostname (MPI's shared-memory split), in
/// order of their first rank.
struct Nodes {
    /// (hostname, memory GiB, logical CPUs, ranks on it)
    hosts: Vec<(String, f64, u64, u64)>,
    /// DLIO's `npernode`: ranks on a node (the largest node's count when they differ).
    ranks_per_node: u64,
    data_per_host_gib: f64,
}

impl Nodes {
    fn of(ranks: &[RankShare], config: &Config, world: u64) -> Self {
        // (node key, hostname, memory GiB, logical CPUs, ranks on it): the communicator's node id, else the hostname.
        let mut nodes: Vec<(String, String, f64, u64, u64)> = Vec::new();
        for r in ranks {
            let key = r.node.map_or_else(|| r.hostname.clone(), |n| format!("node {n}"));
            match nodes.iter_mut().find(|h| h.0 == key) {
                Some(h) => h.4 += 1,
                None => nodes.push((key, r.hostname.clone(), r.memory_gib, r.cpus, 1)),
            }
        }
        let hosts: Vec<(String, f64, u64, u64)> = nodes.into_iter().map(|n| (n.1, n.2, n.3, n.4)).collect();
        let ranks_per_node = hosts.iter().map(|h| h.3).max().unwrap_or(1);
        Self { data_per_host_gib: data_size_per_host_gib(config, world, ranks_per_node), hosts, ranks_per_node }
    }
}

/// DLIO: `(ranks_on_host * samples_per_file * num_files_train // world) * record_length / 2^30`.
fn data_size_per_host_gib(config: &Config, world: u64, ranks_on_host: u64) -> f64 {
    let d = &config.dataset;
    let samples = (ranks_on_host * d.num_samples_per_file * d.num_files_train) / world.max(1);
    samples as f64 * d.record_length_bytes / f64::from(1u32 << 30)
}

fn number(v: f64) -> Value {
    // NaN (no epochs) has no JSON number: null.
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn phase_metrics(
    metric: &mut Map<String, Value>,
    prefix: &str,
    au_per_epoch: &[f64],
    thr_per_epoch: &[f64],
    config: &Config,
) {
    let (au_mean, au_std) = mean_stdev(au_per_epoch);
    let (thr_mean, thr_std) = mean_stdev(thr_per_epoch);
    let mib = config.dataset.record_length_bytes / f64::from(1u32 << 20);
    let meets = if au_mean >= config.metric.au * 100.0 { "success" } else { "fail" };
    metric.insert(format!("{prefix}_au_percentage"), json!(au_per_epoch));
    metric.insert(format!("{prefix}_au_mean_percentage"), number(au_mean));
    metric.insert(format!("{prefix}_au_meet_expectation"), json!(meets));
    metric.insert(format!("{prefix}_au_stdev_percentage"), number(au_std));
    metric.insert(format!("{prefix}_throughput_samples_per_second"), json!(thr_per_epoch));
    metric.insert(format!("{prefix}_throughput_mean_samples_per_second"), number(thr_mean));
    metric.insert(format!("{prefix}_throughput_stdev_samples_per_second"), number(thr_std));
    metric.insert(format!("{prefix}_io_mean_MB_per_second"), number(thr_mean * mib));
    metric.insert(format!("{prefix}_io_stdev_MB_per_second"), number(thr_std * mib));
}

/// Per-epoch values reduced across ranks (AU mean, throughput sum), epochs every rank completed.
fn reduce(
    ranks: &[RankShare],
    au: fn(&RankShare) -> &Vec<f64>,
    thr: fn(&RankShare) -> &Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let epochs = ranks.iter().map(|r| au(r).len().min(thr(r).len())).min().unwrap_or(0);
    (0..epochs).map(|e| across_ranks(&ranks.iter().map(|r| (au(r)[e], thr(r)[e])).collect::<Vec<_>>())).unzip()
}

/// (name, DLIO's seconds, own seconds, tensor bytes) of a rank's checkpoints of one kind.
type Checkpoints = Vec<(String, f64, f64, u64)>;

/// A rank's saves or loads.
fn of_kind<'a>(r: &'a RankShare, kind: &str) -> &'a Checkpoints {
    if kind == "save" {
        &r.saves
    } else {
        &r.loads
    }
}

/// Per checkpoint (in order, those every rank has): the bytes of every rank's files, in GiB (DLIO's
/// `checkpoint_size_GB`), and the slowest rank's own duration (the MLPerf rule: a checkpoint is done when every
/// rank's files are).
fn across_ranks_checkpoints(ranks: &[RankShare], kind: &str) -> Vec<(f64, f64)> {
    let count = ranks.iter().map(|r| of_kind(r, kind).len()).min().unwrap_or(0);
    (0..count)
        .map(|i| {
            let size = ranks.iter().map(|r| of_kind(r, kind)[i].3).sum::<u64>();
            (gib(size), ranks.iter().map(|r| of_kind(r, kind)[i].2).fold(0.0, f64::max))
        })
        .collect()
}

/// MLPerf's checkpoint rule beside DLIO's fields (dl_driver_report.json): per checkpoint the slowest rank's duration
/// and the total size over it.
fn checkpoint_rule(ranks: &[RankShare]) -> Value {
    let kinds = ["save", "load"].map(|kind| {
        let per: Vec<Value> = across_ranks_checkpoints(ranks, kind)
            .into_iter()
            .map(|(size, slowest)| {
                json!({"size_GiB": size, "slowest_rank_seconds": slowest,
                       "GiB_per_second": if slowest > 0.0 { size / slowest } else { 0.0 }})
            })
            .collect();
        (kind, per)
    });
    json!({
        "definition": "MLPerf Storage: duration = the slowest rank's time to write (read) its files; throughput = \
                       every rank's bytes / that duration",
        "save": kinds[0].1,
        "load": kinds[1].1,
    })
}

/// DLIO's checkpoint fields (HEAD's statscounter, computed by rank 0): `checkpoint_size_GB` = every rank's bytes;
/// duration = rank 0's (its own files, through the barrier after every rank's with `checkpoint.rank_sync`);
/// GB/s = size / that duration.
fn checkpoint_metrics(metric: &mut Map<String, Value>, plan: &Plan, ranks: &[RankShare]) {
    let planned = plan.checkpoint.as_ref().map_or(0.0, |c| c.size_gib);
    // A rank launched by hand gathers only itself: the plan's size is every rank's then.
    let every_rank = ranks.len() as u64 == plan.world_size;
    let sizes_of = |kind: &str| -> Vec<f64> {
        let measured = across_ranks_checkpoints(ranks, kind).into_iter().map(|c| c.0);
        if every_rank {
            measured.collect()
        } else {
            measured.map(|_| planned).collect()
        }
    };
    let size = sizes_of("save").first().copied().unwrap_or(planned);
    for kind in ["save", "load"] {
        let sizes = sizes_of(kind);
        let durations: Vec<f64> =
            ranks.first().map(|r| of_kind(r, kind).iter().take(sizes.len()).map(|c| c.1).collect()).unwrap_or_default();
        let rates: Vec<f64> =
            durations.iter().zip(&sizes).map(|(d, size)| if *d > 0.0 { size / d } else { 0.0 }).collect();
        let (rate_mean, rate_std) = mean_stdev(&rates);
        let (dur_mean, dur_std) = mean_stdev(&durations);
        metric.insert(format!("{kind}_checkpoint_io_mean_GB_per_second"), number(rate_mean));
        metric.insert(format!("{kind}_checkpoint_io_stdev_GB_per_second"), number(rate_std));
        metric.insert(format!("{kind}_checkpoint_duration_mean_seconds"), number(dur_mean));
        metric.insert(format!("{kind}_checkpoint_duration_stdev_seconds"), number(dur_std));
    }
    metric.insert("checkpoint_size_GB".into(), json!(size));
}

fn summary(
    config: &Config,
    plan: &Plan,
    comm: &dyn Communicator,
    record: &RankRecord,
    ranks: &[RankShare],
    host: &Host,
    nodes: &Nodes,
) -> Value {
    let (hosts, data_per_host) = (&nodes.hosts, nodes.data_per_host_gib);
    let mut metric = Map::new();
    if config.workflow.train {
        let (au, thr) = reduce(ranks, |r| &r.train_au, |r| &r.train_throughput);
        phase_metrics(&mut metric, "train", &au, &thr, config);
    }
    if config.workflow.evaluation && config.workflow.train {
        let (au, thr) = reduce(ranks, |r| &r.eval_au, |r| &r.eval_throughput);
        phase_metrics(&mut metric, "eval", &au, &thr, config);
    }
    if config.workflow.checkpoint {
        checkpoint_metrics(&mut metric, plan, ranks);
    }
    let d = &config.dataset;
    let mut s = Map::new();
    s.insert("start".into(), json!(timestamp(&record.start)));
    s.insert("num_accelerators".into(), json!(comm.size()));
    // DLIO: comm_size // npernode.
    s.insert("num_hosts".into(), json!((comm.size() / nodes.ranks_per_node.max(1)).max(1)));
    s.insert("hostname".into(), json!(host.hostname));
    s.insert("metric".into(), Value::Object(metric));
    s.insert("num_files_train".into(), json!(d.num_files_train));
    s.insert("num_files_eval".into(), json!(d.num_files_eval));
    s.insert("num_samples_per_file".into(), json!(d.num_samples_per_file));
    s.insert("host_cpu_count".into(), json!(hosts.iter().map(|h| h.2).collect::<Vec<_>>()));
    s.insert("host_processor_name".into(), json!(host.processor));
    s.insert(
        "potential_caching".into(),
        json!(hosts.iter().map(|h| u8::from(potential_caching(config, data_per_host, h.1))).collect::<Vec<_>>()),
    );
    s.insert("host_cpuinfo".into(), json!(host.cpuinfo));
    s.insert("host_meminfo".into(), json!(host.meminfo));
    s.insert("host_memory_GB".into(), json!(hosts.iter().map(|h| h.1).collect::<Vec<_>>()));
    s.insert("data_size_per_host_GB".into(), json!(data_per_host));
    let epochs = if config.workflow.train { ranks.iter().map(|r| r.train_au.len()).min().unwrap_or(0) } else { 0 };
    s.insert("epochs".into(), json!(epochs));
    s.insert("end".into(), json!(timestamp(&record.end)));
    Value::Object(s)
}

/// DLIO's final `[METRIC]` block (checkpoint lines are dl-driver's).
fn metric_block(config: &Config, summary: &Value) -> String {
    let m = &summary["metric"];
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let w = &config.workflow;
    // (shown, label, mean key, stdev key, decimals)
    let mut lines: Vec<(bool, &str, &str, &str, usize)> = vec![
        (
            w.train,
            "Training Accelerator Utilization [AU] (%)",
            "train_au_mean_percentage",
            "train_au_stdev_percentage",
            4,
        ),
        (
            w.train,
            "Training Throughput (samples/second)",
            "train_throughput_mean_samples_per_second",
            "train_throughput_stdev_samples_per_second",
            4,
        ),
        (
            w.train,
            "Training I/O Throughput (MB/second)",
            "train_io_mean_MB_per_second",
            "train_io_stdev_MB_per_second",
            4,
        ),
    ];
    let eval = w.train && w.evaluation;
    lines.extend([
        (eval, "Eval Accelerator Utilization [AU] (%)", "eval_au_mean_percentage", "eval_au_stdev_percentage", 4),
        (
            eval,
            "Eval Throughput (samples/second)",
            "eval_throughput_mean_samples_per_second",
            "eval_throughput_stdev_samples_per_second",
            6,
        ),
        (eval, "Eval Throughput (MB/second)", "eval_io_mean_MB_per_second", "eval_io_stdev_MB_per_second", 6),
        (
            w.checkpoint,
            "Checkpoint save duration (seconds)",
            "save_checkpoint_duration_mean_seconds",
            "save_checkpoint_duration_stdev_seconds",
            4,
        ),
        (
            w.checkpoint,
            "Checkpoint save I/O Throughput (GB/second)",
            "save_checkpoint_io_mean_GB_per_second",
            "save_checkpoint_io_stdev_GB_per_second",
            4,
        ),
        (
            w.checkpoint,
            "Checkpoint load duration (seconds)",
            "load_checkpoint_duration_mean_seconds",
            "load_checkpoint_duration_stdev_seconds",
            4,
        ),
        (
            w.checkpoint,
            "Checkpoint load I/O Throughput (GB/second)",
            "load_checkpoint_io_mean_GB_per_second",
            "load_checkpoint_io_stdev_GB_per_second",
            4,
        ),
    ]);
    let rule = format!("[METRIC] {}", "=".repeat(58));
    let mut t = format!("[OUTPUT] Averaged metric over all epochs\n{rule}\n");
    let _ = writeln!(t, "[METRIC] Number of Simulated Accelerators: {} ", summary["num_accelerators"]);
    for (i, (shown, label, mean, stdev, d)) in lines.into_iter().enumerate() {
        if shown {
            let _ = writeln!(t, "[METRIC] {label}: {:.d$} ({:.d$})", f(mean), f(stdev));
        }
        for (after, phase) in [(2, "train"), (5, "eval")] {
            if i == after && shown {
                let key = format!("{phase}_au_meet_expectation");
                let _ = writeln!(t, "[METRIC] {key}: {}", m[&key].as_str().unwrap_or("fail"));
            }
        }
    }
    if w.checkpoint {
        let _ = writeln!(t, "[METRIC] Checkpoint size (GB): {:.4}", f("checkpoint_size_GB"));
    }
    t.push_str(&rule);
    t
}

/// What DLIO records about the host.
#[derive(Debug, Clone)]
struct Host {
    hostname: String,
    processor: String,
    cpus: u64,
    memory_gib: f64,
    cpuinfo: Map<String, Value>,
    meminfo: Map<String, Value>,
}

impl Host {
    fn probe() -> Self {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let meminfo = lines_to_dict(&read("/proc/meminfo"));
        let total_kib = meminfo
            .get("MemTotal")
            .and_then(Value::as_str)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        Self {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            processor: std::env::consts::ARCH.to_string(),
            cpus: logical_cpus(),
            memory_gib: memory_override().unwrap_or(total_kib / f64::from(1u32 << 20)),
            cpuinfo: lines_to_dict(&read("/proc/cpuinfo")),
            meminfo,
        }
    }
}

/// `DL_DRIVER_HOST_MEMORY_GB`: the host memory (GiB) to report and to compare the data with, instead of
/// `/proc/meminfo`'s (for tests, and to plan for a host with other memory); `dl_driver_report.json` says it was set.
pub fn memory_override() -> Option<f64> {
    std::env::var("DL_DRIVER_HOST_MEMORY_GB").ok()?.trim().parse::<f64>().ok().filter(|m| *m > 0.0)
}

/// This host's memory in GiB (`/proc/meminfo`'s MemTotal, or [`memory_override`]).
pub fn host_memory_gib() -> f64 {
    Host::probe().memory_gib
}

/// The data must be this many times the host's memory for the page cache not to hold a large share of it (MLPerf
/// Storage's dataset rule).
pub const PAGE_CACHE_MULTIPLE: f64 = 5.0;

/// Whether a host's page cache may serve much of what its ranks read: the data is read through the page cache
/// (`file://` without O_DIRECT; object stores and `direct://` are not cached by the client) and the data its ranks
/// read is under [`PAGE_CACHE_MULTIPLE`] x its memory. It sets DLIO's `potential_caching`.
pub fn potential_caching(config: &Config, data_per_host_gib: f64, memory_gib: f64) -> bool {
    page_cached(config) && data_per_host_gib < PAGE_CACHE_MULTIPLE * memory_gib
}

fn page_cached(config: &Config) -> bool {
    let scheme = config.data_location().map(|l| l.scheme);
    matches!(scheme, Ok(crate::uri::Scheme::File)) && !config.reader.odirect
}

/// The warning printed before training when [`potential_caching`] holds (`ranks_on_host` of the job's ranks run
/// here), or None.
pub fn page_cache_warning(config: &Config, world: u64, ranks_on_host: u64) -> Option<String> {
    let data = data_size_per_host_gib(config, world, ranks_on_host);
    let memory = host_memory_gib();
    potential_caching(config, data, memory).then(|| {
        format!(
            "the data this host's {ranks_on_host} rank(s) read, {data:.2} GiB, is under {PAGE_CACHE_MULTIPLE}x its \
             memory ({memory:.2} GiB): the results measure the page cache, not the storage (potential_caching is \
             set). For a storage result use at least {:.0} GiB per host (dl-driver datasize) or --drop-caches",
            PAGE_CACHE_MULTIPLE * memory
        )
    })
}

/// The host's online logical CPUs, as `psutil.cpu_count()` counts them: not this process's affinity (mpirun binds
/// each rank to a core) nor a cgroup quota.
pub fn logical_cpus() -> u64 {
    // SAFETY: sysconf only reads a system value.
    #[allow(unsafe_code)]
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// DLIO's `lines_to_dict`: `key: value` lines (the last CPU's fields win in cpuinfo; `processor` is skipped).
fn lines_to_dict(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(':').collect();
        if let [k, v] = parts.as_slice() {
            let k = k.trim();
            if k != "processor" {
                out.insert(k.to_string(), json!(v.trim()));
            }
        }
    }
    out
}
