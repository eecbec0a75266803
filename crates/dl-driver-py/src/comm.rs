//! Communicators from Python: an MPI (mpi4py) or torch.distributed backend object, built by
//! `python/dl_driver/distributed.py`, behind the core's [`Communicator`] trait. The backend starts a non-blocking
//! barrier on one of two channels (`ibarrier("barrier")` or `ibarrier("gather")`, whose request has `test()`) and
//! gathers strings (`allgather(value)`, called only once every rank has passed a "gather" barrier). This module waits
//! on the request so that a wait ends when `distributed.timeout_seconds` passes or when the backend reports that
//! another rank failed (`test()` raises), and a barrier also on Ctrl-C (the run's [`Cancel`]); it never spins a
//! real-time step thread against the CPUs its own readers need (it sleeps between polls). A gather is not given up on
//! Ctrl-C: it is how an interrupted run still writes every rank's results, and its own channel keeps a barrier
//! abandoned on Ctrl-C from pairing with it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dl_driver_core::comm::{CommError, Communicator};
use dl_driver_core::runner::Cancel;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use crate::DlDriverError;

/// How a barrier waits: it polls without sleeping for `spin` (the last rank to arrive finds it complete within a
/// few polls), then sleeps `first` between polls, each sleep doubling up to `most`.
struct Polling {
    spin: Duration,
    first: Duration,
    most: Duration,
}

/// A node with a CPU per rank: ranks arrive close together, so a short spin and short sleeps keep the per-step
/// barrier at tens of microseconds (a sleep lasts at least the 50 us timer slack).
const ONE_CPU_PER_RANK: Polling =
    Polling { spin: Duration::from_micros(100), first: Duration::from_micros(50), most: Duration::from_micros(50) };
/// More ranks than CPUs: a waiting rank backs off (20 us to 500 us) so the CPUs go to the ranks still reading; with
/// sleeps capped at 100 us 8 ranks on 2 CPUs trained resnet50-shaped data at 29k samples/s, with this at 42-48k.
const OVERSUBSCRIBED: Polling =
    Polling { spin: Duration::from_micros(20), first: Duration::from_micros(20), most: Duration::from_micros(500) };

/// A Python backend as a [`Communicator`].
pub struct PyComm {
    backend: Py<PyAny>,
    rank: u64,
    size: u64,
    node: Option<u64>,
    /// How many ranks run on this rank's node, when the backend knows.
    local_size: Option<u64>,
    /// [`PyComm::realtime`], decided once: the CPU count is a file read (sysconf reads /sys), ~10 us a barrier.
    realtime: bool,
    timeout: Duration,
    /// The run being measured, whose Ctrl-C gives up a wait.
    cancel: Mutex<Option<Cancel>>,
}

fn message(py: Python<'_>, e: &PyErr) -> String {
    e.value(py).str().map_or_else(|_| e.to_string(), |s| s.to_string())
}

impl PyComm {
    /// Whether the node runs no more ranks than it has CPUs: then the step thread may run real-time and barriers
    /// poll at [`ONE_CPU_PER_RANK`]'s pace. Past that, real-time step threads (which do not share a CPU with one
    /// another's spins) starve every rank's readers: 8 ranks on 2 CPUs trained 20x slower than with normal-class
    /// step threads.
    pub fn realtime(&self) -> bool {
        self.realtime
    }

    fn cancelled(&self) -> bool {
        self.cancel.lock().is_ok_and(|c| c.as_ref().is_some_and(Cancel::is_cancelled))
    }

    /// Sets (or clears) the run whose cancellation gives up a wait.
    pub fn watch(&self, cancel: Option<Cancel>) {
        if let Ok(mut c) = self.cancel.lock() {
            *c = cancel;
        }
    }

