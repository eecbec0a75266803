"""MLPerf Storage's rules as code: the minimum dataset (``datasize``), and the CLOSED / OPEN / INVALID verdict of run
folders and of a submission (``check``), each reason quoting the rule it applies.

The numbers are MLPerf Storage's (v2.0 and v3.0 rules, as MLCommons' mlpstorage and its checkers apply them); see
docs/mlperf.md. A run folder is DLIO's (or dl-driver's): ``summary.json``, the Hydra folder (``dlio_config/`` or
``.hydra/``) with ``config.yaml`` (``workload:``) and ``overrides.yaml``.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dl_driver import _core
from dl_driver._core import DlDriverError
from dl_driver.config import Config, load_dlio_config

#: mlpstorage suggests subfolders above this many training files.
MAX_FILES_PER_FOLDER = 10_000
#: The dataset must be at least this many times the clients' memory.
MEMORY_MULTIPLE = 5
#: ... and hold at least this many steps of every accelerator.
MIN_STEPS = 500


@dataclass(frozen=True)
class TrainingWorkload:
    au: float
    epochs: int
    batch_size: int
    format: str
    framework: str
    samples_per_file: int
    record_length_bytes: float
    computation_time: dict[str, float]


#: The closed division's training workloads (../shared/reference/mlperf-storage.md).
TRAINING = {
    "unet3d": TrainingWorkload(
        0.90, 5, 7, "npz", "pytorch", 1, 146_600_628, {"a100": 0.636, "h100": 0.323, "b200": 0.162}
    ),
    "resnet50": TrainingWorkload(
        0.90, 5, 400, "tfrecord", "tensorflow", 1251, 114_660.07, {"a100": 0.435, "h100": 0.224}
    ),
    "cosmoflow": TrainingWorkload(
        0.70, 5, 1, "tfrecord", "tensorflow", 1, 2_828_486, {"a100": 0.00551, "h100": 0.00350}
    ),
    "retinanet": TrainingWorkload(0.85, 8, 24, "jpeg", "pytorch", 1, 322_957, {"b200": 0.04755}),
}


@dataclass(frozen=True)
class CheckpointWorkload:
    processes: int
    tensor: int
    pipeline: int


#: The checkpointing workloads: closed process counts and model parallelism.
CHECKPOINTING = {
    "llama3-8b": CheckpointWorkload(8, 1, 1),
    "llama3-70b": CheckpointWorkload(64, 8, 1),
    "llama3-405b": CheckpointWorkload(512, 8, 32),
    "llama3-1t": CheckpointWorkload(1024, 8, 64),
}

#: Overrides the closed division allows (MLPerf Storage rules), by key path under ``workload.``.
CLOSED_OVERRIDES = frozenset(
    {
        "dataset.num_files_train",
        "dataset.num_subfolders_train",
        "dataset.data_folder",
        "reader.read_threads",
        "reader.computation_threads",
        "reader.transfer_size",
        "reader.prefetch_size",
        "checkpoint.checkpoint_folder",
        "storage.storage_type",
        "storage.storage_root",
        "storage.storage_options.prefetch_window",
    }
)
#: ... and the open division on top.
OPEN_OVERRIDES = frozenset({"framework", "dataset.format", "dataset.num_samples_per_file", "reader.data_loader"})
#: What mlpstorage itself adds to every run or to checkpointing runs, and v3's injected keys: not the submitter's.
TOOL_OVERRIDES = frozenset(
    {
        "workflow.generate_data",
        "workflow.train",
        "workflow.checkpoint",
        "dataset.skip_listing",
        "dataset.listing_validation_interval",
        "dataset.num_files_generated",
        "dataset.total_disk_bytes",
        "storage.storage_options.storage_library",
        "storage.storage_options.uri_scheme",
        "storage.s3_force_path_style",
        "checkpoint.num_checkpoints_read",
        "checkpoint.num_checkpoints_write",
        "checkpoint.mode",
        "model.parallelism.data",
        # a new seed per run is MLPerf's rule
        "train.seed",
    }
)


def _ceil_div(a: float, b: float) -> int:
    return math.ceil(a / b - 1e-9)


def training_datasize(cfg: Config, *, accelerators: int, host_memory_gb: float, hosts: int) -> dict[str, Any]:
    """mlpstorage's minimum training dataset: at least 5x the clients' memory and 500 steps of every accelerator,
    in files of ``num_samples_per_file`` samples; subfolders suggested above 10,000 files."""
    for name, value in (("accelerators", accelerators), ("hosts", hosts)):
        if value < 1:
            raise DlDriverError(f"--num-{name} is {value}: expected 1 or more")
    if host_memory_gb <= 0:
        raise DlDriverError(f"--host-memory-gb is {host_memory_gb}: expected a size in GiB > 0")
    record = float(cfg.dataset.record_length_bytes)
    per_file = int(cfg.dataset.num_samples_per_file)
    batch = int(cfg.reader.batch_size)
    memory = host_memory_gb * 2**30 * hosts
    by_memory = _ceil_div(MEMORY_MULTIPLE * memory, record)
    by_steps = MIN_STEPS * batch * accelerators
    samples = max(by_memory, by_steps)
    files = _ceil_div(samples, per_file)
    subfolders = _ceil_div(files, MAX_FILES_PER_FOLDER) if files > MAX_FILES_PER_FOLDER else 0
    return {
        "model": cfg.model.name,
        "accelerators": accelerators,
        "hosts": hosts,
        "host_memory_gb": host_memory_gb,
        "samples_by_memory": by_memory,
        "samples_by_steps": by_steps,
        "dictated_by": "memory" if by_memory >= by_steps else "steps",
        "num_files_train": files,
        "num_subfolders_train": subfolders,
        "dataset_bytes": math.ceil(files * per_file * record),
        "overrides": [f"++workload.dataset.num_files_train={files}"]
        + ([f"++workload.dataset.num_subfolders_train={subfolders}"] if subfolders else []),
    }


def checkpoint_datasize(cfg: Config, *, processes: int) -> dict[str, Any]:
    """A checkpoint's bytes for ``processes`` ranks (DLIO's sizing), per rank and in total, and what the configured
    writes need."""
    if processes < 1:
        raise DlDriverError(f"--num-processes is {processes}: expected 1 or more")
    size = cfg.plan(processes)["checkpoint"]
    if size is None:
        raise DlDriverError(f"{cfg.source_name}: workflow.checkpoint is off: the workload writes no checkpoints")
    writes = int(size["writes"])
    total = int(size["size"]["total_bytes"])
    return {
        "model": cfg.model.name,
        "processes": processes,
        "ranks_writing": int(size["size"]["ranks_writing"]),
        "checkpoint_bytes": total,
        "largest_rank_bytes": int(size["size"]["largest_rank_bytes"]),
        "mean_rank_bytes": total // max(1, int(size["size"]["ranks_writing"])),
        "writes": writes,
        "written_bytes": total * writes,
    }


# --- run folders -----------------------------------------------------------------------------------------------------

TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%f"


@dataclass
class RunFolder:
    """A run folder as the MLPerf tools read it."""

    path: Path
    summary: dict[str, Any]
    workload: dict[str, Any]
    overrides: list[str]
    config: Config
    kind: str
    start: datetime.datetime
    end: datetime.datetime
    hydra_folder: Path

    @property
    def duration(self) -> float:
        return (self.end - self.start).total_seconds()

    def override_keys(self) -> list[str]:
        keys = []
        for text in self.overrides:
            key = text.partition("=")[0].lstrip("+~")
            if key.startswith("workload."):
                keys.append(key.removeprefix("workload."))
        return keys


def _time(text: Any, where: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(str(text))
    except ValueError as e:
        raise DlDriverError(f"{where}: '{text}' is not a timestamp ({TIMESTAMP})") from e


def _yaml(path: Path) -> Any:
    try:
        return json.loads(_core.yaml_to_json(path.read_text(), str(path)))
    except OSError as e:
        raise DlDriverError(f"{path}: unreadable: {e}") from e


def read_run(path: str | os.PathLike[str]) -> RunFolder:
    """Reads one run folder; DlDriverError names the file and what is missing."""
    run = Path(path)
    summary_path = run / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError as e:
        raise DlDriverError(f"{summary_path}: missing: not a finished run folder") from e
    except (OSError, ValueError) as e:
        raise DlDriverError(f"{summary_path}: unreadable: {e}") from e
    hydra = next((run / d for d in ("dlio_config", ".hydra") if (run / d / "config.yaml").is_file()), None)
    if hydra is None:
        raise DlDriverError(f"{run}: no dlio_config/config.yaml or .hydra/config.yaml (Hydra's record of the run)")
    composed = _yaml(hydra / "config.yaml")
    overrides = _yaml(hydra / "overrides.yaml") if (hydra / "overrides.yaml").is_file() else []
    if not isinstance(composed, dict) or not isinstance(composed.get("workload"), dict):
        raise DlDriverError(f"{hydra / 'config.yaml'}: no top-level 'workload:' mapping (Hydra's composed config)")
    if not isinstance(overrides, list):
        raise DlDriverError(f"{hydra / 'overrides.yaml'}: expected a YAML list of overrides")
    workload = composed["workload"]
    try:
        config = load_dlio_config(workload)
    except DlDriverError as e:
        raise DlDriverError(f"{hydra / 'config.yaml'}: {e}") from e
    workflow = workload.get("workflow") or {}
    # mlpstorage's classification: generate_data wins (a datagen run), then train, then checkpoint.
    kind = (
        "datagen"
        if workflow.get("generate_data")
        else "training"
        if workflow.get("train")
        else "checkpointing"
        if workflow.get("checkpoint")
        else "unknown"
    )
    for key in ("start", "end"):
        if key not in summary:
            raise DlDriverError(f"{summary_path}: no '{key}' timestamp")
    return RunFolder(
        run,
        summary,
        workload,
        [str(o) for o in overrides],
        config,
        kind,
        _time(summary["start"], f"{summary_path} start"),
        _time(summary["end"], f"{summary_path} end"),
        hydra,
    )


# --- verdicts --------------------------------------------------------------------------------------------------------

CLOSED, OPEN, INVALID = "CLOSED", "OPEN", "INVALID"
_RANK = {CLOSED: 0, OPEN: 1, INVALID: 2}


@dataclass
class Verdict:
    """CLOSED, OPEN or INVALID and every reason: (division it forces, the message quoting the rule)."""

    subject: str
    reasons: list[tuple[str, str]] = field(default_factory=list)

    @property
    def division(self) -> str:
        return max((d for d, _ in self.reasons), key=_RANK.__getitem__, default=CLOSED)

    def add(self, division: str, message: str) -> None:
        self.reasons.append((division, message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "verdict": self.division,
            "reasons": [{"division": d, "reason": m} for d, m in self.reasons],
        }


def model_key(name: str) -> str | None:
    """The MLPerf workload a model name is (``unet3d``, ``llama3-70b``, ...), or None."""
    lowered = name.lower()
    for known in TRAINING:
        if known in lowered:
            return known
    match = re.search(r"(8b|70b|405b|1t)", lowered)
    return f"llama3-{match.group(1)}" if match and "llama" in lowered else None


def computation_seconds(cfg: Config) -> float | None:
    """``train.computation_time`` as one number: the constant, or a distribution's mean."""
    compute = cfg.train.computation_time
    value = compute.get("mean", compute.get("value")) if isinstance(compute, dict) else compute
    return None if value is None else float(value)


