"""Checkpointing: checkpoints appear where and when DLIO's rules say, with DLIO's names and sizes, on every backend;
zstd round trips; verify catches a flipped byte; a server dying mid-checkpoint leaves no manifest and the previous
checkpoint intact; memory stays bounded; Python plugins see every hook."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dl_driver
from test_run import backend_location
from tests_support import DL_DRIVER

MIB = 1024 * 1024


def training(tmp_path: Path, folder: str | None = None, **overrides: Any) -> dl_driver.Config:
    """8 steps per epoch of synthetic data (no reads) with step checkpoints of a 3 MiB simple model."""
    base = {
        "framework": "pytorch",
        "workflow": {"train": True, "checkpoint": True},
        "dataset": {"format": "synthetic", "num_files_train": 16, "num_samples_per_file": 1, "num_subfolders_train": 0},
        "reader": {"data_loader": "pytorch", "batch_size": 2},
        "train": {"epochs": 2, "computation_time": 0.001},
        "model": {"model_size_bytes": 3 * MIB + 123},
        "checkpoint": {"checkpoint_folder": folder or str(tmp_path / "ckpt"), "steps_between_checkpoints": 3},
        "output": {"folder": str(tmp_path / "out")},
    }
    return dl_driver.load_dlio_config(base, overrides)


def listed(folder: str, options: dict[str, str]) -> list[str]:
    return [c["name"] for c in dl_driver.checkpoint.list_checkpoints(folder, **options) if c["complete"]]


@pytest.mark.parametrize("backend", ["file", "direct", "s3-moto", "az-azurite"])
def test_step_checkpoints_appear_with_dlio_names_and_sizes(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    folder, options = backend_location(backend, tmp_path, request)
    cfg = training(tmp_path, folder, **{"checkpoint.compression": "zstd"})
    cfg.storage.storage_options = options
    report = dl_driver.DlioRunner(cfg).run_benchmark()
    # 16 steps over 2 epochs, every 3 global steps: 3, 6 (epoch 1), 9, 12, 15 (epoch 2).
    expected = [f"global_epoch{e}_step{s}" for e, s in [(1, 3), (1, 6), (2, 9), (2, 12), (2, 15)]]
    assert listed(folder, options) == expected
    store = dl_driver.storage.open(folder, **options)
    assert [o.key for o in store.list(expected[0])] == [f"{expected[0]}/manifest.json", f"{expected[0]}/model_states-0.pt"]
    manifest = json.loads(bytes(store.get(f"{expected[0]}/manifest.json")))
    assert manifest["files"][0]["bytes"] == 3 * MIB + 123 and manifest["compression"] == "zstd"
    assert manifest["world_size"] == 1 and (manifest["epoch"], manifest["step"]) == (1, 3)
    for name in expected:
        assert dl_driver.checkpoint.verify(folder, name, **options) == manifest["files"][0]["stored_bytes"]
    metric = report.summary["metric"]
    assert metric["checkpoint_size_GB"] == pytest.approx((3 * MIB + 123) / 2**30)
    assert metric["save_checkpoint_duration_mean_seconds"] > 0 and metric["save_checkpoint_io_mean_GB_per_second"] > 0
    stats = json.loads((tmp_path / "out" / "0_per_epoch_stats.json").read_text())
    assert list(stats["1"]) == ["start", "block1", "save_ckpt1", "block2", "save_ckpt2", "block3", "end", "duration"]
    assert float(stats["1"]["save_ckpt1"]["duration"]) >= 0 and stats["1"]["save_ckpt1"]["throughput"] > 0
    assert [b["steps"] for b in report.epochs[0]["blocks"]] == [3, 3, 2]


@pytest.mark.parametrize("backend", ["file", "direct", "s3-moto", "az-azurite"])
def test_zstd_round_trips_and_verify_catches_a_flipped_byte(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    folder, options = backend_location(backend, tmp_path, request)
    cfg = training(tmp_path, folder, **{
        "workflow.train": False, "checkpoint.num_checkpoints_write": 2, "checkpoint.num_checkpoints_read": 2,
        "checkpoint.compression": "zstd", "checkpoint.randomize_tensor": False, "checkpoint.compression_level": 1,
    })
    cfg.storage.storage_options = options
    report = dl_driver.DlioRunner(cfg).run_benchmark()
    saves = [c for c in report.details["checkpoints"] if c["kind"] == "save"]
    loads = [c for c in report.details["checkpoints"] if c["kind"] == "load"]
    assert [c["name"] for c in saves] == ["global_epoch1_step1", "global_epoch1_step2"]
    assert [c["name"] for c in loads] == ["global_epoch1_step1", "global_epoch1_step2"], "reads verify what was written"
    assert saves[0]["compression_ratio"] > 100, "zeros compress"
    assert report.summary["metric"]["load_checkpoint_io_mean_GB_per_second"] > 0
    store = dl_driver.storage.open(folder, **options)
    key = "global_epoch1_step1/model_states-0.pt"
    data = bytearray(bytes(store.get(key)))
    data[len(data) // 2] ^= 0x01
    store.put(key, bytes(data))
    with pytest.raises(dl_driver.CheckpointError, match=r"model_states-0.pt: checksum mismatch"):
        dl_driver.checkpoint.verify(folder, "global_epoch1_step1", **options)
    assert dl_driver.checkpoint.verify(folder, "global_epoch1_step2", **options) > 0


def test_no_block_after_a_step_checkpoint_reports_au_above_100(tmp_path: Path) -> None:
    # The stock bert_v100 workload as the issue ran it: blocks after each checkpoint started one step late and
    # printed AU 132%. A block's window holds exactly the steps whose compute it counts.
    overrides = [f"++workload.{k}={v}" for k, v in {
        "dataset.num_files_train": 2, "dataset.num_samples_per_file": 512, "train.total_training_steps": 20,
        "train.computation_time": 0.01, "model.model_size_bytes": 1 * MIB, "workflow.generate_data": True,
        "checkpoint.steps_between_checkpoints": 5, "dataset.data_folder": tmp_path / "data",
        "checkpoint.checkpoint_folder": tmp_path / "ckpt", "output.folder": tmp_path / "out", "train.epochs": 1,
    }.items()]
    report = dl_driver.DlioRunner(dl_driver.load_dlio_config("bert_v100", overrides)).run_benchmark()
    blocks = report.epochs[0]["blocks"]
    assert [b["steps"] for b in blocks] == [5, 5, 5, 5]
    assert all(b["au"] <= 100 for b in blocks), [b["au"] for b in blocks]
    stats = json.loads((tmp_path / "out" / "0_per_epoch_stats.json").read_text())["1"]
    # Each block starts when the checkpoint before it ends (DLIO's start_block after end_ckpt).
    for n in (1, 2, 3):
        assert stats[f"block{n}"]["end"] <= stats[f"save_ckpt{n}"]["start"] <= stats[f"save_ckpt{n}"]["end"]
        assert stats[f"save_ckpt{n}"]["end"] <= stats[f"block{n + 1}"]["start"]
    # 20 steps of >= 10 ms compute each.
    assert report.summary["metric"]["train_au_mean_percentage"] <= 100
    # The configured compute beside the measured one (AU counts the measured).
    compute = json.loads((tmp_path / "out" / "dl_driver_report.json").read_text())["compute"]
    assert compute["configured"]["train.computation_time"] == 0.01 and compute["au_uses"] == "measured"
    assert compute["measured"]["count"] == 20 and compute["measured"]["p50_us"] >= 10_000
    assert compute["overshoot"]["count"] == 20 and compute["overshoot"]["p50_us"] >= 0


def test_epoch_checkpoints_and_the_llama_layout(tmp_path: Path) -> None:
    cfg = training(tmp_path, **{
        "checkpoint.steps_between_checkpoints": -1, "checkpoint.checkpoint_after_epoch": 2,
        "checkpoint.epochs_between_checkpoints": 2, "train.epochs": 5,
    })
    dl_driver.DlioRunner(cfg).run_benchmark()
    assert listed(str(tmp_path / "ckpt"), {}) == ["global_epoch2_step16", "global_epoch4_step32"]
    # A transformer with tensor and pipeline parallelism on 4 processes: rank 1 (tp 1, pp 0) writes its layers.
    llama = dl_driver.load_dlio_config("llama_8b_zero3", {
        "model.num_layers": 4, "model.transformer.hidden_size": 256, "model.transformer.ffn_hidden_size": 512,
        "model.transformer.num_attention_heads": 8, "model.transformer.num_kv_heads": 2, "model.transformer.vocab_size": 1000,
        "model.parallelism.tensor": 2, "model.parallelism.pipeline": 2, "model.parallelism.zero_stage": 1,
        "checkpoint.checkpoint_folder": str(tmp_path / "llama"), "checkpoint.num_checkpoints_write": 1,
        "checkpoint.num_checkpoints_read": 0, "checkpoint.time_between_checkpoints": 0, "checkpoint.fsync": True,
        "output.folder": str(tmp_path / "llama-out"),
    })
    report = dl_driver.DlioRunner(llama, rank=1, world_size=4).run_benchmark()
    names = sorted(p.name for p in (tmp_path / "llama" / "global_epoch1_step1").iterdir())
    assert names == ["layer_0-model_1_model_states.pt", "layer_1-model_1_model_states.pt",
                     "zero_pp_rank_0_mp_rank_1_optim_states.pt"]
    written = sum((tmp_path / "llama" / "global_epoch1_step1" / n).stat().st_size for n in names)
    plan = llama.plan(4)
    assert written == report.details["checkpoints"][0]["bytes"]
    assert report.summary["metric"]["checkpoint_size_GB"] == pytest.approx(plan["checkpoint"]["size_gib"])
    assert not (tmp_path / "llama" / "global_epoch1_step1" / "manifest.json").exists(), "only rank 0 writes the manifest"


def test_python_plugins_see_the_hooks_in_order(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    class Recorder:
        def initialize(self) -> None:
            calls.append(("initialize",))

        def before_epoch(self, epoch: int) -> None:
            calls.append(("before_epoch", epoch))

        def after_step(self, epoch: int, step: int) -> None:
            calls.append(("after_step", epoch, step))

        def after_epoch(self, epoch: int) -> None:
            calls.append(("after_epoch", epoch))

        def finalize(self) -> None:
            calls.append(("finalize",))

    cfg = training(tmp_path, **{"workflow.checkpoint": False, "train.epochs": 2, "dataset.num_files_train": 6})
    dl_driver.DlioRunner(cfg, plugins=[Recorder()]).run_benchmark()
    expected: list[tuple[Any, ...]] = [("initialize",)]
    for epoch in (1, 2):
        expected += [("before_epoch", epoch), *[("after_step", epoch, s) for s in (1, 2, 3)], ("after_epoch", epoch)]
    assert calls == [*expected, ("finalize",)]

    class Broken:
        def after_step(self, epoch: int, step: int) -> None:
            if step == 2:
                raise ValueError("out of paper")

    # A Python plugin's exception comes back as itself (not a DlDriverError), with a note naming the hook.
    with pytest.raises(ValueError, match="out of paper") as raised:
        dl_driver.DlioRunner(cfg, plugins=[Broken()]).run_benchmark()
    assert str(raised.value) == "out of paper"
    assert raised.value.__notes__ == ["raised by plugin 'Broken' in after_step"]


def test_a_checkpoint_failure_inside_a_run_keeps_its_type(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    cfg = training(tmp_path, str(blocker / "ckpt"))
    with pytest.raises(dl_driver.StorageError, match=r"plugin 'checkpoint' failed in after_step: .*not-a-folder/ckpt") as raised:
        dl_driver.DlioRunner(cfg).run_benchmark()
    assert not isinstance(raised.value, FileNotFoundError)
    # A corrupt checkpoint read back by a checkpoint-only run is a CheckpointError.
    only = {"workflow.train": False, "checkpoint.num_checkpoints_write": 1, "checkpoint.num_checkpoints_read": 0}
    dl_driver.DlioRunner(training(tmp_path, **only)).run_benchmark()
    shard = tmp_path / "ckpt" / "global_epoch1_step1" / "model_states-0.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    reading = {**only, "checkpoint.num_checkpoints_write": 0, "checkpoint.num_checkpoints_read": 1}
    with pytest.raises(dl_driver.CheckpointError, match=r"plugin 'checkpoint' failed in checkpoint_only: .*model_states-0.pt"):
        dl_driver.DlioRunner(training(tmp_path, **reading)).run_benchmark()


def test_checkpoint_command_lists_verifies_and_deletes(cli, tmp_path: Path) -> None:
    dl_driver.DlioRunner(training(tmp_path, **{"train.epochs": 1})).run_benchmark()
    folder = tmp_path / "ckpt"
    (folder / "global_epoch9_step99").mkdir()
    (folder / "global_epoch9_step99" / "model_states-0.pt").write_bytes(b"partial")
    out = cli("checkpoint", "list", str(folder))
    assert out.returncode == 0, out.stderr
    assert "global_epoch1_step3" in out.stdout and "global_epoch9_step99" in out.stdout and "INCOMPLETE" in out.stdout
    out = cli("checkpoint", "verify", str(folder))
    assert out.returncode == 0 and out.stdout.count(": OK") == 2, out.stdout + out.stderr
    out = cli("checkpoint", "verify", str(folder), "global_epoch9_step99")
    assert out.returncode == 1 and "global_epoch9_step99: FAILED" in out.stderr
    out = cli("checkpoint", "delete", str(folder), "global_epoch1_step3")
    assert out.returncode == 0 and not (folder / "global_epoch1_step3").exists()


def test_a_2gib_shard_streams_with_bounded_memory(tmp_path: Path) -> None:
    args = [DL_DRIVER, "run", "workload=default", "++workload.workflow.generate_data=False", "++workload.workflow.train=False",
            "++workload.workflow.evaluation=False", "++workload.workflow.checkpoint=True",
            f"++workload.model.model_size_bytes={2 * 1024 * MIB}", "++workload.checkpoint.num_checkpoints_write=1",
            "++workload.checkpoint.num_checkpoints_read=0", f"++workload.checkpoint.checkpoint_folder={tmp_path / 'ckpt'}",
            f"++workload.output.folder={tmp_path / 'out'}"]
    # Measured from a small intermediate process (a fork inherits this process's high-water mark).
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    shard = tmp_path / "ckpt" / "global_epoch1_step1" / "model_states-0.pt"
    assert shard.stat().st_size == 2 * 1024 * MIB
    peak_mib = int(out.stdout) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB while writing a 2 GiB shard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_azurite(location: Path, port: int) -> subprocess.Popen[bytes]:
    azurite = os.environ["DL_DRIVER_TEST_AZURITE_BIN"]  # set by scripts/servers.sh env (the servers fixture), under its cache
    process = subprocess.Popen([azurite, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
                                "--skipApiVersionCheck", "--loose", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("azurite did not start")


def staged_blobs(endpoint: str, container: str, prefix: str) -> list[str]:
    """Blobs under `prefix` with blocks staged but not committed yet (an upload in flight), or committed."""
    from azure.storage.blob import BlobServiceClient

    from test_storage_conformance import AZURITE_KEY

    service = BlobServiceClient(account_url=endpoint, credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY})
    blobs = service.get_container_client(container).list_blobs(name_starts_with=prefix, include=["uncommittedblobs"])
    return [b.name for b in blobs]


def test_a_server_dying_mid_checkpoint_leaves_the_previous_one_intact(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from test_storage_conformance import AZURITE_KEY, azure_container

    request.getfixturevalue("servers")  # installs Azurite when run alone
    port, state = free_port(), tmp_path / "azurite"
    state.mkdir()
    server = start_azurite(state, port)
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    try:
        azure_container(endpoint, "crash")
        folder = "az://crash/ckpt"
        options = {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY, "endpoint": endpoint, "max_retries": "1",
                   "retry_timeout": "2s"}
        args = [DL_DRIVER, "run", "workload=default", "++workload.workflow.generate_data=False",
                "++workload.workflow.train=False", "++workload.workflow.evaluation=False", "++workload.workflow.checkpoint=True",
                f"++workload.model.model_size_bytes={768 * MIB}", "++workload.checkpoint.num_checkpoints_write=3",
                "++workload.checkpoint.num_checkpoints_read=0", f"++workload.checkpoint.checkpoint_folder={folder}",
                f"++workload.output.folder={tmp_path / 'out'}",
                *[f"++workload.storage.storage_options.{k}={v}" for k, v in options.items()]]
        run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not listed(folder, options):  # the first checkpoint is complete
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        while not staged_blobs(endpoint, "crash", "ckpt/global_epoch1_step2/"):  # the second one is under way
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)  # a stopped server (Azurite saves its metadata on the way out)
        server.wait()
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 2, stderr
        assert "plugin 'checkpoint' failed" in stderr and "az://crash/ckpt/global_epoch1_step2" in stderr, stderr
        assert AZURITE_KEY not in stderr
        server = start_azurite(state, port)
        found = dl_driver.checkpoint.list_checkpoints(folder, **options)
        assert [(c["name"], c["complete"]) for c in found if c["name"] == "global_epoch1_step1"] == [("global_epoch1_step1", True)]
        assert all(not c["complete"] for c in found if c["name"] != "global_epoch1_step1"), found
        assert dl_driver.checkpoint.verify(folder, "global_epoch1_step1", **options) == 768 * MIB
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(state, ignore_errors=True)


def test_a_read_only_run_reads_the_checkpoints_already_there(tmp_path: Path) -> None:
    only = {"workflow.train": False, "checkpoint.num_checkpoints_write": 2, "checkpoint.num_checkpoints_read": 0}
    dl_driver.DlioRunner(training(tmp_path, **only)).run_benchmark()
    reading = {**only, "checkpoint.num_checkpoints_write": 0, "checkpoint.num_checkpoints_read": 2}
    report = dl_driver.DlioRunner(training(tmp_path, **reading)).run_benchmark()
    assert [(c["kind"], c["name"]) for c in report.details["checkpoints"]] == [
        ("load", "global_epoch1_step1"), ("load", "global_epoch1_step2")]
    assert report.summary["metric"]["load_checkpoint_io_mean_GB_per_second"] > 0
    empty = training(tmp_path, **{**reading, "checkpoint.checkpoint_folder": str(tmp_path / "empty")})
    with pytest.raises(dl_driver.ConfigError, match=r"num_checkpoints_read is 2 but .*empty holds no complete checkpoint"):
        dl_driver.DlioRunner(empty).run_benchmark()
