#!/usr/bin/env python3
"""Training throughput, side by side in one run on the same cached files: dl-driver vs DLIO 2.0.0 vs the page cache.

Run it through benches/train_vs_dlio.sh. Each case is one workload YAML (DLIO 2.0.0 key names, which dl-driver reads
too) that both tools train on with 1 process, computation_time 0 and no evaluation or checkpoints, on one dataset
(dl-driver writes the npz and tfrecord ones, DLIO the hdf5 one: its layout). Every file is read before each timed run,
so both tools read from the page cache. Samples/s is summary.json's train_throughput_mean_samples_per_second, the
median of --repeats alternating runs. The page-cache limit is measured with as many readers as the tools' read_threads,
each reading every training file in 1 MiB reads into a page-aligned buffer: the faster of `fio --rw=read
--ioengine=psync --numjobs=<read_threads> --thread --invalidate=0 --iomem=mmap` (its own runtime) and as many Python
threads calling os.readv (wall time): the limit for a reader with that many threads; the 1-thread os.readv rate
is shown beside it. Engine
measurements (dl-driver only): wall time per step without I/O or compute (synthetic format, dl_driver_report.json),
and AU with 50 ms compute steps. Writes benches/results/train.json and the training section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

import results_md  # benches/results_md.py, beside this script

MIB = 1024**2
KIB = 1024
DLIO = "DLIO 2.0.0"
DL_DRIVER = "dl-driver"
TRAIN_ONLY = [
    "++workload.workflow.generate_data=False", "++workload.workflow.train=True",
    "++workload.workflow.evaluation=False", "++workload.workflow.checkpoint=False",
]
GENERATE_ONLY = [
    "++workload.workflow.generate_data=True", "++workload.workflow.train=False",
    "++workload.workflow.evaluation=False", "++workload.workflow.checkpoint=False",
]
THROUGHPUT = "train_throughput_mean_samples_per_second"
AU = "train_au_mean_percentage"
RATIO_TARGET = 5.0
CACHE_LIMIT_TARGET = 0.7
OVERHEAD_TARGET_US = 50.0
AU_TARGET = 99.5
READ_SIZE = MIB  # of the page-cache limit's reads


def workload(fmt: str, files: int, samples_per_file: int, record_length: int, batch_size: int, loader: str,
             epochs: int = 3, computation_time: float = 0.0, read_threads: int = 4) -> dict:
    """A workload YAML's settings in DLIO 2.0.0 key names (data and checkpoint folders are added per run)."""
    return {
        "framework": "tensorflow" if loader == "tensorflow" else "pytorch",
        "dataset": {
            "format": fmt, "num_files_train": files, "num_files_eval": 0, "num_samples_per_file": samples_per_file,
            "record_length": record_length, "record_length_stdev": 0, "num_subfolders_train": 0,
            "num_subfolders_eval": 0,
        },
        "reader": {"data_loader": loader, "batch_size": batch_size, "read_threads": read_threads},
        "train": {"epochs": epochs, "computation_time": computation_time},
    }


@dataclass(frozen=True)
class Case:
    name: str  # the workload's name, and its data folder's
    label: str
    generator: str  # the tool that writes the dataset
    settings: dict
    in_memory: bool = False  # dl-driver generates the data into memory:// within the timed run's process


COMPARED = [
    Case("unet3d", "unet3d-shaped npz (64 files x 8 MiB, batch 4)", DL_DRIVER,
         workload("npz", 64, 1, 8 * MIB, 4, "pytorch")),
    Case("resnet50", "resnet50-shaped tfrecord (8 files x 1251 x 112 KiB, batch 64)", DL_DRIVER,
         workload("tfrecord", 8, 1251, 114660, 64, "tensorflow")),
    Case("cosmoflow", "cosmoflow-shaped tfrecord (256 files x 2.7 MiB, batch 4)", DL_DRIVER,
         workload("tfrecord", 256, 1, 2828486, 4, "tensorflow")),
    Case("small_hdf5", "small-file hdf5 (1024 files x 64 KiB, batch 16), written by DLIO", DLIO,
         workload("hdf5", 1024, 1, 64 * KIB, 16, "pytorch")),
]
OVERHEAD = Case("engine_overhead", "synthetic, 20000 steps of batch 1, no compute", DL_DRIVER,
                workload("synthetic", 1, 20000, 4 * KIB, 1, "pytorch", epochs=1))