def accelerator(cfg: Config) -> str:
    """The accelerator whose closed computation time the config uses (``h100``, ...), or ``""``."""
    spec = TRAINING.get(model_key(str(cfg.model.name)) or "")
    value = computation_seconds(cfg)
    if spec is None or value is None:
        return ""
    return next((name for name, t in spec.computation_time.items() if abs(value - t) < 1e-9), "")


def submissions(runs: list[RunFolder]) -> list[tuple[str, str, list[RunFolder]]]:
    """The runs of each submission, one benchmark and model: (kind, model, its runs by start), in (kind, model) order."""
    groups: dict[tuple[str, str], list[RunFolder]] = {}
    for run in runs:
        if run.kind in ("training", "checkpointing"):
            key = (run.kind, model_key(str(run.config.model.name)) or str(run.config.model.name))
            groups.setdefault(key, []).append(run)
    return [(kind, model, sorted(members, key=lambda r: r.start)) for (kind, model), members in sorted(groups.items())]


def check_run(run: RunFolder, *, accelerator_memory_gb: float = 80.0) -> Verdict:
    """The rules one run folder must meet on its own."""
    verdict = Verdict(str(run.path))
    model = model_key(str(run.config.model.name))
    if run.kind == "training":
        _check_training(run, verdict, model)
    elif run.kind == "checkpointing":
        _check_checkpointing(run, verdict, model, accelerator_memory_gb)
    else:
        verdict.add(INVALID, f"a {run.kind} run is not a result: MLPerf counts training and checkpointing runs")
    return verdict


