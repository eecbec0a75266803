#!/usr/bin/env bash
# Storage read benchmark: dl-driver vs the page-cache limit, fio (page cache and an O_DIRECT sweep), s3dlio, boto3 and
# the Azure SDK, in one run.
# Installs the peers (outside the project's own dependencies), starts the servers, runs storage_vs_peers.py,
# and writes benches/results/storage.json and the storage section of benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_fio
ensure_venv s3dlio boto3 azure-storage-blob
install_wheel
if ! scripts/servers.sh status >/dev/null; then
  scripts/servers.sh start
  trap 'scripts/servers.sh stop' EXIT
fi
eval "$(scripts/servers.sh env)"
"$venv/bin/python" benches/storage_vs_peers.py --command "benches/storage_vs_peers.sh${*:+ $*}" "$@"
