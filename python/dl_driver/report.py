"""``dl-driver report RESULTS_DIR``: every run folder under a results tree (dl-driver's and DLIO's) as
``mlpstorage reports reportgen`` writes them (``results.json``, ``results.csv``), the MLPerf v3 results-table rows per
submission, and the CLOSED / OPEN / INVALID verdicts per run and per submission; unreadable or partial folders are
listed with why."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path
from typing import Any

from dl_driver import mlperf, results
from dl_driver._core import DlDriverError


def run_folders(paths: list[str]) -> list[str]:
    """The run folders (holding summary.json) at or under each path, each path's in name order."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise DlDriverError(f"{path}: not a folder")
        if os.path.isfile(os.path.join(path, "summary.json")):
            found.append(path)
            continue
        below = sorted(root for root, _, files in os.walk(path) if "summary.json" in files)
        if not below:
            raise DlDriverError(f"{path}: no run folder (one holding summary.json) at or under it")
        found.extend(below)
    return found


def reportgen_record(run: mlperf.RunFolder) -> dict[str, Any]:
    """reportgen's record of a run folder: dl-driver's full record when the folder is ours, else (DLIO's) the
    fields reportgen itself takes."""
    if (run.path / "dl_driver_report.json").is_file():
        return results.record_of_run(run).to_dict()
    memory = sum(float(m) for m in run.summary.get("host_memory_GB", [])) * 2**30
    return {
        "schema_version": results.SCHEMA_VERSION,
        "run_id": run.path.name,
        "benchmark_type": run.kind,
        "model": str(run.config.model.name),
        "command": "datagen" if run.kind == "datagen" else "run",
        "parameters": run.workload,
        "system_info": {
            "total_memory_bytes": int(memory),
            "total_cores": int(sum(run.summary.get("host_cpu_count", []))),
        },
        "metrics": dict(run.summary.get("metric", {})),
    }


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return round(statistics.fmean(numbers), 2) if numbers else None


def table_row(kind: str, model: str, runs: list[mlperf.RunFolder], verdict: mlperf.Verdict) -> dict[str, Any]:
    """MLPerf v3's results-table row of a submission (values rounded to 2 decimals; blank cells stay None)."""
    first = runs[0]
    row: dict[str, Any] = {"Division": verdict.division, "Benchmark Type": kind, "Model": model}
    if kind == "training":
        measured = runs[1:] if len(runs) > 1 else runs  # the first run is the warm-up
        row.update(
            {
                "Training - Accelerator Type": mlperf.accelerator(first.config),
                "Training - # Client Nodes": int(first.summary.get("num_hosts", 1)),
                "Training - # Simulated Accelerators": int(first.summary.get("num_accelerators", 1)),
                "Training - Read B/W (GiB/s)": _mean(
                    [r.summary.get("metric", {}).get("train_io_mean_MB_per_second", 0) / 1024 for r in measured]
                ),
            }
        )
    else:
        spec = mlperf.CHECKPOINTING.get(model)
        metric = [r.summary.get("metric", {}) for r in runs]
        row.update(
            {
                "Checkpointing - Checkpoint Mode": "Subset"
                if str(first.config.checkpoint.mode) == "subset"
                else "Full",
                "Checkpointing - # Client Nodes": int(first.summary.get("num_hosts", 1)),
                "Checkpointing - DP Instances": spec.processes // (spec.tensor * spec.pipeline) if spec else None,
                "Checkpointing - Write B/W (GiB/s)": _mean(
                    [m.get("save_checkpoint_io_mean_GB_per_second") for m in metric]
                ),
                "Checkpointing - Write Duration (secs)": _mean(
                    [m.get("save_checkpoint_duration_mean_seconds") for m in metric]
                ),
                "Checkpointing - Read B/W (GiB/s)": _mean(
                    [m.get("load_checkpoint_io_mean_GB_per_second") for m in metric]
                ),
                "Checkpointing - Read Duration (secs)": _mean(
                    [m.get("load_checkpoint_duration_mean_seconds") for m in metric]
                ),
            }
        )
    return row


def build(paths: list[str], *, accelerator_memory_gb: float = 80.0) -> dict[str, Any]:
    """The report of every run folder under ``paths``."""
    runs: list[mlperf.RunFolder] = []
    unreadable: list[dict[str, str]] = []
    for path in run_folders(paths):
        try:
            runs.append(mlperf.read_run(path))
        except DlDriverError as e:
            unreadable.append({"folder": path, "why": str(e)})
    records: list[dict[str, Any]] = []
    folders: list[str] = []
    for run in list(runs):
        try:
            records.append(reportgen_record(run))
            folders.append(str(run.path))
        except DlDriverError as e:
            unreadable.append({"folder": str(run.path), "why": str(e)})
            runs.remove(run)
    per_run, submissions = mlperf.check_submission(runs, accelerator_memory_gb=accelerator_memory_gb)
    groups = mlperf.submissions(runs)
    table = [
        table_row(kind, model, members, verdict)
        for (kind, model, members), verdict in zip(groups, submissions, strict=True)
    ]
    return {
        "records": records,
        "folders": folders,
        "runs": [v.to_dict() for v in per_run],
        "submissions": [v.to_dict() for v in submissions],
        # Each submission's run folders, in the order of "submissions".
        "submission_folders": [[str(r.path) for r in members] for _, _, members in groups],
        "table": table,
        "unreadable": unreadable,
    }


def write(report: dict[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Writes ``results.json`` (reportgen's list of records), ``results.csv`` (the records flattened with ``.``,
    one row each, the union of the columns) and ``verdicts.json`` (verdicts, the v3 table, unreadable folders)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(report["records"], indent=2) + "\n")
    rows = [results.flatten(r) for r in report["records"]]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    rest = {k: report[k] for k in ("runs", "submissions", "table", "unreadable")}
    (folder / "verdicts.json").write_text(json.dumps(rest, indent=2) + "\n")
    return [folder / "results.json", folder / "results.csv", folder / "verdicts.json"]
