//! The process's shared tokio runtime, created lazily and rebuilt in a forked child (PyTorch DataLoader workers
//! fork), plus `run`: drive a future with the GIL released while staying responsive to Ctrl-C; and
//! `run_cancellable`, which gives a training run a runtime and a step thread of its own.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dl_driver_core::runner::{lower_runtime_thread_priority, raise_step_thread_priority};
use pyo3::prelude::*;
use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// How often a blocking call wakes up to let Python handle signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

fn runtime() -> PyResult<Arc<Runtime>> {
    let mut guard = RUNTIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pid = std::process::id();
    match guard.take() {
        Some((owner, rt)) if owner == pid => {
            *guard = Some((owner, Arc::clone(&rt)));
            return Ok(rt);
        }
        // A forked child inherits the parent's runtime without its threads: never touch or drop it.
        Some(inherited) => std::mem::forget(inherited),
        None => {}
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dl-driver")
            .build()
            .map_err(|e| crate::DlDriverError::new_err(format!("cannot start the I/O runtime: {e}")))?,
    );
    *guard = Some((pid, Arc::clone(&rt)));
    Ok(rt)
}

/// Runs `future` on the runtime's worker threads (where the connections live, so no cross-thread wakeups per
/// chunk) while this thread waits without the GIL, checking for Ctrl-C between slices; Ctrl-C cancels the future.
pub fn run<T, F>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime()?;
    let mut handle = rt.spawn(future);
    loop {
        let step = py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut handle).await }));
        match step {
            Ok(joined) => return joined.map_err(|e| crate::DlDriverError::new_err(format!("an I/O task failed: {e}"))),
            Err(_) => {
                if let Err(interrupted) = py.check_signals() {
                    handle.abort();
                    return Err(interrupted);
                }
            }
        }
    }
}

/// Like [`run`], for a training run: `future` runs on a thread of its own (real-time when allowed:
/// [`raise_step_thread_priority`]), where its compute emulation blocks, and its I/O on a runtime of its own whose
/// threads yield the CPUs to it ([`lower_runtime_thread_priority`]; the process's shared runtime, which framework
/// pipelines use, keeps its priority). The first Ctrl-C calls `cancel` and keeps waiting for `future` to wind down
/// (so it can save what it measured); a second Ctrl-C drops it. Returns the output and whether Ctrl-C was pressed.
pub fn run_cancellable<T, F>(py: Python<'_>, realtime: bool, cancel: impl Fn(), future: F) -> PyResult<(T, bool)>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dl-driver-io")
            .on_thread_start(lower_runtime_thread_priority)
            .build()
            .map_err(|e| crate::DlDriverError::new_err(format!("cannot start the I/O runtime: {e}")))?,
    );
    let (abort, aborted) = tokio::sync::oneshot::channel::<()>();
    let (finished, mut done) = tokio::sync::oneshot::channel::<Option<T>>();
    let runner = Arc::clone(&rt);
    std::thread::Builder::new()
        .name("dl-driver-steps".into())
        .spawn(move || {
            if realtime {
                raise_step_thread_priority();
            }
            // The thread keeps one Python thread state for the whole run (attached once, then detached): the
            // communicator's barrier attaches every step, and attaching a thread without one creates and deletes a
            // thread state each time (~10-30 us of a per-step MPI barrier).
            let output = Python::attach(|py| {
                py.detach(|| {
                    runner.block_on(async move {
                        tokio::select! {
                            output = future => Some(output),
                            _ = aborted => None,
                        }
                    })
                })
            });
            let _ = finished.send(output);
        })
        .map_err(|e| crate::DlDriverError::new_err(format!("cannot start the step loop's thread: {e}")))?;
    let mut abort = Some(abort);
    let mut interrupted = false;
    let result = loop {
        let step = py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut done).await }));
        match step {
            Ok(Ok(Some(output))) => break Ok((output, interrupted)),
            Ok(_) => break Err(crate::DlDriverError::new_err("the step loop's thread ended without a result")),
            Err(_) => {
                if let Err(signal) = py.check_signals() {
                    if interrupted {
                        if let Some(abort) = abort.take() {
                            let _ = abort.send(());
                        }
                        break Err(signal);
                    }
                    interrupted = true;
                    cancel();
                }
            }
        }
    };
    // Tasks still running (a dropped run's) are not waited for.
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.shutdown_background();
    }
    result
}