    /// Waits until every rank has started a barrier on `operation`'s channel ("barrier" or "all_gather").
    fn wait(&self, operation: &'static str) -> Result<(), CommError> {
        let interrupted = || CommError { operation, message: "interrupted".into(), interrupted: true };
        let (channel, cancellable) = if operation == "barrier" { ("barrier", true) } else { ("gather", false) };
        // The request's bound `test`, looked up once.
        let test = Python::attach(|py| {
            let request = self.backend.bind(py).call_method1("ibarrier", (channel,))?;
            request.getattr("test").map(Bound::unbind)
        })
        .map_err(|e| Python::attach(|py| CommError::failed(operation, message(py, &e))))?;
        let start = Instant::now();
        let polling = if self.realtime() { ONE_CPU_PER_RANK } else { OVERSUBSCRIBED };
        let spin_until = start + polling.spin;
        let mut poll = polling.first;
        loop {
            // The spin polls inside one attachment to the interpreter (attaching and detaching per poll cost more
            // than the poll); after it, one poll per wake.
            let done = Python::attach(|py| -> PyResult<bool> {
                let test = test.bind(py);
                loop {
                    // Runs the signal handlers when the caller is Python's main thread (a barrier called from Python).
                    py.check_signals()?;
                    if test.call0()?.extract::<bool>()? {
                        return Ok(true);
                    }
                    if Instant::now() >= spin_until {
                        return Ok(false);
                    }
                    std::hint::spin_loop();
                }
            });
            match done {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if cancellable && Python::attach(|py| e.is_instance_of::<PyKeyboardInterrupt>(py)) => {
                    return Err(interrupted());
                }
                Err(e) => return Err(Python::attach(|py| CommError::failed(operation, message(py, &e)))),
            }
            if cancellable && self.cancelled() {
                return Err(interrupted());
            }
            let waited = start.elapsed();
            if waited > self.timeout {
                return Err(CommError::failed(
                    operation,
                    format!(
                        "rank {} waited {:.0} s (distributed.timeout_seconds) and not every one of the {} ranks \
                         arrived: a rank stopped, hangs, or is that far behind",
                        self.rank,
                        self.timeout.as_secs_f64(),
                        self.size
                    ),
                ));
            }
            std::thread::sleep(poll);
            poll = (poll * 2).min(polling.most);
        }
    }
}

impl Communicator for PyComm {
    fn rank(&self) -> u64 {
        self.rank
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.wait("barrier")
    }

    fn all_gather(&self, value: String) -> Result<Vec<String>, CommError> {
        self.wait("all_gather")?;
        Python::attach(|py| self.backend.bind(py).call_method1("allgather", (value,))?.extract::<Vec<String>>())
            .map_err(|e| Python::attach(|py| CommError::failed("all_gather", message(py, &e))))
    }

    fn local_size(&self) -> Option<u64> {
        self.local_size
    }
    fn node(&self) -> Option<u64> {
        self.node
    }
}

/// The ranks of a launched job, joined by a backend (`dl_driver.distributed` builds it): `rank`, `size`, `node`,
/// `barrier()` and `all_gather(value)`, with the timeout and failure handling of the engine's own waits.
#[pyclass(frozen, module = "dl_driver._core")]
pub struct Comm {
    pub inner: Arc<PyComm>,
}

fn comm_error(e: CommError) -> PyErr {
    if e.interrupted {
        PyKeyboardInterrupt::new_err("interrupted")
    } else {
        DlDriverError::new_err(e.to_string())
    }
}

#[pymethods]
impl Comm {
    /// `backend` has `rank`, `size`, `node` (an id its node's ranks share, or None), `local_size` (ranks on this
    /// node, or None), `ibarrier(channel)` and
    /// `allgather(value)`; and, optionally, `fail(message)` to tell the other ranks this one failed.
    #[new]
    fn new(backend: Bound<'_, PyAny>, timeout_seconds: f64) -> PyResult<Self> {
        let rank: u64 = backend.getattr("rank")?.extract()?;
        let size: u64 = backend.getattr("size")?.extract()?;
        let node: Option<u64> = backend.getattr("node")?.extract()?;
        let local_size: Option<u64> = backend.getattr("local_size")?.extract()?;
        if size == 0 || rank >= size {
            return Err(DlDriverError::new_err(format!("communicator: rank {rank} is not below its size {size}")));
        }
        let timeout = Duration::try_from_secs_f64(timeout_seconds).map_err(|_| {
            DlDriverError::new_err(format!(
                "distributed.timeout_seconds is {timeout_seconds}: expected a number of seconds > 0"
            ))
        })?;
        let realtime = local_size.is_none_or(|n| n <= dl_driver_core::report::logical_cpus());
        let inner = PyComm {
            backend: backend.unbind(),
            rank,
            size,
            node,
            local_size,
            realtime,
            timeout,
            cancel: Mutex::new(None),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    #[getter]
    fn rank(&self) -> u64 {
        self.inner.rank
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }

    #[getter]
    fn node(&self) -> Option<u64> {
        self.inner.node
    }

    /// How many ranks run on this node, when the backend knows.
    #[getter]
    fn local_size(&self) -> Option<u64> {
        self.inner.local_size
    }

    /// Returns when every rank has called it; KeyboardInterrupt on Ctrl-C; DlDriverError after the timeout or when
    /// another rank failed.
    fn barrier(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.barrier()).map_err(comm_error)
    }

    /// Every rank's `value`, in rank order.
    fn all_gather(&self, py: Python<'_>, value: String) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.all_gather(value)).map_err(comm_error)
    }

    /// Tells the other ranks this one failed with `message`, if the backend can (MPI); they stop at their next wait
    /// with an error that carries it. Never blocks.
    fn fail(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        let backend = self.inner.backend.bind(py);
        if backend.hasattr("fail")? {
            backend.call_method1("fail", (message,))?;
        }
        Ok(())
    }
}
