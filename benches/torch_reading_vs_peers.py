#!/usr/bin/env python3
"""Reading a unet3d-shaped npz dataset into a PyTorch loop, side by side in one run: dl-driver's ``make_dataloader``
against a plain ``torch.utils.data.Dataset`` that ``np.load``s each file (``DataLoader(num_workers=4)``), DLIO 2.0.0's
pytorch reader, and on S3 (SeaweedFS on loopback) s3torchconnector's ``S3IterableDataset``.

Run it through benches/torch_reading_vs_peers.sh. One dataset of --files npz files of 8 MiB (one sample each, as
DLIO's unet3d), written by dl-driver to the disk and to a SeaweedFS bucket. Every loader hands the loop batches of 4
samples as tensors (``x`` with the sample's dtype and shape): the loop touches nothing else, as a training step with
no compute would. Each Python loader is built once with its workers persistent, iterates one untimed epoch (worker
start-up, first touch of its memory), then its timed epochs: the time from asking for the first batch to receiving
the last, the same boundary for every Python loader. DLIO 2.0.0 runs its own training loop on the same files with
``read_threads: 4``, batch 4 and computation_time 0 (``dlio_benchmark``, one process): its summary's
train_throughput_mean_samples_per_second over epochs 2 and 3 (epoch 1 starts its workers) -- its inner time, the
same boundary. Page cache: every file is read before each run, for every tool alike. On S3 each timed epoch also
records the CPUs the loop's processes and the SeaweedFS server used (from /proc): they share the machine's CPUs, so
a client's CPU is taken from the server. The tools alternate every repeat; every run is published. Writes benches/results/torch_reading.json and its section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import results_md  # benches/results_md.py, beside this script
import torch
import train_vs_dlio as tv  # benches/train_vs_dlio.py: the DLIO runs and the page-cache helpers
from torch.utils.data import DataLoader, Dataset

import dl_driver
from dl_driver.torch import make_dataloader

MIB = 1 << 20
BATCH = 4
WORKERS = 4
BUCKET = "dl-driver-reading"
OURS = "dl-driver make_dataloader (DLIO's settings: 4 reads in flight, no worker processes)"
PLAIN_TARGET = 3.0  # x the plain Dataset (page cache)
S3_TARGET = 2.0  # x s3torchconnector (S3)


class NpzFiles(Dataset[dict[str, torch.Tensor]]):
    """The plain baseline: one npz file per sample, loaded with np.load (as DLIO's npz reader does)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        with np.load(self.files[i]) as npz:
            return {"x": torch.from_numpy(npz["x"]), "y": torch.from_numpy(npz["y"])}


def npz_object(reader: Any) -> dict[str, torch.Tensor]:
    """s3torchconnector's transform: the object's bytes loaded as an npz."""
    with np.load(io.BytesIO(reader.read())) as npz:
        return {"x": torch.from_numpy(npz["x"]), "y": torch.from_numpy(npz["y"])}


def timed_epochs(name: str, loader: Iterable[dict[str, torch.Tensor]], epochs: int, expected: int,
                 cpu: dict[str, list[float]] | None = None) -> list[float]:
    """One untimed epoch, then `epochs` timed ones; each epoch's samples/s. Every epoch must see `expected` samples.
    With `cpu`, each timed epoch's CPUs in use (CPU seconds / epoch seconds) are appended to cpu["client"] (this
    process and its worker processes) and cpu["server"] (the SeaweedFS server's processes)."""
    rates = []
    for epoch in range(epochs + 1):
        samples = 0
        used = (cpu_seconds(family(os.getpid())), cpu_seconds(server_pids())) if cpu is not None else (0.0, 0.0)
        start = time.perf_counter()
        for batch in loader:
            samples += len(batch["x"])
        seconds = time.perf_counter() - start
        if samples != expected:
            raise RuntimeError(f"{name}: epoch {epoch} gave {samples} samples, expected {expected}")
        if epoch:
            rates.append(samples / seconds)
            if cpu is not None:
                cpu["client"].append((cpu_seconds(family(os.getpid())) - used[0]) / seconds)
                cpu["server"].append((cpu_seconds(server_pids()) - used[1]) / seconds)
    return rates


def processes() -> dict[int, tuple[str, int]]:
    """Every process's (command name, parent pid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except (FileNotFoundError, ProcessLookupError):
                continue
            found[int(entry.name)] = (head.split("(", 1)[1], int(tail.split()[1]))
    return found


def family(pid: int) -> list[int]:
    """`pid` and its descendants (DataLoader workers)."""
    table, members = processes(), [pid]
    for member in members:
        members += [p for p, (_, parent) in table.items() if parent == member]
    return members


def server_pids() -> list[int]:
    return [p for p, (name, _) in processes().items() if name == "weed"]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the live processes `pids` so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def workload(data_folder: str, files: int, options: dict[str, str] | None = None) -> dict[str, Any]:
    settings = tv.workload("npz", files, 1, 8 * MIB, BATCH, "pytorch", epochs=3, read_threads=WORKERS)
    settings["dataset"]["data_folder"] = data_folder
    if options:
        settings["storage"] = {"storage_options": options}
    return {"model": "unet3d_reading", **settings}


def run_dlio(bench: tv.Bench, case: tv.Case) -> float:
    """DLIO 2.0.0's samples/s on the case (page cache), over its epochs 2 and 3."""
    tv.warm(bench, case)
    out = bench.out(case, tv.DLIO)
    bench.train(bench.train_commands(case)[tv.DLIO], out)
    rates = tv.summary_metric(out)["train_throughput_samples_per_second"]
    if len(rates) != 3:
        raise RuntimeError(f"{out}/summary.json: {len(rates)} epochs' throughput, expected 3")
    return statistics.mean(rates[1:])


def page_cache(args: argparse.Namespace) -> dict[str, Any]:
    """The page-cache case: dl-driver (its default, and 4 worker processes) vs the plain Dataset vs DLIO."""
    bench = tv.Bench(str(Path(sys.executable).with_name("dl-driver")), args.dlio, args.work)
    case = tv.Case("unet3d_reading", f"unet3d-shaped npz ({args.files} files x 8 MiB, batch {BATCH})", tv.DL_DRIVER,
                   tv.workload("npz", args.files, 1, 8 * MIB, BATCH, "pytorch", epochs=3, read_threads=WORKERS))
    generation = bench.generate(case)
    files = tv.train_files(bench, case)
    cfg = dl_driver.load_dlio_config(str(bench.config(case)))
    mib = sum(f.stat().st_size for f in files) / len(files) / MIB
    loaders: dict[str, Callable[[], Iterable[dict[str, torch.Tensor]]]] = {
        OURS: lambda: make_dataloader(cfg),
        "dl-driver make_dataloader (num_workers=4)": lambda: make_dataloader(
            cfg, num_workers=WORKERS, persistent_workers=True),
        "plain Dataset + np.load (4 workers)": lambda: DataLoader(
            NpzFiles(files), batch_size=BATCH, num_workers=WORKERS, persistent_workers=True),
    }
    runs: dict[str, list[float]] = {name: [] for name in [*loaders, tv.DLIO]}
    limit: list[float] = []
    for _ in range(args.repeats):
        for name, make in loaders.items():
            tv.warm(bench, case)
            runs[name] += timed_epochs(name, make(), args.epochs, len(files))
        runs[tv.DLIO].append(run_dlio(bench, case))
        tv.warm(bench, case)
        read, seconds = tv.read_files_threads(files, WORKERS)
        limit.append(read / seconds / MIB)
    shutil.rmtree(bench.data(case))
    return {"label": case.label, "generation": generation, "sample_mib": mib, "runs": runs,
            "limit_mib_s": limit,
            "target": {"what": "the plain Dataset", "ratio": PLAIN_TARGET,
                       "against": ["plain Dataset + np.load (4 workers)"]}}


def s3(args: argparse.Namespace) -> dict[str, Any]:
    """The S3 case on SeaweedFS: dl-driver (its default, and 4 worker processes) vs S3IterableDataset (4 workers)."""
    import boto3
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    endpoint = os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="unet3d/"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    options = {"endpoint_url": endpoint, "region": region}
    cfg = dl_driver.load_dlio_config(workload(f"s3://{BUCKET}/unet3d", args.files, options))
    generated = dl_driver.generate(cfg)
    prefix = f"s3://{BUCKET}/unet3d/train/"

    def connector(workers: int) -> DataLoader[dict[str, torch.Tensor]]:
        dataset = S3IterableDataset.from_prefix(
            prefix, region=region, endpoint=endpoint, transform=npz_object, enable_sharding=True,
            s3client_config=S3ClientConfig(force_path_style=True))
        return DataLoader(dataset, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)

    loaders: dict[str, Callable[[], Iterable[dict[str, torch.Tensor]]]] = {
        OURS: lambda: make_dataloader(cfg),
        "dl-driver make_dataloader (num_workers=4)": lambda: make_dataloader(
            cfg, num_workers=WORKERS, persistent_workers=True),
        "s3torchconnector S3IterableDataset (4 workers)": lambda: connector(WORKERS),
        "s3torchconnector S3IterableDataset (num_workers=0)": lambda: connector(0),
    }
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    cpu: dict[str, dict[str, list[float]]] = {name: {"client": [], "server": []} for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            runs[name] += timed_epochs(name, make(), args.epochs, args.files, cpu[name])
    return {"label": f"unet3d-shaped npz on SeaweedFS S3 ({args.files} objects x 8 MiB, batch {BATCH})",
            "generation": {"generated": generated}, "sample_mib": 8.0, "runs": runs, "cpu": cpu, "limit_mib_s": [],
            "target": {"what": "s3torchconnector at its faster setting", "ratio": S3_TARGET,
                       "against": ["s3torchconnector S3IterableDataset (4 workers)",
                                   "s3torchconnector S3IterableDataset (num_workers=0)"]}}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "<!-- torch_reading:begin -->",
        "## Reading into a PyTorch loop (issue: framework integration)",
        "",
        (
            f"`{result['command']}` on {result['date']}, {result['machine']}: samples/s handed to the loop (batches "
            f"of {BATCH} tensors), the median of every timed epoch ({result['repeats']} alternating repeats x "
            f"{result['epochs']} epochs for the Python loaders; DLIO: its summary, one run per repeat). See the "
            "script's docstring for the timing boundary."
        ),
        "",
    ]
    for case in result["cases"]:
        headline = OURS
        ours = statistics.median(case["runs"][headline])
        cpu = case.get("cpu")
        columns = " client CPUs | server CPUs |" if cpu else ""
        lines += [f"### {case['label']}", "", f"| loader | samples/s | MiB/s | dl-driver is |{columns} runs |",
                  "|---|---|---|---|" + ("---|---|" if cpu else "") + "---|"]
        for name, rates in case["runs"].items():
            rate = statistics.median(rates)
            ratio = "" if name == headline else f"{ours / rate:.2f}x"
            used = (f" {statistics.median(cpu[name]['client']):.2f} | {statistics.median(cpu[name]['server']):.2f} |"
                    if cpu else "")
            lines.append(f"| {name} | {rate:,.1f} | {rate * case['sample_mib']:,.0f} | {ratio} |{used} "
                         f"{', '.join(f'{r:,.1f}' for r in rates)} |")
        if case["limit_mib_s"]:
            limit = statistics.median(case["limit_mib_s"])
            lines.append(f"| page cache, {WORKERS} threads reading 1 MiB blocks | | {limit:,.0f} | "
                         f"{ours * case['sample_mib'] / limit:.2f} of it | "
                         f"{', '.join(f'{r:,.0f}' for r in case['limit_mib_s'])} |")
        lines.append("")
    if any(case.get("cpu") for case in result["cases"]):
        lines += [
            (
                "CPUs: the median over timed epochs of CPU seconds per second of the loop's process and its worker "
                "processes (client) and of the SeaweedFS server's processes (server), read from /proc; the two "
                f"share the machine's {result['machine']}."
            ),
            "",
        ]
    for case in result["cases"]:
        target = case["target"]
        ours = statistics.median(case["runs"][OURS])
        best = max(statistics.median(case["runs"][name]) for name in target["against"])
        verdict = "met" if ours / best >= target["ratio"] else "NOT met"
        lines.append(f"- {case['label']}: {ours / best:.2f}x {target['what']} (target >= {target['ratio']:g}x: {verdict})")
    lines += ["",
              "<!-- torch_reading:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dlio", required=True, help="the dlio_benchmark command of DLIO 2.0.0")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-readbench"), help="scratch folder on disk")
    parser.add_argument("--files", type=int, default=256, help="npz files of 8 MiB (2 GiB: epochs of 0.5-3 s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per Python loader and repeat")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 case")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    torch.set_num_threads(1)
    cases = [page_cache(args)]
    if not args.no_s3:
        cases.append(s3(args))
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs",
        "repeats": args.repeats,
        "epochs": args.epochs,
        "cases": cases,
    }
    results_md.save("torch_reading", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
