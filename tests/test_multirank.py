"""Multi-rank runs under the real launchers: Open MPI's mpirun (mpi4py) and torchrun (torch.distributed, gloo).

The test command installs Open MPI, mpi4py and torch; a missing one fails these tests rather than skipping them.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dl_driver
from tests_support import DL_DRIVER, mpirun

BIN = Path(sys.executable).parent
TORCHRUN = str(BIN / "torchrun")
#: A guard against a hung job only (the property under test is that it does not hang); generous on a busy runner.
HANG_GUARD = 300


def torchrun(n: int) -> list[str]:
    assert Path(TORCHRUN).exists(), "torchrun is missing: the test command installs torch"
    return [TORCHRUN, "--standalone", "--nproc_per_node", str(n), "--no-python"]


def launch(launcher: str, n: int, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prefix = mpirun(n) if launcher == "mpi" else torchrun(n)
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=HANG_GUARD, env=full_env, check=False
    )


def workload(tmp_path: Path, fmt: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "dataset.format": fmt, "dataset.num_files_train": 8, "dataset.num_samples_per_file": 4,
        "dataset.record_length_bytes": 4096, "dataset.record_length_bytes_stdev": 0, "dataset.num_files_eval": 0,
        "dataset.data_folder": tmp_path / "data", "output.folder": tmp_path / "out", "reader.batch_size": 2,
        "reader.read_threads": 2, "reader.sample_shuffle": "seed", "reader.file_shuffle": "seed", "train.epochs": 2,
        "train.computation_time": 0.001, "workflow.generate_data": True, "workflow.train": True,
        "workflow.evaluation": False, "workflow.checkpoint": False,
        "framework": "tensorflow" if fmt == "tfrecord" else "pytorch",
        "reader.data_loader": "tensorflow" if fmt == "tfrecord" else "pytorch",
    }
    values.update(extra)
    return values


def overrides(values: dict[str, Any]) -> list[str]:
    return [f"++workload.{k}={v}" for k, v in values.items()]


def fnv(ids: list[int]) -> str:
    """The access-order digest (docs/training.md): FNV-1a 64 of the ids as little-endian u64s, in hex."""
    h = 0xCBF29CE484222325
    for byte in b"".join(struct.pack("<Q", i) for i in ids):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def ids_read(values: dict[str, Any], epoch: int, rank: int, size: int) -> list[int]:
    cfg = dl_driver.load_dlio_config("default", overrides(values))
    return [i for b in dl_driver.batches(cfg, epoch=epoch, rank=rank, world_size=size) for i in b.samples]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("launcher", ["mpi", "torch"])
@pytest.mark.parametrize("fmt", ["npz", "tfrecord"])
def test_two_ranks_shard_the_epoch_and_rank_0_reduces_every_ranks_results(
    launcher: str, fmt: str, tmp_path: Path
) -> None:
    values = workload(tmp_path, fmt)
    done = launch(launcher, 2, DL_DRIVER, "run", "workload=default", *overrides(values))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    summary, report = read_json(out / "summary.json"), read_json(out / "dl_driver_report.json")
    assert summary["num_accelerators"] == 2 and report["world_size"] == 2
    # One host: one entry per node (ranks grouped as MPI's shared-memory split / torchrun's node).
    assert summary["num_hosts"] == 1
    assert len(summary["host_cpu_count"]) == len(summary["host_memory_GB"]) == len(summary["potential_caching"]) == 1
    assert [r["node"] for r in report["ranks"]] == [0, 0]
    # Each rank's files; summary.json's reductions recomputed from them: AU the mean over ranks, throughput the sum.
    outputs = [read_json(out / f"{r}_output.json") for r in (0, 1)]
    for r in (0, 1):
        assert set(read_json(out / f"{r}_per_epoch_stats.json")) >= {"1", "2"}
    metric = summary["metric"]
    for e in (1, 2):
        au = [o[str(e)]["au"]["block1"] for o in outputs]
        thr = [o[str(e)]["throughput"]["block1"] for o in outputs]
        assert metric["train_au_percentage"][e - 1] == pytest.approx(sum(au) / 2)
        assert metric["train_throughput_samples_per_second"][e - 1] == pytest.approx(sum(thr))
    # Every rank's digests are in the report; the ids behind them cover each epoch exactly once.
    total = 8 * 4
    for e in (1, 2):
        per_rank = [ids_read(values, e, r, 2) for r in (0, 1)]
        for r in (0, 1):
            assert report["ranks"][r]["digests"][e - 1] == fnv(per_rank[r]), f"rank {r} epoch {e}"
        assert sorted(per_rank[0] + per_rank[1]) == list(range(total))
    assert report["ranks"][0]["digests"] != report["ranks"][1]["digests"]
    # The job's latency histograms are the ranks' merged: as many steps as both ranks ran.
    steps = total // 2 // 2 * 2  # per rank: 8 steps of batch 2 per epoch, 2 epochs
    assert report["latency_all_ranks"]["compute"]["count"] == 2 * steps
    assert all(r["latency"]["compute"]["count"] == steps for r in report["ranks"])


def test_one_rank_and_two_ranks_read_the_same_global_order(tmp_path: Path) -> None:
    values = workload(tmp_path, "npz", **{"output.folder": tmp_path / "one"})
    alone = subprocess.run([DL_DRIVER, "run", "workload=default", *overrides(values)], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two = {**values, "output.folder": tmp_path / "two", "workflow.generate_data": False}
    done = launch("mpi", 2, DL_DRIVER, "run", "workload=default", *overrides(two))
    assert done.returncode == 0, done.stderr[-3000:]
    one_report = read_json(tmp_path / "one" / "dl_driver_report.json")
    two_report = read_json(tmp_path / "two" / "dl_driver_report.json")
    for e in (1, 2):
        shards = [ids_read(values, e, r, 2) for r in (0, 1)]
        assert [two_report["ranks"][r]["digests"][e - 1] for r in (0, 1)] == [fnv(s) for s in shards]
        # One rank reads what the two read one after the other: the same global order, sharded.
        assert one_report["ranks"][0]["digests"][e - 1] == fnv(shards[0] + shards[1])
        assert ids_read(values, e, 0, 1) == shards[0] + shards[1]


def test_a_checkpoint_of_two_ranks_lists_both_ranks_files_and_sums_their_sizes(tmp_path: Path) -> None:
    values = workload(tmp_path, "npz", **{
        "workflow.checkpoint": True, "checkpoint.checkpoint_folder": tmp_path / "ckpt",
        "checkpoint.steps_between_checkpoints": 4, "model.model_size_bytes": 4 * 2**20, "train.epochs": 1,
        "checkpoint.type": "all_ranks", "model.parallelism.zero_stage": 3,
    })
    done = launch("mpi", 2, DL_DRIVER, "run", "workload=default", *overrides(values))
    assert done.returncode == 0, done.stderr[-3000:]
    listed = dl_driver.checkpoint.list_checkpoints(str(tmp_path / "ckpt"))
    assert [c["name"] for c in listed] == ["global_epoch1_step4", "global_epoch1_step8"]
    assert all(c["complete"] for c in listed)
    manifest = read_json(tmp_path / "ckpt" / "global_epoch1_step4" / "manifest.json")
    assert sorted({f["rank"] for f in manifest["files"]}) == [0, 1] and manifest["world_size"] == 2
    for c in listed:
        assert dl_driver.checkpoint.verify(str(tmp_path / "ckpt"), c["name"]) == manifest["total_bytes"]
    summary = read_json(tmp_path / "out" / "summary.json")
    report = read_json(tmp_path / "out" / "dl_driver_report.json")
    # checkpoint_size_GB: every rank's bytes (DLIO); the MLPerf rule (slowest rank) beside DLIO's rank-0 duration.
    assert summary["metric"]["checkpoint_size_GB"] == pytest.approx(manifest["total_bytes"] / 2**30)
    rule = report["checkpoint_rule"]["save"]
    assert len(rule) == 2 and all(c["size_GiB"] == pytest.approx(manifest["total_bytes"] / 2**30) for c in rule)
    for i, c in enumerate(rule):
        own = [r["saves"][i][2] for r in report["ranks"]]
        assert c["slowest_rank_seconds"] == pytest.approx(max(own))
    rank0 = [s[1] for s in report["ranks"][0]["saves"]]
    assert summary["metric"]["save_checkpoint_duration_mean_seconds"] == pytest.approx(sum(rank0) / 2)


FAULTY = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    import dl_driver

    mode, folder = sys.argv[1], Path(sys.argv[2])
    cfg = dl_driver.load_dlio_config("default", sys.argv[3:])

    class Fault:
        def before_step(self, epoch, step):
            if os.environ.get("OMPI_COMM_WORLD_RANK") != "1" or step != 4:
                return
            if mode == "raise":
                raise RuntimeError("the plugin of rank 1 gave up at step 4")
            if mode == "hang":
                time.sleep(3600)
            # SIGKILL in the middle of the checkpoint of step 4: once its folder exists (a rank started writing).
            target = folder / "global_epoch1_step4"
            def watch():
                while not target.exists():
                    time.sleep(0.001)
                os.kill(os.getpid(), signal.SIGKILL)
            threading.Thread(target=watch, daemon=True).start()

    dl_driver.DlioRunner(cfg, plugins=[Fault()]).run_benchmark()
    """
)


