#!/usr/bin/env bash
# Dataset generation benchmark: dl-driver vs DLIO 2.0.0 vs fio, in one run. Installs DLIO 2.0.0 into its own venv
# (outside the project's dependencies, the way ../shared/scripts/dlio-peer.sh does), builds dl-driver, and writes
# benches/results/generate.json and the generation section of benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

export DLIO_VENV=${DLIO_VENV:-$cache/dlio200}
peer=../shared/scripts/dlio-peer.sh
[ -f "$peer" ] || { echo "needs $peer (the DLIO 2.0.0 installer)" >&2; exit 1; }
bash "$peer"
command -v fio >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null; }
ensure_venv
install_wheel
"$venv/bin/python" benches/generate_vs_dlio.py --dlio "$DLIO_VENV/bin/dlio_benchmark" --dl-driver "$venv/bin/dl-driver" \
  --command "benches/generate_vs_dlio.sh" "$@"
