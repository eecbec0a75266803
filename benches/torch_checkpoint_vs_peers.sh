#!/usr/bin/env bash
# Checkpointing a real PyTorch state_dict on the local disk: dl-driver's save_checkpoint/load_checkpoint vs
# torch.save/torch.load and torch.distributed.checkpoint (its FileSystemWriter, and dl-driver's StorageWriter), with
# and without fsync, and on SeaweedFS S3 vs s3torchconnector's S3Checkpoint, in one run. Starts SeaweedFS when it is
# not running, builds dl-driver and writes benches/results/torch_checkpoint.json and its section of benches/RESULTS.md. Options go to benches/torch_checkpoint_vs_peers.py (e.g. --gib 2 --repeats 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

ensure_fio
ensure_venv "torch>=2.2" s3torchconnector boto3
install_wheel
if ! scripts/servers.sh status seaweedfs >/dev/null; then
  scripts/servers.sh start seaweedfs
  trap 'scripts/servers.sh stop seaweedfs' EXIT
fi
eval "$(scripts/servers.sh env)"
"$venv/bin/python" benches/torch_checkpoint_vs_peers.py --command "benches/torch_checkpoint_vs_peers.sh${*:+ $*}" "$@"