UTILISATION = Case("utilisation", "memory:// store, npz (64 files x 256 KiB, batch 1), computation_time 0.05 s",
                   DL_DRIVER, workload("npz", 64, 1, 256 * KIB, 1, "pytorch", epochs=1, computation_time=0.05),
                   in_memory=True)


class Bench:
    """The scratch folder's layout (configs/, data/, out/) and the tools' commands."""

    def __init__(self, dl_driver: str, dlio: str, work: Path):
        self.dl_driver, self.dlio, self.work = dl_driver, dlio, work

    def data(self, case: Case) -> Path:
        return self.work / "data" / case.name

    def config(self, case: Case) -> Path:
        return self.work / "configs" / "workload" / f"{case.name}.yaml"

    def out(self, case: Case, tool: str) -> Path:
        return self.work / "out" / case.name / tool.split()[0]

    def write_config(self, case: Case) -> dict:
        """Writes the case's workload YAML; returns its content."""
        document = {"model": case.name, **case.settings}
        document["dataset"] = {**case.settings["dataset"], "data_folder": str(self.data(case))}
        document["checkpoint"] = {"checkpoint_folder": str(self.work / "checkpoints")}
        self.config(case).parent.mkdir(parents=True, exist_ok=True)
        self.config(case).write_text(yaml.safe_dump(document, sort_keys=False))
        return document

    def dlio_command(self, case: Case, workflow: list[str], out: Path) -> list[str]:
        # `env DFTRACER_ENABLE=0` turns DLIO's tracer off; hydra.run.dir keeps Hydra's .hydra/ beside the outputs.
        return ["env", "DFTRACER_ENABLE=0", self.dlio, "--config-dir", str(self.work / "configs"),
                f"workload={case.name}", *workflow, f"++workload.output.folder={out}", f"hydra.run.dir={out}"]

    def train_commands(self, case: Case) -> dict[str, list[str]]:
        # A memory:// dataset lives in one process: that run generates it first (generation is not timed).
        in_memory = ["++workload.workflow.generate_data=True", f"++workload.dataset.data_folder=memory://{case.name}/data"]
        return {
            DL_DRIVER: [self.dl_driver, "run", "--config", str(self.config(case)), *TRAIN_ONLY,
                        *(in_memory if case.in_memory else []), f"++workload.output.folder={self.out(case, DL_DRIVER)}"],
            DLIO: self.dlio_command(case, TRAIN_ONLY, self.out(case, DLIO)),
        }

    def generate(self, case: Case) -> dict:
        """Writes the case's workload YAML and dataset; returns both (the YAML's content, the generation command)."""
        config = self.write_config(case)
        shutil.rmtree(self.data(case), ignore_errors=True)
        if case.in_memory:
            return {"config_file": str(self.config(case)), "config": config, "generate_command": "(in the run)"}
        if case.generator == DL_DRIVER:
            command = [self.dl_driver, "generate", "--config", str(self.config(case))]
        else:
            # DLIO 2.0.0's hdf5 generator draws generation_buffer_size (default 2 GiB) of random bytes for every file;
            # one sample's worth is enough.
            buffer = f"++workload.dataset.generation_buffer_size={case.settings['dataset']['record_length']}"
            command = [*self.dlio_command(case, GENERATE_ONLY, self.work / "out" / case.name / "generate"), buffer]
        run(command, self.work)
        # DLIO 2.0.0 lists valid/ even without evaluation.
        (self.data(case) / "valid").mkdir(parents=True, exist_ok=True)
        return {"config_file": str(self.config(case)), "config": config, "generate_command": shlex.join(command)}

    def train(self, command: list[str], out: Path) -> None:
        """Runs one training command into a fresh output folder."""
        shutil.rmtree(out, ignore_errors=True)
        run(command, self.work)


def run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"exit status {done.returncode} of {shlex.join(command)}:\n{tail}")


