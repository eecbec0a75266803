#!/usr/bin/env python3
"""Storage read throughput, side by side in one run on the same objects: dl-driver against the page-cache limit
(aligned os.readv, fio with --invalidate=0 --iomem=mmap), fio O_DIRECT, s3dlio, boto3 and the Azure SDK.

Run it through benches/storage_vs_peers.sh, which installs the peers and starts the servers. Every case alternates its
tools between repeats (one untimed pass each, then REPEATS timed passes) and reports each tool's median and every
run. Timing boundary: every tool called from Python (dl-driver's Store.read_objects, os.readv, s3dlio, boto3, the
Azure SDK) is timed with time.perf_counter from the call to its return; fio by its own reported runtime. dl-driver
and os.readv read into page-aligned buffers reused across objects, s3dlio, boto3 and the Azure SDK return a fresh
buffer per object. read_objects' own timer (inside Rust) is kept as a note. It writes benches/results/storage.json and
the storage section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dl_driver

import results_md  # benches/results_md.py, beside this script

GIB = 1024**3
MIB = 1024**2
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPEATS = 5
# fio O_DIRECT sweep (--ioengine=libaio): numjobs x iodepth; block sizes are the object size and 1 MiB.
SWEEP_JOBS, SWEEP_DEPTHS = (1, 2, 4), (1, 8, 32)
Client = Callable[[], tuple[float, float]]  # one timed call: (units, seconds)


def interleaved(clients: dict[str, Client]) -> dict[str, list[float] | str]:
    """Every timed rate (units/s) per client, after one untimed warm-up pass each, alternating clients between
    repeats so that background work (page-cache state, server-side flushing after an upload) does not favour
    whoever runs last. A client that fails gets its error message instead of rates."""
    rates: dict[str, list[float]] = {name: [] for name in clients}
    failed: dict[str, str] = {}
    for repeat in range(REPEATS + 1):
        for name, fn in clients.items():
            if name in failed:
                continue
            try:
                units, seconds = fn()
            except Exception as e:  # a peer that cannot run here is reported, not hidden
                failed[name] = f"{type(e).__name__}: {str(e)[:160]}"
                continue
            if repeat:
                rates[name].append(units / seconds)
    return {name: failed.get(name) or rates[name] for name in clients}


@dataclass
class DlDriverReads:
    """dl-driver's Store.read_objects(keys, concurrency) as a client, timed like every Python-called tool: wall time
    from the call to its return. Its own timer (Rust, inside the call: no argument conversion or GIL hand-off) is kept
    per call in `rust`, a note only. `units`: "bytes" or "objects"."""

    store: dl_driver.storage.Store
    keys: list[str]
    concurrency: int
    units: str = "bytes"
    rust: list[float] = field(default_factory=list)

    def __call__(self) -> tuple[float, float]:
        start = time.perf_counter()
        report = self.store.read_objects(self.keys, self.concurrency)
        seconds = time.perf_counter() - start
        self.rust.append(report[self.units] / report["seconds"])
        return report[self.units], seconds

    def rust_runs(self) -> list[float]:
        """The timed calls' Rust-timer rates (interleaved() makes one untimed call first)."""
        return self.rust[1:]


