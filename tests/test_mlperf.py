"""MLPerf Storage's rules as code: `dl-driver datasize` and `dl-driver check` on hand-made run folders, each rule's
passing and failing case with the verdict and the reason (../shared/reference/mlperf-storage.md)."""

from __future__ import annotations

import csv
import datetime
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import dl_driver
from dl_driver import mlperf

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30
T0 = datetime.datetime(2026, 12, 1, 10, 0, 0)


def run_folder(root: Path, name: str, workload: str, *, overrides: list[str] | None = None, config: dict[str, Any] | None = None,
               summary: dict[str, Any] | None = None, start: float = 0.0, seconds: float = 100.0) -> Path:
    """A run folder as DLIO writes it under mlpstorage: summary.json and dlio_config/{config,hydra,overrides}.yaml."""
    folder = root / name
    (folder / "dlio_config").mkdir(parents=True)
    composed = yaml.safe_load((REPO / "configs" / "workload" / f"{workload}.yaml").read_text())
    for path, value in (config or {}).items():
        node = composed
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    (folder / "dlio_config" / "config.yaml").write_text(yaml.safe_dump({"workload": composed}))
    (folder / "dlio_config" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"run": {"dir": str(folder)}}}))
    given = [f"workload={workload}", *(overrides or [])]
    (folder / "dlio_config" / "overrides.yaml").write_text(yaml.safe_dump(given))
    begin = T0 + datetime.timedelta(seconds=start)
    document = {
        "num_accelerators": 8, "num_hosts": 1, "host_memory_GB": [64.0], "host_cpu_count": [32],
        "start": begin.isoformat(), "end": (begin + datetime.timedelta(seconds=seconds)).isoformat(),
        "num_files_train": composed.get("dataset", {}).get("num_files_train", 0), "num_files_eval": 0,
        "metric": {"train_au_meet_expectation": "success", "train_au_mean_percentage": 95.0,
                   "checkpoint_size_GB": 104.7},
    }
    document.update(summary or {})
    (folder / "summary.json").write_text(json.dumps(document))
    return folder


#: unet3d on 8 H100s, one host of 64 GiB: 500 steps x 7 x 8 = 28,000 samples beats 5 x 64 GiB / 146.6 MB = 2,344.
UNET = {"dataset.num_files_train": 28000, "dataset.num_subfolders_train": 3}
UNET_OVERRIDES = ["++workload.dataset.num_files_train=28000", "++workload.dataset.num_subfolders_train=3"]


def verdict(folder: Path) -> mlperf.Verdict:
    return mlperf.check_run(mlperf.read_run(folder))


def reasons(v: mlperf.Verdict) -> list[str]:
    return [m for _, m in v.reasons]


def test_a_closed_training_run_has_no_reasons(tmp_path: Path) -> None:
    v = verdict(run_folder(tmp_path, "r", "unet3d_h100", overrides=UNET_OVERRIDES, config=UNET))
    assert v.division == "CLOSED" and v.reasons == []


def test_overrides_by_division(tmp_path: Path) -> None:
    opened = verdict(run_folder(tmp_path, "open", "unet3d_h100", config={**UNET, "dataset.num_samples_per_file": 2},
                                overrides=[*UNET_OVERRIDES, "++workload.dataset.num_samples_per_file=2"]))
    assert opened.division == "OPEN"
    assert reasons(opened)[0].startswith("override dataset.num_samples_per_file: allowed in the open division only")
    bad = verdict(run_folder(tmp_path, "bad", "unet3d_h100", config={**UNET, "reader.batch_size": 8},
                             overrides=[*UNET_OVERRIDES, "++workload.reader.batch_size=8"]))
    assert bad.division == "INVALID"
    assert any(r.startswith("override reader.batch_size: not allowed in either division") for r in reasons(bad))
    assert "reader.batch_size is 8: unet3d runs with 7 in both divisions" in reasons(bad)
    odirect = verdict(run_folder(tmp_path, "odirect", "unet3d_h100", config=UNET,
                                 overrides=[*UNET_OVERRIDES, "++workload.reader.odirect=True"]))
    assert odirect.division == "CLOSED", "reader.odirect is a closed override for unet3d"
    resnet = verdict(run_folder(tmp_path, "resnet", "resnet50_h100", config={"dataset.num_files_train": 1000},
                                overrides=["++workload.reader.odirect=True", "++workload.dataset.num_files_train=1000"],
                                summary={"num_accelerators": 1}))
    assert any(r.startswith("override reader.odirect: not allowed") for r in reasons(resnet))


