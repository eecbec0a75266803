#!/usr/bin/env bash
# Fidelity with DLIO 2.0.0 (benches/fidelity_vs_dlio.py): each tool trains on every format the other writes, and AU
# and throughput agree when storage is not the bottleneck. Installs DLIO 2.0.0 into its own venv with
# ../shared/scripts/dlio-peer.sh, builds and installs dl-driver, and writes benches/results/fidelity.json and the
# fidelity section of benches/RESULTS.md. Options go to the script (e.g. --repeats 3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
ensure_venv pyyaml
install_wheel
"$venv/bin/python" benches/fidelity_vs_dlio.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/fidelity_vs_dlio.sh${*:+ $*}" "$@"
