"""dl-driver as MLCommons' mlpstorage sees it: `dl-driver dlio-bin`'s `dlio_benchmark`, run with mlpstorage's exact
command lines (../shared/reference/mlperf-storage.md, "mlpstorage's contract with its DLIO"), and each run folder read
back the way `mlpstorage reports reportgen` and the v3 checkers read it. mlpstorage itself is not installable here.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import dl_driver
from tests_support import DL_DRIVER

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD = 300


def dlio_bin() -> Path:
    done = subprocess.run([DL_DRIVER, "dlio-bin"], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def mlpstorage_configs(tmp_path: Path) -> Path:
    """A stand-in for mlpstorage's configs/dlio: its workload files under workload/, by mlpstorage's names."""
    configs = tmp_path / "configs" / "dlio"
    (configs / "workload").mkdir(parents=True)
    (configs / "workload" / "unet3d_h100.yaml").write_text((REPO / "configs/workload/unet3d_h100.yaml").read_text())
    (configs / "workload" / "llama3_8b.yaml").write_text((REPO / "configs/workload/llama_8b_zero3.yaml").read_text())
    return configs


def mlpstorage_run(ranks: int, run_dir: Path, workload: str, params: dict[str, Any], configs: Path,
                   cwd: Path) -> subprocess.CompletedProcess[str]:
    """mlpstorage's invocation: one string split on spaces, run without a shell, the run dir made first; the
    environment has neither dl-driver nor its venv on PATH (the shim finds its own Python)."""
    run_dir.mkdir(parents=True)
    prefix = f"mpirun -n {ranks} -host 127.0.0.1:{ranks} --oversubscribe"
    if os.geteuid() == 0:
        prefix += " --allow-run-as-root"
    command = (
        f"{prefix} {dlio_bin()}/dlio_benchmark workload={workload} ++hydra.run.dir={run_dir} "
        f"++hydra.output_subdir=dlio_config "
        + " ".join(f"++workload.{k}={v}" for k, v in params.items())
        + f" --config-dir={configs}"
    )
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent))
    return subprocess.run(command.split(" "), capture_output=True, text=True, cwd=cwd, env=env, timeout=HANG_GUARD,
                          check=False)


def read_as_reportgen(run: Path) -> dict[str, Any]:
    """What reportgen takes from a run folder, with the types it needs (a wrong one crashes it), and the kind of run."""
    summary = json.loads((run / "summary.json").read_text())
    assert isinstance(summary["num_accelerators"], int)
    for key in ("host_memory_GB", "host_cpu_count"):
        assert isinstance(summary[key], list) and summary[key], key
    datetime.datetime.fromisoformat(summary["start"])
    datetime.datetime.fromisoformat(summary["end"])
    assert isinstance(summary["metric"], dict)
    # MLPerf v3: the Hydra folder holds exactly these three files.
    assert sorted(p.name for p in (run / "dlio_config").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    workload = yaml.safe_load((run / "dlio_config" / "config.yaml").read_text())["workload"]
    workflow = workload["workflow"]
    overrides = yaml.safe_load((run / "dlio_config" / "overrides.yaml").read_text())
    assert isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    assert all(o.startswith(("workload=", "++workload.")) for o in overrides), overrides
    hydra = yaml.safe_load((run / "dlio_config" / "hydra.yaml").read_text())["hydra"]
    assert hydra["run"]["dir"] == str(run) and hydra["output_subdir"] == "dlio_config"
    kind = "training" if workflow["generate_data"] or workflow["train"] else "checkpointing" if workflow["checkpoint"] else None
    return {
        "kind": kind,
        "model": workload["model"]["name"],
        "accelerators": summary["num_accelerators"],
        "total_memory_bytes": sum(summary["host_memory_GB"]) * 2**30,
        "total_cores": sum(summary["host_cpu_count"]),
        "metrics": summary["metric"],
        "batch_size": workload["reader"]["batch_size"],
        "odirect": workload["reader"]["odirect"],
        "num_files_train": workload["dataset"]["num_files_train"],
        "summary": summary,
        "overrides": overrides,
    }


def test_dlio_bin_is_a_folder_of_the_package_and_nothing_named_dlio_benchmark_goes_on_path() -> None:
    folder = dlio_bin()
    assert folder.parent == Path(dl_driver.__file__).parent
    assert os.access(folder / "dlio_benchmark", os.X_OK)
    assert not (Path(sys.executable).parent / "dlio_benchmark").exists()


@pytest.mark.parametrize("ranks", [1, 2])
def test_mlpstorage_datagen_run_and_checkpointing_command_lines_give_folders_reportgen_reads(
    ranks: int, tmp_path: Path
) -> None:
    configs = mlpstorage_configs(tmp_path)
    results, stamp = tmp_path / "results", datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    data = tmp_path / "data" / "unet3d"
    small = {"dataset.num_files_train": 8, "dataset.record_length_bytes": 8192, "dataset.record_length_bytes_stdev": 0,
             "dataset.record_length_bytes_resize": 8192, "dataset.data_folder": data}
    datagen = results / "training" / "unet3d" / "datagen" / stamp
    done = mlpstorage_run(ranks, datagen, "unet3d_h100", {
        "workflow.generate_data": True, "workflow.train": False, **small}, configs, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(list((data / "train").glob("*.npz"))) == 8
    task = yaml.safe_load((datagen / "dlio_config" / "overrides.yaml").read_text())
    assert task[0] == "workload=unet3d_h100" and "++workload.workflow.generate_data=True" in task
    assert yaml.safe_load((datagen / "dlio_config" / "config.yaml").read_text())["workload"]["workflow"]["generate_data"]

    run = results / "training" / "unet3d" / "run" / stamp
    done = mlpstorage_run(ranks, run, "unet3d_h100", {
        **small, "reader.read_threads": 2, "reader.batch_size": 2, "train.epochs": 1, "train.computation_time": 0.001},
        configs, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    read = read_as_reportgen(run)
    assert read["kind"] == "training" and read["model"] == "unet3d" and read["accelerators"] == ranks
    assert read["batch_size"] == 2 and read["odirect"] is False and read["num_files_train"] == 8
    assert read["metrics"]["train_au_meet_expectation"] in ("success", "fail")
    assert read["summary"]["num_files_train"] == 8 and "num_files_eval" in read["summary"]
    assert (run / "dlio.log").is_file()
    for r in range(ranks):
        assert (run / f"{r}_output.json").is_file() and (run / f"{r}_per_epoch_stats.json").is_file()

    run = results / "checkpointing" / "llama3-8b" / stamp
    checkpoints = tmp_path / "ckpt" / "llama3-8b"
    done = mlpstorage_run(ranks, run, "llama3_8b", {
        "checkpoint.num_checkpoints_read": 1, "checkpoint.num_checkpoints_write": 1,
        "checkpoint.checkpoint_folder": checkpoints, "checkpoint.mode": "subset", "model.parallelism.data": 8,
        "checkpoint.time_between_checkpoints": 0, "model.num_layers": 2, "model.transformer.hidden_size": 64,
        "model.transformer.ffn_hidden_size": 128, "model.transformer.vocab_size": 256,
        "model.transformer.num_attention_heads": 4, "model.transformer.num_kv_heads": 2}, configs, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    read = read_as_reportgen(run)
    assert read["kind"] == "checkpointing" and read["accelerators"] == ranks
    assert read["metrics"]["save_checkpoint_duration_mean_seconds"] > 0
    assert read["metrics"]["load_checkpoint_duration_mean_seconds"] > 0
    listed = dl_driver.checkpoint.list_checkpoints(str(checkpoints))
    assert len(listed) == 1 and listed[0]["complete"]


def test_hydra_files_go_to_the_output_subdir_given_and_none_with_null(cli: Any, tmp_path: Path) -> None:
    # quickstart sets output.folder; without it the run dir is the output folder, as in DLIO's workloads.
    base = ["workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=1",
            "~workload.output.folder"]
    done = cli("run", *base, f"++hydra.run.dir={tmp_path / 'a'}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "a" / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    hydra = yaml.safe_load((tmp_path / "a" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["overrides"]["hydra"] == [f"++hydra.run.dir={tmp_path / 'a'}"]
    assert hydra["overrides"]["task"] == ["workload=quickstart", *base[1:]]
    assert hydra["runtime"]["choices"] == {"workload": "quickstart"}
    done = cli("run", *base, f"++hydra.run.dir={tmp_path / 'b'}", "++hydra.output_subdir=null")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "summary.json").is_file() and not (tmp_path / "b" / ".hydra").exists()


def test_the_keys_mlpstorage_v3_injects_are_accepted_and_skip_listing_computes_the_names(cli: Any, tmp_path: Path) -> None:
    base = ["workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=1"]
    listed = cli("run", *base, f"++workload.output.folder={tmp_path / 'listed'}")
    assert listed.returncode == 0, listed.stderr
    injected = ["++workload.dataset.skip_listing=True", "++workload.dataset.listing_validation_interval=1",
                "++workload.dataset.num_files_generated=8", "++workload.dataset.total_disk_bytes=1048576",
                "++workload.storage.storage_options.storage_library=s3dlio",
                "++workload.storage.storage_options.uri_scheme=file", "++workload.storage.s3_force_path_style=True",
                "++workload.storage.storage_options.prefetch_window=4", "++workload.workflow.generate_data=False"]
    computed = cli("run", *base, *injected, f"++workload.output.folder={tmp_path / 'computed'}", "--strict")
    assert computed.returncode == 0, computed.stderr
    assert "warning" not in computed.stderr
    digests = [json.loads((tmp_path / f / "dl_driver_report.json").read_text())["ranks"][0]["digests"]
               for f in ("listed", "computed")]
    assert digests[0] == digests[1]
    victim = sorted((tmp_path / "d" / "train").rglob("*.npz"))[3]
    victim.unlink()
    missing = cli("run", *base, *injected, f"++workload.output.folder={tmp_path / 'missing'}")
    assert missing.returncode == 2, missing.stderr
    assert f"{victim.name}: missing (dataset.skip_listing computes the train files' names" in missing.stderr


def test_runs_makes_timestamped_folders_with_a_new_seed_each_and_generates_once(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = cli("run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=1",
               "++workload.train.seed=40", f"++workload.output.folder={out}", "--runs", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("generated ") == 1
    listed = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["seed"], r["warmup"]) for r in listed] == [(40, True), (41, False), (42, False)]
    names = [r["folder"] for r in listed]
    assert all(re.fullmatch(r"\d{8}_\d{6}(_\d+)?", n) for n in names) and len(set(names)) == 3
    assert sorted(p.name for p in out.iterdir() if (p / "summary.json").is_file()) == sorted(names)
    for r in listed:
        hydra = out / r["folder"] / ".hydra"
        assert yaml.safe_load((hydra / "config.yaml").read_text())["workload"]["train"]["seed"] == r["seed"]
        assert f"++workload.train.seed={r['seed']}" in yaml.safe_load((hydra / "overrides.yaml").read_text())
    first = json.loads((out / names[0] / "summary.json").read_text())
    later = json.loads((out / names[1] / "summary.json").read_text())
    assert datetime.datetime.fromisoformat(first["end"]) <= datetime.datetime.fromisoformat(later["start"])


def test_a_dataset_under_5x_the_memory_warns_that_it_measures_the_page_cache(cli: Any, tmp_path: Path) -> None:
    base = ["workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=1"]
    small = cli("run", *base, f"++workload.output.folder={tmp_path / 'small'}")
    assert small.returncode == 0, small.stderr
    assert "[WARNING]" in small.stderr and "the results measure the page cache, not the storage" in small.stderr
    summary = json.loads((tmp_path / "small" / "summary.json").read_text())
    report = json.loads((tmp_path / "small" / "dl_driver_report.json").read_text())
    assert summary["potential_caching"] == [1] and report["page_cache"]["potential_caching"] is True
    # The same data on a host "with" 1 KiB of memory: 5x that is far below the data, so nothing is cached.
    large = cli("run", *base, "++workload.workflow.generate_data=False", f"++workload.output.folder={tmp_path / 'large'}",
                env={"DL_DRIVER_HOST_MEMORY_GB": str(1 / 2**20)})
    assert large.returncode == 0, large.stderr
    assert "page cache" not in large.stderr
    summary = json.loads((tmp_path / "large" / "summary.json").read_text())
    report = json.loads((tmp_path / "large" / "dl_driver_report.json").read_text())
    assert summary["potential_caching"] == [0] and report["page_cache"]["host_memory_override"] is True
    assert summary["host_memory_GB"] == [pytest.approx(1 / 2**20)]


def test_drop_caches_runs_before_every_epoch_and_between_checkpoint_writes_and_reads(cli: Any, tmp_path: Path) -> None:
    done = cli("run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=2",
               f"++workload.output.folder={tmp_path / 'out'}", "--drop-caches")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "dl_driver_report.json").read_text())
    drops = report["page_cache"]["drop_caches"]
    assert drops["times"] == 2 and drops["how"] in ("vm.drop_caches", "posix_fadvise") and drops["seconds"] >= 0
    assert done.stdout.count("Dropped the page cache") == 2
    # The drops are outside the measured epochs: each comes before its epoch starts.
    lines = done.stdout.splitlines()
    order = [("drop" if "Dropped the page cache" in line else "epoch") for line in lines
             if "Dropped the page cache" in line or "Starting epoch" in line]
    assert order == ["drop", "epoch", "drop", "epoch"]
    ckpt = cli("run", "workload=default", "++workload.workflow.train=False", "++workload.workflow.checkpoint=True",
               f"++workload.checkpoint.checkpoint_folder={tmp_path / 'ckpt'}", "++workload.checkpoint.num_checkpoints_write=2",
               "++workload.checkpoint.num_checkpoints_read=2", "++workload.checkpoint.time_between_checkpoints=0",
               "++workload.model.model_size_bytes=1048576", f"++workload.output.folder={tmp_path / 'ckpt-out'}",
               "--drop-caches")
    assert ckpt.returncode == 0, ckpt.stderr
    metric = json.loads((tmp_path / "ckpt-out" / "summary.json").read_text())["metric"]
    assert metric["load_checkpoint_duration_mean_seconds"] > 0


def test_search_accelerators_finds_the_rank_count_where_au_falls_below_the_threshold(tmp_path: Path) -> None:
    # One batch of one sample per step; each epoch's first batch waits for its 300 ms of preprocessing, later ones
    # are prepared by 2 reader threads (150 ms a sample each) during the 200 ms computes. With 8 samples over N ranks
    # (S = 8 // N steps), AU = S x 0.2 / (0.3 + S x 0.2): 84.2% on 1 rank, 72.7% on 2, 57.1% on 3 and 4. The 65%
    # threshold leaves 2 ranks 130 ms of overhead before they fail it (runs only lose AU to overhead, so 3 and 4
    # ranks never pass it): a busy machine does not move the answer.
    values = {"dataset.format": "npz", "dataset.num_files_train": 8, "dataset.num_samples_per_file": 1,
              "dataset.record_length_bytes": 4096, "dataset.record_length_bytes_stdev": 0,
              "dataset.data_folder": tmp_path / "data", "reader.batch_size": 1, "reader.read_threads": 2,
              "reader.prefetch_size": 2, "reader.preprocess_time": 0.3, "train.computation_time": 0.2,
              "train.epochs": 1, "output.metric.exclude_start_steps": 0, "workflow.generate_data": True,
              "workflow.checkpoint": False, "workflow.evaluation": False}
    done = subprocess.run(
        [DL_DRIVER, "search-accelerators", "workload=default", *[f"++workload.{k}={v}" for k, v in values.items()],
         "--au", "0.65", "--max", "8", "--launcher", "mpi", "--output", str(tmp_path / "search")],
        capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "search" / "search.json").read_text())
    assert [t["ranks"] for t in result["tries"]] == [1, 2, 4, 3]
    assert [t["passed"] for t in result["tries"]] == [True, True, False, False]
    assert result["answer"] == 2 and "answer: 2 simulated accelerator(s)" in done.stdout
    for t in result["tries"]:
        summary = json.loads((Path(t["folder"]) / "summary.json").read_text())
        assert summary["num_accelerators"] == t["ranks"]
