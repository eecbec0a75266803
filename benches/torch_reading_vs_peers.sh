#!/usr/bin/env bash
# Reading a unet3d-shaped npz dataset into a PyTorch loop: dl-driver's make_dataloader vs a plain Dataset doing
# np.load (4 workers) and DLIO 2.0.0's pytorch reader in the page cache, and vs s3torchconnector's S3IterableDataset
# on SeaweedFS S3. Installs DLIO 2.0.0 into its own venv and s3torchconnector into the project's, starts the test
# servers when they are not running, builds dl-driver, and writes benches/results/torch_reading.json and its section
# of benches/RESULTS.md. Options go to benches/torch_reading_vs_peers.py (e.g. --files 32 --repeats 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
ensure_venv "torch>=2.2" s3torchconnector boto3 pyyaml
install_wheel
if ! scripts/servers.sh status seaweedfs >/dev/null; then
  scripts/servers.sh start seaweedfs
  trap 'scripts/servers.sh stop seaweedfs' EXIT
fi
eval "$(scripts/servers.sh env)"
"$venv/bin/python" benches/torch_reading_vs_peers.py --dlio "$DLIO_VENV/bin/dlio_benchmark" \
  --command "benches/torch_reading_vs_peers.sh${*:+ $*}" "$@"
