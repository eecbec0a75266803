#!/usr/bin/env bash
# Checkpoint benchmark: dl-driver vs fio (file://, fsync), DLIO 2.0.0 (its epoch-end checkpoint) and s3dlio (S3 on
# SeaweedFS), in one run. Installs the peers (DLIO 2.0.0 into its own venv the way ../shared/scripts/dlio-peer.sh
# does, fio, s3dlio and boto3; all outside the project's dependencies), builds dl-driver, starts the servers, and
# writes benches/results/checkpoint.json and the checkpoint section of benches/RESULTS.md. Options go to
# benches/checkpoint_vs_peers.py (e.g. --repeats 5 --file-gib 2). Run as root for cold reads (it drops the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_dlio_peer
ensure_fio
ensure_venv s3dlio boto3
install_wheel
if ! scripts/servers.sh status >/dev/null; then
  scripts/servers.sh start
  trap 'scripts/servers.sh stop' EXIT
fi
eval "$(scripts/servers.sh env)"
"$venv/bin/python" benches/checkpoint_vs_peers.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/checkpoint_vs_peers.sh${*:+ $*}" "$@"
