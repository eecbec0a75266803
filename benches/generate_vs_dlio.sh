#!/usr/bin/env bash
# Dataset generation benchmark: dl-driver vs DLIO 2.0.0 (1 process and one MPI rank per CPU) vs fio, in one run.
# Installs DLIO 2.0.0 into its own venv (outside the project's dependencies, the way ../shared/scripts/dlio-peer.sh
# does) and Open MPI's mpirun, builds dl-driver, and writes benches/results/generate.json and the generation section
# of benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
# dlio-peer.sh installs Open MPI only with a new venv; DLIO's MPI runs need mpirun.
command -v mpirun >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin >/dev/null; }
ensure_fio
ensure_venv
install_wheel
"$venv/bin/python" benches/generate_vs_dlio.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/generate_vs_dlio.sh${*:+ $*}" "$@"
