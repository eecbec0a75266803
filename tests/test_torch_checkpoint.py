"""dl_driver.torch's checkpoints of real training state: a small model trained on make_dataloader's data with
checkpoints every K steps on every backend (restore equals the saved state; resuming from a checkpoint with the
loader's state reproduces the uninterrupted losses), every dtype bit for bit with and without zstd, a flipped byte,
and a save killed midway."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

import dl_driver

torch = pytest.importorskip("torch")
from dl_driver.torch import (  # noqa: E402  (after the extra is known to be there)
    CheckpointPlugin,
    DlioPyTorchDataset,
    load_checkpoint,
    save_checkpoint,
)
from test_run import backend_location  # noqa: E402


def workload(tmp_path: Path, checkpoints: str, **overrides: Any) -> dl_driver.Config:
    """12 npz samples of 64x64 uint8, batch 2 (6 steps an epoch), checkpoints every 4 steps under `checkpoints`."""
    base = {
        "framework": "pytorch",
        "workflow": {"generate_data": True, "train": True, "checkpoint": True},
        "dataset": {"format": "npz", "data_folder": str(tmp_path / "dataset"), "num_files_train": 12, "num_files_eval": 0,
                    "num_samples_per_file": 1, "record_length_bytes": 4096, "num_subfolders_train": 0},
        "reader": {"data_loader": "pytorch", "batch_size": 2, "read_threads": 1},
        "train": {"epochs": 2, "computation_time": 0.0, "seed": 5},
        "checkpoint": {"checkpoint_folder": checkpoints, "steps_between_checkpoints": 4},
        "output": {"folder": str(tmp_path / "out")},
    }
    cfg = dl_driver.load_dlio_config(base, overrides)
    dl_driver.generate(cfg)
    return cfg


def model_and_optimizer() -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 31 * 31, 1)
    )
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def train(cfg: dl_driver.Config, plugin: CheckpointPlugin | None, resume: dict[str, Any] | None = None) -> tuple[list[float], dict[int, Any]]:
    """Trains 2 epochs of 6 steps (from `resume`'s step when given); returns the losses by step and the states the
    plugin saved, by step."""
    torch.set_num_threads(1)
    model, optimizer = model_and_optimizer()
    dataset = DlioPyTorchDataset(cfg, plugins=[plugin] if plugin else [])
    step, first_epoch = 0, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        dataset.load_state_dict(resume["loader"])
        step, first_epoch = resume["step"], resume["loader"]["epoch"]
    losses: list[float] = []
    saved: dict[int, Any] = {}
    for epoch in range(first_epoch, 3):
        if epoch != first_epoch or resume is None:
            dataset.set_epoch(epoch)
        for batch in torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0):
            x = batch["x"].permute(0, 3, 1, 2).float() / 255.0
            loss = ((model(x).squeeze(1) - x.mean(dim=(1, 2, 3))) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "loader": dataset.state_dict()}
            if any(dataset.training_step_hook(step, state)):
                saved[step] = copy.deepcopy(state)
    return losses, saved


def assert_same(a: Any, b: Any) -> None:
    """Equal structures, every tensor equal bit for bit with the same dtype and shape."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b, (a, b)


@pytest.mark.parametrize("backend", ["file", "direct", "s3-moto", "az-azurite"])
def test_a_model_checkpoints_every_k_steps_restores_and_resumes(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    location, options = backend_location(backend, tmp_path, request)
    checkpoints = f"{location}/ckpt"
    cfg = workload(tmp_path, checkpoints)
    losses, saved = train(cfg, CheckpointPlugin(cfg, storage_options=options))
    assert len(losses) == 12 and sorted(saved) == [4, 8, 12]
    listed = dl_driver.checkpoint.list_checkpoints(checkpoints, **options)
    assert [c["name"] for c in listed if c["complete"]] == ["global_epoch1_step4", "global_epoch2_step8", "global_epoch2_step12"]
    for step, state in saved.items():
        assert_same(load_checkpoint(checkpoints, step, storage_options=options), state)
    assert load_checkpoint(checkpoints, storage_options=options)["step"] == 12  # the latest by default
    for step in (4, 8):
        resumed, _ = train(cfg, None, resume=load_checkpoint(checkpoints, step, storage_options=options))
        assert resumed == losses[step:], step


def test_every_dtype_round_trips_bit_for_bit_with_and_without_zstd(tmp_path: Path) -> None:
    state = OrderedDict(
        bf16=torch.randn(33, 7).to(torch.bfloat16), f16=torch.randn(5).half(), f64=torch.randn(2, 3, dtype=torch.float64),
        i64=torch.arange(-5, 5), u8=torch.randint(0, 255, (300,), dtype=torch.uint8), flags=torch.tensor([True, False]),
        scalar=torch.tensor(3.5), empty=torch.zeros(0, 4), strided=torch.arange(20.0).reshape(4, 5).t(),
        nested={"list": [torch.ones(2), 1, "two", (3.0, None)], "set": {1, 2}}, big=torch.randn(3 << 20),
    )
    for compression in ("none", "zstd"):
        folder = str(tmp_path / compression)
        # fsync opens every file it flushes: a wrong path would fail here.
        name = save_checkpoint(f"file://{folder}", state, step=1, compression=compression, fsync=True)
        assert name == "global_epoch1_step1"
        assert_same(load_checkpoint(folder), state)
        verified = dl_driver.checkpoint.verify(folder, name)
        assert verified == sum(f.stat().st_size for f in (tmp_path / compression / name).iterdir() if f.name != "manifest.json")


def test_a_flipped_byte_fails_its_checksum(tmp_path: Path) -> None:
    name = save_checkpoint(str(tmp_path), {"w": torch.randn(1000)}, step=3)
    tensors = tmp_path / name / "rank0-tensors.bin"
    data = bytearray(tensors.read_bytes())
    data[1234] ^= 0x01
    tensors.write_bytes(bytes(data))
    with pytest.raises(dl_driver.CheckpointError, match=r"rank0-tensors\.bin: checksum mismatch"):
        load_checkpoint(str(tmp_path))


def test_a_checkpoint_naming_other_code_is_refused(tmp_path: Path) -> None:
    class Unsafe:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.getcwd, ())

    save_checkpoint(str(tmp_path), {"x": Unsafe()}, step=1)
    with pytest.raises(dl_driver.CheckpointError, match=r"names posix\.getcwd, which a checkpoint may not load"):
        load_checkpoint(str(tmp_path))


def test_a_killed_save_leaves_the_previous_checkpoint_the_latest(tmp_path: Path) -> None:
    script = f"""
import sys, torch
from dl_driver.torch import save_checkpoint
save_checkpoint({str(tmp_path)!r}, {{"w": torch.ones(10)}}, step=1)
print("saved", flush=True)
save_checkpoint({str(tmp_path)!r}, {{"w": torch.zeros(1 << 28)}}, step=2)  # 1 GiB
print("finished", flush=True)
"""
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "saved\n"
        second = tmp_path / "global_epoch1_step2"
        deadline = time.monotonic() + 120
        while not (second.is_dir() and any(second.iterdir())):  # the second save has started writing
            assert child.poll() is None and time.monotonic() < deadline, "the second save never started"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    listed = {c["name"]: c["complete"] for c in dl_driver.checkpoint.list_checkpoints(str(tmp_path))}
    # The killed save left at most a folder without a manifest (its file was still under a hidden temporary name).
    assert listed["global_epoch1_step1"] is True and listed.get("global_epoch1_step2") in (None, False), listed
    assert torch.equal(load_checkpoint(str(tmp_path))["w"], torch.ones(10))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint of step 2"):
        load_checkpoint(str(tmp_path), step=2)


def test_saving_a_1_gib_state_adds_little_memory(tmp_path: Path) -> None:
    """The tensors stream from their memory in 8 MiB pieces: the process's peak resident memory while saving a 1 GiB
    state grows far less than the state (a save that serialized it whole would add at least 1 GiB)."""
    script = f"""
import torch
from dl_driver.torch import save_checkpoint
# VmHWM is this process's own peak; ru_maxrss would start from pytest's at exec and could hide a growth.
peak = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
state = {{"a": torch.ones(1 << 27), "b": torch.ones(1 << 26, dtype=torch.float64)}}  # 512 MiB + 512 MiB
before = peak()
save_checkpoint({str(tmp_path)!r}, state, step=1)
print(before, peak())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    before, after = (int(v) for v in done.stdout.split())  # KiB
    assert (after - before) * 1024 < 192 << 20, f"saving 1 GiB raised the peak by {(after - before) / 1024:.0f} MiB"
    assert sum(f.stat().st_size for f in (tmp_path / "global_epoch1_step1").iterdir()) > 1 << 30
