#!/usr/bin/env python3
"""Multi-rank training, side by side in one run: dl-driver and DLIO 2.0.0, each under `mpirun -np N`.

Run it through benches/scaling_vs_dlio.sh. The same unet3d- and resnet50-shaped datasets (written once by dl-driver,
4-4.3 GiB each, in the page cache: every file is read before each timed run; at dl-driver's rates an epoch takes ~0.2 s,
where the earlier 1 GiB datasets made 50 ms epochs whose start and end dominated the spread) are trained on by both tools under
`mpirun -np N --oversubscribe` for N in --ranks (compute is emulated, computation_time 0, so oversubscribing only
shares the CPUs), alternating the tools, --repeats times. Aggregate samples/s is rank 0's summary.json
`train_throughput_mean_samples_per_second` (summed over ranks by both tools: the same inner timing boundary) and
MiB/s that x file bytes per sample. The page-cache limit is the training benchmark's, at 2 readers (the CPUs here):
the faster of fio (numjobs 2, psync, page-aligned 1 MiB reads) and 2 Python threads calling os.readv. dl-driver's
per-step overhead with the MPI barrier: synthetic data (no reads), no compute, 40,000 samples of batch 1 (40,000 steps
on 1 rank, 20,000 per rank on 2), the epoch's wall time per step on rank 0, under `mpirun -np 1` and `-np 2`. Open MPI binds each rank to one core when
ranks <= cores: the binding rows train the unet3d case under `mpirun -np 1` and `-np 2` with the default binding and
with `--bind-to none`. Writes benches/results/scaling.json and the scaling section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import results_md  # benches/results_md.py, beside this script
import train_vs_dlio as tv  # the training benchmark: cases, tools' commands, page-cache limit

READERS = 2
CASES = [
    tv.Case("unet3d", "unet3d-shaped npz (512 files x 8 MiB, batch 4)", tv.DL_DRIVER,
            tv.workload("npz", 512, 1, 8 * tv.MIB, 4, "pytorch", epochs=3, read_threads=READERS)),
    tv.Case("resnet50", "resnet50-shaped tfrecord (32 files x 1251 x 112 KiB, batch 64)", tv.DL_DRIVER,
            tv.workload("tfrecord", 32, 1251, 114660, 64, "tensorflow", epochs=3, read_threads=READERS)),
]
OVERHEAD = tv.Case("overhead", "synthetic, 40000 samples of batch 1, no compute", tv.DL_DRIVER,
                   tv.workload("synthetic", 1, 40000, 4 * tv.KIB, 1, "pytorch", epochs=1, read_threads=READERS))
RATIO_TARGET = 5.0
LIMIT_TARGET = 0.8
OVERHEAD_TARGET_US = 50.0


def mpirun(ranks: int, *extra: str) -> list[str]:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", "-np", str(ranks), "--oversubscribe", *root, *extra]


def timed(bench: tv.Bench, case: tv.Case, tool: str, ranks: int, extra: tuple[str, ...] = ()) -> float:
    tv.warm(bench, case)
    command = [*mpirun(ranks, *extra), *bench.train_commands(case)[tool]]
    bench.train(command, bench.out(case, tool))
    return tv.summary_metric(bench.out(case, tool))[tv.THROUGHPUT]


def limit(bench: tv.Bench, case: tv.Case, files: list[Path], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        tv.warm(bench, case)
        fio = tv.fio_read(bench.data(case) / "train", files, READERS)
        readv = tv.read_files_threads(files, READERS)
        runs.append(max(fio[0] / fio[1], readv[0] / readv[1]))
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dlio", required=True, help="the dlio_benchmark command of DLIO 2.0.0")
    parser.add_argument("--dl-driver", default=shutil.which("dl-driver"), help="the dl-driver command")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-scalebench"), help="scratch folder")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per tool, case and rank count")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    bench = tv.Bench(args.dl_driver, args.dlio, args.work)
    rows, binding = [], []
    for case in CASES:
        generation = bench.generate(case)
        files = tv.train_files(bench, case)
        sample_bytes = sum(f.stat().st_size for f in files) / (len(files) * case.settings["dataset"]["num_samples_per_file"])
        cache = limit(bench, case, files, args.repeats)
        for ranks in args.ranks:
            runs: dict[str, list[float]] = {tv.DL_DRIVER: [], tv.DLIO: []}
            for _ in range(args.repeats):
                for tool in runs:
                    runs[tool].append(timed(bench, case, tool, ranks))
            ours, theirs = statistics.median(runs[tv.DL_DRIVER]), statistics.median(runs[tv.DLIO])
            mib = ours * sample_bytes / tv.MIB
            rows.append({
                "case": case.label, "ranks": ranks, "runs_samples_s": {t: [round(r, 1) for r in v] for t, v in runs.items()},
                "dl_driver_samples_s": round(ours, 1), "dlio_samples_s": round(theirs, 1),
                "ratio": round(ours / theirs, 2), "dl_driver_MiB_s": round(mib),
                "dlio_MiB_s": round(theirs * sample_bytes / tv.MIB), "page_cache_MiB_s": round(cache / tv.MIB),
                "of_limit": round(mib / (cache / tv.MIB), 2),
                "commands": {t: shlex.join([*mpirun(ranks), *c]) for t, c in bench.train_commands(case).items()},
                "generate_command": generation["generate_command"],
            })
            print(json.dumps(rows[-1]), flush=True)
        if case.name == "unet3d":
            for ranks in (1, 2):
                for label, extra in (("default binding", ()), ("--bind-to none", ("--bind-to", "none"))):
                    rates = [timed(bench, case, tv.DL_DRIVER, ranks, extra) for _ in range(args.repeats)]
                    binding.append({"ranks": ranks, "binding": label, "runs_samples_s": [round(r, 1) for r in rates],
                                    "MiB_s": round(statistics.median(rates) * sample_bytes / tv.MIB)})
                    print(json.dumps(binding[-1]), flush=True)
        shutil.rmtree(bench.data(case))
    bench.generate(OVERHEAD)
    overhead = {}
    for ranks in (1, 2):
        values = []
        for _ in range(args.repeats):
            command = [*mpirun(ranks), *bench.train_commands(OVERHEAD)[tv.DL_DRIVER]]
            bench.train(command, bench.out(OVERHEAD, tv.DL_DRIVER))
            values.append(tv.step_overhead_us(bench.out(OVERHEAD, tv.DL_DRIVER)))
        overhead[ranks] = {"runs_us": [round(v, 2) for v in values], "median_us": round(statistics.median(values), 2)}
    result = {"command": args.command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} CPUs", "repeats": args.repeats, "rows": rows, "binding": binding,
              "overhead": overhead}
    results_md.save("scaling", result, markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        "<!-- scaling:begin -->",
        "## Multi-rank training under mpirun (issue: multi-rank runs)",
        "",
        f"Command: `{result['command']}` on {result['date']} ({result['machine']}). Both tools under `mpirun -np N "
        "--oversubscribe`, computation_time 0, data in the page cache, `read_threads: 2` per rank; medians of "
        f"{result['repeats']} alternating runs of rank 0's summary.json throughput (the ranks' sum, each tool's own "
        "inner timing). MiB/s = samples/s x file bytes per sample; \"of limit\" is dl-driver's MiB/s over the "
        "2-reader page-cache limit (the faster of fio numjobs=2 and 2 os.readv threads). Targets: >= "
        f"{RATIO_TARGET:g}x DLIO at every rank count, >= {LIMIT_TARGET} of the limit at 2+ ranks.",
        "",
        "| case | ranks | dl-driver samples/s | DLIO 2.0.0 samples/s | ratio | dl-driver MiB/s | DLIO MiB/s "
        "| limit MiB/s | of limit | runs (dl-driver; DLIO) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        runs = "; ".join(", ".join(f"{v:g}" for v in r["runs_samples_s"][t]) for t in (tv.DL_DRIVER, tv.DLIO))
        lines.append(f"| {r['case']} | {r['ranks']} | {r['dl_driver_samples_s']:,} | {r['dlio_samples_s']:,} | "
                     f"{r['ratio']}x | {r['dl_driver_MiB_s']:,} | {r['dlio_MiB_s']:,} | {r['page_cache_MiB_s']:,} | "
                     f"{r['of_limit']} | {runs} |")
    o = result["overhead"]
    lines += [
        "",
        "dl-driver's wall time per step with no reads and no compute (synthetic, 40,000 samples of batch 1: 40,000 "
        "steps on 1 rank, 20,000 per rank on 2; "
        f"target < {OVERHEAD_TARGET_US:g} µs at 2 ranks, with the MPI barrier): "
        + "; ".join(f"{n} rank(s): {v['median_us']} µs (runs {', '.join(map(str, v['runs_us']))})" for n, v in o.items())
        + ".",
        "",
        "Open MPI's binding (unet3d case, dl-driver): MiB/s per run count and binding.",
        "",
        "| ranks | binding | MiB/s | runs (samples/s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {b['ranks']} | {b['binding']} | {b['MiB_s']:,} | {', '.join(map(str, b['runs_samples_s']))} |"
              for b in result["binding"]]
    lines += ["", "Commands (from the scratch folder):", "", "```"]
    for r in result["rows"]:
        lines += [f"# {r['case']}, {r['ranks']} rank(s)", *r["commands"].values()]
    lines += ["```", "<!-- scaling:end -->"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
