//! The training engine from Python: `run_benchmark` (the whole run, with its run files) and `Batches` (the reader
//! pipeline as an iterator of batches, for data loaders).

use std::sync::Arc;

use dl_driver_core::checkpoint::manifest;
use dl_driver_core::comm::{Communicator, SingleProcess};
use dl_driver_core::formats::read::FileLayout;
use dl_driver_core::generate::layout::Split;
use dl_driver_core::pipeline::{Batch, Pipeline};
use dl_driver_core::plugins::{HookContext, Plugin, PluginError, StepPoint};
use dl_driver_core::runner::{self, Cancel, RunError, RunOptions};
use dl_driver_core::{plan, sampler};
use pyo3::prelude::*;

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::storage::{open_store, Buffer};
use crate::{parse_config, runtime, DlDriverError};

pub fn check_rank(rank: u64, world_size: u64) -> Result<()> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::config(format!("rank {rank} is not below world size {world_size}")));
    }
    Ok(())
}

/// A Python object whose `initialize()`, `before_epoch(epoch)`, `after_epoch(epoch)`, `before_step(epoch, step)`,
/// `after_step(epoch, step)`, `finalize()` methods (any it has) are called at the hook points.
struct PyPlugin {
    object: Py<PyAny>,
    name: String,
}

impl PyPlugin {
    /// Calls `method` if the object has it; its exception travels, as itself, back to the caller of the run.
    fn call(&self, method: &str, args: &[u64]) -> Result<(), PluginError> {
        Python::attach(|py| {
            let object = self.object.bind(py);
            if !object.hasattr(method).unwrap_or(false) {
                return Ok(());
            }
            let args = pyo3::types::PyTuple::new(py, args)?;
            object.call_method1(method, args).map(drop)
        })
        .map_err(|e| PluginError::Other(Box::new(e)))
    }
}

#[async_trait::async_trait]
impl Plugin for PyPlugin {
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn initialize(&mut self, _plan: &plan::Plan, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("initialize", &[])
    }
    async fn before_epoch(&mut self, epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("before_epoch", &[epoch])
    }
    async fn after_epoch(&mut self, epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("after_epoch", &[epoch])
    }
    async fn before_step(&mut self, at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("before_step", &[at.epoch, at.step])
    }
    async fn after_step(&mut self, at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("after_step", &[at.epoch, at.step])
    }
    async fn finalize(&mut self, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        self.call("finalize", &[])
    }
}

/// Writes Hydra's record of the run (`config.yaml`, `hydra.yaml`, `overrides.yaml`) as DLIO's Hydra does at every
/// start, rank 0 only; [`run_benchmark`] writes it too, so a generation-only run has it as well.
#[pyfunction]
pub fn save_run_config(config_json: &str, source_name: &str, overrides: Vec<String>, rank: u64) -> Result<()> {
    let config = parse_config(config_json)?;
    dl_driver_core::report::save_config(&config, &overrides, source_name, rank).map_err(RunError::from)?;
    Ok(())
}

