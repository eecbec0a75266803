"""dl_driver.tf: make_dataset (element_spec before the first element, decoded batches, explicit rank sharding,
get_state/set_state) and model.fit with CheckpointCallback, restored by load_weights."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dl_driver
from dl_driver.decode import decode

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from dl_driver.tf import CheckpointCallback, load_weights, make_dataset  # noqa: E402


def workload(tmp_path: Path, **overrides: Any) -> dl_driver.Config:
    """12 npz samples of 64x64x1 uint8, batch 2 (6 steps an epoch), checkpoints every 4 steps."""
    base = {
        "framework": "tensorflow",
        "workflow": {"generate_data": True, "train": True, "checkpoint": True},
        "dataset": {"format": "npz", "data_folder": str(tmp_path / "data"), "num_files_train": 12, "num_files_eval": 0,
                    "num_samples_per_file": 1, "record_length_bytes": 4096, "num_subfolders_train": 0},
        "reader": {"data_loader": "tensorflow", "batch_size": 2, "read_threads": 1},
        "train": {"epochs": 2, "computation_time": 0.0, "seed": 9},
        "checkpoint": {"checkpoint_folder": str(tmp_path / "ckpt"), "steps_between_checkpoints": 4},
        "output": {"folder": str(tmp_path / "out")},
    }
    cfg = dl_driver.load_dlio_config(base, overrides)
    dl_driver.generate(cfg)
    return cfg


def test_the_element_spec_is_known_before_the_first_batch_and_batches_are_the_decoded_samples(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    dataset = make_dataset(cfg)
    assert dataset.element_spec["x"] == tf.TensorSpec(shape=(None, 64, 64, 1), dtype=tf.uint8)
    expected = [[decode("npz", memoryview(b.data)[s:e])["x"] for s, e in b.spans] for b in dl_driver.batches(cfg)]
    got = [batch["x"].numpy() for batch in dataset]
    assert len(got) == 6 and all(np.array_equal(g, np.stack(e)) for g, e in zip(got, expected, strict=True))


def test_ranks_are_sharded_explicitly_and_cover_the_epoch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    seen: Counter[str] = Counter()
    for rank in range(2):
        dataset = make_dataset(cfg, raw=True, rank=rank, world_size=2)
        assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        seen.update(hashlib.sha1(s).hexdigest() for batch in dataset for s in batch.numpy())
    whole = Counter(hashlib.sha1(bytes(memoryview(b.data)[s:e])).hexdigest() for b in dl_driver.batches(cfg) for s, e in b.spans)
    assert seen == whole and len(seen) == 12


def test_set_state_resumes_at_the_next_batch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    whole = [b["x"].numpy() for b in make_dataset(cfg, epoch=2)]
    dataset = make_dataset(cfg, epoch=2)
    it = iter(dataset)
    head = [next(it)["x"].numpy() for _ in range(2)]
    saved = dataset.get_state()
    assert saved == {"epoch": 2, "step": 2}
    resumed = make_dataset(cfg)
    resumed.set_state(saved)
    rest = [b["x"].numpy() for b in resumed]
    assert len(head + rest) == 6 and all(np.array_equal(a, b) for a, b in zip(head + rest, whole, strict=True))


def model() -> Any:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.layers.Input((64, 64, 1)), keras.layers.Flatten(), keras.layers.Dense(4, "relu"),
                          keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return m


def test_model_fit_checkpoints_on_the_schedule_and_load_weights_restores_them(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    data = make_dataset(cfg).map(lambda b: (tf.cast(b["x"], tf.float32) / 255.0, tf.reduce_mean(tf.cast(b["x"], tf.float32), axis=[1, 2, 3]) / 255.0)).prefetch(2)
    snapshots: dict[int, tuple[list[Any], list[Any]]] = {}

    class Snapshot(keras.callbacks.Callback):  # type: ignore[misc]
        step = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.step += 1
            snapshots[self.step] = ([w.copy() for w in self.model.get_weights()],
                                    [v.numpy().copy() for v in self.model.optimizer.variables])

    trained = model()
    checkpoints = CheckpointCallback(cfg)
    # DLIO shuffled the samples; the generator has no length, so Keras is told the steps of an epoch.
    trained.fit(data.repeat(), epochs=2, steps_per_epoch=6, callbacks=[checkpoints, Snapshot()], verbose=0, shuffle=False)
    assert checkpoints.saved == ["global_epoch1_step4", "global_epoch2_step8", "global_epoch2_step12"]
    listed = [c["name"] for c in dl_driver.checkpoint.list_checkpoints(str(tmp_path / "ckpt")) if c["complete"]]
    assert listed == checkpoints.saved
    for step in (4, 8):
        restored = model()
        restored.optimizer.build(restored.trainable_variables)
        assert load_weights(restored, str(tmp_path / "ckpt"), step) == step
        weights, variables = snapshots[step]
        assert all(np.array_equal(a, b) for a, b in zip(restored.get_weights(), weights, strict=True))
        assert all(np.array_equal(a.numpy(), b) for a, b in zip(restored.optimizer.variables, variables, strict=True))
    assert load_weights(model(), str(tmp_path / "ckpt")) == 12  # the latest by default


def test_two_pipelines_run_at_once_the_reads_release_the_gil(tmp_path: Path, servers: dict[str, str]) -> None:
    import threading

    from test_storage_conformance import s3_bucket
    from tests_support import FaultyLink

    # Pipeline A reads from S3 through a relay that holds every reply until pipeline B, local, has read its whole
    # epoch in another thread. Had A's Rust read kept the GIL while it waited, B (and the relay's own Python
    # threads) could not run: A would wait forever and B would never finish.
    s3_bucket(servers["moto"], "dl-driver-tests")
    options = {"endpoint_url": servers["moto"], "access_key_id": "testing", "secret_access_key": "testing",
               "region": "us-east-1"}
    remote = workload(tmp_path / "a", **{"dataset.data_folder": f"s3://dl-driver-tests/gil-{tmp_path.name}",
                                         "storage.storage_options": options})
    local = workload(tmp_path / "b")
    b_done = threading.Event()
    link = FaultyLink(servers["moto"], throttle=0, reset=0, hold=b_done)
    remote.storage.storage_options = {**options, "endpoint_url": link.endpoint}
    got: dict[str, int] = {}

    def read_a() -> None:
        got["a"] = sum(len(batch["x"]) for batch in make_dataset(remote))

    def read_b() -> None:
        got["b"] = sum(len(batch["x"]) for batch in make_dataset(local))
        got["a before b"] = "a" in got  # A cannot have finished: its replies are held until now
        b_done.set()

    try:
        a = threading.Thread(target=read_a)
        a.start()
        assert link.relaying.wait(120), "pipeline A never reached S3"
        b = threading.Thread(target=read_b)
        b.start()
        assert b_done.wait(120), "pipeline B did not finish while pipeline A waited for S3"
        a.join(120)
        assert not a.is_alive() and got == {"a": 12, "b": 12, "a before b": False}
    finally:
        b_done.set()
        link.close()
