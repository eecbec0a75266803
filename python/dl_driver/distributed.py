"""Multi-process runs: the communicator that joins the ranks of a launched job.

MPI through mpi4py (``mpirun``, ``mpiexec``, ``srun``) and torch.distributed with the gloo backend (``torchrun``),
picked from the launcher's environment (``auto``) or by name (``--comm``, ``distributed.communicator``). Both are
extras (``pip install 'dl-driver[mpi]'`` / ``'dl-driver[torch]'``); a single process needs neither. The engine waits on
the backend's non-blocking barrier (``_core.Comm``), so every wait ends on Ctrl-C, after
``distributed.timeout_seconds``, or when another rank reports a failure (MPI).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from datetime import timedelta
from typing import Any

from dl_driver import _core, launcher
from dl_driver._core import ConfigError

KINDS = ("auto", "mpi", "torch", "none")
#: Variables set by MPI launchers (Open MPI's mpirun, MPICH/Hydra, PMIx) in every rank.
MPI_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK")
#: The tag of the message a failing rank sends the others.
_FAILED_TAG = 0x6464


def launcher_kind() -> str:
    """The communicator the launcher's environment implies: ``mpi`` (mpirun, mpiexec, srun of more than one task),
    ``torch`` (torchrun), else ``none``."""
    env = os.environ
    if any(v in env for v in MPI_VARIABLES):
        return "mpi"
    if "TORCHELASTIC_RUN_ID" in env or ("MASTER_ADDR" in env and "WORLD_SIZE" in env and "RANK" in env):
        return "torch"
    if env.get("SLURM_NTASKS", "1").isdigit() and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return "mpi"
    return "none"


_joined: dict[str, _core.Comm] = {}


def communicator(kind: str = "auto", timeout_seconds: float = 60.0) -> _core.Comm | None:
    """The job's communicator (one per process, created on first use), or None for a process that runs alone.

    Raises:
        ConfigError: an unknown kind, or the library it needs (mpi4py, torch) is not installed.
    """
    if kind not in KINDS:
        raise ConfigError(f"distributed.communicator '{kind}': expected one of {', '.join(KINDS)}")
    chosen = launcher_kind() if kind == "auto" else kind
    # A launcher's single process (mpirun -np 1) runs alone: no library needed.
    if chosen == "none" or (kind == "auto" and launcher.world_size() == 1):
        return None
    if chosen not in _joined:
        backend: _MpiBackend | _TorchBackend = (
            _MpiBackend(timeout_seconds) if chosen == "mpi" else _TorchBackend(timeout_seconds)
        )
        _joined[chosen] = _core.Comm(backend, timeout_seconds)
    return _joined[chosen]


class _MpiBackend:
    """MPI_COMM_WORLD through mpi4py: barriers, gathers (each preceded by a barrier of their own) and failure notices
    each on a duplicate of it, so a barrier given up on Ctrl-C never pairs with the final gather's; nodes from MPI's
    shared-memory split. A rank that failed leaves through a last barrier: when every rank gets there within the
    timeout (they all saw the failure) MPI finalizes normally, else the job is aborted (MPI_Finalize would wait
    forever for a rank that hangs)."""

    def __init__(self, timeout_seconds: float) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ConfigError(
                "the MPI communicator (an mpirun/mpiexec/srun environment, --comm mpi or distributed.communicator: "
                f"mpi) needs mpi4py: pip install 'dl-driver[mpi]' (and an MPI library, e.g. Open MPI) ({e})"
            ) from e
        self._mpi: Any = MPI
        world = MPI.COMM_WORLD
        self.rank: int = world.Get_rank()
        self.size: int = world.Get_size()
        self._barriers, self._gathers, self._errors, self._exits = world.Dup(), world.Dup(), world.Dup(), world.Dup()
        self._grace = timeout_seconds
        self._failed = False
        shared = world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        # The node's id: its lowest world rank, the same on every rank of the node.
        self.node: int | None = shared.allreduce(self.rank, op=MPI.MIN)
        self.local_size: int | None = shared.Get_size()
        shared.Free()
        self._sent: list[Any] = []

    def ibarrier(self, channel: str) -> _MpiRequest:
        comm = self._barriers if channel == "barrier" else self._gathers
        return _MpiRequest(comm.Ibarrier(), self)

    def allgather(self, value: str) -> list[str]:
        gathered: list[str] = self._gathers.allgather(value)
        return gathered

    def fail(self, message: str) -> None:
        # Small messages go eagerly: the sends complete without the receivers.
        for peer in range(self.size):
            if peer != self.rank:
                self._sent.append(self._errors.isend(message[:4000], dest=peer, tag=_FAILED_TAG))
        if not self._failed:
            self._failed = True
            atexit.register(self._leave)  # runs before mpi4py's MPI_Finalize (atexit is last in, first out)

    def _leave(self) -> None:
        request = self._exits.Ibarrier()
        deadline = time.monotonic() + self._grace
        while not request.Test():
            if time.monotonic() > deadline:
                sys.stderr.write(
                    f"dl-driver: rank {self.rank}: not every rank stopped within {self._grace:g} s "
                    "(distributed.timeout_seconds) of the failure: aborting the MPI job\n"
                )
                sys.stderr.flush()
                self._mpi.COMM_WORLD.Abort(1)
            time.sleep(0.01)

    def peer_failure(self) -> str | None:
        status = self._mpi.Status()
        if self._errors.Iprobe(source=self._mpi.ANY_SOURCE, tag=_FAILED_TAG, status=status):
            message: str = self._errors.recv(source=status.Get_source(), tag=_FAILED_TAG)
            return message
        return None


class _MpiRequest:
    def __init__(self, request: Any, backend: _MpiBackend) -> None:
        self._request = request
        self._backend = backend

    def test(self) -> bool:
        if self._request.Test():
            return True
        failure = self._backend.peer_failure()
        if failure is not None:
            raise _core.DlDriverError(failure)
        return False


class _TorchBackend:
    """torch.distributed's default group (initialized here with gloo from torchrun's environment, unless the program
    did it already) and gloo groups of dl-driver's own (barriers, gathers), so its collectives never interleave with
    the program's."""

    def __init__(self, timeout_seconds: float) -> None:
        try:
            import torch.distributed as dist
        except ImportError as e:
            raise ConfigError(
                "the torch.distributed communicator (a torchrun environment, --comm torch or "
                f"distributed.communicator: torch) needs torch: pip install 'dl-driver[torch]' ({e})"
            ) from e
        if not dist.is_available():
            raise ConfigError("the torch.distributed communicator: this torch build has no torch.distributed")
        timeout = timedelta(seconds=timeout_seconds)
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("gloo", timeout=timeout)
        self._dist: Any = dist
        self.rank: int = dist.get_rank()
        self.size: int = dist.get_world_size()
        self._barriers = dist.new_group(backend="gloo", timeout=timeout)
        self._gathers = dist.new_group(backend="gloo", timeout=timeout)
        # gloo's threads must be stopped before the interpreter exits (else C++ terminates the process).
        atexit.register(self._close, owned)
        local = os.environ.get("LOCAL_RANK", "")
        # torchrun numbers a node's ranks contiguously: its lowest rank is the node's id.
        self.node: int | None = self.rank - int(local) if local.isdigit() else None
        local_size = os.environ.get("LOCAL_WORLD_SIZE", "")
        self.local_size: int | None = int(local_size) if local_size.isdigit() else None

    def _close(self, owned: bool) -> None:
        if not self._dist.is_initialized():
            return
        if owned:
            self._dist.destroy_process_group()
        else:
            self._dist.destroy_process_group(self._barriers)
            self._dist.destroy_process_group(self._gathers)

    def ibarrier(self, channel: str) -> _TorchRequest:
        group = self._barriers if channel == "barrier" else self._gathers
        return _TorchRequest(self._dist.barrier(group=group, async_op=True))

    def allgather(self, value: str) -> list[str]:
        gathered: list[Any] = [None] * self.size
        self._dist.all_gather_object(gathered, value, group=self._gathers)
        return [str(v) for v in gathered]


class _TorchRequest:
    def __init__(self, work: Any) -> None:
        self._work = work

    def test(self) -> bool:
        if self._work.is_completed():
            self._work.wait()  # raises what failed it (a peer gone, the group's timeout)
            return True
        return False
