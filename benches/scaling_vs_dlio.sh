#!/usr/bin/env bash
# Multi-rank training benchmark: dl-driver and DLIO 2.0.0 each under `mpirun -np 1, 2, 4, 8` on the same files in
# the page cache, against the 2-reader page-cache limit, plus dl-driver's per-step overhead with the MPI barrier and
# what Open MPI's core binding does. Installs DLIO 2.0.0 (its own venv, with Open MPI), fio, mpi4py, builds dl-driver,
# and writes benches/results/scaling.json and the scaling section of benches/RESULTS.md. Options go to
# benches/scaling_vs_dlio.py (e.g. --ranks 1 2 --repeats 3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
ensure_fio
ensure_venv pyyaml "mpi4py>=3.1"
install_wheel
"$venv/bin/python" benches/scaling_vs_dlio.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/scaling_vs_dlio.sh${*:+ $*}" "$@"
