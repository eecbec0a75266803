#!/usr/bin/env python3
"""Dataset generation, side by side in one run on the same disk: dl-driver vs DLIO 2.0.0 vs `fio --rw=write`.

Run it through benches/generate_vs_dlio.sh, which installs DLIO 2.0.0 into its own venv. Each case generates the same
workload with each tool (DLIO's own workload files, scaled by the same overrides) into separate folders. dl-driver
writes with one generation thread per CPU (`--threads <CPUs>`, its default); DLIO 2.0.0 runs twice, as 1 process and as one MPI rank per
CPU (`mpirun -np <CPUs>`, each rank writing its stripe of the files): the headline ratio is dl-driver vs DLIO with as
many ranks as dl-driver has threads, the 1-process ratio is shown beside it. DLIO's time is taken from rank 0's log
(its first generation line to "Generation done", which rank 0 logs after a barrier that every rank reaches only once
its files are written), so its Python/TensorFlow start-up is not counted; dl-driver's is the time it reports.
MiB/s = bytes each tool wrote / its time. Writes benches/results/generate.json and the generation section of
benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import results_md  # benches/results_md.py, beside this script
from memory_state import warm_memory

MIB = 1024**2
WARM = 3 * 1024**3  # more than any case writes
SMALL_HDF5 = [
    "++workload.dataset.format=hdf5", "++workload.dataset.num_files_train=16", "++workload.dataset.num_files_eval=0",
    "++workload.dataset.num_samples_per_file=4", "++workload.dataset.num_subfolders_train=0",
    "++workload.dataset.num_subfolders_eval=0", "++workload.workflow.evaluation=False",
]
CASES = [
    # (name, workload, overrides for dl-driver, for DLIO 2.0.0 (its files use the 2.0.0 key names), repeats)
    ("unet3d-shaped npz (8 files, ~140 MiB samples)", "unet3d_h100", ["++workload.dataset.num_files_train=8"], None, 3),
    ("resnet50-shaped tfrecord (8 files x 1251 samples)", "resnet50_h100", ["++workload.dataset.num_files_train=8"], None, 3),
    (
        "small-file hdf5 (16 files x 4 x 256 KiB)",
        "default",
        [*SMALL_HDF5, "++workload.dataset.record_length_bytes=262144"],
        # DLIO 2.0.0's hdf5 generator draws generation_buffer_size // record_length samples of random bytes for every
        # file (default 2 GiB: 8192 samples, 2 GiB per 1 MiB file) and writes the first 4; one sample's worth is
        # enough. dl-driver's schema accepts the key but none of its generators reads it, so it is given to DLIO only.
        [*SMALL_HDF5, "++workload.dataset.record_length=262144", "++workload.dataset.generation_buffer_size=262144"],
        3,
    ),
]
GENERATE_ONLY = ["++workload.workflow.generate_data=True", "++workload.workflow.train=False", "++workload.workflow.checkpoint=False"]
STAMP = re.compile(r"\[INFO\] (\d{4}-\d\d-\d\dT[\d:.]+) ")
RANKS = os.cpu_count() or 1  # DLIO's MPI ranks in the like-for-like column: one per CPU, as dl-driver's threads
OURS, DLIO_1, DLIO_N = "dl-driver", "DLIO 2.0.0, 1 process", f"DLIO 2.0.0, {RANKS} MPI ranks"
TARGET = 10


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mpirun(ranks: int) -> list[str]:
    """The mpirun prefix for DLIO with `ranks` ranks (none for 1: DLIO then initialises MPI as a singleton)."""
    if ranks == 1:
        return []
    # Open MPI refuses root without --allow-run-as-root and more ranks than cores without --oversubscribe; the
    # single-copy mechanism is off because containers often forbid the cross-process reads (process_vm_readv) it
    # uses; DLIO's ranks only barrier.
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", *root, "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none", "-np", str(ranks)]


def run_dlio(dlio: str, workload: str, overrides: list[str], data: Path, cwd: Path, ranks: int = 1) -> tuple[int, float]:
    """DLIO 2.0.0 as `ranks` MPI processes; (bytes written, seconds from rank 0's first generation line to its
    "Generation done").

    Checked in dlio_benchmark/main.py and data_generator/data_generator.py of 2.0.0: Benchmark.initialize() barriers,
    rank 0 logs "Starting data generation", then DataGenerator.generate() has rank 0 create the folders and log
    "Generating dataset in ..." before a barrier; every generator then writes files my_rank, my_rank + comm_size, ...
    (its stripe), and initialize() calls comm.barrier() after generate() returns, before rank 0 logs "Generation
    done". So rank 0's two log lines span every rank's writes; only rank 0 logs them.
    """
    out = cwd / "dlio-out"  # one output and Hydra folder that every rank agrees on (Hydra's default has the time)
    args = [*mpirun(ranks), dlio, f"workload={workload}", *GENERATE_ONLY, f"++workload.dataset.data_folder={data}",
            *overrides, f"++workload.output.folder={out}", f"hydra.run.dir={out}"]
    # DLIO's tfrecord generator calls `tfrecord2idx`, which the peer installer puts beside dlio_benchmark; mpirun's
    # local ranks inherit this environment.
    env = {**os.environ, "PATH": f"{Path(dlio).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True, env=env, stdin=subprocess.DEVNULL)
    shutil.rmtree(out, ignore_errors=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if STAMP.search(line)]
    start = next(line for line in lines if "Generating" in line or "Number of files for training" in line)
    end = next(line for line in lines if "Generation done" in line)
    parse = lambda line: dt.datetime.fromisoformat(STAMP.search(line).group(1))  # noqa: E731
    return folder_bytes(data), (parse(end) - parse(start)).total_seconds()


def run_ours(dl_driver: str, workload: str, overrides: list[str], data: Path, cwd: Path) -> tuple[int, float]:
    # --threads: as many files written at once as DLIO has ranks (also its default, the number of CPUs).
    args = [dl_driver, "generate", "--threads", str(RANKS), f"workload={workload}", *GENERATE_ONLY,
            f"++workload.dataset.data_folder={data}", *overrides]
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True).stdout
    seconds = float(re.search(r" in ([\d.]+) s ", out).group(1))
    return folder_bytes(data), seconds


def fio_write(directory: Path) -> float:
    args = ["fio", "--name=write", f"--directory={directory}", "--rw=write", "--bs=4M", "--size=2G", "--ioengine=psync",
            "--end_fsync=0", "--output-format=json"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rate = json.loads(out[out.index("{") :])["jobs"][0]["write"]["bw_bytes"]
    for f in directory.glob("write*"):
        f.unlink()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dlio", required=True, help="the dlio_benchmark command of DLIO 2.0.0")
    parser.add_argument("--dl-driver", default=shutil.which("dl-driver"), help="the dl-driver command")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-genbench"), help="scratch folder on the disk")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rows = []
    for name, workload, ours_overrides, dlio_overrides, repeats in CASES:
        measured: dict[str, list[tuple[int, float]]] = {}
        theirs_overrides = ours_overrides if dlio_overrides is None else dlio_overrides
        tools = (
            (OURS, run_ours, args.dl_driver, ours_overrides),
            (DLIO_1, run_dlio, args.dlio, theirs_overrides),
            (DLIO_N, partial(run_dlio, ranks=RANKS), args.dlio, theirs_overrides),
        )
        for _ in range(repeats):
            for tool, runner, command, overrides in tools:
                data = args.work / re.sub(r"\W+", "-", tool) / workload
                subprocess.run(["sync"], check=True)
                warm_memory(WARM)
                written, seconds = runner(command, workload, overrides, data, args.work)
                measured.setdefault(tool, []).append((written, seconds))
                shutil.rmtree(data)
                subprocess.run(["sync"], check=True)
        per_run = {t: [round(w / s / MIB, 1) for w, s in runs] for t, runs in measured.items()}
        # The run with the median rate, per tool.
        median = {t: sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2] for t, runs in measured.items()}
        rate = {t: w / s / MIB for t, (w, s) in median.items()}
        row = {"case": name}
        for key, tool in (("dl_driver", OURS), ("dlio_1", DLIO_1), ("dlio_n", DLIO_N)):
            row |= {f"{key}_MiB": round(median[tool][0] / MIB, 1), f"{key}_s": round(median[tool][1], 3),
                    f"{key}_MiB_s": round(rate[tool], 2 if rate[tool] < 10 else 1 if rate[tool] < 100 else None),
                    f"{key}_runs_MiB_s": per_run[tool]}
        rows.append({
            **row,
            "dlio_ranks": RANKS,
            "ratio": round(rate[OURS] / rate[DLIO_N], 1),  # the headline: N ranks vs N threads
            "ratio_vs_1_process": round(rate[OURS] / rate[DLIO_1], 1),
            "target_ratio": TARGET,
            "met": rate[OURS] / rate[DLIO_N] >= TARGET,
        })
    fio_runs = []
    for _ in range(3):
        subprocess.run(["sync"], check=True)
        warm_memory(WARM)
        fio_runs.append(fio_write(args.work) / MIB)
    fio = sorted(fio_runs)[1]
    fio_runs_text = ", ".join(f"{r:.0f}" for r in fio_runs) + " MiB/s"
    unet3d = rows[0]["dl_driver_MiB_s"]
    result = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs",
        "rows": rows,
        "fio_write_MiB_s": round(fio),
        "large_file_vs_fio": round(unet3d / fio, 2),
        "large_file_target": 0.7,
    }
    lines = [
        "<!-- generate:begin -->",
        "## Dataset generation (issue: generation)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). Median of 3 alternating runs per",
        "tool; MiB/s over the bytes each wrote. dl-driver writes with one generation thread per CPU",
        f"(`--threads {RANKS}`), and its time is the one it reports. DLIO 2.0.0 runs as 1 process and as {RANKS} MPI ranks",
        f"(`mpirun -np {RANKS}`; rank r writes files r, r + {RANKS}, ...); its time is rank 0's log from its first",
        "generation line to \"Generation done\", which rank 0 logs after a barrier that every rank reaches only once",
        "its files are written (start-up excluded). The ratio (and target) is dl-driver vs DLIO with as many ranks as",
        "dl-driver has threads; the 1-process ratio is shown beside it. In the hdf5 case DLIO is given",
        "`++workload.dataset.generation_buffer_size=262144` (one record): by default its hdf5 generator draws 2 GiB of",
        "random samples for every file, of which it writes 1 MiB. Every timed run (fio's too) starts right after 3 GiB",
        "of memory was touched and freed: on this VM memory left free for seconds goes back to the host, and writing",
        "into it then runs several times slower, whatever the tool.",
        "",
        (f"| case | dl-driver MiB/s ({RANKS} threads) | DLIO 2.0.0 MiB/s, {RANKS} MPI ranks | ratio | target | met "
         "| DLIO 2.0.0 MiB/s, 1 process | ratio vs 1 process |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    run = lambda r, key: f"{r[f'{key}_MiB_s']} ({r[f'{key}_MiB']} MiB in {r[f'{key}_s']} s)"  # noqa: E731
    lines += [f"| {r['case']} | {run(r, 'dl_driver')} | {run(r, 'dlio_n')} | {r['ratio']}x | >= {TARGET}x | "
              f"{'yes' if r['met'] else 'NO'} | {run(r, 'dlio_1')} | {r['ratio_vs_1_process']}x |" for r in rows]
    lines += [
        "",
        f"Per-run MiB/s (dl-driver; DLIO {RANKS} ranks; DLIO 1 process), in run order:",
        "",
        *[f"- {r['case']}: {r['dl_driver_runs_MiB_s']}; {r['dlio_n_runs_MiB_s']}; {r['dlio_1_runs_MiB_s']}"
          for r in rows],
        "",
        (f"`fio --rw=write --bs=4M --size=2G --end_fsync=0` on the same disk (median of 3, {fio_runs_text}): "
         f"{result['fio_write_MiB_s']} MiB/s; dl-driver's unet3d-shaped npz reaches {result['large_file_vs_fio']} of it "
         f"(target >= 0.7: {'yes' if result['large_file_vs_fio'] >= 0.7 else 'NO'})."),
        "<!-- generate:end -->",
    ]
    results_md.save("generate", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
