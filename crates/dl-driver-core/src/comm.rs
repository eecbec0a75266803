//! How ranks talk: a [`Communicator`] gives the rank, the world size, a barrier and an all-gather. The engine only
//! uses this trait; [`SingleProcess`] is the built-in one (one process, or one rank of a run launched by hand with
//! `--rank/--world-size`, whose barrier waits for nobody). MPI and torch.distributed communicators come from Python
//! (dl-driver-py's `comm.rs` wraps them).

/// A collective operation failed (a rank died, the launcher's transport broke).
#[derive(Debug, thiserror::Error)]
#[error("communicator {operation} failed: {message}")]
pub struct CommError {
    /// `barrier` or `all_gather`.
    pub operation: &'static str,
    pub message: String,
    /// The wait was given up because the run was interrupted (Ctrl-C, or the launcher's SIGTERM), not because a
    /// rank failed: the run stops and keeps what it measured.
    pub interrupted: bool,
}

impl CommError {
    pub fn failed(operation: &'static str, message: impl Into<String>) -> Self {
        Self { operation, message: message.into(), interrupted: false }
    }
}

/// Collective operations across the ranks of a run.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> u64;
    fn size(&self) -> u64;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), CommError>;
    /// Every rank's `value`, in rank order (on every rank).
    fn all_gather(&self, value: String) -> Result<Vec<String>, CommError>;
    /// The node this rank runs on, as an id shared by the node's ranks (MPI's shared-memory split); `None` when the
    /// communicator cannot tell (the report then groups ranks by hostname).
    fn node(&self) -> Option<u64> {
        None
    }
    /// How many ranks run on this rank's node, when the communicator knows.
    fn local_size(&self) -> Option<u64> {
        None
    }
}

/// One rank that waits for nobody: its gathers hold only its own value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingleProcess {
    pub rank: u64,
    pub size: u64,
}

impl Default for SingleProcess {
    fn default() -> Self {
        Self { rank: 0, size: 1 }
    }
}

impl Communicator for SingleProcess {
    fn rank(&self) -> u64 {
        self.rank
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }

    fn all_gather(&self, value: String) -> Result<Vec<String>, CommError> {
        Ok(vec![value])
    }
}
