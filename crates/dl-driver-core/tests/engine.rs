//! The training loop without Python: plugin hook order, metric blocks split by step checkpoints, uneven ranks,
//! Ctrl-C. (End-to-end runs on every format and backend are in tests/test_run.py.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dl_driver_core::comm::SingleProcess;
use dl_driver_core::config::{resolve, Config};
use dl_driver_core::plan::{plan, Plan};
use dl_driver_core::plugins::{HookContext, HookError, Plugin, PluginError, StepPoint};
use dl_driver_core::runner::{run, RunError, RunOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A synthetic-format workload (no files are read) writing its run files under `dir`.
fn config(dir: &std::path::Path, yaml: &str) -> Config {
    let base = format!(
        "workflow: {{train: True}}\n\
         dataset: {{format: synthetic, num_files_train: 8, num_samples_per_file: 2, num_subfolders_train: 0}}\n\
         reader: {{data_loader: pytorch, batch_size: 2}}\n\
         framework: pytorch\n\
         output: {{folder: '{}'}}\n",
        dir.display()
    );
    let mut value: serde_yaml::Value = serde_yaml::from_str(&base).unwrap();
    let extra: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    merge(&mut value, extra);
    resolve("test", value, true).unwrap().0
}

fn merge(into: &mut serde_yaml::Value, from: serde_yaml::Value) {
    match (into, from) {
        (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Records every hook call.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Plugin for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    async fn initialize(&mut self, plan: &Plan, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push(format!("init steps={}", plan.train.steps_per_epoch));
        Ok(())
    }
    async fn before_epoch(&mut self, epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push(format!("before_epoch {epoch}"));
        Ok(())
    }
    async fn after_epoch(&mut self, epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push(format!("after_epoch {epoch}"));
        Ok(())
    }
    async fn before_step(&mut self, at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push(format!("before_step {}.{} ({})", at.epoch, at.step, at.global_step));
        Ok(())
    }
    async fn after_step(&mut self, at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push(format!("after_step {}.{} ({})", at.epoch, at.step, at.global_step));
        Ok(())
    }
    async fn finalize(&mut self, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.0.lock().unwrap().push("finalize".into());
        Ok(())
    }
}

/// Fails at one step.
struct Failing;

#[async_trait]
impl Plugin for Failing {
    fn name(&self) -> String {
        "failing".into()
    }
    async fn after_step(&mut self, at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        if at.global_step == 3 {
            return Err(PluginError::Other("disk full".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_every_hook_in_order_with_epoch_and_step_numbers() {
    let dir = scratch("hooks");
    let c = config(&dir, "train: {epochs: 2}");
    let p = plan(&c, "test", 1).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let plugins: Vec<Box<dyn Plugin>> = vec![Box::new(Recorder(Arc::clone(&calls)))];
    run(&c, &p, &RunOptions::default(), &SingleProcess::default(), plugins).await.unwrap();
    let mut expected = vec!["init steps=8".to_string()];
    for epoch in 1..=2u64 {
        expected.push(format!("before_epoch {epoch}"));
        for step in 1..=8u64 {
            let global = (epoch - 1) * 8 + step;
            expected.push(format!("before_step {epoch}.{step} ({global})"));
            expected.push(format!("after_step {epoch}.{step} ({global})"));
        }
        expected.push(format!("after_epoch {epoch}"));
    }
    expected.push("finalize".into());
    assert_eq!(*calls.lock().unwrap(), expected);

    let failing: Vec<Box<dyn Plugin>> = vec![Box::new(Failing)];
    let e = run(&c, &p, &RunOptions::default(), &SingleProcess::default(), failing).await.unwrap_err();
    assert_eq!(e.to_string(), "plugin 'failing' failed in after_step: disk full");
    // The plugin's own error survives, typed, for the caller (the bindings re-raise a Python plugin's exception).
    let RunError::Plugin(HookError { plugin, hook, source: PluginError::Other(inner) }) = e else {
        panic!("expected the plugin's own error, got {e:?}")
    };
    assert_eq!((plugin.as_str(), hook, inner.to_string().as_str()), ("failing", "after_step", "disk full"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_checkpoints_split_metric_blocks() {
    let dir = scratch("blocks");
    let c = config(
        &dir,
        &format!(
            "workflow: {{checkpoint: True}}\ncheckpoint: {{steps_between_checkpoints: 3, checkpoint_folder: '{}'}}\n\
             train: {{epochs: 1, computation_time: 0.001}}\nmodel: {{model_size_bytes: 1024}}",
            dir.join("ckpt").display()
        ),
    );
    let p = plan(&c, "test", 1).unwrap();
    let report = run(&c, &p, &RunOptions::default(), &SingleProcess::default(), Vec::new()).await.unwrap();
    let blocks: Vec<u64> = report.details["epochs"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["steps"].as_u64().unwrap())
        .collect();
    assert_eq!(blocks, vec![3, 3, 2], "8 steps split after global steps 3 and 6");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("0_per_epoch_stats.json")).unwrap()).unwrap();
    let keys: Vec<&String> = stats["1"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["start", "block1", "save_ckpt1", "block2", "save_ckpt2", "block3", "end", "duration"]);
    let mut written: Vec<String> =
        std::fs::read_dir(dir.join("ckpt")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    assert_eq!(written, ["global_epoch1_step3", "global_epoch1_step6"]);
    assert_eq!(std::fs::metadata(dir.join("ckpt/global_epoch1_step3/model_states-0.pt")).unwrap().len(), 1024);
    // The epoch's AU is the step-weighted mean of its blocks'.
    let e = &report.details["epochs"][0];
    let weighted: f64 = e["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["au"].as_f64().unwrap() * b["steps"].as_f64().unwrap())
        .sum::<f64>()
        / 8.0;
    assert!((e["au"].as_f64().unwrap() - weighted).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_ranks_run_the_same_number_of_steps() {
    // 8 files x 2 samples = 16 samples on 3 ranks: 6, 6 and 4 samples; steps = floor(16 / 2 / 3) = 2 each.
    for rank in 0..3 {
        let dir = scratch(&format!("uneven-{rank}"));
        let c = config(&dir, "train: {epochs: 1}");
        let p = plan(&c, "test", 3).unwrap();
        let comm = SingleProcess { rank, size: 3 };
        let report = run(&c, &p, &RunOptions::default(), &comm, Vec::new()).await.unwrap();
        assert_eq!(report.details["epochs"][0]["blocks"][0]["steps"], 2, "rank {rank}");
        assert_eq!(report.details["epochs"][0]["repeated_samples"], 0);
        assert_eq!(dir.join("summary.json").exists(), rank == 0, "only rank 0 writes summary.json");
        assert!(dir.join(format!("{rank}_output.json")).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_long_step_and_still_writes_the_run_files() {
    let dir = scratch("cancel");
    let c = config(&dir, "train: {epochs: 100, computation_time: 30}");
    let p = plan(&c, "test", 1).unwrap();
    let options = RunOptions::default();
    let cancel = options.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let report = run(&c, &p, &options, &SingleProcess::default(), Vec::new()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(report.interrupted);
    assert!(dir.join("summary.json").exists() && dir.join("dl_driver_report.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_can_generate_into_memory_and_train_from_it() {
    let dir = scratch("memory");
    let mut c = config(&dir, "train: {epochs: 1}");
    c.dataset.format = dl_driver_core::config::Format::Npz;
    c.dataset.record_length_bytes = 8192.0;
    c.dataset.data_folder = "memory://engine-test/data".into();
    let p = plan(&c, "test", 1).unwrap();
    dl_driver_core::generate::generate(&c, &dl_driver_core::generate::GenerateOptions::default()).await.unwrap();
    let report = run(&c, &p, &RunOptions::default(), &SingleProcess::default(), Vec::new()).await.unwrap();
    let block = &report.details["epochs"][0]["blocks"][0];
    assert_eq!(block["steps"], 8);
    assert!(block["bytes_read"].as_u64().unwrap() >= 16 * 2 * 8192, "whole npz files of 2 samples, per sample");
}
