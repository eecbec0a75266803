#!/usr/bin/env python3
"""Fidelity with DLIO 2.0.0, in one invocation: each trains on the other's datasets, and AU and throughput agree.

Run it through benches/fidelity_vs_dlio.sh, which installs DLIO 2.0.0 into its own venv.

Interop, every format both tools know: dl-driver generates and DLIO 2.0.0 trains on it (1 epoch); DLIO 2.0.0
generates and dl-driver trains on it. A direction passes when the trainer exits 0 and the steps it reports
({rank}_output.json's per-step lists) times the batch size are the samples expected (files x samples per file,
drop_last). A format one side cannot write or read is listed with the reason.

AU: the same workload (unet3d-, resnet50-, cosmoflow-shaped, data in the page cache) with a computation_time that
keeps both tools above 95%. Both tools' AU is recomputed from their own per-step files with DLIO HEAD's formula
(AU = sum(compute of kept steps) / (block time - sum(proc of excluded steps)), the first step excluded; compute =
proc - load, the measured time, because DLIO 2.0.0's `compute` list holds the configured value; block time from
per_epoch_stats), i.e. what DLIO would report with HEAD's formulas; targets: per-epoch AU within 2 points of DLIO's,
and dl-driver's samples/s within 2% of batch_size / computation_time (the exact emulator's rate), DLIO's beside it.
Writes benches/results/fidelity.json and the fidelity section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

import results_md  # benches/results_md.py, beside this script

KIB, MIB = 1024, 1024**2
FORMATS = ["npz", "npy", "hdf5", "tfrecord", "csv", "jpeg", "png", "indexed_binary"]
INTEROP = {"files": 8, "samples_per_file": 4, "record_length": 16 * KIB, "batch_size": 2}
AU_CASES = [
    # (name, format, files, samples per file, record length, batch, loader, computation_time, epochs)
    # DLIO 2.0.0 spends ~17 ms (unet3d), ~3 ms (resnet50) and ~8 ms (cosmoflow) of its own per step outside the
    # compute here (its samples/s at 0.2 s / 0.1 s compute): these times keep that under 2% of a step.
    ("unet3d", "npz", 32, 1, 8 * MIB, 4, "pytorch", 1.0, 2),
    ("resnet50", "tfrecord", 8, 1251, 114660, 64, "tensorflow", 0.2, 2),
    ("cosmoflow", "tfrecord", 64, 1, 2828486, 4, "tensorflow", 0.5, 2),
]
AU_POINTS = 2.0
RATE_TOLERANCE = 0.02
TIMEOUT = 1800


def loader_of(fmt: str) -> str:
    return "tensorflow" if fmt == "tfrecord" else "pytorch"


def document(name: str, fmt: str, files: int, spf: int, length: int, batch: int, loader: str, compute: float,
             epochs: int, data: Path) -> dict:
    """A workload YAML in DLIO 2.0.0's key names (dl-driver reads them too)."""
    return {
        "model": name,
        "framework": "tensorflow" if loader == "tensorflow" else "pytorch",
        "workflow": {"generate_data": False, "train": True, "evaluation": False, "checkpoint": False},
        "dataset": {"format": fmt, "data_folder": str(data), "num_files_train": files, "num_files_eval": 0,
                    "num_samples_per_file": spf, "record_length": length, "record_length_stdev": 0,
                    "num_subfolders_train": 0, "num_subfolders_eval": 0},
        "reader": {"data_loader": loader, "batch_size": batch, "read_threads": 2},
        "train": {"epochs": epochs, "computation_time": compute},
    }


class Tools:
    def __init__(self, dl_driver: str, dlio: str, work: Path):
        self.dl_driver, self.dlio, self.work = dl_driver, dlio, work

    def config(self, name: str, doc: dict) -> Path:
        path = self.work / "configs" / "workload" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def command(self, tool: str, name: str, out: Path, generate: bool, extra: list[str] = ()) -> list[str]:
        flow = [f"++workload.workflow.generate_data={generate}", f"++workload.workflow.train={not generate}",
                f"++workload.output.folder={out}", *extra]
        if tool == "dl-driver":
            return [self.dl_driver, "run", "--config-dir", str(self.work / "configs"), f"workload={name}", *flow]
        # DLIO's tracer off; Hydra's run dir beside the outputs; `generation_buffer_size` keeps DLIO 2.0.0 from
        # drawing 2 GiB of random bytes per hdf5 file.
        return ["env", "DFTRACER_ENABLE=0", self.dlio, "--config-dir", str(self.work / "configs"),
                f"workload={name}", *flow, f"hydra.run.dir={out}"]

    def run(self, command: list[str]) -> tuple[int, str]:
        # DLIO's tfrecord generator calls `tfrecord2idx`, which the peer installer puts beside dlio_benchmark.
        env = {**os.environ, "PATH": f"{Path(self.dlio).parent}:{os.environ['PATH']}"}
        try:
            done = subprocess.run(command, cwd=self.work, capture_output=True, text=True, env=env, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return -1, f"timed out after {TIMEOUT} s"
        return done.returncode, (done.stdout + done.stderr)


def steps_per_epoch(out: Path) -> list[int]:
    """Steps per epoch from {rank 0}_output.json (both tools write it): the per-step `proc` lists of every block."""
    output = json.loads((out / "0_output.json").read_text())
    epochs = sorted((k for k in output if k.isdigit()), key=int)
    return [sum(len(v) for name, v in output[e]["proc"].items() if name != "eval") for e in epochs]


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:240] if lines else ""


