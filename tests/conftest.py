"""Shared fixtures: a runner for the installed ``dl-driver`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

DL_DRIVER = shutil.which("dl-driver") or str(Path(sys.executable).with_name("dl-driver"))


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
