#!/usr/bin/env python3
"""Checkpoint write and read throughput, side by side in one run: dl-driver vs fio, DLIO 2.0.0 and s3dlio.

Run it through benches/checkpoint_vs_peers.sh, which installs the peers and starts the servers. Every dl-driver save
is a checkpoint-only `dl-driver run` writing one checkpoint (one file, random bytes); its rate is the bytes / duration
of that save in dl_driver_report.json (process start-up excluded). The cases, each the median of --repeats
alternating runs per tool after one untimed round, in GiB/s:

1. file:// on the scratch disk, fsync on: dl-driver's save vs `fio --rw=write --end_fsync=1` of the same size (fio's
   own runtime, which includes the final fsync), each right after deleting its previous checkpoint. Then reads:
   dl_driver.checkpoint.verify (the manifest and file reads, with the CRC-32C check, that checkpoint loads use) vs
   `fio --rw=read`, cold (page cache dropped first) and warm (straight after the cold read).
2. DLIO 2.0.0, which checkpoints only inside training: one epoch over a tiny npz dataset it generated, then an
   epoch-end checkpoint of the same model size (torch.save, no fsync); its time is per_epoch_stats.json "ckpt1"
   end - start. dl-driver's save runs with fsync off to match. Each tool runs right after deleting its previous
   checkpoint, without the memory warm-up of case 1 (DLIO's checkpoint starts seconds into its run).
3. s3:// on SeaweedFS: dl-driver's save vs s3dlio's streaming MultipartUploadWriter (same part size and parts in
   flight as dl-driver, writing a random buffer made beforehand, zero-copy) and vs s3dlio's checkpoint API
   (PyCheckpointStore.save of the same buffer).

Writes benches/results/checkpoint.json and the checkpoint section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import dl_driver
import s3dlio
from botocore.client import BaseClient

import results_md  # benches/results_md.py, beside this script
from memory_state import warm_memory

GIB = 1024**3
MIB = 1024**2
CHECKPOINT = "global_epoch1_step1"  # the name of the one checkpoint a checkpoint-only run writes
CHECKPOINT_ONLY = [
    "workload=default", "++workload.workflow.generate_data=False", "++workload.workflow.train=False",
    "++workload.workflow.evaluation=False", "++workload.workflow.checkpoint=True",
    "++workload.checkpoint.num_checkpoints_write=1", "++workload.checkpoint.num_checkpoints_read=0",
    "++workload.checkpoint.time_between_checkpoints=0",
]
DLIO_DATASET = [
    "workload=default", "++workload.dataset.format=npz", "++workload.dataset.num_files_train=4",
    "++workload.dataset.num_files_eval=0", "++workload.dataset.num_samples_per_file=1",
    "++workload.dataset.record_length=4096", "++workload.dataset.num_subfolders_train=0",
    "++workload.dataset.num_subfolders_eval=0", "++workload.workflow.evaluation=False",
]
DLIO_CHECKPOINT = [
    "++workload.workflow.generate_data=False", "++workload.workflow.train=True", "++workload.workflow.checkpoint=True",
    "++workload.train.epochs=1", "++workload.train.computation_time=0",
    "++workload.checkpoint.checkpoint_after_epoch=1", "++workload.checkpoint.epochs_between_checkpoints=1",
    "++workload.checkpoint.num_layers=0",  # the model file only (2.0.0 adds a 25 MB layer file by default)
]
DLIO_ENV = {**os.environ, "DFTRACER_ENABLE": "0"}  # no pydftracer start-up or trace files
PART_SIZE = 8 * MIB  # dl-driver's default part_size and max_in_flight, given to s3dlio too
PARTS_IN_FLIGHT = 8
BUCKET = "checkpoint-bench"
WRITE_TARGET = 0.9  # x fio
DLIO_TARGET = 3.0
S3_TARGET = 1.0


def dl_driver_args(dl_driver: str, folder: str, out: Path, size: int, fsync: bool,
                   options: dict[str, str]) -> list[str]:
    return [
        dl_driver, "run", *CHECKPOINT_ONLY, f"++workload.model.model_size_bytes={size}",
        f"++workload.checkpoint.fsync={fsync}", f"++workload.checkpoint.checkpoint_folder={folder}",
        f"++workload.output.folder={out}", *[f"++workload.storage.storage_options.{k}={v}" for k, v in options.items()],
    ]


def dl_driver_save(args: list[str], out: Path) -> float:
    """Runs a checkpoint-only dl-driver command; the bytes/s of its save."""
    subprocess.run(args, check=True, capture_output=True, text=True)
    report = json.loads((out / "dl_driver_report.json").read_text())
    save = next(c for c in report["checkpoints"] if c["kind"] == "save")
    return save["bytes"] / save["duration"]


def dl_driver_load(folder: str) -> float:
    start = time.perf_counter()
    read = dl_driver.checkpoint.verify(folder, CHECKPOINT)
    return read / (time.perf_counter() - start)


def fio_args(path: Path, size: int, mode: str) -> list[str]:
    """mode: write (fsync at the end), cold or warm read."""
    rw = {"write": ["--rw=write", "--end_fsync=1"], "cold": ["--rw=read"], "warm": ["--rw=read", "--invalidate=0"]}
    return ["fio", "--name=ckpt", *rw[mode], "--bs=4M", f"--size={size}", f"--filename={path}", "--output-format=json"]


def fio(path: Path, size: int, mode: str) -> float:
    out = subprocess.run(fio_args(path, size, mode), check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    return job["write" if mode == "write" else "read"]["bw_bytes"]


def dlio_args(dlio: str, data: Path, ckpt: Path, out: Path, size: int) -> list[str]:
    return [
        dlio, *DLIO_DATASET, f"++workload.dataset.data_folder={data}", *DLIO_CHECKPOINT,
        f"++workload.checkpoint.model_size={size}", f"++workload.checkpoint.checkpoint_folder={ckpt}",
        f"++workload.output.folder={out}", f"hydra.run.dir={out}",
    ]


def dlio_generate(dlio: str, data: Path, work: Path) -> None:
    """DLIO writes its own tiny training set; 2.0.0 also needs a valid/ folder to exist."""
    out = work / "dlio-generate"
    args = [dlio, *DLIO_DATASET, f"++workload.dataset.data_folder={data}", "++workload.workflow.generate_data=True",
            "++workload.workflow.train=False", "++workload.workflow.checkpoint=False",
            f"++workload.checkpoint.checkpoint_folder={out / 'checkpoints'}", f"++workload.output.folder={out}",
            f"hydra.run.dir={out}"]
    subprocess.run(args, cwd=work, check=True, capture_output=True, text=True, env=DLIO_ENV)
    (data / "valid").mkdir(exist_ok=True)
    shutil.rmtree(out)


def dlio_save(args: list[str], ckpt: Path, out: Path) -> float:
    """Runs a DLIO 2.0.0 training epoch with an epoch-end checkpoint; the bytes/s of the checkpoint."""
    subprocess.run(args, cwd=out.parent, check=True, capture_output=True, text=True, env=DLIO_ENV)
    stats = json.loads((out / "per_epoch_stats.json").read_text())["1"]["ckpt1"]
    seconds = (dt.datetime.fromisoformat(stats["end"]) - dt.datetime.fromisoformat(stats["start"])).total_seconds()
    return sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / seconds


def drop_caches() -> bool:
    """Syncs and drops the page cache; False where that is not permitted."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def fresh(path: Path) -> None:
    """Removes what a previous repeat wrote at path and waits until the disk has settled."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)


def alternate(steps: list[tuple[str, Callable[[], float]]], repeats: int) -> dict[str, list[float]]:
    """Runs the steps in order, one untimed round and then repeats timed ones (so tools alternate); the rates."""
    rates: dict[str, list[float]] = {name: [] for name, _ in steps}
    for repeat in range(repeats + 1):
        for name, step in steps:
            rate = step()
            if repeat:
                rates[name].append(rate)
    return rates


def row(case: str, ours: list[float], peer: str, theirs: list[float], target: float | None, note: str = "") -> dict:
    ratio = statistics.median(ours) / statistics.median(theirs)
    return {
        "case": case,
        "dl_driver_GiB_s": round(statistics.median(ours) / GIB, 3),
        "peer": peer,
        "peer_GiB_s": round(statistics.median(theirs) / GIB, 3),
        "ratio": round(ratio, 2),
        "target_ratio": target,
        "met": None if target is None else ratio >= target,
        "note": note,
        "dl_driver_runs_GiB_s": [round(r / GIB, 3) for r in ours],
        "peer_runs_GiB_s": [round(r / GIB, 3) for r in theirs],
    }


def file_cases(dl_driver: str, work: Path, size: int, repeats: int, cold: bool) -> list[dict]:
    folder, out, fio_file = work / "dl-driver", work / "dl-driver-out", work / "fio.bin"
    save = dl_driver_args(dl_driver, f"file://{folder}", out, size, True, {})

    def ours_write() -> float:
        fresh(folder)
        warm_memory(size + GIB)
        return dl_driver_save(save, out)

    def fio_write() -> float:
        fresh(fio_file)
        warm_memory(size + GIB)
        return fio(fio_file, size, "write")

    def ours_read() -> float:
        return dl_driver_load(f"file://{folder}")

    def fio_read() -> float:
        return fio(fio_file, size, "warm")

    def after_dropping_caches(read: Callable[[], float]) -> Callable[[], float]:
        def step() -> float:
            drop_caches()
            return read()
        return step

    # Writes first, each into memory just touched and freed; a cache drop in between would slow the next write for
    # any tool (see the note in markdown()).
    rates = alternate([("dl-driver write", ours_write), ("fio write", fio_write)], repeats)
    # Each tool's warm read comes straight after its cold one, which leaves the file in the page cache.
    if cold:
        reads = [("dl-driver cold", after_dropping_caches(ours_read)), ("dl-driver warm", ours_read),
                 ("fio cold", after_dropping_caches(lambda: fio(fio_file, size, "cold"))), ("fio warm", fio_read)]
    else:
        reads = [("dl-driver warm", ours_read), ("fio warm", fio_read)]
    rates |= alternate(reads, repeats)
    label = f"file://, {size / GIB:g} GiB"
    rows = [row(f"{label}, write + fsync", rates["dl-driver write"], "fio --rw=write --end_fsync=1",
                rates["fio write"], WRITE_TARGET)]
    for mode in ("cold", "warm") if cold else ("warm",):
        rows.append(row(f"{label}, read ({mode})", rates[f"dl-driver {mode}"], "fio --rw=read", rates[f"fio {mode}"],
                        None, "dl-driver reads with dl_driver.checkpoint.verify, CRC-32C checked"))
    shutil.rmtree(folder)
    fio_file.unlink()
    return rows


def dlio_case(dl_driver: str, dlio: str, work: Path, size: int, repeats: int) -> list[dict]:
    """DLIO's epoch-end checkpoint vs dl-driver's save without fsync, each right after deleting its previous
    checkpoint (as in the fio case). A variant after a cache drop and a pause was dropped: its rates contradicted
    what it was meant to show (dl-driver wrote about twice as fast as here, not slower), so what it measured is
    not known."""
    data, ckpt, out = work / "dlio-data", work / "dlio-checkpoints", work / "dlio-out"
    folder, ours_out = work / "dl-driver", work / "dl-driver-out"
    dlio_generate(dlio, data, work)
    theirs = dlio_args(dlio, data, ckpt, out, size)
    ours = dl_driver_args(dl_driver, f"file://{folder}", ours_out, size, False, {})

    def dlio_step() -> float:
        fresh(ckpt)
        fresh(out)
        return dlio_save(theirs, ckpt, out)

    def ours_step() -> float:
        fresh(folder)
        return dl_driver_save(ours, ours_out)

    rates = alternate([("DLIO", dlio_step), ("dl-driver", ours_step)], repeats)
    rows = [row(f"file://, {size / GIB:g} GiB, write, no fsync (as DLIO), each right after deleting its last",
                rates["dl-driver"], "DLIO 2.0.0 epoch-end checkpoint (torch.save)", rates["DLIO"], DLIO_TARGET,
                "DLIO writes zeros (torch.randint(high=1)), dl-driver random bytes")]
    for path in (data, ckpt, out, folder):
        shutil.rmtree(path)
    return rows


def empty_prefix(client: BaseClient, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


def vacuum(endpoint: str) -> None:
    """Has SeaweedFS reclaim the space of deleted objects now (its master listens on the S3 port + 1): it keeps it
    until a vacuum, so without this every write lands on a fuller server (rates drifted down ~15% over a run, and
    repeated runs filled the disk)."""
    url = urllib.parse.urlsplit(endpoint)
    master = f"{url.scheme}://{url.hostname}:{url.port + 1}"
    urllib.request.urlopen(f"{master}/vol/vacuum?garbageThreshold=0.01", timeout=300).read()


def s3_options(endpoint: str) -> dict[str, str]:
    return {"endpoint_url": endpoint, "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1"}


def s3_cases(dl_driver: str, endpoint: str, work: Path, size: int, repeats: int) -> list[dict]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3dlio.configure_s3(endpoint_url=endpoint, region="us-east-1")
    payload = os.urandom(size)
    out = work / "dl-driver-out"
    ours = dl_driver_args(dl_driver, f"s3://{BUCKET}/dl-driver", out, size, True, s3_options(endpoint))

    def ours_step() -> float:
        empty_prefix(client, "dl-driver/")
        vacuum(endpoint)
        return dl_driver_save(ours, out)

    def multipart_step() -> float:
        empty_prefix(client, "s3dlio-multipart/")
        vacuum(endpoint)
        start = time.perf_counter()
        uri = f"s3://{BUCKET}/s3dlio-multipart/model_states-0.pt"
        writer = s3dlio.MultipartUploadWriter.from_uri(uri, part_size=PART_SIZE, max_in_flight=PARTS_IN_FLIGHT)
        writer.write(payload)
        written = writer.close()["total_bytes"]
        return written / (time.perf_counter() - start)

    def store_step() -> float:
        empty_prefix(client, "s3dlio-store/")
        vacuum(endpoint)
        start = time.perf_counter()
        s3dlio.PyCheckpointStore(f"s3://{BUCKET}/s3dlio-store").save(1, 1, "torch", payload)
        return size / (time.perf_counter() - start)

    rates = alternate([("dl-driver", ours_step), ("multipart", multipart_step), ("store", store_step)], repeats)
    empty_prefix(client, "")
    vacuum(endpoint)
    label = f"s3:// SeaweedFS, {size / GIB:g} GiB, write"
    multipart = f"s3dlio MultipartUploadWriter ({PART_SIZE // MIB} MiB parts, {PARTS_IN_FLIGHT} in flight)"
    return [
        row(label, rates["dl-driver"], multipart, rates["multipart"], S3_TARGET),
        row(label, rates["dl-driver"], "s3dlio PyCheckpointStore.save", rates["store"], S3_TARGET),
    ]


def show(args: list[str]) -> str:
    return shlex.join([Path(args[0]).name, *args[1:]])


def commands(dl_driver: str, dlio: str, work: Path, file_size: int, s3_size: int) -> dict[str, str]:
    """The measured commands, as run (S3 credentials shown as the environment variables they come from)."""
    s3 = {"endpoint_url": "$DL_DRIVER_TEST_SEAWEED_ENDPOINT", "access_key_id": "$AWS_ACCESS_KEY_ID",
          "secret_access_key": "$AWS_SECRET_ACCESS_KEY", "region": "us-east-1"}
    out, folder, fio_file = work / "dl-driver-out", f"file://{work / 'dl-driver'}", work / "fio.bin"
    return {
        "dl-driver file, fsync": show(dl_driver_args(dl_driver, folder, out, file_size, True, {})),
        "dl-driver file, no fsync": show(dl_driver_args(dl_driver, folder, out, file_size, False, {})),
        "dl-driver s3": show(dl_driver_args(dl_driver, f"s3://{BUCKET}/dl-driver", out, s3_size, True, s3)),
        "fio write": show(fio_args(fio_file, file_size, "write")),
        "fio read, cold (after sync; echo 3 > /proc/sys/vm/drop_caches)": show(fio_args(fio_file, file_size, "cold")),
        "fio read, warm": show(fio_args(fio_file, file_size, "warm")),
        "DLIO 2.0.0 (DFTRACER_ENABLE=0)": show(
            dlio_args(dlio, work / "dlio-data", work / "dlio-checkpoints", work / "dlio-out", file_size)),
    }


def markdown(result: dict) -> str:
    lines = [
        "<!-- checkpoint:begin -->",
        "## Checkpointing (issue: checkpointing)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). Medians of {result['repeats']} "
        "alternating repeats, GiB/s (2^30 bytes). One checkpoint per dl-driver run, random bytes; its rate is the "
        "save's bytes / duration in dl_driver_report.json (start-up excluded). fio's rate is its own (its runtime "
        "includes `end_fsync`); DLIO's is the checkpoint file's bytes / per_epoch_stats.json `ckpt1` end - start; "
        "s3dlio's is timed around the call. Every case starts with one untimed round (s3dlio sets up its client "
        "then). Before each S3 write the tool's previous objects are deleted and SeaweedFS is vacuumed, so every "
        "write starts on the same server state. Over plain http both dl-driver and s3dlio hash each part into its "
        "signature. Each write first deletes that tool's previous checkpoint (as a job keeping one checkpoint would); "
        "the fio and dl-driver writes with fsync then start right after the checkpoint's size + 1 GiB of memory was touched "
        "and freed: on this VM the first writes into memory the host has taken back (free page reporting, after a "
        "few idle seconds or a `drop_caches`) can run several times slower (fio measured 0.4 GiB/s in that state "
        "against 2-3 GiB/s), so the writes run before any cache is dropped. The DLIO case has no such warm-up for "
        "either tool (DLIO's checkpoint starts seconds into its run, after its start-up and an epoch, by when memory "
        "touched before it may have been handed back): each runs right after deleting its previous checkpoint. "
        + ("Cold reads follow `sync; echo 3 > /proc/sys/vm/drop_caches`; warm reads come straight after them."
           if result["cold_reads"] else "Dropping the page cache is not permitted here: reads are warm only."),
        "",
        "| case | dl-driver GiB/s | peer | peer GiB/s | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        target = "" if r["target_ratio"] is None else f">= {r['target_ratio']}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['case']} | {r['dl_driver_GiB_s']} | {r['peer']}{note} | {r['peer_GiB_s']} | "
                     f"{r['ratio']}x | {target} | {met} |")
    lines += ["", "Per-run GiB/s (dl-driver; peer), in run order:", ""]
    lines += [f"- {r['case']} vs {r['peer']}: {r['dl_driver_runs_GiB_s']}; {r['peer_runs_GiB_s']}"
              for r in result["rows"]]
    lines += ["", "Commands (paths as run; s3dlio: `MultipartUploadWriter.from_uri(uri, part_size=8 MiB, "
              "max_in_flight=8)`, `write(buffer)`, `close()`; `PyCheckpointStore(prefix).save(1, 1, 'torch', buffer)`, "
              "the buffer made beforehand with `os.urandom`):", ""]
    lines += [f"- {name}: `{command}`" for name, command in result["commands"].items()]
    lines.append("<!-- checkpoint:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dlio", required=True, help="the dlio_benchmark command of DLIO 2.0.0")
    parser.add_argument("--dl-driver", default=shutil.which("dl-driver"), help="the dl-driver command")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-ckptbench"),
                        help="scratch folder on the disk")
    parser.add_argument("--file-gib", type=float, default=4, help="checkpoint size on file:// and for DLIO")
    parser.add_argument("--s3-gib", type=float, default=1, help="checkpoint size on S3")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and case (median reported)")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    file_size, s3_size = int(args.file_gib * GIB), int(args.s3_gib * GIB)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    free = shutil.disk_usage(args.work).free
    if free < 3 * file_size + 2 * GIB:
        sys.exit(f"{args.work}: {free / GIB:.1f} GiB free, needs {3 * file_size / GIB + 2:g} (3 checkpoints + 2 GiB)")
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, {shutil.disk_usage(args.work).total // GIB} GiB disk"
    cold = drop_caches()
    rows = file_cases(args.dl_driver, args.work, file_size, args.repeats, cold)
    rows += dlio_case(args.dl_driver, args.dlio, args.work, file_size, args.repeats)
    rows += s3_cases(args.dl_driver, os.environ["DL_DRIVER_TEST_SEAWEED_ENDPOINT"], args.work, s3_size, args.repeats)
    shutil.rmtree(args.work)
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "repeats": args.repeats,
        "cold_reads": cold,
        "rows": rows,
        "commands": commands(args.dl_driver, args.dlio, args.work, file_size, s3_size),
    }
    results_md.save("checkpoint", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
