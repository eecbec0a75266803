#!/usr/bin/env python3
"""Checkpointing a real PyTorch state_dict on a local disk, side by side in one run: dl-driver's
``save_checkpoint`` / ``load_checkpoint`` against ``torch.save`` / ``torch.load`` and torch.distributed.checkpoint's
``FileSystemWriter`` / ``FileSystemReader``, and DCP through dl-driver's ``StorageWriter`` / ``StorageReader``.

Run it through benches/torch_checkpoint_vs_peers.sh. The state is a model of float32 Linear layers of about
--gib GiB (bf16 adds nothing to what is measured: bytes are bytes). Every save is timed around the call, in this
process, writing a new folder under --work (on disk, not tmpfs), with the same durability on both sides of a row:
"+ fsync" rows flush the files and their folder to the device (dl-driver ``fsync=True``, ``os.fsync`` after
``torch.save``, DCP ``sync_files=True``), the others leave them in the page cache. ``sync`` runs before every timed
save (untimed), so no run pays for an earlier one's dirty pages. Loads read the last save's files back, warm (in the
page cache, for every tool alike), into a fresh state. The tools alternate every repeat; every run is published.
Writes benches/results/torch_checkpoint.json and its section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import results_md  # benches/results_md.py, beside this script
import torch
import torch.distributed.checkpoint as dcp

from dl_driver.torch import StorageReader, StorageWriter, load_checkpoint, save_checkpoint

GIB = 1 << 30
S3_BUCKET = "dl-driver-torchckpt"


def make_state(gib: float) -> dict[str, torch.Tensor]:
    width = 8192
    layers = max(1, round(gib * GIB / (width * width * 4)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    return model.state_dict()


def fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def savers(state: dict[str, torch.Tensor]) -> dict[str, Callable[[Path, bool], None]]:
    """Each tool's save of ``state`` into a new folder, with or without fsync."""

    def ours(folder: Path, sync: bool) -> None:
        save_checkpoint(f"file://{folder}", state, step=1, fsync=sync)

    def torch_save(folder: Path, sync: bool) -> None:
        folder.mkdir()
        with open(folder / "state.pt", "wb") as f:
            torch.save(state, f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if sync:
            fsync_tree(folder)

    def dcp_fs(folder: Path, sync: bool) -> None:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=sync), no_dist=True)

    def dcp_ours(folder: Path, sync: bool) -> None:
        dcp.save(state, storage_writer=StorageWriter(f"file://{folder}", sync_files=sync), no_dist=True)

    return {
        "dl-driver save_checkpoint": ours,
        "torch.save": torch_save,
        "dcp.save FileSystemWriter": dcp_fs,
        "dcp.save dl-driver StorageWriter": dcp_ours,
    }


#: fio's settings for the device's write limit: buffered with the file fsynced at the end, and O_DIRECT queued.
FIO_WRITES = {
    "fio buffered + end_fsync": ["--ioengine=psync", "--end_fsync=1"],
    "fio O_DIRECT libaio iodepth 8": ["--ioengine=libaio", "--direct=1", "--iodepth=8"],
}
LIMIT = "disk write limit (fio, the faster setting)"


def fio_write(folder: Path, size: int, settings: list[str]) -> float:
    """GiB/s of `fio --rw=write` of `size` bytes (down to whole 8 MiB writes) into a new file under `folder` (fio's own runtime,
    which holds the final fsync)."""
    target = folder / "fio.bin"
    size = size // (8 << 20) * (8 << 20)  # whole 8 MiB writes
    args = ["fio", "--name=limit", "--rw=write", "--bs=8M", f"--size={size}", f"--filename={target}",
            "--output-format=json", *settings]
    done = subprocess.run(args, capture_output=True, text=True)
    target.unlink(missing_ok=True)
    if done.returncode:
        raise RuntimeError(f"exit status {done.returncode} of {shlex.join(args)}: {done.stderr.strip()[-300:]}")
    write = json.loads(done.stdout[done.stdout.index("{") :])["jobs"][0]["write"]
    if write["io_bytes"] < size:
        raise RuntimeError(f"{shlex.join(args)} wrote {write['io_bytes']} bytes, expected {size}")
    return float(write["bw_bytes"]) / GIB


