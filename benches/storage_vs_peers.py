#!/usr/bin/env python3
"""Storage read throughput, side by side in one run on the same objects: dl-driver against the page-cache limit
(aligned os.readv, fio with --invalidate=0 --iomem=mmap), fio O_DIRECT, s3dlio, boto3 and the Azure SDK.

Run it through benches/storage_vs_peers.sh, which installs the peers and starts the servers. It writes
benches/results/storage.json and the storage section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import dl_driver

import results_md  # benches/results_md.py, beside this script

GIB = 1024**3
MIB = 1024**2
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPEATS = 5


def median_rate(fn: Callable[[], tuple[float, float]]) -> float:
    """Runs fn (returning (units, seconds)) REPEATS times; the median units per second."""
    return statistics.median(units / seconds for units, seconds in (fn() for _ in range(REPEATS)))


def interleaved(clients: dict[str, Callable[[], tuple[float, float]]]) -> dict[str, float | str]:
    """Median rate per client, after one untimed warm-up pass each, alternating clients between repeats so that
    server-side background work (e.g. flushing after an upload) does not favour whoever runs last.
    A client that fails gets its error message instead of a rate."""
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
    return {name: failed.get(name) or statistics.median(rates[name]) for name in clients}


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
    """The page-cache limit from Python: one readv per file into a page-aligned (mmap) buffer."""
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


def fio(root: Path, size: int, jobs: int, direct: bool) -> tuple[float, float]:
    args = [
        "fio", "--name=read", f"--opendir={root}", "--rw=read", f"--bs={size}", "--ioengine=psync",
        f"--numjobs={jobs}", "--group_reporting", "--output-format=json", "--thread",
    ]
    args += ["--direct=1"] if direct else ["--invalidate=0", "--iomem=mmap"]
    stdout = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(stdout[stdout.index("{") :])["jobs"][0]["read"]  # fio prints "opendir added N files" first
    return job["io_bytes"], job["io_bytes"] / job["bw_bytes"]


def fio_small(root: Path) -> tuple[float, float]:
    args = ["fio", "--name=small", f"--opendir={root}", "--rw=read", "--bs=128k", "--ioengine=psync", "--openfiles=1",
            "--file_service_type=sequential", "--invalidate=0", "--iomem=mmap", "--thread", "--output-format=json"]
    stdout = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(stdout[stdout.index("{") :])["jobs"][0]["read"]
    return job["io_bytes"], job["io_bytes"] / job["bw_bytes"]


def dl_driver_read(store: dl_driver.storage.Store, keys: list[str], concurrency: int) -> tuple[float, float]:
    report = store.read_objects(keys, concurrency)
    return report["bytes"], report["seconds"]


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


def row(case: str, ours: float, peer_name: str, peer: float | None, target: float | None, note: str = "") -> dict:
    ratio = ours / peer if peer else None
    return {
        "case": case,
        "dl_driver_GiB_s": round(ours / GIB, 3),
        "peer": peer_name,
        "peer_GiB_s": round(peer / GIB, 3) if peer else None,
        "ratio": round(ratio, 3) if ratio else None,
        "target_ratio": target,
        "met": (ratio >= target) if (ratio and target) else None,
        "note": note,
    }


def local_cases(work: Path, rows: list[dict]) -> None:
    for size, count in ((MIB, 512), (8 * MIB, 128)):
        root = work / f"local_{size // MIB}MiB"
        names = make_files(root, count, size)
        label = f"{size // MIB} MiB objects x {count}"
        file_store = dl_driver.storage.open(f"file://{root}")
        file_store.read_objects(names, 2)  # warm the page cache
        ours = median_rate(lambda: dl_driver_read(file_store, names, 1))
        limit_py = median_rate(lambda: python_page_cache(root, names, size))
        limit_fio = median_rate(lambda: fio(root, size, 1, direct=False))
        limit = max(limit_py, limit_fio)
        rows.append(row(f"file:// warm, 1 thread, {label}", ours, "page-cache limit (max of aligned os.readv, fio mmap)", limit, 0.8,
                        f"os.readv {limit_py / GIB:.2f}, fio {limit_fio / GIB:.2f} GiB/s"))
        ours2 = median_rate(lambda: dl_driver_read(file_store, names, 2))
        fio2 = median_rate(lambda: fio(root, size, 2, direct=False))
        rows.append(row(f"file:// warm, 2 threads, {label}", ours2, "fio mmap, 2 jobs", fio2, 0.8))
        s3dlio_uris = [f"file://{root}/{n}" for n in names]
        try:
            peer = median_rate(lambda: s3dlio_get_many(s3dlio_uris, 2))
            rows.append(row(f"file:// warm vs s3dlio get_many (2 in flight), {label}", ours2, "s3dlio get_many", peer, 1.0))
        except Exception as e:  # a peer that cannot run here is reported, not hidden
            rows.append(row(f"file:// warm vs s3dlio, {label}", ours2, "s3dlio get_many", None, 1.0, f"s3dlio failed: {str(e)[:160]}"))
        direct_store = dl_driver.storage.open(f"direct://{root}")
        ours_d = median_rate(lambda: dl_driver_read(direct_store, names, 1))
        fio_d = median_rate(lambda: fio(root, size, 1, direct=True))
        rows.append(row(f"direct://, 1 thread, {label}", ours_d, "fio --direct=1 (bs = object size)", fio_d, 0.9))
    small_root = work / "local_128KiB"
    names = make_files(small_root, 4000, 128 * 1024)
    store = dl_driver.storage.open(f"file://{small_root}")
    store.read_objects(names, 2)
    objects_per_s = median_rate(lambda: (lambda r: (r["objects"], r["seconds"]))(store.read_objects(names, 1)))
    # The same-run limit: fio opening, reading and closing one file at a time (--openfiles=1), bytes / 128 KiB.
    fio_files = median_rate(lambda: (lambda b, t: (b / (128 * 1024), t))(*fio_small(small_root)))
    rows.append({"case": "file:// warm 128 KiB objects, 1 thread", "dl_driver_objects_s": round(objects_per_s),
                 "fio_objects_s": round(fio_files), "target_objects_s": 60000, "met": objects_per_s >= 60000})


def upload(store: dl_driver.storage.Store, count: int, size: int) -> list[str]:
    block = os.urandom(size)
    keys = [f"obj_{i:05d}.bin" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, block), keys))
    return keys


def remote_rows(case: str, measured: dict[str, float | str], rows: list[dict]) -> None:
    ours = measured.pop("dl-driver")
    if isinstance(ours, str):
        raise RuntimeError(f"{case}: dl-driver failed: {ours}")
    for peer, rate in measured.items():
        if isinstance(rate, str):
            rows.append(row(case, ours, peer, None, 1.0, f"failed here: {rate}"))
        else:
            rows.append(row(case, ours, peer, rate, 1.0))


def s3_cases(endpoint: str, rows: list[dict]) -> None:
    import boto3
    import s3dlio

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    store = dl_driver.storage.open("s3://bench/get", endpoint_url=endpoint)
    keys = upload(store, 64, 8 * MIB)
    full = [f"get/{k}" for k in keys]
    s3dlio.configure_s3(endpoint_url=endpoint, region="us-east-1")
    measured = interleaved({
        "dl-driver": lambda: dl_driver_read(store, keys, 8),
        "boto3, 8 threads": lambda: boto3_get(endpoint, "bench", full, 8),
        "s3dlio get_many, 8 in flight": lambda: s3dlio_get_many([f"s3://bench/{k}" for k in full], 8),
    })
    remote_rows("S3 GET, SeaweedFS, 8 MiB x 64, 8 in flight", measured, rows)


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
    measured = interleaved({
        "dl-driver": lambda: dl_driver_read(store, keys, 8),
        "azure-storage-blob, 8 threads": lambda: azure_get(endpoint, "bench", full, 8),
        "s3dlio get_many, 8 in flight": lambda: s3dlio_get_many([f"az://bench/{k}" for k in full], 8),
    })
    remote_rows("Azure GET, Azurite, 8 MiB x 32, 8 in flight", measured, rows)


def markdown(result: dict) -> str:
    lines = [
        "<!-- storage:begin -->",
        "## Storage reads (issue: storage layer)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). Medians of {REPEATS} runs, GiB/s.",
        "",
        "| case | dl-driver | peer / limit | peer | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "dl_driver_objects_s" in r:
            lines.append(f"| {r['case']} | {r['dl_driver_objects_s']:,} objects/s | fio, one file open at a time | "
                         f"{r['fio_objects_s']:,} objects/s | {r['dl_driver_objects_s'] / r['fio_objects_s']:.2f} | "
                         f">= {r['target_objects_s']:,}/s | {'yes' if r['met'] else 'NO'} |")
            continue
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        peer = "n/a" if r["peer_GiB_s"] is None else r["peer_GiB_s"]
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['case']} | {r['dl_driver_GiB_s']} | {r['peer']}{note} | {peer} | {r['ratio'] or ''} | >= {r['target_ratio']} | {met} |")
    lines.append("<!-- storage:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-bench"), help="scratch directory on a real disk")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    rows: list[dict] = []
    local_cases(args.work, rows)
    s3_cases(os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"], rows)
    azure_cases(os.environ["DL_DRIVER_TEST_AZURITE_ENDPOINT"], rows)
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {shutil.disk_usage(args.work).total // GIB} GiB disk",
        "rows": rows,
    }
    results_md.save("storage", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