/// Runs the workload's training and evaluation, or its checkpoint-only workflow, with the plugins its config asks
/// for and `plugins` (Python objects), as `comm`'s rank (else as `rank` of `world_size` alone); returns (summary JSON,
/// report JSON, interrupted).
#[pyfunction]
#[pyo3(signature = (config_json, source_name, overrides, rank = 0, world_size = 1, console = true, progress = false, plugins = Vec::new(), comm = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_benchmark(
    py: Python<'_>,
    config_json: &str,
    source_name: &str,
    overrides: Vec<String>,
    rank: u64,
    world_size: u64,
    console: bool,
    progress: bool,
    plugins: Vec<Py<PyAny>>,
    comm: Option<PyRef<'_, Comm>>,
) -> Result<(String, String, bool)> {
    let joined = comm.as_ref().map(|c| Arc::clone(&c.inner));
    let (rank, world_size) = joined.as_ref().map_or((rank, world_size), |c| (c.rank(), c.size()));
    check_rank(rank, world_size)?;
    let config = parse_config(config_json)?;
    let plan = plan::plan(&config, source_name, world_size)?;
    plan.check_steps(source_name)?;
    let cancel = Cancel::default();
    let options =
        RunOptions { progress, console, cancel: cancel.clone(), overrides, source_name: source_name.to_string() };
    let comm: Arc<dyn Communicator> = match &joined {
        Some(c) => {
            c.watch(Some(cancel.clone()));
            Arc::clone(c) as Arc<dyn Communicator>
        }
        None => Arc::new(SingleProcess { rank, size: world_size }),
    };
    let mut python: Vec<Box<dyn Plugin>> = Vec::new();
    for object in plugins {
        let name = object.bind(py).get_type().name().map_or_else(|_| "plugin".to_string(), |n| n.to_string());
        python.push(Box::new(PyPlugin { object, name }));
    }
    let realtime = joined.as_ref().is_none_or(|c| c.realtime());
    let result = runtime::run_cancellable(py, realtime, || cancel.cancel(), async move {
        runner::run(&config, &plan, &options, comm.as_ref(), python).await
    });
    if let Some(c) = &joined {
        c.watch(None);
    }
    let (result, _) = result?;
    let report = result?;
    Ok((report.summary.to_string(), report.details.to_string(), report.interrupted))
}

/// One batch handed to Python: its step in the rank's epoch, the sample ids, and their bytes back to back (sample i
/// at `spans[i]`).
#[pyclass(frozen, get_all, module = "dl_driver._core")]
pub struct PyBatch {
    step: u64,
    samples: Vec<u64>,
    spans: Vec<(usize, usize)>,
    data: Py<Buffer>,
    bytes_read: u64,
    /// Per sample, what an hdf5 sample's bytes are when its file's rows were mapped: the datasets' names (one row
    /// of each, back to back), numpy's dtype and the row's shape; `None` otherwise (the bytes are the whole file).
    arrays: Vec<Option<RowArrays>>,
}

/// An hdf5 sample's datasets, dtype and row shape, as Python sees them.
type RowArrays = (Vec<String>, String, Vec<u64>);

/// An epoch of one phase read through the pipeline, batch by batch.
#[pyclass(module = "dl_driver._core")]
pub struct Batches {
    pipeline: Option<Pipeline>,
    /// The steps still to come, in order.
    steps: std::collections::VecDeque<u64>,
    /// The last `__next__` failed (an error or Ctrl-C): the epoch cannot go on.
    failed: bool,
}