MEMORY_SCRIPT = """
import json, sys, torch
from dl_driver.torch import load_checkpoint, save_checkpoint
uri, gib, phase = sys.argv[1], float(sys.argv[2]), sys.argv[3]
# VmHWM, this process's own peak (ru_maxrss starts from the parent's at exec).
peak = lambda: 1024 * int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
if phase == "save":
    state = {f"layer{i}": torch.ones(1 << 28) for i in range(round(gib))}  # 1 GiB float32 tensors
    before = peak()
    save_checkpoint(uri, state, step=1)
else:
    before = peak()
    state = load_checkpoint(uri)
size = sum(t.numel() * t.element_size() for t in state.values())
print(json.dumps({"state": size, "before": before, "after": peak()}))
"""


def memory_peaks(folder: Path, gib: int) -> dict[str, dict[str, float]]:
    """Peak resident memory of saving and of loading a `gib` GiB state, each in a fresh process: what the call
    added to the process's peak beyond the state (saving: the state exists before; loading: it is created)."""
    out = {}
    for phase in ("save", "load"):
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, f"file://{folder}", str(gib), phase],
                              capture_output=True, text=True, check=True)
        got = json.loads(done.stdout)
        added = got["after"] - got["before"] - (got["state"] if phase == "load" else 0)
        out[phase] = {"state_GiB": got["state"] / GIB, "added_beyond_state_MiB": added / (1 << 20)}
    shutil.rmtree(folder, ignore_errors=True)
    return out


def loaders(template: dict[str, torch.Tensor]) -> dict[str, Callable[[Path], Any]]:
    def empty() -> dict[str, torch.Tensor]:
        return {k: torch.empty_like(v) for k, v in template.items()}

    return {
        "dl-driver save_checkpoint": lambda folder: load_checkpoint(f"file://{folder}"),
        "torch.save": lambda folder: torch.load(folder / "state.pt", weights_only=True),
        "dcp.save FileSystemWriter": lambda folder: dcp.load(
            empty(), storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True
        ),
        "dcp.save dl-driver StorageWriter": lambda folder: dcp.load(
            empty(), storage_reader=StorageReader(f"file://{folder}"), no_dist=True
        ),
    }


