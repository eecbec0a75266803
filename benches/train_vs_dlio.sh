#!/usr/bin/env bash
# Training throughput benchmark: dl-driver vs DLIO 2.0.0 on the same files in the page cache, against the page-cache
# read limit at the same reader count (fio and os.readv), plus dl-driver's engine overhead per step and AU. Installs
# DLIO 2.0.0 into its own venv (outside the project's dependencies, the way ../shared/scripts/dlio-peer.sh does) and
# fio, builds dl-driver, and writes benches/results/train.json and the training section of benches/RESULTS.md. Options
# go to benches/train_vs_dlio.py (e.g. --repeats 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
ensure_fio
ensure_venv pyyaml
install_wheel
"$venv/bin/python" benches/train_vs_dlio.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/train_vs_dlio.sh${*:+ $*}" "$@"