def interop(tools: Tools) -> list[dict]:
    rows = []
    p = INTEROP
    expected = p["files"] * p["samples_per_file"] // p["batch_size"]
    for fmt in FORMATS:
        for writer, trainer in (("dl-driver", "DLIO 2.0.0"), ("DLIO 2.0.0", "dl-driver")):
            name = f"interop_{fmt}_{writer.split()[0].replace('-', '_')}"
            data = tools.work / "data" / name
            shutil.rmtree(data, ignore_errors=True)
            doc = document(name, fmt, p["files"], p["samples_per_file"], p["record_length"], p["batch_size"],
                           loader_of(fmt), 0.0, 1, data)
            tools.config(name, doc)
            extra = [f"++workload.dataset.generation_buffer_size={p['record_length']}"] if writer != "dl-driver" else []
            gen = tools.command(writer, name, tools.work / "out" / name / "generate", True,
                                extra if fmt == "hdf5" else [])
            row = {"format": fmt, "writer": writer, "trainer": trainer, "expected_steps": expected,
                   "generate_command": shlex.join(gen)}
            code, text = tools.run(gen)
            if code:
                rows.append({**row, "ok": False, "why": f"{writer} cannot generate {fmt}: {last_line(text)}"})
                continue
            out = tools.work / "out" / name / "train"
            shutil.rmtree(out, ignore_errors=True)
            train = tools.command(trainer, name, out, False)
            row["train_command"] = shlex.join(train)
            code, text = tools.run(train)
            if code:
                rows.append({**row, "ok": False, "why": f"{trainer} exit {code}: {last_line(text)}"})
                continue
            steps = steps_per_epoch(out)
            ok = steps == [expected]
            rows.append({**row, "ok": ok, "steps": steps,
                         "why": "" if ok else f"{trainer} ran {steps} steps, expected [{expected}]"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_time(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")


def head_au(out: Path) -> list[float]:
    """Per-epoch AU (%) recomputed from a run's own files with DLIO HEAD's formula (module docstring)."""
    output = json.loads((out / "0_output.json").read_text())
    stats_file = out / "0_per_epoch_stats.json"
    stats = json.loads((stats_file if stats_file.exists() else out / "per_epoch_stats.json").read_text())
    result = []
    for epoch in sorted((k for k in output if k.isdigit()), key=int):
        weighted, steps = 0.0, 0
        for block, proc in output[epoch]["proc"].items():
            if block == "eval" or not proc:
                continue
            load = output[epoch]["load"][block]
            window = stats[epoch][block]
            seconds = (parse_time(window["end"]) - parse_time(window["start"])).total_seconds()
            compute = [p - lo for p, lo in zip(proc[1:], load[1:])]
            au = 100 * sum(compute) / (seconds - proc[0])
            weighted += au * len(proc)
            steps += len(proc)
        result.append(weighted / steps)
    return result


def au_cases(tools: Tools, repeats: int) -> list[dict]:
    rows = []
    for name, fmt, files, spf, length, batch, loader, compute, epochs in AU_CASES:
        case = f"au_{name}"
        data = tools.work / "data" / case
        doc = document(case, fmt, files, spf, length, batch, loader, compute, epochs, data)
        tools.config(case, doc)
        if not (data / "train").is_dir():
            code, text = tools.run(tools.command("dl-driver", case, tools.work / "out" / case / "generate", True))
            if code:
                raise RuntimeError(f"generating {case}: {last_line(text)}")
        (data / "valid").mkdir(exist_ok=True)
        runs: dict[str, list[dict]] = {"dl-driver": [], "DLIO 2.0.0": []}
        for _ in range(repeats):
            for tool in runs:
                for path in data.rglob("*"):  # into the page cache
                    if path.is_file():
                        path.read_bytes()
                out = tools.work / "out" / case / tool.split()[0]
                shutil.rmtree(out, ignore_errors=True)
                command = tools.command(tool, case, out, False)
                code, text = tools.run(command)
                if code:
                    runs[tool].append({"error": last_line(text), "command": shlex.join(command)})
                    continue
                metric = json.loads((out / "summary.json").read_text())["metric"]
                runs[tool].append({
                    "reported_au": metric["train_au_percentage"], "head_au": [round(a, 3) for a in head_au(out)],
                    "samples_per_second": metric["train_throughput_mean_samples_per_second"],
                    "command": shlex.join(command),
                })
        ideal = batch / compute
        ours = [r for r in runs["dl-driver"] if "error" not in r]
        theirs = [r for r in runs["DLIO 2.0.0"] if "error" not in r]
        row = {"case": f"{name}-shaped {fmt} ({files} x {spf} x {length // KIB} KiB, batch {batch}), "
                       f"computation_time {compute}", "ideal_samples_per_second": ideal, "runs": runs}
        if ours and theirs:
            gaps = [abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o["head_au"], t["head_au"])]
            rates = [o["samples_per_second"] for o in ours]
            row.update({
                "au_gap_points_max": round(max(gaps), 3),
                "au_ok": max(gaps) <= AU_POINTS and all(min(o["head_au"]) > 95 for o in ours)
                and all(min(t["head_au"]) > 95 for t in theirs),
                "dl_driver_rate_error": round(max(abs(r / ideal - 1) for r in rates), 4),
                "rate_ok": all(abs(r / ideal - 1) <= RATE_TOLERANCE for r in rates),
                "dlio_samples_per_second": [round(t["samples_per_second"], 2) for t in theirs],
                "dl_driver_samples_per_second": [round(r, 2) for r in rates],
            })
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "<!-- fidelity:begin -->",
        "## Fidelity with DLIO 2.0.0: interop both ways, AU and throughput",
        "",
        f"`{result['command']}` on {result['date']} ({result['machine']}). Interop: {INTEROP['files']} files x "
        f"{INTEROP['samples_per_file']} samples x {INTEROP['record_length'] // KIB} KiB, batch "
        f"{INTEROP['batch_size']}, 1 epoch, 1 process; a direction passes when the trainer exits 0 and reports the "
        "expected steps.",
        "",
        "| format | dl-driver writes, DLIO 2.0.0 trains | DLIO 2.0.0 writes, dl-driver trains |",
        "|---|---|---|",
    ]
    by_format: dict[str, dict[str, dict]] = {}
    for r in result["interop"]:
        by_format.setdefault(r["format"], {})[r["writer"]] = r

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        return f"ok ({r['steps'][0]} steps)" if r["ok"] else f"NO: {r['why']}".replace("|", "/")

    for fmt in FORMATS:
        lines.append(f"| {fmt} | {cell(by_format.get(fmt, {}).get('dl-driver'))} | "
                     f"{cell(by_format.get(fmt, {}).get('DLIO 2.0.0'))} |")
    lines += [
        "",
        "AU, data in the page cache, 1 process, both tools' AU recomputed from their own `0_output.json` and per-epoch "
        "stats with DLIO HEAD's formula (compute = proc - load, first step excluded; see the script's docstring); "
        f"targets: AU gap <= {AU_POINTS:g} points with both above 95%, dl-driver's samples/s within "
        f"{RATE_TOLERANCE:.0%} of batch / computation_time.",
        "",
        "| case | max AU gap (points) | AU ok | dl-driver samples/s | DLIO 2.0.0 samples/s | ideal | dl-driver rate ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["au"]:
        if "au_ok" not in r:
            errors = "; ".join(x["error"] for runs in r["runs"].values() for x in runs if "error" in x)
            lines.append(f"| {r['case']} | n/a | NO: {errors[:200]} | | | {r['ideal_samples_per_second']:.1f} | |")
            continue
        lines.append(
            f"| {r['case']} | {r['au_gap_points_max']} | {'yes' if r['au_ok'] else 'NO'} | "
            f"{', '.join(f'{x:.2f}' for x in r['dl_driver_samples_per_second'])} | "
            f"{', '.join(f'{x:.2f}' for x in r['dlio_samples_per_second'])} | {r['ideal_samples_per_second']:.2f} | "
            f"{'yes' if r['rate_ok'] else 'NO'} |")
    lines += ["", "Per-run AU (reported and HEAD-formula) and every command: benches/results/fidelity.json.",
              "<!-- fidelity:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dlio", required=True, help="DLIO 2.0.0's dlio_benchmark")
    parser.add_argument("--dl-driver", required=True)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dl-driver-fidelity"))
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each AU case per tool")
    parser.add_argument("--command", default="benches/fidelity_vs_dlio.sh")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tools = Tools(args.dl_driver, args.dlio, args.work)
    result = {
        "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": args.command, "interop": interop(tools), "au": au_cases(tools, args.repeats),
    }
    results_md.save("fidelity", result, markdown(result))
    failed = [r for r in result["interop"] if not r["ok"]] + [r for r in result["au"] if not r.get("au_ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