@pytest.mark.parametrize("mode", ["raise", "kill", "hang"])
def test_a_rank_that_fails_stops_the_job_naming_it_and_leaves_no_complete_looking_checkpoint(
    mode: str, tmp_path: Path
) -> None:
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    values = workload(tmp_path, "npz", **{
        "workflow.checkpoint": True, "checkpoint.checkpoint_folder": tmp_path / "ckpt",
        "checkpoint.steps_between_checkpoints": 2, "model.model_size_bytes": 256 * 2**20, "train.epochs": 1,
        "checkpoint.type": "all_ranks", "model.parallelism.zero_stage": 3,
        "distributed.timeout_seconds": 5 if mode == "hang" else 30,
    })
    done = launch("mpi", 2, sys.executable, str(script), mode, str(tmp_path / "ckpt"), *overrides(values))
    assert done.returncode != 0
    text = done.stdout + done.stderr
    if mode == "raise":
        # The failing rank's error, and rank 0 stopping on its notice (not after the timeout).
        assert "rank 1 of 2 failed" in text and "the plugin of rank 1 gave up at step 4" in text, text[-3000:]
        assert "distributed.timeout_seconds" not in text
    elif mode == "kill":
        assert "rank 1" in text and "signal 9" in text, text[-3000:]
    else:
        # Rank 0 gives up after the timeout, naming the wait and the setting; the launcher then stops rank 1.
        assert "rank 0 waited 5 s (distributed.timeout_seconds)" in text, text[-3000:]
    # The checkpoint before the fault is complete and verifies; none after it looks complete.
    listed = {c["name"]: c["complete"] for c in dl_driver.checkpoint.list_checkpoints(str(tmp_path / "ckpt"))}
    assert listed.get("global_epoch1_step2") is True
    assert dl_driver.checkpoint.verify(str(tmp_path / "ckpt"), "global_epoch1_step2") > 0
    assert not any(complete for name, complete in listed.items() if name != "global_epoch1_step2"), listed