#[pymethods]
impl Batches {
    /// The rank's steps `start..` of the epoch whose index is `worker` modulo `workers` (a DataLoader worker's
    /// share: the workers' shares are disjoint and together the rank's epoch).
    #[new]
    #[pyo3(signature = (config_json, split = "train", epoch = 1, rank = 0, world_size = 1, worker = 0, workers = 1, start = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config_json: &str,
        split: &str,
        epoch: u64,
        rank: u64,
        world_size: u64,
        worker: u64,
        workers: u64,
        start: u64,
    ) -> Result<Self> {
        check_rank(rank, world_size)?;
        if workers == 0 || worker >= workers {
            return Err(Error::config(format!("worker {worker} of {workers}: expected 0 <= worker < workers")));
        }
        let split = match split {
            "train" => Split::Train,
            "valid" | "eval" => Split::Valid,
            other => return Err(Error::config(format!("split '{other}': expected 'train' or 'valid'"))),
        };
        let config = parse_config(config_json)?;
        let plan = plan::plan(&config, "config", world_size)?;
        let phase = if split == Split::Train { plan.train.clone() } else { plan.eval.clone() };
        let sampler = sampler::Sampler {
            files: phase.files,
            samples_per_file: plan.dataset.samples_per_file,
            rank,
            world_size,
            batch_size: phase.batch_size,
            steps_per_epoch: phase.steps_per_epoch,
            policy: sampler::ShufflePolicy {
                file: config.reader.file_shuffle,
                sample: config.reader.sample_shuffle,
                seed: config.train.seed,
                seed_change_epoch: config.train.seed_change_epoch,
            },
        };
        let steps: std::collections::VecDeque<u64> =
            (start..phase.steps_per_epoch).filter(|s| s % workers == worker).collect();
        let order = sampler.epoch(epoch);
        let shared = steps.iter().flat_map(|s| order.batch(*s, phase.batch_size).iter().copied()).collect();
        let order = Arc::new(sampler::EpochOrder { samples: shared, ..order });
        let count = steps.len() as u64;
        let pipeline = runtime::run(py, async move {
            let readers = runner::readers(&config, &plan, split, true).await?;
            Ok::<_, RunError>(Pipeline::start(&readers, &order, phase.batch_size, count))
        })??;
        Ok(Self { pipeline: Some(pipeline), steps, failed: false })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> Result<Option<PyBatch>> {
        if self.failed {
            return Err(
                DlDriverError::new_err("this epoch's iterator stopped on an error or Ctrl-C; start a new one").into()
            );
        }
        let Some(mut pipeline) = self.pipeline.take() else { return Ok(None) };
        self.failed = true;
        let (next, pipeline) = runtime::run(py, async move {
            let next = pipeline.next().await;
            (next, pipeline)
        })?;
        let batch: Batch = match next {
            None => {
                self.failed = false;
                return Ok(None);
            }
            Some(b) => b?,
        };
        self.failed = false;
        self.pipeline = Some(pipeline);
        let data = batch.data.unwrap_or_default();
        Ok(Some(PyBatch {
            step: self.steps.pop_front().unwrap_or_default(),
            samples: batch.samples,
            spans: batch.spans.iter().map(|r| (r.start, r.end)).collect(),
            data: Py::new(py, Buffer::from(data))?,
            bytes_read: batch.bytes_read,
            arrays: batch
                .layouts
                .iter()
                .map(|layout| match layout.as_ref() {
                    FileLayout::Rows { arrays, .. } => {
                        Some((arrays.names.clone(), arrays.dtype.clone(), arrays.dims.clone()))
                    }
                    _ => None,
                })
                .collect(),
        }))
    }
}

/// The checkpoints under `uri` as JSON: [{name, complete, objects, stored_bytes}].
#[pyfunction]
#[pyo3(signature = (uri, options = None))]
pub fn checkpoint_list(
    py: Python<'_>,
    uri: &str,
    options: Option<std::collections::HashMap<String, String>>,
) -> Result<String> {
    let store = open_store(uri, options)?;
    let listed = runtime::run(py, async move { manifest::list(&store).await })??;
    Ok(serde_json::to_string(&listed).expect("listings serialize"))
}

/// Reads checkpoint `name` under `uri` and verifies every file against its manifest; returns the bytes read.
#[pyfunction]
#[pyo3(signature = (uri, name, options = None))]
pub fn checkpoint_verify(
    py: Python<'_>,
    uri: &str,
    name: String,
    options: Option<std::collections::HashMap<String, String>>,
) -> Result<u64> {
    let store = open_store(uri, options)?;
    Ok(runtime::run(py, async move { manifest::verify(&store, &name).await })??)
}

/// Deletes checkpoint `name` under `uri` (manifest first); returns the objects deleted.
#[pyfunction]
#[pyo3(signature = (uri, name, options = None))]
pub fn checkpoint_delete(
    py: Python<'_>,
    uri: &str,
    name: String,
    options: Option<std::collections::HashMap<String, String>>,
) -> Result<u64> {
    let store = open_store(uri, options)?;
    Ok(runtime::run(py, async move { manifest::delete(&store, &name).await })??)
}