def make_files(root: Path, count: int, size: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(size)
    names = []
    for i in range(count):
        path = root / f"obj_{i:05d}.bin"
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(block)
        names.append(path.name)
    return names


def python_page_cache(root: Path, names: list[str], size: int) -> tuple[float, float]:
    """The page-cache limit from Python: one readv per file into a page-aligned (mmap) buffer reused across files;
    perf_counter around the loop (the buffer is made before)."""
    buf = mmap.mmap(-1, size)
    start = time.perf_counter()
    total = 0
    for name in names:
        fd = os.open(root / name, os.O_RDONLY)
        try:
            total += os.readv(fd, [buf])
        finally:
            os.close(fd)
    return total, time.perf_counter() - start


def fio_args(root: Path, bs: int, jobs: int, direct: bool, depth: int | None = None) -> list[str]:
    """fio reading every file under root (each of `jobs` threads reads them all), `bs` per request: psync (one
    synchronous pread at a time per job) unless `depth` is given, then libaio with that many requests in flight."""
    args = [
        "fio", "--name=read", f"--opendir={root}", "--rw=read", f"--bs={bs}", f"--numjobs={jobs}", "--group_reporting",
        "--output-format=json", "--thread",
    ]
    args += ["--ioengine=psync"] if depth is None else ["--ioengine=libaio", f"--iodepth={depth}"]
    args += ["--direct=1"] if direct else ["--invalidate=0", "--iomem=mmap"]
    return args


def fio(args: list[str]) -> tuple[float, float]:
    """Runs fio; (bytes read by all jobs, fio's own runtime: bytes / its bandwidth)."""
    stdout = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(stdout[stdout.index("{") :])["jobs"][0]["read"]  # fio prints "opendir added N files" first
    return job["io_bytes"], job["io_bytes"] / job["bw_bytes"]


def fio_small(root: Path) -> tuple[float, float]:
    """fio opening, reading and closing one file at a time (--openfiles=1); (128 KiB objects, fio's runtime)."""
    args = ["fio", "--name=small", f"--opendir={root}", "--rw=read", "--bs=128k", "--ioengine=psync", "--openfiles=1",
            "--file_service_type=sequential", "--invalidate=0", "--iomem=mmap", "--thread", "--output-format=json"]
    stdout = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(stdout[stdout.index("{") :])["jobs"][0]["read"]
    return job["io_bytes"] / (128 * 1024), job["io_bytes"] / job["bw_bytes"]


def s3dlio_get_many(uris: list[str], in_flight: int) -> tuple[float, float]:
    import s3dlio

    start = time.perf_counter()
    results = s3dlio.get_many(uris, max_in_flight=in_flight)
    total = sum(len(memoryview(r[1] if isinstance(r, tuple) else r)) for r in results)
    return total, time.perf_counter() - start


def boto3_get(endpoint: str, bucket: str, keys: list[str], threads: int) -> tuple[float, float]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda k: len(client.get_object(Bucket=bucket, Key=k)["Body"].read()), keys))
    return total, time.perf_counter() - start


def azure_get(endpoint: str, container: str, keys: list[str], threads: int) -> tuple[float, float]:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(endpoint, credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY})
    client = service.get_container_client(container)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda k: len(client.download_blob(k).readall()), keys))
    return total, time.perf_counter() - start


def median(runs: list[float] | str) -> float | None:
    return statistics.median(runs) if isinstance(runs, list) and runs else None


def row(case: str, ours: list[float], peer: str, peers: dict[str, list[float] | str], target: float | None,
        note: str = "", rust: list[float] | None = None) -> dict:
    """One comparison, GiB/s: dl-driver's median against the highest median of `peers` (one tool, or the tools
    whose max is a limit), with every run of each; a peer that failed (its error message instead of runs) is
    noted. rust: dl-driver's rates by its own timer, a note."""
    medians = {name: median(runs) for name, runs in peers.items()}
    theirs = max((m for m in medians.values() if m), default=None)
    ratio = statistics.median(ours) / theirs if theirs else None
    notes = [note] if note else []
    if len(peers) > 1:
        notes.append(", ".join(f"{name} {m / GIB:.2f}" if m else f"{name} n/a" for name, m in medians.items()) + " GiB/s")
    notes += [f"{name} failed here: {runs}" for name, runs in peers.items() if isinstance(runs, str)]
    return {
        "case": case,
        "dl_driver_GiB_s": round(statistics.median(ours) / GIB, 3),
        "peer": peer,
        "peer_GiB_s": round(theirs / GIB, 3) if theirs else None,
        "ratio": round(ratio, 3) if ratio else None,
        "target_ratio": target,
        "met": (ratio >= target) if (ratio and target) else None,
        "note": "; ".join(notes),
        "dl_driver_runs_GiB_s": [round(r / GIB, 3) for r in ours],
        "peer_runs_GiB_s": {name: [round(r / GIB, 3) for r in runs] if isinstance(runs, list) else runs
                            for name, runs in peers.items()},
        "dl_driver_rust_timer_GiB_s": round(statistics.median(rust) / GIB, 3) if rust else None,
    }


