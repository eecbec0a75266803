#!/usr/bin/env bash
# The README's test command: installs what the tests need, starts the storage servers on 127.0.0.1, then runs
# every check and test. Works on a fresh machine; caches (cargo target dir, venv, pip) live outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

step "toolchain and test dependencies"
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
# Multi-rank tests run under real mpirun (Open MPI, with mpi4py built against it) and torchrun (torch, CPU is enough).
# The HTML report is opened in a real headless browser (Debian's chromium).
missing=""
command -v mpirun >/dev/null && command -v mpicc >/dev/null || missing="openmpi-bin libopenmpi-dev"
command -v chromium >/dev/null || missing="$missing chromium"
if [ -n "$missing" ]; then
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
fi
ensure_venv "mpi4py>=3.1" "torch>=2.2" "torchdata>=0.10" "jax>=0.4.30" "pytest>=8" "hypothesis>=6" "pyyaml>=6" "boto3>=1.34" "azure-storage-blob>=12.19" "numpy>=1.26" "h5py>=3.10" "Pillow>=10" "pandas>=2" "tensorflow-cpu>=2.15" \
  "mypy>=2.4" "ruff>=0.17" "jsonschema>=4.20" "matplotlib>=3.8"

step "storage servers (moto, SeaweedFS, Azurite)"
# Servers already running (another session's) are used and left running; only the ones started here are stopped.
started=$(scripts/servers.sh start | tee /dev/stderr | sed -n 's/^\([a-z0-9_-]*\): starting on .*/\1/p' | xargs)
if [ -n "$started" ]; then trap "scripts/servers.sh stop $started" EXIT; fi
eval "$(scripts/servers.sh env)"

step "core module layers (no import cycle, no IO in the pure modules)"
python3 scripts/check_layers.py
step "ruff check python tests scripts"
"$venv/bin/ruff" check python tests scripts
step "ruff format --check python scripts"
"$venv/bin/ruff" format --check python scripts
step "mypy --strict python/dl_driver"
"$venv/bin/mypy" --strict python/dl_driver
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test"
cargo test

step "build and install the wheel"
install_wheel

step "pytest (tests/test_typing.py runs mypy's stubtest: _core.pyi against the installed module)"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest "$@"
