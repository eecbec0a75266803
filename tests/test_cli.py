"""The dl-driver command: DLIO-style arguments, validate's output, errors and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

GIB = 1024**3


def test_validate_prints_config_and_plan_as_yaml(cli) -> None:
    out = cli("validate", "workload=unet3d_h100")
    assert out.returncode == 0, out.stderr
    config, plan = list(yaml.safe_load_all(out.stdout))
    assert config["dataset"]["num_files_train"] == 168
    assert config["reader"]["data_loader"] == "pytorch"
    assert (plan["train"]["files"], plan["train"]["steps_per_epoch"]) == (168, 24)
    assert plan["checkpoint"]["epochs"] == {"first": 5, "every": 2, "count": 1}
    assert out.stderr == ""


def test_validate_json_with_overrides_and_world_size(cli) -> None:
    out = cli(
        "validate",
        "workload=resnet50_h100",
        "++workload.dataset.num_files_train=16",
        "++workload.reader.batch_size=100",
        "++hydra.run.dir=/tmp/x",
        "++hydra.output_subdir=null",
        "--world-size",
        "2",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["plan"]["train"]["samples"] == 16 * 1251
    assert doc["plan"]["train"]["steps_per_epoch"] == 16 * 1251 // 100 // 2
    assert doc["plan"]["world_size"] == 2
    assert doc["config"]["output"]["folder"] == "/tmp/x"
    assert doc["overrides"][0] == "++workload.dataset.num_files_train=16"


def test_an_override_in_the_other_dialect_is_the_last_word(cli) -> None:
    out = cli("validate", "workload=unet3d_h100", "++workload.dataset.record_length=8388608", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["dataset"]["record_length_bytes"] == 8388608
    both = ("++workload.dataset.record_length=8388608", "++workload.dataset.record_length_bytes=4194304")
    out = cli("validate", "workload=unet3d_h100", *both)
    assert out.returncode == 2 and "give one of them" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_world_size_from_launcher_environment(cli) -> None:
    out = cli("validate", "workload=llama_8b_zero3", "--json", env={"OMPI_COMM_WORLD_SIZE": "8"})
    assert out.returncode == 0, out.stderr
    size = json.loads(out.stdout)["plan"]["checkpoint"]["size"]["total_bytes"] / GIB
    assert abs(size - 105) / 105 < 0.01
    out = cli("validate", "workload=llama_70b", "--world-size", "12")
    assert out.returncode == 2
    assert "model.parallelism" in out.stderr and "12 processes" in out.stderr


def test_config_file_and_config_dir(cli, tmp_path: Path) -> None:
    (tmp_path / "cfgs" / "workload").mkdir(parents=True)
    (tmp_path / "cfgs" / "workload" / "tiny.yaml").write_text("dataset: {num_files_train: 2}\n")
    out = cli("validate", "workload=tiny", "--config-dir", str(tmp_path / "cfgs"), "--json")
    assert json.loads(out.stdout)["config"]["dataset"]["num_files_train"] == 2
    (tmp_path / "w.yaml").write_text("dataset: {num_files_train: 5}\n")
    out = cli("validate", "--config", "w.yaml", "--json")
    assert json.loads(out.stdout)["config"]["dataset"]["num_files_train"] == 5
    out = cli("validate", "--config", "w.yaml", "workload=default")
    assert out.returncode == 2 and "not both" in out.stderr


def test_default_workload_is_dlios_default(cli) -> None:
    out = cli("validate", "--json")
    assert json.loads(out.stdout)["config"]["model"]["name"] == "default"


def test_unknown_keys_warn_on_stderr_and_fail_under_strict(cli) -> None:
    out = cli("validate", "workload=default", "++workload.reader.read_thread=4")
    assert out.returncode == 0
    assert "warning:" in out.stderr and "reader.read_thread" in out.stderr and "did you mean reader.read_threads?" in out.stderr
    out = cli("validate", "workload=default", "++workload.reader.read_thread=4", "--strict")
    assert out.returncode == 2
    assert "reader.read_thread" in out.stderr and out.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["workload=default", "++workload.reader.batch_size=0"], "reader.batch_size"),
        (["workload=default", "++workload.dataset.num_files_train=-3"], "dataset.num_files_train"),
        (["workload=default", "++workload.framework=tensorflow"], "reader.data_loader"),
        (["workload=default", "++workload.dataset.format=tfrecord"], "dataset.format"),
        (["workload=default", "++workload.dataset.data_folder=ftp://x/y"], "dataset.data_folder"),
        (["workload=default", "workload.train.seed=3"], "++workload.train.seed"),
        (["workload=default", "++workload.train.epochs=[1"], "not closed"),
        (["workload=default", "++workload.train.epochs=1,2"], "sweep"),
        (["workload=nope"], "workload 'nope' not found"),
        (["workload=default", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_errors_exit_2_with_the_key_named(cli, args: list[str], needle: str) -> None:
    out = cli("validate", *args)
    assert out.returncode == 2
    assert needle in out.stderr, out.stderr
    assert out.stdout == ""


def test_storage_errors_are_one_line_never_a_traceback(cli, tmp_path: Path) -> None:
    # /proc refuses new folders with ENOENT: the storage layer raises FileNotFoundError, an OSError.
    missing = cli("generate", "workload=quickstart", "++workload.dataset.data_folder=/proc/dl-driver-test/data")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.startswith("dl-driver generate: error: file:///proc/dl-driver-test/data/"), missing.stderr
    (tmp_path / "a-file").write_text("x")
    blocked = cli("generate", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'a-file' / 'data'}")
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr, blocked.stderr
    assert "Not a directory" in blocked.stderr and len(blocked.stderr.strip().splitlines()) == 1, blocked.stderr


def test_yaml_syntax_error_has_line_and_column(cli, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 1\n bad: [\n")
    out = cli("validate", "--config", "bad.yaml")
    assert out.returncode == 2
    assert "bad.yaml:" in out.stderr and "invalid YAML" in out.stderr


def test_secrets_are_not_printed(cli) -> None:
    out = cli(
        "validate",
        "workload=unet3d_h100",
        "++workload.storage.storage_type=s3",
        "++workload.storage.storage_root=bkt",
        "++workload.storage.storage_options.secret_access_key=TOPSECRET",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert "TOPSECRET" not in out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["plan"]["data_location"] == "s3://bkt/data/unet3d"
    assert doc["config"]["storage"]["storage_options"]["secret_access_key"] == "***"


def test_a_run_with_no_step_is_refused_before_it_starts(cli, tmp_path: Path) -> None:
    # The issue's case: 8 files x 4 samples at resnet50's batch size. DLIO runs it and reports AU 0.
    out = cli("run", "workload=resnet50_h100", "++workload.dataset.num_files_train=8",
              "++workload.dataset.num_samples_per_file=4", f"++workload.dataset.data_folder={tmp_path / 'd'}",
              "++workload.workflow.generate_data=True", f"++workload.output.folder={tmp_path / 'out'}")
    assert out.returncode == 2
    for part in ("dataset.num_files_train", "32 training samples", "0 steps per epoch", "reader.batch_size 400",
                 "1 rank(s)"):
        assert part in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out" / "summary.json").exists()
    assert not (tmp_path / "d").exists(), "refused before generation wrote anything"
    out = cli("validate", "workload=resnet50_h100", "++workload.dataset.num_files_train=8",
              "++workload.dataset.num_samples_per_file=4")
    assert out.returncode == 2 and "0 steps per epoch" in out.stderr


def test_run_generates_data_then_trains(cli, tmp_path: Path) -> None:
    common = [f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.dataset.num_files_train=8",
              "++workload.dataset.num_files_eval=0", "++workload.workflow.evaluation=False", "++workload.workflow.generate_data=True"]
    out = cli("run", "workload=default", *common, "++workload.workflow.train=False")
    assert out.returncode == 0, out.stderr
    assert "generated 8 files" in out.stdout
    out = cli("run", "workload=default", *common, "++workload.dataset.num_subfolders_train=0")
    assert out.returncode == 0, out.stderr
    assert "generated 8 files" in out.stdout and "[METRIC] Training Throughput (samples/second)" in out.stdout
    assert (tmp_path / "output" / "summary.json").is_file()


def test_progress_shows_rate_eta_and_a_line_per_epoch_on_a_terminal_and_nothing_in_a_pipe(cli, tmp_path) -> None:
    import os
    import pty
    import subprocess

    from tests_support import DL_DRIVER

    args = [DL_DRIVER, "run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}",
            "++workload.train.epochs=2", "++workload.train.computation_time=0.05", f"++workload.output.folder={tmp_path / 'o'}",
            "++workload.workflow.checkpoint=True", f"++workload.checkpoint.checkpoint_folder={tmp_path / 'c'}",
            "++workload.checkpoint.steps_between_checkpoints=16", "++workload.model.model_size_bytes=33554432"]
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=tmp_path)
    os.close(follower)
    shown = b""
    while True:  # read as it is drawn, so a full terminal buffer never blocks the run
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal is closed once the process is gone and everything is read
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    returncode = process.wait(timeout=120)
    text = shown.decode(errors="replace")
    assert returncode == 0, text[-2000:]
    assert "generating [" in text and "files" in text
    assert "epoch 1 [" in text and "ETA" in text and "samples/s" in text
    assert "epoch 1: " in text and "epoch 2: " in text and "AU " in text  # the line each finished epoch leaves
    # A checkpoint's bar, its bytes of the checkpoint's total, and the line it leaves.
    assert "saving global_epoch1_step16 [" in text and "/32.00 MiB" in text
    assert "checkpoint save global_epoch1_step16: " in text
    # DLIO's console lines on the same terminal print with the bars cleared: each starts a line of its own (before,
    # they followed a bar's text on its line).
    outputs = [m.start() for m in re.finditer(re.escape("[OUTPUT]"), text)]
    assert outputs and all(re.search(r"(^|[\r\n]|\x1b\[[0-9;]*[A-Za-z])$", text[:at]) for at in outputs), text[-3000:]
    piped = cli("run", *args[2:5], f"++workload.output.folder={tmp_path / 'p'}", "++workload.train.computation_time=0.01",
                *args[7:])
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "epoch 1: " not in piped.stderr
    assert "saving" not in piped.stderr and "checkpoint save" not in piped.stderr