def ours_runs(case: str, measured: dict[str, list[float] | str]) -> list[float]:
    ours = measured["dl-driver"]
    if isinstance(ours, str):
        raise RuntimeError(f"{case}: dl-driver failed: {ours}")
    return ours


def direct_sweep(root: Path, size: int) -> tuple[list[dict], list[str]]:
    """One fio O_DIRECT run per setting of the sweep (libaio; numjobs x iodepth x bs in {object size, 1 MiB});
    the runs (GiB/s) and the best setting's arguments."""
    runs = []
    for bs, jobs, depth in itertools.product(sorted({size, MIB}), SWEEP_JOBS, SWEEP_DEPTHS):
        args = fio_args(root, bs, jobs, direct=True, depth=depth)
        units, seconds = fio(args)
        runs.append({"bs": bs, "numjobs": jobs, "iodepth": depth, "GiB_s": round(units / seconds / GIB, 3),
                     "args": args})
    best = max(runs, key=lambda r: r["GiB_s"])
    return [{k: v for k, v in r.items() if k != "args"} for r in runs], best["args"]


def local_cases(work: Path, rows: list[dict], sweeps: dict[str, list[dict]]) -> None:
    for size, count in ((MIB, 512), (8 * MIB, 128)):
        root = work / f"local_{size // MIB}MiB"
        names = make_files(root, count, size)
        label = f"{size // MIB} MiB objects x {count}"
        file_store = dl_driver.storage.open(f"file://{root}")
        # 1 thread: dl-driver, os.readv and fio in turn, each repeat (the untimed first pass warms the page cache).
        ours = DlDriverReads(file_store, names, 1)
        measured = interleaved({
            "dl-driver": ours,
            "os.readv": partial(python_page_cache, root, names, size),
            "fio mmap": partial(fio, fio_args(root, size, 1, direct=False)),
        })
        rows.append(row(f"file:// warm, 1 thread, {label}", ours_runs(label, measured),
                        "page-cache limit (max of aligned os.readv, fio mmap)",
                        {name: measured[name] for name in ("os.readv", "fio mmap")}, 0.8, rust=ours.rust_runs()))
        # 2 in flight: dl-driver, fio with 2 jobs, s3dlio get_many in turn.
        ours2 = DlDriverReads(file_store, names, 2)
        measured = interleaved({
            "dl-driver": ours2,
            "fio mmap, 2 jobs": partial(fio, fio_args(root, size, 2, direct=False)),
            "s3dlio get_many": partial(s3dlio_get_many, [f"file://{root}/{n}" for n in names], 2),
        })
        runs = ours_runs(label, measured)
        for case, peer, target in ((f"file:// warm, 2 threads, {label}", "fio mmap, 2 jobs", 0.8),
                                   (f"file:// warm vs s3dlio get_many (2 in flight), {label}", "s3dlio get_many", 1.0)):
            rows.append(row(case, runs, peer, {peer: measured[peer]}, target, rust=ours2.rust_runs()))
        # O_DIRECT: dl-driver's read_objects(keys, 1) is one thread issuing one pread of the whole object (rounded
        # up to 4 KiB) at a time: fio psync, 1 job, bs = object size is the same concurrency and request size.
        sweeps[label], best = direct_sweep(root, size)
        direct = DlDriverReads(dl_driver.storage.open(f"direct://{root}"), names, 1)
        same = fio_args(root, size, 1, direct=True)
        measured = interleaved({"dl-driver": direct, "fio same": partial(fio, same), "fio best": partial(fio, best)})
        runs = ours_runs(label, measured)
        rows.append(row(f"direct://, 1 thread, {label}", runs,
                        f"fio --direct=1 as dl-driver reads: psync, 1 job, bs = {size // MIB} MiB (1 request in flight)",
                        {"fio same": measured["fio same"]}, None, rust=direct.rust_runs()))
        setting = " ".join(a for a in best if a.split("=")[0] in ("--bs", "--numjobs", "--iodepth"))
        rows.append(row(f"direct://, 1 thread, {label}", runs, f"fio --direct=1 --ioengine=libaio, best of the sweep "
                        f"({setting})", {"fio best": measured["fio best"]}, 0.9, rust=direct.rust_runs()))
    small_root = work / "local_128KiB"
    names = make_files(small_root, 4000, 128 * 1024)
    ours = DlDriverReads(dl_driver.storage.open(f"file://{small_root}"), names, 1, units="objects")
    # The same-run limit: fio opening, reading and closing one file at a time (--openfiles=1), bytes / 128 KiB.
    measured = interleaved({"dl-driver": ours, "fio": partial(fio_small, small_root)})
    runs = ours_runs("128 KiB objects", measured)
    fio_runs = measured["fio"]
    rows.append({"case": "file:// warm 128 KiB objects, 1 thread", "dl_driver_objects_s": round(statistics.median(runs)),
                 "fio_objects_s": round(median(fio_runs)) if isinstance(fio_runs, list) else None,
                 "target_objects_s": 60000, "met": statistics.median(runs) >= 60000,
                 "note": fio_runs if isinstance(fio_runs, str) else "",
                 "dl_driver_runs_objects_s": [round(r) for r in runs],
                 "fio_runs_objects_s": [round(r) for r in fio_runs] if isinstance(fio_runs, list) else None,
                 "dl_driver_rust_timer_objects_s": round(statistics.median(ours.rust_runs()))})


