"""The process's place in a launched job (mpirun, torchrun, Slurm): rank and world size from their variables."""

from __future__ import annotations

import os

from dl_driver._core import ConfigError

#: Variables that carry the number of processes, in order of preference.
WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "WORLD_SIZE", "SLURM_NTASKS")
#: Variables that carry this process's rank, matching WORLD_SIZE_VARIABLES.
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "RANK", "SLURM_PROCID")


def _from_env(names: tuple[str, ...], minimum: int) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            if not value.isdigit() or int(value) < minimum:
                raise ConfigError(f"environment variable {name}={value!r}: expected an integer >= {minimum}")
            return int(value)
    return None


def world_size(given: int | None = None) -> int:
    """``given``, else the launcher's process count, else 1."""
    if given is not None:
        if given < 1:
            raise ConfigError(f"world size {given}: expected a process count >= 1")
        return given
    return _from_env(WORLD_SIZE_VARIABLES, 1) or 1


def rank(given: int | None = None, size: int | None = None) -> int:
    """``given``, else the launcher's rank, else 0; checked against the world size."""
    size = world_size(size)
    value = given if given is not None else (_from_env(RANK_VARIABLES, 0) or 0)
    if not 0 <= value < size:
        raise ConfigError(f"rank {value}: expected 0 <= rank < world size {size}")
    return value