def _check_overrides(run: RunFolder, verdict: Verdict, closed: frozenset[str], opened: frozenset[str]) -> None:
    for key in run.override_keys():
        if key in TOOL_OVERRIDES or key in closed or key.startswith("storage.storage_options."):
            continue
        if key in opened:
            verdict.add(
                OPEN, f"override {key}: allowed in the open division only (closed allows {', '.join(sorted(closed))})"
            )
        else:
            verdict.add(
                INVALID,
                f"override {key}: not allowed in either division (MLPerf Storage's closed list: "
                f"{', '.join(sorted(closed))}; open adds {', '.join(sorted(opened)) or 'nothing'})",
            )


def _check_training(run: RunFolder, verdict: Verdict, model: str | None) -> None:
    cfg, summary = run.config, run.summary
    if model not in TRAINING:
        verdict.add(
            INVALID, f"model '{cfg.model.name}' is not an MLPerf Storage training workload ({', '.join(TRAINING)})"
        )
        return
    spec = TRAINING[model]
    closed = CLOSED_OVERRIDES | ({"reader.odirect"} if model == "unet3d" else frozenset())
    _check_overrides(run, verdict, closed, OPEN_OVERRIDES)
    for key, have, want in (
        ("framework", cfg.framework, spec.framework),
        ("dataset.format", cfg.dataset.format, spec.format),
        ("dataset.num_samples_per_file", cfg.dataset.num_samples_per_file, spec.samples_per_file),
    ):
        if have != want:
            verdict.add(OPEN, f"{key} is {have}: {model}'s closed value is {want} (the open division may change it)")
    fixed: list[tuple[str, Any, Any]] = [
        ("train.epochs", cfg.train.epochs, spec.epochs),
        ("reader.batch_size", cfg.reader.batch_size, spec.batch_size),
        ("metric.au", cfg.metric.au, spec.au),
    ]
    for key, have, want in fixed:
        if have != want:
            verdict.add(INVALID, f"{key} is {have}: {model} runs with {want} in both divisions")
    if abs(float(cfg.dataset.record_length_bytes) - spec.record_length_bytes) > 0.5:
        verdict.add(
            INVALID,
            f"dataset.record_length_bytes is {cfg.dataset.record_length_bytes}: {model}'s records "
            f"are {spec.record_length_bytes} bytes",
        )
    if not accelerator(cfg):
        value = computation_seconds(cfg)
        known = ", ".join(f"{a} {t}" for a, t in spec.computation_time.items())
        verdict.add(INVALID, f"train.computation_time is {value}: no accelerator of {model} ({known})")
    accelerators = int(summary.get("num_accelerators", 1))
    memory = sum(float(m) for m in summary.get("host_memory_GB", [])) * 2**30
    files, per_file = int(cfg.dataset.num_files_train), int(cfg.dataset.num_samples_per_file)
    needed = (
        max(
            MIN_STEPS * int(cfg.reader.batch_size) * accelerators,
            MEMORY_MULTIPLE * memory / float(cfg.dataset.record_length_bytes),
        )
        / per_file
    )
    if files < needed:
        verdict.add(
            INVALID,
            f"dataset.num_files_train is {files}: MLPerf needs >= max(500 x batch {cfg.reader.batch_size} x "
            f"{accelerators} accelerators, 5 x {memory / 2**30:.1f} GiB of host memory / record "
            f"length) / {per_file} samples per file = {math.ceil(needed)} files",
        )
    metric = summary.get("metric", {})
    if metric.get("train_au_meet_expectation") != "success":
        verdict.add(
            INVALID,
            f"AU {metric.get('train_au_mean_percentage')}% is under the threshold "
            f"{100 * spec.au:.0f}% (train_au_meet_expectation: "
            f"{metric.get('train_au_meet_expectation')}): every run must meet it",
        )
    if model == "unet3d" and not cfg.workflow.checkpoint:
        verdict.add(INVALID, "unet3d runs must checkpoint (workflow.checkpoint: True, MLPerf Storage v2.0)")
    for key in ("num_files_train", "num_files_eval"):
        if key not in summary:
            verdict.add(INVALID, f"summary.json has no {key} (MLPerf v3's checker reads it)")