def upload(store: dl_driver.storage.Store, count: int, size: int) -> list[str]:
    block = os.urandom(size)
    keys = [f"obj_{i:05d}.bin" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, block), keys))
    return keys


def remote_rows(case: str, measured: dict[str, list[float] | str], ours: DlDriverReads, rows: list[dict]) -> None:
    runs = ours_runs(case, measured)
    for peer, rates in measured.items():
        if peer != "dl-driver":
            rows.append(row(case, runs, peer, {peer: rates}, 1.0, rust=ours.rust_runs()))


def s3_cases(endpoint: str, rows: list[dict]) -> None:
    import boto3
    import s3dlio

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    store = dl_driver.storage.open("s3://bench/get", endpoint_url=endpoint)
    keys = upload(store, 64, 8 * MIB)
    full = [f"get/{k}" for k in keys]
    s3dlio.configure_s3(endpoint_url=endpoint, region="us-east-1")
    ours = DlDriverReads(store, keys, 8)
    measured = interleaved({
        "dl-driver": ours,
        "boto3, 8 threads": partial(boto3_get, endpoint, "bench", full, 8),
        "s3dlio get_many, 8 in flight": partial(s3dlio_get_many, [f"s3://bench/{k}" for k in full], 8),
    })
    remote_rows("S3 GET, SeaweedFS, 8 MiB x 64, 8 in flight", measured, ours, rows)


def azure_cases(endpoint: str, rows: list[dict]) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    try:
        BlobServiceClient(endpoint, credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY}).create_container("bench")
    except ResourceExistsError:
        pass
    store = dl_driver.storage.open("az://bench/get", account_name="devstoreaccount1", account_key=AZURITE_KEY, endpoint=endpoint)
    keys = upload(store, 32, 8 * MIB)
    full = [f"get/{k}" for k in keys]
    # s3dlio has no shared-key mode for Azure; it is given the endpoint and a SAS token in its environment variables.
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    os.environ["AZURE_SAS_TOKEN"] = generate_container_sas(
        "devstoreaccount1", "bench", account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True), expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    os.environ["AZURE_BLOB_ENDPOINT_URL"] = os.environ["AZURE_STORAGE_ENDPOINT"] = endpoint
    ours = DlDriverReads(store, keys, 8)
    measured = interleaved({
        "dl-driver": ours,
        "azure-storage-blob, 8 threads": partial(azure_get, endpoint, "bench", full, 8),
        "s3dlio get_many, 8 in flight": partial(s3dlio_get_many, [f"az://bench/{k}" for k in full], 8),
    })
    remote_rows("Azure GET, Azurite, 8 MiB x 32, 8 in flight", measured, ours, rows)


