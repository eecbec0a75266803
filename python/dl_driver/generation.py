"""Dataset generation: write a workload's dataset in DLIO's layout and format, on any storage backend."""

from __future__ import annotations

from typing import Any

from dl_driver import _core, launcher
from dl_driver.config import Config, as_config


def generate(
    config: Config | str | dict[str, Any],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    skip_existing: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Generates this rank's share of the dataset (rank r writes files r, r + P, ...).

    Args:
        config: a Config, or anything ``load_dlio_config`` takes.
        rank, world_size: default to the launcher's (mpirun, torchrun, Slurm), else 0 of 1.
        skip_existing: keep files already present; files only ever appear complete, so this resumes an interrupted run.
        threads: files produced at once (default: the number of CPUs).
        progress: print a progress line to stderr.

    Returns:
        ``{files_written, files_skipped, bytes_written, seconds}``.
    """
    cfg = as_config(config)
    size = launcher.world_size(world_size)
    return _core.generate(cfg.to_json(redact=False), launcher.rank(rank, size), size, skip_existing, threads, progress)