def _check_checkpointing(run: RunFolder, verdict: Verdict, model: str | None, accelerator_memory_gb: float) -> None:
    cfg, summary = run.config, run.summary
    if model not in CHECKPOINTING:
        verdict.add(
            INVALID,
            f"model '{cfg.model.name}' is not an MLPerf Storage checkpointing workload ({', '.join(CHECKPOINTING)})",
        )
        return
    spec = CHECKPOINTING[model]
    _check_overrides(run, verdict, CLOSED_OVERRIDES, frozenset())
    processes = int(summary.get("num_accelerators", 1))
    subset = str(cfg.checkpoint.mode) == "subset"
    if subset and not (model == "llama3-8b" and processes == 8):
        verdict.add(
            INVALID,
            f"checkpoint.mode subset with {model} on {processes} processes: subset mode is only "
            "for llama3-8b on 8 processes (MLPerf Storage v3)",
        )
    elif not subset and processes != spec.processes:
        if processes % (spec.tensor * spec.pipeline) == 0:
            verdict.add(
                OPEN,
                f"{processes} processes: closed {model} runs {spec.processes}; open allows any "
                f"multiple of TP x PP = {spec.tensor * spec.pipeline}",
            )
        else:
            verdict.add(
                INVALID,
                f"{processes} processes: {model} needs {spec.processes} (closed) or a multiple of "
                f"TP x PP = {spec.tensor * spec.pipeline} (open)",
            )
    hosts = max(1, int(summary.get("num_hosts", 1)))
    if processes / hosts <= 4:
        verdict.add(INVALID, f"{processes / hosts:g} accelerators per host: MLPerf Storage v3 needs more than 4")
    size_gib = float(summary.get("metric", {}).get("checkpoint_size_GB") or 0)
    if processes * accelerator_memory_gb < size_gib:
        verdict.add(
            INVALID,
            f"{processes} accelerators x {accelerator_memory_gb:g} GB of accelerator memory < "
            f"the {size_gib:.1f} GiB checkpoint: the accelerators must hold it",
        )
    if not cfg.checkpoint.fsync:
        verdict.add(INVALID, "checkpoint.fsync is False: MLPerf checkpointing runs with fsync on")
    pair = (int(cfg.checkpoint.num_checkpoints_write), int(cfg.checkpoint.num_checkpoints_read))
    if pair not in ((10, 10), (10, 0), (0, 10)):
        verdict.add(
            INVALID,
            f"{pair[0]} writes and {pair[1]} reads: MLPerf's checkpointing is 10 writes and 10 reads, "
            "in one invocation (10/10) or two (10/0 then 0/10)",
        )