def markdown(result: dict) -> str:
    lines = [
        "<!-- storage:begin -->",
        "## Storage reads (issue: storage layer)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). GiB/s, medians of {REPEATS} runs per",
        "tool; within each case the tools take turns every repeat, after one untimed pass each (every run is listed",
        "below). Timing boundary: every tool called from Python (dl-driver's `Store.read_objects`, `os.readv`, s3dlio,",
        "boto3, azure-storage-blob) is timed with `time.perf_counter` from the call to its return; fio by its own",
        "reported runtime (bytes / its bandwidth). dl-driver reads into page-aligned buffers it reuses across objects",
        "(`os.readv` into one reused mmap buffer); s3dlio, boto3 and azure-storage-blob return a freshly allocated",
        "buffer per object. dl-driver's rate by read_objects' own timer (inside Rust, without the Python call around",
        "it) is noted as \"Rust timer\".",
        "",
        "O_DIRECT: `read_objects(keys, 1)` on direct:// is one OS thread that opens each file with O_DIRECT and reads",
        "it with one pread of the whole object (rounded up to 4 KiB) into a reused page-aligned buffer: one request of",
        "the object's size in flight at a time. It is compared with fio at that setting (`--ioengine=psync --numjobs=1",
        "--bs=<object size> --direct=1`; fio keeps the files open, dl-driver opens each) and, for the ratio and",
        "target, with the best setting of a sweep of `--ioengine=libaio --direct=1` over numjobs 1, 2, 4 x iodepth 1,",
        "8, 32 x bs in {object size, 1 MiB} (each job reads every file; one run per setting, listed below; the best",
        "is then re-run in turn with the others).",
        "",
        "| case | dl-driver | peer / limit | peer | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = ["", "Every run, in run order:", ""]
    for r in result["rows"]:
        if "dl_driver_objects_s" in r:
            fio, ours = r["fio_objects_s"], r["dl_driver_objects_s"]
            note = f" ({r['note']})" if r["note"] else ""
            shown = ("n/a", "") if fio is None else (f"{fio:,} objects/s", f"{ours / fio:.2f}")
            lines.append(f"| {r['case']} | {ours:,} objects/s (Rust timer {r['dl_driver_rust_timer_objects_s']:,}) | "
                         f"fio, one file open at a time{note} | {shown[0]} | {shown[1]} | "
                         f">= {r['target_objects_s']:,}/s | {'yes' if r['met'] else 'NO'} |")
            runs.append(f"- {r['case']} (objects/s): dl-driver {r['dl_driver_runs_objects_s']}; "
                        f"fio {r['fio_runs_objects_s']}")
            continue
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        peer = "n/a" if r["peer_GiB_s"] is None else r["peer_GiB_s"]
        target = "" if r["target_ratio"] is None else f">= {r['target_ratio']}"
        note = f" ({r['note']})" if r["note"] else ""
        rust = "" if r["dl_driver_rust_timer_GiB_s"] is None else f" (Rust timer {r['dl_driver_rust_timer_GiB_s']})"
        lines.append(f"| {r['case']} | {r['dl_driver_GiB_s']}{rust} | {r['peer']}{note} | {peer} | "
                     f"{r['ratio'] or ''} | {target} | {met} |")
        runs.append(f"- {r['case']} vs {r['peer']} (GiB/s): dl-driver {r['dl_driver_runs_GiB_s']}; "
                    + "; ".join(f"{name} {v}" for name, v in r["peer_runs_GiB_s"].items()))
    lines += runs
    for label, sweep in result["direct_sweeps"].items():
        lines += ["", f"fio O_DIRECT sweep, {label} (libaio, one run each, GiB/s):", ""]
        lines += [f"- bs {s['bs'] // MIB} MiB, numjobs {s['numjobs']}, iodepth {s['iodepth']}: {s['GiB_s']}"
                  for s in sweep]
    lines.append("<!-- storage:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-bench"), help="scratch directory on a real disk")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    rows: list[dict] = []
    sweeps: dict[str, list[dict]] = {}
    local_cases(args.work, rows, sweeps)
    s3_cases(os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"], rows)
    azure_cases(os.environ["DL_DRIVER_TEST_AZURITE_ENDPOINT"], rows)
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {shutil.disk_usage(args.work).total // GIB} GiB disk",
        "rows": rows,
        "direct_sweeps": sweeps,
    }
    results_md.save("storage", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