@pytest.mark.parametrize("launcher", ["mpi", "torch"])
def test_ctrl_c_stops_every_rank_and_keeps_what_they_measured(launcher: str, tmp_path: Path) -> None:
    # Ctrl-C reaches the launcher, which sends SIGTERM to every rank (Open MPI then SIGKILLs after 1 s): each rank
    # stops within its current wait and the run files hold every rank's measured epochs.
    values = workload(tmp_path, "npz", **{"train.epochs": 500, "train.computation_time": 0.005})
    prefix = mpirun(2) if launcher == "mpi" else torchrun(2)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with subprocess.Popen(
        [*prefix, DL_DRIVER, "run", "workload=default", *overrides(values)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    ) as job:
        assert job.stdout is not None
        seen = []
        for line in job.stdout:
            seen.append(line)
            if "Starting epoch 3" in line:
                break
        job.send_signal(signal.SIGINT)
        rest, _ = job.communicate(timeout=HANG_GUARD)
    text = "".join(seen) + rest
    assert job.returncode != 0, text[-3000:]
    out = tmp_path / "out"
    report = read_json(out / "dl_driver_report.json")
    assert report["interrupted"] is True and report["world_size"] == 2, text[-3000:]
    summary = read_json(out / "summary.json")
    assert 2 <= summary["epochs"] < 500
    for r in (0, 1):
        assert (out / f"{r}_output.json").exists() and (out / f"{r}_per_epoch_stats.json").exists()
        assert len(report["ranks"][r]["digests"]) >= 2


@pytest.mark.parametrize(("comm", "extra"), [("mpi", "dl-driver[mpi]"), ("torch", "dl-driver[torch]")])
def test_without_mpi4py_or_torch_one_process_runs_and_asking_for_them_names_the_extra(
    comm: str, extra: str, tmp_path: Path
) -> None:
    # The wheel does not need either: hide them, as on a machine that has neither.
    hide = "import sys; sys.modules['mpi4py'] = None; sys.modules['torch'] = None; from dl_driver.cli import main; "
    args = ["run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'data'}",
            f"++workload.output.folder={tmp_path / 'out'}"]
    alone = subprocess.run([sys.executable, "-c", hide + f"sys.exit(main({args!r}))"], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr[-2000:]
    asked = subprocess.run(
        [sys.executable, "-c", hide + f"sys.exit(main({[*args, '--comm', comm]!r}))"], capture_output=True, text=True
    )
    assert asked.returncode == 2 and f"pip install '{extra}'" in asked.stderr, asked.stderr[-2000:]
    assert "Traceback" not in asked.stderr


def test_checkpoint_only_runs_its_writes_and_reads_on_every_rank(tmp_path: Path) -> None:
    values = {
        "workflow.generate_data": False, "workflow.train": False, "workflow.evaluation": False,
        "workflow.checkpoint": True, "checkpoint.checkpoint_folder": tmp_path / "ckpt", "output.folder": tmp_path / "out",
        "checkpoint.num_checkpoints_write": 2, "checkpoint.num_checkpoints_read": 2,
        "checkpoint.time_between_checkpoints": 0, "model.model_size_bytes": 2 * 2**20,
        "checkpoint.type": "all_ranks", "model.parallelism.zero_stage": 3,
    }
    done = launch("mpi", 2, DL_DRIVER, "run", "workload=default", *overrides(values))
    assert done.returncode == 0, done.stderr[-3000:]
    listed = dl_driver.checkpoint.list_checkpoints(str(tmp_path / "ckpt"))
    assert len(listed) == 2 and all(c["complete"] for c in listed)
    for c in listed:
        manifest = read_json(tmp_path / "ckpt" / c["name"] / "manifest.json")
        assert sorted(f["rank"] for f in manifest["files"]) == [0, 1]
    report = read_json(tmp_path / "out" / "dl_driver_report.json")
    assert [len(r["saves"]) for r in report["ranks"]] == [2, 2] and [len(r["loads"]) for r in report["ranks"]] == [2, 2]
    metric = read_json(tmp_path / "out" / "summary.json")["metric"]
    assert metric["checkpoint_size_GB"] == pytest.approx(2 / 1024)
    assert metric["save_checkpoint_duration_mean_seconds"] > 0 and metric["load_checkpoint_duration_mean_seconds"] > 0


def test_uneven_samples_across_ranks_never_deadlock_the_barriers(tmp_path: Path) -> None:
    # 10 samples on 4 ranks: ceil(10 / 4) = 3 each, the last rank owns 1; every rank runs floor(10 / 1 / 4) = 2 steps
    # (the last re-reads its sample), so the per-step barriers pair every time.
    values = workload(tmp_path, "npz", **{
        "dataset.num_files_train": 5, "dataset.num_samples_per_file": 2, "reader.batch_size": 1,
    })
    done = launch("mpi", 4, DL_DRIVER, "run", "workload=default", *overrides(values))
    assert done.returncode == 0, done.stderr[-3000:]
    report = read_json(tmp_path / "out" / "dl_driver_report.json")
    assert [r["latency"]["barrier"]["count"] for r in report["ranks"]] == [4, 4, 4, 4]
    assert [r["repeated_samples"] for r in report["ranks"]] == [[0, 0], [0, 0], [0, 0], [1, 1]]
    if (os.cpu_count() or 1) < 4:
        # More ranks than CPUs on the node: real-time step threads would starve the readers, so none runs real-time.
        assert report["compute"]["step_thread_class"] == "normal"
