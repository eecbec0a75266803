#!/usr/bin/env python3
"""Dataset generation, side by side in one run on the same disk: dl-driver vs DLIO 2.0.0 vs `fio --rw=write`.

Run it through benches/generate_vs_dlio.sh, which installs DLIO 2.0.0 into its own venv. Each case generates the same
workload with both tools (DLIO's own workload files, scaled by the same overrides) into separate folders. DLIO's time
is taken from its own log (first generation line to "Generation done"), so its Python/TensorFlow start-up is not
counted; dl-driver's is the time it reports. MiB/s = bytes each tool wrote / its time. Writes
benches/results/generate.json and the generation section of benches/RESULTS.md.
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
        [*SMALL_HDF5, "++workload.dataset.record_length=262144"],
        1,  # DLIO needs about a minute here
    ),
]
GENERATE_ONLY = ["++workload.workflow.generate_data=True", "++workload.workflow.train=False", "++workload.workflow.checkpoint=False"]
STAMP = re.compile(r"\[INFO\] (\d{4}-\d\d-\d\dT[\d:.]+) ")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_dlio(dlio: str, workload: str, overrides: list[str], data: Path, cwd: Path) -> tuple[int, float]:
    args = [dlio, f"workload={workload}", *GENERATE_ONLY, f"++workload.dataset.data_folder={data}", *overrides]
    # DLIO's tfrecord generator calls `tfrecord2idx`, which the peer installer puts beside dlio_benchmark.
    env = {**os.environ, "PATH": f"{Path(dlio).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True, env=env)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if STAMP.search(line)]
    start = next(line for line in lines if "Generating" in line or "Number of files for training" in line)
    end = next(line for line in lines if "Generation done" in line)
    parse = lambda line: dt.datetime.fromisoformat(STAMP.search(line).group(1))  # noqa: E731
    return folder_bytes(data), (parse(end) - parse(start)).total_seconds()


def run_ours(dl_driver: str, workload: str, overrides: list[str], data: Path, cwd: Path) -> tuple[int, float]:
    args = [dl_driver, "generate", f"workload={workload}", *GENERATE_ONLY, f"++workload.dataset.data_folder={data}", *overrides]
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
        measured = {}
        tools = (
            ("dl-driver", run_ours, args.dl_driver, ours_overrides),
            ("DLIO 2.0.0", run_dlio, args.dlio, ours_overrides if dlio_overrides is None else dlio_overrides),
        )
        for _ in range(repeats):
            for tool, runner, command, overrides in tools:
                data = args.work / tool.split()[0] / workload
                subprocess.run(["sync"], check=True)
                warm_memory(WARM)
                written, seconds = runner(command, workload, overrides, data, args.work)
                measured.setdefault(tool, []).append((written, seconds))
                shutil.rmtree(data)
                subprocess.run(["sync"], check=True)
        per_run = {t: [round(w / s / MIB, 1) for w, s in runs] for t, runs in measured.items()}
        # The run with the median rate, per tool.
        measured = {t: sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2] for t, runs in measured.items()}
        ours = measured["dl-driver"][0] / measured["dl-driver"][1] / MIB
        theirs = measured["DLIO 2.0.0"][0] / measured["DLIO 2.0.0"][1] / MIB
        rows.append({
            "case": name,
            "dl_driver_MiB": round(measured["dl-driver"][0] / MIB, 1),
            "dl_driver_s": round(measured["dl-driver"][1], 3),
            "dl_driver_MiB_s": round(ours, 1 if ours < 100 else None),
            "dlio_MiB": round(measured["DLIO 2.0.0"][0] / MIB, 1),
            "dlio_s": round(measured["DLIO 2.0.0"][1], 3),
            "dlio_MiB_s": round(theirs, 2 if theirs < 10 else None),
            "ratio": round(ours / theirs, 1),
            "target_ratio": 10,
            "met": ours / theirs >= 10,
            "dl_driver_runs_MiB_s": per_run["dl-driver"],
            "dlio_runs_MiB_s": per_run["DLIO 2.0.0"],
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
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). Median of 3 alternating runs (1 for",
        "hdf5); DLIO's time from its log (start-up excluded), dl-driver's as it reports; MiB/s over the bytes each wrote.",
        "Every timed run (fio's too) starts right after 3 GiB of memory was touched and freed: on this VM memory left",
        "free for seconds goes back to the host, and writing into it then runs several times slower, whatever the tool.",
        "",
        "| case | dl-driver MiB/s | DLIO 2.0.0 MiB/s | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['dl_driver_MiB_s']} ({r['dl_driver_MiB']} MiB in {r['dl_driver_s']} s) | "
                     f"{r['dlio_MiB_s']} ({r['dlio_MiB']} MiB in {r['dlio_s']} s) | {r['ratio']}x | >= 10x | {'yes' if r['met'] else 'NO'} |")
    lines += [
        "",
        "Per-run MiB/s (dl-driver; DLIO), in run order:",
        "",
        *[f"- {r['case']}: {r['dl_driver_runs_MiB_s']}; {r['dlio_runs_MiB_s']}" for r in rows],
        "",
        f"`fio --rw=write --bs=4M --size=2G --end_fsync=0` on the same disk (median of 3, {fio_runs_text}): {result['fio_write_MiB_s']} MiB/s; dl-driver's "
        f"unet3d-shaped npz reaches {result['large_file_vs_fio']} of it (target >= 0.7: "
        f"{'yes' if result['large_file_vs_fio'] >= 0.7 else 'NO'}).",
        "<!-- generate:end -->",
    ]
    results_md.save("generate", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
