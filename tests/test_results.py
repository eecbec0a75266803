"""Report.to_mlperf_json(): mlpstorage's results.json record plus dl-driver's section, its JSON Schema, CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import dl_driver
from dl_driver import results


def run(tmp_path: Path, **extra: Any) -> dl_driver.Report:
    values = {"dataset.data_folder": str(tmp_path / "data"), "output.folder": str(tmp_path / "out"),
              "train.epochs": 2, "workflow.evaluation": False, **extra}
    return dl_driver.DlioRunner(dl_driver.load_dlio_config("quickstart", values)).run_benchmark()


def test_the_record_round_trips_through_save_validates_and_flattens_to_the_csv_columns(tmp_path: Path) -> None:
    report = run(tmp_path)
    record = report.to_mlperf_json()
    record.save(tmp_path / "unet3d_benchmark_results.json")
    saved = json.loads((tmp_path / "unet3d_benchmark_results.json").read_text())
    assert saved == record.to_dict()
    schema = json.loads(results.SCHEMA_PATH.read_text())
    jsonschema.validate(saved, schema)
    record.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == list(results.flatten(saved))
    assert rows[0]["metrics.train_au_mean_percentage"] == str(saved["metrics"]["train_au_mean_percentage"])
    # The numbers, recomputed from the run's own files.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    details = json.loads((tmp_path / "out" / "dl_driver_report.json").read_text())
    d = saved["dl_driver"]
    assert saved["metrics"] == summary["metric"] and saved["benchmark_type"] == "training"
    assert saved["system_info"]["total_memory_bytes"] == int(sum(summary["host_memory_GB"]) * 2**30)
    steps = sum(b["steps"] for e in details["epochs"] for b in e["blocks"])
    assert d["total_samples"] == steps * 8  # quickstart's batch
    assert d["total_bytes"] == sum(b["bytes_read"] for e in details["epochs"] for b in e["blocks"])
    assert d["io_throughput"]["GiB_per_second"] == pytest.approx(summary["metric"]["train_io_mean_MB_per_second"] / 1024)
    assert [e["au_percentage"] for e in d["epochs"]] == summary["metric"]["train_au_percentage"]
    assert d["digests"] == [{"rank": 0, "epochs": details["ranks"][0]["digests"]}]
    assert {"read", "compute"} <= set(d["latency_us"]) and d["latency_us"]["read"]["p99_9"] is not None
    # A run that generated its data is a datagen folder to MLPerf's tools, and no result: the verdict says so.
    assert d["verdict"]["verdict"] == "INVALID"
    assert [r["reason"] for r in d["verdict"]["reasons"]] == [
        "a datagen run is not a result: MLPerf counts training and checkpointing runs"]


def test_a_record_never_holds_credentials(tmp_path: Path) -> None:
    report = run(tmp_path, **{"storage.storage_options": {"secret_access_key": "SUPERSECRET", "region": "x"}})
    text = json.dumps(report.to_mlperf_json().to_dict())
    assert "SUPERSECRET" not in text and '"secret_access_key": "***"' in text


def test_a_record_breaking_the_schema_is_caught(tmp_path: Path) -> None:
    saved = run(tmp_path).to_mlperf_json().to_dict()
    saved["dl_driver"]["backend"]["uri"] = "s3://key:secret@bucket/data"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(saved, json.loads(results.SCHEMA_PATH.read_text()))