def test_dataset_size_rule_uses_the_runs_measured_memory(tmp_path: Path) -> None:
    # 5 x 64 GiB / 146,600,628 bytes = 2,343.7 samples; 500 x 7 x 8 = 28,000 samples: 28,000 files needed.
    small = verdict(run_folder(tmp_path, "small", "unet3d_h100", config={"dataset.num_files_train": 27999},
                               overrides=["++workload.dataset.num_files_train=27999"]))
    assert small.division == "INVALID" and "= 28000 files" in reasons(small)[0]
    # On 1 accelerator of a 1 TiB host memory dictates: 5 x 1024 GiB / record = 37,502.3 files.
    memory = {"num_accelerators": 1, "host_memory_GB": [1024.0]}
    big = verdict(run_folder(tmp_path, "big", "unet3d_h100", config=UNET, overrides=UNET_OVERRIDES, summary=memory))
    assert big.division == "INVALID" and f"= {math.ceil(5 * 1024 * GIB / 146600628)} files" in reasons(big)[0]


def test_au_threshold_and_unet3d_checkpointing(tmp_path: Path) -> None:
    low = verdict(run_folder(tmp_path, "low", "unet3d_h100", config=UNET, overrides=UNET_OVERRIDES, summary={
        "metric": {"train_au_meet_expectation": "fail", "train_au_mean_percentage": 80.0}}))
    assert low.division == "INVALID" and reasons(low) == [
        "AU 80.0% is under the threshold 90% (train_au_meet_expectation: fail): every run must meet it"]
    nockpt = verdict(run_folder(tmp_path, "nockpt", "unet3d_h100", config={**UNET, "workflow.checkpoint": False},
                                overrides=UNET_OVERRIDES))
    assert reasons(nockpt) == ["unet3d runs must checkpoint (workflow.checkpoint: True, MLPerf Storage v2.0)"]
    compute = verdict(run_folder(tmp_path, "compute", "unet3d_h100", config={**UNET, "train.computation_time": 0.2},
                                 overrides=UNET_OVERRIDES))
    assert reasons(compute) == ["train.computation_time is 0.2: no accelerator of unet3d (a100 0.636, h100 0.323, b200 0.162)"]


def training_submission(tmp_path: Path, starts: list[float], seeds: list[int]) -> mlperf.Verdict:
    runs = [run_folder(tmp_path, f"run{i}", "unet3d_h100", config={**UNET, "train.seed": seed},
                       overrides=[*UNET_OVERRIDES, f"++workload.train.seed={seed}"], start=start, seconds=100)
            for i, (start, seed) in enumerate(zip(starts, seeds, strict=True))]
    per_run, submissions = mlperf.check_submission([mlperf.read_run(r) for r in runs])
    assert all(v.division == "CLOSED" for v in per_run)
    assert len(submissions) == 1
    return submissions[0]


def test_a_training_submission_is_a_warm_up_and_five_runs_with_new_seeds_close_together(tmp_path: Path) -> None:
    good = training_submission(tmp_path / "good", [0, 110, 220, 330, 440, 550], [1, 2, 3, 4, 5, 6])
    assert good.division == "CLOSED" and good.reasons == []
    five = training_submission(tmp_path / "five", [0, 110, 220, 330, 440], [1, 2, 3, 4, 5])
    assert reasons(five) == ["5 runs: a training result is 1 warm-up run and 5 measured runs (exactly 6)"]
    seed = training_submission(tmp_path / "seed", [0, 110, 220, 330, 440, 550], [1, 2, 3, 3, 5, 6])
    assert reasons(seed) == ["run3: train.seed 3 repeats an earlier run's: each run needs a new seed"]
    gap = training_submission(tmp_path / "gap", [0, 110, 220, 420, 530, 640], [1, 2, 3, 4, 5, 6])
    assert reasons(gap) == [
        "run3 started 200 s after run2: consecutive runs must start less than 2x the shortest run (100 s) apart"]


