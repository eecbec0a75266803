//! Plugins: code the runner calls at its hook points (initialize, before/after each epoch and step, checkpoint-only
//! mode, finalize), built from YAML by [`from_config`] — `workflow.checkpoint: True` (or `plugins: [checkpoint]`)
//! enables the checkpoint plugin, as in DLIO — or handed in by the caller (Python objects, through the binding).
//! An error stops the run with a message naming the plugin and the hook.

pub mod checkpoint;

use async_trait::async_trait;

use crate::checkpoint::stream::CheckpointError;
use crate::comm::{CommError, Communicator};
use crate::config::Config;
use crate::plan::Plan;
use crate::progress::Display;
pub use crate::records::CheckpointRecord;
use crate::storage::StorageError;

/// Why a plugin's hook failed; the variant keeps the type of what failed, so callers (the bindings) can tell a
/// checkpoint or storage failure from a bad config or a caller's own exception.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The config asks for something the plugin cannot do.
    #[error("{0}")]
    Config(String),
    /// A caller's plugin failed with its own error (a Python exception, through the bindings).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Where the loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPoint {
    pub epoch: u64,
    /// Step within the epoch, from 1.
    pub step: u64,
    /// Steps since the run started, from 1.
    pub global_step: u64,
}

/// What a hook may use and report.
pub struct HookContext<'a> {
    pub comm: &'a dyn Communicator,
    /// Where a hook draws a progress bar of its own (hidden unless the run shows progress).
    pub progress: &'a Display,
    /// Checkpoints the hook saved or loaded, in order.
    pub checkpoints: Vec<CheckpointRecord>,
}

/// Code called at the loop's hook points.
#[async_trait]
pub trait Plugin: Send {
    fn name(&self) -> String;
    async fn initialize(&mut self, _plan: &Plan, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    async fn before_epoch(&mut self, _epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// After an epoch's training steps (before its evaluation), where epoch checkpoints happen.
    async fn after_epoch(&mut self, _epoch: u64, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    async fn before_step(&mut self, _at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    async fn after_step(&mut self, _at: StepPoint, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// Checkpoint-only workloads (`workflow.train: False`): the whole run.
    async fn checkpoint_only(&mut self, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    async fn finalize(&mut self, _ctx: &mut HookContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}

/// A hook point.
#[derive(Debug, Clone, Copy)]
pub enum Hook<'p> {
    Initialize(&'p Plan),
    BeforeEpoch(u64),
    AfterEpoch(u64),
    BeforeStep(StepPoint),
    AfterStep(StepPoint),
    CheckpointOnly,
    Finalize,
}

impl Hook<'_> {
    pub fn name(self) -> &'static str {
        match self {
            Self::Initialize(_) => "initialize",
            Self::BeforeEpoch(_) => "before_epoch",
            Self::AfterEpoch(_) => "after_epoch",
            Self::BeforeStep(_) => "before_step",
            Self::AfterStep(_) => "after_step",
            Self::CheckpointOnly => "checkpoint_only",
            Self::Finalize => "finalize",
        }
    }
}

/// A plugin's failure at a hook point.
#[derive(Debug, thiserror::Error)]
#[error("plugin '{plugin}' failed in {hook}: {source}")]
pub struct HookError {
    pub plugin: String,
    pub hook: &'static str,
    #[source]
    pub source: PluginError,
}

/// Calls `hook` on every plugin in order; returns what they checkpointed.
pub async fn call(
    plugins: &mut [Box<dyn Plugin>],
    hook: Hook<'_>,
    comm: &dyn Communicator,
    progress: &Display,
) -> Result<Vec<CheckpointRecord>, HookError> {
    let mut ctx = HookContext { comm, progress, checkpoints: Vec::new() };
    for p in plugins.iter_mut() {
        let result = match hook {
            Hook::Initialize(plan) => p.initialize(plan, &mut ctx).await,
            Hook::BeforeEpoch(e) => p.before_epoch(e, &mut ctx).await,
            Hook::AfterEpoch(e) => p.after_epoch(e, &mut ctx).await,
            Hook::BeforeStep(at) => p.before_step(at, &mut ctx).await,
            Hook::AfterStep(at) => p.after_step(at, &mut ctx).await,
            Hook::CheckpointOnly => p.checkpoint_only(&mut ctx).await,
            Hook::Finalize => p.finalize(&mut ctx).await,
        };
        result.map_err(|source| HookError { plugin: p.name(), hook: hook.name(), source })?;
    }
    Ok(ctx.checkpoints)
}

/// Names `plugins:` may list.
pub use crate::config::BUILT_IN_PLUGINS as BUILT_IN;

/// The plugins a config asks for: the checkpoint plugin when `workflow.checkpoint` (which `plugins: [checkpoint]`
/// also sets; validation rejects unknown names).
pub fn from_config(config: &Config) -> Vec<Box<dyn Plugin>> {
    let mut plugins: Vec<Box<dyn Plugin>> = Vec::new();
    if config.workflow.checkpoint {
        plugins.push(Box::new(checkpoint::CheckpointPlugin::new(config)));
    }
    plugins
}