def check_submission(
    runs: list[RunFolder], *, accelerator_memory_gb: float = 80.0
) -> tuple[list[Verdict], list[Verdict]]:
    """Every run's verdict, and each submission's (the runs of one benchmark and model): training needs a warm-up and
    5 runs, each with a new seed, started less than 2x the shortest run apart; checkpointing needs its 10 writes and
    10 reads in one or two invocations, the reads starting <= 30 s after the writes end."""
    per_run = [check_run(r, accelerator_memory_gb=accelerator_memory_gb) for r in runs]
    of_run = {id(run): v for run, v in zip(runs, per_run, strict=True)}
    verdicts = []
    for kind, model, members in submissions(runs):
        verdict = Verdict(f"{kind} {model} ({len(members)} runs)")
        for run in members:
            if of_run[id(run)].division != CLOSED:
                verdict.add(of_run[id(run)].division, f"{run.path.name}: {of_run[id(run)].division}")
        if kind == "training":
            _check_training_submission(members, verdict)
        else:
            _check_checkpoint_submission(members, verdict)
        verdicts.append(verdict)
    return per_run, verdicts


def _check_training_submission(runs: list[RunFolder], verdict: Verdict) -> None:
    if len(runs) != 6:
        verdict.add(INVALID, f"{len(runs)} runs: a training result is 1 warm-up run and 5 measured runs (exactly 6)")
    seeds = [int(r.config.train.seed) for r in runs]
    for i in range(1, len(runs)):
        if seeds[i] in seeds[:i]:
            verdict.add(
                INVALID,
                f"{runs[i].path.name}: train.seed {seeds[i]} repeats an earlier run's: each run needs a new seed",
            )
    if len(runs) > 1:
        shortest = min(r.duration for r in runs)
        for before, after in itertools.pairwise(runs):
            apart = (after.start - before.start).total_seconds()
            if apart >= 2 * shortest:
                verdict.add(
                    INVALID,
                    f"{after.path.name} started {apart:.0f} s after {before.path.name}: consecutive "
                    f"runs must start less than 2x the shortest run ({shortest:.0f} s) apart",
                )


def _check_checkpoint_submission(runs: list[RunFolder], verdict: Verdict) -> None:
    pairs = [
        (int(r.config.checkpoint.num_checkpoints_write), int(r.config.checkpoint.num_checkpoints_read)) for r in runs
    ]
    if pairs == [(10, 10)]:
        return
    if pairs == [(10, 0), (0, 10)]:
        gap = (runs[1].start - runs[0].end).total_seconds()
        if gap > 30:
            verdict.add(INVALID, f"the reads started {gap:.0f} s after the writes ended: MLPerf allows at most 30 s")
        return
    verdict.add(
        INVALID,
        f"invocations of (writes, reads) {pairs}: MLPerf's checkpointing is one invocation of 10/10 "
        "or two, 10/0 then 0/10",
    )