CKPT = ["++workload.checkpoint.checkpoint_folder=/mnt/ckpt"]


def test_checkpointing_rules(tmp_path: Path) -> None:
    good = verdict(run_folder(tmp_path, "good", "llama_8b_zero3", overrides=CKPT))
    assert good.division == "CLOSED" and good.reasons == []
    nofsync = verdict(run_folder(tmp_path, "nofsync", "llama_8b_zero3", config={"checkpoint.fsync": False}))
    assert reasons(nofsync) == ["checkpoint.fsync is False: MLPerf checkpointing runs with fsync on"]
    few = verdict(run_folder(tmp_path, "few", "llama_8b_zero3", summary={"num_accelerators": 4}))
    assert few.division == "INVALID" and reasons(few) == [
        "4 processes: closed llama3-8b runs 8; open allows any multiple of TP x PP = 1",
        "4 accelerators per host: MLPerf Storage v3 needs more than 4"]
    subset8b = verdict(run_folder(tmp_path, "subset8b", "llama_8b_zero3", config={"checkpoint.mode": "subset"}))
    assert subset8b.division == "CLOSED" and subset8b.reasons == []
    subset = verdict(run_folder(tmp_path, "subset", "llama_70b", config={"checkpoint.mode": "subset"},
                                summary={"metric": {"checkpoint_size_GB": 114.0}}))
    assert reasons(subset) == [
        "checkpoint.mode subset with llama3-70b on 8 processes: subset mode is only for llama3-8b on 8 processes (MLPerf Storage v3)"]
    memory = verdict(run_folder(tmp_path, "memory", "llama_8b_zero3", summary={"metric": {"checkpoint_size_GB": 700.0}}))
    assert reasons(memory) == [
        "8 accelerators x 80 GB of accelerator memory < the 700.0 GiB checkpoint: the accelerators must hold it"]
    counts = verdict(run_folder(tmp_path, "counts", "llama_8b_zero3", config={"checkpoint.num_checkpoints_read": 5}))
    assert reasons(counts) == [("10 writes and 5 reads: MLPerf's checkpointing is 10 writes and 10 reads, in one "
                                "invocation (10/10) or two (10/0 then 0/10)")]


@pytest.mark.parametrize(("gap", "ok"), [(20, True), (40, False)])
def test_checkpoint_reads_start_within_30_s_of_the_writes(tmp_path: Path, gap: float, ok: bool) -> None:
    writes = run_folder(tmp_path, "w", "llama_8b_zero3", config={"checkpoint.num_checkpoints_read": 0}, seconds=100)
    reads = run_folder(tmp_path, "r", "llama_8b_zero3", config={"checkpoint.num_checkpoints_write": 0}, start=100 + gap)
    _, submissions = mlperf.check_submission([mlperf.read_run(writes), mlperf.read_run(reads)])
    expected = [] if ok else [f"the reads started {gap} s after the writes ended: MLPerf allows at most 30 s"]
    assert reasons(submissions[0]) == expected


