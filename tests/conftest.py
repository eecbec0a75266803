"""Shared fixtures: a runner for the installed ``dl-driver`` command."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests_support import DL_DRIVER, SERVERS_SH, start_servers

# torch (with torch._dynamo, which loads Triton) before TensorFlow: both bring LLVM, and once TensorFlow's copy is
# loaded, a torch optimizer's first use loads Triton's and aborts the process ("LLVM ERROR: inconsistency in registered
# CommandLine options"); the other order works. The session imports both (test_tf.py, then
# test_torch_checkpoint.py). docs/training.md tells users the same.
with contextlib.suppress(ImportError):
    import torch._dynamo  # noqa: F401


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the installed dl-driver command in an empty temporary directory."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")}
        full_env.update(env or {})
        return subprocess.run(
            [DL_DRIVER, *args], capture_output=True, text=True, cwd=cwd or tmp_path, env=full_env, timeout=60, check=False
        )

    return run


SERVER_VARIABLES = (
    "DL_DRIVER_TEST_MOTO_ENDPOINT",
    "DL_DRIVER_TEST_SEAWEED_ENDPOINT",
    "DL_DRIVER_TEST_AZURITE_ENDPOINT",
    "DL_DRIVER_TEST_AZURITE_BIN",
)


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, str]]:
    """The test servers' endpoints: from the environment (scripts/test.sh starts them), else started here; at the
    end it stops only the servers it started (one already running, another session's, keeps running)."""
    started: list[str] = []
    if not all(os.environ.get(v) for v in SERVER_VARIABLES):
        started = start_servers()
        env = subprocess.run([str(SERVERS_SH), "env"], check=True, capture_output=True, text=True)
        for line in env.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name:
                os.environ[name] = value.strip("'\"")
    yield {
        "moto": os.environ["DL_DRIVER_TEST_MOTO_ENDPOINT"],
        "seaweedfs": os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"],
        "azurite": os.environ["DL_DRIVER_TEST_AZURITE_ENDPOINT"],
    }
    if started:
        subprocess.run([str(SERVERS_SH), "stop", *started], check=True, timeout=120)
