"""A run as an MLPerf results record: ``Report.to_mlperf_json()``.

The record is mlpstorage's ``results.json`` entry (``run_id, benchmark_type, model, command, parameters,
system_info{total_memory_bytes, total_cores}, metrics`` with DLIO's metric names and units) plus a ``dl_driver``
section with what MLPerf's tools do not carry: the backend, totals, I/O throughput with its units stated, per-epoch
throughput and AU, per-stage latency percentiles, checkpoint bandwidth and durations (DLIO's and the slowest-rank
rule), the access-order digests per rank and epoch, and the verdict of MLPerf's rules with its reasons. The JSON
Schema is ``dl_driver/schemas/mlperf_record.schema.json`` (``SCHEMA_PATH``).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

from dl_driver import mlperf
from dl_driver._core import DlDriverError

#: The record's schema version: its major number changes when a field changes meaning or goes.
SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "mlperf_record.schema.json"
_PERCENTILES = (("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"), ("p99_9", "p999_us"), ("max", "max_us"))
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)


class MlperfRecord:
    """One run's record; ``save(path)`` writes it as JSON, ``to_csv(path)`` as one CSV row of its flattened keys."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._record = record

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._record))  # type: ignore[no-any-return]

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self._record, indent=2) + "\n")

    def flat(self) -> dict[str, Any]:
        """The record's leaves under dotted keys (``metrics.train_au_mean_percentage``); lists as JSON text."""
        return flatten(self._record)

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        row = self.flat()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        elif isinstance(v, (list, dict)):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DlDriverError(f"{path}: unreadable: {e}") from e
    if not isinstance(value, dict):
        raise DlDriverError(f"{path}: expected a JSON object")
    return value


def _errors(details: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Failed storage requests by kind, for the job and per rank (``total`` is None for a run that did not count
    them: a folder written before dl-driver counted)."""
    counted = "request_errors" in details
    by_kind = {str(k): int(v) for k, v in dict(details.get("request_errors", {})).items()}
    return {
        "what": "failed HTTP attempts of the object stores (s3, az, gs), retried by the client unless the run failed; "
        "local files fail the run instead",
        "total": sum(by_kind.values()) if counted else None,
        "by_kind": by_kind,
        "per_rank": [
            {"rank": int(r.get("rank", i)), "by_kind": {str(k): int(v) for k, v in r.get("request_errors", {}).items()}}
            for i, r in enumerate(ranks)
        ],
    }


def record_of(folder: str | os.PathLike[str]) -> MlperfRecord:
    """The record of a finished dl-driver run folder (``summary.json``, ``dl_driver_report.json`` and Hydra's files)."""
    return record_of_run(mlperf.read_run(folder))


def record_of_run(run: mlperf.RunFolder) -> MlperfRecord:
    """:func:`record_of` for a folder already read."""
    details = _read_json(run.path / "dl_driver_report.json")
    summary, metric = run.summary, dict(run.summary.get("metric", {}))
    memory = sum(float(m) for m in summary.get("host_memory_GB", [])) * 2**30
    ranks = details.get("ranks", [])
    samples = sum(sum(r.get("samples", [])) for r in ranks)
    total_bytes = sum(sum(r.get("bytes_read", [])) for r in ranks)
    verdict = mlperf.check_run(run)
    latency = {
        stage: {name: values.get(key) for name, key in _PERCENTILES} | {"count": values.get("count")}
        for stage, values in sorted(details.get("latency_all_ranks", {}).items())
    }
    mib = metric.get("train_io_mean_MB_per_second")
    epochs = [
        {"epoch": i + 1, "throughput_samples_per_second": t, "au_percentage": a}
        for i, (t, a) in enumerate(
            zip(
                metric.get("train_throughput_samples_per_second", []),
                metric.get("train_au_percentage", []),
                strict=False,
            )
        )
    ]
    location = str(details.get("data_location", ""))
    # What the run measured (a run that generated its data first still measured its training; mlpstorage's
    # folder classification, where generate_data wins, is for its datagen folders).
    workflow = run.config.workflow
    kind = "training" if workflow.train else "checkpointing" if workflow.checkpoint else run.kind
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.path.name,
        "benchmark_type": kind,
        "model": str(run.config.model.name),
        "command": "datagen" if kind == "datagen" else "run",
        "parameters": json.loads(run.config.to_json()),
        "system_info": {"total_memory_bytes": int(memory), "total_cores": int(sum(summary.get("host_cpu_count", [])))},
        "metrics": metric,
        "dl_driver": {
            "version": details.get("dl_driver_version"),
            "benchmark": str(run.config.model.name),
            "backend": {
                "type": location.split("://", 1)[0] if "://" in location else "file",
                "uri": _USERINFO.sub(r"\1", location),
            },
            "num_accelerators": int(summary.get("num_accelerators", 1)),
            "num_hosts": int(summary.get("num_hosts", 1)),
            "start": run.start.isoformat(),
            "end": run.end.isoformat(),
            "total_time_seconds": run.duration,
            "total_samples": samples,
            "total_bytes": total_bytes,
            "io_throughput": {
                "MiB_per_second": mib,
                "GiB_per_second": mib / 1024 if isinstance(mib, (int, float)) else None,
                "units": "train_io_mean_MB_per_second is MiB/s (2^20 bytes/s) despite its name; GiB = 2^30 bytes",
            },
            "epochs": epochs,
            "latency_us": latency,
            "checkpoints": {
                "write": {
                    "GiB_per_second": metric.get("save_checkpoint_io_mean_GB_per_second"),
                    "duration_mean_seconds": metric.get("save_checkpoint_duration_mean_seconds"),
                },
                "read": {
                    "GiB_per_second": metric.get("load_checkpoint_io_mean_GB_per_second"),
                    "duration_mean_seconds": metric.get("load_checkpoint_duration_mean_seconds"),
                },
                "size_GiB": metric.get("checkpoint_size_GB"),
                "slowest_rank_rule": details.get("checkpoint_rule", {}),
            },
            "errors": _errors(details, ranks),
            "digests": [
                {"rank": int(r.get("rank", i)), "epochs": list(r.get("digests", []))} for i, r in enumerate(ranks)
            ],
            "interrupted": bool(details.get("interrupted", False)),
            "verdict": verdict.to_dict(),
            "written": datetime.datetime.now().isoformat(),
        },
    }
    return MlperfRecord(record)