def test_check_command_lists_unreadable_folders_and_exits_non_zero(cli: Any, tmp_path: Path) -> None:
    run_folder(tmp_path / "results", "good", "unet3d_h100", overrides=UNET_OVERRIDES, config=UNET)
    broken = tmp_path / "results" / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{}")
    done = cli("check", str(tmp_path / "results"), "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    runs = {Path(r["subject"]).name: r for r in json.loads(done.stdout)["runs"]}
    assert runs["good"]["verdict"] == "CLOSED"
    assert runs["broken"]["verdict"] == "INVALID"
    assert "no dlio_config/config.yaml or .hydra/config.yaml" in runs["broken"]["reasons"][0]["reason"]
    # The run is CLOSED on its own; as a submission one run is not enough.
    text = cli("check", str(tmp_path / "results" / "good"))
    assert text.returncode == 1 and "good: CLOSED" in text.stdout
    assert "training unet3d (1 runs): INVALID" in text.stdout and "(exactly 6)" in text.stdout


def test_datasize_for_training_matches_mlpstorages_formula(cli: Any) -> None:
    done = cli("datasize", "workload=unet3d_h100", "--num-accelerators", "8", "--host-memory-gb", "64",
               "--num-hosts", "2", "--json")
    assert done.returncode == 0, done.stderr
    t = json.loads(done.stdout)["training"]
    by_memory = math.ceil(5 * 64 * GIB * 2 / 146600628)
    assert (t["samples_by_memory"], t["samples_by_steps"]) == (by_memory, 500 * 7 * 8)
    assert t["num_files_train"] == 28000 and t["num_subfolders_train"] == 3 and t["dictated_by"] == "steps"
    assert t["dataset_bytes"] == 28000 * 146600628
    big = mlperf.training_datasize(dl_driver.load_dlio_config("resnet50_h100"), accelerators=1, host_memory_gb=512, hosts=4)
    samples = math.ceil(5 * 512 * 4 * GIB / 114660.07)
    files = math.ceil(samples / 1251)
    assert big["dictated_by"] == "memory" and big["num_files_train"] == files
    assert big["num_subfolders_train"] == math.ceil(files / 10000) == 8
    assert big["overrides"] == [f"++workload.dataset.num_files_train={files}", "++workload.dataset.num_subfolders_train=8"]
    small = mlperf.training_datasize(dl_driver.load_dlio_config("cosmoflow_h100"), accelerators=2, host_memory_gb=1, hosts=1)
    assert small["num_files_train"] == max(500 * 1 * 2, math.ceil(5 * GIB / 2828486)) == 1899
    assert small["num_subfolders_train"] == 0 and len(small["overrides"]) == 1
    bad = cli("datasize", "workload=unet3d_h100", "--num-accelerators", "8")
    assert bad.returncode == 2 and "--host-memory-gb" in bad.stderr


@pytest.mark.parametrize(("workload", "processes", "gib"), [("llama_8b_zero3", 8, 104.70), ("llama_70b", 64, 911.21)])
def test_datasize_for_checkpointing_gives_dlios_sizes(cli: Any, workload: str, processes: int, gib: float) -> None:
    done = cli("datasize", f"workload={workload}", "--num-processes", str(processes), "--json")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)["checkpointing"]
    assert c["checkpoint_bytes"] / GIB == pytest.approx(gib, abs=0.01)
    assert c["written_bytes"] == c["checkpoint_bytes"] * 10 and c["largest_rank_bytes"] <= c["checkpoint_bytes"]


def test_compare_says_equal_for_the_same_seed_and_names_the_first_difference_otherwise(cli: Any, tmp_path: Path) -> None:
    base = ["workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=2"]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        done = cli("run", *base, f"++workload.train.seed={seed}", f"++workload.output.folder={tmp_path / name}",
                   *(["++workload.workflow.generate_data=False"] if name != "a" else []))
        assert done.returncode == 0, done.stderr
    same = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert same.returncode == 0, same.stderr
    result = json.loads(same.stdout)
    assert result["equal"] and result["first_difference"] is None and result["ranks"] == [1, 1]
    throughput = result["metrics"]["train_throughput_mean_samples_per_second"]
    assert throughput["delta"] == pytest.approx(throughput["b"] - throughput["a"])
    assert {"read", "compute"} <= set(result["latency"])
    other = cli("compare", str(tmp_path / "a"), str(tmp_path / "c"))
    assert other.returncode == 1
    digests = [json.loads((tmp_path / n / "dl_driver_report.json").read_text())["ranks"][0]["digests"] for n in "ac"]
    assert digests[0][0] != digests[1][0]
    assert (f"access order: differs first at epoch 1, rank 0: {digests[0][0]} (A) vs {digests[1][0]} (B)"
            in other.stdout)
    dlio = tmp_path / "dlio"
    dlio.mkdir()
    (dlio / "summary.json").write_text("{}")
    missing = cli("compare", str(tmp_path / "a"), str(dlio))
    assert missing.returncode == 2 and "DLIO writes no access-order digests" in missing.stderr


