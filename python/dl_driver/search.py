"""``dl-driver search-accelerators``: the largest number of simulated accelerators (ranks) whose training keeps AU at
or above a threshold in every epoch, found by running the workload under a real launcher at doubling rank counts and
then bisecting between the last that passed and the first that failed. Each try is a run folder of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dl_driver._core import DlDriverError

LAUNCHERS = ("mpi", "torch")


@dataclass(frozen=True)
class Try:
    ranks: int
    folder: str
    au: list[float]
    passed: bool
    error: str = ""


def launcher_prefix(kind: str, ranks: int) -> list[str]:
    """The launcher's command for ``ranks`` processes on this host."""
    if kind == "mpi":
        mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
        if not mpirun:
            raise DlDriverError("search-accelerators --launcher mpi: no mpirun or mpiexec on PATH (install Open MPI)")
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return [mpirun, "-np", str(ranks), "--oversubscribe", *root]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not os.path.exists(torchrun):
        raise DlDriverError("search-accelerators --launcher torch: no torchrun (pip install 'dl-driver[torch]')")
    return [torchrun, "--standalone", "--nproc_per_node", str(ranks), "--no-python"]


def default_launcher() -> str:
    if shutil.which("mpirun") or shutil.which("mpiexec"):
        return "mpi"
    if shutil.which("torchrun") or Path(sys.executable).with_name("torchrun").exists():
        return "torch"
    raise DlDriverError("search-accelerators needs a launcher: install Open MPI (mpirun) or torch (torchrun)")


def run_try(kind: str, ranks: int, workload_args: Sequence[str], folder: Path, threshold: float) -> Try:
    """Trains under the launcher with ``ranks`` processes into ``folder`` and reads its AU per epoch."""
    command = [
        *launcher_prefix(kind, ranks),
        sys.executable,
        "-m",
        "dl_driver",
        "run",
        *workload_args,
        "++workload.workflow.generate_data=False",
        f"++workload.output.folder={folder}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    summary = folder / "summary.json"
    if done.returncode != 0 or not summary.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Try(ranks, str(folder), [], False, f"exit status {done.returncode}: {last}")
    au = [float(a) for a in json.loads(summary.read_text())["metric"].get("train_au_percentage", [])]
    return Try(ranks, str(folder), au, bool(au) and all(a >= 100 * threshold for a in au))


def search(threshold: float, largest: int, attempt: Callable[[int], Try]) -> tuple[int, list[Try]]:
    """The largest rank count <= ``largest`` that passes: 1, 2, 4, ... until one fails (or ``largest``), then
    bisection between the last pass and the first fail. Returns (answer, tries); 0 when even 1 rank fails."""
    if not 0 < threshold <= 1:
        raise DlDriverError(f"--au {threshold}: expected a fraction in (0, 1], as metric.au (0.9 = 90%)")
    if largest < 1:
        raise DlDriverError(f"--max {largest}: expected 1 or more ranks")
    tries: list[Try] = []
    passed, failed, n = 0, None, 1
    while n <= largest:
        t = attempt(n)
        tries.append(t)
        if not t.passed:
            failed = n
            break
        passed = n
        if n == largest:
            break
        n = min(2 * n, largest)
    if failed is None:
        return passed, tries
    while failed - passed > 1 and passed > 0:
        mid = (passed + failed) // 2
        t = attempt(mid)
        tries.append(t)
        if t.passed:
            passed = mid
        else:
            failed = mid
    return passed, tries
