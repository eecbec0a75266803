//! The bindings' one error type: every core error converts into [`Error`] with `?`, and `Error` becomes the Python
//! exception of its kind (`From<Error> for PyErr`), so no call site maps errors by hand. The message is always the
//! core error's whole text (with its context); the exception class comes from what actually failed, also inside a
//! plugin: a checkpoint failure is `CheckpointError`, a storage failure `StorageError` (`FileNotFoundError` when the
//! object is missing), and a Python plugin's own exception is re-raised as itself, with a note naming the hook.

use dl_driver_core::checkpoint::stream::CheckpointError as CoreCheckpointError;
use dl_driver_core::config::ConfigError as CoreConfigError;
use dl_driver_core::generate::GenerateError;
use dl_driver_core::pipeline::PipelineError;
use dl_driver_core::plugins::{HookError, PluginError};
use dl_driver_core::runner::RunError;
use dl_driver_core::storage::StorageError as CoreStorageError;
use pyo3::exceptions::PyFileNotFoundError;
use pyo3::prelude::*;

use crate::{CheckpointError, ConfigError, DlDriverError, FormatError, StorageError};

/// A failure on its way to Python.
#[derive(Debug)]
pub struct Error(PyErr);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A malformed argument or config that has no core error of its own.
    pub fn config(message: impl Into<String>) -> Self {
        Self(ConfigError::new_err(message.into()))
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        e.0
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Self(e)
    }
}

fn storage(e: &CoreStorageError, message: String) -> PyErr {
    if e.is_not_found() {
        PyFileNotFoundError::new_err(message)
    } else {
        StorageError::new_err(message)
    }
}

impl From<CoreStorageError> for Error {
    fn from(e: CoreStorageError) -> Self {
        Self(storage(&e, e.to_string()))
    }
}

impl From<CoreConfigError> for Error {
    fn from(e: CoreConfigError) -> Self {
        Self(ConfigError::new_err(e.to_string()))
    }
}

fn checkpoint(e: &CoreCheckpointError, message: String) -> PyErr {
    match e {
        CoreCheckpointError::Storage(s) => storage(s, message),
        CoreCheckpointError::Corrupt(_) | CoreCheckpointError::Invalid(_) => CheckpointError::new_err(message),
    }
}

impl From<CoreCheckpointError> for Error {
    fn from(e: CoreCheckpointError) -> Self {
        Self(checkpoint(&e, e.to_string()))
    }
}

fn pipeline(e: &PipelineError, message: String) -> PyErr {
    match e {
        PipelineError::Storage(s) => storage(s, message),
        PipelineError::Format(_) => FormatError::new_err(message),
        PipelineError::Dataset(_) => ConfigError::new_err(message),
    }
}

impl From<PipelineError> for Error {
    fn from(e: PipelineError) -> Self {
        Self(pipeline(&e, e.to_string()))
    }
}

fn plugin(e: HookError) -> PyErr {
    let message = e.to_string();
    match e.source {
        PluginError::Checkpoint(c) => checkpoint(&c, message),
        PluginError::Storage(s) => storage(&s, message),
        PluginError::Config(_) => ConfigError::new_err(message),
        PluginError::Comm(_) => DlDriverError::new_err(message),
        PluginError::Other(other) => match other.downcast::<PyErr>() {
            Ok(raised) => Python::attach(|py| {
                let note = format!("raised by plugin '{}' in {}", e.plugin, e.hook);
                // A note is context only: if the exception refuses it, the exception itself still matters more.
                let _ = raised.value(py).call_method1("add_note", (note,));
                *raised
            }),
            Err(_) => DlDriverError::new_err(message),
        },
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        let message = e.to_string();
        Self(match e {
            RunError::Storage(s) => storage(&s, message),
            RunError::Read(p) => pipeline(&p, message),
            RunError::Dataset(_) => ConfigError::new_err(message),
            RunError::Plugin(h) => plugin(h),
            RunError::Comm(_) | RunError::Report(_) => DlDriverError::new_err(message),
        })
    }
}

impl From<GenerateError> for Error {
    fn from(e: GenerateError) -> Self {
        let message = e.to_string();
        Self(match e {
            GenerateError::Storage(s) => storage(&s, message),
            GenerateError::Config(_) => ConfigError::new_err(message),
            GenerateError::Format { .. } => FormatError::new_err(message),
        })
    }
}