def test_report_over_a_results_tree_of_our_runs_dlios_layouts_a_broken_folder_and_a_submission(
    cli: Any, tmp_path: Path
) -> None:
    tree = tmp_path / "results"
    # A 6-run unet3d submission (DLIO HEAD's layout: dlio_config/ beside summary.json), read B/W 10..15 GiB/s.
    for i in range(6):
        run_folder(tree / "training" / "unet3d" / "run", f"2026120{i}_100000", "unet3d_h100",
                   config={**UNET, "train.seed": i}, overrides=[*UNET_OVERRIDES, f"++workload.train.seed={i}"],
                   start=110 * i, summary={"metric": {"train_au_meet_expectation": "success",
                                                      "train_au_mean_percentage": 95.0,
                                                      "train_io_mean_MB_per_second": 1024.0 * (10 + i)}})
    # DLIO 2.0.0's layout: .hydra/ and its key dialect (model as a string, record_length).
    old = tree / "dlio200"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"workload": {
        "model": "resnet50", "framework": "tensorflow",
        "workflow": {"generate_data": False, "train": True},
        "dataset": {"format": "tfrecord", "num_files_train": 1024, "num_samples_per_file": 1251,
                    "record_length": 114660}, "reader": {"data_loader": "tensorflow", "batch_size": 400},
        "train": {"epochs": 5, "computation_time": 0.224}}}))
    (old / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["workload=resnet50_h100"]))
    (old / "summary.json").write_text(json.dumps({
        "num_accelerators": 2, "num_hosts": 1, "host_memory_GB": [64.0], "host_cpu_count": [16],
        "start": T0.isoformat(), "end": (T0 + datetime.timedelta(seconds=50)).isoformat(),
        "num_files_train": 1024, "num_files_eval": 0, "metric": {"train_au_meet_expectation": "success",
                                                                 "train_io_mean_MB_per_second": 2048.0}}))
    broken = tree / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    # And one of ours.
    ours = cli("run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=1",
               f"++workload.output.folder={tree / 'ours'}")
    assert ours.returncode == 0, ours.stderr
    done = cli("report", str(tree), "-o", str(tmp_path / "out"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(records) == 8 and {r["run_id"] for r in records} >= {"dlio200", "ours", "20261205_100000"}
    schema = json.loads(dl_driver.results.SCHEMA_PATH.read_text())
    jsonschema.validate(next(r for r in records if r["run_id"] == "ours"), schema)
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and "metrics.train_io_mean_MB_per_second" in rows[0] and "parameters.dataset.num_files_train" in rows[0]
    verdicts = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert [u["folder"] for u in verdicts["unreadable"]] == [str(broken)]
    assert "unreadable" in verdicts["unreadable"][0]["why"]
    unet = next(t for t in verdicts["table"] if t["Model"] == "unet3d")
    # Read B/W: the mean over the 5 runs after the warm-up of train_io_mean_MB_per_second / 1024.
    assert unet["Training - Read B/W (GiB/s)"] == round(sum(10 + i for i in range(1, 6)) / 5, 2) == 13.0
    assert unet["Training - Accelerator Type"] == "h100" and unet["Training - # Simulated Accelerators"] == 8
    assert unet["Division"] == "CLOSED"
    resnet = next(s for s in verdicts["submissions"] if s["subject"].startswith("training resnet50"))
    assert resnet["verdict"] == "INVALID" and any("(exactly 6)" in r["reason"] for r in resnet["reasons"])
    assert "unet3d (6 runs): CLOSED" in done.stdout
