#!/usr/bin/env bash
# Compute emulation under reader load (benches/compute_exactness.py): builds and installs dl-driver, then measures the
# emulated compute against the configured time on unet3d-, resnet50- and cosmoflow-shaped data in the page cache.
# Writes benches/results/compute.json and the compute section of benches/RESULTS.md. Options go to the script
# (e.g. --read-threads 8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_venv
install_wheel
"$venv/bin/python" benches/compute_exactness.py --dl-driver "$venv/bin/dl-driver" \
  --command "benches/compute_exactness.sh${*:+ $*}" "$@"
