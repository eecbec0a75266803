"""dl_driver.jax: make_iterator (shards from the JAX process by default, numpy dicts, a jitted step over it,
get_state/set_state resuming at the identical next batch) and the pytree checkpoint round trip."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dl_driver
from dl_driver.decode import decode

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from dl_driver.jax import load_pytree, make_iterator, save_pytree  # noqa: E402


def workload(tmp_path: Path) -> dl_driver.Config:
    """12 npz samples of 64x64x1 uint8, batch 2 (6 steps an epoch)."""
    cfg = dl_driver.load_dlio_config({
        "framework": "pytorch",
        "workflow": {"generate_data": True, "train": True},
        "dataset": {"format": "npz", "data_folder": str(tmp_path / "data"), "num_files_train": 12, "num_files_eval": 0,
                    "num_samples_per_file": 1, "record_length_bytes": 4096, "num_subfolders_train": 0},
        "reader": {"data_loader": "pytorch", "batch_size": 2, "read_threads": 1},
        "train": {"epochs": 2, "computation_time": 0.0, "seed": 13},
        "output": {"folder": str(tmp_path / "out")},
    })
    dl_driver.generate(cfg)
    return cfg


def test_batches_are_numpy_dicts_of_the_jax_process_shard_and_a_jitted_step_runs_on_them(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    batches = list(make_iterator(cfg))  # process 0 of 1
    expected = [np.stack([decode("npz", memoryview(b.data)[s:e])["x"] for s, e in b.spans]) for b in dl_driver.batches(cfg)]
    assert len(batches) == 6 and all(isinstance(b["x"], np.ndarray) for b in batches)
    assert all(np.array_equal(b["x"], e) for b, e in zip(batches, expected, strict=True))

    @jax.jit
    def step(w: Any, x: Any) -> tuple[Any, Any]:
        def loss(w: Any) -> Any:
            features = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
            return jnp.mean((features @ w - features.mean(axis=1)) ** 2)

        value, grad = jax.value_and_grad(loss)(w)
        return w - 1e-4 * grad, value

    w = jnp.zeros(64 * 64)
    losses = []
    for batch in make_iterator(cfg, device_put=True):
        assert isinstance(batch["x"], jax.Array)
        w, value = step(w, batch["x"])
        losses.append(float(value))
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_shards_cover_the_epoch_and_state_resumes_at_the_identical_next_batch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    seen: Counter[str] = Counter()
    for index in range(2):
        seen.update(hashlib.sha1(s).hexdigest() for b in make_iterator(cfg, raw=True, shard_index=index, shard_count=2) for s in b)
    assert sum(seen.values()) == 12 and len(seen) == 12
    whole = [b["x"] for b in make_iterator(cfg, epoch=2)]
    it = make_iterator(cfg, epoch=2)
    head = [next(it)["x"] for _ in range(3)]
    saved = it.get_state()
    resumed = make_iterator(cfg)
    resumed.set_state(saved)
    rest = [b["x"] for b in resumed]
    assert len(head + rest) == 6 and all(np.array_equal(a, b) for a, b in zip(head + rest, whole, strict=True))
    with pytest.raises(dl_driver.ConfigError, match="this iterator reads shard"):
        make_iterator(cfg, shard_index=1, shard_count=2).set_state(saved)


def test_a_pytree_round_trips_with_its_structure_dtypes_and_values(tmp_path: Path) -> None:
    key = jax.random.PRNGKey(0)
    tree = {
        "w": jax.random.normal(key, (17, 5), dtype=jnp.bfloat16),
        "layers": [jnp.arange(10, dtype=jnp.int32), jnp.ones((3,), jnp.float16)],
        "opt": (jnp.zeros((2, 2), jnp.uint8), None, jnp.float32(2.5)),
    }
    for compression in ("none", "zstd"):
        folder = str(tmp_path / compression)
        save_pytree(folder, tree, step=7, compression=compression)
        back = load_pytree(folder)
        assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
        for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree), strict=True):
            assert isinstance(a, jax.Array) and a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(np.asarray(a), np.asarray(b))
        assert load_pytree(folder, 7, numpy=True)["w"].dtype.name == "bfloat16"
