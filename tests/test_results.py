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
    # Local files make no HTTP requests: every kind is counted, and none failed.
    kinds = {"throttled", "server_error", "client_error", "connect", "timeout", "interrupted", "other"}
    assert d["errors"]["total"] == 0 and set(d["errors"]["by_kind"]) == kinds
    assert d["errors"]["per_rank"] == [{"rank": 0, "by_kind": dict.fromkeys(sorted(kinds), 0)}]
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


def test_failed_storage_requests_are_counted_by_kind(tmp_path: Path, servers: dict[str, str]) -> None:
    """A training run on S3 (moto) behind a link that answers the first connection 503 Slow Down and resets the next
    two: object_store retries them, the run succeeds, and the record counts exactly what the link spoiled."""
    from test_storage_conformance import s3_bucket
    from tests_support import FaultyLink

    s3_bucket(servers["moto"], "dl-driver-tests")
    folder = f"s3://dl-driver-tests/errors-{tmp_path.name}"
    options = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}
    generate = {"dataset.data_folder": folder, "storage.storage_options": {**options, "endpoint_url": servers["moto"]},
                "train.epochs": 1, "workflow.train": False, "workflow.evaluation": False}
    dl_driver.generate(dl_driver.load_dlio_config("quickstart", generate))
    link = FaultyLink(servers["moto"], throttle=1, reset=2)
    try:
        report = run(tmp_path, **{"dataset.data_folder": folder, "workflow.generate_data": False,
                                  "storage.storage_options": {**options, "endpoint_url": link.endpoint}})
    finally:
        link.close()
    assert link.spoiled == {"throttle": 1, "reset": 2}
    record = report.to_mlperf_json().to_dict()
    jsonschema.validate(record, json.loads(results.SCHEMA_PATH.read_text()))
    errors = record["dl_driver"]["errors"]
    assert errors["total"] == 3, errors
    # A reset shows as a broken connect or an interrupted request, by when the RST lands against the client's write.
    by_kind = errors["by_kind"]
    assert by_kind["throttled"] == 1 and by_kind["connect"] + by_kind["interrupted"] == 2, errors
    assert errors["per_rank"][0]["by_kind"] == errors["by_kind"]
    details = json.loads((tmp_path / "out" / "dl_driver_report.json").read_text())
    assert details["request_errors"] == errors["by_kind"]
    # A run on the same data with a clean link counts none.
    clean = run(tmp_path / "clean", **{"dataset.data_folder": folder, "workflow.generate_data": False,
                                       "storage.storage_options": {**options, "endpoint_url": servers["moto"]}})
    assert clean.to_mlperf_json().to_dict()["dl_driver"]["errors"]["total"] == 0