def s3_runs(state: dict[str, torch.Tensor], repeats: int, size: int) -> dict[str, dict[str, list[float]]]:
    """Saves and loads of `state` on SeaweedFS S3 ($DL_DRIVER_TEST_SEAWEED_ENDPOINT): dl-driver's save_checkpoint /
    load_checkpoint vs s3torchconnector's S3Checkpoint writer + torch.save / reader + torch.load, alternating; GiB/s
    of state per run. Each save writes a new key; loads read the last save back."""
    import boto3
    from s3torchconnector import S3Checkpoint, S3ClientConfig

    endpoint = os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    if S3_BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=S3_BUCKET)
    options = {"endpoint_url": endpoint, "region": region}
    connector = S3Checkpoint(region=region, endpoint=endpoint, s3client_config=S3ClientConfig(force_path_style=True))

    def ours_save(prefix: str) -> None:
        save_checkpoint(f"s3://{S3_BUCKET}/{prefix}", state, step=1, storage_options=options)

    def ours_load(prefix: str) -> Any:
        return load_checkpoint(f"s3://{S3_BUCKET}/{prefix}", storage_options=options)

    def connector_save(prefix: str) -> None:
        with connector.writer(f"s3://{S3_BUCKET}/{prefix}/state.pt") as writer:
            torch.save(state, writer)

    def connector_load(prefix: str) -> Any:
        with connector.reader(f"s3://{S3_BUCKET}/{prefix}/state.pt") as reader:
            return torch.load(reader, weights_only=True)

    tools = {"dl-driver save_checkpoint": (ours_save, ours_load),
             "s3torchconnector S3Checkpoint + torch.save": (connector_save, connector_load)}
    runs: dict[str, dict[str, list[float]]] = {"S3 save": {}, "S3 load": {}}
    for repeat in range(repeats):
        for tool, (save, load) in tools.items():
            prefix = f"{tool.split()[0]}-{repeat}-{time.monotonic_ns()}"
            started = time.perf_counter()
            save(prefix)
            runs["S3 save"].setdefault(tool, []).append(size / GIB / (time.perf_counter() - started))
            started = time.perf_counter()
            load(prefix)
            runs["S3 load"].setdefault(tool, []).append(size / GIB / (time.perf_counter() - started))
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=S3_BUCKET, Key=item["Key"])
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-torchckpt"), help="scratch folder on disk")
    parser.add_argument("--gib", type=float, default=1.0, help="state size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 rows (SeaweedFS)")
    parser.add_argument("--memory-gib", type=int, default=4, help="state size of the peak-memory runs (0: skip)")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    state = make_state(args.gib)
    size = sum(t.numel() * t.element_size() for t in state.values())
    save, load = savers(state), loaders(state)
    runs: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats):
        os.sync()
        limit = max(fio_write(args.work, size, settings) for settings in FIO_WRITES.values())
        runs.setdefault("save + fsync", {}).setdefault(LIMIT, []).append(limit)
        for sync in (True, False):
            for tool, run in save.items():
                folder = args.work / f"{tool.replace(' ', '_')}-{repeat}-{int(sync)}"
                os.sync()
                started = time.perf_counter()
                run(folder, sync)
                seconds = time.perf_counter() - started
                runs.setdefault(f"save{' + fsync' if sync else ''}", {}).setdefault(tool, []).append(size / GIB / seconds)
                if not sync:
                    started = time.perf_counter()
                    load[tool](folder)
                    seconds = time.perf_counter() - started
                    runs.setdefault("load (warm)", {}).setdefault(tool, []).append(size / GIB / seconds)
                shutil.rmtree(folder)
    if not args.no_s3:
        runs.update(s3_runs(state, args.repeats, size))
    memory = memory_peaks(args.work / "memory", args.memory_gib) if args.memory_gib else {}
    medians = {phase: {tool: statistics.median(v) for tool, v in tools.items()} for phase, tools in runs.items()}
    result = {"command": args.command, "state_GiB": size / GIB, "repeats": args.repeats, "GiB_per_second": runs,
              "peak_memory": memory,
              "median_GiB_per_second": medians}
    rows = []
    for phase, tools in medians.items():
        reference = tools.get("torch.save", tools.get("s3torchconnector S3Checkpoint + torch.save", 0.0))
        for tool, median in tools.items():
            every = ", ".join(f"{v:.2f}" for v in runs[phase][tool])
            rows.append(f"| {phase} | {tool} | {median:.2f} | {median / reference:.2f}x | {every} |")
    section = "\n".join([
        "<!-- torch_checkpoint:begin -->",
        "## Checkpointing a real PyTorch state (issue: framework integration)",
        "",
        (
            f"Command: `{args.command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({os.cpu_count()} CPUs). "
            f"A {size / GIB:.2f} GiB state_dict of float32 Linear layers written to a new folder on the local disk "
            "(--work), each save timed around the call in one process; `sync` (untimed) before every save; "
            "'+ fsync' rows flush every file and its folder on both sides (dl-driver `fsync=True`, `os.fsync` after "
            "`torch.save`, DCP `sync_files=True` for FileSystemWriter and the dl-driver StorageWriter alike); loads read "
            "the unsynced save's files back from the page cache into a fresh state. Medians of "
            f"{args.repeats} alternating repeats, GiB/s of state; the ratio is against torch.save in the same row "
            "group (on S3: s3torchconnector's S3Checkpoint writer/reader around torch.save/torch.load, on SeaweedFS on "
            "loopback, a new key per save, loads of the last save). The disk's write limit is fio writing the same "
            "bytes in 8 MiB writes, the faster of buffered with `--end_fsync=1` and O_DIRECT libaio at iodepth 8, "
            "before each repeat. Targets (issue): >= 3x torch.save + fsync; "
            ">= 1x s3torchconnector on S3; restore at least as fast as torch.load."
        ),
        "",
        "| phase | tool | GiB/s | vs torch.save (S3: vs S3Checkpoint) | runs (GiB/s) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *(
            f"Peak memory, {m['state_GiB']:.0f} GiB state of float32 tensors, a fresh process per phase: {phase} added "
            f"{m['added_beyond_state_MiB']:.0f} MiB to the process's peak resident memory beyond the state."
            for phase, m in memory.items()
        ),
        "<!-- torch_checkpoint:end -->",
    ])
    results_md.save("torch_checkpoint", result, section)
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