def read_files(files: list[Path]) -> tuple[int, float]:
    """Reads every file to its end in 1 MiB reads into one page-aligned buffer (the fastest read size here: larger
    ones run 1.2x slower for 8 MiB, 3x for whole 137 MiB files); (bytes, seconds)."""
    start = time.perf_counter()
    total = read_all(files)
    return total, time.perf_counter() - start


def read_all(files: list[Path]) -> int:
    """Reads every file to its end in READ_SIZE os.readv calls into a page-aligned buffer of its own; the bytes."""
    buffer = mmap.mmap(-1, READ_SIZE)
    total = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            while (read := os.readv(fd, [buffer])) == READ_SIZE:
                total += read
            total += read  # a short read of a regular file is its end
        finally:
            os.close(fd)
    return total


def read_files_threads(files: list[Path], threads: int) -> tuple[int, float]:
    """`threads` Python threads (os.readv releases the GIL), each reading every file as read_all does; (bytes of all
    threads, wall time from the first start to the last end)."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        total = sum(pool.map(read_all, [files] * threads))
        return total, time.perf_counter() - start


def fio_read(folder: Path, files: list[Path], threads: int) -> tuple[int, float]:
    """`fio --rw=read` of every file under `folder` (the training files) by `threads` jobs, threads of one process,
    each reading every file in psync reads into a page-aligned (mmap) buffer, from the page cache (--invalidate=0);
    (bytes of all jobs, fio's own runtime). Reads are READ_SIZE, or for smaller files the largest power of two that
    fits the smallest: fio reads whole blocks only and skips a file's tail shorter than one, so the rate is over the
    bytes it read. --opendir rather than a --filename list of up to 1024 paths joined with ':'; the byte count
    checked after the run shows it read these files and no others."""
    block = min(READ_SIZE, 1 << (min(f.stat().st_size for f in files).bit_length() - 1))
    args = ["fio", "--name=limit", f"--opendir={folder}", "--rw=read", "--ioengine=psync", f"--numjobs={threads}",
            f"--bs={block}", "--invalidate=0", "--iomem=mmap", "--thread", "--group_reporting",
            "--output-format=json"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"exit status {done.returncode} of {shlex.join(args)}: {done.stderr.strip()[-300:]}")
    job = json.loads(done.stdout[done.stdout.index("{") :])["jobs"][0]["read"]  # after "opendir added N files"
    whole = threads * sum(f.stat().st_size // block * block for f in files)
    if job["io_bytes"] != whole:  # another file in the folder, or a short read: not the limit of these files
        raise RuntimeError(f"{shlex.join(args)} read {job['io_bytes']} bytes, expected {whole}")
    return job["io_bytes"], job["io_bytes"] / job["bw_bytes"]


def train_files(bench: Bench, case: Case) -> list[Path]:
    files = sorted((bench.data(case) / "train").rglob(f"*.{case.settings['dataset']['format']}"))
    if len(files) != case.settings["dataset"]["num_files_train"]:
        raise RuntimeError(f"{bench.data(case)}/train holds {len(files)} files, expected "
                           f"{case.settings['dataset']['num_files_train']}")
    return files


def warm(bench: Bench, case: Case) -> None:
    """Reads every file of the case's dataset once, so the next run reads from the page cache."""
    read_files([p for p in bench.data(case).rglob("*") if p.is_file()])


def summary_metric(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["metric"]


def step_overhead_us(out: Path) -> float:
    """The training epochs' wall time per step, from dl_driver_report.json."""
    epochs = json.loads((out / "dl_driver_report.json").read_text())["epochs"]
    steps = sum(block["steps"] for epoch in epochs for block in epoch["blocks"])
    return 1e6 * sum(epoch["duration"] for epoch in epochs) / steps


def train_au(out: Path) -> float:
    return summary_metric(out)[AU]


def compare(bench: Bench, case: Case, repeats: int) -> dict:
    """One compared case: each tool's median samples/s over alternating runs, and the page-cache limit."""
    generation = bench.generate(case)
    files = train_files(bench, case)
    commands = bench.train_commands(case)
    rates: dict[str, list[float]] = {tool: [] for tool in commands}
    threads = case.settings["reader"]["read_threads"]
    # Page-cache limits (bytes/s): at the tools' reader count (fio, Python threads) and with 1 Python thread.
    limits: dict[str, list[float]] = {"fio": [], "os.readv": [], "os.readv, 1 thread": []}
    errors: dict[str, str] = {}
    for _ in range(repeats):
        for tool, command in commands.items():
            if tool in errors:
                continue
            warm(bench, case)
            try:
                bench.train(command, bench.out(case, tool))
                rates[tool].append(summary_metric(bench.out(case, tool))[THROUGHPUT])
            except (RuntimeError, OSError, KeyError) as e:  # a tool that cannot run a case is reported, not hidden
                errors[tool] = str(e)
        warm(bench, case)
        for name, measure in (("fio", lambda: fio_read(bench.data(case) / "train", files, threads)),
                              ("os.readv", lambda: read_files_threads(files, threads)),
                              ("os.readv, 1 thread", lambda: read_files(files))):
            read, seconds = measure()
            limits[name].append(read / seconds)
    medians = {name: statistics.median(runs) for name, runs in limits.items()}
    limit = max(medians["fio"], medians["os.readv"])  # the limits at the tools' reader count
    samples = len(files) * case.settings["dataset"]["num_samples_per_file"]
    sample_bytes = sum(f.stat().st_size for f in files) / samples
    ours = statistics.median(rates[DL_DRIVER]) if rates[DL_DRIVER] else None
    theirs = statistics.median(rates[DLIO]) if rates[DLIO] else None
    ratio = ours / theirs if ours and theirs else None
    ours_mib = ours * sample_bytes / MIB if ours else None
    return {
        "case": case.label,
        "generated_by": case.generator,
        **generation,
        "commands": {tool: shlex.join(command) for tool, command in commands.items()},
        "samples_per_second": {tool: [round(r, 1) for r in runs] for tool, runs in rates.items()},
        "read_threads": threads,
        "page_cache_MiB_s_runs": {name: [round(r / MIB) for r in runs] for name, runs in limits.items()},
        "errors": errors,
        "dl_driver_samples_s": round(ours, 1) if ours else None,
        "dlio_samples_s": round(theirs, 1) if theirs else None,
        "ratio": round(ratio, 2) if ratio else None,
        "target_ratio": RATIO_TARGET,
        "met": ratio is not None and ratio >= RATIO_TARGET,
        "file_bytes_per_sample": round(sample_bytes),
        "dl_driver_MiB_s": round(ours_mib) if ours_mib else None,
        "page_cache_MiB_s": round(limit / MIB),  # max of fio and os.readv medians, both with read_threads readers
        "page_cache_fio_MiB_s": round(medians["fio"] / MIB),
        "page_cache_readv_MiB_s": round(medians["os.readv"] / MIB),
        "page_cache_1_thread_MiB_s": round(medians["os.readv, 1 thread"] / MIB),
        "vs_page_cache": round(ours_mib / (limit / MIB), 2) if ours_mib else None,
    }


def dl_driver_only(bench: Bench, case: Case, repeats: int, measure: Callable[[Path], float], target: str,
                   met: Callable[[float], bool]) -> dict:
    """A dl-driver-only case: measure(output folder) after each run, and the median (an error if it cannot run)."""
    generation = bench.generate(case)
    command = bench.train_commands(case)[DL_DRIVER]
    result = {"case": case.label, **generation, "command": shlex.join(command), "target": target}
    values = []
    try:
        for _ in range(repeats):
            warm(bench, case)
            bench.train(command, bench.out(case, DL_DRIVER))
            values.append(measure(bench.out(case, DL_DRIVER)))
    except (RuntimeError, OSError, KeyError) as e:
        return {**result, "error": str(e)}
    median = statistics.median(values)
    return {**result, "values": [round(v, 2) for v in values], "median": round(median, 2), "met": met(median)}


def show(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,}{unit}"


def markdown(result: dict) -> str:
    rows, engine = result["rows"], result["engine"]
    readers = ", ".join(sorted({str(r["read_threads"]) for r in rows}))
    lines = [
        "<!-- train:begin -->",
        "## Training throughput (issue: training emulation)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). 1 process, computation_time 0,",
        "no evaluation or checkpoints; each case's files are read once before every run, so both tools read from the",
        f"page cache. Medians of {result['repeats']} alternating runs of summary.json `{THROUGHPUT}`. MiB/s =",
        "samples/s x file bytes per sample. The page-cache limit is read with as many readers as the tools'",
        f"`read_threads` ({readers}), each reading every training file in 1 MiB reads into a page-aligned buffer: the",
        "faster of `fio --rw=read --ioengine=psync --numjobs=<read_threads> --bs=1M --thread --invalidate=0",
        "--iomem=mmap --opendir=<train folder>` (bytes of all jobs / fio's runtime; for files under 1 MiB, reads of the",
        "largest power of two that fits, fio skipping the shorter tail) and as many Python threads calling `os.readv`",
        "(wall time); \"of limit\" is dl-driver's MiB/s over it. The 1-thread `os.readv` rate is shown for reference.",
        "",
        ("| case | dl-driver samples/s | DLIO 2.0.0 samples/s | ratio | target | met | dl-driver MiB/s "
         "| page-cache limit MiB/s (fio; os.readv) | of limit | os.readv 1 thread MiB/s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {show(r['dl_driver_samples_s'])} | {show(r['dlio_samples_s'])} | "
              f"{show(r['ratio'], 'x')} | >= {RATIO_TARGET:g}x | {'yes' if r['met'] else 'NO'} | "
              f"{show(r['dl_driver_MiB_s'])} | {r['page_cache_MiB_s']:,} ({r['page_cache_fio_MiB_s']:,}; "
              f"{r['page_cache_readv_MiB_s']:,}, {r['read_threads']} readers) | {show(r['vs_page_cache'])} | "
              f"{r['page_cache_1_thread_MiB_s']:,} |" for r in rows]
    unet3d = rows[0]["vs_page_cache"]
    unet3d_met = unet3d is not None and unet3d >= CACHE_LIMIT_TARGET
    lines += [
        "",
        f"unet3d-shaped npz: dl-driver reads at {show(unet3d)} of the page-cache limit "
        f"(target >= {CACHE_LIMIT_TARGET}: {'yes' if unet3d_met else 'NO'}).",
        "",
        "| engine measurement (dl-driver only, median) | value | target | met |",
        "|---|---|---|---|",
    ]
    for name, m in engine.items():
        met = "yes" if m.get("met") else "NO"
        lines.append(f"| {name}: {m['case']} | {show(m.get('median'))} | {m['target']} | {met} |")
    failures = [(r["case"], tool, error) for r in rows for tool, error in r["errors"].items()]
    failures += [(m["case"], DL_DRIVER, m["error"]) for m in engine.values() if "error" in m]
    if failures:
        lines += ["", "Failed runs (last line of the output):"]
        lines += [f"- {case}, {tool}: `{error.splitlines()[-1][:200]}`" for case, tool, error in failures]
    lines += ["", "Workload files (DLIO 2.0.0 key names) and commands, run from the scratch folder:", "", "```"]
    for m in [*rows, *engine.values()]:
        flow = yaml.safe_dump(m["config"], default_flow_style=True, sort_keys=False, width=10**6).strip()
        lines += [f"# {m['case']}", f"# {m['config_file']}: {flow}", m["generate_command"]]
        lines += list(m["commands"].values()) if "commands" in m else [m["command"]]
    lines += ["```", "<!-- train:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dlio", required=True, help="the dlio_benchmark command of DLIO 2.0.0")
    parser.add_argument("--dl-driver", default=shutil.which("dl-driver"), help="the dl-driver command")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-trainbench"),
                        help="scratch folder on the disk")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and case (median reported)")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    bench = Bench(args.dl_driver, args.dlio, args.work)
    rows = []
    for case in COMPARED:
        rows.append(compare(bench, case, args.repeats))
        shutil.rmtree(bench.data(case))
    engine = {
        "overhead per step (µs)": dl_driver_only(
            bench, OVERHEAD, args.repeats, step_overhead_us, f"< {OVERHEAD_TARGET_US:g} µs",
            lambda us: us < OVERHEAD_TARGET_US),
        "AU when storage is not the bottleneck (%)": dl_driver_only(
            bench, UTILISATION, args.repeats, train_au, f">= {AU_TARGET} %", lambda au: au >= AU_TARGET),
    }
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs",
        "repeats": args.repeats,
        "rows": rows,
        "engine": engine,
    }
    results_md.save("train", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
